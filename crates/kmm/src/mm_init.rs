//! Boot: from the firmware memory map to a running buddy allocator
//! (`arch/x86/kernel/setup.c`, `mm/mm_init.c`, `mm/memblock.c`'s `memblock_free_all`).
//!
//! Boot has two phases, as in Linux, and two types so that their rules hold:
//!
//! 1. [`setup_arch`] reads the e820 map into memblock and reserves the kernel
//!    image. The [`EarlyBoot`] it returns offers only boot-time allocation
//!    (`alloc_bootmem*`, `free_bootmem`).
//! 2. [`EarlyBoot::mem_init`] sizes the nodes and zones, allocates `mem_map`
//!    and the per-CPU page lists from memblock, hands every free page to the
//!    buddy allocator, computes watermarks and returns the [`Kmm`].

use crate::arch::e820::{E820Entry, E820Type, MemRange};
use crate::arch::Arch;
use crate::error::KmmError;
use crate::memblock::{Memblock, ReserveKind};
use crate::mm::{BootSummary, Kmm, MmEvents, Zonelist};
use crate::mm_types::{Page, PageFlags, STRUCT_PAGE_SIZE};
use crate::mmzone::{PerCpuPages, PgData, Zone};
use crate::platform::Platform;
use crate::ram::PhysMem;
use crate::spinlock::SpinLock;
use crate::{MAX_NUMNODES, MAX_ORDER, NR_CPUS};
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Page sizes a machine may use.
pub const PAGE_SIZES: [u64; 4] = [4 << 10, 8 << 10, 16 << 10, 64 << 10];

/// `L1_CACHE_BYTES` / `SMP_CACHE_BYTES`: alignment of `alloc_bootmem`.
pub const SMP_CACHE_BYTES: u64 = 64;

/// The physical range of one NUMA node (from the firmware's SRAT table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// What the firmware and the boot loader tell the kernel.
#[derive(Clone, Debug)]
pub struct BootParams<'a> {
    /// The architecture profile.
    pub arch: &'static Arch,
    /// `PAGE_SIZE` in bytes.
    pub page_size: u64,
    /// The e820 memory map.
    pub e820: &'a [E820Entry],
    /// Physical range of each node, in node order (1 to `MAX_NUMNODES`).
    pub nodes: &'a [NodeRange],
    /// `node_distance()` table (SLIT), 10 on the diagonal.
    pub node_distance: [[u8; MAX_NUMNODES]; MAX_NUMNODES],
    /// Number of possible CPUs (`nr_cpu_ids`, 1 to `NR_CPUS`).
    pub nr_cpus: usize,
    /// `cpu_to_node()` for each CPU.
    pub cpu_to_node: [u8; NR_CPUS],
}

/// The kernel between `setup_arch()` and `mem_init()`: only memblock exists.
pub struct EarlyBoot<P: Platform> {
    platform: P,
    mem: PhysMem,
    arch: &'static Arch,
    page_shift: u32,
    memblock: Memblock,
    nr_nodes: usize,
    node_distance: [[u8; MAX_NUMNODES]; MAX_NUMNODES],
    nr_cpus: usize,
    cpu_to_node: [u8; NR_CPUS],
    max_pfn: u64,
}

