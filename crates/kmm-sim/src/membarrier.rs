//! The host's `membarrier(2)`: how a simulated CPU's owner thread is made to
//! execute a full memory barrier from another thread, the simulator's
//! stand-in for the IPI Linux sends with `on_each_cpu()`.
//!
//! kmm lets the thread that owns a CPU touch that CPU's data without atomic
//! read-modify-writes (see `kmm::Platform::this_cpu`). Another thread that
//! must reach the same data calls [`sync_cpus`]; without a working
//! `membarrier()` the simulator claims no ownership at all and every access
//! takes a lock.

use std::sync::OnceLock;

/// `MEMBARRIER_CMD_PRIVATE_EXPEDITED`.
#[cfg(target_os = "linux")]
const CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
/// `MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED`.
#[cfg(target_os = "linux")]
const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

static REGISTERED: OnceLock<bool> = OnceLock::new();

/// Whether this process can use [`sync_cpus`] (registers on the first call).
pub fn available() -> bool {
    *REGISTERED.get_or_init(register)
}

#[cfg(target_os = "linux")]
fn register() -> bool {
    if std::env::var_os("KMM_NO_MEMBARRIER").is_some() {
        return false;
    }
    // SAFETY: membarrier(2) takes two integers and touches no memory of ours;
    // an unknown command fails with EINVAL, which we treat as "unavailable".
    let r = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            CMD_REGISTER_PRIVATE_EXPEDITED,
            0 as libc::c_long,
            0 as libc::c_long,
        )
    };
    r == 0
}

#[cfg(not(target_os = "linux"))]
fn register() -> bool {
    false
}

/// Every thread of this process that is running on a host CPU executes a
/// full memory barrier before this returns (threads not running get one
/// when they are next scheduled). Only meaningful when [`available`].
#[cfg(target_os = "linux")]
pub fn sync_cpus() {
    // SAFETY: as in `register`; the process registered (`available()` was
    // true before any CPU was claimed as owned), so the command cannot fail
    // with EPERM.
    let r = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            CMD_PRIVATE_EXPEDITED,
            0 as libc::c_long,
            0 as libc::c_long,
        )
    };
    if r != 0 {
        // Cannot happen after a successful registration; a full fence on
        // this side is the best left to do.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }
}

/// No `membarrier()`: [`available`] is false, so this is never needed.
#[cfg(not(target_os = "linux"))]
pub fn sync_cpus() {
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}
