//! Processes on the simulated machine: tasks, their address spaces, system
//! calls and user-mode memory accesses through the MMU (`kernel/fork.c`,
//! `kernel/exit.c`, `fs/exec.c`, `arch/x86/mm/fault.c`, `fs/proc/task_mmu.c`).
//!
//! A [`System`] is the kernel above the memory manager: a process table,
//! file descriptors, the inode table of host files, and the MMU every user
//! load, store and instruction fetch goes through. A fault the MMU raises
//! runs the memory manager's fault handler ([`kmm::Kmm::handle_mm_fault`]);
//! a bad access kills the process with SIGSEGV and Linux's `segfault at`
//! line in the kernel log.
//!
//! Locking: each process's `mmap_lock` is a host mutex taken by every
//! system call and fault on its address space; the CPUs a process runs on
//! only matter for which TLB its accesses fill.

use crate::binfmt_elf::{Elf, ET_DYN, PF_R, PF_W, PF_X};
use crate::machine::{Machine, SimPlatform, TlbFlush};
use crate::mmu::{Access, Fault, FaultKind, Mmu};
use kmm::memory::{FaultAccess, FaultResult, SegvCode};
use kmm::mmap::{
    MmapFile, MAP_ANONYMOUS, MAP_FIXED, MAP_GROWSDOWN, MAP_PRIVATE, MAP_SHARED, PROT_EXEC,
    PROT_READ, PROT_WRITE,
};
use kmm::{Errno, Kmm, KmmError, PageTable, Platform, TaskStruct, VmaFlags};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// A process id.
pub type Pid = u32;

/// Why a system-level request did not do what was asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SysError {
    /// The system call returned `-errno`.
    Errno {
        /// The error number.
        errno: Errno,
        /// The system call.
        call: &'static str,
    },
    /// The process died of a signal (its `segfault` line is in the log).
    Killed {
        /// The process.
        pid: Pid,
        /// `SIGSEGV` or `SIGBUS`.
        signal: &'static str,
        /// The faulting address.
        addr: u64,
    },
    /// No process has this pid.
    NoProcess(Pid),
    /// A host file could not be used.
    Host(String),
    /// The memory manager refused (out of memory, misuse).
    Kmm(KmmError),
}

