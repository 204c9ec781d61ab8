//! Virtually contiguous kernel memory (`mm/vmalloc.c`, `arch/x86/mm/ioremap.c`).
//!
//! The vmalloc area `[VMALLOC_START, VMALLOC_END)` of the kernel page table
//! is handed out in page-aligned ranges, each followed by an unmapped guard
//! page. [`Kmm::vmalloc`] takes its pages from the page allocator in one
//! bulk call (from `ZONE_HIGHMEM` where the machine has it: nothing needs
//! them directly mapped) and maps them into consecutive PTEs, walking to
//! each PTE table once per run of entries; [`Kmm::vmap`] maps pages the
//! caller already has; [`Kmm::ioremap`] maps device memory without
//! allocating anything, uncached.
//!
//! Each range is a `vmap_area` object of a slab cache of that name (kmm
//! keeps Linux's `vm_struct` fields in the same object): start, end with the
//! guard page, flags, the caller, the page array and the physical address
//! of an ioremap. Every range, live, waiting for the lazy purge or pooled,
//! is on an address-ordered list that allocation searches first fit from a
//! cached position (`free_vmap_cache`, `cached_hole_size`, as Linux did
//! before the augmented free-space tree); the live ones are also in a
//! red-black tree (`vmap_area_root`, [`crate::rbtree`]) for `vfree`'s lookup
//! by address, which lazily freed ranges leave at once for the purge list
//! (Linux's `vn->lazy`).
//!
//! Freeing is lazy, as in Linux: [`Kmm::vfree`] clears the PTEs and frees
//! the pages at once, but the range stays reserved on the purge list until
//! enough lazily freed pages pile up (`lazy_max_pages()`); then one
//! `flush_tlb_kernel_range()` over the span of the purge list
//! ([`crate::Platform::flush_tlb_kernel_range`]) makes every CPU forget the
//! old translations and the ranges become free. A range is therefore never
//! reused while some CPU may still translate it. [`Kmm::vm_unmap_aliases`]
//! forces the flush.
//!
//! As in Linux since 6.9 (its `vmap_node` pools, which exist on 64-bit
//! machines with more than one CPU), a purged range of up to
//! `MAX_VA_SIZE_PAGES` pages is not given back to the free space but kept,
//! object and address, in the pool of its size; the next request of that
//! size over the whole vmalloc area takes it without a search or a new
//! object. Each purge first gives a quarter of every pool back (the decay);
//! an allocation that finds no room, and `vm_unmap_aliases`, give back all
//! of them.

use crate::arch::init::{read_entry, write_entry, DirectPages, KernelLayout, PAGE_KERNEL};
use crate::error::KmmError;
use crate::gfp::GfpFlags;
use crate::mm::Kmm;
use crate::mm_types::Page;
use crate::pgtable::{Entry, PageTable, PteFlags, PteRange};
use crate::platform::{preempt, Platform};
use crate::rbtree::{rb_add, rb_erase, rb_find, RbRoot};
use crate::slab::KmemCache;
use crate::spinlock::SpinLock;
use core::fmt::{self, Write};
use core::panic::Location;
use core::sync::atomic::{
    AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};

bitflags::bitflags! {
    /// `vm_struct->flags`: what a vmalloc-area range is for.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct VmFlags: u32 {
        /// `VM_IOREMAP`: device memory mapped by `ioremap`.
        const VM_IOREMAP = 0x1;
        /// `VM_ALLOC`: pages allocated by `vmalloc`.
        const VM_ALLOC = 0x2;
        /// `VM_MAP`: caller's pages mapped by `vmap`.
        const VM_MAP = 0x4;
        /// `VM_USERMAP`: suitable for `remap_vmalloc_range`.
        const VM_USERMAP = 0x8;
        /// `VM_UNINITIALIZED`: the area is being set up.
        const VM_UNINITIALIZED = 0x20;
        /// `VM_NO_GUARD`: no guard page after the area.
        const VM_NO_GUARD = 0x40;
    }
}

/// `lazy_max_pages()` base: 32 MiB of lazily freed ranges, times
/// `fls(num_online_cpus())`, before the TLB flush and purge.
const LAZY_MAX_BYTES: u64 = 32 << 20;

/// `MAX_VA_SIZE_PAGES`: ranges of up to this many pages (guard included)
/// go to the pool of their size when purged.
const MAX_VA_SIZE_PAGES: usize = 256;

// The `vmap_area` object (96 bytes in RAM). Links are physical addresses.
const VA_START: u64 = 0;
const VA_END: u64 = 8;
const VA_NEXT: u64 = 16;
const VA_PREV: u64 = 24;
/// Low 32 bits: [`VmFlags`]; bit 32: lazily freed, waiting for the purge.
const VA_FLAGS: u64 = 32;
/// Low 32 bits: pages; bits 32..48: caller id; bits 48..56: node.
const VA_PAGES_CALLER: u64 = 40;
/// Direct-map address of the page-frame array (`vm_struct->pages`), or 0.
const VA_PAGES: u64 = 48;
/// `vm_struct->phys_addr` of an ioremap.
const VA_PHYS: u64 = 56;
/// The next area of the purge list or of a pool (`va->list` while the
/// area is lazily freed or pooled), or 0.
const VA_LINK: u64 = 64;
/// The `rb_node` of the busy tree (`vmap_area_root`), keyed by start.
const VA_RB: u64 = 72;
const VA_SIZE: usize = 72 + crate::rbtree::RB_NODE_SIZE as usize;
const VA_LAZY: u64 = 1 << 32;
/// Bit 33: being torn down (found by no lookup, not yet lazy).
const VA_FREEING: u64 = 1 << 33;
/// Bit 34: in the busy tree (live areas only).
const VA_IN_TREE: u64 = 1 << 34;
/// Bit 35: purged and kept in the pool of its size for reuse.
const VA_POOLED: u64 = 1 << 35;

/// What `vcopy` hands each piece: the physical address and writability of
/// the page (`None` when unmapped) and the byte range of the buffer.
type VcopyFn<'a> =
    dyn FnMut(Option<(u64, bool)>, core::ops::Range<usize>) -> Result<(), KmmError> + 'a;

/// Callers remembered for `/proc/vmallocinfo` (`vm_struct->caller`).
const MAX_CALLERS: usize = 128;

/// One busy range as [`Kmm::find_vm_area`] and `/proc/vmallocinfo` show it
/// (`struct vm_struct`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmStruct {
    /// `addr`: the first mapped byte.
    pub addr: u64,
    /// `size`: bytes of the range including the guard page.
    pub size: u64,
    /// `flags`.
    pub flags: VmFlags,
    /// `nr_pages`: pages `vmalloc` allocated (0 for `vmap`/`ioremap`).
    pub nr_pages: u32,
    /// `phys_addr` of an ioremap (0 otherwise).
    pub phys_addr: u64,
    /// Node the pages came from.
    pub nid: usize,
    /// Where the range was asked for (`caller`), as `file:line`.
    pub caller: Option<(&'static str, u32)>,
    /// True while the range waits for the lazy TLB flush ("unpurged vm_area").
    pub lazy: bool,
}

impl VmStruct {
    /// `get_vm_area_size()`: the size without the guard page.
    pub fn area_size(&self) -> u64 {
        if self.flags.contains(VmFlags::VM_NO_GUARD) {
            self.size
        } else {
            self.size.saturating_sub(4096)
        }
    }
}

