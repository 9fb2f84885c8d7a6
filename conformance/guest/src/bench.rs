//! Benchmarks (area `bench`, run by `cargo xtask bench`): the PVM paper's microbenchmarks as
//! guest loops. Each reports per-batch TSC samples under a metric name; the host computes
//! median, p99 and CV, and the ratio to its native baselines.

use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use guest_lib::abi::case::{FLAG_IRQCHIP, HostCheck, io};
use guest_lib::abi::env::Area;
use guest_lib::abi::layout::MMIO_WINDOW;
use guest_lib::arch::instr;
use guest_lib::bench::{Baseline, SAMPLES, measure};
use guest_lib::case::Spec;
use guest_lib::env::{self, EnvError};
use guest_lib::exception::{Exception, Frame, SyscallFrame};
use guest_lib::paging::{Pte, PteFlags, alloc_frame, map, set_pte};
use guest_lib::user::{self, UserExit};
use guest_lib::{apic, case, log, report, rt, skip};

use crate::common::{MSR_SCRATCH, PING_VECTOR, PONG_VECTOR, TEST_VA, TIMER_VECTOR, UNMAPPED};

const fn bench(name: &'static str, summary: &'static str) -> Spec {
    Spec::new(name, Area::Bench, summary)
        .host(HostCheck::Bench)
        .timeout_ms(60_000)
}

fn unsupported(e: EnvError) -> ! {
    match e {
        EnvError::Unsupported(why) => skip!("{}", why),
        other => guest_lib::error!("{:?}", other),
    }
}

fn hypercall() {
    let env = env::current();
    if let Err(e) = env.null_hypercall() {
        unsupported(e);
    }
    measure("hypercall", Baseline::Getpid, SAMPLES, 200, || {
        let _ = env.null_hypercall();
    });
}
case!(
    hypercall,
    bench(
        "bench.hypercall",
        "in-kernel hypercall round trip (an undefined number)"
    )
    .reqs("PERF-HC")
);

fn ack_syscall(_: &mut SyscallFrame) -> bool {
    true
}

extern "C" fn u_syscall_loop(n: u64) -> u64 {
    let t0 = instr::rdtsc();
    for _ in 0..n {
        instr::syscall(0x42);
    }
    instr::rdtsc().wrapping_sub(t0)
}

fn syscall_roundtrip() {
    const ITERS: u64 = 200;
    user::set_syscall_hook(Some(ack_syscall));
    let _ = user::run(u_syscall_loop, 8);
    for _ in 0..SAMPLES {
        match user::run(u_syscall_loop, ITERS) {
            UserExit::Returned(cycles) => {
                report::sample("syscall_roundtrip", Baseline::Getpid, ITERS, cycles)
            }
            other => skip!(
                "the user->supervisor->user SYSCALL path does not work here: {:?}",
                other
            ),
        }
    }
    user::set_syscall_hook(None);
}
case!(
    syscall_roundtrip,
    bench(
        "bench.syscall_roundtrip",
        "event round trip user->supervisor->user via SYSCALL"
    )
    .reqs("PERF-SYSCALL")
);

fn exceptions() {
    measure("exception_ud", Baseline::Signal, SAMPLES, 100, || {
        let _ = instr::ud2_safe();
    });
    measure("exception_pf", Baseline::PageFault, SAMPLES, 100, || {
        let _ = instr::read_u64_safe(UNMAPPED.get());
    });
}
case!(
    exceptions,
    bench(
        "bench.exceptions",
        "#UD and #PF to the guest handler and back"
    )
    .reqs("PERF-EXC")
);

fn msr() {
    measure("rdmsr", Baseline::None, SAMPLES, 200, || {
        let _ = instr::rdmsr_safe(MSR_SCRATCH);
    });
    measure("wrmsr", Baseline::None, SAMPLES, 200, || {
        let _ = instr::wrmsr_safe(MSR_SCRATCH, 0x1000);
    });
}
case!(
    msr,
    bench("bench.msr", "privileged instruction emulation: RDMSR/WRMSR").reqs("PERF-MSR")
);

fn cpuid() {
    measure("cpuid", Baseline::Cpuid, SAMPLES, 200, || {
        let _ = instr::cpuid(0, 0);
    });
}
case!(cpuid, bench("bench.cpuid", "CPUID").reqs("PERF-CPUID"));

