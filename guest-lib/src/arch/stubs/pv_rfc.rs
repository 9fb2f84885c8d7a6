//! pv-v1 and pv-mid: the RFC-era upstream ABI's entry and return stubs (notes §3-§5; the two
//! generations differ only in MSR numbers and `event_flags.EF`, which the environment handles).
//!
//! - the event entry block at `MSR_PVM_EVENT_ENTRY`: +0 for events from user mode (RSP =
//!   MSR_PVM_SUPERVISOR_RSP, the user context in the PVCS), +256 for supervisor exceptions (RSP
//!   at the host's 64-byte `SupervisorEvent` frame), +512 for supervisor interrupts (the
//!   context in the PVCS; the stub builds the same 64-byte frame). Each builds the common
//!   frame and calls the dispatcher;
//! - the return to supervisor code is ERETS: the (possibly modified) frame goes back into the
//!   `SupervisorEvent`, and the `syscall` at `MSR_PVM_RETS_RIP` runs with RSP at it;
//! - the return to user mode is ERETU: RCX, R11, RIP, CS, RFLAGS, RSP and SS go into vCPU 0's
//!   PVCS (user mode runs there only) and the `syscall` at `MSR_PVM_RETU_RIP` runs; the host
//!   keeps the current RSP as the next SUPERVISOR_RSP;
//! - a user `syscall` enters at LSTAR on the supervisor stack, its context in the PVCS.
//!
//! The hypercall and the synthetic CPUID are the same instructions as in v2
//! ([`super::pv_v2::hypercall_safe`], [`super::pv_v2::synthetic_cpuid_safe`]).

use abi::upstream::{PvcsV1, SupervisorEvent};

const _: () = assert!(abi::layout::AP_STACK_SIZE == 1 << 16);
const _: () = assert!(core::mem::size_of::<SupervisorEvent>() == 64);
// The 8-byte load at `event_errcode` is `errcode | vector << 32` (the frame's first word).
const _: () = assert!(
    core::mem::offset_of!(PvcsV1, event_vector) == core::mem::offset_of!(PvcsV1, event_errcode) + 4
);

