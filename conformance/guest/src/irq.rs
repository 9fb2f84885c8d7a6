//! Interrupt sources and their delivery: the LAPIC timer in one-shot and periodic mode and
//! masked, self-IPIs, the environment's virtual interrupt flag (masked while clear, delivered
//! once set, the pending indication), HLT woken by an interrupt, NMIs injected by the VMM
//! (and held off while the handler runs), `KVM_INTERRUPT` with a userspace irqchip, and the
//! I/O APIC's edge and level routing of lines the VMM drives.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};

use guest_lib::abi::case::FLAG_IRQCHIP;
use guest_lib::abi::env::{ALL_ENVS, Area, Env};
use guest_lib::abi::vmm::{Op, nmi};
use guest_lib::apic::{self, Ioapic};
use guest_lib::arch::instr;
use guest_lib::case::Spec;
use guest_lib::exception::{self, Exception, Frame, vector};
use guest_lib::paging::TestVa;
use guest_lib::{case, check, check_eq, log, rt, vmm};

/// LVT timer vector.
const LVT_VECTOR: u8 = 0x28;
/// Self-IPI vector.
const SELF_VECTOR: u8 = 0x29;
/// Vector the VMM injects with `KVM_INTERRUPT`.
const INJECT_VECTOR: u8 = 0x24;
/// Vector of the I/O APIC's edge-triggered pin.
const EDGE_VECTOR: u8 = 0x25;
/// Vector of the I/O APIC's level-triggered pin.
const LEVEL_VECTOR: u8 = 0x26;
/// Edge-triggered I/O APIC pin (GSI) the VMM drives.
const EDGE_PIN: u32 = 10;
/// Level-triggered I/O APIC pin.
const LEVEL_PIN: u32 = 11;
/// Where the I/O APIC is mapped.
const IOAPIC_VA: TestVa = TestVa::must(0x6000_0000);

/// Deliveries per vector.
static COUNT: [AtomicU32; 48] = [const { AtomicU32::new(0) }; 48];
/// Whether the hook must EOI the LAPIC (vectors that come through it).
static NEEDS_EOI: AtomicU64 = AtomicU64::new(0);

fn count(v: u8) -> u32 {
    COUNT[usize::from(v)].load(SeqCst)
}

/// Counts every vector it is installed for; EOIs the ones that came through the LAPIC.
fn counting(_: &mut Frame, ex: Exception) -> bool {
    let v = ex.vector;
    if usize::from(v) >= COUNT.len() || v < 32 && v != vector::NMI && v != vector::MC {
        return false;
    }
    COUNT[usize::from(v)].fetch_add(1, SeqCst);
    if v >= 32 && NEEDS_EOI.load(SeqCst) & (1 << (v - 32)) != 0 {
        apic::eoi();
    }
    true
}

/// Resets the counters and installs [`counting`]; `lapic` vectors get an EOI.
fn start_counting(lapic: &[u8]) {
    for c in &COUNT {
        c.store(0, SeqCst);
    }
    let mask = lapic.iter().fold(0u64, |m, &v| m | 1 << (v - 32));
    NEEDS_EOI.store(mask, SeqCst);
    exception::set_hook(Some(counting));
}

/// Spins until `vector` was delivered `n` times or `ms` passed; returns whether it was.
fn wait_for(vector: u8, n: u32, ms: u64) -> bool {
    let t0 = instr::rdtsc();
    let bound = ms * rt::cycles_per_ms();
    while count(vector) < n && instr::rdtsc() - t0 < bound {
        core::hint::spin_loop();
    }
    count(vector) >= n
}

use crate::common::spin_ms;

fn need_x2apic() {
    if let Err(e) = apic::enable_x2apic(apic::SPURIOUS_VECTOR) {
        guest_lib::skip!("no usable x2APIC: {:?}", e);
    }
}

/// A one-shot LVT timer of 1 ms interrupts once, and only once.
fn lapic_oneshot() {
    need_x2apic();
    start_counting(&[LVT_VECTOR]);
    apic::set_interrupts(true);
    apic::start_lvt_timer(LVT_VECTOR, 1_000_000, false, false);
    check!(
        wait_for(LVT_VECTOR, 1, 50),
        "no timer interrupt within 50 ms"
    );
    spin_ms(5);
    apic::set_interrupts(false);
    apic::stop_lvt_timer();
    check_eq!(count(LVT_VECTOR), 1, "one-shot timer interrupts");
    exception::set_hook(None);
}
case!(
    lapic_oneshot,
    Spec::new(
        "interrupts.lapic.oneshot",
        Area::Interrupts,
        "a one-shot LVT timer interrupts exactly once"
    )
    .flags(FLAG_IRQCHIP)
    .smoke()
    .reqs("X86-APIC-TIMER-2")
);

