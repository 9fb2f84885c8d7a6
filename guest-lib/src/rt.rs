//! The guest runtime: what happens between `_start` and the final status.
//!
//! `start` checks the boot info, sets up the environment the host asked for (for pv-local:
//! registers the VIF page), loads the descriptor tables, runs the case function named in the
//! boot info and reports PASS unless a check failed. Other vCPUs go to `smp::ap_start`. A panic ends the case as FAIL with
//! the panic message and location.

use abi::env::Env;
use abi::layout::{BOOT_MAGIC, BootInfo};
use abi::report::GuestStatus;

use crate::arch::{self, Global};

static BOOT: Global<Option<BootInfo>> = Global::new(None);

/// The boot info of this run.
pub fn boot_info() -> BootInfo {
    match BOOT.get() {
        Some(b) => b,
        None => crate::report::finish(GuestStatus::Error, "boot info read before start"),
    }
}

/// The environment this case instance runs in.
pub fn env() -> Env {
    Env::from_raw(boot_info().env).unwrap_or(Env::Hvm64)
}

/// Guest entry after `_start` on vCPU `cpu`.
pub fn start(info: &BootInfo, cpu: u32) -> ! {
    if info.magic != BOOT_MAGIC {
        crate::report::finish(GuestStatus::Error, "bad boot info magic");
    }
    if cpu != 0 {
        crate::smp::ap_start(cpu);
    }
    BOOT.set(Some(*info));
    // The environment first: in pv-local the VIF registration switches CPL0 code from the
    // emulated path to native execution, so the rest of the setup runs at native speed.
    match Env::from_raw(info.env) {
        Some(Env::Hvm64) => {}
        Some(Env::PvLocal) => {
            crate::pv_local::enable();
            arch::set_pv_local_return(true);
        }
        Some(other) => crate::skip!("guest-lib does not implement environment {}", other.name()),
        None => crate::error!("unknown environment {}", info.env),
    }
    arch::tables::init();
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
