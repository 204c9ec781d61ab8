//! The page-table engine (`mm/pgtable-generic.c`, `include/linux/pgtable.h`,
//! `mm/memory.c`'s `__pte_alloc`/`free_pgtables`).
//!
//! Page tables are real tables in simulated RAM, in the hardware's format:
//! table pages come from the page allocator (zeroed, `GFP_KERNEL`, as
//! `pgd_alloc`/`pte_alloc_one` take them) and are counted in
//! [`Kmm::nr_page_table_pages`] (`NR_PAGETABLE`, `PageTables:` in
//! `/proc/meminfo`).
//!
//! One generic walker serves every format, after ArceOS's
//! `page_table_multiarch`: a format is a small [`PagingFormat`] description
//! (levels, entries per table, entry size, shift per level, which levels may
//! hold large pages, encode/decode of an entry). The formats themselves are
//! architecture facts and live under [`crate::arch`]
//! ([`crate::arch::pgtable_x86`], [`crate::arch::pgtable_x86_64`]).
//!
//! Levels are numbered from the leaf: level 0 holds PTEs, level 1 PMDs,
//! level 2 PUDs, level 3 P4Ds (five-level only); the top level is the PGD.
//! Folded levels (the PMD of two-level x86, the PUD of PAE, the P4D of
//! four-level x86_64) do not exist in the tables, as in Linux.
//!
//! # Invariants
//! - Every non-root table reachable from the root holds at least one entry:
//!   [`PageTable::unmap`] frees a table as soon as its last entry goes
//!   (Linux frees them later, in `free_pgtables`; freeing eagerly keeps
//!   `PageTables` exact).
//! - The tables of one [`PageTable`] are changed only through `&mut` methods
//!   (Linux: under `mm->page_table_lock`); walks take `&self`.

use crate::arch::pgtable_x86_64::{X86_64Paging, X86_64_4LEVEL, X86_64_5LEVEL};
use crate::error::KmmError;
use crate::gfp::GfpFlags;
use crate::mm::Kmm;
use crate::platform::Platform;
use crate::ram::PhysMem;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Deepest paging hierarchy any format has (five-level x86_64).
pub const MAX_LEVELS: usize = 5;

bitflags::bitflags! {
    /// The protection and status bits of a page-table entry (the flag part
    /// of `pte_t`, `pgprot_t`). Bit positions are x86's (`_PAGE_BIT_*`), so
    /// x86 formats store them as they are; a format without a bit (NX on
    /// two-level x86) drops it, as Linux's `_PAGE_NX` is 0 there.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct PteFlags: u64 {
        /// `_PAGE_PRESENT`: the entry maps something.
        const PRESENT = 1 << 0;
        /// `_PAGE_RW`: writes allowed.
        const WRITABLE = 1 << 1;
        /// `_PAGE_USER`: user mode may access.
        const USER = 1 << 2;
        /// `_PAGE_PWT`: write-through caching.
        const WRITE_THROUGH = 1 << 3;
        /// `_PAGE_PCD`: caching disabled (`ioremap`'s uncached mappings).
        const CACHE_DISABLE = 1 << 4;
        /// `_PAGE_ACCESSED`: set by the hardware walk ("young").
        const ACCESSED = 1 << 5;
        /// `_PAGE_DIRTY`: set by the hardware on a write.
        const DIRTY = 1 << 6;
        /// `_PAGE_GLOBAL`: the TLB keeps the entry across address-space switches.
        const GLOBAL = 1 << 8;
        /// `_PAGE_NX`: instruction fetches fault.
        const NO_EXEC = 1 << 63;
    }
}

impl PteFlags {
    /// `pte_present()`.
    pub const fn pte_present(self) -> bool {
        self.contains(Self::PRESENT)
    }
    /// `pte_write()`.
    pub const fn pte_write(self) -> bool {
        self.contains(Self::WRITABLE)
    }
    /// `pte_young()`: accessed since the bit was last cleared.
    pub const fn pte_young(self) -> bool {
        self.contains(Self::ACCESSED)
    }
    /// `pte_dirty()`.
    pub const fn pte_dirty(self) -> bool {
        self.contains(Self::DIRTY)
    }
    /// `pte_exec()`.
    pub const fn pte_exec(self) -> bool {
        !self.contains(Self::NO_EXEC)
    }
    /// `pte_global()` (x86's `pte_global`).
    pub const fn pte_global(self) -> bool {
        self.contains(Self::GLOBAL)
    }
    /// `pte_mkyoung()`.
    pub const fn pte_mkyoung(self) -> Self {
        self.union(Self::ACCESSED)
    }
    /// `pte_mkold()`.
    pub const fn pte_mkold(self) -> Self {
        self.difference(Self::ACCESSED)
    }
    /// `pte_mkdirty()`.
    pub const fn pte_mkdirty(self) -> Self {
        self.union(Self::DIRTY)
    }
    /// `pte_mkclean()`.
    pub const fn pte_mkclean(self) -> Self {
        self.difference(Self::DIRTY)
    }
    /// `pte_mkwrite()`.
    pub const fn pte_mkwrite(self) -> Self {
        self.union(Self::WRITABLE)
    }
    /// `pte_wrprotect()`.
    pub const fn pte_wrprotect(self) -> Self {
        self.difference(Self::WRITABLE)
    }
}

