//! `KmmHeap` as this test binary's global allocator: the workload gives the
//! same answers as under the system allocator, every `Layout` is honoured,
//! `realloc` keeps data, `allocator_api2` collections work, switching the
//! heap on and off is safe, and after everything is dropped and the caches
//! are shrunk, kmm has every page back.
//!
//! The tests share the global heap (and its on/off switch), so each takes
//! one lock and they run one after another.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::{Barrier, Mutex, MutexGuard};

use kmm::GfpFlags;
use kmm_heap::workload::Workload;
use kmm_heap::{HeapKmm, KmmHeap};

#[global_allocator]
static HEAP: KmmHeap = KmmHeap::new(1 << 30);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    HEAP.set_enabled(true);
    g
}

fn kmm() -> &'static HeapKmm {
    HEAP.kmm().expect("the heap boots")
}

const SMALL: Workload = Workload {
    threads: 4,
    keys: 3000,
    seed: 0x5eed,
};

#[test]
fn workload_gives_the_same_results_as_the_system_allocator() {
    let _g = serial();
    HEAP.set_enabled(false);
    let system = SMALL.run(|| {});
    HEAP.set_enabled(true);
    let free_before = kmm().nr_free_pages();
    let mut free_at_peak = 0;
    let under_kmm = SMALL.run(|| free_at_peak = kmm().nr_free_pages());
    assert_eq!(under_kmm, system);
    assert!(
        free_at_peak < free_before,
        "the maps live in kmm's pages ({free_at_peak} < {free_before})"
    );
    let s = String::from("in the region");
    assert!(HEAP.owns(s.as_ptr()));
    assert_eq!(HEAP.stats().failed, 0);
}

/// Sizes around every kmalloc class boundary, up to 64 KiB.
fn sizes() -> Vec<usize> {
    let mut v = vec![1, 2, 3, 5, 7, 40, 100, 500, 1000, 3000, 10_000, 40_000];
    for p in 3..=16 {
        let n = 1usize << p;
        v.extend([n - 1, n, n + 1]);
    }
    v.extend([95, 96, 97, 191, 192, 193]);
    v.sort_unstable();
    v.dedup();
    v
}

#[test]
fn every_layout_is_aligned_and_disjoint() {
    let _g = serial();
    let max = HEAP.max_kmalloc().unwrap_or(0);
    let mut live: Vec<(usize, usize, Layout)> = Vec::new();
    for shift in 0..=12 {
        let align = 1usize << shift;
        for &size in &sizes() {
            let layout = Layout::from_size_align(size, align).unwrap();
            for zeroed in [false, true] {
                // SAFETY: `layout` has a non-zero size.
                let p = unsafe {
                    if zeroed {
                        HEAP.alloc_zeroed(layout)
                    } else {
                        HEAP.alloc(layout)
                    }
                };
                assert!(!p.is_null(), "{layout:?}");
                assert_eq!(p as usize % align, 0, "{layout:?} at {p:p}");
                assert!(HEAP.owns(p), "kmm serves {layout:?} (max {max})");
                // SAFETY: `p` is a live block of `size` bytes.
                let bytes = unsafe { std::slice::from_raw_parts_mut(p, size) };
                if zeroed {
                    assert!(bytes.iter().all(|&b| b == 0), "zeroed {layout:?}");
                }
                bytes.fill(shift as u8 ^ size as u8);
                live.push((p as usize, size, layout));
            }
        }
    }
    live.sort_unstable_by_key(|b| b.0);
    for w in live.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "blocks overlap: {w:?}");
    }
    for &(p, size, layout) in &live {
        // SAFETY: `p` is live with `size` bytes, filled above.
        let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, size) };
        let want = layout.align().trailing_zeros() as u8 ^ size as u8;
        assert!(
            bytes.iter().all(|&b| b == want),
            "{layout:?} was overwritten"
        );
        // SAFETY: allocated above by HEAP with `layout`, freed once.
        unsafe { HEAP.dealloc(p as *mut u8, layout) };
    }

    // Zero-sized blocks through the Allocator API: aligned and dangling.
    use allocator_api2::alloc::Allocator;
    for shift in 0..=12 {
        let layout = Layout::from_size_align(0, 1 << shift).unwrap();
        let b = HEAP.allocate(layout).unwrap();
        assert_eq!(b.cast::<u8>().as_ptr() as usize % layout.align(), 0);
        // SAFETY: allocated just above with `layout`.
        unsafe { HEAP.deallocate(b.cast(), layout) };
    }

    // An alignment beyond the largest buddy block goes to the system allocator.
    let before = HEAP.stats().to_system;
    let huge = Layout::from_size_align(64, max * 2).unwrap();
    // SAFETY: non-zero size.
    let p = unsafe { HEAP.alloc(huge) };
    assert!(!p.is_null() && (p as usize).is_multiple_of(huge.align()) && !HEAP.owns(p));
    assert_eq!(HEAP.stats().to_system, before + 1);
    // SAFETY: allocated just above with `huge`.
    unsafe { HEAP.dealloc(p, huge) };
}

