//! `kmm bench slab`: kmm's slab caches and kmalloc against the object
//! allocators a Rust user would otherwise pick, measured in one run and
//! summed up as ratios.
//!
//! # Patterns
//!
//! Each pattern runs the same sequence on kmm and on every competitor:
//!
//! * **cache64 pair**: `kmem_cache_alloc` + `kmem_cache_free` of one object of
//!   a 64-byte cache (`bench64`, no flags), on CPU 0. The competitors allocate
//!   and free 64 bytes (8-byte aligned); slabmalloc does it from its 64-byte
//!   `SCAllocator`, the closest thing it has to a cache;
//! * **kmalloc64 pair**: `kmalloc(64, GFP_KERNEL)` + `kfree`;
//! * **kmalloc-mixed pair**: `kmalloc` + `kfree` cycling through a fixed
//!   table of [`MIXED`] sizes from 8 to 4096 bytes (a power-of-two range
//!   picked at random, then a size at random inside it: log-uniform), the
//!   same table for every allocator; the figure is the average pair. One
//!   object of every size stays allocated meanwhile ([`hold`]), so that no
//!   pair empties a page of its size class: a kernel's heap is never empty,
//!   and mimalloc, for one, would otherwise retire the empty page and fault
//!   a fresh one in, up to 6x slower depending on the order of the sizes;
//! * **prodcons**: a producer/consumer pair of threads. The producer
//!   allocates 64-byte objects and hands them through a bounded
//!   single-producer single-consumer ring ([`Ring`], published in batches of
//!   [`RING_BATCH`]) to the consumer, which frees them; timed per object from
//!   the producer's first allocation to the consumer's last free. kmm's threads bind simulated CPUs 0 and 1, so the
//!   frees land in CPU 1's per-CPU array and reach CPU 0 through the slab
//!   lists in batches, as in Linux. The competitors run on plain threads: the
//!   no_std heaps that need a lock to be shared through their locked types
//!   (`TalcLock`, `LockedHeap`), slabmalloc with one `SCAllocator` per
//!   thread (its design for SMP: any instance frees any object with an atomic
//!   bit clear in the object's page), System and mimalloc as they are;
//! * **memory**: [`SlabSettings::live`] (one million) live 64-byte objects at
//!   once, measured first, before any timing, while the host allocators hold
//!   no freed memory they could reuse. kmm counts the pages its cache holds
//!   in slabs (`kmem_cache_info`); slabmalloc the pages it was given; talc
//!   and linked_list_allocator the high-water mark of their region (end of
//!   the highest object: both carve their region from the bottom up);
//!   buddy_system_allocator the bytes of the blocks it handed out (it splits
//!   blocks from anywhere in its region, so a high-water mark says nothing);
//!   System and mimalloc the growth of the process's resident set
//!   (`/proc/self/statm`), which may be a little off either way. Everything
//!   is freed afterwards, in allocation order.
//!
//! # Competitors
//!
//! `slabmalloc` 0.11, `talc` 5, `linked_list_allocator` 0.10 and
//! `buddy_system_allocator` 0.13 are `no_std` heaps over memory they are
//! given: each gets its own region of host memory as large as the kmm
//! machine's RAM, aligned to 2 MiB (slabmalloc's large pages), committed by
//! the host only where it is touched. On one CPU they are driven through
//! their unlocked types (`SCAllocator`/`ZoneAllocator`, `Talc<Manual>`,
//! `Heap`, `Heap<32>`) by `&mut`, which costs them no lock; kmm, like Linux,
//! always takes its per-CPU array lock. `std::alloc::System` (glibc malloc)
//! and `mimalloc::MiMalloc` are called directly through `GlobalAlloc`; the
//! process's global allocator is not replaced.
//!
//! Objects are never touched by the benchmark: every allocator hands out
//! addresses, and the loops only pass them back (kmm's addresses are kernel
//! virtual addresses in simulated RAM; the others', host pointers).
//!
//! # Method
//!
//! The timing harness is `kmm bench pages`': every figure is the best of
//! [`SlabSettings::runs`] runs of an iteration count calibrated to take about
//! [`SlabSettings::target`], the rows of one comparison timed in interleaved
//! rounds; what the loops cost with a no-op allocator is printed first and is
//! included in every figure. After each pattern kmm's caches are shrunk and
//! its per-CPU page lists drained, and `nr_free_pages()` must be what it was
//! before; at the end the cache is destroyed and the machine must be back at
//! its free-page count from before the benchmark.
//!
//! The report ends with one `ratio <what> <value>` line per comparison: the
//! competitor's time (or bytes) over kmm's, so a value above 1 means kmm is
//! faster (or smaller). `ratio memory-1m-64b` is the payload over kmm's slab
//! bytes: 1.00 means no overhead at all, and the 1.05x target is a value of
//! at least 0.95.

use std::alloc::System;
use std::fmt;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use kmm::{GfpFlags, KmemCache, Kmm, KmmError, SlabFlags};
use kmm_sim::cpu::Cpus;
use kmm_sim::{Machine, MachineConfig, SimPlatform};
use mimalloc::MiMalloc;
use talc::source::Manual;
use talc::TalcLock;

use super::{gib, host_name, measure, Figure, Timed, XorShift64};

mod rivals;

use rivals::{
    BuddyHeap, Global, LinkedHeap, NoMemory, Pager, Region, SlabCache, SlabZone, TalcHeap,
    BUDDY_ORDER,
};

/// Bytes of the objects of the cache, kmalloc(64), producer/consumer and
/// memory patterns.
const OBJ: usize = 64;
/// Alignment the competitors are asked for (kmalloc's `ARCH_KMALLOC_MINALIGN`).
const ALIGN: usize = 8;
/// Sizes in the kmalloc-mixed cycle (a power of two).
pub const MIXED: usize = 256;
/// Largest size of the kmalloc-mixed cycle.
const MIXED_MAX: usize = 4096;
/// Host page size assumed when reading `/proc/self/statm`.
const HOST_PAGE: u64 = 4096;

/// The competitors, in report order. The first [`NO_STD`] are `no_std` crates.
pub const RIVALS: [&str; 6] = [
    "slabmalloc",
    "talc",
    "linked_list_allocator",
    "buddy_system_allocator",
    "system",
    "mimalloc",
];
/// How many of [`RIVALS`] are `no_std` crates (the targets' "every no_std crate").
pub const NO_STD: usize = 4;
/// The timed patterns, in report order, by the names of their ratio lines.
pub const PATTERNS: [&str; 4] = ["cache64", "kmalloc64", "kmalloc-mixed", "prodcons"];

