//! Fault switches: each breaks one rule of the model the way a buggy host would, so that a run
//! with the switch on shows which cases notice (`cargo xtask mutants-model`). The switches are
//! declared once, in [`Fault::ALL`]; the engine and the generation rules ask
//! [`Faults::on`].

/// One fault switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// #PF delivered with CR2 off by one page.
    WrongCr2,
    /// #PF error code without the W bit on a write fault.
    PfErrcodeNoWrite,
    /// #PF error code without the U bit for a fault in user mode.
    PfErrcodeNoUser,
    /// The interrupt flag is left set when an event is delivered in supervisor mode.
    IfNotClearedOnDelivery,
    /// A supervisor-mode event is delivered at the user-mode entry (+0).
    SupervisorEventAtUserEntry,
    /// A user-mode event is delivered at the supervisor entry (+512).
    UserEventAtSupervisorEntry,
    /// ERETU does not load the user GS base from the PVCS.
    EretuIgnoresUserGsbase,
    /// ERETU does not load R11 from the PVCS.
    EretuIgnoresR11,
    /// The PVCS gets the interrupted RIP plus one.
    PvcsRipOffByOne,
    /// The PVCS's saved RFLAGS lose the arithmetic flags.
    PvcsEflagsLost,
    /// The event vector is written without the STD bit.
    NoStdBit,
    /// WRMSR of MSR_PVM_VCPU_STRUCT accepts an address that is not page aligned.
    VcpuStructUnaligned,
    /// WRMSR of MSR_PVM_EVENT_ENTRY accepts a non-canonical entry.
    EventEntryNonCanonical,
    /// A hypercall with an unknown number returns 0 instead of -ENOSYS.
    UnknownHypercallSucceeds,
    /// PVM_HC_WRMSR of an unknown MSR returns 0.
    HcWrmsrAcceptsUnknown,
    /// PVM_HC_RDMSR returns the value plus one.
    HcRdmsrWrong,
    /// TLB_INVLPG does not flush.
    InvlpgKeepsStale,
    /// TLB_FLUSH does not flush.
    TlbFlushKeepsStale,
    /// A CR3 load does not flush the TLB.
    Cr3KeepsStale,
    /// User mode may access supervisor (U/S=0) pages.
    UserReadsSupervisor,
    /// Writes to read-only pages succeed in supervisor mode.
    IgnoreWriteProtect,
    /// Supervisor writes honour read-only pages even with the guest's CR0.WP clear.
    Cr0WpForced,
    /// LTR loads a busy TSS as if it were available.
    LtrLoadsBusy,
    /// LLDT of an LDT descriptor is stored instead of shutting the vCPU down.
    LdtStored,
    /// NX is not enforced on fetches.
    IgnoreNx,
    /// Accessed bits are not set by the page walk.
    NoAccessedBit,
    /// Dirty bits are not set on writes.
    NoDirtyBit,
    /// The synthetic CPUID returns a wrong PVM signature.
    WrongSignature,
    /// `hlt` returns at once even without an interrupt.
    HltReturnsAtOnce,
    /// Port writes keep only their low byte (OUT of 2 and 4 bytes).
    OutTruncated,
    /// A #GP from a privileged instruction in user mode is delivered as #UD.
    UserGpAsUd,
    /// The error code of a #GP is delivered as 1 instead of 0.
    GpErrcodeNonZero,
    /// RDMSR of the TSC is served as zero.
    TscMsrZero,
    /// RFC v1: the supervisor event frame is written without the red zone.
    FrameWithoutRedzone,
    /// An NMI is delivered while the previous one is being handled (RFC: KVM's NMI mask is
    /// never set; v2: an NMI in supervisor mode ignores the vector word's high byte).
    NmiNotHeldOff,
    /// The #GP of a segment-register load carries 0 instead of the selector.
    SelectorErrcodeZero,
    /// An 8-byte MMIO access reaches the VMM as two 4-byte exits.
    MmioSplitWide,
    /// The page walk ignores address bits at or above MAXPHYADDR (no reserved-bit #PF).
    IgnoreMaxphyaddr,
    /// PVM_HC_LOAD_TLS does not touch the host GDT.
    LoadTlsIgnored,
    /// A deleted memslot stays mapped as memory.
    MemslotKeptAfterRemove,
    /// An EOI does not bring back a level-triggered I/O APIC pin that is still high.
    IoapicLevelNotReasserted,
    /// `int n` from the guest kernel is delivered as vector n, as if the host's IDT gate had
    /// DPL 3 (instead of #GP(n*8+2)).
    IntNThroughGuestGate,
    /// Port I/O from guest user mode reaches the VMM like the kernel's (as with an I/O bitmap
    /// or a hardware IOPL the guest controls).
    UserIoAllowed,
    /// v2: the host keeps KVM's NMI mask from an NMI's delivery to ERETU, as the RFC hosts do.
    V2NmiMasked,
    /// A SYSCALL from guest user mode with a PVM hypercall number in RAX is served as a
    /// hypercall (and user code goes on) instead of reaching the guest kernel's LSTAR.
    UserSyscallIsHypercall,
    /// RFLAGS.AC has no effect: no #AC for a misaligned access (as on QEMU's TCG).
    AlignmentUnchecked,
    /// An unmasked SIMD floating-point exception is not raised (as on QEMU's TCG).
    SimdExceptionLost,
    /// An unmasked SIMD floating-point exception is #UD while the guest's CR4.OSXMMEXCPT is
    /// clear, as if the guest's CR4 were the hardware's.
    XmAsUdByGuestCr4,
}

