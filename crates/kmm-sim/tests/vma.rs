//! Address spaces at the level of their areas on a simulated machine
//! (`mm/mmap.c`, `mm/vma.c`, `mm/mprotect.c`, `mm/mremap.c`,
//! `mm/madvise.c`, `mm/mlock.c`): Linux's merge and split cases, top-down
//! placement with hints and the stack guard gap, `brk`, `mremap` in place
//! and by moving, `mlock`, `madvise`, stack growth, the error numbers
//! Linux gives, the [`MmOps`] contract checked by a recording mock, no
//! `vm_area_struct` leaked, and a property test of random system-call
//! sequences against a page-by-page model.

mod common;

use common::*;
use kmm::mmap::*;
use kmm::{Errno, KmmError, PteFlags, VmaFlags};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};

const PS: u64 = 4096;
/// The test address spaces: 8 MiB of user space, `mmap_base` at 7 MiB,
/// the heap from 4 MiB.
const TASK: u64 = 0x80_0000;
const BASE: u64 = 0x70_0000;
const BRK0: u64 = 0x40_0000;
const RW: u64 = PROT_READ | PROT_WRITE;
const ANON: u64 = MAP_PRIVATE | MAP_ANONYMOUS;

const R: u64 = VmaFlags::VM_READ.bits();
const W: u64 = VmaFlags::VM_WRITE.bits();
const X: u64 = VmaFlags::VM_EXEC.bits();
const SH: u64 = VmaFlags::VM_SHARED.bits();
const MAYR: u64 = VmaFlags::VM_MAYREAD.bits();
const MAYW: u64 = VmaFlags::VM_MAYWRITE.bits();
const MAYX: u64 = VmaFlags::VM_MAYEXEC.bits();
const MAYSH: u64 = VmaFlags::VM_MAYSHARE.bits();
const GD: u64 = VmaFlags::VM_GROWSDOWN.bits();
const LOCKED: u64 = VmaFlags::VM_LOCKED.bits();
const DONTCOPY: u64 = VmaFlags::VM_DONTCOPY.bits();
const ACCT: u64 = VmaFlags::VM_ACCOUNT.bits();
const NORES: u64 = VmaFlags::VM_NORESERVE.bits();
const MAYS: u64 = MAYR | MAYW | MAYX;

const FILE_RW: MmapFile = MmapFile {
    mapping: 0xa000,
    size: 1 << 20,
    readable: true,
    writable: true,
};
const FILE_RO: MmapFile = MmapFile {
    mapping: 0xb000,
    size: 1 << 20,
    readable: true,
    writable: false,
};
const FILE_WO: MmapFile = MmapFile {
    mapping: 0xc000,
    size: 1 << 20,
    readable: false,
    writable: true,
};
const FILE_NOMMAP: MmapFile = MmapFile {
    mapping: 0,
    size: 1 << 20,
    readable: true,
    writable: true,
};

// ------------------------------------------------------------------ the mock

/// One call the area-level code made to the page side.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Zap {
        vma: u64,
        start: u64,
        end: u64,
    },
    Protect {
        start: u64,
        end: u64,
        prot: PteFlags,
    },
    Move {
        old: u64,
        new: u64,
        len: u64,
        same_vma: bool,
    },
    Populate {
        start: u64,
        end: u64,
    },
}

/// A recording [`MmOps`] that checks, at each call, that the area named
/// describes the range, and keeps the set of opened, not yet closed areas.
struct Rec<'k> {
    k: &'k K,
    calls: RefCell<Vec<Call>>,
    live: RefCell<HashSet<u64>>,
    problems: RefCell<Vec<String>>,
    fail_move: std::cell::Cell<bool>,
}

impl<'k> Rec<'k> {
    fn new(k: &'k K) -> Self {
        Rec {
            k,
            calls: RefCell::new(Vec::new()),
            live: RefCell::new(HashSet::new()),
            problems: RefCell::new(Vec::new()),
            fail_move: std::cell::Cell::new(false),
        }
    }

    fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.borrow_mut())
    }

    fn check_in(&self, what: &str, vma: u64, start: u64, end: u64) -> Option<VmaInfo> {
        match self.k.vma_info(vma) {
            Ok(i)
                if i.vm_start <= start
                    && start < end
                    && end <= i.vm_end
                    && start.is_multiple_of(PS)
                    && end.is_multiple_of(PS) =>
            {
                Some(i)
            }
            other => {
                self.problems.borrow_mut().push(format!(
                    "{what} [{start:#x}, {end:#x}) not inside its VMA {vma:#x}: {other:?}"
                ));
                None
            }
        }
    }

    fn problems(&self) -> Vec<String> {
        std::mem::take(&mut *self.problems.borrow_mut())
    }
}

impl MmOps for Rec<'_> {
    fn zap_range(&self, _mm: u64, vma: u64, start: u64, end: u64) -> Result<(), KmmError> {
        self.check_in("zap_range", vma, start, end);
        self.calls.borrow_mut().push(Call::Zap { vma, start, end });
        Ok(())
    }
    fn change_protection(
        &self,
        _mm: u64,
        vma: u64,
        start: u64,
        end: u64,
        prot: PteFlags,
    ) -> Result<(), KmmError> {
        if let Some(i) = self.check_in("change_protection", vma, start, end) {
            if i.vm_page_prot != prot {
                self.problems.borrow_mut().push(format!(
                    "change_protection with {prot:?} but the VMA has {:?}",
                    i.vm_page_prot
                ));
            }
        }
        self.calls
            .borrow_mut()
            .push(Call::Protect { start, end, prot });
        Ok(())
    }
    fn move_page_tables(
        &self,
        _mm: u64,
        old_vma: u64,
        old_start: u64,
        new_vma: u64,
        new_start: u64,
        len: u64,
    ) -> Result<(), KmmError> {
        self.check_in(
            "move_page_tables (old)",
            old_vma,
            old_start,
            old_start + len,
        );
        self.check_in(
            "move_page_tables (new)",
            new_vma,
            new_start,
            new_start + len,
        );
        self.calls.borrow_mut().push(Call::Move {
            old: old_start,
            new: new_start,
            len,
            same_vma: old_vma == new_vma,
        });
        if self.fail_move.get() {
            return Err(KmmError::Errno {
                errno: Errno::ENOMEM,
                what: "mock: move_page_tables fails",
            });
        }
        Ok(())
    }
    fn populate(&self, _mm: u64, vma: u64, start: u64, end: u64) -> Result<(), KmmError> {
        self.check_in("populate", vma, start, end);
        self.calls.borrow_mut().push(Call::Populate { start, end });
        Ok(())
    }
    fn vma_opened(&self, _mm: u64, vma: u64) {
        if !self.live.borrow_mut().insert(vma) {
            self.problems
                .borrow_mut()
                .push(format!("vma_opened twice for {vma:#x}"));
        }
    }
    fn vma_closed(&self, _mm: u64, vma: u64) {
        if !self.live.borrow_mut().remove(&vma) {
            self.problems
                .borrow_mut()
                .push(format!("vma_closed for {vma:#x}, which is not open"));
        }
    }
}

// ------------------------------------------------------------------ helpers

fn machine() -> kmm_sim::Machine {
    boot("x86_64", 64 * M, 2, 1)
}

fn new_mm(k: &K) -> u64 {
    let mm = k.mm_alloc(TASK, BASE).unwrap();
    k.mm_set_brk_base(mm, BRK0).unwrap();
    mm
}

fn vmas(k: &K, mm: u64) -> Vec<VmaInfo> {
    let mut v = Vec::new();
    k.for_each_vma(mm, &mut |i| {
        v.push(*i);
        Ok(())
    })
    .unwrap();
    v
}

fn ranges(k: &K, mm: u64) -> Vec<(u64, u64)> {
    vmas(k, mm).iter().map(|v| (v.vm_start, v.vm_end)).collect()
}

fn errno_of<T: std::fmt::Debug>(r: Result<T, KmmError>) -> Errno {
    match r {
        Err(KmmError::Errno { errno, .. }) => errno,
        other => panic!("expected an errno, got {other:?}"),
    }
}

/// Objects of a cache in use (not counting those waiting in per-CPU arrays).
fn in_use(k: &K, name: &str) -> u64 {
    match k.kmem_cache_find(name) {
        Some(c) => {
            let i = k.kmem_cache_info(c).unwrap();
            i.active_objs - i.cpu_cached
        }
        None => 0,
    }
}

/// Checks the structure, the mock's view and the page protections, then
/// frees the address space and checks nothing is left.
fn finish(k: &K, mm: u64, ops: &Rec) {
    k.validate_mm(mm).unwrap();
    check_live(k, mm, ops);
    ops.take();
    let before = vmas(k, mm);
    k.mm_free_vmas(mm, ops).unwrap();
    let zaps: Vec<(u64, u64)> = ops
        .take()
        .into_iter()
        .map(|c| match c {
            Call::Zap { start, end, .. } => (start, end),
            other => panic!("exit made {other:?}"),
        })
        .collect();
    let want: Vec<(u64, u64)> = before.iter().map(|v| (v.vm_start, v.vm_end)).collect();
    assert_eq!(zaps, want, "exit zaps every VMA once, whole");
    let st = k.mm_vm_stat(mm).unwrap();
    assert_eq!(
        (
            st.map_count,
            st.total_vm,
            st.locked_vm,
            st.data_vm,
            st.exec_vm,
            st.stack_vm
        ),
        (0, 0, 0, 0, 0, 0),
        "counters after exit"
    );
    assert!(ops.live.borrow().is_empty(), "every VMA closed at exit");
    assert_eq!(ops.problems(), Vec::<String>::new());
    k.mm_free(mm).unwrap();
}

fn check_live(k: &K, mm: u64, ops: &Rec) {
    let mut have: Vec<u64> = vmas(k, mm).iter().map(|v| v.vma).collect();
    have.sort_unstable();
    let mut live: Vec<u64> = ops.live.borrow().iter().copied().collect();
    live.sort_unstable();
    assert_eq!(
        have, live,
        "the opened-and-not-closed VMAs are the mm's VMAs"
    );
    for v in vmas(k, mm) {
        assert_eq!(v.vm_page_prot, vm_get_page_prot(v.vm_flags), "{v:?}");
    }
}

fn map_anon(k: &K, mm: u64, ops: &Rec, addr: u64, pages: u64, prot: u64) -> u64 {
    k.do_mmap(mm, None, addr, pages * PS, prot, ANON | MAP_FIXED, 0, ops)
        .unwrap()
}

// ------------------------------------------------------------------ scenarios

#[test]
fn protection_map_is_x86s() {
    let f = |b: u64| vm_get_page_prot(VmaFlags::from_bits_retain(b));
    let p = PteFlags::PRESENT | PteFlags::USER;
    assert_eq!(f(0), PteFlags::empty());
    assert_eq!(f(SH), PteFlags::empty());
    assert_eq!(f(R), p | PteFlags::NO_EXEC);
    assert_eq!(
        f(W),
        p | PteFlags::NO_EXEC,
        "private write-only: copy-on-write"
    );
    assert_eq!(f(R | W), p | PteFlags::NO_EXEC, "PAGE_COPY is read-only");
    assert_eq!(f(R | X), p);
    assert_eq!(f(R | W | X), p, "PAGE_COPY_EXEC");
    assert_eq!(f(R | SH), p | PteFlags::NO_EXEC);
    assert_eq!(f(R | W | SH), p | PteFlags::WRITABLE | PteFlags::NO_EXEC);
    assert_eq!(f(W | SH), p | PteFlags::WRITABLE | PteFlags::NO_EXEC);
    assert_eq!(f(R | W | X | SH), p | PteFlags::WRITABLE);
}

