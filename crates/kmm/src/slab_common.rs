//! kmalloc and `/proc/slabinfo` (`mm/slab_common.c`, `include/linux/slab.h`).
//!
//! `kmalloc(size)` rounds `size` up to a **size class** and takes an object
//! from that class's cache: `kmalloc-8`, `-16`, `-32`, `-64`, `-96`, `-128`,
//! `-192`, `-256`, `-512`, `-1k`, `-2k`, `-4k`, `-8k` (continuing in powers of
//! two up to two pages on machines with larger pages). Sizes up to 8 bytes
//! use `kmalloc-8`, 65–96 use `kmalloc-96`, 129–192 use `kmalloc-192`, every
//! other size the next power of two — so a request gets at most twice what it
//! asked for (seed 001 §8.1.2). `GFP_DMA` requests use the `dma-kmalloc-*`
//! caches, whose slabs come from `ZONE_DMA`.
//!
//! Above `KMALLOC_MAX_CACHE_SIZE` (two pages) kmalloc goes straight to the
//! page allocator for a compound page of the smallest order that fits, up to
//! `KMALLOC_MAX_SIZE` (`PAGE_SIZE << (MAX_ORDER - 1)`, 4 MiB with 4 KiB
//! pages); larger requests fail. High memory has no kernel address, so
//! `__GFP_HIGHMEM` is refused.
//!
//! The kmalloc caches are created at the end of boot ([`EarlyBoot::mem_init`]
//! calls `kmem_cache_init`); their per-CPU arrays live in a block reserved
//! from memblock, so after boot the slab allocator holds no page of the buddy
//! allocator until something is allocated.
//!
//! [`EarlyBoot::mem_init`]: crate::mm_init::EarlyBoot::mem_init

use core::fmt::{self, Write};
use core::panic::Location;
use core::sync::atomic::Ordering::Relaxed;

use crate::error::KmmError;
use crate::gfp::GfpFlags;
use crate::memblock::{Memblock, ReserveKind};
use crate::mm::Kmm;
use crate::platform::Platform;
use crate::slab::{CpuCacheLayout, KmemCache, SlabFlags, LARGE_KMALLOC_TAG};

/// `ZERO_SIZE_PTR`: what `kmalloc(0)` returns; `kfree` accepts it.
pub const ZERO_SIZE_PTR: u64 = 16;
/// `KMALLOC_MIN_SIZE`: the smallest kmalloc object.
pub const KMALLOC_MIN_SIZE: usize = 8;
/// `ARCH_KMALLOC_MINALIGN`: alignment of every kmalloc object.
pub const ARCH_KMALLOC_MINALIGN: usize = 8;
/// Size classes a machine may have (8 bytes to 128 KiB with 64 KiB pages).
pub const MAX_KMALLOC_CLASSES: usize = 17;
/// The size classes, smallest first (`kmalloc_info[]`).
pub const KMALLOC_SIZES: [usize; MAX_KMALLOC_CLASSES] = [
    8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072,
];

/// `enum kmalloc_cache_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KmallocType {
    /// `KMALLOC_NORMAL`: `kmalloc-*`.
    Normal = 0,
    /// `KMALLOC_DMA`: `dma-kmalloc-*`, for `GFP_DMA`.
    Dma = 1,
}

/// `size_index[]`: the size class of requests up to 192 bytes, by
/// `(size - 1) / 8` — one load instead of a chain of compares, as Linux's
/// `kmalloc_slab()` does for small sizes.
const SIZE_INDEX: [u8; 24] = {
    let mut t = [0u8; 24];
    let mut i = 0;
    while i < 24 {
        t[i] = kmalloc_index_slow((i + 1) * 8) as u8;
        i += 1;
    }
    t
};

/// `kmalloc_index()`: the size class of a request of `size` bytes (1 or
/// more); only meaningful up to `KMALLOC_MAX_CACHE_SIZE`.
#[inline]
pub const fn kmalloc_index(size: usize) -> usize {
    if size == 0 {
        return 0;
    }
    if size <= 192 {
        return SIZE_INDEX[(size - 1) / 8] as usize;
    }
    kmalloc_index_slow(size)
}

