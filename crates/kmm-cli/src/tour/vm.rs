//! Tour steps: the kernel page table, vmalloc against whole pages (LDD3's
//! scullp and scullv), ioremap of a frame buffer, and high memory with kmap
//! and kmap_atomic (seed 001 §8.3-8.4, seed 002 vmalloc and 高端内存的映射).

use super::{yes, Tour};
use crate::size::format_size;
use crate::Error;
use kmm::{GfpFlags, Kmm};
use kmm_sim::machine::{FRAMEBUFFER_PHYS, FRAMEBUFFER_SIZE};
use kmm_sim::mmu::Mmu;
use kmm_sim::{Machine, MachineConfig, SimPlatform};

type Mm = Kmm<SimPlatform>;

/// The tour's machines all have 4K pages, hence a kernel page table.
fn no_pgd() -> Error {
    Error::from("no kernel page table".to_string())
}

/// An MMU fault as a tour error.
fn fault(f: kmm_sim::mmu::Fault) -> Error {
    Error::from(f.to_string())
}

/// LDD3's `scull_qset`: `qset` quantum pointers.
const QSET: usize = 500;
/// What the tour writes into each device (LDD3 copies a 4 MB file).
const DATA: u64 = 4 << 20;

/// One scull device in memory: its `scull_qset` items (kmalloc'd) each
/// holding a kmalloc'd array of `QSET` quantum pointers.
struct Scull {
    order: u32,
    vmalloc: bool,
    /// `(item, data array, quanta)`.
    items: Vec<(u64, u64, Vec<u64>)>,
    size: u64,
}

impl Scull {
    fn quantum(&self, k: &Mm) -> u64 {
        k.page_size() << self.order
    }

    /// `scull_write` of `len` bytes: quanta as needed (`__get_free_pages`
    /// or `vmalloc` + memset), the bytes stored through the MMU on CPU 0.
    fn write(&mut self, k: &Mm, mmu: &Mmu<SimPlatform>, len: u64) -> Result<(), Error> {
        let pgd = k.swapper_pg_dir().ok_or_else(no_pgd)?;
        let q = self.quantum(k);
        let ptr = u64::from(k.arch().bits / 8);
        let mut chunk = vec![0u8; q as usize];
        while self.size < len {
            let n = self.size / q;
            let (item, s_pos) = ((n as usize) / QSET, (n as usize) % QSET);
            if item == self.items.len() {
                let it = k.kmalloc(48, GfpFlags::GFP_KERNEL)?;
                let data = k.kzalloc(QSET * ptr as usize, GfpFlags::GFP_KERNEL)?;
                self.items.push((it, data, Vec::new()));
            }
            let quantum = if self.vmalloc {
                let v = k.vmalloc(q)?;
                mmu.write(0, pgd, 0, v, &vec![0u8; q as usize])
                    .map_err(fault)?;
                v
            } else {
                k.__get_free_pages(GfpFlags::GFP_KERNEL, self.order)?
            };
            let (_, data, quanta) = &mut self.items[item];
            mmu.write(
                0,
                pgd,
                0,
                *data + s_pos as u64 * ptr,
                &quantum.to_le_bytes()[..ptr as usize],
            )
            .map_err(fault)?;
            quanta.push(quantum);
            let take = q.min(len - self.size);
            for (i, b) in chunk.iter_mut().enumerate().take(take as usize) {
                *b = (self.size + i as u64) as u8 ^ 0x5a;
            }
            mmu.write(0, pgd, 0, quantum, &chunk[..take as usize])
                .map_err(fault)?;
            self.size += take;
        }
        Ok(())
    }

    /// Reads everything back through the MMU and checks it.
    fn read_back(&self, k: &Mm, mmu: &Mmu<SimPlatform>) -> Result<bool, Error> {
        let pgd = k.swapper_pg_dir().ok_or_else(no_pgd)?;
        let q = self.quantum(k);
        let mut buf = vec![0u8; q as usize];
        let mut at = 0u64;
        let mut ok = true;
        for (_, _, quanta) in &self.items {
            for &quantum in quanta {
                let take = q.min(self.size - at);
                mmu.read(0, pgd, 0, quantum, &mut buf[..take as usize])
                    .map_err(fault)?;
                ok &= buf[..take as usize]
                    .iter()
                    .enumerate()
                    .all(|(i, &b)| b == (at + i as u64) as u8 ^ 0x5a);
                at += take;
            }
        }
        Ok(ok)
    }

