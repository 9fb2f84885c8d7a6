//! The entry points every environment shares: `_start`, the Rust functions the stubs call,
//! entering user mode and resuming the supervisor afterwards, the user trampoline, the GPR
//! probe and the exception-fixup table. Only built for the bare-metal target.

use core::arch::global_asm;

use abi::layout::sel::{USER_CS, USER_DS};
use abi::x86::rflags;

use super::stubs::push_gprs;
use crate::exception::{Frame, SyscallFrame};

/// RFLAGS of user code: IF=1, as under any OS.
const USER_RFLAGS: u64 = rflags::FIXED | rflags::IF;

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
    .global pvmc_user_enter
    # (rdi = arg, rsi = entry, rdx = user rsp): save the callee-saved registers and RSP, build
    # an interrupt frame for the trampoline (RDI = arg, RBX = entry) and leave through the
    # environment's return-to-user stub, as if returning from an event.
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
    pushq ${user_ds}
    pushq %rdx
    pushq ${user_rflags}
    pushq ${user_cs}
    pushq %rax
    xorl %eax, %eax
    jmp *pvmc_user_returns(%rip)

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
"#,
    push_gprs!(),
    r#"
    movq %rsp, %rdi
    call pvmc_gpr_probe_check
    addq $120, %rsp
    ret

    .bss
    .balign 8
pvmc_supervisor_rsp:
    .skip 8
    .text
"#,
    user_ds = const USER_DS,
    user_cs = const USER_CS,
    user_rflags = const USER_RFLAGS,
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

// The 32-bit compatibility-mode probes (CPL3, CS = USER32_CS): entered from 64-bit user
// mode by `pvmc_compat32_enter` (RDI = the probe's address), which far-returns to it. Each
// probe raises events from compatibility mode; none of them returns.
global_asm!(
    r#"
    .text
    .global pvmc_compat32_enter
pvmc_compat32_enter:
    pushq ${user32_cs}
    pushq %rdi
    lretq

    # The other way in: trap to the kernel, which returns to the probe (RDI) with the
    # compatibility CS in the frame (`crate::user::compat32_switch`).
    .global pvmc_compat32_via_kernel
pvmc_compat32_via_kernel:
    int3
    ud2

    .code32
    .global pvmc_compat32_ud
pvmc_compat32_ud:
    ud2

    .global pvmc_compat32_bp_then_ud
pvmc_compat32_bp_then_ud:
    int3
    .global pvmc_compat32_after_bp
pvmc_compat32_after_bp:
    ud2

    .global pvmc_compat32_read
pvmc_compat32_read:
    movl $0xdead0000, %eax
    .global pvmc_compat32_read_insn
pvmc_compat32_read_insn:
    movl (%eax), %eax
    ud2
    .code64
"#,
    user32_cs = const abi::layout::sel::USER32_CS,
    options(att_syntax)
);

// SAFETY (for the declarations): these are the symbols of the assembly above, with the
// signatures its comments give.
unsafe extern "C" {
    /// Enters user mode at `entry(arg)` on `user_rsp`; returns when the supervisor is resumed
    /// with [`pvmc_user_resume`].
    fn pvmc_user_enter(arg: u64, entry: u64, user_rsp: u64);
    /// The `ud2` the user trampoline executes after the user function returned.
    safe static pvmc_user_exit: u8;
    safe static pvmc_gpr_probe: u8;
    safe static pvmc_gpr_probe_trap: u8;
    safe static pvmc_compat32_enter: u8;
    safe static pvmc_compat32_via_kernel: u8;
    safe static pvmc_compat32_ud: u8;
    safe static pvmc_compat32_bp_then_ud: u8;
    safe static pvmc_compat32_after_bp: u8;
    safe static pvmc_compat32_read: u8;
    safe static pvmc_compat32_read_insn: u8;
    /// Abandons the current (trap) stack and returns from the last `pvmc_user_enter`.
    fn pvmc_user_resume() -> !;
}

/// Address of the trampoline's exit `ud2`.
pub fn user_exit_rip() -> u64 {
    core::ptr::addr_of!(pvmc_user_exit) as u64
}

