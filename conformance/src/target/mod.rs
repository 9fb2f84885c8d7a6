//! Where a suite runs. A [`Target`] takes a selection of instances and yields a
//! [`CaseResult`] for each as it finishes, and describes the host it runs on; the suite
//! (`crate::suite`) applies expectations and writes every report from that stream, so a new
//! target (QEMU, ssh, a cloud VM, the reference model) is one module here and touches neither
//! the suite nor the reports.
//!
//! - [`local`]: this machine's `/dev/kvm`.
//! - [`model`]: the reference model of the upstream PVM host, a separate process.
//! - [`qemu`]: each `hvm64` instance booted directly in its own QEMU (a reference x86).
//!
//! [`open`] turns a [`TargetKind`] into a target; adding a target is its module here and its
//! arm in [`open`].

pub mod local;
pub mod model;
pub mod qemu;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use abi::env::{Env, GuestSupport};
use runner::detect::HostInfo;
use runner::vm::Cancel;

use runner::image::GuestImage;

use crate::catalog::Instance;
use crate::result::CaseResult;

/// The targets the command line can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    /// This machine's `/dev/kvm`.
    Local,
    /// A nested KVM host in QEMU.
    Qemu,
    /// A remote host over ssh.
    Ssh,
    /// A Google Compute Engine VM.
    Gce,
    /// The reference model of the upstream ABI.
    Model,
}

impl TargetKind {
    /// Every kind, in `--help` order.
    pub const ALL: [TargetKind; 5] = [
        TargetKind::Local,
        TargetKind::Qemu,
        TargetKind::Ssh,
        TargetKind::Gce,
        TargetKind::Model,
    ];

    /// Name on the command line and in reports.
    pub const fn name(self) -> &'static str {
        match self {
            TargetKind::Local => "local",
            TargetKind::Qemu => "qemu",
            TargetKind::Ssh => "ssh",
            TargetKind::Gce => "gce",
            TargetKind::Model => "model",
        }
    }

    /// Parses [`TargetKind::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }
}

fn not_implemented(kind: TargetKind) -> String {
    format!(
        "--target {} is not implemented yet; only --target local, qemu and model are",
        kind.name()
    )
}

/// Whether `kind` exists yet (cheap: for refusing it before anything is built).
pub fn available(kind: TargetKind) -> Result<(), String> {
    match kind {
        TargetKind::Local | TargetKind::Model | TargetKind::Qemu => Ok(()),
        TargetKind::Ssh | TargetKind::Gce => Err(not_implemented(kind)),
    }
}

/// A target as the command line names it: its kind and the options of that kind.
#[derive(Clone, Debug)]
pub struct TargetSpec {
    /// Which target.
    pub kind: TargetKind,
    /// `model`: the fault switches to turn on.
    pub faults: Vec<String>,
    /// `model`: the `pvmc-model` binary ([`model::binary`] finds or builds it).
    pub model_binary: Option<PathBuf>,
}

impl TargetSpec {
    /// `kind` with no options.
    pub fn new(kind: TargetKind) -> Self {
        Self {
            kind,
            faults: Vec::new(),
            model_binary: None,
        }
    }

    /// `Err` when an option does not belong to the kind (checked before anything is built).
    pub fn check(&self) -> Result<(), String> {
        available(self.kind)?;
        if !self.faults.is_empty() && self.kind != TargetKind::Model {
            return Err(format!(
                "--fault: fault switches belong to --target model, not --target {}",
                self.kind.name()
            ));
        }
        Ok(())
    }
}

/// The target `spec` names, ready to run instances of `image` (the file at `image_path`);
/// `Err` names what is missing.
pub fn open(
    spec: &TargetSpec,
    image: Arc<GuestImage>,
    image_path: &std::path::Path,
) -> Result<Box<dyn Target>, String> {
    spec.check()?;
    match spec.kind {
        TargetKind::Local => Ok(Box::new(local::LocalTarget::new(image))),
        TargetKind::Model => {
            let binary = match &spec.model_binary {
                Some(b) => b.clone(),
                None => model::binary(&crate::guest_build::workspace_root())?,
            };
            Ok(Box::new(model::ModelTarget::new(
                binary,
                image_path.to_path_buf(),
                spec.faults.clone(),
            )?))
        }
        TargetKind::Qemu => Ok(Box::new(qemu::QemuTarget::new(image))),
        TargetKind::Ssh | TargetKind::Gce => Err(not_implemented(spec.kind)),
    }
}

/// How a target runs its instances.
#[derive(Clone, Debug)]
pub struct TargetOptions {
    /// Timeout of an instance whose case does not set its own.
    pub timeout: Duration,
    /// Instances at a time.
    pub jobs: usize,
    /// Once cancelled, no new instance starts, running ones end without a result, and `run`
    /// returns.
    pub cancel: Cancel,
}

/// A place that runs case instances (see the module documentation).
pub trait Target: Sync {
    /// Name in reports (`local`, ...).
    fn name(&self) -> &str;
    /// The host the instances run on.
    fn host(&self) -> &HostInfo;
    /// `Err` with the reason when nothing can run here at all (no usable `/dev/kvm`, say).
    fn usable(&self) -> Result<(), String>;
    /// Runs `instances`, calling `sink(i, result)` for instance `i` as it finishes (in
    /// completion order, from the calling thread). Results carry the run's own outcome:
    /// expectations are the caller's business. Instances cut short by cancellation yield
    /// nothing.
    fn run(
        &self,
        instances: &[Instance],
        opts: &TargetOptions,
        sink: &mut dyn FnMut(usize, CaseResult),
    );
    /// Starts reading the host kernel's log from now on, for host health
    /// (`crate::host_health`); `Err` says why this target cannot.
    fn watch_host(&self) -> Result<Box<dyn crate::host_health::HostLog>, String> {
        Err(format!(
            "the {} target cannot read its host's kernel log",
            self.name()
        ))
    }
}

/// Why `inst` cannot run on `host`, if it cannot: [`skip_reason`] of its environment, or the
/// case checks the local dialect's host (`FLAG_LOCAL_DIALECT`) and `host` speaks another.
pub fn instance_skip_reason(host: &HostInfo, inst: &Instance) -> Option<String> {
    skip_reason(host, inst.env).or_else(|| {
        let local = abi::env::Dialect::Local;
        (inst.case.flags & abi::case::FLAG_LOCAL_DIALECT != 0 && host.dialect != Some(local)).then(
            || {
                format!(
                    "the case checks what a {} host shows an x86 guest; this host speaks {}",
                    local.name(),
                    host.dialect.map_or("no PVM dialect", |d| d.name())
                )
            },
        )
    })
}

/// Why an instance in `env` cannot run on `host`, if it cannot: the guest library has no module
/// for the environment, or the host speaks another dialect.
pub fn skip_reason(host: &HostInfo, env: Env) -> Option<String> {
    if env.guest_support() == GuestSupport::NotYet {
        return Some(format!(
            "guest-lib does not implement environment {} yet",
            env.name()
        ));
    }
    let need = env.required_dialect()?;
    if host.dialect == Some(need) {
        return None;
    }
    let has = host.dialect.map_or("no PVM dialect", |d| d.name());
    Some(format!(
        "environment {} needs the {} dialect; the host speaks {has}",
        env.name(),
        need.name()
    ))
}
