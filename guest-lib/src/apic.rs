//! The local APIC in x2APIC mode (MSR interface): the TSC-deadline, one-shot and periodic
//! timer, IPIs (self-IPIs too), IRR/ISR, and the I/O APIC's redirection table ([`Ioapic`]).
//! Needs the in-kernel irqchip (`FLAG_IRQCHIP`). Whether interrupts get in is the
//! environment's business ([`set_interrupts`]).

use abi::x86::{cpuid, ioapic, msr, x2apic};

use crate::paging::{DevicePage, PteFlags, TestVa, map_device};

use crate::arch::instr;
use crate::exception::Exception;

/// Spurious-interrupt vector the library programs.
pub const SPURIOUS_VECTOR: u8 = 0x2f;

/// Why the timer cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicError {
    /// CPUID lacks x2APIC or the TSC-deadline timer.
    Unsupported,
    /// A setup MSR write faulted.
    Setup(u32, Exception),
}

/// Whether CPUID reports `feature`.
pub fn has_feature((leaf, reg, bit): cpuid::Feature) -> bool {
    instr::cpuid(leaf, 0)[reg] & (1 << bit) != 0
}

/// Enables this vCPU's x2APIC, software-enabled with spurious vector `spurious` (it needs an
/// IDT gate: below 48).
pub fn enable_x2apic(spurious: u8) -> Result<(), ApicError> {
    if !has_feature(cpuid::X2APIC) {
        return Err(ApicError::Unsupported);
    }
    instr::enable_x2apic_mode_safe().map_err(|e| ApicError::Setup(msr::APIC_BASE, e))?;
    instr::wrmsr_safe(msr::X2APIC_SVR, x2apic::SVR_ENABLE | u64::from(spurious))
        .map_err(|e| ApicError::Setup(msr::X2APIC_SVR, e))
}

/// Enables the x2APIC (see [`enable_x2apic`]) with the timer in TSC-deadline mode delivering
/// `vector` (which needs an IDT gate: below 48).
pub fn enable_tsc_deadline_timer(vector: u8, spurious: u8) -> Result<(), ApicError> {
    if !has_feature(cpuid::TSC_DEADLINE) {
        return Err(ApicError::Unsupported);
    }
    enable_x2apic(spurious)?;
    let v = u64::from(vector) | x2apic::LVT_TSC_DEADLINE;
    instr::wrmsr_safe(msr::X2APIC_LVT_TIMER, v)
        .map_err(|e| ApicError::Setup(msr::X2APIC_LVT_TIMER, e))
}

/// Sends a fixed, edge-triggered IPI with `vector` to the vCPU with x2APIC ID `dest` (KVM's
/// APIC IDs are the vCPU indexes).
pub fn send_ipi(dest: u32, vector: u8) {
    instr::write_x2apic(
        msr::X2APIC_ICR,
        (u64::from(dest) << x2apic::ICR_DEST_SHIFT) | x2apic::ICR_ASSERT | u64::from(vector),
    );
}

/// Arms the timer for TSC value `deadline` (0 disarms it).
pub fn arm(deadline: u64) -> Result<(), Exception> {
    instr::wrmsr_safe(msr::TSC_DEADLINE, deadline)
}

/// Programs the LVT timer to deliver `vector` after `count` APIC-clock ticks (divide by 1;
/// KVM's APIC clock runs at 1 GHz), once or every `count` ticks when `periodic`; `masked`
/// sets the LVT mask (the timer runs, its interrupts do not arrive).
pub fn start_lvt_timer(vector: u8, count: u32, periodic: bool, masked: bool) {
    let mut lvt = u64::from(vector);
    if periodic {
        lvt |= x2apic::LVT_PERIODIC;
    }
    if masked {
        lvt |= x2apic::LVT_MASKED;
    }
    instr::write_x2apic(msr::X2APIC_TIMER_DIV, x2apic::DIVIDE_BY_1);
    instr::write_x2apic(msr::X2APIC_LVT_TIMER, lvt);
    instr::write_x2apic(msr::X2APIC_TIMER_INIT, u64::from(count));
}

/// Stops the LVT timer (initial count 0) and masks it.
pub fn stop_lvt_timer() {
    instr::write_x2apic(msr::X2APIC_TIMER_INIT, 0);
    instr::write_x2apic(msr::X2APIC_LVT_TIMER, x2apic::LVT_MASKED);
}