/// How hard `kmm bench slab` measures.
#[derive(Clone, Debug)]
pub struct SlabSettings {
    /// RAM of the kmm machine, and the size of each competitor's region (1 GiB).
    pub ram: u64,
    /// About how long one timed run of one figure takes.
    pub target: Duration,
    /// Timed runs per figure; the fastest counts.
    pub runs: usize,
    /// Live 64-byte objects in the memory pattern (one million).
    pub live: usize,
    /// Slots of the producer/consumer ring.
    pub ring: usize,
    /// Seed of the kmalloc-mixed size table (the same for every allocator).
    pub seed: u64,
}

impl SlabSettings {
    /// The settings of `kmm bench slab`: a 1 GiB machine with 2 CPUs, ~50 ms
    /// per run (100 ms for producer/consumer, the noisiest), best of 7, one million live objects, a 1024-slot ring.
    pub fn full() -> SlabSettings {
        SlabSettings {
            ram: 1 << 30,
            target: Duration::from_millis(50),
            runs: 7,
            live: 1_000_000,
            ring: 1024,
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }
}

/// What `kmm bench slab` found.
#[derive(Clone, Debug)]
pub struct SlabReport {
    /// kmm's figure per pattern of [`PATTERNS`], in ns per pair or object.
    pub kmm_ns: [f64; 4],
    /// Each competitor's figure per pattern: `rival_ns[pattern][rival]`.
    pub rival_ns: [[f64; 6]; 4],
    /// Bytes kmm's slabs held for the live objects, over their payload.
    pub kmm_overhead: f64,
    /// Every `ratio` line, in order: its name and value.
    pub ratios: Vec<(String, f64)>,
}

/// Runs `kmm bench slab` with `s`, handing each output line to `out` as soon
/// as it is known.
pub fn slab(s: &SlabSettings, out: &mut dyn FnMut(&str)) -> Result<SlabReport, String> {
    out(&format!(
        "kmm bench slab: x86_64 profile, 4K pages, 2 CPUs; pairs on CPU 0, producer/consumer CPU 0 -> CPU 1; best of {} runs of ~{} ms (producer/consumer ~{} ms)",
        s.runs,
        s.target.as_millis(),
        (s.target * 2).as_millis()
    ));
    out(&format!("host: {}", host_name()));

    let machine = Machine::boot(MachineConfig {
        ram: s.ram,
        cpus: 2,
        ..Default::default()
    })
    .map_err(|e| format!("cannot boot a {} machine: {e}", gib(s.ram)))?;
    let kmm = machine.kmm();
    let start_free = settled(kmm);
    let cache = kmm
        .kmem_cache_create("bench64", OBJ, 0, SlabFlags::empty(), None)
        .map_err(|e| format!("kmem_cache_create(bench64): {e}"))?;
    let info = kmm
        .kmem_cache_info(cache)
        .map_err(|e| format!("kmem_cache_info(bench64): {e}"))?;
    out(&format!(
        "machine: {} RAM, 2 CPUs; cache bench64: {}-byte objects, {} per {}-page slab, per-CPU array of {} (batch {})",
        gib(s.ram),
        info.size,
        info.objects_per_slab,
        info.pages_per_slab,
        info.limit,
        info.batchcount
    ));
    out(&format!(
        "competitors: {} (no_std, each on its own {} region of host memory), System (glibc malloc), mimalloc",
        RIVALS[..NO_STD].join(", "),
        gib(s.ram)
    ));
    let sizes = mixed_sizes(s.seed);
    let mean = sizes.iter().sum::<usize>() as f64 / MIXED as f64;
    out(&format!(
        "kmalloc-mixed: a cycle of {MIXED} sizes, 8-{MIXED_MAX} bytes, log-uniform (mean {mean:.0} bytes)"
    ));
    let baseline = settled(kmm);

    // Memory first, while the host allocators hold no freed memory to reuse.
    let bytes = memory(s, kmm, cache, baseline, out)?;

    out("");
    let harness = harness(s, &sizes)?;
    out(&format!(
        "harness alone (no-op allocator, included below): pair {:.1} ns, mixed pair {:.1} ns, producer/consumer object {:.1} ns",
        harness[0].ns, harness[1].ns, harness[2].ns
    ));

    let mut kmm_ns = [0.0; 4];
    let mut rival_ns = [[0.0; 6]; 4];
    // The single-CPU pairs run as CPU 0, as a kernel thread would: the
    // binding makes this thread the CPU's only user (see `Cpus::bind`).
    let cpu0 = bind(Some(machine.cpus()), 0)?;
    let single = single_cpu(s, kmm, cache, &sizes, baseline, out)?;
    drop(cpu0);
    for (p, figures) in single.iter().enumerate() {
        kmm_ns[p] = figures[0].ns;
        for (r, f) in figures[1..].iter().enumerate() {
            rival_ns[p][r] = f.ns;
        }
    }
    let pc = producer_consumer(s, &machine, cache, baseline, out)?;
    kmm_ns[3] = pc[0].ns;
    for (r, f) in pc[1..].iter().enumerate() {
        rival_ns[3][r] = f.ns;
    }

    kmm.kmem_cache_destroy(cache)
        .map_err(|e| format!("kmem_cache_destroy(bench64): {e}"))?;
    let end_free = settled(kmm);
    if end_free != start_free || kmm.nr_pcp_pages() != 0 {
        return Err(format!(
            "kmm did not give back its pages: {start_free} free before the benchmark, {end_free} after"
        ));
    }
    out(&format!(
        "kmm: bench64 destroyed, caches shrunk, per-CPU lists drained: {end_free} pages free, as before the benchmark"
    ));

    let payload = (s.live * OBJ) as f64;
    let kmm_bytes = bytes[0].unwrap_or(0) as f64;
    let kmm_overhead = kmm_bytes / payload;
    let mut ratios = Vec::new();
    for (p, name) in PATTERNS.iter().enumerate() {
        for (r, rival) in RIVALS.iter().enumerate() {
            ratios.push((format!("{name}-vs-{rival}"), rival_ns[p][r] / kmm_ns[p]));
        }
    }
    for (r, rival) in RIVALS.iter().enumerate() {
        if let Some(b) = bytes[r + 1] {
            ratios.push((format!("memory-1m-64b-vs-{rival}"), b as f64 / kmm_bytes));
        }
    }
    ratios.push(("memory-1m-64b".to_string(), payload / kmm_bytes));
    let r = SlabReport {
        kmm_ns,
        rival_ns,
        kmm_overhead,
        ratios,
    };
    targets(&r, out);
    out("");
    out("ratios: competitor's time or bytes over kmm's (> 1: kmm faster or smaller); memory-1m-64b: payload over kmm's slab bytes (1.00: no overhead)");
    for (name, v) in &r.ratios {
        out(&format!("ratio {name} {v:.2}"));
    }
    Ok(r)
}

/// Prints the targets of the issue and whether each is met.
fn targets(r: &SlabReport, out: &mut dyn FnMut(&str)) {
    let line = |what: &str, value: String, ok: bool| {
        let verdict = if ok { "met" } else { "NOT MET" };
        format!("  {what:<80}{value:>9}  {verdict}")
    };
    out("");
    out("targets:");
    out(&line(
        "kmm cache64 pair (kmem_cache_alloc + kmem_cache_free) <= 10 ns",
        format!("{:.1} ns", r.kmm_ns[0]),
        r.kmm_ns[0] <= 10.0,
    ));
    out(&line(
        "kmm kmalloc(64) + kfree pair <= 15 ns",
        format!("{:.1} ns", r.kmm_ns[1]),
        r.kmm_ns[1] <= 15.0,
    ));
    for (p, name) in PATTERNS.iter().enumerate() {
        // The closest no_std crate: the smallest ratio of its time to kmm's.
        let (worst, ratio) = r.rival_ns[p][..NO_STD]
            .iter()
            .enumerate()
            .map(|(i, ns)| (i, ns / r.kmm_ns[p]))
            .fold((0, f64::INFINITY), |a, b| if b.1 < a.1 { b } else { a });
        out(&line(
            &format!(
                "{name}: faster than every no_std crate (closest: {})",
                RIVALS[worst]
            ),
            format!("{ratio:.2}x"),
            ratio > 1.0,
        ));
    }
    for (p, name) in PATTERNS[..3].iter().enumerate() {
        let m = r.kmm_ns[p] / r.rival_ns[p][5];
        out(&line(
            &format!("{name}: kmm time <= 1.5x mimalloc's"),
            format!("{m:.2}x"),
            m <= 1.5,
        ));
    }
    out(&line(
        "1M live 64-byte objects: slab pages <= 1.05x payload",
        format!("{:.3}x", r.kmm_overhead),
        r.kmm_overhead > 0.0 && r.kmm_overhead <= 1.05,
    ));
}

/// Free pages once every cache is shrunk (per-CPU object arrays drained,
/// empty slabs released) and the per-CPU page lists are drained.
fn settled(kmm: &Kmm<SimPlatform>) -> u64 {
    kmm.shrink_slab(GfpFlags::GFP_KERNEL);
    kmm.drain_all_pages();
    kmm.nr_free_pages()
}

/// Fails unless the machine, settled, has `before` free pages again: a
/// pattern must give back every page it took.
fn balanced(kmm: &Kmm<SimPlatform>, before: u64, what: &str) -> Result<(), String> {
    let after = settled(kmm);
    if after != before || kmm.nr_pcp_pages() != 0 {
        return Err(format!(
            "pattern {what} did not give back kmm's pages: {before} free before, {after} after"
        ));
    }
    Ok(())
}

/// One report line: who, what, ns and iterations.
fn label(who: &str, what: &str, f: Figure, unit: &str) -> String {
    format!(
        "{who:<24}{what:<20}{:>9.1} ns   ({} {unit}/run)",
        f.ns, f.iters
    )
}

/// The fixed kmalloc-mixed cycle: for each entry a power-of-two range
/// `[2^e, 2^(e+1))` with `e` in 3..=11, or 4096 itself, picked at random, then
/// a size at random inside it. Deterministic for a seed.
pub fn mixed_sizes(seed: u64) -> [usize; MIXED] {
    let mut rng = XorShift64(seed | 1);
    let mut sizes = [0; MIXED];
    for s in sizes.iter_mut() {
        let r = rng.next();
        let e = 3 + ((r >> 32) % 10) as u32;
        let lo = 1usize << e;
        *s = if lo >= MIXED_MAX {
            MIXED_MAX
        } else {
            lo + (r as usize) % lo
        };
    }
    sizes
}

/// The harness alone: a pair, a mixed pair and a producer/consumer object
/// with an allocator that does nothing.
fn harness(s: &SlabSettings, sizes: &[usize; MIXED]) -> Result<Vec<Figure>, String> {
    let (mut a, mut b) = (NullObjects(0), NullObjects(0));
    let (mut p, mut c) = (NullObjects(0), NullObjects(0));
    let mut loops: [Timed<'_>; 3] = [
        Box::new(|n| pairs(&mut a, OBJ, n)),
        Box::new(|n| mixed_pairs(&mut b, sizes, n)),
        Box::new(|n| prodcons(n, s.ring, &mut p, &mut c, None)),
    ];
    measure(s.target, s.runs, &mut loops)
}

/// The three single-CPU patterns, kmm first then [`RIVALS`]; prints their
/// lines and returns their figures by pattern.
fn single_cpu(
    s: &SlabSettings,
    kmm: &Kmm<SimPlatform>,
    cache: KmemCache,
    sizes: &[usize; MIXED],
    baseline: u64,
    out: &mut dyn FnMut(&str),
) -> Result<Vec<Vec<Figure>>, String> {
    let bytes = s.ram as usize;
    let (r_sc, r_zone) = (Region::new(bytes)?, Region::new(bytes)?);
    let (r_talc, r_ll, r_buddy) = (
        Region::new(bytes)?,
        Region::new(bytes)?,
        Region::new(bytes)?,
    );
    let mut sc = SlabCache::new(Some(Pager::new(&r_sc)));
    let mut zone = SlabZone::new(Pager::new(&r_zone));
    let mut talc = TalcHeap::new(&r_talc)?;
    let mut ll = LinkedHeap::new(&r_ll);
    let mut buddy = BuddyHeap::new(&r_buddy);
    let mut system = Global::new(&System, "System");
    let mut mim = Global::new(&MiMalloc, "mimalloc");
    let mut kc = KmmCache { kmm, cache };
    let mut km = KmmKmalloc(kmm);
    let names = ["kmm", &RIVALS[..4].join(" "), "System", "mimalloc"];
    let who = |i: usize| match i {
        0 => names[0].to_string(),
        5 => names[2].to_string(),
        6 => names[3].to_string(),
        i => RIVALS[i - 1].to_string(),
    };
    let mut all = Vec::new();

    out("");
    out("cache64 pair: kmem_cache_alloc + kmem_cache_free on bench64 (slabmalloc: SCAllocator(64); others: alloc + free of 64 bytes)");
    let f = measure(
        s.target,
        s.runs,
        &mut [
            Box::new(|n| pairs(&mut kc, OBJ, n)),
            Box::new(|n| pairs(&mut sc, OBJ, n)),
            Box::new(|n| pairs(&mut talc, OBJ, n)),
            Box::new(|n| pairs(&mut ll, OBJ, n)),
            Box::new(|n| pairs(&mut buddy, OBJ, n)),
            Box::new(|n| pairs(&mut system, OBJ, n)),
            Box::new(|n| pairs(&mut mim, OBJ, n)),
        ],
    )?;
    balanced(kmm, baseline, "cache64")?;
    for (i, fig) in f.iter().enumerate() {
        out(&label(&who(i), "cache64 pair", *fig, "pairs"));
    }
    all.push(f);

    out("");
    out("kmalloc64 pair: kmalloc(64, GFP_KERNEL) + kfree (slabmalloc: ZoneAllocator; others: alloc + free of 64 bytes)");
    let f = measure(
        s.target,
        s.runs,
        &mut [
            Box::new(|n| pairs(&mut km, OBJ, n)),
            Box::new(|n| pairs(&mut zone, OBJ, n)),
            Box::new(|n| pairs(&mut talc, OBJ, n)),
            Box::new(|n| pairs(&mut ll, OBJ, n)),
            Box::new(|n| pairs(&mut buddy, OBJ, n)),
            Box::new(|n| pairs(&mut system, OBJ, n)),
            Box::new(|n| pairs(&mut mim, OBJ, n)),
        ],
    )?;
    balanced(kmm, baseline, "kmalloc64")?;
    for (i, fig) in f.iter().enumerate() {
        out(&label(&who(i), "kmalloc64 pair", *fig, "pairs"));
    }
    all.push(f);

    out("");
    out(&format!(
        "kmalloc-mixed pair: kmalloc + kfree over the size cycle, average per pair ({MIXED} objects, one of each size, held meanwhile)"
    ));
    let held = (
        hold(&mut km, sizes)?,
        hold(&mut zone, sizes)?,
        hold(&mut talc, sizes)?,
        hold(&mut ll, sizes)?,
        hold(&mut buddy, sizes)?,
        hold(&mut system, sizes)?,
        hold(&mut mim, sizes)?,
    );
    let f = measure(
        s.target,
        s.runs,
        &mut [
            Box::new(|n| mixed_pairs(&mut km, sizes, n)),
            Box::new(|n| mixed_pairs(&mut zone, sizes, n)),
            Box::new(|n| mixed_pairs(&mut talc, sizes, n)),
            Box::new(|n| mixed_pairs(&mut ll, sizes, n)),
            Box::new(|n| mixed_pairs(&mut buddy, sizes, n)),
            Box::new(|n| mixed_pairs(&mut system, sizes, n)),
            Box::new(|n| mixed_pairs(&mut mim, sizes, n)),
        ],
    );
    release(&mut km, sizes, held.0)?;
    release(&mut zone, sizes, held.1)?;
    release(&mut talc, sizes, held.2)?;
    release(&mut ll, sizes, held.3)?;
    release(&mut buddy, sizes, held.4)?;
    release(&mut system, sizes, held.5)?;
    release(&mut mim, sizes, held.6)?;
    let f = f?;
    balanced(kmm, baseline, "kmalloc-mixed")?;
    for (i, fig) in f.iter().enumerate() {
        out(&label(&who(i), "kmalloc-mixed pair", *fig, "pairs"));
    }
    all.push(f);
    Ok(all)
}

/// The producer/consumer pattern, kmm first then [`RIVALS`]; prints its
/// lines and returns its figures.
fn producer_consumer(
    s: &SlabSettings,
    machine: &Machine,
    cache: KmemCache,
    baseline: u64,
    out: &mut dyn FnMut(&str),
) -> Result<Vec<Figure>, String> {
    let kmm = machine.kmm();
    let cpus = machine.cpus();
    let bytes = s.ram as usize;
    let (r_sc, r_talc, r_ll, r_buddy) = (
        Region::new(bytes)?,
        Region::new(bytes)?,
        Region::new(bytes)?,
        Region::new(bytes)?,
    );
    let talc: TalcLock<spinning_top::RawSpinlock, Manual> = TalcLock::new(Manual);
    // SAFETY: the region is used by nothing else and outlives `talc`.
    unsafe { talc.lock().claim(r_talc.base(), r_talc.len()) }
        .ok_or("talc: cannot claim its region")?;
    // SAFETY: as above, for `ll`.
    let ll = unsafe { linked_list_allocator::LockedHeap::new(r_ll.base(), r_ll.len()) };
    let buddy = buddy_system_allocator::LockedHeap::<BUDDY_ORDER>::new();
    // SAFETY: as above, for `buddy`.
    unsafe { buddy.lock().init(r_buddy.base() as usize, r_buddy.len()) };

    let (mut kp, mut kc) = (KmmCache { kmm, cache }, KmmCache { kmm, cache });
    let (mut sp, mut sc) = (
        SlabCache::new(Some(Pager::new(&r_sc))),
        SlabCache::new(None),
    );
    let (mut tp, mut tc) = (Global::new(&talc, "talc"), Global::new(&talc, "talc"));
    let (mut lp, mut lc) = (
        Global::new(&ll, "linked_list_allocator"),
        Global::new(&ll, "linked_list_allocator"),
    );
    let (mut bp, mut bc) = (
        Global::new(&buddy, "buddy_system_allocator"),
        Global::new(&buddy, "buddy_system_allocator"),
    );
    let (mut yp, mut yc) = (
        Global::new(&System, "System"),
        Global::new(&System, "System"),
    );
    let (mut mp, mut mc) = (
        Global::new(&MiMalloc, "mimalloc"),
        Global::new(&MiMalloc, "mimalloc"),
    );
    let ring = s.ring;

    out("");
    out(&format!(
        "prodcons: thread 1 allocates 64-byte objects, a {ring}-slot ring carries them to thread 2, which frees them (kmm: bench64 on CPUs 0 and 1; talc, linked_list_allocator, buddy_system_allocator: their locked heaps; slabmalloc: an SCAllocator(64) per thread)"
    ));
    let f = measure(
        s.target * 2,
        s.runs,
        &mut [
            Box::new(|n| prodcons(n, ring, &mut kp, &mut kc, Some(cpus))),
            Box::new(|n| {
                let t = prodcons(n, ring, &mut sp, &mut sc, None);
                sp.reclaim();
                t
            }),
            Box::new(|n| prodcons(n, ring, &mut tp, &mut tc, None)),
            Box::new(|n| prodcons(n, ring, &mut lp, &mut lc, None)),
            Box::new(|n| prodcons(n, ring, &mut bp, &mut bc, None)),
            Box::new(|n| prodcons(n, ring, &mut yp, &mut yc, None)),
            Box::new(|n| prodcons(n, ring, &mut mp, &mut mc, None)),
        ],
    )?;
    balanced(kmm, baseline, "prodcons")?;
    let names = ["kmm"]
        .into_iter()
        .chain(RIVALS[..NO_STD].iter().copied())
        .chain(["System", "mimalloc"]);
    for (who, fig) in names.zip(f.iter()) {
        out(&label(who, "prodcons object", *fig, "objects"));
    }
    Ok(f)
}

/// How the memory pattern measures an allocator.
#[derive(Clone, Copy, Debug)]
enum Meter {
    /// The allocator knows what it took ([`Objects::footprint`]).
    Own,
    /// The end of the highest object, from the start of the region at this address.
    HighWater(u64),
    /// Growth of the process's resident set.
    Rss,
}

/// The memory pattern, kmm first then [`RIVALS`]: bytes used for
/// [`SlabSettings::live`] live 64-byte objects (`None`: not measurable).
fn memory(
    s: &SlabSettings,
    kmm: &Kmm<SimPlatform>,
    cache: KmemCache,
    baseline: u64,
    out: &mut dyn FnMut(&str),
) -> Result<Vec<Option<u64>>, String> {
    let n = s.live;
    let payload = (n * OBJ) as f64;
    let mut objs = Vec::new();
    let mut used = Vec::new();
    let show = |who: &str, how: &str, b: Option<u64>, out: &mut dyn FnMut(&str)| {
        let what = format!("{n} x 64 B");
        match b {
            Some(b) => out(&format!(
                "{who:<24}{what:<20}{:>9.1} B/object   ({:.1} MiB, {:.3}x payload; {how})",
                b as f64 / n as f64,
                b as f64 / (1 << 20) as f64,
                b as f64 / payload,
            )),
            None => out(&format!(
                "{who:<24}{what:<20}{:>9}            ({how} not available)",
                "n/a",
            )),
        }
    };
    out("");
    out(&format!(
        "memory: {n} live 64-byte objects ({:.1} MiB of payload), then all freed",
        payload / (1 << 20) as f64
    ));

    let b = live(&mut KmmCache { kmm, cache }, n, Meter::Own, &mut objs)?;
    balanced(kmm, baseline, "memory")?;
    show("kmm", "pages in the cache's slabs", b, out);
    used.push(b);

    let bytes = s.ram as usize;
    {
        let r = Region::new(bytes)?;
        let b = live(
            &mut SlabCache::new(Some(Pager::new(&r))),
            n,
            Meter::Own,
            &mut objs,
        )?;
        show(RIVALS[0], "pages it was given", b, out);
        used.push(b);
    }
    {
        let r = Region::new(bytes)?;
        let meter = Meter::HighWater(r.base() as u64);
        let b = live(&mut TalcHeap::new(&r)?, n, meter, &mut objs)?;
        show(RIVALS[1], "region high-water", b, out);
        used.push(b);
    }
    {
        let r = Region::new(bytes)?;
        let meter = Meter::HighWater(r.base() as u64);
        let b = live(&mut LinkedHeap::new(&r), n, meter, &mut objs)?;
        show(RIVALS[2], "region high-water", b, out);
        used.push(b);
    }
    {
        let r = Region::new(bytes)?;
        let b = live(&mut BuddyHeap::new(&r), n, Meter::Own, &mut objs)?;
        show(RIVALS[3], "bytes in its blocks", b, out);
        used.push(b);
    }
    let b = live(
        &mut Global::new(&System, "System"),
        n,
        Meter::Rss,
        &mut objs,
    )?;
    show("System", "resident set growth", b, out);
    used.push(b);
    let b = live(
        &mut Global::new(&MiMalloc, "mimalloc"),
        n,
        Meter::Rss,
        &mut objs,
    )?;
    show("mimalloc", "resident set growth", b, out);
    used.push(b);
    Ok(used)
}

// ------------------------------------------------------------------ loops

/// An object allocator as the slab benchmarks drive it.
///
/// Each allocator returns its own error type, so the timed loops pay for no
/// conversion; failures become text only on the error path.
trait Objects {
    /// Why an allocation or a free failed.
    type Error: fmt::Display;
    /// Allocates `size` bytes, 8-byte aligned; returns the address.
    fn alloc(&mut self, size: usize) -> Result<u64, Self::Error>;
    /// Frees `obj`.
    ///
    /// # Safety
    ///
    /// `obj` was returned by `alloc(size)`, with the same `size`, of this
    /// allocator or of one sharing its heap, and has not been freed since.
    unsafe fn free(&mut self, obj: u64, size: usize) -> Result<(), Self::Error>;
    /// Bytes of memory the allocator has taken for its objects, if it keeps
    /// count (kmm: pages in slabs; slabmalloc: pages it was given).
    fn footprint(&self) -> Option<u64> {
        None
    }
}

/// Turns an allocator's error into the report's text (off the fast path).
#[cold]
fn failed(what: &str, size: usize, e: impl fmt::Display) -> String {
    format!("{what} of {size} bytes failed: {e}")
}

/// `n` allocate-then-free pairs of `size` bytes; returns the time they took.
fn pairs<O: Objects>(o: &mut O, size: usize, n: u64) -> Result<Duration, String> {
    let t = Instant::now();
    for _ in 0..n {
        let obj = o.alloc(size).map_err(|e| failed("alloc", size, e))?;
        // SAFETY: `obj` was just allocated with `size` and is freed once.
        unsafe { o.free(black_box(obj), size) }.map_err(|e| failed("free", size, e))?;
    }
    Ok(t.elapsed())
}

/// `n` allocate-then-free pairs, the `i`th of `sizes[i % MIXED]` bytes.
fn mixed_pairs<O: Objects>(o: &mut O, sizes: &[usize; MIXED], n: u64) -> Result<Duration, String> {
    let t = Instant::now();
    for i in 0..n {
        let size = sizes[i as usize % MIXED];
        let obj = o.alloc(size).map_err(|e| failed("alloc", size, e))?;
        // SAFETY: `obj` was just allocated with `size` and is freed once.
        unsafe { o.free(black_box(obj), size) }.map_err(|e| failed("free", size, e))?;
    }
    Ok(t.elapsed())
}

/// Allocates one object of each size of `sizes` and keeps them, so that the
/// kmalloc-mixed pairs run on a heap in use, as a kernel's is, instead of
/// emptying a page of some size class on every pair (mimalloc, for one, then
/// retires the empty page and later faults a fresh one in: 6x slower pairs,
/// depending on the order of the sizes). Give them back with [`release`].
fn hold<O: Objects>(o: &mut O, sizes: &[usize]) -> Result<Vec<u64>, String> {
    let mut held = Vec::with_capacity(sizes.len());
    for &size in sizes {
        match o.alloc(size) {
            Ok(obj) => held.push(obj),
            Err(e) => {
                let err = failed("alloc", size, e);
                release(o, sizes, held)?;
                return Err(err);
            }
        }
    }
    Ok(held)
}

/// Frees what [`hold`] allocated (`held[i]` has `sizes[i]` bytes).
fn release<O: Objects>(o: &mut O, sizes: &[usize], held: Vec<u64>) -> Result<(), String> {
    for (obj, &size) in held.into_iter().zip(sizes) {
        // SAFETY: `hold` allocated `obj` with `size` bytes; it is freed once.
        unsafe { o.free(obj, size) }.map_err(|e| failed("free", size, e))?;
    }
    Ok(())
}

/// Allocates `n` live 64-byte objects into `objs`, measures the memory they
/// take with `meter`, and frees them all in allocation order (also after an
/// error). Returns the bytes measured.
fn live<O: Objects>(
    o: &mut O,
    n: usize,
    meter: Meter,
    objs: &mut Vec<u64>,
) -> Result<Option<u64>, String> {
    // Touch the vector's pages before the resident set is read.
    objs.clear();
    objs.resize(n, 0);
    objs.clear();
    let before = rss();
    let mut result = Ok(());
    for _ in 0..n {
        match o.alloc(OBJ) {
            Ok(obj) => objs.push(obj),
            Err(e) => {
                result = Err(failed("alloc", OBJ, e));
                break;
            }
        }
    }
    let used = match meter {
        Meter::Own => o.footprint(),
        Meter::HighWater(base) => objs
            .iter()
            .max()
            .map(|&top| (top + OBJ as u64).saturating_sub(base)),
        Meter::Rss => rss().zip(before).map(|(a, b)| a.saturating_sub(b)),
    };
    for &obj in objs.iter() {
        // SAFETY: every entry was allocated above with `OBJ` and is freed once.
        unsafe { o.free(obj, OBJ) }.map_err(|e| failed("free", OBJ, e))?;
    }
    objs.clear();
    result.map(|()| used)
}

/// The process's resident set in bytes (`/proc/self/statm`), if readable.
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * HOST_PAGE)
}

