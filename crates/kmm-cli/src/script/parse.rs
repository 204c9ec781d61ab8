//! The workload language's syntax: one line of text into one [`Line`].
//!
//! A line is split into tokens at white space: words, and double-quoted
//! strings (`"a b\n"`). `#` at the start of a token begins a comment.
//! Words are then read as what the command expects in that position: a
//! number expression (`$heap+4K`), a path with `$variables` in it, a flag
//! word (`private,anonymous`), data (`u32:7`). Every error carries the
//! column of the text it is about. Nothing here touches a machine.

use super::abi::{self, Names};
use kmm::Errno;

/// Where something is in a line: the 1-based column of its first character
/// and its width, both counted in characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// First column, from 1.
    pub col: usize,
    /// Width in columns, at least 1.
    pub len: usize,
}

impl Span {
    fn new(col: usize, len: usize) -> Span {
        Span {
            col,
            len: len.max(1),
        }
    }
}

/// An error in one line: what is wrong, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    /// The text at fault.
    pub span: Span,
    /// The message, without a position.
    pub msg: String,
}

fn err<T>(span: Span, msg: impl Into<String>) -> Result<T, LineError> {
    Err(LineError {
        span,
        msg: msg.into(),
    })
}

// ---------------------------------------------------------------- tokens

/// A token's text: a bare word, or the bytes of a quoted string.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Word(String),
    Str(Vec<u8>),
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    span: Span,
}

impl Token {
    fn word(&self) -> Option<&str> {
        match &self.tok {
            Tok::Word(w) => Some(w),
            Tok::Str(_) => None,
        }
    }
}

/// Splits a line into tokens, dropping the comment.
fn lex(line: &str) -> Result<Vec<Token>, LineError> {
    let chars: Vec<char> = line.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '#' {
            break;
        }
        let start = i;
        if c == '"' {
            let (bytes, next) = lex_string(&chars, i)?;
            if next < chars.len() && !chars[next].is_whitespace() {
                return err(
                    Span::new(next + 1, 1),
                    "a string must be followed by a space or the end of the line",
                );
            }
            toks.push(Token {
                tok: Tok::Str(bytes),
                span: Span::new(start + 1, next - start),
            });
            i = next;
            continue;
        }
        while i < chars.len() && !chars[i].is_whitespace() {
            if chars[i] == '"' {
                return err(
                    Span::new(i + 1, 1),
                    "a quote inside a word: put a space before the string",
                );
            }
            i += 1;
        }
        toks.push(Token {
            tok: Tok::Word(chars[start..i].iter().collect()),
            span: Span::new(start + 1, i - start),
        });
    }
    Ok(toks)
}

/// Reads the string starting at the quote `chars[open]`; returns its bytes
/// (UTF-8 for the characters, raw for `\xHH`) and the index after the
/// closing quote.
fn lex_string(chars: &[char], open: usize) -> Result<(Vec<u8>, usize), LineError> {
    let mut bytes = Vec::new();
    let mut i = open + 1;
    loop {
        let Some(&c) = chars.get(i) else {
            return err(Span::new(open + 1, 1), "this string has no closing quote");
        };
        match c {
            '"' => return Ok((bytes, i + 1)),
            '\\' => {
                let esc = chars.get(i + 1).copied();
                let byte = match esc {
                    Some('n') => b'\n',
                    Some('t') => b'\t',
                    Some('r') => b'\r',
                    Some('0') => 0,
                    Some('\\') => b'\\',
                    Some('"') => b'"',
                    Some('x') => {
                        let hex: String = chars.iter().skip(i + 2).take(2).collect();
                        if hex.len() != 2 || !hex.chars().all(|h| h.is_ascii_hexdigit()) {
                            return err(
                                Span::new(i + 1, 2 + hex.chars().count()),
                                "\\x needs two hex digits, as in \\x0a",
                            );
                        }
                        bytes.push(u8::from_str_radix(&hex, 16).unwrap_or(0));
                        i += 4;
                        continue;
                    }
                    Some(other) => {
                        return err(
                            Span::new(i + 1, 2),
                            format!(
                                "unknown escape '\\{other}' (use \\n, \\t, \\r, \\0, \\\\, \\\" or \\xHH)"
                            ),
                        )
                    }
                    None => return err(Span::new(open + 1, 1), "this string has no closing quote"),
                };
                bytes.push(byte);
                i += 2;
            }
            _ => {
                let mut buf = [0u8; 4];
                bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                i += 1;
            }
        }
    }
}

// ------------------------------------------------------------- expressions

/// A variable's value, and whether it reads best in hex (an address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Value {
    /// The 64-bit value.
    pub v: u64,
    /// Print as `0x...` (addresses) rather than in decimal (pids, fds).
    pub hex: bool,
}

/// Looks variables up while evaluating.
pub type Vars<'a> = &'a dyn Fn(&str) -> Option<Value>;

/// Binary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
}

/// A number expression: literals (`4096`, `0x1000`, `64K`, `NULL`),
/// variables (`$heap`), `+ - *`, unary minus and parentheses, written
/// without spaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// A literal, and whether it was written in hex.
    Num(u64, bool, Span),
    /// `$name`.
    Var(String, Span),
    /// `-x`.
    Neg(Box<Expr>, Span),
    /// `a op b`.
    Bin(Op, Box<Expr>, Box<Expr>, Span),
}

/// Values stay within 64 bits (and a sign) while an expression is evaluated.
const LIMIT: i128 = 1 << 64;

/// The most operators one expression may have.
const MAX_OPERATORS: usize = 64;

impl Expr {
    /// Where the expression is.
    pub fn span(&self) -> Span {
        match self {
            Expr::Num(_, _, s) | Expr::Var(_, s) | Expr::Neg(_, s) | Expr::Bin(_, _, _, s) => *s,
        }
    }

    /// The value, between -2^64 and 2^64 (exclusive).
    pub fn eval(&self, vars: Vars<'_>) -> Result<i128, LineError> {
        let v = match self {
            Expr::Num(n, _, _) => i128::from(*n),
            Expr::Var(name, span) => match vars(name) {
                Some(v) => i128::from(v.v),
                None => return err(*span, format!("${name} is not set")),
            },
            Expr::Neg(e, _) => -e.eval(vars)?,
            Expr::Bin(op, a, b, _) => {
                let (a, b) = (a.eval(vars)?, b.eval(vars)?);
                match op {
                    Op::Add => a + b,
                    Op::Sub => a - b,
                    Op::Mul => a.checked_mul(b).unwrap_or(LIMIT),
                }
            }
        };
        if v >= LIMIT || v <= -LIMIT {
            return err(self.span(), "this value does not fit in 64 bits");
        }
        Ok(v)
    }

    /// The value as a 64-bit word, negative values in two's complement
    /// (as C converts `-1` to `size_t`).
    pub fn u64(&self, vars: Vars<'_>) -> Result<u64, LineError> {
        let v = self.eval(vars)?;
        if v < -(1i128 << 63) {
            return err(self.span(), "this value does not fit in 64 bits");
        }
        Ok(v as u64)
    }

