//! ABI cases of the RFC-era generations (pv-v1, pv-mid; shared/notes/pvm-abi-upstream.md §3-§5,
//! §11): the supervisor event frame and its red zone, ERETS, the MSRs the generation has.

use core::sync::atomic::{AtomicU64, Ordering};

use guest_lib::abi::env::{Area, Env};
use guest_lib::abi::upstream::{self as up, event_flags};
use guest_lib::arch::instr;
use guest_lib::case::Spec;
use guest_lib::env::pv_rfc;
use guest_lib::exception::{self, Exception, Frame};
use guest_lib::{case, check, check_eq};

/// Where the #BP handler's frame was and the RSP it interrupted (`u64::MAX`: no #BP yet).
static FRAME_AT: AtomicU64 = AtomicU64::new(u64::MAX);
static INTERRUPTED_RSP: AtomicU64 = AtomicU64::new(u64::MAX);

fn record_frame(frame: &mut Frame, e: Exception) -> bool {
    if e.vector != 3 {
        return false;
    }
    FRAME_AT.store(frame as *const Frame as u64, Ordering::SeqCst);
    INTERRUPTED_RSP.store(frame.rsp, Ordering::SeqCst);
    true
}

/// The arithmetic flags (CF, PF, AF, ZF, SF, OF).
const ARITH: u64 = 0x8d5;

/// The frame checks with the red zone the generation keeps (v1: what the guest registered).
fn supervisor_frame(redzone: u64) {
    exception::set_hook(Some(record_frame));
    let after = instr::int3_with_flags(ARITH | 0x2);
    exception::set_hook(None);
    let (at, rsp) = (
        FRAME_AT.load(Ordering::SeqCst),
        INTERRUPTED_RSP.load(Ordering::SeqCst),
    );
    check!(at != u64::MAX, "the #BP handler did not run");
    // The library's stub builds the common frame right below the host's 64-byte
    // SupervisorEvent, so the host's frame starts where the common one ends.
    let host_frame = at + core::mem::size_of::<Frame>() as u64;
    check_eq!(
        host_frame % 16,
        0,
        "the SupervisorEvent frame is 16-byte aligned"
    );
    check_eq!(
        host_frame,
        ((rsp - redzone) & !15) - 64,
        "the SupervisorEvent frame at ((RSP - red zone) & ~15) - 64 (red zone {})",
        redzone
    );
    check_eq!(
        after & ARITH,
        ARITH,
        "the arithmetic flags after ERETS (the frame's RFLAGS)"
    );
}
fn supervisor_frame_v1() {
    supervisor_frame(pv_rfc::V1_REDZONE);
}
case!(
    supervisor_frame_v1,
    Spec::new(
        "abi.v1.supervisor_frame",
        Area::Abi,
        "a supervisor #BP: the 64-byte frame below the 128-byte red zone, 16-byte aligned; ERETS restores RFLAGS"
    )
    .envs(Env::PvV1.bit())
    .reqs("UP-RFC-1")
);

fn supervisor_frame_mid() {
    supervisor_frame(0);
}
case!(
    supervisor_frame_mid,
    Spec::new(
        "abi.mid.supervisor_frame",
        Area::Abi,
        "a supervisor #BP: the 64-byte frame right below RSP (no red zone in mid), 16-byte aligned; ERETS restores RFLAGS"
    )
    .envs(Env::PvMid.bit())
    .reqs("UP-RFC-1")
);

/// The generation's MSRs: SUPERVISOR_RSP and SWITCH_CR3 at their numbers, and what is at
/// 0x4b564df3 (`df3`: the red zone in v1, SUPERVISOR_RSP in mid).
fn msrs(sup_rsp: u32, switch_cr3: u32, df3: Option<u64>) {
    check!(
        instr::rdmsr_safe(sup_rsp).is_ok(),
        "MSR_PVM_SUPERVISOR_RSP ({:#x}) is readable",
        sup_rsp
    );
    check_eq!(
        instr::rdmsr_safe(switch_cr3),
        Ok(instr::read_cr3()),
        "MSR_PVM_SWITCH_CR3 ({:#x}) holds what the guest registered (its own CR3)",
        switch_cr3
    );
    if let Some(redzone) = df3 {
        check_eq!(
            instr::rdmsr_safe(up::v1::MSR_SUPERVISOR_REDZONE),
            Ok(redzone),
            "MSR_PVM_SUPERVISOR_REDZONE"
        );
    }
    check!(
        instr::rdmsr_safe(up::MSR_RETS_RIP).is_ok_and(|v| v != 0),
        "MSR_PVM_RETS_RIP is registered"
    );
}

fn msrs_v1() {
    msrs(
        up::v1::MSR_SUPERVISOR_RSP,
        up::v1::MSR_SWITCH_CR3,
        Some(pv_rfc::V1_REDZONE),
    );
}
case!(
    msrs_v1,
    Spec::new(
        "abi.v1.msrs",
        Area::Abi,
        "v1 MSRs: SUPERVISOR_RSP 0x4b564df2, REDZONE 0x4b564df3, SWITCH_CR3 0x4b564df7, RETS_RIP"
    )
    .envs(Env::PvV1.bit())
    .reqs("UP-RFC-2")
);

fn msrs_mid() {
    msrs(up::mid::MSR_SUPERVISOR_RSP, up::mid::MSR_SWITCH_CR3, None);
}
case!(
    msrs_mid,
    Spec::new(
        "abi.mid.msrs",
        Area::Abi,
        "mid MSRs: SWITCH_CR3 0x4b564df2, SUPERVISOR_RSP 0x4b564df3, RETS_RIP"
    )
    .envs(Env::PvMid.bit())
    .reqs("UP-RFC-2")
);

fn mid_event_enable() {
    let f = pv_rfc::read_event_flags();
    check_eq!(
        f & event_flags::EF,
        event_flags::EF,
        "PVCS.event_flags.EF set by the guest (mid delivers events only then)"
    );
    // An event now must be delivered (EF is set): a #BP round trip.
    check_eq!(
        instr::int3_safe(),
        Err(Exception::new(3)),
        "a #BP with EF set"
    );
}
case!(
    mid_event_enable,
    Spec::new(
        "abi.mid.event_enable",
        Area::Abi,
        "mid: events are delivered while PVCS.event_flags.EF is set"
    )
    .envs(Env::PvMid.bit())
    .reqs("UP-RFC-3")
);
