//! `kmm bench vm`: what a load through kmm's software MMU costs, against a
//! native load of host memory, measured in one run and summed up as ratios.
//!
//! # Measurements
//!
//! The benchmark is a list of measurement functions ([`MEASUREMENTS`]). Each
//! prepares what it needs on a shared [`Env`] (a booted machine, its
//! [`Mmu`] and one x86_64 four-level page table), checks once, untimed, that
//! its loop does what it claims, and hands back its timed rows. All the rows
//! are then timed together, in interleaved rounds, so a busy spell of the
//! shared host slows them alike. Today's measurements:
//!
//! * **native**: an 8-byte load from a host `Vec<u64>` as large as the
//!   TLB-hit region, at the same offsets: the reference;
//! * **tlb-hit**: [`Mmu::read_u64`] on CPU 0 over [`VmSettings::hit_pages`]
//!   mapped pages, few enough for the TLB to hold them all: every load is a
//!   TLB hit (checked with the TLB's counters);
//! * **walk**: [`Mmu::read_u64`] on CPU 0 cycling over
//!   [`VmSettings::walk_pages`] mapped pages, far more than the 64-entry
//!   4-way TLB holds. Each load goes to the next page; a page comes back only
//!   after every other one was loaded, so the LRU replacement of its set has
//!   evicted it: every load is a TLB miss and a full four-level page walk
//!   (PGD, PUD, PMD, PTE) plus a TLB fill (checked with the counters). The
//!   accessed bits are already set after the first round, as on a warm system.
//!
//! Every load's address follows one formula ([`offset`]): the loads sweep
//! the region's pages in order, one load per page, and each sweep reads the
//! next word of every page, at offsets staggered by a cache line from page
//! to page (the same offset in every page would put them all in one set of
//! the host's data cache). The loads are independent (their values are
//! summed), so the figures are throughputs: loads per second, and its
//! inverse, ns per load.
//!
//! Every figure is the best of [`VmSettings::runs`] timed runs of an
//! iteration count calibrated to take about [`VmSettings::target`] (the
//! harness of `kmm bench pages`). The rows that share CPU 0's TLB evict each
//! other's entries between runs: a TLB-hit run starts with at most
//! `hit_pages` misses, out of millions of loads.
//!
//! The report ends with one `ratio <what> <value>` line per comparison of
//! [`RATIOS`]: the first figure's time over the second's, so a value above 1
//! means the first is *slower* (a translated load cannot beat a native one,
//! nor a walk a hit: these ratios say how many times more a load costs).
//!
//! At the end every page is unmapped and freed, the page table destroyed,
//! and the machine must be back at its free-page count from before.

use std::cell::{Cell, RefCell};
use std::hint::black_box;
use std::time::{Duration, Instant};

use kmm::arch::pgtable_x86_64::X86_64_4LEVEL;
use kmm::{GfpFlags, Kmm, Page, PageTable, PteFlags};
use kmm_sim::mmu::{Fault, Mmu};
use kmm_sim::{Machine, MachineConfig, SimPlatform};

use super::{gib, host_name, measure, Figure, Timed};

/// The address-space tag (PCID) of the benchmark's page table.
const ASID: u16 = 1;
/// The CPU whose TLB the benchmark uses (the calling thread's).
const CPU: usize = 0;
/// Where the benchmark maps its regions: x86_64's `VMALLOC_START`
/// (four-level paging).
const MAP_START: u64 = 0xffff_c900_0000_0000;
/// Each region starts on a 2 MiB boundary, one empty 2 MiB after the last.
const REGION_ALIGN: u64 = 2 << 20;
/// 8-byte words per 4 KiB page.
const WORDS: u64 = 512;
/// 4 KiB.
const PAGE: u64 = 4096;

/// How hard `kmm bench vm` measures.
#[derive(Clone, Debug)]
pub struct VmSettings {
    /// RAM of the kmm machine (1 GiB).
    pub ram: u64,
    /// About how long one timed run of one figure takes.
    pub target: Duration,
    /// Timed runs per figure; the fastest counts.
    pub runs: usize,
    /// Pages of the TLB-hit region (a power of two the TLB holds: 16).
    pub hit_pages: u64,
    /// Pages of the walk region (a power of two well above the TLB's 64
    /// entries: 1024).
    pub walk_pages: u64,
}

