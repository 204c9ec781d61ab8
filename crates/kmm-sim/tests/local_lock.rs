//! CPU-local data shared between its owner and everyone else: a thread that
//! bound CPU 0 uses the per-CPU page lists and slab arrays without atomic
//! read-modify-writes, while an unbound thread (which also runs as CPU 0)
//! and a thread on CPU 1 draining every CPU's lists take the remote path,
//! which makes the owner leave through `membarrier()`. Each block and object
//! carries its owner's stamp; a block handed to two threads at once would
//! show as a stamp overwritten by the other.

mod common;

use common::*;
use kmm::{GfpFlags, SlabFlags};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

const ROUNDS: u64 = 30_000;

/// What a thread writes into every block and object it holds.
fn tag(thread: u64, seq: u64) -> u64 {
    thread << 56 | seq
}

#[test]
fn owner_unbound_thread_and_remote_drains_share_cpu0_lists() {
    let m = boot("x86_64", 128 * M, 2, 1);
    let k = m.kmm();
    let cache = k
        .kmem_cache_create("shared64", 64, 0, SlabFlags::empty(), None)
        .unwrap();
    // The cache's per-CPU arrays are in place; it has no slabs yet.
    k.drain_all_pages();
    let before = buddyinfo(k);
    let stop = AtomicBool::new(false);
    let (owned, drains) = (AtomicBool::new(false), AtomicU64::new(0));
    let gfp = GfpFlags::GFP_KERNEL;

    // Allocates and frees pages (orders 0–3) and objects, holding up to 16 of
    // each, checking every stamp before the free.
    let worker = |thread: u64| {
        let mut pages: Vec<(u64, u32, u64)> = Vec::new();
        let mut objs: Vec<(u64, u64)> = Vec::new();
        for seq in 0..ROUNDS {
            let order = (seq % 4) as u32;
            let page = k.alloc_pages(gfp, order).unwrap();
            let pfn = k.page_to_pfn(page).unwrap();
            let t = tag(thread, seq);
            k.phys().store_u64(k.pfn_phys(pfn), t).unwrap();
            pages.push((pfn, order, t));
            let obj = k.kmem_cache_alloc(cache, gfp).unwrap();
            write(k, obj, &t.to_le_bytes());
            objs.push((obj, t));
            if pages.len() > 16 || seq == ROUNDS - 1 {
                for (pfn, order, t) in pages.drain(..) {
                    let got = k.phys().load_u64(k.pfn_phys(pfn)).unwrap();
                    assert_eq!(got, t, "thread {thread}: page {pfn:#x} was reused");
                    k.__free_pages(k.pfn_to_page(pfn).unwrap(), order).unwrap();
                }
                for (obj, t) in objs.drain(..) {
                    let got = u64::from_le_bytes(read(k, obj, 8).try_into().unwrap());
                    assert_eq!(got, t, "thread {thread}: object {obj:#x} was reused");
                    k.kmem_cache_free(cache, obj).unwrap();
                }
            }
        }
    };

    std::thread::scope(|s| {
        let owner = s.spawn(|| {
            let _cpu0 = m.cpus().bind(0).unwrap();
            owned.store(true, Relaxed);
            worker(1);
            // Stay CPU 0's owner until a drain has reached it from outside.
            while drains.load(Relaxed) == 0 {
                std::thread::yield_now();
            }
        });
        let unbound = s.spawn(|| {
            assert_eq!(m.cpus().bound_cpu(), None);
            worker(2);
        });
        s.spawn(|| {
            let _cpu1 = m.cpus().bind(1).unwrap();
            while !owned.load(Relaxed) {
                std::thread::yield_now();
            }
            while !stop.load(Relaxed) {
                k.drain_all_pages();
                k.kmem_cache_shrink(cache).unwrap();
                drains.fetch_add(1, Relaxed);
                std::thread::yield_now();
            }
        });
        owner.join().unwrap();
        unbound.join().unwrap();
        stop.store(true, Relaxed);
    });

    if m.platform().cpus_owned_exclusively() {
        assert!(
            m.platform().cpu_syncs() > 0,
            "the drains and the unbound thread reached CPU 0's data through its owner"
        );
    }
    // Objects still in per-CPU arrays count as active (as in SLAB's
    // slabinfo): empty the arrays first.
    k.kmem_cache_shrink(cache).unwrap();
    let info = k.kmem_cache_info(cache).unwrap();
    assert_eq!(info.active_objs, 0, "every object came back");
    k.drain_all_pages();
    assert_eq!(buddyinfo(k), before, "every page came back and merged");
    k.kmem_cache_destroy(cache).unwrap();
}
