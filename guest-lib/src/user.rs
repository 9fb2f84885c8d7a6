//! Running code at CPL3 and coming back.
//!
//! [`run`] enters user mode (with `iretq` in hvm64, with the local dialect's IRET_FRAME
//! hypercall in pv-local) and returns a [`UserExit`]. The user trampoline calls the function
//! and then executes `ud2` at a known address: that #UD from CPL3 is how a normal return
//! comes back, so the only transition the library relies on is event delivery from CPL3 (a
//! `syscall` is a transition under test, not infrastructure: on the local host it does not
//! switch to CPL0).
//!
//! Cases that observe transitions install a [`SyscallHook`] or a [`FaultHook`]; those see and
//! may modify the saved user state and then return to user mode (`sysretq` / `iretq`).

use abi::env::Env;
use abi::report::GuestStatus;

use crate::arch::{self, Global};
use crate::exception::{Exception, Frame, SyscallFrame, vector};

/// How a [`run`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserExit {
    /// The user function returned this value.
    Returned(u64),
    /// The user function raised this exception (no hook handled it).
    Exception(Exception),
    /// The user function executed `syscall` with this RAX (no hook handled it).
    Syscall(u64),
    /// A user `syscall` reached the LSTAR entry but CPL stayed 3 (CS holds this selector).
    SyscallStayedAtCpl3(u16),
}

/// Sees a user `syscall`; returns `true` to resume user mode with `sysretq` from the
/// (possibly modified) frame, `false` to end the run with [`UserExit::Syscall`].
pub type SyscallHook = fn(&mut SyscallFrame) -> bool;
/// Sees an event from CPL3; returns `true` to resume user mode with `iretq` from the
/// (possibly modified) frame, `false` to end the run with [`UserExit::Exception`].
pub type FaultHook = fn(&mut Frame, Exception) -> bool;

static ACTIVE: Global<bool> = Global::new(false);
static EXIT: Global<Option<UserExit>> = Global::new(None);
static SYSCALL_HOOK: Global<Option<SyscallHook>> = Global::new(None);
static FAULT_HOOK: Global<Option<FaultHook>> = Global::new(None);

/// Installs (or removes) the syscall hook.
pub fn set_syscall_hook(h: Option<SyscallHook>) {
    SYSCALL_HOOK.set(h);
}

/// Installs (or removes) the user fault hook.
pub fn set_fault_hook(h: Option<FaultHook>) {
    FAULT_HOOK.set(h);
}

/// Runs `f(arg)` at CPL3 on the user stack and reports how it ended.
pub fn run(f: extern "C" fn(u64) -> u64, arg: u64) -> UserExit {
    run_raw(f as *const () as u64, arg)
}

/// Runs the code at `entry` at CPL3 (called with RDI = `arg`); for assembly probes. They
/// return with `ret` (RAX = result) like a C function.
pub fn run_raw(entry: u64, arg: u64) -> UserExit {
    EXIT.set(None);
    ACTIVE.set(true);
    let pv = crate::rt::env() == Env::PvLocal;
    arch::user_enter(arg, entry, abi::layout::USER_STACK_TOP, pv);
    ACTIVE.set(false);
    match EXIT.get() {
        Some(e) => e,
        None => crate::error!("user run ended without an exit"),
    }
}

fn leave(exit: UserExit) -> ! {
    if !ACTIVE.get() {
        crate::report::finish(
            GuestStatus::Error,
            "user-mode event with no user run active",
        );
    }
    EXIT.set(Some(exit));
    arch::user_resume()
}

/// Called by the exception dispatcher for events from CPL3.
pub(crate) fn on_user_event(frame: &mut Frame, ex: Exception) {
    if ex.vector == vector::GP && frame.rip == arch::syscall_cr3_rip() {
        leave(UserExit::SyscallStayedAtCpl3(frame.cs as u16));
    }
    if ex.vector == vector::UD && frame.rip == arch::user_exit_rip() {
        leave(UserExit::Returned(frame.rax));
    }
    if let Some(hook) = FAULT_HOOK.get()
        && hook(frame, ex)
    {
        return;
    }
    leave(UserExit::Exception(ex))
}

/// Called by the SYSCALL entry.
#[cfg_attr(
    not(target_os = "none"),
    allow(dead_code, reason = "called from the guest's asm entry")
)]
pub(crate) fn on_syscall(frame: &mut SyscallFrame) {
    if let Some(hook) = SYSCALL_HOOK.get()
        && hook(frame)
    {
        return;
    }
    leave(UserExit::Syscall(frame.rax))
}

/// The value the GPR probe loads into register `i` (in [`Frame`] order: RAX, RBX, RCX, RDX,
/// RSI, RDI, RBP, R8..R15).
pub const fn gpr_pattern(i: u64) -> u64 {
    0x5a5a_0000_0000_a5a5 | (i << 40) | (i << 24) | ((!i & 0xf) << 16)
}

/// Bit `i` set for each register `i` (Frame order) that does not hold [`gpr_pattern`]`(i)`.
pub fn gpr_mismatch_mask(regs: &[u64; 15]) -> u64 {
    regs.iter()
        .enumerate()
        .filter(|&(i, &v)| v != gpr_pattern(i as u64))
        .fold(0, |m, (i, _)| m | (1 << i))
}

/// The general registers of a frame in [`gpr_pattern`] order.
pub fn frame_gprs(f: &Frame) -> [u64; 15] {
    [
        f.rax, f.rbx, f.rcx, f.rdx, f.rsi, f.rdi, f.rbp, f.r8, f.r9, f.r10, f.r11, f.r12, f.r13,
        f.r14, f.r15,
    ]
}

/// Entry of the GPR probe (for [`run_raw`]) and the address of its trapping `ud2`.
pub fn gpr_probe() -> (u64, u64) {
    arch::gpr_probe()
}

/// User-mode probe for [`run`]: returns the u64 at virtual address `va`. A fault ends the run
/// with [`UserExit::Exception`].
pub extern "C" fn read_probe(va: u64) -> u64 {
    arch::instr::touch_read(va)
}

/// User-mode probe for [`run`]: writes 1 to the u64 at virtual address `va` (a test mapping)
/// and returns 0. A fault ends the run with [`UserExit::Exception`].
pub extern "C" fn write_probe(va: u64) -> u64 {
    arch::instr::touch_write(va, 1);
    0
}
