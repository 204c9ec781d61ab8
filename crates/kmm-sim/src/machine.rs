//! A whole simulated machine: a profile, a firmware memory map, RAM, CPUs and
//! the kmm memory manager booted on them.

use crate::cpu::{CpuError, Cpus};
use crate::ram::{Ram, RamError};
use kmm::arch::e820::{E820Entry, E820Type};
use kmm::mm_init::{setup_arch, BootParams, EarlyBoot, NodeRange};
use kmm::platform::TaskId;
use kmm::{Arch, GfpFlags, Kmm, KmmError, Platform, MAX_NUMNODES, NR_CPUS};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// The size and shape of a machine.
#[derive(Clone, Debug)]
pub struct MachineConfig {
    /// Architecture profile (`x86` or `x86_64`).
    pub arch: &'static Arch,
    /// Bytes of RAM.
    pub ram: u64,
    /// `PAGE_SIZE`.
    pub page_size: u64,
    /// CPUs (1–64).
    pub cpus: usize,
    /// NUMA nodes (1–8).
    pub nodes: usize,
}

impl Default for MachineConfig {
    /// The tour's machine: x86_64, 1 GiB of RAM, 4 KiB pages, 2 CPUs, 1 node.
    fn default() -> Self {
        MachineConfig {
            arch: &kmm::arch::x86_64::X86_64,
            ram: 1 << 30,
            page_size: 4096,
            cpus: 2,
            nodes: 1,
        }
    }
}

/// Why a machine could not be built.
#[derive(Debug)]
pub enum SimError {
    /// Host memory for RAM could not be mapped.
    Ram(RamError),
    /// The CPU set could not be created.
    Cpu(CpuError),
    /// The memory manager refused the machine.
    Kmm(KmmError),
    /// A setting is out of range.
    Config(String),
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::Ram(e) => write!(f, "RAM: {e}"),
            SimError::Cpu(e) => write!(f, "CPUs: {e}"),
            SimError::Kmm(e) => write!(f, "{e}"),
            SimError::Config(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for SimError {}

impl From<KmmError> for SimError {
    fn from(e: KmmError) -> Self {
        SimError::Kmm(e)
    }
}

/// The kernel log (`dmesg`): every `printk` line, optionally echoed to stderr.
#[derive(Default)]
pub struct KernelLog {
    lines: Mutex<Vec<String>>,
    echo: AtomicBool,
}

impl KernelLog {
    /// Appends one line.
    pub fn push(&self, line: String) {
        if self.echo.load(Relaxed) {
            eprintln!("{line}");
        }
        if let Ok(mut l) = self.lines.lock() {
            l.push(line);
        }
    }
    /// Takes every line logged so far.
    pub fn take(&self) -> Vec<String> {
        self.lines
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }
    /// Echo future lines to stderr as they are logged.
    pub fn set_echo(&self, on: bool) {
        self.echo.store(on, Relaxed);
    }
}

/// Hooks a workload may install for reclaim (the future kswapd and direct reclaim).
pub type ReclaimHook = Box<dyn Fn(u32, GfpFlags) -> usize + Send + Sync>;

/// The [`Platform`] of a simulated machine.
pub struct SimPlatform {
    cpus: Arc<Cpus>,
    log: Arc<KernelLog>,
    kswapd_wakeups: AtomicU64,
    direct_reclaims: AtomicU64,
    reclaim: Mutex<Option<ReclaimHook>>,
    /// Host files the machine's page cache reads and writes, by id.
    files: Mutex<Vec<Option<HostFile>>>,
    /// TLB flushes the memory manager asked for, for the MMUs to apply.
    tlb_log: Mutex<std::collections::VecDeque<(u64, TlbFlush)>>,
    tlb_seq: AtomicU64,
    /// Whether a bound thread owns its CPU exclusively (the host has
    /// `membarrier()`; see [`crate::membarrier`]).
    exclusive: bool,
    /// [`Cpus::binding_key`] when `exclusive`, else a key no binding has:
    /// one comparison answers "bound here, and owned" on the fast paths.
    owned_key: u64,
    /// `sync_cpus()` calls: a CPU's owned data reached from outside.
    cpu_syncs: AtomicU64,
}

/// A TLB flush the memory manager asked the machine for (what Linux sends
/// as `flush_tlb_*` calls and their IPIs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlbFlush {
    /// `flush_tlb_kernel_range(start, end)` on every CPU.
    Kernel {
        /// First address.
        start: u64,
        /// End (exclusive).
        end: u64,
    },
    /// `flush_tlb_mm_range(mm, start, end)` of address space `asid`.
    Mm {
        /// The address space's tag.
        asid: u16,
        /// First address.
        start: u64,
        /// End (exclusive).
        end: u64,
    },
    /// `flush_tlb_one_kernel(addr)` on `cpu` only.
    One {
        /// The CPU.
        cpu: usize,
        /// The address.
        addr: u64,
    },
}

/// The host file open under `id`, or the error a read or write of a file
/// that is not open gets.
fn open_file(files: &[Option<HostFile>], id: u64) -> Result<&std::fs::File, KmmError> {
    files
        .get(id as usize)
        .and_then(Option::as_ref)
        .map(|f| &f.file)
        .ok_or(KmmError::InvalidArgument {
            what: "host file that is not open",
        })
}

/// Flushes kept for MMUs that have not applied them yet.
const TLB_LOG_MAX: usize = 1 << 16;

/// A host file opened for the simulated kernel.
struct HostFile {
    file: std::fs::File,
    path: String,
}

impl SimPlatform {
    /// The CPUs.
    pub fn cpus(&self) -> &Cpus {
        &self.cpus
    }
    /// The kernel log.
    pub fn log(&self) -> &KernelLog {
        &self.log
    }
    /// Whether a thread that binds a CPU owns it exclusively, so the CPU's
    /// own data (per-CPU page lists, slab arrays) is locked with plain
    /// stores: true when the host has `membarrier()`.
    pub fn cpus_owned_exclusively(&self) -> bool {
        self.exclusive
    }
    /// How often another thread reached an owned CPU's data and made its
    /// owner step out (`membarrier()`, the IPI Linux would send).
    pub fn cpu_syncs(&self) -> u64 {
        self.cpu_syncs.load(Relaxed)
    }
    /// `wakeup_kswapd()` calls seen.
    pub fn kswapd_wakeups(&self) -> u64 {
        self.kswapd_wakeups.load(Relaxed)
    }
    /// `try_to_free_pages()` calls seen.
    pub fn direct_reclaims(&self) -> u64 {
        self.direct_reclaims.load(Relaxed)
    }
    /// Installs what direct reclaim does (returns pages freed).
    pub fn set_reclaim_hook(&self, hook: Option<ReclaimHook>) {
        if let Ok(mut r) = self.reclaim.lock() {
            *r = hook;
        }
    }