/// One decoded page-table entry (`pte_t`/`pmd_t`/... after `pte_none`,
/// `pmd_leaf`, `pmd_page_vaddr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// `pte_none()`: nothing here.
    None,
    /// A pointer to the next-level table at this physical address.
    Table(u64),
    /// A leaf: a page (level 0) or a large page (`pmd_leaf`/`pud_leaf`).
    Leaf {
        /// Physical address of the mapped page.
        phys: u64,
        /// Its flags ([`PteFlags::PRESENT`] always set).
        flags: PteFlags,
    },
}

/// A page-table format: what ArceOS calls paging metadata plus entry format
/// (Linux: `asm/pgtable_types.h`, `pgtable-2level.h`, `pgtable-3level.h`,
/// `pgtable_64.h`). Implemented under [`crate::arch`].
pub trait PagingFormat: Sync + core::fmt::Debug {
    /// Name (`"x86 2-level"`, `"x86_64 4-level"`, ...).
    fn name(&self) -> &'static str;
    /// Number of levels (`CONFIG_PGTABLE_LEVELS`).
    fn levels(&self) -> usize;
    /// Bytes per entry (4 or 8).
    fn entry_size(&self) -> u64;
    /// Entries in a table of `level` (`PTRS_PER_PTE`, `PTRS_PER_PMD`, ...,
    /// `PTRS_PER_PGD`); a power of two.
    fn entries(&self, level: usize) -> usize;
    /// Virtual-address shift of `level` (`PAGE_SHIFT`, `PMD_SHIFT`, ...,
    /// `PGDIR_SHIFT`).
    fn shift(&self, level: usize) -> u32;
    /// True when an entry of `level` (> 0) may map a large page.
    fn large_at(&self, level: usize) -> bool;
    /// Bits of a virtual address (`__VIRTUAL_MASK_SHIFT + 1`: 32, 48, 57).
    fn va_bits(&self) -> u32;
    /// True when addresses are sign-extended from bit `va_bits - 1`
    /// (x86_64 canonical form); otherwise they must be below `1 << va_bits`.
    fn sign_extended(&self) -> bool;
    /// The flags this format can store.
    fn supported_flags(&self) -> PteFlags;
    /// Linux's name of `level` (`"pte"`, `"pmd"`, `"pud"`, `"p4d"`, `"pgd"`).
    fn level_name(&self, level: usize) -> &'static str;
    /// Encodes a leaf at `level` (`pfn_pte`, `pfn_pmd` with `_PAGE_PSE`), or
    /// `None` when `phys` does not fit the frame field.
    fn encode_leaf(&self, phys: u64, flags: PteFlags, level: usize) -> Option<u64>;
    /// Encodes a pointer to a table at `table` (`pmd_populate`, `pud_populate`,
    /// ...) stored at `level`, or `None` when `table` does not fit.
    fn encode_table(&self, table: u64, level: usize) -> Option<u64>;
    /// Decodes a raw entry of `level`.
    fn decode(&self, raw: u64, level: usize) -> Entry;
    /// What a hardware walk writes back into an entry of `level` it used:
    /// the accessed bit (where the format has one there), and for the leaf of
    /// a write, the dirty bit.
    fn mark(&self, raw: u64, level: usize, leaf: bool, write: bool) -> u64;
}

/// What a virtual address translates to (`follow_pte`'s answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The physical address of the byte at the virtual address.
    pub phys: u64,
    /// Size of the page that maps it (4 KiB or a large page).
    pub size: u64,
    /// The leaf entry's flags.
    pub flags: PteFlags,
    /// Level of the leaf entry (0 = PTE, 1 = PMD, 2 = PUD).
    pub level: usize,
}

/// One mapping: a leaf entry and where it sits (what `walk_page_range`
/// callbacks see).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First virtual address of the page.
    pub virt: u64,
    /// Physical address of the page.
    pub phys: u64,
    /// Page size in bytes.
    pub size: u64,
    /// The leaf entry's flags.
    pub flags: PteFlags,
    /// Level of the leaf entry.
    pub level: usize,
}

/// A page table: the root (`mm->pgd`, the value CR3 holds) and its format.
/// Made by [`Kmm::pgd_alloc`], freed by [`PageTable::destroy`]
/// ([`Kmm::pgd_free`]). Not `Clone`: one owner changes the tables.
#[derive(Debug)]
pub struct PageTable {
    pub(crate) root: u64,
    pub(crate) fmt: &'static dyn PagingFormat,
}

/// The path of a walk: the table and index used at each level.
#[derive(Clone, Copy)]
struct Path {
    table: [u64; MAX_LEVELS],
    idx: [usize; MAX_LEVELS],
}

