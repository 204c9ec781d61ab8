//! Kernel virtual memory on a simulated machine (`mm/vmalloc.c`,
//! `arch/x86/mm/ioremap.c`, `arch/x86/mm/init*.c`): the kernel layout and
//! the boot-time direct map, vmalloc/vzalloc/vmalloc_32/vmalloc_node, guard
//! pages, the lazy purge, `/proc/vmallocinfo` and the `Vmalloc*`/`DirectMap*`
//! lines of `/proc/meminfo`, vmap, ioremap of the frame buffer, and the
//! errors Linux reports, on x86_64 and on x86 (two-level and PAE).

mod common;

use common::*;
use kmm::arch::init::DirectPages;
use kmm::pgtable::Entry;
use kmm::{GfpFlags, KmmError, PteFlags, VmFlags, VmStruct};
use kmm_sim::machine::{FRAMEBUFFER_PHYS, FRAMEBUFFER_SIZE};
use kmm_sim::Machine;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::collections::{BTreeMap, HashSet};

const PS: u64 = 4096;
const KERNEL: GfpFlags = GfpFlags::GFP_KERNEL;

// ------------------------------------------------------------------ helpers

/// Every range of the vmalloc area, in the order `for_each_vm_area` gives.
fn areas(k: &K) -> Vec<VmStruct> {
    let mut v = Vec::new();
    k.for_each_vm_area(&mut |a| v.push(*a));
    v
}

/// [`areas`], checked to come in address order without overlap (guard
/// pages included).
fn ordered_areas(k: &K) -> Result<Vec<VmStruct>, TestCaseError> {
    let all = areas(k);
    for w in all.windows(2) {
        prop_assert!(
            w[0].addr + w[0].size <= w[1].addr,
            "{:x?} / {:x?}",
            w[0],
            w[1]
        );
    }
    Ok(all)
}

/// The busy (not lazily freed) ranges.
fn live_areas(k: &K) -> Vec<VmStruct> {
    areas(k).into_iter().filter(|a| !a.lazy).collect()
}

fn vread_vec(k: &K, addr: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0xa5u8; len];
    k.vread(addr, &mut b).unwrap();
    b
}

/// The page frames behind `pages` consecutive pages at `addr`.
fn frames(k: &K, addr: u64, pages: u64) -> Vec<u64> {
    (0..pages)
        .map(|i| k.vmalloc_to_pfn(addr + i * PS).unwrap())
        .collect()
}

/// Free pages once the slab caches are shrunk and the per-CPU lists drained.
fn settled_free(k: &K) -> u64 {
    shrink_all(k);
    k.drain_all_pages();
    k.nr_free_pages()
}

/// Creates the `vmap_area` cache (and on x86_64 the first vmalloc page
/// tables) so later free-page comparisons see only what the test does.
fn warm_up(k: &K) {
    let a = k.vmalloc(PS).unwrap();
    k.vfree(a).unwrap();
    k.vm_unmap_aliases();
}

fn vmallocinfo(m: &Machine) -> String {
    kmm_sim::procfs::read(m, "/proc/vmallocinfo").unwrap()
}

/// A recognisable byte pattern for range `tag`.
fn pattern(tag: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (tag.wrapping_mul(0x9e37) ^ (i >> 3) ^ (i << 5)) as u8)
        .collect()
}

/// Physical end of directly mapped low memory (`max_low_pfn << PAGE_SHIFT`).
fn lowmem_end(k: &K) -> u64 {
    let end = k.max_pfn() * PS;
    k.arch().max_lowmem.map_or(end, |l| end.min(l))
}

/// The RAM ranges the direct map must cover: memblock memory, page
/// aligned, clipped to low memory.
fn direct_ranges(k: &K) -> Vec<(u64, u64)> {
    let low = lowmem_end(k);
    k.memblock()
        .memory
        .regions()
        .iter()
        .map(|r| (r.base.next_multiple_of(PS), r.end().min(low) & !(PS - 1)))
        .filter(|(s, e)| s < e)
        .collect()
}

/// `kernel_physical_mapping_init()` as a test model: the largest page of
/// `sizes` (largest first) that is aligned and fits, else 4K.
fn model_direct_map(ranges: &[(u64, u64)], sizes: &[u64]) -> BTreeMap<u64, u64> {
    let mut by_size = BTreeMap::new();
    for &(s, e) in ranges {
        let mut p = s;
        while p < e {
            let size = sizes
                .iter()
                .copied()
                .find(|&sz| p % sz == 0 && p + sz <= e)
                .unwrap_or(PS);
            *by_size.entry(size).or_insert(0u64) += 1;
            p += size;
        }
    }
    by_size
}

/// Every table page of `swapper_pg_dir`, the root first, found by walking
/// the raw entries.
fn kernel_table_pages(k: &K) -> Vec<u64> {
    let pgd = k.swapper_pg_dir().unwrap();
    let fmt = pgd.format();
    let mut out = vec![pgd.root()];
    let mut todo = vec![(pgd.root(), fmt.levels() - 1)];
    while let Some((table, level)) = todo.pop() {
        if level == 0 {
            continue;
        }
        for idx in 0..fmt.entries(level) as u64 {
            let at = table + idx * fmt.entry_size();
            let raw = if fmt.entry_size() == 4 {
                let mut b = [0u8; 4];
                k.phys().read(at, &mut b).unwrap();
                u64::from(u32::from_le_bytes(b))
            } else {
                k.phys().read_u64(at).unwrap()
            };
            if let Entry::Table(next) = fmt.decode(raw, level) {
                out.push(next);
                todo.push((next, level - 1));
            }
        }
    }
    out
}

/// The kernel page-table pages allocated after boot (not `PG_reserved`),
/// as allocations for [`check_frames`]; the total is what the kernel page
/// table accounts.
fn runtime_table_allocs(k: &K) -> Vec<Alloc> {
    let all = kernel_table_pages(k);
    assert_eq!(all.len() as u64, k.kernel_page_table_pages());
    all.iter()
        .map(|&phys| phys / PS)
        .filter(|&pfn| !k.pfn_to_page(pfn).unwrap().is_reserved())
        .map(|pfn| Alloc {
            pfn,
            order: 0,
            comp: false,
        })
        .collect()
}

/// Every block the page allocator has handed out and not got back (slab
/// pages of caches made since boot, ...), as allocations for
/// [`check_frames`].
fn allocated_blocks(k: &K) -> Vec<Alloc> {
    let map = k.mem_map();
    (0..k.max_pfn())
        .filter_map(|pfn| {
            let p = &map[pfn as usize];
            if p.is_reserved() || p.page_count() < 1 {
                return None;
            }
            p.alloc_order().map(|order| Alloc {
                pfn,
                order,
                comp: p.is_head(),
            })
        })
        .collect()
}

/// Checks the frames: nothing is allocated but `before` and the kernel
/// page tables made after boot.
fn check_nothing_leaked(k: &K, before: &[Alloc]) {
    let mut held = before.to_vec();
    for t in runtime_table_allocs(k) {
        if !held.contains(&t) {
            held.push(t);
        }
    }
    check_frames(k, &held).unwrap();
}

fn log_has(m: &Machine, needle: &str) -> Vec<String> {
    let log = m.take_log();
    assert!(logged(&log, needle), "no {needle:?} in {log:#?}");
    log
}

// ------------------------------------------------------------------- layout

/// The 32-bit layout Linux prints at boot, for 2 GiB (high memory, 896 MiB
/// directly mapped), 512 MiB (all low) and 6 GiB (PAE).
#[test]
fn layout_x86() {
    struct Want {
        ram: u64,
        high_memory: u64,
        vmalloc_start: u64,
        pkmap_base: u64,
        last_pkmap: usize,
        fmt: &'static str,
        boot_line: &'static str,
    }
    let cases = [
        Want {
            ram: 2 * G,
            high_memory: 0xf800_0000,
            vmalloc_start: 0xf880_0000,
            pkmap_base: 0xff80_0000,
            last_pkmap: 1024,
            fmt: "x86 2-level",
            boot_line: "    vmalloc : 0xf8800000 - 0xff7fe000   ( 111 MB)",
        },
        Want {
            // RAM ends at 512M - 0x21000 (the e820 reserved tail); the
            // vmalloc area starts at the next 8 MiB boundary past it.
            ram: 512 * M,
            high_memory: 0xdffd_f000,
            vmalloc_start: 0xe000_0000,
            pkmap_base: 0xff80_0000,
            last_pkmap: 1024,
            fmt: "x86 2-level",
            boot_line: "    lowmem  : 0xc0000000 - 0xdffdf000   ( 511 MB)",
        },
        Want {
            ram: 6 * G,
            high_memory: 0xf800_0000,
            vmalloc_start: 0xf880_0000,
            pkmap_base: 0xffa0_0000,
            last_pkmap: 512,
            fmt: "x86 PAE 3-level",
            boot_line: "    pkmap   : 0xffa00000 - 0xffc00000   (2048 kB)",
        },
    ];
    for w in cases {
        let m = Machine::boot(config("x86", w.ram, 2, 1)).unwrap();
        let log = m.take_log();
        assert!(logged(&log, "virtual kernel memory layout:"), "{log:#?}");
        assert!(logged(&log, w.boot_line), "{log:#?}");
        assert!(logged(&log, &format!("kernel page table: {}", w.fmt)));
        let k = m.kmm();
        let l = *k.kernel_layout();
        assert_eq!(k.swapper_pg_dir().unwrap().format().name(), w.fmt);
        assert_eq!(l.page_offset, 0xc000_0000);
        assert_eq!(l.high_memory, w.high_memory, "ram {}", w.ram >> 20);
        assert_eq!(l.high_memory, 0xc000_0000 + lowmem_end(k));
        assert_eq!(l.vmalloc_start, w.vmalloc_start);
        // At least one byte of gap (VMALLOC_OFFSET catches overruns).
        assert!(l.vmalloc_start > l.high_memory);
        assert!(l.vmalloc_start - l.high_memory <= 8 * M);
        assert_eq!(l.vmalloc_start % (8 * M), 0);
        assert_eq!(l.pkmap_base, w.pkmap_base);
        assert_eq!(l.last_pkmap, w.last_pkmap);
        // Two unmapped pages between the vmalloc area and the pkmaps.
        assert_eq!(l.vmalloc_end, w.pkmap_base - 2 * PS);
        // The fixmap at the top: FIX_HOLE, FIX_APIC_BASE, 64 IO-APIC slots,
        // then KM_MAX_IDX (16) kmap_atomic slots per CPU.
        assert_eq!(l.fixaddr_top, 0xffff_f000);
        assert_eq!(l.fix_kmap_begin, 66);
        assert_eq!(k.kmap_atomic_addr(0, 0), 0xffff_f000 - 66 * PS);
        assert_eq!(k.kmap_atomic_addr(1, 15), 0xffff_f000 - (66 + 31) * PS);
        assert!(l.fixaddr_start <= k.kmap_atomic_addr(1, 15));
        assert!(l.fixaddr_start > 0xffc0_0000);
        // pkmap slots lie below the boot-time fixmap slots (2 MiB).
        let pkmap_end = l.pkmap_base + l.last_pkmap as u64 * PS;
        assert!(pkmap_end <= l.fixaddr_start - 2 * M);
        assert_eq!(k.vmalloc_total(), l.vmalloc_end - l.vmalloc_start);
        assert_eq!(
            meminfo_kb(k, "VmallocTotal"),
            (l.vmalloc_end - l.vmalloc_start) >> 10
        );
        assert_eq!(meminfo_kb(k, "VmallocUsed"), 0);
        assert_eq!(meminfo_kb(k, "VmallocChunk"), 0);
        assert!(k.is_vmalloc_addr(l.vmalloc_start));
        assert!(k.is_vmalloc_addr(l.vmalloc_end - 1));
        assert!(!k.is_vmalloc_addr(l.vmalloc_end));
        assert!(!k.is_vmalloc_addr(l.vmalloc_start - 1));
        assert!(!k.is_vmalloc_addr(l.pkmap_base));
        assert!(!k.is_vmalloc_addr(l.page_offset));
        // Nothing is in the vmalloc area after boot.
        assert!(areas(k).is_empty());
    }
    // 2 GiB: 111 MiB of vmalloc space, Linux's 114680 kB.
    let m = boot("x86", 2 * G, 2, 1);
    assert_eq!(meminfo_kb(m.kmm(), "VmallocTotal"), 114_680);
}

