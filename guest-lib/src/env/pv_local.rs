//! pv-local: the local host's PVM dialect (constants in `abi::local`, observations in
//! docs/local-dialect.md).
//!
//! Setup registers the vCPU's VIF page first, which switches guest CPL0 code from the
//! emulated path to native execution in hardware ring 3 (so the rest of the setup runs at
//! native speed). Events arrive through the guest's own IDT, as in hvm64, but the dialect only
//! enters CPL3 through its IRET_FRAME hypercall (`arch::stubs::pv_local`). The
//! interrupt flag is byte 0 of the VIF page (`cli`/`sti` do not gate delivery). Hypercalls are
//! `int $0x1b` with RAX = number, RBX, RCX, RDX = arguments.
//!
//! Besides the [`Environment`] methods, cases of the dialect's own ABI rules use the free
//! functions here: [`hypercall`] (raw result), [`signature`], [`pv_cpuid`].

use abi::env::Env;
use abi::layout::BootInfo;
use abi::local::{ENOSYS, MSR_SIGNATURE, hc};

use super::{EnvError, Environment};
use crate::arch::stubs::{self, pv_local as raw};
use crate::arch::{cpu_index, instr, tables};
use crate::exception::Exception;

/// The pv-local environment.
pub struct PvLocal;

/// How many timed loops [`Environment::mode`] runs before it calls CPL0 emulated.
const MODE_TRIES: u32 = 3;

/// Issues hypercall `nr`; returns RAX as the host left it, or the exception if the instruction
/// faulted.
pub fn hypercall(nr: u64, a0: u64, a1: u64, a2: u64) -> Result<i64, Exception> {
    raw::hypercall_safe(nr, a0, a1, a2).map(|v| v as i64)
}

/// Issues hypercall `nr` with every other general register holding a known value; returns
/// RAX and the mask of registers the host changed (bit 0 RBX, 1 RCX, 2 RDX, 3 RSI, 4 RDI,
/// 5.. R8..R15).
pub fn hypercall_preserving(nr: u64, a0: u64, a1: u64, a2: u64) -> Result<(i64, u32), Exception> {
    raw::hypercall_preserving(nr, a0, a1, a2).map(|(v, m)| (v as i64, m))
}

/// Reads the signature MSR.
pub fn signature() -> Result<u64, Exception> {
    instr::rdmsr_safe(MSR_SIGNATURE)
}

/// Paravirtual CPUID (`int $0x1a`).
pub fn pv_cpuid(leaf: u32, sub: u32) -> Result<[u32; 4], Exception> {
    raw::pv_cpuid_safe(leaf, sub)
}

fn checked(nr: u64, args: [u64; 3]) -> Result<u64, EnvError> {
    match hypercall(nr, args[0], args[1], args[2]) {
        Ok(v) if v < 0 => Err(EnvError::Failed(v)),
        Ok(v) => Ok(v as u64),
        Err(e) => Err(EnvError::Fault(e)),
    }
}

impl Environment for PvLocal {
    fn env(&self) -> Env {
        Env::PvLocal
    }

    fn init_bsp(&self, _: &BootInfo) {
        raw::register_vif(0);
        tables::init();
        stubs::install_user_returns(raw::user_returns());
    }

    fn init_ap(&self, cpu: u32) {
        raw::register_vif(cpu);
        tables::load_ap();
    }

    fn set_interrupts(&self, on: bool) {
        // The host notices a change at the next exit: when it has marked an interrupt pending,
        // make one (the cheapest hypercall) so that the interrupt comes in now.
        let cpu = cpu_index();
        raw::set_virtual_if(cpu, on);
        if on && raw::interrupt_pending(cpu) {
            let _ = hypercall(hc::UNDEFINED, 0, 0, 0);
        }
    }

    fn virtual_interrupt_flag(&self) -> Option<bool> {
        Some(raw::virtual_if(cpu_index()))
    }

    fn interrupt_pending(&self) -> Option<bool> {
        Some(raw::interrupt_pending(cpu_index()))
    }

    fn idle(&self) {
        self.set_interrupts(true);
        instr::hlt();
    }

    fn hypercall(&self, nr: u64, args: [u64; 3]) -> Result<u64, EnvError> {
        checked(nr, args)
    }

    fn null_hypercall(&self) -> Result<u64, EnvError> {
        match checked(hc::UNDEFINED, [0; 3]) {
            Err(EnvError::Failed(ENOSYS)) => Ok(0),
            other => other,
        }
    }

    fn pv_cpuid(&self, leaf: u32, sub: u32) -> Result<[u32; 4], EnvError> {
        pv_cpuid(leaf, sub).map_err(EnvError::Fault)
    }

    fn flush_tlb(&self) -> Result<(), EnvError> {
        checked(hc::FLUSH_TLB, [0; 3]).map(drop)
    }

    fn flush_tlb_one(&self, va: u64) -> Result<(), EnvError> {
        checked(hc::FLUSH_TLB_ONE, [va, 0, 0]).map(drop)
    }

    fn pv_state_msrs(&self) -> &'static [u32] {
        &[abi::local::MSR_VIF]
    }

    fn mode(&self) -> super::Mode {
        // Emulated CPL0 costs ~0.5 us per instruction: 10,000 iterations of a 3-instruction
        // loop take over 10 ms emulated and some microseconds native. 1 ms splits them. A
        // host that deschedules the vCPU for a millisecond makes a native loop look slow,
        // never an emulated one fast: one fast try of a few is native.
        let fast = || {
            let t0 = instr::rdtsc();
            instr::spin(10_000);
            instr::rdtsc() - t0 < crate::rt::cycles_per_ms()
        };
        if (0..MODE_TRIES).any(|_| fast()) {
            super::Mode::PvNative
        } else {
            super::Mode::PvEmulated
        }
    }

    fn supervisor_only_pages(&self) -> Result<(), EnvError> {
        Err(EnvError::Unsupported(
            "the local dialect livelocks on any U/S=0 entry in native mode (docs/local-dialect.md \
             5.6; XFAIL isolation.user_reads_supervisor_page~pv-local)",
        ))
    }
}
