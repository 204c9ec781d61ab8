//! The slab allocator: object caches (`mm/slab.c`, `mm/slab.h`), with the
//! debugging of `mm/slub.c` (poisoning, red zones, owner tracking).
//!
//! A **cache** ([`KmemCache`]) hands out objects of one size. Its memory comes
//! in **slabs**: `2^order` contiguous pages from the page allocator, every page
//! marked `PG_slab`. A slab is *full*, *partial* or *free* (empty), and sits on
//! the cache's list of that name; allocation prefers a partial slab, then a
//! free one, and only then grows the cache by one slab (seed 000 §2.3, seed
//! 001 §8.2). Successive slabs start their first object at a different
//! cache-line offset (**colouring**), so that equal objects of different slabs
//! do not compete for the same hardware cache lines.
//!
//! In front of the slab lists sits a **per-CPU array** of free objects per
//! cache (SLAB's `array_cache`): `kmem_cache_alloc` pops the most recently
//! freed object of the calling CPU, `kmem_cache_free` pushes onto it. Only when
//! the array is empty (or full) does the CPU take the cache lock and move a
//! batch of objects from (or to) the slabs.
//!
//! # Where the metadata lives
//!
//! Like Linux, and without a heap:
//!
//! - the cache descriptor is a slot of a fixed table inside [`Kmm`]; a
//!   [`KmemCache`] is a small copyable handle (slot and generation), so a
//!   handle to a destroyed cache is an error value, not a dangling pointer;
//! - the slab descriptor is the head page's `struct page` (`PG_slab`;
//!   `mapping` = the cache's tag, `private` = index of the first free object,
//!   `_mapcount` = objects in use, `index` = colour offset; tail pages are
//!   compound tails pointing at the head);
//! - the free list of a slab threads object indices through the free objects
//!   (SLUB's free pointer): at the start of the object, or — when a
//!   constructor or debugging needs the object's bytes kept — in a word after
//!   the object;
//! - the per-CPU arrays are in simulated RAM: for the boot-time kmalloc
//!   caches in a block reserved from memblock (SLAB's static boot arrays),
//!   for every later cache in one `kmalloc`ed block (as SLAB's
//!   `alloc_arraycache()` does), one cache-line aligned array per CPU.
//!
//! # Locking
//!
//! `registry` (Linux's `slab_mutex`: create, destroy) → `shrink` (drains
//! from other CPUs: shrink, reap, destroy) → a CPU's array lock → the cache's
//! list lock. The array lock is the analog of SLAB's `local_irq_disable()`:
//! only the owning CPU takes it, except when a drain empties the array from
//! elsewhere. The page allocator is never called with a slab lock held, so
//! direct reclaim may shrink caches from inside any allocation.
//!
//! # Debugging
//!
//! `SLAB_POISON`, `SLAB_RED_ZONE` and `SLAB_STORE_USER` (per cache, or for
//! every cache created later with [`Kmm::set_slub_debug`], like `slub_debug=`)
//! give each object a debug state word and, as asked, red zones (`0xbb` free,
//! `0xcc` in use), poison (`0x6b`, last byte `0xa5`) and the call sites of its
//! last allocation and free. They are checked when the object changes hands,
//! and damage is reported in SLUB's format (`BUG <cache> (Not tainted): ...`).
//! Poison is not applied to caches with a constructor (as in SLUB): the
//! constructed state must survive a free.
//!
//! Without debugging, every free still checks that the pointer is an object of
//! this cache (its page is a slab of the cache, the address is an object
//! boundary). Double frees are caught when the object is the one freed last on
//! the CPU or the first free object of its slab; others reach the slab free
//! list and are not detected (as in Linux without debugging).
//!
//! # Differences from Linux, and why
//!
//! - The free list is SLUB's (object indices threaded through free objects)
//!   rather than SLAB's `kmem_bufctl_t` array at the start of the slab: it
//!   needs no off-slab management for large objects, so `kmalloc-4k` fits
//!   one object per page and `scullc`'s 4000-byte quanta one per page too.
//!   With a constructor the link moves after the object, so seed 000's
//!   16-byte `student` takes 24 bytes (SLUB shows the same).
//! - A cache has `leftover / colour_off + 1` colours: offsets from 0 up to
//!   the whole leftover space. SLAB's `colour` is one fewer and so never uses
//!   the last whole cache line (a page of 96-byte objects would not colour).
//! - There is one set of slab lists per cache, not one per NUMA node; slabs
//!   come from the allocating CPU's node.
//! - Direct reclaim drains the per-CPU arrays of every reapable cache
//!   completely (SLAB's periodic `cache_reap` drains a fifth at a time).
//! - Damage found on allocation (poison, red zone, state word) is reported
//!   and repaired, and the object is handed out (SLAB's behaviour); damage
//!   found on free refuses the free (SLUB's "Object at ... not freed").
//! - The debug flags of an idle cache can be changed at run time
//!   ([`Kmm::kmem_cache_set_debug`]), since the kmalloc caches exist before
//!   anything could pass `slub_debug=`.
//! - `might_sleep()` is not checked on the object fast path; a sleeping
//!   allocation that must grow the cache is checked by the page allocator.

use core::fmt;
use core::panic::Location;
use core::sync::atomic::{
    AtomicU32, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};

use crate::error::KmmError;
use crate::gfp::{GfpFlags, GFP_ZONEMASK};
use crate::list::ListHead;
use crate::local_lock::LocalLock;
use crate::mm::Kmm;
use crate::mm_types::{DisplayPageFlags, Page, PageFlags, NIL};
use crate::platform::{preempt, Platform};
use crate::ram::{PhysMem, RamSafe};
use crate::spinlock::SpinLock;

/// Slots in the cache table: at most this many caches exist at once (Linux's
/// `slab_caches` list has no limit; kmm keeps descriptors in a fixed table).
pub const MAX_CACHES: usize = 256;
/// Longest cache name, in bytes (Linux keeps a pointer to the caller's string).
pub const CACHE_NAME_MAX: usize = 31;
/// `cache_line_size()`: the alignment of `SLAB_HWCACHE_ALIGN` and the colour unit.
pub const CACHE_LINE_SIZE: u64 = 64;
/// `ARCH_SLAB_MINALIGN`: the smallest object alignment.
pub const ARCH_SLAB_MINALIGN: u64 = 8;
/// `SLAB_OBJ_MAX_NUM`: most objects one slab holds (bounds a slab walk).
pub const MAX_OBJS_PER_SLAB: u32 = 8192;
/// `POISON_FREE`: the bytes of a free object when poisoning.
pub const POISON_FREE: u8 = 0x6b;
/// `POISON_END`: the last byte of a poisoned object.
pub const POISON_END: u8 = 0xa5;
/// `SLUB_RED_INACTIVE`: red-zone bytes of a free object.
pub const SLUB_RED_INACTIVE: u8 = 0xbb;
/// `SLUB_RED_ACTIVE`: red-zone bytes of an object in use.
pub const SLUB_RED_ACTIVE: u8 = 0xcc;

/// Debug state word of a free object (SLAB's `RED_INACTIVE`).
const STATE_INACTIVE: u64 = 0x09F9_1102_9D74_E35B;
/// Debug state word of an object in use (SLAB's `RED_ACTIVE`).
const STATE_ACTIVE: u64 = 0xD841_56C5_6356_88C0;
/// `mapping` of a slab's head page: this tag, the generation and the slot.
const SLAB_TAG: u64 = 0x51ab << 48;
const TAG_MASK: u64 = 0xffff << 48;
/// `mapping` of the head page of a large kmalloc (Linux: `PG_large_kmalloc`).
pub(crate) const LARGE_KMALLOC_TAG: u64 = 0x1a46e << 44;
/// Object index = (offset * recip) >> RECIP_SHIFT, exact for object boundaries.
const RECIP_SHIFT: u32 = 40;
/// Bytes of one owner-tracking record (`struct track`).
const TRACK_SIZE: u64 = 16;
/// Bytes of a per-CPU array's header.
const AC_HEAD: u64 = 64;
/// Call sites remembered for `SLAB_STORE_USER`.
const CALL_SITES: usize = 512;

bitflags::bitflags! {
    /// `slab_flags_t`: how a cache lays out and treats its objects (`SLAB_*`).
    #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
    pub struct SlabFlags: u32 {
        /// `SLAB_RED_ZONE`: guard bytes around each object, checked when it
        /// changes hands (debug).
        const SLAB_RED_ZONE = 0x400;
        /// `SLAB_POISON`: free objects are filled with `0x6b` (last byte
        /// `0xa5`), checked on the next allocation (debug).
        const SLAB_POISON = 0x800;
        /// `SLAB_NO_REAP`: memory pressure does not shrink this cache (an
        /// explicit `kmem_cache_shrink` still does).
        const SLAB_NO_REAP = 0x1000;
        /// `SLAB_HWCACHE_ALIGN`: align objects to a cache line.
        const SLAB_HWCACHE_ALIGN = 0x2000;
        /// `SLAB_CACHE_DMA`: slabs come from `ZONE_DMA`.
        const SLAB_CACHE_DMA = 0x4000;
        /// `SLAB_STORE_USER`: each object remembers where it was last
        /// allocated and freed (debug).
        const SLAB_STORE_USER = 0x10000;
        /// `SLAB_RECLAIM_ACCOUNT`: the cache's pages count as reclaimable
        /// (`SReclaimable` in `/proc/meminfo`).
        const SLAB_RECLAIM_ACCOUNT = 0x20000;
    }
}

/// The debugging flags (`SLAB_DEBUG_FLAGS`).
pub const SLAB_DEBUG_FLAGS: SlabFlags = SlabFlags::SLAB_RED_ZONE
    .union(SlabFlags::SLAB_POISON)
    .union(SlabFlags::SLAB_STORE_USER);

/// GFP bits slab allocations refuse (`GFP_SLAB_BUG_MASK`).
const GFP_SLAB_BUG: u32 =
    GfpFlags::__GFP_HIGHMEM.bits() | GfpFlags::__GFP_DMA32.bits() | !GfpFlags::all().bits();

/// `struct kmem_cache *` (LDD3's `kmem_cache_t *`): a handle naming one cache.
///
/// The handle stays a plain value after [`Kmm::kmem_cache_destroy`]; using it
/// then is an error ([`KmmError::StaleCache`]), never a use-after-free.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct KmemCache {
    slot: u16,
    gen: u32,
}

impl KmemCache {
    /// The slot of the cache table this handle names.
    pub fn slot(self) -> usize {
        self.slot as usize
    }

    /// The value kept in a slab head page's `mapping`.
    #[inline]
    fn tag(self) -> u64 {
        SLAB_TAG | (self.gen as u64) << 16 | self.slot as u64
    }

    #[inline]
    fn from_tag(tag: u64) -> Option<KmemCache> {
        (tag & TAG_MASK == SLAB_TAG).then_some(KmemCache {
            slot: tag as u16,
            gen: (tag >> 16) as u32,
        })
    }

    /// The handle as one number (never 0), e.g. for a mempool's
    /// `pool_data`, where Linux passes the `struct kmem_cache *`.
    pub fn to_raw(self) -> u64 {
        self.pack()
    }

    /// A handle back from [`Self::to_raw`]. Any number is accepted; a
    /// handle that names no live cache is refused when used.
    pub fn from_raw(v: u64) -> Option<KmemCache> {
        Self::unpack(v)
    }

    #[inline]
    pub(crate) fn pack(self) -> u64 {
        (self.gen as u64) << 16 | self.slot as u64 | 1 << 63
    }

    #[inline]
    pub(crate) fn unpack(v: u64) -> Option<KmemCache> {
        (v >> 63 == 1).then_some(KmemCache {
            slot: v as u16,
            gen: (v >> 16) as u32,
        })
    }
}

/// A cache's name (`kmem_cache->name`): at most 31 bytes, no white space.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CacheName {
    bytes: [u8; CACHE_NAME_MAX + 1],
    len: u8,
}

impl CacheName {
    const EMPTY: CacheName = CacheName {
        bytes: [0; CACHE_NAME_MAX + 1],
        len: 0,
    };

    /// Checks a name as `kmem_cache_create` does.
    pub fn new(name: &str) -> Result<CacheName, KmmError> {
        if name.is_empty() {
            return Err(KmmError::InvalidArgument {
                what: "cache name is empty",
            });
        }
        if name.len() > CACHE_NAME_MAX {
            return Err(KmmError::InvalidArgument {
                what: "cache name is longer than 31 bytes",
            });
        }
        if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(KmmError::InvalidArgument {
                what: "cache name contains white space",
            });
        }
        let mut n = CacheName::EMPTY;
        n.bytes[..name.len()].copy_from_slice(name.as_bytes());
        n.len = name.len() as u8;
        Ok(n)
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("?")
    }
}

impl fmt::Display for CacheName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl fmt::Debug for CacheName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// What a constructor gets: the new object's address and access to its bytes
/// (Linux passes `void *obj`).
pub struct ObjectInit<'a> {
    mem: &'a PhysMem,
    phys: u64,
    addr: u64,
    size: usize,
}

