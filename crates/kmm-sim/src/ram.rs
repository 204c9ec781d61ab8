//! The simulated machine's physical RAM, as real host bytes committed lazily.
//!
//! Linux sees physical memory as the page frames listed by the firmware (e820
//! on x86) and reaches them through the direct map (`__va()` / `phys_to_virt()`).
//! The simulator backs the whole physical address space with one anonymous,
//! private host mapping made with `MAP_NORESERVE`: nothing is charged against
//! the host's commit limit and no host page exists until the simulated machine
//! first writes to it. A 64 GiB machine therefore boots on a laptop, and costs
//! only what its allocator really touches.
//!
//! # Layout
//!
//! ```text
//!   host mapping: [ guard | RAM (len rounded up to 64 KiB) | guard ]
//!                    PROT_NONE       read + write             PROT_NONE
//! ```
//!
//! The two inaccessible guard regions keep the kernel from merging the RAM
//! mapping with a neighbouring anonymous mapping (two adjacent anonymous
//! mappings with equal flags become one VMA, e.g. the RAM of a second machine
//! in the same process). So every host VMA inside the RAM range belongs to
//! this RAM alone, and [`Ram::resident_bytes`] can read their `Rss` from
//! `/proc/self/smaps` without counting anyone else's pages. A stray access
//! just outside RAM faults instead of corrupting a neighbour.

use std::fmt;
use std::io;

use memmap2::{MmapOptions, MmapRaw};

/// Size of each inaccessible guard region around the RAM range.
///
/// 64 KiB is a multiple of every host page size Linux supports (4, 16 and
/// 64 KiB), so `mprotect` accepts it without asking the host for its page size.
const GUARD: usize = 64 * 1024;

/// Why [`Ram::new`] or [`Ram::try_resident_bytes`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum RamError {
    /// A machine with no RAM was asked for.
    ZeroSize,
    /// The size does not fit the host's address space.
    TooLarge {
        /// The size asked for, in bytes.
        bytes: u64,
    },
    /// The host refused the mapping (`mmap` failed, e.g. `ENOMEM` because the
    /// address space or `vm.max_map_count` is exhausted, or because
    /// `vm.overcommit_memory` is 2 and the size exceeds the commit limit).
    Map {
        /// The size asked for, in bytes.
        bytes: u64,
        /// The host's error.
        source: io::Error,
    },
    /// The guard regions around the mapping could not be made inaccessible.
    Guard {
        /// The host's error.
        source: io::Error,
    },
    /// `/proc/self/smaps` could not be read (no procfs mounted).
    Smaps {
        /// The host's error.
        source: io::Error,
    },
}

impl fmt::Display for RamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RamError::ZeroSize => f.write_str("RAM size must not be zero"),
            RamError::TooLarge { bytes } => {
                write!(
                    f,
                    "RAM size {bytes} bytes does not fit the host address space"
                )
            }
            RamError::Map { bytes, source } => {
                write!(f, "cannot map {bytes} bytes of simulated RAM: {source}")
            }
            RamError::Guard { source } => {
                write!(
                    f,
                    "cannot protect the guard pages around simulated RAM: {source}"
                )
            }
            RamError::Smaps { source } => write!(f, "cannot read /proc/self/smaps: {source}"),
        }
    }
}

impl std::error::Error for RamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RamError::Map { source, .. }
            | RamError::Guard { source }
            | RamError::Smaps { source } => Some(source),
            RamError::ZeroSize | RamError::TooLarge { .. } => None,
        }
    }
}

/// The simulated machine's physical memory: what Linux reaches through the
/// direct map (`phys_to_virt()`), byte `p` of this buffer being physical
/// address `p`.
///
/// # Guarantees
///
/// - The `len()` bytes starting at [`Ram::as_mut_ptr`] are readable and
///   writable for as long as the `Ram` lives, read as zero until written, and
///   never move.
/// - Host memory is committed page by page on first write only
///   ([`Ram::resident_bytes`] tells how much).
///
/// `Ram` hands out a raw pointer and does no synchronisation itself: the
/// memory manager on top decides who may touch which frame, as in a kernel.
pub struct Ram {
    /// Guard, RAM, guard. Unmapped as a whole when dropped. `MmapRaw` is
    /// memmap2's mapping meant for access through raw pointers only.
    map: MmapRaw,
    /// Usable bytes, as asked for.
    len: u64,
}

