//! The local host's outcome per instance, as an insta snapshot: every instance in every
//! environment (self-tests included) runs on this machine's `/dev/kvm` with the built-in
//! expectations, and the list of `id OUTCOME` lines must equal
//! `tests/snapshots/outcomes__local_host.snap`. Any change of host behaviour, and any case added,
//! removed or changed, is therefore a reviewed diff (`cargo insta review`, or
//! `INSTA_UPDATE=always`). The snapshot is of the development machines' host (dialect
//! `local`); on any other host the test is ignored with that reason.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use abi::env::{Dialect, Env};
use conformance::catalog::Selection;
use conformance::expect::Expectations;
use conformance::outcome::Outcome;
use conformance::suite::{self, SuiteOptions};
use conformance::target::local::LocalTarget;
use conformance::target::{Target, TargetOptions};
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use runner::vm::Cancel;

fn local_host_outcomes() -> Result<Completion, Failed> {
    let root = conformance::guest_build::workspace_root();
    let catalog = conformance::guest_build::build(&root)
        .map_err(|e| e.to_string())?
        .catalog;
    let target = LocalTarget::new(Arc::clone(&catalog.image));
    if target.host().dialect != Some(Dialect::Local) {
        return Ok(Completion::ignored_with(format!(
            "the snapshot is of the local dialect's host; this one speaks {:?}",
            target.host().dialect.map(|d| d.name())
        )));
    }
    let instances = catalog.instances(&Selection {
        envs: Env::ALL.to_vec(),
        filters: Vec::new(),
        selftest: true,
        bench: false,
        suite: conformance::catalog::Suite::Full,
        opt_in: false,
    });
    let opts = SuiteOptions {
        target: TargetOptions {
            timeout: Duration::from_secs(10),
            jobs: 2,
            cancel: Cancel::new(),
        },
        expectations: Expectations::builtin(Some(Dialect::Local))
            .map_err(|e| e.to_string())?
            .for_host(target.host()),
        host_health: Some(
            conformance::host_health::Allowlist::builtin().map_err(|e| e.to_string())?,
        ),
        fresh_boot: catalog
            .case_with_host_check(abi::case::HostCheck::Lifecycle)
            .map(|case| conformance::catalog::Instance {
                case: std::sync::Arc::clone(case),
                env: Env::Hvm64,
            }),
    };
    let run = suite::run(&target, &instances, &opts, &mut |_, _, _| {});
    // The host must have stayed healthy through the whole suite (and still boot a VM).
    if let Some(h) = &run.host_health
        && h.is_bad()
    {
        return Err(format!("{}: {:?}", h.summary(), h.bad_lines).into());
    }
    if run.results.len() != instances.len() {
        return Err(format!(
            "{} results for {} instances",
            run.results.len(),
            instances.len()
        )
        .into());
    }
    // An instance whose deviation holds only on some CPUs (`when_cpuid_differs`) is XFAIL on
    // one machine and PASS or SKIP on another, and an intermittent one XFAIL or PASS from run
    // to run: the snapshot names that instead (any other outcome of it still shows).
    let all = Expectations::builtin(Some(Dialect::Local)).map_err(|e| e.to_string())?;
    let lines: Vec<String> = run
        .results
        .iter()
        .map(|r| {
            let by_cpu = all.is_conditional(&r.id)
                && matches!(r.outcome, Outcome::Pass | Outcome::Skip | Outcome::Xfail);
            let label = if by_cpu {
                "XFAIL-ON-SOME-HOSTS-OR-RUNS"
            } else {
                r.outcome.label()
            };
            format!("{:<52} {label}", r.id)
        })
        .collect();
    let snapshot = std::panic::catch_unwind(|| {
        insta::assert_snapshot!("local_host", lines.join("\n"));
    });
    match snapshot {
        Ok(()) => Ok(Completion::Completed),
        Err(_) => {
            // What the failing instances said (the snapshot holds labels only).
            for r in run.results.iter().filter(|r| {
                matches!(r.outcome, Outcome::Fail | Outcome::Error | Outcome::Crash)
                    && !r.id.starts_with("selftest.")
            }) {
                eprintln!("{} {}: {}", r.id, r.outcome.label(), r.detail);
            }
            Err("the local host's outcomes differ from the snapshot (see the diff above)".into())
        }
    }
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let trial = Trial::ignorable_test("local_host_outcomes", local_host_outcomes);
    libtest_mimic::run(&args, vec![trial]).exit_code()
}
