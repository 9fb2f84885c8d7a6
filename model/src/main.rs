//! `pvmc-model`: the reference model of the upstream PVM host as a target process.
//!
//! `pvmc-model run --image IMG [--fault NAME]... [--timeout-ms N]` reads case-instance ids
//! (`<case>~<env>`, one per line) on standard input and writes one JSON `CaseResult` per line
//! on standard output as each instance finishes; the harness (`--target model`) drives it.
//! `pvmc-model faults` lists the fault switches.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use conformance::catalog::{Catalog, Selection, Suite};
use conformance::exec::{self, Executed};
use conformance::result::CaseResult;
use pvmc_model::faults::{Fault, Faults};
use pvmc_model::{Generation, ModelBackend};
use runner::image::GuestImage;
use runner::vm::RunLimits;

#[derive(Parser)]
#[command(
    name = "pvmc-model",
    about = "Reference model of the upstream PVM host"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the instances named on standard input; one JSON result per line on standard output.
    Run {
        /// The guest image.
        #[arg(long)]
        image: PathBuf,
        /// A fault switch to turn on (repeatable; `pvmc-model faults` lists them).
        #[arg(long = "fault", value_name = "NAME")]
        faults: Vec<String>,
        /// Timeout of an instance whose case does not set its own.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// Lists the fault switches, one name per line.
    Faults,
    /// The model's speed: guest instructions per second on straight-line code, and the
    /// benchmark cases (event and exit round trips) on pv-v2; median and spread.
    Bench {
        /// The guest image.
        #[arg(long)]
        image: PathBuf,
        /// Repetitions (one VM each) per benchmark.
        #[arg(long, default_value_t = 5)]
        repetitions: usize,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Faults => {
            let mut out = std::io::stdout().lock();
            for f in Fault::ALL {
                writeln!(out, "{}", f.name())?;
            }
            Ok(())
        }
        Cmd::Run {
            image,
            faults,
            timeout_ms,
        } => run(&image, &faults, Duration::from_millis(timeout_ms)),
        Cmd::Bench { image, repetitions } => bench(&image, repetitions),
    }
}

fn run(image: &std::path::Path, fault_names: &[String], timeout: Duration) -> Result<()> {
    let mut faults = Faults::NONE;
    for name in fault_names {
        match Fault::from_name(name) {
            Some(f) => faults = faults.with(f),
            None => bail!("--fault {name}: no such fault switch (see `pvmc-model faults`)"),
        }
    }
    let img = GuestImage::load(image)
        .with_context(|| format!("{}: cannot load the guest image", image.display()))?;
    let catalog =
        Catalog::new(img).with_context(|| format!("{}: bad case table", image.display()))?;
    conformance::target::worker::serve(
        &catalog,
        std::io::stdin().lock(),
        std::io::stdout().lock(),
        |inst| run_one(&catalog, inst, faults, timeout),
    )
    .map_err(anyhow::Error::msg)
}

/// Why the model cannot run `inst`, if it cannot.
fn skip_reason(inst: &conformance::catalog::Instance) -> Option<String> {
    if Generation::of_env(inst.env).is_none() {
        return Some(format!(
            "the reference model plays upstream PVM hosts only, not {}",
            inst.env.name()
        ));
    }
    if inst.env.guest_support() == abi::env::GuestSupport::NotYet {
        return Some(format!(
            "guest-lib does not implement environment {} yet",
            inst.env.name()
        ));
    }
    if let Some(why) = pvmc_model::gaps::gap(&inst.case.name) {
        return Some(format!("not modelled yet: {why}"));
    }
    if inst.case.vcpus > pvmc_model::backend::MAX_VCPUS {
        return Some(format!(
            "the reference model runs at most {} vCPUs; the case needs {}",
            pvmc_model::backend::MAX_VCPUS,
            inst.case.vcpus
        ));
    }
    None
}

