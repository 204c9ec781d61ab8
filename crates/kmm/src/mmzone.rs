//! Nodes and zones: `include/linux/mmzone.h`.
//!
//! Each NUMA node (`pg_data_t`) has one [`Zone`] per zone type of the profile.
//! A zone owns the buddy free lists (`free_area[MAX_ORDER]`), its watermarks,
//! its `lowmem_reserve` protection and a per-CPU list of order-0 pages for
//! every CPU.

use crate::list::ListHead;
use crate::local_lock::LocalLock;
use crate::mm_types::{Page, NIL};
use crate::ram::{RamArray, RamSafe};
use crate::spinlock::SpinLock;
use crate::MAX_ORDER;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// `MAX_NR_ZONES`: zones per node in every profile.
pub const MAX_NR_ZONES: usize = 4;

/// `enum zone_type`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ZoneType {
    /// `ZONE_DMA`: memory ISA devices can reach (below 16 MiB on x86).
    Dma,
    /// `ZONE_DMA32`: memory 32-bit devices can reach (below 4 GiB, 64-bit only).
    Dma32,
    /// `ZONE_NORMAL`: directly mapped memory.
    Normal,
    /// `ZONE_HIGHMEM`: memory without a permanent kernel mapping (32-bit only).
    HighMem,
    /// `ZONE_MOVABLE`: memory for movable allocations only (empty unless configured).
    Movable,
}

impl ZoneType {
    /// The name `/proc/zoneinfo` prints (`zone_names[]`).
    pub const fn name(self) -> &'static str {
        match self {
            ZoneType::Dma => "DMA",
            ZoneType::Dma32 => "DMA32",
            ZoneType::Normal => "Normal",
            ZoneType::HighMem => "HighMem",
            ZoneType::Movable => "Movable",
        }
    }

    /// Suffix of the zone's `/proc/vmstat` counters (`pgalloc_dma32`, ...).
    pub const fn vmstat_suffix(self) -> &'static str {
        match self {
            ZoneType::Dma => "dma",
            ZoneType::Dma32 => "dma32",
            ZoneType::Normal => "normal",
            ZoneType::HighMem => "high",
            ZoneType::Movable => "movable",
        }
    }

    /// `sysctl_lowmem_reserve_ratio[]`: how much of the zones above this one it
    /// keeps back from allocations that could have used them.
    pub const fn lowmem_reserve_ratio(self) -> u64 {
        match self {
            ZoneType::Dma | ZoneType::Dma32 => 256,
            ZoneType::Normal => 32,
            ZoneType::HighMem | ZoneType::Movable => 0,
        }
    }

    /// `is_highmem()`.
    pub const fn is_highmem(self) -> bool {
        matches!(self, ZoneType::HighMem)
    }
}

/// `enum zone_watermarks`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watermark {
    /// `WMARK_MIN`: below it only atomic/high-priority allocations succeed.
    Min = 0,
    /// `WMARK_LOW`: below it kswapd is woken.
    Low = 1,
    /// `WMARK_HIGH`: kswapd reclaims until free pages reach it.
    High = 2,
    /// `WMARK_PROMO`: the target for memory tiering promotion.
    Promo = 3,
}

/// The buddy lists of one zone, guarded by `zone->lock`.
pub(crate) struct FreeAreas {
    /// `free_area[order].free_list`.
    pub(crate) lists: [ListHead; MAX_ORDER],
    /// `free_area[order].nr_free`: blocks of that order.
    pub(crate) nr_free: [u64; MAX_ORDER],
    /// Pages handed out by the buddy lists directly (order > 0), for `pgalloc_*`.
    pub(crate) pgalloc: u64,
    /// Pages freed directly to the buddy lists (order > 0), for `pgfree`.
    pub(crate) pgfree: u64,
    /// Allocations from this zone for the preferred node / another node.
    pub(crate) numa_hit: u64,
    pub(crate) numa_miss: u64,
}

