//! Mempools (LDD3 §8.2.2): the reserve guarantees progress while the
//! allocator behind the pool is exhausted.

mod common;

use common::*;
use kmm::mempool::{mempool_alloc_pages, mempool_free_pages};
use kmm::GfpFlags;
use std::time::{Duration, Instant};

#[test]
fn reserve_serves_when_the_page_allocator_is_exhausted() {
    let m = boot("x86_64", 128 * M, 2, 1);
    let k = m.kmm();
    k.drain_all_pages();
    let boot_free = k.nr_free_pages();
    let pool = k
        .mempool_create(4, mempool_alloc_pages, mempool_free_pages, 0)
        .expect("mempool_create");
    assert_eq!(k.mempool_stats(&pool).curr_nr, 4);

    // Take every page, atomic reserve included.
    let held = exhaust(k, GfpFlags::GFP_ATOMIC, 10);
    assert!(k
        .alloc_pages(GfpFlags::GFP_ATOMIC | GfpFlags::__GFP_NOWARN, 0)
        .is_err());

    // The pool still hands out its four reserved elements...
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(
            k.mempool_alloc(&pool, GfpFlags::GFP_ATOMIC)
                .expect("from the reserve"),
        );
    }
    let st = k.mempool_stats(&pool);
    assert_eq!((st.curr_nr, st.from_reserve, st.outstanding), (0, 4, 4));
    // ...then an atomic caller gets a failure, not a wait.
    assert!(k.mempool_alloc(&pool, GfpFlags::GFP_ATOMIC).is_err());

    // A caller that may sleep waits until an element comes back.
    let waited = std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            m.cpus()
                .run_on_cpu(1, || {
                    let t = Instant::now();
                    let e = k.mempool_alloc(&pool, GfpFlags::GFP_KERNEL | GfpFlags::__GFP_NOWARN);
                    (e, t.elapsed())
                })
                .expect("CPU 1")
        });
        std::thread::sleep(Duration::from_millis(50));
        k.mempool_free(&pool, got.pop().unwrap())
            .expect("mempool_free");
        waiter.join().unwrap()
    });
    let (e, took) = waited;
    got.push(e.expect("the sleeping caller got the freed element"));
    assert!(
        took >= Duration::from_millis(40),
        "returned after {took:?} without waiting"
    );
    assert!(k.mempool_stats(&pool).waits > 0);

    // Destroying a pool with elements out is refused, and changes nothing.
    let pool = match k.mempool_destroy(pool) {
        Err((_, pool)) => pool,
        Ok(()) => panic!("mempool_destroy with 4 elements out succeeded"),
    };
    assert!(logged(
        &m.take_log(),
        "mempool_destroy: 4 element(s) still allocated"
    ));
    // An element the pool never handed out is refused.
    for e in got {
        k.mempool_free(&pool, e).unwrap();
    }
    assert!(k.mempool_free(&pool, 0xffff_8880_0000_1000).is_err());
    free_all(k, held);
    k.mempool_destroy(pool).map_err(|(e, _)| e).unwrap();
    k.drain_all_pages();
    assert_eq!(k.nr_free_pages(), boot_free, "every page came back");
}

#[test]
fn resize_grows_and_shrinks_the_reserve() {
    let m = boot("x86_64", 128 * M, 1, 1);
    let k = m.kmm();
    k.drain_all_pages();
    let boot_free = k.nr_free_pages();
    // Order-1 elements: pool_data is the order.
    let pool = k
        .mempool_create(2, mempool_alloc_pages, mempool_free_pages, 1)
        .unwrap();
    k.mempool_resize(&pool, 600).unwrap();
    assert_eq!(k.mempool_stats(&pool).curr_nr, 600);
    k.mempool_resize(&pool, 3).unwrap();
    let st = k.mempool_stats(&pool);
    assert_eq!((st.min_nr, st.curr_nr), (3, 3));
    let e = k.mempool_alloc(&pool, GfpFlags::GFP_KERNEL).unwrap();
    assert_eq!(k.virt_to_page(e).unwrap().alloc_order(), Some(1));
    k.mempool_free(&pool, e).unwrap();
    assert!(k.mempool_resize(&pool, 0).is_err());
    k.mempool_destroy(pool).map_err(|(e, _)| e).unwrap();
    k.drain_all_pages();
    assert_eq!(k.nr_free_pages(), boot_free);
}

