//! The verdict: a pure function from a report, the requirements catalog and a profile to a
//! [`Certificate`].
//!
//! *Scope.* A requirement is in scope when it applies to at least one of the profile's
//! environments and at least one case of a profile area names it; a requirement that no case
//! of the report names is in scope too, as UNCOVERED (nothing shows that it holds). It is
//! *required* when its level is one of the profile's levels, informative otherwise. Its
//! instances are the report's instances that name it, in a profile environment the requirement
//! applies to and in a profile area.
//!
//! *Status* of an in-scope requirement: FAILED if any of its instances is FAIL, CRASH or
//! ERROR; else DEVIATION if any is XFAIL; else NOT-RUN if every one is SKIP (or there is none);
//! else HELD. UNCOVERED when no case names it.
//!
//! *Verdict.* NOT CERTIFIED when there is any reason: a required requirement FAILED, NOT-RUN or
//! UNCOVERED, or with a DEVIATION the profile rejects (or an XFAIL without evidence under
//! `accept-documented`); the report's schema is not v2; the run is not complete (if required);
//! host health is not clean (if required); the guest image hash is missing; the host's dialect
//! is not the profile's; fewer in-scope instances ran than `min_instances`. Otherwise CERTIFIED
//! WITH DEVIATIONS when a required requirement has an accepted deviation, else CERTIFIED.
//! Informative requirements that failed or deviate, and anything odd about the report that
//! does not decide the verdict, are warnings.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::CERTIFICATE_SCHEMA;
use super::profile::{DeviationPolicy, Profile};
use crate::outcome::Outcome;
use crate::report::{
    CaseResult, HostHealth, Report, RunInfo, RunState, SCHEMA, SUITE_VERSION, Summary,
};
use crate::requirements::{Requirement, Requirements};

/// The overall verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// Every required requirement held and the report shows what the profile asks for.
    #[serde(rename = "CERTIFIED")]
    Certified,
    /// As [`Verdict::Certified`], with documented deviations the profile accepts.
    #[serde(rename = "CERTIFIED WITH DEVIATIONS")]
    CertifiedWithDeviations,
    /// At least one reason (listed in the certificate).
    #[serde(rename = "NOT CERTIFIED")]
    NotCertified,
}

impl Verdict {
    /// How the certificate and the command line print it.
    pub const fn label(self) -> &'static str {
        match self {
            Verdict::Certified => "CERTIFIED",
            Verdict::CertifiedWithDeviations => "CERTIFIED WITH DEVIATIONS",
            Verdict::NotCertified => "NOT CERTIFIED",
        }
    }

    /// Whether the host is certified (with or without deviations).
    pub const fn certified(self) -> bool {
        !matches!(self, Verdict::NotCertified)
    }
}

/// The status of one in-scope requirement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ReqStatus {
    /// At least one instance passed, none failed or deviated (the rest SKIPped).
    #[serde(rename = "HELD")]
    Held,
    /// An instance is XFAIL (a documented deviation), none failed.
    #[serde(rename = "DEVIATION")]
    Deviation,
    /// Every instance SKIPped, or none is in the profile's environments.
    #[serde(rename = "NOT-RUN")]
    NotRun,
    /// No case of the report names it.
    #[serde(rename = "UNCOVERED")]
    Uncovered,
    /// An instance is FAIL, CRASH or ERROR.
    #[serde(rename = "FAILED")]
    Failed,
}

impl ReqStatus {
    /// Every status, in table order.
    pub const ALL: [ReqStatus; 5] = [
        ReqStatus::Held,
        ReqStatus::Deviation,
        ReqStatus::NotRun,
        ReqStatus::Uncovered,
        ReqStatus::Failed,
    ];

    /// How the certificate prints it.
    pub const fn label(self) -> &'static str {
        match self {
            ReqStatus::Held => "HELD",
            ReqStatus::Deviation => "DEVIATION",
            ReqStatus::NotRun => "NOT-RUN",
            ReqStatus::Uncovered => "UNCOVERED",
            ReqStatus::Failed => "FAILED",
        }
    }
}

