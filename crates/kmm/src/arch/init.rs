//! The kernel page table and the kernel's virtual memory layout
//! (`arch/x86/mm/init.c`, `init_32.c`, `init_64.c`, `asm/pgtable_32_areas.h`,
//! `asm/pgtable_64_types.h`, `asm/fixmap.h`, `asm/highmem.h`).
//!
//! At boot, `build_kernel_page_table` makes `swapper_pg_dir` (`init_mm.pgd`)
//! in memory taken from memblock, as `init_mem_mapping()` does: the direct map
//! of low memory with the largest pages the format has
//! (`kernel_physical_mapping_init()`: 1 GiB and 2 MiB on x86_64, 4 MiB on
//! two-level x86, 2 MiB with PAE), and the upper-level tables of the vmalloc,
//! pkmap and fixmap areas, preallocated so that the top-level entries never
//! change after boot (`preallocate_vmalloc_pages()` on x86_64; the kernel
//! PTE tables of `permanent_kmaps_init()`/`early_fixmap_init()` on x86). A
//! process page table can then copy the kernel half once
//! (`pgd_ctor`/`clone_pgd_range`) and stay in sync.

use super::Arch;
use crate::error::KmmError;
use crate::memblock::{Memblock, ReserveKind};
use crate::pgtable::{Entry, PagingFormat, PteFlags};
use crate::ram::PhysMem;

/// `KM_MAX_IDX`: nested `kmap_atomic` slots per CPU.
pub const KM_MAX_IDX: usize = 16;
/// `LAST_PKMAP` on two-level x86 (1024 permanent kmaps, one PTE table).
pub const LAST_PKMAP_2LEVEL: usize = 1024;
/// `LAST_PKMAP` with PAE (512: one PTE table of 8-byte entries).
pub const LAST_PKMAP_PAE: usize = 512;
/// `VMALLOC_OFFSET`: the gap between the direct map and the vmalloc area on
/// 32-bit x86, catching stray accesses past the end of low memory.
pub const VMALLOC_OFFSET: u64 = 8 << 20;
/// `__FIXADDR_TOP` on 32-bit x86: the fixmap grows down from here.
pub const FIXADDR_TOP_X86: u64 = 0xffff_f000;
/// Fixmap slots before the `kmap_atomic` ones on 32-bit x86 (`FIX_HOLE`,
/// `FIX_APIC_BASE`, 64 `FIX_IO_APIC_BASE_*`).
pub const FIX_KMAP_BEGIN: usize = 66;
/// `FIX_BTMAPS_SLOTS * NR_FIX_BTMAPS`: boot-time fixmap slots (`early_ioremap`).
pub const FIX_BTMAP_SLOTS: usize = 512;
/// `VMALLOC_START` with four-level paging (`__VMALLOC_BASE_L4`).
pub const VMALLOC_START_L4: u64 = 0xffff_c900_0000_0000;
/// `VMALLOC_SIZE_TB_L4`: 32 TiB of vmalloc space with four-level paging.
pub const VMALLOC_SIZE_L4: u64 = 32 << 40;
/// `VMEMMAP_START` with four-level paging (not mapped by kmm; `mem_map` is
/// reached through the direct map).
pub const VMEMMAP_START_L4: u64 = 0xffff_ea00_0000_0000;

/// The kernel's virtual memory layout of a booted machine: where the direct
/// map, the vmalloc area, the permanent kmaps and the fixmap sit
/// (`Documentation/arch/x86/x86_64/mm.rst`; the "virtual kernel memory
/// layout" 32-bit kernels print at boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLayout {
    /// `PAGE_OFFSET`: start of the direct map.
    pub page_offset: u64,
    /// `high_memory`: the virtual address just past directly mapped low memory.
    pub high_memory: u64,
    /// `VMALLOC_START`.
    pub vmalloc_start: u64,
    /// `VMALLOC_END` as Linux defines it (the last byte on x86_64, the end
    /// on x86); the vmalloc allocator uses `[VMALLOC_START, VMALLOC_END)`.
    pub vmalloc_end: u64,
    /// `PKMAP_BASE` (0 without high memory).
    pub pkmap_base: u64,
    /// `LAST_PKMAP`: number of permanent kmap slots (0 without high memory).
    pub last_pkmap: usize,
    /// `FIXADDR_START`: the lowest permanent fixmap page (0 without a fixmap).
    pub fixaddr_start: u64,
    /// `FIXADDR_TOP` (0 without a fixmap).
    pub fixaddr_top: u64,
    /// `FIX_KMAP_BEGIN`: the first `kmap_atomic` fixmap slot.
    pub fix_kmap_begin: usize,
}

