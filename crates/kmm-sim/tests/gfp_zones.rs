//! Which zone each GFP combination gets on each profile, the zonelist
//! fallback order when a zone runs low, and `lowmem_reserve` protection.

mod common;

use common::*;
use kmm::mmzone::{Watermark, Zone, ZoneType};
use kmm::{GfpFlags, KmmError};

const KERNEL: GfpFlags = GfpFlags::GFP_KERNEL;
const DMA: GfpFlags = GfpFlags::GFP_KERNEL.union(GfpFlags::GFP_DMA);
const DMA_ATOMIC: GfpFlags = GfpFlags::GFP_ATOMIC.union(GfpFlags::GFP_DMA);
const DMA32: GfpFlags = GfpFlags::GFP_KERNEL.union(GfpFlags::__GFP_DMA32);
const HIGHMEM: GfpFlags = GfpFlags::GFP_KERNEL.union(GfpFlags::__GFP_HIGHMEM);

/// The physical range a zone type covers on a profile.
fn zone_limits(arch: &str, zt: ZoneType) -> (u64, u64) {
    match (arch, zt) {
        (_, ZoneType::Dma) => (0, 16 * M),
        ("x86_64", ZoneType::Dma32) => (16 * M, 4 * G),
        ("x86_64", ZoneType::Normal) => (4 * G, u64::MAX),
        ("x86", ZoneType::Normal) => (16 * M, 896 * M),
        ("x86", ZoneType::HighMem) => (896 * M, u64::MAX),
        _ => panic!("{arch} has no zone {zt:?}"),
    }
}

/// Allocates with `gfp` at orders 0 and 3, checks the zone and the address
/// conversions of each block, frees them, and returns the zone type.
fn zone_of(m: &kmm_sim::Machine, gfp: GfpFlags) -> ZoneType {
    let k = m.kmm();
    let arch = k.arch().name;
    let mut seen = None;
    for order in [0, 3] {
        let page = k
            .alloc_pages(gfp, order)
            .unwrap_or_else(|e| panic!("{gfp:?} order {order}: {e}"));
        let zt = k.page_zone(page).zone_type();
        let phys = k.page_to_phys(page).unwrap();
        let (lo, hi) = zone_limits(arch, zt);
        assert!(
            phys >= lo && phys + (k.page_size() << order) <= hi,
            "{gfp:?}: {phys:#x} outside {zt:?}"
        );
        match k.page_address(page) {
            None => assert_eq!(zt, ZoneType::HighMem, "only highmem lacks an address"),
            Some(addr) => {
                assert_ne!(
                    zt,
                    ZoneType::HighMem,
                    "a highmem page has no kernel address"
                );
                assert_eq!(addr, k.arch().page_offset + phys);
                assert_eq!(k.__pa(addr).unwrap(), phys);
                assert!(std::ptr::eq(k.virt_to_page(addr).unwrap(), page));
            }
        }
        assert!(std::ptr::eq(
            k.pfn_to_page(k.page_to_pfn(page).unwrap()).unwrap(),
            page
        ));
        k.__free_pages(page, order).unwrap();
        if let Some(s) = seen {
            assert_eq!(s, zt, "order 0 and 3 disagree");
        }
        seen = Some(zt);
    }
    seen.unwrap()
}

fn assert_zones(m: &kmm_sim::Machine, table: &[(GfpFlags, ZoneType)]) {
    for &(gfp, want) in table {
        assert_eq!(zone_of(m, gfp), want, "{gfp:?} on {:?}", m.config());
    }
}

fn zone_types_in_zonelist(k: &K, nid: usize) -> Vec<(usize, ZoneType)> {
    k.zonelist(nid)
        .entries()
        .iter()
        .map(|&(n, z)| (n as usize, k.arch().zones[z as usize]))
        .collect()
}

