//! # kmm-heap — kmm's `kmalloc` as a Rust allocator
//!
//! [`KmmHeap`] boots a kmm memory manager over a region of host memory and
//! serves Rust allocations from it with `kmalloc`/`kfree`/`krealloc`, the
//! way a Linux kernel serves its own: small objects from the `kmalloc-*`
//! slab caches (per-CPU object arrays in front of slab lists), larger ones
//! straight from the zoned buddy allocator. It implements
//! [`GlobalAlloc`] and [`allocator_api2::alloc::Allocator`], so it can be a
//! program's `#[global_allocator]` or back one collection:
//!
//! ```no_run
//! use kmm_heap::KmmHeap;
//!
//! #[global_allocator]
//! static HEAP: KmmHeap = KmmHeap::new(2 << 30);
//!
//! fn main() {
//!     let v: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
//!     assert!(HEAP.owns(v.as_ptr().cast()));
//!     let mut info = String::new();
//!     if let Some(k) = HEAP.kmm() {
//!         kmm::slab_common::slabinfo(k, &mut info).unwrap();
//!     }
//!     print!("{info}");
//! }
//! ```
//!
//! ## How a request is served
//!
//! | Rust asks | kmm does |
//! |---|---|
//! | `alloc(layout)` | `kmalloc(size, GFP_KERNEL)`; with `align > 8`, `kmalloc(max(size, align).next_power_of_two())` |
//! | `alloc_zeroed` | `kzalloc` |
//! | `realloc` | `krealloc` of the same rounding (in place while it fits the object's size class) |
//! | `dealloc` | `kfree` |
//!
//! **Alignment.** Every kmalloc object is 8-byte aligned. A power-of-two
//! size class is naturally aligned: its objects exactly tile their slab
//! (`PAGE_SIZE << order` is a multiple of the class size, so no space is left
//! to colour with and every slab starts its first object at offset 0), and
//! sizes above `KMALLOC_MAX_CACHE_SIZE` are whole buddy blocks, aligned to
//! their size in physical addresses. The region's host base is aligned to the
//! largest buddy block, so physical alignment is host alignment. Each pointer
//! is still checked before it is returned (slab debugging, which adds red
//! zones, would break the tiling); a misaligned object is given back and the
//! request served by the system allocator instead.
//!
//! **Page size.** The heap's machine is an `x86_64` profile with 64 KiB
//! pages by default (as arm64 and ppc64 Linux often run): that makes
//! `KMALLOC_MAX_SIZE` (`PAGE_SIZE << (MAX_ORDER - 1)`) 64 MiB, enough for the
//! hash tables of large maps, where 4 KiB pages would stop kmalloc at 4 MiB.
//! [`KmmHeap::with_page_size`] chooses another.
//!
//! **What kmm does not serve.** A request larger than `KMALLOC_MAX_SIZE`
//! (or whose alignment exceeds it) goes to [`std::alloc::System`], as glibc
//! serves its largest requests with `mmap` and Linux's `kvmalloc` falls back
//! to `vmalloc`; [`HeapStats::to_system`] counts them. Every free and
//! reallocation is routed by address (inside the region: kmm; outside: the
//! system allocator), which also makes [`KmmHeap::set_enabled`] safe at any
//! moment.
//!
//! **Failure.** When kmm cannot find memory (after its own direct reclaim:
//! shrinking slab caches, draining per-CPU lists) the allocator returns null,
//! and Linux's "page allocation failure" report goes to standard error.
//!
//! ## What the heap itself needs
//!
//! Nothing from the Rust heap. On first use it maps the region (one
//! anonymous `MAP_NORESERVE` mapping: address space only, committed by the
//! host as kmm touches it, never unmapped), boots kmm on its own
//! [`HostPlatform`] (host threads as the CPUs of one node, `printk` to
//! stderr) and keeps the `Kmm` (about 106 KiB) in a [`spin::Once`] inside
//! the `KmmHeap` value, which is a `static`. Threads that allocate first at
//! the same moment wait (yielding) for one boot. Booting takes about 0.5 MiB
//! of the booting thread's stack in release builds and about 1 MiB at
//! `opt-level = 1`, within the 2 MiB of a spawned thread. The region's RAM
//! map is one e820 range and one node; as on a PC, the first MiB and the
//! "kernel image" (16 MiB to about 46 MiB) stay reserved and are never
//! touched, so a heap needs at least 64 MiB of address space and leaves
//! `region - ~46 MiB` for allocations.
//!
//! `krealloc` keeps an object in place whenever the new size fits its size
//! class, shrinking included (as Linux's does): a block shrunk from 1 MiB to
//! 3 KB keeps its 1 MiB until it is freed.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod platform;
mod region;
pub mod workload;

