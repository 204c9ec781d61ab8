//! The zoned buddy page allocator: `mm/page_alloc.c`.
//!
//! An allocation walks the zonelist of its preferred node, skipping zones above
//! the highest zone its GFP mask allows, and takes a page from the first zone
//! whose free pages stay above the low watermark plus that zone's
//! `lowmem_reserve`. Order-0 requests are served from the CPU's per-CPU list
//! (hot pages at the head), refilled `batch` pages at a time from the buddy
//! lists; larger orders split the smallest free block that fits. When the fast
//! path fails the slow path wakes kswapd, retries at the min watermark (atomic
//! and `__GFP_HIGH` requests may dip below it), and, if the caller may sleep,
//! reclaims directly and retries as `__GFP_NORETRY`, `__GFP_REPEAT` and
//! `__GFP_NOFAIL` say.
//!
//! Freeing checks the page first ("BUG: Bad page state") and merges a block
//! with its buddy (`pfn ^ (1 << order)`) for as long as the buddy is free at
//! the same order.

use crate::error::KmmError;
use crate::gfp::GfpFlags;
use crate::mm::Kmm;
use crate::mm_types::{DisplayPageFlags, Page, PageFlags, FLAGS_CHECK_AT_FREE};
use crate::mm_types::{ALLOC_ORDER_BITS, NIL};
use crate::mmzone::MAX_NR_ZONES;
use crate::mmzone::{FreeAreas, PerCpuPages, Zone, NR_PCP_LISTS};
use crate::platform::Platform;
use crate::{MAX_NUMNODES, MAX_ORDER};
use core::sync::atomic::Ordering::Relaxed;

/// `PAGE_ALLOC_COSTLY_ORDER`: above this order reclaim is not worth retrying
/// unless the caller insists (`__GFP_REPEAT`).
pub const PAGE_ALLOC_COSTLY_ORDER: u32 = 3;
/// `MAX_RECLAIM_RETRIES`: reclaim rounds without progress before giving up.
pub const MAX_RECLAIM_RETRIES: u32 = 16;

// alloc_flags (mm/internal.h).
const ALLOC_WMARK_MIN: u32 = 0;
const ALLOC_WMARK_LOW: u32 = 1;
const ALLOC_WMARK_MASK: u32 = 3;
const ALLOC_NO_WATERMARKS: u32 = 4;
/// Atomic (non-sleeping) request: may use a further quarter of the reserve.
const ALLOC_HARDER: u32 = 0x10;
/// `__GFP_HIGH`: may use half of the reserve.
const ALLOC_HIGH: u32 = 0x20;

/// `struct alloc_context`.
#[derive(Clone, Copy)]
struct AllocContext {
    /// The CPU the caller runs on (`smp_processor_id()`, looked up once).
    cpu: usize,
    /// Whether the caller owns `cpu` exclusively ([`Platform::this_cpu`]).
    owner: bool,
    gfp: GfpFlags,
    order: u32,
    preferred_nid: usize,
    highest_zoneidx: usize,
}

impl<P: Platform> Kmm<P> {
    // ---------------------------------------------------------------- alloc

    /// `alloc_pages_node()`: `2^order` contiguous pages, preferring node `nid`.
    pub fn alloc_pages_node(
        &self,
        nid: usize,
        gfp: GfpFlags,
        order: u32,
    ) -> Result<&Page, KmmError> {
        let (cpu, owner) = self.platform.this_cpu();
        self.alloc_pages_on(cpu, owner, nid, gfp, order)
    }

    #[inline]
    fn alloc_pages_on(
        &self,
        cpu: usize,
        owner: bool,
        nid: usize,
        gfp: GfpFlags,
        order: u32,
    ) -> Result<&Page, KmmError> {
        if order >= MAX_ORDER as u32 {
            return Err(self.order_too_large(gfp, order));
        }
        let zt = gfp.validate()?;
        if nid >= self.nr_node_ids {
            return Err(KmmError::InvalidNode { nid });
        }
        if gfp.allows_blocking() {
            let (pc, irqs) = self.platform.atomic_state_of(cpu);
            if pc != 0 || irqs {
                return Err(self.sleep_in_atomic(pc, irqs, "mm/page_alloc.rs", line!()));
            }
        }
        let ac = AllocContext {
            cpu,
            owner,
            gfp,
            order,
            preferred_nid: nid,
            highest_zoneidx: self.zone_index_of[zt as usize] as usize,
        };
        // The common case: the first zone of the zonelist has pages above its
        // low watermark on this CPU's list. Everything else walks the zonelist.
        let pfn = match self.alloc_from_preferred(&ac) {
            Some(pfn) => pfn,
            None => self.alloc_pages_walk(ac)?,
        };
        Ok(self.prep_new_page(pfn, order, gfp))
    }

    /// The zonelist walk, then the slow path: out of line, so the fast path
    /// keeps its allocation context in registers.
    #[inline(never)]
    fn alloc_pages_walk(&self, ac: AllocContext) -> Result<u32, KmmError> {
        match self.get_page_from_freelist(&ac, ALLOC_WMARK_LOW) {
            Some(pfn) => Ok(pfn),
            None => self.alloc_pages_slowpath(&ac),
        }
    }

