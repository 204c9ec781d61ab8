//! Tasks and the copy of an address space at `fork` (`kernel/fork.c`:
//! `dup_task_struct`, `dup_mm`, `dup_mmap`; `kernel/exit.c`).
//!
//! A task is a `task_struct` object (slab cache `task_struct`) holding its
//! pid, command name, address space and fault counters, with a kernel stack
//! of `THREAD_SIZE` ([`Kmm::alloc_thread_stack_node`]) like every Linux task.

use crate::error::KmmError;
use crate::gfp::GfpFlags;
use crate::mm::Kmm;
use crate::mm_types::TaskStruct;
use crate::platform::Platform;
use crate::slab::KmemCache;
use crate::spinlock::SpinLock;
use core::sync::atomic::{
    AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};

/// The task cache.
pub(crate) struct ForkState {
    init_lock: SpinLock<()>,
    cache: AtomicU64,
    /// Tasks alive.
    pub(crate) nr_tasks: AtomicU64,
}

impl ForkState {
    pub(crate) const fn new() -> Self {
        ForkState {
            init_lock: SpinLock::new(()),
            cache: AtomicU64::new(0),
            nr_tasks: AtomicU64::new(0),
        }
    }
}

/// The bytes of a 16-byte `comm`, NUL padded.
fn comm_words(comm: &str) -> [u64; 2] {
    let mut b = [0u8; 16];
    for (d, s) in b.iter_mut().zip(comm.bytes().take(15)) {
        *d = s;
    }
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&b[..8]);
    hi.copy_from_slice(&b[8..]);
    [u64::from_le_bytes(lo), u64::from_le_bytes(hi)]
}

impl<P: Platform> Kmm<P> {
    fn task_cache(&self) -> Result<KmemCache, KmmError> {
        if let Some(c) = KmemCache::from_raw(self.fork.cache.load(Acquire)) {
            return Ok(c);
        }
        let _g = self.fork.init_lock.lock();
        if let Some(c) = KmemCache::from_raw(self.fork.cache.load(Acquire)) {
            return Ok(c);
        }
        let c = self.kmem_cache_create(
            "task_struct",
            core::mem::size_of::<TaskStruct>(),
            64,
            crate::SlabFlags::SLAB_HWCACHE_ALIGN,
            None,
        )?;
        self.fork.cache.store(c.to_raw(), Release);
        Ok(c)
    }

    /// The `task_struct` at physical address `task`.
    pub fn task_struct(&self, task: u64) -> Result<&TaskStruct, KmmError> {
        self.mem.ram_ref::<TaskStruct>(task)
    }

    /// `dup_task_struct()`: a task object for `pid` named `comm` using
    /// address space `mm`, with its own kernel stack. Returns its physical
    /// address.
    pub fn task_alloc(&self, pid: u32, mm: u64, comm: &str) -> Result<u64, KmmError> {
        let cache = self.task_cache()?;
        let obj = self.kmem_cache_zalloc(cache, GfpFlags::GFP_KERNEL)?;
        let task = self.__pa(obj)?;
        let stack = match self.alloc_thread_stack_node(u64::from(pid), self.numa_node_id()) {
            Ok(s) => s,
            Err(e) => {
                self.kmem_cache_free(cache, obj)?;
                return Err(e);
            }
        };
        let t = self.task_struct(task)?;
        t.pid.store(u64::from(pid), Relaxed);
        // The handle is dropped: the stack is found again from task->stack
        // ([`Kmm::kernel_stack_at`]) when the task is freed.
        t.stack.store(stack.base(), Relaxed);
        self.task_set_mm(task, mm, comm)?;
        self.fork.nr_tasks.fetch_add(1, Relaxed);
        Ok(task)
    }

    /// Sets a task's address space and name (what `execve` changes).
    pub fn task_set_mm(&self, task: u64, mm: u64, comm: &str) -> Result<(), KmmError> {
        let t = self.task_struct(task)?;
        t.mm.store(mm, Relaxed);
        let w = comm_words(comm);
        t.comm[0].store(w[0], Relaxed);
        t.comm[1].store(w[1], Relaxed);
        Ok(())
    }

    /// `free_task()`: the kernel stack and the task object. The address
    /// space must have been released already.
    pub fn task_free(&self, task: u64) -> Result<(), KmmError> {
        let cache = self.task_cache()?;
        let t = self.task_struct(task)?;
        let base = t.stack.load(Relaxed);
        if base != 0 {
            let st = self.kernel_stack_at(base, t.pid.load(Relaxed))?;
            self.free_thread_stack(st)?;
        }
        t.state.store(1, Relaxed);
        self.kmem_cache_free(cache, self.__va(task)?)?;
        self.fork.nr_tasks.fetch_sub(1, Relaxed);
        Ok(())
    }

    /// Tasks alive (`nr_threads`).
    pub fn nr_tasks(&self) -> u64 {
        self.fork.nr_tasks.load(Relaxed)
    }
}
