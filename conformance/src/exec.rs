//! Running one case instance on any [`Backend`], and classifying what happened.
//!
//! [`boot_instance`] is the instance-level boot (a fresh VM from the backend, booted through
//! `runner::boot`); [`execute`] runs it with a [`CaseHandler`] and [`classify`] turns the run's
//! end and what the guest and the host-side check said into an [`Outcome`] with its detail.
//! Targets that execute instances themselves (the local one; a model process later) share
//! this code, so an instance means the same thing everywhere.

use std::time::Duration;

use runner::boot::{self, BootParams};
use runner::image::GuestImage;
use runner::vm::{Backend, RunEnd, RunLimits, Vm};

use crate::catalog::Instance;
use crate::host_check::CaseHandler;
use crate::outcome::Outcome;

/// What one run of an instance produced, before expectations are applied.
#[derive(Clone, Debug, PartialEq)]
pub struct RawResult {
    /// Outcome of the run itself.
    pub outcome: Outcome,
    /// Logs, failed checks, the final reason, crash details.
    pub detail: String,
    /// Checks made by the guest and by the host-side check.
    pub checks: u32,
}

/// How [`execute`] ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Executed {
    /// The instance ran (to any outcome).
    Done(RawResult),
    /// The run was cancelled before it finished: it has no result.
    Cancelled,
}

/// The boot parameters of an instance.
pub fn boot_params(inst: &Instance) -> BootParams {
    BootParams {
        env: inst.env,
        case_entry: inst.case.entry,
        case_param: inst.case.param,
        vcpus: inst.case.vcpus.max(1),
    }
}

/// A fresh VM from `backend` with `image` booted for `inst`.
pub fn boot_instance(
    backend: &dyn Backend,
    image: &GuestImage,
    inst: &Instance,
) -> runner::Result<Box<dyn Vm>> {
    let params = boot_params(inst);
    let mut vm = backend.create_vm(&params.vm_options(inst.case.flags))?;
    boot::boot(vm.as_mut(), image, &params)?;
    Ok(vm)
}

/// The timeout of `inst`: its own, or `default`.
pub fn timeout_of(inst: &Instance, default: Duration) -> Duration {
    match inst.case.timeout_ms {
        0 => default,
        ms => Duration::from_millis(u64::from(ms)),
    }
}

/// Boots and runs `inst` on `backend` under `limits`.
pub fn execute(
    backend: &dyn Backend,
    image: &GuestImage,
    inst: &Instance,
    limits: &RunLimits,
) -> Executed {
    match boot_instance(backend, image, inst) {
        Ok(mut vm) => execute_booted(vm.as_mut(), inst, limits, None),
        Err(e) => setup_failed(&e),
    }
}

/// Starts the second VM of a `HostCheck::Sibling` case: the same case, its parameter plus
/// `SIBLING_PARAM`, in a VM of its own on a thread of its own, on the backend `backend`
/// makes (each sibling its own: the local target opens `/dev/kvm` again).
pub fn sibling_launcher<B: Backend + 'static>(
    backend: impl Fn() -> Result<B, String> + Send + Sync + 'static,
    image: &std::sync::Arc<GuestImage>,
    inst: &Instance,
    limits: RunLimits,
) -> crate::host_check::SiblingLauncher {
    let image = std::sync::Arc::clone(image);
    let mut case = (*inst.case).clone();
    case.param |= abi::case::io::SIBLING_PARAM;
    let sibling = Instance {
        case: std::sync::Arc::new(case),
        env: inst.env,
    };
    let backend = std::sync::Arc::new(backend);
    std::sync::Arc::new(move || {
        let (image, sibling, limits) = (
            std::sync::Arc::clone(&image),
            sibling.clone(),
            limits.clone(),
        );
        let backend = std::sync::Arc::clone(&backend);
        std::thread::spawn(move || {
            let b = match backend() {
                Ok(b) => b,
                Err(e) => return (Outcome::Error, e),
            };
            match execute(&b, &image, &sibling, &limits) {
                Executed::Done(raw) => (raw.outcome, raw.detail),
                Executed::Cancelled => (Outcome::Error, "cancelled".into()),
            }
        })
    })
}

/// The result of an instance whose VM could not be set up.
pub fn setup_failed(e: &runner::RunnerError) -> Executed {
    Executed::Done(RawResult {
        outcome: Outcome::Error,
        detail: format!("VM setup failed: {e}"),
        checks: 0,
    })
}

