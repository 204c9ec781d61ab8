//! The software MMU: per-CPU TLBs in front of the page-table walker
//! (x86's MMU; Linux's side of it is `arch/x86/mm/tlb.c`).
//!
//! Every CPU has one TLB, a set-associative cache of translations keyed by
//! virtual page number, page size and address-space tag (x86's PCID), with
//! LRU replacement inside a set. A translation is a TLB lookup; on a miss the
//! MMU walks the page table with [`PageTable::walk_and_mark`], which sets the
//! accessed bits and, for a write, the leaf's dirty bit as the hardware does,
//! and fills the TLB. Permissions are checked as x86 checks them (with
//! `CR0.WP` set, as Linux runs): a write to a read-only page, a user access
//! to a supervisor page and an instruction fetch from a no-execute page are
//! protection faults; an address nothing maps is a not-present fault. A
//! write that hits an entry whose dirty bit is clear goes to the page walk
//! again so the dirty bit reaches the page table (the hardware's
//! "dirty assist").
//!
//! Flushes mirror Linux: [`Mmu::invlpg`], [`Mmu::flush_tlb_local`],
//! [`Mmu::flush_tlb_all`], [`Mmu::flush_tlb_range`] (`flush_tlb_mm_range`
//! with `native_flush_tlb_multi`'s IPIs to the other CPUs) and
//! [`Mmu::flush_tlb_kernel_range`]. A shootdown is synchronous, like an IPI
//! sent with `wait=1`: when the call returns, no CPU holds a stale entry.
//!
//! # Concurrency
//! Each CPU's TLB has its own lock (never a global one). Fills,
//! invalidations, shootdowns, [`Mmu::switch_mm`] and statistics snapshots
//! take it; a translation that misses takes it too, and holds it across its
//! walk and fill, so a shootdown that arrives meanwhile (it needs that lock)
//! cannot be overtaken by the fill of a translation it was meant to kill.
//!
//! A TLB hit takes no lock. Each entry is a few words (a key with the
//! page, its size and a valid bit; a value with the physical address and
//! the flags, global bit included; the address-space tag), and each CPU's
//! TLB has a version, together a seqlock: writers, always under the lock,
//! make the version odd, change entries, and make it even again. A lookup
//! reads the version, finds the entry whose key and tag match, and uses it
//! only if the version was even and has not changed since; otherwise it
//! retries under the lock. So when an invalidation (a shootdown, `invlpg`,
//! a flush) has returned, no later lookup can use the entry: a lookup that
//! validated before the invalidation began is an access that completed
//! before it, as on hardware, where the IPI waits for the instruction in
//! flight.
//!
//! A CPU is one thread at a time (its translations come from the thread
//! running it), so the LRU clock (which also counts the hits) and the
//! entries' LRU stamps, which hits update, are plain relaxed loads and
//! stores rather than atomic read-modify-writes: a CPU never races with
//! itself. If two threads did use one CPU number at once, translations
//! would stay correct; only hit counts and the LRU order could lose updates.
//! A TLB hit neither allocates, formats nor locks.

use crate::machine::{Machine, SimPlatform};
use kmm::{Kmm, KmmError, PageTable, Platform, PteFlags};
use std::fmt;
use std::sync::atomic::{
    fence, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// x86's `X86_PF_PROT`: the page was present (a protection violation).
pub const X86_PF_PROT: u32 = 1 << 0;
/// x86's `X86_PF_WRITE`: the access was a write.
pub const X86_PF_WRITE: u32 = 1 << 1;
/// x86's `X86_PF_USER`: the access came from user mode.
pub const X86_PF_USER: u32 = 1 << 2;
/// x86's `X86_PF_INSTR`: the access was an instruction fetch.
pub const X86_PF_INSTR: u32 = 1 << 4;

/// Linux's `tlb_single_page_flush_ceiling`: a ranged flush of more pages
/// than this flushes the whole TLB instead of page by page.
pub const TLB_SINGLE_PAGE_FLUSH_CEILING: u64 = 33;

/// The kind of memory access (the `W`/`I` bits of x86's page-fault error
/// code, `FAULT_FLAG_WRITE`, `VM_EXEC`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// A data load.
    Read,
    /// A data store.
    Write,
    /// An instruction fetch.
    Exec,
}

/// What kind of exception an access raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// `#PF`, a page fault (`exc_page_fault`): not present or a permission
    /// violation, as the error code's `P` bit says.
    Page,
    /// `#GP` for a non-canonical address (x86_64), which never reaches the
    /// page tables.
    NonCanonical,
    /// The translation points outside RAM (a machine check, `#MC`, on real
    /// hardware).
    BadPhys,
}

/// A failed access: what `exc_page_fault` receives (`CR2` and the error
/// code), or a `#GP`/`#MC` for the cases the page walk never answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fault {
    /// The faulting virtual address (`CR2`, `address` in `do_user_addr_fault`).
    pub addr: u64,
    /// x86's page-fault error code: [`X86_PF_PROT`], [`X86_PF_WRITE`],
    /// [`X86_PF_USER`], [`X86_PF_INSTR`].
    pub error_code: u32,
    /// Which exception.
    pub kind: FaultKind,
}

impl Fault {
    fn new(addr: u64, kind: FaultKind, present: bool, access: Access, user: bool) -> Fault {
        let mut error_code = 0;
        if present {
            error_code |= X86_PF_PROT;
        }
        match access {
            Access::Read => {}
            Access::Write => error_code |= X86_PF_WRITE,
            Access::Exec => error_code |= X86_PF_INSTR,
        }
        if user {
            error_code |= X86_PF_USER;
        }
        Fault {
            addr,
            error_code,
            kind,
        }
    }