/// One instance of a requirement and its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstanceOutcome {
    /// `<case>~<env>`.
    pub id: String,
    /// Its outcome.
    pub outcome: Outcome,
}

/// One in-scope requirement and what the report shows about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RequirementVerdict {
    /// The requirement (id, level, statement, source, environments).
    #[serde(flatten)]
    pub requirement: Requirement,
    /// Whether its level is one the profile requires (else it is informative).
    pub required: bool,
    /// What the report shows.
    pub status: ReqStatus,
    /// The profile areas of the cases that name it.
    pub areas: Vec<String>,
    /// Its instances in scope, in report order.
    pub instances: Vec<InstanceOutcome>,
}

/// One row of the per-area table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AreaRow {
    /// Area name.
    pub area: String,
    /// In-scope instances of the area by outcome.
    pub outcomes: BTreeMap<Outcome, usize>,
    /// In-scope requirements named by the area's cases, by status.
    pub requirements: BTreeMap<ReqStatus, usize>,
}

impl AreaRow {
    /// Instances with `o`.
    pub fn outcome(&self, o: Outcome) -> usize {
        self.outcomes.get(&o).copied().unwrap_or(0)
    }

    /// Requirements with `s`.
    pub fn status(&self, s: ReqStatus) -> usize {
        self.requirements.get(&s).copied().unwrap_or(0)
    }
}

/// The result of certifying one report against one profile.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Certificate {
    /// [`CERTIFICATE_SCHEMA`].
    pub schema: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Why it is NOT CERTIFIED (empty otherwise); each names the requirement or instance.
    pub reasons: Vec<String>,
    /// The documented deviations of required requirements that the profile accepted, each
    /// naming the requirement and its XFAIL instances (under `accept-documented` only).
    pub accepted_deviations: Vec<String>,
    /// What is worth knowing but does not decide the verdict.
    pub warnings: Vec<String>,
    /// The profile.
    pub profile: Profile,
    /// The report file certified.
    pub report_file: String,
    /// The report's schema.
    pub report_schema: String,
    /// The report's state.
    pub report_state: RunState,
    /// The report's run identity (host, image hash, suite version, run id, start time).
    pub run: RunInfo,
    /// Where the run's known deviations came from.
    pub expectations: String,
    /// The report's own counts (every instance, in or out of scope).
    pub summary: Summary,
    /// Instances in the profile's environments and areas.
    pub in_scope_instances: usize,
    /// Of those, the ones that ran (outcome other than SKIP).
    pub ran_instances: usize,
    /// Every in-scope requirement, by id.
    pub requirements: Vec<RequirementVerdict>,
    /// Requirements of the catalog outside the profile's environments or areas.
    pub out_of_scope: usize,
    /// Per-area table, in the profile's area order.
    pub areas: Vec<AreaRow>,
    /// In-scope instances that failed, crashed, errored or deviated, most severe first, with
    /// their evidence (detail and kernel-log lines).
    pub findings: Vec<CaseResult>,
    /// The report's host health, if it has one.
    pub host_health: Option<HostHealth>,
}

impl Certificate {
    /// In-scope requirements with `status` (required ones only when `required_only`).
    pub fn count(&self, status: ReqStatus, required_only: bool) -> usize {
        self.requirements
            .iter()
            .filter(|r| r.status == status && (r.required || !required_only))
            .count()
    }
}

/// Whether an outcome is evidence against the host.
const fn is_bad(o: Outcome) -> bool {
    matches!(o, Outcome::Fail | Outcome::Crash | Outcome::Error)
}

/// The evidence reference of an XFAIL's detail (`known deviation: ... [evidence: X]`), if it
/// names one.
pub fn deviation_evidence(detail: &str) -> Option<&str> {
    let start = detail.find("[evidence: ")? + "[evidence: ".len();
    let rest = &detail[start..];
    let e = rest[..rest.find(']')?].trim();
    (!e.is_empty()).then_some(e)
}

/// The first line of `s`, at most `max` characters.
fn short(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("").trim();
    if line.chars().count() > max {
        let cut: String = line.chars().take(max).collect();
        format!("{cut}...")
    } else {
        line.to_string()
    }
}