impl KernelLayout {
    /// The layout for `arch` with `lowmem_end` bytes of directly mapped
    /// physical memory (`max_low_pfn << PAGE_SHIFT`), `nr_cpus` CPUs and the
    /// kernel page-table format `fmt`.
    pub fn new(arch: &Arch, fmt: &dyn PagingFormat, lowmem_end: u64, nr_cpus: usize) -> Self {
        let page_size = 1u64 << fmt.shift(0);
        let high_memory = arch.page_offset.wrapping_add(lowmem_end);
        if arch.max_lowmem.is_none() {
            return KernelLayout {
                page_offset: arch.page_offset,
                high_memory,
                vmalloc_start: VMALLOC_START_L4,
                vmalloc_end: VMALLOC_START_L4 + VMALLOC_SIZE_L4 - 1,
                pkmap_base: 0,
                last_pkmap: 0,
                fixaddr_start: 0,
                fixaddr_top: 0,
                fix_kmap_begin: 0,
            };
        }
        // 32-bit: fixmap at the top, the pkmap page table below it on a PMD
        // boundary, the vmalloc area below that, 8 MiB above low memory.
        let permanent = FIX_KMAP_BEGIN + KM_MAX_IDX * nr_cpus + 2;
        let fixaddr_start = FIXADDR_TOP_X86 - permanent as u64 * page_size;
        let fixaddr_tot_start = fixaddr_start - FIX_BTMAP_SLOTS as u64 * page_size;
        let last_pkmap = if fmt.entry_size() == 8 {
            LAST_PKMAP_PAE
        } else {
            LAST_PKMAP_2LEVEL
        };
        let pmd_mask = !((1u64 << fmt.shift(1)) - 1);
        let pkmap_base = (fixaddr_tot_start - page_size * (last_pkmap as u64 + 1)) & pmd_mask;
        KernelLayout {
            page_offset: arch.page_offset,
            high_memory,
            vmalloc_start: (high_memory + VMALLOC_OFFSET) & !(VMALLOC_OFFSET - 1),
            vmalloc_end: pkmap_base - 2 * page_size,
            pkmap_base,
            last_pkmap,
            fixaddr_start,
            fixaddr_top: FIXADDR_TOP_X86,
            fix_kmap_begin: FIX_KMAP_BEGIN,
        }
    }

    /// `VMALLOC_TOTAL` in bytes (`VmallocTotal:` is this in kB).
    pub fn vmalloc_total(&self) -> u64 {
        self.vmalloc_end - self.vmalloc_start
    }

    /// `PKMAP_ADDR(nr)`: the address of permanent kmap slot `nr`.
    pub fn pkmap_addr(&self, nr: usize, page_size: u64) -> u64 {
        self.pkmap_base + nr as u64 * page_size
    }

    /// `__fix_to_virt(idx)`.
    pub fn fix_to_virt(&self, idx: usize, page_size: u64) -> u64 {
        self.fixaddr_top.wrapping_sub(idx as u64 * page_size)
    }

    /// True when `addr` is in the vmalloc area (`is_vmalloc_addr()`).
    pub fn is_vmalloc_addr(&self, addr: u64) -> bool {
        (self.vmalloc_start..self.vmalloc_end).contains(&addr)
    }
}

/// Pages of the direct map by page size: the `DirectMap4k`, `DirectMap2M`
/// / `DirectMap4M` and `DirectMap1G` lines of `/proc/meminfo`
/// (`direct_pages_count[]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectPages {
    /// `(page size, pages)` for each leaf level of the format, smallest first.
    pub by_size: [(u64, u64); 3],
}

/// What boot built: the root of `swapper_pg_dir`, the direct map's page
/// counts and the table pages taken from memblock.
#[derive(Clone, Copy, Debug)]
pub struct KernelPageTable {
    /// Physical address of `swapper_pg_dir`.
    pub root: u64,
    /// Direct-map pages per size.
    pub direct: DirectPages,
    /// Table pages taken from memblock.
    pub table_pages: u64,
}

