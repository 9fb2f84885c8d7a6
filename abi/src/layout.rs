//! Guest-physical memory map shared by the host loader and the guest library.
//!
//! Guest virtual addresses equal guest-physical ones for everything the loader maps (an
//! identity map), so a pointer the guest hands to the host over the report channel is a GPA.
//!
//! ```text
//! 0x0000_0000  page 0: never mapped (NULL dereferences fault)
//! 0x0000_2000  PML4     0x3000 user PML4 (see below)
//! 0x0000_4000  PDPT     0x5000 PD     0x6000 PT for the first 2 MiB
//! 0x0000_7000  BootInfo (host -> guest)
//! 0x0000_8000  VIF pages of the local dialect, one per vCPU (`vif_gpa`)
//! 0x0020_0000  guest image (ELF, loaded at its link addresses)    .. IMAGE_END
//! 0x0040_0000  supervisor stack (grows down from SUPERVISOR_STACK_TOP)
//! 0x0041_0000  user stack (grows down from USER_STACK_TOP)
//! 0x0042_0000  stacks of vCPUs 1.. (`ap_stack_top`), 64 KiB each
//! 0x0060_0000  one 2 MiB-aligned block for large-page test mappings (`LARGE_TEST_GPA`)
//! 0x0080_0000  free pages for guest page-table experiments          .. RAM_SIZE
//! 0x3fe0_0000  MMIO window: mapped by a 2 MiB PDE, no memslot behind it
//! ```
//!
//! The local host runs CPL3 code on CR3 | 0x1000 (a PTI-style user PML4, in both of its
//! modes), so the loader builds the PML4 8 KiB aligned and mirrors it at [`USER_PML4_GPA`].
//! The case `paging.user_cr3_is_cr3` checks the architectural rule (CPL3 uses CR3) directly.
//! PML4 slot 511 aliases PML4 slot 0 ([`HIGH_ALIAS`]) for the stack events from CPL3 switch to.

/// Size of the guest's RAM, starting at GPA 0.
pub const RAM_SIZE: u64 = 16 << 20;
/// Page size.
pub const PAGE_SIZE: u64 = 4096;
/// Size of a large (PDE-level) page.
pub const LARGE_PAGE_SIZE: u64 = 2 << 20;

/// GPA of the top-level page table the host builds (loaded into CR3).
pub const PML4_GPA: u64 = 0x2000;
/// GPA of the mirror of the PML4 that the local host uses for CPL3 (CR3 | 0x1000).
pub const USER_PML4_GPA: u64 = PML4_GPA | USER_PML4_OFFSET;
/// Offset of the user PML4 from CR3 on the local host.
pub const USER_PML4_OFFSET: u64 = 0x1000;
/// GPA of the first PDPT.
pub const PDPT_GPA: u64 = 0x4000;
/// GPA of the page directory covering the first GiB.
pub const PD_GPA: u64 = 0x5000;
/// GPA of the page table covering the first 2 MiB with 4 KiB pages (page 0 not present).
pub const PT0_GPA: u64 = 0x6000;
/// GPA of the [`BootInfo`] page.
pub const BOOT_INFO_GPA: u64 = 0x7000;
/// GPA of the local dialect's VIF page of vCPU 0.
pub const VIF_GPA: u64 = 0x8000;
/// Most vCPUs a case may ask for.
pub const MAX_VCPUS: u32 = 8;
/// Stack size of each application processor (vCPU 1 and up).
pub const AP_STACK_SIZE: u64 = 0x1_0000;

/// VIF page of vCPU `cpu` (one page each, from [`VIF_GPA`]).
pub const fn vif_gpa(cpu: u32) -> u64 {
    VIF_GPA + 0x1000 * cpu as u64
}

