//! Host side of pvm-conformance: runs tiny test guests in fresh KVM VMs.
//!
//! - [`vm`]: the backend seam: [`vm::Backend`], [`vm::Vm`], [`vm::ExitHandler`],
//!   [`vm::RunEnd`], the backend-neutral initial state and [`vm::Cancel`].
//! - [`boot`]: the one boot path (page tables, image, boot info, start state) into any `Vm`.
//! - [`kvm`]: the KVM backend: VM/vCPU creation and the run loop, with a per-run timeout that
//!   interrupts `KVM_RUN` (signal + `immediate_exit`).
//! - [`memory`]: the KVM backend's guest RAM (an anonymous mapping registered as memslot 0).
//! - [`setup`]: the initial page tables, boot info and 64-bit start state.
//! - [`image`]: the guest ELF (validated segments, entry point, sections, hash).
//! - [`detect`]: which KVM backend the host has and which PVM dialect it speaks.
//! - [`qemu`]: the QEMU backend: one `qemu-system-x86_64` per VM, booted directly (PVH) from
//!   the prepared RAM, reports as a byte stream on a debugcon.
//! - [`baseline`]: the raw `KVM_RUN` exit loop that bounds the runner's own overhead.
//!
//! Architecture invariant: only `kvm` and `memory` contain `unsafe` code; only `kvm` and
//! `baseline` (which must not share the run loop it is the baseline for) issue ioctls.

pub mod baseline;
pub mod boot;
pub mod detect;
pub mod image;
pub mod kvm;
pub mod memory;
pub mod preflight;
pub mod qemu;
pub mod setup;
pub mod vm;

/// Errors of the runner. Outcomes of guests (crashes, timeouts) are not errors: they are
/// [`vm::RunEnd`] values.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// `/dev/kvm` (or `$PVMC_KVM_PATH`) could not be opened.
    #[error("cannot open the KVM device: {0}")]
    OpenKvm(kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("{what} failed: {error}")]
    Kvm {
        /// Which operation.
        what: &'static str,
        /// The errno.
        error: kvm_ioctls::Error,
    },
    /// Mapping guest memory failed.
    #[error("mmap of {size} bytes of guest memory failed: {error}")]
    Mmap {
        /// Requested size.
        size: u64,
        /// The OS error.
        error: std::io::Error,
    },
    /// A guest-physical access outside RAM.
    #[error("guest-physical range {addr:#x}+{len:#x} is outside guest RAM")]
    OutOfRange {
        /// Start GPA.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// The guest image could not be read.
    #[error("guest image {path}: {error}")]
    ImageFile {
        /// File.
        path: String,
        /// The OS error.
        error: std::io::Error,
    },
    /// The guest image is not a valid test guest.
    #[error("guest image {path}: {error}")]
    Image {
        /// File.
        path: String,
        /// What is wrong.
        error: image::ImageError,
    },
    /// The state given to a VM does not fit it.
    #[error("VM setup: {0}")]
    Setup(String),
    /// The raw `KVM_RUN` baseline saw an exit its guest code cannot cause.
    #[error("raw KVM_RUN baseline: {0}")]
    Baseline(String),
    /// Arming the per-run timer failed.
    #[error("cannot arm the run timeout: {0}")]
    Timer(std::io::Error),
}

/// Shorthand.
pub type Result<T> = std::result::Result<T, RunnerError>;

pub(crate) fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RunnerError {
    move |error| RunnerError::Kvm { what, error }
}
