//! `/proc/buddyinfo`, `/proc/zoneinfo` and `/proc/vmstat` (`mm/vmstat.c`),
//! written in Linux's exact formats to any [`core::fmt::Write`].

use crate::mm::Kmm;
use crate::mmzone::Watermark;
use crate::platform::Platform;
use core::fmt::{self, Write};

/// `/proc/buddyinfo`: free blocks per order for every populated zone.
pub fn buddyinfo<P: Platform>(k: &Kmm<P>, out: &mut dyn Write) -> fmt::Result {
    for z in k.zones().filter(|z| z.is_populated()) {
        write!(out, "Node {}, zone {:>8} ", z.nid(), z.name())?;
        for n in z.free_area_counts() {
            write!(out, "{n:>6} ")?;
        }
        out.write_char('\n')?;
    }
    Ok(())
}

/// `/proc/zoneinfo`: every zone of every node, empty ones included.
pub fn zoneinfo<P: Platform>(k: &Kmm<P>, out: &mut dyn Write) -> fmt::Result {
    let nz = k.arch().nr_zones();
    for z in k.zones() {
        write!(out, "Node {}, zone {:>8}", z.nid(), z.name())?;
        write!(
            out,
            "\n  pages free     {}\n        boost    0\n        min      {}\n        low      {}\n        high     {}\n        promo    {}\n        spanned  {}\n        present  {}\n        managed  {}\n        cma      0",
            z.free_pages(),
            z.watermark(Watermark::Min),
            z.watermark(Watermark::Low),
            z.watermark(Watermark::High),
            z.watermark(Watermark::Promo),
            z.spanned_pages(),
            z.present_pages(),
            z.managed_pages()
        )?;
        write!(out, "\n        protection: ({}", z.lowmem_reserve(0))?;
        for j in 1..nz {
            write!(out, ", {}", z.lowmem_reserve(j))?;
        }
        out.write_char(')')?;
        if !z.is_populated() {
            out.write_char('\n')?;
            continue;
        }
        let ev = z.event_counts();
        write!(out, "\n      {:<12} {}", "nr_free_pages", z.free_pages())?;
        write!(out, "\n      {:<12} {}", "numa_hit", ev.numa_hit)?;
        write!(out, "\n      {:<12} {}", "numa_miss", ev.numa_miss)?;
        write!(out, "\n  pagesets")?;
        for cpu in 0..k.nr_cpu_ids() {
            if let Some(p) = z.pcp(cpu) {
                write!(
                    out,
                    "\n    cpu: {cpu}\n              count:    {}\n              high:     {}\n              batch:    {}\n              high_min: {}\n              high_max: {}",
                    p.count(),
                    p.high(),
                    p.batch(),
                    p.high_min(),
                    p.high_max()
                )?;
                write!(out, "\n  vm stats threshold: {}", z.stat_threshold())?;
            }
        }
        write!(
            out,
            "\n  node_unreclaimable:  0\n  start_pfn:           {}\n",
            z.zone_start_pfn()
        )?;
    }
    Ok(())
}

/// `/proc/vmstat`: the page allocator's counters, in Linux's order.
pub fn vmstat<P: Platform>(k: &Kmm<P>, out: &mut dyn Write) -> fmt::Result {
    let zt = k.arch().zones;
    let mut pgalloc = [0u64; crate::mmzone::MAX_NR_ZONES];
    let mut stall = [0u64; crate::mmzone::MAX_NR_ZONES];
    let (mut hit, mut miss, mut pgfree) = (0, 0, 0);
    for z in k.zones() {
        let ev = z.event_counts();
        pgalloc[z.idx()] += ev.pgalloc;
        stall[z.idx()] += ev.allocstall;
        hit += ev.numa_hit;
        miss += ev.numa_miss;
        pgfree += ev.pgfree;
    }
    writeln!(out, "nr_free_pages {}", k.nr_free_pages())?;
    writeln!(out, "numa_hit {hit}")?;
    writeln!(out, "numa_miss {miss}")?;
    writeln!(out, "nr_slab_reclaimable {}", k.nr_slab_reclaimable())?;
    writeln!(out, "nr_slab_unreclaimable {}", k.nr_slab_unreclaimable())?;
    writeln!(out, "nr_anon_pages {}", k.nr_anon_mapped())?;
    writeln!(out, "nr_mapped {}", k.nr_file_mapped())?;
    writeln!(out, "nr_file_pages {}", k.nr_file_pages())?;
    writeln!(out, "nr_dirty {}", k.nr_file_dirty())?;
    // A node stat in kB since Linux 4.9, between the slab and page-table counts.
    writeln!(out, "nr_kernel_stack {}", k.nr_kernel_stack_kb())?;
    writeln!(out, "nr_page_table_pages {}", k.nr_page_table_pages())?;
    let (pgin, pgout) = k.pgpgin_pgpgout();
    writeln!(out, "pgpgin {pgin}")?;
    writeln!(out, "pgpgout {pgout}")?;
    for (i, t) in zt.iter().enumerate() {
        writeln!(out, "pgalloc_{} {}", t.vmstat_suffix(), pgalloc[i])?;
    }
    for (i, t) in zt.iter().enumerate() {
        writeln!(out, "allocstall_{} {}", t.vmstat_suffix(), stall[i])?;
    }
    writeln!(out, "pgfree {pgfree}")?;
    let (faults, major, _) = k.fault_counts();
    writeln!(out, "pgfault {faults}")?;
    writeln!(out, "pgmajfault {major}")
}
