//! The `cargo xtask` command line as a user meets it, run as a process (the debug build of
//! the xtask binary):
//! - a corpus of bad inputs, each a one-line error on stderr with exit status 2, never a panic;
//! - SIGINT and SIGTERM in the middle of a run: an interrupted report holding every finished
//!   instance once, exit 130/143, and `--resume` completing it with every instance exactly once;
//! - a second run into the same outputs refused at once, naming the first;
//! - `--list | head -1` exits 0; a full stdout is an error, not a panic;
//! - `--require-kvm` without a usable KVM device exits 2; without the flag everything SKIPs;
//! - `certify`: bad reports, profiles and outputs are one-line errors with status 2; the
//!   verdict decides between 0 (certified, with or without deviations) and 1;
//! - `diff`: exactly the changed instances, exit 0/1 by them, 2 for bad input;
//! - host health: a bad-class kernel-log line (fed through a FIFO standing in for
//!   `/dev/kmsg`) fails the run with exit 1 and lands in the report with its instance; an
//!   unreadable log is reported as unwatched.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::Value;

mod support;
use support::{image, read_report, xtask};

fn kvm_usable() -> bool {
    runner::kvm::Kvm::open().is_ok()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run xtask: {e}"))
}

/// Asserts a usage/setup error: exit 2, no panic, and (for our own errors) exactly one
/// `error:` line on stderr that mentions `keyword`.
fn assert_bad(out: &Output, what: &str, keyword: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what}: status {:?}, stderr:\n{err}",
        out.status
    );
    assert!(!err.contains("panicked"), "{what}: panicked:\n{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        errors.len(),
        1,
        "{what}: want one error line, stderr:\n{err}"
    );
    assert!(
        errors[0].to_lowercase().contains(&keyword.to_lowercase()),
        "{what}: error line {:?} does not mention {keyword:?}",
        errors[0]
    );
}

