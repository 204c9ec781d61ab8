//! The page cache (`mm/filemap.c`, `include/linux/pagemap.h`,
//! `include/linux/fs.h`'s `struct address_space`).
//!
//! Every open file has an `address_space` object (slab cache `inode_cache`)
//! naming the host file ([`crate::Platform::file_read`] reaches its bytes),
//! its size and its cached pages. The cached pages are indexed by file
//! offset (in pages) in a red-black tree of small nodes (slab cache
//! `radix_tree_node`, the name Linux's page-cache index nodes have in
//! `/proc/slabinfo`); each cached page's `struct page` has `mapping` = the
//! `address_space` and `index` = the offset, and `PG_uptodate` once its
//! bytes were read. A page holds one reference for the cache and one more
//! for every page table that maps it.
//!
//! Dirty pages (written through a shared mapping) are written back to the
//! host file by [`Kmm::filemap_write_and_wait`] and when the last user lets
//! go of the file ([`Kmm::filemap_put`]): then, as when Linux evicts an
//! unused inode, its pages leave the cache and go back to the allocator.

use crate::error::KmmError;
use crate::gfp::GfpFlags;
use crate::mm::Kmm;
use crate::mm_types::PageFlags;
use crate::platform::Platform;
use crate::rbtree::{rb_add, rb_erase, rb_find, rb_first, rb_next, RbRoot};
use crate::slab::KmemCache;
use crate::spinlock::SpinLock;
use core::sync::atomic::{
    AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};

/// `struct address_space` (with the parts of its inode kmm needs), in RAM.
#[repr(C)]
#[derive(Debug)]
pub struct AddressSpace {
    /// `host`: the platform's id of the file.
    pub host: AtomicU64,
    /// `i_size`: the file's size in bytes.
    pub size: AtomicU64,
    /// `nrpages`: pages in the cache.
    pub nrpages: AtomicU64,
    /// `i_pages`: root of the page index tree.
    pub i_pages: AtomicU64,
    /// Users: opens plus VMAs mapping the file (`i_count` + `i_mmap`).
    pub refs: AtomicU64,
    /// Bit 0: opened for reading; bit 1: for writing (`f_mode`).
    pub mode: AtomicU64,
    /// Pages with `PG_dirty`.
    pub nrdirty: AtomicU64,
    /// Pages read from the file (major faults and reads).
    pub reads: AtomicU64,
}

// SAFETY: integer atomics only; every bit pattern is a valid value.
unsafe impl crate::ram::RamSafe for AddressSpace {}

/// One page-cache index node: tree node, offset, frame.
#[repr(C)]
struct PageCacheNode {
    rb: [AtomicU64; 3],
    index: AtomicU64,
    pfn: AtomicU64,
}

// SAFETY: integer atomics only; every bit pattern is a valid value.
unsafe impl crate::ram::RamSafe for PageCacheNode {}

const NODE_INDEX: u64 = 24;
const NODE_PFN: u64 = 32;
const NODE_SIZE: usize = core::mem::size_of::<PageCacheNode>();

/// `FMODE_READ`.
pub const FMODE_READ: u64 = 1;
/// `FMODE_WRITE`.
pub const FMODE_WRITE: u64 = 2;

/// The page cache's state: caches, the tree lock, counters.
pub(crate) struct FilemapState {
    /// `i_pages` lock of every mapping (one lock for all files).
    lock: SpinLock<()>,
    init_lock: SpinLock<()>,
    mapping_cache: AtomicU64,
    node_cache: AtomicU64,
    /// `NR_FILE_PAGES`.
    pub(crate) nr_file_pages: AtomicU64,
    /// `NR_FILE_DIRTY`.
    pub(crate) nr_dirty: AtomicU64,
    /// `NR_FILE_MAPPED`: page-cache pages some page table maps.
    pub(crate) nr_mapped: AtomicU64,
    /// `pgpgin` in KiB read from files.
    pub(crate) pgpgin: AtomicU64,
    /// `pgpgout` in KiB written to files.
    pub(crate) pgpgout: AtomicU64,
}

impl FilemapState {
    pub(crate) const fn new() -> Self {
        FilemapState {
            lock: SpinLock::new(()),
            init_lock: SpinLock::new(()),
            mapping_cache: AtomicU64::new(0),
            node_cache: AtomicU64::new(0),
            nr_file_pages: AtomicU64::new(0),
            nr_dirty: AtomicU64::new(0),
            nr_mapped: AtomicU64::new(0),
            pgpgin: AtomicU64::new(0),
            pgpgout: AtomicU64::new(0),
        }
    }
}

