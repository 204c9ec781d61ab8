//! Mapping high memory into the kernel (`mm/highmem.c`, `include/linux/highmem.h`,
//! `arch/x86/mm/highmem_32.c`).
//!
//! A page of `ZONE_HIGHMEM` has no permanent kernel address. Two ways to
//! reach its bytes:
//!
//! - [`Kmm::kmap`]: one of `LAST_PKMAP` permanent slots at `PKMAP_BASE`
//!   (1024 on two-level x86, 512 with PAE). The mapping lasts until
//!   [`Kmm::kunmap`]; the same page kmapped twice shares its slot. When
//!   every slot is taken the caller sleeps until a `kunmap` frees one, so
//!   `kmap` may not be called in atomic context. A slot whose last user has
//!   gone stays mapped (count 1) until the allocator wraps around and
//!   unmaps all of them with one TLB flush (`flush_all_zero_pkmaps`).
//! - [`Kmm::kmap_atomic`]: a per-CPU fixmap slot, taken in stack order
//!   (`KM_MAX_IDX` deep). It disables preemption and page faults, never
//!   sleeps, and [`Kmm::kunmap_atomic`] must undo the mappings in reverse
//!   order; only the local TLB entry is flushed.
//!
//! A page of low memory needs neither: both return its direct-map address.
//! On x86_64 every page is low memory.

use crate::arch::init::{KM_MAX_IDX, LAST_PKMAP_2LEVEL, PAGE_KERNEL};
use crate::error::KmmError;
use crate::mm::Kmm;
use crate::mm_types::Page;
use crate::platform::Platform;
use crate::spinlock::SpinLock;
use crate::NR_CPUS;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// The permanent kmap slots (`pkmap_count[]` and `page_address_htable`),
/// under `kmap_lock`.
struct Pkmap {
    /// 0: free; 1: mapped, no user (unmapped at the next wrap); n > 1:
    /// n - 1 users.
    count: [u16; LAST_PKMAP_2LEVEL],
    /// The page frame each slot maps (valid when `count != 0`).
    pfn: [u64; LAST_PKMAP_2LEVEL],
    /// `last_pkmap_nr`: where the search for a free slot resumes.
    last: usize,
}

/// High-memory mapping state of the machine.
pub(crate) struct HighmemState {
    pkmap: SpinLock<Pkmap>,
    /// `__kmap_local_idx` / `km_type` stack depth per CPU.
    km_idx: [AtomicU32; NR_CPUS],
    /// `pagefault_disable()` depth per CPU.
    pagefault_disabled: [AtomicU32; NR_CPUS],
    waits: AtomicU64,
    flushes: AtomicU64,
}

impl HighmemState {
    pub(crate) fn new() -> Self {
        HighmemState {
            pkmap: SpinLock::new(Pkmap {
                count: [0; LAST_PKMAP_2LEVEL],
                pfn: [0; LAST_PKMAP_2LEVEL],
                last: 0,
            }),
            km_idx: core::array::from_fn(|_| AtomicU32::new(0)),
            pagefault_disabled: core::array::from_fn(|_| AtomicU32::new(0)),
            waits: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        }
    }
}

/// Counters of the permanent kmap pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PkmapStats {
    /// `LAST_PKMAP`.
    pub slots: usize,
    /// Slots with at least one user.
    pub in_use: usize,
    /// Slots still mapped without a user (waiting for the next flush).
    pub unused_mapped: usize,
    /// Times a `kmap` caller found every slot busy and slept.
    pub waits: u64,
    /// `flush_all_zero_pkmaps` runs (each one kernel-range TLB flush).
    pub flushes: u64,
}

impl<P: Platform> Kmm<P> {
    fn pkmap_find(&self, st: &Pkmap, pfn: u64) -> Option<usize> {
        let n = self.vm.layout.last_pkmap;
        (0..n).find(|&i| st.count[i] != 0 && st.pfn[i] == pfn)
    }

    /// The permanent-kmap address of a highmem page, if it has one
    /// (`page_address()` of a highmem page: the `page_address_htable` lookup).
    pub(crate) fn pkmap_address(&self, pfn: u64) -> Option<u64> {
        let st = self.highmem.pkmap.lock();
        let nr = self.pkmap_find(&st, pfn)?;
        Some(self.vm.layout.pkmap_addr(nr, self.page_size()))
    }