/// What a walk saw on its way down: the path, and the entry it read at
/// each level (filled from the top level down to where the walk stopped).
struct Trail {
    path: Path,
    raw: [u64; MAX_LEVELS],
}

impl Trail {
    #[inline(always)]
    fn new() -> Trail {
        Trail {
            path: Path {
                table: [0; MAX_LEVELS],
                idx: [0; MAX_LEVELS],
            },
            raw: [0; MAX_LEVELS],
        }
    }
}

/// Runs `$body` with `$f` bound to the page table's format `$fmt`: as its
/// concrete type when it is one of the x86_64 formats, so that the compiler
/// inlines `decode`, `shift`, `entries` and `mark` into the walk (one
/// generic walker, instantiated for them), else as the trait object.
///
/// A format is recognised by its address and size: a non-empty object at the
/// address of one of these statics can only be that static.
macro_rules! with_format {
    ($fmt:expr, $f:ident => $body:expr) => {{
        let fmt: &'static dyn PagingFormat = $fmt;
        let sized = core::mem::size_of_val(fmt) == core::mem::size_of::<X86_64Paging>();
        if sized && core::ptr::addr_eq(fmt, &X86_64_4LEVEL) {
            let $f: &X86_64Paging = &X86_64_4LEVEL;
            $body
        } else if sized && core::ptr::addr_eq(fmt, &X86_64_5LEVEL) {
            let $f: &X86_64Paging = &X86_64_5LEVEL;
            $body
        } else {
            let $f = fmt;
            $body
        }
    }};
}

/// `PageTable::is_canonical` for a format given as a type.
#[inline(always)]
fn canonical_in<F: PagingFormat + ?Sized>(fmt: &F, virt: u64) -> bool {
    let bits = fmt.va_bits();
    if bits >= 64 {
        return true;
    }
    if fmt.sign_extended() {
        let shift = 64 - bits;
        (((virt << shift) as i64) >> shift) as u64 == virt
    } else {
        virt >> bits == 0
    }
}

/// The entry at `idx` of the table at `table`, entries being `es` bytes:
/// one bounds check, the load inlined.
#[inline(always)]
pub(crate) fn read_entry(phys: &PhysMem, es: u64, table: u64, idx: usize) -> Result<u64, KmmError> {
    let at = table + idx as u64 * es;
    if es == 4 {
        let mut b = [0u8; 4];
        phys.read(at, &mut b)?;
        Ok(u32::from_le_bytes(b) as u64)
    } else {
        phys.load_u64(at)
    }
}

/// Stores `raw` as the entry at `idx` of the table at `table`.
#[inline(always)]
pub(crate) fn write_entry(
    phys: &PhysMem,
    es: u64,
    table: u64,
    idx: usize,
    raw: u64,
) -> Result<(), KmmError> {
    let at = table + idx as u64 * es;
    if es == 4 {
        phys.write(at, &(raw as u32).to_le_bytes())
    } else {
        phys.store_u64(at, raw)
    }
}

/// The walk from the table at `root` down to the leaf covering `virt` (a
/// canonical address): calls `seen(level, table, idx, raw, leaf)` for every
/// entry it reads, top level first, and returns the leaf's level and raw
/// entry, or `None` when a level holds no entry.
#[inline(always)]
fn descend<F: PagingFormat + ?Sized, P: Platform>(
    fmt: &F,
    root: u64,
    k: &Kmm<P>,
    virt: u64,
    mut seen: impl FnMut(usize, u64, usize, u64, bool),
) -> Result<Option<(usize, u64)>, KmmError> {
    let phys = k.phys();
    let es = fmt.entry_size();
    let mut table = root;
    for level in (0..fmt.levels()).rev() {
        let idx = ((virt >> fmt.shift(level)) as usize) & (fmt.entries(level) - 1);
        let raw = read_entry(phys, es, table, idx)?;
        match fmt.decode(raw, level) {
            Entry::None => return Ok(None),
            Entry::Table(next) if level > 0 => {
                seen(level, table, idx, raw, false);
                table = next;
            }
            Entry::Table(_) => return Ok(None),
            Entry::Leaf { .. } => {
                seen(level, table, idx, raw, true);
                return Ok(Some((level, raw)));
            }
        }
    }
    Ok(None)
}

/// [`descend`], recording the path and the entries in `trail`.
#[inline(always)]
fn descend_trail<F: PagingFormat + ?Sized, P: Platform>(
    fmt: &F,
    root: u64,
    k: &Kmm<P>,
    virt: u64,
    trail: &mut Trail,
) -> Result<Option<(usize, u64)>, KmmError> {
    descend(fmt, root, k, virt, |level, table, idx, raw, _| {
        trail.path.table[level] = table;
        trail.path.idx[level] = idx;
        trail.raw[level] = raw;
    })
}

/// `PageTable::translation` for a format given as a type.
#[inline(always)]
fn translation_in<F: PagingFormat + ?Sized>(
    fmt: &F,
    virt: u64,
    level: usize,
    raw: u64,
) -> Option<Translation> {
    let Entry::Leaf { phys, flags } = fmt.decode(raw, level) else {
        return None;
    };
    let size = 1u64 << fmt.shift(level);
    Some(Translation {
        phys: phys + (virt & (size - 1)),
        size,
        flags,
        level,
    })
}

