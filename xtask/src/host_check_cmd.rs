//! `cargo xtask host-check`: the preflight table of this host (`runner::preflight`), in the
//! style of `virt-host-validate`; exit status 1 with the reason when the suite cannot run here.

use std::process::ExitCode;

use crate::out::{errln, outln};

pub fn run() -> anyhow::Result<ExitCode> {
    let facts = runner::preflight::gather();
    let checks = runner::preflight::checks(&facts);
    outln!(
        "host {} ({}), kernel {}",
        facts.host.cpu,
        facts.host.kvm_backend,
        facts.host.kernel
    )?;
    for c in &checks {
        outln!("  {:<24} : {:<4}  {}", c.name, c.status.label(), c.detail)?;
    }
    Ok(match runner::preflight::blocking(&checks) {
        Some(why) => {
            errln!("host-check: the suite cannot run here: {why}");
            ExitCode::from(1)
        }
        None => ExitCode::SUCCESS,
    })
}
