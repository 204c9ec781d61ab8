//! # kmm — the Linux kernel memory manager, in Rust
//!
//! This crate is the memory manager itself: boot-time memory (memblock and the
//! bootmem interface), page descriptors, nodes and zones, GFP flags and the
//! zoned buddy page allocator with per-CPU page lists, slab caches and
//! kmalloc. It is `#![no_std]` and needs no heap: like Linux it keeps its
//! metadata (`mem_map`, the per-CPU lists, slab free lists and per-CPU object
//! arrays) inside the RAM it manages. It reaches the machine only through the
//! [`Platform`] trait.
//!
//! ## Boot
//!
//! ```text
//! setup_arch(platform, ram, &params)   // e820 → memblock, kernel image reserved
//!     .alloc_bootmem(..)               // optional early allocations
//!     .mem_init()                      // mem_map, zones, buddy lists, watermarks
//! ```
//!
//! ## Linux name → kmm item
//!
//! | Linux | kmm |
//! |---|---|
//! | `struct page` | [`Page`] (40 bytes) |
//! | `mem_map`, `pfn_to_page`, `page_to_pfn`, `pfn_valid` | [`Kmm::mem_map`], [`Kmm::pfn_to_page`], [`Kmm::page_to_pfn`], [`Kmm::pfn_valid`] |
//! | `page_address` | [`Kmm::page_address`] |
//! | `virt_to_page`, `__pa`, `__va`, `virt_to_phys`, `phys_to_virt`, `page_to_phys` | [`Kmm::virt_to_page`], [`Kmm::__pa`], [`Kmm::__va`], [`Kmm::virt_to_phys`], [`Kmm::phys_to_virt`], [`Kmm::page_to_phys`] |
//! | `struct zone`, `pg_data_t`, `enum zone_type` | [`Zone`], [`PgData`], [`ZoneType`] |
//! | `gfp_t`, `__GFP_*`, `GFP_*`, `gfp_zone` | [`GfpFlags`], [`GfpFlags::validate`] |
//! | `alloc_pages_node`, `alloc_pages`, `alloc_page` | [`Kmm::alloc_pages_node`], [`Kmm::alloc_pages`], [`Kmm::alloc_page`] |
//! | `__get_free_pages`, `__get_free_page`, `get_zeroed_page` | [`Kmm::__get_free_pages`], [`Kmm::__get_free_page`], [`Kmm::get_zeroed_page`] |
//! | `__free_pages`, `__free_page`, `free_pages`, `free_page` | [`Kmm::__free_pages`], [`Kmm::__free_page`], [`Kmm::free_pages`], [`Kmm::free_page`] |
//! | `free_hot_page`, `free_cold_page` | [`Kmm::free_hot_page`], [`Kmm::free_cold_page`] |
//! | `get_page`, `put_page` | [`Kmm::get_page`], [`Kmm::put_page`] |
//! | `alloc_pages_exact`, `free_pages_exact`, `split_page` | [`Kmm::alloc_pages_exact`], [`Kmm::free_pages_exact`], [`Kmm::split_page`] |
//! | `get_order` | [`Kmm::get_order`] |
//! | `drain_all_pages`, `show_mem`, `warn_alloc` | [`Kmm::drain_all_pages`], [`Kmm::show_mem`], [`Kmm::warn_alloc`] |
//! | `alloc_bootmem`, `alloc_bootmem_low`, `alloc_bootmem_pages`, `alloc_bootmem_low_pages`, `free_bootmem` | [`EarlyBoot::alloc_bootmem`], [`EarlyBoot::alloc_bootmem_low`], [`EarlyBoot::alloc_bootmem_pages`], [`EarlyBoot::alloc_bootmem_low_pages`], [`EarlyBoot::free_bootmem`] |
//! | `memblock_free_late` | [`Kmm::free_bootmem_late`] |
//! | `struct memblock`, `memblock_add`, `memblock_reserve`, `memblock_alloc_range_nid` | [`Memblock`], [`Memblock::add`], [`Memblock::reserve`], [`Memblock::alloc_range`] |
//! | `setup_arch`, `mm_core_init` | [`setup_arch`], [`EarlyBoot::mem_init`] |
//! | `min_free_kbytes`, `_watermark[]`, `lowmem_reserve[]` | [`Kmm::min_free_kbytes`], [`Zone::watermark`], [`Zone::lowmem_reserve`] |
//! | `struct per_cpu_pages` | [`PerCpuPages`] |
//! | `node_zonelist`, `node_distance`, `cpu_to_node`, `numa_node_id` | [`Kmm::zonelist`], [`Kmm::node_distance`], [`Kmm::cpu_to_node`], [`Kmm::numa_node_id`] |
//! | `preempt_count`, `in_atomic`, `in_interrupt` | [`platform::preempt`] |
//! | `/proc/buddyinfo`, `/proc/zoneinfo`, `/proc/vmstat` | [`vmstat::buddyinfo`], [`vmstat::zoneinfo`], [`vmstat::vmstat`] |
//! | `/proc/meminfo` | [`proc_meminfo::meminfo`] |
//! | `mempool_t`, `mempool_create`, `mempool_alloc`, `mempool_free`, `mempool_resize`, `mempool_destroy` | [`mempool::Mempool`], [`Kmm::mempool_create`], [`Kmm::mempool_alloc`], [`Kmm::mempool_free`], [`Kmm::mempool_resize`], [`Kmm::mempool_destroy`] |
//! | `mempool_alloc_pages`, `mempool_free_pages`, `mempool_alloc_slab`, `mempool_free_slab`, `mempool_kmalloc`, `mempool_kfree` | [`mempool::mempool_alloc_pages`], [`mempool::mempool_free_pages`], [`mempool::mempool_alloc_slab`], [`mempool::mempool_free_slab`], [`mempool::mempool_kmalloc`], [`mempool::mempool_kfree`] |
//! | `mempool_create_slab_pool`, `mempool_create_kmalloc_pool`, `mempool_create_page_pool` | [`Kmm::mempool_create_slab_pool`], [`Kmm::mempool_create_kmalloc_pool`], [`Kmm::mempool_create_page_pool`] |
//! | `struct kmem_cache`, `kmem_cache_t` | [`KmemCache`] (a handle) |
//! | `kmem_cache_create`, `kmem_cache_destroy`, `kmem_cache_shrink` | [`Kmm::kmem_cache_create`], [`Kmm::kmem_cache_destroy`], [`Kmm::kmem_cache_shrink`] |
//! | `kmem_cache_alloc`, `kmem_cache_zalloc`, `kmem_cache_free`, `kmem_cache_size` | [`Kmm::kmem_cache_alloc`], [`Kmm::kmem_cache_zalloc`], [`Kmm::kmem_cache_free`], [`Kmm::kmem_cache_size`] |
//! | `SLAB_HWCACHE_ALIGN`, `SLAB_CACHE_DMA`, `SLAB_NO_REAP`, `SLAB_RECLAIM_ACCOUNT`, `SLAB_RED_ZONE`, `SLAB_POISON`, `SLAB_STORE_USER`, `SLAB_DEBUG_FLAGS` | [`SlabFlags`], [`slab::SLAB_DEBUG_FLAGS`] |
//! | a constructor `void (*ctor)(void *)` | [`slab::Ctor`], [`ObjectInit`] |
//! | `struct array_cache`, `enable_cpucache`, `cache_grow`, `cache_reap` / `shrink_slab` | per-CPU arrays in [`slab`], [`slab::cpucache_limit`], [`Kmm::kmem_cache_alloc`] (refill and grow), [`Kmm::shrink_slab`] |
//! | `slub_debug=` | [`Kmm::set_slub_debug`], [`Kmm::kmem_cache_set_debug`] |
//! | `kmalloc`, `kzalloc`, `kcalloc`, `krealloc`, `ksize`, `kfree` | [`Kmm::kmalloc`], [`Kmm::kzalloc`], [`Kmm::kcalloc`], [`Kmm::krealloc`], [`Kmm::ksize`], [`Kmm::kfree`] |
//! | `kmalloc_index`, `kmalloc_slab`, `kmalloc_size_roundup`, `kmalloc_caches[]` | [`slab_common::kmalloc_index`], [`Kmm::kmalloc_slab`], [`Kmm::kmalloc_size_roundup`], [`slab_common::KMALLOC_SIZES`] |
//! | `ZERO_SIZE_PTR`, `KMALLOC_MIN_SIZE`, `KMALLOC_MAX_CACHE_SIZE`, `KMALLOC_MAX_SIZE` | [`ZERO_SIZE_PTR`], [`slab_common::KMALLOC_MIN_SIZE`], [`Kmm::kmalloc_max_cache_size`], [`Kmm::kmalloc_max_size`] |
//! | `kmem_cache_init` | called by [`EarlyBoot::mem_init`] |
//! | `/proc/slabinfo` | [`slab_common::slabinfo`] (and [`slab_common::slabinfo_detail`]) |
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

