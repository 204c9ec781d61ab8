//! The page-table engine on every format: random map/unmap/protect sequences
//! against a reference model, large pages, hardware-style accessed/dirty
//! marking, errors as values, and `PageTables` accounting.

mod common;

use common::*;
use kmm::arch::pgtable_x86::{X86_2LEVEL, X86_PAE};
use kmm::arch::pgtable_x86_64::{X86_64_4LEVEL, X86_64_5LEVEL};
use kmm::{GfpFlags, KmmError, Mapping, PageTable, PagingFormat, PteFlags};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::collections::{BTreeMap, BTreeSet};

const K4: u64 = 4096;

/// The machine profile a format runs on.
fn profile(fmt: &dyn PagingFormat) -> &'static str {
    if fmt.va_bits() == 32 {
        "x86"
    } else {
        "x86_64"
    }
}

/// Region bases (aligned to the largest page size) at the bottom, middle
/// and top of each half of the address space, so every top-level index
/// extreme and the x86_64 upper half are exercised.
fn regions(fmt: &dyn PagingFormat) -> Vec<u64> {
    match (fmt.va_bits(), fmt.levels()) {
        (32, 2) => vec![0, 0xC000_0000, 0xFF00_0000],
        (32, _) => vec![0, 0xC000_0000, 0xFF00_0000],
        (48, _) => vec![
            0,
            0x7fff_0000_0000,
            0xffff_8880_0000_0000,
            0xffff_fff0_0000_0000,
        ],
        _ => vec![
            0,
            0x00ff_fff0_0000_0000,
            0xff11_0000_0000_0000,
            0xffff_fff0_0000_0000,
        ],
    }
}

/// Page sizes of a format, smallest first, with their levels.
fn sizes(fmt: &dyn PagingFormat) -> Vec<(u64, usize)> {
    (0..fmt.levels())
        .filter(|&l| l == 0 || fmt.large_at(l))
        .map(|l| (1u64 << fmt.shift(l), l))
        .collect()
}

/// Highest physical address (exclusive) a page of `size` may have.
fn phys_limit(fmt: &dyn PagingFormat, size: u64) -> u64 {
    match (fmt.levels(), size) {
        (2, K4) => 1 << 32,
        (2, _) => 1 << 36,
        _ => 1 << 46,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    phys: u64,
    size: u64,
    flags: PteFlags,
    level: usize,
}

/// The reference: mappings by first virtual address.
#[derive(Default)]
struct Model {
    map: BTreeMap<u64, Entry>,
}

impl Model {
    fn covering(&self, virt: u64) -> Option<(u64, Entry)> {
        let (&v, &e) = self.map.range(..=virt).next_back()?;
        (virt - v < e.size).then_some((v, e))
    }

    fn overlaps(&self, virt: u64, size: u64) -> bool {
        self.map
            .range(..virt + size)
            .next_back()
            .is_some_and(|(&v, e)| v + e.size > virt)
    }

    /// Table pages the engine must hold: the root plus one table per
    /// distinct (level, prefix) above each mapping.
    fn tables(&self, fmt: &dyn PagingFormat) -> u64 {
        let top = fmt.levels() - 1;
        let mut set = BTreeSet::new();
        for (&v, e) in &self.map {
            for j in e.level..top {
                set.insert((j, v >> fmt.shift(j + 1)));
            }
        }
        1 + set.len() as u64
    }
}

#[derive(Clone, Debug)]
enum Op {
    Map {
        at: Addr,
        size_idx: usize,
        phys_seed: u64,
        flags: u64,
    },
    Unmap(Addr),
    Protect {
        at: Addr,
        flags: u64,
    },
    /// A map that must fail: misaligned (0), non-canonical (1), bad size (2).
    Bad {
        at: Addr,
        kind: u8,
    },
}

/// An address near collision hot spots: region, then one index per page size.
#[derive(Clone, Copy, Debug)]
struct Addr {
    region: usize,
    idx: [u64; 3],
}

impl Addr {
    /// The address, aligned down to page size `size`.
    fn virt(&self, fmt: &dyn PagingFormat, size: u64) -> u64 {
        let rs = regions(fmt);
        let base = rs[self.region % rs.len()];
        let sz = sizes(fmt);
        let mut v = base;
        for (i, &(s, _)) in sz.iter().enumerate().rev() {
            if s >= size {
                v += self.idx[i] * s;
            }
        }
        v
    }
}

fn addr() -> impl Strategy<Value = Addr> {
    (0usize..4, [0u64..3, 0u64..3, 0u64..2]).prop_map(|(region, idx)| Addr { region, idx })
}

fn flags_strategy() -> impl Strategy<Value = u64> {
    any::<u64>().prop_map(|b| b & PteFlags::all().bits())
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (addr(), 0usize..3, any::<u64>(), flags_strategy()).prop_map(
            |(at, size_idx, phys_seed, flags)| Op::Map { at, size_idx, phys_seed, flags }
        ),
        3 => addr().prop_map(Op::Unmap),
        2 => (addr(), flags_strategy()).prop_map(|(at, flags)| Op::Protect { at, flags }),
        1 => (addr(), 0u8..3).prop_map(|(at, kind)| Op::Bad { at, kind }),
    ]
}