/// A periodic LVT timer of 1 ms keeps interrupting (at least 5 times in 20 ms, however late
/// each one is) and stops when stopped.
fn lapic_periodic() {
    need_x2apic();
    start_counting(&[LVT_VECTOR]);
    apic::set_interrupts(true);
    apic::start_lvt_timer(LVT_VECTOR, 1_000_000, true, false);
    spin_ms(20);
    apic::stop_lvt_timer();
    let seen = count(LVT_VECTOR);
    spin_ms(5);
    apic::set_interrupts(false);
    log!("{} periodic interrupts in 20 ms", seen);
    check!(
        seen >= 5,
        "only {} periodic interrupts in 20 ms at a 1 ms period",
        seen
    );
    check!(
        seen <= 25,
        "{} periodic interrupts in 20 ms at a 1 ms period",
        seen
    );
    check!(
        count(LVT_VECTOR) <= seen + 1,
        "interrupts after the timer was stopped"
    );
    exception::set_hook(None);
}
case!(
    lapic_periodic,
    Spec::new(
        "interrupts.lapic.periodic",
        Area::Interrupts,
        "a periodic LVT timer interrupts repeatedly and stops when stopped"
    )
    .flags(FLAG_IRQCHIP)
    .reqs("X86-APIC-TIMER-2")
);

/// A masked LVT timer counts down but delivers nothing.
fn lapic_masked() {
    need_x2apic();
    start_counting(&[LVT_VECTOR]);
    apic::set_interrupts(true);
    apic::start_lvt_timer(LVT_VECTOR, 1_000_000, false, true);
    spin_ms(5);
    check_eq!(
        apic::timer_current_count(),
        0,
        "the masked one-shot timer's count after 5 ms"
    );
    apic::set_interrupts(false);
    apic::stop_lvt_timer();
    check_eq!(count(LVT_VECTOR), 0, "interrupts from the masked timer");
    exception::set_hook(None);
}
case!(
    lapic_masked,
    Spec::new(
        "interrupts.lapic.masked",
        Area::Interrupts,
        "a masked LVT timer expires without interrupting"
    )
    .flags(FLAG_IRQCHIP)
    .reqs("X86-APIC-TIMER-2")
);

static ISR_IN_HANDLER: AtomicU32 = AtomicU32::new(0);
static ISR_WORDS: AtomicU32 = AtomicU32::new(0);

fn self_ipi_handler(_: &mut Frame, ex: Exception) -> bool {
    if ex.vector != SELF_VECTOR {
        return false;
    }
    let mut words = 0u32;
    for w in 0..8 {
        if instr::read_x2apic(guest_lib::abi::x86::msr::X2APIC_ISR0 + w) != 0 {
            words |= 1 << w;
        }
    }
    ISR_WORDS.store(words, SeqCst);
    ISR_IN_HANDLER.store(u32::from(apic::in_isr(SELF_VECTOR)), SeqCst);
    COUNT[usize::from(SELF_VECTOR)].fetch_add(1, SeqCst);
    apic::eoi();
    true
}

/// A self-IPI is delivered once; its vector is in service while the handler runs and not after
/// the EOI.
fn self_ipi() {
    need_x2apic();
    start_counting(&[]);
    exception::set_hook(Some(self_ipi_handler));
    apic::set_interrupts(true);
    apic::self_ipi(SELF_VECTOR);
    check!(
        wait_for(SELF_VECTOR, 1, 20),
        "the self-IPI did not arrive within 20 ms"
    );
    spin_ms(2);
    apic::set_interrupts(false);
    check_eq!(count(SELF_VECTOR), 1, "self-IPI deliveries");
    log!(
        "ISR words with a bit set in the handler: {:#x}",
        ISR_WORDS.load(SeqCst)
    );
    check_eq!(
        ISR_IN_HANDLER.load(SeqCst),
        1,
        "ISR bit while the handler ran"
    );
    check!(
        !apic::in_isr(SELF_VECTOR),
        "ISR bit still set after the EOI"
    );
    exception::set_hook(None);
}
case!(
    self_ipi,
    Spec::new(
        "interrupts.lapic.self_ipi",
        Area::Interrupts,
        "a self-IPI is delivered once, in service until its EOI"
    )
    .flags(FLAG_IRQCHIP)
    .reqs("X86-APIC-IPI-1")
);

