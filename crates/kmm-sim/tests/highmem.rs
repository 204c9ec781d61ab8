//! High memory (`mm/highmem.c`, `arch/x86/mm/highmem_32.c`): permanent
//! kmaps in the pkmap area (shared slots, sleeping when the pool is full,
//! the wrap-around flush), `kmap_atomic` in the per-CPU fixmap slots
//! (preemption and page faults disabled, strict stack order, `KM_MAX_IDX`
//! deep), `page_address` of a kmapped page, on x86 two-level and PAE; on
//! x86_64 every page is low memory and both return its direct-map address.

mod common;

use common::*;
use kmm::{GfpFlags, KmmError, Page, PteFlags};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

const PS: u64 = 4096;
const HIGH: GfpFlags = GfpFlags::GFP_HIGHUSER;
const KERNEL: GfpFlags = GfpFlags::GFP_KERNEL;
/// `KM_MAX_IDX`.
const KM_MAX: usize = 16;
/// `FIXADDR_TOP` on 32-bit x86.
const FIXADDR_TOP: u64 = 0xffff_f000;
/// `FIX_KMAP_BEGIN`: the first kmap_atomic fixmap slot.
const FIX_KMAP_BEGIN: u64 = 66;

/// The x86 machines with high memory: two-level (1024 pkmaps) and PAE (512).
const X86_MACHINES: [(u64, usize); 2] = [(2 * G, 1024), (6 * G, 512)];

fn high_page(k: &K) -> &Page {
    let p = k.alloc_page(HIGH).unwrap();
    assert!(k.page_is_highmem(p));
    p
}

fn phys(k: &K, p: &Page) -> u64 {
    k.page_to_phys(p).unwrap()
}

/// Where the kernel page table maps `virt`, if anywhere.
fn translate(k: &K, virt: u64) -> Option<u64> {
    k.swapper_pg_dir().unwrap().walk(k, virt).map(|t| t.phys)
}

fn vread_vec(k: &K, addr: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    k.vread(addr, &mut b).unwrap();
    b
}

fn phys_read(k: &K, at: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    k.phys().read(at, &mut b).unwrap();
    b
}

/// `__fix_to_virt(FIX_KMAP_BEGIN + idx + KM_MAX_IDX * cpu)`, from the
/// constants of `asm/fixmap.h`.
fn fixmap_kmap(cpu: usize, idx: usize) -> u64 {
    FIXADDR_TOP - (FIX_KMAP_BEGIN + (idx + KM_MAX * cpu) as u64) * PS
}

fn in_pkmap(k: &K, addr: u64) -> bool {
    let l = k.kernel_layout();
    (l.pkmap_base..l.pkmap_base + l.last_pkmap as u64 * PS).contains(&addr)
}

// ------------------------------------------------------------------- kmap

