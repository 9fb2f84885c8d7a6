//! End-to-end: builds the guest image and runs every case instance (self-tests included) on
//! this machine's /dev/kvm, then checks the outcomes against what the suite promises:
//! - each self-test produces exactly its designed outcome (FAIL, CRASH, SKIP, ERROR);
//! - every other instance is PASS or a documented XFAIL (a new host deviation or a suite
//!   regression fails this test);
//! - the JSON report carries the fields of the `pvm-conformance/report/v1` schema.
//!
//! Without a usable /dev/kvm every instance must be SKIP with the reason.

use std::time::Duration;

use abi::env::Env;
use conformance::catalog::{Catalog, Selection};
use conformance::expect::Expectations;
use conformance::outcome::Outcome;
use conformance::report::{HostReport, Report, SCHEMA, Summary};
use conformance::suite::{self, CaseResult, SuiteOptions};
use runner::detect::KvmStatus;
use runner::image::GuestImage;

fn build_catalog() -> Catalog {
    let root = conformance::guest_build::workspace_root();
    let path = conformance::guest_build::build(&root).expect("guest image builds");
    Catalog::new(GuestImage::load(&path).expect("guest image parses"))
}

fn run_all(catalog: &Catalog) -> (runner::detect::HostInfo, Vec<CaseResult>) {
    let host = runner::detect::detect();
    let sel = Selection {
        envs: Env::ALL.to_vec(),
        filters: Vec::new(),
        selftest: true,
        bench: false,
    };
    let instances = catalog.instances(&sel);
    let opts = SuiteOptions {
        timeout: Duration::from_secs(10),
        jobs: 2,
        expectations: Expectations::builtin(host.dialect).expect("built-in expectations"),
    };
    let results = suite::run(&catalog.image, &host, &instances, &opts, &mut |_, _, _| {});
    assert_eq!(results.len(), instances.len(), "one result per instance");
    (host, results)
}

#[test]
fn suite_on_the_local_host() {
    let catalog = build_catalog();
    let (host, results) = run_all(&catalog);
    let outcome = |id: &str| {
        results
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.outcome)
            .unwrap_or_else(|| panic!("no {id}"))
    };

    if let KvmStatus::Unusable(why) = &host.kvm {
        eprintln!("no usable /dev/kvm ({why}): checking that everything is SKIP");
        assert!(
            results
                .iter()
                .all(|r| r.outcome == Outcome::Skip && r.detail.contains("/dev/kvm"))
        );
        return;
    }

    let designed = [
        ("selftest.check_fails", Outcome::Fail),
        ("selftest.never_reports", Outcome::Crash),
        ("selftest.skips", Outcome::Skip),
        ("selftest.errors", Outcome::Error),
    ];
    for env in ["hvm64", "pv-local"] {
        for (case, want) in designed {
            let id = format!("{case}~{env}");
            if env == "pv-local" && host.dialect != Some(abi::env::Dialect::Local) {
                assert_eq!(outcome(&id), Outcome::Skip, "{id}");
                continue;
            }
            assert_eq!(
                outcome(&id),
                want,
                "{id}: {:?}",
                results.iter().find(|r| r.id == id)
            );
        }
    }
    let fail = results
        .iter()
        .find(|r| r.id == "selftest.check_fails~hvm64")
        .expect("present");
    assert!(
        fail.detail.contains("selftest.rs") && fail.detail.contains("left=0x2 right=0x3"),
        "{}",
        fail.detail
    );
    let crash = results
        .iter()
        .find(|r| r.id == "selftest.never_reports~hvm64")
        .expect("present");
    assert!(
        crash.detail.contains("timeout") && crash.detail.contains("rip="),
        "{}",
        crash.detail
    );

    let bad: Vec<String> = results
        .iter()
        .filter(|r| !r.case.starts_with("selftest."))
        .filter(|r| {
            let env_needs_other_dialect = Env::from_name(r.env)
                .and_then(Env::required_dialect)
                .is_some_and(|d| host.dialect != Some(d));
            match r.outcome {
                Outcome::Pass | Outcome::Xfail => false,
                Outcome::Skip => !env_needs_other_dialect,
                _ => true,
            }
        })
        .map(|r| format!("{} {}: {}", r.outcome.label(), r.id, r.detail))
        .collect();
    assert!(
        bad.is_empty(),
        "instances neither PASS nor documented XFAIL:\n{}",
        bad.join("\n")
    );
    let ran = results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Pass | Outcome::Xfail))
        .count();
    assert!(ran >= 30, "only {ran} instances ran");

    let summary = Summary::of(&results, 1);
    let report = Report {
        schema: SCHEMA,
        target: "local".into(),
        expectations: "built-in".into(),
        host: HostReport::new(&host),
        cases: results,
        summary,
    };
    let dir = std::env::temp_dir().join(format!("pvmc-report-{}", std::process::id()));
    let path = dir.join("report.json");
    report.write(&path).expect("report written");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("readable"))
            .expect("valid JSON");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(v["schema"], SCHEMA);
    assert_eq!(v["target"], "local");
    for k in ["kernel", "kvm_backend", "dialect", "cpu"] {
        assert!(v["host"].get(k).is_some(), "host.{k}");
    }
    let case = &v["cases"][0];
    for k in [
        "id",
        "area",
        "env",
        "outcome",
        "duration_ms",
        "detail",
        "requirements",
    ] {
        assert!(case.get(k).is_some(), "cases[].{k}");
    }
    for k in ["pass", "fail", "error", "skip", "xfail", "crash", "wall_ms"] {
        assert!(v["summary"].get(k).is_some(), "summary.{k}");
    }
}