macro_rules! pr {
    ($p:expr, $($arg:tt)*) => { $p.printk(format_args!($($arg)*)) };
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

fn align_down(x: u64, a: u64) -> u64 {
    x / a * a
}

/// `setup_arch()`: reads the firmware memory map into memblock, trims the
/// ranges Linux never uses (the first page, the legacy 640 KiB–1 MiB area),
/// reserves the kernel image and returns the early-boot kernel.
pub fn setup_arch<P: Platform>(
    platform: P,
    mem: PhysMem,
    params: &BootParams<'_>,
) -> Result<EarlyBoot<P>, KmmError> {
    let arch = params.arch;
    if !PAGE_SIZES.contains(&params.page_size) {
        return Err(KmmError::BadMachine {
            why: "page size must be 4K, 8K, 16K or 64K",
        });
    }
    let page_shift = params.page_size.trailing_zeros();
    if params.nodes.is_empty() || params.nodes.len() > MAX_NUMNODES {
        return Err(KmmError::BadMachine {
            why: "a machine has 1 to 8 NUMA nodes",
        });
    }
    if params.nr_cpus == 0 || params.nr_cpus > NR_CPUS {
        return Err(KmmError::BadMachine {
            why: "a machine has 1 to 64 CPUs",
        });
    }
    if params.cpu_to_node[..params.nr_cpus]
        .iter()
        .any(|&n| n as usize >= params.nodes.len())
    {
        return Err(KmmError::BadMachine {
            why: "a CPU is attached to a node that does not exist",
        });
    }
    pr!(platform, "Linux version 6.8.0-kmm ({}) #1 SMP", arch.name);
    pr!(platform, "BIOS-provided physical RAM map:");
    for e in params.e820 {
        pr!(
            platform,
            "BIOS-e820: {} {}",
            MemRange(e.addr, e.end()),
            e.kind.name()
        );
    }

    let mut mb = Memblock::new();
    for e in params.e820.iter().filter(|e| e.kind == E820Type::Ram) {
        if e.end() > mem.len() {
            return Err(KmmError::BadMachine {
                why: "e820 map reports RAM beyond the simulated memory",
            });
        }
        // Split each usable range among the nodes that cover it.
        for (nid, n) in params.nodes.iter().enumerate() {
            let (s, t) = (e.addr.max(n.start), e.end().min(n.end).min(arch.max_phys));
            if s < t {
                mb.add(s, t - s, nid as u8)?;
            }
        }
    }
    // trim_bios_range(): the first page holds the BIOS data area, and the
    // legacy VGA/BIOS window is never RAM.
    let first = params.page_size.max(4096);
    if mb.memory.regions().first().is_some_and(|r| r.base < first) {
        pr!(
            platform,
            "e820: update {} usable ==> reserved",
            MemRange(0, first)
        );
    }
    let mut trimmed = Memblock::new();
    for r in mb.memory.regions() {
        for (s, t) in [
            (r.base, r.end().min(0xa_0000)),
            (r.base.max(0x10_0000), r.end()),
        ] {
            let (s, t) = (
                align_up(s.max(first), params.page_size),
                align_down(t, params.page_size),
            );
            if s < t {
                trimmed.add(s, t - s, r.nid)?;
            }
        }
    }
    pr!(
        platform,
        "e820: remove {} usable",
        MemRange(0xa_0000, 0x10_0000)
    );
    let mut mb = trimmed;
    let last = mb
        .memory
        .regions()
        .last()
        .map(|r| r.end())
        .ok_or(KmmError::BadMachine {
            why: "the e820 map has no usable RAM",
        })?;
    let max_pfn = last >> page_shift;
    pr!(
        platform,
        "last_pfn = {:#x} max_arch_pfn = {:#x}",
        max_pfn,
        arch.max_phys >> page_shift
    );
    if max_pfn > u32::MAX as u64 - 1 {
        return Err(KmmError::BadMachine {
            why: "too many page frames for 32-bit frame links",
        });
    }
    if let Some(lowmem) = arch.max_lowmem {
        let high = last.saturating_sub(lowmem);
        if high > 0 {
            pr!(platform, "{}MB HIGHMEM available.", high >> 20);
        }
        pr!(platform, "{}MB LOWMEM available.", last.min(lowmem) >> 20);
        mb.current_limit = lowmem;
    }
    let image: u64 = arch.kernel_sections_k.iter().sum::<u64>() << 10;
    let image_end = arch.kernel_start + align_up(image, params.page_size);
    if !mb
        .memory
        .regions()
        .iter()
        .any(|r| r.base <= arch.kernel_start && r.end() >= image_end)
    {
        return Err(KmmError::BadMachine {
            why: "RAM too small to hold the kernel image",
        });
    }
    mb.reserve(
        arch.kernel_start,
        image_end - arch.kernel_start,
        ReserveKind::KernelImage,
    )?;

    Ok(EarlyBoot {
        platform,
        mem,
        arch,
        page_shift,
        memblock: mb,
        nr_nodes: params.nodes.len(),
        node_distance: params.node_distance,
        nr_cpus: params.nr_cpus,
        cpu_to_node: params.cpu_to_node,
        max_pfn,
    })
}

impl<P: Platform> EarlyBoot<P> {
    /// The memblock tables as they stand.
    pub fn memblock(&self) -> &Memblock {
        &self.memblock
    }

    /// The architecture profile.
    pub fn arch(&self) -> &'static Arch {
        self.arch
    }

    /// `PAGE_SIZE`.
    pub fn page_size(&self) -> u64 {
        1 << self.page_shift
    }

    fn bootmem(&mut self, size: u64, align: u64, low: bool) -> Result<u64, KmmError> {
        let limit = if low {
            self.arch.bootmem_low_limit
        } else {
            u64::MAX
        };
        // Old bootmem aimed above MAX_DMA_ADDRESS to spare ZONE_DMA; top-down
        // memblock does the same unless memory is that small.
        let phys = self
            .memblock
            .alloc_range(size, align, 0, limit, None, ReserveKind::Bootmem)?;
        self.mem.fill(phys, size as usize, 0)?;
        Ok(self.arch.phys_to_virt(phys))
    }

    /// `alloc_bootmem()`: zeroed, cache-line aligned boot memory; returns its
    /// kernel virtual address.
    pub fn alloc_bootmem(&mut self, size: u64) -> Result<u64, KmmError> {
        self.bootmem(size, SMP_CACHE_BYTES, false)
    }

    /// `alloc_bootmem_pages()`: like `alloc_bootmem`, page aligned.
    pub fn alloc_bootmem_pages(&mut self, size: u64) -> Result<u64, KmmError> {
        self.bootmem(size, self.page_size(), false)
    }

    /// `alloc_bootmem_low()`: boot memory below `ARCH_LOW_ADDRESS_LIMIT`
    /// (16 MiB on x86, 4 GiB on x86_64), usable for DMA.
    pub fn alloc_bootmem_low(&mut self, size: u64) -> Result<u64, KmmError> {
        self.bootmem(size, SMP_CACHE_BYTES, true)
    }

    /// `alloc_bootmem_low_pages()`.
    pub fn alloc_bootmem_low_pages(&mut self, size: u64) -> Result<u64, KmmError> {
        self.bootmem(size, self.page_size(), true)
    }

    /// `free_bootmem()`: returns a physical range to memblock. Only whole pages
    /// reach the buddy allocator at `mem_init`.
    pub fn free_bootmem(&mut self, phys: u64, size: u64) -> Result<(), KmmError> {
        let r = self.memblock.reserved.regions();
        let ok = r
            .iter()
            .any(|r| r.kind == ReserveKind::Bootmem && r.base <= phys && phys + size <= r.end());
        if !ok {
            return Err(KmmError::Memblock {
                why: "free_bootmem of a range alloc_bootmem did not return",
                size,
            });
        }
        self.memblock.phys_free(phys, size)
    }

    /// `__pa()` during boot.
    pub fn __pa(&self, virt: u64) -> Result<u64, KmmError> {
        self.arch
            .virt_to_phys(virt)
            .ok_or(KmmError::InvalidAddress {
                addr: virt,
                what: "kernel virtual address",
            })
    }

    /// `mm_core_init()`: builds zones and `mem_map`, frees memory to the buddy
    /// allocator and returns the running memory manager.
    pub fn mem_init(mut self) -> Result<Kmm<P>, KmmError> {
        let p = &self.platform;
        let arch = self.arch;
        let shift = self.page_shift;
        let page_size = 1u64 << shift;
        let kb = |pages: u64| pages << (shift - 10);
        let max_pfn = self.max_pfn;
        let nz = arch.nr_zones();
        let max_phys = max_pfn << shift;
        let lowest = self.memblock.memory.regions()[0].base;

        pr!(p, "Zone ranges:");
        for (z, zt) in arch.zones.iter().enumerate() {
            if *zt == crate::mmzone::ZoneType::Movable {
                continue;
            }
            let (s, e) = arch.zone_limits(z, max_phys);
            let s = s.max(lowest);
            if s < e {
                pr!(p, "  {:<8} {}", zt.name(), MemRange(s, e));
            } else {
                pr!(p, "  {:<8} empty", zt.name());
            }
        }
        pr!(p, "Movable zone start for each node");
        pr!(p, "Early memory node ranges");
        for r in self.memblock.memory.regions() {
            pr!(p, "  node {:>3}: {}", r.nid, MemRange(r.base, r.end()));
        }

        // Node and zone spans.
        let mut nodes: [PgData; MAX_NUMNODES] = core::array::from_fn(|nid| PgData {
            zones: core::array::from_fn(|z| {
                let zt = arch
                    .zones
                    .get(z)
                    .copied()
                    .unwrap_or(crate::mmzone::ZoneType::Movable);
                Zone::empty(zt, z, nid)
            }),
            nr_zones: nz,
            node_start_pfn: 0,
            node_spanned_pages: 0,
            node_present_pages: 0,
            nr_cpus: 0,
        });
        let present_in = |mb: &Memblock, nid: usize, s: u64, e: u64| -> u64 {
            mb.memory
                .regions()
                .iter()
                .filter(|r| r.nid as usize == nid)
                .map(|r| {
                    let (a, b) = ((r.base >> shift).max(s), (r.end() >> shift).min(e));
                    b.saturating_sub(a)
                })
                .sum()
        };
        #[allow(clippy::needless_range_loop)] // `nid` names the node in messages and filters
        for nid in 0..self.nr_nodes {
            let regs = self.memblock.memory.regions();
            let mut it = regs.iter().filter(|r| r.nid as usize == nid);
            let Some(first) = it.next() else {
                pr!(p, "Initmem setup node {nid}: no memory");
                continue;
            };
            let start = first.base >> shift;
            let end = regs
                .iter()
                .filter(|r| r.nid as usize == nid)
                .map(|r| r.end() >> shift)
                .max()
                .unwrap_or(start);
            pr!(
                p,
                "Initmem setup node {nid} {}",
                MemRange(start << shift, end << shift)
            );
            let node = &mut nodes[nid];
            node.node_start_pfn = start;
            node.node_spanned_pages = end - start;
            node.node_present_pages = present_in(&self.memblock, nid, start, end);
            for z in 0..nz {
                let (zs, ze) = arch.zone_limits(z, max_phys);
                let (zs, ze) = ((zs >> shift).max(start), (ze >> shift).min(end));
                let zone = &mut node.zones[z];
                if zs >= ze {
                    zone.zone_start_pfn = zs.min(end);
                    continue;
                }
                let present = present_in(&self.memblock, nid, zs, ze);
                // Linux starts a zone at its first present page.
                let first_present = regs
                    .iter()
                    .filter(|r| {
                        r.nid as usize == nid && (r.end() >> shift) > zs && (r.base >> shift) < ze
                    })
                    .map(|r| (r.base >> shift).max(zs))
                    .min()
                    .unwrap_or(zs);
                let last_present = regs
                    .iter()
                    .filter(|r| {
                        r.nid as usize == nid && (r.end() >> shift) > zs && (r.base >> shift) < ze
                    })
                    .map(|r| (r.end() >> shift).min(ze))
                    .max()
                    .unwrap_or(zs);
                zone.zone_start_pfn = first_present;
                zone.spanned_pages = last_present.saturating_sub(first_present);
                zone.present_pages = present;
                let holes = ze - zs - present;
                if holes > 0 {
                    pr!(
                        p,
                        "On node {nid}, zone {}: {holes} pages in unavailable ranges",
                        zone.name()
                    );
                }
            }
        }
        for cpu in 0..self.nr_cpus {
            nodes[self.cpu_to_node[cpu] as usize].nr_cpus += 1;
        }

        // mem_map: one struct page per frame below max_pfn (FLATMEM).
        let map_bytes = align_up(max_pfn * STRUCT_PAGE_SIZE as u64, page_size);
        let map_phys = self.memblock.alloc_range(
            map_bytes,
            page_size,
            0,
            u64::MAX,
            None,
            ReserveKind::MemMap,
        )?;
        let mem_map = self.mem.zeroed_array::<Page>(map_phys, max_pfn as usize)?;
        pr!(
            p,
            "mem_map: {} struct pages of {} bytes = {}K at {}",
            max_pfn,
            STRUCT_PAGE_SIZE,
            map_bytes >> 10,
            MemRange(map_phys, map_phys + map_bytes)
        );
        {
            let map = mem_map.as_slice();
            // Everything starts reserved, in the zone that spans it.
            let mut pfn = 0u64;
            for node in &nodes[..self.nr_nodes] {
                for zone in node.zones() {
                    if zone.spanned_pages == 0 {
                        continue;
                    }
                    for q in pfn..zone.zone_start_pfn {
                        map[q as usize].init_reserved(zone.nid, 0);
                    }
                    for q in zone.zone_start_pfn..zone.zone_end_pfn() {
                        map[q as usize].init_reserved(zone.nid, zone.idx);
                    }
                    pfn = pfn.max(zone.zone_end_pfn());
                }
            }
            for q in pfn..max_pfn {
                map[q as usize].init_reserved(0, 0);
            }
        }

        // Per-CPU page lists, on the zone's own node.
        let mut pcp_bytes = 0;
        for node in &mut nodes[..self.nr_nodes] {
            for zone in node.zones.iter_mut().take(nz) {
                if zone.present_pages == 0 {
                    continue;
                }
                let bytes = (self.nr_cpus * core::mem::size_of::<PerCpuPages>()) as u64;
                let at = self
                    .memblock
                    .alloc_range(
                        bytes,
                        64,
                        0,
                        u64::MAX,
                        Some(zone.nid as u8),
                        ReserveKind::PerCpu,
                    )
                    .or_else(|_| {
                        self.memblock
                            .alloc_range(bytes, 64, 0, u64::MAX, None, ReserveKind::PerCpu)
                    })?;
                zone.pcp = self.mem.zeroed_array(at, self.nr_cpus)?;
                pcp_bytes += bytes;
                for pcp in zone.pcp.as_slice() {
                    for order in 0..crate::mmzone::NR_PCP_LISTS {
                        pcp.set_list(order, crate::list::ListHead::EMPTY);
                    }
                }
            }
        }
        // The kmalloc caches' per-CPU object arrays (SLAB's static boot arrays).
        let slab_boot =
            crate::slab_common::reserve_boot_arrays(&mut self.memblock, page_size, self.nr_cpus)?;

        // The first per-CPU chunk (setup_per_cpu_areas), in low memory.
        let percpu = crate::percpu::pcpu_setup_first_chunk(
            &mut self.memblock,
            &self.mem,
            &self.platform,
            page_size,
            self.nr_cpus,
            arch.max_lowmem.unwrap_or(u64::MAX),
        )?;

        let boot = BootSummary {
            physpages: self.memblock.memory.total_size() >> shift,
            freed_pages: 0,
            mem_map_bytes: map_bytes,
            pcp_bytes,
            bootmem_bytes: self.memblock.reserved_bytes(ReserveKind::Bootmem),
            totalhigh_pages: 0,
        };
        // The kernel page-table format (4K pages only: x86 has no other
        // size); a 32-bit machine with RAM above 4 GiB needs PAE.
        let kernel_fmt = (page_size == 4096).then(|| {
            let fmts = arch.paging_formats();
            if arch.bits == 32 && max_phys > 1 << 32 {
                fmts[1]
            } else {
                fmts[0]
            }
        });
        let lowmem_end = max_phys.min(arch.max_lowmem.unwrap_or(u64::MAX));
        let layout = match kernel_fmt {
            Some(fmt) => crate::arch::init::KernelLayout::new(arch, fmt, lowmem_end, self.nr_cpus),
            None => crate::arch::init::KernelLayout::new(
                arch,
                arch.paging_formats()[0],
                lowmem_end,
                self.nr_cpus,
            ),
        };
        let mut kmm = Kmm {
            platform: self.platform,
            mem: self.mem,
            arch,
            page_shift: shift,
            mem_map,
            mem_map_phys: map_phys,
            max_pfn,
            nodes,
            nr_node_ids: self.nr_nodes,
            nr_cpu_ids: self.nr_cpus,
            cpu_to_node: self.cpu_to_node,
            node_distance: self.node_distance,
            zonelists: [Zonelist::EMPTY; MAX_NUMNODES],
            preferred_zone: [[(0, 0); crate::mmzone::MAX_NR_ZONES]; MAX_NUMNODES],
            zone_index_of: {
                use crate::mmzone::ZoneType::*;
                [Dma, Dma32, Normal, HighMem, Movable].map(|z| arch.zone_index(z) as u8)
            },
            min_free_kbytes: AtomicU64::new(0),
            watermark_scale_factor: AtomicU64::new(10),
            memblock: SpinLock::new(Memblock::new()),
            boot,
            totalram_pages: AtomicU64::new(0),
            nr_pagetable: AtomicU64::new(0),
            events: MmEvents::default(),
            slab: crate::slab::SlabState::new(slab_boot.0, slab_boot.1),
            percpu,
            task_stack: crate::task_stack::StackState::new(),
            vm: crate::vmalloc::VmallocState::new(layout),
            mmap: crate::mmap::MmapState::new(),
            highmem: crate::highmem::HighmemState::new(),
            filemap: crate::filemap::FilemapState::new(),
            rmap: crate::rmap::RmapState::new(),
            memory: crate::memory::MemoryState::new(),
            fork: crate::fork::ForkState::new(),
        };

        // empty_zero_page: in the kernel image on Linux, from memblock here.
        let zp = self.memblock.alloc_range(
            page_size,
            page_size,
            0,
            lowmem_end,
            None,
            ReserveKind::KernelImage,
        )?;
        kmm.mem.fill(zp, page_size as usize, 0)?;
        kmm.memory.zero_pfn.store(zp >> shift, Relaxed);

        // init_mem_mapping(): swapper_pg_dir and the direct map, from memblock.
        if let Some(fmt) = kernel_fmt {
            let mut ram = [(0u64, 0u64); crate::memblock::MEMBLOCK_REGIONS];
            let mut nram = 0;
            for r in self.memblock.memory.regions() {
                let end = r.end().min(lowmem_end);
                if r.base < end && nram < ram.len() {
                    ram[nram] = (r.base, end);
                    nram += 1;
                }
            }
            let built = crate::arch::init::build_kernel_page_table(
                &kmm.mem,
                fmt,
                &mut self.memblock,
                arch,
                &layout,
                &ram[..nram],
            )?;
            kmm.vm.pgd = Some(crate::pgtable::PageTable {
                root: built.root,
                fmt,
            });
            kmm.vm.direct = built.direct;
            kmm.vm.boot_table_pages = built.table_pages;
        }

        // memblock_free_all(): every whole free page goes to the buddy lists.
        let mut freed = 0;
        let mut ranges = [(0u64, 0u64); crate::memblock::MEMBLOCK_REGIONS * 2];
        let mut n = 0;
        self.memblock.for_each_free_range(|s, e, _| {
            if n < ranges.len() {
                ranges[n] = (
                    align_up(s, page_size) >> shift,
                    align_down(e, page_size) >> shift,
                );
                n += 1;
            }
        });
        for &(s, e) in &ranges[..n] {
            if s < e {
                freed += kmm.free_boot_range(s, e);
            }
        }
        kmm.boot.freed_pages = freed;
        kmm.boot.totalhigh_pages = kmm
            .zones()
            .filter(|z| z.zone_type().is_highmem())
            .map(|z| z.managed_pages())
            .sum();
        *kmm.memblock.lock() = self.memblock;

        kmm.build_all_zonelists();
        kmm.init_per_zone_wmark_min();

        for node in kmm.nodes() {
            let total: u64 = node.zones().iter().map(|z| z.present_pages()).sum();
            if total == 0 {
                continue;
            }
            pr!(
                p_of(&kmm),
                "On node {} totalpages: {}",
                node.zones()[0].nid(),
                total
            );
            for z in node.zones().iter().filter(|z| z.is_populated()) {
                let used_for_memmap =
                    (z.spanned_pages() * STRUCT_PAGE_SIZE as u64).div_ceil(page_size);
                pr!(
                    p_of(&kmm),
                    "  {} zone: {} pages used for memmap, {} pages present, {} managed, LIFO batch:{}",
                    z.name(),
                    used_for_memmap,
                    z.present_pages(),
                    z.managed_pages(),
                    z.pcp(0).map_or(0, |c| c.batch())
                );
            }
        }
        let populated = kmm
            .nodes()
            .iter()
            .filter(|n| n.node_present_pages > 0)
            .count();
        pr!(
            p_of(&kmm),
            "Built {} zonelists, mobility grouping off.  Total pages: {}",
            populated,
            kmm.totalram_pages()
        );
        let secs = arch.kernel_sections_k;
        let physpages = kmm.boot.physpages;
        let reserved = physpages - kmm.totalram_pages();
        let high_k = kb(kmm.boot.totalhigh_pages);
        let (free_k, phys_k, res_k) = (kb(kmm.nr_free_pages()), kb(physpages), kb(reserved));
        if arch.max_lowmem.is_some() {
            pr!(
                p_of(&kmm),
                "Memory: {free_k}K/{phys_k}K available ({}K kernel code, {}K rwdata, {}K rodata, {}K init, {}K bss, {res_k}K reserved, 0K cma-reserved, {high_k}K highmem)",
                secs[0], secs[1], secs[2], secs[3], secs[4]
            );
        } else {
            pr!(
                p_of(&kmm),
                "Memory: {free_k}K/{phys_k}K available ({}K kernel code, {}K rwdata, {}K rodata, {}K init, {}K bss, {res_k}K reserved, 0K cma-reserved)",
                secs[0], secs[1], secs[2], secs[3], secs[4]
            );
        }
        if let Some(fmt) = kernel_fmt.filter(|_| arch.max_lowmem.is_some()) {
            let lay = kmm.vm.layout;
            let kb = |a: u64, b: u64| (b - a) >> 10;
            let mb = |a: u64, b: u64| (b - a) >> 20;
            let fix_end = lay.fixaddr_top;
            let pk_end = lay.pkmap_base + ((lay.last_pkmap as u64) << 12);
            pr!(p_of(&kmm), "virtual kernel memory layout:");
            pr!(
                p_of(&kmm),
                "    fixmap  : 0x{:08x} - 0x{:08x}   ({:4} kB)",
                lay.fixaddr_start,
                fix_end,
                kb(lay.fixaddr_start, fix_end)
            );
            pr!(
                p_of(&kmm),
                "    pkmap   : 0x{:08x} - 0x{:08x}   ({:4} kB)",
                lay.pkmap_base,
                pk_end,
                kb(lay.pkmap_base, pk_end)
            );
            pr!(
                p_of(&kmm),
                "    vmalloc : 0x{:08x} - 0x{:08x}   ({:4} MB)",
                lay.vmalloc_start,
                lay.vmalloc_end,
                mb(lay.vmalloc_start, lay.vmalloc_end)
            );
            pr!(
                p_of(&kmm),
                "    lowmem  : 0x{:08x} - 0x{:08x}   ({:4} MB)",
                lay.page_offset,
                lay.high_memory,
                mb(lay.page_offset, lay.high_memory)
            );
            pr!(p_of(&kmm), "kernel page table: {}", fmt.name());
        }
        kmm.kmem_cache_init()?;
        Ok(kmm)
    }
}

