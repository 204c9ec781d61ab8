//! 32-bit x86 with the 3G/1G split and high memory (`arch/x86/include/asm/page_32_types.h`).

use super::Arch;
use crate::mmzone::ZoneType;

/// The `x86` profile: ZONE_DMA below 16 MiB, ZONE_NORMAL to 896 MiB
/// (`MAXMEM` = 1 GiB of kernel space less a 128 MiB vmalloc reserve),
/// ZONE_HIGHMEM above; `PAGE_OFFSET` = 0xC0000000. Physical addresses up to
/// 64 GiB, as with PAE.
pub static X86: Arch = Arch {
    name: "x86",
    bits: 32,
    page_offset: 0xC000_0000,
    zones: &[
        ZoneType::Dma,
        ZoneType::Normal,
        ZoneType::HighMem,
        ZoneType::Movable,
    ],
    max_dma: 16 << 20,
    max_dma32: None,
    max_lowmem: Some(896 << 20),
    // On 32-bit x86 every boot-time allocation is already low memory; the
    // `_low` variants keep a buffer DMA-able, below MAX_DMA_ADDRESS.
    // max_lowmem, or max_phys without high memory.
    direct_map_end: 896 << 20,
    bootmem_low_limit: 16 << 20,
    max_phys: 64 << 30,
    kernel_start: 0x100_0000,
    kernel_sections_k: [8192, 1024, 2048, 1024, 1024],
};
