//! What the GFP action modifiers and type flags do, not just their values:
//! reserves below the min watermark, kswapd and direct reclaim, NORETRY,
//! REPEAT, NOFAIL, NOWARN, sleeping in atomic context, invalid masks,
//! zeroing, and hot/cold per-CPU pages.

mod common;

use common::*;
use kmm::mmzone::{Watermark, ZoneType};
use kmm::{GfpFlags, KmmError, MAX_ORDER};
use kmm_sim::Machine;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KERNEL: GfpFlags = GfpFlags::GFP_KERNEL;
const ATOMIC: GfpFlags = GfpFlags::GFP_ATOMIC;
const NOWAIT: GfpFlags = GfpFlags::GFP_NOWAIT;
const NOWARN: GfpFlags = GfpFlags::__GFP_NOWARN;
const NORETRY: GfpFlags = GfpFlags::__GFP_NORETRY;

/// Allocates order-0 pages with `gfp` until it fails even with the per-CPU
/// lists drained, so that no page is left anywhere that `gfp` could get.
fn exhaust_fully(k: &K, gfp: GfpFlags) -> Vec<Alloc> {
    let mut held = exhaust(k, gfp, 0);
    loop {
        k.drain_all_pages();
        let more = exhaust(k, gfp, 0);
        if more.is_empty() {
            return held;
        }
        held.extend(more);
    }
}

fn ok(k: &K, r: Result<&kmm::Page, KmmError>, order: u32, gfp: GfpFlags) -> Alloc {
    match r {
        Ok(p) => Alloc::of(k, p, order, gfp),
        Err(e) => panic!("{gfp:?} order {order}: {e}"),
    }
}

fn fails(r: Result<&kmm::Page, KmmError>) -> KmmError {
    r.err().expect("the allocation should fail")
}

/// Below the min watermark only GFP_ATOMIC (`__GFP_HIGH`, cannot sleep)
/// still gets pages. Every failing request wakes kswapd; only the one that
/// may sleep enters direct reclaim, and `__GFP_NORETRY` does so once.
#[test]
fn atomic_dips_below_min_and_only_sleepers_reclaim() {
    let m = boot("x86_64", 128 * M, 1, 1);
    let k = m.kmm();
    let p = m.platform();
    let boot_state = buddyinfo(k);
    let mut held = exhaust_fully(k, NOWAIT);
    let dma32 = k
        .zones()
        .find(|z| z.zone_type() == ZoneType::Dma32)
        .unwrap();
    assert!(dma32.free_pages() <= dma32.watermark(Watermark::Min));

    let (w0, d0) = (p.kswapd_wakeups(), p.direct_reclaims());
    fails(k.alloc_page(NOWAIT | NOWARN));
    assert!(p.kswapd_wakeups() > w0, "a failing GFP_NOWAIT wakes kswapd");
    assert_eq!(
        p.direct_reclaims(),
        d0,
        "GFP_NOWAIT never reclaims directly"
    );

    let (w1, d1) = (p.kswapd_wakeups(), p.direct_reclaims());
    let e = fails(k.alloc_page(KERNEL | NORETRY | NOWARN));
    assert!(matches!(e, KmmError::NoMemory { order: 0, .. }), "{e:?}");
    assert!(p.kswapd_wakeups() > w1);
    assert_eq!(p.direct_reclaims() - d1, 1, "__GFP_NORETRY reclaims once");

    let (w2, d2) = (p.kswapd_wakeups(), p.direct_reclaims());
    let a = ok(k, k.alloc_page(ATOMIC | NOWARN), 0, ATOMIC);
    let z = k.page_zone(a.page(k));
    assert!(
        z.free_pages() < z.watermark(Watermark::Min),
        "GFP_ATOMIC got a page with {} free, below min {}",
        z.free_pages(),
        z.watermark(Watermark::Min)
    );
    assert!(p.kswapd_wakeups() > w2, "the slow path woke kswapd");
    assert_eq!(
        p.direct_reclaims(),
        d2,
        "GFP_ATOMIC never reclaims directly"
    );
    held.push(a);
    check_frames(k, &held).unwrap();
    free_all_and_check_coalesced(k, &mut held, &boot_state).unwrap();
}

