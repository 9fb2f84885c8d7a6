//! Guest environments: one module per environment behind one interface, [`Environment`]
//! (XTF's per-environment `arch_init_traps`, chosen at run time because one image serves every
//! environment). [`crate::rt`] picks the module once, from the boot info, with [`select`];
//! everything else asks [`current`] and never looks at the environment itself.
//!
//! An environment module owns: CPU and table setup (and installing its entry stubs, in
//! `crate::arch::stubs`, which deliver events into the common dispatcher and return to the
//! interrupted context), the hypercall, interrupt-flag control, idling, and its paravirtual
//! services. What it cannot do, its methods say with [`EnvError::Unsupported`].
//!
//! Which environments exist is declared once, in `abi::env::Env::guest_support`; a unit test
//! checks that [`select`] has a module for exactly those.
//!
//! Adding an environment: this directory gets `<name>.rs` implementing [`Environment`] and
//! one line in [`select`]; `crate::arch::stubs` gets `<name>.rs` with its entry stubs;
//! `abi::env` marks it implemented. Nothing else changes (see ARCHITECTURE.md).

pub mod hvm64;
pub mod pv_local;
pub mod pv_rfc;
pub mod pv_v2;

use abi::env::Env;
use abi::layout::BootInfo;

use crate::arch::BootCell;
use crate::exception::Exception;

/// Why an environment could not do what was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvError {
    /// The environment has no such service (the reason names what is missing).
    Unsupported(&'static str),
    /// The instruction that requests it raised this exception.
    Fault(Exception),
    /// The host answered with this error value.
    Failed(i64),
}

/// One guest environment (see the module documentation).
pub trait Environment: Sync {
    /// Which environment this is.
    fn env(&self) -> Env;

    /// Sets up vCPU 0, first thing after the boot info was checked: execution mode,
    /// descriptor tables, the environment's entry stubs and return-to-user paths.
    fn init_bsp(&self, info: &BootInfo);

    /// Sets up vCPU `cpu` (1..), once vCPU 0 has published its tables.
    fn init_ap(&self, cpu: u32);

    /// Lets maskable interrupts in, or not.
    fn set_interrupts(&self, on: bool);

    /// Enables interrupts and waits for one (the idle loop of vCPUs other than 0).
    fn idle(&self);

    /// Hypercall `nr` with three arguments; returns the host's result register.
    fn hypercall(&self, nr: u64, args: [u64; 3]) -> Result<u64, EnvError>;

    /// The cheapest hypercall round trip the host answers in the kernel (benchmarks).
    fn null_hypercall(&self) -> Result<u64, EnvError>;

    /// The paravirtual CPUID: EAX..EDX.
    fn pv_cpuid(&self, leaf: u32, sub: u32) -> Result<[u32; 4], EnvError>;

    /// Flushes this vCPU's whole TLB with a hypercall.
    fn flush_tlb(&self) -> Result<(), EnvError>;

    /// Flushes the TLB entries of one page with a hypercall.
    fn flush_tlb_one(&self, va: u64) -> Result<(), EnvError>;

    /// Whether the guest may use supervisor-only (U/S=0) paging entries.
    fn supervisor_only_pages(&self) -> Result<(), EnvError> {
        Ok(())
    }

    /// The environment's own interrupt flag, where it keeps one apart from RFLAGS.IF (a
    /// paravirtual kernel runs with the hardware IF set): `None` when RFLAGS.IF is the flag.
    fn virtual_interrupt_flag(&self) -> Option<bool> {
        None
    }

    /// The environment's own indication that an interrupt waits for the interrupt flag
    /// (`None`: it has none; the LAPIC's IRR is the architectural one).
    fn interrupt_pending(&self) -> Option<bool> {
        None
    }

    /// The MSRs that hold this environment's paravirtual state, which a VMM must carry when
    /// it saves and restores the vCPU (none for an architectural guest).
    fn pv_state_msrs(&self) -> &'static [u32] {
        &[]
    }

    /// The upper-half PML4 slots `(first, end)` the host lets this guest map, where the host
    /// restricts them (the upstream generations' linear-address range MSR); `None`: any slot.
    fn linear_pml4_range(&self) -> Option<(u64, u64)> {
        None
    }

    /// What to add to an image address to get the address user code runs it at (non-zero
    /// where the loader maps the image supervisor-only and aliases it for user mode).
    fn user_code_offset(&self) -> u64 {
        0
    }

    /// Whether the environment can run code in user mode (`crate::user`).
    fn user_mode(&self) -> Result<(), EnvError> {
        Ok(())
    }

    /// How the guest kernel is executing, as far as the guest can tell (an environment with
    /// several execution modes says which one is in force).
    fn mode(&self) -> Mode {
        Mode::Architectural
    }

    /// Where the host stores the guest's GDTR and TR without loading them (the upstream ABI),
    /// the proof that LGDT and LTR of the guest's own tables are harmless; `None` where they
    /// are the hardware's.
    fn stored_descriptor_tables(&self) -> Option<crate::arch::StoredDescriptorTables> {
        None
    }
}

/// How the guest kernel executes ([`Environment::mode`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// An ordinary x86 kernel: no paravirtual mode to speak of.
    Architectural,
    /// Paravirtual, CPL0 code running natively (a tight loop runs at hardware speed).
    PvNative,
    /// Paravirtual registration in place, but CPL0 code is emulated (slow).
    PvEmulated,
}

/// The environment module for `env`, or `None` if the guest library has none.
pub fn select(env: Env) -> Option<&'static dyn Environment> {
    match env {
        Env::Hvm64 => Some(&hvm64::Hvm64),
        Env::PvLocal => Some(&pv_local::PvLocal),
        Env::PvV2 => Some(&pv_v2::PvV2),
        Env::PvV1 => Some(&pv_rfc::PV_V1),
        Env::PvMid => Some(&pv_rfc::PV_MID),
    }
}

static CURRENT: BootCell<Option<&'static dyn Environment>> = BootCell::new(None);

/// Makes `e` the environment of this run (vCPU 0, before anything else).
pub(crate) fn install(e: &'static dyn Environment) {
    CURRENT.init(|c| *c = Some(e));
}

/// The environment of this run.
pub fn current() -> &'static dyn Environment {
    match CURRENT.get() {
        Some(e) => e,
        None => crate::error!("the environment was used before the runtime selected it"),
    }
}

#[cfg(test)]
mod tests {
    use abi::env::{Env, GuestSupport};

    #[test]
    fn a_module_for_exactly_the_declared_environments() {
        for e in Env::ALL {
            let module = super::select(e);
            assert_eq!(
                module.is_some(),
                e.guest_support() == GuestSupport::Implemented,
                "{}",
                e.name()
            );
            if let Some(m) = module {
                assert_eq!(m.env(), e);
            }
        }
    }
}
