//! Initial guest state: identity page tables, the boot info and the 64-bit start state, all
//! written through the backend-neutral [`GuestRam`] and [`InitialState`].
//!
//! The vCPU starts directly in long mode at the image's `_start` (no firmware, no real
//! mode): CR0 = `abi::layout::BOOT_CR0` (PE|MP|ET|NE|WP|AM|PG), CR4 = PAE, EFER =
//! SCE|LME|LMA|NXE, CS = the kernel code selector (64-bit, DPL 0), data segments = the kernel
//! data selector, RSP = the vCPU's stack, RDI = the boot info, RSI = the vCPU index. Every
//! paging entry has U/S=1, which the local host's native mode requires and which costs a CPL0
//! guest nothing.

use abi::layout::{
    BOOT_CR0, BOOT_CR4, BOOT_EFER, BOOT_INFO_GPA, BOOT_MAGIC, BOOT_RFLAGS, BootInfo, FREE_END,
    FREE_START, LARGE_PAGE_SIZE, MMIO_WINDOW, PAGE_SIZE, PD_GPA, PDPT_GPA, PML4_GPA, PT0_GPA,
    RAM_SIZE, USER_PML4_GPA, pte, sel,
};

use crate::Result;
use crate::boot::BootParams;
use crate::vm::{FlatSegment, GuestRam, InitialState, VcpuState};

const TABLE: u64 = pte::P | pte::RW | pte::US;

/// Writes the page tables: RAM identity mapped (first 2 MiB with 4 KiB pages and page 0 absent,
/// the rest with 2 MiB pages), the MMIO window, the upper-half alias (`HIGH_ALIAS`) and the
/// user-PML4 mirror the local host uses. The image's 2 MiB page is supervisor-only when the
/// environment says so (`Env::image_supervisor_only`).
pub fn write_page_tables(
    mem: &dyn GuestRam,
    env: abi::env::Env,
    code: &[std::ops::Range<u64>],
) -> Result<()> {
    for pml4 in [PML4_GPA, USER_PML4_GPA] {
        mem.write_u64(pml4, PDPT_GPA | TABLE)?;
        mem.write_u64(pml4 + 8 * 511, PDPT_GPA | TABLE)?;
    }
    mem.write_u64(PDPT_GPA, PD_GPA | TABLE)?;
    mem.write_u64(PD_GPA, PT0_GPA | TABLE)?;
    for i in 1..512 {
        mem.write_u64(PT0_GPA + 8 * i, (i * PAGE_SIZE) | TABLE)?;
    }
    let image_pde = abi::layout::IMAGE_BASE / LARGE_PAGE_SIZE;
    for i in 1..RAM_SIZE / LARGE_PAGE_SIZE {
        if i == image_pde && env.image_supervisor_only() {
            // 4 KiB pages: the code supervisor-only, the data user-accessible (user code run
            // from the alias reaches statics by absolute address too).
            let pt = abi::layout::IMAGE_PT_GPA;
            mem.write_u64(PD_GPA + 8 * i, pt | TABLE)?;
            for p in 0..LARGE_PAGE_SIZE / PAGE_SIZE {
                let pa = abi::layout::IMAGE_BASE + p * PAGE_SIZE;
                let is_code = code.iter().any(|r| r.start < pa + PAGE_SIZE && pa < r.end);
                let flags = if is_code { TABLE & !pte::US } else { TABLE };
                mem.write_u64(pt + 8 * p, pa | flags)?;
            }
            continue;
        }
        mem.write_u64(PD_GPA + 8 * i, (i * LARGE_PAGE_SIZE) | TABLE | pte::PS)?;
    }
    if env.image_supervisor_only() {
        // The user alias of the image (`abi::layout::USER_IMAGE_ALIAS`), U/S=1.
        let alias = abi::layout::USER_IMAGE_ALIAS / LARGE_PAGE_SIZE;
        mem.write_u64(
            PD_GPA + 8 * alias,
            abi::layout::IMAGE_BASE | TABLE | pte::PS,
        )?;
    }
    let window = MMIO_WINDOW / LARGE_PAGE_SIZE;
    mem.write_u64(PD_GPA + 8 * window, MMIO_WINDOW | TABLE | pte::PS)
}

/// Writes the boot info for `p` (case entry and parameter, environment, vCPUs) and the report
/// channel the VM decodes.
pub fn write_boot_info(
    mem: &dyn GuestRam,
    p: &BootParams,
    tsc_khz: u32,
    channel: abi::report::Channel,
) -> Result<()> {
    let info = BootInfo {
        magic: BOOT_MAGIC,
        case_entry: p.case_entry,
        env: p.env as u32,
        vcpus: p.vcpus.max(1),
        free_start: FREE_START,
        free_end: FREE_END,
        tsc_khz: u64::from(tsc_khz),
        case_param: p.case_param,
        channel: channel as u64,
    };
    mem.write(BOOT_INFO_GPA, &info.to_bytes())
}

