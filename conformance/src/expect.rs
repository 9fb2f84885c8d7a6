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
//!
//! A deviation that shows in some runs only (it hangs on timing the host does not fix, such as
//! when a level-triggered interrupt is re-sent) says `intermittent = true`: a PASS then stays
//! PASS, with the expectation noted in the detail, instead of an XPASS.
//!
//! A deviation that shows only on some machines names the host fact it needs, and is in force
//! only where that holds ([`Expectations::for_host`]): `when_cpuid_differs = "0x80000001.0"`
//! (the CPU's own CPUID differs from the VMM's in that leaf) or `"0x7.0:edx:29"` (in that bit),
//! for a host that shows guests the CPU's CPUID ([`runner::detect::CpuidDiff`]).

use std::collections::HashMap;
use std::path::Path;

use abi::env::Dialect;
use runner::detect::HostInfo;
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
    /// In force only on a host whose CPU's own CPUID differs from the VMM's here (see the
    /// module documentation).
    #[serde(default)]
    pub when_cpuid_differs: Option<String>,
    /// Shows in some runs only: a PASS is not an XPASS.
    #[serde(default)]
    pub intermittent: bool,
}

/// A parsed `when_cpuid_differs`: a leaf, and maybe one bit of one register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CpuidCondition {
    function: u32,
    index: u32,
    /// Register (0 = EAX .. 3 = EDX) and bit.
    bit: Option<(usize, u32)>,
}