    /// `kmap()`: a kernel address for `page`. A low-memory page gives its
    /// direct-map address; a highmem page gets (or shares) a permanent kmap
    /// slot, sleeping while all `LAST_PKMAP` are in use. May sleep: in
    /// atomic context it is refused with Linux's report.
    pub fn kmap(&self, page: &Page) -> Result<u64, KmmError> {
        self.might_sleep("include/linux/highmem.rs", line!())?;
        if !self.page_is_highmem(page) {
            return self.page_address(page).ok_or(KmmError::InvalidArgument {
                what: "kmap of a page without a kernel address",
            });
        }
        let pfn = self.page_to_pfn(page)?;
        let ps = self.page_size();
        let n = self.vm.layout.last_pkmap;
        loop {
            let mut st = self.highmem.pkmap.lock();
            if let Some(nr) = self.pkmap_find(&st, pfn) {
                st.count[nr] += 1;
                return Ok(self.vm.layout.pkmap_addr(nr, ps));
            }
            // map_new_virtual(): the next free slot, flushing the unused
            // ones when the search wraps.
            let mut tries = n;
            let mut found = None;
            while tries > 0 {
                st.last = (st.last + 1) & (n - 1);
                if st.last == 0 {
                    self.flush_all_zero_pkmaps(&mut st)?;
                    tries = n;
                }
                if st.count[st.last] == 0 {
                    found = Some(st.last);
                    break;
                }
                tries -= 1;
            }
            if let Some(nr) = found {
                let vaddr = self.vm.layout.pkmap_addr(nr, ps);
                self.set_kernel_pte(vaddr, Some(self.pfn_phys(pfn)), PAGE_KERNEL)?;
                st.pfn[nr] = pfn;
                st.count[nr] = 2;
                return Ok(vaddr);
            }
            // Every slot has a user: sleep until a kunmap frees one.
            drop(st);
            self.highmem.waits.fetch_add(1, Relaxed);
            self.platform.cond_resched();
        }
    }