fn p_of<P: Platform>(k: &Kmm<P>) -> &P {
    &k.platform
}

impl<P: Platform> Kmm<P> {
    /// `memblock_free_late()`: gives memory from `alloc_bootmem*` back after
    /// boot. Whole pages go to the buddy allocator; the partial pages at either
    /// end stay reserved, as LDD3 warns.
    pub fn free_bootmem_late(&self, phys: u64, size: u64) -> Result<u64, KmmError> {
        let mut mb = self.memblock.lock();
        let covered = mb.reserved.regions().iter().any(|r| {
            r.kind == ReserveKind::Bootmem && r.base <= phys && phys.saturating_add(size) <= r.end()
        });
        if !covered {
            return Err(KmmError::Memblock {
                why: "free_bootmem of a range alloc_bootmem did not return",
                size,
            });
        }
        mb.phys_free(phys, size)?;
        drop(mb);
        let ps = self.page_size();
        let (s, e) = (
            align_up(phys, ps) >> self.page_shift,
            align_down(phys + size, ps) >> self.page_shift,
        );
        Ok(if s < e { self.free_boot_range(s, e) } else { 0 })
    }

    /// `__free_pages_core()` over a pfn range at boot: clears `PG_reserved`
    /// and frees the largest aligned blocks that stay inside one zone.
    /// Returns the number of pages freed.
    pub(crate) fn free_boot_range(&self, start: u64, end: u64) -> u64 {
        let map = self.mem_map();
        let mut pfn = start;
        let mut freed = 0;
        while pfn < end {
            let page = &map[pfn as usize];
            let zone = self.page_zone(page);
            let zend = zone.zone_end_pfn().min(end);
            if pfn < zone.zone_start_pfn() || pfn >= zend {
                // Not inside a zone span (cannot happen for memblock memory).
                pfn += 1;
                continue;
            }
            let mut order = (MAX_ORDER - 1) as u32;
            while order > 0 && (pfn & ((1 << order) - 1) != 0 || pfn + (1 << order) > zend) {
                order -= 1;
            }
            let n = 1u64 << order;
            for q in pfn..pfn + n {
                let pg = &map[q as usize];
                pg.set_state(PageFlags::empty(), PageFlags::RESERVED);
                pg.refcount.store(0, Relaxed);
            }
            {
                let mut fa = zone.free.lock();
                self.free_one_page(zone, &mut fa, pfn as u32, order);
            }
            zone.nr_free_pages.fetch_add(n, Relaxed);
            zone.managed_pages.fetch_add(n, Relaxed);
            self.totalram_pages.fetch_add(n, Relaxed);
            freed += n;
            pfn += n;
        }
        freed
    }

