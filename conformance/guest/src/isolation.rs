//! Isolation: guest user code must not reach hypervisor services meant for the guest kernel,
//! nor supervisor-only memory.

use guest_lib::abi::env::{Area, Env};
use guest_lib::abi::local::{HYPERCALL_VECTOR, hc};
use guest_lib::abi::x86::{idt_error_code, pfec};
use guest_lib::arch::instr;
use guest_lib::case::Spec;
use guest_lib::env::pv_local;
use guest_lib::exception::Exception;
use guest_lib::paging::{PteFlags, alloc_frame, map};
use guest_lib::user::{self, UserExit};
use guest_lib::{case, check, check_eq};

use crate::common::TEST_VA;

extern "C" fn u_local_hypercall(nr: u64) -> u64 {
    pv_local::hypercall(nr, 0, 0, 0).map_or(u64::MAX, |v| v as u64)
}

/// In the local dialect, the hypercall instruction from CPL3 must raise an exception in the
/// guest kernel, not halt the vCPU.
fn user_hypercall_denied() {
    let exit = user::run(u_local_hypercall, hc::HALT);
    check!(
        matches!(exit, UserExit::Exception(_)),
        "the HALT hypercall at CPL3 must raise an exception in the kernel, got {:?}",
        exit
    );
}
case!(
    user_hypercall_denied,
    Spec::new(
        "isolation.user_hypercall_denied",
        Area::Isolation,
        "the local dialect's hypercall from CPL3 is refused with an exception"
    )
    .envs(Env::PvLocal.bit())
    .reqs("PVM-ISO-1")
);

/// In an architectural guest, `int $0x1b` is an ordinary software interrupt: through the
/// library's DPL0 gate from CPL3 it raises #GP with the IDT vector in the error code. A PVM
/// host must not claim the vector for guests that do not speak its dialect.
fn user_int_0x1b_gp() {
    let exit = user::run(u_local_hypercall, hc::HALT);
    check_eq!(
        exit,
        UserExit::Exception(Exception::gp(idt_error_code(HYPERCALL_VECTOR))),
        "int $0x1b at CPL3"
    );
}
case!(
    user_int_0x1b_gp,
    Spec::new(
        "isolation.user_int_0x1b_gp",
        Area::Isolation,
        "int $0x1b from CPL3 in an x86 guest is #GP(0xda), not a hypercall"
    )
    .envs(Env::Hvm64.bit())
    .reqs("PVM-ISO-1,X86-EXC-GP")
);

/// Guest user code cannot read a supervisor-only (U/S=0) page of its kernel: #PF with P|U.
fn user_reads_supervisor_page() {
    let f = alloc_frame();
    f.write_u64(0, 0x5ec2e7);
    map(TEST_VA, &f, PteFlags::RW);
    instr::invlpg(TEST_VA.get());
    check_eq!(
        instr::read_u64_safe(TEST_VA.get()),
        Ok(0x5ec2e7),
        "CPL0 read of its own page"
    );
    check_eq!(
        user::run(user::read_probe, TEST_VA.get()),
        UserExit::Exception(Exception::pf(pfec::P | pfec::U, TEST_VA.get())),
        "CPL3 read of a U/S=0 page"
    );
}
case!(
    user_reads_supervisor_page,
    Spec::new(
        "isolation.user_reads_supervisor_page",
        Area::Isolation,
        "CPL3 read of a supervisor-only page faults with P|U"
    )
    .reqs("X86-PG-US-1,PVM-ISO-2")
);