#[test]
fn x86_512m_has_no_highmem() {
    let m = boot("x86", 512 * M, 1, 1);
    assert_zones(
        &m,
        &[
            (KERNEL, ZoneType::Normal),
            (GfpFlags::GFP_ATOMIC, ZoneType::Normal),
            (GfpFlags::GFP_NOWAIT, ZoneType::Normal),
            (GfpFlags::GFP_NOIO, ZoneType::Normal),
            (GfpFlags::GFP_NOFS, ZoneType::Normal),
            (GfpFlags::GFP_USER, ZoneType::Normal),
            (DMA, ZoneType::Dma),
            (DMA_ATOMIC, ZoneType::Dma),
            // No ZONE_DMA32 on 32-bit: __GFP_DMA32 means ZONE_NORMAL.
            (DMA32, ZoneType::Normal),
            // ZONE_HIGHMEM is empty: highmem-capable requests fall back.
            (GfpFlags::GFP_HIGHUSER, ZoneType::Normal),
            (HIGHMEM, ZoneType::Normal),
        ],
    );
    let k = m.kmm();
    assert_eq!(
        zone_types_in_zonelist(k, 0),
        [(0, ZoneType::Normal), (0, ZoneType::Dma)]
    );
    check_frames(k, &[]).unwrap();
}

#[test]
fn x86_2g_uses_highmem() {
    let m = boot("x86", 2 * G, 1, 1);
    assert_zones(
        &m,
        &[
            (KERNEL, ZoneType::Normal),
            (GfpFlags::GFP_USER, ZoneType::Normal),
            (DMA, ZoneType::Dma),
            (DMA32, ZoneType::Normal),
            (GfpFlags::GFP_HIGHUSER, ZoneType::HighMem),
            (HIGHMEM, ZoneType::HighMem),
        ],
    );
    let k = m.kmm();
    assert_eq!(
        zone_types_in_zonelist(k, 0),
        [
            (0, ZoneType::HighMem),
            (0, ZoneType::Normal),
            (0, ZoneType::Dma)
        ]
    );
    // High memory has no kernel address to return.
    let e = k.__get_free_pages(GfpFlags::GFP_HIGHUSER, 0).unwrap_err();
    assert!(matches!(e, KmmError::InvalidGfp { .. }), "{e:?}");
    let addr = k.__get_free_pages(KERNEL, 2).unwrap();
    assert!((0xC000_0000..0xC000_0000 + (896 << 20)).contains(&addr));
    k.free_pages(addr, 2).unwrap();
    check_frames(k, &[]).unwrap();
}

#[test]
fn x86_64_1g_has_no_normal_zone() {
    let m = boot("x86_64", G, 1, 1);
    assert_zones(
        &m,
        &[
            (DMA, ZoneType::Dma),
            (DMA_ATOMIC, ZoneType::Dma),
            (DMA32, ZoneType::Dma32),
            // ZONE_NORMAL is empty below 4 GiB.
            (KERNEL, ZoneType::Dma32),
            (GfpFlags::GFP_ATOMIC, ZoneType::Dma32),
            // No ZONE_HIGHMEM on 64-bit: __GFP_HIGHMEM means ZONE_NORMAL.
            (HIGHMEM, ZoneType::Dma32),
            (GfpFlags::GFP_HIGHUSER, ZoneType::Dma32),
        ],
    );
    let k = m.kmm();
    assert_eq!(
        zone_types_in_zonelist(k, 0),
        [(0, ZoneType::Dma32), (0, ZoneType::Dma)]
    );
    let addr = k.get_zeroed_page(KERNEL).unwrap();
    assert!((0xffff_8880_0000_0000..0xffff_8880_4000_0000).contains(&addr));
    k.free_page(addr).unwrap();
    check_frames(k, &[]).unwrap();
}

#[test]
fn x86_64_8g_has_all_zones() {
    let m = boot("x86_64", 8 * G, 1, 1);
    assert_zones(
        &m,
        &[
            (KERNEL, ZoneType::Normal),
            (GfpFlags::GFP_ATOMIC, ZoneType::Normal),
            (GfpFlags::GFP_USER, ZoneType::Normal),
            (DMA, ZoneType::Dma),
            (DMA32, ZoneType::Dma32),
            (HIGHMEM, ZoneType::Normal),
            (GfpFlags::GFP_HIGHUSER, ZoneType::Normal),
        ],
    );
    assert_eq!(
        zone_types_in_zonelist(m.kmm(), 0),
        [
            (0, ZoneType::Normal),
            (0, ZoneType::Dma32),
            (0, ZoneType::Dma)
        ]
    );
}

fn zone(k: &K, zt: ZoneType) -> &Zone {
    k.zones().find(|z| z.zone_type() == zt).unwrap()
}

