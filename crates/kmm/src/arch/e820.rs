//! The firmware memory map: `arch/x86/kernel/e820.c`.

use core::fmt;

/// `enum e820_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E820Type {
    /// `E820_TYPE_RAM`: usable RAM.
    Ram,
    /// `E820_TYPE_RESERVED`: firmware, BIOS ROM, chipset holes.
    Reserved,
    /// `E820_TYPE_ACPI`: ACPI tables, reclaimable after boot.
    Acpi,
    /// `E820_TYPE_NVS`: ACPI non-volatile storage.
    Nvs,
}

impl E820Type {
    /// The word Linux prints for the type.
    pub const fn name(self) -> &'static str {
        match self {
            E820Type::Ram => "usable",
            E820Type::Reserved => "reserved",
            E820Type::Acpi => "ACPI data",
            E820Type::Nvs => "ACPI NVS",
        }
    }
}

/// `struct e820_entry`: one range of the firmware map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: E820Type,
}

impl E820Entry {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.addr + self.size
    }
}

/// Prints a range as Linux's `[mem %#018Lx-%#018Lx]`.
pub struct MemRange(pub u64, pub u64);

impl fmt::Display for MemRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[mem {:#018x}-{:#018x}]",
            self.0,
            self.1.saturating_sub(1)
        )
    }
}
