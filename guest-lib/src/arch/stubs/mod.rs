//! Assembly entry stubs, per environment.
//!
//! Every environment delivers events in its own way; its stubs turn what the host delivered
//! into the common [`crate::exception::Frame`], call the common dispatcher, and return to the
//! interrupted context the way the host wants. The modules:
//! - [`idt`]: IDT-based delivery and the SYSCALL entry (shared by `hvm64` and `pv-local`,
//!   which differ only in how they return to CPL3);
//! - [`hvm64`]: return to CPL3 with `iretq` / `sysretq`;
//! - [`pv_local`]: return to CPL3 with the local dialect's IRET_FRAME hypercall, and the
//!   dialect's other instructions (hypercall, PV CPUID, VIF registration);
//! - [`pv_v2`]: the upstream v2 event entry block (+0, +512), the return to supervisor code,
//!   the `syscall` hypercall and the synthetic CPUID.
//!
//! What every environment installs is a [`UserReturns`]: the stubs that leave for CPL3 from an
//! interrupt frame and from a SYSCALL frame. `crate::arch::user_enter` uses the first one too,
//! so entering user mode is the same code in every environment.

pub mod hvm64;
pub mod idt;
pub mod pv_local;
pub mod pv_rfc;
pub mod pv_v2;

use super::BootCell;

#[cfg(target_os = "none")]
/// Pushes the 15 general registers in `Gprs` order (RAX ends at the lowest address).
macro_rules! push_gprs {
    () => {
        "pushq %r15\n pushq %r14\n pushq %r13\n pushq %r12\n pushq %r11\n pushq %r10\n \
         pushq %r9\n pushq %r8\n pushq %rbp\n pushq %rdi\n pushq %rsi\n pushq %rdx\n \
         pushq %rcx\n pushq %rbx\n pushq %rax\n"
    };
}
#[cfg(target_os = "none")]
/// Pops what [`push_gprs`] pushed.
macro_rules! pop_gprs {
    () => {
        "popq %rax\n popq %rbx\n popq %rcx\n popq %rdx\n popq %rsi\n popq %rdi\n popq %rbp\n \
         popq %r8\n popq %r9\n popq %r10\n popq %r11\n popq %r12\n popq %r13\n popq %r14\n \
         popq %r15\n"
    };
}
#[cfg(target_os = "none")]
/// After [`push_gprs`] on a frame whose error code the host writes only for an event that has
/// one (the upstream PVCS): zeroes a stale one (operand `errmask`: the vectors with an error
/// code; clobbers RAX/RDX, which the frame holds).
macro_rules! drop_stale_errcode {
    () => {
        "movzbl 120(%rsp), %eax\n cmpl $32, %eax\n jae 97f\n movl ${errmask}, %edx\n \
         btl %eax, %edx\n jc 98f\n 97: movq $0, 128(%rsp)\n 98:\n"
    };
}
#[cfg(target_os = "none")]
/// After [`push_gprs`], RCX = the vCPU's PVCS: puts the interrupted RCX and R11, which the
/// host saved there (operands `pvcs_rcx`, `pvcs_r11`: their offsets), into the frame's slots.
macro_rules! gprs_rcx_r11_from_pvcs {
    () => {
        "movq {pvcs_rcx}(%rcx), %r11\n movq %r11, 16(%rsp)\n movq {pvcs_r11}(%rcx), %r11\n \
         movq %r11, 80(%rsp)\n"
    };
}
#[cfg(target_os = "none")]
/// RCX = an RSP value; leaves the PVCS address of its vCPU in RCX, for the upstream
/// generations' stubs (operands `ust`: the top of vCPU 0's user stack, at and below which RSP
/// is vCPU 0's; `pvcs0`: vCPU 0's PVCS, the next vCPUs' one page apart, their stacks 64 KiB
/// apart above `ust`).
macro_rules! pvcs_of_rsp {
    () => {
        "cmpq ${ust}, %rcx\n ja 91f\n movq ${pvcs0}, %rcx\n jmp 92f\n 91: subq ${ust}+1, %rcx\n \
         shrq $16, %rcx\n incq %rcx\n shlq $12, %rcx\n addq ${pvcs0}, %rcx\n 92:\n"
    };
}
#[cfg(target_os = "none")]
pub(crate) use {drop_stale_errcode, gprs_rcx_r11_from_pvcs, pop_gprs, push_gprs, pvcs_of_rsp};

/// The two ways back to CPL3 an environment provides (addresses of assembly stubs).
///
/// - `from_event`: entered with the general registers restored and RSP at an interrupt frame
///   (RIP, CS, RFLAGS, RSP, SS) whose CS has RPL 3;
/// - `from_syscall`: the same, for a frame the SYSCALL entry built from RCX, R11 and the
///   user RSP.
#[derive(Clone, Copy, Debug)]
pub struct UserReturns {
    /// Return from an event (and first entry to user mode).
    pub from_event: u64,
    /// Return from a user SYSCALL.
    pub from_syscall: u64,
}

/// The installed [`UserReturns`], read by the stubs as `pvmc_user_returns` (+0, +8).
#[unsafe(export_name = "pvmc_user_returns")]
static USER_RETURNS: BootCell<[u64; 2]> = BootCell::new([0; 2]);

/// Bytes from the start of a return-to-user stub within which a kernel event means the return
/// itself failed (the stubs are a few instructions long).
const USER_RETURN_STUB_LEN: u64 = 16;

/// Whether `rip` lies in one of the installed return-to-user stubs.
pub fn in_user_return(rip: u64) -> bool {
    USER_RETURNS
        .get()
        .iter()
        .any(|&s| s != 0 && (s..s + USER_RETURN_STUB_LEN).contains(&rip))
}

/// Installs the environment's return-to-user stubs (vCPU 0, during setup).
pub fn install_user_returns(r: UserReturns) {
    USER_RETURNS.init(|slots| *slots = [r.from_event, r.from_syscall]);
}
