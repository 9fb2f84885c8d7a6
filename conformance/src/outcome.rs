//! Outcomes of a case instance. Severity order (most severe wins when merging):
//! CRASH > FAIL > ERROR > XFAIL > SKIP > PASS.
//!
//! Why this order: CRASH means no final status arrived at all, so nothing the guest said can be
//! trusted as complete; it outranks everything. A FAIL is evidence against the hypervisor; an
//! ERROR in the same instance (a test problem noticed afterwards, often a consequence of the
//! failure) must not hide it, so FAIL outranks ERROR, as XTF ranks FAILURE above ERROR. XFAIL
//! is a FAIL/ERROR/CRASH that matched a documented deviation; SKIP says nothing about the host
//! but is still more than a PASS.

use abi::case::Designed;
use abi::report::GuestStatus;
use serde::{Deserialize, Serialize};

/// The outcome of one case instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every check held.
    Pass,
    /// Does not apply here (reason in the detail).
    Skip,
    /// A known, documented deviation of the host (reason in the detail).
    Xfail,
    /// The test or its setup is wrong.
    Error,
    /// The hypervisor did something wrong.
    Fail,
    /// No final status from the guest (triple fault, timeout, internal error, bad exit).
    Crash,
}

impl Outcome {
    /// Every outcome, least severe first.
    pub const ALL: [Outcome; 6] = [
        Outcome::Pass,
        Outcome::Skip,
        Outcome::Xfail,
        Outcome::Error,
        Outcome::Fail,
        Outcome::Crash,
    ];

    /// Upper-case name for humans.
    pub const fn label(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Skip => "SKIP",
            Outcome::Xfail => "XFAIL",
            Outcome::Fail => "FAIL",
            Outcome::Error => "ERROR",
            Outcome::Crash => "CRASH",
        }
    }

    /// Lower-case name (JSON, expectations files).
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Skip => "skip",
            Outcome::Xfail => "xfail",
            Outcome::Fail => "fail",
            Outcome::Error => "error",
            Outcome::Crash => "crash",
        }
    }

    /// Parses [`Outcome::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        Outcome::ALL.into_iter().find(|o| o.name() == s)
    }

    /// The more severe of two outcomes.
    pub fn merge(self, other: Outcome) -> Outcome {
        self.max(other)
    }

    /// The outcome a guest status stands for.
    pub const fn of_guest(s: GuestStatus) -> Self {
        match s {
            GuestStatus::Pass => Outcome::Pass,
            GuestStatus::Fail => Outcome::Fail,
            GuestStatus::Skip => Outcome::Skip,
            GuestStatus::Error => Outcome::Error,
        }
    }

    /// The outcome a self-test is designed to produce.
    pub const fn designed(d: Designed) -> Self {
        match d {
            Designed::Pass => Outcome::Pass,
            Designed::Fail => Outcome::Fail,
            Designed::Crash => Outcome::Crash,
            Designed::Skip => Outcome::Skip,
            Designed::Error => Outcome::Error,
        }
    }

    /// Whether this outcome makes a run unsuccessful.
    pub const fn is_bad(self) -> bool {
        matches!(self, Outcome::Fail | Outcome::Error | Outcome::Crash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_severe_wins() {
        assert_eq!(Outcome::Pass.merge(Outcome::Skip), Outcome::Skip);
        assert_eq!(Outcome::Fail.merge(Outcome::Xfail), Outcome::Fail);
        assert_eq!(Outcome::Error.merge(Outcome::Fail), Outcome::Fail);
        assert_eq!(Outcome::Fail.merge(Outcome::Crash), Outcome::Crash);
        assert_eq!(Outcome::Crash.merge(Outcome::Pass), Outcome::Crash);
        for o in Outcome::ALL {
            assert_eq!(Outcome::from_name(o.name()), Some(o));
        }
        assert!(!Outcome::Xfail.is_bad() && Outcome::Crash.is_bad());
    }
}
