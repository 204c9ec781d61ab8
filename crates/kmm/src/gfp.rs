//! GFP ("get free pages") flags: `include/linux/gfp.h`.
//!
//! The flags are the ones the seeds (LKD ch. 12, LDD3 ch. 8) describe, with the
//! 2.6-era values. Three groups:
//!
//! * **zone modifiers** pick the highest zone the allocation may use
//!   (`__GFP_DMA`, `__GFP_DMA32`, `__GFP_HIGHMEM`);
//! * **action modifiers** say how hard the allocator may try;
//! * **type flags** are the usual combinations (`GFP_KERNEL`, `GFP_ATOMIC`, ...).
//!
//! Any bit pattern can be built with `|`, as in C, but the allocator checks the
//! mask before using it: [`GfpFlags::validate`] refuses the combinations Linux
//! treats as bugs (two zone modifiers, `__GFP_NOFAIL` with `__GFP_NORETRY` or
//! without `__GFP_WAIT`), so a bad mask is an error value, never a wrong zone.

use crate::error::KmmError;
use crate::mmzone::ZoneType;
use core::fmt;

bitflags::bitflags! {
    /// `gfp_t`: how an allocation may be satisfied.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct GfpFlags: u32 {
        /// `__GFP_DMA`: only from ZONE_DMA (the first 16 MiB on x86).
        const __GFP_DMA = 0x01;
        /// `__GFP_HIGHMEM`: may come from ZONE_HIGHMEM (or lower).
        const __GFP_HIGHMEM = 0x02;
        /// `__GFP_DMA32`: only below 4 GiB (ZONE_DMA32 or lower).
        const __GFP_DMA32 = 0x04;
        /// `__GFP_WAIT`: the caller may sleep (direct reclaim, retries).
        const __GFP_WAIT = 0x10;
        /// `__GFP_HIGH`: high priority; may use part of the emergency reserve.
        const __GFP_HIGH = 0x20;
        /// `__GFP_IO`: reclaim may start disk I/O.
        const __GFP_IO = 0x40;
        /// `__GFP_FS`: reclaim may call into file systems.
        const __GFP_FS = 0x80;
        /// `__GFP_COLD`: prefer a cache-cold page (the tail of the per-CPU list).
        const __GFP_COLD = 0x100;
        /// `__GFP_NOWARN`: do not print the allocation-failure warning.
        const __GFP_NOWARN = 0x200;
        /// `__GFP_REPEAT`: try harder (keep reclaiming for costly orders), may still fail.
        const __GFP_REPEAT = 0x400;
        /// `__GFP_NOFAIL`: never fail; retry forever.
        const __GFP_NOFAIL = 0x800;
        /// `__GFP_NORETRY`: give up after the first reclaim attempt.
        const __GFP_NORETRY = 0x1000;
        /// `__GFP_NO_GROW`: slab-internal: a cache may not take new pages.
        const __GFP_NO_GROW = 0x2000;
        /// `__GFP_COMP`: make a compound page (head + tails).
        const __GFP_COMP = 0x4000;
        /// `__GFP_ZERO`: return zero-filled memory.
        const __GFP_ZERO = 0x8000;
        /// `__GFP_HARDWALL`: respect the cpuset memory limits (user allocations).
        const __GFP_HARDWALL = 0x20000;

        /// `GFP_ATOMIC`: cannot sleep, high priority (interrupt handlers, spin locks held).
        const GFP_ATOMIC = Self::__GFP_HIGH.bits();
        /// `GFP_NOWAIT`: like `GFP_ATOMIC` but without touching the emergency reserve.
        const GFP_NOWAIT = 0;
        /// `GFP_NOIO`: may sleep, but must not start disk I/O.
        const GFP_NOIO = Self::__GFP_WAIT.bits();
        /// `GFP_NOFS`: may sleep and do I/O, but not call into file systems.
        const GFP_NOFS = Self::__GFP_WAIT.bits() | Self::__GFP_IO.bits();
        /// `GFP_KERNEL`: the normal kernel allocation; may sleep.
        const GFP_KERNEL = Self::__GFP_WAIT.bits() | Self::__GFP_IO.bits() | Self::__GFP_FS.bits();
        /// `GFP_USER`: memory for user space; may sleep.
        const GFP_USER = Self::GFP_KERNEL.bits() | Self::__GFP_HARDWALL.bits();
        /// `GFP_HIGHUSER`: user memory that may come from high memory.
        const GFP_HIGHUSER = Self::GFP_USER.bits() | Self::__GFP_HIGHMEM.bits();
        /// `GFP_DMA`: from ZONE_DMA; combine with `GFP_KERNEL` or `GFP_ATOMIC`.
        const GFP_DMA = Self::__GFP_DMA.bits();
    }
}