/// A direct-reclaim hook that frees pages lets a GFP_KERNEL allocation
/// succeed on an exhausted machine.
#[test]
fn reclaim_hook_frees_memory() {
    // The hook must reach the machine it is installed in, so the machine
    // lives for the rest of the test binary.
    let m: &'static Machine = Box::leak(Box::new(boot("x86_64", 128 * M, 1, 1)));
    let k = m.kmm();
    let boot_state = buddyinfo(k);
    let reserve: Vec<Alloc> = (0..4)
        .map(|_| ok(k, k.alloc_pages(KERNEL, 8), 8, KERNEL))
        .collect();
    let reserve = Arc::new(Mutex::new(reserve));
    let mut held = exhaust_fully(k, KERNEL | NORETRY);
    fails(k.alloc_page(KERNEL | NORETRY | NOWARN));

    let calls = Arc::new(AtomicU64::new(0));
    let (r, c) = (reserve.clone(), calls.clone());
    m.platform()
        .set_reclaim_hook(Some(Box::new(move |_order, gfp| {
            assert!(gfp.allows_blocking());
            c.fetch_add(1, Relaxed);
            let mut r = r.lock().unwrap();
            let pages = r.iter().map(|a| 1usize << a.order).sum();
            for a in r.drain(..) {
                a.free(m.kmm()).unwrap();
            }
            pages
        })));
    let d0 = m.platform().direct_reclaims();
    held.push(ok(k, k.alloc_page(KERNEL), 0, KERNEL));
    assert!(calls.load(Relaxed) >= 1);
    assert!(m.platform().direct_reclaims() > d0);
    assert!(
        reserve.lock().unwrap().is_empty(),
        "the hook freed the reserve"
    );
    m.platform().set_reclaim_hook(None);
    check_frames(k, &held).unwrap();
    free_all_and_check_coalesced(k, &mut held, &boot_state).unwrap();
}

/// `__GFP_NOFAIL` does not return failure: it waits until another CPU frees
/// memory about 50 ms later.
#[test]
fn nofail_waits_for_memory() {
    let m = boot("x86_64", 128 * M, 2, 1);
    let k = m.kmm();
    let boot_state = buddyinfo(k);
    let reserve: Vec<Alloc> = (0..4)
        .map(|_| ok(k, k.alloc_pages(KERNEL, 8), 8, KERNEL))
        .collect();
    let mut held = exhaust_fully(k, ATOMIC);
    fails(k.alloc_page(ATOMIC | NOWARN));
    let freeing = AtomicBool::new(false);
    let start = Instant::now();
    let got = std::thread::scope(|s| {
        s.spawn(|| {
            let _cpu1 = m.cpus().bind(1).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            freeing.store(true, Relaxed);
            free_all(k, reserve);
        });
        let _cpu0 = m.cpus().bind(0).unwrap();
        let gfp = KERNEL | GfpFlags::__GFP_NOFAIL;
        ok(k, k.alloc_page(gfp), 0, gfp)
    });
    assert!(freeing.load(Relaxed), "succeeded before memory was freed");
    assert!(start.elapsed() >= Duration::from_millis(45));
    held.push(got);
    check_frames(k, &held).unwrap();
    free_all_and_check_coalesced(k, &mut held, &boot_state).unwrap();
}