/// x86_64: 32 TiB of vmalloc space at `__VMALLOC_BASE_L4`, no pkmap or fixmap
/// for kmaps.
#[test]
fn layout_x86_64() {
    for ram in [G, 6 * G] {
        let m = boot("x86_64", ram, 2, 1);
        let k = m.kmm();
        let l = *k.kernel_layout();
        assert_eq!(
            k.swapper_pg_dir().unwrap().format().name(),
            "x86_64 4-level"
        );
        assert_eq!(l.page_offset, 0xffff_8880_0000_0000);
        assert_eq!(l.high_memory, 0xffff_8880_0000_0000 + k.max_pfn() * PS);
        assert_eq!(l.vmalloc_start, 0xffff_c900_0000_0000);
        assert_eq!(l.vmalloc_end, 0xffff_e8ff_ffff_ffff);
        assert_eq!((l.pkmap_base, l.last_pkmap), (0, 0));
        assert_eq!((l.fixaddr_start, l.fixaddr_top), (0, 0));
        assert_eq!(meminfo_kb(k, "VmallocTotal"), 34_359_738_367);
        assert_eq!(meminfo_kb(k, "VmallocUsed"), 0);
        assert!(k.is_vmalloc_addr(0xffff_c900_0000_0000));
        assert!(k.is_vmalloc_addr(0xffff_e8ff_ffff_fffe));
        assert!(!k.is_vmalloc_addr(0xffff_e900_0000_0000));
        assert!(!k.is_vmalloc_addr(0xffff_c8ff_ffff_ffff));
        assert!(!k.is_vmalloc_addr(l.page_offset));
        assert_eq!(k.pkmap_stats().slots, 0);
    }
}

/// The boot-time direct map: every leaf maps `__va(phys)` to `phys`, with
/// the largest pages the format has; it covers exactly the low RAM, and the
/// `DirectMap*` lines add up to it.
#[test]
fn direct_map_uses_large_pages() {
    // (profile, RAM, large page sizes largest first, meminfo labels)
    let cases: [(&str, u64, &[u64], &[&str]); 5] = [
        ("x86", 2 * G, &[4 * M], &["DirectMap4k", "DirectMap4M"]),
        ("x86", 512 * M, &[4 * M], &["DirectMap4k", "DirectMap4M"]),
        ("x86", 6 * G, &[2 * M], &["DirectMap4k", "DirectMap2M"]),
        (
            "x86_64",
            G,
            &[G, 2 * M],
            &["DirectMap4k", "DirectMap2M", "DirectMap1G"],
        ),
        (
            "x86_64",
            6 * G,
            &[G, 2 * M],
            &["DirectMap4k", "DirectMap2M", "DirectMap1G"],
        ),
    ];
    for (arch, ram, sizes, labels) in cases {
        let what = format!("{arch} {}M", ram >> 20);
        let m = boot(arch, ram, 2, 1);
        let k = m.kmm();
        let pgd = k.swapper_pg_dir().unwrap();
        let ranges = direct_ranges(k);
        let low = lowmem_end(k);
        let want = model_direct_map(&ranges, sizes);

        // Every leaf of swapper_pg_dir after boot is the direct map.
        let mut got: BTreeMap<u64, u64> = BTreeMap::new();
        let mut leaves = Vec::new();
        pgd.for_each_mapping(k, &mut |mp| leaves.push(*mp)).unwrap();
        for mp in &leaves {
            assert_eq!(mp.virt, k.arch().phys_to_virt(mp.phys), "{what}: {mp:x?}");
            assert!(mp.phys + mp.size <= low, "{what}: highmem mapped {mp:x?}");
            assert!(mp.flags.contains(PteFlags::PRESENT | PteFlags::WRITABLE));
            assert!(mp.flags.contains(PteFlags::GLOBAL));
            assert!(!mp.flags.contains(PteFlags::USER));
            assert_eq!(mp.phys % mp.size, 0);
            *got.entry(mp.size).or_insert(0) += 1;
        }
        assert_eq!(got, want, "{what}: leaves by size");
        // The leaves tile the RAM ranges exactly.
        let mapped: u64 = leaves.iter().map(|mp| mp.size).sum();
        let ram_low: u64 = ranges.iter().map(|(s, e)| e - s).sum();
        assert_eq!(mapped, ram_low, "{what}");
        let mut sorted: Vec<_> = leaves.iter().map(|mp| (mp.phys, mp.size)).collect();
        sorted.sort();
        for w in sorted.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "{what}: overlapping leaves");
        }

        // direct_map_pages() and the meminfo lines.
        let dp: DirectPages = k.direct_map_pages();
        let nonzero: Vec<(u64, u64)> = dp.by_size.iter().copied().filter(|s| s.0 != 0).collect();
        assert_eq!(nonzero.len(), labels.len(), "{what}: {dp:?}");
        let mut sum_kb = 0;
        for (&(size, pages), label) in nonzero.iter().zip(labels) {
            assert_eq!(
                pages,
                want.get(&size).copied().unwrap_or(0),
                "{what} {label}"
            );
            assert_eq!(meminfo_kb(k, label), pages * size / 1024, "{what}");
            sum_kb += meminfo_kb(k, label);
        }
        assert_eq!(sum_kb, ram_low / 1024, "{what}: DirectMap lines");

        // Walks: __va(phys) -> phys with the expected page size.
        let largest = sizes[0];
        for &(s, e) in &ranges {
            for phys in [s, e - 1, ((s + e) / 2) & !7, s.next_multiple_of(largest)] {
                if phys >= e {
                    continue;
                }
                let t = pgd.walk(k, k.__va(phys).unwrap()).unwrap();
                assert_eq!(t.phys, phys, "{what}");
                let leaf = leaves
                    .iter()
                    .find(|mp| (mp.phys..mp.phys + mp.size).contains(&phys))
                    .unwrap();
                assert_eq!(t.size, leaf.size);
            }
        }
        // Pages of each large size, at chosen places.
        let expect: &[(u64, u64)] = match (arch, ram) {
            ("x86", r) if r == 2 * G => &[(16 * M, 4 * M), (2 * M, PS), (892 * M, 4 * M)],
            ("x86", r) if r == 512 * M => &[(4 * M, 4 * M), (508 * M + 8, PS)],
            ("x86", _) => &[(2 * M, 2 * M), (M, PS), (894 * M + 9, 2 * M)],
            (_, r) if r == G => &[(2 * M, 2 * M), (M, PS), (1020 * M, 2 * M)],
            _ => &[
                (G, G),
                (4 * G + 5, G),
                (6 * G + 123, G),
                (2 * G, 2 * M),
                (M, PS),
            ],
        };
        for &(phys, size) in expect {
            let t = pgd.walk(k, k.__va(phys).unwrap()).unwrap();
            assert_eq!((t.phys, t.size), (phys, size), "{what}: {phys:#x}");
        }
        // High memory has no direct-map address, and the virtual addresses
        // past high_memory are not the direct map.
        let l = *k.kernel_layout();
        if k.max_pfn() * PS > low {
            assert!(k.__va(low).is_err());
            assert!(k.__va(k.max_pfn() * PS - PS).is_err());
            for v in [l.high_memory, l.high_memory + PS, l.vmalloc_start - PS] {
                assert!(pgd.walk(k, v).is_none(), "{what}: {v:#x} mapped");
            }
        }
        // The vmalloc area is empty after boot.
        for v in [
            l.vmalloc_start,
            l.vmalloc_start + 123 * PS,
            l.vmalloc_end - PS,
        ] {
            assert!(pgd.walk(k, v).is_none());
        }
    }
}

// ------------------------------------------------------------------ vmalloc

/// Sizes round up to whole pages; each range is followed by one guard page
/// and the next range starts after it; ranges start at VMALLOC_START on a
/// fresh machine.
#[test]
fn sizes_round_up_and_ranges_are_guarded() {
    for (arch, ram) in [("x86_64", 256 * M), ("x86", 2 * G)] {
        let m = boot(arch, ram, 2, 1);
        let k = m.kmm();
        let l = *k.kernel_layout();
        let mut next = l.vmalloc_start;
        let mut total_pages = 0;
        for (size, pages) in [
            (1u64, 1u64),
            (PS, 1),
            (PS + 1, 2),
            (5 * PS - 7, 5),
            (16 * PS, 16),
        ] {
            let a = k.vmalloc(size).unwrap();
            assert_eq!(a, next, "{arch}: size {size}");
            assert_eq!(a % PS, 0);
            assert!(k.is_vmalloc_addr(a));
            let v = k.find_vm_area(a).unwrap();
            assert_eq!(v.addr, a);
            assert_eq!(v.size, (pages + 1) * PS, "guard page included");
            assert_eq!(v.area_size(), pages * PS);
            assert_eq!(v.nr_pages as u64, pages);
            assert_eq!(v.flags, VmFlags::VM_ALLOC);
            assert!(!v.lazy);
            assert_eq!(v.phys_addr, 0);
            assert_eq!(v.caller.unwrap().0, file!());
            // Every page mapped, the guard not.
            assert_eq!(frames(k, a, pages).len() as u64, pages);
            assert!(matches!(
                k.vmalloc_to_pfn(a + pages * PS),
                Err(KmmError::NotMapped { .. })
            ));
            // A pointer inside the range is not the range.
            assert!(k.find_vm_area(a + PS).is_none());
            next = a + (pages + 1) * PS;
            total_pages += pages;
        }
        assert_eq!(k.vmalloc_nr_pages(), total_pages);
        assert_eq!(meminfo_kb(k, "VmallocUsed"), total_pages * 4);
        assert_eq!(live_areas(k).len(), 5);
    }
}