fn pattern(i: usize) -> u8 {
    (i * 31 + 7) as u8
}

#[test]
fn realloc_keeps_data_and_alignment() {
    let _g = serial();
    let max = HEAP.max_kmalloc().unwrap_or(0);
    for align in [1usize, 8, 16, 64, 4096] {
        let mut layout = Layout::from_size_align(10, align).unwrap();
        // SAFETY: non-zero size.
        let mut p = unsafe { HEAP.alloc(layout) };
        assert!(!p.is_null());
        let mut filled = 0;
        for &n in &[
            10usize,
            11,
            100,
            1000,
            5000,
            70_000,
            200_000,
            1 << 20,
            3000,
            50,
            9,
        ] {
            for i in filled..layout.size().min(n) {
                // SAFETY: `i` < the block's size.
                unsafe { p.add(i).write(pattern(i)) };
            }
            filled = layout.size().min(n);
            // SAFETY: `p` is live with `layout`; `n` is non-zero and fits isize.
            p = unsafe { HEAP.realloc(p, layout, n) };
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0, "realloc to {n} keeps align {align}");
            assert!(HEAP.owns(p));
            layout = Layout::from_size_align(n, align).unwrap();
            filled = filled.min(n);
            for i in 0..filled {
                // SAFETY: `i` < `filled` <= the block's size.
                assert_eq!(unsafe { p.add(i).read() }, pattern(i), "byte {i} after {n}");
            }
            filled = n;
            for i in 0..n {
                // SAFETY: `i` < `n`, the block's size.
                unsafe { p.add(i).write(pattern(i)) };
            }
        }
        // SAFETY: `p` is live with `layout`.
        unsafe { HEAP.dealloc(p, layout) };
    }

    // Growing past KMALLOC_MAX_SIZE moves the block to the system allocator.
    let layout = Layout::from_size_align(1 << 16, 8).unwrap();
    // SAFETY: non-zero size.
    let p = unsafe { HEAP.alloc(layout) };
    for i in 0..layout.size() {
        // SAFETY: in bounds.
        unsafe { p.add(i).write(pattern(i)) };
    }
    let before = HEAP.stats().to_system;
    // SAFETY: `p` is live with `layout`.
    let q = unsafe { HEAP.realloc(p, layout, max + 1) };
    assert!(!q.is_null() && !HEAP.owns(q));
    assert_eq!(HEAP.stats().to_system, before + 1);
    for i in 0..layout.size() {
        // SAFETY: in bounds of the new, larger block.
        assert_eq!(unsafe { q.add(i).read() }, pattern(i));
    }
    let big = Layout::from_size_align(max + 1, 8).unwrap();
    // SAFETY: `q` is live with `big`.
    unsafe { HEAP.dealloc(q, big) };

    // And the everyday case: a Vec growing one push at a time.
    let mut v = Vec::new();
    for i in 0..300_000u32 {
        v.push(i);
    }
    assert!(HEAP.owns(v.as_ptr().cast()));
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32));
}