impl FreeAreas {
    pub(crate) const fn new() -> Self {
        FreeAreas {
            lists: [ListHead::EMPTY; MAX_ORDER],
            nr_free: [0; MAX_ORDER],
            pgalloc: 0,
            pgfree: 0,
            numa_hit: 0,
            numa_miss: 0,
        }
    }
}

/// `NR_PCP_LISTS`: per-CPU lists for orders 0 to `PAGE_ALLOC_COSTLY_ORDER` (3),
/// as Linux has kept since 5.13.
pub const NR_PCP_LISTS: usize = 4;

/// `struct per_cpu_pages`: one CPU's cache of free blocks of order 0–3 for
/// one zone.
///
/// Lives in simulated RAM (Linux: a per-CPU area). Hot blocks are at the head
/// of each list, cold ones at the tail. Fields other than the lock are read
/// and written with relaxed loads and stores while the lock is held; only the
/// owning CPU takes the lock, except when another CPU drains the lists.
#[repr(C, align(64))]
pub struct PerCpuPages {
    pub(crate) lock: LocalLock,
    /// `count`: pages (not blocks) on the lists.
    pub(crate) count: AtomicU32,
    /// `high`: above this many pages, a batch goes back to the buddy lists.
    pub(crate) high: AtomicU32,
    /// `batch`: pages moved to or from the buddy lists at once.
    pub(crate) batch: AtomicU32,
    pub(crate) heads: [AtomicU32; NR_PCP_LISTS],
    pub(crate) tails: [AtomicU32; NR_PCP_LISTS],
    /// `high_min` / `high_max` as `/proc/zoneinfo` shows them.
    pub(crate) high_min: AtomicU32,
    pub(crate) high_max: AtomicU32,
    /// Per-CPU event counters (Linux folds these into `vm_event_states`).
    pub(crate) pgalloc: AtomicU64,
    pub(crate) pgfree: AtomicU64,
    pub(crate) numa_hit: AtomicU64,
    pub(crate) numa_miss: AtomicU64,
}

// SAFETY: integer atomics only.
unsafe impl RamSafe for PerCpuPages {}

impl PerCpuPages {
    #[inline]
    pub(crate) fn list(&self, order: usize) -> ListHead {
        ListHead {
            head: self.heads[order].load(Relaxed),
            tail: self.tails[order].load(Relaxed),
        }
    }

    #[inline]
    pub(crate) fn set_list(&self, order: usize, l: ListHead) {
        self.heads[order].store(l.head, Relaxed);
        self.tails[order].store(l.tail, Relaxed);
    }

    /// Pages on this CPU's list.
    pub fn count(&self) -> u32 {
        self.count.load(Relaxed)
    }

    /// `pcp->high`.
    pub fn high(&self) -> u32 {
        self.high.load(Relaxed)
    }

    /// `pcp->batch`.
    pub fn batch(&self) -> u32 {
        self.batch.load(Relaxed)
    }

    /// `pcp->high_min`.
    pub fn high_min(&self) -> u32 {
        self.high_min.load(Relaxed)
    }

    /// `pcp->high_max`.
    pub fn high_max(&self) -> u32 {
        self.high_max.load(Relaxed)
    }

    /// Calls `f(order, pfn)` for every block on the lists, order 0 first,
    /// hot end (head) first, without locking: the caller holds the lock
    /// ([`crate::Kmm::pcp_for_each_block`]).
    pub(crate) fn walk_blocks(&self, mem_map: &[Page], mut f: impl FnMut(u32, u64)) {
        for order in 0..NR_PCP_LISTS {
            walk_list(mem_map, self.heads[order].load(Relaxed), |pfn| {
                f(order as u32, pfn)
            });
        }
    }
}

/// Follows `next` links from `head` until [`NIL`], at most `mem_map.len()` steps.
fn walk_list(mem_map: &[Page], head: u32, mut f: impl FnMut(u64)) {
    let mut pfn = head;
    let mut steps = 0;
    while pfn != NIL && steps < mem_map.len() {
        let Some(page) = mem_map.get(pfn as usize) else {
            return;
        };
        f(pfn as u64);
        pfn = page.next.load(Relaxed);
        steps += 1;
    }
}

