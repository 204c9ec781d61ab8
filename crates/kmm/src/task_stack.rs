//! Kernel stacks (`kernel/fork.c`: `alloc_thread_stack_node`,
//! `free_thread_stack`; `include/linux/sched/task_stack.h`: `end_of_stack`,
//! `task_stack_end_corrupted`, `stack_not_used`; `arch/x86/kernel/irq_*.c`:
//! the per-CPU interrupt stacks).
//!
//! Every task has a kernel stack of `THREAD_SIZE` bytes: an order-N block from
//! the buddy allocator, so it is naturally aligned to `THREAD_SIZE`. As in the
//! Linux of the seeds (before `CONFIG_THREAD_INFO_IN_TASK`), `thread_info`
//! sits at the lowest address of the block, and `end_of_stack()` — the word
//! right above it — holds [`STACK_END_MAGIC`]. The stack grows down from the
//! top of the block towards `thread_info`:
//!
//! ```text
//!  base + THREAD_SIZE  +------------------+  <- first frame's stack pointer
//!                      | frames ...       |     (grow downwards)
//!                      |        v         |
//!                      |  untouched zeros | <- stack_not_used() counts these
//!  end_of_stack()      | STACK_END_MAGIC  |
//!  base                | thread_info      |
//!                      +------------------+
//! ```
//!
//! A simulated call chain is pushed with [`Kmm::push_frame`]: real bytes are
//! written into the stack's RAM, so a chain that grows too deep, or a frame
//! holding a large on-stack buffer, overwrites the magic word and then
//! `thread_info`, exactly as on Linux. [`Kmm::check_stack`] is the check
//! `schedule_debug()` makes on every `schedule()`.
//!
//! A frame that would reach *below* the block is not written beyond it: on
//! Linux without `CONFIG_VMAP_STACK` those bytes land silently in whatever page
//! lies below, which the simulation refuses to damage. The push returns
//! [`KmmError::StackOverflow`] instead (after writing the part inside the block,
//! so the magic and `thread_info` are trashed as they would be). With the
//! emulated guard page ([`Kmm::set_vmap_stack`]) the push writes nothing and
//! reports Linux's `BUG: TASK stack guard page was hit`.
//!
//! With [`Kmm::set_vmap_stack`] (`CONFIG_VMAP_STACK`) new stacks come from
//! the vmalloc area (`__vmalloc_node_range` with `THREAD_ALIGN`), their pages
//! one at a time, and every access goes through the kernel page table. The
//! page below the base is unmapped (the guard page of the range below, or a
//! hole), so a frame that crosses the base really faults in the page-table
//! walk and is reported as `BUG: TASK stack guard page was hit`. On a machine
//! without a kernel page table (page sizes other than 4K) the guard page is
//! emulated instead. Not done: Linux's per-CPU cache of freed vmapped stacks
//! (`cached_stacks[]`).

use crate::error::KmmError;
use crate::gfp::GfpFlags;
use crate::mm::Kmm;
use crate::platform::Platform;
use crate::NR_CPUS;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};

/// `STACK_END_MAGIC` (`include/uapi/linux/magic.h`): the canary written at
/// `end_of_stack()`, as an `unsigned long` (4 bytes on x86, 8 on x86_64).
pub const STACK_END_MAGIC: u64 = 0x57AC_6E9D;

/// Size in bytes of kmm's `struct thread_info` at the base of every stack:
/// `flags` (u32), `cpu` (u32), `preempt_count` (u32), `status` (u32) and the
/// owning task (u64), in that order, little-endian.
pub const THREAD_INFO_SIZE: u64 = 24;

/// The stack sizes a machine may choose, in pages (`THREAD_SIZE_ORDER` 0, 1
/// and 2).
pub const THREAD_SIZE_PAGES: [u32; 3] = [1, 2, 4];

const NO_SETTING: u32 = u32::MAX;

/// Linux's default `THREAD_SIZE` for a profile, in bytes.
///
/// - 32-bit x86: 8 KiB (two pages) — the "traditional two-page stack" of the
///   seeds. Until 2.6.37 `CONFIG_4KSTACKS` offered one page, with separate
///   per-CPU interrupt stacks to make up for it; choose it with
///   [`Kmm::set_thread_size_pages`]`(1)`.
/// - x86_64: 16 KiB (`THREAD_SIZE_ORDER` 2, four pages) since Linux 3.15;
///   8 KiB before that.
pub fn default_thread_size(bits: u32) -> u64 {
    if bits == 32 {
        8 << 10
    } else {
        16 << 10
    }
}