/// A value on a cache line (two, against adjacent-line prefetch) of its own.
#[repr(align(128))]
struct Padded<T>(T);

/// A bounded single-producer single-consumer ring of object addresses.
///
/// Each side publishes its index only every [`RING_BATCH`] objects (and
/// before it waits), and reads the other side's only when its copy says the
/// ring is full (or empty): objects cross between the threads in batches, so
/// the pattern measures the allocators' cross-CPU frees rather than a cache
/// line bouncing for every object.
struct Ring {
    slots: Box<[AtomicU64]>,
    /// `slots.len() - 1` (the length is a power of two).
    mask: usize,
    /// Slots filled so far, as last published by the producer.
    tail: Padded<AtomicUsize>,
    /// Slots emptied so far, as last published by the consumer.
    head: Padded<AtomicUsize>,
    /// Set by a side that failed, so that the other stops waiting.
    abort: AtomicBool,
}

/// Objects a ring side passes before it publishes its index.
const RING_BATCH: usize = 32;

/// One side's view of a [`Ring`]: its own index and its copy of the other's.
#[derive(Default)]
struct RingEnd {
    own: usize,
    seen: usize,
}

impl Ring {
    /// A ring of at least `slots` slots (a power of two, at least
    /// 2 x [`RING_BATCH`]).
    fn new(slots: usize) -> Ring {
        let n = slots.max(2 * RING_BATCH).next_power_of_two();
        Ring {
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
            mask: n - 1,
            tail: Padded(AtomicUsize::new(0)),
            head: Padded(AtomicUsize::new(0)),
            abort: AtomicBool::new(false),
        }
    }

