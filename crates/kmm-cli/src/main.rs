//! `kmm`: boot a simulated machine and watch the Linux memory manager work.
//!
//! This file holds the argument parsing, the dispatch to the commands and
//! the error printing; each command lives in its own module:
//!
//! | command               | module       |
//! |-----------------------|--------------|
//! | `kmm` / `kmm tour`    | [`tour`]     |
//! | `kmm boot ...`        | [`boot`]     |
//! | `kmm slabtop ...`     | [`slabtop`] (after a [`workload`]) |
//! | `kmm bench pages`, `kmm bench slab`, `kmm bench vm`, `kmm bench faults` | [`bench`] |
//! | `kmm run FILE`, `kmm shell` | [`run`] |
//!
//! Every failure ends as one `kmm: <what was wrong>` line on stderr and exit
//! status 1; a closed stdout (`kmm | head`) ends the run quietly.

mod bench;
mod boot;
mod run;
mod script;
mod size;
mod slabtop;
mod tour;
mod workload;

use clap::{Parser, Subcommand};
use std::fmt;
use std::io::{self, BufWriter, Write};
use std::process::ExitCode;

/// kmm: the Linux kernel memory manager, re-implemented in Rust, on a
/// simulated machine. With no command, runs the guided tour.
#[derive(Parser, Debug)]
#[command(name = "kmm", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
enum Command {
    /// Run the guided tour of the memory manager (also what `kmm` alone does).
    Tour,
    /// Boot a machine, print its boot log, then each file given with --cat.
    Boot(boot::BootArgs),
    /// Boot a machine, run a workload, then list the slab caches like `slabtop -o`.
    Slabtop(slabtop::SlabtopArgs),
    /// Boot a machine and run a workload file (`.kmm`) on its processes.
    Run(run::RunArgs),
    /// Boot a machine and run workload commands from standard input.
    Shell(run::ShellArgs),
    /// Run a benchmark and print ns per operation and ratios.
    Bench {
        /// Which benchmark: `pages` (the page allocator), `slab` (slab caches and
        /// kmalloc), `vm` (loads through the software MMU: TLB hits, page walks)
        /// or `faults` (page faults, fork and loads of a process, against the
        /// host's Linux kernel).
        what: String,
        /// The options of `kmm bench faults`.
        #[command(flatten, next_help_heading = "Options of `kmm bench faults`")]
        faults: bench::faults::FaultsArgs,
    },
}

