//! Benchmarks: guest microbenchmarks (area `bench`) in each environment, native baselines
//! measured on the host in the same run, the runner's own per-exit overhead against a raw
//! `KVM_RUN` loop, and the per-case overhead (VM create + boot + teardown of an empty guest).
//!
//! Every benchmark instance runs `repetitions` times, each in a fresh VM. A guest reports TSC
//! samples per metric (cycles for a batch of operations); cycles become nanoseconds with the
//! vCPU's `KVM_GET_TSC_KHZ`. Statistics per metric: median and p99 over all samples of all
//! repetitions (ns per operation) and the coefficient of variation of the per-repetition
//! medians (how repeatable the number is from VM to VM).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use abi::case::io;
use abi::env::Env;
use abi::layout::IMAGE_BASE;
use abi::report::Message;
use runner::detect::HostInfo;
use runner::image::GuestImage;
use runner::kvm::{Action, ExitHandler, Kvm, MachineOptions, RunEnd};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::catalog::Instance;
use crate::host_check::CaseHandler;
use crate::report::HostReport;
use crate::suite;

/// Schema id of the benchmark report.
pub const SCHEMA: &str = "pvm-conformance/bench/v1";

/// Statistics of one series (ns per operation).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Median over all samples.
    pub median_ns: f64,
    /// 99th percentile over all samples.
    pub p99_ns: f64,
    /// Coefficient of variation of the per-repetition medians.
    pub cv: f64,
    /// Samples.
    pub samples: usize,
    /// Median of each repetition (one VM each), in run order: shows whether a high CV comes
    /// from one disturbed VM or from a general spread.
    #[serde(default)]
    pub rep_medians_ns: Vec<f64>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    percentile(&s, 0.5)
}

/// Statistics of repeated runs: `reps[i]` are the samples of repetition `i`.
pub fn stats(reps: &[Vec<f64>]) -> Stats {
    let mut all: Vec<f64> = reps.iter().flatten().copied().collect();
    all.sort_by(f64::total_cmp);
    let meds: Vec<f64> = reps
        .iter()
        .filter(|r| !r.is_empty())
        .map(|r| median(r))
        .collect();
    let cv = if meds.len() < 2 {
        0.0
    } else {
        let mean = meds.iter().sum::<f64>() / meds.len() as f64;
        let var = meds.iter().map(|m| (m - mean).powi(2)).sum::<f64>() / (meds.len() - 1) as f64;
        if mean > 0.0 { var.sqrt() / mean } else { 0.0 }
    };
    Stats {
        median_ns: percentile(&all, 0.5),
        p99_ns: percentile(&all, 0.99),
        cv,
        samples: all.len(),
        rep_medians_ns: meds,
    }
}

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

/// A native baseline measured on the host.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NativeRow {
    /// Name.
    pub name: String,
    /// Statistics.
    #[serde(flatten)]
    pub stats: Stats,
}

/// The runner's own cost, for one environment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Overhead {
    /// Environment.
    pub env: String,
    /// Median gap between port-I/O exits of the raw `KVM_RUN` loop.
    pub raw_exit_ns: f64,
    /// The same guest code driven by the runner (`Machine::run` + exit handler).
    pub runner_exit_ns: f64,
    /// `runner_exit_ns / raw_exit_ns`.
    pub runner_to_raw: f64,
    /// Median wall time of an empty case instance: VM create, load, boot, report, teardown
    /// (absent when `bench.empty` was not selected).
    pub case_overhead_ms: Option<f64>,
    /// The empty-case lifecycles, in ns (for the `vm_lifecycle` row).
    #[serde(skip)]
    pub lifecycle_ns: Vec<f64>,
}

/// The benchmark report (`pvm-conformance/bench/v1`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchReport {
    /// [`SCHEMA`].
    pub schema: String,
    /// Target name.
    pub target: String,
    /// The host.
    pub host: serde_json::Value,
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