use core::alloc::{GlobalAlloc, Layout};
use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::alloc::System;

use allocator_api2::alloc::{AllocError, Allocator};
use kmm::arch::e820::{E820Entry, E820Type};
use kmm::mm_init::{setup_arch, BootParams, NodeRange};
use kmm::{GfpFlags, Kmm, KmmError, PhysMem, MAX_NUMNODES, NR_CPUS};
use spin::relax::Yield;

pub use platform::HostPlatform;

/// The memory manager behind a heap.
pub type HeapKmm = Kmm<HostPlatform>;

/// `ARCH_KMALLOC_MINALIGN`: alignment every kmalloc object has.
const KMALLOC_MINALIGN: usize = kmm::slab_common::ARCH_KMALLOC_MINALIGN;

/// The smallest region a heap boots on: the first MiB, the kernel image
/// (16 MiB to about 46 MiB) and some room to allocate.
pub const MIN_REGION_BYTES: u64 = 64 << 20;

/// The default page size of a heap's machine (see the crate docs).
pub const DEFAULT_PAGE_SIZE: u64 = 64 << 10;

/// Why a heap could not boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeapError {
    /// The region could not be mapped (`errno` of `mmap`).
    Map {
        /// `errno`.
        errno: i32,
    },
    /// The heap's settings are out of range.
    Config {
        /// What is wrong.
        why: &'static str,
    },
    /// kmm refused to boot on the region.
    Kmm(KmmError),
}

impl fmt::Display for HeapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeapError::Map { errno } => write!(f, "cannot map the heap region (errno {errno})"),
            HeapError::Config { why } => write!(f, "bad heap settings: {why}"),
            HeapError::Kmm(e) => write!(f, "kmm did not boot: {e}"),
        }
    }
}

impl std::error::Error for HeapError {}

impl From<KmmError> for HeapError {
    fn from(e: KmmError) -> Self {
        HeapError::Kmm(e)
    }
}

/// Counters of the heap's rare events (no counter is touched on a kmalloc
/// fast path).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Allocations the system allocator served while the heap was enabled:
    /// larger than `KMALLOC_MAX_SIZE`, or (never expected) a misaligned object.
    pub to_system: u64,
    /// Bytes requested by those allocations.
    pub to_system_bytes: u64,
    /// Allocations that returned null (kmm out of memory, or no boot).
    pub failed: u64,
}

/// A booted heap.
struct Booted {
    kmm: HeapKmm,
    base: usize,
    len: usize,
    /// `KMALLOC_MAX_SIZE`.
    max_kmalloc: usize,
}

impl Booted {
    /// True when `ptr` lies inside the region.
    #[inline]
    fn contains(&self, ptr: *const u8) -> bool {
        (ptr as usize).wrapping_sub(self.base) < self.len
    }

    /// The host address of the kmalloc object at `virt` (`__pa` + region base).
    #[inline]
    fn host(&self, virt: u64) -> Option<*mut u8> {
        let phys = self.kmm.__pa(virt).ok()? as usize;
        (phys < self.len).then(|| (self.base + phys) as *mut u8)
    }

    /// The kernel virtual address of the host pointer `ptr` (`__va`).
    #[inline]
    fn virt(&self, ptr: *const u8) -> Option<u64> {
        let phys = (ptr as usize).wrapping_sub(self.base);
        if phys >= self.len {
            return None;
        }
        self.kmm.__va(phys as u64).ok()
    }
}

