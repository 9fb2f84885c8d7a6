//! `pvmc-worker`: runs case instances on this machine's `/dev/kvm` for a harness elsewhere.
//! The ssh target copies it to the remote host with the guest image; a host image starts it at
//! boot (`docs/targets.md`).
//!
//! - `pvmc-worker host`: this host as one JSON line (`conformance::report::HostReport`).
//! - `pvmc-worker run --image IMG [--timeout-ms N]`: the worker protocol
//!   (`conformance::target::worker`): instance ids on standard input, one JSON result per
//!   line on standard output, each instance on the local target (a fresh VM each), each
//!   result with the kernel lines (`/dev/kmsg`) logged while it ran.
//! - `pvmc-worker stream --image IMG --ids FILE [--out PATH]`: what a host image runs at boot:
//!   the instances listed in FILE, written as a stream (`conformance::target::worker::
//!   StreamLine`: host, results, end) to PATH (a serial port) or standard output.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use conformance::catalog::{Catalog, Instance};
use conformance::result::CaseResult;
use conformance::target::local::LocalTarget;
use conformance::target::worker::{StreamEnd, StreamLine};
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
    /// Runs the instances listed in a file and writes a stream: host, results, end.
    Stream {
        /// The guest image.
        #[arg(long)]
        image: PathBuf,
        /// Instance ids, one per line.
        #[arg(long)]
        ids: PathBuf,
        /// Where to write (a serial port, say); standard output if absent.
        #[arg(long)]
        out: Option<PathBuf>,
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
            let (catalog, mut run_one) = local(&image, timeout_ms)?;
            conformance::target::worker::serve(
                &catalog,
                std::io::stdin().lock(),
                std::io::stdout().lock(),
                &mut run_one,
            )
            .map_err(anyhow::Error::msg)
        }
        Cmd::Stream {
            image,
            ids,
            out,
            timeout_ms,
        } => stream(&image, &ids, out.as_deref(), timeout_ms),
    }
}

/// The image's catalog and a function running one instance on this machine's `/dev/kvm`.
fn local(
    image: &std::path::Path,
    timeout_ms: u64,
) -> Result<(Catalog, impl FnMut(&Instance) -> CaseResult)> {
    let img = GuestImage::load(image)
        .with_context(|| format!("{}: cannot load the guest image", image.display()))?;
    let catalog =
        Catalog::new(img).with_context(|| format!("{}: bad case table", image.display()))?;
    let target = LocalTarget::new(Arc::clone(&catalog.image));
    let opts = TargetOptions {
        timeout: Duration::from_millis(timeout_ms),
        jobs: 1,
        cancel: Cancel::new(),
    };
    // The kernel lines logged while each instance ran go with its result (the harness
    // classifies them: a splat fails the run). A kernel log this user cannot read leaves them
    // empty.
    let path = std::env::var(conformance::target::local::KMSG_PATH_VAR)
        .unwrap_or_else(|_| "/dev/kmsg".into());
    let mut kmsg = conformance::host_health::Kmsg::open(&path).ok();
    let run_one = move |inst: &Instance| {
        let mut got = None;
        target.run(std::slice::from_ref(inst), &opts, &mut |_, r| got = Some(r));
        let mut r = got.unwrap_or_else(|| CaseResult::skipped(inst, "cancelled".into()));
        if let Some(k) = kmsg.as_mut() {
            use conformance::host_health::HostLog;
            r.kernel_log = k.drain();
        }
        r
    };
    Ok((catalog, run_one))
}

fn stream(
    image: &std::path::Path,
    ids: &std::path::Path,
    out: Option<&std::path::Path>,
    timeout_ms: u64,
) -> Result<()> {
    let mut sink: Box<dyn Write> = match out {
        Some(p) => Box::new(
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(p)
                .with_context(|| format!("{}: cannot open for writing", p.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let host = conformance::report::HostReport::new(&runner::detect::detect());
    writeln!(sink, "{}", StreamLine::Host(host).to_json())?;
    sink.flush()?;
    let status = match (std::fs::File::open(ids), local(image, timeout_ms)) {
        (Err(e), _) => (
            0,
            format!("{}: cannot read the instance ids: {e}", ids.display()),
        ),
        (_, Err(e)) => (0, format!("{e:#}")),
        (Ok(input), Ok((catalog, mut run_one))) => {
            let mut results = 0usize;
            let mut counting = CountingWriter {
                inner: &mut sink,
                lines: &mut results,
            };
            let served = conformance::target::worker::serve(
                &catalog,
                std::io::BufReader::new(input),
                &mut counting,
                &mut run_one,
            );
            (results, served.err().unwrap_or_else(|| "ok".into()))
        }
    };
    let end = StreamEnd {
        results: status.0,
        status: status.1,
    };
    writeln!(sink, "{}", StreamLine::End(end).to_json())?;
    sink.flush()?;
    Ok(())
}

/// Passes writes through and counts the lines (one per result).
struct CountingWriter<'a> {
    inner: &'a mut Box<dyn Write>,
    lines: &'a mut usize,
}

impl Write for CountingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        *self.lines += buf[..n].iter().filter(|&&b| b == b'\n').count();
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