impl VmSettings {
    /// The settings of `kmm bench vm`: a 1 GiB machine, ~50 ms per run, best
    /// of 7, 16 pages for TLB hits, 1024 for walks.
    pub fn full() -> VmSettings {
        VmSettings {
            ram: 1 << 30,
            target: Duration::from_millis(50),
            runs: 7,
            hit_pages: 16,
            walk_pages: 1024,
        }
    }
}

/// What `kmm bench vm` found.
#[derive(Clone, Debug)]
pub struct VmReport {
    /// Every timed row, in report order: its name and ns per load.
    pub rows: Vec<(&'static str, f64)>,
    /// Every `ratio` line, in order: its name and value.
    pub ratios: Vec<(String, f64)>,
}

impl VmReport {
    /// The ns per load of the row `name`.
    pub fn ns(&self, name: &str) -> Option<f64> {
        self.rows.iter().find(|r| r.0 == name).map(|r| r.1)
    }
}

/// What a measurement function gets: the machine, its MMU, and one page
/// table that measurements map their regions into with [`Env::map_region`].
pub struct Env<'m> {
    /// The memory manager of the machine.
    pub kmm: &'m Kmm<SimPlatform>,
    /// A 32-bit x86 machine with high memory, for `kmap_atomic`.
    pub x86: &'m Machine,
    /// The machine's MMU (default TLB shape: 64 entries, 4-way, PCID).
    pub mmu: Mmu<'m, SimPlatform>,
    /// The settings of the run.
    pub s: &'m VmSettings,
    /// The page table (x86_64 four-level), borrowed once per timed run.
    pt: RefCell<PageTable>,
    /// Every page mapped so far, with its virtual address.
    mapped: RefCell<Vec<(u64, &'m Page)>>,
    /// Where the next region goes.
    next: Cell<u64>,
}

/// A region of pages mapped by [`Env::map_region`].
#[derive(Clone, Copy, Debug)]
pub struct Region {
    /// First virtual address.
    pub virt: u64,
    /// Number of 4 KiB pages.
    pub pages: u64,
}

impl<'m> Env<'m> {
    /// Maps `pages` fresh pages from `alloc_pages(GFP_KERNEL, 0)` as kernel
    /// data (`PAGE_KERNEL`: writable, global, no-execute) at the next free
    /// 2 MiB-aligned virtual address, and writes each page's number into its
    /// first word.
    pub fn map_region(&self, pages: u64) -> Result<Region, String> {
        let virt = self.next.get();
        let flags = PteFlags::WRITABLE | PteFlags::GLOBAL | PteFlags::NO_EXEC;
        let mut pt = self.pt.borrow_mut();
        let mut mapped = self.mapped.borrow_mut();
        for i in 0..pages {
            let page = self
                .kmm
                .alloc_pages(GfpFlags::GFP_KERNEL, 0)
                .map_err(|e| format!("alloc_pages(GFP_KERNEL, 0): {e}"))?;
            let v = virt + i * PAGE;
            let phys = match self.kmm.page_to_phys(page) {
                Ok(phys) => phys,
                Err(e) => {
                    let _ = self.kmm.__free_pages(page, 0);
                    return Err(format!("page_to_phys: {e}"));
                }
            };
            if let Err(e) = pt.map(self.kmm, v, phys, PAGE, flags) {
                let _ = self.kmm.__free_pages(page, 0);
                return Err(format!("map {v:#x} -> {phys:#x}: {e}"));
            }
            mapped.push((v, page));
            self.kmm
                .phys()
                .write_u64(phys, i)
                .map_err(|e| format!("write to {phys:#x}: {e}"))?;
        }
        let end = (virt + pages * PAGE).next_multiple_of(REGION_ALIGN);
        self.next.set(end + REGION_ALIGN);
        Ok(Region { virt, pages })
    }

    /// Page-table pages of the machine (`NR_PAGETABLE`).
    pub fn page_table_pages(&self) -> u64 {
        self.kmm.nr_page_table_pages()
    }

