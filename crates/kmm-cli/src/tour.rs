//! The guided tour (`kmm` with no arguments): a walk through what kmm can do
//! today, for a reader of *Linux Kernel Development* ch. 12 and *Linux Device
//! Drivers* ch. 8.
//!
//! Every step makes real library calls on a booted machine and prints what
//! Linux would show: kernel log lines (`$ dmesg`), `/proc` files (`$ cat`),
//! and the calls themselves with their results (lines starting with `>`).
//! Nothing here computes a result on its own; the tour only calls and prints.

mod heap;
mod percpu;
mod pgtable;
mod process;
mod slab;
mod stack;
mod vm;

use crate::boot::struct_page_overhead;
use crate::size::format_size;
use crate::Error;
use kmm::mm_init::isqrt;
use kmm::{GfpFlags, Kmm, KmmError, Page, MAX_ORDER};
use kmm_sim::cpu::PerCpu;
use kmm_sim::{Machine, MachineConfig, SimPlatform};
use std::io::Write;
use std::sync::atomic::Ordering::Relaxed;

/// The memory manager of a simulated machine.
type Mm = Kmm<SimPlatform>;

const KERNEL: GfpFlags = GfpFlags::GFP_KERNEL;
const ATOMIC: GfpFlags = GfpFlags::GFP_ATOMIC;
/// What the tour uses to fill memory: may sleep, gives up early, stays quiet.
const FILL: GfpFlags = GfpFlags::GFP_KERNEL
    .union(GfpFlags::__GFP_NORETRY)
    .union(GfpFlags::__GFP_NOWARN);

/// Free blocks per order for each populated zone, keyed by `Node N ZONE`.
type BuddyCounts = Vec<(String, [u64; MAX_ORDER])>;

/// The output and the step counter.
struct Tour<'o> {
    out: &'o mut dyn Write,
    step: usize,
}

impl Tour<'_> {
    /// Starts a step: a numbered heading and a few sentences.
    fn step(&mut self, title: &str, text: &str) -> Result<(), Error> {
        self.step += 1;
        let head = format!("== {}. {title} ", self.step);
        writeln!(self.out, "\n{head:=<78}")?;
        for line in text.lines() {
            writeln!(self.out, "{line}")?;
        }
        writeln!(self.out)?;
        Ok(())
    }

    /// One line of output.
    fn say(&mut self, line: impl std::fmt::Display) -> Result<(), Error> {
        writeln!(self.out, "{line}")?;
        Ok(())
    }

    /// `$ cat PATH` and the file, as the machine produces it.
    fn cat(&mut self, m: &Machine, path: &str) -> Result<(), Error> {
        let text = kmm_sim::procfs::read(m, path)?;
        writeln!(self.out, "$ cat {path}")?;
        self.out.write_all(text.as_bytes())?;
        Ok(())
    }

    /// `$ cat /proc/zoneinfo`, cut down to the named zones and to the lines
    /// whose first word is in `fields` (the `Node` header is always kept).
    fn zoneinfo(&mut self, m: &Machine, zones: &[&str], fields: &[&str]) -> Result<(), Error> {
        let text = kmm_sim::procfs::read(m, "/proc/zoneinfo")?;
        writeln!(self.out, "$ cat /proc/zoneinfo   (excerpt)")?;
        let mut keep_zone = false;
        for line in text.lines() {
            if line.starts_with("Node ") {
                keep_zone = zones.iter().any(|z| line.ends_with(&format!(" {z}")));
                if keep_zone {
                    writeln!(self.out, "{line}")?;
                }
                continue;
            }
            let first = line.split_whitespace().next().unwrap_or("");
            if keep_zone && fields.contains(&first) {
                writeln!(self.out, "{line}")?;
            }
        }
        Ok(())
    }

    /// `$ dmesg -c`: the kernel log lines printed since the last call.
    fn dmesg(&mut self, m: &Machine) -> Result<(), Error> {
        let lines = m.take_log();
        if lines.is_empty() {
            return Ok(());
        }
        writeln!(self.out, "$ dmesg")?;
        for line in lines {
            writeln!(self.out, "{line}")?;
        }
        Ok(())
    }
}

/// Where a page is: frame number, physical and kernel virtual address, zone.
fn describe(k: &Mm, page: &Page) -> String {
    let pfn = k.page_to_pfn(page).unwrap_or(0);
    let virt = match k.page_address(page) {
        Some(v) => format!("{v:#x}"),
        None => "NULL".into(),
    };
    format!(
        "pfn {pfn:#x}, phys {:#x}, page_address {virt}, zone {}",
        k.pfn_phys(pfn),
        k.page_zone(page).name()
    )
}

