//! Known deviations of a host, per dialect: an expectations file lists case instances whose
//! outcome is a documented deviation, with the reason and the evidence.
//!
//! ```toml
//! [[deviation]]
//! id = "interrupts.int3~hvm64"       # case instance
//! outcome = "crash"                   # what the host really does (fail | crash | error)
//! reason = "emulated CPL0 cannot emulate INT n: KVM_EXIT_INTERNAL_ERROR"
//! evidence = "docs/local-dialect.md#int-n"
//! ```
//!
//! An instance whose outcome equals its listed outcome becomes XFAIL (the detail keeps what
//! happened). One that now passes becomes FAIL ("XPASS": the expectation is stale and must be
//! removed); any other outcome stays as it is, with the expectation noted in the detail.

use std::collections::HashMap;
use std::path::Path;

use abi::env::Dialect;
use serde::Deserialize;

use crate::Error;
use crate::outcome::Outcome;

/// One known deviation.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Deviation {
    /// `<case>~<env>`.
    pub id: String,
    /// The outcome the host produces.
    pub outcome: String,
    /// Why (what the host does wrong).
    pub reason: String,
    /// Where the evidence is.
    #[serde(default)]
    pub evidence: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    deviation: Vec<Deviation>,
}

/// The expectations in force.
#[derive(Clone, Debug, Default)]
pub struct Expectations {
    by_id: HashMap<String, (Outcome, Deviation)>,
    /// Where they came from (for the report).
    pub source: String,
}

/// A TOML error in one line: where (line, column) and what (toml's own message spans several
/// lines with a source excerpt).
fn one_line(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {col}: {msg}")
        }
        None => msg,
    }
}

/// The built-in expectations of the local dialect.
pub const LOCAL: &str = include_str!("../expectations/local.toml");
/// The built-in expectations of the upstream generations (`--target model`).
pub const UPSTREAM: &str = include_str!("../expectations/upstream.toml");
/// The built-in expectations of QEMU's TCG emulator (`--target qemu` without VMX/SVM).
pub const QEMU_TCG: &str = include_str!("../expectations/qemu-tcg.toml");