impl ObjectInit<'_> {
    /// The object's kernel virtual address.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// The object's size (`kmem_cache_size()`).
    pub fn size(&self) -> usize {
        self.size
    }

    fn range(&self, offset: usize, len: usize) -> Result<u64, KmmError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(self.phys + offset as u64),
            _ => Err(KmmError::InvalidAddress {
                addr: self.addr.wrapping_add(offset as u64),
                what: "offset outside the object",
            }),
        }
    }

    /// Writes `data` at `offset` into the object.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), KmmError> {
        self.mem.write(self.range(offset, data.len())?, data)
    }

    /// Reads the object's bytes at `offset` into `buf`.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), KmmError> {
        self.mem.read(self.range(offset, buf.len())?, buf)
    }

    /// Fills the whole object with `byte` (`memset`).
    pub fn fill(&self, byte: u8) -> Result<(), KmmError> {
        self.mem.fill(self.phys, self.size, byte)
    }

    /// Writes a little-endian `u64` at `offset`.
    pub fn write_u64(&self, offset: usize, v: u64) -> Result<(), KmmError> {
        self.write(offset, &v.to_le_bytes())
    }

    /// Reads a little-endian `u64` at `offset`.
    pub fn read_u64(&self, offset: usize) -> Result<u64, KmmError> {
        let mut b = [0u8; 8];
        self.read(offset, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

/// A constructor (`void (*ctor)(void *)`): runs once per object when a slab
/// is populated, never on `kmem_cache_alloc`.
pub type Ctor = fn(ObjectInit<'_>);

/// The list a slab is on, by its objects in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlabList {
    /// `slabs_full`: every object in use.
    Full = 0,
    /// `slabs_partial`: some in use.
    Partial = 1,
    /// `slabs_free`: none in use.
    Free = 2,
}

impl SlabList {
    #[inline]
    fn of(inuse: u32, num: u32) -> SlabList {
        if inuse == 0 {
            SlabList::Free
        } else if inuse >= num {
            SlabList::Full
        } else {
            SlabList::Partial
        }
    }
}

/// Where everything is inside one object's stride (`cachep->size` bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// `object_size`: what the creator asked for.
    pub(crate) size: u32,
    /// Object alignment.
    pub(crate) align: u32,
    /// `size`: bytes from one object to the next.
    pub(crate) stride: u32,
    /// Offset of the object in its stride (the left red zone's size).
    pub(crate) obj_off: u32,
    /// End of the right red zone (or of the object).
    pub(crate) red_end: u32,
    /// Offset of the free-list link.
    pub(crate) link_off: u32,
    /// Offset of the debug state word.
    pub(crate) state_off: u32,
    /// Offset of the two owner-tracking records.
    pub(crate) track_off: u32,
    /// `gfporder`.
    pub(crate) order: u32,
    /// Objects per slab.
    pub(crate) num: u32,
    /// Colours: distinct first-object offsets (`cachep->colour`).
    pub(crate) colour: u32,
    /// The colour unit in bytes (`colour_off`).
    pub(crate) colour_off: u32,
    /// Reciprocal of `stride` for the offset → index division.
    pub(crate) recip: u64,
    /// Free objects are poisoned.
    pub(crate) poison: bool,
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

impl Geometry {
    /// `calculate_alignment()` + `calculate_sizes()` + `calculate_slab_order()`.
    pub(crate) fn calculate(
        size: u64,
        align: u64,
        flags: SlabFlags,
        has_ctor: bool,
        page_shift: u32,
        slab_max_order: u32,
    ) -> Result<Geometry, KmmError> {
        let page_size = 1u64 << page_shift;
        let mut align = align.max(ARCH_SLAB_MINALIGN);
        if flags.contains(SlabFlags::SLAB_HWCACHE_ALIGN) {
            let mut ralign = CACHE_LINE_SIZE;
            while size <= ralign / 2 {
                ralign /= 2;
            }
            align = align.max(ralign);
        }
        let debug = flags.intersects(SLAB_DEBUG_FLAGS);
        let mut off = 0;
        let obj_off = if flags.contains(SlabFlags::SLAB_RED_ZONE) {
            align_up(8, align)
        } else {
            0
        };
        off += obj_off + size;
        if flags.contains(SlabFlags::SLAB_RED_ZONE) {
            off = align_up(off, 8) + 8;
        }
        let red_end = off;
        let poison = flags.contains(SlabFlags::SLAB_POISON) && !has_ctor;
        let link_off = if has_ctor || debug {
            off = align_up(off, 8);
            let l = off;
            off += 8;
            l
        } else {
            obj_off
        };
        let state_off = if debug {
            let s = off;
            off += 8;
            s
        } else {
            0
        };
        let track_off = if flags.contains(SlabFlags::SLAB_STORE_USER) {
            let t = off;
            off += 2 * TRACK_SIZE;
            t
        } else {
            0
        };
        let stride = align_up(off.max(8), align);
        let mut best = None;
        for order in 0..crate::MAX_ORDER as u32 {
            let bytes = page_size << order;
            let num = (bytes / stride).min(MAX_OBJS_PER_SLAB as u64);
            if num == 0 {
                continue;
            }
            let left = bytes - num * stride;
            best = Some((order, num, left));
            if flags.contains(SlabFlags::SLAB_RECLAIM_ACCOUNT) || order >= slab_max_order {
                break;
            }
            if left * 8 <= bytes {
                break;
            }
        }
        let Some((order, num, left)) = best else {
            return Err(KmmError::InvalidArgument {
                what: "object too large for a slab",
            });
        };
        let colour_off = CACHE_LINE_SIZE.max(align);
        Ok(Geometry {
            size: size as u32,
            align: align as u32,
            stride: stride as u32,
            obj_off: obj_off as u32,
            red_end: red_end as u32,
            link_off: link_off as u32,
            state_off: state_off as u32,
            track_off: track_off as u32,
            order,
            num: num as u32,
            // Offsets 0, colour_off, ... up to the leftover space (SLAB counts
            // one fewer and never uses the last whole cache line).
            colour: (left / colour_off) as u32 + 1,
            colour_off: colour_off as u32,
            recip: (1u64 << RECIP_SHIFT).div_ceil(stride),
            poison,
        })
    }
}

/// `enable_cpucache()`: the per-CPU array limit for objects of `stride` bytes.
pub fn cpucache_limit(stride: u64, page_size: u64) -> u32 {
    if stride > 131072 {
        1
    } else if stride > page_size {
        8
    } else if stride > 1024 {
        24
    } else if stride > 256 {
        54
    } else {
        120
    }
}

/// SLAB's `shared` tunable: on a machine with more than one CPU, a cache of
/// objects up to a page has a shared array holding this many batches, where
/// one CPU's flush leaves objects another CPU's refill takes, without going
/// back to the slabs (`enable_cpucache()`).
pub const SLAB_SHARED_FACTOR: u32 = 8;

/// `enable_cpucache()`'s sizes for a cache of objects `stride` bytes apart:
/// the per-CPU arrays, then the shared array, as one block.
#[derive(Clone, Copy)]
pub(crate) struct CpuCacheLayout {
    /// `limit` of a per-CPU array.
    pub(crate) limit: u32,
    /// `batchcount`: half the limit.
    pub(crate) batchcount: u32,
    /// Bytes of one CPU's array.
    pub(crate) ac_stride: u64,
    /// Entries of the shared array (`shared * batchcount`; 0: none).
    pub(crate) shared: u32,
    /// Bytes of the whole block.
    pub(crate) bytes: u64,
}

impl CpuCacheLayout {
    /// The layout for `nr_cpus` CPUs and pages of `page_size` bytes.
    pub(crate) fn new(stride: u64, page_size: u64, nr_cpus: u64) -> CpuCacheLayout {
        let limit = cpucache_limit(stride, page_size);
        let batchcount = limit.div_ceil(2).max(1);
        let shared = if nr_cpus > 1 && stride <= page_size {
            SLAB_SHARED_FACTOR * batchcount
        } else {
            0
        };
        let per_cpu = ac_stride(limit);
        let shared_bytes = if shared > 0 { ac_stride(shared) } else { 0 };
        CpuCacheLayout {
            limit,
            batchcount,
            ac_stride: per_cpu,
            shared,
            bytes: per_cpu * nr_cpus + shared_bytes,
        }
    }
}

/// Bytes of one CPU's array: header plus `limit` entries, in cache lines.
pub(crate) fn ac_stride(limit: u32) -> u64 {
    AC_HEAD + align_up(limit as u64 * 8, CACHE_LINE_SIZE)
}

/// `struct array_cache`: one CPU's stack of free objects of one cache, in
/// simulated RAM. The entries (object addresses) follow the header.
#[repr(C, align(64))]
pub(crate) struct ArrayCache {
    lock: LocalLock,
    /// `avail`: objects on the stack.
    avail: AtomicU32,
    /// `limit`: most objects the stack holds.
    limit: AtomicU32,
    /// `batchcount`: objects moved to or from the slabs at once.
    batchcount: AtomicU32,
    /// Refills from the slab lists (SLAB's `allocmiss`).
    allocmiss: AtomicU64,
    /// Flushes to the slab lists (SLAB's `freemiss`).
    freemiss: AtomicU64,
}

// SAFETY: integer atomics only (the lock word is an `AtomicU32`); every bit
// pattern is a valid value.
unsafe impl RamSafe for ArrayCache {}

const _: () = assert!(core::mem::size_of::<ArrayCache>() as u64 == AC_HEAD);

/// The descriptor of one cache, guarded by its list lock (`kmem_cache` +
/// `kmem_cache_node`).
pub(crate) struct CacheInner {
    name: CacheName,
    flags: SlabFlags,
    kmalloc: bool,
    ctor: Option<Ctor>,
    geo: Geometry,
    limit: u32,
    batchcount: u32,
    colour_next: u32,
    /// What to `kfree` for the per-CPU arrays (0: boot arrays).
    ac_alloc: u64,
    /// Physical address of the shared array (`kmem_cache_node->shared`),
    /// guarded by this lock; 0: none.
    shared: u64,
    /// Its `limit` (entries).
    shared_limit: u32,
    seq: u64,
    /// Slab lists by [`SlabList`].
    lists: [ListHead; 3],
    nr_slabs: [u64; 3],
    /// Free objects on the slabs (not counting per-CPU arrays).
    free_objects: u64,
    /// `free_limit`: free objects above which empty slabs are released.
    free_limit: u64,
    grown: u64,
    reaped: u64,
    ctor_calls: u64,
    errors: u64,
}

impl CacheInner {
    const EMPTY: CacheInner = CacheInner {
        name: CacheName::EMPTY,
        flags: SlabFlags::empty(),
        kmalloc: false,
        ctor: None,
        geo: Geometry {
            size: 0,
            align: 0,
            stride: 0,
            obj_off: 0,
            red_end: 0,
            link_off: 0,
            state_off: 0,
            track_off: 0,
            order: 0,
            num: 0,
            colour: 0,
            colour_off: 0,
            recip: 0,
            poison: false,
        },
        limit: 0,
        batchcount: 0,
        colour_next: 0,
        ac_alloc: 0,
        shared: 0,
        shared_limit: 0,
        seq: 0,
        lists: [ListHead::EMPTY; 3],
        nr_slabs: [0; 3],
        free_objects: 0,
        free_limit: 0,
        grown: 0,
        reaped: 0,
        ctor_calls: 0,
        errors: 0,
    };

    fn total_slabs(&self) -> u64 {
        self.nr_slabs.iter().sum()
    }
}

/// One slot of the cache table. The atomics are what the fast paths read
/// without the lock; they are written before `gen` is published.
#[repr(C, align(64))]
pub(crate) struct CacheSlot {
    /// Generation: odd while a cache lives in the slot.
    gen: AtomicU32,
    flags: AtomicU32,
    stride: AtomicU32,
    obj_off: AtomicU32,
    num: AtomicU32,
    size: AtomicU32,
    ac_stride: AtomicU32,
    /// Entries of one CPU's array (`(ac_stride - AC_HEAD) / 8`).
    ac_entries: AtomicU32,
    recip: AtomicU64,
    /// Physical address of CPU 0's array.
    ac_base: AtomicU64,
    /// The living cache's [`KmemCache::tag`], as its slabs' head pages carry it.
    tag: AtomicU64,
    /// `gen` while the cache lives without debugging, else 0 (never a live
    /// generation): one load tells the fast paths both.
    fast_gen: AtomicU32,
    inner: SpinLock<CacheInner>,
}

impl CacheSlot {
    const fn new() -> CacheSlot {
        CacheSlot {
            gen: AtomicU32::new(0),
            flags: AtomicU32::new(0),
            stride: AtomicU32::new(0),
            obj_off: AtomicU32::new(0),
            num: AtomicU32::new(0),
            size: AtomicU32::new(0),
            ac_stride: AtomicU32::new(0),
            ac_entries: AtomicU32::new(0),
            recip: AtomicU64::new(0),
            ac_base: AtomicU64::new(0),
            tag: AtomicU64::new(0),
            fast_gen: AtomicU32::new(0),
            inner: SpinLock::new(CacheInner::EMPTY),
        }
    }

    #[inline]
    fn debug(&self) -> bool {
        self.flags.load(Relaxed) & SLAB_DEBUG_FLAGS.bits() != 0
    }

    /// Publishes the cache's flags and, from them, `fast_gen` (with
    /// release ordering, after everything the fast paths read).
    fn set_flags(&self, flags: SlabFlags, gen: u32) {
        self.flags.store(flags.bits(), Relaxed);
        let fast = if flags.intersects(SLAB_DEBUG_FLAGS) {
            0
        } else {
            gen
        };
        self.fast_gen.store(fast, Release);
    }
}

/// Interned call sites for owner tracking (Linux stores return addresses).
struct CallSites {
    sites: [Option<&'static Location<'static>>; CALL_SITES],
}

impl CallSites {
    /// 1-based index of `loc`, or 0 when the table is full.
    fn intern(&mut self, loc: &'static Location<'static>) -> u32 {
        let h = (loc.line() as usize)
            .wrapping_mul(31)
            .wrapping_add(loc.column() as usize)
            .wrapping_add(loc.file().len().wrapping_mul(7));
        for i in 0..CALL_SITES {
            let j = (h + i) % CALL_SITES;
            match self.sites[j] {
                Some(l) if l == loc => return j as u32 + 1,
                Some(_) => continue,
                None => {
                    self.sites[j] = Some(loc);
                    return j as u32 + 1;
                }
            }
        }
        0
    }

    fn get(&self, idx: u32) -> Option<&'static Location<'static>> {
        self.sites
            .get((idx as usize).wrapping_sub(1))
            .copied()
            .flatten()
    }
}

/// The slab allocator's part of [`Kmm`]: the cache table and global state.
pub(crate) struct SlabState {
    slots: [CacheSlot; MAX_CACHES],
    /// `slab_mutex`: serialises creating and destroying caches.
    registry: SpinLock<()>,
    shrink: SpinLock<()>,
    seq: AtomicU64,
    /// `slub_debug=`: debug flags for caches created from now on.
    debug: AtomicU32,
    pub(crate) slab_max_order: AtomicU32,
    /// kmalloc caches, packed handles by type (normal, DMA) and size class.
    pub(crate) kmalloc: [[AtomicU64; crate::slab_common::MAX_KMALLOC_CLASSES]; 2],
    pub(crate) nr_kmalloc: AtomicU32,
    /// Boot-time per-CPU arrays: next free byte and end of the reserved block.
    boot_next: AtomicU64,
    boot_end: u64,
    /// `NR_SLAB_RECLAIMABLE` / `NR_SLAB_UNRECLAIMABLE`, in pages.
    pub(crate) nr_reclaimable: AtomicU64,
    pub(crate) nr_unreclaimable: AtomicU64,
    sites: SpinLock<CallSites>,
}

impl SlabState {
    /// A slab allocator whose boot caches carve their per-CPU arrays from
    /// `[boot_phys, boot_phys + boot_len)`.
    pub(crate) fn new(boot_phys: u64, boot_len: u64) -> SlabState {
        SlabState {
            slots: [const { CacheSlot::new() }; MAX_CACHES],
            registry: SpinLock::new(()),
            shrink: SpinLock::new(()),
            seq: AtomicU64::new(0),
            debug: AtomicU32::new(0),
            slab_max_order: AtomicU32::new(1),
            kmalloc: [const { [const { AtomicU64::new(0) }; crate::slab_common::MAX_KMALLOC_CLASSES] };
                2],
            nr_kmalloc: AtomicU32::new(0),
            boot_next: AtomicU64::new(boot_phys),
            boot_end: boot_phys + boot_len,
            nr_reclaimable: AtomicU64::new(0),
            nr_unreclaimable: AtomicU64::new(0),
            sites: SpinLock::new(CallSites {
                sites: [None; CALL_SITES],
            }),
        }
    }

    /// The slot of a live cache.
    #[inline]
    fn slot(&self, c: KmemCache) -> Result<&CacheSlot, KmmError> {
        match self.slots.get(c.slot as usize) {
            Some(s) if s.gen.load(Acquire) == c.gen => Ok(s),
            _ => Err(KmmError::StaleCache { slot: c.slot }),
        }
    }

    /// The slot of a live cache without debugging, for the fast paths.
    #[inline(always)]
    fn slot_fast(&self, c: KmemCache) -> Option<&CacheSlot> {
        let s = self.slots.get(c.slot as usize)?;
        (s.fast_gen.load(Acquire) == c.gen).then_some(s)
    }
}

/// Statistics and layout of one cache: Linux's `struct slabinfo` (what
/// `get_slabinfo()` fills for `/proc/slabinfo`) plus the layout and event
/// counters SLAB's `STATS` keep.
#[derive(Clone, Copy, Debug)]
pub struct KmemCacheInfo {
    /// The cache's name.
    pub name: CacheName,
    /// `object_size`: bytes the creator asked for.
    pub object_size: u32,
    /// `size`: bytes per object including alignment and debug metadata
    /// (slabinfo's `<objsize>`).
    pub size: u32,
    /// Object alignment.
    pub align: u32,
    /// Flags the cache was created with (plus `slub_debug`).
    pub flags: SlabFlags,
    /// `gfporder`: a slab is `2^order` pages.
    pub order: u32,
    /// Objects per slab.
    pub objects_per_slab: u32,
    /// Pages per slab.
    pub pages_per_slab: u32,
    /// Number of colours (distinct first-object offsets).
    pub colour: u32,
    /// Colour unit in bytes.
    pub colour_off: u32,
    /// The colour the next new slab gets.
    pub colour_next: u32,
    /// Per-CPU array limit.
    pub limit: u32,
    /// Per-CPU array batch count.
    pub batchcount: u32,
    /// `sharedfactor`: batches the shared array holds (0: no shared array).
    pub shared_factor: u32,
    /// `sharedavail`: objects waiting in the shared array.
    pub shared_avail: u64,
    /// Objects in use, counting those cached in per-CPU arrays (as SLAB does).
    pub active_objs: u64,
    /// Objects in all slabs.
    pub num_objs: u64,
    /// Slabs with at least one object in use.
    pub active_slabs: u64,
    /// All slabs.
    pub num_slabs: u64,
    /// Slabs on the full, partial and free lists.
    pub full_slabs: u64,
    /// See `full_slabs`.
    pub partial_slabs: u64,
    /// See `full_slabs`.
    pub free_slabs: u64,
    /// Free objects on the slabs.
    pub free_objects: u64,
    /// Free objects waiting in per-CPU arrays.
    pub cpu_cached: u64,
    /// Slabs added (`cache_grow` calls that succeeded).
    pub grown: u64,
    /// Slabs released by shrinking or reaping.
    pub reaped: u64,
    /// Constructor calls.
    pub ctor_calls: u64,
    /// Whether the cache has a constructor.
    pub has_ctor: bool,
    /// Whether this is one of the kmalloc caches.
    pub kmalloc: bool,
    /// Per-CPU array refills from the slabs.
    pub allocmiss: u64,
    /// Per-CPU array flushes to the slabs.
    pub freemiss: u64,
    /// Errors reported for this cache.
    pub errors: u64,
}

/// One slab (`struct slab`, kept in the head page's `struct page`) as
/// [`Kmm::kmem_cache_for_each_slab`] shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlabView {
    /// Frame number of the head page.
    pub pfn: u64,
    /// `2^order` pages.
    pub order: u32,
    /// The list the slab is on.
    pub list: SlabList,
    /// Objects in use (`_mapcount` of the head page).
    pub inuse: u32,
    /// Objects found by walking the slab's free list, or `None` when the walk
    /// met a bad link or a cycle.
    pub free_walk: Option<u32>,
    /// Byte offset of the first object (the colour).
    pub colour_off: u32,
    /// Address of the first object.
    pub first_object: u64,
}

/// Why a pointer is not an object of the cache it was freed to.
#[derive(Clone, Copy, Debug)]
enum BadPtr {
    NotMapped,
    NotSlab(u64),
    OtherCache(u64),
    NotObject(u32),
}

/// A slab object found from its address ([`Kmm::slab_cache_of`]).
#[derive(Clone, Copy)]
pub(crate) struct SlabObject<'a> {
    /// The cache its slab belongs to.
    pub(crate) cache: KmemCache,
    /// Its physical address.
    pub(crate) phys: u64,
    /// The frame of its slab's head page.
    pub(crate) head_pfn: u64,
    /// That page.
    pub(crate) head: &'a Page,
}

