//! Built-in workloads: something for `kmm slabtop` (and the tour's last slab
//! step) to look at.
//!
//! A workload runs on a booted machine through the same library calls a
//! driver would make, keeps what it allocated, and gives everything back
//! with [`Running::release`]. `scull` is the seeds' examples together:
//!
//! - seed 000's `testslab` cache of `struct student`, with a constructor;
//! - seed 001's `scullc` device (quanta from its own cache) and the plain
//!   `scull` device (quanta from kmalloc), each written with 1 MiB;
//! - a `dentry` cache with `SLAB_RECLAIM_ACCOUNT`, as a filesystem's
//!   directory-entry cache would be (it counts as `SReclaimable`);
//! - a burst of kmallocs of mixed sizes, a third of them freed again.

use crate::Error;
use clap::ValueEnum;
use kmm::{GfpFlags, KmemCache, ObjectInit, SlabFlags};
use kmm_sim::Machine;
use std::fmt;

/// The workloads `--workload` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WorkloadName {
    /// Seed 000's testslab cache, seed 001's scullc and scull devices (1M
    /// written to each), a reclaimable dentry-like cache, 4000 kmallocs of
    /// mixed sizes with a third freed again.
    Scull,
    /// Nothing: the caches as boot left them.
    None,
}

impl fmt::Display for WorkloadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WorkloadName::Scull => "scull",
            WorkloadName::None => "none",
        })
    }
}

/// `sizeof(struct student)` (seed 000: `{ int id; char *name; }`) on a
/// machine with `bits`-bit pointers.
pub fn student_size(bits: u32) -> usize {
    2 * (bits as usize / 8)
}

/// The `id` a fresh `student` has: the constructor's mark.
pub const STUDENT_FRESH_ID: u32 = 0xffff_ffff;

/// Seed 000's constructor: sets `id` to [`STUDENT_FRESH_ID`] (-1) and the
/// rest of the object (`name`) to zero, i.e. NULL.
pub fn student_ctor(o: ObjectInit<'_>) {
    let _ = o.fill(0);
    let _ = o.write(0, &STUDENT_FRESH_ID.to_le_bytes());
}

/// LDD3's `scull_quantum`: bytes per quantum.
pub const SCULL_QUANTUM: usize = 4000;
/// LDD3's `scull_qset`: quanta per `struct scull_qset`.
pub const SCULL_QSET: usize = 1000;

/// LDD3's scull device (`struct scull_dev` with one `struct scull_qset`):
/// data lives in quanta of [`SCULL_QUANTUM`] bytes, found through an
/// array of [`SCULL_QSET`] pointers. The quanta come from a cache (scullc)
/// or from kmalloc (scull). Everything, the pointers included, is in the
/// machine's RAM; the struct only remembers where the `scull_qset` is.
pub struct ScullDev {
    /// The quantum cache (`scullc_cache`), or `None` for kmalloc.
    cache: Option<KmemCache>,
    /// `struct scull_qset *` (0: nothing written yet).
    qset: u64,
    /// Bytes of a pointer on this machine.
    ptr: usize,
    /// `dev->size`.
    size: usize,
}

impl ScullDev {
    /// An empty device whose quanta come from `cache` (or kmalloc).
    pub fn new(m: &Machine, cache: Option<KmemCache>) -> ScullDev {
        ScullDev {
            cache,
            qset: 0,
            ptr: m.kmm().arch().bits as usize / 8,
            size: 0,
        }
    }

    fn read_ptr(&self, m: &Machine, at: u64) -> Result<u64, Error> {
        let k = m.kmm();
        let mut b = [0u8; 8];
        k.phys().read(k.__pa(at)?, &mut b[..self.ptr])?;
        Ok(u64::from_le_bytes(b))
    }

    fn write_ptr(&self, m: &Machine, at: u64, v: u64) -> Result<(), Error> {
        let k = m.kmm();
        k.phys().write(k.__pa(at)?, &v.to_le_bytes()[..self.ptr])?;
        Ok(())
    }

    /// `dptr->data`: the array of quantum pointers (0 if none yet).
    fn data(&self, m: &Machine) -> Result<u64, Error> {
        if self.qset == 0 {
            return Ok(0);
        }
        self.read_ptr(m, self.qset)
    }

    /// Quanta allocated so far.
    pub fn quanta(&self) -> usize {
        self.size.div_ceil(SCULL_QUANTUM)
    }

