//! Every case instance as its own named test (libtest-mimic): `cargo test -p conformance
//! --test cases -- paging` runs the paging instances, `--list` lists them, `--exact` and
//! `cargo nextest run` work as with any test binary. An instance passes when it is PASS or a
//! documented XFAIL, a self-test when it produces the outcome its descriptor declares; a SKIP
//! is reported as ignored with its reason. Beside the instances, `harness::*` tests check the
//! case table, the expectations and the benchmark path.
//!
//! Without a usable `/dev/kvm` the instances are ignored with the reason, unless
//! `PVMC_REQUIRE_KVM=1` (CI) makes that a failure.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use abi::env::Env;
use conformance::catalog::{Catalog, Instance, Selection};
use conformance::expect::Expectations;
use conformance::outcome::Outcome;
use conformance::result::CaseResult;
use conformance::target::local::LocalTarget;
use conformance::target::{Target, TargetOptions};
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use runner::vm::Cancel;

struct World {
    catalog: Catalog,
    target: LocalTarget,
    expectations: Expectations,
    require_kvm: bool,
}

impl World {
    fn kvm_missing(&self) -> Result<Option<Completion>, Failed> {
        match self.target.usable() {
            Ok(()) => Ok(None),
            Err(why) if self.require_kvm => Err(format!("PVMC_REQUIRE_KVM=1: {why}").into()),
            Err(why) => Ok(Some(Completion::ignored_with(why))),
        }
    }

    fn run(&self, inst: &Instance) -> Result<CaseResult, Failed> {
        let opts = TargetOptions {
            timeout: Duration::from_secs(10),
            jobs: 1,
            cancel: Cancel::new(),
        };
        let mut out = None;
        self.target
            .run(std::slice::from_ref(inst), &opts, &mut |_, r| out = Some(r));
        let mut r = out.ok_or("the target yielded no result")?;
        let (o, d) = self.expectations.apply(&r.id, r.outcome, r.detail);
        (r.outcome, r.detail) = (o, d);
        Ok(r)
    }
}

fn instance_trial(world: &Arc<World>, inst: Instance) -> Trial {
    let w = Arc::clone(world);
    Trial::ignorable_test(inst.id(), move || {
        if let Some(skip) = w.kvm_missing()? {
            return Ok(skip);
        }
        let r = w.run(&inst)?;
        let designed = Outcome::designed(inst.case.designed);
        match r.outcome {
            o if o == designed => Ok(Completion::Completed),
            Outcome::Xfail if !inst.case.is_selftest() => Ok(Completion::Completed),
            // The instance could not run here (environment, dialect) or the case found its
            // feature missing.
            Outcome::Skip => Ok(Completion::ignored_with(r.detail)),
            other if inst.case.is_selftest() => Err(format!(
                "self-test designed to be {}, was {}: {}",
                designed.label(),
                other.label(),
                r.detail
            )
            .into()),
            other => Err(format!("{}: {}", other.label(), r.detail).into()),
        }
    })
}

fn case_table_is_well_formed(w: &World) -> Result<(), Failed> {
    for c in &w.catalog.cases {
        if c.summary.is_empty() {
            return Err(format!("{} has no summary", c.name).into());
        }
        if !c.is_selftest() && c.requirements.is_empty() {
            return Err(format!("{} has no requirement ids", c.name).into());
        }
        if c.envs == 0 {
            return Err(format!("{} applies to no environment", c.name).into());
        }
    }
    let selftests = w.catalog.cases.iter().filter(|c| c.is_selftest());
    let designs: std::collections::HashSet<Outcome> =
        selftests.map(|c| Outcome::designed(c.designed)).collect();
    for want in [Outcome::Fail, Outcome::Error, Outcome::Skip, Outcome::Crash] {
        if !designs.contains(&want) {
            return Err(format!("no self-test is designed to be {}", want.label()).into());
        }
    }
    Ok(())
}

