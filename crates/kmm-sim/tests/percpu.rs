//! The dynamic per-CPU allocator (`mm/percpu.c`) and per-CPU counters
//! (`lib/percpu_counter.c`), LDD3 §8.4.

mod common;

use common::*;
use kmm::percpu::{PercpuPtr, PCPU_MAX_CHUNKS};
use kmm::{GfpFlags, KmmError, Platform};
use proptest::prelude::*;

/// Stamps every CPU's copy with a pattern of its own.
fn stamp(k: &K, p: PercpuPtr, size: u64, tag: u64) {
    for cpu in 0..k.nr_cpu_ids() {
        let b = pattern(tag, cpu, size);
        k.per_cpu_write(p, cpu, 0, &b).unwrap();
    }
}

fn pattern(tag: u64, cpu: usize, size: u64) -> Vec<u8> {
    (0..size)
        .map(|i| (tag.wrapping_mul(31) ^ (cpu as u64 * 7) ^ i) as u8 | 1)
        .collect()
}

fn check(k: &K, p: PercpuPtr, size: u64, tag: u64) {
    for cpu in 0..k.nr_cpu_ids() {
        let mut b = vec![0; size as usize];
        k.per_cpu_read(p, cpu, 0, &mut b).unwrap();
        assert_eq!(b, pattern(tag, cpu, size), "copy of cpu {cpu} overwritten");
    }
}

#[test]
fn copies_are_per_cpu_and_zeroed() {
    let m = boot("x86_64", 64 * M, 4, 1);
    let k = m.kmm();
    let unit = k.pcpu_unit_size();
    assert_eq!(k.pcpu_nr_units(), 4);
    assert_eq!(k.pcpu_nr_chunks(), 1);
    let p = k.__alloc_percpu(24, 8).unwrap();
    let base = k.per_cpu_ptr(p, 0).unwrap();
    for cpu in 0..4 {
        // Linux's layout: CPU n's copy is n units after CPU 0's.
        assert_eq!(k.per_cpu_ptr(p, cpu).unwrap(), base + cpu as u64 * unit);
        let mut b = [0xffu8; 24];
        k.per_cpu_read(p, cpu, 0, &mut b).unwrap();
        assert_eq!(b, [0; 24]);
    }
    assert!(k.per_cpu_ptr(p, 4).is_err());
    // this_cpu_ptr follows the CPU the caller runs on.
    for cpu in 0..4 {
        let got = m
            .cpus()
            .run_on_cpu(cpu, || k.this_cpu_ptr(p).unwrap())
            .unwrap();
        assert_eq!(got, k.per_cpu_ptr(p, cpu).unwrap());
    }
    stamp(k, p, 24, 1);
    k.free_percpu(p).unwrap();
    // Zeroed again when handed out again.
    let q = k.__alloc_percpu(24, 8).unwrap();
    let mut b = [0xffu8; 24];
    k.per_cpu_read(q, 2, 0, &mut b).unwrap();
    assert_eq!(b, [0; 24]);
    k.free_percpu(q).unwrap();
    // Typed convenience.
    let t = k.alloc_percpu::<[u64; 3]>().unwrap();
    assert_eq!(k.per_cpu_ptr(t, 0).unwrap() % 8, 0);
    k.free_percpu(t).unwrap();
}

#[test]
fn misuse_is_refused() {
    let m = boot("x86_64", 64 * M, 2, 1);
    let k = m.kmm();
    assert!(matches!(
        k.__alloc_percpu(0, 4),
        Err(KmmError::InvalidArgument { .. })
    ));
    assert!(k.__alloc_percpu(8, 3).is_err());
    assert!(matches!(
        k.__alloc_percpu(k.pcpu_unit_size() + 1, 4),
        Err(KmmError::TooLarge { .. })
    ));
    let a = k.__alloc_percpu(16, 4).unwrap();
    let b = k.__alloc_percpu(16, 4).unwrap();
    k.free_percpu(a).unwrap();
    assert!(matches!(k.free_percpu(a), Err(KmmError::BadObject { .. })));
    // b is untouched by the refused double free.
    stamp(k, b, 16, 9);
    check(k, b, 16, 9);
    k.free_percpu(b).unwrap();
    assert!(m
        .take_log()
        .iter()
        .any(|l| l.contains("percpu: bad pointer")));
}

