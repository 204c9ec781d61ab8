//! The competitors of `kmm bench slab`, each behind [`Objects`]: the
//! `no_std` heaps over [`Region`]s of host memory (slabmalloc with its
//! [`Pager`], talc, linked_list_allocator, buddy_system_allocator), and any
//! `GlobalAlloc` called directly ([`Global`]: System, mimalloc, the locked
//! heaps).

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt;
use std::marker::PhantomData;
use std::ptr::NonNull;

use slabmalloc::{
    AllocationError, Allocator as _, LargeObjectPage, ObjectPage, SCAllocator, ZoneAllocator,
};
use talc::base::Talc;
use talc::source::Manual;
use talc::DefaultBinning;

use super::{Objects, ALIGN, OBJ};

/// buddy_system_allocator's `ORDER`: blocks up to 2 GiB, so a region as
/// large as the machine is a few big blocks.
pub(super) const BUDDY_ORDER: usize = 32;
/// Alignment of the competitors' regions: slabmalloc's large pages.
const REGION_ALIGN: usize = 2 << 20;
/// Bytes of slabmalloc's `ObjectPage`.
const SMALL_PAGE: usize = 4096;
/// Bytes of slabmalloc's `LargeObjectPage`.
const LARGE_PAGE: usize = 2 << 20;

const _: () = assert!(std::mem::size_of::<ObjectPage<'static>>() == SMALL_PAGE);
const _: () = assert!(std::mem::size_of::<LargeObjectPage<'static>>() == LARGE_PAGE);

/// A competitor refused an allocation (out of memory, or a size it cannot serve).
#[derive(Clone, Copy, Debug)]
pub(super) struct NoMemory(pub(super) &'static str);

impl fmt::Display for NoMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: out of memory", self.0)
    }
}

/// The layout every competitor is asked for.
#[inline(always)]
pub(super) fn layout(size: usize, who: &'static str) -> Result<Layout, NoMemory> {
    Layout::from_size_align(size, ALIGN).map_err(|_| NoMemory(who))
}

/// Host memory given to a `no_std` heap: `len` bytes aligned to 2 MiB,
/// from the system allocator, which maps it lazily.
pub(super) struct Region {
    base: NonNull<u8>,
    layout: Layout,
}

// SAFETY: a `Region` owns its allocation; it only hands out its address.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` gives no access to the bytes.
unsafe impl Sync for Region {}

impl Region {
    /// A region of `len` bytes (rounded up to 2 MiB).
    pub(super) fn new(len: usize) -> Result<Region, String> {
        let len = len.div_ceil(REGION_ALIGN).max(1) * REGION_ALIGN;
        let layout = Layout::from_size_align(len, REGION_ALIGN)
            .map_err(|e| format!("region of {len} bytes: {e}"))?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { System.alloc(layout) };
        let base = NonNull::new(p).ok_or_else(|| format!("cannot map a region of {len} bytes"))?;
        Ok(Region { base, layout })
    }

    pub(super) fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    pub(super) fn len(&self) -> usize {
        self.layout.size()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { System.dealloc(self.base.as_ptr(), self.layout) }
    }
}

/// slabmalloc's page source over a [`Region`]: 4 KiB pages from the bottom
/// (reused once given back), 2 MiB pages from the top.
pub(super) struct Pager<'a> {
    region: &'a Region,
    /// Bytes at the bottom handed out as 4 KiB pages.
    low: usize,
    /// Offset of the lowest 2 MiB page handed out (the region's length at first).
    high: usize,
    /// 4 KiB pages given back, for reuse.
    free: Vec<usize>,
}

