//! Per-CPU counters: `lib/percpu_counter.c` (`include/linux/percpu_counter.h`).
//!
//! A [`PercpuCounter`] is a global count plus one signed delta per CPU, kept
//! in per-CPU memory from [`Kmm::__alloc_percpu`]. Adding touches only the
//! calling CPU's delta until its magnitude reaches the batch, then folds it
//! into the global count. [`Kmm::percpu_counter_read`] is cheap and
//! approximate (off by less than `batch * nr_cpus`);
//! [`Kmm::percpu_counter_sum`] is exact.
//!
//! The deltas are 64-bit words in simulated RAM updated with atomic
//! instructions, so CPUs running on different host threads at once are safe
//! (Linux relies on `preempt_disable()` and the per-CPU word being private).

use crate::error::KmmError;
use crate::mm::Kmm;
use crate::percpu::PercpuPtr;
use crate::platform::Platform;
use crate::spinlock::SpinLock;
use core::sync::atomic::{AtomicI64, Ordering};

/// `struct percpu_counter`.
#[derive(Debug)]
pub struct PercpuCounter {
    /// `fbc->lock`: serialises folds against `percpu_counter_sum`/`_set`.
    lock: SpinLock<()>,
    /// `fbc->count`.
    count: AtomicI64,
    /// `fbc->counters`: one `s64` per CPU.
    counters: PercpuPtr,
}

impl PercpuCounter {
    /// The per-CPU deltas (`fbc->counters`).
    pub fn counters(&self) -> PercpuPtr {
        self.counters
    }
}

impl<P: Platform> Kmm<P> {
    /// `percpu_counter_batch`: `max(32, 2 * nr_cpus)`.
    pub fn percpu_counter_batch(&self) -> i64 {
        32.max(2 * self.nr_cpu_ids() as i64)
    }

    /// `percpu_counter_init(fbc, amount, gfp)`: a counter starting at `amount`.
    pub fn percpu_counter_init(&self, amount: i64) -> Result<PercpuCounter, KmmError> {
        Ok(PercpuCounter {
            lock: SpinLock::new(()),
            count: AtomicI64::new(amount),
            counters: self.alloc_percpu::<i64>()?,
        })
    }

    /// `percpu_counter_destroy()`: frees the per-CPU deltas.
    pub fn percpu_counter_destroy(&self, fbc: PercpuCounter) -> Result<(), KmmError> {
        self.free_percpu(fbc.counters)
    }

    fn pcpu_delta(
        &self,
        fbc: &PercpuCounter,
        cpu: usize,
    ) -> Result<&core::sync::atomic::AtomicU64, KmmError> {
        self.per_cpu_u64(fbc.counters, cpu, 0)
    }

    /// `percpu_counter_add_batch()`: adds `amount` to the calling CPU's delta,
    /// folding the delta into the global count once `|delta| >= batch`.
    pub fn percpu_counter_add_batch(
        &self,
        fbc: &PercpuCounter,
        amount: i64,
        batch: i64,
    ) -> Result<(), KmmError> {
        let cpu = self.platform.smp_processor_id();
        let w = self.pcpu_delta(fbc, cpu)?;
        let new = (w.fetch_add(amount as u64, Ordering::Relaxed) as i64).wrapping_add(amount);
        if new.abs() >= batch {
            let _g = fbc.lock.lock();
            let delta = w.swap(0, Ordering::Relaxed) as i64;
            fbc.count.fetch_add(delta, Ordering::Relaxed);
        }
        Ok(())
    }

    /// `percpu_counter_add()`: [`Self::percpu_counter_add_batch`] with
    /// [`Self::percpu_counter_batch`].
    pub fn percpu_counter_add(&self, fbc: &PercpuCounter, amount: i64) -> Result<(), KmmError> {
        self.percpu_counter_add_batch(fbc, amount, self.percpu_counter_batch())
    }

    /// `percpu_counter_inc()`.
    pub fn percpu_counter_inc(&self, fbc: &PercpuCounter) -> Result<(), KmmError> {
        self.percpu_counter_add(fbc, 1)
    }

    /// `percpu_counter_dec()`.
    pub fn percpu_counter_dec(&self, fbc: &PercpuCounter) -> Result<(), KmmError> {
        self.percpu_counter_add(fbc, -1)
    }

    /// `percpu_counter_sub()`.
    pub fn percpu_counter_sub(&self, fbc: &PercpuCounter, amount: i64) -> Result<(), KmmError> {
        self.percpu_counter_add(fbc, amount.wrapping_neg())
    }

    /// `percpu_counter_read()`: the global count only (fast, approximate).
    pub fn percpu_counter_read(&self, fbc: &PercpuCounter) -> i64 {
        fbc.count.load(Ordering::Relaxed)
    }

    /// `percpu_counter_read_positive()`: [`Self::percpu_counter_read`], never negative.
    pub fn percpu_counter_read_positive(&self, fbc: &PercpuCounter) -> i64 {
        self.percpu_counter_read(fbc).max(0)
    }

    /// `percpu_counter_sum()`: the global count plus every CPU's delta (exact
    /// when no CPU is adding).
    pub fn percpu_counter_sum(&self, fbc: &PercpuCounter) -> Result<i64, KmmError> {
        let _g = fbc.lock.lock();
        let mut ret = fbc.count.load(Ordering::Relaxed);
        for cpu in 0..self.nr_cpu_ids() {
            ret = ret.wrapping_add(self.pcpu_delta(fbc, cpu)?.load(Ordering::Relaxed) as i64);
        }
        Ok(ret)
    }

    /// `percpu_counter_sum_positive()`.
    pub fn percpu_counter_sum_positive(&self, fbc: &PercpuCounter) -> Result<i64, KmmError> {
        Ok(self.percpu_counter_sum(fbc)?.max(0))
    }

    /// `percpu_counter_set()`: zeroes every delta and sets the global count.
    pub fn percpu_counter_set(&self, fbc: &PercpuCounter, amount: i64) -> Result<(), KmmError> {
        let _g = fbc.lock.lock();
        for cpu in 0..self.nr_cpu_ids() {
            self.pcpu_delta(fbc, cpu)?.store(0, Ordering::Relaxed);
        }
        fbc.count.store(amount, Ordering::Relaxed);
        Ok(())
    }

    /// `__percpu_counter_compare()`: compares with `rhs`, using the fast read
    /// when it is further than `batch * nr_cpus` away, else the exact sum.
    pub fn percpu_counter_compare(
        &self,
        fbc: &PercpuCounter,
        rhs: i64,
    ) -> Result<core::cmp::Ordering, KmmError> {
        let count = self.percpu_counter_read(fbc);
        let slack = self.percpu_counter_batch() * self.nr_cpu_ids() as i64;
        if (count - rhs).abs() > slack {
            return Ok(count.cmp(&rhs));
        }
        Ok(self.percpu_counter_sum(fbc)?.cmp(&rhs))
    }
}
