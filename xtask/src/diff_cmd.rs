//! `cargo xtask diff A.json B.json`: the case instances whose outcome differs between two
//! reports, with both details. Exit status 0 when none differ, 1 when some do, 2 for bad input.

use std::path::PathBuf;
use std::process::ExitCode;

use conformance::report::diff::diff;

use crate::out::outln;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The first report (`cargo xtask conformance --report`).
    a: PathBuf,
    /// The second report.
    b: PathBuf,
    /// Only instances of these environments (comma separated), e.g. `hvm64` when one report
    /// comes from a target that runs only that.
    #[arg(long, value_delimiter = ',')]
    env: Vec<String>,
    /// Only instances both reports have (leave out those one report did not select).
    #[arg(long)]
    common: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let a = conformance::certify::load_report(&args.a)?;
    let b = conformance::certify::load_report(&args.b)?;
    for e in &args.env {
        if abi::env::Env::from_name(e).is_none() {
            anyhow::bail!("--env {e}: no such environment");
        }
    }
    let in_envs = |id: &str| {
        args.env.is_empty()
            || id
                .rsplit_once('~')
                .is_some_and(|(_, e)| args.env.iter().any(|w| w == e))
    };
    let differences: Vec<_> = diff(&a, &b)
        .into_iter()
        .filter(|d| in_envs(&d.id) && (!args.common || (d.a.is_some() && d.b.is_some())))
        .collect();
    let who = |r: &conformance::report::Report| {
        format!(
            "{} on {} ({}, image {})",
            r.run.run_id,
            r.run.target,
            r.run.host.kernel,
            r.run.image_sha256.get(..12).unwrap_or(&r.run.image_sha256)
        )
    };
    outln!("a: {} = {}", args.a.display(), who(&a))?;
    outln!("b: {} = {}", args.b.display(), who(&b))?;
    for d in &differences {
        let side = |s: &Option<(conformance::outcome::Outcome, String)>| match s {
            Some((o, _)) => o.label().to_string(),
            None => "(absent)".into(),
        };
        outln!("{:<52} {:>8} -> {}", d.id, side(&d.a), side(&d.b))?;
        for (name, s) in [("a", &d.a), ("b", &d.b)] {
            if let Some((_, detail)) = s
                && !detail.is_empty()
            {
                outln!("    {name}: {detail}")?;
            }
        }
    }
    outln!(
        "{} instance(s) differ ({} in a, {} in b)",
        differences.len(),
        a.cases.len(),
        b.cases.len()
    )?;
    Ok(if differences.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