#[test]
fn allocator_api2_collections() {
    let _g = serial();
    let mut v = allocator_api2::vec::Vec::new_in(&HEAP);
    for i in 0..100_000u64 {
        v.push(i * 3);
    }
    assert!(HEAP.owns(v.as_ptr().cast()));
    assert_eq!(v.iter().sum::<u64>(), 3 * 99_999 * 100_000 / 2);
    v.truncate(10);
    v.shrink_to_fit();
    assert_eq!(v.as_slice(), &[0, 3, 6, 9, 12, 15, 18, 21, 24, 27]);

    #[repr(align(256))]
    #[derive(Clone, Copy)]
    struct Aligned([u8; 40]);
    let mut a = allocator_api2::vec::Vec::new_in(&HEAP);
    for i in 0..1000 {
        a.push(Aligned([i as u8; 40]));
        assert_eq!(a.as_ptr() as usize % 256, 0);
    }
    assert!(a.iter().enumerate().all(|(i, x)| x.0[39] == i as u8));

    let b = allocator_api2::boxed::Box::new_in([7u8; 3000], &HEAP);
    assert!(HEAP.owns(b.as_ptr()));
    assert!(b.iter().all(|&x| x == 7));
}

/// A second heap, never used before this test: eight threads with 2 MiB
/// stacks allocate from it at the same moment, so one of them boots it (a
/// ~100 KiB `Kmm`) while the others wait.
static SIDE: KmmHeap = KmmHeap::new(128 << 20).with_cpus(4).with_page_size(4096);