/// The pages behind a range are distinct frames that need not be physically
/// contiguous: with a fragmented free list vmalloc takes every other frame.
#[test]
fn frames_are_distinct_and_need_not_be_contiguous() {
    for (arch, ram, gfp) in [
        ("x86_64", 256 * M, KERNEL),
        ("x86", 2 * G, GfpFlags::GFP_HIGHUSER),
    ] {
        let m = boot(arch, ram, 1, 1);
        let k = m.kmm();
        // Warm up with the same size, so the page array's kmalloc slab and
        // the vmap_area slab need no new page below.
        let w = k.vmalloc(32 * PS).unwrap();
        k.vfree(w).unwrap();
        k.vm_unmap_aliases();
        // Take 64 frames, give back every other one: the per-CPU list now
        // holds frames two apart.
        let pages: Vec<_> = (0..64).map(|_| k.alloc_page(gfp).unwrap()).collect();
        let pfns: Vec<u64> = pages.iter().map(|p| k.page_to_pfn(p).unwrap()).collect();
        let mut freed = HashSet::new();
        for (i, p) in pages.iter().enumerate() {
            if i % 2 == 0 {
                k.__free_pages(p, 0).unwrap();
                freed.insert(pfns[i]);
            }
        }
        let a = k.vmalloc(32 * PS).unwrap();
        let f = frames(k, a, 32);
        let set: HashSet<u64> = f.iter().copied().collect();
        assert_eq!(set.len(), 32, "{arch}: frames shared: {f:x?}");
        assert_eq!(set, freed, "{arch}: vmalloc took the recently freed frames");
        let contiguous = f.windows(2).filter(|w| w[1] == w[0] + 1).count();
        assert_eq!(contiguous, 0, "{arch}: {f:x?}");
        for (i, &pfn) in f.iter().enumerate() {
            let p = k.vmalloc_to_page(a + i as u64 * PS).unwrap();
            assert_eq!(k.page_to_pfn(p).unwrap(), pfn);
            assert_eq!(p.page_count(), 1);
        }
        // The data lands in exactly those frames.
        let data = pattern(7, 32 * PS as usize);
        k.vwrite(a, &data).unwrap();
        for (i, &pfn) in f.iter().enumerate() {
            let mut b = vec![0u8; PS as usize];
            k.phys().read(pfn * PS, &mut b).unwrap();
            assert_eq!(b, data[i * PS as usize..(i + 1) * PS as usize]);
        }
        k.vfree(a).unwrap();
        for (i, p) in pages.iter().enumerate() {
            if i % 2 == 1 {
                k.__free_pages(p, 0).unwrap();
            }
        }
    }
}

/// Unaligned writes spanning pages read back unaligned, and each page's
/// bytes are in its own frame.
#[test]
fn vread_vwrite_across_page_boundaries() {
    for (arch, ram) in [("x86_64", 256 * M), ("x86", 2 * G), ("x86", 6 * G)] {
        let m = boot(arch, ram, 2, 1);
        let k = m.kmm();
        let a = k.vmalloc(3 * PS).unwrap();
        let data = pattern(3, 3 * PS as usize - 100);
        k.vwrite(a + 50, &data).unwrap();
        assert_eq!(vread_vec(k, a + 50, data.len()), data, "{arch}");
        // A window straddling the first boundary.
        let w = vread_vec(k, a + PS - 10, 20);
        assert_eq!(w, data[PS as usize - 60..PS as usize - 40]);
        // Page by page through the frames.
        let f = frames(k, a, 3);
        let mut whole = vec![0u8; 3 * PS as usize];
        for (i, pfn) in f.iter().enumerate() {
            k.phys()
                .read(pfn * PS, &mut whole[i * PS as usize..(i + 1) * PS as usize])
                .unwrap();
        }
        assert_eq!(&whole[50..50 + data.len()], &data[..]);
        // A later write in the middle changes only those bytes.
        k.vwrite(a + 2 * PS - 3, &[1, 2, 3, 4, 5, 6]).unwrap();
        let got = vread_vec(k, a + 2 * PS - 5, 10);
        let off = 2 * PS as usize - 5 - 50;
        assert_eq!(got[..2], data[off..off + 2]);
        assert_eq!(got[2..8], [1, 2, 3, 4, 5, 6]);
        assert_eq!(got[8..], data[off + 8..off + 10]);
        k.vfree(a).unwrap();
    }
}

/// vzalloc returns zeros even when its frames were just dirtied and freed;
/// plain vmalloc of the same frames shows the old bytes.
#[test]
fn vzalloc_zeroes_recycled_pages() {
    for (arch, ram) in [("x86_64", 256 * M), ("x86", 2 * G)] {
        let m = boot(arch, ram, 1, 1);
        let k = m.kmm();
        let n = 16;
        let a = k.vmalloc(n * PS).unwrap();
        let old = frames(k, a, n);
        k.vwrite(a, &vec![0xaa; (n * PS) as usize]).unwrap();
        k.vfree(a).unwrap();
        k.vm_unmap_aliases();
        // Not zeroed by vmalloc: the same frames come back dirty.
        let b = k.vmalloc(n * PS).unwrap();
        let again: HashSet<u64> = frames(k, b, n).into_iter().collect();
        assert_eq!(
            again,
            old.iter().copied().collect(),
            "{arch}: hot frames reused"
        );
        assert_eq!(
            vread_vec(k, b, (n * PS) as usize),
            vec![0xaa; (n * PS) as usize]
        );
        k.vfree(b).unwrap();
        let z = k.vzalloc(n * PS - 1).unwrap();
        let zf: HashSet<u64> = frames(k, z, n).into_iter().collect();
        assert_eq!(zf, again, "{arch}: the dirty frames again");
        assert_eq!(
            vread_vec(k, z, (n * PS) as usize),
            vec![0; (n * PS) as usize]
        );
        k.vfree(z).unwrap();
    }
}

/// On x86 vmalloc's pages come from ZONE_HIGHMEM (nothing needs them
/// directly mapped) and vmalloc_32's from low memory; on x86_64 vmalloc_32
/// stays below 4 GiB.
#[test]
fn zones_of_vmalloc_and_vmalloc_32() {
    for ram in [2 * G, 6 * G] {
        let m = boot("x86", ram, 1, 1);
        let k = m.kmm();
        let a = k.vmalloc(40 * PS).unwrap();
        for pfn in frames(k, a, 40) {
            let p = k.pfn_to_page(pfn).unwrap();
            assert!(k.page_is_highmem(p), "x86 {}M: pfn {pfn:#x}", ram >> 20);
            assert!(pfn * PS >= 896 * M);
            assert_eq!(
                k.page_address(p),
                None,
                "no kernel address but the vmalloc one"
            );
        }
        let b = k.vmalloc_32(40 * PS).unwrap();
        for pfn in frames(k, b, 40) {
            let p = k.pfn_to_page(pfn).unwrap();
            assert!(!k.page_is_highmem(p));
            assert!(pfn * PS < 896 * M);
            assert_eq!(k.page_address(p), Some(0xc000_0000 + pfn * PS));
        }
        // Data works through the high frames (above 4 GiB with PAE).
        let data = pattern(ram, 40 * PS as usize);
        k.vwrite(a, &data).unwrap();
        assert_eq!(vread_vec(k, a, data.len()), data);
        k.vfree(a).unwrap();
        k.vfree(b).unwrap();
    }
    let m = boot("x86_64", 6 * G, 1, 1);
    let k = m.kmm();
    let a = k.vmalloc(40 * PS).unwrap();
    let b = k.vmalloc_32(40 * PS).unwrap();
    for pfn in frames(k, a, 40) {
        // GFP_KERNEL prefers ZONE_NORMAL, all above 4 GiB here.
        assert!(pfn * PS >= 4 * G, "pfn {pfn:#x}");
        assert_eq!(k.page_zone(k.pfn_to_page(pfn).unwrap()).name(), "Normal");
    }
    for pfn in frames(k, b, 40) {
        assert!(pfn * PS < 4 * G, "pfn {pfn:#x}");
        assert_eq!(k.page_zone(k.pfn_to_page(pfn).unwrap()).name(), "DMA32");
    }
    k.vfree(a).unwrap();
    k.vfree(b).unwrap();
}

/// `__vmalloc(GFP_KERNEL | GFP_DMA)`: Linux adds `__GFP_HIGHMEM` only when
/// the caller asked for no zone (`if (!(gfp & (GFP_DMA | GFP_DMA32)))`), so
/// the pages come from ZONE_DMA.
#[test]
fn vmalloc_with_gfp_dma_uses_zone_dma() {
    for (arch, ram) in [("x86", 2 * G), ("x86_64", 256 * M)] {
        let m = boot(arch, ram, 1, 1);
        let k = m.kmm();
        let a = k
            .__vmalloc(4 * PS, KERNEL | GfpFlags::GFP_DMA)
            .unwrap_or_else(|e| panic!("{arch}: {e}: {:#?}", m.take_log()));
        for pfn in frames(k, a, 4) {
            assert!(pfn * PS < 16 * M, "{arch}: pfn {pfn:#x}");
        }
        k.vfree(a).unwrap();
    }
}

/// The guard page after a range reads as zeros through vread and cannot be
/// written; nothing is mapped there.
#[test]
fn guard_page_is_not_mapped() {
    for (arch, ram) in [("x86_64", 256 * M), ("x86", 2 * G)] {
        let m = boot(arch, ram, 1, 1);
        let k = m.kmm();
        let a = k.vmalloc(2 * PS).unwrap();
        let b = k.vmalloc(PS).unwrap();
        assert_eq!(
            b,
            a + 3 * PS,
            "{arch}: the next range starts after the guard"
        );
        k.vwrite(a, &vec![0x11; 2 * PS as usize]).unwrap();
        k.vwrite(b, &vec![0x22; PS as usize]).unwrap();
        let guard = a + 2 * PS;
        assert!(k.swapper_pg_dir().unwrap().walk(k, guard).is_none());
        assert_eq!(vread_vec(k, guard, PS as usize), vec![0; PS as usize]);
        // A read across the end of the range: data, then zeros, then b's data.
        let r = vread_vec(k, a + 2 * PS - 4, PS as usize + 8);
        assert_eq!(r[..4], [0x11; 4]);
        assert!(r[4..4 + PS as usize].iter().all(|&x| x == 0));
        assert_eq!(r[4 + PS as usize..], [0x22; 4]);
        // Writing into the guard fails at the guard; the bytes before it land.
        let e = k.vwrite(a + 2 * PS - 2, &[9, 9, 9, 9]).unwrap_err();
        assert_eq!(e, KmmError::NotMapped { virt: guard }, "{arch}");
        assert_eq!(vread_vec(k, a + 2 * PS - 2, 2), [9, 9]);
        assert!(k.vwrite(guard + 100, &[1]).is_err());
        assert_eq!(vread_vec(k, guard, PS as usize), vec![0; PS as usize]);
        assert!(k.vmalloc_to_pfn(guard).is_err());
        assert_eq!(vread_vec(k, b, PS as usize), vec![0x22; PS as usize]);
        k.vfree(a).unwrap();
        k.vfree(b).unwrap();
    }
}

