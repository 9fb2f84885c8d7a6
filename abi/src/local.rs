//! The local host's PVM dialect, as observed by experiment (see docs/local-dialect.md).
//!
//! This is not the upstream virt-pvm ABI: it is a trap-and-emulate ring-compression design.
//! Guest CPL0 code is emulated instruction by instruction until a VIF page is registered in
//! [`MSR_VIF`]; from then on CPL0 code runs natively in hardware ring 3 and privileged
//! instructions trap and are emulated. Hypercalls are `int $0x1b` with RAX = number,
//! arguments in RBX, RCX, RDX, result in RAX.

/// VIF / PV control MSR: page GPA | enable bits (bits 0-6 kept).
pub const MSR_VIF: u32 = 0x4b56_4d10;
/// Bit 0 of [`MSR_VIF`]: enable.
pub const VIF_ENABLE: u64 = 1;
/// Byte of the VIF page holding the virtual interrupt flag (written by the guest).
pub const VIF_BYTE_IF: u64 = 0;
/// Byte of the VIF page the host sets while an interrupt is pending (read by the guest).
pub const VIF_BYTE_PENDING: u64 = 1;
/// Bit 10 of [`MSR_VIF`] as the VMM reads it (`KVM_GET_MSRS`): always set by the host, also
/// on a fresh vCPU (0x400); the guest never sees it. Meaning unknown (observed).
pub const VIF_HOST_BIT: u64 = 1 << 10;
/// Signature MSR, reads [`SIGNATURE`]; writes raise #GP.
pub const MSR_SIGNATURE: u32 = 0x4b56_4d11;
/// "PVM" in the low three bytes.
pub const SIGNATURE: u64 = 0x4d_5650;
/// Read-only MSR of unknown meaning (reads 0x1ff on the observed host).
pub const MSR_UNKNOWN_12: u32 = 0x4b56_4d12;
/// TSC frequency in kHz, read-only.
pub const MSR_TSC_KHZ: u32 = 0x4b56_4d13;

/// Vector of the hypercall software interrupt.
pub const HYPERCALL_VECTOR: u8 = 0x1b;
/// Vector of the paravirtual CPUID software interrupt (EAX/ECX in, EAX..EDX out).
pub const PV_CPUID_VECTOR: u8 = 0x1a;

/// `-ENOSYS` as returned in RAX for an unknown hypercall number.
pub const ENOSYS: i64 = -38;
/// What the WRMSR hypercall returns for an unknown or read-only MSR (observed; 0 = written).
pub const WRMSR_REFUSED: i64 = 2;

/// Hypercall numbers, read from the host kernel's type information.
pub mod hc {
    /// Load CR0.
    pub const SET_CR0: u64 = 0x1000;
    /// Load CR3.
    pub const SET_CR3: u64 = 0x1001;
    /// Load CR4.
    pub const SET_CR4: u64 = 0x1002;
    /// Write an MSR.
    pub const WRMSR: u64 = 0x1003;
    /// Load GDTR.
    pub const LOAD_GDT: u64 = 0x1004;
    /// Load IDTR.
    pub const LOAD_IDT: u64 = 0x1005;
    /// Load TR.
    pub const LOAD_TR: u64 = 0x1006;
    /// Flush the whole TLB.
    pub const FLUSH_TLB: u64 = 0x1007;
    /// Flush one page.
    pub const FLUSH_TLB_ONE: u64 = 0x1008;
    /// Halt (exits to the VMM as `KVM_EXIT_HLT` without an irqchip).
    pub const HALT: u64 = 0x1009;
    /// Return from an event.
    pub const IRET: u64 = 0x100a;
    /// Return to user mode, SYSRET style.
    pub const SYSRET: u64 = 0x100b;
    /// Move the VIF page.
    pub const SET_VIF_GPA: u64 = 0x100c;
    /// Return from an event using an explicit frame.
    pub const IRET_FRAME: u64 = 0x100d;
    /// Flush several pages.
    pub const FLUSH_TLB_MULTI: u64 = 0x100e;
    /// A number in the dialect's range that it does not define (one past the last): the
    /// cheapest in-kernel hypercall round trip, for benchmarks.
    pub const UNDEFINED: u64 = FLUSH_TLB_MULTI + 1;
    /// Every known number, with its name, for table-driven cases.
    pub const ALL: [(u64, &str); 15] = [
        (SET_CR0, "SET_CR0"),
        (SET_CR3, "SET_CR3"),
        (SET_CR4, "SET_CR4"),
        (WRMSR, "WRMSR"),
        (LOAD_GDT, "LOAD_GDT"),
        (LOAD_IDT, "LOAD_IDT"),
        (LOAD_TR, "LOAD_TR"),
        (FLUSH_TLB, "FLUSH_TLB"),
        (FLUSH_TLB_ONE, "FLUSH_TLB_ONE"),
        (HALT, "HALT"),
        (IRET, "IRET"),
        (SYSRET, "SYSRET"),
        (SET_VIF_GPA, "SET_VIF_GPA"),
        (IRET_FRAME, "IRET_FRAME"),
        (FLUSH_TLB_MULTI, "FLUSH_TLB_MULTI"),
    ];
}
