//! `--target gce` against a fake `gcloud` (`tests/support/fake-gcloud`, named by
//! `PVMC_GCLOUD`) that records its arguments and plays back canned answers. The commands
//! that create and delete things, in order, are insta snapshots for three runs: success (two
//! VMs, their results merged into one report with every instance once), a VM that fails to
//! boot (its instances CRASH with the console's last lines), and Ctrl-C in the middle
//! (exit 130). Every run must delete everything it created. Needs no KVM and no network.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;
use support::image;

/// A fake-gcloud world: its log, state and a host image tarball.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        let w = World {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        for sub in ["state", "tmp"] {
            std::fs::create_dir(w.dir.path().join(sub)).expect("mkdir");
        }
        std::fs::write(w.dir.path().join("host.tar.gz"), b"not a real image").expect("image");
        w
    }

    fn xtask(&self, scenario: &str, instances: usize) -> Command {
        let d = self.dir.path();
        let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/fake-gcloud");
        let mut c = support::xtask();
        c.args([
            "conformance",
            "--target",
            "gce",
            "--project",
            "proj-1",
            "--zone",
        ])
        .args(["us-central1-a", "--instances", &instances.to_string()])
        .args(["--env", "hvm64", "--suite", "smoke", "--host-image"])
        .arg(d.join("host.tar.gz"))
        .arg("--report")
        .arg(d.join("out/report.json"))
        .arg("--image")
        .arg(image())
        .env("PVMC_GCLOUD", fake)
        .env("PVMC_GCE_POLL_MS", "10")
        .env("PVMC_GCE_NAME", "pvmc-test")
        .env("FAKE_GCLOUD_LOG", d.join("gcloud.log"))
        .env("FAKE_GCLOUD_STATE", d.join("state"))
        .env("FAKE_GCLOUD_SCENARIO", scenario)
        .env("TMPDIR", d.join("tmp"));
        c
    }

    /// Every recorded call, temporary paths replaced by placeholders.
    fn calls(&self) -> Vec<Vec<String>> {
        let log = std::fs::read_to_string(self.dir.path().join("gcloud.log")).unwrap_or_default();
        let root = self.dir.path().display().to_string();
        log.lines()
            .map(|l| {
                let v: Vec<String> = serde_json::from_str(l).expect("a JSON argv");
                v.into_iter()
                    .map(|a| {
                        let a = a.replace(&root, "<DIR>");
                        // tempfile's random directory names.
                        match a.find("/.tmp") {
                            Some(at) => {
                                let rest = &a[at + 5..];
                                let end = rest.find('/').unwrap_or(rest.len());
                                format!("{}/.tmpXXXXXX{}", &a[..at], &rest[end..])
                            }
                            None => a,
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// The calls that create or delete something, one line each (polls left out: their
    /// number depends on timing).
    fn mutations(&self) -> String {
        self.calls()
            .into_iter()
            .filter(|c| {
                !c.iter().any(|a| {
                    a == "get-serial-port-output"
                        || a == "describe"
                        || a == "get-guest-attributes"
                        || a == "--version"
                })
            })
            .map(|c| format!("gcloud {}", c.join(" ")))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn polls(&self) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.iter().any(|a| a == "get-serial-port-output"))
            .count()
    }

    fn report(&self) -> Value {
        support::read_report(&self.dir.path().join("out/report.json"))
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Everything created was deleted: each create has its delete after it.
fn assert_cleaned_up(w: &World) {
    let m = w.mutations();
    for (made, gone) in [
        ("storage cp", "storage rm"),
        ("images create", "images delete"),
    ] {
        assert_eq!(
            m.matches(made).count(),
            m.matches(gone).count(),
            "{made}/{gone}:\n{m}"
        );
    }
    for vm in ["pvmc-test-0", "pvmc-test-1"] {
        let created = m.contains(&format!("instances create {vm}"));
        let deleted = m.contains(&format!("instances delete {vm}"));
        assert_eq!(created, deleted, "{vm}:\n{m}");
    }
}

#[test]
fn a_sharded_run_merges_both_vms_into_one_report_and_cleans_up() {
    let w = World::new();
    let out = w.xtask("success", 2).output().expect("run");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let r = w.report();
    let ids: Vec<&str> = r["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| c["id"].as_str().expect("id"))
        .collect();
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "every instance once");
    assert_eq!(
        ids.len() as u64,
        r["summary"]["selected"].as_u64().expect("n")
    );
    assert_eq!(r["summary"]["pass"], r["summary"]["selected"], "{r}");
    assert_eq!(r["run"]["target"], "gce");
    assert!(w.polls() > 2, "the stream was read in pages");
    assert!(err.contains("pvmc-test-0: worker done"), "{err}");
    assert!(err.contains("verdict: PASS"), "{err}");
    assert_cleaned_up(&w);
    insta::assert_snapshot!("gce_success", w.mutations());
}

#[test]
fn a_vm_that_fails_to_boot_crashes_its_instances_and_is_deleted() {
    let w = World::new();
    let out = w.xtask("boot-failure", 1).output().expect("run");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "CRASH fails the run: {err}");
    let r = w.report();
    let cases = r["cases"].as_array().expect("cases");
    assert!(!cases.is_empty());
    for c in cases {
        assert_eq!(c["outcome"], "crash", "{c}");
        let detail = c["detail"].as_str().expect("detail");
        assert!(detail.contains("stopped (TERMINATED)"), "{detail}");
        assert!(detail.contains("Kernel panic"), "{detail}");
    }
    assert_cleaned_up(&w);
    insta::assert_snapshot!("gce_boot_failure", w.mutations());
}

#[test]
fn a_vm_that_finished_and_stopped_has_its_whole_output_read() {
    // Its output spans many pages; the VM is already TERMINATED at the first status query.
    let w = World::new();
    let out = w.xtask("done-stopped", 1).output().expect("run");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let r = w.report();
    assert_eq!(r["summary"]["pass"], r["summary"]["selected"], "{r}");
    assert!(w.polls() > 2, "the stream was read in pages");
    assert_cleaned_up(&w);
}

#[test]
fn ctrl_c_in_the_middle_deletes_everything_and_exits_130() {
    let w = World::new();
    let mut child = w
        .xtask("hang", 1)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let t0 = Instant::now();
    while w.polls() < 3 {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the run ended early"
        );
        assert!(t0.elapsed() < Duration::from_secs(60), "no polling");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert_eq!(w.report()["state"], "interrupted");
    assert_cleaned_up(&w);
    insta::assert_snapshot!("gce_ctrl_c", w.mutations());
}

#[test]
fn dry_run_prints_the_plan_and_calls_nothing() {
    let w = World::new();
    let out = w
        .xtask("success", 2)
        .arg("--dry-run")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains("gcloud compute instances create pvmc-test-1"),
        "{plan}"
    );
    assert!(
        plan.contains("gcloud storage rm gs://proj-1-pvmc/pvmc-test.tar.gz"),
        "{plan}"
    );
    assert!(plan.contains("nothing was created"), "{plan}");
    assert!(w.calls().is_empty(), "a dry run calls no gcloud");
}
