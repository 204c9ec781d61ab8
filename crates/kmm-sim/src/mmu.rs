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
//! Each CPU's TLB sits behind its own lock (never a global one); a
//! translation locks only its CPU's TLB, and holds it across a miss's walk
//! and fill, so a shootdown that arrives meanwhile (it needs that lock too)
//! cannot be overtaken by the fill of a translation it was meant to kill.
//! A TLB hit neither allocates nor formats.

use crate::machine::{Machine, SimPlatform};
use kmm::{Kmm, KmmError, PageTable, Platform, PteFlags};
use std::fmt;
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

/// One cached translation.
#[derive(Clone, Copy, Debug, Default)]
struct TlbEntry {
    /// Virtual page number (`virt >> shift`).
    vpn: u64,
    /// Physical address of the page.
    base: u64,
    /// The leaf's flags when it was cached (dirty included).
    flags: PteFlags,
    /// LRU clock value of the last use.
    stamp: u64,
    /// Address-space tag (0 when tags are off).
    asid: u16,
    /// log2 of the page size.
    shift: u8,
    valid: bool,
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

/// One CPU's TLB and counters.
#[derive(Debug)]
struct Tlb {
    entries: Vec<TlbEntry>,
    /// Bit `s` set: some valid entry may have page shift `s`.
    shifts: u64,
    clock: u64,
    /// The loaded address space (`cpu_tlbstate.loaded_mm_asid`).
    asid: u16,
    stats: TlbStats,
}

impl Tlb {
    fn invalidate_where(&mut self, mut f: impl FnMut(&TlbEntry) -> bool) {
        let mut shifts = 0;
        for e in &mut self.entries {
            if e.valid && f(e) {
                e.valid = false;
            }
            if e.valid {
                shifts |= 1u64 << e.shift;
            }
        }
        self.shifts = shifts;
    }

    /// Everything but global entries (a `CR3` write).
    fn flush_non_global(&mut self) {
        self.invalidate_where(|e| !e.global);
        self.stats.flushes += 1;
    }

