//! `cargo xtask merge A.json B.json ... --report OUT.json [--junit OUT.xml]`: the reports of
//! one selection run in pieces (`--shard K/N`, several hosts or CI jobs) as one report, every
//! instance once (`conformance::report::merge`). Exit 0 when written (the merged summary is
//! printed), 2 for bad input (unreadable reports, different images, an instance twice).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::out::{errln, outln};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The reports to merge (`cargo xtask conformance --report`).
    #[arg(required = true, num_args = 1..)]
    reports: Vec<PathBuf>,
    /// Where to write the merged JSON report.
    #[arg(long)]
    report: PathBuf,
    /// Also write JUnit XML of the merged report here.
    #[arg(long)]
    junit: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.reports.contains(&args.report) {
        bail!(
            "--report {}: is one of the reports to merge",
            args.report.display()
        );
    }
    let reports = args
        .reports
        .iter()
        .map(|p| conformance::certify::load_report(p).map_err(anyhow::Error::from))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let merged = conformance::report::merge::merge(&reports).map_err(|e| {
        let names: Vec<String> = args
            .reports
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        anyhow::anyhow!("merging {}: {e}", names.join(", "))
    })?;
    if let Some(dir) = args.report.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--report: cannot create {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&merged)? + "\n";
    conformance::output::write_atomic(&args.report, text.as_bytes())?;
    if let Some(j) = &args.junit {
        let xml = conformance::report::junit::junit(
            &merged.run,
            &merged.cases,
            merged.summary.wall_ms,
            merged.interrupted,
        )?;
        conformance::output::write_atomic(j, xml.as_bytes())?;
        errln!("junit: {}", j.display());
    }
    outln!(
        "merged {} report(s): {}",
        reports.len(),
        conformance::report::summary_line(&merged.summary)
    )?;
    errln!("report: {}", args.report.display());
    Ok(ExitCode::SUCCESS)
}