impl Fault {
    /// Every switch, in `--list-faults` order.
    pub const ALL: [Fault; 48] = [
        Fault::WrongCr2,
        Fault::PfErrcodeNoWrite,
        Fault::PfErrcodeNoUser,
        Fault::IfNotClearedOnDelivery,
        Fault::SupervisorEventAtUserEntry,
        Fault::UserEventAtSupervisorEntry,
        Fault::EretuIgnoresUserGsbase,
        Fault::EretuIgnoresR11,
        Fault::PvcsRipOffByOne,
        Fault::PvcsEflagsLost,
        Fault::NoStdBit,
        Fault::VcpuStructUnaligned,
        Fault::EventEntryNonCanonical,
        Fault::UnknownHypercallSucceeds,
        Fault::HcWrmsrAcceptsUnknown,
        Fault::HcRdmsrWrong,
        Fault::InvlpgKeepsStale,
        Fault::TlbFlushKeepsStale,
        Fault::Cr3KeepsStale,
        Fault::UserReadsSupervisor,
        Fault::IgnoreWriteProtect,
        Fault::Cr0WpForced,
        Fault::LtrLoadsBusy,
        Fault::LdtStored,
        Fault::IgnoreNx,
        Fault::NoAccessedBit,
        Fault::NoDirtyBit,
        Fault::WrongSignature,
        Fault::HltReturnsAtOnce,
        Fault::OutTruncated,
        Fault::UserGpAsUd,
        Fault::GpErrcodeNonZero,
        Fault::TscMsrZero,
        Fault::FrameWithoutRedzone,
        Fault::NmiNotHeldOff,
        Fault::SelectorErrcodeZero,
        Fault::MmioSplitWide,
        Fault::IgnoreMaxphyaddr,
        Fault::LoadTlsIgnored,
        Fault::MemslotKeptAfterRemove,
        Fault::IoapicLevelNotReasserted,
        Fault::IntNThroughGuestGate,
        Fault::UserIoAllowed,
        Fault::V2NmiMasked,
        Fault::UserSyscallIsHypercall,
        Fault::AlignmentUnchecked,
        Fault::SimdExceptionLost,
        Fault::XmAsUdByGuestCr4,
    ];