/// kmap of a highmem page: a pkmap address, which `page_address` returns
/// while the page is mapped; the mapping reaches the page's frame.
#[test]
fn kmap_gives_a_pkmap_address() {
    for (ram, slots) in X86_MACHINES {
        let m = boot("x86", ram, 2, 1);
        let k = m.kmm();
        let l = *k.kernel_layout();
        assert_eq!(k.pkmap_stats().slots, slots);
        let p = high_page(k);
        assert_eq!(k.page_address(p), None);
        assert!(k.__va(phys(k, p)).is_err());
        let a = k.kmap(p).unwrap();
        // Linux starts the search after slot 0 (last_pkmap_nr is advanced
        // first).
        assert_eq!(a, l.pkmap_base + PS, "{}M", ram >> 20);
        assert_eq!(a, l.pkmap_addr(1, PS));
        assert!(in_pkmap(k, a));
        assert!(!k.is_vmalloc_addr(a));
        assert_eq!(k.page_address(p), Some(a));
        let t = k.swapper_pg_dir().unwrap().walk(k, a).unwrap();
        assert_eq!((t.phys, t.size), (phys(k, p), PS));
        assert!(t.flags.contains(PteFlags::WRITABLE | PteFlags::GLOBAL));
        let st = k.pkmap_stats();
        assert_eq!(
            (st.in_use, st.unused_mapped, st.waits, st.flushes),
            (1, 0, 0, 0)
        );
        // Bytes through the kmap are the page's.
        k.vwrite(a + 100, b"kmapped").unwrap();
        assert_eq!(phys_read(k, phys(k, p) + 100, 7), b"kmapped");
        k.phys().write(phys(k, p) + 4000, b"direct").unwrap();
        assert_eq!(vread_vec(k, a + 4000, 6), b"direct");
        // A second page gets the next slot.
        let q = high_page(k);
        let b = k.kmap(q).unwrap();
        assert_eq!(b, l.pkmap_addr(2, PS));
        assert_eq!(k.pkmap_stats().in_use, 2);
        // kunmap: the slot keeps its mapping (count 1) until the next flush,
        // so page_address still answers and a new kmap reuses it.
        k.kunmap(p).unwrap();
        let st = k.pkmap_stats();
        assert_eq!((st.in_use, st.unused_mapped), (1, 1));
        assert_eq!(k.page_address(p), Some(a));
        assert_eq!(translate(k, a), Some(phys(k, p)));
        assert_eq!(k.kmap(p).unwrap(), a);
        assert_eq!(k.pkmap_stats().in_use, 2);
        k.kunmap(p).unwrap();
        k.kunmap(q).unwrap();
        k.__free_pages(p, 0).unwrap();
        k.__free_pages(q, 0).unwrap();
        assert!(m.take_log().is_empty());
    }
}

/// The same page kmapped twice shares its slot; each kmap needs a kunmap,
/// and one more is Linux's BUG in kunmap_high: reported and refused.
#[test]
fn kmap_twice_shares_the_slot() {
    for (ram, _) in X86_MACHINES {
        let m = boot("x86", ram, 2, 1);
        let k = m.kmm();
        let p = high_page(k);
        let a = k.kmap(p).unwrap();
        // From another CPU too.
        let b = m.cpus().run_on_cpu(1, || k.kmap(p).unwrap()).unwrap();
        assert_eq!(a, b);
        assert_eq!(k.pkmap_stats().in_use, 1);
        k.kunmap(p).unwrap();
        assert_eq!(k.pkmap_stats().in_use, 1, "one user left");
        assert_eq!(k.page_address(p), Some(a));
        k.kunmap(p).unwrap();
        let st = k.pkmap_stats();
        assert_eq!((st.in_use, st.unused_mapped), (0, 1));
        let e = k.kunmap(p).unwrap_err();
        assert_eq!(e, KmmError::NotMapped { virt: phys(k, p) });
        let log = m.take_log();
        let want = format!("kunmap of pfn {:#x}, which is not kmapped", phys(k, p) / PS);
        assert!(logged(&log, "kernel BUG at mm/highmem.rs"), "{log:#?}");
        assert!(logged(&log, &want), "{log:#?}");
        let st = k.pkmap_stats();
        assert_eq!((st.in_use, st.unused_mapped), (0, 1), "nothing changed");
    }
}

/// kunmap of a highmem page nobody kmapped is refused and changes nothing.
#[test]
fn kunmap_of_a_page_never_kmapped() {
    for (ram, _) in X86_MACHINES {
        let m = boot("x86", ram, 1, 1);
        let k = m.kmm();
        let held = high_page(k);
        let a = k.kmap(held).unwrap();
        let p = high_page(k);
        let before = k.pkmap_stats();
        assert!(matches!(k.kunmap(p), Err(KmmError::NotMapped { .. })));
        assert!(logged(&m.take_log(), "kernel BUG at mm/highmem.rs"));
        assert_eq!(k.pkmap_stats(), before);
        assert_eq!(k.page_address(held), Some(a));
        assert_eq!(k.page_address(p), None);
        k.kunmap(held).unwrap();
    }
}