/// `IRQ_STACK_SIZE` of a profile, in bytes: 16 KiB on x86_64
/// (`IRQ_STACK_ORDER` 2); `THREAD_SIZE` on 32-bit x86, whose `irq_stack` is
/// `char stack[THREAD_SIZE]`.
pub fn default_irq_stack_size(bits: u32, thread_size: u64) -> u64 {
    if bits == 32 {
        thread_size
    } else {
        16 << 10
    }
}

/// The kernel-stack state of one machine (what Linux keeps in
/// `NR_KERNEL_STACK_KB`, `hardirq_stack_ptr` and the `THREAD_SIZE` config).
pub struct StackState {
    /// Chosen `THREAD_SIZE_ORDER`, or `NO_SETTING` for the profile default.
    order: AtomicU32,
    /// `CONFIG_VMAP_STACK`: new stacks are virtually mapped.
    vmap: AtomicBool,
    /// `NR_KERNEL_STACK_KB`.
    kernel_stack_kb: AtomicU64,
    /// Task stacks allocated and not freed.
    nr_stacks: AtomicU64,
    /// `check_stack_usage()`'s `lowest_to_date`.
    lowest_to_date: AtomicU64,
    /// Physical base of each CPU's interrupt stack; 0 before first use.
    irq_stacks: [AtomicU64; NR_CPUS],
    /// Order of the interrupt stacks, fixed by the first one allocated.
    irq_order: AtomicU32,
}

impl StackState {
    /// No stacks, profile defaults.
    pub(crate) const fn new() -> StackState {
        StackState {
            order: AtomicU32::new(NO_SETTING),
            vmap: AtomicBool::new(false),
            kernel_stack_kb: AtomicU64::new(0),
            nr_stacks: AtomicU64::new(0),
            lowest_to_date: AtomicU64::new(u64::MAX),
            irq_stacks: [const { AtomicU64::new(0) }; NR_CPUS],
            irq_order: AtomicU32::new(NO_SETTING),
        }
    }
}

/// kmm's `struct thread_info`, as read back from the base of a stack
/// (`task_thread_info()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadInfo {
    /// `flags`: the `TIF_*` bits.
    pub flags: u32,
    /// `cpu`: the CPU the task last ran on.
    pub cpu: u32,
    /// `preempt_count`.
    pub preempt_count: u32,
    /// `status`: the `TS_*` bits.
    pub status: u32,
    /// `task`: the owning task (kmm stores its id where Linux stores the
    /// `task_struct` pointer).
    pub task: u64,
}

/// One task's kernel stack (`task->stack`): an order-`THREAD_SIZE_ORDER`
/// block with `thread_info` at its base, plus the simulated stack pointer.
///
/// Not `Clone`: [`Kmm::free_thread_stack`] consumes it, so a stack cannot be
/// freed twice.
#[derive(Debug)]
pub struct KernelStack {
    phys: u64,
    virt: u64,
    order: u32,
    size: u64,
    word: u64,
    nid: usize,
    task: u64,
    /// Current stack pointer, as an offset from the base.
    sp: u64,
    depth: u32,
    /// Virtually mapped (`CONFIG_VMAP_STACK`): reached through the kernel
    /// page table, with an unmapped guard page below.
    vmapped: bool,
}

impl KernelStack {
    /// Physical address of the base (where `thread_info` is). A virtually
    /// mapped stack is not physically contiguous: this is its first page.
    pub fn phys(&self) -> u64 {
        self.phys
    }

    /// True for a virtually mapped stack (in the vmalloc area).
    pub fn is_vmapped(&self) -> bool {
        self.vmapped
    }

    /// `task_stack_page()`: the address of the base (direct map, or vmalloc
    /// area for a virtually mapped stack).
    pub fn base(&self) -> u64 {
        self.virt
    }

    /// The top of the stack (`base + THREAD_SIZE`), where the first frame starts.
    pub fn top(&self) -> u64 {
        self.virt + self.size
    }

    /// `THREAD_SIZE` of this stack, in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// `THREAD_SIZE_ORDER` of this stack.
    pub fn order(&self) -> u32 {
        self.order
    }

    /// The node the stack was asked for.
    pub fn nid(&self) -> usize {
        self.nid
    }