pub mod arch;
pub mod error;
pub mod gfp;
pub(crate) mod list;
pub mod memblock;
pub mod mempool;
pub mod mm;
pub mod mm_init;
pub mod mm_types;
pub mod mmzone;
pub mod page_alloc;
pub mod platform;
pub mod proc_meminfo;
pub mod ram;
pub mod slab;
pub mod slab_common;
pub mod spinlock;
pub mod vmstat;

pub use arch::Arch;
pub use error::KmmError;
pub use gfp::GfpFlags;
pub use memblock::Memblock;
pub use mm::Kmm;
pub use mm_init::{setup_arch, BootParams, EarlyBoot, NodeRange};
pub use mm_types::{Page, PageFlags};
pub use mmzone::{PerCpuPages, PgData, Watermark, Zone, ZoneType};
pub use platform::Platform;
pub use ram::PhysMem;
pub use slab::{KmemCache, ObjectInit, SlabFlags};
pub use slab_common::ZERO_SIZE_PTR;

/// `MAX_ORDER`: the buddy lists hold blocks of order 0 to `MAX_ORDER - 1` (10).
pub const MAX_ORDER: usize = 11;
/// `MAX_NUMNODES`.
pub const MAX_NUMNODES: usize = 8;
/// `NR_CPUS`.
pub const NR_CPUS: usize = 64;
