//! `kmm bench`: benchmarks of kmm's fast paths against the crates a Rust user
//! would otherwise pick, measured in one run and summed up as ratios.
//!
//! `kmm bench pages` times, on one host thread:
//!
//! * an **order-0 pair**: `alloc_pages(GFP_KERNEL, 0)` + `__free_pages(page, 0)`,
//!   which kmm serves from the per-CPU list;
//! * an **order-3 pair**: the same with 8 pages, served by the buddy lists;
//! * a **churn**: a deterministic pseudo-random sequence of allocations and
//!   frees of orders 0 to 3 keeping at most [`Settings::churn_live`] blocks
//!   alive, timed per operation (one allocation or one free);
//!
//! on a 1 GiB kmm machine, on `buddy_system_allocator`'s `FrameAllocator`
//! given exactly the frames kmm has free in that machine's `ZONE_DMA32` (where
//! its `GFP_KERNEL` pages come from), and on a 64 GiB kmm machine (order-0 pair
//! and churn only), to show that the fast path does not grow with RAM.
//!
//! Every figure is the best of [`Settings::runs`] timed runs of an iteration
//! count calibrated (after a warm-up) to take about [`Settings::target`]. The
//! rows of one comparison are timed in interleaved rounds, so that a busy
//! spell of a shared host slows all of them alike instead of skewing a ratio.
//! Each kmm benchmark must give back every page it took: after it, the
//! per-CPU lists are drained and `nr_free_pages()` must be what it was before.
//!
//! The output ends with one `ratio <what> <value>` line per comparison.
//!
//! `kmm bench slab` (the slab layer and kmalloc against the object
//! allocators of crates.io) lives in [`slab`], and `kmm bench vm` (loads
//! through the software MMU, TLB hits and page walks, against native loads)
//! in [`vm`]; both share the timing harness of this module.

pub mod faults;
mod slab;
mod vm;

use buddy_system_allocator::FrameAllocator;
use kmm::{GfpFlags, Kmm, Page, ZoneType, MAX_ORDER};
use kmm_sim::{Machine, MachineConfig, SimPlatform};
use std::hint::black_box;
use std::io::Write;
use std::time::{Duration, Instant};

/// The benchmarks `kmm bench` knows, with a line about each.
pub const BENCHMARKS: &[(&str, &str)] = &[
    (
        "pages",
        "page allocator: order-0/order-3 pairs and a mixed churn, kmm vs buddy_system_allocator, 1 GiB vs 64 GiB",
    ),
    (
        "slab",
        "slab caches and kmalloc: 64-byte cache pairs, kmalloc pairs of 8-4096 bytes, producer/consumer on 2 CPUs, 1M live objects; kmm vs slabmalloc, talc, linked_list_allocator, buddy_system_allocator, System, mimalloc",
    ),
    (
        "vm",
        "software MMU: 8-byte loads on TLB hits and on misses with a 4-level page walk, vs a native load from a Vec<u64>",
    ),
    (
        "faults",
        "processes: anonymous write faults, fork of 1 GiB written, TLB-hit loads; kmm vs this machine's Linux kernel",
    ),
];

/// Runs the benchmark named `what`, printing its report to stdout.
///
/// An unknown name is an error that lists the known benchmarks.
pub fn run(what: &str) -> Result<(), String> {
    let stdout = std::io::stdout();
    let mut out = |line: &str| {
        let mut o = stdout.lock();
        // A closed stdout only loses the report, not the measurement.
        let _ = writeln!(o, "{line}");
        let _ = o.flush();
    };
    match what {
        "pages" => pages(&Settings::full(), &mut out).map(drop),
        "slab" => slab::slab(&slab::SlabSettings::full(), &mut out).map(drop),
        "vm" => vm::vm(&vm::VmSettings::full(), &mut out).map(drop),
        "faults" => faults::run(&faults::FaultsArgs::default(), &mut std::io::stdout())
            .map_err(|e| e.to_string()),
        _ => {
            let known: Vec<String> = BENCHMARKS
                .iter()
                .map(|(name, about)| format!("  {name:<8}{about}"))
                .collect();
            Err(format!(
                "unknown benchmark `{what}`; known benchmarks:\n{}",
                known.join("\n")
            ))
        }
    }
}

