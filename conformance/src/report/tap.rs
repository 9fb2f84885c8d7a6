//! TAP version 13: one test point per instance; XFAIL as `not ok ... # TODO`, SKIP as
//! `ok ... # SKIP`; details in a YAML block; an interrupted run ends with `Bail out!`.

use crate::outcome::Outcome;
use crate::report::{CaseResult, RunInfo};

fn yaml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The TAP stream of `results` (of `selected` instances; fewer results means interrupted).
pub fn tap(run: &RunInfo, results: &[CaseResult], selected: usize) -> String {
    let mut out = format!(
        "TAP version 13\n# run {} target {} started {}\n1..{selected}\n",
        run.run_id, run.target, run.started
    );
    for (i, r) in results.iter().enumerate() {
        let n = i + 1;
        let line = match r.outcome {
            Outcome::Pass => format!("ok {n} - {}", r.id),
            Outcome::Skip => format!("ok {n} - {} # SKIP {}", r.id, r.detail.replace('#', "")),
            Outcome::Xfail => format!("not ok {n} - {} # TODO known deviation", r.id),
            Outcome::Fail | Outcome::Error | Outcome::Crash => format!("not ok {n} - {}", r.id),
        };
        out += &line;
        out.push('\n');
        if r.outcome != Outcome::Pass {
            out += &format!(
                "  ---\n  outcome: {}\n  duration_ms: {:.1}\n  checks: {}\n  detail: {}\n  ...\n",
                r.outcome.name(),
                r.duration_ms,
                r.checks,
                yaml_string(&r.detail)
            );
        }
    }
    if results.len() < selected {
        out += &format!(
            "Bail out! interrupted after {} of {selected} instances\n",
            results.len()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::*;

    #[test]
    fn tap_snapshot() {
        insta::assert_snapshot!("tap", tap(&run_info(), &all_outcomes(), 6));
    }

    #[test]
    fn an_interrupted_run_bails_out() {
        let t = tap(&run_info(), &all_outcomes()[..2], 6);
        assert!(t.contains("1..6\n"), "{t}");
        assert!(
            t.ends_with("Bail out! interrupted after 2 of 6 instances\n"),
            "{t}"
        );
    }
}