/// A page-table builder over memory taken from memblock (`alloc_low_pages()`).
struct Builder<'a> {
    mem: &'a PhysMem,
    fmt: &'a dyn PagingFormat,
    memblock: &'a mut Memblock,
    /// Table pages must be directly mapped: below this physical address.
    limit: u64,
    pages: u64,
}

impl Builder<'_> {
    fn page_size(&self) -> u64 {
        1 << self.fmt.shift(0)
    }

    fn alloc_table(&mut self) -> Result<u64, KmmError> {
        let ps = self.page_size();
        let phys =
            self.memblock
                .alloc_range(ps, ps, 0, self.limit, None, ReserveKind::PageTable)?;
        self.mem.fill(phys, ps as usize, 0)?;
        self.pages += 1;
        Ok(phys)
    }

    fn get(&self, table: u64, idx: usize) -> Result<u64, KmmError> {
        read_entry(self.mem, self.fmt, table, idx)
    }

    fn set(&self, table: u64, idx: usize, raw: u64) -> Result<(), KmmError> {
        write_entry(self.mem, self.fmt, table, idx, raw)
    }

    fn index(&self, virt: u64, level: usize) -> usize {
        ((virt >> self.fmt.shift(level)) as usize) & (self.fmt.entries(level) - 1)
    }

    /// The table at `level` covering `virt`, allocating the missing ones.
    fn table_at(&mut self, root: u64, virt: u64, level: usize) -> Result<u64, KmmError> {
        let mut table = root;
        for l in (level + 1..self.fmt.levels()).rev() {
            let idx = self.index(virt, l);
            table = match self.fmt.decode(self.get(table, idx)?, l) {
                Entry::Table(next) => next,
                Entry::None => {
                    let new = self.alloc_table()?;
                    let raw = self
                        .fmt
                        .encode_table(new, l)
                        .ok_or(KmmError::InvalidAddress {
                            addr: new,
                            what: "page-table page the format cannot point at",
                        })?;
                    self.set(table, idx, raw)?;
                    new
                }
                Entry::Leaf { .. } => return Err(KmmError::AlreadyMapped { virt }),
            };
        }
        Ok(table)
    }
}

/// Reads entry `idx` of the table at physical address `table` (the entry
/// size is the format's).
#[inline(always)]
pub(crate) fn read_entry(
    mem: &PhysMem,
    fmt: &dyn PagingFormat,
    table: u64,
    idx: usize,
) -> Result<u64, KmmError> {
    crate::pgtable::read_entry(mem, fmt.entry_size(), table, idx)
}

/// Writes entry `idx` of the table at physical address `table` (`set_pte`).
#[inline(always)]
pub(crate) fn write_entry(
    mem: &PhysMem,
    fmt: &dyn PagingFormat,
    table: u64,
    idx: usize,
    raw: u64,
) -> Result<(), KmmError> {
    crate::pgtable::write_entry(mem, fmt.entry_size(), table, idx, raw)
}

/// `PAGE_KERNEL`: present, writable, global, accessed, dirty, no-execute.
pub const PAGE_KERNEL: PteFlags = PteFlags::PRESENT
    .union(PteFlags::WRITABLE)
    .union(PteFlags::GLOBAL)
    .union(PteFlags::ACCESSED)
    .union(PteFlags::DIRTY)
    .union(PteFlags::NO_EXEC);