/// `struct zone`.
pub struct Zone {
    pub(crate) free: SpinLock<FreeAreas>,
    /// `vm_stat[NR_FREE_PAGES]`: pages in the buddy lists (not on per-CPU lists).
    pub(crate) nr_free_pages: AtomicU64,
    pub(crate) zone_type: ZoneType,
    pub(crate) idx: usize,
    pub(crate) nid: usize,
    /// `zone_start_pfn`.
    pub(crate) zone_start_pfn: u64,
    /// `spanned_pages`: pfns from start to end, holes included.
    pub(crate) spanned_pages: u64,
    /// `present_pages`: pfns backed by RAM.
    pub(crate) present_pages: u64,
    /// `managed_pages`: pages given to the buddy allocator.
    pub(crate) managed_pages: AtomicU64,
    /// `_watermark[]`.
    pub(crate) watermark: [AtomicU64; 4],
    /// `lowmem_reserve[]`: pages kept back from allocations that could use a
    /// higher zone, indexed by that allocation's highest zone.
    pub(crate) lowmem_reserve: [AtomicU64; MAX_NR_ZONES],
    /// `per_cpu_pageset`.
    pub(crate) pcp: RamArray<PerCpuPages>,
    /// Direct-reclaim stalls charged to this zone (`allocstall_*`).
    pub(crate) allocstall: AtomicU64,
    /// `stat_threshold` of the per-CPU vmstat diffs (shown in zoneinfo).
    pub(crate) stat_threshold: AtomicU32,
}

impl Zone {
    pub(crate) const fn empty(zone_type: ZoneType, idx: usize, nid: usize) -> Zone {
        Zone {
            free: SpinLock::new(FreeAreas::new()),
            nr_free_pages: AtomicU64::new(0),
            zone_type,
            idx,
            nid,
            zone_start_pfn: 0,
            spanned_pages: 0,
            present_pages: 0,
            managed_pages: AtomicU64::new(0),
            watermark: [const { AtomicU64::new(0) }; 4],
            lowmem_reserve: [const { AtomicU64::new(0) }; MAX_NR_ZONES],
            pcp: RamArray::empty(),
            allocstall: AtomicU64::new(0),
            stat_threshold: AtomicU32::new(0),
        }
    }