/// The busy list and tree and the allocation cursor (`vmap_area_lock`
/// protects them).
struct VmapList {
    /// `vmap_area_root`: the busy ranges by start address.
    root: RbRoot,
    head: u64,
    tail: u64,
    count: u64,
    /// `free_vmap_cache`: the area after which the last search ended.
    hint: u64,
    cached_hole_size: u64,
    cached_vstart: u64,
    cached_align: u64,
    /// `vmap_lazy_nr`: pages in lazily freed ranges.
    lazy_pages: u64,
    /// The purge list (`vn->lazy`): lazily freed areas, linked by
    /// `VA_LINK`, and the span `[lazy_lo, lazy_hi)` they cover.
    lazy_head: u64,
    lazy_lo: u64,
    lazy_hi: u64,
    /// `vn->pool[]`: purged areas by size (`pool[i]` holds areas of `i + 1`
    /// pages, guard included), linked by `VA_LINK`, most recent first.
    pools: [VaPool; MAX_VA_SIZE_PAGES],
    /// Areas in all the pools.
    pooled: u64,
    callers: [Option<(&'static str, u32)>; MAX_CALLERS],
}

/// One pool of purged areas of one size (`struct vmap_pool`).
#[derive(Clone, Copy)]
struct VaPool {
    head: u64,
    len: u64,
}

impl VaPool {
    const EMPTY: VaPool = VaPool { head: 0, len: 0 };
}

/// The vmalloc allocator and the kernel page table (`init_mm`).
pub(crate) struct VmallocState {
    pub(crate) layout: KernelLayout,
    pub(crate) pgd: Option<PageTable>,
    pub(crate) direct: DirectPages,
    pub(crate) boot_table_pages: u64,
    list: SpinLock<VmapList>,
    /// `init_mm.page_table_lock`: allocation of kernel page tables.
    pt_lock: SpinLock<()>,
    cache: AtomicU64,
    init_lock: SpinLock<()>,
    nr_vmalloc_pages: AtomicU64,
    nr_kernel_tables: AtomicU64,
    purges: AtomicU64,
}

impl VmallocState {
    pub(crate) fn new(layout: KernelLayout) -> Self {
        VmallocState {
            layout,
            pgd: None,
            direct: DirectPages::default(),
            boot_table_pages: 0,
            list: SpinLock::new(VmapList {
                root: RbRoot::EMPTY,
                head: 0,
                tail: 0,
                count: 0,
                hint: 0,
                cached_hole_size: 0,
                cached_vstart: 0,
                cached_align: 0,
                lazy_pages: 0,
                lazy_head: 0,
                lazy_lo: u64::MAX,
                lazy_hi: 0,
                pools: [VaPool::EMPTY; MAX_VA_SIZE_PAGES],
                pooled: 0,
                callers: [None; MAX_CALLERS],
            }),
            pt_lock: SpinLock::new(()),
            cache: AtomicU64::new(0),
            init_lock: SpinLock::new(()),
            nr_vmalloc_pages: AtomicU64::new(0),
            nr_kernel_tables: AtomicU64::new(0),
            purges: AtomicU64::new(0),
        }
    }
}

/// Where a new range may go and what it is.
struct AreaRequest {
    size: u64,
    align: u64,
    flags: VmFlags,
    caller: &'static Location<'static>,
}

impl<P: Platform> Kmm<P> {
    /// The kernel's virtual memory layout (`VMALLOC_START`, `PKMAP_BASE`, ...).
    pub fn kernel_layout(&self) -> &KernelLayout {
        &self.vm.layout
    }

    /// `init_mm.pgd` (`swapper_pg_dir`): the kernel page table, which maps
    /// the direct map, vmalloc, ioremap and kmap addresses. `None` on a
    /// machine whose page size no x86 page-table format has (8K, 16K, 64K),
    /// which boots without kernel virtual memory.
    pub fn swapper_pg_dir(&self) -> Option<&PageTable> {
        self.vm.pgd.as_ref()
    }

    /// `direct_pages_count[]`: pages of the direct map by size (the
    /// `DirectMap4k`/`DirectMap2M`/`DirectMap4M`/`DirectMap1G` lines).
    pub fn direct_map_pages(&self) -> DirectPages {
        self.vm.direct
    }

    /// Pages the kernel page table uses: the boot-time ones from memblock
    /// plus those allocated since for vmalloc ranges.
    pub fn kernel_page_table_pages(&self) -> u64 {
        self.vm.boot_table_pages + self.vm.nr_kernel_tables.load(Relaxed)
    }

    /// `vmalloc_nr_pages()`: pages allocated by `vmalloc` (`VmallocUsed:`).
    pub fn vmalloc_nr_pages(&self) -> u64 {
        self.vm.nr_vmalloc_pages.load(Relaxed)
    }

    /// `VMALLOC_TOTAL`: bytes of the vmalloc area.
    pub fn vmalloc_total(&self) -> u64 {
        self.vm.layout.vmalloc_total()
    }

    /// Lazy purges done so far (each one TLB flush of a kernel range).
    pub fn vmap_purges(&self) -> u64 {
        self.vm.purges.load(Relaxed)
    }

    /// `is_vmalloc_addr()`.
    pub fn is_vmalloc_addr(&self, addr: u64) -> bool {
        self.vm.layout.is_vmalloc_addr(addr)
    }

    /// The `vmap_area` cache, made on first use (Linux's `vmalloc_init()`
    /// makes it at boot; kmm waits so a machine that never uses vmalloc
    /// holds no slab page for it).
    fn va_cache(&self) -> Result<KmemCache, KmmError> {
        if let Some(c) = KmemCache::from_raw(self.vm.cache.load(Acquire)) {
            return Ok(c);
        }
        let _g = self.vm.init_lock.lock();
        if let Some(c) = KmemCache::from_raw(self.vm.cache.load(Acquire)) {
            return Ok(c);
        }
        let c = self.kmem_cache_create("vmap_area", VA_SIZE, 0, crate::SlabFlags::empty(), None)?;
        self.vm.cache.store(c.to_raw(), Release);
        Ok(c)
    }

    fn kernel_pgd(&self) -> Result<&PageTable, KmmError> {
        self.vm.pgd.as_ref().ok_or(KmmError::InvalidArgument {
            what: "no kernel page table: x86 page tables need PAGE_SIZE 4K",
        })
    }

    // ------------------------------------------------------- vmap_area fields

    #[inline]
    fn va_get(&self, va: u64, off: u64) -> u64 {
        self.mem.load_u64(va + off).unwrap_or(0)
    }

    #[inline]
    fn va_set(&self, va: u64, off: u64, v: u64) {
        let _ = self.mem.store_u64(va + off, v);
    }

    fn va_info(&self, l: &VmapList, va: u64) -> VmStruct {
        let flags = self.va_get(va, VA_FLAGS);
        let pc = self.va_get(va, VA_PAGES_CALLER);
        let start = self.va_get(va, VA_START);
        VmStruct {
            addr: start,
            size: self.va_get(va, VA_END) - start,
            flags: VmFlags::from_bits_retain(flags as u32),
            nr_pages: pc as u32,
            phys_addr: self.va_get(va, VA_PHYS),
            nid: (pc >> 48) as u8 as usize,
            caller: l
                .callers
                .get(((pc >> 32) as u16) as usize)
                .copied()
                .flatten(),
            lazy: flags & VA_LAZY != 0,
        }
    }

    fn caller_id(l: &mut VmapList, loc: &'static Location<'static>) -> u64 {
        let key = (loc.file(), loc.line());
        let mut free = None;
        for (i, c) in l.callers.iter().enumerate() {
            match c {
                Some(k) if k.1 == key.1 && (core::ptr::eq(k.0, key.0) || k.0 == key.0) => {
                    return i as u64
                }
                None if free.is_none() => free = Some(i),
                _ => {}
            }
        }
        match free {
            Some(i) => {
                l.callers[i] = Some(key);
                i as u64
            }
            None => 0xffff,
        }
    }

    // ----------------------------------------------------- the busy list

    /// `alloc_vmap_area()`: reserves `req.size` bytes (guard page included)
    /// in `[vstart, vend)`; returns the new `vmap_area` (physical address).
    /// A purged area of the right size from the pools (`node_alloc()`)
    /// comes first; else a new object and the first-fit search.
    fn alloc_vmap_area(&self, req: &AreaRequest, vstart: u64, vend: u64) -> Result<u64, KmmError> {
        let cache = self.va_cache()?;
        if let Some(va) = self.pool_alloc(req, vstart, vend) {
            return Ok(va);
        }
        let obj = self.kmem_cache_alloc(cache, GfpFlags::GFP_KERNEL)?;
        let va = self.__pa(obj)?;
        let mut purged = false;
        loop {
            let mut l = self.vm.list.lock();
            if let Some((addr, prev)) = self.find_hole(&mut l, req.size, req.align, vstart, vend) {
                self.va_set(va, VA_START, addr);
                self.va_set(va, VA_END, addr + req.size);
                self.va_set(va, VA_LINK, 0);
                self.link_after(&mut l, va, prev);
                self.va_setup(&mut l, va, req);
                l.hint = va;
                return Ok(va);
            }
            let reclaimable = l.lazy_pages != 0 || l.pooled != 0;
            drop(l);
            if purged || !reclaimable {
                break;
            }
            // overflow: purge the lazily freed ranges, give the pooled ones
            // back too (a full decay) and search again.
            self.purge_vmap_area_lazy(true);
            purged = true;
        }
        let _ = self.kmem_cache_free(cache, obj);
        self.platform.printk(format_args!(
            "vmap allocation for size {} failed: use vmalloc=<size> to increase size",
            req.size
        ));
        Err(KmmError::NoMemory {
            order: 0,
            gfp: GfpFlags::GFP_KERNEL,
        })
    }

    /// Fills in what a new busy area is (`setup_vmalloc_vm()`) and puts it
    /// in the busy tree.
    fn va_setup(&self, l: &mut VmapList, va: u64, req: &AreaRequest) {
        let caller = Self::caller_id(l, req.caller);
        self.va_set(va, VA_FLAGS, u64::from(req.flags.bits()));
        self.va_set(va, VA_PAGES_CALLER, caller << 32);
        self.va_set(va, VA_PAGES, 0);
        self.va_set(va, VA_PHYS, 0);
        self.busy_insert(l, va);
    }

    /// Whether purged areas are pooled for reuse: Linux keeps pools in its
    /// `vmap_node`s, which exist on 64-bit machines with more than one CPU
    /// (with a single node it always goes to the free space).
    fn vmap_pools(&self) -> bool {
        self.arch.bits == 64 && self.nr_cpu_ids > 1
    }

    /// `node_alloc()` / `node_pool_del_va()`: the most recently purged area
    /// of exactly `req.size` bytes, if the request is for the whole vmalloc
    /// area and the area has the alignment asked for.
    fn pool_alloc(&self, req: &AreaRequest, vstart: u64, vend: u64) -> Option<u64> {
        let lay = &self.vm.layout;
        if !self.vmap_pools() || vstart != lay.vmalloc_start || vend != lay.vmalloc_end {
            return None;
        }
        let idx = ((req.size >> self.page_shift) as usize).checked_sub(1)?;
        let mut l = self.vm.list.lock();
        let pool = l.pools.get(idx)?;
        let va = pool.head;
        if va == 0 {
            return None;
        }
        let start = self.va_get(va, VA_START);
        let end = self.va_get(va, VA_END);
        if !start.is_multiple_of(req.align)
            || end - start != req.size
            || start < vstart
            || end > vend
        {
            return None;
        }
        let next = self.va_get(va, VA_LINK);
        let pool = &mut l.pools[idx];
        pool.head = next;
        pool.len -= 1;
        l.pooled -= 1;
        self.va_set(va, VA_LINK, 0);
        self.va_setup(&mut l, va, req);
        Some(va)
    }

    /// First fit from the cached position, else from the start.
    fn find_hole(
        &self,
        l: &mut VmapList,
        size: u64,
        align: u64,
        vstart: u64,
        vend: u64,
    ) -> Option<(u64, u64)> {
        if l.hint == 0
            || size < l.cached_hole_size
            || vstart < l.cached_vstart
            || align < l.cached_align
        {
            l.cached_hole_size = 0;
            l.hint = 0;
        }
        l.cached_vstart = vstart;
        l.cached_align = align;
        let mut addr;
        let mut next;
        // The range the new one would follow in the list.
        let mut prev;
        if l.hint != 0 && self.va_get(l.hint, VA_END) >= vstart {
            addr = self.va_get(l.hint, VA_END).next_multiple_of(align);
            prev = l.hint;
            next = self.va_get(l.hint, VA_NEXT);
        } else {
            l.hint = 0;
            addr = vstart.next_multiple_of(align);
            prev = 0;
            next = l.head;
            // Skip the ranges wholly below `addr`.
            while next != 0 && self.va_get(next, VA_END) <= addr {
                prev = next;
                next = self.va_get(next, VA_NEXT);
            }
        }
        loop {
            let end = addr.checked_add(size)?;
            if end > vend {
                return None;
            }
            if next == 0 || end <= self.va_get(next, VA_START) {
                return Some((addr, prev));
            }
            let start = self.va_get(next, VA_START);
            if addr < start && start - addr > l.cached_hole_size {
                l.cached_hole_size = start - addr;
            }
            addr = addr.max(self.va_get(next, VA_END).next_multiple_of(align));
            prev = next;
            next = self.va_get(next, VA_NEXT);
        }
    }

    /// The start address of the `vmap_area` whose tree node is `node`.
    fn rb_key(&self, node: u64) -> Result<u64, KmmError> {
        self.mem.load_u64(node - VA_RB + VA_START)
    }

    /// `insert_vmap_area()`: puts `va` into the busy tree, keyed by start.
    fn busy_insert(&self, l: &mut VmapList, va: u64) {
        let _ = crate::rbtree::rb_clear_node(&self.mem, va + VA_RB);
        let _ = rb_add(&self.mem, va + VA_RB, &mut l.root, |n| self.rb_key(n));
        let f = self.va_get(va, VA_FLAGS);
        self.va_set(va, VA_FLAGS, f | VA_IN_TREE);
    }

    /// Links `va` into the address-ordered list after `prev` (0: first),
    /// the place [`Self::find_hole`] found.
    fn link_after(&self, l: &mut VmapList, va: u64, prev: u64) {
        let next = if prev != 0 {
            self.va_get(prev, VA_NEXT)
        } else {
            l.head
        };
        self.va_set(va, VA_PREV, prev);
        self.va_set(va, VA_NEXT, next);
        if prev != 0 {
            self.va_set(prev, VA_NEXT, va);
        } else {
            l.head = va;
        }
        if next != 0 {
            self.va_set(next, VA_PREV, va);
        } else {
            l.tail = va;
        }
        l.count += 1;
    }

    /// Takes `va` out of the busy tree (it stays on the list, reserving its
    /// range, until the purge). Linux moves such areas to its purge tree.
    fn untree(&self, l: &mut VmapList, va: u64) {
        let f = self.va_get(va, VA_FLAGS);
        if f & VA_IN_TREE != 0 {
            let _ = rb_erase(&self.mem, va + VA_RB, &mut l.root);
            self.va_set(va, VA_FLAGS, f & !VA_IN_TREE);
        }
    }

    fn unlink(&self, l: &mut VmapList, va: u64) {
        self.untree(l, va);
        let (prev, next) = (self.va_get(va, VA_PREV), self.va_get(va, VA_NEXT));
        if l.hint != 0 && self.va_get(va, VA_START) <= self.va_get(l.hint, VA_START) {
            l.hint = prev;
        }
        if prev != 0 {
            self.va_set(prev, VA_NEXT, next);
        } else {
            l.head = next;
        }
        if next != 0 {
            self.va_set(next, VA_PREV, prev);
        } else {
            l.tail = prev;
        }
        l.count -= 1;
    }

    /// `find_vmap_area()`: the busy (not lazily freed) range starting at
    /// `addr`, from the tree in O(log n).
    fn find_vmap_area(&self, l: &VmapList, addr: u64) -> Option<u64> {
        let node = rb_find(&self.mem, &addr, &l.root, |n| self.rb_key(n)).ok()??;
        let va = node - VA_RB;
        (self.va_get(va, VA_FLAGS) & (VA_LAZY | VA_FREEING) == 0).then_some(va)
    }

    fn lazy_max_pages(&self) -> u64 {
        let cpus = self.nr_cpu_ids as u64;
        let fls = u64::from(64 - cpus.leading_zeros());
        (LAZY_MAX_BYTES >> self.page_shift) * fls
    }

    /// `free_vmap_area_noflush()`: the range waits for the lazy purge on
    /// the purge list.
    fn free_vmap_area_lazy(&self, va: u64) {
        let start = self.va_get(va, VA_START);
        let end = self.va_get(va, VA_END);
        let pages = (end - start) >> self.page_shift;
        let over = {
            let mut l = self.vm.list.lock();
            self.untree(&mut l, va);
            let flags = self.va_get(va, VA_FLAGS) & !VA_FREEING;
            self.va_set(va, VA_FLAGS, flags | VA_LAZY);
            self.va_set(va, VA_LINK, l.lazy_head);
            l.lazy_head = va;
            l.lazy_lo = l.lazy_lo.min(start);
            l.lazy_hi = l.lazy_hi.max(end);
            l.lazy_pages += pages;
            l.lazy_pages > self.lazy_max_pages()
        };
        if over {
            self.purge_vmap_area_lazy(false);
        }
    }

    /// `__purge_vmap_area_lazy()`: first the pools decay (a quarter of each
    /// goes back to the free space, or all of them with `full_decay`), then
    /// one `flush_tlb_kernel_range()` over the span of the purge list, after
    /// which its ranges are free: each goes to the pool of its size (with
    /// pools, and without `full_decay`) or back to the free space. Only the
    /// purge list and the pools are walked, never the busy areas.
    fn purge_vmap_area_lazy(&self, full_decay: bool) {
        let cache = match self.va_cache() {
            Ok(c) => c,
            Err(_) => return,
        };
        let pools = self.vmap_pools() && !full_decay;
        // Areas going back to the free space, linked by VA_LINK: their
        // objects are freed after the lock is dropped.
        let mut gone = 0u64;
        {
            let mut l = self.vm.list.lock();
            if l.pooled != 0 {
                for i in 0..MAX_VA_SIZE_PAGES {
                    let len = l.pools[i].len;
                    let decay = if full_decay { len } else { len >> 2 };
                    for _ in 0..decay {
                        let va = l.pools[i].head;
                        if va == 0 {
                            break;
                        }
                        l.pools[i].head = self.va_get(va, VA_LINK);
                        l.pools[i].len -= 1;
                        l.pooled -= 1;
                        self.unlink(&mut l, va);
                        self.va_set(va, VA_LINK, gone);
                        gone = va;
                    }
                }
            }
            if l.lazy_head != 0 {
                // The flush comes first: no CPU may translate a range once
                // it is free.
                self.platform.flush_tlb_kernel_range(l.lazy_lo, l.lazy_hi);
                self.vm.purges.fetch_add(1, Relaxed);
                let mut va = core::mem::take(&mut l.lazy_head);
                while va != 0 {
                    let next = self.va_get(va, VA_LINK);
                    let flags = self.va_get(va, VA_FLAGS) & !VA_LAZY;
                    let (start, end) = (self.va_get(va, VA_START), self.va_get(va, VA_END));
                    let idx = ((end - start) >> self.page_shift) as usize;
                    if pools && (1..=MAX_VA_SIZE_PAGES).contains(&idx) {
                        self.va_set(va, VA_FLAGS, flags | VA_POOLED);
                        let pool = &mut l.pools[idx - 1];
                        self.va_set(va, VA_LINK, pool.head);
                        pool.head = va;
                        pool.len += 1;
                        l.pooled += 1;
                    } else {
                        self.va_set(va, VA_FLAGS, flags);
                        self.unlink(&mut l, va);
                        self.va_set(va, VA_LINK, gone);
                        gone = va;
                    }
                    va = next;
                }
                l.lazy_pages = 0;
                l.lazy_lo = u64::MAX;
                l.lazy_hi = 0;
            }
        }
        while gone != 0 {
            let next = self.va_get(gone, VA_LINK);
            if let Ok(obj) = self.__va(gone) {
                let _ = self.kmem_cache_free(cache, obj);
            }
            gone = next;
        }
    }

    /// `vm_unmap_aliases()`: flushes the TLBs of every lazily freed range
    /// now, so no CPU keeps a translation of memory `vfree` gave back. kmm
    /// also gives every pooled range back to the free space (the full
    /// decay Linux does when an allocation finds no room), so that
    /// afterwards the vmalloc area holds exactly its busy ranges.
    pub fn vm_unmap_aliases(&self) {
        self.purge_vmap_area_lazy(true);
    }

    // ------------------------------------------------- kernel page table

    /// The PTE table covering kernel address `virt`, allocated (with the
    /// tables above it) when missing (`pte_alloc_kernel`): a walk without
    /// the lock when the tables exist (they are never freed), and only when
    /// one is missing `init_mm.page_table_lock` and a second walk that
    /// allocates (`__pte_alloc_kernel`).
    fn kernel_pte_table(&self, virt: u64, alloc: bool) -> Result<Option<u64>, KmmError> {
        let pgd = self.kernel_pgd()?;
        match pgd.pte_table(self, virt)? {
            Some(table) => Ok(Some(table)),
            None if !alloc => Ok(None),
            None => self.kernel_pte_alloc(pgd, virt).map(Some),
        }
    }

    /// `__pte_alloc_kernel()` and the levels above: under
    /// `init_mm.page_table_lock`, fills every missing table on the way to
    /// the PTE table of `virt` with a zeroed page.
    #[cold]
    fn kernel_pte_alloc(&self, pgd: &PageTable, virt: u64) -> Result<u64, KmmError> {
        let fmt = pgd.fmt;
        let _g = self.vm.pt_lock.lock();
        let mut table = pgd.root;
        for level in (1..fmt.levels()).rev() {
            let idx = ((virt >> fmt.shift(level)) as usize) & (fmt.entries(level) - 1);
            let raw = read_entry(&self.mem, fmt, table, idx)?;
            table = match fmt.decode(raw, level) {
                Entry::Table(next) => next,
                Entry::Leaf { .. } => return Err(KmmError::AlreadyMapped { virt }),
                Entry::None => {
                    let new = self.__pa(self.get_zeroed_page(GfpFlags::GFP_KERNEL)?)?;
                    let raw = fmt
                        .encode_table(new, level)
                        .ok_or(KmmError::InvalidAddress {
                            addr: new,
                            what: "page-table page the format cannot point at",
                        })?;
                    write_entry(&self.mem, fmt, table, idx, raw)?;
                    self.vm.nr_kernel_tables.fetch_add(1, Relaxed);
                    new
                }
            };
        }
        Ok(table)
    }

    /// The runs of PTEs `[start, start + n pages)` covers, one per PTE
    /// table: `f(first page, run)` with the table found (or, with `alloc`,
    /// made) once per run. A run whose table is missing (without `alloc`)
    /// is skipped. Stops at the first error, returning it with the number
    /// of pages before the run that failed.
    fn for_each_pte_run(
        &self,
        start: u64,
        n: u64,
        alloc: bool,
        f: &mut impl FnMut(u64, PteRange) -> (usize, Result<(), KmmError>),
    ) -> (u64, Result<(), KmmError>) {
        let pgd = match self.kernel_pgd() {
            Ok(p) => p,
            Err(e) => return (0, Err(e)),
        };
        let ps = self.page_size();
        let per_table = pgd.fmt.entries(0) as u64;
        let mut i = 0;
        while i < n {
            let virt = start + i * ps;
            let first = (virt >> self.page_shift) & (per_table - 1);
            let m = (per_table - first).min(n - i);
            match self.kernel_pte_table(virt, alloc) {
                Ok(Some(table)) => {
                    let run = PteRange {
                        table,
                        first: first as usize,
                        count: m as usize,
                        virt,
                    };
                    let (done, r) = f(i, run);
                    if r.is_err() {
                        return (i + done as u64, r);
                    }
                }
                Ok(None) => {}
                Err(e) => return (i, Err(e)),
            }
            i += m;
        }
        (n, Ok(()))
    }

    /// `vmap_pages_range()`: maps `n` pages at `start`, the `i`th at
    /// physical address `phys(i)`, walking to each PTE table once and
    /// filling its run with [`PageTable::set_ptes`]. On failure nothing
    /// stays mapped.
    fn vmap_range(
        &self,
        start: u64,
        n: u64,
        prot: PteFlags,
        mut phys: impl FnMut(u64) -> Result<u64, KmmError>,
    ) -> Result<(), KmmError> {
        let pgd = self.kernel_pgd()?;
        let (done, result) = self.for_each_pte_run(start, n, true, &mut |i, run| {
            pgd.set_ptes(self, run, prot, |j| phys(i + j as u64))
        });
        if result.is_err() {
            self.vunmap_range(start, start + done * self.page_size())?;
        }
        result
    }

    /// `vunmap_range_noflush()`: clears the PTEs of `[start, end)`. The
    /// tables stay (Linux never frees kernel page tables here); the TLB
    /// flush is the caller's.
    fn vunmap_range(&self, start: u64, end: u64) -> Result<(), KmmError> {
        let pgd = self.kernel_pgd()?;
        let n = end.saturating_sub(start) >> self.page_shift;
        self.for_each_pte_run(start, n, false, &mut |_, run| {
            (run.count, pgd.clear_ptes(self, run))
        })
        .1
    }

    /// `set_pte_at(&init_mm, ...)` / `pte_clear()` of one kernel page whose
    /// PTE table exists (pkmap and fixmap slots): maps `virt` to `phys`, or
    /// clears it with `None`. Returns whether something was mapped there.
    pub(crate) fn set_kernel_pte(
        &self,
        virt: u64,
        phys: Option<u64>,
        prot: PteFlags,
    ) -> Result<bool, KmmError> {
        let pgd = self.kernel_pgd()?;
        let fmt = pgd.fmt;
        let table = self
            .kernel_pte_table(virt, phys.is_some())?
            .ok_or(KmmError::NotMapped { virt })?;
        let idx = ((virt >> fmt.shift(0)) as usize) & (fmt.entries(0) - 1);
        let old = read_entry(&self.mem, fmt, table, idx)?;
        let raw = match phys {
            Some(p) => fmt
                .encode_leaf(p, (prot | PteFlags::PRESENT) & fmt.supported_flags(), 0)
                .ok_or(KmmError::InvalidAddress {
                    addr: p,
                    what: "physical address beyond the page-table format's reach",
                })?,
            None => 0,
        };
        write_entry(&self.mem, fmt, table, idx, raw)?;
        Ok(old != 0)
    }

    /// The page frame a kernel address maps to, through `swapper_pg_dir`.
    fn kernel_translate(&self, addr: u64) -> Option<u64> {
        self.vm.pgd.as_ref()?.walk(self, addr).map(|t| t.phys)
    }

    // --------------------------------------------------------- the API

    /// `__get_vm_area_caller()`: reserves a range of the vmalloc area of
    /// `size` bytes (rounded up to pages, plus a guard page unless
    /// [`VmFlags::VM_NO_GUARD`]) without mapping anything. Free it with
    /// [`Self::free_vm_area`].
    #[track_caller]
    pub fn get_vm_area(&self, size: u64, flags: VmFlags) -> Result<VmStruct, KmmError> {
        let caller = Location::caller();
        self.might_sleep("mm/vmalloc.rs", line!())?;
        let va = self.get_vm_area_node(size, self.page_size(), flags, caller)?;
        let l = self.vm.list.lock();
        Ok(self.va_info(&l, va))
    }

    fn get_vm_area_node(
        &self,
        size: u64,
        align: u64,
        flags: VmFlags,
        caller: &'static Location<'static>,
    ) -> Result<u64, KmmError> {
        self.kernel_pgd()?;
        let ps = self.page_size();
        let size = match size.checked_next_multiple_of(ps) {
            Some(s) if s != 0 => s,
            _ => {
                return Err(KmmError::InvalidArgument {
                    what: "vmalloc area of size 0 or beyond the address space",
                })
            }
        };
        let guard = if flags.contains(VmFlags::VM_NO_GUARD) {
            0
        } else {
            ps
        };
        let total = size.checked_add(guard).ok_or(KmmError::TooLarge {
            size,
            max: self.vmalloc_total(),
            what: "VMALLOC_TOTAL",
        })?;
        if total > self.vmalloc_total() {
            return Err(KmmError::TooLarge {
                size,
                max: self.vmalloc_total(),
                what: "VMALLOC_TOTAL",
            });
        }
        if !align.is_power_of_two() {
            return Err(KmmError::InvalidArgument {
                what: "vmalloc alignment is not a power of two",
            });
        }
        let req = AreaRequest {
            size: total,
            align: align.max(ps),
            flags,
            caller,
        };
        let lay = self.vm.layout;
        self.alloc_vmap_area(&req, lay.vmalloc_start, lay.vmalloc_end)
    }

    /// `free_vm_area()`: gives back a range from [`Self::get_vm_area`],
    /// unmapping whatever is mapped in it.
    pub fn free_vm_area(&self, addr: u64) -> Result<(), KmmError> {
        self.might_sleep("mm/vmalloc.rs", line!())?;
        self.remove_vm_area(addr, VmFlags::empty(), "free_vm_area")
            .map(|_| ())
    }

    /// `remove_vm_area()`: finds the busy range at `addr`, checks it has
    /// `want` flags, unmaps it and queues it for the lazy purge. Returns
    /// the page array and page count.
    fn remove_vm_area(
        &self,
        addr: u64,
        want: VmFlags,
        who: &'static str,
    ) -> Result<(u64, u64), KmmError> {
        let (va, start, end, flags, pages, nr) = {
            let mut l = self.vm.list.lock();
            let found = self.find_vmap_area(&l, addr).filter(|&va| {
                VmFlags::from_bits_retain(self.va_get(va, VA_FLAGS) as u32).contains(want)
            });
            let Some(va) = found else {
                drop(l);
                self.platform.printk(format_args!(
                    "WARNING: CPU: {} at mm/vmalloc.rs:{} {who}: Trying to {who}() nonexistent vm area ({addr:#018x})",
                    self.platform.smp_processor_id(),
                    line!()
                ));
                return Err(KmmError::InvalidAddress {
                    addr,
                    what: "address that no vmalloc/vmap/ioremap returned (or already freed)",
                });
            };
            // Out of the busy tree: a second free of the same address finds
            // nothing.
            self.untree(&mut l, va);
            let flags = self.va_get(va, VA_FLAGS);
            self.va_set(va, VA_FLAGS, flags | VA_FREEING);
            (
                va,
                self.va_get(va, VA_START),
                self.va_get(va, VA_END),
                flags,
                self.va_get(va, VA_PAGES),
                self.va_get(va, VA_PAGES_CALLER) as u32 as u64,
            )
        };
        let guard = if VmFlags::from_bits_retain(flags as u32).contains(VmFlags::VM_NO_GUARD) {
            0
        } else {
            self.page_size()
        };
        self.vunmap_range(start, end - guard)?;
        self.free_vmap_area_lazy(va);
        Ok((pages, nr))
    }

    /// `vmalloc()`: `size` bytes (rounded up to whole pages) of virtually
    /// contiguous memory, its pages taken one at a time with
    /// `GFP_KERNEL | __GFP_HIGHMEM` and mapped into the vmalloc area.
    /// Returns the kernel virtual address. May sleep: in atomic context
    /// it is refused with Linux's "sleeping function called from invalid
    /// context" report. Free it with [`Self::vfree`].
    #[track_caller]
    pub fn vmalloc(&self, size: u64) -> Result<u64, KmmError> {
        self.__vmalloc_node(size, GfpFlags::GFP_KERNEL, None, false, Location::caller())
    }

    /// `vzalloc()`: [`Self::vmalloc`], zero-filled.
    #[track_caller]
    pub fn vzalloc(&self, size: u64) -> Result<u64, KmmError> {
        self.__vmalloc_node(
            size,
            GfpFlags::GFP_KERNEL | GfpFlags::__GFP_ZERO,
            None,
            false,
            Location::caller(),
        )
    }

    /// `vmalloc_node()`: [`Self::vmalloc`] with pages from node `nid`.
    #[track_caller]
    pub fn vmalloc_node(&self, size: u64, nid: usize) -> Result<u64, KmmError> {
        self.__vmalloc_node(
            size,
            GfpFlags::GFP_KERNEL,
            Some(nid),
            false,
            Location::caller(),
        )
    }

    /// `vmalloc_32()`: [`Self::vmalloc`] with pages a 32-bit device can
    /// reach (`GFP_VMALLOC32`: `ZONE_DMA32` on x86_64, low memory on x86).
    #[track_caller]
    pub fn vmalloc_32(&self, size: u64) -> Result<u64, KmmError> {
        let gfp = if self.arch.bits == 64 {
            GfpFlags::GFP_KERNEL | GfpFlags::__GFP_DMA32
        } else {
            GfpFlags::GFP_KERNEL
        };
        self.__vmalloc_node(size, gfp, None, true, Location::caller())
    }

    /// `__vmalloc()`: [`Self::vmalloc`] with the caller's GFP mask. Linux
    /// supports only masks that may sleep (`GFP_KERNEL` and its
    /// modifiers); anything else is refused as `vmalloc` warns.
    #[track_caller]
    pub fn __vmalloc(&self, size: u64, gfp: GfpFlags) -> Result<u64, KmmError> {
        self.__vmalloc_node(size, gfp, None, false, Location::caller())
    }

    fn __vmalloc_node(
        &self,
        size: u64,
        gfp: GfpFlags,
        nid: Option<usize>,
        low_only: bool,
        caller: &'static Location<'static>,
    ) -> Result<u64, KmmError> {
        self.__vmalloc_node_range(size, self.page_size(), gfp, nid, low_only, caller)
    }

    /// `__vmalloc_node_range()`: [`Self::vmalloc`] with the range's start
    /// aligned to `align` (a power of two, at least a page), e.g.
    /// `THREAD_ALIGN` for virtually mapped kernel stacks.
    pub(crate) fn __vmalloc_node_range(
        &self,
        size: u64,
        align: u64,
        gfp: GfpFlags,
        nid: Option<usize>,
        low_only: bool,
        caller: &'static Location<'static>,
    ) -> Result<u64, KmmError> {
        if !gfp.allows_blocking() {
            self.platform.printk(format_args!(
                "vmalloc error: size {size}, unsupported GFP flags {gfp:?}: vmalloc may sleep"
            ));
            return Err(KmmError::InvalidGfp {
                gfp,
                why: "vmalloc needs a mask that may sleep (GFP_KERNEL)",
            });
        }
        self.might_sleep("mm/vmalloc.rs", line!())?;
        if let Some(n) = nid {
            if n >= self.nr_node_ids {
                return Err(KmmError::InvalidNode { nid: n });
            }
        }
        let ps = self.page_size();
        let nr_pages = size.div_ceil(ps);
        if size == 0 || nr_pages > self.totalram_pages() {
            self.platform.printk(format_args!(
                "vmalloc error: size {size}, {}",
                if size == 0 {
                    "zero size"
                } else {
                    "exceeds total pages"
                }
            ));
            return Err(if size == 0 {
                KmmError::InvalidArgument {
                    what: "vmalloc of 0 bytes",
                }
            } else {
                KmmError::TooLarge {
                    size,
                    max: self.totalram_pages() * ps,
                    what: "totalram_pages",
                }
            });
        }
        let va = self.get_vm_area_node(
            nr_pages * ps,
            align.max(ps),
            VmFlags::VM_ALLOC | VmFlags::VM_UNINITIALIZED,
            caller,
        )?;
        let start = self.va_get(va, VA_START);
        let nid = nid.unwrap_or_else(|| self.numa_node_id());
        match self.vmalloc_area_pages(va, start, nr_pages, gfp, nid, low_only) {
            Ok(()) => {
                let f = self.va_get(va, VA_FLAGS) & !u64::from(VmFlags::VM_UNINITIALIZED.bits());
                self.va_set(va, VA_FLAGS, f);
                self.vm.nr_vmalloc_pages.fetch_add(nr_pages, Relaxed);
                Ok(start)
            }
            Err(e) => {
                self.platform.printk(format_args!(
                    "vmalloc error: size {}, page order 0, failed to allocate pages, mode:{gfp:?}, nodemask=(null)",
                    nr_pages * ps
                ));
                self.va_set(va, VA_PAGES, 0);
                self.free_vmap_area_lazy(va);
                Err(e)
            }
        }
    }

    /// `__vmalloc_area_node()`: the page array, the pages, the mapping.
    fn vmalloc_area_pages(
        &self,
        va: u64,
        start: u64,
        nr_pages: u64,
        gfp: GfpFlags,
        nid: usize,
        low_only: bool,
    ) -> Result<(), KmmError> {
        let array_bytes = (nr_pages * 8) as usize;
        let array = self.kmalloc(array_bytes, GfpFlags::GFP_KERNEL)?;
        let array_phys = self.__pa(array)?;
        // The array as RAM words (kmalloc objects are 8-byte aligned): one
        // bounds check for all of it.
        let slots = match self.page_array(array_phys, nr_pages) {
            Ok(s) => s,
            Err(e) => {
                let _ = self.kfree(array);
                return Err(e);
            }
        };
        let zone_asked = gfp.intersects(GfpFlags::__GFP_DMA | GfpFlags::__GFP_DMA32);
        let page_gfp = if low_only || zone_asked || self.arch.max_lowmem.is_none() {
            gfp
        } else {
            gfp | GfpFlags::__GFP_HIGHMEM
        };
        // alloc_pages_bulk_array_node(): the pages in one go, into the array.
        let mut got = 0usize;
        let mut result = self
            .alloc_pages_bulk(nid, page_gfp | GfpFlags::__GFP_NOWARN, nr_pages, |pfn| {
                let slot = slots.get(got).ok_or(KmmError::InvalidArgument {
                    what: "alloc_pages_bulk handed out more pages than asked",
                })?;
                slot.store(pfn.to_le(), Relaxed);
                got += 1;
                Ok(())
            })
            .map(drop);
        if result.is_ok() {
            let shift = self.page_shift;
            result = self.vmap_range(start, nr_pages, PAGE_KERNEL, |i| {
                slots
                    .get(i as usize)
                    .map(|s| u64::from_le(s.load(Relaxed)) << shift)
                    .ok_or(KmmError::InvalidArgument {
                        what: "page array shorter than the area",
                    })
            });
        }
        if result.is_err() {
            self.free_page_array(array_phys, got as u64);
            let _ = self.kfree(array);
            return result;
        }
        let pc = self.va_get(va, VA_PAGES_CALLER) & !0xffff_ffff & !(0xff << 48);
        self.va_set(
            va,
            VA_PAGES_CALLER,
            pc | nr_pages | ((nid as u64 & 0xff) << 48),
        );
        self.va_set(va, VA_PAGES, array);
        Ok(())
    }

    /// The page array (`vm_struct->pages`) of `n` frame numbers at
    /// `array_phys`, as RAM words.
    fn page_array(&self, array_phys: u64, n: u64) -> Result<&[AtomicU64], KmmError> {
        self.mem.ram_slice::<AtomicU64>(array_phys, n as usize)
    }

    /// Frees the first `n` pages of the page array at `array_phys`.
    fn free_page_array(&self, array_phys: u64, n: u64) {
        if let Ok(slots) = self.page_array(array_phys, n) {
            let _ = self.free_pages_bulk(slots.iter().map(|s| u64::from_le(s.load(Relaxed))));
        }
    }

    /// `vfree()`: unmaps and frees what [`Self::vmalloc`] returned (the TLB
    /// flush is lazy: see the module docs). `vfree(0)` does nothing. An
    /// address `vmalloc` did not return is reported ("Trying to vfree()
    /// nonexistent vm area") and refused. Not in atomic context outside
    /// interrupts (in an interrupt Linux defers the free; kmm frees at once).
    pub fn vfree(&self, addr: u64) -> Result<(), KmmError> {
        if addr == 0 {
            return Ok(());
        }
        let pc = self.platform.preempt_count();
        if !preempt::in_interrupt(pc) {
            self.might_sleep("mm/vmalloc.rs", line!())?;
        }
        let (array, nr) = self.remove_vm_area(addr, VmFlags::VM_ALLOC, "vfree")?;
        if array != 0 {
            self.free_page_array(self.__pa(array)?, nr);
            self.kfree(array)?;
            self.vm.nr_vmalloc_pages.fetch_sub(nr, Relaxed);
        }
        Ok(())
    }

    /// `vmap()`: maps `pages` (page frame numbers) at consecutive addresses
    /// of the vmalloc area with protection `prot` (`PAGE_KERNEL` if empty).
    /// The pages stay the caller's; [`Self::vunmap`] undoes the mapping.
    #[track_caller]
    pub fn vmap(&self, pfns: &[u64], flags: VmFlags, prot: PteFlags) -> Result<u64, KmmError> {
        self.might_sleep("mm/vmalloc.rs", line!())?;
        if pfns.is_empty() {
            return Err(KmmError::InvalidArgument {
                what: "vmap of no pages",
            });
        }
        for &pfn in pfns {
            self.pfn_to_page(pfn)?;
        }
        let ps = self.page_size();
        let n = pfns.len() as u64;
        let va = self.get_vm_area_node(n * ps, ps, flags | VmFlags::VM_MAP, Location::caller())?;
        let start = self.va_get(va, VA_START);
        let prot = if prot.is_empty() { PAGE_KERNEL } else { prot };
        let shift = self.page_shift;
        if let Err(e) = self.vmap_range(start, n, prot, |i| Ok(pfns[i as usize] << shift)) {
            self.free_vmap_area_lazy(va);
            return Err(e);
        }
        Ok(start)
    }

    /// `vunmap()`: removes a [`Self::vmap`] mapping; the pages are not freed.
    pub fn vunmap(&self, addr: u64) -> Result<(), KmmError> {
        self.might_sleep("mm/vmalloc.rs", line!())?;
        self.remove_vm_area(addr, VmFlags::VM_MAP, "vunmap")
            .map(|_| ())
    }

    /// `vmalloc_to_pfn()`: the page frame behind a vmalloc or vmap address.
    pub fn vmalloc_to_pfn(&self, addr: u64) -> Result<u64, KmmError> {
        if !self.is_vmalloc_addr(addr) {
            return Err(KmmError::InvalidAddress {
                addr,
                what: "address outside the vmalloc area",
            });
        }
        self.kernel_translate(addr)
            .map(|phys| phys >> self.page_shift)
            .ok_or(KmmError::NotMapped { virt: addr })
    }

    /// `vmalloc_to_page()`: the `struct page` behind a vmalloc address.
    pub fn vmalloc_to_page(&self, addr: u64) -> Result<&Page, KmmError> {
        self.pfn_to_page(self.vmalloc_to_pfn(addr)?)
    }

    /// `find_vm_area()`: the busy range starting at `addr`.
    pub fn find_vm_area(&self, addr: u64) -> Option<VmStruct> {
        let l = self.vm.list.lock();
        let va = self.find_vmap_area(&l, addr)?;
        Some(self.va_info(&l, va))
    }

    /// Every range of the vmalloc area in address order, lazily freed ones
    /// included (what `/proc/vmallocinfo` walks).
    pub fn for_each_vm_area(&self, f: &mut dyn FnMut(&VmStruct)) {
        let l = self.vm.list.lock();
        let mut va = l.head;
        while va != 0 {
            if self.va_get(va, VA_FLAGS) & VA_POOLED == 0 {
                f(&self.va_info(&l, va));
            }
            va = self.va_get(va, VA_NEXT);
        }
    }

    /// `vread()` (what `/proc/kcore` uses): copies kernel virtual memory at
    /// `addr` into `buf` through a software walk of the kernel page table;
    /// unmapped pages read as zeros, as Linux's `vread_iter` fills holes.
    pub fn vread(&self, addr: u64, buf: &mut [u8]) -> Result<(), KmmError> {
        self.vcopy(addr, buf.len(), &mut |phys, range| match phys {
            Some((p, _)) => self.mem.read(p, &mut buf[range]),
            None => {
                buf[range].fill(0);
                Ok(())
            }
        })
    }

    /// Writes `data` to kernel virtual memory at `addr` through a software
    /// walk of the kernel page table (no TLB). Unmapped or read-only pages
    /// are an error and stop the copy there.
    pub fn vwrite(&self, addr: u64, data: &[u8]) -> Result<(), KmmError> {
        self.vcopy(addr, data.len(), &mut |phys, range| {
            let at = addr + range.start as u64;
            match phys {
                Some((p, true)) => self.mem.write(p, &data[range]),
                Some((_, false)) => Err(KmmError::InvalidAddress {
                    addr: at,
                    what: "write to a read-only kernel mapping",
                }),
                None => Err(KmmError::NotMapped { virt: at }),
            }
        })
    }

    fn vcopy(&self, addr: u64, len: usize, f: &mut VcopyFn<'_>) -> Result<(), KmmError> {
        let pgd = self.kernel_pgd()?;
        let mut done = 0usize;
        while done < len {
            let at = addr.wrapping_add(done as u64);
            let t = pgd.walk(self, at);
            let size = t.map_or(self.page_size(), |t| t.size);
            let n = ((size - (at & (size - 1))) as usize).min(len - done);
            f(t.map(|t| (t.phys, t.flags.pte_write())), done..done + n)?;
            done += n;
        }
        Ok(())
    }

    // ------------------------------------------------------------ ioremap

    /// `ioremap()`: maps device memory at `phys` (`size` bytes) uncached
    /// (`_PAGE_CACHE_MODE_UC_MINUS`: PCD) into the vmalloc area without
    /// allocating pages. An unaligned request maps the whole pages around
    /// it and returns the address plus the offset (LDD3 §9.4). Linux refuses
    /// to ioremap RAM ("ioremap on RAM at ...").
    #[track_caller]
    pub fn ioremap(&self, phys: u64, size: u64) -> Result<u64, KmmError> {
        self.ioremap_prot(phys, size, PteFlags::CACHE_DISABLE, Location::caller())
    }

    /// `ioremap_uc()`: strongly uncached (PCD and PWT).
    #[track_caller]
    pub fn ioremap_uc(&self, phys: u64, size: u64) -> Result<u64, KmmError> {
        self.ioremap_prot(
            phys,
            size,
            PteFlags::CACHE_DISABLE | PteFlags::WRITE_THROUGH,
            Location::caller(),
        )
    }

    /// `ioremap_wc()`: write-combining (the PAT slot selected by PWT).
    #[track_caller]
    pub fn ioremap_wc(&self, phys: u64, size: u64) -> Result<u64, KmmError> {
        self.ioremap_prot(phys, size, PteFlags::WRITE_THROUGH, Location::caller())
    }

    /// `ioremap_cache()`: write-back cached.
    #[track_caller]
    pub fn ioremap_cache(&self, phys: u64, size: u64) -> Result<u64, KmmError> {
        self.ioremap_prot(phys, size, PteFlags::empty(), Location::caller())
    }

    fn ioremap_prot(
        &self,
        phys: u64,
        size: u64,
        cache: PteFlags,
        caller: &'static Location<'static>,
    ) -> Result<u64, KmmError> {
        self.might_sleep("mm/vmalloc.rs", line!())?;
        let last = match phys.checked_add(size) {
            Some(end) if size != 0 => end - 1,
            _ => {
                return Err(KmmError::InvalidArgument {
                    what: "ioremap of 0 bytes or past the end of the address space",
                })
            }
        };
        if self.is_ram(phys, last) {
            self.platform.printk(format_args!(
                "WARNING: CPU: {} at mm/vmalloc.rs:{} __ioremap_caller: ioremap on RAM at {phys:#018x} - {last:#018x}",
                self.platform.smp_processor_id(),
                line!()
            ));
            return Err(KmmError::InvalidAddress {
                addr: phys,
                what: "ioremap of RAM",
            });
        }
        let ps = self.page_size();
        let offset = phys & (ps - 1);
        let base = phys - offset;
        let n = (last + 1 - base).div_ceil(ps);
        let va = self.get_vm_area_node(n * ps, ps, VmFlags::VM_IOREMAP, caller)?;
        let start = self.va_get(va, VA_START);
        self.va_set(va, VA_PHYS, base);
        let prot = PAGE_KERNEL | cache;
        if let Err(e) = self.vmap_range(start, n, prot, |i| Ok(base + i * ps)) {
            self.free_vmap_area_lazy(va);
            return Err(e);
        }
        Ok(start + offset)
    }

    /// True when any byte of `[phys, last]` is RAM (`walk_system_ram_range`).
    fn is_ram(&self, phys: u64, last: u64) -> bool {
        self.memblock
            .lock()
            .memory
            .regions()
            .iter()
            .any(|r| r.base <= last && phys < r.end())
    }

    /// `iounmap()`: removes an [`Self::ioremap`] mapping (any address inside
    /// its first page, as returned with the offset, is accepted).
    pub fn iounmap(&self, addr: u64) -> Result<(), KmmError> {
        self.might_sleep("mm/vmalloc.rs", line!())?;
        let base = addr & !(self.page_size() - 1);
        self.remove_vm_area(base, VmFlags::VM_IOREMAP, "iounmap")
            .map(|_| ())
    }
}

/// `/proc/vmallocinfo` (`vmalloc_info_show()`): one line per range:
/// `start-end size caller [pages=N] [phys=...] kind [N0=...]`; lazily freed
/// ranges as `unpurged vm_area`.
pub fn vmallocinfo<P: Platform>(k: &Kmm<P>, out: &mut dyn Write) -> fmt::Result {
    let mut r = Ok(());
    let w64 = k.arch().bits == 64;
    k.for_each_vm_area(&mut |v| {
        if r.is_err() {
            return;
        }
        r = vmallocinfo_line(v, w64, out);
    });
    r
}

fn vmallocinfo_line(v: &VmStruct, w64: bool, out: &mut dyn Write) -> fmt::Result {
    let end = v.addr + v.size;
    if w64 {
        write!(out, "0x{:016x}-0x{:016x} {:7}", v.addr, end, v.size)?;
    } else {
        write!(out, "0x{:08x}-0x{:08x} {:7}", v.addr, end, v.size)?;
    }
    if v.lazy {
        return writeln!(out, " unpurged vm_area");
    }
    if let Some((file, line)) = v.caller {
        write!(out, " {file}:{line}")?;
    }
    if v.nr_pages != 0 {
        write!(out, " pages={}", v.nr_pages)?;
    }
    if v.phys_addr != 0 {
        if w64 {
            write!(out, " phys=0x{:016x}", v.phys_addr)?;
        } else {
            write!(out, " phys=0x{:08x}", v.phys_addr)?;
        }
    }
    if v.flags.contains(VmFlags::VM_IOREMAP) {
        write!(out, " ioremap")?;
    }
    if v.flags.contains(VmFlags::VM_ALLOC) {
        write!(out, " vmalloc")?;
    }
    if v.flags.contains(VmFlags::VM_MAP) {
        write!(out, " vmap")?;
    }
    if v.flags.contains(VmFlags::VM_USERMAP) {
        write!(out, " user")?;
    }
    if v.nr_pages != 0 {
        write!(out, " N{}={}", v.nid, v.nr_pages)?;
    }
    writeln!(out)
}
