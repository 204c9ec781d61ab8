//! 64-bit x86 with four-level paging (`arch/x86/include/asm/page_64_types.h`).

use super::Arch;
use crate::mmzone::ZoneType;

/// The `x86_64` profile: ZONE_DMA below 16 MiB, ZONE_DMA32 below 4 GiB,
/// ZONE_NORMAL above; the direct map starts at `0xffff888000000000`.
pub static X86_64: Arch = Arch {
    name: "x86_64",
    bits: 64,
    page_offset: 0xffff_8880_0000_0000,
    zones: &[
        ZoneType::Dma,
        ZoneType::Dma32,
        ZoneType::Normal,
        ZoneType::Movable,
    ],
    max_dma: 16 << 20,
    max_dma32: Some(4 << 30),
    max_lowmem: None,
    // ARCH_LOW_ADDRESS_LIMIT: memblock_alloc_low() stays below 4 GiB.
    // max_lowmem, or max_phys without high memory.
    direct_map_end: 1 << 46,
    bootmem_low_limit: 4 << 30,
    max_phys: 1 << 46,
    kernel_start: 0x100_0000,
    kernel_sections_k: [16384, 2560, 6144, 2816, 3072],
};