/// A low-memory page needs no kmap: kmap returns its direct-map address and
/// uses no slot; kunmap of it is a no-op.
#[test]
fn kmap_of_lowmem_is_the_direct_map() {
    for (ram, _) in X86_MACHINES {
        let m = boot("x86", ram, 1, 1);
        let k = m.kmm();
        let p = k.alloc_page(KERNEL).unwrap();
        assert!(!k.page_is_highmem(p));
        let a = k.kmap(p).unwrap();
        assert_eq!(a, 0xc000_0000 + phys(k, p));
        assert_eq!(Some(a), k.page_address(p));
        assert_eq!(k.__pa(a).unwrap(), phys(k, p));
        assert_eq!(k.pkmap_stats().in_use, 0);
        k.kunmap(p).unwrap();
        k.kunmap(p).unwrap();
        assert_eq!(k.pkmap_stats().unused_mapped, 0);
        assert!(m.take_log().is_empty());
    }
}

/// With every slot held by a different page, kmap on another CPU sleeps
/// until this one kunmaps a page, then gets that page's slot (after the
/// wrap-around flush unmaps it).
#[test]
fn kmap_sleeps_while_the_pool_is_full() {
    for (ram, slots) in X86_MACHINES {
        let m = boot("x86", ram, 2, 1);
        let k = m.kmm();
        let _cpu0 = m.cpus().bind(0).unwrap();
        let pages: Vec<&Page> = (0..=slots).map(|_| high_page(k)).collect();
        let addrs: Vec<u64> = pages[..slots].iter().map(|p| k.kmap(p).unwrap()).collect();
        let mut sorted = addrs.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), slots, "every slot used once");
        assert!(addrs.iter().all(|&a| in_pkmap(k, a)));
        let st = k.pkmap_stats();
        assert_eq!((st.in_use, st.unused_mapped, st.waits), (slots, 0, 0));
        let victim = 7;
        let last = pages[slots];
        let done = AtomicBool::new(false);
        let got = std::thread::scope(|s| {
            let h = s.spawn(|| {
                let _cpu1 = m.cpus().bind(1).unwrap();
                let a = k.kmap(last).unwrap();
                done.store(true, Relaxed);
                a
            });
            // Wait until the other CPU found the pool full.
            let t0 = Instant::now();
            while k.pkmap_stats().waits == 0 {
                assert!(t0.elapsed() < Duration::from_secs(5), "kmap never waited");
                std::thread::yield_now();
            }
            std::thread::sleep(Duration::from_millis(20));
            assert!(!done.load(Relaxed), "kmap returned with the pool full");
            assert!(!h.is_finished());
            k.kunmap(pages[victim]).unwrap();
            h.join().unwrap()
        });
        assert!(done.load(Relaxed));
        let st = k.pkmap_stats();
        assert!(st.waits > 0);
        assert_eq!(got, addrs[victim], "the only slot that became free");
        assert_eq!(st.flushes, 1, "the freed slot was flushed before reuse");
        assert_eq!((st.in_use, st.unused_mapped), (slots, 0));
        assert_eq!(k.page_address(pages[victim]), None);
        assert_eq!(k.page_address(last), Some(got));
        assert_eq!(translate(k, got), Some(phys(k, last)));
        for p in pages
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != victim)
            .map(|(_, p)| p)
        {
            k.kunmap(p).unwrap();
        }
        assert_eq!(k.pkmap_stats().in_use, 0);
        assert!(m.take_log().is_empty());
    }
}