    /// Name on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Fault::WrongCr2 => "wrong-cr2",
            Fault::PfErrcodeNoWrite => "pf-errcode-no-write",
            Fault::PfErrcodeNoUser => "pf-errcode-no-user",
            Fault::IfNotClearedOnDelivery => "if-not-cleared-on-delivery",
            Fault::SupervisorEventAtUserEntry => "supervisor-event-at-user-entry",
            Fault::UserEventAtSupervisorEntry => "user-event-at-supervisor-entry",
            Fault::EretuIgnoresUserGsbase => "eretu-ignores-user-gsbase",
            Fault::EretuIgnoresR11 => "eretu-ignores-r11",
            Fault::PvcsRipOffByOne => "pvcs-rip-off-by-one",
            Fault::PvcsEflagsLost => "pvcs-eflags-lost",
            Fault::NoStdBit => "no-std-bit",
            Fault::VcpuStructUnaligned => "vcpu-struct-unaligned",
            Fault::EventEntryNonCanonical => "event-entry-non-canonical",
            Fault::UnknownHypercallSucceeds => "unknown-hypercall-succeeds",
            Fault::HcWrmsrAcceptsUnknown => "hc-wrmsr-accepts-unknown",
            Fault::HcRdmsrWrong => "hc-rdmsr-wrong",
            Fault::InvlpgKeepsStale => "invlpg-keeps-stale",
            Fault::TlbFlushKeepsStale => "tlb-flush-keeps-stale",
            Fault::Cr3KeepsStale => "cr3-keeps-stale",
            Fault::UserReadsSupervisor => "user-reads-supervisor",
            Fault::IgnoreWriteProtect => "ignore-write-protect",
            Fault::Cr0WpForced => "cr0-wp-forced",
            Fault::LtrLoadsBusy => "ltr-loads-busy",
            Fault::LdtStored => "ldt-stored",
            Fault::IgnoreNx => "ignore-nx",
            Fault::NoAccessedBit => "no-accessed-bit",
            Fault::NoDirtyBit => "no-dirty-bit",
            Fault::WrongSignature => "wrong-signature",
            Fault::HltReturnsAtOnce => "hlt-returns-at-once",
            Fault::OutTruncated => "out-truncated",
            Fault::UserGpAsUd => "user-gp-as-ud",
            Fault::GpErrcodeNonZero => "gp-errcode-non-zero",
            Fault::TscMsrZero => "tsc-msr-zero",
            Fault::FrameWithoutRedzone => "frame-without-redzone",
            Fault::NmiNotHeldOff => "nmi-not-held-off",
            Fault::SelectorErrcodeZero => "selector-errcode-zero",
            Fault::MmioSplitWide => "mmio-split-wide",
            Fault::IgnoreMaxphyaddr => "ignore-maxphyaddr",
            Fault::LoadTlsIgnored => "load-tls-ignored",
            Fault::MemslotKeptAfterRemove => "memslot-kept-after-remove",
            Fault::IoapicLevelNotReasserted => "ioapic-level-not-reasserted",
            Fault::IntNThroughGuestGate => "int-n-through-guest-gate",
            Fault::UserIoAllowed => "user-io-allowed",
            Fault::V2NmiMasked => "v2-nmi-masked",
            Fault::UserSyscallIsHypercall => "user-syscall-is-hypercall",
            Fault::AlignmentUnchecked => "alignment-check-ignored",
            Fault::SimdExceptionLost => "simd-exception-lost",
            Fault::XmAsUdByGuestCr4 => "xm-as-ud-by-guest-cr4",
        }
    }

    /// Parses [`Fault::name`].
    pub fn from_name(s: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == s)
    }
}

/// The switches that are on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults(u64);

impl Faults {
    /// No switch on.
    pub const NONE: Faults = Faults(0);

    /// `self` with `f` on.
    pub fn with(self, f: Fault) -> Faults {
        Faults(self.0 | 1 << f as u32)
    }

    /// Whether `f` is on.
    pub fn on(self, f: Fault) -> bool {
        self.0 & (1 << f as u32) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_parse_back() {
        let mut seen = std::collections::HashSet::new();
        for f in Fault::ALL {
            assert!(seen.insert(f.name()), "{}", f.name());
            assert_eq!(Fault::from_name(f.name()), Some(f));
            assert!(Faults::NONE.with(f).on(f));
        }
        assert_eq!(Fault::from_name("nope"), None);
    }
}
