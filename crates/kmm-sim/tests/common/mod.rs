//! Helpers shared by the integration tests: booting machines, snapshots of
//! the allocator's counters, and the frame-state checker behind the
//! page-allocator invariants of DESIGN.md.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use kmm::{GfpFlags, Kmm, KmmError, Page, PageFlags, MAX_ORDER};
use kmm_sim::{Machine, MachineConfig, SimPlatform};

/// The memory manager of a simulated machine.
pub type K = Kmm<SimPlatform>;

/// One MiB.
pub const M: u64 = 1 << 20;
/// One GiB.
pub const G: u64 = 1 << 30;

/// A machine description.
pub fn config(arch: &str, ram: u64, cpus: usize, nodes: usize) -> MachineConfig {
    MachineConfig {
        arch: kmm::Arch::by_name(arch).expect("known profile"),
        ram,
        page_size: 4096,
        cpus,
        nodes,
    }
}

/// Boots a machine or panics with the reason.
pub fn boot(arch: &str, ram: u64, cpus: usize, nodes: usize) -> Machine {
    boot_cfg(config(arch, ram, cpus, nodes))
}

/// Boots `cfg` or panics with the reason.
pub fn boot_cfg(cfg: MachineConfig) -> Machine {
    let desc = format!("{cfg:?}");
    match Machine::boot(cfg) {
        Ok(m) => {
            // The boot log is not what these tests look at.
            let _ = m.take_log();
            m
        }
        Err(e) => panic!("{desc} did not boot: {e}"),
    }
}

/// An allocation the test holds: first frame, order, and whether it was
/// made with `__GFP_COMP`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Alloc {
    pub pfn: u64,
    pub order: u32,
    pub comp: bool,
}

impl Alloc {
    /// Records an allocation the library just returned.
    pub fn of(k: &K, page: &Page, order: u32, gfp: GfpFlags) -> Alloc {
        Alloc {
            pfn: k.page_to_pfn(page).expect("allocated page is in mem_map"),
            order,
            comp: gfp.contains(GfpFlags::__GFP_COMP) && order > 0,
        }
    }

    /// The head page.
    pub fn page<'k>(&self, k: &'k K) -> &'k Page {
        k.pfn_to_page(self.pfn).expect("held pfn is valid")
    }

    /// Frees it with `__free_pages`.
    pub fn free(&self, k: &K) -> Result<(), KmmError> {
        k.__free_pages(self.page(k), self.order)
    }
}

/// `/proc/buddyinfo` as numbers: `(nid, zone index, free blocks per order)`
/// for every zone.
pub type BuddyInfo = Vec<(usize, usize, [u64; MAX_ORDER])>;

/// The free-block counts of every zone.
pub fn buddyinfo(k: &K) -> BuddyInfo {
    k.zones()
        .map(|z| (z.nid(), z.idx(), z.free_area_counts()))
        .collect()
}

/// Everything a failed or refused call must leave unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub buddy: BuddyInfo,
    pub zone_free: Vec<u64>,
    pub nr_free: u64,
    pub pcp: Vec<u32>,
}