/// Which native baseline a metric is compared with.
pub fn baseline_for(metric: &str) -> Option<&'static str> {
    Some(match metric {
        "hypercall" | "syscall_roundtrip" => "native_getpid",
        "exception_ud" => "native_signal",
        "exception_pf" | "shadow_first_touch" => "native_page_fault",
        "cpuid" | "pv_cpuid" => "native_cpuid",
        "pio_exit" | "mmio_exit" => "raw_kvm_exit",
        _ => return None,
    })
}

/// Native baselines: getpid, a page fault on fresh anonymous memory, a signal round trip,
/// CPUID, each as `reps` repetitions of timed batches.
pub fn native_baselines(reps: usize) -> Result<Vec<NativeRow>, Error> {
    const SAMPLES: usize = 40;
    let batch = |iters: u32, op: &mut dyn FnMut()| {
        let t = Instant::now();
        for _ in 0..iters {
            op();
        }
        t.elapsed().as_secs_f64() * 1e9 / f64::from(iters)
    };
    let series = |f: &mut dyn FnMut() -> Result<f64, Error>| -> Result<Stats, Error> {
        let mut all = Vec::new();
        for _ in 0..reps {
            all.push((0..SAMPLES).map(|_| f()).collect::<Result<Vec<_>, _>>()?);
        }
        Ok(stats(&all))
    };
    let getpid = series(&mut || {
        Ok(batch(2000, &mut || {
            std::hint::black_box(std::process::id());
        }))
    })?;
    let page_fault = series(&mut || {
        const PAGES: usize = 64;
        let mut m = memmap2::MmapMut::map_anon(PAGES * 4096).map_err(|source| Error::Io {
            path: "anonymous mapping".into(),
            source,
        })?;
        let t = Instant::now();
        for p in 0..PAGES {
            m[p * 4096] = 1;
        }
        let ns = t.elapsed().as_secs_f64() * 1e9 / PAGES as f64;
        std::hint::black_box(&m);
        Ok(ns)
    })?;
    let flag = Arc::new(AtomicBool::new(false));
    let sig = signal_hook::consts::SIGUSR2;
    let id = signal_hook::flag::register(sig, Arc::clone(&flag)).map_err(|source| Error::Io {
        path: "SIGUSR2 handler".into(),
        source,
    })?;
    let signal = series(&mut || {
        Ok(batch(500, &mut || {
            let _ = signal_hook::low_level::raise(sig);
            flag.store(false, Ordering::Relaxed);
        }))
    });
    signal_hook::low_level::unregister(id);
    let signal = signal?;
    let cpuid = series(&mut || {
        Ok(batch(200, &mut || {
            std::hint::black_box(core::arch::x86_64::__cpuid(0));
        }))
    })?;
    Ok(vec![
        NativeRow {
            name: "native_getpid".into(),
            stats: getpid,
        },
        NativeRow {
            name: "native_page_fault".into(),
            stats: page_fault,
        },
        NativeRow {
            name: "native_signal".into(),
            stats: signal,
        },
        NativeRow {
            name: "native_cpuid".into(),
            stats: cpuid,
        },
    ])
}

/// Counts OUTs to the benchmark port and times the gaps between them; stops after `want`.
struct ExitTimer {
    want: usize,
    last: Option<Instant>,
    gaps: Vec<f64>,
    warmup: usize,
}

impl ExitHandler for ExitTimer {
    fn report(&mut self, _: &Message) -> Action {
        Action::Unexpected("report from the exit blob".into())
    }
    fn io_out(&mut self, port: u16, _: &[u8]) -> Action {
        if port != io::BENCH_PORT {
            return Action::Unexpected(format!("OUT to {port:#x}"));
        }
        let now = Instant::now();
        if self.warmup > 0 {
            self.warmup -= 1;
        } else if let Some(prev) = self.last {
            self.gaps.push((now - prev).as_secs_f64() * 1e9);
        }
        self.last = Some(now);
        if self.gaps.len() >= self.want {
            Action::Stop
        } else {
            Action::Continue
        }
    }
    fn io_in(&mut self, port: u16, _: &mut [u8]) -> Action {
        Action::Unexpected(format!("IN from {port:#x}"))
    }
    fn mmio_write(&mut self, gpa: u64, _: &[u8]) -> Action {
        Action::Unexpected(format!("MMIO write {gpa:#x}"))
    }
    fn mmio_read(&mut self, gpa: u64, _: &mut [u8]) -> Action {
        Action::Unexpected(format!("MMIO read {gpa:#x}"))
    }
    fn hlt(&mut self) -> Action {
        Action::Unexpected("HLT".into())
    }
}