/// `page_to_pfn()`, for printing.
fn pfn(k: &Mm, page: &Page) -> u64 {
    k.page_to_pfn(page).unwrap_or(u64::MAX)
}

/// The free-block counts of `/proc/buddyinfo`, per populated zone.
fn buddy_counts(k: &Mm) -> BuddyCounts {
    k.zones()
        .filter(|z| z.is_populated())
        .map(|z| (z.name().to_string(), z.free_area_counts()))
        .collect()
}

/// "DMA32 order 9: 0 -> 1, order 10: 241 -> 240" for every changed column.
fn buddy_changes(before: &BuddyCounts, after: &BuddyCounts) -> String {
    let mut parts = Vec::new();
    for ((zone, b), (_, a)) in before.iter().zip(after) {
        let cols: Vec<String> = (0..MAX_ORDER)
            .rev()
            .filter(|&o| a[o] != b[o])
            .map(|o| format!("order {o}: {} -> {}", b[o], a[o]))
            .collect();
        if !cols.is_empty() {
            parts.push(format!("{zone} {}", cols.join(", ")));
        }
    }
    if parts.is_empty() {
        "no change".into()
    } else {
        parts.join("; ")
    }
}

/// The answer to one of the tour's checks (a test looks for "NO").
fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}

/// Free pages against the watermarks, per populated zone.
fn levels(k: &Mm) -> Vec<String> {
    use kmm::Watermark::{High, Low, Min};
    k.zones()
        .filter(|z| z.is_populated())
        .map(|z| {
            format!(
                "  {:<7} free {:>6} pages   (min {}, low {}, high {})",
                z.name(),
                z.free_pages(),
                z.watermark(Min),
                z.watermark(Low),
                z.watermark(High)
            )
        })
        .collect()
}

/// Frees every block in `held`, then empties the per-CPU lists so that the
/// buddy lists show the result.
fn free_all(k: &Mm, held: &mut Vec<(&Page, u32)>) -> Result<(), Error> {
    for (page, order) in held.drain(..) {
        k.__free_pages(page, order)?;
    }
    k.drain_all_pages();
    Ok(())
}

/// Runs the tour, writing to `out`.
pub fn run(out: &mut dyn Write) -> Result<(), Error> {
    let mut t = Tour { out, step: 0 };
    t.say("kmm tour: the Linux memory manager (LKD ch. 12, LDD3 ch. 8), running on a simulated machine.")?;
    t.say("Lines starting with '>' are calls into the kmm library and what they returned;")?;
    t.say("'$ cat' shows a /proc file and '$ dmesg' the kernel log, in Linux's own formats.")?;

    let m = Machine::boot(MachineConfig::default())?;
    let boot_log = m.take_log();
    let k = m.kmm();
    let c = m.config();

    t.step(
        "Boot: the kernel finds its memory",
        &format!(
            "An {} machine with {} of RAM, {} pages and {} CPUs boots. The firmware (e820) map lists\n\
             usable RAM and holes; memblock hands out the first memory (the kernel image, mem_map:\n\
             one struct page per page frame) and gives everything else to the buddy allocator,\n\
             split into zones by what hardware can reach.",
            c.arch.name,
            format_size(c.ram),
            format_size(c.page_size),
            c.cpus
        ),
    )?;
    t.say("$ dmesg")?;
    for line in &boot_log {
        t.say(line)?;
    }
    for line in struct_page_overhead(&m) {
        t.say(line)?;
    }
    let memory_line = boot_log
        .iter()
        .find(|l| l.starts_with("Memory:"))
        .cloned()
        .unwrap_or_default();

    t.step(
        "Free memory, by zone and block size",
        "/proc/buddyinfo counts the free blocks of each order: column n holds blocks of 2^n\n\
         contiguous pages (4K, 8K, ... 4M with 4K pages). Right after boot almost everything\n\
         sits in the last column, as 4 MiB blocks.",
    )?;
    t.cat(&m, "/proc/buddyinfo")?;
    let boot_buddy = buddy_counts(k);
    let boot_free = k.nr_free_pages();

    split_and_merge(&mut t, &m, &boot_buddy)?;
    gfp_zones(&mut t, &m)?;
    per_cpu_lists(&mut t, &m)?;
    watermarks(&mut t, &m)?;
    atomic_reserve(&mut t, &m, boot_free)?;
    misuse(&mut t, &m)?;
    sleeping_in_atomic(&mut t, &m)?;
    fragmentation(&mut t, &m, &boot_buddy)?;
    bootmem(&mut t, &memory_line)?;
    per_cpu_variables(&mut t, &m)?;
    percpu::step(&mut t, &m)?;
    slab::steps(&mut t, &m)?;
    heap::step(&mut t)?;
    pgtable::step(&mut t, &m)?;
    stack::step(&mut t, &m)?;
    vm::steps(&mut t, &m)?;
    process::steps(&mut t)?;

    t.step(
        "What the kernel counted",
        "/proc/vmstat keeps the page allocator's event counters (pages allocated per zone,\n\
         pages freed), /proc/meminfo the totals. Every page and every object the tour took has\n\
         been given back.",
    )?;
    t.cat(&m, "/proc/vmstat")?;
    t.cat(&m, "/proc/meminfo")?;
    let ev = &k.events;
    t.say(format!(
        "> events: {} allocation failures, {} \"Bad page state\" reports, {} sleeping-in-atomic reports, {} slab reports, {} kswapd wake-ups",
        ev.alloc_failures.load(Relaxed),
        ev.bad_pages.load(Relaxed),
        ev.sleep_in_atomic.load(Relaxed),
        ev.slab_errors.load(Relaxed),
        ev.kswapd_wakeups.load(Relaxed),
    ))?;
    // Pages freed last may still sit on the per-CPU lists.
    k.drain_all_pages();
    t.say(format!(
        "> drain_all_pages(); nr_free_pages() = {} (after boot: {boot_free}); buddy lists as after boot: {}",
        k.nr_free_pages(),
        yes(buddy_counts(k) == boot_buddy)
    ))?;
    t.say(
        "\nThat is all kmm does so far. `kmm boot --help` boots machines of other shapes;\n\
         `kmm slabtop --help` lists their slab caches after a workload.",
    )?;
    Ok(())
}

