//! Boot: bootmem allocation and freeing, the boot log, big machines, page
//! sizes, NUMA nodes with fallback by distance, and machines that must not boot.

mod common;

use common::*;
use kmm::memblock::ReserveKind;
use kmm::mm_init::EarlyBoot;
use kmm::mmzone::{Watermark, ZoneType};
use kmm::{GfpFlags, KmmError};
use kmm_sim::{Machine, SimError, SimPlatform};

const KERNEL: GfpFlags = GfpFlags::GFP_KERNEL;

// The bound on `struct page`: at most 64 bytes.
const _: () = assert!(kmm::mm_types::STRUCT_PAGE_SIZE <= 64);

/// One `alloc_bootmem*` call: virtual and physical address and size.
#[derive(Clone, Copy, Debug, Default)]
struct Early {
    virt: u64,
    phys: u64,
    size: u64,
}

fn early(eb: &EarlyBoot<SimPlatform>, virt: u64, size: u64) -> Early {
    let phys = eb.__pa(virt).expect("bootmem is in the direct map");
    assert_eq!(virt, eb.arch().page_offset + phys);
    assert!(
        eb.memblock().reserved.regions().iter().any(|r| {
            r.kind == ReserveKind::Bootmem && r.base <= phys && phys + size <= r.end()
        }),
        "{phys:#x}+{size:#x} is not reserved as bootmem"
    );
    Early { virt, phys, size }
}

/// After boot: the range reads as zeros, its pages are reserved and
/// memblock still lists it.
fn still_reserved(m: &Machine, e: Early) {
    let k = m.kmm();
    let mut buf = vec![0xffu8; e.size as usize];
    k.phys().read(e.phys, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "{e:?} is not zeroed");
    for pfn in k.phys_pfn(e.phys)..=k.phys_pfn(e.phys + e.size - 1) {
        assert!(
            k.pfn_to_page(pfn).unwrap().is_reserved(),
            "{e:?} pfn {pfn:#x}"
        );
    }
    assert!(k.memblock().is_region_reserved(e.phys, e.size));
    assert!(k.virt_to_page(e.virt).unwrap().is_reserved());
}

/// `alloc_bootmem` is cache-line aligned, `_pages` page aligned, `_low`
/// below 4 GiB on x86_64 (`ARCH_LOW_ADDRESS_LIMIT`); all are zeroed,
/// reserved in memblock, and stay reserved after `mem_init`.
#[test]
fn bootmem_x86_64() {
    let mut got = [Early::default(); 4];
    let m = Machine::boot_with(config("x86_64", 8 * G, 1, 1), |eb| {
        let ps = eb.page_size();
        let v = eb.alloc_bootmem(100)?;
        got[0] = early(eb, v, 100);
        let v = eb.alloc_bootmem_pages(3 * ps + 1)?;
        got[1] = early(eb, v, 3 * ps + 1);
        let v = eb.alloc_bootmem_low(1000)?;
        got[2] = early(eb, v, 1000);
        let v = eb.alloc_bootmem_low_pages(2 * ps)?;
        got[3] = early(eb, v, 2 * ps);
        Ok(())
    })
    .unwrap();
    let [a, b, c, d] = got;
    assert_eq!(a.phys % 64, 0, "SMP_CACHE_BYTES");
    assert_eq!(c.phys % 64, 0);
    assert_eq!(b.phys % 4096, 0);
    assert_eq!(d.phys % 4096, 0);
    assert!(
        a.phys >= 4 * G && b.phys >= 4 * G,
        "top-down, from high memory"
    );
    assert!(c.phys + c.size <= 4 * G && d.phys + d.size <= 4 * G, "low");
    for e in got {
        still_reserved(&m, e);
    }
    let k = m.kmm();
    assert!(k.boot_summary().bootmem_bytes >= got.iter().map(|e| e.size).sum());
    check_frames(k, &[]).unwrap();
}