/// What debug checks need about one object.
struct Dbg {
    name: CacheName,
    flags: SlabFlags,
    geo: Geometry,
    /// Physical and virtual address of the object's stride.
    phys: u64,
    virt: u64,
    pfn: u32,
}

fn rd32(mem: &PhysMem, phys: u64) -> Result<u32, KmmError> {
    let mut b = [0u8; 4];
    mem.read(phys, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn wr32(mem: &PhysMem, phys: u64, v: u32) -> Result<(), KmmError> {
    mem.write(phys, &v.to_le_bytes())
}

/// Hex bytes and their ASCII, as `print_hex_dump()` prints a line.
struct HexLine<'a>(&'a [u8]);

impl fmt::Display for HexLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{b:02x}")?;
        }
        for _ in self.0.len()..16 {
            f.write_str("   ")?;
        }
        f.write_str("  ")?;
        for &b in self.0 {
            let c = if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            };
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

impl<P: Platform> Kmm<P> {
    // ------------------------------------------------------------ create

    /// `kmem_cache_create()`: a cache of `size`-byte objects aligned to
    /// `align` (0: the default), with `flags` and an optional constructor.
    ///
    /// Errors: a name that is empty, longer than 31 bytes, contains white
    /// space or is already used; a size of 0 or above `KMALLOC_MAX_SIZE`; an
    /// alignment that is not a power of two or exceeds a page; unknown flags;
    /// a call from interrupt context; a full cache table
    /// ([`KmmError::TableFull`]); no memory for the per-CPU arrays.
    pub fn kmem_cache_create(
        &self,
        name: &str,
        size: usize,
        align: usize,
        flags: SlabFlags,
        ctor: Option<Ctor>,
    ) -> Result<KmemCache, KmmError> {
        self.create_cache(name, size as u64, align as u64, flags, ctor, false)
    }

    fn create_error(&self, name: &str, e: KmmError) -> KmmError {
        self.platform.printk(format_args!(
            "kmem_cache_create({name}) integrity check failed: {e}"
        ));
        e
    }

    pub(crate) fn create_cache(
        &self,
        name: &str,
        size: u64,
        align: u64,
        flags: SlabFlags,
        ctor: Option<Ctor>,
        boot: bool,
    ) -> Result<KmemCache, KmmError> {
        let cname = CacheName::new(name).map_err(|e| self.create_error(name, e))?;
        let arg = |what| self.create_error(name, KmmError::InvalidArgument { what });
        if preempt::in_interrupt(self.platform.preempt_count()) {
            return Err(arg("kmem_cache_create() called from interrupt context"));
        }
        if !SlabFlags::all().contains(flags) {
            return Err(arg("unknown SLAB_* flags"));
        }
        if size == 0 || size > self.kmalloc_max_size() as u64 {
            return Err(arg("object size is 0 or above KMALLOC_MAX_SIZE"));
        }
        if align != 0 && (!align.is_power_of_two() || align > self.page_size()) {
            return Err(arg("alignment is not a power of two up to PAGE_SIZE"));
        }
        let flags = flags | SlabFlags::from_bits_truncate(self.slab.debug.load(Relaxed));
        let max_order = self.slab.slab_max_order.load(Relaxed);
        let geo = Geometry::calculate(
            size,
            align,
            flags,
            ctor.is_some(),
            self.page_shift,
            max_order,
        )
        .map_err(|e| self.create_error(name, e))?;
        let ncpu = self.nr_cpu_ids as u64;
        let layout = CpuCacheLayout::new(geo.stride as u64, self.page_size(), ncpu);
        let (limit, batchcount, stride, shared) = (
            layout.limit,
            layout.batchcount,
            layout.ac_stride,
            layout.shared,
        );
        let bytes = layout.bytes;

        let _reg = self.slab.registry.lock();
        if self.cache_by_name(&cname).is_some() {
            self.platform
                .printk(format_args!("kmem_cache_create: duplicate cache {name}"));
            return Err(KmmError::InvalidArgument {
                what: "a cache with this name exists",
            });
        }
        let Some(idx) = (0..MAX_CACHES).find(|&i| self.slab.slots[i].gen.load(Relaxed) & 1 == 0)
        else {
            self.platform.printk(format_args!(
                "kmem_cache_create({name}): cache table is full"
            ));
            return Err(KmmError::TableFull { what: "slab cache" });
        };
        // The per-CPU arrays, cache-line aligned.
        let (ac_alloc, ac_phys) = if boot {
            let at = self.slab.boot_next.fetch_add(bytes, Relaxed);
            if at + bytes > self.slab.boot_end {
                return Err(KmmError::TableFull {
                    what: "boot-time per-CPU slab array",
                });
            }
            (0, at)
        } else {
            let a = self.__kmalloc(
                (bytes + CACHE_LINE_SIZE - 1) as usize,
                GfpFlags::GFP_KERNEL,
                Location::caller(),
            )?;
            let virt = align_up(a, CACHE_LINE_SIZE);
            match self.__pa(virt) {
                Ok(p) => (a, p),
                Err(e) => {
                    let _ = self.kfree(a);
                    return Err(e);
                }
            }
        };
        self.mem.fill(ac_phys, bytes as usize, 0)?;
        for cpu in 0..ncpu {
            let ac = self.mem.ram_ref::<ArrayCache>(ac_phys + cpu * stride)?;
            ac.limit.store(limit, Relaxed);
            ac.batchcount.store(batchcount, Relaxed);
        }
        // The shared array follows, zeroed: its header's `avail` is all it
        // uses, its size is `CacheInner::shared_limit`.
        let shared_phys = if shared > 0 {
            ac_phys + ncpu * stride
        } else {
            0
        };
        let slot = &self.slab.slots[idx];
        let gen = slot.gen.load(Relaxed).wrapping_add(1);
        let tag = KmemCache {
            slot: idx as u16,
            gen,
        }
        .tag();
        slot.tag.store(tag, Relaxed);
        {
            let mut inner = slot.inner.lock();
            *inner = CacheInner::EMPTY;
            inner.name = cname;
            inner.flags = flags;
            inner.kmalloc = boot;
            inner.ctor = ctor;
            inner.geo = geo;
            inner.limit = limit;
            inner.batchcount = batchcount;
            inner.ac_alloc = ac_alloc;
            inner.shared = shared_phys;
            inner.shared_limit = shared;
            inner.seq = self.slab.seq.fetch_add(1, Relaxed);
            inner.free_limit = (1 + ncpu) * batchcount as u64 + geo.num as u64;
        }
        self.set_hot_geometry(slot, &geo);
        slot.ac_stride.store(stride as u32, Relaxed);
        slot.ac_entries
            .store(((stride - AC_HEAD) / 8) as u32, Relaxed);
        slot.ac_base.store(ac_phys, Relaxed);
        slot.gen.store(gen, Release);
        slot.set_flags(flags, gen);
        Ok(KmemCache {
            slot: idx as u16,
            gen,
        })
    }

