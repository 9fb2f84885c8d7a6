//! Several vCPUs. vCPU 0 (the BSP) runs the case; every other vCPU (an AP) waits until the BSP
//! has built the descriptor tables, sets itself up, enables its x2APIC and then idles with
//! interrupts enabled, so a case drives it through interrupt handlers (IPIs).
//!
//! A vCPU finds its own index from its stack pointer (each vCPU has its own stack in the
//! guest layout), which costs no exit on hosts that trap everything else.

use abi::env::Env;
use abi::layout::{AP_STACK_SIZE, MAX_VCPUS, USER_STACK_TOP};

use crate::arch::{self, Global, instr};

static BSP_READY: Global<bool> = Global::new(false);
static APS_ONLINE: Global<u32> = Global::new(0);

/// Index of the vCPU running this code (0 for the BSP, also on its user and trap stacks).
pub fn current_cpu() -> u32 {
    let rsp = instr::read_rsp();
    if rsp <= USER_STACK_TOP {
        return 0;
    }
    let cpu = (rsp - USER_STACK_TOP).div_ceil(AP_STACK_SIZE);
    if cpu < u64::from(MAX_VCPUS) {
        cpu as u32
    } else {
        0
    }
}

/// Number of vCPUs of this run.
pub fn cpus() -> u32 {
    crate::rt::boot_info().vcpus.max(1)
}

/// Called by the BSP once the shared tables exist.
pub(crate) fn bsp_ready() {
    BSP_READY.set(true);
}

/// Waits (at most `max_cycles` TSC cycles) until every AP is idling with its APIC enabled.
pub fn wait_for_aps(max_cycles: u64) -> bool {
    let want = cpus() - 1;
    let t0 = instr::rdtsc();
    while APS_ONLINE.get() < want {
        if instr::rdtsc() - t0 > max_cycles {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// Entry of vCPUs other than 0.
pub(crate) fn ap_start(cpu: u32) -> ! {
    while !BSP_READY.get() {
        core::hint::spin_loop();
    }
    if crate::rt::env() == Env::PvLocal {
        crate::pv_local::enable_on(cpu);
    }
    arch::tables::load_ap();
    if let Err(e) = crate::apic::enable_x2apic(crate::apic::SPURIOUS_VECTOR) {
        crate::error!("vCPU {cpu}: cannot enable its x2APIC: {e:?}");
    }
    // `Global` has no atomic read-modify-write, so APs come online in index order: each waits
    // until the count equals its index - 1 and then stores its index.
    while APS_ONLINE.get() != cpu - 1 {
        core::hint::spin_loop();
    }
    APS_ONLINE.set(cpu);
    loop {
        crate::apic::set_interrupts(true);
        instr::hlt();
    }
}