/// On 32-bit x86 all boot memory is low memory (below 896 MiB) and the
/// `_low` variants stay below 16 MiB, where ISA DMA reaches.
#[test]
fn bootmem_x86() {
    let mut got = [Early::default(); 3];
    let m = Machine::boot_with(config("x86", 2 * G, 1, 1), |eb| {
        let v = eb.alloc_bootmem(4000)?;
        got[0] = early(eb, v, 4000);
        let v = eb.alloc_bootmem_low(100)?;
        got[1] = early(eb, v, 100);
        let v = eb.alloc_bootmem_low_pages(4 * eb.page_size())?;
        got[2] = early(eb, v, 4 * eb.page_size());
        Ok(())
    })
    .unwrap();
    assert!(got[0].phys + got[0].size <= 896 * M);
    assert!(got[0].virt >= 0xC000_0000);
    for e in &got[1..] {
        assert!(e.phys + e.size <= 16 * M, "{e:?}");
    }
    for e in got {
        still_reserved(&m, e);
    }
    check_frames(m.kmm(), &[]).unwrap();
}

/// `free_bootmem` before `mem_init`: whole pages reach the buddy allocator,
/// a partly freed page does not; freeing what `alloc_bootmem` never
/// returned is an error. `free_bootmem_late` after boot does the same.
///
/// The ranges are taken below 16 MiB on x86 (`alloc_bootmem_low_pages`),
/// where `mem_init`'s own top-down memblock allocations (`mem_map`, per-CPU
/// lists) will not reuse what was freed.
#[test]
fn free_bootmem() {
    let mut got = [Early::default(); 5];
    let mut errors = Vec::new();
    let m = Machine::boot_with(config("x86", 512 * M, 1, 1), |eb| {
        let ps = eb.page_size();
        for (i, size) in [4 * ps, 2 * ps, ps, 16 * ps, 2 * ps]
            .into_iter()
            .enumerate()
        {
            let v = eb.alloc_bootmem_low_pages(size)?;
            got[i] = early(eb, v, size);
        }
        let [p, q, r, ..] = got;
        eb.free_bootmem(p.phys, p.size)?;
        eb.free_bootmem(q.phys, ps + 100)?;
        errors.push(
            eb.free_bootmem(p.phys, p.size)
                .map(|_| "double free_bootmem"),
        );
        let image = eb.arch().kernel_start;
        errors.push(eb.free_bootmem(image, ps).map(|_| "the kernel image"));
        errors.push(
            eb.free_bootmem(0x1000_0000, ps)
                .map(|_| "memory never allocated"),
        );
        errors.push(
            eb.free_bootmem(r.phys, 2 * ps)
                .map(|_| "more than was allocated"),
        );
        Ok(())
    })
    .unwrap();
    for e in errors {
        assert!(matches!(e, Err(KmmError::Memblock { .. })), "{e:?}");
    }
    let k = m.kmm();
    let ps = k.page_size();
    let [p, q, r, s, t] = got;
    let page = |phys: u64| k.phys_to_page(phys).unwrap();
    for i in 0..4 {
        assert!(!page(p.phys + i * ps).is_reserved(), "freed whole pages");
    }
    assert!(!page(q.phys).is_reserved(), "the whole first page of q");
    assert!(
        page(q.phys + ps).is_reserved(),
        "the partly freed page stays"
    );
    still_reserved(&m, r);
    check_frames(k, &[]).unwrap();

    // After boot.
    let (free0, total0) = (k.nr_free_pages(), k.totalram_pages());
    assert_eq!(k.free_bootmem_late(s.phys, s.size).unwrap(), 16);
    assert_eq!(k.nr_free_pages(), free0 + 16);
    assert_eq!(k.totalram_pages(), total0 + 16);
    for i in 0..16 {
        assert!(!page(s.phys + i * ps).is_reserved());
    }
    assert_eq!(
        k.free_bootmem_late(t.phys, ps / 2).unwrap(),
        0,
        "half a page"
    );
    assert!(page(t.phys).is_reserved());
    assert_eq!(k.nr_free_pages(), free0 + 16);
    assert!(k.free_bootmem_late(s.phys, s.size).is_err(), "twice");
    assert!(
        k.free_bootmem_late(0x1000_0000, ps).is_err(),
        "never allocated"
    );
    // Not reserved and accounted on the free lists: ordinary free pages.
    check_frames(k, &[]).unwrap();
    let boot_state = buddyinfo(k);
    let dma = KERNEL | GfpFlags::GFP_DMA | GfpFlags::__GFP_NORETRY;
    let mut held = exhaust(k, dma, 10);
    check_frames(k, &held).unwrap();
    free_all_and_check_coalesced(k, &mut held, &boot_state).unwrap();
}

