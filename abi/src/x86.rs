//! Architectural x86-64 constants both sides use: MSR indices, control-register and RFLAGS
//! bits, exception vectors, page-fault error-code bits and the CPUID feature bits the guest
//! library tests for. Values are from the Intel SDM vol. 3 (and the AMD APM where they agree);
//! nothing here is specific to PVM.

/// MSR indices.
pub mod msr {
    /// IA32_TIME_STAMP_COUNTER.
    pub const TSC: u32 = 0x10;
    /// IA32_APIC_BASE.
    pub const APIC_BASE: u32 = 0x1b;
    /// IA32_TSC_DEADLINE.
    pub const TSC_DEADLINE: u32 = 0x6e0;
    /// x2APIC end of interrupt.
    pub const X2APIC_EOI: u32 = 0x80b;
    /// x2APIC spurious-interrupt vector register.
    pub const X2APIC_SVR: u32 = 0x80f;
    /// x2APIC interrupt command register.
    pub const X2APIC_ICR: u32 = 0x830;
    /// x2APIC LVT timer.
    pub const X2APIC_LVT_TIMER: u32 = 0x832;
    /// First x2APIC MSR.
    pub const X2APIC_FIRST: u32 = 0x800;
    /// One past the last x2APIC MSR.
    pub const X2APIC_END: u32 = 0x900;
    /// IA32_PAT.
    pub const PAT: u32 = 0x277;
    /// IA32_EFER.
    pub const EFER: u32 = 0xc000_0080;
    /// IA32_STAR (SYSCALL/SYSRET selectors).
    pub const STAR: u32 = 0xc000_0081;
    /// IA32_LSTAR (64-bit SYSCALL entry).
    pub const LSTAR: u32 = 0xc000_0082;
    /// IA32_FMASK (RFLAGS bits SYSCALL clears).
    pub const SFMASK: u32 = 0xc000_0084;
    /// IA32_FS_BASE.
    pub const FS_BASE: u32 = 0xc000_0100;
    /// IA32_GS_BASE.
    pub const GS_BASE: u32 = 0xc000_0101;
    /// IA32_KERNEL_GS_BASE (the value SWAPGS exchanges with GS_BASE).
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    /// IA32_TSC_AUX (what RDTSCP returns in ECX).
    pub const TSC_AUX: u32 = 0xc000_0103;
    /// IA32_CSTAR (compatibility-mode SYSCALL entry).
    pub const CSTAR: u32 = 0xc000_0083;
    /// IA32_SYSENTER_CS.
    pub const SYSENTER_CS: u32 = 0x174;
    /// IA32_SYSENTER_ESP.
    pub const SYSENTER_ESP: u32 = 0x175;
    /// IA32_SYSENTER_EIP.
    pub const SYSENTER_EIP: u32 = 0x176;
    /// IA32_TSC_ADJUST.
    pub const TSC_ADJUST: u32 = 0x3b;
    /// IA32_SPEC_CTRL.
    pub const SPEC_CTRL: u32 = 0x48;
    /// IA32_PRED_CMD (write-only).
    pub const PRED_CMD: u32 = 0x49;
    /// IA32_MTRRCAP (read-only).
    pub const MTRRCAP: u32 = 0xfe;
    /// IA32_MTRR_DEF_TYPE.
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    /// IA32_MTRR_PHYSBASE0.
    pub const MTRR_PHYSBASE0: u32 = 0x200;
    /// IA32_MTRR_FIX64K_00000.
    pub const MTRR_FIX64K: u32 = 0x250;
    /// IA32_MCG_CAP (read-only).
    pub const MCG_CAP: u32 = 0x179;
    /// IA32_MCG_STATUS.
    pub const MCG_STATUS: u32 = 0x17a;
    /// IA32_MCG_CTL (exists when MCG_CAP.CTL_P).
    pub const MCG_CTL: u32 = 0x17b;
    /// IA32_MC0_CTL (first machine-check bank).
    pub const MC0_CTL: u32 = 0x400;
    /// IA32_MC0_STATUS.
    pub const MC0_STATUS: u32 = 0x401;
    /// IA32_MISC_ENABLE.
    pub const MISC_ENABLE: u32 = 0x1a0;
    /// IA32_DEBUGCTL.
    pub const DEBUGCTL: u32 = 0x1d9;
    /// IA32_PLATFORM_ID (read-only, Intel).
    pub const PLATFORM_ID: u32 = 0x17;
    /// IA32_BIOS_SIGN_ID (microcode revision).
    pub const BIOS_SIGN_ID: u32 = 0x8b;
    /// IA32_ARCH_CAPABILITIES (read-only; CPUID.7.0:EDX bit 29).
    pub const ARCH_CAPABILITIES: u32 = 0x10a;
    /// IA32_XSS (CPUID.0xD.1:EAX bit 3).
    pub const XSS: u32 = 0xda0;
    /// IA32_PERF_CAPABILITIES (read-only; CPUID.1:ECX bit 15 PDCM).
    pub const PERF_CAPABILITIES: u32 = 0x345;
    /// IA32_UMWAIT_CONTROL (CPUID.7.0:ECX bit 5 WAITPKG).
    pub const UMWAIT_CONTROL: u32 = 0xe1;
    /// IA32_PKRS (CPUID.7.0:ECX bit 31 PKS).
    pub const PKRS: u32 = 0x6e1;
    /// MSR_PLATFORM_INFO (read-only, Intel; KVM emulates it).
    pub const PLATFORM_INFO: u32 = 0xce;
    /// AMD HWCR.
    pub const AMD_HWCR: u32 = 0xc001_0015;
    /// AMD VM_CR (SVM lock/disable).
    pub const AMD_VM_CR: u32 = 0xc001_0114;
    /// AMD VM_HSAVE_PA (exists with SVM).
    pub const AMD_VM_HSAVE_PA: u32 = 0xc001_0117;
    /// IA32_FEATURE_CONTROL (Intel; VMX lock bits).
    pub const FEATURE_CONTROL: u32 = 0x3a;
    /// IA32_VMX_BASIC (exists with VMX).
    pub const VMX_BASIC: u32 = 0x480;
    /// x2APIC ID register.
    pub const X2APIC_ID: u32 = 0x802;
    /// x2APIC version register.
    pub const X2APIC_VERSION: u32 = 0x803;
    /// x2APIC task-priority register.
    pub const X2APIC_TPR: u32 = 0x808;
    /// x2APIC LVT LINT0.
    pub const X2APIC_LVT_LINT0: u32 = 0x835;
    /// x2APIC timer initial count.
    pub const X2APIC_TIMER_INIT: u32 = 0x838;
    /// x2APIC timer current count (read-only).
    pub const X2APIC_TIMER_CUR: u32 = 0x839;
    /// x2APIC timer divide configuration.
    pub const X2APIC_TIMER_DIV: u32 = 0x83e;
    /// x2APIC self IPI (write-only).
    pub const X2APIC_SELF_IPI: u32 = 0x83f;
    /// x2APIC in-service register, first word (vectors 0..31).
    pub const X2APIC_ISR0: u32 = 0x810;
    /// x2APIC interrupt-request register, first word.
    pub const X2APIC_IRR0: u32 = 0x820;
}