/// `a FAIL, b CRASH` for at most six instances, then `and N more`.
fn list(instances: &[&InstanceOutcome]) -> String {
    const SHOWN: usize = 6;
    let mut s = instances
        .iter()
        .take(SHOWN)
        .map(|i| format!("{} {}", i.id, i.outcome.label()))
        .collect::<Vec<_>>()
        .join(", ");
    if instances.len() > SHOWN {
        s.push_str(&format!(" and {} more", instances.len() - SHOWN));
    }
    s
}

fn state_name(s: RunState) -> &'static str {
    match s {
        RunState::Running => "running",
        RunState::Interrupted => "interrupted",
        RunState::Complete => "complete",
    }
}

/// What is wrong with the host's health, if anything.
fn health_problem(h: Option<&HostHealth>) -> Option<String> {
    let Some(h) = h else {
        return Some(
            "the report has no host-health section (the host kernel log was not watched)".into(),
        );
    };
    if h.status == "clean" && h.fresh_boot != Some(false) {
        return None;
    }
    let mut parts = vec![format!("host health is {:?}", short(&h.status, 120))];
    if let Some(first) = h.bad_lines.first() {
        parts.push(format!(
            "{} bad kernel-log line(s), first during {}: {}: {}",
            h.bad_lines.len(),
            first.instance,
            first.class,
            short(&first.text, 120)
        ));
    }
    if h.fresh_boot == Some(false) {
        parts.push(format!(
            "a fresh VM did not boot after the last instance ({})",
            short(&h.fresh_boot_detail, 120)
        ));
    }
    Some(parts.join("; "))
}

/// Checks of the report itself: (reasons, warnings).
fn report_checks(profile: &Profile, report: &Report) -> (Vec<String>, Vec<String>) {
    let (mut reasons, mut warnings) = (Vec::new(), Vec::new());
    if report.schema != SCHEMA {
        reasons.push(format!(
            "the report's schema is {:?}, expected {SCHEMA:?}",
            report.schema
        ));
    }
    if report.state != RunState::Complete {
        let why = if report.state == RunState::Running {
            "the harness died or is still running"
        } else {
            "the run was interrupted; --resume completes it"
        };
        let msg = format!(
            "the report's state is {} ({why}; {} of {} selected instances have a result)",
            state_name(report.state),
            report.summary.total,
            report.summary.selected
        );
        if profile.require_complete {
            reasons.push(format!("{msg}; the profile requires a complete run"));
        } else {
            warnings.push(msg);
        }
    }
    let hash = report.run.image_sha256.trim();
    if hash.is_empty() {
        reasons.push("the report has no guest image hash (run.image_sha256 is empty)".into());
    } else if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
        reasons.push(format!(
            "the guest image hash {:?} is not a SHA-256 (64 hex digits)",
            short(hash, 80)
        ));
    }
    if let Some(want) = &profile.dialect {
        match &report.run.host.dialect {
            Some(d) if d == want => {}
            Some(d) => reasons.push(format!(
                "the host speaks the {d} dialect; the profile certifies {want}"
            )),
            None => reasons.push(format!(
                "the host speaks no PVM dialect ({}); the profile certifies {want}",
                short(&report.run.host.dialect_evidence, 100)
            )),
        }
    }
    if let Some(problem) = health_problem(report.host_health.as_ref()) {
        if profile.require_host_health {
            reasons.push(format!("{problem}; the profile requires clean host health"));
        } else {
            warnings.push(problem);
        }
    }
    if report.run.suite_version.is_empty() {
        warnings.push("the report does not say which suite version made it".into());
    } else if report.run.suite_version != SUITE_VERSION {
        warnings.push(format!(
            "the report was made by suite version {}; this is {SUITE_VERSION}",
            report.run.suite_version
        ));
    }
    (reasons, warnings)
}

