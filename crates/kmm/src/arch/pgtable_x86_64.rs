//! x86_64 page-table formats: four-level (`CONFIG_X86_4LEVEL`, 48-bit
//! addresses) and five-level (`CONFIG_X86_5LEVEL`, LA57, 57-bit addresses)
//! paging (`arch/x86/include/asm/pgtable_64_types.h`).
//!
//! 8-byte entries, 512 per table, 2 MiB pages in PMDs and 1 GiB pages in
//! PUDs (PSE), NX in bit 63, frames up to 52 bits; the entry bits are
//! shared with PAE ([`super::pgtable_x86`]).

use super::pgtable_x86::{decode_64, encode_leaf_bits, frame_64, mark_bits, PAGE_TABLE};
use crate::pgtable::{Entry, PagingFormat, PteFlags};

/// x86_64 paging with 4 or 5 levels.
#[derive(Debug)]
pub struct X86_64Paging {
    levels: usize,
}

/// Four-level paging: PGD → PUD → PMD → PTE (the P4D folded).
pub static X86_64_4LEVEL: X86_64Paging = X86_64Paging { levels: 4 };
/// Five-level paging: PGD → P4D → PUD → PMD → PTE.
pub static X86_64_5LEVEL: X86_64Paging = X86_64Paging { levels: 5 };

impl PagingFormat for X86_64Paging {
    fn name(&self) -> &'static str {
        if self.levels == 5 {
            "x86_64 5-level"
        } else {
            "x86_64 4-level"
        }
    }
    fn levels(&self) -> usize {
        self.levels
    }
    fn entry_size(&self) -> u64 {
        8
    }
    fn entries(&self, _level: usize) -> usize {
        512
    }
    fn shift(&self, level: usize) -> u32 {
        12 + 9 * level as u32
    }
    fn large_at(&self, level: usize) -> bool {
        level == 1 || level == 2
    }
    fn va_bits(&self) -> u32 {
        12 + 9 * self.levels as u32
    }
    fn sign_extended(&self) -> bool {
        true
    }
    fn supported_flags(&self) -> PteFlags {
        PteFlags::all()
    }
    fn level_name(&self, level: usize) -> &'static str {
        let names: &[&str] = if self.levels == 5 {
            &["pte", "pmd", "pud", "p4d", "pgd"]
        } else {
            &["pte", "pmd", "pud", "pgd"]
        };
        names.get(level).copied().unwrap_or("?")
    }
    fn encode_leaf(&self, phys: u64, flags: PteFlags, level: usize) -> Option<u64> {
        if level > 2 {
            return None;
        }
        let frame = frame_64(phys, self.shift(level))?;
        Some(encode_leaf_bits(frame, flags, PteFlags::all(), level))
    }
    fn encode_table(&self, table: u64, _level: usize) -> Option<u64> {
        Some(frame_64(table, 12)? | PAGE_TABLE)
    }
    fn decode(&self, raw: u64, level: usize) -> Entry {
        decode_64(raw, level, self.levels - 1, 2)
    }
    fn mark(&self, raw: u64, _level: usize, leaf: bool, write: bool) -> u64 {
        mark_bits(raw, leaf, write)
    }
}
