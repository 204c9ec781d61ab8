//! `struct page`: `include/linux/mm_types.h` and `include/linux/page-flags.h`.
//!
//! One [`Page`] describes each physical page frame. The array of them, `mem_map`,
//! is allocated from memblock inside simulated RAM at boot, exactly as Linux
//! does, so its cost is visible in `/proc/meminfo` and in the boot log.
//!
//! The descriptor is 40 bytes, the size LKD uses for its overhead arithmetic:
//! list links are 32-bit frame numbers rather than pointers, and the zone and
//! node live in the top bits of `flags`, as in Linux.

use core::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering::Relaxed};

/// "No page" in a frame-number link (Linux: a NULL `list_head` pointer).
pub(crate) const NIL: u32 = u32::MAX;

bitflags::bitflags! {
    /// Page flags (`enum pageflags`), the low bits of `page->flags`.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub struct PageFlags: u64 {
        /// `PG_locked`: the page is locked for I/O.
        const LOCKED = 1 << 0;
        /// `PG_referenced`: recently referenced (reclaim's second chance).
        const REFERENCED = 1 << 1;
        /// `PG_uptodate`: the contents are valid.
        const UPTODATE = 1 << 2;
        /// `PG_dirty`: modified, must be written back.
        const DIRTY = 1 << 3;
        /// `PG_lru`: on an LRU list.
        const LRU = 1 << 4;
        /// `PG_active`: on the active LRU list.
        const ACTIVE = 1 << 5;
        /// `PG_slab`: owned by the slab allocator.
        const SLAB = 1 << 9;
        /// `PG_reserved`: never handed to the page allocator (holes, kernel image, mem_map).
        const RESERVED = 1 << 12;
        /// `PG_private`: `private` holds file-system data.
        const PRIVATE = 1 << 13;
        /// `PG_writeback`: being written back.
        const WRITEBACK = 1 << 15;
        /// `PG_head`: first page of a compound page.
        const HEAD = 1 << 16;
        /// `PG_swapbacked`: anonymous memory backed by swap.
        const SWAPBACKED = 1 << 19;
        /// `PG_unevictable`.
        const UNEVICTABLE = 1 << 20;
        /// `PG_mlocked`.
        const MLOCKED = 1 << 21;
        /// `PageBuddy` (Linux keeps it in the page type): free, heading a buddy
        /// block whose order is in `private`.
        const BUDDY = 1 << 22;
        /// `PageTail`: a tail page of a compound page; `private` holds the head's pfn.
        const TAIL = 1 << 23;
    }
}

/// Flags that must be clear when a page is freed (`PAGE_FLAGS_CHECK_AT_FREE`).
pub(crate) const FLAGS_CHECK_AT_FREE: PageFlags = PageFlags::LOCKED
    .union(PageFlags::LRU)
    .union(PageFlags::ACTIVE)
    .union(PageFlags::SLAB)
    .union(PageFlags::RESERVED)
    .union(PageFlags::PRIVATE)
    .union(PageFlags::WRITEBACK)
    .union(PageFlags::MLOCKED)
    .union(PageFlags::BUDDY)
    .union(PageFlags::TAIL);

const PAGEFLAGS_MASK: u64 = (1 << 32) - 1;
/// kmm keeps the order an allocation was made with (plus one) in bits 40–43,
/// so a free with the wrong order is caught instead of corrupting the buddy lists.
const ALLOC_ORDER_SHIFT: u32 = 40;
const ALLOC_ORDER_MASK: u64 = 0xf << ALLOC_ORDER_SHIFT;
/// The allocation-order bits of `flags`, for callers that rewrite the word.
pub(crate) const ALLOC_ORDER_BITS: u64 = ALLOC_ORDER_MASK;
/// `ZONES_PGSHIFT`: zone index in bits 56–57.
const ZONE_SHIFT: u32 = 56;
/// `NODES_PGSHIFT`: node id in bits 58–60.
const NODE_SHIFT: u32 = 58;

/// `struct page`: the descriptor of one physical page frame.
#[repr(C)]
pub struct Page {
    /// `flags`: [`PageFlags`] in the low bits, zone and node in the top bits.
    pub(crate) flags: AtomicU64,
    /// `_refcount`: users of the page; 0 means free.
    pub(crate) refcount: AtomicI32,
    /// `_mapcount`: page-table entries mapping the page, minus one.
    pub(crate) mapcount: AtomicI32,
    /// `mapping`: the owning `address_space` (or anon_vma / slab cache).
    pub(crate) mapping: AtomicU64,
    /// `private`: buddy order when free; head pfn for tail pages; owner data otherwise.
    pub(crate) private: AtomicU32,
    /// `index`: offset within `mapping`, in pages.
    pub(crate) index: AtomicU32,
    /// `lru.next`, as a page frame number.
    pub(crate) next: AtomicU32,
    /// `lru.prev`, as a page frame number.
    pub(crate) prev: AtomicU32,
}

