//! Isolation: guest user code must not reach hypervisor services meant for the guest kernel.

use guest_lib::abi::env::Area;
use guest_lib::abi::local::hc;
use guest_lib::arch::instr;
use guest_lib::case::Spec;
use guest_lib::exception::Exception;
use guest_lib::rt;
use guest_lib::user::{self, UserExit};
use guest_lib::{case, check, check_eq};

extern "C" fn u_hypercall(nr: u64) -> u64 {
    instr::int1b_safe(nr, 0, 0, 0).unwrap_or(u64::MAX)
}

fn user_hypercall_denied() {
    let exit = user::run(u_hypercall, hc::HALT);
    match rt::env() {
        guest_lib::abi::env::Env::Hvm64 => {
            // A DPL0 gate used by `int n` at CPL3: #GP with the IDT vector in the error code.
            check_eq!(
                exit,
                UserExit::Exception(Exception::gp((0x1b << 3) | 2)),
                "int $0x1b at CPL3"
            );
        }
        _ => check!(
            matches!(exit, UserExit::Exception(_)),
            "int $0x1b (HALT hypercall) at CPL3 must raise an exception in the kernel, got {:?}",
            exit
        ),
    }
}
case!(
    user_hypercall_denied,
    Spec::new(
        "isolation.user_hypercall_denied",
        Area::Isolation,
        "int $0x1b from CPL3 is refused with an exception"
    )
    .reqs("PVM-ISO-1,X86-EXC-GP")
);

/// Guest user code cannot read a supervisor-only (U/S=0) page of its kernel: #PF with P|U.
fn user_reads_supervisor_page() {
    use guest_lib::abi::layout::pte;
    use guest_lib::exception::pfec;
    const VA: u64 = crate::common::TEST_VA;
    let f = guest_lib::paging::alloc_frame();
    guest_lib::arch::mem::write_u64(f, 0x5ec2e7);
    guest_lib::paging::map(VA, f, pte::RW);
    instr::invlpg(VA);
    check_eq!(
        instr::read_u64_safe(VA),
        Ok(0x5ec2e7),
        "CPL0 read of its own page"
    );
    check_eq!(
        user::run(user::read_probe, VA),
        UserExit::Exception(Exception::pf(pfec::P | pfec::U, VA)),
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
    .timeout_ms(2000)
);
