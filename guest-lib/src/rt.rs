//! The guest runtime: what happens between `_start` and the final status.
//!
//! `start` checks the boot info, selects the environment module the host asked for (the only
//! place that looks at the environment) and lets it set up the CPU, runs the case function
//! named in the boot info and reports PASS unless a check failed. Other vCPUs go to
//! `smp::ap_start`. A panic ends the case as FAIL with the panic message and location.

use abi::env::Env;
use abi::layout::{BOOT_MAGIC, BootInfo};
use abi::report::GuestStatus;

use crate::arch::{self, BootCell};

static BOOT: BootCell<Option<BootInfo>> = BootCell::new(None);

/// The boot info of this run.
pub fn boot_info() -> BootInfo {
    match BOOT.get() {
        Some(b) => b,
        None => crate::report::finish(GuestStatus::Error, "boot info read before start"),
    }
}

/// The parameter of the case being run (its descriptor's `param`).
pub fn case_param() -> u64 {
    boot_info().case_param
}

/// TSC cycles per millisecond: from the host's TSC frequency in the boot info, or 2.5 GHz if
/// the host did not know it (only time *bounds* use this, never a measured result).
pub fn cycles_per_ms() -> u64 {
    match boot_info().tsc_khz {
        0 => 2_500_000,
        khz => khz,
    }
}

/// Guest entry after `_start` on vCPU `cpu`.
pub fn start(info: &BootInfo, cpu: u32) -> ! {
    if info.magic != BOOT_MAGIC {
        crate::report::finish(GuestStatus::Error, "bad boot info magic");
    }
    let Some(channel) = abi::report::Channel::from_raw(info.channel) else {
        crate::report::finish(
            GuestStatus::Error,
            "unknown report channel in the boot info",
        )
    };
    crate::report::use_channel(channel);
    if cpu != 0 {
        crate::smp::ap_start(cpu);
    }
    let Some(env) = Env::from_raw(info.env) else {
        crate::error!("unknown environment {}", info.env)
    };
    let Some(module) = crate::env::select(env) else {
        crate::skip!("guest-lib does not implement environment {}", env.name())
    };
    // The environment's setup first: in pv-local it switches CPL0 code from the emulated path
    // to native execution, so everything after it runs at native speed.
    module.init_bsp(info);
    BOOT.init(|b| *b = Some(*info));
    crate::env::install(module);
    crate::paging::init(info.free_start, info.free_end);
    crate::smp::bsp_ready();
    arch::call_case(info.case_entry);
    crate::report::finish(GuestStatus::Pass, "")
}

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    match info.location() {
        Some(l) => crate::report::finish_fmt(
            GuestStatus::Fail,
            format_args!("panic at {}:{}: {}", l.file(), l.line(), info.message()),
        ),
        None => {
            crate::report::finish_fmt(GuestStatus::Fail, format_args!("panic: {}", info.message()))
        }
    }
}