impl Ram {
    /// Maps `bytes` of zeroed, lazily committed RAM (the memory Linux's
    /// `memblock` would learn about from the firmware memory map).
    ///
    /// Fails with [`RamError::ZeroSize`] for 0, [`RamError::TooLarge`] when the
    /// size does not fit the host address space, and [`RamError::Map`] when
    /// the host refuses the mapping.
    pub fn new(bytes: u64) -> Result<Ram, RamError> {
        if bytes == 0 {
            return Err(RamError::ZeroSize);
        }
        // Round the usable range up to a whole number of guard-sized units so
        // the trailing guard starts on a host page boundary.
        let total = usize::try_from(bytes)
            .ok()
            .and_then(|b| b.checked_next_multiple_of(GUARD))
            .and_then(|b| b.checked_add(2 * GUARD))
            .filter(|&total| total <= isize::MAX as usize)
            .ok_or(RamError::TooLarge { bytes })?;
        let map = MmapOptions::new()
            .len(total)
            .no_reserve_swap()
            .map_anon()
            .map(MmapRaw::from)
            .map_err(|source| RamError::Map { bytes, source })?;
        let base = map.as_mut_ptr();
        for offset in [0, total - GUARD] {
            // SAFETY: `base + offset .. base + offset + GUARD` lies inside the
            // mapping `map` owns (offset is 0 or `total - GUARD`) and is
            // aligned to GUARD, a multiple of the host page size, because
            // `mmap` returns page-aligned addresses. Nothing references these
            // bytes: they are never handed out, so revoking access cannot
            // invalidate any Rust reference or pointer in use.
            let rc = unsafe {
                libc::mprotect(
                    base.wrapping_add(offset).cast::<libc::c_void>(),
                    GUARD,
                    libc::PROT_NONE,
                )
            };
            if rc != 0 {
                return Err(RamError::Guard {
                    source: io::Error::last_os_error(),
                });
            }
        }
        Ok(Ram { map, len: bytes })
    }

    /// The first byte of RAM, physical address 0 (Linux: `phys_to_virt(0)`,
    /// i.e. `PAGE_OFFSET`).
    ///
    /// The pointer is valid for reads and writes of [`Ram::len`] bytes while
    /// `self` lives; callers that write through it must make sure no two
    /// threads race on the same bytes.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr().wrapping_add(GUARD)
    }

    /// Size of RAM in bytes (Linux: the span of `memblock.memory`; its pages
    /// become `totalram_pages()` once the reserved ones are taken out).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false: a `Ram` has at least one byte ([`Ram::new`] rejects 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Host memory really committed for this RAM, in bytes: the `Rss` of its
    /// host mapping (what the host's `/proc/PID/smaps` shows for it).
    ///
    /// Pages only read are backed by the host's shared zero page and do not
    /// count. Returns 0 when `/proc/self/smaps` cannot be read; use
    /// [`Ram::try_resident_bytes`] to see the error.
    ///
    /// The cost is one read of `/proc/self/smaps`: the host walks only the page
    /// tables that exist, so it grows with the memory touched, not with
    /// [`Ram::len`]. Meant for reports and tests, not for hot paths.
    pub fn resident_bytes(&self) -> u64 {
        self.try_resident_bytes().unwrap_or(0)
    }

    /// [`Ram::resident_bytes`], with the error when `/proc/self/smaps` cannot
    /// be read.
    pub fn try_resident_bytes(&self) -> Result<u64, RamError> {
        let smaps = std::fs::read_to_string("/proc/self/smaps")
            .map_err(|source| RamError::Smaps { source })?;
        let lo = self.as_mut_ptr() as u64;
        // The mapping's usable part is rounded up to GUARD; the host never
        // commits anything past `len` unless written through an out-of-range
        // pointer, and counting it keeps the whole VMA range in view.
        let hi = (self.map.as_mut_ptr() as u64) + (self.map.len() - GUARD) as u64;
        Ok(rss_in_range(&smaps, lo, hi))
    }
}

impl fmt::Debug for Ram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ram")
            .field("base", &self.as_mut_ptr())
            .field("len", &self.len)
            .finish()
    }
}

