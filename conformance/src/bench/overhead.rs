//! The runner's own cost in one environment: per-exit cost of the runner's loop against the
//! raw `KVM_RUN` loop on the same guest (the exit-loop case), interleaved so drift hits both
//! alike, and the lifecycle of an empty case (VM create, boot, report, teardown).

use std::time::{Duration, Instant};

use abi::case::io;
use abi::report::Message;
use runner::kvm::Kvm;
use runner::vm::{Action, ExitHandler, RunEnd, RunLimits};
use serde::{Deserialize, Serialize};

use super::stats::median;
use crate::Error;
use crate::catalog::{Catalog, Instance};
use crate::exec;
use crate::host_check::CaseHandler;

/// The runner's own cost, for one environment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Overhead {
    /// Environment.
    pub env: String,
    /// Median gap between port-I/O exits of the raw `KVM_RUN` loop.
    pub raw_exit_ns: f64,
    /// The same guest code driven by the runner (`Vm::run` + exit handler).
    pub runner_exit_ns: f64,
    /// `runner_exit_ns / raw_exit_ns`.
    pub runner_to_raw: f64,
    /// Median wall time of an empty case instance: VM create, load, boot, report, teardown
    /// (absent when the lifecycle case was not selected).
    pub case_overhead_ms: Option<f64>,
    /// The empty-case lifecycles, in ns (for the `vm_lifecycle` row).
    #[serde(skip)]
    pub lifecycle_ns: Vec<f64>,
    /// Median per-instance overhead when the target runs instances the way a conformance run
    /// does (VMs prepared ahead and torn down behind): an instance's critical-path time
    /// outside its VM run, in ms (the goal is at most 1 ms).
    #[serde(default)]
    pub instance_overhead_ms: Option<f64>,
    /// Those per-instance overheads, in ns (for the `instance_overhead` row).
    #[serde(skip)]
    pub instance_overhead_ns: Vec<f64>,
}

/// Runs `inst` `n` times through `target` as a conformance run would, and returns each
/// instance's overhead (`duration_ms - run_ms`) in ns.
pub fn pipelined_overhead(
    target: &crate::target::local::LocalTarget,
    inst: &Instance,
    n: usize,
    timeout: Duration,
) -> Result<Vec<f64>, Error> {
    use crate::target::{Target, TargetOptions};
    let insts = vec![inst.clone(); n];
    let opts = TargetOptions {
        timeout,
        jobs: 1,
        cancel: runner::vm::Cancel::new(),
    };
    let mut out = Vec::with_capacity(n);
    let mut bad = None;
    target.run(&insts, &opts, &mut |_, r| {
        if r.outcome == crate::outcome::Outcome::Pass {
            out.push((r.duration_ms - r.run_ms).max(0.0) * 1e6);
        } else {
            bad.get_or_insert(format!("{}: {} {}", r.id, r.outcome.label(), r.detail));
        }
    });
    match bad {
        Some(why) => Err(Error::Bench(why)),
        None => Ok(out),
    }
}

/// Counts OUTs to the benchmark port and times the gaps between them; stops after `want`.
struct ExitTimer {
    want: usize,
    last: Option<Instant>,
    gaps: Vec<f64>,
    warmup: usize,
}

impl ExitHandler for ExitTimer {
    fn report(&mut self, m: &Message) -> Action {
        Action::Unexpected(format!("report from the exit-loop guest: {}", m.text_str()))
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
}

const EXITS: usize = 2000;
const WARMUP: usize = 50;

fn runner_exit_gaps(
    kvm: &Kvm,
    catalog: &Catalog,
    inst: &Instance,
    timeout: Duration,
) -> Result<Vec<f64>, Error> {
    let mut vm = exec::boot_instance(kvm, &catalog.image, inst)?;
    let mut t = ExitTimer {
        want: EXITS,
        last: None,
        gaps: Vec::with_capacity(EXITS),
        warmup: WARMUP,
    };
    match vm.run(&mut t, &RunLimits::timeout(timeout))? {
        RunEnd::Stopped => Ok(t.gaps),
        other => Err(Error::Bench(format!(
            "{}: runner exit loop ended with {other:?}",
            inst.id()
        ))),
    }
}

/// Measures the overhead with `exit_loop` (the exit-loop case in one environment) and, when
/// given, `lifecycle` (the empty case in the same environment).
pub fn measure(
    kvm: &Kvm,
    catalog: &Catalog,
    exit_loop: &Instance,
    lifecycle: Option<&Instance>,
    repetitions: usize,
    timeout: Duration,
) -> Result<Overhead, Error> {
    let (mut raw, mut run) = (Vec::new(), Vec::new());
    for _ in 0..repetitions {
        raw.push(median(&runner::baseline::raw_exit_gaps(
            kvm,
            &catalog.image,
            &exec::boot_params(exit_loop),
            io::BENCH_PORT,
            EXITS,
            WARMUP,
            timeout,
        )?));
        run.push(median(&runner_exit_gaps(kvm, catalog, exit_loop, timeout)?));
    }
    let (raw, run) = (median(&raw), median(&run));
    let mut lifecycle_ms = Vec::new();
    if let Some(inst) = lifecycle {
        for _ in 0..(repetitions * 4).max(20) {
            let t = Instant::now();
            let mut vm = exec::boot_instance(kvm, &catalog.image, inst)?;
            let mut h = CaseHandler::new(inst.case.host);
            let end = vm.run(&mut h, &RunLimits::timeout(timeout))?;
            drop(vm);
            if end != RunEnd::Stopped {
                return Err(Error::Bench(format!("{} ended with {end:?}", inst.id())));
            }
            lifecycle_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(Overhead {
        env: exit_loop.env.name().into(),
        raw_exit_ns: raw,
        runner_exit_ns: run,
        runner_to_raw: run / raw,
        case_overhead_ms: (!lifecycle_ms.is_empty()).then(|| median(&lifecycle_ms)),
        lifecycle_ns: lifecycle_ms.iter().map(|ms| ms * 1e6).collect(),
        instance_overhead_ms: None,
        instance_overhead_ns: Vec::new(),
    })
}
