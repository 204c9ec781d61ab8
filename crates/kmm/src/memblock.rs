//! Boot-time memory: `mm/memblock.c` and the bootmem interface of LDD3 §8.5.
//!
//! Before the buddy allocator exists the kernel knows memory only as two lists
//! of ranges: `memory` (RAM the firmware reported) and `reserved` (ranges in
//! use: the kernel image, firmware areas, `mem_map`, early allocations).
//! Allocation carves a range out of memory that is not reserved, top-down like
//! Linux's memblock. At `mem_init()` every whole page that is not reserved is
//! handed to the buddy allocator; partial pages stay behind, which is why LDD3
//! warns that freeing part of a page with `free_bootmem` gives nothing back.

use crate::error::KmmError;

/// `INIT_MEMBLOCK_REGIONS`: capacity of each region table.
pub const MEMBLOCK_REGIONS: usize = 128;

/// Why a range is reserved (kmm keeps this for the boot summary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReserveKind {
    /// Not a reservation: a `memory` region.
    Memory,
    /// Firmware or ranges the kernel never uses (the first page, BIOS areas).
    Firmware,
    /// The kernel image (`_text` .. `_end`).
    KernelImage,
    /// The page descriptor array.
    MemMap,
    /// Per-CPU tables: the page lists and the boot-time kmalloc caches' object arrays.
    PerCpu,
    /// `alloc_bootmem*()` / `memblock_alloc()` by early code.
    Bootmem,
    /// The kernel page table (`swapper_pg_dir` and the tables below it).
    PageTable,
}

/// `struct memblock_region`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemblockRegion {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
    /// Node the range belongs to.
    pub nid: u8,
    /// What the range is (for `memory` regions: [`ReserveKind::Memory`]).
    pub kind: ReserveKind,
}

impl MemblockRegion {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.base + self.size
    }
    const EMPTY: MemblockRegion = MemblockRegion {
        base: 0,
        size: 0,
        nid: 0,
        kind: ReserveKind::Memory,
    };
}

/// `struct memblock_type`: a sorted table of non-overlapping ranges.
#[derive(Clone)]
pub struct RegionTable {
    regions: [MemblockRegion; MEMBLOCK_REGIONS],
    cnt: usize,
}

impl RegionTable {
    const fn new() -> Self {
        RegionTable {
            regions: [MemblockRegion::EMPTY; MEMBLOCK_REGIONS],
            cnt: 0,
        }
    }

    /// The ranges, sorted by base.
    pub fn regions(&self) -> &[MemblockRegion] {
        &self.regions[..self.cnt]
    }

    /// Sum of the sizes (`memblock.memory.total_size`).
    pub fn total_size(&self) -> u64 {
        self.regions().iter().map(|r| r.size).sum()
    }

    fn insert_at(&mut self, i: usize, r: MemblockRegion) -> Result<(), KmmError> {
        if self.cnt == MEMBLOCK_REGIONS {
            return Err(KmmError::TableFull {
                what: "memblock region",
            });
        }
        self.regions.copy_within(i..self.cnt, i + 1);
        self.regions[i] = r;
        self.cnt += 1;
        Ok(())
    }

    fn delete_at(&mut self, i: usize) {
        self.regions.copy_within(i + 1..self.cnt, i);
        self.cnt -= 1;
    }

    /// Removes `[base, end)` from every region, splitting where needed.
    fn remove_range(&mut self, base: u64, end: u64) -> Result<(), KmmError> {
        let mut i = 0;
        while i < self.cnt {
            let r = self.regions[i];
            if r.end() <= base || r.base >= end {
                i += 1;
                continue;
            }
            if r.base < base && r.end() > end {
                // Split: keep the left part here, insert the right part after it.
                let right = MemblockRegion {
                    base: end,
                    size: r.end() - end,
                    ..r
                };
                self.insert_at(i + 1, right)?;
                self.regions[i].size = base - r.base;
                i += 2;
            } else if r.base < base {
                self.regions[i].size = base - r.base;
                i += 1;
            } else if r.end() > end {
                self.regions[i].base = end;
                self.regions[i].size = r.end() - end;
                i += 1;
            } else {
                self.delete_at(i);
            }
        }
        Ok(())
    }

    /// Adds `[base, end)`, replacing whatever overlapped it, then merges
    /// neighbours with the same node and kind.
    fn add_range(
        &mut self,
        base: u64,
        end: u64,
        nid: u8,
        kind: ReserveKind,
    ) -> Result<(), KmmError> {
        if end <= base {
            return Ok(());
        }
        // Check for room first so a full table leaves the state unchanged.
        if self.cnt + 2 > MEMBLOCK_REGIONS {
            return Err(KmmError::TableFull {
                what: "memblock region",
            });
        }
        self.remove_range(base, end)?;
        let i = self.regions().partition_point(|r| r.base < base);
        self.insert_at(
            i,
            MemblockRegion {
                base,
                size: end - base,
                nid,
                kind,
            },
        )?;
        let mut j = 0;
        while j + 1 < self.cnt {
            let (a, b) = (self.regions[j], self.regions[j + 1]);
            if a.end() == b.base && a.nid == b.nid && a.kind == b.kind {
                self.regions[j].size += b.size;
                self.delete_at(j + 1);
            } else {
                j += 1;
            }
        }
        Ok(())
    }

    fn overlaps(&self, base: u64, end: u64) -> bool {
        self.regions()
            .iter()
            .any(|r| r.base < end && base < r.end())
    }
}

/// `struct memblock`: the boot-time allocator.
#[derive(Clone)]
pub struct Memblock {
    /// `memblock.memory`.
    pub memory: RegionTable,
    /// `memblock.reserved`.
    pub reserved: RegionTable,
    /// `memblock.current_limit`: allocations stay below this address.
    pub current_limit: u64,
}

