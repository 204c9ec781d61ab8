//! `kmm run FILE.kmm` and `kmm shell`: boot a machine and run a workload
//! written in the workload language ([`crate::script`]) on its processes,
//! from a file or line by line from standard input.
//!
//! `kmm run` stops at the first error: it prints `file.kmm:LINE:COL:
//! error: ...` with the line and a caret to stderr and exits with status 1.
//! `kmm shell` runs each line as it comes and goes on after errors; at a
//! terminal it shows a `kmm> ` prompt, and when its input is piped it exits
//! with status 1 if any line failed.

use crate::boot::MachineArgs;
use crate::script::{self, exec::Session, Stop};
use crate::Error;
use clap::Args;
use kmm_sim::process::System;
use kmm_sim::Machine;
use std::io::{self, IsTerminal, Read, Write};
use std::path::PathBuf;

/// `kmm run`: the machine and the workload file.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The machine.
    #[command(flatten)]
    pub machine: MachineArgs,
    /// The workload to run (a `.kmm` file; `-` reads standard input).
    #[arg(value_name = "FILE.kmm")]
    pub file: PathBuf,
}

/// `kmm shell`: the machine.
#[derive(Args, Debug)]
pub struct ShellArgs {
    /// The machine.
    #[command(flatten)]
    pub machine: MachineArgs,
}

/// Reads the workload: its name for messages, and its bytes.
fn read_workload(path: &PathBuf) -> Result<(String, Vec<u8>), Error> {
    if path.as_os_str() == "-" {
        let mut v = Vec::new();
        io::stdin()
            .lock()
            .read_to_end(&mut v)
            .map_err(|e| Error::Msg(format!("<stdin>: {e}")))?;
        return Ok(("<stdin>".into(), v));
    }
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::Msg(format!("{name}: {e}")))?;
    Ok((name, bytes))
}

/// Runs `kmm run`, printing diagnostics to `errors`.
pub fn run_with(args: &RunArgs, out: &mut dyn Write, errors: &mut dyn Write) -> Result<(), Error> {
    let (name, source) = read_workload(&args.file)?;
    let m = Machine::boot(args.machine.config())?;
    let sys = System::new(&m);
    let mut session = Session::new(&sys);
    match script::run_source(&mut session, &name, &source, out) {
        Ok(()) => Ok(()),
        Err(Stop::Io(e)) => Err(Error::Io(e)),
        Err(Stop::Script(d)) => {
            // What ran before the error comes first.
            out.flush()?;
            write!(errors, "{d}")?;
            Err(Error::Msg(format!("{name}: stopped at line {}", d.line)))
        }
    }
}

/// `kmm run [machine options] FILE.kmm`.
pub fn run(args: &RunArgs, out: &mut dyn Write) -> Result<(), Error> {
    run_with(args, out, &mut io::stderr())
}