/// `/proc/vmallocinfo` lines and `VmallocUsed:` follow what is allocated; a
/// freed range is an `unpurged vm_area` until `vm_unmap_aliases()`, and
/// only then can its addresses be handed out again.
#[test]
fn vmallocinfo_lazy_free_and_purge() {
    for (arch, ram) in [("x86_64", 256 * M), ("x86", 2 * G)] {
        let m = boot(arch, ram, 2, 1);
        let k = m.kmm();
        let w = if arch == "x86_64" { 16 } else { 8 };
        let hex = |v: u64| format!("0x{v:0w$x}");
        let (a, la) = (k.vmalloc(3 * PS).unwrap(), line!());
        let (b, lb) = (k.vzalloc(PS).unwrap(), line!());
        let (c, lc) = (k.vmalloc_32(10 * PS).unwrap(), line!());
        let line_of = |addr: u64, pages: u64, at: u32| {
            format!(
                "{}-{} {:7} {}:{at} pages={pages} vmalloc N0={pages}",
                hex(addr),
                hex(addr + (pages + 1) * PS),
                (pages + 1) * PS,
                file!()
            )
        };
        let info = vmallocinfo(&m);
        let want = [line_of(a, 3, la), line_of(b, 1, lb), line_of(c, 10, lc)];
        assert_eq!(info.lines().collect::<Vec<_>>(), want, "{arch}");
        assert_eq!(meminfo_kb(k, "VmallocUsed"), 14 * 4);
        assert_eq!(k.vmalloc_nr_pages(), 14);

        // vfree: the pages go at once, the range waits for the purge.
        let purges = k.vmap_purges();
        k.vfree(b).unwrap();
        assert_eq!(meminfo_kb(k, "VmallocUsed"), 13 * 4);
        let info = vmallocinfo(&m);
        let lines: Vec<&str> = info.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], want[0]);
        assert_eq!(
            lines[1],
            format!(
                "{}-{} {:7} unpurged vm_area",
                hex(b),
                hex(b + 2 * PS),
                2 * PS
            )
        );
        assert_eq!(lines[2], want[2]);
        assert!(
            k.find_vm_area(b).is_none(),
            "a lazily freed range is not found"
        );
        let lazy = areas(k).into_iter().find(|v| v.addr == b).unwrap();
        assert!(lazy.lazy);
        assert!(k.vmalloc_to_pfn(b).is_err(), "unmapped at once");
        // The hole is not reused while it waits: a range of the same size
        // goes after c.
        let d = k.vmalloc(PS).unwrap();
        assert_eq!(d, c + 11 * PS, "{arch}");
        assert_eq!(k.vmap_purges(), purges);

        // vm_unmap_aliases(): one flush, the range is gone and reusable.
        k.vm_unmap_aliases();
        assert_eq!(k.vmap_purges(), purges + 1);
        let info = vmallocinfo(&m);
        assert!(!info.contains("unpurged"), "{info}");
        assert_eq!(info.lines().count(), 3);
        let e = k.vmalloc(PS).unwrap();
        assert_eq!(e, b, "{arch}: the purged hole is the first fit");
        // Nothing to purge: no flush.
        k.vm_unmap_aliases();
        assert_eq!(k.vmap_purges(), purges + 1);
        for x in [a, c, d, e] {
            k.vfree(x).unwrap();
        }
        assert_eq!(k.vmalloc_nr_pages(), 0);
        assert_eq!(meminfo_kb(k, "VmallocUsed"), 0);
        assert_eq!(vmallocinfo(&m).matches("unpurged vm_area").count(), 4);
        k.vm_unmap_aliases();
        assert_eq!(vmallocinfo(&m), "");
        assert!(areas(k).is_empty());
        // Everything purged: allocation starts over at VMALLOC_START.
        let f = k.vmalloc(PS).unwrap();
        assert_eq!(f, k.kernel_layout().vmalloc_start);
        k.vfree(f).unwrap();
    }
}

/// After vfree of everything and the purge, the page allocator has every
/// page back (page tables of the vmalloc area stay, as in Linux; on x86
/// they were all made at boot).
#[test]
fn vfree_gives_every_page_back() {
    for (arch, ram) in [("x86_64", 256 * M), ("x86", 2 * G), ("x86", 6 * G)] {
        let m = boot(arch, ram, 2, 1);
        let k = m.kmm();
        warm_up(k);
        let free0 = settled_free(k);
        let held0 = allocated_blocks(k);
        let tables0 = k.kernel_page_table_pages();
        let slab0 = k.nr_slab_unreclaimable() + k.nr_slab_reclaimable();
        let mut held = Vec::new();
        let mut pages = 0;
        for i in 1..=40u64 {
            let n = (i * 7) % 37 + 1;
            let a = match i % 3 {
                0 => k.vzalloc(n * PS),
                1 => k.vmalloc(n * PS - 5),
                _ => k.vmalloc_32(n * PS),
            }
            .unwrap();
            pages += n;
            held.push(a);
        }
        assert_eq!(k.vmalloc_nr_pages(), pages);
        k.drain_all_pages();
        // At least the pages themselves are gone from the free lists.
        assert!(free0 - k.nr_free_pages() >= pages, "{arch}");
        for (i, a) in held.iter().enumerate() {
            if i % 2 == 0 {
                k.vfree(*a).unwrap();
            }
        }
        for (i, a) in held.iter().enumerate() {
            if i % 2 == 1 {
                k.vfree(*a).unwrap();
            }
        }
        assert_eq!(k.vmalloc_nr_pages(), 0);
        k.vm_unmap_aliases();
        assert!(areas(k).is_empty());
        let tables = k.kernel_page_table_pages() - tables0;
        if arch == "x86" {
            assert_eq!(tables, 0, "x86 preallocates the vmalloc page tables");
        }
        assert_eq!(settled_free(k) + tables, free0, "{arch} {}M", ram >> 20);
        assert_eq!(k.nr_slab_unreclaimable() + k.nr_slab_reclaimable(), slab0);
        let rt = runtime_table_allocs(k);
        if arch == "x86" {
            assert!(rt.is_empty());
        } else {
            assert!(rt.len() as u64 >= tables, "{rt:?}");
        }
        check_nothing_leaked(k, &held0);
    }
}

/// Requests Linux refuses are errors that change nothing: vmalloc(0), more
/// than all of RAM, vfree of an address vmalloc never returned or of one
/// already freed, vmalloc in atomic context, `__vmalloc(GFP_ATOMIC)`.
#[test]
fn refused_requests_change_nothing() {
    for (arch, ram) in [("x86_64", 256 * M), ("x86", 2 * G)] {
        let m = boot(arch, ram, 2, 1);
        let k = m.kmm();
        let keep = k.vmalloc(4 * PS).unwrap();
        let gone = k.vmalloc(2 * PS).unwrap();
        k.vfree(gone).unwrap();
        k.drain_all_pages();
        let before = snapshot(k);
        let areas0 = areas(k);
        let used0 = k.vmalloc_nr_pages();
        let check_same = |what: &str| {
            k.drain_all_pages();
            assert_eq!(snapshot(k), before, "{arch}: {what} changed the free lists");
            assert_eq!(areas(k), areas0, "{arch}: {what} changed the vmalloc area");
            assert_eq!(k.vmalloc_nr_pages(), used0);
        };

        let e = k.vmalloc(0).unwrap_err();
        assert!(matches!(e, KmmError::InvalidArgument { .. }), "{e:?}");
        log_has(&m, "vmalloc error: size 0, zero size");
        check_same("vmalloc(0)");

        let too_big = (k.totalram_pages() + 1) * PS;
        let e = k.vmalloc(too_big).unwrap_err();
        assert_eq!(
            e,
            KmmError::TooLarge {
                size: too_big,
                max: k.totalram_pages() * PS,
                what: "totalram_pages"
            }
        );
        log_has(
            &m,
            &format!("vmalloc error: size {too_big}, exceeds total pages"),
        );
        check_same("vmalloc beyond RAM");

        // Not a vmalloc address, the middle of a range, a freed range.
        for bad in [k.__va(0x10_0000).unwrap(), keep + PS, keep + 1, gone] {
            let e = k.vfree(bad).unwrap_err();
            assert!(matches!(e, KmmError::InvalidAddress { addr, .. } if addr == bad));
            let log = log_has(&m, "Trying to vfree() nonexistent vm area");
            assert!(logged(&log, &format!("({bad:#018x})")), "{log:#?}");
            check_same("bad vfree");
        }
        // vfree(NULL) is fine and silent.
        k.vfree(0).unwrap();
        assert!(m.take_log().is_empty());

        // Atomic context: might_sleep's report.
        {
            let _g = m.cpus().preempt_disable();
            let e = k.vmalloc(PS).unwrap_err();
            assert_eq!(
                e,
                KmmError::SleepInAtomic {
                    preempt_count: 1,
                    irqs_disabled: false
                }
            );
            assert!(matches!(k.vzalloc(PS), Err(KmmError::SleepInAtomic { .. })));
            assert!(matches!(k.vfree(keep), Err(KmmError::SleepInAtomic { .. })));
        }
        {
            let _irq = m.cpus().local_irq_save();
            assert!(matches!(
                k.vmalloc(PS),
                Err(KmmError::SleepInAtomic {
                    irqs_disabled: true,
                    ..
                })
            ));
        }
        let log = m.take_log();
        assert!(logged(
            &log,
            "BUG: sleeping function called from invalid context at mm/vmalloc.rs"
        ));
        assert!(logged(&log, "in_atomic(): 1, irqs_disabled(): 0"));
        check_same("vmalloc in atomic context");
        // The same on a bound CPU with preemption off.
        std::thread::scope(|s| {
            s.spawn(|| {
                let _cpu = m.cpus().bind(1).unwrap();
                let _g = m.cpus().preempt_disable();
                assert!(matches!(
                    k.vmalloc_node(PS, 0),
                    Err(KmmError::SleepInAtomic { .. })
                ));
            });
        });
        log_has(&m, "BUG: sleeping function called from invalid context");
        check_same("vmalloc on a bound CPU in atomic context");

        // GFP_ATOMIC / GFP_NOWAIT: vmalloc may always sleep.
        for gfp in [GfpFlags::GFP_ATOMIC, GfpFlags::GFP_NOWAIT] {
            let e = k.__vmalloc(PS, gfp).unwrap_err();
            assert!(
                matches!(e, KmmError::InvalidGfp { gfp: g, .. } if g == gfp),
                "{e:?}"
            );
            log_has(&m, "vmalloc error: size 4096, unsupported GFP flags");
            check_same("__vmalloc(GFP_ATOMIC)");
        }
        // A node that does not exist.
        assert_eq!(k.vmalloc_node(PS, 3), Err(KmmError::InvalidNode { nid: 3 }));
        check_same("vmalloc_node(3)");

        // The range is intact and still frees.
        k.vfree(keep).unwrap();
        assert_eq!(k.vmalloc_nr_pages(), 0);
        let e = k.vfree(keep).unwrap_err();
        assert!(matches!(e, KmmError::InvalidAddress { .. }));
        log_has(&m, "Trying to vfree() nonexistent vm area");
    }
}

/// vfree in a hard interrupt is allowed (Linux defers the work there).
#[test]
fn vfree_in_interrupt() {
    let m = boot("x86_64", 256 * M, 1, 1);
    let k = m.kmm();
    let a = k.vmalloc(3 * PS).unwrap();
    {
        let _irq = m.cpus().irq_enter();
        k.vfree(a).unwrap();
    }
    assert_eq!(k.vmalloc_nr_pages(), 0);
    assert!(!logged(&m.take_log(), "BUG"));
}

/// vmalloc_node takes the pages from the node asked for and says so in
/// `/proc/vmallocinfo`; plain vmalloc uses the calling CPU's node.
#[test]
fn vmalloc_node_places_pages() {
    let m = boot("x86_64", 2 * G, 2, 2);
    let k = m.kmm();
    let (a, la) = (k.vmalloc_node(8 * PS, 1).unwrap(), line!());
    for pfn in frames(k, a, 8) {
        assert_eq!(k.pfn_to_page(pfn).unwrap().nid(), 1);
    }
    let v = k.find_vm_area(a).unwrap();
    assert_eq!(v.nid, 1);
    let info = vmallocinfo(&m);
    assert!(
        info.contains(&format!("{}:{la} pages=8 vmalloc N1=8\n", file!())),
        "{info}"
    );
    // CPU 1 is on node 1, CPU 0 on node 0.
    let b = m
        .cpus()
        .run_on_cpu(1, || k.vmalloc(4 * PS).unwrap())
        .unwrap();
    let c = m
        .cpus()
        .run_on_cpu(0, || k.vmalloc(4 * PS).unwrap())
        .unwrap();
    assert!(frames(k, b, 4)
        .iter()
        .all(|&p| k.pfn_to_page(p).unwrap().nid() == 1));
    assert!(frames(k, c, 4)
        .iter()
        .all(|&p| k.pfn_to_page(p).unwrap().nid() == 0));
    assert_eq!(k.find_vm_area(b).unwrap().nid, 1);
    assert_eq!(k.find_vm_area(c).unwrap().nid, 0);
    for x in [a, b, c] {
        k.vfree(x).unwrap();
    }
}