    /// `alloc_pages_bulk()`: `n` order-0 pages on node `nid`, handed one by
    /// one to `out` (as frame numbers). As many as possible come from this
    /// CPU's list of the preferred zone under one lock (refilled from the
    /// buddy lists as needed); the rest are allocated one at a time. Returns
    /// how many `out` took; on an error the pages handed out so far are the
    /// caller's.
    pub fn alloc_pages_bulk(
        &self,
        nid: usize,
        gfp: GfpFlags,
        n: u64,
        mut out: impl FnMut(u64) -> Result<(), KmmError>,
    ) -> Result<u64, KmmError> {
        let (cpu, owner) = self.platform.this_cpu();
        let zt = gfp.validate()?;
        if nid >= self.nr_node_ids {
            return Err(KmmError::InvalidNode { nid });
        }
        if gfp.allows_blocking() {
            let (pc, irqs) = self.platform.atomic_state_of(cpu);
            if pc != 0 || irqs {
                return Err(self.sleep_in_atomic(pc, irqs, "mm/page_alloc.rs", line!()));
            }
        }
        let highest = self.zone_index_of[zt as usize] as usize;
        let (pnid, zidx) = self.preferred_zone[nid][highest];
        let zone = &self.nodes[pnid as usize].zones[zidx as usize];
        let mut got = 0u64;
        let mark = zone.watermark[ALLOC_WMARK_LOW as usize].load(Relaxed) + n;
        if let Some(pcp) = zone.pcp.as_slice().get(cpu) {
            if self.zone_watermark_ok(zone, 0, mark, highest, ALLOC_WMARK_LOW) {
                let map = self.mem_map();
                let _g = pcp.lock.lock(&self.platform, cpu, owner);
                let mut list = pcp.list(0);
                let mut count = pcp.count.load(Relaxed);
                let mut result = Ok(());
                while got < n {
                    if list.head == NIL {
                        let r = self.rmqueue_bulk(zone, 0, pcp.batch.load(Relaxed), &mut list);
                        if r == 0 {
                            break;
                        }
                        count += r;
                    }
                    let Some(pfn) = list.pop_front(map) else {
                        break;
                    };
                    count -= 1;
                    self.prep_new_page(pfn, 0, gfp);
                    got += 1;
                    if let Err(e) = out(u64::from(pfn)) {
                        result = Err(e);
                        break;
                    }
                }
                pcp.set_list(0, list);
                pcp.count.store(count, Relaxed);
                pcp.pgalloc.store(pcp.pgalloc.load(Relaxed) + got, Relaxed);
                let c = if pnid as usize == nid {
                    &pcp.numa_hit
                } else {
                    &pcp.numa_miss
                };
                c.store(c.load(Relaxed) + got, Relaxed);
                result?;
            }
        }
        while got < n {
            let page = self.alloc_pages_on(cpu, owner, nid, gfp, 0)?;
            got += 1;
            out(self.page_to_pfn(page)?)?;
        }
        Ok(got)
    }

    /// The first zone `get_page_from_freelist()` would try, without the walk:
    /// orders 0–3 from the per-CPU list of the preferred zone.
    #[inline(always)]
    fn alloc_from_preferred(&self, ac: &AllocContext) -> Option<u32> {
        let (nid, zidx) = self.preferred_zone[ac.preferred_nid][ac.highest_zoneidx];
        let zone = &self.nodes[nid as usize].zones[zidx as usize];
        if ac.order as usize >= NR_PCP_LISTS {
            return None;
        }
        let pcp = zone.pcp.as_slice().get(ac.cpu)?;
        let mark = zone.watermark[ALLOC_WMARK_LOW as usize].load(Relaxed);
        if !self.zone_watermark_ok(zone, ac.order, mark, ac.highest_zoneidx, ALLOC_WMARK_LOW) {
            return None;
        }
        self.rmqueue_pcplist(zone, pcp, ac, nid as usize == ac.preferred_nid)
    }

    #[cold]
    #[inline(never)]
    fn order_too_large(&self, gfp: GfpFlags, order: u32) -> KmmError {
        if !gfp.contains(GfpFlags::__GFP_NOWARN) {
            self.warn_order(order);
        }
        KmmError::OrderTooLarge { order }
    }

    /// `alloc_pages()`: `2^order` pages from the current CPU's node.
    #[inline(always)]
    pub fn alloc_pages(&self, gfp: GfpFlags, order: u32) -> Result<&Page, KmmError> {
        match self.alloc_pages_fast(gfp, order) {
            Some(page) => Ok(page),
            None => self.alloc_pages_full(gfp, order),
        }
    }

    /// `alloc_pages()` the whole way: every check, the refill, the zonelist
    /// walk and the slow path.
    #[inline(never)]
    fn alloc_pages_full(&self, gfp: GfpFlags, order: u32) -> Result<&Page, KmmError> {
        let (cpu, owner) = self.platform.this_cpu();
        self.alloc_pages_on(cpu, owner, self.cpu_to_node(cpu), gfp, order)
    }

    /// The common `alloc_pages()`, with nothing that can fail or call out: a
    /// thread that owns its CPU ([`Platform::owned_cpu_fast`]) takes a block
    /// of order 0-3 from its non-empty per-CPU list of the preferred zone,
    /// above the low watermark, for a plain mask (no `__GFP_ZERO` or
    /// `__GFP_COMP` work, nothing `validate()` must look at) in a context
    /// that may sleep if the mask says so. Anything else returns `None`
    /// having changed nothing, and [`Self::alloc_pages_full`] takes over —
    /// the split of Linux's `get_page_from_freelist()` fast try and
    /// `__alloc_pages_slowpath()`, drawn a little earlier.
    #[inline(always)]
    fn alloc_pages_fast(&self, gfp: GfpFlags, order: u32) -> Option<&Page> {
        let cpu = self.platform.owned_cpu_fast()?;
        let extra = GfpFlags::__GFP_ZERO.bits() | GfpFlags::__GFP_COMP.bits();
        if order as usize >= NR_PCP_LISTS || gfp.bits() & extra != 0 {
            return None;
        }
        let zt = gfp.zone_if_plain()?;
        if gfp.allows_blocking() {
            let (pc, irqs) = self.platform.atomic_state_of(cpu);
            if pc != 0 || irqs {
                return None;
            }
        }
        // The masks only spare bounds checks: a CPU's node is below
        // MAX_NUMNODES, zone_if_plain() yields DMA, DMA32, NORMAL or HIGHMEM
        // (0-3, never MOVABLE), and zone_index_of holds indices below
        // MAX_NR_ZONES.
        let nid = self.cpu_to_node(cpu) & (MAX_NUMNODES - 1);
        let highest = self.zone_index_of[zt as usize & 3] as usize & (MAX_NR_ZONES - 1);
        let (znid, zidx) = self.preferred_zone[nid][highest];
        let zone = self.zone_by_id((znid as usize) << 2 | zidx as usize);
        let pcp = zone.pcp.as_slice().get(cpu)?;
        let mark = zone.watermark[ALLOC_WMARK_LOW as usize].load(Relaxed);
        if !self.zone_watermark_ok(zone, order, mark, highest, ALLOC_WMARK_LOW) {
            return None;
        }
        let map = self.mem_map();
        let guard = pcp.lock.try_lock_owner()?;
        let cold = gfp.contains(GfpFlags::__GFP_COLD);
        let pfn = self.pcp_take(map, pcp, order, cold, znid as usize == nid)?;
        drop(guard);
        Some(Self::post_alloc_hook(map, pfn, order))
    }

    /// `alloc_page()`: one page.
    #[inline]
    pub fn alloc_page(&self, gfp: GfpFlags) -> Result<&Page, KmmError> {
        self.alloc_pages(gfp, 0)
    }

