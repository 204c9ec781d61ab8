//! kmalloc on a simulated machine: the size classes and their names, the
//! seeds' claims (smallest allocation, at most twice the request, the largest
//! size), large allocations from the page allocator, GFP_DMA and refused
//! high memory, kzalloc/kcalloc/krealloc/ksize, kfree of pointers kmalloc
//! never returned, debugging on a kmalloc cache, and the machine back at its
//! post-boot free page count afterwards.

mod common;

use common::*;
use kmm::slab::SLAB_DEBUG_FLAGS;
use kmm::slab_common::{KMALLOC_SIZES, ZERO_SIZE_PTR};
use kmm::{GfpFlags, KmmError};
use kmm_sim::Machine;
use std::collections::HashSet;

const GFP: GfpFlags = GfpFlags::GFP_KERNEL;

fn back_to_boot(k: &K, boot_free: u64) {
    shrink_all(k);
    k.drain_all_pages();
    assert_eq!(k.nr_slab_unreclaimable() + k.nr_slab_reclaimable(), 0);
    check_frames(k, &[]).unwrap();
    assert_eq!(k.nr_free_pages(), boot_free);
}

fn cache_name(k: &K, addr: u64) -> String {
    let c = k.kmalloc_slab(k.ksize(addr).unwrap(), GFP).unwrap();
    k.kmem_cache_name(c).unwrap().as_str().to_owned()
}

fn slabinfo(m: &Machine) -> String {
    kmm_sim::procfs::read(m, "/proc/slabinfo").unwrap()
}

/// The kmalloc caches exist from boot with Linux's names, in both types.
#[test]
fn caches_at_boot() {
    let m = boot("x86_64", 256 * M, 2, 1);
    let info = slabinfo(&m);
    let mut lines = info.lines();
    assert_eq!(lines.next(), Some("slabinfo - version: 2.1"));
    assert_eq!(
        lines.next(),
        Some("# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>")
    );
    let names: Vec<&str> = lines
        .clone()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    for size in [
        "8", "16", "32", "64", "96", "128", "192", "256", "512", "1k", "2k", "4k", "8k",
    ] {
        for prefix in ["kmalloc-", "dma-kmalloc-"] {
            let n = format!("{prefix}{size}");
            assert!(names.contains(&n.as_str()), "{n} missing from\n{info}");
        }
    }
    assert_eq!(names.len(), 26);
    assert!(!names.contains(&"kmalloc-16k"));
    // Newest first: the DMA caches were created last.
    assert_eq!(names[0], "dma-kmalloc-8k");
    assert_eq!(names[25], "kmalloc-8");
    // "%-17s %6lu %6lu %6u %4u %4d : tunables %4u %4u %4u : slabdata %6lu %6lu %6lu"
    let row = lines.find(|l| l.starts_with("kmalloc-96 ")).unwrap();
    assert_eq!(
        row,
        "kmalloc-96             0      0     96   42    1 : tunables  120   60    8 : slabdata      0      0      0"
    );
    let row = info.lines().find(|l| l.starts_with("kmalloc-8k ")).unwrap();
    assert_eq!(
        row,
        "kmalloc-8k             0      0   8192    1    2 : tunables    8    4    0 : slabdata      0      0      0"
    );
    // Nothing is allocated at boot: the boot arrays were reserved.
    assert_eq!(m.kmm().nr_slab_unreclaimable(), 0);
    check_frames(m.kmm(), &[]).unwrap();
}

/// Seed 001: "you may get up to twice what you asked for"; the smallest
/// allocation; every size up to KMALLOC_MAX_CACHE_SIZE.
#[test]
fn rounding_and_ksize() {
    rounding_and_ksize_on(false);
}

/// The same through the fast paths of a thread that owns its CPU.
#[test]
fn rounding_and_ksize_on_an_owned_cpu() {
    rounding_and_ksize_on(true);
}