/// All bits that name a zone.
pub const GFP_ZONEMASK: GfpFlags = GfpFlags::__GFP_DMA
    .union(GfpFlags::__GFP_HIGHMEM)
    .union(GfpFlags::__GFP_DMA32);

impl GfpFlags {
    /// Checks the mask the way Linux's `GFP_ZONE_BAD` table and the allocator's
    /// warnings do. Returns the zone type the mask asks for (`gfp_zone()`).
    #[inline]
    pub fn validate(self) -> Result<ZoneType, KmmError> {
        match self.zone_if_plain() {
            Some(z) => Ok(z),
            None => self.validate_slow(),
        }
    }

    /// `gfp_zone()` for the masks [`Self::validate`] accepts at a glance: no
    /// unknown bit, no `__GFP_NOFAIL` (whose combinations need checking), at
    /// most one zone modifier. `None` means "ask `validate()`".
    #[inline(always)]
    pub(crate) fn zone_if_plain(self) -> Option<ZoneType> {
        // GFP_ZONE_TABLE: the zone for each combination of the three zone bits.
        const TABLE: [Option<ZoneType>; 8] = [
            Some(ZoneType::Normal),
            Some(ZoneType::Dma),
            Some(ZoneType::HighMem),
            None,
            Some(ZoneType::Dma32),
            None,
            None,
            None,
        ];
        let slow = GfpFlags::__GFP_NOFAIL.bits() | !GfpFlags::all().bits();
        if self.bits() & slow != 0 {
            return None;
        }
        TABLE[(self.bits() & 7) as usize]
    }

    #[cold]
    fn validate_slow(self) -> Result<ZoneType, KmmError> {
        let zones = self & GFP_ZONEMASK;
        let zone = if zones.is_empty() {
            ZoneType::Normal
        } else if zones == Self::__GFP_DMA {
            ZoneType::Dma
        } else if zones == Self::__GFP_DMA32 {
            ZoneType::Dma32
        } else if zones == Self::__GFP_HIGHMEM {
            ZoneType::HighMem
        } else {
            return Err(KmmError::InvalidGfp {
                gfp: self,
                why: "more than one zone modifier",
            });
        };
        if self.contains(Self::__GFP_NOFAIL) {
            if self.contains(Self::__GFP_NORETRY) {
                return Err(KmmError::InvalidGfp {
                    gfp: self,
                    why: "__GFP_NOFAIL with __GFP_NORETRY",
                });
            }
            if !self.contains(Self::__GFP_WAIT) {
                return Err(KmmError::InvalidGfp {
                    gfp: self,
                    why: "__GFP_NOFAIL without __GFP_WAIT cannot wait for memory",
                });
            }
        }
        if !GfpFlags::all().contains(self) {
            return Err(KmmError::InvalidGfp {
                gfp: self,
                why: "unknown bits",
            });
        }
        Ok(zone)
    }

    /// `gfpflags_allow_blocking()`: may this allocation sleep?
    pub const fn allows_blocking(self) -> bool {
        self.contains(Self::__GFP_WAIT)
    }
}

