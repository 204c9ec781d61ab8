//! Address spaces at the level of their areas: `mm/mmap.c`, `mm/vma.c`,
//! `mm/mprotect.c`, `mm/mremap.c`, `mm/madvise.c` and `mm/mlock.c`.
//!
//! An address space is an `mm_struct` ([`MmStruct`]) and a set of
//! `vm_area_struct`s ([`VmAreaStruct`]), each a slab object in simulated RAM
//! (caches `mm_struct` and `vm_area_struct`, as `/proc/slabinfo` shows them)
//! named by its physical address. The areas never overlap; they are kept,
//! as in Linux before the maple tree, twice: on a list in address order
//! (`mm->mmap`, `vm_next`, `vm_prev`) and in a red-black tree keyed by
//! `vm_end` (`mm->mm_rb`), so [`Kmm::find_vma`] costs `O(log n)`.
//!
//! The system calls here ([`Kmm::do_mmap`], [`Kmm::do_munmap`],
//! [`Kmm::do_mprotect`], [`Kmm::do_brk`], [`Kmm::do_mremap`],
//! [`Kmm::do_madvise`], [`Kmm::do_mlock`], [`Kmm::do_munlock`]) check their
//! arguments as Linux does and fail with Linux's error numbers
//! ([`KmmError::Errno`]); they split areas on partial changes and merge
//! neighbours that became compatible (same flags but for `VM_SOFTDIRTY`,
//! same file at contiguous offsets, compatible `anon_vma`), as `vma_merge()`
//! does, and they keep `total_vm`, `data_vm`, `exec_vm`, `stack_vm` and
//! `locked_vm` exact.
//!
//! Nothing here touches a page table. Every effect on pages goes through
//! the [`MmOps`] trait the caller passes: the page side (faults, page
//! tables, the reverse map) implements it, and a test can pass a recording
//! mock. [`MmOps`] documents exactly when each callback is called.
//!
//! # Locking
//!
//! As in Linux, the caller holds the address space's `mmap_lock` for
//! writing around each call that changes it ([`Kmm::mmap_write_lock`]);
//! these functions do not take it themselves, so that a callback may call
//! back into the address space (a fault handler running `find_vma`).
//!
//! # Shared anonymous memory
//!
//! Linux backs a `MAP_SHARED | MAP_ANONYMOUS` area with a shmem file. Here
//! such an area starts with `vm_file` 0, `vm_pgoff` 0 and
//! `VM_SHARED | VM_MAYSHARE`; it merges by the same rules as any other area.
//! The page side should give it an object of its own (in `vm_file`) once it
//! holds pages, which also keeps it apart from its neighbours.

use crate::errno::Errno;
use crate::error::KmmError;
use crate::gfp::GfpFlags;
use crate::mm::Kmm;
use crate::mm_types::{MmStruct, VmAreaStruct, VmaFlags, VMA_RB_OFFSET};
use crate::pgtable::PteFlags;
use crate::platform::Platform;
use crate::rbtree::{self, RbRoot};
use crate::slab::{KmemCache, SlabFlags};
use crate::spinlock::SpinLock;
use core::sync::atomic::{
    AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};

// ------------------------------------------------------------------------
// User-visible constants (`include/uapi/asm-generic/mman-common.h`,
// `mman.h`, `include/uapi/linux/mman.h`), with Linux's values.

/// `PROT_NONE`: no access.
pub const PROT_NONE: u64 = 0x0;
/// `PROT_READ`.
pub const PROT_READ: u64 = 0x1;
/// `PROT_WRITE`.
pub const PROT_WRITE: u64 = 0x2;
/// `PROT_EXEC`.
pub const PROT_EXEC: u64 = 0x4;
/// `PROT_SEM`: accepted and ignored.
pub const PROT_SEM: u64 = 0x8;
/// `PROT_GROWSDOWN` (`mprotect` only): extend the change down to the start
/// of a growing-down area.
pub const PROT_GROWSDOWN: u64 = 0x0100_0000;
/// `PROT_GROWSUP` (`mprotect` only; no x86 area grows up).
pub const PROT_GROWSUP: u64 = 0x0200_0000;

/// `MAP_SHARED`.
pub const MAP_SHARED: u64 = 0x01;
/// `MAP_PRIVATE`.
pub const MAP_PRIVATE: u64 = 0x02;
/// `MAP_SHARED_VALIDATE`: `MAP_SHARED` that refuses unknown flags.
pub const MAP_SHARED_VALIDATE: u64 = 0x03;
/// `MAP_TYPE`: the mask of the mapping type.
pub const MAP_TYPE: u64 = 0x0f;
/// `MAP_FIXED`: place exactly at `addr`, replacing what is there.
pub const MAP_FIXED: u64 = 0x10;
/// `MAP_ANONYMOUS`: no file.
pub const MAP_ANONYMOUS: u64 = 0x20;
/// `MAP_GROWSDOWN`: a stack (`VM_GROWSDOWN`).
pub const MAP_GROWSDOWN: u64 = 0x0100;
/// `MAP_DENYWRITE`: ignored.
pub const MAP_DENYWRITE: u64 = 0x0800;
/// `MAP_EXECUTABLE`: ignored.
pub const MAP_EXECUTABLE: u64 = 0x1000;
/// `MAP_LOCKED`: `VM_LOCKED`, populated at once.
pub const MAP_LOCKED: u64 = 0x2000;
/// `MAP_NORESERVE`: `VM_NORESERVE`, no commit charge.
pub const MAP_NORESERVE: u64 = 0x4000;
/// `MAP_POPULATE`: fault the pages in now.
pub const MAP_POPULATE: u64 = 0x8000;
/// `MAP_NONBLOCK`: with `MAP_POPULATE`, do not populate.
pub const MAP_NONBLOCK: u64 = 0x1_0000;
/// `MAP_STACK`: accepted and ignored.
pub const MAP_STACK: u64 = 0x2_0000;
/// `MAP_HUGETLB`: huge pages (none are reserved: anonymous requests fail
/// with `ENOMEM`, file requests with `EINVAL`).
pub const MAP_HUGETLB: u64 = 0x4_0000;
/// `MAP_SYNC`: only with `MAP_SHARED_VALIDATE` on DAX files (refused).
pub const MAP_SYNC: u64 = 0x8_0000;
/// `MAP_FIXED_NOREPLACE`: `MAP_FIXED` that fails with `EEXIST` instead of
/// replacing.
pub const MAP_FIXED_NOREPLACE: u64 = 0x10_0000;
/// `MAP_UNINITIALIZED`: ignored.
pub const MAP_UNINITIALIZED: u64 = 0x400_0000;
/// `LEGACY_MAP_MASK`: the flags `MAP_SHARED` has always accepted (what
/// `MAP_SHARED_VALIDATE` checks against).
pub const LEGACY_MAP_MASK: u64 = MAP_SHARED
    | MAP_PRIVATE
    | MAP_FIXED
    | MAP_ANONYMOUS
    | MAP_DENYWRITE
    | MAP_EXECUTABLE
    | MAP_UNINITIALIZED
    | MAP_GROWSDOWN
    | MAP_LOCKED
    | MAP_NORESERVE
    | MAP_POPULATE
    | MAP_NONBLOCK
    | MAP_STACK
    | MAP_HUGETLB;

/// `MREMAP_MAYMOVE`: the area may move if it cannot grow in place.
pub const MREMAP_MAYMOVE: u64 = 1;
/// `MREMAP_FIXED`: move to exactly `new_addr`.
pub const MREMAP_FIXED: u64 = 2;
/// `MREMAP_DONTUNMAP`: move the pages but leave the old area mapped (empty).
pub const MREMAP_DONTUNMAP: u64 = 4;

/// `MADV_NORMAL`: no read-ahead hint (clears `VM_SEQ_READ`/`VM_RAND_READ`).
pub const MADV_NORMAL: u64 = 0;
/// `MADV_RANDOM`: `VM_RAND_READ`.
pub const MADV_RANDOM: u64 = 1;
/// `MADV_SEQUENTIAL`: `VM_SEQ_READ`.
pub const MADV_SEQUENTIAL: u64 = 2;
/// `MADV_WILLNEED`: read ahead (nothing to do at the area level).
pub const MADV_WILLNEED: u64 = 3;
/// `MADV_DONTNEED`: drop the pages; the area stays.
pub const MADV_DONTNEED: u64 = 4;
/// `MADV_DONTFORK`: `VM_DONTCOPY`.
pub const MADV_DONTFORK: u64 = 10;
/// `MADV_DOFORK`: clear `VM_DONTCOPY`.
pub const MADV_DOFORK: u64 = 11;

/// `VM_SEQ_READ` (`MADV_SEQUENTIAL`), a `vm_flags` bit [`VmaFlags`] does
/// not name.
pub const VM_SEQ_READ: VmaFlags = VmaFlags::from_bits_retain(0x8000);
/// `VM_RAND_READ` (`MADV_RANDOM`).
pub const VM_RAND_READ: VmaFlags = VmaFlags::from_bits_retain(0x1_0000);
/// `VM_SOFTDIRTY`: the one bit two areas may differ in and still merge
/// (kmm never sets it).
pub const VM_SOFTDIRTY: VmaFlags = VmaFlags::from_bits_retain(0x0800_0000);
/// `VM_SPECIAL`: areas that never merge and are never `mlock`ed
/// (`VM_IO | VM_DONTEXPAND | VM_PFNMAP | VM_MIXEDMAP`).
pub const VM_SPECIAL: VmaFlags = VmaFlags::from_bits_retain(
    VmaFlags::VM_IO.bits()
        | VmaFlags::VM_DONTEXPAND.bits()
        | VmaFlags::VM_PFNMAP.bits()
        | 0x1000_0000, // VM_MIXEDMAP
);

/// `DEFAULT_MAX_MAP_COUNT`: `vm.max_map_count`'s default.
pub const DEFAULT_MAX_MAP_COUNT: u64 = 65530;
/// `vm.mmap_min_addr` as most distributions set it (`CONFIG_DEFAULT_MMAP_MIN_ADDR`).
pub const DEFAULT_MMAP_MIN_ADDR: u64 = 65536;
/// `stack_guard_gap`'s default, in pages (`stack_guard_gap=` boot option).
pub const STACK_GUARD_GAP_PAGES: u64 = 256;
/// `RLIMIT_STACK`'s usual soft limit (8 MiB).
pub const DEFAULT_STACK_RLIMIT: u64 = 8 << 20;

// Raw `vm_flags` bits used below.
const VM_READ: u64 = VmaFlags::VM_READ.bits();
const VM_WRITE: u64 = VmaFlags::VM_WRITE.bits();
const VM_EXEC: u64 = VmaFlags::VM_EXEC.bits();
const VM_SHARED: u64 = VmaFlags::VM_SHARED.bits();
const VM_MAYREAD: u64 = VmaFlags::VM_MAYREAD.bits();
const VM_MAYWRITE: u64 = VmaFlags::VM_MAYWRITE.bits();
const VM_MAYEXEC: u64 = VmaFlags::VM_MAYEXEC.bits();
const VM_MAYSHARE: u64 = VmaFlags::VM_MAYSHARE.bits();
const VM_GROWSDOWN: u64 = VmaFlags::VM_GROWSDOWN.bits();
const VM_PFNMAP: u64 = VmaFlags::VM_PFNMAP.bits();
const VM_LOCKED: u64 = VmaFlags::VM_LOCKED.bits();
const VM_IO: u64 = VmaFlags::VM_IO.bits();
const VM_DONTCOPY: u64 = VmaFlags::VM_DONTCOPY.bits();
const VM_DONTEXPAND: u64 = VmaFlags::VM_DONTEXPAND.bits();
const VM_ACCOUNT: u64 = VmaFlags::VM_ACCOUNT.bits();
const VM_NORESERVE: u64 = VmaFlags::VM_NORESERVE.bits();
const VM_ACCESS_FLAGS: u64 = VM_READ | VM_WRITE | VM_EXEC;
/// `VM_STACK` on x86: growing down.
const VM_STACK: u64 = VM_GROWSDOWN;
const VM_SPECIAL_BITS: u64 = VM_SPECIAL.bits();
const VM_SOFTDIRTY_BIT: u64 = VM_SOFTDIRTY.bits();
const VM_SEQ_READ_BIT: u64 = VM_SEQ_READ.bits();
const VM_RAND_READ_BIT: u64 = VM_RAND_READ.bits();

/// `MAX_LFS_FILESIZE` on 64-bit: the largest file offset.
const MAX_LFS_FILESIZE: u64 = i64::MAX as u64;

const OFF_END: u64 = core::mem::offset_of!(VmAreaStruct, vm_end) as u64;

// ------------------------------------------------------------------------
// Types

/// An open file being mapped (the parts of `struct file` `mmap` looks at).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MmapFile {
    /// `file->f_mapping`: the file's `address_space` object, stored in
    /// `vm_file`. 0 stands for a file that cannot be mapped (no
    /// `f_op->mmap`): `ENODEV`.
    pub mapping: u64,
    /// `i_size` in bytes (faults beyond it are the page side's SIGBUS; the
    /// mapping itself may be longer, as in Linux).
    pub size: u64,
    /// `FMODE_READ`: opened for reading.
    pub readable: bool,
    /// `FMODE_WRITE`: opened for writing.
    pub writable: bool,
}