    /// Unmaps and frees every page, then the page table.
    fn teardown(self) -> Result<(), String> {
        let mut pt = self.pt.into_inner();
        let mut result = Ok(());
        for (v, page) in self.mapped.into_inner() {
            let unmapped = pt.unmap(self.kmm, v).map_err(|e| e.to_string());
            let freed = self.kmm.__free_pages(page, 0).map_err(|e| e.to_string());
            if result.is_ok() {
                result = unmapped.and(freed);
            }
        }
        self.mmu.flush_tlb_all();
        let destroyed = self.kmm.pgd_free(pt).map_err(|e| e.to_string());
        result
            .and(destroyed)
            .map_err(|e| format!("tearing the benchmark's mappings down: {e}"))
    }
}

/// One timed row of a measurement.
pub struct Row<'a> {
    /// Short name, used by [`RATIOS`] and the report.
    pub name: &'static str,
    /// What is timed, for the report.
    pub label: String,
    /// The loop: `n` loads, returns how long they took.
    pub timed: Timed<'a>,
}

/// A measurement: prepares its regions on the [`Env`], prints what it
/// measures, checks its loop once (untimed) and returns its timed rows.
pub type Measurement =
    for<'a> fn(&'a Env<'_>, &mut dyn FnMut(&str)) -> Result<Vec<Row<'a>>, String>;

/// The measurements of `kmm bench vm`, in report order.
pub const MEASUREMENTS: &[(&str, Measurement)] = &[
    ("native", native),
    ("tlb-hit", tlb_hit),
    ("walk", walk),
    ("vmalloc", vmalloc_vs_pages),
    ("kmap", kmap_atomic_pairs),
];

/// The ratio lines: name, then the rows whose times are divided (first over
/// second; above 1: the first is slower).
pub const RATIOS: &[(&str, &str, &str)] = &[
    ("tlb-hit-vs-native", "tlb-hit", "native"),
    ("walk-vs-tlb-hit", "walk", "tlb-hit"),
    ("vmalloc16-vs-order4", "vmalloc16", "order4"),
];

/// The targets: row, most ns per load.
const TARGETS: &[(&str, &str, f64)] = &[
    ("tlb-hit", "TLB-hit 8-byte load (Mmu::read_u64)", 5.0),
    (
        "walk",
        "TLB miss with a 4-level page walk (Mmu::read_u64)",
        40.0,
    ),
];

/// The ratio target: vmalloc of 16 pages within 8x an order-4
/// allocation (each as an allocate + free pair).
const VMALLOC_TARGET: f64 = 8.0;

/// Byte offset of the `j`-th load in a region of `pages` pages (a power of
/// two): page `p = j mod pages`, word `(8p + j / pages) mod 512` of it.
/// Always 8-byte aligned, so a load never crosses a page.
#[inline(always)]
pub fn offset(j: u64, pages: u64) -> u64 {
    let page = j & (pages - 1);
    let word = (page * 8 + (j >> pages.trailing_zeros())) & (WORDS - 1);
    page * PAGE + word * 8
}

/// Turns a fault in a timed loop into the report's text (off the fast path).
#[cold]
fn faulted(what: &str, virt: u64, f: Fault) -> String {
    format!("{what}: load at {virt:#x} faulted: {f}")
}

/// `n` loads through the MMU from the region at `virt` of `pages` pages:
/// returns their sum and how long they took.
fn mmu_loads(
    mmu: &Mmu<'_, SimPlatform>,
    pt: &PageTable,
    virt: u64,
    pages: u64,
    n: u64,
    what: &str,
) -> Result<(u64, Duration), String> {
    let t = Instant::now();
    let mut sum = 0u64;
    for j in 0..n {
        let v = virt + offset(j, pages);
        match mmu.read_u64(CPU, pt, ASID, v) {
            Ok(x) => sum = sum.wrapping_add(x),
            Err(f) => return Err(faulted(what, v, f)),
        }
    }
    let d = t.elapsed();
    Ok((black_box(sum), d))
}

/// Runs one round over the region through the MMU, untimed, and checks the
/// value of every page's first word; returns the TLB counters' change over
/// a second, full round.
fn check_region(env: &Env<'_>, r: Region, what: &str) -> Result<(u64, u64, u64), String> {
    let pt = env.pt.borrow();
    for i in 0..r.pages {
        let v = r.virt + i * PAGE;
        match env.mmu.read_u64(CPU, &pt, ASID, v) {
            Ok(x) if x == i => {}
            Ok(x) => return Err(format!("{what}: page {i} at {v:#x} reads {x}, not {i}")),
            Err(f) => return Err(faulted(what, v, f)),
        }
    }
    let before = env.mmu.tlb_stats(CPU);
    let n = r.pages * 4;
    mmu_loads(&env.mmu, &pt, r.virt, r.pages, n, what)?;
    let after = env.mmu.tlb_stats(CPU);
    Ok((
        after.hits - before.hits,
        after.misses - before.misses,
        after.walks - before.walks,
    ))
}