    /// Tells the other side to stop waiting.
    fn abort(&self) {
        self.abort.store(true, Ordering::Relaxed);
    }

    /// Producer: appends `v`, waiting while the ring is full. False when the
    /// consumer gave up.
    #[inline]
    fn push(&self, v: u64, end: &mut RingEnd) -> bool {
        let t = end.own;
        if t.wrapping_sub(end.seen) > self.mask {
            // Let the consumer see everything before waiting for it.
            self.tail.0.store(t, Ordering::Release);
            let mut spins = 0;
            loop {
                end.seen = self.head.0.load(Ordering::Acquire);
                if t.wrapping_sub(end.seen) <= self.mask {
                    break;
                }
                if self.abort.load(Ordering::Relaxed) {
                    return false;
                }
                backoff(&mut spins);
            }
        }
        self.slots[t & self.mask].store(v, Ordering::Relaxed);
        end.own = t.wrapping_add(1);
        if end.own.is_multiple_of(RING_BATCH) {
            self.tail.0.store(end.own, Ordering::Release);
        }
        true
    }

    /// Producer: publishes what was pushed (at the end of the run).
    fn flush(&self, end: &RingEnd) {
        self.tail.0.store(end.own, Ordering::Release);
    }

    /// Consumer: takes the oldest value, waiting while the ring is empty.
    /// `None` when the producer gave up.
    #[inline]
    fn pop(&self, end: &mut RingEnd) -> Option<u64> {
        let h = end.own;
        if h == end.seen {
            // Let the producer reuse every emptied slot before waiting.
            self.head.0.store(h, Ordering::Release);
            let mut spins = 0;
            loop {
                end.seen = self.tail.0.load(Ordering::Acquire);
                if h != end.seen {
                    break;
                }
                if self.abort.load(Ordering::Relaxed) {
                    return None;
                }
                backoff(&mut spins);
            }
        }
        let v = self.slots[h & self.mask].load(Ordering::Relaxed);
        end.own = h.wrapping_add(1);
        if end.own.is_multiple_of(RING_BATCH) {
            self.head.0.store(end.own, Ordering::Release);
        }
        Some(v)
    }
}

