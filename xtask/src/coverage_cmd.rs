//! `cargo xtask coverage`: requirement -> cases -> last outcome, the requirements no case
//! checks, and per level how many are covered. Exit status 0 when every MUST has a case, 1
//! otherwise (2 for bad input).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use conformance::report::Report;
use conformance::requirements::{self, Level, Requirements};

use crate::conformance_cmd::guest_catalog;
use crate::out::outln;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Report to take the outcomes from (default: target/conformance/report.json if present).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Use this guest image instead of building it.
    #[arg(long)]
    image: Option<PathBuf>,
}

fn load_report(args: &Args) -> anyhow::Result<Option<Report>> {
    let (path, must_exist) = match &args.report {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from("target/conformance/report.json"), false),
    };
    if !path.exists() && !must_exist {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("--report {}", path.display()))?;
    let r: Report = serde_json::from_str(&text)
        .with_context(|| format!("--report {}: not a pvm-conformance report", path.display()))?;
    Ok(Some(r))
}

fn outcome_summary(outcomes: &[(String, conformance::outcome::Outcome)]) -> String {
    let mut counts: BTreeMap<conformance::outcome::Outcome, usize> = BTreeMap::new();
    for (_, o) in outcomes {
        *counts.entry(*o).or_default() += 1;
    }
    counts
        .iter()
        .rev()
        .map(|(o, n)| format!("{n} {}", o.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let report = load_report(&args)?;
    let catalog = guest_catalog(args.image.as_ref())?;
    let reqs = Requirements::builtin()?;
    let rows = requirements::coverage(&reqs, &catalog, report.as_ref());
    outln!(
        "{:<18} {:<6} {:>5}  {:<28} statement",
        "requirement",
        "level",
        "cases",
        if report.is_some() {
            "outcomes"
        } else {
            "outcomes (no report)"
        }
    )?;
    for r in &rows {
        let mut statement = r.requirement.statement.clone();
        if statement.len() > 70 {
            statement.truncate(67);
            statement.push_str("...");
        }
        outln!(
            "{:<18} {:<6} {:>5}  {:<28} {statement}",
            r.requirement.id,
            r.requirement.level.name(),
            r.cases.len(),
            outcome_summary(&r.outcomes),
        )?;
    }
    let mut all_must = true;
    for level in [Level::Must, Level::Should, Level::May] {
        let of_level: Vec<_> = rows
            .iter()
            .filter(|r| r.requirement.level == level)
            .collect();
        let uncovered: Vec<&str> = of_level
            .iter()
            .filter(|r| r.cases.is_empty())
            .map(|r| r.requirement.id.as_str())
            .collect();
        outln!(
            "{}: {}/{} covered{}",
            level.name(),
            of_level.len() - uncovered.len(),
            of_level.len(),
            if uncovered.is_empty() {
                String::new()
            } else {
                format!("; without a case: {}", uncovered.join(", "))
            }
        )?;
        if level == Level::Must && !uncovered.is_empty() {
            all_must = false;
        }
    }
    Ok(if all_must {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
