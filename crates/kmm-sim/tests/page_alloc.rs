//! The page-level API, external fragmentation, and a multi-CPU stress run
//! with every allocation stamped and checked.

mod common;

use common::*;
use kmm::{GfpFlags, KmmError, MAX_ORDER};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

const KERNEL: GfpFlags = GfpFlags::GFP_KERNEL;
const NOWARN: GfpFlags = GfpFlags::__GFP_NOWARN;

#[test]
fn get_order_and_address_conversions() {
    let m = boot("x86_64", 128 * M, 1, 1);
    let k = m.kmm();
    for (size, order) in [
        (1, 0),
        (4096, 0),
        (4097, 1),
        (8192, 1),
        (8193, 2),
        (16384, 2),
        (4 << 20, 10),
        ((4 << 20) + 1, 11),
    ] {
        assert_eq!(k.get_order(size), order, "get_order({size})");
    }
    assert!(!k.pfn_valid(k.max_pfn()));
    assert!(k.pfn_valid(k.max_pfn() - 1));
    assert!(matches!(
        k.pfn_to_page(k.max_pfn()),
        Err(KmmError::InvalidAddress { .. })
    ));
    let addr = k.__get_free_pages(KERNEL, 3).unwrap();
    let page = k.virt_to_page(addr).unwrap();
    let pfn = k.page_to_pfn(page).unwrap();
    assert_eq!(pfn % 8, 0, "an order-3 block is 8-page aligned");
    assert_eq!(k.page_to_phys(page).unwrap(), k.pfn_phys(pfn));
    assert_eq!(k.phys_pfn(k.pfn_phys(pfn)), pfn);
    assert_eq!(k.__va(k.pfn_phys(pfn)).unwrap(), addr);
    assert_eq!(k.phys_to_virt(k.pfn_phys(pfn)).unwrap(), addr);
    assert_eq!(k.virt_to_phys(addr).unwrap(), k.pfn_phys(pfn));
    assert_eq!(k.page_address(page), Some(addr));
    assert!(std::ptr::eq(k.phys_to_page(k.pfn_phys(pfn)).unwrap(), page));
    assert_eq!(page.alloc_order(), Some(3));
    assert_eq!(page.page_count(), 1);
    k.free_pages(addr, 3).unwrap();
    // free_pages(0) is ignored, as in Linux.
    k.free_pages(0, 3).unwrap();
    let a = k.__get_free_page(KERNEL).unwrap();
    k.free_page(a).unwrap();
    let p = k.alloc_page(KERNEL).unwrap();
    k.__free_page(p).unwrap();
    check_frames(k, &[]).unwrap();
}

/// get_page/put_page: only the last reference frees.
#[test]
fn references() {
    let m = boot("x86_64", 128 * M, 1, 1);
    let k = m.kmm();
    let gfp = KERNEL;
    let p = k.alloc_pages(gfp, 2).unwrap();
    let a = Alloc::of(k, p, 2, gfp);
    k.get_page(p).unwrap();
    assert_eq!(p.page_count(), 2);
    k.__free_pages(p, 2).unwrap();
    assert_eq!(p.page_count(), 1);
    check_frames(k, &[a]).unwrap();
    k.put_page(p).unwrap();
    check_frames(k, &[]).unwrap();
    // The reference count cannot go below zero.
    assert!(matches!(k.put_page(p), Err(KmmError::BadPageState { .. })));
    assert!(matches!(k.get_page(p), Err(KmmError::BadPageState { .. })));
    check_frames(k, &[]).unwrap();
}

/// `pgalloc_*`, `pgfree` and `numa_hit` count pages and allocations.
#[test]
fn vmstat_counts_pages() {
    let m = boot("x86_64", 128 * M, 1, 1);
    let k = m.kmm();
    let counters = || {
        let text = kmm_sim::procfs::read(&m, "/proc/vmstat").unwrap();
        let get = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/vmstat:\n{text}"))
        };
        (
            get("pgalloc_dma") + get("pgalloc_dma32") + get("pgalloc_normal"),
            get("pgfree"),
            get("numa_hit"),
            get("nr_free_pages"),
        )
    };
    let (a0, f0, h0, free0) = counters();
    assert_eq!(free0, k.nr_free_pages());
    let orders = [0, 0, 3, 5, 0, 1];
    let pages: u64 = orders.iter().map(|o| 1u64 << o).sum();
    let held: Vec<_> = orders
        .iter()
        .map(|&o| Alloc::of(k, k.alloc_pages(KERNEL, o).unwrap(), o, KERNEL))
        .collect();
    let (a1, _, h1, _) = counters();
    assert_eq!(a1 - a0, pages, "pgalloc counts pages");
    assert_eq!(h1 - h0, orders.len() as u64, "numa_hit counts allocations");
    free_all(k, held);
    let (_, f1, _, _) = counters();
    assert_eq!(f1 - f0, pages, "pgfree counts pages");
}

