//! The simulated CPUs: host threads that each claim one CPU of a machine.
//!
//! In Linux every CPU has a `preempt_count` (how deeply preemption, softirqs,
//! hard interrupts and NMIs are nested on it), an interrupt flag
//! (`irqs_disabled()`), and a `current` task. Code reads "its" CPU with
//! `smp_processor_id()` and keeps it with `get_cpu()` / `preempt_disable()`.
//! Per-CPU variables (`DEFINE_PER_CPU`) give every CPU its own copy of some
//! data, reached with `get_cpu_var()` / `put_cpu_var()` and `per_cpu()`.
//!
//! Here a [`Cpus`] is one machine's set of CPUs. A host thread becomes CPU `n`
//! by [`Cpus::bind`]ing it; from then on every query on that machine
//! ([`Cpus::smp_processor_id`], [`Cpus::preempt_count`], [`Cpus::context`],
//! ...) answers for CPU `n`. **A thread that bound nothing runs as the boot
//! CPU 0**, as code before `smp_init()` does in Linux: that keeps single
//! threaded tools and tests free of set-up. Unbound threads all share CPU 0,
//! so threads that run at the same time should each bind their own CPU
//! ([`Cpus::run_on_cpu`] and [`Cpus::on_each_cpu`] do that for you).
//!
//! The Linux operations that come in pairs are RAII guards here:
//!
//! | Linux                                   | kmm-sim                                   |
//! |-----------------------------------------|-------------------------------------------|
//! | `preempt_disable()` / `preempt_enable()`| [`Cpus::preempt_disable`] → [`PreemptGuard`] |
//! | `get_cpu()` / `put_cpu()`               | [`Cpus::get_cpu`] → [`PreemptGuard::cpu`] |
//! | `local_bh_disable()` / `local_bh_enable()` | [`Cpus::local_bh_disable`]             |
//! | `__do_softirq()` entry / exit           | [`Cpus::softirq_enter`]                   |
//! | `irq_enter()` / `irq_exit()`            | [`Cpus::irq_enter`] → [`HardirqGuard`]    |
//! | `nmi_enter()` / `nmi_exit()`            | [`Cpus::nmi_enter`]                       |
//! | `local_irq_save()` / `local_irq_restore()` | [`Cpus::local_irq_save`] → [`IrqSaveGuard`] |
//! | `DEFINE_PER_CPU(type, name)`            | [`PerCpu::new`]                           |
//! | `get_cpu_var()` / `put_cpu_var()`       | [`PerCpu::get_cpu_var`] → [`CpuVarGuard`] |
//! | `per_cpu(var, cpu)`                     | [`PerCpu::per_cpu`]                       |
//! | `for_each_online_cpu(cpu)`              | [`Cpus::for_each_online_cpu`]             |
//! | `smp_call_function_single()`            | [`Cpus::run_on_cpu`]                      |
//! | `on_each_cpu()`                         | [`Cpus::on_each_cpu`]                     |
//!
//! # Differences from Linux, and why
//!
//! - A per-CPU variable's copies each sit behind their own uncontended lock.
//!   Linux needs none because only the owning CPU touches its copy with
//!   preemption off; a host thread, though, can always be interrupted by
//!   another host thread reading the copy with `per_cpu()`, and safe Rust
//!   must stay sound then. The lock also catches what Linux would silently
//!   corrupt: taking the same variable twice on one CPU returns
//!   [`CpuError::Nested`] instead of deadlocking.
//! - Guards are `!Send`: a guard taken on one CPU cannot be released on
//!   another, which Linux only checks with `CONFIG_DEBUG_PREEMPT`.
//! - A nesting field that is full (256 `preempt_disable()`s, 16 `irq_enter()`s)
//!   is not overflowed into the next field: the guard does nothing and
//!   [`Cpus::warnings`] counts the event (Linux warns under
//!   `CONFIG_DEBUG_PREEMPT`). Unbalanced raw [`Cpus::preempt_count_sub`]
//!   returns an error instead of wrapping.
//! - All CPUs are always online: there is no CPU hotplug.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut, Range};
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError, TryLockError};
use std::thread;

use kmm::platform::preempt::{
    HARDIRQ_MASK, HARDIRQ_OFFSET, NMI_MASK, NMI_OFFSET, PREEMPT_MASK, PREEMPT_OFFSET, SOFTIRQ_MASK,
    SOFTIRQ_OFFSET,
};

/// Linux's `SOFTIRQ_DISABLE_OFFSET`: what one `local_bh_disable()` adds to the
/// preempt count. It is twice [`SOFTIRQ_OFFSET`] so that bit 8 alone tells
/// "serving a softirq" (`in_serving_softirq()`) apart from "softirqs disabled".
pub const SOFTIRQ_DISABLE_OFFSET: u32 = 2 * SOFTIRQ_OFFSET;

/// Linux's `NR_CPUS`: the most CPUs a machine may have, and the number of
/// copies [`PerCpu::new`] makes.
pub const NR_CPUS: usize = 64;

/// Linux's `TASK_COMM_LEN`: a task's command name holds at most 15 bytes plus
/// the terminating NUL.
pub const TASK_COMM_LEN: usize = 16;

/// Every bit that belongs to one of the four nesting fields.
const COUNT_FIELDS: [u32; 4] = [PREEMPT_MASK, SOFTIRQ_MASK, HARDIRQ_MASK, NMI_MASK];
const ALL_FIELDS: u32 = PREEMPT_MASK | SOFTIRQ_MASK | HARDIRQ_MASK | NMI_MASK;

/// `count + val`, or `None` when a field would carry into the next one or
/// `val` has bits outside the fields.
fn checked_count_add(count: u32, val: u32) -> Option<u32> {
    if val & !ALL_FIELDS != 0 {
        return None;
    }
    for mask in COUNT_FIELDS {
        if (count & mask) > mask - (val & mask) {
            return None;
        }
    }
    Some(count + val)
}

/// `count - val`, or `None` when a field would go below zero or `val` has
/// bits outside the fields.
fn checked_count_sub(count: u32, val: u32) -> Option<u32> {
    if val & !ALL_FIELDS != 0 {
        return None;
    }
    for mask in COUNT_FIELDS {
        if (count & mask) < (val & mask) {
            return None;
        }
    }
    Some(count - val)
}

/// What went wrong with a CPU operation.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CpuError {
    /// [`Cpus::new`] was asked for 0 CPUs or more than [`NR_CPUS`].
    InvalidNrCpus {
        /// The number asked for.
        nr: usize,
    },
    /// The CPU number is not below `nr_cpu_ids` (or, for a [`PerCpu`], not
    /// below its number of copies).
    NoSuchCpu {
        /// The CPU asked for.
        cpu: usize,
        /// How many there are.
        nr_cpu_ids: usize,
    },
    /// Another host thread has bound this CPU, or its last owner left it
    /// with preemption or interrupts still disabled.
    Busy {
        /// The CPU asked for.
        cpu: usize,
    },
    /// The calling thread is already bound to a CPU of this machine.
    AlreadyBound {
        /// The CPU it is bound to.
        cpu: usize,
    },
    /// A raw [`Cpus::preempt_count_add`] would overflow a nesting field.
    PreemptCountOverflow {
        /// The CPU.
        cpu: usize,
        /// Its preempt count before the call.
        count: u32,
        /// The value that was to be added.
        val: u32,
    },
    /// A raw [`Cpus::preempt_count_sub`] would take a nesting field below
    /// zero: an enable without its disable.
    PreemptCountUnderflow {
        /// The CPU.
        cpu: usize,
        /// Its preempt count before the call.
        count: u32,
        /// The value that was to be subtracted.
        val: u32,
    },
    /// This thread already holds this CPU's copy of the per-CPU variable:
    /// `get_cpu_var()` inside `get_cpu_var()` of the same variable, which
    /// would deadlock.
    Nested {
        /// The CPU whose copy is held.
        cpu: usize,
    },
    /// The host could not start a thread to run as this CPU.
    Spawn {
        /// The CPU.
        cpu: usize,
        /// The host's error.
        kind: io::ErrorKind,
    },
}

impl fmt::Display for CpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CpuError::InvalidNrCpus { nr } => {
                write!(f, "a machine has 1 to {NR_CPUS} CPUs, not {nr}")
            }
            CpuError::NoSuchCpu { cpu, nr_cpu_ids } => {
                write!(f, "CPU {cpu} does not exist (nr_cpu_ids={nr_cpu_ids})")
            }
            CpuError::Busy { cpu } => write!(f, "CPU {cpu} is bound by another thread"),
            CpuError::AlreadyBound { cpu } => {
                write!(
                    f,
                    "this thread is already bound to CPU {cpu} of this machine"
                )
            }
            CpuError::PreemptCountOverflow { cpu, count, val } => write!(
                f,
                "BUG: preempt count overflow on CPU {cpu}: {count:#010x} + {val:#x}"
            ),
            CpuError::PreemptCountUnderflow { cpu, count, val } => write!(
                f,
                "BUG: preempt count underflow on CPU {cpu}: {count:#010x} - {val:#x}"
            ),
            CpuError::Nested { cpu } => write!(
                f,
                "BUG: nested get_cpu_var() of one per-CPU variable on CPU {cpu} would deadlock"
            ),
            CpuError::Spawn { cpu, kind } => {
                write!(f, "cannot start a host thread for CPU {cpu}: {kind}")
            }
        }
    }
}

impl std::error::Error for CpuError {}

/// What kind of code is running on a CPU, as Linux's `in_*()` tests classify
/// it (the innermost context wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Context {
    /// Task context with preemption and interrupts enabled: may sleep
    /// (`preemptible()`).
    Process,
    /// Task context that may not sleep: preemption, softirqs or interrupts
    /// disabled (`in_atomic() || irqs_disabled()` outside any interrupt).
    Atomic,
    /// Serving a softirq (`in_serving_softirq()`).
    Softirq,
    /// Inside a hard interrupt handler (`in_hardirq()`).
    Hardirq,
    /// Inside a non-maskable interrupt (`in_nmi()`).
    Nmi,
}