/// How hard `kmm bench pages` measures.
#[derive(Clone, Debug)]
pub struct Settings {
    /// RAM of the main kmm machine (1 GiB).
    pub small_ram: u64,
    /// RAM of the large kmm machine (64 GiB).
    pub big_ram: u64,
    /// About how long one timed run of one figure takes.
    pub target: Duration,
    /// Timed runs per figure; the fastest counts.
    pub runs: usize,
    /// Most blocks alive at once in the churn.
    pub churn_live: usize,
    /// Seed of the churn's pseudo-random sequence (the same for every allocator).
    pub seed: u64,
}

impl Settings {
    /// The settings of `kmm bench pages`: 1 GiB vs 64 GiB, ~100 ms per run,
    /// best of 5, churn over 4096 live blocks.
    pub fn full() -> Settings {
        Settings {
            small_ram: 1 << 30,
            big_ram: 64 << 30,
            target: Duration::from_millis(100),
            runs: 5,
            churn_live: 4096,
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }
}

/// The comparisons `kmm bench pages` ends with.
#[derive(Clone, Copy, Debug)]
pub struct PagesRatios {
    /// kmm's order-0 pair on the small machine, in ns.
    pub order0_ns: f64,
    /// buddy_system_allocator's order-0 pair time over kmm's (> 1: kmm faster).
    pub order0_vs_buddy: f64,
    /// The same for the order-3 pair.
    pub order3_vs_buddy: f64,
    /// The same for a churn operation.
    pub churn_vs_buddy: f64,
    /// kmm's cost on the big machine over its cost on the small one: the worse
    /// of the order-0 pair and churn ratios.
    pub big_vs_small: f64,
}

/// One timed figure.
#[derive(Clone, Copy, Debug)]
struct Figure {
    /// Nanoseconds per pair or per operation (best run).
    ns: f64,
    /// Pairs or operations per timed run.
    iters: u64,
}

/// Runs `kmm bench pages` with `s`, handing each output line to `out` as soon
/// as it is known.
pub fn pages(s: &Settings, out: &mut dyn FnMut(&str)) -> Result<PagesRatios, String> {
    let host = host_name();
    out(&format!(
        "kmm bench pages: x86_64 profile, 4K pages, single thread (CPU 0), best of {} runs of ~{} ms",
        s.runs,
        s.target.as_millis()
    ));
    out(&format!("host: {host}"));

    let small = boot(s.small_ram)?;
    let kmm = small.kmm();
    // Everything below runs as CPU 0 of both machines, as a kernel thread
    // would: the binding makes this thread the CPU's only user.
    let _cpu_small = small
        .cpus()
        .bind(0)
        .map_err(|e| format!("cannot bind CPU 0: {e}"))?;
    let zone = kmm
        .zones()
        .find(|z| z.zone_type() == ZoneType::Dma32 && z.is_populated())
        .ok_or("the small machine has no ZONE_DMA32")?;
    kmm.drain_all_pages();
    let mut buddy = Box::new(FrameAllocator::<MAX_ORDER>::new());
    let frames = give_free_frames(kmm, zone.zone_start_pfn(), zone.zone_end_pfn(), &mut buddy);
    out(&format!(
        "machine: {} RAM; buddy_system_allocator::FrameAllocator<{MAX_ORDER}> gets the {frames} frames free in its DMA32 zone (pfn {:#x}-{:#x})",
        gib(s.small_ram),
        zone.zone_start_pfn(),
        zone.zone_end_pfn()
    ));

    let t = Instant::now();
    let big = boot(s.big_ram)?;
    let gkmm = big.kmm();
    let _cpu_big = big
        .cpus()
        .bind(0)
        .map_err(|e| format!("cannot bind CPU 0: {e}"))?;
    out(&format!(
        "machine: {} RAM (booted in {:.1} s; mem_map is {} MiB of host memory)",
        gib(s.big_ram),
        t.elapsed().as_secs_f64(),
        gkmm.boot_summary().mem_map_bytes >> 20
    ));

    let label = |who: &str, what: &str, f: Figure, unit: &str| {
        format!(
            "{who:<24}{what:<14}{:>9.1} ns   ({} {unit}/run)",
            f.ns, f.iters
        )
    };
    let kname = format!("kmm {}", gib(s.small_ram));
    let gname = format!("kmm {}", gib(s.big_ram));
    let bname = "buddy_system_allocator";
    let free_small = settled_free_pages(kmm);
    let free_big = settled_free_pages(gkmm);
    let live = s.churn_live;

    // What the loops cost by themselves: part of every figure below.
    let (mut null0, mut nullc) = (NullFrames(0), NullFrames(0));
    let mut v = Vec::with_capacity(live);
    let f = measure_together(
        s,
        &mut [
            Box::new(|n| pairs(&mut null0, 0, n)),
            Box::new(|n| churn(&mut nullc, n, live, s.seed, &mut v)),
        ],
    )?;
    out(&format!(
        "harness alone (no-op allocator, included below): pair {:.1} ns, churn op {:.1} ns",
        f[0].ns, f[1].ns
    ));
    out("");

    let (mut k, mut g) = (KmmFrames(kmm), KmmFrames(gkmm));
    let f = measure_together(
        s,
        &mut [
            Box::new(|n| pairs(&mut k, 0, n)),
            Box::new(|n| pairs(&mut *buddy, 0, n)),
            Box::new(|n| pairs(&mut g, 0, n)),
        ],
    )?;
    let (k0, b0, g0) = (f[0], f[1], f[2]);
    balanced(kmm, free_small, "order-0 pairs")?;
    balanced(gkmm, free_big, "order-0 pairs")?;
    out(&label(&kname, "order-0 pair", k0, "pairs"));
    out(&label(bname, "order-0 pair", b0, "pairs"));
    out(&format!(
        "{}   ({:.2}x of {})",
        label(&gname, "order-0 pair", g0, "pairs"),
        g0.ns / k0.ns,
        gib(s.small_ram)
    ));

    let f = measure_together(
        s,
        &mut [
            Box::new(|n| pairs(&mut k, 3, n)),
            Box::new(|n| pairs(&mut *buddy, 3, n)),
        ],
    )?;
    let (k3, b3) = (f[0], f[1]);
    balanced(kmm, free_small, "order-3 pairs")?;
    out(&label(&kname, "order-3 pair", k3, "pairs"));
    out(&label(bname, "order-3 pair", b3, "pairs"));

    let (mut kv, mut bv, mut gv) = (
        Vec::with_capacity(live),
        Vec::with_capacity(live),
        Vec::with_capacity(live),
    );
    let f = measure_together(
        s,
        &mut [
            Box::new(|n| churn(&mut k, n, live, s.seed, &mut kv)),
            Box::new(|n| churn(&mut *buddy, n, live, s.seed, &mut bv)),
            Box::new(|n| churn(&mut g, n, live, s.seed, &mut gv)),
        ],
    )?;
    let (kc, bc, gc) = (f[0], f[1], f[2]);
    balanced(kmm, free_small, "churn")?;
    balanced(gkmm, free_big, "churn")?;
    out(&label(&kname, "churn op", kc, "ops"));
    out(&label(bname, "churn op", bc, "ops"));
    out(&format!(
        "{}   ({:.2}x of {})",
        label(&gname, "churn op", gc, "ops"),
        gc.ns / kc.ns,
        gib(s.small_ram)
    ));
    drop(buddy);
    drop(_cpu_big);
    drop(big);

    let r = PagesRatios {
        order0_ns: k0.ns,
        order0_vs_buddy: b0.ns / k0.ns,
        order3_vs_buddy: b3.ns / k3.ns,
        churn_vs_buddy: bc.ns / kc.ns,
        big_vs_small: (g0.ns / k0.ns).max(gc.ns / kc.ns),
    };
    let target = |what: &str, value: String, ok: bool| {
        let verdict = if ok { "met" } else { "NOT MET" };
        format!("  {what:<52}{value:>9}  {verdict}")
    };
    out("");
    out("targets:");
    out(&target(
        "kmm order-0 pair <= 20 ns",
        format!("{:.1} ns", r.order0_ns),
        r.order0_ns <= 20.0,
    ));
    out(&target(
        "order-0 pair >= 3x buddy_system_allocator",
        format!("{:.2}x", r.order0_vs_buddy),
        r.order0_vs_buddy >= 3.0,
    ));
    out(&target(
        "churn >= 3x buddy_system_allocator",
        format!("{:.2}x", r.churn_vs_buddy),
        r.churn_vs_buddy >= 3.0,
    ));
    out(&target(
        &format!(
            "{} cost <= 1.25x {} cost (worse of pair, churn)",
            gib(s.big_ram),
            gib(s.small_ram)
        ),
        format!("{:.2}x", r.big_vs_small),
        r.big_vs_small <= 1.25,
    ));
    out("");
    out(&format!(
        "ratio order0-vs-buddy_system_allocator {:.2}",
        r.order0_vs_buddy
    ));
    out(&format!(
        "ratio order3-vs-buddy_system_allocator {:.2}",
        r.order3_vs_buddy
    ));
    out(&format!(
        "ratio churn-vs-buddy_system_allocator {:.2}",
        r.churn_vs_buddy
    ));
    out(&format!("ratio ram-64g-vs-1g {:.2}", r.big_vs_small));
    Ok(r)
}

/// Boots an x86_64 machine with `ram` bytes and the default 4 KiB pages.
fn boot(ram: u64) -> Result<Machine, String> {
    Machine::boot(MachineConfig {
        ram,
        ..Default::default()
    })
    .map_err(|e| format!("cannot boot a {} machine: {e}", gib(ram)))
}

/// `1 GiB`, `64 GiB`, or `256 MiB` below a gibibyte.
fn gib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// The host CPU's model name and CPU count, as well as they can be found.
fn host_name() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{model}, {cpus} CPUs")
}

