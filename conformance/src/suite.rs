//! Running case instances and classifying what happened.
//!
//! Each instance gets a fresh VM (`runner::kvm::Machine`): page tables, the guest image and
//! the boot info are written, the vCPU starts at `_start` in long mode, and the run ends when
//! the guest reports its final status, crashes, or its timeout expires. Instances run on
//! `jobs` worker threads; results are handed to a callback as they complete (for progress and
//! the crash-safe progress log) and returned in table order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use abi::case::FLAG_IRQCHIP;
use abi::env::Env;
use abi::report::GuestStatus;
use runner::detect::{HostInfo, KvmStatus};
use runner::image::GuestImage;
use runner::kvm::{Kvm, Machine, MachineOptions, RunEnd};
use runner::setup;
use serde::Serialize;

use crate::catalog::Instance;
use crate::expect::Expectations;
use crate::host_check::CaseHandler;
use crate::outcome::Outcome;

/// Default per-instance timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How to run the suite.
#[derive(Clone, Debug)]
pub struct SuiteOptions {
    /// Timeout of an instance whose case does not set its own.
    pub timeout: Duration,
    /// Worker threads.
    pub jobs: usize,
    /// Known deviations.
    pub expectations: Expectations,
}

impl Default for SuiteOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            jobs: 1,
            expectations: Expectations::default(),
        }
    }
}

/// The result of one instance.
#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    /// `<case>~<env>`.
    pub id: String,
    /// Case name.
    pub case: String,
    /// Area name.
    pub area: &'static str,
    /// Environment name.
    pub env: &'static str,
    /// Final outcome (after expectations).
    pub outcome: Outcome,
    /// Wall time of the instance, including VM creation and teardown.
    pub duration_ms: f64,
    /// What happened: logs, failed checks, final reason, crash details.
    pub detail: String,
    /// Requirement ids the case checks.
    pub requirements: Vec<String>,
    /// One-line description of the case.
    pub summary: String,
}