    /// The zone's type.
    pub fn zone_type(&self) -> ZoneType {
        self.zone_type
    }
    /// `zone_idx()`.
    pub fn idx(&self) -> usize {
        self.idx
    }
    /// `zone_to_nid()`.
    pub fn nid(&self) -> usize {
        self.nid
    }
    /// `zone->name`.
    pub fn name(&self) -> &'static str {
        self.zone_type.name()
    }
    /// `zone_start_pfn`.
    pub fn zone_start_pfn(&self) -> u64 {
        self.zone_start_pfn
    }
    /// `zone_end_pfn()`.
    pub fn zone_end_pfn(&self) -> u64 {
        self.zone_start_pfn + self.spanned_pages
    }
    /// `spanned_pages`.
    pub fn spanned_pages(&self) -> u64 {
        self.spanned_pages
    }
    /// `present_pages`.
    pub fn present_pages(&self) -> u64 {
        self.present_pages
    }
    /// `zone_managed_pages()`.
    pub fn managed_pages(&self) -> u64 {
        self.managed_pages.load(Relaxed)
    }
    /// `populated_zone()`.
    pub fn is_populated(&self) -> bool {
        self.present_pages != 0
    }
    /// `zone_page_state(zone, NR_FREE_PAGES)`.
    pub fn free_pages(&self) -> u64 {
        self.nr_free_pages.load(Relaxed)
    }
    /// `min_wmark_pages()`, `low_wmark_pages()`, ...
    pub fn watermark(&self, w: Watermark) -> u64 {
        self.watermark[w as usize].load(Relaxed)
    }
    /// `zone->lowmem_reserve[j]`.
    pub fn lowmem_reserve(&self, j: usize) -> u64 {
        self.lowmem_reserve[j].load(Relaxed)
    }
    /// `free_area[order].nr_free` for every order (one consistent snapshot).
    pub fn free_area_counts(&self) -> [u64; MAX_ORDER] {
        self.free.lock().nr_free
    }
    /// Read-only introspection (for tests and debugging tools): calls
    /// `f(order, pfn)` for the first page of every block on the buddy free
    /// lists, order 0 first, each list from its head.
    ///
    /// `mem_map` is the machine's page array ([`crate::Kmm::mem_map`]). The
    /// zone lock is held during the walk, so `f` must not call into the page
    /// allocator. Each list walk stops after `mem_map.len()` blocks or at a
    /// link outside `mem_map`, so a corrupted list cannot loop forever; compare
    /// the blocks seen with [`Self::free_area_counts`] to detect that.
    pub fn for_each_free_block(&self, mem_map: &[Page], mut f: impl FnMut(u32, u64)) {
        let fa = self.free.lock();
        for (order, list) in fa.lists.iter().enumerate() {
            walk_list(mem_map, list.head, |pfn| f(order as u32, pfn));
        }
    }

    /// This CPU's `per_cpu_pages`, if the zone is populated.
    pub fn pcp(&self, cpu: usize) -> Option<&PerCpuPages> {
        self.pcp.as_slice().get(cpu)
    }
    /// `zone->stat_threshold`.
    pub fn stat_threshold(&self) -> u32 {
        self.stat_threshold.load(Relaxed)
    }
    /// Counters of this zone summed over CPUs: (pgalloc, pgfree, numa_hit, numa_miss).
    pub fn event_counts(&self) -> ZoneEvents {
        let fa = self.free.lock();
        let mut ev = ZoneEvents {
            pgalloc: fa.pgalloc,
            pgfree: fa.pgfree,
            numa_hit: fa.numa_hit,
            numa_miss: fa.numa_miss,
            allocstall: self.allocstall.load(Relaxed),
        };
        drop(fa);
        for p in self.pcp.as_slice() {
            ev.pgalloc += p.pgalloc.load(Relaxed);
            ev.pgfree += p.pgfree.load(Relaxed);
            ev.numa_hit += p.numa_hit.load(Relaxed);
            ev.numa_miss += p.numa_miss.load(Relaxed);
        }
        ev
    }
}

/// Event counters of one zone (`/proc/vmstat` and `/proc/zoneinfo`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZoneEvents {
    /// Pages allocated from the zone (`pgalloc_<zone>`).
    pub pgalloc: u64,
    /// Pages freed to the zone (`pgfree`).
    pub pgfree: u64,
    /// Allocations satisfied on the preferred node (`numa_hit`).
    pub numa_hit: u64,
    /// Allocations that fell back from another node (`numa_miss`).
    pub numa_miss: u64,
    /// Direct-reclaim stalls (`allocstall_<zone>`).
    pub allocstall: u64,
}

/// `pg_data_t`: one NUMA node.
pub struct PgData {
    /// `node_zones[]`.
    pub(crate) zones: [Zone; MAX_NR_ZONES],
    /// `nr_zones`: zones this profile has.
    pub(crate) nr_zones: usize,
    /// `node_start_pfn`.
    pub(crate) node_start_pfn: u64,
    /// `node_spanned_pages`.
    pub(crate) node_spanned_pages: u64,
    /// `node_present_pages`.
    pub(crate) node_present_pages: u64,
    /// CPUs on this node.
    pub(crate) nr_cpus: usize,
}

impl PgData {
    /// The node's zones (only those the profile has).
    pub fn zones(&self) -> &[Zone] {
        &self.zones[..self.nr_zones]
    }
    /// `node_start_pfn`.
    pub fn node_start_pfn(&self) -> u64 {
        self.node_start_pfn
    }
    /// `node_spanned_pages`.
    pub fn node_spanned_pages(&self) -> u64 {
        self.node_spanned_pages
    }
    /// `node_present_pages`.
    pub fn node_present_pages(&self) -> u64 {
        self.node_present_pages
    }
    /// CPUs attached to this node.
    pub fn nr_cpus(&self) -> usize {
        self.nr_cpus
    }
}