// SAFETY: `Page` is made only of integer atomics; every bit pattern is valid.
unsafe impl crate::ram::RamSafe for Page {}

/// Size of one page descriptor in bytes (`sizeof(struct page)`).
pub const STRUCT_PAGE_SIZE: usize = core::mem::size_of::<Page>();
const _: () = assert!(STRUCT_PAGE_SIZE == 40);

impl Page {
    /// `page->flags & ~(zone|node bits)`: the page's state flags.
    #[inline]
    pub fn flags(&self) -> PageFlags {
        PageFlags::from_bits_retain(self.flags.load(Relaxed) & PAGEFLAGS_MASK)
    }

    /// The raw `page->flags` word, zone and node bits included.
    #[inline]
    pub fn raw_flags(&self) -> u64 {
        self.flags.load(Relaxed)
    }

    /// `page_ref_count()`.
    #[inline]
    pub fn page_count(&self) -> i32 {
        self.refcount.load(Relaxed)
    }

    /// `page_mapcount()`: how many page tables map the page.
    #[inline]
    pub fn page_mapcount(&self) -> i32 {
        self.mapcount.load(Relaxed) + 1
    }

    /// `page_private()`.
    #[inline]
    pub fn private(&self) -> u32 {
        self.private.load(Relaxed)
    }

    /// `page->index`.
    #[inline]
    pub fn index(&self) -> u32 {
        self.index.load(Relaxed)
    }

    /// `page->mapping`.
    #[inline]
    pub fn mapping(&self) -> u64 {
        self.mapping.load(Relaxed)
    }

    /// `page_zonenum()`: index of the zone within its node.
    #[inline]
    pub fn zone_idx(&self) -> usize {
        ((self.flags.load(Relaxed) >> ZONE_SHIFT) & 3) as usize
    }

    /// The node and zone bits of a flags word read once, as one flat zone
    /// id (`node << 2 | zone`, see [`crate::Kmm::zone_by_id`]).
    #[inline(always)]
    pub(crate) fn zone_id_of(raw: u64) -> usize {
        const _: () = assert!(NODE_SHIFT == ZONE_SHIFT + 2);
        ((raw >> ZONE_SHIFT) & 31) as usize
    }

    /// `page_to_nid()`.
    #[inline]
    pub fn nid(&self) -> usize {
        ((self.flags.load(Relaxed) >> NODE_SHIFT) & 7) as usize
    }

    /// `PageReserved()`.
    #[inline]
    pub fn is_reserved(&self) -> bool {
        self.flags().contains(PageFlags::RESERVED)
    }

    /// `PageBuddy()`: free in the buddy allocator (head of a free block).
    #[inline]
    pub fn is_buddy(&self) -> bool {
        self.flags().contains(PageFlags::BUDDY)
    }

    /// `PageSlab()`.
    #[inline]
    pub fn is_slab(&self) -> bool {
        self.flags().contains(PageFlags::SLAB)
    }

    /// `PageHead()`.
    #[inline]
    pub fn is_head(&self) -> bool {
        self.flags().contains(PageFlags::HEAD)
    }

    /// `PageTail()`.
    #[inline]
    pub fn is_tail(&self) -> bool {
        self.flags().contains(PageFlags::TAIL)
    }

    /// `SetPageXxx()`: sets state flags.
    #[inline]
    pub fn set_flags(&self, f: PageFlags) {
        self.flags.fetch_or(f.bits(), Relaxed);
    }

    /// `ClearPageXxx()`: clears state flags.
    #[inline]
    pub fn clear_flags(&self, f: PageFlags) {
        self.flags.fetch_and(!f.bits(), Relaxed);
    }

    /// `set_page_private()`.
    #[inline]
    pub fn set_private(&self, v: u32) {
        self.private.store(v, Relaxed)
    }

    /// Sets `page->mapping`.
    #[inline]
    pub fn set_mapping(&self, v: u64) {
        self.mapping.store(v, Relaxed)
    }

    /// Sets `page->index`.
    #[inline]
    pub fn set_index(&self, v: u32) {
        self.index.store(v, Relaxed)
    }