    /// The page was present: a protection fault (`X86_PF_PROT` set).
    pub fn is_protection(&self) -> bool {
        self.kind == FaultKind::Page && self.error_code & X86_PF_PROT != 0
    }

    /// Nothing mapped the page: a not-present fault (`X86_PF_PROT` clear).
    pub fn is_not_present(&self) -> bool {
        self.kind == FaultKind::Page && self.error_code & X86_PF_PROT == 0
    }
}

impl fmt::Display for Fault {
    /// Like the lines of `show_fault_oops`/`page_fault_oops`:
    /// `#PF: supervisor write access in kernel mode ... error_code(0x0003) - permissions violation`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            FaultKind::NonCanonical => write!(
                f,
                "general protection fault, probably for non-canonical address {:#x}",
                self.addr
            ),
            FaultKind::BadPhys => write!(
                f,
                "machine check: address {:#x} translates outside RAM",
                self.addr
            ),
            FaultKind::Page => {
                let user = self.error_code & X86_PF_USER != 0;
                let what = if self.error_code & X86_PF_INSTR != 0 {
                    "instruction fetch"
                } else if self.error_code & X86_PF_WRITE != 0 {
                    "write access"
                } else {
                    "read access"
                };
                let why = if self.error_code & X86_PF_PROT != 0 {
                    "permissions violation"
                } else {
                    "not-present page"
                };
                write!(
                    f,
                    "page fault for address: {:#x}, #PF: {} {what} in {} mode, #PF: error_code({:#06x}) - {why}",
                    self.addr,
                    if user { "user" } else { "supervisor" },
                    if user { "user" } else { "kernel" },
                    self.error_code
                )
            }
        }
    }
}

impl std::error::Error for Fault {}

/// The shape of each CPU's TLB (a real L1 dTLB: 64 entries, 4-way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbConfig {
    /// Entries per CPU; a multiple of `ways` with a power-of-two number of sets.
    pub entries: usize,
    /// Associativity (ways per set); `entries` gives a fully associative TLB.
    pub ways: usize,
    /// Address-space tags (x86's `CR4.PCIDE`): entries carry the ASID and
    /// survive [`Mmu::switch_mm`]. Without tags, switching flushes the
    /// non-global entries, as a `CR3` write does.
    pub pcid: bool,
}

impl Default for TlbConfig {
    fn default() -> Self {
        TlbConfig {
            entries: 64,
            ways: 4,
            pcid: true,
        }
    }
}

/// One CPU's TLB counters (Linux's `NR_TLB_*` vmstat events plus the
/// hit/miss/walk counts of the hardware's performance counters,
/// `dTLB-loads`, `dTLB-load-misses`, `page_walker_loads`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlbStats {
    /// The CPU.
    pub cpu: usize,
    /// Translations that found their entry in the TLB (a write that then
    /// walks to set the dirty bit counts here and in `walks`).
    pub hits: u64,
    /// Translations the TLB could not answer.
    pub misses: u64,
    /// Page walks (misses, plus writes that hit a clean entry and walk to
    /// set the dirty bit).
    pub walks: u64,
    /// Whole-TLB flushes on this CPU (`nr_tlb_local_flush_all`, and those
    /// done for a shootdown).
    pub flushes: u64,
    /// Single-page invalidations on this CPU (`invlpg`, `nr_tlb_local_flush_one`).
    pub invlpg: u64,
    /// Shootdown IPIs this CPU sent (`nr_tlb_remote_flush`).
    pub shootdowns_sent: u64,
    /// Shootdown IPIs this CPU received and served (`nr_tlb_remote_flush_received`,
    /// the `TLB` line of `/proc/interrupts`).
    pub shootdowns_received: u64,
    /// Address-space switches (`switch_mm_irqs_off`).
    pub switches: u64,
}

impl fmt::Display for TlbStats {
    /// Like a debugfs file: one `name value` line per counter, prefixed by the CPU.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.cpu;
        writeln!(f, "cpu{c} tlb_hits {}", self.hits)?;
        writeln!(f, "cpu{c} tlb_misses {}", self.misses)?;
        writeln!(f, "cpu{c} tlb_walks {}", self.walks)?;
        writeln!(f, "cpu{c} nr_tlb_local_flush_all {}", self.flushes)?;
        writeln!(f, "cpu{c} nr_tlb_local_flush_one {}", self.invlpg)?;
        writeln!(f, "cpu{c} nr_tlb_remote_flush {}", self.shootdowns_sent)?;
        writeln!(
            f,
            "cpu{c} nr_tlb_remote_flush_received {}",
            self.shootdowns_received
        )?;
        writeln!(f, "cpu{c} tlb_switch_mm {}", self.switches)
    }
}

/// One cached translation, decoded (what flushes look at, under the lock).
#[derive(Clone, Copy, Debug)]
struct TlbEntry {
    /// Virtual page number (`virt >> shift`).
    vpn: u64,
    /// Address-space tag (0 when tags are off).
    asid: u16,
    /// log2 of the page size.
    shift: u32,
    global: bool,
}

impl TlbEntry {
    fn start(&self) -> u64 {
        self.vpn << self.shift
    }
    fn last(&self) -> u64 {
        self.start() + ((1u64 << self.shift) - 1)
    }
}

