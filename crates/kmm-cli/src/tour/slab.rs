//! The tour's slab-layer steps: kmalloc's size classes, seed 000's
//! `testslab` cache, seed 001's `scullc` device, slab colouring, slub_debug
//! reports, a mempool under memory exhaustion, and the slab totals in
//! `/proc/meminfo` after a workload.
//!
//! As in the rest of the tour, every number is what a library call returned
//! and every "yes"/"NO" is computed from the machine's state.

use super::{yes, Tour, ATOMIC, KERNEL};
use crate::size::format_size;
use crate::slabtop;
use crate::workload::{self, student_ctor, student_size, Running, ScullDev, WorkloadName};
use crate::Error;
use kmm::mempool::{mempool_alloc_slab, mempool_free_slab};
use kmm::slab::KmemCacheInfo;
use kmm::{GfpFlags, KmemCache, KmmError, SlabFlags, ZERO_SIZE_PTR};
use kmm_sim::Machine;
use std::time::{Duration, Instant};

/// Runs the slab steps in order.
pub(super) fn steps(t: &mut Tour, m: &Machine) -> Result<(), Error> {
    kmalloc(t, m)?;
    testslab(t, m)?;
    scullc(t, m)?;
    colouring(t, m)?;
    debugging(t, m)?;
    mempool(t, m)?;
    totals(t, m)
}

/// `$ grep NAME /proc/slabinfo`, with the line (if any) as the machine prints it.
fn grep_slabinfo(t: &mut Tour, m: &Machine, name: &str) -> Result<Option<String>, Error> {
    let text = kmm_sim::procfs::read(m, "/proc/slabinfo")?;
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .map(str::to_owned);
    t.say(format!("$ grep {name} /proc/slabinfo"))?;
    match &line {
        Some(l) => t.say(l)?,
        None => t.say("(no such line)")?,
    }
    Ok(line)
}

/// The kernel log since the last look, keeping only lines `keep` accepts
/// (and saying how many were left out).
fn dmesg_excerpt(t: &mut Tour, m: &Machine, keep: impl Fn(&str) -> bool) -> Result<(), Error> {
    show_log(t, &m.take_log(), keep)
}

/// Prints `lines` as `$ dmesg` would, keeping only lines `keep` accepts.
fn show_log(t: &mut Tour, lines: &[String], keep: impl Fn(&str) -> bool) -> Result<(), Error> {
    if lines.is_empty() {
        return Ok(());
    }
    let kept: Vec<&String> = lines.iter().filter(|l| keep(l)).collect();
    if kept.len() == lines.len() {
        t.say("$ dmesg")?;
    } else {
        t.say(format!(
            "$ dmesg   (excerpt: {} of {} lines)",
            kept.len(),
            lines.len()
        ))?;
    }
    for line in kept {
        t.say(line)?;
    }
    Ok(())
}

/// Drops the banner and blank lines of a SLUB report.
fn no_banner(l: &str) -> bool {
    !(l.is_empty() || l.starts_with("---") || l.starts_with("==="))
}

/// A call that returns nothing but may fail.
fn result(r: Result<(), KmmError>) -> String {
    match r {
        Ok(()) => "Ok".into(),
        Err(e) => format!("Err({e})"),
    }
}

fn info(m: &Machine, c: KmemCache) -> Result<KmemCacheInfo, Error> {
    Ok(m.kmm().kmem_cache_info(c)?)
}

