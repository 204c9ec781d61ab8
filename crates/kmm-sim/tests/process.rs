//! Processes: demand paging, the zero page, copy-on-write fork, stack
//! growth, permission faults, exec of a real binary, `/proc/PID/*`, and a
//! shadow-model property test of the whole process side.

mod common;

use common::*;
use kmm::memory::PAGE_MAPPING_ANON;
use kmm_sim::process::{Pid, SysError, System};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const RW: u32 = 3;
const R: u32 = 1;
const PRIVATE_ANON: u32 = 0x22;
const SHARED_ANON: u32 = 0x21;
const PS: u64 = 4096;

fn rss(sys: &System, pid: Pid) -> (u64, u64, u64) {
    let k = sys.machine().kmm();
    let m = k.mm_struct(sys.mm_of(pid).unwrap()).unwrap();
    let r = |i: usize| m.rss_stat[i].load(std::sync::atomic::Ordering::Relaxed);
    (r(1), r(0), r(3))
}

/// Every PTE of every process, and what the reverse map and map counts say:
/// each mapped page's `_mapcount` equals the PTEs that map it, and its pte
/// chain holds exactly those PTEs.
fn check_rmap(sys: &System) -> Result<(), String> {
    let k = sys.machine().kmm();
    let zero = k.zero_pfn();
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for pid in sys.pids() {
        let mm = sys.mm_of(pid).map_err(|e| e.to_string())?;
        let top = k
            .mm_struct(mm)
            .unwrap()
            .task_size
            .load(std::sync::atomic::Ordering::Relaxed);
        k.for_each_user_pte(mm, 0, top, &mut |_, pfn, _| {
            if pfn != zero {
                *seen.entry(pfn).or_default() += 1;
            }
        })
        .map_err(|e| e.to_string())?;
    }
    for (&pfn, &n) in &seen {
        let page = k.pfn_to_page(pfn).map_err(|e| e.to_string())?;
        if page.page_mapcount() as usize != n {
            return Err(format!(
                "pfn {pfn:#x}: mapcount {} but {n} PTEs map it",
                page.page_mapcount()
            ));
        }
        let mut chain = 0;
        k.page_for_each_pte(page, &mut |_| chain += 1)
            .map_err(|e| e.to_string())?;
        if chain != n {
            return Err(format!("pfn {pfn:#x}: pte chain of {chain}, {n} PTEs"));
        }
        if page.page_count() < n as i32 {
            return Err(format!(
                "pfn {pfn:#x}: {} references for {n} maps",
                page.page_count()
            ));
        }
    }
    Ok(())
}

/// VMAs and page tables agree: every present user PTE lies inside a VMA,
/// and a writable PTE only in a writable one; the VMA set is well formed.
fn check_vmas_cover_ptes(sys: &System) -> Result<(), String> {
    use std::sync::atomic::Ordering::Relaxed;
    let k = sys.machine().kmm();
    for pid in sys.pids() {
        let mm = sys.mm_of(pid).map_err(|e| e.to_string())?;
        k.validate_mm(mm).map_err(|e| format!("pid {pid}: {e}"))?;
        let top = k.mm_struct(mm).unwrap().task_size.load(Relaxed);
        let mut bad = None;
        k.for_each_user_pte(mm, 0, top, &mut |addr, _, flags| {
            let ok = k.find_vma(mm, addr).ok().flatten().is_some_and(|v| {
                let v = k.vm_area(v).unwrap();
                let vf = kmm::VmaFlags::from_bits_retain(v.vm_flags.load(Relaxed));
                v.vm_start.load(Relaxed) <= addr
                    && (!flags.pte_write() || vf.contains(kmm::VmaFlags::VM_WRITE))
            });
            if !ok && bad.is_none() {
                bad = Some(addr);
            }
        })
        .map_err(|e| e.to_string())?;
        if let Some(a) = bad {
            return Err(format!(
                "pid {pid}: PTE at {a:#x} outside a VMA that allows it"
            ));
        }
    }
    Ok(())
}

