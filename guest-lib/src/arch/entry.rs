//! Assembly entry points: `_start`, the 256 exception/interrupt stubs, the SYSCALL entry,
//! entering user mode and resuming the supervisor afterwards; and the Rust functions they
//! call. Only built for the bare-metal target.

use core::arch::global_asm;

use crate::exception::{Frame, SyscallFrame};

global_asm!(
    r#"
    .section .text.start, "ax"
    .global _start
_start:
    cld
    xorl %ebp, %ebp
    call pvmc_rust_start
2:  hlt
    jmp 2b

    .text
    # One 4 KiB-aligned block of 256 16-byte stubs: gate v differs from gate 0 only by 16*v
    # in its low 16 bits (see tables::init).
    .balign 4096
    .global pvmc_vector_stubs
pvmc_vector_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if (vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq $0
    .endif
    pushq $vec
    jmp pvmc_exception_common
    .set vec, vec + 1
    .endr

pvmc_exception_common:
    # Stack: vector, error code, RIP, CS, RFLAGS, RSP, SS. From CPL3, reload the kernel CR3
    # first (PTI style): the local host runs CPL3 on CR3|0x1000 and treats the vCPU as user
    # until CR3 is written; elsewhere this is a plain reload.
    testb $3, 24(%rsp)
    jz 5f
    pushq %rax
    movl ${pml4}, %eax
    movq %rax, %cr3
    popq %rax
5:
    pushq %r15
    pushq %r14
    pushq %r13
    pushq %r12
    pushq %r11
    pushq %r10
    pushq %r9
    pushq %r8
    pushq %rbp
    pushq %rdi
    pushq %rsi
    pushq %rdx
    pushq %rcx
    pushq %rbx
    pushq %rax
    movq %rsp, %rdi
    cld
    call pvmc_exception_dispatch
    popq %rax
    popq %rbx
    popq %rcx
    popq %rdx
    popq %rsi
    popq %rdi
    popq %rbp
    popq %r8
    popq %r9
    popq %r10
    popq %r11
    popq %r12
    popq %r13
    popq %r14
    popq %r15
    addq $16, %rsp
    # Stack: RIP, CS, RFLAGS, RSP, SS.
    testb $3, 8(%rsp)
    jz 6f
    cmpb $0, pvmc_pv_local(%rip)
    jne pvmc_iret_frame_to_user
6:  iretq

    # Return to CPL3 with the local dialect's IRET_FRAME hypercall: below the RIP..SS frame,
    # push RDI, RBX, RAX to form {{rax, rbx, rdi, rip, cs, rflags, rsp, ss}}.
pvmc_iret_frame_to_user:
    pushq %rdi
    pushq %rbx
    pushq %rax
    movq %rsp, %rbx
    movl ${iret_frame}, %eax
    int $0x1b
    ud2

    # SYSCALL: RCX = user RIP, R11 = user RFLAGS, RSP = user stack. On the local host the
    # vCPU is still "user" (user CR3) until the kernel CR3 is written; on a host that
    # (wrongly) leaves CPL at 3, the CR3 write raises #GP at `pvmc_syscall_cr3`.
    .global pvmc_syscall_entry
pvmc_syscall_entry:
    movq %rax, pvmc_syscall_scratch(%rip)
    movl ${pml4}, %eax
    .global pvmc_syscall_cr3
pvmc_syscall_cr3:
    movq %rax, %cr3
    movq pvmc_syscall_scratch(%rip), %rax
    movq %rsp, pvmc_syscall_scratch(%rip)
    leaq pvmc_trap_stack_top(%rip), %rsp
    pushq ${user_ds}
    pushq pvmc_syscall_scratch(%rip)
    pushq %r11
    pushq ${user_cs}
    pushq %rcx
    pushq %r15
    pushq %r14
    pushq %r13
    pushq %r12
    pushq %r11
    pushq %r10
    pushq %r9
    pushq %r8
    pushq %rbp
    pushq %rdi
    pushq %rsi
    pushq %rdx
    pushq %rcx
    pushq %rbx
    pushq %rax
    movq %rsp, %rdi
    cld
    call pvmc_syscall_dispatch
    popq %rax
    popq %rbx
    popq %rcx
    popq %rdx
    popq %rsi
    popq %rdi
    popq %rbp
    popq %r8
    popq %r9
    popq %r10
    popq %r11
    popq %r12
    popq %r13
    popq %r14
    popq %r15
    # Stack: RIP, CS, RFLAGS, RSP, SS (an interrupt frame).
    cmpb $0, pvmc_pv_local(%rip)
    jne pvmc_iret_frame_to_user
    popq %rcx
    addq $8, %rsp
    popq %r11
    popq %rsp
    sysretq

    .global pvmc_user_enter
    # (rdi = arg, rsi = entry, rdx = user rsp, rcx = 0: iretq / 1: local IRET_FRAME hypercall)
    # User code runs with IF=1 (RFLAGS 0x202), as under any OS.
pvmc_user_enter:
    pushq %rbx
    pushq %rbp
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, pvmc_supervisor_rsp(%rip)
    movq %rsi, %rbx
    leaq pvmc_user_trampoline(%rip), %rax
    testq %rcx, %rcx
    jnz 4f
    pushq ${user_ds}
    pushq %rdx
    pushq $0x202
    pushq ${user_cs}
    pushq %rax
    iretq
4:  # IRET_FRAME takes RBX = &{{rax, rbx, rdi, rip, cs, rflags, rsp, ss}}
    pushq ${user_ds}
    pushq %rdx
    pushq $0x202
    pushq ${user_cs}
    pushq %rax
    pushq %rdi
    pushq %rbx
    pushq $0
    movq %rsp, %rbx
    movl ${iret_frame}, %eax
    int $0x1b
    ud2

    .global pvmc_user_resume
pvmc_user_resume:
    movq pvmc_supervisor_rsp(%rip), %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbp
    popq %rbx
    ret

    # CPL3: RDI = arg, RBX = function; returns to the supervisor with a ud2 at a known address
pvmc_user_trampoline:
    call *%rbx
    .global pvmc_user_exit
pvmc_user_exit:
    ud2

    # CPL3 probe: distinct patterns in every GPR, a #UD (the supervisor snapshots the frame
    # and resumes after it), then the registers as they came back are checked in Rust.
    .global pvmc_gpr_probe
pvmc_gpr_probe:
    movabs ${g0}, %rax
    movabs ${g1}, %rbx
    movabs ${g2}, %rcx
    movabs ${g3}, %rdx
    movabs ${g4}, %rsi
    movabs ${g5}, %rdi
    movabs ${g6}, %rbp
    movabs ${g7}, %r8
    movabs ${g8}, %r9
    movabs ${g9}, %r10
    movabs ${g10}, %r11
    movabs ${g11}, %r12
    movabs ${g12}, %r13
    movabs ${g13}, %r14
    movabs ${g14}, %r15
    .global pvmc_gpr_probe_trap
pvmc_gpr_probe_trap:
    ud2
    pushq %r15
    pushq %r14
    pushq %r13
    pushq %r12
    pushq %r11
    pushq %r10
    pushq %r9
    pushq %r8
    pushq %rbp
    pushq %rdi
    pushq %rsi
    pushq %rdx
    pushq %rcx
    pushq %rbx
    pushq %rax
    movq %rsp, %rdi
    call pvmc_gpr_probe_check
    addq $120, %rsp
    ret

    .data
    .global pvmc_pv_local
pvmc_pv_local:
    .byte 0
    .bss
    .balign 16
pvmc_trap_stack:
    .skip 16384
    .global pvmc_trap_stack_top
pvmc_trap_stack_top:
pvmc_syscall_scratch:
    .skip 8
pvmc_supervisor_rsp:
    .skip 8
    .text
"#,
    user_ds = const super::tables::USER_DS,
    user_cs = const super::tables::USER_CS,
    iret_frame = const abi::local::hc::IRET_FRAME,
    pml4 = const abi::layout::PML4_GPA,
    g0 = const crate::user::gpr_pattern(0),
    g1 = const crate::user::gpr_pattern(1),
    g2 = const crate::user::gpr_pattern(2),
    g3 = const crate::user::gpr_pattern(3),
    g4 = const crate::user::gpr_pattern(4),
    g5 = const crate::user::gpr_pattern(5),
    g6 = const crate::user::gpr_pattern(6),
    g7 = const crate::user::gpr_pattern(7),
    g8 = const crate::user::gpr_pattern(8),
    g9 = const crate::user::gpr_pattern(9),
    g10 = const crate::user::gpr_pattern(10),
    g11 = const crate::user::gpr_pattern(11),
    g12 = const crate::user::gpr_pattern(12),
    g13 = const crate::user::gpr_pattern(13),
    g14 = const crate::user::gpr_pattern(14),
    options(att_syntax)
);

unsafe extern "C" {
    /// Enters user mode at `entry(arg)` on `user_rsp` (with `iretq`, or with the local
    /// dialect's IRET_FRAME hypercall if `pv_local`); returns when the supervisor is resumed
    /// with [`pvmc_user_resume`].
    fn pvmc_user_enter(arg: u64, entry: u64, user_rsp: u64, pv_local: u64);
    /// The `ud2` the user trampoline executes after the user function returned.
    static pvmc_user_exit: u8;
    static pvmc_gpr_probe: u8;
    static pvmc_syscall_cr3: u8;
    static mut pvmc_pv_local: u8;
    static pvmc_gpr_probe_trap: u8;
    /// Abandons the current (trap) stack and returns from the last `pvmc_user_enter`.
    fn pvmc_user_resume() -> !;
}

/// Address of the trampoline's exit `ud2`.
pub fn user_exit_rip() -> u64 {
    core::ptr::addr_of!(pvmc_user_exit) as u64
}

/// Address of the kernel-CR3 load in the SYSCALL entry (the first privileged instruction).
pub fn syscall_cr3_rip() -> u64 {
    core::ptr::addr_of!(pvmc_syscall_cr3) as u64
}

/// Makes the entry code return to CPL3 with the local dialect's IRET_FRAME hypercall.
pub fn set_pv_local_return(on: bool) {
    // SAFETY: a byte in .data read only by the entry code of this single vCPU; no Rust
    // reference to it exists.
    unsafe { core::ptr::addr_of_mut!(pvmc_pv_local).write_volatile(u8::from(on)) }
}

/// Addresses of the GPR probe and of its `ud2`.
pub fn gpr_probe() -> (u64, u64) {
    (
        core::ptr::addr_of!(pvmc_gpr_probe) as u64,
        core::ptr::addr_of!(pvmc_gpr_probe_trap) as u64,
    )
}

/// Called (at CPL3) by the GPR probe with the registers as they came back from the #UD.
#[unsafe(no_mangle)]
extern "C" fn pvmc_gpr_probe_check(regs: *const [u64; 15]) -> u64 {
    // SAFETY: the probe passes its stack pointer right after pushing the 15 registers.
    let regs = unsafe { &*regs };
    crate::user::gpr_mismatch_mask(regs)
}

/// Runs `entry(arg)` at CPL3 on `user_rsp`; returns once [`user_resume`] is called.
pub fn user_enter(arg: u64, entry: u64, user_rsp: u64, pv_local: bool) {
    // SAFETY: `entry` is an `extern "C" fn(u64) -> u64` (checked by the caller's type) and
    // `user_rsp` the top of the user stack. The stub saves the callee-saved registers and the
    // stack pointer, and `pvmc_user_resume` restores exactly those, so to the caller this is
    // an ordinary call that clobbers only caller-saved registers.
    unsafe { pvmc_user_enter(arg, entry, user_rsp, u64::from(pv_local)) }
}

/// Returns from the [`user_enter`] in progress, abandoning the trap stack.
pub fn user_resume() -> ! {
    // SAFETY: only called from the exception or SYSCALL path while `user_enter` is active
    // (the user module checks this), so the saved supervisor stack is live.
    unsafe { pvmc_user_resume() }
}

/// Called by `_start` with RDI = the boot info the host placed in guest memory and RSI = the
/// index of this vCPU.
#[unsafe(no_mangle)]
extern "C" fn pvmc_rust_start(boot: u64, cpu: u64) -> ! {
    if boot != abi::layout::BOOT_INFO_GPA {
        crate::report::finish(abi::report::GuestStatus::Error, "RDI is not the boot info");
    }
    // SAFETY: the host loader wrote a `BootInfo` at BOOT_INFO_GPA (checked above), which is
    // identity mapped, aligned, and never written again.
    let info = unsafe { &*(boot as *const abi::layout::BootInfo) };
    crate::rt::start(info, cpu as u32)
}

/// Called by the common exception stub with a pointer to the frame on the stack.
#[unsafe(no_mangle)]
extern "C" fn pvmc_exception_dispatch(frame: *mut Frame) {
    // SAFETY: the stub passes RSP, which points at the registers it just pushed followed by
    // the vector, error code and the hardware frame: exactly `Frame`'s layout. The frame is
    // exclusively ours until the stub pops it.
    let frame = unsafe { &mut *frame };
    crate::exception::dispatch(frame);
}

/// Called by the SYSCALL entry with a pointer to the saved user state.
#[unsafe(no_mangle)]
extern "C" fn pvmc_syscall_dispatch(frame: *mut SyscallFrame) {
    // SAFETY: as for exceptions: RSP points at the registers pushed in `SyscallFrame` order.
    let frame = unsafe { &mut *frame };
    crate::user::on_syscall(frame);
}

/// Looks up `rip` in the exception-fixup table; returns the resume address.
pub fn fixup_for(rip: u64) -> Option<u64> {
    unsafe extern "C" {
        static __start_pvmc_extable: [u64; 0];
        static __stop_pvmc_extable: [u64; 0];
    }
    // SAFETY: the linker script brackets the `pvmc_extable` section with these symbols; it
    // holds (fault, fixup) u64 pairs written by `with_fixup!` and is never modified.
    let table = unsafe {
        let start = core::ptr::addr_of!(__start_pvmc_extable).cast::<u64>();
        let stop = core::ptr::addr_of!(__stop_pvmc_extable).cast::<u64>();
        core::slice::from_raw_parts(start, stop.offset_from(start) as usize)
    };
    table.chunks_exact(2).find(|e| e[0] == rip).map(|e| e[1])
}