/// Hands `buddy` every block that is free in kmm's buddy lists between
/// `start` and `end` (the caller has drained the per-CPU lists), so that both
/// allocators manage the same frames. Returns the number of frames.
fn give_free_frames(
    kmm: &Kmm<SimPlatform>,
    start: u64,
    end: u64,
    buddy: &mut FrameAllocator<MAX_ORDER>,
) -> u64 {
    let map = kmm.mem_map();
    let mut pfn = start;
    let mut frames = 0;
    while pfn < end {
        let page = &map[pfn as usize];
        if page.is_buddy() {
            let n = 1u64 << page.private();
            buddy.add_frame(pfn as usize, (pfn + n) as usize);
            frames += n;
            pfn += n;
        } else {
            pfn += 1;
        }
    }
    frames
}

/// A page-frame allocator as the benchmarks drive it.
///
/// Each allocator returns its own error type, so the timed loops pay for no
/// conversion; failures become text only on the error path.
trait Frames {
    /// What an allocation hands back.
    type Block: Copy;
    /// Why an allocation or a free failed.
    type Error: std::fmt::Display;
    /// Allocates `2^order` contiguous frames.
    fn alloc(&mut self, order: u32) -> Result<Self::Block, Self::Error>;
    /// Frees a block `alloc` returned for `order`.
    fn free(&mut self, block: Self::Block, order: u32) -> Result<(), Self::Error>;
}

