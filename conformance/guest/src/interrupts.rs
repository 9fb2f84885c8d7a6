//! Exceptions delivered to the guest kernel: vectors, error codes and the interrupt frame.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};

use guest_lib::PerCpu;
use guest_lib::abi::env::Area;
use guest_lib::abi::layout::sel::{KERNEL_CS, KERNEL_DS};
use guest_lib::abi::x86::rflags;
use guest_lib::arch::instr;
use guest_lib::case::Spec;
use guest_lib::exception::{self, Exception, Frame, vector};
use guest_lib::{case, check, check_eq};

use crate::common::{PING_VECTOR, PONG_VECTOR, TIMER_VECTOR};

fn ud2() {
    check_eq!(instr::ud2_safe(), Err(Exception::new(vector::UD)));
}
case!(
    ud2,
    Spec::new("interrupts.ud2", Area::Interrupts, "ud2 raises #UD").reqs("X86-EXC-UD")
);

fn int3() {
    check_eq!(instr::int3_safe(), Err(Exception::new(vector::BP)));
}
case!(
    int3,
    Spec::new(
        "interrupts.int3",
        Area::Interrupts,
        "int3 at CPL0 raises #BP (trap, RIP after it)"
    )
    .reqs("X86-EXC-BP")
);

fn divide_error() {
    check_eq!(
        instr::divide_by_zero_safe(),
        Err(Exception::new(vector::DE))
    );
}
case!(
    divide_error,
    Spec::new(
        "interrupts.divide_error",
        Area::Interrupts,
        "div by zero raises #DE"
    )
    .reqs("X86-EXC-DE")
);

fn gp_unknown_msr() {
    check_eq!(
        instr::rdmsr_safe(0x0000_3fff),
        Err(Exception::gp(0)),
        "rdmsr"
    );
    check_eq!(
        instr::wrmsr_safe(0x0000_3fff, 1),
        Err(Exception::gp(0)),
        "wrmsr"
    );
}
case!(
    gp_unknown_msr,
    Spec::new(
        "interrupts.gp_unknown_msr",
        Area::Interrupts,
        "rdmsr/wrmsr of an unknown MSR raise #GP(0)"
    )
    .reqs("X86-EXC-GP,X86-MSR-1")
);

static FRAME: PerCpu<Option<Frame>> = PerCpu::new(None);

fn capture(frame: &mut Frame, ex: Exception) -> bool {
    if ex.vector != vector::UD {
        return false;
    }
    FRAME.set(Some(*frame));
    frame.rip += 2;
    true
}

fn exception_frame() {
    FRAME.set(None);
    exception::set_hook(Some(capture));
    instr::raise_ud();
    exception::set_hook(None);
    let Some(f) = FRAME.get() else {
        check!(false, "no #UD reached the handler");
        return;
    };
    check_eq!(f.cs, u64::from(KERNEL_CS), "frame CS");
    check_eq!(f.ss, u64::from(KERNEL_DS), "frame SS");
    check_eq!(f.error_code, 0u64, "no error code for #UD");
    check_eq!(
        f.rflags & rflags::FIXED,
        rflags::FIXED,
        "frame RFLAGS bit 1"
    );
    let stack = guest_lib::abi::layout::IMAGE_END..guest_lib::abi::layout::SUPERVISOR_STACK_TOP;
    check!(
        stack.contains(&f.rsp),
        "frame RSP {:#x} is on the interrupted stack",
        f.rsp
    );
}
case!(
    exception_frame,
    Spec::new(
        "interrupts.exception_frame",
        Area::Interrupts,
        "the 64-bit exception frame: CS, SS, RFLAGS, RSP"
    )
    .reqs("X86-EVT-1")
);

static EXPECTING: AtomicBool = AtomicBool::new(false);
static DUPLICATES: AtomicU32 = AtomicU32::new(0);

fn on_timer(_: &mut Frame, ex: Exception) -> bool {
    if ex.vector != TIMER_VECTOR {
        return false;
    }
    if !EXPECTING.swap(false, SeqCst) {
        DUPLICATES.fetch_add(1, SeqCst);
    }
    guest_lib::apic::eoi();
    true
}

/// Every armed TSC-deadline timer interrupt reaches the guest exactly once: within 20 ms of
/// its deadline (far above any scheduling delay), also while the vCPU spins without exits,
/// also when the deadline has already passed when it is written, and not again after the
/// guest next exits with interrupts enabled.
fn timer_delivery() {
    use guest_lib::apic;
    const ROUNDS: u32 = 200;
    const DELAY: u64 = 100_000;
    let bound = 20 * guest_lib::rt::cycles_per_ms();
    if let Err(e) = apic::enable_tsc_deadline_timer(TIMER_VECTOR, guest_lib::apic::SPURIOUS_VECTOR)
    {
        guest_lib::skip!("no usable x2APIC TSC-deadline timer: {:?}", e);
    }
    exception::set_hook(Some(on_timer));
    DUPLICATES.store(0, SeqCst);
    let (mut lost, mut first_lost, mut first_dup) = (0u32, None, None);
    for round in 0..ROUNDS {
        EXPECTING.store(true, SeqCst);
        apic::set_interrupts(true);
        // Odd rounds write a deadline that has already passed: the interrupt is then pending
        // when the arming WRMSR retires and must still arrive once.
        let deadline = if round % 2 == 0 {
            instr::rdtsc() + DELAY
        } else {
            instr::rdtsc() - 1
        };
        check_eq!(apic::arm(deadline), Ok(()), "arming the TSC deadline");
        while EXPECTING.load(SeqCst) && instr::rdtsc() < deadline + bound {
            core::hint::spin_loop();
        }
        // One more exit with interrupts enabled (disarming the timer), where a duplicate of
        // the interrupt just handled would be injected.
        check_eq!(apic::arm(0), Ok(()), "disarming");
        apic::set_interrupts(false);
        if EXPECTING.swap(false, SeqCst) {
            lost += 1;
            first_lost.get_or_insert(round);
        }
        if DUPLICATES.load(SeqCst) > 0 {
            first_dup.get_or_insert(round);
        }
    }
    exception::set_hook(None);
    check_eq!(
        lost,
        0u32,
        "interrupts not delivered within the bound (of {}); first in round {:?}",
        ROUNDS,
        first_lost
    );
    check_eq!(
        DUPLICATES.load(SeqCst),
        0u32,
        "interrupts delivered twice (of {}); first in round {:?}",
        ROUNDS,
        first_dup
    );
}
case!(
    timer_delivery,
    Spec::new(
        "interrupts.timer_delivery",
        Area::Interrupts,
        "each TSC-deadline timer interrupt is delivered exactly once (200 rounds)"
    )
    .flags(guest_lib::abi::case::FLAG_IRQCHIP)
    .reqs("X86-APIC-TIMER-1,PVM-IRQ-1")
);