    /// `build_all_zonelists()`: for each node, every populated zone of every
    /// node, nearest node first, highest zone first within a node.
    pub(crate) fn build_all_zonelists(&mut self) {
        let nn = self.nr_node_ids;
        for nid in 0..nn {
            let mut order = [0usize; MAX_NUMNODES];
            for (i, o) in order.iter_mut().enumerate().take(nn) {
                *o = i;
            }
            let dist = self.node_distance[nid];
            order[..nn].sort_unstable_by_key(|&m| (m != nid, dist[m], m));
            let mut zl = Zonelist::EMPTY;
            for &m in &order[..nn] {
                for z in (0..self.nodes[m].nr_zones).rev() {
                    if self.nodes[m].zones[z].managed_pages() > 0 {
                        zl.zones[zl.len] = (m as u8, z as u8);
                        zl.len += 1;
                    }
                }
            }
            self.zonelists[nid] = zl;
            for high in 0..crate::mmzone::MAX_NR_ZONES {
                // An empty pick (no usable zone) points at an unpopulated
                // zone, whose missing per-CPU lists send the caller to the walk.
                self.preferred_zone[nid][high] = zl
                    .entries()
                    .iter()
                    .copied()
                    .find(|&(_, z)| z as usize <= high)
                    .unwrap_or((nid as u8, high as u8));
            }
        }
    }

