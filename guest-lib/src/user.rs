//! Running code at CPL3 and coming back.
//!
//! [`run`] enters user mode (through the environment's return-to-user stub) and returns a
//! [`UserExit`]. The user trampoline calls the function and then executes `ud2` at a known
//! address: that #UD from CPL3 is how a normal return comes back, so the only transition the
//! library relies on is event delivery from CPL3 (a `syscall` is a transition under test, not
//! infrastructure: on the local host it does not switch to CPL0).
//!
//! Cases that observe transitions install a [`SyscallHook`] or a [`FaultHook`]; those see and
//! may modify the saved user state and then return to user mode. User mode runs on vCPU 0
//! only (its TSS and trap stack).

use abi::report::GuestStatus;

use crate::arch::{self, AtomicHook, PerCpu};
use crate::exception::{Exception, Frame, SyscallFrame, vector};
use crate::paging::TestVa;

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
    /// The return to user mode itself failed in the kernel: the environment's return stub
    /// raised this exception (IRETQ faulted, or the dialect's return hypercall came back),
    /// with RAX as the stub left it (a hypercall's error).
    ReturnRefused(Exception, u64),
}

/// Sees a user `syscall`; returns `true` to resume user mode from the (possibly modified)
/// frame, `false` to end the run with [`UserExit::Syscall`].
pub type SyscallHook = fn(&mut SyscallFrame) -> bool;
/// Sees an event from CPL3; returns `true` to resume user mode from the (possibly modified)
/// frame, `false` to end the run with [`UserExit::Exception`].
pub type FaultHook = fn(&mut Frame, Exception) -> bool;

static ACTIVE: PerCpu<bool> = PerCpu::new(false);
static EXIT: PerCpu<Option<UserExit>> = PerCpu::new(None);
static SYSCALL_HOOK: AtomicHook<SyscallHook> = AtomicHook::new();
static FAULT_HOOK: AtomicHook<FaultHook> = AtomicHook::new();

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

/// Runs the code at `entry` at CPL3 (called with RDI = `arg`); for the library's assembly
/// probes ([`gpr_probe`]), which return with `ret` (RAX = result) like a C function.
pub fn run_raw(entry: u64, arg: u64) -> UserExit {
    if crate::smp::current_cpu() != 0 {
        crate::error!("user mode runs on vCPU 0 only");
    }
    if let Err(crate::env::EnvError::Unsupported(why)) = crate::env::current().user_mode() {
        crate::skip!("{why}");
    }
    if crate::arch::instr::msr_borrowed() {
        crate::error!("user mode entered while instr::with_msr has a SYSCALL MSR borrowed");
    }
    // The trampoline calls `entry` from user mode: at its user address.
    let in_image = (abi::layout::IMAGE_BASE..abi::layout::IMAGE_END).contains(&entry);
    let entry = if in_image {
        entry + crate::env::current().user_code_offset()
    } else {
        entry
    };
    EXIT.set(None);
    ACTIVE.set(true);
    arch::user_enter(arg, entry, abi::layout::USER_STACK_TOP);
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

/// Called by the exception dispatcher for a kernel-mode event: when a user run is active and
/// the event came from the environment's return-to-user stub, the return failed, and the run
/// ends with [`UserExit::ReturnRefused`] (a frame a fault hook made invalid, say). Returns
/// otherwise.
pub(crate) fn on_kernel_event(frame: &Frame, ex: Exception) {
    if ACTIVE.get() && arch::stubs::in_user_return(frame.rip) {
        leave(UserExit::ReturnRefused(ex, frame.gprs.rax));
    }
}

/// Called by the exception dispatcher for events from CPL3.
pub(crate) fn on_user_event(frame: &mut Frame, ex: Exception) {
    if !ACTIVE.get() {
        // The kernel never entered CPL3 outside `run_raw`: a frame saying it came from there
        // is the host's doing.
        crate::report::finish_fmt(
            GuestStatus::Fail,
            format_args!(
                "event {ex:?} delivered with a CPL3 frame (cs={:#x} rip={:#x} rsp={:#x}) while \
                 no user code ran",
                frame.cs, frame.rip, frame.rsp
            ),
        );
    }
    if ex.vector == vector::GP && frame.rip == arch::stubs::idt::syscall_cr3_rip() {
        leave(UserExit::SyscallStayedAtCpl3(frame.cs as u16));
    }
    if ex.vector == vector::UD && frame.rip == arch::user_exit_rip() {
        leave(UserExit::Returned(frame.gprs.rax));
    }
    // Where user code runs from an alias of the image (`Environment::user_code_offset`), an
    // absolute code address (a jump table, a function pointer) fetches the supervisor-only
    // image: resuming sends RIP to the alias (the environment's return stub translates it).
    let offset = crate::env::current().user_code_offset();
    let in_image = (abi::layout::IMAGE_BASE..abi::layout::IMAGE_END).contains(&ex.cr2);
    if offset != 0
        && ex.vector == vector::PF
        && ex.error_code & abi::x86::pfec::I != 0
        && ex.cr2 == frame.rip
        && in_image
    {
        return;
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
    leave(UserExit::Syscall(frame.gprs.rax))
}

/// The value the GPR probe loads into register `i` (in `Gprs` order: RAX, RBX, RCX, RDX,
/// RSI, RDI, RBP, R8..R15).
pub const fn gpr_pattern(i: u64) -> u64 {
    0x5a5a_0000_0000_a5a5 | (i << 40) | (i << 24) | ((!i & 0xf) << 16)
}

/// Bit `i` set for each register `i` (`Gprs` order) that does not hold [`gpr_pattern`]`(i)`.
pub fn gpr_mismatch_mask(regs: &[u64; 15]) -> u64 {
    regs.iter()
        .enumerate()
        .filter(|&(i, &v)| v != gpr_pattern(i as u64))
        .fold(0, |m, (i, _)| m | (1 << i))
}

/// The general registers of a frame in [`gpr_pattern`] order.
pub fn frame_gprs(f: &Frame) -> [u64; 15] {
    f.gprs.to_array()
}

/// A 32-bit compatibility-mode probe (CS = `USER32_CS` at CPL3), entered from 64-bit user
/// mode by a far return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compat32 {
    /// `ud2`.
    Ud,
    /// `int3`, then (if the kernel resumes it) `ud2`.
    BpThenUd,
    /// A 32-bit load from 0xdead0000 (unmapped), then `ud2`.
    Read,
}

/// Where a [`Compat32`] probe's instructions are: (the probe, its trapping `int3`'s next
/// instruction or 0, its faulting load or 0).
pub fn compat32_sites(p: Compat32) -> (u64, u64, u64) {
    let a = arch::compat32();
    match p {
        Compat32::Ud => (a[1], 0, 0),
        Compat32::BpThenUd => (a[2], a[3], 0),
        Compat32::Read => (a[4], 0, a[5]),
    }
}

/// How user code gets into compatibility mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompatEntry {
    /// 64-bit user code far-returns (LRET) to the compatibility CS.
    FarReturn,
    /// 64-bit user code traps (INT3) and the kernel returns to the probe with the
    /// compatibility CS in the frame (how a kernel starts 32-bit user code); the case's fault
    /// hook must call [`compat32_switch`] for that first #BP.
    Kernel,
}