/// Step: kmalloc's size classes, its limits and its misuse reports.
fn kmalloc(t: &mut Tour, m: &Machine) -> Result<(), Error> {
    let k = m.kmm();
    t.step(
        "kmalloc(): any number of bytes, from caches of fixed sizes",
        "kmalloc(size, flags) returns physically contiguous bytes. Underneath are slab caches of\n\
         fixed object sizes (kmalloc-8, -16, -32, -64, -96, -128, -192, -256 ... -8k); a request\n\
         is rounded up to the next size, so it may get up to twice what it asked for. Requests\n\
         above two pages go straight to the page allocator.",
    )?;
    m.take_log();
    let mut held = Vec::new();
    for size in [1usize, 65, 129, 4000, 9000] {
        let p = k.kmalloc(size, KERNEL)?;
        held.push(p);
        let ksize = k.ksize(p)?;
        let from = match k.kmalloc_slab(size, KERNEL) {
            Some(c) => format!("from {}", k.kmem_cache_name(c)?),
            None => {
                let page = k.virt_to_page(p)?;
                format!(
                    "page allocator: an order-{} block (PG_slab {})",
                    page.alloc_order().unwrap_or(0),
                    if page.is_slab() { "set" } else { "clear" }
                )
            }
        };
        t.say(format!(
            "> kmalloc({size:>4}, GFP_KERNEL) = {p:#x}   ksize {ksize:>5} ({:>4} unused)   {from}",
            ksize - size
        ))?;
    }
    let min = k.kmalloc_size_roundup(1);
    t.say(format!(
        "  the smallest object: {min} bytes (KMALLOC_MIN_SIZE; LDD3's kernels started at 32 or 64)"
    ))?;
    let max = k.kmalloc_max_size();
    let cache_max = k.kmalloc_max_cache_size();
    // The request that gets closest to twice its size, among the caches and
    // among the page blocks.
    let (mut worst, mut all_below) = ([9usize, cache_max + 1], true);
    for n in 9..=max {
        let got = k.kmalloc_size_roundup(n);
        all_below &= got < 2 * n;
        let w = &mut worst[usize::from(n > cache_max)];
        if got * *w > k.kmalloc_size_roundup(*w) * n {
            *w = n;
        }
    }
    t.say(format!(
        "  kmalloc_size_roundup(n) < 2 * n for every n from 9 to {max}: {}   (closest to twice:\n  kmalloc({}) gets {} from a cache, kmalloc({}) gets {} from the page allocator)",
        yes(all_below),
        worst[0],
        k.kmalloc_size_roundup(worst[0]),
        worst[1],
        k.kmalloc_size_roundup(worst[1]),
    ))?;
    t.say(format!(
        "  KMALLOC_MAX_SIZE = {} (PAGE_SIZE << (MAX_ORDER - 1)); LDD3: portable code should not count on more than 128K",
        format_size(max as u64)
    ))?;
    match k.kmalloc(max, KERNEL) {
        Ok(p) => {
            t.say(format!(
                "> kmalloc({}, GFP_KERNEL) = {p:#x}   (an order-{} block)",
                format_size(max as u64),
                k.get_order(max as u64)
            ))?;
            k.kfree(p)?;
        }
        Err(e) => t.say(format!(
            "> kmalloc({}, GFP_KERNEL) = Err({e})",
            format_size(max as u64)
        ))?,
    }
    match k.kmalloc(max + 1, KERNEL) {
        Ok(p) => {
            t.say(format!("> kmalloc(KMALLOC_MAX_SIZE + 1) = {p:#x}"))?;
            k.kfree(p)?;
        }
        Err(e) => t.say(format!("> kmalloc(KMALLOC_MAX_SIZE + 1) = Err({e})"))?,
    }
    t.dmesg(m)?;
    let z = k.kmalloc(0, KERNEL)?;
    t.say(format!(
        "> kmalloc(0, GFP_KERNEL) = {z:#x}: ZERO_SIZE_PTR: {} (no memory behind it; kfree() accepts it: {})",
        yes(z == ZERO_SIZE_PTR),
        result(k.kfree(z))
    ))?;
    let dma = KERNEL | GfpFlags::GFP_DMA;
    let d = k.kmalloc(100, dma)?;
    held.push(d);
    let cache = k
        .kmalloc_slab(100, dma)
        .map(|c| k.kmem_cache_name(c).map(|n| n.to_string()))
        .transpose()?
        .unwrap_or_default();
    let zone = k.page_zone(k.virt_to_page(d)?).name();
    t.say(format!(
        "> kmalloc(100, {dma}) = {d:#x} from {cache}, in zone {zone}: {}",
        yes(zone == "DMA")
    ))?;
    let high = KERNEL | GfpFlags::__GFP_HIGHMEM;
    match k.kmalloc(100, high) {
        Ok(p) => {
            t.say(format!("> kmalloc(100, {high}) = {p:#x}"))?;
            held.push(p);
        }
        Err(e) => t.say(format!("> kmalloc(100, {high}) = Err({e})"))?,
    }
    t.dmesg(m)?;
    t.say(format!("> kfree(NULL) = {}", result(k.kfree(0))))?;
    let inside = held[1] + 8;
    t.say(format!(
        "> kfree({inside:#x})   (8 bytes into the kmalloc(65) object) = {}",
        result(k.kfree(inside))
    ))?;
    dmesg_excerpt(t, m, no_banner)?;
    let page = k.__get_free_page(KERNEL)?;
    t.say(format!(
        "> kfree(__get_free_page(GFP_KERNEL) = {page:#x}) = {}",
        result(k.kfree(page))
    ))?;
    t.dmesg(m)?;
    k.free_page(page)?;
    for p in held {
        k.kfree(p)?;
    }
    t.say("> free_page(that page); kfree() of every object above = Ok")?;
    Ok(())
}