    /// Order this page was allocated with, if it heads a live allocation.
    #[inline]
    pub fn alloc_order(&self) -> Option<u32> {
        let v = (self.flags.load(Relaxed) & ALLOC_ORDER_MASK) >> ALLOC_ORDER_SHIFT;
        (v != 0).then(|| v as u32 - 1)
    }

    /// [`Self::alloc_order`] of a raw flags word.
    #[inline]
    pub(crate) fn alloc_order_of(raw: u64) -> Option<u32> {
        let v = (raw & ALLOC_ORDER_MASK) >> ALLOC_ORDER_SHIFT;
        (v != 0).then(|| v as u32 - 1)
    }

    pub(crate) fn set_alloc_order(&self, order: Option<u32>) {
        let bits = order.map_or(0, |o| (o as u64 + 1) << ALLOC_ORDER_SHIFT);
        let f = self.flags.load(Relaxed);
        self.flags.store((f & !ALLOC_ORDER_MASK) | bits, Relaxed);
    }

    /// Plain (non-atomic read-modify-write) flag update for pages the caller owns
    /// exclusively, e.g. under the zone lock.
    #[inline]
    pub(crate) fn set_state(&self, set: PageFlags, clear: PageFlags) {
        let f = self.flags.load(Relaxed);
        self.flags.store((f & !clear.bits()) | set.bits(), Relaxed);
    }

    /// `set_page_links()` + `init_single_page()` + `SetPageReserved()`.
    #[inline]
    pub(crate) fn init_reserved(&self, nid: usize, zone_idx: usize) {
        self.flags.store(
            PageFlags::RESERVED.bits()
                | ((zone_idx as u64) << ZONE_SHIFT)
                | ((nid as u64) << NODE_SHIFT),
            Relaxed,
        );
        self.refcount.store(1, Relaxed);
        self.mapcount.store(-1, Relaxed);
        self.next.store(NIL, Relaxed);
        self.prev.store(NIL, Relaxed);
    }
}

/// Formats `flags` as Linux's `%pGp`: `0x1000(reserved|node=0|zone=1)`.
pub struct DisplayPageFlags(pub u64);

impl core::fmt::Display for DisplayPageFlags {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        const NAMES: [(PageFlags, &str); 16] = [
            (PageFlags::LOCKED, "locked"),
            (PageFlags::REFERENCED, "referenced"),
            (PageFlags::UPTODATE, "uptodate"),
            (PageFlags::DIRTY, "dirty"),
            (PageFlags::LRU, "lru"),
            (PageFlags::ACTIVE, "active"),
            (PageFlags::SLAB, "slab"),
            (PageFlags::RESERVED, "reserved"),
            (PageFlags::PRIVATE, "private"),
            (PageFlags::WRITEBACK, "writeback"),
            (PageFlags::HEAD, "head"),
            (PageFlags::SWAPBACKED, "swapbacked"),
            (PageFlags::UNEVICTABLE, "unevictable"),
            (PageFlags::MLOCKED, "mlocked"),
            (PageFlags::BUDDY, "buddy"),
            (PageFlags::TAIL, "tail"),
        ];
        let fl = PageFlags::from_bits_retain(self.0 & PAGEFLAGS_MASK);
        write!(f, "{:#x}(", self.0)?;
        for (bit, name) in NAMES {
            if fl.contains(bit) {
                write!(f, "{name}|")?;
            }
        }
        write!(
            f,
            "node={}|zone={})",
            (self.0 >> NODE_SHIFT) & 7,
            (self.0 >> ZONE_SHIFT) & 3
        )
    }
}

// ------------------------------------------------------------------------
// Address spaces: `struct mm_struct`, `struct vm_area_struct` and the part
// of `struct task_struct` the memory manager uses. Each lives in a slab
// object in simulated RAM (caches `mm_struct`, `vm_area_struct`,
// `task_struct`, as in `/proc/slabinfo`), made only of atomics so that
// `PhysMem::ram_ref` can hand out a shared reference to it. Links between
// them are physical addresses of the objects, 0 for NULL.

