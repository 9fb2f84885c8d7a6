//! The pvm-conformance host harness.
//!
//! - [`guest_build`]: builds the guest image (the cases' guest side) for
//!   `x86_64-unknown-none`, and rebuilds a cached image that fails validation.
//! - [`catalog`]: the case table, read and validated from the guest image, and its expansion
//!   into case instances (`<case>~<env>`).
//! - [`host_check`]: the host side of a case: collects the guest's reports and implements
//!   each `HostCheck` as a device.
//! - [`exec`]: runs one instance on any `runner::vm::Backend` and classifies what happened.
//! - [`outcome`]: the outcome vocabulary (most severe wins).
//! - [`expect`]: known deviations per host dialect (XFAIL with reason and evidence).
//! - [`requirements`]: the requirements catalog the cases name, and coverage.
//! - [`target`]: where instances run (`local` today), yielding results as a stream.
//! - [`suite`]: runs a selection on a target and applies the expectations.
//! - [`session`]: one run's outputs: placeholder, progress log, resume, final report.
//! - [`output`]: output paths validated up front, locked, written atomically.
//! - [`result`]: the result of one instance.
//! - [`report`]: JSON report, JSON-lines progress log, TAP13, JUnit XML, summary.
//! - [`mod@bench`]: benchmarks, native baselines, runner overhead, the bench report.

pub mod bench;
pub mod catalog;
pub mod certify;
pub mod exec;
pub mod expect;
pub mod guest_build;
pub mod host_check;
pub mod host_health;
pub mod outcome;
pub mod output;
pub mod report;
pub mod requirements;
pub mod result;
pub mod session;
pub mod suite;
pub mod target;

/// Errors of the harness (setup problems, not case outcomes). Each names its input and the
/// problem in one line; the underlying error is part of that line (no `source()` chain, so
/// printing it with or without its chain says the same once).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Building the guest image failed.
    #[error("building the guest image failed: {0}")]
    Build(String),
    /// The runner failed outside any case (the guest image is invalid, say).
    #[error(transparent)]
    Runner(#[from] runner::RunnerError),
    /// The guest image's case table is invalid.
    #[error("guest image {path}: {error}")]
    Catalog {
        /// The image.
        path: String,
        /// What is wrong.
        error: catalog::CatalogError,
    },
    /// The requirements catalog is invalid, or a case names an id it lacks.
    #[error("requirements {path}: {reason}")]
    Requirements {
        /// The catalog.
        path: String,
        /// What is wrong.
        reason: String,
    },
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
    /// An output path cannot be used.
    #[error("output {path}: {reason}")]
    Output {
        /// The path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// `--resume` cannot continue from this progress log.
    #[error("cannot resume from {path}: {reason}")]
    Resume {
        /// The progress log.
        path: String,
        /// Why.
        reason: String,
    },
    /// Serializing a report failed.
    #[error("cannot serialize {what}: {reason}")]
    Serialize {
        /// Which report.
        what: &'static str,
        /// The serializer's message.
        reason: String,
    },
    /// Writing a file failed.
    #[error("writing {path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        error: std::io::Error,
    },
}
