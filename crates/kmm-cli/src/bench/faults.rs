//! `kmm bench faults`: page faults, `fork` and TLB-hit loads of a process on
//! the simulated machine, against the same work done by this machine's own
//! Linux kernel, measured in one run and summed up as ratios.
//!
//! # Measurements
//!
//! * **anonymous write faults**: a [`System`] process `mmap`s
//!   [`FaultsArgs::pages`] pages `MAP_PRIVATE | MAP_ANONYMOUS`, then writes
//!   one byte to each page with [`System::store`]: every store is a
//!   demand-zero fault (find the VMA, allocate the missing page-table
//!   levels, a zeroed page, its PTE). The loop is timed, the mapping
//!   unmapped after each round. Against it: the same number of first-touch
//!   writes by this benchmark process on the host kernel, to an anonymous
//!   private `mmap` with `MADV_NOHUGEPAGE` (4 KiB pages only), one volatile
//!   byte write per page, unmapped after each round. Each round checks its
//!   fault count: kmm's `pgfault` counter and the host's `getrusage` minor
//!   faults must both grow by at least the number of pages.
//! * **fork**: a [`System`] process maps [`FaultsArgs::fork_size`] of
//!   anonymous memory (1 GiB) and writes every page; then
//!   [`System::fork`] is timed, and the child exits, untimed. Against it: a
//!   host helper process, forked from this one before the simulated
//!   machine is booted (so it inherits almost nothing), that disables
//!   transparent huge pages for itself (`prctl(PR_SET_THP_DISABLE)`, and
//!   `MADV_NOHUGEPAGE` on the mapping), maps and writes the same amount,
//!   then times its own `fork()`; the grandchild `_exit`s at once and is
//!   reaped untimed. Before each round both sides write every page again,
//!   untimed, so that every PTE is writable and dirty when the fork starts
//!   (a fork write-protects them for copy-on-write; the writes after it are
//!   copy-on-write faults that reuse the now unshared pages). The helper's
//!   `AnonHugePages` must be 0 kB.
//! * **TLB-hit loads**: one page of a process, already faulted in, loaded 8
//!   bytes at a time ([`FaultsArgs::loads`] per round) at offsets that cycle
//!   through the page: through [`System::load`] (what a user load costs a
//!   process: the process lookup, its page table and address-space tag, the
//!   MMU), through the raw [`Mmu::read_u64`](kmm_sim::mmu::Mmu::read_u64)
//!   with the process's page table and tag (the MMU alone), and natively,
//!   a volatile 8-byte read of a host page at the same offsets. Every kmm
//!   load is checked, once, to be a TLB hit.
//!
//! # Method
//!
//! Each figure is the **median** of [`FaultsArgs::rounds`] timed rounds
//! (minimum and maximum printed too), after one untimed warm-up round per
//! row (it also makes the simulated RAM resident in the host, as a real
//! machine's RAM always is). The rows of one comparison are timed in
//! interleaved rounds (kmm, host, kmm, host, ...), so that a busy spell of a
//! shared host slows both alike. kmm runs on one host thread, as CPU 0 of
//! the simulated machine.
//!
//! At the end every process has exited and the machine, its slab caches
//! shrunk and per-CPU lists drained, must be back at its free-page count
//! from before the first measurement.
//!
//! The report ends with one `ratio <what> <value>` line per comparison: the
//! host's (or native) time over kmm's, so a value above 1 means kmm is
//! faster than Linux on this machine.

use std::fs::File;
use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use kmm::mmap::{MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE};
use kmm::{GfpFlags, Kmm};
use kmm_sim::process::{Pid, SysError, System};
use kmm_sim::{Machine, MachineConfig, SimPlatform};

use super::host_name;
use crate::size::{format_size, parse_size};
use crate::Error;

/// The simulated machine's page size (the x86_64 profile's 4 KiB).
const PAGE: u64 = 4096;
/// The simulated CPU the processes run on (the calling thread's).
const CPU: usize = 0;
/// Bytes from one load to the next in the TLB-hit loops: a cache line and a
/// word, so the loads cycle through the page at staggered offsets.
const LOAD_STRIDE: u64 = 72;
/// Most timed rounds accepted.
const MAX_ROUNDS: usize = 1000;

/// Options of `kmm bench faults`. Each defaults to the full benchmark's
/// value, or with `--quick` to a small one; an option given explicitly wins
/// over both.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct FaultsArgs {
    /// Pages written once each in the anonymous-fault rows [default: 65536
    /// (256 MiB); --quick: 1024]
    #[arg(long, value_name = "N")]
    pub pages: Option<u64>,
    /// Timed rounds of every row; the median counts [default: 7; --quick: 3]
    #[arg(long, value_name = "N")]
    pub rounds: Option<usize>,
    /// Anonymous memory written before each timed fork, a multiple of 4K
    /// [default: 1G; --quick: 16M]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub fork_size: Option<u64>,
    /// 8-byte loads per timed round of the TLB-hit rows [default: 4000000;
    /// --quick: 20000]
    #[arg(long, value_name = "N")]
    pub loads: Option<u64>,
    /// RAM of the simulated machine [default: 4G; --quick: 256M]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub ram: Option<u64>,
    /// Small sizes and few rounds: a check that everything runs (for tests),
    /// not a measurement.
    #[arg(long)]
    pub quick: bool,
}

impl FaultsArgs {
    /// True when any option was given: the other benchmarks, which take
    /// none of them, refuse them.
    pub fn given(&self) -> bool {
        self.quick
            || self.pages.is_some()
            || self.rounds.is_some()
            || self.fork_size.is_some()
            || self.loads.is_some()
            || self.ram.is_some()
    }
}

/// The settings of a run: [`FaultsArgs`] with the defaults filled in and
/// checked.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Settings {
    /// Pages of the anonymous-fault rows.
    pages: u64,
    /// Timed rounds per row.
    rounds: usize,
    /// Bytes written before each fork.
    fork_bytes: u64,
    /// Loads per round of the TLB-hit rows.
    loads: u64,
    /// RAM of the simulated machine.
    ram: u64,
}