/// When the vmalloc area has no hole big enough, the lazily freed ranges
/// are purged and the search repeated; with none to purge the request fails
/// with Linux's message.
#[test]
fn full_vmalloc_area_purges_then_fails() {
    let m = boot("x86", 2 * G, 2, 1);
    let k = m.kmm();
    let total = k.vmalloc_total();
    assert_eq!(total, 0x6ffe000);
    let a = k.get_vm_area(60 * M, VmFlags::VM_IOREMAP).unwrap();
    let b = k.get_vm_area(40 * M, VmFlags::VM_IOREMAP).unwrap();
    assert_eq!(b.addr, a.addr + 60 * M + PS);
    // 60 MiB lazily freed stays below lazy_max_pages (64 MiB with 2 CPUs).
    k.free_vm_area(a.addr).unwrap();
    let purges = k.vmap_purges();
    assert!(areas(k)[0].lazy);
    let c = k.get_vm_area(50 * M, VmFlags::VM_IOREMAP).unwrap();
    assert_eq!(c.addr, a.addr, "purged and reused");
    assert_eq!(k.vmap_purges(), purges + 1);
    // No room and nothing lazy: refused.
    let e = k.get_vm_area(20 * M, VmFlags::VM_IOREMAP).unwrap_err();
    assert!(matches!(e, KmmError::NoMemory { .. }), "{e:?}");
    log_has(&m, "vmap allocation for size 20975616 failed");
    // Larger than the whole area: refused before searching.
    let e = k.get_vm_area(total, VmFlags::VM_IOREMAP).unwrap_err();
    assert!(matches!(e, KmmError::TooLarge { .. }), "{e:?}");
    assert_eq!(k.vmap_purges(), purges + 1);
    assert_eq!(live_areas(k).len(), 2);
    // A vmalloc bigger than what is left fails and gives its pages back.
    k.drain_all_pages();
    let free = k.nr_free_pages();
    let e = k.vmalloc(20 * M).unwrap_err();
    assert!(matches!(e, KmmError::NoMemory { .. }), "{e:?}");
    k.drain_all_pages();
    assert_eq!(k.nr_free_pages(), free);
    assert_eq!(k.vmalloc_nr_pages(), 0);
    k.free_vm_area(b.addr).unwrap();
    k.free_vm_area(c.addr).unwrap();
    k.vm_unmap_aliases();
    assert!(areas(k).is_empty());
}

/// Freeing more than `lazy_max_pages()` triggers the purge by itself.
#[test]
fn lazy_purge_runs_by_itself() {
    let m = boot("x86_64", 512 * M, 1, 1);
    let k = m.kmm();
    // One CPU: lazy_max_pages() = 32 MiB of pages.
    let a = k.get_vm_area(20 * M, VmFlags::VM_IOREMAP).unwrap();
    let b = k.get_vm_area(20 * M, VmFlags::VM_IOREMAP).unwrap();
    k.free_vm_area(a.addr).unwrap();
    assert_eq!(k.vmap_purges(), 0);
    assert_eq!(areas(k).len(), 2);
    k.free_vm_area(b.addr).unwrap();
    assert_eq!(k.vmap_purges(), 1);
    assert!(areas(k).is_empty());
}

/// get_vm_area reserves without mapping; free_vm_area gives it back once.
#[test]
fn get_vm_area_reserves_only() {
    for (arch, ram) in [("x86_64", 256 * M), ("x86", 2 * G)] {
        let m = boot(arch, ram, 1, 1);
        let k = m.kmm();
        let ioremap = VmFlags::VM_IOREMAP;
        let (v, line) = (k.get_vm_area(3 * PS + 1, ioremap).unwrap(), line!());
        assert_eq!(v.size, 5 * PS);
        assert_eq!(v.area_size(), 4 * PS);
        assert_eq!(v.flags, VmFlags::VM_IOREMAP);
        assert_eq!(v.nr_pages, 0);
        assert_eq!(v.caller, Some((file!(), line)));
        assert_eq!(k.find_vm_area(v.addr), Some(v));
        for i in 0..5 {
            assert!(k.vmalloc_to_pfn(v.addr + i * PS).is_err());
        }
        // VM_NO_GUARD: the next range follows without a gap.
        let ng = k.get_vm_area(PS, VmFlags::VM_NO_GUARD).unwrap();
        assert_eq!(ng.addr, v.addr + 5 * PS);
        assert_eq!(ng.size, PS);
        assert_eq!(ng.area_size(), PS);
        let next = k.vmalloc(PS).unwrap();
        assert_eq!(next, ng.addr + PS);
        assert!(matches!(
            k.get_vm_area(0, VmFlags::VM_IOREMAP),
            Err(KmmError::InvalidArgument { .. })
        ));
        // vfree refuses a range vmalloc did not make.
        assert!(k.vfree(v.addr).is_err());
        log_has(&m, "Trying to vfree() nonexistent vm area");
        k.free_vm_area(v.addr).unwrap();
        assert!(k.free_vm_area(v.addr).is_err());
        log_has(&m, "Trying to free_vm_area() nonexistent vm area");
        k.free_vm_area(ng.addr).unwrap();
        k.vfree(next).unwrap();
        let all = areas(k);
        assert_eq!(all.len(), 3);
        assert!(all.iter().all(|a| a.lazy));
        assert_eq!(
            all.iter().map(|a| a.addr).collect::<Vec<_>>(),
            [v.addr, ng.addr, next]
        );
    }
}

// --------------------------------------------------------------------- vmap

/// vmap maps the caller's pages; vunmap removes the mapping and leaves the
/// pages allocated with their contents.
#[test]
fn vmap_maps_existing_pages() {
    for (arch, ram, gfp) in [
        ("x86_64", 256 * M, KERNEL),
        ("x86", 2 * G, GfpFlags::GFP_HIGHUSER),
        ("x86", 6 * G, GfpFlags::GFP_HIGHUSER),
    ] {
        let m = boot(arch, ram, 1, 1);
        let k = m.kmm();
        warm_up(k);
        let free0 = settled_free(k);
        let tables0 = k.kernel_page_table_pages();
        let pages: Vec<_> = (0..3).map(|_| k.alloc_page(gfp).unwrap()).collect();
        let mut pfns: Vec<u64> = pages.iter().map(|p| k.page_to_pfn(p).unwrap()).collect();
        // One low page in the middle, and the order is the caller's.
        let low = k.alloc_page(KERNEL).unwrap();
        pfns.insert(1, k.page_to_pfn(low).unwrap());
        for (i, &pfn) in pfns.iter().enumerate() {
            k.phys()
                .write(pfn * PS, &pattern(i as u64 + 100, PS as usize))
                .unwrap();
        }
        let (none, kernel) = (VmFlags::empty(), PteFlags::empty());
        let (a, line) = (k.vmap(&pfns, none, kernel).unwrap(), line!());
        assert!(k.is_vmalloc_addr(a));
        assert_eq!(frames(k, a, 4), pfns, "{arch}");
        for (i, _) in pfns.iter().enumerate() {
            assert_eq!(
                vread_vec(k, a + i as u64 * PS, PS as usize),
                pattern(i as u64 + 100, PS as usize)
            );
        }
        let v = k.find_vm_area(a).unwrap();
        assert_eq!(v.flags, VmFlags::VM_MAP);
        assert_eq!((v.size, v.nr_pages), (5 * PS, 0));
        assert_eq!(k.vmalloc_nr_pages(), 0, "vmap allocates no pages");
        let info = vmallocinfo(&m);
        assert!(
            info.ends_with(&format!(" {}:{line} vmap\n", file!())),
            "{info}"
        );
        // Writes through the mapping reach the frames.
        k.vwrite(a + PS - 2, b"abcd").unwrap();
        let mut b = [0u8; 2];
        k.phys().read(pfns[0] * PS + PS - 2, &mut b).unwrap();
        assert_eq!(&b, b"ab");
        k.phys().read(pfns[1] * PS, &mut b).unwrap();
        assert_eq!(&b, b"cd");
        // PAGE_KERNEL by default; the caller's protection otherwise.
        let t = k.swapper_pg_dir().unwrap().walk(k, a).unwrap();
        assert!(t.flags.contains(PteFlags::WRITABLE | PteFlags::GLOBAL));
        let ro = k
            .vmap(
                &pfns[..1],
                VmFlags::empty(),
                PteFlags::PRESENT | PteFlags::GLOBAL,
            )
            .unwrap();
        let t = k.swapper_pg_dir().unwrap().walk(k, ro).unwrap();
        assert!(!t.flags.contains(PteFlags::WRITABLE));
        assert_eq!(t.phys, pfns[0] * PS);
        assert_eq!(vread_vec(k, ro + PS - 2, 2), b"ab");
        // vfree refuses a vmap range (its pages are not vmalloc's).
        assert!(k.vfree(a).is_err());
        log_has(&m, "Trying to vfree() nonexistent vm area");
        k.vunmap(a).unwrap();
        k.vunmap(ro).unwrap();
        assert!(k.vmalloc_to_pfn(a).is_err());
        assert!(k.vunmap(a).is_err());
        log_has(&m, "Trying to vunmap() nonexistent vm area");
        for (i, &pfn) in pfns.iter().enumerate() {
            let p = k.pfn_to_page(pfn).unwrap();
            assert_eq!(p.page_count(), 1, "still the caller's");
            let mut b = vec![0u8; PS as usize];
            k.phys().read(pfn * PS, &mut b).unwrap();
            let mut want = pattern(i as u64 + 100, PS as usize);
            if i == 0 {
                want[PS as usize - 2..].copy_from_slice(b"ab");
            }
            if i == 1 {
                want[..2].copy_from_slice(b"cd");
            }
            assert_eq!(b, want);
        }
        // Bad requests.
        assert!(k.vmap(&[], VmFlags::empty(), PteFlags::empty()).is_err());
        assert!(k
            .vmap(&[k.max_pfn() + 10], VmFlags::empty(), PteFlags::empty())
            .is_err());
        for p in pages.iter().chain([&low]) {
            k.__free_pages(p, 0).unwrap();
        }
        k.vm_unmap_aliases();
        let tables = k.kernel_page_table_pages() - tables0;
        assert_eq!(settled_free(k) + tables, free0, "{arch}");
    }
}

/// `vwrite` is documented to refuse read-only pages ("Unmapped or read-only
/// pages are an error and stop the copy there"), but it writes through them.
#[test]
fn vwrite_refuses_read_only_mappings() {
    for (arch, ram) in [("x86_64", 256 * M), ("x86", 2 * G)] {
        let m = boot(arch, ram, 1, 1);
        let k = m.kmm();
        let page = k.alloc_page(KERNEL | GfpFlags::__GFP_ZERO).unwrap();
        let pfn = k.page_to_pfn(page).unwrap();
        let ro = k
            .vmap(
                &[pfn],
                VmFlags::empty(),
                PteFlags::PRESENT | PteFlags::GLOBAL,
            )
            .unwrap();
        let t = k.swapper_pg_dir().unwrap().walk(k, ro).unwrap();
        assert!(!t.flags.contains(PteFlags::WRITABLE));
        let r = k.vwrite(ro, b"x");
        let mut b = [0u8; 1];
        k.phys().read(pfn * PS, &mut b).unwrap();
        assert!(r.is_err(), "{arch}: vwrite through a read-only PTE: {r:?}");
        assert_eq!(b, [0], "{arch}: the read-only page was written");
        k.vunmap(ro).unwrap();
        k.__free_pages(page, 0).unwrap();
    }
}

