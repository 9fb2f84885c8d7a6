//! Constants of the three upstream virt-pvm ABI generations (RFC v1, "mid", v2).
//!
//! Sources: virt-pvm/linux `arch/x86/include/uapi/asm/pvm_para.h` at the commits listed in
//! `docs/abi-generations.md`. The host uses these to detect which generation a host speaks;
//! the guest library's `pv-v2` environment and the reference model (`model/`) speak them.

/// `invlpg 0xffffffffff4d5650; cpuid`: the synthetic CPUID every generation understands.
pub const SYNTHETIC_CPUID: [u8; 10] = [0x0f, 0x01, 0x3c, 0x25, 0x50, 0x56, 0x4d, 0xff, 0x0f, 0xa2];
/// KVM's vendor-features leaf, where a PVM host puts its signature in EBX.
pub const CPUID_VENDOR_FEATURES: u32 = 0x4000_0002;
/// The leaf where the 7.x community line announces its ABI version and feature bitmap
/// (notes §14; its register layout is not pinned down there: detection needs only the leaf and
/// the "PVM" signature, and reports the registers as they are).
pub const CPUID_7X: u32 = 0x4000_0200;
/// "PVM" in EBX of [`CPUID_VENDOR_FEATURES`].
pub const CPUID_SIGNATURE: u32 = 0x4d_5650;
/// First PVM hypercall number (`PVM_HC_LOAD_PGTBL`).
pub const HC_BASE: u64 = 0x1708_8200;

/// `__USER_CS` of an x86-64 Linux host: the hardware CS of a PVM guest in both modes.
pub const HOST_USER_CS: u16 = 0x33;
/// `__USER_DS` of an x86-64 Linux host: the hardware SS of a PVM guest.
pub const HOST_USER_DS: u16 = 0x2b;
/// `__USER32_CS` of an x86-64 Linux host (compatibility-mode user code).
pub const HOST_USER32_CS: u16 = 0x23;
/// Entries of an x86-64 Linux host's GDT (`GDT_ENTRIES`): SGDT in the guest kernel shows a
/// limit of `HOST_GDT_ENTRIES * 8 - 1` on a host without UMIP (notes §6, "Not trapping").
pub const HOST_GDT_ENTRIES: usize = 16;
/// The host's TSS selector (`GDT_ENTRY_TSS` = 8), which STR shows the guest kernel.
pub const HOST_TSS_SELECTOR: u16 = 0x40;
/// The host's CPUNODE entry (`GDT_ENTRY_CPUNODE` = 15, RPL 0): a DPL-3 data segment for the
/// vDSO's getcpu, which the guest can load because segment loads see the host GDT.
pub const HOST_CPUNODE_SELECTOR: u16 = 0x78;
/// The limit of the host's IDT (256 gates), as SIDT shows it.
pub const HOST_IDT_LIMIT: u16 = 0xfff;
/// The selectors (RPL 3) of the host GDT's three TLS entries (`GDT_ENTRY_TLS_MIN` = 12 on an
/// x86-64 Linux host), which `PVM_HC_LOAD_TLS` fills.
pub const HOST_TLS_SELECTORS: [u16; 3] = [0x63, 0x6b, 0x73];

/// PVM hypercall numbers (`PVM_HC_*`, the same in every generation; +1 is `EVENT_WIN` in
/// "mid").
pub mod hc {
    use super::HC_BASE;
    /// `PVM_HC_LOAD_PGTBL`.
    pub const LOAD_PGTBL: u64 = HC_BASE;
    /// `PVM_HC_IRQ_WIN`.
    pub const IRQ_WIN: u64 = HC_BASE + 1;
    /// `PVM_HC_IRQ_HALT`.
    pub const IRQ_HALT: u64 = HC_BASE + 2;
    /// `PVM_HC_TLB_FLUSH`.
    pub const TLB_FLUSH: u64 = HC_BASE + 3;
    /// `PVM_HC_TLB_FLUSH_CURRENT`.
    pub const TLB_FLUSH_CURRENT: u64 = HC_BASE + 4;
    /// `PVM_HC_TLB_INVLPG`.
    pub const TLB_INVLPG: u64 = HC_BASE + 5;
    /// `PVM_HC_LOAD_GS`.
    pub const LOAD_GS: u64 = HC_BASE + 6;
    /// `PVM_HC_RDMSR`.
    pub const RDMSR: u64 = HC_BASE + 7;
    /// `PVM_HC_WRMSR`.
    pub const WRMSR: u64 = HC_BASE + 8;
    /// `PVM_HC_LOAD_TLS`.
    pub const LOAD_TLS: u64 = HC_BASE + 9;
    /// One past the PVM range (`PVM_HC_SPECIAL_MAX_NR` = 256).
    pub const END: u64 = HC_BASE + 256;
}