impl Expectations {
    /// Parses an expectations file's text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self, Error> {
        let bad = |reason: String| Error::Expectations {
            path: source.into(),
            reason,
        };
        let file: File = toml::from_str(text).map_err(|e| bad(one_line(text, &e)))?;
        let mut by_id = HashMap::new();
        for d in file.deviation {
            let o = Outcome::from_name(&d.outcome)
                .filter(|o| matches!(o, Outcome::Fail | Outcome::Crash | Outcome::Error))
                .ok_or_else(|| {
                    bad(format!(
                        "{}: outcome must be fail, crash or error, not {:?}",
                        d.id, d.outcome
                    ))
                })?;
            if d.reason.trim().is_empty() {
                return Err(bad(format!("{}: a deviation needs a reason", d.id)));
            }
            if by_id.insert(d.id.clone(), (o, d.clone())).is_some() {
                return Err(bad(format!("{} listed twice", d.id)));
            }
        }
        Ok(Self {
            by_id,
            source: source.into(),
        })
    }

    /// Reads an expectations file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Expectations {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The built-in expectations for a dialect (none for dialects without a file).
    pub fn builtin(dialect: Option<Dialect>) -> Result<Self, Error> {
        match dialect {
            Some(Dialect::Local) => Self::parse(LOCAL, "built-in expectations/local.toml"),
            _ => Ok(Self {
                source: "none".into(),
                ..Self::default()
            }),
        }
    }

    /// The built-in expectations of the upstream generations, as the reference model plays
    /// them.
    pub fn builtin_upstream() -> Result<Self, Error> {
        Self::parse(UPSTREAM, "built-in expectations/upstream.toml")
    }

    /// The built-in expectations of QEMU's TCG emulator.
    pub fn builtin_qemu_tcg() -> Result<Self, Error> {
        Self::parse(QEMU_TCG, "built-in expectations/qemu-tcg.toml")
    }

    /// Every listed instance id.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.by_id.keys().map(String::as_str)
    }

    /// Every built-in expectations file (for checking them all against a case table).
    pub fn all_builtin() -> Result<Vec<Self>, Error> {
        Ok(vec![
            Self::parse(LOCAL, "built-in expectations/local.toml")?,
            Self::builtin_upstream()?,
            Self::builtin_qemu_tcg()?,
        ])
    }

    /// Refuses an expectation naming an instance that `known` (every id the guest image
    /// declares) does not contain: a stale or misspelt entry would otherwise be ignored.
    pub fn validate(&self, known: &std::collections::HashSet<String>) -> Result<(), Error> {
        let mut unknown: Vec<&str> = self.ids().filter(|id| !known.contains(*id)).collect();
        unknown.sort_unstable();
        match unknown.first() {
            None => Ok(()),
            Some(first) => Err(Error::Expectations {
                path: self.source.clone(),
                reason: format!(
                    "names {first}, which is not a case instance of this guest image{}",
                    match unknown.len() {
                        1 => String::new(),
                        n => format!(" ({} more unknown)", n - 1),
                    }
                ),
            }),
        }
    }

    /// A stable digest of the deviations in force (sorted id and outcome pairs), for the run's
    /// selection fingerprint.
    pub fn fingerprint(&self) -> String {
        let mut entries: Vec<String> = self
            .by_id
            .iter()
            .map(|(id, (o, _))| format!("{id}={}", o.name()))
            .collect();
        entries.sort();
        entries.join(",")
    }

    /// Applies the expectations to an instance's raw outcome and detail.
    pub fn apply(&self, id: &str, outcome: Outcome, detail: String) -> (Outcome, String) {
        let Some((want, d)) = self.by_id.get(id) else {
            return (outcome, detail);
        };
        let note = format!("known deviation: {} [evidence: {}]", d.reason, d.evidence);
        if outcome == *want {
            (
                Outcome::Xfail,
                format!("{note}; observed {}: {detail}", want.label()),
            )
        } else if outcome == Outcome::Pass {
            (
                Outcome::Fail,
                format!(
                    "XPASS: expected {} ({note}) but the case passed; update the expectations",
                    want.label()
                ),
            )
        } else {
            (
                outcome,
                format!("{detail}; expected {} ({note})", want.label()),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[[deviation]]
id = "a.b~hvm64"
outcome = "crash"
reason = "it crashes"
evidence = "notes"
"#;

    #[test]
    fn matching_outcome_becomes_xfail_and_a_pass_becomes_xpass() {
        let e = Expectations::parse(SAMPLE, "t").expect("valid");
        assert_eq!(
            e.apply("a.b~hvm64", Outcome::Crash, "x".into()).0,
            Outcome::Xfail
        );
        let (o, d) = e.apply("a.b~hvm64", Outcome::Pass, String::new());
        assert_eq!(o, Outcome::Fail);
        assert!(d.starts_with("XPASS"));
        assert_eq!(
            e.apply("a.b~hvm64", Outcome::Fail, "y".into()).0,
            Outcome::Fail
        );
        assert_eq!(
            e.apply("other~hvm64", Outcome::Fail, "y".into()).0,
            Outcome::Fail
        );
    }

    #[test]
    fn rejects_bad_files() {
        assert!(
            Expectations::parse(
                "[[deviation]]\nid = \"x\"\noutcome = \"pass\"\nreason = \"r\"",
                "t"
            )
            .is_err()
        );
        assert!(
            Expectations::parse(
                "[[deviation]]\nid = \"x\"\noutcome = \"fail\"\nreason = \"\"",
                "t"
            )
            .is_err()
        );
        assert!(
            Expectations::parse(
                "[[deviation]]\nid = \"x\"\noutcome = \"fail\"\nreason = \"r\"\nbogus = 1",
                "t"
            )
            .is_err()
        );
        let dup = format!("{SAMPLE}{SAMPLE}");
        assert!(Expectations::parse(&dup, "t").is_err());
    }

    #[test]
    fn builtin_local_file_parses() {
        Expectations::builtin(Some(Dialect::Local)).expect("built-in local expectations parse");
    }
}
