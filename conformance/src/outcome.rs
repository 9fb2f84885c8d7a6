//! Outcomes of a case instance. Severity order (most severe wins when merging):
//! CRASH > ERROR > FAIL > XFAIL > SKIP > PASS.

use serde::Serialize;

/// The outcome of one case instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every check held.
    Pass,
    /// Does not apply here (reason in the detail).
    Skip,
    /// A known, documented deviation of the host (reason in the detail).
    Xfail,
    /// The hypervisor did something wrong.
    Fail,
    /// The test or its setup is wrong.
    Error,
    /// No final status from the guest (triple fault, timeout, internal error, bad exit).
    Crash,
}

impl Outcome {
    /// Every outcome, least severe first.
    pub const ALL: [Outcome; 6] = [
        Outcome::Pass,
        Outcome::Skip,
        Outcome::Xfail,
        Outcome::Fail,
        Outcome::Error,
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
        assert_eq!(Outcome::Error.merge(Outcome::Fail), Outcome::Error);
        assert_eq!(Outcome::Crash.merge(Outcome::Pass), Outcome::Crash);
        for o in Outcome::ALL {
            assert_eq!(Outcome::from_name(o.name()), Some(o));
        }
        assert!(!Outcome::Xfail.is_bad() && Outcome::Crash.is_bad());
    }
}
