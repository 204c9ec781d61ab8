//! The dynamic per-CPU allocator: `mm/percpu.c` (LDD3 §8.4, "Per-CPU Variables").
//!
//! Per-CPU memory comes in *chunks*. A chunk holds one *unit* of
//! [`Kmm::pcpu_unit_size`] bytes per possible CPU, laid out contiguously: the
//! copy of an object for CPU `n` lives at `chunk base + n * unit_size + offset`,
//! so one offset (Linux's `__percpu` pointer, here a [`PercpuPtr`]) names the
//! object on every CPU.
//!
//! * The *first chunk* is set up at boot from memblock
//!   (`pcpu_embed_first_chunk` + `pcpu_setup_first_chunk`), in low memory.
//! * Further chunks come from the page allocator when every chunk is full
//!   (`pcpu_create_chunk`; Linux maps them with vmalloc, kmm takes physically
//!   contiguous pages) and go back to it as soon as they are empty
//!   (`pcpu_balance_workfn` / `pcpu_destroy_chunk`). The first chunk is never freed.
//! * Every chunk has an allocation bitmap of [`PCPU_MIN_ALLOC_SIZE`]-byte
//!   granules and a boundary bitmap (`alloc_map`, `bound_map`) marking where
//!   each allocation starts and ends; both live in simulated RAM (taken with the
//!   chunk), the chunk table is a fixed array of [`PCPU_MAX_CHUNKS`] slots.

use crate::error::KmmError;
use crate::gfp::GfpFlags;
use crate::memblock::{Memblock, ReserveKind};
use crate::mm::Kmm;
use crate::platform::Platform;
use crate::ram::PhysMem;
use crate::spinlock::SpinLock;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// `PCPU_MIN_ALLOC_SIZE`: the allocation granule (one bit of the maps).
pub const PCPU_MIN_ALLOC_SIZE: u64 = 4;
/// `PCPU_MIN_UNIT_SIZE`: the smallest unit (bytes per CPU per chunk).
pub const PCPU_MIN_UNIT_SIZE: u64 = 32 << 10;
/// Size of the chunk table: at most this many chunks exist at once.
pub const PCPU_MAX_CHUNKS: usize = 16;

/// Linux's `void __percpu *`: an offset valid in every CPU's unit, plus the
/// identity of the chunk (slot and generation, so a pointer into a chunk that
/// has since been released is recognised).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PercpuPtr {
    chunk: u16,
    gen: u16,
    off: u32,
}

impl PercpuPtr {
    /// Byte offset of the object inside each CPU's unit.
    pub fn offset(&self) -> u64 {
        u64::from(self.off)
    }

    /// The chunk-table slot holding the object (0 is the first chunk).
    pub fn chunk(&self) -> usize {
        usize::from(self.chunk)
    }
}

// ---------------------------------------------------------------------------
// Bitmaps (`lib/bitmap.c` as `mm/percpu.c` uses it)
// ---------------------------------------------------------------------------

/// A bitmap stored as 64-bit words somewhere (a RAM table or, in tests, a slice).
pub(crate) trait Words {
    fn get(&self, i: usize) -> u64;
    fn put(&mut self, i: usize, v: u64);
}

impl Words for [u64] {
    fn get(&self, i: usize) -> u64 {
        self[i]
    }
    fn put(&mut self, i: usize, v: u64) {
        self[i] = v;
    }
}

/// A bitmap in simulated RAM at a physical address.
struct RamWords<'a> {
    mem: &'a PhysMem,
    at: u64,
}

impl Words for RamWords<'_> {
    fn get(&self, i: usize) -> u64 {
        // Out-of-range reads cannot happen (the maps are reserved with the
        // chunk); were one to, the granules read as allocated.
        self.mem
            .read_u64(self.at + 8 * i as u64)
            .unwrap_or(u64::MAX)
    }
    fn put(&mut self, i: usize, v: u64) {
        let _ = self.mem.write_u64(self.at + 8 * i as u64, v);
    }
}

fn test_bit(m: &(impl Words + ?Sized), i: usize) -> bool {
    m.get(i / 64) >> (i % 64) & 1 != 0
}

