//! Exceptions: the frame the entry stubs build, the [`Exception`] value `_safe` primitives
//! return, and the dispatcher that decides what happens to each event.
//!
//! Dispatch order: (1) for a synchronous exception in supervisor mode, a fixup-table entry for
//! the faulting RIP (a `_safe` primitive) records the exception and resumes after the
//! instruction; (2) an event from CPL3 goes to the [`crate::user`] module; (3) a hook
//! installed by the case; (4) anything else is unexpected and ends the case as FAIL with the
//! exception and RIP in the detail.

use core::fmt;

use abi::report::GuestStatus;

use crate::arch::{self, AtomicHook, PerCpu};

/// The general registers, in the order the entry stubs push them (RAX at the lowest address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs, reason = "register names")]
pub struct Gprs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

impl Gprs {
    /// The registers as an array in [`Gprs`] order.
    pub fn to_array(&self) -> [u64; 15] {
        [
            self.rax, self.rbx, self.rcx, self.rdx, self.rsi, self.rdi, self.rbp, self.r8, self.r9,
            self.r10, self.r11, self.r12, self.r13, self.r14, self.r15,
        ]
    }
}

/// Saved state of an interrupted context: the general registers, the vector and error code,
/// and an interrupt frame. Every environment's entry stubs build this same layout, whatever
/// their host delivers, and set `cs` with RPL 3 exactly when the event interrupted user mode.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs, reason = "register names")]
pub struct Frame {
    pub gprs: Gprs,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

impl Frame {
    /// Whether the event interrupted user mode (CPL3).
    pub fn from_user(&self) -> bool {
        self.cs & 3 == 3
    }
}

/// Saved user state at SYSCALL entry: the general registers, then an interrupt-style frame
/// (RIP, CS, RFLAGS, RSP, SS) built from RCX, R11 and the user RSP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs, reason = "register names")]
pub struct SyscallFrame {
    pub gprs: Gprs,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

const _: () = {
    assert!(core::mem::size_of::<Gprs>() == 15 * 8);
    assert!(core::mem::size_of::<Frame>() == 22 * 8);
    assert!(core::mem::offset_of!(Frame, vector) == 15 * 8);
    assert!(core::mem::offset_of!(Frame, rip) == 17 * 8);
    assert!(core::mem::size_of::<SyscallFrame>() == 20 * 8);
    assert!(core::mem::offset_of!(SyscallFrame, rip) == 15 * 8);
};

/// Vector numbers (defined in `abi::x86`).
pub use abi::x86::vector;

/// Page-fault error-code bits (defined in `abi::x86`).
pub use abi::x86::pfec;

/// An exception as delivered to the guest: vector, error code (0 when the vector has none)
/// and, for #PF, the faulting address from CR2.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Exception {
    /// Vector.
    pub vector: u8,
    /// Error code (0 if the vector pushes none).
    pub error_code: u32,
    /// CR2 for #PF, else 0.
    pub cr2: u64,
}

impl Exception {
    /// An exception without error code or CR2.
    pub const fn new(vector: u8) -> Self {
        Self {
            vector,
            error_code: 0,
            cr2: 0,
        }
    }

    /// The same exception with `error_code`.
    pub const fn with_error_code(mut self, error_code: u32) -> Self {
        self.error_code = error_code;
        self
    }

    /// `#GP(error_code)`.
    pub const fn gp(error_code: u32) -> Self {
        Self {
            vector: vector::GP,
            error_code,
            cr2: 0,
        }
    }

    /// `#PF(error_code)` at `cr2`.
    pub const fn pf(error_code: u32, cr2: u64) -> Self {
        Self {
            vector: vector::PF,
            error_code,
            cr2,
        }
    }

    /// Short mnemonic of the vector.
    pub fn mnemonic(&self) -> &'static str {
        const NAMES: [&str; 32] = [
            "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#CSO", "#TS", "#NP",
            "#SS", "#GP", "#PF", "#15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "#22", "#23",
            "#24", "#25", "#26", "#27", "#HV", "#VC", "#SX", "#31",
        ];
        NAMES
            .get(usize::from(self.vector))
            .copied()
            .unwrap_or("IRQ")
    }
}

impl fmt::Debug for Exception {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}(vec={}, ec={:#x}",
            self.mnemonic(),
            self.vector,
            self.error_code
        )?;
        if self.vector == vector::PF {
            write!(f, ", cr2={:#x}", self.cr2)?;
        }
        write!(f, ")")
    }
}

