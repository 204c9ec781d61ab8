//! Memory pools: `mm/mempool.c` (LDD3 §8.2.2).
//!
//! A mempool keeps `min_nr` elements in reserve so that allocations that must
//! not fail (a block device's I/O path, say) make progress even when the
//! allocator behind the pool is out of memory. `mempool_alloc` asks the back
//! end first, without sleeping or retrying; only when that fails does it take
//! a reserved element; with nothing in reserve a caller that may sleep waits
//! for a `mempool_free`, and an atomic caller gets a failure.
//!
//! The reserve (an array of element addresses) lives in simulated RAM, taken
//! from the page allocator, as Linux takes it from kmalloc.

use crate::error::KmmError;
use crate::gfp::GfpFlags;
use crate::mm::Kmm;
use crate::platform::Platform;
use crate::spinlock::SpinLock;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// `mempool_alloc_t`: makes one element (returns its kernel virtual address).
pub type MempoolAllocFn<P> = fn(&Kmm<P>, GfpFlags, u64) -> Result<u64, KmmError>;
/// `mempool_free_t`: gives one element back to the allocator behind the pool.
pub type MempoolFreeFn<P> = fn(&Kmm<P>, u64, u64) -> Result<(), KmmError>;

/// Largest `min_nr` a pool accepts.
pub const MEMPOOL_MAX_NR: usize = 1 << 16;

struct Reserve {
    /// Address of the element array (in RAM), its capacity and fill.
    array: u64,
    capacity: usize,
    curr_nr: usize,
    min_nr: usize,
}

/// `mempool_t`.
pub struct Mempool<P: Platform> {
    reserve: SpinLock<Reserve>,
    alloc_fn: MempoolAllocFn<P>,
    free_fn: MempoolFreeFn<P>,
    pool_data: u64,
    /// Elements handed out and not yet returned with `mempool_free`.
    outstanding: AtomicU64,
    /// Allocations served from the reserve because the back end failed.
    from_reserve: AtomicU64,
    /// Times a sleeping caller had to wait for a free.
    waits: AtomicU64,
}

/// What a pool holds and has done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MempoolStats {
    /// `pool->min_nr`.
    pub min_nr: usize,
    /// `pool->curr_nr`: elements in reserve now.
    pub curr_nr: usize,
    /// Elements handed out and not yet freed.
    pub outstanding: u64,
    /// Allocations the reserve had to serve.
    pub from_reserve: u64,
    /// Times a sleeping caller waited for an element.
    pub waits: u64,
}

impl<P: Platform> Kmm<P> {
    fn reserve_array(&self, n: usize) -> Result<u64, KmmError> {
        self.alloc_pages_exact((n.max(1) * 8) as u64, GfpFlags::GFP_KERNEL)
    }

    fn slot(&self, array: u64, i: usize) -> Result<u64, KmmError> {
        self.__pa(array + 8 * i as u64)
    }

    /// `mempool_create()`: a pool that keeps `min_nr` elements made by
    /// `alloc_fn` in reserve. Fails (freeing what it made) if the reserve
    /// cannot be filled.
    pub fn mempool_create(
        &self,
        min_nr: usize,
        alloc_fn: MempoolAllocFn<P>,
        free_fn: MempoolFreeFn<P>,
        pool_data: u64,
    ) -> Result<Mempool<P>, KmmError> {
        if min_nr == 0 || min_nr > MEMPOOL_MAX_NR {
            return Err(KmmError::Mempool {
                why: "min_nr must be between 1 and 65536",
            });
        }
        let array = self.reserve_array(min_nr)?;
        let pool = Mempool {
            reserve: SpinLock::new(Reserve {
                array,
                capacity: min_nr,
                curr_nr: 0,
                min_nr,
            }),
            alloc_fn,
            free_fn,
            pool_data,
            outstanding: AtomicU64::new(0),
            from_reserve: AtomicU64::new(0),
            waits: AtomicU64::new(0),
        };
        for _ in 0..min_nr {
            match alloc_fn(self, GfpFlags::GFP_KERNEL, pool_data) {
                Ok(e) => {
                    let mut r = pool.reserve.lock();
                    let at = self.slot(r.array, r.curr_nr)?;
                    self.mem.write_u64(at, e)?;
                    r.curr_nr += 1;
                }
                Err(e) => {
                    pool.outstanding.store(0, Relaxed);
                    let _ = self.mempool_destroy(pool);
                    return Err(e);
                }
            }
        }
        Ok(pool)
    }