    /// `init_per_zone_wmark_min()`: `min_free_kbytes` = 4·√(lowmem KiB),
    /// clamped to [128, 262144]; then watermarks, `lowmem_reserve` and the
    /// per-CPU list sizes.
    pub(crate) fn init_per_zone_wmark_min(&self) {
        let lowmem_pages: u64 = self
            .zones()
            .filter(|z| !z.zone_type().is_highmem())
            .map(|z| z.managed_pages())
            .sum();
        let lowmem_kbytes = lowmem_pages << (self.page_shift - 10);
        let v = isqrt(lowmem_kbytes * 16).clamp(128, 262_144);
        self.min_free_kbytes.store(v, Relaxed);
        self.setup_per_zone_wmarks();
        self.setup_per_zone_lowmem_reserve();
        self.setup_pcp_sizes();
    }

    /// `setup_per_zone_wmarks()`.
    pub(crate) fn setup_per_zone_wmarks(&self) {
        use crate::mmzone::ZoneType;
        let pages_min = self.min_free_kbytes() >> (self.page_shift - 10);
        let scale = self.watermark_scale_factor.load(Relaxed);
        let lowmem_pages: u64 = self
            .zones()
            .filter(|z| !z.zone_type().is_highmem() && z.zone_type() != ZoneType::Movable)
            .map(|z| z.managed_pages())
            .sum();
        for zone in self.zones() {
            let managed = zone.managed_pages();
            let mut tmp = (pages_min * managed).checked_div(lowmem_pages).unwrap_or(0);
            let min = if zone.zone_type().is_highmem() || zone.zone_type() == ZoneType::Movable {
                (managed / 1024).clamp(32, 128)
            } else {
                tmp
            };
            // mult_frac(managed, scale, 10000)
            let frac = managed / 10000 * scale + (managed % 10000) * scale / 10000;
            tmp = (tmp >> 2).max(frac);
            zone.watermark[0].store(min, Relaxed);
            zone.watermark[1].store(min + tmp, Relaxed);
            zone.watermark[2].store(min + 2 * tmp, Relaxed);
            zone.watermark[3].store(min + 3 * tmp, Relaxed);
        }
    }

