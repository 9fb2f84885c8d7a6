//! `--target ssh` end to end, against an OpenSSH server on loopback that the test starts
//! itself (its own host key, client key and configuration in a temporary directory; nothing
//! of the machine's ssh setup is used or changed):
//! - a run streams every selected instance back once, with the outcomes a local run of the
//!   same selection (deterministic cases: privileged instructions, page faults, port I/O) has
//!   (`cargo xtask diff` finds none that differ), and leaves nothing behind on the remote;
//! - SIGINT in the middle: exit 130, an interrupted report, and the remote directory removed;
//! - an unreachable host is a one-line error with status 2.
//!
//! Without `/usr/sbin/sshd` (package openssh-server, which `ci/setup.sh` installs) or a
//! usable `/dev/kvm` the tests say so and pass, unless `PVMC_REQUIRE_SSHD=1` (CI) makes a
//! missing sshd a failure.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;
use support::{image, read_report};

/// The `pvmc-worker` binary, built once for the tests here before any of them starts a run:
/// left to the run, the build falls inside the interrupted run's progress deadline (on a clean
/// clone it compiles the worker's dependencies, two tests at once, for more than a minute).
fn worker() -> &'static Path {
    static WORKER: OnceLock<PathBuf> = OnceLock::new();
    WORKER.get_or_init(|| {
        let root = conformance::guest_build::workspace_root();
        conformance::target::ssh::worker_binary(&root)
            .unwrap_or_else(|e| panic!("pvmc-worker: {e}"))
    })
}

/// `cargo xtask` with the worker already built ([`worker`]).
fn xtask() -> Command {
    let mut c = support::xtask();
    c.env(conformance::target::ssh::WORKER_BIN_VAR, worker());
    c
}

const SSHD: &str = "/usr/sbin/sshd";

