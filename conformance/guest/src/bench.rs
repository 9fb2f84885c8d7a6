//! Benchmarks (area `bench`, run by `cargo xtask bench`): the PVM paper's microbenchmarks as
//! guest loops. Each reports per-batch TSC samples under a metric name; the host computes
//! median, p99 and CV, and the ratio to its native baselines.

use guest_lib::abi::case::{HostCheck, io};
use guest_lib::abi::env::{Area, Env};
use guest_lib::abi::layout::{MMIO_WINDOW, pte};
use guest_lib::abi::local::hc;
use guest_lib::arch::instr;
use guest_lib::bench::{SAMPLES, measure};
use guest_lib::case::Spec;
use guest_lib::exception::SyscallFrame;
use guest_lib::paging::{alloc_frame, map, set_pte};
use guest_lib::user::{self, UserExit};
use guest_lib::{apic, case, log, pv_local, report, rt, skip};

use crate::common::{
    MSR_KERNEL_GS_BASE, PING_VECTOR, PONG_VECTOR, TEST_VA, TIMER_VECTOR, UNMAPPED,
};

const fn bench(name: &'static str, summary: &'static str) -> Spec {
    Spec::new(name, Area::Bench, summary)
        .host(HostCheck::Bench)
        .timeout_ms(60_000)
}