/// KVM's own paravirtual MSRs (Documentation/virt/kvm/x86/msr.rst), which a KVM-based host
/// offers alongside any PVM dialect (CPUID 0x40000001 says which).
pub mod kvm_msr {
    /// MSR_KVM_WALL_CLOCK_NEW.
    pub const WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
    /// MSR_KVM_SYSTEM_TIME_NEW.
    pub const SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
    /// MSR_KVM_ASYNC_PF_EN.
    pub const ASYNC_PF_EN: u32 = 0x4b56_4d02;
    /// MSR_KVM_STEAL_TIME.
    pub const STEAL_TIME: u32 = 0x4b56_4d03;
    /// MSR_KVM_PV_EOI_EN.
    pub const PV_EOI_EN: u32 = 0x4b56_4d04;
    /// MSR_KVM_POLL_CONTROL.
    pub const POLL_CONTROL: u32 = 0x4b56_4d05;
    /// MSR_KVM_ASYNC_PF_INT.
    pub const ASYNC_PF_INT: u32 = 0x4b56_4d06;
    /// MSR_KVM_ASYNC_PF_ACK.
    pub const ASYNC_PF_ACK: u32 = 0x4b56_4d07;
}

/// IA32_APIC_BASE bits.
pub mod apic_base {
    /// x2APIC mode enable.
    pub const EXTD: u64 = 1 << 10;
    /// APIC global enable.
    pub const EN: u64 = 1 << 11;
}

