//! Benchmarks: guest microbenchmarks (area `bench`) in each environment, native baselines
//! measured on the host in the same run, the runner's own per-exit overhead against a raw
//! `KVM_RUN` loop, and the per-case overhead (VM create + boot + teardown of an empty guest).
//!
//! Every benchmark instance runs `repetitions` times, each in a fresh VM. A guest reports TSC
//! samples per metric (cycles for a batch of operations) naming the native baseline to compare
//! with; cycles become nanoseconds with the VM's TSC frequency. Statistics per metric: median
//! and p99 over all samples of all repetitions (ns per operation) and the coefficient of
//! variation of the per-repetition medians (how repeatable the number is from VM to VM). The
//! two host-measured cases are found by their `HostCheck` (`ExitLoop`, `Lifecycle`), not by
//! name.
//!
//! - [`mod@stats`]: median, p99, CV; [`native`]: host baselines; [`overhead`]: runner overhead;
//!   [`mod@table`]: the text table and `--compare`.

pub mod native;
pub mod overhead;
pub mod stats;
pub mod table;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use abi::bench::Baseline;
use abi::case::HostCheck;
use abi::env::Env;
use abi::report::GuestStatus;
use runner::vm::{RunLimits, Vm};
use serde::{Deserialize, Serialize};

pub use self::native::NativeRow;
pub use self::overhead::Overhead;
pub use self::stats::{Stats, stats};
pub use self::table::{compare, table};
use crate::Error;
use crate::catalog::{Catalog, Instance};
use crate::exec;
use crate::host_check::CaseHandler;
use crate::report::HostReport;
use crate::target::local::LocalTarget;
use crate::target::{Target, skip_reason};

/// Schema id of the benchmark report.
pub const SCHEMA: &str = "pvm-conformance/bench/v1";

/// One row of the benchmark table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchRow {
    /// Metric name.
    pub name: String,
    /// Environment.
    pub env: String,
    /// Statistics.
    #[serde(flatten)]
    pub stats: Stats,
    /// Native baseline it is compared with, if any.
    pub baseline: Option<String>,
    /// `median_ns / baseline median`.
    pub ratio_to_native: Option<f64>,
    /// Why the row is missing or partial.
    #[serde(default)]
    pub note: String,
}

/// The benchmark report (`pvm-conformance/bench/v1`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchReport {
    /// [`SCHEMA`].
    pub schema: String,
    /// Target name.
    pub target: String,
    /// The host.
    pub host: HostReport,
    /// Guest TSC frequency used for conversions.
    pub tsc_khz: u64,
    /// VMs per benchmark instance.
    pub repetitions: usize,
    /// Guest benchmarks.
    pub benchmarks: Vec<BenchRow>,
    /// Native baselines.
    pub native: Vec<NativeRow>,
    /// Runner overhead for the first environment measured.
    pub runner_overhead: Option<Overhead>,
    /// Runner overhead per environment.
    pub runner_overhead_by_env: Vec<Overhead>,
    /// Wall time of the benchmark run.
    pub wall_ms: u64,
}

/// How to run the benchmarks.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// VMs per benchmark instance (and repetitions of each baseline).
    pub repetitions: usize,
    /// Timeout per VM.
    pub timeout: Duration,
}

/// Samples per (metric, env) and repetition, their baselines, and notes.
#[derive(Default)]
struct Collected {
    rows: BTreeMap<(String, String), Vec<Vec<f64>>>,
    baselines: BTreeMap<String, Baseline>,
    notes: BTreeMap<(String, String), String>,
    tsc_khz: u64,
}

impl Collected {
    fn note(&mut self, key: (String, String), note: &str) {
        if note.is_empty() {
            return;
        }
        let e = self.notes.entry(key).or_default();
        if !e.contains(note) {
            if !e.is_empty() {
                e.push_str(" | ");
            }
            e.push_str(note);
        }
    }

    /// Runs one repetition of `inst` and adds its samples.
    fn repetition(
        &mut self,
        vm: &mut dyn Vm,
        inst: &Instance,
        timeout: Duration,
    ) -> Result<usize, Error> {
        self.tsc_khz = u64::from(vm.tsc_khz()?);
        let mut h = CaseHandler::new(inst.case.host);
        let end = vm.run(&mut h, &RunLimits::timeout(timeout))?;
        let mut per_metric: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for s in h.samples.iter().filter(|s| s.ops > 0) {
            let ns = s.cycles as f64 * 1e6 / self.tsc_khz.max(1) as f64 / s.ops as f64;
            per_metric.entry(s.metric.clone()).or_default().push(ns);
            if let Some(b) = s.baseline {
                self.baselines.insert(s.metric.clone(), b);
            }
        }
        let env = inst.env.name().to_string();
        for (metric, v) in per_metric {
            self.rows.entry((metric, env.clone())).or_default().push(v);
        }
        // Why a repetition is not a plain pass (with everything the guest said), or else the
        // guest's log lines (e.g. a metric it could not measure).
        let note = match (&end, &h.result) {
            (runner::vm::RunEnd::Stopped, Some(r)) if r.status == GuestStatus::Pass => h
                .lines
                .iter()
                .filter(|l| l.starts_with("log:"))
                .cloned()
                .collect::<Vec<_>>()
                .join("; "),
            (runner::vm::RunEnd::Stopped, Some(r)) => {
                format!("{:?}: {} {}", r.status, r.reason, h.lines.join("; "))
            }
            (other, _) => format!("{other:?}"),
        };
        self.note((inst.case.name.clone(), env), &note);
        Ok(h.samples.len())
    }
}

