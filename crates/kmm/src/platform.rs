//! The one door between the memory manager and the world it runs in.
//!
//! Linux reaches these services through `smp_processor_id()`, `preempt_count()`,
//! `irqs_disabled()`, `current`, `printk()`, `wakeup_kswapd()` and
//! `try_to_free_pages()`. kmm asks a [`Platform`] for them instead, so the same
//! allocator can run inside a Rust kernel or inside the `kmm-sim` machine.

use crate::error::KmmError;
use core::fmt;

/// Linux's `preempt_count()` layout: bits 0–7 count `preempt_disable()`, bits
/// 8–15 softirq nesting, bits 16–19 hardirq nesting, bits 20–23 NMI nesting.
pub mod preempt {
    /// `PREEMPT_OFFSET`: one `preempt_disable()`.
    pub const PREEMPT_OFFSET: u32 = 1;
    /// `SOFTIRQ_OFFSET`: one level of softirq processing.
    pub const SOFTIRQ_OFFSET: u32 = 1 << 8;
    /// `HARDIRQ_OFFSET`: one level of hard interrupt.
    pub const HARDIRQ_OFFSET: u32 = 1 << 16;
    /// `NMI_OFFSET`: one level of non-maskable interrupt.
    pub const NMI_OFFSET: u32 = 1 << 20;
    /// `PREEMPT_MASK`.
    pub const PREEMPT_MASK: u32 = 0xff;
    /// `SOFTIRQ_MASK`.
    pub const SOFTIRQ_MASK: u32 = 0xff << 8;
    /// `HARDIRQ_MASK`.
    pub const HARDIRQ_MASK: u32 = 0xf << 16;
    /// `NMI_MASK`.
    pub const NMI_MASK: u32 = 0xf << 20;

    /// `in_atomic()`: any preemption-disabling state at all.
    pub const fn in_atomic(count: u32) -> bool {
        count != 0
    }
    /// `in_interrupt()`: hard or soft interrupt or NMI context.
    pub const fn in_interrupt(count: u32) -> bool {
        count & (SOFTIRQ_MASK | HARDIRQ_MASK | NMI_MASK) != 0
    }
    /// `in_softirq()`.
    pub const fn in_softirq(count: u32) -> bool {
        count & SOFTIRQ_MASK != 0
    }
    /// `in_irq()` / `in_hardirq()`.
    pub const fn in_irq(count: u32) -> bool {
        count & HARDIRQ_MASK != 0
    }
}

/// Identity of the task running on the current CPU, for Linux-style messages
/// (`current->pid`, `current->comm`).
#[derive(Clone, Copy, Debug)]
pub struct TaskId<'a> {
    /// `current->pid`.
    pub pid: u32,
    /// `current->comm`.
    pub comm: &'a str,
}

/// What the memory manager needs from the machine it runs on.
///
/// Every method has a cheap, obvious meaning in a real kernel; the default
/// bodies are what a kernel without reclaim would do.
pub trait Platform: Sync {
    /// `smp_processor_id()`: the CPU the caller runs on, below `nr_cpu_ids`.
    fn smp_processor_id(&self) -> usize;

    /// `smp_processor_id()`, and whether the calling thread is the only one
    /// that can run as that CPU right now. When it is, the allocator touches
    /// the CPU's own data (per-CPU page lists, slab arrays) without atomic
    /// read-modify-writes, as Linux does with preemption disabled; other
    /// threads then reach that data through [`Self::sync_cpus`]. The default
    /// claims no ownership: every access takes a spin lock.
    #[inline]
    fn this_cpu(&self) -> (usize, bool) {
        (self.smp_processor_id(), false)
    }

    /// The CPU the calling thread owns exclusively, when the platform can
    /// tell at the cost of a load or two and without calling anything; the
    /// allocators' fast paths run only then, and `None` sends them to their
    /// full path, which asks [`Self::this_cpu`]. Must name only a CPU that
    /// `this_cpu()` would return as owned. The default never answers.
    #[inline]
    fn owned_cpu_fast(&self) -> Option<usize> {
        None
    }

    /// Whether some thread owns `cpu` exclusively right now (see
    /// [`Self::this_cpu`]). Must be answered with a sequentially consistent
    /// load of whatever the owner set when it took the CPU.
    #[inline]
    fn cpu_owned(&self, _cpu: usize) -> bool {
        false
    }

