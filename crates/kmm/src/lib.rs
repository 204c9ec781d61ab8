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
//! | `pgd_t`/`p4d_t`/`pud_t`/`pmd_t`/`pte_t` levels, `CONFIG_PGTABLE_LEVELS`, `PTRS_PER_*`, `*_SHIFT` | [`PagingFormat`] (levels numbered from the leaf: 0 = pte, 1 = pmd, 2 = pud, 3 = p4d; the top is the pgd; [`PagingFormat::level_name`]) |
//! | `pgtable-2level.h`, `pgtable-3level.h` (PAE), `pgtable_64.h` (4- and 5-level) | [`arch::pgtable_x86::X86_2LEVEL`], [`arch::pgtable_x86::X86_PAE`], [`arch::pgtable_x86_64::X86_64_4LEVEL`], [`arch::pgtable_x86_64::X86_64_5LEVEL`], [`Arch::paging_formats`] |
//! | `_PAGE_PRESENT`, `_PAGE_RW`, `_PAGE_USER`, `_PAGE_PWT`, `_PAGE_PCD`, `_PAGE_ACCESSED`, `_PAGE_DIRTY`, `_PAGE_GLOBAL`, `_PAGE_NX`, `_PAGE_PSE`, `pgprot_t` | [`PteFlags`], [`arch::pgtable_x86::PAGE_PSE`] |
//! | `pte_present`, `pte_write`, `pte_young`, `pte_dirty`, `pte_exec`, `pte_global`, `pte_mkyoung`, `pte_mkold`, `pte_mkdirty`, `pte_mkclean`, `pte_mkwrite`, `pte_wrprotect` | [`PteFlags::pte_present`], [`PteFlags::pte_write`], [`PteFlags::pte_young`], [`PteFlags::pte_dirty`], [`PteFlags::pte_exec`], [`PteFlags::pte_global`], [`PteFlags::pte_mkyoung`], [`PteFlags::pte_mkold`], [`PteFlags::pte_mkdirty`], [`PteFlags::pte_mkclean`], [`PteFlags::pte_mkwrite`], [`PteFlags::pte_wrprotect`] |
//! | `pte_none`, `pmd_leaf`/`pud_leaf`, `pmd_page_vaddr`, `pte_pfn`, `pfn_pte`/`pfn_pmd` | [`pgtable::Entry`], [`PagingFormat::decode`], [`PagingFormat::encode_leaf`] |
//! | `mm->pgd`, `pgd_alloc`, `pgd_free` | [`PageTable`], [`Kmm::pgd_alloc`], [`Kmm::pgd_free`] / [`PageTable::destroy`] |
//! | `set_pte_at`/`set_pmd_at` with `pte_alloc`/`pmd_alloc`/`pud_alloc`/`p4d_alloc`, `pmd_populate` | [`PageTable::map`] |
//! | `pte_clear`/`pmd_clear` + `free_pgtables` | [`PageTable::unmap`] |
//! | `change_protection`, `pte_modify` | [`PageTable::protect`] |
//! | `follow_pte`; the hardware walk setting accessed/dirty; `ptep_test_and_clear_young` | [`PageTable::walk`] ([`Translation`]); [`PageTable::walk_and_mark`]; [`PageTable::test_and_clear_young`] |
//! | `walk_page_range` | [`PageTable::for_each_mapping`] ([`Mapping`]) |
//! | `NR_PAGETABLE` (`PageTables:` in `/proc/meminfo`) | [`Kmm::nr_page_table_pages`] |
//! | `/proc/slabinfo` | [`slab_common::slabinfo`] (and [`slab_common::slabinfo_detail`]) |
//! | `void __percpu *`, `alloc_percpu`, `__alloc_percpu`, `__alloc_percpu_gfp`, `free_percpu`, `per_cpu_ptr`, `this_cpu_ptr` | [`percpu::PercpuPtr`], [`Kmm::alloc_percpu`], [`Kmm::__alloc_percpu`], [`Kmm::__alloc_percpu_gfp`], [`Kmm::free_percpu`], [`Kmm::per_cpu_ptr`], [`Kmm::this_cpu_ptr`] ([`Kmm::per_cpu_read`], [`Kmm::per_cpu_write`], [`Kmm::per_cpu_u64`] to reach a copy) |
//! | `pcpu_setup_first_chunk`, `pcpu_create_chunk`, `pcpu_unit_size`, `pcpu_nr_units`, `pcpu_nr_pages`, `PCPU_MIN_ALLOC_SIZE`, `PCPU_MIN_UNIT_SIZE` | called by [`EarlyBoot::mem_init`], [`Kmm::__alloc_percpu`], [`Kmm::pcpu_unit_size`], [`Kmm::pcpu_nr_units`], [`Kmm::pcpu_nr_pages`], [`percpu::PCPU_MIN_ALLOC_SIZE`], [`percpu::PCPU_MIN_UNIT_SIZE`] |
//! | `struct percpu_counter`, `percpu_counter_init`, `percpu_counter_destroy`, `percpu_counter_add`, `percpu_counter_add_batch`, `percpu_counter_read`, `percpu_counter_sum`, `percpu_counter_set`, `percpu_counter_batch` | [`percpu_counter::PercpuCounter`], [`Kmm::percpu_counter_init`], [`Kmm::percpu_counter_destroy`], [`Kmm::percpu_counter_add`], [`Kmm::percpu_counter_add_batch`], [`Kmm::percpu_counter_read`], [`Kmm::percpu_counter_sum`], [`Kmm::percpu_counter_set`], [`Kmm::percpu_counter_batch`] |
//! | `THREAD_SIZE`, `THREAD_SIZE_ORDER`, `CONFIG_4KSTACKS`, `CONFIG_VMAP_STACK` (emulated guard page) | [`Kmm::thread_size`], [`Kmm::thread_size_order`], [`Kmm::set_thread_size_pages`], [`Kmm::set_vmap_stack`] |
//! | `task->stack`, `alloc_thread_stack_node`, `free_thread_stack`, `task_thread_info`, `struct thread_info` | [`KernelStack`], [`Kmm::alloc_thread_stack_node`], [`Kmm::free_thread_stack`], [`Kmm::task_thread_info`], [`task_stack::ThreadInfo`] |
//! | `end_of_stack`, `STACK_END_MAGIC`, `task_stack_end_corrupted`, `schedule_debug` (stack check) | [`KernelStack::end_of_stack`], [`task_stack::STACK_END_MAGIC`], [`Kmm::task_stack_end_corrupted`], [`Kmm::check_stack`] |
//! | `stack_not_used`, `check_stack_usage` (`CONFIG_DEBUG_STACK_USAGE`) | [`Kmm::stack_not_used`], [`Kmm::stack_high_water`], [`Kmm::free_thread_stack`] |
//! | `swapper_pg_dir` / `init_mm.pgd`, `init_mem_mapping`, `kernel_physical_mapping_init`, `direct_pages_count` | [`Kmm::swapper_pg_dir`] (built at boot by [`EarlyBoot::mem_init`]), [`Kmm::direct_map_pages`] |
//! | `PAGE_OFFSET`, `high_memory`, `VMALLOC_START`, `VMALLOC_END`, `PKMAP_BASE`, `LAST_PKMAP`, `FIXADDR_START`, `FIXADDR_TOP`, `__fix_to_virt`, `PAGE_KERNEL` | [`arch::init::KernelLayout`] ([`Kmm::kernel_layout`]), [`arch::init::PAGE_KERNEL`] |
//! | `vmalloc`, `vzalloc`, `vmalloc_32`, `vmalloc_node`, `__vmalloc`, `__vmalloc_node_range`, `vfree` | [`Kmm::vmalloc`], [`Kmm::vzalloc`], [`Kmm::vmalloc_32`], [`Kmm::vmalloc_node`], [`Kmm::__vmalloc`], used by [`Kmm::alloc_thread_stack_node`] for vmapped stacks, [`Kmm::vfree`] |
//! | `vmap`, `vunmap`, `vmalloc_to_page`, `vmalloc_to_pfn`, `is_vmalloc_addr`, `vread` | [`Kmm::vmap`], [`Kmm::vunmap`], [`Kmm::vmalloc_to_page`], [`Kmm::vmalloc_to_pfn`], [`Kmm::is_vmalloc_addr`], [`Kmm::vread`] ([`Kmm::vwrite`]) |
//! | `struct vm_struct`, `VM_IOREMAP`/`VM_ALLOC`/`VM_MAP`/..., `get_vm_area`, `free_vm_area`, `find_vm_area`, `vm_unmap_aliases` | [`VmStruct`], [`VmFlags`], [`Kmm::get_vm_area`], [`Kmm::free_vm_area`], [`Kmm::find_vm_area`], [`Kmm::vm_unmap_aliases`] |
//! | `ioremap`, `ioremap_uc`, `ioremap_wc`, `ioremap_cache`, `iounmap` | [`Kmm::ioremap`], [`Kmm::ioremap_uc`], [`Kmm::ioremap_wc`], [`Kmm::ioremap_cache`], [`Kmm::iounmap`] (`readb`..`writel`: `kmm_sim::mmu`) |
//! | `/proc/vmallocinfo`, `VmallocTotal`, `VmallocUsed`, `vmalloc_nr_pages` | [`vmalloc::vmallocinfo`], [`Kmm::vmalloc_total`], [`Kmm::vmalloc_nr_pages`] |
//! | `kmap`, `kunmap`, `kmap_atomic`, `kunmap_atomic`, `pkmap_count`, `flush_all_zero_pkmaps`, `pagefault_disabled` | [`Kmm::kmap`], [`Kmm::kunmap`], [`Kmm::kmap_atomic`], [`Kmm::kunmap_atomic`], [`Kmm::pkmap_stats`], [`Kmm::pagefault_disabled`] |
//! | a call chain on the stack (frames, `current_stack_pointer`) | [`Kmm::push_frame`], [`Kmm::pop_frame`], [`KernelStack::sp`] |
//! | `NR_KERNEL_STACK_KB` (`KernelStack:` in `/proc/meminfo`, `nr_kernel_stack` in `/proc/vmstat`) | [`Kmm::nr_kernel_stack_kb`] |
//! | `IRQ_STACK_SIZE`, `hardirq_stack_ptr`, `irq_init_percpu_irqstack` | [`Kmm::irq_stack_size`], [`IrqStack::top`], [`Kmm::irq_stack`], [`Kmm::init_irq_stacks`] |
//! | `struct rb_node` (embedded in an object in RAM), `struct rb_root`, `RB_ROOT`, `RB_EMPTY_ROOT`, `struct rb_root_cached`, `rb_entry`, `rb_entry_safe` | 24 bytes at [`rbtree::RB_NODE_SIZE`], [`rbtree::RbRoot`], [`rbtree::RbRoot::EMPTY`], [`rbtree::RbRoot::is_empty`], [`rbtree::RbRootCached`], [`rbtree::rb_entry`], [`rbtree::rb_entry_safe`] |
//! | `rb_parent`, `rb_color`, `rb_is_red`, `rb_is_black`, `RB_CLEAR_NODE`, `RB_EMPTY_NODE`, `rb_left`/`rb_right` fields, `struct rb_node **rb_link` | [`rbtree::rb_parent`], [`rbtree::rb_color`], [`rbtree::rb_is_red`], [`rbtree::rb_is_black`], [`rbtree::rb_clear_node`], [`rbtree::rb_empty_node`], [`rbtree::rb_left`], [`rbtree::rb_right`], [`rbtree::RbLink`] |
//! | `rb_link_node`, `rb_insert_color`, `rb_erase`, `rb_replace_node` | [`rbtree::rb_link_node`], [`rbtree::rb_insert_color`], [`rbtree::rb_erase`], [`rbtree::rb_replace_node`] |
//! | `rb_first`, `rb_last`, `rb_next`, `rb_prev`, `rb_first_postorder`, `rb_next_postorder` | [`rbtree::rb_first`], [`rbtree::rb_last`], [`rbtree::rb_next`], [`rbtree::rb_prev`], [`rbtree::rb_first_postorder`], [`rbtree::rb_next_postorder`] |
//! | `rb_first_cached`, `rb_insert_color_cached`, `rb_erase_cached`, `rb_replace_node_cached`, `rb_add_cached` | [`rbtree::rb_first_cached`], [`rbtree::rb_insert_color_cached`], [`rbtree::rb_erase_cached`], [`rbtree::rb_replace_node_cached`], [`rbtree::rb_add_cached`] |
//! | `rb_add`, `rb_find_add`, `rb_find`, `rb_find_first` (and lower/upper-bound walks such as `find_vma`'s) | [`rbtree::rb_add`], [`rbtree::rb_find_add`], [`rbtree::rb_find`], [`rbtree::rb_find_first`], [`rbtree::rb_first_ge`], [`rbtree::rb_first_gt`], [`rbtree::rb_last_le`], [`rbtree::rb_last_lt`] |
//! | `struct rb_augment_callbacks`, `RB_DECLARE_CALLBACKS`, `rb_insert_augmented`, `rb_erase_augmented` | [`rbtree::RbAugment`], [`rbtree::RbCallbacks`] + [`rbtree::RbAugmentCompute`], [`rbtree::rb_insert_augmented`] / [`rbtree::rb_add_augmented`], [`rbtree::rb_erase_augmented`] |
//! | `lib/rbtree_test.c`'s `check()`/`check_augmented()`, `browse_rb()` | [`rbtree::rb_check`], [`rbtree::rb_check_augmented`] |
//! | `struct mm_struct` (the VMA part), `mm_alloc`, `exit_mmap`, `mmdrop`/`free_mm`, `mmap_write_lock` | [`MmStruct`], [`Kmm::mm_alloc`], [`Kmm::mm_free_vmas`], [`Kmm::mm_free`], [`Kmm::mmap_write_lock`] |
//! | `struct vm_area_struct`, `vm_area_alloc`, `vm_area_free`, `insert_vm_struct`, `mm->mmap`/`vm_next`/`vm_prev` | [`VmAreaStruct`], [`Kmm::vm_area_alloc`], [`Kmm::vm_area_free`], [`Kmm::insert_vm_struct`], [`Kmm::vma_first`], [`Kmm::vma_next`], [`Kmm::vma_prev`], [`Kmm::for_each_vma`] ([`mmap::VmaInfo`]) |
//! | `find_vma`, `vma_lookup`, `find_vma_prev`, `find_vma_intersection` | [`Kmm::find_vma`], [`Kmm::vma_lookup`], [`Kmm::find_vma_prev`], [`Kmm::find_vma_intersection`] |
//! | `vma_merge`, `split_vma`, `validate_mm` | [`Kmm::vma_merge`], [`Kmm::split_vma`], [`Kmm::validate_mm`] |
//! | `vm_get_page_prot`, `protection_map[]`, `vm_stat_account`, `total_vm`/`locked_vm`/`data_vm`/`exec_vm`/`stack_vm` | [`mmap::vm_get_page_prot`], [`Kmm::vm_stat_account`], [`Kmm::mm_vm_stat`] ([`mmap::MmVmStat`]) |
//! | `get_unmapped_area`, `arch_get_unmapped_area_topdown`, `stack_guard_gap`, `vm.mmap_min_addr`, `vm.max_map_count`, `RLIMIT_STACK` | [`Kmm::get_unmapped_area`], [`Kmm::stack_guard_gap`], [`Kmm::mmap_min_addr`], [`Kmm::sysctl_max_map_count`], [`Kmm::stack_rlimit`] |
//! | `mmap`/`do_mmap`, `munmap`/`do_munmap`, `mprotect`, `brk`, `mremap`, `madvise`, `mlock`, `munlock` | [`Kmm::do_mmap`] ([`mmap::MmapFile`]), [`Kmm::do_munmap`], [`Kmm::do_mprotect`], [`Kmm::do_brk`], [`Kmm::do_mremap`], [`Kmm::do_madvise`], [`Kmm::do_mlock`], [`Kmm::do_munlock`] |
//! | `PROT_*`, `MAP_*`, `MREMAP_*`, `MADV_*`, `VM_SEQ_READ`, `VM_RAND_READ`, `VM_SPECIAL` | constants in [`mmap`] |
//! | `expand_stack` (`expand_downwards`) | [`Kmm::expand_stack`] |
//! | `zap_page_range`, `change_protection`, `move_page_tables`, `populate_vma_page_range`, `get_file`/`fput` as the area code calls them | [`mmap::MmOps`] (contract there; [`mmap::NoMmOps`] does nothing) |
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