/// What a KVM hypercall with an unknown number returns (`-KVM_ENOSYS`); PVM hosts answer
/// every number outside their own calls this way.
pub const KVM_ENOSYS: i64 = -1000;
/// What `PVM_HC_WRMSR` returns on failure (`-EIO` in the host code; the spec says -EINVAL).
pub const HC_WRMSR_EIO: i64 = -5;

/// `event_flags` bits of the PVCS (every generation).
pub mod event_flags {
    /// Interrupt pending: the host has an interrupt the guest's IF held off.
    pub const IP: u64 = 1 << 8;
    /// The supervisor's interrupt flag.
    pub const IF: u64 = 1 << 9;
    /// "mid": events enabled (injecting a non-NMI event while EF is clear is a triple fault).
    pub const EF: u64 = 1 << 0;
    /// "mid": an NMI is pending.
    pub const EP: u64 = 1 << 1;
}

/// RFC v1 / "mid": the 64-byte frame the host writes on the supervisor stack for an exception
/// in supervisor mode (entry +256), and ERETS reads at RSP (`struct pvm_supervisor_event`,
/// notes §4.4).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SupervisorEvent {
    /// Error code | vector << 32.
    pub errcode: u64,
    /// Interrupted RIP.
    pub rip: u64,
    /// Kernel CS (STAR), ignored by ERETS.
    pub cs: u64,
    /// RFLAGS with the virtual IF.
    pub rflags: u64,
    /// Interrupted RSP.
    pub rsp: u64,
    /// Kernel SS, ignored by ERETS.
    pub ss: u64,
    /// Interrupted RCX.
    pub rcx: u64,
    /// Interrupted R11.
    pub r11: u64,
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<SupervisorEvent>() == 64);
    assert!(offset_of!(SupervisorEvent, rip) == 0x08);
    assert!(offset_of!(SupervisorEvent, rflags) == 0x18);
    assert!(offset_of!(SupervisorEvent, rsp) == 0x20);
    assert!(offset_of!(SupervisorEvent, rcx) == 0x30);
    assert!(offset_of!(SupervisorEvent, r11) == 0x38);
};

/// RFC v1 / "mid" event entry offsets from MSR_PVM_EVENT_ENTRY.
pub const V1_USER_ENTRY_OFFSET: u64 = 0;
/// Supervisor exceptions (vector < 32), with a [`SupervisorEvent`] on the stack.
pub const V1_EXCEPTION_ENTRY_OFFSET: u64 = 256;
/// Supervisor interrupts (vector >= 32), with the context in the PVCS.
pub const V1_INTERRUPT_ENTRY_OFFSET: u64 = 512;

/// v2 `event_vector` high-byte bits (`PVM_PVCS_EVENT_VECTOR_*_BIT`).
pub mod vector_bits {
    /// A synchronous event was delivered and not yet consumed.
    pub const STD: u16 = 1 << 8;
    /// NMI pending.
    pub const NMI: u16 = 1 << 9;
    /// #MC pending.
    pub const MCE: u16 = 1 << 10;
}

/// Offset of the supervisor-mode entry from `MSR_PVM_EVENT_ENTRY` (v2; v1 has +256 for
/// exceptions and +512 for interrupts).
pub const SUPERVISOR_ENTRY_OFFSET: u64 = 512;

/// MSRs common to every generation.
pub const MSR_LINEAR_ADDRESS_RANGE: u32 = 0x4b56_4df0;

/// Encodes a [`MSR_LINEAR_ADDRESS_RANGE`] value: upper-half PML4 indexes `l4s..l4e` (the
/// RFC format with its filler bits set and the PML5 fields 0x1ff; notes §7).
pub const fn range_value(l4s: u64, l4e: u64) -> u64 {
    (0xfe00 | l4s) | (0xfe00 | l4e) << 16 | (0xfe00 | 0x1ff) << 32 | (0xfe00 | 0x1ff) << 48
}

/// The PML4 fields `(l4s, l4e)` of a [`MSR_LINEAR_ADDRESS_RANGE`] value: the guest may map its
/// upper half only in PML4 slots `l4s..l4e`.
pub const fn range_of(v: u64) -> (u64, u64) {
    (v & 0x1ff, (v >> 16) & 0x1ff)
}
/// Guest-physical address of the PVCS page.
pub const MSR_VCPU_STRUCT: u32 = 0x4b56_4df1;
/// Event entry base.
pub const MSR_EVENT_ENTRY: u32 = 0x4b56_4df4;
/// Address of the ERETU `syscall`.
pub const MSR_RETU_RIP: u32 = 0x4b56_4df5;
/// Address of the ERETS `syscall`.
pub const MSR_RETS_RIP: u32 = 0x4b56_4df6;