/// The size classes spelled out: 8, 16, 32, 64, 96, 128, 192, 256, then
/// powers of two.
const fn kmalloc_index_slow(size: usize) -> usize {
    if size <= 8 {
        0
    } else if size <= 16 {
        1
    } else if size <= 32 {
        2
    } else if size <= 64 {
        3
    } else if size <= 96 {
        4
    } else if size <= 128 {
        5
    } else if size <= 192 {
        6
    } else if size <= 256 {
        7
    } else {
        // 512 is class 8; each further power of two one more.
        let bits = usize::BITS - (size - 1).leading_zeros();
        (bits as usize) - 1
    }
}

/// `KMALLOC_MAX_CACHE_SIZE` for a page size: two pages, at least 8 KiB.
pub const fn kmalloc_max_cache_size(page_size: u64) -> usize {
    let two = 2 * page_size as usize;
    if two > 8192 {
        two
    } else {
        8192
    }
}

/// Size classes for a page size (13 with 4 KiB pages).
pub const fn nr_kmalloc_classes(page_size: u64) -> usize {
    kmalloc_index(kmalloc_max_cache_size(page_size)) + 1
}

/// The name Linux gives a kmalloc cache: `kmalloc-96`, `kmalloc-1k`, `dma-kmalloc-8k`.
struct KmallocName {
    buf: [u8; 32],
    len: usize,
}

impl Write for KmallocName {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn kmalloc_name(ty: KmallocType, size: usize) -> KmallocName {
    let mut n = KmallocName {
        buf: [0; 32],
        len: 0,
    };
    let prefix = match ty {
        KmallocType::Normal => "kmalloc-",
        KmallocType::Dma => "dma-kmalloc-",
    };
    let _ = if size >= 1024 {
        write!(n, "{prefix}{}k", size >> 10)
    } else {
        write!(n, "{prefix}{size}")
    };
    n
}

/// Bytes the boot-time kmalloc caches' per-CPU arrays need (reserved from
/// memblock by `mem_init`, like SLAB's static bootstrap arrays).
pub(crate) fn boot_arrays_bytes(page_size: u64, nr_cpus: usize) -> u64 {
    let per_type: u64 = KMALLOC_SIZES[..nr_kmalloc_classes(page_size)]
        .iter()
        .map(|&s| CpuCacheLayout::new(s as u64, page_size, nr_cpus as u64).bytes)
        .sum();
    2 * per_type
}

/// Reserves the boot caches' per-CPU arrays. Returns `(phys, bytes)`.
pub(crate) fn reserve_boot_arrays(
    mb: &mut Memblock,
    page_size: u64,
    nr_cpus: usize,
) -> Result<(u64, u64), KmmError> {
    let bytes = boot_arrays_bytes(page_size, nr_cpus);
    let phys = mb.alloc_range(bytes, 64, 0, u64::MAX, None, ReserveKind::PerCpu)?;
    Ok((phys, bytes))
}

impl<P: Platform> Kmm<P> {
    /// `kmem_cache_init()` + `create_kmalloc_caches()`: the kmalloc caches of
    /// both types, at the end of boot.
    pub(crate) fn kmem_cache_init(&self) -> Result<(), KmmError> {
        let ps = self.page_size();
        // slab_max_order: order-1 slabs once there is more than 32 MiB.
        let max_order = u32::from(self.totalram_pages() << self.page_shift > 32 << 20);
        self.slab.slab_max_order.store(max_order, Relaxed);
        let n = nr_kmalloc_classes(ps);
        for ty in [KmallocType::Normal, KmallocType::Dma] {
            let flags = match ty {
                KmallocType::Normal => SlabFlags::empty(),
                KmallocType::Dma => SlabFlags::SLAB_CACHE_DMA,
            };
            for (i, &size) in KMALLOC_SIZES[..n].iter().enumerate() {
                let name = kmalloc_name(ty, size);
                let name = core::str::from_utf8(&name.buf[..name.len]).unwrap_or("kmalloc-?");
                let c = self.create_cache(
                    name,
                    size as u64,
                    ARCH_KMALLOC_MINALIGN as u64,
                    flags,
                    None,
                    true,
                )?;
                self.slab.kmalloc[ty as usize][i].store(c.pack(), Relaxed);
            }
        }
        self.slab.nr_kmalloc.store(n as u32, Relaxed);
        self.platform.printk(format_args!(
            "SLAB: HWalign={}, Order=0-{}, MinObjects=0, CPUs={}, Nodes={}, kmalloc caches {}..{}",
            crate::slab::CACHE_LINE_SIZE,
            max_order,
            self.nr_cpu_ids(),
            self.nr_node_ids(),
            KMALLOC_SIZES[0],
            KMALLOC_SIZES[n - 1]
        ));
        Ok(())
    }