    /// Makes every thread that owns a CPU execute a full memory barrier
    /// before this returns: the IPI Linux sends with `on_each_cpu()`
    /// (`membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` on a host). Called
    /// only when [`Self::cpu_owned`] answered true, so a platform that never
    /// claims ownership need not implement it.
    fn sync_cpus(&self) {}

    /// `preempt_count()` of the current CPU, in Linux's bit layout (see [`preempt`]).
    fn preempt_count(&self) -> u32;

    /// `irqs_disabled()` on the current CPU.
    fn irqs_disabled(&self) -> bool;

    /// `preempt_count()` and `irqs_disabled()` together, as `might_sleep()`
    /// needs them on every sleeping allocation; override when one lookup of
    /// the current CPU can answer both.
    #[inline]
    fn atomic_state(&self) -> (u32, bool) {
        (self.preempt_count(), self.irqs_disabled())
    }

    /// [`Self::atomic_state`] of `cpu`, which the caller already knows is the
    /// current CPU (saves a second lookup on the allocation fast path).
    #[inline]
    fn atomic_state_of(&self, _cpu: usize) -> (u32, bool) {
        self.atomic_state()
    }

    /// `current`: pid and command name of the running task, for messages.
    fn current_task(&self, f: &mut dyn FnMut(TaskId<'_>)) {
        f(TaskId {
            pid: 0,
            comm: "swapper/0",
        })
    }

    /// `printk()`: one kernel log line, without the trailing newline.
    fn printk(&self, line: fmt::Arguments<'_>);

    /// `wakeup_kswapd()`: ask the node's background reclaim thread to run.
    fn wakeup_kswapd(&self, _nid: usize, _order: u32, _highest_zoneidx: usize) {}

    /// `try_to_free_pages()`: direct reclaim on behalf of a sleeping allocation.
    /// Returns the number of pages it freed.
    fn try_to_free_pages(&self, _order: u32, _gfp: crate::gfp::GfpFlags) -> usize {
        0
    }

    /// `out_of_memory()`: the OOM killer. Returns true when it freed memory.
    fn out_of_memory(&self, _order: u32, _gfp: crate::gfp::GfpFlags) -> bool {
        false
    }

    /// `cond_resched()` / `congestion_wait()`: let other work run before the
    /// allocator retries. Called only where the caller may sleep.
    fn cond_resched(&self) {}

    /// `flush_tlb_kernel_range()`: make every CPU forget its translations
    /// of kernel addresses in `[start, end)` (IPIs to the other CPUs) before
    /// returning. The vmalloc allocator calls it before it reuses an
    /// unmapped range; a machine without an MMU model need not do anything.
    fn flush_tlb_kernel_range(&self, _start: u64, _end: u64) {}

    /// `flush_tlb_mm_range()`: every CPU forgets its translations of
    /// `[start, end)` in the address space tagged `asid` (IPIs to the
    /// others) before returning. Called when a process's mappings change.
    fn flush_tlb_mm_range(&self, _asid: u16, _start: u64, _end: u64) {}

    /// Reads up to `buf.len()` bytes at `offset` of the host file `file`
    /// (the id a file was opened with) into `buf`; returns the bytes read
    /// (fewer at the end of the file). What `->readpage` does for the page
    /// cache.
    fn file_read(&self, _file: u64, _offset: u64, _buf: &mut [u8]) -> Result<usize, KmmError> {
        Err(KmmError::InvalidArgument {
            what: "this platform has no files",
        })
    }

    /// Writes `data` at `offset` of the host file `file` (`->writepage`).
    fn file_write(&self, _file: u64, _offset: u64, _data: &[u8]) -> Result<(), KmmError> {
        Err(KmmError::InvalidArgument {
            what: "this platform has no files",
        })
    }

    /// `flush_tlb_one_kernel()`: the current CPU forgets its translation of
    /// kernel address `addr` (`invlpg`; no IPI). `kunmap_atomic` needs it.
    fn flush_tlb_one_kernel(&self, _addr: u64) {}

    /// `preempt_count_add()` on the current CPU (`preempt_disable()` adds 1).
    /// False when the count cannot take it (a nesting field would overflow).
    fn preempt_count_add(&self, _val: u32) -> bool {
        true
    }

    /// `preempt_count_sub()` on the current CPU. False on underflow.
    fn preempt_count_sub(&self, _val: u32) -> bool {
        true
    }
}