/// External fragmentation: with every other page of memory allocated, half
/// of RAM is free yet not one order-3 block exists; freeing the four pages
/// between four free ones makes one.
#[test]
fn external_fragmentation() {
    let m = boot("x86_64", 128 * M, 1, 1);
    let k = m.kmm();
    let boot_state = buddyinfo(k);
    let gfp = KERNEL | GfpFlags::__GFP_NORETRY;
    // Everything, as order-0 pages.
    let mut held = exhaust(k, gfp, 0);
    held.sort_by_key(|a| a.pfn);
    let (even, mut odd): (Vec<Alloc>, Vec<Alloc>) = held.into_iter().partition(|a| a.pfn % 2 == 0);
    let freed: HashSet<u64> = even.iter().map(|a| a.pfn).collect();
    free_all(k, even);
    k.drain_all_pages();
    // The few blocks that were free below the watermark when the allocator
    // stopped are taken at their own order, so only the holes remain.
    let mut pinned = Vec::new();
    loop {
        let next = k.zones().find_map(|z| {
            let counts = z.free_area_counts();
            (1..MAX_ORDER)
                .rev()
                .find(|&o| counts[o] > 0)
                .map(|o| (z, o))
        });
        let Some((z, o)) = next else { break };
        let g = match z.zone_type() {
            kmm::ZoneType::Dma => gfp | GfpFlags::GFP_DMA | NOWARN,
            _ => gfp | NOWARN,
        };
        let p = k
            .alloc_pages(g, o as u32)
            .expect("the leftover block can be taken");
        pinned.push(Alloc::of(k, p, o as u32, g));
    }
    let free = k.nr_free_pages();
    assert!(free > 10_000, "only {free} pages free");
    for (_, _, counts) in buddyinfo(k) {
        assert!(counts[1..].iter().all(|&n| n == 0), "{counts:?}");
    }
    let all: Vec<Alloc> = odd.iter().chain(&pinned).copied().collect();
    check_frames(k, &all).unwrap();

    let _ = m.take_log();
    let e = k.alloc_pages(gfp, 3).err().expect("order 3 fails");
    assert!(matches!(e, KmmError::NoMemory { order: 3, .. }), "{e:?}");
    assert!(k.alloc_pages(gfp | NOWARN, 1).is_err(), "not even order 1");
    let log = m.take_log();
    assert!(
        logged(&log, "page allocation failure: order:3, mode:0x"),
        "{log:#?}"
    );
    assert!(logged(&log, "Mem-Info:"));
    assert!(
        !logged(&log, "order:1,"),
        "__GFP_NOWARN silences the warning"
    );

    // Free the odd pages of one aligned group of eight whose even pages are
    // free: the group merges into one order-3 block (the allocator's slow
    // path drains the per-CPU list they land on first).
    let group = odd
        .iter()
        .map(|a| a.pfn & !7)
        .find(|&b| {
            (0..8).all(|i| {
                let pfn = b + i;
                if i % 2 == 0 {
                    freed.contains(&pfn)
                } else {
                    odd.iter().any(|a| a.pfn == pfn)
                }
            })
        })
        .expect("a group of eight");
    let (mine, rest): (Vec<Alloc>, Vec<Alloc>) = odd.into_iter().partition(|a| a.pfn & !7 == group);
    odd = rest;
    assert_eq!(mine.len(), 4);
    free_all(k, mine);
    let p = k
        .alloc_pages(gfp, 3)
        .expect("order 3 succeeds after the frees");
    assert_eq!(k.page_to_pfn(p).unwrap(), group);
    odd.push(Alloc::of(k, p, 3, gfp));
    odd.extend(pinned);
    check_frames(k, &odd).unwrap();
    free_all_and_check_coalesced(k, &mut odd, &boot_state).unwrap();
}

/// A block being held by one CPU, to be checked and freed by any.
#[derive(Clone, Copy, Debug)]
struct Stamped {
    pfn: u64,
    order: u32,
    cpu: usize,
    seq: u64,
}

/// The 64-bit word `i` of a block stamped by `(cpu, seq)`: unique to the
/// allocation and to the position inside it.
fn word(cpu: usize, seq: u64, i: u64) -> u64 {
    ((cpu as u64) << 56) | (seq << 24) | (i & 0xff_ffff)
}

fn stamp(k: &K, s: &Stamped) {
    let words = (k.page_size() << s.order) / 8;
    let mut buf = Vec::with_capacity(words as usize * 8);
    for i in 0..words {
        buf.extend_from_slice(&word(s.cpu, s.seq, i).to_le_bytes());
    }
    k.phys().write(k.pfn_phys(s.pfn), &buf).unwrap();
}