    /// The owning task id written into `thread_info`.
    pub fn task(&self) -> u64 {
        self.task
    }

    /// `end_of_stack()`: the direct-map address of the magic word, right above
    /// `thread_info`.
    pub fn end_of_stack(&self) -> u64 {
        self.virt + THREAD_INFO_SIZE
    }

    /// The simulated stack pointer (`current_stack_pointer`).
    pub fn sp(&self) -> u64 {
        self.virt + self.sp
    }

    /// Bytes in use: `top() - sp()`.
    pub fn used(&self) -> u64 {
        self.size - self.sp
    }

    /// Frames pushed and not popped.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// The lowest stack pointer a frame may reach without touching the magic
    /// word: everything in `[usable_bottom(), top())` is free for frames.
    pub fn usable_bottom(&self) -> u64 {
        self.end_of_stack() + self.word
    }
}

/// A per-CPU interrupt stack (`hardirq_stack_ptr` / `irq_stack_backing_store`
/// on x86_64, `hardirq_stack` on x86): `IRQ_STACK_SIZE` bytes with no
/// `thread_info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqStack {
    /// The CPU it belongs to.
    pub cpu: usize,
    /// Physical address of its lowest byte.
    pub phys: u64,
    /// Direct-map address of its lowest byte.
    pub base: u64,
    /// `IRQ_STACK_SIZE`.
    pub size: u64,
}

impl IrqStack {
    /// `hardirq_stack_ptr`: the top, where an interrupt's first frame starts.
    pub fn top(&self) -> u64 {
        self.base + self.size
    }
}

impl<P: Platform> Kmm<P> {
    // ------------------------------------------------------------- settings

    /// `THREAD_SIZE_ORDER`: the chosen order, or the profile's default
    /// ([`default_thread_size`]).
    pub fn thread_size_order(&self) -> u32 {
        match self.task_stack.order.load(Relaxed) {
            NO_SETTING => self.get_order(default_thread_size(self.arch.bits)),
            o => o,
        }
    }

    /// `THREAD_SIZE`: bytes of every task's kernel stack.
    pub fn thread_size(&self) -> u64 {
        self.page_size() << self.thread_size_order()
    }

    /// Chooses `THREAD_SIZE` as 1, 2 or 4 pages (Linux: a build option, e.g.
    /// `CONFIG_4KSTACKS` on old x86). Refused while any task stack exists.
    pub fn set_thread_size_pages(&self, pages: u32) -> Result<(), KmmError> {
        if !THREAD_SIZE_PAGES.contains(&pages) {
            return Err(KmmError::InvalidArgument {
                what: "THREAD_SIZE must be 1, 2 or 4 pages",
            });
        }
        if self.task_stack.nr_stacks.load(Relaxed) != 0 {
            return Err(KmmError::InvalidArgument {
                what: "THREAD_SIZE cannot change while kernel stacks exist",
            });
        }
        self.task_stack.order.store(pages.trailing_zeros(), Relaxed);
        Ok(())
    }

    /// Turns `CONFIG_VMAP_STACK` on or off for stacks allocated from now
    /// on: they are virtually mapped with an unmapped guard page below, and
    /// a push that would reach below a stack writes nothing and reports
    /// `BUG: TASK stack guard page was hit`. (Without a kernel page table,
    /// the guard page is emulated for every stack.)
    pub fn set_vmap_stack(&self, on: bool) {
        self.task_stack.vmap.store(on, Relaxed);
    }

    /// Whether the emulated `CONFIG_VMAP_STACK` guard page is on.
    pub fn vmap_stack(&self) -> bool {
        self.task_stack.vmap.load(Relaxed)
    }

    /// `global_node_page_state(NR_KERNEL_STACK_KB)`: kB of task stacks
    /// (`KernelStack:` in `/proc/meminfo`, `nr_kernel_stack` in `/proc/vmstat`).
    pub fn nr_kernel_stack_kb(&self) -> u64 {
        self.task_stack.kernel_stack_kb.load(Relaxed)
    }

    /// Task stacks allocated and not yet freed.
    pub fn nr_thread_stacks(&self) -> u64 {
        self.task_stack.nr_stacks.load(Relaxed)
    }

    fn stack_word(&self) -> u64 {
        u64::from(self.arch.bits / 8)
    }

    // ---------------------------------------------------------- task stacks