/// Unused slots stay mapped until the allocator wraps around: then one
/// flush (`flush_all_zero_pkmaps`) unmaps all of them.
#[test]
fn wrap_around_flushes_unused_slots() {
    for (ram, slots) in X86_MACHINES {
        let m = boot("x86", ram, 1, 1);
        let k = m.kmm();
        let l = *k.kernel_layout();
        let pages: Vec<&Page> = (0..slots + 5).map(|_| high_page(k)).collect();
        // Slots 1..LAST_PKMAP-1 are used once each and left unused.
        for (i, p) in pages[..slots - 1].iter().enumerate() {
            let a = k.kmap(p).unwrap();
            assert_eq!(a, l.pkmap_addr(i + 1, PS));
            k.kunmap(p).unwrap();
        }
        let st = k.pkmap_stats();
        assert_eq!((st.in_use, st.unused_mapped, st.flushes), (0, slots - 1, 0));
        // Stale but harmless: still mapped, page_address still answers.
        assert_eq!(translate(k, l.pkmap_addr(1, PS)), Some(phys(k, pages[0])));
        assert_eq!(k.page_address(pages[3]), Some(l.pkmap_addr(4, PS)));
        // The next new page wraps to slot 0: everything unused is flushed.
        let a = k.kmap(pages[slots - 1]).unwrap();
        assert_eq!(a, l.pkmap_base);
        let st = k.pkmap_stats();
        assert_eq!((st.in_use, st.unused_mapped, st.flushes), (1, 0, 1));
        for (i, p) in pages[..slots - 1].iter().enumerate() {
            assert_eq!(k.page_address(p), None);
            assert_eq!(translate(k, l.pkmap_addr(i + 1, PS)), None);
        }
        // The cycle goes on from slot 1.
        let b = k.kmap(pages[slots]).unwrap();
        assert_eq!(b, l.pkmap_addr(1, PS));
        k.kunmap(pages[slots]).unwrap();
        k.kunmap(pages[slots - 1]).unwrap();
        // A page kmapped again before the flush keeps its stale slot.
        let again = k.kmap(pages[slots]).unwrap();
        assert_eq!(again, b);
        k.kunmap(pages[slots]).unwrap();
        // More than LAST_PKMAP distinct pages: a second flush.
        for p in &pages[slots + 1..] {
            k.kmap(p).unwrap();
            k.kunmap(p).unwrap();
        }
        for p in &pages[..slots - 1] {
            k.kmap(p).unwrap();
            k.kunmap(p).unwrap();
        }
        assert_eq!(k.pkmap_stats().flushes, 2);
    }
}

/// kmap may sleep: in atomic context it is refused with might_sleep's
/// report, even for a low page, and also inside a kmap_atomic section.
#[test]
fn kmap_in_atomic_context_is_refused() {
    for (ram, _) in X86_MACHINES {
        let m = boot("x86", ram, 2, 1);
        let k = m.kmm();
        let _cpu = m.cpus().bind(0).unwrap();
        let p = high_page(k);
        let low = k.alloc_page(KERNEL).unwrap();
        let _ = m.take_log();
        {
            let _g = m.cpus().preempt_disable();
            let e = k.kmap(p).unwrap_err();
            assert_eq!(
                e,
                KmmError::SleepInAtomic {
                    preempt_count: 1,
                    irqs_disabled: false
                }
            );
            assert!(matches!(k.kmap(low), Err(KmmError::SleepInAtomic { .. })));
        }
        let log = m.take_log();
        assert!(
            logged(
                &log,
                "BUG: sleeping function called from invalid context at include/linux/highmem.rs"
            ),
            "{log:#?}"
        );
        assert_eq!(k.pkmap_stats().in_use, 0);
        assert_eq!(k.page_address(p), None);
        {
            let _irq = m.cpus().irq_enter();
            assert!(matches!(k.kmap(p), Err(KmmError::SleepInAtomic { .. })));
        }
        let q = high_page(k);
        let a = k.kmap_atomic(q).unwrap();
        assert!(matches!(k.kmap(p), Err(KmmError::SleepInAtomic { .. })));
        k.kunmap_atomic(a).unwrap();
        assert_eq!(m.cpus().preempt_count(), 0);
        // Fine again outside.
        k.kmap(p).unwrap();
        k.kunmap(p).unwrap();
    }
}

// ------------------------------------------------------------ kmap_atomic

