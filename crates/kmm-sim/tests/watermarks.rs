//! Watermarks, `lowmem_reserve` and per-CPU list sizes for several machines,
//! against values this test computes on its own from Linux's formulas
//! (`calculate_min_free_kbytes`, `__setup_per_zone_wmarks`,
//! `setup_per_zone_lowmem_reserve`, `zone_batchsize`, `zone_highsize`),
//! starting from the managed pages it counts itself in `mem_map`.

mod common;

use common::*;
use kmm::mmzone::{Watermark, ZoneType};
use kmm_sim::MachineConfig;

/// `sysctl_lowmem_reserve_ratio[]`.
fn ratio(zt: ZoneType) -> u64 {
    match zt {
        ZoneType::Dma | ZoneType::Dma32 => 256,
        ZoneType::Normal => 32,
        ZoneType::HighMem | ZoneType::Movable => 0,
    }
}

/// `mult_frac(x, n, d)`.
fn mult_frac(x: u64, n: u64, d: u64) -> u64 {
    (x / d) * n + (x % d) * n / d
}

/// `rounddown_pow_of_two()`.
fn rounddown_pow_of_two(x: u64) -> u64 {
    1 << (63 - x.leading_zeros())
}

#[derive(Debug, PartialEq, Eq)]
struct ZoneExpect {
    min: u64,
    low: u64,
    high: u64,
    promo: u64,
    protection: Vec<u64>,
    /// `(batch, high_min, high_max)` of populated zones.
    pcp: Option<(u32, u32, u32)>,
}

/// Everything Linux's formulas give for machine `k`, from the managed page
/// counts (`managed[nid * nr_zones + idx]`). Returns `min_free_kbytes` and
/// the per-zone values in `k.zones()` order.
fn expected(k: &K, managed: &[u64]) -> (u64, Vec<ZoneExpect>) {
    let zones = k.arch().zones;
    let nz = zones.len();
    let shift = k.page_shift();
    let lowmem_zone = |zt: ZoneType| !matches!(zt, ZoneType::HighMem | ZoneType::Movable);
    let lowmem_pages: u64 = (0..k.nr_node_ids())
        .flat_map(|n| (0..nz).map(move |z| (n, z)))
        .filter(|&(_, z)| lowmem_zone(zones[z]))
        .map(|(n, z)| managed[n * nz + z])
        .sum();
    // calculate_min_free_kbytes()
    let lowmem_kbytes = lowmem_pages << (shift - 10);
    let min_free_kbytes = int_sqrt(lowmem_kbytes * 16).clamp(128, 262_144);
    let pages_min = min_free_kbytes >> (shift - 10);

    let mut out = Vec::new();
    for nid in 0..k.nr_node_ids() {
        let node_cpus = (0..k.nr_cpu_ids())
            .filter(|&c| k.cpu_to_node(c) == nid)
            .count() as u64;
        // zone_highsize(): a node without CPUs splits over all online CPUs.
        let split = if node_cpus == 0 {
            k.nr_cpu_ids() as u64
        } else {
            node_cpus
        };
        for (i, &zt) in zones.iter().enumerate() {
            let mz = managed[nid * nz + i];
            // __setup_per_zone_wmarks()
            let tmp = (pages_min as u128 * mz as u128 / lowmem_pages as u128) as u64;
            let min = if lowmem_zone(zt) {
                tmp
            } else {
                (mz / 1024).clamp(32, 128)
            };
            let step = (tmp / 4).max(mult_frac(mz, 10, 10_000));
            // setup_per_zone_lowmem_reserve()
            let mut protection = vec![0u64; nz];
            let mut upper = 0;
            for (j, p) in protection.iter_mut().enumerate().skip(i + 1) {
                upper += managed[nid * nz + j];
                if ratio(zt) != 0 && mz != 0 {
                    *p = upper / ratio(zt);
                }
            }
            // zone_batchsize(), zone_highsize()
            let pcp = (mz > 0).then(|| {
                let mut b = (mz >> 10).min((1 << 20) / k.page_size()) / 4;
                if b < 1 {
                    b = 1;
                }
                let batch = (rounddown_pow_of_two(b + b / 2) - 1).max(1);
                let high_min = ((min + step) / split).max(batch * 4);
                let high_max = (mz / 8 / split).max(batch * 4);
                (batch as u32, high_min as u32, high_max as u32)
            });
            out.push(ZoneExpect {
                min,
                low: min + step,
                high: min + 2 * step,
                promo: min + 3 * step,
                protection,
                pcp,
            });
        }
    }
    (min_free_kbytes, out)
}

