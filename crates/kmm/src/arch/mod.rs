//! Architecture facts: zone limits, the kernel's virtual memory layout and the
//! kernel image, per profile (`arch/x86/include/asm/`). Nothing outside this
//! module hard-codes an address of either profile.

pub mod e820;
pub mod init;
pub mod pgtable_x86;
pub mod pgtable_x86_64;
pub mod x86;
pub mod x86_64;

use crate::mmzone::ZoneType;
use crate::pgtable::PagingFormat;

/// One CPU architecture as the memory manager sees it.
#[derive(Debug)]
pub struct Arch {
    /// Profile name, as given on the command line (`x86`, `x86_64`).
    pub name: &'static str,
    /// Width of a virtual address, 32 or 64.
    pub bits: u32,
    /// `PAGE_OFFSET`: where the direct map of physical memory starts.
    pub page_offset: u64,
    /// The zones this configuration has, in `enum zone_type` order.
    pub zones: &'static [ZoneType],
    /// `MAX_DMA_ADDRESS` as a physical address: the end of ZONE_DMA.
    pub max_dma: u64,
    /// End of ZONE_DMA32 (`MAX_DMA32_PFN << PAGE_SHIFT`), if the profile has it.
    pub max_dma32: Option<u64>,
    /// End of directly mapped low memory (`MAXMEM`), where ZONE_HIGHMEM starts.
    pub max_lowmem: Option<u64>,
    /// Where the direct map ends as a physical address: `max_lowmem`, or
    /// `max_phys` on a profile without high memory.
    pub direct_map_end: u64,
    /// `ARCH_LOW_ADDRESS_LIMIT` for `alloc_bootmem_low*`.
    pub bootmem_low_limit: u64,
    /// Largest physical address this profile can address.
    pub max_phys: u64,
    /// `CONFIG_PHYSICAL_START`: where the kernel image is loaded.
    pub kernel_start: u64,
    /// Kernel image sections in KiB: code, rwdata, rodata, init, bss.
    pub kernel_sections_k: [u64; 5],
}

impl Arch {
    /// Looks a profile up by name.
    pub fn by_name(name: &str) -> Option<&'static Arch> {
        match name {
            "x86" | "i386" => Some(&x86::X86),
            "x86_64" | "x86-64" | "amd64" => Some(&x86_64::X86_64),
            _ => None,
        }
    }

    /// The page-table formats this profile can run with, the default first
    /// (`CONFIG_PGTABLE_LEVELS`): two-level then PAE on `x86`, four-level then
    /// five-level on `x86_64`.
    pub fn paging_formats(&self) -> &'static [&'static dyn PagingFormat] {
        static X86_FORMATS: [&dyn PagingFormat; 2] =
            [&pgtable_x86::X86_2LEVEL, &pgtable_x86::X86_PAE];
        static X86_64_FORMATS: [&dyn PagingFormat; 2] = [
            &pgtable_x86_64::X86_64_4LEVEL,
            &pgtable_x86_64::X86_64_5LEVEL,
        ];
        if self.bits == 32 {
            &X86_FORMATS
        } else {
            &X86_64_FORMATS
        }
    }

    /// Number of zones per node (`MAX_NR_ZONES`).
    pub fn nr_zones(&self) -> usize {
        self.zones.len()
    }

    /// `gfp_zone()`'s answer as an index: the highest zone a request for `zt`
    /// may use. A zone the profile lacks maps to ZONE_NORMAL, as Linux's
    /// `OPT_ZONE_*` macros do.
    #[inline]
    pub fn zone_index(&self, zt: ZoneType) -> usize {
        self.zones
            .iter()
            .position(|&z| z == zt)
            .or_else(|| self.zones.iter().position(|&z| z == ZoneType::Normal))
            .unwrap_or(0)
    }

    /// Physical address range `[start, end)` a zone may cover, before it is
    /// intersected with a node (`arch_zone_lowest/highest_possible_pfn`).
    pub fn zone_limits(&self, zidx: usize, max_phys_addr: u64) -> (u64, u64) {
        let mut start = 0;
        for (i, &zt) in self.zones.iter().enumerate() {
            let end = match zt {
                ZoneType::Dma => self.max_dma,
                ZoneType::Dma32 => self.max_dma32.unwrap_or(self.max_dma),
                ZoneType::Normal => self.max_lowmem.unwrap_or(u64::MAX),
                ZoneType::HighMem => u64::MAX,
                ZoneType::Movable => start,
            }
            .min(max_phys_addr)
            .max(start);
            if i == zidx {
                return (start, end);
            }
            start = end;
        }
        (start, start)
    }

    /// True when the direct map covers physical address `phys` (not highmem).
    pub fn is_lowmem(&self, phys: u64) -> bool {
        self.max_lowmem.is_none_or(|m| phys < m)
    }

    /// `__va()`: the direct-map virtual address of a low-memory physical address.
    pub fn phys_to_virt(&self, phys: u64) -> u64 {
        self.page_offset.wrapping_add(phys)
    }

    /// `__pa()`: the physical address behind a direct-map virtual address.
    #[inline]
    pub fn virt_to_phys(&self, virt: u64) -> Option<u64> {
        let phys = virt.checked_sub(self.page_offset)?;
        (phys < self.direct_map_end).then_some(phys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_direct_map_ends_at_high_memory_or_the_last_address() {
        for arch in [&x86::X86, &x86_64::X86_64] {
            let end = arch.max_lowmem.unwrap_or(arch.max_phys);
            assert_eq!(arch.direct_map_end, end, "{}", arch.name);
            assert_eq!(arch.virt_to_phys(arch.page_offset + end - 1), Some(end - 1));
            assert_eq!(arch.virt_to_phys(arch.page_offset + end), None);
            assert_eq!(arch.virt_to_phys(arch.page_offset - 1), None);
        }
    }
}