fn pv_cpuid() {
    let env = env::current();
    if let Err(e) = env.pv_cpuid(0, 0) {
        unsupported(e);
    }
    measure("pv_cpuid", Baseline::Cpuid, SAMPLES, 200, || {
        let _ = env.pv_cpuid(0, 0);
    });
}
case!(
    pv_cpuid,
    bench("bench.pv_cpuid", "the environment's paravirtual CPUID").reqs("PERF-CPUID")
);

fn pio_exit() {
    measure("pio_exit", Baseline::RawExit, SAMPLES, 200, || {
        instr::outb(io::BENCH_PORT, 0)
    });
}
case!(
    pio_exit,
    bench("bench.pio_exit", "port I/O exit to the VMM and back").reqs("PERF-PIO")
);

fn mmio_exit() {
    measure("mmio_exit", Baseline::RawExit, SAMPLES, 200, || {
        instr::mmio_write_u32(MMIO_WINDOW + io::BENCH_MMIO_OFFSET, 0)
    });
}
case!(
    mmio_exit,
    bench("bench.mmio_exit", "MMIO exit to the VMM and back").reqs("PERF-MMIO")
);

fn shadow_fill() {
    const PAGES: usize = 64;
    let frames: [_; PAGES] = core::array::from_fn(|_| alloc_frame());
    let va = |i: usize| TEST_VA.page(i as u64);
    for _ in 0..SAMPLES {
        for (i, f) in frames.iter().enumerate() {
            map(va(i), f, PteFlags::RW | PteFlags::US);
            instr::invlpg(va(i).get());
        }
        let t0 = instr::rdtsc();
        instr::touch_write_pages(TEST_VA, PAGES as u64, 1);
        let first = instr::rdtsc().wrapping_sub(t0);
        let t1 = instr::rdtsc();
        instr::touch_write_pages(TEST_VA, PAGES as u64, 2);
        let again = instr::rdtsc().wrapping_sub(t1);
        report::sample(
            "shadow_first_touch",
            Baseline::PageFault,
            PAGES as u64,
            first,
        );
        report::sample("shadow_after_fill", Baseline::None, PAGES as u64, again);
        for i in 0..PAGES {
            set_pte(va(i), Pte::ABSENT);
            instr::invlpg(va(i).get());
        }
    }
}
case!(
    shadow_fill,
    bench(
        "bench.shadow_fill",
        "shadow page-table fill on first touch, and access after fill"
    )
    .reqs("PERF-SPT")
);

fn cr3_switch() {
    measure("cr3_flush", Baseline::None, SAMPLES, 100, instr::reload_cr3);
    match instr::enable_pcid() {
        Ok(()) => measure(
            "cr3_noflush",
            Baseline::None,
            SAMPLES,
            100,
            instr::reload_cr3_noflush,
        ),
        Err(e) => log!("CR4.PCIDE refused ({:?}): no cr3_noflush", e),
    }
}
case!(
    cr3_switch,
    bench(
        "bench.cr3_switch",
        "CR3 load with and without (PCID NOFLUSH) TLB flush"
    )
    .reqs("PERF-CR3")
);

fn tlb() {
    let f = alloc_frame();
    map(TEST_VA, &f, PteFlags::RW | PteFlags::US);
    measure("invlpg", Baseline::None, SAMPLES, 200, || {
        instr::invlpg(TEST_VA.get())
    });
}
case!(
    tlb,
    bench("bench.tlb", "INVLPG of a mapped page").reqs("PERF-TLB")
);

fn tlb_hypercalls() {
    let env = env::current();
    let f = alloc_frame();
    map(TEST_VA, &f, PteFlags::RW | PteFlags::US);
    if let Err(e) = env.flush_tlb_one(TEST_VA.get()) {
        unsupported(e);
    }
    measure("hc_flush_tlb_one", Baseline::None, SAMPLES, 200, || {
        let _ = env.flush_tlb_one(TEST_VA.get());
    });
    measure("hc_flush_tlb", Baseline::None, SAMPLES, 100, || {
        let _ = env.flush_tlb();
    });
}
case!(
    tlb_hypercalls,
    bench(
        "bench.tlb_hypercalls",
        "the environment's TLB-flush hypercalls (one page, all)"
    )
    .reqs("PERF-TLB")
);