impl Settings {
    /// The full benchmark.
    const FULL: Settings = Settings {
        pages: 65536,
        rounds: 7,
        fork_bytes: 1 << 30,
        loads: 4_000_000,
        ram: 4 << 30,
    };
    /// `--quick`.
    const QUICK: Settings = Settings {
        pages: 1024,
        rounds: 3,
        fork_bytes: 16 << 20,
        loads: 20_000,
        ram: 256 << 20,
    };

    /// The settings `a` asks for, or why they cannot be run.
    fn from_args(a: &FaultsArgs) -> Result<Settings, String> {
        let d = if a.quick {
            Settings::QUICK
        } else {
            Settings::FULL
        };
        let s = Settings {
            pages: a.pages.unwrap_or(d.pages),
            rounds: a.rounds.unwrap_or(d.rounds),
            fork_bytes: a.fork_size.unwrap_or(d.fork_bytes),
            loads: a.loads.unwrap_or(d.loads),
            ram: a.ram.unwrap_or(d.ram),
        };
        if s.pages == 0 {
            return Err("--pages must be at least 1".into());
        }
        if s.rounds == 0 || s.rounds > MAX_ROUNDS {
            return Err(format!(
                "--rounds must be between 1 and {MAX_ROUNDS}, not {}",
                s.rounds
            ));
        }
        if s.fork_bytes == 0 || !s.fork_bytes.is_multiple_of(PAGE) {
            return Err(format!(
                "--fork-size must be a positive multiple of 4K, not {}",
                s.fork_bytes
            ));
        }
        if s.loads == 0 {
            return Err("--loads must be at least 1".into());
        }
        let fault_bytes = s
            .pages
            .checked_mul(PAGE)
            .filter(|b| usize::try_from(*b).is_ok())
            .ok_or_else(|| format!("--pages {} is too large", s.pages))?;
        if usize::try_from(s.fork_bytes).is_err() {
            return Err(format!("--fork-size {} is too large", s.fork_bytes));
        }
        // The larger of the two working sets, its page tables (8 bytes a
        // page, with room for the upper levels), and an eighth of the RAM
        // for the kernel's own use (mem_map, slabs, reserves).
        let need = fault_bytes.max(s.fork_bytes);
        let need = need.saturating_add(need / 256).saturating_add(s.ram / 8);
        if need > s.ram {
            return Err(format!(
                "--ram {} is too small for {} of anonymous memory (--pages {}, --fork-size {}): give it at least {}",
                format_size(s.ram),
                format_size(fault_bytes.max(s.fork_bytes)),
                s.pages,
                format_size(s.fork_bytes),
                format_size((fault_bytes.max(s.fork_bytes) * 3 / 2).next_multiple_of(1 << 20))
            ));
        }
        Ok(s)
    }
}

/// Median, fastest and slowest of a row's rounds, in ns per operation.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Stat {
    /// The median (the mean of the middle two for an even count).
    median: f64,
    /// The fastest round.
    min: f64,
    /// The slowest round.
    max: f64,
}

impl Stat {
    /// The statistics of `samples` (ns per operation); `None` when empty.
    fn of(samples: &[f64]) -> Option<Stat> {
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let (first, last) = (*v.first()?, *v.last()?);
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: first,
            max: last,
        })
    }
}

/// One row's samples, turned into a [`Stat`] at the end.
#[derive(Clone, Debug, Default)]
struct Samples(Vec<f64>);

impl Samples {
    /// Records a round of `ops` operations that took `d`.
    fn push(&mut self, d: Duration, ops: u64) {
        self.0.push(d.as_secs_f64() * 1e9 / ops.max(1) as f64);
    }

    /// The statistics, or an error naming the row when it has no samples.
    fn stat(&self, row: &str) -> Result<Stat, String> {
        Stat::of(&self.0).ok_or_else(|| format!("{row}: no rounds were timed"))
    }
}