fn rounding_and_ksize_on(owned: bool) {
    let m = boot("x86_64", 256 * M, 1, 1);
    let k = m.kmm();
    let _cpu = owned.then(|| m.cpus().bind(0).unwrap());
    let boot_free = k.nr_free_pages();
    let mut held = Vec::new();
    for size in 1..=8192usize {
        let p = k.kmalloc(size, GFP).unwrap();
        let ks = k.ksize(p).unwrap();
        assert_eq!(ks, k.kmalloc_size_roundup(size));
        assert!(ks >= size && ks >= 8);
        assert!(ks < 2 * size || size <= 8, "kmalloc({size}) got {ks}");
        assert_eq!(p % 8, 0);
        if ks.is_power_of_two() {
            assert_eq!(p % ks as u64, 0, "power-of-two sizes are naturally aligned");
        }
        held.push(p);
    }
    assert_eq!(cache_name(k, held[0]), "kmalloc-8");
    assert_eq!(cache_name(k, held[64]), "kmalloc-96");
    assert_eq!(cache_name(k, held[128]), "kmalloc-192");
    assert_eq!(cache_name(k, held[8191]), "kmalloc-8k");
    for (i, &s) in KMALLOC_SIZES[..13].iter().enumerate() {
        assert_eq!(k.kmalloc_size_roundup(s), s, "class {i}");
    }
    let distinct: HashSet<_> = held.iter().collect();
    assert_eq!(distinct.len(), held.len());
    for p in held {
        k.kfree(p).unwrap();
    }
    back_to_boot(k, boot_free);
}

/// Above KMALLOC_MAX_CACHE_SIZE: compound pages straight from the page
/// allocator, up to KMALLOC_MAX_SIZE; above that an error and a warning.
#[test]
fn large_kmalloc() {
    let m = boot("x86_64", 256 * M, 1, 1);
    let k = m.kmm();
    let boot_free = k.nr_free_pages();
    assert_eq!(k.kmalloc_max_cache_size(), 8192);
    assert_eq!(k.kmalloc_max_size(), 4 << 20);
    let p = k.kmalloc(8193, GFP).unwrap();
    assert_eq!(k.ksize(p).unwrap(), 16384);
    assert_eq!(p % 16384, 0);
    let page = k.virt_to_page(p).unwrap();
    assert!(page.is_head() && !page.is_slab());
    assert_eq!(
        k.nr_slab_unreclaimable(),
        4,
        "large kmalloc counts as SUnreclaim"
    );
    let biggest = k.kmalloc(4 << 20, GFP).unwrap();
    assert_eq!(k.ksize(biggest).unwrap(), 4 << 20);
    write(k, biggest + (4 << 20) - 1, &[1]);
    let e = k.kmalloc((4 << 20) + 1, GFP).unwrap_err();
    assert_eq!(
        e,
        KmmError::TooLarge {
            size: (4 << 20) + 1,
            max: 4 << 20,
            what: "KMALLOC_MAX_SIZE"
        }
    );
    let log = m.take_log();
    assert!(
        logged(&log, "size 4194305 > KMALLOC_MAX_SIZE 4194304"),
        "{log:#?}"
    );
    assert!(k.kmalloc(usize::MAX, GFP | GfpFlags::__GFP_NOWARN).is_err());
    assert!(m.take_log().is_empty(), "__GFP_NOWARN is quiet");
    // The inside of a large allocation is not something kfree accepts.
    assert!(k.kfree(p + 4096).is_err());
    assert!(logged(&m.take_log(), "was not returned by kmalloc"));
    k.kfree(p).unwrap();
    k.kfree(biggest).unwrap();
    // A second kfree of a large allocation: the page allocator's report.
    assert!(k.kfree(p).is_err());
    back_to_boot(k, boot_free);
}