    /// `alloc_thread_stack_node()`: a zeroed `THREAD_SIZE` block on node `nid`
    /// (`THREADINFO_GFP` = `GFP_KERNEL | __GFP_ZERO`), with `thread_info` for
    /// `task` at its base and [`STACK_END_MAGIC`] at `end_of_stack()`
    /// (`set_task_stack_end_magic()`). Accounted in `NR_KERNEL_STACK_KB`.
    pub fn alloc_thread_stack_node(&self, task: u64, nid: usize) -> Result<KernelStack, KmmError> {
        let order = self.thread_size_order();
        let gfp = GfpFlags::GFP_KERNEL | GfpFlags::__GFP_ZERO;
        if self.vmap_stack() && self.swapper_pg_dir().is_some() {
            return self.alloc_vmap_stack(task, nid, order, gfp);
        }
        let page = self.alloc_pages_node(nid, gfp, order)?;
        let phys = self.page_to_phys(page)?;
        let virt = match self.__va(phys) {
            Ok(v) => v,
            Err(e) => {
                let _ = self.__free_pages(page, order);
                return Err(e);
            }
        };
        let size = self.page_size() << order;
        let st = KernelStack {
            phys,
            virt,
            order,
            size,
            word: self.stack_word(),
            nid,
            task,
            sp: size,
            depth: 0,
            vmapped: false,
        };
        let written = self.init_stack(&st);
        if let Err(e) = written {
            let _ = self.__free_pages(page, order);
            return Err(e);
        }
        self.account_stack(&st);
        Ok(st)
    }

    fn account_stack(&self, st: &KernelStack) {
        self.task_stack.nr_stacks.fetch_add(1, Relaxed);
        self.task_stack
            .kernel_stack_kb
            .fetch_add(st.size >> 10, Relaxed);
    }

    /// `thread_info` at the base, the magic at `end_of_stack()`.
    fn init_stack(&self, st: &KernelStack) -> Result<(), KmmError> {
        let ti = ThreadInfo {
            flags: 0,
            cpu: self.platform.smp_processor_id() as u32,
            preempt_count: 0,
            status: 0,
            task: st.task,
        };
        self.write_thread_info(st, &ti)?;
        self.write_word(st, THREAD_INFO_SIZE, STACK_END_MAGIC)
    }

    /// `alloc_thread_stack_node()` with `CONFIG_VMAP_STACK`:
    /// `__vmalloc_node(THREAD_SIZE, THREAD_ALIGN, THREADINFO_GFP, node)`.
    fn alloc_vmap_stack(
        &self,
        task: u64,
        nid: usize,
        order: u32,
        gfp: GfpFlags,
    ) -> Result<KernelStack, KmmError> {
        let size = self.page_size() << order;
        let caller = core::panic::Location::caller();
        let virt = self.__vmalloc_node_range(size, size, gfp, Some(nid), false, caller)?;
        let phys = match self.vmalloc_to_pfn(virt) {
            Ok(pfn) => self.pfn_phys(pfn),
            Err(e) => {
                let _ = self.vfree(virt);
                return Err(e);
            }
        };
        let st = KernelStack {
            phys,
            virt,
            order,
            size,
            word: self.stack_word(),
            nid,
            task,
            sp: size,
            depth: 0,
            vmapped: true,
        };
        if let Err(e) = self.init_stack(&st) {
            let _ = self.vfree(virt);
            return Err(e);
        }
        self.account_stack(&st);
        Ok(st)
    }

    /// The [`KernelStack`] whose base is `base` (`task->stack`), owned by
    /// `task`, rebuilt from the allocator's records: the page's allocation
    /// order for a direct-mapped stack, the vmalloc area for a virtually
    /// mapped one. The stack pointer is at the top (no frames).
    pub fn kernel_stack_at(&self, base: u64, task: u64) -> Result<KernelStack, KmmError> {
        let word = self.stack_word();
        if self.is_vmalloc_addr(base) {
            let area = self.find_vm_area(base).ok_or(KmmError::InvalidAddress {
                addr: base,
                what: "task->stack that no vmalloc returned",
            })?;
            let size = area.area_size();
            let phys = self.pfn_phys(self.vmalloc_to_pfn(base)?);
            return Ok(KernelStack {
                phys,
                virt: base,
                order: (size / self.page_size()).trailing_zeros(),
                size,
                word,
                nid: area.nid,
                task,
                sp: size,
                depth: 0,
                vmapped: true,
            });
        }
        let phys = self.__pa(base)?;
        let page = self.phys_to_page(phys)?;
        let order = page.alloc_order().ok_or(KmmError::InvalidAddress {
            addr: base,
            what: "task->stack that is not an allocated block",
        })?;
        let size = self.page_size() << order;
        Ok(KernelStack {
            phys,
            virt: base,
            order,
            size,
            word,
            nid: page.nid(),
            task,
            sp: size,
            depth: 0,
            vmapped: false,
        })
    }