/// Writes one line of the report and flushes it, so progress shows at once.
fn say(out: &mut dyn Write, line: &str) -> Result<(), Error> {
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// A failed system call of the simulated machine, as report text.
fn sys_err(what: &str, e: SysError) -> String {
    format!("kmm {what}: {e}")
}

/// A failed host call, as report text with the OS error.
fn host_err(what: &str) -> String {
    format!("host {what}: {}", std::io::Error::last_os_error())
}

/// A time in the largest unit that keeps it readable.
fn human_ns(ns: f64) -> String {
    if ns >= 1e7 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e4 {
        format!("{:.2} us", ns / 1e3)
    } else {
        format!("{ns:.2} ns")
    }
}

/// One row of the report's tables: label, median, min, max, and the rate.
fn row(label: &str, s: Stat, unit: &str) -> String {
    format!(
        "  {label:<40}{:>12}{:>12}{:>12}   {}",
        human_ns(s.median),
        human_ns(s.min),
        human_ns(s.max),
        rate(1e9 / s.median, unit)
    )
}

/// `12.3 M faults/s`, `45.6 K forks/s`, `7.8 forks/s`.
fn rate(per_s: f64, unit: &str) -> String {
    if per_s >= 1e6 {
        format!("{:.2} M {unit}/s", per_s / 1e6)
    } else if per_s >= 1e3 {
        format!("{:.2} K {unit}/s", per_s / 1e3)
    } else {
        format!("{per_s:.2} {unit}/s")
    }
}

/// The header of a table.
fn table_header() -> String {
    format!("  {:<40}{:>12}{:>12}{:>12}", "", "median", "min", "max")
}

/// `4 KiB`, `256 MiB`, `1 GiB`, `1.5 GiB`: bytes for the report's prose.
fn bytes_text(b: u64) -> String {
    const UNITS: [(&str, u32); 3] = [("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (unit, shift) in UNITS {
        if b >= 1 << shift {
            let v = b as f64 / (1u64 << shift) as f64;
            return if b.is_multiple_of(1 << shift) {
                format!("{} {unit}", b >> shift)
            } else {
                format!("{v:.1} {unit}")
            };
        }
    }
    format!("{b} bytes")
}

/// The first line of a host file, trimmed, or `unknown`.
fn host_file(path: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

/// The number in a `/proc` line `key:  <n> [kB]`.
fn proc_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Free pages once the slab caches are shrunk and the per-CPU lists drained.
fn settled(kmm: &Kmm<SimPlatform>) -> u64 {
    kmm.shrink_slab(GfpFlags::GFP_KERNEL);
    kmm.drain_all_pages();
    kmm.nr_free_pages()
}

/// What the run found: every row's figures and the ratios.
#[derive(Clone, Debug)]
struct Report {
    /// Every `ratio` line, in order: its name and value.
    ratios: Vec<(String, f64)>,
}

/// Runs `kmm bench faults` with `args`, writing the report to `out` line by
/// line as it is measured.
pub fn run(args: &FaultsArgs, out: &mut dyn Write) -> Result<(), Error> {
    let s = Settings::from_args(args)?;
    run_with(&s, args.quick, out).map(drop)
}

/// [`run`] with checked settings; returns the ratios too.
fn run_with(s: &Settings, quick: bool, out: &mut dyn Write) -> Result<Report, Error> {
    let host_page = host_page_size()?;
    say(
        out,
        &format!(
            "kmm bench faults: x86_64 profile, 4K pages, one process on CPU {CPU} (one host thread); median of {} rounds after a warm-up, kmm and host rounds interleaved{}",
            s.rounds,
            if quick { " (--quick: sizes too small to mean much)" } else { "" }
        ),
    )?;
    say(out, &format!("host: {}", host_name()))?;
    say(
        out,
        &format!(
            "host kernel: Linux {}, {host_page}-byte pages; transparent_hugepage/enabled: {} (the host rows use MADV_NOHUGEPAGE; the fork helper also PR_SET_THP_DISABLE)",
            host_file("/proc/sys/kernel/osrelease"),
            host_file("/sys/kernel/mm/transparent_hugepage/enabled")
        ),
    )?;

    // The fork helper first, while this process is small: it inherits (and
    // its forks copy) only what this process maps now. It writes its memory
    // while the machine boots.
    let mut helper = ForkHelper::start(s.fork_bytes, host_page)?;

    let t = Instant::now();
    let machine = Machine::boot(MachineConfig {
        ram: s.ram,
        ..Default::default()
    })
    .map_err(|e| format!("cannot boot a {} machine: {e}", bytes_text(s.ram)))?;
    say(
        out,
        &format!(
            "machine: {} RAM, {} CPUs, booted in {:.2} s",
            bytes_text(s.ram),
            machine.config().cpus,
            t.elapsed().as_secs_f64()
        ),
    )?;
    let sys = System::new(&machine);
    let kmm = machine.kmm();

    // A first process with a page, forked once, makes the slab caches the
    // rows use exist (tasks, address spaces, VMAs, reverse-map chains), so
    // the balance below counts only what the rows take.
    warm_up(&sys)?;
    let before = settled(kmm);

    let ready = helper.ready()?;
    let result = measure_all(s, &sys, &mut helper, ready, host_page, out);
    let finished = helper.finish();
    let (faults, forks, loads) = result?;
    finished?;

    for pid in sys.pids() {
        sys.exit(pid, 0).map_err(|e| sys_err("exit", e))?;
    }
    let after = settled(kmm);
    if after != before || kmm.nr_pcp_pages() != 0 {
        return Err(format!(
            "kmm did not give back its pages: {before} free before the measurements, {after} after every process exited"
        )
        .into());
    }
    say(
        out,
        &format!(
            "kmm: every process exited, caches shrunk, per-CPU lists drained: {after} pages free, as before the measurements"
        ),
    )?;

    let fork_name = format!("fork-{}", format_size(s.fork_bytes).to_lowercase());
    let report = Report {
        ratios: vec![
            (
                "anon-fault-vs-linux".into(),
                faults.host.median / faults.kmm.median,
            ),
            (
                format!("{fork_name}-vs-linux"),
                forks.host.median / forks.kmm.median,
            ),
            (
                "tlb-hit-load-vs-native".into(),
                loads.native.median / loads.system.median,
            ),
            (
                "tlb-hit-mmu-load-vs-native".into(),
                loads.native.median / loads.mmu.median,
            ),
        ],
    };

    let target = |what: &str, value: f64, ok: bool| {
        let verdict = if ok { "met" } else { "NOT MET" };
        format!("  {what:<64}{:>9}  {verdict}", format!("{value:.2}x"))
    };
    say(out, "")?;
    say(out, "targets (host time over kmm's):")?;
    say(
        out,
        &target(
            "anonymous write fault: kmm at least 2x faster than Linux",
            report.ratios[0].1,
            report.ratios[0].1 >= 2.0,
        ),
    )?;
    say(
        out,
        &target(
            &format!(
                "fork of {} written: kmm within 1.5x of Linux (>= 0.67x)",
                bytes_text(s.fork_bytes)
            ),
            report.ratios[1].1,
            report.ratios[1].1 >= 1.0 / 1.5,
        ),
    )?;
    say(out, "")?;
    say(
        out,
        "ratios: Linux's (or the native load's) time over kmm's (> 1: kmm faster)",
    )?;
    for (name, v) in &report.ratios {
        say(out, &format!("ratio {name} {v:.2}"))?;
    }
    Ok(report)
}

/// A process that maps and writes a page, forks, and exits with its child.
fn warm_up(sys: &System<'_>) -> Result<(), Error> {
    let pid = sys.spawn("bench").map_err(|e| sys_err("spawn", e))?;
    let addr = anon_mmap(sys, pid, PAGE)?;
    sys.store(pid, addr, &[1])
        .map_err(|e| sys_err("store", e))?;
    let child = sys.fork(pid).map_err(|e| sys_err("fork", e))?;
    sys.exit(child, 0).map_err(|e| sys_err("exit", e))?;
    sys.exit(pid, 0).map_err(|e| sys_err("exit", e))?;
    Ok(())
}

/// The two rows of a kmm-vs-host comparison.
#[derive(Clone, Copy, Debug)]
struct Pair {
    /// kmm's figure.
    kmm: Stat,
    /// The host kernel's figure.
    host: Stat,
}

/// The three rows of the TLB-hit loads.
#[derive(Clone, Copy, Debug)]
struct Loads {
    /// Through [`System::load`].
    system: Stat,
    /// Through [`Mmu::read_u64`](kmm_sim::mmu::Mmu::read_u64).
    mmu: Stat,
    /// A native volatile load.
    native: Stat,
}

/// The three measurements, in order.
fn measure_all(
    s: &Settings,
    sys: &System<'_>,
    helper: &mut ForkHelper,
    ready: HelperReady,
    host_page: u64,
    out: &mut dyn Write,
) -> Result<(Pair, Pair, Loads), Error> {
    say(out, "")?;
    let faults = anon_faults(s, sys, host_page, out)?;
    say(out, "")?;
    let forks = fork(s, sys, helper, ready, out)?;
    say(out, "")?;
    let loads = tlb_loads(s, sys, host_page, out)?;
    say(out, "")?;
    Ok((faults, forks, loads))
}

/// `mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
/// -1, 0)` in `pid`: the mapping's address.
fn anon_mmap(sys: &System<'_>, pid: Pid, len: u64) -> Result<u64, Error> {
    let (prot, flags) = (PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    sys.mmap(pid, 0, len, prot as _, flags as _, -1, 0)
        .map_err(|e| sys_err("mmap", e).into())
}

// ------------------------------------------------------------ anon faults

/// The anonymous write-fault rows.
fn anon_faults(
    s: &Settings,
    sys: &System<'_>,
    host_page: u64,
    out: &mut dyn Write,
) -> Result<Pair, Error> {
    let n = s.pages;
    say(
        out,
        &format!(
            "anonymous write faults: mmap {n} pages ({}) MAP_PRIVATE|MAP_ANONYMOUS, one 1-byte write per page (timed), munmap",
            bytes_text(n * PAGE)
        ),
    )?;
    let pid = sys.spawn("bench-faults").map_err(|e| sys_err("spawn", e))?;
    let (mut k, mut h) = (Samples::default(), Samples::default());
    let (mut kmm_faults, mut host_faults) = (u64::MAX, u64::MAX);
    for round in 0..=s.rounds {
        let (kd, kf) = kmm_fault_round(sys, pid, n)?;
        let (hd, hf) = host_fault_round(n, host_page)?;
        kmm_faults = kmm_faults.min(kf);
        host_faults = host_faults.min(hf);
        // Round 0 is the warm-up.
        if round > 0 {
            k.push(kd, n);
            h.push(hd, n);
        }
    }
    sys.exit(pid, 0).map_err(|e| sys_err("exit", e))?;
    say(
        out,
        &format!(
            "  checked: every round counts at least {n} faults (fewest: kmm {kmm_faults} in pgfault, host {host_faults} minor faults in getrusage); kmm's pages read back what was written"
        ),
    )?;
    let p = Pair {
        kmm: k.stat("kmm anon fault")?,
        host: h.stat("host anon fault")?,
    };
    say(out, &table_header())?;
    say(
        out,
        &row("kmm write fault (System::store)", p.kmm, "faults"),
    )?;
    say(out, &row("Linux first-touch write", p.host, "faults"))?;
    Ok(p)
}

/// One kmm round: map, write one byte per page (timed), check, unmap.
/// Returns the time and the faults counted.
fn kmm_fault_round(sys: &System<'_>, pid: Pid, pages: u64) -> Result<(Duration, u64), Error> {
    let kmm = sys.machine().kmm();
    let len = pages * PAGE;
    let addr = anon_mmap(sys, pid, len)?;
    let faults = kmm.fault_counts().0;
    let t = Instant::now();
    let mut stored = Ok(());
    for i in 0..pages {
        let v = [i as u8 | 1];
        if let Err(e) = sys.store(pid, addr + i * PAGE, &v) {
            stored = Err(e);
            break;
        }
    }
    let d = t.elapsed();
    let counted = kmm.fault_counts().0 - faults;
    stored.map_err(|e| sys_err("store", e))?;
    if counted < pages {
        return Err(format!("kmm: {pages} first writes counted only {counted} page faults").into());
    }
    for i in [0, pages / 2, pages - 1] {
        let mut b = [0u8];
        sys.load(pid, addr + i * PAGE, &mut b)
            .map_err(|e| sys_err("load", e))?;
        if b[0] != i as u8 | 1 {
            return Err(format!(
                "kmm: page {i} at {:#x} reads {:#x}, not {:#x}",
                addr + i * PAGE,
                b[0],
                i as u8 | 1
            )
            .into());
        }
    }
    sys.munmap(pid, addr, len)
        .map_err(|e| sys_err("munmap", e))?;
    Ok((d, counted))
}

/// One host round: map, write one byte per page (timed), unmap. Returns
/// the time and the minor faults counted.
fn host_fault_round(pages: u64, host_page: u64) -> Result<(Duration, u64), Error> {
    let map = HostMap::new(pages * PAGE)?;
    let before = minor_faults()?;
    let t = Instant::now();
    map.touch(host_page as usize, 1);
    let d = t.elapsed();
    let counted = minor_faults()? - before;
    // Host pages are 4 KiB on x86_64; with larger ones fewer faults happen.
    let expect = pages * PAGE / host_page;
    if counted < expect {
        return Err(format!(
            "host: {expect} first writes counted only {counted} minor faults (huge pages?)"
        )
        .into());
    }
    Ok((d, counted))
}

// ------------------------------------------------------------------- fork

/// The fork rows.
fn fork(
    s: &Settings,
    sys: &System<'_>,
    helper: &mut ForkHelper,
    ready: HelperReady,
    out: &mut dyn Write,
) -> Result<Pair, Error> {
    let bytes = s.fork_bytes;
    let pages = bytes / PAGE;
    say(
        out,
        &format!(
            "fork: a process with {} anonymous ({pages} pages), every page written again before each round (untimed); fork() timed, the child exits untimed",
            bytes_text(bytes)
        ),
    )?;
    let pid = sys.spawn("bench-fork").map_err(|e| sys_err("spawn", e))?;
    let addr = anon_mmap(sys, pid, bytes)?;
    let kmm = sys.machine().kmm();
    let tables = kmm.nr_page_table_pages();
    let touch = |value: u8| -> Result<(), Error> {
        for i in 0..pages {
            sys.store(pid, addr + i * PAGE, &[value])
                .map_err(|e| sys_err("store", e))?;
        }
        Ok(())
    };
    touch(1)?;
    let mapping_tables = kmm.nr_page_table_pages().saturating_sub(tables);
    let status = sys
        .proc_read(&format!("/proc/{pid}/status"))
        .map_err(|e| sys_err("/proc/PID/status", e))?;
    let host = helper.status()?;
    say(
        out,
        &format!(
            "  kmm process: VmRSS {} kB, VmPTE {} kB; host helper (pid {}): VmRSS {} kB, VmPTE {} kB, AnonHugePages {} kB, THP disabled by prctl: {}",
            proc_value(&status, "VmRSS").unwrap_or(0),
            proc_value(&status, "VmPTE").unwrap_or(0),
            helper.pid,
            host.rss_kb,
            host.pte_kb,
            host.huge_kb,
            if ready.thp_disabled { "yes" } else { "no (MADV_NOHUGEPAGE only)" }
        ),
    )?;
    if host.huge_kb != 0 {
        return Err(format!(
            "host fork helper got {} kB of transparent huge pages despite PR_SET_THP_DISABLE and MADV_NOHUGEPAGE: not a 4 KiB comparison",
            host.huge_kb
        )
        .into());
    }
    let (mut k, mut h) = (Samples::default(), Samples::default());
    let mut child_tables = 0;
    for round in 0..=s.rounds {
        touch(round as u8 | 1)?;
        let before = kmm.nr_page_table_pages();
        let t = Instant::now();
        let child = sys.fork(pid).map_err(|e| sys_err("fork", e))?;
        let kd = t.elapsed();
        child_tables = kmm.nr_page_table_pages() - before;
        sys.exit(child, 0).map_err(|e| sys_err("exit", e))?;
        let hd = helper.fork_round()?;
        if round > 0 {
            k.push(kd, 1);
            h.push(hd, 1);
        }
    }
    sys.munmap(pid, addr, bytes)
        .map_err(|e| sys_err("munmap", e))?;
    sys.exit(pid, 0).map_err(|e| sys_err("exit", e))?;
    let p = Pair {
        kmm: k.stat("kmm fork")?,
        host: h.stat("host fork")?,
    };
    say(
        out,
        &format!(
            "  kmm: {mapping_tables} page-table pages for the mapping, {child_tables} new ones per child; per page: kmm {:.1} ns, Linux {:.1} ns",
            p.kmm.median / pages as f64,
            p.host.median / pages as f64
        ),
    )?;
    say(out, &table_header())?;
    say(out, &row("kmm System::fork", p.kmm, "forks"))?;
    say(out, &row("Linux fork()", p.host, "forks"))?;
    Ok(p)
}

// --------------------------------------------------------------- TLB hits

/// The TLB-hit load rows.
fn tlb_loads(
    s: &Settings,
    sys: &System<'_>,
    host_page: u64,
    out: &mut dyn Write,
) -> Result<Loads, Error> {
    let n = s.loads;
    say(
        out,
        &format!(
            "TLB-hit loads: {n} 8-byte loads per round from one page already faulted in, offsets {LOAD_STRIDE} bytes apart, wrapping in the page"
        ),
    )?;
    let pid = sys.spawn("bench-loads").map_err(|e| sys_err("spawn", e))?;
    let kmm = sys.machine().kmm();
    let addr = anon_mmap(sys, pid, PAGE)?;
    let words: Vec<u8> = (0..PAGE / 8).flat_map(u64::to_le_bytes).collect();
    sys.store(pid, addr, &words)
        .map_err(|e| sys_err("store", e))?;
    let mm = sys.mm_of(pid).map_err(|e| sys_err("mm_of", e))?;
    let pt = kmm
        .mm_page_table(mm)
        .ok_or_else(|| Error::Msg("kmm: the process has no page table".into()))?;
    let asid = kmm.mm_asid(mm);
    let mmu = sys.mmu();

    let native = HostMap::new(host_page.max(PAGE))?;
    for w in 0..PAGE / 8 {
        native.write_u64(w * 8, w);
    }

    // Check, untimed: every loop reads what is there, and kmm's are hits.
    let check = (PAGE / LOAD_STRIDE) * 4;
    let expect = expected_sum(check);
    let before = mmu.tlb_stats(CPU);
    let (a, _) = system_loads(sys, pid, addr, check)?;
    let (b, _) = mmu_loads(sys, &pt, asid, addr, check)?;
    let after = mmu.tlb_stats(CPU);
    let (c, _) = native_loads(&native, check);
    let (hits, misses) = (after.hits - before.hits, after.misses - before.misses);
    // The first load of each loop may miss: the TLB may have lost the entry.
    if a != expect || b != expect || c != expect {
        return Err(format!(
            "TLB-hit loads: sums {a}, {b}, {c} (System, Mmu, native), expected {expect}"
        )
        .into());
    }
    if misses > 1 || hits + misses != 2 * check {
        return Err(format!(
            "TLB-hit loads are not TLB hits: {hits} hits, {misses} misses in {} loads",
            2 * check
        )
        .into());
    }
    let (mut ks, mut km, mut nv) = (Samples::default(), Samples::default(), Samples::default());
    for round in 0..=s.rounds {
        let (_, d1) = system_loads(sys, pid, addr, n)?;
        let (_, d2) = mmu_loads(sys, &pt, asid, addr, n)?;
        let (_, d3) = native_loads(&native, n);
        if round > 0 {
            ks.push(d1, n);
            km.push(d2, n);
            nv.push(d3, n);
        }
    }
    let l = Loads {
        system: ks.stat("System::load")?,
        mmu: km.stat("Mmu::read_u64")?,
        native: nv.stat("native load")?,
    };
    sys.munmap(pid, addr, PAGE)
        .map_err(|e| sys_err("munmap", e))?;
    sys.exit(pid, 0).map_err(|e| sys_err("exit", e))?;
    say(
        out,
        &format!(
            "  checked: the loops' sums are right; kmm's {} checked loads were {hits} TLB hits, {misses} misses",
            2 * check
        ),
    )?;
    say(out, &table_header())?;
    say(out, &row("kmm System::load (TLB hit)", l.system, "loads"))?;
    say(out, &row("kmm Mmu::read_u64 (TLB hit)", l.mmu, "loads"))?;
    say(out, &row("native volatile load", l.native, "loads"))?;
    Ok(l)
}

/// Byte offset of the `j`-th load in a page.
#[inline(always)]
fn load_offset(j: u64) -> u64 {
    j.wrapping_mul(LOAD_STRIDE) & (PAGE - 8)
}

/// What `n` loads at [`load_offset`] sum to when word `w` of the page
/// holds `w`.
fn expected_sum(n: u64) -> u64 {
    (0..n).fold(0u64, |s, j| s.wrapping_add(load_offset(j) / 8))
}

/// `n` loads through [`System::load`]; their sum and time.
fn system_loads(sys: &System<'_>, pid: Pid, addr: u64, n: u64) -> Result<(u64, Duration), Error> {
    let mut sum = 0u64;
    let mut b = [0u8; 8];
    let t = Instant::now();
    for j in 0..n {
        if let Err(e) = sys.load(pid, addr + load_offset(j), &mut b) {
            return Err(sys_err("load", e).into());
        }
        sum = sum.wrapping_add(u64::from_le_bytes(b));
    }
    let d = t.elapsed();
    Ok((std::hint::black_box(sum), d))
}

/// `n` loads through [`Mmu::read_u64`](kmm_sim::mmu::Mmu::read_u64) with
/// the process's page table and tag; their sum and time.
fn mmu_loads(
    sys: &System<'_>,
    pt: &kmm::PageTable,
    asid: u16,
    addr: u64,
    n: u64,
) -> Result<(u64, Duration), Error> {
    let mmu = sys.mmu();
    let mut sum = 0u64;
    let t = Instant::now();
    for j in 0..n {
        let v = addr + load_offset(j);
        match mmu.read_u64(CPU, pt, asid, v) {
            Ok(x) => sum = sum.wrapping_add(x),
            Err(f) => return Err(format!("kmm Mmu::read_u64 at {v:#x}: {f}").into()),
        }
    }
    let d = t.elapsed();
    Ok((std::hint::black_box(sum), d))
}

/// `n` native volatile loads from `page`; their sum and time.
fn native_loads(page: &HostMap, n: u64) -> (u64, Duration) {
    let mut sum = 0u64;
    let t = Instant::now();
    for j in 0..n {
        sum = sum.wrapping_add(page.read_u64(load_offset(j)));
    }
    let d = t.elapsed();
    (std::hint::black_box(sum), d)
}

// ------------------------------------------------------------ host memory

/// The host's page size.
fn host_page_size() -> Result<u64, Error> {
    // SAFETY: sysconf reads a constant of the system; no memory is touched.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n)
        .ok()
        .filter(|n| n.is_power_of_two())
        .ok_or_else(|| Error::from(host_err("sysconf(_SC_PAGESIZE)")))
}

/// Minor page faults of this process so far (`getrusage`).
fn minor_faults() -> Result<u64, Error> {
    let mut ru = MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the rusage it is given, which is ours.
    let r = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if r != 0 {
        return Err(host_err("getrusage").into());
    }
    // SAFETY: getrusage succeeded, so it wrote the whole struct.
    let ru = unsafe { ru.assume_init() };
    Ok(u64::try_from(ru.ru_minflt).unwrap_or(0))
}

/// An anonymous private read-write mapping of host memory with
/// `MADV_NOHUGEPAGE`, unmapped on drop.
struct HostMap {
    /// First byte.
    ptr: *mut u8,
    /// Length in bytes.
    len: usize,
}

impl HostMap {
    /// Maps `bytes` (not touched yet).
    fn new(bytes: u64) -> Result<HostMap, Error> {
        let len = usize::try_from(bytes).map_err(|_| format!("host mmap of {bytes} bytes"))?;
        // SAFETY: a new anonymous mapping where the kernel chooses: no
        // memory of this process is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(host_err(&format!("mmap of {}", bytes_text(bytes))).into());
        }
        let map = HostMap { ptr: p.cast(), len };
        // SAFETY: advice on the mapping just made, which `map` owns.
        if unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) } != 0 {
            return Err(host_err("madvise(MADV_NOHUGEPAGE)").into());
        }
        Ok(map)
    }

    /// Writes `value` to the first byte of every `stride` bytes.
    #[inline(never)]
    fn touch(&self, stride: usize, value: u8) {
        let mut off = 0;
        while off < self.len {
            // SAFETY: `off < len`: inside the mapping, readable and writable,
            // which `self` owns until it is dropped.
            unsafe { self.ptr.add(off).write_volatile(value) };
            off += stride;
        }
    }

    /// Writes the 8-byte word at `off` (8-byte aligned, inside the mapping;
    /// anything else is ignored).
    fn write_u64(&self, off: u64, value: u64) {
        if off.is_multiple_of(8) && off.saturating_add(8) <= self.len as u64 {
            // SAFETY: aligned and inside the mapping, which `self` owns.
            unsafe {
                self.ptr
                    .add(off as usize)
                    .cast::<u64>()
                    .write_volatile(value)
            };
        }
    }

    /// A volatile load of the 8-byte word at `off` (8-byte aligned, inside
    /// the mapping; anything else reads 0).
    #[inline(always)]
    fn read_u64(&self, off: u64) -> u64 {
        if off.is_multiple_of(8) && off.saturating_add(8) <= self.len as u64 {
            // SAFETY: aligned and inside the mapping, which `self` owns.
            unsafe { self.ptr.add(off as usize).cast::<u64>().read_volatile() }
        } else {
            0
        }
    }
}

impl Drop for HostMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `self` owns; no reference into
        // it outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

// ----------------------------------------------------------- fork helper

/// Bit 63 of a helper reply: an error; bits 32-39 say which step
/// ([`STEP_NAMES`]), bits 0-31 the errno.
const REPLY_ERROR: u64 = 1 << 63;
/// Bit 0 of the ready reply: `prctl(PR_SET_THP_DISABLE)` worked.
const READY_THP_DISABLED: u64 = 1;
/// The helper's steps that can fail, by their number in an error reply.
const STEP_NAMES: [&str; 6] = [
    "?",
    "mmap",
    "madvise(MADV_NOHUGEPAGE)",
    "fork",
    "waitpid",
    "fork child's exit status",
];
/// The command byte for one timed fork.
const CMD_FORK: u8 = b'f';

/// The ready reply of the fork helper.
#[derive(Clone, Copy, Debug)]
struct HelperReady {
    /// `prctl(PR_SET_THP_DISABLE)` worked in the helper.
    thp_disabled: bool,
}

/// What `/proc/PID/status` and `smaps_rollup` say about the helper.
#[derive(Clone, Copy, Debug)]
struct HelperStatus {
    /// `VmRSS`.
    rss_kb: u64,
    /// `VmPTE`.
    pte_kb: u64,
    /// `AnonHugePages`.
    huge_kb: u64,
}

/// A host process with touched anonymous memory that forks on command and
/// reports how long its `fork()` took: the host side of the fork rows.
///
/// It talks to this process through two pipes: a command byte in, an
/// 8-byte reply out. It exits when its command pipe closes.
struct ForkHelper {
    /// Its pid.
    pid: libc::pid_t,
    /// Where commands go (closed to make it exit).
    cmd: Option<File>,
    /// Where replies come from.
    reply: File,
    /// Reaped already.
    reaped: bool,
}

/// A pipe with close-on-exec ends: (read, write).
fn pipe() -> Result<(OwnedFd, OwnedFd), Error> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(host_err("pipe2").into());
    }
    // SAFETY: both descriptors were just opened by pipe2 and belong to
    // nothing else.
    let ends = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok(ends)
}