    /// The value, which must be in `lo..=hi`; `what` names it in the error.
    pub fn in_range(
        &self,
        vars: Vars<'_>,
        lo: i128,
        hi: i128,
        what: &str,
    ) -> Result<i128, LineError> {
        let v = self.eval(vars)?;
        if v < lo || v > hi {
            return err(
                self.span(),
                format!("{v} is not {what} (expected {lo} to {hi})"),
            );
        }
        Ok(v)
    }

    /// Whether the value reads best in hex: a hex literal or an address
    /// variable is in it.
    pub fn hexish(&self, vars: Vars<'_>) -> bool {
        match self {
            Expr::Num(_, hex, _) => *hex,
            Expr::Var(name, _) => vars(name).is_some_and(|v| v.hex),
            Expr::Neg(e, _) => e.hexish(vars),
            Expr::Bin(_, a, b, _) => a.hexish(vars) || b.hexish(vars),
        }
    }
}

/// Characters of a variable name after the first.
fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

/// Whether a word is meant as a number expression (rather than a name).
fn looks_numeric(w: &str) -> bool {
    w == "NULL" || w.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '$' | '(' | '-'))
}

/// A recursive-descent reader of one expression word.
struct ExprParser<'a> {
    chars: &'a [char],
    pos: usize,
    /// Operators read so far (a bound on the tree's depth).
    ops: usize,
    /// The column of `chars[0]`.
    col: usize,
}

impl ExprParser<'_> {
    fn span(&self, from: usize, to: usize) -> Span {
        Span::new(self.col + from, to.saturating_sub(from))
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    /// Steps over an operator, refusing expressions too long to evaluate.
    fn operator(&mut self) -> Result<(), LineError> {
        self.ops += 1;
        if self.ops > MAX_OPERATORS {
            return err(
                self.span(self.pos, self.pos + 1),
                format!("an expression has at most {MAX_OPERATORS} operators"),
            );
        }
        self.pos += 1;
        Ok(())
    }

    fn expr(&mut self, depth: usize) -> Result<Expr, LineError> {
        let start = self.pos;
        let mut lhs = self.term(depth)?;
        while let Some(c @ ('+' | '-')) = self.peek() {
            self.operator()?;
            let rhs = self.term(depth)?;
            let op = if c == '+' { Op::Add } else { Op::Sub };
            lhs = Expr::Bin(op, Box::new(lhs), Box::new(rhs), self.span(start, self.pos));
        }
        Ok(lhs)
    }

    fn term(&mut self, depth: usize) -> Result<Expr, LineError> {
        let start = self.pos;
        let mut lhs = self.unary(depth)?;
        while self.peek() == Some('*') {
            self.operator()?;
            let rhs = self.unary(depth)?;
            lhs = Expr::Bin(
                Op::Mul,
                Box::new(lhs),
                Box::new(rhs),
                self.span(start, self.pos),
            );
        }
        Ok(lhs)
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, LineError> {
        if depth > 64 {
            return err(
                self.span(self.pos, self.pos + 1),
                "this expression nests too deeply",
            );
        }
        let start = self.pos;
        match self.peek() {
            Some('-') => {
                self.operator()?;
                let e = self.unary(depth + 1)?;
                Ok(Expr::Neg(Box::new(e), self.span(start, self.pos)))
            }
            Some('(') => {
                self.pos += 1;
                let e = self.expr(depth + 1)?;
                if self.peek() != Some(')') {
                    return err(self.span(start, start + 1), "this '(' is not closed");
                }
                self.pos += 1;
                Ok(e)
            }
            Some('$') => {
                self.pos += 1;
                let name_start = self.pos;
                while self.peek().is_some_and(is_ident) {
                    self.pos += 1;
                }
                let name: String = self.chars[name_start..self.pos].iter().collect();
                if !name.starts_with(is_ident_start) {
                    return err(
                        self.span(start, self.pos.max(start + 1)),
                        "'$' must be followed by a variable name, as in $heap",
                    );
                }
                Ok(Expr::Var(name, self.span(start, self.pos)))
            }
            Some(c) if is_ident(c) => {
                while self.peek().is_some_and(is_ident) {
                    self.pos += 1;
                }
                let text: String = self.chars[start..self.pos].iter().collect();
                let span = self.span(start, self.pos);
                let (n, hex) = parse_number(&text).map_err(|msg| LineError { span, msg })?;
                Ok(Expr::Num(n, hex, span))
            }
            Some(c) => err(
                self.span(start, start + 1),
                format!("expected a number or $variable, found '{c}'"),
            ),
            None => err(
                self.span(start, start + 1),
                "expected a number or $variable after this",
            ),
        }
    }
}

/// A literal: `NULL`, decimal or `0x` hex digits (with `_` allowed between
/// them), then optionally `K`, `M`, `G` or `T` (binary units). Returns the
/// value and whether it was hex.
fn parse_number(text: &str) -> Result<(u64, bool), String> {
    if text == "NULL" {
        return Ok((0, true));
    }
    let bad = || format!("'{text}' is not a number (write 4096, 0x1000, 64K, 2M or NULL)");
    if !text.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(bad());
    }
    let (body, shift) = match text.chars().last() {
        Some('k' | 'K') => (&text[..text.len() - 1], 10),
        Some('m' | 'M') => (&text[..text.len() - 1], 20),
        Some('g' | 'G') => (&text[..text.len() - 1], 30),
        Some('t' | 'T') => (&text[..text.len() - 1], 40),
        _ => (text, 0),
    };
    let (digits, radix, hex) = match body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        Some(h) => (h, 16, true),
        None => (body, 10, false),
    };
    let clean: String = digits.chars().filter(|&c| c != '_').collect();
    if clean.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || !clean.chars().all(|c| c.is_digit(radix))
    {
        return Err(bad());
    }
    let too_big = || format!("'{text}' does not fit in 64 bits");
    let n = u64::from_str_radix(&clean, radix).map_err(|_| too_big())?;
    let n = n.checked_mul(1 << shift).ok_or_else(too_big)?;
    Ok((n, hex))
}

/// Reads a whole word as one expression.
fn parse_expr_word(text: &str, span: Span) -> Result<Expr, LineError> {
    let chars: Vec<char> = text.chars().collect();
    let mut p = ExprParser {
        chars: &chars,
        pos: 0,
        ops: 0,
        col: span.col,
    };
    let e = p.expr(0)?;
    if p.pos < chars.len() {
        let c = chars[p.pos];
        let msg = if matches!(c, '+' | '-' | '*') {
            format!("unexpected '{c}'")
        } else {
            format!("unexpected '{c}' in a number expression")
        };
        return err(p.span(p.pos, p.pos + 1), msg);
    }
    Ok(e)
}

// ------------------------------------------------------------------ words

/// A piece of a [`Word`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    /// Text as written.
    Lit(String),
    /// `$name`, replaced by the variable's value.
    Var(String, Span),
}

/// A name or path: a quoted string as it is, or a bare word in which each
/// `$name` is replaced by the variable's value (`/proc/$child/maps`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Word {
    /// The pieces.
    pub parts: Vec<Part>,
    /// Where the word is.
    pub span: Span,
}

