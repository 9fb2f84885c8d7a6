//! `cargo xtask certify`: certify a conformance report against a profile.
//!
//! Reads the JSON report of `cargo xtask conformance`, a profile
//! (`conformance/profiles/*.toml`) and optionally a benchmark report of `cargo xtask bench`;
//! prints the verdict and its reasons on stdout; writes the HTML certificate (and, with
//! `--json`, the machine-readable verdict) atomically. Exit status: 0 for CERTIFIED and
//! CERTIFIED WITH DEVIATIONS, 1 for NOT CERTIFIED, 2 for bad input (a missing or invalid
//! report, profile or benchmark report, or an output that cannot be written: one line on
//! stderr naming the file and the problem).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use conformance::certify::html::{self, BenchInput};
use conformance::certify::{self, Certificate, Profile, ReqStatus};
use conformance::requirements::Requirements;

use crate::out::{errln, outln};

/// The profile used without `--profile`, relative to the repository root.
const DEFAULT_PROFILE: &str = "conformance/profiles/local-host.toml";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The JSON report of `cargo xtask conformance`.
    #[arg(long, default_value = "target/conformance/report.json")]
    report: PathBuf,
    /// The certification profile [default: conformance/profiles/local-host.toml of this
    /// repository].
    #[arg(long)]
    profile: Option<PathBuf>,
    /// A benchmark report of `cargo xtask bench` to chart on the certificate (informative:
    /// benchmarks do not decide the verdict).
    #[arg(long)]
    bench: Option<PathBuf>,
    /// Where to write the HTML certificate.
    #[arg(long, default_value = "target/conformance/certificate.html")]
    html: PathBuf,
    /// Also write the verdict as JSON (`pvm-conformance/certificate/v1`) here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Refuses an output path that is a directory or one of the inputs.
fn check_output(flag: &str, path: &Path, inputs: &[&Path]) -> anyhow::Result<()> {
    if path.as_os_str().is_empty() {
        bail!("{flag}: empty path");
    }
    if path.as_os_str().to_string_lossy().ends_with('/') || path.is_dir() {
        bail!("{flag} {}: is a directory", path.display());
    }
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    };
    if let Some(input) = inputs.iter().find(|i| same(path, i)) {
        bail!(
            "{flag} {}: is the same file as the input {}",
            path.display(),
            input.display()
        );
    }
    Ok(())
}

fn write(flag: &str, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| {
            format!("{flag} {}: cannot create {}", path.display(), dir.display())
        })?;
    }
    conformance::output::write_atomic(path, bytes)?;
    Ok(())
}

/// `12 HELD, 3 FAILED` over the required (or all) in-scope requirements.
fn status_counts(c: &Certificate, required_only: bool) -> String {
    let parts: Vec<String> = ReqStatus::ALL
        .iter()
        .filter_map(|&s| {
            let n = c.count(s, required_only);
            (n > 0).then(|| format!("{n} {}", s.label()))
        })
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

fn print(c: &Certificate, html_path: &Path) -> anyhow::Result<()> {
    let h = &c.run.host;
    outln!(
        "{}: profile {} ({})",
        c.verdict.label(),
        c.profile.name,
        c.profile.source
    )?;
    outln!(
        "report {}: run {} started {}, host {} ({}, dialect {}), suite {}, image sha256 {}",
        c.report_file,
        c.run.run_id,
        c.run.started,
        h.kernel,
        h.kvm_backend,
        h.dialect.as_deref().unwrap_or("none"),
        if c.run.suite_version.is_empty() {
            "?"
        } else {
            &c.run.suite_version
        },
        if c.run.image_sha256.is_empty() {
            "missing"
        } else {
            &c.run.image_sha256
        }
    )?;
    let required = c.requirements.iter().filter(|r| r.required).count();
    outln!(
        "in scope: {} instances ({} ran), {} requirements ({} required: {}; {} out of scope)",
        c.in_scope_instances,
        c.ran_instances,
        c.requirements.len(),
        required,
        status_counts(c, true),
        c.out_of_scope
    )?;
    if !c.reasons.is_empty() {
        outln!("reasons ({}):", c.reasons.len())?;
        for r in &c.reasons {
            outln!("  - {r}")?;
        }
    }
    if !c.accepted_deviations.is_empty() {
        outln!("accepted deviations ({}):", c.accepted_deviations.len())?;
        for d in &c.accepted_deviations {
            outln!("  - {d}")?;
        }
    }
    if !c.warnings.is_empty() {
        outln!("warnings ({}):", c.warnings.len())?;
        for w in &c.warnings {
            outln!("  - {w}")?;
        }
    }
    outln!("certificate: {}", html_path.display())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let profile_path = args
        .profile
        .clone()
        .unwrap_or_else(|| conformance::guest_build::workspace_root().join(DEFAULT_PROFILE));
    let mut inputs: Vec<&Path> = vec![&args.report, &profile_path];
    if let Some(b) = &args.bench {
        inputs.push(b);
    }
    check_output("--html", &args.html, &inputs)?;
    if let Some(j) = &args.json {
        check_output("--json", j, &inputs)?;
        check_output("--json", j, &[&args.html])?;
    }
    let profile = Profile::load(&profile_path)?;
    let report = certify::load_report(&args.report)?;
    let bench = args.bench.as_deref().map(certify::load_bench).transpose()?;
    let reqs = Requirements::builtin()?;
    let report_file = args.report.display().to_string();
    let cert = certify::evaluate(&profile, &report, &reqs, &report_file);
    let bench_file = args.bench.as_ref().map(|b| b.display().to_string());
    let bench_input = bench
        .as_ref()
        .zip(bench_file.as_deref())
        .map(|(report, file)| BenchInput { report, file });
    let generated = conformance::report::RunStart::now().started;
    let page = html::render(&cert, bench_input.as_ref(), &generated);
    write("--html", &args.html, page.as_bytes())?;
    if let Some(j) = &args.json {
        let text = serde_json::to_string_pretty(&cert)? + "\n";
        write("--json", j, text.as_bytes())?;
        errln!("verdict JSON: {}", j.display());
    }
    print(&cert, &args.html)?;
    Ok(if cert.verdict.certified() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