/// Waits a little: spins first, then yields the host CPU (the host may have
/// fewer free cores than there are busy threads).
#[inline]
fn backoff(spins: &mut u32) {
    if *spins < 64 {
        *spins += 1;
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// Binds the calling thread to simulated CPU `cpu` when `cpus` is given.
fn bind(cpus: Option<&Cpus>, cpu: usize) -> Result<Option<kmm_sim::cpu::CpuBinding<'_>>, String> {
    cpus.map(|c| c.bind(cpu))
        .transpose()
        .map_err(|e| format!("cannot bind CPU {cpu}: {e}"))
}

/// `n` objects of 64 bytes from `producer` (on one thread, CPU 0 of `cpus`
/// when given) through a [`Ring`] of `slots` slots to `consumer` (on
/// another, CPU 1), which frees them. Returns the time from the first
/// allocation to the last free.
fn prodcons<A, B>(
    n: u64,
    slots: usize,
    producer: &mut A,
    consumer: &mut B,
    cpus: Option<&Cpus>,
) -> Result<Duration, String>
where
    A: Objects + Send,
    B: Objects + Send,
{
    let ring = Ring::new(slots);
    let ready = Barrier::new(2);
    let (ring, ready) = (&ring, &ready);
    std::thread::scope(|s| {
        let p = s.spawn(move || -> Result<Instant, String> {
            let cpu = bind(cpus, 0);
            if cpu.is_err() {
                ring.abort();
            }
            ready.wait();
            let _cpu = cpu?;
            let start = Instant::now();
            let mut end = RingEnd::default();
            for _ in 0..n {
                let obj = producer.alloc(OBJ).map_err(|e| {
                    ring.abort();
                    failed("producer: alloc", OBJ, e)
                })?;
                if !ring.push(obj, &mut end) {
                    // SAFETY: `obj` was just allocated and never handed on.
                    let _ = unsafe { producer.free(obj, OBJ) };
                    return Err("producer: the consumer stopped".to_string());
                }
            }
            ring.flush(&end);
            Ok(start)
        });
        let c = s.spawn(move || -> Result<Instant, String> {
            let cpu = bind(cpus, 1);
            if cpu.is_err() {
                ring.abort();
            }
            ready.wait();
            let _cpu = cpu?;
            let mut end = RingEnd::default();
            for _ in 0..n {
                let obj = ring.pop(&mut end).ok_or("consumer: the producer stopped")?;
                // SAFETY: `obj` came from the producer's `alloc(OBJ)` on an
                // allocator sharing the consumer's heap, and crossed the
                // ring once.
                unsafe { consumer.free(obj, OBJ) }.map_err(|e| {
                    ring.abort();
                    failed("consumer: free", OBJ, e)
                })?;
            }
            Ok(Instant::now())
        });
        let start = p
            .join()
            .unwrap_or_else(|_| Err("producer thread panicked".to_string()));
        let end = c
            .join()
            .unwrap_or_else(|_| Err("consumer thread panicked".to_string()));
        Ok(end?.saturating_duration_since(start?))
    })
}

// ------------------------------------------------------------ allocators

/// kmm's `bench64` cache through `kmem_cache_alloc` / `kmem_cache_free`.
#[derive(Clone, Copy)]
struct KmmCache<'a> {
    kmm: &'a Kmm<SimPlatform>,
    cache: KmemCache,
}