impl ForkHelper {
    /// Forks the helper, which maps `bytes`, writes every page and reports
    /// ready (read with [`Self::ready`]).
    fn start(bytes: u64, host_page: u64) -> Result<ForkHelper, Error> {
        let len = usize::try_from(bytes).map_err(|_| format!("host fork of {bytes} bytes"))?;
        let (cmd_r, cmd_w) = pipe()?;
        let (reply_r, reply_w) = pipe()?;
        // SAFETY: the child runs `helper_main` only, which makes nothing
        // but async-signal-safe calls (no allocation, no locks) and ends
        // with `_exit`, so forking a multi-threaded process is sound.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(host_err("fork of the fork helper").into());
        }
        if pid == 0 {
            helper_main(
                len,
                host_page as usize,
                cmd_r.as_raw_fd(),
                reply_w.as_raw_fd(),
                [cmd_w.as_raw_fd(), reply_r.as_raw_fd()],
            );
        }
        drop((cmd_r, reply_w));
        Ok(ForkHelper {
            pid,
            cmd: Some(File::from(cmd_w)),
            reply: File::from(reply_r),
            reaped: false,
        })
    }

    /// The next reply; an error reply becomes the error.
    fn reply(&mut self) -> Result<u64, Error> {
        let mut b = [0u8; 8];
        self.reply
            .read_exact(&mut b)
            .map_err(|e| format!("host fork helper (pid {}) stopped answering: {e}", self.pid))?;
        let v = u64::from_ne_bytes(b);
        if v & REPLY_ERROR != 0 {
            let step = ((v >> 32) & 0xff) as usize;
            let errno = (v & 0xffff_ffff) as i32;
            return Err(format!(
                "host fork helper: {} failed: {}",
                STEP_NAMES.get(step).copied().unwrap_or("?"),
                std::io::Error::from_raw_os_error(errno)
            )
            .into());
        }
        Ok(v)
    }

    /// Waits until the helper has mapped and written its memory.
    fn ready(&mut self) -> Result<HelperReady, Error> {
        let v = self.reply()?;
        Ok(HelperReady {
            thp_disabled: v & READY_THP_DISABLED != 0,
        })
    }

    /// The helper's resident set, page tables and huge pages.
    fn status(&self) -> Result<HelperStatus, Error> {
        let read = |file: &str| {
            std::fs::read_to_string(format!("/proc/{}/{file}", self.pid))
                .map_err(|e| format!("host /proc/{}/{file}: {e}", self.pid))
        };
        let status = read("status")?;
        let rollup = read("smaps_rollup")?;
        Ok(HelperStatus {
            rss_kb: proc_value(&status, "VmRSS").unwrap_or(0),
            pte_kb: proc_value(&status, "VmPTE").unwrap_or(0),
            huge_kb: proc_value(&rollup, "AnonHugePages").unwrap_or(0),
        })
    }

    /// One round: the helper writes every page again, then times a fork.
    fn fork_round(&mut self) -> Result<Duration, Error> {
        let cmd = self
            .cmd
            .as_mut()
            .ok_or_else(|| Error::Msg("host fork helper already finished".into()))?;
        cmd.write_all(&[CMD_FORK])
            .map_err(|e| format!("host fork helper (pid {}): {e}", self.pid))?;
        Ok(Duration::from_nanos(self.reply()?))
    }

    /// Makes the helper exit and reaps it; it must exit with status 0.
    fn finish(&mut self) -> Result<(), Error> {
        self.cmd = None;
        let status = self.reap()?;
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            return Err(format!("host fork helper ended with wait status {status:#x}").into());
        }
        Ok(())
    }

    /// Waits for the helper to exit (once); its wait status.
    fn reap(&mut self) -> Result<libc::c_int, Error> {
        if self.reaped {
            return Ok(0);
        }
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child and writes its status into
            // a local.
            let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if r == self.pid {
                self.reaped = true;
                return Ok(status);
            }
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                self.reaped = true;
                return Err(host_err("waitpid of the fork helper").into());
            }
        }
    }
}