/// An image with `patch` applied to its bytes (given the parsed ELF).
fn patched(
    dir: &Path,
    name: &str,
    patch: impl FnOnce(&mut Vec<u8>, &goblin::elf::Elf<'_>),
) -> PathBuf {
    let bytes = std::fs::read(image()).expect("image readable");
    let elf = goblin::elf::Elf::parse(&bytes).expect("image is ELF");
    let mut out = bytes.clone();
    patch(&mut out, &elf);
    let p = dir.join(name);
    std::fs::write(&p, out).expect("write patched image");
    p
}

fn case_section(elf: &goblin::elf::Elf<'_>) -> usize {
    elf.section_headers
        .iter()
        .find(|s| elf.shdr_strtab.get_at(s.sh_name) == Some(abi::case::CASE_SECTION))
        .map(|s| s.sh_offset as usize)
        .expect("case section")
}

fn rodata(elf: &goblin::elf::Elf<'_>) -> u64 {
    elf.program_headers
        .iter()
        .find(|p| p.p_type == goblin::elf::program_header::PT_LOAD && p.p_flags & 1 == 0)
        .map(|p| p.p_vaddr)
        .expect("a non-executable segment")
}

fn first_load(elf: &goblin::elf::Elf<'_>) -> usize {
    let i = elf
        .program_headers
        .iter()
        .position(|p| p.p_type == goblin::elf::program_header::PT_LOAD)
        .expect("a PT_LOAD");
    elf.header.e_phoff as usize + i * elf.header.e_phentsize as usize
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn bad_inputs_are_one_line_errors_with_status_2() {
    let d = tempfile::tempdir().expect("tempdir");
    let dir = d.path();
    let report = dir.join("out/report.json");
    let rep = report.to_str().expect("utf-8").to_string();
    let img = image().to_str().expect("utf-8").to_string();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p.to_str().expect("utf-8").to_string()
    };
    let dev = |id: &str, outcome: &str, reason: &str| {
        format!("[[deviation]]\nid = \"{id}\"\noutcome = \"{outcome}\"\nreason = \"{reason}\"\n")
    };
    let known = "io.port_out_in~hvm64";
    let ex_unknown = write("unknown.toml", &dev("io.nope~hvm64", "fail", "r"));
    let ex_pass = write("pass.toml", &dev(known, "pass", "r"));
    let ex_dup = write("dup.toml", &format!("{0}{0}", dev(known, "fail", "r")));
    let ex_field = write(
        "field.toml",
        &format!("{}bogus = 1\n", dev(known, "fail", "r")),
    );
    let ex_reason = write("reason.toml", &dev(known, "fail", " "));
    let ex_syntax = write("syntax.toml", "[[deviation]\nid =");
    let not_elf = write("notelf", "hello");
    let img_entry = patched(dir, "entry", |b, elf| {
        let r = rodata(elf);
        put_u64(b, 0x18, r)
    });
    let img_filesz = patched(dir, "filesz", |b, elf| {
        let ph = first_load(elf);
        let memsz = u64::from_le_bytes(b[ph + 0x28..ph + 0x30].try_into().expect("8"));
        put_u64(b, ph + 0x20, memsz + 0x1000);
    });
    let img_case_entry = patched(dir, "case-entry", |b, elf| {
        let s = case_section(elf);
        let r = rodata(elf);
        put_u64(b, s + abi::case::ENTRY_OFFSET, r);
    });
    let img_dup = patched(dir, "dup", |b, elf| {
        let s = case_section(elf);
        let size = abi::case::CASE_DESC_SIZE;
        let name: Vec<u8> = b[s + 24..s + 24 + abi::case::NAME_LEN].to_vec();
        b[s + size + 24..s + size + 24 + abi::case::NAME_LEN].copy_from_slice(&name);
    });
    let img_empty = patched(dir, "empty", |b, elf| {
        let s = case_section(elf);
        b[s + 24..s + 24 + abi::case::NAME_LEN].fill(0);
    });
    let img_magic = patched(dir, "magic", |b, elf| {
        let s = case_section(elf);
        b[s..s + 4].fill(0);
    });
    let img_vcpus = patched(dir, "vcpus", |b, elf| {
        let s = case_section(elf);
        b[s + 20..s + 22].fill(0);
    });
    let img_area = patched(dir, "area", |b, elf| {
        let s = case_section(elf);
        b[s + 6] = 200;
    });
    let img_trunc = patched(dir, "trunc", |b, _| {
        let n = b.len() / 2;
        b.truncate(n);
    });
    let p = |p: &PathBuf| p.to_str().expect("utf-8").to_string();
    let bad_jsonl_dir = dir.join("badlog");
    std::fs::create_dir_all(&bad_jsonl_dir).expect("mkdir");
    std::fs::write(bad_jsonl_dir.join("report.jsonl"), "{not json}\n{}\n").expect("write");
    let bad_log = p(&bad_jsonl_dir.join("report.json"));

    let conf = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["conformance".into()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let with_image = |image: &str, extra: &[&str]| -> Vec<String> {
        let mut v = conf(&["--report", &rep, "--image", image]);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let corpus: Vec<(&str, Vec<String>, &str)> = vec![
        ("timeout 0", conf(&["--timeout-ms", "0"]), "timeout"),
        (
            "timeout below floor",
            conf(&["--timeout-ms", "50"]),
            "timeout",
        ),
        (
            "timeout above an hour",
            conf(&["--timeout-ms", "99999999999"]),
            "timeout",
        ),
        ("jobs 0", conf(&["--jobs", "0"]), "jobs"),
        ("jobs 1000", conf(&["--jobs", "1000"]), "jobs"),
        ("unknown env", conf(&["--env", "bogus"]), "environment"),
        ("empty env", conf(&["--env", "hvm64,"]), "environment"),
        (
            "gce without its options",
            conf(&["--target", "gce"]),
            "--project",
        ),
        (
            "gce with a bad zone",
            conf(&[
                "--target",
                "gce",
                "--project",
                "p",
                "--zone",
                "Z 1",
                "--host-image",
                "i.tar.gz",
            ]),
            "--zone",
        ),
        (
            "--param-set without a host image",
            conf(&["--target", "qemu", "--param-set", "x"]),
            "--param-set",
        ),
        (
            "gce options on the local target",
            conf(&["--project", "p"]),
            "--target gce",
        ),
        ("ssh without --host", conf(&["--target", "ssh"]), "--host"),
        (
            "--host on the local target",
            conf(&["--host", "root@127.0.0.1"]),
            "--host",
        ),
        (
            "--ssh-option not KEY=VALUE",
            conf(&["--target", "ssh", "--host", "h", "--ssh-option", "Port"]),
            "KEY=VALUE",
        ),
        (
            "ssh destination that is an option",
            conf(&["--target", "ssh", "--host=-oProxyCommand=x"]),
            "destination",
        ),
        (
            "fault switch on the local target",
            conf(&["--fault", "out-truncated"]),
            "--target model",
        ),
        (
            "unknown fault switch",
            conf(&["--target", "model", "--env", "pv-v2", "--fault", "bogus"]),
            "no such fault switch",
        ),
        (
            "bench on the model",
            vec!["bench".into(), "--target".into(), "model".into()],
            "--target local",
        ),
        (
            "report is a directory",
            conf(&["--report", dir.to_str().expect("utf-8")]),
            "directory",
        ),
        (
            "report dir not creatable",
            conf(&["--report", "/proc/pvmc/report.json"]),
            "directory",
        ),
        (
            "report ends in slash",
            conf(&["--report", "out/"]),
            "directory",
        ),
        (
            "junit same as report",
            conf(&["--report", &rep, "--junit", &rep]),
            "same file",
        ),
        (
            "junit on the progress log",
            conf(&["--report", &rep, "--junit", &rep.replace(".json", ".jsonl")]),
            "same file",
        ),
        (
            "report on its own progress log",
            conf(&["--report", &rep.replace(".json", ".jsonl")]),
            "same file",
        ),
        (
            "junit is a directory",
            conf(&["--junit", dir.to_str().expect("utf-8")]),
            "directory",
        ),
        ("list with resume", conf(&["--list", "--resume"]), "resume"),
        (
            "expectations missing",
            conf(&["--expectations", "/nonexistent.toml"]),
            "expectations",
        ),
        (
            "expectations syntax",
            conf(&["--expectations", &ex_syntax]),
            "expectations",
        ),
        (
            "expectations unknown instance",
            with_image(&img, &["--expectations", &ex_unknown]),
            "io.nope~hvm64",
        ),
        (
            "expectations unknown instance with --list",
            vec![
                "conformance".into(),
                "--list".into(),
                "--image".into(),
                img.clone(),
                "--expectations".into(),
                ex_unknown.clone(),
            ],
            "io.nope~hvm64",
        ),
        (
            "expectations outcome pass",
            conf(&["--expectations", &ex_pass]),
            "outcome",
        ),
        (
            "expectations duplicate",
            conf(&["--expectations", &ex_dup]),
            "twice",
        ),
        (
            "expectations unknown field",
            conf(&["--expectations", &ex_field]),
            "bogus",
        ),
        (
            "expectations empty reason",
            conf(&["--expectations", &ex_reason]),
            "reason",
        ),
        (
            "image missing",
            with_image("/nonexistent/guest", &[]),
            "/nonexistent/guest",
        ),
        ("image not ELF", with_image(&not_elf, &[]), "not an ELF"),
        ("image truncated", with_image(&p(&img_trunc), &[]), "trunc"),
        (
            "entry outside executable segments",
            with_image(&p(&img_entry), &[]),
            "entry point",
        ),
        (
            "p_filesz > p_memsz",
            with_image(&p(&img_filesz), &[]),
            "p_filesz",
        ),
        (
            "case entry not executable",
            with_image(&p(&img_case_entry), &[]),
            "executable segment",
        ),
        (
            "duplicate case names",
            with_image(&p(&img_dup), &[]),
            "declared twice",
        ),
        (
            "empty case name",
            with_image(&p(&img_empty), &[]),
            "empty name",
        ),
        (
            "bad descriptor magic",
            with_image(&p(&img_magic), &[]),
            "magic",
        ),
        ("zero vCPUs", with_image(&p(&img_vcpus), &[]), "vcpus"),
        (
            "unknown area",
            with_image(&p(&img_area), &[]),
            "unknown area",
        ),
        (
            "filter matches nothing",
            with_image(&img, &["--filter", "no-such-case"]),
            "matches no case",
        ),
        (
            "resume without a log",
            conf(&[
                "--resume",
                "--image",
                &img,
                "--report",
                &p(&dir.join("fresh/report.json")),
            ]),
            "resume",
        ),
        (
            "resume from a garbled log",
            conf(&["--resume", "--image", &img, "--report", &bad_log]),
            "line 1",
        ),
        (
            "bench repetitions 1",
            vec!["bench".into(), "--repetitions".into(), "1".into()],
            "repetitions",
        ),
        (
            "bench timeout 0",
            vec!["bench".into(), "--timeout-ms".into(), "0".into()],
            "timeout",
        ),
        (
            "bench compare missing",
            vec![
                "bench".into(),
                "--compare".into(),
                "/nonexistent/a.json".into(),
                "/nonexistent/b.json".into(),
            ],
            "/nonexistent/a.json",
        ),
        (
            "bench compare not a report",
            vec![
                "bench".into(),
                "--compare".into(),
                not_elf.clone(),
                not_elf.clone(),
            ],
            "not a bench report",
        ),
        (
            "bench on a remote target",
            vec!["bench".into(), "--target".into(), "gce".into()],
            "benchmarks run on",
        ),
    ];
    assert!(corpus.len() >= 25, "the corpus has {} inputs", corpus.len());
    for (what, args, keyword) in &corpus {
        let out = run(xtask().args(args).current_dir(dir));
        assert_bad(&out, what, keyword);
    }
    // clap's own usage errors: exit 2, no panic.
    let out = run(xtask().args(["conformance", "--bogus"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

fn jsonl_ids(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["result"]["id"].as_str().map(String::from))
        .collect()
}

fn report_ids(r: &Value) -> Vec<String> {
    r["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .filter_map(|c| c["id"].as_str().map(String::from))
        .collect()
}

fn wait_for_lines(path: &Path, n: usize, child: &mut std::process::Child) {
    let t0 = Instant::now();
    while jsonl_ids(path).len() < n {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the run ended before {n} instances finished"
        );
        assert!(t0.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &std::process::Child, sig: Signal) {
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
    nix::sys::signal::kill(pid, sig).unwrap_or_else(|e| panic!("kill {sig} {pid}: {e}"));
}

fn long_run(report: &Path) -> Command {
    let mut c = xtask();
    c.args(["conformance", "--selftest", "--jobs", "1", "--report"])
        .arg(report)
        .arg("--image")
        .arg(image())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn assert_each_once(ids: &[String]) {
    let set: HashSet<&String> = ids.iter().collect();
    assert_eq!(set.len(), ids.len(), "an instance appears twice: {ids:?}");
}

#[test]
fn interrupted_runs_report_what_finished_and_resume_completes_them() {
    if !kvm_usable() {
        eprintln!("no usable /dev/kvm: skipping the interruption test");
        return;
    }
    let d = tempfile::tempdir().expect("tempdir");
    for (sig, code) in [(Signal::SIGINT, 130), (Signal::SIGTERM, 143)] {
        let report = d.path().join(format!("{}/report.json", sig as i32));
        let progress = report.with_extension("jsonl");
        let mut child = long_run(&report).spawn().expect("spawn");
        wait_for_lines(&progress, 3, &mut child);
        signal(&child, sig);
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "stderr:\n{err}");
        assert!(!err.contains("panicked"), "{err}");
        let r = read_report(&report);
        assert_eq!(r["interrupted"], true);
        assert_eq!(r["state"], "interrupted");
        let ids = report_ids(&r);
        assert_each_once(&ids);
        let logged = jsonl_ids(&progress);
        assert_each_once(&logged);
        assert_eq!(
            ids.iter().collect::<HashSet<_>>(),
            logged.iter().collect::<HashSet<_>>(),
            "the report holds exactly the finished instances"
        );
        assert!(ids.len() < r["summary"]["selected"].as_u64().expect("selected") as usize);
        for l in std::fs::read_to_string(&progress).expect("log").lines() {
            let v: Value = serde_json::from_str(l).expect("line is JSON");
            assert_eq!(
                v["run"]["run_id"], r["run"]["run_id"],
                "every line names the run"
            );
            assert!(v["run"]["host"]["kernel"].is_string() && v["run"]["started"].is_string());
        }
        if sig == Signal::SIGINT {
            // Resume the SIGINT run here; the SIGTERM round starts a fresh one.
            let out = run(long_run(&report).arg("--resume"));
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(1),
                "selftests FAIL by design; stderr:\n{err}"
            );
            assert!(err.contains("resuming run"), "{err}");
            let r2 = read_report(&report);
            assert_eq!(r2["state"], "complete");
            assert_eq!(r2["interrupted"], false);
            assert_eq!(
                r2["run"]["run_id"], r["run"]["run_id"],
                "the resumed run keeps its id"
            );
            let all = report_ids(&r2);
            assert_each_once(&all);
            assert_eq!(
                all.len() as u64,
                r2["summary"]["selected"].as_u64().expect("n")
            );
            assert_eq!(
                jsonl_ids(&progress).len(),
                all.len(),
                "finished instances were not repeated"
            );
        }
    }
}

#[test]
fn a_second_run_into_the_same_outputs_is_refused() {
    if !kvm_usable() {
        eprintln!("no usable /dev/kvm: the first run would end at once; skipping");
        return;
    }
    let d = tempfile::tempdir().expect("tempdir");
    let report = d.path().join("report.json");
    let lock = conformance::output::lock_path(&report);
    // Nobody reads the first run's stderr: a pipe would fill with its progress lines and
    // block it (seen under load: it never got to its SIGINT).
    let mut first = long_run(&report)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let t0 = Instant::now();
    while std::fs::read_to_string(&lock).map_or(true, |s| s.is_empty()) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the first run never locked"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let t = Instant::now();
    let second = run(long_run(&report).stderr(Stdio::piped()));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the refusal was not at once"
    );
    assert_bad(&second, "second run", "another run");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains(&format!("pid {}", first.id())), "{err}");
    signal(&first, Signal::SIGINT);
    let _ = first.wait();
}

#[test]
fn list_into_a_closed_pipe_exits_0_and_into_a_full_disk_exits_2() {
    let mut child = xtask()
        .args(["conformance", "--list", "--selftest", "--image"])
        .arg(image())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("a line");
    assert!(first.contains('~'), "{first}");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let out = run(xtask()
        .args(["conformance", "--list", "--image"])
        .arg(image())
        .stdout(full));
    assert_bad(&out, "--list > /dev/full", "stdout");
}

#[test]
fn require_kvm_turns_nothing_could_run_into_status_2() {
    let d = tempfile::tempdir().expect("tempdir");
    let report = d.path().join("r.json");
    let base = |c: &mut Command| {
        c.args(["conformance", "--filter", "io.", "--report"])
            .arg(&report)
            .arg("--image")
            .arg(image())
            .env("PVMC_KVM_PATH", "/nonexistent/kvm");
    };
    let mut c = xtask();
    base(&mut c);
    let out = run(c.arg("--require-kvm"));
    assert_bad(&out, "--require-kvm without KVM", "require-kvm");
    let mut c = xtask();
    base(&mut c);
    let out = run(&mut c);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = read_report(&report);
    let cases = r["cases"].as_array().expect("cases");
    assert!(!cases.is_empty());
    assert!(
        cases
            .iter()
            .all(|c| c["outcome"] == "skip"
                && c["detail"].as_str().is_some_and(|d| d.contains("KVM")))
    );
}

#[test]
fn duplicate_environments_are_merged_and_other_dialects_skip() {
    let list = |envs: &str| {
        let out = run(xtask()
            .args(["conformance", "--list", "--env", envs, "--image"])
            .arg(image()));
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let once = list("hvm64");
    assert_eq!(
        list("hvm64,hvm64"),
        once,
        "--env hvm64,hvm64 lists each instance once"
    );
    assert!(list("pv-v1").contains("~pv-v1"), "pv-v1 has instances");
    let d = tempfile::tempdir().expect("tempdir");
    let report = d.path().join("r.json");
    let out = run(xtask()
        .args([
            "conformance",
            "--env",
            "pv-v1",
            "--filter",
            "io.",
            "--report",
        ])
        .arg(&report)
        .arg("--image")
        .arg(image()));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = read_report(&report);
    let cases = r["cases"].as_array().expect("cases");
    assert!(!cases.is_empty());
    assert!(cases.iter().all(|c| {
        c["outcome"] == "skip"
            && c["detail"]
                .as_str()
                .is_some_and(|d| d.contains("needs the upstream-v1 dialect"))
    }));
}

#[test]
fn certify_bad_inputs_are_one_line_errors_with_status_2() {
    let d = tempfile::tempdir().expect("tempdir");
    let dir = d.path();
    let p = |p: &Path| p.to_str().expect("utf-8").to_string();
    let write = |name: &str, text: &str| {
        let f = dir.join(name);
        std::fs::write(&f, text).expect("write");
        p(&f)
    };
    let report = p(&support::write_report(
        dir,
        "report.json",
        support::Variant::Deviating,
    ));
    let profile = p(&support::local_host_profile());
    let html = p(&dir.join("out/certificate.html"));
    let malformed = write(
        "malformed.json",
        "{\"schema\": \"pvm-conformance/report/v2\", ",
    );
    let not_report = write("other.json", "{\"name\": \"something else\"}");
    let good_profile = std::fs::read_to_string(&profile).expect("local-host profile");
    let field = write("field.toml", &format!("{good_profile}bogus_field = 1\n"));
    let env = write(
        "env.toml",
        &good_profile.replace("\"pv-local\"]", "\"pv-v9\"]"),
    );
    let syntax = write("syntax.toml", "name = [\n");
    let certify = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["certify".into()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let corpus: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "missing report",
            certify(&["--report", "/nonexistent/report.json", "--html", &html]),
            "/nonexistent/report.json",
        ),
        (
            "malformed report JSON",
            certify(&["--report", &malformed, "--html", &html]),
            "not JSON",
        ),
        (
            "JSON that is not a report",
            certify(&["--report", &not_report, "--html", &html]),
            "no \"schema\" field",
        ),
        (
            "unknown profile field",
            certify(&["--report", &report, "--profile", &field, "--html", &html]),
            "bogus_field",
        ),
        (
            "unknown env in profile",
            certify(&["--report", &report, "--profile", &env, "--html", &html]),
            "unknown environment \"pv-v9\"",
        ),
        (
            "profile syntax",
            certify(&["--report", &report, "--profile", &syntax, "--html", &html]),
            "line 1",
        ),
        (
            "missing profile",
            certify(&[
                "--report",
                &report,
                "--profile",
                "/nonexistent/p.toml",
                "--html",
                &html,
            ]),
            "/nonexistent/p.toml",
        ),
        (
            "bench that is not a bench report",
            certify(&["--report", &report, "--bench", &report, "--html", &html]),
            "not a pvm-conformance bench report",
        ),
        (
            "html is a directory",
            certify(&["--report", &report, "--html", &p(dir)]),
            "directory",
        ),
        (
            "html over the report",
            certify(&["--report", &report, "--html", &report]),
            "same file",
        ),
        (
            "json over the html",
            certify(&["--report", &report, "--html", &html, "--json", &html]),
            "same file",
        ),
    ];
    for (what, args, keyword) in &corpus {
        let out = run(xtask().args(args).current_dir(dir));
        assert_bad(&out, what, keyword);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.is_empty(), "{what}: printed a verdict:\n{stdout}");
    }
    assert!(
        !dir.join("out/certificate.html").exists(),
        "bad input wrote a certificate"
    );
}

#[test]
fn certify_exits_by_verdict() {
    let d = tempfile::tempdir().expect("tempdir");
    let dir = d.path();
    let report = support::write_report(dir, "report.json", support::Variant::Deviating);
    let accepting = dir.join("accepting.toml");
    std::fs::write(&accepting, support::ACCEPTING_PROFILE).expect("write profile");
    let html = dir.join("certificate.html");
    let json = dir.join("verdict.json");
    for (profile, status, verdict) in [
        (support::local_host_profile(), 1, "NOT CERTIFIED"),
        (accepting, 0, "CERTIFIED WITH DEVIATIONS"),
    ] {
        let out = run(xtask().args([
            "certify".as_ref(),
            "--report".as_ref(),
            report.as_os_str(),
            "--profile".as_ref(),
            profile.as_os_str(),
            "--html".as_ref(),
            html.as_os_str(),
            "--json".as_ref(),
            json.as_os_str(),
        ]));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(status),
            "{}: {stdout}",
            profile.display()
        );
        assert!(
            stdout.starts_with(&format!("{verdict}: profile ")),
            "{stdout}"
        );
        let page = std::fs::read_to_string(&html).expect("certificate written");
        assert!(page.contains(&format!("id=\"verdict\">{verdict}<")));
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("json"))
            .expect("verdict JSON");
        assert_eq!(v["verdict"], verdict);
        assert_eq!(v["schema"], "pvm-conformance/certificate/v1");
    }
    let out = run(xtask().args(["certify", "--bogus"]));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_bad_kernel_log_line_fails_the_run_and_an_unreadable_log_is_unwatched() {
    if !kvm_usable() {
        eprintln!("skipped: no usable /dev/kvm");
        return;
    }
    let d = tempfile::tempdir().expect("tempdir");
    let fifo = d.path().join("kmsg");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let report = d.path().join("r.json");
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            // Blocks until the run opens its end, then logs one line as the kernel would.
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(&fifo)
                .expect("open fifo");
            std::io::Write::write_all(
                &mut f,
                b"4,100,200,-;WARNING: CPU: 0 PID: 1 at injected.c:1 test_case+0x0/0x10\n",
            )
            .expect("write fifo");
            // Keep the writer open until the run is over (EOF is not an error either way).
            std::thread::sleep(Duration::from_secs(5));
        })
    };
    let out = run(xtask()
        .args([
            "conformance",
            "--filter",
            "vmm.msr_sync.star~hvm64",
            "--report",
        ])
        .arg(&report)
        .arg("--image")
        .arg(image())
        .env("PVMC_KMSG_PATH", &fifo));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a bad log line must fail the run:\n{err}"
    );
    assert!(err.contains("host health: bad"), "{err}");
    let r = read_report(&report);
    let bad = &r["host_health"]["bad_lines"][0];
    assert_eq!(bad["class"], "warning", "{r}");
    assert_eq!(bad["instance"], "vmm.msr_sync.star~hvm64", "{r}");
    assert_eq!(r["host_health"]["fresh_boot"], true, "{r}");
    assert!(
        r["cases"][0]["kernel_log"][0]
            .as_str()
            .is_some_and(|l| l.contains("injected.c")),
        "{r}"
    );
    drop(writer);

    let out = run(xtask()
        .args([
            "conformance",
            "--filter",
            "vmm.msr_sync.star~hvm64",
            "--report",
        ])
        .arg(&report)
        .arg("--image")
        .arg(image())
        .env("PVMC_KMSG_PATH", "/nonexistent/kmsg"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("host health: unwatched: /nonexistent/kmsg"),
        "{err}"
    );
}

