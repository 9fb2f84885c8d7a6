//! Running a selection on a [`Target`]: the target yields each instance's result, the suite
//! applies the expectations in force, attaches the host kernel-log lines that appeared while it
//! ran, and hands the result on as it completes (for progress and the crash-safe progress
//! log); the results come back in table order, with the run's host health (bad kernel-log
//! lines, and whether a fresh VM still booted at the end). Nothing here knows which target it
//! drives.
//!
//! With `jobs` > 1 a kernel-log line is attached to the instance that finished first after it
//! appeared, which may not be the one that caused it.

use crate::catalog::Instance;
use crate::expect::Expectations;
use crate::host_health::HealthLog;
use crate::result::CaseResult;
use crate::target::{Target, TargetOptions};

/// How to run the suite.
#[derive(Clone, Debug)]
pub struct SuiteOptions {
    /// What the target needs (timeout, jobs, cancellation).
    pub target: TargetOptions,
    /// Known deviations.
    pub expectations: Expectations,
    /// Watch the host's kernel log with this allowlist (`None`: do not watch).
    pub host_health: Option<crate::host_health::Allowlist>,
    /// The instance that must still boot and pass after the last one (the fresh-VM check).
    pub fresh_boot: Option<Instance>,
}

/// What a run produced.
#[derive(Clone, Debug, Default)]
pub struct SuiteRun {
    /// One result per instance that finished, in the order of the instances given.
    pub results: Vec<CaseResult>,
    /// Whether it was cancelled before every instance finished.
    pub interrupted: bool,
    /// The host's health during the run, when it was watched.
    pub host_health: Option<crate::report::HostHealth>,
}

/// Runs `instances` on `target`; `on_result(done, total, result)` sees each result (with
/// expectations applied) as it completes.
pub fn run(
    target: &dyn Target,
    instances: &[Instance],
    opts: &SuiteOptions,
    on_result: &mut dyn FnMut(usize, usize, &CaseResult),
) -> SuiteRun {
    let total = instances.len();
    let mut slots: Vec<Option<CaseResult>> = vec![None; total];
    let mut done = 0;
    let mut watch = opts.host_health.clone().map(|allow| {
        let log = target.watch_host();
        let health = HealthLog::new(&log.as_ref().map(drop).map_err(Clone::clone), allow);
        (log.ok(), health)
    });
    target.run(instances, &opts.target, &mut |i, mut r| {
        let (outcome, detail) =
            opts.expectations
                .apply(&r.id, r.outcome, std::mem::take(&mut r.detail));
        r.outcome = outcome;
        r.detail = detail;
        if let Some((Some(log), health)) = watch.as_mut() {
            r.kernel_log = health.take(&r.id, log.drain());
        }
        done += 1;
        on_result(done, total, &r);
        if let Some(slot) = slots.get_mut(i) {
            *slot = Some(r);
        }
    });
    let results: Vec<CaseResult> = slots.into_iter().flatten().collect();
    let interrupted = results.len() < total || opts.target.cancel.is_cancelled();
    let host_health = watch.map(|(mut log, mut health)| {
        // Only where VMs could run at all (a target without KVM skips everything, this too).
        if !interrupted
            && target.usable().is_ok()
            && target.host_outlives_runs()
            && let Some(inst) = &opts.fresh_boot
            && let Some((booted, detail)) = fresh_boot(target, inst, opts)
        {
            health.fresh_boot(booted, detail);
        }
        if let Some(log) = log.as_mut() {
            health.take("-", log.drain());
        }
        health.finish()
    });
    SuiteRun {
        interrupted,
        results,
        host_health,
    }
}

/// Runs `inst` once more after everything else: it must pass (the host can still create,
/// boot and run a VM). Returns whether it did and what it saw otherwise; `None` if it could
/// not run here (SKIP) or was cancelled.
fn fresh_boot(target: &dyn Target, inst: &Instance, opts: &SuiteOptions) -> Option<(bool, String)> {
    use crate::outcome::Outcome;
    let mut got = None;
    target.run(std::slice::from_ref(inst), &opts.target, &mut |_, r| {
        got = Some(r)
    });
    match got {
        Some(r) if r.outcome == Outcome::Pass => Some((true, String::new())),
        Some(r) if r.outcome == Outcome::Skip => None,
        Some(r) => Some((
            false,
            format!("{} {}: {}", r.outcome.label(), r.id, r.detail),
        )),
        None => None,
    }
}