#[test]
fn mprotect_middle_splits_in_three_and_back_merges_into_one() {
    let m = machine();
    let k = m.kmm();
    let ops = Rec::new(k);
    let mm = new_mm(k);
    let a = k.do_mmap(mm, None, 0, 10 * PS, RW, ANON, 0, &ops).unwrap();
    assert_eq!(a, BASE - 10 * PS, "top-down, right below mmap_base");
    let v = vmas(k, mm);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].vm_flags.bits(), R | W | MAYS | ACCT);
    assert_eq!(v[0].vm_pgoff, a / PS);
    ops.take();

    k.do_mprotect(mm, a + 3 * PS, 3 * PS, PROT_READ, &ops)
        .unwrap();
    assert_eq!(
        ranges(k, mm),
        vec![
            (a, a + 3 * PS),
            (a + 3 * PS, a + 6 * PS),
            (a + 6 * PS, a + 10 * PS)
        ]
    );
    let v = vmas(k, mm);
    // Read-only and without pages (no anon_vma): the charge is given back.
    assert_eq!(v[1].vm_flags.bits(), R | MAYS);
    assert_eq!(v[1].vm_pgoff, a / PS + 3);
    assert_eq!(v[2].vm_pgoff, a / PS + 6);
    assert_eq!(
        ops.take(),
        vec![Call::Protect {
            start: a + 3 * PS,
            end: a + 6 * PS,
            prot: PteFlags::PRESENT | PteFlags::USER | PteFlags::NO_EXEC
        }]
    );
    let st = k.mm_vm_stat(mm).unwrap();
    assert_eq!((st.map_count, st.total_vm, st.data_vm), (3, 10, 7));

    k.do_mprotect(mm, a + 3 * PS, 3 * PS, RW, &ops).unwrap();
    assert_eq!(
        ranges(k, mm),
        vec![(a, a + 10 * PS)],
        "merged back into one"
    );
    let st = k.mm_vm_stat(mm).unwrap();
    assert_eq!((st.map_count, st.total_vm, st.data_vm), (1, 10, 10));
    assert_eq!(ops.take().len(), 1);

    // The same with the middle made writable first: the VM_ACCOUNT it gains
    // is given back when it turns read-only again (no pages yet), so it
    // merges back too.
    let b = k
        .do_mmap(mm, None, 0, 6 * PS, PROT_READ, ANON, 0, &ops)
        .unwrap();
    k.do_mprotect(mm, b + 2 * PS, 2 * PS, RW, &ops).unwrap();
    assert_eq!(vmas(k, mm).len(), 4);
    assert_eq!(vmas(k, mm)[1].vm_flags.bits(), R | W | MAYS | ACCT);
    k.do_mprotect(mm, b + 2 * PS, 2 * PS, PROT_READ, &ops)
        .unwrap();
    assert_eq!(ranges(k, mm), vec![(b, b + 6 * PS), (a, a + 10 * PS)]);
    finish(k, mm, &ops);
}

#[test]
fn munmap_middle_splits_and_zaps_exactly() {
    let m = machine();
    let k = m.kmm();
    let ops = Rec::new(k);
    let mm = new_mm(k);
    let a = map_anon(k, mm, &ops, 0x20_0000, 8, RW);
    ops.take();
    k.do_munmap(mm, a + 2 * PS, 3 * PS, &ops).unwrap();
    assert_eq!(
        ranges(k, mm),
        vec![(a, a + 2 * PS), (a + 5 * PS, a + 8 * PS)]
    );
    let calls = ops.take();
    assert_eq!(calls.len(), 1);
    match calls[0] {
        Call::Zap { start, end, .. } => assert_eq!((start, end), (a + 2 * PS, a + 5 * PS)),
        ref c => panic!("{c:?}"),
    }
    assert_eq!(vmas(k, mm)[1].vm_pgoff, a / PS + 5);
    // Unmapping across both pieces and the hole between them.
    k.do_munmap(mm, a + PS, 5 * PS, &ops).unwrap();
    assert_eq!(ranges(k, mm), vec![(a, a + PS), (a + 6 * PS, a + 8 * PS)]);
    let zaps: Vec<_> = ops
        .take()
        .into_iter()
        .map(|c| match c {
            Call::Zap { start, end, .. } => (start, end),
            c => panic!("{c:?}"),
        })
        .collect();
    assert_eq!(zaps, vec![(a + PS, a + 2 * PS), (a + 5 * PS, a + 6 * PS)]);
    // Nothing there: fine.
    k.do_munmap(mm, 0x10_0000, PS, &ops).unwrap();
    assert!(ops.take().is_empty());
    // Unaligned, empty, beyond TASK_SIZE.
    assert_eq!(errno_of(k.do_munmap(mm, a + 1, PS, &ops)), Errno::EINVAL);
    assert_eq!(errno_of(k.do_munmap(mm, a, 0, &ops)), Errno::EINVAL);
    assert_eq!(
        errno_of(k.do_munmap(mm, TASK - PS, 2 * PS, &ops)),
        Errno::EINVAL
    );
    assert_eq!(errno_of(k.do_munmap(mm, a, u64::MAX, &ops)), Errno::EINVAL);
    assert_eq!(k.mm_vm_stat(mm).unwrap().total_vm, 3);
    finish(k, mm, &ops);
}

#[test]
fn adjacent_mappings_merge_as_linux_says() {
    let m = machine();
    let k = m.kmm();
    let ops = Rec::new(k);
    let mm = new_mm(k);
    let a = 0x20_0000;
    // Case 1: a hole filled between two compatible areas.
    map_anon(k, mm, &ops, a, 2, RW);
    map_anon(k, mm, &ops, a + 3 * PS, 2, RW);
    assert_eq!(vmas(k, mm).len(), 2);
    map_anon(k, mm, &ops, a + 2 * PS, 1, RW);
    assert_eq!(ranges(k, mm), vec![(a, a + 5 * PS)]);
    // Different flags: no merge.
    map_anon(k, mm, &ops, a + 5 * PS, 1, PROT_READ);
    assert_eq!(vmas(k, mm).len(), 2);
    // A file: contiguous offsets merge, others do not.
    let f = 0x30_0000;
    k.do_mmap(
        mm,
        Some(FILE_RW),
        f,
        2 * PS,
        PROT_READ,
        MAP_PRIVATE | MAP_FIXED,
        10,
        &ops,
    )
    .unwrap();
    k.do_mmap(
        mm,
        Some(FILE_RW),
        f + 2 * PS,
        2 * PS,
        PROT_READ,
        MAP_PRIVATE | MAP_FIXED,
        12,
        &ops,
    )
    .unwrap();
    k.do_mmap(
        mm,
        Some(FILE_RW),
        f + 4 * PS,
        PS,
        PROT_READ,
        MAP_PRIVATE | MAP_FIXED,
        99,
        &ops,
    )
    .unwrap();
    k.do_mmap(
        mm,
        Some(FILE_RO),
        f + 5 * PS,
        PS,
        PROT_READ,
        MAP_PRIVATE | MAP_FIXED,
        15,
        &ops,
    )
    .unwrap();
    let r: Vec<_> = vmas(k, mm)
        .iter()
        .filter(|v| v.vm_file != 0)
        .map(|v| (v.vm_start, v.vm_end, v.vm_pgoff))
        .collect();
    assert_eq!(
        r,
        vec![
            (f, f + 4 * PS, 10),
            (f + 4 * PS, f + 5 * PS, 99),
            (f + 5 * PS, f + 6 * PS, 15)
        ]
    );
    // Case 3: a new area merges with the next one (its offset fits).
    k.do_mmap(
        mm,
        Some(FILE_RW),
        f - PS,
        PS,
        PROT_READ,
        MAP_PRIVATE | MAP_FIXED,
        9,
        &ops,
    )
    .unwrap();
    assert_eq!(
        vmas(k, mm).iter().filter(|v| v.vm_start == f - PS).count(),
        1
    );
    let v = vmas(k, mm)
        .into_iter()
        .find(|v| v.vm_start == f - PS)
        .unwrap();
    assert_eq!((v.vm_end, v.vm_pgoff), (f + 4 * PS, 9));

    // anon_vma: areas with different anon_vmas do not merge; one without
    // merges with one that has it.
    let b = 0x28_0000;
    map_anon(k, mm, &ops, b, 2, PROT_READ);
    map_anon(k, mm, &ops, b + 2 * PS, 2, PROT_READ);
    assert_eq!(ranges(k, mm).iter().filter(|r| r.0 == b).count(), 1);
    k.do_mprotect(mm, b + 2 * PS, 2 * PS, RW, &ops).unwrap();
    let set_anon = |addr: u64, anon: u64| {
        let vma = k.vma_lookup(mm, addr).unwrap().unwrap();
        k.vm_area(vma)
            .unwrap()
            .anon_vma
            .store(anon, std::sync::atomic::Ordering::Relaxed);
    };
    set_anon(b, 0x1111);
    set_anon(b + 2 * PS, 0x2222);
    k.do_mprotect(mm, b + 2 * PS, 2 * PS, PROT_READ, &ops)
        .unwrap();
    let around: Vec<_> = vmas(k, mm)
        .into_iter()
        .filter(|v| v.vm_start >= b && v.vm_end <= b + 4 * PS)
        .map(|v| (v.vm_start, v.anon_vma))
        .collect();
    assert_eq!(
        around,
        vec![(b, 0x1111), (b + 2 * PS, 0x2222)],
        "incompatible anon_vmas"
    );
    set_anon(b + 2 * PS, 0);
    k.do_mprotect(mm, b + 2 * PS, 2 * PS, RW, &ops).unwrap();
    k.do_mprotect(mm, b + 2 * PS, 2 * PS, PROT_READ, &ops)
        .unwrap();
    let around: Vec<_> = vmas(k, mm)
        .into_iter()
        .filter(|v| v.vm_start >= b && v.vm_end <= b + 4 * PS)
        .map(|v| (v.vm_start, v.vm_end, v.anon_vma))
        .collect();
    assert_eq!(
        around,
        vec![(b, b + 4 * PS, 0x1111)],
        "merged, anon_vma kept"
    );
    finish(k, mm, &ops);
}

#[test]
fn map_fixed_replaces_and_noreplace_refuses() {
    let m = machine();
    let k = m.kmm();
    let ops = Rec::new(k);
    let mm = new_mm(k);
    let a = map_anon(k, mm, &ops, 0x20_0000, 6, RW);
    ops.take();
    // MAP_FIXED over the middle, with other flags: zap, then a new area.
    let r = k
        .do_mmap(
            mm,
            None,
            a + 2 * PS,
            2 * PS,
            PROT_READ | PROT_EXEC,
            ANON | MAP_FIXED,
            0,
            &ops,
        )
        .unwrap();
    assert_eq!(r, a + 2 * PS);
    assert_eq!(
        ranges(k, mm),
        vec![
            (a, a + 2 * PS),
            (a + 2 * PS, a + 4 * PS),
            (a + 4 * PS, a + 6 * PS)
        ]
    );
    let calls = ops.take();
    assert_eq!(calls.len(), 1);
    assert!(
        matches!(calls[0], Call::Zap { start, end, .. } if (start, end) == (a + 2 * PS, a + 4 * PS))
    );
    let st = k.mm_vm_stat(mm).unwrap();
    assert_eq!((st.total_vm, st.data_vm, st.exec_vm), (6, 4, 2));
    // MAP_FIXED with the same flags: replaced and merged into one.
    k.do_mmap(mm, None, a + PS, 4 * PS, RW, ANON | MAP_FIXED, 0, &ops)
        .unwrap();
    assert_eq!(ranges(k, mm), vec![(a, a + 6 * PS)]);
    // MAP_FIXED_NOREPLACE: EEXIST over anything, fine in a hole.
    assert_eq!(
        errno_of(k.do_mmap(
            mm,
            None,
            a + 5 * PS,
            2 * PS,
            RW,
            ANON | MAP_FIXED_NOREPLACE,
            0,
            &ops
        )),
        Errno::EEXIST
    );
    assert_eq!(ranges(k, mm), vec![(a, a + 6 * PS)]);
    let b = k
        .do_mmap(
            mm,
            None,
            a + 6 * PS,
            PS,
            RW,
            ANON | MAP_FIXED_NOREPLACE,
            0,
            &ops,
        )
        .unwrap();
    assert_eq!(b, a + 6 * PS);
    assert_eq!(ranges(k, mm), vec![(a, a + 7 * PS)]);
    finish(k, mm, &ops);
}

