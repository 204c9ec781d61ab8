//! Property tests of the page-allocator invariants in DESIGN.md.
//!
//! Random sequences of allocations (every order, zone modifier and type flag,
//! hot/cold, zeroed, compound, on every node) and frees (`__free_pages`,
//! `free_pages` by address, `free_hot_page`, `free_cold_page`, `put_page`),
//! each on a random CPU, with per-CPU drains in between. After each step the
//! frame-state checker (`common::check_frames`) verifies that every frame is
//! in exactly one state and that the zone counters match the lists; at the
//! end everything is freed and the buddy lists must be exactly as they were
//! after boot (full coalescing).

mod common;

use common::*;
use kmm::{GfpFlags, MAX_ORDER};
use proptest::prelude::*;

/// The masks the sequences draw from; `__GFP_NOWARN` is added to all.
const MASKS: [GfpFlags; 14] = [
    GfpFlags::GFP_KERNEL,
    GfpFlags::GFP_ATOMIC,
    GfpFlags::GFP_NOWAIT,
    GfpFlags::GFP_NOIO,
    GfpFlags::GFP_NOFS,
    GfpFlags::GFP_USER,
    GfpFlags::GFP_HIGHUSER,
    GfpFlags::GFP_KERNEL.union(GfpFlags::GFP_DMA),
    GfpFlags::GFP_ATOMIC.union(GfpFlags::GFP_DMA),
    GfpFlags::GFP_KERNEL.union(GfpFlags::__GFP_DMA32),
    GfpFlags::GFP_KERNEL.union(GfpFlags::__GFP_HIGHMEM),
    GfpFlags::GFP_KERNEL.union(GfpFlags::__GFP_NORETRY),
    GfpFlags::GFP_KERNEL.union(GfpFlags::__GFP_REPEAT),
    GfpFlags::GFP_NOWAIT.union(GfpFlags::__GFP_HIGHMEM),
];

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        cpu: usize,
        node: usize,
        mask: usize,
        order: u32,
        cold: bool,
        zero: bool,
        comp: bool,
    },
    /// Frees the held allocation `pick % held.len()` in the way `how` says.
    Free {
        pick: usize,
        cpu: usize,
        how: u8,
    },
    Drain,
}

fn order() -> impl Strategy<Value = u32> {
    prop_oneof![6 => Just(0u32), 3 => 1u32..=3, 1 => 4u32..MAX_ORDER as u32]
}

fn op() -> impl Strategy<Value = Op> {
    let alloc = (
        0usize..8,
        0usize..8,
        0..MASKS.len(),
        order(),
        any::<bool>(),
        prop::bool::weighted(0.2),
        any::<bool>(),
    )
        .prop_map(|(cpu, node, mask, order, cold, zero, comp)| Op::Alloc {
            cpu,
            node,
            mask,
            order,
            cold,
            zero,
            comp,
        });
    let free = (any::<usize>(), 0usize..8, 0u8..5).prop_map(|(pick, cpu, how)| Op::Free {
        pick,
        cpu,
        how,
    });
    prop_oneof![10 => alloc, 8 => free, 1 => Just(Op::Drain)]
}

/// A word unique to the allocation, written at the start of each of its
/// pages (up to 8 of them) and checked again on free.
fn tag(a: &Alloc, page: u64) -> u64 {
    0x5a5a_0000_0000_0000 ^ (a.pfn << 8) ^ page
}

fn stamped_pages(a: &Alloc) -> u64 {
    (1u64 << a.order).min(8)
}