/// `find_next_bit()` (`want = true`) / `find_next_zero_bit()`: the first bit
/// in `from..to` equal to `want`.
fn find_next(m: &(impl Words + ?Sized), from: usize, to: usize, want: bool) -> Option<usize> {
    let mut i = from;
    while i < to {
        let mut w = m.get(i / 64);
        if !want {
            w = !w;
        }
        w &= u64::MAX << (i % 64);
        if w != 0 {
            let b = (i / 64) * 64 + w.trailing_zeros() as usize;
            return (b < to).then_some(b);
        }
        i = (i / 64 + 1) * 64;
    }
    None
}

/// `bitmap_set()` / `bitmap_clear()` of `from..to`.
fn set_range(m: &mut (impl Words + ?Sized), from: usize, to: usize, val: bool) {
    let mut i = from;
    while i < to {
        let word = i / 64;
        let lo = i % 64;
        let hi = (to - word * 64).min(64);
        let mask = if hi - lo == 64 {
            u64::MAX
        } else {
            ((1u64 << (hi - lo)) - 1) << lo
        };
        let w = m.get(word);
        m.put(word, if val { w | mask } else { w & !mask });
        i = word * 64 + hi;
    }
}

/// `pcpu_find_block_fit()`: first fit of `bits` clear granules starting at a
/// multiple of `align` (granules) in a map of `nbits`.
pub(crate) fn find_fit(
    alloc: &(impl Words + ?Sized),
    nbits: usize,
    bits: usize,
    align: usize,
) -> Option<usize> {
    let mut start = 0usize;
    while start.checked_add(bits)? <= nbits {
        match find_next(alloc, start, start + bits, true) {
            None => return Some(start),
            Some(busy) => {
                let free = find_next(alloc, busy + 1, nbits, false)?;
                start = free.div_ceil(align) * align;
            }
        }
    }
    None
}

/// `pcpu_alloc_area()`'s map update: marks `off..off+bits` allocated and
/// records its boundaries.
pub(crate) fn alloc_area(
    alloc: &mut (impl Words + ?Sized),
    bound: &mut (impl Words + ?Sized),
    off: usize,
    bits: usize,
) {
    set_range(alloc, off, off + bits, true);
    set_range(bound, off, off + 1, true);
    set_range(bound, off + 1, off + bits, false);
    set_range(bound, off + bits, off + bits + 1, true);
}

/// `pcpu_free_area()`: frees the allocation starting at `off`; returns the
/// granules freed, or `None` when no allocation starts there (a double free
/// or a pointer into the middle of an object).
pub(crate) fn free_area(
    alloc: &mut (impl Words + ?Sized),
    bound: &mut (impl Words + ?Sized),
    nbits: usize,
    off: usize,
) -> Option<usize> {
    if off >= nbits || !test_bit(bound, off) || !test_bit(alloc, off) {
        return None;
    }
    let end = find_next(bound, off + 1, nbits + 1, true).unwrap_or(nbits);
    // Like Linux, the start bit stays: it may be the end bit of the
    // allocation before this one. A second free finds the granule free.
    set_range(alloc, off, end, false);
    Some(end - off)
}

// ---------------------------------------------------------------------------
// Chunks
// ---------------------------------------------------------------------------

/// One slot of the chunk table (`struct pcpu_chunk`, what kmm needs of it).
struct ChunkSlot {
    /// The chunk is in use.
    live: AtomicBool,
    /// Bumped whenever the slot's chunk is released.
    gen: AtomicU32,
    /// Physical address of unit 0.
    base: AtomicU64,
    /// Physical address of `alloc_map` (followed by `bound_map`).
    meta: AtomicU64,
    /// Page orders of the units block and of the maps (dynamic chunks).
    order: AtomicU32,
    meta_order: AtomicU32,
    /// `chunk->free_bytes`, in granules.
    free_bits: AtomicU32,
}

impl ChunkSlot {
    const fn empty() -> ChunkSlot {
        ChunkSlot {
            live: AtomicBool::new(false),
            gen: AtomicU32::new(0),
            base: AtomicU64::new(0),
            meta: AtomicU64::new(0),
            order: AtomicU32::new(0),
            meta_order: AtomicU32::new(0),
            free_bits: AtomicU32::new(0),
        }
    }
}