    /// `head -5 /proc/scullpmem` (or scullvmem).
    fn show(&self, t: &mut Tour, k: &Mm) -> Result<(), Error> {
        let w = if k.arch().bits == 64 { 16 } else { 8 };
        let name = if self.vmalloc { "scullv" } else { "scullp" };
        t.say(format!("$ head -5 /proc/{name}mem"))?;
        t.say(format!(
            "Device 0: qset {QSET}, order {}, sz {}",
            self.order, self.size
        ))?;
        if let Some((item, data, quanta)) = self.items.first() {
            t.say(format!("  item at {item:0w$x}, qset at {data:0w$x}"))?;
            for (i, q) in quanta.iter().take(2).enumerate() {
                t.say(format!("       {i}:{q:x}"))?;
            }
        }
        Ok(())
    }

    /// `scull_trim`: every quantum, array and item freed.
    fn trim(self, k: &Mm) -> Result<(), Error> {
        for (item, data, quanta) in self.items {
            for q in quanta {
                if self.vmalloc {
                    k.vfree(q)?;
                } else {
                    k.free_pages(q, self.order)?;
                }
            }
            k.kfree(data)?;
            k.kfree(item)?;
        }
        Ok(())
    }
}

/// The kernel page table, scullp against scullv, ioremap, kmap.
pub fn steps(t: &mut Tour, m: &Machine) -> Result<(), Error> {
    kernel_page_table(t, m)?;
    // Fresh machines, so the main one ends the tour as it booted: vmalloc
    // keeps the page tables it adds to swapper_pg_dir, as Linux does.
    let x86_64 = Machine::boot(MachineConfig::default())?;
    x86_64.take_log();
    let x86 = Machine::boot(MachineConfig {
        arch: &kmm::arch::x86::X86,
        ram: 1 << 30,
        ..MachineConfig::default()
    })?;
    x86.take_log();
    scull(t, &x86_64, &x86)?;
    ioremap(t, &x86_64)?;
    highmem(t, &x86)?;
    Ok(())
}

fn kernel_page_table(t: &mut Tour, m: &Machine) -> Result<(), Error> {
    let k = m.kmm();
    t.step(
        "The kernel's own page table: the direct map and the vmalloc area",
        "The kernel reaches all of low memory through one big linear mapping, the direct map\n\
         at PAGE_OFFSET, built at boot with the largest pages the MMU offers. vmalloc,\n\
         ioremap and kmap addresses live in other areas of the same table (swapper_pg_dir),\n\
         mapped page by page. /proc/meminfo's DirectMap lines count the direct map's pages.",
    )?;
    let lay = *k.kernel_layout();
    let pgd = k.swapper_pg_dir().ok_or_else(no_pgd)?;
    t.say(format!(
        "> kernel_layout(): direct map {:#x}-{:#x}, vmalloc {:#x}-{:#x} ({}), page table {}",
        lay.page_offset,
        lay.high_memory,
        lay.vmalloc_start,
        lay.vmalloc_end,
        format_size(lay.vmalloc_total() + 1),
        pgd.format().name()
    ))?;
    let page = k.alloc_page(GfpFlags::GFP_KERNEL)?;
    let phys = k.page_to_phys(page)?;
    let va = k.__va(phys)?;
    if let Some(tr) = pgd.walk(k, va) {
        t.say(format!(
            "> a page at phys {phys:#x} is at __va() = {va:#x}; walking swapper_pg_dir: {} page at level {} ({}) -> phys {:#x}: {}",
            format_size(tr.size),
            tr.level,
            pgd.format().level_name(tr.level),
            tr.phys,
            yes(tr.phys == phys && tr.flags.pte_global())
        ))?;
    }
    k.__free_page(page)?;
    let mem = kmm_sim::procfs::read(m, "/proc/meminfo")?;
    t.say("$ grep -E 'Vmalloc|DirectMap' /proc/meminfo")?;
    for l in mem
        .lines()
        .filter(|l| l.starts_with("Vmalloc") || l.starts_with("DirectMap"))
    {
        t.say(l)?;
    }
    Ok(())
}