    /// Opens host file `path` for the machine (read-only unless `write`):
    /// its id for [`Platform::file_read`] / [`Platform::file_write`] and
    /// its size in bytes.
    pub fn open_host_file(&self, path: &str, write: bool) -> std::io::Result<(u64, u64)> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{path}: not a regular file"),
            ));
        }
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let entry = Some(HostFile {
            file,
            path: path.to_string(),
        });
        let id = match files.iter().position(Option::is_none) {
            Some(i) => {
                files[i] = entry;
                i
            }
            None => {
                files.push(entry);
                files.len() - 1
            }
        };
        Ok((id as u64, meta.len()))
    }

    /// Closes a host file opened with [`Self::open_host_file`].
    pub fn close_host_file(&self, id: u64) {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = files.get_mut(id as usize) {
            *f = None;
        }
    }

    fn log_flush(&self, f: TlbFlush) {
        let mut log = self.tlb_log.lock().unwrap_or_else(|e| e.into_inner());
        let seq = self.tlb_seq.load(Relaxed) + 1;
        log.push_back((seq, f));
        if log.len() > TLB_LOG_MAX {
            log.pop_front();
        }
        self.tlb_seq.store(seq, Relaxed);
    }

    /// The sequence number of the last TLB flush requested.
    #[inline]
    pub fn tlb_flush_seq(&self) -> u64 {
        self.tlb_seq.load(Relaxed)
    }

    /// The TLB flushes requested after sequence number `seen`, and the
    /// newest number. `None` when some were already dropped from the log
    /// (the caller must flush everything).
    pub fn tlb_flushes_since(&self, seen: u64) -> (Option<Vec<TlbFlush>>, u64) {
        let log = self.tlb_log.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.tlb_seq.load(Relaxed);
        if log.front().is_some_and(|&(first, _)| first > seen + 1) {
            return (None, now);
        }
        // Sequence numbers are consecutive: the newest `now - seen` entries.
        let fresh = now.saturating_sub(seen) as usize;
        let v = log
            .iter()
            .skip(log.len().saturating_sub(fresh))
            .map(|&(_, f)| f)
            .collect();
        (Some(v), now)
    }

    /// The path a host file was opened with.
    pub fn host_file_path(&self, id: u64) -> Option<String> {
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        files.get(id as usize)?.as_ref().map(|f| f.path.clone())
    }
}