    /// `__get_free_pages()`: like `alloc_pages` but returns the kernel virtual
    /// address. High memory has no such address, so `__GFP_HIGHMEM` is refused.
    pub fn __get_free_pages(&self, gfp: GfpFlags, order: u32) -> Result<u64, KmmError> {
        if gfp.contains(GfpFlags::__GFP_HIGHMEM) {
            return Err(KmmError::InvalidGfp {
                gfp,
                why: "__get_free_pages() cannot return high memory (use alloc_pages)",
            });
        }
        let page = self.alloc_pages(gfp, order)?;
        match self.page_address(page) {
            Some(addr) => Ok(addr),
            None => {
                // Cannot happen: the mask excluded ZONE_HIGHMEM.
                let _ = self.__free_pages(page, order);
                Err(KmmError::NoMemory { order, gfp })
            }
        }
    }

    /// `__get_free_page()`: one page, as an address.
    pub fn __get_free_page(&self, gfp: GfpFlags) -> Result<u64, KmmError> {
        self.__get_free_pages(gfp, 0)
    }

    /// `get_zeroed_page()`: one zero-filled page, as an address.
    pub fn get_zeroed_page(&self, gfp: GfpFlags) -> Result<u64, KmmError> {
        self.__get_free_pages(gfp | GfpFlags::__GFP_ZERO, 0)
    }

    /// `might_sleep()` at `file:line`: an error (after Linux's report) when
    /// the caller runs in atomic context.
    pub(crate) fn might_sleep(&self, file: &str, line: u32) -> Result<(), KmmError> {
        let (pc, irqs) = self.platform.atomic_state();
        if pc != 0 || irqs {
            return Err(self.sleep_in_atomic(pc, irqs, file, line));
        }
        Ok(())
    }

    /// `might_sleep()`'s report: a sleeping allocation in atomic context is a bug.
    #[cold]
    #[inline(never)]
    pub(crate) fn sleep_in_atomic(&self, pc: u32, irqs: bool, file: &str, line: u32) -> KmmError {
        self.events.sleep_in_atomic.fetch_add(1, Relaxed);
        let p = &self.platform;
        p.printk(format_args!(
            "BUG: sleeping function called from invalid context at {file}:{line}"
        ));
        self.with_current(&mut |pid, comm| {
            p.printk(format_args!(
                "in_atomic(): {}, irqs_disabled(): {}, non_block: 0, pid: {pid}, name: {comm}",
                (pc != 0) as u8,
                irqs as u8
            ))
        });
        p.printk(format_args!("preempt_count: {pc:x}, expected: 0"));
        KmmError::SleepInAtomic {
            preempt_count: pc,
            irqs_disabled: irqs,
        }
    }

    fn warn_order(&self, order: u32) {
        self.platform.printk(format_args!(
            "WARNING: CPU: {} PID: 0 at mm/page_alloc.rs:{} __alloc_pages: order {order} >= MAX_ORDER {}",
            self.platform.smp_processor_id(),
            line!(),
            MAX_ORDER
        ));
    }

    /// `__zone_watermark_ok()`: the base check against free pages; whether a
    /// block of the order exists is settled under the zone lock by `rmqueue`.
    #[inline]
    fn zone_watermark_ok(
        &self,
        zone: &Zone,
        order: u32,
        mark: u64,
        highest: usize,
        alloc_flags: u32,
    ) -> bool {
        let free = zone.nr_free_pages.load(Relaxed) as i64 - ((1i64 << order) - 1);
        let mut min = mark as i64;
        if alloc_flags & ALLOC_HIGH != 0 {
            min -= min / 2;
        }
        if alloc_flags & ALLOC_HARDER != 0 {
            min -= min / 4;
        }
        free > min + zone.lowmem_reserve[highest].load(Relaxed) as i64
    }

    /// `get_page_from_freelist()`: the zonelist walk.
    #[inline(never)]
    fn get_page_from_freelist(&self, ac: &AllocContext, alloc_flags: u32) -> Option<u32> {
        let zl = &self.zonelists[ac.preferred_nid];
        for &(nid, zidx) in zl.entries() {
            let zidx = zidx as usize;
            if zidx > ac.highest_zoneidx {
                continue;
            }
            let zone = &self.nodes[nid as usize].zones[zidx];
            if alloc_flags & ALLOC_NO_WATERMARKS == 0 {
                let mark = zone.watermark[(alloc_flags & ALLOC_WMARK_MASK) as usize].load(Relaxed);
                if !self.zone_watermark_ok(zone, ac.order, mark, ac.highest_zoneidx, alloc_flags) {
                    continue;
                }
            }
            let local = nid as usize == ac.preferred_nid;
            if let Some(pfn) = self.rmqueue(zone, ac, local) {
                return Some(pfn);
            }
        }
        None
    }

    /// `rmqueue()`: orders 0–3 from the CPU's per-CPU lists, larger orders
    /// from the buddy lists.
    #[inline]
    fn rmqueue(&self, zone: &Zone, ac: &AllocContext, local: bool) -> Option<u32> {
        if (ac.order as usize) < NR_PCP_LISTS {
            if let Some(pcp) = zone.pcp.as_slice().get(ac.cpu) {
                return self.rmqueue_pcplist(zone, pcp, ac, local);
            }
        }
        self.rmqueue_buddy(zone, ac.order, local)
    }

    /// `rmqueue_pcplist()`: pops a block from the per-CPU list of its order
    /// (the tail for `__GFP_COLD`), refilling the list first if it is empty.
    #[inline(always)]
    fn rmqueue_pcplist(
        &self,
        zone: &Zone,
        pcp: &PerCpuPages,
        ac: &AllocContext,
        local: bool,
    ) -> Option<u32> {
        let order = ac.order;
        let o = order as usize;
        let _g = pcp.lock.lock(&self.platform, ac.cpu, ac.owner);
        if pcp.heads[o].load(Relaxed) == NIL {
            let mut list = pcp.list(o);
            let got = self.rmqueue_bulk(zone, order, pcp.batch.load(Relaxed), &mut list);
            if got == 0 {
                return None;
            }
            pcp.set_list(o, list);
            pcp.count
                .store(pcp.count.load(Relaxed) + (got << order), Relaxed);
        }
        let cold = ac.gfp.contains(GfpFlags::__GFP_COLD);
        self.pcp_take(self.mem_map(), pcp, order, cold, local)
    }

