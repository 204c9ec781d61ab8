//! `kmm slabtop`: a one-shot listing of the slab caches, as procps'
//! `slabtop -o` prints it, after a built-in workload.
//!
//! The numbers come from the library ([`kmm::Kmm::kmem_caches`] and
//! [`kmm::Kmm::kmem_cache_info`]), not from parsing `/proc/slabinfo`; the
//! arithmetic is slabtop's: a cache's size is its slabs times pages per slab
//! times the page size, "USE" is active over total objects, the header's
//! sizes count objects times object size, and a cache is *active* when it
//! has any object at all.

use crate::boot::MachineArgs;
use crate::size::format_size;
use crate::workload::{Running, WorkloadName};
use crate::Error;
use clap::Args;
use kmm::{Kmm, Platform};
use kmm_sim::Machine;
use std::cmp::Ordering;
use std::fmt::Write as _;
use std::io::Write;
use std::str::FromStr;

/// slabtop's sort criteria (`-s KEY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    /// `a`: number of active objects.
    ActiveObjs,
    /// `b`: objects per slab.
    ObjsPerSlab,
    /// `c`: cache size.
    CacheSize,
    /// `l`: number of slabs.
    Slabs,
    /// `v`: number of active slabs (not a column).
    ActiveSlabs,
    /// `n`: name.
    Name,
    /// `o`: number of objects (the default).
    Objs,
    /// `p`: pages per slab (not a column).
    PagesPerSlab,
    /// `s`: object size.
    ObjSize,
    /// `u`: cache utilization.
    Use,
}

/// The keys with what they sort by, as `slabtop --help` lists them.
pub const SORT_KEYS: [(char, SortKey, &str); 10] = [
    ('a', SortKey::ActiveObjs, "number of active objects"),
    ('b', SortKey::ObjsPerSlab, "objects per slab"),
    ('c', SortKey::CacheSize, "cache size"),
    ('l', SortKey::Slabs, "number of slabs"),
    (
        'v',
        SortKey::ActiveSlabs,
        "(non display) number of active slabs",
    ),
    ('n', SortKey::Name, "name"),
    ('o', SortKey::Objs, "number of objects (the default)"),
    ('p', SortKey::PagesPerSlab, "(non display) pages per slab"),
    ('s', SortKey::ObjSize, "object size"),
    ('u', SortKey::Use, "cache utilization"),
];

impl FromStr for SortKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut chars = s.chars();
        let found = match (chars.next(), chars.next()) {
            (Some(c), None) => SORT_KEYS.iter().find(|(k, _, _)| *k == c),
            _ => None,
        };
        found.map(|&(_, key, _)| key).ok_or_else(|| {
            let keys: Vec<String> = SORT_KEYS.iter().map(|(k, _, _)| k.to_string()).collect();
            format!(
                "'{s}' is not a sort key (slabtop's keys are the letters {}; see --help)",
                keys.join(", ")
            )
        })
    }
}

/// `kmm slabtop`'s arguments.
#[derive(Args, Debug)]
#[command(
    after_help = "Sort keys, as slabtop's -s takes them: a active objects, \
b objects per slab, c cache size, l slabs, v active slabs, n name, o objects (the default), \
p pages per slab, s object size, u use."
)]
pub struct SlabtopArgs {
    /// The machine.
    #[command(flatten)]
    pub machine: MachineArgs,
    /// Sort by KEY, one of slabtop's letters: a b c l v n o p s u.
    #[arg(short, long, value_name = "KEY", default_value = "o", value_parser = SortKey::from_str)]
    pub sort: SortKey,
    /// What runs before the listing: scull or none.
    #[arg(short, long, value_name = "NAME", value_enum, default_value_t = WorkloadName::Scull)]
    pub workload: WorkloadName,
    /// Accepted for slabtop's `-o`; kmm slabtop always prints once.
    #[arg(short = 'o', long)]
    pub once: bool,
}

/// One cache as slabtop shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// Cache name.
    pub name: String,
    /// Objects in all slabs.
    pub objs: u64,
    /// Objects in use (including those cached per CPU, as SLAB counts them).
    pub active: u64,
    /// Bytes per object (slabinfo's `<objsize>`).
    pub obj_size: u64,
    /// Slabs.
    pub slabs: u64,
    /// Slabs with an object in use.
    pub active_slabs: u64,
    /// Objects per slab.
    pub objs_per_slab: u64,
    /// Pages per slab.
    pub pages_per_slab: u64,
    /// Bytes in slabs: slabs × pages per slab × page size.
    pub cache_size: u64,
}