impl Context {
    /// Classifies a preempt count and interrupt flag.
    pub const fn classify(preempt_count: u32, irqs_disabled: bool) -> Context {
        if preempt_count & NMI_MASK != 0 {
            Context::Nmi
        } else if preempt_count & HARDIRQ_MASK != 0 {
            Context::Hardirq
        } else if preempt_count & SOFTIRQ_OFFSET != 0 {
            Context::Softirq
        } else if preempt_count != 0 || irqs_disabled {
            Context::Atomic
        } else {
            Context::Process
        }
    }

    /// Lower-case name for messages: `process`, `atomic`, `softirq`,
    /// `hardirq`, `nmi`.
    pub const fn name(self) -> &'static str {
        match self {
            Context::Process => "process",
            Context::Atomic => "atomic",
            Context::Softirq => "softirq",
            Context::Hardirq => "hardirq",
            Context::Nmi => "nmi",
        }
    }
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The task running on a CPU: Linux's `current->pid` and `current->comm`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Task {
    pid: u32,
    /// NUL-padded UTF-8, at most `TASK_COMM_LEN - 1` bytes.
    comm: [u8; TASK_COMM_LEN],
}

impl Task {
    /// A task with this pid and command name. Like Linux's `set_task_comm()`,
    /// the name is cut to 15 bytes (at a character boundary) and at any NUL.
    pub fn new(pid: u32, comm: &str) -> Task {
        let comm = comm.split('\0').next().unwrap_or("");
        let mut len = comm.len().min(TASK_COMM_LEN - 1);
        while !comm.is_char_boundary(len) {
            len -= 1;
        }
        let mut bytes = [0u8; TASK_COMM_LEN];
        bytes[..len].copy_from_slice(&comm.as_bytes()[..len]);
        Task { pid, comm: bytes }
    }

    /// CPU `cpu`'s idle task, `swapper/N` with pid 0, which is `current` on
    /// a CPU that runs nothing else (Linux's `idle_task(cpu)`).
    pub fn idle(cpu: usize) -> Task {
        let mut buf = [0u8; TASK_COMM_LEN];
        let mut w = &mut buf[..TASK_COMM_LEN - 1];
        // Cannot fail: "swapper/63" fits in 15 bytes.
        let _ = io::Write::write_fmt(&mut w, format_args!("swapper/{cpu}"));
        Task { pid: 0, comm: buf }
    }

    /// `task->pid`.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `task->comm`: the command name.
    pub fn comm(&self) -> &str {
        let len = self
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(TASK_COMM_LEN);
        // Always valid: `new` and `idle` store whole UTF-8 characters.
        std::str::from_utf8(&self.comm[..len]).unwrap_or("")
    }
}

impl fmt::Debug for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("pid", &self.pid)
            .field("comm", &self.comm())
            .finish()
    }
}

/// The `current` task of one CPU, readable from any thread without a lock.
///
/// A sequence lock built from atomics: writers make the sequence odd, store,
/// and make it even again; readers retry when they saw it odd or changed.
struct TaskCell {
    seq: AtomicU32,
    pid: AtomicU32,
    comm: [AtomicU64; 2],
}

impl TaskCell {
    fn new(task: Task) -> TaskCell {
        let (lo, hi) = Self::split(&task);
        TaskCell {
            seq: AtomicU32::new(0),
            pid: AtomicU32::new(task.pid),
            comm: [AtomicU64::new(lo), AtomicU64::new(hi)],
        }
    }

    fn split(task: &Task) -> (u64, u64) {
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        lo.copy_from_slice(&task.comm[..8]);
        hi.copy_from_slice(&task.comm[8..]);
        (u64::from_le_bytes(lo), u64::from_le_bytes(hi))
    }

    fn load(&self) -> Task {
        loop {
            let seq = self.seq.load(Ordering::Acquire);
            if seq & 1 == 0 {
                let pid = self.pid.load(Ordering::Relaxed);
                let lo = self.comm[0].load(Ordering::Relaxed);
                let hi = self.comm[1].load(Ordering::Relaxed);
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == seq {
                    let mut comm = [0u8; TASK_COMM_LEN];
                    comm[..8].copy_from_slice(&lo.to_le_bytes());
                    comm[8..].copy_from_slice(&hi.to_le_bytes());
                    return Task { pid, comm };
                }
            }
            std::hint::spin_loop();
        }
    }

    fn store(&self, task: Task) -> Task {
        // Writers exclude each other by making the sequence odd.
        let mut seq = self.seq.load(Ordering::Relaxed);
        loop {
            if seq & 1 == 0 {
                match self.seq.compare_exchange_weak(
                    seq,
                    seq.wrapping_add(1),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(now) => seq = now,
                }
            } else {
                std::hint::spin_loop();
                seq = self.seq.load(Ordering::Relaxed);
            }
        }
        fence(Ordering::Release);
        let old_pid = self.pid.load(Ordering::Relaxed);
        let old = [
            self.comm[0].load(Ordering::Relaxed),
            self.comm[1].load(Ordering::Relaxed),
        ];
        let (lo, hi) = Self::split(&task);
        self.pid.store(task.pid, Ordering::Relaxed);
        self.comm[0].store(lo, Ordering::Relaxed);
        self.comm[1].store(hi, Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
        let mut comm = [0u8; TASK_COMM_LEN];
        comm[..8].copy_from_slice(&old[0].to_le_bytes());
        comm[8..].copy_from_slice(&old[1].to_le_bytes());
        Task { pid: old_pid, comm }
    }
}

/// Nobody has bound the CPU.
const FREE: usize = 0;
/// The last owner unbound the CPU while it was not quiescent; it can be
/// bound again once its preempt count is 0 and interrupts are enabled.
const LEFT_BUSY: usize = usize::MAX;

/// One CPU's state, alone on its cache lines.
#[repr(align(128))]
struct CpuState {
    /// Linux's `preempt_count`, in its bit layout.
    preempt_count: AtomicU32,
    /// Linux's `irqs_disabled()` (the IF flag).
    irqs_disabled: AtomicBool,
    /// Token of the thread that bound this CPU, [`FREE`] or [`LEFT_BUSY`].
    owner: AtomicUsize,
    /// `current` (`cpu_curr(cpu)`).
    task: TaskCell,
}

impl CpuState {
    fn quiescent(&self) -> bool {
        self.preempt_count.load(Ordering::Relaxed) == 0
            && !self.irqs_disabled.load(Ordering::Relaxed)
    }
}

/// Source of [`Cpus`] instance ids.
static NEXT_MACHINE: AtomicU64 = AtomicU64::new(1);
/// Source of thread tokens; 0 means "not yet assigned".
static NEXT_THREAD: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// This thread's token: unique for the life of the process.
    static THREAD_TOKEN: Cell<usize> = const { Cell::new(0) };
    /// The CPUs this thread has bound: (machine id, CPU), at most one per machine.
    static BINDINGS: RefCell<Vec<(u64, usize)>> = const { RefCell::new(Vec::new()) };
    /// The most recent binding, (machine id + 1, CPU), or (0, 0): a one-entry
    /// cache in front of `BINDINGS` that keeps `smp_processor_id()` to one
    /// thread-local load on the allocator's fast paths.
    static LAST_BINDING: Cell<(u64, usize)> = const { Cell::new((0, 0)) };
}

/// The CPU recorded in `LAST_BINDING` for "this thread has no CPU of that machine".
const UNBOUND: usize = usize::MAX;

/// A number naming the calling host thread, never reused.
fn thread_token() -> usize {
    THREAD_TOKEN.with(|t| {
        let mut token = t.get();
        if token == 0 {
            token = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
            t.set(token);
        }
        token
    })
}

/// The CPUs of one simulated machine: Linux's `cpu_possible_mask` /
/// `cpu_online_mask`, each CPU's `preempt_count`, IRQ flag and `current`.
///
/// Share it between threads by reference or in an `Arc`. Several machines can
/// live in one process; each has its own CPUs and its own thread bindings.
pub struct Cpus {
    /// Keys this machine's entries in the per-thread binding table.
    id: u64,
    cpus: Box<[CpuState]>,
    warnings: AtomicU64,
}

impl fmt::Debug for Cpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cpus")
            .field("nr_cpu_ids", &self.cpus.len())
            .field("warnings", &self.warnings())
            .finish_non_exhaustive()
    }
}

/// A snapshot of one CPU, for reports (what `/proc/PID/stat` or a lockup
/// report would show about it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuSnapshot {
    /// The CPU number.
    pub cpu: usize,
    /// Its `preempt_count`.
    pub preempt_count: u32,
    /// Its `irqs_disabled()`.
    pub irqs_disabled: bool,
    /// Its `current` task (`cpu_curr(cpu)`).
    pub task: Task,
    /// Whether a host thread has bound it.
    pub bound: bool,
}

impl CpuSnapshot {
    /// The context the CPU is in.
    pub fn context(&self) -> Context {
        Context::classify(self.preempt_count, self.irqs_disabled)
    }
}