/// The environment's interrupt flag: an interrupt raised while it is clear is not delivered,
/// waits in the IRR (and in the environment's own pending indication, when it has one), and
/// is delivered exactly once when the flag is set.
fn virtual_if() {
    need_x2apic();
    let env = guest_lib::env::current();
    start_counting(&[SELF_VECTOR]);
    apic::set_interrupts(false);
    apic::self_ipi(SELF_VECTOR);
    spin_ms(2);
    // An exit, so that a host that only looks at the flag on exits has had its chance.
    let _ = vmm::host_nanos();
    check_eq!(
        count(SELF_VECTOR),
        0,
        "deliveries while the interrupt flag is clear"
    );
    check!(
        apic::in_irr(SELF_VECTOR),
        "the masked interrupt is not in the IRR"
    );
    if let Some(p) = env.interrupt_pending() {
        check!(
            p,
            "the environment's pending indication is clear with an interrupt waiting"
        );
    }
    apic::set_interrupts(true);
    check!(
        wait_for(SELF_VECTOR, 1, 20),
        "not delivered within 20 ms of setting the flag"
    );
    spin_ms(1);
    apic::set_interrupts(false);
    check_eq!(count(SELF_VECTOR), 1, "deliveries once the flag was set");
    if let Some(p) = env.interrupt_pending() {
        check!(!p, "the pending indication is still set after the delivery");
    }
    exception::set_hook(None);
}
case!(
    virtual_if,
    Spec::new(
        "interrupts.virtual_if",
        Area::Interrupts,
        "an interrupt waits while the (virtual) IF is clear and comes once it is set"
    )
    .flags(FLAG_IRQCHIP)
    .reqs("X86-IF-1,PVM-IRQ-4")
);

/// HLT with interrupts enabled blocks until the timer's interrupt, which is then delivered.
fn hlt_wakeup() {
    need_x2apic();
    start_counting(&[LVT_VECTOR]);
    let t0 = instr::rdtsc();
    apic::start_lvt_timer(LVT_VECTOR, 3_000_000, false, false);
    guest_lib::env::current().idle();
    let waited = (instr::rdtsc() - t0) / rt::cycles_per_ms().max(1);
    apic::set_interrupts(false);
    apic::stop_lvt_timer();
    log!("HLT returned after {} ms", waited);
    check_eq!(
        count(LVT_VECTOR),
        1,
        "timer interrupts (the one that ended the HLT)"
    );
    check!(
        waited >= 2,
        "HLT returned after {} ms, before the 3 ms timer",
        waited
    );
    check!(waited < 100, "HLT returned only after {} ms", waited);
    exception::set_hook(None);
}
case!(
    hlt_wakeup,
    Spec::new(
        "interrupts.hlt_wakeup",
        Area::Interrupts,
        "HLT blocks in the host until an interrupt, which is delivered"
    )
    .flags(FLAG_IRQCHIP)
    .reqs("X86-HLT-2")
);

/// An NMI the VMM injects (`KVM_NMI`) is delivered once, right away.
fn nmi_delivery() {
    start_counting(&[]);
    vmm::must(Op::Nmi, [0; 3]);
    check!(
        wait_for(vector::NMI, 1, 20),
        "no NMI within 20 ms of KVM_NMI"
    );
    spin_ms(1);
    check_eq!(count(vector::NMI), 1, "NMI deliveries");
    exception::set_hook(None);
}
case!(
    nmi_delivery,
    Spec::new(
        "interrupts.nmi",
        Area::Interrupts,
        "an NMI injected by the VMM is delivered once"
    )
    .smoke()
    .reqs("KVM-NMI-1")
);