/// kmap_atomic takes this CPU's next fixmap slot, disables preemption and
/// page faults; each nesting level and each CPU has its own address.
#[test]
fn kmap_atomic_slots_per_level_and_cpu() {
    for (ram, _) in X86_MACHINES {
        let m = boot("x86", ram, 2, 1);
        let k = m.kmm();
        let l = *k.kernel_layout();
        let cpus = m.cpus();
        let pages: Vec<&Page> = (0..4).map(|_| high_page(k)).collect();
        for (i, p) in pages.iter().enumerate() {
            k.phys().write(phys(k, p), &[i as u8 + 1; 16]).unwrap();
        }
        let _cpu0 = cpus.bind(0).unwrap();
        assert!(!k.pagefault_disabled(0));
        let a0 = k.kmap_atomic(pages[0]).unwrap();
        assert_eq!(a0, fixmap_kmap(0, 0));
        assert_eq!(a0, k.kmap_atomic_addr(0, 0));
        assert!(a0 >= l.fixaddr_start && a0 < l.fixaddr_top);
        assert_eq!(cpus.preempt_count(), 1);
        assert!(k.pagefault_disabled(0));
        assert_eq!(k.kmap_atomic_depth(0), 1);
        let a1 = k.kmap_atomic(pages[1]).unwrap();
        assert_eq!(a1, fixmap_kmap(0, 1));
        assert_eq!(a1, a0 - PS, "the fixmap grows down");
        assert_eq!(cpus.preempt_count(), 2);
        assert_eq!(k.kmap_atomic_depth(0), 2);
        // Not a permanent kmap: no page_address, no pkmap slot.
        assert_eq!(k.page_address(pages[0]), None);
        assert_eq!(k.pkmap_stats().in_use, 0);
        // CPU 1 meanwhile: its own slots, its own count.
        let b0 = std::thread::scope(|s| {
            s.spawn(|| {
                let _cpu1 = cpus.bind(1).unwrap();
                let b0 = k.kmap_atomic(pages[2]).unwrap();
                assert_eq!(b0, fixmap_kmap(1, 0));
                assert_eq!(cpus.preempt_count(), 1);
                assert_eq!(k.kmap_atomic_depth(1), 1);
                assert!(k.pagefault_disabled(1));
                // Both CPUs' mappings are in the page table at once.
                assert_eq!(translate(k, b0), Some(phys(k, pages[2])));
                assert_eq!(translate(k, a1), Some(phys(k, pages[1])));
                assert_eq!(vread_vec(k, b0, 16), [3; 16]);
                k.kunmap_atomic(b0).unwrap();
                assert_eq!(cpus.preempt_count(), 0);
                assert!(!k.pagefault_disabled(1));
                b0
            })
            .join()
            .unwrap()
        });
        assert_eq!(translate(k, b0), None);
        assert_eq!(cpus.preempt_count(), 2, "CPU 0 unaffected");
        assert_eq!(vread_vec(k, a0, 16), [1; 16]);
        assert_eq!(vread_vec(k, a1, 16), [2; 16]);
        let all = [a0, a1, b0];
        assert!(all
            .iter()
            .all(|&x| !in_pkmap(k, x) && !k.is_vmalloc_addr(x)));
        k.kunmap_atomic(a1).unwrap();
        assert_eq!(translate(k, a1), None, "unmapped at once");
        assert_eq!(cpus.preempt_count(), 1);
        assert!(k.pagefault_disabled(0));
        k.kunmap_atomic(a0).unwrap();
        assert_eq!(cpus.preempt_count(), 0);
        assert!(!k.pagefault_disabled(0));
        assert_eq!(k.kmap_atomic_depth(0), 0);
        // A low page inside: its direct-map address, no slot, still atomic.
        let low = k.alloc_page(KERNEL).unwrap();
        let h = k.kmap_atomic(pages[3]).unwrap();
        let d = k.kmap_atomic(low).unwrap();
        assert_eq!(d, 0xc000_0000 + phys(k, low));
        assert_eq!(cpus.preempt_count(), 2);
        assert_eq!(k.kmap_atomic_depth(0), 1);
        k.kunmap_atomic(d).unwrap();
        k.kunmap_atomic(h).unwrap();
        assert_eq!(cpus.preempt_count(), 0);
        assert!(!k.pagefault_disabled(0));
        // kunmap_atomic with nothing mapped.
        assert!(k.kunmap_atomic(h).is_err());
        assert_eq!(cpus.preempt_count(), 0);
        assert!(m.take_log().iter().all(|l| !l.contains("BUG")));
    }
}