fn scull(t: &mut Tour, m: &Machine, x86: &Machine) -> Result<(), Error> {
    t.step(
        "scullp against scullv (LDD3 §8.3): whole pages or vmalloc",
        "LDD3's scullp stores data in quanta of __get_free_pages (order 0: one page each),\n\
         scullv in vmalloc'd quanta of 16 pages. Both get 4 MiB written through the MMU on\n\
         CPU 0. The quantum addresses show the two areas: scullp's are direct-map addresses,\n\
         scullv's lie in the vmalloc area (on x86 right above the direct map, as LDD3 notes).\n\
         Reading the data back shows the cost: the direct map uses large pages, so few TLB\n\
         misses; vmalloc memory is mapped with 4K pages, one miss per page.",
    )?;
    for (name, mach) in [("x86_64", m), ("x86", x86)] {
        let k = mach.kmm();
        t.say(format!("-- {name} --"))?;
        for (vmalloc, order) in [(false, 0), (true, 4)] {
            let mmu = Mmu::for_machine(mach);
            let mut dev = Scull {
                order,
                vmalloc,
                items: Vec::new(),
                size: 0,
            };
            dev.write(k, &mmu, DATA)?;
            dev.show(t, k)?;
            let before = mmu.tlb_stats(0);
            let ok = dev.read_back(k, &mmu)?;
            let after = mmu.tlb_stats(0);
            t.say(format!(
                "> read 4 MiB back through the MMU: data intact: {}; TLB: {} hits, {} misses (page walks)",
                yes(ok),
                after.hits - before.hits,
                after.misses - before.misses
            ))?;
            if vmalloc && name == "x86_64" {
                let info = kmm_sim::procfs::read(mach, "/proc/vmallocinfo")?;
                t.say("$ head -3 /proc/vmallocinfo")?;
                for l in info.lines().take(3) {
                    t.say(l)?;
                }
                let used = kmm_sim::procfs::read(mach, "/proc/meminfo")?;
                if let Some(l) = used.lines().find(|l| l.starts_with("VmallocUsed")) {
                    t.say(format!("$ grep VmallocUsed /proc/meminfo\n{l}"))?;
                }
            }
            dev.trim(k)?;
        }
        if name == "x86_64" {
            let info = kmm_sim::procfs::read(mach, "/proc/vmallocinfo")?;
            let lazy = info.lines().filter(|l| l.contains("unpurged")).count();
            t.say(format!(
                "> after vfree: {lazy} ranges wait as 'unpurged vm_area' (lazy TLB flush); vm_unmap_aliases() flushes them"
            ))?;
            let purges = k.vmap_purges();
            k.vm_unmap_aliases();
            let left = kmm_sim::procfs::read(mach, "/proc/vmallocinfo")?;
            t.say(format!(
                "> vm_unmap_aliases(): one flush_tlb_kernel_range ({} purge), /proc/vmallocinfo empty again: {}",
                k.vmap_purges() - purges,
                yes(left.is_empty())
            ))?;
        }
    }
    Ok(())
}

fn ioremap(t: &mut Tour, m: &Machine) -> Result<(), Error> {
    let k = m.kmm();
    t.step(
        "ioremap: device memory in the kernel's address space",
        "A PCI frame buffer is not RAM: no struct page, no allocation. ioremap only maps its\n\
         bus address into the vmalloc area, uncached; an unaligned request maps the pages\n\
         around it and returns the address plus the offset. The driver then uses readl and\n\
         writel on that address, through the MMU.",
    )?;
    let pages = k.vmalloc_nr_pages();
    let phys = FRAMEBUFFER_PHYS + 0x10;
    let io = k.ioremap(phys, 0x100)?;
    let mmu = Mmu::for_machine(m);
    let pgd = k.swapper_pg_dir().ok_or_else(no_pgd)?;
    mmu.write(0, pgd, 0, io, &0x00ff_8800u32.to_le_bytes())
        .map_err(fault)?;
    let mut b = [0u8; 4];
    mmu.read(0, pgd, 0, io, &mut b).map_err(fault)?;
    let tr = pgd.walk(k, io);
    t.say(format!(
        "> ioremap({phys:#x}, 0x100) of the {} frame buffer = {io:#x} (offset {:#x} kept); PTE uncached (PCD): {}; pages allocated: {}",
        format_size(FRAMEBUFFER_SIZE),
        io & 0xfff,
        yes(tr.is_some_and(|t| t.flags.contains(kmm::PteFlags::CACHE_DISABLE))),
        k.vmalloc_nr_pages() - pages
    ))?;
    t.say(format!(
        "> writel(0x00ff8800, {io:#x}); readl({io:#x}) = {:#010x}",
        u32::from_le_bytes(b)
    ))?;
    let info = kmm_sim::procfs::read(m, "/proc/vmallocinfo")?;
    t.say("$ grep ioremap /proc/vmallocinfo")?;
    for l in info.lines().filter(|l| l.ends_with("ioremap")) {
        t.say(l)?;
    }
    let ram = k.ioremap(0x10_0000, 4096);
    t.say(format!(
        "> ioremap(0x100000, 4096) of RAM: {}",
        match ram {
            Ok(a) => format!("{a:#x}?"),
            Err(e) => e.to_string(),
        }
    ))?;
    k.iounmap(io)?;
    t.dmesg(m)?;
    k.vm_unmap_aliases();
    Ok(())
}