/// Takes a [`Snapshot`].
pub fn snapshot(k: &K) -> Snapshot {
    let ncpu = k.nr_cpu_ids();
    Snapshot {
        buddy: buddyinfo(k),
        zone_free: k.zones().map(|z| z.free_pages()).collect(),
        nr_free: k.nr_free_pages(),
        pcp: k
            .zones()
            .flat_map(|z| (0..ncpu).map(move |c| z.pcp(c).map_or(0, |p| p.count())))
            .collect(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Unclaimed,
    Free,
    PerCpu,
    Allocated,
}

const NO_BLOCK: u8 = u8::MAX;

/// Checks the page-allocator invariants of DESIGN.md against the frames the
/// test knows it holds (`allocs`):
///
/// - every frame is in exactly one state: reserved (`PG_reserved`, on no
///   list), free inside exactly one buddy block (whose head has `PageBuddy`,
///   `private` = order, natural alignment, and lies inside its zone), on
///   exactly one per-CPU list, or inside one allocation the test holds;
/// - each zone's `nr_free_pages` and `free_area[order].nr_free` equal what
///   its lists hold, each per-CPU `count` equals its list's length, and
///   managed = free + per-CPU + allocated, summing to `totalram_pages`;
/// - no two free buddies of the same order sit side by side (coalescing is
///   complete);
/// - allocated blocks carry their order, a reference, and compound heads and
///   tails when made with `__GFP_COMP`.
pub fn check_frames(k: &K, allocs: &[Alloc]) -> Result<(), String> {
    let map = k.mem_map();
    let max = k.max_pfn() as usize;
    if map.len() < max {
        return Err(format!("mem_map has {} pages, max_pfn {max}", map.len()));
    }
    let mut state = vec![State::Unclaimed; max];
    // Order of the free block a pfn heads (NO_BLOCK otherwise).
    let mut head_order = vec![NO_BLOCK; max];
    let nr_zones = k.arch().nr_zones();
    // Per (nid, zone idx): pages free, on pcp lists, allocated.
    let mut used = vec![[0u64; 3]; k.nr_node_ids() * nr_zones];
    let zslot = |p: &Page| p.nid() * nr_zones + p.zone_idx();

    let mut claim = |pfn: u64, s: State, what: &str| -> Result<(), String> {
        let i = pfn as usize;
        if i >= max {
            return Err(format!("{what}: pfn {pfn:#x} beyond max_pfn {max:#x}"));
        }
        if state[i] != State::Unclaimed {
            return Err(format!(
                "pfn {pfn:#x} is both {:?} and {what} (flags {:#x})",
                state[i],
                map[i].raw_flags()
            ));
        }
        state[i] = s;
        Ok(())
    };

    for z in k.zones() {
        let here = |p: &Page| p.nid() == z.nid() && p.zone_idx() == z.idx();
        let zname = format!("node {} zone {}", z.nid(), z.name());
        // Buddy lists.
        let mut blocks = Vec::new();
        z.for_each_free_block(map, |o, pfn| blocks.push((o, pfn)));
        let mut nr_free = [0u64; MAX_ORDER];
        let mut free_pages = 0u64;
        for &(o, pfn) in &blocks {
            let what = format!("free order-{o} block at {pfn:#x} in {zname}");
            let head = &map[pfn as usize];
            if !head.is_buddy() || head.private() != o {
                return Err(format!(
                    "{what}: head flags {:#x}, private {} (want PageBuddy, order {o})",
                    head.raw_flags(),
                    head.private()
                ));
            }
            if pfn % (1 << o) != 0 {
                return Err(format!("{what}: not aligned to its order"));
            }
            if pfn < z.zone_start_pfn() || pfn + (1 << o) > z.zone_end_pfn() {
                return Err(format!(
                    "{what}: outside the zone [{:#x}, {:#x})",
                    z.zone_start_pfn(),
                    z.zone_end_pfn()
                ));
            }
            for q in pfn..pfn + (1 << o) {
                let p = &map[q as usize];
                claim(q, State::Free, &what)?;
                if !here(p) || p.is_reserved() || p.page_count() != 0 {
                    return Err(format!(
                        "{what}: page {q:#x} flags {:#x} refcount {}",
                        p.raw_flags(),
                        p.page_count()
                    ));
                }
                if q != pfn && p.is_buddy() {
                    return Err(format!("{what}: inner page {q:#x} has PageBuddy"));
                }
            }
            head_order[pfn as usize] = o as u8;
            nr_free[o as usize] += 1;
            free_pages += 1 << o;
        }
        if nr_free != z.free_area_counts() {
            return Err(format!(
                "{zname}: lists hold {nr_free:?} blocks, nr_free says {:?}",
                z.free_area_counts()
            ));
        }
        if free_pages != z.free_pages() {
            return Err(format!(
                "{zname}: lists hold {free_pages} pages, nr_free_pages says {}",
                z.free_pages()
            ));
        }
        used[z.nid() * nr_zones + z.idx()][0] = free_pages;
        // Per-CPU lists.
        for cpu in 0..k.nr_cpu_ids() {
            let Some(pcp) = z.pcp(cpu) else { continue };
            let mut pages = Vec::new();
            k.pcp_for_each_block(z, cpu, |order, pfn| {
                pages.extend(pfn..pfn + (1u64 << order))
            });
            if pages.len() != pcp.count() as usize {
                return Err(format!(
                    "{zname} cpu {cpu}: list holds {} pages, count says {}",
                    pages.len(),
                    pcp.count()
                ));
            }
            for &pfn in &pages {
                let what = format!("page {pfn:#x} on cpu {cpu}'s list of {zname}");
                claim(pfn, State::PerCpu, &what)?;
                let p = &map[pfn as usize];
                if !here(p) || p.is_buddy() || p.is_reserved() || p.page_count() != 0 {
                    return Err(format!(
                        "{what}: flags {:#x} refcount {}",
                        p.raw_flags(),
                        p.page_count()
                    ));
                }
            }
            used[z.nid() * nr_zones + z.idx()][1] += pages.len() as u64;
        }
    }

    for a in allocs {
        let what = format!("allocation {a:?}");
        let head = &map[a.pfn as usize];
        if head.alloc_order() != Some(a.order) || head.page_count() < 1 {
            return Err(format!(
                "{what}: head alloc_order {:?} refcount {}",
                head.alloc_order(),
                head.page_count()
            ));
        }
        if a.pfn % (1 << a.order) != 0 {
            return Err(format!("{what}: not aligned to its order"));
        }
        if head.is_head() != a.comp {
            return Err(format!("{what}: PageHead is {}", head.is_head()));
        }
        let slot = zslot(head);
        for q in a.pfn..a.pfn + (1 << a.order) {
            claim(q, State::Allocated, &what)?;
            let p = &map[q as usize];
            let bad_flags = p.is_buddy() || p.is_reserved();
            if bad_flags || zslot(p) != slot {
                return Err(format!("{what}: page {q:#x} flags {:#x}", p.raw_flags()));
            }
            if q != a.pfn {
                let tail_ok = if a.comp {
                    p.is_tail() && p.private() as u64 == a.pfn
                } else {
                    !p.is_tail() && !p.is_head()
                };
                if !tail_ok || p.page_count() != 0 {
                    return Err(format!(
                        "{what}: inner page {q:#x} flags {:#x} private {} refcount {}",
                        p.raw_flags(),
                        p.private(),
                        p.page_count()
                    ));
                }
            }
        }
        used[slot][2] += 1 << a.order;
    }

    // Everything else must be reserved, and nothing claimed may be.
    for (pfn, s) in state.iter().enumerate() {
        let p = &map[pfn];
        match (s, p.is_reserved()) {
            (State::Unclaimed, true) | (State::Free, false) => {}
            (State::PerCpu, false) | (State::Allocated, false) => {}
            (State::Unclaimed, false) => {
                return Err(format!(
                    "pfn {pfn:#x} (flags {:#x}, refcount {}) is on no list, not reserved and not held: leaked",
                    p.raw_flags(),
                    p.page_count()
                ))
            }
            (s, true) => return Err(format!("pfn {pfn:#x} is reserved and {s:?}")),
        }
        if *s == State::Unclaimed && p.is_buddy() {
            return Err(format!("reserved pfn {pfn:#x} has PageBuddy"));
        }
    }

    // Unmerged buddies.
    for z in k.zones() {
        for pfn in z.zone_start_pfn()..z.zone_end_pfn() {
            let o = head_order[pfn as usize];
            if o == NO_BLOCK || o as usize >= MAX_ORDER - 1 {
                continue;
            }
            let buddy = pfn ^ (1 << o);
            if buddy >= z.zone_start_pfn()
                && buddy < z.zone_end_pfn()
                && head_order[buddy as usize] == o
            {
                return Err(format!(
                    "free order-{o} buddies {pfn:#x} and {buddy:#x} were not merged"
                ));
            }
        }
    }

    // managed = free + per-CPU + allocated, per zone and in total.
    let mut total = 0;
    for z in k.zones() {
        let [f, c, a] = used[z.nid() * nr_zones + z.idx()];
        if f + c + a != z.managed_pages() {
            return Err(format!(
                "node {} zone {}: managed {} != free {f} + pcp {c} + allocated {a}",
                z.nid(),
                z.name(),
                z.managed_pages()
            ));
        }
        total += z.managed_pages();
    }
    if total != k.totalram_pages() {
        return Err(format!(
            "zones manage {total} pages, totalram_pages is {}",
            k.totalram_pages()
        ));
    }
    Ok(())
}

/// Frees every allocation, drains the per-CPU lists and checks that the
/// buddy lists are back to `boot` (full coalescing).
pub fn free_all_and_check_coalesced(
    k: &K,
    allocs: &mut Vec<Alloc>,
    boot: &BuddyInfo,
) -> Result<(), String> {
    for a in allocs.drain(..) {
        a.free(k).map_err(|e| format!("freeing {a:?}: {e}"))?;
    }
    k.drain_all_pages();
    check_frames(k, &[])?;
    let now = buddyinfo(k);
    if &now != boot {
        return Err(format!(
            "buddy lists did not coalesce back:\n boot {boot:?}\n  now {now:?}"
        ));
    }
    Ok(())
}

/// Allocates with `gfp | __GFP_NOWARN` until the allocator refuses, at
/// `top_order` first and then at each smaller order, and returns what it got.
pub fn exhaust(k: &K, gfp: GfpFlags, top_order: u32) -> Vec<Alloc> {
    let gfp = gfp | GfpFlags::__GFP_NOWARN;
    let mut held = Vec::new();
    for order in (0..=top_order).rev() {
        while let Ok(p) = k.alloc_pages(gfp, order) {
            held.push(Alloc::of(k, p, order, gfp));
        }
    }
    held
}

/// Frees allocations, panicking on an error.
pub fn free_all(k: &K, allocs: impl IntoIterator<Item = Alloc>) {
    for a in allocs {
        if let Err(e) = a.free(k) {
            panic!("freeing {a:?}: {e}");
        }
    }
}

/// True when some log line contains `needle`.
pub fn logged(log: &[String], needle: &str) -> bool {
    log.iter().any(|l| l.contains(needle))
}

/// A small deterministic random number generator (SplitMix64).
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Linux's `int_sqrt()`, written independently of the library's.
pub fn int_sqrt(x: u64) -> u64 {
    let mut r = (x as f64).sqrt() as u64;
    while r * r > x {
        r -= 1;
    }
    while (r + 1) * (r + 1) <= x {
        r += 1;
    }
    r
}

/// Pages that are neither reserved nor anything else, counted per zone
/// straight from the page flags: at boot, the pages each zone manages.
pub fn unreserved_per_zone(k: &K) -> Vec<u64> {
    let nz = k.arch().nr_zones();
    let mut v = vec![0u64; k.nr_node_ids() * nz];
    for p in &k.mem_map()[..k.max_pfn() as usize] {
        if !p.flags().contains(PageFlags::RESERVED) {
            v[p.nid() * nz + p.zone_idx()] += 1;
        }
    }
    v
}

/// Writes `data` at kernel virtual address `addr` of simulated RAM.
pub fn write(k: &K, addr: u64, data: &[u8]) {
    k.phys().write(k.__pa(addr).unwrap(), data).unwrap();
}

/// Reads `len` bytes at kernel virtual address `addr` of simulated RAM.
pub fn read(k: &K, addr: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    k.phys().read(k.__pa(addr).unwrap(), &mut b).unwrap();
    b
}

/// `kmem_cache_shrink()` on every cache.
pub fn shrink_all(k: &K) {
    for c in k.kmem_caches().iter() {
        k.kmem_cache_shrink(c).unwrap();
    }
}

/// The value of a `/proc/meminfo` field, in kB.
pub fn meminfo_kb(k: &K, field: &str) -> u64 {
    let mut s = String::new();
    kmm::proc_meminfo::meminfo(k, &mut s).unwrap();
    s.lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .and_then(|r| r.strip_prefix(':'))
                .map(|r| r.trim().trim_end_matches(" kB").parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no {field} in {s}"))
}

/// The value of a `/proc/vmstat` counter.
pub fn vmstat_value(k: &K, field: &str) -> u64 {
    let mut s = String::new();
    kmm::vmstat::vmstat(k, &mut s).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {field} in {s}"))
        .parse()
        .unwrap()
}