/// x86_64 with 128 MiB: GFP_KERNEL allocations take ZONE_DMA32 until it is
/// down to its low watermark, then fall back to ZONE_DMA, but never take
/// ZONE_DMA below its `lowmem_reserve` protection; that memory stays for
/// GFP_DMA requests.
#[test]
fn fallback_order_and_lowmem_reserve_x86_64() {
    let m = boot("x86_64", 128 * M, 1, 1);
    let k = m.kmm();
    let boot_state = buddyinfo(k);
    let (dma, dma32) = (zone(k, ZoneType::Dma), zone(k, ZoneType::Dma32));
    let dma32_idx = dma32.idx();
    let protection = dma.lowmem_reserve(dma32_idx);
    assert!(protection > 0);
    let gfp = KERNEL | GfpFlags::__GFP_NORETRY | GfpFlags::__GFP_NOWARN;
    let mut held = Vec::new();
    let mut from_dma = 0;
    loop {
        let dma32_free_before = dma32.free_pages();
        let Ok(page) = k.alloc_page(gfp) else { break };
        let zt = k.page_zone(page).zone_type();
        if held.is_empty() {
            assert_eq!(
                zt,
                ZoneType::Dma32,
                "the first page comes from the top zone"
            );
        }
        if zt == ZoneType::Dma {
            from_dma += 1;
            assert!(
                dma32_free_before <= dma32.watermark(Watermark::Low),
                "fell back to DMA while DMA32 had {dma32_free_before} free pages"
            );
        }
        held.push(Alloc::of(k, page, 0, gfp));
    }
    assert!(from_dma > 0, "GFP_KERNEL never fell back to ZONE_DMA");
    // Protection: what is left of ZONE_DMA is at least its min watermark
    // plus the reserve (less one per-CPU batch taken after the last check).
    let batch = dma.pcp(0).unwrap().batch() as u64;
    assert!(
        dma.free_pages() + batch > dma.watermark(Watermark::Min) + protection,
        "ZONE_DMA went down to {} free pages (min {}, protection {protection})",
        dma.free_pages(),
        dma.watermark(Watermark::Min)
    );
    // ... and that memory is there for GFP_DMA.
    let p = k.alloc_page(DMA).expect("GFP_DMA still succeeds");
    assert_eq!(k.page_zone(p).zone_type(), ZoneType::Dma);
    held.push(Alloc::of(k, p, 0, DMA));
    check_frames(k, &held).unwrap();
    free_all_and_check_coalesced(k, &mut held, &boot_state).unwrap();
}

/// x86 with 2 GiB: GFP_HIGHUSER fills ZONE_HIGHMEM first, then the lower
/// zones down to their protection against highmem-capable requests, which
/// leaves ZONE_NORMAL for GFP_KERNEL.
#[test]
fn highmem_fallback_keeps_lowmem_reserve_x86() {
    let m = boot("x86", 2 * G, 1, 1);
    let k = m.kmm();
    let boot_state = buddyinfo(k);
    let high = zone(k, ZoneType::HighMem);
    let normal = zone(k, ZoneType::Normal);
    let dma = zone(k, ZoneType::Dma);
    let hi = high.idx();
    assert!(normal.lowmem_reserve(hi) > 0 && dma.lowmem_reserve(hi) > 0);
    let gfp = GfpFlags::GFP_HIGHUSER | GfpFlags::__GFP_NORETRY;
    let first = k.alloc_page(gfp).unwrap();
    assert_eq!(k.page_zone(first).zone_type(), ZoneType::HighMem);
    let mut held = vec![Alloc::of(k, first, 0, gfp)];
    held.extend(exhaust(k, gfp, 10));
    for z in [normal, dma] {
        let batch = z.pcp(0).unwrap().batch() as u64;
        assert!(
            z.free_pages() + batch > z.watermark(Watermark::Min) + z.lowmem_reserve(hi),
            "{} went down to {} free pages",
            z.name(),
            z.free_pages()
        );
    }
    assert!(high.free_pages() < high.watermark(Watermark::Low));
    let p = k.alloc_page(KERNEL).expect("GFP_KERNEL still succeeds");
    assert_eq!(k.page_zone(p).zone_type(), ZoneType::Normal);
    held.push(Alloc::of(k, p, 0, KERNEL));
    check_frames(k, &held).unwrap();
    free_all_and_check_coalesced(k, &mut held, &boot_state).unwrap();
}