pub mod arch;
pub mod errno;
pub mod error;
pub mod filemap;
pub mod fork;
pub mod gfp;
pub mod highmem;
pub(crate) mod list;
pub(crate) mod local_lock;
pub mod memblock;
pub mod memory;
pub mod mempool;
pub mod mm;
pub mod mm_init;
pub mod mm_types;
pub mod mmap;
pub mod mmzone;
pub mod page_alloc;
pub mod percpu;
pub mod percpu_counter;
pub mod pgtable;
pub mod platform;
pub mod proc_meminfo;
pub mod ram;
pub mod rbtree;
pub mod rmap;
pub mod slab;
pub mod slab_common;
pub mod spinlock;
pub mod task_stack;
pub mod vmalloc;
pub mod vmstat;

pub use arch::Arch;
pub use errno::Errno;
pub use error::KmmError;
pub use gfp::GfpFlags;
pub use memblock::Memblock;
pub use mm::Kmm;
pub use mm_init::{setup_arch, BootParams, EarlyBoot, NodeRange};
pub use mm_types::{MmStruct, Page, PageFlags, TaskStruct, VmAreaStruct, VmaFlags};
pub use mmzone::{PerCpuPages, PgData, Watermark, Zone, ZoneType};
pub use pgtable::{Mapping, PageTable, PagingFormat, PteFlags, Translation};
pub use platform::Platform;
pub use ram::PhysMem;
pub use slab::{KmemCache, ObjectInit, SlabFlags};
pub use slab_common::ZERO_SIZE_PTR;
pub use task_stack::{IrqStack, KernelStack};
pub use vmalloc::{VmFlags, VmStruct};

/// `MAX_ORDER`: the buddy lists hold blocks of order 0 to `MAX_ORDER - 1` (10).
pub const MAX_ORDER: usize = 11;
/// `MAX_NUMNODES`.
pub const MAX_NUMNODES: usize = 8;
/// `NR_CPUS`.
pub const NR_CPUS: usize = 64;