/// alloc_pages of several orders, the split in buddyinfo, and the merge back.
fn split_and_merge(t: &mut Tour, m: &Machine, boot_buddy: &BuddyCounts) -> Result<(), Error> {
    let k = m.kmm();
    t.step(
        "alloc_pages(): the buddy allocator splits blocks",
        "alloc_pages(gfp, order) returns 2^order physically contiguous pages. It takes the\n\
         smallest free block that is big enough; a bigger block is split in halves (two\n\
         \"buddies\"), one half goes back on the next-lower list, until the size is right.\n\
         (Orders 0 to 3 are first served from small per-CPU lists, as step 6 shows, so this\n\
         step uses bigger blocks, which always come straight from the buddy lists.)",
    )?;
    let mut held = Vec::new();
    for order in [9, 6, 4] {
        let page = k.alloc_pages(KERNEL, order)?;
        t.say(format!(
            "> alloc_pages(GFP_KERNEL, {order}) = {} pages: {}",
            1u32 << order,
            describe(k, page)
        ))?;
        held.push((page, order));
    }
    t.cat(m, "/proc/buddyinfo")?;
    t.say(format!(
        "changed: {}",
        buddy_changes(boot_buddy, &buddy_counts(k))
    ))?;

    t.step(
        "__free_pages(): buddies merge again",
        "Freeing a block looks at its buddy (the frame number with bit `order` flipped). If the\n\
         buddy is free too, the two merge into one block of the next order, and so on upwards.",
    )?;
    for (page, order) in held.iter().rev() {
        k.__free_pages(page, *order)?;
        t.say(format!("> __free_pages(pfn {:#x}, {order})", pfn(k, page)))?;
    }
    t.cat(m, "/proc/buddyinfo")?;
    t.say(format!(
        "back to the state after boot: {}",
        yes(buddy_counts(k) == *boot_buddy)
    ))?;
    Ok(())
}

/// Allocates one page with `gfp`, says where it came from, frees it.
fn try_gfp(t: &mut Tour, k: &Mm, gfp: GfpFlags) -> Result<(), Error> {
    match k.alloc_page(gfp) {
        Ok(page) => {
            t.say(format!(
                "> alloc_page({gfp}) -> {}{}",
                describe(k, page),
                if k.page_is_highmem(page) {
                    "  (high memory: no permanent kernel mapping)"
                } else {
                    ""
                }
            ))?;
            k.__free_page(page)?;
        }
        Err(e) => t.say(format!("> alloc_page({gfp}) refused: {e}"))?,
    }
    Ok(())
}

