//! Where a suite runs. A [`Target`] takes a selection of instances and yields a
//! [`CaseResult`] for each as it finishes, and describes the host it runs on; the suite
//! (`crate::suite`) applies expectations and writes every report from that stream, so a new
//! target (QEMU, ssh, a cloud VM, the reference model) is one module here and touches neither
//! the suite nor the reports.
//!
//! - [`local`]: this machine's `/dev/kvm`.
//! - [`model`]: the reference model of the upstream PVM host, a separate process.
//! - [`qemu`]: each `hvm64` instance booted directly in its own QEMU (a reference x86).
//! - [`qemu_host`]: a host image booted as an L1 host under QEMU, the suite inside it.
//! - [`ssh`]: a remote host over OpenSSH, running `pvmc-worker` there.
//! - [`gce`]: Google Compute Engine VMs booted from a PVM host image, through `gcloud`.
//! - [`worker`]: the protocol of targets whose instances run in a child process (the model,
//!   a remote `pvmc-worker`), both sides.
//!
//! [`open`] turns a [`TargetKind`] into a target; adding a target is its module here and its
//! arm in [`open`].

pub mod gce;
pub mod local;
pub mod model;
pub mod qemu;
pub mod qemu_host;
pub mod ssh;
pub mod worker;

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

/// A target as the command line names it: its kind and the options of that kind.
#[derive(Clone, Debug)]
pub struct TargetSpec {
    /// Which target.
    pub kind: TargetKind,
    /// `model`: the fault switches to turn on.
    pub faults: Vec<String>,
    /// `model`: the `pvmc-model` binary ([`model::binary`] finds or builds it).
    pub model_binary: Option<PathBuf>,
    /// `ssh`: the destination, `[USER@]HOST`.
    pub ssh_host: Option<String>,
    /// `ssh`: `-o` options for every connection.
    pub ssh_options: Vec<String>,
    /// `gce`: project, zone, machine type, shards, bucket and image.
    pub gce: Option<gce::GceSpec>,
    /// `qemu`: boot this host image (`cargo xtask images`) instead of each instance directly.
    pub host_image: Option<PathBuf>,
    /// `qemu --host-image`: the profile's parameter set to load the modules with.
    pub param_set: Option<String>,
}

impl TargetSpec {
    /// `kind` with no options.
    pub fn new(kind: TargetKind) -> Self {
        Self {
            kind,
            faults: Vec::new(),
            model_binary: None,
            ssh_host: None,
            ssh_options: Vec::new(),
            gce: None,
            host_image: None,
            param_set: None,
        }
    }

