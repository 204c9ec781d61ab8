//! CPU-local locks (`include/linux/local_lock.h`, `local_lock_t`).
//!
//! Linux protects a CPU's own data — the per-CPU page lists, SLAB's per-CPU
//! object arrays — by disabling preemption or interrupts on that CPU: no
//! atomic instruction, because no other CPU touches the data. When another
//! CPU must (`drain_all_pages()`, `kmem_cache_shrink()`), Linux sends it an
//! IPI and lets it do the work itself.
//!
//! kmm's CPUs are threads, and a thread that is not its CPU's exclusive owner
//! may still act as that CPU. So a [`LocalLock`] has two words:
//!
//! * `local`, written only by the thread that owns the CPU exclusively (the
//!   platform says so through [`Platform::this_cpu`]). Its fast path is a
//!   plain store, a load and a plain store: the cost of Linux's
//!   `local_lock()`.
//! * `remote`, a spin lock every other thread takes (and the owner too, when
//!   it finds the lock held). A remote taker that finds the CPU owned calls
//!   [`Platform::sync_cpus`] — the IPI Linux would send, `membarrier()` on a
//!   host — and waits for the owner to leave.
//!
//! Why it excludes: the owner stores `local = 1` and then loads `remote`; a
//! remote taker stores `remote = 1` (a locked instruction, a full barrier)
//! and then, after `sync_cpus()` has made the owner execute a full barrier,
//! loads `local`. Whatever the interleaving, one of the two sees the other's
//! store: either the owner backs off, or the remote taker waits.

use crate::platform::Platform;
use core::sync::atomic::{compiler_fence, AtomicU32, Ordering};

/// `local_lock_t` for data in simulated RAM: see the module docs.
#[repr(C)]
#[derive(Default)]
pub(crate) struct LocalLock {
    /// 1 while the owning thread is inside (written by the owner only).
    local: AtomicU32,
    /// A spin lock for everyone else (and the owner when it is held).
    remote: AtomicU32,
}

impl LocalLock {
    /// `local_lock()` of CPU `cpu`'s data. `owner` is whether the caller owns
    /// `cpu` exclusively ([`Platform::this_cpu`] said so for this very CPU).
    #[inline(always)]
    pub(crate) fn lock<P: Platform>(
        &self,
        platform: &P,
        cpu: usize,
        owner: bool,
    ) -> LocalGuard<'_> {
        if owner {
            if let Some(g) = self.try_lock_owner() {
                return g;
            }
            self.spin_remote();
            return LocalGuard(&self.remote);
        }
        self.lock_remote(platform, cpu)
    }

    /// The owner's uncontended `local_lock()`, or `None` (and the lock left
    /// as it was) while another thread holds the remote side. Only the
    /// thread that owns the CPU exclusively may call it.
    #[inline(always)]
    pub(crate) fn try_lock_owner(&self) -> Option<LocalGuard<'_>> {
        self.local.store(1, Ordering::Relaxed);
        // Keep the store before the load below in the compiled code; the
        // hardware may still reorder them, which `sync_cpus()` covers.
        compiler_fence(Ordering::SeqCst);
        if self.remote.load(Ordering::Acquire) == 0 {
            return Some(LocalGuard(&self.local));
        }
        self.local.store(0, Ordering::Release);
        None
    }

    /// The lock of CPU `cpu`'s data, taken by code that may run on any CPU
    /// (a drain, a walk over every CPU): as the owner when the caller owns
    /// `cpu`, from outside otherwise.
    #[inline]
    pub(crate) fn lock_any<P: Platform>(&self, platform: &P, cpu: usize) -> LocalGuard<'_> {
        let (me, owner) = platform.this_cpu();
        self.lock(platform, cpu, owner && me == cpu)
    }

    /// The lock as taken from another CPU (or by a thread that does not own
    /// `cpu`): the spin lock, then the owner, if any, is made to leave. On a
    /// platform that never claims ownership this is a plain spin lock.
    #[inline]
    pub(crate) fn lock_remote<P: Platform>(&self, platform: &P, cpu: usize) -> LocalGuard<'_> {
        self.spin_remote();
        if platform.cpu_owned(cpu) {
            self.wait_for_owner(platform);
        }
        LocalGuard(&self.remote)
    }

    #[cold]
    #[inline(never)]
    fn wait_for_owner<P: Platform>(&self, platform: &P) {
        platform.sync_cpus();
        while self.local.load(Ordering::Acquire) != 0 {
            core::hint::spin_loop();
        }
    }

    #[inline]
    fn spin_remote(&self) {
        if self
            .remote
            .compare_exchange_weak(0, 1, Ordering::SeqCst, Ordering::Relaxed)
            .is_err()
        {
            self.spin_remote_contended();
        }
    }

    #[cold]
    #[inline(never)]
    fn spin_remote_contended(&self) {
        while self
            .remote
            .compare_exchange_weak(0, 1, Ordering::SeqCst, Ordering::Relaxed)
            .is_err()
        {
            while self.remote.load(Ordering::Relaxed) != 0 {
                <crate::spinlock::Relax as spin::RelaxStrategy>::relax();
            }
        }
    }
}

/// Releases a [`LocalLock`] on drop (`local_unlock()`).
pub(crate) struct LocalGuard<'a>(&'a AtomicU32);

impl Drop for LocalGuard<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::fmt;
    use core::sync::atomic::AtomicUsize;
    use std::sync::atomic::fence;

    /// A platform whose CPU 0 is owned; it counts `sync_cpus()` calls. (The
    /// two-thread exclusion test runs on the simulator, whose `sync_cpus()`
    /// is a real `membarrier()`: `kmm-sim/tests/local_lock.rs`.)
    struct Two(AtomicUsize);
    impl Platform for Two {
        fn smp_processor_id(&self) -> usize {
            0
        }
        fn preempt_count(&self) -> u32 {
            0
        }
        fn irqs_disabled(&self) -> bool {
            false
        }
        fn printk(&self, _line: fmt::Arguments<'_>) {}
        fn cpu_owned(&self, _cpu: usize) -> bool {
            true
        }
        fn sync_cpus(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
        }
    }

    #[test]
    fn owner_backs_off_while_remote_holds_it() {
        let p = Two(AtomicUsize::new(0));
        let lock = LocalLock::default();
        let g = lock.lock(&p, 0, false);
        assert_eq!(lock.remote.load(Ordering::Relaxed), 1);
        assert_eq!(
            p.0.load(Ordering::Relaxed),
            1,
            "a remote taker syncs the owner"
        );
        drop(g);
        let g = lock.lock(&p, 0, true);
        assert_eq!(lock.local.load(Ordering::Relaxed), 1);
        assert_eq!(lock.remote.load(Ordering::Relaxed), 0);
        drop(g);
        assert_eq!(lock.local.load(Ordering::Relaxed), 0);
    }
}