/// Initial RSP of vCPU `cpu`: [`SUPERVISOR_STACK_TOP`] for vCPU 0, then 64 KiB stacks from
/// [`USER_STACK_TOP`] up.
pub const fn stack_top(cpu: u32) -> u64 {
    if cpu == 0 {
        SUPERVISOR_STACK_TOP
    } else {
        USER_STACK_TOP + AP_STACK_SIZE * cpu as u64
    }
}
/// Start of the guest image: the guest's linker script links it here.
pub const IMAGE_BASE: u64 = 0x20_0000;
/// End (exclusive) of the area reserved for the guest image.
pub const IMAGE_END: u64 = 0x40_0000;
/// Page table of the image's 2 MiB when the loader maps its code supervisor-only
/// (`Env::image_supervisor_only`): code pages U/S=0, the rest U/S=1.
pub const IMAGE_PT_GPA: u64 = 0x1_0000;
const _: () = assert!(IMAGE_PT_GPA >= VIF_GPA + MAX_VCPUS as u64 * PAGE_SIZE);
/// Where a loader that maps the image supervisor-only (`Env::image_supervisor_only`) maps it
/// a second time, U/S=1, for the user-mode code of the image (one 2 MiB page).
pub const USER_IMAGE_ALIAS: u64 = 0x200_0000;
/// [`USER_IMAGE_ALIAS`] minus [`IMAGE_BASE`]: an image address plus this is its user alias.
pub const USER_ALIAS_OFFSET: u64 = USER_IMAGE_ALIAS - IMAGE_BASE;
const _: () = assert!(IMAGE_END - IMAGE_BASE == LARGE_PAGE_SIZE);
const _: () = assert!(USER_IMAGE_ALIAS.is_multiple_of(LARGE_PAGE_SIZE));
const _: () = assert!(USER_IMAGE_ALIAS >= FREE_END);
/// Initial RSP (supervisor stack top).
pub const SUPERVISOR_STACK_TOP: u64 = 0x41_0000;
/// Top of the stack used for user-mode (CPL3) code.
pub const USER_STACK_TOP: u64 = 0x42_0000;
/// First free page for guest-built page tables and test mappings.
pub const FREE_START: u64 = 0x80_0000;
/// A 2 MiB-aligned block of RAM reserved for large-page test mappings.
pub const LARGE_TEST_GPA: u64 = 0x60_0000;
/// End (exclusive) of free pages.
pub const FREE_END: u64 = RAM_SIZE;
/// GPA (== VA) of the MMIO window: mapped, but without a memslot, so accesses exit to the VMM.
pub const MMIO_WINDOW: u64 = 0x3fe0_0000;
/// Size of the MMIO window.
pub const MMIO_WINDOW_SIZE: u64 = LARGE_PAGE_SIZE;
/// Upper-half alias of low memory: PML4 slot 511 points at the same PDPT as PML4 slot 0, so
/// `HIGH_ALIAS + gpa` maps `gpa` too. The local host needs TSS.RSP0 in the upper half.
pub const HIGH_ALIAS: u64 = 0xffff_ff80_0000_0000;

/// Paging-entry bits used by the loader and the guest page-table builder.
pub mod pte {
    /// Present.
    pub const P: u64 = 1 << 0;
    /// Writable.
    pub const RW: u64 = 1 << 1;
    /// User-accessible.
    pub const US: u64 = 1 << 2;
    /// Accessed.
    pub const A: u64 = 1 << 5;
    /// Dirty.
    pub const D: u64 = 1 << 6;
    /// Page size (large page) in a PDE.
    pub const PS: u64 = 1 << 7;
    /// No-execute.
    pub const NX: u64 = 1 << 63;
    /// Mask of the physical address in an entry.
    pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
}

/// The guest's GDT layout (x86-64 Linux order, which SYSCALL/SYSRET need and which the local
/// host forces for user mode). The host starts the vCPU with [`sel::KERNEL_CS`] and
/// [`sel::KERNEL_DS`] loaded; the guest library's GDT gives them the same meaning.
pub mod sel {
    /// Kernel code, 64-bit.
    pub const KERNEL_CS: u16 = 0x10;
    /// Kernel data.
    pub const KERNEL_DS: u16 = 0x18;
    /// User code, 32-bit (RPL 3); STAR's SYSRET base.
    pub const USER32_CS: u16 = 0x20 | 3;
    /// User data (RPL 3).
    pub const USER_DS: u16 = 0x28 | 3;
    /// User code, 64-bit (RPL 3).
    pub const USER_CS: u16 = 0x30 | 3;
    /// The TSS descriptor (16 bytes).
    pub const TSS: u16 = 0x40;
}