impl Platform for SimPlatform {
    #[inline]
    fn smp_processor_id(&self) -> usize {
        self.cpus.smp_processor_id()
    }
    /// A thread that bound its CPU ([`Cpus::bind`]) owns it exclusively; an
    /// unbound thread runs as CPU 0 alongside any others and owns nothing.
    #[inline]
    fn this_cpu(&self) -> (usize, bool) {
        match self.cpus.bound_cpu() {
            Some(cpu) => (cpu, self.exclusive),
            None => (0, false),
        }
    }
    #[inline(always)]
    fn owned_cpu_fast(&self) -> Option<usize> {
        Cpus::bound_cpu_cached(self.owned_key)
    }
    fn cpu_owned(&self, cpu: usize) -> bool {
        self.exclusive && self.cpus.cpu_owned(cpu)
    }
    fn sync_cpus(&self) {
        self.cpu_syncs.fetch_add(1, Relaxed);
        crate::membarrier::sync_cpus();
    }
    #[inline]
    fn preempt_count(&self) -> u32 {
        self.cpus.preempt_count()
    }
    #[inline]
    fn irqs_disabled(&self) -> bool {
        self.cpus.irqs_disabled()
    }
    #[inline]
    fn atomic_state(&self) -> (u32, bool) {
        self.cpus.atomic_state()
    }
    #[inline]
    fn atomic_state_of(&self, cpu: usize) -> (u32, bool) {
        self.cpus.atomic_state_of(cpu)
    }
    fn current_task(&self, f: &mut dyn FnMut(TaskId<'_>)) {
        let t = self.cpus.current_task();
        f(TaskId {
            pid: t.pid(),
            comm: t.comm(),
        })
    }
    fn printk(&self, line: fmt::Arguments<'_>) {
        self.log.push(line.to_string());
    }
    fn wakeup_kswapd(&self, _nid: usize, _order: u32, _highest_zoneidx: usize) {
        self.kswapd_wakeups.fetch_add(1, Relaxed);
    }
    fn try_to_free_pages(&self, order: u32, gfp: GfpFlags) -> usize {
        self.direct_reclaims.fetch_add(1, Relaxed);
        match self.reclaim.lock() {
            Ok(r) => r.as_ref().map_or(0, |h| h(order, gfp)),
            Err(_) => 0,
        }
    }
    fn cond_resched(&self) {
        std::thread::yield_now();
    }
    fn file_read(&self, file: u64, offset: u64, buf: &mut [u8]) -> Result<usize, KmmError> {
        use std::os::unix::fs::FileExt;
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let f = open_file(&files, file)?;
        let mut done = 0;
        while done < buf.len() {
            match f.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    return Err(KmmError::InvalidArgument {
                        what: "host file read failed",
                    })
                }
            }
        }
        Ok(done)
    }
    fn file_write(&self, file: u64, offset: u64, data: &[u8]) -> Result<(), KmmError> {
        use std::os::unix::fs::FileExt;
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        open_file(&files, file)?
            .write_all_at(data, offset)
            .map_err(|_| KmmError::InvalidArgument {
                what: "host file write failed",
            })
    }
    fn flush_tlb_kernel_range(&self, start: u64, end: u64) {
        self.log_flush(TlbFlush::Kernel { start, end });
    }
    fn flush_tlb_mm_range(&self, asid: u16, start: u64, end: u64) {
        self.log_flush(TlbFlush::Mm { asid, start, end });
    }
    fn flush_tlb_one_kernel(&self, addr: u64) {
        let cpu = self.cpus.smp_processor_id();
        self.log_flush(TlbFlush::One { cpu, addr });
    }
    fn preempt_count_add(&self, val: u32) -> bool {
        self.cpus.preempt_count_add(val).is_ok()
    }
    fn preempt_count_sub(&self, val: u32) -> bool {
        self.cpus.preempt_count_sub(val).is_ok()
    }
}

/// A size the way a user writes it: `300G`, `64M`, `3K`, or `10 bytes`.
pub fn human_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

