//! `cargo xtask bench`: the benchmark table, JSON report, plot, and `--compare`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use conformance::bench::{self, BenchOptions, BenchReport};
use conformance::catalog::{Catalog, Selection};
use runner::image::GuestImage;

use crate::conformance_cmd::Where;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    on: Where,
    /// VMs per benchmark instance (and repetitions of each baseline).
    #[arg(long, default_value_t = 5)]
    repetitions: usize,
    /// JSON report path (the plot goes next to it as .svg and .png).
    #[arg(long, default_value = "target/conformance/bench.json")]
    report: PathBuf,
    /// Timeout per VM in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    timeout_ms: u64,
    /// CPU to pin the benchmark thread (and so its vCPUs) to; default: the last one. Pinning
    /// keeps the run-to-run variation of exit benchmarks low.
    #[arg(long)]
    cpu: Option<usize>,
    /// Compare two bench reports (b relative to a) instead of running.
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    compare: Option<Vec<PathBuf>>,
}

fn load(p: &PathBuf) -> anyhow::Result<BenchReport> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    let r: BenchReport =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
    if r.schema != bench::SCHEMA {
        bail!(
            "{}: schema {:?}, expected {:?}",
            p.display(),
            r.schema,
            bench::SCHEMA
        );
    }
    Ok(r)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(files) = &args.compare {
        let (a, b) = (load(&files[0])?, load(&files[1])?);
        print!("{}", bench::compare(&a, &b));
        return Ok(ExitCode::SUCCESS);
    }
    let envs = args.on.envs()?;
    if args.repetitions < 2 {
        bail!("--repetitions must be at least 2 (the CV needs two repetitions)");
    }
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let core = match args.cpu {
        Some(n) => cores
            .iter()
            .find(|c| c.id == n)
            .copied()
            .with_context(|| format!("no CPU {n} to pin to"))?,
        None => *cores.last().context("cannot list the CPUs to pin to")?,
    };
    if !core_affinity::set_for_current(core) {
        bail!("cannot pin the benchmark thread to CPU {}", core.id);
    }
    eprintln!("bench: pinned to CPU {}", core.id);
    let path = conformance::guest_build::build(&conformance::guest_build::workspace_root())?;
    let catalog = Catalog::new(GuestImage::load(&path)?);
    let sel = Selection {
        envs: envs.clone(),
        filters: args.on.filter.clone(),
        selftest: false,
        bench: true,
    };
    let instances = catalog.instances(&sel);
    if instances.is_empty() {
        bail!(
            "the selection matches no benchmark (filters {:?})",
            args.on.filter
        );
    }
    let host = runner::detect::detect();
    let opts = BenchOptions {
        repetitions: args.repetitions,
        timeout: Duration::from_millis(args.timeout_ms),
    };
    let report = bench::run(
        &catalog.image,
        &host,
        &instances,
        &envs,
        &opts,
        &mut |line| eprintln!("bench: {line}"),
    )?;
    print!("{}", bench::table(&report));
    println!("benchmark run took {:.1} s", report.wall_ms as f64 / 1e3);
    if let Some(dir) = args.report.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.report, serde_json::to_string_pretty(&report)? + "\n")?;
    eprintln!("report: {}", args.report.display());
    let (svg, png) = (
        args.report.with_extension("svg"),
        args.report.with_extension("png"),
    );
    match crate::plot::write(&report, &svg, &png) {
        Ok(()) => eprintln!("plot: {} and {}", svg.display(), png.display()),
        Err(e) => eprintln!("warning: no plot: {e:#}"),
    }
    Ok(ExitCode::SUCCESS)
}