#[test]
fn anonymous_memory_is_demand_paged_and_zero_pages_are_shared() {
    let m = boot("x86_64", 1 << 30, 2, 1);
    let sys = System::new(&m);
    let p = sys.spawn("demand").unwrap();
    let a = sys.mmap(p, 0, 16 * PS, RW, PRIVATE_ANON, -1, 0).unwrap();
    assert_eq!(rss(&sys, p), (0, 0, 0), "nothing resident before a touch");
    // Reads map the zero page: no RSS, every byte zero.
    let mut buf = vec![1u8; 2 * PS as usize];
    sys.load(p, a, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    let k = m.kmm();
    let mm = sys.mm_of(p).unwrap();
    assert_eq!(k.follow_pte(mm, a).unwrap().unwrap().0, k.zero_pfn());
    assert_eq!(rss(&sys, p), (0, 0, 0));
    // A write replaces the zero page by a private zeroed page.
    sys.store(p, a + 5, b"x").unwrap();
    let (pfn, flags) = k.follow_pte(mm, a).unwrap().unwrap();
    assert_ne!(pfn, k.zero_pfn());
    assert!(flags.pte_write() && flags.pte_dirty());
    assert_eq!(k.pfn_to_page(pfn).unwrap().mapping(), PAGE_MAPPING_ANON);
    assert_eq!(rss(&sys, p).0, 1);
    sys.fill(p, a, 16 * PS, 7).unwrap();
    assert_eq!(rss(&sys, p).0, 16);
    let status = sys.proc_read(&format!("/proc/{p}/status")).unwrap();
    assert!(status.contains("RssAnon:\t      64 kB"), "{status}");
    check_rmap(&sys).unwrap();
}

#[test]
fn fork_shares_pages_until_a_write_copies_one() {
    let m = boot("x86_64", 1 << 30, 2, 1);
    let k = m.kmm();
    let sys = System::new(&m);
    let p = sys.spawn("parent").unwrap();
    let a = sys.mmap(p, 0, 4 * PS, RW, PRIVATE_ANON, -1, 0).unwrap();
    sys.fill(p, a, 4 * PS, 0x11).unwrap();
    let c = sys.fork(p).unwrap();
    let (pm, cm) = (sys.mm_of(p).unwrap(), sys.mm_of(c).unwrap());
    let before = k.follow_pte(pm, a).unwrap().unwrap();
    let shared = k.follow_pte(cm, a).unwrap().unwrap();
    assert_eq!(before.0, shared.0, "after fork both map the same frame");
    assert!(
        !before.1.pte_write() && !shared.1.pte_write(),
        "both write-protected"
    );
    assert_eq!(k.pfn_to_page(before.0).unwrap().page_mapcount(), 2);
    check_rmap(&sys).unwrap();
    // The child writes: it gets a copy; the parent keeps the original.
    sys.store(c, a, b"child").unwrap();
    let mut b = [0u8; 5];
    sys.load(p, a, &mut b).unwrap();
    assert_eq!(b, [0x11; 5]);
    sys.load(c, a, &mut b).unwrap();
    assert_eq!(&b, b"child");
    let child_pfn = k.follow_pte(cm, a).unwrap().unwrap().0;
    assert_ne!(child_pfn, before.0);
    assert_eq!(k.pfn_to_page(before.0).unwrap().page_mapcount(), 1);
    // The parent is now the sole mapper: its write reuses the page.
    sys.store(p, a, b"par").unwrap();
    assert_eq!(k.follow_pte(pm, a).unwrap().unwrap().0, before.0);
    // Pages neither wrote are still shared: smaps shows them as Shared.
    let smaps = sys.proc_read(&format!("/proc/{c}/smaps")).unwrap();
    assert!(smaps.contains("Shared_Dirty:         12 kB"), "{smaps}");
    assert!(smaps.contains("Private_Dirty:         4 kB"), "{smaps}");
    check_rmap(&sys).unwrap();
    sys.exit(c, 0).unwrap();
    assert_eq!(k.pfn_to_page(before.0).unwrap().page_mapcount(), 1);
    check_rmap(&sys).unwrap();
}

#[test]
fn shared_anonymous_memory_stays_shared_across_fork() {
    let m = boot("x86_64", 1 << 30, 2, 1);
    let sys = System::new(&m);
    let p = sys.spawn("shm").unwrap();
    let a = sys.mmap(p, 0, 2 * PS, RW, SHARED_ANON, -1, 0).unwrap();
    let c = sys.fork(p).unwrap();
    sys.store(c, a + 100, b"from child").unwrap();
    let mut b = [0u8; 10];
    sys.load(p, a + 100, &mut b).unwrap();
    assert_eq!(&b, b"from child");
    let maps = sys.proc_read(&format!("/proc/{p}/maps")).unwrap();
    assert!(
        maps.contains("rw-s") && maps.contains("/dev/zero (deleted)"),
        "{maps}"
    );
    check_rmap(&sys).unwrap();
}

#[test]
fn bad_accesses_kill_with_sigsegv_and_linuxs_line() {
    let m = boot("x86_64", 1 << 30, 2, 1);
    let sys = System::new(&m);
    let p = sys.spawn("victim").unwrap();
    let a = sys.mmap(p, 0, PS, R, PRIVATE_ANON, -1, 0).unwrap();
    let r = sys.store(p, a, b"no");
    assert!(
        matches!(
            r,
            Err(SysError::Killed {
                signal: "SIGSEGV",
                ..
            })
        ),
        "{r:?}"
    );
    let log = m.take_log();
    assert!(
        log.iter().any(
            |l| l.starts_with(&format!("victim[{p}]: segfault at {a:x} ip"))
                && l.contains("error 6")
        ),
        "{log:?}"
    );
    assert!(sys.pids().is_empty(), "the process is gone");
    let q = sys.spawn("null").unwrap();
    let r = sys.load(q, 0, &mut [0u8; 1]);
    assert!(matches!(r, Err(SysError::Killed { addr: 0, .. })), "{r:?}");
    assert!(m
        .take_log()
        .iter()
        .any(|l| l.contains("segfault at 0 ") && l.contains("error 4")));
}

#[test]
fn the_stack_grows_down_on_faults() {
    let m = boot("x86_64", 1 << 30, 2, 1);
    let sys = System::new(&m);
    let p = sys.spawn("stack").unwrap();
    let top = 0x7fff_0000_0000u64;
    let s = sys
        .mmap(
            p,
            top - 4 * PS,
            4 * PS,
            RW,
            PRIVATE_ANON | 0x100 | 0x10,
            -1,
            0,
        )
        .unwrap();
    assert_eq!(s, top - 4 * PS);
    // 20 pages below the VMA: the stack grows to cover it.
    sys.store(p, s - 20 * PS, b"deep").unwrap();
    let maps = sys.proc_read(&format!("/proc/{p}/maps")).unwrap();
    assert!(
        maps.starts_with(&format!("{:x}-{top:x} rw-p", s - 20 * PS)),
        "{maps}"
    );
}

#[test]
fn exec_maps_a_real_binary_like_linux() {
    if !std::path::Path::new("/bin/ls").exists() {
        return;
    }
    let m = boot("x86_64", 1 << 30, 2, 1);
    let sys = System::new(&m);
    let p = sys.spawn("sh").unwrap();
    sys.exec(
        p,
        "/bin/ls",
        &["ls".into(), "-l".into()],
        &["HOME=/root".into()],
    )
    .unwrap();
    let maps = sys.proc_read(&format!("/proc/{p}/maps")).unwrap();
    let lines: Vec<&str> = maps.lines().collect();
    // The PIE at ELF_ET_DYN_BASE, text read-execute, data read-write, the
    // interpreter below mmap_base, the stack under TASK_SIZE.
    assert!(lines[0].starts_with("555555554000-"), "{maps}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" r-xp ") && l.ends_with("/ls")),
        "{maps}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" rw-p ") && l.ends_with("/ls")),
        "{maps}"
    );
    assert!(lines.iter().any(|l| l.contains("ld-linux")), "{maps}");
    assert!(lines.last().unwrap().ends_with("[stack]"), "{maps}");
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("7ffffffde000-7ffffffff000 rw-p"),
        "{maps}"
    );
    // argv is on the stack, as real bytes.
    let k = m.kmm();
    let mm = k.mm_struct(sys.mm_of(p).unwrap()).unwrap();
    let arg = mm.arg_start.load(std::sync::atomic::Ordering::Relaxed);
    let mut b = [0u8; 6];
    sys.load(p, arg, &mut b).unwrap();
    assert_eq!(&b, b"ls\0-l\0");
    // Reading the text faults pages in from the file: major faults.
    let text = lines.iter().find(|l| l.contains(" r-xp ")).unwrap();
    let start = u64::from_str_radix(text.split('-').next().unwrap(), 16).unwrap();
    sys.fetch(p, start).unwrap();
    let status = sys.proc_read(&format!("/proc/{p}/status")).unwrap();
    assert!(status.contains("maj_flt:\t"), "{status}");
    assert!(k.nr_file_pages() > 0);
    check_rmap(&sys).unwrap();
}