impl CpuidCondition {
    fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split(':');
        let (function, index) = runner::detect::parse_cpuid_leaf(parts.next()?)?;
        let bit = match (parts.next(), parts.next(), parts.next()) {
            (None, None, None) => None,
            (Some(reg), Some(bit), None) => {
                let reg = runner::detect::CPUID_REGS.iter().position(|r| *r == reg)?;
                let bit: u32 = bit.parse().ok()?;
                Some((reg, (bit < 32).then_some(bit)?))
            }
            _ => return None,
        };
        Some(Self {
            function,
            index,
            bit,
        })
    }

    fn holds(&self, host: &HostInfo) -> bool {
        host.cpuid_differs.iter().any(|d| {
            d.function == self.function
                && d.index == self.index
                && match self.bit {
                    None => d.bits != [0; 4],
                    Some((reg, bit)) => d.bits[reg] & (1 << bit) != 0,
                }
        })
    }
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
    /// Each deviation with its outcome and its parsed `when_cpuid_differs`.
    by_id: HashMap<String, (Outcome, Deviation, Option<CpuidCondition>)>,
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
            let condition = match &d.when_cpuid_differs {
                None => None,
                Some(c) => Some(CpuidCondition::parse(c).ok_or_else(|| {
                    bad(format!(
                        "{}: when_cpuid_differs {c:?} is neither LEAF.SUB (0x80000001.0) nor \
                         LEAF.SUB:REG:BIT (0x7.0:edx:29)",
                        d.id
                    ))
                })?),
            };
            if by_id
                .insert(d.id.clone(), (o, d.clone(), condition))
                .is_some()
            {
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

    /// The deviations in force on `host`: those without a host condition, and those whose
    /// condition holds there. The others are dropped, and counted in [`Expectations::source`].
    pub fn for_host(mut self, host: &HostInfo) -> Self {
        let before = self.by_id.len();
        self.by_id
            .retain(|_, (_, _, condition)| condition.is_none_or(|c| c.holds(host)));
        let dropped = before - self.by_id.len();
        if dropped > 0 {
            self.source = format!(
                "{} ({dropped} not in force: their CPUID condition does not hold on this host)",
                self.source
            );
        }
        self
    }

    /// Whether the deviation listed for `id` depends on a host condition or shows in some
    /// runs only (the instance's outcome then depends on the machine or the run).
    pub fn is_conditional(&self, id: &str) -> bool {
        self.by_id
            .get(id)
            .is_some_and(|(_, d, condition)| condition.is_some() || d.intermittent)
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
            .map(|(id, (o, _, _))| format!("{id}={}", o.name()))
            .collect();
        entries.sort();
        entries.join(",")
    }

    /// Applies the expectations to an instance's raw outcome and detail.
    pub fn apply(&self, id: &str, outcome: Outcome, detail: String) -> (Outcome, String) {
        let Some((want, d, _)) = self.by_id.get(id) else {
            return (outcome, detail);
        };
        let note = format!("known deviation: {} [evidence: {}]", d.reason, d.evidence);
        if outcome == *want {
            (
                Outcome::Xfail,
                format!("{note}; observed {}: {detail}", want.label()),
            )
        } else if outcome == Outcome::Pass && d.intermittent {
            (
                Outcome::Pass,
                format!(
                    "{detail}; the intermittent {} did not show this run ({note})",
                    want.label()
                ),
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
    fn a_cpuid_condition_keeps_a_deviation_only_where_it_holds() {
        let text = r#"
[[deviation]]
id = "leaf~pv-local"
outcome = "fail"
reason = "r"
when_cpuid_differs = "0x80000001.0"

[[deviation]]
id = "bit~pv-local"
outcome = "fail"
reason = "r"
when_cpuid_differs = "0x7.0:edx:29"

[[deviation]]
id = "always~pv-local"
outcome = "fail"
reason = "r"
"#;
        let host = |diffs: Vec<runner::detect::CpuidDiff>| HostInfo {
            kernel: String::new(),
            cpu: String::new(),
            kvm_backend: String::new(),
            kvm: runner::detect::KvmStatus::Usable,
            dialect: None,
            dialect_evidence: String::new(),
            cpuid_differs: diffs,
        };
        let diff = |function, bits| runner::detect::CpuidDiff {
            function,
            index: 0,
            bits,
        };
        let in_force = |h: &HostInfo| {
            let e = Expectations::parse(text, "t").expect("valid").for_host(h);
            let mut ids: Vec<String> = e.ids().map(str::to_string).collect();
            ids.sort();
            ids
        };
        assert_eq!(in_force(&host(Vec::new())), ["always~pv-local"]);
        assert_eq!(
            in_force(&host(vec![diff(0x8000_0001, [0, 0, 0x60, 0])])),
            ["always~pv-local", "leaf~pv-local"]
        );
        // Leaf 7 differs, but not in EDX bit 29.
        assert_eq!(
            in_force(&host(vec![diff(7, [0, 1, 0, 0])])),
            ["always~pv-local"]
        );
        assert_eq!(
            in_force(&host(vec![diff(7, [0, 0, 0, 1 << 29])])),
            ["always~pv-local", "bit~pv-local"]
        );
        for bad in ["0x7", "7.0", "0x7.0:edx", "0x7.0:esi:1", "0x7.0:edx:32"] {
            let t = format!(
                "[[deviation]]\nid = \"x\"\noutcome = \"fail\"\nreason = \"r\"\n\
                 when_cpuid_differs = \"{bad}\""
            );
            assert!(Expectations::parse(&t, "t").is_err(), "{bad}");
        }
    }

    #[test]
    fn an_intermittent_deviation_lets_a_pass_stand() {
        let text = "[[deviation]]\nid = \"a~hvm64\"\noutcome = \"fail\"\nreason = \"r\"\n\
                    intermittent = true";
        let e = Expectations::parse(text, "t").expect("valid");
        let (o, d) = e.apply("a~hvm64", Outcome::Pass, "ok".into());
        assert_eq!(o, Outcome::Pass);
        assert!(d.contains("did not show this run"), "{d}");
        assert_eq!(
            e.apply("a~hvm64", Outcome::Fail, "x".into()).0,
            Outcome::Xfail
        );
        assert!(e.is_conditional("a~hvm64"));
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