fn norm(fmt: &dyn PagingFormat, flags: PteFlags) -> PteFlags {
    (flags | PteFlags::PRESENT) & fmt.supported_flags()
}

/// Walks agree with the model for every mapping (first byte, last byte, a
/// middle offset), for every hot-spot address, and `for_each_mapping` lists
/// exactly the model; the table count is exact.
fn check(k: &K, pt: &PageTable, model: &Model, salt: u64, t0: u64) -> Result<(), TestCaseError> {
    let fmt = pt.format();
    for (&v, e) in &model.map {
        let mid = (salt.wrapping_mul(0x9e37_79b9) % e.size) & !7;
        for off in [0, e.size - 1, mid] {
            let t = pt.walk(k, v + off);
            prop_assert!(t.is_some(), "{}: {:#x}+{off:#x} not mapped", fmt.name(), v);
            let t = t.unwrap();
            prop_assert_eq!(t.phys, e.phys + off);
            prop_assert_eq!(t.size, e.size);
            prop_assert_eq!(t.flags, e.flags);
            prop_assert_eq!(t.level, e.level);
        }
    }
    for region in 0..regions(fmt).len() {
        for a in 0..3 {
            for b in 0..3 {
                for c in 0..2 {
                    let at = Addr {
                        region,
                        idx: [a, b, c],
                    };
                    let v = at.virt(fmt, K4) + (salt % K4);
                    let want = model
                        .covering(v)
                        .map(|(base, e)| (e.phys + (v - base), e.flags));
                    let got = pt.walk(k, v).map(|t| (t.phys, t.flags));
                    prop_assert_eq!(got, want, "{} walk {:#x}", fmt.name(), v);
                }
            }
        }
    }
    let mut listed = BTreeMap::new();
    pt.for_each_mapping(k, &mut |m: &Mapping| {
        listed.insert(
            m.virt,
            Entry {
                phys: m.phys,
                size: m.size,
                flags: m.flags,
                level: m.level,
            },
        );
    })
    .map_err(|e| TestCaseError::fail(format!("for_each_mapping: {e}")))?;
    prop_assert_eq!(&listed, &model.map);
    prop_assert_eq!(k.nr_page_table_pages() - t0, model.tables(fmt));
    Ok(())
}

