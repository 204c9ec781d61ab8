//! Process memory: the page tables of address spaces and what happens in
//! them (`mm/memory.c`, `mm/pgtable-generic.c`, `kernel/fork.c`'s
//! `copy_page_range` part).
//!
//! A process's page table is a real table in RAM whose kernel half is a copy
//! of `swapper_pg_dir`'s top-level entries (`pgd_ctor`); the kernel's tables
//! below them are shared and never freed with the process. Page-table pages
//! of the user half are allocated on demand (`__pte_alloc`), counted in
//! `NR_PAGETABLE` and the mm's `pgtables_bytes`, and their own `struct page`
//! remembers the mm and the address they cover, so the reverse map can go
//! from a PTE back to its address space ([`crate::rmap`]).
//!
//! Pages enter a process only through faults ([`Kmm::handle_mm_fault`]) and
//! leave through zaps ([`Kmm::zap_page_range`]): every present user PTE
//! other than the zero page's holds one reference on its page and one slot
//! in its reverse map.

use crate::arch::init::{read_entry, write_entry};
use crate::error::KmmError;
use crate::gfp::GfpFlags;
use crate::mm::Kmm;
use crate::mm_types::{
    MmStruct, Page, VmAreaStruct, VmaFlags, MM_ANONPAGES, MM_FILEPAGES, MM_SHMEMPAGES,
};
use crate::pgtable::{Entry, PageTable, PagingFormat, PteFlags};
use crate::platform::Platform;
use crate::spinlock::SpinLock;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// `PAGE_MAPPING_ANON`: `page->mapping` of an anonymous page.
pub const PAGE_MAPPING_ANON: u64 = 1;
/// `fault_around_bytes`: a read fault on a file maps up to this much of the
/// page cache around the faulting page.
pub const FAULT_AROUND_BYTES: u64 = 64 << 10;
/// Highest address-space tag handed out before wrapping (12-bit PCID).
const MAX_ASID: u64 = 4095;
/// `host` of an `address_space` with no file behind it: shared anonymous
/// memory (`/dev/zero`, shmem).
pub const SHMEM_HOST: u64 = u64::MAX;

/// Process-memory state of the machine.
pub(crate) struct MemoryState {
    /// `zero_pfn`: the shared zero page (from memblock at boot).
    pub(crate) zero_pfn: AtomicU64,
    next_asid: AtomicU64,
    asid_lock: SpinLock<()>,
    /// `PGFAULT`.
    pub(crate) pgfault: AtomicU64,
    /// `PGMAJFAULT`.
    pub(crate) pgmajfault: AtomicU64,
    /// Copy-on-write copies made.
    pub(crate) cow: AtomicU64,
    /// `NR_ANON_MAPPED`: anonymous pages mapped (`AnonPages:`).
    pub(crate) nr_anon: AtomicU64,
}

impl MemoryState {
    pub(crate) const fn new() -> Self {
        MemoryState {
            zero_pfn: AtomicU64::new(u64::MAX),
            next_asid: AtomicU64::new(1),
            asid_lock: SpinLock::new(()),
            pgfault: AtomicU64::new(0),
            pgmajfault: AtomicU64::new(0),
            cow: AtomicU64::new(0),
            nr_anon: AtomicU64::new(0),
        }
    }
}

/// What kind of access faulted (`FAULT_FLAG_WRITE`, `FAULT_FLAG_INSTRUCTION`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultAccess {
    /// A load.
    Read,
    /// A store.
    Write,
    /// An instruction fetch.
    Exec,
}

/// `si_code` of a SIGSEGV.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SegvCode {
    /// `SEGV_MAPERR`: nothing is mapped there.
    MapErr = 1,
    /// `SEGV_ACCERR`: mapped, but the access is not allowed.
    AccErr = 2,
}

/// How a fault ended (`vm_fault_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultResult {
    /// Handled without I/O (`VM_FAULT_MINOR`... Linux's 0).
    Minor,
    /// Handled by reading a page from a file (`VM_FAULT_MAJOR`).
    Major,
    /// The process gets SIGSEGV (`VM_FAULT_SIGSEGV`, `bad_area`).
    Segv(SegvCode),
    /// The process gets SIGBUS: a file mapping beyond the end of the file
    /// (`VM_FAULT_SIGBUS`).
    Bus,
}

impl<P: Platform> Kmm<P> {
    /// The `mm_struct` at physical address `mm`.
    pub fn mm_struct(&self, mm: u64) -> Result<&MmStruct, KmmError> {
        self.mem.ram_ref::<MmStruct>(mm)
    }

    /// The `vm_area_struct` at physical address `vma`.
    pub fn vm_area(&self, vma: u64) -> Result<&VmAreaStruct, KmmError> {
        self.mem.ram_ref::<VmAreaStruct>(vma)
    }

    /// The zero page's frame (`my_zero_pfn()`).
    pub fn zero_pfn(&self) -> u64 {
        self.memory.zero_pfn.load(Relaxed)
    }

