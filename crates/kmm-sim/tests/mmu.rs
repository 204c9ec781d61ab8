//! The software MMU: TLB coherence across CPUs against a reference model,
//! proof that the TLB caches (stale translations without a flush),
//! accessed/dirty bits, permission faults, global entries, statistics,
//! large pages, and shootdowns racing with lock-free TLB hits.

mod common;

use common::*;
use kmm::arch::pgtable_x86::X86_2LEVEL;
use kmm::arch::pgtable_x86_64::X86_64_4LEVEL;
use kmm::{GfpFlags, PageTable, PteFlags};
use kmm_sim::mmu::{
    Access, FaultKind, Mmu, TlbConfig, X86_PF_INSTR, X86_PF_PROT, X86_PF_USER, X86_PF_WRITE,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const ASID: u16 = 1;

/// A fresh zeroed 4 KiB page: its physical address.
fn page(k: &K) -> u64 {
    let va = k.get_zeroed_page(GfpFlags::GFP_KERNEL).unwrap();
    k.__pa(va).unwrap()
}

/// Writes a tag identifying `phys` at both ends of its page.
fn tag_page(k: &K, phys: u64, size: u64) {
    k.phys().write_u64(phys, tag(phys)).unwrap();
    k.phys().write_u64(phys + size - 8, !tag(phys)).unwrap();
}

fn tag(phys: u64) -> u64 {
    phys ^ 0x5a5a_0000_0000_0000
}

#[derive(Clone, Debug)]
enum Op {
    Map {
        slot: usize,
        page: usize,
        flags: u64,
    },
    Unmap(usize),
    Protect {
        slot: usize,
        flags: u64,
    },
    /// Warm one CPU's TLB with a load of a slot.
    Touch {
        cpu: usize,
        slot: usize,
    },
}

/// Virtual 4 KiB slots (user-ish low addresses and kernel vmalloc-like
/// addresses, same set index on purpose) and one 2 MiB slot at the end.
fn slots() -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = (0..6).map(|i| (0x4000_0000 + i * 16 * K4, K4)).collect();
    v.extend((0..6).map(|i| (0xffff_c900_0000_0000 + i * K4, K4)));
    v.push((0x8000_0000, M2));
    v
}

fn flags_of(bits: u64) -> PteFlags {
    PteFlags::from_bits_truncate(bits)
        & (PteFlags::WRITABLE | PteFlags::USER | PteFlags::GLOBAL | PteFlags::NO_EXEC)
}

fn op(nslots: usize, npages: usize, ncpus: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..nslots, 0..npages, any::<u64>())
            .prop_map(|(slot, page, flags)| Op::Map { slot, page, flags }),
        3 => (0..nslots).prop_map(Op::Unmap),
        2 => (0..nslots, any::<u64>()).prop_map(|(slot, flags)| Op::Protect { slot, flags }),
        3 => (0..ncpus, 0..nslots).prop_map(|(cpu, slot)| Op::Touch { cpu, slot }),
    ]
}