impl Default for Memblock {
    fn default() -> Self {
        Self::new()
    }
}

impl Memblock {
    /// Empty tables, no limit.
    pub const fn new() -> Self {
        Memblock {
            memory: RegionTable::new(),
            reserved: RegionTable::new(),
            current_limit: u64::MAX,
        }
    }

    /// `memblock_add_node()`.
    pub fn add(&mut self, base: u64, size: u64, nid: u8) -> Result<(), KmmError> {
        self.memory
            .add_range(base, base.saturating_add(size), nid, ReserveKind::Memory)
    }

    /// `memblock_reserve()`.
    pub fn reserve(&mut self, base: u64, size: u64, kind: ReserveKind) -> Result<(), KmmError> {
        self.reserved
            .add_range(base, base.saturating_add(size), 0, kind)
    }

    /// `memblock_phys_free()` (LDD3's `free_bootmem`): the range is no longer reserved.
    pub fn phys_free(&mut self, base: u64, size: u64) -> Result<(), KmmError> {
        let end = base.saturating_add(size);
        if !self.reserved.overlaps(base, end) {
            return Err(KmmError::Memblock {
                why: "free_bootmem of a range that was never reserved",
                size,
            });
        }
        self.reserved.remove_range(base, end)
    }

    /// True when some byte of `[base, base+size)` is reserved.
    pub fn is_region_reserved(&self, base: u64, size: u64) -> bool {
        self.reserved.overlaps(base, base.saturating_add(size))
    }

    /// `for_each_free_mem_range()`: memory that is not reserved, in address
    /// order, as `(start, end, nid)`.
    pub fn for_each_free_range(&self, mut f: impl FnMut(u64, u64, u8)) {
        let res = self.reserved.regions();
        for m in self.memory.regions() {
            let mut start = m.base;
            let end = m.end();
            // Reserved regions are sorted; skip those entirely below `start`.
            let first = res.partition_point(|r| r.end() <= start);
            for r in &res[first..] {
                if r.base >= end {
                    break;
                }
                if r.base > start {
                    f(start, r.base, m.nid);
                }
                start = start.max(r.end());
                if start >= end {
                    break;
                }
            }
            if start < end {
                f(start, end, m.nid);
            }
        }
    }

    /// `memblock_alloc_range_nid()`: the highest free, `align`ed range of `size`
    /// bytes inside `[start, end)` (and below `current_limit`), on node `nid`
    /// if given. The range is reserved as `kind` and returned.
    pub fn alloc_range(
        &mut self,
        size: u64,
        align: u64,
        start: u64,
        end: u64,
        nid: Option<u8>,
        kind: ReserveKind,
    ) -> Result<u64, KmmError> {
        if size == 0 {
            return Err(KmmError::Memblock {
                why: "zero-sized boot-time allocation",
                size,
            });
        }
        if !align.is_power_of_two() {
            return Err(KmmError::Memblock {
                why: "alignment is not a power of two",
                size,
            });
        }
        let end = end.min(self.current_limit);
        let mut best: Option<u64> = None;
        self.for_each_free_range(|s, e, n| {
            if nid.is_some_and(|want| want != n) {
                return;
            }
            let (s, e) = (s.max(start), e.min(end));
            if e <= s || e - s < size {
                return;
            }
            let cand = (e - size) & !(align - 1);
            if cand >= s && best.is_none_or(|b| cand > b) {
                best = Some(cand);
            }
        });
        let base = best.ok_or(KmmError::Memblock {
            why: "no free range is large enough",
            size,
        })?;
        self.reserve(base, size, kind)?;
        Ok(base)
    }

    /// Bytes reserved for each purpose.
    pub fn reserved_bytes(&self, kind: ReserveKind) -> u64 {
        self.reserved
            .regions()
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.size)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec::Vec;

    fn free_ranges(m: &Memblock) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        m.for_each_free_range(|s, e, _| v.push((s, e)));
        v
    }

    #[test]
    fn reserve_splits_and_free_merges() {
        let mut m = Memblock::new();
        m.add(0x1000, 0x9_0000, 0).unwrap();
        m.add(0x10_0000, 0x100_0000, 0).unwrap();
        assert_eq!(m.memory.regions().len(), 2);
        m.reserve(0x20_0000, 0x1000, ReserveKind::Bootmem).unwrap();
        assert_eq!(
            free_ranges(&m),
            [
                (0x1000, 0x9_1000),
                (0x10_0000, 0x20_0000),
                (0x20_1000, 0x110_0000)
            ]
        );
        m.phys_free(0x20_0000, 0x1000).unwrap();
        assert_eq!(free_ranges(&m).len(), 2);
        assert!(m.phys_free(0x20_0000, 0x1000).is_err());
    }

    #[test]
    fn alloc_is_top_down_aligned_and_limited() {
        let mut m = Memblock::new();
        m.add(0, 64 << 20, 0).unwrap();
        let a = m
            .alloc_range(100, 64, 0, u64::MAX, None, ReserveKind::Bootmem)
            .unwrap();
        assert_eq!(a, (64 << 20) - 128);
        let b = m
            .alloc_range(4096, 4096, 0, 16 << 20, None, ReserveKind::Bootmem)
            .unwrap();
        assert_eq!(b, (16 << 20) - 4096);
        assert!(m
            .alloc_range(128 << 20, 4096, 0, u64::MAX, None, ReserveKind::Bootmem)
            .is_err());
        assert_eq!(m.reserved_bytes(ReserveKind::Bootmem), 100 + 4096);
    }
}
