//! `/proc/meminfo` (`fs/proc/meminfo.c`): the fields kmm maintains so far,
//! in Linux's order.

use crate::mm::Kmm;
use crate::platform::Platform;
use core::fmt::{self, Write};

/// `calculate_totalreserve_pages()`: pages user space can never get — per
/// zone, the high watermark plus the largest `lowmem_reserve`.
pub fn totalreserve_pages<P: Platform>(k: &Kmm<P>) -> u64 {
    let nz = k.arch().nr_zones();
    k.zones()
        .map(|z| {
            let max = (0..nz).map(|j| z.lowmem_reserve(j)).max().unwrap_or(0)
                + z.watermark(crate::mmzone::Watermark::High);
            max.min(z.managed_pages())
        })
        .sum()
}

/// `si_mem_available()`: free pages less the reserves.
pub fn mem_available_pages<P: Platform>(k: &Kmm<P>) -> u64 {
    k.nr_free_pages().saturating_sub(totalreserve_pages(k))
}

fn line(out: &mut dyn Write, label: &str, kb: u64) -> fmt::Result {
    // Linux: "%-15s" of the label with its colon, then "%8lu kB".
    let pad = 15usize.saturating_sub(label.len());
    writeln!(out, "{label}:{:pad$}{kb:>8} kB", "")
}

/// `/proc/meminfo`.
pub fn meminfo<P: Platform>(k: &Kmm<P>, out: &mut dyn Write) -> fmt::Result {
    let kb = |pages: u64| pages << (k.page_shift() - 10);
    line(out, "MemTotal", kb(k.totalram_pages()))?;
    line(out, "MemFree", kb(k.nr_free_pages()))?;
    line(out, "MemAvailable", kb(mem_available_pages(k)))?;
    line(out, "Buffers", 0)?;
    line(out, "Cached", kb(k.nr_file_pages()))?;
    if k.arch().max_lowmem.is_some() {
        let (mut ht, mut hf) = (0, 0);
        for z in k.zones().filter(|z| z.zone_type().is_highmem()) {
            ht += z.managed_pages();
            hf += z.free_pages();
        }
        line(out, "HighTotal", kb(ht))?;
        line(out, "HighFree", kb(hf))?;
        line(out, "LowTotal", kb(k.totalram_pages() - ht))?;
        line(out, "LowFree", kb(k.nr_free_pages() - hf))?;
    }
    line(out, "Dirty", kb(k.nr_file_dirty()))?;
    line(out, "Writeback", 0)?;
    line(out, "AnonPages", kb(k.nr_anon_mapped()))?;
    line(out, "Mapped", kb(k.nr_file_mapped()))?;
    let (srec, sunrec) = (k.nr_slab_reclaimable(), k.nr_slab_unreclaimable());
    line(out, "KReclaimable", kb(srec))?;
    line(out, "Slab", kb(srec + sunrec))?;
    line(out, "SReclaimable", kb(srec))?;
    line(out, "SUnreclaim", kb(sunrec))?;
    line(out, "KernelStack", k.nr_kernel_stack_kb())?;
    line(out, "PageTables", kb(k.nr_page_table_pages()))?;
    if k.swapper_pg_dir().is_some() {
        line(out, "VmallocTotal", k.vmalloc_total() >> 10)?;
        line(out, "VmallocUsed", kb(k.vmalloc_nr_pages()))?;
        line(out, "VmallocChunk", 0)?;
    }
    // After VmallocChunk in Linux: the bytes of every chunk, all units.
    line(out, "Percpu", kb(k.pcpu_nr_pages()))?;
    // arch_report_meminfo(): the direct map by page size.
    for (size, pages) in k.direct_map_pages().by_size {
        if size == 0 {
            continue;
        }
        let label = match size {
            s if s >= 1 << 30 => "DirectMap1G",
            s if s >= 4 << 20 => "DirectMap4M",
            s if s >= 2 << 20 => "DirectMap2M",
            _ => "DirectMap4k",
        };
        line(out, label, pages * (size >> 10))?;
    }
    Ok(())
}