/// Without `__GFP_NORETRY` a sleeping order-0 request retries reclaim; a
/// costly order gives up after one round unless `__GFP_REPEAT` asks for more.
#[test]
fn retry_policy_noretry_repeat() {
    let m = boot("x86_64", 128 * M, 1, 1);
    let k = m.kmm();
    let p = m.platform();
    let held = exhaust_fully(k, ATOMIC);
    let costly = kmm::page_alloc::PAGE_ALLOC_COSTLY_ORDER + 1;
    let reclaims = |gfp: GfpFlags, order: u32| {
        let d = p.direct_reclaims();
        let e = fails(k.alloc_pages(gfp | NOWARN, order));
        assert!(matches!(e, KmmError::NoMemory { .. }), "{e:?}");
        p.direct_reclaims() - d
    };
    assert_eq!(reclaims(KERNEL | NORETRY, 0), 1);
    assert!(reclaims(KERNEL, 0) > 1, "order 0 retries");
    assert_eq!(reclaims(KERNEL, costly), 1, "a costly order does not retry");
    assert_eq!(reclaims(KERNEL | NORETRY, costly), 1);
    let repeat = reclaims(KERNEL | GfpFlags::__GFP_REPEAT, costly);
    assert!(repeat > 1, "__GFP_REPEAT retried only {repeat} times");
    // Direct reclaim is charged to the zone (allocstall_*).
    let vmstat = kmm_sim::procfs::read(&m, "/proc/vmstat").unwrap();
    assert!(
        !vmstat.contains("allocstall_dma32 0\n"),
        "allocstall counted:\n{vmstat}"
    );
    free_all(k, held);
}

/// A failure prints Linux's warning with the order and mask, unless
/// `__GFP_NOWARN`.
#[test]
fn failure_warning_unless_nowarn() {
    let m = boot("x86_64", 128 * M, 1, 1);
    let k = m.kmm();
    let held = exhaust_fully(k, ATOMIC);
    let _ = m.take_log();
    fails(k.alloc_pages(ATOMIC, 2));
    let log = m.take_log();
    assert!(
        logged(
            &log,
            "page allocation failure: order:2, mode:0x20(GFP_ATOMIC)"
        ),
        "{log:#?}"
    );
    assert!(logged(&log, "Mem-Info:"), "show_mem() follows");
    assert!(logged(&log, "lowmem_reserve[]:"));
    fails(k.alloc_pages(KERNEL | NORETRY, 1));
    let log = m.take_log();
    assert!(
        logged(&log, "page allocation failure: order:1, mode:0x10d0("),
        "{log:#?}"
    );
    fails(k.alloc_pages(ATOMIC | NOWARN, 2));
    fails(k.alloc_pages(KERNEL | NORETRY | NOWARN, 1));
    let log = m.take_log();
    assert!(!logged(&log, "page allocation failure"), "{log:#?}");
    free_all(k, held);
}

/// A sleeping allocation with preemption or interrupts disabled, or in an
/// interrupt, is reported as Linux reports it and changes nothing; atomic
/// allocations are fine there.
#[test]
fn sleeping_allocation_in_atomic_context() {
    let m = boot("x86_64", 128 * M, 2, 1);
    let k = m.kmm();
    let cpus = m.cpus();
    let before = snapshot(k);
    let _ = m.take_log();
    {
        let _g = cpus.preempt_disable();
        let e = fails(k.alloc_page(KERNEL));
        assert_eq!(
            e,
            KmmError::SleepInAtomic {
                preempt_count: 1,
                irqs_disabled: false
            }
        );
        let e = k.__get_free_pages(GfpFlags::GFP_USER, 1).unwrap_err();
        assert!(matches!(e, KmmError::SleepInAtomic { .. }), "{e:?}");
    }
    {
        let _g = cpus.local_irq_save();
        let e = fails(k.alloc_page(GfpFlags::GFP_NOIO));
        assert!(matches!(
            e,
            KmmError::SleepInAtomic {
                irqs_disabled: true,
                ..
            }
        ));
    }
    {
        let _g = cpus.irq_enter();
        assert!(matches!(
            fails(k.alloc_page(GfpFlags::GFP_NOFS)),
            KmmError::SleepInAtomic { .. }
        ));
    }
    let log = m.take_log();
    assert!(
        logged(&log, "BUG: sleeping function called from invalid context"),
        "{log:#?}"
    );
    assert!(logged(&log, "in_atomic(): 1, irqs_disabled(): 0"));
    assert!(logged(&log, "irqs_disabled(): 1"));
    assert_eq!(snapshot(k), before, "nothing changed");
    assert_eq!(k.events.sleep_in_atomic.load(Relaxed), 4);
    // GFP_ATOMIC is what such code must use.
    let _g = cpus.preempt_disable();
    let a = ok(k, k.alloc_page(ATOMIC), 0, ATOMIC);
    a.free(k).unwrap();
}