/// Reads a `struct student` (id, then the name pointer) and the name.
fn read_student(m: &Machine, stu: u64) -> Result<(u32, u64, String), Error> {
    let k = m.kmm();
    let ptr = k.arch().bits as usize / 8;
    let mut b = [0u8; 16];
    k.phys().read(k.__pa(stu)?, &mut b[..2 * ptr])?;
    let id = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let mut p = [0u8; 8];
    p[..ptr].copy_from_slice(&b[ptr..2 * ptr]);
    let name_ptr = u64::from_le_bytes(p);
    let name = if name_ptr == 0 {
        "(null)".to_string()
    } else {
        let mut s = [0u8; 16];
        k.phys().read(k.__pa(name_ptr)?, &mut s)?;
        let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        format!("\"{}\"", String::from_utf8_lossy(&s[..end]))
    };
    Ok((id, name_ptr, name))
}

/// `print_student()` of seed 000, as one line.
fn print_student(t: &mut Tour, m: &Machine, who: &str, stu: u64) -> Result<(u32, u64), Error> {
    let (id, name_ptr, name) = read_student(m, stu)?;
    t.say(format!(
        "> print_student({who}): student id is: {}, student name is: {name}",
        id as i32
    ))?;
    Ok((id, name_ptr))
}

/// Step: seed 000's `testslab` module, run for real.
fn testslab(t: &mut Tour, m: &Machine) -> Result<(), Error> {
    let k = m.kmm();
    t.step(
        "A cache of your own: seed 000's testslab module",
        "Code that allocates many objects of one type keeps a cache of them (LKD's slab layer,\n\
         LDD3's lookaside caches). A cache takes slabs of whole pages and cuts them into objects.\n\
         The constructor runs for every object of a slab when the slab is added, not on each\n\
         kmem_cache_alloc(), so it may run many times at once, and not at all for a reused object.",
    )?;
    m.take_log();
    let bits = k.arch().bits;
    let size = student_size(bits);
    let myslab = k.kmem_cache_create(
        "testslab",
        size,
        0,
        SlabFlags::SLAB_HWCACHE_ALIGN,
        Some(student_ctor),
    )?;
    t.say(format!(
        "> myslab = kmem_cache_create(\"testslab\", sizeof(struct student) = {size}, 0, SLAB_HWCACHE_ALIGN, student_ctor)"
    ))?;
    let created = grep_slabinfo(t, m, "testslab")?.is_some();
    let i0 = info(m, myslab)?;
    t.say(format!(
        "  objsize {}: the {size}-byte student, then the free-list link (it may not overwrite a constructed\n  object), rounded up to the alignment of {}; {} objects per {}-page slab",
        i0.size, i0.align, i0.objects_per_slab, i0.pages_per_slab
    ))?;

    let stu1 = k.kmem_cache_alloc(myslab, KERNEL)?;
    let i1 = info(m, myslab)?;
    t.say(format!(
        "> stu1 = kmem_cache_alloc(myslab, GFP_KERNEL) = {stu1:#x}: the cache grew by {} slab; \"constructor is running....\" x {}",
        i1.grown - i0.grown,
        i1.ctor_calls - i0.ctor_calls
    ))?;
    print_student(t, m, "stu1", stu1)?;
    let name = k.kmalloc(5, KERNEL)?;
    k.phys().write(k.__pa(name)?, b"wyb1\0")?;
    let ptr = bits as usize / 8;
    let mut rec = 1u32.to_le_bytes().to_vec();
    rec.resize(ptr, 0);
    rec.extend_from_slice(&name.to_le_bytes()[..ptr]);
    k.phys().write(k.__pa(stu1)?, &rec)?;
    t.say(format!(
        "> stu1->id = 1; stu1->name = \"wyb1\"   (the string kmalloc'ed at {name:#x})"
    ))?;
    print_student(t, m, "stu1", stu1)?;

    // Allocate until the cache has grown a second slab.
    let mut objs = Vec::new();
    let mut fresh = true;
    let mut grew_at = Vec::new();
    let mut last = i1;
    while last.grown < i1.grown + 1 && objs.len() < 100_000 {
        let o = k.kmem_cache_alloc(myslab, KERNEL)?;
        let (id, name_ptr, _) = read_student(m, o)?;
        fresh &= id == workload::STUDENT_FRESH_ID && name_ptr == 0;
        objs.push(o);
        let now = info(m, myslab)?;
        if now.grown > last.grown {
            grew_at.push(objs.len() + 1);
        }
        last = now;
    }
    t.say(format!(
        "> {} more kmem_cache_alloc(): allocation number {} found slab 1 full and grew the cache: {} slabs,\n  \"constructor is running....\" x {} in all (kmem_cache_info: ctor_calls = {})",
        objs.len(),
        grew_at.first().copied().unwrap_or(0),
        last.num_slabs,
        last.ctor_calls,
        last.ctor_calls
    ))?;
    t.say(format!(
        "  all {} fresh objects hold the constructor's state (id -1, name NULL): {}",
        objs.len(),
        yes(fresh)
    ))?;
    k.kmem_cache_free(myslab, stu1)?;
    let again = k.kmem_cache_alloc(myslab, KERNEL)?;
    t.say(format!(
        "> kmem_cache_free(myslab, stu1); kmem_cache_alloc() = {again:#x}: stu1 again: {}",
        yes(again == stu1)
    ))?;
    let (id, name_ptr) = print_student(t, m, "it", again)?;
    t.say(format!(
        "  it comes back as it was freed, not constructed again: {}",
        yes(id == 1 && name_ptr == name && info(m, myslab)?.ctor_calls == last.ctor_calls)
    ))?;
    grep_slabinfo(t, m, "testslab")?;

    // rmmod, with one student forgotten.
    let stu2 = objs.swap_remove(0);
    for o in objs {
        k.kmem_cache_free(myslab, o)?;
    }
    k.kfree(name)?;
    k.kmem_cache_free(myslab, again)?;
    m.take_log();
    t.say(format!(
        "> kmem_cache_free() of every object but one ({stu2:#x}); kfree(name)"
    ))?;
    let r = k.kmem_cache_destroy(myslab);
    let refused = r.is_err();
    t.say(format!("> kmem_cache_destroy(myslab) = {}", result(r)))?;
    dmesg_excerpt(t, m, no_banner)?;
    k.kmem_cache_free(myslab, stu2)?;
    let r = k.kmem_cache_destroy(myslab);
    let destroyed = r.is_ok();
    t.say(format!(
        "> kmem_cache_free(myslab, {stu2:#x}); kmem_cache_destroy(myslab) = {}",
        result(r)
    ))?;
    let gone = grep_slabinfo(t, m, "testslab")?.is_none();
    t.say(format!(
        "  the line appeared with kmem_cache_create() and went with kmem_cache_destroy(): {}; the\n  first destroy was refused while an object was in use: {}",
        yes(created && gone && destroyed),
        yes(refused)
    ))?;
    Ok(())
}

