//! Initial guest state: identity page tables, the boot info and 64-bit register state.
//!
//! The vCPU starts directly in long mode at the image's `_start` (no firmware, no real
//! mode): CR0 = PE|MP|ET|NE|WP|AM|PG, CR4 = PAE, EFER = SCE|LME|LMA|NXE, CS = 0x10 (64-bit,
//! DPL 0), data segments = 0x18, RSP = the supervisor stack, RDI = the boot info. Every
//! paging entry has U/S=1, which the local host's native mode requires and which costs a
//! CPL0 guest nothing.

use abi::env::Env;
use abi::layout::{
    BOOT_INFO_GPA, BOOT_MAGIC, BootInfo, FREE_END, FREE_START, LARGE_PAGE_SIZE, MMIO_WINDOW,
    PAGE_SIZE, PD_GPA, PDPT_GPA, PML4_GPA, PT0_GPA, RAM_SIZE, USER_PML4_GPA, pte,
};
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

use crate::Result;
use crate::memory::GuestMemory;

const TABLE: u64 = pte::P | pte::RW | pte::US;

/// Writes the page tables: RAM identity mapped (first 2 MiB with 4 KiB pages and page 0 absent,
/// the rest with 2 MiB pages), the MMIO window, the upper-half alias (`HIGH_ALIAS`) and the
/// user-PML4 mirror the local host uses.
pub fn write_page_tables(mem: &GuestMemory) -> Result<()> {
    for pml4 in [PML4_GPA, USER_PML4_GPA] {
        mem.write_u64(pml4, PDPT_GPA | TABLE)?;
        mem.write_u64(pml4 + 8 * 511, PDPT_GPA | TABLE)?;
    }
    mem.write_u64(PDPT_GPA, PD_GPA | TABLE)?;
    mem.write_u64(PD_GPA, PT0_GPA | TABLE)?;
    for i in 1..512 {
        mem.write_u64(PT0_GPA + 8 * i, (i * PAGE_SIZE) | TABLE)?;
    }
    for i in 1..RAM_SIZE / LARGE_PAGE_SIZE {
        mem.write_u64(PD_GPA + 8 * i, (i * LARGE_PAGE_SIZE) | TABLE | pte::PS)?;
    }
    let window = MMIO_WINDOW / LARGE_PAGE_SIZE;
    mem.write_u64(PD_GPA + 8 * window, MMIO_WINDOW | TABLE | pte::PS)
}

/// Writes the boot info for a case with `vcpus` vCPUs.
pub fn write_boot_info(
    mem: &GuestMemory,
    env: Env,
    case_entry: u64,
    param: u64,
    vcpus: u32,
) -> Result<()> {
    let info = BootInfo {
        magic: BOOT_MAGIC,
        case_entry,
        env: env as u32,
        vcpus,
        free_start: FREE_START,
        free_end: FREE_END,
        param,
    };
    mem.write(BOOT_INFO_GPA, &info.to_bytes())
}

fn segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Special registers for a direct 64-bit start, based on the vCPU's current ones.
pub fn long_mode_sregs(mut s: kvm_sregs) -> kvm_sregs {
    s.cr0 = 0x8005_0033;
    s.cr3 = PML4_GPA;
    s.cr4 = 0x20;
    s.efer = 0xd01;
    s.cs = segment(0x10, true);
    let data = segment(0x18, false);
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s
}

/// General registers of vCPU `cpu` at entry: RDI = the boot info, RSI = `cpu`, its own stack.
pub fn entry_regs(entry: u64, cpu: u32) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: abi::layout::stack_top(cpu),
        rdi: BOOT_INFO_GPA,
        rsi: u64::from(cpu),
        rflags: 0x2,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tables_identity_map_ram_and_leave_page_zero_out() {
        let m = GuestMemory::new(RAM_SIZE).expect("mmap");
        write_page_tables(&m).expect("fits");
        assert_eq!(
            m.read_u64(PML4_GPA).expect("r"),
            m.read_u64(USER_PML4_GPA).expect("r")
        );
        assert_eq!(m.read_u64(PT0_GPA).expect("r"), 0, "page 0 must be absent");
        assert_eq!(m.read_u64(PT0_GPA + 8).expect("r"), 0x1000 | TABLE);
        let pde = m.read_u64(PD_GPA + 8 * 2).expect("r");
        assert_eq!(pde, 0x40_0000 | TABLE | pte::PS);
        assert_eq!(
            m.read_u64(PD_GPA + 8 * 511).expect("r"),
            MMIO_WINDOW | TABLE | pte::PS
        );
    }
}