/// Per-exit cost of the runner's loop on the raw-loop guest code, in ns (median gap).
fn runner_exit_gaps(
    kvm: &Kvm,
    env: Env,
    exits: usize,
    timeout: Duration,
) -> Result<Vec<f64>, Error> {
    let mut m = kvm.create_machine(MachineOptions::default())?;
    runner::setup::write_page_tables(m.memory())?;
    m.memory().write(
        IMAGE_BASE,
        &runner::baseline::exit_blob(env, io::BENCH_PORT),
    )?;
    m.set_long_mode_entry(IMAGE_BASE)?;
    let mut t = ExitTimer {
        want: exits,
        last: None,
        gaps: Vec::with_capacity(exits),
        warmup: 50,
    };
    match m.run(&mut t, timeout)? {
        RunEnd::Stopped => Ok(t.gaps),
        other => Err(Error::Bench(format!(
            "runner exit loop ended with {other:?}"
        ))),
    }
}

/// Measures the runner's overhead in `env`: raw vs runner exit gaps (interleaved over
/// `reps` rounds so drift hits both alike), and the empty case's lifecycle.
fn overhead(
    kvm: &Kvm,
    image: &GuestImage,
    empty: Option<&Instance>,
    env: Env,
    opts: &BenchOptions,
) -> Result<Overhead, Error> {
    const EXITS: usize = 2000;
    let (mut raw, mut run) = (Vec::new(), Vec::new());
    for _ in 0..opts.repetitions {
        raw.push(median(&runner::baseline::raw_exit_gaps(
            env,
            io::BENCH_PORT,
            EXITS,
            50,
        )?));
        run.push(median(&runner_exit_gaps(kvm, env, EXITS, opts.timeout)?));
    }
    let (raw, run) = (median(&raw), median(&run));
    let mut lifecycle = Vec::new();
    if let Some(inst) = empty {
        for _ in 0..(opts.repetitions * 4).max(20) {
            let t = Instant::now();
            let mut m = suite::prepare(kvm, image, inst)?;
            let mut h = CaseHandler::new(inst.case.host);
            let end = m.run(&mut h, opts.timeout)?;
            drop(m);
            if end != RunEnd::Stopped {
                return Err(Error::Bench(format!("bench.empty ended with {end:?}")));
            }
            lifecycle.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(Overhead {
        env: env.name().into(),
        raw_exit_ns: raw,
        runner_exit_ns: run,
        runner_to_raw: run / raw,
        case_overhead_ms: (!lifecycle.is_empty()).then(|| median(&lifecycle)),
        lifecycle_ns: lifecycle.iter().map(|ms| ms * 1e6).collect(),
    })
}

/// Runs the benchmark instances and the baselines. `progress` gets a line per step.
pub fn run(
    image: &GuestImage,
    host: &HostInfo,
    instances: &[Instance],
    envs: &[Env],
    opts: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<BenchReport, Error> {
    let started = Instant::now();
    let kvm = Kvm::open()?;
    let native = native_baselines(opts.repetitions)?;
    progress("native baselines done");
    let mut rows: BTreeMap<(String, String), Vec<Vec<f64>>> = BTreeMap::new();
    let mut notes: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut tsc_khz = 0u64;
    for inst in instances.iter().filter(|i| i.case.name != "bench.empty") {
        let key_env = inst.env.name().to_string();
        if let Err(why) = suite::applicability(Ok(&kvm), host, inst.env) {
            notes.insert((inst.case.name.clone(), key_env), format!("skipped: {why}"));
            continue;
        }
        for rep in 0..opts.repetitions {
            let mut m = suite::prepare(&kvm, image, inst)?;
            tsc_khz = u64::from(m.tsc_khz()?);
            let khz = tsc_khz;
            let mut h = CaseHandler::new(inst.case.host);
            let end = m.run(&mut h, opts.timeout)?;
            let mut per_metric: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            for (metric, ops, cycles) in &h.samples {
                if *ops > 0 {
                    let ns = *cycles as f64 * 1e6 / khz as f64 / *ops as f64;
                    per_metric.entry(metric.clone()).or_default().push(ns);
                }
            }
            for (metric, v) in per_metric {
                rows.entry((metric, key_env.clone())).or_default().push(v);
            }
            // Why a repetition is not a plain pass (with everything the guest said), or else
            // the guest's log lines (e.g. a metric it could not measure).
            let note = match (&end, &h.result) {
                (RunEnd::Stopped, Some((abi::report::GuestStatus::Pass, _))) => {
                    let logs: Vec<&str> = h
                        .lines
                        .iter()
                        .filter(|l| l.starts_with("log:"))
                        .map(String::as_str)
                        .collect();
                    logs.join("; ")
                }
                (RunEnd::Stopped, Some((s, reason))) => {
                    format!("{s:?}: {reason} {}", h.lines.join("; "))
                }
                (other, _) => format!("{other:?}"),
            };
            if !note.is_empty() {
                let e = notes
                    .entry((inst.case.name.clone(), key_env.clone()))
                    .or_default();
                if !e.contains(&note) {
                    if !e.is_empty() {
                        e.push_str(" | ");
                    }
                    e.push_str(&note);
                }
            }
            if rep == 0 {
                progress(&format!(
                    "{} ({} samples per repetition)",
                    inst.id(),
                    h.samples.len()
                ));
            }
        }
    }
    let native_median = |name: &str| {
        native
            .iter()
            .find(|n| n.name == name)
            .map(|n| n.stats.median_ns)
    };
    let mut by_env = Vec::new();
    for &env in envs {
        if suite::applicability(Ok(&kvm), host, env).is_err() {
            continue;
        }
        let empty = instances
            .iter()
            .find(|i| i.case.name == "bench.empty" && i.env == env);
        by_env.push(overhead(&kvm, image, empty, env, opts)?);
        progress(&format!("runner overhead measured for {}", env.name()));
    }
    for o in by_env.iter().filter(|o| !o.lifecycle_ns.is_empty()) {
        // One repetition per chunk, so the CV is over groups of VMs like the other rows.
        let chunk = o.lifecycle_ns.len().div_ceil(opts.repetitions).max(1);
        let reps: Vec<Vec<f64>> = o.lifecycle_ns.chunks(chunk).map(<[f64]>::to_vec).collect();
        rows.insert(("vm_lifecycle".into(), o.env.clone()), reps);
    }
    let mut benchmarks = Vec::new();
    for ((name, env), reps) in rows {
        let s = stats(&reps);
        let baseline = baseline_for(&name);
        let base = match baseline {
            Some("raw_kvm_exit") => by_env.iter().find(|o| o.env == env).map(|o| o.raw_exit_ns),
            Some(b) => native_median(b),
            None => None,
        };
        benchmarks.push(BenchRow {
            ratio_to_native: base.map(|b| s.median_ns / b),
            baseline: baseline.map(String::from),
            note: String::new(),
            stats: s,
            name,
            env,
        });
    }
    for ((case, env), note) in notes {
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
        target: "local".into(),
        host: serde_json::to_value(HostReport::new(host)).unwrap_or_default(),
        tsc_khz,
        repetitions: opts.repetitions,
        benchmarks,
        native,
        runner_overhead: by_env.first().cloned(),
        runner_overhead_by_env: by_env,
        wall_ms: started.elapsed().as_millis() as u64,
    })
}

/// The benchmark table as text.
pub fn table(r: &BenchReport) -> String {
    let mut out = format!(
        "{:<22} {:<9} {:>12} {:>12} {:>7} {:>9}  {}\n",
        "benchmark", "env", "median ns", "p99 ns", "cv %", "ratio", "baseline / note"
    );
    for b in &r.benchmarks {
        if b.stats.samples == 0 {
            out += &format!(
                "{:<22} {:<9} {:>12} {:>12} {:>7} {:>9}  {}\n",
                b.name, b.env, "-", "-", "-", "-", b.note
            );
            continue;
        }
        out += &format!(
            "{:<22} {:<9} {:>12.1} {:>12.1} {:>7.2} {:>9}  {}\n",
            b.name,
            b.env,
            b.stats.median_ns,
            b.stats.p99_ns,
            b.stats.cv * 100.0,
            b.ratio_to_native.map_or("-".into(), |x| format!("{x:.2}x")),
            b.baseline.as_deref().unwrap_or("")
        );
    }
    for n in &r.native {
        out += &format!(
            "{:<22} {:<9} {:>12.1} {:>12.1} {:>7.2} {:>9}\n",
            n.name,
            "host",
            n.stats.median_ns,
            n.stats.p99_ns,
            n.stats.cv * 100.0,
            "1.00x"
        );
    }
    for o in &r.runner_overhead_by_env {
        out += &format!(
            "runner overhead {:<9} raw KVM_RUN exit {:.1} ns, runner exit {:.1} ns ({:.3}x), case overhead {}\n",
            o.env,
            o.raw_exit_ns,
            o.runner_exit_ns,
            o.runner_to_raw,
            o.case_overhead_ms
                .map_or("not measured".into(), |ms| format!("{ms:.2} ms (median)"))
        );
    }
    out
}

/// `b / a` per (benchmark, env) present in both reports, as text.
pub fn compare(a: &BenchReport, b: &BenchReport) -> String {
    let mut out = format!(
        "{:<22} {:<9} {:>12} {:>12} {:>8}\n",
        "benchmark", "env", "a median", "b median", "b/a"
    );
    for x in a.benchmarks.iter().filter(|x| x.stats.samples > 0) {
        if let Some(y) = b
            .benchmarks
            .iter()
            .find(|y| y.name == x.name && y.env == x.env && y.stats.samples > 0)
        {
            out += &format!(
                "{:<22} {:<9} {:>12.1} {:>12.1} {:>7.3}x\n",
                x.name,
                x.env,
                x.stats.median_ns,
                y.stats.median_ns,
                y.stats.median_ns / x.stats.median_ns
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_known_series() {
        let s = stats(&[
            vec![1.0, 2.0, 3.0],
            vec![2.0, 2.0, 2.0],
            vec![3.0, 4.0, 5.0],
        ]);
        assert_eq!(s.samples, 9);
        assert_eq!(s.median_ns, 2.0);
        assert_eq!(s.p99_ns, 5.0);
        // Repetition medians 2, 2, 4: mean 8/3, sample sd sqrt(4/3).
        assert!((s.cv - (4.0f64 / 3.0).sqrt() / (8.0 / 3.0)).abs() < 1e-12);
        assert_eq!(stats(&[vec![7.0]]).cv, 0.0);
    }

    #[test]
    fn compare_matches_rows_by_name_and_env() {
        let row = |name: &str, env: &str, m: f64| BenchRow {
            name: name.into(),
            env: env.into(),
            stats: Stats {
                median_ns: m,
                p99_ns: m,
                cv: 0.0,
                samples: 1,
                rep_medians_ns: vec![m],
            },
            baseline: None,
            ratio_to_native: None,
            note: String::new(),
        };
        let rep = |rows| BenchReport {
            schema: SCHEMA.into(),
            target: "local".into(),
            host: serde_json::Value::Null,
            tsc_khz: 1,
            repetitions: 1,
            benchmarks: rows,
            native: vec![],
            runner_overhead: None,
            runner_overhead_by_env: vec![],
            wall_ms: 0,
        };
        let a = rep(vec![row("x", "hvm64", 100.0), row("y", "hvm64", 10.0)]);
        let b = rep(vec![row("x", "hvm64", 150.0), row("x", "pv-local", 1.0)]);
        let c = compare(&a, &b);
        assert!(c.contains("1.500x"), "{c}");
        assert!(!c.contains("\ny "), "{c}");
    }

    #[test]
    fn native_baselines_are_positive() {
        let n = native_baselines(2).expect("baselines");
        assert_eq!(n.len(), 4);
        assert!(
            n.iter()
                .all(|r| r.stats.median_ns > 0.0 && r.stats.samples == 80),
            "{n:?}"
        );
    }
}