#[test]
fn mmap_errors_are_linuxs() {
    let m = machine();
    let k = m.kmm();
    let ops = Rec::new(k);
    let mm = new_mm(k);
    let e = |file: Option<MmapFile>, addr, len, prot, flags, pgoff| {
        errno_of(k.do_mmap(mm, file, addr, len, prot, flags, pgoff, &ops))
    };
    assert_eq!(
        e(None, 0, PS, RW, MAP_PRIVATE, 0),
        Errno::EBADF,
        "no fd, not anonymous"
    );
    assert_eq!(e(None, 0, 0, RW, ANON, 0), Errno::EINVAL, "zero length");
    assert_eq!(
        e(None, 0, u64::MAX - 10, RW, ANON, 0),
        Errno::ENOMEM,
        "length overflows"
    );
    assert_eq!(
        e(None, 0, TASK + PS, RW, ANON, 0),
        Errno::ENOMEM,
        "larger than TASK_SIZE"
    );
    assert_eq!(
        e(None, 0x20_0001, PS, RW, ANON | MAP_FIXED, 0),
        Errno::EINVAL,
        "unaligned fixed"
    );
    assert_eq!(
        e(None, TASK - PS, 2 * PS, RW, ANON | MAP_FIXED, 0),
        Errno::ENOMEM,
        "beyond TASK_SIZE"
    );
    assert_eq!(
        e(None, 0x1000, PS, RW, ANON | MAP_FIXED, 0),
        Errno::EPERM,
        "below mmap_min_addr"
    );
    assert_eq!(
        e(None, 0, PS, RW, MAP_ANONYMOUS, 0),
        Errno::EINVAL,
        "no mapping type"
    );
    assert_eq!(
        e(None, 0, PS, RW, MAP_ANONYMOUS | MAP_SHARED_VALIDATE, 0),
        Errno::EINVAL
    );
    assert_eq!(
        e(
            None,
            0,
            PS,
            RW,
            MAP_ANONYMOUS | MAP_SHARED | MAP_GROWSDOWN,
            0
        ),
        Errno::EINVAL
    );
    assert_eq!(
        e(None, 0, PS, RW, ANON | MAP_HUGETLB, 0),
        Errno::ENOMEM,
        "no huge pages"
    );
    assert_eq!(
        e(Some(FILE_RW), 0, PS, RW, MAP_PRIVATE | MAP_HUGETLB, 0),
        Errno::EINVAL
    );
    assert_eq!(
        e(Some(FILE_RO), 0, PS, RW, MAP_SHARED, 0),
        Errno::EACCES,
        "shared writable mapping of a read-only file"
    );
    assert_eq!(
        e(Some(FILE_WO), 0, PS, PROT_READ, MAP_PRIVATE, 0),
        Errno::EACCES,
        "not readable"
    );
    assert_eq!(
        e(Some(FILE_WO), 0, PS, PROT_READ, MAP_SHARED, 0),
        Errno::EACCES
    );
    assert_eq!(
        e(Some(FILE_NOMMAP), 0, PS, PROT_READ, MAP_PRIVATE, 0),
        Errno::ENODEV
    );
    assert_eq!(
        e(Some(FILE_RW), 0, PS, RW, MAP_PRIVATE | MAP_GROWSDOWN, 0),
        Errno::EINVAL
    );
    assert_eq!(
        e(Some(FILE_RW), 0, PS, RW, 0, 0),
        Errno::EINVAL,
        "no mapping type"
    );
    assert_eq!(
        e(Some(FILE_RW), 0, 2 * PS, RW, MAP_PRIVATE, u64::MAX - 1),
        Errno::EOVERFLOW
    );
    assert_eq!(
        e(Some(FILE_RW), 0, PS, RW, MAP_PRIVATE, 1 << 52),
        Errno::EOVERFLOW,
        "past MAX_LFS_FILESIZE"
    );
    assert_eq!(
        e(Some(FILE_RW), 0, PS, RW, MAP_SHARED_VALIDATE | MAP_SYNC, 0),
        Errno::EINVAL,
        "Linux: EOPNOTSUPP"
    );
    assert!(vmas(k, mm).is_empty(), "no error left anything behind");
    assert!(ops.take().is_empty());

    // What is allowed: a private writable mapping of a read-only file
    // (copy-on-write, may never be shared), a shared read-only one (may not
    // be made writable), MAP_SHARED ignoring unknown flags.
    let a = k
        .do_mmap(mm, Some(FILE_RO), 0, PS, RW, MAP_PRIVATE, 3, &ops)
        .unwrap();
    let v = vmas(k, mm)[0];
    assert_eq!(v.vm_flags.bits(), R | W | MAYS | ACCT);
    assert_eq!((v.vm_start, v.vm_pgoff, v.vm_file), (a, 3, FILE_RO.mapping));
    let b = k
        .do_mmap(
            mm,
            Some(FILE_RO),
            0,
            PS,
            PROT_READ,
            MAP_SHARED | MAP_SYNC,
            0,
            &ops,
        )
        .unwrap();
    let v = vmas(k, mm).into_iter().find(|v| v.vm_start == b).unwrap();
    assert_eq!(
        v.vm_flags.bits(),
        R | MAYR | MAYX | MAYSH,
        "no VM_SHARED/VM_MAYWRITE"
    );
    assert_eq!(errno_of(k.do_mprotect(mm, b, PS, RW, &ops)), Errno::EACCES);
    let c = k
        .do_mmap(mm, Some(FILE_RW), 0, PS, RW, MAP_SHARED, 0, &ops)
        .unwrap();
    let v = vmas(k, mm).into_iter().find(|v| v.vm_start == c).unwrap();
    assert_eq!(
        v.vm_flags.bits(),
        R | W | SH | MAYS | MAYSH,
        "shared: not accounted"
    );
    assert_eq!(
        v.vm_page_prot,
        PteFlags::PRESENT | PteFlags::USER | PteFlags::WRITABLE | PteFlags::NO_EXEC
    );
    // Anonymous shared memory: pgoff 0, VM_SHARED.
    let d = k
        .do_mmap(
            mm,
            None,
            0,
            2 * PS,
            RW,
            MAP_SHARED | MAP_ANONYMOUS,
            77,
            &ops,
        )
        .unwrap();
    let v = vmas(k, mm).into_iter().find(|v| v.vm_start == d).unwrap();
    assert_eq!((v.vm_pgoff, v.vm_file), (0, 0));
    assert_eq!(v.vm_flags.bits(), R | W | SH | MAYS | MAYSH);
    // MAP_NORESERVE: not accounted.
    let e2 = k
        .do_mmap(mm, None, 0, PS, RW, ANON | MAP_NORESERVE, 0, &ops)
        .unwrap();
    let v = vmas(k, mm).into_iter().find(|v| v.vm_start == e2).unwrap();
    assert_eq!(v.vm_flags.bits(), R | W | MAYS | NORES);
    finish(k, mm, &ops);
}

#[test]
fn placement_is_top_down_with_hints_and_the_stack_guard_gap() {
    let m = machine();
    let k = m.kmm();
    let ops = Rec::new(k);
    let mm = new_mm(k);
    let a = k.do_mmap(mm, None, 0, 4 * PS, RW, ANON, 0, &ops).unwrap();
    assert_eq!(a, BASE - 4 * PS);
    let b = k
        .do_mmap(mm, None, 0, PS, PROT_READ, ANON, 0, &ops)
        .unwrap();
    assert_eq!(b, a - PS, "right below the previous one");
    // A free hint is honoured (rounded down to a page), also above mmap_base.
    let c = k
        .do_mmap(mm, None, 0x74_0123, 2 * PS, RW, ANON, 0, &ops)
        .unwrap();
    assert_eq!(c, 0x74_0000);
    // A taken hint falls back to the top-down search, which fills the hole
    // b's unmapping leaves.
    k.do_munmap(mm, b, PS, &ops).unwrap();
    let d = k.do_mmap(mm, None, a + PS, PS, RW, ANON, 0, &ops).unwrap();
    assert_eq!(d, a - PS);
    // A hint below mmap_min_addr is raised to it.
    let e = k
        .do_mmap(mm, None, 0x1000, PS, PROT_READ, ANON, 0, &ops)
        .unwrap();
    assert_eq!(e, DEFAULT_MMAP_MIN_ADDR);

    // A stack: nothing is placed within stack_guard_gap below it.
    let gap = k.stack_guard_gap();
    assert_eq!(gap, 256 * PS);
    let s = 0x60_0000;
    k.do_mmap(
        mm,
        None,
        s,
        4 * PS,
        RW,
        ANON | MAP_FIXED | MAP_GROWSDOWN,
        0,
        &ops,
    )
    .unwrap();
    let v = vmas(k, mm).into_iter().find(|v| v.vm_start == s).unwrap();
    assert_eq!(v.vm_flags, VmaFlags::VM_STACK_FLAGS);
    // A hint just below the stack is refused, one below the gap honoured.
    let f = k
        .do_mmap(mm, None, s - 4 * PS, 2 * PS, RW, ANON, 0, &ops)
        .unwrap();
    assert_ne!(f, s - 4 * PS);
    let g = k
        .do_mmap(mm, None, s - gap - 2 * PS, 2 * PS, PROT_READ, ANON, 0, &ops)
        .unwrap();
    assert_eq!(g, s - gap - 2 * PS);
    // f went top-down, below d. The gap between the stack and f fits
    // exactly; the next request must end below the stack's guard gap.
    let h = k
        .do_mmap(mm, None, 0, f - (s + 4 * PS), PROT_READ, ANON, 0, &ops)
        .unwrap();
    assert_eq!(h, s + 4 * PS);
    let i = k
        .do_mmap(mm, None, 0, 8 * PS, PROT_READ, ANON, 0, &ops)
        .unwrap();
    assert_eq!(i + 8 * PS, g, "below the stack's guard gap, right under g");
    // 3 MiB still fit below; then nothing does, below mmap_base or above
    // TASK_UNMAPPED_BASE.
    let big = 3 << 20;
    let j = k
        .do_mmap(mm, None, 0, big, PROT_READ, ANON, 0, &ops)
        .unwrap();
    assert_eq!(j + big, i);
    assert_eq!(
        errno_of(k.do_mmap(mm, None, 0, big, PROT_READ, ANON, 0, &ops)),
        Errno::ENOMEM
    );
    k.validate_mm(mm).unwrap();
    finish(k, mm, &ops);
}

#[test]
fn bottom_up_fallback_above_task_unmapped_base() {
    let m = machine();
    let k = m.kmm();
    let ops = Rec::new(k);
    // mmap_base low: nothing fits below it.
    let mm = k.mm_alloc(TASK, 0x20_0000).unwrap();
    let a = k
        .do_mmap(mm, None, 0, 0x20_0000, RW, ANON, 0, &ops)
        .unwrap();
    let tub = (TASK / 3 + PS - 1) & !(PS - 1);
    assert_eq!(a, tub, "bottom-up from TASK_UNMAPPED_BASE");
    let b = k.do_mmap(mm, None, 0, PS, RW, ANON, 0, &ops).unwrap();
    assert_eq!(b, 0x20_0000 - PS, "small ones still go top-down");
    finish(k, mm, &ops);
}

#[test]
fn brk_grows_merges_shrinks_and_refuses() {
    let m = machine();
    let k = m.kmm();
    let ops = Rec::new(k);
    let mm = new_mm(k);
    assert_eq!(k.do_brk(mm, 0, &ops), BRK0, "brk(0) asks");
    assert_eq!(k.do_brk(mm, BRK0 - PS, &ops), BRK0, "below start_brk");
    assert_eq!(k.do_brk(mm, BRK0 + 100, &ops), BRK0 + 100);
    assert_eq!(ranges(k, mm), vec![(BRK0, BRK0 + PS)]);
    let v = vmas(k, mm)[0];
    assert_eq!(
        v.vm_flags.bits(),
        VmaFlags::VM_DATA_DEFAULT_FLAGS.bits() | ACCT
    );
    assert_eq!(v.vm_pgoff, BRK0 / PS);
    // Growing within the page: nothing to map.
    assert_eq!(k.do_brk(mm, BRK0 + PS, &ops), BRK0 + PS);
    assert_eq!(vmas(k, mm).len(), 1);
    // Growing merges with the heap.
    assert_eq!(k.do_brk(mm, BRK0 + 5 * PS + 1, &ops), BRK0 + 5 * PS + 1);
    assert_eq!(ranges(k, mm), vec![(BRK0, BRK0 + 6 * PS)]);
    let st = k.mm_vm_stat(mm).unwrap();
    assert_eq!(
        (st.brk, st.total_vm, st.data_vm, st.map_count),
        (BRK0 + 5 * PS + 1, 6, 6, 1)
    );
    // Shrinking unmaps the tail.
    ops.take();
    assert_eq!(k.do_brk(mm, BRK0 + 2 * PS, &ops), BRK0 + 2 * PS);
    assert_eq!(ranges(k, mm), vec![(BRK0, BRK0 + 2 * PS)]);
    let calls = ops.take();
    assert!(
        matches!(calls[..], [Call::Zap { start, end, .. }] if (start, end) == (BRK0 + 2 * PS, BRK0 + 6 * PS)),
        "{calls:?}"
    );
    // brk keeps a page of room below the next mapping.
    let blocker = BRK0 + 4 * PS;
    map_anon(k, mm, &ops, blocker, 1, PROT_READ);
    assert_eq!(
        k.do_brk(mm, BRK0 + 3 * PS, &ops),
        BRK0 + 3 * PS,
        "one page of room stays"
    );
    assert_eq!(
        k.do_brk(mm, BRK0 + 3 * PS + 1, &ops),
        BRK0 + 3 * PS,
        "would touch the mapping"
    );
    assert_eq!(k.mm_vm_stat(mm).unwrap().brk, BRK0 + 3 * PS);
    // A stack above the heap keeps its guard gap from the heap too.
    k.do_munmap(mm, blocker, PS, &ops).unwrap();
    let s = BRK0 + 64 * PS;
    k.do_mmap(
        mm,
        None,
        s,
        PS,
        RW,
        ANON | MAP_FIXED | MAP_GROWSDOWN,
        0,
        &ops,
    )
    .unwrap();
    assert_eq!(
        k.do_brk(mm, BRK0 + 10 * PS, &ops),
        BRK0 + 3 * PS,
        "inside the stack's guard gap"
    );
    // Beyond TASK_SIZE.
    assert_eq!(k.do_brk(mm, TASK + PS, &ops), BRK0 + 3 * PS);
    assert_eq!(k.do_brk(mm, u64::MAX, &ops), BRK0 + 3 * PS);
    // Shrinking back to start_brk removes the heap.
    assert_eq!(k.do_brk(mm, BRK0, &ops), BRK0);
    assert_eq!(ranges(k, mm), vec![(s, s + PS)]);
    finish(k, mm, &ops);
}