/// Key word: the entry is valid.
const KEY_VALID: u64 = 1 << 0;
/// Key word: the page shift sits in bits 1-6.
const KEY_SHIFT: u32 = 1;
/// Key and value words: the low bits below the page (every page is at least
/// 4 KiB, so a page's address leaves them free).
const LOW: u64 = 0xfff;
/// Smallest page shift an entry can hold (the packing needs 12 free bits).
const MIN_SHIFT: u32 = 12;
/// Value word: the flag bits kept in place (`PRESENT` to `GLOBAL`).
const VAL_FLAGS: u64 = 0x1ff;
/// Value word: the entry is global (`_PAGE_GLOBAL`, in place).
const VAL_GLOBAL: u64 = PteFlags::GLOBAL.bits();
/// Value word: where `_PAGE_NX` (bit 63 of the flags) is kept.
const VAL_NX: u32 = 11;
/// A CPU's version ([`CpuTlb::seq`]) is odd while a writer changes entries.
const SEQ_BUSY: u64 = 1;

/// The key word of a valid entry for `vpn` with page shift `shift`.
#[inline(always)]
fn key_of(vpn: u64, shift: u32) -> u64 {
    (vpn << shift) | (u64::from(shift) << KEY_SHIFT) | KEY_VALID
}

/// The value word of a page at `start` mapped at physical `base`: the
/// distance from the virtual to the physical page (so that a hit's physical
/// address is one addition away), with the flags packed into its low bits.
#[inline(always)]
fn val_of(start: u64, base: u64, flags: PteFlags) -> u64 {
    let f = flags.bits();
    base.wrapping_sub(start) | (f & VAL_FLAGS) | ((f >> 63) << VAL_NX)
}

/// The physical address of `virt` through an entry with value word `val`.
#[inline(always)]
fn val_phys(val: u64, virt: u64) -> u64 {
    virt.wrapping_add(val & !LOW)
}

/// The flags of a value word.
#[inline(always)]
fn val_flags(val: u64) -> PteFlags {
    PteFlags::from_bits_retain((val & VAL_FLAGS) | (((val >> VAL_NX) & 1) << 63))
}

/// One TLB entry as the lock-free lookup reads it. Its key, value and tag
/// change only under the CPU's lock, between [`CpuTlb::write_begin`] and
/// [`CpuTlb::write_end`] (the CPU's seqlock).
#[repr(C, align(32))]
#[derive(Debug, Default)]
struct Slot {
    /// `page start | shift << 1 | VALID` ([`key_of`]); 0 when invalid.
    key: AtomicU64,
    /// `physical base - page start | flags` ([`val_of`]); the leaf's flags
    /// when cached, dirty and global bits included.
    val: AtomicU64,
    /// The address-space tag (0 when tags are off).
    tag: AtomicU64,
    /// LRU clock value of the last use (hits store it without the lock).
    stamp: AtomicU64,
}

impl Slot {
    /// Replaces the entry; the caller holds the CPU's lock and has opened a
    /// change with [`CpuTlb::write_begin`].
    #[inline]
    fn set(&self, key: u64, val: u64, tag: u16) {
        self.key.store(key, Relaxed);
        self.val.store(val, Relaxed);
        self.tag.store(u64::from(tag), Relaxed);
    }

    /// The entry decoded, if valid (under the lock).
    fn entry(&self) -> Option<TlbEntry> {
        let key = self.key.load(Relaxed);
        if key & KEY_VALID == 0 {
            return None;
        }
        let shift = ((key >> KEY_SHIFT) & 63) as u32;
        Some(TlbEntry {
            vpn: (key & !LOW) >> shift,
            asid: self.tag.load(Relaxed) as u16,
            shift,
            global: self.val.load(Relaxed) & VAL_GLOBAL != 0,
        })
    }
}

/// Slots per block: a set is scanned a block at a time, each block's
/// comparisons unrolled.
const BLOCK: usize = 4;

/// A block of slots of one set.
type Block = [Slot; BLOCK];

/// What a lock-free lookup found.
#[derive(Clone, Copy, Debug)]
enum Probe<'a> {
    /// Entry `slot` translates the address: its value word and page shift.
    Hit {
        slot: &'a Slot,
        val: u64,
        shift: u32,
    },
    /// No entry translates the address.
    Miss,
    /// A writer changed the TLB during the lookup (or was at work when it
    /// began): look again under the lock.
    Retry,
}

/// Why a translation takes the slow path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slow {
    /// The lookup missed (counted there).
    Miss,
    /// The lookup met a writer: look again under the lock.
    Lookup,
    /// A write hit a clean entry (hit counted): walk to set the dirty bit.
    DirtyAssist,
}

/// One CPU's TLB: entries and the counters hits touch, then the lock and
/// what it guards. On its own cache lines.
#[repr(align(64))]
#[derive(Debug)]
struct CpuTlb {
    /// The seqlock's version: odd while a writer (under the lock) changes
    /// entries, bumped twice per change.
    seq: AtomicU64,
    /// Bit `s` set: some valid entry may have page shift `s` (stored under
    /// the lock, read by lookups; a stale bit only costs a look).
    shifts: AtomicU64,
    /// The LRU clock: one tick per hit and per fill, so that the hits are
    /// the clock less [`Tlb::fills`].
    clock: AtomicU64,
    /// The slots, set by set, each set in [`Mmu::blocks_per_set`] blocks
    /// (its last block padded with slots that stay invalid).
    blocks: Box<[Block]>,
    /// Taken by everything but a lookup that hits.
    locked: Mutex<Tlb>,
}

