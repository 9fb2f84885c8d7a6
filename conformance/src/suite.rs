//! Running a selection on a [`Target`]: the target yields each instance's result, the suite
//! applies the expectations in force and hands the result on as it completes (for progress and
//! the crash-safe progress log); the results come back in table order. Nothing here knows which
//! target it drives.

use crate::catalog::Instance;
use crate::expect::Expectations;
use crate::result::CaseResult;
use crate::target::{Target, TargetOptions};

/// How to run the suite.
#[derive(Clone, Debug)]
pub struct SuiteOptions {
    /// What the target needs (timeout, jobs, cancellation).
    pub target: TargetOptions,
    /// Known deviations.
    pub expectations: Expectations,
}

/// What a run produced.
#[derive(Clone, Debug, Default)]
pub struct SuiteRun {
    /// One result per instance that finished, in the order of the instances given.
    pub results: Vec<CaseResult>,
    /// Whether it was cancelled before every instance finished.
    pub interrupted: bool,
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
    target.run(instances, &opts.target, &mut |i, mut r| {
        let (outcome, detail) =
            opts.expectations
                .apply(&r.id, r.outcome, std::mem::take(&mut r.detail));
        r.outcome = outcome;
        r.detail = detail;
        done += 1;
        on_result(done, total, &r);
        if let Some(slot) = slots.get_mut(i) {
            *slot = Some(r);
        }
    });
    let results: Vec<CaseResult> = slots.into_iter().flatten().collect();
    SuiteRun {
        interrupted: results.len() < total,
        results,
    }
}