/// Reads min/low/high/promo/managed/protection of every zone back out of
/// `/proc/zoneinfo`.
fn parse_zoneinfo(text: &str) -> Vec<(u64, u64, u64, u64, u64, Vec<u64>)> {
    let mut out = Vec::new();
    let mut cur: Option<(u64, u64, u64, u64, u64, Vec<u64>)> = None;
    for line in text.lines() {
        if line.starts_with("Node ") {
            out.extend(cur.take());
            cur = Some((0, 0, 0, 0, 0, Vec::new()));
            continue;
        }
        let Some(c) = cur.as_mut() else { continue };
        let t = line.trim();
        let val = |t: &str| t.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap();
        if let Some(rest) = t.strip_prefix("protection: (") {
            c.5 = rest
                .trim_end_matches(')')
                .split(", ")
                .map(|v| v.parse().unwrap())
                .collect();
        } else if t.starts_with("min ") {
            c.0 = val(t);
        } else if t.starts_with("low ") {
            c.1 = val(t);
        } else if t.starts_with("high ") {
            c.2 = val(t);
        } else if t.starts_with("promo ") {
            c.3 = val(t);
        } else if t.starts_with("managed ") {
            c.4 = val(t);
        }
    }
    out.extend(cur);
    out
}

/// Boots `cfg` and compares every zone with [`expected`]. `approx_kb` is
/// Linux's own table in the comment above `calculate_min_free_kbytes()`
/// (e.g. 1 GiB of low memory → 4096k); kmm's value must be within 3 % below
/// it, since a little of the RAM is reserved.
fn check(cfg: MachineConfig, approx_kb: Option<u64>) {
    let desc = format!("{cfg:?}");
    let m = boot_cfg(cfg);
    let k = m.kmm();
    let managed = unreserved_per_zone(k);
    let (mfk, want) = expected(k, &managed);
    assert_eq!(k.min_free_kbytes(), mfk, "min_free_kbytes of {desc}");
    if let Some(kb) = approx_kb {
        assert!(
            mfk <= kb && mfk * 100 >= kb * 97,
            "min_free_kbytes {mfk}, Linux's table says about {kb}"
        );
    }
    let nz = k.arch().nr_zones();
    let zoneinfo = kmm_sim::procfs::read(&m, "/proc/zoneinfo").unwrap();
    let shown = parse_zoneinfo(&zoneinfo);
    assert_eq!(shown.len(), want.len(), "/proc/zoneinfo lists every zone");
    for ((z, w), s) in k.zones().zip(&want).zip(&shown) {
        let name = format!("{desc} node {} zone {}", z.nid(), z.name());
        assert_eq!(z.managed_pages(), managed[z.nid() * nz + z.idx()], "{name}");
        let got = ZoneExpect {
            min: z.watermark(Watermark::Min),
            low: z.watermark(Watermark::Low),
            high: z.watermark(Watermark::High),
            promo: z.watermark(Watermark::Promo),
            protection: (0..nz).map(|j| z.lowmem_reserve(j)).collect(),
            pcp: z.pcp(0).map(|p| (p.batch(), p.high_min(), p.high_max())),
        };
        assert_eq!(&got, w, "{name}");
        for cpu in 0..k.nr_cpu_ids() {
            if let Some(p) = z.pcp(cpu) {
                assert_eq!(Some((p.batch(), p.high_min(), p.high_max())), w.pcp);
                assert!(p.high_min() <= p.high() && p.high() <= p.high_max().max(p.high_min()));
            }
        }
        let printed = (w.min, w.low, w.high, w.promo, z.managed_pages());
        assert_eq!(
            (s.0, s.1, s.2, s.3, s.4),
            printed,
            "/proc/zoneinfo of {name}"
        );
        assert_eq!(s.5, w.protection, "protection line of {name}");
    }
}

#[test]
fn x86_64_128m() {
    // The 30 MiB kernel image is a quarter of this machine, so Linux's
    // table (128 MiB → 1448k) does not apply: about 96 MiB is managed.
    check(config("x86_64", 128 * M, 2, 1), None);
}

#[test]
fn x86_64_1g() {
    check(config("x86_64", G, 2, 1), Some(4096));
}

#[test]
fn x86_64_4g() {
    check(config("x86_64", 4 * G, 4, 1), Some(8192));
}

#[test]
fn x86_64_16g() {
    check(config("x86_64", 16 * G, 2, 1), Some(16384));
}

#[test]
fn x86_512m() {
    check(config("x86", 512 * M, 1, 1), Some(2896));
}

/// Highmem gets min = clamp(managed / 1024, 32, 128) and is left out of
/// `min_free_kbytes`, which follows the 880 MiB of low memory.
#[test]
fn x86_2g_highmem() {
    check(config("x86", 2 * G, 2, 1), None);
}

/// 64 KiB pages: watermarks in pages shrink sixteenfold, batch follows
/// `1 MiB / PAGE_SIZE`.
#[test]
fn x86_64_1g_64k_pages() {
    let mut cfg = config("x86_64", G, 2, 1);
    cfg.page_size = 64 << 10;
    check(cfg, Some(4096));
}

/// Four nodes, two CPUs: nodes 1 and 3 have no CPU, so their per-CPU high
/// marks are split over all online CPUs.
#[test]
fn x86_64_numa_nodes_without_cpus() {
    check(config("x86_64", 512 * M, 2, 4), None);
}