#[cfg(target_os = "none")]
core::arch::global_asm!(
    r#"
    .text
    # Leaves vCPU 0's PVCS (user mode runs there only) in RCX and pushes the user context it
    # holds as an interrupt frame: SS, RSP, RFLAGS, CS, RIP.
    .macro pvmc_rfc_user_frame
    movl ${pvcs0}, %ecx
    movzwl {o_user_ss}(%rcx), %r11d
    pushq %r11
    pushq {o_rsp}(%rcx)
    movl {o_eflags}(%rcx), %r11d
    pushq %r11
    movzwl {o_user_cs}(%rcx), %r11d
    pushq %r11
    pushq {o_rip}(%rcx)
    .endm

    .macro pvmc_rfc_pvcs_of_rsp
"#,
    super::pvcs_of_rsp!(),
    r#"
    .endm

    .balign 4096
    .global pvmc_rfc_event_entry
pvmc_rfc_event_entry:
    # +0: from user mode.
    pvmc_rfc_user_frame
    movl {o_errcode}(%rcx), %r11d
    pushq %r11
    movl {o_vector}(%rcx), %r11d
    pushq %r11
"#,
    super::push_gprs!(),
    super::drop_stale_errcode!(),
    super::gprs_rcx_r11_from_pvcs!(),
    r#"
    movq %rsp, %rdi
    cld
    call pvmc_exception_dispatch
"#,
    super::pop_gprs!(),
    r#"
    addq $16, %rsp
    jmp *pvmc_user_returns(%rip)

    .org pvmc_rfc_event_entry + 256
    # +256: a supervisor exception; RSP = the host's SupervisorEvent frame.
    movq %rsp, %r11
    jmp pvmc_rfc_from_frame

    .org pvmc_rfc_event_entry + 512
    # +512: a supervisor interrupt, the context in this vCPU's PVCS: build the frame.
    subq $64, %rsp
    movq %rsp, %rcx
    pvmc_rfc_pvcs_of_rsp
    movq {o_errcode}(%rcx), %r11
    movq %r11, 0(%rsp)
    movq {o_rip}(%rcx), %r11
    movq %r11, 8(%rsp)
    movq ${kernel_cs}, 16(%rsp)
    movl {o_eflags}(%rcx), %r11d
    movq %r11, 24(%rsp)
    movq {o_rsp}(%rcx), %r11
    movq %r11, 32(%rsp)
    movq ${kernel_ds}, 40(%rsp)
    movq {pvcs_rcx}(%rcx), %r11
    movq %r11, 48(%rsp)
    movq {pvcs_r11}(%rcx), %r11
    movq %r11, 56(%rsp)
    movq %rsp, %r11

    # R11 = RSP = a SupervisorEvent: the common frame below it, the dispatcher, the frame back
    # into it, ERETS.
pvmc_rfc_from_frame:
    pushq 40(%r11)
    pushq 32(%r11)
    pushq 24(%r11)
    pushq 16(%r11)
    pushq 8(%r11)
    movl 0(%r11), %ecx
    pushq %rcx
    movl 4(%r11), %ecx
    pushq %rcx
"#,
    super::push_gprs!(),
    r#"
    movq 48(%r11), %rcx
    movq %rcx, 16(%rsp)
    movq 56(%r11), %rcx
    movq %rcx, 80(%rsp)
    movq %rsp, %rdi
    cld
    call pvmc_exception_dispatch
    leaq 176(%rsp), %rdi
    movq 136(%rsp), %rax
    movq %rax, 8(%rdi)
    movq 152(%rsp), %rax
    movq %rax, 24(%rdi)
    movq 160(%rsp), %rax
    movq %rax, 32(%rdi)
    movq 16(%rsp), %rax
    movq %rax, 48(%rdi)
    movq 80(%rsp), %rax
    movq %rax, 56(%rdi)
"#,
    super::pop_gprs!(),
    r#"
    addq $56, %rsp
    .global pvmc_rfc_rets
pvmc_rfc_rets:
    syscall
    ud2

    # A user `syscall`, at LSTAR: RSP = SUPERVISOR_RSP, the user context in the PVCS.
    .global pvmc_rfc_syscall_entry
pvmc_rfc_syscall_entry:
    pvmc_rfc_user_frame
"#,
    super::push_gprs!(),
    super::gprs_rcx_r11_from_pvcs!(),
    r#"
    movq %rsp, %rdi
    cld
    call pvmc_syscall_dispatch
"#,
    super::pop_gprs!(),
    r#"
    jmp *pvmc_user_returns+8(%rip)

    # To user mode from an interrupt frame (RIP, CS, RFLAGS, RSP, SS), registers restored.
    # The ERETU `syscall` lies within the first 16 bytes (`in_user_return`).
    .global pvmc_rfc_user_return
pvmc_rfc_user_return:
    call pvmc_rfc_stage
    addq $40, %rsp
    .global pvmc_rfc_retu
pvmc_rfc_retu:
    syscall
    ud2

    # The frame (above the return address) and RCX/R11 into vCPU 0's PVCS.
pvmc_rfc_stage:
    movq %rcx, {pvcs0}+{pvcs_rcx}
    movq %r11, {pvcs0}+{pvcs_r11}
    movq 8(%rsp), %rcx
    movq %rcx, {pvcs0}+{o_rip}
    movq 16(%rsp), %rcx
    movw %cx, {pvcs0}+{o_user_cs}
    movq 24(%rsp), %rcx
    movl %ecx, {pvcs0}+{o_eflags}
    movq 32(%rsp), %rcx
    movq %rcx, {pvcs0}+{o_rsp}
    movq 40(%rsp), %rcx
    movw %cx, {pvcs0}+{o_user_ss}
    ret
"#,
    ust = const abi::layout::USER_STACK_TOP,
    pvcs0 = const abi::layout::VIF_GPA,
    kernel_cs = const abi::layout::sel::KERNEL_CS,
    kernel_ds = const abi::layout::sel::KERNEL_DS,
    errmask = const super::idt::ERROR_CODE_VECTORS,
    o_user_cs = const core::mem::offset_of!(PvcsV1, user_cs),
    o_user_ss = const core::mem::offset_of!(PvcsV1, user_ss),
    o_eflags = const core::mem::offset_of!(PvcsV1, eflags),
    o_rip = const core::mem::offset_of!(PvcsV1, rip),
    o_rsp = const core::mem::offset_of!(PvcsV1, rsp),
    pvcs_rcx = const core::mem::offset_of!(PvcsV1, rcx),
    pvcs_r11 = const core::mem::offset_of!(PvcsV1, r11),
    o_errcode = const core::mem::offset_of!(PvcsV1, event_errcode),
    o_vector = const core::mem::offset_of!(PvcsV1, event_vector),
    options(att_syntax)
);