    fn set_hot_geometry(&self, slot: &CacheSlot, geo: &Geometry) {
        slot.stride.store(geo.stride, Relaxed);
        slot.obj_off.store(geo.obj_off, Relaxed);
        slot.num.store(geo.num, Relaxed);
        slot.size.store(geo.size, Relaxed);
        slot.recip.store(geo.recip, Relaxed);
    }

    /// `slub_debug=`: debug flags ([`SLAB_DEBUG_FLAGS`]) added to every cache
    /// created from now on (empty: off). Other bits are ignored.
    pub fn set_slub_debug(&self, flags: SlabFlags) {
        self.slab
            .debug
            .store((flags & SLAB_DEBUG_FLAGS).bits(), Relaxed);
    }

    /// The current `slub_debug` flags.
    pub fn slub_debug(&self) -> SlabFlags {
        SlabFlags::from_bits_truncate(self.slab.debug.load(Relaxed))
    }

    /// Turns debugging on or off for an existing cache (`slub_debug=<flags>,<cache>`
    /// applied at run time). The cache is shrunk first and must then own no
    /// slab ([`KmmError::CacheBusy`] otherwise); call it while the cache is idle.
    pub fn kmem_cache_set_debug(&self, c: KmemCache, debug: SlabFlags) -> Result<(), KmmError> {
        let _reg = self.slab.registry.lock();
        let slot = self.slab.slot(c)?;
        self.kmem_cache_shrink(c)?;
        let mut inner = slot.inner.lock();
        if inner.total_slabs() > 0 {
            return Err(KmmError::CacheBusy {
                objects: inner.total_slabs() * inner.geo.num as u64 - inner.free_objects,
            });
        }
        let flags = (inner.flags - SLAB_DEBUG_FLAGS) | (debug & SLAB_DEBUG_FLAGS);
        let g = inner.geo;
        let geo = Geometry::calculate(
            g.size as u64,
            g.align as u64,
            flags,
            inner.ctor.is_some(),
            self.page_shift,
            self.slab.slab_max_order.load(Relaxed),
        )?;
        inner.flags = flags;
        inner.geo = geo;
        inner.colour_next = 0;
        inner.free_limit = (1 + self.nr_cpu_ids as u64) * inner.batchcount as u64 + geo.num as u64;
        self.set_hot_geometry(slot, &geo);
        slot.set_flags(flags, c.gen);
        Ok(())
    }

    // ------------------------------------------------------------- alloc

    /// `kmem_cache_alloc()`: an object of the cache, as a kernel virtual
    /// address. `gfp` matters only when the cache must grow (seed 000); with
    /// `__GFP_NO_GROW` it may not; `__GFP_ZERO` zeroes the object.
    /// `__GFP_HIGHMEM` and `__GFP_DMA32` are refused (`GFP_SLAB_BUG_MASK`).
    #[inline(always)]
    #[track_caller]
    pub fn kmem_cache_alloc(&self, c: KmemCache, gfp: GfpFlags) -> Result<u64, KmmError> {
        match self.slab_alloc_fast(c, gfp) {
            Some(obj) => Ok(obj),
            None => self.slab_alloc_full(c, gfp, Location::caller()),
        }
    }

    /// `kmem_cache_alloc()` the whole way: checks, refill, growth, debugging.
    #[inline(never)]
    pub(crate) fn slab_alloc_full(
        &self,
        c: KmemCache,
        gfp: GfpFlags,
        caller: &'static Location<'static>,
    ) -> Result<u64, KmmError> {
        self.slab_alloc(c, gfp, caller)
    }

    /// The common `kmem_cache_alloc()`, with nothing that can fail: a thread
    /// that owns its CPU ([`Platform::owned_cpu_fast`]) pops the newest
    /// object of its non-empty array, for a cache without debugging and a
    /// mask that asks nothing more (no `__GFP_ZERO`, nothing refused).
    /// Otherwise `None`, having changed nothing.
    #[inline(always)]
    pub(crate) fn slab_alloc_fast(&self, c: KmemCache, gfp: GfpFlags) -> Option<u64> {
        let cpu = self.platform.owned_cpu_fast()?;
        if gfp.bits() & (GFP_SLAB_BUG | GfpFlags::__GFP_ZERO.bits()) != 0 {
            return None;
        }
        let slot = self.slab.slot_fast(c)?;
        let (ac, entries) = self.cpu_array(slot, cpu).ok()?;
        let _g = ac.lock.try_lock_owner()?;
        let n = ac.avail.load(Relaxed);
        let e = entries.get(n.checked_sub(1)? as usize)?;
        ac.avail.store(n - 1, Relaxed);
        Some(e.load(Relaxed))
    }

    /// `kmem_cache_zalloc()`: a zeroed object.
    #[track_caller]
    pub fn kmem_cache_zalloc(&self, c: KmemCache, gfp: GfpFlags) -> Result<u64, KmmError> {
        self.slab_alloc(c, gfp | GfpFlags::__GFP_ZERO, Location::caller())
    }

    #[inline(always)]
    pub(crate) fn slab_alloc(
        &self,
        c: KmemCache,
        gfp: GfpFlags,
        caller: &'static Location<'static>,
    ) -> Result<u64, KmmError> {
        if gfp.bits() & GFP_SLAB_BUG != 0 {
            return Err(self.bad_slab_gfp(gfp));
        }
        let slot = self.slab.slot(c)?;
        let (cpu, owner) = self.platform.this_cpu();
        let (ac, entries) = self.cpu_array(slot, cpu)?;
        let g = ac.lock.lock(&self.platform, cpu, owner);
        let n = ac.avail.load(Relaxed);
        let obj = match n.checked_sub(1).and_then(|i| entries.get(i as usize)) {
            Some(e) => {
                ac.avail.store(n - 1, Relaxed);
                let obj = e.load(Relaxed);
                drop(g);
                obj
            }
            None => {
                drop(g);
                self.cache_alloc_refill(slot, c, gfp)?
            }
        };
        if slot.debug() || gfp.contains(GfpFlags::__GFP_ZERO) {
            return self.alloc_post(slot, c, obj, gfp, caller);
        }
        Ok(obj)
    }

    #[cold]
    #[inline(never)]
    fn bad_slab_gfp(&self, gfp: GfpFlags) -> KmmError {
        self.platform.printk(format_args!(
            "Unexpected gfp: {:#x} ({}). Slab objects cannot come from high memory or ZONE_DMA32. Fix your code!",
            gfp.bits(),
            gfp
        ));
        KmmError::InvalidGfp {
            gfp,
            why: "slab allocations cannot use __GFP_HIGHMEM or __GFP_DMA32",
        }
    }

    /// The calling CPU's array of a cache and its entries.
    #[inline(always)]
    fn cpu_array(
        &self,
        slot: &CacheSlot,
        cpu: usize,
    ) -> Result<(&ArrayCache, &[AtomicU64]), KmmError> {
        if cpu >= self.nr_cpu_ids {
            return Err(KmmError::InvalidAddress {
                addr: cpu as u64,
                what: "CPU number",
            });
        }
        let stride = slot.ac_stride.load(Relaxed) as u64;
        let at = slot.ac_base.load(Relaxed) + cpu as u64 * stride;
        let n = slot.ac_entries.load(Relaxed) as usize;
        let (ac, entries) = self.mem.ram_head_and_tail::<ArrayCache, AtomicU64>(at, n)?;
        Ok((ac, entries))
    }

    /// `cache_alloc_refill()`: moves a batch of objects from the slabs to the
    /// CPU's array, growing the cache when there are none.
    #[cold]
    #[inline(never)]
    fn cache_alloc_refill(
        &self,
        slot: &CacheSlot,
        c: KmemCache,
        gfp: GfpFlags,
    ) -> Result<u64, KmmError> {
        loop {
            let (cpu, owner) = self.platform.this_cpu();
            let (ac, entries) = self.cpu_array(slot, cpu)?;
            {
                let _g = ac.lock.lock(&self.platform, cpu, owner);
                let n = ac.avail.load(Relaxed) as usize;
                if let Some(e) = n.checked_sub(1).and_then(|i| entries.get(i)) {
                    // Another task on this CPU refilled it meanwhile.
                    ac.avail.store(n as u32 - 1, Relaxed);
                    return Ok(e.load(Relaxed));
                }
                ac.allocmiss.store(ac.allocmiss.load(Relaxed) + 1, Relaxed);
                let batch = (ac.batchcount.load(Relaxed) as usize).clamp(1, entries.len().max(1));
                let got = {
                    let mut inner = slot.inner.lock();
                    if slot.gen.load(Relaxed) != c.gen {
                        return Err(KmmError::StaleCache { slot: c.slot });
                    }
                    let out = &entries[..batch.min(entries.len())];
                    match self.transfer_from_shared(&inner, out) {
                        0 => self.take_objects(&mut inner, out),
                        moved => moved,
                    }
                };
                if let Some(e) = got.checked_sub(1).and_then(|i| entries.get(i)) {
                    ac.avail.store(got as u32 - 1, Relaxed);
                    return Ok(e.load(Relaxed));
                }
            }
            if gfp.contains(GfpFlags::__GFP_NO_GROW) {
                let order = slot.inner.lock().geo.order;
                return Err(KmmError::NoMemory { order, gfp });
            }
            self.cache_grow(slot, c, gfp)?;
        }
    }

    /// The shared array of a cache (`n->shared`), if it has one. The caller
    /// holds the cache's list lock, which guards it.
    fn shared_array(&self, inner: &CacheInner) -> Option<(&ArrayCache, &[AtomicU64])> {
        if inner.shared == 0 {
            return None;
        }
        self.mem
            .ram_head_and_tail::<ArrayCache, AtomicU64>(inner.shared, inner.shared_limit as usize)
            .ok()
    }

    /// `transfer_objects()` from the shared array: up to `out.len()` of its
    /// most recently added objects into `out`. Returns how many.
    fn transfer_from_shared(&self, inner: &CacheInner, out: &[AtomicU64]) -> usize {
        let Some((sh, se)) = self.shared_array(inner) else {
            return 0;
        };
        let avail = (sh.avail.load(Relaxed) as usize).min(se.len());
        let n = avail.min(out.len());
        for (dst, src) in out.iter().zip(&se[avail - n..avail]) {
            dst.store(src.load(Relaxed), Relaxed);
        }
        sh.avail.store((avail - n) as u32, Relaxed);
        n
    }

    /// Takes up to `out.len()` objects from partial, then free slabs.
    fn take_objects(&self, inner: &mut CacheInner, out: &[AtomicU64]) -> usize {
        let map = self.mem_map();
        let num = inner.geo.num;
        let mut n = 0;
        while n < out.len() {
            let list = if inner.lists[SlabList::Partial as usize].head != NIL {
                SlabList::Partial
            } else if inner.lists[SlabList::Free as usize].head != NIL {
                SlabList::Free
            } else {
                break;
            };
            let pfn = inner.lists[list as usize].head;
            inner.lists[list as usize].remove(map, pfn);
            inner.nr_slabs[list as usize] -= 1;
            let page = &map[pfn as usize];
            let mut inuse = page.mapcount.load(Relaxed).max(0) as u32;
            while n < out.len() && inuse < num {
                match self.slab_get_obj(&inner.geo, pfn, page) {
                    Some(obj) => {
                        out[n].store(obj, Relaxed);
                        n += 1;
                        inuse += 1;
                        inner.free_objects -= 1;
                    }
                    None => {
                        // A damaged free list: the rest of the slab is lost.
                        inner.errors += 1;
                        self.freelist_corrupt(&inner.name, &inner.geo, pfn, page);
                        inner.free_objects -= (num - inuse) as u64;
                        inuse = num;
                        page.private.store(NIL, Relaxed);
                    }
                }
            }
            page.mapcount.store(inuse as i32, Relaxed);
            let dest = SlabList::of(inuse, num);
            inner.lists[dest as usize].push_front(map, pfn);
            inner.nr_slabs[dest as usize] += 1;
        }
        n
    }