impl CpuTlb {
    /// Opens a change of entries (the caller holds the lock): the seqlock's
    /// write side. Returns the version to hand to [`Self::write_end`].
    #[inline]
    fn write_begin(&self) -> u64 {
        let seq = self.seq.load(Relaxed) & !SEQ_BUSY;
        self.seq.store(seq | SEQ_BUSY, Relaxed);
        // Orders the odd version before the entries' new words: a lookup
        // that sees any of them also sees the version change when it looks
        // at the version again.
        fence(Release);
        seq
    }

    /// Closes the change opened by [`Self::write_begin`].
    #[inline]
    fn write_end(&self, seq: u64) {
        self.seq.store(seq.wrapping_add(2), Release);
    }
}

/// What one CPU's lock guards.
#[derive(Debug)]
struct Tlb {
    /// The loaded address space (`cpu_tlbstate.loaded_mm_asid`).
    asid: u16,
    /// Counters; `hits` is worked out from [`CpuTlb::clock`].
    stats: TlbStats,
    /// Entries filled (ticks of the clock that are not hits).
    fills: u64,
}

/// One CPU's TLB, locked: what changes entries.
struct Locked<'a> {
    t: &'a CpuTlb,
    g: MutexGuard<'a, Tlb>,
}

impl Locked<'_> {
    fn invalidate_where(&mut self, mut f: impl FnMut(&TlbEntry) -> bool) {
        let mut shifts = 0;
        let mut open = None;
        for s in self.t.blocks.iter().flatten() {
            let Some(e) = s.entry() else { continue };
            if f(&e) {
                if open.is_none() {
                    open = Some(self.t.write_begin());
                }
                s.set(0, 0, 0);
            } else {
                shifts |= 1u64 << e.shift;
            }
        }
        if let Some(seq) = open {
            self.t.write_end(seq);
        }
        self.t.shifts.store(shifts, Relaxed);
    }

    /// Everything but global entries (a `CR3` write).
    fn flush_non_global(&mut self) {
        self.invalidate_where(|e| !e.global);
        self.g.stats.flushes += 1;
    }

    /// Everything (`__flush_tlb_all`, toggling `CR4.PGE`).
    fn flush_everything(&mut self) {
        self.invalidate_where(|_| true);
        self.g.stats.flushes += 1;
    }

    /// Counters, `hits` included.
    fn stats(&self) -> TlbStats {
        TlbStats {
            hits: self.t.clock.load(Relaxed).saturating_sub(self.g.fills),
            ..self.g.stats
        }
    }
}

/// `*a += 1` by the one thread that updates `a` (see the module's
/// "Concurrency"): a load and a store, not a read-modify-write.
#[inline(always)]
fn bump(a: &AtomicU64) -> u64 {
    let v = a.load(Relaxed).wrapping_add(1);
    a.store(v, Relaxed);
    v
}

/// The software MMU of a machine: one TLB per CPU (Linux's per-CPU
/// `cpu_tlbstate`) in front of the page-table walker.
pub struct Mmu<'k, P: Platform> {
    k: &'k Kmm<P>,
    cfg: TlbConfig,
    set_mask: u64,
    /// Blocks of [`BLOCK`] slots per set.
    blocks_per_set: usize,
    tlbs: Vec<CpuTlb>,
}

impl<P: Platform> fmt::Debug for Mmu<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mmu")
            .field("cfg", &self.cfg)
            .field("cpus", &self.tlbs.len())
            .finish()
    }
}

impl<'m> Mmu<'m, SimPlatform> {
    /// The MMU of a booted machine with the default TLB shape.
    pub fn for_machine(m: &'m Machine) -> Mmu<'m, SimPlatform> {
        Mmu::new(m.kmm(), TlbConfig::default()).expect("the default TLB shape is valid")
    }
}

impl<'k, P: Platform> Mmu<'k, P> {
    /// An MMU with one empty TLB of shape `cfg` per possible CPU of `k`
    /// (`nr_cpu_ids`), every CPU on address space 0.
    ///
    /// Errors: [`KmmError::InvalidArgument`] when `cfg` has no ways, or
    /// `entries` is not a multiple of `ways` giving a power-of-two number of sets.
    pub fn new(k: &'k Kmm<P>, cfg: TlbConfig) -> Result<Self, KmmError> {
        if cfg.ways == 0
            || cfg.entries == 0
            || !cfg.entries.is_multiple_of(cfg.ways)
            || !(cfg.entries / cfg.ways).is_power_of_two()
        {
            return Err(KmmError::InvalidArgument {
                what: "TLB shape: entries must be ways times a power of two",
            });
        }
        let sets = cfg.entries / cfg.ways;
        let blocks_per_set = cfg.ways.div_ceil(BLOCK);
        let tlbs = (0..k.nr_cpu_ids())
            .map(|cpu| CpuTlb {
                seq: AtomicU64::new(0),
                shifts: AtomicU64::new(0),
                clock: AtomicU64::new(0),
                blocks: (0..sets * blocks_per_set)
                    .map(|_| Block::default())
                    .collect(),
                locked: Mutex::new(Tlb {
                    asid: 0,
                    stats: TlbStats {
                        cpu,
                        ..TlbStats::default()
                    },
                    fills: 0,
                }),
            })
            .collect();
        Ok(Mmu {
            k,
            cfg,
            set_mask: sets as u64 - 1,
            blocks_per_set,
            tlbs,
        })
    }

