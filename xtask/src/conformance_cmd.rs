//! `cargo xtask conformance`: validate the input, select, list or run on a target, and write
//! the reports.
//!
//! Everything that can be checked before the first instance runs is checked first, and each
//! problem is one line on stderr with exit status 2: arguments, output paths (and the locks on
//! them), the expectations file, the guest image and its case table, and the selection. Then
//! the run: SIGINT/SIGTERM stop starting instances and end the running ones, the reports are
//! written with what finished (`"interrupted": true`) and the exit status is 130/143;
//! `--resume` completes such a run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use abi::env::Env;
use anyhow::{Context, bail};
use conformance::catalog::{Catalog, Instance, Selection, Suite};
use conformance::expect::Expectations;
use conformance::outcome::Outcome;
use conformance::output::Outputs;
use conformance::report::{self, RunInfo, RunStart, tap};
use conformance::session::Session;
use conformance::suite::{self, SuiteOptions};
use conformance::target::{TargetKind, TargetOptions, TargetSpec};
use runner::vm::Cancel;

use crate::out::{errln, outln};

/// Timeouts below this are a usage error: a VM needs a few ms to boot on any host, and the
/// slowest cases here need several hundred.
pub const MIN_TIMEOUT_MS: u64 = 100;
/// Timeouts above this (an hour) are a usage error too.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// Where and what to run: shared by `conformance` and `bench`.
#[derive(Debug, clap::Args)]
pub struct Where {
    /// Where to run (local, qemu, ssh, model; gce is not implemented yet).
    #[arg(long, default_value = "local", value_parser = target_kind)]
    pub target: TargetKind,
    /// Environments, comma separated (default: every one the guest implements).
    #[arg(long, value_delimiter = ',')]
    pub env: Vec<String>,
    /// Only instances whose id (`<case>~<env>`) contains this; repeatable.
    #[arg(long)]
    pub filter: Vec<String>,
}

fn suite_name(s: &str) -> Result<Suite, String> {
    Suite::from_name(s).ok_or_else(|| {
        let all: Vec<_> = Suite::ALL.iter().map(|x| x.name()).collect();
        format!("unknown suite {s:?} (known: {})", all.join(", "))
    })
}

fn target_kind(s: &str) -> Result<TargetKind, String> {
    TargetKind::from_name(s).ok_or_else(|| {
        let all: Vec<_> = TargetKind::ALL.iter().map(|k| k.name()).collect();
        format!("unknown target {s:?} (known: {})", all.join(", "))
    })
}

impl Where {
    /// The target with its options, checked (before anything is built).
    pub fn spec(&self, faults: &[String], remote: &Remote) -> anyhow::Result<TargetSpec> {
        let spec = TargetSpec {
            faults: faults.to_vec(),
            ssh_host: remote.host.clone(),
            ssh_options: remote.ssh_options.clone(),
            gce: remote.gce(self.target)?,
            host_image: match self.target {
                TargetKind::Gce => None,
                _ => remote.host_image.clone(),
            },
            param_set: remote.param_set.clone(),
            ..TargetSpec::new(self.target)
        };
        spec.check().map_err(anyhow::Error::msg)?;
        Ok(spec)
    }

