//! Measures the phases of one case instance (create, load, run, drop) for a guest image:
//! `cargo run --release -p runner --example overhead -- IMAGE CASE_NAME ENV`.
//! With `DUMP=1`: runs the case once and prints how it ended and every vCPU's registers.

use std::time::Instant;

use abi::env::Env;
use runner::image::GuestImage;
use runner::kvm::{Action, ExitHandler, Kvm, MachineOptions};

struct H;
impl ExitHandler for H {
    fn report(&mut self, m: &abi::report::Message) -> Action {
        if m.kind == abi::report::MessageKind::Result as u32 {
            Action::Stop
        } else {
            Action::Continue
        }
    }
    fn io_out(&mut self, _: u16, _: &[u8]) -> Action {
        Action::Continue
    }
    fn io_in(&mut self, _: u16, _: &mut [u8]) -> Action {
        Action::Continue
    }
    fn mmio_write(&mut self, _: u64, _: &[u8]) -> Action {
        Action::Continue
    }
    fn mmio_read(&mut self, _: u64, _: &mut [u8]) -> Action {
        Action::Continue
    }
    fn hlt(&mut self) -> Action {
        Action::Continue
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    let img = GuestImage::load(std::path::Path::new(&a[1]))?;
    let case = img
        .cases
        .iter()
        .find(|c| c.name == a[2])
        .ok_or("no such case")?;
    let env = Env::from_name(&a[3]).ok_or("env")?;
    let kvm = Kvm::open()?;
    let opts = MachineOptions {
        vcpus: case.vcpus.max(1),
        irqchip: case.flags & abi::case::FLAG_IRQCHIP != 0,
        ..MachineOptions::default()
    };
    if std::env::var_os("DUMP").is_some() {
        let mut m = kvm.create_machine(opts)?;
        runner::setup::write_page_tables(m.memory())?;
        img.load_into(m.memory())?;
        runner::setup::write_boot_info(m.memory(), env, case.entry, 0, opts.vcpus)?;
        m.set_long_mode_entry(img.entry)?;
        let end = m.run(&mut H, std::time::Duration::from_secs(2))?;
        println!("{end:?}\n{}", m.register_dump());
        return Ok(());
    }
    let mut t = [[0f64; 4]; 20];
    for row in t.iter_mut() {
        let t0 = Instant::now();
        let mut m = kvm.create_machine(opts)?;
        let t1 = Instant::now();
        runner::setup::write_page_tables(m.memory())?;
        img.load_into(m.memory())?;
        runner::setup::write_boot_info(m.memory(), env, case.entry, 0, opts.vcpus)?;
        m.set_long_mode_entry(img.entry)?;
        let t2 = Instant::now();
        let end = m.run(&mut H, std::time::Duration::from_secs(5))?;
        let t3 = Instant::now();
        drop(m);
        let t4 = Instant::now();
        assert_eq!(end, runner::kvm::RunEnd::Stopped);
        *row = [
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
            (t4 - t3).as_secs_f64(),
        ];
    }
    for (i, name) in ["create", "load", "run", "drop"].iter().enumerate() {
        let mut v: Vec<f64> = t.iter().map(|r| r[i] * 1e3).collect();
        v.sort_by(f64::total_cmp);
        println!(
            "{name:>6}: median {:.3} ms (min {:.3}, max {:.3})",
            v[v.len() / 2],
            v[0],
            v[v.len() - 1]
        );
    }
    Ok(())
}
