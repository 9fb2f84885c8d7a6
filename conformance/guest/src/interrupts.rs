//! Exceptions delivered to the guest kernel: vectors, error codes and the interrupt frame.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};

use guest_lib::PerCpu;
use guest_lib::abi::env::Area;
use guest_lib::abi::layout::sel::{KERNEL_CS, KERNEL_DS};
use guest_lib::abi::x86::rflags;
use guest_lib::arch::instr;
use guest_lib::case::Spec;
use guest_lib::exception::{self, Exception, Frame, vector};
use guest_lib::{case, case_table, check, check_eq, rt};

use crate::common::{PING_VECTOR, PONG_VECTOR, TIMER_VECTOR, upstream};
use guest_lib::abi::env::X86_RING0_ENVS;
use guest_lib::abi::upstream::HOST_CPUNODE_SELECTOR;

/// Where an exception must be reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    /// A fault: the frame RIP is the instruction.
    Fault,
    /// A trap: the frame RIP is just after the instruction.
    Trap,
}

/// Checks a `_safe` primitive's exception at CPL0: vector and error code, a frame CS with RPL
/// 0 (the kernel's own) and the RIP the architecture reports for it.
fn expect_cpl0(got: Result<(), Exception>, want: Exception, at: At) {
    check_eq!(got, Err(want), "the exception");
    if got.is_err() {
        let (rip, cs) = exception::last_fault_frame();
        check_eq!(cs, u64::from(KERNEL_CS), "frame CS");
        let site = guest_lib::arch::safe_site(rip);
        let want_site = match at {
            At::Fault => guest_lib::arch::SafeSite::Instruction,
            At::Trap => guest_lib::arch::SafeSite::After,
        };
        check_eq!(site, Some(want_site), "frame RIP {:#x} ({:?})", rip, at);
    }
}

static STEPPED: PerCpu<Option<(u64, u64)>> = PerCpu::new(None);

fn on_single_step(frame: &mut Frame, ex: Exception) -> bool {
    if ex.vector != vector::DB {
        return false;
    }
    STEPPED.set(Some((frame.rip, frame.cs)));
    frame.rflags &= !rflags::TF;
    true
}

static SOFT_INT: PerCpu<Option<(u8, u64, u64)>> = PerCpu::new(None);

fn on_soft_int(frame: &mut Frame, ex: Exception) -> bool {
    if ex.vector != SOFT_VECTOR {
        return false;
    }
    SOFT_INT.set(Some((ex.vector, frame.rip, frame.error_code)));
    true
}

/// A vector with a DPL0 gate that nothing else uses, for `int n` at CPL0.
const SOFT_VECTOR: u8 = 0x22;
/// A vector without a gate (the library's IDT has gates below 48 only): #NP through it.
const ABSENT_VECTOR: u8 = 0x50;
/// A selector past the GDT's limit.
const BAD_SELECTOR: u16 = 0x78;