/// The firmware memory map a QEMU-like PC gives for `ram` bytes: the 640 KiB
/// base memory, the legacy hole to 1 MiB, RAM below the PCI hole (at most
/// 3 GiB once RAM reaches 3.5 GiB) and the rest above 4 GiB.
pub fn e820_map(ram: u64) -> Vec<E820Entry> {
    let e = |addr: u64, end: u64, kind| E820Entry {
        addr,
        size: end - addr,
        kind,
    };
    let below = if ram >= 0xe000_0000 { 0xc000_0000 } else { ram };
    let above = ram - below;
    let mut v = vec![
        e(0, 0x9_fc00, E820Type::Ram),
        e(0x9_fc00, 0xa_0000, E820Type::Reserved),
        e(0xf_0000, 0x10_0000, E820Type::Reserved),
        e(0x10_0000, below - 0x2_1000, E820Type::Ram),
        e(below - 0x2_1000, below, E820Type::Reserved),
        e(0xfeff_c000, 0xff00_0000, E820Type::Reserved),
        e(0xfffc_0000, 0x1_0000_0000, E820Type::Reserved),
    ];
    if above > 0 {
        v.push(e(0x1_0000_0000, 0x1_0000_0000 + above, E820Type::Ram));
    }
    v
}

/// Splits the RAM of `map` into `n` nodes of about equal size, on
/// `align`-byte boundaries (Linux's NUMA emulation).
pub fn split_nodes(map: &[E820Entry], n: usize, align: u64) -> Vec<NodeRange> {
    let ram: Vec<(u64, u64)> = map
        .iter()
        .filter(|e| e.kind == E820Type::Ram)
        .map(|e| (e.addr, e.end()))
        .collect();
    let total: u64 = ram.iter().map(|(s, e)| e - s).sum();
    let end = ram.last().map_or(0, |r| r.1);
    let per = total / n as u64;
    let mut nodes = Vec::with_capacity(n);
    let mut start = 0;
    let mut acc = 0;
    let mut want = per;
    for &(s, e) in &ram {
        let mut cur = s;
        while nodes.len() + 1 < n && acc + (e - cur) >= want {
            // An earlier cut rounded up to `align` may already be past `want`
            // (small RAM, many nodes): cut here, and let the empty-node check
            // below turn that into an error instead of underflowing.
            let cut = (cur + want.saturating_sub(acc)).div_ceil(align) * align;
            let cut = cut.min(e);
            nodes.push(NodeRange { start, end: cut });
            start = cut;
            acc += cut - cur;
            cur = cut;
            want += per;
        }
        acc += e - cur;
    }
    nodes.push(NodeRange { start, end });
    nodes
}

/// Bus address of the machine's frame buffer: BAR 0 of a QEMU-like VGA
/// device at 00:02.0 (device memory for `ioremap`).
pub const FRAMEBUFFER_PHYS: u64 = 0xfd00_0000;
/// Size of the frame buffer (16 MiB).
pub const FRAMEBUFFER_SIZE: u64 = 16 << 20;

/// A booted machine.
pub struct Machine {
    // Declared first so it is dropped before the RAM it lives in.
    kmm: Box<Kmm<SimPlatform>>,
    ram: Ram,
    /// The frame buffer's memory when it lies above the RAM mapping (on
    /// larger machines the PCI hole below 4 GiB is inside it).
    _framebuffer: Option<Ram>,
    config: MachineConfig,
}

impl Machine {
    /// Boots a machine with no early allocations.
    pub fn boot(config: MachineConfig) -> Result<Machine, SimError> {
        Self::boot_with(config, |_| Ok(()))
    }