/// `PageTable::walk` for a format given as a type.
#[inline(always)]
fn walk_in<F: PagingFormat + ?Sized, P: Platform>(
    fmt: &F,
    root: u64,
    k: &Kmm<P>,
    virt: u64,
) -> Option<Translation> {
    if !canonical_in(fmt, virt) {
        return None;
    }
    let (leaf, raw) = descend(fmt, root, k, virt, |_, _, _, _, _| {}).ok()??;
    translation_in(fmt, virt, leaf, raw)
}

/// `PageTable::walk_and_mark` for a format given as a type. The walk down
/// notes whether any entry lacks the bits the walk sets; when none does (a
/// warm table, the common case) it is the whole job: nothing is read again
/// or written.
#[inline(always)]
fn walk_and_mark_in<F: PagingFormat + ?Sized, P: Platform>(
    fmt: &F,
    root: u64,
    k: &Kmm<P>,
    virt: u64,
    write: bool,
) -> Option<Translation> {
    if !canonical_in(fmt, virt) {
        return None;
    }
    let mut unmarked = false;
    let (leaf, raw) = descend(fmt, root, k, virt, |level, _, _, raw, leaf| {
        unmarked |= fmt.mark(raw, level, leaf, write) != raw;
    })
    .ok()??;
    let t = translation_in(fmt, virt, leaf, raw)?;
    if write && !t.flags.pte_write() {
        return None;
    }
    if !unmarked {
        return Some(t);
    }
    mark_in(fmt, root, k, virt, write)
}

/// The marking part of [`walk_and_mark_in`] (a table entry or leaf without
/// its accessed or dirty bit): walks down again recording the path, then,
/// top level first, marks every entry that needs it, as read then.
#[inline(never)]
fn mark_in<F: PagingFormat + ?Sized, P: Platform>(
    fmt: &F,
    root: u64,
    k: &Kmm<P>,
    virt: u64,
    write: bool,
) -> Option<Translation> {
    let mut trail = Trail::new();
    let (leaf, _) = descend_trail(fmt, root, k, virt, &mut trail).ok()??;
    let phys = k.phys();
    let es = fmt.entry_size();
    for level in (leaf..fmt.levels()).rev() {
        let (table, idx) = (trail.path.table[level], trail.path.idx[level]);
        let old = trail.raw[level];
        let new = fmt.mark(old, level, level == leaf, write);
        if new != old {
            write_entry(phys, es, table, idx, new).ok()?;
        }
    }
    let raw = read_entry(phys, es, trail.path.table[leaf], trail.path.idx[leaf]).ok()?;
    translation_in(fmt, virt, leaf, raw)
}

/// `PageTable::pte_table` for a format given as a type: the walk over the
/// levels above the PTEs, reading one entry per level.
#[inline(always)]
fn pte_table_in<F: PagingFormat + ?Sized>(
    fmt: &F,
    root: u64,
    phys: &PhysMem,
    virt: u64,
) -> Result<Option<u64>, KmmError> {
    let es = fmt.entry_size();
    let mut table = root;
    for level in (1..fmt.levels()).rev() {
        let idx = ((virt >> fmt.shift(level)) as usize) & (fmt.entries(level) - 1);
        table = match fmt.decode(read_entry(phys, es, table, idx)?, level) {
            Entry::Table(next) => next,
            Entry::None => return Ok(None),
            Entry::Leaf { .. } => return Err(KmmError::AlreadyMapped { virt }),
        };
    }
    Ok(Some(table))
}

/// `PageTable::set_ptes` for a format given as a type. Returns how many
/// entries were set, and the error that stopped it, if any.
#[inline(always)]
fn set_ptes_in<F: PagingFormat + ?Sized>(
    fmt: &F,
    phys: &PhysMem,
    r: PteRange,
    flags: PteFlags,
    frame: &mut impl FnMut(usize) -> Result<u64, KmmError>,
) -> (usize, Result<(), KmmError>) {
    let flags = (flags | PteFlags::PRESENT) & fmt.supported_flags();
    let page = 1u64 << fmt.shift(0);
    let mut leaf = |j: usize| {
        let p = frame(j)?;
        fmt.encode_leaf(p, flags, 0)
            .ok_or(KmmError::InvalidAddress {
                addr: p,
                what: "physical address beyond the page-table format's reach",
            })
    };
    let taken = |j: usize| KmmError::AlreadyMapped {
        virt: r.virt.wrapping_add(j as u64 * page),
    };
    if r.first + r.count > fmt.entries(0) {
        return (0, Err(r.out_of_table()));
    }
    if fmt.entry_size() == 8 {
        // One bounds check for the run; the entries are plain stores.
        let slots = match phys.ram_slice::<AtomicU64>(r.table + r.first as u64 * 8, r.count) {
            Ok(s) => s,
            Err(e) => return (0, Err(e)),
        };
        for (j, slot) in slots.iter().enumerate() {
            if slot.load(Relaxed) != 0 {
                return (j, Err(taken(j)));
            }
            match leaf(j) {
                Ok(raw) => slot.store(raw.to_le(), Relaxed),
                Err(e) => return (j, Err(e)),
            }
        }
    } else {
        let es = fmt.entry_size();
        for j in 0..r.count {
            let idx = r.first + j;
            let step = read_entry(phys, es, r.table, idx).and_then(|old| {
                if old != 0 {
                    return Err(taken(j));
                }
                write_entry(phys, es, r.table, idx, leaf(j)?)
            });
            if let Err(e) = step {
                return (j, Err(e));
            }
        }
    }
    (r.count, Ok(()))
}