/// Unmapping out of order is Linux's WARN_ON: reported, refused, and the
/// depth, preempt count and mappings stay.
#[test]
fn kunmap_atomic_out_of_order_is_refused() {
    for (ram, _) in X86_MACHINES {
        let m = boot("x86", ram, 2, 1);
        let k = m.kmm();
        let cpus = m.cpus();
        let _cpu = cpus.bind(0).unwrap();
        let p = high_page(k);
        let q = high_page(k);
        let a = k.kmap_atomic(p).unwrap();
        let b = k.kmap_atomic(q).unwrap();
        let e = k.kunmap_atomic(a).unwrap_err();
        assert!(matches!(e, KmmError::InvalidAddress { addr, .. } if addr == a));
        let log = m.take_log();
        assert!(
            logged(&log, "WARNING: CPU: 0 at mm/highmem.rs:"),
            "{log:#?}"
        );
        assert!(
            logged(
                &log,
                &format!("kunmap_atomic: {a:#x} is not this CPU's innermost kmap_atomic ({b:#x})")
            ),
            "{log:#?}"
        );
        assert_eq!(k.kmap_atomic_depth(0), 2);
        assert_eq!(cpus.preempt_count(), 2);
        assert_eq!(translate(k, a), Some(phys(k, p)));
        assert_eq!(translate(k, b), Some(phys(k, q)));
        // An address inside the innermost page is fine.
        k.kunmap_atomic(b + 0x123).unwrap();
        // Another CPU's slot is not this CPU's innermost either.
        let other = k.kmap_atomic_addr(1, 0);
        assert!(k.kunmap_atomic(other).is_err());
        assert!(logged(
            &m.take_log(),
            "is not this CPU's innermost kmap_atomic"
        ));
        assert_eq!(k.kmap_atomic_depth(0), 1);
        assert_eq!(cpus.preempt_count(), 1);
        k.kunmap_atomic(a).unwrap();
        assert_eq!(cpus.preempt_count(), 0);
        // An address kmap_atomic never returned (not the direct map either).
        assert!(k.kunmap_atomic(k.kernel_layout().vmalloc_start).is_err());
        assert_eq!(cpus.preempt_count(), 0);
    }
}

/// KM_MAX_IDX (16) nested kmap_atomic per CPU; the 17th is Linux's BUG:
/// reported and refused, with the preempt count as it was.
#[test]
fn kmap_atomic_nests_16_deep() {
    for (ram, _) in X86_MACHINES {
        let m = boot("x86", ram, 2, 1);
        let k = m.kmm();
        let cpus = m.cpus();
        let _cpu = cpus.bind(1).unwrap();
        let pages: Vec<&Page> = (0..=KM_MAX).map(|_| high_page(k)).collect();
        let low = k.alloc_page(KERNEL).unwrap();
        let mut addrs = Vec::new();
        for (i, p) in pages[..KM_MAX].iter().enumerate() {
            let a = k.kmap_atomic(p).unwrap();
            assert_eq!(a, fixmap_kmap(1, i));
            assert_eq!(translate(k, a), Some(phys(k, p)));
            addrs.push(a);
        }
        assert_eq!(cpus.preempt_count(), KM_MAX as u32);
        assert_eq!(k.kmap_atomic_depth(1), KM_MAX);
        let e = k.kmap_atomic(pages[KM_MAX]).unwrap_err();
        assert!(matches!(e, KmmError::TableFull { .. }), "{e:?}");
        let log = m.take_log();
        assert!(
            logged(
                &log,
                "kmap_atomic nested deeper than KM_MAX_IDX (16) on CPU 1"
            ),
            "{log:#?}"
        );
        assert_eq!(cpus.preempt_count(), KM_MAX as u32);
        assert_eq!(k.kmap_atomic_depth(1), KM_MAX);
        // The slot past the last is CPU 2's first, which must stay clear.
        assert_eq!(translate(k, fixmap_kmap(1, KM_MAX)), None);
        // A low page still works at full depth: it needs no slot.
        let d = k.kmap_atomic(low).unwrap();
        k.kunmap_atomic(d).unwrap();
        for a in addrs.iter().rev() {
            k.kunmap_atomic(*a).unwrap();
            assert_eq!(translate(k, *a), None);
        }
        assert_eq!(cpus.preempt_count(), 0);
        assert!(!k.pagefault_disabled(1));
    }
}