/// Step: seed 001's `scullc`, with data really written into the quanta.
fn scullc(t: &mut Tour, m: &Machine) -> Result<(), Error> {
    let k = m.kmm();
    t.step(
        "LDD3's scullc: a device's memory from its own cache",
        "scullc keeps the data written to it in quanta of 4000 bytes, each from its own slab cache\n\
         (scull, its sibling, uses kmalloc), listed in an array of 1000 pointers (the qset).",
    )?;
    m.take_log();
    let quantum = workload::SCULL_QUANTUM;
    let cache = k.kmem_cache_create("scullc", quantum, 0, SlabFlags::SLAB_HWCACHE_ALIGN, None)?;
    t.say(format!(
        "> scullc_cache = kmem_cache_create(\"scullc\", scullc_quantum = {quantum}, 0, SLAB_HWCACHE_ALIGN, NULL, NULL)"
    ))?;
    let bytes = 100_000usize;
    let data: Vec<u8> = (0..bytes).map(|i| (i * 7 + i / 4000) as u8).collect();
    let mut dev = ScullDev::new(m, Some(cache));
    dev.write(m, &data)?;
    let n = dev.quanta();
    t.say(format!(
        "> write(/dev/scullc0, {bytes} bytes): kmalloc() of the scull_qset and of its {} pointers,\n  {n} x kmem_cache_alloc(scullc_cache, GFP_KERNEL) + memset(0), the bytes copied into each quantum",
        workload::SCULL_QSET
    ))?;
    let back = dev.read(m)?;
    t.say(format!(
        "> read(/dev/scullc0, {bytes} bytes) through the qset's pointers: the same bytes: {}",
        yes(back == data)
    ))?;
    grep_slabinfo(t, m, "scullc")?;
    let i = info(m, cache)?;
    t.say(format!(
        "  {} object of {} bytes ({quantum} rounded up to a cache line) per {}-page slab, {} slabs for {n} quanta\n  ({} bytes of each slab left over; kmalloc({quantum}) would take a {}-byte object of {})",
        i.objects_per_slab,
        i.size,
        i.pages_per_slab,
        i.num_slabs,
        (k.page_size() << i.order) - i.objects_per_slab as u64 * i.size as u64,
        k.kmalloc_size_roundup(quantum),
        k.kmalloc_slab(quantum, KERNEL)
            .map(|c| k.kmem_cache_name(c).map(|n| n.to_string()))
            .transpose()?
            .unwrap_or_else(|| "the page allocator".into())
    ))?;
    let freed = dev.trim(m)?;
    let r = k.kmem_cache_destroy(cache);
    t.say(format!(
        "> scullc_trim(): {freed} x kmem_cache_free(), kfree() x 2; rmmod: kmem_cache_destroy(scullc_cache) = {}",
        result(r)
    ))?;
    Ok(())
}

