//! The pvm-conformance host harness.
//!
//! - [`guest_build`]: builds the guest image (the cases' guest side) for `x86_64-unknown-none`.
//! - [`bench`]: benchmarks, native baselines, runner overhead, the bench report.
//! - [`catalog`]: the case table, read from the guest image, and its expansion into case
//!   instances (`<case>~<env>`).
//! - [`host_check`]: the host side of a case: collects the guest's reports and implements
//!   each `HostCheck`.
//! - [`outcome`]: the outcome vocabulary (most severe wins).
//! - [`expect`]: known deviations per host dialect (XFAIL with reason and evidence).
//! - [`suite`]: runs instances (in parallel) and classifies what happened.
//! - [`report`]: JSON report, JSON-lines progress log, TAP13 and the text summary.

pub mod bench;
pub mod catalog;
pub mod expect;
pub mod guest_build;
pub mod host_check;
pub mod outcome;
pub mod report;
pub mod suite;

/// Errors of the harness (setup problems, not case outcomes).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Building the guest image failed.
    #[error("building the guest image failed: {0}")]
    Build(String),
    /// Clippy found problems in the guest crates.
    #[error("clippy on the guest crates (x86_64-unknown-none) failed:\n{0}")]
    Lint(String),
    /// The runner failed outside any case.
    #[error(transparent)]
    Runner(#[from] runner::RunnerError),
    /// An expectations file is invalid.
    #[error("expectations file {path}: {reason}")]
    Expectations {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A benchmark could not be measured (its guest or loop ended unexpectedly).
    #[error("benchmark: {0}")]
    Bench(String),
    /// Bad user input (filter matches nothing, unknown environment, ...).
    #[error("{0}")]
    Usage(String),
    /// Writing a report failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}