/// Runs `inst` on a VM [`boot_instance`] booted for it (a target that prepares VMs ahead of
/// time runs them with this); `sibling` starts the second VM of a `HostCheck::Sibling` case.
pub fn execute_booted(
    vm: &mut dyn Vm,
    inst: &Instance,
    limits: &RunLimits,
    sibling: Option<crate::host_check::SiblingLauncher>,
) -> Executed {
    let mut handler = CaseHandler::with_sibling(inst.case.host, sibling);
    let end = vm.run(&mut handler, limits);
    if matches!(end, Ok(RunEnd::Cancelled)) {
        return Executed::Cancelled;
    }
    Executed::Done(classify(end, &handler, || vm.register_dump()))
}

/// The outcome of a run that ended with `end`, given what `h` collected; `dump` gives the
/// registers for a CRASH.
pub fn classify(
    end: runner::Result<RunEnd>,
    h: &CaseHandler,
    dump: impl FnOnce() -> String,
) -> RawResult {
    let mut parts = h.lines.clone();
    // A HostCheck::Shutdown case whose guest reached checkpoint 0 and no final status.
    let expected_shutdown = h.check() == abi::case::HostCheck::Shutdown
        && h.last_checkpoint == Some(0)
        && h.result.is_none()
        && h.host_failures.is_empty();
    let host_failures = h.host_failures.iter().map(|f| format!("host check: {f}"));
    let crash = |what: String, mut parts: Vec<String>| {
        parts.push(format!("{what}; registers: {}", dump()));
        (Outcome::Crash, parts)
    };
    let (outcome, parts) = match end {
        Ok(RunEnd::Stopped) => match &h.result {
            Some(r) => {
                let guest = Outcome::of_guest(r.status);
                let finished = Outcome::of_guest(r.finished_with);
                match (r.reason.is_empty(), finished == guest) {
                    (true, _) => {}
                    (false, true) => parts.push(r.reason.clone()),
                    (false, false) => parts.push(format!(
                        "{} (outranked by {}): {}",
                        finished.label(),
                        guest.label(),
                        r.reason
                    )),
                }
                parts.extend(host_failures);
                let outcome = if h.host_failures.is_empty() {
                    guest
                } else {
                    guest.merge(Outcome::Fail)
                };
                let checks = r.checks.saturating_add(h.host_checks);
                if outcome == Outcome::Pass && checks == 0 && h.samples.is_empty() {
                    parts.push(
                        "the case made no checks (a case that checks nothing must not pass)".into(),
                    );
                    (Outcome::Error, parts)
                } else {
                    (outcome, parts)
                }
            }
            None => crash("run stopped without a final status".into(), parts),
        },
        Ok(RunEnd::Timeout(after)) => crash(
            format!("timeout: no final status after {} ms", after.as_millis()),
            parts,
        ),
        Ok(RunEnd::Cancelled) => crash("cancelled before a final status".into(), parts),
        Ok(RunEnd::NoProgress { after, rip }) => crash(
            format!(
                "no forward progress: every register unchanged for {} ms at rip={rip:#x} (a livelock in the host?)",
                after.as_millis()
            ),
            parts,
        ),
        // The shutdown came where it must, but a check the guest made before it failed.
        Ok(RunEnd::Shutdown) if expected_shutdown && h.failed_checks > 0 => {
            parts.push(
                "the host shut the vCPU down after checkpoint 0, but checks before it failed"
                    .into(),
            );
            (Outcome::Fail, parts)
        }
        Ok(RunEnd::Shutdown) if expected_shutdown => {
            parts.push("the host shut the vCPU down after checkpoint 0, as it must".into());
            (Outcome::Pass, parts)
        }
        Ok(RunEnd::Shutdown) => crash("triple fault (KVM_EXIT_SHUTDOWN)".into(), parts),
        Ok(RunEnd::InternalError(sub)) => crash(
            format!(
                "KVM_EXIT_INTERNAL_ERROR, suberror {sub}{}",
                if sub == 1 { " (emulation failure)" } else { "" }
            ),
            parts,
        ),
        Ok(RunEnd::FailEntry(reason)) => {
            crash(format!("KVM_EXIT_FAIL_ENTRY, reason {reason:#x}"), parts)
        }
        Ok(RunEnd::Unexpected(what)) => crash(format!("unexpected exit: {what}"), parts),
        Err(e) => {
            parts.push(format!("runner error: {e}"));
            (Outcome::Error, parts)
        }
    };
    RawResult {
        outcome,
        detail: parts.join("; "),
        checks: h
            .result
            .as_ref()
            .map_or(0, |r| r.checks)
            .saturating_add(h.host_checks)
            .saturating_add(u32::from(outcome == Outcome::Pass && expected_shutdown)),
    }
}