/// Step: successive slabs start their objects at different offsets.
fn colouring(t: &mut Tour, m: &Machine) -> Result<(), Error> {
    let k = m.kmm();
    t.step(
        "Slab colouring",
        "When a slab's objects do not fill its pages exactly, the leftover bytes are used to shift\n\
         the first object of each new slab by one more cache line (its \"colour\"). Objects at the\n\
         same index in different slabs then fall on different hardware cache lines.",
    )?;
    m.take_log();
    let c = k.kmem_cache_create("colour700", 700, 0, SlabFlags::empty(), None)?;
    let i0 = info(m, c)?;
    let slab_bytes = k.page_size() << i0.order;
    let left = slab_bytes - i0.objects_per_slab as u64 * i0.size as u64;
    t.say(format!(
        "> kmem_cache_create(\"colour700\", 700, 0, 0, NULL): {} objects of {} bytes per {}, {left} bytes left over:\n  {} colours of {} bytes (offsets 0 to {})",
        i0.objects_per_slab,
        i0.size,
        format_size(slab_bytes),
        i0.colour,
        i0.colour_off,
        (i0.colour - 1) * i0.colour_off
    ))?;
    let want = i0.colour as usize + 2;
    let mut objs = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut slabs = Vec::new();
    while slabs.len() < want && objs.len() < 100_000 {
        objs.push(k.kmem_cache_alloc(c, KERNEL)?);
        if info(m, c)?.num_slabs as usize > slabs.len() {
            let mut new = Vec::new();
            k.kmem_cache_for_each_slab(c, &mut |s| {
                if !seen.contains(&s.pfn) {
                    new.push(*s);
                }
            })?;
            for s in new {
                seen.insert(s.pfn);
                slabs.push(s);
            }
        }
    }
    t.say(format!(
        "> {} x kmem_cache_alloc(): {} slabs, in the order they were added:",
        objs.len(),
        slabs.len()
    ))?;
    let mut expected = true;
    for (n, s) in slabs.iter().enumerate() {
        let colour = (n as u32) % i0.colour;
        expected &= s.colour_off == colour * i0.colour_off;
        t.say(format!(
            "  slab {:>2}: pfn {:#x}, first object at offset {:>3} ({:#x}, cache line {:>2} of its page)",
            n + 1,
            s.pfn,
            s.colour_off,
            s.first_object,
            (s.first_object % k.page_size()) / kmm::slab::CACHE_LINE_SIZE
        ))?;
    }
    t.say(format!(
        "  slab n starts at ((n - 1) mod {}) x {} bytes, wrapping round after the last colour: {}",
        i0.colour,
        i0.colour_off,
        yes(expected && slabs.len() == want)
    ))?;
    for o in objs {
        k.kmem_cache_free(c, o)?;
    }
    t.say(format!(
        "> kmem_cache_free() of all; kmem_cache_destroy() = {}",
        result(k.kmem_cache_destroy(c))
    ))?;
    Ok(())
}

