//! A real allocation-heavy workload: large maps of strings, built, queried,
//! mutated and dropped by several threads at once.
//!
//! It is the same code for the `maps_of_strings` example, the heap's tests
//! and any benchmark: each thread
//!
//! 1. **builds** a `HashMap<String, Vec<String>>` and a `BTreeMap<String,
//!    usize>` of `keys` keys made from a deterministic xorshift generator
//!    (formatted strings of 10 to 60 bytes, values of 1 to 4 strings of up
//!    to ~90 bytes);
//! 2. **queries** them: hits and misses in the hash map, concatenation of
//!    the values found, range scans of the B-tree joined into new strings;
//! 3. **mutates** them: removes every other key (and shrinks the hash
//!    table), then reinserts those keys with new values;
//! 4. **drops** everything.
//!
//! Every phase ends in a checksum that does not depend on the hash map's
//! (randomised) iteration order, so two runs with the same [`Workload`] give
//! the same [`PhaseSums`] under any correct allocator.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Barrier;

/// A deterministic 64-bit xorshift generator (Marsaglia's xorshift64*).
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (0 is replaced by a fixed non-zero value).
    pub fn new(seed: u64) -> XorShift {
        XorShift(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Folds `bytes` (and their length) into the hash `h`, eight bytes at a
/// time: cheap enough that the workload's time goes to its allocations and
/// map operations, and any changed byte changes the result.
pub fn mix(mut h: u64, bytes: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
    }
    let mut w = [0u8; 8];
    w[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h ^ u64::from_le_bytes(w) ^ (bytes.len() as u64) << 56).wrapping_mul(K);
    h ^ h >> 32
}

/// The starting value of a [`mix`] chain.
pub const MIX_START: u64 = 0xcbf2_9ce4_8422_2325;

/// The shape of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Threads, each with its own maps.
    pub threads: usize,
    /// Keys per thread.
    pub keys: usize,
    /// Seed of every thread's generator (mixed with the thread number).
    pub seed: u64,
}

/// The checksums of one thread's phases.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhaseSums {
    /// After building.
    pub build: u64,
    /// Over every query's answer.
    pub query: u64,
    /// After removing half and reinserting.
    pub mutate: u64,
    /// Bytes of strings the thread created (a size check, not a hash).
    pub string_bytes: u64,
}

const SYLLABLES: [&str; 16] = [
    "ka", "ro", "mi", "zen", "tal", "qu", "ix", "ber", "no", "sha", "vy", "lo", "pet", "dra", "ul",
    "fem",
];

/// Appends a pronounceable word of `min` to `min + span - 1` syllables.
fn word(rng: &mut XorShift, min: u64, span: u64, out: &mut String) {
    let n = min + rng.below(span);
    for _ in 0..n {
        out.push_str(SYLLABLES[rng.below(16) as usize]);
    }
}

/// Order-independent checksum of a hash map (wrapping sum of entry hashes).
fn map_sum(map: &HashMap<String, Vec<String>>) -> u64 {
    map.iter().fold(0u64, |acc, (k, vs)| {
        let h = vs
            .iter()
            .fold(mix(MIX_START, k.as_bytes()), |h, v| mix(h, v.as_bytes()));
        acc.wrapping_add(h)
    })
}

/// Ordered checksum of a B-tree map.
fn tree_sum(tree: &BTreeMap<String, usize>) -> u64 {
    tree.iter().fold(MIX_START, |h, (k, &v)| {
        mix(mix(h, k.as_bytes()), &(v as u64).to_le_bytes())
    })
}

impl Workload {
    /// Runs the workload; `at_peak` runs on the calling thread while every
    /// worker has built its maps and waits (the moment of most live memory).
    /// Returns each thread's checksums, in thread order.
    pub fn run(&self, at_peak: impl FnOnce()) -> Vec<PhaseSums> {
        let threads = self.threads.max(1);
        let barrier = Barrier::new(threads + 1);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let barrier = &barrier;
                    let seed = self.seed ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    let keys = self.keys;
                    s.spawn(move || {
                        one_thread(seed, keys, &|| {
                            barrier.wait();
                        })
                    })
                })
                .collect();
            barrier.wait();
            at_peak();
            barrier.wait();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        })
    }

    /// Runs one thread's share on the calling thread (no peak hook).
    pub fn run_one(&self, thread: usize) -> PhaseSums {
        let seed = self.seed ^ (thread as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        one_thread(seed, self.keys, &|| {})
    }
}