    /// `flush_all_zero_pkmaps()`: unmaps every slot left mapped without a
    /// user, then one TLB flush of the pkmap range on every CPU.
    fn flush_all_zero_pkmaps(&self, st: &mut Pkmap) -> Result<(), KmmError> {
        let ps = self.page_size();
        let n = self.vm.layout.last_pkmap;
        let mut flushed = false;
        for i in 0..n {
            if st.count[i] == 1 {
                st.count[i] = 0;
                self.set_kernel_pte(self.vm.layout.pkmap_addr(i, ps), None, PAGE_KERNEL)?;
                flushed = true;
            }
        }
        if flushed {
            let base = self.vm.layout.pkmap_base;
            self.platform
                .flush_tlb_kernel_range(base, base + n as u64 * ps);
            self.highmem.flushes.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    /// `kunmap()`: drops one user of `page`'s permanent kmap (nothing for a
    /// low-memory page). The slot stays mapped until the next wrap-around
    /// flush and can be shared again meanwhile. Unmapping a highmem page
    /// that is not kmapped is Linux's `BUG()` in `kunmap_high`: reported
    /// and refused.
    pub fn kunmap(&self, page: &Page) -> Result<(), KmmError> {
        if !self.page_is_highmem(page) {
            return Ok(());
        }
        let pfn = self.page_to_pfn(page)?;
        let mut st = self.highmem.pkmap.lock();
        match self.pkmap_find(&st, pfn) {
            Some(nr) if st.count[nr] > 1 => {
                st.count[nr] -= 1;
                Ok(())
            }
            _ => {
                drop(st);
                self.platform.printk(format_args!(
                    "kernel BUG at mm/highmem.rs:{}! kunmap of pfn {pfn:#x}, which is not kmapped",
                    line!()
                ));
                Err(KmmError::NotMapped {
                    virt: self.pfn_phys(pfn),
                })
            }
        }
    }

    /// `kmap_atomic()`: disables preemption and page faults and maps `page`
    /// at this CPU's next fixmap slot (its direct-map address for a
    /// low-memory page). Never sleeps. Each call needs its
    /// [`Self::kunmap_atomic`], innermost first. Nesting deeper than
    /// `KM_MAX_IDX` is Linux's `BUG()`: reported and refused.
    pub fn kmap_atomic(&self, page: &Page) -> Result<u64, KmmError> {
        if !self.platform.preempt_count_add(1) {
            return Err(KmmError::InvalidArgument {
                what: "kmap_atomic: preempt_count would overflow",
            });
        }
        let cpu = self.platform.smp_processor_id();
        self.highmem.pagefault_disabled[cpu].fetch_add(1, Relaxed);
        let r = self.kmap_atomic_slot(cpu, page);
        if r.is_err() {
            self.highmem.pagefault_disabled[cpu].fetch_sub(1, Relaxed);
            self.platform.preempt_count_sub(1);
        }
        r
    }

    fn kmap_atomic_slot(&self, cpu: usize, page: &Page) -> Result<u64, KmmError> {
        if !self.page_is_highmem(page) {
            return self.page_address(page).ok_or(KmmError::InvalidArgument {
                what: "kmap_atomic of a page without a kernel address",
            });
        }
        let idx = self.highmem.km_idx[cpu].load(Relaxed) as usize;
        if idx >= KM_MAX_IDX {
            self.platform.printk(format_args!(
                "kernel BUG at mm/highmem.rs:{}! kmap_atomic nested deeper than KM_MAX_IDX ({KM_MAX_IDX}) on CPU {cpu}",
                line!()
            ));
            return Err(KmmError::TableFull {
                what: "kmap_atomic slots of this CPU (KM_MAX_IDX)",
            });
        }
        let vaddr = self.kmap_atomic_addr(cpu, idx);
        let phys = self.page_to_phys(page)?;
        if self.set_kernel_pte(vaddr, Some(phys), PAGE_KERNEL)? {
            self.platform.printk(format_args!(
                "kernel BUG at mm/highmem.rs:{}! kmap_atomic slot {vaddr:#x} of CPU {cpu} is already mapped",
                line!()
            ));
        }
        self.highmem.km_idx[cpu].store(idx as u32 + 1, Relaxed);
        Ok(vaddr)
    }

    /// The fixmap address of `cpu`'s `idx`th `kmap_atomic` slot
    /// (`__fix_to_virt(FIX_KMAP_BEGIN + idx + KM_MAX_IDX * cpu)`).
    /// 0 on a machine without a fixmap (x86_64: `kmap_atomic` returns the
    /// direct-map address there).
    pub fn kmap_atomic_addr(&self, cpu: usize, idx: usize) -> u64 {
        let lay = &self.vm.layout;
        if lay.fixaddr_top == 0 {
            return 0;
        }
        lay.fix_to_virt(
            lay.fix_kmap_begin + idx + KM_MAX_IDX * cpu,
            self.page_size(),
        )
    }

    /// `kunmap_atomic()`: undoes the innermost [`Self::kmap_atomic`] of this
    /// CPU, whose address `vaddr` must be (unmapping out of order is
    /// Linux's `WARN_ON`: reported and refused, nothing changes); flushes
    /// the local TLB entry and enables page faults and preemption again.
    pub fn kunmap_atomic(&self, vaddr: u64) -> Result<(), KmmError> {
        let cpu = self.platform.smp_processor_id();
        let lay = self.vm.layout;
        let ps = self.page_size();
        let in_fixmap = lay.fixaddr_top != 0 && {
            let lo = self.kmap_atomic_addr(self.nr_cpu_ids - 1, KM_MAX_IDX - 1);
            let hi = self.kmap_atomic_addr(0, 0);
            (lo..=hi).contains(&(vaddr & !(ps - 1)))
        };
        if in_fixmap {
            let idx = self.highmem.km_idx[cpu].load(Relaxed) as usize;
            let want = idx.checked_sub(1).map(|i| self.kmap_atomic_addr(cpu, i));
            if want != Some(vaddr & !(ps - 1)) {
                self.platform.printk(format_args!(
                    "WARNING: CPU: {cpu} at mm/highmem.rs:{} kunmap_atomic: {vaddr:#x} is not this CPU's innermost kmap_atomic ({})",
                    line!(),
                    match want {
                        Some(w) => format_hex(w),
                        None => HexOrNone(None),
                    }
                ));
                return Err(KmmError::InvalidAddress {
                    addr: vaddr,
                    what: "kunmap_atomic out of order (not the innermost kmap_atomic)",
                });
            }
            self.set_kernel_pte(vaddr & !(ps - 1), None, PAGE_KERNEL)?;
            self.platform.flush_tlb_one_kernel(vaddr & !(ps - 1));
            self.highmem.km_idx[cpu].store(idx as u32 - 1, Relaxed);
        } else if self.__pa(vaddr).is_err() {
            return Err(KmmError::InvalidAddress {
                addr: vaddr,
                what: "kunmap_atomic of an address kmap_atomic did not return",
            });
        }
        if self.highmem.pagefault_disabled[cpu].load(Relaxed) == 0 {
            return Err(KmmError::InvalidArgument {
                what: "kunmap_atomic without kmap_atomic",
            });
        }
        self.highmem.pagefault_disabled[cpu].fetch_sub(1, Relaxed);
        self.platform.preempt_count_sub(1);
        Ok(())
    }

    /// `pagefault_disabled()` on `cpu`: inside a `kmap_atomic` section a
    /// fault may not sleep (the fault handler must fail it).
    pub fn pagefault_disabled(&self, cpu: usize) -> bool {
        self.highmem
            .pagefault_disabled
            .get(cpu)
            .is_some_and(|c| c.load(Relaxed) != 0)
    }

    /// Depth of `cpu`'s `kmap_atomic` stack.
    pub fn kmap_atomic_depth(&self, cpu: usize) -> usize {
        self.highmem
            .km_idx
            .get(cpu)
            .map_or(0, |c| c.load(Relaxed) as usize)
    }

    /// The permanent kmap pool's counters.
    pub fn pkmap_stats(&self) -> PkmapStats {
        let st = self.highmem.pkmap.lock();
        let n = self.vm.layout.last_pkmap;
        PkmapStats {
            slots: n,
            in_use: st.count[..n].iter().filter(|&&c| c > 1).count(),
            unused_mapped: st.count[..n].iter().filter(|&&c| c == 1).count(),
            waits: self.highmem.waits.load(Relaxed),
            flushes: self.highmem.flushes.load(Relaxed),
        }
    }
}

/// An address or "none" in a message.
struct HexOrNone(Option<u64>);

fn format_hex(v: u64) -> HexOrNone {
    HexOrNone(Some(v))
}

impl core::fmt::Display for HexOrNone {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{v:#x}"),
            None => f.write_str("none"),
        }
    }
}