impl<'a> Pager<'a> {
    pub(super) fn new(region: &'a Region) -> Pager<'a> {
        Pager {
            region,
            low: 0,
            high: region.len(),
            free: Vec::new(),
        }
    }

    /// A zeroed 4 KiB page no one else uses.
    pub(super) fn small(&mut self) -> Option<&'a mut ObjectPage<'a>> {
        let addr = match self.free.pop() {
            Some(a) => a,
            None => {
                if self.low + SMALL_PAGE > self.high {
                    return None;
                }
                self.low += SMALL_PAGE;
                self.region.base() as usize + self.low - SMALL_PAGE
            }
        };
        let page = addr as *mut ObjectPage<'a>;
        // SAFETY: `[addr, addr + 4096)` lies in the region (below `high`),
        // is 4096-aligned (the region is 2 MiB aligned), belongs to no other
        // page handed out and not given back, and the region outlives 'a.
        // Zeroed, every field of the page holds a valid value.
        unsafe {
            page.write_bytes(0, 1);
            Some(&mut *page)
        }
    }

    /// A zeroed 2 MiB page no one else uses.
    pub(super) fn large(&mut self) -> Option<&'a mut LargeObjectPage<'a>> {
        if self.high < self.low + LARGE_PAGE {
            return None;
        }
        self.high -= LARGE_PAGE;
        let page = (self.region.base() as usize + self.high) as *mut LargeObjectPage<'a>;
        // SAFETY: as for `small`, with 2 MiB pages taken from the top.
        unsafe {
            page.write_bytes(0, 1);
            Some(&mut *page)
        }
    }

    /// Takes back an empty 4 KiB page slabmalloc released.
    pub(super) fn give_back(&mut self, page: *mut ObjectPage<'_>) {
        self.free.push(page as usize);
    }

    /// Bytes of 4 KiB pages in use by slabmalloc.
    pub(super) fn small_bytes(&self) -> u64 {
        (self.low - self.free.len() * SMALL_PAGE) as u64
    }
}

/// slabmalloc's object cache: one `SCAllocator` of 64-byte objects. A
/// consumer thread's instance has no pager; it only frees.
pub(super) struct SlabCache<'a> {
    sc: SCAllocator<'a, ObjectPage<'a>>,
    pager: Option<Pager<'a>>,
}

impl<'a> SlabCache<'a> {
    pub(super) fn new(pager: Option<Pager<'a>>) -> SlabCache<'a> {
        SlabCache {
            sc: SCAllocator::new(OBJ),
            pager,
        }
    }

    /// Returns the empty pages to the pager (after a producer/consumer run).
    pub(super) fn reclaim(&mut self) {
        if let Some(pager) = self.pager.as_mut() {
            self.sc
                .try_reclaim_pages(usize::MAX, &mut |p| pager.give_back(p));
        }
    }
}

impl Objects for SlabCache<'_> {
    type Error = NoMemory;
    #[inline(always)]
    fn alloc(&mut self, size: usize) -> Result<u64, NoMemory> {
        const WHO: &str = "slabmalloc";
        if size > OBJ {
            return Err(NoMemory(WHO));
        }
        let layout = layout(size, WHO)?;
        for _ in 0..2 {
            match self.sc.allocate(layout) {
                Ok(p) => return Ok(p.as_ptr() as u64),
                Err(AllocationError::OutOfMemory) => {
                    let page = self
                        .pager
                        .as_mut()
                        .and_then(Pager::small)
                        .ok_or(NoMemory(WHO))?;
                    // SAFETY: a fresh zeroed page on no list.
                    unsafe { self.sc.refill(page) };
                }
                Err(AllocationError::InvalidLayout) => break,
            }
        }
        Err(NoMemory(WHO))
    }
    #[inline(always)]
    unsafe fn free(&mut self, obj: u64, size: usize) -> Result<(), NoMemory> {
        let layout = layout(size, "slabmalloc")?;
        let p = NonNull::new(obj as *mut u8).ok_or(NoMemory("slabmalloc"))?;
        self.sc
            .deallocate(p, layout)
            .map_err(|_| NoMemory("slabmalloc"))
    }
    fn footprint(&self) -> Option<u64> {
        self.pager.as_ref().map(Pager::small_bytes)
    }
}

