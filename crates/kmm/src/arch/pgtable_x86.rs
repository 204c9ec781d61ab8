//! 32-bit x86 page-table formats: classic two-level paging
//! (`arch/x86/include/asm/pgtable-2level*.h`) and PAE three-level paging
//! (`pgtable-3level*.h`), plus the entry bits both share with x86_64
//! (`asm/pgtable_types.h`).

use crate::pgtable::{Entry, PagingFormat, PteFlags};

/// `_PAGE_BIT_PSE`: in a PMD/PUD (or two-level PGD) entry, a large page.
pub const PAGE_PSE: u64 = 1 << 7;
/// The flag bits kmm stores at their hardware positions.
pub(crate) const X86_FLAGS: u64 = PteFlags::all().bits();

/// The shared x86 leaf encoding: frame field plus flags, PSE for large pages.
pub(crate) fn encode_leaf_bits(
    frame: u64,
    flags: PteFlags,
    fmt_flags: PteFlags,
    level: usize,
) -> u64 {
    let pse = if level > 0 { PAGE_PSE } else { 0 };
    frame | (flags & fmt_flags).bits() | pse
}

/// Flags of a raw x86 entry (bit 7 is PAT in a PTE and PSE above, never a flag).
pub(crate) fn decode_flags(raw: u64, fmt_flags: PteFlags) -> PteFlags {
    PteFlags::from_bits_truncate(raw & X86_FLAGS) & fmt_flags
}

/// What an x86 page walk sets: accessed in every entry it used, dirty in the
/// leaf of a write.
pub(crate) fn mark_bits(raw: u64, leaf: bool, write: bool) -> u64 {
    let mut raw = raw | PteFlags::ACCESSED.bits();
    if leaf && write {
        raw |= PteFlags::DIRTY.bits();
    }
    raw
}

/// Intermediate entries are permissive (`_PAGE_TABLE`: present, writable,
/// user, accessed); the leaf decides, as on Linux.
pub(crate) const PAGE_TABLE: u64 = 0x7 | (1 << 5);

/// Classic 32-bit paging: 4-byte entries, 1024 per table, PGD → PTE
/// (the PMD folded), 4 MiB pages with PSE (and PSE-36: frame bits 32..35 of
/// a large page in entry bits 13..16). No NX bit.
#[derive(Debug)]
pub struct X86TwoLevel;

/// The two-level format.
pub static X86_2LEVEL: X86TwoLevel = X86TwoLevel;

const TWO_LEVEL_FLAGS: PteFlags = PteFlags::all().difference(PteFlags::NO_EXEC);

impl PagingFormat for X86TwoLevel {
    fn name(&self) -> &'static str {
        "x86 2-level"
    }
    fn levels(&self) -> usize {
        2
    }
    fn entry_size(&self) -> u64 {
        4
    }
    fn entries(&self, _level: usize) -> usize {
        1024
    }
    fn shift(&self, level: usize) -> u32 {
        12 + 10 * level as u32
    }
    fn large_at(&self, level: usize) -> bool {
        level == 1
    }
    fn va_bits(&self) -> u32 {
        32
    }
    fn sign_extended(&self) -> bool {
        false
    }
    fn supported_flags(&self) -> PteFlags {
        TWO_LEVEL_FLAGS
    }
    fn level_name(&self, level: usize) -> &'static str {
        ["pte", "pgd"].get(level).copied().unwrap_or("?")
    }
    fn encode_leaf(&self, phys: u64, flags: PteFlags, level: usize) -> Option<u64> {
        let frame = if level == 0 {
            (phys >> 32 == 0).then_some(phys & 0xffff_f000)?
        } else {
            // PSE-36: bits 32..35 of the frame go to entry bits 13..16.
            (phys >> 36 == 0).then_some((phys & 0xffc0_0000) | ((phys >> 32) << 13))?
        };
        Some(encode_leaf_bits(frame, flags, TWO_LEVEL_FLAGS, level))
    }
    fn encode_table(&self, table: u64, _level: usize) -> Option<u64> {
        (table >> 32 == 0).then_some((table & 0xffff_f000) | PAGE_TABLE)
    }
    fn decode(&self, raw: u64, level: usize) -> Entry {
        let raw = raw & 0xffff_ffff;
        if raw & PteFlags::PRESENT.bits() == 0 {
            return Entry::None;
        }
        let flags = decode_flags(raw, TWO_LEVEL_FLAGS);
        match level {
            0 => Entry::Leaf {
                phys: raw & 0xffff_f000,
                flags,
            },
            _ if raw & PAGE_PSE != 0 => Entry::Leaf {
                phys: (raw & 0xffc0_0000) | (((raw >> 13) & 0xf) << 32),
                flags,
            },
            _ => Entry::Table(raw & 0xffff_f000),
        }
    }
    fn mark(&self, raw: u64, _level: usize, leaf: bool, write: bool) -> u64 {
        mark_bits(raw, leaf, write)
    }
}

