//! pv-v1 and pv-mid: the RFC-era upstream ABI (the 6.7 `pvm` branch and the "mid" headers;
//! shared/notes/pvm-abi-upstream.md §2-§5 and §11). The two generations agree on everything
//! the guest does except the numbers of MSR_PVM_SWITCH_CR3 and MSR_PVM_SUPERVISOR_RSP, the
//! red-zone MSR (v1 only) and `event_flags.EF` (mid: the guest enables events with it), so
//! one module serves both: [`PV_V1`] and [`PV_MID`] are its two environments.
//!
//! Setup registers the PVCS, the event entry block, the ERETU/ERETS `syscall`s, LSTAR and
//! SWITCH_CR3 (the kernel's own page table: user and kernel share it); the stubs are in
//! `arch::stubs::pv_rfc`. The interrupt flag, IRQ window, halt, hypercalls and the synthetic
//! CPUID work as in v2 (the PVCS's `event_flags` is at the same offset).

use abi::env::Env;
use abi::layout::BootInfo;
use abi::upstream::{self as up, event_flags, hc};

use super::pv_v2::checked;
use super::{EnvError, Environment};
use crate::arch::cpu_index;
use crate::arch::stubs::{pv_rfc as raw, pv_v2};

/// One RFC-era generation.
pub struct PvRfc {
    env: Env,
    switch_cr3: u32,
    supervisor_rsp: u32,
    /// The red-zone MSR and the value set (v1).
    redzone: Option<(u32, u64)>,
    /// `event_flags` bits set at registration (mid: EF).
    flags: u64,
}

/// The red zone v1 is told to keep below an interrupted supervisor RSP (Linux's 128 bytes; the
/// guest itself needs none).
pub const V1_REDZONE: u64 = 128;

/// RFC v1.
pub static PV_V1: PvRfc = PvRfc {
    env: Env::PvV1,
    switch_cr3: up::v1::MSR_SWITCH_CR3,
    supervisor_rsp: up::v1::MSR_SUPERVISOR_RSP,
    redzone: Some((up::v1::MSR_SUPERVISOR_REDZONE, V1_REDZONE)),
    flags: 0,
};

/// "mid".
pub static PV_MID: PvRfc = PvRfc {
    env: Env::PvMid,
    switch_cr3: up::mid::MSR_SWITCH_CR3,
    supervisor_rsp: up::mid::MSR_SUPERVISOR_RSP,
    redzone: None,
    flags: event_flags::EF,
};

fn pvcs_gpa(cpu: u32) -> u64 {
    abi::layout::vif_gpa(cpu)
}

/// The PVCS's `event_flags` of this vCPU.
pub fn read_event_flags() -> u64 {
    read_flags()
}

fn read_flags() -> u64 {
    // `event_flags` is at offset 0 in every generation's PVCS.
    pv_v2::read_event_flags(pvcs_gpa(cpu_index()))
}

fn write_flags(v: u64) {
    pv_v2::write_event_flags(pvcs_gpa(cpu_index()), v);
}

impl PvRfc {
    fn register(&self, cpu: u32) {
        raw::register(pvcs_gpa(cpu), self.flags, self.switch_cr3, self.redzone);
    }
}

impl Environment for PvRfc {
    fn env(&self) -> Env {
        self.env
    }

    fn init_bsp(&self, _: &BootInfo) {
        self.register(0);
        crate::arch::stubs::install_user_returns(raw::user_returns());
    }

    fn init_ap(&self, cpu: u32) {
        self.register(cpu);
    }

    fn set_interrupts(&self, on: bool) {
        let f = read_flags();
        if on {
            write_flags(f | event_flags::IF);
            if read_flags() & event_flags::IP != 0 {
                let _ = checked(hc::IRQ_WIN, [0; 3]);
            }
        } else {
            write_flags(f & !event_flags::IF);
        }
    }

    fn virtual_interrupt_flag(&self) -> Option<bool> {
        Some(read_flags() & event_flags::IF != 0)
    }

    fn interrupt_pending(&self) -> Option<bool> {
        Some(read_flags() & event_flags::IP != 0)
    }

    fn idle(&self) {
        let _ = checked(hc::IRQ_HALT, [0; 3]);
    }

    fn hypercall(&self, nr: u64, args: [u64; 3]) -> Result<u64, EnvError> {
        checked(nr, args)
    }

    fn null_hypercall(&self) -> Result<u64, EnvError> {
        super::pv_v2::null_hypercall()
    }

    fn pv_cpuid(&self, leaf: u32, sub: u32) -> Result<[u32; 4], EnvError> {
        pv_v2::synthetic_cpuid_safe(leaf, sub).map_err(EnvError::Fault)
    }

    fn flush_tlb(&self) -> Result<(), EnvError> {
        checked(hc::TLB_FLUSH, [0; 3]).map(drop)
    }

    fn flush_tlb_one(&self, va: u64) -> Result<(), EnvError> {
        checked(hc::TLB_INVLPG, [va, 0, 0]).map(drop)
    }

    fn stored_descriptor_tables(&self) -> Option<crate::arch::StoredDescriptorTables> {
        // The hardware runs on the host's GDT and TR; `pvm_set_gdt` and `pvm_set_segment`
        // store the guest's (docs/research/pvm-cr0-wp-ltr.md §2).
        Some(crate::arch::StoredDescriptorTables::new())
    }

    fn linear_pml4_range(&self) -> Option<(u64, u64)> {
        super::pv_v2::linear_pml4_range()
    }

    fn pv_state_msrs(&self) -> &'static [u32] {
        match self.env {
            Env::PvV1 => &[
                up::MSR_LINEAR_ADDRESS_RANGE,
                up::MSR_VCPU_STRUCT,
                up::v1::MSR_SUPERVISOR_RSP,
                up::v1::MSR_SUPERVISOR_REDZONE,
                up::MSR_EVENT_ENTRY,
                up::MSR_RETU_RIP,
                up::MSR_RETS_RIP,
                up::v1::MSR_SWITCH_CR3,
            ],
            _ => &[
                up::MSR_LINEAR_ADDRESS_RANGE,
                up::MSR_VCPU_STRUCT,
                up::mid::MSR_SWITCH_CR3,
                up::mid::MSR_SUPERVISOR_RSP,
                up::MSR_EVENT_ENTRY,
                up::MSR_RETU_RIP,
                up::MSR_RETS_RIP,
            ],
        }
    }

    fn mode(&self) -> super::Mode {
        super::Mode::PvNative
    }
}

const _: () = assert!(PV_V1.supervisor_rsp != PV_MID.supervisor_rsp);