impl Objects for KmmCache<'_> {
    type Error = KmmError;
    #[inline(always)]
    fn alloc(&mut self, _size: usize) -> Result<u64, KmmError> {
        self.kmm.kmem_cache_alloc(self.cache, GfpFlags::GFP_KERNEL)
    }
    #[inline(always)]
    unsafe fn free(&mut self, obj: u64, _size: usize) -> Result<(), KmmError> {
        self.kmm.kmem_cache_free(self.cache, obj)
    }
    fn footprint(&self) -> Option<u64> {
        let i = self.kmm.kmem_cache_info(self.cache).ok()?;
        Some(i.num_slabs * i.pages_per_slab as u64 * self.kmm.page_size())
    }
}

/// kmm's `kmalloc` / `kfree`.
struct KmmKmalloc<'a>(&'a Kmm<SimPlatform>);

impl Objects for KmmKmalloc<'_> {
    type Error = KmmError;
    #[inline(always)]
    fn alloc(&mut self, size: usize) -> Result<u64, KmmError> {
        self.0.kmalloc(size, GfpFlags::GFP_KERNEL)
    }
    #[inline(always)]
    unsafe fn free(&mut self, obj: u64, _size: usize) -> Result<(), KmmError> {
        self.0.kfree(obj)
    }
}

