//! Reading ELF executables for `execve` (`fs/binfmt_elf.c`'s header checks
//! and load plan; the mapping itself is in [`crate::process`]).
//!
//! Only what the loader needs is decoded: the file header (class, type,
//! machine, entry point) and the program headers (`PT_LOAD` segments and
//! `PT_INTERP`), for 64-bit x86_64 and 32-bit i386 little-endian files.

use std::fmt;

/// `PT_LOAD`.
pub const PT_LOAD: u32 = 1;
/// `PT_INTERP`.
pub const PT_INTERP: u32 = 3;
/// `PF_X`.
pub const PF_X: u32 = 1;
/// `PF_W`.
pub const PF_W: u32 = 2;
/// `PF_R`.
pub const PF_R: u32 = 4;
/// `ET_EXEC`: a fixed-address executable.
pub const ET_EXEC: u16 = 2;
/// `ET_DYN`: position independent (PIE or shared object).
pub const ET_DYN: u16 = 3;
/// `EM_386`.
pub const EM_386: u16 = 3;
/// `EM_X86_64`.
pub const EM_X86_64: u16 = 62;

/// One program header (`Elf64_Phdr` / `Elf32_Phdr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramHeader {
    /// `p_type`.
    pub p_type: u32,
    /// `p_flags` (`PF_R`, `PF_W`, `PF_X`).
    pub p_flags: u32,
    /// `p_offset`: where the segment starts in the file.
    pub p_offset: u64,
    /// `p_vaddr`.
    pub p_vaddr: u64,
    /// `p_filesz`: bytes in the file.
    pub p_filesz: u64,
    /// `p_memsz`: bytes in memory (the rest is bss, zero).
    pub p_memsz: u64,
    /// `p_align`.
    pub p_align: u64,
}

/// A parsed ELF file: header fields and program headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Elf {
    /// 64-bit (`ELFCLASS64`) or 32-bit.
    pub is_64: bool,
    /// `e_type`.
    pub e_type: u16,
    /// `e_machine`.
    pub e_machine: u16,
    /// `e_entry`.
    pub e_entry: u64,
    /// `e_phoff`.
    pub e_phoff: u64,
    /// `e_phnum`.
    pub e_phnum: u16,
    /// The program headers.
    pub phdrs: Vec<ProgramHeader>,
    /// The interpreter path of `PT_INTERP` (`/lib64/ld-linux-x86-64.so.2`).
    pub interp: Option<String>,
}

/// Why a file is not an executable the loader takes (`-ENOEXEC`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfError(pub String);

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ElfError {}