/// Generation-specific MSR numbers.
pub mod v1 {
    /// Supervisor RSP.
    pub const MSR_SUPERVISOR_RSP: u32 = 0x4b56_4df2;
    /// Supervisor red zone (removed in "mid").
    pub const MSR_SUPERVISOR_REDZONE: u32 = 0x4b56_4df3;
    /// The other mode's CR3.
    pub const MSR_SWITCH_CR3: u32 = 0x4b56_4df7;
}

/// "mid" generation: SWITCH_CR3 and SUPERVISOR_RSP renumbered, REDZONE gone.
pub mod mid {
    /// The other mode's CR3.
    pub const MSR_SWITCH_CR3: u32 = 0x4b56_4df2;
    /// Supervisor RSP.
    pub const MSR_SUPERVISOR_RSP: u32 = 0x4b56_4df3;
}

/// RFC v1 / "mid" PVCS layout (128 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PvcsV1 {
    /// Bit 8 = IP, bit 9 = IF.
    pub event_flags: u64,
    /// Error code of the delivered event.
    pub event_errcode: u32,
    /// Vector of the delivered event.
    pub event_vector: u32,
    /// Fault address of a #PF.
    pub cr2: u64,
    /// Reserved.
    pub reserved0: [u64; 5],
    /// User CS.
    pub user_cs: u16,
    /// User SS.
    pub user_ss: u16,
    /// Reserved.
    pub reserved1: u32,
    /// Reserved.
    pub reserved2: u64,
    /// User GS base.
    pub user_gsbase: u64,
    /// RFLAGS of the interrupted context.
    pub eflags: u32,
    /// User PKRU.
    pub pkru: u32,
    /// Interrupted RIP.
    pub rip: u64,
    /// Interrupted RSP.
    pub rsp: u64,
    /// Interrupted RCX.
    pub rcx: u64,
    /// Interrupted R11.
    pub r11: u64,
}

/// v2 PVCS layout (128 bytes, no RSP field).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PvcsV2 {
    /// Bit 8 = IP, bit 9 = IF.
    pub event_flags: u64,
    /// Fault address of a #PF.
    pub cr2: u64,
    /// Reserved.
    pub reserved0: [u64; 6],
    /// User CS.
    pub user_cs: u16,
    /// User SS.
    pub user_ss: u16,
    /// Error code.
    pub event_errcode: u16,
    /// Low byte vector, high byte STD/NMI/MCE.
    pub event_vector: u16,
    /// User GS base.
    pub user_gsbase: u64,
    /// RFLAGS of the interrupted context.
    pub eflags: u32,
    /// User PKRU.
    pub pkru: u32,
    /// Interrupted RIP.
    pub rip: u64,
    /// Interrupted RCX.
    pub rcx: u64,
    /// Interrupted R11.
    pub r11: u64,
    /// Reserved.
    pub reserved1: [u64; 2],
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<PvcsV1>() == 0x80);
    assert!(offset_of!(PvcsV1, event_vector) == 0x0c);
    assert!(offset_of!(PvcsV1, cr2) == 0x10);
    assert!(offset_of!(PvcsV1, user_cs) == 0x40);
    assert!(offset_of!(PvcsV1, user_gsbase) == 0x50);
    assert!(offset_of!(PvcsV1, eflags) == 0x58);
    assert!(offset_of!(PvcsV1, rip) == 0x60);
    assert!(offset_of!(PvcsV1, r11) == 0x78);
    assert!(size_of::<PvcsV2>() == 0x80);
    assert!(offset_of!(PvcsV2, cr2) == 0x08);
    assert!(offset_of!(PvcsV2, user_cs) == 0x40);
    assert!(offset_of!(PvcsV2, event_errcode) == 0x44);
    assert!(offset_of!(PvcsV2, event_vector) == 0x46);
    assert!(offset_of!(PvcsV2, user_gsbase) == 0x48);
    assert!(offset_of!(PvcsV2, rip) == 0x58);
    assert!(offset_of!(PvcsV2, r11) == 0x68);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_values_round_trip_and_have_the_filler_bits() {
        let v = range_value(0x1e0, 0x1f0);
        assert_eq!(v & 0xff00_ff00_ff00_ff00, 0xff00_ff00_ff00_ff00);
        assert_eq!(range_of(v), (0x1e0, 0x1f0));
    }
}