#[cfg(target_os = "none")]
unsafe extern "C" {
    safe static pvmc_rfc_event_entry: u8;
    safe static pvmc_rfc_syscall_entry: u8;
    safe static pvmc_rfc_user_return: u8;
    safe static pvmc_rfc_retu: u8;
    safe static pvmc_rfc_rets: u8;
}

/// Address of `sym` (0 off the guest target, where the stubs do not exist).
macro_rules! addr {
    ($sym:ident) => {{
        #[cfg(target_os = "none")]
        let a = core::ptr::addr_of!($sym) as u64;
        #[cfg(not(target_os = "none"))]
        let a = 0u64;
        a
    }};
}

/// The event entry block (for `MSR_PVM_EVENT_ENTRY`).
pub fn event_entry() -> u64 {
    addr!(pvmc_rfc_event_entry)
}

/// The entry of a user `syscall` (for LSTAR).
pub fn syscall_entry() -> u64 {
    addr!(pvmc_rfc_syscall_entry)
}

/// The ERETU `syscall` (for `MSR_PVM_RETU_RIP`).
pub fn retu_rip() -> u64 {
    addr!(pvmc_rfc_retu)
}

/// The ERETS `syscall` (for `MSR_PVM_RETS_RIP`).
pub fn rets_rip() -> u64 {
    addr!(pvmc_rfc_rets)
}

/// The return-to-user stubs (one for events and SYSCALL: both leave an interrupt frame).
pub fn user_returns() -> super::UserReturns {
    let r = addr!(pvmc_rfc_user_return);
    super::UserReturns {
        from_event: r,
        from_syscall: r,
    }
}

/// Zeroes the PVCS page at `pvcs`, puts the host's user selectors and `flags` in it and
/// registers it with the host together with the stubs: `msrs` are (VCPU_STRUCT is implied)
/// the generation's SWITCH_CR3 index, and the red-zone MSR with its value where the
/// generation has one.
pub fn register(pvcs: u64, flags: u64, switch_cr3: u32, redzone: Option<(u32, u64)>) {
    // SAFETY: the PVCS page is reserved for this vCPU in the guest layout (identity mapped
    // RAM); nothing else uses it, and the host reads it only once it is registered below.
    unsafe {
        core::ptr::write_bytes(pvcs as *mut u8, 0, abi::layout::PAGE_SIZE as usize);
        let cs = (pvcs + core::mem::offset_of!(PvcsV1, user_cs) as u64) as *mut u16;
        core::ptr::write_volatile(cs, abi::upstream::HOST_USER_CS);
        let ss = (pvcs + core::mem::offset_of!(PvcsV1, user_ss) as u64) as *mut u16;
        core::ptr::write_volatile(ss, abi::upstream::HOST_USER_DS);
        let f = (pvcs + core::mem::offset_of!(PvcsV1, event_flags) as u64) as *mut u64;
        core::ptr::write_volatile(f, flags);
    }
    let cr3 = crate::arch::instr::read_cr3();
    // SAFETY: these MSRs say where the host delivers events, where the ERETU/ERETS and
    // SYSCALL stubs are, which page the PVCS is and which page table user mode uses (the
    // kernel's own: no separate user tables); all of it is the guest's own.
    unsafe {
        use crate::arch::instr::wrmsr;
        wrmsr(abi::upstream::MSR_VCPU_STRUCT, pvcs);
        wrmsr(abi::upstream::MSR_EVENT_ENTRY, event_entry());
        wrmsr(abi::upstream::MSR_RETU_RIP, retu_rip());
        wrmsr(abi::upstream::MSR_RETS_RIP, rets_rip());
        wrmsr(abi::x86::msr::LSTAR, syscall_entry());
        wrmsr(switch_cr3, cr3);
        if let Some((msr, v)) = redzone {
            wrmsr(msr, v);
        }
    }
}