    /// Pops a block of `order` from `pcp`'s list (the tail when `cold`) and
    /// counts the allocation; `None` when the list is empty. The caller
    /// holds the per-CPU lock.
    #[inline(always)]
    fn pcp_take(
        &self,
        map: &[Page],
        pcp: &PerCpuPages,
        order: u32,
        cold: bool,
        local: bool,
    ) -> Option<u32> {
        let o = order as usize;
        let mut list = pcp.list(o);
        let pfn = if cold {
            list.pop_back(map)
        } else {
            list.pop_front(map)
        }?;
        pcp.set_list(o, list);
        pcp.count
            .store(pcp.count.load(Relaxed) - (1 << order), Relaxed);
        pcp.pgalloc
            .store(pcp.pgalloc.load(Relaxed) + (1 << order), Relaxed);
        let c = if local { &pcp.numa_hit } else { &pcp.numa_miss };
        c.store(c.load(Relaxed) + 1, Relaxed);
        Some(pfn)
    }

    /// Straight from the buddy lists, under the zone lock.
    #[inline(never)]
    fn rmqueue_buddy(&self, zone: &Zone, order: u32, local: bool) -> Option<u32> {
        let mut fa = zone.free.lock();
        let pfn = self.rmqueue_smallest(&mut fa, order)?;
        fa.pgalloc += 1 << order;
        if local {
            fa.numa_hit += 1;
        } else {
            fa.numa_miss += 1;
        }
        zone.nr_free_pages.fetch_sub(1 << order, Relaxed);
        Some(pfn)
    }

    /// `rmqueue_bulk()`: moves blocks of `order` from the buddy lists to a
    /// per-CPU list: `batch` of them for order 0, `max(batch >> order, 2)`
    /// for larger orders (`nr_pcp_alloc()`). Returns how many it moved.
    #[cold]
    #[inline(never)]
    fn rmqueue_bulk(
        &self,
        zone: &Zone,
        order: u32,
        batch: u32,
        list: &mut crate::list::ListHead,
    ) -> u32 {
        let map = self.mem_map();
        let want = if order == 0 {
            batch
        } else {
            (batch >> order).max(2)
        };
        let mut fa = zone.free.lock();
        let mut n = 0;
        while n < want {
            match self.rmqueue_smallest(&mut fa, order) {
                Some(pfn) => list.push_back(map, pfn),
                None => break,
            }
            n += 1;
        }
        zone.nr_free_pages.fetch_sub((n as u64) << order, Relaxed);
        n
    }

    /// `__rmqueue_smallest()` + `expand()`: takes the smallest free block of at
    /// least `order`, returning the unused halves to the lower free lists.
    #[inline]
    fn rmqueue_smallest(&self, fa: &mut FreeAreas, order: u32) -> Option<u32> {
        let map = self.mem_map();
        for cur in order as usize..MAX_ORDER {
            let Some(pfn) = fa.lists[cur].pop_front(map) else {
                continue;
            };
            fa.nr_free[cur] -= 1;
            map[pfn as usize].set_state(PageFlags::empty(), PageFlags::BUDDY);
            let mut high = cur;
            while high > order as usize {
                high -= 1;
                let half = pfn + (1 << high);
                let hp = &map[half as usize];
                hp.set_state(PageFlags::BUDDY, PageFlags::empty());
                hp.private.store(high as u32, Relaxed);
                fa.lists[high].push_front(map, half);
                fa.nr_free[high] += 1;
            }
            return Some(pfn);
        }
        None
    }

    /// `prep_new_page()`: reference count 1, zeroing, compound setup.
    #[inline]
    fn prep_new_page(&self, pfn: u32, order: u32, gfp: GfpFlags) -> &Page {
        let map = self.mem_map();
        let page = Self::post_alloc_hook(map, pfn, order);
        if gfp.contains(GfpFlags::__GFP_ZERO) {
            let bytes = (self.page_size() << order) as usize;
            // The range is RAM below max_pfn, so this cannot fail.
            let _ = self.mem.fill(self.pfn_phys(pfn as u64), bytes, 0);
        }
        if gfp.contains(GfpFlags::__GFP_COMP) && order > 0 {
            page.set_state(PageFlags::HEAD, PageFlags::empty());
            for t in pfn + 1..pfn + (1 << order) {
                let tp = &map[t as usize];
                tp.set_state(PageFlags::TAIL, PageFlags::empty());
                tp.private.store(pfn, Relaxed);
            }
        }
        page
    }

    /// `post_alloc_hook()`: the block's first page gets its reference and
    /// remembers its order; the buddy order kept in `private` while it was
    /// free is meaningless now.
    #[inline(always)]
    fn post_alloc_hook(map: &[Page], pfn: u32, order: u32) -> &Page {
        let page = &map[pfn as usize];
        page.refcount.store(1, Relaxed);
        page.private.store(0, Relaxed);
        page.set_alloc_order(Some(order));
        page
    }

    // ------------------------------------------------------------ slow path

    #[cold]
    #[inline(never)]
    fn alloc_pages_slowpath(&self, ac: &AllocContext) -> Result<u32, KmmError> {
        let gfp = ac.gfp;
        let order = ac.order;
        self.wake_all_kswapds(ac);

        let mut alloc_flags = ALLOC_WMARK_MIN;
        if gfp.contains(GfpFlags::__GFP_HIGH) {
            alloc_flags |= ALLOC_HIGH;
        }
        if !gfp.allows_blocking() {
            alloc_flags |= ALLOC_HARDER;
        }
        if let Some(pfn) = self.get_page_from_freelist(ac, alloc_flags) {
            return Ok(pfn);
        }
        if !gfp.allows_blocking() {
            return Err(self.nopage(ac));
        }

        let costly = order > PAGE_ALLOC_COSTLY_ORDER;
        let mut no_progress = 0;
        let mut reclaimed = 0usize;
        let mut drained = false;
        loop {
            self.platform.cond_resched();
            // __alloc_pages_direct_reclaim()
            if let Some(z) = self.zonelists[ac.preferred_nid]
                .entries()
                .iter()
                .find(|&&(_, z)| z as usize <= ac.highest_zoneidx)
            {
                self.nodes[z.0 as usize].zones[z.1 as usize]
                    .allocstall
                    .fetch_add(1, Relaxed);
            }
            let progress = self.shrink_slab(gfp) + self.platform.try_to_free_pages(order, gfp);
            reclaimed += progress;
            if let Some(pfn) = self.get_page_from_freelist(ac, alloc_flags) {
                return Ok(pfn);
            }
            if !drained {
                // Pages parked on per-CPU lists cannot merge; give them back.
                self.drain_all_pages();
                drained = true;
                if let Some(pfn) = self.get_page_from_freelist(ac, alloc_flags) {
                    return Ok(pfn);
                }
            }
            let nofail = gfp.contains(GfpFlags::__GFP_NOFAIL);
            if gfp.contains(GfpFlags::__GFP_NORETRY) {
                break;
            }
            if costly && !gfp.contains(GfpFlags::__GFP_REPEAT) && !nofail {
                break;
            }
            // __GFP_REPEAT: keep going until reclaim has freed as much as was asked for.
            if costly && !nofail && reclaimed >= (1usize << order) {
                break;
            }
            no_progress = if progress == 0 { no_progress + 1 } else { 0 };
            if no_progress > MAX_RECLAIM_RETRIES {
                if gfp.contains(GfpFlags::__GFP_FS)
                    && !costly
                    && self.platform.out_of_memory(order, gfp)
                {
                    no_progress = 0;
                    continue;
                }
                if !nofail {
                    break;
                }
                // A __GFP_NOFAIL caller may use part of the reserve, then waits
                // for memory for as long as it takes.
                alloc_flags |= ALLOC_HIGH | ALLOC_HARDER;
                if let Some(pfn) = self.get_page_from_freelist(ac, alloc_flags) {
                    return Ok(pfn);
                }
                drained = false;
            }
        }
        Err(self.nopage(ac))
    }