/// `init_mem_mapping()` + `preallocate_vmalloc_pages()` /
/// `permanent_kmaps_init()`: builds `swapper_pg_dir` in memory from
/// `memblock`. `ram` lists the physical ranges to map directly (low memory
/// only); `layout` says which kernel areas get their tables now.
pub(crate) fn build_kernel_page_table(
    mem: &PhysMem,
    fmt: &'static dyn PagingFormat,
    memblock: &mut Memblock,
    arch: &Arch,
    layout: &KernelLayout,
    ram: &[(u64, u64)],
) -> Result<KernelPageTable, KmmError> {
    // Table pages are reached through the direct map: low memory only.
    let limit = layout.high_memory.wrapping_sub(layout.page_offset);
    let mut b = Builder {
        mem,
        fmt,
        memblock,
        limit,
        pages: 0,
    };
    let root = b.alloc_table()?;
    let page_size = b.page_size();
    let flags = PAGE_KERNEL & fmt.supported_flags();
    // Leaf levels, largest first.
    let mut leaves = [0usize; 3];
    let mut nleaves = 0;
    for l in (0..fmt.levels()).rev() {
        if (l == 0 || fmt.large_at(l)) && nleaves < leaves.len() {
            leaves[nleaves] = l;
            nleaves += 1;
        }
    }
    let mut direct = DirectPages::default();
    for (i, &l) in leaves[..nleaves].iter().rev().enumerate() {
        direct.by_size[i].0 = 1 << fmt.shift(l);
    }
    for &(start, end) in ram {
        let mut phys = start.next_multiple_of(page_size);
        let end = end & !(page_size - 1);
        while phys < end {
            let virt = layout.page_offset + phys;
            let level = leaves[..nleaves]
                .iter()
                .copied()
                .find(|&l| {
                    let size = 1u64 << fmt.shift(l);
                    phys & (size - 1) == 0 && virt & (size - 1) == 0 && phys + size <= end
                })
                .unwrap_or(0);
            let size = 1u64 << fmt.shift(level);
            let table = b.table_at(root, virt, level)?;
            let raw = fmt
                .encode_leaf(phys, flags, level)
                .ok_or(KmmError::InvalidAddress {
                    addr: phys,
                    what: "physical address beyond the page-table format's reach",
                })?;
            let idx = b.index(virt, level);
            b.set(table, idx, raw)?;
            if let Some(slot) = direct.by_size.iter_mut().find(|(s, _)| *s == size) {
                slot.1 += 1;
            }
            phys += size;
        }
    }
    // The kernel areas above the direct map: tables down to the level below
    // the top (x86_64) or down to the PTE tables (32-bit x86, whose areas
    // are small), so the top-level entries are final.
    let (area_start, area_end, level) = if arch.max_lowmem.is_none() {
        (layout.vmalloc_start, layout.vmalloc_end, fmt.levels() - 2)
    } else {
        (layout.vmalloc_start, layout.fixaddr_top + page_size - 1, 0)
    };
    let step = 1u64 << fmt.shift(level + 1);
    let mut virt = area_start & !(step - 1);
    while virt <= area_end {
        b.table_at(root, virt, level)?;
        virt = match virt.checked_add(step) {
            Some(v) => v,
            None => break,
        };
    }
    Ok(KernelPageTable {
        root,
        direct,
        table_pages: b.pages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{pgtable_x86, x86, x86_64};

    #[test]
    fn x86_layout_matches_a_32_bit_kernel() {
        let l = KernelLayout::new(&x86::X86, &pgtable_x86::X86_2LEVEL, 896 << 20, 2);
        assert_eq!(l.high_memory, 0xf800_0000);
        assert_eq!(l.vmalloc_start, 0xf880_0000);
        assert_eq!(l.pkmap_base, 0xff80_0000);
        assert_eq!(l.vmalloc_end, 0xff7f_e000);
        assert_eq!(l.last_pkmap, 1024);
        assert!(l.fixaddr_start > l.pkmap_base + (1024 << 12));
        // A machine with 512 MiB: the vmalloc area starts 8 MiB above RAM.
        let small = KernelLayout::new(&x86::X86, &pgtable_x86::X86_2LEVEL, 512 << 20, 2);
        assert_eq!(small.vmalloc_start, 0xe080_0000);
    }

    #[test]
    fn x86_64_layout_has_32_tib_of_vmalloc() {
        let l = KernelLayout::new(
            &x86_64::X86_64,
            &crate::arch::pgtable_x86_64::X86_64_4LEVEL,
            1 << 30,
            2,
        );
        assert_eq!(l.vmalloc_start, 0xffff_c900_0000_0000);
        assert_eq!(l.vmalloc_end, 0xffff_e8ff_ffff_ffff);
        // VmallocTotal: as Linux prints it.
        assert_eq!(l.vmalloc_total() >> 10, 34_359_738_367);
        assert_eq!(l.pkmap_base, 0);
    }
}