/// Type flags tried when naming a mask, longest first.
const NAMED_TYPES: [(&str, GfpFlags); 6] = [
    ("GFP_HIGHUSER", GfpFlags::GFP_HIGHUSER),
    ("GFP_USER", GfpFlags::GFP_USER),
    ("GFP_KERNEL", GfpFlags::GFP_KERNEL),
    ("GFP_NOFS", GfpFlags::GFP_NOFS),
    ("GFP_NOIO", GfpFlags::GFP_NOIO),
    ("GFP_ATOMIC", GfpFlags::GFP_ATOMIC),
];

/// Prints a mask as Linux's `%pGg` does: a type flag if one fits, then the
/// remaining `__GFP_*` bits, separated by `|` (`GFP_NOWAIT` for zero).
impl fmt::Display for GfpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = *self;
        let mut first = true;
        for (name, bits) in NAMED_TYPES {
            if rest.contains(bits) {
                f.write_str(name)?;
                rest.remove(bits);
                first = false;
                break;
            }
        }
        for (name, bit) in self.iter_names() {
            if bit.bits().count_ones() == 1 && rest.contains(bit) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                rest.remove(bit);
                first = false;
            }
        }
        if first {
            f.write_str("GFP_NOWAIT")?;
        }
        Ok(())
    }
}

impl fmt::Debug for GfpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}({})", self.bits(), self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_flags_have_linux_meaning() {
        assert!(!GfpFlags::GFP_ATOMIC.allows_blocking());
        assert!(GfpFlags::GFP_ATOMIC.contains(GfpFlags::__GFP_HIGH));
        assert!(GfpFlags::GFP_KERNEL.allows_blocking());
        assert!(!GfpFlags::GFP_NOIO.contains(GfpFlags::__GFP_IO));
        assert!(GfpFlags::GFP_NOFS.contains(GfpFlags::__GFP_IO));
        assert!(!GfpFlags::GFP_NOFS.contains(GfpFlags::__GFP_FS));
        assert!(GfpFlags::GFP_NOWAIT.is_empty());
        assert_eq!(GfpFlags::GFP_HIGHUSER.validate(), Ok(ZoneType::HighMem));
        assert_eq!(
            (GfpFlags::GFP_KERNEL | GfpFlags::GFP_DMA).validate(),
            Ok(ZoneType::Dma)
        );
        assert_eq!(GfpFlags::GFP_KERNEL.validate(), Ok(ZoneType::Normal));
    }

    #[test]
    fn bad_masks_are_errors() {
        let bad = [
            GfpFlags::__GFP_DMA | GfpFlags::__GFP_HIGHMEM,
            GfpFlags::__GFP_DMA | GfpFlags::__GFP_DMA32,
            GfpFlags::__GFP_DMA32 | GfpFlags::__GFP_HIGHMEM,
            GfpFlags::GFP_KERNEL | GfpFlags::__GFP_NOFAIL | GfpFlags::__GFP_NORETRY,
            GfpFlags::GFP_ATOMIC | GfpFlags::__GFP_NOFAIL,
            GfpFlags::from_bits_retain(0x8000_0000),
        ];
        for gfp in bad {
            assert!(gfp.validate().is_err(), "{gfp:?} accepted");
        }
    }

    #[test]
    fn masks_print_like_pgg() {
        extern crate std;
        use std::format;
        assert_eq!(format!("{}", GfpFlags::GFP_KERNEL), "GFP_KERNEL");
        assert_eq!(
            format!("{}", GfpFlags::GFP_KERNEL | GfpFlags::__GFP_ZERO),
            "GFP_KERNEL|__GFP_ZERO"
        );
        assert_eq!(format!("{:?}", GfpFlags::GFP_ATOMIC), "0x20(GFP_ATOMIC)");
        assert_eq!(format!("{}", GfpFlags::GFP_NOWAIT), "GFP_NOWAIT");
    }
}