/// Runs the benchmark instances and the baselines on the local target. `progress` gets a line
/// per step.
pub fn run(
    target: &LocalTarget,
    catalog: &Catalog,
    instances: &[Instance],
    envs: &[Env],
    opts: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<BenchReport, Error> {
    let started = Instant::now();
    let kvm = target
        .kvm()
        .map_err(|why| Error::Bench(format!("no usable /dev/kvm: {why}")))?;
    let native = native::native_baselines(opts.repetitions)?;
    progress("native baselines done");
    let mut c = Collected::default();
    let measured_by_host =
        |i: &Instance| matches!(i.case.host, HostCheck::ExitLoop | HostCheck::Lifecycle);
    for inst in instances.iter().filter(|i| !measured_by_host(i)) {
        let key = (inst.case.name.clone(), inst.env.name().to_string());
        if let Some(why) = skip_reason(target.host(), inst.env) {
            c.note(key, &format!("skipped: {why}"));
            continue;
        }
        for rep in 0..opts.repetitions {
            let mut vm = exec::boot_instance(kvm, &catalog.image, inst)?;
            let n = c.repetition(vm.as_mut(), inst, opts.timeout)?;
            if rep == 0 {
                progress(&format!("{} ({n} samples per repetition)", inst.id()));
            }
        }
    }
    let mut by_env = Vec::new();
    for &env in envs {
        if skip_reason(target.host(), env).is_some() {
            continue;
        }
        let instance_of = |host: HostCheck| {
            catalog.case_with_host_check(host).map(|case| Instance {
                case: case.clone(),
                env,
            })
        };
        let Some(exit_loop) = instance_of(HostCheck::ExitLoop) else {
            return Err(Error::Bench("the guest image has no exit-loop case".into()));
        };
        let selected = |i: &Instance| instances.iter().any(|s| s.id() == i.id());
        let lifecycle = instance_of(HostCheck::Lifecycle).filter(selected);
        let mut o = overhead::measure(
            kvm,
            catalog,
            &exit_loop,
            lifecycle.as_ref(),
            opts.repetitions,
            opts.timeout,
        )?;
        if let Some(inst) = &lifecycle {
            let ns = overhead::pipelined_overhead(
                target,
                inst,
                (opts.repetitions * 20).max(100),
                opts.timeout,
            )?;
            o.instance_overhead_ms = Some(stats::median(&ns) / 1e6);
            o.instance_overhead_ns = ns;
        }
        by_env.push(o);
        progress(&format!("runner overhead measured for {}", env.name()));
    }
    for o in by_env.iter().filter(|o| !o.lifecycle_ns.is_empty()) {
        // One repetition per chunk, so the CV is over groups of VMs like the other rows.
        let chunk = o.lifecycle_ns.len().div_ceil(opts.repetitions).max(1);
        let reps: Vec<Vec<f64>> = o.lifecycle_ns.chunks(chunk).map(<[f64]>::to_vec).collect();
        c.rows.insert(("vm_lifecycle".into(), o.env.clone()), reps);
    }
    for o in by_env.iter().filter(|o| !o.instance_overhead_ns.is_empty()) {
        let chunk = o
            .instance_overhead_ns
            .len()
            .div_ceil(opts.repetitions)
            .max(1);
        let reps: Vec<Vec<f64>> = o
            .instance_overhead_ns
            .chunks(chunk)
            .map(<[f64]>::to_vec)
            .collect();
        c.rows
            .insert(("instance_overhead".into(), o.env.clone()), reps);
    }
    let native_median = |b: Baseline| {
        native
            .iter()
            .find(|n| n.name == b.name())
            .map(|n| n.stats.median_ns)
    };
    let mut benchmarks = Vec::new();
    for ((name, env), reps) in &c.rows {
        let s = stats(reps);
        let baseline = c
            .baselines
            .get(name)
            .copied()
            .filter(|b| *b != Baseline::None);
        let base = match baseline {
            Some(Baseline::RawExit) => by_env.iter().find(|o| &o.env == env).map(|o| o.raw_exit_ns),
            Some(b) => native_median(b),
            None => None,
        };
        benchmarks.push(BenchRow {
            ratio_to_native: base.map(|b| s.median_ns / b),
            baseline: baseline.map(|b| b.name().to_string()),
            note: String::new(),
            stats: s,
            name: name.clone(),
            env: env.clone(),
        });
    }
    for ((case, env), note) in c.notes {
        benchmarks.push(BenchRow {
            name: case,
            env,
            stats: Stats::default(),
            baseline: None,
            ratio_to_native: None,
            note,
        });
    }
    Ok(BenchReport {
        schema: SCHEMA.into(),
        target: target.name().into(),
        host: HostReport::new(target.host()),
        tsc_khz: c.tsc_khz,
        repetitions: opts.repetitions,
        benchmarks,
        native,
        runner_overhead: by_env.first().cloned(),
        runner_overhead_by_env: by_env,
        wall_ms: started.elapsed().as_millis() as u64,
    })
}