fn run_one(
    catalog: &Catalog,
    inst: &conformance::catalog::Instance,
    faults: Faults,
    timeout: Duration,
) -> CaseResult {
    if let Some(why) = skip_reason(inst) {
        return CaseResult::skipped(inst, why);
    }
    let Some(generation) = Generation::of_env(inst.env) else {
        return CaseResult::skipped(inst, "not an upstream environment".into());
    };
    let backend = ModelBackend::new(generation, faults);
    let limits = RunLimits::timeout(exec::timeout_of(inst, timeout));
    let start = Instant::now();
    // A sibling VM (isolation.two_vms) runs on a model host of the same generation.
    let sibling = (inst.case.host == abi::case::HostCheck::Sibling).then(|| {
        exec::sibling_launcher(
            move || Ok::<_, String>(ModelBackend::new(generation, faults)),
            &catalog.image,
            inst,
            limits.clone(),
        )
    });
    let executed = match exec::boot_instance(&backend, &catalog.image, inst) {
        Ok(mut vm) => exec::execute_booted(vm.as_mut(), inst, &limits, sibling),
        Err(e) => exec::setup_failed(&e),
    };
    match executed {
        Executed::Done(raw) => CaseResult::new(inst, raw, start.elapsed().as_secs_f64() * 1e3),
        Executed::Cancelled => CaseResult::skipped(inst, "cancelled".into()),
    }
}

/// `pvmc-model bench`.
fn bench(image: &std::path::Path, repetitions: usize) -> Result<()> {
    if !(2..=100).contains(&repetitions) {
        bail!("--repetitions {repetitions}: must be between 2 and 100");
    }
    let mut out = std::io::stdout().lock();
    let mut rates = Vec::new();
    for _ in 0..repetitions {
        rates.push(pvmc_model::engine::straight_line_rate()?);
    }
    let s = conformance::bench::stats::stats(&[rates.clone()]);
    let (lo, hi) = rates
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    writeln!(
        out,
        "{:<28} {:>12.1} M instructions/s (min {:.1}, max {:.1}, {} runs)",
        "straight-line code",
        s.median_ns / 1e6,
        lo / 1e6,
        hi / 1e6,
        rates.len()
    )?;
    let img = GuestImage::load(image)
        .with_context(|| format!("{}: cannot load the guest image", image.display()))?;
    let catalog =
        Catalog::new(img).with_context(|| format!("{}: bad case table", image.display()))?;
    let sel = Selection {
        envs: vec![abi::env::Env::PvV2],
        filters: vec![String::new()],
        selftest: false,
        bench: true,
        suite: Suite::Full,
        opt_in: false,
    };
    let backend = ModelBackend::new(Generation::V2, Faults::NONE);
    for inst in catalog.instances(&sel) {
        if inst.case.host != abi::case::HostCheck::Bench {
            continue;
        }
        if inst.case.vcpus > pvmc_model::backend::MAX_VCPUS {
            writeln!(
                out,
                "{:<28} skipped: needs {} vCPUs; the model runs at most {}",
                inst.case.name,
                inst.case.vcpus,
                pvmc_model::backend::MAX_VCPUS
            )?;
            continue;
        }
        let mut per_metric: std::collections::BTreeMap<String, Vec<Vec<f64>>> =
            std::collections::BTreeMap::new();
        let mut note = String::new();
        for _ in 0..repetitions {
            let mut vm = exec::boot_instance(&backend, &catalog.image, &inst)?;
            let khz = f64::from(vm.tsc_khz()?.max(1));
            let mut h = conformance::host_check::CaseHandler::new(inst.case.host);
            let end = vm.run(&mut h, &RunLimits::timeout(Duration::from_secs(60)))?;
            if !matches!(end, runner::vm::RunEnd::Stopped) || h.samples.is_empty() {
                note = format!("{end:?}: {}", h.lines.join("; "));
            }
            let mut rep: std::collections::BTreeMap<String, Vec<f64>> =
                std::collections::BTreeMap::new();
            for smp in h.samples.iter().filter(|s| s.ops > 0) {
                let ns = smp.cycles as f64 * 1e6 / khz / smp.ops as f64;
                rep.entry(smp.metric.clone()).or_default().push(ns);
            }
            for (m, v) in rep {
                per_metric.entry(m).or_default().push(v);
            }
        }
        if per_metric.is_empty() {
            writeln!(out, "{:<28} no figures: {}", inst.case.name, note.trim())?;
        }
        for (metric, reps) in per_metric {
            let st = conformance::bench::stats::stats(&reps);
            writeln!(
                out,
                "{:<28} {:>12.0} ns per op (p99 {:.0} ns, CV {:.1}%, {} samples)",
                metric,
                st.median_ns,
                st.p99_ns,
                st.cv * 100.0,
                st.samples
            )?;
        }
    }
    Ok(())
}
