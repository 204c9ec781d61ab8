//! Kernel stacks (`kernel/fork.c`, `include/linux/sched/task_stack.h`): the
//! `THREAD_SIZE` block with `thread_info` at its base and `STACK_END_MAGIC`
//! above it, overflow detection, `stack_not_used`, per-CPU interrupt stacks
//! and the `KernelStack:` accounting.

mod common;

use common::*;
use kmm::task_stack::{STACK_END_MAGIC, THREAD_INFO_SIZE};
use kmm::{KernelStack, KmmError};
use proptest::prelude::*;

fn check_layout(k: &K, st: &KernelStack, task: u64) {
    let size = k.thread_size();
    assert_eq!(st.size(), size);
    assert_eq!(st.phys() % size, 0, "stack not aligned to THREAD_SIZE");
    assert_eq!(
        st.base() % size,
        0,
        "stack address not aligned to THREAD_SIZE"
    );
    assert_eq!(st.top(), st.base() + size);
    assert_eq!(st.sp(), st.top());
    assert_eq!(st.end_of_stack(), st.base() + THREAD_INFO_SIZE);
    let ti = k.task_thread_info(st).unwrap();
    assert_eq!(ti.task, task);
    assert_eq!((ti.flags, ti.preempt_count, ti.status), (0, 0, 0));
    assert!((ti.cpu as usize) < k.nr_cpu_ids());
    assert_eq!(k.stack_end_word(st).unwrap(), STACK_END_MAGIC);
    assert!(!k.task_stack_end_corrupted(st).unwrap());
    k.check_stack(st).unwrap();
    // A fresh (zeroed) stack: nothing above the magic has been used.
    assert_eq!(k.stack_not_used(st).unwrap(), size - THREAD_INFO_SIZE);
    assert_eq!(k.stack_high_water(st).unwrap(), 0);
}

#[test]
fn alloc_and_free_return_the_pages() {
    let m = boot("x86_64", 64 * M, 2, 1);
    let k = m.kmm();
    assert_eq!(k.thread_size(), 16 << 10, "x86_64 default is 16 KiB");
    assert_eq!(k.thread_size_order(), 2);
    k.drain_all_pages();
    let boot_buddy = buddyinfo(k);
    let before = k.nr_free_pages();
    assert_eq!(meminfo_kb(k, "KernelStack"), 0);
    let stacks: Vec<KernelStack> = (0..10)
        .map(|t| k.alloc_thread_stack_node(100 + t, 0).unwrap())
        .collect();
    for (t, st) in stacks.iter().enumerate() {
        check_layout(k, st, 100 + t as u64);
        assert_eq!(st.order(), 2);
    }
    assert_eq!(k.nr_thread_stacks(), 10);
    assert_eq!(k.nr_kernel_stack_kb(), 160);
    assert_eq!(meminfo_kb(k, "KernelStack"), 160);
    assert_eq!(vmstat_value(k, "nr_kernel_stack"), 160);
    let allocs: Vec<Alloc> = stacks
        .iter()
        .map(|s| Alloc {
            pfn: s.phys() >> 12,
            order: 2,
            comp: false,
        })
        .collect();
    check_frames(k, &allocs).unwrap();
    for st in stacks {
        k.free_thread_stack(st).unwrap();
    }
    k.drain_all_pages();
    assert_eq!(k.nr_free_pages(), before);
    assert_eq!(buddyinfo(k), boot_buddy);
    assert_eq!(meminfo_kb(k, "KernelStack"), 0);
    check_frames(k, &[]).unwrap();
}

#[test]
fn meminfo_line_is_between_sunreclaim_and_pagetables() {
    let m = boot("x86", 128 * M, 1, 1);
    let k = m.kmm();
    let _st = k.alloc_thread_stack_node(1, 0).unwrap();
    let mut s = String::new();
    kmm::proc_meminfo::meminfo(k, &mut s).unwrap();
    let pos = |f: &str| s.lines().position(|l| l.starts_with(f)).unwrap();
    assert_eq!(pos("KernelStack:"), pos("SUnreclaim:") + 1);
    assert_eq!(pos("PageTables:"), pos("KernelStack:") + 1);
    assert!(s.contains("KernelStack:           8 kB"), "{s}");
}