/// Runs `ops` on a freshly booted machine, checking the frame states every
/// `check_every` steps and full coalescing at the end.
fn run(
    arch: &str,
    ram: u64,
    cpus: usize,
    nodes: usize,
    check_every: usize,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let m = boot(arch, ram, cpus, nodes);
    let k = m.kmm();
    let boot_state = buddyinfo(k);
    let boot_free = k.nr_free_pages();
    check_frames(k, &[]).map_err(TestCaseError::fail)?;
    let mut held: Vec<Alloc> = Vec::new();
    let ps = k.page_size();

    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Alloc {
                cpu,
                node,
                mask,
                order,
                cold,
                zero,
                comp,
            } => {
                let _cpu = m.cpus().bind(cpu % cpus).expect("bind");
                let mut gfp = MASKS[mask] | GfpFlags::__GFP_NOWARN;
                if cold {
                    gfp |= GfpFlags::__GFP_COLD;
                }
                if zero {
                    gfp |= GfpFlags::__GFP_ZERO;
                }
                if comp {
                    gfp |= GfpFlags::__GFP_COMP;
                }
                let nid = node % nodes;
                if let Ok(page) = k.alloc_pages_node(nid, gfp, order) {
                    let a = Alloc::of(k, page, order, gfp);
                    let zidx = page.zone_idx();
                    let highest = k.arch().zone_index(gfp.validate().expect("valid mask"));
                    prop_assert!(
                        zidx <= highest,
                        "{gfp:?} got a page of zone {zidx}, above zone {highest}"
                    );
                    let phys = k.pfn_phys(a.pfn);
                    if zero && order <= 3 {
                        let mut buf = vec![0xffu8; (ps << order) as usize];
                        k.phys().read(phys, &mut buf).expect("read");
                        prop_assert!(buf.iter().all(|&b| b == 0), "__GFP_ZERO block not zero");
                    }
                    for i in 0..stamped_pages(&a) {
                        k.phys()
                            .write_u64(phys + i * ps, tag(&a, i))
                            .expect("write");
                    }
                    held.push(a);
                }
            }
            Op::Free { pick, cpu, how } => {
                if held.is_empty() {
                    continue;
                }
                let a = held.swap_remove(pick % held.len());
                let _cpu = m.cpus().bind(cpu % cpus).expect("bind");
                let phys = k.pfn_phys(a.pfn);
                for i in 0..stamped_pages(&a) {
                    let v = k.phys().read_u64(phys + i * ps).expect("read");
                    prop_assert_eq!(v, tag(&a, i), "contents of {:?} changed", a);
                }
                let page = a.page(k);
                let r = match (how, a.order) {
                    (1, _) => match k.page_address(page) {
                        Some(addr) => k.free_pages(addr, a.order),
                        None => k.__free_pages(page, a.order),
                    },
                    (2, 0) => k.free_hot_page(page),
                    (3, 0) => k.free_cold_page(page),
                    (4, _) => k.put_page(page),
                    _ => k.__free_pages(page, a.order),
                };
                prop_assert!(r.is_ok(), "freeing {:?}: {:?}", a, r);
            }
            Op::Drain => k.drain_all_pages(),
        }
        if (step + 1) % check_every == 0 {
            check_frames(k, &held)
                .map_err(|e| TestCaseError::fail(format!("after step {step} ({op:?}): {e}")))?;
        }
    }
    check_frames(k, &held).map_err(TestCaseError::fail)?;
    // Free what is left, spread over the CPUs.
    for (i, a) in held.iter().enumerate() {
        let _cpu = m.cpus().bind(i % cpus).expect("bind");
        prop_assert!(a.free(k).is_ok(), "freeing {:?}", a);
    }
    held.clear();
    free_all_and_check_coalesced(k, &mut held, &boot_state).map_err(TestCaseError::fail)?;
    prop_assert_eq!(k.nr_free_pages(), boot_free);
    prop_assert_eq!(k.nr_pcp_pages(), 0);
    Ok(())
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The checker itself must notice a leaked frame, a frame claimed twice and
/// an allocation recorded with the wrong order or compound state.
#[test]
fn checker_detects_violations() {
    let m = boot("x86_64", 128 * M, 1, 1);
    let k = m.kmm();
    let gfp = GfpFlags::GFP_KERNEL;
    let a = Alloc::of(k, k.alloc_pages(gfp, 2).unwrap(), 2, gfp);
    assert!(check_frames(k, &[a]).is_ok());
    let e = check_frames(k, &[]).unwrap_err();
    assert!(e.contains("leaked"), "{e}");
    let e = check_frames(k, &[a, a]).unwrap_err();
    assert!(e.contains("both"), "{e}");
    let wrong = Alloc { order: 1, ..a };
    assert!(check_frames(k, &[wrong]).is_err());
    let comp = Alloc { comp: true, ..a };
    assert!(check_frames(k, &[comp]).is_err());
    // A page on a per-CPU list claimed as allocated.
    let b = Alloc::of(k, k.alloc_page(gfp).unwrap(), 0, gfp);
    b.free(k).unwrap();
    assert!(check_frames(k, &[a, b]).is_err());
    // A free buddy block claimed as allocated.
    k.drain_all_pages();
    assert!(check_frames(k, &[a, b]).is_err());
    a.free(k).unwrap();
    check_frames(k, &[]).unwrap();
}

proptest! {
    #![proptest_config(config(64))]

    /// x86_64, 128 MiB: ZONE_DMA and ZONE_DMA32, two CPUs; checked after every step.
    #[test]
    fn frame_states_x86_64_128m(ops in prop::collection::vec(op(), 1..64)) {
        run("x86_64", 128 * M, 2, 1, 1, &ops)?;
    }
}

proptest! {
    #![proptest_config(config(32))]

    /// x86, 1 GiB: ZONE_DMA, ZONE_NORMAL and 128 MiB of ZONE_HIGHMEM.
    #[test]
    fn frame_states_x86_1g_highmem(ops in prop::collection::vec(op(), 1..48)) {
        run("x86", G, 2, 1, 8, &ops)?;
    }

    /// x86_64, 256 MiB on two NUMA nodes with four CPUs.
    #[test]
    fn frame_states_x86_64_two_nodes(ops in prop::collection::vec(op(), 1..64)) {
        run("x86_64", 256 * M, 4, 2, 2, &ops)?;
    }
}
