//! pv-local: the local dialect's instructions (constants in `abi::local`).
//!
//! - back to CPL3 with the IRET_FRAME hypercall (the dialect's only way to enter user mode
//!   from native mode), from an event and from a SYSCALL alike;
//! - the hypercall (`int` on [`HYPERCALL_VECTOR`], RAX = number, RBX, RCX, RDX = arguments,
//!   result in RAX) and the PV CPUID (`int` on [`PV_CPUID_VECTOR`]), with fixups;
//! - the VIF registration MSR and the VIF page's interrupt flag.

#[cfg(target_os = "none")]
use abi::local::hc;
use abi::local::{HYPERCALL_VECTOR, MSR_VIF, PV_CPUID_VECTOR};

use super::UserReturns;
use crate::arch::instr::with_fixup;
use crate::exception::Exception;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    r#"
    .text
    # Below the RIP..SS frame, push RDI, RBX, RAX to form {{rax, rbx, rdi, rip, cs, rflags,
    # rsp, ss}}, which IRET_FRAME takes in RBX.
    .global pvmc_local_iret_frame_to_user
pvmc_local_iret_frame_to_user:
    pushq %rdi
    pushq %rbx
    pushq %rax
    movq %rsp, %rbx
    movl ${iret_frame}, %eax
    int ${vector}
    ud2
"#,
    iret_frame = const hc::IRET_FRAME,
    vector = const HYPERCALL_VECTOR,
    options(att_syntax)
);

#[cfg(target_os = "none")]
unsafe extern "C" {
    safe static pvmc_local_iret_frame_to_user: u8;
}

/// The pv-local return paths: IRET_FRAME for both.
pub fn user_returns() -> UserReturns {
    #[cfg(target_os = "none")]
    let stub = core::ptr::addr_of!(pvmc_local_iret_frame_to_user) as u64;
    #[cfg(not(target_os = "none"))]
    let stub = 0;
    UserReturns {
        from_event: stub,
        from_syscall: stub,
    }
}

/// The hypercall with a fixup; returns RAX (or the exception the instruction raised).
pub fn hypercall_safe(nr: u64, a0: u64, a1: u64, a2: u64) -> Result<u64, Exception> {
    let mut rax = nr;
    // RBX cannot be an asm operand (LLVM reserves it): swap it in and out around the `int`.
    with_fixup!(pre "xchgq {b}, %rbx", "int ${v}", post "xchgq {b}, %rbx",
        b = inout(reg) a0 => _, inout("rax") rax, in("rcx") a1, in("rdx") a2,
        v = const HYPERCALL_VECTOR)?;
    Ok(rax)
}

/// The value [`hypercall_preserving`] puts in register `i` (RBX, RCX, RDX, RSI, RDI, R8..R15).
pub const fn preserve_pattern(i: u32) -> u64 {
    0x7e57_0000_0000_0000 | ((i as u64) << 32) | 0x1357_9bdf
}

/// The hypercall with every general register but RAX (and RSP/RBP) loaded with a known value
/// (RBX, RCX, RDX carry `a0..a2`); returns RAX and the mask of registers (bit `i` in the
/// [`preserve_pattern`] order) the host changed.
pub fn hypercall_preserving(nr: u64, a0: u64, a1: u64, a2: u64) -> Result<(u64, u32), Exception> {
    let p = preserve_pattern;
    let mut rax = nr;
    let (mut b, mut c, mut d) = (a0, a1, a2);
    let (mut si, mut di) = (p(3), p(4));
    let mut r = [p(5), p(6), p(7), p(8), p(9), p(10), p(11), p(12)];
    with_fixup!(pre "xchgq {b}, %rbx", "int ${v}", post "xchgq {b}, %rbx",
        b = inout(reg) b, inout("rax") rax, inout("rcx") c, inout("rdx") d,
        inout("rsi") si, inout("rdi") di,
        inout("r8") r[0], inout("r9") r[1], inout("r10") r[2], inout("r11") r[3],
        inout("r12") r[4], inout("r13") r[5], inout("r14") r[6], inout("r15") r[7],
        v = const HYPERCALL_VECTOR)?;
    let mut mask = 0u32;
    let got = [
        b, c, d, si, di, r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7],
    ];
    let want = [
        a0,
        a1,
        a2,
        p(3),
        p(4),
        p(5),
        p(6),
        p(7),
        p(8),
        p(9),
        p(10),
        p(11),
        p(12),
    ];
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if *g != w {
            mask |= 1 << i;
        }
    }
    Ok((rax, mask))
}

/// The PV CPUID with a fixup; returns EAX..EDX.
pub fn pv_cpuid_safe(leaf: u32, sub: u32) -> Result<[u32; 4], Exception> {
    let (mut a, mut c) = (leaf, sub);
    let (mut b, mut d) = (0u64, 0u32);
    with_fixup!(pre "xchgq {b}, %rbx", "int ${v}", post "xchgq {b}, %rbx",
        b = inout(reg) b, inout("eax") a, inout("ecx") c, inout("edx") d,
        v = const PV_CPUID_VECTOR)?;
    Ok([a, b as u32, c, d])
}

/// Registers vCPU `cpu`'s VIF page (`abi::layout::vif_gpa`) with the enable bit, on that
/// vCPU: from then on its CPL0 code runs natively.
pub fn register_vif(cpu: u32) {
    let value = abi::layout::vif_gpa(cpu) | abi::local::VIF_ENABLE;
    // SAFETY: this MSR changes how CPL0 code is executed (emulated or native), not the memory
    // model; the page it names (which the host writes) is reserved for it in the guest layout.
    unsafe { crate::arch::instr::wrmsr(MSR_VIF, value) }
}

/// Sets the virtual interrupt flag in byte 0 of vCPU `cpu`'s VIF page.
pub fn set_virtual_if(cpu: u32, on: bool) {
    crate::arch::mem::write_vif_byte(cpu, u8::from(on));
}

/// vCPU `cpu`'s virtual interrupt flag, as its VIF page holds it.
pub fn virtual_if(cpu: u32) -> bool {
    crate::arch::mem::read_vif_byte(cpu, abi::local::VIF_BYTE_IF) != 0
}

/// Whether the host marked an interrupt pending in vCPU `cpu`'s VIF page.
pub fn interrupt_pending(cpu: u32) -> bool {
    crate::arch::mem::read_vif_byte(cpu, abi::local::VIF_BYTE_PENDING) != 0
}
