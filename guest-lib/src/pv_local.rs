//! The local host's PVM dialect, guest side (constants in `abi::local`).
//!
//! - [`enable`]: register the VIF page, which switches guest CPL0 code from the emulated
//!   path to native execution in hardware ring 3;
//! - [`hypercall`]: `int $0x1b` with RAX = number and RBX, RCX, RDX as arguments;
//! - [`signature`]: the signature MSR;
//! - [`pv_cpuid`]: `int $0x1a`;
//! - [`set_virtual_if`]: the interrupt flag of native mode (byte 0 of the VIF page).
//!
//! Events (exceptions, interrupts) reach the guest through its own IDT in this dialect, so the
//! event entry is the library's common IDT path (`crate::exception`).

use abi::layout::vif_gpa;
use abi::local::{MSR_SIGNATURE, VIF_ENABLE};

use crate::arch::instr;
use crate::exception::Exception;

/// Registers vCPU 0's VIF page (enable bit set).
pub fn enable() {
    enable_on(0);
}

/// Registers the VIF page of vCPU `cpu`; call on that vCPU.
pub fn enable_on(cpu: u32) {
    instr::write_local_vif_msr(vif_gpa(cpu) | VIF_ENABLE);
}

/// Issues hypercall `nr`; returns RAX, or the exception if the instruction faulted.
pub fn hypercall(nr: u64, a0: u64, a1: u64, a2: u64) -> Result<i64, Exception> {
    instr::int1b_safe(nr, a0, a1, a2).map(|v| v as i64)
}

/// Reads the signature MSR.
pub fn signature() -> Result<u64, Exception> {
    instr::rdmsr_safe(MSR_SIGNATURE)
}

/// Paravirtual CPUID.
pub fn pv_cpuid(leaf: u32, sub: u32) -> Result<[u32; 4], Exception> {
    instr::int1a_safe(leaf, sub)
}

/// Sets the virtual interrupt flag (byte 0 of the VIF page): maskable interrupts are delivered
/// through the IDT only while it is set. The host notices a change at the next exit.
pub fn set_virtual_if(on: bool) {
    crate::arch::mem::write_u8(vif_gpa(crate::smp::current_cpu()), u8::from(on));
}
