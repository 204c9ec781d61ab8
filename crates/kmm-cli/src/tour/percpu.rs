//! Tour step: per-CPU memory allocated at run time (`alloc_percpu`) and
//! `percpu_counter` (seed 002: 每个CPU的分配; LDD3 §8.4).

use super::{yes, Tour};
use crate::Error;
use kmm_sim::Machine;

/// `alloc_percpu` on every CPU, then a `percpu_counter` bumped from both CPUs.
pub fn step(t: &mut Tour, m: &Machine) -> Result<(), Error> {
    let k = m.kmm();
    t.step(
        "alloc_percpu(): per-CPU data made at run time",
        "alloc_percpu() gives every CPU its own copy of an object, carved from per-CPU\n\
         chunks: CPU n's copy sits n units after CPU 0's, so per_cpu_ptr() is one addition.\n\
         A percpu_counter keeps a global count plus a small per-CPU delta: adding touches\n\
         only the local delta until it reaches `batch`; percpu_counter_read() is cheap and\n\
         approximate, percpu_counter_sum() exact.",
    )?;
    let p = k.alloc_percpu::<u64>()?;
    let unit = k.pcpu_unit_size();
    let mut line = String::from("> p = alloc_percpu(u64):");
    for cpu in 0..k.nr_cpu_ids() {
        line += &format!("  per_cpu_ptr(p, {cpu}) = {:#x}", k.per_cpu_ptr(p, cpu)?);
    }
    t.say(line)?;
    let step_ok = k.nr_cpu_ids() < 2 || k.per_cpu_ptr(p, 1)? - k.per_cpu_ptr(p, 0)? == unit;
    t.say(format!(
        "  one unit ({}K) apart: {}",
        unit >> 10,
        yes(step_ok)
    ))?;
    k.free_percpu(p)?;

    let fbc = k.percpu_counter_init(0)?;
    let batch = k.percpu_counter_batch();
    let per_cpu = 1000i64;
    let cpus = k.nr_cpu_ids();
    m.cpus().on_each_cpu(|_cpu| {
        for _ in 0..per_cpu {
            let _ = k.percpu_counter_inc(&fbc);
        }
    })?;
    let sum = k.percpu_counter_sum(&fbc)?;
    let read = k.percpu_counter_read(&fbc);
    t.say(format!(
        "> percpu_counter_init(&rx_packets, 0); {per_cpu} x percpu_counter_inc() on each of {cpus} CPUs at once (batch {batch})"
    ))?;
    t.say(format!(
        "  percpu_counter_sum() = {sum} (exact: {}); percpu_counter_read() = {read} (within batch x CPUs: {})",
        yes(sum == per_cpu * cpus as i64),
        yes((sum - read).abs() <= batch * cpus as i64)
    ))?;
    k.percpu_counter_destroy(fbc)?;
    t.cat(m, "/proc/meminfo")?;
    Ok(())
}