impl Cpus {
    /// A machine with `nr_cpu_ids` CPUs, numbered `0..nr_cpu_ids`, all online,
    /// each idle (`swapper/N` is `current`) with preemption and interrupts
    /// enabled. This is what Linux sets up in `smp_prepare_cpus()` and
    /// `smp_init()`.
    ///
    /// Fails with [`CpuError::InvalidNrCpus`] unless `1 <= nr_cpu_ids <= NR_CPUS`.
    pub fn new(nr_cpu_ids: usize) -> Result<Cpus, CpuError> {
        if !(1..=NR_CPUS).contains(&nr_cpu_ids) {
            return Err(CpuError::InvalidNrCpus { nr: nr_cpu_ids });
        }
        let cpus = (0..nr_cpu_ids)
            .map(|cpu| CpuState {
                preempt_count: AtomicU32::new(0),
                irqs_disabled: AtomicBool::new(false),
                owner: AtomicUsize::new(FREE),
                task: TaskCell::new(Task::idle(cpu)),
            })
            .collect();
        Ok(Cpus {
            id: NEXT_MACHINE.fetch_add(1, Ordering::Relaxed),
            cpus,
            warnings: AtomicU64::new(0),
        })
    }

    /// Linux's `nr_cpu_ids`: one more than the highest CPU number.
    pub fn nr_cpu_ids(&self) -> usize {
        self.cpus.len()
    }

    /// Linux's `num_online_cpus()`. Every CPU is online (no hotplug).
    pub fn num_online_cpus(&self) -> usize {
        self.cpus.len()
    }

    /// Linux's `cpu_online(cpu)`.
    pub fn cpu_online(&self, cpu: usize) -> bool {
        cpu < self.cpus.len()
    }

    /// Linux's `for_each_online_cpu(cpu)`: the online CPU numbers, ascending.
    pub fn for_each_online_cpu(&self) -> Range<usize> {
        0..self.cpus.len()
    }

    /// Linux's `for_each_possible_cpu(cpu)`; the same CPUs as
    /// [`Cpus::for_each_online_cpu`], since every possible CPU is online.
    pub fn for_each_possible_cpu(&self) -> Range<usize> {
        0..self.cpus.len()
    }

    fn check(&self, cpu: usize) -> Result<&CpuState, CpuError> {
        self.cpus.get(cpu).ok_or(CpuError::NoSuchCpu {
            cpu,
            nr_cpu_ids: self.cpus.len(),
        })
    }

    fn warn(&self) {
        self.warnings.fetch_add(1, Ordering::Relaxed);
    }

    /// How many misuses were caught and survived (Linux: `WARN_ON` hits of
    /// `CONFIG_DEBUG_PREEMPT`): a guard whose nesting field was already full,
    /// a guard released after someone else had already emptied the count, a
    /// binding dropped with preemption or interrupts still disabled.
    pub fn warnings(&self) -> u64 {
        self.warnings.load(Ordering::Relaxed)
    }

    // ----- binding host threads to CPUs -----

