//! Host health around a run: the host kernel's log lines that appear while an instance runs
//! are attached to it; a line of a bad class (panic, BUG, Oops, WARNING, lockdep, RCU stall,
//! KASAN/UBSAN, soft or hard lockup, hung task) makes the run's health `bad` unless an entry of
//! the allowlist (`conformance/host-health-allowlist.toml`, each entry with its reason)
//! excuses it; and a fresh VM must still boot after the last instance (the suite checks that
//! and records it here).
//!
//! The log comes from the target ([`crate::target::Target::watch_host`]): `/dev/kmsg` for the
//! local target ([`Kmsg`]), opened at its end so that only lines of this run are read.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

use serde::Deserialize;

use crate::Error;
use crate::report::{HostHealth, KernelLine};

/// A source of the host kernel's log lines, read as they appear.
pub trait HostLog: Send {
    /// The lines logged since the last call (oldest first).
    fn drain(&mut self) -> Vec<String>;
}

/// `/dev/kmsg`, non-blocking, from its end.
#[derive(Debug)]
pub struct Kmsg {
    file: std::fs::File,
    /// Records lost because the kernel's buffer wrapped before we read them.
    pub lost: u64,
}

impl Kmsg {
    /// Opens `path` (normally `/dev/kmsg`) and skips what is already in the buffer.
    pub fn open(path: &str) -> std::io::Result<Self> {
        use std::io::{Seek, SeekFrom};
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        // /dev/kmsg: SEEK_END moves to the next record to be logged. (Another source, a FIFO
        // in the tests, cannot seek and has no backlog anyway.)
        if let Err(e) = file.seek(SeekFrom::End(0))
            && e.raw_os_error() != Some(libc::ESPIPE)
        {
            return Err(e);
        }
        Ok(Self { file, lost: 0 })
    }
}

/// The text of one `/dev/kmsg` record (`prio,seq,timestamp,flags;text\n` plus continuation
/// lines), or `None` for a malformed one.
pub fn kmsg_text(record: &str) -> Option<&str> {
    let (_, rest) = record.split_once(';')?;
    Some(rest.lines().next().unwrap_or("").trim_end())
}

impl HostLog for Kmsg {
    fn drain(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        // One record per read; a record is at most 8 KiB (PRINTK_MESSAGE_MAX is 2 KiB).
        let mut buf = vec![0u8; 8192];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    // /dev/kmsg returns one record per read; other sources may return several.
                    // Continuation lines (dictionary key=value pairs) start with a space.
                    let text = String::from_utf8_lossy(&buf[..n]);
                    for rec in text.lines().filter(|l| !l.starts_with(' ')) {
                        if let Some(t) = kmsg_text(rec) {
                            out.push(t.to_string());
                        }
                    }
                }
                // The buffer wrapped past our position: records were lost; go on.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => self.lost += 1,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        out
    }
}

/// The bad classes: (class, the substrings that mark it). A line of one of these fails the
/// run's health unless the allowlist excuses it.
/// The first class whose marks a line contains is its class (the more specific ones first:
/// "BUG: KASAN:" is `kasan`, "watchdog: BUG: soft lockup" is `lockup`).
pub const BAD_CLASSES: &[(&str, &[&str])] = &[
    ("panic", &["Kernel panic", "kernel panic"]),
    ("kasan", &["KASAN:"]),
    ("ubsan", &["UBSAN:"]),
    ("lockup", &["soft lockup", "hard LOCKUP"]),
    (
        "lockdep",
        &[
            "possible circular locking",
            "possible recursive locking",
            "inconsistent lock state",
            "lockdep",
        ],
    ),
    (
        "rcu-stall",
        &[
            "rcu_sched self-detected stall",
            "rcu_preempt self-detected stall",
            "detected stalls on CPUs",
            "rcu: INFO:",
        ],
    ),
    ("hung-task", &["blocked for more than"]),
    ("oops", &["Oops:", "Oops -", "general protection fault"]),
    ("bug", &["BUG:", "kernel BUG at"]),
    (
        "warning",
        &["WARNING:", "------------[ cut here ]------------"],
    ),
];

