//! Certification: whether one conformance report shows that a host meets a *profile*, and a
//! self-contained HTML certificate that says so with the evidence.
//!
//! - [`profile`]: the profile file (TOML, `conformance/profiles/*.toml`): which environments,
//!   areas and requirement levels must hold, whether documented deviations still certify, and
//!   what the report itself must show (complete, host health, a minimum of instances that ran).
//! - [`verdict`]: the pure function from a report, the requirements catalog and a profile to a
//!   [`Certificate`]: per-requirement status (HELD, FAILED, DEVIATION, NOT-RUN, UNCOVERED), the
//!   per-area table, the findings with their evidence, and the overall [`Verdict`] with the
//!   reasons for it.
//! - [`html`]: the certificate as one HTML file (inline CSS, no script, no external resource;
//!   every string from the report is escaped), with the benchmark chart from [`svg`] when a
//!   benchmark report is given.
//!
//! Reading the inputs ([`load_report`], [`load_bench`], [`profile::Profile::load`]) fails with
//! a [`CertifyError`] naming the file and the problem in one line; the verdict itself never
//! fails.

pub mod html;
pub mod profile;
pub mod svg;
pub mod verdict;

use std::path::Path;

pub use self::profile::{DeviationPolicy, Profile};
pub use self::verdict::{Certificate, ReqStatus, RequirementVerdict, Verdict, evaluate};
use crate::bench::{self, BenchReport};
use crate::report::{self, Report};

/// Schema id of the machine-readable verdict (`cargo xtask certify --json`).
pub const CERTIFICATE_SCHEMA: &str = "pvm-conformance/certificate/v1";

/// Why certification could not even start: an input file is missing or invalid, or an output
/// cannot be written. Each names the file and the problem in one line.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    /// A file cannot be read.
    #[error("{what} {path}: cannot read it: {error}")]
    Read {
        /// Which input (`report`, `profile`, `bench report`).
        what: &'static str,
        /// The file.
        path: String,
        /// The error.
        error: std::io::Error,
    },
    /// A file is not what it should be (syntax, schema, an unknown name).
    #[error("{what} {path}: {reason}")]
    Invalid {
        /// Which input.
        what: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An output cannot be written.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The output.
        path: String,
        /// Why.
        reason: String,
    },
}

fn read(what: &'static str, path: &Path) -> Result<String, CertifyError> {
    std::fs::read_to_string(path).map_err(|error| CertifyError::Read {
        what,
        path: path.display().to_string(),
        error,
    })
}

/// A JSON error in one line with its position.
fn json_reason(e: &serde_json::Error) -> String {
    format!("line {}, column {}: {e}", e.line(), e.column())
        .replace(&format!(" at line {} column {}", e.line(), e.column()), "")
}

/// Parses the text of a JSON conformance report; `source` names it in errors. A report of
/// another schema that still has the v2 shape parses (the verdict then fails on the schema);
/// one that does not is an error naming both schemas.
pub fn parse_report(text: &str, source: &str) -> Result<Report, CertifyError> {
    let invalid = |reason: String| CertifyError::Invalid {
        what: "report",
        path: source.into(),
        reason,
    };
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| invalid(format!("not JSON: {}", json_reason(&e))))?;
    let Some(schema) = value.get("schema").and_then(serde_json::Value::as_str) else {
        return Err(invalid(format!(
            "not a pvm-conformance report (no \"schema\" field; expected {:?})",
            report::SCHEMA
        )));
    };
    let schema = schema.to_string();
    serde_json::from_value::<Report>(value).map_err(|e| {
        if schema == report::SCHEMA {
            invalid(format!("not a valid {schema} report: {e}"))
        } else {
            invalid(format!(
                "schema {schema:?}, expected {:?} ({e})",
                report::SCHEMA
            ))
        }
    })
}

/// Reads a JSON conformance report (`cargo xtask conformance --report`).
pub fn load_report(path: &Path) -> Result<Report, CertifyError> {
    parse_report(&read("report", path)?, &path.display().to_string())
}