/// kmm through its public page-allocator calls.
struct KmmFrames<'a>(&'a Kmm<SimPlatform>);

impl<'a> Frames for KmmFrames<'a> {
    type Block = &'a Page;
    type Error = kmm::KmmError;
    #[inline(always)]
    fn alloc(&mut self, order: u32) -> Result<&'a Page, kmm::KmmError> {
        self.0.alloc_pages(GfpFlags::GFP_KERNEL, order)
    }
    #[inline(always)]
    fn free(&mut self, page: &'a Page, order: u32) -> Result<(), kmm::KmmError> {
        self.0.__free_pages(page, order)
    }
}

/// An allocator that hands out made-up frame numbers and frees nothing: it
/// measures what the benchmark loops cost by themselves.
struct NullFrames(usize);

impl Frames for NullFrames {
    type Block = usize;
    type Error = NoBlock;
    #[inline(always)]
    fn alloc(&mut self, order: u32) -> Result<usize, NoBlock> {
        self.0 = self.0.wrapping_add(1 << order);
        Ok(self.0)
    }
    #[inline(always)]
    fn free(&mut self, _frame: usize, _order: u32) -> Result<(), NoBlock> {
        Ok(())
    }
}

/// `buddy_system_allocator` found no free block of the order asked for.
#[derive(Clone, Copy, Debug)]
struct NoBlock;

