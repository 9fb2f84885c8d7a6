//! The JSON-lines progress log (`pvm-conformance/progress/v1`): one [`Line`] per finished
//! instance, written with one `write` and synced before the next instance's result is taken,
//! so a harness or host that dies loses nothing that finished. `--resume` reads it back with
//! [`read`].

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::report::{CaseResult, RunInfo};

/// Schema id of each line.
pub const SCHEMA: &str = "pvm-conformance/progress/v1";

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// [`SCHEMA`].
    pub schema: String,
    /// The run it belongs to.
    pub run: RunInfo,
    /// The instance's result.
    pub result: CaseResult,
}

/// An open progress log.
#[derive(Debug)]
pub struct ProgressLog {
    file: File,
    path: PathBuf,
    run: RunInfo,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |error| Error::Io {
        path: path.display().to_string(),
        error,
    }
}

impl ProgressLog {
    /// Creates (truncates) the log for a new run.
    pub fn create(path: &Path, run: &RunInfo) -> Result<Self, Error> {
        let file = File::create(path).map_err(io_err(path))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            run: run.clone(),
        })
    }

    /// Opens the log of the run being resumed, cut to its last complete line.
    pub fn resume(path: &Path, prev: &Previous) -> Result<Self, Error> {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        file.set_len(prev.valid_len).map_err(io_err(path))?;
        let mut log = Self {
            file,
            path: path.to_path_buf(),
            run: prev.run.clone(),
        };
        use std::io::Seek;
        log.file
            .seek(std::io::SeekFrom::End(0))
            .map_err(io_err(path))?;
        Ok(log)
    }

    /// Appends a result (one write, then `fdatasync`).
    pub fn append(&mut self, r: &CaseResult) -> Result<(), Error> {
        let line = Line {
            schema: SCHEMA.into(),
            run: self.run.clone(),
            result: r.clone(),
        };
        let mut text = serde_json::to_string(&line).map_err(|e| Error::Serialize {
            what: "a progress line",
            reason: e.to_string(),
        })?;
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(io_err(&self.path))
    }
}

/// What an earlier run left in its log.
#[derive(Clone, Debug, PartialEq)]
pub struct Previous {
    /// Its identity.
    pub run: RunInfo,
    /// Its results, in log order, each instance once.
    pub results: Vec<CaseResult>,
    /// Bytes up to the end of the last complete line.
    pub valid_len: u64,
    /// Whether a torn last line (the harness died while writing it) was dropped.
    pub dropped_torn_line: bool,
}

/// Reads a progress log: every line must parse and belong to one run, and no instance may
/// appear twice; only a last line without its newline (torn by a crash) is dropped.
pub fn read(path: &Path) -> Result<Previous, Error> {
    let bad = |reason: String| Error::Resume {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut run: Option<RunInfo> = None;
    let mut results = Vec::new();
    let mut ids = HashSet::new();
    let mut valid_len = 0u64;
    let mut dropped_torn_line = false;
    let mut rest = text.as_str();
    let mut n = 0;
    while !rest.is_empty() {
        n += 1;
        let (line, complete) = match rest.find('\n') {
            Some(i) => (&rest[..i], true),
            None => (rest, false),
        };
        rest = if complete {
            &rest[line.len() + 1..]
        } else {
            ""
        };
        if !complete {
            dropped_torn_line = true;
            break;
        }
        let l: Line = serde_json::from_str(line).map_err(|e| bad(format!("line {n}: {e}")))?;
        if l.schema != SCHEMA {
            return Err(bad(format!(
                "line {n}: schema {:?}, expected {SCHEMA:?}",
                l.schema
            )));
        }
        match &run {
            None => run = Some(l.run.clone()),
            Some(r) if r.run_id != l.run.run_id => {
                return Err(bad(format!(
                    "line {n} belongs to run {}, earlier lines to {}",
                    l.run.run_id, r.run_id
                )));
            }
            Some(_) => {}
        }
        if !ids.insert(l.result.id.clone()) {
            return Err(bad(format!("line {n}: {} appears twice", l.result.id)));
        }
        results.push(l.result);
        valid_len += line.len() as u64 + 1;
    }
    let run = run.ok_or_else(|| bad("no finished instance to resume from".into()))?;
    Ok(Previous {
        run,
        results,
        valid_len,
        dropped_torn_line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Outcome;
    use crate::report::fixtures::*;

    #[test]
    fn round_trips_and_drops_only_a_torn_last_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("r.jsonl");
        let mut log = ProgressLog::create(&p, &run_info()).expect("create");
        log.append(&result("a~hvm64", "hvm64", Outcome::Pass, ""))
            .expect("append");
        log.append(&result("b~hvm64", "hvm64", Outcome::Fail, "x"))
            .expect("append");
        drop(log);
        let mut f = OpenOptions::new().append(true).open(&p).expect("open");
        f.write_all(b"{\"schema\":\"pvm-conf").expect("torn");
        let prev = read(&p).expect("readable");
        assert_eq!(prev.results.len(), 2);
        assert!(prev.dropped_torn_line);
        let mut log = ProgressLog::resume(&p, &prev).expect("resume");
        log.append(&result("c~hvm64", "hvm64", Outcome::Skip, ""))
            .expect("append");
        let again = read(&p).expect("readable");
        assert_eq!(again.results.len(), 3);
        assert!(!again.dropped_torn_line);
        assert_eq!(again.run, run_info());
    }

    #[test]
    fn refuses_duplicates_mixed_runs_and_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("r.jsonl");
        let mut log = ProgressLog::create(&p, &run_info()).expect("create");
        let r = result("a~hvm64", "hvm64", Outcome::Pass, "");
        log.append(&r).expect("append");
        log.append(&r).expect("append");
        assert!(read(&p).expect_err("dup").to_string().contains("twice"));
        let mut other = run_info();
        other.run_id = "run-other".into();
        let mut log = ProgressLog::create(&p, &run_info()).expect("create");
        log.append(&r).expect("append");
        let mut log2 = ProgressLog::resume(&p, &read(&p).expect("ok")).expect("resume");
        log2.run = other;
        log2.append(&result("b~hvm64", "hvm64", Outcome::Pass, ""))
            .expect("append");
        assert!(
            read(&p)
                .expect_err("mixed")
                .to_string()
                .contains("belongs to run")
        );
        std::fs::write(&p, "garbage\n{}\n").expect("write");
        assert!(
            read(&p)
                .expect_err("garbage")
                .to_string()
                .contains("line 1")
        );
        std::fs::write(&p, "").expect("write");
        assert!(
            read(&p)
                .expect_err("empty")
                .to_string()
                .contains("no finished")
        );
    }
}
