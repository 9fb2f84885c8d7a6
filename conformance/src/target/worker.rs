//! Targets whose instances run in a child process that speaks the worker protocol: the
//! reference model (`pvmc-model run`), a remote host's `pvmc-worker run` over ssh, a host
//! image's worker behind a serial port.
//!
//! The protocol: the child reads case-instance ids (`<case>~<env>`, one per line) on its
//! standard input and writes one JSON [`CaseResult`] per line on its standard output as each
//! instance finishes ([`serve`] is the child's side). [`run_pool`] is the parent's side: `jobs`
//! children, each fed one id at a time; a child that dies or stays silent past the instance's
//! timeout plus [`GRACE`] is killed, that instance becomes CRASH with the end of the child's
//! standard error, and a fresh child takes the next instance: a crash of the child loses
//! nothing that finished.
//!
//! A worker that cannot be fed (a host image booting on its own, on QEMU or a cloud VM) reads
//! its ids from a file and writes a **stream** instead ([`StreamLine`], one JSON object per
//! line): its host first, then the results, then an end line; console text around them is
//! ignored.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use super::TargetOptions;
use crate::catalog::{Catalog, Instance, Selection, Suite};
use crate::outcome::Outcome;
use crate::result::CaseResult;

/// How long past an instance's own timeout the parent waits for the child's line.
pub const GRACE: Duration = Duration::from_secs(5);

/// How much of a dead child's standard error goes into the CRASH detail.
const STDERR_TAIL: usize = 2000;

/// Every instance `catalog` has, by id: cases and benchmarks, self-tests and opt-in cases (a
/// worker runs what its parent selected, so it keeps nothing out).
pub fn instances_by_id(catalog: &Catalog) -> HashMap<String, Instance> {
    let mut by_id = HashMap::new();
    for bench in [false, true] {
        let sel = Selection {
            envs: abi::env::Env::ALL.to_vec(),
            // An empty filter matches every id, which opt-in cases need.
            filters: vec![String::new()],
            selftest: true,
            bench,
            suite: Suite::Full,
            opt_in: true,
        };
        by_id.extend(catalog.instances(&sel).into_iter().map(|i| (i.id(), i)));
    }
    by_id
}

/// The child's side: reads ids from `input` until it ends, runs each with `run_one` and writes
/// its result as one JSON line to `out` (flushed). `Err` for an id the image does not have, or
/// when a stream fails.
pub fn serve(
    catalog: &Catalog,
    input: impl BufRead,
    mut out: impl Write,
    mut run_one: impl FnMut(&Instance) -> CaseResult,
) -> Result<(), String> {
    let by_id = instances_by_id(catalog);
    for line in input.lines() {
        let id = line.map_err(|e| format!("reading instance ids from standard input: {e}"))?;
        let id = id.trim();
        if id.is_empty() {
            continue;
        }
        let Some(inst) = by_id.get(id) else {
            return Err(format!("instance {id}: not in the image's case table"));
        };
        let result = run_one(inst);
        let line = serde_json::to_string(&result).map_err(|e| format!("result of {id}: {e}"))?;
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|e| format!("writing the result of {id}: {e}"))?;
    }
    Ok(())
}

/// The end line of a stream.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamEnd {
    /// How many results the worker wrote.
    pub results: usize,
    /// `ok`, or why the worker stopped early.
    pub status: String,
}

/// One line of a worker's stream.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamLine {
    /// `{"host": ...}`: the host the worker runs on.
    Host(crate::report::HostReport),
    /// A result (a [`CaseResult`] object).
    Result(Box<CaseResult>),
    /// `{"end": ...}`: the worker is done.
    End(StreamEnd),
}

impl StreamLine {
    /// The line as JSON (no newline).
    pub fn to_json(&self) -> String {
        let v = match self {
            StreamLine::Host(h) => serde_json::json!({ "host": h }),
            StreamLine::Result(r) => serde_json::json!(r),
            StreamLine::End(e) => serde_json::json!({ "end": e }),
        };
        v.to_string()
    }

    /// Parses one line; `None` for anything that is not one of ours (console text, a line
    /// cut short).
    pub fn parse(line: &str) -> Option<StreamLine> {
        let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
        if let Some(h) = v.get("host") {
            return serde_json::from_value(h.clone()).ok().map(StreamLine::Host);
        }
        if let Some(e) = v.get("end") {
            return serde_json::from_value(e.clone()).ok().map(StreamLine::End);
        }
        serde_json::from_value(v)
            .ok()
            .map(|r| StreamLine::Result(Box::new(r)))
    }
}

/// Reassembles [`StreamLine`]s from chunks of a byte stream (serial output read in pages).
#[derive(Debug, Default)]
pub struct StreamReader {
    partial: String,
}

impl StreamReader {
    /// Adds `chunk`; returns the lines it completed.
    pub fn push(&mut self, chunk: &str) -> Vec<StreamLine> {
        self.partial.push_str(chunk);
        let mut out = Vec::new();
        while let Some(nl) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=nl).collect();
            out.extend(StreamLine::parse(line.trim_end_matches(['\r', '\n'])));
        }
        out
    }
}

/// A remote host's kernel log as the suite reads it (`Target::watch_host`): the lines each
/// result brought from its worker (which reads `/dev/kmsg` there), handed over just before the
/// result itself, so the suite attaches them to it and classifies them like local ones.
#[derive(Clone, Debug, Default)]
pub struct ForwardedLog(Arc<Mutex<Vec<String>>>);