    /// `KMALLOC_MAX_SIZE`: the largest kmalloc, `PAGE_SIZE << (MAX_ORDER - 1)`.
    pub fn kmalloc_max_size(&self) -> usize {
        (self.page_size() as usize) << (crate::MAX_ORDER - 1)
    }

    /// `KMALLOC_MAX_CACHE_SIZE`: the largest kmalloc served by a slab cache.
    pub fn kmalloc_max_cache_size(&self) -> usize {
        kmalloc_max_cache_size(self.page_size())
    }

    /// `kmalloc_size_roundup()`: what `kmalloc(size)` really allocates.
    pub fn kmalloc_size_roundup(&self, size: usize) -> usize {
        if size == 0 {
            0
        } else if size <= self.kmalloc_max_cache_size() {
            KMALLOC_SIZES[kmalloc_index(size)]
        } else if size <= self.kmalloc_max_size() {
            (self.page_size() as usize) << self.get_order(size as u64)
        } else {
            size
        }
    }

    /// `kmalloc_slab()`: the cache serving `kmalloc(size, gfp)`, if a cache does.
    pub fn kmalloc_slab(&self, size: usize, gfp: GfpFlags) -> Option<KmemCache> {
        if size == 0 || size > self.kmalloc_max_cache_size() {
            return None;
        }
        let ty = gfp.contains(GfpFlags::__GFP_DMA) as usize;
        KmemCache::unpack(
            self.slab.kmalloc[ty]
                .get(kmalloc_index(size))?
                .load(Relaxed),
        )
    }

    /// `kmalloc()`: `size` bytes of physically contiguous memory, as a kernel
    /// virtual address. `kmalloc(0)` returns [`ZERO_SIZE_PTR`].
    #[inline(always)]
    #[track_caller]
    pub fn kmalloc(&self, size: usize, gfp: GfpFlags) -> Result<u64, KmmError> {
        if let Some(obj) = self.kmalloc_fast(size, gfp) {
            return Ok(obj);
        }
        self.kmalloc_full(size, gfp, Location::caller())
    }

    /// The common `kmalloc()`: a size served by a general cache, taken by
    /// [`Self::slab_alloc_fast`]; otherwise `None`, having changed nothing.
    #[inline(always)]
    fn kmalloc_fast(&self, size: usize, gfp: GfpFlags) -> Option<u64> {
        if size == 0 || size > self.kmalloc_max_cache_size() {
            return None;
        }
        let ty = (gfp.bits() & GfpFlags::__GFP_DMA.bits()) as usize;
        let c = KmemCache::unpack(self.slab.kmalloc[ty][kmalloc_index(size)].load(Relaxed))?;
        self.slab_alloc_fast(c, gfp)
    }

    /// `kmalloc()` the whole way.
    #[inline(never)]
    fn kmalloc_full(
        &self,
        size: usize,
        gfp: GfpFlags,
        caller: &'static Location<'static>,
    ) -> Result<u64, KmmError> {
        self.__kmalloc(size, gfp, caller)
    }

    /// `kzalloc()`: `kmalloc` of zeroed memory.
    #[inline]
    #[track_caller]
    pub fn kzalloc(&self, size: usize, gfp: GfpFlags) -> Result<u64, KmmError> {
        self.__kmalloc(size, gfp | GfpFlags::__GFP_ZERO, Location::caller())
    }

    /// `kcalloc()`: a zeroed array of `n` elements of `size` bytes; an
    /// overflowing product is an error (Linux returns NULL).
    #[track_caller]
    pub fn kcalloc(&self, n: usize, size: usize, gfp: GfpFlags) -> Result<u64, KmmError> {
        let bytes = n.checked_mul(size).ok_or(KmmError::InvalidArgument {
            what: "kcalloc: n * size overflows",
        })?;
        self.__kmalloc(bytes, gfp | GfpFlags::__GFP_ZERO, Location::caller())
    }