    /// `mempool_alloc()`: an element from the back end, else from the
    /// reserve; with `__GFP_WAIT` it waits for a `mempool_free` rather than
    /// fail, without it an empty reserve is a failure.
    pub fn mempool_alloc(&self, pool: &Mempool<P>, gfp: GfpFlags) -> Result<u64, KmmError> {
        gfp.validate()?;
        // First try without sleeping, retrying or warning: the reserve is the fallback.
        let quick = (gfp & !(GfpFlags::__GFP_WAIT | GfpFlags::__GFP_IO | GfpFlags::__GFP_NOFAIL))
            | GfpFlags::__GFP_NORETRY
            | GfpFlags::__GFP_NOWARN;
        let mut try_gfp = quick;
        loop {
            if let Ok(e) = (pool.alloc_fn)(self, try_gfp, pool.pool_data) {
                pool.outstanding.fetch_add(1, Relaxed);
                return Ok(e);
            }
            {
                let mut r = pool.reserve.lock();
                if r.curr_nr > 0 {
                    r.curr_nr -= 1;
                    let at = self.slot(r.array, r.curr_nr)?;
                    let e = self.mem.read_u64(at)?;
                    drop(r);
                    pool.outstanding.fetch_add(1, Relaxed);
                    pool.from_reserve.fetch_add(1, Relaxed);
                    return Ok(e);
                }
            }
            if try_gfp != gfp && gfp.allows_blocking() {
                // Second round: the back end with the caller's own flags.
                try_gfp = gfp & !GfpFlags::__GFP_NOFAIL | GfpFlags::__GFP_NOWARN;
                continue;
            }
            if !gfp.allows_blocking() {
                return Err(KmmError::NoMemory { order: 0, gfp });
            }
            let (pc, irqs) = self.platform.atomic_state();
            if pc != 0 || irqs {
                return Err(KmmError::SleepInAtomic {
                    preempt_count: pc,
                    irqs_disabled: irqs,
                });
            }
            // io_schedule_timeout(): let others run (and free), then start over.
            pool.waits.fetch_add(1, Relaxed);
            self.platform.cond_resched();
            try_gfp = quick;
        }
    }

    /// `mempool_free()`: refills the reserve if it is below `min_nr`,
    /// otherwise gives the element back to the allocator.
    pub fn mempool_free(&self, pool: &Mempool<P>, element: u64) -> Result<(), KmmError> {
        if element == 0 {
            return Ok(());
        }
        if pool
            .outstanding
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .is_err()
        {
            return Err(KmmError::Mempool {
                why: "mempool_free of an element the pool did not hand out",
            });
        }
        {
            let mut r = pool.reserve.lock();
            if r.curr_nr < r.min_nr {
                let at = self.slot(r.array, r.curr_nr)?;
                self.mem.write_u64(at, element)?;
                r.curr_nr += 1;
                return Ok(());
            }
        }
        (pool.free_fn)(self, element, pool.pool_data)
    }

    /// `mempool_resize()`: changes `min_nr`, freeing surplus reserve elements
    /// or allocating new ones with `GFP_KERNEL`.
    pub fn mempool_resize(&self, pool: &Mempool<P>, new_min_nr: usize) -> Result<(), KmmError> {
        if new_min_nr == 0 || new_min_nr > MEMPOOL_MAX_NR {
            return Err(KmmError::Mempool {
                why: "min_nr must be between 1 and 65536",
            });
        }
        // Shrink: surplus elements go back to the allocator.
        loop {
            let mut r = pool.reserve.lock();
            if r.curr_nr <= new_min_nr {
                break;
            }
            r.curr_nr -= 1;
            let e = self.mem.read_u64(self.slot(r.array, r.curr_nr)?)?;
            drop(r);
            (pool.free_fn)(self, e, pool.pool_data)?;
        }
        // Grow: a bigger array first, then new elements.
        let (old_array, old_cap) = {
            let r = pool.reserve.lock();
            (r.array, r.capacity)
        };
        if new_min_nr > old_cap {
            let array = self.reserve_array(new_min_nr)?;
            let mut r = pool.reserve.lock();
            for i in 0..r.curr_nr {
                let e = self.mem.read_u64(self.slot(r.array, i)?)?;
                self.mem.write_u64(self.slot(array, i)?, e)?;
            }
            r.array = array;
            r.capacity = new_min_nr;
            drop(r);
            self.free_pages_exact(old_array, (old_cap.max(1) * 8) as u64)?;
        }
        pool.reserve.lock().min_nr = new_min_nr;
        loop {
            if pool.reserve.lock().curr_nr >= new_min_nr {
                return Ok(());
            }
            let e = (pool.alloc_fn)(self, GfpFlags::GFP_KERNEL, pool.pool_data)?;
            let mut r = pool.reserve.lock();
            if r.curr_nr < r.capacity {
                let at = self.slot(r.array, r.curr_nr)?;
                self.mem.write_u64(at, e)?;
                r.curr_nr += 1;
            } else {
                drop(r);
                (pool.free_fn)(self, e, pool.pool_data)?;
            }
        }
    }