/// The boot log has Linux's lines, and its numbers agree with the machine.
#[test]
fn boot_log() {
    let m = Machine::boot(config("x86_64", 512 * M, 2, 1)).unwrap();
    let log = m.take_log();
    let k = m.kmm();
    for line in [
        "BIOS-provided physical RAM map:",
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
        "BIOS-e820: [mem 0x00000000000f0000-0x00000000000fffff] reserved",
        "Zone ranges:",
        "  DMA      [mem 0x0000000000001000-0x0000000000ffffff]",
        "  DMA32    [mem 0x0000000001000000-",
        "  Normal   empty",
        "Early memory node ranges",
        "struct pages of 40 bytes",
        "Built 1 zonelists",
    ] {
        assert!(logged(&log, line), "no {line:?} in {log:#?}");
    }
    // "Memory: 487660K/523764K available (...)"
    let mem = log.iter().find(|l| l.starts_with("Memory: ")).unwrap();
    let (avail, rest) = mem["Memory: ".len()..].split_once("K/").unwrap();
    let phys = rest.split_once('K').unwrap().0;
    assert_eq!(avail.parse::<u64>().unwrap(), k.nr_free_pages() * 4);
    assert_eq!(phys.parse::<u64>().unwrap(), k.boot_summary().physpages * 4);
    // The first page, the legacy hole and the kernel image are reserved.
    for pfn in [0, 0x9f, 0xa0, 0xc0, 0xff, 0x1000] {
        assert!(k.pfn_to_page(pfn).unwrap().is_reserved(), "pfn {pfn:#x}");
    }
    assert!(!k.pfn_to_page(0x100).unwrap().is_reserved());
    let mb = k.memblock();
    assert!(mb
        .reserved
        .regions()
        .iter()
        .any(|r| r.kind == ReserveKind::KernelImage && r.base == 16 * M));
    assert_eq!(
        mb.reserved_bytes(ReserveKind::MemMap),
        k.boot_summary().mem_map_bytes
    );
}

/// A 64 GiB machine boots on a small host: RAM is committed lazily, so only
/// what boot writes (mostly `mem_map`) becomes resident.
#[test]
fn sixty_four_gib_machine() {
    let m = boot("x86_64", 64 * G, 2, 1);
    let k = m.kmm();
    assert!(k.totalram_pages() > 16_000_000);
    let resident = m.resident_bytes();
    assert!(
        resident < 2 * G,
        "{} MiB resident for a 64 GiB machine",
        resident >> 20
    );
    let normal = k
        .zones()
        .find(|z| z.zone_type() == ZoneType::Normal)
        .unwrap();
    assert!(normal.free_area_counts()[10] > 15_000);
    let p = k.alloc_pages(KERNEL, 10).unwrap();
    assert!(k.page_to_phys(p).unwrap() >= 4 * G);
    let a = k.get_zeroed_page(KERNEL).unwrap();
    k.free_page(a).unwrap();
    k.__free_pages(p, 10).unwrap();
}