/// x2APIC register fields.
pub mod x2apic {
    /// SVR: APIC software enable.
    pub const SVR_ENABLE: u64 = 1 << 8;
    /// LVT timer mode field value for TSC-deadline mode (bits 18:17 = 10b).
    pub const LVT_TSC_DEADLINE: u64 = 2 << 17;
    /// ICR: level assert (required for fixed IPIs).
    pub const ICR_ASSERT: u64 = 1 << 14;
    /// Bit position of the destination field of the ICR in x2APIC mode.
    pub const ICR_DEST_SHIFT: u32 = 32;
    /// LVT mask bit.
    pub const LVT_MASKED: u64 = 1 << 16;
    /// LVT timer mode field value for periodic mode (bits 18:17 = 01b); one-shot is 0.
    pub const LVT_PERIODIC: u64 = 1 << 17;
    /// Timer divide configuration: divide by 1.
    pub const DIVIDE_BY_1: u64 = 0xb;
}

/// The I/O APIC (82093AA) as KVM's in-kernel irqchip models it.
pub mod ioapic {
    /// Default guest-physical base.
    pub const BASE: u64 = 0xfec0_0000;
    /// Offset of IOREGSEL (register select).
    pub const IOREGSEL: u64 = 0x00;
    /// Offset of IOWIN (register window).
    pub const IOWIN: u64 = 0x10;
    /// Register index of the version register.
    pub const VERSION: u32 = 0x01;
    /// Register index of the low half of pin `n`'s redirection entry (the high half is next).
    pub const fn redirection(pin: u32) -> u32 {
        0x10 + 2 * pin
    }
    /// Redirection entry: level-triggered (else edge).
    pub const LEVEL: u64 = 1 << 15;
    /// Redirection entry: remote IRR (read-only; a level interrupt awaits its EOI).
    pub const REMOTE_IRR: u64 = 1 << 14;
    /// Redirection entry: masked.
    pub const MASKED: u64 = 1 << 16;
}

/// CR0 bits.
pub mod cr0 {
    /// Protected mode.
    pub const PE: u64 = 1 << 0;
    /// Monitor coprocessor.
    pub const MP: u64 = 1 << 1;
    /// Extension type.
    pub const ET: u64 = 1 << 4;
    /// Numeric error.
    pub const NE: u64 = 1 << 5;
    /// Task switched (x87/SSE instructions raise #NM).
    pub const TS: u64 = 1 << 3;
    /// Write protect (supervisor writes honour read-only pages).
    pub const WP: u64 = 1 << 16;
    /// Alignment mask.
    pub const AM: u64 = 1 << 18;
    /// Paging.
    pub const PG: u64 = 1 << 31;
}

/// CR4 bits.
pub mod cr4 {
    /// Time-stamp disable (RDTSC at CPL3 raises #GP).
    pub const TSD: u64 = 1 << 2;
    /// Physical address extension.
    pub const PAE: u64 = 1 << 5;
    /// Machine-check enable (an #MC with it clear shuts the CPU down).
    pub const MCE: u64 = 1 << 6;
    /// Performance-counter enable (RDPMC at CPL3).
    pub const PCE: u64 = 1 << 8;
    /// FXSAVE/FXRSTOR and SSE enabled.
    pub const OSFXSR: u64 = 1 << 9;
    /// Unmasked SIMD floating-point exceptions raise #XM (else #UD).
    pub const OSXMMEXCPT: u64 = 1 << 10;
    /// Process-context identifiers.
    pub const PCIDE: u64 = 1 << 17;
    /// XSAVE and processor extended states enable.
    pub const OSXSAVE: u64 = 1 << 18;
    /// Supervisor-mode execution prevention.
    pub const SMEP: u64 = 1 << 20;
    /// Supervisor-mode access prevention.
    pub const SMAP: u64 = 1 << 21;
    /// Protection keys for user pages.
    pub const PKE: u64 = 1 << 22;
}