/// The per-CPU allocator's state in [`Kmm`] (Linux's `pcpu_*` globals).
pub(crate) struct PcpuState {
    unit_size: u64,
    nr_units: usize,
    /// Granules per unit (`pcpu_chunk_map_bits`).
    map_bits: usize,
    chunks: [ChunkSlot; PCPU_MAX_CHUNKS],
    /// `pcpu_lock` (and `pcpu_alloc_mutex`): serialises map updates and
    /// chunk creation and destruction.
    lock: SpinLock<()>,
}

/// Words of `alloc_map` for `map_bits` granules.
fn map_words(map_bits: usize) -> usize {
    map_bits.div_ceil(64)
}

/// Bytes of both maps (`bound_map` has one bit more).
fn meta_bytes(map_bits: usize) -> u64 {
    ((map_words(map_bits) + map_words(map_bits + 1)) * 8) as u64
}

/// `pcpu_embed_first_chunk()` + `pcpu_setup_first_chunk()`: reserves the
/// first chunk (one unit per possible CPU) and its maps from memblock, in low
/// memory, at boot.
pub(crate) fn pcpu_setup_first_chunk<P: Platform>(
    mb: &mut Memblock,
    mem: &PhysMem,
    platform: &P,
    page_size: u64,
    nr_cpus: usize,
    lowmem_limit: u64,
) -> Result<PcpuState, KmmError> {
    let unit_size = PCPU_MIN_UNIT_SIZE.max(page_size);
    let map_bits = (unit_size / PCPU_MIN_ALLOC_SIZE) as usize;
    let nr_units = nr_cpus.max(1);
    let units = unit_size * nr_units as u64;
    let meta = meta_bytes(map_bits);
    let base = mb.alloc_range(
        units + meta,
        page_size,
        0,
        lowmem_limit,
        None,
        ReserveKind::PerCpu,
    )?;
    mem.fill(base, (units + meta) as usize, 0)?;
    let st = PcpuState {
        unit_size,
        nr_units,
        map_bits,
        chunks: [const { ChunkSlot::empty() }; PCPU_MAX_CHUNKS],
        lock: SpinLock::new(()),
    };
    let meta_at = base + units;
    let mut bound = RamWords {
        mem,
        at: meta_at + (map_words(map_bits) * 8) as u64,
    };
    set_range(&mut bound, map_bits, map_bits + 1, true);
    let c = &st.chunks[0];
    c.base.store(base, Ordering::Relaxed);
    c.meta.store(meta_at, Ordering::Relaxed);
    c.free_bits.store(map_bits as u32, Ordering::Relaxed);
    c.live.store(true, Ordering::Release);
    platform.printk(format_args!(
        "percpu: Embedded {} pages/cpu s0 r0 d{} u{}",
        unit_size / page_size,
        unit_size,
        unit_size
    ));
    Ok(st)
}

impl<P: Platform> Kmm<P> {
    /// `pcpu_unit_size`: bytes of each CPU's unit in every chunk.
    pub fn pcpu_unit_size(&self) -> u64 {
        self.percpu.unit_size
    }

    /// `pcpu_nr_units`: units per chunk (one per possible CPU).
    pub fn pcpu_nr_units(&self) -> usize {
        self.percpu.nr_units
    }

    /// Chunks in use, the first chunk included (`pcpu_nr_populated` in chunks).
    pub fn pcpu_nr_chunks(&self) -> usize {
        self.percpu
            .chunks
            .iter()
            .filter(|c| c.live.load(Ordering::Acquire))
            .count()
    }

    /// `pcpu_nr_pages()`: pages of all chunks, all units (`/proc/meminfo` `Percpu`).
    pub fn pcpu_nr_pages(&self) -> u64 {
        (self.pcpu_nr_chunks() as u64 * self.percpu.nr_units as u64 * self.percpu.unit_size)
            >> self.page_shift
    }

    /// Free bytes in chunk `slot` (`chunk->free_bytes`), `None` if unused.
    pub fn pcpu_chunk_free_bytes(&self, slot: usize) -> Option<u64> {
        let c = self.percpu.chunks.get(slot)?;
        c.live
            .load(Ordering::Acquire)
            .then(|| u64::from(c.free_bits.load(Ordering::Relaxed)) * PCPU_MIN_ALLOC_SIZE)
    }