/// An sshd on a free loopback port, killed on drop.
struct Sshd {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    user: String,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sh(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The sshd, or `None` (after saying why) when this machine cannot run the test.
fn sshd() -> Option<Sshd> {
    if runner::kvm::Kvm::open().is_err() {
        eprintln!("no usable /dev/kvm: the remote worker could run nothing; skipping");
        return None;
    }
    if !Path::new(SSHD).exists() {
        assert!(
            std::env::var("PVMC_REQUIRE_SSHD").as_deref() != Ok("1"),
            "PVMC_REQUIRE_SSHD=1 but {SSHD} is missing (ci/setup.sh installs openssh-server)"
        );
        eprintln!("{SSHD} is missing (package openssh-server): skipping the ssh target test");
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    for key in ["host_key", "user_key"] {
        sh(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(d.join(key)));
    }
    std::fs::copy(d.join("user_key.pub"), d.join("authorized_keys")).expect("authorized_keys");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n\
         AuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\nStrictModes no\n\
         UsePAM no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n",
        d = d.display()
    );
    std::fs::write(d.join("sshd_config"), config).expect("config");
    // sshd refuses to start without its privilege-separation directory.
    let _ = std::fs::create_dir_all("/run/sshd");
    let child = Command::new(SSHD)
        .args(["-D", "-e", "-f"])
        .arg(d.join("sshd_config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("sshd.log")).expect("log"))
        .spawn()
        .expect("start sshd");
    let user = String::from_utf8(sh(Command::new("id").arg("-un")).stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    let s = Sshd {
        child,
        dir,
        port,
        user,
    };
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "sshd did not listen: {}",
            std::fs::read_to_string(s.dir.path().join("sshd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(s)
}

impl Sshd {
    fn args(&self) -> Vec<String> {
        let mut a = vec!["--host".to_string(), format!("{}@127.0.0.1", self.user)];
        for o in [
            format!("Port={}", self.port),
            format!(
                "IdentityFile={}",
                self.dir.path().join("user_key").display()
            ),
            "StrictHostKeyChecking=no".into(),
            "UserKnownHostsFile=/dev/null".into(),
            "LogLevel=ERROR".into(),
        ] {
            a.push("--ssh-option".into());
            a.push(o);
        }
        a
    }
}

/// The remote directory the run announced (`ssh: working in DEST:DIR`).
fn remote_dir(stderr: &str) -> PathBuf {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("ssh: working in "))
        .unwrap_or_else(|| panic!("no working directory announced:\n{stderr}"));
    PathBuf::from(line.rsplit_once(':').expect("DEST:DIR").1)
}

fn ids(report: &Value) -> Vec<String> {
    report["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| c["id"].as_str().expect("id").to_string())
        .collect()
}

#[test]
fn a_run_over_ssh_matches_a_local_run_and_leaves_nothing_behind() {
    let Some(sshd) = sshd() else { return };
    let d = tempfile::tempdir().expect("tempdir");
    let run = |target: &str, report: &Path, extra: &[String]| {
        xtask()
            .args(["conformance", "--target", target, "--env", "hvm64,pv-local"])
            // Deterministic cases only: both runs share the machine with the other tests, and
            // a timing case (host clock against the TSC, say) may go either way under load.
            .args([
                "--filter",
                "priv.cpl3_gp.",
                "--filter",
                "paging.pf_",
                "--filter",
                "io.port",
            ])
            .args(["--jobs", "2", "--report"])
            .arg(report)
            .arg("--image")
            .arg(image())
            .args(extra)
            .output()
            .expect("run xtask")
    };
    let (remote, local) = (d.path().join("ssh.json"), d.path().join("local.json"));
    let out = run("ssh", &remote, &sshd.args());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let dir = remote_dir(&err);
    assert!(!dir.exists(), "{} is left on the remote", dir.display());
    let r = read_report(&remote);
    assert_eq!(r["run"]["target"], "ssh");
    let got = ids(&r);
    let unique: std::collections::HashSet<_> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "every instance once");
    assert_eq!(
        got.len() as u64,
        r["summary"]["selected"].as_u64().expect("n")
    );
    assert!(r["summary"]["pass"].as_u64().expect("pass") > 0, "{r}");
    let out = run("local", &local, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let diff = xtask()
        .arg("diff")
        .arg(&local)
        .arg(&remote)
        .output()
        .expect("diff");
    assert_eq!(
        diff.status.code(),
        Some(0),
        "ssh and local outcomes differ:\n{}",
        String::from_utf8_lossy(&diff.stdout)
    );
}

#[test]
fn an_interrupted_ssh_run_reports_what_finished_and_cleans_up() {
    let Some(sshd) = sshd() else { return };
    let d = tempfile::tempdir().expect("tempdir");
    let report = d.path().join("report.json");
    let progress = report.with_extension("jsonl");
    let mut child = xtask()
        .args([
            "conformance",
            "--target",
            "ssh",
            "--env",
            "hvm64",
            "--suite",
            "full",
        ])
        .args(["--jobs", "1", "--report"])
        .arg(&report)
        .arg("--image")
        .arg(image())
        .args(sshd.args())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let t0 = Instant::now();
    let finished = || {
        std::fs::read_to_string(&progress)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    while finished() < 3 {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the run ended early"
        );
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!(
                "fewer than 3 instances finished in 120 s ({} did):\n{}",
                finished(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    let r = read_report(&report);
    assert_eq!(r["state"], "interrupted");
    assert!(ids(&r).len() >= 3);
    let dir = remote_dir(&err);
    assert!(
        !dir.exists(),
        "{} is left on the remote after SIGINT",
        dir.display()
    );
}

#[test]
fn an_unreachable_host_is_a_one_line_error() {
    let Some(sshd) = sshd() else { return };
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let d = tempfile::tempdir().expect("tempdir");
    let out = xtask()
        .args(["conformance", "--target", "ssh", "--host"])
        .arg(format!("{}@127.0.0.1", sshd.user))
        .args([
            "--ssh-option",
            &format!("Port={port}"),
            "--env",
            "hvm64",
            "--report",
        ])
        .arg(d.path().join("r.json"))
        .arg("--image")
        .arg(image())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let errors: Vec<_> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("ssh"), "{err}");
}
