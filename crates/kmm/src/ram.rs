//! Physical memory as the kernel sees it through its direct map.
//!
//! This is the only module of the allocator core that touches raw memory. Every
//! other module reaches RAM through [`PhysMem`] (byte copies at physical
//! addresses) or through `RamArray` (typed tables — `mem_map`, per-CPU page
//! lists — that live inside the RAM they describe, as in Linux).

use crate::error::KmmError;
use core::marker::PhantomData;
use core::ptr::NonNull;

/// The machine's physical address space `[0, len)`, backed by host memory.
///
/// Linux reaches physical memory through the direct map (`__va()`); kmm reaches it
/// through this pointer. Reads and writes of simulated RAM by different CPUs may
/// race exactly as they may on real hardware: the bytes are plain memory owned
/// by the simulated machine, never by Rust objects.
pub struct PhysMem {
    base: NonNull<u8>,
    len: u64,
    /// Device memory (a PCI BAR) at bus address `io_phys`, if any.
    io_base: Option<NonNull<u8>>,
    io_phys: u64,
    io_len: u64,
}

// SAFETY: `PhysMem` is a window onto memory the simulated machine owns for its
// whole life; it holds no thread-affine state.
unsafe impl Send for PhysMem {}
// SAFETY: as above; shared access only ever copies bytes or hands out tables of
// atomics (see `RamSafe`).
unsafe impl Sync for PhysMem {}

/// Types that may live in simulated RAM as shared tables: every bit pattern is a
/// valid value, they need no drop, and all mutation goes through atomics.
///
/// # Safety
/// Implementors must be made only of integer atomics (or arrays/structs of them)
/// with no padding requirements beyond their alignment.
pub unsafe trait RamSafe: Sync + Sized {}

// SAFETY: an integer atomic; every bit pattern is a valid value (the entries
// of a slab cache's per-CPU arrays).
unsafe impl RamSafe for core::sync::atomic::AtomicU64 {}

impl PhysMem {
    /// Wraps `len` bytes of host memory at `base` as physical addresses `0..len`.
    ///
    /// # Safety
    /// `base..base+len` must be readable and writable, must stay mapped for as
    /// long as this value and everything built from it (the whole memory
    /// manager) lives, and must not be accessed through Rust references
    /// elsewhere. `base` must be aligned to at least 4096 bytes.
    pub unsafe fn new(base: *mut u8, len: u64) -> Result<Self, KmmError> {
        let base = NonNull::new(base).ok_or(KmmError::BadMachine {
            why: "RAM base pointer is null",
        })?;
        if !(base.as_ptr() as usize).is_multiple_of(4096) {
            return Err(KmmError::BadMachine {
                why: "RAM base is not page aligned",
            });
        }
        Ok(PhysMem {
            base,
            len,
            io_base: None,
            io_phys: 0,
            io_len: 0,
        })
    }

    /// Adds a window of device memory (a frame buffer behind a PCI BAR) at
    /// physical addresses `phys..phys+len`, above RAM: reads and writes there
    /// reach `base..base+len` (what `ioremap` maps).
    ///
    /// # Safety
    /// As for [`Self::new`], for `base..base+len`; the window must not
    /// overlap RAM (`phys >= self.len()`).
    pub unsafe fn set_device_window(
        &mut self,
        phys: u64,
        base: *mut u8,
        len: u64,
    ) -> Result<(), KmmError> {
        let base = NonNull::new(base).ok_or(KmmError::BadMachine {
            why: "device memory pointer is null",
        })?;
        if phys < self.len || phys.checked_add(len).is_none() {
            return Err(KmmError::BadMachine {
                why: "device memory overlaps RAM",
            });
        }
        self.io_base = Some(base);
        self.io_phys = phys;
        self.io_len = len;
        Ok(())
    }

    /// The device-memory window as `(phys, len)`, if there is one.
    pub fn device_window(&self) -> Option<(u64, u64)> {
        self.io_base.map(|_| (self.io_phys, self.io_len))
    }

    /// Size of the physical address space in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a zero-sized address space.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline(always)]
    fn check(&self, phys: u64, len: usize) -> Result<*mut u8, KmmError> {
        match phys.checked_add(len as u64) {
            Some(end) if end <= self.len => {
                // SAFETY: `phys + len <= self.len`, so the offset stays inside the
                // mapping promised by `new`.
                Ok(unsafe { self.base.as_ptr().add(phys as usize) })
            }
            _ => self.check_io(phys, len),
        }
    }

    #[cold]
    fn check_io(&self, phys: u64, len: usize) -> Result<*mut u8, KmmError> {
        let off = phys.wrapping_sub(self.io_phys);
        match (self.io_base, off.checked_add(len as u64)) {
            (Some(io), Some(end)) if phys >= self.io_phys && end <= self.io_len => {
                // SAFETY: `off + len <= io_len`, inside the device window
                // promised by `set_device_window`.
                Ok(unsafe { io.as_ptr().add(off as usize) })
            }
            _ => Err(KmmError::InvalidAddress {
                addr: phys,
                what: "physical address",
            }),
        }
    }

