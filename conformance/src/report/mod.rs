//! Report formats, all made from the same [`CaseResult`]s and [`RunInfo`]:
//! - the JSON report (`pvm-conformance/report/v2`, [`Report`]), written atomically;
//! - the JSON-lines progress log ([`progress`]), one line per finished instance, flushed as it
//!   completes (a crash of the harness or the host loses nothing that already ran), which
//!   `--resume` reads back;
//! - TAP13 ([`tap`]) and JUnit XML ([`junit`]);
//! - the text summary line ([`summary_line`]);
//! - [`diff`]: the instances whose outcome differs between two reports.
//!
//! Every JSON report and progress line carries the run's identity ([`RunInfo`]: run id, start
//! time, target, host, guest image hash, selection fingerprint).

pub mod diff;
pub mod junit;
pub mod merge;
pub mod progress;
pub mod tap;

use std::path::Path;

use runner::detect::{HostInfo, KvmStatus};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::outcome::Outcome;
use crate::output::write_atomic;
pub use crate::result::CaseResult;

/// Schema id of the JSON report.
pub const SCHEMA: &str = "pvm-conformance/report/v2";

/// The suite's version, as reports record it.
pub const SUITE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The host part of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReport {
    /// Kernel release.
    pub kernel: String,
    /// KVM vendor module.
    pub kvm_backend: String,
    /// Dialect name, or null.
    pub dialect: Option<String>,
    /// How the dialect was decided.
    pub dialect_evidence: String,
    /// CPU model.
    pub cpu: String,
    /// Whether /dev/kvm was usable (and why not).
    pub kvm: String,
    /// Where the CPU's own CPUID differs from the VMM's (`runner::detect::CpuidDiff`, one
    /// line each): what the conditional expectations of a host that shows guests the CPU's
    /// CPUID were decided by.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpuid_differs: Vec<String>,
}

impl HostReport {
    /// From detection results.
    pub fn new(h: &HostInfo) -> Self {
        Self {
            kernel: h.kernel.clone(),
            kvm_backend: h.kvm_backend.clone(),
            dialect: h.dialect.map(|d| d.name().to_string()),
            dialect_evidence: h.dialect_evidence.clone(),
            cpu: h.cpu.clone(),
            kvm: match &h.kvm {
                KvmStatus::Usable => "usable".into(),
                KvmStatus::Unusable(why) => format!("unusable: {why}"),
            },
            cpuid_differs: h.cpuid_differs.iter().map(|d| d.to_string()).collect(),
        }
    }

    /// Back to detection results (a remote worker's `pvmc-worker host` answer); `Err` names a
    /// dialect this build does not know.
    pub fn to_host_info(&self) -> Result<HostInfo, String> {
        let dialect = match &self.dialect {
            None => None,
            Some(name) => Some(
                abi::env::Dialect::from_name(name)
                    .ok_or_else(|| format!("unknown PVM dialect {name:?}"))?,
            ),
        };
        Ok(HostInfo {
            kernel: self.kernel.clone(),
            cpu: self.cpu.clone(),
            kvm_backend: self.kvm_backend.clone(),
            kvm: match self.kvm.strip_prefix("unusable: ") {
                Some(why) => KvmStatus::Unusable(why.to_string()),
                None => KvmStatus::Usable,
            },
            dialect,
            dialect_evidence: self.dialect_evidence.clone(),
            cpuid_differs: self
                .cpuid_differs
                .iter()
                .map(|d| {
                    runner::detect::CpuidDiff::parse(d)
                        .ok_or_else(|| format!("unreadable CPUID difference {d:?}"))
                })
                .collect::<Result<_, _>>()?,
        })
    }
}

/// The identity of one run, in every report and progress line. A resumed run keeps the
/// identity of the run it continues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Unique id (`run-<start time>-<pid>`).
    pub run_id: String,
    /// Start time, RFC 3339 (UTC).
    pub started: String,
    /// The target's name (`local`, ...).
    pub target: String,
    /// The host the target ran on.
    pub host: HostReport,
    /// SHA-256 of the guest image.
    pub image_sha256: String,
    /// Version of the suite that ran (`CARGO_PKG_VERSION` of the conformance crate).
    #[serde(default)]
    pub suite_version: String,
    /// Fingerprint of the selected instance ids and the expectations in force (a resume must
    /// match it).
    pub selection: String,
    /// `K/N` when the run is one shard of a selection (`--shard`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
}

