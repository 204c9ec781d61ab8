//! Spin locks (`include/linux/spinlock.h`).
//!
//! Zone locks use the `spin` crate. Per-CPU data (the per-CPU page lists,
//! slab arrays) is protected by [`crate::local_lock::LocalLock`] instead.

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