#[cfg(test)]
mod tests {
    use abi::case::HostCheck;
    use abi::report::{GuestStatus, Message, MessageKind};
    use runner::vm::ExitHandler;

    use super::*;

    fn finished(status: GuestStatus, with: GuestStatus, checks: u64, reason: &str) -> CaseHandler {
        let mut h = CaseHandler::new(HostCheck::None);
        let mut m = Message::new(MessageKind::Result);
        m.values = [status as u64, checks, with as u64, 0];
        m.text = [0; abi::report::TEXT_LEN];
        m.text[..reason.len()].copy_from_slice(reason.as_bytes());
        h.report(&m);
        h
    }

    #[test]
    fn a_pass_without_checks_is_an_error() {
        let h = finished(GuestStatus::Pass, GuestStatus::Pass, 0, "");
        let r = classify(Ok(RunEnd::Stopped), &h, String::new);
        assert_eq!(r.outcome, Outcome::Error);
        assert!(r.detail.contains("no checks"), "{}", r.detail);
        let h = finished(GuestStatus::Pass, GuestStatus::Pass, 2, "");
        let r = classify(Ok(RunEnd::Stopped), &h, String::new);
        assert_eq!((r.outcome, r.checks), (Outcome::Pass, 2));
    }

    #[test]
    fn a_failed_check_outranks_a_later_error_and_both_are_kept() {
        let mut h = finished(GuestStatus::Fail, GuestStatus::Error, 1, "setup broke");
        h.lines.insert(0, "check failed at x.rs:1: a == b".into());
        let r = classify(Ok(RunEnd::Stopped), &h, String::new);
        assert_eq!(r.outcome, Outcome::Fail);
        assert!(r.detail.contains("check failed"), "{}", r.detail);
        assert!(
            r.detail.contains("ERROR (outranked by FAIL): setup broke"),
            "{}",
            r.detail
        );
    }

    #[test]
    fn no_final_status_is_a_crash_with_registers() {
        let h = CaseHandler::new(HostCheck::None);
        let r = classify(Ok(RunEnd::Timeout(Duration::from_millis(5))), &h, || {
            "rip=0x1".into()
        });
        assert_eq!(r.outcome, Outcome::Crash);
        assert!(r.detail.contains("timeout") && r.detail.contains("rip=0x1"));
        let r = classify(Ok(RunEnd::Stopped), &h, String::new);
        assert_eq!(r.outcome, Outcome::Crash);
    }

    #[test]
    fn a_shutdown_passes_only_where_the_case_expects_it_after_checkpoint_0() {
        let mut h = CaseHandler::new(HostCheck::Shutdown);
        let r = classify(Ok(RunEnd::Shutdown), &h, String::new);
        assert_eq!(
            r.outcome,
            Outcome::Crash,
            "before checkpoint 0: {}",
            r.detail
        );
        h.report(&Message::new(MessageKind::Checkpoint));
        let r = classify(Ok(RunEnd::Shutdown), &h, String::new);
        assert_eq!((r.outcome, r.checks), (Outcome::Pass, 1), "{}", r.detail);
        let mut other = CaseHandler::new(HostCheck::None);
        other.report(&Message::new(MessageKind::Checkpoint));
        let r = classify(Ok(RunEnd::Shutdown), &other, String::new);
        assert_eq!(r.outcome, Outcome::Crash, "a case that does not expect it");
    }

    #[test]
    fn an_expected_shutdown_after_a_failed_check_fails() {
        let mut h = CaseHandler::new(HostCheck::Shutdown);
        h.report(&Message::new(MessageKind::AssertFail));
        h.report(&Message::new(MessageKind::Checkpoint));
        let r = classify(Ok(RunEnd::Shutdown), &h, String::new);
        assert_eq!(r.outcome, Outcome::Fail, "{}", r.detail);
        assert!(r.detail.contains("check failed"), "{}", r.detail);
    }
}