/// Addresses of the compatibility-mode entry stubs and probes: (enter by far return, ud,
/// bp_then_ud, after_bp, read, read_insn, enter through the kernel).
pub fn compat32() -> [u64; 7] {
    [
        core::ptr::addr_of!(pvmc_compat32_enter) as u64,
        core::ptr::addr_of!(pvmc_compat32_ud) as u64,
        core::ptr::addr_of!(pvmc_compat32_bp_then_ud) as u64,
        core::ptr::addr_of!(pvmc_compat32_after_bp) as u64,
        core::ptr::addr_of!(pvmc_compat32_read) as u64,
        core::ptr::addr_of!(pvmc_compat32_read_insn) as u64,
        core::ptr::addr_of!(pvmc_compat32_via_kernel) as u64,
    ]
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
pub fn user_enter(arg: u64, entry: u64, user_rsp: u64) {
    // SAFETY: `entry` is an `extern "C" fn(u64) -> u64` or an assembly probe of that
    // convention (the caller's contract) and `user_rsp` the top of the user stack. The stub
    // saves the callee-saved registers and the stack pointer, and `pvmc_user_resume` restores
    // exactly those, so to the caller this is an ordinary call that clobbers only caller-saved
    // registers. The environment installed its return-to-user stub before any case ran.
    unsafe { pvmc_user_enter(arg, entry, user_rsp) }
}

/// Returns from the [`user_enter`] in progress, abandoning the trap stack.
pub fn user_resume() -> ! {
    // SAFETY: only called from the event or SYSCALL path while `user_enter` is active (the
    // user module checks this), so the saved supervisor stack is live.
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

/// Called by an environment's event stubs with a pointer to the frame on the stack.
#[unsafe(no_mangle)]
extern "C" fn pvmc_exception_dispatch(frame: *mut Frame) {
    // SAFETY: the stubs pass RSP, which points at the registers they just pushed followed by
    // the vector, error code and the interrupt frame: exactly `Frame`'s layout. The frame is
    // exclusively ours until the stub pops it.
    let frame = unsafe { &mut *frame };
    crate::exception::dispatch(frame);
}

/// Called by an environment's SYSCALL entry with a pointer to the saved user state.
#[unsafe(no_mangle)]
extern "C" fn pvmc_syscall_dispatch(frame: *mut SyscallFrame) {
    // SAFETY: as for events: RSP points at the registers pushed in `SyscallFrame` order.
    let frame = unsafe { &mut *frame };
    crate::user::on_syscall(frame);
}

/// Index (in pairs) of the last fixup-table entry that matched on each vCPU: tried first, so a
/// `_safe` instruction in a loop costs no table scan (which hosts that emulate CPL0 pay for
/// instruction by instruction).
static LAST_HIT: crate::arch::PerCpu<usize> = crate::arch::PerCpu::new(0);

/// Looks up `rip` in the exception-fixup table; returns the resume address.
pub fn fixup_for(rip: u64) -> Option<u64> {
    // SAFETY (for the declarations): the linker script brackets the `pvmc_extable` section
    // with these symbols.
    unsafe extern "C" {
        static __start_pvmc_extable: [u64; 0];
        static __stop_pvmc_extable: [u64; 0];
    }
    // SAFETY: the section holds (fault, fixup) u64 pairs written by `with_fixup!` and is never
    // modified; the two symbols bound it.
    let table = unsafe {
        let start = core::ptr::addr_of!(__start_pvmc_extable).cast::<u64>();
        let stop = core::ptr::addr_of!(__stop_pvmc_extable).cast::<u64>();
        core::slice::from_raw_parts(start, stop.offset_from(start) as usize)
    };
    let hint = LAST_HIT.get();
    if let Some(&[fault, resume]) = table.get(2 * hint..2 * hint + 2)
        && fault == rip
    {
        return Some(resume);
    }
    let (i, e) = table
        .chunks_exact(2)
        .enumerate()
        .find(|(_, e)| e[0] == rip)?;
    LAST_HIT.set(i);
    Some(e[1])
}
