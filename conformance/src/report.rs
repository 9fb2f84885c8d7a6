//! Report formats: the JSON report (`pvm-conformance/report/v1`), a JSON-lines progress log
//! written as each instance completes (so a crash of the harness or the host loses nothing
//! already run), TAP13, JUnit XML, and the text summary.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use runner::detect::{HostInfo, KvmStatus};
use serde::Serialize;

use crate::Error;
use crate::outcome::Outcome;
use crate::suite::CaseResult;

/// Schema id of the JSON report.
pub const SCHEMA: &str = "pvm-conformance/report/v1";

/// The host part of the report.
#[derive(Clone, Debug, Serialize)]
pub struct HostReport {
    /// Kernel release.
    pub kernel: String,
    /// KVM vendor module.
    pub kvm_backend: String,
    /// Dialect name, or null.
    pub dialect: Option<&'static str>,
    /// How the dialect was decided.
    pub dialect_evidence: String,
    /// CPU model.
    pub cpu: String,
    /// Whether /dev/kvm was usable (and why not).
    pub kvm: String,
}

impl HostReport {
    /// From detection results.
    pub fn new(h: &HostInfo) -> Self {
        Self {
            kernel: h.kernel.clone(),
            kvm_backend: h.kvm_backend.clone(),
            dialect: h.dialect.map(|d| d.name()),
            dialect_evidence: h.dialect_evidence.clone(),
            cpu: h.cpu.clone(),
            kvm: match &h.kvm {
                KvmStatus::Usable => "usable".into(),
                KvmStatus::Unusable(why) => format!("unusable: {why}"),
            },
        }
    }
}

/// Counts per outcome and the wall time.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// PASS count.
    pub pass: usize,
    /// FAIL count.
    pub fail: usize,
    /// ERROR count.
    pub error: usize,
    /// SKIP count.
    pub skip: usize,
    /// XFAIL count.
    pub xfail: usize,
    /// CRASH count.
    pub crash: usize,
    /// Instances.
    pub total: usize,
    /// Wall time of the whole run.
    pub wall_ms: u64,
}

impl Summary {
    /// Counts `results`.
    pub fn of(results: &[CaseResult], wall_ms: u64) -> Self {
        let mut s = Summary {
            total: results.len(),
            wall_ms,
            ..Summary::default()
        };
        for r in results {
            *s.count_mut(r.outcome) += 1;
        }
        s
    }

    fn count_mut(&mut self, o: Outcome) -> &mut usize {
        match o {
            Outcome::Pass => &mut self.pass,
            Outcome::Fail => &mut self.fail,
            Outcome::Error => &mut self.error,
            Outcome::Skip => &mut self.skip,
            Outcome::Xfail => &mut self.xfail,
            Outcome::Crash => &mut self.crash,
        }
    }

    /// The count of one outcome.
    pub fn count(&self, o: Outcome) -> usize {
        match o {
            Outcome::Pass => self.pass,
            Outcome::Fail => self.fail,
            Outcome::Error => self.error,
            Outcome::Skip => self.skip,
            Outcome::Xfail => self.xfail,
            Outcome::Crash => self.crash,
        }
    }

    /// Whether anything failed, errored or crashed.
    pub fn is_bad(&self) -> bool {
        self.fail + self.error + self.crash > 0
    }
}

/// The JSON report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// [`SCHEMA`].
    pub schema: &'static str,
    /// Target name (`local`, ...).
    pub target: String,
    /// Where the known deviations came from.
    pub expectations: String,
    /// The host.
    pub host: HostReport,
    /// Every instance, in table order.
    pub cases: Vec<CaseResult>,
    /// Counts.
    pub summary: Summary,
}

impl Report {
    /// Writes the report as pretty JSON, creating parent directories.
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut w = BufWriter::new(File::create(path).map_err(io)?);
        serde_json::to_writer_pretty(&mut w, self).map_err(|e| io(e.into()))?;
        writeln!(w).and_then(|()| w.flush()).map_err(io)
    }
}

/// Appends one JSON object per completed instance, flushed at once.
#[derive(Debug)]
pub struct ProgressLog {
    file: File,
    path: PathBuf,
}

impl ProgressLog {
    /// Creates (truncates) the log.
    pub fn create(path: &Path) -> Result<Self, Error> {
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        Ok(Self {
            file: File::create(path).map_err(io)?,
            path: path.to_path_buf(),
        })
    }

    /// Appends a result.
    pub fn append(&mut self, r: &CaseResult) -> Result<(), Error> {
        let io = |source| Error::Io {
            path: self.path.display().to_string(),
            source,
        };
        let line = serde_json::to_string(r).map_err(|e| io(e.into()))?;
        writeln!(self.file, "{line}")
            .and_then(|()| self.file.sync_data())
            .map_err(io)
    }
}

