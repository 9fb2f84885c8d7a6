//! Privilege transitions: privileged instructions at CPL3, the user/supervisor round trip,
//! SYSCALL, and what CPL0 code sees of its own privilege.

use guest_lib::PerCpu;
use guest_lib::abi::case::HostCheck;
use guest_lib::abi::env::Area;
use guest_lib::abi::layout::sel::KERNEL_CS;
use guest_lib::abi::x86::{msr, rflags};
use guest_lib::arch::instr;
use guest_lib::case::Spec;
use guest_lib::exception::{Exception, Frame, SyscallFrame, vector};
use guest_lib::user::{self, UserExit};
use guest_lib::{case, check, check_eq, log};

extern "C" fn u_hlt(_: u64) -> u64 {
    instr::hlt();
    0
}
extern "C" fn u_cli(_: u64) -> u64 {
    let _ = instr::cli_safe();
    0
}
/// The POST-code port: harmless to write, and not the report port.
const POST_PORT: u16 = 0x80;

extern "C" fn u_out(_: u64) -> u64 {
    instr::outb(POST_PORT, 0);
    0
}
extern "C" fn u_rdmsr(_: u64) -> u64 {
    instr::rdmsr(msr::TSC)
}
extern "C" fn u_mov_cr3(_: u64) -> u64 {
    instr::read_cr3()
}

/// Privileged instructions at CPL3 raise #GP(0) in the supervisor.
fn cpl3_privileged_gp() {
    let table: [(&str, extern "C" fn(u64) -> u64); 5] = [
        ("hlt", u_hlt),
        ("cli", u_cli),
        ("out", u_out),
        ("rdmsr", u_rdmsr),
        ("mov from cr3", u_mov_cr3),
    ];
    for (what, f) in table {
        let exit = user::run(f, 0);
        check_eq!(
            exit,
            UserExit::Exception(Exception::gp(0)),
            "({} at CPL3)",
            what
        );
    }
}
case!(
    cpl3_privileged_gp,
    Spec::new(
        "priv.cpl3_privileged_gp",
        Area::Priv,
        "hlt/cli/out/rdmsr/mov-cr at CPL3 raise #GP(0)"
    )
    .reqs("X86-PRIV-1,PVM-RING-1")
);

static SNAPSHOT: PerCpu<Option<Frame>> = PerCpu::new(None);

fn snapshot_probe_trap(frame: &mut Frame, ex: Exception) -> bool {
    let (_, trap) = user::gpr_probe();
    if ex.vector != vector::UD || frame.rip != trap {
        return false;
    }
    SNAPSHOT.set(Some(*frame));
    frame.rip += 2;
    true
}

/// CPL3 -> CPL0 (#UD) -> CPL3 (iretq) preserves all 15 general registers both ways.
fn user_roundtrip_gprs() {
    SNAPSHOT.set(None);
    user::set_fault_hook(Some(snapshot_probe_trap));
    let (probe, _) = user::gpr_probe();
    let exit = user::run_raw(probe, 0);
    user::set_fault_hook(None);
    let Some(frame) = SNAPSHOT.get() else {
        check!(
            false,
            "the probe's #UD never reached the supervisor (exit {:?})",
            exit
        );
        return;
    };
    let seen = user::gpr_mismatch_mask(&user::frame_gprs(&frame));
    check_eq!(
        seen,
        0u64,
        "registers changed on the way to CPL0 (bit i = register i)"
    );
    check_eq!(frame.cs & 3, 3u64, "frame CS RPL");
    check_eq!(
        exit,
        UserExit::Returned(0),
        "registers changed on the way back to CPL3 (mask)"
    );
}
case!(
    user_roundtrip_gprs,
    Spec::new(
        "priv.user_roundtrip_gprs",
        Area::Priv,
        "CPL3->CPL0->CPL3 via #UD/iretq keeps every GPR"
    )
    .reqs("X86-EVT-2,PVM-SWITCH-1")
);

static SYSCALL_SEEN: PerCpu<Option<SyscallFrame>> = PerCpu::new(None);

fn record_syscall(f: &mut SyscallFrame) -> bool {
    SYSCALL_SEEN.set(Some(*f));
    false
}

extern "C" fn u_syscall(_: u64) -> u64 {
    instr::syscall(0x77)
}

/// SYSCALL from CPL3 enters LSTAR at CPL0 (CS from STAR) with RCX = next RIP, R11 = RFLAGS.
fn syscall_to_cpl0() {
    SYSCALL_SEEN.set(None);
    user::set_syscall_hook(Some(record_syscall));
    let exit = user::run(u_syscall, 0);
    user::set_syscall_hook(None);
    check_eq!(
        exit,
        UserExit::Syscall(0x77),
        "syscall must reach the CPL0 handler"
    );
    if let Some(f) = SYSCALL_SEEN.get() {
        let entry = u_syscall as *const () as u64;
        check!(
            f.gprs.rcx > entry && f.gprs.rcx < entry + 64,
            "RCX {:#x} is not a return address in the caller",
            f.gprs.rcx
        );
        check_eq!(
            f.gprs.r11 & rflags::FIXED,
            rflags::FIXED,
            "R11 holds RFLAGS (bit 1 set)"
        );
    }
}
case!(
    syscall_to_cpl0,
    Spec::new(
        "priv.syscall_to_cpl0",
        Area::Priv,
        "SYSCALL from CPL3 enters LSTAR at CPL0 with RCX/R11 set"
    )
    .reqs("X86-SYSCALL-1")
);

/// Code running as the guest kernel sees CS with RPL 0 (the selector it loaded).
fn cs_rpl_at_cpl0() {
    let cs = instr::read_cs();
    log!("cs = {:#x}", cs);
    check_eq!(cs, KERNEL_CS, "CS as read by `mov %cs` at CPL0");
}
case!(
    cs_rpl_at_cpl0,
    Spec::new(
        "priv.cs_rpl_at_cpl0",
        Area::Priv,
        "`mov %cs` at CPL0 reads the kernel selector (RPL 0)"
    )
    .reqs("X86-PRIV-2,PVM-RING-2")
    .host(HostCheck::None)
);
