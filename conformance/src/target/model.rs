//! The `model` target: the reference model of the upstream PVM host (`model/`, binary
//! `pvmc-model`), run as a separate process because it links the GPL-2.0 Unicorn engine and
//! this crate does not.
//!
//! Each of `jobs` workers owns one `pvmc-model run` child and feeds it one instance id at a
//! time on its standard input, reading back one JSON [`CaseResult`] per line. The model
//! enforces each instance's timeout itself; the worker also waits at most that timeout plus
//! [`GRACE`] for the line, and a child that dies or stays silent is killed, its instance
//! becomes CRASH with the end of the child's standard error, and a fresh child takes the next
//! instance: a crash of the model loses nothing that finished.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use runner::detect::{HostInfo, KvmStatus};

use super::{Target, TargetOptions};
use crate::catalog::Instance;
use crate::exec::RawResult;
use crate::outcome::Outcome;
use crate::result::CaseResult;

/// Environment variable naming the `pvmc-model` binary to run instead of building it.
pub const MODEL_BIN_VAR: &str = "PVMC_MODEL_BIN";

/// How long past an instance's own timeout the worker waits for the model's line.
pub const GRACE: Duration = Duration::from_secs(5);

/// How much of a dead child's standard error goes into the CRASH detail.
const STDERR_TAIL: usize = 2000;

/// The reference model as a target.
pub struct ModelTarget {
    binary: PathBuf,
    image: PathBuf,
    faults: Vec<String>,
    host: HostInfo,
}

/// Builds `pvmc-model` in the workspace at `root` (the dev profile, which `cargo test` builds
/// too) and returns its path, or the one [`MODEL_BIN_VAR`] names.
pub fn binary(root: &Path) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(MODEL_BIN_VAR) {
        return Ok(PathBuf::from(p));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = duct::cmd!(
        cargo,
        "build",
        "--package",
        "pvmc-model",
        "--bin",
        "pvmc-model",
        "--message-format=json-render-diagnostics"
    )
    .dir(root)
    .stdout_capture()
    .stderr_capture()
    .unchecked()
    .run()
    .map_err(|e| format!("cannot run cargo to build pvmc-model: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build of pvmc-model failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "pvmc-model")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| "cargo build of pvmc-model reported no executable".into())
}

impl ModelTarget {
    /// The model at `binary` running `image`, with the fault switches `faults` on. `Err` when
    /// the binary does not run or does not know one of the switches.
    pub fn new(binary: PathBuf, image: PathBuf, faults: Vec<String>) -> Result<Self, String> {
        let known = Self::fault_names(&binary)?;
        if let Some(bad) = faults.iter().find(|f| !known.contains(f)) {
            return Err(format!(
                "--fault {bad}: no such fault switch in the model (known: {})",
                known.join(", ")
            ));
        }
        let host = HostInfo {
            kernel: format!("pvmc-model {}", env!("CARGO_PKG_VERSION")),
            cpu: "Unicorn x86-64 (QEMU TCG), one vCPU".into(),
            kvm_backend: "model".into(),
            kvm: KvmStatus::Usable,
            dialect: None,
            dialect_evidence: if faults.is_empty() {
                "reference model: each instance's environment picks the generation".into()
            } else {
                format!(
                    "reference model: each instance's environment picks the generation; \
                     fault switches on: {}",
                    faults.join(", ")
                )
            },
        };
        Ok(Self {
            binary,
            image,
            faults,
            host,
        })
    }

    /// The model's fault switches (`pvmc-model faults`).
    pub fn fault_names(binary: &Path) -> Result<Vec<String>, String> {
        let out = Command::new(binary)
            .arg("faults")
            .output()
            .map_err(|e| format!("{}: cannot run the model: {e}", binary.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} faults: exited with {}: {}",
                binary.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }

    fn spawn(&self, timeout: Duration) -> Result<Worker, String> {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("run")
            .arg("--image")
            .arg(&self.image)
            .arg("--timeout-ms")
            .arg(timeout.as_millis().to_string());
        for f in &self.faults {
            cmd.arg("--fault").arg(f);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: cannot start the model: {e}", self.binary.display()))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            return Err("the model's standard streams are missing".into());
        };
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let err_tail = Arc::new(Mutex::new(String::new()));
        let tail = Arc::clone(&err_tail);
        let err_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stderr = stderr;
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut t) = tail.lock() {
                    t.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if t.len() > 2 * STDERR_TAIL {
                        let cut = t.len() - STDERR_TAIL;
                        let cut = (cut..t.len()).find(|&i| t.is_char_boundary(i)).unwrap_or(0);
                        t.drain(..cut);
                    }
                }
            }
        });
        Ok(Worker {
            child,
            stdin,
            lines,
            err_tail,
            err_reader: Some(err_reader),
        })
    }
}

