//! The `local` target: this machine's `/dev/kvm`, through the KVM backend, with `jobs` worker
//! threads. Each instance gets a fresh VM (`crate::exec`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use runner::detect::{HostInfo, KvmStatus};
use runner::image::GuestImage;
use runner::kvm::Kvm;
use runner::vm::RunLimits;

use super::{Target, TargetOptions, skip_reason};
use crate::catalog::Instance;
use crate::exec::{self, Executed};
use crate::result::CaseResult;

/// Environment variable naming the kernel log device to read instead of `/dev/kmsg` (tests
/// point it at a missing file to see a host whose log cannot be read).
pub const KMSG_PATH_VAR: &str = "PVMC_KMSG_PATH";

/// This machine.
pub struct LocalTarget {
    host: HostInfo,
    kvm: Result<Kvm, String>,
    image: Arc<GuestImage>,
}

impl LocalTarget {
    /// Detects the host and opens `/dev/kvm` (an unusable one is reported, not an error: its
    /// instances SKIP with the reason).
    pub fn new(image: Arc<GuestImage>) -> Self {
        let host = runner::detect::detect();
        let kvm = match &host.kvm {
            KvmStatus::Usable => Kvm::open().map_err(|e| e.to_string()),
            KvmStatus::Unusable(why) => Err(why.clone()),
        };
        Self { host, kvm, image }
    }

    /// The open `/dev/kvm` (benchmarks drive it directly).
    pub fn kvm(&self) -> Result<&Kvm, String> {
        self.kvm.as_ref().map_err(Clone::clone)
    }

    fn run_one(&self, inst: &Instance, opts: &TargetOptions) -> Option<CaseResult> {
        let kvm = match &self.kvm {
            Ok(k) => k,
            Err(why) => {
                return Some(CaseResult::skipped(
                    inst,
                    format!("no usable /dev/kvm: {why}"),
                ));
            }
        };
        if let Some(why) = skip_reason(&self.host, inst.env) {
            return Some(CaseResult::skipped(inst, why));
        }
        let start = Instant::now();
        let limits = RunLimits {
            timeout: exec::timeout_of(inst, opts.timeout),
            cancel: opts.cancel.clone(),
            no_progress: Some(runner::vm::NO_PROGRESS),
        };
        match exec::execute(kvm, &self.image, inst, &limits) {
            Executed::Done(raw) => Some(CaseResult::new(
                inst,
                raw,
                start.elapsed().as_secs_f64() * 1e3,
            )),
            Executed::Cancelled => None,
        }
    }
}

impl Target for LocalTarget {
    fn name(&self) -> &str {
        "local"
    }

    fn host(&self) -> &HostInfo {
        &self.host
    }

    fn watch_host(&self) -> Result<Box<dyn crate::host_health::HostLog>, String> {
        let path = std::env::var(KMSG_PATH_VAR).unwrap_or_else(|_| "/dev/kmsg".into());
        crate::host_health::Kmsg::open(&path)
            .map(|k| Box::new(k) as Box<dyn crate::host_health::HostLog>)
            .map_err(|e| format!("{path}: {e}"))
    }

    fn usable(&self) -> Result<(), String> {
        self.kvm
            .as_ref()
            .map(drop)
            .map_err(|why| format!("the KVM device is not usable: {why}"))
    }

    fn run(
        &self,
        instances: &[Instance],
        opts: &TargetOptions,
        sink: &mut dyn FnMut(usize, CaseResult),
    ) {
        let next = AtomicUsize::new(0);
        let (tx, rx) = mpsc::channel::<(usize, CaseResult)>();
        std::thread::scope(|s| {
            for _ in 0..opts.jobs.clamp(1, instances.len().max(1)) {
                let tx = tx.clone();
                let next = &next;
                s.spawn(move || {
                    while !opts.cancel.is_cancelled() {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(inst) = instances.get(i) else { break };
                        if let Some(r) = self.run_one(inst, opts)
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
}