/// With PAE, vmalloc-area PTEs reach frames above 4 GiB.
#[test]
fn pae_maps_frames_above_4g() {
    let m = boot("x86", 6 * G, 1, 1);
    let k = m.kmm();
    // Take 4 MiB blocks of high memory until one lies above 4 GiB.
    let mut blocks = Vec::new();
    let high = loop {
        let p = k.alloc_pages(GfpFlags::GFP_HIGHUSER, 10).unwrap();
        let pfn = k.page_to_pfn(p).unwrap();
        if pfn * PS >= 4 * G {
            break pfn;
        }
        blocks.push(p);
    };
    let pfns: Vec<u64> = (0..4).map(|i| high + 3 * i).collect();
    for (i, &pfn) in pfns.iter().enumerate() {
        k.phys()
            .write(pfn * PS, &pattern(i as u64, PS as usize))
            .unwrap();
    }
    let a = k.vmap(&pfns, VmFlags::empty(), PteFlags::empty()).unwrap();
    assert_eq!(frames(k, a, 4), pfns);
    for i in 0..4u64 {
        assert_eq!(
            vread_vec(k, a + i * PS, PS as usize),
            pattern(i, PS as usize)
        );
    }
    k.vwrite(a + 3 * PS + 8, b"above 4G").unwrap();
    let mut b = [0u8; 8];
    k.phys().read(pfns[3] * PS + 8, &mut b).unwrap();
    assert_eq!(&b, b"above 4G");
    k.vunmap(a).unwrap();
    k.__free_pages(k.pfn_to_page(high).unwrap(), 10).unwrap();
    for p in blocks {
        k.__free_pages(p, 10).unwrap();
    }
}

// ------------------------------------------------------------------ ioremap

/// ioremap maps the frame buffer uncached at an address with the same page
/// offset; bytes written through it are in the device memory, as a second
/// mapping of it shows.
#[test]
fn ioremap_maps_the_frame_buffer() {
    for (arch, ram) in [
        ("x86_64", G),
        ("x86", 2 * G),
        ("x86", 6 * G),
        ("x86_64", 6 * G),
    ] {
        let m = boot(arch, ram, 1, 1);
        let k = m.kmm();
        let w = if arch == "x86_64" { 16 } else { 8 };
        let phys = FRAMEBUFFER_PHYS + 0x1234;
        let (a, line) = (k.ioremap(phys, 0x2000).unwrap(), line!());
        assert_eq!(a % PS, 0x234, "{arch}: same page offset");
        assert!(k.is_vmalloc_addr(a));
        let base = a & !(PS - 1);
        // 0x1234..0x3234 touches three pages.
        let v = k.find_vm_area(base).unwrap();
        assert_eq!(v.flags, VmFlags::VM_IOREMAP);
        assert_eq!(v.size, 4 * PS);
        assert_eq!(v.phys_addr, FRAMEBUFFER_PHYS + 0x1000);
        assert_eq!(v.nr_pages, 0);
        let pgd = k.swapper_pg_dir().unwrap();
        for i in 0..3 {
            let t = pgd.walk(k, base + i * PS).unwrap();
            assert_eq!(t.phys, FRAMEBUFFER_PHYS + 0x1000 + i * PS);
            assert_eq!(t.size, PS);
            assert!(
                t.flags.contains(PteFlags::CACHE_DISABLE),
                "{arch}: uncached"
            );
            assert!(!t.flags.contains(PteFlags::WRITE_THROUGH));
        }
        assert!(pgd.walk(k, base + 3 * PS).is_none(), "guard page");
        assert_eq!(k.vmalloc_to_pfn(a).unwrap(), (FRAMEBUFFER_PHYS >> 12) + 1);
        let info = vmallocinfo(&m);
        let want = format!(
            "0x{base:0w$x}-0x{:0w$x} {:7} {}:{line} phys=0x{:0w$x} ioremap\n",
            base + 4 * PS,
            4 * PS,
            file!(),
            FRAMEBUFFER_PHYS + 0x1000
        );
        assert_eq!(info, want);

        // Write through the mapping; read through a second one and directly.
        let msg = pattern(0xfb, 0x1800);
        k.vwrite(a, &msg).unwrap();
        let b = k.ioremap(FRAMEBUFFER_PHYS, 0x4000).unwrap();
        assert_eq!(b % PS, 0);
        assert_ne!(b & !(PS - 1), base);
        assert_eq!(vread_vec(k, b + 0x1234, msg.len()), msg, "{arch}");
        let mut direct = vec![0u8; msg.len()];
        k.phys().read(phys, &mut direct).unwrap();
        assert_eq!(direct, msg);
        // And back the other way.
        k.vwrite(b + 0x1230, b"0123456789").unwrap();
        assert_eq!(vread_vec(k, a - 4, 10), b"0123456789");
        // The last byte of the frame buffer.
        let end = k
            .ioremap(FRAMEBUFFER_PHYS + FRAMEBUFFER_SIZE - 1, 1)
            .unwrap();
        assert_eq!(end % PS, PS - 1);
        k.vwrite(end, &[0x5a]).unwrap();
        let mut last = [0u8];
        k.phys()
            .read(FRAMEBUFFER_PHYS + FRAMEBUFFER_SIZE - 1, &mut last)
            .unwrap();
        assert_eq!(last, [0x5a]);

        // The cache-mode variants.
        let uc = k.ioremap_uc(FRAMEBUFFER_PHYS + 0x1000, PS).unwrap();
        let wc = k.ioremap_wc(FRAMEBUFFER_PHYS, PS).unwrap();
        let wb = k.ioremap_cache(FRAMEBUFFER_PHYS, PS).unwrap();
        let f = |x: u64| {
            pgd.walk(k, x).unwrap().flags & (PteFlags::CACHE_DISABLE | PteFlags::WRITE_THROUGH)
        };
        assert_eq!(f(uc), PteFlags::CACHE_DISABLE | PteFlags::WRITE_THROUGH);
        assert_eq!(f(wc), PteFlags::WRITE_THROUGH);
        assert_eq!(f(wb), PteFlags::empty());
        assert_eq!(vread_vec(k, uc + 0x230, 10), b"0123456789");

        // iounmap takes the address with its offset.
        k.iounmap(a).unwrap();
        assert!(pgd.walk(k, base).is_none());
        assert!(k.iounmap(a).is_err());
        log_has(&m, "Trying to iounmap() nonexistent vm area");
        for x in [b, end, uc, wc, wb] {
            k.iounmap(x).unwrap();
        }
        // The device memory keeps what was written.
        let mut after = vec![0u8; 10];
        k.phys()
            .read(FRAMEBUFFER_PHYS + 0x1230, &mut after)
            .unwrap();
        assert_eq!(after, b"0123456789");
        k.vm_unmap_aliases();
        assert_eq!(vmallocinfo(&m), "");
    }
}

/// ioremap of RAM is refused with Linux's warning, as are empty and
/// wrapping requests.
#[test]
fn ioremap_of_ram_is_refused() {
    for (arch, ram) in [("x86_64", G), ("x86", 2 * G)] {
        let m = boot(arch, ram, 1, 1);
        let k = m.kmm();
        let before = areas(k);
        for (phys, size) in [
            (0x10_0000, PS),
            (0x3000_0000, 0x10),
            // The last RAM page and the reserved page after it.
            ((k.max_pfn() - 1) * PS, 2 * PS),
            // Starts in the legacy hole, ends in RAM.
            (0xf_f000, 0x2000),
        ] {
            let e = k.ioremap(phys, size).unwrap_err();
            assert_eq!(
                e,
                KmmError::InvalidAddress {
                    addr: phys,
                    what: "ioremap of RAM"
                }
            );
            let want = format!(
                "__ioremap_caller: ioremap on RAM at {phys:#018x} - {:#018x}",
                phys + size - 1
            );
            log_has(&m, &want);
        }
        assert!(k.ioremap(FRAMEBUFFER_PHYS, 0).is_err());
        assert!(k.ioremap(u64::MAX - 10, 100).is_err());
        assert_eq!(areas(k), before);
        // The legacy hole below 1 MiB (VGA memory) is not RAM.
        let vga = k.ioremap(0xa_0000, 0x2_0000).unwrap();
        k.iounmap(vga).unwrap();
    }
}

/// Without PAE a PTE holds 32 bits of physical address: ioremap above 4 GiB
/// fails and leaves nothing mapped; with PAE it works.
#[test]
fn ioremap_beyond_the_formats_reach() {
    let m = boot("x86", 2 * G, 1, 1);
    let k = m.kmm();
    let e = k.ioremap(5 * G, PS).unwrap_err();
    assert!(
        matches!(e, KmmError::InvalidAddress { addr, .. } if addr == 5 * G),
        "{e:?}"
    );
    assert!(live_areas(k).is_empty());
    assert!(areas(k).iter().all(|a| a.lazy));
    let start = k.kernel_layout().vmalloc_start;
    assert!(k.swapper_pg_dir().unwrap().walk(k, start).is_none());
    // PAE reaches it (there is no device there, but the PTE can say so).
    let m = boot("x86", 6 * G, 1, 1);
    let k = m.kmm();
    let a = k.ioremap(0xf_0000_0000, PS).unwrap();
    let t = k.swapper_pg_dir().unwrap().walk(k, a).unwrap();
    assert_eq!(t.phys, 0xf_0000_0000);
    k.iounmap(a).unwrap();
}

/// Linux's ioremap allocates its `vm_struct` with GFP_KERNEL and iounmap
/// calls `remove_vm_area()`, which starts with `might_sleep()`: in atomic
/// context both are reported ("BUG: sleeping function called from invalid
/// context"). kmm's vmalloc, vfree, vmap and vunmap check; ioremap, iounmap,
/// get_vm_area and free_vm_area do not, and succeed silently.
#[test]
fn ioremap_in_atomic_context_is_reported() {
    let m = boot("x86_64", 256 * M, 1, 1);
    let k = m.kmm();
    let a = k.ioremap(FRAMEBUFFER_PHYS, PS).unwrap();
    let v = k.get_vm_area(PS, VmFlags::VM_IOREMAP).unwrap();
    let _ = m.take_log();
    let (r1, r2, r3, r4) = {
        let _g = m.cpus().preempt_disable();
        (
            k.ioremap(FRAMEBUFFER_PHYS, PS),
            k.iounmap(a),
            k.get_vm_area(PS, VmFlags::VM_IOREMAP),
            k.free_vm_area(v.addr),
        )
    };
    let log = m.take_log();
    assert!(
        matches!(r1, Err(KmmError::SleepInAtomic { .. })),
        "ioremap in atomic context: {r1:x?}"
    );
    assert!(
        matches!(r2, Err(KmmError::SleepInAtomic { .. })),
        "iounmap: {r2:?}"
    );
    assert!(r3.is_err(), "get_vm_area: {r3:x?}");
    assert!(r4.is_err(), "free_vm_area: {r4:?}");
    assert!(logged(
        &log,
        "BUG: sleeping function called from invalid context"
    ));
}

/// ioremap allocates no pages: only its `vmap_area` object and, the first
/// time on x86_64, page tables.
#[test]
fn ioremap_allocates_no_pages() {
    for (arch, ram) in [("x86_64", G), ("x86", 2 * G)] {
        let m = boot(arch, ram, 1, 1);
        let k = m.kmm();
        // A live range keeps a vmap_area slab page in use throughout.
        let keep = k.vmalloc(PS).unwrap();
        let free0 = settled_free(k);
        let tables0 = k.kernel_page_table_pages();
        let a = k.ioremap(FRAMEBUFFER_PHYS, 64 * PS).unwrap();
        assert_eq!(k.vmalloc_nr_pages(), 1);
        let tables = k.kernel_page_table_pages() - tables0;
        assert_eq!(settled_free(k) + tables, free0, "{arch}");
        if arch == "x86" {
            assert_eq!(tables, 0);
        }
        k.iounmap(a).unwrap();
        k.vm_unmap_aliases();
        assert_eq!(settled_free(k) + tables, free0, "{arch}");
        k.vfree(keep).unwrap();
    }
}

