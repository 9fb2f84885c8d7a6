//! Measures the phases of one case instance (create, boot, run, drop) on this machine's KVM:
//! `cargo run --release -p conformance --example overhead -- IMAGE CASE_NAME ENV`.
//! With `DUMP=1`: runs the case once and prints how it ended and every vCPU's registers.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use abi::env::Env;
use conformance::catalog::Instance;
use conformance::exec;
use conformance::host_check::CaseHandler;
use runner::kvm::Kvm;
use runner::vm::Backend;
use runner::vm::{RunEnd, RunLimits};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [image, case, env] = args.as_slice() else {
        return Err("usage: overhead IMAGE CASE_NAME ENV".into());
    };
    let catalog = conformance::guest_build::load(std::path::Path::new(image))?;
    let case = catalog
        .cases
        .iter()
        .find(|c| &c.name == case)
        .ok_or_else(|| format!("{image} has no case {case}"))?;
    let env = Env::from_name(env).ok_or_else(|| format!("unknown environment {env}"))?;
    let inst = Instance {
        case: case.clone(),
        env,
    };
    let kvm = Kvm::open()?;
    let limits = RunLimits::timeout(Duration::from_secs(5));
    if std::env::var_os("DUMP").is_some() {
        let mut vm = exec::boot_instance(&kvm, &catalog.image, &inst)?;
        let mut h = CaseHandler::new(inst.case.host);
        let end = vm.run(&mut h, &limits)?;
        println!("{end:?} {:?}\n{}", h.result, vm.register_dump());
        return Ok(());
    }
    let mut phases = [[0f64; 4]; 20];
    for row in phases.iter_mut() {
        let t0 = Instant::now();
        let mut vm = kvm.create_vm(&exec::boot_params(&inst).vm_options(inst.case.flags))?;
        let t1 = Instant::now();
        runner::boot::boot(vm.as_mut(), &catalog.image, &exec::boot_params(&inst))?;
        let t2 = Instant::now();
        let mut h = CaseHandler::new(inst.case.host);
        let end = vm.run(&mut h, &limits)?;
        let t3 = Instant::now();
        drop(vm);
        let t4 = Instant::now();
        if end != RunEnd::Stopped {
            return Err(format!("{} ended with {end:?}", inst.id()).into());
        }
        *row = [t1 - t0, t2 - t1, t3 - t2, t4 - t3].map(|d| d.as_secs_f64() * 1e3);
    }
    for (i, name) in ["create", "boot", "run", "drop"].iter().enumerate() {
        let mut v: Vec<f64> = phases.iter().map(|r| r[i]).collect();
        v.sort_by(f64::total_cmp);
        if let (Some(min), Some(max)) = (v.first(), v.last()) {
            println!(
                "{name:>6}: median {:.3} ms (min {min:.3}, max {max:.3})",
                v[v.len() / 2]
            );
        }
    }
    Ok(())
}
