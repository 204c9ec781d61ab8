//! Spin locks (`include/linux/spinlock.h`).
//!
//! Zone locks use the `spin` crate. The per-CPU page lists live inside simulated
//! RAM, where only atomics may be stored, so they carry a bare lock word
//! (`RawSpinLock`).

use core::sync::atomic::{AtomicU32, Ordering};

/// How a contended lock waits: a pause hint, and with `std` a yield of the host
/// thread, since a simulated CPU's host thread can be descheduled while holding
/// a lock (a real kernel disables preemption instead).
pub struct Relax;

impl spin::RelaxStrategy for Relax {
    #[inline]
    fn relax() {
        #[cfg(feature = "std")]
        {
            extern crate std;
            std::thread::yield_now();
        }
        #[cfg(not(feature = "std"))]
        core::hint::spin_loop();
    }
}

/// `spinlock_t` protecting plain Rust data.
pub type SpinLock<T> = spin::mutex::SpinMutex<T, Relax>;

/// `arch_spinlock_t`: a lock word that can live in simulated RAM.
#[repr(transparent)]
pub(crate) struct RawSpinLock(AtomicU32);

impl RawSpinLock {
    /// `spin_lock()`.
    #[inline]
    pub(crate) fn lock(&self) -> RawSpinGuard<'_> {
        while self
            .0
            .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            while self.0.load(Ordering::Relaxed) != 0 {
                <Relax as spin::RelaxStrategy>::relax();
            }
        }
        RawSpinGuard(self)
    }
}

/// Releases the lock on drop (`spin_unlock()`).
pub(crate) struct RawSpinGuard<'a>(&'a RawSpinLock);

impl Drop for RawSpinGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0 .0.store(0, Ordering::Release);
    }
}
