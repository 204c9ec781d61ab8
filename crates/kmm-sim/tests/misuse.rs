//! Misuse of the page allocator is reported the way Linux reports it
//! ("BUG: Bad page state" with the page's details), returned as an error,
//! and leaves the allocator's state exactly as it was.

mod common;

use common::*;
use kmm::memblock::ReserveKind;
use kmm::{GfpFlags, KmmError, Page};
use kmm_sim::Machine;

const KERNEL: GfpFlags = GfpFlags::GFP_KERNEL;

/// Runs `misuse`, which must fail, and checks the report and that nothing
/// changed. Returns the error and the log lines.
fn reported(m: &Machine, misuse: impl FnOnce() -> Result<(), KmmError>) -> (KmmError, Vec<String>) {
    let k = m.kmm();
    let _ = m.take_log();
    let before = snapshot(k);
    let bad_before = k
        .events
        .bad_pages
        .load(std::sync::atomic::Ordering::Relaxed);
    let e = misuse().expect_err("misuse must be an error");
    let log = m.take_log();
    assert!(
        logged(&log, "BUG: Bad page state"),
        "{e:?} not reported: {log:#?}"
    );
    assert!(logged(&log, "page dumped because:"), "{log:#?}");
    assert_eq!(snapshot(k), before, "{e:?} changed the allocator");
    assert_eq!(
        k.events
            .bad_pages
            .load(std::sync::atomic::Ordering::Relaxed),
        bad_before + 1
    );
    (e, log)
}

fn pfn_of(k: &K, p: &Page) -> u64 {
    k.page_to_pfn(p).unwrap()
}

#[test]
fn double_free() {
    double_free_on(false);
}

/// The same through the fast paths of a thread that owns its CPU.
#[test]
fn double_free_on_an_owned_cpu() {
    double_free_on(true);
}

fn double_free_on(owned: bool) {
    let m = boot("x86_64", 128 * M, 1, 1);
    let k = m.kmm();
    let _cpu = owned.then(|| m.cpus().bind(0).unwrap());
    // Order 0: the first free put the page on the per-CPU list.
    let p = k.alloc_page(KERNEL).unwrap();
    let pfn = pfn_of(k, p);
    k.__free_page(p).unwrap();
    let (e, log) = reported(&m, || k.__free_page(p));
    assert!(matches!(e, KmmError::BadPageState { pfn: f, .. } if f == pfn));
    assert!(logged(&log, &format!("pfn:{pfn:05x}")), "{log:#?}");
    assert!(logged(&log, "page: refcount:0 mapcount:0"), "{log:#?}");
    // Once drained the page heads a buddy block (or was merged into one).
    k.drain_all_pages();
    reported(&m, || k.__free_page(p));
    reported(&m, || k.free_hot_page(p));
    // Order 3 straight to the buddy lists, and by address.
    let addr = k.__get_free_pages(KERNEL, 3).unwrap();
    k.free_pages(addr, 3).unwrap();
    reported(&m, || k.free_pages(addr, 3));
    // A block that stayed a buddy head is named as a double free.
    let q = k.alloc_pages(KERNEL, 10).unwrap();
    k.__free_pages(q, 10).unwrap();
    assert!(q.is_buddy());
    let (_, log) = reported(&m, || k.__free_pages(q, 10));
    assert!(logged(&log, "double free"), "{log:#?}");
    assert!(logged(&log, "buddy"), "flags are printed: {log:#?}");
    check_frames(k, &[]).unwrap();
}

#[test]
fn free_with_the_wrong_order() {
    free_with_the_wrong_order_on(false);
}

/// The same through the fast paths of a thread that owns its CPU.
#[test]
fn free_with_the_wrong_order_on_an_owned_cpu() {
    free_with_the_wrong_order_on(true);
}

fn free_with_the_wrong_order_on(owned: bool) {
    let m = boot("x86_64", 128 * M, 1, 1);
    let k = m.kmm();
    let _cpu = owned.then(|| m.cpus().bind(0).unwrap());
    let p = k.alloc_pages(KERNEL, 2).unwrap();
    let a = Alloc::of(k, p, 2, KERNEL);
    for wrong in [0, 1, 3, 10] {
        let (_, log) = reported(&m, || k.__free_pages(p, wrong));
        assert!(logged(&log, "page was allocated with order 2"), "{log:#?}");
        check_frames(k, &[a]).unwrap();
    }
    let addr = k.page_address(p).unwrap();
    reported(&m, || k.free_pages(addr, 1));
    reported(&m, || k.free_page(addr));
    k.__free_pages(p, 2).unwrap();
    check_frames(k, &[]).unwrap();
}