/// Why a command failed.
#[derive(Debug)]
pub enum Error {
    /// Writing the output failed (a closed pipe is not reported).
    Io(io::Error),
    /// Anything else, as the message to print after `kmm: `.
    Msg(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "cannot write the output: {e}"),
            Error::Msg(m) => f.write_str(m),
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<String> for Error {
    fn from(m: String) -> Self {
        Error::Msg(m)
    }
}

impl From<kmm::KmmError> for Error {
    fn from(e: kmm::KmmError) -> Self {
        Error::Msg(e.to_string())
    }
}

impl From<kmm_sim::SimError> for Error {
    fn from(e: kmm_sim::SimError) -> Self {
        Error::Msg(e.to_string())
    }
}

impl From<kmm_sim::cpu::CpuError> for Error {
    fn from(e: kmm_sim::cpu::CpuError) -> Self {
        Error::Msg(e.to_string())
    }
}

/// Prints clap's help and version as they are, and its errors as
/// `kmm: <error>` with exit status 1.
fn argument_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        _ => {
            let text = e.render().to_string();
            let text = text.strip_prefix("error: ").unwrap_or(&text);
            eprint!("kmm: {text}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return argument_error(e),
    };
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let result = match &cli.command {
        None | Some(Command::Tour) => tour::run(&mut out),
        Some(Command::Boot(args)) => boot::run(args, &mut out),
        Some(Command::Slabtop(args)) => slabtop::run(args, &mut out),
        Some(Command::Run(args)) => run::run(args, &mut out),
        Some(Command::Shell(args)) => run::shell(args, &mut out),
        Some(Command::Bench { what, faults }) if what == "faults" => {
            bench::faults::run(faults, &mut out)
        }
        Some(Command::Bench { what, faults }) if faults.given() => Err(Error::Msg(format!(
            "--pages, --rounds, --fork-size, --loads, --ram and --quick are options of `kmm bench faults`, not of `kmm bench {what}`"
        ))),
        Some(Command::Bench { what, .. }) => {
            // The benchmark prints for itself; nothing is buffered here.
            let _ = out.flush();
            bench::run(what).map_err(Error::Msg)
        }
    };
    let result = result.and_then(|()| out.flush().map_err(Error::Io));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            // Show what was printed before the failure, then the failure.
            let _ = out.flush();
            drop(out);
            eprintln!("kmm: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kmm").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_arguments_is_the_tour() {
        assert!(parse(&[]).unwrap().command.is_none());
    }

    #[test]
    fn boot_takes_sizes_with_units() {
        let cli = parse(&["boot", "--arch", "x86", "--ram", "2G", "--page-size", "8K"]).unwrap();
        let Some(Command::Boot(args)) = cli.command else {
            panic!("not boot");
        };
        let c = args.config();
        assert_eq!(c.arch.name, "x86");
        assert_eq!(c.ram, 2 << 30);
        assert_eq!(c.page_size, 8192);
    }

    #[test]
    fn boot_defaults_are_the_tour_machine() {
        let Some(Command::Boot(args)) = parse(&["boot"]).unwrap().command else {
            panic!("not boot");
        };
        let (c, d) = (args.config(), kmm_sim::MachineConfig::default());
        assert_eq!(
            (c.arch.name, c.ram, c.page_size, c.cpus, c.nodes),
            (d.arch.name, d.ram, d.page_size, d.cpus, d.nodes)
        );
    }

    #[test]
    fn bad_values_name_the_option() {
        for (args, option, what) in [
            (&["boot", "--ram", "1.5G"][..], "--ram", "fractions"),
            (&["boot", "--ram", "-1G"], "--ram", "negative"),
            (
                &["boot", "--page-size", "4Q"],
                "--page-size",
                "unknown unit",
            ),
            (&["boot", "--arch", "arm"], "--arch", "unknown profile"),
            (&["boot", "--cpus", "two"], "--cpus", "not a count"),
        ] {
            let msg = parse(args).unwrap_err().render().to_string();
            assert!(
                msg.contains(option) && msg.contains(what),
                "{args:?}: {msg}"
            );
        }
    }

    #[test]
    fn machines_that_cannot_boot_are_errors() {
        for args in [
            &["boot", "--ram", "1M"][..],
            &["boot", "--page-size", "2M"],
            &["boot", "--cpus", "0"],
            &["boot", "--nodes", "9"],
            &["boot", "--cat", "/proc/nonexistent"],
        ] {
            let Some(Command::Boot(a)) = parse(args).unwrap().command else {
                panic!("not boot");
            };
            let mut out = Vec::new();
            let err = boot::run(&a, &mut out).unwrap_err();
            assert!(matches!(err, Error::Msg(_)), "{args:?}");
            assert!(out.is_empty(), "{args:?} printed before failing");
        }
    }

    #[test]
    fn boot_shows_the_seeds_struct_page_arithmetic() {
        let Some(Command::Boot(a)) = parse(&[
            "boot",
            "--ram",
            "4G",
            "--page-size",
            "8K",
            "--cat",
            "/proc/buddyinfo",
        ])
        .unwrap()
        .command
        else {
            panic!("not boot");
        };
        let mut out = Vec::new();
        boot::run(&a, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("mem_map: "), "{text}");
        assert!(
            text.contains("524288 pages × 40 bytes = 20480K (0.49% of RAM)"),
            "{text}"
        );
        assert!(text.contains("$ cat /proc/buddyinfo\nNode 0, zone      DMA"));
    }

    /// The tour's own checks ("same page again: yes", ...) all hold, and
    /// every report it promises is printed.
    #[test]
    fn the_tour_runs_and_its_claims_hold() {
        let mut out = Vec::new();
        tour::run(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains(": NO"), "a tour check failed:\n{text}");
        for expected in [
            "back to the state after boot: yes",
            "zone HighMem",
            "page_address NULL",
            "same page again: yes",
            "the cold page from the tail: yes",
            "page allocation failure: order:0",
            "BUG: Bad page state",
            "freed with an order it was not allocated with",
            "BUG: sleeping function called from invalid context",
            "page allocation failure: order:3",
            "reserved by alloc_bootmem*",
            "for_each_online_cpu() sum: packets_received 3000",
            // kmalloc
            "ksize     8 (   7 unused)   from kmalloc-8",
            "from kmalloc-96",
            "from kmalloc-192",
            "from kmalloc-4k",
            "page allocator: an order-2 block (PG_slab clear)",
            "the smallest object: 8 bytes",
            "< 2 * n for every n from 9 to 4194304: yes",
            "KMALLOC_MAX_SIZE = 4M",
            "> kmalloc(KMALLOC_MAX_SIZE + 1) = Err(",
            "size 4194305 > KMALLOC_MAX_SIZE 4194304",
            "= 0x10: ZERO_SIZE_PTR: yes",
            "from dma-kmalloc-128, in zone DMA: yes",
            "> kmalloc(100, GFP_KERNEL|__GFP_HIGHMEM) = Err(",
            "Unexpected gfp: 0xd2",
            "> kfree(NULL) = Ok",
            "BUG kmalloc-96 (Not tainted): Invalid object pointer",
            "was not returned by kmalloc",
            // testslab
            "\"constructor is running....\" x 128",
            "kmem_cache_info: ctor_calls = 256",
            "student id is: -1, student name is: (null)",
            "student id is: 1, student name is: \"wyb1\"",
            "hold the constructor's state (id -1, name NULL): yes",
            "not constructed again: yes",
            "\ntestslab               0      0",
            "Objects remaining in testslab on __kmem_cache_shutdown()",
            "kmem_cache_destroy testslab: Slab cache still has objects",
            "went with kmem_cache_destroy(): yes",
            "refused while an object was in use: yes",
            // scullc
            "the same bytes: yes",
            "\nscullc                25     25   4032    1    1",
            "kmem_cache_destroy(scullc_cache) = Ok",
            // colouring
            "wrapping round after the last colour: yes",
            // debugging
            "BUG dbgtest (Not tainted): Redzone overwritten",
            "BUG dbgtest (Not tainted): Poison overwritten",
            "BUG dbgtest (Not tainted): Object already free",
            "First byte 0x0 instead of 0xcc",
            "the overrun yes, the use after free yes, the double free yes",
            // mempool
            "the page allocator is empty: yes",
            "mempool_create(MY_POOL_MINIMUM = 4, mempool_alloc_slab, mempool_free_slab, cache): 4 objects in reserve",
            "then 4 from the reserve",
            "> mempool_alloc(pool, GFP_ATOMIC) = Err(",
            "the reserve is empty: yes",
            "mempool_alloc(pool, GFP_KERNEL) sleeps: yes",
            "the element just freed: yes",
            "curr_nr 4 of min_nr 4",
            "kmem_cache_destroy(cache) = Ok",
            "free pages as before the pool (the kmalloc caches shrunk too): yes",
            // totals
            "SReclaimable:        384 kB",
            "no large kmalloc is live): yes",
            "  OBJS ACTIVE  USE OBJ SIZE  SLABS OBJ/SLAB CACHE SIZE NAME",
            "every slab page back with the page allocator: yes",
            "$ cat /proc/vmstat",
            "Slab:                  0 kB",
            "buddy lists as after boot: yes",
        ] {
            assert!(text.contains(expected), "missing {expected:?}:\n{text}");
        }
    }

    fn slabtop_args(args: &[&str]) -> slabtop::SlabtopArgs {
        let cli = parse(&[&["slabtop"], args].concat()).unwrap();
        let Some(Command::Slabtop(a)) = cli.command else {
            panic!("not slabtop");
        };
        a
    }

    fn slabtop_text(args: &[&str]) -> String {
        let mut out = Vec::new();
        slabtop::run(&slabtop_args(args), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// The rows of a listing: the numbers and the name.
    fn slabtop_rows(text: &str) -> Vec<(Vec<f64>, String)> {
        text.lines()
            .skip_while(|l| !l.starts_with("  OBJS ACTIVE"))
            .skip(1)
            .map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let nums = w[..7]
                    .iter()
                    .map(|x| x.trim_end_matches(['%', 'K']).parse().unwrap())
                    .collect();
                (nums, w[7].to_string())
            })
            .collect()
    }

    #[test]
    fn slabtop_lists_the_workload_like_slabtop() {
        let text = slabtop_text(&[]);
        for expected in [
            "workload scull",
            " Active / Total Objects (% used)    : ",
            " Active / Total Slabs (% used)      : ",
            " Active / Total Caches (% used)     : ",
            " Active / Total Size (% used)       : ",
            " Minimum / Average / Maximum Object : 0.01K / ",
            "\n\n  OBJS ACTIVE  USE OBJ SIZE  SLABS OBJ/SLAB CACHE SIZE NAME\n",
            "   263    263 100%    3.94K    263        1      1052K scullc\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?}:\n{text}");
        }
        let rows = slabtop_rows(&text);
        let names: Vec<&str> = rows.iter().map(|(_, n)| n.as_str()).collect();
        for name in [
            "testslab",
            "scullc",
            "dentry",
            "kmalloc-8",
            "dma-kmalloc-8k",
        ] {
            assert!(names.contains(&name), "{name} missing:\n{text}");
        }
        // Sorted by objects, largest first; cache size = slabs x pages x 4K.
        assert!(rows.windows(2).all(|w| w[0].0[0] >= w[1].0[0]), "{text}");
        for (n, name) in &rows {
            assert!(n[1] <= n[0], "{name}: more active than total");
            assert_eq!(n[6] as u64 % 4, 0, "{name}: cache size");
            assert!(n[4] * n[5] >= n[0], "{name}: slabs x objects per slab");
        }
    }