fn empty() {}
case!(
    empty,
    bench(
        "bench.empty",
        "an empty guest: VM create + boot + teardown, measured by the host"
    )
    .host(HostCheck::Lifecycle)
    .reqs("PERF-VM")
);

fn exit_loop() {
    loop {
        instr::outb(io::BENCH_PORT, 0);
    }
}
case!(
    exit_loop,
    bench(
        "bench.exit_loop",
        "port-I/O exits in a loop, timed by the host: runner vs raw KVM_RUN loop"
    )
    .host(HostCheck::ExitLoop)
    .reqs("PERF-RUNNER")
);

static ARRIVED: AtomicU64 = AtomicU64::new(0);

fn on_timer(_: &mut Frame, ex: Exception) -> bool {
    if ex.vector != TIMER_VECTOR {
        return false;
    }
    ARRIVED.store(instr::rdtsc(), SeqCst);
    apic::eoi();
    true
}

fn timer_latency() {
    const DELAY: u64 = 100_000; // TSC cycles from arming to the deadline
    let give_up = 1000 * rt::cycles_per_ms(); // after the deadline
    if let Err(e) = apic::enable_tsc_deadline_timer(TIMER_VECTOR, apic::SPURIOUS_VECTOR) {
        skip!("no usable x2APIC TSC-deadline timer: {:?}", e);
    }
    guest_lib::exception::set_hook(Some(on_timer));
    for _ in 0..SAMPLES {
        ARRIVED.store(0, SeqCst);
        apic::set_interrupts(true);
        let deadline = instr::rdtsc() + DELAY;
        let _ = apic::arm(deadline);
        while ARRIVED.load(SeqCst) == 0 && instr::rdtsc() < deadline + give_up {
            core::hint::spin_loop();
        }
        apic::set_interrupts(false);
        match ARRIVED.load(SeqCst) {
            0 => guest_lib::error!(
                "the TSC-deadline timer interrupt never arrived (see interrupts.timer_delivery)"
            ),
            at => report::sample(
                "timer_latency",
                Baseline::None,
                1,
                at.saturating_sub(deadline),
            ),
        }
    }
    guest_lib::exception::set_hook(None);
}
case!(
    timer_latency,
    bench(
        "bench.timer_latency",
        "LAPIC TSC-deadline timer: deadline to guest handler entry"
    )
    .flags(FLAG_IRQCHIP)
    .reqs("PERF-TIMER")
);

fn ping_pong(_: &mut Frame, ex: Exception) -> bool {
    match ex.vector {
        PING_VECTOR => apic::send_ipi(0, PONG_VECTOR),
        PONG_VECTOR => ARRIVED.store(instr::rdtsc(), SeqCst),
        _ => return false,
    }
    apic::eoi();
    true
}

fn ipi_roundtrip() {
    let give_up = 1000 * rt::cycles_per_ms();
    if let Err(e) = apic::enable_x2apic(apic::SPURIOUS_VECTOR) {
        skip!("no usable x2APIC: {:?}", e);
    }
    if !guest_lib::smp::wait_for_aps(give_up) {
        guest_lib::error!("vCPU 1 did not come online");
    }
    guest_lib::exception::set_hook(Some(ping_pong));
    for _ in 0..SAMPLES {
        ARRIVED.store(0, SeqCst);
        apic::set_interrupts(true);
        let t0 = instr::rdtsc();
        apic::send_ipi(1, PING_VECTOR);
        while ARRIVED.load(SeqCst) == 0 && instr::rdtsc() < t0 + give_up {
            core::hint::spin_loop();
        }
        apic::set_interrupts(false);
        match ARRIVED.load(SeqCst) {
            0 => guest_lib::error!("no answer to the IPI (see interrupts.ipi_delivery)"),
            at => report::sample("ipi_roundtrip", Baseline::None, 1, at - t0),
        }
    }
    guest_lib::exception::set_hook(None);
}
case!(
    ipi_roundtrip,
    bench(
        "bench.ipi_roundtrip",
        "IPI from vCPU 0 to a halted vCPU 1 and its answer back"
    )
    .vcpus(2)
    .flags(FLAG_IRQCHIP)
    .reqs("PERF-IPI")
);