fn run_ops(k: &K, fmt: &'static dyn PagingFormat, ops: &[Op]) -> Result<(), TestCaseError> {
    k.drain_all_pages();
    let free0 = k.nr_free_pages();
    // A failed earlier case (while shrinking) may have leaked its tables.
    let t0 = k.nr_page_table_pages();
    let mut pt = k.pgd_alloc(fmt).expect("pgd_alloc");
    let mut model = Model::default();
    let sz = sizes(fmt);
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Map {
                at,
                size_idx,
                phys_seed,
                flags,
            } => {
                let (size, level) = sz[size_idx % sz.len()];
                let virt = at.virt(fmt, size);
                let phys = (phys_seed % (phys_limit(fmt, size) / size)) * size;
                let flags = PteFlags::from_bits_truncate(flags);
                let r = pt.map(k, virt, phys, size, flags);
                if model.overlaps(virt, size) {
                    prop_assert_eq!(r, Err(KmmError::AlreadyMapped { virt }));
                } else {
                    prop_assert_eq!(r, Ok(()), "map {:#x} size {:#x}", virt, size);
                    let flags = norm(fmt, flags);
                    let e = Entry {
                        phys,
                        size,
                        flags,
                        level,
                    };
                    model.map.insert(virt, e);
                }
            }
            Op::Unmap(at) => {
                let virt = at.virt(fmt, K4);
                let want = model.covering(virt).map(|(v, e)| {
                    model.map.remove(&v);
                    Mapping {
                        virt: v,
                        phys: e.phys,
                        size: e.size,
                        flags: e.flags,
                        level: e.level,
                    }
                });
                prop_assert_eq!(pt.unmap(k, virt), Ok(want));
            }
            Op::Protect { at, flags } => {
                let virt = at.virt(fmt, K4);
                let flags = PteFlags::from_bits_truncate(flags);
                let r = pt.protect(k, virt, flags);
                match model.covering(virt) {
                    None => prop_assert_eq!(r, Err(KmmError::NotMapped { virt })),
                    Some((v, e)) => {
                        let keep = e.flags & (PteFlags::ACCESSED | PteFlags::DIRTY);
                        let nf = norm(fmt, flags | keep);
                        model.map.insert(v, Entry { flags: nf, ..e });
                        prop_assert_eq!(
                            r,
                            Ok(Mapping {
                                virt: v,
                                phys: e.phys,
                                size: e.size,
                                flags: nf,
                                level: e.level
                            })
                        );
                    }
                }
            }
            Op::Bad { at, kind } => {
                let (size, _) = sz[sz.len() - 1];
                let virt = at.virt(fmt, size);
                let tables = k.nr_page_table_pages();
                let r = match kind {
                    0 => pt.map(k, virt + K4, 0, size, PteFlags::WRITABLE),
                    1 => {
                        let bad = if fmt.va_bits() == 32 {
                            virt | 1 << 32
                        } else {
                            virt ^ 1 << 63
                        };
                        pt.map(k, bad, 0, K4, PteFlags::WRITABLE)
                    }
                    _ => pt.map(k, virt, 0, 2 * K4, PteFlags::WRITABLE),
                };
                let ok = matches!(
                    r,
                    Err(KmmError::InvalidAddress { .. }) | Err(KmmError::InvalidArgument { .. })
                );
                prop_assert!(ok, "bad map kind {} gave {:?}", kind, r);
                prop_assert_eq!(k.nr_page_table_pages(), tables);
            }
        }
        check(k, &pt, &model, step as u64 * 7919 + 13, t0)?;
    }
    // Unmap everything (in a scrambled order), then destroy.
    let keys: Vec<u64> = model.map.keys().copied().collect();
    let n = keys.len();
    for i in 0..n {
        let v = keys[(i * 7 + 3) % n.max(1)];
        if let Some(e) = model.map.remove(&v) {
            let got = pt.unmap(k, v + e.size / 2).expect("unmap");
            prop_assert_eq!(got.map(|m| (m.virt, m.phys)), Some((v, e.phys)));
        }
    }
    for v in keys {
        model.map.remove(&v);
        let _ = pt.unmap(k, v);
    }
    prop_assert_eq!(k.nr_page_table_pages(), t0 + 1, "only the root is left");
    k.pgd_free(pt).expect("pgd_free");
    prop_assert_eq!(k.nr_page_table_pages(), t0);
    k.drain_all_pages();
    prop_assert_eq!(k.nr_free_pages(), free0);
    Ok(())
}

fn proptest_format(fmt: &'static dyn PagingFormat) {
    let m = boot(profile(fmt), 256 * M, 1, 1);
    let k = m.kmm();
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let r = runner.run(&proptest::collection::vec(op(), 1..60), |ops| {
        run_ops(k, fmt, &ops)
    });
    if let Err(e) = r {
        panic!("{}: {e}", fmt.name());
    }
}

#[test]
fn proptest_x86_2level() {
    proptest_format(&X86_2LEVEL);
}

#[test]
fn proptest_x86_pae() {
    proptest_format(&X86_PAE);
}

#[test]
fn proptest_x86_64_4level() {
    proptest_format(&X86_64_4LEVEL);
}

#[test]
fn proptest_x86_64_5level() {
    proptest_format(&X86_64_5LEVEL);
}

