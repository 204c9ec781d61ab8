//! Large maps of strings under kmm's kmalloc, against the system allocator.
//!
//! The whole program runs with [`KmmHeap`] as its global allocator. It runs
//! the same multi-threaded workload twice — first with the heap switched
//! off (every new allocation goes to the system allocator), then switched
//! on (kmalloc serves them) — compares every phase's checksums, and shows
//! what kmm saw: the busiest kmalloc caches at the peak, and free memory
//! before, at the peak and after everything was dropped.
//!
//! ```text
//! cargo run --release -p kmm-heap --example maps_of_strings [-- --threads 8 --keys 40000]
//! ```
//!
//! Exits with status 1 if any checksum differs.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use kmm_heap::workload::{PhaseSums, Workload};
use kmm_heap::{HeapKmm, KmmHeap};

#[global_allocator]
static HEAP: KmmHeap = KmmHeap::new(2 << 30);

/// What kmm looked like at one moment.
struct Snapshot {
    free_kb: u64,
    slab_kb: u64,
    /// `/proc/slabinfo` rows of the kmalloc caches with most active objects.
    busiest: Vec<String>,
}

fn snapshot(k: &HeapKmm, rows: usize) -> Snapshot {
    let kb = |pages: u64| pages << (k.page_shift() - 10);
    let mut text = String::new();
    let _ = kmm::slab_common::slabinfo(k, &mut text);
    let mut caches: Vec<(u64, String)> = k
        .kmem_caches()
        .iter()
        .filter_map(|c| k.kmem_cache_info(c).ok())
        .filter(|i| i.kmalloc && i.active_objs > 0)
        .map(|i| (i.active_objs, i.name.as_str().to_string()))
        .collect();
    caches.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let busiest = caches
        .iter()
        .take(rows)
        .filter_map(|(_, name)| {
            text.lines()
                .find(|l| l.split_whitespace().next() == Some(name.as_str()))
                .map(str::to_string)
        })
        .collect();
    Snapshot {
        free_kb: kb(k.nr_free_pages()),
        slab_kb: kb(k.nr_slab_reclaimable() + k.nr_slab_unreclaimable()),
        busiest,
    }
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs the workload; returns the sums and the wall time minus the time
/// spent in the peak hook.
fn timed(w: &Workload, at_peak: impl FnOnce()) -> (Vec<PhaseSums>, Duration) {
    let mut hook = Duration::ZERO;
    let t = Instant::now();
    let sums = w.run(|| {
        let h = Instant::now();
        at_peak();
        hook = h.elapsed();
    });
    (sums, t.elapsed().saturating_sub(hook))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let w = Workload {
        threads: arg(&args, "--threads", 8),
        keys: arg(&args, "--keys", 40_000),
        seed: 0x6b6d_6d2d_6865_6170,
    };
    let Some(k) = HEAP.kmm() else {
        eprintln!("maps_of_strings: the kmm heap did not boot");
        return ExitCode::FAILURE;
    };
    println!(
        "workload: {} threads x {} keys (HashMap<String, Vec<String>> + BTreeMap<String, usize>)",
        w.threads, w.keys
    );
    println!(
        "heap: {} MiB region, {} KiB pages, {} CPUs, KMALLOC_MAX_SIZE {} MiB",
        HEAP.region().map_or(0, |r| r.1 >> 20),
        k.page_size() >> 10,
        k.nr_cpu_ids(),
        HEAP.max_kmalloc().unwrap_or(0) >> 20
    );

    // 1. The system allocator.
    HEAP.set_enabled(false);
    let (sys, t_sys) = timed(&w, || {});

    // 2. kmm's kmalloc.
    HEAP.set_enabled(true);
    HEAP.shrink();
    let before = snapshot(k, 0);
    let mut peak = None;
    let (kmm_sums, t_kmm) = timed(&w, || peak = Some(snapshot(k, 6)));
    let after_drop = snapshot(k, 0);
    HEAP.shrink();
    let after_shrink = snapshot(k, 0);

    let mut same = sys.len() == kmm_sums.len();
    println!();
    println!(
        "{:>6}  {:>16}  {:>16}  {:>16}  {:>12}  same",
        "thread", "build", "query", "mutate", "string bytes"
    );
    for (t, (a, b)) in sys.iter().zip(&kmm_sums).enumerate() {
        let ok = a == b;
        same &= ok;
        println!(
            "{t:>6}  {:016x}  {:016x}  {:016x}  {:>12}  {}",
            b.build,
            b.query,
            b.mutate,
            b.string_bytes,
            if ok { "yes" } else { "NO" }
        );
        if !ok {
            println!(
                "{:>6}  {:016x}  {:016x}  {:016x}  {:>12}  (system allocator)",
                "", a.build, a.query, a.mutate, a.string_bytes
            );
        }
    }
    println!();
    println!("same results: {}", if same { "yes" } else { "no" });
    println!(
        "wall time: system allocator {:.3} s, kmm kmalloc {:.3} s (ratio {:.2})",
        t_sys.as_secs_f64(),
        t_kmm.as_secs_f64(),
        t_kmm.as_secs_f64() / t_sys.as_secs_f64().max(1e-9)
    );

    let mut out = String::new();
    if let Some(p) = &peak {
        let _ = writeln!(
            out,
            "\nkmm at the peak (every thread's maps built): MemFree {} kB, Slab {} kB",
            p.free_kb, p.slab_kb
        );
        let _ = writeln!(out, "busiest kmalloc caches (/proc/slabinfo rows):");
        let _ = writeln!(
            out,
            "# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>"
        );
        for row in &p.busiest {
            let _ = writeln!(out, "{row}");
        }
    }
    let back = |s: &Snapshot| s.free_kb as i64 - before.free_kb as i64;
    let _ = writeln!(out, "\nMemFree (kB):");
    let _ = writeln!(
        out,
        "  before the kmm run            {:>10}",
        before.free_kb
    );
    if let Some(p) = &peak {
        let _ = writeln!(
            out,
            "  at the peak                   {:>10}  ({:+} kB)",
            p.free_kb,
            back(p)
        );
    }
    let _ = writeln!(
        out,
        "  after dropping everything     {:>10}  ({:+} kB: per-CPU object arrays, empty slabs, per-CPU page lists)",
        after_drop.free_kb,
        back(&after_drop)
    );
    let _ = writeln!(
        out,
        "  after shrinking every cache   {:>10}  ({:+} kB, Slab {} kB)",
        after_shrink.free_kb,
        back(&after_shrink),
        after_shrink.slab_kb
    );
    let st = HEAP.stats();
    let _ = writeln!(
        out,
        "allocations the system allocator served while kmm was on: {} ({} bytes); failed: {}",
        st.to_system, st.to_system_bytes, st.failed
    );
    print!("{out}");

    if same {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