thread_local! {
    /// Set while this thread boots a heap: an allocation the boot itself made
    /// would otherwise wait for itself. (kmm boots without allocating; this
    /// is a guard, not a path.)
    static BOOTING: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// kmm's `kmalloc` as a Rust allocator over a region of host memory.
///
/// Build it with the `const` [`KmmHeap::new`] as a `static` — usually the
/// `#[global_allocator]` — and it boots on first use. See the crate docs for
/// how requests are served.
///
/// # Guarantees
/// - Memory it returns is aligned as the `Layout` asks, and stays valid until
///   it is freed (the region is never unmapped, even if a non-`static` heap
///   is dropped).
/// - No allocator entry point panics or allocates from the Rust heap.
/// - While disabled ([`Self::set_enabled`]) new allocations come from the
///   system allocator; frees and reallocations always go to whichever
///   allocator owns the address.
pub struct KmmHeap {
    region_bytes: u64,
    page_size: u64,
    nr_cpus: usize,
    boot_log: bool,
    enabled: AtomicBool,
    failure_reported: AtomicBool,
    to_system: AtomicU64,
    to_system_bytes: AtomicU64,
    failed: AtomicU64,
    state: spin::once::Once<Result<Booted, HeapError>, Yield>,
}

/// What the allocation path decided.
enum Served {
    /// A pointer (null on failure).
    Ptr(*mut u8),
    /// The system allocator must serve it.
    System,
}

impl KmmHeap {
    /// A heap over `region_bytes` of address space (at least
    /// [`MIN_REGION_BYTES`]), with [`kmm::NR_CPUS`] CPUs on one node and
    /// [`DEFAULT_PAGE_SIZE`] pages. Nothing is mapped until first use.
    pub const fn new(region_bytes: u64) -> KmmHeap {
        KmmHeap {
            region_bytes,
            page_size: DEFAULT_PAGE_SIZE,
            nr_cpus: NR_CPUS,
            boot_log: false,
            enabled: AtomicBool::new(true),
            failure_reported: AtomicBool::new(false),
            to_system: AtomicU64::new(0),
            to_system_bytes: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            state: spin::once::Once::new(),
        }
    }

    /// The same heap with `PAGE_SIZE` = `page_size` (4, 8, 16 or 64 KiB).
    /// `KMALLOC_MAX_SIZE` is `page_size << 10`.
    pub const fn with_page_size(mut self, page_size: u64) -> KmmHeap {
        self.page_size = page_size;
        self
    }

    /// The same heap with `nr_cpus` CPUs (1 to [`kmm::NR_CPUS`]); threads
    /// are spread over them round robin.
    pub const fn with_cpus(mut self, nr_cpus: usize) -> KmmHeap {
        self.nr_cpus = nr_cpus;
        self
    }

    /// The same heap, printing kmm's boot messages (the e820 map, zones,
    /// `Memory:` line, ...) to stderr when it boots.
    pub const fn with_boot_log(mut self, on: bool) -> KmmHeap {
        self.boot_log = on;
        self
    }

    /// Sends new allocations to kmm (`true`, the default) or to the system
    /// allocator (`false`). Safe at any time: frees follow the address.
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Relaxed);
    }

    /// Whether new allocations go to kmm.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    /// Boots the heap if it has not booted yet, and returns its memory
    /// manager.
    pub fn boot(&self) -> Result<&HeapKmm, HeapError> {
        match self.booted() {
            Some(b) => Ok(&b.kmm),
            None => Err(match self.state.get() {
                Some(Err(e)) => *e,
                _ => HeapError::Config {
                    why: "boot re-entered from its own thread",
                },
            }),
        }
    }

    /// The memory manager behind the heap (booting it on first use), for
    /// introspection: `/proc/slabinfo`, `/proc/meminfo`, cache shrinking.
    /// `None` if it cannot boot.
    pub fn kmm(&self) -> Option<&HeapKmm> {
        self.booted().map(|b| &b.kmm)
    }

    /// The region's host address range `(base, len)`, once booted.
    pub fn region(&self) -> Option<(usize, usize)> {
        self.ready().map(|b| (b.base, b.len))
    }

    /// True when `ptr` points into the heap's region (kmm owns it).
    pub fn owns(&self, ptr: *const u8) -> bool {
        self.ready().is_some_and(|b| b.contains(ptr))
    }

    /// `KMALLOC_MAX_SIZE`: the largest request kmm serves (once booted).
    pub fn max_kmalloc(&self) -> Option<usize> {
        self.ready().map(|b| b.max_kmalloc)
    }

    /// The heap's counters.
    pub fn stats(&self) -> HeapStats {
        HeapStats {
            to_system: self.to_system.load(Relaxed),
            to_system_bytes: self.to_system_bytes.load(Relaxed),
            failed: self.failed.load(Relaxed),
        }
    }

    /// Gives every cached free object and empty slab back to the page
    /// allocator and drains the per-CPU page lists (`kmem_cache_shrink` of
    /// every cache, then `drain_all_pages`). Returns the slab pages freed.
    pub fn shrink(&self) -> u64 {
        let Some(b) = self.ready() else { return 0 };
        let k = &b.kmm;
        let freed = k
            .kmem_caches()
            .iter()
            .map(|c| k.kmem_cache_shrink(c).unwrap_or(0))
            .sum();
        k.drain_all_pages();
        freed
    }

    // ------------------------------------------------------------- boot

    /// The booted heap, if it has booted (never boots).
    #[inline]
    fn ready(&self) -> Option<&Booted> {
        match self.state.get() {
            Some(Ok(b)) => Some(b),
            _ => None,
        }
    }

    /// The booted heap, booting it now if needed.
    #[inline]
    fn booted(&self) -> Option<&Booted> {
        match self.state.get() {
            Some(Ok(b)) => Some(b),
            Some(Err(_)) => None,
            None => self.boot_slow(),
        }
    }

    #[cold]
    #[inline(never)]
    fn boot_slow(&self) -> Option<&Booted> {
        if BOOTING.try_with(|b| b.replace(true)).unwrap_or(true) {
            return None;
        }
        let r = self.state.call_once(|| self.boot_now());
        let _ = BOOTING.try_with(|b| b.set(false));
        match r {
            Ok(b) => Some(b),
            Err(e) => {
                self.report_boot_failure(e);
                None
            }
        }
    }

    fn report_boot_failure(&self, e: &HeapError) {
        if self.failure_reported.swap(true, Relaxed) {
            return;
        }
        let p = HostPlatform::new(1, true);
        kmm::Platform::printk(&p, format_args!("kmm-heap: {e}; allocations fail"));
    }

    /// Maps the region and boots kmm on it.
    fn boot_now(&self) -> Result<Booted, HeapError> {
        let ps = self.page_size;
        if !kmm::mm_init::PAGE_SIZES.contains(&ps) {
            return Err(HeapError::Config {
                why: "page size must be 4K, 8K, 16K or 64K",
            });
        }
        if self.nr_cpus == 0 || self.nr_cpus > NR_CPUS {
            return Err(HeapError::Config {
                why: "a heap has 1 to NR_CPUS CPUs",
            });
        }
        let bytes = self.region_bytes / ps * ps;
        if bytes < MIN_REGION_BYTES {
            return Err(HeapError::Config {
                why: "the region must be at least 64 MiB",
            });
        }
        let len = usize::try_from(bytes).map_err(|_| HeapError::Config {
            why: "the region does not fit the address space",
        })?;
        let max_block = (ps as usize) << (kmm::MAX_ORDER - 1);
        let r = region::map(len, max_block).map_err(|errno| HeapError::Map { errno })?;
        // SAFETY: `r.base..r.base + len` is a fresh read-write anonymous
        // mapping that is never unmapped (see `region`), so it outlives the
        // memory manager; its base is aligned to `max_block`, a multiple of
        // 4096. No Rust reference covers it: kmm reaches its metadata and
        // free objects through `PhysMem`, and a live object's bytes are
        // reached only through the one pointer this heap hands to its owner.
        let mem = unsafe { PhysMem::new(r.base as *mut u8, bytes) }?;
        let e820 = [E820Entry {
            addr: 0,
            size: bytes,
            kind: E820Type::Ram,
        }];
        let nodes = [NodeRange {
            start: 0,
            end: bytes,
        }];
        let mut node_distance = [[20u8; MAX_NUMNODES]; MAX_NUMNODES];
        for (i, row) in node_distance.iter_mut().enumerate() {
            row[i] = 10;
        }
        let params = BootParams {
            arch: &kmm::arch::x86_64::X86_64,
            page_size: ps,
            e820: &e820,
            nodes: &nodes,
            node_distance,
            nr_cpus: self.nr_cpus,
            cpu_to_node: [0; NR_CPUS],
        };
        let platform = HostPlatform::new(self.nr_cpus, self.boot_log);
        let kmm = setup_arch(platform, mem, &params)?.mem_init()?;
        kmm.platform().set_booted();
        let max_kmalloc = kmm.kmalloc_max_size();
        Ok(Booted {
            kmm,
            base: r.base,
            len,
            max_kmalloc,
        })
    }

    // ------------------------------------------------------- allocation

    /// What kmalloc is asked for to satisfy `layout`: the size, or with an
    /// alignment above kmalloc's minimum the next power of two of
    /// `max(size, align)` (naturally aligned, see the crate docs).
    #[inline]
    fn request(layout: Layout) -> Option<usize> {
        let size = layout.size().max(1);
        if layout.align() <= KMALLOC_MINALIGN {
            Some(size)
        } else {
            size.max(layout.align()).checked_next_power_of_two()
        }
    }

    /// Serves a new allocation from kmm, or says the system allocator must.
    #[inline]
    fn kmalloc(&self, layout: Layout, zero: bool) -> Served {
        let Some(b) = self.booted() else {
            return match self.state.get() {
                Some(Err(_)) => self.fail(),
                // Re-entered during boot (not expected): the system allocator
                // is always a correct answer, since frees follow the address.
                _ => Served::System,
            };
        };
        let Some(req) = Self::request(layout) else {
            return self.to_system(layout);
        };
        if req > b.max_kmalloc {
            return self.to_system(layout);
        }
        let gfp = GfpFlags::GFP_KERNEL;
        let r = if zero {
            b.kmm.kzalloc(req, gfp)
        } else {
            b.kmm.kmalloc(req, gfp)
        };
        let Ok(virt) = r else { return self.fail() };
        match b.host(virt) {
            Some(p) if (p as usize) & (layout.align() - 1) == 0 => Served::Ptr(p),
            _ => {
                let _ = b.kmm.kfree(virt);
                self.to_system(layout)
            }
        }
    }

    #[cold]
    fn to_system(&self, layout: Layout) -> Served {
        self.to_system.fetch_add(1, Relaxed);
        self.to_system_bytes
            .fetch_add(layout.size() as u64, Relaxed);
        Served::System
    }

    #[cold]
    fn fail(&self) -> Served {
        self.failed.fetch_add(1, Relaxed);
        Served::Ptr(core::ptr::null_mut())
    }

    /// `alloc` / `alloc_zeroed`.
    #[inline]
    fn allocate_raw(&self, layout: Layout, zero: bool) -> *mut u8 {
        if self.enabled.load(Relaxed) {
            if let Served::Ptr(p) = self.kmalloc(layout, zero) {
                return p;
            }
        }
        if zero {
            // SAFETY: the caller's `layout` has a non-zero size (the
            // `GlobalAlloc` contract; `Allocator` paths never pass size 0).
            unsafe { System.alloc_zeroed(layout) }
        } else {
            // SAFETY: as above.
            unsafe { System.alloc(layout) }
        }
    }

    /// `dealloc`: to kmm for a pointer inside the region, else to the system
    /// allocator.
    #[inline]
    fn free_raw(&self, ptr: *mut u8, layout: Layout) {
        if let Some(b) = self.ready() {
            if b.contains(ptr) {
                if let Some(virt) = b.virt(ptr) {
                    // A refused free is reported by kmm ("kfree: object
                    // pointer ... was not returned by kmalloc") and leaks
                    // nothing that was ours: ignore it.
                    let _ = b.kmm.kfree(virt);
                }
                return;
            }
        }
        // SAFETY: `ptr` is outside the region, so the system allocator
        // returned it, with this `layout` (the caller's contract).
        unsafe { System.dealloc(ptr, layout) }
    }

    /// `realloc`: `krealloc` inside the region (in place while the object's
    /// size class holds the new size), the system allocator's `realloc`
    /// outside it; a kmm object growing past `KMALLOC_MAX_SIZE` moves to the
    /// system allocator.
    fn realloc_raw(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(b) = self.ready().filter(|b| b.contains(ptr)) else {
            // SAFETY: `ptr` is outside the region, so the system allocator
            // returned it with `layout`; `new_size` is the caller's, valid
            // per the `GlobalAlloc::realloc` contract.
            return unsafe { System.realloc(ptr, layout, new_size) };
        };
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return core::ptr::null_mut();
        };
        let Some(virt) = b.virt(ptr) else {
            return core::ptr::null_mut();
        };
        if let Some(req) = Self::request(new_layout).filter(|&r| r <= b.max_kmalloc) {
            let Ok(new) = b.kmm.krealloc(virt, req, GfpFlags::GFP_KERNEL) else {
                // krealloc leaves the old object as it was.
                let _ = self.fail();
                return core::ptr::null_mut();
            };
            match b.host(new) {
                Some(p) if (p as usize) & (layout.align() - 1) == 0 => return p,
                // Misaligned (slab debugging changed the layout): the data
                // moved to `new`; move it once more, to the system allocator.
                Some(p) => return self.move_to_system(b, p, new, layout.size(), new_layout),
                None => return core::ptr::null_mut(),
            }
        }
        self.move_to_system(b, ptr, virt, layout.size(), new_layout)
    }

    /// Moves a kmm object (host `ptr`, kernel `virt`, `old_size` bytes
    /// valid) to a new system-allocator block of `new_layout`. On failure the
    /// kmm object is kept and null returned.
    #[cold]
    fn move_to_system(
        &self,
        b: &Booted,
        ptr: *mut u8,
        virt: u64,
        old_size: usize,
        new_layout: Layout,
    ) -> *mut u8 {
        let _ = self.to_system(new_layout);
        // SAFETY: `new_layout` has a non-zero size (it is at least the
        // caller's layout grown past KMALLOC_MAX_SIZE, or its realloc target,
        // which `GlobalAlloc::realloc` requires to be non-zero).
        let new = unsafe { System.alloc(new_layout) };
        if new.is_null() {
            let _ = self.fail();
            return new;
        }
        // SAFETY: `ptr` is a live kmm object of at least `old_size` bytes,
        // `new` a fresh block of `new_layout.size()` bytes; distinct
        // allocations cannot overlap.
        unsafe {
            core::ptr::copy_nonoverlapping(ptr, new, old_size.min(new_layout.size()));
        }
        let _ = b.kmm.kfree(virt);
        new
    }
}