/// One exception raised by kernel (CPL0) code: the vector, error code, frame CS and RIP the
/// architecture prescribes.
fn cpl0_exception() {
    use guest_lib::abi::x86::{cr0, idt_error_code};
    match rt::case_param() {
        0 => expect_cpl0(
            instr::divide_by_zero_safe(),
            Exception::new(vector::DE),
            At::Fault,
        ),
        1 => expect_cpl0(
            instr::idiv_overflow_safe(),
            Exception::new(vector::DE),
            At::Fault,
        ),
        2 => {
            STEPPED.set(None);
            exception::set_hook(Some(on_single_step));
            instr::single_step_nop();
            exception::set_hook(None);
            match STEPPED.get() {
                Some((rip, cs)) => {
                    let f = instr::single_step_nop as *const () as u64;
                    check!(
                        (f..f + 32).contains(&rip),
                        "#DB RIP {:#x} is after the stepped nop",
                        rip
                    );
                    check_eq!(cs, u64::from(KERNEL_CS), "frame CS");
                    let dr6 = instr::read_dr6_safe();
                    check_eq!(dr6.map(|v| v & (1 << 14)), Ok(1 << 14), "DR6.BS");
                }
                None => check!(false, "no #DB after the single-stepped instruction"),
            }
        }
        3 => expect_cpl0(instr::int3_safe(), Exception::new(vector::BP), At::Trap),
        4 => expect_cpl0(instr::into_safe(), Exception::new(vector::UD), At::Fault),
        5 => expect_cpl0(instr::ud2_safe(), Exception::new(vector::UD), At::Fault),
        6 => {
            instr::set_cr0_ts(true);
            check_eq!(
                instr::read_cr0() & cr0::TS,
                cr0::TS,
                "CR0.TS reads back set"
            );
            expect_cpl0(instr::fwait_safe(), Exception::new(vector::NM), At::Fault);
            instr::set_cr0_ts(false);
        }
        7 => expect_cpl0(
            instr::read_u64_safe(0x8000_0000_0000_0000).map(drop),
            Exception::gp(0),
            At::Fault,
        ),
        8 => expect_cpl0(
            instr::load_ds_safe(BAD_SELECTOR),
            Exception::gp(u32::from(BAD_SELECTOR)),
            At::Fault,
        ),
        9 => expect_cpl0(
            instr::int_n_safe::<ABSENT_VECTOR>(),
            Exception::new(vector::NP).with_error_code(idt_error_code(ABSENT_VECTOR)),
            At::Fault,
        ),
        10 => expect_cpl0(
            instr::ss_noncanonical_read_safe(),
            Exception::new(vector::SS),
            At::Fault,
        ),
        11 => {
            instr::x87_pend_zero_divide();
            expect_cpl0(instr::fwait_safe(), Exception::new(vector::MF), At::Fault);
            instr::x87_reset();
        }
        12 => {
            instr::enable_sse(true);
            expect_cpl0(
                instr::sse_zero_divide_safe(),
                Exception::new(vector::XM),
                At::Fault,
            );
        }
        13 => {
            instr::enable_sse(false);
            expect_cpl0(
                instr::sse_zero_divide_safe(),
                Exception::new(vector::UD),
                At::Fault,
            );
            instr::enable_sse(true);
        }
        14 => {
            SOFT_INT.set(None);
            exception::set_hook(Some(on_soft_int));
            let r = instr::int_n_safe::<SOFT_VECTOR>();
            exception::set_hook(None);
            check_eq!(r, Ok(()), "int ${:#x} returned", SOFT_VECTOR);
            match SOFT_INT.get() {
                Some((v, rip, _)) => {
                    check_eq!(v, SOFT_VECTOR, "vector");
                    check_eq!(
                        guest_lib::arch::safe_site(rip),
                        Some(guest_lib::arch::SafeSite::After),
                        "frame RIP {:#x} is after the int",
                        rip
                    );
                }
                None => check!(
                    false,
                    "the handler of vector {:#x} did not run",
                    SOFT_VECTOR
                ),
            }
        }
        15 => {
            expect_cpl0(
                instr::int_n_safe::<SOFT_VECTOR>(),
                Exception::gp(idt_error_code(SOFT_VECTOR)),
                At::Fault,
            );
            expect_cpl0(
                instr::int_n_safe::<ABSENT_VECTOR>(),
                Exception::gp(idt_error_code(ABSENT_VECTOR)),
                At::Fault,
            );
        }
        16 => {
            check_eq!(
                instr::load_ds_safe(HOST_CPUNODE_SELECTOR),
                Ok(()),
                "loading DS with {:#x}, the host's CPUNODE entry (DPL 3)",
                HOST_CPUNODE_SELECTOR
            );
            check_eq!(
                guest_lib::arch::insn::segment_queries(),
                0,
                "LAR/LSL/VERR/VERW on the kernel's selectors (the host's DPL-0 descriptors)"
            );
        }
        n => guest_lib::error!("no CPL0 exception {}", n),
    }
}

const fn cpl0_spec(name: &'static str, summary: &'static str) -> Spec {
    Spec::new(name, Area::Interrupts, summary)
}