    fn maps(&self, c: &ChunkSlot) -> (RamWords<'_>, RamWords<'_>) {
        let meta = c.meta.load(Ordering::Relaxed);
        (
            RamWords {
                mem: &self.mem,
                at: meta,
            },
            RamWords {
                mem: &self.mem,
                at: meta + (map_words(self.percpu.map_bits) * 8) as u64,
            },
        )
    }

    /// `alloc_percpu(type)`: a zeroed object of `T`'s size and alignment on
    /// every CPU.
    pub fn alloc_percpu<T>(&self) -> Result<PercpuPtr, KmmError> {
        self.__alloc_percpu(
            core::mem::size_of::<T>() as u64,
            core::mem::align_of::<T>() as u64,
        )
    }

    /// `__alloc_percpu(size, align)`: `size` zeroed bytes aligned to `align`
    /// on every possible CPU. Takes a new chunk from the page allocator when
    /// no chunk has room.
    pub fn __alloc_percpu(&self, size: u64, align: u64) -> Result<PercpuPtr, KmmError> {
        self.__alloc_percpu_gfp(size, align, GfpFlags::GFP_KERNEL)
    }

    /// `__alloc_percpu_gfp(size, align, gfp)`: as [`Self::__alloc_percpu`];
    /// a mask that does not allow blocking (`GFP_ATOMIC`, `GFP_NOWAIT`) is
    /// served only from existing chunks, as Linux's atomic per-CPU
    /// allocations are.
    pub fn __alloc_percpu_gfp(
        &self,
        size: u64,
        align: u64,
        gfp: GfpFlags,
    ) -> Result<PercpuPtr, KmmError> {
        let st = &self.percpu;
        if size == 0 {
            return Err(KmmError::InvalidArgument {
                what: "zero-sized per-CPU allocation",
            });
        }
        if !align.is_power_of_two() || align > self.page_size() {
            return Err(KmmError::InvalidArgument {
                what: "per-CPU alignment is not a power of two up to PAGE_SIZE",
            });
        }
        if size > st.unit_size {
            return Err(KmmError::TooLarge {
                size,
                max: st.unit_size,
                what: "PCPU_MIN_UNIT_SIZE",
            });
        }
        let size = size.next_multiple_of(PCPU_MIN_ALLOC_SIZE);
        let bits = (size / PCPU_MIN_ALLOC_SIZE) as usize;
        let abits = (align.max(PCPU_MIN_ALLOC_SIZE) / PCPU_MIN_ALLOC_SIZE) as usize;
        for _attempt in 0..4 {
            if let Some(ptr) = self.pcpu_alloc_in_chunks(bits, abits) {
                for cpu in 0..st.nr_units {
                    let phys = self.pcpu_phys(ptr, cpu)?;
                    self.mem.fill(phys, size as usize, 0)?;
                }
                return Ok(ptr);
            }
            let err = if gfp.allows_blocking() {
                match self.pcpu_create_chunk(gfp) {
                    Ok(()) => continue,
                    Err(e) => e,
                }
            } else {
                KmmError::NoMemory {
                    order: self.get_order(st.unit_size * st.nr_units as u64),
                    gfp,
                }
            };
            if !gfp.contains(GfpFlags::__GFP_NOWARN) {
                self.platform.printk(format_args!(
                    "percpu: allocation failed, size={} align={} atomic={}, {}",
                    size,
                    align,
                    u8::from(!gfp.allows_blocking()),
                    err
                ));
            }
            return Err(err);
        }
        Err(KmmError::NoMemory {
            order: self.get_order(st.unit_size * st.nr_units as u64),
            gfp,
        })
    }

    /// `pcpu_alloc()`'s search: first fit over the chunks, in slot order.
    fn pcpu_alloc_in_chunks(&self, bits: usize, abits: usize) -> Option<PercpuPtr> {
        let st = &self.percpu;
        let _g = st.lock.lock();
        for (slot, c) in st.chunks.iter().enumerate() {
            if !c.live.load(Ordering::Acquire)
                || (c.free_bits.load(Ordering::Relaxed) as usize) < bits
            {
                continue;
            }
            let (mut alloc, mut bound) = self.maps(c);
            if let Some(off) = find_fit(&alloc, st.map_bits, bits, abits) {
                alloc_area(&mut alloc, &mut bound, off, bits);
                c.free_bits.fetch_sub(bits as u32, Ordering::Relaxed);
                return Some(PercpuPtr {
                    chunk: slot as u16,
                    gen: c.gen.load(Ordering::Relaxed) as u16,
                    off: (off as u64 * PCPU_MIN_ALLOC_SIZE) as u32,
                });
            }
        }
        None
    }