#[test]
fn first_use_from_many_threads_boots_once() {
    let _g = serial();
    assert!(SIDE.region().is_none(), "not booted before first use");
    let barrier = Barrier::new(8);
    let seen: Vec<(usize, usize)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|t| {
                let barrier = &barrier;
                std::thread::Builder::new()
                    .stack_size(2 << 20)
                    .spawn_scoped(s, move || {
                        barrier.wait();
                        let mut v = allocator_api2::vec::Vec::new_in(&SIDE);
                        for i in 0..10_000usize {
                            v.push(i ^ t);
                        }
                        assert!(SIDE.owns(v.as_ptr().cast()));
                        assert!(!HEAP.owns(v.as_ptr().cast()));
                        let k = SIDE.kmm().expect("booted") as *const HeapKmm as usize;
                        (k, v.iter().sum::<usize>())
                    })
                    .unwrap()
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(seen.iter().all(|&(k, _)| k == seen[0].0), "one Kmm");
    let k = SIDE.kmm().unwrap();
    assert_eq!(k.page_size(), 4096);
    assert_eq!(k.nr_cpu_ids(), 4);
}

#[test]
fn switching_is_safe_at_any_time() {
    let _g = serial();
    HEAP.set_enabled(false);
    let mut from_system = vec![1u8; 1000];
    assert!(!HEAP.owns(from_system.as_ptr()));
    HEAP.set_enabled(true);
    let mut from_kmm = vec![2u8; 1000];
    assert!(HEAP.owns(from_kmm.as_ptr()));
    // Growing follows the address, whatever the switch says.
    from_system.extend_from_slice(&[3; 5000]);
    assert!(!HEAP.owns(from_system.as_ptr()));
    HEAP.set_enabled(false);
    from_kmm.extend_from_slice(&[4; 5000]);
    assert!(HEAP.owns(from_kmm.as_ptr()));
    let later = String::from("system");
    assert!(!HEAP.owns(later.as_ptr()));
    HEAP.set_enabled(true);
    assert_eq!(
        from_system.iter().map(|&b| b as usize).sum::<usize>(),
        1000 + 15000
    );
    assert_eq!(
        from_kmm.iter().map(|&b| b as usize).sum::<usize>(),
        2000 + 20000
    );
    drop(from_kmm);
    drop(from_system);
    drop(later);
}

/// Every cache shrunk (`kmem_cache_shrink`) and the per-CPU page lists
/// drained: what `nr_free_pages` then says is what is really free.
fn settle(k: &HeapKmm) -> u64 {
    for c in k.kmem_caches().iter() {
        k.kmem_cache_shrink(c).unwrap();
    }
    k.drain_all_pages();
    k.nr_free_pages()
}

/// Active objects of every kmalloc cache, and its pages per slab.
fn kmalloc_objects(k: &HeapKmm) -> Vec<(String, u64, u64)> {
    k.kmem_caches()
        .iter()
        .filter_map(|c| k.kmem_cache_info(c).ok())
        .filter(|i| i.kmalloc)
        .map(|i| {
            (
                i.name.as_str().to_string(),
                i.active_objs,
                i.pages_per_slab as u64,
            )
        })
        .collect()
}

#[test]
fn every_page_comes_back_after_dropping_everything() {
    let _g = serial();
    let k = kmm();
    // Warm up: thread-locals, the hasher's keys, the workload's code paths.
    let warm = SMALL.run(|| {});
    drop(warm);
    let objects_before = kmalloc_objects(k);
    let free_before = settle(k);
    let mut peak_free = 0;
    let sums = Workload {
        threads: 3,
        keys: 6000,
        seed: 99,
    }
    .run(|| peak_free = k.nr_free_pages());
    assert_eq!(sums.len(), 3);
    drop(sums);
    let free_after = settle(k);
    let objects_after = kmalloc_objects(k);
    // An object allocated since the warm-up and still live (held by this
    // test, or by the test harness's other threads) can keep its slab.
    let pinned: u64 = objects_after
        .iter()
        .map(|(n, after, pages)| {
            let before = objects_before
                .iter()
                .find(|(m, _, _)| m == n)
                .map_or(0, |x| x.1);
            after.saturating_sub(before) * pages
        })
        .sum();
    assert!(
        peak_free + 50 < free_before,
        "the workload used kmm's pages (peak {peak_free}, before {free_before})"
    );
    assert!(
        free_after + pinned >= free_before,
        "pages lost: free {free_before} after warm-up, {free_after} after dropping \
         everything ({pinned} pages may be pinned by live objects)"
    );
    assert_eq!(HEAP.stats().failed, 0);
    // The heap's own shrink does the same as the kmm calls above.
    let a = k.kmalloc(100, GfpFlags::GFP_KERNEL).unwrap();
    k.kfree(a).unwrap();
    HEAP.shrink();
    assert!(k.nr_free_pages() + pinned >= free_before);
}

/// The alignment argument of the crate docs, checked on the caches
/// themselves: every power-of-two kmalloc class tiles its slabs exactly, so
/// it has one colour and its objects sit at multiples of their size.
#[test]
fn power_of_two_classes_are_not_coloured() {
    static FOUR_K: KmmHeap = KmmHeap::new(64 << 20).with_page_size(4096).with_cpus(1);
    let _g = serial();
    for k in [kmm(), FOUR_K.kmm().expect("a 64 MiB heap boots")] {
        let ps = k.page_size();
        let mut checked = 0;
        for c in k.kmem_caches().iter() {
            let i = k.kmem_cache_info(c).unwrap();
            if !i.kmalloc || !i.size.is_power_of_two() {
                continue;
            }
            assert_eq!(i.colour, 1, "{} has one colour", i.name);
            assert_eq!(
                i.objects_per_slab as u64 * i.size as u64,
                i.pages_per_slab as u64 * ps,
                "{} tiles its slab",
                i.name
            );
            checked += 1;
        }
        assert!(checked >= 20, "normal and DMA classes ({checked})");
    }
}