#[test]
fn everything_comes_back_after_exit() {
    let m = boot("x86_64", 1 << 30, 2, 1);
    let k = m.kmm();
    // Warm the caches the process side creates on first use (their
    // kmem_cache structures stay).
    {
        let sys = System::new(&m);
        let p = sys.spawn("warm").unwrap();
        let a = sys.mmap(p, 0, PS, RW, PRIVATE_ANON, -1, 0).unwrap();
        sys.store(p, a, b"w").unwrap();
        let s = sys.mmap(p, 0, PS, RW, SHARED_ANON, -1, 0).unwrap();
        sys.store(p, s, b"w").unwrap();
    }
    shrink_all(k);
    k.drain_all_pages();
    let free = k.nr_free_pages();
    {
        let sys = System::new(&m);
        let p = sys.spawn("a").unwrap();
        let a = sys.mmap(p, 0, 64 * PS, RW, PRIVATE_ANON, -1, 0).unwrap();
        sys.fill(p, a, 64 * PS, 1).unwrap();
        let c = sys.fork(p).unwrap();
        sys.fill(c, a, 8 * PS, 2).unwrap();
        let s = sys.mmap(c, 0, 4 * PS, RW, SHARED_ANON, -1, 0).unwrap();
        sys.fill(c, s, 4 * PS, 3).unwrap();
        if std::path::Path::new("/bin/ls").exists() {
            let e = sys.spawn("sh").unwrap();
            sys.exec(e, "/bin/ls", &["ls".into()], &[]).unwrap();
        }
        sys.exit(p, 0).unwrap();
    }
    shrink_all(k);
    k.drain_all_pages();
    assert_eq!(
        k.nr_free_pages(),
        free,
        "every frame, page table and object back"
    );
    assert_eq!(k.nr_page_table_pages(), 0);
}

