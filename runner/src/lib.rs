//! Host side of pvm-conformance: runs tiny test guests in fresh KVM VMs.
//!
//! - [`baseline`]: the raw `KVM_RUN` exit loop that bounds the runner's own overhead.
//! - [`detect`]: which KVM backend the host has and which PVM dialect it speaks.
//! - [`image`]: the guest ELF (loadable segments, entry point, case descriptors).
//! - [`memory`]: guest RAM (an anonymous mapping registered as memslot 0).
//! - [`setup`]: the initial page tables, boot info and 64-bit register state.
//! - [`kvm`]: VM/vCPU creation and the run loop, with a per-run timeout that interrupts
//!   `KVM_RUN` (signal + `immediate_exit`), and the [`kvm::ExitHandler`] through which the
//!   caller sees the exits that matter to a case.
//!
//! Architecture invariant: only `kvm`, `memory` and `baseline` contain `unsafe` code; only
//! `kvm` and `baseline` (which must not share the run loop it is the baseline for) issue ioctls.

pub mod baseline;
pub mod detect;
pub mod image;
pub mod kvm;
pub mod memory;
pub mod setup;

/// Errors of the runner. Outcomes of guests (crashes, timeouts) are not errors: they are
/// [`kvm::RunEnd`] values.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("{what} failed: {source}")]
    Kvm {
        /// Which operation.
        what: &'static str,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Mapping guest memory failed.
    #[error("mmap of {size} bytes of guest memory failed: {source}")]
    Mmap {
        /// Requested size.
        size: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A guest-physical access outside RAM.
    #[error("guest-physical range {addr:#x}+{len:#x} is outside guest RAM")]
    OutOfRange {
        /// Start GPA.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// The guest image could not be read or is not a valid test guest.
    #[error("guest image {path}: {reason}")]
    Image {
        /// File.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The raw `KVM_RUN` baseline saw an exit its guest code cannot cause.
    #[error("raw KVM_RUN baseline: {0}")]
    Baseline(String),
    /// Arming the per-run timer failed.
    #[error("cannot arm the run timeout: {0}")]
    Timer(#[source] std::io::Error),
}

/// Shorthand.
pub type Result<T> = std::result::Result<T, RunnerError>;

pub(crate) fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RunnerError {
    move |source| RunnerError::Kvm { what, source }
}