#[test]
fn bad_pools_are_errors() {
    let m = boot("x86_64", 128 * M, 1, 1);
    let k = m.kmm();
    assert!(k
        .mempool_create(0, mempool_alloc_pages, mempool_free_pages, 0)
        .is_err());
    assert!(k
        .mempool_create(1 << 20, mempool_alloc_pages, mempool_free_pages, 0)
        .is_err());
    // A back end that cannot fill the reserve: nothing is leaked.
    k.drain_all_pages();
    let before = k.nr_free_pages();
    assert!(k
        .mempool_create(4, mempool_alloc_pages, mempool_free_pages, 11)
        .is_err());
    k.drain_all_pages();
    assert_eq!(k.nr_free_pages(), before);
}

/// The seed's pattern: `mempool_create(MIN, mempool_alloc_slab,
/// mempool_free_slab, cache)`, and a kmalloc pool, both carrying on while
/// the page allocator has nothing left.
#[test]
fn slab_and_kmalloc_pools_make_progress_under_exhaustion() {
    let m = boot("x86_64", 128 * M, 1, 1);
    let k = m.kmm();
    let cache = k
        .kmem_cache_create("bio", 192, 0, kmm::slab::SlabFlags::empty(), None)
        .unwrap();
    let slab_pool = k.mempool_create_slab_pool(8, cache).unwrap();
    let kmalloc_pool = k.mempool_create_kmalloc_pool(8, 1000).unwrap();
    assert_eq!(k.mempool_stats(&slab_pool).curr_nr, 8);

    // Use up every page and every free object the cache already has.
    let held = exhaust(k, GfpFlags::GFP_ATOMIC, 10);
    let mut objs = Vec::new();
    while let Ok(o) = k.kmem_cache_alloc(cache, GfpFlags::GFP_ATOMIC | GfpFlags::__GFP_NOWARN) {
        objs.push(o);
    }
    let mut bufs = Vec::new();
    while let Ok(b) = k.kmalloc(1000, GfpFlags::GFP_ATOMIC | GfpFlags::__GFP_NOWARN) {
        bufs.push(b);
    }

    // Both pools still deliver their reserve, and the elements are usable.
    let mut got = Vec::new();
    for _ in 0..8 {
        let e = k
            .mempool_alloc(&slab_pool, GfpFlags::GFP_ATOMIC)
            .expect("slab reserve");
        assert_eq!(k.kmem_cache_size(cache).unwrap(), 192);
        k.phys().write(k.__pa(e).unwrap(), &[0x5a; 192]).unwrap();
        got.push(e);
    }
    assert!(k.mempool_alloc(&slab_pool, GfpFlags::GFP_ATOMIC).is_err());
    let b = k
        .mempool_alloc(&kmalloc_pool, GfpFlags::GFP_ATOMIC)
        .expect("kmalloc reserve");
    assert!(k.ksize(b).unwrap() >= 1000);

    k.mempool_free(&kmalloc_pool, b).unwrap();
    for e in got {
        k.mempool_free(&slab_pool, e).unwrap();
    }
    for o in objs {
        k.kmem_cache_free(cache, o).unwrap();
    }
    for b in bufs {
        k.kfree(b).unwrap();
    }
    free_all(k, held);
    k.mempool_destroy(slab_pool).map_err(|(e, _)| e).unwrap();
    k.mempool_destroy(kmalloc_pool).map_err(|(e, _)| e).unwrap();
    k.kmem_cache_destroy(cache).unwrap();
}