    /// Copies `buf.len()` bytes of RAM at `phys` into `buf`.
    pub fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), KmmError> {
        let src = self.check(phys, buf.len())?;
        // SAFETY: `src..src+len` is inside the mapping (checked) and `buf` is a
        // distinct Rust allocation, so the ranges cannot overlap.
        unsafe { core::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `data` into RAM at `phys`.
    pub fn write(&self, phys: u64, data: &[u8]) -> Result<(), KmmError> {
        let dst = self.check(phys, data.len())?;
        // SAFETY: `dst..dst+len` is inside the mapping (checked); `data` is a Rust
        // slice and so not part of simulated RAM.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        Ok(())
    }

    /// Sets `len` bytes at `phys` to `byte` (`memset`).
    pub fn fill(&self, phys: u64, len: usize, byte: u8) -> Result<(), KmmError> {
        let dst = self.check(phys, len)?;
        // SAFETY: `dst..dst+len` is inside the mapping (checked).
        unsafe { core::ptr::write_bytes(dst, byte, len) };
        Ok(())
    }

    /// Copies `len` bytes from `src` to `dst`, both physical (`memmove`).
    pub fn copy(&self, dst: u64, src: u64, len: usize) -> Result<(), KmmError> {
        let s = self.check(src, len)?;
        let d = self.check(dst, len)?;
        // SAFETY: both ranges are inside the mapping (checked); `copy` allows overlap.
        unsafe { core::ptr::copy(s, d, len) };
        Ok(())
    }

    /// Reads a little-endian `u64` at `phys` (which need not be aligned).
    pub fn read_u64(&self, phys: u64) -> Result<u64, KmmError> {
        let mut b = [0u8; 8];
        self.read(phys, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a little-endian `u64` at `phys`.
    pub fn write_u64(&self, phys: u64, v: u64) -> Result<(), KmmError> {
        self.write(phys, &v.to_le_bytes())
    }

    /// [`Self::read_u64`] for hot paths (the MMU's loads, page walks): one
    /// comparison finds the 8 bytes in RAM and the load is inlined into the
    /// caller; anything else (device memory, a bad address) goes the way of
    /// [`Self::read_u64`].
    #[inline(always)]
    pub fn load_u64(&self, phys: u64) -> Result<u64, KmmError> {
        if phys.checked_add(8).is_some_and(|end| end <= self.len) {
            // SAFETY: `phys + 8 <= self.len`, so the 8 bytes lie inside the
            // mapping promised by `new`; `read_unaligned` takes any alignment.
            let v = unsafe {
                self.base
                    .as_ptr()
                    .add(phys as usize)
                    .cast::<u64>()
                    .read_unaligned()
            };
            Ok(u64::from_le(v))
        } else {
            self.read_u64(phys)
        }
    }

    /// [`Self::write_u64`] for hot paths, as [`Self::load_u64`] is for reads.
    #[inline(always)]
    pub fn store_u64(&self, phys: u64, v: u64) -> Result<(), KmmError> {
        if phys.checked_add(8).is_some_and(|end| end <= self.len) {
            // SAFETY: `phys + 8 <= self.len`, so the 8 bytes lie inside the
            // mapping promised by `new`; `write_unaligned` takes any alignment.
            unsafe {
                self.base
                    .as_ptr()
                    .add(phys as usize)
                    .cast::<u64>()
                    .write_unaligned(v.to_le())
            };
            Ok(())
        } else {
            self.write_u64(phys, v)
        }
    }

    /// Host address of a table of `head + count * size_of::<T>()` bytes at
    /// `phys`: inside RAM and aligned to `align`, else an error.
    #[inline(always)]
    fn table<T>(
        &self,
        phys: u64,
        head: usize,
        count: usize,
        align: usize,
    ) -> Result<*mut u8, KmmError> {
        let bytes = count
            .checked_mul(core::mem::size_of::<T>())
            .and_then(|b| b.checked_add(head))
            .ok_or(KmmError::InvalidAddress {
                addr: phys,
                what: "table size",
            })?;
        let p = self.check(phys, bytes)?;
        if !(p as usize).is_multiple_of(align) {
            return Err(KmmError::InvalidAddress {
                addr: phys,
                what: "misaligned table",
            });
        }
        Ok(p)
    }

    /// A shared view of `count` values of `T` already in RAM at `phys`, without
    /// touching them: a table another part of the kernel set up earlier and
    /// reaches through a physical address it stored (a slab cache's per-CPU
    /// arrays, Linux's `cachep->cpu_cache`).
    #[inline]
    pub(crate) fn ram_slice<T: RamSafe>(&self, phys: u64, count: usize) -> Result<&[T], KmmError> {
        let p = self.table::<T>(phys, 0, count, core::mem::align_of::<T>())?;
        // SAFETY: the range is inside the RAM mapping (checked), which outlives
        // `self` (contract of `new`); `p` is aligned for `T` (checked); every
        // bit pattern is a valid `T` and all mutation goes through atomics
        // (`RamSafe`), so shared references for the lifetime of `&self` are sound.
        Ok(unsafe { core::slice::from_raw_parts(p.cast::<T>(), count) })
    }

    /// A header `H` at `phys` followed directly by `count` values of `T`
    /// (a per-CPU array: counters, then entries), with one bounds and one
    /// alignment check for the whole block.
    #[inline(always)]
    pub(crate) fn ram_head_and_tail<H: RamSafe, T: RamSafe>(
        &self,
        phys: u64,
        count: usize,
    ) -> Result<(&H, &[T]), KmmError> {
        let head = core::mem::size_of::<H>();
        if !head.is_multiple_of(core::mem::align_of::<T>()) {
            return Err(KmmError::InvalidAddress {
                addr: phys,
                what: "misaligned table",
            });
        }
        let align = core::mem::align_of::<H>().max(core::mem::align_of::<T>());
        let p = self.table::<T>(phys, head, count, align)?;
        // SAFETY: `p..p+head+count*size_of::<T>()` is inside the RAM mapping (checked), which
        // outlives `self` (contract of `new`); `p` is aligned for `H` and, as
        // `size_of::<H>()` is a multiple of `T`'s alignment, `p + head` is
        // aligned for `T` (checked); the two ranges do not overlap; every bit
        // pattern is valid for `RamSafe` types and all mutation is atomic.
        unsafe {
            let h = &*p.cast::<H>();
            let t = core::slice::from_raw_parts(p.add(head).cast::<T>(), count);
            Ok((h, t))
        }
    }

    /// One value of `T` at `phys`, as [`Self::ram_slice`] gives tables.
    #[inline]
    pub(crate) fn ram_ref<T: RamSafe>(&self, phys: u64) -> Result<&T, KmmError> {
        self.ram_slice::<T>(phys, 1)?
            .first()
            .ok_or(KmmError::InvalidAddress {
                addr: phys,
                what: "table size",
            })
    }

    /// Places a table of `count` values of `T` at `phys`, zero-filled.
    pub(crate) fn zeroed_array<T: RamSafe>(
        &self,
        phys: u64,
        count: usize,
    ) -> Result<RamArray<T>, KmmError> {
        let p = self.table::<T>(phys, 0, count, core::mem::align_of::<T>())?;
        let bytes = count * core::mem::size_of::<T>();
        // SAFETY: the range is inside the mapping (checked).
        unsafe { core::ptr::write_bytes(p, 0, bytes) };
        Ok(RamArray {
            // SAFETY: `p` is non-null: it is `base` (non-null) plus an in-range offset.
            ptr: unsafe { NonNull::new_unchecked(p.cast::<T>()) },
            len: count,
            _t: PhantomData,
        })
    }
}

/// A table of `T` living in simulated RAM (Linux: a `memblock_alloc`ed array
/// such as `mem_map`).
pub(crate) struct RamArray<T: RamSafe> {
    ptr: NonNull<T>,
    len: usize,
    _t: PhantomData<T>,
}

// SAFETY: `T: RamSafe` is `Sync` and made of atomics; the table is shared memory.
unsafe impl<T: RamSafe> Send for RamArray<T> {}
// SAFETY: as above.
unsafe impl<T: RamSafe> Sync for RamArray<T> {}

impl<T: RamSafe> RamArray<T> {
    /// An empty table.
    pub(crate) const fn empty() -> Self {
        RamArray {
            ptr: NonNull::dangling(),
            len: 0,
            _t: PhantomData,
        }
    }

    /// The table as a slice.
    #[inline(always)]
    pub(crate) fn as_slice(&self) -> &[T] {
        // SAFETY: `ptr..ptr+len` was checked to lie inside the RAM mapping, which
        // outlives the memory manager (contract of `PhysMem::new`); it was
        // zero-filled, and every bit pattern is a valid `T` (`RamSafe`); all
        // mutation goes through atomics, so shared references are sound.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

/// Page-aligned host memory for unit tests, with a [`PhysMem`] over it.
#[cfg(test)]
pub(crate) struct HostRam {
    base: NonNull<u8>,
    layout: std::alloc::Layout,
    mem: PhysMem,
}

#[cfg(test)]
impl HostRam {
    /// `len` bytes (rounded up to a page) of zeroed host memory.
    pub(crate) fn new(len: usize) -> HostRam {
        let layout = std::alloc::Layout::from_size_align(len.max(1).next_multiple_of(4096), 4096)
            .expect("host RAM layout");
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let base = NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        // SAFETY: `base..base+size` was just allocated for this value alone and
        // is page aligned; it is freed only when the `HostRam` is dropped, and
        // `mem` can only be borrowed from it, so it never outlives the mapping.
        let mem = unsafe { PhysMem::new(base.as_ptr(), layout.size() as u64) }
            .expect("page-aligned host RAM");
        HostRam { base, layout, mem }
    }

    /// The RAM as the memory manager sees it.
    pub(crate) fn mem(&self) -> &PhysMem {
        &self.mem
    }
}

#[cfg(test)]
impl Drop for HostRam {
    fn drop(&mut self) {
        // SAFETY: `base` came from `alloc_zeroed(layout)` in `new` and is freed
        // only here; no borrow of `mem` can outlive `self`.
        unsafe { std::alloc::dealloc(self.base.as_ptr(), self.layout) }
    }
}