#[test]
fn brk_merges_with_an_adjacent_anonymous_area() {
    let m = machine();
    let k = m.kmm();
    let ops = Rec::new(k);
    let mm = new_mm(k);
    // An anonymous read-write area ending at start_brk has the heap's flags
    // and offsets: the heap grows it.
    map_anon(k, mm, &ops, BRK0 - 2 * PS, 2, RW);
    assert_eq!(k.do_brk(mm, BRK0 + 2 * PS, &ops), BRK0 + 2 * PS);
    assert_eq!(ranges(k, mm), vec![(BRK0 - 2 * PS, BRK0 + 2 * PS)]);
    finish(k, mm, &ops);
}

#[test]
fn mremap_shrinks_grows_in_place_and_moves() {
    let m = machine();
    let k = m.kmm();
    let ops = Rec::new(k);
    let mm = new_mm(k);
    let a = map_anon(k, mm, &ops, 0x20_0000, 4, RW);
    ops.take();
    // Grow in place into the free range above.
    assert_eq!(k.do_mremap(mm, a, 4 * PS, 8 * PS, 0, 0, &ops).unwrap(), a);
    assert_eq!(ranges(k, mm), vec![(a, a + 8 * PS)]);
    assert!(ops.take().is_empty(), "growing in place touches no page");
    // Shrink: the tail is unmapped.
    assert_eq!(k.do_mremap(mm, a, 8 * PS, 6 * PS, 0, 0, &ops).unwrap(), a);
    assert_eq!(ranges(k, mm), vec![(a, a + 6 * PS)]);
    assert!(
        matches!(ops.take()[..], [Call::Zap { start, end, .. }] if (start, end) == (a + 6 * PS, a + 8 * PS))
    );
    // Growing in place merges with a compatible area it reaches.
    map_anon(k, mm, &ops, a + 8 * PS, 2, RW);
    assert_eq!(vmas(k, mm).len(), 2);
    assert_eq!(k.do_mremap(mm, a, 6 * PS, 8 * PS, 0, 0, &ops).unwrap(), a);
    assert_eq!(ranges(k, mm), vec![(a, a + 10 * PS)]);
    // Blocked: ENOMEM without MAYMOVE, moved with it.
    map_anon(k, mm, &ops, a + 10 * PS, 1, PROT_READ);
    ops.take();
    assert_eq!(
        errno_of(k.do_mremap(mm, a, 10 * PS, 12 * PS, 0, 0, &ops)),
        Errno::ENOMEM
    );
    let st0 = k.mm_vm_stat(mm).unwrap();
    let n = k
        .do_mremap(mm, a, 10 * PS, 12 * PS, MREMAP_MAYMOVE, 0, &ops)
        .unwrap();
    assert_eq!(n, BASE - 12 * PS, "moved to the top-down spot");
    assert_eq!(
        ranges(k, mm),
        vec![(a + 10 * PS, a + 11 * PS), (n, n + 12 * PS)]
    );
    let calls = ops.take();
    assert_eq!(
        calls[0],
        Call::Move {
            old: a,
            new: n,
            len: 10 * PS,
            same_vma: false
        }
    );
    assert!(
        matches!(calls[1..], [Call::Zap { start, end, .. }] if (start, end) == (a, a + 10 * PS))
    );
    let v = vmas(k, mm)[1];
    assert_eq!(
        v.vm_pgoff,
        n / PS,
        "an anonymous area without pages takes its new offset"
    );
    let st1 = k.mm_vm_stat(mm).unwrap();
    assert_eq!(st1.total_vm, st0.total_vm + 2);
    assert_eq!(st1.hiwater_vm, st1.total_vm, "no artificial peak");
    // MREMAP_FIXED replaces what is at the target.
    let t = 0x30_0000;
    map_anon(k, mm, &ops, t, 2, PROT_READ);
    ops.take();
    assert_eq!(
        k.do_mremap(
            mm,
            n,
            4 * PS,
            4 * PS,
            MREMAP_MAYMOVE | MREMAP_FIXED,
            t,
            &ops
        )
        .unwrap(),
        t
    );
    let calls = ops.take();
    assert!(
        matches!(calls[0], Call::Zap { start, end, .. } if (start, end) == (t, t + 2 * PS)),
        "{calls:?}"
    );
    assert!(
        matches!(calls[1], Call::Move { old, new, len, .. } if (old, new, len) == (n, t, 4 * PS))
    );
    assert!(matches!(calls[2], Call::Zap { start, end, .. } if (start, end) == (n, n + 4 * PS)));
    assert_eq!(ranges(k, mm).iter().filter(|r| r.0 == t).count(), 1);
    // MREMAP_DONTUNMAP: the old range stays (empty), the new one has the pages.
    let before = vmas(k, mm).len();
    let dn = k
        .do_mremap(
            mm,
            t,
            4 * PS,
            4 * PS,
            MREMAP_MAYMOVE | MREMAP_DONTUNMAP,
            0,
            &ops,
        )
        .unwrap();
    let calls = ops.take();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(matches!(calls[0], Call::Move { old, new, .. } if (old, new) == (t, dn)));
    assert!(vmas(k, mm).len() >= before);
    assert!(k.vma_lookup(mm, t).unwrap().is_some());
    // Errors.
    let e = |addr, ol, nl, fl, na| errno_of(k.do_mremap(mm, addr, ol, nl, fl, na, &ops));
    assert_eq!(e(t, PS, PS, 8, 0), Errno::EINVAL, "unknown flag");
    assert_eq!(
        e(t, PS, PS, MREMAP_FIXED, t),
        Errno::EINVAL,
        "FIXED without MAYMOVE"
    );
    assert_eq!(
        e(t, PS, 2 * PS, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, 0),
        Errno::EINVAL
    );
    assert_eq!(e(t + 1, PS, PS, 0, 0), Errno::EINVAL, "unaligned");
    assert_eq!(e(t, PS, 0, 0, 0), Errno::EINVAL, "zero new length");
    assert_eq!(
        e(0x10_0000, PS, 2 * PS, MREMAP_MAYMOVE, 0),
        Errno::EFAULT,
        "not mapped"
    );
    assert_eq!(
        e(t, 8 * PS, 9 * PS, MREMAP_MAYMOVE, 0),
        Errno::EFAULT,
        "crosses the VMA's end"
    );
    assert_eq!(e(t, PS, 0, 0, 0), Errno::EINVAL);
    assert_eq!(
        e(t, 2 * PS, 2 * PS, MREMAP_MAYMOVE | MREMAP_FIXED, t + PS),
        Errno::EINVAL,
        "overlap"
    );
    assert_eq!(
        e(t, 0, 2 * PS, MREMAP_MAYMOVE, 0),
        Errno::EINVAL,
        "duplicating a private mapping"
    );
    assert_eq!(
        k.do_mremap(mm, t, PS, PS, 0, 0, &ops).unwrap(),
        t,
        "same size: nothing"
    );
    assert_eq!(
        k.do_mremap(mm, 0x10_0000, PS, PS, 0, 0, &ops),
        Err(KmmError::Errno {
            errno: Errno::EFAULT,
            what: "mremap: address not mapped"
        }),
        "Linux 6.x looks the address up first (5.x returned it)"
    );
    finish(k, mm, &ops);
}

#[test]
fn mremap_duplicates_a_shared_mapping_and_undoes_a_failed_move() {
    let m = machine();
    let k = m.kmm();
    let ops = Rec::new(k);
    let mm = new_mm(k);
    let a = k
        .do_mmap(mm, Some(FILE_RW), 0, 4 * PS, RW, MAP_SHARED, 5, &ops)
        .unwrap();
    ops.take();
    let d = k
        .do_mremap(mm, a + PS, 0, 2 * PS, MREMAP_MAYMOVE, 0, &ops)
        .unwrap();
    assert!(ops.take().is_empty(), "nothing moves, nothing is unmapped");
    let v = vmas(k, mm).into_iter().find(|v| v.vm_start == d).unwrap();
    assert_eq!(
        (v.vm_end, v.vm_pgoff, v.vm_file),
        (d + 2 * PS, 6, FILE_RW.mapping)
    );
    assert_eq!(vmas(k, mm).len(), 2);
    // A move whose page-table move fails is undone.
    let before = ranges(k, mm);
    let st = k.mm_vm_stat(mm).unwrap();
    ops.fail_move.set(true);
    let t = 0x30_0000;
    let r = k.do_mremap(
        mm,
        a,
        4 * PS,
        4 * PS,
        MREMAP_MAYMOVE | MREMAP_FIXED,
        t,
        &ops,
    );
    ops.fail_move.set(false);
    assert_eq!(errno_of(r), Errno::ENOMEM);
    let calls = ops.take();
    assert!(matches!(calls[0], Call::Move { old, len, .. } if (old, len) == (a, 4 * PS)));
    assert!(
        matches!(calls[1], Call::Move { new, len, .. } if (new, len) == (a, 4 * PS)),
        "moved back"
    );
    assert!(
        matches!(calls[2], Call::Zap { .. }),
        "the new area is unmapped"
    );
    assert_eq!(ranges(k, mm), before);
    assert_eq!(k.mm_vm_stat(mm).unwrap(), st);
    finish(k, mm, &ops);
}

#[test]
fn mlock_of_part_splits_and_munlock_merges() {
    let m = machine();
    let k = m.kmm();
    let ops = Rec::new(k);
    let mm = new_mm(k);
    let a = map_anon(k, mm, &ops, 0x20_0000, 8, RW);
    ops.take();
    // mlock rounds start down and the end up.
    k.do_mlock(mm, a + 2 * PS + 5, 2 * PS, &ops).unwrap();
    assert_eq!(
        ranges(k, mm),
        vec![
            (a, a + 2 * PS),
            (a + 2 * PS, a + 5 * PS),
            (a + 5 * PS, a + 8 * PS)
        ]
    );
    assert_eq!(vmas(k, mm)[1].vm_flags.bits() & LOCKED, LOCKED);
    assert_eq!(k.mm_vm_stat(mm).unwrap().locked_vm, 3);
    assert_eq!(
        ops.take(),
        vec![Call::Populate {
            start: a + 2 * PS,
            end: a + 5 * PS
        }]
    );
    // Locking again what is locked does not count twice.
    k.do_mlock(mm, a, 4 * PS, &ops).unwrap();
    assert_eq!(k.mm_vm_stat(mm).unwrap().locked_vm, 5);
    assert_eq!(
        ranges(k, mm),
        vec![(a, a + 5 * PS), (a + 5 * PS, a + 8 * PS)]
    );
    // MADV_DONTNEED refuses locked memory.
    assert_eq!(
        errno_of(k.do_madvise(mm, a, PS, MADV_DONTNEED, &ops)),
        Errno::EINVAL
    );
    // A hole: ENOMEM, but what came before it is locked (as Linux does).
    ops.take();
    assert_eq!(
        errno_of(k.do_mlock(mm, a + 6 * PS, 4 * PS, &ops)),
        Errno::ENOMEM
    );
    assert_eq!(k.mm_vm_stat(mm).unwrap().locked_vm, 7);
    assert!(ops.take().is_empty(), "no populate after a failed lock");
    assert_eq!(errno_of(k.do_mlock(mm, 0x10_0000, PS, &ops)), Errno::ENOMEM);
    assert_eq!(
        errno_of(k.do_mlock(mm, a, u64::MAX - a, &ops)),
        Errno::EINVAL
    );
    k.do_mlock(mm, a, 0, &ops).unwrap();
    // munlock everything: one VMA again.
    k.do_munlock(mm, a, 8 * PS, &ops).unwrap();
    assert_eq!(ranges(k, mm), vec![(a, a + 8 * PS)]);
    assert_eq!(k.mm_vm_stat(mm).unwrap().locked_vm, 0);
    assert!(ops.take().is_empty());
    // MAP_LOCKED and MAP_POPULATE populate; MAP_NONBLOCK cancels populate.
    let b = k
        .do_mmap(mm, None, 0, 3 * PS, RW, ANON | MAP_LOCKED, 0, &ops)
        .unwrap();
    assert_eq!(
        ops.take(),
        vec![Call::Populate {
            start: b,
            end: b + 3 * PS
        }]
    );
    assert_eq!(k.mm_vm_stat(mm).unwrap().locked_vm, 3);
    let c = k
        .do_mmap(mm, None, 0, 2 * PS, PROT_READ, ANON | MAP_POPULATE, 0, &ops)
        .unwrap();
    assert_eq!(
        ops.take(),
        vec![Call::Populate {
            start: c,
            end: c + 2 * PS
        }]
    );
    k.do_mmap(
        mm,
        None,
        0,
        2 * PS,
        PROT_READ,
        ANON | MAP_POPULATE | MAP_NONBLOCK,
        0,
        &ops,
    )
    .unwrap();
    assert!(ops.take().is_empty());
    // mprotect making a locked private area writable populates it.
    k.do_mlock(mm, c, 2 * PS, &ops).unwrap();
    ops.take();
    k.do_mprotect(mm, c, 2 * PS, RW, &ops).unwrap();
    let calls = ops.take();
    assert!(
        matches!(calls[..], [Call::Protect { .. }, Call::Populate { start, end }] if (start, end) == (c, c + 2 * PS)),
        "{calls:?}"
    );
    // Unmapping locked memory takes it out of locked_vm.
    k.do_munmap(mm, b, 3 * PS, &ops).unwrap();
    assert_eq!(k.mm_vm_stat(mm).unwrap().locked_vm, 2);
    finish(k, mm, &ops);
}

