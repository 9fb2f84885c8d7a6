//! JUnit XML (one `<testsuite>` per environment): FAIL is a `<failure>`, ERROR and CRASH are
//! `<error>` (type `error` / `crash`), SKIP is `<skipped>`, and XFAIL is `<skipped>` with the
//! known deviation as its message, so CI systems that read JUnit keep it visible but green. The
//! run's identity goes into `<properties>` of every suite.

use std::time::Duration;

use quick_junit::{NonSuccessKind, Report as JunitReport, TestCase, TestCaseStatus, TestSuite};

use crate::Error;
use crate::outcome::Outcome;
use crate::report::{CaseResult, RunInfo};

/// The JUnit document of `results`.
pub fn junit(
    run: &RunInfo,
    results: &[CaseResult],
    wall_ms: u64,
    interrupted: bool,
) -> Result<String, Error> {
    let mut report = JunitReport::new("pvm-conformance");
    report.set_time(Duration::from_millis(wall_ms));
    // Environments in first-seen order.
    let mut envs: Vec<&str> = results.iter().map(|r| r.env.as_str()).collect();
    let mut seen = std::collections::HashSet::new();
    envs.retain(|e| seen.insert(*e));
    for env in envs {
        let mut suite = TestSuite::new(env);
        suite.add_property(("run_id", run.run_id.as_str()));
        suite.add_property(("started", run.started.as_str()));
        suite.add_property(("target", run.target.as_str()));
        suite.add_property(("interrupted", if interrupted { "true" } else { "false" }));
        for r in results.iter().filter(|r| r.env == env) {
            let status = match r.outcome {
                Outcome::Pass => TestCaseStatus::success(),
                Outcome::Skip | Outcome::Xfail => {
                    let mut s = TestCaseStatus::skipped();
                    s.set_message(format!("{}: {}", r.outcome.name(), r.detail));
                    s
                }
                Outcome::Fail | Outcome::Error | Outcome::Crash => {
                    let kind = if r.outcome == Outcome::Fail {
                        NonSuccessKind::Failure
                    } else {
                        NonSuccessKind::Error
                    };
                    let mut s = TestCaseStatus::non_success(kind);
                    s.set_type(r.outcome.name());
                    s.set_message(r.detail.clone());
                    s
                }
            };
            let mut case = TestCase::new(r.id.clone(), status);
            case.set_classname(format!("pvm-conformance.{}.{}", env, r.area));
            case.set_time(Duration::from_secs_f64(r.duration_ms / 1e3));
            suite.add_test_case(case);
        }
        report.add_test_suite(suite);
    }
    report.to_string().map_err(|e| Error::Serialize {
        what: "the JUnit report",
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::*;

    #[test]
    fn junit_snapshot() {
        let x = junit(&run_info(), &all_outcomes(), 10, false).expect("serialises");
        insta::assert_snapshot!("junit", x);
    }
}