/// Runs `instances`; `on_result(done, total, result)` sees each result as it completes.
pub fn run(
    image: &GuestImage,
    host: &HostInfo,
    instances: &[Instance],
    opts: &SuiteOptions,
    on_result: &mut dyn FnMut(usize, usize, &CaseResult),
) -> Vec<CaseResult> {
    let total = instances.len();
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<(usize, CaseResult)>();
    let mut slots: Vec<Option<CaseResult>> = vec![None; total];
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.clamp(1, total.max(1)) {
            let tx = tx.clone();
            let next = &next;
            s.spawn(move || {
                let kvm = match host.kvm {
                    KvmStatus::Usable => Kvm::open().map_err(|e| e.to_string()),
                    KvmStatus::Unusable(ref why) => Err(why.clone()),
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(inst) = instances.get(i) else { break };
                    let r = run_one(kvm.as_ref(), image, host, inst, opts);
                    if tx.send((i, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for (done, (i, r)) in rx.iter().enumerate() {
            on_result(done + 1, total, &r);
            slots[i] = Some(r);
        }
    });
    slots.into_iter().flatten().collect()
}

fn run_one(
    kvm: Result<&Kvm, &String>,
    image: &GuestImage,
    host: &HostInfo,
    inst: &Instance,
    opts: &SuiteOptions,
) -> CaseResult {
    let id = inst.id();
    let start = Instant::now();
    let (raw, detail) = match applicability(kvm, host, inst.env) {
        Err(why) => (Outcome::Skip, why),
        Ok(kvm) => execute(kvm, image, inst, opts),
    };
    let (outcome, detail) = opts.expectations.apply(&id, raw, detail);
    CaseResult {
        id,
        case: inst.case.name.clone(),
        area: inst.case.area.name(),
        env: inst.env.name(),
        outcome,
        duration_ms: start.elapsed().as_secs_f64() * 1e3,
        detail,
        requirements: inst.case.requirements.clone(),
        summary: inst.case.summary.clone(),
    }
}

/// Why an instance cannot run here, if it cannot.
pub(crate) fn applicability<'k>(
    kvm: Result<&'k Kvm, &String>,
    host: &HostInfo,
    env: Env,
) -> Result<&'k Kvm, String> {
    let kvm = kvm.map_err(|why| format!("no usable /dev/kvm: {why}"))?;
    if let Some(need) = env.required_dialect()
        && host.dialect != Some(need)
    {
        let has = host.dialect.map_or("no PVM dialect", |d| d.name());
        return Err(format!(
            "environment {} needs the {} dialect; the host speaks {has}",
            env.name(),
            need.name()
        ));
    }
    if !matches!(env, Env::Hvm64 | Env::PvLocal) {
        return Err(format!(
            "guest-lib does not implement environment {} yet",
            env.name()
        ));
    }
    Ok(kvm)
}

/// A fresh VM with the image loaded and the vCPU at `_start` for `inst`.
pub(crate) fn prepare(kvm: &Kvm, image: &GuestImage, inst: &Instance) -> runner::Result<Machine> {
    let irqchip = inst.case.flags & FLAG_IRQCHIP != 0;
    let vcpus = inst.case.vcpus.max(1);
    let m = kvm.create_machine(MachineOptions {
        irqchip,
        vcpus,
        ..MachineOptions::default()
    })?;
    setup::write_page_tables(m.memory())?;
    image.load_into(m.memory())?;
    setup::write_boot_info(m.memory(), inst.env, inst.case.entry, 0, vcpus)?;
    m.set_long_mode_entry(image.entry)?;
    Ok(m)
}

fn execute(
    kvm: &Kvm,
    image: &GuestImage,
    inst: &Instance,
    opts: &SuiteOptions,
) -> (Outcome, String) {
    let mut machine = match prepare(kvm, image, inst) {
        Ok(m) => m,
        Err(e) => return (Outcome::Error, format!("VM setup failed: {e}")),
    };
    let timeout = match inst.case.timeout_ms {
        0 => opts.timeout,
        ms => Duration::from_millis(u64::from(ms)),
    };
    let mut handler = CaseHandler::new(inst.case.host);
    let end = machine.run(&mut handler, timeout);
    let mut parts = handler.lines.clone();
    let crash = |what: String, parts: &mut Vec<String>| {
        parts.push(format!("{what}; registers: {}", machine.register_dump()));
        Outcome::Crash
    };
    let outcome = match end {
        Ok(RunEnd::Stopped) => match handler.result.clone() {
            Some((status, reason)) => {
                if !reason.is_empty() {
                    parts.push(reason);
                }
                parts.extend(
                    handler
                        .host_failures
                        .iter()
                        .map(|f| format!("host check: {f}")),
                );
                let guest = match status {
                    GuestStatus::Pass => Outcome::Pass,
                    GuestStatus::Fail => Outcome::Fail,
                    GuestStatus::Skip => Outcome::Skip,
                    GuestStatus::Error => Outcome::Error,
                };
                if handler.host_failures.is_empty() {
                    guest
                } else {
                    guest.merge(Outcome::Fail)
                }
            }
            None => crash("run stopped without a final status".into(), &mut parts),
        },
        Ok(RunEnd::Timeout(after)) => crash(
            format!("timeout: no final status after {} ms", after.as_millis()),
            &mut parts,
        ),
        Ok(RunEnd::Shutdown) => crash("triple fault (KVM_EXIT_SHUTDOWN)".into(), &mut parts),
        Ok(RunEnd::InternalError(sub)) => crash(
            format!(
                "KVM_EXIT_INTERNAL_ERROR, suberror {sub}{}",
                if sub == 1 { " (emulation failure)" } else { "" }
            ),
            &mut parts,
        ),
        Ok(RunEnd::FailEntry(reason)) => crash(
            format!("KVM_EXIT_FAIL_ENTRY, reason {reason:#x}"),
            &mut parts,
        ),
        Ok(RunEnd::Unexpected(what)) => crash(format!("unexpected exit: {what}"), &mut parts),
        Err(e) => {
            parts.push(format!("runner error: {e}"));
            Outcome::Error
        }
    };
    (outcome, parts.join("; "))
}