/// When and as what a run started: its id (`run-<start time>-<pid>`) and start time (RFC
/// 3339, UTC). Made first, so that the output locks can name the run before it is selected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunStart {
    /// The run id.
    pub run_id: String,
    /// The start time.
    pub started: String,
}

impl RunStart {
    /// Now, in this process.
    pub fn now() -> Self {
        let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let compact: String = started.chars().filter(|c| *c != '-' && *c != ':').collect();
        Self {
            run_id: format!("run-{compact}-{}", std::process::id()),
            started,
        }
    }
}

impl RunInfo {
    /// A new run's identity: `start`, `target` on `host`, the image's hash and the fingerprint
    /// of `instances` under `expectations`.
    pub fn new(
        start: RunStart,
        target: &str,
        host: &HostInfo,
        image_sha256: &str,
        instances: &[crate::catalog::Instance],
        expectations: &crate::expect::Expectations,
    ) -> Self {
        Self {
            run_id: start.run_id,
            started: start.started,
            target: target.into(),
            host: HostReport::new(host),
            image_sha256: image_sha256.into(),
            suite_version: SUITE_VERSION.into(),
            selection: selection_fingerprint(instances, expectations),
            shard: None,
        }
    }
}

/// `sha256:<hex>` over the sorted instance ids and the expectations' fingerprint.
pub fn selection_fingerprint(
    instances: &[crate::catalog::Instance],
    expectations: &crate::expect::Expectations,
) -> String {
    use sha2::{Digest, Sha256};
    let mut ids: Vec<String> = instances.iter().map(|i| i.id()).collect();
    ids.sort();
    let mut h = Sha256::new();
    for id in &ids {
        h.update(id.as_bytes());
        h.update(b"\n");
    }
    h.update(b"expectations:");
    h.update(expectations.fingerprint().as_bytes());
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Where a run stands, in the JSON report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Started, not finished: a report left like this means the harness died.
    Running,
    /// Stopped by SIGINT/SIGTERM: `cases` holds what finished; `--resume` completes it.
    Interrupted,
    /// Every selected instance has a result.
    Complete,
}

/// Counts per outcome and the wall time.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
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
    /// Instances with a result.
    pub total: usize,
    /// Instances selected (more than `total` when the run was interrupted).
    pub selected: usize,
    /// Wall time of the run (all its sessions, when resumed).
    pub wall_ms: u64,
    /// Median per-instance overhead in ms: an instance's critical-path time outside its VM
    /// run (`duration_ms - run_ms`), over the instances that ran a VM.
    #[serde(default)]
    pub overhead_median_ms: Option<f64>,
}

impl Summary {
    /// Counts `results` of `selected` instances.
    pub fn of(results: &[CaseResult], selected: usize, wall_ms: u64) -> Self {
        let mut s = Summary {
            total: results.len(),
            selected,
            wall_ms,
            ..Summary::default()
        };
        for r in results {
            *s.count_mut(r.outcome) += 1;
        }
        let mut overheads: Vec<f64> = results
            .iter()
            .filter(|r| r.run_ms > 0.0)
            .map(|r| (r.duration_ms - r.run_ms).max(0.0))
            .collect();
        overheads.sort_by(f64::total_cmp);
        s.overhead_median_ms = overheads.get(overheads.len() / 2).copied();
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
        let mut copy = self.clone();
        *copy.count_mut(o)
    }

    /// Whether anything failed, errored or crashed.
    pub fn is_bad(&self) -> bool {
        self.fail + self.error + self.crash > 0
    }

    /// Whether no instance got past SKIP (nothing could run).
    pub fn nothing_ran(&self) -> bool {
        self.total == self.skip
    }
}

/// The JSON report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA`].
    pub schema: String,
    /// The run's identity.
    pub run: RunInfo,
    /// Where it stands.
    pub state: RunState,
    /// Whether it was interrupted (SIGINT/SIGTERM) before every instance had a result.
    pub interrupted: bool,
    /// Where the known deviations came from.
    pub expectations: String,
    /// Every instance with a result, in table order, each once.
    pub cases: Vec<CaseResult>,
    /// Counts.
    pub summary: Summary,
    /// The host's kernel log around the run, when it was watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_health: Option<HostHealth>,
}