/// A case-installed handler for supervisor-mode events; returns `true` if it handled the
/// event (the frame is then resumed, possibly modified). One hook serves every vCPU.
pub type Hook = fn(&mut Frame, Exception) -> bool;

/// The exception recorded for a `_safe` instruction, one slot per vCPU.
static LAST_FIXUP: PerCpu<Option<Exception>> = PerCpu::new(None);
/// The frame RIP and CS of the last exception a `_safe` instruction took, per vCPU.
static LAST_FIXUP_AT: PerCpu<(u64, u64)> = PerCpu::new((0, 0));

/// Where the last exception a `_safe` instruction took was reported: the frame's RIP and CS
/// (check the RIP with `arch::safe_site`: a fault reports the instruction, a trap the one
/// after it).
pub fn last_fault_frame() -> (u64, u64) {
    LAST_FIXUP_AT.get()
}
/// The target of the `exec_ret_safe` in progress, per vCPU.
static EXEC_TARGET: PerCpu<Option<u64>> = PerCpu::new(None);
static HOOK: AtomicHook<Hook> = AtomicHook::new();

/// Clears the recorded exception before a `_safe` instruction.
#[inline(always)]
pub fn arm_fixup() {
    LAST_FIXUP.set(None);
}

/// The exception recorded since [`arm_fixup`], if any.
#[inline(always)]
pub fn take_fixup() -> Result<(), Exception> {
    match LAST_FIXUP.replace(None) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Arms a fetch check of `target` (see `arch::instr::exec_ret_safe`).
pub fn arm_exec(target: u64) {
    LAST_FIXUP.set(None);
    EXEC_TARGET.set(Some(target));
}

/// Disarms the fetch check; the exception it caught, if any.
pub fn disarm_exec() -> Result<(), Exception> {
    EXEC_TARGET.set(None);
    take_fixup()
}

/// Installs (or removes) the case's supervisor-mode event hook.
pub fn set_hook(hook: Option<Hook>) {
    HOOK.set(hook);
}

/// Decides what happens to an event; called by every environment's entry stubs.
pub fn dispatch(frame: &mut Frame) {
    let vector = (frame.vector & 0xff) as u8;
    let cr2 = if vector == vector::PF {
        arch::instr::read_cr2()
    } else {
        0
    };
    let ex = Exception {
        vector,
        error_code: frame.error_code as u32,
        cr2,
    };
    // Only synchronous exceptions belong to the instruction at RIP; an interrupt (or NMI/#MC)
    // that happens to arrive there must not be taken for that instruction's fault.
    let own_fault = vector::is_synchronous(vector) && !frame.from_user();
    if own_fault && let Some(fixup) = arch::fixup_for(frame.rip) {
        LAST_FIXUP.set(Some(ex));
        LAST_FIXUP_AT.set((frame.rip, frame.cs));
        frame.rip = fixup;
        return;
    }
    if own_fault && EXEC_TARGET.get() == Some(frame.rip) {
        // A fetch fault on the target of `exec_ret_safe`: return to its caller.
        EXEC_TARGET.set(None);
        LAST_FIXUP.set(Some(ex));
        frame.rip = arch::mem::read_u64(frame.rsp);
        frame.rsp += 8;
        return;
    }
    if frame.from_user() {
        crate::user::on_user_event(frame, ex);
        return;
    }
    crate::user::on_kernel_event(frame, ex);
    if let Some(hook) = HOOK.get()
        && hook(frame, ex)
    {
        return;
    }
    crate::report::finish_fmt(
        GuestStatus::Fail,
        format_args!(
            "unexpected exception {ex:?} at rip={:#x} cs={:#x} rflags={:#x} rsp={:#x}",
            frame.rip, frame.cs, frame.rflags, frame.rsp
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exceptions_print_their_mnemonic_and_fault_address() {
        extern crate std;
        use std::format;
        assert_eq!(Exception::gp(0xda).mnemonic(), "#GP");
        assert_eq!(Exception::new(0x2e).mnemonic(), "IRQ");
        assert_eq!(
            format!("{:?}", Exception::pf(pfec::W, 0x7000)),
            "#PF(vec=14, ec=0x2, cr2=0x7000)"
        );
        assert_eq!(
            format!("{:?}", Exception::new(vector::UD)),
            "#UD(vec=6, ec=0x0)"
        );
    }
}