/// What the area-level code asks of the page side (Linux calls these
/// functions directly: `zap_page_range`, `change_protection`,
/// `move_page_tables`, `populate_vma_page_range`, and `vm_ops->open` /
/// `get_file` and `vm_ops->close` / `fput` for the last two).
///
/// # Contract
///
/// All ranges are page aligned and non-empty, and lie inside the area
/// named with them at the time of the call.
///
/// * [`MmOps::zap_range`] is called for every range that stops being
///   mapped, *before* the area is shrunk or freed, and with the area still
///   linked and describing exactly that range: `munmap` (after splitting at
///   both ends, one call per area, in address order), `mmap` with
///   `MAP_FIXED` over existing areas, `brk` shrinking, `mremap` shrinking,
///   the old range after an `mremap` move (its pages have moved by then),
///   the target of `MREMAP_FIXED`, and [`Kmm::mm_free_vmas`]. For
///   `MADV_DONTNEED` it is called with a part of an area that stays.
/// * [`MmOps::change_protection`] is called by `mprotect` for each piece
///   of the range whose `vm_flags` changed, after the change, with the area
///   now covering the piece (possibly a merged one) and its new
///   `vm_page_prot`.
/// * [`MmOps::move_page_tables`] is called by `mremap` when an area moves,
///   once, after the new area exists and before the old range is unmapped.
///   If it fails it is called once more the other way round, the new area
///   is unmapped and `mremap` returns the error.
/// * [`MmOps::populate`] is called after `mmap` with `MAP_POPULATE` (and
///   not `MAP_NONBLOCK`) or `VM_LOCKED` for the new range; by `mlock` for
///   each area piece of the range (except `VM_IO`/`VM_PFNMAP` areas); by
///   `mprotect` when a locked private area becomes writable (to break
///   copy-on-write, as Linux does); by `mremap` for the grown part of a
///   locked area; and by `brk` growth when `mm->def_flags` has
///   `VM_LOCKED`. Its errors are ignored except by `mlock`, which returns
///   them (`EFAULT` becomes `ENOMEM`, `ENOMEM` becomes `EAGAIN`, as Linux).
/// * [`MmOps::vma_opened`] is called once for every area object after it
///   is linked into an address space as a new object (a new mapping, the
///   new half of a split, the copy made by `mremap`, `brk`'s first area,
///   [`Kmm::insert_vm_struct`]), and [`MmOps::vma_closed`] once right before
///   an area object is freed (unmapped, absorbed by a merge, or at exit).
///   So, between calls, the areas mapping a file are exactly those opened
///   and not yet closed: the page side can keep the file's user count.
pub trait MmOps {
    /// `zap_page_range`: remove the pages mapped in `[start, end)` of `vma`
    /// (unmap them, drop their references).
    fn zap_range(&self, mm: u64, vma: u64, start: u64, end: u64) -> Result<(), KmmError>;
    /// `change_protection`: `[start, end)` of `vma` now maps with `prot`
    /// (write-protect or open up the existing PTEs).
    fn change_protection(
        &self,
        mm: u64,
        vma: u64,
        start: u64,
        end: u64,
        prot: PteFlags,
    ) -> Result<(), KmmError>;
    /// `move_page_tables`: move the mappings of `len` bytes at `old_start`
    /// (in `old_vma`) to `new_start` (in `new_vma`; possibly the same area).
    fn move_page_tables(
        &self,
        mm: u64,
        old_vma: u64,
        old_start: u64,
        new_vma: u64,
        new_start: u64,
        len: u64,
    ) -> Result<(), KmmError>;
    /// `populate_vma_page_range`: fault in `[start, end)` of `vma`
    /// (`MAP_POPULATE`, `mlock`).
    fn populate(&self, mm: u64, vma: u64, start: u64, end: u64) -> Result<(), KmmError>;
    /// `get_file` / `vm_ops->open`: a new area object `vma` now exists in
    /// `mm`. The default does nothing.
    fn vma_opened(&self, mm: u64, vma: u64) {
        let _ = (mm, vma);
    }
    /// `fput` / `vm_ops->close`: the area object `vma` is about to be freed.
    /// The default does nothing.
    fn vma_closed(&self, mm: u64, vma: u64) {
        let _ = (mm, vma);
    }
}

/// An [`MmOps`] for an address space without pages (a process that never
/// faults, a dry run): every callback succeeds and does nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoMmOps;

impl MmOps for NoMmOps {
    fn zap_range(&self, _: u64, _: u64, _: u64, _: u64) -> Result<(), KmmError> {
        Ok(())
    }
    fn change_protection(
        &self,
        _: u64,
        _: u64,
        _: u64,
        _: u64,
        _: PteFlags,
    ) -> Result<(), KmmError> {
        Ok(())
    }
    fn move_page_tables(
        &self,
        _: u64,
        _: u64,
        _: u64,
        _: u64,
        _: u64,
        _: u64,
    ) -> Result<(), KmmError> {
        Ok(())
    }
    fn populate(&self, _: u64, _: u64, _: u64, _: u64) -> Result<(), KmmError> {
        Ok(())
    }
}

/// A copy of one `vm_area_struct`'s fields (what `/proc/PID/maps` prints).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VmaInfo {
    /// The area (physical address of the object).
    pub vma: u64,
    /// `vm_start`.
    pub vm_start: u64,
    /// `vm_end`.
    pub vm_end: u64,
    /// `vm_flags` (may hold bits [`VmaFlags`] does not name, such as
    /// [`VM_SEQ_READ`]).
    pub vm_flags: VmaFlags,
    /// `vm_page_prot`.
    pub vm_page_prot: PteFlags,
    /// `vm_pgoff`.
    pub vm_pgoff: u64,
    /// `vm_file`: the mapped file's object, 0 for anonymous memory.
    pub vm_file: u64,
    /// `anon_vma`.
    pub anon_vma: u64,
}

/// The area-level counters of an `mm_struct` (the `Vm*` lines of
/// `/proc/PID/status` come from these).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MmVmStat {
    /// `map_count`.
    pub map_count: u64,
    /// `total_vm` in pages (`VmSize`).
    pub total_vm: u64,
    /// `locked_vm` in pages (`VmLck`).
    pub locked_vm: u64,
    /// `data_vm` in pages (`VmData`).
    pub data_vm: u64,
    /// `exec_vm` in pages (`VmExe`).
    pub exec_vm: u64,
    /// `stack_vm` in pages (`VmStk`).
    pub stack_vm: u64,
    /// `hiwater_vm` in pages (`VmPeak`).
    pub hiwater_vm: u64,
    /// `highest_vm_end`.
    pub highest_vm_end: u64,
    /// `start_brk`.
    pub start_brk: u64,
    /// `brk`.
    pub brk: u64,
    /// `mmap_base`.
    pub mmap_base: u64,
    /// `task_size`.
    pub task_size: u64,
}

/// `mmap_write_lock()` held: released when dropped (`mmap_write_unlock()`).
pub struct MmapLockGuard<'a> {
    word: &'a AtomicU64,
}

impl Drop for MmapLockGuard<'_> {
    fn drop(&mut self) {
        self.word.store(0, Release);
    }
}

/// `vm_get_page_prot()` with x86's `protection_map[]`: present and user
/// for any access (`PROT_NONE` gives no bits: not present), writable only
/// for a shared writable area (a private writable area starts read-only:
/// its writes are copy-on-write), `NX` unless `VM_EXEC`.
pub fn vm_get_page_prot(flags: VmaFlags) -> PteFlags {
    page_prot_bits(flags.bits())
}

fn page_prot_bits(flags: u64) -> PteFlags {
    if flags & VM_ACCESS_FLAGS == 0 {
        return PteFlags::empty();
    }
    let mut p = PteFlags::PRESENT | PteFlags::USER;
    if flags & (VM_WRITE | VM_SHARED) == VM_WRITE | VM_SHARED {
        p |= PteFlags::WRITABLE;
    }
    if flags & VM_EXEC == 0 {
        p |= PteFlags::NO_EXEC;
    }
    p
}

/// `calc_vm_prot_bits()`.
fn calc_vm_prot_bits(prot: u64) -> u64 {
    let mut f = 0;
    if prot & PROT_READ != 0 {
        f |= VM_READ;
    }
    if prot & PROT_WRITE != 0 {
        f |= VM_WRITE;
    }
    if prot & PROT_EXEC != 0 {
        f |= VM_EXEC;
    }
    f
}

/// `calc_vm_flag_bits()`.
fn calc_vm_flag_bits(flags: u64) -> u64 {
    let mut f = 0;
    if flags & MAP_GROWSDOWN != 0 {
        f |= VM_GROWSDOWN;
    }
    if flags & MAP_LOCKED != 0 {
        f |= VM_LOCKED;
    }
    f
}

#[inline]
fn errno(errno: Errno, what: &'static str) -> KmmError {
    KmmError::Errno { errno, what }
}

/// An allocation failure seen by a system call is `ENOMEM`.
fn nomem(e: KmmError) -> KmmError {
    match e {
        KmmError::NoMemory { .. } => errno(Errno::ENOMEM, "out of memory for a vm_area_struct"),
        e => e,
    }
}

fn is_errno(e: &KmmError, n: Errno) -> bool {
    matches!(e, KmmError::Errno { errno, .. } if *errno == n)
}