    /// Takes the first free object of a slab (`slab_get_obj()`).
    #[inline]
    fn slab_get_obj(&self, g: &Geometry, pfn: u32, page: &Page) -> Option<u64> {
        let idx = page.private.load(Relaxed);
        if idx >= g.num {
            return None;
        }
        let base = self.pfn_phys(pfn as u64) + page.index.load(Relaxed) as u64;
        let obj = base + idx as u64 * g.stride as u64;
        let next = rd32(&self.mem, obj + g.link_off as u64).ok()?;
        if next != NIL && next >= g.num {
            return None;
        }
        page.private.store(next, Relaxed);
        Some(self.arch.phys_to_virt(obj + g.obj_off as u64))
    }

    /// `cache_grow()`: one more slab, populated (constructor, debug state)
    /// before it becomes visible on the free list.
    #[cold]
    #[inline(never)]
    fn cache_grow(&self, slot: &CacheSlot, c: KmemCache, gfp: GfpFlags) -> Result<(), KmmError> {
        let (geo, ctor, flags, colour) = {
            let mut inner = slot.inner.lock();
            if slot.gen.load(Relaxed) != c.gen {
                return Err(KmmError::StaleCache { slot: c.slot });
            }
            let colour = inner.colour_next;
            inner.colour_next = if colour + 1 >= inner.geo.colour {
                0
            } else {
                colour + 1
            };
            (inner.geo, inner.ctor, inner.flags, colour)
        };
        let mut pgfp = gfp
            - (GFP_ZONEMASK
                | GfpFlags::__GFP_ZERO
                | GfpFlags::__GFP_NO_GROW
                | GfpFlags::__GFP_COMP);
        if flags.contains(SlabFlags::SLAB_CACHE_DMA) {
            pgfp |= GfpFlags::__GFP_DMA;
        }
        if geo.order > 0 {
            pgfp |= GfpFlags::__GFP_COMP;
        }
        let page = self.alloc_pages(pgfp, geo.order)?;
        let pfn = self.page_to_pfn(page)? as u32;
        let map = self.mem_map();
        let pages = 1u32 << geo.order;
        let colour_bytes = colour * geo.colour_off;
        for q in pfn..pfn + pages {
            map[q as usize].set_flags(PageFlags::SLAB);
        }
        page.set_mapping(c.tag());
        page.set_index(colour_bytes);
        page.set_private(0);
        page.mapcount.store(0, Relaxed);
        let reclaim = flags.contains(SlabFlags::SLAB_RECLAIM_ACCOUNT);
        if let Err(e) = self.init_slab_objects(&geo, flags, ctor, pfn, colour_bytes) {
            self.slab_destroy(pfn, geo.order, reclaim, false);
            return Err(e);
        }
        let counter = if reclaim {
            &self.slab.nr_reclaimable
        } else {
            &self.slab.nr_unreclaimable
        };
        counter.fetch_add(pages as u64, Relaxed);
        let mut inner = slot.inner.lock();
        if slot.gen.load(Relaxed) != c.gen {
            drop(inner);
            self.slab_destroy(pfn, geo.order, reclaim, true);
            return Err(KmmError::StaleCache { slot: c.slot });
        }
        inner.lists[SlabList::Free as usize].push_front(map, pfn);
        inner.nr_slabs[SlabList::Free as usize] += 1;
        inner.free_objects += geo.num as u64;
        inner.grown += 1;
        if ctor.is_some() {
            inner.ctor_calls += geo.num as u64;
        }
        Ok(())
    }

    fn init_slab_objects(
        &self,
        geo: &Geometry,
        flags: SlabFlags,
        ctor: Option<Ctor>,
        pfn: u32,
        colour_bytes: u32,
    ) -> Result<(), KmmError> {
        let base = self.pfn_phys(pfn as u64) + colour_bytes as u64;
        for i in 0..geo.num {
            let at = base + i as u64 * geo.stride as u64;
            let next = if i + 1 < geo.num { i + 1 } else { NIL };
            if flags.intersects(SLAB_DEBUG_FLAGS) {
                self.mem.fill(at, geo.stride as usize, 0)?;
                self.set_debug_state(geo, flags, at, false)?;
            }
            wr32(&self.mem, at + geo.link_off as u64, next)?;
            if let Some(f) = ctor {
                let phys = at + geo.obj_off as u64;
                f(ObjectInit {
                    mem: &self.mem,
                    phys,
                    addr: self.arch.phys_to_virt(phys),
                    size: geo.size as usize,
                });
            }
        }
        Ok(())
    }

    /// `slab_destroy()`: the slab's pages back to the page allocator.
    fn slab_destroy(&self, pfn: u32, order: u32, reclaim: bool, accounted: bool) {
        let map = self.mem_map();
        for q in pfn..pfn + (1 << order) {
            map[q as usize].clear_flags(PageFlags::SLAB);
        }
        let head = &map[pfn as usize];
        head.mapcount.store(-1, Relaxed);
        head.set_mapping(0);
        head.set_index(0);
        head.set_private(0);
        if accounted {
            let counter = if reclaim {
                &self.slab.nr_reclaimable
            } else {
                &self.slab.nr_unreclaimable
            };
            counter.fetch_sub(1 << order, Relaxed);
        }
        // A failure is reported by the page allocator ("Bad page state").
        let _ = self.__free_pages(head, order);
    }

    /// Releases a list of slabs taken off a cache.
    fn destroy_slab_list(&self, mut list: ListHead, order: u32, reclaim: bool) -> u64 {
        let map = self.mem_map();
        let mut pages = 0;
        while let Some(pfn) = list.pop_front(map) {
            self.slab_destroy(pfn, order, reclaim, true);
            pages += 1 << order;
        }
        pages
    }

    #[cold]
    #[inline(never)]
    fn alloc_post(
        &self,
        slot: &CacheSlot,
        c: KmemCache,
        obj: u64,
        gfp: GfpFlags,
        caller: &'static Location<'static>,
    ) -> Result<u64, KmmError> {
        if slot.debug() {
            self.alloc_debug(slot, c, obj, caller)?;
        }
        if gfp.contains(GfpFlags::__GFP_ZERO) {
            let size = slot.size.load(Relaxed) as usize;
            self.mem.fill(self.__pa(obj)?, size, 0)?;
        }
        Ok(obj)
    }

    // -------------------------------------------------------------- free

    /// `kmem_cache_free()`: gives an object back to its cache.
    ///
    /// The object must be one this cache handed out: a pointer into another
    /// cache, outside any slab or not at an object boundary is reported and
    /// refused (nothing changes). A double free is caught when cheap (see the
    /// module docs) and always with debugging.
    #[inline(always)]
    #[track_caller]
    pub fn kmem_cache_free(&self, c: KmemCache, obj: u64) -> Result<(), KmmError> {
        if self.slab_free_fast(c, obj) {
            return Ok(());
        }
        self.slab_free(c, obj, Location::caller())
    }

    /// The common `kmem_cache_free()`: see [`Self::slab_free_found_fast`].
    #[inline(always)]
    fn slab_free_fast(&self, c: KmemCache, obj: u64) -> bool {
        let Ok((phys, head_pfn, head)) = self.virt_to_slab(obj) else {
            return false;
        };
        let found = SlabObject {
            cache: c,
            phys,
            head_pfn,
            head,
        };
        self.slab_free_found_fast(found, obj)
    }

    /// The common free of an object whose slab is found (`kfree()` finds it
    /// from the address alone): see [`Self::slab_push_fast`].
    #[inline(always)]
    pub(crate) fn slab_free_found_fast(&self, found: SlabObject<'_>, obj: u64) -> bool {
        let Some(cpu) = self.platform.owned_cpu_fast() else {
            return false;
        };
        let Some(slot) = self.slab.slot_fast(found.cache) else {
            return false;
        };
        self.slab_push_fast(slot, cpu, obj, found)
    }

    /// The common free of an object whose slab is found: a thread that owns
    /// its CPU pushes a checked object of a cache without debugging onto
    /// its array while the array has room and does not already end with the
    /// object (the cheap double-free check). Otherwise `false`, having
    /// changed nothing; the full path then reports or flushes.
    #[inline(always)]
    fn slab_push_fast(&self, slot: &CacheSlot, cpu: usize, obj: u64, at: SlabObject<'_>) -> bool {
        if self
            .obj_to_index(slot, at.phys, at.head_pfn, at.head)
            .is_err()
        {
            return false;
        }
        let Ok((ac, entries)) = self.cpu_array(slot, cpu) else {
            return false;
        };
        let Some(_g) = ac.lock.try_lock_owner() else {
            return false;
        };
        let n = ac.avail.load(Relaxed) as usize;
        if n >= ac.limit.load(Relaxed) as usize {
            return false;
        }
        let Some(e) = entries.get(n) else {
            return false;
        };
        if n > 0 && entries[n - 1].load(Relaxed) == obj {
            return false;
        }
        e.store(obj, Relaxed);
        ac.avail.store(n as u32 + 1, Relaxed);
        true
    }

    /// `kmem_cache_free()` the whole way: checks and reports, flushing a
    /// full array, debugging.
    #[inline(never)]
    fn slab_free(
        &self,
        c: KmemCache,
        obj: u64,
        caller: &'static Location<'static>,
    ) -> Result<(), KmmError> {
        let slot = self.slab.slot(c)?;
        let found = self
            .virt_to_slab(obj)
            .and_then(|(phys, head_pfn, head)| self.obj_to_index(slot, phys, head_pfn, head));
        let (pfn, idx) = match found {
            Ok(v) => v,
            Err(why) => return Err(self.bad_free(slot, c, obj, why)),
        };
        self.slab_free_index(slot, c, obj, pfn, idx, caller)
    }

    /// `kfree()` of a slab object: the slab page was found once, by
    /// [`Self::slab_cache_of`]; the rest is [`Self::slab_free`]'s.
    #[inline(always)]
    pub(crate) fn slab_free_found(
        &self,
        found: SlabObject<'_>,
        obj: u64,
        caller: &'static Location<'static>,
    ) -> Result<(), KmmError> {
        let c = found.cache;
        let slot = self.slab.slot(c)?;
        let (pfn, idx) = match self.obj_to_index(slot, found.phys, found.head_pfn, found.head) {
            Ok(v) => v,
            Err(why) => return Err(self.bad_free(slot, c, obj, why)),
        };
        self.slab_free_index(slot, c, obj, pfn, idx, caller)
    }

    /// The common tail of the frees: debug checks, then onto this CPU's array.
    #[inline(always)]
    fn slab_free_index(
        &self,
        slot: &CacheSlot,
        c: KmemCache,
        obj: u64,
        pfn: u32,
        idx: u32,
        caller: &'static Location<'static>,
    ) -> Result<(), KmmError> {
        if slot.debug() {
            self.free_debug(slot, c, obj, pfn, idx, caller)?;
        }
        let (cpu, owner) = self.platform.this_cpu();
        let (ac, entries) = self.cpu_array(slot, cpu)?;
        let g = ac.lock.lock(&self.platform, cpu, owner);
        let n = ac.avail.load(Relaxed) as usize;
        if let Some(top) = n.checked_sub(1).and_then(|i| entries.get(i)) {
            if top.load(Relaxed) == obj {
                drop(g);
                return Err(self.double_free(slot, obj, pfn, idx));
            }
        }
        let limit = ac.limit.load(Relaxed) as usize;
        match entries.get(n).filter(|_| n < limit) {
            Some(e) => {
                e.store(obj, Relaxed);
                ac.avail.store(n as u32 + 1, Relaxed);
                Ok(())
            }
            None => {
                let released = self.cache_flusharray(slot, ac, entries);
                let n = ac.avail.load(Relaxed) as usize;
                if let Some(e) = entries.get(n) {
                    e.store(obj, Relaxed);
                    ac.avail.store(n as u32 + 1, Relaxed);
                }
                drop(g);
                if let Some((list, order, reclaim)) = released {
                    self.destroy_slab_list(list, order, reclaim);
                }
                Ok(())
            }
        }
    }

    /// `virt_to_slab()`: the physical address of `obj`, the frame of the
    /// head page of its slab and that page.
    #[inline(always)]
    fn virt_to_slab(&self, obj: u64) -> Result<(u64, u64, &Page), BadPtr> {
        let phys = self.arch.virt_to_phys(obj).ok_or(BadPtr::NotMapped)?;
        let map = self.mem_map();
        let pfn = phys >> self.page_shift;
        let page = map.get(pfn as usize).ok_or(BadPtr::NotMapped)?;
        let f = page.raw_flags();
        // A one-page slab (the common case) is its own head: no second look.
        let (head_pfn, head, hf) = if f & PageFlags::TAIL.bits() != 0 {
            let head_pfn = page.private() as u64;
            let head = map.get(head_pfn as usize).ok_or(BadPtr::NotSlab(f))?;
            (head_pfn, head, head.raw_flags())
        } else {
            (pfn, page, f)
        };
        if hf & PageFlags::SLAB.bits() == 0 {
            return Err(BadPtr::NotSlab(hf));
        }
        Ok((phys, head_pfn, head))
    }

    /// `obj_to_index()`: the object index of the object at `phys` in the
    /// slab whose head page is `head` (frame `head_pfn`), checking that it is
    /// an object of the cache in `slot`. Returns the head frame and index.
    #[inline(always)]
    fn obj_to_index(
        &self,
        slot: &CacheSlot,
        phys: u64,
        head_pfn: u64,
        head: &Page,
    ) -> Result<(u32, u32), BadPtr> {
        let t = head.mapping();
        if t != slot.tag.load(Relaxed) {
            return Err(BadPtr::OtherCache(t));
        }
        let bad = BadPtr::NotObject(head_pfn as u32);
        let off = phys
            .checked_sub(head_pfn << self.page_shift)
            .and_then(|o| o.checked_sub(head.index() as u64 + slot.obj_off.load(Relaxed) as u64))
            .ok_or(bad)?;
        let idx = off.checked_mul(slot.recip.load(Relaxed)).ok_or(bad)? >> RECIP_SHIFT;
        if idx * slot.stride.load(Relaxed) as u64 != off || idx >= slot.num.load(Relaxed) as u64 {
            return Err(BadPtr::NotObject(head_pfn as u32));
        }
        Ok((head_pfn as u32, idx as u32))
    }