    #[inline]
    pub(crate) fn __kmalloc(
        &self,
        size: usize,
        gfp: GfpFlags,
        caller: &'static Location<'static>,
    ) -> Result<u64, KmmError> {
        if size <= self.kmalloc_max_cache_size() {
            if size == 0 {
                return Ok(ZERO_SIZE_PTR);
            }
            let ty = (gfp.bits() & GfpFlags::__GFP_DMA.bits()) as usize;
            let h = self.slab.kmalloc[ty][kmalloc_index(size)].load(Relaxed);
            return match KmemCache::unpack(h) {
                Some(c) => self.slab_alloc(c, gfp, caller),
                None => Err(KmmError::InvalidArgument {
                    what: "kmalloc before kmem_cache_init",
                }),
            };
        }
        self.kmalloc_large(size, gfp)
    }

    /// `kmalloc_large()`: a compound page of the smallest order holding `size`.
    #[cold]
    #[inline(never)]
    fn kmalloc_large(&self, size: usize, gfp: GfpFlags) -> Result<u64, KmmError> {
        if size > self.kmalloc_max_size() {
            if !gfp.contains(GfpFlags::__GFP_NOWARN) {
                let p = &self.platform;
                let cpu = p.smp_processor_id();
                self.with_current(&mut |pid, _| {
                    p.printk(format_args!(
                        "WARNING: CPU: {cpu} PID: {pid} at mm/slab_common.rs:{} __kmalloc_large_node: size {size} > KMALLOC_MAX_SIZE {}",
                        line!(),
                        self.kmalloc_max_size()
                    ))
                });
            }
            return Err(KmmError::TooLarge {
                size: size as u64,
                max: self.kmalloc_max_size() as u64,
                what: "KMALLOC_MAX_SIZE",
            });
        }
        if gfp.intersects(GfpFlags::__GFP_HIGHMEM | GfpFlags::__GFP_DMA32) {
            self.platform.printk(format_args!(
                "Unexpected gfp: {:#x} ({}). kmalloc cannot return high memory or ZONE_DMA32. Fix your code!",
                gfp.bits(),
                gfp
            ));
            return Err(KmmError::InvalidGfp {
                gfp,
                why: "kmalloc cannot use __GFP_HIGHMEM or __GFP_DMA32",
            });
        }
        let order = self.get_order(size as u64);
        let page = self.alloc_pages(gfp | GfpFlags::__GFP_COMP, order)?;
        let Some(addr) = self.page_address(page) else {
            let _ = self.__free_pages(page, order);
            return Err(KmmError::NoMemory { order, gfp });
        };
        page.set_mapping(LARGE_KMALLOC_TAG);
        self.slab.nr_unreclaimable.fetch_add(1 << order, Relaxed);
        Ok(addr)
    }

    /// `kfree()`: frees what `kmalloc` (or any slab cache) returned. NULL (0)
    /// and [`ZERO_SIZE_PTR`] are ignored. Anything else — an address inside
    /// an object, a page from `alloc_pages`, memory that was never allocated —
    /// is reported and refused: nothing is freed.
    #[inline(always)]
    #[track_caller]
    pub fn kfree(&self, addr: u64) -> Result<(), KmmError> {
        if addr <= ZERO_SIZE_PTR || self.kfree_fast(addr) {
            return Ok(());
        }
        self.kfree_full(addr, Location::caller())
    }

    /// The common `kfree()`: a slab object, pushed by
    /// [`Self::slab_free_found_fast`]; otherwise `false`, having changed nothing.
    #[inline(always)]
    fn kfree_fast(&self, addr: u64) -> bool {
        match self.slab_cache_of(addr) {
            Some(found) => self.slab_free_found_fast(found, addr),
            None => false,
        }
    }

    /// `kfree()` the whole way: slab objects, large kmallocs, reports.
    #[inline(never)]
    fn kfree_full(&self, addr: u64, caller: &'static Location<'static>) -> Result<(), KmmError> {
        match self.slab_cache_of(addr) {
            Some(found) => self.slab_free_found(found, addr, caller),
            None => self.kfree_large(addr, caller),
        }
    }