#[test]
fn zero_size_and_null() {
    let m = boot("x86_64", 256 * M, 1, 1);
    let k = m.kmm();
    assert_eq!(k.kmalloc(0, GFP).unwrap(), ZERO_SIZE_PTR);
    assert_eq!(ZERO_SIZE_PTR, 16);
    k.kfree(ZERO_SIZE_PTR).unwrap();
    k.kfree(0).unwrap();
    assert_eq!(k.ksize(ZERO_SIZE_PTR).unwrap(), 0);
    assert_eq!(k.kzalloc(0, GFP).unwrap(), ZERO_SIZE_PTR);
    assert_eq!(k.krealloc(0, 0, GFP).unwrap(), ZERO_SIZE_PTR);
    assert!(m.take_log().is_empty());
}

/// GFP_DMA objects come from dma-kmalloc caches in ZONE_DMA; high memory has
/// no kernel address and is refused, as Linux refuses it.
#[test]
fn dma_and_highmem() {
    let m = boot("x86", 2 * G, 2, 1);
    let k = m.kmm();
    let p = k.kmalloc(100, GFP | GfpFlags::GFP_DMA).unwrap();
    assert_eq!(cache_name(k, p), "kmalloc-128");
    let c = k.kmalloc_slab(100, GfpFlags::GFP_DMA).unwrap();
    assert_eq!(k.kmem_cache_name(c).unwrap().as_str(), "dma-kmalloc-128");
    assert_eq!(k.page_zone(k.virt_to_page(p).unwrap()).name(), "DMA");
    let big = k.kmalloc(64 << 10, GFP | GfpFlags::GFP_DMA).unwrap();
    assert!(k.__pa(big).unwrap() < 16 * M);
    for gfp in [GfpFlags::GFP_HIGHUSER, GFP | GfpFlags::__GFP_HIGHMEM] {
        for size in [64, 64 << 10] {
            let e = k.kmalloc(size, gfp).unwrap_err();
            assert!(matches!(e, KmmError::InvalidGfp { .. }), "{e:?}");
        }
    }
    assert!(logged(&m.take_log(), "Unexpected gfp"));
    // Many allocations on a machine with high memory: all in low memory.
    let held: Vec<u64> = (0..2000)
        .map(|i| k.kmalloc(1 + i % 3000, GFP).unwrap())
        .collect();
    for &h in &held {
        assert!(!k.page_is_highmem(k.virt_to_page(h).unwrap()));
    }
    for h in held.into_iter().chain([p, big]) {
        k.kfree(h).unwrap();
    }
}

#[test]
fn kzalloc_kcalloc_krealloc() {
    kzalloc_kcalloc_krealloc_on(false);
}

/// The same through the fast paths of a thread that owns its CPU.
#[test]
fn kzalloc_kcalloc_krealloc_on_an_owned_cpu() {
    kzalloc_kcalloc_krealloc_on(true);
}

fn kzalloc_kcalloc_krealloc_on(owned: bool) {
    let m = boot("x86_64", 256 * M, 1, 1);
    let k = m.kmm();
    let _cpu = owned.then(|| m.cpus().bind(0).unwrap());
    let boot_free = k.nr_free_pages();
    // Dirty an object, free it: kzalloc gets it back zeroed.
    let p = k.kmalloc(200, GFP).unwrap();
    write(k, p, &[0xee; 256]);
    k.kfree(p).unwrap();
    let z = k.kzalloc(200, GFP).unwrap();
    assert_eq!(z, p);
    assert_eq!(read(k, z, 256), vec![0; 256], "the whole object is zeroed");
    // kcalloc
    let a = k.kcalloc(10, 8, GFP).unwrap();
    assert_eq!(k.ksize(a).unwrap(), 96);
    assert_eq!(read(k, a, 80), vec![0; 80]);
    assert!(matches!(
        k.kcalloc(usize::MAX / 2, 3, GFP),
        Err(KmmError::InvalidArgument { .. })
    ));
    // krealloc within the size class: the same object.
    write(k, z, b"hello, slab");
    let same = k.krealloc(z, 250, GFP).unwrap();
    assert_eq!(same, z);
    // Beyond it: a new object with the old contents; the old one is freed.
    let moved = k.krealloc(z, 3000, GFP).unwrap();
    assert_ne!(moved, z);
    assert_eq!(read(k, moved, 11), b"hello, slab");
    assert_eq!(k.ksize(moved).unwrap(), 4096);
    // Into a large allocation and back.
    let large = k.krealloc(moved, 100_000, GFP).unwrap();
    assert_eq!(read(k, large, 11), b"hello, slab");
    // A failed krealloc leaves the object alone.
    assert!(k
        .krealloc(large, usize::MAX, GFP | GfpFlags::__GFP_NOWARN)
        .is_err());
    assert_eq!(read(k, large, 11), b"hello, slab");
    // krealloc(p, 0) frees.
    assert_eq!(k.krealloc(large, 0, GFP).unwrap(), ZERO_SIZE_PTR);
    let fresh = k.krealloc(0, 40, GFP).unwrap();
    assert_eq!(k.ksize(fresh).unwrap(), 64);
    for x in [a, fresh] {
        k.kfree(x).unwrap();
    }
    back_to_boot(k, boot_free);
}