fn bad(what: &str) -> ElfError {
    ElfError(what.to_string())
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, ElfError> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| bad("truncated ELF header"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, ElfError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| bad("truncated ELF header"))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, ElfError> {
    b.get(at..at + 8)
        .map(|s| {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_le_bytes(a)
        })
        .ok_or_else(|| bad("truncated ELF header"))
}

/// Most program headers a file may have (`ELF_MIN_ALIGN`-sized table in
/// Linux: 64 KiB of headers).
const MAX_PHNUM: u16 = 1024;

impl Elf {
    /// Parses the header and program headers of `file` (its first bytes
    /// suffice when they hold the program-header table). `read_at` reads
    /// the interpreter name wherever it is.
    pub fn parse(
        head: &[u8],
        read_at: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<usize>,
    ) -> Result<Elf, ElfError> {
        if head.len() < 16 || &head[..4] != b"\x7fELF" {
            return Err(bad("not an ELF file (bad magic)"));
        }
        let is_64 = match head[4] {
            1 => false,
            2 => true,
            _ => return Err(bad("bad ELF class")),
        };
        if head[5] != 1 {
            return Err(bad("not a little-endian ELF file"));
        }
        let e_type = u16_at(head, 16)?;
        let e_machine = u16_at(head, 18)?;
        let (e_entry, e_phoff, e_phentsize, e_phnum) = if is_64 {
            (
                u64_at(head, 24)?,
                u64_at(head, 32)?,
                u16_at(head, 54)?,
                u16_at(head, 56)?,
            )
        } else {
            (
                u64::from(u32_at(head, 24)?),
                u64::from(u32_at(head, 28)?),
                u16_at(head, 42)?,
                u16_at(head, 44)?,
            )
        };
        if e_type != ET_EXEC && e_type != ET_DYN {
            return Err(bad("not an executable or shared object (e_type)"));
        }
        let want = if is_64 { 56 } else { 32 };
        if e_phentsize != want || e_phnum == 0 || e_phnum > MAX_PHNUM {
            return Err(bad("bad program header table"));
        }
        let table_len = usize::from(e_phnum) * usize::from(want);
        let mut table = vec![0u8; table_len];
        let got = read_at(e_phoff, &mut table).map_err(|e| ElfError(e.to_string()))?;
        if got < table_len {
            return Err(bad("program header table past the end of the file"));
        }
        let mut phdrs = Vec::with_capacity(usize::from(e_phnum));
        for i in 0..usize::from(e_phnum) {
            let b = &table[i * usize::from(want)..];
            let ph = if is_64 {
                ProgramHeader {
                    p_type: u32_at(b, 0)?,
                    p_flags: u32_at(b, 4)?,
                    p_offset: u64_at(b, 8)?,
                    p_vaddr: u64_at(b, 16)?,
                    p_filesz: u64_at(b, 32)?,
                    p_memsz: u64_at(b, 40)?,
                    p_align: u64_at(b, 48)?,
                }
            } else {
                ProgramHeader {
                    p_type: u32_at(b, 0)?,
                    p_offset: u64::from(u32_at(b, 4)?),
                    p_vaddr: u64::from(u32_at(b, 8)?),
                    p_filesz: u64::from(u32_at(b, 16)?),
                    p_memsz: u64::from(u32_at(b, 20)?),
                    p_flags: u32_at(b, 24)?,
                    p_align: u64::from(u32_at(b, 28)?),
                }
            };
            if ph.p_type == PT_LOAD && ph.p_filesz > ph.p_memsz {
                return Err(bad("PT_LOAD segment with p_filesz > p_memsz"));
            }
            phdrs.push(ph);
        }
        let mut interp = None;
        if let Some(ph) = phdrs.iter().find(|p| p.p_type == PT_INTERP) {
            if ph.p_filesz < 2 || ph.p_filesz > 4096 {
                return Err(bad("bad PT_INTERP"));
            }
            let mut name = vec![0u8; ph.p_filesz as usize];
            let got = read_at(ph.p_offset, &mut name).map_err(|e| ElfError(e.to_string()))?;
            if got < name.len() || name.last() != Some(&0) {
                return Err(bad("PT_INTERP name is not NUL-terminated"));
            }
            name.pop();
            interp = Some(String::from_utf8(name).map_err(|_| bad("PT_INTERP name is not UTF-8"))?);
        }
        if !phdrs.iter().any(|p| p.p_type == PT_LOAD) {
            return Err(bad("no PT_LOAD segment"));
        }
        Ok(Elf {
            is_64,
            e_type,
            e_machine,
            e_entry,
            e_phoff,
            e_phnum,
            phdrs,
            interp,
        })
    }

    /// The `PT_LOAD` segments in file order.
    pub fn loads(&self) -> impl Iterator<Item = &ProgramHeader> {
        self.phdrs.iter().filter(|p| p.p_type == PT_LOAD)
    }

    /// `total_mapping_size()`: from the first segment's page to the end of
    /// the last one.
    pub fn total_mapping_size(&self, page: u64) -> u64 {
        let first = self.loads().map(|p| p.p_vaddr).min().unwrap_or(0) & !(page - 1);
        let last = self
            .loads()
            .map(|p| p.p_vaddr + p.p_memsz)
            .max()
            .unwrap_or(0);
        last.saturating_sub(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_file(path: &str) -> Option<Vec<u8>> {
        std::fs::read(path).ok()
    }

    #[test]
    fn parses_the_hosts_ls() {
        let Some(bytes) = read_file("/bin/ls") else {
            return;
        };
        let elf = Elf::parse(&bytes, &mut |off, buf| {
            let off = off as usize;
            let n = buf.len().min(bytes.len().saturating_sub(off));
            buf[..n].copy_from_slice(&bytes[off..off + n]);
            Ok(n)
        })
        .unwrap();
        assert!(elf.is_64);
        assert_eq!(elf.e_machine, EM_X86_64);
        assert!(elf.loads().count() >= 2);
        assert!(elf.loads().any(|p| p.p_flags & PF_X != 0));
        if elf.e_type == ET_DYN {
            assert!(elf.interp.as_deref().unwrap_or("").contains("ld-linux"));
        }
    }

    #[test]
    fn refuses_what_is_not_elf() {
        let mut none = |_: u64, _: &mut [u8]| Ok(0);
        assert!(Elf::parse(b"#!/bin/sh\necho hi\n", &mut none).is_err());
        assert!(Elf::parse(b"\x7fELF", &mut none).is_err());
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[16] = 1; // ET_REL
        assert!(Elf::parse(&h, &mut none).is_err());
    }
}