// ---------------------------------------------------------- memory pressure

/// A vmalloc that cannot get all its pages fails, reports it, and gives
/// back the pages it got.
#[test]
fn vmalloc_failure_gives_everything_back() {
    for (arch, ram) in [("x86_64", 128 * M), ("x86", 128 * M)] {
        let m = boot(arch, ram, 1, 1);
        let k = m.kmm();
        warm_up(k);
        let free0 = settled_free(k);
        let held0 = allocated_blocks(k);
        let tables0 = k.kernel_page_table_pages();
        let mut held = exhaust(k, KERNEL | GfpFlags::__GFP_HIGHMEM, 0);
        // Give back 32 pages, far fewer than the request.
        free_all(k, held.drain(..32));
        k.drain_all_pages();
        let _ = m.take_log();
        let free_low = k.nr_free_pages();
        let e = k.vmalloc(256 * PS).unwrap_err();
        assert!(matches!(e, KmmError::NoMemory { .. }), "{arch}: {e:?}");
        let log = m.take_log();
        assert!(
            logged(
                &log,
                "vmalloc error: size 1048576, page order 0, failed to allocate pages"
            ),
            "{log:#?}"
        );
        assert_eq!(k.vmalloc_nr_pages(), 0);
        assert!(live_areas(k).is_empty());
        // The range waits for the purge (its vmap_area object too).
        assert_eq!(areas(k).len(), 1);
        k.vm_unmap_aliases();
        assert_eq!(settled_free(k), free_low, "{arch}: pages leaked");
        free_all(k, held);
        k.vm_unmap_aliases();
        let tables = k.kernel_page_table_pages() - tables0;
        assert_eq!(settled_free(k) + tables, free0, "{arch}");
        check_nothing_leaked(k, &held0);
        // And it works again.
        let a = k.vmalloc(256 * PS).unwrap();
        k.vfree(a).unwrap();
    }
}

// -------------------------------------------------------------- concurrency

/// Four CPUs vmalloc, fill, check and vfree at the same time: no range is
/// handed out twice, no data is lost, everything comes back.
#[test]
fn concurrent_vmalloc_vfree() {
    for (arch, ram) in [("x86_64", 512 * M), ("x86", 2 * G)] {
        let m = boot(arch, ram, 4, 1);
        let k = m.kmm();
        warm_up(k);
        let free0 = settled_free(k);
        let tables0 = k.kernel_page_table_pages();
        let errors = m
            .cpus()
            .on_each_cpu(|cpu| {
                let mut rng = Rng(cpu as u64 + 1);
                let mut held: Vec<(u64, u64, u64)> = Vec::new();
                let mut bad = 0;
                for i in 0..150u64 {
                    if held.len() < 8 && rng.below(3) != 0 {
                        let n = rng.below(8) + 1;
                        let a = k.vmalloc(n * PS).unwrap();
                        let tag = (cpu as u64) << 20 | i;
                        k.vwrite(a, &fill(tag, n)).unwrap();
                        held.push((a, n, tag));
                    } else if !held.is_empty() {
                        let (a, n, tag) = held.swap_remove(rng.below(held.len() as u64) as usize);
                        if vread_vec(k, a, (n * PS) as usize) != fill(tag, n) {
                            bad += 1;
                        }
                        k.vfree(a).unwrap();
                    }
                }
                for (a, n, tag) in held {
                    if vread_vec(k, a, (n * PS) as usize) != fill(tag, n) {
                        bad += 1;
                    }
                    k.vfree(a).unwrap();
                }
                bad
            })
            .unwrap();
        assert_eq!(errors, [0, 0, 0, 0], "{arch}: ranges overwritten");
        assert_eq!(k.vmalloc_nr_pages(), 0);
        k.vm_unmap_aliases();
        assert!(areas(k).is_empty());
        let tables = k.kernel_page_table_pages() - tables0;
        assert_eq!(settled_free(k) + tables, free0, "{arch}");
    }
}

// ----------------------------------------------------------------- property

#[derive(Clone, Debug)]
enum Op {
    Alloc(u64),
    Zalloc(u64),
    Free(usize),
    /// vfree of a range already freed (refused unless it was reused).
    DoubleFree,
    Purge,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (1u64..=64).prop_map(Op::Alloc),
        1 => (1u64..=64).prop_map(Op::Zalloc),
        4 => any::<usize>().prop_map(Op::Free),
        1 => Just(Op::DoubleFree),
        1 => Just(Op::Purge),
    ]
}

/// One word of range `tag`'s pattern at byte offset `off`.
fn word(tag: u64, off: u64) -> u64 {
    (tag << 40) ^ off ^ 0x5555_0000_0000_0000
}

fn fill(tag: u64, pages: u64) -> Vec<u8> {
    (0..pages * PS / 8)
        .flat_map(|i| word(tag, i * 8).to_le_bytes())
        .collect()
}

fn read_u64(k: &K, addr: u64) -> u64 {
    let mut b = [0u8; 8];
    k.vread(addr, &mut b).unwrap();
    u64::from_le_bytes(b)
}

struct Live {
    addr: u64,
    pages: u64,
    tag: u64,
}

fn check_state(k: &K, live: &[Live]) -> Result<(), TestCaseError> {
    let l = *k.kernel_layout();
    // Address order, no overlap (guard pages included), inside the area.
    let all = ordered_areas(k)?;
    for a in &all {
        prop_assert!(a.addr >= l.vmalloc_start && a.addr + a.size <= l.vmalloc_end);
    }
    // The busy ranges are exactly the live ones.
    let mut want: Vec<(u64, u64, u32)> = live
        .iter()
        .map(|r| (r.addr, (r.pages + 1) * PS, r.pages as u32))
        .collect();
    want.sort();
    let got: Vec<(u64, u64, u32)> = all
        .iter()
        .filter(|a| !a.lazy)
        .map(|a| (a.addr, a.size, a.nr_pages))
        .collect();
    prop_assert_eq!(got, want);
    let mut seen = HashSet::new();
    let mut total = 0;
    for r in live {
        for i in 0..r.pages {
            let at = r.addr + i * PS;
            let pfn = k.vmalloc_to_pfn(at).unwrap();
            prop_assert!(seen.insert(pfn), "frame {:#x} mapped twice", pfn);
            prop_assert_eq!(read_u64(k, at), word(r.tag, i * PS));
            prop_assert_eq!(read_u64(k, at + PS - 8), word(r.tag, i * PS + PS - 8));
        }
        prop_assert!(
            k.vmalloc_to_pfn(r.addr + r.pages * PS).is_err(),
            "guard mapped"
        );
        total += r.pages;
    }
    prop_assert_eq!(k.vmalloc_nr_pages(), total);
    Ok(())
}

fn run_ops(arch: &str, ram: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let m = boot(arch, ram, 2, 1);
    let k = m.kmm();
    warm_up(k);
    let free0 = settled_free(k);
    let tables0 = k.kernel_page_table_pages();
    let mut live: Vec<Live> = Vec::new();
    let mut freed: Vec<u64> = Vec::new();
    for (tag, o) in ops.iter().enumerate() {
        let tag = tag as u64 + 1;
        match *o {
            Op::Alloc(n) | Op::Zalloc(n) => {
                let zero = matches!(o, Op::Zalloc(_));
                let a = if zero {
                    k.vzalloc(n * PS)
                } else {
                    k.vmalloc(n * PS - 3)
                };
                let a = a.unwrap();
                if zero {
                    prop_assert!(vread_vec(k, a, (n * PS) as usize).iter().all(|&b| b == 0));
                }
                k.vwrite(a, &fill(tag, n)).unwrap();
                live.push(Live {
                    addr: a,
                    pages: n,
                    tag,
                });
            }
            Op::Free(i) => {
                if !live.is_empty() {
                    let r = live.swap_remove(i % live.len());
                    k.vfree(r.addr).unwrap();
                    freed.push(r.addr);
                }
            }
            Op::DoubleFree => {
                if let Some(&a) = freed.last() {
                    if live.iter().all(|r| r.addr != a) {
                        let before = areas(k);
                        prop_assert!(k.vfree(a).is_err());
                        prop_assert!(logged(
                            &m.take_log(),
                            "Trying to vfree() nonexistent vm area"
                        ));
                        prop_assert_eq!(areas(k), before);
                    }
                }
            }
            Op::Purge => {
                k.vm_unmap_aliases();
                prop_assert!(areas(k).iter().all(|a| !a.lazy));
            }
        }
        check_state(k, &live)?;
    }
    // Every live range intact in full.
    for r in &live {
        prop_assert!(vread_vec(k, r.addr, (r.pages * PS) as usize) == fill(r.tag, r.pages));
    }
    let used: u64 = live.iter().map(|r| r.pages).sum();
    prop_assert_eq!(meminfo_kb(k, "VmallocUsed"), used * 4);
    for r in live.drain(..) {
        k.vfree(r.addr).unwrap();
    }
    k.vm_unmap_aliases();
    prop_assert!(areas(k).is_empty());
    prop_assert_eq!(k.vmalloc_nr_pages(), 0);
    let tables = k.kernel_page_table_pages() - tables0;
    prop_assert_eq!(settled_free(k) + tables, free0);
    Ok(())
}

#[derive(Clone, Debug)]
enum AreaOp {
    /// get_vm_area of this many pages.
    Get(u64),
    Free(usize),
}

fn area_op() -> impl Strategy<Value = AreaOp> {
    prop_oneof![
        3 => (1u64..=4096).prop_map(AreaOp::Get),
        2 => any::<usize>().prop_map(AreaOp::Free),
    ]
}