/// GFP zone modifiers on x86_64 and on 32-bit x86 with high memory.
fn gfp_zones(t: &mut Tour, m: &Machine) -> Result<(), Error> {
    let k = m.kmm();
    t.step(
        "GFP flags choose the zone",
        "The zone modifiers in the gfp mask name the highest zone a request may use:\n\
         __GFP_DMA (below 16M, for ISA devices), __GFP_DMA32 (below 4G), none (ZONE_NORMAL),\n\
         __GFP_HIGHMEM (anything). Lower zones are the fallback.",
    )?;
    let normal = k.arch().zone_index(kmm::ZoneType::Normal);
    if !k.zones().any(|z| z.idx() == normal && z.is_populated()) {
        t.say(format!(
            "This {} machine has no RAM above 4G, so ZONE_NORMAL is empty and GFP_KERNEL falls back to a lower zone.",
            format_size(m.config().ram)
        ))?;
    }
    for gfp in [
        KERNEL,
        ATOMIC,
        KERNEL | GfpFlags::GFP_DMA,
        KERNEL | GfpFlags::__GFP_DMA32,
        GfpFlags::GFP_HIGHUSER,
    ] {
        try_gfp(t, k, gfp)?;
    }

    let x86 = Machine::boot(MachineConfig {
        arch: &kmm::arch::x86::X86,
        ram: 2 << 30,
        ..MachineConfig::default()
    })?;
    let xk = x86.kmm();
    t.say("")?;
    t.say("A 32-bit x86 machine with 2G: the kernel maps only 896M directly; the rest is ZONE_HIGHMEM.")?;
    t.say("$ dmesg   (excerpt)")?;
    let mut in_zones = false;
    for line in x86.take_log() {
        if line.starts_with("Zone ranges:") {
            in_zones = true;
        } else if in_zones && !line.starts_with("  ") {
            in_zones = false;
        }
        if in_zones
            || line.contains("MB HIGHMEM")
            || line.contains("MB LOWMEM")
            || line.starts_with("Memory:")
        {
            t.say(line)?;
        }
    }
    t.cat(&x86, "/proc/buddyinfo")?;
    for gfp in [KERNEL, KERNEL | GfpFlags::GFP_DMA, GfpFlags::GFP_HIGHUSER] {
        try_gfp(t, xk, gfp)?;
    }
    let gfp = KERNEL | GfpFlags::__GFP_HIGHMEM;
    match xk.__get_free_pages(gfp, 0) {
        Ok(addr) => {
            t.say(format!("> __get_free_pages({gfp}, 0) = {addr:#x}"))?;
            xk.free_pages(addr, 0)?;
        }
        Err(e) => t.say(format!("> __get_free_pages({gfp}, 0) refused: {e}"))?,
    }
    try_gfp(t, xk, GfpFlags::__GFP_DMA | GfpFlags::__GFP_HIGHMEM)?;
    t.dmesg(&x86)?;
    Ok(())
}

