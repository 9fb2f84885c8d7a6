//! `cargo xtask conformance`: selection, progress, summary and report files.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use abi::env::Env;
use anyhow::{Context, bail};
use conformance::catalog::{Catalog, Selection};
use conformance::expect::Expectations;
use conformance::outcome::Outcome;
use conformance::report::{self, HostReport, ProgressLog, Report, Summary};
use conformance::suite::{self, SuiteOptions};
use runner::image::GuestImage;

/// Where the suite runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// This machine's /dev/kvm.
    Local,
    /// A nested KVM host in QEMU (not implemented yet).
    Qemu,
    /// A remote host over ssh (not implemented yet).
    Ssh,
    /// A Google Compute Engine VM (not implemented yet).
    Gce,
    /// A software model of the ABI (not implemented yet).
    Model,
}

/// Where and what to run: shared by `conformance` and `bench`.
#[derive(Debug, clap::Args)]
pub struct Where {
    /// Where to run.
    #[arg(long, value_enum, default_value = "local")]
    pub target: Target,
    /// Environments, comma separated (hvm64, pv-local, pv-v1, pv-mid, pv-v2).
    #[arg(long, value_delimiter = ',', default_value = "hvm64,pv-local")]
    pub env: Vec<String>,
    /// Only instances whose id (`<case>~<env>`) contains this; repeatable.
    #[arg(long)]
    pub filter: Vec<String>,
}

impl Where {
    /// The environments, once the target is known to be supported.
    pub fn envs(&self) -> anyhow::Result<Vec<Env>> {
        if self.target != Target::Local {
            let name = format!("{:?}", self.target).to_lowercase();
            bail!("target {name} is not implemented yet; only --target local is");
        }
        parse_envs(&self.env)
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    on: Where,
    /// List the selected instances instead of running them.
    #[arg(long)]
    list: bool,
    /// Include the self-test cases (which must FAIL, CRASH, SKIP and ERROR).
    #[arg(long)]
    selftest: bool,
    /// JSON report path.
    #[arg(long, default_value = "target/conformance/report.json")]
    report: PathBuf,
    /// Print TAP13 on stdout instead of the text summary.
    #[arg(long)]
    tap: bool,
    /// Also write JUnit XML (one test suite per environment) to this path.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Default per-instance timeout in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Parallel instances.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Expectations file (known deviations) instead of the built-in one for the host dialect.
    #[arg(long)]
    expectations: Option<PathBuf>,
    /// Use this guest image instead of building it.
    #[arg(long)]
    image: Option<PathBuf>,
}

fn parse_envs(names: &[String]) -> anyhow::Result<Vec<Env>> {
    names
        .iter()
        .map(|n| {
            Env::from_name(n.trim()).with_context(|| {
                let all: Vec<_> = Env::ALL.iter().map(|e| e.name()).collect();
                format!("unknown environment {n:?} (known: {})", all.join(", "))
            })
        })
        .collect()
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let envs = args.on.envs()?;
    if args.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    let root = conformance::guest_build::workspace_root();
    let image_path = match args.image {
        Some(p) => p,
        None => conformance::guest_build::build(&root)?,
    };
    let image = GuestImage::load(&image_path)?;
    let catalog = Catalog::new(image);
    let sel = Selection {
        envs,
        filters: args.on.filter.clone(),
        selftest: args.selftest,
        bench: false,
    };
    let instances = catalog.instances(&sel);
    if instances.is_empty() {
        bail!(
            "the selection matches no case instance (filters {:?})",
            args.on.filter
        );
    }
    if args.list {
        for i in &instances {
            println!(
                "{:<48} {:<10} {:<28} {}",
                i.id(),
                i.case.area.name(),
                i.case.requirements.join(","),
                i.case.summary
            );
        }
        println!("{} instances", instances.len());
        return Ok(ExitCode::SUCCESS);
    }

    let host = runner::detect::detect();
    let expectations = match &args.expectations {
        Some(p) => Expectations::load(p)?,
        None => Expectations::builtin(host.dialect)?,
    };
    eprintln!(
        "host: kernel {}, backend {}, dialect {} ({}), cpu {}",
        host.kernel,
        host.kvm_backend,
        host.dialect.map_or("none", |d| d.name()),
        host.dialect_evidence,
        host.cpu
    );
    let opts = SuiteOptions {
        timeout: Duration::from_millis(args.timeout_ms),
        jobs: args.jobs,
        expectations,
    };
    let progress_path = args.report.with_extension("jsonl");
    let mut log = ProgressLog::create(&progress_path)?;
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(instances.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let started = Instant::now();
    let mut log_err = None;
    let results = suite::run(
        &catalog.image,
        &host,
        &instances,
        &opts,
        &mut |done, total, r| {
            bar.suspend(|| {
                eprintln!(
                    "[{done:>3}/{total}] {:<5} {} ({:.1} ms)",
                    r.outcome.label(),
                    r.id,
                    r.duration_ms
                );
                if r.outcome != Outcome::Pass {
                    eprintln!("          {}", r.detail);
                }
            });
            bar.inc(1);
            if let Err(e) = log.append(r) {
                log_err.get_or_insert(e);
            }
        },
    );
    bar.finish_and_clear();
    let summary = Summary::of(&results, started.elapsed().as_millis() as u64);
    let report = Report {
        schema: report::SCHEMA,
        target: "local".into(),
        expectations: opts.expectations.source.clone(),
        host: HostReport::new(&host),
        cases: results,
        summary: summary.clone(),
    };
    report.write(&args.report)?;
    if let Some(path) = &args.junit {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, report::junit(&report.cases, summary.wall_ms)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("junit: {}", path.display());
    }
    if let Some(e) = log_err {
        eprintln!("warning: progress log {}: {e}", progress_path.display());
    }
    if args.tap {
        print!("{}", report::tap(&report.cases));
        eprintln!("{}", report::summary_line(&summary));
    } else {
        println!("{}", report::summary_line(&summary));
    }
    eprintln!("report: {}", args.report.display());
    Ok(if summary.is_bad() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