impl Word {
    /// The text, variables replaced (addresses in hex, other values in
    /// decimal).
    pub fn text(&self, vars: Vars<'_>) -> Result<String, LineError> {
        let mut s = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(t) => s.push_str(t),
                Part::Var(name, span) => match vars(name) {
                    Some(Value { v, hex: true }) => s.push_str(&format!("{v:#x}")),
                    Some(Value { v, hex: false }) => s.push_str(&v.to_string()),
                    None => return err(*span, format!("${name} is not set")),
                },
            }
        }
        Ok(s)
    }
}

fn parse_word(t: &Token) -> Result<Word, LineError> {
    let text = match &t.tok {
        Tok::Str(bytes) => match String::from_utf8(bytes.clone()) {
            Ok(s) => {
                return Ok(Word {
                    parts: vec![Part::Lit(s)],
                    span: t.span,
                })
            }
            Err(_) => return err(t.span, "a name or path must be UTF-8 text"),
        },
        Tok::Word(w) => w,
    };
    let chars: Vec<char> = text.chars().collect();
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '$' {
            lit.push(chars[i]);
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        let name: String = chars[start + 1..i].iter().collect();
        let span = Span::new(t.span.col + start, i - start);
        if !name.starts_with(is_ident_start) {
            return err(span, "'$' must be followed by a variable name, as in $pid");
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(std::mem::take(&mut lit)));
        }
        parts.push(Part::Var(name, span));
    }
    if !lit.is_empty() || parts.is_empty() {
        parts.push(Part::Lit(lit));
    }
    Ok(Word {
        parts,
        span: t.span,
    })
}

// ------------------------------------------------------------ flag words

/// A flag word or advice: by name (a fixed value) or as an expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bits {
    /// Given by name.
    Fixed(u32),
    /// Given as a number expression.
    Expr(Expr),
}

impl Bits {
    /// The value, which must fit in 32 bits.
    pub fn value(&self, vars: Vars<'_>) -> Result<u32, LineError> {
        match self {
            Bits::Fixed(v) => Ok(*v),
            Bits::Expr(e) => Ok(e.in_range(vars, 0, u32::MAX.into(), "a 32-bit flag word")? as u32),
        }
    }
}

/// A flag word: names from `table` joined with `,` or `|`, or a number.
fn parse_bits(t: &Token, table: Names, what: &str) -> Result<Bits, LineError> {
    let Some(w) = t.word() else {
        return err(t.span, format!("expected {what}, not a string"));
    };
    if looks_numeric(w) {
        return parse_expr_word(w, t.span).map(Bits::Expr);
    }
    let mut bits = 0;
    let mut col = t.span.col;
    for part in w.split([',', '|']) {
        let n = part.chars().count();
        let span = Span::new(col, n);
        col += n + 1;
        if part.is_empty() {
            return err(span, format!("an empty name in {what}"));
        }
        match abi::lookup(table, part) {
            Some(b) => bits |= b,
            None => {
                return err(
                    span,
                    format!(
                        "unknown {what} '{part}' (known: {})",
                        abi::short_names(table)
                    ),
                )
            }
        }
    }
    Ok(Bits::Fixed(bits))
}

/// Protection: `none`, letters (`r`, `rw`, `rw-`, `r-x`, `rwx`), names
/// (`read,write`, `PROT_READ|PROT_EXEC`) or a number.
fn parse_prot(t: &Token) -> Result<Bits, LineError> {
    if let Some(w) = t.word() {
        if !w.is_empty() && w.chars().all(|c| matches!(c, 'r' | 'w' | 'x' | '-')) {
            let mut bits = 0;
            for (i, c) in w.chars().enumerate() {
                let b = match c {
                    'r' => abi::PROT_READ,
                    'w' => abi::PROT_WRITE,
                    'x' => abi::PROT_EXEC,
                    _ => continue,
                };
                if bits & b != 0 {
                    return err(Span::new(t.span.col + i, 1), format!("'{c}' given twice"));
                }
                bits |= b;
            }
            return Ok(Bits::Fixed(bits));
        }
        if w.eq_ignore_ascii_case("none") || w.eq_ignore_ascii_case("PROT_NONE") {
            return Ok(Bits::Fixed(0));
        }
    }
    parse_bits(t, abi::PROT_NAMES, "protection")
}

// ------------------------------------------------------------------- data

/// Bytes to store or compare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    /// A quoted string's bytes.
    Bytes(Vec<u8>),
    /// One byte, `0` to `255`.
    Byte(Expr),
    /// `u16:V`, `u32:V`, `u64:V`: a little-endian integer of this many
    /// bytes (`u8:V` is a byte).
    Int(usize, Expr),
}

impl Data {
    /// The bytes, appended to `out`.
    pub fn bytes(&self, vars: Vars<'_>, out: &mut Vec<u8>) -> Result<(), LineError> {
        match self {
            Data::Bytes(b) => out.extend_from_slice(b),
            Data::Byte(e) => {
                let v = e.eval(vars)?;
                if !(0..=255).contains(&v) {
                    return err(
                        e.span(),
                        format!("{v} is not a byte (0 to 255; write u16:, u32: or u64: for wider values)"),
                    );
                }
                out.push(v as u8);
            }
            Data::Int(n, e) => {
                let bits = 8 * *n as u32;
                let v = e.in_range(
                    vars,
                    -(1i128 << (bits - 1)),
                    (1i128 << bits) - 1,
                    &format!("a {bits}-bit value"),
                )?;
                out.extend_from_slice(&(v as u64).to_le_bytes()[..*n]);
            }
        }
        Ok(())
    }
}

fn parse_data(t: &Token) -> Result<Data, LineError> {
    let w = match &t.tok {
        Tok::Str(b) => return Ok(Data::Bytes(b.clone())),
        Tok::Word(w) => w,
    };
    for (prefix, n) in [("u8:", 1), ("u16:", 2), ("u32:", 4), ("u64:", 8)] {
        if let Some(rest) = w.strip_prefix(prefix) {
            let span = Span::new(t.span.col + prefix.len(), rest.chars().count());
            return parse_expr_word(rest, span).map(|e| Data::Int(n, e));
        }
    }
    if !looks_numeric(w) {
        return err(
            t.span,
            "expected data: a byte (0x41), u16:/u32:/u64:VALUE or a \"string\"",
        );
    }
    parse_expr_word(w, t.span).map(Data::Byte)
}

// --------------------------------------------------------------- commands

/// `expect`: what the command must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// `expect ok` / `expect-ok`: succeed.
    Ok,
    /// `expect ENOMEM`: fail with this error number.
    Errno(Errno),
    /// `expect SIGSEGV`: kill the process with this signal.
    Signal(&'static str),
}

/// A command and its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Cmd {
    Spawn(Word),
    Exec(Word, Vec<Word>),
    Fork,
    Switch(Expr),
    Exit(Option<Expr>),
    Cpu(Expr),
    Open(Word, bool),
    Close(Expr),
    Mmap {
        addr: Expr,
        len: Expr,
        prot: Bits,
        flags: Bits,
        fd: Option<Expr>,
        offset: Option<Expr>,
    },
    Munmap(Expr, Expr),
    Mprotect(Expr, Expr, Bits),
    Mremap {
        addr: Expr,
        old_len: Expr,
        new_len: Expr,
        flags: u32,
        new_addr: Option<Expr>,
    },
    Brk(Option<Expr>),
    Sbrk(Expr),
    Madvise(Expr, Expr, Bits),
    Mlock(Expr, Expr),
    Munlock(Expr, Expr),
    Store(Expr, Vec<Data>),
    Fill(Expr, Expr, Vec<Data>),
    Load(Expr, Expr),
    Copy(Expr, Expr, Expr),
    Compare(Expr, Expr, Vec<Data>),
    Fetch(Expr),
    Cat(Word),
    Tlb,
    Ps,
    Echo(Vec<Word>),
    Help,
    /// `$name = EXPR`.
    Value(Expr),
}