/// Hot and cold pages on the per-CPU lists.
fn per_cpu_lists(t: &mut Tour, m: &Machine) -> Result<(), Error> {
    let k = m.kmm();
    t.step(
        "Per-CPU page lists: hot and cold pages",
        "Single pages come from a small per-CPU list, without taking the zone lock. The list\n\
         is refilled `batch` pages at a time. A page freed with free_hot_page() goes to the\n\
         head (its bytes are likely still in this CPU's cache) and is the next one handed out;\n\
         free_cold_page() puts it at the tail. Past `high`, a batch goes back to the buddy lists.",
    )?;
    k.drain_all_pages();
    t.say("> drain_all_pages()   (start with empty lists)")?;
    let a = k.alloc_page(KERNEL)?;
    t.say(format!(
        "> alloc_page(GFP_KERNEL) = pfn {:#x}   (CPU 0's list was empty: refilled with a batch)",
        pfn(k, a)
    ))?;
    k.free_hot_page(a)?;
    t.say(format!("> free_hot_page(pfn {:#x})", pfn(k, a)))?;
    let b = k.alloc_page(KERNEL)?;
    t.say(format!(
        "> alloc_page(GFP_KERNEL) = pfn {:#x}   same page again: {}",
        pfn(k, b),
        yes(pfn(k, a) == pfn(k, b))
    ))?;
    k.free_cold_page(b)?;
    t.say(format!(
        "> free_cold_page(pfn {:#x})   (to the tail)",
        pfn(k, b)
    ))?;
    let c = k.alloc_page(KERNEL)?;
    t.say(format!(
        "> alloc_page(GFP_KERNEL) = pfn {:#x}   a different, hotter page: {}",
        pfn(k, c),
        yes(pfn(k, c) != pfn(k, b))
    ))?;
    let d = k.alloc_page(KERNEL | GfpFlags::__GFP_COLD)?;
    t.say(format!(
        "> alloc_page(GFP_KERNEL|__GFP_COLD) = pfn {:#x}   the cold page from the tail: {}",
        pfn(k, d),
        yes(pfn(k, d) == pfn(k, b))
    ))?;
    let mut held = vec![c, d];
    if m.cpus().nr_cpu_ids() > 1 {
        let e = m.cpus().run_on_cpu(1, || k.alloc_page(KERNEL))??;
        t.say(format!(
            "> on CPU 1: alloc_page(GFP_KERNEL) = pfn {:#x}   (CPU 1 fills its own list)",
            pfn(k, e)
        ))?;
        held.push(e);
    }
    let zone = k.page_zone(a);
    t.zoneinfo(
        m,
        &[zone.name()],
        &["pagesets", "cpu:", "count:", "high:", "batch:"],
    )?;
    for page in &held {
        k.free_hot_page(page)?;
    }
    t.say(format!(
        "> free_hot_page() x {} (on CPU 0: all of them join CPU 0's list)",
        held.len()
    ))?;
    let mut held = Vec::new();
    for _ in 0..1000 {
        held.push((k.alloc_page(KERNEL)?, 0));
    }
    let high = zone.pcp(0).map_or(0, |p| p.high());
    for (page, _) in held.drain(..) {
        k.__free_page(page)?;
    }
    let count = zone.pcp(0).map_or(0, |p| p.count());
    t.say(format!(
        "> 1000 x alloc_page(), then 1000 x __free_page(): CPU 0's list holds {count} pages (high is {high})"
    ))?;
    // Who may touch a CPU's lists: its owner without atomics, others through it.
    let cpu0 = m.cpus().bind(0)?;
    let syncs = m.platform().cpu_syncs();
    for _ in 0..1000 {
        let page = k.alloc_page(KERNEL)?;
        k.__free_page(page)?;
    }
    m.cpus().run_on_cpu(1, || k.drain_all_pages())?;
    let syncs = m.platform().cpu_syncs() - syncs;
    drop(cpu0);
    if m.platform().cpus_owned_exclusively() {
        t.say(
            "> this thread binds CPU 0 and so owns it: 1000 alloc_page()+__free_page() pairs take\n  \
             CPU 0's list lock the way local_lock() does: plain stores, no atomic instruction\n  \
             (the fast path, inlined in the caller; an empty list, a list at `high`, __GFP_ZERO or\n  \
             any check that fails sends a call down the full path)",
        )?;
        t.say(format!(
            "> on CPU 1: drain_all_pages() reaches CPU 0's lists from outside: {syncs} membarrier() call(s),\n  \
             the IPI Linux would send, made the owner step out first"
        ))?;
    } else {
        t.say(
            "> (this host has no membarrier(): every CPU's lists are taken with a spin lock instead)",
        )?;
    }
    Ok(())
}

/// min_free_kbytes and the zone watermarks.
fn watermarks(t: &mut Tour, m: &Machine) -> Result<(), Error> {
    let k = m.kmm();
    t.step(
        "Watermarks: min, low, high",
        "Each zone keeps some pages back. Below `low`, kswapd is woken to reclaim memory; below\n\
         `min`, only allocations that cannot wait (GFP_ATOMIC) may take pages. `protection`\n\
         (lowmem_reserve) keeps a lower zone from being filled by requests that could have used\n\
         a higher one.",
    )?;
    let lowmem_kb: u64 = k
        .zones()
        .filter(|z| !z.zone_type().is_highmem())
        .map(|z| z.managed_pages() << (k.page_shift() - 10))
        .sum();
    t.say(format!(
        "> min_free_kbytes() = {}   (4 * sqrt(lowmem KiB) = 4 * sqrt({lowmem_kb}) = {}, kept within 128..262144)",
        k.min_free_kbytes(),
        isqrt(lowmem_kb * 16),
    ))?;
    t.say(format!(
        "  that is {} pages of {}, shared among the zones by size (zone min = pages_min * managed / lowmem)",
        k.min_free_kbytes() >> (k.page_shift() - 10),
        format_size(k.page_size())
    ))?;
    let zones: Vec<&str> = k
        .zones()
        .filter(|z| z.is_populated())
        .map(|z| z.name())
        .collect();
    t.zoneinfo(
        m,
        &zones,
        &["pages", "min", "low", "high", "managed", "protection:"],
    )?;
    Ok(())
}