/// CR3 bits.
pub mod cr3 {
    /// With CR4.PCIDE: do not flush the TLB entries of the new PCID.
    pub const NOFLUSH: u64 = 1 << 63;
}

/// IA32_EFER bits.
pub mod efer {
    /// SYSCALL enable.
    pub const SCE: u64 = 1 << 0;
    /// Long mode enable.
    pub const LME: u64 = 1 << 8;
    /// Long mode active.
    pub const LMA: u64 = 1 << 10;
    /// No-execute enable.
    pub const NXE: u64 = 1 << 11;
}

/// RFLAGS bits.
pub mod rflags {
    /// Reserved, always 1.
    pub const FIXED: u64 = 1 << 1;
    /// Trap flag.
    pub const TF: u64 = 1 << 8;
    /// Interrupt enable.
    pub const IF: u64 = 1 << 9;
    /// Direction flag.
    pub const DF: u64 = 1 << 10;
    /// I/O privilege level (two bits).
    pub const IOPL: u64 = 3 << 12;
    /// Nested task.
    pub const NT: u64 = 1 << 14;
    /// Alignment check.
    pub const AC: u64 = 1 << 18;
}

/// The x87 FPU (SDM Vol. 1 8.1).
pub mod x87 {
    /// The control word after FNINIT: every exception masked, 64-bit precision, round to
    /// nearest.
    pub const FCW_DEFAULT: u16 = 0x37f;
}

/// MXCSR, the SSE control and status register (SDM Vol. 1 10.2.3).
pub mod mxcsr {
    /// The six exception flags (IE, DE, ZE, OE, UE, PE), sticky.
    pub const FLAGS: u32 = 0x3f;
    /// The six exception masks (IM..PM), bits 7-12: the flags shifted left by this.
    pub const MASK_SHIFT: u32 = 7;
    /// The zero-divide mask (ZM).
    pub const ZM: u32 = 1 << 9;
    /// The power-up value: every exception masked, round to nearest, no flags.
    pub const DEFAULT: u32 = 0x1f80;

    /// The exception flags of `raised` whose exceptions `mxcsr` leaves unmasked: what makes
    /// a SIMD floating-point instruction raise #XM (or #UD with CR4.OSXMMEXCPT clear).
    pub const fn unmasked(mxcsr: u32, raised: u32) -> u32 {
        raised & FLAGS & !(mxcsr >> MASK_SHIFT)
    }
}

/// Segment descriptors (SDM Vol. 3A 3.4.5, 3.5, 8.2.3).
pub mod desc {
    /// System descriptor type: an LDT.
    pub const LDT: u64 = 2;
    /// System descriptor type: an available 64-bit TSS.
    pub const TSS_AVAILABLE: u64 = 9;
    /// System descriptor type: a busy 64-bit TSS (LTR sets this bit of the type).
    pub const TSS_BUSY: u64 = 0xb;
    /// Where the type field starts in a descriptor's low word.
    pub const TYPE_SHIFT: u32 = 40;
    /// A TSS descriptor's busy flag in its low word: [`TSS_AVAILABLE`] turned [`TSS_BUSY`].
    pub const TSS_BUSY_FLAG: u64 = (TSS_BUSY ^ TSS_AVAILABLE) << TYPE_SHIFT;

    /// A 64-bit system descriptor (16 bytes, as its two words): `base`, a byte-granular
    /// `limit` (20 bits), type `kind`, DPL 0, present or not.
    pub const fn system(base: u64, limit: u32, kind: u64, present: bool) -> [u64; 2] {
        let limit = limit as u64;
        let low = (limit & 0xffff)
            | (base & 0xff_ffff) << 16
            | kind << TYPE_SHIFT
            | (present as u64) << 47
            | ((limit >> 16) & 0xf) << 48
            | ((base >> 24) & 0xff) << 56;
        [low, base >> 32]
    }
}