/// PAE paging: 8-byte entries; a 4-entry PDPT (the PGD; Linux folds the PUD)
/// → PMD (512 entries, 2 MiB pages with PSE) → PTE (512 entries); NX in
/// bit 63; frames up to 52 bits. PDPT entries hold only the present bit and
/// the address (the others are reserved), and the walk sets no accessed bit
/// in them.
#[derive(Debug)]
pub struct X86Pae;

/// The PAE format.
pub static X86_PAE: X86Pae = X86Pae;

/// Physical frame bits 12..51 (`PTE_PFN_MASK` with `__PHYSICAL_MASK_SHIFT` 52).
pub(crate) const PFN_MASK_52: u64 = 0x000f_ffff_ffff_f000;

/// Leaf frame field of an 8-byte x86 entry at `level` (`shift` its page
/// shift), or `None` beyond 52 bits.
pub(crate) fn frame_64(phys: u64, shift: u32) -> Option<u64> {
    (phys & !PFN_MASK_52 == 0).then_some(phys & PFN_MASK_52 & !((1u64 << shift) - 1))
}

impl PagingFormat for X86Pae {
    fn name(&self) -> &'static str {
        "x86 PAE 3-level"
    }
    fn levels(&self) -> usize {
        3
    }
    fn entry_size(&self) -> u64 {
        8
    }
    fn entries(&self, level: usize) -> usize {
        if level == 2 {
            4
        } else {
            512
        }
    }
    fn shift(&self, level: usize) -> u32 {
        12 + 9 * level as u32
    }
    fn large_at(&self, level: usize) -> bool {
        level == 1
    }
    fn va_bits(&self) -> u32 {
        32
    }
    fn sign_extended(&self) -> bool {
        false
    }
    fn supported_flags(&self) -> PteFlags {
        PteFlags::all()
    }
    fn level_name(&self, level: usize) -> &'static str {
        ["pte", "pmd", "pgd"].get(level).copied().unwrap_or("?")
    }
    fn encode_leaf(&self, phys: u64, flags: PteFlags, level: usize) -> Option<u64> {
        if level == 2 {
            return None;
        }
        let frame = frame_64(phys, self.shift(level))?;
        Some(encode_leaf_bits(frame, flags, PteFlags::all(), level))
    }
    fn encode_table(&self, table: u64, level: usize) -> Option<u64> {
        let frame = frame_64(table, 12)?;
        Some(if level == 2 {
            frame | PteFlags::PRESENT.bits()
        } else {
            frame | PAGE_TABLE
        })
    }
    fn decode(&self, raw: u64, level: usize) -> Entry {
        decode_64(raw, level, 2, 1)
    }
    fn mark(&self, raw: u64, level: usize, leaf: bool, write: bool) -> u64 {
        if level == 2 {
            raw
        } else {
            mark_bits(raw, leaf, write)
        }
    }
}

/// Decodes an 8-byte x86 entry; levels `1..=max_large` may hold PSE leaves,
/// and `top` is the root level.
pub(crate) fn decode_64(raw: u64, level: usize, top: usize, max_large: usize) -> Entry {
    if raw & PteFlags::PRESENT.bits() == 0 {
        return Entry::None;
    }
    let flags = decode_flags(raw, PteFlags::all());
    if level == 0 {
        Entry::Leaf {
            phys: raw & PFN_MASK_52,
            flags,
        }
    } else if level <= max_large && level < top && raw & PAGE_PSE != 0 {
        let shift = 12 + 9 * level as u32;
        Entry::Leaf {
            phys: raw & PFN_MASK_52 & !((1u64 << shift) - 1),
            flags,
        }
    } else {
        Entry::Table(raw & PFN_MASK_52)
    }
}