    /// `pcpu_create_chunk()`: a new chunk from the page allocator.
    fn pcpu_create_chunk(&self, gfp: GfpFlags) -> Result<(), KmmError> {
        let st = &self.percpu;
        let has_slot = st.chunks.iter().any(|c| !c.live.load(Ordering::Acquire));
        if !has_slot {
            return Err(KmmError::TableFull {
                what: "per-CPU chunks",
            });
        }
        let order = self.get_order(st.unit_size * st.nr_units as u64);
        let meta_len = meta_bytes(st.map_bits);
        let meta_order = self.get_order(meta_len);
        // Chunks must be in the direct map: no zone modifiers (no highmem).
        let gfp = gfp.difference(crate::gfp::GFP_ZONEMASK);
        let units = self.alloc_pages(gfp, order)?;
        let base = self.page_to_phys(units)?;
        let meta = match self.alloc_pages(gfp, meta_order) {
            Ok(p) => self.page_to_phys(p)?,
            Err(e) => {
                self.__free_pages(units, order)?;
                return Err(e);
            }
        };
        self.mem.fill(meta, meta_len as usize, 0)?;
        let mut bound = RamWords {
            mem: &self.mem,
            at: meta + (map_words(st.map_bits) * 8) as u64,
        };
        set_range(&mut bound, st.map_bits, st.map_bits + 1, true);
        let _g = st.lock.lock();
        // Another CPU may have created an (still empty) chunk meanwhile: use
        // that one rather than keep two empty chunks.
        let spare = st.chunks.iter().skip(1).any(|c| {
            c.live.load(Ordering::Acquire)
                && c.free_bits.load(Ordering::Relaxed) as usize == st.map_bits
        });
        if spare {
            drop(_g);
            self.pcpu_free_pages(base, order, meta, meta_order);
            return Ok(());
        }
        match st.chunks.iter().find(|c| !c.live.load(Ordering::Acquire)) {
            Some(c) => {
                c.base.store(base, Ordering::Relaxed);
                c.meta.store(meta, Ordering::Relaxed);
                c.order.store(order, Ordering::Relaxed);
                c.meta_order.store(meta_order, Ordering::Relaxed);
                c.free_bits.store(st.map_bits as u32, Ordering::Relaxed);
                c.live.store(true, Ordering::Release);
                Ok(())
            }
            None => {
                drop(_g);
                self.pcpu_free_pages(base, order, meta, meta_order);
                Err(KmmError::TableFull {
                    what: "per-CPU chunks",
                })
            }
        }
    }

    fn pcpu_free_pages(&self, base: u64, order: u32, meta: u64, meta_order: u32) {
        for (at, o) in [(base, order), (meta, meta_order)] {
            if let Ok(p) = self.pfn_to_page(at >> self.page_shift) {
                let _ = self.__free_pages(p, o);
            }
        }
    }

    fn pcpu_bad(&self, ptr: PercpuPtr, why: &'static str) -> KmmError {
        self.platform.printk(format_args!(
            "percpu: bad pointer chunk {} offset {:#x}: {}",
            ptr.chunk, ptr.off, why
        ));
        KmmError::BadObject {
            addr: u64::from(ptr.off),
            why,
        }
    }

    /// The chunk slot of `ptr`, if it still names a live chunk.
    fn pcpu_chunk_of(&self, ptr: PercpuPtr) -> Result<&ChunkSlot, KmmError> {
        let c = self.percpu.chunks.get(usize::from(ptr.chunk)).filter(|c| {
            c.live.load(Ordering::Acquire)
                && c.gen.load(Ordering::Relaxed) as u16 == ptr.gen
                && u64::from(ptr.off) < self.percpu.unit_size
        });
        c.ok_or_else(|| self.pcpu_bad(ptr, "not a per-CPU pointer (foreign or chunk released)"))
    }