/// The start state of `vcpus` vCPUs at `entry`: vCPU `i` gets its own stack and RSI = `i`;
/// every vCPU is runnable at once (with an in-kernel irqchip, KVM would otherwise keep every
/// vCPU but the one with id 0 waiting for INIT/SIPI, and with high vCPU ids none has id 0).
pub fn initial_state(entry: u64, vcpus: u32) -> InitialState {
    InitialState {
        vcpus: (0..vcpus.max(1))
            .map(|cpu| VcpuState {
                rip: entry,
                rsp: abi::layout::stack_top(cpu),
                rdi: BOOT_INFO_GPA,
                rsi: u64::from(cpu),
                rflags: BOOT_RFLAGS,
                cr0: BOOT_CR0,
                cr3: PML4_GPA,
                cr4: BOOT_CR4,
                efer: BOOT_EFER,
                cs: FlatSegment {
                    selector: sel::KERNEL_CS,
                    code: true,
                },
                data: FlatSegment {
                    selector: sel::KERNEL_DS,
                    code: false,
                },
                runnable: true,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MmapRam;

    #[test]
    fn page_tables_identity_map_ram_and_leave_page_zero_out() {
        let m = MmapRam::new(RAM_SIZE).expect("mmap");
        let m: &dyn GuestRam = &m;
        write_page_tables(m, abi::env::Env::Hvm64, &[]).expect("fits");
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

    #[test]
    fn each_vcpu_gets_its_stack_and_index() {
        let s = initial_state(0x20_0000, 3);
        assert_eq!(s.vcpus.len(), 3);
        assert_eq!(s.vcpus[2].rsi, 2);
        assert_eq!(s.vcpus[2].rsp, abi::layout::stack_top(2));
        assert!(s.vcpus.iter().all(|v| v.runnable));
        assert_eq!(s.vcpus[0].cs.selector, 0x10);
    }

    #[test]
    fn the_boot_state_is_a_direct_64_bit_start() {
        // What an upstream PVM host needs to run the guest natively from the first KVM_RUN
        // (docs/abi-generations.md, "Booting these guests on a real upstream host").
        let s = initial_state(abi::layout::IMAGE_BASE, 1);
        let v = &s.vcpus[0];
        let (cr0, cr4) = (abi::x86::cr0::PE | abi::x86::cr0::PG, abi::x86::cr4::PAE);
        let efer = abi::x86::efer::LME | abi::x86::efer::LMA;
        assert_eq!(v.cr0 & cr0, cr0, "CR0.PE|PG");
        assert_eq!(v.cr4 & cr4, cr4, "CR4.PAE");
        assert_eq!(v.efer & efer, efer, "EFER.LME|LMA");
        assert_eq!(
            v.cs.selector & 3,
            0,
            "CS DPL/RPL 0: DPL 3 would start in user mode"
        );
        assert!(v.cs.code && !v.data.code);
        assert!(
            v.rip < 1 << 47,
            "RIP in the lower half: legal on every host"
        );
        assert_eq!(v.rflags & !0x2, 0, "RFLAGS = 0x2");
    }

    #[test]
    fn pv_v2_maps_the_image_code_supervisor_only_and_a_user_alias() {
        let m = MmapRam::new(RAM_SIZE).expect("mmap");
        let m: &dyn GuestRam = &m;
        let code = abi::layout::IMAGE_BASE..abi::layout::IMAGE_BASE + 0x3000;
        write_page_tables(m, abi::env::Env::PvV2, &[code]).expect("fits");
        let pt = abi::layout::IMAGE_PT_GPA;
        let image_pde = m.read_u64(PD_GPA + 8).expect("r");
        assert_eq!(
            image_pde,
            pt | TABLE,
            "the image's 2 MiB split into 4 KiB pages"
        );
        assert_eq!(
            m.read_u64(pt).expect("r") & pte::US,
            0,
            "code page: supervisor-only"
        );
        assert_eq!(
            m.read_u64(pt + 8 * 3).expect("r") & pte::US,
            pte::US,
            "data page: user"
        );
        let alias = m
            .read_u64(PD_GPA + 8 * (abi::layout::USER_IMAGE_ALIAS / LARGE_PAGE_SIZE))
            .expect("r");
        assert_eq!(
            alias,
            abi::layout::IMAGE_BASE | TABLE | pte::PS,
            "user alias"
        );
    }
}