#[test]
fn second_chunk_comes_and_goes() {
    let m = boot("x86_64", 128 * M, 4, 1);
    let k = m.kmm();
    k.drain_all_pages();
    let free0 = k.nr_free_pages();
    let unit = k.pcpu_unit_size();
    let percpu0 = meminfo_kb(k, "Percpu");
    assert_eq!(percpu0, 4 * unit / 1024);
    // Fill the first chunk with page-sized objects.
    let obj = 1024;
    let mut held = Vec::new();
    while k.pcpu_nr_chunks() == 1 {
        held.push(k.__alloc_percpu(obj, obj).unwrap());
    }
    assert_eq!(held.len() as u64, unit / obj + 1);
    let last = *held.last().unwrap();
    assert_eq!(last.chunk(), 1);
    assert_eq!(meminfo_kb(k, "Percpu"), 2 * percpu0);
    for (i, &p) in held.iter().enumerate() {
        stamp(k, p, obj, i as u64);
    }
    for (i, &p) in held.iter().enumerate() {
        check(k, p, obj, i as u64);
    }
    // Emptying the second chunk releases it; a stale pointer is refused.
    k.free_percpu(last).unwrap();
    held.pop();
    assert_eq!(k.pcpu_nr_chunks(), 1);
    assert!(k.per_cpu_ptr(last, 0).is_err());
    assert!(k.free_percpu(last).is_err());
    for p in held {
        k.free_percpu(p).unwrap();
    }
    assert_eq!(k.pcpu_chunk_free_bytes(0), Some(unit));
    assert_eq!(meminfo_kb(k, "Percpu"), percpu0);
    k.drain_all_pages();
    assert_eq!(k.nr_free_pages(), free0);
}

#[test]
fn atomic_allocations_do_not_create_chunks() {
    let m = boot("x86_64", 64 * M, 2, 1);
    let k = m.kmm();
    let mut held = Vec::new();
    let err = loop {
        match k.__alloc_percpu_gfp(4096, 8, GfpFlags::GFP_ATOMIC) {
            Ok(p) => held.push(p),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, KmmError::NoMemory { .. }), "{err:?}");
    assert_eq!(held.len() as u64, k.pcpu_unit_size() / 4096);
    assert_eq!(k.pcpu_nr_chunks(), 1);
    assert!(logged(
        &m.take_log(),
        "percpu: allocation failed, size=4096 align=8 atomic=1"
    ));
    // A sleeping allocation may take a new chunk.
    held.push(k.__alloc_percpu_gfp(4096, 8, GfpFlags::GFP_KERNEL).unwrap());
    assert_eq!(k.pcpu_nr_chunks(), 2);
    for p in held {
        k.free_percpu(p).unwrap();
    }
    assert_eq!(k.pcpu_nr_chunks(), 1);
}

#[test]
fn chunk_table_full_is_an_error() {
    let m = boot("x86_64", 256 * M, 2, 1);
    let k = m.kmm();
    let unit = k.pcpu_unit_size();
    let mut held = Vec::new();
    let err = loop {
        match k.__alloc_percpu(unit, 8) {
            Ok(p) => held.push(p),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, KmmError::TableFull { .. }), "{err:?}");
    assert_eq!(held.len(), PCPU_MAX_CHUNKS);
    for p in held {
        k.free_percpu(p).unwrap();
    }
    assert_eq!(k.pcpu_nr_chunks(), 1);
}