    #[test]
    fn slabtop_sorts_by_every_key() {
        for (key, col) in [
            ("a", Some(1)),
            ("b", Some(5)),
            ("c", Some(6)),
            ("l", Some(4)),
            ("o", Some(0)),
            ("s", Some(3)),
            ("u", Some(2)),
            ("n", None),
            ("v", None),
            ("p", None),
        ] {
            let text = slabtop_text(&["--sort", key]);
            let rows = slabtop_rows(&text);
            assert_eq!(rows.len(), 29, "{key}: {text}");
            match col {
                Some(c) => assert!(
                    rows.windows(2).all(|w| w[0].0[c] >= w[1].0[c]),
                    "-s {key}:\n{text}"
                ),
                None if key == "n" => {
                    assert!(rows.windows(2).all(|w| w[0].1 <= w[1].1), "{text}")
                }
                None => {}
            }
        }
    }

    #[test]
    fn slabtop_without_a_workload_shows_the_boot_caches() {
        let text = slabtop_text(&["--workload", "none", "--ram", "64M", "--cpus", "1"]);
        let rows = slabtop_rows(&text);
        assert_eq!(
            rows.len(),
            26,
            "kmalloc-8..8k and dma-kmalloc-8..8k:\n{text}"
        );
        assert!(rows.iter().all(|(n, _)| n[0] == 0.0), "{text}");
        assert!(text.contains("Active / Total Caches (% used)     : 0 / 26 (0.0%)"));
    }

