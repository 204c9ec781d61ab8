//! The reverse map: from a page to the page-table entries that map it
//! (`mm/rmap.c` as it was in Linux 2.5 and 2.6.0: pte chains).
//!
//! Each mapped page carries a chain of `pte_chain` objects (slab cache
//! `pte_chain`, one cache line each): a link to the next object and
//! [`NRPTE`] slots holding the physical addresses of the PTEs that map the
//! page. `page->private` holds the first object (its physical address
//! shifted right by 6, as the objects are 64-byte aligned), and
//! `page->_mapcount` always equals the number of filled slots. From a PTE's
//! address the owning address space and virtual address follow from the
//! page-table page's own `struct page` (`ptep_to_mm`, `ptep_to_address`):
//! its `mapping` is the `mm_struct` and its `index` the virtual address the
//! table starts at, in units of the area one table covers.
//!
//! The zero page is never in a chain: it is shared by everyone and never
//! freed.

use crate::error::KmmError;
use crate::gfp::GfpFlags;
use crate::mm::Kmm;
use crate::mm_types::Page;
use crate::platform::Platform;
use crate::slab::KmemCache;
use crate::spinlock::SpinLock;
use core::sync::atomic::{
    AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};

/// PTE slots per `pte_chain` object (Linux's `NRPTE` for 64-byte lines).
pub const NRPTE: usize = 7;
const CHAIN_SIZE: usize = 64;
const CHAIN_SHIFT: u32 = 6;

/// The reverse map's cache and lock.
pub(crate) struct RmapState {
    /// `pte_chain_lock` (kmm uses one lock for all pages).
    lock: SpinLock<()>,
    init_lock: SpinLock<()>,
    cache: AtomicU64,
}

impl RmapState {
    pub(crate) const fn new() -> Self {
        RmapState {
            lock: SpinLock::new(()),
            init_lock: SpinLock::new(()),
            cache: AtomicU64::new(0),
        }
    }
}

impl<P: Platform> Kmm<P> {
    fn pte_chain_cache(&self) -> Result<KmemCache, KmmError> {
        if let Some(c) = KmemCache::from_raw(self.rmap.cache.load(Acquire)) {
            return Ok(c);
        }
        let _g = self.rmap.init_lock.lock();
        if let Some(c) = KmemCache::from_raw(self.rmap.cache.load(Acquire)) {
            return Ok(c);
        }
        let c = self.kmem_cache_create(
            "pte_chain",
            CHAIN_SIZE,
            CHAIN_SIZE,
            crate::SlabFlags::empty(),
            None,
        )?;
        self.rmap.cache.store(c.to_raw(), Release);
        Ok(c)
    }

    /// The first `pte_chain` of a mapped page (none while unmapped:
    /// `private` is then someone else's).
    fn chain_head(page: &Page) -> u64 {
        if page.page_mapcount() <= 0 {
            return 0;
        }
        u64::from(page.private()) << CHAIN_SHIFT
    }

    fn set_chain_head(page: &Page, chain: u64) -> Result<(), KmmError> {
        let v = chain >> CHAIN_SHIFT;
        let v = u32::try_from(v).map_err(|_| KmmError::InvalidAddress {
            addr: chain,
            what: "pte_chain object above the reach of page->private",
        })?;
        page.set_private(v);
        Ok(())
    }

    /// `page_add_rmap()`: records that the PTE at physical address `ptep`
    /// maps `page`, and counts the mapping in `_mapcount`.
    pub(crate) fn page_add_rmap(&self, page: &Page, ptep: u64) -> Result<(), KmmError> {
        let _g = self.rmap.lock.lock();
        let mut chain = Self::chain_head(page);
        while chain != 0 {
            for i in 0..NRPTE {
                let at = chain + 8 + 8 * i as u64;
                if self.mem.read_u64(at)? == 0 {
                    self.mem.write_u64(at, ptep)?;
                    page.mapcount.fetch_add(1, Relaxed);
                    return Ok(());
                }
            }
            chain = self.mem.read_u64(chain)?;
        }
        // No free slot: a new object at the head of the chain.
        let cache = self.pte_chain_cache()?;
        let obj = self.kmem_cache_zalloc(cache, GfpFlags::GFP_ATOMIC)?;
        let new = self.__pa(obj)?;
        self.mem.write_u64(new, Self::chain_head(page))?;
        self.mem.write_u64(new + 8, ptep)?;
        if let Err(e) = Self::set_chain_head(page, new) {
            self.kmem_cache_free(cache, obj)?;
            return Err(e);
        }
        page.mapcount.fetch_add(1, Relaxed);
        Ok(())
    }

    /// `page_remove_rmap()`: the PTE at `ptep` no longer maps `page`.
    /// A PTE the chain does not hold is a broken reverse map: reported
    /// ("BUG: Bad rmap") and refused.
    pub(crate) fn page_remove_rmap(&self, page: &Page, ptep: u64) -> Result<(), KmmError> {
        let _g = self.rmap.lock.lock();
        let mut prev = 0u64;
        let mut chain = Self::chain_head(page);
        while chain != 0 {
            let next = self.mem.read_u64(chain)?;
            for i in 0..NRPTE {
                let at = chain + 8 + 8 * i as u64;
                if self.mem.read_u64(at)? != ptep {
                    continue;
                }
                self.mem.write_u64(at, 0)?;
                page.mapcount.fetch_sub(1, Relaxed);
                // Free the object once it holds nothing.
                let mut empty = true;
                for j in 0..NRPTE {
                    empty &= self.mem.read_u64(chain + 8 + 8 * j as u64)? == 0;
                }
                if empty {
                    if prev == 0 {
                        Self::set_chain_head(page, next)?;
                    } else {
                        self.mem.write_u64(prev, next)?;
                    }
                    let cache = self.pte_chain_cache()?;
                    self.kmem_cache_free(cache, self.__va(chain)?)?;
                }
                return Ok(());
            }
            prev = chain;
            chain = next;
        }
        let pfn = self.page_to_pfn(page)?;
        self.platform.printk(format_args!(
            "BUG: Bad rmap: pfn {pfn:#x} is not mapped by the PTE at {ptep:#x} (mapcount {})",
            page.page_mapcount()
        ));
        Err(KmmError::BadPageState {
            pfn,
            reason: "page_remove_rmap of a PTE that does not map the page",
        })
    }

    /// Calls `f` with the physical address of every PTE that maps `page`
    /// (what `try_to_unmap` and `page_referenced` walk).
    pub fn page_for_each_pte(&self, page: &Page, f: &mut dyn FnMut(u64)) -> Result<(), KmmError> {
        let _g = self.rmap.lock.lock();
        let mut chain = Self::chain_head(page);
        while chain != 0 {
            for i in 0..NRPTE {
                let p = self.mem.read_u64(chain + 8 + 8 * i as u64)?;
                if p != 0 {
                    f(p);
                }
            }
            chain = self.mem.read_u64(chain)?;
        }
        Ok(())
    }

    /// `ptep_to_mm()` and `ptep_to_address()`: the address space and the
    /// virtual address of the PTE at physical address `ptep`, from the
    /// page-table page's `struct page`.
    pub fn ptep_to_mm_address(&self, ptep: u64) -> Result<(u64, u64), KmmError> {
        let mm = self.phys_to_page(ptep)?.mapping();
        let mm_struct = self.mem.ram_ref::<crate::MmStruct>(mm)?;
        let fmt = self.arch.paging_formats()[mm_struct.pgd_format.load(Relaxed) as usize];
        Ok((mm, self.ptep_address_in(fmt, ptep)?))
    }
}