    /// `free_thread_stack()`: returns the block to the page allocator and
    /// takes it out of `NR_KERNEL_STACK_KB`. Like `check_stack_usage()` at
    /// exit, prints `... used greatest stack depth: N bytes left` when this
    /// stack came closer to its end than any before it.
    pub fn free_thread_stack(&self, st: KernelStack) -> Result<(), KmmError> {
        let free = self.stack_not_used(&st)?;
        if st.vmapped {
            self.vfree(st.virt)?;
        } else {
            let page = self.phys_to_page(st.phys)?;
            self.__free_pages(page, st.order)?;
        }
        self.task_stack.nr_stacks.fetch_sub(1, Relaxed);
        self.task_stack
            .kernel_stack_kb
            .fetch_sub(st.size >> 10, Relaxed);
        if self.task_stack.lowest_to_date.fetch_min(free, Relaxed) > free {
            self.platform.printk(format_args!(
                "task {} used greatest stack depth: {free} bytes left",
                st.task
            ));
        }
        Ok(())
    }

    /// Writes `data` at byte `off` of the stack (through the kernel page
    /// table for a virtually mapped stack).
    fn stack_write(&self, st: &KernelStack, off: u64, data: &[u8]) -> Result<(), KmmError> {
        if st.vmapped {
            self.vwrite(st.virt + off, data)
        } else {
            self.mem.write(st.phys + off, data)
        }
    }

    fn stack_read(&self, st: &KernelStack, off: u64, buf: &mut [u8]) -> Result<(), KmmError> {
        if st.vmapped {
            self.vread(st.virt + off, buf)
        } else {
            self.mem.read(st.phys + off, buf)
        }
    }

    fn stack_fill(&self, st: &KernelStack, off: u64, len: u64, byte: u8) -> Result<(), KmmError> {
        if st.vmapped {
            let chunk = [byte; 256];
            let mut done = 0;
            while done < len {
                let n = (len - done).min(chunk.len() as u64);
                self.vwrite(st.virt + off + done, &chunk[..n as usize])?;
                done += n;
            }
            Ok(())
        } else {
            self.mem.fill(st.phys + off, len as usize, byte)
        }
    }

    fn write_word(&self, st: &KernelStack, off: u64, v: u64) -> Result<(), KmmError> {
        self.stack_write(st, off, &v.to_le_bytes()[..st.word as usize])
    }

    fn read_word(&self, st: &KernelStack, off: u64) -> Result<u64, KmmError> {
        let mut b = [0u8; 8];
        self.stack_read(st, off, &mut b[..st.word as usize])?;
        Ok(u64::from_le_bytes(b))
    }

    fn write_thread_info(&self, st: &KernelStack, ti: &ThreadInfo) -> Result<(), KmmError> {
        let mut b = [0u8; THREAD_INFO_SIZE as usize];
        b[0..4].copy_from_slice(&ti.flags.to_le_bytes());
        b[4..8].copy_from_slice(&ti.cpu.to_le_bytes());
        b[8..12].copy_from_slice(&ti.preempt_count.to_le_bytes());
        b[12..16].copy_from_slice(&ti.status.to_le_bytes());
        b[16..24].copy_from_slice(&ti.task.to_le_bytes());
        self.stack_write(st, 0, &b)
    }

    /// `task_thread_info()`: the `thread_info` at the base of the stack, as it
    /// is in RAM now (an overflow may have overwritten it).
    pub fn task_thread_info(&self, st: &KernelStack) -> Result<ThreadInfo, KmmError> {
        let mut b = [0u8; THREAD_INFO_SIZE as usize];
        self.stack_read(st, 0, &mut b)?;
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut t = [0u8; 8];
        t.copy_from_slice(&b[16..24]);
        Ok(ThreadInfo {
            flags: u32_at(0),
            cpu: u32_at(4),
            preempt_count: u32_at(8),
            status: u32_at(12),
            task: u64::from_le_bytes(t),
        })
    }