#[test]
fn case_table_is_well_formed() {
    let catalog = build_catalog();
    let mut names = std::collections::HashSet::new();
    for c in &catalog.cases {
        assert!(names.insert(c.name.clone()), "duplicate case {}", c.name);
        assert!(
            c.name.starts_with(&format!("{}.", c.area.name())),
            "{} must be named <area>.<what>",
            c.name
        );
        assert!(!c.summary.is_empty(), "{} has no summary", c.name);
        let selftest = c.flags & abi::case::FLAG_SELFTEST != 0;
        assert!(
            selftest || !c.requirements.is_empty(),
            "{} has no requirement ids",
            c.name
        );
        assert_ne!(c.envs, 0, "{} applies to no environment", c.name);
    }
    let all = catalog.instances(&Selection {
        envs: Env::ALL.to_vec(),
        filters: vec![],
        selftest: true,
        bench: false,
    });
    let ids: std::collections::HashSet<String> = all.iter().map(|i| i.id()).collect();
    let local = Expectations::builtin(Some(abi::env::Dialect::Local)).expect("parses");
    for id in local.ids() {
        assert!(
            ids.contains(id),
            "expectations/local.toml names {id}, which is not a case instance"
        );
    }
}

#[test]
fn bench_path_produces_rows_and_runner_overhead() {
    let catalog = build_catalog();
    let host = runner::detect::detect();
    if let KvmStatus::Unusable(why) = &host.kvm {
        eprintln!("no usable /dev/kvm ({why}): nothing to benchmark");
        return;
    }
    let envs = vec![Env::Hvm64];
    let sel = Selection {
        envs: envs.clone(),
        filters: vec!["bench.pio_exit".into(), "bench.empty".into()],
        selftest: false,
        bench: true,
    };
    let instances = catalog.instances(&sel);
    assert_eq!(
        instances.len(),
        2,
        "bench.pio_exit and bench.empty in hvm64"
    );
    let opts = conformance::bench::BenchOptions {
        repetitions: 2,
        timeout: Duration::from_secs(30),
    };
    let r = conformance::bench::run(&catalog.image, &host, &instances, &envs, &opts, &mut |_| {})
        .expect("bench run");
    let pio = r
        .benchmarks
        .iter()
        .find(|b| b.name == "pio_exit")
        .expect("pio_exit row");
    assert_eq!(pio.stats.samples, 80, "40 samples x 2 repetitions");
    assert!(
        pio.stats.median_ns > 100.0 && pio.ratio_to_native.is_some(),
        "{pio:?}"
    );
    let o = r.runner_overhead.as_ref().expect("runner overhead");
    assert!(o.raw_exit_ns > 0.0 && o.runner_exit_ns > 0.0, "{o:?}");
    assert!(o.case_overhead_ms.is_some_and(|ms| ms > 0.0), "{o:?}");
    assert!(r.benchmarks.iter().any(|b| b.name == "vm_lifecycle"));
    assert!(conformance::bench::table(&r).contains("pio_exit"));
}