/// Masks Linux treats as bugs, an order above MAX_ORDER - 1 and a node that
/// does not exist are errors and touch nothing.
#[test]
fn invalid_requests_change_nothing() {
    let m = boot("x86_64", 128 * M, 1, 1);
    let k = m.kmm();
    let p = m.platform();
    let before = snapshot(k);
    let (w0, d0) = (p.kswapd_wakeups(), p.direct_reclaims());
    let bad = [
        GfpFlags::__GFP_DMA | GfpFlags::__GFP_HIGHMEM | KERNEL,
        GfpFlags::__GFP_DMA | GfpFlags::__GFP_DMA32 | KERNEL,
        GfpFlags::__GFP_DMA32 | GfpFlags::__GFP_HIGHMEM | ATOMIC,
        KERNEL | GfpFlags::__GFP_NOFAIL | NORETRY,
        ATOMIC | GfpFlags::__GFP_NOFAIL,
        GfpFlags::from_bits_retain(0x8000_0000) | KERNEL,
    ];
    for gfp in bad {
        for order in [0, 3] {
            let e = fails(k.alloc_pages(gfp, order));
            assert!(matches!(e, KmmError::InvalidGfp { .. }), "{gfp:?}: {e:?}");
        }
        assert!(matches!(
            k.__get_free_pages(gfp, 0),
            Err(KmmError::InvalidGfp { .. })
        ));
    }
    let _ = m.take_log();
    let e = fails(k.alloc_pages(KERNEL, MAX_ORDER as u32));
    assert_eq!(e, KmmError::OrderTooLarge { order: 11 });
    assert!(logged(&m.take_log(), "order 11 >= MAX_ORDER"));
    fails(k.alloc_pages(KERNEL | NOWARN, 40));
    assert!(m.take_log().is_empty(), "__GFP_NOWARN");
    assert_eq!(
        fails(k.alloc_pages_node(1, KERNEL, 0)),
        KmmError::InvalidNode { nid: 1 }
    );
    assert_eq!(snapshot(k), before);
    assert_eq!((p.kswapd_wakeups(), p.direct_reclaims()), (w0, d0));
    check_frames(k, &[]).unwrap();
}

fn fill(k: &K, pfn: u64, order: u32, byte: u8) {
    let len = (k.page_size() << order) as usize;
    k.phys().fill(k.pfn_phys(pfn), len, byte).unwrap();
}

fn all_bytes(k: &K, pfn: u64, order: u32, byte: u8) -> bool {
    let mut buf = vec![!byte; (k.page_size() << order) as usize];
    k.phys().read(k.pfn_phys(pfn), &mut buf).unwrap();
    buf.iter().all(|&b| b == byte)
}

/// `__GFP_ZERO` and `get_zeroed_page` hand out zeros even when the page was
/// dirtied by its previous owner; without the flag the old bytes are still
/// there (the allocator does not clear pages it need not).
#[test]
fn gfp_zero_clears_dirty_pages() {
    let m = boot("x86_64", 128 * M, 1, 1);
    let k = m.kmm();
    let a = ok(k, k.alloc_page(KERNEL), 0, KERNEL);
    fill(k, a.pfn, 0, 0xab);
    k.free_hot_page(a.page(k)).unwrap();
    let b = ok(k, k.alloc_page(KERNEL), 0, KERNEL);
    assert_eq!(b.pfn, a.pfn, "the hot page comes back");
    assert!(all_bytes(k, b.pfn, 0, 0xab), "no flag, no clearing");
    k.free_hot_page(b.page(k)).unwrap();
    let gfp = KERNEL | GfpFlags::__GFP_ZERO;
    let c = ok(k, k.alloc_page(gfp), 0, gfp);
    assert_eq!(c.pfn, a.pfn);
    assert!(all_bytes(k, c.pfn, 0, 0), "__GFP_ZERO");
    fill(k, c.pfn, 0, 0xcd);
    c.free(k).unwrap();
    let addr = k.get_zeroed_page(KERNEL).unwrap();
    assert_eq!(k.__pa(addr).unwrap(), k.pfn_phys(a.pfn));
    assert!(all_bytes(k, a.pfn, 0, 0), "get_zeroed_page");
    k.free_page(addr).unwrap();
    // Larger blocks: dirty every order-3 block we can get, free them all,
    // then every zeroed order-3 allocation must read back as zeros.
    let blocks: Vec<Alloc> = (0..64)
        .map(|_| ok(k, k.alloc_pages(KERNEL, 3), 3, KERNEL))
        .collect();
    for b in &blocks {
        fill(k, b.pfn, 3, 0xee);
    }
    free_all(k, blocks.iter().copied());
    let zeroed: Vec<Alloc> = (0..64)
        .map(|_| ok(k, k.alloc_pages(gfp, 3), 3, gfp))
        .collect();
    let reused = zeroed.iter().filter(|z| blocks.contains(z)).count();
    assert!(reused > 0, "no dirty block was reused");
    for z in &zeroed {
        assert!(all_bytes(k, z.pfn, 3, 0), "{z:?} not zeroed");
    }
    free_all(k, zeroed);
    check_frames(k, &[]).unwrap();
}