#[test]
fn meminfo_percpu_line_follows_slab_lines() {
    let m = boot("x86", 256 * M, 2, 1);
    let k = m.kmm();
    let mut s = String::new();
    kmm::proc_meminfo::meminfo(k, &mut s).unwrap();
    let pos = |f: &str| s.find(&format!("\n{f}:")).unwrap_or_else(|| panic!("{f}"));
    // Linux's order: ... SUnreclaim, KernelStack, PageTables, ...,
    // VmallocChunk, Percpu, HardwareCorrupted, ...
    for before in ["SUnreclaim", "KernelStack", "PageTables", "VmallocChunk"] {
        if s.contains(&format!("\n{before}:")) {
            assert!(pos(before) < pos("Percpu"), "{before} after Percpu");
        }
    }
    assert_eq!(meminfo_kb(k, "Percpu"), 2 * k.pcpu_unit_size() / 1024);
    // On a highmem profile the chunk is in low memory.
    let p = k.__alloc_percpu(8, 8).unwrap();
    assert!(k.per_cpu_ptr(p, 1).is_ok());
    k.free_percpu(p).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    #[test]
    fn random_alloc_free(ops in proptest::collection::vec((1u64..3000, 0u32..10, any::<bool>(), any::<u16>()), 1..150)) {
        let m = boot("x86_64", 64 * M, 3, 1);
        let k = m.kmm();
        k.drain_all_pages();
        let free0 = k.nr_free_pages();
        let unit = k.pcpu_unit_size();
        let mut live: Vec<(PercpuPtr, u64, u64)> = Vec::new();
        for (tag, (size, alog, free, pick)) in ops.into_iter().enumerate() {
            let tag = tag as u64;
            if free && !live.is_empty() {
                let (p, size, t) = live.swap_remove(pick as usize % live.len());
                check(k, p, size, t);
                k.free_percpu(p).unwrap();
                continue;
            }
            let align = 1u64 << alog;
            let p = k.__alloc_percpu(size, align).unwrap();
            prop_assert_eq!(k.per_cpu_ptr(p, 0).unwrap() % align, 0);
            prop_assert!(p.offset() + size <= unit);
            for &(q, qs, _) in &live {
                if q.chunk() == p.chunk() {
                    prop_assert!(p.offset() + size <= q.offset() || q.offset() + qs <= p.offset());
                }
            }
            stamp(k, p, size, tag);
            live.push((p, size, tag));
        }
        for (p, size, t) in live {
            check(k, p, size, t);
            k.free_percpu(p).unwrap();
        }
        prop_assert_eq!(k.pcpu_nr_chunks(), 1);
        prop_assert_eq!(k.pcpu_chunk_free_bytes(0), Some(unit));
        k.drain_all_pages();
        prop_assert_eq!(k.nr_free_pages(), free0);
    }
}

#[test]
fn percpu_counter_concurrent_adds() {
    let m = boot("x86_64", 64 * M, 4, 1);
    let k = m.kmm();
    let batch = k.percpu_counter_batch();
    assert_eq!(batch, 32);
    let c = k.percpu_counter_init(5).unwrap();
    let per_cpu = 10_000i64;
    m.cpus()
        .on_each_cpu(|cpu| {
            for i in 0..per_cpu {
                let amount = if i % 3 == 0 { -1 } else { 1 + cpu as i64 };
                k.percpu_counter_add(&c, amount).unwrap();
            }
        })
        .unwrap();
    let expect: i64 = 5
        + (0..4)
            .map(|cpu| {
                let minus = (per_cpu + 2) / 3;
                (per_cpu - minus) * (1 + cpu) - minus
            })
            .sum::<i64>();
    let sum = k.percpu_counter_sum(&c).unwrap();
    assert_eq!(sum, expect);
    let read = k.percpu_counter_read(&c);
    assert!((sum - read).abs() < batch * 4, "read {read} sum {sum}");
    assert_eq!(
        k.percpu_counter_compare(&c, expect).unwrap(),
        std::cmp::Ordering::Equal
    );
    k.percpu_counter_set(&c, -7).unwrap();
    assert_eq!(k.percpu_counter_sum(&c).unwrap(), -7);
    assert_eq!(k.percpu_counter_read_positive(&c), 0);
    k.percpu_counter_destroy(c).unwrap();
}