    #[test]
    fn slabtop_runs_on_other_machines() {
        for args in [
            &["--arch", "x86", "--ram", "64M"][..],
            &["--page-size", "64K", "--ram", "128M", "--cpus", "4"],
            &["--nodes", "2", "--ram", "256M"],
        ] {
            let text = slabtop_text(args);
            assert!(text.contains(" scullc\n"), "{args:?}:\n{text}");
        }
    }

    #[test]
    fn slabtop_refuses_bad_arguments() {
        for (args, what) in [
            (&["slabtop", "--sort", "x"][..], "'x' is not a sort key"),
            (&["slabtop", "-s", "ab"], "'ab' is not a sort key"),
            (&["slabtop", "-s", ""], "'' is not a sort key"),
            (&["slabtop", "--workload", "fio"], "invalid value 'fio'"),
            (&["slabtop", "--ram", "1.5G"], "fractions"),
        ] {
            let msg = parse(args).unwrap_err().render().to_string();
            assert!(msg.contains(what), "{args:?}: {msg}");
        }
        let mut out = Vec::new();
        let err = slabtop::run(&slabtop_args(&["--ram", "1M"]), &mut out).unwrap_err();
        assert!(matches!(err, Error::Msg(_)));
        assert!(out.is_empty());
    }

    #[test]
    fn boot_cats_every_proc_file_and_its_help_names_them() {
        let help = Cli::command()
            .find_subcommand_mut("boot")
            .unwrap()
            .render_long_help()
            .to_string();
        for path in kmm_sim::procfs::PROC_FILES {
            assert!(help.contains(path), "boot --help lacks {path}:\n{help}");
            let Some(Command::Boot(a)) = parse(&["boot", "--cat", path]).unwrap().command else {
                panic!("not boot");
            };
            let mut out = Vec::new();
            boot::run(&a, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains(&format!("$ cat {path}\n")), "{path}");
        }
        let Some(Command::Boot(a)) = parse(&["boot", "--cat", "/proc/slabinfo"]).unwrap().command
        else {
            panic!("not boot");
        };
        let mut out = Vec::new();
        boot::run(&a, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("slabinfo - version: 2.1\n"), "{text}");
        assert!(text.contains("\nkmalloc-96             0      0     96   42    1 :"));
    }
}