case_table!(
    cpl0_exception,
    cpl0_spec,
    [
        (
            "interrupts.cpl0.de",
            0,
            "DIV by zero at CPL0: #DE at the instruction",
            "X86-EXC-DE,X86-EVT-1"
        ),
        (
            "interrupts.cpl0.de_overflow",
            1,
            "IDIV INT64_MIN/-1 at CPL0: #DE at the instruction",
            "X86-EXC-DE,X86-EVT-1"
        ),
        (
            "interrupts.cpl0.db_single_step",
            2,
            "RFLAGS.TF at CPL0: #DB after the next instruction, DR6.BS set",
            "X86-EXC-DB,X86-EVT-1"
        ),
        (
            "interrupts.cpl0.bp",
            3,
            "INT3 at CPL0: #BP, RIP after it",
            "X86-EXC-BP,X86-EVT-1"
        ),
        (
            "interrupts.cpl0.into_ud",
            4,
            "INTO in 64-bit mode at CPL0: #UD",
            "X86-EXC-UD,X86-EVT-1"
        ),
        (
            "interrupts.cpl0.ud",
            5,
            "UD2 at CPL0: #UD at the instruction",
            "X86-EXC-UD,X86-EVT-1"
        ),
        (
            "interrupts.cpl0.gp_noncanonical",
            7,
            "a read of a non-canonical address at CPL0: #GP(0)",
            "X86-EXC-GP,X86-EVT-1"
        ),
        (
            "interrupts.cpl0.ss_noncanonical",
            10,
            "an RBP-based read of a non-canonical address: #SS(0)",
            "X86-EXC-SS,X86-EVT-1"
        ),
        (
            "interrupts.cpl0.mf",
            11,
            "a pending unmasked x87 exception at FWAIT with CR0.NE: #MF",
            "X86-EXC-MF,X86-EVT-1"
        ),
        (
            "interrupts.cpl0.xm",
            12,
            "an unmasked SSE exception with CR4.OSXMMEXCPT: #XM",
            "X86-EXC-XM,X86-EVT-1"
        ),
    ]
);

const fn cpl0_ring0_spec(name: &'static str, summary: &'static str) -> Spec {
    cpl0_spec(name, summary).envs(X86_RING0_ENVS)
}

case_table!(
    cpl0_exception,
    cpl0_ring0_spec,
    [
        (
            "interrupts.cpl0.nm",
            6,
            "FWAIT with CR0.TS|MP at CPL0: #NM",
            "X86-EXC-NM,X86-EVT-1"
        ),
        (
            "interrupts.cpl0.xm_as_ud",
            13,
            "an unmasked SSE exception with CR4.OSXMMEXCPT clear: #UD",
            "X86-EXC-XM-UD,X86-EVT-1"
        ),
        (
            "interrupts.cpl0.gp_selector",
            8,
            "loading DS with a selector past the GDT limit: #GP(selector)",
            "X86-EXC-GP,X86-EVT-1"
        ),
        (
            "interrupts.cpl0.np_gate",
            9,
            "INT n through a not-present IDT gate: #NP(n*8+2)",
            "X86-EXC-NP,X86-EVT-1"
        ),
        (
            "interrupts.cpl0.int_n",
            14,
            "INT n at CPL0 through a DPL0 gate: the handler runs, RIP after the int",
            "X86-INTN-1,X86-EVT-1"
        ),
    ]
);

case_table!(
    cpl0_exception,
    upstream,
    [
        (
            "abi.upstream.ring.host_idt",
            15,
            "INT n in supervisor mode via a host IDT gate of DPL 0 (all but 3, 4, 0x80): #GP(n*8+2)",
            "UP-RING-5"
        ),
        (
            "abi.upstream.ring.host_gdt",
            16,
            "segment loads and LAR/LSL/VERR/VERW see the host's GDT (0x78 loads; 0x10/0x18 are DPL 0)",
            "UP-RING-6"
        ),
    ]
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
    .smoke()
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
    .smoke()
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
    // 10 ms ahead: the user run must have started when it fires (a slow host, the reference
    // model or TCG, took more than the 0.5 ms this once was to get there, and the interrupt
    // came in the kernel, where only the user hook waits for it).
    check_eq!(
        apic::arm(instr::rdtsc() + 10 * guest_lib::rt::cycles_per_ms()),
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