    #[cold]
    #[inline(never)]
    fn kfree_large(&self, addr: u64, caller: &'static Location<'static>) -> Result<(), KmmError> {
        if let Ok(page) = self.virt_to_page(addr) {
            let large = page.is_head() && page.mapping() == LARGE_KMALLOC_TAG;
            if large && self.page_address(page) == Some(addr) {
                let order = page.alloc_order().unwrap_or(0);
                page.set_mapping(0);
                self.__free_pages(page, order)?;
                self.slab.nr_unreclaimable.fetch_sub(1 << order, Relaxed);
                return Ok(());
            }
        }
        self.events.slab_errors.fetch_add(1, Relaxed);
        let p = &self.platform;
        let cpu = p.smp_processor_id();
        self.with_current(&mut |pid, _| {
            p.printk(format_args!(
                "WARNING: CPU: {cpu} PID: {pid} at {}:{} kfree",
                caller.file(),
                caller.line()
            ))
        });
        match self.virt_to_page(addr) {
            Ok(page) => p.printk(format_args!(
                "kfree: object pointer 0x{addr:016x} was not returned by kmalloc (page flags {})",
                crate::mm_types::DisplayPageFlags(page.raw_flags())
            )),
            Err(_) => p.printk(format_args!(
                "kfree: object pointer 0x{addr:016x} is not a kernel direct-map address"
            )),
        }
        Err(KmmError::BadObject {
            addr,
            why: "kfree of a pointer kmalloc did not return",
        })
    }

    /// `ksize()`: the usable size of a kmalloc'ed (or slab) object — its
    /// cache's object size, or the pages of a large kmalloc. 0 for NULL and
    /// [`ZERO_SIZE_PTR`].
    pub fn ksize(&self, addr: u64) -> Result<usize, KmmError> {
        if addr <= ZERO_SIZE_PTR {
            return Ok(0);
        }
        if let Some(found) = self.slab_cache_of(addr) {
            return self.kmem_cache_size(found.cache);
        }
        let page = self.virt_to_page(addr)?;
        if page.is_head() && page.mapping() == LARGE_KMALLOC_TAG {
            let order = page.alloc_order().unwrap_or(0);
            return Ok((self.page_size() as usize) << order);
        }
        Err(KmmError::BadObject {
            addr,
            why: "ksize of a pointer kmalloc did not return",
        })
    }