/// slabmalloc's `ZoneAllocator` (its kmalloc), refilled from a [`Pager`].
pub(super) struct SlabZone<'a> {
    zone: ZoneAllocator<'a>,
    pager: Pager<'a>,
}

impl<'a> SlabZone<'a> {
    pub(super) fn new(pager: Pager<'a>) -> SlabZone<'a> {
        SlabZone {
            zone: ZoneAllocator::new(),
            pager,
        }
    }
}

impl Objects for SlabZone<'_> {
    type Error = NoMemory;
    #[inline(always)]
    fn alloc(&mut self, size: usize) -> Result<u64, NoMemory> {
        const WHO: &str = "slabmalloc";
        let layout = layout(size, WHO)?;
        for _ in 0..2 {
            match self.zone.allocate(layout) {
                Ok(p) => return Ok(p.as_ptr() as u64),
                Err(AllocationError::OutOfMemory) => {
                    let refilled = if size <= ZoneAllocator::MAX_BASE_ALLOC_SIZE {
                        let page = self.pager.small().ok_or(NoMemory(WHO))?;
                        // SAFETY: a fresh zeroed page on no list.
                        unsafe { self.zone.refill(layout, page) }
                    } else {
                        let page = self.pager.large().ok_or(NoMemory(WHO))?;
                        // SAFETY: as above.
                        unsafe { self.zone.refill_large(layout, page) }
                    };
                    refilled.map_err(|_| NoMemory(WHO))?;
                }
                Err(AllocationError::InvalidLayout) => break,
            }
        }
        Err(NoMemory(WHO))
    }
    #[inline(always)]
    unsafe fn free(&mut self, obj: u64, size: usize) -> Result<(), NoMemory> {
        let layout = layout(size, "slabmalloc")?;
        let p = NonNull::new(obj as *mut u8).ok_or(NoMemory("slabmalloc"))?;
        self.zone
            .deallocate(p, layout)
            .map_err(|_| NoMemory("slabmalloc"))
    }
}

/// talc's unlocked `Talc`, claimed over a [`Region`].
pub(super) struct TalcHeap<'a> {
    talc: Talc<Manual, DefaultBinning>,
    _region: PhantomData<&'a Region>,
}

impl<'a> TalcHeap<'a> {
    pub(super) fn new(region: &'a Region) -> Result<TalcHeap<'a>, String> {
        let mut talc = Talc::new(Manual);
        // SAFETY: the region is used by nothing else and outlives the heap.
        unsafe { talc.claim(region.base(), region.len()) }
            .ok_or("talc: cannot claim its region")?;
        Ok(TalcHeap {
            talc,
            _region: PhantomData,
        })
    }
}

impl Objects for TalcHeap<'_> {
    type Error = NoMemory;
    #[inline(always)]
    fn alloc(&mut self, size: usize) -> Result<u64, NoMemory> {
        let layout = layout(size, "talc")?;
        // SAFETY: `size` is not zero (the patterns ask for 8 bytes or more).
        let p = unsafe { self.talc.allocate(layout) }.ok_or(NoMemory("talc"))?;
        Ok(p.as_ptr() as u64)
    }
    #[inline(always)]
    unsafe fn free(&mut self, obj: u64, size: usize) -> Result<(), NoMemory> {
        let layout = layout(size, "talc")?;
        // SAFETY: the caller's contract: `obj` came from `allocate(layout)`.
        unsafe { self.talc.deallocate(obj as *mut u8, layout) };
        Ok(())
    }
}

/// linked_list_allocator's unlocked `Heap` over a [`Region`].
pub(super) struct LinkedHeap<'a> {
    heap: linked_list_allocator::Heap,
    _region: PhantomData<&'a Region>,
}

