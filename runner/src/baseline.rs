//! The raw `KVM_RUN` exit loop: the lower bound for the runner's own per-exit overhead.
//!
//! It boots the guest's exit-loop case (`HostCheck::ExitLoop`: `out` to one port forever,
//! after the environment's usual setup) through the common boot path, then drives vCPU 0 with
//! a bare `KVM_RUN` loop written directly against kvm-ioctls, sharing nothing with
//! [`crate::kvm`]'s run loop or exit handling, and times the gaps between consecutive exits.
//! The runner-side measurement runs the same case through [`crate::vm::Vm::run`], so the two
//! numbers differ only by the host loop. Like every `KVM_RUN`, this one is bounded by a timer
//! ([`Machine::bounded_raw_run`]).

use std::time::{Duration, Instant};

use kvm_ioctls::VcpuExit;

use crate::boot::{self, BootParams};
use crate::image::GuestImage;
use crate::kvm::{Kvm, Machine};
use crate::{Result, RunnerError, kvm_err};

/// Boots `params` (the exit-loop case) and returns the gaps between consecutive port-I/O exits
/// to `port`, in nanoseconds, for `exits` exits after `warmup` untimed ones; fails if the
/// loop sees another exit or takes longer than `timeout`.
pub fn raw_exit_gaps(
    kvm: &Kvm,
    image: &GuestImage,
    params: &BootParams,
    port: u16,
    exits: usize,
    warmup: usize,
    timeout: Duration,
) -> Result<Vec<f64>> {
    let mut m: Machine = kvm.create_machine(&params.vm_options(0))?;
    boot::boot(&mut m, image, params)?;
    m.bounded_raw_run(timeout, |vcpu| {
        let mut gaps = Vec::with_capacity(exits);
        let mut last: Option<Instant> = None;
        let mut seen = 0usize;
        while gaps.len() < exits {
            match vcpu.run() {
                Ok(VcpuExit::IoOut(p, _)) if p == port => {
                    let now = Instant::now();
                    seen += 1;
                    if seen > warmup
                        && let Some(prev) = last
                    {
                        gaps.push((now - prev).as_secs_f64() * 1e9);
                    }
                    last = Some(now);
                }
                Ok(other) => {
                    return Err(RunnerError::Baseline(format!("unexpected exit {other:?}")));
                }
                Err(e) if e.errno() == libc::EINTR => {
                    return Err(RunnerError::Baseline(format!(
                        "no {exits} exits within {} ms",
                        timeout.as_millis()
                    )));
                }
                Err(e) => return Err(kvm_err("KVM_RUN")(e)),
            }
        }
        Ok(gaps)
    })?
}