/// GFP_ATOMIC below the min watermark while GFP_KERNEL|__GFP_NORETRY fails.
fn atomic_reserve(t: &mut Tour, m: &Machine, boot_free: u64) -> Result<(), Error> {
    let k = m.kmm();
    t.step(
        "When memory runs out: GFP_KERNEL stops at min, GFP_ATOMIC goes below",
        "We take every page GFP_KERNEL|__GFP_NORETRY|__GFP_NOWARN will give (largest blocks\n\
         first). It stops at the min watermark: there is nothing to reclaim yet, and NORETRY\n\
         gives up after one try. One more request without __GFP_NOWARN prints Linux's\n\
         allocation-failure report. GFP_ATOMIC cannot sleep, so it may dip into the reserve.",
    )?;
    m.take_log();
    let (wakeups0, reclaims0) = (
        m.platform().kswapd_wakeups(),
        m.platform().direct_reclaims(),
    );
    let mut held: Vec<(&Page, u32)> = Vec::new();
    for order in (0..MAX_ORDER as u32).rev() {
        while let Ok(page) = k.alloc_pages(FILL, order) {
            held.push((page, order));
        }
    }
    let taken: u64 = held.iter().map(|(_, o)| 1u64 << o).sum();
    t.say(format!(
        "> alloc_pages(GFP_KERNEL|__GFP_NORETRY|__GFP_NOWARN, 10..0) until each fails: {} blocks, {taken} pages",
        held.len()
    ))?;
    for line in levels(k) {
        t.say(line)?;
    }
    // GFP_KERNEL may use zones up to ZONE_NORMAL: lower zones hold back
    // their lowmem_reserve for that zone on top of the watermark.
    let normal = k.arch().zone_index(kmm::ZoneType::Normal);
    for z in k.zones().filter(|z| z.is_populated()) {
        let reserve = z.lowmem_reserve(normal);
        if reserve > 0 {
            t.say(format!(
                "  ({} stops higher: min {} + protection {reserve} pages kept for requests only {} can serve)",
                z.name(),
                z.watermark(kmm::Watermark::Min),
                z.name()
            ))?;
        }
    }
    t.say(format!(
        "  kswapd was woken {} times, direct reclaim tried {} times (nothing to reclaim yet)",
        m.platform().kswapd_wakeups() - wakeups0,
        m.platform().direct_reclaims() - reclaims0
    ))?;
    match k.alloc_page(KERNEL | GfpFlags::__GFP_NORETRY) {
        Ok(page) => {
            t.say(format!(
                "> alloc_page(GFP_KERNEL|__GFP_NORETRY) = {}",
                describe(k, page)
            ))?;
            held.push((page, 0));
        }
        Err(e) => t.say(format!(
            "> alloc_page(GFP_KERNEL|__GFP_NORETRY) failed: {e}"
        ))?,
    }
    t.dmesg(m)?;
    let mut atomic = 0u64;
    while let Ok(page) = k.alloc_page(ATOMIC | GfpFlags::__GFP_NOWARN) {
        held.push((page, 0));
        atomic += 1;
    }
    t.say(format!(
        "> alloc_page(GFP_ATOMIC|__GFP_NOWARN) until it fails: {atomic} more pages, from below min"
    ))?;
    for line in levels(k) {
        t.say(line)?;
    }
    free_all(k, &mut held)?;
    t.say(format!(
        "> __free_pages() of all of them: nr_free_pages() = {} (after boot: {boot_free})",
        k.nr_free_pages()
    ))?;
    Ok(())
}

/// Double free, wrong-order free, freeing a reserved page.
fn misuse(t: &mut Tour, m: &Machine) -> Result<(), Error> {
    let k = m.kmm();
    t.step(
        "Misuse is reported, not absorbed",
        "Freeing a page twice, freeing with the wrong order or freeing a page the allocator never\n\
         gave out would corrupt the free lists. Linux checks the page first and prints\n\
         \"BUG: Bad page state\"; kmm prints the same report, returns an error, and changes nothing.",
    )?;
    m.take_log();
    let page = k.alloc_page(KERNEL)?;
    let p = pfn(k, page);
    k.__free_page(page)?;
    t.say(format!(
        "> alloc_page(GFP_KERNEL) = pfn {p:#x}; __free_page(it) = Ok"
    ))?;
    report(t, "__free_page(it) again", k.__free_page(page))?;
    t.dmesg(m)?;

    let page = k.alloc_pages(KERNEL, 2)?;
    let p = pfn(k, page);
    t.say(format!("> alloc_pages(GFP_KERNEL, 2) = pfn {p:#x}"))?;
    report(t, "__free_pages(it, 1)", k.__free_pages(page, 1))?;
    t.dmesg(m)?;
    report(t, "__free_pages(it, 2)", k.__free_pages(page, 2))?;

    let reserved = k.pfn_to_page(0)?;
    report(
        t,
        "__free_page(pfn_to_page(0))   (the first page: reserved for the BIOS)",
        k.__free_page(reserved),
    )?;
    t.dmesg(m)?;
    Ok(())
}

/// Prints a call that returns nothing but may fail.
fn report(t: &mut Tour, call: &str, r: Result<(), KmmError>) -> Result<(), Error> {
    match r {
        Ok(()) => t.say(format!("> {call} = Ok")),
        Err(e) => t.say(format!("> {call} = Err({e})")),
    }
}