    /// `cache_flusharray()`: the oldest `batchcount` objects of a full array
    /// go back to their slabs. Returns empty slabs beyond `free_limit`, to be
    /// released once the locks are dropped.
    #[cold]
    #[inline(never)]
    fn cache_flusharray(
        &self,
        slot: &CacheSlot,
        ac: &ArrayCache,
        entries: &[AtomicU64],
    ) -> Option<(ListHead, u32, bool)> {
        let n = (ac.avail.load(Relaxed) as usize).min(entries.len());
        let batch = (ac.batchcount.load(Relaxed) as usize)
            .clamp(1, n.max(1))
            .min(n);
        ac.freemiss.store(ac.freemiss.load(Relaxed) + 1, Relaxed);
        let mut inner = slot.inner.lock();
        // Into the shared array while it has room, as SLAB does; the rest
        // (all of it, without one) back to the slabs.
        let mut batch = batch;
        let mut released = None;
        match self.shared_array(&inner) {
            Some((sh, se)) if (sh.avail.load(Relaxed) as usize) < se.len() => {
                let avail = sh.avail.load(Relaxed) as usize;
                batch = batch.min(se.len() - avail);
                for (dst, src) in se[avail..avail + batch].iter().zip(&entries[..batch]) {
                    dst.store(src.load(Relaxed), Relaxed);
                }
                sh.avail.store((avail + batch) as u32, Relaxed);
            }
            _ => {
                self.free_block(slot, &mut inner, &entries[..batch]);
                released = self.trim_free_slabs(&mut inner);
            }
        }
        drop(inner);
        for i in batch..n {
            entries[i - batch].store(entries[i].load(Relaxed), Relaxed);
        }
        ac.avail.store((n - batch) as u32, Relaxed);
        released
    }

    /// Empty slabs above `free_limit` off the free list (SLAB's `free_block`
    /// tail): returned for release after the locks are dropped.
    fn trim_free_slabs(&self, inner: &mut CacheInner) -> Option<(ListHead, u32, bool)> {
        let map = self.mem_map();
        let num = inner.geo.num as u64;
        let mut out = ListHead::EMPTY;
        while inner.free_objects > inner.free_limit && inner.nr_slabs[SlabList::Free as usize] > 0 {
            let Some(pfn) = inner.lists[SlabList::Free as usize].pop_back(map) else {
                break;
            };
            inner.nr_slabs[SlabList::Free as usize] -= 1;
            inner.free_objects -= num;
            inner.reaped += 1;
            out.push_front(map, pfn);
        }
        (out.head != NIL).then_some((
            out,
            inner.geo.order,
            inner.flags.contains(SlabFlags::SLAB_RECLAIM_ACCOUNT),
        ))
    }

    /// `free_block()`: objects back onto their slabs' free lists; slabs move
    /// between the lists as their in-use counts say.
    fn free_block(&self, slot: &CacheSlot, inner: &mut CacheInner, objs: &[AtomicU64]) {
        let map = self.mem_map();
        let g = inner.geo;
        for e in objs {
            let obj = e.load(Relaxed);
            let Some((pfn, idx)) = self.obj_index_of(slot, obj) else {
                inner.errors += 1;
                self.platform.printk(format_args!(
                    "free_block({}): object {obj:#x} in a per-CPU array is not an object of this cache (array corrupted)",
                    inner.name
                ));
                continue;
            };
            let page = &map[pfn as usize];
            let inuse = page.mapcount.load(Relaxed);
            if inuse <= 0 || page.private() == idx {
                inner.errors += 1;
                self.report_header(
                    &inner.name,
                    format_args!("Object already free (double free of {obj:#x})"),
                );
                continue;
            }
            let inuse = inuse as u32;
            let phys = self.pfn_phys(pfn as u64)
                + page.index() as u64
                + idx as u64 * g.stride as u64
                + g.link_off as u64;
            if wr32(&self.mem, phys, page.private()).is_err() {
                continue;
            }
            page.private.store(idx, Relaxed);
            page.mapcount.store(inuse as i32 - 1, Relaxed);
            let was = SlabList::of(inuse, g.num);
            let now = SlabList::of(inuse - 1, g.num);
            if was != now {
                inner.lists[was as usize].remove(map, pfn);
                inner.nr_slabs[was as usize] -= 1;
                inner.lists[now as usize].push_front(map, pfn);
                inner.nr_slabs[now as usize] += 1;
            }
            inner.free_objects += 1;
        }
    }

    /// The head frame and index of `obj` if it is an object of the cache in
    /// `slot`: [`Self::virt_to_slab`] and [`Self::obj_to_index`], for the
    /// frees that take objects back from an array (which could hold anything
    /// once damaged).
    fn obj_index_of(&self, slot: &CacheSlot, obj: u64) -> Option<(u32, u32)> {
        let (phys, head_pfn, head) = self.virt_to_slab(obj).ok()?;
        self.obj_to_index(slot, phys, head_pfn, head).ok()
    }

    // ------------------------------------------------- drain and shrink

    /// Empties every CPU's array of a cache into its slabs (`drain_cpu_caches()`).
    fn drain_cpu_arrays(&self, slot: &CacheSlot) -> Result<(), KmmError> {
        for cpu in 0..self.nr_cpu_ids {
            let (ac, entries) = self.cpu_array(slot, cpu)?;
            let _g = ac.lock.lock_any(&self.platform, cpu);
            let n = (ac.avail.load(Relaxed) as usize).min(entries.len());
            let mut inner = slot.inner.lock();
            self.free_block(slot, &mut inner, &entries[..n]);
            ac.avail.store(0, Relaxed);
        }
        let mut inner = slot.inner.lock();
        if let Some((sh, se)) = self.shared_array(&inner) {
            let n = (sh.avail.load(Relaxed) as usize).min(se.len());
            self.free_block(slot, &mut inner, &se[..n]);
            sh.avail.store(0, Relaxed);
        }
        Ok(())
    }

    /// Drains a cache and releases all its empty slabs. Returns pages freed.
    fn shrink_cache(&self, slot: &CacheSlot) -> Result<u64, KmmError> {
        self.drain_cpu_arrays(slot)?;
        let (list, order, reclaim) = {
            let mut inner = slot.inner.lock();
            let list =
                core::mem::replace(&mut inner.lists[SlabList::Free as usize], ListHead::EMPTY);
            let n = inner.nr_slabs[SlabList::Free as usize];
            inner.nr_slabs[SlabList::Free as usize] = 0;
            inner.free_objects -= n * inner.geo.num as u64;
            inner.reaped += n;
            (
                list,
                inner.geo.order,
                inner.flags.contains(SlabFlags::SLAB_RECLAIM_ACCOUNT),
            )
        };
        Ok(self.destroy_slab_list(list, order, reclaim))
    }

    /// `kmem_cache_shrink()`: drains the per-CPU arrays and releases every
    /// empty slab, `SLAB_NO_REAP` or not. Returns the pages freed.
    pub fn kmem_cache_shrink(&self, c: KmemCache) -> Result<u64, KmmError> {
        let slot = self.slab.slot(c)?;
        let _s = self.slab.shrink.lock();
        self.shrink_cache(slot)
    }

    /// The slab part of `shrink_slab()` / SLAB's `cache_reap()`: under memory
    /// pressure every cache without `SLAB_NO_REAP` gives back its cached
    /// objects and empty slabs. Returns the pages freed (reclaim progress).
    /// The page allocator's direct reclaim calls it before the platform's
    /// reclaim; it skips its work if another shrink is running.
    pub fn shrink_slab(&self, _gfp: GfpFlags) -> usize {
        let Some(_s) = self.slab.shrink.try_lock() else {
            return 0;
        };
        let mut freed = 0;
        for slot in &self.slab.slots {
            if slot.gen.load(Acquire) & 1 == 0
                || slot.flags.load(Relaxed) & SlabFlags::SLAB_NO_REAP.bits() != 0
            {
                continue;
            }
            freed += self.shrink_cache(slot).unwrap_or(0);
        }
        freed as usize
    }

    // ----------------------------------------------------------- destroy

    /// `kmem_cache_destroy()`: removes an empty cache.
    ///
    /// While objects are allocated it fails with [`KmmError::CacheBusy`] and
    /// prints SLUB's report listing them (with their allocation sites under
    /// `SLAB_STORE_USER`); the cache stays usable (seed 001: "a failure
    /// indicates a memory leak in the module"). The kmalloc caches cannot be
    /// destroyed.
    #[track_caller]
    pub fn kmem_cache_destroy(&self, c: KmemCache) -> Result<(), KmmError> {
        let caller = Location::caller();
        let _reg = self.slab.registry.lock();
        let slot = self.slab.slot(c)?;
        if slot.inner.lock().kmalloc {
            return Err(KmmError::InvalidArgument {
                what: "the kmalloc caches cannot be destroyed",
            });
        }
        let _s = self.slab.shrink.lock();
        self.drain_cpu_arrays(slot)?;
        let mut inner = slot.inner.lock();
        let live = inner.total_slabs() * inner.geo.num as u64 - inner.free_objects;
        if live > 0 {
            inner.errors += 1;
            self.list_leaks(&inner);
            self.platform.printk(format_args!(
                "kmem_cache_destroy {}: Slab cache still has objects when called from {}:{}",
                inner.name,
                caller.file(),
                caller.line()
            ));
            return Err(KmmError::CacheBusy { objects: live });
        }
        slot.fast_gen.store(0, Relaxed);
        slot.gen.store(c.gen.wrapping_add(1), Release);
        let list = core::mem::replace(&mut inner.lists[SlabList::Free as usize], ListHead::EMPTY);
        let order = inner.geo.order;
        let reclaim = inner.flags.contains(SlabFlags::SLAB_RECLAIM_ACCOUNT);
        let ac_alloc = inner.ac_alloc;
        *inner = CacheInner::EMPTY;
        drop(inner);
        self.destroy_slab_list(list, order, reclaim);
        if ac_alloc != 0 {
            self.kfree(ac_alloc)?;
        }
        Ok(())
    }

    /// SLUB's `list_slab_objects()`: a report of every object in use.
    fn list_leaks(&self, inner: &CacheInner) {
        const SHOWN: u32 = 256;
        let p = &self.platform;
        let name = inner.name.as_str();
        self.report_header(
            &inner.name,
            format_args!("Objects remaining in {name} on __kmem_cache_shutdown()"),
        );
        let map = self.mem_map();
        let g = &inner.geo;
        let mut shown = 0u32;
        let mut total = 0u64;
        for list in [SlabList::Partial, SlabList::Full] {
            let mut pfn = inner.lists[list as usize].head;
            while pfn != NIL {
                let page = &map[pfn as usize];
                let mut free = [0u64; (MAX_OBJS_PER_SLAB / 64) as usize];
                self.walk_freelist(g, pfn, page, |i| free[i as usize / 64] |= 1 << (i % 64));
                self.print_slab_line(g, pfn, page);
                for i in 0..g.num {
                    if free[i as usize / 64] & (1 << (i % 64)) != 0 {
                        continue;
                    }
                    total += 1;
                    if shown >= SHOWN {
                        continue;
                    }
                    shown += 1;
                    let at = self.pfn_phys(pfn as u64)
                        + page.index() as u64
                        + i as u64 * g.stride as u64;
                    let virt = self.arch.phys_to_virt(at + g.obj_off as u64);
                    p.printk(format_args!(
                        "Object 0x{virt:016x} @offset={}",
                        page.index() as u64 + i as u64 * g.stride as u64 + g.obj_off as u64
                    ));
                    if inner.flags.contains(SlabFlags::SLAB_STORE_USER) {
                        self.print_track(g, at, 0);
                    }
                }
                pfn = page.next.load(Relaxed);
            }
        }
        if total > shown as u64 {
            p.printk(format_args!(
                "... and {} more objects",
                total - shown as u64
            ));
        }
        self.report_footer();
    }

    /// Calls `f(index)` for each object on a slab's free list; returns how
    /// many, or `None` on a bad link or a cycle.
    fn walk_freelist(
        &self,
        g: &Geometry,
        pfn: u32,
        page: &Page,
        mut f: impl FnMut(u32),
    ) -> Option<u32> {
        let base = self.pfn_phys(pfn as u64) + page.index() as u64;
        let mut idx = page.private();
        let mut n = 0;
        while idx != NIL {
            if idx >= g.num || n >= g.num {
                return None;
            }
            f(idx);
            n += 1;
            idx = rd32(
                &self.mem,
                base + idx as u64 * g.stride as u64 + g.link_off as u64,
            )
            .ok()?;
        }
        Some(n)
    }

    // ------------------------------------------------------------ queries

    /// `kmem_cache_size()`: the object size the cache was created with.
    pub fn kmem_cache_size(&self, c: KmemCache) -> Result<usize, KmmError> {
        Ok(self.slab.slot(c)?.size.load(Relaxed) as usize)
    }