/// Reservations of up to 16 MiB in x86's 111 MiB vmalloc area, freed at
/// random: they never overlap, and a request fails only when no hole
/// between the busy ranges could hold it (the lazily freed ones are purged
/// first).
fn run_area_ops(ops: &[AreaOp]) -> Result<(), TestCaseError> {
    let m = boot("x86", 2 * G, 2, 1);
    let k = m.kmm();
    let l = *k.kernel_layout();
    let mut live: Vec<(u64, u64)> = Vec::new();
    for o in ops {
        match *o {
            AreaOp::Get(n) => {
                let want = (n + 1) * PS;
                match k.get_vm_area(n * PS, VmFlags::VM_IOREMAP) {
                    Ok(v) => {
                        prop_assert_eq!(v.size, want);
                        prop_assert!(v.addr >= l.vmalloc_start);
                        prop_assert!(v.addr + v.size <= l.vmalloc_end);
                        live.push((v.addr, v.size));
                    }
                    Err(e) => {
                        prop_assert!(matches!(e, KmmError::NoMemory { .. }), "{:?}", e);
                        prop_assert!(logged(&m.take_log(), "vmap allocation for size"));
                        // Nothing lazy is left, and no hole fits.
                        prop_assert!(areas(k).iter().all(|a| !a.lazy));
                        let mut busy = live.clone();
                        busy.sort();
                        let mut at = l.vmalloc_start;
                        for &(a, size) in &busy {
                            prop_assert!(
                                a - at < want,
                                "hole {:#x}+{:#x} fits {:#x}",
                                at,
                                a - at,
                                want
                            );
                            at = a + size;
                        }
                        prop_assert!(l.vmalloc_end - at < want, "tail hole fits");
                    }
                }
            }
            AreaOp::Free(i) => {
                if !live.is_empty() {
                    let (a, _) = live.swap_remove(i % live.len());
                    k.free_vm_area(a).unwrap();
                }
            }
        }
        let all = ordered_areas(k)?;
        let mut got: Vec<(u64, u64)> = all
            .iter()
            .filter(|a| !a.lazy)
            .map(|a| (a.addr, a.size))
            .collect();
        got.sort();
        let mut want = live.clone();
        want.sort();
        prop_assert_eq!(got, want);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Random large reservations in the small x86 vmalloc area.
    #[test]
    fn random_get_vm_area_x86(ops in prop::collection::vec(area_op(), 1..80)) {
        run_area_ops(&ops)?;
    }

    /// Random vmalloc/vfree/purge sequences on x86_64.
    #[test]
    fn random_vmalloc_vfree_x86_64(ops in prop::collection::vec(op(), 1..48)) {
        run_ops("x86_64", 256 * M, &ops)?;
    }

    /// The same on x86 with high memory (pages from ZONE_HIGHMEM).
    #[test]
    fn random_vmalloc_vfree_x86(ops in prop::collection::vec(op(), 1..48)) {
        run_ops("x86", G, &ops)?;
    }
}

// -------------------------------------------------------------------- pools

/// `lazy_max_pages()` of a 2-CPU machine with 4K pages: 32 MiB of pages
/// times `fls(2)`.
const LAZY_MAX_2CPUS: u64 = (32 << 20) / PS * 2;

/// On a 64-bit machine with more than one CPU, the automatic purge keeps
/// small purged ranges in the pool of their size (Linux's `vmap_node`
/// pools): the next request of that size takes one back, address and all;
/// pooled ranges are in no listing; `vm_unmap_aliases` gives them back to
/// the free space. On x86 (one `vmap_node`) nothing is pooled.
#[test]
fn purged_ranges_are_pooled_by_size() {
    for arch in ["x86_64", "x86"] {
        let m = boot(arch, if arch == "x86" { 2 * G } else { 256 * M }, 2, 1);
        let k = m.kmm();
        warm_up(k);
        let free0 = settled_free(k);
        let a = k.vmalloc(PS).unwrap();
        let keep = k.vmalloc(3 * PS).unwrap();
        k.vfree(a).unwrap();
        // Not reused before the purge, pool or not.
        let b = k.vmalloc(PS).unwrap();
        assert_ne!(b, a, "{arch}");
        k.vfree(b).unwrap();
        // A big range over lazy_max_pages sets off the purge (one flush);
        // x86's vmalloc area is too small for it, so it purges by hand
        // there, which gives everything back anyway.
        let purges = k.vmap_purges();
        if arch == "x86_64" {
            let big = k
                .get_vm_area(LAZY_MAX_2CPUS * PS, VmFlags::VM_IOREMAP)
                .unwrap();
            k.free_vm_area(big.addr).unwrap();
        } else {
            k.vm_unmap_aliases();
        }
        assert_eq!(k.vmap_purges(), purges + 1, "{arch}");
        // Only the busy range is listed: pooled ranges are free.
        assert_eq!(
            areas(k).iter().map(|v| v.addr).collect::<Vec<_>>(),
            [keep],
            "{arch}"
        );
        assert_eq!(vmallocinfo(&m).lines().count(), 1, "{arch}");
        let c = k.vmalloc(PS).unwrap();
        let d = k.vmalloc(PS).unwrap();
        if arch == "x86_64" {
            // The pool is a stack filled from the purge list, most recently
            // freed first: the oldest purged range comes back first.
            assert_eq!((c, d), (a, b), "{arch}: pooled ranges reused");
        }
        // Whatever the source, the guard page stays unmapped and a
        // 3-page pool hands nothing to a 1-page request.
        for x in [c, d] {
            assert!(k.vmalloc_to_pfn(x).is_ok());
            assert!(k.vmalloc_to_pfn(x + PS).is_err(), "{arch}: guard mapped");
            assert_eq!(k.find_vm_area(x).unwrap().size, 2 * PS);
        }
        for x in [c, d, keep] {
            k.vfree(x).unwrap();
        }
        k.vm_unmap_aliases();
        assert!(areas(k).is_empty(), "{arch}");
        assert_eq!(settled_free(k), free0, "{arch}: pooled objects freed");
        // Everything given back: allocation starts over at VMALLOC_START.
        let f = k.vmalloc(PS).unwrap();
        assert_eq!(f, k.kernel_layout().vmalloc_start, "{arch}");
        k.vfree(f).unwrap();
    }
}

#[derive(Clone, Debug)]
enum PoolOp {
    /// get_vm_area of this many pages (the guard page comes on top).
    Get(u64),
    /// vmalloc of this many pages.
    Vmalloc(u64),
    /// Frees the live range at this index (modulo their number).
    Free(usize),
    /// vm_unmap_aliases().
    Unmap,
}

fn pool_op() -> impl Strategy<Value = PoolOp> {
    prop_oneof![
        // Few distinct small sizes, so pools get hit.
        20 => (1u64..=4).prop_map(PoolOp::Get),
        10 => (1u64..=4).prop_map(PoolOp::Vmalloc),
        // Sizes at the pools' limit (256 pages with the guard) and above.
        5 => (250u64..=260).prop_map(PoolOp::Get),
        // Big ranges: never pooled, they push the purge list over
        // lazy_max_pages every few frees.
        5 => (3000u64..=9000).prop_map(PoolOp::Get),
        36 => any::<usize>().prop_map(PoolOp::Free),
        1 => Just(PoolOp::Unmap),
    ]
}

/// The reference model of the purge list and the pools: ranges are
/// `(start, size in pages with the guard)`.
#[derive(Default)]
struct PoolModel {
    /// Busy ranges: start -> (pages, vmalloc'd pages or 0).
    live: BTreeMap<u64, (u64, u64)>,
    /// The purge list, in the order the ranges were freed.
    lazy: Vec<(u64, u64)>,
    lazy_pages: u64,
    /// Pools by size, each a stack (the last element is taken first).
    pools: BTreeMap<u64, Vec<u64>>,
    purges: u64,
}

impl PoolModel {
    /// `__purge_vmap_area_lazy()`: decay (a quarter of each pool, or all),
    /// then the purge list into the pools (most recently freed first).
    fn purge(&mut self, full: bool) {
        for pool in self.pools.values_mut() {
            let decay = if full { pool.len() } else { pool.len() / 4 };
            pool.truncate(pool.len() - decay);
        }
        if self.lazy.is_empty() {
            return;
        }
        self.purges += 1;
        for (start, pages) in self.lazy.drain(..).rev() {
            if !full && pages <= 256 {
                self.pools.entry(pages).or_default().push(start);
            }
        }
        self.lazy_pages = 0;
    }

    fn reserved(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self.live.iter().map(|(&a, &(p, _))| (a, p)).collect();
        v.extend(self.lazy.iter().copied());
        for (&pages, pool) in &self.pools {
            v.extend(pool.iter().map(|&a| (a, pages)));
        }
        v
    }
}

/// Random reservations, vmallocs and frees on a 2-CPU x86_64 machine,
/// checked step by step against [`PoolModel`]: pool hits return exactly the
/// range the model predicts, a new range overlaps nothing busy, lazily
/// freed or pooled, the listing is exactly the busy and lazily freed
/// ranges, purges happen exactly when `lazy_max_pages()` is passed (one
/// flush each), guard pages stay unmapped; at the end everything is given
/// back.
fn run_pool_ops(ops: &[PoolOp]) -> Result<(), TestCaseError> {
    let m = boot("x86_64", 256 * M, 2, 1);
    let k = m.kmm();
    warm_up(k);
    let free0 = settled_free(k);
    let tables0 = k.kernel_page_table_pages();
    let purges0 = k.vmap_purges();
    let mut md = PoolModel::default();
    for o in ops {
        match *o {
            PoolOp::Get(n) | PoolOp::Vmalloc(n) => {
                let vm = matches!(o, PoolOp::Vmalloc(_));
                let pages = n + 1;
                let addr = if vm {
                    k.vmalloc(n * PS).unwrap()
                } else {
                    k.get_vm_area(n * PS, VmFlags::VM_IOREMAP).unwrap().addr
                };
                let expect = md.pools.get_mut(&pages).and_then(|p| p.pop());
                if let Some(want) = expect {
                    prop_assert_eq!(addr, want, "pool of {} pages", pages);
                } else {
                    let end = addr + pages * PS;
                    for (a, p) in md.reserved() {
                        prop_assert!(
                            end <= a || a + p * PS <= addr,
                            "{:#x}+{} pages overlaps {:#x}+{}",
                            addr,
                            pages,
                            a,
                            p
                        );
                    }
                }
                let v = k.find_vm_area(addr).unwrap();
                prop_assert_eq!(v.size, pages * PS);
                prop_assert!(k.vmalloc_to_pfn(addr + n * PS).is_err(), "guard mapped");
                if vm {
                    prop_assert!(k.vmalloc_to_pfn(addr + (n - 1) * PS).is_ok());
                }
                md.live.insert(addr, (pages, if vm { n } else { 0 }));
            }
            PoolOp::Free(i) => {
                if md.live.is_empty() {
                    continue;
                }
                let addr = *md.live.keys().nth(i % md.live.len()).unwrap();
                let (pages, vm) = md.live.remove(&addr).unwrap();
                if vm != 0 {
                    k.vfree(addr).unwrap();
                } else {
                    k.free_vm_area(addr).unwrap();
                }
                md.lazy.push((addr, pages));
                md.lazy_pages += pages;
                if md.lazy_pages > LAZY_MAX_2CPUS {
                    md.purge(false);
                }
            }
            PoolOp::Unmap => {
                k.vm_unmap_aliases();
                md.purge(true);
            }
        }
        // The listing: busy and lazily freed ranges, in address order.
        let all = ordered_areas(k)?;
        let got: Vec<(u64, u64, bool)> =
            all.iter().map(|a| (a.addr, a.size / PS, a.lazy)).collect();
        let mut want: Vec<(u64, u64, bool)> = md
            .live
            .iter()
            .map(|(&a, &(p, _))| (a, p, false))
            .chain(md.lazy.iter().map(|&(a, p)| (a, p, true)))
            .collect();
        want.sort();
        prop_assert_eq!(got, want);
        // Pooled ranges are reserved: nothing listed overlaps them.
        for (&pages, pool) in &md.pools {
            for &a in pool {
                for v in &all {
                    prop_assert!(a + pages * PS <= v.addr || v.addr + v.size <= a);
                }
            }
        }
        prop_assert_eq!(k.vmap_purges() - purges0, md.purges);
        let used: u64 = md.live.values().map(|&(_, vm)| vm).sum();
        prop_assert_eq!(k.vmalloc_nr_pages(), used);
    }
    for (&addr, &(_, vm)) in &md.live {
        if vm != 0 {
            k.vfree(addr).unwrap();
        } else {
            k.free_vm_area(addr).unwrap();
        }
    }
    k.vm_unmap_aliases();
    prop_assert!(areas(k).is_empty());
    // Kernel page tables made for new vmalloc ranges stay, as in Linux.
    let tables = k.kernel_page_table_pages() - tables0;
    prop_assert_eq!(settled_free(k) + tables, free0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The purge list and the pools against a reference model.
    #[test]
    fn random_pool_reuse_x86_64(ops in prop::collection::vec(pool_op(), 1..400)) {
        run_pool_ops(&ops)?;
    }
}
