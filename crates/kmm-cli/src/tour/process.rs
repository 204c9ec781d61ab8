//! Tour steps: a process (seed 003): exec of a real binary, the heap grown
//! by brk and filled by page faults, fork and copy-on-write.

use super::{yes, Tour};
use crate::Error;
use kmm_sim::process::{Pid, System};
use kmm_sim::Machine;
use std::sync::atomic::Ordering::Relaxed;

const PS: u64 = 4096;

fn sys_err(e: kmm_sim::process::SysError) -> Error {
    Error::from(e.to_string())
}

/// `VmRSS`, `RssAnon` and `RssFile` lines of `/proc/PID/status`.
fn rss_lines(sys: &System, pid: Pid) -> Result<String, Error> {
    let s = sys
        .proc_read(&format!("/proc/{pid}/status"))
        .map_err(sys_err)?;
    Ok(s.lines()
        .filter(|l| {
            l.starts_with("VmSize")
                || l.starts_with("VmRSS")
                || l.starts_with("RssAnon")
                || l.starts_with("RssFile")
        })
        .map(|l| l.replace('\t', " "))
        .collect::<Vec<_>>()
        .join(", "))
}

fn faults(sys: &System, pid: Pid) -> Result<(u64, u64), Error> {
    let k = sys.machine().kmm();
    let t = k
        .task_struct(sys.task_of(pid).map_err(sys_err)?)
        .map_err(Error::from)?;
    Ok((t.min_flt.load(Relaxed), t.maj_flt.load(Relaxed)))
}

/// exec, brk and faults, fork and COW, on a fresh machine of the tour's
/// shape (the main one ends the tour as it booted; the process side's slab
/// caches stay once made, as in Linux).
pub fn steps(t: &mut Tour) -> Result<(), Error> {
    let machine = Machine::boot(kmm_sim::MachineConfig::default())?;
    machine.take_log();
    let m = &machine;
    let sys = System::new(m);
    exec_step(t, m, &sys)?;
    heap_step(t, &sys)?;
    fork_step(t, m, &sys)?;
    drop(sys);
    Ok(())
}