/// How the host kernel fared during a run: the kernel-log lines of a bad class (panic, BUG,
/// Oops, WARNING, lockdep, RCU stall, KASAN ...) that appeared, the ones an allowlist entry
/// excused (with its reason), and whether a fresh VM still booted at the end.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostHealth {
    /// `clean`, `bad` (a bad line appeared or the fresh VM did not boot) or `unwatched: <why>`
    /// (the kernel log could not be read).
    pub status: String,
    /// Bad-class lines, each with the instance it appeared during (or `-` between instances).
    pub bad_lines: Vec<KernelLine>,
    /// Lines an allowlist entry excused.
    pub allowed_lines: Vec<KernelLine>,
    /// Whether a fresh VM booted and reported after the last instance (`None`: not checked).
    pub fresh_boot: Option<bool>,
    /// What the fresh-boot check saw, when it failed.
    #[serde(default)]
    pub fresh_boot_detail: String,
}

/// One kernel-log line attributed to an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelLine {
    /// The instance it appeared during (`-` for none).
    pub instance: String,
    /// Its class (`panic`, `bug`, `oops`, `warning`, `lockdep`, `rcu-stall`, `kasan`, ...).
    pub class: String,
    /// The line as the kernel logged it.
    pub text: String,
    /// For allowed lines: the allowlist entry's reason.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl Report {
    /// Writes the report as pretty JSON, atomically (temporary file + rename).
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        let mut text = serde_json::to_string_pretty(self).map_err(|e| Error::Serialize {
            what: "the JSON report",
            reason: e.to_string(),
        })?;
        text.push('\n');
        write_atomic(path, text.as_bytes())
    }
}

/// The closing summary line: counts per outcome and the wall time.
pub fn summary_line(s: &Summary) -> String {
    let counts = Outcome::ALL
        .iter()
        .map(|&o| format!("{} {}", s.count(o), o.name()))
        .collect::<Vec<_>>()
        .join(", ");
    let of = if s.selected > s.total {
        format!(" (of {} selected)", s.selected)
    } else {
        String::new()
    };
    let overhead = s
        .overhead_median_ms
        .map(|ms| format!(" (per-instance overhead {ms:.3} ms median)"))
        .unwrap_or_default();
    format!(
        "{} instances{of}: {counts}; wall time {:.2} s{overhead}",
        s.total,
        s.wall_ms as f64 / 1e3
    )
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub fn result(id: &str, env: &str, outcome: Outcome, detail: &str) -> CaseResult {
        CaseResult {
            id: id.into(),
            case: id.split('~').next().unwrap_or(id).into(),
            area: "io".into(),
            env: env.into(),
            outcome,
            duration_ms: 1.5,
            run_ms: 1.0,
            checks: 2,
            detail: detail.into(),
            requirements: vec!["R-1".into()],
            summary: "s".into(),
            kernel_log: Vec::new(),
        }
    }

    pub fn run_info() -> RunInfo {
        RunInfo {
            run_id: "run-20261201T000000Z-1".into(),
            started: "2026-12-01T00:00:00Z".into(),
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
            image_sha256: "00".into(),
            suite_version: SUITE_VERSION.into(),
            selection: "sha256:11".into(),
            shard: None,
        }
    }

    pub fn all_outcomes() -> Vec<CaseResult> {
        Outcome::ALL
            .iter()
            .enumerate()
            .map(|(i, &o)| {
                let env = if i % 2 == 0 { "hvm64" } else { "pv-local" };
                result(&format!("io.c{i}~{env}"), env, o, "detail <&> \"x\" #1")
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn summary_counts_every_outcome() {
        let rs: Vec<_> = Outcome::ALL
            .iter()
            .map(|&o| result("x~hvm64", "hvm64", o, ""))
            .collect();
        let s = Summary::of(&rs, 7, 1500);
        for o in Outcome::ALL {
            assert_eq!(s.count(o), 1);
        }
        assert!(s.is_bad() && !s.nothing_ran());
        assert_eq!(
            summary_line(&s),
            "6 instances (of 7 selected): 1 pass, 1 skip, 1 xfail, 1 error, 1 fail, 1 crash; \
             wall time 1.50 s (per-instance overhead 0.500 ms median)"
        );
        // Without VM runs (all SKIP, say) there is no overhead to speak of.
        let skipped: Vec<_> = rs
            .iter()
            .cloned()
            .map(|mut r| {
                r.run_ms = 0.0;
                r
            })
            .collect();
        assert_eq!(Summary::of(&skipped, 6, 10).overhead_median_ms, None);
    }

    #[test]
    fn json_report_snapshot() {
        let cases = all_outcomes();
        let r = Report {
            schema: SCHEMA.into(),
            run: run_info(),
            state: RunState::Interrupted,
            interrupted: true,
            expectations: "built-in".into(),
            summary: Summary::of(&cases, 8, 10),
            cases,
            host_health: None,
        };
        insta::assert_json_snapshot!("json_report", r);
    }
}