/// CR0 at entry: PE, MP, ET, NE, WP, AM, PG.
pub const BOOT_CR0: u64 = {
    use crate::x86::cr0::*;
    PE | MP | ET | NE | WP | AM | PG
};
/// CR4 at entry: PAE only.
pub const BOOT_CR4: u64 = crate::x86::cr4::PAE;
/// EFER at entry: SCE, LME, LMA, NXE.
pub const BOOT_EFER: u64 = {
    use crate::x86::efer::*;
    SCE | LME | LMA | NXE
};
/// RFLAGS at entry (interrupts off).
pub const BOOT_RFLAGS: u64 = crate::x86::rflags::FIXED;

/// Magic value of [`BootInfo::magic`] ("PVMCBOOT").
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"PVMCBOOT");

/// What the host tells the guest at entry; lives at [`BOOT_INFO_GPA`], and RDI points to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootInfo {
    /// [`BOOT_MAGIC`].
    pub magic: u64,
    /// Guest VA of the case function to run (taken from the case descriptor).
    pub case_entry: u64,
    /// The environment, as [`crate::env::Env`] discriminant.
    pub env: u32,
    /// Number of vCPUs the host created.
    pub vcpus: u32,
    /// Free-page range the guest may use for its own page tables and test mappings.
    pub free_start: u64,
    /// End (exclusive) of that range.
    pub free_end: u64,
    /// The guest TSC frequency in kHz as the host knows it (`KVM_GET_TSC_KHZ`), for turning
    /// time bounds into TSC cycles; 0 if the host does not know it.
    pub tsc_khz: u64,
    /// The case's parameter (`CaseDesc::param`).
    pub case_param: u64,
    /// How the guest sends report messages: a [`crate::report::Channel`] as raw value.
    pub channel: u64,
}

const _: () = {
    assert!(core::mem::size_of::<BootInfo>() == 64);
    assert!(core::mem::offset_of!(BootInfo, case_param) == 48);
    assert!(core::mem::offset_of!(BootInfo, channel) == 56);
    assert!(core::mem::offset_of!(BootInfo, case_entry) == 8);
    assert!(core::mem::offset_of!(BootInfo, env) == 16);
    assert!(core::mem::offset_of!(BootInfo, free_start) == 24);
    assert!(core::mem::offset_of!(BootInfo, tsc_khz) == 40);
    assert!(IMAGE_BASE.is_multiple_of(LARGE_PAGE_SIZE) && FREE_START.is_multiple_of(PAGE_SIZE));
    assert!(PML4_GPA.is_multiple_of(0x2000));
    assert!(vif_gpa(MAX_VCPUS - 1) < 0x1_0000 && stack_top(MAX_VCPUS - 1) <= FREE_START);
    assert!(SUPERVISOR_STACK_TOP > IMAGE_END && USER_STACK_TOP <= FREE_START);
    assert!(LARGE_TEST_GPA.is_multiple_of(LARGE_PAGE_SIZE));
    assert!(
        stack_top(MAX_VCPUS - 1) <= LARGE_TEST_GPA
            && LARGE_TEST_GPA + LARGE_PAGE_SIZE <= FREE_START
    );
    assert!(BOOT_CR0 == 0x8005_0033 && BOOT_EFER == 0xd01);
};

impl BootInfo {
    /// Serialises to the exact `#[repr(C)]` byte layout (little endian), for the host loader.
    pub fn to_bytes(&self) -> [u8; core::mem::size_of::<BootInfo>()] {
        let mut b = [0u8; core::mem::size_of::<BootInfo>()];
        b[0..8].copy_from_slice(&self.magic.to_le_bytes());
        b[8..16].copy_from_slice(&self.case_entry.to_le_bytes());
        b[16..20].copy_from_slice(&self.env.to_le_bytes());
        b[20..24].copy_from_slice(&self.vcpus.to_le_bytes());
        b[24..32].copy_from_slice(&self.free_start.to_le_bytes());
        b[32..40].copy_from_slice(&self.free_end.to_le_bytes());
        b[40..48].copy_from_slice(&self.tsc_khz.to_le_bytes());
        b[48..56].copy_from_slice(&self.case_param.to_le_bytes());
        b[56..64].copy_from_slice(&self.channel.to_le_bytes());
        b
    }
}