/// One command of the language: its name, arguments and what it does.
pub struct CmdInfo {
    /// The command word.
    pub name: &'static str,
    /// Its arguments, as in a usage line.
    pub args: &'static str,
    /// What it does, in a few words.
    pub what: &'static str,
    /// Whether `$x = ...` can bind its result.
    pub value: bool,
    /// Whether it calls the kernel (so `expect` applies).
    pub kernel: bool,
}

/// Every command, in the order `help` lists them.
pub const COMMANDS: &[CmdInfo] = &[
    CmdInfo {
        name: "spawn",
        args: "NAME",
        what: "new process with an empty address space; it becomes current (-> pid)",
        value: true,
        kernel: true,
    },
    CmdInfo {
        name: "exec",
        args: "PATH [ARG...]",
        what: "execve a host binary in the current process",
        value: false,
        kernel: true,
    },
    CmdInfo {
        name: "fork",
        args: "",
        what: "fork the current process, which stays current (-> child pid)",
        value: true,
        kernel: true,
    },
    CmdInfo {
        name: "switch",
        args: "PID",
        what: "make PID the current process",
        value: false,
        kernel: false,
    },
    CmdInfo {
        name: "exit",
        args: "[CODE]",
        what: "the current process exits",
        value: false,
        kernel: true,
    },
    CmdInfo {
        name: "cpu",
        args: "N",
        what: "run the current process on CPU N",
        value: false,
        kernel: true,
    },
    CmdInfo {
        name: "open",
        args: "PATH [ro|rw]",
        what: "open a host file (-> fd)",
        value: true,
        kernel: true,
    },
    CmdInfo {
        name: "close",
        args: "FD",
        what: "close a file descriptor",
        value: false,
        kernel: true,
    },
    CmdInfo {
        name: "mmap",
        args: "ADDR LEN PROT FLAGS [FD [OFFSET]]",
        what: "map memory (-> address)",
        value: true,
        kernel: true,
    },
    CmdInfo {
        name: "munmap",
        args: "ADDR LEN",
        what: "unmap a range",
        value: false,
        kernel: true,
    },
    CmdInfo {
        name: "mprotect",
        args: "ADDR LEN PROT",
        what: "change a range's protection",
        value: false,
        kernel: true,
    },
    CmdInfo {
        name: "mremap",
        args: "ADDR OLD_LEN NEW_LEN [maymove] [dontunmap] [fixed NEW_ADDR]",
        what: "grow, shrink or move a mapping (-> address)",
        value: true,
        kernel: true,
    },
    CmdInfo {
        name: "brk",
        args: "[ADDR]",
        what: "set the program break; no ADDR queries it (-> the break)",
        value: true,
        kernel: true,
    },
    CmdInfo {
        name: "sbrk",
        args: "DELTA",
        what: "move the break by DELTA, as libc's sbrk (-> the old break)",
        value: true,
        kernel: true,
    },
    CmdInfo {
        name: "madvise",
        args: "ADDR LEN ADVICE",
        what: "advice: dontneed, dontfork, dofork, willneed, ...",
        value: false,
        kernel: true,
    },
    CmdInfo {
        name: "mlock",
        args: "ADDR LEN",
        what: "lock a range in memory",
        value: false,
        kernel: true,
    },
    CmdInfo {
        name: "munlock",
        args: "ADDR LEN",
        what: "unlock a range",
        value: false,
        kernel: true,
    },
    CmdInfo {
        name: "store",
        args: "ADDR DATA...",
        what: "user-mode writes (faulting as needed)",
        value: false,
        kernel: true,
    },
    CmdInfo {
        name: "fill",
        args: "ADDR LEN DATA...",
        what: "write LEN bytes, repeating DATA (memset with one byte)",
        value: false,
        kernel: true,
    },
    CmdInfo {
        name: "load",
        args: "ADDR LEN",
        what: "user-mode reads, printed as a hexdump (-> the value, LEN <= 8)",
        value: true,
        kernel: true,
    },
    CmdInfo {
        name: "copy",
        args: "SRC DST LEN",
        what: "memmove within the current process",
        value: false,
        kernel: true,
    },
    CmdInfo {
        name: "compare",
        args: "ADDR LEN DATA...",
        what: "read LEN bytes; an error unless they repeat DATA",
        value: false,
        kernel: true,
    },
    CmdInfo {
        name: "fetch",
        args: "ADDR",
        what: "an instruction fetch (needs exec permission)",
        value: false,
        kernel: true,
    },
    CmdInfo {
        name: "cat",
        args: "PATH",
        what: "print a /proc file (/proc/self/... is the current process)",
        value: false,
        kernel: false,
    },
    CmdInfo {
        name: "tlb",
        args: "",
        what: "print the TLB statistics",
        value: false,
        kernel: false,
    },
    CmdInfo {
        name: "ps",
        args: "",
        what: "list the processes",
        value: false,
        kernel: false,
    },
    CmdInfo {
        name: "echo",
        args: "[WORD...]",
        what: "print the words",
        value: false,
        kernel: false,
    },
    CmdInfo {
        name: "help",
        args: "",
        what: "list the commands",
        value: false,
        kernel: false,
    },
];

/// The description of command `name`.
pub fn info(name: &str) -> Option<&'static CmdInfo> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// A parsed line: `[$name =] command [expect ...]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// `$name =`: the variable to bind, and where its name is.
    pub bind: Option<(String, Span)>,
    /// The command.
    pub cmd: Cmd,
    /// The command word's name (`"mmap"`, or `"="` for `$x = EXPR`).
    pub name: &'static str,
    /// Where the command word is.
    pub span: Span,
    /// `expect ...`, and where it is.
    pub expect: Option<(Expect, Span)>,
}

/// Variables `$x = ...` may not bind.
pub const BUILTINS: [&str; 2] = ["pid", "page_size"];