/// A machine check the VMM injects (`KVM_X86_SET_MCE`, an uncorrected error in bank 0) with
/// CR4.MCE set is delivered once as #MC, with MCG_STATUS.MCIP set in the handler.
fn mce_delivery() {
    use guest_lib::abi::x86::msr;
    if instr::cpuid(1, 0)[3] & (1 << 7) == 0 {
        guest_lib::skip!("CPUID offers no machine-check exception (CPUID.1:EDX.MCE)");
    }
    if let Err(e) = instr::set_cr4_mce_safe(true) {
        guest_lib::skip!("CR4.MCE cannot be set: {:?}", e);
    }
    start_counting(&[]);
    vmm::must(Op::Mce, [0; 3]);
    let delivered = wait_for(vector::MC, 1, 20);
    spin_ms(1);
    exception::set_hook(None);
    let status = instr::rdmsr_safe(msr::MCG_STATUS);
    // Leave no machine check in progress (a second one would shut the vCPU down).
    let _ = instr::wrmsr_safe(msr::MCG_STATUS, 0);
    let _ = instr::set_cr4_mce_safe(false);
    check!(delivered, "no #MC within 20 ms of KVM_X86_SET_MCE");
    check_eq!(count(vector::MC), 1, "#MC deliveries");
    check_eq!(
        status.map(|s| s & 0b100),
        Ok(0b100),
        "MCG_STATUS.MCIP after the #MC (the VMM's MCG_STATUS)"
    );
}
case!(
    mce_delivery,
    Spec::new(
        "interrupts.mce",
        Area::Interrupts,
        "a machine check injected by the VMM is delivered once as #MC"
    )
    .reqs("KVM-MCE-1")
);

static NMI_EVENTS: AtomicU64 = AtomicU64::new(0);
static NESTED: AtomicU32 = AtomicU32::new(0);

fn nmi_nesting(_: &mut Frame, ex: Exception) -> bool {
    if ex.vector != vector::NMI {
        return false;
    }
    let n = COUNT[usize::from(vector::NMI)].fetch_add(1, SeqCst) + 1;
    if n == 1 {
        // A second NMI while this one is handled must wait for the IRET.
        vmm::must(Op::Nmi, [0; 3]);
        spin_ms(2);
        NESTED.store(count(vector::NMI) - 1, SeqCst);
        NMI_EVENTS.store(vmm::must(Op::VcpuEvents, [0; 3])[0], SeqCst);
    }
    true
}

/// An NMI injected while the NMI handler runs is held off until the handler returns, then
/// delivered. With parameter 1 the v2 ABI's rule instead: the 6.12 host has no NMI mask once
/// a PVCS is registered and holds an NMI off only while the last supervisor event is not
/// consumed (`abi.v2.nmi_while_unconsumed`), which guest-lib's entry does at once, so the
/// second NMI comes inside the handler and KVM reports NMIs neither masked nor pending there.
fn nmi_blocked_in_handler() {
    start_counting(&[]);
    NESTED.store(0, SeqCst);
    NMI_EVENTS.store(0, SeqCst);
    exception::set_hook(Some(nmi_nesting));
    vmm::must(Op::Nmi, [0; 3]);
    check!(
        wait_for(vector::NMI, 2, 50),
        "the second NMI did not come after the first returned"
    );
    spin_ms(1);
    exception::set_hook(None);
    let events = NMI_EVENTS.load(SeqCst);
    log!("vCPU NMI state inside the handler: {:#x}", events);
    if rt::case_param() == 1 {
        check_eq!(
            NESTED.load(SeqCst),
            1,
            "NMIs delivered inside the NMI handler"
        );
        check_eq!(count(vector::NMI), 2, "NMI deliveries in all");
        check_eq!(
            events & (nmi::MASKED | nmi::PENDING),
            0,
            "KVM's NMI state inside the handler (neither masked nor pending)"
        );
        return;
    }
    check_eq!(
        NESTED.load(SeqCst),
        0,
        "NMIs delivered inside the NMI handler"
    );
    check_eq!(count(vector::NMI), 2, "NMI deliveries in all");
    check!(
        events & nmi::MASKED != 0,
        "KVM does not report NMIs masked inside the handler"
    );
    check!(
        events & nmi::PENDING != 0,
        "KVM does not report the second NMI pending inside the handler"
    );
}
case!(
    nmi_blocked_in_handler,
    Spec::new(
        "interrupts.nmi_blocked_in_handler",
        Area::Interrupts,
        "an NMI is held off while the NMI handler runs, delivered after it returns"
    )
    .reqs("KVM-NMI-1,X86-NMI-1")
    .envs(ALL_ENVS & !Env::PvV2.bit())
);
case!(
    nmi_blocked_in_handler,
    Spec::new(
        "abi.v2.nmi_in_handler",
        Area::Abi,
        "v2 has no NMI mask: a second NMI comes inside the handler once the first is consumed"
    )
    .envs(Env::PvV2.bit())
    .param(1)
    .reqs("UP-NMI-2")
);