    /// Makes the calling host thread CPU `cpu` of this machine until the
    /// returned binding is dropped (Linux has no such call: a CPU simply
    /// exists; this is how the simulator gives a thread its CPU).
    ///
    /// Fails with [`CpuError::NoSuchCpu`], with [`CpuError::Busy`] when another
    /// thread has the CPU, and with [`CpuError::AlreadyBound`] when this
    /// thread already has a CPU of this machine. Binding CPUs of other
    /// machines is independent.
    pub fn bind(&self, cpu: usize) -> Result<CpuBinding<'_>, CpuError> {
        let state = self.check(cpu)?;
        if let Some(bound) = self.bound_cpu() {
            return Err(CpuError::AlreadyBound { cpu: bound });
        }
        let me = thread_token();
        let claimed =
            match state
                .owner
                .compare_exchange(FREE, me, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => true,
                Err(LEFT_BUSY) => {
                    state.quiescent()
                        && state
                            .owner
                            .compare_exchange(LEFT_BUSY, me, Ordering::SeqCst, Ordering::Relaxed)
                            .is_ok()
                }
                Err(_) => false,
            };
        if !claimed {
            return Err(CpuError::Busy { cpu });
        }
        BINDINGS.with(|b| b.borrow_mut().push((self.id, cpu)));
        LAST_BINDING.with(|l| l.set((self.id + 1, cpu)));
        Ok(CpuBinding {
            cpus: self,
            cpu,
            _not_send: PhantomData,
        })
    }

    /// Whether a thread has bound `cpu` right now: that thread is the only
    /// one running as the CPU. A sequentially consistent load, ordered after
    /// the caller's own locked instructions (kmm's `LocalLock` relies on it).
    pub fn cpu_owned(&self, cpu: usize) -> bool {
        self.cpus
            .get(cpu)
            .map(|st| st.owner.load(Ordering::SeqCst))
            .is_some_and(|o| o != FREE && o != LEFT_BUSY)
    }

    /// The CPU the calling thread has bound on this machine, if any.
    #[inline]
    pub fn bound_cpu(&self) -> Option<usize> {
        if let Ok((id, cpu)) = LAST_BINDING.try_with(Cell::get) {
            if id == self.id + 1 {
                return (cpu != UNBOUND).then_some(cpu);
            }
        }
        self.bound_cpu_slow()
    }

    /// What the calling thread's last-binding cache holds for these CPUs
    /// (see [`Self::bound_cpu_cached`]).
    pub fn binding_key(&self) -> u64 {
        self.id + 1
    }

    /// A key [`Self::bound_cpu_cached`] never matches.
    pub const NO_BINDING_KEY: u64 = u64::MAX;

    /// [`Self::bound_cpu`] of the machine whose [`Self::binding_key`] is
    /// `key`, from the thread's last-binding cache only: `None` when the
    /// cache names another machine or no CPU (then ask `bound_cpu`).
    #[inline(always)]
    pub fn bound_cpu_cached(key: u64) -> Option<usize> {
        match LAST_BINDING.try_with(Cell::get) {
            Ok((id, cpu)) if id == key && cpu != UNBOUND => Some(cpu),
            _ => None,
        }
    }

    #[cold]
    fn bound_cpu_slow(&self) -> Option<usize> {
        let found = BINDINGS
            .try_with(|b| {
                b.borrow()
                    .iter()
                    .find(|&&(id, _)| id == self.id)
                    .map(|&(_, cpu)| cpu)
            })
            .ok()
            .flatten();
        // Remember the answer, "not bound" included: `bind` overwrites the
        // cache and dropping a binding clears it, so it is never stale.
        let _ = LAST_BINDING.try_with(|l| l.set((self.id + 1, found.unwrap_or(UNBOUND))));
        found
    }

    /// Linux's `smp_processor_id()` / `raw_smp_processor_id()`: the CPU the
    /// calling thread runs as — the one it bound, or the boot CPU 0.
    ///
    /// Cheap: one thread-local lookup, no lock, no allocation.
    #[inline]
    pub fn smp_processor_id(&self) -> usize {
        self.bound_cpu().unwrap_or(0)
    }

    #[inline]
    fn this(&self) -> (usize, &CpuState) {
        let cpu = self.smp_processor_id();
        (cpu, &self.cpus[cpu])
    }

    // ----- queries of the current CPU -----

    /// Linux's `preempt_count()` of the current CPU.
    #[inline]
    pub fn preempt_count(&self) -> u32 {
        self.this().1.preempt_count.load(Ordering::Relaxed)
    }

    /// `preempt_count()` and `irqs_disabled()` of the current CPU with one
    /// lookup of which CPU that is.
    #[inline]
    pub fn atomic_state(&self) -> (u32, bool) {
        let st = self.this().1;
        (
            st.preempt_count.load(Ordering::Relaxed),
            st.irqs_disabled.load(Ordering::Relaxed),
        )
    }

    /// [`Self::atomic_state`] of `cpu`, for a caller that has just asked
    /// [`Self::smp_processor_id`] (no second thread-local lookup). An
    /// out-of-range `cpu` reads as atomic, so a sleeping caller is refused.
    #[inline]
    pub fn atomic_state_of(&self, cpu: usize) -> (u32, bool) {
        match self.cpus.get(cpu) {
            Some(st) => (
                st.preempt_count.load(Ordering::Relaxed),
                st.irqs_disabled.load(Ordering::Relaxed),
            ),
            None => (1, true),
        }
    }

    /// Linux's `irqs_disabled()` on the current CPU.
    #[inline]
    pub fn irqs_disabled(&self) -> bool {
        self.this().1.irqs_disabled.load(Ordering::Relaxed)
    }

    /// Linux's `current`: the task running on the current CPU.
    #[inline]
    pub fn current_task(&self) -> Task {
        self.this().1.task.load()
    }

    /// Linux's `in_atomic()`: the preempt count is not zero.
    pub fn in_atomic(&self) -> bool {
        self.preempt_count() != 0
    }

    /// Linux's `preemptible()`: preempt count zero and interrupts enabled, so
    /// the caller may sleep.
    pub fn preemptible(&self) -> bool {
        let (_, state) = self.this();
        state.quiescent()
    }

    /// Linux's `in_interrupt()`: in NMI, hard or soft interrupt context, or
    /// with softirqs disabled.
    pub fn in_interrupt(&self) -> bool {
        self.preempt_count() & (NMI_MASK | HARDIRQ_MASK | SOFTIRQ_MASK) != 0
    }

    /// Linux's `in_softirq()`: serving a softirq or with softirqs disabled.
    pub fn in_softirq(&self) -> bool {
        self.preempt_count() & SOFTIRQ_MASK != 0
    }

    /// Linux's `in_serving_softirq()`.
    pub fn in_serving_softirq(&self) -> bool {
        self.preempt_count() & SOFTIRQ_OFFSET != 0
    }

    /// Linux's `in_irq()` / `in_hardirq()` (also true inside an NMI).
    pub fn in_irq(&self) -> bool {
        self.preempt_count() & HARDIRQ_MASK != 0
    }

    /// Linux's `in_nmi()`.
    pub fn in_nmi(&self) -> bool {
        self.preempt_count() & NMI_MASK != 0
    }

    /// Linux's `in_task()`: neither in an NMI, a hard interrupt, nor serving
    /// a softirq.
    pub fn in_task(&self) -> bool {
        self.preempt_count() & (NMI_MASK | HARDIRQ_MASK | SOFTIRQ_OFFSET) == 0
    }

    /// The context the current CPU is in, for messages.
    pub fn context(&self) -> Context {
        let (_, state) = self.this();
        Context::classify(
            state.preempt_count.load(Ordering::Relaxed),
            state.irqs_disabled.load(Ordering::Relaxed),
        )
    }

    // ----- tasks -----

    /// Makes `task` the one running on the current CPU and returns the one it
    /// replaces (the effect of Linux's `context_switch()` on `current`).
    pub fn set_current_task(&self, task: Task) -> Task {
        self.this().1.task.store(task)
    }

    /// Linux's `cpu_curr(cpu)`: the task running on another CPU.
    pub fn cpu_curr(&self, cpu: usize) -> Result<Task, CpuError> {
        Ok(self.check(cpu)?.task.load())
    }

    /// The state of CPU `cpu` as seen from any thread.
    pub fn snapshot(&self, cpu: usize) -> Result<CpuSnapshot, CpuError> {
        let state = self.check(cpu)?;
        Ok(CpuSnapshot {
            cpu,
            preempt_count: state.preempt_count.load(Ordering::Relaxed),
            irqs_disabled: state.irqs_disabled.load(Ordering::Relaxed),
            task: state.task.load(),
            bound: state.owner.load(Ordering::Relaxed) != FREE,
        })
    }

    // ----- preempt count guards -----

    /// Adds `val` to the current CPU's count; the guard takes it off again.
    fn count_guard(&self, val: u32) -> PreemptGuard<'_> {
        let (cpu, state) = self.this();
        let applied = state
            .preempt_count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                checked_count_add(c, val)
            })
            .is_ok();
        if !applied {
            self.warn();
        }
        PreemptGuard {
            cpus: self,
            cpu,
            offset: if applied { val } else { 0 },
            _not_send: PhantomData,
        }
    }

    /// Linux's `preempt_disable()`: adds `PREEMPT_OFFSET` to the current CPU's
    /// preempt count until the guard is dropped (`preempt_enable()`).
    #[inline]
    pub fn preempt_disable(&self) -> PreemptGuard<'_> {
        self.count_guard(PREEMPT_OFFSET)
    }

    /// Linux's `get_cpu()`: disables preemption and tells the current CPU
    /// ([`PreemptGuard::cpu`]); dropping the guard is `put_cpu()`.
    #[inline]
    pub fn get_cpu(&self) -> PreemptGuard<'_> {
        self.count_guard(PREEMPT_OFFSET)
    }

    /// Linux's `local_bh_disable()`: adds [`SOFTIRQ_DISABLE_OFFSET`], so
    /// `in_softirq()` holds but not `in_serving_softirq()`; dropping the guard
    /// is `local_bh_enable()`.
    pub fn local_bh_disable(&self) -> PreemptGuard<'_> {
        self.count_guard(SOFTIRQ_DISABLE_OFFSET)
    }

    /// Enters softirq processing as Linux's `__do_softirq()` does: adds
    /// `SOFTIRQ_OFFSET`, so the CPU is `in_serving_softirq()` until the guard
    /// is dropped. Interrupts stay as they are (softirqs run with them on).
    pub fn softirq_enter(&self) -> PreemptGuard<'_> {
        self.count_guard(SOFTIRQ_OFFSET)
    }

    /// Linux's `irq_enter()`: the CPU takes a hard interrupt. Interrupts are
    /// disabled (as the hardware does on delivery) and `HARDIRQ_OFFSET` is
    /// added; dropping the guard is `irq_exit()` plus the return from the
    /// interrupt, restoring both.
    pub fn irq_enter(&self) -> HardirqGuard<'_> {
        let irq = self.local_irq_save();
        let count = self.count_guard(HARDIRQ_OFFSET);
        HardirqGuard { count, _irq: irq }
    }

    /// Linux's `nmi_enter()`: adds `NMI_OFFSET + HARDIRQ_OFFSET` with
    /// interrupts disabled; dropping the guard is `nmi_exit()`.
    pub fn nmi_enter(&self) -> HardirqGuard<'_> {
        let irq = self.local_irq_save();
        let count = self.count_guard(NMI_OFFSET + HARDIRQ_OFFSET);
        HardirqGuard { count, _irq: irq }
    }

    /// Linux's `local_irq_save(flags)`: disables interrupts on the current CPU
    /// and remembers whether they were already disabled; dropping the guard
    /// is `local_irq_restore(flags)`.
    pub fn local_irq_save(&self) -> IrqSaveGuard<'_> {
        let (cpu, state) = self.this();
        let was_disabled = state.irqs_disabled.swap(true, Ordering::Relaxed);
        IrqSaveGuard {
            cpus: self,
            cpu,
            was_disabled,
            _not_send: PhantomData,
        }
    }

    /// Linux's `local_irq_disable()`. The guard restores the previous state
    /// when dropped rather than enabling unconditionally as
    /// `local_irq_enable()` would, so nesting it is harmless; it is the same
    /// guard as [`Cpus::local_irq_save`].
    pub fn local_irq_disable(&self) -> IrqSaveGuard<'_> {
        self.local_irq_save()
    }

    // ----- raw preempt count arithmetic -----

    /// Linux's `preempt_count_add(val)` without a guard, for code that models
    /// an unpaired enter and exit. Each nesting field is checked: a carry
    /// into the next field returns [`CpuError::PreemptCountOverflow`] and
    /// changes nothing.
    pub fn preempt_count_add(&self, val: u32) -> Result<(), CpuError> {
        let (cpu, state) = self.this();
        state
            .preempt_count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                checked_count_add(c, val)
            })
            .map(drop)
            .map_err(|count| CpuError::PreemptCountOverflow { cpu, count, val })
    }

    /// Linux's `preempt_count_sub(val)` without a guard. An enable without
    /// its disable (a field going below zero) returns
    /// [`CpuError::PreemptCountUnderflow`] and changes nothing.
    pub fn preempt_count_sub(&self, val: u32) -> Result<(), CpuError> {
        let (cpu, state) = self.this();
        state
            .preempt_count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                checked_count_sub(c, val)
            })
            .map(drop)
            .map_err(|count| CpuError::PreemptCountUnderflow { cpu, count, val })
    }

    // ----- running code on CPUs -----

    /// Linux's `smp_call_function_single(cpu, func, info, wait=1)`: runs `f`
    /// on CPU `cpu` and returns its result. A thread already bound to `cpu`
    /// runs `f` itself; otherwise a new host thread named `cpuN` binds the
    /// CPU for the call. Unlike Linux, `f` runs in process context, not in an
    /// interrupt.
    ///
    /// Fails with [`CpuError::NoSuchCpu`], [`CpuError::Busy`] (another thread
    /// has the CPU) or [`CpuError::Spawn`]. A panic in `f` is passed on.
    pub fn run_on_cpu<R, F>(&self, cpu: usize, f: F) -> Result<R, CpuError>
    where
        R: Send,
        F: FnOnce() -> R + Send,
    {
        self.check(cpu)?;
        if self.bound_cpu() == Some(cpu) {
            return Ok(f());
        }
        thread::scope(|s| {
            let handle = thread::Builder::new()
                .name(format!("cpu{cpu}"))
                .spawn_scoped(s, || {
                    let _binding = self.bind(cpu)?;
                    Ok(f())
                })
                .map_err(|e| CpuError::Spawn {
                    cpu,
                    kind: e.kind(),
                })?;
            handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Linux's `on_each_cpu(func, info, wait=1)`: runs `f(cpu)` on every CPU
    /// at the same time and returns the results in CPU order.
    ///
    /// Every CPU gets a host thread bound to it (the calling thread serves its
    /// own CPU if it has bound one); no `f` starts before all CPUs are bound,
    /// so either `f` runs everywhere or nowhere: if any CPU is busy, the call
    /// returns [`CpuError::Busy`] without running `f` at all. A panic in `f`
    /// is passed on.
    pub fn on_each_cpu<R, F>(&self, f: F) -> Result<Vec<R>, CpuError>
    where
        R: Send,
        F: Fn(usize) -> R + Sync,
    {
        struct Gate {
            arrived: usize,
            go: Option<bool>,
            error: Option<CpuError>,
        }
        let gate = Mutex::new(Gate {
            arrived: 0,
            go: None,
            error: None,
        });
        let changed = Condvar::new();
        let lock = || gate.lock().unwrap_or_else(PoisonError::into_inner);
        let own = self.bound_cpu();
        let f = &f;

        thread::scope(|s| {
            let mut handles = Vec::with_capacity(self.nr_cpu_ids());
            for cpu in self.for_each_online_cpu() {
                if own == Some(cpu) {
                    continue;
                }
                let (changed, lock) = (&changed, &lock);
                let spawned = thread::Builder::new()
                    .name(format!("cpu{cpu}"))
                    .spawn_scoped(s, move || {
                        let binding = self.bind(cpu);
                        let mut g = lock();
                        g.arrived += 1;
                        if let Err(e) = &binding {
                            g.error.get_or_insert_with(|| e.clone());
                        }
                        changed.notify_all();
                        while g.go.is_none() {
                            g = changed.wait(g).unwrap_or_else(PoisonError::into_inner);
                        }
                        let go = g.go == Some(true);
                        drop(g);
                        match binding {
                            Ok(binding) if go => {
                                let r = f(cpu);
                                drop(binding);
                                Some(r)
                            }
                            _ => None,
                        }
                    });
                match spawned {
                    Ok(h) => handles.push((cpu, h)),
                    Err(e) => {
                        lock().error.get_or_insert(CpuError::Spawn {
                            cpu,
                            kind: e.kind(),
                        });
                        break;
                    }
                }
            }

            // Release everyone at once, or nobody.
            let go = {
                let mut g = lock();
                while g.arrived < handles.len() {
                    g = changed.wait(g).unwrap_or_else(PoisonError::into_inner);
                }
                let go = g.error.is_none();
                g.go = Some(go);
                changed.notify_all();
                go
            };

            let mut results: Vec<Option<R>> = Vec::with_capacity(self.nr_cpu_ids());
            results.resize_with(self.nr_cpu_ids(), || None);
            if let (true, Some(cpu)) = (go, own) {
                results[cpu] = Some(f(cpu));
            }
            for (cpu, h) in handles {
                match h.join() {
                    Ok(r) => results[cpu] = r,
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            if let Some(e) = lock().error.take() {
                return Err(e);
            }
            Ok(results.into_iter().flatten().collect())
        })
    }
}

/// The calling thread's claim on one CPU, from [`Cpus::bind`]; dropping it
/// releases the CPU and the thread runs as CPU 0 again.
///
/// Drop the guards taken on the CPU before the binding. A binding dropped
/// while its CPU still has preemption or interrupts disabled counts a
/// [`Cpus::warnings`] and leaves the CPU unavailable to [`Cpus::bind`] until
/// those guards are gone, so another thread never inherits a half-held CPU.
#[must_use = "the CPU is released when the binding is dropped"]
pub struct CpuBinding<'a> {
    cpus: &'a Cpus,
    cpu: usize,
    _not_send: PhantomData<*const ()>,
}

impl CpuBinding<'_> {
    /// The CPU this thread is bound to.
    pub fn cpu(&self) -> usize {
        self.cpu
    }
}

impl fmt::Debug for CpuBinding<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuBinding")
            .field("cpu", &self.cpu)
            .finish()
    }
}