#[test]
fn diff_lists_exactly_the_changed_instances_and_exits_by_them() {
    let d = tempfile::tempdir().expect("tempdir");
    let a = support::write_report(d.path(), "a.json", support::Variant::Deviating);
    let b = support::write_report(d.path(), "b.json", support::Variant::Failing);
    let same = run(xtask().args(["diff"]).arg(&a).arg(&a));
    let out = String::from_utf8_lossy(&same.stdout);
    assert_eq!(same.status.code(), Some(0), "{out}");
    assert!(out.contains("0 instance(s) differ"), "{out}");
    let changed = run(xtask().args(["diff"]).arg(&a).arg(&b));
    let out = String::from_utf8_lossy(&changed.stdout);
    assert_eq!(changed.status.code(), Some(1), "{out}");
    // The failing variant changes one instance from PASS to FAIL.
    assert!(out.contains("1 instance(s) differ"), "{out}");
    assert!(out.contains("PASS -> FAIL"), "{out}");
    // --env keeps the instances of those environments only.
    let env = out
        .lines()
        .find(|l| l.contains("PASS -> FAIL"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|id| id.rsplit_once('~'))
        .map(|(_, e)| e.to_string())
        .expect("the changed instance's environment");
    let other = if env == "hvm64" { "pv-local" } else { "hvm64" };
    let only = |e: &str| run(xtask().args(["diff", "--env", e]).arg(&a).arg(&b));
    assert_eq!(only(&env).status.code(), Some(1), "--env {env}");
    let none = only(other);
    let out = String::from_utf8_lossy(&none.stdout);
    assert_eq!(none.status.code(), Some(0), "--env {other}: {out}");
    assert_bad(&only("bogus"), "diff --env bogus", "bogus");
    // --common leaves out what one report lacks: a report against itself minus nothing.
    let common = run(xtask().args(["diff", "--common"]).arg(&a).arg(&b));
    assert_eq!(
        common.status.code(),
        Some(1),
        "the changed instance is in both"
    );
    let missing = run(xtask()
        .args(["diff"])
        .arg(&a)
        .arg(d.path().join("none.json")));
    assert_bad(&missing, "diff of a missing report", "none.json");
    let not_json = d.path().join("x.json");
    std::fs::write(&not_json, "{").expect("write");
    assert_bad(
        &run(xtask().args(["diff"]).arg(&not_json).arg(&a)),
        "diff of bad JSON",
        "x.json",
    );
}

/// The reference model with a fault switch on against the clean model: `cargo xtask diff`
/// lists exactly the instances whose outcome the switch changed (computed here from the two
/// reports), and exits 1.
#[test]
fn model_diff_lists_exactly_what_a_fault_switch_changes() {
    let d = tempfile::tempdir().expect("tempdir");
    let report = |name: &str, faults: &[&str]| {
        let path = d.path().join(name);
        let mut cmd = xtask();
        cmd.args([
            "conformance",
            "--target",
            "model",
            "--env",
            "pv-v2",
            "--filter",
            "paging.access",
            "--jobs",
            "2",
            "--report",
        ])
        .arg(&path)
        .arg("--image")
        .arg(image());
        for f in faults {
            cmd.args(["--fault", f]);
        }
        let out = run(&mut cmd);
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        path
    };
    let clean = report("clean.json", &[]);
    let faulty = report("faulty.json", &["ignore-nx"]);
    let outcomes = |p: &Path| -> std::collections::BTreeMap<String, String> {
        read_report(p)["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .map(|c| {
                (
                    c["id"].as_str().expect("id").to_string(),
                    c["outcome"].as_str().expect("outcome").to_string(),
                )
            })
            .collect()
    };
    let (a, b) = (outcomes(&clean), outcomes(&faulty));
    assert!(
        a.values().all(|o| o == "pass"),
        "the clean model passes: {a:?}"
    );
    let want: std::collections::BTreeSet<&String> =
        a.keys().filter(|id| a.get(*id) != b.get(*id)).collect();
    assert!(
        !want.is_empty(),
        "ignore-nx changes some paging.access instance"
    );
    let out = run(xtask().args(["diff"]).arg(&clean).arg(&faulty));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let listed: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.contains("~pv-v2") && l.contains("->"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let want: std::collections::BTreeSet<&str> = want.iter().map(|s| s.as_str()).collect();
    assert_eq!(listed, want, "{text}");
    assert!(
        text.contains(&format!("{} instance(s) differ", want.len())),
        "{text}"
    );
}

/// `cargo xtask host-check` on this machine: the table, the local PVM backend and dialect,
/// exit 0.
#[test]
fn host_check_prints_the_table_and_detects_the_local_pvm_backend() {
    if !kvm_usable() {
        assert!(
            std::env::var_os("PVMC_REQUIRE_KVM").is_none(),
            "PVMC_REQUIRE_KVM is set but /dev/kvm is not usable"
        );
        return;
    }
    let out = run(xtask().arg("host-check"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for row in [
        "/dev/kvm",
        "KVM vendor module",
        "PVM dialect",
        "CPU features",
        "KPTI",
    ] {
        assert!(text.contains(row), "no {row} row: {text}");
    }
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert!(text.contains("kvm-pvm (a PVM host)"), "{text}");
        assert!(
            text.contains("PVM dialect              : PASS  local"),
            "{text}"
        );
    }
}

/// `--shard K/N` splits a selection deterministically and `cargo xtask merge` joins the
/// shards' reports into one holding every instance once, in the selection's order; merging a
/// report with itself is refused.
#[test]
fn shards_merge_into_one_report_with_every_instance_once() {
    if !kvm_usable() {
        return;
    }
    let d = tempfile::tempdir().expect("tempdir");
    let listed = run(xtask()
        .args([
            "conformance",
            "--list",
            "--env",
            "hvm64",
            "--filter",
            "io.port",
        ])
        .arg("--image")
        .arg(image()));
    let all: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|l| l.contains('~'))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert!(all.len() >= 3, "enough instances to shard: {all:?}");
    let mut parts = Vec::new();
    for k in 1..=3 {
        let path = d.path().join(format!("shard{k}.json"));
        let out = run(xtask()
            .args(["conformance", "--env", "hvm64", "--filter", "io.port"])
            .args(["--shard", &format!("{k}/3"), "--report"])
            .arg(&path)
            .arg("--image")
            .arg(image()));
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        parts.push(path);
    }
    let merged = d.path().join("merged.json");
    let out = run(xtask()
        .arg("merge")
        .args(&parts)
        .arg("--report")
        .arg(&merged));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = read_report(&merged);
    let ids: Vec<String> = r["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| c["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(ids, all, "every instance once, in the selection's order");
    assert_eq!(r["summary"]["total"], all.len());
    let twice = run(xtask()
        .arg("merge")
        .arg(&parts[0])
        .arg(&parts[0])
        .arg("--report")
        .arg(d.path().join("bad.json")));
    assert_bad(
        &twice,
        "a report merged with itself",
        "has a result in reports",
    );
    assert_bad(
        &run(xtask().args(["conformance", "--shard", "3/2"])),
        "shard beyond the count",
        "shard",
    );
}