impl Drop for ForkHelper {
    /// Closing the command pipe makes the helper exit; it is then reaped.
    fn drop(&mut self) {
        self.cmd = None;
        let _ = self.reap();
    }
}

/// The current `CLOCK_MONOTONIC` time in ns (async-signal-safe).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// This thread's errno (async-signal-safe: no allocation).
fn errno() -> u64 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .map_or(0, |e| e as u32 as u64)
}

/// Sends one 8-byte reply; a closed pipe is ignored (the parent is gone).
fn send(fd: RawFd, v: u64) {
    let b = v.to_ne_bytes();
    // SAFETY: writes 8 bytes from a local array; a pipe write of 8 bytes
    // is atomic.
    unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
}

/// The error reply for `step` with the current errno.
fn step_error(step: u64) -> u64 {
    REPLY_ERROR | (step << 32) | errno()
}

/// Writes `value` to the first byte of every `stride` bytes of the `len`
/// bytes at `p` (async-signal-safe).
fn touch_raw(p: *mut u8, len: usize, stride: usize, value: u8) {
    let mut off = 0;
    while off < len {
        // SAFETY: `off < len`, and `p` is a read-write mapping of `len`
        // bytes the helper owns.
        unsafe { p.add(off).write_volatile(value) };
        off = off.wrapping_add(stride);
    }
}