// ------------------------------------------------------------ shadow model

#[derive(Clone, Debug)]
enum Op {
    Mmap {
        proc: usize,
        pages: u64,
        write: bool,
    },
    Munmap {
        proc: usize,
        region: usize,
        first: u64,
        pages: u64,
    },
    Protect {
        proc: usize,
        region: usize,
        write: bool,
    },
    Store {
        proc: usize,
        region: usize,
        page: u64,
        byte: u8,
    },
    Load {
        proc: usize,
        region: usize,
        page: u64,
    },
    Fork {
        proc: usize,
    },
    Exit {
        proc: usize,
    },
    Cpu {
        proc: usize,
        cpu: usize,
    },
    Brk {
        proc: usize,
        pages: i64,
        byte: u8,
    },
    Mremap {
        proc: usize,
        region: usize,
        pages: u64,
    },
    /// fork, then the child stores to a page and both read it back.
    ForkTouch {
        proc: usize,
        region: usize,
        page: u64,
        byte: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3usize, 1..6u64, any::<bool>()).prop_map(|(proc, pages, write)| Op::Mmap { proc, pages, write }),
        1 => (0..3usize, 0..8usize, 0..6u64, 1..4u64).prop_map(|(proc, region, first, pages)| Op::Munmap { proc, region, first, pages }),
        1 => (0..3usize, 0..8usize, any::<bool>()).prop_map(|(proc, region, write)| Op::Protect { proc, region, write }),
        5 => (0..3usize, 0..8usize, 0..6u64, any::<u8>()).prop_map(|(proc, region, page, byte)| Op::Store { proc, region, page, byte }),
        4 => (0..3usize, 0..8usize, 0..6u64).prop_map(|(proc, region, page)| Op::Load { proc, region, page }),
        1 => (0..3usize).prop_map(|proc| Op::Fork { proc }),
        1 => (0..3usize).prop_map(|proc| Op::Exit { proc }),
        1 => (0..3usize, 0..2usize).prop_map(|(proc, cpu)| Op::Cpu { proc, cpu }),
        2 => (0..3usize, -4..6i64, any::<u8>()).prop_map(|(proc, pages, byte)| Op::Brk { proc, pages, byte }),
        1 => (0..3usize, 0..8usize, 1..5u64).prop_map(|(proc, region, pages)| Op::Mremap { proc, region, pages }),
        2 => (0..3usize, 0..8usize, 0..6u64, any::<u8>()).prop_map(|(proc, region, page, byte)| Op::ForkTouch { proc, region, page, byte }),
    ]
}

