//! The local APIC in x2APIC mode (MSR interface) with the TSC-deadline timer: enough for
//! timer-interrupt cases and benchmarks. Needs the in-kernel irqchip (`FLAG_IRQCHIP`).

use abi::env::Env;

use crate::arch::instr;
use crate::exception::Exception;

const MSR_APIC_BASE: u32 = 0x1b;
const MSR_X2APIC_SVR: u32 = 0x80f;
const MSR_X2APIC_EOI: u32 = 0x80b;
const MSR_X2APIC_LVT_TIMER: u32 = 0x832;
const MSR_TSC_DEADLINE: u32 = 0x6e0;

/// Why the timer cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicError {
    /// CPUID lacks x2APIC or the TSC-deadline timer.
    Unsupported,
    /// A setup MSR write faulted.
    Setup(u32, Exception),
}

/// Enables the x2APIC (software-enabled, spurious vector `spurious`) with the timer in
/// TSC-deadline mode delivering `vector`. Both vectors need IDT gates (below 48).
pub fn enable_tsc_deadline_timer(vector: u8, spurious: u8) -> Result<(), ApicError> {
    let leaf1 = instr::cpuid(1, 0);
    if leaf1[2] & (1 << 21) == 0 || leaf1[2] & (1 << 24) == 0 {
        return Err(ApicError::Unsupported);
    }
    let base = instr::rdmsr_safe(MSR_APIC_BASE).map_err(|e| ApicError::Setup(MSR_APIC_BASE, e))?;
    let setup = [
        (MSR_APIC_BASE, base | (1 << 11) | (1 << 10)),
        (MSR_X2APIC_SVR, 0x100 | u64::from(spurious)),
        (MSR_X2APIC_LVT_TIMER, u64::from(vector) | (2 << 17)),
    ];
    for (msr, v) in setup {
        instr::wrmsr_safe(msr, v).map_err(|e| ApicError::Setup(msr, e))?;
    }
    Ok(())
}

/// Arms the timer for TSC value `deadline`.
pub fn arm(deadline: u64) -> Result<(), Exception> {
    instr::wrmsr_safe(MSR_TSC_DEADLINE, deadline)
}

/// Signals end of interrupt.
pub fn eoi() -> Result<(), Exception> {
    instr::wrmsr_safe(MSR_X2APIC_EOI, 0)
}

/// Lets maskable interrupts in (or not): `sti`/`cli` in hvm64, the VIF page's virtual IF in
/// pv-local (where `cli`/`sti` do not gate delivery).
pub fn set_interrupts(on: bool) {
    match (crate::rt::env(), on) {
        (Env::PvLocal, on) => crate::pv_local::set_virtual_if(on),
        (_, true) => instr::sti(),
        (_, false) => instr::cli(),
    }
}
