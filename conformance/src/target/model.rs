//! The `model` target: the reference model of the upstream PVM host (`model/`, binary
//! `pvmc-model`), run as a separate process because it links the GPL-2.0 Unicorn engine and
//! this crate does not.
//!
//! Each of `jobs` workers owns one `pvmc-model run` child speaking the worker protocol
//! (`super::worker`): one instance id at a time in, one JSON [`CaseResult`] per line out. The
//! model enforces each instance's timeout itself; a child that dies or stays silent past it is
//! replaced and its instance is CRASH, so a crash of the model loses nothing that finished.
//! Instances of several vCPUs run after the others, one at a time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use runner::detect::{HostInfo, KvmStatus};

use super::{Target, TargetOptions, worker};
use crate::catalog::Instance;
use crate::result::CaseResult;

/// Environment variable naming the `pvmc-model` binary to run instead of building it.
pub const MODEL_BIN_VAR: &str = "PVMC_MODEL_BIN";

/// The reference model as a target.
pub struct ModelTarget {
    binary: PathBuf,
    image: PathBuf,
    faults: Vec<String>,
    host: HostInfo,
}

/// Builds `pvmc-model` in the workspace at `root` (the dev profile, which `cargo test` builds
/// too) and returns its path, or the one [`MODEL_BIN_VAR`] names.
pub fn binary(root: &Path) -> Result<PathBuf, String> {
    super::cargo_binary(root, "pvmc-model", MODEL_BIN_VAR)
}

impl ModelTarget {
    /// The model at `binary` running `image`, with the fault switches `faults` on. `Err` when
    /// the binary does not run or does not know one of the switches.
    pub fn new(binary: PathBuf, image: PathBuf, faults: Vec<String>) -> Result<Self, String> {
        let known = Self::fault_names(&binary)?;
        if let Some(bad) = faults.iter().find(|f| !known.contains(f)) {
            return Err(format!(
                "--fault {bad}: no such fault switch in the model (known: {})",
                known.join(", ")
            ));
        }
        let host = HostInfo {
            kernel: format!("pvmc-model {}", env!("CARGO_PKG_VERSION")),
            cpu: "Unicorn x86-64 (QEMU TCG), one vCPU".into(),
            kvm_backend: "model".into(),
            kvm: KvmStatus::Usable,
            dialect: None,
            dialect_evidence: if faults.is_empty() {
                "reference model: each instance's environment picks the generation".into()
            } else {
                format!(
                    "reference model: each instance's environment picks the generation; \
                     fault switches on: {}",
                    faults.join(", ")
                )
            },
            cpuid_differs: Vec::new(),
        };
        Ok(Self {
            binary,
            image,
            faults,
            host,
        })
    }

    /// The model's fault switches (`pvmc-model faults`).
    pub fn fault_names(binary: &Path) -> Result<Vec<String>, String> {
        let out = Command::new(binary)
            .arg("faults")
            .output()
            .map_err(|e| format!("{}: cannot run the model: {e}", binary.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} faults: exited with {}: {}",
                binary.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }

    fn command(&self, timeout: Duration) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("run")
            .arg("--image")
            .arg(&self.image)
            .arg("--timeout-ms")
            .arg(timeout.as_millis().to_string());
        for f in &self.faults {
            cmd.arg("--fault").arg(f);
        }
        cmd
    }
}

impl Target for ModelTarget {
    fn name(&self) -> &str {
        "model"
    }

    fn host(&self) -> &HostInfo {
        &self.host
    }

    fn usable(&self) -> Result<(), String> {
        Self::fault_names(&self.binary).map(drop)
    }

    fn run(
        &self,
        instances: &[Instance],
        opts: &TargetOptions,
        sink: &mut dyn FnMut(usize, CaseResult),
    ) {
        let what = format!("the model ({})", self.binary.display());
        // A VM of several vCPUs runs alone: its vCPU threads take turns in slices and its
        // cases time IPIs and timers in milliseconds, which another instance's threads on the
        // same cores would stretch (a missed 20 ms window, about once in 20 full runs with
        // `--jobs 2` on this 2-core machine). The others run `jobs` at a time first.
        let (smp, up): (Vec<usize>, Vec<usize>) =
            (0..instances.len()).partition(|&i| instances[i].case.vcpus > 1);
        for (part, jobs) in [(up, opts.jobs), (smp, 1)] {
            if opts.cancel.is_cancelled() {
                break;
            }
            let subset: Vec<Instance> = part.iter().map(|&i| instances[i].clone()).collect();
            let sub_opts = TargetOptions {
                jobs,
                ..opts.clone()
            };
            worker::run_pool(
                &|| self.command(opts.timeout),
                &what,
                &subset,
                &sub_opts,
                &mut |i, r| sink(part[i], r),
            );
        }
    }
}