/// The reference: 8-byte loads from a host `Vec<u64>` of `hit_pages` pages
/// at the offsets of the TLB-hit loop.
fn native<'a>(env: &'a Env<'_>, out: &mut dyn FnMut(&str)) -> Result<Vec<Row<'a>>, String> {
    let pages = env.s.hit_pages;
    let v: Vec<u64> = (0..pages * WORDS).collect();
    out(&format!(
        "native:  v[i] from a host Vec<u64> of {pages} x 4 KiB, at the TLB-hit loop's offsets"
    ));
    let timed: Timed<'a> = Box::new(move |n| {
        let v = black_box(&v[..]);
        let t = Instant::now();
        let mut sum = 0u64;
        for j in 0..n {
            sum = sum.wrapping_add(v[(offset(j, pages) / 8) as usize]);
        }
        let d = t.elapsed();
        black_box(sum);
        Ok(d)
    });
    Ok(vec![Row {
        name: "native",
        label: "native load (host Vec<u64>)".to_string(),
        timed,
    }])
}

/// TLB hits: `Mmu::read_u64` over `hit_pages` pages the TLB holds.
fn tlb_hit<'a>(env: &'a Env<'_>, out: &mut dyn FnMut(&str)) -> Result<Vec<Row<'a>>, String> {
    let r = env.map_region(env.s.hit_pages)?;
    let (hits, misses, walks) = check_region(env, r, "tlb-hit")?;
    out(&format!(
        "tlb-hit: Mmu::read_u64 on CPU {CPU} over {} pages at {:#x}, all in the TLB (checked: {} loads, {hits} hits, {misses} misses, {walks} walks)",
        r.pages,
        r.virt,
        r.pages * 4
    ));
    if misses != 0 || walks != 0 || hits != r.pages * 4 {
        return Err(format!(
            "the loop is not all TLB hits ({hits} hits, {misses} misses in {} loads)",
            r.pages * 4
        ));
    }
    let timed: Timed<'a> = Box::new(move |n| {
        let pt = env.pt.borrow();
        mmu_loads(&env.mmu, &pt, r.virt, r.pages, n, "tlb-hit").map(|(_, d)| d)
    });
    Ok(vec![Row {
        name: "tlb-hit",
        label: "kmm load, TLB hit".to_string(),
        timed,
    }])
}

/// TLB misses: `Mmu::read_u64` cycling over `walk_pages` pages, each load a
/// four-level walk.
fn walk<'a>(env: &'a Env<'_>, out: &mut dyn FnMut(&str)) -> Result<Vec<Row<'a>>, String> {
    let r = env.map_region(env.s.walk_pages)?;
    let tlb = env.mmu.config();
    if r.pages <= tlb.entries as u64 * 2 {
        return Err(format!(
            "{} pages do not defeat a {}-entry TLB",
            r.pages, tlb.entries
        ));
    }
    let (hits, misses, walks) = check_region(env, r, "walk")?;
    out(&format!(
        "walk:    Mmu::read_u64 on CPU {CPU} cycling over {} pages at {:#x} (the TLB holds {}, {}-way LRU): every load a miss, a 4-level walk and a fill (checked: {} loads, {hits} hits, {misses} misses, {walks} walks)",
        r.pages,
        r.virt,
        tlb.entries,
        tlb.ways,
        r.pages * 4
    ));
    if hits != 0 || misses != r.pages * 4 || walks != misses {
        return Err(format!(
            "the loop is not all TLB misses ({hits} hits, {misses} misses in {} loads)",
            r.pages * 4
        ));
    }
    let timed: Timed<'a> = Box::new(move |n| {
        let pt = env.pt.borrow();
        mmu_loads(&env.mmu, &pt, r.virt, r.pages, n, "walk").map(|(_, d)| d)
    });
    Ok(vec![Row {
        name: "walk",
        label: "kmm load, TLB miss + walk".to_string(),
        timed,
    }])
}