#[test]
fn mprotect_errors_and_partial_application() {
    let m = machine();
    let k = m.kmm();
    let ops = Rec::new(k);
    let mm = new_mm(k);
    let a = map_anon(k, mm, &ops, 0x20_0000, 2, RW);
    map_anon(k, mm, &ops, a + 3 * PS, 2, RW);
    ops.take();
    assert_eq!(
        errno_of(k.do_mprotect(mm, a + 1, PS, PROT_READ, &ops)),
        Errno::EINVAL
    );
    assert_eq!(
        errno_of(k.do_mprotect(mm, a, PS, 0x10, &ops)),
        Errno::EINVAL
    );
    assert_eq!(
        errno_of(k.do_mprotect(mm, a, PS, PROT_READ | PROT_GROWSDOWN | PROT_GROWSUP, &ops)),
        Errno::EINVAL
    );
    assert_eq!(
        errno_of(k.do_mprotect(mm, a, PS, PROT_READ | PROT_GROWSUP, &ops)),
        Errno::EINVAL
    );
    assert_eq!(
        errno_of(k.do_mprotect(mm, a, PS, PROT_READ | PROT_GROWSDOWN, &ops)),
        Errno::EINVAL
    );
    assert_eq!(
        errno_of(k.do_mprotect(mm, a, u64::MAX - PS, PROT_READ, &ops)),
        Errno::ENOMEM
    );
    assert_eq!(
        errno_of(k.do_mprotect(mm, a - PS, PS, PROT_READ, &ops)),
        Errno::ENOMEM
    );
    k.do_mprotect(mm, a, 0, PROT_READ, &ops).unwrap();
    k.do_mprotect(mm, a, PS, PROT_READ | PROT_SEM, &ops)
        .unwrap();
    k.do_mprotect(mm, a, PS, RW, &ops).unwrap();
    assert!(ops.take().len() == 2);
    // Over the hole: the first area changes, then ENOMEM.
    assert_eq!(
        errno_of(k.do_mprotect(mm, a, 5 * PS, PROT_READ, &ops)),
        Errno::ENOMEM
    );
    assert_eq!(vmas(k, mm)[0].vm_flags.bits() & W, 0);
    assert_eq!(vmas(k, mm)[1].vm_flags.bits() & W, W);
    assert_eq!(ops.take().len(), 1);
    // PROT_GROWSDOWN extends the change down to the start of a stack.
    let s = 0x30_0000;
    k.do_mmap(
        mm,
        None,
        s,
        4 * PS,
        RW,
        ANON | MAP_FIXED | MAP_GROWSDOWN,
        0,
        &ops,
    )
    .unwrap();
    k.do_mprotect(mm, s + 2 * PS, PS, PROT_READ | PROT_GROWSDOWN, &ops)
        .unwrap();
    assert_eq!(
        ranges(k, mm)
            .iter()
            .filter(|r| r.0 >= s)
            .copied()
            .collect::<Vec<_>>(),
        vec![(s, s + 3 * PS), (s + 3 * PS, s + 4 * PS)]
    );
    finish(k, mm, &ops);
}

#[test]
fn madvise_dontneed_dontfork_and_holes() {
    let m = machine();
    let k = m.kmm();
    let ops = Rec::new(k);
    let mm = new_mm(k);
    let a = map_anon(k, mm, &ops, 0x20_0000, 4, RW);
    map_anon(k, mm, &ops, a + 5 * PS, 2, RW);
    ops.take();
    // DONTNEED zaps, keeps the areas; the hole gives ENOMEM after all.
    assert_eq!(
        errno_of(k.do_madvise(mm, a + PS, 5 * PS, MADV_DONTNEED, &ops)),
        Errno::ENOMEM
    );
    let zaps: Vec<_> = ops
        .take()
        .into_iter()
        .map(|c| match c {
            Call::Zap { start, end, .. } => (start, end),
            c => panic!("{c:?}"),
        })
        .collect();
    assert_eq!(zaps, vec![(a + PS, a + 4 * PS), (a + 5 * PS, a + 6 * PS)]);
    assert_eq!(vmas(k, mm).len(), 2);
    // DONTFORK splits, DOFORK merges back.
    k.do_madvise(mm, a + PS, PS, MADV_DONTFORK, &ops).unwrap();
    assert_eq!(vmas(k, mm).len(), 4);
    assert_eq!(vmas(k, mm)[1].vm_flags.bits() & DONTCOPY, DONTCOPY);
    k.do_madvise(mm, a, 8 * PS, MADV_DOFORK, &ops)
        .expect_err("hole");
    assert_eq!(vmas(k, mm).len(), 2);
    // SEQUENTIAL / RANDOM / NORMAL are flags too.
    k.do_madvise(mm, a, PS, MADV_SEQUENTIAL, &ops).unwrap();
    assert_eq!(
        vmas(k, mm)[0].vm_flags,
        VmaFlags::from_bits_retain(R | W | MAYS | ACCT) | VM_SEQ_READ
    );
    k.do_madvise(mm, a, PS, MADV_RANDOM, &ops).unwrap();
    assert_eq!(
        vmas(k, mm)[0].vm_flags,
        VmaFlags::from_bits_retain(R | W | MAYS | ACCT) | VM_RAND_READ
    );
    k.do_madvise(mm, a, PS, MADV_NORMAL, &ops).unwrap();
    assert_eq!(vmas(k, mm).len(), 2);
    k.do_madvise(mm, a, PS, MADV_WILLNEED, &ops).unwrap();
    assert!(ops.take().is_empty());
    // Errors.
    assert_eq!(errno_of(k.do_madvise(mm, a, PS, 5, &ops)), Errno::EINVAL);
    assert_eq!(errno_of(k.do_madvise(mm, a, PS, 100, &ops)), Errno::EINVAL);
    assert_eq!(
        errno_of(k.do_madvise(mm, a + 1, PS, MADV_NORMAL, &ops)),
        Errno::EINVAL
    );
    assert_eq!(
        errno_of(k.do_madvise(mm, a, u64::MAX, MADV_NORMAL, &ops)),
        Errno::EINVAL
    );
    assert_eq!(
        errno_of(k.do_madvise(mm, 0x10_0000, PS, MADV_NORMAL, &ops)),
        Errno::ENOMEM
    );
    k.do_madvise(mm, a, 0, MADV_DONTNEED, &ops).unwrap();
    finish(k, mm, &ops);
}

#[test]
fn max_map_count_limits_splits() {
    let m = machine();
    let k = m.kmm();
    let ops = Rec::new(k);
    let mm = new_mm(k);
    // Each test has its own machine, so the sysctl is this test's alone.
    k.set_sysctl_max_map_count(3);
    let a = map_anon(k, mm, &ops, 0x20_0000, 8, RW);
    k.do_mprotect(mm, a + PS, PS, PROT_READ, &ops).unwrap();
    assert_eq!(vmas(k, mm).len(), 3);
    assert_eq!(
        errno_of(k.do_mprotect(mm, a + 5 * PS, PS, PROT_READ, &ops)),
        Errno::ENOMEM
    );
    assert_eq!(
        errno_of(k.do_munmap(mm, a + 5 * PS, PS, &ops)),
        Errno::ENOMEM,
        "would leave 4"
    );
    k.do_munmap(mm, a + 6 * PS, 2 * PS, &ops).unwrap();
    assert_eq!(
        errno_of(k.do_mlock(mm, a + 3 * PS, PS, &ops)),
        Errno::ENOMEM
    );
    assert_eq!(vmas(k, mm).len(), 3);
    k.set_sysctl_max_map_count(DEFAULT_MAX_MAP_COUNT);
    finish(k, mm, &ops);
}

#[test]
fn stack_grows_down_within_its_limits() {
    let m = machine();
    let k = m.kmm();
    let ops = Rec::new(k);
    let mm = new_mm(k);
    let top = 0x78_0000;
    let s = k
        .do_mmap(
            mm,
            None,
            top - PS,
            PS,
            RW,
            ANON | MAP_FIXED | MAP_GROWSDOWN,
            0,
            &ops,
        )
        .unwrap();
    let vma = k.vma_lookup(mm, s).unwrap().unwrap();
    assert_eq!(k.mm_vm_stat(mm).unwrap().stack_vm, 1);
    k.expand_stack(mm, vma, s - 3 * PS + 17).unwrap();
    let v = k.vma_info(vma).unwrap();
    assert_eq!(
        (v.vm_start, v.vm_end, v.vm_pgoff),
        (s - 3 * PS, top, s / PS - 3)
    );
    let st = k.mm_vm_stat(mm).unwrap();
    assert_eq!((st.stack_vm, st.total_vm), (4, 4));
    k.expand_stack(mm, vma, s).unwrap();
    assert_eq!(
        k.vma_info(vma).unwrap().vm_start,
        s - 3 * PS,
        "already inside"
    );
    // RLIMIT_STACK.
    k.set_stack_rlimit(16 * PS);
    assert_eq!(
        errno_of(k.expand_stack(mm, vma, top - 17 * PS)),
        Errno::ENOMEM
    );
    k.expand_stack(mm, vma, top - 16 * PS).unwrap();
    k.set_stack_rlimit(DEFAULT_STACK_RLIMIT);
    // The guard gap to an accessible area below, not to a PROT_NONE one.
    let below = top - 16 * PS - k.stack_guard_gap() - PS;
    map_anon(k, mm, &ops, below, 1, PROT_READ);
    assert_eq!(
        errno_of(k.expand_stack(mm, vma, top - 17 * PS)),
        Errno::ENOMEM
    );
    k.do_mprotect(mm, below, PS, PROT_NONE, &ops).unwrap();
    k.expand_stack(mm, vma, top - 17 * PS).unwrap();
    assert_eq!(
        errno_of(k.expand_stack(mm, vma, below)),
        Errno::ENOMEM,
        "into the area below"
    );
    // Not a stack.
    let other = k.vma_lookup(mm, below).unwrap().unwrap();
    assert_eq!(
        errno_of(k.expand_stack(mm, other, below - PS)),
        Errno::EFAULT
    );
    assert_eq!(k.mm_vm_stat(mm).unwrap().stack_vm, 17);
    finish(k, mm, &ops);
}

#[test]
fn lookups_find_vma_prev_and_intersection() {
    let m = machine();
    let k = m.kmm();
    let ops = Rec::new(k);
    let mm = new_mm(k);
    assert_eq!(k.find_vma(mm, 0).unwrap(), None);
    assert_eq!(k.find_vma_prev(mm, 0).unwrap(), (None, None));
    let a = map_anon(k, mm, &ops, 0x20_0000, 2, RW);
    let b = map_anon(k, mm, &ops, 0x30_0000, 2, PROT_READ);
    let va = k.vma_lookup(mm, a).unwrap().unwrap();
    let vb = k.vma_lookup(mm, b).unwrap().unwrap();
    assert_eq!(k.find_vma(mm, 0).unwrap(), Some(va));
    assert_eq!(k.find_vma(mm, a + 2 * PS - 1).unwrap(), Some(va));
    assert_eq!(k.find_vma(mm, a + 2 * PS).unwrap(), Some(vb));
    assert_eq!(k.find_vma(mm, b + 2 * PS).unwrap(), None);
    assert_eq!(k.vma_lookup(mm, a + 2 * PS).unwrap(), None);
    assert_eq!(k.find_vma_prev(mm, b).unwrap(), (Some(vb), Some(va)));
    assert_eq!(k.find_vma_prev(mm, TASK).unwrap(), (None, Some(vb)));
    assert_eq!(k.find_vma_intersection(mm, a + 2 * PS, b).unwrap(), None);
    assert_eq!(
        k.find_vma_intersection(mm, a + 2 * PS, b + 1).unwrap(),
        Some(vb)
    );
    assert_eq!(k.vma_first(mm).unwrap(), Some(va));
    assert_eq!(k.vma_next(va).unwrap(), Some(vb));
    assert_eq!(k.vma_prev(vb).unwrap(), Some(va));
    // split_vma and vma_merge directly.
    let upper = k.split_vma(mm, va, a + PS, false, &ops).unwrap();
    assert_eq!(k.vma_info(upper).unwrap().vm_start, a + PS);
    assert_eq!(errno_of(k.split_vma(mm, va, a, false, &ops)), Errno::EINVAL);
    assert_eq!(
        errno_of(k.split_vma(mm, va, a + 5, false, &ops)),
        Errno::EINVAL
    );
    let info = k.vma_info(upper).unwrap();
    let merged = k
        .vma_merge(
            mm,
            a + PS,
            a + 2 * PS,
            info.vm_flags,
            0,
            0,
            info.vm_pgoff,
            &ops,
        )
        .unwrap();
    assert_eq!(merged, Some(va));
    assert_eq!(ranges(k, mm), vec![(a, a + 2 * PS), (b, b + 2 * PS)]);
    finish(k, mm, &ops);
}