/// kfree of anything kmalloc did not return is reported and not obeyed.
#[test]
fn kfree_of_foreign_pointers() {
    kfree_of_foreign_pointers_on(false);
}

/// The same through the fast paths of a thread that owns its CPU.
#[test]
fn kfree_of_foreign_pointers_on_an_owned_cpu() {
    kfree_of_foreign_pointers_on(true);
}

fn kfree_of_foreign_pointers_on(owned: bool) {
    let m = boot("x86_64", 256 * M, 1, 1);
    let k = m.kmm();
    let _cpu = owned.then(|| m.cpus().bind(0).unwrap());
    let boot_free = k.nr_free_pages();
    let p = k.kmalloc(64, GFP).unwrap();
    let page = k.__get_free_page(GFP).unwrap();
    let free_before = k.nr_free_pages();
    let cases = [
        (page, "was not returned by kmalloc"),
        (p + 8, "Invalid object pointer"),
        (0x1234_5678, "is not a kernel direct-map address"),
        (
            k.page_address(k.pfn_to_page(0).unwrap()).unwrap() + 64,
            "was not returned by kmalloc",
        ),
    ];
    for (addr, msg) in cases {
        let before = k
            .events
            .slab_errors
            .load(std::sync::atomic::Ordering::Relaxed);
        let e = k.kfree(addr).unwrap_err();
        assert!(
            matches!(
                e,
                KmmError::BadObject { .. } | KmmError::InvalidAddress { .. }
            ),
            "{e:?}"
        );
        let log = m.take_log();
        assert!(logged(&log, msg), "kfree({addr:#x}): {log:#?}");
        assert!(
            k.events
                .slab_errors
                .load(std::sync::atomic::Ordering::Relaxed)
                > before
        );
    }
    assert_eq!(k.nr_free_pages(), free_before, "nothing was freed");
    assert!(k.virt_to_page(page).unwrap().page_count() == 1);
    k.free_page(page).unwrap();
    k.kfree(p).unwrap();
    back_to_boot(k, boot_free);
}

/// Debugging switched on for a kmalloc cache at run time.
#[test]
fn debugging_a_kmalloc_cache() {
    debugging_a_kmalloc_cache_on(false);
}

/// The same through the fast paths of a thread that owns its CPU.
#[test]
fn debugging_a_kmalloc_cache_on_an_owned_cpu() {
    debugging_a_kmalloc_cache_on(true);
}