/// A run of entries of one PTE table: `count` entries from index `first`
/// of the table at physical address `table`, the first one mapping `virt`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PteRange {
    /// Physical address of the PTE table.
    pub(crate) table: u64,
    /// Index of the first entry.
    pub(crate) first: usize,
    /// Number of entries.
    pub(crate) count: usize,
    /// Virtual address the first entry maps (for error reports).
    pub(crate) virt: u64,
}

impl PteRange {
    #[cold]
    fn out_of_table(&self) -> KmmError {
        KmmError::InvalidAddress {
            addr: self.virt,
            what: "PTE run past the end of its table",
        }
    }
}

impl<P: Platform> Kmm<P> {
    /// `pgd_alloc()`: a new, empty page table of format `fmt` (take one from
    /// [`crate::Arch::paging_formats`]).
    pub fn pgd_alloc(&self, fmt: &'static dyn PagingFormat) -> Result<PageTable, KmmError> {
        if self.page_size() != 1 << fmt.shift(0) {
            return Err(KmmError::InvalidArgument {
                what: "page-table format does not match PAGE_SIZE",
            });
        }
        let root = alloc_table(self, fmt, fmt.levels() - 1)?;
        Ok(PageTable { root, fmt })
    }

    /// `pgd_free()`: frees every table page of `pt` (not the pages it maps).
    pub fn pgd_free(&self, pt: PageTable) -> Result<(), KmmError> {
        pt.destroy(self)
    }

    /// `global_node_page_state(NR_PAGETABLE)`: pages holding page tables.
    pub fn nr_page_table_pages(&self) -> u64 {
        self.nr_pagetable.load(Relaxed)
    }
}

/// `__pte_alloc` / `__pmd_alloc` / `pgd_alloc`'s page: a zeroed low-memory
/// page, counted in `NR_PAGETABLE`.
fn alloc_table<P: Platform>(
    k: &Kmm<P>,
    fmt: &dyn PagingFormat,
    level: usize,
) -> Result<u64, KmmError> {
    let va = k.get_zeroed_page(GfpFlags::GFP_KERNEL)?;
    let phys = k.__pa(va)?;
    // A table the format cannot point at (a 2-level table above 4 GiB) is
    // unusable: give it back.
    if level + 1 < fmt.levels() && fmt.encode_table(phys, level + 1).is_none() {
        k.free_page(va)?;
        return Err(KmmError::InvalidAddress {
            addr: phys,
            what: "page-table page the format cannot point at",
        });
    }
    k.nr_pagetable.fetch_add(1, Relaxed);
    Ok(phys)
}

/// `pte_free` / `pmd_free` / `pgd_free`'s page.
fn free_table<P: Platform>(k: &Kmm<P>, phys: u64) -> Result<(), KmmError> {
    k.free_page(k.__va(phys)?)?;
    k.nr_pagetable.fetch_sub(1, Relaxed);
    Ok(())
}