#[test]
fn insert_vm_struct_and_x86_32_layout() {
    let m = boot("x86", 64 * M, 1, 1);
    let k = m.kmm();
    let ops = Rec::new(k);
    let mm = k.mm_alloc(0xC000_0000, 0xB7F0_0000).unwrap();
    let vma = k.vm_area_alloc(mm).unwrap();
    let r = k.vm_area(vma).unwrap();
    use std::sync::atomic::Ordering::Relaxed;
    r.vm_start.store(0xBFFF_0000, Relaxed);
    r.vm_end.store(0xC000_0000, Relaxed);
    r.vm_flags.store(VmaFlags::VM_STACK_FLAGS.bits(), Relaxed);
    k.insert_vm_struct(mm, vma, &ops).unwrap();
    let st = k.mm_vm_stat(mm).unwrap();
    assert_eq!(
        (st.total_vm, st.stack_vm, st.highest_vm_end),
        (16, 16, 0xC000_0000)
    );
    assert_eq!(k.vma_info(vma).unwrap().vm_pgoff, 0xBFFF_0000 / PS);
    let dup = k.vm_area_alloc(mm).unwrap();
    let r = k.vm_area(dup).unwrap();
    r.vm_start.store(0xBFFF_8000, Relaxed);
    r.vm_end.store(0xC000_0000, Relaxed);
    assert_eq!(errno_of(k.insert_vm_struct(mm, dup, &ops)), Errno::ENOMEM);
    k.vm_area_free(dup).unwrap();
    let a = k.do_mmap(mm, None, 0, PS, RW, ANON, 0, &ops).unwrap();
    assert_eq!(a, 0xB7F0_0000 - PS);
    // What fork does: a copy of a faulted area (it has an anon_vma) keeps
    // its offset, and is not merged with the area next to it.
    let child = k.vm_area_alloc(mm).unwrap();
    let r = k.vm_area(child).unwrap();
    r.vm_start.store(a - 2 * PS, Relaxed);
    r.vm_end.store(a, Relaxed);
    r.vm_flags.store(R | W | MAYS | ACCT, Relaxed);
    r.vm_pgoff.store(1234, Relaxed);
    r.anon_vma.store(0x5000, Relaxed);
    k.insert_vm_struct(mm, child, &ops).unwrap();
    let v = k.vma_info(child).unwrap();
    assert_eq!((v.vm_pgoff, v.anon_vma), (1234, 0x5000));
    assert_eq!(vmas(k, mm).len(), 3);
    assert!(matches!(
        k.mm_alloc(0xC000_0001, 0),
        Err(KmmError::InvalidArgument { .. })
    ));
    assert!(matches!(
        k.mm_alloc(0x1000, 0x2000),
        Err(KmmError::InvalidArgument { .. })
    ));
    finish(k, mm, &ops);
}

#[test]
fn nothing_leaks_and_lock_works() {
    let m = machine();
    let k = m.kmm();
    let recs: Vec<Rec> = (0..4).map(|_| Rec::new(k)).collect();
    let mut mms = Vec::new();
    for (i, ops) in recs.iter().enumerate() {
        let i = i as u64;
        let mm = new_mm(k);
        for j in 0..20u64 {
            let a = k
                .do_mmap(
                    mm,
                    None,
                    0,
                    (1 + (i + j) % 3) * PS,
                    RW - (j % 2),
                    ANON,
                    0,
                    ops,
                )
                .unwrap();
            if j % 3 == 0 {
                k.do_mprotect(mm, a, PS, PROT_READ, ops).unwrap();
            }
        }
        k.do_brk(mm, BRK0 + 10 * PS, ops);
        mms.push(mm);
    }
    assert!(in_use(k, "vm_area_struct") > 0);
    assert_eq!(in_use(k, "mm_struct"), 4);
    {
        let _g = k.mmap_write_lock(mms[0]).unwrap();
        assert!(k.mmap_write_trylock(mms[0]).unwrap().is_none());
        assert!(k.mmap_write_trylock(mms[1]).unwrap().is_some());
    }
    assert!(k.mmap_write_trylock(mms[0]).unwrap().is_some());
    for (mm, ops) in mms.into_iter().zip(&recs) {
        finish(k, mm, ops);
    }
    let ops = Rec::new(k);
    assert_eq!(in_use(k, "vm_area_struct"), 0, "no VMA leaked");
    assert_eq!(in_use(k, "mm_struct"), 0, "no mm_struct leaked");
    // mm_free refuses an mm that still has areas.
    let mm = new_mm(k);
    map_anon(k, mm, &ops, 0x20_0000, 1, RW);
    assert!(k.mm_free(mm).is_err());
    finish(k, mm, &ops);
    assert_eq!(in_use(k, "vm_area_struct"), 0);
    let info = k
        .kmem_cache_info(k.kmem_cache_find("vm_area_struct").unwrap())
        .unwrap();
    assert_eq!(info.errors, 0);
}

// ------------------------------------------------------------------ the model

/// What one page of the model address space is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pg {
    flags: u64,
    file: u64,
    pgoff: u64,
}

/// One area as the model derives it: maximal runs of pages that Linux
/// would keep in one VMA (same flags, same file, consecutive offsets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mv {
    start: u64,
    end: u64,
    flags: u64,
    file: u64,
    pgoff: u64,
}

/// The effects the model expects on pages (page numbers).
#[derive(Default, Debug, PartialEq, Eq)]
struct Fx {
    zapped: Vec<u64>,
    protected: Vec<(u64, PteFlags)>,
    moved: Vec<(u64, u64)>,
    populated: Vec<u64>,
}

impl Fx {
    fn sorted(mut self) -> Fx {
        self.zapped.sort_unstable();
        self.protected.sort_unstable_by_key(|p| p.0);
        self.moved.sort_unstable();
        self.populated.sort_unstable();
        self
    }

    fn from_calls(calls: &[Call]) -> Fx {
        let mut fx = Fx::default();
        for c in calls {
            match *c {
                Call::Zap { start, end, .. } => fx.zapped.extend(start / PS..end / PS),
                Call::Protect { start, end, prot } => fx
                    .protected
                    .extend((start / PS..end / PS).map(|p| (p, prot))),
                Call::Move { old, new, len, .. } => fx
                    .moved
                    .extend((0..len / PS).map(|i| (old / PS + i, new / PS + i))),
                Call::Populate { start, end } => fx.populated.extend(start / PS..end / PS),
            }
        }
        fx.sorted()
    }
}

fn align(x: u64) -> u64 {
    x.wrapping_add(PS - 1) & !(PS - 1)
}

struct Model {
    pages: BTreeMap<u64, Pg>,
    brk: u64,
    start_brk: u64,
    min_addr: u64,
    gap: u64,
}

type Res<T> = Result<T, Errno>;

impl Model {
    fn new() -> Model {
        Model {
            pages: BTreeMap::new(),
            brk: BRK0,
            start_brk: BRK0,
            min_addr: DEFAULT_MMAP_MIN_ADDR,
            gap: STACK_GUARD_GAP_PAGES * PS,
        }
    }

    fn vmas(&self) -> Vec<Mv> {
        let mut out: Vec<Mv> = Vec::new();
        for (&p, pg) in &self.pages {
            if let Some(l) = out.last_mut() {
                let lastpg = l.pgoff + (l.end - l.start) / PS - 1;
                if l.end == p * PS
                    && l.flags == pg.flags
                    && l.file == pg.file
                    && lastpg.wrapping_add(1) == pg.pgoff
                {
                    l.end += PS;
                    continue;
                }
            }
            out.push(Mv {
                start: p * PS,
                end: p * PS + PS,
                flags: pg.flags,
                file: pg.file,
                pgoff: pg.pgoff,
            });
        }
        out
    }

    fn find_vma(&self, addr: u64) -> Option<Mv> {
        self.vmas().into_iter().find(|v| v.end > addr)
    }

    fn start_gap(&self, v: &Mv) -> u64 {
        if v.flags & GD != 0 {
            v.start.saturating_sub(self.gap)
        } else {
            v.start
        }
    }

    fn any_mapped(&self, start: u64, end: u64) -> bool {
        start < end
            && self
                .pages
                .range(start / PS..end.div_ceil(PS))
                .next()
                .is_some()
    }

    fn unmap(&mut self, start: u64, end: u64, fx: &mut Fx) {
        let ks: Vec<u64> = self
            .pages
            .range(start / PS..end / PS)
            .map(|(k, _)| *k)
            .collect();
        for p in ks {
            self.pages.remove(&p);
            fx.zapped.push(p);
        }
    }

    fn insert(&mut self, start: u64, len: u64, flags: u64, file: u64, pgoff: u64) {
        for i in 0..len / PS {
            self.pages.insert(
                start / PS + i,
                Pg {
                    flags,
                    file,
                    pgoff: pgoff.wrapping_add(i),
                },
            );
        }
    }

    /// Free ranges between areas: `(end of the area below, start gap of
    /// the area above)`, the last one open-ended.
    fn gaps(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut prev_end = 0;
        for v in self.vmas() {
            out.push((prev_end, self.start_gap(&v)));
            prev_end = v.end;
        }
        out.push((prev_end, u64::MAX));
        out
    }

    fn gua(&self, addr: u64, len: u64, flags: u64) -> Res<u64> {
        if len > TASK {
            return Err(Errno::ENOMEM);
        }
        let a = if flags & MAP_FIXED != 0 {
            addr
        } else {
            let hint = addr & !(PS - 1);
            let hinted = hint != 0
                && hint <= TASK - len
                && match self.find_vma(hint) {
                    None => true,
                    Some(v) => hint + len <= self.start_gap(&v),
                };
            if hinted {
                hint
            } else {
                let (low, high) = (PS.max(self.min_addr), BASE);
                let top = self.gaps().into_iter().rev().find_map(|(lo, hi)| {
                    let (s, e) = (lo.max(low), hi.min(high));
                    (e >= s && e - s >= len).then(|| e - len)
                });
                let tub = align(TASK / 3);
                let bottom = || {
                    self.gaps().into_iter().find_map(|(lo, hi)| {
                        let (s, e) = (lo.max(tub), hi.min(TASK));
                        (e >= s && e - s >= len).then_some(s)
                    })
                };
                top.or_else(bottom).ok_or(Errno::ENOMEM)?
            }
        };
        if a > TASK - len {
            return Err(Errno::ENOMEM);
        }
        if !a.is_multiple_of(PS) {
            return Err(Errno::EINVAL);
        }
        if a < self.min_addr {
            return Err(Errno::EPERM);
        }
        Ok(a)
    }

    #[allow(clippy::too_many_arguments)]
    fn mmap(
        &mut self,
        file: Option<MmapFile>,
        addr: u64,
        len: u64,
        prot: u64,
        flags: u64,
        pgoff: u64,
        fx: &mut Fx,
    ) -> Res<u64> {
        let file = if flags & MAP_ANONYMOUS != 0 {
            None
        } else {
            Some(file.ok_or(Errno::EBADF)?)
        };
        if flags & MAP_HUGETLB != 0 {
            return Err(if file.is_some() {
                Errno::EINVAL
            } else {
                Errno::ENOMEM
            });
        }
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let mut flags = flags;
        if flags & MAP_FIXED_NOREPLACE != 0 {
            flags |= MAP_FIXED;
        }
        let addr = if flags & MAP_FIXED == 0 {
            let h = addr & !(PS - 1);
            if h != 0 && h < self.min_addr {
                align(self.min_addr)
            } else {
                h
            }
        } else {
            addr
        };
        let len = align(len);
        if len == 0 {
            return Err(Errno::ENOMEM);
        }
        if pgoff.checked_add(len / PS).is_none() {
            return Err(Errno::EOVERFLOW);
        }
        let addr = self.gua(addr, len, flags)?;
        if flags & MAP_FIXED_NOREPLACE != 0 && self.any_mapped(addr, addr + len) {
            return Err(Errno::EEXIST);
        }
        let mut vf = (if prot & PROT_READ != 0 { R } else { 0 })
            | (if prot & PROT_WRITE != 0 { W } else { 0 })
            | (if prot & PROT_EXEC != 0 { X } else { 0 })
            | (if flags & MAP_GROWSDOWN != 0 { GD } else { 0 })
            | (if flags & MAP_LOCKED != 0 { LOCKED } else { 0 })
            | MAYS;
        let mut pgoff = pgoff;
        let mapping = match file {
            Some(f) => {
                if pgoff > ((i64::MAX as u64) - len) / PS {
                    return Err(Errno::EOVERFLOW);
                }
                match flags & MAP_TYPE {
                    MAP_SHARED | MAP_SHARED_VALIDATE => {
                        if flags & MAP_TYPE == MAP_SHARED_VALIDATE && flags & !LEGACY_MAP_MASK != 0
                        {
                            return Err(Errno::EINVAL);
                        }
                        if prot & PROT_WRITE != 0 && !f.writable {
                            return Err(Errno::EACCES);
                        }
                        vf |= SH | MAYSH;
                        if !f.writable {
                            vf &= !(MAYW | SH);
                        }
                    }
                    MAP_PRIVATE => {}
                    _ => return Err(Errno::EINVAL),
                }
                if !f.readable {
                    return Err(Errno::EACCES);
                }
                if f.mapping == 0 {
                    return Err(Errno::ENODEV);
                }
                if vf & GD != 0 {
                    return Err(Errno::EINVAL);
                }
                f.mapping
            }
            None => {
                match flags & MAP_TYPE {
                    MAP_SHARED => {
                        if vf & GD != 0 {
                            return Err(Errno::EINVAL);
                        }
                        pgoff = 0;
                        vf |= SH | MAYSH;
                    }
                    MAP_PRIVATE => pgoff = addr / PS,
                    _ => return Err(Errno::EINVAL),
                }
                0
            }
        };
        if flags & MAP_NORESERVE != 0 {
            vf |= NORES;
        }
        self.unmap(addr, addr + len, fx);
        if vf & (NORES | SH | W) == W {
            vf |= ACCT;
        }
        self.insert(addr, len, vf, mapping, pgoff);
        if vf & LOCKED != 0 || flags & (MAP_POPULATE | MAP_NONBLOCK) == MAP_POPULATE {
            fx.populated.extend(addr / PS..(addr + len) / PS);
        }
        Ok(addr)
    }