/// One `pvmc-model run` child.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    err_tail: Arc<Mutex<String>>,
    err_reader: Option<std::thread::JoinHandle<()>>,
}

/// What one instance on a worker came to.
enum Got {
    Result(CaseResult),
    /// The child died or stayed silent: the detail; the worker must be replaced.
    Lost(String),
    Cancelled,
}

impl Worker {
    /// Runs `inst`, waiting at most `wait` for its line.
    fn run(&mut self, inst: &Instance, wait: Duration, opts: &TargetOptions) -> Got {
        if let Err(e) = writeln!(self.stdin, "{}", inst.id()).and_then(|()| self.stdin.flush()) {
            return Got::Lost(format!("cannot send the instance to the model: {e}"));
        }
        let deadline = Instant::now() + wait;
        loop {
            if opts.cancel.is_cancelled() {
                return Got::Cancelled;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Got::Lost(format!(
                    "the model gave no result within {} ms and was killed",
                    wait.as_millis()
                ));
            }
            match self.lines.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(line) => {
                    return match serde_json::from_str::<CaseResult>(&line) {
                        Ok(r) if r.id == inst.id() => Got::Result(r),
                        Ok(r) => Got::Lost(format!(
                            "the model answered for {} instead of {}",
                            r.id,
                            inst.id()
                        )),
                        Err(e) => {
                            Got::Lost(format!("the model wrote a bad result line ({e}): {line}"))
                        }
                    };
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self
                        .child
                        .wait()
                        .map_or_else(|e| e.to_string(), |s| s.to_string());
                    return Got::Lost(format!("the model process ended ({status})"));
                }
            }
        }
    }

    /// Kills the child; returns the end of its standard error.
    fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(h) = self.err_reader.take() {
            let _ = h.join();
        }
        self.err_tail
            .lock()
            .map(|t| t.trim().to_string())
            .unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lost(inst: &Instance, why: String, stderr: &str) -> CaseResult {
    let tail: String = {
        let start = stderr.len().saturating_sub(STDERR_TAIL);
        let start = (start..stderr.len())
            .find(|&i| stderr.is_char_boundary(i))
            .unwrap_or(stderr.len());
        stderr[start..].to_string()
    };
    let detail = if tail.is_empty() {
        why
    } else {
        format!("{why}; its stderr: {tail}")
    };
    CaseResult::new(
        inst,
        RawResult {
            outcome: Outcome::Crash,
            detail,
            checks: 0,
        },
        0.0,
    )
}

impl Target for ModelTarget {
    fn name(&self) -> &str {
        "model"
    }

    fn host(&self) -> &HostInfo {
        &self.host
    }

    fn usable(&self) -> Result<(), String> {
        Self::fault_names(&self.binary).map(drop)
    }

    fn run(
        &self,
        instances: &[Instance],
        opts: &TargetOptions,
        sink: &mut dyn FnMut(usize, CaseResult),
    ) {
        let jobs = opts.jobs.clamp(1, instances.len().max(1));
        let next = AtomicUsize::new(0);
        let (tx, rx) = mpsc::channel::<(usize, CaseResult)>();
        std::thread::scope(|s| {
            for _ in 0..jobs {
                let tx = tx.clone();
                let next = &next;
                s.spawn(move || {
                    let mut worker: Option<Worker> = None;
                    while !opts.cancel.is_cancelled() {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some(inst) = instances.get(i) else { break };
                        let w = match worker.take() {
                            Some(w) => w,
                            None => match self.spawn(opts.timeout) {
                                Ok(w) => w,
                                Err(e) => {
                                    let r = CaseResult::new(
                                        inst,
                                        RawResult {
                                            outcome: Outcome::Error,
                                            detail: e,
                                            checks: 0,
                                        },
                                        0.0,
                                    );
                                    if tx.send((i, r)).is_err() {
                                        break;
                                    }
                                    continue;
                                }
                            },
                        };
                        let mut w = w;
                        let start = Instant::now();
                        let wait = crate::exec::timeout_of(inst, opts.timeout) + GRACE;
                        let r = match w.run(inst, wait, opts) {
                            Got::Result(mut r) => {
                                worker = Some(w);
                                r.duration_ms = start.elapsed().as_secs_f64() * 1e3;
                                r
                            }
                            Got::Lost(why) => {
                                let stderr = w.kill();
                                lost(inst, why, &stderr)
                            }
                            Got::Cancelled => break,
                        };
                        if tx.send((i, r)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            for (i, r) in rx.iter() {
                sink(i, r);
            }
        });
    }
}