impl Drop for CpuBinding<'_> {
    fn drop(&mut self) {
        let id = self.cpus.id;
        let _ = BINDINGS.try_with(|b| b.borrow_mut().retain(|&(m, _)| m != id));
        let _ = LAST_BINDING.try_with(|l| {
            if l.get().0 == id + 1 {
                l.set((0, 0));
            }
        });
        let state = &self.cpus.cpus[self.cpu];
        if state.quiescent() {
            state.owner.store(FREE, Ordering::Release);
        } else {
            self.cpus.warn();
            state.owner.store(LEFT_BUSY, Ordering::Release);
        }
    }
}

/// Holds part of a CPU's preempt count: from [`Cpus::preempt_disable`]
/// (`preempt_enable()` on drop), [`Cpus::get_cpu`] (`put_cpu()`),
/// [`Cpus::local_bh_disable`] (`local_bh_enable()`) or
/// [`Cpus::softirq_enter`]. It stays on the thread that took it.
#[must_use = "dropping the guard re-enables at once"]
pub struct PreemptGuard<'a> {
    cpus: &'a Cpus,
    cpu: usize,
    /// What was added to the count; 0 when the field was full.
    offset: u32,
    _not_send: PhantomData<*const ()>,
}

impl PreemptGuard<'_> {
    /// The CPU the guard holds: `get_cpu()`'s return value.
    pub fn cpu(&self) -> usize {
        self.cpu
    }
}

impl fmt::Debug for PreemptGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreemptGuard")
            .field("cpu", &self.cpu)
            .field("offset", &format_args!("{:#x}", self.offset))
            .finish()
    }
}

impl Drop for PreemptGuard<'_> {
    fn drop(&mut self) {
        if self.offset == 0 {
            return;
        }
        let offset = self.offset;
        let undone = self.cpus.cpus[self.cpu]
            .preempt_count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                checked_count_sub(c, offset)
            })
            .is_ok();
        if !undone {
            self.cpus.warn();
        }
    }
}

/// Holds a CPU's interrupts disabled: from [`Cpus::local_irq_save`] or
/// [`Cpus::local_irq_disable`]; dropping it is `local_irq_restore(flags)`.
///
/// Guards restore in the reverse order they were taken, as Rust drops local
/// variables; dropping an outer one first (by hand, or by dropping a `Vec`
/// of guards, which goes front to back) restores the wrong state, as
/// misordered `local_irq_restore()` calls would in Linux.
#[must_use = "dropping the guard restores interrupts at once"]
pub struct IrqSaveGuard<'a> {
    cpus: &'a Cpus,
    cpu: usize,
    was_disabled: bool,
    _not_send: PhantomData<*const ()>,
}

impl IrqSaveGuard<'_> {
    /// The saved `flags`: whether interrupts were already disabled.
    pub fn was_disabled(&self) -> bool {
        self.was_disabled
    }

    /// The CPU whose interrupts this guard holds.
    pub fn cpu(&self) -> usize {
        self.cpu
    }
}

impl fmt::Debug for IrqSaveGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IrqSaveGuard")
            .field("cpu", &self.cpu)
            .field("was_disabled", &self.was_disabled)
            .finish()
    }
}

impl Drop for IrqSaveGuard<'_> {
    fn drop(&mut self) {
        self.cpus.cpus[self.cpu]
            .irqs_disabled
            .store(self.was_disabled, Ordering::Relaxed);
    }
}

/// A hard interrupt or NMI in progress on a CPU, from [`Cpus::irq_enter`] or
/// [`Cpus::nmi_enter`]; dropping it is `irq_exit()` / `nmi_exit()` and
/// restores the interrupt flag.
#[must_use = "dropping the guard leaves the interrupt at once"]
#[derive(Debug)]
pub struct HardirqGuard<'a> {
    // Field order is drop order: leave the count, then restore interrupts.
    count: PreemptGuard<'a>,
    _irq: IrqSaveGuard<'a>,
}

impl HardirqGuard<'_> {
    /// The CPU taking the interrupt.
    pub fn cpu(&self) -> usize {
        self.count.cpu
    }
}

/// One copy of a per-CPU variable, alone on its cache lines.
///
/// 128 bytes: two 64-byte lines, because x86's adjacent-line prefetcher
/// pulls lines in pairs and would otherwise bring back false sharing.
#[repr(align(128))]
struct Slot<T> {
    /// Token of the thread holding `value`, 0 when none.
    holder: AtomicUsize,
    value: Mutex<T>,
}

/// Linux's `DEFINE_PER_CPU(type, name)` / `alloc_percpu(type)`: one copy of a
/// `T` per CPU, each on its own cache lines.
///
/// The owning CPU uses its copy through [`PerCpu::get_cpu_var`] with
/// preemption disabled; any thread can reach any copy with
/// [`PerCpu::per_cpu`], e.g. to sum counters. Each copy has its own lock,
/// uncontended in the intended use (see the module docs for why).
///
/// A `PerCpu` is not tied to one [`Cpus`]: it indexes copies by CPU number,
/// so one variable can serve several machines whose CPUs fit its copies.
pub struct PerCpu<T> {
    slots: Box<[Slot<T>]>,
}

impl<T> PerCpu<T> {
    /// A variable with [`NR_CPUS`] copies, copy `cpu` being `init(cpu)` (like
    /// `DEFINE_PER_CPU` followed by per-CPU initialisation).
    pub fn new(init: impl FnMut(usize) -> T) -> PerCpu<T> {
        Self::with_copies(NR_CPUS, init)
    }

    /// A variable with one copy per CPU of `cpus` (like `alloc_percpu()`,
    /// which sizes for the possible CPUs).
    pub fn for_cpus(cpus: &Cpus, init: impl FnMut(usize) -> T) -> PerCpu<T> {
        Self::with_copies(cpus.nr_cpu_ids(), init)
    }

    fn with_copies(n: usize, mut init: impl FnMut(usize) -> T) -> PerCpu<T> {
        PerCpu {
            slots: (0..n)
                .map(|cpu| Slot {
                    holder: AtomicUsize::new(0),
                    value: Mutex::new(init(cpu)),
                })
                .collect(),
        }
    }

    /// How many copies there are (CPU numbers `0..copies()` are valid).
    pub fn copies(&self) -> usize {
        self.slots.len()
    }

    /// Locks copy `cpu` for the calling thread.
    fn lock(&self, cpu: usize) -> Result<(MutexGuard<'_, T>, &AtomicUsize), CpuError> {
        let slot = self.slots.get(cpu).ok_or(CpuError::NoSuchCpu {
            cpu,
            nr_cpu_ids: self.slots.len(),
        })?;
        let me = thread_token();
        let guard = match slot.value.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                // Only this thread ever stores its own token, and clears it
                // before unlocking: seeing it means we hold the lock already.
                if slot.holder.load(Ordering::Relaxed) == me {
                    return Err(CpuError::Nested { cpu });
                }
                slot.value.lock().unwrap_or_else(PoisonError::into_inner)
            }
        };
        slot.holder.store(me, Ordering::Relaxed);
        Ok((guard, &slot.holder))
    }

    /// Linux's `get_cpu_var(var)`: disables preemption on the calling thread's
    /// CPU of `cpus` and gives its copy; dropping the guard is
    /// `put_cpu_var(var)`.
    ///
    /// Fails with [`CpuError::Nested`] when this thread already holds the copy
    /// (nested `get_cpu_var` of the same variable) and with
    /// [`CpuError::NoSuchCpu`] when the variable has no copy for the CPU.
    /// Preemption is enabled again on failure.
    pub fn get_cpu_var<'a>(&'a self, cpus: &'a Cpus) -> Result<CpuVarGuard<'a, T>, CpuError> {
        let preempt = cpus.preempt_disable();
        let (value, holder) = self.lock(preempt.cpu())?;
        Ok(CpuVarGuard {
            cpu: preempt.cpu(),
            value,
            holder,
            _preempt: Some(preempt),
        })
    }

    /// Linux's `per_cpu(var, cpu)`: CPU `cpu`'s copy, from any thread. Does
    /// not disable preemption; waits if another thread holds the copy.
    ///
    /// Fails with [`CpuError::Nested`] when this thread already holds that
    /// copy and with [`CpuError::NoSuchCpu`] for a CPU without a copy.
    pub fn per_cpu(&self, cpu: usize) -> Result<CpuVarGuard<'_, T>, CpuError> {
        let (value, holder) = self.lock(cpu)?;
        Ok(CpuVarGuard {
            cpu,
            value,
            holder,
            _preempt: None,
        })
    }

    /// Linux's `per_cpu_ptr(ptr, cpu)` with exclusive access to the whole
    /// variable, so no lock is taken: `None` for a CPU without a copy.
    pub fn get_mut(&mut self, cpu: usize) -> Option<&mut T> {
        let slot = self.slots.get_mut(cpu)?;
        Some(slot.value.get_mut().unwrap_or_else(PoisonError::into_inner))
    }
}