#[test]
fn thread_size_is_one_two_or_four_pages() {
    let m = boot("x86", 128 * M, 2, 1);
    let k = m.kmm();
    assert_eq!(k.thread_size(), 8 << 10, "x86 default is two pages");
    for pages in [1u32, 2, 4] {
        k.set_thread_size_pages(pages).unwrap();
        assert_eq!(k.thread_size(), u64::from(pages) * 4096);
        let sts: Vec<_> = (0..5)
            .map(|t| k.alloc_thread_stack_node(t, 0).unwrap())
            .collect();
        for (t, st) in sts.iter().enumerate() {
            check_layout(k, st, t as u64);
        }
        assert_eq!(k.nr_kernel_stack_kb(), 5 * 4 * u64::from(pages));
        assert!(matches!(
            k.set_thread_size_pages(1),
            Err(KmmError::InvalidArgument { .. })
        ));
        for st in sts {
            k.free_thread_stack(st).unwrap();
        }
    }
    for bad in [0u32, 3, 8] {
        assert!(k.set_thread_size_pages(bad).is_err());
    }
    assert_eq!(k.thread_size(), 16 << 10);
}

#[test]
fn deep_recursion_overflows_and_is_detected() {
    let m = boot("x86_64", 64 * M, 1, 1);
    let k = m.kmm();
    k.set_thread_size_pages(1).unwrap();
    let mut st = k.alloc_thread_stack_node(7, 0).unwrap();
    let frame = 80u64;
    let mut detected_at = None;
    loop {
        match k.push_frame(&mut st, frame, 0x5a) {
            Ok(()) => {}
            Err(KmmError::StackOverflow { guard_page, .. }) => {
                assert!(!guard_page);
                break;
            }
            Err(e) => panic!("unexpected {e}"),
        }
        let touched = st.sp() < st.usable_bottom();
        let r = k.check_stack(&st);
        assert_eq!(r.is_err(), touched, "at depth {}", st.depth());
        if touched && detected_at.is_none() {
            detected_at = Some(st.depth());
            assert!(matches!(r, Err(KmmError::StackCorrupted { .. })));
        }
    }
    let depth = detected_at.expect("overflow detected before the end of the block");
    // 4096 - 24 (thread_info) - 8 (magic) = 4064 usable bytes: 50 frames of 80.
    assert_eq!(depth, 51);
    let log = m.take_log();
    assert!(logged(
        &log,
        "Kernel panic - not syncing: corrupted stack end detected inside scheduler"
    ));
    assert!(logged(&log, "kernel stack overflow"));
    // thread_info was overwritten too.
    assert_ne!(k.task_thread_info(&st).unwrap().task, 7);
    // Unwinding still works; the damage stays.
    while st.depth() > 0 {
        k.pop_frame(&mut st).unwrap();
    }
    assert_eq!(st.sp(), st.top());
    assert!(k.pop_frame(&mut st).is_err());
    assert!(k.check_stack(&st).is_err());
    k.free_thread_stack(st).unwrap();
}

#[test]
fn big_on_stack_buffer_overflows_and_is_detected() {
    let m = boot("x86", 128 * M, 1, 1);
    let k = m.kmm();
    let size = k.thread_size();
    assert_eq!(size, 8192);
    // Seed 002's `char large_buffer[8192]`: a frame that covers the magic but
    // stays inside the block is pushed silently, like on Linux...
    let mut st = k.alloc_thread_stack_node(3, 0).unwrap();
    k.push_frame(&mut st, 200, 0x11).unwrap();
    k.check_stack(&st).unwrap();
    k.push_frame(&mut st, size - 200 - THREAD_INFO_SIZE, 0xaa)
        .unwrap();
    assert_eq!(st.sp(), st.end_of_stack());
    assert!(k.task_stack_end_corrupted(&st).unwrap());
    // ...thread_info is intact, and schedule_debug() finds the dead canary
    // (now the buffer frame's saved frame pointer, its lowest word).
    assert_eq!(k.task_thread_info(&st).unwrap().task, 3);
    assert_eq!(
        k.check_stack(&st),
        Err(KmmError::StackCorrupted {
            end: st.end_of_stack(),
            found: st.top() - 200
        })
    );
    // The buffer's bytes themselves sit right above it.
    let mut b = [0u8; 4];
    k.phys()
        .read(st.phys() + THREAD_INFO_SIZE + 4, &mut b)
        .unwrap();
    assert_eq!(b, [0xaa; 4]);
    assert!(logged(
        &m.take_log(),
        "corrupted stack end detected inside scheduler"
    ));
    k.free_thread_stack(st).unwrap();

    // A buffer bigger than the whole stack reaches below the block.
    let mut st = k.alloc_thread_stack_node(4, 0).unwrap();
    let r = k.push_frame(&mut st, 2 * size, 0xbb);
    assert!(matches!(
        r,
        Err(KmmError::StackOverflow {
            guard_page: false,
            ..
        })
    ));
    assert_eq!(st.depth(), 0);
    assert!(k.check_stack(&st).is_err());
    k.free_thread_stack(st).unwrap();

    // With CONFIG_VMAP_STACK the push faults on the unmapped page below the
    // stack and writes nothing.
    k.set_vmap_stack(true);
    let mut st = k.alloc_thread_stack_node(5, 0).unwrap();
    k.push_frame(&mut st, 64, 0x22).unwrap();
    let r = k.push_frame(&mut st, size, 0xcc);
    assert_eq!(
        r,
        Err(KmmError::StackOverflow {
            addr: st.base() - 64,
            guard_page: true
        })
    );
    let log = m.take_log();
    let want = format!(
        "BUG: TASK stack guard page was hit at {:#x} (stack is {:#x}..{:#x})",
        st.base() - 64,
        st.base(),
        st.top()
    );
    assert!(logged(&log, &want), "{log:?}");
    assert!(logged(&log, "stack guard page: 0000 [#1]"));
    k.check_stack(&st).unwrap();
    assert_eq!(k.task_thread_info(&st).unwrap().task, 5);
    k.free_thread_stack(st).unwrap();
}