    /// `free_percpu()`: frees the object on every CPU. A pointer that does not
    /// start a live allocation (a double free, a foreign or stale pointer) is
    /// reported and refused. An emptied chunk other than the first goes back
    /// to the page allocator.
    pub fn free_percpu(&self, ptr: PercpuPtr) -> Result<(), KmmError> {
        let st = &self.percpu;
        let g = st.lock.lock();
        let c = self.pcpu_chunk_of(ptr)?;
        let (mut alloc, mut bound) = self.maps(c);
        let off = (u64::from(ptr.off) / PCPU_MIN_ALLOC_SIZE) as usize;
        if u64::from(ptr.off) % PCPU_MIN_ALLOC_SIZE != 0 {
            drop(g);
            return Err(self.pcpu_bad(ptr, "not the start of a per-CPU object"));
        }
        let Some(freed) = free_area(&mut alloc, &mut bound, st.map_bits, off) else {
            drop(g);
            return Err(self.pcpu_bad(ptr, "double free or not the start of a per-CPU object"));
        };
        let free = c.free_bits.fetch_add(freed as u32, Ordering::Relaxed) as usize + freed;
        if ptr.chunk != 0 && free == st.map_bits {
            // pcpu_balance_workfn(): release the empty chunk.
            c.live.store(false, Ordering::Release);
            c.gen.fetch_add(1, Ordering::Relaxed);
            let (base, order) = (
                c.base.load(Ordering::Relaxed),
                c.order.load(Ordering::Relaxed),
            );
            let (meta, mo) = (
                c.meta.load(Ordering::Relaxed),
                c.meta_order.load(Ordering::Relaxed),
            );
            drop(g);
            self.pcpu_free_pages(base, order, meta, mo);
        }
        Ok(())
    }

    /// Physical address of `cpu`'s copy of `ptr`'s object.
    pub fn per_cpu_phys(&self, ptr: PercpuPtr, cpu: usize) -> Result<u64, KmmError> {
        if cpu >= self.percpu.nr_units {
            return Err(KmmError::InvalidArgument {
                what: "CPU number at or above nr_cpu_ids",
            });
        }
        self.pcpu_phys(ptr, cpu)
    }

    fn pcpu_phys(&self, ptr: PercpuPtr, cpu: usize) -> Result<u64, KmmError> {
        let c = self.pcpu_chunk_of(ptr)?;
        Ok(
            c.base.load(Ordering::Relaxed)
                + cpu as u64 * self.percpu.unit_size
                + u64::from(ptr.off),
        )
    }

    /// `per_cpu_ptr(ptr, cpu)`: kernel virtual address of `cpu`'s copy.
    pub fn per_cpu_ptr(&self, ptr: PercpuPtr, cpu: usize) -> Result<u64, KmmError> {
        self.__va(self.per_cpu_phys(ptr, cpu)?)
    }

    /// `this_cpu_ptr(ptr)`: the calling CPU's copy (`smp_processor_id()`).
    pub fn this_cpu_ptr(&self, ptr: PercpuPtr) -> Result<u64, KmmError> {
        self.per_cpu_ptr(ptr, self.platform.smp_processor_id())
    }

    /// Reads `buf.len()` bytes at byte `at` of `cpu`'s copy (`*per_cpu_ptr(ptr, cpu)`).
    pub fn per_cpu_read(
        &self,
        ptr: PercpuPtr,
        cpu: usize,
        at: u64,
        buf: &mut [u8],
    ) -> Result<(), KmmError> {
        let phys = self.per_cpu_range(ptr, cpu, at, buf.len())?;
        self.mem.read(phys, buf)
    }

    /// Writes `data` at byte `at` of `cpu`'s copy.
    pub fn per_cpu_write(
        &self,
        ptr: PercpuPtr,
        cpu: usize,
        at: u64,
        data: &[u8],
    ) -> Result<(), KmmError> {
        let phys = self.per_cpu_range(ptr, cpu, at, data.len())?;
        self.mem.write(phys, data)
    }

    /// The 64-bit word at byte `at` (8-aligned) of `cpu`'s copy, for atomic
    /// access (`this_cpu_add()`, `per_cpu()` of a counter).
    pub fn per_cpu_u64(&self, ptr: PercpuPtr, cpu: usize, at: u64) -> Result<&AtomicU64, KmmError> {
        let phys = self.per_cpu_range(ptr, cpu, at, 8)?;
        self.mem.ram_ref::<AtomicU64>(phys)
    }

