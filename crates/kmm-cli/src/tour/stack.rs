//! Tour step: kernel stacks (seed 000: 在栈上的静态分配; LKD's small,
//! fixed-size kernel stacks).

use super::{yes, Tour};
use crate::Error;
use kmm_sim::Machine;

/// A task's kernel stack: thread_info at the bottom, the end-of-stack
/// magic above it, a call chain that runs too deep, and the report.
pub fn step(t: &mut Tour, m: &Machine) -> Result<(), Error> {
    let k = m.kmm();
    t.step(
        "Kernel stacks: small, fixed, and easy to overflow",
        "Every task has a kernel stack of THREAD_SIZE bytes (two pages on 32-bit x86, four\n\
         on x86_64), with struct thread_info at its lowest address and STACK_END_MAGIC just\n\
         above it. The stack grows down towards them: a deep call chain or a big local array\n\
         overwrites the magic word, which the scheduler checks.",
    )?;
    let mut st = k.alloc_thread_stack_node(1, 0)?;
    let ti = k.task_thread_info(&st)?;
    t.say(format!(
        "> alloc_thread_stack_node(): THREAD_SIZE {}K at {:#x}-{:#x}, aligned to its size: {}",
        k.thread_size() >> 10,
        st.base(),
        st.top() - 1,
        yes(st.base() % k.thread_size() == 0)
    ))?;
    t.say(format!(
        "  thread_info at the base (task {}, cpu {}); end_of_stack {:#x} holds {:#x} (STACK_END_MAGIC): {}",
        ti.task,
        ti.cpu,
        st.end_of_stack(),
        k.stack_end_word(&st)?,
        yes(!k.task_stack_end_corrupted(&st)?)
    ))?;
    let frame = 200;
    let mut depth = 0;
    while !k.task_stack_end_corrupted(&st)? {
        if k.push_frame(&mut st, frame, 0x5a).is_err() {
            break;
        }
        depth += 1;
    }
    t.say(format!(
        "> a recursive function with {frame}-byte frames calls itself {depth} times: the last frame reaches the magic"
    ))?;
    let r = k.check_stack(&st);
    t.say(format!("> check_stack() = {r:?}"))?;
    t.dmesg(m)?;
    while k.pop_frame(&mut st).is_ok() {}
    k.free_thread_stack(st)?;
    t.say(format!(
        "> free_thread_stack(): KernelStack back to {} kB",
        k.nr_kernel_stack_kb()
    ))?;
    Ok(())
}
