//! `cargo xtask mutants-model` and `cargo xtask bench-model`: the reference model's own
//! checks.
//!
//! `mutants-model` checks the checker. Runs the selection on the clean reference
//! model, then once per fault switch of the model (`pvmc-model faults`), and prints which
//! instances each switch changed (a PASS or XFAIL that became something else, on the run and
//! again on a rerun of those instances), the switches no instance caught, and last
//! `caught N/M`. Exit status 0 when every switch was caught, 1
//! when some were not, 2 for bad input or a clean run that does not pass.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use conformance::catalog::{Selection, Suite};
use conformance::expect::Expectations;
use conformance::outcome::Outcome;
use conformance::target::model::{self, ModelTarget};
use conformance::target::{Target, TargetOptions};
use runner::vm::Cancel;

use crate::conformance_cmd::{Where, guest_image};
use crate::out::{errln, outln};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The environments (default: the upstream generations) and filters.
    #[command(flatten)]
    on: Where,
    /// Only these fault switches (repeatable; default: all of them).
    #[arg(long = "fault", value_name = "NAME")]
    only: Vec<String>,
    /// Parallel instances (1 to 256).
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Default per-instance timeout in milliseconds.
    #[arg(long, default_value_t = 1500)]
    timeout_ms: u64,
    /// Use this guest image instead of building it.
    #[arg(long)]
    image: Option<PathBuf>,
}

/// Each instance's outcome (after the upstream expectations) and detail.
type Outcomes = BTreeMap<String, (Outcome, String)>;

fn outcomes(
    target: &ModelTarget,
    instances: &[conformance::catalog::Instance],
    opts: &TargetOptions,
    expectations: &Expectations,
) -> Outcomes {
    let mut got = Outcomes::new();
    target.run(instances, opts, &mut |_, r| {
        let (o, d) = expectations.apply(&r.id, r.outcome, r.detail);
        got.insert(r.id, (o, d));
    });
    got
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    crate::conformance_cmd::check_timeout_and_jobs(args.timeout_ms, args.jobs)?;
    let envs = if args.on.env.is_empty() {
        vec![
            abi::env::Env::PvV1,
            abi::env::Env::PvMid,
            abi::env::Env::PvV2,
        ]
    } else {
        args.on.envs()?
    };
    let (catalog, image_path) = guest_image(args.image.as_ref())?;
    let instances = catalog.instances(&Selection {
        envs,
        filters: args.on.filter.clone(),
        selftest: false,
        bench: false,
        suite: Suite::Full,
        opt_in: false,
    });
    if instances.is_empty() {
        bail!("the selection matches no case instance");
    }
    let binary =
        model::binary(&conformance::guest_build::workspace_root()).map_err(anyhow::Error::msg)?;
    let all = ModelTarget::fault_names(&binary).map_err(anyhow::Error::msg)?;
    let switches: Vec<String> = if args.only.is_empty() {
        all.clone()
    } else {
        for f in &args.only {
            if !all.contains(f) {
                bail!("--fault {f}: no such fault switch in the model");
            }
        }
        args.only.clone()
    };
    let expectations = Expectations::builtin_upstream()?;
    let opts = TargetOptions {
        timeout: Duration::from_millis(args.timeout_ms),
        jobs: args.jobs,
        cancel: Cancel::new(),
    };
    let started = Instant::now();
    let clean_target = ModelTarget::new(binary.clone(), image_path.clone(), Vec::new())
        .map_err(anyhow::Error::msg)?;
    let mut clean = outcomes(&clean_target, &instances, &opts, &expectations);
    // A bad outcome on the clean model is run again: one that then passes is flaky, said so
    // and left out of the judging; one that fails again stops everything.
    let first_bad: Vec<_> = instances
        .iter()
        .filter(|i| clean.get(&i.id()).is_some_and(|(o, _)| o.is_bad()))
        .cloned()
        .collect();
    if !first_bad.is_empty() {
        let again = outcomes(&clean_target, &first_bad, &opts, &expectations);
        for (id, (o, d)) in again {
            if !o.is_bad() {
                errln!(
                    "warning: {id} is flaky on the clean model (bad once, then {}): left out",
                    o.label()
                );
                clean.remove(&id);
            } else {
                clean.insert(id, (o, d));
            }
        }
    }
    let bad: Vec<_> = clean.iter().filter(|(_, (o, _))| o.is_bad()).collect();
    if !bad.is_empty() {
        for (id, (o, d)) in &bad {
            errln!("  {} {id}: {d}", o.label());
        }
        bail!(
            "the clean model does not pass: {} instance(s) are FAIL, ERROR or CRASH",
            bad.len()
        );
    }
    let judged = clean
        .values()
        .filter(|(o, _)| matches!(o, Outcome::Pass | Outcome::Xfail))
        .count();
    errln!(
        "mutants-model: {} instances ({judged} PASS or XFAIL on the clean model), {} switches",
        instances.len(),
        switches.len()
    );
    let mut caught = 0;
    let mut missed = Vec::new();
    for name in &switches {
        let target = ModelTarget::new(binary.clone(), image_path.clone(), vec![name.clone()])
            .map_err(anyhow::Error::msg)?;
        let got = outcomes(&target, &instances, &opts, &expectations);
        let differs = |got: &Outcomes, id: &String, o: &Outcome| {
            matches!(o, Outcome::Pass | Outcome::Xfail) && got.get(id).is_some_and(|(g, _)| g != o)
        };
        // A catch counts when the switch changes the instance twice in a row (not a flake).
        let first: Vec<_> = instances
            .iter()
            .filter(|i| {
                clean
                    .get(&i.id())
                    .is_some_and(|(o, _)| differs(&got, &i.id(), o))
            })
            .cloned()
            .collect();
        let again = outcomes(&target, &first, &opts, &expectations);
        let changed: Vec<&String> = clean
            .iter()
            .filter(|(id, (o, _))| differs(&got, id, o) && differs(&again, id, o))
            .map(|(id, _)| id)
            .collect();
        if changed.is_empty() {
            missed.push(name.clone());
            outln!("{name:<30} NOT CAUGHT")?;
        } else {
            caught += 1;
            let shown: Vec<&str> = changed.iter().take(4).map(|s| s.as_str()).collect();
            let more = changed.len().saturating_sub(shown.len());
            outln!(
                "{name:<30} caught by {:>3}: {}{}",
                changed.len(),
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            )?;
        }
    }
    if !missed.is_empty() {
        outln!("not caught: {}", missed.join(", "))?;
    }
    errln!(
        "mutants-model took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    outln!("caught {caught}/{}", switches.len())?;
    Ok(if missed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `cargo xtask bench-model`: builds the model in release (speed figures of a debug build
/// would say little) and runs `pvmc-model bench`, whose table goes to stdout.
pub fn bench_model(repetitions: usize) -> anyhow::Result<ExitCode> {
    let root = conformance::guest_build::workspace_root();
    let (_, image) = guest_image(None)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--package",
            "pvmc-model",
            "--bin",
            "pvmc-model",
        ])
        .status()?;
    if !status.success() {
        bail!("cargo build --release of pvmc-model failed ({status})");
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let status = std::process::Command::new(target.join("release").join("pvmc-model"))
        .arg("bench")
        .arg("--image")
        .arg(&image)
        .arg("--repetitions")
        .arg(repetitions.to_string())
        .status()?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        errln!("pvmc-model bench failed ({status})");
        ExitCode::from(1)
    })
}
