//! Tour step: kmm's kmalloc as a Rust allocator (`KmmHeap`).

use super::{yes, Tour};
use crate::Error;
use allocator_api2::vec::Vec as AVec;
use kmm_heap::KmmHeap;

/// The tour's own heap: a 256 MiB region of host memory, booted on first use.
static HEAP: KmmHeap = KmmHeap::new(256 << 20).with_page_size(4096).with_cpus(2);

/// The slabinfo rows of the caches named in `names`.
fn rows(heap: &kmm_heap::HeapKmm, names: &[&str]) -> Vec<String> {
    let mut s = String::new();
    if kmm::slab_common::slabinfo(heap, &mut s).is_err() {
        return Vec::new();
    }
    s.lines()
        .filter(|l| names.iter().any(|n| l.split_whitespace().next() == Some(n)))
        .map(str::to_owned)
        .collect()
}

/// Builds a vector of byte strings in a `KmmHeap` through `allocator_api2`
/// and shows which kmalloc caches hold them.
pub fn step(t: &mut Tour) -> Result<(), Error> {
    t.step(
        "kmm as a Rust allocator: KmmHeap",
        "crates/kmm-heap boots kmm on a region of host memory and serves Rust allocations\n\
         from kmalloc: as the #[global_allocator] of a program, or per collection through\n\
         allocator_api2. Here 10000 strings of 10 to 13 bytes go into a vector that lives in\n\
         the heap too; each string is one kmalloc-16 object, the vector's buffer one kmalloc\n\
         from the page allocator once it outgrows kmalloc-8k.",
    )?;
    let k = HEAP
        .boot()
        .map_err(|e| Error::from(format!("KmmHeap: {e}")))?;
    k.drain_all_pages();
    let free_before = k.nr_free_pages();
    let caches = ["kmalloc-16", "kmalloc-8k"];
    {
        let mut v: AVec<AVec<u8, &KmmHeap>, &KmmHeap> = AVec::new_in(&HEAP);
        for i in 0..10_000 {
            let mut s = AVec::new_in(&HEAP);
            s.extend_from_slice(format!("student {i}").as_bytes());
            v.push(s);
        }
        let right = v
            .iter()
            .enumerate()
            .all(|(i, s)| s.as_slice() == format!("student {i}").as_bytes());
        let in_heap = v.iter().all(|s| HEAP.owns(s.as_ptr())) && HEAP.owns(v.as_ptr() as *const u8);
        t.say(format!(
            "> let v = Vec::new_in(&HEAP); 10000 x v.push(\"student N\" in its own Vec::new_in(&HEAP))\n  \
             every string reads back right: {}; every buffer inside the heap's region: {}",
            yes(right),
            yes(in_heap)
        ))?;
        t.say("$ grep -E 'kmalloc-16 |kmalloc-8k ' /proc/slabinfo   (the heap's kmm)")?;
        for r in rows(k, &caches) {
            t.say(r)?;
        }
        // The buffer's host address back to a physical address, then its page.
        let (base, _) = HEAP.region().unwrap_or((0, 0));
        let phys = (v.as_ptr() as usize).wrapping_sub(base) as u64;
        let from_pages = k.phys_to_page(phys).is_ok_and(|p| !p.is_slab());
        t.say(format!(
            "  the vector's buffer ({}K of capacity) is a block from the page allocator, not a slab: {}",
            v.capacity() * std::mem::size_of::<AVec<u8, &KmmHeap>>() / 1024,
            yes(from_pages)
        ))?;
    }
    let shrunk = HEAP.shrink();
    t.say(format!(
        "> drop(v); then every cache shrunk ({shrunk} pages) and the per-CPU lists drained:\n  \
         free pages as before: {}",
        yes(k.nr_free_pages() == free_before)
    ))?;
    t.say(
        "  `cargo run --release -p kmm-heap --example maps_of_strings` runs a whole program on it.",
    )?;
    Ok(())
}
