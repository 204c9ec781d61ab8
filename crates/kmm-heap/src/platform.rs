//! The hosted [`Platform`]: what kmm needs from "the machine" when the machine
//! is an ordinary process and kmm is its memory allocator.
//!
//! Nothing here may allocate from the Rust heap — this platform serves the
//! global allocator itself:
//!
//! - `smp_processor_id()`: each host thread is given a CPU the first time it
//!   asks, round robin from a global counter modulo the CPU count, and keeps
//!   it in a `const` thread-local (no destructor, so no registration and no
//!   allocation). Several threads may share a CPU: every per-CPU structure of
//!   kmm (slab arrays, per-CPU page lists) is taken under its own lock, so
//!   sharing costs contention, never correctness.
//! - `preempt_count()` is 0 and interrupts are never disabled: a host thread
//!   is always in process context, so `GFP_KERNEL` is legal everywhere.
//! - `printk()` formats into a fixed buffer on the stack and writes it to
//!   standard error with one `write(2)` call. Lines printed while the heap
//!   boots are dropped unless the heap was built `with_boot_log(true)`
//!   (Linux's `quiet`): warnings after boot always reach stderr.
//! - `cond_resched()` yields the host thread.

use core::cell::Cell;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use kmm::platform::TaskId;
use kmm::Platform;

/// The ticket the next thread that asks for a CPU gets.
static NEXT_TICKET: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's ticket, `usize::MAX` until it first asks; its CPU is the
    /// ticket modulo the CPU count (so every heap of the process agrees).
    static TICKET: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The longest `printk` line kept; longer lines are cut and end in `...`.
pub const PRINTK_LINE_MAX: usize = 512;

/// The [`Platform`] of a [`crate::KmmHeap`]: host threads as CPUs of one
/// node, process context everywhere, `printk` to standard error.
pub struct HostPlatform {
    nr_cpus: usize,
    boot_log: bool,
    booted: AtomicBool,
    lines: AtomicU64,
}

impl HostPlatform {
    /// A platform of `nr_cpus` CPUs (1 to [`kmm::NR_CPUS`]); boot messages
    /// reach stderr only when `boot_log` is set.
    pub const fn new(nr_cpus: usize, boot_log: bool) -> HostPlatform {
        HostPlatform {
            nr_cpus: if nr_cpus == 0 { 1 } else { nr_cpus },
            boot_log,
            booted: AtomicBool::new(false),
            lines: AtomicU64::new(0),
        }
    }

    /// Number of CPUs threads are spread over.
    pub fn nr_cpus(&self) -> usize {
        self.nr_cpus
    }

    /// Ends the boot phase: from now on every `printk` line is written.
    pub fn set_booted(&self) {
        self.booted.store(true, Relaxed);
    }

    /// `printk` lines written to stderr since boot (boot messages excluded
    /// when they were dropped).
    pub fn lines_printed(&self) -> u64 {
        self.lines.load(Relaxed)
    }

    /// The CPU the calling thread runs as (assigning one on first use).
    #[inline]
    pub fn this_cpu(&self) -> usize {
        let ticket = TICKET
            .try_with(|c| {
                let t = c.get();
                if t != usize::MAX {
                    t
                } else {
                    let t = NEXT_TICKET.fetch_add(1, Relaxed) & (usize::MAX >> 1);
                    c.set(t);
                    t
                }
            })
            // A const thread-local without a destructor is never torn down;
            // should it be unreachable anyway, CPU 0 is always valid.
            .unwrap_or(0);
        let nr = self.nr_cpus;
        if nr.is_power_of_two() {
            ticket & (nr - 1)
        } else {
            ticket % nr
        }
    }
}

impl Platform for HostPlatform {
    #[inline]
    fn smp_processor_id(&self) -> usize {
        self.this_cpu()
    }

    #[inline]
    fn preempt_count(&self) -> u32 {
        0
    }

    #[inline]
    fn irqs_disabled(&self) -> bool {
        false
    }

    #[inline]
    fn atomic_state(&self) -> (u32, bool) {
        (0, false)
    }

    #[inline]
    fn atomic_state_of(&self, _cpu: usize) -> (u32, bool) {
        (0, false)
    }

    fn current_task(&self, f: &mut dyn FnMut(TaskId<'_>)) {
        // SAFETY: getpid() takes no arguments, touches no memory of ours and
        // cannot fail.
        let pid = unsafe { libc::getpid() };
        f(TaskId {
            pid: pid as u32,
            comm: "kmm-heap",
        })
    }

    fn printk(&self, line: fmt::Arguments<'_>) {
        if !self.boot_log && !self.booted.load(Relaxed) {
            return;
        }
        let mut buf = LineBuf {
            bytes: [0; PRINTK_LINE_MAX + 1],
            len: 0,
            cut: false,
        };
        let _ = buf.write_fmt(line);
        self.lines.fetch_add(1, Relaxed);
        write_stderr(buf.finish());
    }

    fn cond_resched(&self) {
        std::thread::yield_now();
    }
}

/// A line being formatted on the stack.
struct LineBuf {
    bytes: [u8; PRINTK_LINE_MAX + 1],
    len: usize,
    cut: bool,
}

impl LineBuf {
    /// The line with its newline (and `...` when it was cut).
    fn finish(&mut self) -> &[u8] {
        if self.cut {
            let at = self.len.min(PRINTK_LINE_MAX - 3);
            self.bytes[at..at + 3].copy_from_slice(b"...");
            self.len = at + 3;
        }
        self.bytes[self.len] = b'\n';
        &self.bytes[..self.len + 1]
    }
}

impl Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = PRINTK_LINE_MAX - self.len;
        let n = s.len().min(room);
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() {
            self.cut = true;
            return Err(fmt::Error);
        }
        Ok(())
    }
}

/// Writes `bytes` to file descriptor 2, retrying short writes; errors are
/// ignored (there is nowhere left to report them).
pub(crate) fn write_stderr(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a live slice; write(2) reads at most `len` bytes
        // from it and keeps no reference.
        let n = unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            return;
        }
        bytes = bytes.get(n as usize..).unwrap_or(&[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_not_overflowed() {
        let mut b = LineBuf {
            bytes: [0; PRINTK_LINE_MAX + 1],
            len: 0,
            cut: false,
        };
        let long = "x".repeat(2 * PRINTK_LINE_MAX);
        let _ = b.write_fmt(format_args!("{long}"));
        let out = b.finish();
        assert_eq!(out.len(), PRINTK_LINE_MAX + 1);
        assert!(out.ends_with(b"...\n"));
    }

    #[test]
    fn threads_get_cpus_below_the_count() {
        let p = HostPlatform::new(3, false);
        let cpus: Vec<usize> = (0..10)
            .map(|_| std::thread::spawn(|| HostPlatform::new(3, false).this_cpu()))
            .map(|h| h.join().unwrap())
            .collect();
        assert!(cpus.iter().all(|&c| c < 3));
        assert_eq!(p.this_cpu(), p.this_cpu(), "a thread keeps its CPU");
    }
}
