//! [`CaseResult`]: the result of one case instance, as targets yield it and every report
//! format writes it.

use serde::{Deserialize, Serialize};

use crate::catalog::Instance;
use crate::exec::RawResult;
use crate::outcome::Outcome;

/// The result of one instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    /// `<case>~<env>`.
    pub id: String,
    /// Case name.
    pub case: String,
    /// Area name.
    pub area: String,
    /// Environment name.
    pub env: String,
    /// Outcome (after expectations, once the suite applied them).
    pub outcome: Outcome,
    /// Wall time of the instance on the run's critical path: VM creation, boot, the run and
    /// teardown, less what a target did ahead of time or in the background (the local target
    /// prepares the next VMs while one runs, and tears them down behind it).
    pub duration_ms: f64,
    /// Of that, the time the VM ran (`Vm::run`: the guest's boot and case, and the host's
    /// answers to its exits); `duration_ms - run_ms` is the harness's overhead.
    #[serde(default)]
    pub run_ms: f64,
    /// Checks made by the guest and the host-side check.
    pub checks: u32,
    /// What happened: logs, failed checks, final reason, crash details.
    pub detail: String,
    /// Requirement ids the case checks.
    pub requirements: Vec<String>,
    /// One-line description of the case.
    pub summary: String,
    /// Kernel-log lines that appeared while the instance ran (when the log was watched).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_log: Vec<String>,
}

impl CaseResult {
    /// The result of `inst` from a raw run result.
    pub fn new(inst: &Instance, raw: RawResult, duration_ms: f64) -> Self {
        Self {
            id: inst.id(),
            case: inst.case.name.clone(),
            area: inst.case.area.name().into(),
            env: inst.env.name().into(),
            outcome: raw.outcome,
            duration_ms,
            run_ms: 0.0,
            checks: raw.checks,
            detail: raw.detail,
            requirements: inst.case.requirements.clone(),
            summary: inst.case.summary.clone(),
            kernel_log: Vec::new(),
        }
    }

    /// The result of `inst` without a run of it (or whose run left nothing to time): `outcome`
    /// with `detail`, no checks.
    pub fn without_run(inst: &Instance, outcome: Outcome, detail: String) -> Self {
        Self::new(
            inst,
            RawResult {
                outcome,
                detail,
                checks: 0,
            },
            0.0,
        )
    }

    /// A SKIP of `inst` that did not run, with the reason.
    pub fn skipped(inst: &Instance, why: String) -> Self {
        Self::without_run(inst, Outcome::Skip, why)
    }
}
