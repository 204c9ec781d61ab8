//! Errors returned by the memory manager.
//!
//! Linux reports misuse with `BUG:` and `WARNING:` lines and carries on; kmm
//! prints the same lines through [`crate::Platform::printk`] and also returns
//! one of these values, leaving its own state intact.

use crate::gfp::GfpFlags;
use core::fmt;

/// Why a call into the memory manager did not do what was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KmmError {
    /// The allocation could not be satisfied (Linux returns NULL).
    NoMemory {
        /// Requested order.
        order: u32,
        /// The mask the caller passed.
        gfp: GfpFlags,
    },
    /// The GFP mask is a combination Linux treats as a bug.
    InvalidGfp {
        /// The mask.
        gfp: GfpFlags,
        /// What is wrong with it.
        why: &'static str,
    },
    /// `order >= MAX_ORDER`.
    OrderTooLarge {
        /// Requested order.
        order: u32,
    },
    /// A sleeping allocation was made in atomic context
    /// ("BUG: sleeping function called from invalid context").
    SleepInAtomic {
        /// `preempt_count()` at the time of the call.
        preempt_count: u32,
        /// `irqs_disabled()` at the time of the call.
        irqs_disabled: bool,
    },
    /// A page was freed or put in a state it cannot be in ("BUG: Bad page state").
    BadPageState {
        /// The page frame.
        pfn: u64,
        /// Linux's "page dumped because" reason.
        reason: &'static str,
    },
    /// A frame number, physical or virtual address is outside the memory map.
    InvalidAddress {
        /// The address or frame number as given.
        addr: u64,
        /// Which kind of address it was.
        what: &'static str,
    },
    /// A node id at or above `nr_node_ids`.
    InvalidNode {
        /// The node id.
        nid: usize,
    },
    /// A boot-time (memblock) request that cannot be met.
    Memblock {
        /// What went wrong.
        why: &'static str,
        /// Size of the request in bytes.
        size: u64,
    },
    /// A machine description the memory manager cannot boot.
    BadMachine {
        /// What is wrong with it.
        why: &'static str,
    },
    /// A request above a fixed limit (`KMALLOC_MAX_SIZE`, ...).
    TooLarge {
        /// Bytes asked for.
        size: u64,
        /// The limit.
        max: u64,
        /// The limit's Linux name.
        what: &'static str,
    },
    /// A mempool call that cannot be honoured.
    Mempool {
        /// What went wrong.
        why: &'static str,
    },
    /// A fixed-size table (memblock regions, CPUs, nodes) is full.
    TableFull {
        /// Which table.
        what: &'static str,
    },
    /// An argument Linux would reject with `-EINVAL` (a bad cache name or
    /// size, an overflowing `kcalloc`, ...).
    InvalidArgument {
        /// What is wrong.
        what: &'static str,
    },
    /// A handle to a slab cache that has been destroyed.
    StaleCache {
        /// The slot the handle named.
        slot: u16,
    },
    /// `kmem_cache_destroy` of a cache whose objects are still allocated
    /// (Linux: "Slab cache still has objects").
    CacheBusy {
        /// Objects still allocated.
        objects: u64,
    },
    /// A slab object was freed or found in a state it cannot be in: not an
    /// object of the cache, a double free, damaged red zones (SLUB's `BUG` reports).
    BadObject {
        /// The object's address.
        addr: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// `set_pte_at` over an existing mapping (Linux: a `BUG_ON(!pte_none())`
    /// or `-EEXIST` from `vmap`).
    AlreadyMapped {
        /// The virtual address asked for.
        virt: u64,
    },
    /// A page-table operation on an address nothing maps.
    NotMapped {
        /// The virtual address.
        virt: u64,
    },
    /// A system call's error number (`-ENOMEM`, `-EINVAL`, ...), with what
    /// was wrong.
    Errno {
        /// The error number.
        errno: crate::errno::Errno,
        /// What was wrong, for messages.
        what: &'static str,
    },
    /// The magic word at a kernel stack's `end_of_stack()` is gone
    /// (`task_stack_end_corrupted()`; Linux: "Kernel panic - not syncing:
    /// corrupted stack end detected inside scheduler").
    StackCorrupted {
        /// `end_of_stack()`.
        end: u64,
        /// What the word holds instead of `STACK_END_MAGIC`.
        found: u64,
    },
    /// A simulated frame would reach below its kernel stack (Linux: "BUG:
    /// TASK stack guard page was hit" with `CONFIG_VMAP_STACK`, silent
    /// corruption of the page below without it).
    StackOverflow {
        /// The lowest address the frame would have written.
        addr: u64,
        /// Whether the (emulated) guard page caught it.
        guard_page: bool,
    },
}

impl fmt::Display for KmmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            KmmError::NoMemory { order, gfp } => {
                write!(f, "page allocation failure: order:{order}, mode:{gfp:?}")
            }
            KmmError::InvalidGfp { gfp, why } => write!(f, "invalid gfp mask {gfp:?}: {why}"),
            KmmError::OrderTooLarge { order } => {
                write!(f, "order {order} is not below MAX_ORDER ({})", crate::MAX_ORDER)
            }
            KmmError::SleepInAtomic {
                preempt_count,
                irqs_disabled,
            } => write!(
                f,
                "sleeping function called from invalid context (preempt_count: {preempt_count:#x}, irqs_disabled(): {})",
                irqs_disabled as u8
            ),
            KmmError::BadPageState { pfn, reason } => {
                write!(f, "Bad page state pfn:{pfn:05x}: {reason}")
            }
            KmmError::InvalidAddress { addr, what } => write!(f, "invalid {what} {addr:#x}"),
            KmmError::InvalidNode { nid } => write!(f, "node {nid} does not exist"),
            KmmError::Memblock { why, size } => write!(f, "memblock: {why} (size {size:#x})"),
            KmmError::BadMachine { why } => write!(f, "cannot boot this machine: {why}"),
            KmmError::TooLarge { size, max, what } => {
                write!(f, "{size} bytes is above {what} ({max} bytes)")
            }
            KmmError::Mempool { why } => write!(f, "mempool: {why}"),
            KmmError::TableFull { what } => write!(f, "{what} table is full"),
            KmmError::InvalidArgument { what } => write!(f, "invalid argument: {what}"),
            KmmError::StaleCache { slot } => {
                write!(f, "slab cache (slot {slot}) has been destroyed")
            }
            KmmError::CacheBusy { objects } => {
                let s = if objects == 1 { "" } else { "s" };
                write!(f, "slab cache still has {objects} object{s}")
            }
            KmmError::BadObject { addr, why } => write!(f, "object {addr:#x}: {why}"),
            KmmError::AlreadyMapped { virt } => {
                write!(f, "virtual address {virt:#x} is already mapped")
            }
            KmmError::NotMapped { virt } => write!(f, "virtual address {virt:#x} is not mapped"),
            KmmError::StackCorrupted { end, found } => write!(
                f,
                "corrupted stack end detected: end_of_stack {end:#x} holds {found:#x}"
            ),
            KmmError::Errno { errno, what } => write!(f, "{what}: {errno}"),
            KmmError::StackOverflow { addr, guard_page } => {
                if guard_page {
                    write!(f, "stack guard page was hit at {addr:#x}")
                } else {
                    write!(f, "kernel stack overflow: frame reaches {addr:#x}, below the stack")
                }
            }
        }
    }
}

#[cfg(feature = "std")]
extern crate std;

#[cfg(feature = "std")]
impl std::error::Error for KmmError {}