    /// The TLB shape.
    pub fn config(&self) -> TlbConfig {
        self.cfg
    }

    /// Number of CPUs (TLBs).
    pub fn nr_cpus(&self) -> usize {
        self.tlbs.len()
    }

    fn tlb(&self, cpu: usize) -> Locked<'_> {
        let t = &self.tlbs[cpu];
        Locked {
            t,
            g: t.locked.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    #[inline]
    fn tag(&self, asid: u16) -> u16 {
        if self.cfg.pcid {
            asid
        } else {
            0
        }
    }

    /// Looks `virt` up in `t` without the lock: the seqlock's read side.
    #[inline(always)]
    fn probe<'t>(&self, t: &'t CpuTlb, tag: u16, virt: u64) -> Probe<'t> {
        let seq = t.seq.load(Acquire);
        if seq & SEQ_BUSY != 0 {
            return Probe::Retry;
        }
        let bps = self.blocks_per_set;
        let mut shifts = t.shifts.load(Relaxed);
        while shifts != 0 {
            let shift = shifts.trailing_zeros();
            shifts &= shifts - 1;
            let vpn = virt >> shift;
            let want = key_of(vpn, shift);
            let set = (vpn & self.set_mask) as usize;
            if bps == 1 {
                // Up to BLOCK ways (the usual shapes): one block.
                let Some(block) = t.blocks.get(set) else {
                    return Probe::Miss;
                };
                if let Some(p) = Self::scan(t, seq, block, want, tag, shift) {
                    return p;
                }
            } else {
                let Some(blocks) = t.blocks.get(set * bps..(set + 1) * bps) else {
                    return Probe::Miss;
                };
                for block in blocks {
                    if let Some(p) = Self::scan(t, seq, block, want, tag, shift) {
                        return p;
                    }
                }
            }
        }
        // A miss needs no second look at the version: it walks, under the
        // lock.
        Probe::Miss
    }

