//! The `local` target: this machine's `/dev/kvm`, through the KVM backend, with `jobs` worker
//! threads. Each instance gets a fresh VM (`crate::exec`), created and booted ahead of time by
//! a helper thread (up to `jobs` instances ahead) while the current ones run, and torn down by
//! the same thread behind them: an instance's critical path is its run, not VM setup.
//!
//! Per-instance overhead (`duration_ms - run_ms` of a result) is what remains: handing the
//! prepared VM over, arming the run's timer, classifying the result.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use runner::detect::{HostInfo, KvmStatus};
use runner::image::GuestImage;
use runner::kvm::Kvm;
use runner::vm::{RunLimits, Vm};

use super::{Target, TargetOptions, instance_skip_reason};
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

    /// What an instance needs before it can run: a booted VM, or the result it has without
    /// one (SKIP, or ERROR when setup failed).
    fn prepare(&self, inst: &Instance) -> Prepared {
        let kvm = match &self.kvm {
            Ok(k) => k,
            Err(why) => {
                return Prepared::Result(CaseResult::skipped(
                    inst,
                    format!("no usable /dev/kvm: {why}"),
                ));
            }
        };
        if let Some(why) = instance_skip_reason(&self.host, inst) {
            return Prepared::Result(CaseResult::skipped(inst, why));
        }
        let start = Instant::now();
        match exec::boot_instance(kvm, &self.image, inst) {
            Ok(vm) => Prepared::Vm(vm),
            Err(e) => match exec::setup_failed(&e) {
                Executed::Done(raw) => Prepared::Result(CaseResult::new(
                    inst,
                    raw,
                    start.elapsed().as_secs_f64() * 1e3,
                )),
                Executed::Cancelled => Prepared::Cancelled,
            },
        }
    }

    /// Runs `inst` on its prepared VM; the VM goes to `reaper` afterwards.
    /// `waiting_since` is when the worker started waiting for this instance's VM: the time it
    /// waited for the preparer counts as the instance's (it is on the critical path).
    fn run_prepared(
        image: &Arc<GuestImage>,
        inst: &Instance,
        mut vm: Box<dyn Vm>,
        opts: &TargetOptions,
        reaper: &mpsc::Sender<Box<dyn Vm>>,
        waiting_since: Instant,
    ) -> Option<CaseResult> {
        let start = Instant::now();
        let limits = RunLimits {
            timeout: exec::timeout_of(inst, opts.timeout),
            cancel: opts.cancel.clone(),
            no_progress: Some(runner::vm::NO_PROGRESS),
        };
        let sibling = (inst.case.host == abi::case::HostCheck::Sibling).then(|| {
            exec::sibling_launcher(
                || Kvm::open().map_err(|e| format!("/dev/kvm: {e}")),
                image,
                inst,
                limits.clone(),
            )
        });
        let executed = exec::execute_booted(vm.as_mut(), inst, &limits, sibling);
        let run_ms = start.elapsed().as_secs_f64() * 1e3;
        // Teardown (closing the VM and unmapping its memory) happens behind us; if the reaper
        // is gone, drop it here.
        if let Err(mpsc::SendError(vm)) = reaper.send(vm) {
            drop(vm);
        }
        match executed {
            Executed::Done(raw) => {
                let total = waiting_since.elapsed().as_secs_f64() * 1e3;
                let mut r = CaseResult::new(inst, raw, total);
                r.run_ms = run_ms;
                Some(r)
            }
            Executed::Cancelled => None,
        }
    }
}

/// An instance ready to run ([`LocalTarget::prepare`]).
enum Prepared {
    /// Its booted VM.
    Vm(Box<dyn Vm>),
    /// Its result without a run.
    Result(CaseResult),
    /// Cancelled before it was ready.
    Cancelled,
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
        let jobs = opts.jobs.clamp(1, instances.len().max(1));
        let (tx, rx) = mpsc::channel::<(usize, CaseResult)>();
        // The preparer runs at most `jobs` instances ahead of the workers.
        let (ready_tx, ready_rx) = mpsc::sync_channel::<(usize, Prepared)>(jobs);
        // Only the workers hold the receiver: once they are all gone (done or cancelled), the
        // preparer's next send fails and it stops too.
        let ready_rx = Arc::new(Mutex::new(ready_rx));
        let (reap_tx, reap_rx) = mpsc::channel::<Box<dyn Vm>>();
        std::thread::scope(|s| {
            // One thread creates and destroys the VMs, never both at once: KVM names a VM's
            // debugfs directory after its fd, and a VM created while another is being torn
            // down on a second thread can reuse the fd before the old directory is gone.
            s.spawn(move || {
                for (i, inst) in instances.iter().enumerate() {
                    if opts.cancel.is_cancelled() {
                        break;
                    }
                    if ready_tx.send((i, self.prepare(inst))).is_err() {
                        break;
                    }
                    while let Ok(vm) = reap_rx.try_recv() {
                        drop(vm);
                    }
                }
                drop(ready_tx);
                for vm in reap_rx {
                    drop(vm);
                }
            });
            for _ in 0..jobs {
                let tx = tx.clone();
                let ready_rx = Arc::clone(&ready_rx);
                let reap_tx = reap_tx.clone();
                s.spawn(move || {
                    while !opts.cancel.is_cancelled() {
                        let waiting_since = Instant::now();
                        let next = match ready_rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => break,
                        };
                        let Ok((i, prepared)) = next else { break };
                        let Some(inst) = instances.get(i) else { break };
                        let r = match prepared {
                            Prepared::Vm(vm) => Self::run_prepared(
                                &self.image,
                                inst,
                                vm,
                                opts,
                                &reap_tx,
                                waiting_since,
                            ),
                            Prepared::Result(r) => Some(r),
                            Prepared::Cancelled => None,
                        };
                        if let Some(r) = r
                            && tx.send((i, r)).is_err()
                        {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            drop(reap_tx);
            drop(ready_rx);
            for (i, r) in rx.iter() {
                sink(i, r);
            }
        });
    }
}