impl<'a> LinkedHeap<'a> {
    pub(super) fn new(region: &'a Region) -> LinkedHeap<'a> {
        LinkedHeap {
            // SAFETY: the region is used by nothing else and outlives the heap.
            heap: unsafe { linked_list_allocator::Heap::new(region.base(), region.len()) },
            _region: PhantomData,
        }
    }
}

impl Objects for LinkedHeap<'_> {
    type Error = NoMemory;
    #[inline(always)]
    fn alloc(&mut self, size: usize) -> Result<u64, NoMemory> {
        let layout = layout(size, "linked_list_allocator")?;
        let p = self
            .heap
            .allocate_first_fit(layout)
            .map_err(|()| NoMemory("linked_list_allocator"))?;
        Ok(p.as_ptr() as u64)
    }
    #[inline(always)]
    unsafe fn free(&mut self, obj: u64, size: usize) -> Result<(), NoMemory> {
        let layout = layout(size, "linked_list_allocator")?;
        let p = NonNull::new(obj as *mut u8).ok_or(NoMemory("linked_list_allocator"))?;
        // SAFETY: the caller's contract: `obj` came from `allocate_first_fit(layout)`.
        unsafe { self.heap.deallocate(p, layout) };
        Ok(())
    }
}

/// buddy_system_allocator's unlocked `Heap` over a [`Region`].
pub(super) struct BuddyHeap<'a> {
    heap: buddy_system_allocator::Heap<BUDDY_ORDER>,
    _region: PhantomData<&'a Region>,
}

impl<'a> BuddyHeap<'a> {
    pub(super) fn new(region: &'a Region) -> BuddyHeap<'a> {
        let mut heap = buddy_system_allocator::Heap::new();
        // SAFETY: the region is used by nothing else and outlives the heap.
        unsafe { heap.init(region.base() as usize, region.len()) };
        BuddyHeap {
            heap,
            _region: PhantomData,
        }
    }
}

impl Objects for BuddyHeap<'_> {
    type Error = NoMemory;
    fn footprint(&self) -> Option<u64> {
        Some(self.heap.stats_alloc_actual() as u64)
    }
    #[inline(always)]
    fn alloc(&mut self, size: usize) -> Result<u64, NoMemory> {
        let layout = layout(size, "buddy_system_allocator")?;
        let p = self
            .heap
            .alloc(layout)
            .map_err(|()| NoMemory("buddy_system_allocator"))?;
        Ok(p.as_ptr() as u64)
    }
    #[inline(always)]
    unsafe fn free(&mut self, obj: u64, size: usize) -> Result<(), NoMemory> {
        let layout = layout(size, "buddy_system_allocator")?;
        let p = NonNull::new(obj as *mut u8).ok_or(NoMemory("buddy_system_allocator"))?;
        // SAFETY: the caller's contract: `obj` came from `alloc(layout)`.
        unsafe { self.heap.dealloc(p, layout) };
        Ok(())
    }
}

/// Any `GlobalAlloc` called directly: System, mimalloc, and the locked
/// heaps of the producer/consumer pattern.
pub(super) struct Global<'a, G> {
    g: &'a G,
    name: &'static str,
}

impl<'a, G: GlobalAlloc> Global<'a, G> {
    pub(super) fn new(g: &'a G, name: &'static str) -> Global<'a, G> {
        Global { g, name }
    }
}

impl<G: GlobalAlloc> Objects for Global<'_, G> {
    type Error = NoMemory;
    #[inline(always)]
    fn alloc(&mut self, size: usize) -> Result<u64, NoMemory> {
        let layout = layout(size, self.name)?;
        // SAFETY: `size` is not zero (the patterns ask for 8 bytes or more).
        let p = unsafe { self.g.alloc(layout) };
        if p.is_null() {
            return Err(NoMemory(self.name));
        }
        Ok(p as u64)
    }
    #[inline(always)]
    unsafe fn free(&mut self, obj: u64, size: usize) -> Result<(), NoMemory> {
        let layout = layout(size, self.name)?;
        // SAFETY: the caller's contract: `obj` came from `alloc(layout)` of
        // this allocator.
        unsafe { self.g.dealloc(obj as *mut u8, layout) };
        Ok(())
    }
}