/// One thread's work; `peak` is called twice after building (the two
/// barrier waits around the peak hook).
fn one_thread(seed: u64, n: usize, peak: &dyn Fn()) -> PhaseSums {
    let mut rng = XorShift::new(seed);
    let mut sums = PhaseSums::default();

    // 1. Build.
    let mut keys: Vec<String> = Vec::new();
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    let mut tree: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..n {
        let x = rng.next_u64();
        let mut key = String::new();
        let _ = write!(key, "{:x}-", x >> (rng.below(40) + 8));
        word(&mut rng, 1, 8, &mut key);
        let nvals = 1 + rng.below(4);
        let mut vals = Vec::new();
        for v in 0..nvals {
            let mut s = format!("{i}.{v}:");
            word(&mut rng, 0, 24, &mut s);
            sums.string_bytes += s.len() as u64;
            vals.push(s);
        }
        sums.string_bytes += 3 * key.len() as u64;
        tree.insert(key.clone(), i);
        map.insert(key.clone(), vals);
        keys.push(key);
    }
    sums.build = map_sum(&map) ^ tree_sum(&tree).rotate_left(17) ^ map.len() as u64;
    peak();
    peak();

    // 2. Query.
    let mut q = MIX_START;
    for j in 0..n {
        let key = &keys[rng.below(n as u64) as usize];
        match map.get(key) {
            Some(vs) => {
                let joined = vs.join("|");
                q = mix(q, joined.as_bytes());
            }
            None => q = q.rotate_left(1),
        }
        let missing = format!("{key}#absent");
        q = q.wrapping_add(map.contains_key(&missing) as u64 + 1);
        if j % 8 == 0 {
            let mut scan = String::new();
            let mut total = 0usize;
            for (k, &v) in tree
                .range::<str, _>((
                    std::ops::Bound::Included(key.as_str()),
                    std::ops::Bound::Unbounded,
                ))
                .take(16)
            {
                total = total.wrapping_add(v);
                if scan.len() < 200 {
                    scan.push_str(k);
                    scan.push(',');
                }
            }
            sums.string_bytes += (missing.len() + scan.len()) as u64;
            q = mix(q, scan.as_bytes()).wrapping_add(total as u64);
        }
    }
    sums.query = q;

    // 3. Mutate: remove every other key, shrink, reinsert with new values.
    for key in keys.iter().step_by(2) {
        map.remove(key);
        tree.remove(key);
    }
    map.shrink_to_fit();
    let half = map_sum(&map) ^ tree_sum(&tree);
    for (i, key) in keys.iter().enumerate().step_by(2) {
        let mut vals = Vec::new();
        for r in 0..1 + rng.below(3) {
            let mut s = key.clone();
            let _ = write!(s, "~{r}~");
            word(&mut rng, 0, 24, &mut s);
            sums.string_bytes += s.len() as u64;
            vals.push(s);
        }
        map.insert(key.clone(), vals);
        tree.insert(key.clone(), i * 7);
    }
    sums.mutate = half.rotate_left(7) ^ map_sum(&map) ^ tree_sum(&tree) ^ map.len() as u64;

    // 4. Drop everything (explicitly, in a fixed order).
    drop(map);
    drop(tree);
    drop(keys);
    sums
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_deterministic() {
        let w = Workload {
            threads: 2,
            keys: 500,
            seed: 7,
        };
        let a = w.run(|| {});
        let b = w.run(|| {});
        assert_eq!(a, b);
        assert_ne!(a[0], a[1], "threads differ");
        assert_eq!(w.run_one(1), a[1]);
    }
}