    /// `scull_write()` at offset 0: allocates the `scull_qset`, its pointer
    /// array and each missing quantum (zeroed, as LDD3's `memset`), then
    /// copies `buf` in. At most `SCULL_QSET` quanta (one qset).
    pub fn write(&mut self, m: &Machine, buf: &[u8]) -> Result<(), Error> {
        let k = m.kmm();
        let zero = GfpFlags::GFP_KERNEL | GfpFlags::__GFP_ZERO;
        if buf.len() > SCULL_QSET * SCULL_QUANTUM {
            return Err(Error::Msg(format!(
                "scull: {} bytes do not fit one qset",
                buf.len()
            )));
        }
        if self.qset == 0 {
            self.qset = k.kmalloc(2 * self.ptr, zero)?;
        }
        let mut data = self.data(m)?;
        if data == 0 {
            data = k.kmalloc(SCULL_QSET * self.ptr, zero)?;
            self.write_ptr(m, self.qset, data)?;
        }
        for (i, chunk) in buf.chunks(SCULL_QUANTUM).enumerate() {
            let slot = data + (i * self.ptr) as u64;
            let mut q = self.read_ptr(m, slot)?;
            if q == 0 {
                q = match self.cache {
                    Some(c) => k.kmem_cache_alloc(c, zero)?,
                    None => k.kmalloc(SCULL_QUANTUM, zero)?,
                };
                self.write_ptr(m, slot, q)?;
            }
            k.phys().write(k.__pa(q)?, chunk)?;
        }
        self.size = self.size.max(buf.len());
        Ok(())
    }

    /// `scull_read()` of the whole device.
    pub fn read(&self, m: &Machine) -> Result<Vec<u8>, Error> {
        let k = m.kmm();
        let mut out = vec![0u8; self.size];
        let data = self.data(m)?;
        for (i, chunk) in out.chunks_mut(SCULL_QUANTUM).enumerate() {
            let q = self.read_ptr(m, data + (i * self.ptr) as u64)?;
            k.phys().read(k.__pa(q)?, chunk)?;
        }
        Ok(out)
    }

    /// `scull_trim()`: frees every quantum, the pointer array and the
    /// `scull_qset`. Returns the number of quanta freed.
    pub fn trim(&mut self, m: &Machine) -> Result<usize, Error> {
        let k = m.kmm();
        let data = self.data(m)?;
        let mut freed = 0;
        if data != 0 {
            for i in 0..SCULL_QSET {
                let q = self.read_ptr(m, data + (i * self.ptr) as u64)?;
                if q == 0 {
                    continue;
                }
                match self.cache {
                    Some(c) => k.kmem_cache_free(c, q)?,
                    None => k.kfree(q)?,
                }
                freed += 1;
            }
            k.kfree(data)?;
        }
        k.kfree(self.qset)?;
        self.qset = 0;
        self.size = 0;
        Ok(freed)
    }
}

/// Who gets an object back on release.
#[derive(Clone, Copy, Debug)]
enum Owner {
    Cache(KmemCache),
    Kmalloc,
}

/// A workload that has run: what it holds, and a line per thing it did.
pub struct Running {
    /// Caches it created, in creation order.
    caches: Vec<KmemCache>,
    /// Objects it still holds, in allocation order.
    objects: Vec<(Owner, u64)>,
    /// scull devices holding data.
    devices: Vec<ScullDev>,
    /// What it did, one line each.
    pub summary: Vec<String>,
}

impl Running {
    /// Runs workload `name` on `m`. On failure everything allocated so far
    /// is given back and the error names the step.
    pub fn start(m: &Machine, name: WorkloadName) -> Result<Running, Error> {
        let mut w = Running {
            caches: Vec::new(),
            objects: Vec::new(),
            devices: Vec::new(),
            summary: Vec::new(),
        };
        let r = match name {
            WorkloadName::Scull => w.scull(m),
            WorkloadName::None => Ok(()),
        };
        match r {
            Ok(()) => Ok(w),
            Err(e) => {
                let _ = w.release(m);
                Err(Error::Msg(format!("workload {name}: {e}")))
            }
        }
    }

    fn cache(
        &mut self,
        m: &Machine,
        name: &str,
        size: usize,
        flags: SlabFlags,
        ctor: Option<kmm::slab::Ctor>,
    ) -> Result<KmemCache, Error> {
        let c = m
            .kmm()
            .kmem_cache_create(name, size, 0, flags, ctor)
            .map_err(|e| format!("kmem_cache_create({name}): {e}"))?;
        self.caches.push(c);
        Ok(c)
    }

    fn alloc(&mut self, m: &Machine, c: KmemCache) -> Result<u64, Error> {
        let obj = m.kmm().kmem_cache_alloc(c, GfpFlags::GFP_KERNEL)?;
        self.objects.push((Owner::Cache(c), obj));
        Ok(obj)
    }

    fn kmalloc(&mut self, m: &Machine, size: usize, gfp: GfpFlags) -> Result<u64, Error> {
        let obj = m
            .kmm()
            .kmalloc(size, gfp)
            .map_err(|e| format!("kmalloc({size}): {e}"))?;
        self.objects.push((Owner::Kmalloc, obj));
        Ok(obj)
    }

