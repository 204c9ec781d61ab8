//! `kmm boot`: boots a machine of the given shape, prints its boot log (what
//! `dmesg` would show), the `struct page` overhead, then each `--cat` file.

use crate::size::{format_size, Size};
use crate::Error;
use clap::Args;
use kmm::mm_types::STRUCT_PAGE_SIZE;
use kmm::Arch;
use kmm_sim::{Machine, MachineConfig};
use std::fmt;
use std::io::Write;
use std::str::FromStr;

/// An architecture profile named on the command line (`x86`, `x86_64`).
#[derive(Clone, Copy, Debug)]
pub struct ArchArg(pub &'static Arch);

impl FromStr for ArchArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Arch::by_name(s)
            .map(ArchArg)
            .ok_or_else(|| format!("unknown profile '{s}' (kmm has x86 and x86_64)"))
    }
}

impl fmt::Display for ArchArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name)
    }
}

/// Parses a count of CPUs or nodes. The range is the machine's to check.
fn parse_count(s: &str) -> Result<usize, String> {
    let t = s.trim();
    t.parse().map_err(|_| {
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            format!("'{s}' is far too large")
        } else {
            format!("'{s}' is not a count: expected a number such as 1, 2 or 8")
        }
    })
}

/// The shape of the machine to boot; every default is the tour's machine,
/// `kmm_sim::MachineConfig::default()`. Shared by `kmm boot` and `kmm slabtop`.
#[derive(Args, Debug)]
pub struct MachineArgs {
    /// Architecture profile: x86 (32-bit, with HighMem) or x86_64.
    #[arg(long, value_name = "x86|x86_64", default_value_t = ArchArg(MachineConfig::default().arch))]
    pub arch: ArchArg,
    /// RAM size, e.g. 64M, 2G, 64GiB.
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true, default_value_t = Size(MachineConfig::default().ram))]
    pub ram: Size,
    /// Page size: 4K, 8K, 16K or 64K.
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true, default_value_t = Size(MachineConfig::default().page_size))]
    pub page_size: Size,
    /// Number of CPUs (1-64).
    #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = parse_count, default_value_t = MachineConfig::default().cpus)]
    pub cpus: usize,
    /// Number of NUMA nodes (1-8); RAM is split evenly among them.
    #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = parse_count, default_value_t = MachineConfig::default().nodes)]
    pub nodes: usize,
}

impl MachineArgs {
    /// The machine these arguments describe.
    pub fn config(&self) -> MachineConfig {
        MachineConfig {
            arch: self.arch.0,
            ram: self.ram.0,
            page_size: self.page_size.0,
            cpus: self.cpus,
            nodes: self.nodes,
        }
    }
}

/// `kmm boot`: the machine to boot and the files to print.
#[derive(Args, Debug)]
pub struct BootArgs {
    /// The machine.
    #[command(flatten)]
    pub machine: MachineArgs,
    /// After booting, print this /proc file (repeatable): /proc/buddyinfo,
    /// /proc/zoneinfo, /proc/meminfo, /proc/slabinfo, /proc/vmallocinfo or
    /// /proc/vmstat.
    #[arg(long, value_name = "PATH")]
    pub cat: Vec<String>,
}

impl BootArgs {
    /// The machine these arguments describe.
    pub fn config(&self) -> MachineConfig {
        self.machine.config()
    }
}

/// The seeds' overhead arithmetic for this machine: one `struct page` per
/// page of RAM, as a line for the reader, plus a second line when `mem_map`
/// also covers holes in the physical address space.
pub fn struct_page_overhead(m: &Machine) -> Vec<String> {
    let k = m.kmm();
    let ram = m.config().ram;
    let page_size = k.page_size();
    let pages = ram / page_size;
    let bytes = pages * STRUCT_PAGE_SIZE as u64;
    let mut lines = vec![format!(
        "struct page overhead: {} of RAM / {} pages = {} pages × {} bytes = {}K ({:.2}% of RAM)",
        format_size(ram),
        format_size(page_size),
        pages,
        STRUCT_PAGE_SIZE,
        bytes >> 10,
        bytes as f64 * 100.0 / ram as f64
    )];
    if k.max_pfn() > pages {
        let map = k.boot_summary().mem_map_bytes;
        lines.push(format!(
            "  (mem_map has one for every frame below max_pfn, holes in the physical map included: {} × {} bytes = {}K)",
            k.max_pfn(),
            STRUCT_PAGE_SIZE,
            map >> 10
        ));
    }
    lines
}

/// Runs `kmm boot`. Nothing is printed unless the machine boots and every
/// requested file can be read.
pub fn run(args: &BootArgs, out: &mut dyn Write) -> Result<(), Error> {
    let m = Machine::boot(args.config())?;
    let log = m.take_log();
    let files = args
        .cat
        .iter()
        .map(|path| kmm_sim::procfs::read(&m, path).map(|text| (path, text)))
        .collect::<Result<Vec<_>, String>>()?;
    for line in log {
        writeln!(out, "{line}")?;
    }
    for line in struct_page_overhead(&m) {
        writeln!(out, "{line}")?;
    }
    for (path, text) in files {
        writeln!(out, "\n$ cat {path}")?;
        out.write_all(text.as_bytes())?;
    }
    Ok(())
}
