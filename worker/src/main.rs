//! `pvmc-worker`: runs case instances on this machine's `/dev/kvm` for a harness elsewhere.
//! The ssh target copies it to the remote host with the guest image; a host image starts it at
//! boot (`docs/targets.md`).
//!
//! - `pvmc-worker host`: this host as one JSON line (`conformance::report::HostReport`).
//! - `pvmc-worker run --image IMG [--timeout-ms N]`: the worker protocol
//!   (`conformance::target::worker`): instance ids on standard input, one JSON result per
//!   line on standard output, each instance on the local target (a fresh VM each).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use conformance::catalog::Catalog;
use conformance::result::CaseResult;
use conformance::target::local::LocalTarget;
use conformance::target::{Target, TargetOptions};
use runner::image::GuestImage;
use runner::vm::Cancel;

#[derive(Parser)]
#[command(
    name = "pvmc-worker",
    about = "Runs pvm-conformance case instances on this machine's /dev/kvm for a harness elsewhere"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Prints this host (kernel, KVM backend, PVM dialect, CPU) as one JSON line.
    Host,
    /// Runs the instances named on standard input; one JSON result per line on standard output.
    Run {
        /// The guest image.
        #[arg(long)]
        image: PathBuf,
        /// Timeout of an instance whose case does not set its own.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Host => {
            let host = conformance::report::HostReport::new(&runner::detect::detect());
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", serde_json::to_string(&host)?)?;
            out.flush()?;
            Ok(())
        }
        Cmd::Run { image, timeout_ms } => {
            let img = GuestImage::load(&image)
                .with_context(|| format!("{}: cannot load the guest image", image.display()))?;
            let catalog = Catalog::new(img)
                .with_context(|| format!("{}: bad case table", image.display()))?;
            let target = LocalTarget::new(Arc::clone(&catalog.image));
            let opts = TargetOptions {
                timeout: Duration::from_millis(timeout_ms),
                jobs: 1,
                cancel: Cancel::new(),
            };
            conformance::target::worker::serve(
                &catalog,
                std::io::stdin().lock(),
                std::io::stdout().lock(),
                |inst| {
                    let mut got = None;
                    target.run(std::slice::from_ref(inst), &opts, &mut |_, r| got = Some(r));
                    got.unwrap_or_else(|| CaseResult::skipped(inst, "cancelled".into()))
                },
            )
            .map_err(anyhow::Error::msg)
        }
    }
}
