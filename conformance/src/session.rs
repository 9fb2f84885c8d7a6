//! One conformance run's outputs, from start to the final report, interrupted or resumed.
//!
//! [`Session::start`] takes the validated and locked [`Outputs`], writes a placeholder report
//! (state `running`, so a harness killed even by SIGKILL never leaves the previous run's report
//! looking current) and removes a stale JUnit file; with `resume` it instead reads the progress
//! log of the interrupted run, checks that it is the same selection on the same image, and
//! continues it under its identity. [`Session::record`] appends each result to the progress
//! log as it arrives; [`Session::finish`] writes the final JSON report (and JUnit) atomically,
//! holding every instance exactly once, and returns it.

use std::collections::HashSet;
use std::time::Instant;

use crate::Error;
use crate::catalog::Instance;
use crate::output::{OutputLock, Outputs, remove_stale};
use crate::report::progress::{self, ProgressLog};
use crate::report::{CaseResult, Report, RunInfo, RunState, SCHEMA, Summary, junit};

/// An open run (see the module documentation).
#[derive(Debug)]
pub struct Session {
    /// The run's identity (the original one when resuming).
    pub run: RunInfo,
    outputs: Outputs,
    _lock: OutputLock,
    log: ProgressLog,
    prior: Vec<CaseResult>,
    prior_wall_ms: u64,
    expectations: String,
    started: Instant,
    /// Whether a torn last progress line of the resumed run was dropped.
    pub dropped_torn_line: bool,
}

impl Session {
    /// Starts a new run with identity `run`, or resumes the one the progress log holds.
    pub fn start(
        outputs: Outputs,
        lock: OutputLock,
        run: RunInfo,
        resume: bool,
        expectations: &str,
    ) -> Result<Self, Error> {
        let started = Instant::now();
        if !resume {
            let log = ProgressLog::create(&outputs.progress, &run)?;
            if let Some(j) = &outputs.junit {
                remove_stale(j)?;
            }
            let s = Self {
                run,
                outputs,
                _lock: lock,
                log,
                prior: Vec::new(),
                prior_wall_ms: 0,
                expectations: expectations.to_string(),
                started,
                dropped_torn_line: false,
            };
            s.placeholder()?;
            return Ok(s);
        }
        let prev = progress::read(&outputs.progress)?;
        let refuse = |reason: String| Error::Resume {
            path: outputs.progress.display().to_string(),
            reason,
        };
        if prev.run.selection != run.selection {
            return Err(refuse(format!(
                "run {} was a different selection or expectations ({} now {}); rerun without --resume",
                prev.run.run_id, prev.run.selection, run.selection
            )));
        }
        if prev.run.image_sha256 != run.image_sha256 {
            return Err(refuse(format!(
                "run {} used guest image {}, this one is {}; rerun without --resume",
                prev.run.run_id, prev.run.image_sha256, run.image_sha256
            )));
        }
        if prev.run.target != run.target {
            return Err(refuse(format!(
                "run {} ran on target {}, not {}",
                prev.run.run_id, prev.run.target, run.target
            )));
        }
        let prior_wall_ms = std::fs::read_to_string(&outputs.report)
            .ok()
            .and_then(|t| serde_json::from_str::<Report>(&t).ok())
            .filter(|r| r.run.run_id == prev.run.run_id)
            .map_or(0, |r| r.summary.wall_ms);
        let log = ProgressLog::resume(&outputs.progress, &prev)?;
        let s = Self {
            run: prev.run.clone(),
            outputs,
            _lock: lock,
            log,
            prior: prev.results,
            prior_wall_ms,
            expectations: expectations.to_string(),
            started,
            dropped_torn_line: prev.dropped_torn_line,
        };
        s.placeholder()?;
        Ok(s)
    }

    /// The instances of `instances` that still need a result.
    pub fn pending(&self, instances: &[Instance]) -> Vec<Instance> {
        let done: HashSet<&str> = self.prior.iter().map(|r| r.id.as_str()).collect();
        instances
            .iter()
            .filter(|i| !done.contains(i.id().as_str()))
            .cloned()
            .collect()
    }

    /// How many results the resumed run already had.
    pub fn prior_results(&self) -> usize {
        self.prior.len()
    }

    /// Appends a result to the progress log.
    pub fn record(&mut self, r: &CaseResult) -> Result<(), Error> {
        self.log.append(r)
    }

    fn report(&self, state: RunState, cases: Vec<CaseResult>, selected: usize) -> Report {
        self.report_with(state, cases, selected, None)
    }

    fn report_with(
        &self,
        state: RunState,
        cases: Vec<CaseResult>,
        selected: usize,
        host_health: Option<crate::report::HostHealth>,
    ) -> Report {
        let wall = self.prior_wall_ms + self.started.elapsed().as_millis() as u64;
        Report {
            schema: SCHEMA.into(),
            run: self.run.clone(),
            state,
            interrupted: state == RunState::Interrupted,
            expectations: self.expectations.clone(),
            summary: Summary::of(&cases, selected, wall),
            cases,
            host_health,
        }
    }

    fn placeholder(&self) -> Result<(), Error> {
        self.report(RunState::Running, self.prior.clone(), self.prior.len())
            .write(&self.outputs.report)
    }

    /// Writes the final report of `instances` (prior and `new` results, in table order) and,
    /// when asked, the JUnit file; returns the report.
    pub fn finish(
        self,
        instances: &[Instance],
        new: Vec<CaseResult>,
        interrupted: bool,
        host_health: Option<crate::report::HostHealth>,
    ) -> Result<Report, Error> {
        let mut by_id: std::collections::HashMap<String, CaseResult> = self
            .prior
            .iter()
            .cloned()
            .chain(new)
            .map(|r| (r.id.clone(), r))
            .collect();
        let cases: Vec<CaseResult> = instances
            .iter()
            .filter_map(|i| by_id.remove(&i.id()))
            .collect();
        let state = if cases.len() < instances.len() || interrupted {
            RunState::Interrupted
        } else {
            RunState::Complete
        };
        let report = self.report_with(state, cases, instances.len(), host_health);
        report.write(&self.outputs.report)?;
        if let Some(path) = &self.outputs.junit {
            let xml = junit::junit(
                &report.run,
                &report.cases,
                report.summary.wall_ms,
                report.interrupted,
            )?;
            crate::output::write_atomic(path, xml.as_bytes())?;
        }
        Ok(report)
    }

    /// The output paths.
    pub fn outputs(&self) -> &Outputs {
        &self.outputs
    }
}