/// Sums the `Rss:` of every VMA in `smaps` lying entirely inside `lo..hi`.
///
/// The guard regions make sure no VMA straddles either end of the RAM range,
/// so "entirely inside" is exactly "belongs to this RAM", also after the host
/// split the range (e.g. by `madvise` on part of it).
fn rss_in_range(smaps: &str, lo: u64, hi: u64) -> u64 {
    let mut inside = false;
    let mut total = 0u64;
    for line in smaps.lines() {
        let mut words = line.split_ascii_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some((start, end)) = first.split_once('-') {
            // A VMA header: "start-end perms offset dev inode [path]".
            if let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
            {
                inside = start >= lo && end <= hi;
                continue;
            }
        }
        if inside && first == "Rss:" {
            let kb: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
            total += kb * 1024;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    fn write(ram: &Ram, phys: u64, byte: u8) {
        assert!(phys < ram.len());
        // SAFETY: `phys < ram.len()`, so the byte lies inside RAM, which is
        // writable while `ram` lives; this test thread is the only user.
        unsafe { ram.as_mut_ptr().add(phys as usize).write_volatile(byte) }
    }

    fn read(ram: &Ram, phys: u64) -> u8 {
        assert!(phys < ram.len());
        // SAFETY: as in `write`.
        unsafe { ram.as_mut_ptr().add(phys as usize).read_volatile() }
    }

    #[test]
    fn zero_size_is_an_error() {
        assert!(matches!(Ram::new(0), Err(RamError::ZeroSize)));
    }

    #[test]
    fn impossible_size_is_an_error() {
        let err = Ram::new(u64::MAX).unwrap_err();
        assert!(matches!(err, RamError::TooLarge { .. }), "{err}");
        // Larger than any user address space (even 57-bit): the host refuses.
        let err = Ram::new(1 << 62).unwrap_err();
        assert!(matches!(err, RamError::Map { .. }), "{err}");
        assert!(err.to_string().contains("cannot map"));
    }

    #[test]
    fn sixty_four_gib_costs_only_what_is_touched() {
        let ram = Ram::new(64 * GIB).expect("64 GiB NORESERVE mapping");
        assert_eq!(ram.len(), 64 * GIB);
        assert!(!ram.is_empty());
        let before = ram.try_resident_bytes().expect("smaps readable");
        assert_eq!(before, 0, "nothing touched yet");

        let spots = [0, 4096, GIB, 17 * GIB + 123, 40 * GIB, 64 * GIB - 1];
        for (i, &p) in spots.iter().enumerate() {
            write(&ram, p, i as u8 + 1);
        }
        for (i, &p) in spots.iter().enumerate() {
            assert_eq!(read(&ram, p), i as u8 + 1);
        }
        // Untouched bytes read as zero.
        assert_eq!(read(&ram, 8 * GIB), 0);
        assert_eq!(read(&ram, 4095), 0);

        let resident = ram.resident_bytes();
        // Six pages written (4 KiB each, or 2 MiB where the host uses THP).
        assert!(resident >= 6 * 4096, "resident {resident}");
        assert!(resident <= 6 * 2 * MIB, "resident {resident}");
    }

    #[test]
    fn reads_do_not_commit_memory() {
        let ram = Ram::new(GIB).unwrap();
        let mut sum = 0u64;
        for page in 0..1024 {
            sum += u64::from(read(&ram, page * 4096));
        }
        assert_eq!(sum, 0);
        assert!(ram.resident_bytes() < MIB, "{}", ram.resident_bytes());
    }

    #[test]
    fn resident_bytes_grow_with_writes_and_ignore_neighbours() {
        // Two RAMs mapped back to back: each must count only its own pages.
        let a = Ram::new(256 * MIB).unwrap();
        let b = Ram::new(256 * MIB).unwrap();
        for page in 0..256 {
            write(&a, page * 4096, 1);
        }
        write(&b, 0, 1);
        let ra = a.resident_bytes();
        let rb = b.resident_bytes();
        assert!((MIB..=4 * MIB).contains(&ra), "a: {ra}");
        assert!((4096..=2 * MIB).contains(&rb), "b: {rb}");
        drop(a);
        assert_eq!(b.resident_bytes(), rb);
    }

    #[test]
    fn odd_sizes_round_nothing_visible() {
        let ram = Ram::new(12_345).unwrap();
        assert_eq!(ram.len(), 12_345);
        write(&ram, 12_344, 7);
        assert_eq!(read(&ram, 12_344), 7);
    }

    #[test]
    fn smaps_parser_sums_only_vmas_inside() {
        let smaps = "\
7f0000000000-7f0000010000 ---p 00000000 00:00 0 
Rss:                   0 kB
7f0000010000-7f0000020000 rw-p 00000000 00:00 0 
Size:                 64 kB
Rss:                   8 kB
VmFlags: rd wr mr mw me ac nr
7f0000020000-7f0000030000 rw-p 00000000 00:00 0 
Rss:                   4 kB
7f0000030000-7f0000040000 rw-p 00000000 00:00 0 
Rss:                 100 kB
";
        assert_eq!(
            rss_in_range(smaps, 0x7f00_0001_0000, 0x7f00_0003_0000),
            12 * 1024
        );
        assert_eq!(rss_in_range(smaps, 0, 1), 0);
    }
}
