//! The harness's output files: validated before the first instance runs, locked against a
//! second run, written atomically.
//!
//! - [`Outputs::new`] checks every path at once: not a directory, its directory creatable and
//!   writable, no two outputs (or their lock files) on one path.
//! - [`Outputs::lock`] takes an exclusive lock on `.<output>.lock` for each output, with the
//!   holder's PID and run id inside: a second run into the same paths is refused at once, with
//!   an error naming the run that holds them. The lock is an `flock`, so it dies with its
//!   process (even SIGKILL); the small hidden lock files stay behind.
//! - [`write_atomic`] writes a temporary file in the same directory and renames it over the
//!   target, so a reader (or a crash) never sees half a report.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::Error;

/// The output files of a conformance run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outputs {
    /// The JSON report.
    pub report: PathBuf,
    /// The JSON-lines progress log (the report path with extension `jsonl`).
    pub progress: PathBuf,
    /// JUnit XML, if asked for.
    pub junit: Option<PathBuf>,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Output {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// `path` made absolute with its directory created and resolved (so that two spellings of one
/// file compare equal).
fn resolve(path: &Path, what: &str) -> Result<PathBuf, Error> {
    if path.as_os_str().is_empty() {
        return Err(bad(path, format!("empty {what} path")));
    }
    if path.as_os_str().to_string_lossy().ends_with('/') || path.is_dir() {
        return Err(bad(path, format!("{what} path is a directory")));
    }
    let Some(name) = path.file_name() else {
        return Err(bad(path, format!("{what} path names no file")));
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| bad(path, format!("cannot create its directory: {e}")))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| bad(path, format!("cannot resolve its directory: {e}")))?;
    let meta = std::fs::metadata(&dir).map_err(|e| bad(path, e.to_string()))?;
    if meta.permissions().readonly() {
        return Err(bad(path, "its directory is not writable"));
    }
    Ok(dir.join(name))
}

/// `<dir>/.<name>.lock` for output `<dir>/<name>`.
pub fn lock_path(p: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(p.file_name().unwrap_or_default());
    name.push(".lock");
    p.with_file_name(name)
}

impl Outputs {
    /// Validates the output paths (see the module documentation); creates their directories.
    pub fn new(report: &Path, junit: Option<&Path>) -> Result<Self, Error> {
        let report = resolve(report, "--report")?;
        let progress = report.with_extension("jsonl");
        let junit = junit.map(|j| resolve(j, "--junit")).transpose()?;
        let mut all: Vec<(&str, PathBuf)> = vec![
            ("--report", report.clone()),
            ("the progress log", progress.clone()),
            ("the report's lock file", lock_path(&report)),
        ];
        if let Some(j) = &junit {
            all.push(("--junit", j.clone()));
            all.push(("the JUnit lock file", lock_path(j)));
        }
        for (i, (what_a, a)) in all.iter().enumerate() {
            for (what_b, b) in &all[i + 1..] {
                if a == b {
                    return Err(bad(a, format!("{what_a} and {what_b} are the same file")));
                }
            }
        }
        Ok(Self {
            report,
            progress,
            junit,
        })
    }

    /// Locks every output for this process (see the module documentation).
    pub fn lock(&self, run_id: &str) -> Result<OutputLock, Error> {
        let mut files = Vec::new();
        for p in std::iter::once(&self.report).chain(self.junit.iter()) {
            files.push(lock_one(p, run_id)?);
        }
        Ok(OutputLock { _files: files })
    }
}

fn lock_one(output: &Path, run_id: &str) -> Result<File, Error> {
    let path = lock_path(output);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| {
            bad(
                output,
                format!("cannot create the lock file {}: {e}", path.display()),
            )
        })?;
    match f.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(bad(
                output,
                format!(
                    "another run is writing it ({}); wait for it or choose other output paths",
                    if holder.is_empty() {
                        "holder unknown"
                    } else {
                        holder
                    }
                ),
            ));
        }
        Err(TryLockError::Error(e)) => {
            return Err(bad(output, format!("cannot lock {}: {e}", path.display())));
        }
    }
    let me = format!("pid {}, run {run_id}", std::process::id());
    f.set_len(0)
        .and_then(|()| f.rewind())
        .and_then(|()| f.write_all(me.as_bytes()))
        .and_then(|()| f.sync_data())
        .map_err(|e| {
            bad(
                output,
                format!("cannot write the lock file {}: {e}", path.display()),
            )
        })?;
    Ok(f)
}

/// Holds the output locks; they are released when it is dropped (or the process ends).
#[derive(Debug)]
pub struct OutputLock {
    _files: Vec<File>,
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced, then
/// renamed over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let io = |error| Error::Io {
        path: path.display().to_string(),
        error,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".pvmc-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_data())
        .map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// Removes `path` if it exists (a stale output of an earlier run).
pub fn remove_stale(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(Error::Io {
            path: path.display().to_string(),
            error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_directories_and_shared_paths() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path();
        assert!(Outputs::new(dir, None).is_err());
        let r = dir.join("r.json");
        assert!(Outputs::new(&r, Some(&r)).is_err());
        assert!(Outputs::new(&r, Some(&dir.join("r.jsonl"))).is_err());
        assert!(Outputs::new(&dir.join("r.jsonl"), None).is_err());
        let o = Outputs::new(&dir.join("sub/r.json"), Some(&dir.join("j.xml"))).expect("fine");
        assert!(o.progress.ends_with("sub/r.jsonl"));
    }

    #[test]
    fn a_second_lock_is_refused_with_the_holder() {
        let d = tempfile::tempdir().expect("tempdir");
        let o = Outputs::new(&d.path().join("r.json"), None).expect("fine");
        let held = o.lock("run-a").expect("first lock");
        let e = o.lock("run-b").expect_err("second lock").to_string();
        assert!(e.contains("run-a") && e.contains("another run"), "{e}");
        drop(held);
        o.lock("run-c").expect("free again");
    }

    #[test]
    fn atomic_write_replaces_the_file() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("x.json");
        write_atomic(&p, b"one").expect("write");
        write_atomic(&p, b"two").expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        assert_eq!(std::fs::read_dir(d.path()).expect("dir").count(), 1);
    }
}