fn verify(k: &K, s: &Stamped) {
    let mut buf = vec![0u8; (k.page_size() << s.order) as usize];
    k.phys().read(k.pfn_phys(s.pfn), &mut buf).unwrap();
    for (i, c) in buf.chunks_exact(8).enumerate() {
        let got = u64::from_le_bytes(c.try_into().unwrap());
        let want = word(s.cpu, s.seq, i as u64);
        assert_eq!(
            got,
            want,
            "{s:?}: word {i} is {got:#x} (cpu {} seq {}), want {want:#x}",
            got >> 56,
            (got >> 24) & 0xffff_ffff
        );
    }
}

/// Four CPUs allocate and free concurrently with random orders and masks.
/// Every allocation is stamped with a pattern unique to (cpu, sequence) and
/// checked when freed; a quarter of the blocks are put in another CPU's inbox
/// and freed there. At the end everything coalesces back.
#[test]
fn multi_cpu_stress() {
    stress(256 * M, 1, 12_000, 48, false);
}

/// The same with four CPUs on two nodes of a small machine, holding enough
/// that allocations keep failing: slow paths, reclaim retries and
/// `drain_all_pages` run while other CPUs use their per-CPU lists.
#[test]
fn multi_cpu_stress_under_pressure() {
    stress(128 * M, 2, 3_000, 400, true);
}

fn stress(ram: u64, nodes: usize, steps: u64, max_held: usize, pressure: bool) {
    const CPUS: usize = 4;
    let m = boot("x86_64", ram, CPUS, nodes);
    let k = m.kmm();
    let boot_state = buddyinfo(k);
    let boot_free = k.nr_free_pages();
    let inbox: Vec<Mutex<Vec<Stamped>>> = (0..CPUS).map(|_| Mutex::new(Vec::new())).collect();
    let (allocs, cross, fails) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let masks = [
        KERNEL,
        KERNEL,
        GfpFlags::GFP_ATOMIC,
        GfpFlags::GFP_NOWAIT,
        GfpFlags::GFP_NOFS,
        KERNEL | GfpFlags::__GFP_COLD,
        KERNEL | GfpFlags::__GFP_ZERO,
        KERNEL | GfpFlags::__GFP_DMA32,
        GfpFlags::GFP_ATOMIC | GfpFlags::GFP_DMA,
    ];

    m.cpus()
        .on_each_cpu(|cpu| {
            assert_eq!(m.cpus().smp_processor_id(), cpu);
            let mut rng = Rng(0x5eed ^ cpu as u64);
            let mut held: Vec<Stamped> = Vec::new();
            let free = |s: Stamped, how: u64| {
                verify(k, &s);
                if s.cpu != cpu {
                    cross.fetch_add(1, Relaxed);
                }
                let page = k.pfn_to_page(s.pfn).unwrap();
                let r = match (how, s.order) {
                    (0, 0) => k.free_cold_page(page),
                    (1, 0) => k.free_hot_page(page),
                    _ => k.__free_pages(page, s.order),
                };
                r.unwrap_or_else(|e| panic!("cpu {cpu} freeing {s:?}: {e}"));
            };
            for seq in 0..steps {
                let r = rng.below(100);
                let alloc_share = if pressure { 70 } else { 50 };
                if held.is_empty() || (r < alloc_share && held.len() < max_held) {
                    let order = match (rng.below(20), pressure) {
                        (0..=13, false) | (0..=9, true) => 0,
                        (14..=18, false) | (10..=15, true) => 1 + rng.below(3) as u32,
                        (_, false) => 4 + rng.below(3) as u32,
                        (_, true) => 4 + rng.below(6) as u32,
                    };
                    let gfp = masks[rng.below(masks.len() as u64) as usize] | NOWARN;
                    let Ok(page) = k.alloc_pages(gfp, order) else {
                        fails.fetch_add(1, Relaxed);
                        continue;
                    };
                    allocs.fetch_add(1, Relaxed);
                    let s = Stamped {
                        pfn: k.page_to_pfn(page).unwrap(),
                        order,
                        cpu,
                        seq,
                    };
                    if gfp.contains(GfpFlags::__GFP_ZERO) {
                        let mut buf = vec![1u8; (k.page_size() << order) as usize];
                        k.phys().read(k.pfn_phys(s.pfn), &mut buf).unwrap();
                        assert!(buf.iter().all(|&b| b == 0), "{s:?} not zeroed");
                    }
                    stamp(k, &s);
                    if rng.below(4) == 0 {
                        let to = (cpu + 1 + rng.below(CPUS as u64 - 1) as usize) % CPUS;
                        inbox[to].lock().unwrap().push(s);
                    } else {
                        held.push(s);
                    }
                } else if r < alloc_share + 20 {
                    let taken = inbox[cpu].lock().unwrap().pop();
                    if let Some(s) = taken {
                        free(s, rng.below(3));
                    }
                } else {
                    let i = rng.below(held.len() as u64) as usize;
                    free(held.swap_remove(i), rng.below(3));
                }
            }
            for s in held {
                verify(k, &s);
                k.__free_pages(k.pfn_to_page(s.pfn).unwrap(), s.order)
                    .unwrap();
            }
        })
        .unwrap();

    // What is still in an inbox is freed on that inbox's CPU.
    for (cpu, q) in inbox.iter().enumerate() {
        let left = std::mem::take(&mut *q.lock().unwrap());
        m.cpus()
            .run_on_cpu(cpu, || {
                for s in left {
                    verify(k, &s);
                    assert_ne!(s.cpu, cpu);
                    cross.fetch_add(1, Relaxed);
                    k.__free_pages(k.pfn_to_page(s.pfn).unwrap(), s.order)
                        .unwrap();
                }
            })
            .unwrap();
    }
    let n = allocs.load(Relaxed);
    eprintln!("stress: {n} allocations, {cross:?} freed on another CPU, {fails:?} failed");
    assert!(n > steps, "{allocs:?}");
    assert!(
        cross.load(Relaxed) > n / 8,
        "only {cross:?} cross-CPU frees"
    );
    if pressure {
        assert!(fails.load(Relaxed) > 0, "no allocation failed");
    } else {
        assert!(fails.load(Relaxed) < n / 10, "{fails:?} failures");
    }
    k.drain_all_pages();
    check_frames(k, &[]).unwrap();
    assert_eq!(buddyinfo(k), boot_state, "full coalescing");
    assert_eq!(k.nr_free_pages(), boot_free);
    assert_eq!(k.events.bad_pages.load(Relaxed), 0);
}