/// The verdict on one requirement: its row, and a reason or a warning when it does not hold.
fn requirement_verdict(
    profile: &Profile,
    report: &Report,
    r: &Requirement,
) -> Option<(RequirementVerdict, Option<String>)> {
    if !r.envs.iter().any(|e| profile.has_env(e.name())) {
        return None;
    }
    let naming: Vec<&CaseResult> = report
        .cases
        .iter()
        .filter(|c| c.requirements.iter().any(|x| x == &r.id))
        .collect();
    let areas: BTreeSet<&str> = naming.iter().map(|c| c.area.as_str()).collect();
    if !naming.is_empty() && !areas.iter().any(|a| profile.has_area(a)) {
        return None;
    }
    let instances: Vec<InstanceOutcome> = naming
        .iter()
        .filter(|c| profile.has_env(&c.env) && profile.has_area(&c.area))
        .filter(|c| r.envs.iter().any(|e| e.name() == c.env))
        .map(|c| InstanceOutcome {
            id: c.id.clone(),
            outcome: c.outcome,
        })
        .collect();
    let with = |f: &dyn Fn(Outcome) -> bool| -> Vec<&InstanceOutcome> {
        instances.iter().filter(|i| f(i.outcome)).collect()
    };
    let (bad, xfail) = (with(&is_bad), with(&|o| o == Outcome::Xfail));
    let required = profile.requires(r.level);
    let status = if naming.is_empty() {
        ReqStatus::Uncovered
    } else if !bad.is_empty() {
        ReqStatus::Failed
    } else if !xfail.is_empty() {
        ReqStatus::Deviation
    } else if instances.iter().all(|i| i.outcome == Outcome::Skip) {
        ReqStatus::NotRun
    } else {
        ReqStatus::Held
    };
    let head = format!("{} ({}) {}", r.id, r.level.name(), status.label());
    let problem = match status {
        ReqStatus::Held => None,
        ReqStatus::Failed => Some(format!("{head}: {}", list(&bad))),
        ReqStatus::Deviation => {
            let undocumented: Vec<&&InstanceOutcome> = xfail
                .iter()
                .filter(|i| {
                    report
                        .cases
                        .iter()
                        .find(|c| c.id == i.id)
                        .is_none_or(|c| deviation_evidence(&c.detail).is_none())
                })
                .collect();
            match profile.deviations {
                DeviationPolicy::Reject if !required => {
                    Some(format!("{head}: {} (a documented deviation)", list(&xfail)))
                }
                DeviationPolicy::Reject => Some(format!(
                    "{head}: {} (a documented deviation, which the profile rejects)",
                    list(&xfail)
                )),
                DeviationPolicy::AcceptDocumented if !undocumented.is_empty() => Some(format!(
                    "{head}: {} names no evidence, so it is not a documented deviation",
                    list(&undocumented.into_iter().copied().collect::<Vec<_>>())
                )),
                DeviationPolicy::AcceptDocumented => None,
            }
        }
        ReqStatus::NotRun => Some(
            match naming
                .iter()
                .find(|c| instances.iter().any(|i| i.id == c.id) && c.outcome == Outcome::Skip)
            {
                Some(c) => format!(
                    "{head}: every instance SKIPped ({} of them; {}: {})",
                    instances.len(),
                    c.id,
                    short(&c.detail, 100)
                ),
                None => format!(
                    "{head}: no instance in the profile's environments ({}) checks it",
                    profile
                        .envs
                        .iter()
                        .map(|e| e.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
        ),
        ReqStatus::Uncovered => Some(format!("{head}: no case in the report checks it")),
    };
    let row = RequirementVerdict {
        requirement: r.clone(),
        required,
        status,
        areas: areas
            .into_iter()
            .filter(|a| profile.has_area(a))
            .map(String::from)
            .collect(),
        instances,
    };
    Some((row, problem))
}

/// Certifies `report` (read from `report_file`) against `profile` with the catalog `reqs`.
pub fn evaluate(
    profile: &Profile,
    report: &Report,
    reqs: &Requirements,
    report_file: &str,
) -> Certificate {
    let (mut reasons, mut warnings) = report_checks(profile, report);
    let scoped: Vec<&CaseResult> = report
        .cases
        .iter()
        .filter(|c| profile.has_env(&c.env) && profile.has_area(&c.area))
        .collect();
    let ran = scoped.iter().filter(|c| c.outcome != Outcome::Skip).count();
    if ran < profile.min_instances {
        reasons.push(format!(
            "only {ran} of the {} in-scope instances ran (not SKIP); the profile needs at least {}",
            scoped.len(),
            profile.min_instances
        ));
    }
    let mut unknown = BTreeSet::new();
    for c in &scoped {
        for r in c.requirements.iter().filter(|r| reqs.get(r).is_none()) {
            if unknown.insert(r.clone()) {
                warnings.push(format!(
                    "instance {} names requirement {r}, which the catalog lacks",
                    c.id
                ));
            }
        }
        if c.requirements.is_empty() && (is_bad(c.outcome) || c.outcome == Outcome::Xfail) {
            warnings.push(format!(
                "instance {} is {} and names no requirement",
                c.id,
                c.outcome.label()
            ));
        }
    }
    let mut requirements = Vec::new();
    let mut accepted = Vec::new();
    let mut out_of_scope = 0;
    for r in reqs.iter() {
        match requirement_verdict(profile, report, r) {
            None => out_of_scope += 1,
            Some((row, problem)) => {
                // Informative requirements warn only about what the report shows against
                // them (not that they were not run or not covered).
                match (problem, row.required, row.status) {
                    (Some(p), true, _) => reasons.push(p),
                    (Some(p), false, ReqStatus::Failed | ReqStatus::Deviation) => warnings.push(p),
                    (None, true, ReqStatus::Deviation) => {
                        let xfails: Vec<&InstanceOutcome> = row
                            .instances
                            .iter()
                            .filter(|i| i.outcome == Outcome::Xfail)
                            .collect();
                        accepted.push(format!(
                            "{} ({}): {}",
                            row.requirement.id,
                            row.requirement.level.name(),
                            list(&xfails)
                        ));
                    }
                    _ => {}
                }
                requirements.push(row);
            }
        }
    }
    let verdict = if !reasons.is_empty() {
        Verdict::NotCertified
    } else if requirements
        .iter()
        .any(|r| r.required && r.status == ReqStatus::Deviation)
    {
        Verdict::CertifiedWithDeviations
    } else {
        Verdict::Certified
    };
    let areas = profile
        .areas
        .iter()
        .map(|a| {
            let mut outcomes = BTreeMap::new();
            for c in scoped.iter().filter(|c| c.area == a.name()) {
                *outcomes.entry(c.outcome).or_insert(0) += 1;
            }
            let mut by_status = BTreeMap::new();
            for r in requirements
                .iter()
                .filter(|r| r.areas.iter().any(|x| x == a.name()))
            {
                *by_status.entry(r.status).or_insert(0) += 1;
            }
            AreaRow {
                area: a.name().into(),
                outcomes,
                requirements: by_status,
            }
        })
        .collect();
    let mut findings: Vec<CaseResult> = scoped
        .iter()
        .filter(|c| is_bad(c.outcome) || c.outcome == Outcome::Xfail)
        .map(|c| (*c).clone())
        .collect();
    findings.sort_by(|a, b| b.outcome.cmp(&a.outcome).then_with(|| a.id.cmp(&b.id)));
    Certificate {
        schema: CERTIFICATE_SCHEMA.into(),
        verdict,
        reasons,
        accepted_deviations: accepted,
        warnings,
        profile: profile.clone(),
        report_file: report_file.into(),
        report_schema: report.schema.clone(),
        report_state: report.state,
        run: report.run.clone(),
        expectations: report.expectations.clone(),
        summary: report.summary.clone(),
        in_scope_instances: scoped.len(),
        ran_instances: ran,
        requirements,
        out_of_scope,
        areas,
        findings,
        host_health: report.host_health.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{all_pass, catalog, inst, report};
    use super::*;
    use crate::report::KernelLine;

    /// A profile for hvm64 and pv-local, MUST, `reject`, at least one instance; `extra`
    /// lines add fields or replace those defaults.
    fn profile(extra: &str) -> Profile {
        let mut text =
            format!("name = \"t\"\nenvs = [\"hvm64\", \"pv-local\"]\nlevels = [\"MUST\"]\n{extra}");
        for (key, line) in [
            ("deviations", "deviations = \"reject\"\n"),
            ("min_instances", "min_instances = 1\n"),
        ] {
            if !extra.contains(key) {
                text.push_str(line);
            }
        }
        Profile::parse(&text, "t.toml").expect("test profile")
    }

    fn certify(p: &Profile, r: &Report) -> Certificate {
        evaluate(p, r, &catalog(), "r.json")
    }

    fn status(c: &Certificate, id: &str) -> ReqStatus {
        c.requirements
            .iter()
            .find(|r| r.requirement.id == id)
            .map(|r| r.status)
            .unwrap_or_else(|| panic!("{id} is not in scope: {:?}", c.requirements))
    }

    /// `all_pass` with the outcome of instance `id` replaced.
    fn with(id: &str, o: Outcome) -> Report {
        let mut cases = all_pass();
        for c in cases.iter_mut().filter(|c| c.id == id) {
            *c = inst(
                &c.case,
                &c.env,
                &c.area,
                o,
                &c.requirements
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
            );
        }
        report(cases)
    }

    #[test]
    fn a_clean_report_certifies() {
        let c = certify(&profile(""), &report(all_pass()));
        assert_eq!(c.verdict, Verdict::Certified, "{:?}", c.reasons);
        assert!(
            c.reasons.is_empty() && c.warnings.is_empty(),
            "{:?}",
            c.warnings
        );
        for id in ["M-1", "M-2", "M-PV", "S-1"] {
            assert_eq!(status(&c, id), ReqStatus::Held);
        }
        assert!(
            !c.requirements
                .iter()
                .find(|r| r.requirement.id == "S-1")
                .expect("S-1")
                .required
        );
        assert_eq!(
            (c.in_scope_instances, c.ran_instances, c.out_of_scope),
            (5, 5, 0)
        );
        let io = c.areas.iter().find(|a| a.area == "io").expect("io row");
        assert_eq!(
            (io.outcome(Outcome::Pass), io.status(ReqStatus::Held)),
            (2, 2)
        );
        assert!(c.findings.is_empty());
    }

    #[test]
    fn a_failed_must_does_not_certify_and_names_requirement_and_instance() {
        for o in [Outcome::Fail, Outcome::Crash, Outcome::Error] {
            let c = certify(&profile(""), &with("paging.b~pv-local", o));
            assert_eq!(c.verdict, Verdict::NotCertified);
            assert_eq!(status(&c, "M-2"), ReqStatus::Failed);
            assert_eq!(
                c.reasons,
                vec![format!(
                    "M-2 (MUST) FAILED: paging.b~pv-local {}",
                    o.label()
                )]
            );
            assert_eq!(c.findings.len(), 1);
            assert_eq!(c.findings[0].id, "paging.b~pv-local");
        }
    }

    #[test]
    fn deviations_follow_the_profile_policy() {
        let r = with("io.a~hvm64", Outcome::Xfail);
        let rejected = certify(&profile(""), &r);
        assert_eq!(rejected.verdict, Verdict::NotCertified);
        assert_eq!(status(&rejected, "M-1"), ReqStatus::Deviation);
        assert!(rejected.reasons[0].starts_with("M-1 (MUST) DEVIATION: io.a~hvm64 XFAIL"));
        assert!(rejected.reasons[0].contains("rejects"));
        // S-1 (SHOULD) deviates too: a warning, not a reason.
        assert_eq!(rejected.reasons.len(), 1, "{:?}", rejected.reasons);
        assert!(
            rejected
                .warnings
                .iter()
                .any(|w| w.starts_with("S-1 (SHOULD) DEVIATION"))
        );

        let accept = profile("deviations = \"accept-documented\"\n");
        let c = certify(&accept, &r);
        assert_eq!(
            c.verdict,
            Verdict::CertifiedWithDeviations,
            "{:?}",
            c.reasons
        );
        assert_eq!(c.findings.len(), 1);
        assert_eq!(
            c.accepted_deviations,
            vec!["M-1 (MUST): io.a~hvm64 XFAIL".to_string()]
        );
        assert!(rejected.accepted_deviations.is_empty());

        let mut undocumented = r.clone();
        for c in undocumented
            .cases
            .iter_mut()
            .filter(|c| c.id == "io.a~hvm64")
        {
            c.detail = "known deviation: it differs [evidence: ]; observed FAIL: x".into();
        }
        let c = certify(&accept, &undocumented);
        assert_eq!(c.verdict, Verdict::NotCertified);
        assert!(
            c.reasons[0].contains("names no evidence"),
            "{:?}",
            c.reasons
        );
    }

    #[test]
    fn a_failed_should_is_a_warning() {
        let mut cases = all_pass();
        cases.push(inst("io.s", "hvm64", "io", Outcome::Fail, &["S-1"]));
        let c = certify(&profile(""), &report(cases));
        assert_eq!(c.verdict, Verdict::Certified);
        assert_eq!(status(&c, "S-1"), ReqStatus::Failed);
        assert_eq!(
            c.warnings,
            vec!["S-1 (SHOULD) FAILED: io.s~hvm64 FAIL".to_string()]
        );
        let both = Profile::parse(
            "name = \"t\"\nenvs = [\"hvm64\"]\nlevels = [\"MUST\", \"SHOULD\"]\ndeviations = \"reject\"\n",
            "t.toml",
        )
        .expect("profile");
        let mut cases = all_pass();
        cases.push(inst("io.s", "hvm64", "io", Outcome::Fail, &["S-1"]));
        assert_eq!(
            certify(&both, &report(cases)).verdict,
            Verdict::NotCertified
        );
    }

    #[test]
    fn skipped_and_uncovered_requirements_do_not_certify() {
        let cases: Vec<CaseResult> = all_pass()
            .into_iter()
            .filter(|c| c.case != "paging.b")
            .map(|mut c| {
                if c.case == "abi.c" {
                    c.outcome = Outcome::Skip;
                    c.detail = "no pv-local module".into();
                }
                c
            })
            .collect();
        let c = certify(&profile(""), &report(cases));
        assert_eq!(c.verdict, Verdict::NotCertified);
        assert_eq!(status(&c, "M-2"), ReqStatus::Uncovered);
        assert_eq!(status(&c, "M-PV"), ReqStatus::NotRun);
        assert!(
            c.reasons
                .contains(&"M-2 (MUST) UNCOVERED: no case in the report checks it".to_string())
        );
        assert!(
            c.reasons.iter().any(
                |r| r.starts_with("M-PV (MUST) NOT-RUN: every instance SKIPped")
                    && r.contains("abi.c~pv-local: no pv-local module")
            ),
            "{:?}",
            c.reasons
        );
    }

    #[test]
    fn scope_follows_the_profile_environments_and_areas() {
        // M-PV applies to pv-local only: an hvm64-only profile leaves it out, and ignores the
        // pv-local failures.
        let hvm = Profile::parse(
            "name = \"t\"\nenvs = [\"hvm64\"]\nlevels = [\"MUST\"]\ndeviations = \"reject\"\n",
            "t.toml",
        )
        .expect("profile");
        let r = with("paging.b~pv-local", Outcome::Fail);
        let c = certify(&hvm, &r);
        assert_eq!(c.verdict, Verdict::Certified, "{:?}", c.reasons);
        assert_eq!(c.out_of_scope, 1);
        assert!(c.requirements.iter().all(|r| r.requirement.id != "M-PV"));
        // An io-only profile leaves the paging requirement out of scope.
        let io = profile("areas = [\"io\"]\n");
        let c = certify(&io, &r);
        assert_eq!(c.verdict, Verdict::Certified, "{:?}", c.reasons);
        assert!(c.requirements.iter().all(|r| r.requirement.id != "M-2"));
        // A requirement named in an environment it does not apply to takes no instance there.
        let mut cases = all_pass();
        cases.push(inst("abi.c", "hvm64", "abi", Outcome::Fail, &["M-PV"]));
        let c = certify(&profile(""), &report(cases));
        assert_eq!(status(&c, "M-PV"), ReqStatus::Held);
    }

    #[test]
    fn the_report_itself_must_qualify() {
        let p = profile("min_instances = 6\n");
        let mut r = report(all_pass());
        r.schema = "pvm-conformance/report/v1".into();
        r.state = RunState::Interrupted;
        r.interrupted = true;
        r.run.image_sha256 = String::new();
        r.host_health = Some(HostHealth {
            status: "bad".into(),
            bad_lines: vec![KernelLine {
                instance: "io.a~hvm64".into(),
                class: "warning".into(),
                text: "WARNING: CPU: 1 at arch/x86/kvm/pvm.c:42".into(),
                reason: String::new(),
            }],
            allowed_lines: Vec::new(),
            fresh_boot: Some(false),
            fresh_boot_detail: "CRASH: timeout".into(),
        });
        let c = certify(&p, &r);
        assert_eq!(c.verdict, Verdict::NotCertified);
        let want = [
            "schema is \"pvm-conformance/report/v1\"",
            "state is interrupted",
            "no guest image hash",
            "host health is \"bad\"; 1 bad kernel-log line(s), first during io.a~hvm64: warning: WARNING",
            "fresh VM did not boot",
            "only 5 of the 5 in-scope instances ran",
        ];
        for w in want {
            assert!(
                c.reasons.iter().any(|r| r.contains(w)),
                "{w:?} not in {:#?}",
                c.reasons
            );
        }
        let mut r = report(all_pass());
        r.host_health = None;
        r.run.image_sha256 = "xyz".into();
        r.run.host.dialect = Some("upstream-v2".into());
        let c = certify(&profile("dialect = \"local\"\n"), &r);
        for w in [
            "no host-health section",
            "is not a SHA-256",
            "speaks the upstream-v2 dialect",
        ] {
            assert!(
                c.reasons.iter().any(|r| r.contains(w)),
                "{w:?} not in {:#?}",
                c.reasons
            );
        }
        let lax = profile("require_host_health = false\nrequire_complete = false\n");
        let mut r = report(all_pass());
        r.host_health = None;
        r.state = RunState::Interrupted;
        let c = certify(&lax, &r);
        assert_eq!(c.verdict, Verdict::Certified, "{:?}", c.reasons);
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    }

    #[test]
    fn odd_instances_are_warnings() {
        let mut cases = all_pass();
        cases.push(inst("io.x", "hvm64", "io", Outcome::Crash, &[]));
        cases.push(inst("io.y", "hvm64", "io", Outcome::Pass, &["NOPE-1"]));
        let c = certify(&profile(""), &report(cases));
        assert_eq!(c.verdict, Verdict::Certified);
        assert!(
            c.warnings
                .iter()
                .any(|w| w == "instance io.x~hvm64 is CRASH and names no requirement")
        );
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("NOPE-1, which the catalog lacks"))
        );
        assert_eq!(c.findings[0].id, "io.x~hvm64");
    }

    #[test]
    fn the_certificate_serializes_with_its_labels() {
        let c = certify(&profile(""), &with("io.a~hvm64", Outcome::Xfail));
        let v = serde_json::to_value(&c).expect("serializes");
        assert_eq!(v["schema"], CERTIFICATE_SCHEMA);
        assert_eq!(v["verdict"], "NOT CERTIFIED");
        assert_eq!(v["profile"]["envs"][1], "pv-local");
        assert_eq!(v["profile"]["deviations"], "reject");
        let m1 = v["requirements"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["id"] == "M-1"));
        let m1 = m1.expect("M-1 row");
        assert_eq!(m1["status"], "DEVIATION");
        assert_eq!(m1["level"], "MUST");
        assert_eq!(m1["instances"][0]["outcome"], "xfail");
        let io = v["areas"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["area"] == "io"));
        assert_eq!(
            io.expect("io row")["outcomes"]["xfail"],
            1,
            "{}",
            v["areas"]
        );
        assert_eq!(
            serde_json::to_value(Verdict::CertifiedWithDeviations).expect("ser"),
            "CERTIFIED WITH DEVIATIONS"
        );
    }

    #[test]
    fn evidence_is_found_in_an_xfail_detail() {
        assert_eq!(
            deviation_evidence("known deviation: r [evidence: docs/a.md#1]; observed FAIL: x"),
            Some("docs/a.md#1")
        );
        assert_eq!(
            deviation_evidence("known deviation: r [evidence: ]; observed"),
            None
        );
        assert_eq!(deviation_evidence("no evidence here"), None);
    }
}