    /// Looks for key `want` of address space `tag` in one block of a set of
    /// `t`, whose version was `seq` when the lookup began.
    #[inline(always)]
    fn scan<'t>(
        t: &CpuTlb,
        seq: u64,
        block: &'t Block,
        want: u64,
        tag: u16,
        shift: u32,
    ) -> Option<Probe<'t>> {
        for s in block {
            if s.key.load(Relaxed) != want {
                continue;
            }
            let val = s.val.load(Relaxed);
            if val & VAL_GLOBAL == 0 && s.tag.load(Relaxed) != u64::from(tag) {
                continue;
            }
            // Orders the loads of the entry before the second look at the
            // version: unchanged, no writer touched the TLB meanwhile.
            fence(Acquire);
            if t.seq.load(Relaxed) != seq {
                return Some(Probe::Retry);
            }
            return Some(Probe::Hit {
                slot: s,
                val,
                shift,
            });
        }
        None
    }

    /// Puts a translation in `tlb`, replacing an entry for the same page or
    /// the set's least recently used one.
    fn fill(
        &self,
        tlb: &mut Locked<'_>,
        tag: u16,
        vpn: u64,
        shift: u32,
        base: u64,
        flags: PteFlags,
    ) {
        if !(MIN_SHIFT..64).contains(&shift) || base & LOW != 0 {
            // No format has pages this small; such a translation is simply
            // not cached (every access walks).
            return;
        }
        let t = tlb.t;
        let ways = self.cfg.ways;
        let bps = self.blocks_per_set;
        let first = (vpn & self.set_mask) as usize * bps;
        let global = flags.pte_global();
        let key = key_of(vpn, shift);
        let set = &t.blocks[first..first + bps];
        // One pass over the set's `ways` slots: the first entry for the same
        // page, else the first free one, else the least recently used (the
        // first of equals).
        let (mut same, mut free, mut lru) = (None, None, (u64::MAX, &set[0][0]));
        let mut left = ways;
        'scan: for block in set {
            for s in block {
                if left == 0 {
                    break 'scan;
                }
                left -= 1;
                let k = s.key.load(Relaxed);
                if k & KEY_VALID == 0 {
                    free = free.or(Some(s));
                    continue;
                }
                if k == key
                    && (global
                        || s.val.load(Relaxed) & VAL_GLOBAL != 0
                        || s.tag.load(Relaxed) == u64::from(tag))
                {
                    same = Some(s);
                    break 'scan;
                }
                let stamp = s.stamp.load(Relaxed);
                if stamp < lru.0 {
                    lru = (stamp, s);
                }
            }
        }
        let slot = same.or(free).unwrap_or(lru.1);
        let clock = bump(&t.clock);
        tlb.g.fills += 1;
        t.shifts
            .store(t.shifts.load(Relaxed) | (1u64 << shift), Relaxed);
        let seq = t.write_begin();
        slot.set(key, val_of(vpn << shift, base, flags), tag);
        t.write_end(seq);
        slot.stamp.store(clock, Relaxed);
    }

    fn check(flags: PteFlags, virt: u64, access: Access, user: bool) -> Result<(), Fault> {
        let denied = (user && !flags.contains(PteFlags::USER))
            || (access == Access::Write && !flags.pte_write())
            || (access == Access::Exec && !flags.pte_exec());
        if denied {
            Err(Fault::new(virt, FaultKind::Page, true, access, user))
        } else {
            Ok(())
        }
    }

    /// A hit on `slot` of `t`: counts it (a tick of the clock, the slot's
    /// new stamp), and answers unless it is a write through a clean entry
    /// (`None`: walk to set the dirty bit).
    #[inline(always)]
    fn use_hit(
        t: &CpuTlb,
        slot: &Slot,
        val: u64,
        shift: u32,
        virt: u64,
        access: Access,
        user: bool,
    ) -> Option<Result<(u64, u64), Fault>> {
        slot.stamp.store(bump(&t.clock), Relaxed);
        let flags = val_flags(val);
        if let Err(f) = Self::check(flags, virt, access, user) {
            return Some(Err(f));
        }
        if access != Access::Write || flags.pte_dirty() {
            return Some(Ok((val_phys(val, virt), 1u64 << shift)));
        }
        None
    }

    /// The translation with its page size: `(phys, size)`.
    #[inline(always)]
    fn translate_sized(
        &self,
        cpu: usize,
        pt: &PageTable,
        asid: u16,
        virt: u64,
        access: Access,
        user: bool,
    ) -> Result<(u64, u64), Fault> {
        let tag = self.tag(asid);
        let t = &self.tlbs[cpu];
        let how = match self.probe(t, tag, virt) {
            Probe::Hit { slot, val, shift } => {
                match Self::use_hit(t, slot, val, shift, virt, access, user) {
                    Some(answer) => return answer,
                    None => Slow::DirtyAssist,
                }
            }
            Probe::Miss => Slow::Miss,
            Probe::Retry => Slow::Lookup,
        };
        self.translate_slow(cpu, pt, tag, virt, access, user, how)
    }

    /// The part of a translation under the CPU's lock: a second look if
    /// the lock-free one met a writer, then the page walk and the fill.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)] // translate()'s five, the tag and why
    fn translate_slow(
        &self,
        cpu: usize,
        pt: &PageTable,
        tag: u16,
        virt: u64,
        access: Access,
        user: bool,
        how: Slow,
    ) -> Result<(u64, u64), Fault> {
        let mut tlb = self.tlb(cpu);
        let t = tlb.t;
        match how {
            Slow::DirtyAssist => {}
            Slow::Miss => tlb.g.stats.misses += 1,
            // Under the lock no writer is at work: the look is exact.
            Slow::Lookup => match self.probe(t, tag, virt) {
                Probe::Hit { slot, val, shift } => {
                    if let Some(answer) = Self::use_hit(t, slot, val, shift, virt, access, user) {
                        return answer;
                    }
                }
                Probe::Miss | Probe::Retry => tlb.g.stats.misses += 1,
            },
        }
        tlb.g.stats.walks += 1;
        // A walk fails for an address nothing maps and for a non-canonical
        // one (`#GP`, not `#PF`): which one is asked only then.
        let absent = || {
            let kind = if pt.is_canonical(virt) {
                FaultKind::Page
            } else {
                FaultKind::NonCanonical
            };
            Fault::new(virt, kind, false, access, user)
        };
        if user || access == Access::Exec {
            // A user or execute check may fail after the marking walk has set
            // bits: look first. (A write to a read-only page is refused by
            // `walk_and_mark` itself before it marks anything.)
            let t = pt.walk(self.k, virt).ok_or_else(absent)?;
            Self::check(t.flags, virt, access, user)?;
        }
        let Some(t) = pt.walk_and_mark(self.k, virt, access == Access::Write) else {
            // Not mapped, or a write to a read-only page: which one?
            let t = pt.walk(self.k, virt).ok_or_else(absent)?;
            Self::check(t.flags, virt, access, user)?;
            return Err(Fault::new(virt, FaultKind::Page, false, access, user));
        };
        Self::check(t.flags, virt, access, user)?;
        let shift = t.size.trailing_zeros();
        let base = t.phys - (virt & (t.size - 1));
        self.fill(&mut tlb, tag, virt >> shift, shift, base, t.flags);
        Ok((t.phys, t.size))
    }

    /// The MMU's translation of `virt` on `cpu` in address space `asid`
    /// (the PCID) through the page table `pt` (the `CR3` root): a TLB lookup,
    /// else a page walk that sets accessed/dirty bits and fills the TLB.
    /// Returns the physical address, or the [`Fault`] x86 would raise.
    ///
    /// Panics when `cpu` is not below [`Self::nr_cpus`] (as `per_cpu()` of
    /// a CPU that does not exist is a bug).
    #[inline]
    pub fn translate(
        &self,
        cpu: usize,
        pt: &PageTable,
        asid: u16,
        virt: u64,
        access: Access,
        user: bool,
    ) -> Result<u64, Fault> {
        self.translate_sized(cpu, pt, asid, virt, access, user)
            .map(|(phys, _)| phys)
    }

    /// A kernel-mode load of `buf.len()` bytes at `virt` through the MMU
    /// (what a `memcpy` from a vmalloc or kmap address does), page by page.
    pub fn read(
        &self,
        cpu: usize,
        pt: &PageTable,
        asid: u16,
        virt: u64,
        buf: &mut [u8],
    ) -> Result<(), Fault> {
        self.by_page(cpu, pt, asid, virt, buf.len(), Access::Read, |phys, r| {
            self.k.phys().read(phys, &mut buf[r])
        })
    }

    /// A kernel-mode store of `data` at `virt` through the MMU, page by page.
    /// A fault part way leaves the bytes before the faulting page written
    /// (as a faulting `memcpy` does).
    pub fn write(
        &self,
        cpu: usize,
        pt: &PageTable,
        asid: u16,
        virt: u64,
        data: &[u8],
    ) -> Result<(), Fault> {
        self.by_page(cpu, pt, asid, virt, data.len(), Access::Write, |phys, r| {
            self.k.phys().write(phys, &data[r])
        })
    }

    /// Translates `len` bytes from `virt` one page at a time (each page's
    /// size as mapped) and hands `f` the physical address and the byte range
    /// of each piece; a piece `f` cannot reach is a bad-physical fault.
    #[allow(clippy::too_many_arguments)] // translate()'s five, plus the length and the callback
    fn by_page(
        &self,
        cpu: usize,
        pt: &PageTable,
        asid: u16,
        virt: u64,
        len: usize,
        access: Access,
        mut f: impl FnMut(u64, core::ops::Range<usize>) -> Result<(), KmmError>,
    ) -> Result<(), Fault> {
        let mut done = 0;
        while done < len {
            let at = virt.wrapping_add(done as u64);
            let (phys, size) = self.translate_sized(cpu, pt, asid, at, access, false)?;
            let n = ((size - (at & (size - 1))) as usize).min(len - done);
            f(phys, done..done + n)
                .map_err(|_| Fault::new(at, FaultKind::BadPhys, true, access, false))?;
            done += n;
        }
        Ok(())
    }

    /// True when the 8 bytes at `virt` lie in one page (4 KiB is the
    /// smallest page size: one translation answers for all of them).
    #[inline(always)]
    fn in_one_page(virt: u64) -> bool {
        virt & 0xfff <= 0x1000 - 8
    }

    /// A kernel-mode 8-byte little-endian load at `virt` (`readq`, any
    /// alignment; an access crossing a page translates both pages).
    ///
    /// The common case, 8 bytes inside one page that the TLB translates,
    /// is a lookup and a load, inlined into the caller.
    #[inline(always)]
    pub fn read_u64(&self, cpu: usize, pt: &PageTable, asid: u16, virt: u64) -> Result<u64, Fault> {
        if !Self::in_one_page(virt) {
            return self.read_u64_split(cpu, pt, asid, virt);
        }
        let tag = self.tag(asid);
        let t = &self.tlbs[cpu];
        let how = match self.probe(t, tag, virt) {
            Probe::Hit { slot, val, .. } => {
                // A kernel-mode load passes every permission check and
                // needs no dirty bit: the entry answers (`use_hit`, inlined
                // for a read).
                debug_assert!(Self::check(val_flags(val), virt, Access::Read, false).is_ok());
                slot.stamp.store(bump(&t.clock), Relaxed);
                return self.load_u64(virt, val_phys(val, virt));
            }
            Probe::Miss => Slow::Miss,
            Probe::Retry => Slow::Lookup,
        };
        self.read_u64_slow(cpu, pt, tag, virt, how)
    }

    /// The 8 bytes at `phys`, which `virt` translates to.
    #[inline(always)]
    fn load_u64(&self, virt: u64, phys: u64) -> Result<u64, Fault> {
        self.k
            .phys()
            .load_u64(phys)
            .map_err(|_| Fault::new(virt, FaultKind::BadPhys, true, Access::Read, false))
    }

    /// [`Self::read_u64`] inside one page when the TLB could not answer.
    #[inline(never)]
    fn read_u64_slow(
        &self,
        cpu: usize,
        pt: &PageTable,
        tag: u16,
        virt: u64,
        how: Slow,
    ) -> Result<u64, Fault> {
        let (phys, _) = self.translate_slow(cpu, pt, tag, virt, Access::Read, false, how)?;
        self.load_u64(virt, phys)
    }

    /// [`Self::read_u64`] of 8 bytes that straddle two pages.
    #[inline(never)]
    fn read_u64_split(
        &self,
        cpu: usize,
        pt: &PageTable,
        asid: u16,
        virt: u64,
    ) -> Result<u64, Fault> {
        let mut b = [0u8; 8];
        self.read(cpu, pt, asid, virt, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A kernel-mode 8-byte little-endian store at `virt` (`writeq`). An
    /// access crossing a page translates both pages before writing, so a
    /// fault on either leaves memory unchanged, as a faulting instruction does.
    #[inline]
    pub fn write_u64(
        &self,
        cpu: usize,
        pt: &PageTable,
        asid: u16,
        virt: u64,
        v: u64,
    ) -> Result<(), Fault> {
        if Self::in_one_page(virt) {
            let (phys, _) = self.translate_sized(cpu, pt, asid, virt, Access::Write, false)?;
            return self
                .k
                .phys()
                .store_u64(phys, v)
                .map_err(|_| Fault::new(virt, FaultKind::BadPhys, true, Access::Write, false));
        }
        self.write_u64_split(cpu, pt, asid, virt, v)
    }

    /// [`Self::write_u64`] of 8 bytes that straddle two pages: both pages
    /// are translated before anything is written.
    #[inline(never)]
    fn write_u64_split(
        &self,
        cpu: usize,
        pt: &PageTable,
        asid: u16,
        virt: u64,
        v: u64,
    ) -> Result<(), Fault> {
        let last = virt.wrapping_add(7);
        self.translate_sized(cpu, pt, asid, virt, Access::Write, false)?;
        self.translate_sized(cpu, pt, asid, last & !0xfff, Access::Write, false)?;
        self.write(cpu, pt, asid, virt, &v.to_le_bytes())
    }

    /// x86's `invlpg` (Linux's `flush_tlb_one_user`/`__flush_tlb_one_kernel`)
    /// on `cpu`: drops every entry, global or of any address space,
    /// covering `virt`.
    pub fn invlpg(&self, cpu: usize, virt: u64) {
        let mut tlb = self.tlb(cpu);
        tlb.invalidate_where(|e| e.start() <= virt && virt <= e.last());
        tlb.g.stats.invlpg += 1;
    }

    /// Linux's `flush_tlb_local()` (a `CR3` reload) on `cpu`: drops every
    /// non-global entry, of every address space; global entries stay.
    pub fn flush_tlb_local(&self, cpu: usize) {
        self.tlb(cpu).flush_non_global();
    }

    /// The CPU running this call (`smp_processor_id()`), the sender of IPIs.
    fn this_cpu(&self) -> usize {
        self.k
            .platform()
            .smp_processor_id()
            .min(self.tlbs.len() - 1)
    }

    /// Runs `f` on every CPU's TLB: the calling CPU's locally, every other
    /// CPU's as a shootdown IPI (`native_flush_tlb_multi` to `mm_cpumask`,
    /// here every CPU), waiting for all (`wait=1`).
    fn shootdown(&self, f: impl Fn(&mut Locked<'_>)) {
        let me = self.this_cpu();
        let mut sent = 0;
        for cpu in 0..self.tlbs.len() {
            let mut tlb = self.tlb(cpu);
            f(&mut tlb);
            if cpu != me {
                tlb.g.stats.shootdowns_received += 1;
                sent += 1;
            }
        }
        self.tlb(me).g.stats.shootdowns_sent += sent;
    }

    /// Linux's `flush_tlb_all()`: every entry, global ones included, on every
    /// CPU (`on_each_cpu(do_flush_tlb_all)`); IPIs to the other CPUs.
    pub fn flush_tlb_all(&self) {
        self.shootdown(|t| t.flush_everything());
    }

    fn flush_range(&self, tag: Option<u16>, start: u64, end: u64) {
        if end <= start {
            return;
        }
        let pages = (end - start).div_ceil(4096);
        let last = end - 1;
        self.shootdown(|t| {
            if pages > TLB_SINGLE_PAGE_FLUSH_CEILING {
                match tag {
                    Some(_) => {
                        // Global entries in the range go too (Linux has
                        // none in a user range).
                        t.invalidate_where(|e| e.global && e.start() <= last && start <= e.last());
                        t.flush_non_global();
                    }
                    None => t.flush_everything(),
                }
            } else {
                t.invalidate_where(|e| {
                    e.start() <= last
                        && start <= e.last()
                        && (e.global || tag.is_none_or(|a| a == e.asid))
                });
                t.g.stats.invlpg += pages;
            }
        });
    }

    /// Linux's `flush_tlb_mm_range()` for address space `asid` over
    /// `start..end`: on every CPU (shootdown IPIs to the others) drops the
    /// entries of `asid`, and global ones, overlapping the range, page by page
    /// up to [`TLB_SINGLE_PAGE_FLUSH_CEILING`] pages, else every non-global
    /// entry (and the global ones in the range).
    pub fn flush_tlb_range(&self, asid: u16, start: u64, end: u64) {
        self.flush_range(Some(self.tag(asid)), start, end);
    }

    /// Linux's `flush_tlb_kernel_range()`: on every CPU drops every entry,
    /// of any address space or global, overlapping `start..end` (page by page
    /// up to the ceiling, else everything). What `vfree`/`vunmap` need.
    pub fn flush_tlb_kernel_range(&self, start: u64, end: u64) {
        self.flush_range(None, start, end);
    }

    /// Linux's `switch_mm_irqs_off()`: `cpu` now runs address space `asid`.
    /// With tags ([`TlbConfig::pcid`]) the old entries stay, tagged; without,
    /// changing address space flushes the non-global entries (the `CR3`
    /// write). Global entries survive either way.
    pub fn switch_mm(&self, cpu: usize, asid: u16) {
        let mut tlb = self.tlb(cpu);
        if tlb.g.asid != asid {
            tlb.g.stats.switches += 1;
            if !self.cfg.pcid {
                tlb.flush_non_global();
            }
            tlb.g.asid = asid;
        }
    }

    /// The address space `cpu` runs (`cpu_tlbstate.loaded_mm_asid`).
    pub fn current_asid(&self, cpu: usize) -> u16 {
        self.tlb(cpu).g.asid
    }

    /// Valid entries in `cpu`'s TLB.
    pub fn tlb_entries(&self, cpu: usize) -> usize {
        let tlb = self.tlb(cpu);
        tlb.t
            .blocks
            .iter()
            .flatten()
            .filter(|s| s.entry().is_some())
            .count()
    }

    /// `cpu`'s counters.
    pub fn tlb_stats(&self, cpu: usize) -> TlbStats {
        self.tlb(cpu).stats()
    }

    /// Every CPU's counters, in CPU order.
    pub fn tlb_stats_all(&self) -> Vec<TlbStats> {
        (0..self.tlbs.len()).map(|c| self.tlb_stats(c)).collect()
    }

    /// Every CPU's counters as text, one `cpuN name value` line each (what a
    /// `cat /sys/kernel/debug/tlb_stats` would print).
    pub fn show_tlb_stats(&self) -> String {
        self.tlb_stats_all().iter().map(|s| s.to_string()).collect()
    }
}