/// Parses one line; `Ok(None)` for a blank or comment line.
pub fn parse_line(text: &str) -> Result<Option<Line>, LineError> {
    let toks = lex(text)?;
    if toks.is_empty() {
        return Ok(None);
    }
    let end = Span::new(text.chars().count() + 1, 1);
    let (bind, rest) = parse_binding(&toks)?;
    let Some(first) = rest.first() else {
        return err(end, "expected a command after '='");
    };
    // The command's own tokens end at `expect`.
    let cut = rest
        .iter()
        .position(|t| matches!(t.word(), Some("expect" | "expect-ok")))
        .unwrap_or(rest.len());
    let (args_toks, expect_toks) = rest.split_at(cut);
    let Some(word) = first.word() else {
        return err(first.span, "expected a command, not a string");
    };
    let (name, cmd) = match info(word) {
        Some(ci) => {
            let mut a = Args {
                toks: args_toks.get(1..).unwrap_or(&[]),
                pos: 0,
                info: ci,
                end: expect_toks
                    .first()
                    .map_or(end, |t| Span::new(t.span.col, 1)),
            };
            let cmd = parse_cmd(&mut a)?;
            a.done()?;
            (ci.name, cmd)
        }
        None if bind.is_some() && looks_numeric(word) => {
            if let Some(extra) = args_toks.get(1) {
                return err(
                    extra.span,
                    "unexpected text: write expressions without spaces, as in $heap+4K",
                );
            }
            ("=", Cmd::Value(parse_expr_word(word, first.span)?))
        }
        None => {
            let mut msg = format!("unknown command '{word}'");
            if let Some(s) = suggest(word) {
                msg.push_str(&format!(" (did you mean '{s}'?)"));
            } else {
                msg.push_str(" (try 'help')");
            }
            return err(first.span, msg);
        }
    };
    let expect = parse_expect(expect_toks)?;
    let kernel = info(name).is_some_and(|ci| ci.kernel);
    if let Some((_, span)) = &expect {
        if !kernel {
            let what = if name == "=" {
                "an assignment".to_string()
            } else {
                format!("'{name}'")
            };
            return err(
                *span,
                format!("{what} calls no system call, so there is nothing to expect"),
            );
        }
    }
    if let Some((var, span)) = &bind {
        let gives_value = name == "=" || info(name).is_some_and(|ci| ci.value);
        if !gives_value {
            return err(*span, format!("'{name}' gives no value to bind to ${var}"));
        }
        if let Cmd::Load(_, len) = &cmd {
            if let Ok(n) = len.eval(&|_| None) {
                if !(1..=8).contains(&n) {
                    return err(
                        len.span(),
                        "to bind a load to a variable, load 1 to 8 bytes",
                    );
                }
            }
        }
    }
    Ok(Some(Line {
        bind,
        cmd,
        name,
        span: first.span,
        expect,
    }))
}

/// Splits `$name =` (also `$name=`, `$name =cmd`, `$name=cmd`) off the
/// front.
/// `$name =`: the variable's name and where it is.
type Binding = Option<(String, Span)>;

fn parse_binding(toks: &[Token]) -> Result<(Binding, Vec<Token>), LineError> {
    let first = &toks[0];
    let Some(w) = first.word().filter(|w| w.starts_with('$')) else {
        return Ok((None, toks.to_vec()));
    };
    let name: String = w[1..].chars().take_while(|&c| is_ident(c)).collect();
    let after = &w[1 + name.len()..];
    let name_span = Span::new(first.span.col, 1 + name.chars().count());
    // What follows the '=', where it starts, and how many tokens are used.
    let (cmd, cmd_col, used) = if let Some(cmd) = after.strip_prefix('=') {
        (cmd, first.span.col + 1 + name.len() + 1, 1)
    } else {
        match toks.get(1) {
            Some(t) if after.is_empty() && t.word().is_some_and(|w| w.starts_with('=')) => {
                (&t.word().unwrap_or("=")[1..], t.span.col + 1, 2)
            }
            _ => {
                return err(
                    first.span,
                    "a line may start with '$name = command'; a value alone is not a command",
                )
            }
        }
    };
    if !name.starts_with(is_ident_start) {
        return err(
            name_span,
            "'$' must be followed by a variable name, as in $heap",
        );
    }
    if BUILTINS.contains(&name.as_str()) {
        return err(name_span, format!("${name} is built in and cannot be set"));
    }
    let mut rest: Vec<Token> = toks[used..].to_vec();
    if !cmd.is_empty() {
        rest.insert(
            0,
            Token {
                tok: Tok::Word(cmd.to_string()),
                span: Span::new(cmd_col, cmd.chars().count()),
            },
        );
    }
    Ok((Some((name, name_span)), rest))
}

fn parse_expect(toks: &[Token]) -> Result<Option<(Expect, Span)>, LineError> {
    let Some(kw) = toks.first() else {
        return Ok(None);
    };
    let (expect, last) = if kw.word() == Some("expect-ok") {
        (Expect::Ok, kw)
    } else {
        let Some(what) = toks.get(1) else {
            return err(
                Span::new(kw.span.col + kw.span.len + 1, 1),
                "expect what? ok, an error such as ENOMEM, or a signal such as SIGSEGV",
            );
        };
        let w = what.word().unwrap_or("").to_ascii_uppercase();
        let e = if w == "OK" {
            Expect::Ok
        } else if let Some(e) = abi::ERRNOS.iter().find(|e| e.name() == w) {
            Expect::Errno(*e)
        } else if let Some(s) = abi::SIGNALS.iter().find(|s| **s == w) {
            Expect::Signal(s)
        } else {
            let names: Vec<&str> = abi::ERRNOS.iter().map(|e| e.name()).collect();
            return err(
                what.span,
                format!(
                    "expect ok, an error ({}) or a signal ({})",
                    names.join(", "),
                    abi::SIGNALS.join(", ")
                ),
            );
        };
        (e, what)
    };
    let n = if kw.word() == Some("expect-ok") { 1 } else { 2 };
    if let Some(extra) = toks.get(n) {
        return err(extra.span, "unexpected text after the expectation");
    }
    let span = Span::new(kw.span.col, last.span.col + last.span.len - kw.span.col);
    Ok(Some((expect, span)))
}

/// The closest command name to a misspelt one, if any is close.
fn suggest(word: &str) -> Option<&'static str> {
    let w = word.to_ascii_lowercase();
    COMMANDS
        .iter()
        .map(|c| (edit_distance(&w, c.name), c.name))
        .filter(|&(d, name)| d <= 2 && d < name.len())
        .min_by_key(|&(d, _)| d)
        .map(|(_, n)| n)
}

/// Levenshtein distance.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The arguments of one command, taken in order.
struct Args<'a> {
    toks: &'a [Token],
    pos: usize,
    info: &'static CmdInfo,
    /// Where a missing argument is reported.
    end: Span,
}

impl<'a> Args<'a> {
    fn usage(&self) -> String {
        format!("usage: {} {}", self.info.name, self.info.args)
            .trim_end()
            .to_string()
    }

    fn next(&mut self, what: &str) -> Result<&'a Token, LineError> {
        let toks = self.toks;
        match toks.get(self.pos) {
            Some(t) => {
                self.pos += 1;
                Ok(t)
            }
            None => err(self.end, format!("missing {what} ({})", self.usage())),
        }
    }

    fn more(&self) -> bool {
        self.pos < self.toks.len()
    }

    fn expr(&mut self, what: &str) -> Result<Expr, LineError> {
        let t = self.next(what)?;
        match t.word() {
            Some(w) if w.starts_with(['+', '*']) || w == "-" => {
                err(t.span, "write expressions without spaces, as in $heap+4K")
            }
            Some(w) => parse_expr_word(w, t.span),
            None => err(t.span, format!("expected {what} (a number), not a string")),
        }
    }

    fn opt_expr(&mut self, what: &str) -> Result<Option<Expr>, LineError> {
        if self.more() {
            self.expr(what).map(Some)
        } else {
            Ok(None)
        }
    }

    fn word(&mut self, what: &str) -> Result<Word, LineError> {
        let t = self.next(what)?;
        parse_word(t)
    }

    fn data(&mut self) -> Result<Vec<Data>, LineError> {
        let mut v = vec![parse_data(self.next("DATA")?)?];
        while self.more() {
            v.push(parse_data(self.next("DATA")?)?);
        }
        Ok(v)
    }

    fn done(&self) -> Result<(), LineError> {
        match self.toks.get(self.pos) {
            None => Ok(()),
            Some(t) => {
                let hint = if matches!(t.word(), Some(w) if w.starts_with(['+', '-', '*'])) {
                    ": write expressions without spaces, as in $heap+4K".to_string()
                } else {
                    format!(" ({})", self.usage())
                };
                err(t.span, format!("unexpected argument{hint}"))
            }
        }
    }
}