impl std::fmt::Display for NoBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("buddy_system_allocator: out of frames")
    }
}

impl<const ORDER: usize> Frames for FrameAllocator<ORDER> {
    type Block = usize;
    type Error = NoBlock;
    #[inline(always)]
    fn alloc(&mut self, order: u32) -> Result<usize, NoBlock> {
        FrameAllocator::alloc(self, 1 << order).ok_or(NoBlock)
    }
    #[inline(always)]
    fn free(&mut self, frame: usize, order: u32) -> Result<(), NoBlock> {
        self.dealloc(frame, 1 << order);
        Ok(())
    }
}

/// Turns an allocator's error into the report's text (off the fast path).
#[cold]
fn failed(what: &str, order: u32, e: impl std::fmt::Display) -> String {
    format!("{what} of order {order} failed: {e}")
}

/// `n` allocate-then-free pairs of `order`; returns the time they took.
fn pairs<F: Frames>(f: &mut F, order: u32, n: u64) -> Result<Duration, String> {
    let t = Instant::now();
    for _ in 0..n {
        let b = f.alloc(order).map_err(|e| failed("alloc", order, e))?;
        f.free(black_box(b), order)
            .map_err(|e| failed("free", order, e))?;
    }
    Ok(t.elapsed())
}

/// xorshift64 (Marsaglia): a small, fast, deterministic sequence.
pub(crate) struct XorShift64(pub(crate) u64);