    /// `krealloc()`: resizes a kmalloc'ed object. The same address when the
    /// new size fits its size class; otherwise a new object with the old
    /// contents, the old one freed. `krealloc(0, n)` is `kmalloc(n)`;
    /// `krealloc(p, 0)` frees `p` and returns [`ZERO_SIZE_PTR`]. On failure
    /// the old object is untouched.
    #[track_caller]
    pub fn krealloc(&self, addr: u64, new_size: usize, gfp: GfpFlags) -> Result<u64, KmmError> {
        let caller = Location::caller();
        if addr <= ZERO_SIZE_PTR {
            return self.__kmalloc(new_size, gfp, caller);
        }
        if new_size == 0 {
            self.kfree(addr)?;
            return Ok(ZERO_SIZE_PTR);
        }
        let ks = self.ksize(addr)?;
        if new_size <= ks {
            if gfp.contains(GfpFlags::__GFP_ZERO) {
                self.mem
                    .fill(self.__pa(addr)? + new_size as u64, ks - new_size, 0)?;
            }
            return Ok(addr);
        }
        let new = self.__kmalloc(new_size, gfp, caller)?;
        self.mem.copy(self.__pa(new)?, self.__pa(addr)?, ks)?;
        self.kfree(addr)?;
        Ok(new)
    }
}

/// `/proc/slabinfo`: version 2.1, one line per cache, newest first.
pub fn slabinfo<P: Platform>(k: &Kmm<P>, out: &mut dyn Write) -> fmt::Result {
    writeln!(out, "slabinfo - version: 2.1")?;
    writeln!(
        out,
        "# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>"
    )?;
    for c in k.kmem_caches().iter() {
        let Ok(i) = k.kmem_cache_info(c) else {
            continue;
        };
        writeln!(
            out,
            "{:<17} {:>6} {:>6} {:>6} {:>4} {:>4} : tunables {:>4} {:>4} {:>4} : slabdata {:>6} {:>6} {:>6}",
            i.name.as_str(),
            i.active_objs,
            i.num_objs,
            i.size,
            i.objects_per_slab,
            i.pages_per_slab,
            i.limit,
            i.batchcount,
            i.shared_factor,
            i.active_slabs,
            i.num_slabs,
            i.shared_avail
        )?;
    }
    Ok(())
}

/// A detailed view of every cache (`kmm slabinfo -v`): layout, colouring,
/// constructor calls, per-CPU caching and list lengths.
pub fn slabinfo_detail<P: Platform>(k: &Kmm<P>, out: &mut dyn Write) -> fmt::Result {
    writeln!(
        out,
        "# name            objsize   size align order num colour colour_off colour_next  full partial  free cpu_cached  grown reaped ctor_calls allocmiss freemiss errors flags"
    )?;
    for c in k.kmem_caches().iter() {
        let Ok(i) = k.kmem_cache_info(c) else {
            continue;
        };
        writeln!(
            out,
            "{:<17} {:>7} {:>6} {:>5} {:>5} {:>3} {:>6} {:>10} {:>11} {:>5} {:>7} {:>5} {:>10} {:>6} {:>6} {:>10} {:>9} {:>8} {:>6} {:?}",
            i.name.as_str(),
            i.object_size,
            i.size,
            i.align,
            i.order,
            i.objects_per_slab,
            i.colour,
            i.colour_off,
            i.colour_next,
            i.full_slabs,
            i.partial_slabs,
            i.free_slabs,
            i.cpu_cached,
            i.grown,
            i.reaped,
            i.ctor_calls,
            i.allocmiss,
            i.freemiss,
            i.errors,
            i.flags
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_table_agrees_with_the_classes() {
        for size in 1..=8192 {
            assert_eq!(kmalloc_index(size), kmalloc_index_slow(size), "size {size}");
            assert!(KMALLOC_SIZES[kmalloc_index(size)] >= size);
        }
    }

    #[test]
    fn rounding_follows_linux() {
        let class = |n| KMALLOC_SIZES[kmalloc_index(n)];
        for (req, got) in [
            (1, 8),
            (8, 8),
            (9, 16),
            (33, 64),
            (64, 64),
            (65, 96),
            (96, 96),
            (97, 128),
            (129, 192),
            (192, 192),
            (193, 256),
            (257, 512),
            (513, 1024),
            (1025, 2048),
            (4000, 4096),
            (4097, 8192),
            (8192, 8192),
        ] {
            assert_eq!(class(req), got, "kmalloc({req})");
            assert!(got < 2 * req || req <= 8, "at most twice the request");
        }
    }

    #[test]
    fn classes_per_page_size() {
        assert_eq!(nr_kmalloc_classes(4096), 13);
        assert_eq!(kmalloc_max_cache_size(4096), 8192);
        assert_eq!(nr_kmalloc_classes(8192), 14);
        assert_eq!(nr_kmalloc_classes(65536), 17);
        assert_eq!(kmalloc_max_cache_size(65536), 131072);
    }

    #[test]
    fn names_are_linux_names() {
        let n = |ty, s| {
            let k = kmalloc_name(ty, s);
            std::string::String::from_utf8(k.buf[..k.len].to_vec()).unwrap()
        };
        assert_eq!(n(KmallocType::Normal, 8), "kmalloc-8");
        assert_eq!(n(KmallocType::Normal, 192), "kmalloc-192");
        assert_eq!(n(KmallocType::Normal, 1024), "kmalloc-1k");
        assert_eq!(n(KmallocType::Normal, 8192), "kmalloc-8k");
        assert_eq!(n(KmallocType::Dma, 96), "dma-kmalloc-96");
        assert_eq!(n(KmallocType::Dma, 131072), "dma-kmalloc-128k");
    }

    #[test]
    fn boot_arrays_fit_every_class() {
        // 8 small classes of 1024 bytes, 512 and 1k (54), 2k and 4k (24), 8k (8).
        let per_cpu = 8 * 1024 + 2 * (64 + 448) + 2 * (64 + 192) + (64 + 64);
        assert_eq!(boot_arrays_bytes(4096, 1), 2 * per_cpu);
        // With more than one CPU, classes up to a page add a shared array of
        // 8 batches: 480 entries, 216 for 512 and 1k, 96 for 2k and 4k.
        let shared = 8 * (64 + 3840) + 2 * (64 + 1728) + 2 * (64 + 768);
        assert_eq!(boot_arrays_bytes(4096, 4), 2 * (4 * per_cpu + shared));
    }
}