/// `kmm shell [machine options]`: lines from standard input.
pub fn shell(args: &ShellArgs, out: &mut dyn Write) -> Result<(), Error> {
    let config = args.machine.config();
    let m = Machine::boot(config.clone())?;
    let sys = System::new(&m);
    let mut session = Session::new(&sys);
    let stdin = io::stdin();
    let interactive = stdin.is_terminal();
    let mut errors = io::stderr();
    if interactive {
        writeln!(
            errors,
            "kmm shell: {} machine, {} of RAM, {} pages, {} CPUs. 'help' lists the commands; Ctrl-D leaves.",
            config.arch.name,
            crate::size::format_size(config.ram),
            crate::size::format_size(config.page_size),
            config.cpus
        )?;
    }
    let failed = script::run_interactive(
        &mut session,
        &mut stdin.lock(),
        out,
        &mut errors,
        interactive,
    )?;
    if failed > 0 && !interactive {
        let s = if failed == 1 { "" } else { "s" };
        return Err(Error::Msg(format!("<stdin>: {failed} line{s} failed")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::exec;
    use kmm_sim::MachineConfig;

    /// A small machine, for speed.
    fn config() -> MachineConfig {
        MachineConfig {
            ram: 128 << 20,
            ..MachineConfig::default()
        }
    }

    /// Runs `text` as a file named `t.kmm`: the output, or the diagnostic.
    fn run_text(text: &str) -> Result<String, (String, String)> {
        let m = Machine::boot(config()).expect("boot");
        let sys = System::new(&m);
        let mut s = Session::new(&sys);
        let mut out = Vec::new();
        let r = script::run_source(&mut s, "t.kmm", text.as_bytes(), &mut out);
        let out = String::from_utf8_lossy(&out).into_owned();
        match r {
            Ok(()) => Ok(out),
            Err(Stop::Script(d)) => Err((out, d.to_string())),
            Err(Stop::Io(e)) => panic!("{e}"),
        }
    }

    fn ok(text: &str) -> String {
        match run_text(text) {
            Ok(out) => out,
            Err((out, d)) => panic!("{out}\n{d}"),
        }
    }

    fn fails(text: &str) -> (String, String) {
        match run_text(text) {
            Ok(out) => panic!("ran:\n{out}"),
            Err(e) => e,
        }
    }

    #[test]
    fn mmap_store_load_like_strace() {
        let out = ok("spawn t\n\
                      $p = mmap NULL 64K rw private,anonymous\n\
                      store $p \"hello\"\n\
                      load $p 5\n\
                      compare $p 5 \"hello\"\n\
                      munmap $p 64K\n");
        assert!(out.starts_with("spawn(\"t\") = 1\n"), "{out}");
        assert!(
            out.contains("[pid 1] mmap(NULL, 65536, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x"),
            "{out}"
        );
        assert!(
            out.contains("\"hello\" (5 bytes): 1 page fault (minor)\n"),
            "{out}"
        );
        assert!(out.contains("  68 65 6c 6c 6f"), "{out}");
        assert!(out.contains("with \"hello\": no page faults\n"), "{out}");
        assert!(out.contains("[pid 1] munmap(0x"), "{out}");
    }

    #[test]
    fn failed_calls_print_and_go_on_unless_expected_otherwise() {
        let out = ok("spawn t\nmunmap 0x1001 4K\nmunmap 0x1001 4K expect EINVAL\n");
        assert!(
            out.contains("[pid 1] munmap(0x1001, 4096) = -1 EINVAL (Invalid argument)\n"),
            "{out}"
        );
        let (_, d) = fails("spawn t\nmunmap 0x1001 4K expect ok\n");
        assert!(d.starts_with("t.kmm:2:18: error: expected success, but munmap failed with EINVAL (Invalid argument)\n"), "{d}");
        let (_, d) = fails("spawn t\nmunmap 0x1000 4K expect ENOMEM\n");
        assert!(d.contains("expected ENOMEM, but munmap succeeded"), "{d}");
    }

    #[test]
    fn a_segfault_kills_the_process_and_the_script_goes_on() {
        let out = ok("spawn victim\n\
                      $p = mmap NULL 4K r private,anonymous\n\
                      store $p 1 expect SIGSEGV\n\
                      spawn next\n\
                      echo still here\n");
        assert!(out.contains("kernel: victim[1]: segfault at "), "{out}");
        assert!(out.contains("[pid 1] +++ killed by SIGSEGV +++\n"), "{out}");
        assert!(out.ends_with("still here\n"), "{out}");
        let (_, d) = fails("spawn v\n$p = mmap NULL 4K r private,anonymous\nstore $p 1\nfork\n");
        assert!(d.starts_with("t.kmm:4:1: error: no current process"), "{d}");
    }

    #[test]
    fn fork_and_switch() {
        let out = ok("spawn parent\n\
                      $p = mmap NULL 4K rw private,anonymous\n\
                      store $p \"A\"\n\
                      $child = fork\n\
                      switch $child\n\
                      compare $p 1 \"A\"\n\
                      store $p \"B\"\n\
                      exit 3\n\
                      switch 1\n\
                      compare $p 1 \"A\"\n\
                      ps\n");
        assert!(out.contains("[pid 1] fork() = 2\n"), "{out}");
        assert!(out.contains("[pid 2] exit_group(3) = ?\n"), "{out}");
        assert!(out.contains("[pid 2] +++ exited with 3 +++\n"), "{out}");
        assert!(out.ends_with("  PID COMM\n*   1 parent\n"), "{out}");
        let (_, d) = fails("spawn a\nswitch 7\n");
        assert!(
            d.contains("2:8: error: no process 7 (live processes: 1)"),
            "{d}"
        );
    }

    #[test]
    fn brk_sbrk_and_status() {
        let out = ok("spawn t\n\
                      exec /bin/true\n\
                      $heap = sbrk 0\n\
                      $old = sbrk 8K\n\
                      cat /proc/self/status\n\
                      store $old u64:0x1122334455667788\n\
                      $v = load $old 8\n\
                      echo $v\n\
                      brk $heap\n");
        assert!(out.contains("[pid 1] brk(NULL) = 0x"), "{out}");
        assert!(
            out.contains("$ cat /proc/self/status\nName:\ttrue\n"),
            "{out}"
        );
        assert!(out.contains("0x1122334455667788\n"), "{out}");
    }

    #[test]
    fn variables_and_values() {
        let out = ok("$a = 4K\n$b = $a*2+0x10\necho $a $b $page_size\n");
        assert_eq!(out, "$a = 4096\n$b = 0x2010\n4096 0x2010 4096\n");
        let (_, d) = fails("echo $nope\n");
        assert!(d.starts_with("t.kmm:1:6: error: $nope is not set\n"), "{d}");
    }

    #[test]
    fn help_lists_every_command() {
        let out = ok("help\n");
        for c in script::parse::COMMANDS {
            assert!(
                out.contains(&format!("\n  {} ", c.name)),
                "{}:\n{out}",
                c.name
            );
        }
        assert!(out.contains("OUTCOME"), "{out}");
    }

    #[test]
    fn errors_stop_the_run_with_file_line_and_column() {
        let (out, d) = fails("echo one\n\n# comment\n  mmap NULL 4K rw privat\necho two\n");
        assert_eq!(out, "one\n");
        assert_eq!(
            d,
            concat!(
                "t.kmm:4:19: error: unknown mmap flag 'privat' (known: shared, private, fixed, anonymous, growsdown, locked, noreserve, populate, stack, fixed_noreplace)\n",
                "   4 |   mmap NULL 4K rw privat\n",
                "     |                   ^~~~~~\n"
            )
        );
    }

    #[test]
    fn cat_reads_machine_and_process_files() {
        let out = ok("cat /proc/meminfo\nspawn t\ncat /proc/$pid/maps\ntlb\n");
        assert!(out.contains("MemTotal:"), "{out}");
        let (_, d) = fails("cat /proc/self/maps\n");
        assert!(d.contains("no current process"), "{d}");
        let (_, d) = fails("cat /proc/nonesuch\n");
        assert!(
            d.contains("1:5: error: /proc/nonesuch: no such file"),
            "{d}"
        );
    }

    #[test]
    fn the_shell_goes_on_after_errors() {
        let m = Machine::boot(config()).expect("boot");
        let sys = System::new(&m);
        let mut s = Session::new(&sys);
        let mut input: &[u8] = b"spawn a\nfrobnicate\nfork\n";
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let failed =
            script::run_interactive(&mut s, &mut input, &mut out, &mut err, false).unwrap();
        assert_eq!(failed, 1);
        let (out, err) = (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        );
        assert!(out.contains("[pid 1] fork() = 2"), "{out}");
        assert!(
            err.starts_with("<stdin>:2:1: error: unknown command 'frobnicate'"),
            "{err}"
        );
        assert!(!err.contains("kmm> "));
    }

    /// Every example in `examples/` runs cleanly.
    #[test]
    fn every_example_runs() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("examples/")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "kmm"))
            .collect();
        files.sort();
        assert!(files.len() >= 6, "{files:?}");
        for path in files {
            let source = std::fs::read(&path).unwrap();
            assert!(
                source.starts_with(b"#"),
                "{}: starts with a comment block",
                path.display()
            );
            let m = Machine::boot(MachineConfig::default()).expect("boot");
            let sys = System::new(&m);
            let mut s = Session::new(&sys);
            let mut out = Vec::new();
            let name = path.display().to_string();
            if let Err(e) = script::run_source(&mut s, &name, &source, &mut out) {
                let msg = match e {
                    Stop::Script(d) => d.to_string(),
                    Stop::Io(e) => e.to_string(),
                };
                panic!("{}\n{msg}", String::from_utf8_lossy(&out));
            }
        }
    }

    /// Whatever the input, a line is run or refused; nothing panics.
    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn token() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(vec![
                    "spawn",
                    "exec",
                    "fork",
                    "switch",
                    "exit",
                    "cpu",
                    "open",
                    "close",
                    "mmap",
                    "munmap",
                    "mprotect",
                    "mremap",
                    "brk",
                    "sbrk",
                    "madvise",
                    "mlock",
                    "munlock",
                    "store",
                    "fill",
                    "load",
                    "copy",
                    "compare",
                    "fetch",
                    "cat",
                    "tlb",
                    "ps",
                    "echo",
                    "help",
                    "$p",
                    "$p=",
                    "=",
                    "NULL",
                    "0",
                    "1",
                    "4K",
                    "64K",
                    "1G",
                    "-1",
                    "0x1000",
                    "$p+4K",
                    "rw",
                    "r",
                    "rwx",
                    "none",
                    "private,anonymous",
                    "shared,anonymous",
                    "fixed",
                    "populate",
                    "growsdown",
                    "maymove",
                    "dontneed",
                    "expect",
                    "ENOMEM",
                    "SIGSEGV",
                    "ok",
                    "\"ab\"",
                    "u64:-1",
                    "/proc/self/maps",
                    "/proc/self/smaps",
                    "/proc/meminfo",
                    "#",
                    "(",
                    ")",
                    "*",
                    "u8:",
                    "\"",
                    "\\x",
                ])
                .prop_map(str::to_string),
                "[ -~]{0,6}",
                any::<u64>().prop_map(|n| format!("{n:#x}")),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
            #[test]
            fn random_lines_never_panic(
                lines in prop::collection::vec(prop::collection::vec(token(), 0..7), 1..12),
                junk in "\\PC{0,40}",
            ) {
                let m = Machine::boot(config()).expect("boot");
                let sys = System::new(&m);
                let mut s = Session::new(&sys);
                let mut out = Vec::new();
                let _ = s.run_line("spawn fuzz", &mut out);
                let _ = s.run_line("$p = mmap NULL 64K rw private,anonymous", &mut out);
                for l in lines {
                    match s.run_line(&l.join(" "), &mut out) {
                        Ok(()) | Err(exec::Error::Line(_)) => {}
                        Err(exec::Error::Io(e)) => panic!("{e}"),
                    }
                }
                let _ = s.run_line(&junk, &mut out);
            }

            #[test]
            fn random_text_never_panics_the_parser(text in "\\PC{0,80}") {
                let _ = script::parse::parse_line(&text);
            }
        }
    }
}