    /// The cache's name.
    pub fn kmem_cache_name(&self, c: KmemCache) -> Result<CacheName, KmmError> {
        Ok(self.slab.slot(c)?.inner.lock().name)
    }

    /// Looks a cache up by name (the live caches only).
    pub fn kmem_cache_find(&self, name: &str) -> Option<KmemCache> {
        let name = CacheName::new(name).ok()?;
        self.cache_by_name(&name)
    }

    fn cache_by_name(&self, name: &CacheName) -> Option<KmemCache> {
        self.slab.slots.iter().enumerate().find_map(|(i, slot)| {
            let gen = slot.gen.load(Acquire);
            (gen & 1 == 1 && slot.inner.lock().name == *name).then_some(KmemCache {
                slot: i as u16,
                gen,
            })
        })
    }

    /// The live caches, newest first (the order of `/proc/slabinfo`).
    pub fn kmem_caches(&self) -> KmemCacheList {
        let mut list = KmemCacheList {
            caches: [(0, KmemCache { slot: 0, gen: 0 }); MAX_CACHES],
            len: 0,
        };
        for (i, slot) in self.slab.slots.iter().enumerate() {
            let gen = slot.gen.load(Acquire);
            if gen & 1 == 1 {
                let seq = slot.inner.lock().seq;
                list.caches[list.len] = (
                    seq,
                    KmemCache {
                        slot: i as u16,
                        gen,
                    },
                );
                list.len += 1;
            }
        }
        list.caches[..list.len].sort_unstable_by_key(|&(seq, _)| core::cmp::Reverse(seq));
        list
    }

    /// Statistics and layout of a cache.
    pub fn kmem_cache_info(&self, c: KmemCache) -> Result<KmemCacheInfo, KmmError> {
        let slot = self.slab.slot(c)?;
        let (mut cpu_cached, mut allocmiss, mut freemiss) = (0, 0, 0);
        for cpu in 0..self.nr_cpu_ids {
            let (ac, _) = self.cpu_array(slot, cpu)?;
            cpu_cached += ac.avail.load(Relaxed) as u64;
            allocmiss += ac.allocmiss.load(Relaxed);
            freemiss += ac.freemiss.load(Relaxed);
        }
        let inner = slot.inner.lock();
        let shared_avail = self
            .shared_array(&inner)
            .map_or(0, |(sh, _)| sh.avail.load(Relaxed) as u64);
        let g = &inner.geo;
        let num_slabs = inner.total_slabs();
        let num_objs = num_slabs * g.num as u64;
        Ok(KmemCacheInfo {
            name: inner.name,
            object_size: g.size,
            size: g.stride,
            align: g.align,
            flags: inner.flags,
            order: g.order,
            objects_per_slab: g.num,
            pages_per_slab: 1 << g.order,
            colour: g.colour,
            colour_off: g.colour_off,
            colour_next: inner.colour_next,
            limit: inner.limit,
            batchcount: inner.batchcount,
            shared_factor: if inner.shared_limit > 0 {
                SLAB_SHARED_FACTOR
            } else {
                0
            },
            shared_avail,
            active_objs: num_objs - inner.free_objects,
            num_objs,
            active_slabs: num_slabs - inner.nr_slabs[SlabList::Free as usize],
            num_slabs,
            full_slabs: inner.nr_slabs[SlabList::Full as usize],
            partial_slabs: inner.nr_slabs[SlabList::Partial as usize],
            free_slabs: inner.nr_slabs[SlabList::Free as usize],
            free_objects: inner.free_objects,
            cpu_cached,
            grown: inner.grown,
            reaped: inner.reaped,
            ctor_calls: inner.ctor_calls,
            has_ctor: inner.ctor.is_some(),
            kmalloc: inner.kmalloc,
            allocmiss,
            freemiss,
            errors: inner.errors,
        })
    }

    /// Read-only introspection for tests and tools: calls `f` for every slab
    /// of the cache (full, then partial, then free lists), under the cache's
    /// lock — `f` must not call into the slab allocator. A walk stops after
    /// as many slabs as the counters say, so a damaged list cannot loop.
    pub fn kmem_cache_for_each_slab(
        &self,
        c: KmemCache,
        f: &mut dyn FnMut(&SlabView),
    ) -> Result<(), KmmError> {
        let slot = self.slab.slot(c)?;
        let inner = slot.inner.lock();
        let map = self.mem_map();
        let g = &inner.geo;
        for list in [SlabList::Full, SlabList::Partial, SlabList::Free] {
            let mut pfn = inner.lists[list as usize].head;
            let mut left = inner.total_slabs() + 1;
            while pfn != NIL && left > 0 {
                let Some(page) = map.get(pfn as usize) else {
                    break;
                };
                let colour = page.index();
                f(&SlabView {
                    pfn: pfn as u64,
                    order: g.order,
                    list,
                    inuse: page.mapcount.load(Relaxed).max(0) as u32,
                    free_walk: self.walk_freelist(g, pfn, page, |_| {}),
                    colour_off: colour,
                    first_object: self
                        .arch
                        .phys_to_virt(self.pfn_phys(pfn as u64) + colour as u64 + g.obj_off as u64),
                });
                pfn = page.next.load(Relaxed);
                left -= 1;
            }
        }
        Ok(())
    }

