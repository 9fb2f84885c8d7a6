//! Execution environments, host dialects and case areas.
//!
//! An *environment* is how a case's guest runs: as an ordinary x86-64 kernel at CPL0
//! ([`Env::Hvm64`]) or as a paravirtual guest speaking one PVM dialect ([`Env::PvLocal`] and the
//! upstream generations). A *dialect* is what a host speaks; an environment runs only on a host
//! whose dialect matches (see [`Env::required_dialect`]).

/// Execution environment of a case instance.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Env {
    /// Ordinary 64-bit kernel at CPL0 with its own GDT/IDT/TSS. Runs on any KVM host (on the
    /// local PVM host through its emulated-CPL0 path).
    Hvm64 = 0,
    /// The local host's dialect: VIF page registered (MSR 0x4b564d10), `int $0x1b` hypercalls,
    /// CPL0 code runs natively in hardware ring 3.
    PvLocal = 1,
    /// Upstream virt-pvm RFC v1 ABI (Feb 2024).
    PvV1 = 2,
    /// Upstream virt-pvm "mid" ABI generation.
    PvMid = 3,
    /// Upstream virt-pvm v2 ABI generation.
    PvV2 = 4,
}

impl Env {
    /// Every environment, in report order.
    pub const ALL: [Env; 5] = [Env::Hvm64, Env::PvLocal, Env::PvV1, Env::PvMid, Env::PvV2];

    /// Stable name used in case ids (`<case>~<env>`), on the command line and in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Env::Hvm64 => "hvm64",
            Env::PvLocal => "pv-local",
            Env::PvV1 => "pv-v1",
            Env::PvMid => "pv-mid",
            Env::PvV2 => "pv-v2",
        }
    }

    /// Parses [`Env::name`].
    pub fn from_name(s: &str) -> Option<Env> {
        Env::ALL.into_iter().find(|e| e.name() == s)
    }

    /// Decodes the raw discriminant.
    pub fn from_raw(raw: u32) -> Option<Env> {
        Env::ALL.into_iter().find(|e| *e as u32 == raw)
    }

    /// Bit of this environment in a case's environment mask.
    pub const fn bit(self) -> u32 {
        1 << self as u32
    }

    /// Whether the guest library implements this environment: the one declaration of it.
    /// Hosts read it to SKIP instances of environments that have no guest module yet, and
    /// `guest-lib` checks (in a unit test) that it has an environment module for exactly
    /// these.
    pub const fn guest_support(self) -> GuestSupport {
        match self {
            Env::Hvm64 | Env::PvLocal | Env::PvV1 | Env::PvMid | Env::PvV2 => {
                GuestSupport::Implemented
            }
        }
    }

    /// Every environment the guest library implements, in report order.
    pub fn implemented() -> impl Iterator<Item = Env> {
        Env::ALL
            .into_iter()
            .filter(|e| e.guest_support() == GuestSupport::Implemented)
    }

    /// Whether the VMM maps the guest image's code supervisor-only (U/S=0): a host that forces
    /// SMEP (the v2 line does when it has NX) cannot run supervisor code from user pages. The
    /// loader reads this and then also maps the whole image at `layout::USER_IMAGE_ALIAS`,
    /// U/S=1, for user code; the image's data pages and everything else stay U/S=1.
    pub const fn image_supervisor_only(self) -> bool {
        matches!(self, Env::PvV2)
    }

    /// The host dialect this environment needs, or `None` if any KVM host will do.
    pub const fn required_dialect(self) -> Option<Dialect> {
        match self {
            Env::Hvm64 => None,
            Env::PvLocal => Some(Dialect::Local),
            Env::PvV1 => Some(Dialect::UpstreamV1),
            Env::PvMid => Some(Dialect::UpstreamMid),
            Env::PvV2 => Some(Dialect::UpstreamV2),
        }
    }
}

/// Whether the guest library has an environment module for an [`Env`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestSupport {
    /// Implemented: instances run (on a host of the right dialect).
    Implemented,
    /// Not written yet: instances SKIP with that reason.
    NotYet,
}

/// Mask of every environment.
pub const ALL_ENVS: u32 = {
    let mut m = 0;
    let mut i = 0;
    while i < Env::ALL.len() {
        m |= Env::ALL[i].bit();
        i += 1;
    }
    m
};

/// Mask of the upstream virt-pvm generations ([`Env::PvV1`], [`Env::PvMid`], [`Env::PvV2`]).
pub const UPSTREAM_ENVS: u32 = Env::PvV1.bit() | Env::PvMid.bit() | Env::PvV2.bit();

/// Mask of the environments whose guest kernel is promised the x86 rules of ring 0 that ring
/// compression changes: `mov %cs` reads RPL 0, PUSHF shows the interrupt flag CLI/STI set,
/// SGDT/SIDT show the tables the kernel loaded, its own IDT gates and GDT judge `int n` and
/// segment loads, the return to user mode is IRETQ's, the kernel's IOPL and CR0.TS/CR4.TSD
/// take effect in hardware. The upstream PVM ABI replaces each of these rules with one of its
/// own (the guest kernel runs in hardware ring 3 on the host's GDT and IDT, IF=1 and IOPL 0 in
/// hardware, the virtual IF in the PVCS, guest CR0/CR4 writes stored without hardware effect,
/// ERETU: shared/notes/pvm-abi-upstream.md §1, §3, §4.3, §5.1, §6), so the cases of those x86
/// rules apply outside [`UPSTREAM_ENVS`] only, and `abi.upstream.ring.*` cases check the ABI's
/// rules there instead. (The local dialect documents no such rules: where its host breaks an
/// x86 rule, that is a deviation in its expectations file.)
pub const X86_RING0_ENVS: u32 = ALL_ENVS & !UPSTREAM_ENVS;