#[test]
fn freeing_reserved_pages() {
    let m = boot("x86_64", 128 * M, 1, 1);
    let k = m.kmm();
    let mb = k.memblock();
    for kind in [ReserveKind::KernelImage, ReserveKind::MemMap] {
        let r = mb
            .reserved
            .regions()
            .iter()
            .find(|r| r.kind == kind)
            .unwrap();
        let pfn = k.phys_pfn(r.base);
        let page = k.pfn_to_page(pfn).unwrap();
        assert!(page.is_reserved());
        let (e, log) = reported(&m, || k.__free_page(page));
        assert!(matches!(e, KmmError::BadPageState { pfn: f, .. } if f == pfn));
        assert!(logged(&log, "reserved"), "flags are printed: {log:#?}");
        reported(&m, || k.free_page(k.__va(k.pfn_phys(pfn)).unwrap()));
        reported(&m, || k.put_page(page));
        assert!(page.is_reserved(), "still reserved");
    }
    // The first page and the legacy hole below 1 MiB are reserved too.
    for pfn in [0, 0xa0, 0xff] {
        reported(&m, || k.__free_page(k.pfn_to_page(pfn).unwrap()));
    }
    check_frames(k, &[]).unwrap();
}

#[test]
fn freeing_a_tail_page() {
    freeing_a_tail_page_on(false);
}

/// The same through the fast paths of a thread that owns its CPU.
#[test]
fn freeing_a_tail_page_on_an_owned_cpu() {
    freeing_a_tail_page_on(true);
}

fn freeing_a_tail_page_on(owned: bool) {
    let m = boot("x86_64", 128 * M, 1, 1);
    let k = m.kmm();
    let _cpu = owned.then(|| m.cpus().bind(0).unwrap());
    let comp = KERNEL | GfpFlags::__GFP_COMP;
    let head = k.alloc_pages(comp, 2).unwrap();
    let a = Alloc::of(k, head, 2, comp);
    let tail = k.pfn_to_page(a.pfn + 1).unwrap();
    assert!(tail.is_tail());
    let (_, log) = reported(&m, || k.__free_page(tail));
    assert!(logged(&log, "tail"), "{log:#?}");
    reported(&m, || k.__free_pages(tail, 2));
    reported(&m, || k.put_page(tail));
    // Inside a non-compound block, too.
    let plain = k.alloc_pages(KERNEL, 2).unwrap();
    let b = Alloc::of(k, plain, 2, KERNEL);
    reported(&m, || k.__free_page(k.pfn_to_page(b.pfn + 2).unwrap()));
    check_frames(k, &[a, b]).unwrap();
    free_all(k, [a, b]);
    check_frames(k, &[]).unwrap();
}

/// A `struct page` of another machine is not in this one's `mem_map`.
#[test]
fn page_of_another_machine() {
    page_of_another_machine_on(false);
}

/// The same through the fast paths of a thread that owns its CPU.
#[test]
fn page_of_another_machine_on_an_owned_cpu() {
    page_of_another_machine_on(true);
}

fn page_of_another_machine_on(owned: bool) {
    let m1 = boot("x86_64", 128 * M, 1, 1);
    let m2 = boot("x86_64", 128 * M, 1, 1);
    let (k1, k2) = (m1.kmm(), m2.kmm());
    let _cpu = owned.then(|| m1.cpus().bind(0).unwrap());
    let p2 = k2.alloc_page(KERNEL).unwrap();
    let a2 = Alloc::of(k2, p2, 0, KERNEL);
    let theirs = snapshot(k2);
    reported(&m1, || k1.__free_page(p2));
    reported(&m1, || k1.free_hot_page(p2));
    assert!(k1.page_to_pfn(p2).is_err());
    assert_eq!(snapshot(k2), theirs);
    check_frames(k2, &[a2]).unwrap();
    check_frames(k1, &[]).unwrap();
    a2.free(k2).unwrap();
}

/// `free_pages()` of an address that is not in the direct map.
#[test]
fn free_pages_outside_the_direct_map() {
    let m = boot("x86_64", 128 * M, 1, 1);
    let k = m.kmm();
    let end = k.arch().page_offset + k.pfn_phys(k.max_pfn());
    for addr in [0x1000, 0x7fff_dead_b000, end, end + (1 << 30), !0xfff] {
        let (e, _) = reported(&m, || k.free_pages(addr, 0));
        assert!(matches!(e, KmmError::InvalidAddress { .. }), "{e:?}");
    }
    check_frames(k, &[]).unwrap();
}
