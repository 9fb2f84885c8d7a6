//! hvm64: an ordinary x86-64 kernel at CPL0 with its own GDT, TSS and IDT. Events arrive
//! through the IDT (`arch::stubs::idt`) and return with `iretq`/`sysretq`
//! (`arch::stubs::hvm64`); interrupts are gated by RFLAGS.IF. There is no hypercall
//! and no paravirtual service.

use abi::env::Env;
use abi::layout::BootInfo;

use super::{EnvError, Environment};
use crate::arch::{instr, stubs, tables};

/// The hvm64 environment.
pub struct Hvm64;

const NO_PV: EnvError = EnvError::Unsupported("hvm64 is not paravirtual");

impl Environment for Hvm64 {
    fn env(&self) -> Env {
        Env::Hvm64
    }

    fn init_bsp(&self, _: &BootInfo) {
        tables::init();
        stubs::install_user_returns(stubs::hvm64::user_returns());
    }

    fn init_ap(&self, _: u32) {
        tables::load_ap();
    }

    fn set_interrupts(&self, on: bool) {
        if on { instr::sti() } else { instr::cli() }
    }

    fn idle(&self) {
        instr::sti_hlt();
    }

    fn hypercall(&self, _: u64, _: [u64; 3]) -> Result<u64, EnvError> {
        Err(NO_PV)
    }

    fn null_hypercall(&self) -> Result<u64, EnvError> {
        Err(NO_PV)
    }

    fn pv_cpuid(&self, _: u32, _: u32) -> Result<[u32; 4], EnvError> {
        Err(NO_PV)
    }

    fn flush_tlb(&self) -> Result<(), EnvError> {
        Err(NO_PV)
    }

    fn flush_tlb_one(&self, _: u64) -> Result<(), EnvError> {
        Err(NO_PV)
    }
}