impl Row {
    /// "USE": active objects as a whole percentage of all objects.
    pub fn use_pct(&self) -> u64 {
        (self.active * 100).checked_div(self.objs).unwrap_or(0)
    }
}

/// Every live cache, in `/proc/slabinfo` order.
pub fn rows<P: Platform>(k: &Kmm<P>) -> Vec<Row> {
    let page = k.page_size();
    k.kmem_caches()
        .iter()
        .filter_map(|c| k.kmem_cache_info(c).ok())
        .map(|i| Row {
            name: i.name.as_str().to_string(),
            objs: i.num_objs,
            active: i.active_objs,
            obj_size: i.size as u64,
            slabs: i.num_slabs,
            active_slabs: i.active_slabs,
            objs_per_slab: i.objects_per_slab as u64,
            pages_per_slab: i.pages_per_slab as u64,
            cache_size: i.num_slabs * i.pages_per_slab as u64 * page,
        })
        .collect()
}

/// Sorts as slabtop does: numbers largest first, names alphabetically (ties
/// by name).
pub fn sort(rows: &mut [Row], key: SortKey) {
    let num = |r: &Row| -> u64 {
        match key {
            SortKey::ActiveObjs => r.active,
            SortKey::ObjsPerSlab => r.objs_per_slab,
            SortKey::CacheSize => r.cache_size,
            SortKey::Slabs => r.slabs,
            SortKey::ActiveSlabs => r.active_slabs,
            SortKey::Name => 0,
            SortKey::Objs => r.objs,
            SortKey::PagesPerSlab => r.pages_per_slab,
            SortKey::ObjSize => r.obj_size,
            SortKey::Use => r.use_pct(),
        }
    };
    rows.sort_by(|a, b| match num(b).cmp(&num(a)) {
        Ordering::Equal => a.name.cmp(&b.name),
        o => o,
    });
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// The five-line header of `slabtop`.
pub fn header(rows: &[Row]) -> String {
    let sum = |f: fn(&Row) -> u64| rows.iter().map(f).sum::<u64>();
    let (objs, active) = (sum(|r| r.objs), sum(|r| r.active));
    let (slabs, active_slabs) = (sum(|r| r.slabs), sum(|r| r.active_slabs));
    let caches = rows.len() as u64;
    let active_caches = rows.iter().filter(|r| r.objs > 0).count() as u64;
    let total_size = sum(|r| r.objs * r.obj_size);
    let active_size = sum(|r| r.active * r.obj_size);
    let min = rows.iter().map(|r| r.obj_size).min().unwrap_or(0);
    let max = rows.iter().map(|r| r.obj_size).max().unwrap_or(0);
    let avg = total_size.checked_div(objs).unwrap_or(0);
    let k = |b: u64| b as f64 / 1024.0;
    let mut s = String::new();
    let mut line = |label: &str, value: String| {
        let _ = writeln!(s, " {label:<35}: {value}");
    };
    line(
        "Active / Total Objects (% used)",
        format!("{active} / {objs} ({:.1}%)", pct(active, objs)),
    );
    line(
        "Active / Total Slabs (% used)",
        format!(
            "{active_slabs} / {slabs} ({:.1}%)",
            pct(active_slabs, slabs)
        ),
    );
    line(
        "Active / Total Caches (% used)",
        format!(
            "{active_caches} / {caches} ({:.1}%)",
            pct(active_caches, caches)
        ),
    );
    line(
        "Active / Total Size (% used)",
        format!(
            "{:.2}K / {:.2}K ({:.1}%)",
            k(active_size),
            k(total_size),
            pct(active_size, total_size)
        ),
    );
    line(
        "Minimum / Average / Maximum Object",
        format!("{:.2}K / {:.2}K / {:.2}K", k(min), k(avg), k(max)),
    );
    s
}

/// The column headings of the table.
pub const TABLE_HEAD: &str = "  OBJS ACTIVE  USE OBJ SIZE  SLABS OBJ/SLAB CACHE SIZE NAME";

/// One row of the table, in slabtop's columns.
pub fn table_line(r: &Row) -> String {
    format!(
        "{:>6} {:>6} {:>3}% {:>7.2}K {:>6} {:>8} {:>9}K {}",
        r.objs,
        r.active,
        r.use_pct(),
        r.obj_size as f64 / 1024.0,
        r.slabs,
        r.objs_per_slab,
        r.cache_size / 1024,
        r.name
    )
}

/// The whole listing: header, a blank line, the table sorted by `key`.
pub fn listing<P: Platform>(k: &Kmm<P>, key: SortKey) -> String {
    let mut rows = rows(k);
    sort(&mut rows, key);
    let mut s = header(&rows);
    s.push('\n');
    s.push_str(TABLE_HEAD);
    s.push('\n');
    for r in &rows {
        s.push_str(&table_line(r));
        s.push('\n');
    }
    s
}

/// Runs `kmm slabtop`: boots the machine, runs the workload, prints a line
/// about both and the listing. Nothing is printed if either fails.
pub fn run(args: &SlabtopArgs, out: &mut dyn Write) -> Result<(), Error> {
    let config = args.machine.config();
    let m = Machine::boot(config.clone())?;
    m.take_log();
    let mut w = Running::start(&m, args.workload)?;
    let text = listing(m.kmm(), args.sort);
    writeln!(
        out,
        "kmm slabtop: {} machine, {} of RAM, {} pages, {} CPU{}; workload {}",
        config.arch.name,
        format_size(config.ram),
        format_size(config.page_size),
        config.cpus,
        if config.cpus == 1 { "" } else { "s" },
        args.workload
    )?;
    for line in &w.summary {
        writeln!(out, "  {line}")?;
    }
    writeln!(out)?;
    out.write_all(text.as_bytes())?;
    w.release(&m)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, objs: u64, active: u64, obj_size: u64, slabs: u64, per: u64) -> Row {
        Row {
            name: name.into(),
            objs,
            active,
            obj_size,
            slabs,
            active_slabs: slabs,
            objs_per_slab: per,
            pages_per_slab: 1,
            cache_size: slabs * 4096,
        }
    }

    /// Rows print exactly as procps' slabtop prints them (lines taken from
    /// real `slabtop -o` output).
    #[test]
    fn columns_are_slabtops() {
        assert_eq!(
            table_line(&row("kernfs_node_cache", 88740, 88740, 136, 2958, 30)),
            " 88740  88740 100%    0.13K   2958       30     11832K kernfs_node_cache"
        );
        assert_eq!(
            table_line(&row("buffer_head", 642369, 621647, 104, 16471, 39)),
            "642369 621647  96%    0.10K  16471       39     65884K buffer_head"
        );
        assert!(TABLE_HEAD.starts_with("  OBJS ACTIVE  USE OBJ SIZE"));
    }

    #[test]
    fn header_is_slabtops() {
        let h = header(&[
            row("a", 1112331, 1063811, 8, 30000, 40),
            row("b", 0, 0, 8192, 0, 1),
        ]);
        let lines: Vec<&str> = h.lines().collect();
        assert_eq!(
            lines[0],
            " Active / Total Objects (% used)    : 1063811 / 1112331 (95.6%)"
        );
        assert_eq!(
            lines[2],
            " Active / Total Caches (% used)     : 1 / 2 (50.0%)"
        );
        assert_eq!(
            lines[4],
            " Minimum / Average / Maximum Object : 0.01K / 0.01K / 8.00K"
        );
        // Nothing at all: no division by zero.
        assert!(header(&[]).contains("0 / 0 (0.0%)"));
    }

    #[test]
    fn sort_keys_parse_and_order() {
        for (c, key, _) in SORT_KEYS {
            assert_eq!(c.to_string().parse::<SortKey>(), Ok(key));
        }
        for bad in ["", "x", "oo", "O", "é"] {
            assert!(bad.parse::<SortKey>().is_err(), "{bad:?}");
        }
        let mut rows = vec![
            row("b", 10, 5, 64, 1, 64),
            row("a", 10, 10, 32, 1, 128),
            row("c", 20, 1, 16, 1, 256),
        ];
        sort(&mut rows, SortKey::Objs);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["c", "a", "b"], "largest first, ties by name");
        sort(&mut rows, SortKey::Use);
        assert_eq!(rows[0].name, "a");
        sort(&mut rows, SortKey::Name);
        assert_eq!(rows[0].name, "a");
    }
}