/// `alloc_pages_exact()` keeps just the pages asked for and frees the rest of
/// the power-of-two block at once; `free_pages_exact()` gives those back.
#[test]
fn alloc_pages_exact_frees_the_tail() {
    let m = common::boot("x86_64", 256 << 20, 1, 1);
    let k = m.kmm();
    k.drain_all_pages();
    let before = k.nr_free_pages() + k.nr_pcp_pages();
    // 5 pages: a block of 8 is taken, 3 go straight back.
    let addr = k
        .alloc_pages_exact(5 * 4096, kmm::GfpFlags::GFP_KERNEL)
        .expect("alloc_pages_exact");
    assert_eq!(k.nr_free_pages() + k.nr_pcp_pages(), before - 5);
    for i in 0..5 {
        let p = k.virt_to_page(addr + i * 4096).unwrap();
        assert_eq!(p.page_count(), 1, "page {i} has its own reference");
        assert_eq!(p.alloc_order(), Some(0));
    }
    assert!(k.alloc_pages_exact(0, kmm::GfpFlags::GFP_KERNEL).is_err());
    k.free_pages_exact(addr, 5 * 4096)
        .expect("free_pages_exact");
    k.drain_all_pages();
    assert_eq!(k.nr_free_pages(), before);
}

/// `alloc_pages_bulk` hands out distinct order-0 pages taken under one
/// per-CPU lock (refilling the list as it goes); `free_pages_bulk` gives them
/// back, skipping pages others still hold and reporting bad ones; the frame
/// invariants hold throughout.
#[test]
fn bulk_allocation_and_free() {
    let m = boot("x86_64", 256 << 20, 2, 1);
    let k = m.kmm();
    k.drain_all_pages();
    let free = k.nr_free_pages();
    let mut pfns = Vec::new();
    let got = k
        .alloc_pages_bulk(0, kmm::GfpFlags::GFP_KERNEL, 300, |pfn| {
            pfns.push(pfn);
            Ok(())
        })
        .unwrap();
    assert_eq!(got, 300);
    let distinct: std::collections::BTreeSet<u64> = pfns.iter().copied().collect();
    assert_eq!(distinct.len(), 300);
    let allocs: Vec<Alloc> = pfns
        .iter()
        .map(|&pfn| Alloc {
            pfn,
            order: 0,
            comp: false,
        })
        .collect();
    check_frames(k, &allocs).unwrap();
    // One page keeps a second reference: the bulk free only drops one.
    let kept = k.pfn_to_page(pfns[7]).unwrap();
    k.get_page(kept).unwrap();
    k.free_pages_bulk(pfns.iter().copied()).unwrap();
    check_frames(
        k,
        &[Alloc {
            pfn: pfns[7],
            order: 0,
            comp: false,
        }],
    )
    .unwrap();
    // Freeing it again in bulk is a double free for all but that one.
    let r = k.free_pages_bulk(pfns[..9].iter().copied());
    assert!(r.is_err(), "double free reported");
    check_frames(k, &[]).unwrap();
    k.drain_all_pages();
    assert_eq!(k.nr_free_pages(), free);
}
