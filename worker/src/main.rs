//! `pvmc-worker`: runs case instances on this machine's `/dev/kvm` for a harness elsewhere.
//! The ssh target copies it to the remote host with the guest image; a host image starts it at
//! boot (`docs/targets.md`).
//!
//! - `pvmc-worker host`: this host as one JSON line (`conformance::report::HostReport`).
//! - `pvmc-worker run --image IMG [--timeout-ms N]`: the worker protocol
//!   (`conformance::target::worker`): instance ids on standard input, one JSON result per
//!   line on standard output, each instance on the local target (a fresh VM each), each
//!   result with the kernel lines (`/dev/kmsg`) logged while it ran.
//! - `pvmc-worker stream --image IMG (--ids FILE | --ids-url URL) [--verdict-url URL]
//!   [--out PATH]`: what a host image runs at boot: the instances listed in FILE (or fetched
//!   from the GCE metadata server), written as a stream (`conformance::target::worker::
//!   StreamLine`: host, results, end) to PATH (a serial port) or standard output, and a
//!   one-line verdict PUT to a guest attribute.

use std::io::Write;

mod http;
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
    /// Runs the instances listed in a file (or at a URL) and writes a stream: host, results,
    /// end.
    Stream {
        /// The guest image.
        #[arg(long)]
        image: PathBuf,
        /// Instance ids, one per line.
        #[arg(long, required_unless_present = "ids_url", conflicts_with = "ids_url")]
        ids: Option<PathBuf>,
        /// Where to GET the instance ids instead (the GCE metadata server's `pvmc-ids`
        /// attribute).
        #[arg(long)]
        ids_url: Option<String>,
        /// Where to PUT a one-line verdict at the end (a GCE guest attribute).
        #[arg(long)]
        verdict_url: Option<String>,
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
            ids_url,
            verdict_url,
            out,
            timeout_ms,
        } => {
            let ids = match (ids, ids_url) {
                (Some(f), _) => Ids::File(f),
                (None, Some(u)) => Ids::Url(u),
                (None, None) => anyhow::bail!("--ids FILE or --ids-url URL"),
            };
            stream(
                &image,
                &ids,
                verdict_url.as_deref(),
                out.as_deref(),
                timeout_ms,
            )
        }
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

/// Where `stream` takes the instance ids from.
enum Ids {
    File(PathBuf),
    Url(String),
}

impl Ids {
    fn read(&self) -> std::result::Result<String, String> {
        match self {
            Ids::File(p) => std::fs::read_to_string(p)
                .map_err(|e| format!("{}: cannot read the instance ids: {e}", p.display())),
            Ids::Url(u) => http::get(u).map_err(|e| format!("cannot fetch the instance ids: {e}")),
        }
    }
}

/// The one-line verdict of a stream's results: the count per outcome.
fn verdict(outcomes: &[conformance::outcome::Outcome], status: &str) -> String {
    let mut counts: Vec<(conformance::outcome::Outcome, usize)> = Vec::new();
    for o in outcomes {
        match counts.iter_mut().find(|(x, _)| x == o) {
            Some((_, n)) => *n += 1,
            None => counts.push((*o, 1)),
        }
    }
    counts.sort();
    let parts: Vec<String> = counts
        .iter()
        .map(|(o, n)| format!("{n} {}", o.label()))
        .collect();
    format!(
        "{} results: {} ({status})",
        outcomes.len(),
        parts.join(", ")
    )
}

fn stream(
    image: &std::path::Path,
    ids: &Ids,
    verdict_url: Option<&str>,
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
    // The outcome of every result written (serve writes each one before the next instance).
    let mut outcomes = Vec::new();
    let status = match (ids.read(), local(image, timeout_ms)) {
        (Err(e), _) => e,
        (_, Err(e)) => format!("{e:#}"),
        (Ok(list), Ok((catalog, mut run_one))) => conformance::target::worker::serve(
            &catalog,
            std::io::Cursor::new(list),
            &mut sink,
            |inst: &Instance| {
                let r = run_one(inst);
                outcomes.push(r.outcome);
                r
            },
        )
        .err()
        .unwrap_or_else(|| "ok".into()),
    };
    if let Some(url) = verdict_url
        && let Err(e) = http::put(url, &verdict(&outcomes, &status))
    {
        eprintln!("pvmc-worker: the verdict was not stored: {e}");
    }
    let end = StreamEnd {
        results: outcomes.len(),
        status,
    };
    writeln!(sink, "{}", StreamLine::End(end).to_json())?;
    sink.flush()?;
    Ok(())
}