const ALL: [&'static dyn PagingFormat; 4] = [&X86_2LEVEL, &X86_PAE, &X86_64_4LEVEL, &X86_64_5LEVEL];

#[test]
fn profiles_offer_their_formats() {
    let x86 = kmm::Arch::by_name("x86").unwrap().paging_formats();
    assert_eq!(x86[0].name(), "x86 2-level");
    assert_eq!(x86[1].name(), "x86 PAE 3-level");
    let x64 = kmm::Arch::by_name("x86_64").unwrap().paging_formats();
    assert_eq!(x64[0].name(), "x86_64 4-level");
    assert_eq!(x64[1].name(), "x86_64 5-level");
    assert_eq!(X86_2LEVEL.entry_size(), 4);
    assert_eq!(X86_2LEVEL.entries(0), 1024);
    assert_eq!(X86_PAE.entries(2), 4);
    assert_eq!(X86_64_5LEVEL.level_name(3), "p4d");
}

#[test]
fn large_pages_translate_every_offset() {
    for fmt in ALL {
        let m = boot(profile(fmt), 128 * M, 1, 1);
        let k = m.kmm();
        let mut pt = k.pgd_alloc(fmt).unwrap();
        for (size, level) in sizes(fmt).into_iter().skip(1) {
            let virt = 8 * size;
            let phys = 3 * size;
            pt.map(k, virt, phys, size, PteFlags::WRITABLE).unwrap();
            let step = if size > (4 << 20) { 4096 * 61 } else { 4096 };
            let mut off = 0;
            while off < size {
                for o in [off, off + 4095] {
                    let t = pt.walk(k, virt + o).unwrap();
                    assert_eq!((t.phys, t.size, t.level), (phys + o, size, level));
                }
                off += step;
            }
            let t = pt.walk(k, virt + size - 1).unwrap();
            assert_eq!(t.phys, phys + size - 1);
            assert_eq!(pt.walk(k, virt + size), None);
            assert_eq!(pt.walk(k, virt - 1), None);
            // A 4 KiB map inside a large page is refused.
            assert_eq!(
                pt.map(k, virt + K4, 0, K4, PteFlags::empty()),
                Err(KmmError::AlreadyMapped { virt: virt + K4 })
            );
        }
        k.pgd_free(pt).unwrap();
        assert_eq!(k.nr_page_table_pages(), 0);
    }
}

#[test]
fn walk_sets_accessed_and_dirty_like_hardware() {
    for fmt in ALL {
        let m = boot(profile(fmt), 128 * M, 1, 1);
        let k = m.kmm();
        let mut pt = k.pgd_alloc(fmt).unwrap();
        pt.map(k, 0x40_0000, 0x10_0000, K4, PteFlags::WRITABLE)
            .unwrap();
        pt.map(k, 0x40_1000, 0x20_0000, K4, PteFlags::USER).unwrap();
        let f = |pt: &PageTable, v| pt.walk(k, v).unwrap().flags;
        assert!(!f(&pt, 0x40_0000).pte_young() && !f(&pt, 0x40_0000).pte_dirty());
        // A read marks accessed only.
        let t = pt.walk_and_mark(k, 0x40_0008, false).unwrap();
        assert_eq!(t.phys, 0x10_0008);
        assert!(t.flags.pte_young() && !t.flags.pte_dirty());
        // A write marks dirty.
        let t = pt.walk_and_mark(k, 0x40_0010, true).unwrap();
        assert!(t.flags.pte_young() && t.flags.pte_dirty());
        // A write to a read-only page faults and marks nothing.
        assert_eq!(pt.walk_and_mark(k, 0x40_1000, true), None);
        assert!(!f(&pt, 0x40_1000).pte_young());
        // Nothing mapped: a fault.
        assert_eq!(pt.walk_and_mark(k, 0x80_0000, false), None);
        // ptep_test_and_clear_young.
        assert_eq!(pt.test_and_clear_young(k, 0x40_0000), Ok(true));
        assert_eq!(pt.test_and_clear_young(k, 0x40_0000), Ok(false));
        assert!(f(&pt, 0x40_0000).pte_dirty(), "clearing young keeps dirty");
        // protect keeps accessed/dirty (pte_modify), write-protects.
        let mm = pt.protect(k, 0x40_0000, PteFlags::empty()).unwrap();
        assert!(mm.flags.pte_dirty() && !mm.flags.pte_write());
        assert_eq!(pt.walk_and_mark(k, 0x40_0000, true), None);
        // NX exists only with 8-byte entries.
        pt.map(k, 0x50_0000, 0, K4, PteFlags::NO_EXEC).unwrap();
        assert_eq!(
            f(&pt, 0x50_0000).pte_exec(),
            fmt.entry_size() == 4,
            "{}",
            fmt.name()
        );
        k.pgd_free(pt).unwrap();
        assert_eq!(k.nr_page_table_pages(), 0);
    }
}

#[test]
fn errors_are_values() {
    for fmt in ALL {
        let m = boot(profile(fmt), 128 * M, 1, 1);
        let k = m.kmm();
        let mut pt = k.pgd_alloc(fmt).unwrap();
        let w = PteFlags::WRITABLE;
        assert!(matches!(
            pt.map(k, 0x1234, 0, K4, w),
            Err(KmmError::InvalidAddress { .. })
        ));
        assert!(matches!(
            pt.map(k, 0x1000, 0x1234, K4, w),
            Err(KmmError::InvalidAddress { .. })
        ));
        assert!(matches!(
            pt.map(k, 0, 0, 8192, w),
            Err(KmmError::InvalidArgument { .. })
        ));
        let noncanon = if fmt.va_bits() == 32 {
            1 << 32
        } else {
            0x8000_0000_0000_0000
        };
        assert!(matches!(
            pt.map(k, noncanon, 0, K4, w),
            Err(KmmError::InvalidAddress { .. })
        ));
        assert_eq!(pt.walk(k, noncanon), None);
        assert!(pt.unmap(k, noncanon).is_err());
        // A frame the format cannot address.
        let far = if fmt.levels() == 2 { 1 << 32 } else { 1 << 52 };
        assert!(matches!(
            pt.map(k, 0, far, K4, w),
            Err(KmmError::InvalidAddress { .. })
        ));
        assert_eq!(pt.unmap(k, 0x1000), Ok(None));
        assert_eq!(
            pt.protect(k, 0x1000, w),
            Err(KmmError::NotMapped { virt: 0x1000 })
        );
        pt.map(k, 0x1000, 0x5000, K4, w).unwrap();
        assert_eq!(
            pt.map(k, 0x1000, 0x6000, K4, w),
            Err(KmmError::AlreadyMapped { virt: 0x1000 })
        );
        // A large page over a table that holds a mapping.
        let (big, _) = sizes(fmt)[1];
        assert_eq!(
            pt.map(k, 0, 0, big, w),
            Err(KmmError::AlreadyMapped { virt: 0 })
        );
        // Every failure left the table count alone: root + one per level below.
        assert_eq!(k.nr_page_table_pages(), fmt.levels() as u64);
        k.pgd_free(pt).unwrap();
        assert_eq!(k.nr_page_table_pages(), 0);
        assert!(m.take_log().iter().all(|l| !l.contains("BUG")));
    }
}

#[test]
fn out_of_memory_is_an_error_and_undoes_itself() {
    for fmt in ALL {
        let m = boot(profile(fmt), 64 * M, 1, 1);
        let k = m.kmm();
        let mut pt = k.pgd_alloc(fmt).unwrap();
        let mut held = exhaust(k, GfpFlags::GFP_KERNEL, 10);
        // Leave room for all but the last table the map needs, so the
        // undo path runs (if the watermarks allow those allocations).
        for _ in 0..fmt.levels() - 2 {
            if let Some(i) = held.iter().position(|a| a.order == 0) {
                held.swap_remove(i).free(k).unwrap();
            }
        }
        k.drain_all_pages();
        let free = k.nr_free_pages();
        let r = pt.map(k, 0x4000_0000, 0, K4, PteFlags::WRITABLE);
        assert!(
            matches!(r, Err(KmmError::NoMemory { .. })),
            "{}: {r:?}",
            fmt.name()
        );
        assert_eq!(k.nr_page_table_pages(), 1);
        k.drain_all_pages();
        assert_eq!(k.nr_free_pages(), free);
        free_all(k, held);
        // With memory back, the same call works.
        pt.map(k, 0x4000_0000, 0, K4, PteFlags::WRITABLE).unwrap();
        k.pgd_free(pt).unwrap();
        assert_eq!(k.nr_page_table_pages(), 0);
    }
}

#[test]
fn meminfo_shows_page_tables() {
    let m = boot("x86_64", 128 * M, 1, 1);
    let k = m.kmm();
    let mut pt = k.pgd_alloc(&X86_64_4LEVEL).unwrap();
    pt.map(k, 0x1000, 0x1000, K4, PteFlags::WRITABLE).unwrap();
    let mut s = String::new();
    kmm::proc_meminfo::meminfo(k, &mut s).unwrap();
    let lines: Vec<&str> = s.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.starts_with("PageTables:"))
        .expect("PageTables line");
    assert!(lines[i - 1].starts_with("SUnreclaim:") || lines[i - 1].starts_with("KernelStack:"));
    assert_eq!(lines[i], "PageTables:           16 kB");
    k.pgd_free(pt).unwrap();
}