/// Every CPU's loads, stores and user loads at every slot agree with the model.
fn check_all(
    mmu: &Mmu<'_, kmm_sim::SimPlatform>,
    pt: &PageTable,
    model: &BTreeMap<usize, (u64, PteFlags)>,
    slots: &[(u64, u64)],
) -> Result<(), TestCaseError> {
    for cpu in 0..mmu.nr_cpus() {
        for (i, &(v, size)) in slots.iter().enumerate() {
            let got = mmu.read_u64(cpu, pt, ASID, v);
            let last = mmu.read_u64(cpu, pt, ASID, v + size - 8);
            let user = mmu.translate(cpu, pt, ASID, v + 16, Access::Read, true);
            let exec = mmu.translate(cpu, pt, ASID, v + 24, Access::Exec, false);
            match model.get(&i) {
                None => {
                    prop_assert!(
                        got.is_err_and(|f| f.is_not_present()),
                        "cpu{cpu} slot {i} {v:#x}: stale translation after unmap: {got:?}"
                    );
                    prop_assert!(last.is_err() && user.is_err() && exec.is_err());
                }
                Some(&(phys, flags)) => {
                    prop_assert_eq!(got, Ok(tag(phys)), "cpu{} slot {} {:#x}", cpu, i, v);
                    prop_assert_eq!(last, Ok(!tag(phys)));
                    if flags.contains(PteFlags::USER) {
                        prop_assert_eq!(user, Ok(phys + 16));
                    } else {
                        prop_assert!(user.is_err_and(|f| f.is_protection()));
                    }
                    if flags.contains(PteFlags::NO_EXEC) {
                        prop_assert!(exec.is_err_and(|f| f.is_protection()));
                    } else {
                        prop_assert_eq!(exec, Ok(phys + 24));
                    }
                    // A store of the value already there: allowed or not.
                    let w = mmu.write_u64(cpu, pt, ASID, v, tag(phys));
                    if flags.pte_write() {
                        prop_assert_eq!(w, Ok(()));
                    } else {
                        prop_assert!(
                            w.is_err_and(
                                |f| f.is_protection() && f.error_code == X86_PF_PROT | X86_PF_WRITE
                            ),
                            "cpu{cpu} slot {i}: stale writable entry after protect"
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

fn coherence(ncpus: usize, cases: u32) {
    let m = boot("x86_64", 256 * M, ncpus, 1);
    let k = m.kmm();
    let mmu = Mmu::for_machine(&m);
    let slots = slots();
    let small: Vec<u64> = (0..6).map(|_| page(k)).collect();
    for &p in &small {
        tag_page(k, p, K4);
    }
    let big: Vec<u64> = (0..2)
        .map(|_| {
            let va = k.__get_free_pages(GfpFlags::GFP_KERNEL, 9).unwrap();
            k.__pa(va).unwrap()
        })
        .collect();
    for &p in &big {
        tag_page(k, p, M2);
    }
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strat = proptest::collection::vec(op(slots.len(), small.len(), ncpus), 1..40);
    runner
        .run(&strat, |ops| {
            let mut pt = k.pgd_alloc(&X86_64_4LEVEL).unwrap();
            mmu.flush_tlb_all();
            let mut model: BTreeMap<usize, (u64, PteFlags)> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Map { slot, page, flags } => {
                        let (v, size) = slots[slot];
                        if model.contains_key(&slot) {
                            continue;
                        }
                        let phys = if size == K4 {
                            small[page]
                        } else {
                            big[page % big.len()]
                        };
                        let f = flags_of(flags);
                        pt.map(k, v, phys, size, f).unwrap();
                        // A new mapping needs no flush on x86 (no negative
                        // caching), but Linux flushes when replacing one.
                        model.insert(slot, (phys, f));
                    }
                    Op::Unmap(slot) => {
                        let (v, size) = slots[slot];
                        let was = pt.unmap(k, v).unwrap();
                        prop_assert_eq!(was.is_some(), model.remove(&slot).is_some());
                        mmu.flush_tlb_range(ASID, v, v + size);
                    }
                    Op::Protect { slot, flags } => {
                        let (v, size) = slots[slot];
                        let Some(e) = model.get_mut(&slot) else {
                            continue;
                        };
                        e.1 = flags_of(flags);
                        pt.protect(k, v, e.1).unwrap();
                        mmu.flush_tlb_range(ASID, v, v + size);
                    }
                    Op::Touch { cpu, slot } => {
                        let (v, _) = slots[slot];
                        let r = mmu.read_u64(cpu, &pt, ASID, v);
                        prop_assert_eq!(r.is_ok(), model.contains_key(&slot));
                    }
                }
                check_all(&mmu, &pt, &model, &slots)?;
            }
            for (v, _) in slots.iter() {
                pt.unmap(k, *v).unwrap();
            }
            k.pgd_free(pt).unwrap();
            Ok(())
        })
        .unwrap();
    let s = mmu.tlb_stats_all();
    assert!(s.iter().all(|s| s.hits > 0 && s.misses > 0));
    // The test thread is CPU 0: it sends, the others receive.
    assert!(s[0].shootdowns_sent > 0);
    assert!(s[1..].iter().all(|s| s.shootdowns_received > 0));
}

#[test]
fn tlb_coherence_two_cpus() {
    coherence(2, 64);
}

#[test]
fn tlb_coherence_four_cpus() {
    coherence(4, 32);
}

#[test]
fn tlb_coherence_three_cpus_small_tlb() {
    // A tiny 2-way TLB: evictions interleave with the flushes.
    let m = boot("x86_64", 128 * M, 3, 1);
    let k = m.kmm();
    let mmu = Mmu::new(
        k,
        TlbConfig {
            entries: 4,
            ways: 2,
            pcid: true,
        },
    )
    .unwrap();
    let mut pt = k.pgd_alloc(&X86_64_4LEVEL).unwrap();
    let pages: Vec<u64> = (0..8).map(|_| page(k)).collect();
    for &p in &pages {
        tag_page(k, p, K4);
    }
    let slots: Vec<(u64, u64)> = (0..8).map(|i| (0x10_0000 + i * K4, K4)).collect();
    let mut model = BTreeMap::new();
    for round in 0..40usize {
        let slot = (round * 5) % 8;
        let (v, size) = slots[slot];
        if model.remove(&slot).is_some() {
            pt.unmap(k, v).unwrap();
            mmu.flush_tlb_range(ASID, v, v + size);
        } else {
            let phys = pages[(round * 3) % 8];
            pt.map(k, v, phys, K4, PteFlags::WRITABLE).unwrap();
            model.insert(slot, (phys, PteFlags::WRITABLE));
        }
        check_all(&mmu, &pt, &model, &slots).unwrap();
        assert!(mmu.tlb_entries(round % 3) <= 4);
    }
}

#[test]
fn without_a_flush_the_stale_translation_is_visible() {
    let m = boot("x86_64", 128 * M, 2, 1);
    let k = m.kmm();
    let mmu = Mmu::for_machine(&m);
    let mut pt = k.pgd_alloc(&X86_64_4LEVEL).unwrap();
    let (a, b) = (page(k), page(k));
    tag_page(k, a, K4);
    tag_page(k, b, K4);
    let v = 0x7f00_0000_0000;
    pt.map(k, v, a, K4, PteFlags::WRITABLE).unwrap();
    for cpu in 0..2 {
        assert_eq!(mmu.read_u64(cpu, &pt, ASID, v), Ok(tag(a)));
    }
    // Unmapped in the tables, not flushed: both TLBs still translate.
    pt.unmap(k, v).unwrap();
    assert_eq!(pt.walk(k, v), None);
    for cpu in 0..2 {
        assert_eq!(mmu.read_u64(cpu, &pt, ASID, v), Ok(tag(a)), "cpu{cpu}");
    }
    // Remapped elsewhere, only CPU 0 invalidates: CPU 1 sees the old page.
    pt.map(k, v, b, K4, PteFlags::WRITABLE).unwrap();
    mmu.invlpg(0, v);
    assert_eq!(mmu.read_u64(0, &pt, ASID, v), Ok(tag(b)));
    assert_eq!(mmu.read_u64(1, &pt, ASID, v), Ok(tag(a)));
    // A shootdown fixes every CPU.
    mmu.flush_tlb_range(ASID, v, v + K4);
    assert_eq!(mmu.read_u64(1, &pt, ASID, v), Ok(tag(b)));
    // Write-protected without a flush: the cached dirty writable entry
    // still allows the store (as on hardware).
    mmu.write_u64(1, &pt, ASID, v + 8, 1).unwrap();
    pt.protect(k, v, PteFlags::empty()).unwrap();
    assert_eq!(mmu.write_u64(1, &pt, ASID, v + 8, 2), Ok(()));
    mmu.flush_tlb_range(ASID, v, v + K4);
    let f = mmu.write_u64(1, &pt, ASID, v + 8, 3).unwrap_err();
    assert!(f.is_protection());
    assert_eq!(mmu.read_u64(1, &pt, ASID, v + 8), Ok(2));
    pt.unmap(k, v).unwrap();
    k.pgd_free(pt).unwrap();
}

#[test]
fn walks_set_accessed_and_dirty() {
    let m = boot("x86_64", 128 * M, 1, 1);
    let k = m.kmm();
    let mmu = Mmu::for_machine(&m);
    let mut pt = k.pgd_alloc(&X86_64_4LEVEL).unwrap();
    let p = page(k);
    let v = 0x1234_5000;
    pt.map(k, v, p, K4, PteFlags::WRITABLE).unwrap();
    let flags = |pt: &PageTable| pt.walk(k, v).unwrap().flags;
    assert!(!flags(&pt).pte_young() && !flags(&pt).pte_dirty());
    assert_eq!(mmu.read_u64(0, &pt, ASID, v), Ok(0));
    assert!(flags(&pt).pte_young() && !flags(&pt).pte_dirty());
    let s = mmu.tlb_stats(0);
    assert_eq!((s.hits, s.misses, s.walks), (0, 1, 1));
    // A write hitting the clean entry walks again to set dirty.
    mmu.write_u64(0, &pt, ASID, v + 8, 7).unwrap();
    assert!(flags(&pt).pte_dirty());
    let s = mmu.tlb_stats(0);
    assert_eq!((s.hits, s.misses, s.walks), (1, 1, 2));
    // Now the entry is dirty: pure hits.
    mmu.write_u64(0, &pt, ASID, v + 16, 8).unwrap();
    assert_eq!(mmu.read_u64(0, &pt, ASID, v + 8), Ok(7));
    let s = mmu.tlb_stats(0);
    assert_eq!((s.hits, s.misses, s.walks), (3, 1, 2));
    // Cleared young is not set again by TLB hits (hardware only sets it on
    // a walk): Linux must flush after ptep_clear_flush_young.
    assert_eq!(pt.test_and_clear_young(k, v), Ok(true));
    mmu.read_u64(0, &pt, ASID, v).unwrap();
    assert!(!flags(&pt).pte_young());
    mmu.invlpg(0, v);
    mmu.read_u64(0, &pt, ASID, v).unwrap();
    assert!(flags(&pt).pte_young());
    pt.unmap(k, v).unwrap();
    k.pgd_free(pt).unwrap();
}

#[test]
fn permission_faults_like_x86() {
    let m = boot("x86_64", 128 * M, 1, 1);
    let k = m.kmm();
    let mmu = Mmu::for_machine(&m);
    let mut pt = k.pgd_alloc(&X86_64_4LEVEL).unwrap();
    let p = page(k);
    let ro = 0x40_0000;
    let sup = 0x40_1000;
    let nx = 0x40_2000;
    pt.map(k, ro, p, K4, PteFlags::USER).unwrap();
    pt.map(k, sup, p, K4, PteFlags::WRITABLE).unwrap();
    pt.map(
        k,
        nx,
        p,
        K4,
        PteFlags::WRITABLE | PteFlags::USER | PteFlags::NO_EXEC,
    )
    .unwrap();
    // Twice each: once on the walk, once on the TLB hit path.
    for _ in 0..2 {
        let f = mmu
            .translate(0, &pt, ASID, ro + 1, Access::Write, false)
            .unwrap_err();
        assert_eq!((f.addr, f.error_code), (ro + 1, X86_PF_PROT | X86_PF_WRITE));
        assert_eq!(f.kind, FaultKind::Page);
        assert!(f.to_string().contains("permissions violation"), "{f}");
        assert_eq!(
            mmu.translate(0, &pt, ASID, ro + 1, Access::Read, true),
            Ok(p + 1)
        );
        let f = mmu
            .translate(0, &pt, ASID, sup, Access::Read, true)
            .unwrap_err();
        assert_eq!(f.error_code, X86_PF_PROT | X86_PF_USER);
        assert_eq!(
            mmu.translate(0, &pt, ASID, sup, Access::Write, false),
            Ok(p)
        );
        let f = mmu
            .translate(0, &pt, ASID, nx, Access::Exec, true)
            .unwrap_err();
        assert_eq!(f.error_code, X86_PF_PROT | X86_PF_INSTR | X86_PF_USER);
        assert!(f.to_string().contains("user instruction fetch"), "{f}");
        assert_eq!(mmu.translate(0, &pt, ASID, nx, Access::Write, true), Ok(p));
    }
    // A failed write set no dirty bit.
    assert!(!pt.walk(k, ro).unwrap().flags.pte_dirty());
    let f = mmu
        .translate(0, &pt, ASID, 0x50_0000, Access::Write, true)
        .unwrap_err();
    assert_eq!(f.error_code, X86_PF_WRITE | X86_PF_USER);
    assert!(f.is_not_present());
    assert!(f.to_string().contains("not-present page"), "{f}");
    let f = mmu
        .translate(0, &pt, ASID, 0x8000_0000_0000_0000, Access::Read, false)
        .unwrap_err();
    assert_eq!(f.kind, FaultKind::NonCanonical);
    // A mapping of a frame outside RAM: the walk works, the load cannot.
    pt.map(k, 0x60_0000, 1 << 40, K4, PteFlags::empty())
        .unwrap();
    let f = mmu.read_u64(0, &pt, ASID, 0x60_0000).unwrap_err();
    assert_eq!(f.kind, FaultKind::BadPhys);
    for v in [ro, sup, nx, 0x60_0000] {
        pt.unmap(k, v).unwrap();
    }
    k.pgd_free(pt).unwrap();
}

#[test]
fn global_entries_survive_switch_mm() {
    for pcid in [false, true] {
        let m = boot("x86_64", 128 * M, 1, 1);
        let k = m.kmm();
        let mmu = Mmu::new(
            k,
            TlbConfig {
                pcid,
                ..TlbConfig::default()
            },
        )
        .unwrap();
        let mut pt = k.pgd_alloc(&X86_64_4LEVEL).unwrap();
        let (gp, np) = (page(k), page(k));
        tag_page(k, gp, K4);
        tag_page(k, np, K4);
        let g = 0xffff_c900_0000_0000;
        let n = 0x40_0000;
        pt.map(k, g, gp, K4, PteFlags::GLOBAL).unwrap();
        pt.map(k, n, np, K4, PteFlags::empty()).unwrap();
        mmu.switch_mm(0, 1);
        assert_eq!(mmu.read_u64(0, &pt, 1, g), Ok(tag(gp)));
        assert_eq!(mmu.read_u64(0, &pt, 1, n), Ok(tag(np)));
        // Take both out of the tables without a flush: only TLB entries
        // can still answer.
        pt.unmap(k, g).unwrap();
        pt.unmap(k, n).unwrap();
        mmu.switch_mm(0, 2);
        assert_eq!(mmu.current_asid(0), 2);
        assert_eq!(mmu.read_u64(0, &pt, 2, g), Ok(tag(gp)), "pcid {pcid}");
        // The non-global entry belongs to address space 1: gone (no tags)
        // or not matching (tags).
        assert!(mmu.read_u64(0, &pt, 2, n).unwrap_err().is_not_present());
        mmu.switch_mm(0, 1);
        let back = mmu.read_u64(0, &pt, 1, n);
        if pcid {
            assert_eq!(back, Ok(tag(np)), "tagged entry kept across switches");
        } else {
            assert!(back.is_err());
        }
        // flush_tlb_local keeps the global entry; flush_tlb_all does not.
        mmu.flush_tlb_local(0);
        assert_eq!(mmu.read_u64(0, &pt, 1, g), Ok(tag(gp)));
        mmu.flush_tlb_all();
        assert!(mmu.read_u64(0, &pt, 1, g).is_err());
        assert_eq!(mmu.tlb_stats(0).switches, 3);
        k.pgd_free(pt).unwrap();
    }
}

#[test]
fn statistics_count_hits_misses_and_ipis() {
    let m = boot("x86_64", 128 * M, 4, 1);
    let k = m.kmm();
    let mmu = Mmu::for_machine(&m);
    let mut pt = k.pgd_alloc(&X86_64_4LEVEL).unwrap();
    let p = page(k);
    let v = 0x7000_0000;
    pt.map(k, v, p, K4, PteFlags::WRITABLE).unwrap();
    for i in 0..10 {
        mmu.read_u64(1, &pt, ASID, v + i * 8).unwrap();
    }
    let s = mmu.tlb_stats(1);
    assert_eq!((s.hits, s.misses, s.walks), (9, 1, 1));
    // A shootdown from CPU 2 (run there): three IPIs sent, one received each.
    m.cpus()
        .run_on_cpu(2, || mmu.flush_tlb_range(ASID, v, v + K4))
        .unwrap();
    let s = mmu.tlb_stats_all();
    assert_eq!(s[2].shootdowns_sent, 3);
    assert_eq!(s[2].shootdowns_received, 0);
    for c in [0, 1, 3] {
        assert_eq!(s[c].shootdowns_received, 1, "cpu{c}");
        assert_eq!(s[c].shootdowns_sent, 0);
    }
    assert!(s.iter().all(|s| s.invlpg == 1));
    mmu.read_u64(1, &pt, ASID, v).unwrap();
    assert_eq!(mmu.tlb_stats(1).misses, 2);
    // A long range flushes whole TLBs (tlb_single_page_flush_ceiling).
    mmu.flush_tlb_range(ASID, 0, 1 << 30);
    let s = mmu.tlb_stats_all();
    assert!(s.iter().all(|s| s.flushes == 1));
    assert_eq!(s[0].shootdowns_sent, 3, "the main thread is CPU 0");
    mmu.invlpg(3, v);
    mmu.flush_tlb_local(3);
    let text = mmu.show_tlb_stats();
    assert!(text.contains("cpu1 tlb_hits 9\n"), "{text}");
    assert!(text.contains("cpu1 tlb_misses 2\n"), "{text}");
    assert!(text.contains("cpu2 nr_tlb_remote_flush 3\n"), "{text}");
    assert!(text.contains("cpu3 nr_tlb_local_flush_one 2\n"), "{text}");
    assert!(text.contains("cpu3 nr_tlb_local_flush_all 2\n"), "{text}");
    assert!(
        text.contains("cpu0 nr_tlb_remote_flush_received 1\n"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 4 * 8);
    pt.unmap(k, v).unwrap();
    k.pgd_free(pt).unwrap();
}

#[test]
fn large_pages_are_one_entry() {
    let m = boot("x86_64", 128 * M, 1, 1);
    let k = m.kmm();
    let mmu = Mmu::for_machine(&m);
    let mut pt = k.pgd_alloc(&X86_64_4LEVEL).unwrap();
    let va = k.__get_free_pages(GfpFlags::GFP_KERNEL, 9).unwrap();
    let p = k.__pa(va).unwrap();
    let v = 0xffff_8880_4000_0000;
    pt.map(k, v, p, M2, PteFlags::WRITABLE | PteFlags::GLOBAL)
        .unwrap();
    for i in 0..512 {
        mmu.write_u64(0, &pt, ASID, v + i * K4 + 8, i).unwrap();
    }
    for i in 0..512 {
        assert_eq!(k.phys().read_u64(p + i * K4 + 8), Ok(i));
        assert_eq!(mmu.read_u64(0, &pt, ASID, v + i * K4 + 8), Ok(i));
    }
    assert_eq!(mmu.tlb_entries(0), 1);
    let s = mmu.tlb_stats(0);
    // One miss, one dirty walk (first write hit the clean entry? no: the
    // first write walked as a write and set dirty at once).
    assert_eq!((s.misses, s.walks, s.hits), (1, 1, 1023));
    // invlpg anywhere inside drops the whole large entry.
    mmu.invlpg(0, v + 300 * K4);
    assert_eq!(mmu.tlb_entries(0), 0);
    pt.unmap(k, v).unwrap();
    k.pgd_free(pt).unwrap();
    k.free_pages(va, 9).unwrap();
}

#[test]
fn four_mib_pages_on_two_level_x86() {
    let m = boot("x86", 128 * M, 1, 1);
    let k = m.kmm();
    let mmu = Mmu::for_machine(&m);
    let mut pt = k.pgd_alloc(&X86_2LEVEL).unwrap();
    let big = 4 << 20;
    let va = k.__get_free_pages(GfpFlags::GFP_KERNEL, 10).unwrap();
    let p = k.__pa(va).unwrap();
    // Buddy blocks are naturally aligned: an order-10 block is 4 MiB aligned.
    assert_eq!(p % big, 0);
    let v = 0xc800_0000;
    pt.map(k, v, p, big, PteFlags::WRITABLE).unwrap();
    mmu.write_u64(0, &pt, ASID, v + big - 8, 42).unwrap();
    assert_eq!(mmu.read_u64(0, &pt, ASID, v + big - 8), Ok(42));
    assert_eq!(mmu.read_u64(0, &pt, ASID, v + 8), Ok(0));
    assert_eq!(mmu.tlb_entries(0), 1);
    assert!(mmu.read_u64(0, &pt, ASID, v + big).is_err());
    pt.unmap(k, v).unwrap();
    k.pgd_free(pt).unwrap();
    k.free_pages(va, 10).unwrap();
}

#[test]
fn accesses_crossing_pages() {
    let m = boot("x86_64", 128 * M, 1, 1);
    let k = m.kmm();
    let mmu = Mmu::for_machine(&m);
    let mut pt = k.pgd_alloc(&X86_64_4LEVEL).unwrap();
    let (a, b) = (page(k), page(k));
    let v = 0x10_0000;
    // Virtually adjacent, physically in reverse order of allocation.
    pt.map(k, v, b, K4, PteFlags::WRITABLE).unwrap();
    pt.map(k, v + K4, a, K4, PteFlags::WRITABLE).unwrap();
    let x = 0x0807_0605_0403_0201u64;
    mmu.write_u64(0, &pt, ASID, v + K4 - 3, x).unwrap();
    let mut lo = [0u8; 3];
    let mut hi = [0u8; 5];
    k.phys().read(b + K4 - 3, &mut lo).unwrap();
    k.phys().read(a, &mut hi).unwrap();
    assert_eq!(lo, [1, 2, 3]);
    assert_eq!(hi, [4, 5, 6, 7, 8]);
    assert_eq!(mmu.read_u64(0, &pt, ASID, v + K4 - 3), Ok(x));
    // A bulk copy over both pages.
    let data: Vec<u8> = (0..6000u32).map(|i| i as u8).collect();
    mmu.write(0, &pt, ASID, v + 100, &data).unwrap();
    let mut back = vec![0u8; 6000];
    mmu.read(0, &pt, ASID, v + 100, &mut back).unwrap();
    assert_eq!(back, data);
    // A store running into an unmapped page faults there and writes nothing.
    let end = v + 2 * K4;
    let before = k.phys().read_u64(a + K4 - 8).unwrap();
    let f = mmu.write_u64(0, &pt, ASID, end - 4, u64::MAX).unwrap_err();
    assert_eq!(f.addr, end);
    assert!(f.is_not_present());
    assert_eq!(k.phys().read_u64(a + K4 - 8), Ok(before));
    let mut one = [0u8; 2];
    assert!(mmu.read(0, &pt, ASID, end - 1, &mut one).is_err());
    pt.unmap(k, v).unwrap();
    pt.unmap(k, v + K4).unwrap();
    k.pgd_free(pt).unwrap();
}

#[test]
fn set_associative_lru_replacement() {
    let m = boot("x86_64", 128 * M, 1, 1);
    let k = m.kmm();
    assert!(Mmu::new(
        k,
        TlbConfig {
            entries: 12,
            ways: 4,
            pcid: true
        }
    )
    .is_err());
    // 8 entries, 2 ways: 4 sets; pages 4 apart share a set.
    let mmu = Mmu::new(
        k,
        TlbConfig {
            entries: 8,
            ways: 2,
            pcid: true,
        },
    )
    .unwrap();
    let mut pt = k.pgd_alloc(&X86_64_4LEVEL).unwrap();
    let p = page(k);
    let v = |i: u64| 0x20_0000 + i * 4 * K4;
    for i in 0..3 {
        pt.map(k, v(i), p, K4, PteFlags::empty()).unwrap();
    }
    let misses = || mmu.tlb_stats(0).misses;
    mmu.read_u64(0, &pt, ASID, v(0)).unwrap();
    mmu.read_u64(0, &pt, ASID, v(1)).unwrap();
    mmu.read_u64(0, &pt, ASID, v(0)).unwrap(); // 0 is now most recent
    assert_eq!(misses(), 2);
    mmu.read_u64(0, &pt, ASID, v(2)).unwrap(); // evicts 1
    assert_eq!(misses(), 3);
    mmu.read_u64(0, &pt, ASID, v(0)).unwrap();
    assert_eq!(misses(), 3, "page 0 stayed");
    mmu.read_u64(0, &pt, ASID, v(1)).unwrap();
    assert_eq!(misses(), 4, "page 1 was evicted");
    assert_eq!(mmu.tlb_entries(0), 2);
    for i in 0..3 {
        pt.unmap(k, v(i)).unwrap();
    }
    k.pgd_free(pt).unwrap();
}

#[test]
fn concurrent_translations_on_cpu_threads() {
    let m = boot("x86_64", 128 * M, 4, 1);
    let k = m.kmm();
    let mmu = Mmu::for_machine(&m);
    let mut pt = k.pgd_alloc(&X86_64_4LEVEL).unwrap();
    let pages: Vec<u64> = (0..16).map(|_| page(k)).collect();
    for (i, &p) in pages.iter().enumerate() {
        tag_page(k, p, K4);
        pt.map(k, 0x30_0000 + i as u64 * K4, p, K4, PteFlags::WRITABLE)
            .unwrap();
    }
    let pt = &pt;
    let sums = m
        .cpus()
        .on_each_cpu(|cpu| {
            let mut ok = 0;
            for round in 0..200u64 {
                let i = (round * 7 + cpu as u64) % 16;
                if mmu.read_u64(cpu, pt, ASID, 0x30_0000 + i * K4) == Ok(tag(pages[i as usize])) {
                    ok += 1;
                }
            }
            ok
        })
        .unwrap();
    assert_eq!(sums, vec![200; 4]);
    assert!(mmu.tlb_stats_all().iter().all(|s| s.misses == 16));
}

#[test]
fn shootdown_racing_with_hits_leaves_no_stale_translation() {
    // CPU 1 loads from `v` in a loop (TLB hits, lock-free) while CPU 0
    // remaps `v` to the next of four pages and shoots the old translation
    // down, then publishes the generation. A load that began after
    // generation `g` was published may see the page of `g` or of a later
    // generation, never an earlier one.
    const PAGES: usize = 4;
    const ROUNDS: usize = 3000;
    let m = boot("x86_64", 128 * M, 2, 1);
    let k = m.kmm();
    let mmu = Mmu::for_machine(&m);
    let pages: Vec<u64> = (0..PAGES).map(|_| page(k)).collect();
    for &p in &pages {
        tag_page(k, p, K4);
    }
    let v = 0x5000_0000;
    let mut pt = k.pgd_alloc(&X86_64_4LEVEL).unwrap();
    pt.map(k, v, pages[0], K4, PteFlags::WRITABLE).unwrap();
    let pt = RwLock::new(pt);
    let generation = AtomicU64::new(0);
    let (started, done) = (AtomicBool::new(false), AtomicBool::new(false));
    let (loads, checked, stale) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            m.cpus()
                .run_on_cpu(1, || {
                    let (mut loads, mut checked, mut stale) = (0u64, 0u64, Vec::new());
                    // Keep loading for a while after the writer is done
                    // (hits, whatever the scheduler did meanwhile).
                    let mut after = 0;
                    while after < 1000 {
                        if done.load(Ordering::Acquire) {
                            after += 1;
                        }
                        let g0 = generation.load(Ordering::Acquire);
                        let got = {
                            let pt = pt.read().unwrap();
                            mmu.read_u64(1, &pt, ASID, v)
                        };
                        let g1 = generation.load(Ordering::Acquire);
                        loads += 1;
                        started.store(true, Ordering::Release);
                        // A remap to generation g1 + 1 may be under way.
                        let live = g0..=g1 + 1;
                        if live.clone().count() < PAGES {
                            checked += 1;
                            let fresh = live.map(|n| tag(pages[n as usize % PAGES]));
                            if !fresh.into_iter().any(|t| got == Ok(t)) {
                                stale.push((g0, g1, got));
                            }
                        }
                    }
                    (loads, checked, stale)
                })
                .unwrap()
        });
        // Wait for the reader to run (a busy host may start it late).
        while !started.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        for n in 1..=ROUNDS {
            {
                let mut pt = pt.write().unwrap();
                pt.unmap(k, v).unwrap();
                pt.map(k, v, pages[n % PAGES], K4, PteFlags::WRITABLE)
                    .unwrap();
            }
            mmu.flush_tlb_range(ASID, v, v + K4);
            generation.store(n as u64, Ordering::Release);
            // Give CPU 1 time to miss once and hit the new entry.
            for _ in 0..500 {
                std::hint::spin_loop();
            }
        }
        done.store(true, Ordering::Release);
        reader.join().unwrap()
    });
    assert!(stale.is_empty(), "stale loads (g0, g1, value): {stale:x?}");
    assert!(checked > 0 && loads > 0);
    let s = mmu.tlb_stats(1);
    assert!(s.hits > 0, "the loads never hit the TLB: {s:?}");
    assert_eq!(s.shootdowns_received, ROUNDS as u64);
    let mut pt = pt.into_inner().unwrap();
    pt.unmap(k, v).unwrap();
    k.pgd_free(pt).unwrap();
}

#[test]
fn invalidations_racing_with_hits_never_tear_an_entry() {
    // A stress test of the lock-free lookup against writers: CPU 1 loads
    // from `v` in a loop while CPU 0 invalidates CPU 1's entry for `v` over
    // and over (and CPU 1 refills it). Every load must return the page's
    // own words, never a mix of an old key and a cleared value. (Such a mix
    // needs both stores of an invalidation to land between two loads of a
    // lookup, so a broken seqlock is caught only by chance.)
    const INVALIDATIONS: usize = 100_000;
    let m = boot("x86_64", 128 * M, 2, 1);
    let k = m.kmm();
    let mmu = Mmu::for_machine(&m);
    let p = page(k);
    tag_page(k, p, K4);
    let v = 0x6000_0000;
    let mut pt = k.pgd_alloc(&X86_64_4LEVEL).unwrap();
    pt.map(k, v, p, K4, PteFlags::WRITABLE).unwrap();
    let (started, done) = (AtomicBool::new(false), AtomicBool::new(false));
    let (loads, bad) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            m.cpus()
                .run_on_cpu(1, || {
                    let (mut loads, mut bad) = (0u64, Vec::new());
                    // Keep loading for a while after the writer is done
                    // (hits, whatever the scheduler did meanwhile).
                    let mut after = 0;
                    while after < 1000 {
                        if done.load(Ordering::Acquire) {
                            after += 1;
                        }
                        let got = mmu.read_u64(1, &pt, ASID, v + 8 * (loads % 4));
                        let want = if loads % 4 == 0 { tag(p) } else { 0 };
                        if got != Ok(want) && bad.len() < 10 {
                            bad.push((loads, got));
                        }
                        loads += 1;
                        started.store(true, Ordering::Release);
                    }
                    (loads, bad)
                })
                .unwrap()
        });
        // Wait for the reader to run (a busy host may start it late).
        while !started.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        for _ in 0..INVALIDATIONS {
            mmu.invlpg(1, v);
        }
        done.store(true, Ordering::Release);
        reader.join().unwrap()
    });
    assert!(bad.is_empty(), "bad loads out of {loads}: {bad:x?}");
    assert!(mmu.tlb_stats(1).hits > 0);
    pt.unmap(k, v).unwrap();
    k.pgd_free(pt).unwrap();
}