impl ForwardedLog {
    /// Queues the kernel lines of `r` for the suite.
    pub fn forward(&self, r: &CaseResult) {
        if let Ok(mut k) = self.0.lock() {
            k.extend(r.kernel_log.iter().cloned());
        }
    }
}

impl crate::host_health::HostLog for ForwardedLog {
    fn drain(&mut self) -> Vec<String> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

/// One child.
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
    fn spawn(mut cmd: Command, what: &str) -> Result<Worker, String> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {what}: {e}"))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            return Err(format!("the standard streams of {what} are missing"));
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

    /// Runs `inst`, waiting at most `wait` for its line.
    fn run(&mut self, inst: &Instance, wait: Duration, opts: &TargetOptions, what: &str) -> Got {
        if let Err(e) = writeln!(self.stdin, "{}", inst.id()).and_then(|()| self.stdin.flush()) {
            return Got::Lost(format!("cannot send the instance to {what}: {e}"));
        }
        let deadline = Instant::now() + wait;
        loop {
            if opts.cancel.is_cancelled() {
                return Got::Cancelled;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Got::Lost(format!(
                    "{what} gave no result within {} ms and was killed",
                    wait.as_millis()
                ));
            }
            match self.lines.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(line) => {
                    return match serde_json::from_str::<CaseResult>(&line) {
                        Ok(r) if r.id == inst.id() => Got::Result(r),
                        Ok(r) => Got::Lost(format!(
                            "{what} answered for {} instead of {}",
                            r.id,
                            inst.id()
                        )),
                        Err(e) => {
                            Got::Lost(format!("{what} wrote a bad result line ({e}): {line}"))
                        }
                    };
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self
                        .child
                        .wait()
                        .map_or_else(|e| e.to_string(), |s| s.to_string());
                    return Got::Lost(format!("{what} ended ({status})"));
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
    CaseResult::without_run(inst, Outcome::Crash, detail)
}

/// The parent's side (see the module documentation): runs `instances` on up to `opts.jobs`
/// children made by `command` (called again for each replacement), named `what` in details.
pub fn run_pool(
    command: &(dyn Fn() -> Command + Sync),
    what: &str,
    instances: &[Instance],
    opts: &TargetOptions,
    sink: &mut dyn FnMut(usize, CaseResult),
) {
    super::run_parallel(
        instances,
        opts,
        sink,
        &|worker: &mut Option<Worker>, inst| {
            let mut w = match worker.take() {
                Some(w) => w,
                None => match Worker::spawn(command(), what) {
                    Ok(w) => w,
                    Err(e) => return Some(CaseResult::without_run(inst, Outcome::Error, e)),
                },
            };
            let start = Instant::now();
            let wait = crate::exec::timeout_of(inst, opts.timeout) + GRACE;
            match w.run(inst, wait, opts, what) {
                Got::Result(mut r) => {
                    *worker = Some(w);
                    r.duration_ms = start.elapsed().as_secs_f64() * 1e3;
                    Some(r)
                }
                Got::Lost(why) => {
                    let stderr = w.kill();
                    Some(lost(inst, why, &stderr))
                }
                Got::Cancelled => None,
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &str) -> CaseResult {
        serde_json::from_value(serde_json::json!({
            "id": id, "case": "c", "area": "priv", "env": "hvm64", "outcome": "pass",
            "duration_ms": 1.0, "checks": 1, "detail": "", "requirements": [], "summary": "s"
        }))
        .expect("a result")
    }

    #[test]
    fn stream_lines_round_trip_and_console_text_is_ignored() {
        let end = StreamLine::End(StreamEnd {
            results: 1,
            status: "ok".into(),
        });
        let r = StreamLine::Result(Box::new(result("c~hvm64")));
        for l in [&end, &r] {
            assert_eq!(StreamLine::parse(&l.to_json()).as_ref(), Some(l));
        }
        assert_eq!(StreamLine::parse("[    0.000000] Linux version 6.1"), None);
        assert_eq!(StreamLine::parse("{\"id\": 3}"), None);
    }

    #[test]
    fn forwarded_kernel_lines_are_drained_once_in_order() {
        use crate::host_health::HostLog;
        let log = ForwardedLog::default();
        let mut r = result("a~hvm64");
        r.kernel_log = vec!["one".into(), "two".into()];
        log.forward(&r);
        let mut reader = log.clone();
        assert_eq!(reader.drain(), ["one", "two"]);
        assert!(reader.drain().is_empty());
    }

    #[test]
    fn the_reader_joins_lines_split_across_pages() {
        let text = format!(
            "boot noise\n{}\r\n{}\n",
            StreamLine::Result(Box::new(result("a~hvm64"))).to_json(),
            StreamLine::End(StreamEnd {
                results: 1,
                status: "ok".into()
            })
            .to_json()
        );
        let mut reader = StreamReader::default();
        let (a, b) = text.split_at(text.len() / 2);
        let mut got = reader.push(a);
        got.extend(reader.push(b));
        assert_eq!(got.len(), 2);
        assert!(matches!(&got[0], StreamLine::Result(r) if r.id == "a~hvm64"));
        assert!(matches!(&got[1], StreamLine::End(e) if e.results == 1));
    }
}