impl PageTable {
    /// The format.
    pub fn format(&self) -> &'static dyn PagingFormat {
        self.fmt
    }

    /// Physical address of the top-level table (`__pa(mm->pgd)`, CR3).
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The page sizes the format maps, smallest first, as `(size, level)`.
    pub fn page_sizes(&self) -> impl Iterator<Item = (u64, usize)> + '_ {
        (0..self.fmt.levels())
            .filter(|&l| l == 0 || self.fmt.large_at(l))
            .map(|l| (1u64 << self.fmt.shift(l), l))
    }

    /// The raw entry at `idx` of the table at physical address `table`
    /// (`pte_val(*pte)`, ...).
    pub(crate) fn read<P: Platform>(
        &self,
        k: &Kmm<P>,
        table: u64,
        idx: usize,
    ) -> Result<u64, KmmError> {
        read_entry(k.phys(), self.fmt.entry_size(), table, idx)
    }

    /// `set_pte` / `set_pmd` / `set_pud` / `set_p4d` / `set_pgd`.
    pub(crate) fn write<P: Platform>(
        &self,
        k: &Kmm<P>,
        table: u64,
        idx: usize,
        raw: u64,
    ) -> Result<(), KmmError> {
        write_entry(k.phys(), self.fmt.entry_size(), table, idx, raw)
    }

    /// The index of `virt` in a table of `level` (`pte_index`, `pmd_index`, ...).
    pub(crate) fn index(&self, virt: u64, level: usize) -> usize {
        ((virt >> self.fmt.shift(level)) as usize) & (self.fmt.entries(level) - 1)
    }

    /// True when `virt` is in the format's canonical range.
    pub fn is_canonical(&self, virt: u64) -> bool {
        let bits = self.fmt.va_bits();
        if bits >= 64 {
            return true;
        }
        if self.fmt.sign_extended() {
            let shift = 64 - bits;
            (((virt << shift) as i64) >> shift) as u64 == virt
        } else {
            virt >> bits == 0
        }
    }

    fn check_virt(&self, virt: u64) -> Result<(), KmmError> {
        if self.is_canonical(virt) {
            Ok(())
        } else {
            Err(KmmError::InvalidAddress {
                addr: virt,
                what: "virtual address outside the page-table format's canonical range",
            })
        }
    }

    /// Sign-extends a reconstructed address (the upper half of x86_64).
    fn canonical(&self, virt: u64) -> u64 {
        let bits = self.fmt.va_bits();
        if self.fmt.sign_extended() && bits < 64 {
            let shift = 64 - bits;
            (((virt << shift) as i64) >> shift) as u64
        } else {
            virt
        }
    }

    /// Walks to the leaf covering `virt`: its level, raw entry and the path.
    fn find<P: Platform>(
        &self,
        k: &Kmm<P>,
        virt: u64,
    ) -> Result<Option<(usize, u64, Path)>, KmmError> {
        self.check_virt(virt)?;
        let mut trail = Trail::new();
        let leaf = with_format!(self.fmt, f => descend_trail(f, self.root, k, virt, &mut trail))?;
        Ok(leaf.map(|(level, raw)| (level, raw, trail.path)))
    }

    fn leaf_level(&self, size: u64) -> Result<usize, KmmError> {
        self.page_sizes()
            .find(|&(s, _)| s == size)
            .map(|(_, l)| l)
            .ok_or(KmmError::InvalidArgument {
                what: "page size this page-table format does not have",
            })
    }

    /// `set_pte_at` / `set_pmd_at` (with `pte_alloc`/`pmd_alloc` of missing
    /// tables): maps `size` bytes at `virt` to `phys`. `size` is 4 KiB or a
    /// large-page size of the format ([`Self::page_sizes`]); both addresses
    /// must be aligned to it. [`PteFlags::PRESENT`] is implied; flags the
    /// format cannot store are dropped.
    ///
    /// Errors: [`KmmError::AlreadyMapped`] when any part of the range is
    /// mapped, [`KmmError::InvalidAddress`] for misaligned or non-canonical
    /// addresses or a frame the format cannot address,
    /// [`KmmError::InvalidArgument`] for a size the format lacks,
    /// [`KmmError::NoMemory`] when a table page cannot be allocated. A failed
    /// call leaves the tables and the allocator as they were.
    pub fn map<P: Platform>(
        &mut self,
        k: &Kmm<P>,
        virt: u64,
        phys: u64,
        size: u64,
        flags: PteFlags,
    ) -> Result<(), KmmError> {
        let leaf = self.leaf_level(size)?;
        self.check_virt(virt)?;
        if virt & (size - 1) != 0 {
            return Err(KmmError::InvalidAddress {
                addr: virt,
                what: "virtual address not aligned to the page size",
            });
        }
        if phys & (size - 1) != 0 {
            return Err(KmmError::InvalidAddress {
                addr: phys,
                what: "physical address not aligned to the page size",
            });
        }
        let flags = (flags | PteFlags::PRESENT) & self.fmt.supported_flags();
        let raw_leaf = self
            .fmt
            .encode_leaf(phys, flags, leaf)
            .ok_or(KmmError::InvalidAddress {
                addr: phys,
                what: "physical address beyond the page-table format's reach",
            })?;
        // Tables allocated by this call: (parent table, index, new table).
        let mut fresh = [(0u64, 0usize, 0u64); MAX_LEVELS];
        let mut nfresh = 0;
        let mut table = self.root;
        let mut result = Ok(());
        for level in (leaf + 1..self.fmt.levels()).rev() {
            let idx = self.index(virt, level);
            let step = self
                .read(k, table, idx)
                .and_then(|raw| match self.fmt.decode(raw, level) {
                    Entry::Table(next) => Ok(next),
                    Entry::Leaf { .. } => Err(KmmError::AlreadyMapped { virt }),
                    Entry::None => {
                        let new = alloc_table(k, self.fmt, level - 1)?;
                        fresh[nfresh] = (table, idx, new);
                        nfresh += 1;
                        let raw =
                            self.fmt
                                .encode_table(new, level)
                                .ok_or(KmmError::InvalidAddress {
                                    addr: new,
                                    what: "page-table page the format cannot point at",
                                });
                        raw.and_then(|raw| self.write(k, table, idx, raw))?;
                        Ok(new)
                    }
                });
            match step {
                Ok(next) => table = next,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            let idx = self.index(virt, leaf);
            result = self.read(k, table, idx).and_then(|raw| {
                if self.fmt.decode(raw, leaf) == Entry::None {
                    self.write(k, table, idx, raw_leaf)
                } else {
                    Err(KmmError::AlreadyMapped { virt })
                }
            });
        }
        if result.is_err() {
            // Undo: the tables made here are empty (they were new).
            for &(parent, idx, new) in fresh[..nfresh].iter().rev() {
                self.write(k, parent, idx, 0)?;
                free_table(k, new)?;
            }
        }
        result
    }

    /// `pte_offset_kernel()` after the `pgd`/`p4d`/`pud`/`pmd_offset()`
    /// walk: the physical address of the PTE table covering `virt`, or
    /// `None` when a level above has no table yet. A large page on the way
    /// is [`KmmError::AlreadyMapped`]. Reads one entry per level and changes
    /// nothing.
    pub(crate) fn pte_table<P: Platform>(
        &self,
        k: &Kmm<P>,
        virt: u64,
    ) -> Result<Option<u64>, KmmError> {
        with_format!(self.fmt, f => pte_table_in(f, self.root, k.phys(), virt))
    }

    /// `set_ptes()` / `vmap_pages_pte_range()`: fills the run `r` of one PTE
    /// table, entry `j` mapping the frame at physical address `frame(j)`
    /// with `flags` (plus present). Every entry must be empty. The table is
    /// found once by the caller and bounds-checked once here, so a run costs
    /// a store per page. Returns how many entries were set and the error
    /// (an entry already in use, a bad frame) that stopped the run early.
    pub(crate) fn set_ptes<P: Platform>(
        &self,
        k: &Kmm<P>,
        r: PteRange,
        flags: PteFlags,
        mut frame: impl FnMut(usize) -> Result<u64, KmmError>,
    ) -> (usize, Result<(), KmmError>) {
        with_format!(self.fmt, f => set_ptes_in(f, k.phys(), r, flags, &mut frame))
    }

    /// `vunmap_pte_range()` / `pte_clear()` of a run: empties the run `r` of
    /// one PTE table (the TLB flush is the caller's).
    pub(crate) fn clear_ptes<P: Platform>(&self, k: &Kmm<P>, r: PteRange) -> Result<(), KmmError> {
        let (phys, es) = (k.phys(), self.fmt.entry_size());
        if r.first + r.count > self.fmt.entries(0) {
            return Err(r.out_of_table());
        }
        if es == 8 {
            let slots = phys.ram_slice::<AtomicU64>(r.table + r.first as u64 * 8, r.count)?;
            for slot in slots {
                slot.store(0, Relaxed);
            }
            return Ok(());
        }
        for idx in r.first..r.first + r.count {
            write_entry(phys, es, r.table, idx, 0)?;
        }
        Ok(())
    }

    /// `follow_pte` / a software page walk: the translation of `virt`, or
    /// `None` when nothing maps it (or it is not canonical). Changes nothing.
    pub fn walk<P: Platform>(&self, k: &Kmm<P>, virt: u64) -> Option<Translation> {
        with_format!(self.fmt, f => walk_in(f, self.root, k, virt))
    }

    /// The translation of `virt` through the leaf `raw` of `level`.
    #[allow(dead_code)] // the walks call `translation_in` with the format's type
    fn translation(&self, virt: u64, level: usize, raw: u64) -> Option<Translation> {
        translation_in(self.fmt, virt, level, raw)
    }

    /// The walk the MMU does on a TLB miss: like [`Self::walk`], and sets
    /// the accessed bit in every entry it uses (where the format has one) and
    /// the dirty bit of the leaf on a write, as x86 hardware does. A write
    /// through a read-only mapping is a protection fault: `None`, and no bit
    /// changes.
    pub fn walk_and_mark<P: Platform>(
        &self,
        k: &Kmm<P>,
        virt: u64,
        write: bool,
    ) -> Option<Translation> {
        with_format!(self.fmt, f => walk_and_mark_in(f, self.root, k, virt, write))
    }

    /// `ptep_test_and_clear_young`: clears the accessed bit of the leaf
    /// mapping `virt` and says whether it was set.
    pub fn test_and_clear_young<P: Platform>(
        &mut self,
        k: &Kmm<P>,
        virt: u64,
    ) -> Result<bool, KmmError> {
        let Some((level, _, path)) = self.find(k, virt)? else {
            return Err(KmmError::NotMapped { virt });
        };
        let (table, idx) = (path.table[level], path.idx[level]);
        let raw = self.read(k, table, idx)?;
        let Entry::Leaf { phys, flags } = self.fmt.decode(raw, level) else {
            return Err(KmmError::NotMapped { virt });
        };
        if flags.pte_young() {
            let new = self.encode(phys, flags.pte_mkold(), level)?;
            self.write(k, table, idx, new)?;
        }
        Ok(flags.pte_young())
    }

    fn encode(&self, phys: u64, flags: PteFlags, level: usize) -> Result<u64, KmmError> {
        self.fmt
            .encode_leaf(phys, flags, level)
            .ok_or(KmmError::InvalidAddress {
                addr: phys,
                what: "physical address beyond the page-table format's reach",
            })
    }

    /// `change_protection` of one mapping (`pte_modify`): the page (or large
    /// page) containing `virt` gets `flags`; [`PteFlags::PRESENT`] is implied
    /// and the accessed and dirty bits are kept, as `_PAGE_CHG_MASK` keeps
    /// them. Returns the mapping as it now is; [`KmmError::NotMapped`] when
    /// nothing maps `virt`.
    pub fn protect<P: Platform>(
        &mut self,
        k: &Kmm<P>,
        virt: u64,
        flags: PteFlags,
    ) -> Result<Mapping, KmmError> {
        let Some((level, raw, path)) = self.find(k, virt)? else {
            return Err(KmmError::NotMapped { virt });
        };
        let Entry::Leaf { phys, flags: old } = self.fmt.decode(raw, level) else {
            return Err(KmmError::NotMapped { virt });
        };
        let keep = old & (PteFlags::ACCESSED | PteFlags::DIRTY);
        let flags = (flags | PteFlags::PRESENT | keep) & self.fmt.supported_flags();
        let new = self.encode(phys, flags, level)?;
        self.write(k, path.table[level], path.idx[level], new)?;
        let size = 1u64 << self.fmt.shift(level);
        Ok(Mapping {
            virt: virt & !(size - 1),
            phys,
            size,
            flags,
            level,
        })
    }

    /// `pte_clear` / `pmd_clear` of the mapping containing `virt`, then
    /// `free_pgtables` of the tables left empty. Returns what was mapped,
    /// or `None` when nothing was. The mapped page is not freed.
    pub fn unmap<P: Platform>(
        &mut self,
        k: &Kmm<P>,
        virt: u64,
    ) -> Result<Option<Mapping>, KmmError> {
        let Some((leaf, raw, path)) = self.find(k, virt)? else {
            return Ok(None);
        };
        let Entry::Leaf { phys, flags } = self.fmt.decode(raw, leaf) else {
            return Ok(None);
        };
        self.write(k, path.table[leaf], path.idx[leaf], 0)?;
        // Free tables that became empty, bottom up; never the root.
        for level in leaf..self.fmt.levels() - 1 {
            let table = path.table[level];
            if !self.is_empty_table(k, table, level)? {
                break;
            }
            self.write(k, path.table[level + 1], path.idx[level + 1], 0)?;
            free_table(k, table)?;
        }
        let size = 1u64 << self.fmt.shift(leaf);
        Ok(Some(Mapping {
            virt: self.canonical(virt & !(size - 1)),
            phys,
            size,
            flags,
            level: leaf,
        }))
    }

    fn is_empty_table<P: Platform>(
        &self,
        k: &Kmm<P>,
        table: u64,
        level: usize,
    ) -> Result<bool, KmmError> {
        for idx in 0..self.fmt.entries(level) {
            if self.read(k, table, idx)? != 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// `walk_page_range` over the whole address space: calls `f` for every
    /// mapping, in ascending order of the table indices (for x86_64, the
    /// lower half first, then the upper half).
    pub fn for_each_mapping<P: Platform>(
        &self,
        k: &Kmm<P>,
        f: &mut dyn FnMut(&Mapping),
    ) -> Result<(), KmmError> {
        self.visit(k, self.root, self.fmt.levels() - 1, 0, f)
    }

    fn visit<P: Platform>(
        &self,
        k: &Kmm<P>,
        table: u64,
        level: usize,
        base: u64,
        f: &mut dyn FnMut(&Mapping),
    ) -> Result<(), KmmError> {
        let shift = self.fmt.shift(level);
        for idx in 0..self.fmt.entries(level) {
            let raw = self.read(k, table, idx)?;
            let virt = base | ((idx as u64) << shift);
            match self.fmt.decode(raw, level) {
                Entry::None => {}
                Entry::Table(next) if level > 0 => self.visit(k, next, level - 1, virt, f)?,
                Entry::Table(_) => {}
                Entry::Leaf { phys, flags } => f(&Mapping {
                    virt: self.canonical(virt),
                    phys,
                    size: 1 << shift,
                    flags,
                    level,
                }),
            }
        }
        Ok(())
    }

    /// `pgd_free` after `free_pgtables`: frees every table page, the root
    /// last. The pages the tables map are not touched.
    pub fn destroy<P: Platform>(self, k: &Kmm<P>) -> Result<(), KmmError> {
        self.free_tree(k, self.root, self.fmt.levels() - 1)
    }

    fn free_tree<P: Platform>(&self, k: &Kmm<P>, table: u64, level: usize) -> Result<(), KmmError> {
        if level > 0 {
            for idx in 0..self.fmt.entries(level) {
                let raw = self.read(k, table, idx)?;
                if let Entry::Table(next) = self.fmt.decode(raw, level) {
                    self.free_tree(k, next, level - 1)?;
                }
            }
        }
        free_table(k, table)
    }
}