fn expectations_name_instances(w: &World) -> Result<(), Failed> {
    let known = w.catalog.all_ids();
    for e in Expectations::all_builtin().map_err(|e| e.to_string())? {
        e.validate(&known).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The invariant of `abi::env::X86_RING0_ENVS`: a case the catalog runs on hvm64 and pv-local
/// but keeps from an upstream environment (other than a local-dialect case) is an x86 rule the
/// upstream ABI replaces, and docs/model.md's table of those names it with the upstream cases
/// that check the ABI's rule instead; each of those exists and runs in the upstream
/// environments only, and every `abi.upstream.ring.*` case is in the table.
fn upstream_replacements_documented(w: &World) -> Result<(), Failed> {
    use abi::env::UPSTREAM_ENVS;
    let path = conformance::guest_build::workspace_root().join("docs/model.md");
    let doc = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("x86 rules the upstream ABI replaces"))
        .ok_or("docs/model.md has no section \"x86 rules the upstream ABI replaces\"")?;
    let case = |name: &str| w.catalog.cases.iter().find(|c| c.name == name);
    let names = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .filter(|t| case(t).is_some())
            .map(str::to_string)
            .collect()
    };
    let mut replaced = std::collections::HashSet::new();
    let mut replacing = std::collections::HashSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').collect();
        let (x86, abi) = (names(cells[1]), names(cells[2]));
        if x86.is_empty() || abi.is_empty() {
            return Err(format!("docs/model.md: a row names no case on one side: {row}").into());
        }
        for a in &abi {
            let c = case(a).ok_or("unreachable")?;
            if c.envs & !UPSTREAM_ENVS != 0 || c.envs == 0 {
                return Err(format!("{a} must run in upstream environments only").into());
            }
        }
        replaced.extend(x86);
        replacing.extend(abi);
    }
    for c in &w.catalog.cases {
        let kept = c.applies_to(Env::Hvm64)
            && c.applies_to(Env::PvLocal)
            && c.envs & UPSTREAM_ENVS != UPSTREAM_ENVS
            && c.flags & abi::case::FLAG_LOCAL_DIALECT == 0;
        if kept && !replaced.contains(&c.name) {
            return Err(format!(
                "{} runs outside some upstream environment but docs/model.md does not say \
                 which case replaces it there",
                c.name
            )
            .into());
        }
        if c.name.starts_with("abi.upstream.ring.") && !replacing.contains(&c.name) {
            return Err(format!("{} is not in docs/model.md's table", c.name).into());
        }
    }
    Ok(())
}

fn bench_smoke(w: &World) -> Result<Completion, Failed> {
    if let Some(skip) = w.kvm_missing()? {
        return Ok(skip);
    }
    let envs = vec![Env::Hvm64];
    let sel = Selection {
        envs: envs.clone(),
        filters: vec!["bench.pio_exit".into(), "bench.empty".into()],
        selftest: false,
        bench: true,
        suite: conformance::catalog::Suite::Full,
        opt_in: false,
    };
    let instances = w.catalog.instances(&sel);
    if instances.len() != 2 {
        return Err(format!(
            "want bench.pio_exit and bench.empty, got {}",
            instances.len()
        )
        .into());
    }
    let opts = conformance::bench::BenchOptions {
        repetitions: 2,
        timeout: Duration::from_secs(30),
    };
    let r = conformance::bench::run(&w.target, &w.catalog, &instances, &envs, &opts, &mut |_| {})
        .map_err(|e| e.to_string())?;
    let pio = r
        .benchmarks
        .iter()
        .find(|b| b.name == "pio_exit")
        .ok_or("no pio_exit row")?;
    let want = 2 * abi::bench::SAMPLES as usize;
    if pio.stats.samples != want {
        return Err(format!("pio_exit has {} samples, want {want}", pio.stats.samples).into());
    }
    if pio.baseline.as_deref() != Some("raw_kvm_exit") || pio.ratio_to_native.is_none() {
        return Err(format!("pio_exit is not compared with the raw exit: {pio:?}").into());
    }
    let o = r.runner_overhead.as_ref().ok_or("no runner overhead")?;
    if !(o.raw_exit_ns > 0.0 && o.runner_exit_ns > 0.0 && o.case_overhead_ms.is_some()) {
        return Err(format!("runner overhead incomplete: {o:?}").into());
    }
    if !r.benchmarks.iter().any(|b| b.name == "vm_lifecycle") {
        return Err("no vm_lifecycle row".into());
    }
    Ok(Completion::Completed)
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let root = conformance::guest_build::workspace_root();
    let catalog = match conformance::guest_build::build(&root) {
        Ok(b) => b.catalog,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(101);
        }
    };
    let target = LocalTarget::new(Arc::clone(&catalog.image));
    let expectations = match Expectations::builtin(target.host().dialect) {
        Ok(e) => e.for_host(target.host()),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(101);
        }
    };
    let all = Selection {
        envs: Env::ALL.to_vec(),
        filters: Vec::new(),
        selftest: true,
        bench: false,
        suite: conformance::catalog::Suite::Full,
        opt_in: false,
    };
    let instances = catalog.instances(&all);
    let world = Arc::new(World {
        catalog,
        target,
        expectations,
        require_kvm: std::env::var_os("PVMC_REQUIRE_KVM").is_some_and(|v| v == "1"),
    });
    let mut trials: Vec<Trial> = instances
        .into_iter()
        .map(|i| instance_trial(&world, i))
        .collect();
    let w = Arc::clone(&world);
    trials.push(Trial::test(
        "harness::case_table_is_well_formed",
        move || case_table_is_well_formed(&w),
    ));
    let w = Arc::clone(&world);
    trials.push(Trial::test(
        "harness::expectations_name_instances",
        move || expectations_name_instances(&w),
    ));
    let w = Arc::clone(&world);
    trials.push(Trial::test(
        "harness::upstream_replacements_documented",
        move || upstream_replacements_documented(&w),
    ));
    let w = Arc::clone(&world);
    trials.push(Trial::ignorable_test("harness::bench_smoke", move || {
        bench_smoke(&w)
    }));
    libtest_mimic::run(&args, trials).exit_code()
}