/// `KVM_INTERRUPT` (userspace irqchip) while the interrupt flag is set: delivered once.
fn kvm_interrupt() {
    start_counting(&[]);
    apic::set_interrupts(true);
    vmm::must(Op::Interrupt, [u64::from(INJECT_VECTOR), 0, 0]);
    check!(
        wait_for(INJECT_VECTOR, 1, 20),
        "the injected interrupt did not arrive within 20 ms"
    );
    spin_ms(1);
    apic::set_interrupts(false);
    check_eq!(count(INJECT_VECTOR), 1, "deliveries");
    exception::set_hook(None);
}
case!(
    kvm_interrupt,
    Spec::new(
        "interrupts.kvm_interrupt",
        Area::Interrupts,
        "an interrupt the VMM injects with KVM_INTERRUPT is delivered once"
    )
    .reqs("KVM-IRQ-1")
);

/// `KVM_INTERRUPT` while the interrupt flag is clear: the VMM waits for the window
/// (`ready_for_interrupt_injection`, `request_interrupt_window`), so nothing arrives until the
/// flag is set, then the interrupt does, once.
fn kvm_interrupt_window() {
    start_counting(&[]);
    apic::set_interrupts(false);
    vmm::must(Op::Interrupt, [u64::from(INJECT_VECTOR), 0, 0]);
    spin_ms(2);
    let _ = vmm::host_nanos();
    check_eq!(
        count(INJECT_VECTOR),
        0,
        "deliveries while the interrupt flag is clear"
    );
    apic::set_interrupts(true);
    // An exit with the flag set, for a host that only looks at the flag on exits.
    let _ = vmm::host_nanos();
    check!(
        wait_for(INJECT_VECTOR, 1, 20),
        "not delivered within 20 ms of setting the flag"
    );
    spin_ms(1);
    apic::set_interrupts(false);
    check_eq!(count(INJECT_VECTOR), 1, "deliveries once the flag was set");
    exception::set_hook(None);
}
case!(
    kvm_interrupt_window,
    Spec::new(
        "interrupts.kvm_interrupt_window",
        Area::Interrupts,
        "KVM_INTERRUPT waits for the interrupt window while IF is clear"
    )
    .reqs("KVM-IRQ-1,X86-IF-1")
);

fn irq_line(pin: u32, level: bool) {
    vmm::must(Op::IrqLine, [u64::from(pin), u64::from(level), 0]);
}

/// An edge-triggered I/O APIC pin: each rising edge the VMM makes is one interrupt; holding
/// the line high is not another.
fn ioapic_edge() {
    need_x2apic();
    let io = Ioapic::map(IOAPIC_VA);
    io.route(EDGE_PIN, EDGE_VECTOR, false, 0);
    start_counting(&[EDGE_VECTOR]);
    apic::set_interrupts(true);
    irq_line(EDGE_PIN, true);
    check!(
        wait_for(EDGE_VECTOR, 1, 20),
        "no interrupt within 20 ms of the first edge"
    );
    spin_ms(2);
    check_eq!(
        count(EDGE_VECTOR),
        1,
        "interrupts while the line stays high"
    );
    irq_line(EDGE_PIN, false);
    irq_line(EDGE_PIN, true);
    check!(
        wait_for(EDGE_VECTOR, 2, 20),
        "no interrupt within 20 ms of the second edge"
    );
    irq_line(EDGE_PIN, false);
    spin_ms(1);
    apic::set_interrupts(false);
    io.mask(EDGE_PIN);
    check_eq!(count(EDGE_VECTOR), 2, "interrupts for two edges");
    exception::set_hook(None);
}
case!(
    ioapic_edge,
    Spec::new(
        "interrupts.ioapic.edge",
        Area::Interrupts,
        "an edge-triggered I/O APIC pin interrupts once per rising edge"
    )
    .flags(FLAG_IRQCHIP)
    .reqs("X86-IOAPIC-1,KVM-IRQ-2")
);

