//! The workload language: processes on a simulated machine, one command a
//! line, the same in `.kmm` files (`kmm run`) and interactively
//! (`kmm shell`).
//!
//! ```text
//! # brk grows the heap; nothing is resident until the first touch
//! spawn demo
//! exec /bin/true
//! $heap = sbrk 64K
//! cat /proc/self/status
//! store $heap "hello"
//! compare $heap 5 "hello"
//! ```
//!
//! A line is `[$name =] COMMAND ARGS... [expect OUTCOME]`; `#` starts a
//! comment. Numbers are decimal or `0x` hex with optional binary units
//! (`64K`, `2M`), `NULL`, variables (`$heap`), and `+ - *` and parentheses
//! written without spaces (`$heap+4K`). A system call that fails prints its
//! result as strace does and the script goes on; `expect ok`, `expect
//! ENOMEM` or `expect SIGSEGV` makes the outcome part of the script.
//! The full reference is [`REFERENCE`] (what `help` prints).
//!
//! - [`parse`]: text to [`parse::Line`], with columns for every error;
//! - [`exec`]: a [`exec::Session`] runs lines on a [`kmm_sim::process::System`];
//! - [`abi`]: Linux's flag names and values.

pub mod abi;
pub mod exec;
pub mod parse;

use parse::Span;
use std::fmt;
use std::io::{self, BufRead, Write};

/// The language reference, as `help` prints it and the README shows it.
pub const REFERENCE: &str = "\
A line is [$name =] COMMAND [ARGS...] [expect OUTCOME]; # starts a comment.
  NUMBER   4096, 0x1000, 64K, 2M, 1G, NULL, $var, with + - * ( ) and no spaces: $heap+4K
  PATH     a word, $var replaced (/proc/$child/maps), or a \"quoted string\"
  PROT     r, rw, rw-, r-x, rwx, none; read,write; PROT_READ|PROT_EXEC; or a NUMBER
  FLAGS    private, shared, anonymous (anon), fixed, fixed_noreplace, populate,
           growsdown, locked, noreserve, stack, joined by , or | (MAP_ names too)
  ADVICE   normal, random, sequential, willneed, dontneed, free, remove, dontfork, dofork
  DATA     bytes (0x41), u16:V u32:V u64:V (little-endian), \"strings\" (\\n \\t \\0 \\xHH)
  OUTCOME  ok: the call must succeed; an error (ENOMEM, EINVAL, ...): it must fail so;
           a signal (SIGSEGV, SIGBUS): the process must die of it. (expect-ok = expect ok)
$name = COMMAND binds the pid, fd or address it returns (-1 when it fails);
$name = NUMBER binds a number. $pid is the current process, $page_size the page size.
A failed system call prints = -1 ERRNO (message) and the script goes on.
";

/// An error in a script, with everything needed to show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file's name (`<stdin>` for the shell).
    pub file: String,
    /// The line number, from 1.
    pub line: usize,
    /// Where in the line.
    pub span: Span,
    /// What is wrong.
    pub msg: String,
    /// The line's text.
    pub source: String,
}

impl fmt::Display for Diagnostic {
    /// `file.kmm:12:9: error: ...`, then the line and a caret under the
    /// culprit, as compilers show it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (line, col) = (self.line, self.span.col);
        writeln!(f, "{}:{line}:{col}: error: {}", self.file, self.msg)?;
        let text: String = self
            .source
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let gutter = line.to_string().len().max(4);
        writeln!(f, "{line:>gutter$} | {}", text.trim_end())?;
        let width = self.span.len.max(1);
        writeln!(
            f,
            "{:gutter$} | {}^{}",
            "",
            " ".repeat(col.saturating_sub(1)),
            "~".repeat(width - 1)
        )
    }
}

/// Why a run stopped.
#[derive(Debug)]
pub enum Stop {
    /// A line was wrong, or did not do what it said to expect.
    Script(Diagnostic),
    /// The output could not be written.
    Io(io::Error),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Self {
        Stop::Io(e)
    }
}

/// One line of input as text: invalid UTF-8 becomes U+FFFD (and then a
/// parse error pointing at it), the line end is dropped.
fn line_text(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    s.trim_end_matches(['\n', '\r']).to_string()
}

/// Runs `source` (the contents of `file`) line by line; stops at the first
/// error.
pub fn run_source(
    session: &mut exec::Session<'_, '_>,
    file: &str,
    source: &[u8],
    out: &mut dyn Write,
) -> Result<(), Stop> {
    for (i, raw) in source.split(|&b| b == b'\n').enumerate() {
        let text = line_text(raw);
        match session.run_line(&text, out) {
            Ok(()) => {}
            Err(exec::Error::Io(e)) => return Err(Stop::Io(e)),
            Err(exec::Error::Line(e)) => {
                return Err(Stop::Script(Diagnostic {
                    file: file.to_string(),
                    line: i + 1,
                    span: e.span,
                    msg: e.msg,
                    source: text,
                }))
            }
        }
    }
    Ok(())
}

/// Reads lines from `input` and runs each at once, printing errors to
/// `errors` and going on; with `prompt`, shows `kmm> ` on `errors` before
/// each line. Returns how many lines failed.
pub fn run_interactive(
    session: &mut exec::Session<'_, '_>,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    errors: &mut dyn Write,
    prompt: bool,
) -> io::Result<usize> {
    let mut failed = 0;
    let mut buf = Vec::new();
    for n in 1.. {
        if prompt {
            write!(errors, "kmm> ")?;
            errors.flush()?;
        }
        buf.clear();
        if input.read_until(b'\n', &mut buf)? == 0 {
            if prompt {
                writeln!(errors)?;
            }
            break;
        }
        let text = line_text(&buf);
        let r = session.run_line(&text, out);
        out.flush()?;
        match r {
            Ok(()) => {}
            Err(exec::Error::Io(e)) => return Err(e),
            Err(exec::Error::Line(e)) => {
                failed += 1;
                let d = Diagnostic {
                    file: "<stdin>".into(),
                    line: n,
                    span: e.span,
                    msg: e.msg,
                    source: text,
                };
                write!(errors, "{d}")?;
                errors.flush()?;
            }
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diagnostic_shows_the_line_and_a_caret() {
        let d = Diagnostic {
            file: "x.kmm".into(),
            line: 12,
            span: Span { col: 6, len: 4 },
            msg: "unknown command 'mmpa'".into(),
            source: "  \t  mmpa NULL 4K".into(),
        };
        assert_eq!(
            d.to_string(),
            concat!(
                "x.kmm:12:6: error: unknown command 'mmpa'\n",
                "  12 |      mmpa NULL 4K\n",
                "     |      ^~~~\n"
            )
        );
    }

    #[test]
    fn input_lines_lose_their_ends_and_bad_bytes() {
        assert_eq!(line_text(b"fork\r\n"), "fork");
        assert_eq!(line_text(b"echo \xff"), "echo \u{fffd}");
    }
}