    /// The environments, parsed and with duplicates merged.
    pub fn envs(&self) -> anyhow::Result<Vec<Env>> {
        if self.env.is_empty() {
            return Ok(Selection::default_envs());
        }
        let envs = self
            .env
            .iter()
            .map(|n| {
                Env::from_name(n.trim()).with_context(|| {
                    let all: Vec<_> = Env::ALL.iter().map(|e| e.name()).collect();
                    format!(
                        "--env: unknown environment {n:?} (known: {})",
                        all.join(", ")
                    )
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Selection::dedup_envs(envs))
    }
}

/// Options of the remote targets.
#[derive(Debug, Default, clap::Args)]
pub struct Remote {
    /// --target ssh: the host, `[USER@]HOST`.
    #[arg(long, value_name = "[USER@]HOST")]
    pub host: Option<String>,
    /// --target ssh: an ssh `-o` option for every connection (`Port=2222`,
    /// `IdentityFile=key`, ...); repeatable.
    #[arg(long = "ssh-option", value_name = "KEY=VALUE")]
    pub ssh_options: Vec<String>,
    /// --target gce: the Google Cloud project.
    #[arg(long)]
    pub project: Option<String>,
    /// --target gce: the zone.
    #[arg(long)]
    pub zone: Option<String>,
    /// --target gce: the machine type (default n2d-standard-2: AMD, no nested VMX/SVM).
    #[arg(long)]
    pub machine_type: Option<String>,
    /// --target gce: VMs to shard the selection over (default 1); their reports merge into
    /// one.
    #[arg(long)]
    pub instances: Option<usize>,
    /// --target gce: the Cloud Storage bucket for the image upload (default PROJECT-pvmc).
    #[arg(long)]
    pub bucket: Option<String>,
    /// --target qemu: boot this host image (`cargo xtask images`: its directory) and run the
    /// suite inside it; --target gce: the image's GCE tarball (or its directory).
    #[arg(long, value_name = "IMAGE")]
    pub host_image: Option<PathBuf>,
    /// --target qemu --host-image: load the modules with this parameter set of the image's
    /// profile (default: their own parameters); the suite runs once per set, one report each.
    #[arg(long, value_name = "NAME")]
    pub param_set: Option<String>,
    /// --target gce: print the gcloud commands a run would issue, run nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl Remote {
    fn any_gce(&self) -> bool {
        self.project.is_some()
            || self.zone.is_some()
            || self.machine_type.is_some()
            || self.instances.is_some()
            || self.bucket.is_some()
            || self.dry_run
    }

    /// The GCE options, when the target is gce (`Err` when they belong to no target here).
    fn gce(&self, kind: TargetKind) -> anyhow::Result<Option<conformance::target::gce::GceSpec>> {
        if kind != TargetKind::Gce {
            if self.any_gce() {
                bail!(
                    "--project, --zone, --machine-type, --instances, --bucket and --dry-run \
                     belong to --target gce, not --target {}",
                    kind.name()
                );
            }
            return Ok(None);
        }
        let (Some(project), Some(zone), Some(image)) =
            (&self.project, &self.zone, &self.host_image)
        else {
            bail!("--target gce needs --project, --zone and --host-image");
        };
        // An image directory: its GCE tarball.
        let image = if image.is_dir() {
            let (m, dir) = pvmc_images::manifest::Manifest::load(image)?;
            match m.disks.iter().find(|(f, _)| f == "gce") {
                Some((_, file)) => dir.join(file),
                None => bail!(
                    "--host-image {}: the image has no GCE tarball (build it with --format gce)",
                    image.display()
                ),
            }
        } else {
            image.to_path_buf()
        };
        Ok(Some(conformance::target::gce::GceSpec {
            project: project.clone(),
            zone: zone.clone(),
            machine_type: self
                .machine_type
                .clone()
                .unwrap_or_else(|| conformance::target::gce::DEFAULT_MACHINE_TYPE.into()),
            instances: self.instances.unwrap_or(1),
            bucket: self.bucket.clone(),
            image,
        }))
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    on: Where,
    #[command(flatten)]
    remote: Remote,
    /// --target model: turn on this fault switch of the model (repeatable; `cargo xtask
    /// mutants-model` lists them)
    #[arg(long = "fault", value_name = "NAME")]
    faults: Vec<String>,
    /// List the selected instances instead of running them.
    #[arg(long)]
    list: bool,
    /// Include the self-test cases (each must produce its designed outcome).
    #[arg(long)]
    selftest: bool,
    /// Also run the opt-in cases a --filter names (off by default: VMCALL/VMMCALL on a nested
    /// host can reach past the host under test)
    #[arg(long)]
    opt_in: bool,
    /// Do not watch the host kernel's log (host health) nor check that a fresh VM boots at the
    /// end
    #[arg(long)]
    no_host_health: bool,
    /// Which cases: smoke (a fast sample), default (all but the slow ones) or full.
    #[arg(long, default_value = "default", value_parser = suite_name)]
    suite: Suite,
    /// JSON report path (the progress log goes next to it as .jsonl).
    #[arg(long, default_value = "target/conformance/report.json")]
    report: PathBuf,
    /// Print TAP13 on stdout instead of the text summary.
    #[arg(long)]
    tap: bool,
    /// Also write JUnit XML (one test suite per environment) to this path.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Default per-instance timeout in milliseconds (100 to 3600000).
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Parallel instances (1 to 256).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Run only shard K of N of the selection (round robin over it; `cargo xtask merge` joins
    /// the shards' reports).
    #[arg(long, value_name = "K/N", value_parser = conformance::report::merge::Shard::parse)]
    shard: Option<conformance::report::merge::Shard>,
    /// Expectations file (known deviations) instead of the built-in one for the host dialect.
    #[arg(long)]
    expectations: Option<PathBuf>,
    /// Use this guest image instead of building it.
    #[arg(long)]
    image: Option<PathBuf>,
    /// Continue the interrupted run of the same selection whose progress log is next to
    /// --report, without repeating the instances it finished.
    #[arg(long)]
    resume: bool,
    /// Exit 2 when nothing can run here (no usable /dev/kvm, or every instance SKIPs)
    /// instead of passing vacuously.
    #[arg(long)]
    require_kvm: bool,
}

/// Checks `--timeout-ms` and `--jobs` (shared by the commands that run instances).
pub fn check_timeout_and_jobs(timeout_ms: u64, jobs: usize) -> anyhow::Result<()> {
    if !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
        bail!("--timeout-ms {timeout_ms}: must be between {MIN_TIMEOUT_MS} and {MAX_TIMEOUT_MS}");
    }
    if !(1..=256).contains(&jobs) {
        bail!("--jobs {jobs}: must be between 1 and 256");
    }
    Ok(())
}

/// Checks the numbers and flags that need no file system.
fn check_args(args: &Args) -> anyhow::Result<()> {
    args.on.spec(&args.faults, &args.remote)?;
    check_timeout_and_jobs(args.timeout_ms, args.jobs)?;
    if args.list && args.resume {
        bail!("--list and --resume do not go together");
    }
    Ok(())
}

/// Builds (or loads) and validates the guest image; says so when a cached one was rebuilt.
pub fn guest_catalog(image: Option<&PathBuf>) -> anyhow::Result<Catalog> {
    Ok(guest_image(image)?.0)
}

/// [`guest_catalog`] and the image's path.
pub fn guest_image(image: Option<&PathBuf>) -> anyhow::Result<(Catalog, PathBuf)> {
    Ok(match image {
        Some(p) => (conformance::guest_build::load(p)?, p.clone()),
        None => {
            let built =
                conformance::guest_build::build(&conformance::guest_build::workspace_root())?;
            if let Some(why) = &built.rebuilt {
                errln!("note: rebuilt the guest image: {why}");
            }
            (built.catalog, built.path)
        }
    })
}

fn list(instances: &[Instance]) -> anyhow::Result<ExitCode> {
    for i in instances {
        outln!(
            "{:<48} {:<10} {:<28} {}",
            i.id(),
            i.case.area.name(),
            i.case.requirements.join(","),
            i.case.summary
        )?;
    }
    outln!("{} instances", instances.len())?;
    Ok(ExitCode::SUCCESS)
}

/// SIGINT/SIGTERM cancel the run; a second one ends the process at once. Returns the signal
/// seen (0 if none) and the handle that stops listening.
fn on_signals(cancel: Cancel) -> anyhow::Result<(Arc<AtomicI32>, signal_hook::iterator::Handle)> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot install the SIGINT/SIGTERM handlers")?;
    let handle = signals.handle();
    let seen = Arc::new(AtomicI32::new(0));
    let seen2 = Arc::clone(&seen);
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if seen2.swap(sig, Ordering::SeqCst) != 0 {
                errln!("second signal: exiting now; the progress log has every finished instance");
                std::process::exit(128 + sig);
            }
            errln!("signal {sig}: ending the running instances and writing the reports");
            cancel.cancel();
        }
    });
    Ok((seen, handle))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    check_args(&args)?;
    let envs = args.on.envs()?;
    let outputs = if args.list || args.remote.dry_run {
        None
    } else {
        Some(Outputs::new(&args.report, args.junit.as_deref())?)
    };
    let start = RunStart::now();
    let lock = outputs
        .as_ref()
        .map(|o| o.lock(&start.run_id))
        .transpose()?;
    let user_expectations = args
        .expectations
        .as_ref()
        .map(|p| Expectations::load(p))
        .transpose()?;
    let (catalog, image_path) = guest_image(args.image.as_ref())?;
    let known = catalog.all_ids();
    for e in Expectations::all_builtin()?
        .iter()
        .chain(&user_expectations)
    {
        e.validate(&known)?;
    }
    let sel = Selection {
        envs,
        filters: args.on.filter.clone(),
        selftest: args.selftest,
        bench: false,
        suite: args.suite,
        opt_in: args.opt_in,
    };
    let mut instances = catalog.instances(&sel);
    if let Some(shard) = args.shard {
        instances = instances
            .into_iter()
            .enumerate()
            .filter(|(i, _)| shard.takes(*i))
            .map(|(_, inst)| inst)
            .collect();
    }
    if instances.is_empty() {
        bail!(
            "the selection matches no case instance (environments {:?}, filters {:?})",
            sel.envs.iter().map(|e| e.name()).collect::<Vec<_>>(),
            args.on.filter
        );
    }
    if args.list {
        return list(&instances);
    }
    let spec = args.on.spec(&args.faults, &args.remote)?;
    if let (true, Some(gce)) = (args.remote.dry_run, &spec.gce) {
        for line in conformance::target::gce::plan(gce, &instances) {
            outln!("{line}")?;
        }
        outln!("(dry run: nothing was created)")?;
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(outputs), Some(lock)) = (outputs, lock) else {
        bail!("internal: outputs not validated");
    };