#[test]
fn stack_usage_high_water() {
    let m = boot("x86_64", 64 * M, 1, 1);
    let k = m.kmm();
    let mut st = k.alloc_thread_stack_node(9, 0).unwrap();
    let size = st.size();
    for f in [100u64, 300, 60, 540] {
        k.push_frame(&mut st, f, 0x77).unwrap();
    }
    // Frames are rounded up to 8-byte words: 104 + 304 + 64 + 544.
    let deepest = 104 + 304 + 64 + 544;
    assert_eq!(st.used(), deepest);
    while st.depth() > 0 {
        k.pop_frame(&mut st).unwrap();
    }
    k.push_frame(&mut st, 16, 0x77).unwrap();
    assert_eq!(st.used(), 16);
    assert_eq!(k.stack_high_water(&st).unwrap(), deepest);
    assert_eq!(
        k.stack_not_used(&st).unwrap(),
        size - THREAD_INFO_SIZE - deepest
    );
    k.check_stack(&st).unwrap();
    k.free_thread_stack(st).unwrap();
    let left = size - THREAD_INFO_SIZE - deepest;
    assert!(logged(
        &m.take_log(),
        &format!("task 9 used greatest stack depth: {left} bytes left")
    ));
}

#[test]
fn irq_stacks_per_cpu() {
    let m = boot("x86_64", 64 * M, 4, 1);
    let k = m.kmm();
    assert_eq!(k.irq_stack_size(), 16 << 10);
    assert_eq!(k.nr_irq_stack_pages(), 0);
    let free = k.nr_free_pages() + k.nr_pcp_pages();
    k.init_irq_stacks().unwrap();
    assert_eq!(k.nr_irq_stack_pages(), 16);
    assert_eq!(free - k.nr_free_pages() - k.nr_pcp_pages(), 16);
    let stacks: Vec<_> = (0..4).map(|c| k.irq_stack(c).unwrap()).collect();
    for (c, s) in stacks.iter().enumerate() {
        assert_eq!(s.cpu, c);
        assert_eq!(s.size, 16 << 10);
        assert_eq!(s.phys % s.size, 0);
        assert_eq!(s.top(), s.base + s.size);
        // The same stack every time.
        assert_eq!(k.irq_stack(c).unwrap(), *s);
    }
    for a in 0..4 {
        for b in a + 1..4 {
            assert!(stacks[a].top() <= stacks[b].base || stacks[b].top() <= stacks[a].base);
        }
    }
    assert!(k.irq_stack(4).is_err());
    // Not task stacks: KernelStack stays 0.
    assert_eq!(meminfo_kb(k, "KernelStack"), 0);

    let m = boot("x86", 128 * M, 2, 1);
    let k = m.kmm();
    k.set_thread_size_pages(1).unwrap();
    // 32-bit x86: the interrupt stack is THREAD_SIZE.
    assert_eq!(k.irq_stack(1).unwrap().size, 4096);
    assert_eq!(k.nr_irq_stack_pages(), 1);
}

#[derive(Clone, Debug)]
enum Op {
    Push(u64, u8),
    Pop,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u64..1500, 1u8..=255).prop_map(|(s, p)| Op::Push(s, p)),
        2 => Just(Op::Pop),
    ]
}