    /// Frees the held objects at the positions `pick` selects.
    fn free_where(&mut self, m: &Machine, from: usize, pick: impl Fn(usize) -> bool) -> usize {
        let k = m.kmm();
        let mut kept = Vec::with_capacity(self.objects.len());
        let mut freed = 0;
        for (i, (owner, obj)) in self.objects.drain(..).enumerate() {
            if i >= from && pick(i - from) {
                let r = match owner {
                    Owner::Cache(c) => k.kmem_cache_free(c, obj),
                    Owner::Kmalloc => k.kfree(obj),
                };
                if r.is_ok() {
                    freed += 1;
                    continue;
                }
            }
            kept.push((owner, obj));
        }
        self.objects = kept;
        freed
    }

    fn scull(&mut self, m: &Machine) -> Result<(), Error> {
        let k = m.kmm();
        let student = student_size(k.arch().bits);
        let testslab = self.cache(
            m,
            "testslab",
            student,
            SlabFlags::SLAB_HWCACHE_ALIGN,
            Some(student_ctor),
        )?;
        let from = self.objects.len();
        for id in 0..1000u32 {
            let s = self.alloc(m, testslab)?;
            k.phys().write(k.__pa(s)?, &id.to_le_bytes())?;
        }
        let freed = self.free_where(m, from, |i| i % 2 == 1);
        self.summary.push(format!(
            "testslab: 1000 x kmem_cache_alloc() of a {student}-byte struct student, {freed} freed again"
        ));

        let scullc = self.cache(
            m,
            "scullc",
            SCULL_QUANTUM,
            SlabFlags::SLAB_HWCACHE_ALIGN,
            None,
        )?;
        let data: Vec<u8> = (0..1 << 20).map(|i| b'a' + (i % 26) as u8).collect();
        for (quanta, what) in [
            (Some(scullc), "from its own cache"),
            (None, "from kmalloc (kmalloc-4k)"),
        ] {
            let mut dev = ScullDev::new(m, quanta);
            let r = dev.write(m, &data);
            let n = dev.quanta();
            self.devices.push(dev);
            r?;
            self.summary.push(format!(
                "{}: 1M written: {n} quanta of {SCULL_QUANTUM} bytes {what}",
                if quanta.is_some() { "scullc" } else { "scull" }
            ));
        }

        let dentry = self.cache(
            m,
            "dentry",
            192,
            SlabFlags::SLAB_HWCACHE_ALIGN | SlabFlags::SLAB_RECLAIM_ACCOUNT,
            None,
        )?;
        for _ in 0..2000 {
            self.alloc(m, dentry)?;
        }
        self.summary.push(
            "dentry: 2000 objects of 192 bytes in a SLAB_RECLAIM_ACCOUNT cache (SReclaimable)"
                .into(),
        );

        let mut rng = crate::bench::XorShift64(0x5eed_0000_cafe_f00d);
        let from = self.objects.len();
        let mut bytes = 0;
        for _ in 0..4000 {
            let size = driver_size(rng.next());
            bytes += size;
            self.kmalloc(m, size, GfpFlags::GFP_KERNEL)?;
        }
        let dma = 100;
        for i in 0..dma {
            self.kmalloc(m, 64 + i, GfpFlags::GFP_KERNEL | GfpFlags::GFP_DMA)?;
        }
        let freed = self.free_where(m, from, |i| i % 3 == 0);
        self.summary.push(format!(
            "kmalloc: 4000 requests of 1 to 8192 bytes ({}K asked for) and {dma} with GFP_DMA, {freed} freed again",
            bytes >> 10
        ));
        Ok(())
    }

    /// Frees every object still held (newest first) and destroys the
    /// caches. Returns the first error, after trying everything.
    pub fn release(&mut self, m: &Machine) -> Result<(), Error> {
        let k = m.kmm();
        let mut first: Option<Error> = None;
        for (owner, obj) in self.objects.drain(..).rev() {
            let r = match owner {
                Owner::Cache(c) => k.kmem_cache_free(c, obj),
                Owner::Kmalloc => k.kfree(obj),
            };
            if let Err(e) = r {
                first.get_or_insert(e.into());
            }
        }
        for mut dev in self.devices.drain(..).rev() {
            if let Err(e) = dev.trim(m) {
                first.get_or_insert(e);
            }
        }
        for c in self.caches.drain(..).rev() {
            if let Err(e) = k.kmem_cache_destroy(c) {
                first.get_or_insert(e.into());
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// A kmalloc size as drivers ask for them, from one pseudo-random number:
/// mostly small, sometimes a few kilobytes.
fn driver_size(r: u64) -> usize {
    let size = match r % 100 {
        0..=59 => 1 + r / 100 % 64,
        60..=84 => 65 + r / 100 % 192,
        85..=96 => 257 + r / 100 % 1792,
        _ => 2049 + r / 100 % 6144,
    };
    size as usize
}
