//! The local APIC in x2APIC mode (MSR interface) with the TSC-deadline timer: enough for
//! timer-interrupt cases and benchmarks. Needs the in-kernel irqchip (`FLAG_IRQCHIP`).

use abi::env::Env;

use crate::arch::instr;
use crate::exception::Exception;

const MSR_APIC_BASE: u32 = 0x1b;
const MSR_X2APIC_SVR: u32 = 0x80f;
const MSR_X2APIC_EOI: u32 = 0x80b;
const MSR_X2APIC_LVT_TIMER: u32 = 0x832;
const MSR_X2APIC_ICR: u32 = 0x830;

/// Spurious-interrupt vector the library programs.
pub const SPURIOUS_VECTOR: u8 = 0x2f;
const MSR_TSC_DEADLINE: u32 = 0x6e0;

/// Why the timer cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicError {
    /// CPUID lacks x2APIC or the TSC-deadline timer.
    Unsupported,
    /// A setup MSR write faulted.
    Setup(u32, Exception),
}

/// Enables this vCPU's x2APIC, software-enabled with spurious vector `spurious` (it needs an
/// IDT gate: below 48).
pub fn enable_x2apic(spurious: u8) -> Result<(), ApicError> {
    if instr::cpuid(1, 0)[2] & (1 << 21) == 0 {
        return Err(ApicError::Unsupported);
    }
    let base = instr::rdmsr_safe(MSR_APIC_BASE).map_err(|e| ApicError::Setup(MSR_APIC_BASE, e))?;
    let setup = [
        (MSR_APIC_BASE, base | (1 << 11) | (1 << 10)),
        (MSR_X2APIC_SVR, 0x100 | u64::from(spurious)),
    ];
    for (msr, v) in setup {
        instr::wrmsr_safe(msr, v).map_err(|e| ApicError::Setup(msr, e))?;
    }
    Ok(())
}

/// Enables the x2APIC (see [`enable_x2apic`]) with the timer in TSC-deadline mode delivering
/// `vector` (which needs an IDT gate: below 48).
pub fn enable_tsc_deadline_timer(vector: u8, spurious: u8) -> Result<(), ApicError> {
    if instr::cpuid(1, 0)[2] & (1 << 24) == 0 {
        return Err(ApicError::Unsupported);
    }
    enable_x2apic(spurious)?;
    let v = u64::from(vector) | (2 << 17);
    instr::wrmsr_safe(MSR_X2APIC_LVT_TIMER, v)
        .map_err(|e| ApicError::Setup(MSR_X2APIC_LVT_TIMER, e))
}

/// Sends a fixed, edge-triggered IPI with `vector` to the vCPU with x2APIC ID `dest` (KVM's
/// APIC IDs are the vCPU indexes).
pub fn send_ipi(dest: u32, vector: u8) {
    instr::write_x2apic(
        MSR_X2APIC_ICR,
        (u64::from(dest) << 32) | (1 << 14) | u64::from(vector),
    );
}

/// Arms the timer for TSC value `deadline`.
pub fn arm(deadline: u64) -> Result<(), Exception> {
    instr::wrmsr_safe(MSR_TSC_DEADLINE, deadline)
}

/// Signals end of interrupt.
pub fn eoi() {
    instr::write_x2apic(MSR_X2APIC_EOI, 0);
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