    fn wake_all_kswapds(&self, ac: &AllocContext) {
        let mut woken = [false; crate::MAX_NUMNODES];
        for &(nid, _) in self.zonelists[ac.preferred_nid].entries() {
            if !woken[nid as usize] {
                woken[nid as usize] = true;
                self.events.kswapd_wakeups.fetch_add(1, Relaxed);
                self.platform
                    .wakeup_kswapd(nid as usize, ac.order, ac.highest_zoneidx);
            }
        }
    }

    /// The `nopage:` label: count, warn unless `__GFP_NOWARN`, fail.
    #[cold]
    #[inline(never)]
    fn nopage(&self, ac: &AllocContext) -> KmmError {
        self.events.alloc_failures.fetch_add(1, Relaxed);
        if !ac.gfp.contains(GfpFlags::__GFP_NOWARN) {
            self.warn_alloc(ac.gfp, ac.order);
        }
        KmmError::NoMemory {
            order: ac.order,
            gfp: ac.gfp,
        }
    }

    /// `warn_alloc()` + `show_mem()`: Linux's "page allocation failure" report.
    pub fn warn_alloc(&self, gfp: GfpFlags, order: u32) {
        let p = &self.platform;
        let cpu = p.smp_processor_id();
        self.with_current(&mut |pid, comm| {
            p.printk(format_args!(
                "{comm}: page allocation failure: order:{order}, mode:{gfp:?}, nodemask=(null)"
            ));
            p.printk(format_args!("CPU: {cpu} PID: {pid} Comm: {comm}"));
        });
        self.show_mem();
    }

    /// `show_mem()` / `show_free_areas()`: per-zone free memory and buddy lists.
    pub fn show_mem(&self) {
        let p = &self.platform;
        let kb = |pages: u64| pages << (self.page_shift - 10);
        p.printk(format_args!("Mem-Info:"));
        for z in self.zones().filter(|z| z.is_populated()) {
            let pcp: u64 = z.pcp.as_slice().iter().map(|c| c.count() as u64).sum();
            p.printk(format_args!(
                "Node {} {} free:{}kB boost:0kB min:{}kB low:{}kB high:{}kB present:{}kB managed:{}kB free_pcp:{}kB",
                z.nid(),
                z.name(),
                kb(z.free_pages()),
                kb(z.watermark(crate::mmzone::Watermark::Min)),
                kb(z.watermark(crate::mmzone::Watermark::Low)),
                kb(z.watermark(crate::mmzone::Watermark::High)),
                kb(z.present_pages()),
                kb(z.managed_pages()),
                kb(pcp)
            ));
            let r = &z.lowmem_reserve;
            let n = self.arch.nr_zones();
            let mut line = [0u64; crate::mmzone::MAX_NR_ZONES];
            for (i, v) in line.iter_mut().enumerate().take(n) {
                *v = r[i].load(Relaxed);
            }
            p.printk(format_args!("lowmem_reserve[]: {}", Joined(&line[..n])));
        }
        for z in self.zones().filter(|z| z.is_populated()) {
            let counts = z.free_area_counts();
            p.printk(format_args!(
                "Node {} {}: {}= {}kB",
                z.nid(),
                z.name(),
                BuddyLine(&counts, self.page_size() >> 10),
                kb(z.free_pages())
            ));
        }
    }

    // ----------------------------------------------------------------- free

    /// `__free_pages()`: drops a reference; the last one frees the block.
    #[inline(always)]
    pub fn __free_pages(&self, page: &Page, order: u32) -> Result<(), KmmError> {
        if self.free_pages_fast(page, order) {
            return Ok(());
        }
        self.free_pages_common(page, order, false)
    }

    /// The common `__free_pages()`, with nothing that can fail or call out:
    /// the last reference to a sane, non-compound block of order 0-3, put
    /// at the head of the owned CPU's list while that stays below `high`.
    /// Anything else returns `false` having changed nothing, and
    /// `free_pages_common()` takes over.
    #[inline(always)]
    fn free_pages_fast(&self, page: &Page, order: u32) -> bool {
        if order as usize >= NR_PCP_LISTS {
            return false;
        }
        let Some(cpu) = self.platform.owned_cpu_fast() else {
            return false;
        };
        let Ok(pfn) = self.page_to_pfn(page) else {
            return false;
        };
        let raw = page.raw_flags();
        if raw & PageFlags::HEAD.bits() != 0
            || !Self::sane_at_free(page, raw, order)
            || page.refcount.load(Relaxed) != 1
        {
            return false;
        }
        let zone = self.zone_by_id(Page::zone_id_of(raw));
        let Some(pcp) = zone.pcp.as_slice().get(cpu) else {
            return false;
        };
        let map = self.mem_map();
        let Some(_g) = pcp.lock.try_lock_owner() else {
            return false;
        };
        let count = pcp.count.load(Relaxed) + (1 << order);
        if count >= pcp.high.load(Relaxed) {
            return false;
        }
        // put_page_testzero() for the last reference; a get_page() that
        // came in meanwhile leaves the work to the full path.
        if page
            .refcount
            .compare_exchange(1, 0, Relaxed, Relaxed)
            .is_err()
        {
            return false;
        }
        Self::clear_at_free(page, raw);
        let o = order as usize;
        let mut list = pcp.list(o);
        list.push_front(map, pfn as u32);
        pcp.set_list(o, list);
        pcp.count.store(count, Relaxed);
        pcp.pgfree
            .store(pcp.pgfree.load(Relaxed) + (1 << order), Relaxed);
        true
    }