fn yaml_escape(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// TAP version 13 (one test point per instance; XFAIL as `not ok ... # TODO`, SKIP as
/// `ok ... # SKIP`; details in a YAML block).
pub fn tap(results: &[CaseResult]) -> String {
    let mut out = format!("TAP version 13\n1..{}\n", results.len());
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
                "  ---\n  outcome: {}\n  duration_ms: {:.1}\n  detail: {}\n  ...\n",
                r.outcome.name(),
                r.duration_ms,
                yaml_escape(&r.detail)
            );
        }
    }
    out
}

/// The closing summary line: counts per outcome and the wall time.
pub fn summary_line(s: &Summary) -> String {
    let counts = Outcome::ALL
        .iter()
        .map(|&o| format!("{} {}", s.count(o), o.name()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{} instances: {counts}; wall time {:.2} s",
        s.total,
        s.wall_ms as f64 / 1e3
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &str, outcome: Outcome, detail: &str) -> CaseResult {
        CaseResult {
            id: id.into(),
            case: id.split('~').next().unwrap_or(id).into(),
            area: "io",
            env: "hvm64",
            outcome,
            duration_ms: 1.5,
            detail: detail.into(),
            requirements: vec!["R-1".into()],
            summary: "s".into(),
        }
    }

    #[test]
    fn tap_maps_outcomes() {
        let t = tap(&[
            result("a~hvm64", Outcome::Pass, ""),
            result("b~hvm64", Outcome::Skip, "no #kvm"),
            result("c~hvm64", Outcome::Xfail, "known"),
            result("d~hvm64", Outcome::Crash, "boom \"x\""),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "TAP version 13");
        assert_eq!(lines[1], "1..4");
        assert_eq!(lines[2], "ok 1 - a~hvm64");
        assert_eq!(lines[3], "ok 2 - b~hvm64 # SKIP no kvm");
        assert!(t.contains("not ok 3 - c~hvm64 # TODO known deviation"));
        assert!(t.contains("not ok 4 - d~hvm64\n  ---\n  outcome: crash"));
        assert!(t.contains(r#"detail: "boom \"x\"""#));
    }

    #[test]
    fn summary_counts_every_outcome() {
        let rs: Vec<_> = Outcome::ALL
            .iter()
            .map(|&o| result("x~hvm64", o, ""))
            .collect();
        let s = Summary::of(&rs, 1500);
        for o in Outcome::ALL {
            assert_eq!(s.count(o), 1);
        }
        assert!(s.is_bad());
        assert_eq!(
            summary_line(&s),
            "6 instances: 1 pass, 1 skip, 1 xfail, 1 fail, 1 error, 1 crash; wall time 1.50 s"
        );
    }
}

/// JUnit XML (one `<testsuite>` per environment): FAIL is a `<failure>`, ERROR and CRASH are
/// `<error>` (type `error` / `crash`), SKIP is `<skipped>`, and XFAIL is `<skipped>` with the
/// known deviation as its message, so CI systems that read JUnit keep it visible but green.
pub fn junit(results: &[CaseResult], wall_ms: u64) -> Result<String, Error> {
    use std::time::Duration;

    use quick_junit::{NonSuccessKind, Report as JunitReport, TestCase, TestCaseStatus, TestSuite};

    let mut report = JunitReport::new("pvm-conformance");
    report.set_time(Duration::from_millis(wall_ms));
    // Environments in first-seen order.
    let mut envs: Vec<&str> = results.iter().map(|r| r.env).collect();
    let mut seen = std::collections::HashSet::new();
    envs.retain(|e| seen.insert(*e));
    for env in envs {
        let mut suite = TestSuite::new(env);
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
    report.to_string().map_err(|e| Error::Io {
        path: "JUnit report".into(),
        source: std::io::Error::other(e.to_string()),
    })
}

#[cfg(test)]
mod junit_tests {
    use super::*;

    fn result(id: &str, env: &'static str, outcome: Outcome, detail: &str) -> CaseResult {
        CaseResult {
            id: id.into(),
            case: id.into(),
            area: "io",
            env,
            outcome,
            duration_ms: 2.0,
            detail: detail.into(),
            requirements: vec![],
            summary: String::new(),
        }
    }

    #[test]
    fn junit_has_one_suite_per_env_and_maps_outcomes() {
        let x = junit(
            &[
                result("a~hvm64", "hvm64", Outcome::Pass, ""),
                result("b~hvm64", "hvm64", Outcome::Fail, "x < y & z"),
                result("c~pv-local", "pv-local", Outcome::Crash, "triple fault"),
                result("d~pv-local", "pv-local", Outcome::Xfail, "known"),
            ],
            10,
        )
        .expect("serialises");
        assert_eq!(x.matches("<testsuite ").count(), 2, "{x}");
        assert!(x.contains(r#"<testsuite name="hvm64" tests="2""#), "{x}");
        assert!(
            x.contains("<failure") && x.contains("x &lt; y &amp; z"),
            "{x}"
        );
        assert!(x.contains(r#"type="crash""#), "{x}");
        assert!(x.contains("<skipped") && x.contains("xfail: known"), "{x}");
    }
}