    fn munmap(&mut self, start: u64, len: u64, fx: &mut Fx) -> Res<()> {
        if !start.is_multiple_of(PS) || start > TASK || len > TASK - start {
            return Err(Errno::EINVAL);
        }
        let len = align(len);
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        self.unmap(start, start + len, fx);
        Ok(())
    }

    fn mprotect(&mut self, start: u64, len: u64, prot: u64, fx: &mut Fx) -> Res<()> {
        let grows = prot & (PROT_GROWSDOWN | PROT_GROWSUP);
        let prot = prot & !grows;
        if grows == PROT_GROWSDOWN | PROT_GROWSUP {
            return Err(Errno::EINVAL);
        }
        if !start.is_multiple_of(PS) {
            return Err(Errno::EINVAL);
        }
        if len == 0 {
            return Ok(());
        }
        let end = start.wrapping_add(align(len));
        if end <= start {
            return Err(Errno::ENOMEM);
        }
        if prot & !(PROT_READ | PROT_WRITE | PROT_EXEC | PROT_SEM) != 0 {
            return Err(Errno::EINVAL);
        }
        let first = self.find_vma(start).ok_or(Errno::ENOMEM)?;
        let mut start = start;
        if grows & PROT_GROWSDOWN != 0 {
            if first.start >= end {
                return Err(Errno::ENOMEM);
            }
            start = first.start;
            if first.flags & GD == 0 {
                return Err(Errno::EINVAL);
            }
        } else {
            if first.start > start {
                return Err(Errno::ENOMEM);
            }
            if grows & PROT_GROWSUP != 0 {
                return Err(Errno::EINVAL);
            }
        }
        let bits = (if prot & PROT_READ != 0 { R } else { 0 })
            | (if prot & PROT_WRITE != 0 { W } else { 0 })
            | (if prot & PROT_EXEC != 0 { X } else { 0 });
        let mut addr = start;
        for v in self.vmas().into_iter().filter(|v| v.end > start) {
            if v.start > addr {
                return Err(Errno::ENOMEM);
            }
            let mut nf = bits | (v.flags & !(R | W | X));
            // VM_MAY* must allow it (MAYREAD is R << 4, ...).
            if (nf & !(nf >> 4)) & (R | W | X) != 0 {
                return Err(Errno::EACCES);
            }
            let piece_end = v.end.min(end);
            if nf != v.flags {
                if nf & W != 0 {
                    if v.flags & (ACCT | W | SH | NORES) == 0 {
                        nf |= ACCT;
                    }
                } else if v.flags & ACCT != 0 && v.file == 0 && v.flags & SH == 0 {
                    nf &= !ACCT;
                }
                let prot = vm_get_page_prot(VmaFlags::from_bits_retain(nf));
                for p in addr / PS..piece_end / PS {
                    self.pages.get_mut(&p).unwrap().flags = nf;
                    fx.protected.push((p, prot));
                }
                if v.flags & (W | SH | LOCKED) == LOCKED && nf & W != 0 {
                    fx.populated.extend(addr / PS..piece_end / PS);
                }
            }
            addr = piece_end;
            if addr >= end {
                return Ok(());
            }
        }
        Err(Errno::ENOMEM)
    }

    fn mlock(&mut self, start: u64, len: u64, lock: bool, fx: &mut Fx) -> Res<()> {
        let len = align(len.wrapping_add(start % PS));
        let start = start & !(PS - 1);
        let end = start.wrapping_add(len);
        if end < start {
            return Err(Errno::EINVAL);
        }
        if end == start {
            return Ok(());
        }
        if !self.pages.contains_key(&(start / PS)) {
            return Err(Errno::ENOMEM);
        }
        let mut next = start / PS;
        let ks: Vec<u64> = self
            .pages
            .range(start / PS..end / PS)
            .map(|(k, _)| *k)
            .collect();
        for p in ks {
            if p != next {
                return Err(Errno::ENOMEM);
            }
            let pg = self.pages.get_mut(&p).unwrap();
            pg.flags = if lock {
                pg.flags | LOCKED
            } else {
                pg.flags & !LOCKED
            };
            next = p + 1;
        }
        if next != end / PS {
            return Err(Errno::ENOMEM);
        }
        if lock {
            fx.populated.extend(start / PS..end / PS);
        }
        Ok(())
    }

    fn madvise(&mut self, start: u64, len: u64, advice: u64, fx: &mut Fx) -> Res<()> {
        if ![
            MADV_NORMAL,
            MADV_RANDOM,
            MADV_SEQUENTIAL,
            MADV_WILLNEED,
            MADV_DONTNEED,
            MADV_DONTFORK,
            MADV_DOFORK,
        ]
        .contains(&advice)
        {
            return Err(Errno::EINVAL);
        }
        if !start.is_multiple_of(PS) {
            return Err(Errno::EINVAL);
        }
        let alen = align(len);
        if len != 0 && alen == 0 {
            return Err(Errno::EINVAL);
        }
        let end = start.wrapping_add(alen);
        if end < start {
            return Err(Errno::EINVAL);
        }
        if end == start {
            return Ok(());
        }
        let (seq, rand) = (VM_SEQ_READ.bits(), VM_RAND_READ.bits());
        let ks: Vec<u64> = self
            .pages
            .range(start / PS..end / PS)
            .map(|(k, _)| *k)
            .collect();
        let unmapped = ks.len() as u64 != (end - start) / PS;
        for p in ks {
            let pg = self.pages.get_mut(&p).unwrap();
            match advice {
                MADV_DONTNEED => {
                    if pg.flags & LOCKED != 0 {
                        return Err(Errno::EINVAL);
                    }
                    fx.zapped.push(p);
                }
                MADV_WILLNEED => {}
                MADV_NORMAL => pg.flags &= !(seq | rand),
                MADV_SEQUENTIAL => pg.flags = (pg.flags & !rand) | seq,
                MADV_RANDOM => pg.flags = (pg.flags & !seq) | rand,
                MADV_DONTFORK => pg.flags |= DONTCOPY,
                _ => pg.flags &= !DONTCOPY,
            }
        }
        if unmapped {
            Err(Errno::ENOMEM)
        } else {
            Ok(())
        }
    }

    fn brk(&mut self, brk: u64, fx: &mut Fx) -> u64 {
        let orig = self.brk;
        if brk < self.start_brk || brk > TASK {
            return orig;
        }
        let (newbrk, oldbrk) = (align(brk), align(self.brk));
        if newbrk == oldbrk {
            self.brk = brk;
            return brk;
        }
        if brk <= self.brk {
            self.unmap(newbrk, oldbrk, fx);
            self.brk = brk;
            return brk;
        }
        if let Some(n) = self.find_vma(oldbrk) {
            if newbrk + PS > self.start_gap(&n) {
                return orig;
            }
        }
        if self.gua(oldbrk, newbrk - oldbrk, MAP_FIXED).is_err() {
            return orig;
        }
        let flags = VmaFlags::VM_DATA_DEFAULT_FLAGS.bits() | ACCT;
        self.insert(oldbrk, newbrk - oldbrk, flags, 0, oldbrk / PS);
        self.brk = brk;
        brk
    }

    fn vma_at(&self, addr: u64) -> Option<Mv> {
        self.find_vma(addr).filter(|v| v.start <= addr)
    }

    fn to_resize(&self, addr: u64, old_len: u64, new_len: u64, flags: u64) -> Res<Mv> {
        let v = self.vma_at(addr).ok_or(Errno::EFAULT)?;
        if old_len == 0 && v.flags & (SH | MAYSH) == 0 {
            return Err(Errno::EINVAL);
        }
        if old_len > v.end - addr {
            return Err(Errno::EFAULT);
        }
        let _ = flags;
        if new_len == old_len {
            return Ok(v);
        }
        let pgoff = v.pgoff + (addr - v.start) / PS;
        if pgoff.checked_add(new_len / PS).is_none() {
            return Err(Errno::EINVAL);
        }
        Ok(v)
    }

    #[allow(clippy::too_many_arguments)]
    fn move_vma(
        &mut self,
        v: Mv,
        old: u64,
        old_len: u64,
        new_len: u64,
        new: u64,
        flags: u64,
        fx: &mut Fx,
    ) -> Res<u64> {
        let pgoff = if v.file == 0 && v.flags & SH == 0 {
            new / PS
        } else {
            v.pgoff + (old - v.start) / PS
        };
        self.insert(new, new_len, v.flags, v.file, pgoff);
        fx.moved
            .extend((0..old_len / PS).map(|i| (old / PS + i, new / PS + i)));
        if flags & MREMAP_DONTUNMAP != 0 {
            for p in old / PS..(old + old_len) / PS {
                self.pages.get_mut(&p).unwrap().flags &= !LOCKED;
            }
            return Ok(new);
        }
        if old_len > 0 {
            self.unmap(old, old + old_len, fx);
        }
        if v.flags & LOCKED != 0 && new_len > old_len {
            fx.populated
                .extend((new + old_len) / PS..(new + new_len) / PS);
        }
        Ok(new)
    }

    fn mremap(
        &mut self,
        addr: u64,
        old_len: u64,
        new_len: u64,
        flags: u64,
        new_addr: u64,
        fx: &mut Fx,
    ) -> Res<u64> {
        if flags & !(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP) != 0 {
            return Err(Errno::EINVAL);
        }
        if flags & MREMAP_FIXED != 0 && flags & MREMAP_MAYMOVE == 0 {
            return Err(Errno::EINVAL);
        }
        if flags & MREMAP_DONTUNMAP != 0 && (flags & MREMAP_MAYMOVE == 0 || old_len != new_len) {
            return Err(Errno::EINVAL);
        }
        if !addr.is_multiple_of(PS) {
            return Err(Errno::EINVAL);
        }
        let (old_len, new_len) = (align(old_len), align(new_len));
        if new_len == 0 {
            return Err(Errno::EINVAL);
        }
        // Linux 6.x: vma_lookup() first, EFAULT for an unmapped address.
        if self.vma_at(addr).is_none() {
            return Err(Errno::EFAULT);
        }
        if flags & (MREMAP_FIXED | MREMAP_DONTUNMAP) != 0 {
            if !new_addr.is_multiple_of(PS) || new_len > TASK || new_addr > TASK - new_len {
                return Err(Errno::EINVAL);
            }
            if addr.saturating_add(old_len) > new_addr && new_addr + new_len > addr {
                return Err(Errno::EINVAL);
            }
            if flags & MREMAP_FIXED != 0 {
                self.munmap(new_addr, new_len, fx)?;
            }
            let mut old_len = old_len;
            if old_len > new_len {
                self.munmap(addr.wrapping_add(new_len), old_len - new_len, fx)?;
                old_len = new_len;
            }
            let v = self.to_resize(addr, old_len, new_len, flags)?;
            let mut mf = if flags & MREMAP_FIXED != 0 {
                MAP_FIXED
            } else {
                0
            };
            if v.flags & MAYSH != 0 {
                mf |= MAP_SHARED;
            }
            let got = self.gua(new_addr, new_len, mf)?;
            let to = if flags & MREMAP_FIXED != 0 {
                new_addr
            } else {
                got
            };
            return self.move_vma(v, addr, old_len, new_len, to, flags, fx);
        }
        if old_len >= new_len {
            let r = self.munmap(addr.wrapping_add(new_len), old_len - new_len, fx);
            if let Err(e) = r {
                if old_len != new_len {
                    return Err(e);
                }
            }
            return Ok(addr);
        }
        let v = self.to_resize(addr, old_len, new_len, flags)?;
        if old_len == v.end - addr {
            let delta = new_len - old_len;
            let end = v.end.checked_add(delta);
            if let Some(end) = end {
                if !self.any_mapped(v.end, end) && end <= TASK && v.start >= self.min_addr {
                    let last = self.pages[&(v.end / PS - 1)];
                    self.insert(v.end, delta, v.flags, v.file, last.pgoff.wrapping_add(1));
                    if v.flags & LOCKED != 0 {
                        fx.populated
                            .extend((addr + old_len) / PS..(addr + new_len) / PS);
                    }
                    return Ok(addr);
                }
            }
        }
        if flags & MREMAP_MAYMOVE == 0 {
            return Err(Errno::ENOMEM);
        }
        let to = self.gua(
            0,
            new_len,
            if v.flags & MAYSH != 0 { MAP_SHARED } else { 0 },
        )?;
        self.move_vma(v, addr, old_len, new_len, to, flags, fx)
    }