/// The fork helper, in the child: disables transparent huge pages, maps
/// and writes `len` bytes, replies ready, then for each command byte writes
/// every page again and times a `fork()` whose child `_exit`s at once.
/// Exits when the command pipe closes. Makes only async-signal-safe calls.
fn helper_main(len: usize, stride: usize, cmd: RawFd, reply: RawFd, close: [RawFd; 2]) -> ! {
    for fd in close {
        // SAFETY: closes the parent's ends of the pipes in this process.
        unsafe { libc::close(fd) };
    }
    // The variadic arguments are passed as the `unsigned long`s the kernel
    // reads: an `int` 0 could leave garbage in the upper half of a register.
    let (one, zero): (libc::c_ulong, libc::c_ulong) = (1, 0);
    // SAFETY: prctl with integer arguments only.
    let thp = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, one, zero, zero, zero) } == 0;
    // SAFETY: a new anonymous mapping where the kernel chooses.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        send(reply, step_error(1));
        // SAFETY: ends this process without running any destructor.
        unsafe { libc::_exit(1) };
    }
    // SAFETY: advice on the mapping just made.
    if unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) } != 0 {
        send(reply, step_error(2));
        // SAFETY: as above.
        unsafe { libc::_exit(1) };
    }
    let base: *mut u8 = p.cast();
    touch_raw(base, len, stride, 1);
    send(reply, if thp { READY_THP_DISABLED } else { 0 });
    let mut round: u8 = 1;
    loop {
        let mut c = 0u8;
        // SAFETY: reads one byte into a local.
        let n = unsafe { libc::read(cmd, (&mut c as *mut u8).cast(), 1) };
        if n < 0 && errno() == libc::EINTR as u64 {
            continue;
        }
        if n != 1 || c != CMD_FORK {
            break;
        }
        round = round.wrapping_add(2);
        touch_raw(base, len, stride, round);
        let t0 = monotonic_ns();
        // SAFETY: the child only calls `_exit`.
        let child = unsafe { libc::fork() };
        if child == 0 {
            // SAFETY: ends the grandchild at once.
            unsafe { libc::_exit(0) };
        }
        let t1 = monotonic_ns();
        if child < 0 {
            send(reply, step_error(3));
            continue;
        }
        let mut status = 0;
        let reaped = loop {
            // SAFETY: waits for our own child, status into a local.
            let r = unsafe { libc::waitpid(child, &mut status, 0) };
            if r == child || errno() != libc::EINTR as u64 {
                break r == child;
            }
        };
        if !reaped {
            send(reply, step_error(4));
        } else if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            send(reply, REPLY_ERROR | (5 << 32));
        } else {
            send(reply, t1.wrapping_sub(t0) & !REPLY_ERROR);
        }
    }
    // SAFETY: unmaps the helper's own mapping, then ends the process
    // without running any destructor.
    unsafe {
        libc::munmap(p, len);
        libc::_exit(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_run_ends_with_the_ratios() {
        let args = FaultsArgs {
            quick: true,
            ..Default::default()
        };
        let mut text = Vec::new();
        run(&args, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        let tail: Vec<&str> = text.lines().rev().take(4).collect();
        let names = [
            "tlb-hit-mmu-load-vs-native",
            "tlb-hit-load-vs-native",
            "fork-16m-vs-linux",
            "anon-fault-vs-linux",
        ];
        for (line, name) in tail.iter().zip(names) {
            assert_eq!(crate::bench::split_ratio_line(line).0, name, "{text}");
        }
        assert!(text.contains("host kernel: Linux "), "{text}");
        assert!(text.contains("transparent_hugepage/enabled: "), "{text}");
        assert!(text.contains("targets"), "{text}");
    }

    #[test]
    fn settings_fill_defaults_and_reject_bad_values() {
        assert!(!FaultsArgs::default().given());
        let full = Settings::from_args(&FaultsArgs::default()).unwrap();
        assert_eq!(full, Settings::FULL);
        let quick = FaultsArgs {
            quick: true,
            rounds: Some(5),
            ..Default::default()
        };
        assert!(quick.given());
        let q = Settings::from_args(&quick).unwrap();
        assert_eq!(q.rounds, 5);
        assert_eq!(q.pages, Settings::QUICK.pages);
        for bad in [
            FaultsArgs {
                pages: Some(0),
                ..Default::default()
            },
            FaultsArgs {
                rounds: Some(0),
                ..Default::default()
            },
            FaultsArgs {
                fork_size: Some(4097),
                ..Default::default()
            },
            FaultsArgs {
                loads: Some(0),
                ..Default::default()
            },
            FaultsArgs {
                pages: Some(u64::MAX),
                ..Default::default()
            },
            FaultsArgs {
                ram: Some(1 << 30),
                ..Default::default()
            },
        ] {
            assert!(Settings::from_args(&bad).is_err(), "{bad:?}");
        }
        let e = Settings::from_args(&FaultsArgs {
            ram: Some(1 << 30),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("--ram 1G is too small"), "{e}");
    }

    #[test]
    fn medians_and_helpers() {
        let s = Stat::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Stat::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert!(Stat::of(&[]).is_none());
        assert_eq!(
            proc_value("VmRSS:\t  1234 kB\nVmPTE: 8 kB\n", "VmPTE"),
            Some(8)
        );
        assert_eq!(proc_value("VmRSSx: 1\n", "VmRSS"), None);
        assert_eq!(human_ns(12.345), "12.35 ns");
        assert_eq!(human_ns(25_000_000.0), "25.00 ms");
        for j in 0..10_000 {
            let o = load_offset(j);
            assert!(o.is_multiple_of(8) && o + 8 <= PAGE);
        }
    }

    #[test]
    fn host_map_touches_and_reads_back() {
        let m = HostMap::new(4 * PAGE).unwrap();
        m.touch(PAGE as usize, 7);
        m.write_u64(8, 42);
        assert_eq!(m.read_u64(8), 42);
        assert_eq!(m.read_u64(4 * PAGE), 0);
        assert_eq!(m.read_u64(3), 0);
        assert_eq!(m.read_u64(0) & 0xff, 7);
    }
}