impl<P: Platform> Kmm<P> {
    fn filemap_caches(&self) -> Result<(KmemCache, KmemCache), KmmError> {
        let st = &self.filemap;
        let get = |a: &AtomicU64| KmemCache::from_raw(a.load(Acquire));
        if let (Some(m), Some(n)) = (get(&st.mapping_cache), get(&st.node_cache)) {
            return Ok((m, n));
        }
        let _g = st.init_lock.lock();
        if let (Some(m), Some(n)) = (get(&st.mapping_cache), get(&st.node_cache)) {
            return Ok((m, n));
        }
        let flags = crate::SlabFlags::SLAB_RECLAIM_ACCOUNT;
        let m = self.kmem_cache_create(
            "inode_cache",
            core::mem::size_of::<AddressSpace>(),
            8,
            flags,
            None,
        )?;
        let n = self.kmem_cache_create("radix_tree_node", NODE_SIZE, 8, flags, None)?;
        st.mapping_cache.store(m.to_raw(), Release);
        st.node_cache.store(n.to_raw(), Release);
        Ok((m, n))
    }

    /// The `address_space` object at physical address `mapping`.
    pub fn address_space(&self, mapping: u64) -> Result<&AddressSpace, KmmError> {
        self.mem.ram_ref::<AddressSpace>(mapping)
    }

    /// `open()` of a host file for mapping: a new `address_space` for
    /// `host` (the platform's file id) of `size` bytes, opened with `mode`
    /// ([`FMODE_READ`] | [`FMODE_WRITE`]). One reference; drop it with
    /// [`Self::filemap_put`].
    pub fn filemap_open(&self, host: u64, size: u64, mode: u64) -> Result<u64, KmmError> {
        let (mc, _) = self.filemap_caches()?;
        let obj = self.kmem_cache_zalloc(mc, GfpFlags::GFP_KERNEL)?;
        let phys = self.__pa(obj)?;
        let a = self.address_space(phys)?;
        a.host.store(host, Relaxed);
        a.size.store(size, Relaxed);
        a.mode.store(mode, Relaxed);
        a.refs.store(1, Relaxed);
        Ok(phys)
    }

    /// `ihold()` / a new VMA mapping the file: one more reference.
    pub fn filemap_get(&self, mapping: u64) -> Result<(), KmmError> {
        self.address_space(mapping)?.refs.fetch_add(1, Relaxed);
        Ok(())
    }

    /// `iput()`: drops a reference. The last one writes dirty pages back,
    /// empties the cache (every page goes back to the allocator) and frees
    /// the `address_space`.
    pub fn filemap_put(&self, mapping: u64) -> Result<(), KmmError> {
        let a = self.address_space(mapping)?;
        let old = a.refs.fetch_sub(1, Relaxed);
        if old == 0 {
            a.refs.store(0, Relaxed);
            return Err(KmmError::InvalidArgument {
                what: "filemap_put of an address_space with no references",
            });
        }
        if old > 1 {
            return Ok(());
        }
        self.filemap_write_and_wait(mapping)?;
        let (mc, nc) = self.filemap_caches()?;
        let _g = self.filemap.lock.lock();
        let mut root = RbRoot {
            rb_node: a.i_pages.load(Relaxed),
        };
        while let Some(node) = rb_first(&self.mem, &root)? {
            let pfn = self.mem.read_u64(node + NODE_PFN)?;
            rb_erase(&self.mem, node, &mut root)?;
            self.kmem_cache_free(nc, self.__va(node)?)?;
            let page = self.pfn_to_page(pfn)?;
            page.set_mapping(0);
            page.set_index(0);
            page.clear_flags(PageFlags::UPTODATE | PageFlags::DIRTY);
            self.filemap.nr_file_pages.fetch_sub(1, Relaxed);
            self.put_page(page)?;
        }
        a.i_pages.store(0, Relaxed);
        a.nrpages.store(0, Relaxed);
        self.kmem_cache_free(mc, self.__va(mapping)?)?;
        Ok(())
    }

    fn cache_root(&self, a: &AddressSpace) -> RbRoot {
        RbRoot {
            rb_node: a.i_pages.load(Relaxed),
        }
    }

    fn node_key(&self, node: u64) -> Result<u64, KmmError> {
        self.mem.read_u64(node + NODE_INDEX)
    }