    /// `free_page_is_bad()` in one look at the flags word, inverted: nothing
    /// set that must be clear at free, allocated with this very order, not
    /// mapped.
    #[inline(always)]
    fn sane_at_free(page: &Page, raw: u64, order: u32) -> bool {
        raw & FLAGS_CHECK_AT_FREE.bits() == 0
            && Page::alloc_order_of(raw) == Some(order)
            && page.mapcount.load(Relaxed) == -1
    }

    /// What `free_pages_prepare()` clears on the first page once the last
    /// reference is gone (nobody else may touch the descriptor, so plain
    /// stores do): the order and head bits, `mapping`, `private`.
    #[inline(always)]
    fn clear_at_free(page: &Page, raw: u64) {
        page.flags
            .store(raw & !(ALLOC_ORDER_BITS | PageFlags::HEAD.bits()), Relaxed);
        page.mapping.store(0, Relaxed);
        page.private.store(0, Relaxed);
    }

    /// `__free_page()`.
    pub fn __free_page(&self, page: &Page) -> Result<(), KmmError> {
        self.__free_pages(page, 0)
    }

    /// `free_pages()`: frees by kernel virtual address; address 0 is ignored.
    pub fn free_pages(&self, addr: u64, order: u32) -> Result<(), KmmError> {
        if addr == 0 {
            return Ok(());
        }
        let page = match self.virt_to_page(addr) {
            Ok(page) => page,
            Err(e) => {
                // Reported like any bad free, not failed silently.
                self.bad_page_outside(
                    addr,
                    None,
                    "free_pages() of an address outside the direct map",
                );
                return Err(e);
            }
        };
        self.__free_pages(page, order)
    }

    /// `free_page()`.
    pub fn free_page(&self, addr: u64) -> Result<(), KmmError> {
        self.free_pages(addr, 0)
    }

    /// `free_hot_page()`: an order-0 page to the head of the per-CPU list,
    /// where the next allocation finds it still in the cache.
    pub fn free_hot_page(&self, page: &Page) -> Result<(), KmmError> {
        self.__free_pages(page, 0)
    }

    /// `free_cold_page()`: an order-0 page to the tail of the per-CPU list.
    pub fn free_cold_page(&self, page: &Page) -> Result<(), KmmError> {
        self.free_pages_common(page, 0, true)
    }

    /// `get_page()`: takes a reference on an allocated page.
    pub fn get_page(&self, page: &Page) -> Result<(), KmmError> {
        let pfn = self.page_to_pfn(page)?;
        let mut old = page.refcount.load(Relaxed);
        loop {
            if old <= 0 {
                return Err(self.bad_page(page, pfn, "get_page() on a free page"));
            }
            match page
                .refcount
                .compare_exchange_weak(old, old + 1, Relaxed, Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(v) => old = v,
            }
        }
    }

    /// `put_page()`: drops a reference; the last one frees the page with the
    /// order it was allocated with.
    pub fn put_page(&self, page: &Page) -> Result<(), KmmError> {
        let order = page.alloc_order().unwrap_or(0);
        self.__free_pages(page, order)
    }

    fn free_pages_common(&self, page: &Page, order: u32, cold: bool) -> Result<(), KmmError> {
        let pfn = match self.page_to_pfn(page) {
            Ok(pfn) => pfn,
            Err(e) => {
                // Another machine's descriptor (or a copy): reported like any
                // bad free, not failed silently.
                let addr = page as *const Page as u64;
                let why = "struct page is not in this machine's mem_map";
                self.bad_page_outside(addr, Some(page), why);
                return Err(e);
            }
        };
        if order >= MAX_ORDER as u32 {
            return Err(KmmError::OrderTooLarge { order });
        }
        if !self.free_pages_prepare(page, pfn, order)? {
            return Ok(());
        }
        let zone = self.page_zone(page);
        if (order as usize) < NR_PCP_LISTS {
            let (cpu, owner) = self.platform.this_cpu();
            if let Some(pcp) = zone.pcp.as_slice().get(cpu) {
                let _g = pcp.lock.lock(&self.platform, cpu, owner);
                self.free_unref_page(zone, pcp, pfn as u32, order, cold);
                return Ok(());
            }
        }
        let mut fa = zone.free.lock();
        self.free_one_page(zone, &mut fa, pfn as u32, order);
        fa.pgfree += 1 << order;
        drop(fa);
        zone.nr_free_pages.fetch_add(1 << order, Relaxed);
        Ok(())
    }

    /// `put_page_testzero()` + `free_pages_prepare()`: drops a reference;
    /// for the last one checks the page (a bad page keeps its reference and
    /// is reported) and clears what the allocator set. Returns whether the
    /// block is now free to go back.
    #[inline(always)]
    fn free_pages_prepare(&self, page: &Page, pfn: u64, order: u32) -> Result<bool, KmmError> {
        // put_page_testzero(): only the last reference frees.
        let old = page.refcount.fetch_sub(1, Relaxed);
        if old <= 0 {
            page.refcount.fetch_add(1, Relaxed);
            return Err(self.bad_page(
                page,
                pfn,
                "page_ref underflow: page is already free (double free)",
            ));
        }
        if old != 1 {
            return Ok(false);
        }
        // A bad page keeps its reference: the report leaves it as it was.
        let raw = page.raw_flags();
        if !Self::sane_at_free(page, raw, order) {
            page.refcount.fetch_add(1, Relaxed);
            return Err(self.free_check_failed(page, pfn, order));
        }
        Self::clear_at_free(page, raw);
        if raw & PageFlags::HEAD.bits() != 0 {
            let map = self.mem_map();
            for t in pfn + 1..pfn + (1 << order) {
                let tp = &map[t as usize];
                tp.clear_flags(PageFlags::TAIL);
                tp.private.store(0, Relaxed);
            }
        }
        Ok(true)
    }