/// The bad class of `line`, if it has one.
pub fn bad_class(line: &str) -> Option<&'static str> {
    BAD_CLASSES
        .iter()
        .find(|(_, marks)| marks.iter().any(|m| line.contains(m)))
        .map(|(class, _)| *class)
}

/// The built-in allowlist.
pub const BUILTIN_ALLOWLIST: &str = include_str!("../host-health-allowlist.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowFile {
    #[serde(default)]
    allow: Vec<AllowEntry>,
}

/// One allowlist entry: a bad-class line containing `contains` is excused, for `reason`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AllowEntry {
    /// Substring the line must contain.
    pub contains: String,
    /// Why the line is harmless (required).
    pub reason: String,
}

/// Bad-class lines that are known to be harmless.
#[derive(Clone, Debug, Default)]
pub struct Allowlist {
    entries: Vec<AllowEntry>,
}

impl Allowlist {
    /// Parses an allowlist; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self, Error> {
        let bad = |reason: String| Error::Requirements {
            path: source.into(),
            reason,
        };
        let f: AllowFile = toml::from_str(text).map_err(|e| bad(e.message().to_string()))?;
        for e in &f.allow {
            if e.contains.trim().is_empty() || e.reason.trim().is_empty() {
                return Err(bad(format!(
                    "allowlist entry {:?} needs a non-empty `contains` and `reason`",
                    e.contains
                )));
            }
        }
        Ok(Self { entries: f.allow })
    }

    /// The built-in allowlist.
    pub fn builtin() -> Result<Self, Error> {
        Self::parse(BUILTIN_ALLOWLIST, "conformance/host-health-allowlist.toml")
    }

    /// The entry that excuses `line`, if one does.
    pub fn excuse(&self, line: &str) -> Option<&AllowEntry> {
        self.entries.iter().find(|e| line.contains(&e.contains))
    }
}

/// What a run saw of the host kernel's health, as it goes.
#[derive(Debug)]
pub struct HealthLog {
    allow: Allowlist,
    health: HostHealth,
    watched: bool,
}

impl HealthLog {
    /// A log that watches the host (`Ok` source) or says why it cannot.
    pub fn new(source: &Result<(), String>, allow: Allowlist) -> Self {
        let (watched, status) = match source {
            Ok(()) => (true, "clean".to_string()),
            Err(why) => (false, format!("unwatched: {why}")),
        };
        Self {
            allow,
            health: HostHealth {
                status,
                ..HostHealth::default()
            },
            watched,
        }
    }

    /// Takes `lines` logged during `instance` (`-` for none): records the bad ones (and the
    /// excused ones) and returns all of them, for the instance's result.
    pub fn take(&mut self, instance: &str, lines: Vec<String>) -> Vec<String> {
        for l in &lines {
            let Some(class) = bad_class(l) else { continue };
            let line = KernelLine {
                instance: instance.to_string(),
                class: class.to_string(),
                text: l.clone(),
                reason: String::new(),
            };
            match self.allow.excuse(l) {
                Some(e) => self.health.allowed_lines.push(KernelLine {
                    reason: e.reason.clone(),
                    ..line
                }),
                None => {
                    self.health.bad_lines.push(line);
                    self.health.status = "bad".into();
                }
            }
        }
        lines
    }

    /// Records the fresh-VM check after the last instance.
    pub fn fresh_boot(&mut self, booted: bool, detail: String) {
        self.health.fresh_boot = Some(booted);
        if !booted {
            self.health.fresh_boot_detail = detail;
            if self.watched {
                self.health.status = "bad".into();
            }
        }
    }

    /// The health so far.
    pub fn health(&self) -> &HostHealth {
        &self.health
    }

    /// The result.
    pub fn finish(self) -> HostHealth {
        self.health
    }
}

