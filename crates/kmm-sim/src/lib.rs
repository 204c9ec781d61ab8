//! The simulated machine kmm runs on: physical RAM as real host bytes, CPUs as
//! host threads, a firmware memory map, and `/proc`.

pub mod cpu;
pub mod machine;
pub mod procfs;
pub mod ram;

pub use machine::{Machine, MachineConfig, SimError, SimPlatform};