    /// The word at `end_of_stack()` as it is in RAM now.
    pub fn stack_end_word(&self, st: &KernelStack) -> Result<u64, KmmError> {
        self.read_word(st, THREAD_INFO_SIZE)
    }

    /// `task_stack_end_corrupted()`: the magic at `end_of_stack()` is gone.
    pub fn task_stack_end_corrupted(&self, st: &KernelStack) -> Result<bool, KmmError> {
        Ok(self.stack_end_word(st)? != STACK_END_MAGIC)
    }

    /// `schedule_debug()`'s stack check: when the magic at `end_of_stack()`
    /// is gone, prints Linux's `Kernel panic - not syncing: corrupted stack
    /// end detected inside scheduler` and returns
    /// [`KmmError::StackCorrupted`] (the tool itself does not panic).
    pub fn check_stack(&self, st: &KernelStack) -> Result<(), KmmError> {
        let found = self.stack_end_word(st)?;
        if found == STACK_END_MAGIC {
            return Ok(());
        }
        let end = st.end_of_stack();
        self.platform.printk(format_args!(
            "Kernel panic - not syncing: corrupted stack end detected inside scheduler"
        ));
        self.platform.printk(format_args!(
            "task {}: end_of_stack {end:#x} holds {found:#x}, not STACK_END_MAGIC {STACK_END_MAGIC:#x}",
            st.task
        ));
        Err(KmmError::StackCorrupted { end, found })
    }

    /// `stack_not_used()` (`CONFIG_DEBUG_STACK_USAGE`): bytes from
    /// `end_of_stack()` (the magic word included) up to the first non-zero
    /// word — the part of the zeroed stack no frame has ever written. The
    /// high-water mark of the stack is `size() - THREAD_INFO_SIZE - this`.
    /// Frames filled with zero bytes are invisible to it, as on Linux.
    pub fn stack_not_used(&self, st: &KernelStack) -> Result<u64, KmmError> {
        let end = THREAD_INFO_SIZE;
        let mut n = end + st.word;
        while n < st.size && self.read_word(st, n)? == 0 {
            n += st.word;
        }
        Ok(n - end)
    }

    /// The deepest the stack has ever been, in bytes from its top, by
    /// [`Self::stack_not_used`].
    pub fn stack_high_water(&self, st: &KernelStack) -> Result<u64, KmmError> {
        Ok(st.size - THREAD_INFO_SIZE - self.stack_not_used(st)?)
    }

    /// Simulates a function call: pushes a frame of `size` bytes (rounded up
    /// to whole words, at least one) below the stack pointer. Its lowest word
    /// holds the caller's stack pointer (the saved frame pointer that
    /// [`Self::pop_frame`] follows back); the rest is filled with `pattern`,
    /// standing for locals and on-stack buffers.
    ///
    /// A frame that reaches into `thread_info` and the magic word is pushed
    /// without complaint, as on Linux: [`Self::check_stack`] finds the damage.
    /// A frame that would reach below the block fails with
    /// [`KmmError::StackOverflow`] and is not pushed: with the emulated guard
    /// page nothing is written (`BUG: TASK stack guard page was hit at ...`);
    /// without it the part inside the block is written and the part that
    /// Linux would write into the page below is not.
    pub fn push_frame(&self, st: &mut KernelStack, size: u64, pattern: u8) -> Result<(), KmmError> {
        let w = st.word;
        let frame = size.max(1).div_ceil(w).saturating_mul(w);
        if frame > st.sp {
            let mut fault = st.virt - (frame - st.sp);
            if st.vmapped {
                // The real thing: the frame's lowest bytes fall in the
                // unmapped page below the stack, and the store faults.
                match self.vwrite(fault, &[pattern]) {
                    Err(KmmError::NotMapped { virt }) => fault = virt,
                    other => {
                        other?;
                        return Err(KmmError::InvalidArgument {
                            what: "the page below a virtually mapped stack is mapped",
                        });
                    }
                }
            }
            if self.vmap_stack() || st.vmapped {
                self.platform.printk(format_args!(
                    "BUG: TASK stack guard page was hit at {fault:#x} (stack is {:#x}..{:#x})",
                    st.virt,
                    st.top()
                ));
                // handle_stack_overflow() then calls die("stack guard page").
                self.platform
                    .printk(format_args!("stack guard page: 0000 [#1]"));
                return Err(KmmError::StackOverflow {
                    addr: fault,
                    guard_page: true,
                });
            }
            // Without a guard page: the bytes inside the block are written
            // (thread_info and the magic are trashed); the rest is not.
            self.stack_fill(st, 0, st.sp, pattern)?;
            self.platform.printk(format_args!(
                "kmm: task {} kernel stack overflow: frame of {frame} bytes would write {} bytes below the stack at {:#x}",
                st.task,
                frame - st.sp,
                st.virt
            ));
            return Err(KmmError::StackOverflow {
                addr: fault,
                guard_page: false,
            });
        }
        let new_sp = st.sp - frame;
        if frame > w {
            self.stack_fill(st, new_sp + w, frame - w, pattern)?;
        }
        // The saved frame pointer: the caller's stack pointer.
        let link = st.virt + st.sp;
        self.write_word(st, new_sp, link)?;
        st.sp = new_sp;
        st.depth += 1;
        Ok(())
    }

