//! pv-v2: the upstream v2 ABI of the 6.12 line (constants in `abi::upstream`, host rules in
//! docs/research/pvm-v2-host-semantics.md).
//!
//! Setup registers the vCPU's PVCS (`MSR_PVM_VCPU_STRUCT`) and the event entry block
//! (`MSR_PVM_EVENT_ENTRY`, stubs in `arch::stubs::pv_v2`); there is no IDT, GDT or TSS to
//! load (the host ignores them). The supervisor's interrupt flag is bit 9 of the PVCS's
//! `event_flags`, set and cleared with plain memory writes; when the host marked an interrupt
//! pending (bit 8) the guest asks for it with IRQ_WIN. Hypercalls are `syscall` in supervisor
//! mode.
//!
//! User mode runs from the image's user alias (the host forces SMEP; see
//! `arch::stubs::pv_v2`).

use abi::env::Env;
use abi::layout::BootInfo;
use abi::upstream::{self as up, KVM_ENOSYS, event_flags, hc};

use super::{EnvError, Environment};
use crate::arch::cpu_index;
use crate::arch::stubs::pv_v2 as raw;
use crate::exception::Exception;

/// The pv-v2 environment.
pub struct PvV2;

/// Guest-physical (and virtual: identity mapped) address of vCPU `cpu`'s PVCS.
pub const fn pvcs_gpa(cpu: u32) -> u64 {
    abi::layout::vif_gpa(cpu)
}

/// Issues hypercall `nr`; returns RAX as the host left it, or the exception.
pub fn hypercall(nr: u64, a0: u64, a1: u64, a2: u64) -> Result<i64, Exception> {
    raw::hypercall_safe(nr, a0, a1, a2).map(|v| v as i64)
}

/// `PVM_HC_LOAD_TLS`: the three descriptors go into the host GDT's TLS entries
/// ([`abi::upstream::HOST_TLS_SELECTORS`]) while this vCPU runs, made present user data
/// segments or zeroed; returns RAX as the host left it (the 6.12 and RFC hosts do not write
/// it). Every upstream generation has it.
pub fn load_tls(descriptors: [u64; 3]) -> Result<i64, Exception> {
    hypercall(hc::LOAD_TLS, descriptors[0], descriptors[1], descriptors[2])
}

/// `PVM_HC_LOAD_GS`: loads the user GS selector `sel` (one whose RPL is not 3 becomes null);
/// returns the GS base it gives, which a guest kernel puts in the PVCS's `user_gsbase`. Every
/// upstream generation has it.
pub fn load_gs(sel: u16) -> Result<u64, Exception> {
    hypercall(hc::LOAD_GS, u64::from(sel), 0, 0).map(|v| v as u64)
}

/// The synthetic CPUID.
pub fn pv_cpuid(leaf: u32, sub: u32) -> Result<[u32; 4], Exception> {
    raw::synthetic_cpuid_safe(leaf, sub)
}

/// The PVCS's `event_flags` of this vCPU.
pub fn read_event_flags() -> u64 {
    raw::read_event_flags(pvcs_gpa(cpu_index()))
}

/// Sets the GS base user mode gets on the next ERETU (`PVCS.user_gsbase`).
pub fn set_user_gsbase(v: u64) {
    raw::write_user_gsbase(pvcs_gpa(cpu_index()), v);
}

/// The PVCS's `event_vector` of this vCPU (the vector in the low byte, the STD/NMI/MCE bits in
/// the high byte).
pub fn read_event_vector() -> u16 {
    raw::read_event_vector(pvcs_gpa(cpu_index()))
}

/// Sets the PVCS's `event_vector` of this vCPU. While its high byte is not zero the host
/// treats the last event as not consumed: an NMI only sets its bit, and any other supervisor
/// event shuts the vCPU down (docs/research/pvm-nmi-mce-eretu-star.md §1).
pub fn write_event_vector(v: u16) {
    raw::write_event_vector(pvcs_gpa(cpu_index()), v);
}

fn write_event_flags(v: u64) {
    raw::write_event_flags(pvcs_gpa(cpu_index()), v);
}

/// Hypercall `nr` with its error returns as [`EnvError::Failed`] (every upstream generation
/// issues them the same way).
pub(super) fn checked(nr: u64, args: [u64; 3]) -> Result<u64, EnvError> {
    match hypercall(nr, args[0], args[1], args[2]) {
        Ok(v) if v < 0 => Err(EnvError::Failed(v)),
        Ok(v) => Ok(v as u64),
        Err(e) => Err(EnvError::Fault(e)),
    }
}

/// The no-op hypercall of every upstream generation (`hc::END`, which a host may answer
/// `-ENOSYS`: it still went to the host and back).
pub(super) fn null_hypercall() -> Result<u64, EnvError> {
    match checked(hc::END, [0; 3]) {
        Err(EnvError::Failed(KVM_ENOSYS)) => Ok(0),
        other => other,
    }
}

/// The upper-half PML4 slots the linear-address range MSR allows (every upstream generation).
pub(super) fn linear_pml4_range() -> Option<(u64, u64)> {
    crate::arch::instr::rdmsr_safe(up::MSR_LINEAR_ADDRESS_RANGE)
        .ok()
        .map(up::range_of)
}

fn register(cpu: u32) {
    raw::register(pvcs_gpa(cpu));
}

impl Environment for PvV2 {
    fn env(&self) -> Env {
        Env::PvV2
    }

    fn init_bsp(&self, _: &BootInfo) {
        register(0);
        crate::arch::stubs::install_user_returns(raw::user_returns());
    }

    fn init_ap(&self, cpu: u32) {
        register(cpu);
    }

    fn set_interrupts(&self, on: bool) {
        let f = read_event_flags();
        if on {
            write_event_flags(f | event_flags::IF);
            if read_event_flags() & event_flags::IP != 0 {
                let _ = hypercall(hc::IRQ_WIN, 0, 0, 0);
            }
        } else {
            write_event_flags(f & !event_flags::IF);
        }
    }

    fn virtual_interrupt_flag(&self) -> Option<bool> {
        Some(read_event_flags() & event_flags::IF != 0)
    }

    fn interrupt_pending(&self) -> Option<bool> {
        Some(read_event_flags() & event_flags::IP != 0)
    }

    fn idle(&self) {
        // IRQ_HALT is `sti; hlt` (notes §4.2).
        let _ = hypercall(hc::IRQ_HALT, 0, 0, 0);
    }

    fn hypercall(&self, nr: u64, args: [u64; 3]) -> Result<u64, EnvError> {
        checked(nr, args)
    }

    fn null_hypercall(&self) -> Result<u64, EnvError> {
        null_hypercall()
    }

    fn pv_cpuid(&self, leaf: u32, sub: u32) -> Result<[u32; 4], EnvError> {
        pv_cpuid(leaf, sub).map_err(EnvError::Fault)
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
        linear_pml4_range()
    }

    fn pv_state_msrs(&self) -> &'static [u32] {
        &[
            up::MSR_LINEAR_ADDRESS_RANGE,
            up::MSR_VCPU_STRUCT,
            up::MSR_EVENT_ENTRY,
            up::MSR_RETU_RIP,
        ]
    }

    fn mode(&self) -> super::Mode {
        super::Mode::PvNative
    }

    fn user_mode(&self) -> Result<(), EnvError> {
        Ok(())
    }

    fn user_code_offset(&self) -> u64 {
        abi::layout::USER_ALIAS_OFFSET
    }
}