fn parse_cmd(a: &mut Args<'_>) -> Result<Cmd, LineError> {
    Ok(match a.info.name {
        "spawn" => Cmd::Spawn(a.word("NAME")?),
        "exec" => {
            let path = a.word("PATH")?;
            let mut args = Vec::new();
            while a.more() {
                args.push(a.word("ARG")?);
            }
            Cmd::Exec(path, args)
        }
        "fork" => Cmd::Fork,
        "switch" => Cmd::Switch(a.expr("PID")?),
        "exit" => Cmd::Exit(a.opt_expr("CODE")?),
        "cpu" => Cmd::Cpu(a.expr("N")?),
        "open" => {
            let path = a.word("PATH")?;
            let write = if a.more() {
                let t = a.next("MODE")?;
                match t.word() {
                    Some("rw") => true,
                    Some("ro") => false,
                    _ => return err(t.span, "expected ro or rw"),
                }
            } else {
                false
            };
            Cmd::Open(path, write)
        }
        "close" => Cmd::Close(a.expr("FD")?),
        "mmap" => Cmd::Mmap {
            addr: a.expr("ADDR")?,
            len: a.expr("LEN")?,
            prot: parse_prot(a.next("PROT")?)?,
            flags: parse_bits(a.next("FLAGS")?, abi::MAP_NAMES, "mmap flag")?,
            fd: a.opt_expr("FD")?,
            offset: a.opt_expr("OFFSET")?,
        },
        "munmap" => Cmd::Munmap(a.expr("ADDR")?, a.expr("LEN")?),
        "mprotect" => Cmd::Mprotect(
            a.expr("ADDR")?,
            a.expr("LEN")?,
            parse_prot(a.next("PROT")?)?,
        ),
        "mremap" => {
            let (addr, old_len, new_len) =
                (a.expr("ADDR")?, a.expr("OLD_LEN")?, a.expr("NEW_LEN")?);
            let (mut flags, mut new_addr) = (0, None);
            while a.more() {
                let t = a.next("FLAG")?;
                let bit = match t.word().map(str::to_ascii_lowercase).as_deref() {
                    Some("maymove" | "mremap_maymove") => abi::MREMAP_MAYMOVE,
                    Some("dontunmap" | "mremap_dontunmap") => abi::MREMAP_DONTUNMAP,
                    Some("fixed" | "mremap_fixed") => {
                        new_addr = Some(a.expr("NEW_ADDR")?);
                        abi::MREMAP_FIXED
                    }
                    _ => return err(t.span, "expected maymove, dontunmap or fixed NEW_ADDR"),
                };
                if flags & bit != 0 {
                    return err(t.span, "given twice");
                }
                flags |= bit;
            }
            Cmd::Mremap {
                addr,
                old_len,
                new_len,
                flags,
                new_addr,
            }
        }
        "brk" => Cmd::Brk(a.opt_expr("ADDR")?),
        "sbrk" => Cmd::Sbrk(a.expr("DELTA")?),
        "madvise" => Cmd::Madvise(
            a.expr("ADDR")?,
            a.expr("LEN")?,
            parse_bits(a.next("ADVICE")?, abi::MADV_NAMES, "advice")?,
        ),
        "mlock" => Cmd::Mlock(a.expr("ADDR")?, a.expr("LEN")?),
        "munlock" => Cmd::Munlock(a.expr("ADDR")?, a.expr("LEN")?),
        "store" => Cmd::Store(a.expr("ADDR")?, a.data()?),
        "fill" => Cmd::Fill(a.expr("ADDR")?, a.expr("LEN")?, a.data()?),
        "load" => Cmd::Load(a.expr("ADDR")?, a.expr("LEN")?),
        "copy" => Cmd::Copy(a.expr("SRC")?, a.expr("DST")?, a.expr("LEN")?),
        "compare" => Cmd::Compare(a.expr("ADDR")?, a.expr("LEN")?, a.data()?),
        "fetch" => Cmd::Fetch(a.expr("ADDR")?),
        "cat" => Cmd::Cat(a.word("PATH")?),
        "tlb" => Cmd::Tlb,
        "ps" => Cmd::Ps,
        "echo" => {
            let mut words = Vec::new();
            while a.more() {
                words.push(a.word("WORD")?);
            }
            Cmd::Echo(words)
        }
        _ => Cmd::Help,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_vars(_: &str) -> Option<Value> {
        None
    }

    fn vars(name: &str) -> Option<Value> {
        match name {
            "heap" => Some(Value {
                v: 0x5555_0000,
                hex: true,
            }),
            "n" => Some(Value { v: 3, hex: false }),
            _ => None,
        }
    }

    fn line(text: &str) -> Line {
        match parse_line(text) {
            Ok(Some(l)) => l,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    /// The error for `text`: (column, width, message).
    fn error(text: &str) -> (usize, usize, String) {
        match parse_line(text) {
            Err(e) => (e.span.col, e.span.len, e.msg),
            Ok(l) => panic!("{text:?} parsed: {l:?}"),
        }
    }

    fn value(text: &str) -> Result<i128, LineError> {
        let e = parse_expr_word(text, Span::new(1, text.len()))?;
        e.eval(&vars)
    }

    #[test]
    fn numbers() {
        for (text, v) in [
            ("0", 0),
            ("4096", 4096),
            ("0x1000", 0x1000),
            ("0XfF", 255),
            ("64K", 64 << 10),
            ("64k", 64 << 10),
            ("2M", 2 << 20),
            ("1G", 1 << 30),
            ("1T", 1 << 40),
            ("0x10K", 0x4000),
            ("1_000_000", 1_000_000),
            ("NULL", 0),
            ("18446744073709551615", u64::MAX as i128),
            ("0xffffffffffffffff", u64::MAX as i128),
        ] {
            assert_eq!(value(text), Ok(v), "{text}");
        }
        for text in [
            "12Q",
            "0x",
            "0xg",
            "1__",
            "_1",
            "18446744073709551616",
            "16777216T",
            "K",
            "nul",
        ] {
            assert!(value(text).is_err(), "{text}");
        }
    }

    #[test]
    fn expressions() {
        for (text, v) in [
            ("$heap+0x1000", 0x5555_1000),
            ("$heap-4K", 0x5555_0000 - 4096),
            ("2+3*4", 14),
            ("(2+3)*4", 20),
            ("-1", -1),
            ("--1", 1),
            ("$n*4K", 12288),
            ("$heap+$n*$n", 0x5555_0009),
        ] {
            assert_eq!(value(text), Ok(v), "{text}");
        }
        let e = parse_expr_word("-1", Span::new(1, 2)).unwrap();
        assert_eq!(e.u64(&no_vars), Ok(u64::MAX));
        let big = parse_expr_word("0xffffffffffffffff*2", Span::new(1, 20)).unwrap();
        assert!(big.eval(&no_vars).is_err());
        let huge = parse_expr_word("4G*4G*4G*4G*4G", Span::new(1, 14)).unwrap();
        assert!(huge.eval(&no_vars).is_err());
        let hex = parse_expr_word("$heap+1", Span::new(1, 7)).unwrap();
        assert!(hex.hexish(&vars));
        let dec = parse_expr_word("$n+1", Span::new(1, 4)).unwrap();
        assert!(!dec.hexish(&vars));
    }

    #[test]
    fn expression_errors_point_at_the_fault() {
        let (col, len, msg) = error("munmap $heap+ 4K");
        assert_eq!((col, len), (14, 1), "{msg}");
        let (col, _, msg) = error("munmap 1+(2 4K");
        assert_eq!(col, 10, "{msg}");
        assert!(msg.contains("not closed"));
        let (col, len, msg) = error("munmap 0x1000 12Q");
        assert_eq!((col, len), (15, 3));
        assert!(msg.contains("'12Q' is not a number"), "{msg}");
        let (col, _, msg) = error("munmap $ 4K");
        assert_eq!(col, 8);
        assert!(msg.contains("variable name"), "{msg}");
        let (col, _, msg) = error("munmap $heap + 4K");
        assert_eq!(col, 14);
        assert!(msg.contains("without spaces"), "{msg}");
        let (col, _, _) = error("munmap 4K/2 1");
        assert_eq!(col, 10);
    }

    #[test]
    fn variables_are_reported_where_they_are_used() {
        let l = line("munmap $heap+4K $len");
        let Cmd::Munmap(a, b) = &l.cmd else { panic!() };
        assert_eq!(a.eval(&vars), Ok(0x5555_1000));
        let e = b.eval(&vars).unwrap_err();
        assert_eq!((e.span.col, e.span.len), (17, 4));
        assert_eq!(e.msg, "$len is not set");
    }

    #[test]
    fn blank_and_comment_lines_are_nothing() {
        for text in ["", "   ", "\t", "# a comment", "   # indented comment"] {
            assert_eq!(parse_line(text), Ok(None), "{text:?}");
        }
        let l = line("fork # make a child");
        assert_eq!(l.cmd, Cmd::Fork);
    }

    #[test]
    fn strings_and_escapes() {
        let l = line(r#"store 0x1000 "hi there\n" "\x00\xff\"\\" u16:0x4142 0x43"#);
        let Cmd::Store(_, data) = &l.cmd else {
            panic!()
        };
        let mut bytes = Vec::new();
        for d in data {
            d.bytes(&no_vars, &mut bytes).unwrap();
        }
        assert_eq!(bytes, b"hi there\n\x00\xff\"\\\x42\x41\x43");
        let l = line("store 0x1000 \"# not a comment\" # a comment");
        let Cmd::Store(_, data) = &l.cmd else {
            panic!()
        };
        assert_eq!(data, &[Data::Bytes(b"# not a comment".to_vec())]);
        let l = line("store 0x1000 \"héllo\"");
        let Cmd::Store(_, data) = &l.cmd else {
            panic!()
        };
        assert_eq!(data, &[Data::Bytes("héllo".as_bytes().to_vec())]);
    }

    #[test]
    fn string_errors() {
        assert_eq!(error("store 1 \"abc").0, 9);
        assert!(error("store 1 \"abc").2.contains("no closing quote"));
        let (col, len, msg) = error(r#"store 1 "a\qb""#);
        assert_eq!((col, len), (11, 2), "{msg}");
        assert_eq!(error(r#"store 1 "\x4""#).0, 10);
        assert_eq!(error(r#"store 1 "ab"cd"#).0, 13);
        assert_eq!(error(r#"store 1 ab"cd""#).0, 11);
        assert_eq!(error("store 1 \"ab\\").0, 9);
    }

    #[test]
    fn data_values_must_fit() {
        let l = line("store 0 256 u8:256 u16:-1 u64:-1 u32:0x100000000");
        let Cmd::Store(_, data) = &l.cmd else {
            panic!()
        };
        let errs: Vec<bool> = data
            .iter()
            .map(|d| d.bytes(&no_vars, &mut Vec::new()).is_err())
            .collect();
        assert_eq!(errs, [true, true, false, false, true]);
        let mut b = Vec::new();
        data[2].bytes(&no_vars, &mut b).unwrap();
        assert_eq!(b, [0xff, 0xff]);
        assert!(error("store 0 abc").2.contains("expected data"));
        assert!(error("store 0").2.contains("missing DATA"));
    }

    #[test]
    fn mmap_and_its_flags() {
        let l = line("$p = mmap NULL 64K rw- private,anonymous");
        assert_eq!(l.bind, Some(("p".to_string(), Span::new(1, 2))));
        let Cmd::Mmap {
            addr,
            len,
            prot,
            flags,
            fd,
            offset,
        } = &l.cmd
        else {
            panic!()
        };
        assert_eq!(addr.eval(&no_vars), Ok(0));
        assert_eq!(len.eval(&no_vars), Ok(65536));
        assert_eq!(prot, &Bits::Fixed(3));
        assert_eq!(flags, &Bits::Fixed(0x22));
        assert!(fd.is_none() && offset.is_none());
        let l = line("mmap 0x1000 4K PROT_READ|PROT_EXEC MAP_SHARED|MAP_FIXED $fd 0x2000");
        let Cmd::Mmap {
            prot,
            flags,
            fd,
            offset,
            ..
        } = &l.cmd
        else {
            panic!()
        };
        assert_eq!(prot, &Bits::Fixed(5));
        assert_eq!(flags, &Bits::Fixed(0x11));
        assert!(fd.is_some());
        assert_eq!(offset.as_ref().unwrap().eval(&no_vars), Ok(0x2000));
        for (p, v) in [
            ("none", 0),
            ("---", 0),
            ("r-x", 5),
            ("rwx", 7),
            ("x", 4),
            ("read,write", 3),
            ("7", 7),
        ] {
            let Cmd::Mprotect(_, _, b) = line(&format!("mprotect 0 4K {p}")).cmd else {
                panic!()
            };
            assert_eq!(b.value(&no_vars), Ok(v), "{p}");
        }
        let (col, len, msg) = error("mmap NULL 4K rw private,anonymos");
        assert_eq!((col, len), (25, 8), "{msg}");
        assert!(msg.contains("unknown mmap flag 'anonymos'"), "{msg}");
        let (col, _, msg) = error("mprotect 0 4K rww");
        assert_eq!(col, 17, "{msg}");
        let (col, _, msg) = error("mmap NULL 4K rw");
        assert_eq!(col, 16);
        assert!(
            msg.contains("missing FLAGS (usage: mmap ADDR LEN PROT FLAGS [FD [OFFSET]])"),
            "{msg}"
        );
        assert!(error("mmap NULL 4K rw private,,anon")
            .2
            .contains("empty name"));
    }

    #[test]
    fn mremap_and_madvise() {
        let l = line("$q = mremap $p 4K 8K maymove fixed 0x10000000");
        let Cmd::Mremap {
            flags, new_addr, ..
        } = &l.cmd
        else {
            panic!()
        };
        assert_eq!(*flags, 3);
        assert!(new_addr.is_some());
        assert!(error("mremap 1 2 3 fixed").2.contains("missing NEW_ADDR"));
        assert!(error("mremap 1 2 3 maymove maymove").2.contains("twice"));
        let Cmd::Madvise(_, _, b) = line("madvise 0 4K dontneed").cmd else {
            panic!()
        };
        assert_eq!(b, Bits::Fixed(4));
        let Cmd::Madvise(_, _, b) = line("madvise 0 4K MADV_DOFORK").cmd else {
            panic!()
        };
        assert_eq!(b, Bits::Fixed(11));
        assert!(error("madvise 0 4K dontneeed").2.contains("unknown advice"));
    }

    #[test]
    fn bindings() {
        for text in ["$p = fork", "$p=fork", "$p =fork", "$p= fork"] {
            let l = line(text);
            assert_eq!(l.bind.unwrap().0, "p", "{text}");
            assert_eq!(l.cmd, Cmd::Fork, "{text}");
        }
        assert_eq!(line("$p =fork").span, Span::new(5, 4));
        assert_eq!(line("$p=fork").span, Span::new(4, 4));
        let l = line("$len = 16K+$n");
        assert_eq!(l.name, "=");
        let Cmd::Value(e) = &l.cmd else { panic!() };
        assert_eq!(e.eval(&vars), Ok(16387));
        let (col, _, msg) = error("$x = munmap 0 4K");
        assert_eq!(col, 1);
        assert!(msg.contains("gives no value"), "{msg}");
        assert!(error("$pid = fork").2.contains("built in"));
        assert!(error("$ = fork").2.contains("variable name"));
        assert!(error("$p fork").2.contains("a value alone"));
        assert!(error("$p =").2.contains("expected a command"));
        assert!(error("$x = load 0 16").2.contains("1 to 8 bytes"));
        assert!(error("$x = 1 + 2").2.contains("without spaces"));
        let l = line("$x = load $p 8");
        assert!(matches!(l.cmd, Cmd::Load(..)));
    }

    #[test]
    fn expectations() {
        let l = line("mmap NULL 1T rw private,anonymous expect ENOMEM");
        assert_eq!(
            l.expect,
            Some((Expect::Errno(Errno::ENOMEM), Span::new(35, 13)))
        );
        assert_eq!(line("fork expect-ok").expect.unwrap().0, Expect::Ok);
        assert_eq!(line("fork expect ok").expect.unwrap().0, Expect::Ok);
        assert_eq!(
            line("store 0 1 expect sigsegv").expect.unwrap().0,
            Expect::Signal("SIGSEGV")
        );
        let (col, _, msg) = error("mmap NULL 4K rw private expect");
        assert_eq!(col, 32);
        assert!(msg.contains("expect what"), "{msg}");
        assert!(error("fork expect ENOPE").2.contains("ENOMEM"));
        assert!(error("fork expect ok now")
            .2
            .contains("after the expectation"));
        assert!(error("echo hi expect ok").2.contains("nothing to expect"));
        // `expect` ends the arguments, so a missing one is reported before it.
        let (col, _, msg) = error("munmap 0 expect EINVAL");
        assert_eq!(col, 10);
        assert!(msg.contains("missing LEN"), "{msg}");
        // Quoted, it is an argument.
        let Cmd::Exec(_, args) = line("exec /bin/echo \"expect\"").cmd else {
            panic!()
        };
        assert_eq!(args.len(), 1);
    }

    #[test]
    fn words_and_paths() {
        let Cmd::Cat(w) = line("cat /proc/$n/smaps").cmd else {
            panic!()
        };
        assert_eq!(w.text(&vars), Ok("/proc/3/smaps".to_string()));
        let Cmd::Echo(ws) = line("echo heap at $heap, \"$heap\" $nope").cmd else {
            panic!()
        };
        assert_eq!(ws[2].text(&vars), Ok("0x55550000,".to_string()));
        assert_eq!(ws[3].text(&vars), Ok("$heap".to_string()));
        let e = ws[4].text(&vars).unwrap_err();
        assert_eq!(e.span, Span::new(29, 5));
        let Cmd::Exec(p, args) = line("exec /bin/ls -l \"a b\"").cmd else {
            panic!()
        };
        assert_eq!(p.text(&no_vars), Ok("/bin/ls".into()));
        assert_eq!(args.len(), 2);
        assert_eq!(args[1].text(&no_vars), Ok("a b".into()));
        assert!(error("cat /proc/$/maps").2.contains("variable name"));
        assert!(error("exec \"\\xff\"").2.contains("UTF-8"));
    }

    #[test]
    fn command_errors() {
        let (col, len, msg) = error("  mmpa NULL 4K");
        assert_eq!((col, len), (3, 4));
        assert!(msg.contains("did you mean 'mmap'"), "{msg}");
        assert!(error("frobnicate").2.contains("try 'help'"));
        let (col, _, msg) = error("fork now");
        assert_eq!(col, 6);
        assert!(msg.contains("unexpected argument (usage: fork)"), "{msg}");
        assert!(error("\"fork\"").2.contains("not a string"));
        assert!(error("open /etc/passwd wo").2.contains("ro or rw"));
        assert!(error("munmap \"a\" 1").2.contains("not a string"));
        assert!(error("mprotect 0 4K \"r\"").2.contains("not a string"));
        let (col, _, _) = error("\tmunmap\t0x1000\t4K\tx");
        assert_eq!(col, 19);
    }

    #[test]
    fn every_command_parses() {
        for text in [
            "spawn init",
            "exec /bin/ls -l",
            "fork",
            "switch 3",
            "exit",
            "exit 1",
            "cpu 1",
            "open /etc/os-release",
            "open /tmp/x rw",
            "close 3",
            "munmap 0x1000 4K",
            "mlock 0x1000 4K",
            "munlock 0x1000 4K",
            "brk",
            "brk $heap+4K",
            "sbrk -4K",
            "fill 0x1000 4K 0xaa",
            "fill 0x1000 4K \"ab\" 0",
            "load 0x1000 64",
            "copy 0x1000 0x2000 4K",
            "compare 0x1000 4K 0",
            "fetch 0x1000",
            "cat /proc/self/maps",
            "tlb",
            "ps",
            "echo",
            "help",
        ] {
            let l = line(text);
            assert_eq!(l.name, text.split(' ').next().unwrap());
        }
        assert_eq!(COMMANDS.len(), 28);
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let (col, _, _) = error("echo \"ü\" x\"y\"");
        assert_eq!(col, 11);
    }

    #[test]
    fn suggestions_are_close() {
        assert_eq!(suggest("mmpa"), Some("mmap"));
        assert_eq!(suggest("forkk"), Some("fork"));
        assert_eq!(suggest("xyzzy"), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