fn run_ops(arch: &str, vmap: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    let m = boot(arch, 64 * M, 1, 1);
    let k = m.kmm();
    k.set_vmap_stack(vmap);
    let mut st = k.alloc_thread_stack_node(1, 0).unwrap();
    let word = u64::from(k.arch().bits / 8);
    let size = st.size();
    let bottom = THREAD_INFO_SIZE + word; // lowest offset frames may reach safely
    let mut frames: Vec<u64> = Vec::new();
    let mut sp = size;
    let mut magic_hit = false;
    for o in ops {
        match *o {
            Op::Push(s, p) => {
                let f = s.div_ceil(word) * word;
                let r = k.push_frame(&mut st, s, p);
                if f > sp {
                    let ok = matches!(
                        r,
                        Err(KmmError::StackOverflow { guard_page, .. }) if guard_page == vmap
                    );
                    prop_assert!(ok, "push of {} bytes at sp offset {}: {:?}", f, sp, r);
                    if !vmap {
                        magic_hit = true;
                    }
                } else {
                    prop_assert!(r.is_ok());
                    sp -= f;
                    frames.push(f);
                    if sp < bottom {
                        magic_hit = true;
                    }
                }
            }
            Op::Pop => {
                let r = k.pop_frame(&mut st);
                match frames.pop() {
                    Some(f) => {
                        prop_assert!(r.is_ok());
                        sp += f;
                    }
                    None => prop_assert!(r.is_err()),
                }
            }
        }
        prop_assert_eq!(st.sp(), st.base() + sp);
        prop_assert_eq!(st.depth() as usize, frames.len());
        let c = k.check_stack(&st);
        prop_assert_eq!(c.is_err(), magic_hit, "check_stack {:?}", c);
    }
    k.free_thread_stack(st).unwrap();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random calls and returns: never a false overflow while every frame
    /// stays above the magic word, always one after a frame reached it.
    #[test]
    fn push_pop_x86_64(ops in prop::collection::vec(op(), 1..80), vmap in any::<bool>()) {
        run_ops("x86_64", vmap, &ops)?;
    }

    /// The same on 32-bit x86 (4-byte words, 8 KiB stacks).
    #[test]
    fn push_pop_x86(ops in prop::collection::vec(op(), 1..80), vmap in any::<bool>()) {
        run_ops("x86", vmap, &ops)?;
    }
}

/// `CONFIG_VMAP_STACK`: the stack lives in the vmalloc area, aligned to
/// THREAD_SIZE, page by page (not physically contiguous), shows in
/// /proc/vmallocinfo, and the page below it is really unmapped.
#[test]
fn vmapped_stack_is_in_the_vmalloc_area() {
    for arch in ["x86_64", "x86"] {
        let m = boot(arch, 2 << 30, 2, 1);
        let k = m.kmm();
        k.set_vmap_stack(true);
        let size = k.thread_size();
        let mut st = k.alloc_thread_stack_node(9, 0).unwrap();
        assert!(st.is_vmapped());
        assert!(k.is_vmalloc_addr(st.base()), "{arch}: {:#x}", st.base());
        assert_eq!(st.base() % size, 0);
        let info = kmm_sim::procfs::read(&m, "/proc/vmallocinfo").unwrap();
        let pages = size / k.page_size();
        let line = info
            .lines()
            .find(|l| l.contains(&format!("pages={pages} vmalloc")))
            .unwrap_or_else(|| panic!("{info}"));
        assert!(line.contains("task_stack.rs"), "{line}");
        // Below the base: not mapped in the kernel page table.
        let pgd = k.swapper_pg_dir().unwrap();
        assert!(pgd.walk(k, st.base() - 1).is_none());
        assert!(pgd.walk(k, st.base()).is_some());
        // The magic and thread_info are where they belong, read through the
        // mapping.
        assert_eq!(k.stack_end_word(&st).unwrap(), STACK_END_MAGIC);
        assert_eq!(k.task_thread_info(&st).unwrap().task, 9);
        k.push_frame(&mut st, 100, 0x5a).unwrap();
        let mut b = [0u8; 8];
        k.vread(st.sp() + 16, &mut b).unwrap();
        assert_eq!(b, [0x5a; 8]);
        assert_eq!(k.nr_kernel_stack_kb(), size >> 10);
        k.free_thread_stack(st).unwrap();
        assert_eq!(k.nr_kernel_stack_kb(), 0);
        assert_eq!(k.vmalloc_nr_pages(), 0);
    }
}