/// 8, 16 and 64 KiB pages: blocks are aligned to `PAGE_SIZE << order`,
/// everything coalesces back, and `mem_map` shrinks with the page count.
#[test]
fn page_sizes() {
    let mut map_bytes = Vec::new();
    for (arch, ps) in [
        ("x86_64", 4096),
        ("x86_64", 8192),
        ("x86_64", 16384),
        ("x86_64", 65536),
        ("x86", 16384),
    ] {
        let mut cfg = config(arch, 512 * M, 2, 1);
        cfg.page_size = ps;
        let m = boot_cfg(cfg);
        let k = m.kmm();
        assert_eq!(k.page_size(), ps);
        assert_eq!(k.get_order(ps), 0);
        assert_eq!(k.get_order(ps + 1), 1);
        let boot_state = buddyinfo(k);
        let mut held = Vec::new();
        for order in 0..=10 {
            for gfp in [KERNEL, KERNEL | GfpFlags::GFP_DMA] {
                let Ok(p) = k.alloc_pages(gfp | GfpFlags::__GFP_NOWARN, order) else {
                    assert!(gfp.contains(GfpFlags::GFP_DMA), "{arch} {ps} order {order}");
                    continue;
                };
                let phys = k.page_to_phys(p).unwrap();
                assert_eq!(phys % (ps << order), 0, "{arch} {ps} order {order}");
                held.push(Alloc::of(k, p, order, gfp));
            }
        }
        check_frames(k, &held).unwrap();
        free_all_and_check_coalesced(k, &mut held, &boot_state).unwrap();
        if arch == "x86_64" {
            map_bytes.push((ps, k.boot_summary().mem_map_bytes, k.max_pfn()));
        }
    }
    // LKD's arithmetic: twice the page size, half the descriptors.
    let (_, four_k, pfns) = map_bytes[0];
    assert_eq!(four_k, (pfns * 40).next_multiple_of(4096));
    let (_, eight_k, _) = map_bytes[1];
    assert!(four_k.abs_diff(2 * eight_k) <= 8192, "{map_bytes:?}");
}

/// Memory is split over 2 to 8 nodes; each node's zonelist starts with its
/// own zones and falls back to the others by distance; allocations land on
/// the requested node and, by default, on the running CPU's node.
#[test]
fn numa_nodes_and_zonelists() {
    for n in 2..=8 {
        let m = boot("x86_64", 512 * M, n, n);
        let k = m.kmm();
        assert_eq!(k.nr_node_ids(), n);
        let mut prev_end = 0;
        let mut present = 0;
        for nid in 0..n {
            let node = k.node(nid).unwrap();
            assert!(
                node.node_present_pages() > 0,
                "{n} nodes: node {nid} is empty"
            );
            assert!(node.node_start_pfn() >= prev_end, "nodes overlap");
            prev_end = node.node_start_pfn() + node.node_spanned_pages();
            present += node.node_present_pages();
            for pfn in node.node_start_pfn()..prev_end {
                let p = k.pfn_to_page(pfn).unwrap();
                assert!(p.is_reserved() || p.nid() == nid, "pfn {pfn:#x}");
            }
        }
        assert_eq!(present, k.zones().map(|z| z.present_pages()).sum::<u64>());
        let populated: Vec<(u8, u8)> = k
            .zones()
            .filter(|z| z.managed_pages() > 0)
            .map(|z| (z.nid() as u8, z.idx() as u8))
            .collect();
        for nid in 0..n {
            let zl = k.zonelist(nid).entries();
            assert_eq!(zl[0].0 as usize, nid, "own node first");
            let mut sorted = zl.to_vec();
            sorted.sort();
            assert_eq!(sorted, populated, "every populated zone once");
            let dist: Vec<u8> = zl
                .iter()
                .map(|&(m, _)| k.node_distance(nid, m as usize))
                .collect();
            assert!(dist.windows(2).all(|w| w[0] <= w[1]), "{dist:?}");
            for w in zl.windows(2) {
                if w[0].0 == w[1].0 {
                    assert!(w[0].1 > w[1].1, "highest zone first within a node");
                }
            }
            let p = k.alloc_pages_node(nid, KERNEL, 0).unwrap();
            assert_eq!(p.nid(), nid);
            k.__free_page(p).unwrap();
            let cpu = (0..n).find(|&c| k.cpu_to_node(c) == nid).unwrap();
            let on_cpu = m
                .cpus()
                .run_on_cpu(cpu, || {
                    let p = k.alloc_page(KERNEL).unwrap();
                    let nid = p.nid();
                    k.__free_page(p).unwrap();
                    nid
                })
                .unwrap();
            assert_eq!(on_cpu, nid, "alloc_page() prefers the running CPU's node");
        }
        check_frames(k, &[]).unwrap();
    }
}