/// LDD3's scullv/scullp trade-off: `vmalloc` + `vfree` of 16 pages against
/// `__get_free_pages` + `free_pages` of order 4 (the same 64 KiB).
fn vmalloc_vs_pages<'a>(
    env: &'a Env<'_>,
    out: &mut dyn FnMut(&str),
) -> Result<Vec<Row<'a>>, String> {
    let k = env.kmm;
    let size = 16 * PAGE;
    // Check once: the area is mapped page by page, the block is contiguous.
    let v = k.vmalloc(size).map_err(|e| format!("vmalloc: {e}"))?;
    let frames = (0..16)
        .map(|i| k.vmalloc_to_pfn(v + i * PAGE))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("vmalloc_to_pfn: {e}"))?;
    k.vfree(v).map_err(|e| format!("vfree: {e}"))?;
    out(&format!(
        "vmalloc: vmalloc({size}) + vfree (16 order-0 pages in one bulk call, mapped in the vmalloc area; the TLB flush is lazy, every ~{} ranges, and purged ranges are pooled by size for reuse); first frames {:#x}, {:#x}",
        16 * 1024 / 17,
        frames[0],
        frames[1]
    ));
    out("order4:  __get_free_pages(GFP_KERNEL, 4) + free_pages: the same 64 KiB as one contiguous block");
    let vm: Timed<'a> = Box::new(move |n| {
        let t = Instant::now();
        for _ in 0..n {
            let v = k
                .vmalloc(black_box(size))
                .map_err(|e| format!("vmalloc: {e}"))?;
            k.vfree(black_box(v)).map_err(|e| format!("vfree: {e}"))?;
        }
        Ok(t.elapsed())
    });
    let pages: Timed<'a> = Box::new(move |n| {
        let t = Instant::now();
        for _ in 0..n {
            let a = k
                .__get_free_pages(GfpFlags::GFP_KERNEL, 4)
                .map_err(|e| format!("__get_free_pages: {e}"))?;
            k.free_pages(black_box(a), 4)
                .map_err(|e| format!("free_pages: {e}"))?;
        }
        Ok(t.elapsed())
    });
    Ok(vec![
        Row {
            name: "vmalloc16",
            label: "vmalloc+vfree, 16 pages".to_string(),
            timed: vm,
        },
        Row {
            name: "order4",
            label: "__get_free_pages order 4 pair".to_string(),
            timed: pages,
        },
    ])
}

/// `kmap_atomic` + `kunmap_atomic` of a high-memory page on a 32-bit x86
/// machine (a fixmap slot, its PTE set and cleared, the local TLB entry
/// flushed), with the thread bound to CPU 0 as kernel code would be.
fn kmap_atomic_pairs<'a>(
    env: &'a Env<'_>,
    out: &mut dyn FnMut(&str),
) -> Result<Vec<Row<'a>>, String> {
    let m = env.x86;
    let k = m.kmm();
    let page = k
        .alloc_pages(GfpFlags::GFP_HIGHUSER, 0)
        .map_err(|e| format!("alloc_pages(GFP_HIGHUSER): {e}"))?;
    if !k.page_is_highmem(page) {
        return Err("GFP_HIGHUSER gave a low-memory page".into());
    }
    let check = {
        let _cpu = m.cpus().bind(0).map_err(|e| e.to_string())?;
        let a = k.kmap_atomic(page).map_err(|e| e.to_string())?;
        k.kunmap_atomic(a).map_err(|e| e.to_string())?;
        a
    };
    out(&format!(
        "kmap:    kmap_atomic + kunmap_atomic of a HighMem page on an x86 machine (fixmap slot {check:#x}), bound to CPU 0"
    ));
    let timed: Timed<'a> = Box::new(move |n| {
        let _cpu = m.cpus().bind(0).map_err(|e| e.to_string())?;
        let t = Instant::now();
        for _ in 0..n {
            let a = k.kmap_atomic(black_box(page)).map_err(|e| e.to_string())?;
            k.kunmap_atomic(black_box(a)).map_err(|e| e.to_string())?;
        }
        Ok(t.elapsed())
    });
    Ok(vec![Row {
        name: "kmap-atomic",
        label: "kmap_atomic+kunmap_atomic".to_string(),
        timed,
    }])
}