impl fmt::Display for SysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SysError::Errno { errno, call } => {
                write!(f, "{call}: -1 {} ({})", errno.name(), errno.message())
            }
            SysError::Killed { pid, signal, addr } => {
                write!(f, "process {pid} killed by {signal} at {addr:#x}")
            }
            SysError::NoProcess(pid) => write!(f, "no process {pid}"),
            SysError::Host(s) => f.write_str(s),
            SysError::Kmm(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SysError {}

impl From<KmmError> for SysError {
    fn from(e: KmmError) -> Self {
        match e {
            KmmError::Errno { errno, what } => SysError::Errno { errno, call: what },
            KmmError::NoMemory { .. } => SysError::Errno {
                errno: Errno::ENOMEM,
                call: "out of memory",
            },
            e => SysError::Kmm(e),
        }
    }
}

fn errno(errno: Errno, call: &'static str) -> SysError {
    SysError::Errno { errno, call }
}

/// An open file of a process (`struct file`).
#[derive(Clone, Debug)]
struct OpenFile {
    inode: Arc<Inode>,
    write: bool,
}

/// A host file known to the machine (`struct inode` plus its page cache).
#[derive(Debug)]
pub struct Inode {
    /// The path it was opened by.
    pub path: String,
    /// The `address_space` in the machine's RAM.
    pub mapping: u64,
    /// Host device number (for `/proc/PID/maps`).
    pub dev: u64,
    /// Host inode number.
    pub ino: u64,
    host_id: u64,
}

/// One process (`struct task_struct` with its `mm`).
struct Proc {
    pid: Pid,
    ppid: Pid,
    task: u64,
    mm: u64,
    comm: Mutex<String>,
    cpu: AtomicUsize,
    /// `mmap_lock`.
    lock: Mutex<()>,
    files: Mutex<Vec<Option<OpenFile>>>,
}

/// The kernel above the memory manager: processes, files, the MMU.
pub struct System<'m> {
    m: &'m Machine,
    mmu: Mmu<'m, SimPlatform>,
    /// The last machine TLB flush applied to `mmu`.
    tlb_seen: std::sync::atomic::AtomicU64,
    procs: Mutex<BTreeMap<Pid, Arc<Proc>>>,
    inodes: Mutex<BTreeMap<String, Arc<Inode>>>,
    next_pid: AtomicU32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// x86_64's `TASK_SIZE`: 47 bits less one page.
pub const TASK_SIZE_64: u64 = 0x7fff_ffff_f000;
/// `TASK_SIZE` of 32-bit x86 (3G/1G split).
pub const TASK_SIZE_32: u64 = 0xc000_0000;
/// `mmap_base()`'s minimum gap below the stack (128 MiB).
const MIN_GAP: u64 = 128 << 20;
/// The initial stack VMA (`setup_arg_pages`' 128 KiB plus the page of
/// arguments).
const STACK_INITIAL: u64 = 0x21000;

impl<'m> System<'m> {
    /// A system on booted machine `m`, with no processes.
    pub fn new(m: &'m Machine) -> System<'m> {
        System {
            m,
            mmu: Mmu::for_machine(m),
            tlb_seen: std::sync::atomic::AtomicU64::new(m.platform().tlb_flush_seq()),
            procs: Mutex::new(BTreeMap::new()),
            inodes: Mutex::new(BTreeMap::new()),
            next_pid: AtomicU32::new(1),
        }
    }

    /// The machine.
    pub fn machine(&self) -> &'m Machine {
        self.m
    }

    /// The MMU processes run through, with every TLB flush the kernel has
    /// asked for applied.
    pub fn mmu(&self) -> &Mmu<'m, SimPlatform> {
        self.sync_tlb();
        &self.mmu
    }

    /// Applies the TLB flushes the memory manager requested since the last
    /// call (the IPIs of `flush_tlb_*`, delivered before the next access).
    #[inline]
    pub fn sync_tlb(&self) {
        let pf = self.m.platform();
        if pf.tlb_flush_seq() == self.tlb_seen.load(Relaxed) {
            return;
        }
        let (flushes, now) = pf.tlb_flushes_since(self.tlb_seen.load(Relaxed));
        match flushes {
            None => self.mmu.flush_tlb_all(),
            Some(v) => {
                for f in v {
                    match f {
                        TlbFlush::Kernel { start, end } => {
                            self.mmu.flush_tlb_kernel_range(start, end)
                        }
                        TlbFlush::Mm { asid, start, end } => {
                            self.mmu.flush_tlb_range(asid, start, end)
                        }
                        TlbFlush::One { cpu, addr } => {
                            if cpu < self.mmu.nr_cpus() {
                                self.mmu.invlpg(cpu, addr)
                            }
                        }
                    }
                }
            }
        }
        self.tlb_seen.store(now, Relaxed);
    }

    fn k(&self) -> &'m Kmm<SimPlatform> {
        self.m.kmm()
    }

    fn proc(&self, pid: Pid) -> Result<Arc<Proc>, SysError> {
        lock(&self.procs)
            .get(&pid)
            .cloned()
            .ok_or(SysError::NoProcess(pid))
    }

    /// Pids of the live processes, in order.
    pub fn pids(&self) -> Vec<Pid> {
        lock(&self.procs).keys().copied().collect()
    }

    /// The address space (`mm_struct` physical address) of `pid`.
    pub fn mm_of(&self, pid: Pid) -> Result<u64, SysError> {
        Ok(self.proc(pid)?.mm)
    }

    /// The `task_struct` of `pid`.
    pub fn task_of(&self, pid: Pid) -> Result<u64, SysError> {
        Ok(self.proc(pid)?.task)
    }

    fn task_size(&self) -> u64 {
        if self.k().arch().bits == 64 {
            TASK_SIZE_64
        } else {
            TASK_SIZE_32
        }
    }

    /// `mm_alloc()` + `pgd_alloc()` with the x86 legacy layout values.
    fn new_mm(&self) -> Result<u64, SysError> {
        let k = self.k();
        if k.swapper_pg_dir().is_none() {
            return Err(SysError::Kmm(KmmError::InvalidArgument {
                what: "processes need a kernel page table: boot with --page-size 4K (x86's only page size)",
            }));
        }
        let task_size = self.task_size() & !(k.page_size() - 1);
        let mmap_base = (task_size - MIN_GAP) & !(k.page_size() - 1);
        let mm = k.mm_alloc(task_size, mmap_base)?;
        if let Err(e) = k.mm_pgd_alloc(mm) {
            k.mm_free(mm)?;
            return Err(e.into());
        }
        Ok(mm)
    }

    /// A new process named `comm` with an empty address space, on CPU 0
    /// (what `fork` of a shell followed by the start of `execve` is).
    pub fn spawn(&self, comm: &str) -> Result<Pid, SysError> {
        let mm = self.new_mm()?;
        // A heap where an empty position-independent program would have
        // it (ELF_ET_DYN_BASE plus a page), so brk works before any exec.
        let k = self.k();
        let base = ((self.task_size() / 3) * 2) & !(k.page_size() - 1);
        k.mm_set_brk_base(mm, base + k.page_size())?;
        self.add_proc(comm, mm, 0)
    }

    fn add_proc(&self, comm: &str, mm: u64, ppid: Pid) -> Result<Pid, SysError> {
        let k = self.k();
        let pid = self.next_pid.fetch_add(1, Relaxed);
        let task = match k.task_alloc(pid, mm, comm) {
            Ok(t) => t,
            Err(e) => {
                self.free_mm(mm)?;
                return Err(e.into());
            }
        };
        let p = Arc::new(Proc {
            pid,
            ppid,
            task,
            mm,
            comm: Mutex::new(comm.chars().take(15).collect()),
            cpu: AtomicUsize::new(0),
            lock: Mutex::new(()),
            files: Mutex::new(Vec::new()),
        });
        lock(&self.procs).insert(pid, p);
        Ok(pid)
    }

    /// `exit_mmap()` and `mmdrop()`: everything the address space holds.
    fn free_mm(&self, mm: u64) -> Result<(), SysError> {
        let k = self.k();
        k.exit_mmap(mm)?;
        k.mm_pgd_free(mm)?;
        k.mm_free(mm)?;
        Ok(())
    }

    /// The current CPU of `pid` and its page table, for the MMU.
    fn cpu_pt(&self, p: &Proc) -> Result<(usize, PageTable, u16), SysError> {
        let k = self.k();
        let pt = k
            .mm_page_table(p.mm)
            .ok_or(SysError::Kmm(KmmError::InvalidArgument {
                what: "process without a page table",
            }))?;
        Ok((p.cpu.load(Relaxed), pt, k.mm_asid(p.mm)))
    }

    /// Makes `pid` run on `cpu` (`switch_mm` there).
    pub fn set_cpu(&self, pid: Pid, cpu: usize) -> Result<(), SysError> {
        let p = self.proc(pid)?;
        if cpu >= self.mmu.nr_cpus() {
            return Err(errno(Errno::EINVAL, "sched_setaffinity"));
        }
        p.cpu.store(cpu, Relaxed);
        self.mmu.switch_mm(cpu, self.k().mm_asid(p.mm));
        Ok(())
    }

    // ------------------------------------------------------------ files

    /// The inode of host file `path`, shared by every open.
    fn inode(&self, path: &str, write: bool) -> Result<Arc<Inode>, SysError> {
        use std::os::unix::fs::MetadataExt;
        let canon = std::fs::canonicalize(path)
            .map_err(|e| SysError::Host(format!("{path}: {e}")))?
            .to_string_lossy()
            .into_owned();
        let mut inodes = lock(&self.inodes);
        if let Some(i) = inodes.get(&canon) {
            if !write || self.m.platform().host_file_path(i.host_id).is_some() {
                return Ok(i.clone());
            }
        }
        let meta = std::fs::metadata(&canon).map_err(|e| SysError::Host(format!("{path}: {e}")))?;
        let (host_id, size) = self
            .m
            .platform()
            .open_host_file(&canon, write)
            .map_err(|e| SysError::Host(format!("{path}: {e}")))?;
        let mode = kmm::filemap::FMODE_READ | if write { kmm::filemap::FMODE_WRITE } else { 0 };
        let mapping = match self.k().filemap_open(host_id, size, mode) {
            Ok(m) => m,
            Err(e) => {
                self.m.platform().close_host_file(host_id);
                return Err(e.into());
            }
        };
        let inode = Arc::new(Inode {
            path: canon.clone(),
            mapping,
            dev: meta.dev(),
            ino: meta.ino(),
            host_id,
        });
        if let Some(old) = inodes.insert(canon, inode.clone()) {
            // A read-only inode replaced by a writable one: let the old one
            // go once nothing maps it.
            let _ = self.k().filemap_put(old.mapping);
        }
        Ok(inode)
    }

    /// `open(path, write ? O_RDWR : O_RDONLY)` in `pid`: a file descriptor.
    pub fn open(&self, pid: Pid, path: &str, write: bool) -> Result<i32, SysError> {
        let p = self.proc(pid)?;
        let inode = match self.inode(path, write) {
            Ok(i) => i,
            Err(SysError::Host(msg)) => {
                let e = if msg.contains("No such file") {
                    Errno::ENOENT
                } else if msg.contains("ermission") {
                    Errno::EACCES
                } else {
                    Errno::EINVAL
                };
                return Err(errno(e, "open"));
            }
            Err(e) => return Err(e),
        };
        let mut files = lock(&p.files);
        let f = Some(OpenFile { inode, write });
        let fd = match files.iter().position(Option::is_none) {
            Some(i) => {
                files[i] = f;
                i
            }
            None => {
                files.push(f);
                files.len() - 1
            }
        };
        Ok(fd as i32 + 3)
    }

    /// `close(fd)`.
    pub fn close(&self, pid: Pid, fd: i32) -> Result<(), SysError> {
        let p = self.proc(pid)?;
        let mut files = lock(&p.files);
        match usize::try_from(fd - 3).ok().and_then(|i| files.get_mut(i)) {
            Some(slot @ Some(_)) => {
                *slot = None;
                Ok(())
            }
            _ => Err(errno(Errno::EBADF, "close")),
        }
    }

    fn file_of(&self, p: &Proc, fd: i32) -> Result<OpenFile, SysError> {
        let files = lock(&p.files);
        usize::try_from(fd - 3)
            .ok()
            .and_then(|i| files.get(i).cloned().flatten())
            .ok_or(errno(Errno::EBADF, "mmap"))
    }

    /// `echo 3 > /proc/sys/vm/drop_caches`: forgets the inodes no process
    /// has open or mapped, so their page cache goes back to the allocator.
    pub fn drop_caches(&self) -> Result<u64, SysError> {
        let k = self.k();
        let open: Vec<String> = lock(&self.procs)
            .values()
            .flat_map(|p| {
                lock(&p.files)
                    .iter()
                    .flatten()
                    .map(|f| f.inode.path.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut inodes = lock(&self.inodes);
        let mut dropped = 0;
        let paths: Vec<String> = inodes.keys().cloned().collect();
        for path in paths {
            if open.contains(&path) {
                continue;
            }
            let Some(i) = inodes.get(&path) else { continue };
            let refs = k.address_space(i.mapping)?.refs.load(Relaxed);
            if refs == 1 {
                let i = inodes.remove(&path).expect("present");
                k.filemap_put(i.mapping)?;
                self.m.platform().close_host_file(i.host_id);
                dropped += 1;
            }
        }
        Ok(dropped)
    }

    // ------------------------------------------------------ system calls

    /// `mmap(addr, len, prot, flags, fd, offset)` in `pid`. A shared
    /// anonymous mapping is backed by shmem (`/dev/zero (deleted)`).
    #[allow(clippy::too_many_arguments)] // mmap's six, plus the process
    pub fn mmap(
        &self,
        pid: Pid,
        addr: u64,
        len: u64,
        prot: u32,
        flags: u32,
        fd: i32,
        offset: u64,
    ) -> Result<u64, SysError> {
        let p = self.proc(pid)?;
        let k = self.k();
        let ps = k.page_size();
        let _g = lock(&p.lock);
        let (prot, mut flags) = (u64::from(prot), u64::from(flags));
        let file = if flags & MAP_ANONYMOUS != 0 {
            if flags & 0x3 == MAP_SHARED && len != 0 {
                // Shared anonymous memory is a shmem file (`shmem_zero_setup`).
                flags &= !MAP_ANONYMOUS;
                let size = len.checked_next_multiple_of(ps).unwrap_or(u64::MAX);
                let mapping = k.filemap_open(
                    kmm::memory::SHMEM_HOST,
                    size,
                    kmm::filemap::FMODE_READ | kmm::filemap::FMODE_WRITE,
                )?;
                Some((
                    MmapFile {
                        mapping,
                        size,
                        readable: true,
                        writable: true,
                    },
                    true,
                ))
            } else {
                None
            }
        } else {
            let f = self.file_of(&p, fd)?;
            let size = k.address_space(f.inode.mapping)?.size.load(Relaxed);
            Some((
                MmapFile {
                    mapping: f.inode.mapping,
                    size,
                    readable: true,
                    writable: f.write,
                },
                false,
            ))
        };
        if !offset.is_multiple_of(ps) {
            return Err(errno(Errno::EINVAL, "mmap"));
        }
        let ops = kmm::memory::PageTableOps(k);
        let r = k.do_mmap(
            p.mm,
            file.map(|(f, _)| f),
            addr,
            len,
            prot,
            flags,
            offset / ps,
            &ops,
        );
        if let Some((f, true)) = file {
            // The VMA holds its own reference to the shmem object.
            k.filemap_put(f.mapping)?;
        }
        Ok(r?)
    }

    /// `munmap(addr, len)`.
    pub fn munmap(&self, pid: Pid, addr: u64, len: u64) -> Result<(), SysError> {
        let p = self.proc(pid)?;
        let k = self.k();
        let _g = lock(&p.lock);
        Ok(k.do_munmap(p.mm, addr, len, &kmm::memory::PageTableOps(k))?)
    }

    /// `mprotect(addr, len, prot)`.
    pub fn mprotect(&self, pid: Pid, addr: u64, len: u64, prot: u32) -> Result<(), SysError> {
        let p = self.proc(pid)?;
        let k = self.k();
        let _g = lock(&p.lock);
        Ok(k.do_mprotect(
            p.mm,
            addr,
            len,
            u64::from(prot),
            &kmm::memory::PageTableOps(k),
        )?)
    }

    /// `mremap(old, old_len, new_len, flags, new_addr)`.
    pub fn mremap(
        &self,
        pid: Pid,
        old: u64,
        old_len: u64,
        new_len: u64,
        flags: u32,
        new_addr: u64,
    ) -> Result<u64, SysError> {
        let p = self.proc(pid)?;
        let k = self.k();
        let _g = lock(&p.lock);
        Ok(k.do_mremap(
            p.mm,
            old,
            old_len,
            new_len,
            u64::from(flags),
            new_addr,
            &kmm::memory::PageTableOps(k),
        )?)
    }

    /// `brk(addr)`: the new break, or the old one when refused (`brk(0)`
    /// asks for it).
    pub fn brk(&self, pid: Pid, addr: u64) -> Result<u64, SysError> {
        let p = self.proc(pid)?;
        let k = self.k();
        let _g = lock(&p.lock);
        Ok(k.do_brk(p.mm, addr, &kmm::memory::PageTableOps(k)))
    }

    /// `madvise(addr, len, advice)`.
    pub fn madvise(&self, pid: Pid, addr: u64, len: u64, advice: u32) -> Result<(), SysError> {
        let p = self.proc(pid)?;
        let k = self.k();
        let _g = lock(&p.lock);
        Ok(k.do_madvise(
            p.mm,
            addr,
            len,
            u64::from(advice),
            &kmm::memory::PageTableOps(k),
        )?)
    }

    /// `mlock(addr, len)`.
    pub fn mlock(&self, pid: Pid, addr: u64, len: u64) -> Result<(), SysError> {
        let p = self.proc(pid)?;
        let k = self.k();
        let _g = lock(&p.lock);
        Ok(k.do_mlock(p.mm, addr, len, &kmm::memory::PageTableOps(k))?)
    }

    /// `munlock(addr, len)`.
    pub fn munlock(&self, pid: Pid, addr: u64, len: u64) -> Result<(), SysError> {
        let p = self.proc(pid)?;
        let k = self.k();
        let _g = lock(&p.lock);
        Ok(k.do_munlock(p.mm, addr, len, &kmm::memory::PageTableOps(k))?)
    }

    // --------------------------------------------------- fork, exit, exec

    /// `fork()`: a child with a copy of the address space (copy-on-write)
    /// and of the file descriptors. Returns the child's pid.
    pub fn fork(&self, pid: Pid) -> Result<Pid, SysError> {
        let p = self.proc(pid)?;
        let k = self.k();
        let child_mm = {
            let _g = lock(&p.lock);
            k.dup_mm(p.mm)?
        };
        let comm = lock(&p.comm).clone();
        let child = self.add_proc(&comm, child_mm, pid)?;
        let c = self.proc(child)?;
        *lock(&c.files) = lock(&p.files).clone();
        c.cpu.store(p.cpu.load(Relaxed), Relaxed);
        Ok(child)
    }

    /// `exit(code)`: the address space and the task are freed.
    pub fn exit(&self, pid: Pid, code: i32) -> Result<(), SysError> {
        let p = lock(&self.procs)
            .remove(&pid)
            .ok_or(SysError::NoProcess(pid))?;
        let k = self.k();
        let _g = lock(&p.lock);
        if let Ok(t) = k.task_struct(p.task) {
            t.exit_code.store(code as u64, Relaxed);
        }
        lock(&p.files).clear();
        self.free_mm(p.mm)?;
        k.task_free(p.task)?;
        Ok(())
    }

    /// Kills `pid` with `signal` after a bad access at `addr`, logging
    /// Linux's `segfault` line.
    fn kill(&self, pid: Pid, signal: &'static str, addr: u64, fault: Option<&Fault>) -> SysError {
        let (comm, cpu) = match self.proc(pid) {
            Ok(p) => (lock(&p.comm).clone(), p.cpu.load(Relaxed)),
            Err(_) => (String::from("?"), 0),
        };
        let error = fault.map_or(0, |f| f.error_code);
        if signal == "SIGSEGV" {
            self.k().platform().printk(format_args!(
                "{comm}[{pid}]: segfault at {addr:x} ip {:016x} sp {:016x} error {error:x} likely on CPU {cpu} (core {cpu}, socket 0)",
                0, 0
            ));
        } else {
            self.k().platform().printk(format_args!(
                "{comm}[{pid}]: bus error at {addr:x} (access beyond the end of a mapped file) on CPU {cpu}"
            ));
        }
        let _ = self.exit(pid, 128 + if signal == "SIGSEGV" { 11 } else { 7 });
        SysError::Killed { pid, signal, addr }
    }

    // ----------------------------------------------------- user accesses

    /// One user access of `len` bytes at `addr`: translate page by page,
    /// running the fault handler on page faults.
    fn access(
        &self,
        pid: Pid,
        addr: u64,
        len: usize,
        kind: Access,
        f: &mut dyn FnMut(u64, std::ops::Range<usize>) -> Result<(), KmmError>,
    ) -> Result<(), SysError> {
        let p = self.proc(pid)?;
        let k = self.k();
        let ps = k.page_size();
        let mut done = 0usize;
        let mut retries = 0;
        let (mut cpu, mut pt, mut asid) = self.cpu_pt(&p)?;
        while done < len || (len == 0 && done == 0 && retries == 0 && kind == Access::Exec) {
            let at = addr.wrapping_add(done as u64);
            self.sync_tlb();
            if retries > 0 {
                (cpu, pt, asid) = self.cpu_pt(&p)?;
            }
            match self.mmu.translate(cpu, &pt, asid, at, kind, true) {
                Ok(phys) => {
                    let n = ((ps - (at & (ps - 1))) as usize).min(len - done);
                    f(phys, done..done + n)?;
                    done += n;
                    retries = 0;
                    if len == 0 {
                        break;
                    }
                }
                Err(fault) => {
                    retries += 1;
                    if fault.kind != FaultKind::Page || retries > 4 {
                        return Err(self.kill(pid, "SIGSEGV", at, Some(&fault)));
                    }
                    let access = match kind {
                        Access::Read => FaultAccess::Read,
                        Access::Write => FaultAccess::Write,
                        Access::Exec => FaultAccess::Exec,
                    };
                    let r = {
                        let _g = lock(&p.lock);
                        k.handle_mm_fault(p.task, p.mm, at, access)?
                    };
                    match r {
                        FaultResult::Minor | FaultResult::Major => {}
                        FaultResult::Segv(SegvCode::MapErr | SegvCode::AccErr) => {
                            return Err(self.kill(pid, "SIGSEGV", at, Some(&fault)))
                        }
                        FaultResult::Bus => return Err(self.kill(pid, "SIGBUS", at, Some(&fault))),
                    }
                }
            }
        }
        Ok(())
    }

    /// A user-mode load of `buf.len()` bytes at `addr` in `pid`.
    pub fn load(&self, pid: Pid, addr: u64, buf: &mut [u8]) -> Result<(), SysError> {
        let k = self.k();
        let len = buf.len();
        self.access(pid, addr, len, Access::Read, &mut |phys, r| {
            k.phys().read(phys, &mut buf[r])
        })
    }

    /// A user-mode store of `data` at `addr` in `pid`.
    pub fn store(&self, pid: Pid, addr: u64, data: &[u8]) -> Result<(), SysError> {
        let k = self.k();
        self.access(pid, addr, data.len(), Access::Write, &mut |phys, r| {
            k.phys().write(phys, &data[r])
        })
    }

    /// `memset` of `len` bytes at `addr` to `byte`, in user mode.
    pub fn fill(&self, pid: Pid, addr: u64, len: u64, byte: u8) -> Result<(), SysError> {
        let k = self.k();
        self.access(pid, addr, len as usize, Access::Write, &mut |phys, r| {
            k.phys().fill(phys, r.len(), byte)
        })
    }

    /// An instruction fetch at `addr` (needs an executable mapping).
    pub fn fetch(&self, pid: Pid, addr: u64) -> Result<(), SysError> {
        let k = self.k();
        let mut b = [0u8; 1];
        self.access(pid, addr, 1, Access::Exec, &mut |phys, r| {
            k.phys().read(phys, &mut b[r])
        })
    }

    /// The TLB counters of every CPU, as text.
    pub fn tlb_stats(&self) -> String {
        self.mmu.show_tlb_stats()
    }

    // --------------------------------------------------------------- exec

    /// `execve(path, argv, envp)` in `pid`: a new address space with the
    /// ELF file's `PT_LOAD` segments (text read-execute, data private
    /// read-write, bss anonymous), its interpreter's, and a stack holding
    /// the arguments and environment. On failure the old address space is
    /// kept, as Linux does before the point of no return.
    pub fn exec(
        &self,
        pid: Pid,
        path: &str,
        argv: &[String],
        envp: &[String],
    ) -> Result<(), SysError> {
        let p = self.proc(pid)?;
        let k = self.k();
        let inode = self
            .inode(path, false)
            .map_err(|_| errno(Errno::ENOENT, "execve"))?;
        let elf = self.read_elf(&inode)?;
        let want = if k.arch().bits == 64 {
            crate::binfmt_elf::EM_X86_64
        } else {
            crate::binfmt_elf::EM_386
        };
        if elf.e_machine != want || elf.is_64 != (k.arch().bits == 64) {
            return Err(errno(Errno::ENOEXEC, "execve"));
        }
        let interp = match &elf.interp {
            Some(ip) => {
                let i = self
                    .inode(ip, false)
                    .map_err(|_| errno(Errno::ENOENT, "execve"))?;
                let e = self.read_elf(&i)?;
                Some((i, e))
            }
            None => None,
        };
        // The point of no return: a new mm.
        let mm = self.new_mm()?;
        let built = self.load_image(mm, &inode, &elf, interp.as_ref(), argv, envp);
        if let Err(e) = built {
            self.free_mm(mm)?;
            return Err(e);
        }
        let old_mm = {
            let mut procs = lock(&self.procs);
            let old = procs.get(&pid).cloned().ok_or(SysError::NoProcess(pid))?;
            let new = Arc::new(Proc {
                pid,
                ppid: old.ppid,
                task: old.task,
                mm,
                comm: Mutex::new(
                    path.rsplit('/')
                        .next()
                        .unwrap_or(path)
                        .chars()
                        .take(15)
                        .collect(),
                ),
                cpu: AtomicUsize::new(old.cpu.load(Relaxed)),
                lock: Mutex::new(()),
                files: Mutex::new(lock(&old.files).clone()),
            });
            procs.insert(pid, new);
            old.mm
        };
        k.task_set_mm(p.task, mm, &lock(&self.proc(pid)?.comm))?;
        {
            let _g = lock(&p.lock);
            self.free_mm(old_mm)?;
        }
        Ok(())
    }

    fn read_elf(&self, inode: &Inode) -> Result<Elf, SysError> {
        let platform = self.m.platform();
        let mut head = vec![0u8; 4096];
        let n = kmm::Platform::file_read(platform, inode.host_id, 0, &mut head)?;
        head.truncate(n);
        Elf::parse(&head, &mut |off, buf| {
            kmm::Platform::file_read(platform, inode.host_id, off, buf)
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .map_err(|_| errno(Errno::ENOEXEC, "execve"))
    }

    /// `load_elf_binary()`'s mappings, brk and stack for a fresh `mm`.
    fn load_image(
        &self,
        mm: u64,
        inode: &Inode,
        elf: &Elf,
        interp: Option<&(Arc<Inode>, Elf)>,
        argv: &[String],
        envp: &[String],
    ) -> Result<(), SysError> {
        let k = self.k();
        let ps = k.page_size();
        let task_size = self.task_size();
        // ELF_ET_DYN_BASE: two thirds of the address space for a PIE.
        let bias = if elf.e_type == ET_DYN {
            ((task_size / 3) * 2) & !(ps - 1)
        } else {
            0
        };
        let (lo, hi) = self.map_segments(mm, inode, elf, bias)?;
        let m = k.mm_struct(mm)?;
        let code = elf
            .loads()
            .filter(|ph| ph.p_flags & PF_X != 0)
            .map(|ph| (ph.p_vaddr + bias, ph.p_vaddr + bias + ph.p_filesz))
            .fold((u64::MAX, 0), |(a, b), (s, e)| (a.min(s), b.max(e)));
        let data = elf
            .loads()
            .filter(|ph| ph.p_flags & PF_W != 0)
            .map(|ph| (ph.p_vaddr + bias, ph.p_vaddr + bias + ph.p_filesz))
            .fold((u64::MAX, 0), |(a, b), (s, e)| (a.min(s), b.max(e)));
        m.start_code
            .store(if code.0 == u64::MAX { lo } else { code.0 }, Relaxed);
        m.end_code.store(code.1, Relaxed);
        m.start_data
            .store(if data.0 == u64::MAX { hi } else { data.0 }, Relaxed);
        m.end_data.store(data.1, Relaxed);
        let brk = hi.next_multiple_of(ps);
        m.start_brk.store(brk, Relaxed);
        m.brk.store(brk, Relaxed);
        if let Some((i, e)) = interp {
            // The interpreter goes top-down below mmap_base.
            let size = e.total_mapping_size(ps).next_multiple_of(ps);
            let base = k.get_unmapped_area(mm, 0, 0, size, 0, 0)?;
            self.map_segments(mm, i, e, base)?;
        }
        self.setup_stack(mm, argv, envp)?;
        Ok(())
    }

    /// Maps the `PT_LOAD` segments of `elf` at `bias` (`elf_map` + bss).
    /// Returns the lowest address and the end of the highest segment.
    fn map_segments(
        &self,
        mm: u64,
        inode: &Inode,
        elf: &Elf,
        bias: u64,
    ) -> Result<(u64, u64), SysError> {
        let k = self.k();
        let ps = k.page_size();
        let ops = kmm::memory::PageTableOps(k);
        let size = k.address_space(inode.mapping)?.size.load(Relaxed);
        let file = MmapFile {
            mapping: inode.mapping,
            size,
            readable: true,
            writable: false,
        };
        let (mut lo, mut hi) = (u64::MAX, 0);
        for ph in elf.loads() {
            let mut prot = 0;
            if ph.p_flags & PF_R != 0 {
                prot |= PROT_READ;
            }
            if ph.p_flags & PF_W != 0 {
                prot |= PROT_WRITE;
            }
            if ph.p_flags & PF_X != 0 {
                prot |= PROT_EXEC;
            }
            let vaddr = ph.p_vaddr + bias;
            let start = vaddr & !(ps - 1);
            let off = ph.p_offset & !(ps - 1);
            let file_end = vaddr + ph.p_filesz;
            let mem_end = vaddr + ph.p_memsz;
            let map_end = file_end.next_multiple_of(ps);
            if map_end > start {
                k.do_mmap(
                    mm,
                    Some(file),
                    start,
                    map_end - start,
                    prot,
                    MAP_PRIVATE | MAP_FIXED,
                    off / ps,
                    &ops,
                )?;
            }
            // padzero(): the rest of the last file page is bss.
            if ph.p_memsz > ph.p_filesz && !file_end.is_multiple_of(ps) && prot & PROT_WRITE != 0 {
                let zeros = vec![0u8; (ps - file_end % ps) as usize];
                self.store_kernel(mm, file_end, &zeros)?;
            }
            let bss = mem_end.next_multiple_of(ps);
            if bss > map_end {
                k.do_mmap(
                    mm,
                    None,
                    map_end,
                    bss - map_end,
                    prot,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                    0,
                    &ops,
                )?;
            }
            lo = lo.min(start);
            hi = hi.max(mem_end);
        }
        Ok((lo, hi))
    }

    /// Writes `data` at user address `addr` of `mm` as the kernel does
    /// (`clear_user`/`copy_to_user` during exec), faulting pages in.
    fn store_kernel(&self, mm: u64, addr: u64, data: &[u8]) -> Result<(), SysError> {
        let k = self.k();
        let ps = k.page_size();
        let mut done = 0usize;
        while done < data.len() {
            let at = addr + done as u64;
            let page = at & !(ps - 1);
            let pfn = match k.follow_pte(mm, page)? {
                Some((pfn, f)) if f.pte_write() => pfn,
                _ => {
                    match k.handle_mm_fault(0, mm, page, FaultAccess::Write)? {
                        FaultResult::Minor | FaultResult::Major => {}
                        _ => return Err(errno(Errno::EFAULT, "execve")),
                    }
                    k.follow_pte(mm, page)?
                        .ok_or(errno(Errno::EFAULT, "execve"))?
                        .0
                }
            };
            let n = ((ps - (at & (ps - 1))) as usize).min(data.len() - done);
            k.phys()
                .write(k.pfn_phys(pfn) + (at & (ps - 1)), &data[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// `setup_arg_pages()` + `create_elf_tables()`: the stack VMA below
    /// `TASK_SIZE`, growing down, with argc, argv, envp and their strings.
    fn setup_stack(&self, mm: u64, argv: &[String], envp: &[String]) -> Result<(), SysError> {
        let k = self.k();
        let task_size = self.task_size();
        let ops = kmm::memory::PageTableOps(k);
        let top = task_size;
        let start = top - STACK_INITIAL;
        k.do_mmap(
            mm,
            None,
            start,
            STACK_INITIAL,
            PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_GROWSDOWN,
            0,
            &ops,
        )?;
        let word = u64::from(k.arch().bits / 8);
        // Strings at the very top, then the pointer arrays below them.
        let mut sp = top - word;
        let put_str = |s: &str, sp: &mut u64| -> Result<u64, SysError> {
            let mut b = s.as_bytes().to_vec();
            b.push(0);
            *sp -= b.len() as u64;
            self.store_kernel(mm, *sp, &b)?;
            Ok(*sp)
        };
        let mut env_ptrs = Vec::new();
        for e in envp.iter().rev() {
            env_ptrs.push(put_str(e, &mut sp)?);
        }
        let env_end = top - word;
        let mut arg_ptrs = Vec::new();
        for a in argv.iter().rev() {
            arg_ptrs.push(put_str(a, &mut sp)?);
        }
        let arg_start = sp;
        let m = k.mm_struct(mm)?;
        m.arg_start.store(arg_start, Relaxed);
        m.arg_end.store(
            arg_ptrs.first().copied().unwrap_or(sp) + argv.last().map_or(0, |a| a.len() as u64 + 1),
            Relaxed,
        );
        m.env_start
            .store(env_ptrs.last().copied().unwrap_or(env_end), Relaxed);
        m.env_end.store(env_end, Relaxed);
        arg_ptrs.reverse();
        env_ptrs.reverse();
        // argc, argv[], NULL, envp[], NULL, auxv AT_NULL.
        let mut table: Vec<u64> = vec![argv.len() as u64];
        table.extend(&arg_ptrs);
        table.push(0);
        table.extend(&env_ptrs);
        table.push(0);
        table.extend([0, 0]);
        sp &= !15;
        sp -= table.len() as u64 * word;
        sp &= !15;
        let mut bytes = Vec::new();
        for v in &table {
            bytes.extend_from_slice(&v.to_le_bytes()[..word as usize]);
        }
        self.store_kernel(mm, sp, &bytes)?;
        m.start_stack.store(sp, Relaxed);
        Ok(())
    }

    // --------------------------------------------------------------- proc

    /// A `/proc` file: `/proc/PID/maps`, `smaps`, `statm`, `status`, or
    /// one of the machine's ([`crate::procfs`]).
    pub fn proc_read(&self, path: &str) -> Result<String, SysError> {
        let rest = path.strip_prefix("/proc/").unwrap_or("");
        if let Some((pid, file)) = rest.split_once('/') {
            if let Ok(pid) = pid.parse::<Pid>() {
                let p = self.proc(pid)?;
                let _g = lock(&p.lock);
                return match file {
                    "maps" => self.show_maps(&p, false),
                    "smaps" => self.show_maps(&p, true),
                    "statm" => self.show_statm(&p),
                    "status" => self.show_status(&p),
                    _ => Err(SysError::Host(format!("{path}: no such file"))),
                };
            }
        }
        crate::procfs::read(self.m, path).map_err(SysError::Host)
    }

    fn vmas(&self, mm: u64) -> Result<Vec<u64>, SysError> {
        let k = self.k();
        let mut v = Vec::new();
        let mut vma = k.mm_struct(mm)?.mmap.load(Relaxed);
        while vma != 0 {
            v.push(vma);
            vma = k.vm_area(vma)?.vm_next.load(Relaxed);
        }
        Ok(v)
    }

    fn inode_by_mapping(&self, mapping: u64) -> Option<Arc<Inode>> {
        lock(&self.inodes)
            .values()
            .find(|i| i.mapping == mapping)
            .cloned()
    }

    fn show_maps(&self, p: &Proc, smaps: bool) -> Result<String, SysError> {
        let k = self.k();
        let m = k.mm_struct(p.mm)?;
        let ps = k.page_size();
        let w64 = k.arch().bits == 64;
        let width = if w64 { 73 } else { 49 };
        let mut out = String::new();
        for vma in self.vmas(p.mm)? {
            let v = k.vm_area(vma)?;
            let (start, end) = (v.vm_start.load(Relaxed), v.vm_end.load(Relaxed));
            let flags = VmaFlags::from_bits_retain(v.vm_flags.load(Relaxed));
            let file = v.vm_file.load(Relaxed);
            let perms = format!(
                "{}{}{}{}",
                if flags.contains(VmaFlags::VM_READ) {
                    'r'
                } else {
                    '-'
                },
                if flags.contains(VmaFlags::VM_WRITE) {
                    'w'
                } else {
                    '-'
                },
                if flags.contains(VmaFlags::VM_EXEC) {
                    'x'
                } else {
                    '-'
                },
                if flags.contains(VmaFlags::VM_MAYSHARE) {
                    's'
                } else {
                    'p'
                },
            );
            let inode = (file != 0).then(|| self.inode_by_mapping(file)).flatten();
            let (off, dev, ino) = match &inode {
                Some(i) => (v.vm_pgoff.load(Relaxed) * ps, i.dev, i.ino),
                None => (0, 0, 0),
            };
            let name = if let Some(i) = &inode {
                i.path.clone()
            } else if file != 0 {
                "/dev/zero (deleted)".to_string()
            } else if start <= m.start_brk.load(Relaxed)
                && end >= m.brk.load(Relaxed)
                && m.brk.load(Relaxed) > m.start_brk.load(Relaxed)
            {
                "[heap]".to_string()
            } else if start <= m.start_stack.load(Relaxed) && m.start_stack.load(Relaxed) < end {
                "[stack]".to_string()
            } else {
                String::new()
            };
            let major = (dev >> 8) & 0xfff;
            let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
            let line =
                format!("{start:08x}-{end:08x} {perms} {off:08x} {major:02x}:{minor:02x} {ino} ");
            if name.is_empty() {
                out.push_str(&line);
            } else {
                out.push_str(&format!("{line:<width$}{name}"));
            }
            out.push('\n');
            if smaps {
                self.smaps_block(p.mm, start, end, flags, &mut out)?;
            }
        }
        Ok(out)
    }

    fn smaps_block(
        &self,
        mm: u64,
        start: u64,
        end: u64,
        flags: VmaFlags,
        out: &mut String,
    ) -> Result<(), SysError> {
        let k = self.k();
        let ps = k.page_size();
        let zero = k.zero_pfn();
        let (mut rss, mut pss, mut pss_dirty) = (0u64, 0u64, 0u64);
        let (mut sc, mut sd, mut pc, mut pd, mut referenced, mut anon) = (0, 0, 0, 0, 0, 0);
        k.for_each_user_pte(mm, start, end, &mut |_, pfn, f| {
            if pfn == zero {
                return;
            }
            let Ok(page) = k.pfn_to_page(pfn) else { return };
            let mapcount = page.page_mapcount().max(1) as u64;
            let dirty = f.pte_dirty() || page.flags().contains(kmm::PageFlags::DIRTY);
            rss += ps;
            // Pss in units of 2^-12 bytes, as Linux keeps it.
            let share = (ps << 12) / mapcount;
            pss += share;
            if dirty {
                pss_dirty += share;
            }
            match (mapcount > 1, dirty) {
                (true, true) => sd += ps,
                (true, false) => sc += ps,
                (false, true) => pd += ps,
                (false, false) => pc += ps,
            }
            if f.pte_young() {
                referenced += ps;
            }
            if page.mapping() == kmm::memory::PAGE_MAPPING_ANON {
                anon += ps;
            }
        })?;
        let kb = |b: u64| b >> 10;
        let mut line = |name: &str, v: u64| {
            out.push_str(&format!("{:<16}{:>8} kB\n", format!("{name}:"), v));
        };
        line("Size", kb(end - start));
        line("KernelPageSize", kb(ps));
        line("MMUPageSize", kb(ps));
        line("Rss", kb(rss));
        line("Pss", pss >> 22);
        line("Pss_Dirty", pss_dirty >> 22);
        line("Shared_Clean", kb(sc));
        line("Shared_Dirty", kb(sd));
        line("Private_Clean", kb(pc));
        line("Private_Dirty", kb(pd));
        line("Referenced", kb(referenced));
        line("Anonymous", kb(anon));
        line("KSM", 0);
        line("LazyFree", 0);
        line("AnonHugePages", 0);
        line("ShmemPmdMapped", 0);
        line("FilePmdMapped", 0);
        line("Shared_Hugetlb", 0);
        line("Private_Hugetlb", 0);
        line("Swap", 0);
        line("SwapPss", 0);
        line(
            "Locked",
            if flags.contains(VmaFlags::VM_LOCKED) {
                kb(rss)
            } else {
                0
            },
        );
        out.push_str("THPeligible:           0\n");
        let names = [
            (VmaFlags::VM_READ, "rd"),
            (VmaFlags::VM_WRITE, "wr"),
            (VmaFlags::VM_EXEC, "ex"),
            (VmaFlags::VM_SHARED, "sh"),
            (VmaFlags::VM_MAYREAD, "mr"),
            (VmaFlags::VM_MAYWRITE, "mw"),
            (VmaFlags::VM_MAYEXEC, "me"),
            (VmaFlags::VM_MAYSHARE, "ms"),
            (VmaFlags::VM_GROWSDOWN, "gd"),
            (VmaFlags::VM_PFNMAP, "pf"),
            (VmaFlags::VM_LOCKED, "lo"),
            (VmaFlags::VM_IO, "io"),
            (VmaFlags::VM_DONTCOPY, "dc"),
            (VmaFlags::VM_DONTEXPAND, "de"),
            (VmaFlags::VM_ACCOUNT, "ac"),
            (VmaFlags::VM_NORESERVE, "nr"),
        ];
        out.push_str("VmFlags:");
        for (f, n) in names {
            if flags.contains(f) {
                out.push(' ');
                out.push_str(n);
            }
        }
        out.push_str(" \n");
        Ok(())
    }

    fn rss(&self, mm: u64) -> Result<[u64; 4], SysError> {
        let m = self.k().mm_struct(mm)?;
        Ok([0, 1, 2, 3].map(|i| m.rss_stat[i].load(Relaxed)))
    }

    fn show_statm(&self, p: &Proc) -> Result<String, SysError> {
        let k = self.k();
        let m = k.mm_struct(p.mm)?;
        let ps = k.page_size();
        let rss = self.rss(p.mm)?;
        let shared = rss[kmm::mm_types::MM_FILEPAGES] + rss[kmm::mm_types::MM_SHMEMPAGES];
        let resident = shared + rss[kmm::mm_types::MM_ANONPAGES];
        let text = (m.end_code.load(Relaxed).next_multiple_of(ps)
            - (m.start_code.load(Relaxed) & !(ps - 1))
                .min(m.end_code.load(Relaxed).next_multiple_of(ps)))
            / ps;
        let data = m.data_vm.load(Relaxed) + m.stack_vm.load(Relaxed);
        Ok(format!(
            "{} {resident} {shared} {text} 0 {data} 0\n",
            m.total_vm.load(Relaxed)
        ))
    }

    fn show_status(&self, p: &Proc) -> Result<String, SysError> {
        let k = self.k();
        let m = k.mm_struct(p.mm)?;
        let kb = |pages: u64| pages << (k.page_shift() - 10);
        let rss = self.rss(p.mm)?;
        let (file, anon, shmem) = (
            rss[kmm::mm_types::MM_FILEPAGES],
            rss[kmm::mm_types::MM_ANONPAGES],
            rss[kmm::mm_types::MM_SHMEMPAGES],
        );
        let total = m.total_vm.load(Relaxed);
        let hwm = m.hiwater_rss.load(Relaxed).max(file + anon + shmem);
        let peak = m.hiwater_vm.load(Relaxed).max(total);
        let ps = k.page_size();
        let text = (m
            .end_code
            .load(Relaxed)
            .next_multiple_of(ps)
            .saturating_sub(m.start_code.load(Relaxed) & !(ps - 1)))
            >> 10;
        let exe_kb = kb(m.exec_vm.load(Relaxed));
        let t = k.task_struct(p.task)?;
        let mut s = String::new();
        let mut kv = |name: &str, v: String| s.push_str(&format!("{name}:\t{v}\n"));
        kv("Name", lock(&p.comm).clone());
        kv("State", "R (running)".into());
        kv("Tgid", p.pid.to_string());
        kv("Pid", p.pid.to_string());
        kv("PPid", p.ppid.to_string());
        let vm = |v: u64| format!("{v:>8} kB");
        kv("VmPeak", vm(kb(peak)));
        kv("VmSize", vm(kb(total)));
        kv("VmLck", vm(kb(m.locked_vm.load(Relaxed))));
        kv("VmPin", vm(0));
        kv("VmHWM", vm(kb(hwm)));
        kv("VmRSS", vm(kb(file + anon + shmem)));
        kv("RssAnon", vm(kb(anon)));
        kv("RssFile", vm(kb(file)));
        kv("RssShmem", vm(kb(shmem)));
        kv("VmData", vm(kb(m.data_vm.load(Relaxed))));
        kv("VmStk", vm(kb(m.stack_vm.load(Relaxed))));
        kv("VmExe", vm(text.min(exe_kb)));
        kv("VmLib", vm(exe_kb.saturating_sub(text)));
        kv("VmPTE", vm(m.pgtables_bytes.load(Relaxed) >> 10));
        kv("VmSwap", vm(0));
        kv("Threads", "1".into());
        kv(
            "Cpus_allowed_list",
            format!("0-{}", self.mmu.nr_cpus().saturating_sub(1)),
        );
        kv("voluntary_ctxt_switches", "0".into());
        kv("nonvoluntary_ctxt_switches", "0".into());
        kv("min_flt", t.min_flt.load(Relaxed).to_string());
        kv("maj_flt", t.maj_flt.load(Relaxed).to_string());
        Ok(s)
    }
}

impl Drop for System<'_> {
    /// Every process exits and the page cache is dropped, so the machine's
    /// memory is as before the system was made.
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = self.exit(pid, 0);
        }
        let inodes = std::mem::take(&mut *lock(&self.inodes));
        for (_, i) in inodes {
            let _ = self.k().filemap_put(i.mapping);
            self.m.platform().close_host_file(i.host_id);
        }
    }
}

/// `TaskStruct` accessor re-exported for tests.
pub type Task = TaskStruct;