bitflags::bitflags! {
    /// `vma->vm_flags` (`include/linux/mm.h`), with Linux's values.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct VmaFlags: u64 {
        /// `VM_READ`.
        const VM_READ = 0x1;
        /// `VM_WRITE`.
        const VM_WRITE = 0x2;
        /// `VM_EXEC`.
        const VM_EXEC = 0x4;
        /// `VM_SHARED`: writes reach the file / other mappings.
        const VM_SHARED = 0x8;
        /// `VM_MAYREAD`: `mprotect` may add `VM_READ`.
        const VM_MAYREAD = 0x10;
        /// `VM_MAYWRITE`.
        const VM_MAYWRITE = 0x20;
        /// `VM_MAYEXEC`.
        const VM_MAYEXEC = 0x40;
        /// `VM_MAYSHARE`.
        const VM_MAYSHARE = 0x80;
        /// `VM_GROWSDOWN`: a stack that grows down on faults below it.
        const VM_GROWSDOWN = 0x100;
        /// `VM_PFNMAP`: raw frames, no `struct page`.
        const VM_PFNMAP = 0x400;
        /// `VM_LOCKED`: `mlock`ed, pages stay resident.
        const VM_LOCKED = 0x2000;
        /// `VM_IO`: device memory.
        const VM_IO = 0x4000;
        /// `VM_DONTCOPY`: not inherited by `fork` (`MADV_DONTFORK`).
        const VM_DONTCOPY = 0x20000;
        /// `VM_DONTEXPAND`: `mremap` may not grow it.
        const VM_DONTEXPAND = 0x40000;
        /// `VM_ACCOUNT`: charged to the commit limit.
        const VM_ACCOUNT = 0x100000;
        /// `VM_NORESERVE`.
        const VM_NORESERVE = 0x200000;
    }
}

impl VmaFlags {
    /// `VM_DATA_DEFAULT_FLAGS` (x86: read, write, may read/write/exec).
    pub const VM_DATA_DEFAULT_FLAGS: VmaFlags = VmaFlags::VM_READ
        .union(VmaFlags::VM_WRITE)
        .union(VmaFlags::VM_MAYREAD)
        .union(VmaFlags::VM_MAYWRITE)
        .union(VmaFlags::VM_MAYEXEC);
    /// `VM_STACK_FLAGS`: a growing-down stack, data defaults, accounted.
    pub const VM_STACK_FLAGS: VmaFlags = VmaFlags::VM_GROWSDOWN
        .union(VmaFlags::VM_DATA_DEFAULT_FLAGS)
        .union(VmaFlags::VM_ACCOUNT);
}

/// `rss_stat` counters (`enum { MM_FILEPAGES, MM_ANONPAGES, MM_SWAPENTS, MM_SHMEMPAGES }`).
pub const MM_FILEPAGES: usize = 0;
/// Anonymous pages mapped.
pub const MM_ANONPAGES: usize = 1;
/// Swap entries.
pub const MM_SWAPENTS: usize = 2;
/// Shared-memory pages.
pub const MM_SHMEMPAGES: usize = 3;
/// Number of `rss_stat` counters.
pub const NR_MM_COUNTERS: usize = 4;

/// `struct mm_struct`: one address space, in RAM (slab cache `mm_struct`).
#[repr(C)]
#[derive(Debug)]
pub struct MmStruct {
    // ---- the VMA set (`mm/mmap.c`, `mm/vma.c`)
    /// `mm_rb`: root node of the VMA red-black tree, keyed by `vm_end`.
    pub mm_rb: AtomicU64,
    /// `mmap`: the lowest VMA; the list runs in address order.
    pub mmap: AtomicU64,
    /// `map_count`: number of VMAs.
    pub map_count: AtomicU64,
    /// `highest_vm_end`.
    pub highest_vm_end: AtomicU64,
    /// `mmap_base`: where top-down `get_unmapped_area` starts.
    pub mmap_base: AtomicU64,
    /// `task_size`: the end of the user address space.
    pub task_size: AtomicU64,
    /// `start_code`.
    pub start_code: AtomicU64,
    /// `end_code`.
    pub end_code: AtomicU64,
    /// `start_data`.
    pub start_data: AtomicU64,
    /// `end_data`.
    pub end_data: AtomicU64,
    /// `start_brk`: the heap's start.
    pub start_brk: AtomicU64,
    /// `brk`: the heap's current end.
    pub brk: AtomicU64,
    /// `start_stack`.
    pub start_stack: AtomicU64,
    /// `arg_start`.
    pub arg_start: AtomicU64,
    /// `arg_end`.
    pub arg_end: AtomicU64,
    /// `env_start`.
    pub env_start: AtomicU64,
    /// `env_end`.
    pub env_end: AtomicU64,
    /// `total_vm`: pages mapped (`VmSize`).
    pub total_vm: AtomicU64,
    /// `locked_vm`: pages `mlock`ed (`VmLck`).
    pub locked_vm: AtomicU64,
    /// `data_vm`: private writable, not stack (`VmData`).
    pub data_vm: AtomicU64,
    /// `exec_vm`: executable, not writable (`VmExe`).
    pub exec_vm: AtomicU64,
    /// `stack_vm`: growing-down stacks (`VmStk`).
    pub stack_vm: AtomicU64,
    /// `def_flags`: flags every new VMA gets (`VM_LOCKED` after `mlockall`).
    pub def_flags: AtomicU64,
    // ---- page tables and pages (`mm/memory.c`)
    /// `pgd`: physical address of the top-level page table.
    pub pgd: AtomicU64,
    /// Which of the profile's page-table formats `pgd` is (index into
    /// [`crate::Arch::paging_formats`]).
    pub pgd_format: AtomicU64,
    /// `rss_stat[]`: resident pages by kind ([`MM_FILEPAGES`], ...).
    pub rss_stat: [AtomicU64; NR_MM_COUNTERS],
    /// `pgtables_bytes`: page-table pages of this mm, in bytes (`VmPTE`).
    pub pgtables_bytes: AtomicU64,
    /// `hiwater_rss`: the peak of the RSS (`VmHWM`).
    pub hiwater_rss: AtomicU64,
    /// `hiwater_vm`: the peak of `total_vm` (`VmPeak`).
    pub hiwater_vm: AtomicU64,
    /// `mm_users`: tasks sharing this address space.
    pub mm_users: AtomicU64,
    /// `mm_count`: references to the struct itself.
    pub mm_count: AtomicU64,
    /// `context.ctx_id` / the ASID (PCID) its TLB entries are tagged with.
    pub context_id: AtomicU64,
    /// `mmap_lock`, as a spin word: 0 free, 1 held.
    pub mmap_lock: AtomicU64,
    /// `flags` (`MMF_*`).
    pub flags: AtomicU64,
}