    /// `setup_per_zone_lowmem_reserve()`: zone i keeps back
    /// (managed pages of zones i+1..=j) / ratio(i) from allocations whose
    /// highest usable zone is j.
    pub(crate) fn setup_per_zone_lowmem_reserve(&self) {
        for node in self.nodes() {
            let zones = node.zones();
            for (i, zone) in zones.iter().enumerate() {
                let ratio = zone.zone_type().lowmem_reserve_ratio();
                let mut managed = 0;
                zone.lowmem_reserve[i].store(0, Relaxed);
                for (j, upper) in zones.iter().enumerate().skip(i + 1) {
                    managed += upper.managed_pages();
                    let v = if ratio == 0 || zone.managed_pages() == 0 {
                        0
                    } else {
                        managed / ratio
                    };
                    zone.lowmem_reserve[j].store(v, Relaxed);
                }
            }
        }
    }

    /// `zone_batchsize()`, `zone_highsize()` and `calculate_normal_threshold()`
    /// for every populated zone.
    pub(crate) fn setup_pcp_sizes(&self) {
        let page_size = self.page_size();
        let online = self.nr_cpu_ids as u64;
        for zone in self.zones() {
            let managed = zone.managed_pages();
            let mut batch = (managed >> 10).min((1 << 20) / page_size) / 4;
            if batch < 1 {
                batch = 1;
            }
            let b = batch + batch / 2;
            let batch = ((1u64 << (63 - b.leading_zeros())) - 1).max(1);
            // zone_highsize(): split over the node's CPUs; a node without
            // CPUs splits over all online CPUs, as Linux does (dividing by 1
            // would let each CPU park the node's whole low watermark).
            let cpus = match self.nodes[zone.nid()].nr_cpus as u64 {
                0 => online.max(1),
                n => n,
            };
            let high_min = (zone.watermark(crate::mmzone::Watermark::Low) / cpus).max(batch * 4);
            let high_max = (managed / 8 / cpus).max(batch * 4);
            for pcp in zone.pcp.as_slice() {
                pcp.batch.store(batch as u32, Relaxed);
                pcp.high.store(high_min as u32, Relaxed);
                pcp.high_min.store(high_min as u32, Relaxed);
                pcp.high_max.store(high_max as u32, Relaxed);
            }
            let mem = managed >> (27 - self.page_shift);
            let fls = |x: u64| 64 - x.leading_zeros() as u64;
            let threshold = (2 * fls(online) * (1 + fls(mem))).min(125);
            zone.stat_threshold.store(threshold as u32, Relaxed);
        }
    }
}

/// `int_sqrt()`.
pub fn isqrt(x: u64) -> u64 {
    if x < 2 {
        return x;
    }
    // Newton's method from above converges to the floor of the root.
    let mut r = x;
    let mut y = r.div_ceil(2);
    while y < r {
        r = y;
        y = (r + x / r) / 2;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::isqrt;

    #[test]
    fn int_sqrt_is_floor() {
        for x in [0u64, 1, 2, 3, 4, 15, 16, 17, 1 << 40, u32::MAX as u64 * 16] {
            let r = isqrt(x);
            assert!(r * r <= x && (r + 1) * (r + 1) > x, "{x}");
        }
    }
}