// SAFETY: every method returns null or a block of at least `layout.size()`
// bytes aligned to `layout.align()` that nothing else uses until it is freed:
// kmm objects are exclusively owned until `kfree` (checked alignment), and the
// rest comes from `System` under the same contract. Frees and reallocations
// go back to the allocator owning the address.
unsafe impl GlobalAlloc for KmmHeap {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.allocate_raw(layout, false)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.allocate_raw(layout, true)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.free_raw(ptr, layout)
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.realloc_raw(ptr, layout, new_size)
    }
}

/// A well-aligned, non-null pointer for a zero-sized block (never freed).
#[inline]
fn dangling(layout: Layout) -> NonNull<[u8]> {
    let p = core::ptr::without_provenance_mut::<u8>(layout.align());
    // `layout.align()` is a non-zero power of two, so `p` is never null.
    let p = NonNull::new(p).unwrap_or(NonNull::dangling());
    NonNull::slice_from_raw_parts(p, 0)
}

/// The block of `size` bytes at `p`, or `AllocError` for null.
#[inline]
fn block(p: *mut u8, size: usize) -> Result<NonNull<[u8]>, AllocError> {
    NonNull::new(p)
        .map(|p| NonNull::slice_from_raw_parts(p, size))
        .ok_or(AllocError)
}