    /// `free_unref_page_list()` / `release_pages()`: drops one reference on
    /// each order-0 page `pfns` names; the pages that became free go to this
    /// CPU's lists under one lock per zone run (Linux batches them the same
    /// way). A bad page is reported and skipped; the first error is returned
    /// after every other page was handled.
    pub fn free_pages_bulk(&self, pfns: impl IntoIterator<Item = u64>) -> Result<(), KmmError> {
        let (cpu, owner) = self.platform.this_cpu();
        let map = self.mem_map();
        let mut first_err = Ok(());
        let mut batch = [0u32; 32];
        let mut n = 0;
        let flush = |batch: &[u32]| {
            let zone_id = |pfn: u32| Page::zone_id_of(map[pfn as usize].raw_flags());
            let mut i = 0;
            while i < batch.len() {
                let zid = zone_id(batch[i]);
                let zone = self.zone_by_id(zid);
                let Some(pcp) = zone.pcp.as_slice().get(cpu) else {
                    for &pfn in &batch[i..] {
                        let z = self.page_zone(&map[pfn as usize]);
                        let mut fa = z.free.lock();
                        self.free_one_page(z, &mut fa, pfn, 0);
                        fa.pgfree += 1;
                        drop(fa);
                        z.nr_free_pages.fetch_add(1, Relaxed);
                    }
                    return;
                };
                let _g = pcp.lock.lock(&self.platform, cpu, owner);
                let mut list = pcp.list(0);
                let mut count = pcp.count.load(Relaxed);
                let mut freed = 0;
                while i < batch.len() && zone_id(batch[i]) == zid {
                    list.push_front(map, batch[i]);
                    count += 1;
                    freed += 1;
                    i += 1;
                }
                pcp.set_list(0, list);
                pcp.pgfree.store(pcp.pgfree.load(Relaxed) + freed, Relaxed);
                if count >= pcp.high.load(Relaxed) {
                    count -= self.free_pcppages_bulk(zone, pcp, pcp.batch.load(Relaxed));
                }
                pcp.count.store(count, Relaxed);
            }
        };
        for pfn in pfns {
            let r = self
                .pfn_to_page(pfn)
                .and_then(|page| self.free_pages_prepare(page, pfn, 0));
            match r {
                Ok(true) => {
                    batch[n] = pfn as u32;
                    n += 1;
                    if n == batch.len() {
                        flush(&batch);
                        n = 0;
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    if first_err.is_ok() {
                        first_err = Err(e);
                    }
                }
            }
        }
        flush(&batch[..n]);
        first_err
    }

    /// Works out which check a free failed, in Linux's order of reasons.
    #[cold]
    #[inline(never)]
    fn free_check_failed(&self, page: &Page, pfn: u64, order: u32) -> KmmError {
        let flags = page.flags();
        let why = if flags.contains(PageFlags::BUDDY) || page.page_count() <= 0 {
            "page_ref underflow: page is already free (double free)"
        } else if flags.contains(PageFlags::TAIL) {
            "freeing a tail page of a compound page"
        } else if flags.intersects(FLAGS_CHECK_AT_FREE) {
            "PAGE_FLAGS_CHECK_AT_FREE flag(s) set"
        } else if page.alloc_order() != Some(order) {
            "freed with an order it was not allocated with"
        } else {
            "nonzero mapcount"
        };
        self.bad_page(page, pfn, why)
    }

    /// `free_unref_page()`: to the per-CPU list of the block's order; past
    /// `high` pages, a batch of the coldest blocks goes back to the buddy
    /// lists. The caller holds the per-CPU lock.
    #[inline(always)]
    fn free_unref_page(&self, zone: &Zone, pcp: &PerCpuPages, pfn: u32, order: u32, cold: bool) {
        let map = self.mem_map();
        let o = order as usize;
        let mut list = pcp.list(o);
        if cold {
            list.push_back(map, pfn);
        } else {
            list.push_front(map, pfn);
        }
        pcp.set_list(o, list);
        let mut count = pcp.count.load(Relaxed) + (1 << order);
        pcp.pgfree
            .store(pcp.pgfree.load(Relaxed) + (1 << order), Relaxed);
        if count >= pcp.high.load(Relaxed) {
            count -= self.free_pcppages_bulk(zone, pcp, pcp.batch.load(Relaxed));
        }
        pcp.count.store(count, Relaxed);
    }

    /// `free_pcppages_bulk()`: at least `pages` pages' worth of blocks from
    /// the cold ends of the per-CPU lists (round robin over the orders) back
    /// to the buddy lists. The caller holds the per-CPU lock. Returns the
    /// pages freed.
    #[cold]
    #[inline(never)]
    fn free_pcppages_bulk(&self, zone: &Zone, pcp: &PerCpuPages, pages: u32) -> u32 {
        let map = self.mem_map();
        let mut fa = zone.free.lock();
        let mut freed = 0u32;
        let mut o = 0;
        let mut empty_in_a_row = 0;
        while freed < pages && empty_in_a_row < NR_PCP_LISTS {
            let mut list = pcp.list(o);
            match list.pop_back(map) {
                Some(pfn) => {
                    pcp.set_list(o, list);
                    self.free_one_page(zone, &mut fa, pfn, o as u32);
                    freed += 1 << o;
                    empty_in_a_row = 0;
                }
                None => empty_in_a_row += 1,
            }
            o = (o + 1) % NR_PCP_LISTS;
        }
        drop(fa);
        zone.nr_free_pages.fetch_add(freed as u64, Relaxed);
        freed
    }

    /// `__free_one_page()`: inserts a block, merging it with its buddy for as
    /// long as the buddy is free at the same order and inside the zone.
    pub(crate) fn free_one_page(
        &self,
        zone: &Zone,
        fa: &mut FreeAreas,
        mut pfn: u32,
        mut order: u32,
    ) {
        let map = self.mem_map();
        let (zs, ze) = (zone.zone_start_pfn(), zone.zone_end_pfn());
        while (order as usize) < MAX_ORDER - 1 {
            let buddy = pfn ^ (1 << order);
            if (buddy as u64) < zs || (buddy as u64) >= ze {
                break;
            }
            let bp = &map[buddy as usize];
            if !bp.flags().contains(PageFlags::BUDDY) || bp.private.load(Relaxed) != order {
                break;
            }
            fa.lists[order as usize].remove(map, buddy);
            fa.nr_free[order as usize] -= 1;
            bp.set_state(PageFlags::empty(), PageFlags::BUDDY);
            bp.private.store(0, Relaxed);
            pfn &= buddy;
            order += 1;
        }
        let page = &map[pfn as usize];
        page.set_state(PageFlags::BUDDY, PageFlags::empty());
        page.private.store(order, Relaxed);
        fa.lists[order as usize].push_front(map, pfn);
        fa.nr_free[order as usize] += 1;
    }

    /// Read-only introspection (for tests and debugging tools): calls
    /// `f(order, pfn)` for every block on CPU `cpu`'s lists of `zone` (order
    /// 0 first), hot end (head) first.
    ///
    /// The list lock is held during the walk, so `f` must not call into the
    /// page allocator. The walk stops after `mem_map.len()` pages or at a
    /// link outside `mem_map`, so a corrupted list cannot loop forever;
    /// compare the number of pages seen with [`PerCpuPages::count`] to detect
    /// that. Nothing happens for a CPU the zone has no lists for.
    pub fn pcp_for_each_block(&self, zone: &Zone, cpu: usize, f: impl FnMut(u32, u64)) {
        let Some(pcp) = zone.pcp.as_slice().get(cpu) else {
            return;
        };
        let _g = pcp.lock.lock_any(&self.platform, cpu);
        pcp.walk_blocks(self.mem_map(), f);
    }

    /// `drain_all_pages()`: empties every CPU's per-CPU lists into the buddy
    /// lists, so that their pages can merge again.
    pub fn drain_all_pages(&self) {
        self.events.pcp_drains.fetch_add(1, Relaxed);
        for zone in self.zones() {
            for (cpu, pcp) in zone.pcp.as_slice().iter().enumerate() {
                let _g = pcp.lock.lock_any(&self.platform, cpu);
                let left = pcp.count.load(Relaxed) - self.free_pcppages_bulk(zone, pcp, u32::MAX);
                pcp.count.store(left, Relaxed);
            }
        }
    }

    /// `bad_page()`: prints Linux's report and returns the error.
    #[cold]
    #[inline(never)]
    fn bad_page(&self, page: &Page, pfn: u64, reason: &'static str) -> KmmError {
        self.events.bad_pages.fetch_add(1, Relaxed);
        let p = &self.platform;
        self.with_current(&mut |_pid, comm| {
            p.printk(format_args!(
                "BUG: Bad page state in process {comm}  pfn:{pfn:05x}"
            ))
        });
        p.printk(format_args!(
            "page: refcount:{} mapcount:{} mapping:{:016x} index:{:#x} pfn:{:#x}",
            page.page_count(),
            page.page_mapcount(),
            page.mapping(),
            page.index(),
            pfn
        ));
        p.printk(format_args!(
            "flags: {}",
            DisplayPageFlags(page.raw_flags())
        ));
        if let Some(o) = page.alloc_order() {
            p.printk(format_args!("page was allocated with order {o}"));
        }
        p.printk(format_args!("page dumped because: {reason}"));
        KmmError::BadPageState { pfn, reason }
    }

    /// [`Self::bad_page`] for a free whose target is no page frame of this
    /// machine: the same report, naming the address instead of a pfn.
    fn bad_page_outside(&self, addr: u64, page: Option<&Page>, reason: &'static str) {
        self.events.bad_pages.fetch_add(1, Relaxed);
        let p = &self.platform;
        self.with_current(&mut |_pid, comm| {
            p.printk(format_args!(
                "BUG: Bad page state in process {comm}  addr:{addr:#x}"
            ))
        });
        if let Some(page) = page {
            p.printk(format_args!(
                "page: refcount:{} mapcount:{} mapping:{:016x} index:{:#x}",
                page.page_count(),
                page.page_mapcount(),
                page.mapping(),
                page.index()
            ));
            p.printk(format_args!(
                "flags: {}",
                DisplayPageFlags(page.raw_flags())
            ));
        }
        p.printk(format_args!("page dumped because: {reason}"));
    }

    /// `split_page()`: turns a non-compound block of `2^order` pages into as
    /// many independent order-0 pages, each with its own reference.
    pub fn split_page(&self, page: &Page, order: u32) -> Result<(), KmmError> {
        let pfn = self.page_to_pfn(page)?;
        if page.alloc_order() != Some(order) || page.is_head() || page.page_count() != 1 {
            return Err(self.bad_page(
                page,
                pfn,
                "split_page() of a page that is not a whole non-compound allocation",
            ));
        }
        let map = self.mem_map();
        for p in &map[pfn as usize..(pfn as usize + (1 << order))] {
            p.refcount.store(1, Relaxed);
            p.set_alloc_order(Some(0));
        }
        Ok(())
    }

    /// `alloc_pages_exact()`: `size` bytes of physically contiguous, page
    /// aligned memory; the pages past `size` in the power-of-two block are
    /// freed at once. Returns the kernel virtual address.
    pub fn alloc_pages_exact(&self, size: u64, gfp: GfpFlags) -> Result<u64, KmmError> {
        if size == 0 {
            return Err(KmmError::InvalidAddress {
                addr: 0,
                what: "alloc_pages_exact size",
            });
        }
        let order = self.get_order(size);
        let addr = self.__get_free_pages(gfp & !GfpFlags::__GFP_COMP, order)?;
        let page = self.virt_to_page(addr)?;
        self.split_page(page, order)?;
        let used = size.div_ceil(self.page_size());
        for i in used..(1 << order) {
            self.free_page(addr + i * self.page_size())?;
        }
        Ok(addr)
    }

    /// `free_pages_exact()`: frees what `alloc_pages_exact(size)` returned.
    pub fn free_pages_exact(&self, addr: u64, size: u64) -> Result<(), KmmError> {
        let pages = size.div_ceil(self.page_size());
        for i in 0..pages {
            self.free_page(addr + i * self.page_size())?;
        }
        Ok(())
    }

    // -------------------------------------------------------------- queries

    /// `global_zone_page_state(NR_FREE_PAGES)`: pages in the buddy lists.
    pub fn nr_free_pages(&self) -> u64 {
        self.zones().map(|z| z.free_pages()).sum()
    }

    /// Pages sitting on per-CPU lists (`free_pcp` in `show_mem`).
    pub fn nr_pcp_pages(&self) -> u64 {
        self.zones()
            .flat_map(|z| z.pcp.as_slice().iter())
            .map(|p| p.count() as u64)
            .sum()
    }
}

/// Space-separated numbers.
struct Joined<'a>(&'a [u64]);

impl core::fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

/// `show_free_areas()`'s `N*SIZEkB` list.
struct BuddyLine<'a>(&'a [u64; MAX_ORDER], u64);

impl core::fmt::Display for BuddyLine<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (o, n) in self.0.iter().enumerate() {
            write!(f, "{}*{}kB ", n, self.1 << o)?;
        }
        Ok(())
    }
}