/// Keeps the lines of a SLUB report a reader needs: the BUG line, what was
/// damaged, who allocated and freed the object, the object's bytes and the
/// FIX lines.
fn report_line(l: &str) -> bool {
    l.starts_with("BUG ")
        || l.starts_with("0x")
        || l.starts_with("Allocated in")
        || l.starts_with("Freed in")
        || l.starts_with("Object ")
        || l.starts_with("Redzone ")
        || l.starts_with("FIX ")
}

/// Step: red zones, poison and owner tracking catch three classic bugs.
fn debugging(t: &mut Tour, m: &Machine) -> Result<(), Error> {
    let k = m.kmm();
    t.step(
        "Catching bugs: red zones, poison, double frees (slub_debug)",
        "With SLAB_RED_ZONE each object has guard bytes on both sides (0xbb while free, 0xcc in\n\
         use); SLAB_POISON fills free objects with 0x6b (ending in 0xa5); SLAB_STORE_USER records\n\
         who allocated and freed each object. Damage is found when the object next changes hands,\n\
         and reported as Linux's SLUB reports it (here trimmed to the telling lines).",
    )?;
    m.take_log();
    let flags = SlabFlags::SLAB_POISON | SlabFlags::SLAB_RED_ZONE | SlabFlags::SLAB_STORE_USER;
    let c = k.kmem_cache_create("dbgtest", 32, 0, flags, None)?;
    let i = info(m, c)?;
    t.say(format!(
        "> kmem_cache_create(\"dbgtest\", 32, 0, SLAB_POISON|SLAB_RED_ZONE|SLAB_STORE_USER, NULL): {} bytes per 32-byte object",
        i.size
    ))?;
    let errors0 = k
        .events
        .slab_errors
        .load(std::sync::atomic::Ordering::Relaxed);

    // 1. One byte too many.
    let p = k.kmem_cache_alloc(c, KERNEL)?;
    let text = b"a string of exactly 32 characters";
    k.phys().write(k.__pa(p)?, &text[..32])?;
    k.phys().write(k.__pa(p)? + 32, &[0])?;
    t.say(format!(
        "> p = kmem_cache_alloc() = {p:#x}; strcpy(p, a 32-character string): its NUL lands in the red zone"
    ))?;
    let r = k.kmem_cache_free(c, p);
    let caught_redzone = matches!(r, Err(KmmError::BadObject { .. }));
    t.say(format!("> kmem_cache_free(dbgtest, p) = {}", result(r)))?;
    dmesg_excerpt(t, m, report_line)?;
    t.say(format!(
        "> kmem_cache_free(dbgtest, p) again = {}   (the red zone was restored)",
        result(k.kmem_cache_free(c, p))
    ))?;

    // 2. Use after free.
    k.phys().write(k.__pa(p)? + 8, b"late")?;
    t.say("> memcpy(p + 8, \"late\", 4) after the free: a write to a free object")?;
    let q = k.kmem_cache_alloc(c, KERNEL)?;
    t.say(format!(
        "> kmem_cache_alloc() = {q:#x} (the same object: {}); the poison check finds the write:",
        yes(q == p)
    ))?;
    let log = m.take_log();
    let caught_poison = log.iter().any(|l| l.contains("Poison overwritten"));
    show_log(t, &log, report_line)?;

    // 3. Double free.
    k.kmem_cache_free(c, q)?;
    let r = k.kmem_cache_free(c, q);
    let caught_double = r.is_err();
    t.say(format!(
        "> kmem_cache_free(dbgtest, q) = Ok; kmem_cache_free(dbgtest, q) again = {}",
        result(r)
    ))?;
    dmesg_excerpt(t, m, |l| {
        l.starts_with("BUG ") || l.starts_with("Allocated in") || l.starts_with("Freed in")
    })?;
    let errors = k
        .events
        .slab_errors
        .load(std::sync::atomic::Ordering::Relaxed)
        - errors0;
    t.say(format!(
        "  caught: the overrun {}, the use after free {}, the double free {} ({errors} reports)",
        yes(caught_redzone),
        yes(caught_poison),
        yes(caught_double)
    ))?;
    t.say(format!(
        "> kmem_cache_destroy(dbgtest) = {}",
        result(k.kmem_cache_destroy(c))
    ))?;
    Ok(())
}