impl HostHealth {
    /// Whether the host misbehaved (a bad line, or no fresh boot at the end).
    pub fn is_bad(&self) -> bool {
        self.status == "bad" || self.fresh_boot == Some(false)
    }

    /// One line for the summary.
    pub fn summary(&self) -> String {
        let boot = match self.fresh_boot {
            Some(true) => "a fresh VM booted afterwards",
            Some(false) => "a fresh VM did NOT boot afterwards",
            None => "fresh boot not checked",
        };
        format!(
            "host health: {} ({} bad kernel-log line(s), {} allowed; {boot})",
            self.status,
            self.bad_lines.len(),
            self.allowed_lines.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_recognised() {
        assert_eq!(
            bad_class("WARNING: CPU: 1 PID: 5 at arch/x86/kvm/x86.c:123"),
            Some("warning")
        );
        assert_eq!(
            bad_class("BUG: unable to handle page fault for address"),
            Some("bug")
        );
        assert_eq!(
            bad_class("Kernel panic - not syncing: Fatal exception"),
            Some("panic")
        );
        assert_eq!(
            bad_class("rcu: INFO: rcu_preempt self-detected stall on CPU"),
            Some("rcu-stall")
        );
        assert_eq!(
            bad_class("BUG: KASAN: slab-out-of-bounds in foo"),
            Some("kasan")
        );
        assert_eq!(
            bad_class("watchdog: BUG: soft lockup - CPU#0 stuck for 22s!"),
            Some("lockup")
        );
        assert_eq!(
            bad_class("kvm-pvm: INTERNAL_ERROR in batch emul: rip=0x20 cpl=0"),
            None
        );
        assert_eq!(
            bad_class("virtio_blk virtio1: [vda] 1024 512-byte logical blocks"),
            None
        );
    }

    #[test]
    fn kmsg_records_are_split() {
        assert_eq!(
            kmsg_text("6,1234,5678,-;hello world\n"),
            Some("hello world")
        );
        assert_eq!(
            kmsg_text("4,1,2,c;WARNING: x\n SUBSYSTEM=acpi\n"),
            Some("WARNING: x")
        );
        assert_eq!(kmsg_text("garbage"), None);
    }

    #[test]
    fn bad_lines_fail_the_health_unless_excused() {
        let allow = Allowlist::parse(
            "[[allow]]\ncontains = \"harmless thing\"\nreason = \"known, see issue 1\"\n",
            "t",
        )
        .expect("valid");
        let mut h = HealthLog::new(&Ok(()), allow);
        let lines = h.take(
            "a~hvm64",
            vec!["WARNING: harmless thing".into(), "info".into()],
        );
        assert_eq!(lines.len(), 2);
        assert_eq!(h.health().status, "clean");
        assert_eq!(h.health().allowed_lines.len(), 1);
        h.take("b~hvm64", vec!["Oops: 0002 [#1] SMP".into()]);
        h.fresh_boot(true, String::new());
        let health = h.finish();
        assert!(health.is_bad());
        assert_eq!(health.bad_lines[0].instance, "b~hvm64");
        assert_eq!(health.bad_lines[0].class, "oops");
    }

    #[test]
    fn a_failed_fresh_boot_is_bad_and_unwatched_is_said() {
        let mut h = HealthLog::new(&Err("no /dev/kmsg".into()), Allowlist::default());
        assert!(h.health().status.starts_with("unwatched"));
        h.fresh_boot(false, "CRASH".into());
        assert!(h.finish().is_bad());
    }

    #[test]
    fn allowlists_need_reasons() {
        Allowlist::builtin().expect("the built-in allowlist parses");
        assert!(Allowlist::parse("[[allow]]\ncontains = \"x\"\nreason = \"\"\n", "t").is_err());
        assert!(Allowlist::parse("[[allow]]\ncontains = \"x\"\n", "t").is_err());
        assert!(
            Allowlist::parse(
                "[[allow]]\ncontains = \"x\"\nreason = \"r\"\nextra = 1\n",
                "t"
            )
            .is_err()
        );
    }
}