fn pcp_list(k: &K, zone_of: &Alloc) -> Vec<u64> {
    let z = k.page_zone(zone_of.page(k));
    let mut v = Vec::new();
    // The order-0 list only: that is where single pages go.
    k.pcp_for_each_block(z, 0, |order, pfn| {
        if order == 0 {
            v.push(pfn)
        }
    });
    v
}

/// Hot pages go to and come from the head of the per-CPU list; cold frees
/// go to the tail, where `__GFP_COLD` allocations take from.
#[test]
fn hot_and_cold_pages() {
    let m = boot("x86_64", 128 * M, 1, 1);
    let k = m.kmm();
    let take = |gfp| ok(k, k.alloc_page(gfp), 0, gfp);
    let (a, b, c) = (take(KERNEL), take(KERNEL), take(KERNEL));
    k.free_hot_page(a.page(k)).unwrap();
    k.free_cold_page(b.page(k)).unwrap();
    k.__free_page(c.page(k)).unwrap();
    let list = pcp_list(k, &a);
    assert_eq!(list.first(), Some(&c.pfn), "__free_page frees hot");
    assert_eq!(list.get(1), Some(&a.pfn));
    assert_eq!(list.last(), Some(&b.pfn), "free_cold_page goes to the tail");
    assert_eq!(take(KERNEL).pfn, c.pfn, "the last page freed hot is reused");
    assert_eq!(take(KERNEL).pfn, a.pfn);
    let cold = KERNEL | GfpFlags::__GFP_COLD;
    assert_eq!(take(cold).pfn, b.pfn, "__GFP_COLD takes the tail");
    for pfn in [a.pfn, b.pfn, c.pfn] {
        k.__free_page(k.pfn_to_page(pfn).unwrap()).unwrap();
    }
    check_frames(k, &[]).unwrap();
}

/// Past `high` pages, a free sends `batch` of the coldest pages back to the
/// buddy lists; an empty list refills `batch` pages at once.
#[test]
fn per_cpu_list_high_and_batch() {
    let m = boot("x86_64", 128 * M, 1, 1);
    let k = m.kmm();
    let z = k
        .zones()
        .find(|z| z.zone_type() == ZoneType::Dma32)
        .unwrap();
    let pcp = z.pcp(0).unwrap();
    let (high, batch) = (pcp.high(), pcp.batch());
    assert!(high >= 4 * batch && batch >= 1);
    let first = ok(k, k.alloc_page(KERNEL), 0, KERNEL);
    assert_eq!(pcp.count(), batch - 1, "refilled by one batch");
    let mut held: Vec<Alloc> = (0..high + batch)
        .map(|_| ok(k, k.alloc_page(KERNEL), 0, KERNEL))
        .collect();
    held.push(first);
    let mut peak = 0;
    for a in held {
        a.free(k).unwrap();
        assert!(
            pcp.count() < high,
            "count {} reached high {high}",
            pcp.count()
        );
        peak = peak.max(pcp.count());
    }
    assert_eq!(peak, high - 1);
    check_frames(k, &[]).unwrap();
}