/// Bytes written through a kmap_atomic address are in the page: a kmap of
/// it and its physical address show them, and the other way round.
#[test]
fn kmap_atomic_and_kmap_see_the_same_bytes() {
    for (ram, _) in X86_MACHINES {
        let m = boot("x86", ram, 1, 1);
        let k = m.kmm();
        let _cpu = m.cpus().bind(0).unwrap();
        let p = k.alloc_page(HIGH | GfpFlags::__GFP_ZERO).unwrap();
        let data: Vec<u8> = (0..PS).map(|i| (i * 7 % 251) as u8).collect();
        let a = k.kmap_atomic(p).unwrap();
        assert_eq!(vread_vec(k, a, PS as usize), vec![0; PS as usize]);
        k.vwrite(a, &data).unwrap();
        k.kunmap_atomic(a).unwrap();
        assert_eq!(translate(k, a), None);
        // The fixmap slot is unmapped again: vread sees zeros there.
        assert_eq!(vread_vec(k, a, 16), [0; 16]);
        assert!(k.vwrite(a, b"x").is_err());
        assert_eq!(phys_read(k, phys(k, p), PS as usize), data);
        let b = k.kmap(p).unwrap();
        assert_eq!(vread_vec(k, b, PS as usize), data);
        k.vwrite(b + 10, b"through kmap").unwrap();
        let c = k.kmap_atomic(p).unwrap();
        assert_eq!(c, a, "the same slot at the same depth");
        assert_eq!(vread_vec(k, c + 10, 12), b"through kmap");
        k.kunmap_atomic(c).unwrap();
        k.kunmap(p).unwrap();
        assert_eq!(phys_read(k, phys(k, p) + 10, 12), b"through kmap");
        if ram > 4 * G {
            // Frames above 4 GiB are reached with PAE.
            let mut blocks = Vec::new();
            let hi = loop {
                let b = k.alloc_pages(HIGH, 10).unwrap();
                if phys(k, b) >= 4 * G {
                    break b;
                }
                blocks.push(b);
            };
            k.phys().write(phys(k, hi), b"above 4G").unwrap();
            let a = k.kmap_atomic(hi).unwrap();
            assert_eq!(vread_vec(k, a, 8), b"above 4G");
            k.kunmap_atomic(a).unwrap();
            let b = k.kmap(hi).unwrap();
            assert_eq!(translate(k, b), Some(phys(k, hi)));
            assert_eq!(vread_vec(k, b, 8), b"above 4G");
            k.kunmap(hi).unwrap();
            k.__free_pages(hi, 10).unwrap();
            for b in blocks {
                k.__free_pages(b, 10).unwrap();
            }
        }
    }
}

/// The fixmap grows with the CPUs: with 64 CPUs every CPU's 16 slots fit
/// below FIXADDR_TOP, above the pkmap area, and have page tables.
#[test]
fn fixmap_has_room_for_every_cpu() {
    let m = boot("x86", 2 * G, 64, 1);
    let k = m.kmm();
    let l = *k.kernel_layout();
    let lowest = k.kmap_atomic_addr(63, KM_MAX - 1);
    assert_eq!(lowest, fixmap_kmap(63, KM_MAX - 1));
    assert!(lowest >= l.fixaddr_start);
    assert!(l.pkmap_base + l.last_pkmap as u64 * PS <= l.fixaddr_start);
    assert!(l.vmalloc_end < l.pkmap_base);
    let pages: Vec<&Page> = (0..KM_MAX).map(|_| high_page(k)).collect();
    for cpu in [0, 31, 63] {
        let got = m
            .cpus()
            .run_on_cpu(cpu, || {
                let addrs: Vec<u64> = pages.iter().map(|p| k.kmap_atomic(p).unwrap()).collect();
                let ok = addrs
                    .iter()
                    .zip(&pages)
                    .all(|(&a, p)| translate(k, a) == Some(phys(k, p)));
                for &a in addrs.iter().rev() {
                    k.kunmap_atomic(a).unwrap();
                }
                (addrs, ok)
            })
            .unwrap();
        let want: Vec<u64> = (0..KM_MAX).map(|i| fixmap_kmap(cpu, i)).collect();
        assert_eq!(got, (want, true), "cpu {cpu}");
    }
}