/// Free pages once the per-CPU lists are drained.
fn settled(kmm: &Kmm<SimPlatform>) -> u64 {
    kmm.drain_all_pages();
    kmm.nr_free_pages()
}

/// One report line: label, ns per load, millions of loads per second.
fn line(label: &str, f: Figure) -> String {
    format!(
        "{label:<32}{:>8.2} ns/load {:>9.1} M loads/s   ({} loads/run)",
        f.ns,
        1e3 / f.ns,
        f.iters
    )
}

/// Runs `kmm bench vm` with `s`, handing each output line to `out` as soon
/// as it is known.
pub fn vm(s: &VmSettings, out: &mut dyn FnMut(&str)) -> Result<VmReport, String> {
    for (what, n) in [("hit_pages", s.hit_pages), ("walk_pages", s.walk_pages)] {
        if !n.is_power_of_two() {
            return Err(format!("{what} must be a power of two, not {n}"));
        }
    }
    let machine = Machine::boot(MachineConfig {
        ram: s.ram,
        cpus: 2,
        ..Default::default()
    })
    .map_err(|e| format!("cannot boot a {} machine: {e}", gib(s.ram)))?;
    let kmm = machine.kmm();
    let x86 = Machine::boot(MachineConfig {
        arch: &kmm::arch::x86::X86,
        ram: 1 << 30,
        cpus: 2,
        ..Default::default()
    })
    .map_err(|e| format!("cannot boot the x86 machine: {e}"))?;
    // Everything below runs as CPU 0 of the x86_64 machine, as a kernel
    // thread would: the binding makes this thread the CPU's only user, so
    // vmalloc and the page allocator take CPU 0's per-CPU lists without a
    // lock (see `Cpus::bind`). Nothing here starts other threads; the kmap
    // rows bind CPU 0 of the other machine, which is independent.
    let cpu0 = machine
        .cpus()
        .bind(CPU)
        .map_err(|e| format!("cannot bind CPU {CPU}: {e}"))?;
    let mmu = Mmu::for_machine(&machine);
    let tlb = mmu.config();
    out(&format!(
        "kmm bench vm: x86_64 profile, 4-level paging, 4K pages; CPU {CPU}'s TLB ({} entries, {}-way, PCID), one thread bound to CPU {CPU}; best of {} runs of ~{} ms",
        tlb.entries,
        tlb.ways,
        s.runs,
        s.target.as_millis()
    ));
    out(&format!("host: {}", host_name()));
    out("figures: 8-byte loads, independent (summed), so ns/load is the inverse of the throughput");
    // vmalloc's first use makes its vmap_area cache: do it before counting.
    let warm = kmm.vmalloc(PAGE).map_err(|e| format!("vmalloc: {e}"))?;
    kmm.vfree(warm).map_err(|e| format!("vfree: {e}"))?;
    kmm.vm_unmap_aliases();
    for c in kmm.kmem_caches().iter() {
        let _ = kmm.kmem_cache_shrink(c);
    }
    let before = settled(kmm);
    let kernel_tables = kmm.kernel_page_table_pages();
    let tables = kmm.nr_page_table_pages();
    let pt = kmm
        .pgd_alloc(&X86_64_4LEVEL)
        .map_err(|e| format!("pgd_alloc: {e}"))?;
    let env = Env {
        kmm,
        x86: &x86,
        mmu,
        s,
        pt: RefCell::new(pt),
        mapped: RefCell::new(Vec::new()),
        next: Cell::new(MAP_START),
    };

    out("");
    let result = run_measurements(&env, out);
    let pt_pages = env.page_table_pages() - tables;
    let torn = env.teardown();
    let (names, figures) = result?;
    torn?;
    // The lazily freed vmalloc ranges, then whatever vmalloc's first use
    // made (its vmap_area cache, kernel page tables) stays, as in Linux:
    // count them out of the comparison.
    kmm.vm_unmap_aliases();
    for c in kmm.kmem_caches().iter() {
        let _ = kmm.kmem_cache_shrink(c);
    }
    // Kernel page tables vmalloc added stay, as in Linux.
    let after = settled(kmm) + (kmm.kernel_page_table_pages() - kernel_tables);
    if after != before || kmm.nr_pcp_pages() != 0 {
        return Err(format!(
            "the benchmark did not give back its pages: {before} free before, {after} after"
        ));
    }
    out(&format!(
        "page table: {pt_pages} page-table pages; afterwards everything unmapped and freed: {after} pages free, as before"
    ));
    drop(cpu0);

    let rows: Vec<(&'static str, f64)> = names
        .iter()
        .copied()
        .zip(figures.iter().map(|f| f.ns))
        .collect();
    let report = VmReport {
        ratios: RATIOS
            .iter()
            .filter_map(|&(name, a, b)| {
                let (a, b) = (
                    rows.iter().find(|r| r.0 == a)?,
                    rows.iter().find(|r| r.0 == b)?,
                );
                Some((name.to_string(), a.1 / b.1))
            })
            .collect(),
        rows,
    };

    out("");
    out("targets:");
    if let Some((_, r)) = report
        .ratios
        .iter()
        .find(|(n, _)| n == "vmalloc16-vs-order4")
    {
        let verdict = if *r <= VMALLOC_TARGET {
            "met"
        } else {
            "NOT MET"
        };
        out(&format!(
            "  {:<64}{:>9}  {verdict}",
            format!("vmalloc of 16 pages within {VMALLOC_TARGET}x an order-4 allocation"),
            format!("{r:.2}x")
        ));
    }
    for &(row, what, most) in TARGETS {
        if let Some(ns) = report.ns(row) {
            let verdict = if ns <= most { "met" } else { "NOT MET" };
            out(&format!(
                "  {:<64}{:>9}  {verdict}",
                format!("{what} <= {most} ns"),
                format!("{ns:.2} ns")
            ));
        }
    }
    out("");
    out("ratios: the first figure's time over the second's (> 1: the first is slower; kmm cannot beat a native load, nor a walk a hit)");
    for (name, v) in &report.ratios {
        out(&format!("ratio {name} {v:.2}"));
    }
    Ok(report)
}

/// Prepares every measurement of [`MEASUREMENTS`], times all their rows
/// together and prints them; returns the row names and figures.
fn run_measurements(
    env: &Env<'_>,
    out: &mut dyn FnMut(&str),
) -> Result<(Vec<&'static str>, Vec<Figure>), String> {
    let mut rows = Vec::new();
    for (name, m) in MEASUREMENTS {
        rows.extend(m(env, out).map_err(|e| format!("measurement {name}: {e}"))?);
    }
    let names: Vec<&'static str> = rows.iter().map(|r| r.name).collect();
    let labels: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
    let mut loops: Vec<Timed<'_>> = rows.into_iter().map(|r| r.timed).collect();
    let figures = measure(env.s.target, env.s.runs, &mut loops)?;
    drop(loops);
    out("");
    for (label, f) in labels.iter().zip(&figures) {
        out(&line(label, *f));
    }
    Ok((names, figures))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> VmSettings {
        VmSettings {
            ram: 256 << 20,
            target: Duration::from_micros(300),
            runs: 1,
            hit_pages: 8,
            walk_pages: 256,
        }
    }

    #[test]
    fn report_ends_with_the_ratio_lines() {
        let mut text = String::new();
        let r = vm(&tiny(), &mut |l| {
            text.push_str(l);
            text.push('\n');
        })
        .unwrap();
        assert_eq!(r.ratios.len(), RATIOS.len());
        // One row per measurement, two for vmalloc (vmalloc16 and order4).
        assert_eq!(r.rows.len(), MEASUREMENTS.len() + 1);
        let tail: Vec<&str> = text.lines().rev().take(RATIOS.len()).collect();
        for (line, (name, _, _)) in tail.iter().rev().zip(RATIOS) {
            assert_eq!(crate::bench::split_ratio_line(line).0, *name, "{line}");
        }
        assert!(text.contains("targets:"));
        assert!(r.ns("walk").unwrap() > 0.0);
    }

    #[test]
    fn loads_sweep_the_pages_and_read_every_word() {
        let mut seen = vec![false; 8 * 512];
        for j in 0..8 * 512 {
            let at = offset(j, 8);
            assert_eq!(at % 8, 0);
            assert_eq!(at / PAGE, j % 8, "consecutive loads, consecutive pages");
            assert!(!seen[(at / 8) as usize], "word {at:#x} twice");
            seen[(at / 8) as usize] = true;
        }
    }
}