/// An allocator that hands out made-up addresses and frees nothing: it
/// measures what the benchmark loops cost by themselves.
struct NullObjects(u64);

impl Objects for NullObjects {
    type Error = NoMemory;
    #[inline(always)]
    fn alloc(&mut self, size: usize) -> Result<u64, NoMemory> {
        self.0 = self.0.wrapping_add(size as u64);
        Ok(self.0)
    }
    #[inline(always)]
    unsafe fn free(&mut self, _obj: u64, _size: usize) -> Result<(), NoMemory> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> SlabSettings {
        SlabSettings {
            ram: 256 << 20,
            target: Duration::from_micros(300),
            runs: 1,
            live: 5000,
            ring: 16,
            seed: 42,
        }
    }

    #[test]
    fn report_ends_with_the_ratio_lines() {
        let mut text = String::new();
        let r = slab(&tiny(), &mut |l| {
            text.push_str(l);
            text.push('\n');
        })
        .unwrap();
        let n = PATTERNS.len() * RIVALS.len() + RIVALS.len() + 1;
        assert_eq!(r.ratios.len(), n);
        let tail: Vec<&str> = text.lines().rev().take(n).collect();
        for line in &tail {
            crate::bench::split_ratio_line(line);
        }
        for name in [
            "cache64-vs-mimalloc",
            "kmalloc64-vs-mimalloc",
            "kmalloc-mixed-vs-talc",
            "prodcons-vs-slabmalloc",
            "prodcons-vs-buddy_system_allocator",
            "memory-1m-64b-vs-linked_list_allocator",
        ] {
            assert!(
                tail.iter()
                    .any(|l| l.starts_with(&format!("ratio {name} "))),
                "no ratio line for {name}"
            );
        }
        assert_eq!(*tail.first().unwrap(), {
            let (_, v) = r.ratios.last().unwrap();
            format!("ratio memory-1m-64b {v:.2}")
        });
        assert!(text.contains("targets:"));
        assert!(text.contains("harness alone"));
        assert!(r.kmm_ns.iter().all(|&ns| ns > 0.0));
        // 64-byte objects fill 4 KiB slabs exactly.
        assert!(
            r.kmm_overhead >= 1.0 && r.kmm_overhead < 1.1,
            "{}",
            r.kmm_overhead
        );
    }