/// `alloc_pages_node(1, ..)` takes node 1's memory down to its low
/// watermark, then node 0's, counting each such page as a NUMA miss.
#[test]
fn node_fallback() {
    let m = boot("x86_64", 512 * M, 2, 2);
    let k = m.kmm();
    let boot_state = buddyinfo(k);
    let gfp = KERNEL | GfpFlags::__GFP_NORETRY | GfpFlags::__GFP_NOWARN;
    let node1: Vec<_> = k.node(1).unwrap().zones().iter().collect();
    let misses = || -> u64 {
        k.node(0)
            .unwrap()
            .zones()
            .iter()
            .map(|z| z.event_counts().numa_miss)
            .sum()
    };
    assert_eq!(misses(), 0);
    let mut held = Vec::new();
    let first_foreign = loop {
        let p = k
            .alloc_pages_node(1, gfp, 0)
            .expect("node 0 still has memory");
        held.push(Alloc::of(k, p, 0, gfp));
        if p.nid() != 1 {
            break p.nid();
        }
    };
    assert_eq!(first_foreign, 0);
    assert!(held.len() > 50_000, "node 1 gave only {} pages", held.len());
    for z in node1.iter().filter(|z| z.managed_pages() > 0) {
        assert!(
            z.free_pages() <= z.watermark(Watermark::Low),
            "{}",
            z.name()
        );
    }
    for _ in 0..100 {
        let p = k.alloc_pages_node(1, gfp, 0).unwrap();
        assert_eq!(p.nid(), 0);
        held.push(Alloc::of(k, p, 0, gfp));
    }
    assert_eq!(misses(), 101);
    check_frames(k, &held).unwrap();
    free_all_and_check_coalesced(k, &mut held, &boot_state).unwrap();
}

fn refused(cfg: kmm_sim::MachineConfig, what: &str) {
    match Machine::boot(cfg) {
        Ok(_) => panic!("a machine with {what} booted"),
        Err(e) => {
            assert!(
                matches!(
                    e,
                    SimError::Config(_) | SimError::Kmm(KmmError::BadMachine { .. })
                ),
                "{what}: {e:?}"
            );
            assert!(!e.to_string().is_empty());
        }
    }
}

#[test]
fn bad_machines_do_not_boot() {
    refused(config("x86_64", G, 0, 1), "0 CPUs");
    refused(config("x86_64", G, 65, 1), "65 CPUs");
    refused(config("x86_64", G, 2, 0), "0 nodes");
    refused(config("x86_64", G, 2, 9), "9 nodes");
    refused(config("x86_64", M, 1, 1), "1M of RAM");
    refused(config("x86_64", 0, 1, 1), "no RAM");
    refused(config("x86", 65 * G, 1, 1), "more RAM than PAE addresses");
    refused(config("x86_64", 64 * M, 1, 8), "8 nodes in 64M");
    for ps in [0, 3072, 32 << 10, 2 << 20] {
        let mut cfg = config("x86_64", G, 1, 1);
        cfg.page_size = ps;
        refused(cfg, &format!("{ps}-byte pages"));
    }
    // The limits themselves boot.
    boot("x86_64", 128 * M, 64, 1);
    boot("x86_64", 512 * M, 8, 8);
}