#[test]
fn percpu_counter_folds_at_batch() {
    let m = boot("x86_64", 64 * M, 2, 1);
    let k = m.kmm();
    let c = k.percpu_counter_init(0).unwrap();
    m.cpus()
        .run_on_cpu(1, || {
            for _ in 0..31 {
                k.percpu_counter_inc(&c).unwrap();
            }
        })
        .unwrap();
    // Below the batch: only the CPU's delta moved.
    assert_eq!(k.percpu_counter_read(&c), 0);
    assert_eq!(k.percpu_counter_sum(&c).unwrap(), 31);
    m.cpus()
        .run_on_cpu(1, || k.percpu_counter_inc(&c).unwrap())
        .unwrap();
    assert_eq!(k.percpu_counter_read(&c), 32);
    k.percpu_counter_destroy(c).unwrap();
}

/// Seed 002's network-statistics example: each CPU counts the packets it
/// handles in its own copy; a reader sums over the CPUs.
#[test]
fn network_statistics_per_cpu() {
    let m = boot("x86_64", 64 * M, 4, 1);
    let k = m.kmm();
    // struct netstats { u64 rx_packets; u64 rx_bytes; }
    let stats = k.__alloc_percpu(16, 8).unwrap();
    m.cpus()
        .on_each_cpu(|cpu| {
            for pkt in 0..1000u64 {
                let len = 64 + (pkt + cpu as u64) % 1400;
                let me = k.platform().smp_processor_id();
                assert_eq!(me, cpu);
                k.per_cpu_u64(stats, me, 0)
                    .unwrap()
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                k.per_cpu_u64(stats, me, 8)
                    .unwrap()
                    .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
            }
        })
        .unwrap();
    let (mut pkts, mut bytes) = (0, 0);
    for cpu in 0..k.nr_cpu_ids() {
        let p = k
            .per_cpu_u64(stats, cpu, 0)
            .unwrap()
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(p, 1000, "cpu {cpu}");
        pkts += p;
        bytes += k
            .per_cpu_u64(stats, cpu, 8)
            .unwrap()
            .load(std::sync::atomic::Ordering::Relaxed);
    }
    assert_eq!(pkts, 4000);
    let expect: u64 = (0..4u64)
        .flat_map(|c| (0..1000u64).map(move |p| 64 + (p + c) % 1400))
        .sum();
    assert_eq!(bytes, expect);
    k.free_percpu(stats).unwrap();
}

#[test]
fn concurrent_alloc_free_on_every_cpu() {
    let m = boot("x86_64", 128 * M, 4, 1);
    let k = m.kmm();
    k.drain_all_pages();
    let free0 = k.nr_free_pages();
    m.cpus()
        .on_each_cpu(|cpu| {
            let mut rng = Rng(cpu as u64 + 1);
            let mut live: Vec<(PercpuPtr, u64, u64)> = Vec::new();
            for i in 0..400u64 {
                let tag = (cpu as u64) << 32 | i;
                if rng.below(3) == 0 && !live.is_empty() {
                    let (p, size, t) = live.swap_remove(rng.below(live.len() as u64) as usize);
                    check(k, p, size, t);
                    k.free_percpu(p).unwrap();
                } else {
                    let size = 1 + rng.below(512);
                    let p = k.__alloc_percpu(size, 1 << rng.below(7)).unwrap();
                    stamp(k, p, size, tag);
                    live.push((p, size, tag));
                }
            }
            for (p, size, t) in live {
                check(k, p, size, t);
                k.free_percpu(p).unwrap();
            }
        })
        .unwrap();
    assert_eq!(k.pcpu_nr_chunks(), 1);
    k.drain_all_pages();
    assert_eq!(k.nr_free_pages(), free0);
}
