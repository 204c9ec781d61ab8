//! The simulated machine kmm runs on: physical RAM as real host bytes, CPUs as
//! host threads, a firmware memory map, and `/proc`.
//!
//! ## Linux name → kmm-sim item
//!
//! | Linux | kmm-sim |
//! |---|---|
//! | `DEFINE_PER_CPU` | [`cpu::PerCpu::new`] / [`cpu::PerCpu::for_cpus`] |
//! | `get_cpu_var` / `put_cpu_var` | [`cpu::PerCpu::get_cpu_var`] (the guard's drop is `put_cpu_var`) |
//! | `per_cpu(var, cpu)` | [`cpu::PerCpu::per_cpu`] |
//! | `get_cpu` / `put_cpu` | [`cpu::Cpus::get_cpu`] (the guard's drop is `put_cpu`) |
//! | `smp_processor_id` | [`cpu::Cpus::smp_processor_id`] |
//! | `for_each_online_cpu`, `for_each_possible_cpu` | [`cpu::Cpus::for_each_online_cpu`], [`cpu::Cpus::for_each_possible_cpu`] |
//! | `preempt_disable` / `preempt_enable`, `preempt_count` | [`cpu::Cpus::preempt_disable`], [`cpu::Cpus::preempt_count`] |
//! | `local_irq_save` / `local_irq_restore`, `local_irq_disable`, `irqs_disabled` | [`cpu::Cpus::local_irq_save`], [`cpu::Cpus::local_irq_disable`], [`cpu::Cpus::irqs_disabled`] |
//! | `local_bh_disable` / `local_bh_enable` | [`cpu::Cpus::local_bh_disable`] |
//! | `irq_enter` / `irq_exit`, `nmi_enter` | [`cpu::Cpus::irq_enter`], [`cpu::Cpus::nmi_enter`] |
//! | `in_atomic`, `in_interrupt`, `in_softirq`, `in_irq`, `in_task` | [`cpu::Cpus::in_atomic`], [`cpu::Cpus::in_interrupt`], [`cpu::Cpus::in_softirq`], [`cpu::Cpus::in_irq`], [`cpu::Cpus::in_task`] |
//! | `on_each_cpu`, `smp_call_function_single` | [`cpu::Cpus::on_each_cpu`], [`cpu::Cpus::run_on_cpu`] |
//! | `current` | [`cpu::Cpus::current_task`] |
//! | the e820 map, NUMA emulation | [`machine::e820_map`], [`machine::split_nodes`] |
//! | `/proc/*` | [`procfs::read`] |

pub mod binfmt_elf;
pub mod cpu;
pub mod machine;
pub mod membarrier;
pub mod mmu;
pub mod process;
pub mod procfs;
pub mod ram;

pub use machine::{Machine, MachineConfig, SimError, SimPlatform};
