//! The `/proc` files of a simulated machine (`fs/proc/`), produced by the
//! memory manager's own formatters.

use crate::machine::Machine;

/// Files `read` can produce.
pub const PROC_FILES: [&str; 6] = [
    "/proc/buddyinfo",
    "/proc/meminfo",
    "/proc/slabinfo",
    "/proc/vmallocinfo",
    "/proc/vmstat",
    "/proc/zoneinfo",
];

/// Reads a `/proc` file of the machine. An unknown path is an error that
/// lists the files there are.
pub fn read(m: &Machine, path: &str) -> Result<String, String> {
    let k = m.kmm();
    let mut s = String::new();
    let r = match path {
        "/proc/buddyinfo" => kmm::vmstat::buddyinfo(k, &mut s),
        "/proc/zoneinfo" => kmm::vmstat::zoneinfo(k, &mut s),
        "/proc/vmstat" => kmm::vmstat::vmstat(k, &mut s),
        "/proc/meminfo" => kmm::proc_meminfo::meminfo(k, &mut s),
        "/proc/slabinfo" => kmm::slab_common::slabinfo(k, &mut s),
        "/proc/vmallocinfo" => kmm::vmalloc::vmallocinfo(k, &mut s),
        _ => {
            return Err(format!(
                "{path}: no such file (kmm provides {})",
                PROC_FILES.join(", ")
            ))
        }
    };
    r.map_err(|_| format!("{path}: formatting failed"))?;
    Ok(s)
}