/// Runs probe `p` in compatibility mode at CPL3, entered `how`, and reports how it ended (an
/// exception: the probes never return).
pub fn run_compat32(p: Compat32, how: CompatEntry) -> UserExit {
    let (probe, _, _) = compat32_sites(p);
    let a = arch::compat32();
    let stub = match how {
        CompatEntry::FarReturn => a[0],
        CompatEntry::Kernel => a[6],
    };
    run_raw(stub, probe)
}

/// For a fault hook: if `frame` is the #BP of a [`CompatEntry::Kernel`] entry (from the
/// 64-bit stub), turns it into a return to the probe (RDI) in compatibility mode and returns
/// `true` (resume); else returns `false`.
pub fn compat32_switch(frame: &mut Frame, ex: Exception) -> bool {
    let stub = arch::compat32()[6];
    if ex.vector != vector::BP || frame.rip != stub + 1 {
        return false;
    }
    frame.cs = u64::from(abi::layout::sel::USER32_CS);
    frame.rip = frame.gprs.rdi;
    true
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

extern "C" fn write_probe(va: u64) -> u64 {
    match TestVa::new(va) {
        Some(t) => {
            arch::instr::touch_write(t, 1);
            0
        }
        None => u64::MAX,
    }
}

/// Writes 1 to the u64 at test address `va` from CPL3 and reports how that ended
/// ([`UserExit::Returned`]`(0)` if the write went through).
pub fn probe_write(va: TestVa) -> UserExit {
    run(write_probe, va.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exception::Gprs;

    #[test]
    fn gpr_patterns_are_distinct_and_the_mask_finds_changes() {
        let mut regs: [u64; 15] = core::array::from_fn(|i| gpr_pattern(i as u64));
        assert_eq!(gpr_mismatch_mask(&regs), 0);
        for i in 0..15 {
            for j in 0..i {
                assert_ne!(gpr_pattern(i), gpr_pattern(j));
            }
        }
        regs[3] ^= 1;
        regs[14] = 0;
        assert_eq!(gpr_mismatch_mask(&regs), (1 << 3) | (1 << 14));
    }

    #[test]
    fn frame_registers_come_out_in_probe_order() {
        let g = Gprs {
            rax: 1,
            rdi: 6,
            r15: 15,
            ..Gprs::default()
        };
        let f = Frame {
            gprs: g,
            ..Frame::default()
        };
        let a = frame_gprs(&f);
        assert_eq!((a[0], a[5], a[14]), (1, 6, 15));
    }
}