// SAFETY: blocks are valid and exclusively owned until deallocated (see the
// `GlobalAlloc` impl); zero-sized blocks are dangling and never freed; the
// heap is shared by reference, so copies of `&KmmHeap` (the blanket impl)
// free into the same heap.
unsafe impl Allocator for KmmHeap {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            return Ok(dangling(layout));
        }
        block(self.allocate_raw(layout, false), layout.size())
    }

    fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            return Ok(dangling(layout));
        }
        block(self.allocate_raw(layout, true), layout.size())
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() != 0 {
            self.free_raw(ptr.as_ptr(), layout);
        }
    }

    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: the caller's contract for `grow` is `realloc_in`'s.
        unsafe { self.realloc_in(ptr, old, new, false) }
    }

    unsafe fn grow_zeroed(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: as for `grow`.
        unsafe { self.realloc_in(ptr, old, new, true) }
    }

    unsafe fn shrink(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: as for `grow`.
        unsafe { self.realloc_in(ptr, old, new, false) }
    }
}

impl KmmHeap {
    /// `Allocator::grow`/`shrink`: `realloc` when the alignment stays and
    /// neither side is zero-sized, else allocate, copy and free.
    ///
    /// # Safety
    /// `ptr` is a block of this heap allocated with `old`.
    unsafe fn realloc_in(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
        zero_tail: bool,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if old.align() == new.align() && old.size() != 0 && new.size() != 0 {
            let p = self.realloc_raw(ptr.as_ptr(), old, new.size());
            if zero_tail && !p.is_null() && new.size() > old.size() {
                // SAFETY: `p` is a block of `new.size()` bytes; the tail past
                // `old.size()` is ours to initialise.
                unsafe { p.add(old.size()).write_bytes(0, new.size() - old.size()) };
            }
            return block(p, new.size());
        }
        let fresh = if zero_tail {
            self.allocate_zeroed(new)?
        } else {
            self.allocate(new)?
        };
        let n = old.size().min(new.size());
        // SAFETY: `ptr` holds `old.size()` valid bytes, `fresh` is a new,
        // distinct block of `new.size()` bytes.
        unsafe { core::ptr::copy_nonoverlapping(ptr.as_ptr(), fresh.cast::<u8>().as_ptr(), n) };
        // SAFETY: `ptr` was allocated by this heap with `old` (caller's
        // contract) and is not used again.
        unsafe { self.deallocate(ptr, old) };
        Ok(fresh)
    }
}

impl fmt::Debug for KmmHeap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmmHeap")
            .field("region_bytes", &self.region_bytes)
            .field("page_size", &self.page_size)
            .field("nr_cpus", &self.nr_cpus)
            .field("enabled", &self.is_enabled())
            .field("booted", &self.ready().is_some())
            .field("stats", &self.stats())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_for_alignment() {
        let l = |s, a| Layout::from_size_align(s, a).unwrap();
        assert_eq!(KmmHeap::request(l(0, 1)), Some(1));
        assert_eq!(KmmHeap::request(l(100, 8)), Some(100));
        assert_eq!(KmmHeap::request(l(100, 16)), Some(128));
        assert_eq!(KmmHeap::request(l(8, 64)), Some(64));
        assert_eq!(KmmHeap::request(l(5000, 4096)), Some(8192));
        assert_eq!(KmmHeap::request(l((1 << 40) + 1, 16)), Some(1 << 41));
    }

    #[test]
    fn too_small_a_region_is_refused() {
        static SMALL: KmmHeap = KmmHeap::new(16 << 20);
        assert!(matches!(SMALL.boot(), Err(HeapError::Config { .. })));
        assert!(SMALL.kmm().is_none());
    }
}