fn hypercall() {
    measure("hypercall", SAMPLES, 200, || {
        let _ = pv_local::hypercall(0x100f, 0, 0, 0);
    });
}
case!(
    hypercall,
    bench(
        "bench.hypercall",
        "in-kernel hypercall round trip (unknown nr, -ENOSYS)"
    )
    .envs(Env::PvLocal.bit())
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
            UserExit::Returned(cycles) => report::sample("syscall_roundtrip", ITERS, cycles),
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
    measure("exception_ud", SAMPLES, 100, || {
        let _ = instr::ud2_safe();
    });
    measure("exception_pf", SAMPLES, 100, || {
        let _ = instr::read_u64_safe(UNMAPPED);
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
    measure("rdmsr", SAMPLES, 200, || {
        let _ = instr::rdmsr_safe(MSR_KERNEL_GS_BASE);
    });
    measure("wrmsr", SAMPLES, 200, || {
        let _ = instr::wrmsr_safe(MSR_KERNEL_GS_BASE, 0x1000);
    });
}
case!(
    msr,
    bench("bench.msr", "privileged instruction emulation: RDMSR/WRMSR").reqs("PERF-MSR")
);

fn cpuid() {
    measure("cpuid", SAMPLES, 200, || {
        let _ = instr::cpuid(0, 0);
    });
    if rt::env() == Env::PvLocal {
        measure("pv_cpuid", SAMPLES, 200, || {
            let _ = pv_local::pv_cpuid(0, 0);
        });
    }
}
case!(
    cpuid,
    bench("bench.cpuid", "CPUID (and the local dialect's PV CPUID)").reqs("PERF-CPUID")
);

fn pio_exit() {
    measure("pio_exit", SAMPLES, 200, || instr::outb(io::BENCH_PORT, 0));
}
case!(
    pio_exit,
    bench("bench.pio_exit", "port I/O exit to the VMM and back").reqs("PERF-PIO")
);

fn mmio_exit() {
    measure("mmio_exit", SAMPLES, 200, || {
        instr::mmio_write_u32(MMIO_WINDOW + io::BENCH_MMIO_OFFSET, 0)
    });
}
case!(
    mmio_exit,
    bench("bench.mmio_exit", "MMIO exit to the VMM and back").reqs("PERF-MMIO")
);

fn shadow_fill() {
    const PAGES: usize = 64;
    let mut frames = [0u64; PAGES];
    for f in frames.iter_mut() {
        *f = alloc_frame();
    }
    let va = |i: usize| TEST_VA + (i as u64) * 4096;
    for _ in 0..SAMPLES {
        for (i, f) in frames.iter().enumerate() {
            map(va(i), *f, pte::RW | pte::US);
            instr::invlpg(va(i));
        }
        let t0 = instr::rdtsc();
        for i in 0..PAGES {
            instr::touch_write(va(i), 1);
        }
        let first = instr::rdtsc().wrapping_sub(t0);
        let t1 = instr::rdtsc();
        for i in 0..PAGES {
            instr::touch_write(va(i), 2);
        }
        let again = instr::rdtsc().wrapping_sub(t1);
        report::sample("shadow_first_touch", PAGES as u64, first);
        report::sample("shadow_after_fill", PAGES as u64, again);
        for i in 0..PAGES {
            set_pte(va(i), 0);
            instr::invlpg(va(i));
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
    measure("cr3_flush", SAMPLES, 100, instr::reload_cr3);
    match instr::enable_pcid() {
        Ok(()) => measure("cr3_noflush", SAMPLES, 100, instr::reload_cr3_noflush),
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
    map(TEST_VA, f, pte::RW | pte::US);
    measure("invlpg", SAMPLES, 200, || instr::invlpg(TEST_VA));
    if rt::env() == Env::PvLocal {
        measure("hc_flush_tlb_one", SAMPLES, 200, || {
            let _ = pv_local::hypercall(hc::FLUSH_TLB_ONE, TEST_VA, 0, 0);
        });
        measure("hc_flush_tlb", SAMPLES, 100, || {
            let _ = pv_local::hypercall(hc::FLUSH_TLB, 0, 0, 0);
        });
    }
}
case!(
    tlb,
    bench("bench.tlb", "INVLPG and the TLB-flush hypercalls").reqs("PERF-TLB")
);

fn empty() {}
case!(
    empty,
    bench(
        "bench.empty",
        "an empty guest: VM create + boot + teardown, measured by the host"
    )
    .reqs("PERF-VM")
);

static ARRIVED: guest_lib::arch::Global<u64> = guest_lib::arch::Global::new(0);

fn on_timer(_: &mut guest_lib::exception::Frame, ex: guest_lib::exception::Exception) -> bool {
    if ex.vector != TIMER_VECTOR {
        return false;
    }
    ARRIVED.set(instr::rdtsc());
    apic::eoi();
    true
}

fn timer_latency() {
    const DELAY: u64 = 100_000; // TSC cycles from arming to the deadline
    const GIVE_UP: u64 = 2_000_000_000; // cycles after the deadline
    if let Err(e) = apic::enable_tsc_deadline_timer(TIMER_VECTOR, apic::SPURIOUS_VECTOR) {
        skip!("no usable x2APIC TSC-deadline timer: {:?}", e);
    }
    guest_lib::exception::set_hook(Some(on_timer));
    for _ in 0..SAMPLES {
        ARRIVED.set(0);
        apic::set_interrupts(true);
        let deadline = instr::rdtsc() + DELAY;
        let _ = apic::arm(deadline);
        while ARRIVED.get() == 0 && instr::rdtsc() < deadline + GIVE_UP {}
        apic::set_interrupts(false);
        match ARRIVED.get() {
            0 => guest_lib::error!(
                "the TSC-deadline timer interrupt never arrived (see interrupts.timer_delivery)"
            ),
            at => report::sample("timer_latency", 1, at.saturating_sub(deadline)),
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
    .flags(guest_lib::abi::case::FLAG_IRQCHIP)
    .reqs("PERF-TIMER")
);

fn ping_pong(_: &mut guest_lib::exception::Frame, ex: guest_lib::exception::Exception) -> bool {
    match ex.vector {
        PING_VECTOR => apic::send_ipi(0, PONG_VECTOR),
        PONG_VECTOR => ARRIVED.set(instr::rdtsc()),
        _ => return false,
    }
    apic::eoi();
    true
}

fn ipi_roundtrip() {
    const GIVE_UP: u64 = 2_000_000_000;
    if let Err(e) = apic::enable_x2apic(apic::SPURIOUS_VECTOR) {
        skip!("no usable x2APIC: {:?}", e);
    }
    if !guest_lib::smp::wait_for_aps(GIVE_UP) {
        guest_lib::error!("vCPU 1 did not come online");
    }
    guest_lib::exception::set_hook(Some(ping_pong));
    for _ in 0..SAMPLES {
        ARRIVED.set(0);
        apic::set_interrupts(true);
        let t0 = instr::rdtsc();
        apic::send_ipi(1, PING_VECTOR);
        while ARRIVED.get() == 0 && instr::rdtsc() < t0 + GIVE_UP {}
        apic::set_interrupts(false);
        match ARRIVED.get() {
            0 => guest_lib::error!("no answer to the IPI (see interrupts.ipi_delivery)"),
            at => report::sample("ipi_roundtrip", 1, at - t0),
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
    .flags(guest_lib::abi::case::FLAG_IRQCHIP)
    .reqs("PERF-IPI")
);