    /// `find_get_page()`: the cached page at `index` of `mapping`, with a
    /// reference taken for the caller (its frame number), or `None`.
    pub fn find_get_page(&self, mapping: u64, index: u64) -> Result<Option<u64>, KmmError> {
        let a = self.address_space(mapping)?;
        let _g = self.filemap.lock.lock();
        let root = self.cache_root(a);
        let Some(node) = rb_find(&self.mem, &index, &root, |n| self.node_key(n))? else {
            return Ok(None);
        };
        let pfn = self.mem.read_u64(node + NODE_PFN)?;
        self.get_page(self.pfn_to_page(pfn)?)?;
        Ok(Some(pfn))
    }

    /// `filemap_fault()`'s lookup: the page at `index`, read from the file
    /// when it is not cached (a major fault: `true`). The caller gets a
    /// reference. Past the end of the file: `EFAULT`-like
    /// [`KmmError::InvalidAddress`] (the fault handler sends SIGBUS).
    pub fn read_cache_page(&self, mapping: u64, index: u64) -> Result<(u64, bool), KmmError> {
        let a = self.address_space(mapping)?;
        let ps = self.page_size();
        if index.saturating_mul(ps) >= a.size.load(Relaxed) {
            return Err(KmmError::InvalidAddress {
                addr: index.saturating_mul(ps),
                what: "file offset beyond the end of the file",
            });
        }
        if let Some(pfn) = self.find_get_page(mapping, index)? {
            return Ok((pfn, false));
        }
        // Not cached: a new page, filled from the file (->readpage).
        let page = self.alloc_pages(GfpFlags::GFP_HIGHUSER, 0)?;
        let pfn = self.page_to_pfn(page)?;
        if let Err(e) = self.fill_from_file(a, pfn, index) {
            self.__free_pages(page, 0)?;
            return Err(e);
        }
        let (_, nc) = self.filemap_caches()?;
        let node = match self.kmem_cache_zalloc(nc, GfpFlags::GFP_KERNEL) {
            Ok(v) => self.__pa(v)?,
            Err(e) => {
                self.__free_pages(page, 0)?;
                return Err(e);
            }
        };
        self.mem.write_u64(node + NODE_INDEX, index)?;
        self.mem.write_u64(node + NODE_PFN, pfn)?;
        let _g = self.filemap.lock.lock();
        let mut root = self.cache_root(a);
        // Another CPU may have read the same page meanwhile.
        if let Some(other) = rb_find(&self.mem, &index, &root, |n| self.node_key(n))? {
            let theirs = self.mem.read_u64(other + NODE_PFN)?;
            drop(_g);
            self.kmem_cache_free(nc, self.__va(node)?)?;
            self.__free_pages(page, 0)?;
            self.get_page(self.pfn_to_page(theirs)?)?;
            return Ok((theirs, false));
        }
        rb_add(&self.mem, node, &mut root, |n| self.node_key(n))?;
        a.i_pages.store(root.rb_node, Relaxed);
        a.nrpages.fetch_add(1, Relaxed);
        a.reads.fetch_add(1, Relaxed);
        page.set_mapping(mapping);
        page.set_index(index as u32);
        page.set_flags(PageFlags::UPTODATE);
        // One reference for the cache, one for the caller.
        self.get_page(page)?;
        self.filemap.nr_file_pages.fetch_add(1, Relaxed);
        self.filemap
            .pgpgin
            .fetch_add(self.page_size() >> 10, Relaxed);
        Ok((pfn, true))
    }

    /// `->readpage`: the page's bytes from the file, zeros past its end.
    fn fill_from_file(&self, a: &AddressSpace, pfn: u64, index: u64) -> Result<(), KmmError> {
        let ps = self.page_size();
        let phys = self.pfn_phys(pfn);
        let off = index * ps;
        let want = a.size.load(Relaxed).saturating_sub(off).min(ps);
        let host = a.host.load(Relaxed);
        let mut buf = [0u8; 512];
        let mut done = 0u64;
        // Shared anonymous memory (shmem) has no file: its pages start zero.
        while done < want && host != crate::memory::SHMEM_HOST {
            let n = (want - done).min(buf.len() as u64) as usize;
            let got = self.platform.file_read(host, off + done, &mut buf[..n])?;
            self.mem.write(phys + done, &buf[..got])?;
            done += got as u64;
            if got < n {
                break;
            }
        }
        self.mem.fill(phys + done, (ps - done) as usize, 0)
    }