/// Step: a mempool's reserve while the page allocator is exhausted (LDD3's
/// `mempool_create(MY_POOL_MINIMUM, mempool_alloc_slab, mempool_free_slab, cache)`).
fn mempool(t: &mut Tour, m: &Machine) -> Result<(), Error> {
    let k = m.kmm();
    t.step(
        "Mempools: a reserve for allocations that must not fail",
        "mempool_create(min_nr, alloc_fn, free_fn, data) fills a reserve of min_nr elements.\n\
         mempool_alloc() tries alloc_fn first and takes from the reserve only when that fails; with\n\
         the reserve empty, a caller that may sleep waits for a mempool_free(), an atomic one fails.",
    )?;
    m.take_log();
    // Nothing left to reclaim, so that exhaustion stays exhausted.
    for c in k.kmem_caches().iter() {
        k.kmem_cache_shrink(c)?;
    }
    k.drain_all_pages();
    let free0 = k.nr_free_pages();
    let cache = k.kmem_cache_create("my_pool_cache", 256, 0, SlabFlags::empty(), None)?;
    let pool = k.mempool_create(4, mempool_alloc_slab, mempool_free_slab, cache.to_raw())?;
    let st = k.mempool_stats(&pool);
    t.say(format!(
        "> cache = kmem_cache_create(\"my_pool_cache\", 256, 0, 0, NULL)\n\
         > pool = mempool_create(MY_POOL_MINIMUM = 4, mempool_alloc_slab, mempool_free_slab, cache): {} objects in reserve",
        st.curr_nr
    ))?;
    let mut held = Vec::new();
    for order in (0..kmm::MAX_ORDER as u32).rev() {
        while let Ok(p) = k.alloc_pages(ATOMIC | GfpFlags::__GFP_NOWARN, order) {
            held.push((p, order));
        }
    }
    let taken: u64 = held.iter().map(|(_, o)| 1u64 << o).sum();
    let empty = k.alloc_page(ATOMIC | GfpFlags::__GFP_NOWARN).is_err();
    t.say(format!(
        "> alloc_pages(GFP_ATOMIC|__GFP_NOWARN, 10..0) until each fails: {taken} pages; the page allocator is empty: {}",
        yes(empty)
    ))?;
    let mut got = Vec::new();
    let failure = loop {
        match k.mempool_alloc(&pool, ATOMIC) {
            Ok(e) => got.push(e),
            Err(e) => break e,
        }
        if got.len() > 100_000 {
            return Err(Error::Msg("the mempool never ran dry".into()));
        }
    };
    let st = k.mempool_stats(&pool);
    let i = info(m, cache)?;
    t.say(format!(
        "> mempool_alloc(pool, GFP_ATOMIC) until it fails: {} elements: {} from the cache (the rest of its\n  {} slab(s) of {} objects; it cannot grow without pages), then {} from the reserve",
        got.len(),
        got.len() as u64 - st.from_reserve,
        i.num_slabs,
        i.objects_per_slab,
        st.from_reserve
    ))?;
    t.say(format!(
        "> mempool_alloc(pool, GFP_ATOMIC) = Err({failure})\n  the reserve is empty: {}; an atomic caller cannot wait",
        yes(st.curr_nr == 0)
    ))?;
    // A caller that may sleep, on CPU 1, waits until we free an element.
    let (waited, freed, elem) = std::thread::scope(|s| -> Result<(bool, u64, u64), Error> {
        let waiter = s.spawn(|| {
            m.cpus().run_on_cpu(1, || {
                k.mempool_alloc(&pool, KERNEL | GfpFlags::__GFP_NOWARN)
            })
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while k.mempool_stats(&pool).waits == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let waited = k.mempool_stats(&pool).waits > 0;
        let freed = got.pop().unwrap_or(0);
        k.mempool_free(&pool, freed)?;
        let elem = waiter
            .join()
            .map_err(|_| Error::Msg("the mempool waiter panicked".into()))???;
        Ok((waited, freed, elem))
    })?;
    t.say(format!(
        "> on CPU 1: mempool_alloc(pool, GFP_KERNEL) sleeps: {}; we mempool_free({freed:#x});\n  CPU 1 wakes up with {elem:#x}, the element just freed: {}",
        yes(waited),
        yes(elem == freed)
    ))?;
    got.push(elem);
    let n = got.len();
    for e in got {
        k.mempool_free(&pool, e)?;
    }
    let st = k.mempool_stats(&pool);
    t.say(format!(
        "> mempool_free() x {n}: the reserve is refilled first (curr_nr {} of min_nr {}), the rest go back to the cache",
        st.curr_nr, st.min_nr
    ))?;
    for (p, order) in held {
        k.__free_pages(p, order)?;
    }
    let r = k.mempool_destroy(pool).map_err(|(e, _)| e);
    let d = k.kmem_cache_destroy(cache);
    // The cache's per-CPU arrays were kmalloc'ed: shrink the kmalloc caches too.
    for c in k.kmem_caches().iter() {
        k.kmem_cache_shrink(c)?;
    }
    k.drain_all_pages();
    t.say(format!(
        "> __free_pages() of every page taken; mempool_destroy(pool) = {}; kmem_cache_destroy(cache) = {}\n  free pages as before the pool (the kmalloc caches shrunk too): {}",
        result(r),
        result(d),
        yes(k.nr_free_pages() == free0)
    ))?;
    Ok(())
}

/// Step: `/proc/meminfo`'s slab lines and slabtop after a workload.
fn totals(t: &mut Tour, m: &Machine) -> Result<(), Error> {
    let k = m.kmm();
    t.step(
        "Slab memory in /proc/meminfo, and slabtop",
        "Slab is the memory in slab pages (and large kmallocs); SReclaimable the part the kernel\n\
         can get back under pressure (caches made with SLAB_RECLAIM_ACCOUNT), SUnreclaim the rest.\n\
         `kmm slabtop` runs a workload of the seeds' caches and devices and lists the caches as\n\
         slabtop does; here is the same workload on this machine.",
    )?;
    m.take_log();
    let mut w = Running::start(m, WorkloadName::Scull)?;
    for line in &w.summary {
        t.say(format!("> {line}"))?;
    }
    let meminfo = kmm_sim::procfs::read(m, "/proc/meminfo")?;
    t.say("$ grep -E 'MemFree|Slab|SReclaimable|SUnreclaim' /proc/meminfo")?;
    for line in meminfo.lines() {
        if ["MemFree:", "Slab:", "SReclaimable:", "SUnreclaim:"]
            .iter()
            .any(|f| line.starts_with(f))
        {
            t.say(line)?;
        }
    }
    let pages = k.nr_slab_reclaimable() + k.nr_slab_unreclaimable();
    let rows = slabtop::rows(k);
    let in_caches: u64 = rows.iter().map(|r| r.cache_size).sum();
    t.say(format!(
        "  Slab = the CACHE SIZE column of slabtop added up ({}K; no large kmalloc is live): {}",
        in_caches >> 10,
        yes(pages * k.page_size() == in_caches)
    ))?;
    t.say("$ kmm slabtop --sort c   (the top of the listing)")?;
    let listing = slabtop::listing(k, slabtop::SortKey::CacheSize);
    for line in listing.lines().take(13) {
        t.say(line)?;
    }
    w.release(m)?;
    for c in k.kmem_caches().iter() {
        k.kmem_cache_shrink(c)?;
    }
    k.drain_all_pages();
    t.say(format!(
        "> the workload frees everything and destroys its caches; kmem_cache_shrink() of every cache:\n  Slab {} kB, every slab page back with the page allocator: {}",
        (k.nr_slab_reclaimable() + k.nr_slab_unreclaimable()) << (k.page_shift() - 10),
        yes(k.nr_slab_reclaimable() + k.nr_slab_unreclaimable() == 0)
    ))?;
    Ok(())
}