    /// The cache that owns the slab object at `addr` and where its slab
    /// is, if `addr` lies in a slab (`virt_to_cache()`).
    #[inline(always)]
    pub(crate) fn slab_cache_of(&self, addr: u64) -> Option<SlabObject<'_>> {
        let (phys, head_pfn, head) = self.virt_to_slab(addr).ok()?;
        Some(SlabObject {
            cache: KmemCache::from_tag(head.mapping())?,
            phys,
            head_pfn,
            head,
        })
    }

    /// `NR_SLAB_RECLAIMABLE`: pages of `SLAB_RECLAIM_ACCOUNT` caches.
    pub fn nr_slab_reclaimable(&self) -> u64 {
        self.slab.nr_reclaimable.load(Relaxed)
    }

    /// `NR_SLAB_UNRECLAIMABLE`: pages of other caches and of large kmallocs.
    pub fn nr_slab_unreclaimable(&self) -> u64 {
        self.slab.nr_unreclaimable.load(Relaxed)
    }

    // ------------------------------------------------------------- debug

    /// What the debug checks need about `obj`, which must be an object of
    /// the cache (a damaged per-CPU array could hold anything).
    fn dbg(&self, slot: &CacheSlot, obj: u64) -> Result<Dbg, KmmError> {
        let inner = slot.inner.lock();
        let Some((pfn, _)) = self.obj_index_of(slot, obj) else {
            self.platform.printk(format_args!(
                "{}: 0x{obj:x} in a per-CPU array is not an object of this cache (array corrupted)",
                inner.name
            ));
            return Err(KmmError::BadObject {
                addr: obj,
                why: "per-CPU array entry is not an object of this cache",
            });
        };
        let off = inner.geo.obj_off as u64;
        Ok(Dbg {
            name: inner.name,
            flags: inner.flags,
            geo: inner.geo,
            phys: self.__pa(obj)? - off,
            virt: obj - off,
            pfn,
        })
    }

    /// Writes the free (`active == false`) or in-use state of an object's
    /// red zones, poison and state word.
    fn set_debug_state(
        &self,
        g: &Geometry,
        flags: SlabFlags,
        at: u64,
        active: bool,
    ) -> Result<(), KmmError> {
        if flags.contains(SlabFlags::SLAB_RED_ZONE) {
            let v = if active {
                SLUB_RED_ACTIVE
            } else {
                SLUB_RED_INACTIVE
            };
            self.mem.fill(at, g.obj_off as usize, v)?;
            let end = (g.obj_off + g.size) as u64;
            self.mem
                .fill(at + end, (g.red_end as u64 - end) as usize, v)?;
        }
        if g.poison && !active {
            let start = at + g.obj_off as u64;
            self.mem.fill(start, g.size as usize - 1, POISON_FREE)?;
            self.mem.write(start + g.size as u64 - 1, &[POISON_END])?;
        }
        if flags.intersects(SLAB_DEBUG_FLAGS) {
            let s = if active { STATE_ACTIVE } else { STATE_INACTIVE };
            self.mem.write_u64(at + g.state_off as u64, s)?;
        }
        Ok(())
    }

    fn set_track(
        &self,
        d: &Dbg,
        which: u64,
        caller: &'static Location<'static>,
    ) -> Result<(), KmmError> {
        if !d.flags.contains(SlabFlags::SLAB_STORE_USER) {
            return Ok(());
        }
        let site = self.slab.sites.lock().intern(caller);
        let mut pid = 0;
        self.with_current(&mut |p, _| pid = p);
        let cpu = self.platform.smp_processor_id() as u32;
        let mut rec = [0u8; TRACK_SIZE as usize];
        for (i, v) in [site, caller.line(), cpu, pid].into_iter().enumerate() {
            rec[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        self.mem
            .write(d.phys + d.geo.track_off as u64 + which * TRACK_SIZE, &rec)
    }

    /// Checks `[from, to)` of the stride against `want(offset)`; on damage
    /// prints SLUB's report, restores the bytes and returns true.
    fn check_bytes(
        &self,
        d: &Dbg,
        what: &str,
        from: u64,
        to: u64,
        want: impl Fn(u64) -> u8,
    ) -> Result<bool, KmmError> {
        let mut buf = [0u8; 64];
        let mut at = from;
        let mut bad = None;
        while at < to && bad.is_none() {
            let n = ((to - at) as usize).min(buf.len());
            self.mem.read(d.phys + at, &mut buf[..n])?;
            if let Some(i) = (0..n).find(|&i| buf[i] != want(at + i as u64)) {
                bad = Some((at + i as u64, buf[i]));
            }
            at += n as u64;
        }
        let Some((first, got)) = bad else {
            return Ok(false);
        };
        // The end of the damaged run.
        let mut last = first;
        let mut b = [0u8; 1];
        for o in first..to {
            self.mem.read(d.phys + o, &mut b)?;
            if b[0] != want(o) {
                last = o;
            }
        }
        let p = &self.platform;
        self.report_header(&d.name, format_args!("{what} overwritten"));
        let obj_off = d.geo.obj_off as u64;
        p.printk(format_args!(
            "0x{:016x}-0x{:016x} @offset={}. First byte 0x{got:x} instead of 0x{:x}",
            d.virt + first,
            d.virt + last,
            first as i64 - obj_off as i64,
            want(first)
        ));
        self.print_trailer(d);
        self.report_footer();
        for o in first..=last {
            self.mem.write(d.phys + o, &[want(o)])?;
        }
        p.printk(format_args!(
            "FIX {}: Restoring {what} 0x{:016x}-0x{:016x}=0x{:x}",
            d.name,
            d.virt + first,
            d.virt + last,
            want(first)
        ));
        Ok(true)
    }

    fn check_redzones(&self, d: &Dbg, v: u8) -> Result<bool, KmmError> {
        if !d.flags.contains(SlabFlags::SLAB_RED_ZONE) {
            return Ok(false);
        }
        let g = &d.geo;
        let left = self.check_bytes(d, "Left Redzone", 0, g.obj_off as u64, |_| v)?;
        let right = self.check_bytes(
            d,
            "Redzone",
            (g.obj_off + g.size) as u64,
            g.red_end as u64,
            |_| v,
        )?;
        Ok(left || right)
    }

    /// `alloc_debug_processing()`: checks a free object before handing it out
    /// and marks it in use. Damage is reported and repaired; the allocation
    /// goes on (SLAB's behaviour).
    fn alloc_debug(
        &self,
        slot: &CacheSlot,
        _c: KmemCache,
        obj: u64,
        caller: &'static Location<'static>,
    ) -> Result<(), KmmError> {
        let d = self.dbg(slot, obj)?;
        let g = d.geo;
        let state = self.mem.read_u64(d.phys + g.state_off as u64)?;
        let mut damaged = false;
        if state != STATE_INACTIVE {
            damaged = true;
            self.report_header(
                &d.name,
                format_args!(
                    "{}",
                    if state == STATE_ACTIVE {
                        "Object already allocated (free list corrupted)"
                    } else {
                        "Object state overwritten"
                    }
                ),
            );
            self.print_trailer(&d);
            self.report_footer();
        }
        damaged |= self.check_redzones(&d, SLUB_RED_INACTIVE)?;
        if g.poison {
            let (o, s) = (g.obj_off as u64, g.size as u64);
            damaged |= self.check_bytes(&d, "Poison", o, o + s, |i| {
                if i + 1 == o + s {
                    POISON_END
                } else {
                    POISON_FREE
                }
            })?;
        }
        if damaged {
            slot.inner.lock().errors += 1;
        }
        self.set_debug_state(&g, d.flags, d.phys, true)?;
        self.set_track(&d, 0, caller)
    }

    /// `free_debug_processing()`: checks an object being freed. A double free
    /// or damaged red zone is reported and the free refused (SLUB: "Object at
    /// 0x... not freed"); the red zone is repaired so a retry can succeed.
    #[cold]
    #[inline(never)]
    fn free_debug(
        &self,
        slot: &CacheSlot,
        _c: KmemCache,
        obj: u64,
        pfn: u32,
        _idx: u32,
        caller: &'static Location<'static>,
    ) -> Result<(), KmmError> {
        let d = self.dbg(slot, obj)?;
        let _ = pfn;
        let g = d.geo;
        let state = self.mem.read_u64(d.phys + g.state_off as u64)?;
        let refuse = |this: &Self, what: &'static str| {
            slot.inner.lock().errors += 1;
            this.platform.printk(format_args!(
                "FIX {}: Object at 0x{obj:016x} not freed",
                d.name
            ));
            KmmError::BadObject {
                addr: obj,
                why: what,
            }
        };
        if state == STATE_INACTIVE {
            self.report_header(&d.name, format_args!("Object already free"));
            self.print_trailer(&d);
            self.report_footer();
            return Err(refuse(self, "double free (object already free)"));
        }
        if self.check_redzones(&d, SLUB_RED_ACTIVE)? {
            return Err(refuse(self, "red zone overwritten"));
        }
        if state != STATE_ACTIVE {
            self.report_header(&d.name, format_args!("Object state overwritten"));
            self.print_trailer(&d);
            self.report_footer();
            self.mem
                .write_u64(d.phys + g.state_off as u64, STATE_ACTIVE)?;
            return Err(refuse(self, "object state word overwritten"));
        }
        self.set_debug_state(&g, d.flags, d.phys, false)?;
        self.set_track(&d, 1, caller)
    }

    // ----------------------------------------------------------- reports

    /// SLUB's `slab_bug()`: the banner of a report.
    fn report_header(&self, name: &CacheName, what: fmt::Arguments<'_>) {
        self.events.slab_errors.fetch_add(1, Relaxed);
        let p = &self.platform;
        p.printk(format_args!(
            "============================================================================="
        ));
        p.printk(format_args!("BUG {name} (Not tainted): {what}"));
        p.printk(format_args!(
            "-----------------------------------------------------------------------------"
        ));
        p.printk(format_args!(""));
    }

    /// The `CPU: ... PID: ... Comm: ...` line that ends a report.
    fn report_footer(&self) {
        let p = &self.platform;
        let cpu = p.smp_processor_id();
        self.with_current(&mut |pid, comm| {
            p.printk(format_args!(
                "CPU: {cpu} PID: {pid} Comm: {comm} Not tainted"
            ))
        });
    }

    fn print_track(&self, g: &Geometry, at: u64, which: u64) {
        let mut rec = [0u8; TRACK_SIZE as usize];
        if self
            .mem
            .read(at + g.track_off as u64 + which * TRACK_SIZE, &mut rec)
            .is_err()
        {
            return;
        }
        let w = |i: usize| {
            u32::from_le_bytes([rec[i * 4], rec[i * 4 + 1], rec[i * 4 + 2], rec[i * 4 + 3]])
        };
        let (site, line, cpu, pid) = (w(0), w(1), w(2), w(3));
        if site == 0 && line == 0 {
            return;
        }
        let what = if which == 0 { "Allocated" } else { "Freed" };
        match self.slab.sites.lock().get(site) {
            Some(l) => self.platform.printk(format_args!(
                "{what} in {}:{} cpu={cpu} pid={pid}",
                l.file(),
                l.line()
            )),
            None => self
                .platform
                .printk(format_args!("{what} in ?:{line} cpu={cpu} pid={pid}")),
        }
    }

    fn print_slab_line(&self, g: &Geometry, pfn: u32, page: &Page) {
        let fp = match page.private() {
            NIL => 0,
            i => self.arch.phys_to_virt(
                self.pfn_phys(pfn as u64)
                    + page.index() as u64
                    + i as u64 * g.stride as u64
                    + g.obj_off as u64,
            ),
        };
        self.platform.printk(format_args!(
            "Slab pfn:{pfn:#x} objects={} used={} fp=0x{fp:016x} flags={}",
            g.num,
            page.mapcount.load(Relaxed).max(0),
            DisplayPageFlags(page.raw_flags())
        ));
    }

    /// SLUB's `print_trailer()`: owner tracks, the slab, and a dump of the
    /// object and its red zones.
    fn print_trailer(&self, d: &Dbg) {
        let g = &d.geo;
        if d.flags.contains(SlabFlags::SLAB_STORE_USER) {
            self.print_track(g, d.phys, 0);
            self.print_track(g, d.phys, 1);
        }
        let map = self.mem_map();
        if let Some(page) = map.get(d.pfn as usize) {
            let head = if page.is_tail() {
                page.private()
            } else {
                d.pfn
            };
            if let Some(h) = map.get(head as usize) {
                self.print_slab_line(g, head, h);
            }
        }
        self.platform.printk(format_args!(
            "Object 0x{:016x} @offset={}",
            d.virt + g.obj_off as u64,
            (d.phys + g.obj_off as u64) & (self.page_size() - 1)
        ));
        self.platform.printk(format_args!(""));
        if d.flags.contains(SlabFlags::SLAB_RED_ZONE) {
            self.dump("Redzone  ", d, 0, g.obj_off as u64);
        }
        let o = g.obj_off as u64;
        self.dump("Object   ", d, o, o + (g.size as u64).min(64));
        if d.flags.contains(SlabFlags::SLAB_RED_ZONE) {
            self.dump("Redzone  ", d, o + g.size as u64, g.red_end as u64);
        }
    }

    fn dump(&self, label: &str, d: &Dbg, from: u64, to: u64) {
        let mut at = from;
        while at < to {
            let n = ((to - at) as usize).min(16);
            let mut b = [0u8; 16];
            if self.mem.read(d.phys + at, &mut b[..n]).is_err() {
                return;
            }
            self.platform.printk(format_args!(
                "{label}{:016x}: {}",
                d.virt + at,
                HexLine(&b[..n])
            ));
            at += n as u64;
        }
    }

    #[cold]
    #[inline(never)]
    fn freelist_corrupt(&self, name: &CacheName, g: &Geometry, pfn: u32, page: &Page) {
        self.report_header(name, format_args!("Freepointer corrupt"));
        self.print_slab_line(g, pfn, page);
        self.platform.printk(format_args!(
            "FIX {name}: Marking all objects used (slab pfn:{pfn:#x} isolated)"
        ));
    }

    /// A free of something that is not an object of this cache.
    #[cold]
    #[inline(never)]
    fn bad_free(&self, slot: &CacheSlot, c: KmemCache, obj: u64, why: BadPtr) -> KmmError {
        let name = {
            let mut inner = slot.inner.lock();
            inner.errors += 1;
            inner.name
        };
        let p = &self.platform;
        match why {
            BadPtr::NotObject(pfn) => {
                self.report_header(&name, format_args!("Invalid object pointer 0x{obj:016x}"));
                let g = slot.inner.lock().geo;
                if let Some(page) = self.mem_map().get(pfn as usize) {
                    self.print_slab_line(&g, pfn, page);
                }
                self.report_footer();
                p.printk(format_args!("FIX {name}: Object at 0x{obj:016x} not freed"));
                KmmError::BadObject {
                    addr: obj,
                    why: "not at an object boundary of this cache",
                }
            }
            _ => {
                self.events.slab_errors.fetch_add(1, Relaxed);
                p.printk(format_args!(
                    "kmem_cache_free({name}): object 0x{obj:x} is not from this cache"
                ));
                match why {
                    BadPtr::OtherCache(tag) => {
                        let other = KmemCache::from_tag(tag)
                            .and_then(|o| self.kmem_cache_name(o).ok())
                            .unwrap_or(CacheName::EMPTY);
                        p.printk(format_args!(
                            "cache_from_obj: Wrong slab cache. {name} but object is from {other}"
                        ));
                    }
                    BadPtr::NotSlab(flags) => p.printk(format_args!(
                        "virt_to_cache: Object is not a Slab page! (page flags {})",
                        DisplayPageFlags(flags)
                    )),
                    _ => p.printk(format_args!(
                        "virt_to_cache: 0x{obj:x} is not a kernel direct-map address"
                    )),
                }
                let _ = c;
                KmmError::BadObject {
                    addr: obj,
                    why: "not an object of this cache",
                }
            }
        }
    }

    /// A double free caught without debugging (the object is the last one
    /// freed on this CPU).
    #[cold]
    #[inline(never)]
    fn double_free(&self, slot: &CacheSlot, obj: u64, pfn: u32, idx: u32) -> KmmError {
        let (name, g) = {
            let mut inner = slot.inner.lock();
            inner.errors += 1;
            (inner.name, inner.geo)
        };
        self.report_header(&name, format_args!("Object already free"));
        if let Some(page) = self.mem_map().get(pfn as usize) {
            self.print_slab_line(&g, pfn, page);
        }
        self.platform.printk(format_args!(
            "Object 0x{obj:016x} @offset={} (double free: it is the last object freed on this CPU)",
            idx as u64 * g.stride as u64
        ));
        self.report_footer();
        KmmError::BadObject {
            addr: obj,
            why: "double free (object already free)",
        }
    }
}

/// A snapshot of Linux's `slab_caches` list as [`Kmm::kmem_caches`] found
/// it, newest first.
pub struct KmemCacheList {
    caches: [(u64, KmemCache); MAX_CACHES],
    len: usize,
}

impl KmemCacheList {
    /// The handles.
    pub fn iter(&self) -> impl Iterator<Item = KmemCache> + '_ {
        self.caches[..self.len].iter().map(|&(_, c)| c)
    }

    /// How many caches there were.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there were none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_enable_cpucache() {
        assert_eq!(cpucache_limit(16, 4096), 120);
        assert_eq!(cpucache_limit(256, 4096), 120);
        assert_eq!(cpucache_limit(257, 4096), 54);
        assert_eq!(cpucache_limit(1025, 4096), 24);
        assert_eq!(cpucache_limit(4097, 4096), 8);
        assert_eq!(cpucache_limit(131073, 4096), 1);
        assert_eq!(ac_stride(120), 64 + 960);
        assert_eq!(ac_stride(1), 128);
    }

    #[test]
    fn geometry_plain_objects() {
        let g = Geometry::calculate(16, 0, SlabFlags::empty(), false, 12, 1).unwrap();
        assert_eq!((g.stride, g.num, g.order, g.link_off), (16, 256, 0, 0));
        assert_eq!(g.colour, 1);
        // seed 000's student with a constructor: the link moves after the object.
        let g = Geometry::calculate(16, 0, SlabFlags::empty(), true, 12, 1).unwrap();
        assert_eq!((g.stride, g.num, g.link_off), (24, 170, 16));
        assert_eq!(g.colour, 1, "16 bytes left: no second colour");
        // seed 001's scullc quantum: one cache-aligned 4000-byte object per page.
        let g = Geometry::calculate(4000, 0, SlabFlags::SLAB_HWCACHE_ALIGN, false, 12, 1).unwrap();
        assert_eq!((g.stride, g.num, g.order, g.align), (4032, 1, 0, 64));
        assert_eq!(g.colour, 2);
        // kmalloc-8k needs two pages.
        let g = Geometry::calculate(8192, 8, SlabFlags::empty(), false, 12, 1).unwrap();
        assert_eq!((g.num, g.order), (1, 1));
        // 96-byte objects leave one cache line to colour with.
        let g = Geometry::calculate(96, 8, SlabFlags::empty(), false, 12, 1).unwrap();
        assert_eq!((g.num, g.colour), (42, 2));
    }

    #[test]
    fn hwcache_align_halves_for_small_objects() {
        let g = Geometry::calculate(20, 0, SlabFlags::SLAB_HWCACHE_ALIGN, false, 12, 1).unwrap();
        assert_eq!(g.align, 32);
        let g = Geometry::calculate(8, 0, SlabFlags::SLAB_HWCACHE_ALIGN, false, 12, 1).unwrap();
        assert_eq!(g.align, 8);
    }

    #[test]
    fn debug_layout_keeps_object_aligned() {
        let all = SLAB_DEBUG_FLAGS;
        let g = Geometry::calculate(30, 64, all, false, 12, 1).unwrap();
        assert_eq!(g.obj_off, 64);
        assert_eq!(g.red_end, 64 + 32 + 8);
        assert!(g.link_off >= g.red_end && g.state_off > g.link_off);
        assert!(g.track_off > g.state_off);
        assert_eq!(g.stride % 64, 0);
        assert!(g.poison);
        let g = Geometry::calculate(30, 0, all, true, 12, 1).unwrap();
        assert!(!g.poison, "no poison with a constructor");
    }

    #[test]
    fn reciprocal_division_is_exact_on_boundaries() {
        for stride in [8u64, 24, 96, 192, 4032, 8192, 12345 * 8, 1 << 22] {
            let recip = (1u64 << RECIP_SHIFT).div_ceil(stride);
            let max = (64u64 << 20) / stride;
            for idx in [0, 1, 2, max / 2, max.saturating_sub(1)] {
                assert_eq!(
                    (idx * stride * recip) >> RECIP_SHIFT,
                    idx,
                    "stride {stride}"
                );
            }
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(CacheName::new("testslab").is_ok());
        assert!(CacheName::new("has space").is_err());
        assert!(CacheName::new("tab\tname").is_err());
        assert!(CacheName::new("").is_err());
        assert!(CacheName::new(&"x".repeat(32)).is_err());
        assert_eq!(CacheName::new(&"x".repeat(31)).unwrap().as_str().len(), 31);
    }

    #[test]
    fn handles_pack_and_tag() {
        let c = KmemCache { slot: 7, gen: 3 };
        assert_eq!(KmemCache::unpack(c.pack()), Some(c));
        assert_eq!(KmemCache::unpack(0), None);
        assert_eq!(KmemCache::from_tag(c.tag()), Some(c));
        assert_eq!(KmemCache::from_tag(LARGE_KMALLOC_TAG), None);
    }
}