    /// Simulates a return: pops the innermost frame by following the saved
    /// stack pointer in its lowest word. The frame's bytes stay in RAM (as on
    /// a real stack), which is what [`Self::stack_not_used`] measures.
    pub fn pop_frame(&self, st: &mut KernelStack) -> Result<(), KmmError> {
        if st.depth == 0 {
            return Err(KmmError::InvalidArgument {
                what: "pop_frame on a stack with no frames",
            });
        }
        let link = self.read_word(st, st.sp)?;
        let cur = st.virt + st.sp;
        if link <= cur || link > st.top() {
            return Err(KmmError::InvalidArgument {
                what: "saved frame pointer on the kernel stack is corrupted",
            });
        }
        st.sp = link - st.virt;
        st.depth -= 1;
        Ok(())
    }

    // ----------------------------------------------------- interrupt stacks

    /// `IRQ_STACK_SIZE` in bytes ([`default_irq_stack_size`]).
    pub fn irq_stack_size(&self) -> u64 {
        self.page_size() << self.irq_stack_order()
    }

    fn irq_stack_order(&self) -> u32 {
        match self.task_stack.irq_order.load(Relaxed) {
            NO_SETTING => {
                let bytes = default_irq_stack_size(self.arch.bits, self.thread_size());
                self.get_order(bytes)
            }
            o => o,
        }
    }

    /// `irq_init_percpu_irqstack(cpu)`: the interrupt stack of `cpu`,
    /// allocated from the CPU's node on first use and kept for the life of
    /// the machine. Interrupt stacks are not counted in `NR_KERNEL_STACK_KB`
    /// (Linux counts task stacks only; x86_64 takes them from per-CPU memory).
    pub fn irq_stack(&self, cpu: usize) -> Result<IrqStack, KmmError> {
        if cpu >= self.nr_cpu_ids {
            return Err(KmmError::InvalidArgument {
                what: "interrupt stack of a CPU at or above nr_cpu_ids",
            });
        }
        let order = self.irq_stack_order();
        self.task_stack.irq_order.store(order, Relaxed);
        let slot = &self.task_stack.irq_stacks[cpu];
        let mut phys = slot.load(Relaxed);
        if phys == 0 {
            let nid = self.cpu_to_node[cpu] as usize;
            let gfp = GfpFlags::GFP_KERNEL | GfpFlags::__GFP_ZERO;
            let page = self.alloc_pages_node(nid, gfp, order)?;
            let mine = self.page_to_phys(page)?;
            phys = match slot.compare_exchange(0, mine, Relaxed, Relaxed) {
                Ok(_) => mine,
                Err(theirs) => {
                    self.__free_pages(page, order)?;
                    theirs
                }
            };
        }
        Ok(IrqStack {
            cpu,
            phys,
            base: self.__va(phys)?,
            size: self.page_size() << order,
        })
    }

    /// Allocates the interrupt stack of every CPU (what x86 does at boot).
    pub fn init_irq_stacks(&self) -> Result<(), KmmError> {
        for cpu in 0..self.nr_cpu_ids {
            self.irq_stack(cpu)?;
        }
        Ok(())
    }

    /// Pages held by interrupt stacks.
    pub fn nr_irq_stack_pages(&self) -> u64 {
        let n = self.task_stack.irq_stacks[..self.nr_cpu_ids]
            .iter()
            .filter(|s| s.load(Relaxed) != 0)
            .count() as u64;
        n << self.irq_stack_order()
    }
}
