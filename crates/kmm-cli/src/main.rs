use kmm_sim::{Machine, MachineConfig};
fn main() {
    let m = Machine::boot(MachineConfig::default()).unwrap();
    for l in m.take_log() {
        println!("{l}");
    }
    for f in kmm_sim::procfs::PROC_FILES {
        println!("== {f}");
        print!("{}", kmm_sim::procfs::read(&m, f).unwrap());
    }
}