fn debugging_a_kmalloc_cache_on(owned: bool) {
    let m = boot("x86_64", 256 * M, 1, 1);
    let k = m.kmm();
    let _cpu = owned.then(|| m.cpus().bind(0).unwrap());
    let c = k.kmalloc_slab(64, GFP).unwrap();
    k.kmem_cache_set_debug(c, SLAB_DEBUG_FLAGS).unwrap();
    let p = k.kmalloc(50, GFP).unwrap();
    // Write past the 64-byte object (kmalloc's slack is not a red zone).
    write(k, p + 64, &[0]);
    assert!(k.kfree(p).is_err());
    let log = m.take_log();
    assert!(
        logged(&log, "BUG kmalloc-64 (Not tainted): Redzone overwritten"),
        "{log:#?}"
    );
    assert!(
        logged(&log, "Allocated in crates/kmm-sim/tests/kmalloc.rs:"),
        "{log:#?}"
    );
    k.kfree(p).unwrap();
    assert!(k.kfree(p).is_err());
    assert!(logged(
        &m.take_log(),
        "BUG kmalloc-64 (Not tainted): Object already free"
    ));
    // Busy caches cannot change their layout.
    let q = k.kmalloc(64, GFP).unwrap();
    assert!(matches!(
        k.kmem_cache_set_debug(c, kmm::SlabFlags::empty()),
        Err(KmmError::CacheBusy { .. })
    ));
    k.kfree(q).unwrap();
    k.kmem_cache_set_debug(c, kmm::SlabFlags::empty()).unwrap();
    assert_eq!(k.kmem_cache_info(c).unwrap().size, 64);
}

/// Larger pages: more size classes, up to two pages.
#[test]
fn sixty_four_k_pages() {
    let mut cfg = config("x86_64", 512 * M, 2, 1);
    cfg.page_size = 64 << 10;
    let m = boot_cfg(cfg);
    let k = m.kmm();
    assert_eq!(k.kmalloc_max_cache_size(), 128 << 10);
    let p = k.kmalloc(100_000, GFP).unwrap();
    assert_eq!(cache_name(k, p), "kmalloc-128k");
    assert!(slabinfo(&m).contains("dma-kmalloc-128k"));
    let big = k.kmalloc(200_000, GFP).unwrap();
    assert_eq!(k.ksize(big).unwrap(), 256 << 10);
    assert_eq!(k.kmalloc_max_size(), (64 << 10) << 10);
    k.kfree(p).unwrap();
    k.kfree(big).unwrap();
}

/// Many threads, many sizes, across CPUs; then everything back.
#[test]
fn kmalloc_stress_across_cpus() {
    let m = boot("x86_64", 512 * M, 4, 2);
    let k = m.kmm();
    let boot_free = k.nr_free_pages();
    let results = m
        .cpus()
        .on_each_cpu(|cpu| {
            let mut rng = Rng(cpu as u64 * 77 + 5);
            let mut held: Vec<(u64, usize, u8)> = Vec::new();
            for i in 0..3000 {
                if held.is_empty() || rng.below(3) != 0 {
                    let size = match rng.below(10) {
                        0 => 8193 + rng.below(60_000) as usize,
                        _ => 1 + rng.below(4096) as usize,
                    };
                    let p = k.kmalloc(size, GFP).unwrap();
                    let tag = (i % 251) as u8;
                    write(k, p, &vec![tag; size]);
                    held.push((p, size, tag));
                } else {
                    let (p, size, tag) = held.swap_remove(rng.below(held.len() as u64) as usize);
                    assert!(
                        read(k, p, size).iter().all(|&b| b == tag),
                        "{p:#x} overwritten"
                    );
                    k.kfree(p).unwrap();
                }
            }
            held
        })
        .unwrap();
    let all: Vec<_> = results.into_iter().flatten().collect();
    let distinct: HashSet<u64> = all.iter().map(|h| h.0).collect();
    assert_eq!(distinct.len(), all.len());
    // Frees from another CPU than the one that allocated.
    m.cpus()
        .run_on_cpu(3, || {
            for (p, size, tag) in all {
                assert!(read(k, p, size).iter().all(|&b| b == tag));
                k.kfree(p).unwrap();
            }
        })
        .unwrap();
    assert!(!m
        .take_log()
        .iter()
        .any(|l| l.starts_with("BUG") || l.contains("WARNING")));
    back_to_boot(k, boot_free);
}