impl<T: Default> Default for PerCpu<T> {
    /// `DEFINE_PER_CPU` of a zero-initialised variable: every copy is
    /// `T::default()`.
    fn default() -> Self {
        PerCpu::new(|_| T::default())
    }
}

impl<T: fmt::Debug> fmt::Debug for PerCpu<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for cpu in 0..self.slots.len() {
            match self.per_cpu(cpu) {
                Ok(v) => list.entry(&*v),
                Err(_) => list.entry(&format_args!("<held>")),
            };
        }
        list.finish()
    }
}

/// Access to one CPU's copy of a [`PerCpu`] variable, from
/// [`PerCpu::get_cpu_var`] (preemption disabled until dropped: the drop is
/// `put_cpu_var()`) or [`PerCpu::per_cpu`]. Dereferences to the copy.
#[must_use = "the copy is released when the guard is dropped"]
pub struct CpuVarGuard<'a, T> {
    cpu: usize,
    // Drop order: clear `holder` (in `drop`), unlock `value`, then enable
    // preemption.
    value: MutexGuard<'a, T>,
    holder: &'a AtomicUsize,
    _preempt: Option<PreemptGuard<'a>>,
}

impl<T> CpuVarGuard<'_, T> {
    /// The CPU whose copy this is.
    pub fn cpu(&self) -> usize {
        self.cpu
    }
}

impl<T> Deref for CpuVarGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> DerefMut for CpuVarGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for CpuVarGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuVarGuard")
            .field("cpu", &self.cpu)
            .field("value", &*self.value)
            .finish()
    }
}