    #[test]
    fn kmm_patterns_give_back_every_page() {
        let s = tiny();
        let m = Machine::boot(MachineConfig {
            ram: s.ram,
            cpus: 2,
            ..Default::default()
        })
        .unwrap();
        let kmm = m.kmm();
        let start = settled(kmm);
        let cache = kmm
            .kmem_cache_create("bench64", OBJ, 0, SlabFlags::empty(), None)
            .unwrap();
        let baseline = settled(kmm);
        let sizes = mixed_sizes(s.seed);
        let mut kc = KmmCache { kmm, cache };
        pairs(&mut kc, OBJ, 1000).unwrap();
        balanced(kmm, baseline, "cache64").unwrap();
        pairs(&mut KmmKmalloc(kmm), OBJ, 1000).unwrap();
        mixed_pairs(&mut KmmKmalloc(kmm), &sizes, 5000).unwrap();
        balanced(kmm, baseline, "kmalloc").unwrap();
        let mut kc2 = kc;
        prodcons(20_000, s.ring, &mut kc, &mut kc2, Some(m.cpus())).unwrap();
        balanced(kmm, baseline, "prodcons").unwrap();
        let b = live(&mut kc, 3000, Meter::Own, &mut Vec::new()).unwrap();
        // 3000 objects need 47 slabs of 64; per-CPU refills may add a batch.
        let pages = b.unwrap() / kmm.page_size();
        assert!((47..=50).contains(&pages), "{pages} pages");
        balanced(kmm, baseline, "memory").unwrap();
        // A leak is caught.
        let obj = kmm.kmem_cache_alloc(cache, GfpFlags::GFP_KERNEL).unwrap();
        assert!(balanced(kmm, baseline, "leaky").is_err());
        kmm.kmem_cache_free(cache, obj).unwrap();
        balanced(kmm, baseline, "fixed").unwrap();
        kmm.kmem_cache_destroy(cache).unwrap();
        assert_eq!(settled(kmm), start);
        assert_eq!(kmm.nr_pcp_pages(), 0);
    }

    #[test]
    fn mixed_sizes_span_8_to_4096_and_repeat() {
        let a = mixed_sizes(7);
        assert_eq!(a, mixed_sizes(7), "deterministic");
        assert!(a.iter().all(|&s| (8..=MIXED_MAX).contains(&s)));
        // Every power-of-two range shows up.
        for e in 3..=12 {
            let lo = 1usize << e;
            assert!(
                a.iter()
                    .any(|&s| s >= lo && (s < 2 * lo || lo == MIXED_MAX)),
                "no size in [{lo}, {})",
                2 * lo
            );
        }
    }

    #[test]
    fn ring_delivers_every_object_once_in_order() {
        /// Produces 1, 2, 3, ...; the consumer checks it frees them in order.
        struct Seq(u64);
        impl Objects for Seq {
            type Error = NoMemory;
            fn alloc(&mut self, _size: usize) -> Result<u64, NoMemory> {
                self.0 += 1;
                Ok(self.0)
            }
            unsafe fn free(&mut self, obj: u64, _size: usize) -> Result<(), NoMemory> {
                self.0 += 1;
                if obj == self.0 {
                    Ok(())
                } else {
                    Err(NoMemory("out of order"))
                }
            }
        }
        let (mut p, mut c) = (Seq(0), Seq(0));
        prodcons(100_000, 4, &mut p, &mut c, None).unwrap();
        assert_eq!((p.0, c.0), (100_000, 100_000));
        // A failing consumer stops the producer instead of hanging it.
        let (mut p, mut c) = (Seq(0), Seq(5));
        let e = prodcons(100_000, 4, &mut p, &mut c, None).unwrap_err();
        assert!(e.contains("out of order"), "{e}");
    }

    #[test]
    fn competitors_serve_every_pattern() {
        let r = Region::new(64 << 20).unwrap();
        let sizes = mixed_sizes(1);
        let mut zone = SlabZone::new(Pager::new(&r));
        mixed_pairs(&mut zone, &sizes, 2000).unwrap();
        let r2 = Region::new(64 << 20).unwrap();
        let mut sc = SlabCache::new(Some(Pager::new(&r2)));
        let b = live(&mut sc, 1000, Meter::Own, &mut Vec::new()).unwrap();
        // 62 objects per page (80 bytes of metadata): 17 pages.
        assert_eq!(b, Some(17 * 4096));
        let mut cons = SlabCache::new(None);
        prodcons(10_000, 8, &mut sc, &mut cons, None).unwrap();
        sc.reclaim();
        let r3 = Region::new(64 << 20).unwrap();
        let mut t = TalcHeap::new(&r3).unwrap();
        mixed_pairs(&mut t, &sizes, 2000).unwrap();
        let meter = Meter::HighWater(r3.base() as u64);
        let b = live(&mut t, 1000, meter, &mut Vec::new()).unwrap().unwrap();
        assert!(b >= 64_000, "{b}");
        // Nothing was left allocated: the same objects come back.
        let again = live(&mut t, 1000, meter, &mut Vec::new()).unwrap().unwrap();
        assert_eq!(b, again);
    }
}