    /// `set_page_dirty()`: a page-cache page was written through a shared
    /// mapping; it must reach the file.
    pub fn set_page_dirty(&self, pfn: u64) -> Result<(), KmmError> {
        let page = self.pfn_to_page(pfn)?;
        if page.mapping() == 0 || page.flags().contains(PageFlags::DIRTY) {
            return Ok(());
        }
        page.set_flags(PageFlags::DIRTY);
        self.address_space(page.mapping())?
            .nrdirty
            .fetch_add(1, Relaxed);
        self.filemap.nr_dirty.fetch_add(1, Relaxed);
        Ok(())
    }

    /// `filemap_write_and_wait()` (`fsync`): writes every dirty page of
    /// `mapping` back to the file (up to its size) and cleans it. Returns
    /// the pages written.
    pub fn filemap_write_and_wait(&self, mapping: u64) -> Result<u64, KmmError> {
        let a = self.address_space(mapping)?;
        if a.nrdirty.load(Relaxed) == 0 {
            return Ok(0);
        }
        if a.host.load(Relaxed) == crate::memory::SHMEM_HOST {
            // shmem has nothing to write to: its pages are cleaned when freed.
            return self.clean_all(a);
        }
        let ps = self.page_size();
        let host = a.host.load(Relaxed);
        let size = a.size.load(Relaxed);
        let _g = self.filemap.lock.lock();
        let root = self.cache_root(a);
        let mut node = rb_first(&self.mem, &root)?;
        let mut written = 0;
        let mut buf = [0u8; 512];
        while let Some(n) = node {
            let pfn = self.mem.read_u64(n + NODE_PFN)?;
            let index = self.mem.read_u64(n + NODE_INDEX)?;
            let page = self.pfn_to_page(pfn)?;
            if page.flags().contains(PageFlags::DIRTY) {
                let off = index * ps;
                let len = size.saturating_sub(off).min(ps);
                let mut done = 0;
                while done < len {
                    let k = (len - done).min(buf.len() as u64) as usize;
                    self.mem.read(self.pfn_phys(pfn) + done, &mut buf[..k])?;
                    self.platform.file_write(host, off + done, &buf[..k])?;
                    done += k as u64;
                }
                page.clear_flags(PageFlags::DIRTY);
                a.nrdirty.fetch_sub(1, Relaxed);
                self.filemap.nr_dirty.fetch_sub(1, Relaxed);
                self.filemap.pgpgout.fetch_add(ps >> 10, Relaxed);
                written += 1;
            }
            node = rb_next(&self.mem, n)?;
        }
        Ok(written)
    }

    /// Clears `PG_dirty` of every page of `a` (shmem at eviction).
    fn clean_all(&self, a: &AddressSpace) -> Result<u64, KmmError> {
        let _g = self.filemap.lock.lock();
        let root = self.cache_root(a);
        let mut node = rb_first(&self.mem, &root)?;
        let mut n = 0;
        while let Some(nd) = node {
            let page = self.pfn_to_page(self.mem.read_u64(nd + NODE_PFN)?)?;
            if page.flags().contains(PageFlags::DIRTY) {
                page.clear_flags(PageFlags::DIRTY);
                a.nrdirty.fetch_sub(1, Relaxed);
                self.filemap.nr_dirty.fetch_sub(1, Relaxed);
                n += 1;
            }
            node = rb_next(&self.mem, nd)?;
        }
        Ok(n)
    }

    /// `global_node_page_state(NR_FILE_PAGES)`: pages in the page cache
    /// (`Cached:` in `/proc/meminfo`).
    pub fn nr_file_pages(&self) -> u64 {
        self.filemap.nr_file_pages.load(Relaxed)
    }

    /// `pgpgin` and `pgpgout`: KiB read from and written to files.
    pub fn pgpgin_pgpgout(&self) -> (u64, u64) {
        (
            self.filemap.pgpgin.load(Relaxed),
            self.filemap.pgpgout.load(Relaxed),
        )
    }

    /// `NR_FILE_DIRTY` (`Dirty:`).
    pub fn nr_file_dirty(&self) -> u64 {
        self.filemap.nr_dirty.load(Relaxed)
    }

    /// `NR_FILE_MAPPED` (`Mapped:`).
    pub fn nr_file_mapped(&self) -> u64 {
        self.filemap.nr_mapped.load(Relaxed)
    }
}