static PONGS: AtomicU32 = AtomicU32::new(0);

fn ping_pong(_: &mut Frame, ex: Exception) -> bool {
    match ex.vector {
        PING_VECTOR => guest_lib::apic::send_ipi(0, PONG_VECTOR),
        PONG_VECTOR => {
            PONGS.fetch_add(1, SeqCst);
        }
        _ => return false,
    }
    guest_lib::apic::eoi();
    true
}

/// IPIs between two vCPUs: each of 100 pings from vCPU 0 reaches vCPU 1 (halted with
/// interrupts enabled) and its answer comes back, exactly once.
fn ipi_delivery() {
    use guest_lib::{apic, smp};
    const ROUNDS: u32 = 100;
    let bound = 20 * guest_lib::rt::cycles_per_ms();
    if let Err(e) = apic::enable_x2apic(apic::SPURIOUS_VECTOR) {
        guest_lib::skip!("no usable x2APIC: {:?}", e);
    }
    if !smp::wait_for_aps(1000 * guest_lib::rt::cycles_per_ms()) {
        guest_lib::error!("vCPU 1 did not come online");
    }
    exception::set_hook(Some(ping_pong));
    PONGS.store(0, SeqCst);
    let mut missing = 0u32;
    for round in 0..ROUNDS {
        apic::set_interrupts(true);
        apic::send_ipi(1, PING_VECTOR);
        let t0 = instr::rdtsc();
        while PONGS.load(SeqCst) == round && instr::rdtsc() < t0 + bound {
            core::hint::spin_loop();
        }
        apic::set_interrupts(false);
        if PONGS.load(SeqCst) == round {
            missing += 1;
            PONGS.store(round + 1, SeqCst);
        }
    }
    exception::set_hook(None);
    check_eq!(
        missing,
        0u32,
        "pings without an answer within 20 ms (of {})",
        ROUNDS
    );
    check_eq!(
        PONGS.load(SeqCst),
        ROUNDS,
        "answers counted (a larger count means duplicates)"
    );
}
case!(
    ipi_delivery,
    Spec::new(
        "interrupts.ipi_delivery",
        Area::Interrupts,
        "IPIs between two vCPUs are delivered, and answered, once each"
    )
    .vcpus(2)
    .flags(guest_lib::abi::case::FLAG_IRQCHIP)
    .reqs("X86-APIC-IPI-1,PVM-IRQ-2")
);

static USER_TICK: AtomicU64 = AtomicU64::new(0);

fn tick_in_user(frame: &mut Frame, ex: Exception) -> bool {
    if ex.vector != TIMER_VECTOR {
        return false;
    }
    USER_TICK.store(frame.cs, SeqCst);
    guest_lib::apic::eoi();
    true
}

extern "C" fn u_wait_tick(max_cycles: u64) -> u64 {
    let t0 = instr::rdtsc();
    while USER_TICK.load(SeqCst) == 0 && instr::rdtsc() - t0 < max_cycles {
        core::hint::spin_loop();
    }
    USER_TICK.load(SeqCst)
}

/// A timer interrupt that arrives while the guest runs at CPL3 is delivered to the kernel
/// (frame CS with RPL 3) and the user code resumes where it was.
fn timer_in_user_mode() {
    use guest_lib::apic;
    if let Err(e) = apic::enable_tsc_deadline_timer(TIMER_VECTOR, guest_lib::apic::SPURIOUS_VECTOR)
    {
        guest_lib::skip!("no usable x2APIC TSC-deadline timer: {:?}", e);
    }
    USER_TICK.store(0, SeqCst);
    guest_lib::user::set_fault_hook(Some(tick_in_user));
    apic::set_interrupts(true);
    check_eq!(
        apic::arm(instr::rdtsc() + guest_lib::rt::cycles_per_ms() / 2),
        Ok(()),
        "arming"
    );
    let exit = guest_lib::user::run(u_wait_tick, 1000 * guest_lib::rt::cycles_per_ms());
    apic::set_interrupts(false);
    guest_lib::user::set_fault_hook(None);
    match exit {
        guest_lib::user::UserExit::Returned(cs) => {
            check_eq!(cs & 3, 3u64, "interrupted CS RPL (0: no interrupt seen)")
        }
        other => check!(false, "user run ended with {:?}", other),
    }
}
case!(
    timer_in_user_mode,
    Spec::new(
        "interrupts.timer_in_user_mode",
        Area::Interrupts,
        "a timer interrupt at CPL3 goes to the kernel and user code resumes"
    )
    .flags(guest_lib::abi::case::FLAG_IRQCHIP)
    .reqs("X86-EVT-3,PVM-IRQ-3")
);
