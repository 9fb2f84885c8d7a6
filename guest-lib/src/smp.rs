//! Several vCPUs. vCPU 0 (the BSP) runs the case; every other vCPU (an AP) waits until the BSP
//! has published its setup (`arch::release_aps`), sets itself up through the environment,
//! enables its x2APIC and then idles with interrupts enabled, so a case drives it through
//! interrupt handlers (IPIs).
//!
//! A vCPU finds its own index from its stack pointer ([`current_cpu`]: each vCPU has its own
//! stack in the guest layout), which costs no exit on hosts that trap everything else.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::arch::{self, instr};

static APS_ONLINE: AtomicU32 = AtomicU32::new(0);

/// Index of the vCPU running this code (0 for the BSP, also on its user and trap stacks).
pub fn current_cpu() -> u32 {
    arch::cpu_index()
}

/// Number of vCPUs of this run.
pub fn cpus() -> u32 {
    crate::rt::boot_info().vcpus.max(1)
}

/// Called by the BSP once its setup is complete: publishes it and lets the APs go.
pub(crate) fn bsp_ready() {
    arch::release_aps();
}

/// Waits (at most `max_cycles` TSC cycles) until every AP is idling with its APIC enabled.
pub fn wait_for_aps(max_cycles: u64) -> bool {
    let want = cpus() - 1;
    let t0 = instr::rdtsc();
    while APS_ONLINE.load(Ordering::Acquire) < want {
        if instr::rdtsc() - t0 > max_cycles {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// Entry of vCPUs other than 0.
pub(crate) fn ap_start(cpu: u32) -> ! {
    while !arch::aps_released() {
        core::hint::spin_loop();
    }
    let env = crate::env::current();
    env.init_ap(cpu);
    if let Err(e) = crate::apic::enable_x2apic(crate::apic::SPURIOUS_VECTOR) {
        crate::error!("vCPU {cpu}: cannot enable its x2APIC: {e:?}");
    }
    APS_ONLINE.fetch_add(1, Ordering::Release);
    loop {
        env.idle();
    }
}