impl XorShift64 {
    #[inline]
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// `n` churn operations from an empty start: each step allocates a block of a
/// random order 0..=3 (always when nothing is alive, never when `max_live`
/// blocks are) or frees a random live block. Everything still alive is freed
/// afterwards, outside the timing, even after an error. Returns the time the
/// `n` operations took.
fn churn<F: Frames>(
    f: &mut F,
    n: u64,
    max_live: usize,
    seed: u64,
    live: &mut Vec<(F::Block, u32)>,
) -> Result<Duration, String> {
    live.clear();
    let mut rng = XorShift64(seed | 1);
    let t = Instant::now();
    let mut result = Ok(());
    for _ in 0..n {
        let r = rng.next();
        if live.is_empty() || (live.len() < max_live && r & 1 == 0) {
            let order = ((r >> 1) & 3) as u32;
            match f.alloc(order) {
                Ok(b) => live.push((b, order)),
                Err(e) => {
                    result = Err(failed("alloc", order, e));
                    break;
                }
            }
        } else {
            // Lemire's multiply-shift: a uniform index without a division.
            let i = (((r >> 32) * live.len() as u64) >> 32) as usize;
            let (b, order) = live.swap_remove(i);
            if let Err(e) = f.free(black_box(b), order) {
                result = Err(failed("free", order, e));
                break;
            }
        }
    }
    let elapsed = t.elapsed();
    for (b, order) in live.drain(..) {
        f.free(b, order).map_err(|e| failed("free", order, e))?;
    }
    result.map(|()| elapsed)
}

/// Free pages once the per-CPU lists are drained back to the buddy lists.
fn settled_free_pages(kmm: &Kmm<SimPlatform>) -> u64 {
    kmm.drain_all_pages();
    kmm.nr_free_pages()
}

/// Fails unless the machine, per-CPU lists drained, has `before` free pages
/// again: a benchmark must give back every page it took.
fn balanced(kmm: &Kmm<SimPlatform>, before: u64, what: &str) -> Result<(), String> {
    let after = settled_free_pages(kmm);
    if after != before || kmm.nr_pcp_pages() != 0 {
        return Err(format!(
            "benchmark {what} did not give back its pages: {before} free before, {after} after"
        ));
    }
    Ok(())
}

/// A timed loop: runs `n` iterations and returns how long they took.
type Timed<'a> = Box<dyn FnMut(u64) -> Result<Duration, String> + 'a>;

/// Calibrates an iteration count for each loop so that one run takes about
/// `s.target` (the calibration runs double as the warm-up), then times
/// `s.runs` rounds in which every loop runs once in turn, and keeps each
/// loop's fastest run. Interleaving makes a slow spell of a shared host hit
/// all the loops of a comparison alike.
fn measure_together(s: &Settings, loops: &mut [Timed<'_>]) -> Result<Vec<Figure>, String> {
    measure(s.target, s.runs, loops)
}

/// For the benches' tests: splits a `ratio <name> <value>` line, checking
/// its form (a name, then a finite number that is not negative: a tiny
/// run's noise can round a ratio down to 0.00, so only the form is checked).
#[cfg(test)]
pub(crate) fn split_ratio_line(line: &str) -> (&str, &str) {
    let (name, v) = line
        .strip_prefix("ratio ")
        .and_then(|rest| rest.split_once(' '))
        .unwrap_or_else(|| panic!("bad ratio line {line:?}"));
    assert!(!name.is_empty(), "{line}");
    let value: f64 = v
        .parse()
        .unwrap_or_else(|e| panic!("{line}: bad number: {e}"));
    assert!(value >= 0.0 && value.is_finite(), "{line}");
    (name, v)
}

/// [`measure_together`] with the run length `target` and the number of
/// timed rounds `runs` given directly.
fn measure(target: Duration, runs: usize, loops: &mut [Timed<'_>]) -> Result<Vec<Figure>, String> {
    let target = target.as_secs_f64();
    let mut figures = Vec::with_capacity(loops.len());
    for timed in loops.iter_mut() {
        let mut n: u64 = 256;
        let iters = loop {
            let d = timed(n)?.as_secs_f64();
            if d >= target / 4.0 || n >= 1 << 34 {
                break ((n as f64 * target / d.max(1e-9)) as u64).max(1);
            }
            n *= 4;
        };
        figures.push(Figure {
            ns: f64::INFINITY,
            iters,
        });
    }
    for _ in 0..runs.max(1) {
        for (timed, f) in loops.iter_mut().zip(figures.iter_mut()) {
            let ns = timed(f.iters)?.as_secs_f64() * 1e9 / f.iters as f64;
            f.ns = f.ns.min(ns);
        }
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Settings {
        Settings {
            small_ram: 256 << 20,
            big_ram: 512 << 20,
            target: Duration::from_micros(200),
            runs: 1,
            churn_live: 64,
            seed: 42,
        }
    }

    #[test]
    fn report_ends_with_the_four_ratios() {
        let mut text = String::new();
        let r = pages(&tiny(), &mut |l| {
            text.push_str(l);
            text.push('\n');
        })
        .unwrap();
        let tail: Vec<&str> = text.lines().rev().take(4).collect();
        let names = [
            "ram-64g-vs-1g",
            "churn-vs-buddy_system_allocator",
            "order3-vs-buddy_system_allocator",
            "order0-vs-buddy_system_allocator",
        ];
        for (line, name) in tail.iter().zip(names) {
            let (got, rest) = split_ratio_line(line);
            assert_eq!(got, name, "{line}");
            assert_eq!(rest.split('.').nth(1).map(str::len), Some(2), "{line}");
        }
        assert!(r.order0_ns > 0.0);
        assert!(text.contains("targets:"));
    }

    #[test]
    fn kmm_benchmarks_give_back_every_page() {
        let s = tiny();
        let m = boot(s.small_ram).unwrap();
        let kmm = m.kmm();
        let start = settled_free_pages(kmm);
        let mut f = KmmFrames(kmm);
        for order in [0, 3] {
            pairs(&mut f, order, 1000).unwrap();
            assert_eq!(settled_free_pages(kmm), start, "order-{order} pairs");
        }
        let mut live = Vec::new();
        churn(&mut f, 10_000, 64, 7, &mut live).unwrap();
        assert!(live.is_empty());
        assert_eq!(settled_free_pages(kmm), start, "churn");
        let (mut a, mut b, mut c) = (KmmFrames(kmm), KmmFrames(kmm), KmmFrames(kmm));
        let figures = measure_together(
            &s,
            &mut [
                Box::new(|n| pairs(&mut a, 0, n)),
                Box::new(|n| pairs(&mut b, 3, n)),
                Box::new(|n| churn(&mut c, n, s.churn_live, s.seed, &mut live)),
            ],
        )
        .unwrap();
        assert!(figures.iter().all(|f| f.ns > 0.0 && f.iters > 0));
        balanced(kmm, start, "all three").unwrap();
        assert_eq!(settled_free_pages(kmm), start);
        assert_eq!(kmm.nr_pcp_pages(), 0);
        // A leak is caught.
        let page = kmm.alloc_pages(GfpFlags::GFP_KERNEL, 0).unwrap();
        assert!(balanced(kmm, start, "leaky").is_err());
        kmm.__free_pages(page, 0).unwrap();
        balanced(kmm, start, "fixed").unwrap();
    }

    #[test]
    fn churn_is_the_same_sequence_for_both_allocators() {
        // Same seed, same orders and same free choices: the number of frames
        // each allocator hands out over the run agrees.
        struct Count<F: Frames>(F, u64);
        impl<F: Frames> Frames for Count<F> {
            type Block = F::Block;
            type Error = F::Error;
            fn alloc(&mut self, order: u32) -> Result<F::Block, F::Error> {
                self.1 += 1 << order;
                self.0.alloc(order)
            }
            fn free(&mut self, b: F::Block, order: u32) -> Result<(), F::Error> {
                self.0.free(b, order)
            }
        }
        let m = boot(256 << 20).unwrap();
        let mut k = Count(KmmFrames(m.kmm()), 0);
        let mut buddy = FrameAllocator::<MAX_ORDER>::new();
        buddy.add_frame(0x1000, 0x9000);
        let mut b = Count(buddy, 0);
        churn(&mut k, 5000, 100, 3, &mut Vec::new()).unwrap();
        churn(&mut b, 5000, 100, 3, &mut Vec::new()).unwrap();
        assert_eq!(k.1, b.1);
        assert!(k.1 > 0);
    }

    #[test]
    fn unknown_benchmark_lists_the_known_ones() {
        let e = run("nope").unwrap_err();
        assert!(e.contains("unknown benchmark `nope`"), "{e}");
        assert!(e.contains("pages"), "{e}");
        assert!(e.contains("slab"), "{e}");
        assert!(e.contains("vm"), "{e}");
        assert!(e.contains("faults"), "{e}");
    }
}