/// The timer's current count.
pub fn timer_current_count() -> u64 {
    instr::read_x2apic(msr::X2APIC_TIMER_CUR)
}

/// Sends `vector` to this vCPU through the self-IPI register.
pub fn self_ipi(vector: u8) {
    instr::write_x2apic(msr::X2APIC_SELF_IPI, u64::from(vector));
}

/// Whether `vector` is set in the interrupt-request register (pending, not yet delivered).
pub fn in_irr(vector: u8) -> bool {
    let word = instr::read_x2apic(msr::X2APIC_IRR0 + u32::from(vector / 32));
    word & (1 << (vector % 32)) != 0
}

/// Whether `vector` is set in the in-service register (delivered, not yet EOIed).
pub fn in_isr(vector: u8) -> bool {
    let word = instr::read_x2apic(msr::X2APIC_ISR0 + u32::from(vector / 32));
    word & (1 << (vector % 32)) != 0
}

/// The I/O APIC, mapped at a test address.
pub struct Ioapic {
    va: TestVa,
}

impl Ioapic {
    /// Maps the I/O APIC's registers at `va` (a page of its own). Also masks this vCPU's
    /// LINT0: KVM resets the BSP's LINT0 to ExtINT (virtual wire), so every GSI below 16 would
    /// also arrive through the (uninitialised) 8259 PIC, as vector `irq & 7`.
    pub fn map(va: TestVa) -> Self {
        instr::write_x2apic(msr::X2APIC_LVT_LINT0, x2apic::LVT_MASKED);
        match DevicePage::new(ioapic::BASE) {
            Some(p) => map_device(va, &p, PteFlags::RW.union(PteFlags::US)),
            None => crate::error!("the I/O APIC base {:#x} is RAM", ioapic::BASE),
        }
        instr::invlpg(va.get());
        Self { va }
    }

    /// The I/O APIC that [`Ioapic::map`] mapped at `va` earlier.
    pub const fn at(va: TestVa) -> Self {
        Self { va }
    }

    fn reg(&self, offset: u64) -> TestVa {
        match TestVa::new(self.va.get() + offset) {
            Some(va) => va,
            None => crate::error!("I/O APIC register outside its test page"),
        }
    }

    fn select(&self, index: u32) {
        if let Err(e) = instr::write_u32_safe(self.reg(ioapic::IOREGSEL), index) {
            crate::error!("I/O APIC IOREGSEL write faulted: {:?}", e);
        }
    }

    /// Reads register `index`.
    pub fn read(&self, index: u32) -> u32 {
        self.select(index);
        match instr::read_u32_safe(self.reg(ioapic::IOWIN).get()) {
            Ok(v) => v,
            Err(e) => crate::error!("I/O APIC IOWIN read faulted: {:?}", e),
        }
    }

    /// Writes register `index`.
    pub fn write(&self, index: u32, v: u32) {
        self.select(index);
        if let Err(e) = instr::write_u32_safe(self.reg(ioapic::IOWIN), v) {
            crate::error!("I/O APIC IOWIN write faulted: {:?}", e);
        }
    }

    /// Routes `pin` to `vector` on the vCPU with APIC ID `dest` (fixed delivery, physical
    /// destination, active high), level- or edge-triggered, unmasked.
    pub fn route(&self, pin: u32, vector: u8, level: bool, dest: u32) {
        let r = ioapic::redirection(pin);
        self.write(r + 1, dest << 24);
        let mut low = u64::from(vector);
        if level {
            low |= ioapic::LEVEL;
        }
        self.write(r, low as u32);
    }

    /// Masks `pin`.
    pub fn mask(&self, pin: u32) {
        self.write(ioapic::redirection(pin), ioapic::MASKED as u32);
    }

    /// The low half of `pin`'s redirection entry.
    pub fn entry(&self, pin: u32) -> u64 {
        u64::from(self.read(ioapic::redirection(pin)))
    }
}

/// Signals end of interrupt.
pub fn eoi() {
    instr::write_x2apic(msr::X2APIC_EOI, 0);
}

/// Lets maskable interrupts in (or not), the way the environment of this run does it.
pub fn set_interrupts(on: bool) {
    crate::env::current().set_interrupts(on);
}
