//! Running the workload language: a [`Session`] holds the current process
//! and the variables, and runs one parsed line at a time on a
//! [`System`], printing what happened the way strace would.

use super::abi;
use super::parse::{self, Bits, Cmd, Data, Expect, Expr, Line, LineError, Span, Value, Word};
use crate::size::format_size;
use kmm::Errno;
use kmm_sim::process::{Pid, SysError, System};
use std::collections::HashMap;
use std::io::{self, Write};

/// Why a line did not run to its end.
#[derive(Debug)]
pub enum Error {
    /// The line is wrong, or did not do what it said to expect.
    Line(LineError),
    /// The output could not be written.
    Io(io::Error),
}

impl From<LineError> for Error {
    fn from(e: LineError) -> Self {
        Error::Line(e)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

fn line_error(span: Span, msg: impl Into<String>) -> Error {
    Error::Line(LineError {
        span,
        msg: msg.into(),
    })
}

/// The environment `exec` gives a program.
pub const ENVIRONMENT: [&str; 2] = ["HOME=/", "PATH=/usr/bin:/bin"];

/// The most bytes one `load` reads (and prints).
pub const MAX_LOAD: u64 = 16 << 20;

/// Bytes moved per system call by `fill` (with a pattern), `copy` and
/// `compare`.
const CHUNK: usize = 64 << 10;

/// What a call into the kernel did, for `expect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// It succeeded.
    Ok,
    /// It returned `-errno`.
    Failed(Errno),
    /// The process died of this signal.
    Killed(&'static str),
}

/// What a failed call into the kernel means for the script.
enum Failure {
    /// An error number: printed, and the script goes on.
    Errno(Errno),
    /// The process died.
    Killed(Pid, &'static str, u64),
}

/// The value `$x = ...` gets when the call failed: C's `-1`.
const MINUS_ONE: Value = Value {
    v: u64::MAX,
    hex: false,
};

fn hex(v: u64) -> Value {
    Value { v, hex: true }
}

fn dec(v: u64) -> Value {
    Value { v, hex: false }
}

/// An address as strace prints it: `NULL` or `0x...`.
fn addr_text(a: u64) -> String {
    if a == 0 {
        "NULL".into()
    } else {
        format!("{a:#x}")
    }
}

/// An offset as strace prints it: `0` or `0x...`.
fn offset_text(o: u64) -> String {
    if o == 0 {
        "0".into()
    } else {
        format!("{o:#x}")
    }
}

/// A length for people: `64K`, `1 byte`, `100 bytes`.
fn size_text(n: u64) -> String {
    if n >= 1024 && n.is_multiple_of(1024) {
        format_size(n)
    } else if n == 1 {
        "1 byte".into()
    } else {
        format!("{n} bytes")
    }
}

/// Bytes as strace quotes them: at most 32 shown, then `...`.
fn quote(bytes: &[u8]) -> String {
    let mut s = String::from("\"");
    for &b in bytes.iter().take(32) {
        match b {
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'\r' => s.push_str("\\r"),
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s.push('"');
    if bytes.len() > 32 {
        s.push_str("...");
    }
    s
}

/// `hexdump -C`, with the addresses of the process: 16 bytes a line,
/// repeated lines shown once and then `*`, and the end address last.
fn hexdump(addr: u64, bytes: &[u8], out: &mut dyn Write) -> io::Result<()> {
    let mut prev: Option<&[u8]> = None;
    let mut starred = false;
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let at = addr.wrapping_add(16 * i as u64);
        if chunk.len() == 16 && prev == Some(chunk) {
            if !starred {
                writeln!(out, "*")?;
                starred = true;
            }
            continue;
        }
        prev = Some(chunk);
        starred = false;
        let mut hex = String::new();
        for j in 0..16 {
            match chunk.get(j) {
                Some(b) => hex.push_str(&format!("{b:02x} ")),
                None => hex.push_str("   "),
            }
            if j == 7 {
                hex.push(' ');
            }
        }
        let ascii: String = chunk
            .iter()
            .map(|&b| {
                if (0x20..0x7f).contains(&b) {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        writeln!(out, "{at:08x}  {hex} |{ascii}|")?;
    }
    writeln!(out, "{:08x}", addr.wrapping_add(bytes.len() as u64))
}

/// A fault count for people: `no page faults`, `1 page fault (minor)`,
/// `17 page faults (1 major)`.
fn faults_text(minor: u64, major: u64) -> String {
    match (minor + major, major) {
        (0, _) => "no page faults".into(),
        (1, 0) => "1 page fault (minor)".into(),
        (1, _) => "1 page fault (major)".into(),
        (n, 0) => format!("{n} page faults (minor)"),
        (n, m) => format!("{n} page faults ({m} major)"),
    }
}

/// A session: the processes' system, the current process, the variables.
pub struct Session<'s, 'm> {
    sys: &'s System<'m>,
    current: Option<Pid>,
    vars: HashMap<String, Value>,
    page_size: u64,
}

impl<'s, 'm> Session<'s, 'm> {
    /// A session on `sys`, with no current process. The kernel log so far
    /// (the boot messages) is dropped; later lines are printed as they come.
    pub fn new(sys: &'s System<'m>) -> Session<'s, 'm> {
        let _ = sys.machine().take_log();
        Session {
            sys,
            current: None,
            vars: HashMap::new(),
            page_size: sys.machine().kmm().page_size(),
        }
    }

    /// A variable's value (`$pid` and `$page_size` included).
    pub fn var(&self, name: &str) -> Option<Value> {
        match name {
            "pid" => self.current.map(|p| dec(p.into())),
            "page_size" => Some(dec(self.page_size)),
            _ => self.vars.get(name).copied(),
        }
    }

    /// Parses and runs one line, printing what happened to `out`.
    pub fn run_line(&mut self, text: &str, out: &mut dyn Write) -> Result<(), Error> {
        let Some(line) = parse::parse_line(text)? else {
            return Ok(());
        };
        let r = self.execute(&line, out);
        self.print_log(out)?;
        r
    }

    // ---------------------------------------------------------- helpers

    fn u64(&self, e: &Expr) -> Result<u64, LineError> {
        e.u64(&|n| self.var(n))
    }

    fn int(&self, e: &Expr, lo: i128, hi: i128, what: &str) -> Result<i128, LineError> {
        e.in_range(&|n| self.var(n), lo, hi, what)
    }

    fn bits(&self, b: &Bits) -> Result<u32, LineError> {
        b.value(&|n| self.var(n))
    }

    fn text(&self, w: &Word) -> Result<String, LineError> {
        w.text(&|n| self.var(n))
    }

    fn data(&self, data: &[Data]) -> Result<Vec<u8>, LineError> {
        let mut v = Vec::new();
        for d in data {
            d.bytes(&|n| self.var(n), &mut v)?;
        }
        Ok(v)
    }

    /// Data as written, values evaluated: `"abc" 0x0a u64:42`.
    fn describe(&self, data: &[Data]) -> Result<String, LineError> {
        let vars = |n: &str| self.var(n);
        let mut parts = Vec::new();
        for d in data {
            parts.push(match d {
                Data::Bytes(b) => quote(b),
                Data::Byte(e) => format!("{:#04x}", e.eval(&vars)?),
                Data::Int(n, e) => {
                    let v = e.eval(&vars)?;
                    if e.hexish(&vars) && v >= 0 {
                        format!("u{}:{v:#x}", 8 * n)
                    } else {
                        format!("u{}:{v}", 8 * n)
                    }
                }
            });
        }
        Ok(parts.join(" "))
    }

    /// A pattern for `fill` and `compare`: at least one byte.
    fn pattern(&self, data: &[Data], span: Span) -> Result<Vec<u8>, Error> {
        let p = self.data(data)?;
        if p.is_empty() {
            return Err(line_error(span, "the pattern is empty"));
        }
        Ok(p)
    }

    fn fd(&self, e: &Expr) -> Result<i32, LineError> {
        Ok(self.int(e, i32::MIN.into(), i32::MAX.into(), "a file descriptor")? as i32)
    }

    /// The current process, or an error at `span`.
    fn pid(&self, span: Span) -> Result<Pid, Error> {
        self.current.ok_or_else(|| {
            line_error(
                span,
                "no current process: start one with 'spawn NAME' or pick one with 'switch PID'",
            )
        })
    }

    /// Prints the kernel log lines logged since the last time.
    fn print_log(&self, out: &mut dyn Write) -> io::Result<()> {
        for l in self.sys.machine().take_log() {
            writeln!(out, "kernel: {l}")?;
        }
        Ok(())
    }

    /// Sorts a failed call: an outcome the script may expect, or (no such
    /// process, a host or kernel failure) an error of the script.
    fn failure(&self, e: SysError, span: Span) -> Result<Failure, Error> {
        match e {
            SysError::Errno { errno, .. } => Ok(Failure::Errno(errno)),
            SysError::Killed { pid, signal, addr } => Ok(Failure::Killed(pid, signal, addr)),
            SysError::NoProcess(p) => Err(line_error(span, format!("no process {p}"))),
            SysError::Host(msg) => Err(line_error(span, msg)),
            SysError::Kmm(e) => Err(line_error(span, format!("the kernel failed: {e}"))),
        }
    }

    /// After a process died of `signal`: the kernel's line, strace's lines,
    /// and no current process if it was the current one.
    fn killed(
        &mut self,
        pid: Pid,
        signal: &str,
        addr: u64,
        out: &mut dyn Write,
    ) -> Result<(), Error> {
        self.print_log(out)?;
        writeln!(
            out,
            "[pid {pid}] --- {signal} {{si_signo={signal}, si_addr={addr:#x}}} ---"
        )?;
        writeln!(out, "[pid {pid}] +++ killed by {signal} +++")?;
        if self.current == Some(pid) {
            self.current = None;
        }
        Ok(())
    }

    /// Prints a system call and its result as strace does: `[pid P] call =
    /// result`, or `= -1 ERRNO (message)`.
    fn syscall<T>(
        &mut self,
        pid: Pid,
        call: &str,
        r: Result<T, SysError>,
        show: impl FnOnce(&T) -> (String, Value),
        span: Span,
        out: &mut dyn Write,
    ) -> Result<(Outcome, Value), Error> {
        match r {
            Ok(v) => {
                let (text, value) = show(&v);
                writeln!(out, "[pid {pid}] {call} = {text}")?;
                Ok((Outcome::Ok, value))
            }
            Err(e) => match self.failure(e, span)? {
                Failure::Errno(errno) => {
                    writeln!(
                        out,
                        "[pid {pid}] {call} = -1 {} ({})",
                        errno.name(),
                        errno.message()
                    )?;
                    Ok((Outcome::Failed(errno), MINUS_ONE))
                }
                Failure::Killed(p, signal, addr) => {
                    writeln!(out, "[pid {pid}] {call} = ?")?;
                    self.killed(p, signal, addr, out)?;
                    Ok((Outcome::Killed(signal), MINUS_ONE))
                }
            },
        }
    }

    /// The process's fault counters (`min_flt`, `maj_flt`), if it shows them.
    fn faults(&self, pid: Pid) -> Option<(u64, u64)> {
        let status = self.sys.proc_read(&format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Some((field("min_flt:")?, field("maj_flt:")?))
    }

    /// Runs a user-mode access `f` for the current process and prints
    /// `[pid P] desc: N page faults`, or what killed the process.
    fn access<T>(
        &mut self,
        pid: Pid,
        desc: &str,
        span: Span,
        out: &mut dyn Write,
        f: impl FnOnce(&System<'m>) -> Result<T, SysError>,
    ) -> Result<(Outcome, Option<T>), Error> {
        let before = self.faults(pid);
        let r = f(self.sys);
        match r {
            Ok(v) => {
                let faults = match (before, self.faults(pid)) {
                    (Some((a, b)), Some((c, d))) => {
                        format!(
                            ": {}",
                            faults_text(c.saturating_sub(a), d.saturating_sub(b))
                        )
                    }
                    _ => String::new(),
                };
                writeln!(out, "[pid {pid}] {desc}{faults}")?;
                Ok((Outcome::Ok, Some(v)))
            }
            Err(e) => match self.failure(e, span)? {
                Failure::Errno(errno) => {
                    writeln!(
                        out,
                        "[pid {pid}] {desc}: -1 {} ({})",
                        errno.name(),
                        errno.message()
                    )?;
                    Ok((Outcome::Failed(errno), None))
                }
                Failure::Killed(p, signal, addr) => {
                    writeln!(out, "[pid {pid}] {desc}")?;
                    self.killed(p, signal, addr, out)?;
                    Ok((Outcome::Killed(signal), None))
                }
            },
        }
    }

    /// `addr + len` must not wrap around.
    fn range(&self, addr: u64, len: u64, span: Span) -> Result<(), Error> {
        if addr.checked_add(len).is_none() {
            return Err(line_error(
                span,
                format!("{addr:#x} + {len:#x} wraps around the end of the address space"),
            ));
        }
        Ok(())
    }

    /// Checks the outcome against `expect`.
    fn check(&self, line: &Line, outcome: Outcome) -> Result<(), Error> {
        let Some((expect, span)) = &line.expect else {
            return Ok(());
        };
        let name = line.name;
        let got = match outcome {
            Outcome::Ok => format!("{name} succeeded"),
            Outcome::Failed(e) => format!("{name} failed with {} ({})", e.name(), e.message()),
            Outcome::Killed(s) => format!("the process was killed by {s}"),
        };
        let (ok, wanted) = match expect {
            Expect::Ok => (outcome == Outcome::Ok, "success".to_string()),
            Expect::Errno(e) => (outcome == Outcome::Failed(*e), e.name().to_string()),
            Expect::Signal(s) => (outcome == Outcome::Killed(s), s.to_string()),
        };
        if ok {
            Ok(())
        } else {
            Err(line_error(*span, format!("expected {wanted}, but {got}")))
        }
    }

    // --------------------------------------------------------- commands

    fn execute(&mut self, line: &Line, out: &mut dyn Write) -> Result<(), Error> {
        let span = line.span;
        if let (Some(_), Cmd::Load(_, len)) = (&line.bind, &line.cmd) {
            if !(1..=8).contains(&self.u64(len)?) {
                return Err(line_error(
                    len.span(),
                    "to bind a load to a variable, load 1 to 8 bytes",
                ));
            }
        }
        let (outcome, value) = match &line.cmd {
            Cmd::Value(e) => {
                let v = Value {
                    v: self.u64(e)?,
                    hex: e.hexish(&|n| self.var(n)),
                };
                if let Some((name, _)) = &line.bind {
                    if v.hex {
                        writeln!(out, "${name} = {:#x}", v.v)?;
                    } else {
                        writeln!(out, "${name} = {}", v.v)?;
                    }
                }
                (Outcome::Ok, Some(v))
            }
            Cmd::Switch(e) => {
                let p = self.int(e, 0, u32::MAX.into(), "a pid")? as Pid;
                let pids = self.sys.pids();
                if !pids.contains(&p) {
                    let live: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
                    let live = if live.is_empty() {
                        "none".to_string()
                    } else {
                        live.join(", ")
                    };
                    return Err(line_error(
                        e.span(),
                        format!("no process {p} (live processes: {live})"),
                    ));
                }
                self.current = Some(p);
                writeln!(out, "[pid {p}] now current")?;
                (Outcome::Ok, None)
            }
            Cmd::Cat(w) => {
                self.cat(w, span, out)?;
                (Outcome::Ok, None)
            }
            Cmd::Tlb => {
                writeln!(out, "$ tlb")?;
                let s = self.sys.tlb_stats();
                out.write_all(s.as_bytes())?;
                if !s.ends_with('\n') && !s.is_empty() {
                    writeln!(out)?;
                }
                (Outcome::Ok, None)
            }
            Cmd::Ps => {
                self.ps(out)?;
                (Outcome::Ok, None)
            }
            Cmd::Echo(words) => {
                let words = words
                    .iter()
                    .map(|w| self.text(w))
                    .collect::<Result<Vec<_>, _>>()?;
                writeln!(out, "{}", words.join(" "))?;
                (Outcome::Ok, None)
            }
            Cmd::Help => {
                writeln!(
                    out,
                    "Commands (of the current process, unless they say otherwise):"
                )?;
                for c in parse::COMMANDS {
                    let usage = format!("{} {}", c.name, c.args);
                    let usage = usage.trim_end();
                    if usage.len() > 38 {
                        writeln!(out, "  {usage}\n  {:<38} {}", "", c.what)?;
                    } else {
                        writeln!(out, "  {usage:<38} {}", c.what)?;
                    }
                }
                write!(out, "{}", super::REFERENCE)?;
                (Outcome::Ok, None)
            }
            Cmd::Spawn(w) => {
                let name = self.text(w)?;
                let call = format!("spawn({})", quote(name.as_bytes()));
                match self.sys.spawn(&name) {
                    Ok(p) => {
                        writeln!(out, "{call} = {p}")?;
                        self.current = Some(p);
                        (Outcome::Ok, Some(dec(p.into())))
                    }
                    Err(e) => match self.failure(e, span)? {
                        Failure::Errno(errno) => {
                            writeln!(out, "{call} = -1 {} ({})", errno.name(), errno.message())?;
                            (Outcome::Failed(errno), Some(MINUS_ONE))
                        }
                        Failure::Killed(p, signal, addr) => {
                            self.killed(p, signal, addr, out)?;
                            (Outcome::Killed(signal), Some(MINUS_ONE))
                        }
                    },
                }
            }
            cmd => {
                let pid = self.pid(span)?;
                let (o, v) = self.kernel(pid, cmd, span, out)?;
                (o, v)
            }
        };
        if let Some((name, _)) = &line.bind {
            self.vars.insert(name.clone(), value.unwrap_or(MINUS_ONE));
        }
        self.check(line, outcome)
    }

    /// The commands that call the kernel for the current process.
    fn kernel(
        &mut self,
        pid: Pid,
        cmd: &Cmd,
        span: Span,
        out: &mut dyn Write,
    ) -> Result<(Outcome, Option<Value>), Error> {
        let sys = self.sys;
        let zero = |_: &()| ("0".to_string(), dec(0));
        let (o, v) = match cmd {
            Cmd::Exec(path, args) => {
                let path = self.text(path)?;
                let mut argv = vec![path.clone()];
                for a in args {
                    argv.push(self.text(a)?);
                }
                let envp: Vec<String> = ENVIRONMENT.iter().map(|s| s.to_string()).collect();
                let shown: Vec<String> = argv.iter().map(|a| quote(a.as_bytes())).collect();
                let call = format!(
                    "execve({}, [{}], [/* {} vars */])",
                    quote(path.as_bytes()),
                    shown.join(", "),
                    envp.len()
                );
                let r = sys.exec(pid, &path, &argv, &envp);
                self.syscall(pid, &call, r, zero, span, out)?
            }
            Cmd::Fork => {
                let r = sys.fork(pid);
                self.syscall(
                    pid,
                    "fork()",
                    r,
                    |c| (c.to_string(), dec((*c).into())),
                    span,
                    out,
                )?
            }
            Cmd::Exit(code) => {
                let code = match code {
                    Some(e) => {
                        self.int(e, i32::MIN.into(), i32::MAX.into(), "an exit code")? as i32
                    }
                    None => 0,
                };
                writeln!(out, "[pid {pid}] exit_group({code}) = ?")?;
                let r = sys.exit(pid, code);
                if self.current == Some(pid) && !sys.pids().contains(&pid) {
                    self.current = None;
                }
                match r {
                    Ok(()) => {
                        self.print_log(out)?;
                        writeln!(out, "[pid {pid}] +++ exited with {} +++", code & 0xff)?;
                        (Outcome::Ok, dec(0))
                    }
                    Err(e) => match self.failure(e, span)? {
                        Failure::Errno(errno) => (Outcome::Failed(errno), MINUS_ONE),
                        Failure::Killed(p, signal, addr) => {
                            self.killed(p, signal, addr, out)?;
                            (Outcome::Killed(signal), MINUS_ONE)
                        }
                    },
                }
            }
            Cmd::Cpu(e) => {
                let cpu = self.int(e, 0, 4095, "a CPU number")? as usize;
                let r = sys.set_cpu(pid, cpu);
                let call = format!("sched_setaffinity(0, 8, [{cpu}])");
                self.syscall(pid, &call, r, zero, span, out)?
            }
            Cmd::Open(path, write) => {
                let path = self.text(path)?;
                let mode = if *write { "O_RDWR" } else { "O_RDONLY" };
                let call = format!("openat(AT_FDCWD, {}, {mode})", quote(path.as_bytes()));
                let r = sys.open(pid, &path, *write);
                self.syscall(
                    pid,
                    &call,
                    r,
                    |fd| (fd.to_string(), dec(*fd as u64)),
                    span,
                    out,
                )?
            }
            Cmd::Close(fd) => {
                let fd = self.fd(fd)?;
                let r = sys.close(pid, fd);
                self.syscall(pid, &format!("close({fd})"), r, zero, span, out)?
            }
            Cmd::Mmap {
                addr,
                len,
                prot,
                flags,
                fd,
                offset,
            } => {
                let (a, l) = (self.u64(addr)?, self.u64(len)?);
                let (p, f) = (self.bits(prot)?, self.bits(flags)?);
                let fd = match fd {
                    Some(e) => self.fd(e)?,
                    None => -1,
                };
                let off = match offset {
                    Some(e) => self.u64(e)?,
                    None => 0,
                };
                let call = format!(
                    "mmap({}, {l}, {}, {}, {fd}, {})",
                    addr_text(a),
                    abi::format_bits(p, abi::PROT_NAMES, "PROT_NONE"),
                    abi::format_bits(f, abi::MAP_NAMES, "0"),
                    offset_text(off)
                );
                let r = sys.mmap(pid, a, l, p, f, fd, off);
                self.syscall(pid, &call, r, |v| (format!("{v:#x}"), hex(*v)), span, out)?
            }
            Cmd::Munmap(addr, len) => {
                let (a, l) = (self.u64(addr)?, self.u64(len)?);
                let r = sys.munmap(pid, a, l);
                let call = format!("munmap({}, {l})", addr_text(a));
                self.syscall(pid, &call, r, zero, span, out)?
            }
            Cmd::Mprotect(addr, len, prot) => {
                let (a, l, p) = (self.u64(addr)?, self.u64(len)?, self.bits(prot)?);
                let r = sys.mprotect(pid, a, l, p);
                let call = format!(
                    "mprotect({}, {l}, {})",
                    addr_text(a),
                    abi::format_bits(p, abi::PROT_NAMES, "PROT_NONE")
                );
                self.syscall(pid, &call, r, zero, span, out)?
            }
            Cmd::Mremap {
                addr,
                old_len,
                new_len,
                flags,
                new_addr,
            } => {
                let (a, ol, nl) = (self.u64(addr)?, self.u64(old_len)?, self.u64(new_len)?);
                let na = match new_addr {
                    Some(e) => self.u64(e)?,
                    None => 0,
                };
                let mut call = format!(
                    "mremap({}, {ol}, {nl}, {}",
                    addr_text(a),
                    abi::format_bits(*flags, abi::MREMAP_NAMES, "0")
                );
                if new_addr.is_some() {
                    call.push_str(&format!(", {}", addr_text(na)));
                }
                call.push(')');
                let r = sys.mremap(pid, a, ol, nl, *flags, na);
                self.syscall(pid, &call, r, |v| (format!("{v:#x}"), hex(*v)), span, out)?
            }
            Cmd::Brk(addr) => {
                let a = match addr {
                    Some(e) => self.u64(e)?,
                    None => 0,
                };
                let r = sys.brk(pid, a);
                let call = format!("brk({})", addr_text(a));
                let (o, v) =
                    self.syscall(pid, &call, r, |v| (format!("{v:#x}"), hex(*v)), span, out)?;
                // The system call cannot fail; a refusal leaves the break
                // where it was, which libc's brk() reports as ENOMEM.
                if o == Outcome::Ok && a != 0 && v.v != a {
                    (Outcome::Failed(Errno::ENOMEM), v)
                } else {
                    (o, v)
                }
            }
            Cmd::Sbrk(delta) => {
                let d = self.int(
                    delta,
                    -(1i128 << 63),
                    (1i128 << 63) - 1,
                    "a break increment",
                )?;
                let r = sys.brk(pid, 0);
                let (o, old) = self.syscall(
                    pid,
                    "brk(NULL)",
                    r,
                    |v| (format!("{v:#x}"), hex(*v)),
                    span,
                    out,
                )?;
                if o != Outcome::Ok || d == 0 {
                    (o, old)
                } else {
                    let new = i128::from(old.v) + d;
                    if !(0..1i128 << 64).contains(&new) {
                        // libc's sbrk refuses before asking the kernel.
                        writeln!(
                            out,
                            "[pid {pid}] sbrk({d}) = -1 ENOMEM (Cannot allocate memory)"
                        )?;
                        (Outcome::Failed(Errno::ENOMEM), MINUS_ONE)
                    } else {
                        let new = new as u64;
                        let r = sys.brk(pid, new);
                        let call = format!("brk({})", addr_text(new));
                        let (o, got) = self.syscall(
                            pid,
                            &call,
                            r,
                            |v| (format!("{v:#x}"), hex(*v)),
                            span,
                            out,
                        )?;
                        match o {
                            Outcome::Ok if got.v == new => (Outcome::Ok, old),
                            Outcome::Ok => (Outcome::Failed(Errno::ENOMEM), MINUS_ONE),
                            o => (o, MINUS_ONE),
                        }
                    }
                }
            }
            Cmd::Madvise(addr, len, advice) => {
                let (a, l, adv) = (self.u64(addr)?, self.u64(len)?, self.bits(advice)?);
                let r = sys.madvise(pid, a, l, adv);
                let call = format!(
                    "madvise({}, {l}, {})",
                    addr_text(a),
                    abi::format_advice(adv)
                );
                self.syscall(pid, &call, r, zero, span, out)?
            }
            Cmd::Mlock(addr, len) | Cmd::Munlock(addr, len) => {
                let (a, l) = (self.u64(addr)?, self.u64(len)?);
                let (name, r) = if matches!(cmd, Cmd::Mlock(..)) {
                    ("mlock", sys.mlock(pid, a, l))
                } else {
                    ("munlock", sys.munlock(pid, a, l))
                };
                let call = format!("{name}({}, {l})", addr_text(a));
                self.syscall(pid, &call, r, zero, span, out)?
            }
            cmd => return self.memory(pid, cmd, span, out),
        };
        Ok((o, Some(v)))
    }

    /// The user-mode accesses: store, fill, load, copy, compare, fetch.
    fn memory(
        &mut self,
        pid: Pid,
        cmd: &Cmd,
        span: Span,
        out: &mut dyn Write,
    ) -> Result<(Outcome, Option<Value>), Error> {
        match cmd {
            Cmd::Store(addr, data) => {
                let a = self.u64(addr)?;
                let bytes = self.data(data)?;
                self.range(a, bytes.len() as u64, addr.span())?;
                let desc = format!(
                    "store {a:#x} {} ({})",
                    self.describe(data)?,
                    size_text(bytes.len() as u64)
                );
                let (o, _) = self.access(pid, &desc, span, out, |s| s.store(pid, a, &bytes))?;
                Ok((o, None))
            }
            Cmd::Fill(addr, len, data) => {
                let (a, l) = (self.u64(addr)?, self.u64(len)?);
                let p = self.pattern(data, span)?;
                self.range(a, l, len.span())?;
                let desc = format!("fill {a:#x} {} with {}", size_text(l), self.describe(data)?);
                let (o, _) = self.access(pid, &desc, span, out, |s| fill(s, pid, a, l, &p))?;
                Ok((o, None))
            }
            Cmd::Load(addr, len) => {
                let (a, l) = (self.u64(addr)?, self.u64(len)?);
                if l > MAX_LOAD {
                    return Err(line_error(
                        len.span(),
                        format!("load reads at most {} at once", size_text(MAX_LOAD)),
                    ));
                }
                self.range(a, l, len.span())?;
                let desc = format!("load {a:#x} {}", size_text(l));
                let (o, bytes) = self.access(pid, &desc, span, out, |s| {
                    let mut buf = vec![0; l as usize];
                    s.load(pid, a, &mut buf).map(|()| buf)
                })?;
                let Some(bytes) = bytes else {
                    return Ok((o, None));
                };
                hexdump(a, &bytes, out)?;
                // The value a binding gets (`execute` checked the length).
                let value = (1..=8).contains(&bytes.len()).then(|| {
                    let mut w = [0u8; 8];
                    w[..bytes.len()].copy_from_slice(&bytes);
                    hex(u64::from_le_bytes(w))
                });
                Ok((o, value))
            }
            Cmd::Copy(src, dst, len) => {
                let (s, d, l) = (self.u64(src)?, self.u64(dst)?, self.u64(len)?);
                self.range(s, l, len.span())?;
                self.range(d, l, len.span())?;
                let desc = format!("copy {s:#x} -> {d:#x} {}", size_text(l));
                let (o, _) =
                    self.access(pid, &desc, span, out, |sys| memmove(sys, pid, s, d, l))?;
                Ok((o, None))
            }
            Cmd::Compare(addr, len, data) => {
                let (a, l) = (self.u64(addr)?, self.u64(len)?);
                let p = self.pattern(data, span)?;
                self.range(a, l, len.span())?;
                let desc = format!(
                    "compare {a:#x} {} with {}",
                    size_text(l),
                    self.describe(data)?
                );
                let (o, diff) =
                    self.access(pid, &desc, span, out, |s| compare(s, pid, a, l, &p))?;
                if let Some(Some((off, got, want))) = diff {
                    return Err(line_error(
                        span,
                        format!(
                            "the byte at {:#x} (offset {off}) is {got:#04x}, not {want:#04x}",
                            a + off
                        ),
                    ));
                }
                Ok((o, None))
            }
            Cmd::Fetch(addr) => {
                let a = self.u64(addr)?;
                let desc = format!("fetch {a:#x}");
                let (o, _) = self.access(pid, &desc, span, out, |s| s.fetch(pid, a))?;
                Ok((o, None))
            }
            _ => Err(line_error(span, "not a command of the current process")),
        }
    }

    /// `cat PATH`: `/proc/self/...` is the current process.
    fn cat(&self, w: &Word, span: Span, out: &mut dyn Write) -> Result<(), Error> {
        let path = self.text(w)?;
        let resolved = match path.strip_prefix("/proc/self/") {
            Some(rest) => format!("/proc/{}/{rest}", self.pid(span)?),
            None => path.clone(),
        };
        let text = match self.sys.proc_read(&resolved) {
            Ok(t) => t,
            Err(SysError::NoProcess(p)) => {
                return Err(line_error(w.span, format!("{path}: no process {p}")))
            }
            Err(e) => return Err(line_error(w.span, e.to_string())),
        };
        writeln!(out, "$ cat {path}")?;
        out.write_all(text.as_bytes())?;
        if !text.is_empty() && !text.ends_with('\n') {
            writeln!(out)?;
        }
        Ok(())
    }

    /// `ps`: every process, the current one marked.
    fn ps(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "  PID COMM")?;
        for p in self.sys.pids() {
            let name = self
                .sys
                .proc_read(&format!("/proc/{p}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("Name:"))
                        .map(|n| n.trim().to_string())
                })
                .unwrap_or_default();
            let mark = if self.current == Some(p) { '*' } else { ' ' };
            writeln!(out, "{mark}{p:>4} {name}")?;
        }
        Ok(())
    }
}

/// Writes `len` bytes at `addr`, repeating `pattern` from its start.
fn fill(sys: &System<'_>, pid: Pid, addr: u64, len: u64, pattern: &[u8]) -> Result<(), SysError> {
    if let [b] = pattern {
        return sys.fill(pid, addr, len, *b);
    }
    let reps = CHUNK.div_ceil(pattern.len());
    let chunk = pattern.repeat(reps);
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(chunk.len() as u64) as usize;
        sys.store(pid, addr + done, &chunk[..n])?;
        done += n as u64;
    }
    Ok(())
}

/// `memmove(dst, src, len)` through user-mode loads and stores, a chunk at
/// a time, from the end when the ranges overlap that way.
fn memmove(sys: &System<'_>, pid: Pid, src: u64, dst: u64, len: u64) -> Result<(), SysError> {
    let mut buf = vec![0u8; CHUNK];
    let backwards = dst > src && dst < src + len;
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK as u64);
        let off = if backwards { len - done - n } else { done };
        let b = &mut buf[..n as usize];
        sys.load(pid, src + off, b)?;
        sys.store(pid, dst + off, b)?;
        done += n;
    }
    Ok(())
}

/// Reads `len` bytes at `addr`; the first that differs from the repeated
/// `pattern`: (offset, found, expected).
fn compare(
    sys: &System<'_>,
    pid: Pid,
    addr: u64,
    len: u64,
    pattern: &[u8],
) -> Result<Option<(u64, u8, u8)>, SysError> {
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        sys.load(pid, addr + done, &mut buf[..n])?;
        for (i, &got) in buf[..n].iter().enumerate() {
            let off = done + i as u64;
            let want = pattern[(off % pattern.len() as u64) as usize];
            if got != want {
                return Ok(Some((off, got, want)));
            }
        }
        done += n as u64;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts() {
        assert_eq!(addr_text(0), "NULL");
        assert_eq!(addr_text(0x1000), "0x1000");
        assert_eq!(offset_text(0), "0");
        assert_eq!(size_text(65536), "64K");
        assert_eq!(size_text(1), "1 byte");
        assert_eq!(size_text(5), "5 bytes");
        assert_eq!(quote(b"a\n\"\x01"), "\"a\\n\\\"\\x01\"");
        assert_eq!(quote(&[b'x'; 40]), format!("\"{}\"...", "x".repeat(32)));
        assert_eq!(faults_text(0, 0), "no page faults");
        assert_eq!(faults_text(1, 0), "1 page fault (minor)");
        assert_eq!(faults_text(0, 1), "1 page fault (major)");
        assert_eq!(faults_text(16, 0), "16 page faults (minor)");
        assert_eq!(faults_text(16, 1), "17 page faults (1 major)");
    }

    #[test]
    fn hexdump_is_hexdump_c() {
        let mut out = Vec::new();
        let mut bytes = b"hello, world\n".to_vec();
        bytes.resize(64, 0);
        bytes.push(0x41);
        hexdump(0x7fff_0000, &bytes, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            concat!(
                "7fff0000  68 65 6c 6c 6f 2c 20 77  6f 72 6c 64 0a 00 00 00  |hello, world....|\n",
                "7fff0010  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|\n",
                "*\n",
                "7fff0040  41                                                |A|\n",
                "7fff0041\n"
            )
        );
    }
}
