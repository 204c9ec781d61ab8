//! The memory manager instance: what Linux keeps in globals across `mm/`
//! (`node_data[]`, `mem_map`, `totalram_pages`, `min_free_kbytes`, the kept
//! memblock tables), plus the address conversions of `asm/page.h`.

use crate::arch::Arch;
use crate::error::KmmError;
use crate::memblock::Memblock;
use crate::mm_types::{Page, STRUCT_PAGE_SIZE};
use crate::mmzone::{PgData, Zone, MAX_NR_ZONES};
use crate::platform::Platform;
use crate::ram::{PhysMem, RamArray};
use crate::spinlock::SpinLock;
use crate::{MAX_NUMNODES, NR_CPUS};
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// `struct zonelist`: the zones an allocation on one node tries, in order.
#[derive(Clone, Copy, Debug)]
pub struct Zonelist {
    pub(crate) zones: [(u8, u8); MAX_NUMNODES * MAX_NR_ZONES],
    pub(crate) len: usize,
}

impl Zonelist {
    pub(crate) const EMPTY: Zonelist = Zonelist {
        zones: [(0, 0); MAX_NUMNODES * MAX_NR_ZONES],
        len: 0,
    };

    /// `(nid, zone index)` pairs, most preferred first.
    #[inline]
    pub fn entries(&self) -> &[(u8, u8)] {
        &self.zones[..self.len]
    }
}

/// What boot left behind, for the `Memory:` line and `/proc/meminfo`.
#[derive(Clone, Copy, Debug, Default)]
pub struct BootSummary {
    /// Pages of RAM in the memory map (`physpages`).
    pub physpages: u64,
    /// Pages given to the buddy allocator at boot.
    pub freed_pages: u64,
    /// Bytes of `mem_map`.
    pub mem_map_bytes: u64,
    /// Bytes of per-CPU page-list tables.
    pub pcp_bytes: u64,
    /// Bytes reserved by `alloc_bootmem*` and not freed before `mem_init`.
    pub bootmem_bytes: u64,
    /// Pages of high memory (`totalhigh_pages`).
    pub totalhigh_pages: u64,
}

/// Counters of events that have no `/proc/vmstat` line of their own.
#[derive(Default)]
pub struct MmEvents {
    /// `wakeup_kswapd()` calls.
    pub kswapd_wakeups: AtomicU64,
    /// Allocations that failed (`warn_alloc` or silent).
    pub alloc_failures: AtomicU64,
    /// "BUG: Bad page state" reports.
    pub bad_pages: AtomicU64,
    /// "BUG: sleeping function called from invalid context" reports.
    pub sleep_in_atomic: AtomicU64,
    /// `drain_all_pages()` calls.
    pub pcp_drains: AtomicU64,
    /// Slab and kmalloc misuse reports (`BUG <cache>`, bad `kfree`, ...).
    pub slab_errors: AtomicU64,
}

/// The memory manager of one machine: nodes, zones, `mem_map` and the page
/// allocator. Built by [`crate::mm_init::EarlyBoot::mem_init`].
pub struct Kmm<P: Platform> {
    pub(crate) platform: P,
    pub(crate) mem: PhysMem,
    pub(crate) arch: &'static Arch,
    pub(crate) page_shift: u32,
    pub(crate) mem_map: RamArray<Page>,
    pub(crate) mem_map_phys: u64,
    pub(crate) max_pfn: u64,
    pub(crate) nodes: [PgData; MAX_NUMNODES],
    pub(crate) nr_node_ids: usize,
    pub(crate) nr_cpu_ids: usize,
    pub(crate) cpu_to_node: [u8; NR_CPUS],
    pub(crate) node_distance: [[u8; MAX_NUMNODES]; MAX_NUMNODES],
    pub(crate) zonelists: [Zonelist; MAX_NUMNODES],
    /// `gfp_zone()` answers as zone indices, by [`crate::ZoneType`] (`GFP_ZONE_TABLE`).
    pub(crate) zone_index_of: [u8; 5],
    /// For each node and highest usable zone index: the first zone of the
    /// node's zonelist an allocation may use (`ac->preferred_zoneref`).
    pub(crate) preferred_zone: [[(u8, u8); MAX_NR_ZONES]; MAX_NUMNODES],
    pub(crate) min_free_kbytes: AtomicU64,
    pub(crate) watermark_scale_factor: AtomicU64,
    pub(crate) memblock: SpinLock<Memblock>,
    pub(crate) boot: BootSummary,
    pub(crate) totalram_pages: AtomicU64,
    /// `NR_PAGETABLE`: pages holding page tables ([`crate::pgtable`]).
    pub(crate) nr_pagetable: AtomicU64,
    /// Event counters.
    pub events: MmEvents,
    /// The slab allocator: the cache table and the kmalloc caches.
    pub(crate) slab: crate::slab::SlabState,
    /// The dynamic per-CPU allocator's chunks (`mm/percpu.c`).
    pub(crate) percpu: crate::percpu::PcpuState,
    /// Kernel stacks: `THREAD_SIZE`, `NR_KERNEL_STACK_KB`, interrupt stacks.
    pub(crate) task_stack: crate::task_stack::StackState,
    /// The kernel page table, the layout and the vmalloc allocator.
    pub(crate) vm: crate::vmalloc::VmallocState,
    /// The VMA and mm_struct caches and the mmap tunables (`mm/mmap.c`).
    pub(crate) mmap: crate::mmap::MmapState,
    /// Permanent and atomic kmaps of high memory.
    pub(crate) highmem: crate::highmem::HighmemState,
    /// The page cache.
    pub(crate) filemap: crate::filemap::FilemapState,
    /// The reverse map.
    pub(crate) rmap: crate::rmap::RmapState,
    /// Process memory: the zero page, ASIDs, fault counters.
    pub(crate) memory: crate::memory::MemoryState,
    /// Tasks (`task_struct` objects).
    pub(crate) fork: crate::fork::ForkState,
}