    /// `mempool_destroy()`: frees the reserve and the pool. Refused while
    /// elements are still out (Linux would oops later); the pool is handed
    /// back untouched in the error.
    // The refused pool itself comes back in the error so the caller keeps
    // using it; no heap to box it in, and this is no hot path.
    #[allow(clippy::result_large_err)]
    pub fn mempool_destroy(&self, pool: Mempool<P>) -> Result<(), (KmmError, Mempool<P>)> {
        let out = pool.outstanding.load(Relaxed);
        if out != 0 {
            self.platform.printk(format_args!(
                "mempool_destroy: {out} element(s) still allocated from the pool"
            ));
            return Err((
                KmmError::Mempool {
                    why: "mempool_destroy with elements still allocated",
                },
                pool,
            ));
        }
        let r = pool.reserve.lock();
        for i in 0..r.curr_nr {
            if let Ok(e) = self.slot(r.array, i).and_then(|a| self.mem.read_u64(a)) {
                let _ = (pool.free_fn)(self, e, pool.pool_data);
            }
        }
        let _ = self.free_pages_exact(r.array, (r.capacity.max(1) * 8) as u64);
        Ok(())
    }

    /// The pool's counters.
    pub fn mempool_stats(&self, pool: &Mempool<P>) -> MempoolStats {
        let r = pool.reserve.lock();
        MempoolStats {
            min_nr: r.min_nr,
            curr_nr: r.curr_nr,
            outstanding: pool.outstanding.load(Relaxed),
            from_reserve: pool.from_reserve.load(Relaxed),
            waits: pool.waits.load(Relaxed),
        }
    }
}

/// `mempool_alloc_pages()`: a back end of `2^order` pages, `pool_data` = order.
pub fn mempool_alloc_pages<P: Platform>(
    k: &Kmm<P>,
    gfp: GfpFlags,
    order: u64,
) -> Result<u64, KmmError> {
    k.__get_free_pages(gfp, order as u32)
}

/// `mempool_free_pages()`.
pub fn mempool_free_pages<P: Platform>(
    k: &Kmm<P>,
    element: u64,
    order: u64,
) -> Result<(), KmmError> {
    k.free_pages(element, order as u32)
}

/// `mempool_alloc_slab()`: a back end of slab objects; `pool_data` is the
/// cache ([`crate::slab::KmemCache::to_raw`]).
pub fn mempool_alloc_slab<P: Platform>(
    k: &Kmm<P>,
    gfp: GfpFlags,
    cache: u64,
) -> Result<u64, KmmError> {
    let c = crate::slab::KmemCache::from_raw(cache).ok_or(KmmError::Mempool {
        why: "pool_data does not name a slab cache",
    })?;
    k.kmem_cache_alloc(c, gfp)
}

/// `mempool_free_slab()`.
pub fn mempool_free_slab<P: Platform>(
    k: &Kmm<P>,
    element: u64,
    cache: u64,
) -> Result<(), KmmError> {
    let c = crate::slab::KmemCache::from_raw(cache).ok_or(KmmError::Mempool {
        why: "pool_data does not name a slab cache",
    })?;
    k.kmem_cache_free(c, element)
}

/// `mempool_kmalloc()`: a back end of `kmalloc(size)`; `pool_data` is the size.
pub fn mempool_kmalloc<P: Platform>(k: &Kmm<P>, gfp: GfpFlags, size: u64) -> Result<u64, KmmError> {
    k.kmalloc(size as usize, gfp)
}

/// `mempool_kfree()`.
pub fn mempool_kfree<P: Platform>(k: &Kmm<P>, element: u64, _size: u64) -> Result<(), KmmError> {
    k.kfree(element)
}

impl<P: Platform> Kmm<P> {
    /// `mempool_create_slab_pool()`: `min_nr` objects of `cache` in reserve.
    pub fn mempool_create_slab_pool(
        &self,
        min_nr: usize,
        cache: crate::slab::KmemCache,
    ) -> Result<Mempool<P>, KmmError> {
        self.mempool_create(
            min_nr,
            mempool_alloc_slab,
            mempool_free_slab,
            cache.to_raw(),
        )
    }

    /// `mempool_create_kmalloc_pool()`: `min_nr` buffers of `size` bytes.
    pub fn mempool_create_kmalloc_pool(
        &self,
        min_nr: usize,
        size: usize,
    ) -> Result<Mempool<P>, KmmError> {
        self.mempool_create(min_nr, mempool_kmalloc, mempool_kfree, size as u64)
    }

    /// `mempool_create_page_pool()`: `min_nr` blocks of `2^order` pages.
    pub fn mempool_create_page_pool(
        &self,
        min_nr: usize,
        order: u32,
    ) -> Result<Mempool<P>, KmmError> {
        self.mempool_create(
            min_nr,
            mempool_alloc_pages,
            mempool_free_pages,
            order as u64,
        )
    }
}