/// A sleeping allocation with preemption disabled.
fn sleeping_in_atomic(t: &mut Tour, m: &Machine) -> Result<(), Error> {
    let k = m.kmm();
    t.step(
        "GFP_KERNEL may sleep, so not in atomic context",
        "GFP_KERNEL lets the allocator sleep to reclaim memory. With preemption disabled (a spin\n\
         lock held, get_cpu_var() in use) sleeping is a bug, which Linux reports at once. Such\n\
         code must use GFP_ATOMIC.",
    )?;
    m.take_log();
    {
        let guard = m.cpus().preempt_disable();
        t.say(format!(
            "> preempt_disable()   (CPU {}: preempt_count = {})",
            guard.cpu(),
            m.cpus().preempt_count()
        ))?;
        match k.alloc_page(KERNEL) {
            Ok(page) => {
                t.say(format!(
                    "> alloc_page(GFP_KERNEL) = pfn {:#x}",
                    pfn(k, page)
                ))?;
                k.__free_page(page)?;
            }
            Err(e) => t.say(format!("> alloc_page(GFP_KERNEL) = Err({e})"))?,
        }
        t.dmesg(m)?;
        let page = k.alloc_page(ATOMIC)?;
        t.say(format!(
            "> alloc_page(GFP_ATOMIC) = pfn {:#x}   (fine)",
            pfn(k, page)
        ))?;
        k.__free_page(page)?;
    }
    t.say("> preempt_enable()")?;
    let page = k.alloc_page(KERNEL)?;
    t.say(format!(
        "> alloc_page(GFP_KERNEL) = pfn {:#x}   (fine again)",
        pfn(k, page)
    ))?;
    k.__free_page(page)?;
    Ok(())
}

/// Order-3 fails while plenty of order-0 is free, and works after frees.
fn fragmentation(t: &mut Tour, m: &Machine, boot_buddy: &BuddyCounts) -> Result<(), Error> {
    let k = m.kmm();
    t.step(
        "External fragmentation",
        "Free memory is not enough: an order-3 request needs 8 free pages in a row. We take all\n\
         memory page by page, then free every page with an odd frame number, so each free page's\n\
         buddy is in use and nothing can merge. The few bigger blocks left in the zones' reserves\n\
         are taken too (as other users would).",
    )?;
    m.take_log();
    let mut pages: Vec<&Page> = Vec::new();
    while let Ok(page) = k.alloc_page(FILL) {
        pages.push(page);
    }
    pages.sort_by_key(|p| pfn(k, p));
    let (odd, even): (Vec<&Page>, Vec<&Page>) = pages.iter().partition(|p| pfn(k, p) % 2 == 1);
    for page in &odd {
        k.__free_page(page)?;
    }
    k.drain_all_pages();
    let mut big: Vec<(&Page, u32)> = Vec::new();
    while let Ok(page) = k.alloc_pages(FILL, 3) {
        big.push((page, 3));
    }
    t.say(format!(
        "> {} x alloc_page(); {} x __free_page() of the odd frames; {} x alloc_pages(.., 3) of what was left whole",
        pages.len(),
        odd.len(),
        big.len()
    ))?;
    t.cat(m, "/proc/buddyinfo")?;
    let free = k.nr_free_pages();
    match k.alloc_pages(KERNEL | GfpFlags::__GFP_NORETRY, 3) {
        Ok(page) => {
            t.say(format!(
                "> alloc_pages(GFP_KERNEL|__GFP_NORETRY, 3) = {}",
                describe(k, page)
            ))?;
            big.push((page, 3));
        }
        Err(e) => t.say(format!(
            "> alloc_pages(GFP_KERNEL|__GFP_NORETRY, 3) failed with {free} pages ({}) free: {e}",
            format_size(free * k.page_size())
        ))?,
    }
    t.say("$ dmesg   (excerpt: the first line and the free lists)")?;
    for (i, line) in m.take_log().into_iter().enumerate() {
        if i == 0 || line.contains("kB ") && line.starts_with("Node ") {
            t.say(line)?;
        }
    }
    for page in &even {
        k.__free_page(page)?;
    }
    k.drain_all_pages();
    t.say(format!(
        "> __free_page() of the {} even frames: their buddies are free, they merge",
        even.len()
    ))?;
    let page = k.alloc_pages(KERNEL | GfpFlags::__GFP_NORETRY, 3)?;
    t.say(format!(
        "> alloc_pages(GFP_KERNEL|__GFP_NORETRY, 3) = {}",
        describe(k, page)
    ))?;
    big.push((page, 3));
    free_all(k, &mut big)?;
    t.say(format!(
        "> free everything: buddy lists as after boot: {}",
        yes(buddy_counts(k) == *boot_buddy)
    ))?;
    Ok(())
}