    /// `Err` when an option does not belong to the kind (checked before anything is built).
    pub fn check(&self) -> Result<(), String> {
        if !self.faults.is_empty() && self.kind != TargetKind::Model {
            return Err(format!(
                "--fault: fault switches belong to --target model, not --target {}",
                self.kind.name()
            ));
        }
        match (self.kind, &self.ssh_host) {
            (TargetKind::Ssh, None) => {
                return Err("--target ssh needs --host [USER@]HOST".into());
            }
            (TargetKind::Ssh, Some(h)) => {
                ssh::Ssh::new(h, &self.ssh_options)?;
            }
            (_, Some(_)) => {
                return Err(format!(
                    "--host belongs to --target ssh, not --target {}",
                    self.kind.name()
                ));
            }
            (_, None) if !self.ssh_options.is_empty() => {
                return Err(format!(
                    "--ssh-option belongs to --target ssh, not --target {}",
                    self.kind.name()
                ));
            }
            (_, None) => {}
        }
        if self.param_set.is_some() && (self.kind != TargetKind::Qemu || self.host_image.is_none())
        {
            return Err("--param-set belongs to --target qemu --host-image".into());
        }
        if self.host_image.is_some() && self.kind != TargetKind::Qemu {
            return Err(format!(
                "--host-image belongs to --target qemu or gce, not --target {}",
                self.kind.name()
            ));
        }
        match (self.kind, &self.gce) {
            (TargetKind::Gce, None) => {
                Err("--target gce needs --project, --zone and --host-image".into())
            }
            (TargetKind::Gce, Some(g)) => g.check(),
            (_, Some(_)) => Err(format!(
                "--project, --zone, --machine-type, --instances, --bucket and --dry-run belong \
                 to --target gce, not --target {}",
                self.kind.name()
            )),
            (_, None) => Ok(()),
        }
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
        TargetKind::Qemu => match &spec.host_image {
            Some(dir) => Ok(Box::new(qemu_host::QemuHostTarget::new(
                dir,
                spec.param_set.as_deref(),
            )?)),
            None => Ok(Box::new(qemu::QemuTarget::new(image))),
        },
        TargetKind::Ssh => {
            let dest = spec.ssh_host.as_deref().unwrap_or_default();
            let ssh = ssh::Ssh::new(dest, &spec.ssh_options)?;
            let worker = ssh::worker_binary(&crate::guest_build::workspace_root())?;
            Ok(Box::new(ssh::SshTarget::new(ssh, &worker, image_path)?))
        }
        TargetKind::Gce => {
            let Some(g) = &spec.gce else {
                return Err("--target gce needs --project, --zone and --host-image".into());
            };
            gce::image_exists(&g.image)?;
            Ok(Box::new(gce::GceTarget::new(g.clone())?))
        }
    }
}

/// Builds binary `package` (of the same name) in the workspace at `root` with the dev profile
/// (which `cargo test` builds too) and returns its path, or the path environment variable
/// `var` names.
pub fn cargo_binary(root: &std::path::Path, package: &str, var: &str) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(var) {
        return Ok(PathBuf::from(p));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = duct::cmd!(
        cargo,
        "build",
        "--package",
        package,
        "--bin",
        package,
        "--message-format=json-render-diagnostics"
    )
    .dir(root)
    .stdout_capture()
    .stderr_capture()
    .unchecked()
    .run()
    .map_err(|e| format!("cannot run cargo to build {package}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build of {package} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == package)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| format!("cargo build of {package} reported no executable"))
}

/// Gives every one of `instances` the same result without a run (a target whose setup failed
/// before any instance could run, say).
pub fn all_without_run(
    instances: &[Instance],
    outcome: crate::outcome::Outcome,
    detail: &str,
    sink: &mut dyn FnMut(usize, CaseResult),
) {
    for (i, inst) in instances.iter().enumerate() {
        sink(
            i,
            CaseResult::without_run(inst, outcome, detail.to_string()),
        );
    }
}

/// Runs `instances` on up to `opts.jobs` threads, each with its own state `S` (a child
/// process, say; `S::default()` to start), one instance at a time: `job` returns the result,
/// or `None` for an instance cut short by cancellation. Results reach `sink` on the calling
/// thread in completion order; once `opts.cancel` is cancelled no instance starts.
pub fn run_parallel<S: Default>(
    instances: &[Instance],
    opts: &TargetOptions,
    sink: &mut dyn FnMut(usize, CaseResult),
    job: &(dyn Fn(&mut S, &Instance) -> Option<CaseResult> + Sync),
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let jobs = opts.jobs.clamp(1, instances.len().max(1));
    let next = AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel::<(usize, CaseResult)>();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            let tx = tx.clone();
            let next = &next;
            s.spawn(move || {
                let mut state = S::default();
                while !opts.cancel.is_cancelled() {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(inst) = instances.get(i) else { break };
                    if let Some(r) = job(&mut state, inst)
                        && tx.send((i, r)).is_err()
                    {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for (i, r) in rx.iter() {
            sink(i, r);
        }
    });
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
    /// Whether the host stays the same from one `run` to the next, so that the suite's
    /// fresh-VM check after the last instance says something about it (a host image booted
    /// per run, or a QEMU per instance, starts afresh every time: no).
    fn host_outlives_runs(&self) -> bool {
        true
    }
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