impl<T> Drop for CpuVarGuard<'_, T> {
    fn drop(&mut self) {
        self.holder.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::{Arc, Barrier};

    #[test]
    fn nr_cpu_ids_must_be_1_to_64() {
        assert_eq!(Cpus::new(0).unwrap_err(), CpuError::InvalidNrCpus { nr: 0 });
        assert_eq!(
            Cpus::new(65).unwrap_err(),
            CpuError::InvalidNrCpus { nr: 65 }
        );
        assert_eq!(Cpus::new(1).unwrap().nr_cpu_ids(), 1);
        let cpus = Cpus::new(64).unwrap();
        assert_eq!(cpus.nr_cpu_ids(), 64);
        assert_eq!(cpus.num_online_cpus(), 64);
        assert!(cpus.cpu_online(63) && !cpus.cpu_online(64));
        assert_eq!(
            cpus.for_each_online_cpu().collect::<Vec<_>>(),
            (0..64).collect::<Vec<_>>()
        );
        assert_eq!(cpus.for_each_possible_cpu().count(), 64);
    }

    #[test]
    fn unbound_thread_is_boot_cpu_0() {
        let cpus = Cpus::new(4).unwrap();
        assert_eq!(cpus.bound_cpu(), None);
        assert_eq!(cpus.smp_processor_id(), 0);
        assert_eq!(cpus.preempt_count(), 0);
        assert!(!cpus.irqs_disabled());
        assert_eq!(cpus.context(), Context::Process);
        assert!(cpus.preemptible());
    }

    #[test]
    fn binding_is_exclusive_and_released_on_drop() {
        let cpus = Cpus::new(4).unwrap();
        let b = cpus.bind(1).unwrap();
        assert_eq!(b.cpu(), 1);
        assert_eq!(cpus.smp_processor_id(), 1);
        assert_eq!(cpus.bound_cpu(), Some(1));
        // This thread cannot take a second CPU of the same machine.
        assert_eq!(cpus.bind(2).unwrap_err(), CpuError::AlreadyBound { cpu: 1 });
        assert_eq!(
            cpus.bind(4).unwrap_err(),
            CpuError::NoSuchCpu {
                cpu: 4,
                nr_cpu_ids: 4
            }
        );
        thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(cpus.bind(1).unwrap_err(), CpuError::Busy { cpu: 1 });
                let other = cpus.bind(2).unwrap();
                assert_eq!(cpus.smp_processor_id(), 2);
                drop(other);
                assert_eq!(cpus.smp_processor_id(), 0);
            });
        });
        assert!(cpus.snapshot(1).unwrap().bound);
        drop(b);
        assert!(!cpus.snapshot(1).unwrap().bound);
        assert_eq!(cpus.smp_processor_id(), 0);
        thread::scope(|s| {
            s.spawn(|| {
                let b = cpus.bind(1).unwrap();
                assert_eq!(cpus.smp_processor_id(), b.cpu());
            });
        });
        assert_eq!(cpus.warnings(), 0);
    }

    #[test]
    fn machines_do_not_confuse_each_other() {
        let a = Cpus::new(4).unwrap();
        let b = Cpus::new(4).unwrap();
        let ba = a.bind(3).unwrap();
        assert_eq!(a.smp_processor_id(), 3);
        assert_eq!(b.smp_processor_id(), 0, "unbound on machine b");
        let bb = b.bind(3).unwrap();
        let _p = a.preempt_disable();
        assert_eq!(a.preempt_count(), 1);
        assert_eq!(b.preempt_count(), 0);
        assert_eq!(b.snapshot(3).unwrap().preempt_count, 0);
        drop(bb);
        assert_eq!(a.smp_processor_id(), 3);
        assert_eq!(b.smp_processor_id(), 0);
        drop(_p);
        drop(ba);
    }

    #[test]
    fn preempt_count_layout_and_nesting() {
        let cpus = Cpus::new(2).unwrap();
        let _b = cpus.bind(1).unwrap();
        {
            let p = cpus.preempt_disable();
            assert_eq!(p.cpu(), 1);
            assert_eq!(cpus.preempt_count(), PREEMPT_OFFSET);
            let g = cpus.get_cpu();
            assert_eq!(g.cpu(), 1);
            assert_eq!(cpus.preempt_count(), 2);
            {
                let _bh = cpus.local_bh_disable();
                assert_eq!(cpus.preempt_count(), 2 + 0x200);
                let _sirq = cpus.softirq_enter();
                assert_eq!(cpus.preempt_count(), 2 + 0x300);
                let irq = cpus.irq_enter();
                assert_eq!(irq.cpu(), 1);
                assert_eq!(cpus.preempt_count(), 2 + 0x300 + 0x1_0000);
                assert!(cpus.irqs_disabled());
                let _nmi = cpus.nmi_enter();
                assert_eq!(cpus.preempt_count(), 2 + 0x300 + 0x2_0000 + 0x10_0000);
                assert_eq!(cpus.preempt_count() & PREEMPT_MASK, 2);
                assert_eq!((cpus.preempt_count() & SOFTIRQ_MASK) >> 8, 3);
                assert_eq!((cpus.preempt_count() & HARDIRQ_MASK) >> 16, 2);
                assert_eq!((cpus.preempt_count() & NMI_MASK) >> 20, 1);
            }
            assert_eq!(cpus.preempt_count(), 2);
            assert!(!cpus.irqs_disabled());
            drop(g);
            assert_eq!(cpus.preempt_count(), 1);
            drop(p);
        }
        assert_eq!(cpus.preempt_count(), 0);
        // Guards held the bound CPU, not CPU 0.
        assert_eq!(cpus.snapshot(0).unwrap().preempt_count, 0);
        assert_eq!(cpus.warnings(), 0);
    }

    #[test]
    fn full_fields_do_not_overflow() {
        let cpus = Cpus::new(1).unwrap();
        let guards: Vec<_> = (0..255).map(|_| cpus.preempt_disable()).collect();
        assert_eq!(cpus.preempt_count(), 255);
        let extra = cpus.preempt_disable();
        assert_eq!(cpus.preempt_count(), 255, "no carry into the softirq field");
        assert_eq!(cpus.warnings(), 1);
        drop(extra);
        assert_eq!(cpus.preempt_count(), 255);
        drop(guards);
        assert_eq!(cpus.preempt_count(), 0);

        let mut irqs: Vec<_> = (0..16).map(|_| cpus.irq_enter()).collect();
        assert_eq!(cpus.preempt_count(), 15 << 16);
        assert_eq!(cpus.warnings(), 2);
        // Innermost first: a Vec would drop front to back and restore the
        // outermost interrupt state before the inner ones.
        while let Some(irq) = irqs.pop() {
            drop(irq);
        }
        assert_eq!(cpus.preempt_count(), 0);
        assert!(!cpus.irqs_disabled());
    }

    #[test]
    fn raw_add_sub_report_imbalance() {
        let cpus = Cpus::new(2).unwrap();
        assert_eq!(
            cpus.preempt_count_sub(PREEMPT_OFFSET).unwrap_err(),
            CpuError::PreemptCountUnderflow {
                cpu: 0,
                count: 0,
                val: 1
            }
        );
        cpus.preempt_count_add(HARDIRQ_OFFSET).unwrap();
        assert!(cpus.in_irq());
        assert!(matches!(
            cpus.preempt_count_sub(SOFTIRQ_OFFSET),
            Err(CpuError::PreemptCountUnderflow { .. })
        ));
        assert_eq!(cpus.preempt_count(), HARDIRQ_OFFSET);
        cpus.preempt_count_sub(HARDIRQ_OFFSET).unwrap();
        assert_eq!(cpus.preempt_count(), 0);
        assert!(matches!(
            cpus.preempt_count_add(1 << 30),
            Err(CpuError::PreemptCountOverflow { .. })
        ));
        assert_eq!(cpus.preempt_count(), 0);
        let msg = CpuError::PreemptCountUnderflow {
            cpu: 1,
            count: 0,
            val: 1,
        }
        .to_string();
        assert!(
            msg.starts_with("BUG: preempt count underflow on CPU 1"),
            "{msg}"
        );
    }

    #[test]
    fn context_classification() {
        let cpus = Cpus::new(1).unwrap();
        let check = |ctx, atomic, interrupt, softirq, irq| {
            assert_eq!(cpus.context(), ctx);
            assert_eq!(cpus.in_atomic(), atomic, "{ctx}");
            assert_eq!(cpus.in_interrupt(), interrupt, "{ctx}");
            assert_eq!(cpus.in_softirq(), softirq, "{ctx}");
            assert_eq!(cpus.in_irq(), irq, "{ctx}");
        };
        check(Context::Process, false, false, false, false);
        assert!(cpus.in_task());
        {
            let _p = cpus.preempt_disable();
            check(Context::Atomic, true, false, false, false);
            assert!(cpus.in_task() && !cpus.preemptible());
        }
        {
            let _i = cpus.local_irq_disable();
            // Interrupts off: may not sleep, though the count is 0.
            check(Context::Atomic, false, false, false, false);
            assert!(!cpus.preemptible());
        }
        {
            let _bh = cpus.local_bh_disable();
            check(Context::Atomic, true, true, true, false);
            assert!(!cpus.in_serving_softirq() && cpus.in_task());
        }
        {
            let _s = cpus.softirq_enter();
            check(Context::Softirq, true, true, true, false);
            assert!(cpus.in_serving_softirq() && !cpus.in_task());
            let _h = cpus.irq_enter();
            check(Context::Hardirq, true, true, true, true);
        }
        {
            let _h = cpus.irq_enter();
            check(Context::Hardirq, true, true, false, true);
            let _n = cpus.nmi_enter();
            check(Context::Nmi, true, true, false, true);
            assert!(cpus.in_nmi());
        }
        check(Context::Process, false, false, false, false);
        assert_eq!(Context::classify(0x100, false).to_string(), "softirq");
        assert_eq!(Context::classify(0x200, false), Context::Atomic);
        assert_eq!(Context::classify(0, true), Context::Atomic);
        assert_eq!(Context::Nmi.name(), "nmi");
    }

    #[test]
    fn irq_save_restore() {
        let cpus = Cpus::new(1).unwrap();
        {
            let outer = cpus.local_irq_save();
            assert!(!outer.was_disabled());
            assert!(cpus.irqs_disabled());
            {
                let inner = cpus.local_irq_save();
                assert!(inner.was_disabled());
                let d = cpus.local_irq_disable();
                assert!(d.was_disabled());
            }
            assert!(cpus.irqs_disabled(), "inner restore keeps them off");
            let irq = cpus.irq_enter();
            assert!(cpus.irqs_disabled());
            drop(irq);
            assert!(cpus.irqs_disabled(), "irq_exit restores the saved state");
        }
        assert!(!cpus.irqs_disabled());
        // irq_enter from process context enables them again on exit.
        drop(cpus.irq_enter());
        assert!(!cpus.irqs_disabled());
    }

    #[test]
    fn binding_dropped_while_atomic_keeps_the_cpu_busy() {
        let cpus = Cpus::new(2).unwrap();
        let b = cpus.bind(1).unwrap();
        let p = cpus.preempt_disable();
        drop(b);
        assert_eq!(cpus.warnings(), 1);
        let try_bind = || thread::scope(|s| s.spawn(|| cpus.bind(1).map(drop)).join().unwrap());
        assert_eq!(try_bind(), Err(CpuError::Busy { cpu: 1 }));
        drop(p);
        assert_eq!(cpus.snapshot(1).unwrap().preempt_count, 0);
        assert_eq!(try_bind(), Ok(()));
    }

    #[test]
    fn current_task_defaults_to_swapper_and_can_be_switched() {
        let cpus = Cpus::new(3).unwrap();
        assert_eq!(cpus.current_task(), Task::idle(0));
        assert_eq!(cpus.current_task().comm(), "swapper/0");
        assert_eq!(cpus.current_task().pid(), 0);
        assert_eq!(cpus.cpu_curr(2).unwrap().comm(), "swapper/2");
        assert_eq!(Task::idle(63).comm(), "swapper/63");
        assert!(cpus.cpu_curr(3).is_err());

        let got = cpus
            .run_on_cpu(2, || {
                let prev = cpus.set_current_task(Task::new(1234, "kworker/2:1"));
                assert_eq!(prev.comm(), "swapper/2");
                cpus.current_task()
            })
            .unwrap();
        assert_eq!(got.pid(), 1234);
        assert_eq!(got.comm(), "kworker/2:1");
        assert_eq!(cpus.cpu_curr(2).unwrap(), got);
        assert_eq!(cpus.current_task().comm(), "swapper/0");

        // set_task_comm() truncation: 15 bytes, whole characters, stop at NUL.
        assert_eq!(
            Task::new(1, "a-very-long-command-name").comm(),
            "a-very-long-com"
        );
        assert_eq!(Task::new(1, "ab\0cd").comm(), "ab");
        assert_eq!(Task::new(1, "ééééééééé").comm(), "ééééééé");
        assert_eq!(
            format!("{:?}", Task::new(7, "sh")),
            r#"Task { pid: 7, comm: "sh" }"#
        );
    }

    #[test]
    fn current_task_reads_are_never_torn() {
        let cpus = Cpus::new(2).unwrap();
        let a = Task::new(111, "aaaaaaaaaaaaaaa");
        let b = Task::new(222, "bb");
        let stop = AtomicBool::new(false);
        thread::scope(|s| {
            s.spawn(|| {
                let _cpu = cpus.bind(1).unwrap();
                for i in 0..20_000 {
                    cpus.set_current_task(if i % 2 == 0 { a } else { b });
                }
                stop.store(true, Ordering::Relaxed);
            });
            while !stop.load(Ordering::Relaxed) {
                let t = cpus.cpu_curr(1).unwrap();
                assert!(t == a || t == b || t == Task::idle(1), "torn: {t:?}");
            }
        });
    }

    #[test]
    fn run_on_cpu_runs_there() {
        let cpus = Cpus::new(4).unwrap();
        for cpu in cpus.for_each_online_cpu() {
            let (id, name) = cpus
                .run_on_cpu(cpu, || {
                    (
                        cpus.smp_processor_id(),
                        thread::current().name().map(str::to_owned),
                    )
                })
                .unwrap();
            assert_eq!(id, cpu);
            assert_eq!(name.as_deref(), Some(format!("cpu{cpu}").as_str()));
        }
        assert_eq!(
            cpus.run_on_cpu(9, || ()).unwrap_err(),
            CpuError::NoSuchCpu {
                cpu: 9,
                nr_cpu_ids: 4
            }
        );
        // A thread bound to the CPU runs the function itself.
        let _b = cpus.bind(2).unwrap();
        let me = thread::current().id();
        assert_eq!(cpus.run_on_cpu(2, || thread::current().id()).unwrap(), me);
        // Another thread cannot take CPU 2 while this one has it.
        let r = thread::scope(|s| s.spawn(|| cpus.run_on_cpu(2, || ())).join().unwrap());
        assert_eq!(r, Err(CpuError::Busy { cpu: 2 }));
    }

    #[test]
    fn on_each_cpu_runs_everywhere_at_once() {
        let cpus = Cpus::new(8).unwrap();
        let all_there = Barrier::new(8);
        let ids = cpus
            .on_each_cpu(|cpu| {
                // Would hang if the eight calls did not run at the same time.
                all_there.wait();
                assert!(!cpus.in_atomic());
                (cpu, cpus.smp_processor_id())
            })
            .unwrap();
        assert_eq!(ids, (0..8).map(|c| (c, c)).collect::<Vec<_>>());

        // From a bound thread: its own CPU runs on the caller.
        let _b = cpus.bind(5).unwrap();
        let me = thread::current().id();
        let threads = cpus.on_each_cpu(|_| thread::current().id()).unwrap();
        assert_eq!(threads[5], me);
        assert!(threads
            .iter()
            .enumerate()
            .all(|(c, t)| (c == 5) == (*t == me)));
    }

    #[test]
    fn on_each_cpu_runs_nowhere_when_a_cpu_is_busy() {
        let cpus = Arc::new(Cpus::new(4).unwrap());
        let holder_ready = Barrier::new(2);
        let release = Barrier::new(2);
        thread::scope(|s| {
            s.spawn(|| {
                let _b = cpus.bind(3).unwrap();
                holder_ready.wait();
                release.wait();
            });
            holder_ready.wait();
            let ran = AtomicUsize::new(0);
            let r = cpus.on_each_cpu(|_| ran.fetch_add(1, Ordering::Relaxed));
            assert_eq!(r.unwrap_err(), CpuError::Busy { cpu: 3 });
            assert_eq!(ran.load(Ordering::Relaxed), 0);
            release.wait();
        });
        // Every CPU was released again.
        assert_eq!(cpus.on_each_cpu(|c| c).unwrap(), vec![0, 1, 2, 3]);
    }

    /// Seed 002's per-CPU statistics counter (LDD's `sockets_in_use` is the
    /// same pattern): `get_cpu_var(packet_count)++; put_cpu_var(packet_count);`
    /// on every CPU, then `for_each_online_cpu(cpu) total += per_cpu(packet_count, cpu);`.
    #[test]
    fn packet_count_per_cpu_counter() {
        let cpus = Cpus::new(8).unwrap();
        let packet_count: PerCpu<u64> = PerCpu::default();
        assert_eq!(packet_count.copies(), NR_CPUS);
        let increment_packet_count = || {
            *packet_count.get_cpu_var(&cpus).unwrap() += 1;
        };
        cpus.on_each_cpu(|cpu| {
            for _ in 0..(1000 + cpu) {
                increment_packet_count();
            }
            assert_eq!(cpus.preempt_count(), 0, "put_cpu_var re-enabled");
        })
        .unwrap();
        let total: u64 = cpus
            .for_each_online_cpu()
            .map(|cpu| *packet_count.per_cpu(cpu).unwrap())
            .sum();
        assert_eq!(total, 8 * 1000 + (0..8).sum::<u64>());
        // Each CPU only touched its own copy.
        for cpu in cpus.for_each_online_cpu() {
            assert_eq!(*packet_count.per_cpu(cpu).unwrap(), 1000 + cpu as u64);
        }
        assert_eq!(*packet_count.per_cpu(8).unwrap(), 0);
    }

    #[test]
    fn get_cpu_var_disables_preemption_and_uses_this_cpus_copy() {
        let cpus = Cpus::new(4).unwrap();
        let var = PerCpu::for_cpus(&cpus, |cpu| cpu * 10);
        assert_eq!(var.copies(), 4);
        let _b = cpus.bind(2).unwrap();
        {
            let mut v = var.get_cpu_var(&cpus).unwrap();
            assert_eq!(v.cpu(), 2);
            assert_eq!(*v, 20);
            *v += 1;
            assert_eq!(cpus.preempt_count(), 1);
            assert!(cpus.in_atomic());
            // Other CPUs' copies are reachable meanwhile.
            assert_eq!(*var.per_cpu(3).unwrap(), 30);
        }
        assert_eq!(cpus.preempt_count(), 0);
        assert_eq!(*var.per_cpu(2).unwrap(), 21);
        assert_eq!(var.per_cpu(2).unwrap().cpu(), 2);
        assert!(!cpus.in_atomic(), "per_cpu() does not disable preemption");
        assert_eq!(
            var.per_cpu(4).unwrap_err(),
            CpuError::NoSuchCpu {
                cpu: 4,
                nr_cpu_ids: 4
            }
        );
        assert_eq!(format!("{var:?}"), "[0, 10, 21, 30]");
    }

    #[test]
    fn nested_get_cpu_var_is_an_error_not_a_hang() {
        let cpus = Cpus::new(2).unwrap();
        let var = PerCpu::new(|_| 0u32);
        let other = PerCpu::new(|_| 0u32);
        let outer = var.get_cpu_var(&cpus).unwrap();
        assert_eq!(
            var.get_cpu_var(&cpus).unwrap_err(),
            CpuError::Nested { cpu: 0 }
        );
        assert_eq!(var.per_cpu(0).unwrap_err(), CpuError::Nested { cpu: 0 });
        assert_eq!(cpus.preempt_count(), 1, "failed get_cpu_var re-enabled");
        // Another variable, or another CPU's copy, is fine.
        let inner = other.get_cpu_var(&cpus).unwrap();
        assert_eq!(cpus.preempt_count(), 2);
        drop(var.per_cpu(1).unwrap());
        assert!(CpuError::Nested { cpu: 0 }.to_string().contains("deadlock"));
        drop(inner);
        drop(outer);
        assert_eq!(cpus.preempt_count(), 0);
        drop(var.get_cpu_var(&cpus).unwrap());
    }

    #[test]
    fn per_cpu_from_another_thread_waits_for_the_owner() {
        let cpus = Cpus::new(2).unwrap();
        let var = PerCpu::new(|_| Vec::<u32>::new());
        let held = Barrier::new(2);
        thread::scope(|s| {
            s.spawn(|| {
                cpus.run_on_cpu(1, || {
                    let mut v = var.get_cpu_var(&cpus).unwrap();
                    held.wait();
                    thread::sleep(std::time::Duration::from_millis(20));
                    v.push(1);
                })
                .unwrap();
            });
            held.wait();
            // Blocks until CPU 1 puts its variable, then sees the push.
            assert_eq!(*var.per_cpu(1).unwrap(), vec![1]);
        });
    }

    #[test]
    fn get_mut_needs_no_lock() {
        let mut var = PerCpu::new(|cpu| cpu);
        *var.get_mut(5).unwrap() = 50;
        assert_eq!(*var.per_cpu(5).unwrap(), 50);
        assert!(var.get_mut(NR_CPUS).is_none());
    }

    #[derive(Clone, Copy, Debug)]
    enum Op {
        PreemptDisable,
        GetCpu,
        BhDisable,
        SoftirqEnter,
        IrqEnter,
        NmiEnter,
        IrqSave,
        GetCpuVar,
        Pop,
    }

    /// Any guard; only dropping it matters.
    trait Held {
        fn is_var(&self) -> bool {
            false
        }
    }
    impl Held for PreemptGuard<'_> {}
    impl Held for HardirqGuard<'_> {}
    impl Held for IrqSaveGuard<'_> {}
    impl Held for CpuVarGuard<'_, u64> {
        fn is_var(&self) -> bool {
            true
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => Just(Op::PreemptDisable),
            1 => Just(Op::GetCpu),
            1 => Just(Op::BhDisable),
            1 => Just(Op::SoftirqEnter),
            1 => Just(Op::IrqEnter),
            1 => Just(Op::NmiEnter),
            1 => Just(Op::IrqSave),
            1 => Just(Op::GetCpuVar),
            3 => Just(Op::Pop),
        ]
    }

    proptest! {
        /// Random nests of guards: after every step the count and the IRQ
        /// flag are what a model of Linux's arithmetic says, and when every
        /// guard is gone (in any order) the CPU is back to process context.
        #[test]
        fn random_guard_nesting_stays_balanced(
            cpu in 0usize..4,
            ops in proptest::collection::vec(op(), 0..80),
            drop_order in proptest::collection::vec(any::<prop::sample::Index>(), 80),
        ) {
            let cpus = Cpus::new(4).unwrap();
            let var = PerCpu::for_cpus(&cpus, |_| 0u64);
            let _b = cpus.bind(cpu).unwrap();
            // Model: (count added, irq flag before) per held guard.
            let mut held: Vec<(Box<dyn Held + '_>, u32, bool)> = Vec::new();
            let mut count = 0u32;
            let mut irqs = false;
            let mut warnings = 0u64;
            let mut var_held = false;
            for op in ops {
                let before = irqs;
                let (guard, add): (Box<dyn Held + '_>, u32) = match op {
                    Op::Pop => {
                        if let Some((g, add, prev)) = held.pop() {
                            if g.is_var() {
                                var_held = false;
                            }
                            drop(g);
                            count -= add;
                            irqs = prev;
                        }
                        prop_assert_eq!(cpus.preempt_count(), count);
                        prop_assert_eq!(cpus.irqs_disabled(), irqs);
                        continue;
                    }
                    Op::PreemptDisable => (Box::new(cpus.preempt_disable()), PREEMPT_OFFSET),
                    Op::GetCpu => {
                        let g = cpus.get_cpu();
                        prop_assert_eq!(g.cpu(), cpu);
                        (Box::new(g), PREEMPT_OFFSET)
                    }
                    Op::BhDisable => (Box::new(cpus.local_bh_disable()), SOFTIRQ_DISABLE_OFFSET),
                    Op::SoftirqEnter => (Box::new(cpus.softirq_enter()), SOFTIRQ_OFFSET),
                    Op::IrqEnter => {
                        irqs = true;
                        (Box::new(cpus.irq_enter()), HARDIRQ_OFFSET)
                    }
                    Op::NmiEnter => {
                        irqs = true;
                        (Box::new(cpus.nmi_enter()), NMI_OFFSET + HARDIRQ_OFFSET)
                    }
                    Op::IrqSave => {
                        irqs = true;
                        (Box::new(cpus.local_irq_save()), 0)
                    }
                    Op::GetCpuVar => {
                        match var.get_cpu_var(&cpus) {
                            Ok(mut v) => {
                                prop_assert!(!var_held);
                                var_held = true;
                                *v += 1;
                                (Box::new(v), PREEMPT_OFFSET)
                            }
                            Err(e) => {
                                prop_assert!(var_held);
                                prop_assert_eq!(e, CpuError::Nested { cpu });
                                prop_assert_eq!(cpus.preempt_count(), count);
                                continue;
                            }
                        }
                    }
                };
                // A full field makes the guard inert and counts a warning.
                let add = match checked_count_add(count, add) {
                    Some(_) => add,
                    None => {
                        warnings += 1;
                        0
                    }
                };
                count += add;
                held.push((guard, add, before));
                prop_assert_eq!(cpus.preempt_count(), count);
                prop_assert_eq!(cpus.irqs_disabled(), irqs);
                prop_assert_eq!(
                    cpus.context(),
                    Context::classify(count, irqs)
                );
            }
            // Drop what is left in a random order: counts are additive, so
            // the total comes back to zero whatever the order.
            for idx in drop_order {
                if held.is_empty() {
                    break;
                }
                let i = idx.index(held.len());
                let (g, add, _) = held.remove(i);
                drop(g);
                count -= add;
                prop_assert_eq!(cpus.preempt_count(), count);
            }
            held.clear();
            prop_assert_eq!(cpus.preempt_count(), 0);
            // Out-of-order IRQ restores may leave interrupts off, as
            // misordered local_irq_restore() would; the count is exact.
            prop_assert_eq!(cpus.context(), Context::classify(0, cpus.irqs_disabled()));
            prop_assert_eq!(cpus.warnings(), warnings);
            prop_assert!(cpus.snapshot(cpu).unwrap().preempt_count == 0);
        }
    }
}