/// A process as the model sees it: pages (address -> (writable, content byte)).
#[derive(Clone, Debug, Default)]
struct ModelProc {
    pid: Pid,
    /// Pages of the mmap regions (the heap's are in `heap`).
    pages: BTreeMap<u64, (bool, u8)>,
    regions: Vec<u64>,
    /// The heap as brk made it: `(start_brk, bytes of each page)`.
    heap: Option<(u64, Vec<u8>)>,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random mmap/munmap/mprotect/store/load/fork/exit over processes and
    /// CPUs against a model: every load returns what the model says, a bad
    /// access kills exactly when the model says so, map counts equal the
    /// PTEs, and at the end every frame is back.
    #[test]
    fn processes_match_a_shadow_model(ops in proptest::collection::vec(op(), 1..60)) {
        let m = boot("x86_64", 256 << 20, 2, 1);
        let k = m.kmm();
        {
            let sys = System::new(&m);
            let p = sys.spawn("warm").unwrap();
            let a = sys.mmap(p, 0, PS, RW, PRIVATE_ANON, -1, 0).unwrap();
            sys.store(p, a, b"w").unwrap();
        }
        shrink_all(k);
        k.drain_all_pages();
        let free = k.nr_free_pages();
        {
            let sys = System::new(&m);
            let mut procs: Vec<ModelProc> = Vec::new();
            let first = sys.spawn("p0").unwrap();
            procs.push(ModelProc { pid: first, ..Default::default() });
            for op in ops {
                if procs.is_empty() {
                    let pid = sys.spawn("p").unwrap();
                    procs.push(ModelProc { pid, ..Default::default() });
                }
                let pick = |i: usize| i % procs.len();
                match op {
                    Op::Mmap { proc, pages, write } => {
                        let i = pick(proc);
                        let prot = if write { RW } else { R };
                        let a = sys.mmap(procs[i].pid, 0, pages * PS, prot, PRIVATE_ANON, -1, 0).unwrap();
                        for pg in 0..pages {
                            procs[i].pages.insert(a + pg * PS, (write, 0));
                        }
                        procs[i].regions.push(a);
                    }
                    Op::Munmap { proc, region, first, pages } => {
                        let i = pick(proc);
                        if procs[i].regions.is_empty() { continue; }
                        let base = procs[i].regions[region % procs[i].regions.len()];
                        let start = base + first * PS;
                        sys.munmap(procs[i].pid, start, pages * PS).unwrap();
                        for pg in 0..pages {
                            procs[i].pages.remove(&(start + pg * PS));
                        }
                    }
                    Op::Protect { proc, region, write } => {
                        let i = pick(proc);
                        if procs[i].regions.is_empty() { continue; }
                        let base = procs[i].regions[region % procs[i].regions.len()];
                        if !procs[i].pages.contains_key(&base) { continue; }
                        // The run of mapped pages from base.
                        let mut n = 0;
                        while procs[i].pages.contains_key(&(base + n * PS)) { n += 1; }
                        sys.mprotect(procs[i].pid, base, n * PS, if write { RW } else { R }).unwrap();
                        for pg in 0..n {
                            procs[i].pages.get_mut(&(base + pg * PS)).unwrap().0 = write;
                        }
                    }
                    Op::Store { proc, region, page, byte } => {
                        let i = pick(proc);
                        if procs[i].regions.is_empty() { continue; }
                        let addr = procs[i].regions[region % procs[i].regions.len()] + page * PS;
                        let r = sys.store(procs[i].pid, addr + 7, &[byte]);
                        match procs[i].pages.get_mut(&addr) {
                            Some((true, b)) => { prop_assert!(r.is_ok(), "{:?}", r); *b = byte; }
                            _ => {
                                prop_assert!(matches!(r, Err(SysError::Killed { .. })), "store {addr:#x}: {:?}", r);
                                procs.remove(i);
                            }
                        }
                    }
                    Op::Load { proc, region, page } => {
                        let i = pick(proc);
                        if procs[i].regions.is_empty() { continue; }
                        let addr = procs[i].regions[region % procs[i].regions.len()] + page * PS;
                        let mut b = [0u8; 1];
                        let r = sys.load(procs[i].pid, addr + 7, &mut b);
                        match procs[i].pages.get(&addr) {
                            Some(&(_, v)) => { prop_assert!(r.is_ok(), "{:?}", r); prop_assert_eq!(b[0], v); }
                            None => {
                                prop_assert!(matches!(r, Err(SysError::Killed { .. })), "load {addr:#x}: {:?}", r);
                                procs.remove(i);
                            }
                        }
                    }
                    Op::Fork { proc } => {
                        let i = pick(proc);
                        if procs.len() >= 4 { continue; }
                        let pid = sys.fork(procs[i].pid).unwrap();
                        let mut c = procs[i].clone();
                        c.pid = pid;
                        procs.push(c);
                    }
                    Op::Exit { proc } => {
                        let i = pick(proc);
                        sys.exit(procs[i].pid, 0).unwrap();
                        procs.remove(i);
                    }
                    Op::Cpu { proc, cpu } => {
                        let i = pick(proc);
                        sys.set_cpu(procs[i].pid, cpu).unwrap();
                    }
                    Op::Brk { proc, pages, byte } => {
                        // Grow or shrink the heap, check every heap page,
                        // then write the last one.
                        let i = pick(proc);
                        let pid = procs[i].pid;
                        let cur = sys.brk(pid, 0).unwrap();
                        let (start, mut heap) = procs[i].heap.take().unwrap_or((cur, Vec::new()));
                        prop_assert_eq!(cur, start + heap.len() as u64 * PS);
                        let n = (heap.len() as i64 + pages).max(0) as usize;
                        let want = start + n as u64 * PS;
                        let got = sys.brk(pid, want).unwrap();
                        if got == want {
                            heap.resize(n, 0);
                        } else {
                            prop_assert_eq!(got, cur, "a refused brk keeps the break");
                        }
                        for (j, &v) in heap.iter().enumerate() {
                            let mut b = [0u8; 1];
                            sys.load(pid, start + j as u64 * PS + 9, &mut b).unwrap();
                            prop_assert_eq!(b[0], v, "heap page {}", j);
                        }
                        if let Some(last) = heap.last_mut() {
                            sys.store(pid, start + (n as u64 - 1) * PS + 9, &[byte]).unwrap();
                            *last = byte;
                        }
                        procs[i].heap = Some((start, heap));
                    }
                    Op::ForkTouch { proc, region, page, byte } => {
                        let i = pick(proc);
                        if procs.len() >= 4 || procs[i].regions.is_empty() { continue; }
                        let addr = procs[i].regions[region % procs[i].regions.len()] + page * PS;
                        let Some(&(true, before)) = procs[i].pages.get(&addr) else { continue; };
                        let pid = sys.fork(procs[i].pid).unwrap();
                        let mut c = procs[i].clone();
                        c.pid = pid;
                        sys.store(pid, addr + 7, &[byte]).unwrap();
                        c.pages.insert(addr, (true, byte));
                        let mut b = [0u8; 1];
                        sys.load(procs[i].pid, addr + 7, &mut b).unwrap();
                        prop_assert_eq!(b[0], before, "the parent sees the child's write");
                        sys.load(pid, addr + 7, &mut b).unwrap();
                        prop_assert_eq!(b[0], byte);
                        procs.push(c);
                    }
                    Op::Mremap { proc, region, pages } => {
                        // Moves or grows the first page of a region.
                        let i = pick(proc);
                        if procs[i].regions.is_empty() { continue; }
                        let old = procs[i].regions[region % procs[i].regions.len()];
                        let r = sys.mremap(procs[i].pid, old, PS, pages * PS, 1, 0);
                        match procs[i].pages.get(&old).copied() {
                            None => prop_assert!(r.is_err(), "mremap of a hole: {:?}", r),
                            Some((w, v)) => {
                                let new = r.map_err(|e| TestCaseError::fail(e.to_string()))?;
                                procs[i].pages.remove(&old);
                                procs[i].pages.insert(new, (w, v));
                                for k in 1..pages {
                                    prop_assert!(!procs[i].pages.contains_key(&(new + k * PS)) || new == old);
                                    procs[i].pages.insert(new + k * PS, (w, 0));
                                }
                                procs[i].regions.push(new);
                            }
                        }
                    }
                }
                check_rmap(&sys).map_err(TestCaseError::fail)?;
                check_vmas_cover_ptes(&sys).map_err(TestCaseError::fail)?;
                let live: BTreeSet<Pid> = procs.iter().map(|p| p.pid).collect();
                prop_assert_eq!(live, sys.pids().into_iter().collect::<BTreeSet<_>>());
            }
        }
        shrink_all(k);
        k.drain_all_pages();
        prop_assert_eq!(k.nr_free_pages(), free);
        prop_assert_eq!(k.nr_page_table_pages(), 0);
    }
}