#[inline]
fn nz(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

/// `is_mergeable_anon_vma()`: an area without anonymous pages merges with
/// anything; two with pages only when they share their `anon_vma`.
#[inline]
fn anon_compat(a: u64, b: u64) -> bool {
    a == 0 || b == 0 || a == b
}

/// A snapshot of one area, read from RAM.
#[derive(Clone, Copy, Debug)]
struct V {
    at: u64,
    start: u64,
    end: u64,
    flags: u64,
    pgoff: u64,
    file: u64,
    anon: u64,
    prev: u64,
    next: u64,
    mm: u64,
}

impl V {
    /// `vma_is_anonymous()`: private anonymous memory (a shared anonymous
    /// area has shmem's `vm_ops` in Linux).
    fn is_anon_private(&self) -> bool {
        self.file == 0 && self.flags & VM_SHARED == 0
    }
}

/// Where a range `[addr, end)` lies relative to the areas.
enum Place {
    /// A hole between `prev` and `next`.
    Hole { prev: Option<V>, next: Option<V> },
    /// Inside one area.
    Inside(V),
}

/// The area allocator's caches and tunables (`vm_area_cachep`,
/// `mm_cachep`, `sysctl_max_map_count`, `mmap_min_addr`,
/// `stack_guard_gap`, the stack rlimit).
pub(crate) struct MmapState {
    vma_cache: AtomicU64,
    mm_cache: AtomicU64,
    init_lock: SpinLock<()>,
    max_map_count: AtomicU64,
    mmap_min_addr: AtomicU64,
    /// In pages.
    stack_guard_gap: AtomicU64,
    stack_rlimit: AtomicU64,
}

impl MmapState {
    pub(crate) const fn new() -> Self {
        MmapState {
            vma_cache: AtomicU64::new(0),
            mm_cache: AtomicU64::new(0),
            init_lock: SpinLock::new(()),
            max_map_count: AtomicU64::new(DEFAULT_MAX_MAP_COUNT),
            mmap_min_addr: AtomicU64::new(DEFAULT_MMAP_MIN_ADDR),
            stack_guard_gap: AtomicU64::new(STACK_GUARD_GAP_PAGES),
            stack_rlimit: AtomicU64::new(DEFAULT_STACK_RLIMIT),
        }
    }
}

impl<P: Platform> Kmm<P> {
    // ================================================================
    // Caches and tunables

    /// `vm_area_cachep` / `mm_cachep`, made on first use.
    fn mmap_cache(
        &self,
        which: &AtomicU64,
        name: &str,
        size: usize,
        flags: SlabFlags,
    ) -> Result<KmemCache, KmmError> {
        if let Some(c) = KmemCache::from_raw(which.load(Acquire)) {
            return Ok(c);
        }
        let _g = self.mmap.init_lock.lock();
        if let Some(c) = KmemCache::from_raw(which.load(Acquire)) {
            return Ok(c);
        }
        let c = self.kmem_cache_create(name, size, 8, flags, None)?;
        which.store(c.to_raw(), Release);
        Ok(c)
    }

    fn vm_area_cachep(&self) -> Result<KmemCache, KmmError> {
        self.mmap_cache(
            &self.mmap.vma_cache,
            "vm_area_struct",
            core::mem::size_of::<VmAreaStruct>(),
            SlabFlags::empty(),
        )
    }

    fn mm_cachep(&self) -> Result<KmemCache, KmmError> {
        self.mmap_cache(
            &self.mmap.mm_cache,
            "mm_struct",
            core::mem::size_of::<MmStruct>(),
            SlabFlags::SLAB_HWCACHE_ALIGN,
        )
    }

    /// `vm.max_map_count`: the most areas one address space may have.
    pub fn sysctl_max_map_count(&self) -> u64 {
        self.mmap.max_map_count.load(Relaxed)
    }

    /// Sets `vm.max_map_count`.
    pub fn set_sysctl_max_map_count(&self, n: u64) {
        self.mmap.max_map_count.store(n, Relaxed);
    }

    /// `vm.mmap_min_addr`: no mapping may start below it (`EPERM`), and
    /// hints below it are raised to it.
    pub fn mmap_min_addr(&self) -> u64 {
        self.mmap.mmap_min_addr.load(Relaxed)
    }

    /// Sets `vm.mmap_min_addr`.
    pub fn set_mmap_min_addr(&self, addr: u64) {
        self.mmap.mmap_min_addr.store(addr, Relaxed);
    }

    /// `stack_guard_gap` in bytes: kept free below every `VM_GROWSDOWN`
    /// area by `get_unmapped_area` and `brk`, and above the area below a
    /// growing stack by [`Self::expand_stack`].
    pub fn stack_guard_gap(&self) -> u64 {
        self.mmap.stack_guard_gap.load(Relaxed) << self.page_shift
    }

    /// Sets `stack_guard_gap` (the `stack_guard_gap=` boot option), in pages.
    pub fn set_stack_guard_gap_pages(&self, pages: u64) {
        self.mmap.stack_guard_gap.store(pages, Relaxed);
    }

    /// `rlimit(RLIMIT_STACK)`: how far [`Self::expand_stack`] lets a stack grow.
    pub fn stack_rlimit(&self) -> u64 {
        self.mmap.stack_rlimit.load(Relaxed)
    }

    /// Sets `RLIMIT_STACK` (`setrlimit`), in bytes.
    pub fn set_stack_rlimit(&self, bytes: u64) {
        self.mmap.stack_rlimit.store(bytes, Relaxed);
    }

    // ================================================================
    // Small helpers

    #[inline]
    fn mm_ps(&self) -> u64 {
        1u64 << self.page_shift
    }

    #[inline]
    fn mm_page_off(&self, x: u64) -> u64 {
        x & (self.mm_ps() - 1)
    }

    /// `PAGE_ALIGN()`, wrapping as unsigned arithmetic does in C.
    #[inline]
    fn mm_page_align(&self, x: u64) -> u64 {
        x.wrapping_add(self.mm_ps() - 1) & !(self.mm_ps() - 1)
    }

    #[inline]
    fn mm_pages(&self, bytes: u64) -> u64 {
        bytes >> self.page_shift
    }

    fn mref(&self, mm: u64) -> Result<&MmStruct, KmmError> {
        if mm == 0 {
            return Err(KmmError::InvalidAddress {
                addr: 0,
                what: "NULL mm_struct",
            });
        }
        self.mem.ram_ref::<MmStruct>(mm)
    }

    fn vref(&self, vma: u64) -> Result<&VmAreaStruct, KmmError> {
        if vma == 0 {
            return Err(KmmError::InvalidAddress {
                addr: 0,
                what: "NULL vm_area_struct",
            });
        }
        self.mem.ram_ref::<VmAreaStruct>(vma)
    }

    /// [`Self::vload`] of a link that may be empty.
    fn vload_opt(&self, vma: Option<u64>) -> Result<Option<V>, KmmError> {
        vma.map(|v| self.vload(v)).transpose()
    }

    /// The first area ending above `addr` (`find_vma()`) and the area
    /// before it (the last one when there is none above).
    fn vma_neighbours(&self, m: &MmStruct, addr: u64) -> Result<(Option<V>, Option<V>), KmmError> {
        let next = self.mm_find_vma_v(m, addr)?;
        let prev = match next {
            Some(n) => nz(n.prev),
            None => self.mm_last_vma(m)?,
        };
        Ok((self.vload_opt(prev)?, next))
    }

    fn vload(&self, vma: u64) -> Result<V, KmmError> {
        let r = self.vref(vma)?;
        Ok(V {
            at: vma,
            start: r.vm_start.load(Relaxed),
            end: r.vm_end.load(Relaxed),
            flags: r.vm_flags.load(Relaxed),
            pgoff: r.vm_pgoff.load(Relaxed),
            file: r.vm_file.load(Relaxed),
            anon: r.anon_vma.load(Relaxed),
            prev: r.vm_prev.load(Relaxed),
            next: r.vm_next.load(Relaxed),
            mm: r.vm_mm.load(Relaxed),
        })
    }

    /// An area the caller named, checked to belong to `mm`.
    fn vload_of(&self, mm: u64, vma: u64) -> Result<V, KmmError> {
        let v = self.vload(vma)?;
        if v.mm != mm {
            return Err(KmmError::InvalidArgument {
                what: "vm_area_struct does not belong to this mm_struct",
            });
        }
        Ok(v)
    }

    fn vma_root_of(m: &MmStruct) -> RbRoot {
        RbRoot {
            rb_node: m.mm_rb.load(Relaxed),
        }
    }

    fn vm_end_key(&self) -> impl FnMut(u64) -> Result<u64, KmmError> + '_ {
        move |node| {
            self.mem
                .read_u64(rbtree::rb_entry(node, VMA_RB_OFFSET).wrapping_add(OFF_END))
        }
    }

    fn vm_start_gap(&self, v: &V) -> u64 {
        if v.flags & VM_GROWSDOWN != 0 {
            v.start.saturating_sub(self.stack_guard_gap())
        } else {
            v.start
        }
    }

    /// `update_hiwater_vm()`.
    fn mm_hiwater_vm(m: &MmStruct) {
        m.hiwater_vm.fetch_max(m.total_vm.load(Relaxed), Relaxed);
    }

    fn mm_stat(m: &MmStruct, flags: u64, npages: i64) {
        let n = npages as u64;
        m.total_vm.fetch_add(n, Relaxed);
        if flags & (VM_EXEC | VM_WRITE | VM_STACK) == VM_EXEC {
            m.exec_vm.fetch_add(n, Relaxed);
        } else if flags & VM_STACK == VM_STACK {
            m.stack_vm.fetch_add(n, Relaxed);
        } else if flags & (VM_WRITE | VM_SHARED | VM_STACK) == VM_WRITE {
            m.data_vm.fetch_add(n, Relaxed);
        }
        if npages > 0 {
            Self::mm_hiwater_vm(m);
        }
    }

    fn mm_locked(m: &MmStruct, npages: i64) {
        m.locked_vm.fetch_add(npages as u64, Relaxed);
    }

    /// Sets `vm_end`, keeping `highest_vm_end` (the tree order must not
    /// change: the caller moves the end within its own gap).
    fn vma_store_end(&self, m: &MmStruct, vma: u64, end: u64) -> Result<(), KmmError> {
        let r = self.vref(vma)?;
        r.vm_end.store(end, Relaxed);
        if r.vm_next.load(Relaxed) == 0 {
            m.highest_vm_end.store(end, Relaxed);
        }
        Ok(())
    }

    fn mm_last_vma(&self, m: &MmStruct) -> Result<Option<u64>, KmmError> {
        let root = Self::vma_root_of(m);
        Ok(rbtree::rb_last(&self.mem, &root)?.map(|n| rbtree::rb_entry(n, VMA_RB_OFFSET)))
    }

    fn mm_find_vma(&self, m: &MmStruct, addr: u64) -> Result<Option<u64>, KmmError> {
        let root = Self::vma_root_of(m);
        let node = rbtree::rb_first_gt(&self.mem, &addr, &root, self.vm_end_key())?;
        Ok(node.map(|n| rbtree::rb_entry(n, VMA_RB_OFFSET)))
    }

    fn mm_find_vma_v(&self, m: &MmStruct, addr: u64) -> Result<Option<V>, KmmError> {
        self.vload_opt(self.mm_find_vma(m, addr)?)
    }

    /// The area containing `addr` (`vma_lookup`).
    fn mm_lookup_v(&self, m: &MmStruct, addr: u64) -> Result<Option<V>, KmmError> {
        Ok(self.mm_find_vma_v(m, addr)?.filter(|v| v.start <= addr))
    }

    fn mm_intersects(&self, m: &MmStruct, start: u64, end: u64) -> Result<bool, KmmError> {
        Ok(self.mm_find_vma_v(m, start)?.is_some_and(|v| v.start < end))
    }

    // ================================================================
    // mm_struct lifecycle

    /// `mm_alloc()` (`mm_init()` at the area level): a new, empty address
    /// space from the `mm_struct` cache, with `mm_users` = `mm_count` = 1,
    /// the given `task_size` (end of user space) and `mmap_base` (where
    /// top-down placement starts). The page-table fields stay 0 for the
    /// page side to fill. Both values must be page aligned, `mmap_base` at
    /// most `task_size`.
    pub fn mm_alloc(&self, task_size: u64, mmap_base: u64) -> Result<u64, KmmError> {
        if task_size == 0
            || self.mm_page_off(task_size) != 0
            || self.mm_page_off(mmap_base) != 0
            || mmap_base > task_size
        {
            return Err(KmmError::InvalidArgument {
                what:
                    "mm_alloc: task_size and mmap_base must be page aligned, mmap_base <= task_size",
            });
        }
        let c = self.mm_cachep().map_err(nomem)?;
        let obj = self
            .kmem_cache_zalloc(c, GfpFlags::GFP_KERNEL)
            .map_err(nomem)?;
        let mm = match self.__pa(obj) {
            Ok(p) => p,
            Err(e) => {
                let _ = self.kmem_cache_free(c, obj);
                return Err(e);
            }
        };
        let m = self.mref(mm)?;
        m.task_size.store(task_size, Relaxed);
        m.mmap_base.store(mmap_base, Relaxed);
        m.mm_users.store(1, Relaxed);
        m.mm_count.store(1, Relaxed);
        Ok(mm)
    }

    /// Sets the heap's start (`mm->start_brk = mm->brk`, what the ELF
    /// loader does after mapping the data segment).
    pub fn mm_set_brk_base(&self, mm: u64, start_brk: u64) -> Result<(), KmmError> {
        let m = self.mref(mm)?;
        m.start_brk.store(start_brk, Relaxed);
        m.brk.store(start_brk, Relaxed);
        Ok(())
    }

    /// `exit_mmap()` at the area level: every area is zapped
    /// ([`MmOps::zap_range`] over its whole range, in address order), then
    /// unlinked, unaccounted, closed and freed. The address space is left
    /// empty and its counters at 0.
    pub fn mm_free_vmas(&self, mm: u64, ops: &dyn MmOps) -> Result<(), KmmError> {
        let m = self.mref(mm)?;
        Self::mm_hiwater_vm(m);
        let limit = m.map_count.load(Relaxed).saturating_add(1);
        let mut vma = m.mmap.load(Relaxed);
        let mut n = 0u64;
        while vma != 0 {
            n += 1;
            if n > limit {
                return Err(KmmError::BadObject {
                    addr: mm,
                    why: "VMA list longer than map_count",
                });
            }
            let v = self.vload(vma)?;
            ops.zap_range(mm, vma, v.start, v.end)?;
            vma = v.next;
        }
        while let Some(vma) = nz(m.mmap.load(Relaxed)) {
            let v = self.vload(vma)?;
            self.vma_unlink(m, vma)?;
            self.vma_unaccount(m, &v);
            ops.vma_closed(mm, vma);
            self.vm_area_free(vma)?;
        }
        Ok(())
    }

    /// `__mmdrop()` / `free_mm()`: frees the `mm_struct`. Its areas must be
    /// gone ([`Self::mm_free_vmas`]) and its page tables freed by the page
    /// side.
    pub fn mm_free(&self, mm: u64) -> Result<(), KmmError> {
        let m = self.mref(mm)?;
        if m.map_count.load(Relaxed) != 0 || m.mmap.load(Relaxed) != 0 {
            return Err(KmmError::InvalidArgument {
                what: "mm_free: the mm_struct still has VMAs (mm_free_vmas first)",
            });
        }
        let c = self.mm_cachep()?;
        self.kmem_cache_free(c, self.__va(mm)?)
    }

    /// `mmap_write_lock()`: takes the address space's `mmap_lock` (a spin
    /// word in the `mm_struct`) until the guard is dropped.
    pub fn mmap_write_lock(&self, mm: u64) -> Result<MmapLockGuard<'_>, KmmError> {
        let word = &self.mref(mm)?.mmap_lock;
        while word.compare_exchange_weak(0, 1, Acquire, Relaxed).is_err() {
            while word.load(Relaxed) != 0 {
                <crate::spinlock::Relax as spin::RelaxStrategy>::relax();
            }
        }
        Ok(MmapLockGuard { word })
    }

    /// `mmap_write_trylock()`.
    pub fn mmap_write_trylock(&self, mm: u64) -> Result<Option<MmapLockGuard<'_>>, KmmError> {
        let word = &self.mref(mm)?.mmap_lock;
        Ok(word
            .compare_exchange(0, 1, Acquire, Relaxed)
            .is_ok()
            .then_some(MmapLockGuard { word }))
    }

    /// The area-level counters of `mm` (what `task_mem()` prints as the
    /// `Vm*` lines of `/proc/PID/status`).
    pub fn mm_vm_stat(&self, mm: u64) -> Result<MmVmStat, KmmError> {
        let m = self.mref(mm)?;
        Ok(MmVmStat {
            map_count: m.map_count.load(Relaxed),
            total_vm: m.total_vm.load(Relaxed),
            locked_vm: m.locked_vm.load(Relaxed),
            data_vm: m.data_vm.load(Relaxed),
            exec_vm: m.exec_vm.load(Relaxed),
            stack_vm: m.stack_vm.load(Relaxed),
            hiwater_vm: m.hiwater_vm.load(Relaxed).max(m.total_vm.load(Relaxed)),
            highest_vm_end: m.highest_vm_end.load(Relaxed),
            start_brk: m.start_brk.load(Relaxed),
            brk: m.brk.load(Relaxed),
            mmap_base: m.mmap_base.load(Relaxed),
            task_size: m.task_size.load(Relaxed),
        })
    }

    // ================================================================
    // The VMA set

    /// `vm_area_alloc()`: a zeroed `vm_area_struct` from its cache, with
    /// `vm_mm` = `mm`, not linked anywhere.
    pub fn vm_area_alloc(&self, mm: u64) -> Result<u64, KmmError> {
        let c = self.vm_area_cachep().map_err(nomem)?;
        let obj = self
            .kmem_cache_zalloc(c, GfpFlags::GFP_KERNEL)
            .map_err(nomem)?;
        let vma = match self.__pa(obj) {
            Ok(p) => p,
            Err(e) => {
                let _ = self.kmem_cache_free(c, obj);
                return Err(e);
            }
        };
        self.vref(vma)?.vm_mm.store(mm, Relaxed);
        Ok(vma)
    }

    /// `vm_area_free()`: returns an unlinked area to its cache.
    pub fn vm_area_free(&self, vma: u64) -> Result<(), KmmError> {
        let c = self.vm_area_cachep()?;
        self.kmem_cache_free(c, self.__va(vma)?)
    }

    /// `vm_area_dup()`: a new object with `v`'s fields, not linked.
    fn vm_area_dup(&self, v: &V) -> Result<u64, KmmError> {
        let new = self.vm_area_alloc(v.mm)?;
        let (s, d) = (self.vref(v.at)?, self.vref(new)?);
        d.vm_start.store(v.start, Relaxed);
        d.vm_end.store(v.end, Relaxed);
        d.vm_flags.store(v.flags, Relaxed);
        d.vm_page_prot.store(s.vm_page_prot.load(Relaxed), Relaxed);
        d.vm_pgoff.store(v.pgoff, Relaxed);
        d.vm_file.store(v.file, Relaxed);
        d.anon_vma.store(v.anon, Relaxed);
        Ok(new)
    }

    /// `vma_link()`: puts a filled-in area into the tree and the list.
    fn vma_link(&self, mm: u64, vma: u64) -> Result<(), KmmError> {
        let m = self.mref(mm)?;
        let r = self.vref(vma)?;
        let node = vma + VMA_RB_OFFSET;
        let mut root = Self::vma_root_of(m);
        rbtree::rb_add(&self.mem, node, &mut root, self.vm_end_key())?;
        m.mm_rb.store(root.rb_node, Relaxed);
        let prev =
            rbtree::rb_prev(&self.mem, node)?.map_or(0, |n| rbtree::rb_entry(n, VMA_RB_OFFSET));
        let next =
            rbtree::rb_next(&self.mem, node)?.map_or(0, |n| rbtree::rb_entry(n, VMA_RB_OFFSET));
        r.vm_mm.store(mm, Relaxed);
        r.vm_prev.store(prev, Relaxed);
        r.vm_next.store(next, Relaxed);
        match nz(prev) {
            Some(p) => self.vref(p)?.vm_next.store(vma, Relaxed),
            None => m.mmap.store(vma, Relaxed),
        }
        match nz(next) {
            Some(n) => self.vref(n)?.vm_prev.store(vma, Relaxed),
            None => m.highest_vm_end.store(r.vm_end.load(Relaxed), Relaxed),
        }
        m.map_count.fetch_add(1, Relaxed);
        Ok(())
    }

    /// `__vma_unlink()`: takes an area out of the tree and the list.
    fn vma_unlink(&self, m: &MmStruct, vma: u64) -> Result<(), KmmError> {
        let r = self.vref(vma)?;
        let mut root = Self::vma_root_of(m);
        rbtree::rb_erase(&self.mem, vma + VMA_RB_OFFSET, &mut root)?;
        m.mm_rb.store(root.rb_node, Relaxed);
        let (prev, next) = (r.vm_prev.load(Relaxed), r.vm_next.load(Relaxed));
        match nz(prev) {
            Some(p) => self.vref(p)?.vm_next.store(next, Relaxed),
            None => m.mmap.store(next, Relaxed),
        }
        match nz(next) {
            Some(n) => self.vref(n)?.vm_prev.store(prev, Relaxed),
            None => {
                let end = match nz(prev) {
                    Some(p) => self.vref(p)?.vm_end.load(Relaxed),
                    None => 0,
                };
                m.highest_vm_end.store(end, Relaxed);
            }
        }
        r.vm_prev.store(0, Relaxed);
        r.vm_next.store(0, Relaxed);
        let _ = m
            .map_count
            .fetch_update(Relaxed, Relaxed, |c| Some(c.saturating_sub(1)));
        Ok(())
    }

    /// Takes an area's pages out of the counters (`remove_vma_list`).
    fn vma_unaccount(&self, m: &MmStruct, v: &V) {
        let n = self.mm_pages(v.end.wrapping_sub(v.start)) as i64;
        Self::mm_stat(m, v.flags, -n);
        if v.flags & VM_LOCKED != 0 {
            Self::mm_locked(m, -n);
        }
    }

    /// Unlinks, closes and frees an area absorbed by a merge.
    fn vma_absorb(&self, mm: u64, m: &MmStruct, vma: u64, ops: &dyn MmOps) -> Result<(), KmmError> {
        self.vma_unlink(m, vma)?;
        ops.vma_closed(mm, vma);
        self.vm_area_free(vma)
    }

    /// `insert_vm_struct()`: links an area the caller allocated
    /// ([`Self::vm_area_alloc`]) and filled in (`vm_start`, `vm_end`,
    /// `vm_flags`, `vm_file`, `vm_pgoff`, `anon_vma`; a private anonymous
    /// area without an `anon_vma` gets `vm_pgoff` = `vm_start >> PAGE_SHIFT`).
    /// It is not merged with its neighbours (fork copies areas one by one
    /// this way, as Linux's `dup_mmap` links them). `vm_page_prot` is set
    /// from `vm_flags` and, unlike Linux (whose callers do it), the area is
    /// accounted. `ENOMEM` if the range is taken, `EINVAL` if it is not a
    /// page-aligned non-empty range below `task_size`.
    pub fn insert_vm_struct(&self, mm: u64, vma: u64, ops: &dyn MmOps) -> Result<(), KmmError> {
        let m = self.mref(mm)?;
        let v = self.vload(vma)?;
        if v.start >= v.end
            || self.mm_page_off(v.start | v.end) != 0
            || v.end > m.task_size.load(Relaxed)
        {
            return Err(errno(Errno::EINVAL, "insert_vm_struct: bad range"));
        }
        if self.mm_intersects(m, v.start, v.end)? {
            return Err(errno(
                Errno::ENOMEM,
                "insert_vm_struct: range already mapped",
            ));
        }
        let r = self.vref(vma)?;
        if v.is_anon_private() && v.anon == 0 {
            // Linux BUGs on an anon_vma here; kmm keeps the caller's offset
            // then (fork copies areas whose pages are indexed by it).
            r.vm_pgoff.store(self.mm_pages(v.start), Relaxed);
        }
        r.vm_page_prot
            .store(page_prot_bits(v.flags).bits(), Relaxed);
        r.vm_mm.store(mm, Relaxed);
        self.vma_link(mm, vma)?;
        let n = self.mm_pages(v.end.wrapping_sub(v.start)) as i64;
        Self::mm_stat(m, v.flags, n);
        if v.flags & VM_LOCKED != 0 {
            Self::mm_locked(m, n);
        }
        ops.vma_opened(mm, vma);
        Ok(())
    }

    /// `find_vma()`: the first area with `vm_end > addr` (the one containing
    /// `addr`, or the next one above it), in `O(log n)`.
    pub fn find_vma(&self, mm: u64, addr: u64) -> Result<Option<u64>, KmmError> {
        self.mm_find_vma(self.mref(mm)?, addr)
    }

    /// `vma_lookup()`: the area containing `addr`.
    pub fn vma_lookup(&self, mm: u64, addr: u64) -> Result<Option<u64>, KmmError> {
        Ok(self.mm_lookup_v(self.mref(mm)?, addr)?.map(|v| v.at))
    }

    /// `find_vma_prev()`: [`Self::find_vma`] and the area before it (the
    /// last area when there is none at or above `addr`).
    pub fn find_vma_prev(
        &self,
        mm: u64,
        addr: u64,
    ) -> Result<(Option<u64>, Option<u64>), KmmError> {
        let m = self.mref(mm)?;
        match self.mm_find_vma_v(m, addr)? {
            Some(v) => Ok((Some(v.at), nz(v.prev))),
            None => Ok((None, self.mm_last_vma(m)?)),
        }
    }

    /// `find_vma_intersection()`: the first area overlapping `[start, end)`.
    pub fn find_vma_intersection(
        &self,
        mm: u64,
        start: u64,
        end: u64,
    ) -> Result<Option<u64>, KmmError> {
        let m = self.mref(mm)?;
        Ok(self
            .mm_find_vma_v(m, start)?
            .filter(|v| v.start < end)
            .map(|v| v.at))
    }

    /// The first area of `mm` (`mm->mmap`).
    pub fn vma_first(&self, mm: u64) -> Result<Option<u64>, KmmError> {
        Ok(nz(self.mref(mm)?.mmap.load(Relaxed)))
    }

    /// `vma->vm_next`.
    pub fn vma_next(&self, vma: u64) -> Result<Option<u64>, KmmError> {
        Ok(nz(self.vref(vma)?.vm_next.load(Relaxed)))
    }

    /// `vma->vm_prev`.
    pub fn vma_prev(&self, vma: u64) -> Result<Option<u64>, KmmError> {
        Ok(nz(self.vref(vma)?.vm_prev.load(Relaxed)))
    }

    /// A copy of one area's fields (what `show_map_vma()` reads for
    /// `/proc/PID/maps`).
    pub fn vma_info(&self, vma: u64) -> Result<VmaInfo, KmmError> {
        let r = self.vref(vma)?;
        Ok(VmaInfo {
            vma,
            vm_start: r.vm_start.load(Relaxed),
            vm_end: r.vm_end.load(Relaxed),
            vm_flags: VmaFlags::from_bits_retain(r.vm_flags.load(Relaxed)),
            vm_page_prot: PteFlags::from_bits_retain(r.vm_page_prot.load(Relaxed)),
            vm_pgoff: r.vm_pgoff.load(Relaxed),
            vm_file: r.vm_file.load(Relaxed),
            anon_vma: r.anon_vma.load(Relaxed),
        })
    }

    /// `for_each_vma()`: calls `f` for every area of `mm` in address order
    /// (the walk of `/proc/PID/maps`); stops at `f`'s first error. A list longer than
    /// `map_count` is reported as corrupt instead of walked for ever.
    pub fn for_each_vma(
        &self,
        mm: u64,
        f: &mut dyn FnMut(&VmaInfo) -> Result<(), KmmError>,
    ) -> Result<(), KmmError> {
        let m = self.mref(mm)?;
        let limit = m.map_count.load(Relaxed);
        let mut vma = m.mmap.load(Relaxed);
        let mut n = 0u64;
        while vma != 0 {
            n += 1;
            if n > limit {
                return Err(KmmError::BadObject {
                    addr: mm,
                    why: "VMA list longer than map_count",
                });
            }
            let info = self.vma_info(vma)?;
            f(&info)?;
            vma = self.vref(vma)?.vm_next.load(Relaxed);
        }
        Ok(())
    }

    /// `validate_mm()` (`CONFIG_DEBUG_VM_MAPLE_TREE`'s check of the old
    /// `CONFIG_DEBUG_VM_RB`): the list runs in address order over
    /// non-empty, page-aligned, non-overlapping areas of this mm with
    /// consistent back links; an in-order walk of the tree meets the same
    /// areas; `map_count` and `highest_vm_end` match; the tree is a valid
    /// red-black tree. Returns the number of areas, or
    /// [`KmmError::BadObject`] naming what is wrong.
    pub fn validate_mm(&self, mm: u64) -> Result<u64, KmmError> {
        let m = self.mref(mm)?;
        let bad = |addr, why| Err(KmmError::BadObject { addr, why });
        let count = m.map_count.load(Relaxed);
        let root = Self::vma_root_of(m);
        let mut node = rbtree::rb_first(&self.mem, &root)?;
        let (mut prev, mut last_end, mut n) = (0u64, 0u64, 0u64);
        let mut vma = m.mmap.load(Relaxed);
        while vma != 0 {
            n += 1;
            if n > count {
                return bad(mm, "more VMAs on the list than map_count");
            }
            let v = self.vload(vma)?;
            if v.prev != prev {
                return bad(vma, "vm_prev does not point at the previous VMA");
            }
            if v.mm != mm {
                return bad(vma, "vm_mm is not this mm");
            }
            if v.start >= v.end || self.mm_page_off(v.start | v.end) != 0 {
                return bad(vma, "empty or unaligned VMA");
            }
            if v.start < last_end {
                return bad(vma, "VMAs overlap or are out of order");
            }
            if node != Some(vma + VMA_RB_OFFSET) {
                return bad(vma, "the VMA tree and the VMA list disagree");
            }
            node = match node {
                Some(x) => rbtree::rb_next(&self.mem, x)?,
                None => None,
            };
            last_end = v.end;
            prev = vma;
            vma = v.next;
        }
        if node.is_some() {
            return bad(mm, "the VMA tree holds more VMAs than the list");
        }
        if n != count {
            return bad(mm, "map_count does not match the VMA list");
        }
        if m.highest_vm_end.load(Relaxed) != last_end {
            return bad(mm, "highest_vm_end is not the end of the last VMA");
        }
        rbtree::rb_check(&self.mem, &root)?;
        Ok(n)
    }

    /// `vm_stat_account()`: adds `npages` (negative to remove) to
    /// `total_vm` and to one of `exec_vm` (executable, not writable, not a
    /// stack), `stack_vm` (`VM_GROWSDOWN`) or `data_vm` (private writable,
    /// not a stack), as Linux counts them. `locked_vm` is kept separately
    /// by the callers that lock or unlock.
    pub fn vm_stat_account(&self, mm: u64, flags: VmaFlags, npages: i64) -> Result<(), KmmError> {
        Self::mm_stat(self.mref(mm)?, flags.bits(), npages);
        Ok(())
    }

    /// [`vm_get_page_prot`] (x86's `protection_map[]`).
    pub fn vm_get_page_prot(&self, flags: VmaFlags) -> PteFlags {
        vm_get_page_prot(flags)
    }

    // ================================================================
    // Merging and splitting

    /// Where `[addr, end)` lies: in a hole or inside one area.
    fn vma_place(&self, m: &MmStruct, addr: u64, end: u64) -> Result<Place, KmmError> {
        match self.mm_find_vma_v(m, addr)? {
            Some(v) if v.start >= end => {
                let prev = self.vload_opt(nz(v.prev))?;
                Ok(Place::Hole {
                    prev,
                    next: Some(v),
                })
            }
            Some(v) if v.start <= addr && end <= v.end => Ok(Place::Inside(v)),
            Some(_) => Err(KmmError::InvalidArgument {
                what: "vma_merge: the range straddles VMA boundaries",
            }),
            None => {
                let prev = self.vload_opt(self.mm_last_vma(m)?)?;
                Ok(Place::Hole { prev, next: None })
            }
        }
    }

    /// `is_mergeable_vma()` + `is_mergeable_anon_vma()`.
    fn vma_compatible(v: &V, flags: u64, file: u64, anon: u64) -> bool {
        (v.flags ^ flags) & !VM_SOFTDIRTY_BIT == 0
            && v.file == file
            && anon_compat(v.anon, anon)
            && v.flags & VM_SPECIAL_BITS == 0
    }

    /// `can_vma_merge_after()`: may `prev` grow up over a range at `pgoff`?
    fn vma_can_merge_after(&self, prev: &V, flags: u64, file: u64, anon: u64, pgoff: u64) -> bool {
        Self::vma_compatible(prev, flags, file, anon)
            && prev
                .pgoff
                .wrapping_add(self.mm_pages(prev.end.wrapping_sub(prev.start)))
                == pgoff
    }

    /// `can_vma_merge_before()`: may `next` grow down over a range ending
    /// at file page `pgoff_end`?
    fn vma_can_merge_before(next: &V, flags: u64, file: u64, anon: u64, pgoff_end: u64) -> bool {
        Self::vma_compatible(next, flags, file, anon) && next.pgoff == pgoff_end
    }

    /// `vma_merge()`: tries to make the range `[addr, end)` with these
    /// `vm_flags`, `anon_vma`, file and `vm_pgoff` part of a neighbouring
    /// area, without allocating. The range is either a hole (a new mapping:
    /// Linux's cases 1, 2, 3) or lies inside one existing area whose
    /// `vm_file` and `vm_pgoff` it carries (a flag change: cases 4 to 8).
    /// Returns the area that now covers the range, or `None` when nothing
    /// could merge (nothing changed). `VM_SPECIAL` areas never merge. Areas
    /// absorbed by the merge are unlinked, closed
    /// ([`MmOps::vma_closed`]) and freed.
    #[allow(clippy::too_many_arguments)] // Linux's vma_merge() arguments
    pub fn vma_merge(
        &self,
        mm: u64,
        addr: u64,
        end: u64,
        flags: VmaFlags,
        anon_vma: u64,
        file: u64,
        pgoff: u64,
        ops: &dyn MmOps,
    ) -> Result<Option<u64>, KmmError> {
        if addr >= end || self.mm_page_off(addr | end) != 0 {
            return Err(errno(Errno::EINVAL, "vma_merge: bad range"));
        }
        self.vma_merge_bits(mm, addr, end, flags.bits(), anon_vma, file, pgoff, ops)
    }

    #[allow(clippy::too_many_arguments)]
    fn vma_merge_bits(
        &self,
        mm: u64,
        addr: u64,
        end: u64,
        flags: u64,
        anon: u64,
        file: u64,
        pgoff: u64,
        ops: &dyn MmOps,
    ) -> Result<Option<u64>, KmmError> {
        if flags & VM_SPECIAL_BITS != 0 {
            return Ok(None);
        }
        let m = self.mref(mm)?;
        let pglen = self.mm_pages(end - addr);
        let pgoff_end = pgoff.wrapping_add(pglen);
        match self.vma_place(m, addr, end)? {
            Place::Hole { prev, next } => {
                let prev = prev.filter(|p| {
                    p.end == addr && self.vma_can_merge_after(p, flags, file, anon, pgoff)
                });
                let next = next.filter(|n| {
                    n.start == end && Self::vma_can_merge_before(n, flags, file, anon, pgoff_end)
                });
                match (prev, next) {
                    (Some(p), Some(n)) if anon_compat(p.anon, n.anon) => {
                        // Case 1: prev swallows the hole and next.
                        self.vma_absorb(mm, m, n.at, ops)?;
                        self.vma_store_end(m, p.at, n.end)?;
                        self.vma_set_anon(p.at, p.anon, n.anon | anon)?;
                        Ok(Some(p.at))
                    }
                    (Some(p), _) => {
                        // Case 2: prev grows up.
                        self.vma_store_end(m, p.at, end)?;
                        self.vma_set_anon(p.at, p.anon, anon)?;
                        Ok(Some(p.at))
                    }
                    (None, Some(n)) => {
                        // Case 3: next grows down.
                        let r = self.vref(n.at)?;
                        r.vm_start.store(addr, Relaxed);
                        r.vm_pgoff.store(pgoff, Relaxed);
                        self.vma_set_anon(n.at, n.anon, anon)?;
                        Ok(Some(n.at))
                    }
                    (None, None) => Ok(None),
                }
            }
            Place::Inside(v) => {
                let expect = v.pgoff.wrapping_add(self.mm_pages(addr - v.start));
                if file != v.file || pgoff != expect {
                    return Err(KmmError::InvalidArgument {
                        what: "vma_merge: file or pgoff differ from the VMA the range lies in",
                    });
                }
                let prev = match nz(v.prev) {
                    Some(p) if addr == v.start => Some(self.vload(p)?),
                    _ => None,
                };
                let next = match nz(v.next) {
                    Some(n) if end == v.end => Some(self.vload(n)?),
                    _ => None,
                };
                let prev = prev.filter(|p| {
                    p.end == addr && self.vma_can_merge_after(p, flags, file, anon, pgoff)
                });
                let next = next.filter(|n| {
                    n.start == end && Self::vma_can_merge_before(n, flags, file, anon, pgoff_end)
                });
                match (prev, next) {
                    (Some(p), Some(n)) if anon_compat(p.anon, n.anon) => {
                        // Case 6: prev swallows the area and next.
                        self.vma_absorb(mm, m, v.at, ops)?;
                        self.vma_absorb(mm, m, n.at, ops)?;
                        self.vma_store_end(m, p.at, n.end)?;
                        self.vma_set_anon(p.at, p.anon, v.anon | n.anon)?;
                        Ok(Some(p.at))
                    }
                    (Some(p), _) if end == v.end => {
                        // Case 7: prev swallows the whole area.
                        self.vma_absorb(mm, m, v.at, ops)?;
                        self.vma_store_end(m, p.at, end)?;
                        self.vma_set_anon(p.at, p.anon, v.anon)?;
                        Ok(Some(p.at))
                    }
                    (Some(p), _) => {
                        // Case 5: the boundary moves up.
                        self.vma_store_end(m, p.at, end)?;
                        let r = self.vref(v.at)?;
                        r.vm_start.store(end, Relaxed);
                        r.vm_pgoff.store(pgoff_end, Relaxed);
                        self.vma_set_anon(p.at, p.anon, v.anon)?;
                        Ok(Some(p.at))
                    }
                    (None, Some(n)) if addr == v.start => {
                        // Case 8: next swallows the whole area.
                        self.vma_absorb(mm, m, v.at, ops)?;
                        let r = self.vref(n.at)?;
                        r.vm_start.store(v.start, Relaxed);
                        r.vm_pgoff.store(v.pgoff, Relaxed);
                        self.vma_set_anon(n.at, n.anon, v.anon)?;
                        Ok(Some(n.at))
                    }
                    (None, Some(n)) => {
                        // Case 4: the boundary moves down.
                        self.vma_store_end(m, v.at, addr)?;
                        let r = self.vref(n.at)?;
                        r.vm_start.store(addr, Relaxed);
                        r.vm_pgoff.store(pgoff, Relaxed);
                        self.vma_set_anon(n.at, n.anon, v.anon)?;
                        Ok(Some(n.at))
                    }
                    (None, None) => Ok(None),
                }
            }
        }
    }

    /// The importer of a merge takes over an `anon_vma` it lacks.
    fn vma_set_anon(&self, vma: u64, cur: u64, other: u64) -> Result<(), KmmError> {
        if cur == 0 && other != 0 {
            self.vref(vma)?.anon_vma.store(other, Relaxed);
        }
        Ok(())
    }

    /// `split_vma()`: splits `vma` at `addr` (page aligned, strictly
    /// inside). With `new_below` the new object is the lower part and `vma`
    /// keeps `[addr, vm_end)`; otherwise the new object is the upper part.
    /// Returns the new object (opened with [`MmOps::vma_opened`]). `ENOMEM`
    /// when `map_count` has reached `vm.max_map_count` or no object can be
    /// allocated, `EINVAL` for an address not strictly inside.
    pub fn split_vma(
        &self,
        mm: u64,
        vma: u64,
        addr: u64,
        new_below: bool,
        ops: &dyn MmOps,
    ) -> Result<u64, KmmError> {
        let m = self.mref(mm)?;
        if m.map_count.load(Relaxed) >= self.sysctl_max_map_count() {
            return Err(errno(
                Errno::ENOMEM,
                "split_vma: too many VMAs (vm.max_map_count)",
            ));
        }
        self.__split_vma(mm, vma, addr, new_below, ops)
    }

    /// `__split_vma()`: [`Self::split_vma`] without the `map_count` limit.
    fn __split_vma(
        &self,
        mm: u64,
        vma: u64,
        addr: u64,
        new_below: bool,
        ops: &dyn MmOps,
    ) -> Result<u64, KmmError> {
        let m = self.mref(mm)?;
        let v = self.vload_of(mm, vma)?;
        if self.mm_page_off(addr) != 0 || addr <= v.start || addr >= v.end {
            return Err(errno(
                Errno::EINVAL,
                "split_vma: address not inside the VMA",
            ));
        }
        let new = self.vm_area_dup(&v)?;
        let (r, n) = (self.vref(vma)?, self.vref(new)?);
        let delta = self.mm_pages(addr - v.start);
        if new_below {
            n.vm_end.store(addr, Relaxed);
            r.vm_start.store(addr, Relaxed);
            r.vm_pgoff.store(v.pgoff.wrapping_add(delta), Relaxed);
        } else {
            n.vm_start.store(addr, Relaxed);
            n.vm_pgoff.store(v.pgoff.wrapping_add(delta), Relaxed);
            self.vma_store_end(m, vma, addr)?;
        }
        if let Err(e) = self.vma_link(mm, new) {
            // Only a corrupt tree gets here: put the area back as it was.
            r.vm_start.store(v.start, Relaxed);
            r.vm_pgoff.store(v.pgoff, Relaxed);
            let _ = self.vma_store_end(m, vma, v.end);
            let _ = self.vm_area_free(new);
            return Err(e);
        }
        ops.vma_opened(mm, new);
        Ok(new)
    }

    /// Gives `[start, end)` (inside `vma`) the flags `newflags`, merging
    /// with a neighbour when it can and splitting otherwise (the common
    /// part of `mprotect_fixup`, `mlock_fixup` and `madvise_update_vma`).
    /// Returns the area that covers the range afterwards.
    fn vma_modify_flags(
        &self,
        mm: u64,
        vma: u64,
        start: u64,
        end: u64,
        newflags: u64,
        ops: &dyn MmOps,
    ) -> Result<u64, KmmError> {
        let v = self.vload_of(mm, vma)?;
        let pgoff = v.pgoff.wrapping_add(self.mm_pages(start - v.start));
        if let Some(merged) =
            self.vma_merge_bits(mm, start, end, newflags, v.anon, v.file, pgoff, ops)?
        {
            return Ok(merged);
        }
        if start > v.start {
            self.split_vma(mm, vma, start, true, ops)?;
        }
        if end < v.end {
            self.split_vma(mm, vma, end, false, ops)?;
        }
        let r = self.vref(vma)?;
        r.vm_flags.store(newflags, Relaxed);
        r.vm_page_prot
            .store(page_prot_bits(newflags).bits(), Relaxed);
        Ok(vma)
    }

    // ================================================================
    // Unmapping

    /// `__do_munmap()` on a checked, page-aligned, non-empty range: splits
    /// the areas at both ends, then zaps, unlinks, unaccounts and frees
    /// every area inside.
    fn vma_unmap_range(
        &self,
        mm: u64,
        start: u64,
        end: u64,
        ops: &dyn MmOps,
    ) -> Result<(), KmmError> {
        let m = self.mref(mm)?;
        let Some(v) = self.mm_find_vma_v(m, start)? else {
            return Ok(());
        };
        if v.start >= end {
            return Ok(());
        }
        if start > v.start {
            // Let map_count go just above the limit for a split that frees
            // the middle, as Linux does.
            if end < v.end && m.map_count.load(Relaxed) >= self.sysctl_max_map_count() {
                return Err(errno(
                    Errno::ENOMEM,
                    "munmap: too many VMAs (vm.max_map_count)",
                ));
            }
            self.__split_vma(mm, v.at, start, false, ops)?;
        }
        if let Some(last) = self.mm_find_vma_v(m, end)? {
            if last.start < end {
                self.__split_vma(mm, last.at, end, true, ops)?;
            }
        }
        Self::mm_hiwater_vm(m);
        let limit = m.map_count.load(Relaxed).saturating_add(1);
        for _ in 0..limit {
            let Some(v) = self.mm_find_vma_v(m, start)? else {
                return Ok(());
            };
            if v.start >= end {
                return Ok(());
            }
            ops.zap_range(mm, v.at, v.start, v.end)?;
            self.vma_unlink(m, v.at)?;
            self.vma_unaccount(m, &v);
            ops.vma_closed(mm, v.at);
            self.vm_area_free(v.at)?;
        }
        Err(KmmError::BadObject {
            addr: mm,
            why: "munmap: more VMAs in the range than map_count",
        })
    }

    /// `do_munmap()`: unmaps `[start, start + len)` (`len` rounded up to
    /// pages). `EINVAL` for an unaligned `start`, a zero `len` or a range
    /// beyond `task_size`; `ENOMEM` when a split would go over
    /// `vm.max_map_count`. Unmapping nothing succeeds.
    pub fn do_munmap(
        &self,
        mm: u64,
        start: u64,
        len: u64,
        ops: &dyn MmOps,
    ) -> Result<(), KmmError> {
        let task_size = self.mref(mm)?.task_size.load(Relaxed);
        if self.mm_page_off(start) != 0 || start > task_size || len > task_size - start {
            return Err(errno(Errno::EINVAL, "munmap: bad address or length"));
        }
        let len = self.mm_page_align(len);
        if len == 0 {
            return Err(errno(Errno::EINVAL, "munmap: zero length"));
        }
        self.vma_unmap_range(mm, start, start + len, ops)
    }

    // ================================================================
    // Finding room

    /// `TASK_UNMAPPED_BASE`: where bottom-up placement starts
    /// (`PAGE_ALIGN(task_size / 3)`).
    fn task_unmapped_base(&self, task_size: u64) -> u64 {
        self.mm_page_align(task_size / 3)
    }

    /// `unmapped_area_topdown()`: the highest `len` bytes in `[low, high)`
    /// that no area (with the guard gap below a stack) covers.
    fn unmapped_area_topdown(
        &self,
        m: &MmStruct,
        len: u64,
        low: u64,
        high: u64,
    ) -> Result<Option<u64>, KmmError> {
        if high < low || len > high - low {
            return Ok(None);
        }
        let (mut prev, mut next) = self.vma_neighbours(m, high)?;
        let limit = m.map_count.load(Relaxed).saturating_add(2);
        for _ in 0..limit {
            let gap_end = next.map_or(high, |n| self.vm_start_gap(&n).min(high));
            let gap_start = prev.map_or(low, |p| p.end.max(low));
            if gap_end >= gap_start && gap_end - gap_start >= len {
                return Ok(Some(gap_end - len));
            }
            let Some(p) = prev else {
                return Ok(None);
            };
            if p.end <= low {
                return Ok(None);
            }
            next = Some(p);
            prev = self.vload_opt(nz(p.prev))?;
        }
        Err(KmmError::BadObject {
            addr: 0,
            why: "VMA list longer than map_count",
        })
    }

    /// `unmapped_area()`: the lowest `len` bytes in `[low, high)` that no
    /// area (with the guard gap below a stack) covers.
    fn unmapped_area(
        &self,
        m: &MmStruct,
        len: u64,
        low: u64,
        high: u64,
    ) -> Result<Option<u64>, KmmError> {
        if high < low || len > high - low {
            return Ok(None);
        }
        let (mut prev, mut next) = self.vma_neighbours(m, low)?;
        let limit = m.map_count.load(Relaxed).saturating_add(2);
        for _ in 0..limit {
            let gap_start = prev.map_or(low, |p| p.end.max(low));
            if gap_start >= high || high - gap_start < len {
                return Ok(None);
            }
            let gap_end = next.map_or(high, |n| self.vm_start_gap(&n).min(high));
            if gap_end >= gap_start && gap_end - gap_start >= len {
                return Ok(Some(gap_start));
            }
            let Some(n) = next else {
                return Ok(None);
            };
            prev = Some(n);
            next = self.vload_opt(nz(n.next))?;
        }
        Err(KmmError::BadObject {
            addr: 0,
            why: "VMA list longer than map_count",
        })
    }

    /// x86-64's `arch_get_unmapped_area_topdown()`: the hint when the range
    /// there is free, else the highest free range below `mmap_base`, else
    /// the lowest one above `TASK_UNMAPPED_BASE`.
    fn arch_get_unmapped_area_topdown(
        &self,
        m: &MmStruct,
        hint: u64,
        len: u64,
    ) -> Result<u64, KmmError> {
        let task_size = m.task_size.load(Relaxed);
        let hint = hint & !(self.mm_ps() - 1);
        if hint != 0 && hint <= task_size - len {
            match self.mm_find_vma_v(m, hint)? {
                None => return Ok(hint),
                Some(v) if hint + len <= self.vm_start_gap(&v) => return Ok(hint),
                Some(_) => {}
            }
        }
        let low = self.mm_ps().max(self.mmap_min_addr());
        let high = m.mmap_base.load(Relaxed).min(task_size);
        if let Some(a) = self.unmapped_area_topdown(m, len, low, high)? {
            return Ok(a);
        }
        let base = self.task_unmapped_base(task_size);
        if let Some(a) = self.unmapped_area(m, len, base, task_size)? {
            return Ok(a);
        }
        Err(errno(Errno::ENOMEM, "no room in the address space"))
    }

    /// `get_unmapped_area()`: where a mapping of `len` bytes goes. With
    /// `MAP_FIXED`, `addr` itself; otherwise x86-64's top-down search
    /// (`arch_get_unmapped_area_topdown`): the hint `addr` (rounded down to
    /// a page) when `[addr, addr + len)` is free and clear of a stack's
    /// guard gap, else the highest free range below `mmap_base`, else the
    /// lowest one from `TASK_UNMAPPED_BASE` (`task_size / 3`) up.
    /// `ENOMEM` when `len` does not fit below `task_size` or nothing is
    /// free, `EINVAL` for an unaligned fixed address, `EPERM` below
    /// `vm.mmap_min_addr`. `file` and `pgoff` only matter for cache
    /// colouring on other architectures.
    pub fn get_unmapped_area(
        &self,
        mm: u64,
        file: u64,
        addr: u64,
        len: u64,
        pgoff: u64,
        flags: u64,
    ) -> Result<u64, KmmError> {
        let _ = (file, pgoff);
        let m = self.mref(mm)?;
        let task_size = m.task_size.load(Relaxed);
        if len > task_size {
            return Err(errno(
                Errno::ENOMEM,
                "mapping larger than the address space",
            ));
        }
        let addr = if flags & MAP_FIXED != 0 {
            addr
        } else {
            self.arch_get_unmapped_area_topdown(m, addr, len)?
        };
        if addr > task_size - len {
            return Err(errno(Errno::ENOMEM, "mapping beyond TASK_SIZE"));
        }
        if self.mm_page_off(addr) != 0 {
            return Err(errno(Errno::EINVAL, "address not page aligned"));
        }
        if addr < self.mmap_min_addr() {
            return Err(errno(Errno::EPERM, "address below vm.mmap_min_addr"));
        }
        Ok(addr)
    }

    // ================================================================
    // mmap

    /// `mmap_region()`: replaces whatever is at `[addr, addr + len)` with a
    /// new mapping, merged with its neighbours when possible.
    #[allow(clippy::too_many_arguments)]
    fn mmap_region(
        &self,
        mm: u64,
        file: u64,
        addr: u64,
        len: u64,
        mut vm_flags: u64,
        pgoff: u64,
        ops: &dyn MmOps,
    ) -> Result<u64, KmmError> {
        let m = self.mref(mm)?;
        let end = addr + len;
        match self.vma_unmap_range(mm, addr, end, ops) {
            Ok(()) => {}
            Err(e) if is_errno(&e, Errno::EPERM) => return Err(e),
            Err(KmmError::Errno { .. }) => {
                return Err(errno(Errno::ENOMEM, "mmap: cannot unmap the old mapping"))
            }
            Err(e) => return Err(e),
        }
        // accountable_mapping(): private writable memory is charged.
        if vm_flags & (VM_NORESERVE | VM_SHARED | VM_WRITE) == VM_WRITE {
            vm_flags |= VM_ACCOUNT;
        }
        if self
            .vma_merge_bits(mm, addr, end, vm_flags, 0, file, pgoff, ops)?
            .is_none()
        {
            let vma = self.vm_area_alloc(mm)?;
            let r = self.vref(vma)?;
            r.vm_start.store(addr, Relaxed);
            r.vm_end.store(end, Relaxed);
            r.vm_flags.store(vm_flags, Relaxed);
            r.vm_page_prot
                .store(page_prot_bits(vm_flags).bits(), Relaxed);
            r.vm_pgoff.store(pgoff, Relaxed);
            r.vm_file.store(file, Relaxed);
            if let Err(e) = self.vma_link(mm, vma) {
                let _ = self.vm_area_free(vma);
                return Err(e);
            }
            ops.vma_opened(mm, vma);
        }
        let n = self.mm_pages(len) as i64;
        Self::mm_stat(m, vm_flags, n);
        if vm_flags & VM_LOCKED != 0 {
            Self::mm_locked(m, n);
        }
        Ok(addr)
    }

    /// `do_mmap()` (with `ksys_mmap_pgoff()`'s file check): maps `len`
    /// bytes with protection `prot` (`PROT_*`) and flags `flags` (`MAP_*`)
    /// at `addr` (a hint, or exact with `MAP_FIXED`), of `file` from page
    /// `pgoff` unless `MAP_ANONYMOUS` (which ignores `file`). Returns the
    /// address.
    ///
    /// Errors, as Linux: `EBADF` without a file and without
    /// `MAP_ANONYMOUS`; `EINVAL` for a zero `len`, an unaligned fixed
    /// address, a bad mapping type, `MAP_GROWSDOWN` on a file or a shared
    /// mapping, `MAP_HUGETLB` on a file (and unknown flags with
    /// `MAP_SHARED_VALIDATE`, where Linux says `EOPNOTSUPP`); `ENOMEM` when
    /// `len` rounds up past the end of memory, there are too many areas, or
    /// nothing is free (and for anonymous `MAP_HUGETLB`: no huge pages are
    /// reserved); `EOVERFLOW` when the file offset overflows; `EEXIST` for
    /// `MAP_FIXED_NOREPLACE` over a mapping; `EACCES` for a file not open
    /// for reading, or a shared writable mapping of a file not open for
    /// writing; `ENODEV` for a file that cannot be mapped; `EPERM` below
    /// `vm.mmap_min_addr`.
    ///
    /// `MAP_FIXED` unmaps what is there first ([`MmOps::zap_range`]);
    /// `MAP_POPULATE` and `VM_LOCKED` call [`MmOps::populate`] on the new
    /// range.
    #[allow(clippy::too_many_arguments)] // the system call's arguments
    pub fn do_mmap(
        &self,
        mm: u64,
        file: Option<MmapFile>,
        addr: u64,
        len: u64,
        prot: u64,
        flags: u64,
        pgoff: u64,
        ops: &dyn MmOps,
    ) -> Result<u64, KmmError> {
        let m = self.mref(mm)?;
        let file = if flags & MAP_ANONYMOUS != 0 {
            None
        } else {
            Some(file.ok_or(errno(Errno::EBADF, "mmap: no file and not MAP_ANONYMOUS"))?)
        };
        if flags & MAP_HUGETLB != 0 {
            return Err(match file {
                Some(_) => errno(
                    Errno::EINVAL,
                    "mmap: MAP_HUGETLB on a file not in hugetlbfs",
                ),
                None => errno(
                    Errno::ENOMEM,
                    "mmap: MAP_HUGETLB but no huge pages are reserved",
                ),
            });
        }
        if len == 0 {
            return Err(errno(Errno::EINVAL, "mmap: zero length"));
        }
        let mut flags = flags;
        if flags & MAP_FIXED_NOREPLACE != 0 {
            flags |= MAP_FIXED;
        }
        let addr = if flags & MAP_FIXED == 0 {
            // round_hint_to_min()
            let hint = addr & !(self.mm_ps() - 1);
            if hint != 0 && hint < self.mmap_min_addr() {
                self.mm_page_align(self.mmap_min_addr())
            } else {
                hint
            }
        } else {
            addr
        };
        let len = self.mm_page_align(len);
        if len == 0 {
            return Err(errno(Errno::ENOMEM, "mmap: length overflows"));
        }
        if pgoff.checked_add(self.mm_pages(len)).is_none() {
            return Err(errno(Errno::EOVERFLOW, "mmap: offset + length overflows"));
        }
        if m.map_count.load(Relaxed) > self.sysctl_max_map_count() {
            return Err(errno(
                Errno::ENOMEM,
                "mmap: too many VMAs (vm.max_map_count)",
            ));
        }
        let mapping = file.map_or(0, |f| f.mapping);
        let addr = self.get_unmapped_area(mm, mapping, addr, len, pgoff, flags)?;
        if flags & MAP_FIXED_NOREPLACE != 0 && self.mm_intersects(m, addr, addr + len)? {
            return Err(errno(
                Errno::EEXIST,
                "mmap: MAP_FIXED_NOREPLACE over an existing mapping",
            ));
        }
        let mut vm_flags = calc_vm_prot_bits(prot)
            | calc_vm_flag_bits(flags)
            | m.def_flags.load(Relaxed)
            | VM_MAYREAD
            | VM_MAYWRITE
            | VM_MAYEXEC;
        let mut pgoff = pgoff;
        match file {
            Some(f) => {
                // file_mmap_ok()
                let max = MAX_LFS_FILESIZE;
                if len > max || pgoff > self.mm_pages(max - len) {
                    return Err(errno(
                        Errno::EOVERFLOW,
                        "mmap: beyond the largest file offset",
                    ));
                }
                match flags & MAP_TYPE {
                    t @ (MAP_SHARED | MAP_SHARED_VALIDATE) => {
                        if t == MAP_SHARED {
                            flags &= LEGACY_MAP_MASK;
                        } else if flags & !LEGACY_MAP_MASK != 0 {
                            return Err(errno(
                                Errno::EINVAL,
                                "mmap: flag not supported with MAP_SHARED_VALIDATE (Linux: EOPNOTSUPP)",
                            ));
                        }
                        if prot & PROT_WRITE != 0 && !f.writable {
                            return Err(errno(
                                Errno::EACCES,
                                "mmap: shared writable mapping of a file not open for writing",
                            ));
                        }
                        vm_flags |= VM_SHARED | VM_MAYSHARE;
                        if !f.writable {
                            vm_flags &= !(VM_MAYWRITE | VM_SHARED);
                        }
                    }
                    MAP_PRIVATE => {}
                    _ => return Err(errno(Errno::EINVAL, "mmap: bad mapping type")),
                }
                if !f.readable {
                    return Err(errno(Errno::EACCES, "mmap: file not open for reading"));
                }
                if f.mapping == 0 {
                    return Err(errno(Errno::ENODEV, "mmap: the file cannot be mapped"));
                }
                if vm_flags & VM_GROWSDOWN != 0 {
                    return Err(errno(Errno::EINVAL, "mmap: MAP_GROWSDOWN on a file"));
                }
            }
            None => match flags & MAP_TYPE {
                MAP_SHARED => {
                    if vm_flags & VM_GROWSDOWN != 0 {
                        return Err(errno(Errno::EINVAL, "mmap: shared MAP_GROWSDOWN"));
                    }
                    pgoff = 0;
                    vm_flags |= VM_SHARED | VM_MAYSHARE;
                }
                MAP_PRIVATE => pgoff = self.mm_pages(addr),
                _ => return Err(errno(Errno::EINVAL, "mmap: bad mapping type")),
            },
        }
        if flags & MAP_NORESERVE != 0 {
            vm_flags |= VM_NORESERVE;
        }
        let addr = self.mmap_region(mm, mapping, addr, len, vm_flags, pgoff, ops)?;
        if vm_flags & VM_LOCKED != 0 || flags & (MAP_POPULATE | MAP_NONBLOCK) == MAP_POPULATE {
            // mm_populate(): errors are ignored.
            let _ = self.vma_populate(mm, addr, addr + len, ops);
        }
        Ok(addr)
    }

    /// `__mm_populate()`: [`MmOps::populate`] on every area piece of
    /// `[start, end)` but `VM_IO`/`VM_PFNMAP` ones; stops at the first error.
    fn vma_populate(&self, mm: u64, start: u64, end: u64, ops: &dyn MmOps) -> Result<(), KmmError> {
        let m = self.mref(mm)?;
        let mut addr = start;
        let limit = m.map_count.load(Relaxed).saturating_add(1);
        for _ in 0..limit {
            if addr >= end {
                break;
            }
            let Some(v) = self.mm_find_vma_v(m, addr)? else {
                break;
            };
            if v.start >= end {
                break;
            }
            let nstart = addr.max(v.start);
            let nend = end.min(v.end);
            if v.flags & (VM_IO | VM_PFNMAP) == 0 {
                ops.populate(mm, v.at, nstart, nend)?;
            }
            addr = nend;
        }
        Ok(())
    }

    // ================================================================
    // mprotect

    /// `mprotect()`: gives `[start, start + len)` (`len` rounded up) the
    /// protection `prot`. The range must be mapped from `start` on.
    /// `EINVAL` for an unaligned `start`, unknown `prot` bits, both
    /// `PROT_GROWSDOWN` and `PROT_GROWSUP`, `PROT_GROWSUP`, or
    /// `PROT_GROWSDOWN` on an area that does not grow down; `ENOMEM` when
    /// the range overflows, starts unmapped or runs into a hole; `EACCES`
    /// when an area's `VM_MAY*` bits forbid the new protection. As in Linux
    /// the areas before a hole or a refused area keep their change.
    /// Areas are split and merged as needed; [`MmOps::change_protection`]
    /// runs for each piece whose flags changed.
    pub fn do_mprotect(
        &self,
        mm: u64,
        start: u64,
        len: u64,
        prot: u64,
        ops: &dyn MmOps,
    ) -> Result<(), KmmError> {
        let m = self.mref(mm)?;
        let grows = prot & (PROT_GROWSDOWN | PROT_GROWSUP);
        let prot = prot & !grows;
        if grows == PROT_GROWSDOWN | PROT_GROWSUP {
            return Err(errno(
                Errno::EINVAL,
                "mprotect: both PROT_GROWSDOWN and PROT_GROWSUP",
            ));
        }
        if self.mm_page_off(start) != 0 {
            return Err(errno(Errno::EINVAL, "mprotect: start not page aligned"));
        }
        if len == 0 {
            return Ok(());
        }
        let len = self.mm_page_align(len);
        let end = start.wrapping_add(len);
        if end <= start {
            return Err(errno(Errno::ENOMEM, "mprotect: range overflows"));
        }
        if prot & !(PROT_READ | PROT_WRITE | PROT_EXEC | PROT_SEM) != 0 {
            return Err(errno(Errno::EINVAL, "mprotect: unknown protection bits"));
        }
        let Some(first) = self.mm_find_vma_v(m, start)? else {
            return Err(errno(Errno::ENOMEM, "mprotect: range not mapped"));
        };
        let mut start = start;
        if grows & PROT_GROWSDOWN != 0 {
            if first.start >= end {
                return Err(errno(Errno::ENOMEM, "mprotect: range not mapped"));
            }
            start = first.start;
            if first.flags & VM_GROWSDOWN == 0 {
                return Err(errno(
                    Errno::EINVAL,
                    "mprotect: PROT_GROWSDOWN on an area that does not grow down",
                ));
            }
        } else {
            if first.start > start {
                return Err(errno(Errno::ENOMEM, "mprotect: range not mapped"));
            }
            if grows & PROT_GROWSUP != 0 {
                // Linux extends the range to the area's end, then finds
                // that no x86 area grows up.
                return Err(errno(
                    Errno::EINVAL,
                    "mprotect: PROT_GROWSUP (no area grows up on x86)",
                ));
            }
        }
        let prot_bits = calc_vm_prot_bits(prot);
        let mut addr = start;
        let mut v = first;
        let limit = m
            .map_count
            .load(Relaxed)
            .saturating_mul(2)
            .saturating_add(2);
        for _ in 0..limit {
            let newflags = prot_bits | (v.flags & !VM_ACCESS_FLAGS);
            // newflags >> 4 puts VM_MAY* where VM_* are.
            if (newflags & !(newflags >> 4)) & VM_ACCESS_FLAGS != 0 {
                return Err(errno(
                    Errno::EACCES,
                    "mprotect: protection not allowed (VM_MAY*)",
                ));
            }
            let piece_end = v.end.min(end);
            self.mprotect_fixup(mm, v.at, addr, piece_end, newflags, ops)?;
            addr = piece_end;
            if addr >= end {
                return Ok(());
            }
            v = match self.mm_find_vma_v(m, addr)? {
                Some(n) if n.start <= addr => n,
                _ => return Err(errno(Errno::ENOMEM, "mprotect: hole in the range")),
            };
        }
        Err(KmmError::BadObject {
            addr: mm,
            why: "mprotect: more VMAs in the range than map_count",
        })
    }

    /// `mprotect_fixup()`.
    fn mprotect_fixup(
        &self,
        mm: u64,
        vma: u64,
        start: u64,
        end: u64,
        newflags: u64,
        ops: &dyn MmOps,
    ) -> Result<(), KmmError> {
        let m = self.mref(mm)?;
        let v = self.vload(vma)?;
        let old = v.flags;
        let mut newflags = newflags;
        if newflags == old {
            return Ok(());
        }
        if newflags & VM_WRITE != 0 {
            if old & (VM_ACCOUNT | VM_WRITE | VM_SHARED | VM_NORESERVE) == 0 {
                newflags |= VM_ACCOUNT;
            }
        } else if old & VM_ACCOUNT != 0 && v.is_anon_private() && v.anon == 0 {
            // Linux 6.x: an anonymous area without pages gives its charge back.
            newflags &= !VM_ACCOUNT;
        }
        let nv = self.vma_modify_flags(mm, vma, start, end, newflags, ops)?;
        let n = self.mm_pages(end - start) as i64;
        Self::mm_stat(m, old, -n);
        Self::mm_stat(m, newflags, n);
        ops.change_protection(mm, nv, start, end, page_prot_bits(newflags))?;
        if old & (VM_WRITE | VM_SHARED | VM_LOCKED) == VM_LOCKED && newflags & VM_WRITE != 0 {
            let _ = ops.populate(mm, nv, start, end);
        }
        Ok(())
    }

    // ================================================================
    // mlock

    /// `mlock()`: sets `VM_LOCKED` on `[start, start + len)` (`start`
    /// rounded down, the end up), counts the newly locked pages in
    /// `locked_vm`, then populates the range ([`MmOps::populate`]).
    /// `EINVAL` when the range wraps; `ENOMEM` when it is not fully mapped
    /// (the areas before the hole stay locked, as in Linux). `VM_SPECIAL`
    /// areas are left alone. No `RLIMIT_MEMLOCK` is enforced.
    pub fn do_mlock(&self, mm: u64, start: u64, len: u64, ops: &dyn MmOps) -> Result<(), KmmError> {
        let len = self.mm_page_align(len.wrapping_add(self.mm_page_off(start)));
        let start = start & !(self.mm_ps() - 1);
        self.apply_vma_lock_flags(mm, start, len, VM_LOCKED, ops)?;
        if len == 0 {
            return Ok(());
        }
        self.vma_populate(mm, start, start.wrapping_add(len), ops)
            .map_err(|e| match e {
                // __mlock_posix_error_return()
                KmmError::Errno {
                    errno: Errno::EFAULT,
                    ..
                } => errno(Errno::ENOMEM, "mlock: cannot fault the range in"),
                KmmError::Errno {
                    errno: Errno::ENOMEM,
                    ..
                }
                | KmmError::NoMemory { .. } => {
                    errno(Errno::EAGAIN, "mlock: out of memory faulting the range in")
                }
                e => e,
            })
    }

    /// `munlock()`: clears `VM_LOCKED` on `[start, start + len)` and takes
    /// the pages out of `locked_vm`. Errors as [`Self::do_mlock`].
    pub fn do_munlock(
        &self,
        mm: u64,
        start: u64,
        len: u64,
        ops: &dyn MmOps,
    ) -> Result<(), KmmError> {
        let len = self.mm_page_align(len.wrapping_add(self.mm_page_off(start)));
        let start = start & !(self.mm_ps() - 1);
        self.apply_vma_lock_flags(mm, start, len, 0, ops)
    }

    /// `apply_vma_lock_flags()`.
    fn apply_vma_lock_flags(
        &self,
        mm: u64,
        start: u64,
        len: u64,
        flags: u64,
        ops: &dyn MmOps,
    ) -> Result<(), KmmError> {
        let m = self.mref(mm)?;
        let end = start.wrapping_add(len);
        if end < start {
            return Err(errno(Errno::EINVAL, "mlock: range wraps"));
        }
        if end == start {
            return Ok(());
        }
        let Some(mut v) = self.mm_lookup_v(m, start)? else {
            return Err(errno(Errno::ENOMEM, "mlock: range not mapped"));
        };
        let mut addr = start;
        let limit = m
            .map_count
            .load(Relaxed)
            .saturating_mul(2)
            .saturating_add(2);
        for _ in 0..limit {
            let newflags = (v.flags & !VM_LOCKED) | flags;
            let piece_end = v.end.min(end);
            self.mlock_fixup(mm, v.at, addr, piece_end, newflags, ops)?;
            addr = piece_end;
            if addr >= end {
                return Ok(());
            }
            v = match self.mm_lookup_v(m, addr)? {
                Some(n) => n,
                None => return Err(errno(Errno::ENOMEM, "mlock: hole in the range")),
            };
        }
        Err(KmmError::BadObject {
            addr: mm,
            why: "mlock: more VMAs in the range than map_count",
        })
    }

    /// `mlock_fixup()`.
    fn mlock_fixup(
        &self,
        mm: u64,
        vma: u64,
        start: u64,
        end: u64,
        newflags: u64,
        ops: &dyn MmOps,
    ) -> Result<(), KmmError> {
        let m = self.mref(mm)?;
        let old = self.vload(vma)?.flags;
        if newflags == old || old & VM_SPECIAL_BITS != 0 {
            return Ok(());
        }
        self.vma_modify_flags(mm, vma, start, end, newflags, ops)?;
        let n = self.mm_pages(end - start) as i64;
        if newflags & VM_LOCKED == 0 {
            Self::mm_locked(m, -n);
        } else if old & VM_LOCKED == 0 {
            Self::mm_locked(m, n);
        }
        Ok(())
    }

    // ================================================================
    // madvise

    /// `madvise()` for `MADV_NORMAL`, `MADV_RANDOM`, `MADV_SEQUENTIAL`
    /// (the read-ahead bits [`VM_RAND_READ`], [`VM_SEQ_READ`]),
    /// `MADV_WILLNEED` (nothing to do here), `MADV_DONTNEED`
    /// ([`MmOps::zap_range`] on each area piece; the areas stay) and
    /// `MADV_DONTFORK` / `MADV_DOFORK` (`VM_DONTCOPY`, splitting and
    /// merging). `EINVAL` for other advice, an unaligned `start`, a wrapping
    /// range, `MADV_DONTNEED` on a locked or `VM_PFNMAP` area, `MADV_DOFORK`
    /// on `VM_IO`; `ENOMEM` when part of the range is unmapped — after the
    /// advice was applied to all the mapped parts, as Linux does.
    pub fn do_madvise(
        &self,
        mm: u64,
        start: u64,
        len: u64,
        advice: u64,
        ops: &dyn MmOps,
    ) -> Result<(), KmmError> {
        let m = self.mref(mm)?;
        if !matches!(
            advice,
            MADV_NORMAL
                | MADV_RANDOM
                | MADV_SEQUENTIAL
                | MADV_WILLNEED
                | MADV_DONTNEED
                | MADV_DONTFORK
                | MADV_DOFORK
        ) {
            return Err(errno(Errno::EINVAL, "madvise: unknown advice"));
        }
        if self.mm_page_off(start) != 0 {
            return Err(errno(Errno::EINVAL, "madvise: start not page aligned"));
        }
        let alen = self.mm_page_align(len);
        if len != 0 && alen == 0 {
            return Err(errno(Errno::EINVAL, "madvise: length overflows"));
        }
        let end = start.wrapping_add(alen);
        if end < start {
            return Err(errno(Errno::EINVAL, "madvise: range wraps"));
        }
        if end == start {
            return Ok(());
        }
        let mut unmapped = false;
        let mut addr = start;
        let limit = m
            .map_count
            .load(Relaxed)
            .saturating_mul(2)
            .saturating_add(2);
        for _ in 0..limit {
            let Some(v) = self.mm_find_vma_v(m, addr)? else {
                return Err(errno(Errno::ENOMEM, "madvise: range not mapped"));
            };
            if addr < v.start {
                unmapped = true;
                addr = v.start;
                if addr >= end {
                    break;
                }
            }
            let piece_end = v.end.min(end);
            self.madvise_vma(mm, &v, addr, piece_end, advice, ops)?;
            addr = piece_end;
            if addr >= end {
                break;
            }
        }
        if unmapped {
            Err(errno(
                Errno::ENOMEM,
                "madvise: part of the range is not mapped",
            ))
        } else {
            Ok(())
        }
    }

    /// `madvise_vma_behavior()` on one area piece.
    fn madvise_vma(
        &self,
        mm: u64,
        v: &V,
        start: u64,
        end: u64,
        advice: u64,
        ops: &dyn MmOps,
    ) -> Result<(), KmmError> {
        let newflags = match advice {
            MADV_WILLNEED => return Ok(()),
            MADV_DONTNEED => {
                if v.flags & (VM_LOCKED | VM_PFNMAP) != 0 {
                    return Err(errno(
                        Errno::EINVAL,
                        "madvise: MADV_DONTNEED on a locked or PFN-mapped area",
                    ));
                }
                return ops.zap_range(mm, v.at, start, end);
            }
            MADV_NORMAL => v.flags & !(VM_SEQ_READ_BIT | VM_RAND_READ_BIT),
            MADV_SEQUENTIAL => (v.flags & !VM_RAND_READ_BIT) | VM_SEQ_READ_BIT,
            MADV_RANDOM => (v.flags & !VM_SEQ_READ_BIT) | VM_RAND_READ_BIT,
            MADV_DONTFORK => v.flags | VM_DONTCOPY,
            MADV_DOFORK => {
                if v.flags & VM_IO != 0 {
                    return Err(errno(Errno::EINVAL, "madvise: MADV_DOFORK on a VM_IO area"));
                }
                v.flags & !VM_DONTCOPY
            }
            _ => return Err(errno(Errno::EINVAL, "madvise: unknown advice")),
        };
        if newflags != v.flags {
            self.vma_modify_flags(mm, v.at, start, end, newflags, ops)?;
        }
        Ok(())
    }

    // ================================================================
    // brk

    /// `brk()`: moves the end of the heap to `brk`. Returns the new break
    /// on success and the old one on failure, as the system call does.
    /// Below `start_brk` it fails; shrinking unmaps `[PAGE_ALIGN(brk),
    /// PAGE_ALIGN(old brk))`; growing needs `PAGE_ALIGN(brk)` plus a page
    /// to stay below the next area (and a stack's guard gap) and extends
    /// the heap area, merging it with an adjacent anonymous area of the
    /// same flags (`VM_DATA_DEFAULT_FLAGS | VM_ACCOUNT` and `def_flags`).
    pub fn do_brk(&self, mm: u64, brk: u64, ops: &dyn MmOps) -> u64 {
        let Ok(m) = self.mref(mm) else {
            return 0;
        };
        let origbrk = m.brk.load(Relaxed);
        match self.brk_inner(mm, m, brk, ops) {
            Ok(b) => b,
            Err(_) => {
                m.brk.store(origbrk, Relaxed);
                origbrk
            }
        }
    }

    fn brk_inner(&self, mm: u64, m: &MmStruct, brk: u64, ops: &dyn MmOps) -> Result<u64, KmmError> {
        let fail = || errno(Errno::ENOMEM, "brk refused");
        let cur = m.brk.load(Relaxed);
        if brk < m.start_brk.load(Relaxed) || brk > m.task_size.load(Relaxed) {
            return Err(fail());
        }
        let newbrk = self.mm_page_align(brk);
        let oldbrk = self.mm_page_align(cur);
        if oldbrk == newbrk {
            m.brk.store(brk, Relaxed);
            return Ok(brk);
        }
        if brk <= cur {
            // Always allow shrinking.
            m.brk.store(brk, Relaxed);
            self.vma_unmap_range(mm, newbrk, oldbrk, ops)?;
            return Ok(brk);
        }
        if let Some(next) = self.mm_find_vma_v(m, oldbrk)? {
            if newbrk + self.mm_ps() > self.vm_start_gap(&next) {
                return Err(fail());
            }
        }
        self.do_brk_flags(mm, oldbrk, newbrk - oldbrk, ops)?;
        m.brk.store(brk, Relaxed);
        if m.def_flags.load(Relaxed) & VM_LOCKED != 0 {
            let _ = self.vma_populate(mm, oldbrk, newbrk, ops);
        }
        Ok(brk)
    }

    /// `do_brk_flags()`: an anonymous private mapping of the heap's kind at
    /// `[addr, addr + len)`, merged with the area below when it can.
    fn do_brk_flags(&self, mm: u64, addr: u64, len: u64, ops: &dyn MmOps) -> Result<(), KmmError> {
        let m = self.mref(mm)?;
        let flags = VmaFlags::VM_DATA_DEFAULT_FLAGS.bits() | VM_ACCOUNT | m.def_flags.load(Relaxed);
        self.get_unmapped_area(mm, 0, addr, len, 0, MAP_FIXED)?;
        let end = addr + len;
        self.vma_unmap_range(mm, addr, end, ops)?;
        if m.map_count.load(Relaxed) > self.sysctl_max_map_count() {
            return Err(errno(
                Errno::ENOMEM,
                "brk: too many VMAs (vm.max_map_count)",
            ));
        }
        let pgoff = self.mm_pages(addr);
        if self
            .vma_merge_bits(mm, addr, end, flags, 0, 0, pgoff, ops)?
            .is_none()
        {
            let vma = self.vm_area_alloc(mm)?;
            let r = self.vref(vma)?;
            r.vm_start.store(addr, Relaxed);
            r.vm_end.store(end, Relaxed);
            r.vm_flags.store(flags, Relaxed);
            r.vm_page_prot.store(page_prot_bits(flags).bits(), Relaxed);
            r.vm_pgoff.store(pgoff, Relaxed);
            if let Err(e) = self.vma_link(mm, vma) {
                let _ = self.vm_area_free(vma);
                return Err(e);
            }
            ops.vma_opened(mm, vma);
        }
        let n = self.mm_pages(len) as i64;
        Self::mm_stat(m, flags, n);
        if flags & VM_LOCKED != 0 {
            Self::mm_locked(m, n);
        }
        Ok(())
    }

    // ================================================================
    // mremap

    /// `mremap()`: resizes the mapping of `old_len` bytes at `addr` to
    /// `new_len` bytes (both rounded up to pages), moving it when
    /// `MREMAP_MAYMOVE` allows and it cannot grow in place; `MREMAP_FIXED`
    /// moves it to exactly `new_addr` (replacing what is there);
    /// `MREMAP_DONTUNMAP` moves the pages but leaves the old range mapped
    /// (and unlocked). Returns the new address.
    ///
    /// Shrinking unmaps the tail; growing in place needs the range after
    /// the area free and the old range to reach the area's end; otherwise
    /// the area is copied to a new place ([`Self::get_unmapped_area`]), its
    /// pages moved ([`MmOps::move_page_tables`]) and the old range unmapped.
    /// An `old_len` of 0 duplicates a shared mapping.
    ///
    /// Errors as Linux: `EINVAL` for unknown flags, `MREMAP_FIXED` or
    /// `MREMAP_DONTUNMAP` without `MREMAP_MAYMOVE`, `MREMAP_DONTUNMAP` with
    /// different lengths or on a `VM_DONTEXPAND`/`VM_PFNMAP` area, unaligned
    /// addresses, a zero `new_len`, overlapping old and new ranges, a new
    /// range beyond `task_size`, an `old_len` of 0 on a private mapping or a
    /// file offset that overflows; `EFAULT` when `addr` is not mapped, the
    /// old range crosses the end of its area, or a `VM_DONTEXPAND` or
    /// `VM_PFNMAP` area would grow; `ENOMEM` when it cannot grow in place
    /// and may not move, when no room is free, or for too many areas.
    #[allow(clippy::too_many_arguments)] // the system call's arguments
    pub fn do_mremap(
        &self,
        mm: u64,
        addr: u64,
        old_len: u64,
        new_len: u64,
        flags: u64,
        new_addr: u64,
        ops: &dyn MmOps,
    ) -> Result<u64, KmmError> {
        let m = self.mref(mm)?;
        if flags & !(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP) != 0 {
            return Err(errno(Errno::EINVAL, "mremap: unknown flags"));
        }
        if flags & MREMAP_FIXED != 0 && flags & MREMAP_MAYMOVE == 0 {
            return Err(errno(
                Errno::EINVAL,
                "mremap: MREMAP_FIXED without MREMAP_MAYMOVE",
            ));
        }
        if flags & MREMAP_DONTUNMAP != 0 && (flags & MREMAP_MAYMOVE == 0 || old_len != new_len) {
            return Err(errno(
                Errno::EINVAL,
                "mremap: MREMAP_DONTUNMAP needs MREMAP_MAYMOVE and equal lengths",
            ));
        }
        if self.mm_page_off(addr) != 0 {
            return Err(errno(Errno::EINVAL, "mremap: address not page aligned"));
        }
        let old_len = self.mm_page_align(old_len);
        let new_len = self.mm_page_align(new_len);
        if new_len == 0 {
            return Err(errno(Errno::EINVAL, "mremap: zero new length"));
        }
        // Linux 6.x looks the area up first: an unmapped address is EFAULT
        // even for a shrink or a same-size call.
        if self.vma_lookup(mm, addr)?.is_none() {
            return Err(errno(Errno::EFAULT, "mremap: address not mapped"));
        }
        if flags & (MREMAP_FIXED | MREMAP_DONTUNMAP) != 0 {
            return self.mremap_to(mm, addr, old_len, new_addr, new_len, flags, ops);
        }
        if old_len >= new_len {
            // Always allow a shrinking remap.
            let r = self.do_munmap(mm, addr.wrapping_add(new_len), old_len - new_len, ops);
            if let Err(e) = r {
                if old_len != new_len {
                    return Err(e);
                }
            }
            return Ok(addr);
        }
        let v = self.vma_to_resize(m, addr, old_len, new_len, flags)?;
        if old_len == v.end - addr {
            let delta = new_len - old_len;
            if self.vma_expandable(m, &v, delta)? {
                let new_end = v.end + delta;
                let pgoff_end = v
                    .pgoff
                    .wrapping_add(self.mm_pages(v.end.wrapping_sub(v.start)));
                if self
                    .vma_merge_bits(mm, v.end, new_end, v.flags, v.anon, v.file, pgoff_end, ops)?
                    .is_none()
                {
                    self.vma_store_end(m, v.at, new_end)?;
                }
                let n = self.mm_pages(delta) as i64;
                Self::mm_stat(m, v.flags, n);
                if v.flags & VM_LOCKED != 0 {
                    Self::mm_locked(m, n);
                    let _ = self.vma_populate(mm, addr + old_len, addr + new_len, ops);
                }
                return Ok(addr);
            }
        }
        if flags & MREMAP_MAYMOVE == 0 {
            return Err(errno(
                Errno::ENOMEM,
                "mremap: cannot grow in place and may not move",
            ));
        }
        let map_flags = if v.flags & VM_MAYSHARE != 0 {
            MAP_SHARED
        } else {
            0
        };
        let pgoff = v.pgoff.wrapping_add(self.mm_pages(addr - v.start));
        let to = self.get_unmapped_area(mm, v.file, 0, new_len, pgoff, map_flags)?;
        self.move_vma(mm, v.at, addr, old_len, new_len, to, flags, ops)
    }

    /// `mremap_to()`: the `MREMAP_FIXED` / `MREMAP_DONTUNMAP` path.
    #[allow(clippy::too_many_arguments)]
    fn mremap_to(
        &self,
        mm: u64,
        addr: u64,
        old_len: u64,
        new_addr: u64,
        new_len: u64,
        flags: u64,
        ops: &dyn MmOps,
    ) -> Result<u64, KmmError> {
        let m = self.mref(mm)?;
        let task_size = m.task_size.load(Relaxed);
        if self.mm_page_off(new_addr) != 0 {
            return Err(errno(Errno::EINVAL, "mremap: new address not page aligned"));
        }
        if new_len > task_size || new_addr > task_size - new_len {
            return Err(errno(Errno::EINVAL, "mremap: new range beyond TASK_SIZE"));
        }
        if addr.saturating_add(old_len) > new_addr && new_addr + new_len > addr {
            return Err(errno(Errno::EINVAL, "mremap: old and new ranges overlap"));
        }
        if m.map_count.load(Relaxed).saturating_add(2)
            >= self.sysctl_max_map_count().saturating_sub(3)
        {
            return Err(errno(
                Errno::ENOMEM,
                "mremap: too many VMAs (vm.max_map_count)",
            ));
        }
        if flags & MREMAP_FIXED != 0 {
            self.do_munmap(mm, new_addr, new_len, ops)?;
        }
        let mut old_len = old_len;
        if old_len > new_len {
            self.do_munmap(mm, addr.wrapping_add(new_len), old_len - new_len, ops)?;
            old_len = new_len;
        }
        let v = self.vma_to_resize(m, addr, old_len, new_len, flags)?;
        let mut map_flags = 0;
        if flags & MREMAP_FIXED != 0 {
            map_flags |= MAP_FIXED;
        }
        if v.flags & VM_MAYSHARE != 0 {
            map_flags |= MAP_SHARED;
        }
        let pgoff = v.pgoff.wrapping_add(self.mm_pages(addr - v.start));
        let got = self.get_unmapped_area(mm, v.file, new_addr, new_len, pgoff, map_flags)?;
        let to = if flags & MREMAP_FIXED != 0 {
            new_addr
        } else {
            got
        };
        self.move_vma(mm, v.at, addr, old_len, new_len, to, flags, ops)
    }

    /// `vma_to_resize()`: the area holding the old range, checked.
    fn vma_to_resize(
        &self,
        m: &MmStruct,
        addr: u64,
        old_len: u64,
        new_len: u64,
        flags: u64,
    ) -> Result<V, KmmError> {
        let Some(v) = self.mm_lookup_v(m, addr)? else {
            return Err(errno(Errno::EFAULT, "mremap: address not mapped"));
        };
        if old_len == 0 && v.flags & (VM_SHARED | VM_MAYSHARE) == 0 {
            return Err(errno(
                Errno::EINVAL,
                "mremap: cannot duplicate a private mapping",
            ));
        }
        if flags & MREMAP_DONTUNMAP != 0 && v.flags & (VM_DONTEXPAND | VM_PFNMAP) != 0 {
            return Err(errno(
                Errno::EINVAL,
                "mremap: MREMAP_DONTUNMAP on a special mapping",
            ));
        }
        if old_len > v.end - addr {
            return Err(errno(
                Errno::EFAULT,
                "mremap: old range crosses the end of its mapping",
            ));
        }
        if new_len == old_len {
            return Ok(v);
        }
        let pgoff = v.pgoff.wrapping_add(self.mm_pages(addr - v.start));
        if pgoff.checked_add(self.mm_pages(new_len)).is_none() {
            return Err(errno(Errno::EINVAL, "mremap: file offset overflows"));
        }
        if v.flags & (VM_DONTEXPAND | VM_PFNMAP) != 0 {
            return Err(errno(Errno::EFAULT, "mremap: the mapping may not grow"));
        }
        Ok(v)
    }

    /// `vma_expandable()`: may `v` grow by `delta` bytes where it is?
    fn vma_expandable(&self, m: &MmStruct, v: &V, delta: u64) -> Result<bool, KmmError> {
        let Some(end) = v.end.checked_add(delta) else {
            return Ok(false);
        };
        if self.mm_intersects(m, v.end, end)? {
            return Ok(false);
        }
        Ok(end <= m.task_size.load(Relaxed) && v.start >= self.mmap_min_addr())
    }

    /// `move_vma()` with `copy_vma()`: a copy of the area at
    /// `[new_addr, new_addr + new_len)` (merged with neighbours when it
    /// can), the pages of the old range moved there, then the old range
    /// unmapped (or, with `MREMAP_DONTUNMAP`, unlocked and left).
    #[allow(clippy::too_many_arguments)]
    fn move_vma(
        &self,
        mm: u64,
        vma: u64,
        old_addr: u64,
        old_len: u64,
        new_len: u64,
        new_addr: u64,
        flags: u64,
        ops: &dyn MmOps,
    ) -> Result<u64, KmmError> {
        let m = self.mref(mm)?;
        if m.map_count.load(Relaxed) >= self.sysctl_max_map_count().saturating_sub(3) {
            return Err(errno(
                Errno::ENOMEM,
                "mremap: too many VMAs (vm.max_map_count)",
            ));
        }
        let v = self.vload(vma)?;
        let new_end = new_addr + new_len;
        // copy_vma(): an anonymous area without pages takes the offset of
        // its new place, which lets it merge there.
        let new_pgoff = if v.is_anon_private() && v.anon == 0 {
            self.mm_pages(new_addr)
        } else {
            v.pgoff.wrapping_add(self.mm_pages(old_addr - v.start))
        };
        if self.mm_intersects(m, new_addr, new_end)? {
            return Err(errno(Errno::ENOMEM, "mremap: the new range is not free"));
        }
        if self
            .vma_merge_bits(
                mm, new_addr, new_end, v.flags, v.anon, v.file, new_pgoff, ops,
            )?
            .is_none()
        {
            let new = self.vm_area_dup(&v)?;
            let r = self.vref(new)?;
            r.vm_start.store(new_addr, Relaxed);
            r.vm_end.store(new_end, Relaxed);
            r.vm_pgoff.store(new_pgoff, Relaxed);
            if let Err(e) = self.vma_link(mm, new) {
                let _ = self.vm_area_free(new);
                return Err(e);
            }
            ops.vma_opened(mm, new);
        }
        let hiwater = m.hiwater_vm.load(Relaxed);
        let n_new = self.mm_pages(new_len) as i64;
        Self::mm_stat(m, v.flags, n_new);
        if v.flags & VM_LOCKED != 0 {
            Self::mm_locked(m, n_new);
        }
        if old_len > 0 {
            let find = |a: u64| -> Result<u64, KmmError> {
                self.mm_lookup_v(m, a)?
                    .map(|x| x.at)
                    .ok_or(KmmError::BadObject {
                        addr: mm,
                        why: "mremap: range vanished during the move",
                    })
            };
            let (ov, nv) = (find(old_addr)?, find(new_addr)?);
            if let Err(e) = ops.move_page_tables(mm, ov, old_addr, nv, new_addr, old_len) {
                let _ = ops.move_page_tables(mm, nv, new_addr, ov, old_addr, old_len);
                let _ = self.vma_unmap_range(mm, new_addr, new_end, ops);
                m.hiwater_vm
                    .store(hiwater.max(m.total_vm.load(Relaxed)), Relaxed);
                return Err(e);
            }
        }
        if flags & MREMAP_DONTUNMAP != 0 {
            // The old range stays mapped, emptied, and loses VM_LOCKED
            // (Linux clears it on the whole old area and leaves locked_vm;
            // kmm unlocks exactly the old range and keeps locked_vm exact).
            if v.flags & VM_LOCKED != 0 && old_len > 0 {
                if let Some(o) = self.mm_lookup_v(m, old_addr)? {
                    let newflags = o.flags & !VM_LOCKED;
                    if self
                        .vma_modify_flags(mm, o.at, old_addr, old_addr + old_len, newflags, ops)
                        .is_ok()
                    {
                        Self::mm_locked(m, -(self.mm_pages(old_len) as i64));
                    }
                }
            }
            m.hiwater_vm
                .store(hiwater.max(m.total_vm.load(Relaxed)), Relaxed);
            return Ok(new_addr);
        }
        if old_len > 0 {
            // Linux carries on when this fails (only the accounting is fixed).
            let _ = self.do_munmap(mm, old_addr, old_len, ops);
        }
        m.hiwater_vm
            .store(hiwater.max(m.total_vm.load(Relaxed)), Relaxed);
        if v.flags & VM_LOCKED != 0 && new_len > old_len {
            let _ = self.vma_populate(mm, new_addr + old_len, new_end, ops);
        }
        Ok(new_addr)
    }

    // ================================================================
    // Stack growth

    /// `expand_stack()` / `expand_downwards()` for the fault handler: grows
    /// the `VM_GROWSDOWN` area `vma` down to `addr` (rounded down to a
    /// page). Nothing to do when `addr` is already inside. `EFAULT` if
    /// `vma` does not grow down; `EPERM` below `vm.mmap_min_addr`; `ENOMEM`
    /// when the area below is closer than the stack guard gap (unless it is
    /// a stack too or has no access), when the stack would exceed
    /// `RLIMIT_STACK`, or when `vm_pgoff` would underflow. The growth is
    /// counted in `total_vm` and `stack_vm` (and `locked_vm` for a locked
    /// stack).
    pub fn expand_stack(&self, mm: u64, vma: u64, addr: u64) -> Result<(), KmmError> {
        let m = self.mref(mm)?;
        let v = self.vload_of(mm, vma)?;
        if v.flags & VM_GROWSDOWN == 0 {
            return Err(errno(
                Errno::EFAULT,
                "expand_stack: the VMA does not grow down",
            ));
        }
        let address = addr & !(self.mm_ps() - 1);
        if address >= v.start {
            return Ok(());
        }
        if address < self.mmap_min_addr() {
            return Err(errno(Errno::EPERM, "expand_stack: below vm.mmap_min_addr"));
        }
        if let Some(p) = nz(v.prev) {
            let p = self.vload(p)?;
            if address < p.end {
                return Err(errno(
                    Errno::ENOMEM,
                    "expand_stack: runs into the VMA below",
                ));
            }
            if p.flags & VM_GROWSDOWN == 0
                && p.flags & VM_ACCESS_FLAGS != 0
                && address - p.end < self.stack_guard_gap()
            {
                return Err(errno(
                    Errno::ENOMEM,
                    "expand_stack: inside the stack guard gap",
                ));
            }
        }
        let size = v.end.wrapping_sub(address);
        let grow = self.mm_pages(v.start - address);
        if grow > v.pgoff {
            return Err(errno(
                Errno::ENOMEM,
                "expand_stack: vm_pgoff would underflow",
            ));
        }
        if size > self.stack_rlimit() {
            return Err(errno(Errno::ENOMEM, "expand_stack: beyond RLIMIT_STACK"));
        }
        let r = self.vref(vma)?;
        r.vm_start.store(address, Relaxed);
        r.vm_pgoff.store(v.pgoff - grow, Relaxed);
        Self::mm_stat(m, v.flags, grow as i64);
        if v.flags & VM_LOCKED != 0 {
            Self::mm_locked(m, grow as i64);
        }
        Ok(())
    }
}