    fn mm_format(&self, m: &MmStruct) -> &'static dyn PagingFormat {
        let fmts = self.arch.paging_formats();
        fmts[(m.pgd_format.load(Relaxed) as usize).min(fmts.len() - 1)]
    }

    /// The page table of address space `mm` (what `CR3` holds while it runs),
    /// for the MMU. `None` before [`Self::mm_pgd_alloc`].
    pub fn mm_page_table(&self, mm: u64) -> Option<PageTable> {
        let m = self.mm_struct(mm).ok()?;
        let root = m.pgd.load(Relaxed);
        (root != 0).then(|| PageTable {
            root,
            fmt: self.mm_format(m),
        })
    }

    /// The address-space tag (PCID) of `mm`.
    pub fn mm_asid(&self, mm: u64) -> u16 {
        self.mm_struct(mm)
            .map_or(0, |m| m.context_id.load(Relaxed) as u16)
    }

    /// `pgd_alloc()` for a process: a top-level table whose kernel half
    /// copies `swapper_pg_dir` (`pgd_ctor`), and a fresh address-space tag.
    pub fn mm_pgd_alloc(&self, mm: u64) -> Result<(), KmmError> {
        let kpgd = self.swapper_pg_dir().ok_or(KmmError::InvalidArgument {
            what: "processes need a kernel page table (PAGE_SIZE 4K)",
        })?;
        let m = self.mm_struct(mm)?;
        if m.pgd.load(Relaxed) != 0 {
            return Err(KmmError::InvalidArgument {
                what: "mm already has a page table",
            });
        }
        let fmt = kpgd.fmt;
        let fidx = self
            .arch
            .paging_formats()
            .iter()
            .position(|f| f.name() == fmt.name())
            .unwrap_or(0);
        let root = self.alloc_pt_page(mm, 0)?;
        let top = fmt.levels() - 1;
        let first = self.kernel_pgd_index(fmt, m.task_size.load(Relaxed));
        for idx in first..fmt.entries(top) {
            let raw = read_entry(&self.mem, fmt, kpgd.root, idx)?;
            if raw != 0 {
                write_entry(&self.mem, fmt, root, idx, raw)?;
            }
        }
        m.pgd_format.store(fidx as u64, Relaxed);
        m.pgd.store(root, Relaxed);
        let asid = {
            let _g = self.memory.asid_lock.lock();
            let a = self.memory.next_asid.load(Relaxed);
            self.memory
                .next_asid
                .store(if a >= MAX_ASID { 1 } else { a + 1 }, Relaxed);
            a
        };
        m.context_id.store(asid, Relaxed);
        Ok(())
    }

    /// `KERNEL_PGD_BOUNDARY`: the first top-level index of the kernel half.
    fn kernel_pgd_index(&self, fmt: &dyn PagingFormat, task_size: u64) -> usize {
        let top = fmt.levels() - 1;
        let shift = fmt.shift(top);
        let mask = fmt.entries(top) as u64 - 1;
        let last_user = task_size.max(1) - 1;
        (((last_user >> shift) & mask) + 1) as usize
    }

    /// A zeroed page-table page for `mm` covering `base` (`__pte_alloc`):
    /// counted in `NR_PAGETABLE` and `pgtables_bytes`; its `struct page`
    /// names the mm and the area (for `ptep_to_mm`).
    fn alloc_pt_page(&self, mm: u64, index: u64) -> Result<u64, KmmError> {
        let va = self.get_zeroed_page(GfpFlags::GFP_KERNEL)?;
        let phys = self.__pa(va)?;
        let page = self.phys_to_page(phys)?;
        page.set_mapping(mm);
        page.set_index(index as u32);
        self.nr_pagetable.fetch_add(1, Relaxed);
        self.mm_struct(mm)?
            .pgtables_bytes
            .fetch_add(self.page_size(), Relaxed);
        Ok(phys)
    }

    fn free_pt_page(&self, mm: u64, phys: u64) -> Result<(), KmmError> {
        let page = self.phys_to_page(phys)?;
        page.set_mapping(0);
        page.set_index(0);
        self.free_page(self.__va(phys)?)?;
        self.nr_pagetable.fetch_sub(1, Relaxed);
        self.mm_struct(mm)?
            .pgtables_bytes
            .fetch_sub(self.page_size(), Relaxed);
        Ok(())
    }

    fn pt_index(fmt: &dyn PagingFormat, virt: u64, level: usize) -> usize {
        ((virt >> fmt.shift(level)) as usize) & (fmt.entries(level) - 1)
    }

    /// The PTE table covering user address `addr` of `mm`, allocating the
    /// missing levels when `alloc` (`pte_alloc_map`). `Ok(None)` when a level
    /// is missing and `alloc` is false.
    pub(crate) fn pte_table(
        &self,
        mm: u64,
        addr: u64,
        alloc: bool,
    ) -> Result<Option<u64>, KmmError> {
        let m = self.mm_struct(mm)?;
        let fmt = self.mm_format(m);
        let mut table = m.pgd.load(Relaxed);
        if table == 0 {
            return Err(KmmError::InvalidArgument {
                what: "mm has no page table",
            });
        }
        for level in (1..fmt.levels()).rev() {
            let idx = Self::pt_index(fmt, addr, level);
            let raw = read_entry(&self.mem, fmt, table, idx)?;
            table = match fmt.decode(raw, level) {
                Entry::Table(next) => next,
                Entry::Leaf { .. } => return Err(KmmError::AlreadyMapped { virt: addr }),
                Entry::None if !alloc => return Ok(None),
                Entry::None => {
                    let new = self.alloc_pt_page(mm, addr >> fmt.shift(level))?;
                    let raw = fmt
                        .encode_table(new, level)
                        .ok_or(KmmError::InvalidAddress {
                            addr: new,
                            what: "page-table page the format cannot point at",
                        })?;
                    write_entry(&self.mem, fmt, table, idx, raw)?;
                    new
                }
            };
        }
        Ok(Some(table))
    }

    /// The physical address of the PTE for `addr` (allocating tables when
    /// `alloc`).
    fn pte_addr(&self, mm: u64, addr: u64, alloc: bool) -> Result<Option<u64>, KmmError> {
        let m = self.mm_struct(mm)?;
        let fmt = self.mm_format(m);
        Ok(self
            .pte_table(mm, addr, alloc)?
            .map(|t| t + Self::pt_index(fmt, addr, 0) as u64 * fmt.entry_size()))
    }

    fn read_pte(&self, fmt: &dyn PagingFormat, ptep: u64) -> Result<u64, KmmError> {
        read_entry(&self.mem, fmt, ptep, 0)
    }

    fn write_pte(&self, fmt: &dyn PagingFormat, ptep: u64, raw: u64) -> Result<(), KmmError> {
        write_entry(&self.mem, fmt, ptep, 0, raw)
    }

    /// The PTE of `addr` in `mm`: `(pfn, flags)` when present.
    pub fn follow_pte(&self, mm: u64, addr: u64) -> Result<Option<(u64, PteFlags)>, KmmError> {
        let m = self.mm_struct(mm)?;
        let fmt = self.mm_format(m);
        let Some(ptep) = self.pte_addr(mm, addr, false)? else {
            return Ok(None);
        };
        Ok(match fmt.decode(self.read_pte(fmt, ptep)?, 0) {
            Entry::Leaf { phys, flags } => Some((phys >> self.page_shift, flags)),
            _ => None,
        })
    }

    fn encode_pte(
        &self,
        fmt: &dyn PagingFormat,
        pfn: u64,
        flags: PteFlags,
    ) -> Result<u64, KmmError> {
        let phys = self.pfn_phys(pfn);
        fmt.encode_leaf(phys, (flags | PteFlags::PRESENT) & fmt.supported_flags(), 0)
            .ok_or(KmmError::InvalidAddress {
                addr: phys,
                what: "physical address beyond the page-table format's reach",
            })
    }

    fn rss_add(&self, mm: u64, kind: usize, delta: i64) -> Result<(), KmmError> {
        let m = self.mm_struct(mm)?;
        if delta >= 0 {
            m.rss_stat[kind].fetch_add(delta as u64, Relaxed);
            let total: u64 = m.rss_stat.iter().map(|c| c.load(Relaxed)).sum();
            m.hiwater_rss.fetch_max(total, Relaxed);
        } else {
            m.rss_stat[kind].fetch_sub(delta.unsigned_abs(), Relaxed);
        }
        Ok(())
    }

    /// The RSS counter a page of `vma` is charged to.
    fn rss_kind(&self, page: &Page) -> usize {
        let mapping = page.mapping();
        if mapping == PAGE_MAPPING_ANON {
            MM_ANONPAGES
        } else if self
            .address_space(mapping)
            .is_ok_and(|a| a.host.load(Relaxed) == SHMEM_HOST)
        {
            MM_SHMEMPAGES
        } else {
            MM_FILEPAGES
        }
    }

    /// Maps `page` at `ptep` with `flags` and records it: reference (taken
    /// by the caller), reverse map, RSS, `NR_FILE_MAPPED`/`NR_ANON_MAPPED`.
    fn set_pte_page(
        &self,
        mm: u64,
        fmt: &dyn PagingFormat,
        ptep: u64,
        page: &Page,
        flags: PteFlags,
    ) -> Result<(), KmmError> {
        let pfn = self.page_to_pfn(page)?;
        let raw = self.encode_pte(fmt, pfn, flags)?;
        self.page_add_rmap(page, ptep)?;
        if page.page_mapcount() == 1 {
            if page.mapping() == PAGE_MAPPING_ANON {
                self.memory.nr_anon.fetch_add(1, Relaxed);
            } else {
                self.filemap.nr_mapped.fetch_add(1, Relaxed);
            }
        }
        self.rss_add(mm, self.rss_kind(page), 1)?;
        self.write_pte(fmt, ptep, raw)
    }

    /// Undoes [`Self::set_pte_page`] for the PTE at `ptep` (already read as
    /// `pfn`/`flags`): clears it, drops the reverse-map slot, the RSS and
    /// the reference; a dirty file page is marked for writeback.
    fn clear_pte_page(
        &self,
        mm: u64,
        fmt: &dyn PagingFormat,
        ptep: u64,
        pfn: u64,
        flags: PteFlags,
    ) -> Result<(), KmmError> {
        self.write_pte(fmt, ptep, 0)?;
        if pfn == self.zero_pfn() {
            return Ok(());
        }
        let page = self.pfn_to_page(pfn)?;
        let anon = page.mapping() == PAGE_MAPPING_ANON;
        if !anon && flags.pte_dirty() {
            self.set_page_dirty(pfn)?;
        }
        self.page_remove_rmap(page, ptep)?;
        self.rss_add(mm, self.rss_kind(page), -1)?;
        if page.page_mapcount() == 0 {
            if anon {
                self.memory.nr_anon.fetch_sub(1, Relaxed);
            } else {
                self.filemap.nr_mapped.fetch_sub(1, Relaxed);
            }
        }
        if anon && page.page_count() == 1 {
            // The last reference: an anonymous page leaves no trace.
            page.set_mapping(0);
        }
        self.put_page(page)
    }

    /// Walks the present PTEs of `[start, end)` in `mm`, table by table:
    /// `f(ptep, pfn, flags)`.
    fn for_each_pte(
        &self,
        mm: u64,
        start: u64,
        end: u64,
        f: &mut dyn FnMut(u64, u64, PteFlags) -> Result<(), KmmError>,
    ) -> Result<(), KmmError> {
        let m = self.mm_struct(mm)?;
        let fmt = self.mm_format(m);
        let root = m.pgd.load(Relaxed);
        if root == 0 || start >= end {
            return Ok(());
        }
        let top = fmt.levels() - 1;
        let limit = self.kernel_pgd_index(fmt, m.task_size.load(Relaxed));
        self.walk_range(fmt, root, top, 0, start, end, limit, f)
    }

    /// The present leaves under `table` (at `level`, covering addresses
    /// from `base`) inside `[start, end)`, skipping empty subtrees.
    #[allow(clippy::too_many_arguments)] // the walk's position plus the range
    fn walk_range(
        &self,
        fmt: &dyn PagingFormat,
        table: u64,
        level: usize,
        base: u64,
        start: u64,
        end: u64,
        limit: usize,
        f: &mut dyn FnMut(u64, u64, PteFlags) -> Result<(), KmmError>,
    ) -> Result<(), KmmError> {
        let shift = fmt.shift(level);
        let span = 1u64 << shift;
        let n = if level == fmt.levels() - 1 {
            limit
        } else {
            fmt.entries(level)
        };
        let first = if start > base {
            (((start - base) >> shift) as usize).min(n)
        } else {
            0
        };
        let es = fmt.entry_size();
        for idx in first..n {
            let lo = base + ((idx as u64) << shift);
            if lo >= end {
                break;
            }
            let at = table + idx as u64 * es;
            let raw = self.read_pte(fmt, at)?;
            if raw == 0 {
                continue;
            }
            match fmt.decode(raw, level) {
                Entry::Table(next) if level > 0 => {
                    self.walk_range(fmt, next, level - 1, lo, start, end, limit, f)?;
                }
                Entry::Leaf { phys, flags } if level == 0 && lo + span > start => {
                    f(at, phys >> self.page_shift, flags)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// `zap_page_range()` + `free_pgd_range()`: unmaps every page in
    /// `[start, end)` of `mm` (dropping references, RSS and reverse-map
    /// slots; dirty file pages are marked for writeback), frees the PTE
    /// tables left empty and flushes the TLB range on every CPU.
    pub fn zap_page_range(&self, mm: u64, start: u64, end: u64) -> Result<(), KmmError> {
        let m = self.mm_struct(mm)?;
        let fmt = self.mm_format(m);
        self.for_each_pte(mm, start, end, &mut |ptep, pfn, flags| {
            self.clear_pte_page(mm, fmt, ptep, pfn, flags)
        })?;
        self.free_empty_tables(mm, start, end)?;
        self.platform
            .flush_tlb_mm_range(self.mm_asid(mm), start, end);
        Ok(())
    }

    /// Frees the user page tables under `[start, end)` that hold nothing.
    fn free_empty_tables(&self, mm: u64, start: u64, end: u64) -> Result<(), KmmError> {
        let m = self.mm_struct(mm)?;
        let fmt = self.mm_format(m);
        let root = m.pgd.load(Relaxed);
        let top = fmt.levels() - 1;
        let first_kernel = self.kernel_pgd_index(fmt, m.task_size.load(Relaxed));
        self.free_empty_below(mm, fmt, root, top, 0, start, end, first_kernel)?;
        Ok(())
    }

    /// Returns whether `table` (at `level`, covering from `base`) is empty
    /// after freeing its empty children inside `[start, end)`.
    #[allow(clippy::too_many_arguments)] // the walk's position plus the range
    fn free_empty_below(
        &self,
        mm: u64,
        fmt: &dyn PagingFormat,
        table: u64,
        level: usize,
        base: u64,
        start: u64,
        end: u64,
        limit: usize,
    ) -> Result<bool, KmmError> {
        let shift = fmt.shift(level);
        let n = if level == fmt.levels() - 1 {
            limit
        } else {
            fmt.entries(level)
        };
        let mut empty = true;
        for idx in 0..n {
            let lo = base + ((idx as u64) << shift);
            let hi = lo + (1u64 << shift);
            let raw = read_entry(&self.mem, fmt, table, idx)?;
            if raw == 0 {
                continue;
            }
            if level > 0 && hi > start && lo < end {
                if let Entry::Table(next) = fmt.decode(raw, level) {
                    if self.free_empty_below(mm, fmt, next, level - 1, lo, start, end, limit)? {
                        write_entry(&self.mem, fmt, table, idx, 0)?;
                        self.free_pt_page(mm, next)?;
                        continue;
                    }
                }
            }
            empty = false;
        }
        Ok(empty)
    }

    /// `change_protection()`: the present PTEs of `[start, end)` get `prot`,
    /// keeping their frames and accessed/dirty bits. A private writable
    /// mapping stays write-protected where a page is shared (copy-on-write
    /// pending); an anonymous page only this PTE maps may be writable.
    pub fn change_protection(
        &self,
        mm: u64,
        vma: u64,
        start: u64,
        end: u64,
        prot: PteFlags,
    ) -> Result<(), KmmError> {
        let m = self.mm_struct(mm)?;
        let fmt = self.mm_format(m);
        let vflags = VmaFlags::from_bits_retain(self.vm_area(vma)?.vm_flags.load(Relaxed));
        let zero = self.zero_pfn();
        self.for_each_pte(mm, start, end, &mut |ptep, pfn, old| {
            let keep = old & (PteFlags::ACCESSED | PteFlags::DIRTY);
            let mut flags = prot | keep;
            if vflags.contains(VmaFlags::VM_WRITE) && !vflags.contains(VmaFlags::VM_SHARED) {
                let exclusive = pfn != zero
                    && self
                        .pfn_to_page(pfn)
                        .is_ok_and(|p| p.mapping() == PAGE_MAPPING_ANON && p.page_mapcount() == 1);
                if exclusive && old.pte_write() {
                    flags |= PteFlags::WRITABLE;
                }
            }
            if pfn == zero {
                flags -= PteFlags::WRITABLE;
            }
            let raw = self.encode_pte(fmt, pfn, flags)?;
            self.write_pte(fmt, ptep, raw)
        })?;
        self.platform
            .flush_tlb_mm_range(self.mm_asid(mm), start, end);
        Ok(())
    }

    /// `move_page_tables()` (mremap): the mappings of `len` bytes at
    /// `old_start` move to `new_start`, pages and all (reverse map updated).
    pub fn move_page_tables(
        &self,
        mm: u64,
        old_start: u64,
        new_start: u64,
        len: u64,
    ) -> Result<(), KmmError> {
        let m = self.mm_struct(mm)?;
        let fmt = self.mm_format(m);
        let zero = self.zero_pfn();
        self.for_each_pte(mm, old_start, old_start + len, &mut |ptep, pfn, _| {
            let to = new_start + (self.ptep_address_in(fmt, ptep)? - old_start);
            let newp = self
                .pte_addr(mm, to, true)?
                .ok_or(KmmError::NotMapped { virt: to })?;
            let raw = self.read_pte(fmt, ptep)?;
            self.write_pte(fmt, ptep, 0)?;
            self.write_pte(fmt, newp, raw)?;
            if pfn != zero {
                let page = self.pfn_to_page(pfn)?;
                self.page_remove_rmap(page, ptep)?;
                self.page_add_rmap(page, newp)?;
            }
            Ok(())
        })?;
        self.free_empty_tables(mm, old_start, old_start + len)?;
        self.platform
            .flush_tlb_mm_range(self.mm_asid(mm), old_start, old_start + len);
        Ok(())
    }

    /// `ptep_to_address()`: the virtual address a PTE at `ptep` maps, from
    /// its table page's `index` (the area the table covers).
    pub(crate) fn ptep_address_in(
        &self,
        fmt: &dyn PagingFormat,
        ptep: u64,
    ) -> Result<u64, KmmError> {
        let table = self.phys_to_page(ptep)?;
        let idx = (ptep & (self.page_size() - 1)) / fmt.entry_size();
        Ok((u64::from(table.index()) << fmt.shift(1)) + (idx << fmt.shift(0)))
    }

    /// `free_pgtables()` + `pgd_free()` at exit: every user page-table page
    /// of `mm` (which must map nothing any more) and the root.
    pub fn mm_pgd_free(&self, mm: u64) -> Result<(), KmmError> {
        let m = self.mm_struct(mm)?;
        let root = m.pgd.load(Relaxed);
        if root == 0 {
            return Ok(());
        }
        let fmt = self.mm_format(m);
        self.free_empty_tables(mm, 0, m.task_size.load(Relaxed))?;
        // Anything left mapped is a leak the caller made: refuse.
        let first_kernel = self.kernel_pgd_index(fmt, m.task_size.load(Relaxed));
        for idx in 0..first_kernel {
            if read_entry(&self.mem, fmt, root, idx)? != 0 {
                return Err(KmmError::InvalidArgument {
                    what: "pgd_free of a page table that still maps user pages",
                });
            }
        }
        m.pgd.store(0, Relaxed);
        self.free_pt_page(mm, root)
    }

    /// Every user page `mm` maps, as `(address, pfn, flags)`, in address
    /// order (for `/proc/PID/smaps` and checks).
    pub fn for_each_user_pte(
        &self,
        mm: u64,
        start: u64,
        end: u64,
        f: &mut dyn FnMut(u64, u64, PteFlags),
    ) -> Result<(), KmmError> {
        let m = self.mm_struct(mm)?;
        let fmt = self.mm_format(m);
        self.for_each_pte(mm, start, end, &mut |ptep, pfn, flags| {
            let addr = self.ptep_address_in(fmt, ptep)?;
            f(addr, pfn, flags);
            Ok(())
        })
    }
}

impl<P: Platform> Kmm<P> {
    /// `access_error()`: may `access` touch a VMA with `flags`?
    pub fn vma_access_ok(flags: VmaFlags, access: FaultAccess) -> bool {
        match access {
            FaultAccess::Write => flags.contains(VmaFlags::VM_WRITE),
            FaultAccess::Exec => flags.contains(VmaFlags::VM_EXEC),
            FaultAccess::Read => {
                flags.intersects(VmaFlags::VM_READ | VmaFlags::VM_WRITE | VmaFlags::VM_EXEC)
            }
        }
    }

    /// `handle_pte_fault()`: the fault at `addr`, which lies inside `vma`
    /// and which `access` may make, on behalf of `task` (for its fault
    /// counters). The caller holds `mmap_lock`.
    pub fn handle_vma_fault(
        &self,
        task: u64,
        mm: u64,
        vma: u64,
        addr: u64,
        access: FaultAccess,
    ) -> Result<FaultResult, KmmError> {
        let m = self.mm_struct(mm)?;
        let fmt = self.mm_format(m);
        let v = self.vm_area(vma)?;
        let vflags = VmaFlags::from_bits_retain(v.vm_flags.load(Relaxed));
        let prot = PteFlags::from_bits_retain(v.vm_page_prot.load(Relaxed));
        let ps = self.page_size();
        let addr = addr & !(ps - 1);
        let ptep = self
            .pte_addr(mm, addr, true)?
            .ok_or(KmmError::NotMapped { virt: addr })?;
        let raw = self.read_pte(fmt, ptep)?;
        let write = access == FaultAccess::Write;
        let file = v.vm_file.load(Relaxed);
        let result = match fmt.decode(raw, 0) {
            Entry::Leaf { phys, flags } => {
                let pfn = phys >> self.page_shift;
                if write && !flags.pte_write() {
                    self.do_wp_page(mm, fmt, ptep, addr, pfn, flags, vflags, prot)?
                } else {
                    // Spurious (a stale TLB entry): mark young, and dirty
                    // for a write, as the hardware would.
                    let mut f = flags | PteFlags::ACCESSED;
                    if write {
                        f |= PteFlags::DIRTY;
                    }
                    self.write_pte(fmt, ptep, self.encode_pte(fmt, pfn, f)?)?;
                    self.platform
                        .flush_tlb_mm_range(self.mm_asid(mm), addr, addr + ps);
                    FaultResult::Minor
                }
            }
            _ if file == 0 => self.do_anonymous_page(mm, fmt, ptep, write, prot)?,
            _ => {
                let pgoff = v.vm_pgoff.load(Relaxed) + (addr - v.vm_start.load(Relaxed)) / ps;
                if write && !vflags.contains(VmaFlags::VM_SHARED) {
                    self.do_cow_fault(mm, fmt, ptep, file, pgoff, prot)?
                } else {
                    self.do_file_fault(mm, vma, fmt, ptep, addr, file, pgoff, write, prot)?
                }
            }
        };
        self.memory.pgfault.fetch_add(1, Relaxed);
        if let Ok(t) = self.mem.ram_ref::<crate::TaskStruct>(task) {
            match result {
                FaultResult::Major => {
                    t.maj_flt.fetch_add(1, Relaxed);
                    self.memory.pgmajfault.fetch_add(1, Relaxed);
                }
                FaultResult::Minor => {
                    t.min_flt.fetch_add(1, Relaxed);
                }
                _ => {}
            }
        }
        Ok(result)
    }

    /// `do_anonymous_page()`: a read maps the shared zero page read-only; a
    /// write maps a new zeroed page.
    fn do_anonymous_page(
        &self,
        mm: u64,
        fmt: &dyn PagingFormat,
        ptep: u64,
        write: bool,
        prot: PteFlags,
    ) -> Result<FaultResult, KmmError> {
        if !write {
            let raw = self.encode_pte(
                fmt,
                self.zero_pfn(),
                (prot | PteFlags::ACCESSED) - PteFlags::WRITABLE,
            )?;
            self.write_pte(fmt, ptep, raw)?;
            return Ok(FaultResult::Minor);
        }
        let page = self.alloc_pages(GfpFlags::GFP_HIGHUSER | GfpFlags::__GFP_ZERO, 0)?;
        page.set_mapping(PAGE_MAPPING_ANON);
        let flags = prot | PteFlags::WRITABLE | PteFlags::DIRTY | PteFlags::ACCESSED;
        if let Err(e) = self.set_pte_page(mm, fmt, ptep, page, flags) {
            page.set_mapping(0);
            self.__free_pages(page, 0)?;
            return Err(e);
        }
        Ok(FaultResult::Minor)
    }

    /// `do_wp_page()`: a write to a present, write-protected PTE of a
    /// writable VMA. A shared mapping just becomes writable (and its page
    /// dirty); a private one reuses an anonymous page only it maps, else
    /// copies the page (copy-on-write).
    #[allow(clippy::too_many_arguments)] // the PTE, what it maps, the VMA's flags
    fn do_wp_page(
        &self,
        mm: u64,
        fmt: &dyn PagingFormat,
        ptep: u64,
        addr: u64,
        pfn: u64,
        flags: PteFlags,
        vflags: VmaFlags,
        prot: PteFlags,
    ) -> Result<FaultResult, KmmError> {
        let ps = self.page_size();
        let asid = self.mm_asid(mm);
        let zero = self.zero_pfn();
        let writable = flags | PteFlags::WRITABLE | PteFlags::DIRTY | PteFlags::ACCESSED;
        if vflags.contains(VmaFlags::VM_SHARED) && pfn != zero {
            self.write_pte(fmt, ptep, self.encode_pte(fmt, pfn, writable)?)?;
            self.set_page_dirty(pfn)?;
            self.platform.flush_tlb_mm_range(asid, addr, addr + ps);
            return Ok(FaultResult::Minor);
        }
        if pfn != zero {
            let page = self.pfn_to_page(pfn)?;
            if page.mapping() == PAGE_MAPPING_ANON
                && page.page_mapcount() == 1
                && page.page_count() == 1
            {
                // wp_page_reuse(): nobody else can see it.
                self.write_pte(fmt, ptep, self.encode_pte(fmt, pfn, writable)?)?;
                self.platform.flush_tlb_mm_range(asid, addr, addr + ps);
                return Ok(FaultResult::Minor);
            }
        }
        // wp_page_copy(): a private copy for this PTE.
        let new = self.alloc_pages(GfpFlags::GFP_HIGHUSER, 0)?;
        let new_pfn = self.page_to_pfn(new)?;
        self.mem
            .copy(self.pfn_phys(new_pfn), self.pfn_phys(pfn), ps as usize)?;
        new.set_mapping(PAGE_MAPPING_ANON);
        self.clear_pte_page(mm, fmt, ptep, pfn, flags - PteFlags::DIRTY)?;
        let f = prot | PteFlags::WRITABLE | PteFlags::DIRTY | PteFlags::ACCESSED;
        self.set_pte_page(mm, fmt, ptep, new, f)?;
        self.memory.cow.fetch_add(1, Relaxed);
        self.platform.flush_tlb_mm_range(asid, addr, addr + ps);
        Ok(FaultResult::Minor)
    }

    /// `do_cow_fault()`: a write to a private file mapping with no page yet:
    /// the file's page, copied into a new anonymous page.
    fn do_cow_fault(
        &self,
        mm: u64,
        fmt: &dyn PagingFormat,
        ptep: u64,
        mapping: u64,
        pgoff: u64,
        prot: PteFlags,
    ) -> Result<FaultResult, KmmError> {
        let (src, major) = match self.read_cache_page(mapping, pgoff) {
            Ok(r) => r,
            Err(KmmError::InvalidAddress { .. }) => return Ok(FaultResult::Bus),
            Err(e) => return Err(e),
        };
        let src_page = self.pfn_to_page(src)?;
        let new = match self.alloc_pages(GfpFlags::GFP_HIGHUSER, 0) {
            Ok(p) => p,
            Err(e) => {
                self.put_page(src_page)?;
                return Err(e);
            }
        };
        let new_pfn = self.page_to_pfn(new)?;
        let ps = self.page_size() as usize;
        self.mem
            .copy(self.pfn_phys(new_pfn), self.pfn_phys(src), ps)?;
        self.put_page(src_page)?;
        new.set_mapping(PAGE_MAPPING_ANON);
        let f = prot | PteFlags::WRITABLE | PteFlags::DIRTY | PteFlags::ACCESSED;
        self.set_pte_page(mm, fmt, ptep, new, f)?;
        self.memory.cow.fetch_add(1, Relaxed);
        Ok(if major {
            FaultResult::Major
        } else {
            FaultResult::Minor
        })
    }

    /// `do_read_fault()` / `do_shared_fault()`: the page-cache page mapped
    /// with the VMA's protection (a shared write makes it dirty). A read
    /// also maps the cached pages around it (`do_fault_around`), after
    /// reading the window from the file on a miss (synchronous readahead).
    #[allow(clippy::too_many_arguments)] // the PTE, the VMA, the file position
    fn do_file_fault(
        &self,
        mm: u64,
        vma: u64,
        fmt: &dyn PagingFormat,
        ptep: u64,
        addr: u64,
        mapping: u64,
        pgoff: u64,
        write: bool,
        prot: PteFlags,
    ) -> Result<FaultResult, KmmError> {
        let (pfn, major) = match self.read_cache_page(mapping, pgoff) {
            Ok(r) => r,
            Err(KmmError::InvalidAddress { .. }) => return Ok(FaultResult::Bus),
            Err(e) => return Err(e),
        };
        let page = self.pfn_to_page(pfn)?;
        let mut flags = prot | PteFlags::ACCESSED;
        if write {
            flags |= PteFlags::WRITABLE | PteFlags::DIRTY;
        }
        if let Err(e) = self.set_pte_page(mm, fmt, ptep, page, flags) {
            self.put_page(page)?;
            return Err(e);
        }
        if write {
            self.set_page_dirty(pfn)?;
        } else {
            self.fault_around(mm, vma, fmt, addr, mapping, pgoff, major, prot)?;
        }
        Ok(if major {
            FaultResult::Major
        } else {
            FaultResult::Minor
        })
    }

    /// `do_fault_around()`: maps the page-cache pages of the
    /// [`FAULT_AROUND_BYTES`] window around `addr` that are inside the VMA
    /// and not mapped yet; after a miss (`readahead`) the window's pages are
    /// read from the file first.
    #[allow(clippy::too_many_arguments)] // the fault's position and the VMA
    fn fault_around(
        &self,
        mm: u64,
        vma: u64,
        fmt: &dyn PagingFormat,
        addr: u64,
        mapping: u64,
        pgoff: u64,
        readahead: bool,
        prot: PteFlags,
    ) -> Result<(), KmmError> {
        let v = self.vm_area(vma)?;
        let ps = self.page_size();
        let win = FAULT_AROUND_BYTES.max(ps);
        let start = (addr & !(win - 1)).max(v.vm_start.load(Relaxed));
        let end = ((addr & !(win - 1)) + win).min(v.vm_end.load(Relaxed));
        let size = self.address_space(mapping)?.size.load(Relaxed);
        let mut a = start;
        while a < end {
            if a != addr {
                let idx = pgoff as i64 + (a as i64 - addr as i64) / ps as i64;
                if idx >= 0 && (idx as u64) * ps < size {
                    let idx = idx as u64;
                    let cached = if readahead {
                        self.read_cache_page(mapping, idx).ok().map(|(p, _)| p)
                    } else {
                        self.find_get_page(mapping, idx)?
                    };
                    if let Some(pfn) = cached {
                        let page = self.pfn_to_page(pfn)?;
                        let p = self
                            .pte_addr(mm, a, true)?
                            .ok_or(KmmError::NotMapped { virt: a })?;
                        if self.read_pte(fmt, p)? == 0 {
                            let f = (prot | PteFlags::ACCESSED) - PteFlags::WRITABLE;
                            self.set_pte_page(mm, fmt, p, page, f)?;
                        } else {
                            self.put_page(page)?;
                        }
                    }
                }
            }
            a += ps;
        }
        Ok(())
    }

    /// `copy_page_range()` for `fork`: the present PTEs of `[start, end)` in
    /// `src` are copied into `dst`, each page gaining a reference and a
    /// reverse-map slot. In a private writable mapping both copies become
    /// write-protected (copy-on-write); shared mappings keep their
    /// permissions. The parent's TLB range is flushed.
    pub fn copy_page_range(
        &self,
        dst: u64,
        src: u64,
        start: u64,
        end: u64,
        vflags: VmaFlags,
    ) -> Result<(), KmmError> {
        let m = self.mm_struct(src)?;
        let fmt = self.mm_format(m);
        let zero = self.zero_pfn();
        let cow = !vflags.contains(VmaFlags::VM_SHARED) && vflags.contains(VmaFlags::VM_MAYWRITE);
        let mut any_wp = false;
        // The child's PTE table of the current span, walked to once per
        // table rather than once per page.
        let span_shift = fmt.shift(1);
        let mut cur: (u64, u64) = (u64::MAX, 0);
        self.for_each_pte(src, start, end, &mut |ptep, pfn, flags| {
            let addr = self.ptep_address_in(fmt, ptep)?;
            let mut f = flags;
            if cow && f.pte_write() {
                f -= PteFlags::WRITABLE;
                self.write_pte(fmt, ptep, self.encode_pte(fmt, pfn, f)?)?;
                any_wp = true;
            }
            if cur.0 != addr >> span_shift {
                let table = self
                    .pte_table(dst, addr, true)?
                    .ok_or(KmmError::NotMapped { virt: addr })?;
                cur = (addr >> span_shift, table);
            }
            let dptep = cur.1 + Self::pt_index(fmt, addr, 0) as u64 * fmt.entry_size();
            if pfn == zero {
                return self.write_pte(fmt, dptep, self.encode_pte(fmt, pfn, f)?);
            }
            let page = self.pfn_to_page(pfn)?;
            self.get_page(page)?;
            self.set_pte_page(dst, fmt, dptep, page, f)
        })?;
        if any_wp {
            self.platform
                .flush_tlb_mm_range(self.mm_asid(src), start, end);
        }
        Ok(())
    }

    /// `vm_normal_page()` counts: faults, major faults and copy-on-write
    /// copies since boot (`pgfault`, `pgmajfault` in `/proc/vmstat`).
    pub fn fault_counts(&self) -> (u64, u64, u64) {
        (
            self.memory.pgfault.load(Relaxed),
            self.memory.pgmajfault.load(Relaxed),
            self.memory.cow.load(Relaxed),
        )
    }

    /// `NR_ANON_MAPPED` (`AnonPages:`).
    pub fn nr_anon_mapped(&self) -> u64 {
        self.memory.nr_anon.load(Relaxed)
    }
}

/// The page side of the VMA operations ([`crate::mmap::MmOps`]): what
/// `munmap`, `mprotect`, `mremap`, `MAP_POPULATE`/`mlock` and the life of a
/// file-backed VMA do to page tables, pages and file references.
pub struct PageTableOps<'k, P: Platform>(pub &'k Kmm<P>);

impl<P: Platform> crate::mmap::MmOps for PageTableOps<'_, P> {
    fn zap_range(&self, mm: u64, _vma: u64, start: u64, end: u64) -> Result<(), KmmError> {
        self.0.zap_page_range(mm, start, end)
    }

    fn change_protection(
        &self,
        mm: u64,
        vma: u64,
        start: u64,
        end: u64,
        prot: PteFlags,
    ) -> Result<(), KmmError> {
        self.0.change_protection(mm, vma, start, end, prot)
    }

    fn move_page_tables(
        &self,
        mm: u64,
        _old_vma: u64,
        old_start: u64,
        _new_vma: u64,
        new_start: u64,
        len: u64,
    ) -> Result<(), KmmError> {
        self.0.move_page_tables(mm, old_start, new_start, len)
    }

    fn populate(&self, mm: u64, vma: u64, start: u64, end: u64) -> Result<(), KmmError> {
        self.0.populate_vma_page_range(mm, vma, start, end)
    }

    fn vma_opened(&self, _mm: u64, vma: u64) {
        if let Ok(v) = self.0.vm_area(vma) {
            let file = v.vm_file.load(Relaxed);
            if file != 0 {
                let _ = self.0.filemap_get(file);
            }
        }
    }

    fn vma_closed(&self, _mm: u64, vma: u64) {
        if let Ok(v) = self.0.vm_area(vma) {
            let file = v.vm_file.load(Relaxed);
            if file != 0 {
                let _ = self.0.filemap_put(file);
            }
        }
    }
}

impl<P: Platform> Kmm<P> {
    /// `handle_mm_fault()` with the VMA lookup of `do_user_addr_fault()`: the
    /// page fault of `task` at user address `addr` of `mm`. No VMA, or an
    /// access the VMA forbids, is a SIGSEGV (`SEGV_MAPERR`, `SEGV_ACCERR`);
    /// an address just below a `VM_GROWSDOWN` VMA grows the stack. The
    /// caller holds `mmap_lock`.
    pub fn handle_mm_fault(
        &self,
        task: u64,
        mm: u64,
        addr: u64,
        access: FaultAccess,
    ) -> Result<FaultResult, KmmError> {
        let Some(vma) = self.find_vma(mm, addr)? else {
            return Ok(FaultResult::Segv(SegvCode::MapErr));
        };
        let v = self.vm_area(vma)?;
        let flags = VmaFlags::from_bits_retain(v.vm_flags.load(Relaxed));
        if addr < v.vm_start.load(Relaxed)
            && (!flags.contains(VmaFlags::VM_GROWSDOWN)
                || self.expand_stack(mm, vma, addr).is_err())
        {
            return Ok(FaultResult::Segv(SegvCode::MapErr));
        }
        if !Self::vma_access_ok(flags, access) {
            return Ok(FaultResult::Segv(SegvCode::AccErr));
        }
        self.handle_vma_fault(task, mm, vma, addr, access)
    }

    /// `populate_vma_page_range()`: faults in every page of `[start, end)`
    /// of `vma` (writing, to break copy-on-write, in a private writable
    /// mapping).
    pub fn populate_vma_page_range(
        &self,
        mm: u64,
        vma: u64,
        start: u64,
        end: u64,
    ) -> Result<(), KmmError> {
        let v = self.vm_area(vma)?;
        let flags = VmaFlags::from_bits_retain(v.vm_flags.load(Relaxed));
        let write = flags.contains(VmaFlags::VM_WRITE) && !flags.contains(VmaFlags::VM_SHARED);
        let access = if write {
            FaultAccess::Write
        } else {
            FaultAccess::Read
        };
        if !Self::vma_access_ok(flags, access) {
            return Ok(());
        }
        let ps = self.page_size();
        let mut a = start & !(ps - 1);
        while a < end {
            let present = self.follow_pte(mm, a)?;
            let needs = match present {
                None => true,
                Some((_, f)) => write && !f.pte_write(),
            };
            if needs {
                if let FaultResult::Bus = self.handle_vma_fault(0, mm, vma, a, access)? {
                    break;
                }
            }
            a += ps;
        }
        Ok(())
    }

    /// `dup_mm()` / `dup_mmap()` for `fork`: a new address space with a copy
    /// of every VMA of `old` but the `VM_DONTCOPY` ones (without
    /// `VM_LOCKED`: locks are not inherited), and of their page tables
    /// (copy-on-write for private writable mappings). Returns the new mm.
    pub fn dup_mm(&self, old: u64) -> Result<u64, KmmError> {
        let o = self.mm_struct(old)?;
        let new = self.mm_alloc(o.task_size.load(Relaxed), o.mmap_base.load(Relaxed))?;
        let n = self.mm_struct(new)?;
        let copy = |d: &AtomicU64, s: &AtomicU64| d.store(s.load(Relaxed), Relaxed);
        copy(&n.start_code, &o.start_code);
        copy(&n.end_code, &o.end_code);
        copy(&n.start_data, &o.start_data);
        copy(&n.end_data, &o.end_data);
        copy(&n.start_brk, &o.start_brk);
        copy(&n.brk, &o.brk);
        copy(&n.start_stack, &o.start_stack);
        copy(&n.arg_start, &o.arg_start);
        copy(&n.arg_end, &o.arg_end);
        copy(&n.env_start, &o.env_start);
        copy(&n.env_end, &o.env_end);
        copy(&n.def_flags, &o.def_flags);
        if let Err(e) = self.mm_pgd_alloc(new) {
            self.mm_free(new)?;
            return Err(e);
        }
        let r = self.dup_mmap(new, old);
        if let Err(e) = r {
            self.exit_mmap(new)?;
            self.mm_pgd_free(new)?;
            self.mm_free(new)?;
            return Err(e);
        }
        Ok(new)
    }

    fn dup_mmap(&self, new: u64, old: u64) -> Result<(), KmmError> {
        let ops = PageTableOps(self);
        let mut vma = self.mm_struct(old)?.mmap.load(Relaxed);
        while vma != 0 {
            let v = self.vm_area(vma)?;
            let next = v.vm_next.load(Relaxed);
            let flags = VmaFlags::from_bits_retain(v.vm_flags.load(Relaxed));
            if !flags.contains(VmaFlags::VM_DONTCOPY) {
                let (start, end) = (v.vm_start.load(Relaxed), v.vm_end.load(Relaxed));
                let nv = self.vm_area_alloc(new)?;
                let c = self.vm_area(nv)?;
                c.vm_start.store(start, Relaxed);
                c.vm_end.store(end, Relaxed);
                c.vm_flags
                    .store((flags - VmaFlags::VM_LOCKED).bits(), Relaxed);
                c.vm_pgoff.store(v.vm_pgoff.load(Relaxed), Relaxed);
                c.vm_file.store(v.vm_file.load(Relaxed), Relaxed);
                c.anon_vma.store(v.anon_vma.load(Relaxed), Relaxed);
                if let Err(e) = self.insert_vm_struct(new, nv, &ops) {
                    self.vm_area_free(nv)?;
                    return Err(e);
                }
                self.copy_page_range(new, old, start, end, flags)?;
            }
            vma = next;
        }
        Ok(())
    }

    /// `exit_mmap()`: every VMA of `mm` zapped and freed (file references
    /// dropped). The page tables are freed by [`Self::mm_pgd_free`], the
    /// `mm_struct` by [`Self::mm_free`].
    pub fn exit_mmap(&self, mm: u64) -> Result<(), KmmError> {
        self.mm_free_vmas(mm, &PageTableOps(self))
    }
}
