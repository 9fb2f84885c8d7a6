//! `cargo xtask bench`: the benchmark table, JSON report, plot, and `--compare`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;

use anyhow::{Context, bail};
use conformance::bench::{self, BenchOptions, BenchReport};
use conformance::catalog::Selection;
use conformance::target::local::LocalTarget;

use crate::conformance_cmd::{MAX_TIMEOUT_MS, MIN_TIMEOUT_MS, Where, guest_catalog};
use crate::out::{errln, outln};

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
    let text = std::fs::read_to_string(p).with_context(|| format!("--compare {}", p.display()))?;
    let r: BenchReport = serde_json::from_str(&text)
        .with_context(|| format!("--compare {}: not a bench report", p.display()))?;
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
        crate::out::stdout(&bench::compare(&a, &b))?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.on.target != conformance::target::TargetKind::Local {
        bail!(
            "--target {}: benchmarks run on --target local (the model's speed: cargo xtask bench-model)",
            args.on.target.name()
        );
    }
    let envs = args.on.envs()?;
    if !(2..=1000).contains(&args.repetitions) {
        bail!(
            "--repetitions {}: must be between 2 (the CV needs two) and 1000",
            args.repetitions
        );
    }
    if !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&args.timeout_ms) {
        bail!(
            "--timeout-ms {}: must be between {MIN_TIMEOUT_MS} and {MAX_TIMEOUT_MS}",
            args.timeout_ms
        );
    }
    if args.report.is_dir() {
        bail!("--report {}: is a directory", args.report.display());
    }
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let core = match args.cpu {
        Some(n) => cores
            .iter()
            .find(|c| c.id == n)
            .copied()
            .with_context(|| format!("--cpu {n}: no such CPU to pin to"))?,
        None => *cores.last().context("cannot list the CPUs to pin to")?,
    };
    let catalog = guest_catalog(None)?;
    let sel = Selection {
        envs: envs.clone(),
        filters: args.on.filter.clone(),
        selftest: false,
        bench: true,
        suite: conformance::catalog::Suite::Full,
        opt_in: false,
    };
    let instances = catalog.instances(&sel);
    if instances.is_empty() {
        bail!(
            "the selection matches no benchmark (filters {:?})",
            args.on.filter
        );
    }
    if !core_affinity::set_for_current(core) {
        bail!("cannot pin the benchmark thread to CPU {}", core.id);
    }
    errln!("bench: pinned to CPU {}", core.id);
    let target = LocalTarget::new(Arc::clone(&catalog.image));
    let opts = BenchOptions {
        repetitions: args.repetitions,
        timeout: Duration::from_millis(args.timeout_ms),
    };
    let report = bench::run(&target, &catalog, &instances, &envs, &opts, &mut |line| {
        errln!("bench: {line}")
    })?;
    crate::out::stdout(&bench::table(&report))?;
    outln!("benchmark run took {:.1} s", report.wall_ms as f64 / 1e3)?;
    if let Some(dir) = args.report.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--report: cannot create {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&report)? + "\n";
    conformance::output::write_atomic(&args.report, text.as_bytes())?;
    errln!("report: {}", args.report.display());
    let (svg, png) = (
        args.report.with_extension("svg"),
        args.report.with_extension("png"),
    );
    match crate::plot::write(&report, &svg, &png) {
        Ok(()) => errln!("plot: {} and {}", svg.display(), png.display()),
        Err(e) => errln!("warning: no plot: {e:#}"),
    }
    Ok(ExitCode::SUCCESS)
}