// SAFETY: integer atomics only; every bit pattern is a valid value.
unsafe impl crate::ram::RamSafe for MmStruct {}

/// `struct vm_area_struct`: one mapped range of an address space, in RAM
/// (slab cache `vm_area_struct`).
#[repr(C)]
#[derive(Debug)]
pub struct VmAreaStruct {
    /// `vm_start`: first address.
    pub vm_start: AtomicU64,
    /// `vm_end`: first address after the range.
    pub vm_end: AtomicU64,
    /// `vm_flags` ([`VmaFlags`]).
    pub vm_flags: AtomicU64,
    /// `vm_page_prot`: the PTE flags pages get ([`crate::PteFlags`] bits).
    pub vm_page_prot: AtomicU64,
    /// `vm_pgoff`: offset in the file, in pages (for anonymous memory,
    /// `vm_start >> PAGE_SHIFT` when the VMA was made).
    pub vm_pgoff: AtomicU64,
    /// `vm_file`: the mapped file's `address_space` object, 0 for anonymous.
    pub vm_file: AtomicU64,
    /// `vm_mm`: the owning `mm_struct`.
    pub vm_mm: AtomicU64,
    /// `vm_next`: the next VMA in address order.
    pub vm_next: AtomicU64,
    /// `vm_prev`.
    pub vm_prev: AtomicU64,
    /// `vm_rb`: the red-black tree node (parent|colour, right, left), see
    /// [`crate::rbtree`].
    pub vm_rb: [AtomicU64; 3],
    /// `anon_vma`: nonzero once anonymous pages may exist in the VMA (a
    /// merge needs compatible values).
    pub anon_vma: AtomicU64,
}

// SAFETY: integer atomics only; every bit pattern is a valid value.
unsafe impl crate::ram::RamSafe for VmAreaStruct {}

/// Offset of [`VmAreaStruct::vm_rb`] in the object (`rb_entry`).
pub const VMA_RB_OFFSET: u64 = core::mem::offset_of!(VmAreaStruct, vm_rb) as u64;

/// The memory manager's part of `struct task_struct`, in RAM (slab cache
/// `task_struct`).
#[repr(C)]
#[derive(Debug)]
pub struct TaskStruct {
    /// `pid`.
    pub pid: AtomicU64,
    /// `mm`: the address space, 0 for a kernel thread.
    pub mm: AtomicU64,
    /// `comm`: the command name, 16 bytes, NUL padded.
    pub comm: [AtomicU64; 2],
    /// `min_flt`: minor faults.
    pub min_flt: AtomicU64,
    /// `maj_flt`: major faults (a page read from the file).
    pub maj_flt: AtomicU64,
    /// `stack`: base of the kernel stack.
    pub stack: AtomicU64,
    /// `__state` (0 running, nonzero dead).
    pub state: AtomicU64,
    /// `exit_code`.
    pub exit_code: AtomicU64,
}

// SAFETY: integer atomics only; every bit pattern is a valid value.
unsafe impl crate::ram::RamSafe for TaskStruct {}