fn level_handler(_: &mut Frame, ex: Exception) -> bool {
    if ex.vector != LEVEL_VECTOR {
        return false;
    }
    let n = COUNT[usize::from(LEVEL_VECTOR)].fetch_add(1, SeqCst) + 1;
    if n >= 3 {
        irq_line(LEVEL_PIN, false);
    }
    // Evidence for the report: the pin's entry (remote IRR) and the vector's IRR/ISR bits as
    // the handler finds them.
    let io = Ioapic::at(IOAPIC_VA);
    log!(
        "delivery {}: entry {:#x}, IRR {}, ISR {}",
        n,
        io.entry(LEVEL_PIN),
        apic::in_irr(LEVEL_VECTOR),
        apic::in_isr(LEVEL_VECTOR)
    );
    apic::eoi();
    true
}

/// A level-triggered I/O APIC pin: while the VMM holds the line high every EOI brings the
/// interrupt back; once the handler has the VMM lower it (on the third delivery), no more.
fn ioapic_level() {
    need_x2apic();
    let io = Ioapic::map(IOAPIC_VA);
    io.route(LEVEL_PIN, LEVEL_VECTOR, true, 0);
    start_counting(&[]);
    exception::set_hook(Some(level_handler));
    apic::set_interrupts(true);
    irq_line(LEVEL_PIN, true);
    check!(
        wait_for(LEVEL_VECTOR, 3, 50),
        "fewer than 3 deliveries of the held level interrupt"
    );
    spin_ms(2);
    apic::set_interrupts(false);
    check_eq!(
        count(LEVEL_VECTOR),
        3,
        "deliveries (the line went low in the third)"
    );
    check_eq!(
        io.entry(LEVEL_PIN) & guest_lib::abi::x86::ioapic::REMOTE_IRR,
        0,
        "remote IRR after the last EOI"
    );
    io.mask(LEVEL_PIN);
    exception::set_hook(None);
}
case!(
    ioapic_level,
    Spec::new(
        "interrupts.ioapic.level",
        Area::Interrupts,
        "a level-triggered I/O APIC pin re-interrupts after each EOI while held high"
    )
    .flags(FLAG_IRQCHIP)
    .reqs("X86-IOAPIC-1,KVM-IRQ-2")
);

/// A masked I/O APIC pin delivers nothing while masked; unmasking it with the level line high
/// delivers the interrupt.
fn ioapic_masked() {
    need_x2apic();
    let io = Ioapic::map(IOAPIC_VA);
    io.mask(LEVEL_PIN);
    start_counting(&[]);
    exception::set_hook(Some(level_handler));
    apic::set_interrupts(true);
    // The handler lowers the line on its third delivery; start there so one delivery ends it.
    COUNT[usize::from(LEVEL_VECTOR)].store(2, SeqCst);
    irq_line(LEVEL_PIN, true);
    spin_ms(3);
    check_eq!(count(LEVEL_VECTOR), 2, "deliveries while the pin is masked");
    io.route(LEVEL_PIN, LEVEL_VECTOR, true, 0);
    check!(
        wait_for(LEVEL_VECTOR, 3, 20),
        "no delivery within 20 ms of unmasking"
    );
    spin_ms(1);
    apic::set_interrupts(false);
    check_eq!(count(LEVEL_VECTOR), 3, "deliveries after unmasking");
    io.mask(LEVEL_PIN);
    exception::set_hook(None);
}
case!(
    ioapic_masked,
    Spec::new(
        "interrupts.ioapic.masked",
        Area::Interrupts,
        "a masked I/O APIC pin holds its level interrupt until unmasked"
    )
    .flags(FLAG_IRQCHIP)
    .reqs("X86-IOAPIC-1,KVM-IRQ-2")
);

/// What `kvm_run.if_flag` says at an exit (no in-kernel irqchip, where the KVM API defines it)
/// is the guest's interrupt flag as the environment sets it; `ready_for_interrupt_injection`
/// follows it.
fn kvm_run_if_flag() {
    for on in [true, false, true] {
        apic::set_interrupts(on);
        let r = vmm::must(Op::RunFlags, [0; 3]);
        check_eq!(
            r[0],
            u64::from(on),
            "kvm_run.if_flag with the interrupt flag {}",
            if on { "set" } else { "clear" }
        );
        check_eq!(
            r[1],
            u64::from(on),
            "ready_for_interrupt_injection with the flag {}",
            if on { "set" } else { "clear" }
        );
    }
    apic::set_interrupts(false);
}
case!(
    kvm_run_if_flag,
    Spec::new(
        "interrupts.kvm_run_if_flag",
        Area::Interrupts,
        "kvm_run.if_flag and ready_for_interrupt_injection show the guest's (virtual) IF"
    )
    .reqs("KVM-IRQ-1")
);