fn exec_step(t: &mut Tour, m: &Machine, sys: &System) -> Result<(), Error> {
    t.step(
        "A process: execve of a real binary",
        "execve() builds a new address space: the ELF file's PT_LOAD segments are mapped from\n\
         the file (text read-execute, data private read-write, bss anonymous), the program\n\
         interpreter below mmap_base, and a stack below TASK_SIZE holding argv and envp.\n\
         Nothing is read yet: the first instruction fetch faults the page in from the file\n\
         (a major fault), through the page cache. /proc/PID/maps lists the VMAs.",
    )?;
    let pid = sys.spawn("sh").map_err(sys_err)?;
    let bin = ["/bin/ls", "/usr/bin/ls", "/bin/true"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(bin) = bin else {
        t.say("> (no /bin/ls on this machine: skipped)")?;
        return Ok(());
    };
    sys.exec(
        pid,
        bin,
        &["ls".into(), "-l".into()],
        &["HOME=/root".into(), "LANG=C".into()],
    )
    .map_err(sys_err)?;
    t.say(format!(
        "> execve(\"{bin}\", [\"ls\", \"-l\"], [\"HOME=/root\", \"LANG=C\"]) = 0   (pid {pid})"
    ))?;
    let maps = sys
        .proc_read(&format!("/proc/{pid}/maps"))
        .map_err(sys_err)?;
    t.say(format!("$ cat /proc/{pid}/maps"))?;
    for l in maps.lines() {
        t.say(l)?;
    }
    let entry_vma = maps
        .lines()
        .find(|l| l.contains(" r-xp "))
        .and_then(|l| l.split('-').next())
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .unwrap_or(0);
    let before = faults(sys, pid)?;
    let cached = m.kmm().nr_file_pages();
    sys.fetch(pid, entry_vma).map_err(sys_err)?;
    let after = faults(sys, pid)?;
    t.say(format!(
        "> fetch an instruction at {entry_vma:#x}: {} major fault(s), {} minor; page cache +{} pages (read-around)",
        after.1 - before.1,
        after.0 - before.0,
        m.kmm().nr_file_pages() - cached
    ))?;
    sys.exit(pid, 0).map_err(sys_err)?;
    Ok(())
}

fn heap_step(t: &mut Tour, sys: &System) -> Result<(), Error> {
    t.step(
        "The heap: brk, then page faults (seed 003)",
        "malloc() grows the heap with brk(). The kernel only extends the heap VMA: no page is\n\
         allocated until the program touches one. The first write to each page faults; the\n\
         handler finds the VMA, allocates a zeroed page and maps it. A read of a page never\n\
         written maps the shared zero page instead.",
    )?;
    let pid = sys.spawn("heap").map_err(sys_err)?;
    // A heap after a small fixed "data segment".
    let base = 0x0060_0000u64;
    sys.mmap(pid, base, PS, 3, 0x32, -1, 0).map_err(sys_err)?;
    let k = sys.machine().kmm();
    let mm = sys.mm_of(pid).map_err(sys_err)?;
    k.mm_set_brk_base(mm, base + PS).map_err(Error::from)?;
    let start = sys.brk(pid, 0).map_err(sys_err)?;
    let end = sys.brk(pid, start + 64 * PS).map_err(sys_err)?;
    t.say(format!(
        "> brk(0) = {start:#x}; brk({:#x}) = {end:#x}   (256K more heap)",
        start + 64 * PS
    ))?;
    t.say(format!("  {}", rss_lines(sys, pid)?))?;
    let f0 = faults(sys, pid)?;
    for i in 0..16 {
        sys.store(pid, start + i * PS, &i.to_le_bytes())
            .map_err(sys_err)?;
    }
    let f1 = faults(sys, pid)?;
    t.say(format!(
        "> write to 16 heap pages: {} page faults",
        f1.0 - f0.0
    ))?;
    t.say(format!("  {}", rss_lines(sys, pid)?))?;
    let mut b = [0u8; 8];
    sys.load(pid, start + 40 * PS, &mut b).map_err(sys_err)?;
    let zero = k.follow_pte(mm, start + 40 * PS).map_err(Error::from)?;
    t.say(format!(
        "> read a page never written: zeros {}, mapped to the shared zero page: {}; RSS unchanged",
        yes(b == [0; 8]),
        yes(zero.is_some_and(|(pfn, _)| pfn == k.zero_pfn()))
    ))?;
    let maps = sys
        .proc_read(&format!("/proc/{pid}/maps"))
        .map_err(sys_err)?;
    t.say(format!("$ cat /proc/{pid}/maps"))?;
    for l in maps.lines() {
        t.say(l)?;
    }
    sys.exit(pid, 0).map_err(sys_err)?;
    Ok(())
}

fn smaps_summary(sys: &System, pid: Pid, addr: u64) -> Result<String, Error> {
    let s = sys
        .proc_read(&format!("/proc/{pid}/smaps"))
        .map_err(sys_err)?;
    let head = format!("{addr:x}-");
    let mut on = false;
    let mut out = Vec::new();
    for l in s.lines() {
        let header = l.split(' ').next().is_some_and(|w| {
            w.contains('-') && w.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
        });
        if header {
            on = l.starts_with(&head);
            continue;
        }
        if on
            && ["Rss:", "Pss:", "Shared_Dirty:", "Private_Dirty:"]
                .iter()
                .any(|f| l.starts_with(f))
        {
            out.push(l.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    Ok(out.join(", "))
}

fn fork_step(t: &mut Tour, m: &Machine, sys: &System) -> Result<(), Error> {
    t.step(
        "fork and copy-on-write",
        "fork() copies the VMAs and the page tables, not the pages: every private writable\n\
         page becomes read-only in both processes and is shared. The first write by either\n\
         one faults, and only then is that one page copied. A page only one process still\n\
         maps is reused without a copy.",
    )?;
    let k = m.kmm();
    let parent = sys.spawn("parent").map_err(sys_err)?;
    let a = sys
        .mmap(parent, 0, 16 * PS, 3, 0x22, -1, 0)
        .map_err(sys_err)?;
    sys.fill(parent, a, 16 * PS, 0x55).map_err(sys_err)?;
    t.say(format!(
        "> parent {parent}: mmap 64K anonymous at {a:#x}, filled: {}",
        smaps_summary(sys, parent, a)?
    ))?;
    let tables_before = k.nr_page_table_pages();
    let anon_before = k.nr_anon_mapped();
    let child = sys.fork(parent).map_err(sys_err)?;
    let pm = sys.mm_of(parent).map_err(sys_err)?;
    let (pfn, flags) = k
        .follow_pte(pm, a)
        .map_err(Error::from)?
        .ok_or_else(|| Error::from("no PTE".to_string()))?;
    t.say(format!(
        "> fork() = {child}: pages copied: {}, page-table pages added: {}; the page at {a:#x} is now read-only: {}, mapped twice: {}",
        k.nr_anon_mapped() - anon_before,
        k.nr_page_table_pages() - tables_before,
        yes(!flags.pte_write()),
        yes(k.pfn_to_page(pfn).map_err(Error::from)?.page_mapcount() == 2)
    ))?;
    t.say(format!(
        "  parent: {}\n  child:  {}",
        smaps_summary(sys, parent, a)?,
        smaps_summary(sys, child, a)?
    ))?;
    sys.store(child, a, b"child was here").map_err(sys_err)?;
    let cm = sys.mm_of(child).map_err(sys_err)?;
    let copied = k.follow_pte(cm, a).map_err(Error::from)?.map(|p| p.0);
    let mut b = [0u8; 4];
    sys.load(parent, a, &mut b).map_err(sys_err)?;
    t.say(format!(
        "> the child writes one page: copied to a new frame: {}; the parent still reads its own bytes: {}",
        yes(copied.is_some_and(|c| c != pfn)),
        yes(b == [0x55; 4])
    ))?;
    t.say(format!(
        "  parent: {}\n  child:  {}",
        smaps_summary(sys, parent, a)?,
        smaps_summary(sys, child, a)?
    ))?;
    sys.store(parent, a, b"parent").map_err(sys_err)?;
    t.say(format!(
        "> the parent writes the same page: it is the only mapper now, so the page is reused, not copied: {}",
        yes(k.follow_pte(pm, a).map_err(Error::from)?.map(|p| p.0) == Some(pfn))
    ))?;
    let (faults, major, cow) = k.fault_counts();
    t.say(format!(
        "> since boot: {faults} page faults, {major} major, {cow} copy-on-write copies"
    ))?;
    sys.exit(child, 0).map_err(sys_err)?;
    sys.exit(parent, 0).map_err(sys_err)?;
    t.say(format!(
        "> both exit: every page table and frame back ({} page-table pages in use)",
        k.nr_page_table_pages()
    ))?;
    Ok(())
}