// ------------------------------------------------------------------ x86_64

/// On x86_64 every page is low memory: kmap returns the page's direct-map
/// address and uses no slot; kmap_atomic returns it too and disables
/// preemption and page faults.
#[test]
fn x86_64_kmap_is_page_address() {
    let m = boot("x86_64", 256 * M, 2, 1);
    let k = m.kmm();
    let cpus = m.cpus();
    let _cpu = cpus.bind(1).unwrap();
    let st = k.pkmap_stats();
    assert_eq!((st.slots, st.in_use), (0, 0));
    let p = k.alloc_page(GfpFlags::GFP_HIGHUSER).unwrap();
    assert!(!k.page_is_highmem(p));
    let direct = k.page_address(p).unwrap();
    assert_eq!(direct, 0xffff_8880_0000_0000 + phys(k, p));
    assert_eq!(k.kmap(p).unwrap(), direct);
    assert_eq!(k.kmap(p).unwrap(), direct);
    k.kunmap(p).unwrap();
    k.kunmap(p).unwrap();
    assert_eq!(k.pkmap_stats(), st);
    {
        let _g = cpus.preempt_disable();
        assert!(matches!(k.kmap(p), Err(KmmError::SleepInAtomic { .. })));
    }
    assert!(logged(
        &m.take_log(),
        "BUG: sleeping function called from invalid context"
    ));
    let a = k.kmap_atomic(p).unwrap();
    assert_eq!(a, direct);
    assert_eq!(cpus.preempt_count(), 1);
    assert!(k.pagefault_disabled(1));
    assert_eq!(k.kmap_atomic_depth(1), 0, "no fixmap slot");
    // kmap may not be called in there.
    assert!(matches!(k.kmap(p), Err(KmmError::SleepInAtomic { .. })));
    // Undo by hand (kunmap_atomic is tested below).
    cpus.preempt_count_sub(1).unwrap();
}

/// kunmap_atomic on x86_64 (no fixmap: `fixaddr_top` is 0) computes the
/// fixmap range before checking there is one: `kmap_atomic_addr(nr_cpu_ids
/// - 1, KM_MAX_IDX - 1)` is `0 - idx * PAGE_SIZE`, a subtraction overflow
/// (a panic in debug builds) in `KernelLayout::fix_to_virt`.
#[test]
fn x86_64_kunmap_atomic() {
    let m = boot("x86_64", 256 * M, 2, 1);
    let k = m.kmm();
    let cpus = m.cpus();
    let _cpu = cpus.bind(1).unwrap();
    let p = k.alloc_page(KERNEL).unwrap();
    let direct = k.page_address(p).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let a = k.kmap_atomic(p).unwrap();
        assert_eq!(a, direct);
        k.kunmap_atomic(a).unwrap();
        assert_eq!(cpus.preempt_count(), 0);
        assert!(!k.pagefault_disabled(1));
        assert!(k.kunmap_atomic(a).is_err(), "nothing left to unmap");
        assert_eq!(cpus.preempt_count(), 0);
        // Deep nesting is fine: no slots are used.
        let addrs: Vec<u64> = (0..20).map(|_| k.kmap_atomic(p).unwrap()).collect();
        assert_eq!(cpus.preempt_count(), 20);
        for a in addrs {
            k.kunmap_atomic(a).unwrap();
        }
        assert_eq!(cpus.preempt_count(), 0);
    }));
    // Leave the CPU quiescent whatever happened.
    while cpus.preempt_count() > 0 {
        cpus.preempt_count_sub(1).unwrap();
    }
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
}