/// Exception vectors.
pub mod vector {
    /// Divide error.
    pub const DE: u8 = 0;
    /// Debug.
    pub const DB: u8 = 1;
    /// Non-maskable interrupt.
    pub const NMI: u8 = 2;
    /// Breakpoint.
    pub const BP: u8 = 3;
    /// Invalid opcode.
    pub const UD: u8 = 6;
    /// Double fault.
    pub const DF: u8 = 8;
    /// General protection.
    pub const GP: u8 = 13;
    /// Page fault.
    pub const PF: u8 = 14;
    /// x87 floating-point error.
    pub const MF: u8 = 16;
    /// Alignment check.
    pub const AC: u8 = 17;
    /// SIMD floating-point exception.
    pub const XM: u8 = 19;
    /// Device not available.
    pub const NM: u8 = 7;
    /// Segment not present.
    pub const NP: u8 = 11;
    /// Stack-segment fault.
    pub const SS: u8 = 12;
    /// Machine check.
    pub const MC: u8 = 18;
    /// First vector that is not an exception.
    pub const FIRST_INTERRUPT: u8 = 32;
    /// Whether `v` is an exception raised by the instruction at the saved RIP (not an
    /// interrupt, NMI or machine check, which can arrive at any instruction).
    pub const fn is_synchronous(v: u8) -> bool {
        v < FIRST_INTERRUPT && v != NMI && v != MC
    }
    /// Whether the CPU pushes an error code for exception `v`.
    pub const fn has_error_code(v: u8) -> bool {
        matches!(v, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
    }
}

/// Error code of an exception caused by an `int n` (or an event) through IDT gate `v`: the IDT
/// flag (bit 1) and the vector as the selector index (SDM vol. 3 §6.13).
pub const fn idt_error_code(v: u8) -> u32 {
    ((v as u32) << 3) | 2
}

/// Page-fault error-code bits.
pub mod pfec {
    /// The page was present (protection violation).
    pub const P: u32 = 1 << 0;
    /// Write access.
    pub const W: u32 = 1 << 1;
    /// Access from CPL3.
    pub const U: u32 = 1 << 2;
    /// Reserved bit set.
    pub const RSVD: u32 = 1 << 3;
    /// Instruction fetch.
    pub const I: u32 = 1 << 4;
    /// Protection-key violation.
    pub const PK: u32 = 1 << 5;
}

/// CPUID feature bits, as (leaf, register index in EAX..EDX order, bit).
pub mod cpuid {
    /// A feature flag: `(leaf, register, bit)` with register 0 = EAX .. 3 = EDX.
    pub type Feature = (u32, usize, u32);
    /// CPUID.1:ECX.x2APIC.
    pub const X2APIC: Feature = (1, 2, 21);
    /// CPUID.1:ECX.TSC-Deadline.
    pub const TSC_DEADLINE: Feature = (1, 2, 24);
    /// First hypervisor leaf (signature).
    pub const HYPERVISOR_BASE: u32 = 0x4000_0000;
}

#[cfg(test)]
mod tests {
    use super::desc;

    #[test]
    fn a_system_descriptor_splits_its_base_and_limit() {
        let [low, high] = desc::system(0xffff_8000_1234_5678, 0x1_0067, desc::TSS_AVAILABLE, true);
        assert_eq!(low & 0xffff, 0x0067, "limit 15:0");
        assert_eq!((low >> 16) & 0xff_ffff, 0x34_5678, "base 23:0");
        assert_eq!((low >> 40) & 0xff, 0x89, "type 9, DPL 0, present");
        assert_eq!((low >> 48) & 0xf, 1, "limit 19:16");
        assert_eq!(low >> 56, 0x12, "base 31:24");
        assert_eq!(high, 0xffff_8000, "base 63:32");
        let [absent, _] = desc::system(0, 0x67, desc::LDT, false);
        assert_eq!((absent >> 40) & 0xff, 0x02);
        assert_eq!(
            desc::system(0, 0x67, desc::TSS_AVAILABLE, true)[0] | desc::TSS_BUSY_FLAG,
            desc::system(0, 0x67, desc::TSS_BUSY, true)[0]
        );
    }
}