/// `madvise(MADV_DONTFORK)` sets `VM_DONTCOPY`: the child has no such VMA
/// and faults there; `MADV_DOFORK` undoes it. `MADV_DONTNEED` drops the
/// pages, and the next read sees zeros.
#[test]
fn dontfork_and_dontneed() {
    let m = boot("x86_64", 1 << 30, 2, 1);
    let sys = System::new(&m);
    let p = sys.spawn("p").unwrap();
    let a = sys.mmap(p, 0, 4 * PS, RW, PRIVATE_ANON, -1, 0).unwrap();
    sys.fill(p, a, 4 * PS, 9).unwrap();
    sys.madvise(p, a, PS, 10).unwrap(); // MADV_DONTFORK on the first page
    let c = sys.fork(p).unwrap();
    let r = sys.load(c, a, &mut [0u8; 1]);
    assert!(matches!(r, Err(SysError::Killed { .. })), "{r:?}");
    let mut b = [0u8; 1];
    let c2 = sys.fork(p).unwrap();
    sys.load(c2, a + PS, &mut b).unwrap();
    assert_eq!(b[0], 9, "the rest is inherited");
    sys.madvise(p, a, PS, 11).unwrap(); // MADV_DOFORK
    let c3 = sys.fork(p).unwrap();
    sys.load(c3, a, &mut b).unwrap();
    assert_eq!(b[0], 9);
    let before = rss(&sys, p).0;
    sys.madvise(p, a, 2 * PS, 4).unwrap(); // MADV_DONTNEED
    assert_eq!(rss(&sys, p).0, before - 2);
    sys.load(p, a, &mut b).unwrap();
    assert_eq!(b[0], 0, "a dropped anonymous page reads as zero");
    check_rmap(&sys).unwrap();
}