impl<P: Platform> Kmm<P> {
    /// The platform this memory manager runs on.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// Physical memory.
    pub fn phys(&self) -> &PhysMem {
        &self.mem
    }

    /// The architecture profile.
    pub fn arch(&self) -> &'static Arch {
        self.arch
    }

    /// `PAGE_SHIFT`.
    pub fn page_shift(&self) -> u32 {
        self.page_shift
    }

    /// `PAGE_SIZE`.
    pub fn page_size(&self) -> u64 {
        1 << self.page_shift
    }

    /// `max_pfn`: one past the highest page frame of RAM.
    pub fn max_pfn(&self) -> u64 {
        self.max_pfn
    }

    /// `nr_node_ids`.
    pub fn nr_node_ids(&self) -> usize {
        self.nr_node_ids
    }

    /// `nr_cpu_ids`.
    pub fn nr_cpu_ids(&self) -> usize {
        self.nr_cpu_ids
    }

    /// `NODE_DATA(nid)`.
    pub fn node(&self, nid: usize) -> Option<&PgData> {
        self.nodes[..self.nr_node_ids].get(nid)
    }

    /// All online nodes.
    pub fn nodes(&self) -> &[PgData] {
        &self.nodes[..self.nr_node_ids]
    }

    /// Every zone of every node, in node then zone order (`for_each_zone`).
    pub fn zones(&self) -> impl Iterator<Item = &Zone> {
        self.nodes().iter().flat_map(|n| n.zones().iter())
    }

    /// `cpu_to_node()`.
    #[inline]
    pub fn cpu_to_node(&self, cpu: usize) -> usize {
        self.cpu_to_node.get(cpu).copied().unwrap_or(0) as usize
    }

    /// `numa_node_id()`: the node of the calling CPU.
    pub fn numa_node_id(&self) -> usize {
        self.cpu_to_node(self.platform.smp_processor_id())
    }

    /// `node_distance()`.
    pub fn node_distance(&self, a: usize, b: usize) -> u8 {
        self.node_distance[a % MAX_NUMNODES][b % MAX_NUMNODES]
    }

    /// `node_zonelist(nid)`: the fallback order for allocations on `nid`.
    pub fn zonelist(&self, nid: usize) -> &Zonelist {
        &self.zonelists[nid % MAX_NUMNODES]
    }

    /// `min_free_kbytes`.
    pub fn min_free_kbytes(&self) -> u64 {
        self.min_free_kbytes.load(Relaxed)
    }

    /// `totalram_pages()`: pages managed by the buddy allocator.
    pub fn totalram_pages(&self) -> u64 {
        self.totalram_pages.load(Relaxed)
    }

    /// What boot reserved and freed.
    pub fn boot_summary(&self) -> &BootSummary {
        &self.boot
    }

    /// A copy of the memblock tables kept after boot (`CONFIG_ARCH_KEEP_MEMBLOCK`).
    pub fn memblock(&self) -> Memblock {
        self.memblock.lock().clone()
    }

    /// `mem_map` as a slice, indexed by page frame number.
    #[inline(always)]
    pub fn mem_map(&self) -> &[Page] {
        self.mem_map.as_slice()
    }

    /// Physical address of `mem_map`.
    pub fn mem_map_phys(&self) -> u64 {
        self.mem_map_phys
    }

    /// `pfn_valid()`: the frame has a page descriptor.
    pub fn pfn_valid(&self, pfn: u64) -> bool {
        pfn < self.max_pfn
    }

    /// `pfn_to_page()`.
    pub fn pfn_to_page(&self, pfn: u64) -> Result<&Page, KmmError> {
        self.mem_map()
            .get(pfn as usize)
            .filter(|_| pfn < self.max_pfn)
            .ok_or(KmmError::InvalidAddress {
                addr: pfn,
                what: "page frame number",
            })
    }

    /// `page_to_pfn()`: fails for a reference that is not inside `mem_map`.
    #[inline]
    pub fn page_to_pfn(&self, page: &Page) -> Result<u64, KmmError> {
        let base = self.mem_map().as_ptr() as usize;
        let addr = page as *const Page as usize;
        let pfn = (addr.wrapping_sub(base) / STRUCT_PAGE_SIZE) as u64;
        // Below max_pfn (so inside mem_map, which covers every frame up to
        // it) and at the start of a descriptor: no remainder check of the
        // division by 40 needed.
        let start = (base as *const Page).wrapping_add(pfn as usize);
        if pfn >= self.max_pfn || !core::ptr::eq(start, page) {
            return Err(KmmError::InvalidAddress {
                addr: addr as u64,
                what: "struct page pointer",
            });
        }
        Ok(pfn)
    }

    /// `page_zone()`.
    #[inline]
    pub fn page_zone(&self, page: &Page) -> &Zone {
        &self.nodes[page.nid()].zones[page.zone_idx()]
    }

    /// The zone of flat id `node << 2 | zone` (the page flags' layout of the
    /// two; [`Page::zone_id_of`]). Out-of-range parts wrap, without a bounds
    /// check: callers pass ids they built from real nodes and zones.
    #[inline(always)]
    pub(crate) fn zone_by_id(&self, id: usize) -> &Zone {
        &self.nodes[(id >> 2) & (MAX_NUMNODES - 1)].zones[id & (MAX_NR_ZONES - 1)]
    }

    /// `PFN_PHYS()`.
    pub fn pfn_phys(&self, pfn: u64) -> u64 {
        pfn << self.page_shift
    }

    /// `PHYS_PFN()`.
    pub fn phys_pfn(&self, phys: u64) -> u64 {
        phys >> self.page_shift
    }

    /// `page_to_phys()`.
    pub fn page_to_phys(&self, page: &Page) -> Result<u64, KmmError> {
        Ok(self.pfn_phys(self.page_to_pfn(page)?))
    }

    /// `phys_to_page()`.
    pub fn phys_to_page(&self, phys: u64) -> Result<&Page, KmmError> {
        self.pfn_to_page(self.phys_pfn(phys))
    }

    /// `__va()`: the direct-map address of low memory.
    pub fn __va(&self, phys: u64) -> Result<u64, KmmError> {
        if phys >= self.pfn_phys(self.max_pfn) || !self.arch.is_lowmem(phys) {
            return Err(KmmError::InvalidAddress {
                addr: phys,
                what: "physical address outside the direct map",
            });
        }
        Ok(self.arch.phys_to_virt(phys))
    }

    /// `__pa()` / `virt_to_phys()`: the physical address behind a direct-map address.
    pub fn __pa(&self, virt: u64) -> Result<u64, KmmError> {
        self.arch
            .virt_to_phys(virt)
            .filter(|&p| p < self.pfn_phys(self.max_pfn))
            .ok_or(KmmError::InvalidAddress {
                addr: virt,
                what: "kernel virtual address outside the direct map",
            })
    }

    /// `phys_to_virt()`, the same as [`Self::__va`].
    pub fn phys_to_virt(&self, phys: u64) -> Result<u64, KmmError> {
        self.__va(phys)
    }

    /// `virt_to_phys()`, the same as [`Self::__pa`].
    pub fn virt_to_phys(&self, virt: u64) -> Result<u64, KmmError> {
        self.__pa(virt)
    }

    /// `virt_to_page()`.
    pub fn virt_to_page(&self, virt: u64) -> Result<&Page, KmmError> {
        self.phys_to_page(self.__pa(virt)?)
    }

    /// `page_address()`: the page's direct-map address; for a high-memory
    /// page its `kmap` address while it is kmapped, else `None` (NULL).
    pub fn page_address(&self, page: &Page) -> Option<u64> {
        let phys = self.page_to_phys(page).ok()?;
        if self.arch.is_lowmem(phys) {
            Some(self.arch.phys_to_virt(phys))
        } else {
            // A highmem page has an address only while kmapped.
            self.pkmap_address(phys >> self.page_shift)
        }
    }

    /// `PageHighMem()`.
    pub fn page_is_highmem(&self, page: &Page) -> bool {
        self.page_zone(page).zone_type().is_highmem()
    }

    /// `get_order()`: the smallest order whose block holds `size` bytes.
    pub fn get_order(&self, size: u64) -> u32 {
        let pages = size.saturating_sub(1) >> self.page_shift;
        64 - pages.leading_zeros()
    }

    /// Runs `f` with the name and pid of the current task.
    pub(crate) fn with_current(&self, f: &mut dyn FnMut(u32, &str)) {
        self.platform.current_task(&mut |t| f(t.pid, t.comm));
    }
}