/// alloc_bootmem before the buddy allocator exists.
fn bootmem(t: &mut Tour, plain_memory_line: &str) -> Result<(), Error> {
    t.step(
        "Boot-time memory: alloc_bootmem()",
        "Before the buddy allocator exists, early code (a driver that needs a huge buffer, as\n\
         LDD3 describes) takes memory with alloc_bootmem*(). What it keeps is reserved for good\n\
         and shows up in the `Memory:` line; free_bootmem() gives memory back before mem_init.",
    )?;
    let mut notes: Vec<String> = Vec::new();
    let (mut keep_phys, keep_size) = (0, 1u64 << 20);
    let m = Machine::boot_with(MachineConfig::default(), |eb| {
        let a = eb.alloc_bootmem(keep_size)?;
        keep_phys = eb.__pa(a)?;
        notes.push(format!(
            "> alloc_bootmem(1M) = {a:#x}   (phys {keep_phys:#x})"
        ));
        let b = eb.alloc_bootmem_low_pages(64 << 10)?;
        let b_phys = eb.__pa(b)?;
        notes.push(format!(
            "> alloc_bootmem_low_pages(64K) = {b:#x}   (phys {b_phys:#x}, below the {} low limit)",
            format_size(eb.arch().bootmem_low_limit)
        ));
        let c = eb.alloc_bootmem(256 << 10)?;
        let c_phys = eb.__pa(c)?;
        eb.free_bootmem(c_phys, 256 << 10)?;
        notes.push(format!(
            "> alloc_bootmem(256K) = {c:#x}, then free_bootmem({c_phys:#x}, 256K)"
        ));
        Ok(())
    })?;
    for n in notes {
        t.say(n)?;
    }
    let k = m.kmm();
    t.say("$ dmesg | grep Memory:   (without, then with the early allocations)")?;
    t.say(plain_memory_line)?;
    for line in m.take_log() {
        if line.starts_with("Memory:") {
            t.say(line)?;
        }
    }
    t.say(format!(
        "  reserved by alloc_bootmem*: {}K",
        k.boot_summary().bootmem_bytes >> 10
    ))?;
    let before = k.nr_free_pages();
    let pages = k.free_bootmem_late(keep_phys, keep_size)?;
    t.say(format!(
        "> after boot, free_bootmem_late({keep_phys:#x}, 1M) = {pages} pages to the buddy allocator (free pages {before} -> {})",
        k.nr_free_pages()
    ))?;
    Ok(())
}

/// Per-CPU variables: seed 002's network statistics.
fn per_cpu_variables(t: &mut Tour, m: &Machine) -> Result<(), Error> {
    t.step(
        "Per-CPU variables: counting packets without locks",
        "Network code counts packets in a per-CPU variable: each CPU bumps its own copy inside\n\
         get_cpu_var()/put_cpu_var() (which disable preemption, so the task cannot move to\n\
         another CPU halfway), and a reader adds up the copies with for_each_online_cpu().",
    )?;
    /// `struct net_stats` of the seed.
    #[derive(Default, Debug)]
    struct NetStats {
        packets_received: u64,
        bytes_received: u64,
    }
    let cpus = m.cpus();
    let stats: PerCpu<NetStats> = PerCpu::for_cpus(cpus, |_| NetStats::default());
    t.say("> DEFINE_PER_CPU(struct net_stats, net_stats)")?;
    let counts = cpus.on_each_cpu(|cpu| -> Result<u32, Error> {
        let mut inside = 0;
        for i in 0..1000 * (cpu as u64 + 1) {
            let mut s = stats.get_cpu_var(cpus)?;
            s.packets_received += 1;
            s.bytes_received += 64 + i % 1437;
            inside = cpus.preempt_count();
        }
        Ok(inside)
    })?;
    for (cpu, r) in counts.into_iter().enumerate() {
        let pc = r?;
        t.say(format!(
            "> on CPU {cpu}: {} x update_rx_stats() (preempt_count inside get_cpu_var: {pc})",
            1000 * (cpu + 1)
        ))?;
    }
    let (mut packets, mut bytes) = (0, 0);
    for cpu in cpus.for_each_online_cpu() {
        let s = stats.per_cpu(cpu)?;
        t.say(format!(
            "  per_cpu(net_stats, {cpu}): packets_received {:>5}, bytes_received {:>8}",
            s.packets_received, s.bytes_received
        ))?;
        packets += s.packets_received;
        bytes += s.bytes_received;
    }
    t.say(format!(
        "> for_each_online_cpu() sum: packets_received {packets}, bytes_received {bytes}"
    ))?;
    Ok(())
}