    /// Everything (`__flush_tlb_all`, toggling `CR4.PGE`).
    fn flush_everything(&mut self) {
        self.invalidate_where(|_| true);
        self.stats.flushes += 1;
    }
}

/// One CPU's TLB on its own cache line.
#[repr(align(64))]
#[derive(Debug)]
struct CpuTlb(Mutex<Tlb>);

/// The software MMU of a machine: one TLB per CPU (Linux's per-CPU
/// `cpu_tlbstate`) in front of the page-table walker.
pub struct Mmu<'k, P: Platform> {
    k: &'k Kmm<P>,
    cfg: TlbConfig,
    set_mask: u64,
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
        let tlbs = (0..k.nr_cpu_ids())
            .map(|cpu| {
                CpuTlb(Mutex::new(Tlb {
                    entries: vec![TlbEntry::default(); cfg.entries],
                    shifts: 0,
                    clock: 0,
                    asid: 0,
                    stats: TlbStats {
                        cpu,
                        ..TlbStats::default()
                    },
                }))
            })
            .collect();
        Ok(Mmu {
            k,
            cfg,
            set_mask: sets as u64 - 1,
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

    fn tlb(&self, cpu: usize) -> MutexGuard<'_, Tlb> {
        self.tlbs[cpu]
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    #[inline]
    fn tag(&self, asid: u16) -> u16 {
        if self.cfg.pcid {
            asid
        } else {
            0
        }
    }

    /// Looks `virt` up in `tlb`; the index of the matching entry.
    #[inline]
    fn lookup(&self, tlb: &Tlb, tag: u16, virt: u64) -> Option<usize> {
        let ways = self.cfg.ways;
        let mut shifts = tlb.shifts;
        while shifts != 0 {
            let shift = shifts.trailing_zeros();
            shifts &= shifts - 1;
            let vpn = virt >> shift;
            let first = (vpn & self.set_mask) as usize * ways;
            for i in first..first + ways {
                let e = &tlb.entries[i];
                if e.valid
                    && e.vpn == vpn
                    && u32::from(e.shift) == shift
                    && (e.global || e.asid == tag)
                {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Puts a translation in `tlb`, replacing an entry for the same page or
    /// the set's least recently used one.
    fn fill(&self, tlb: &mut Tlb, tag: u16, vpn: u64, shift: u8, base: u64, flags: PteFlags) {
        let ways = self.cfg.ways;
        let first = (vpn & self.set_mask) as usize * ways;
        let global = flags.pte_global();
        let set = &tlb.entries[first..first + ways];
        let same = set.iter().position(|e| {
            e.valid && e.vpn == vpn && e.shift == shift && (e.global || global || e.asid == tag)
        });
        let victim = same
            .or_else(|| set.iter().position(|e| !e.valid))
            .unwrap_or_else(|| {
                set.iter()
                    .enumerate()
                    .min_by_key(|(_, e)| e.stamp)
                    .map_or(0, |(i, _)| i)
            });
        tlb.clock += 1;
        tlb.entries[first + victim] = TlbEntry {
            vpn,
            base,
            flags,
            stamp: tlb.clock,
            asid: tag,
            shift,
            valid: true,
            global,
        };
        tlb.shifts |= 1u64 << shift;
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

    /// The translation with its page size: `(phys, size)`.
    #[inline]
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
        let mut tlb = self.tlb(cpu);
        if let Some(i) = self.lookup(&tlb, tag, virt) {
            let e = tlb.entries[i];
            tlb.stats.hits += 1;
            tlb.clock += 1;
            let clock = tlb.clock;
            tlb.entries[i].stamp = clock;
            Self::check(e.flags, virt, access, user)?;
            if access != Access::Write || e.flags.pte_dirty() {
                let size = 1u64 << e.shift;
                return Ok((e.base + (virt & (size - 1)), size));
            }
            // A write through a clean entry: the hardware walks again to set
            // the dirty bit; the walk below refills the entry.
        } else {
            tlb.stats.misses += 1;
        }
        tlb.stats.walks += 1;
        if !pt.is_canonical(virt) {
            return Err(Fault::new(
                virt,
                FaultKind::NonCanonical,
                false,
                access,
                user,
            ));
        }
        let not_present = Fault::new(virt, FaultKind::Page, false, access, user);
        if user || access == Access::Exec {
            // A user or execute check may fail after the marking walk has set
            // bits: look first. (A write to a read-only page is refused by
            // `walk_and_mark` itself before it marks anything.)
            let t = pt.walk(self.k, virt).ok_or(not_present)?;
            Self::check(t.flags, virt, access, user)?;
        }
        let Some(t) = pt.walk_and_mark(self.k, virt, access == Access::Write) else {
            // Not mapped, or a write to a read-only page: which one?
            let t = pt.walk(self.k, virt).ok_or(not_present)?;
            Self::check(t.flags, virt, access, user)?;
            return Err(not_present);
        };
        Self::check(t.flags, virt, access, user)?;
        let shift = t.size.trailing_zeros() as u8;
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

    /// A kernel-mode 8-byte little-endian load at `virt` (`readq`, any
    /// alignment; an access crossing a page translates both pages).
    #[inline]
    pub fn read_u64(&self, cpu: usize, pt: &PageTable, asid: u16, virt: u64) -> Result<u64, Fault> {
        let mut b = [0u8; 8];
        self.read(cpu, pt, asid, virt, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A kernel-mode 8-byte little-endian store at `virt` (`writeq`). An
    /// access crossing a page translates both pages before writing, so a
    /// fault on either leaves memory unchanged, as a faulting instruction does.
    pub fn write_u64(
        &self,
        cpu: usize,
        pt: &PageTable,
        asid: u16,
        virt: u64,
        v: u64,
    ) -> Result<(), Fault> {
        let last = virt.wrapping_add(7);
        if (virt ^ last) >> 12 != 0 {
            // Both pages first (4 KiB is the smallest page size).
            self.translate_sized(cpu, pt, asid, virt, Access::Write, false)?;
            self.translate_sized(cpu, pt, asid, last & !0xfff, Access::Write, false)?;
        }
        self.write(cpu, pt, asid, virt, &v.to_le_bytes())
    }

    /// x86's `invlpg` (Linux's `flush_tlb_one_user`/`__flush_tlb_one_kernel`)
    /// on `cpu`: drops every entry, global or of any address space,
    /// covering `virt`.
    pub fn invlpg(&self, cpu: usize, virt: u64) {
        let mut tlb = self.tlb(cpu);
        tlb.invalidate_where(|e| e.start() <= virt && virt <= e.last());
        tlb.stats.invlpg += 1;
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
    fn shootdown(&self, f: impl Fn(&mut Tlb)) {
        let me = self.this_cpu();
        let mut sent = 0;
        for cpu in 0..self.tlbs.len() {
            let mut tlb = self.tlb(cpu);
            f(&mut tlb);
            if cpu != me {
                tlb.stats.shootdowns_received += 1;
                sent += 1;
            }
        }
        self.tlb(me).stats.shootdowns_sent += sent;
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
                t.stats.invlpg += pages;
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
        if tlb.asid != asid {
            tlb.stats.switches += 1;
            if !self.cfg.pcid {
                tlb.flush_non_global();
            }
            tlb.asid = asid;
        }
    }

    /// The address space `cpu` runs (`cpu_tlbstate.loaded_mm_asid`).
    pub fn current_asid(&self, cpu: usize) -> u16 {
        self.tlb(cpu).asid
    }

    /// Valid entries in `cpu`'s TLB.
    pub fn tlb_entries(&self, cpu: usize) -> usize {
        self.tlb(cpu).entries.iter().filter(|e| e.valid).count()
    }

    /// `cpu`'s counters.
    pub fn tlb_stats(&self, cpu: usize) -> TlbStats {
        self.tlb(cpu).stats
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