    /// Boots a machine, running `early` between `setup_arch` and `mem_init`
    /// (where a built-in driver would call `alloc_bootmem`).
    pub fn boot_with(
        config: MachineConfig,
        early: impl FnOnce(&mut EarlyBoot<SimPlatform>) -> Result<(), KmmError>,
    ) -> Result<Machine, SimError> {
        let c = &config;
        if !(1..=NR_CPUS).contains(&c.cpus) {
            return Err(SimError::Config(format!(
                "--cpus {}: a machine has 1 to {NR_CPUS} CPUs",
                c.cpus
            )));
        }
        if !(1..=MAX_NUMNODES).contains(&c.nodes) {
            return Err(SimError::Config(format!(
                "--nodes {}: a machine has 1 to {MAX_NUMNODES} NUMA nodes",
                c.nodes
            )));
        }
        if !kmm::mm_init::PAGE_SIZES.contains(&c.page_size) {
            return Err(SimError::Config(format!(
                "--page-size {}: choose 4K, 8K, 16K or 64K",
                human_size(c.page_size)
            )));
        }
        let min_ram = 64 << 20;
        let max_ram = c.arch.max_phys.min(256 << 30);
        if c.ram < min_ram || c.ram > max_ram {
            return Err(SimError::Config(format!(
                "--ram {}: the {} profile boots with 64M to {}",
                human_size(c.ram),
                c.arch.name,
                human_size(max_ram)
            )));
        }
        let map = e820_map(c.ram);
        let phys_end = map
            .iter()
            .filter(|e| e.kind == E820Type::Ram)
            .map(|e| e.end())
            .max()
            .unwrap_or(0);
        let align = (32u64 << 20).max(c.page_size << (kmm::MAX_ORDER - 1));
        let nodes = split_nodes(&map, c.nodes, align);
        if nodes.len() != c.nodes || nodes.iter().any(|n| n.end <= n.start) {
            return Err(SimError::Config(format!(
                "--nodes {}: {}M of RAM is too little to split that many ways",
                c.nodes,
                c.ram >> 20
            )));
        }
        let mut distance = [[0u8; MAX_NUMNODES]; MAX_NUMNODES];
        for (i, row) in distance.iter_mut().enumerate() {
            for (j, d) in row.iter_mut().enumerate() {
                let hop = i.abs_diff(j).min(c.nodes - i.abs_diff(j).min(c.nodes));
                *d = if i == j {
                    10
                } else {
                    10 + 10 * hop.max(1) as u8
                };
            }
        }
        let mut cpu_to_node = [0u8; NR_CPUS];
        for (cpu, n) in cpu_to_node.iter_mut().enumerate().take(c.cpus) {
            *n = (cpu * c.nodes / c.cpus) as u8;
        }
        let ram = Ram::new(phys_end).map_err(SimError::Ram)?;
        let cpus = Arc::new(Cpus::new(c.cpus).map_err(SimError::Cpu)?);
        let exclusive = crate::membarrier::available();
        let owned_key = if exclusive {
            cpus.binding_key()
        } else {
            Cpus::NO_BINDING_KEY
        };
        let platform = SimPlatform {
            cpus,
            log: Arc::new(KernelLog::default()),
            kswapd_wakeups: AtomicU64::new(0),
            direct_reclaims: AtomicU64::new(0),
            reclaim: Mutex::new(None),
            files: Mutex::new(Vec::new()),
            tlb_log: Mutex::new(std::collections::VecDeque::new()),
            tlb_seq: AtomicU64::new(0),
            exclusive,
            owned_key,
            cpu_syncs: AtomicU64::new(0),
        };
        // SAFETY: `ram` maps `phys_end` bytes, page aligned, owned by this
        // `Machine`, which drops `kmm` (declared first) before `ram`.
        let mut mem = unsafe { kmm::PhysMem::new(ram.as_mut_ptr(), ram.len()) }?;
        let framebuffer = if FRAMEBUFFER_PHYS >= ram.len() {
            let fb = Ram::new(FRAMEBUFFER_SIZE).map_err(SimError::Ram)?;
            // SAFETY: `fb` maps FRAMEBUFFER_SIZE bytes, page aligned, owned by
            // this `Machine` and dropped after `kmm`; the window starts above
            // the RAM mapping (checked by `set_device_window`).
            unsafe { mem.set_device_window(FRAMEBUFFER_PHYS, fb.as_mut_ptr(), fb.len()) }?;
            Some(fb)
        } else {
            None
        };
        let params = BootParams {
            arch: c.arch,
            page_size: c.page_size,
            e820: &map,
            nodes: &nodes,
            node_distance: distance,
            nr_cpus: c.cpus,
            cpu_to_node,
        };
        let mut eb = setup_arch(platform, mem, &params)?;
        early(&mut eb)?;
        let kmm = Box::new(eb.mem_init()?);
        kmm.platform().printk(format_args!(
            "pci 0000:00:02.0: BAR 0 [mem {:#010x}-{:#010x} pref]",
            FRAMEBUFFER_PHYS,
            FRAMEBUFFER_PHYS + FRAMEBUFFER_SIZE - 1
        ));
        Ok(Machine {
            kmm,
            ram,
            _framebuffer: framebuffer,
            config,
        })
    }

    /// The memory manager.
    pub fn kmm(&self) -> &Kmm<SimPlatform> {
        &self.kmm
    }

    /// The platform (CPUs, log, hooks).
    pub fn platform(&self) -> &SimPlatform {
        self.kmm.platform()
    }

    /// The CPUs.
    pub fn cpus(&self) -> &Cpus {
        self.platform().cpus()
    }

    /// Takes the kernel log lines printed so far (`dmesg -c`).
    pub fn take_log(&self) -> Vec<String> {
        self.platform().log().take()
    }

    /// The machine's shape.
    pub fn config(&self) -> &MachineConfig {
        &self.config
    }

    /// Host memory actually committed to simulated RAM.
    pub fn resident_bytes(&self) -> u64 {
        self.ram.resident_bytes()
    }
}