/// Reads a benchmark report (`cargo xtask bench`, schema `pvm-conformance/bench/v1`).
pub fn load_bench(path: &Path) -> Result<BenchReport, CertifyError> {
    let text = read("bench report", path)?;
    let invalid = |reason: String| CertifyError::Invalid {
        what: "bench report",
        path: path.display().to_string(),
        reason,
    };
    let r: BenchReport = serde_json::from_str(&text).map_err(|e| {
        invalid(format!(
            "not a pvm-conformance bench report: {}",
            json_reason(&e)
        ))
    })?;
    if r.schema != bench::SCHEMA {
        return Err(invalid(format!(
            "schema {:?}, expected {:?}",
            r.schema,
            bench::SCHEMA
        )));
    }
    Ok(r)
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Reports and catalogs for the certification tests.

    use crate::bench::{BenchReport, BenchRow, NativeRow, Stats};
    use crate::outcome::Outcome;
    use crate::report::{
        CaseResult, HostHealth, HostReport, Report, RunState, SCHEMA, Summary, fixtures::run_info,
    };
    use crate::requirements::Requirements;

    /// A catalog of four requirements: two MUSTs for every environment, a MUST for pv-local
    /// only and a SHOULD.
    pub fn catalog() -> Requirements {
        let req = |id: &str, level: &str, envs: &str| {
            format!(
                "[[requirement]]\nid = \"{id}\"\nlevel = \"{level}\"\nstatement = \"{id} holds\"\n\
                 source = \"SDM\"\nenvs = {envs}\n"
            )
        };
        let text = [
            req("M-1", "MUST", "\"all\""),
            req("M-2", "MUST", "\"all\""),
            req("M-PV", "MUST", "[\"pv-local\"]"),
            req("S-1", "SHOULD", "\"all\""),
        ]
        .concat();
        Requirements::parse(&text, "fixture catalog").expect("fixture catalog parses")
    }

    /// One instance `case~env` of `area` with `outcome`, naming `reqs`.
    pub fn inst(case: &str, env: &str, area: &str, outcome: Outcome, reqs: &[&str]) -> CaseResult {
        CaseResult {
            id: format!("{case}~{env}"),
            case: case.into(),
            area: area.into(),
            env: env.into(),
            outcome,
            duration_ms: 1.0,
            run_ms: 0.5,
            checks: 1,
            detail: match outcome {
                Outcome::Xfail => {
                    "known deviation: it differs [evidence: docs/x.md#1]; observed FAIL: x".into()
                }
                Outcome::Pass => String::new(),
                _ => format!("{case} went wrong <b>"),
            },
            requirements: reqs.iter().map(|r| r.to_string()).collect(),
            summary: format!("{case} summary"),
            kernel_log: Vec::new(),
        }
    }

    /// A complete, clean report of `cases`.
    pub fn report(cases: Vec<CaseResult>) -> Report {
        let mut run = run_info();
        run.image_sha256 = "ab".repeat(32);
        Report {
            schema: SCHEMA.into(),
            run,
            state: RunState::Complete,
            interrupted: false,
            expectations: "built-in expectations/local.toml".into(),
            summary: Summary::of(&cases, cases.len(), 10),
            cases,
            host_health: Some(HostHealth {
                status: "clean".into(),
                fresh_boot: Some(true),
                ..HostHealth::default()
            }),
        }
    }

    fn stats(median: f64, reps: &[f64]) -> Stats {
        Stats {
            median_ns: median,
            p99_ns: median * 2.0,
            cv: 0.1,
            samples: 10,
            rep_medians_ns: reps.to_vec(),
        }
    }

    /// A bench report: a pv-local benchmark with spread, one without samples, a native row.
    pub fn bench_report() -> BenchReport {
        BenchReport {
            schema: crate::bench::SCHEMA.into(),
            target: "local".into(),
            host: HostReport {
                kernel: "6.18".into(),
                kvm_backend: "kvm-pvm".into(),
                dialect: Some("local".into()),
                dialect_evidence: "MSR".into(),
                cpu: "cpu".into(),
                kvm: "usable".into(),
                cpuid_differs: Vec::new(),
            },
            tsc_khz: 2_000_000,
            repetitions: 3,
            benchmarks: vec![
                BenchRow {
                    name: "hypercall<x>".into(),
                    env: "pv-local".into(),
                    stats: stats(1500.0, &[1400.0, 1500.0, 1700.0]),
                    baseline: Some("getpid".into()),
                    ratio_to_native: Some(10.0),
                    note: String::new(),
                },
                BenchRow {
                    name: "empty".into(),
                    env: "hvm64".into(),
                    stats: Stats::default(),
                    baseline: None,
                    ratio_to_native: None,
                    note: "no samples".into(),
                },
            ],
            native: vec![NativeRow {
                name: "getpid".into(),
                stats: stats(150.0, &[]),
            }],
            runner_overhead: None,
            runner_overhead_by_env: Vec::new(),
            wall_ms: 1,
        }
    }

    /// Every requirement held in both environments.
    pub fn all_pass() -> Vec<CaseResult> {
        vec![
            inst("io.a", "hvm64", "io", Outcome::Pass, &["M-1", "S-1"]),
            inst("io.a", "pv-local", "io", Outcome::Pass, &["M-1", "S-1"]),
            inst("paging.b", "hvm64", "paging", Outcome::Pass, &["M-2"]),
            inst("paging.b", "pv-local", "paging", Outcome::Pass, &["M-2"]),
            inst("abi.c", "pv-local", "abi", Outcome::Pass, &["M-PV"]),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_parse_and_bad_ones_name_the_problem() {
        let r = fixtures::report(fixtures::all_pass());
        let text = serde_json::to_string(&r).expect("serializes");
        assert_eq!(parse_report(&text, "r.json").expect("parses"), r);
        let err = |t: &str| parse_report(t, "r.json").expect_err("refused").to_string();
        assert!(err("{").starts_with("report r.json: not JSON: line 1, column 1"));
        assert!(err("{\"a\": 1}").contains("no \"schema\" field"));
        let old = text.replace(report::SCHEMA, "pvm-conformance/report/v1");
        assert!(parse_report(&old, "r.json").is_ok(), "same shape parses");
        let v1 = "{\"schema\": \"pvm-conformance/report/v1\", \"cases\": []}";
        assert!(err(v1).contains("schema \"pvm-conformance/report/v1\", expected"));
        let broken = text.replace("\"cases\"", "\"kases\"");
        assert!(err(&broken).contains("not a valid pvm-conformance/report/v2 report"));
        for e in [err("{"), err(v1), err(&broken)] {
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }
}
