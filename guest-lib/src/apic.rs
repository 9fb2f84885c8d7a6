//! The local APIC in x2APIC mode (MSR interface) with the TSC-deadline timer: enough for
//! timer-interrupt cases and benchmarks. Needs the in-kernel irqchip (`FLAG_IRQCHIP`).
//! Whether interrupts get in is the environment's business ([`set_interrupts`]).

use abi::x86::{cpuid, msr, x2apic};

use crate::arch::instr;
use crate::exception::Exception;

/// Spurious-interrupt vector the library programs.
pub const SPURIOUS_VECTOR: u8 = 0x2f;

/// Why the timer cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicError {
    /// CPUID lacks x2APIC or the TSC-deadline timer.
    Unsupported,
    /// A setup MSR write faulted.
    Setup(u32, Exception),
}

/// Whether CPUID reports `feature`.
pub fn has_feature((leaf, reg, bit): cpuid::Feature) -> bool {
    instr::cpuid(leaf, 0)[reg] & (1 << bit) != 0
}

/// Enables this vCPU's x2APIC, software-enabled with spurious vector `spurious` (it needs an
/// IDT gate: below 48).
pub fn enable_x2apic(spurious: u8) -> Result<(), ApicError> {
    if !has_feature(cpuid::X2APIC) {
        return Err(ApicError::Unsupported);
    }
    instr::enable_x2apic_mode_safe().map_err(|e| ApicError::Setup(msr::APIC_BASE, e))?;
    instr::wrmsr_safe(msr::X2APIC_SVR, x2apic::SVR_ENABLE | u64::from(spurious))
        .map_err(|e| ApicError::Setup(msr::X2APIC_SVR, e))
}

/// Enables the x2APIC (see [`enable_x2apic`]) with the timer in TSC-deadline mode delivering
/// `vector` (which needs an IDT gate: below 48).
pub fn enable_tsc_deadline_timer(vector: u8, spurious: u8) -> Result<(), ApicError> {
    if !has_feature(cpuid::TSC_DEADLINE) {
        return Err(ApicError::Unsupported);
    }
    enable_x2apic(spurious)?;
    let v = u64::from(vector) | x2apic::LVT_TSC_DEADLINE;
    instr::wrmsr_safe(msr::X2APIC_LVT_TIMER, v)
        .map_err(|e| ApicError::Setup(msr::X2APIC_LVT_TIMER, e))
}

/// Sends a fixed, edge-triggered IPI with `vector` to the vCPU with x2APIC ID `dest` (KVM's
/// APIC IDs are the vCPU indexes).
pub fn send_ipi(dest: u32, vector: u8) {
    instr::write_x2apic(
        msr::X2APIC_ICR,
        (u64::from(dest) << x2apic::ICR_DEST_SHIFT) | x2apic::ICR_ASSERT | u64::from(vector),
    );
}

/// Arms the timer for TSC value `deadline` (0 disarms it).
pub fn arm(deadline: u64) -> Result<(), Exception> {
    instr::wrmsr_safe(msr::TSC_DEADLINE, deadline)
}

/// Signals end of interrupt.
pub fn eoi() {
    instr::write_x2apic(msr::X2APIC_EOI, 0);
}

/// Lets maskable interrupts in (or not), the way the environment of this run does it.
pub fn set_interrupts(on: bool) {
    crate::env::current().set_interrupts(on);
}
