//! `kmm`: boot a simulated machine and watch the Linux memory manager work.
//!
//! This file holds the argument parsing, the dispatch to the commands and
//! the error printing; each command lives in its own module:
//!
//! | command               | module       |
//! |-----------------------|--------------|
//! | `kmm` / `kmm tour`    | [`tour`]     |
//! | `kmm boot ...`        | [`boot`]     |
//! | `kmm bench pages`     | [`bench`]    |
//!
//! Every failure ends as one `kmm: <what was wrong>` line on stderr and exit
//! status 1; a closed stdout (`kmm | head`) ends the run quietly.

mod bench;
mod boot;
mod size;
mod tour;

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
    /// Run a benchmark and print ns per operation and ratios.
    Bench {
        /// Which benchmark: `pages` (the page allocator).
        what: String,
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
        Some(Command::Bench { what }) => {
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
            "$ cat /proc/vmstat",
            "buddy lists as after boot: yes",
        ] {
            assert!(text.contains(expected), "missing {expected:?}:\n{text}");
        }
    }
}