    let target = conformance::target::open(&spec, Arc::clone(&catalog.image), &image_path)
        .map_err(anyhow::Error::msg)?;
    if args.require_kvm
        && let Err(why) = target.usable()
    {
        bail!("--require-kvm: {why}");
    }
    let host = target.host();
    let expectations = match user_expectations {
        Some(e) => e,
        None if spec.kind == TargetKind::Model => Expectations::builtin_upstream()?,
        None if spec.kind == TargetKind::Qemu && conformance::target::qemu::is_tcg(host) => {
            Expectations::builtin_qemu_tcg()?
        }
        None => Expectations::builtin(host.dialect)?,
    }
    .for_host(host);
    errln!(
        "host: kernel {}, backend {}, dialect {} ({}), cpu {}",
        host.kernel,
        host.kvm_backend,
        host.dialect.map_or("none", |d| d.name()),
        host.dialect_evidence,
        host.cpu
    );
    let mut run = RunInfo::new(
        start,
        target.name(),
        host,
        &catalog.image.sha256,
        &instances,
        &expectations,
    );
    run.shard = args.shard.map(|s| s.name());
    let mut session = Session::start(outputs, lock, run, args.resume, &expectations.source)?;
    if args.resume {
        errln!(
            "resuming run {}: {} of {} instances already finished{}",
            session.run.run_id,
            session.prior_results(),
            instances.len(),
            if session.dropped_torn_line {
                " (a torn last line of the progress log was dropped)"
            } else {
                ""
            }
        );
    }
    let pending = session.pending(&instances);
    let cancel = Cancel::new();
    let (signal, signal_handle) = on_signals(cancel.clone())?;
    let opts = SuiteOptions {
        target: TargetOptions {
            timeout: Duration::from_millis(args.timeout_ms),
            jobs: args.jobs,
            cancel,
        },
        expectations,
        host_health: if args.no_host_health {
            None
        } else {
            Some(conformance::host_health::Allowlist::builtin()?)
        },
        fresh_boot: catalog
            .case_with_host_check(abi::case::HostCheck::Lifecycle)
            .map(|case| conformance::catalog::Instance {
                case: std::sync::Arc::clone(case),
                env: abi::env::Env::Hvm64,
            }),
    };
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::new(pending.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut log_err = None;
    let ran = suite::run(target.as_ref(), &pending, &opts, &mut |done, total, r| {
        bar.suspend(|| {
            errln!(
                "[{done:>3}/{total}] {:<5} {} ({:.1} ms)",
                r.outcome.label(),
                r.id,
                r.duration_ms
            );
            if r.outcome != Outcome::Pass {
                errln!("          {}", r.detail);
            }
        });
        bar.inc(1);
        if let Err(e) = session.record(r) {
            log_err.get_or_insert(e);
        }
    });
    bar.finish_and_clear();
    signal_handle.close();
    let paths = session.outputs().clone();
    let report = session.finish(&instances, ran.results, ran.interrupted, ran.host_health)?;
    if let Some(e) = log_err {
        errln!("warning: progress log: {e}");
    }
    let line = report::summary_line(&report.summary);
    if args.tap {
        crate::out::stdout(&tap::tap(&report.run, &report.cases, instances.len()))?;
        errln!("{line}");
    } else {
        outln!("{line}")?;
    }
    let unhealthy = report.host_health.as_ref().is_some_and(|h| h.is_bad());
    if let Some(h) = &report.host_health {
        errln!("{}", h.summary());
        for l in &h.bad_lines {
            errln!("  {} during {}: {}", l.class, l.instance, l.text);
        }
        if !h.fresh_boot_detail.is_empty() {
            errln!("  fresh boot: {}", h.fresh_boot_detail);
        }
    }
    errln!("report: {}", paths.report.display());
    if let Some(j) = &paths.junit {
        errln!("junit: {}", j.display());
    }
    let sig = signal.load(Ordering::SeqCst);
    Ok(if sig != 0 || report.interrupted {
        errln!(
            "interrupted: rerun with --resume to complete run {}",
            report.run.run_id
        );
        ExitCode::from(128 + sig.clamp(0, 127) as u8)
    } else if args.require_kvm && report.summary.nothing_ran() {
        errln!("--require-kvm: every instance was SKIP; nothing ran");
        ExitCode::from(2)
    } else if report.summary.is_bad() || unhealthy {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