    fn per_cpu_range(
        &self,
        ptr: PercpuPtr,
        cpu: usize,
        at: u64,
        len: usize,
    ) -> Result<u64, KmmError> {
        let end = u64::from(ptr.off)
            .checked_add(at)
            .and_then(|e| e.checked_add(len as u64));
        if end.is_none_or(|e| e > self.percpu.unit_size) {
            return Err(KmmError::InvalidAddress {
                addr: at,
                what: "offset outside the per-CPU unit",
            });
        }
        Ok(self.per_cpu_phys(ptr, cpu)? + at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NBITS: usize = 1024;

    fn maps() -> (Vec<u64>, Vec<u64>) {
        let alloc = vec![0u64; NBITS / 64];
        let mut bound = vec![0u64; NBITS / 64 + 1];
        set_range(bound.as_mut_slice(), NBITS, NBITS + 1, true);
        (alloc, bound)
    }

    #[test]
    fn set_range_and_find() {
        let mut m = vec![0u64; 4];
        set_range(m.as_mut_slice(), 3, 130, true);
        assert_eq!(find_next(m.as_slice(), 0, 256, true), Some(3));
        assert_eq!(find_next(m.as_slice(), 3, 256, false), Some(130));
        assert_eq!(m[1], u64::MAX);
        set_range(m.as_mut_slice(), 64, 128, false);
        assert_eq!(m[1], 0);
        assert_eq!(find_next(m.as_slice(), 64, 128, true), None);
    }

    #[test]
    fn fit_honours_alignment_and_frees() {
        let (mut a, mut b) = maps();
        let x = find_fit(a.as_slice(), NBITS, 3, 1).unwrap();
        alloc_area(a.as_mut_slice(), b.as_mut_slice(), x, 3);
        assert_eq!(x, 0);
        let y = find_fit(a.as_slice(), NBITS, 2, 16).unwrap();
        assert_eq!(y, 16);
        alloc_area(a.as_mut_slice(), b.as_mut_slice(), y, 2);
        assert_eq!(
            free_area(a.as_mut_slice(), b.as_mut_slice(), NBITS, 1),
            None
        );
        assert_eq!(
            free_area(a.as_mut_slice(), b.as_mut_slice(), NBITS, 0),
            Some(3)
        );
        assert_eq!(
            free_area(a.as_mut_slice(), b.as_mut_slice(), NBITS, 0),
            None
        );
        assert_eq!(
            free_area(a.as_mut_slice(), b.as_mut_slice(), NBITS, 16),
            Some(2)
        );
        assert!(a.iter().all(|&w| w == 0));
        assert_eq!(find_fit(a.as_slice(), NBITS, NBITS, 1), Some(0));
        assert_eq!(find_fit(a.as_slice(), NBITS, NBITS + 1, 1), None);
    }

    proptest! {
        #[test]
        fn random_alloc_free(ops in proptest::collection::vec((1usize..40, 0u32..5, any::<bool>(), any::<u16>()), 1..200)) {
            let (mut a, mut b) = maps();
            let mut live: Vec<(usize, usize)> = Vec::new();
            for (bits, alog, free, pick) in ops {
                if free && !live.is_empty() {
                    let (off, n) = live.swap_remove(pick as usize % live.len());
                    prop_assert_eq!(free_area(a.as_mut_slice(), b.as_mut_slice(), NBITS, off), Some(n));
                } else {
                    let align = 1usize << alog;
                    match find_fit(a.as_slice(), NBITS, bits, align) {
                        Some(off) => {
                            prop_assert_eq!(off % align, 0);
                            prop_assert!(off + bits <= NBITS);
                            for &(o, n) in &live {
                                prop_assert!(off + bits <= o || o + n <= off, "overlap");
                            }
                            alloc_area(a.as_mut_slice(), b.as_mut_slice(), off, bits);
                            live.push((off, bits));
                        }
                        None => {
                            // No aligned run exists: check by brute force.
                            let used = |i: usize| live.iter().any(|&(o, n)| i >= o && i < o + n);
                            let exists = (0..NBITS).step_by(align).any(|s| s + bits <= NBITS && (s..s + bits).all(|i| !used(i)));
                            prop_assert!(!exists);
                        }
                    }
                }
                let set: usize = a.iter().map(|w| w.count_ones() as usize).sum();
                prop_assert_eq!(set, live.iter().map(|l| l.1).sum::<usize>());
            }
        }
    }
}