    /// `(total, locked, data, exec, stack)` in pages.
    fn stats(&self) -> (u64, u64, u64, u64, u64) {
        let mut s = (0, 0, 0, 0, 0);
        for pg in self.pages.values() {
            s.0 += 1;
            if pg.flags & LOCKED != 0 {
                s.1 += 1;
            }
            if pg.flags & (X | W | GD) == X {
                s.3 += 1;
            } else if pg.flags & GD != 0 {
                s.4 += 1;
            } else if pg.flags & (W | SH | GD) == W {
                s.2 += 1;
            }
        }
        s
    }
}

// ------------------------------------------------------------------ the property test

#[derive(Clone, Debug)]
enum Op {
    Mmap {
        file: u8,
        anon: bool,
        ty: u64,
        place: u8,
        page: At,
        len: u64,
        prot: u64,
        extra: u64,
        pgoff: u64,
    },
    Munmap {
        page: At,
        len: u64,
    },
    Mprotect {
        page: At,
        len: u64,
        prot: u64,
    },
    Brk {
        delta: i64,
        extra: u64,
    },
    Mremap {
        page: At,
        old: u64,
        new: u64,
        flags: u64,
        to: At,
    },
    Madvise {
        page: At,
        len: u64,
        advice: u64,
    },
    Mlock {
        page: At,
        len: u64,
        lock: bool,
        off: u64,
    },
}

/// Where an operation aims: an absolute page, or a page relative to the
/// start of one of the areas that exist when it runs.
#[derive(Clone, Copy, Debug)]
enum At {
    Page(u64),
    Vma(usize, i64),
}

impl At {
    fn page(self, model: &Model) -> u64 {
        match self {
            At::Page(p) => p,
            At::Vma(i, off) => {
                let v = model.vmas();
                if v.is_empty() {
                    return 0x6f0;
                }
                let base = v[i % v.len()].start / PS;
                (base as i64 + off).max(0) as u64
            }
        }
    }
}

fn at_strategy() -> impl Strategy<Value = At> {
    prop_oneof![
        2 => page_strategy().prop_map(At::Page),
        3 => (any::<usize>(), -2i64..8).prop_map(|(i, o)| At::Vma(i, o)),
    ]
}

fn page_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => 0x5c0u64..0x740,
        2 => 0x3f0u64..0x440,
        1 => Just(0u64),
        1 => 0u64..0x800,
    ]
}

fn len_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => 1u64..4,
        8 => 1u64..10,
        2 => 10u64..40,
        1 => Just(0u64),
        1 => 0x200u64..0x400,
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let flags_extra = prop_oneof![
        6 => Just(0u64),
        1 => Just(MAP_GROWSDOWN),
        1 => Just(MAP_LOCKED),
        1 => Just(MAP_POPULATE),
        1 => Just(MAP_NORESERVE),
        1 => Just(MAP_POPULATE | MAP_NONBLOCK),
        1 => Just(MAP_SYNC),
    ];
    prop_oneof![
        8 => (
            0u8..6,
            prop::bool::weighted(0.7),
            prop_oneof![6 => Just(MAP_PRIVATE), 2 => Just(MAP_SHARED), 1 => Just(MAP_SHARED_VALIDATE), 1 => Just(0u64)],
            0u8..5,
            at_strategy(),
            len_strategy(),
            prop_oneof![4 => Just(RW), 2 => Just(PROT_READ), 1 => Just(PROT_READ | PROT_EXEC), 1 => 0u64..8],
            flags_extra,
            0u64..8,
        )
            .prop_map(|(file, anon, ty, place, page, len, prot, extra, pgoff)| Op::Mmap {
                file,
                anon,
                ty,
                place,
                page,
                len,
                prot,
                extra,
                pgoff
            }),
        3 => (at_strategy(), len_strategy()).prop_map(|(page, len)| Op::Munmap { page, len }),
        4 => (
            at_strategy(),
            len_strategy(),
            prop_oneof![4 => 0u64..8, 1 => Just(PROT_READ | PROT_GROWSDOWN), 1 => Just(0x10u64)]
        )
            .prop_map(|(page, len, prot)| Op::Mprotect { page, len, prot }),
        3 => (-12i64..16, 0u64..PS).prop_map(|(delta, extra)| Op::Brk { delta, extra }),
        3 => (
            at_strategy(),
            0u64..10,
            1u64..14,
            prop_oneof![3 => Just(MREMAP_MAYMOVE), 2 => Just(0u64), 1 => Just(MREMAP_MAYMOVE | MREMAP_FIXED), 1 => Just(MREMAP_MAYMOVE | MREMAP_DONTUNMAP), 1 => 0u64..9],
            at_strategy()
        )
            .prop_map(|(page, old, new, flags, to)| Op::Mremap { page, old, new, flags, to }),
        2 => (
            at_strategy(),
            len_strategy(),
            prop::sample::select(vec![MADV_NORMAL, MADV_RANDOM, MADV_SEQUENTIAL, MADV_WILLNEED, MADV_DONTNEED, MADV_DONTFORK, MADV_DOFORK, 9])
        )
            .prop_map(|(page, len, advice)| Op::Madvise { page, len, advice }),
        2 => (at_strategy(), len_strategy(), any::<bool>(), 0u64..PS)
            .prop_map(|(page, len, lock, off)| Op::Mlock { page, len, lock, off }),
    ]
}

fn err_of<T>(r: Result<T, KmmError>) -> Result<T, Errno> {
    match r {
        Ok(v) => Ok(v),
        Err(KmmError::Errno { errno, .. }) => Err(errno),
        Err(e) => panic!("not an errno: {e}"),
    }
}

/// Runs one op on both sides; returns what each said, and the effects.
fn step(k: &K, mm: u64, ops: &Rec, model: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    let mut fx = Fx::default();
    let (got, want): (Result<u64, Errno>, Result<u64, Errno>) = match *op {
        Op::Mmap {
            file,
            anon,
            ty,
            place,
            page,
            len,
            prot,
            extra,
            pgoff,
        } => {
            let f = match file {
                0 => None,
                1 | 5 => Some(FILE_RW),
                2 => Some(FILE_RO),
                3 => Some(FILE_WO),
                _ => Some(FILE_NOMMAP),
            };
            let page = page.page(model);
            let mut flags = ty | extra | if anon { MAP_ANONYMOUS } else { 0 };
            let addr = match place {
                0 => 0,
                1 | 2 => page * PS,
                3 => {
                    flags |= MAP_FIXED;
                    page * PS
                }
                _ => {
                    flags |= MAP_FIXED_NOREPLACE;
                    page * PS
                }
            };
            let bytes = if len == 0 {
                0
            } else {
                len * PS - (page % 3) * 100
            };
            (
                err_of(k.do_mmap(mm, f, addr, bytes, prot, flags, pgoff, ops)),
                model.mmap(f, addr, bytes, prot, flags, pgoff, &mut fx),
            )
        }
        Op::Munmap { page, len } => {
            let page = page.page(model);
            (
                err_of(k.do_munmap(mm, page * PS, len * PS, ops)).map(|()| 0),
                model.munmap(page * PS, len * PS, &mut fx).map(|()| 0),
            )
        }
        Op::Mprotect { page, len, prot } => {
            let page = page.page(model);
            (
                err_of(k.do_mprotect(mm, page * PS, len * PS, prot, ops)).map(|()| 0),
                model
                    .mprotect(page * PS, len * PS, prot, &mut fx)
                    .map(|()| 0),
            )
        }
        Op::Brk { delta, extra } => {
            let cur = model.brk;
            let target = (cur as i64 + delta * PS as i64 + extra as i64).max(0) as u64;
            (
                Ok(k.do_brk(mm, target, ops)),
                Ok(model.brk(target, &mut fx)),
            )
        }
        Op::Mremap {
            page,
            old,
            new,
            flags,
            to,
        } => {
            let (page, to) = (page.page(model), to.page(model));
            (
                err_of(k.do_mremap(mm, page * PS, old * PS, new * PS, flags, to * PS, ops)),
                model.mremap(page * PS, old * PS, new * PS, flags, to * PS, &mut fx),
            )
        }
        Op::Madvise { page, len, advice } => {
            let page = page.page(model);
            (
                err_of(k.do_madvise(mm, page * PS, len * PS, advice, ops)).map(|()| 0),
                model
                    .madvise(page * PS, len * PS, advice, &mut fx)
                    .map(|()| 0),
            )
        }
        Op::Mlock {
            page,
            len,
            lock,
            off,
        } => {
            let start = page.page(model) * PS + off;
            let r = if lock {
                k.do_mlock(mm, start, len * PS, ops)
            } else {
                k.do_munlock(mm, start, len * PS, ops)
            };
            (
                err_of(r).map(|()| 0),
                model.mlock(start, len * PS, lock, &mut fx).map(|()| 0),
            )
        }
    };
    prop_assert_eq!(got, want, "result of {:?}", op);
    let calls = ops.take();
    prop_assert_eq!(
        Fx::from_calls(&calls),
        fx.sorted(),
        "page effects of {:?}: {:?}",
        op,
        calls
    );
    let problems = ops.problems();
    prop_assert!(problems.is_empty(), "{:?}", problems);
    check_against_model(k, mm, ops, model)
}

fn check_against_model(k: &K, mm: u64, ops: &Rec, model: &Model) -> Result<(), TestCaseError> {
    let n = k
        .validate_mm(mm)
        .map_err(|e| TestCaseError::fail(format!("validate_mm: {e}")))?;
    let have: Vec<Mv> = vmas(k, mm)
        .iter()
        .map(|v| Mv {
            start: v.vm_start,
            end: v.vm_end,
            flags: v.vm_flags.bits(),
            file: v.vm_file,
            pgoff: v.vm_pgoff,
        })
        .collect();
    let want = model.vmas();
    prop_assert_eq!(&have, &want, "VMAs (merged as Linux would)");
    prop_assert_eq!(n, want.len() as u64);
    for v in vmas(k, mm) {
        prop_assert_eq!(v.vm_page_prot, vm_get_page_prot(v.vm_flags));
    }
    // find_vma at interesting addresses.
    let mut probes = vec![0, TASK - 1];
    for v in &want {
        probes.extend([v.start.saturating_sub(1), v.start, v.end - 1, v.end]);
    }
    for a in probes {
        let got = k
            .find_vma(mm, a)
            .unwrap()
            .map(|x| k.vma_info(x).unwrap().vm_start);
        prop_assert_eq!(
            got,
            model.find_vma(a).map(|v| v.start),
            "find_vma({:#x})",
            a
        );
    }
    let st = k.mm_vm_stat(mm).unwrap();
    prop_assert_eq!(
        (
            st.total_vm,
            st.locked_vm,
            st.data_vm,
            st.exec_vm,
            st.stack_vm
        ),
        model.stats(),
        "total/locked/data/exec/stack"
    );
    prop_assert_eq!(st.map_count, want.len() as u64);
    prop_assert_eq!(st.highest_vm_end, want.last().map_or(0, |v| v.end));
    prop_assert_eq!(st.brk, model.brk);
    let mut live: Vec<u64> = ops.live.borrow().iter().copied().collect();
    live.sort_unstable();
    let mut handles: Vec<u64> = vmas(k, mm).iter().map(|v| v.vma).collect();
    handles.sort_unstable();
    prop_assert_eq!(live, handles, "opened and not closed = the mm's VMAs");
    Ok(())
}

#[test]
fn random_syscalls_match_the_page_model() {
    let m = machine();
    let k = m.kmm();
    let mut runner = TestRunner::new(Config {
        cases: 384,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(op_strategy(), 1..64), |seq| {
        let ops = Rec::new(k);
        let mm = new_mm(k);
        let mut model = Model::new();
        let mut res = Ok(());
        for op in &seq {
            res = step(k, mm, &ops, &mut model, op);
            if res.is_err() {
                break;
            }
        }
        // Exit: every page zapped once, everything freed.
        let pages: Vec<u64> = model.pages.keys().copied().collect();
        ops.take();
        let exit = k.mm_free_vmas(mm, &ops);
        let zapped = Fx::from_calls(&ops.take()).zapped;
        let freed = k.mm_free(mm);
        res?;
        prop_assert!(exit.is_ok() && freed.is_ok(), "{:?} {:?}", exit, freed);
        prop_assert_eq!(zapped, pages, "exit zaps every mapped page once");
        prop_assert!(ops.live.borrow().is_empty());
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert_eq!(in_use(k, "vm_area_struct"), 0, "no VMA leaked");
    assert_eq!(in_use(k, "mm_struct"), 0, "no mm_struct leaked");
}
