//! The `qemu` target (direct): every `hvm64` instance boots as its own tiny kernel in a fresh
//! QEMU process ([`runner::qemu`]), the way kvm-unit-tests runs. QEMU (TCG here) is a reference
//! x86 implementation, so `cargo xtask diff` of a qemu and a local report is a list of findings.
//!
//! What QEMU's VM cannot give a case, the instance SKIPs with the reason before anything
//! boots: environments other than `hvm64` (a PVM environment needs a PVM host), several vCPUs,
//! high vCPU ids, and host-side devices (the report stream is QEMU's only channel, so a
//! `HostCheck` other than `None`, `Lifecycle` and `Shutdown` has nothing to check with). VMM
//! requests are answered `Unsupported`, which the guest turns into SKIP naming the op.
//!
//! TCG runs guest code several times slower than KVM and each instance starts a QEMU: an
//! instance's timeout is its own [`TIMEOUT_FACTOR`] times plus [`STARTUP`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use abi::case::HostCheck;
use abi::env::Env;
use runner::detect::{HostInfo, KvmStatus};
use runner::image::GuestImage;
use runner::qemu::{Accel, Qemu};
use runner::vm::{Backend, RunLimits, VmOptions};

use super::{Target, TargetOptions};
use crate::catalog::Instance;
use crate::exec::{self, Executed};
use crate::result::CaseResult;

/// An instance's timeout under QEMU is its own times this ...
pub const TIMEOUT_FACTOR: u32 = 4;
/// ... plus this for starting QEMU and its firmware.
pub const STARTUP: Duration = Duration::from_secs(2);

/// Whether `host` (a QEMU target's) runs guests in TCG, whose known deviations are
/// `expectations/qemu-tcg.toml`.
pub fn is_tcg(host: &HostInfo) -> bool {
    host.kvm_backend == backend_name(Accel::Tcg)
}

fn backend_name(accel: Accel) -> String {
    format!("qemu-{}", accel.name())
}

/// QEMU on this machine.
pub struct QemuTarget {
    qemu: Result<Qemu, String>,
    host: HostInfo,
    image: Arc<GuestImage>,
}

/// The TSC frequency to tell guests: QEMU's TSC is the host's, which the local `/dev/kvm`
/// knows (0, "unknown", without one).
fn host_tsc_khz() -> u32 {
    let Ok(kvm) = runner::kvm::Kvm::open() else {
        return 0;
    };
    kvm.create_vm(&VmOptions::default())
        .and_then(|vm| vm.tsc_khz())
        .unwrap_or(0)
}

impl QemuTarget {
    /// Finds QEMU (an unusable one is reported by [`Target::usable`]).
    pub fn new(image: Arc<GuestImage>) -> Self {
        let accel = Accel::detect();
        let qemu = Qemu::find(accel, host_tsc_khz()).map_err(|e| e.to_string());
        let host = HostInfo {
            kernel: match &qemu {
                Ok(q) => q.version().to_string(),
                Err(_) => "QEMU (not found)".into(),
            },
            cpu: format!("QEMU -cpu max ({}), one vCPU", accel.name()),
            kvm_backend: backend_name(accel),
            kvm: match &qemu {
                Ok(_) => KvmStatus::Usable,
                Err(e) => KvmStatus::Unusable(e.clone()),
            },
            dialect: None,
            dialect_evidence: match &qemu {
                Ok(q) => format!(
                    "QEMU direct boot, a reference x86 without PVM (firmware {})",
                    q.firmware()
                        .map_or("SeaBIOS".into(), |f| f.display().to_string())
                ),
                Err(_) => "QEMU direct boot".into(),
            },
            cpuid_differs: Vec::new(),
        };
        Self { qemu, host, image }
    }
}

/// Why `inst` cannot run as a direct QEMU boot on `host` (the QEMU target's), if it cannot.
pub fn skip_reason(host: &HostInfo, inst: &Instance) -> Option<String> {
    if inst.env != Env::Hvm64 {
        return Some(format!(
            "the qemu target boots hvm64 guests directly; environment {} needs a PVM host \
             (--target qemu --host-image, ssh, gce)",
            inst.env.name()
        ));
    }
    if let Some(why) = super::instance_skip_reason(host, inst) {
        return Some(why);
    }
    if inst.case.vcpus > 1 {
        return Some(format!(
            "QEMU direct boot starts one vCPU; the case needs {}",
            inst.case.vcpus
        ));
    }
    if inst.case.flags & abi::case::FLAG_HIGH_VCPU_ID != 0 {
        return Some("QEMU direct boot has no high vCPU ids".into());
    }
    match inst.case.host {
        HostCheck::None | HostCheck::Lifecycle | HostCheck::Shutdown => None,
        other @ (HostCheck::PortIo
        | HostCheck::Mmio
        | HostCheck::HltExit
        | HostCheck::Bench
        | HostCheck::ExitLoop
        | HostCheck::Scratch
        | HostCheck::Sibling) => Some(format!(
            "the qemu target has no host-side device for HostCheck::{other:?} (QEMU's report \
             stream is its only channel)"
        )),
    }
}

impl Target for QemuTarget {
    fn name(&self) -> &str {
        "qemu"
    }

    fn host(&self) -> &HostInfo {
        &self.host
    }

    fn usable(&self) -> Result<(), String> {
        self.qemu.as_ref().map(drop).map_err(Clone::clone)
    }

    fn host_outlives_runs(&self) -> bool {
        false
    }

    fn run(
        &self,
        instances: &[Instance],
        opts: &TargetOptions,
        sink: &mut dyn FnMut(usize, CaseResult),
    ) {
        super::run_parallel(instances, opts, sink, &|(): &mut (), inst| {
            let qemu = match (&self.qemu, skip_reason(&self.host, inst)) {
                (Err(why), _) => {
                    return Some(CaseResult::skipped(inst, format!("no usable QEMU: {why}")));
                }
                (Ok(_), Some(why)) => return Some(CaseResult::skipped(inst, why)),
                (Ok(qemu), None) => qemu,
            };
            let start = Instant::now();
            let limits = RunLimits {
                timeout: exec::timeout_of(inst, opts.timeout) * TIMEOUT_FACTOR + STARTUP,
                cancel: opts.cancel.clone(),
                no_progress: None,
            };
            match exec::execute(qemu, &self.image, inst, &limits) {
                Executed::Done(raw) => Some(CaseResult::new(
                    inst,
                    raw,
                    start.elapsed().as_secs_f64() * 1e3,
                )),
                Executed::Cancelled => None,
            }
        });
    }
}