fn highmem(t: &mut Tour, x86: &Machine) -> Result<(), Error> {
    let k = x86.kmm();
    t.step(
        "High memory on x86: kmap and kmap_atomic",
        "A 32-bit kernel maps only 896 MiB directly; pages above have no kernel address\n\
         (page_address() is NULL) until mapped. kmap() takes one of LAST_PKMAP permanent slots\n\
         and may sleep when all are taken; kmap_atomic() uses a per-CPU fixmap slot, disables\n\
         preemption and never sleeps, and its mappings must be undone in reverse order.",
    )?;
    let lay = *k.kernel_layout();
    t.say(format!(
        "> x86 layout: pkmap {:#x} ({} slots), fixmap {:#x}-{:#x}",
        lay.pkmap_base, lay.last_pkmap, lay.fixaddr_start, lay.fixaddr_top
    ))?;
    let page = k.alloc_pages(GfpFlags::GFP_HIGHUSER, 0)?;
    let page2 = k.alloc_pages(GfpFlags::GFP_HIGHUSER, 0)?;
    let low = k.alloc_page(GfpFlags::GFP_KERNEL)?;
    t.say(format!(
        "> alloc_pages(GFP_HIGHUSER) = {}",
        super::describe(k, page)
    ))?;
    let v = k.kmap(page)?;
    t.say(format!(
        "> kmap(page) = {v:#x}; page_address now {:#x}; kmap of a lowmem page returns its direct-map address: {}",
        k.page_address(page).unwrap_or(0),
        yes(k.kmap(low)? == k.page_address(low).unwrap_or(1))
    ))?;
    k.kunmap(low)?;
    let mmu = Mmu::for_machine(x86);
    let pgd = k.swapper_pg_dir().ok_or_else(no_pgd)?;
    let (a, b, c, depth, pc, readback) = x86.cpus().run_on_cpu(0, || -> Result<_, Error> {
        let a = k.kmap_atomic(page)?;
        let b = k.kmap_atomic(page2)?;
        let c = k.kmap_atomic(low)?;
        let depth = k.kmap_atomic_depth(0);
        let pc = x86.cpus().preempt_count();
        let mut buf = [0u8; 23];
        let io = mmu
            .write(0, pgd, 0, a, b"written via kmap_atomic")
            .and_then(|()| mmu.read(0, pgd, 0, v, &mut buf));
        let wrong = k.kunmap_atomic(a).is_err();
        k.kunmap_atomic(c)?;
        k.kunmap_atomic(b)?;
        k.kunmap_atomic(a)?;
        io.map_err(fault)?;
        Ok((a, b, c, depth, pc, (buf, wrong)))
    })??;
    t.say(format!(
        "> on CPU 0: kmap_atomic(high page) = {a:#x}, kmap_atomic(another) = {b:#x} (fixmap slots), kmap_atomic(low page) = {c:#x}"
    ))?;
    t.say(format!(
        "  preempt_count {pc} (one per kmap_atomic), fixmap slots in use {depth}"
    ))?;
    t.say(format!(
        "> wrote through the kmap_atomic address, read through the kmap address: {:?}",
        String::from_utf8_lossy(&readback.0)
    ))?;
    t.say(format!(
        "> kunmap_atomic(outer) before the inner ones is refused: {}",
        yes(readback.1)
    ))?;
    t.dmesg(x86)?;
    k.kunmap(page)?;
    let st = k.pkmap_stats();
    t.say(format!(
        "> kunmap(page): the slot stays mapped, unused, until the pool wraps ({} in use, {} unused but mapped)",
        st.in_use, st.unused_mapped
    ))?;
    k.__free_page(page)?;
    k.__free_page(page2)?;
    k.__free_page(low)?;
    Ok(())
}