/// The paravirtual dialect a host speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// The development machines' host (signature MSR 0x4b564d11 = "PVM", VIF MSR 0x4b564d10).
    Local,
    /// Upstream RFC v1 (MSRs 0x4b564df0.., SUPERVISOR_REDZONE present).
    UpstreamV1,
    /// Upstream "mid" generation (MSRs renumbered, REDZONE removed).
    UpstreamMid,
    /// Upstream v2 (no SUPERVISOR_RSP/SWITCH_CR3, new PVCS).
    UpstreamV2,
    /// The 7.x community line: announces an ABI version and a feature bitmap at CPUID
    /// 0x40000200 and drops the linear-range MSR (notes §14). No environment speaks it yet.
    Upstream7x,
}

impl Dialect {
    /// Every dialect.
    pub const ALL: [Dialect; 5] = [
        Dialect::Local,
        Dialect::UpstreamV1,
        Dialect::UpstreamMid,
        Dialect::UpstreamV2,
        Dialect::Upstream7x,
    ];

    /// Parses [`Dialect::name`].
    pub fn from_name(s: &str) -> Option<Dialect> {
        Self::ALL.into_iter().find(|d| d.name() == s)
    }

    /// Stable name used in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Dialect::Local => "local",
            Dialect::UpstreamV1 => "upstream-v1",
            Dialect::UpstreamMid => "upstream-mid",
            Dialect::UpstreamV2 => "upstream-v2",
            Dialect::Upstream7x => "upstream-7x",
        }
    }
}

/// What part of the hypervisor a case exercises.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Area {
    /// Privilege transitions (CPL0 <-> CPL3, privileged instructions).
    Priv = 0,
    /// Paging and shadow paging.
    Paging = 1,
    /// Exceptions and interrupts.
    Interrupts = 2,
    /// Port I/O, MMIO and other exits to the VMM.
    Io = 3,
    /// Paravirtual ABI rules (MSRs, hypercalls).
    Abi = 4,
    /// Isolation between guest user and guest kernel, and between guest and host.
    Isolation = 5,
    /// The suite checking itself.
    Selftest = 6,
    /// Benchmarks (run by `cargo xtask bench`, not by the conformance run).
    Bench = 7,
    /// The CPU contract: CPUID and MSRs as the VMM configured them, the TSC, and CPL0
    /// instruction classes giving architectural results.
    Cpu = 8,
    /// The VMM-facing ABI: what the host does when the VMM (not the guest) touches vCPU
    /// state, PV state and memslots.
    Vmm = 9,
}

impl Area {
    /// Every area, in report order.
    pub const ALL: [Area; 10] = [
        Area::Priv,
        Area::Paging,
        Area::Interrupts,
        Area::Io,
        Area::Cpu,
        Area::Abi,
        Area::Vmm,
        Area::Isolation,
        Area::Selftest,
        Area::Bench,
    ];

    /// Stable name used in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Area::Priv => "priv",
            Area::Paging => "paging",
            Area::Interrupts => "interrupts",
            Area::Io => "io",
            Area::Abi => "abi",
            Area::Isolation => "isolation",
            Area::Selftest => "selftest",
            Area::Bench => "bench",
            Area::Cpu => "cpu",
            Area::Vmm => "vmm",
        }
    }

    /// Decodes the raw discriminant.
    pub fn from_raw(raw: u8) -> Option<Area> {
        Area::ALL.into_iter().find(|a| *a as u8 == raw)
    }

    /// Position in [`Area::ALL`] (report order; the discriminants are stable numbers, not an
    /// order).
    pub fn rank(self) -> usize {
        Area::ALL
            .iter()
            .position(|a| *a == self)
            .unwrap_or(Area::ALL.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for e in Env::ALL {
            assert_eq!(Env::from_name(e.name()), Some(e));
            assert_eq!(Env::from_raw(e as u32), Some(e));
            assert_ne!(e.bit() & ALL_ENVS, 0);
        }
        for a in Area::ALL {
            assert_eq!(Area::from_raw(a as u8), Some(a));
        }
        assert_eq!(Env::from_name("pv-v3"), None);
        assert_eq!(ALL_ENVS, 0b1_1111);
        assert_eq!(X86_RING0_ENVS | UPSTREAM_ENVS, ALL_ENVS);
        assert_eq!(X86_RING0_ENVS & UPSTREAM_ENVS, 0);
        for e in Env::ALL {
            let upstream = matches!(
                e.required_dialect(),
                Some(Dialect::UpstreamV1 | Dialect::UpstreamMid | Dialect::UpstreamV2)
            );
            assert_eq!(UPSTREAM_ENVS & e.bit() != 0, upstream, "{e:?}");
        }
        assert!(Env::implemented().any(|e| e == Env::Hvm64));
    }
}
