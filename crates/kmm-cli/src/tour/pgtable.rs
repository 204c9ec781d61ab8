//! Tour step: multi-level page tables as real tables in simulated RAM
//! (seed 003: 页表, 多级页表, 地址翻译).

use super::{yes, Tour};
use crate::Error;
use kmm::arch::pgtable_x86::X86_2LEVEL;
use kmm::arch::pgtable_x86_64::X86_64_4LEVEL;
use kmm::pgtable::{PagingFormat, PteFlags};
use kmm_sim::mmu::{Access, Mmu};
use kmm_sim::Machine;

/// Builds page tables of two formats, maps small and large pages, walks
/// addresses level by level and frees everything again.
pub fn step(t: &mut Tour, m: &Machine) -> Result<(), Error> {
    let k = m.kmm();
    t.step(
        "Page tables: a virtual address, level by level",
        "The MMU translates a virtual address by walking a tree of tables: each level's index\n\
         is a slice of the address bits, each entry points to the next table or, at the last\n\
         level (or earlier, for a large page), to the physical page. kmm keeps these tables\n\
         in simulated RAM, in the hardware's own formats; every table is a page from the page\n\
         allocator, counted in /proc/meminfo's PageTables.",
    )?;
    k.drain_all_pages();
    let free_before = k.nr_free_pages();
    let rw = PteFlags::PRESENT | PteFlags::WRITABLE | PteFlags::USER;
    for fmt in [&X86_64_4LEVEL as &'static dyn PagingFormat, &X86_2LEVEL] {
        let levels = fmt.levels();
        let names: Vec<String> = (0..levels)
            .rev()
            .map(|l| {
                format!(
                    "{} ({} entries, bits {}-{})",
                    fmt.level_name(l),
                    fmt.entries(l),
                    fmt.shift(l) + fmt.entries(l).trailing_zeros() - 1,
                    fmt.shift(l)
                )
            })
            .collect();
        t.say(format!(
            "> pgd_alloc({}): {}",
            fmt.name(),
            names.join(" -> ")
        ))?;
        let mut pt = k.pgd_alloc(fmt)?;
        let user = 0x0804_8000u64;
        let page = k.alloc_page(kmm::GfpFlags::GFP_KERNEL)?;
        let phys = k.page_to_phys(page)?;
        pt.map(k, user, phys, 4096, rw)?;
        let large = fmt.shift(1);
        let big_virt = 1u64 << (large + 4);
        let big_phys = 1u64 << large;
        pt.map(k, big_virt, big_phys, 1 << large, rw)?;
        let tables = k.nr_page_table_pages();
        t.say(format!(
            "> map({user:#x} -> phys {phys:#x}, 4K, rw-user); map({big_virt:#x} -> {big_phys:#x}, {}M large page)\n  \
             page-table pages in use: {tables} ({} kB in /proc/meminfo PageTables)",
            (1u64 << large) >> 20,
            tables * 4
        ))?;
        let probe = user + 0x123;
        let idx: Vec<String> = (0..levels)
            .rev()
            .map(|l| {
                format!(
                    "{}[{}]",
                    fmt.level_name(l),
                    (probe >> fmt.shift(l)) & (fmt.entries(l) as u64 - 1)
                )
            })
            .collect();
        match pt.walk_and_mark(k, probe, true) {
            Some(tr) => t.say(format!(
                "> walk({probe:#x}): {} + offset {:#x} -> phys {:#x} ({}K page, level {}); accessed and dirty now set: {}",
                idx.join(" -> "),
                probe & 0xfff,
                tr.phys,
                tr.size >> 10,
                tr.level,
                yes(pt
                    .walk(k, probe)
                    .is_some_and(|w| w.flags.pte_young() && w.flags.pte_dirty()))
            ))?,
            None => t.say(format!("> walk({probe:#x}): not mapped"))?,
        }
        let inside = big_virt + 0x12_3456;
        if let Some(tr) = pt.walk(k, inside) {
            t.say(format!(
                "> walk({inside:#x}): stops at the {} entry of a large page -> phys {:#x}: {}",
                fmt.level_name(tr.level),
                tr.phys,
                yes(tr.phys == big_phys + 0x12_3456)
            ))?;
        }
        if fmt.levels() == 4 {
            // The same tables through the software MMU: CPU 0's TLB.
            let mmu = Mmu::for_machine(m);
            let first = mmu.translate(0, &pt, 1, probe, Access::Read, true);
            for _ in 0..999 {
                let _ = mmu.translate(0, &pt, 1, probe, Access::Read, true);
            }
            let st = mmu.tlb_stats(0);
            t.say(format!(
                "> through the MMU: 1000 user reads of {probe:#x} on CPU 0 = {:#x}: {} TLB miss (one walk), {} hits",
                first.unwrap_or(0),
                st.misses,
                st.hits
            ))?;
            let fault = mmu.translate(0, &pt, 1, probe, Access::Exec, true);
            let msg = match fault {
                Err(f) => f.to_string(),
                Ok(_) => "no fault".to_string(),
            };
            t.say(format!(
                "> executing it (no NO_EXEC bit, so allowed) -> {msg}"
            ))?;
            let kernel_only = 0x0900_0000u64;
            pt.map(
                k,
                kernel_only,
                phys,
                4096,
                PteFlags::PRESENT | PteFlags::WRITABLE,
            )?;
            if let Err(f) = mmu.translate(0, &pt, 1, kernel_only, Access::Read, true) {
                t.say(format!(
                    "> a user read of a kernel-only page {kernel_only:#x}: {f}"
                ))?;
            }
            pt.unmap(k, kernel_only)?;
            pt.unmap(k, user)?;
            let stale = mmu.translate(0, &pt, 1, probe, Access::Read, true).is_ok();
            mmu.invlpg(0, probe);
            let after = mmu.translate(0, &pt, 1, probe, Access::Read, true);
            t.say(format!(
                "> unmap({user:#x}): the TLB still holds the old translation until invlpg: {}; after invlpg: {}",
                yes(stale),
                match after {
                    Err(f) => f.to_string(),
                    Ok(p) => format!("{p:#x}"),
                }
            ))?;
        }
        let hole = 0x4000_0000u64;
        t.say(format!(
            "> walk({hole:#x}) of an unmapped address: {}   (the MMU would raise a page fault)",
            if pt.walk(k, hole).is_none() {
                "no translation"
            } else {
                "mapped?"
            }
        ))?;
        pt.destroy(k)?;
        k.__free_page(page)?;
    }
    k.drain_all_pages();
    t.say(format!(
        "> destroy(): every table page back with the page allocator: {}",
        yes(k.nr_page_table_pages() == 0 && k.nr_free_pages() == free_before)
    ))?;
    Ok(())
}
