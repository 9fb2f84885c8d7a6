//! Host detection: kernel, CPU, KVM backend, and which PVM dialect the host speaks.
//!
//! Dialect evidence, in order:
//! 1. the local dialect's signature MSR (0x4b564d11 reads "PVM" through `KVM_GET_MSRS`);
//! 2. the upstream signature: `KVM_GET_SUPPORTED_CPUID` leaf 0x40000000 EAX >= 0x40000002 and
//!    leaf 0x40000002 EBX = "PVM"; the generation then follows from which PVM MSRs
//!    `KVM_GET_MSR_INDEX_LIST` lists (v1: SWITCH_CR3 at 0x4b564df7; mid: 0x4b564df2/df3 without
//!    df7; v2: neither);
//! 3. otherwise no PVM dialect (a hardware-virtualization KVM host, say).

use abi::env::Dialect;
use abi::upstream;

use crate::kvm::Kvm;
use crate::vm::VmOptions;

/// Whether `/dev/kvm` can run guests here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvmStatus {
    /// Usable.
    Usable,
    /// Not usable, with the reason.
    Unusable(String),
}

/// What the suite knows about the host it runs on.
#[derive(Clone, Debug)]
pub struct HostInfo {
    /// `uname -r`.
    pub kernel: String,
    /// CPU model name.
    pub cpu: String,
    /// KVM vendor module: `kvm-pvm`, `kvm-intel`, `kvm-amd` or `none`.
    pub kvm_backend: String,
    /// `/dev/kvm` status.
    pub kvm: KvmStatus,
    /// The PVM dialect, if any.
    pub dialect: Option<Dialect>,
    /// How the dialect was decided.
    pub dialect_evidence: String,
    /// Where the CPU's own CPUID differs from what the VMM configures.
    pub cpuid_differs: Vec<CpuidDiff>,
}

/// A CPUID leaf whose value on the CPU itself (the `cpuid` instruction in this process, what
/// code in hardware ring 3 reads) differs from the one the VMM sets on every vCPU
/// (`KVM_GET_SUPPORTED_CPUID`, [`Kvm::supported_cpuid`]). A host that does not intercept
/// CPUID shows its guests the first (local dialect, docs/local-dialect.md 5.18), so which
/// cases see features the VMM did not offer depends on the machine's CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuidDiff {
    /// Leaf.
    pub function: u32,
    /// Subleaf.
    pub index: u32,
    /// EAX..EDX: the bits that differ.
    pub bits: [u32; 4],
}

/// The CPUID registers' names, EAX to EDX, as [`CpuidDiff`] and conditions on it write them.
pub const CPUID_REGS: [&str; 4] = ["eax", "ebx", "ecx", "edx"];

/// Parses a CPUID leaf written `0xLEAF.SUB` (the leaf in hex, the subleaf in decimal), as
/// [`CpuidDiff`] writes it: `(function, index)`.
pub fn parse_cpuid_leaf(s: &str) -> Option<(u32, u32)> {
    let (function, index) = s.split_once('.')?;
    let function = u32::from_str_radix(function.strip_prefix("0x")?, 16).ok()?;
    Some((function, index.parse().ok()?))
}

impl std::fmt::Display for CpuidDiff {
    /// `0x80000001.0: eax 0x0 ebx 0x0 ecx 0x60 edx 0xc000000`, which [`CpuidDiff::parse`]
    /// reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}.{}:", self.function, self.index)?;
        for (name, bits) in CPUID_REGS.iter().zip(self.bits) {
            write!(f, " {name} {bits:#x}")?;
        }
        Ok(())
    }
}

impl CpuidDiff {
    /// Parses [`CpuidDiff`]'s `Display` form.
    pub fn parse(s: &str) -> Option<Self> {
        let (leaf, regs) = s.split_once(": ")?;
        let (function, index) = parse_cpuid_leaf(leaf)?;
        let words: Vec<&str> = regs.split_whitespace().collect();
        let mut bits = [0u32; 4];
        if words.len() != 8 {
            return None;
        }
        for (i, name) in CPUID_REGS.iter().enumerate() {
            if words[2 * i] != *name {
                return None;
            }
            bits[i] = u32::from_str_radix(words[2 * i + 1].strip_prefix("0x")?, 16).ok()?;
        }
        Some(Self {
            function,
            index,
            bits,
        })
    }
}

/// The leaves of `kvm`'s configured CPUID whose value on this CPU differs ([`CpuidDiff`]).
/// Per-CPU fields (APIC IDs) may differ too: a condition names the bits it means.
pub fn cpuid_differences(kvm: &Kvm) -> Vec<CpuidDiff> {
    kvm.supported_cpuid()
        .as_slice()
        .iter()
        .filter_map(|e| {
            // Hypervisor leaves are the VMM's own; the CPU answers them for the outer one.
            if e.function & 0xf000_0000 == 0x4000_0000 {
                return None;
            }
            let r = core::arch::x86_64::__cpuid_count(e.function, e.index);
            let bits = [r.eax ^ e.eax, r.ebx ^ e.ebx, r.ecx ^ e.ecx, r.edx ^ e.edx];
            (bits != [0; 4]).then_some(CpuidDiff {
                function: e.function,
                index: e.index,
                bits,
            })
        })
        .collect()
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn backend() -> String {
    for (module, name) in [
        ("kvm_pvm", "kvm-pvm"),
        ("kvm_intel", "kvm-intel"),
        ("kvm_amd", "kvm-amd"),
    ] {
        if std::path::Path::new("/sys/module").join(module).exists() {
            return name.into();
        }
    }
    "none".into()
}

/// Detects the host. Never fails: what cannot be found out is reported as such.
pub fn detect() -> HostInfo {
    let mut info = HostInfo {
        kernel: read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into()),
        cpu: cpu_model(),
        kvm_backend: backend(),
        kvm: KvmStatus::Usable,
        dialect: None,
        dialect_evidence: String::new(),
        cpuid_differs: Vec::new(),
    };
    let kvm = match Kvm::open() {
        Ok(k) => k,
        Err(e) => {
            info.kvm = KvmStatus::Unusable(e.to_string());
            info.dialect_evidence = "no usable /dev/kvm".into();
            return info;
        }
    };
    let (dialect, evidence) = dialect_of(&kvm);
    info.dialect = dialect;
    info.dialect_evidence = evidence;
    info.cpuid_differs = cpuid_differences(&kvm);
    info
}

/// Decides the dialect of an open KVM (see the module documentation).
pub fn dialect_of(kvm: &Kvm) -> (Option<Dialect>, String) {
    let local = kvm
        .create_machine(&VmOptions {
            ram: 2 * abi::layout::PAGE_SIZE,
            ..VmOptions::default()
        })
        .and_then(|m| m.get_msr(abi::local::MSR_SIGNATURE));
    if let Ok(Some(v)) = local
        && v == abi::local::SIGNATURE
    {
        return (
            Some(Dialect::Local),
            format!("MSR {:#x} = {v:#x}", abi::local::MSR_SIGNATURE),
        );
    }
    let leaf = |f: u32| {
        kvm.supported_cpuid()
            .as_slice()
            .iter()
            .find(|e| e.function == f)
            .map(|e| [e.eax, e.ebx, e.ecx, e.edx])
    };
    upstream_dialect(leaf, kvm.msr_index_list())
}

/// The upstream generation from the host's CPUID leaves (`leaf(function)` = EAX..EDX of
/// `KVM_GET_SUPPORTED_CPUID`'s entry) and its MSR index list: the 7.x line by CPUID 0x40000200
/// with the "PVM" signature (its registers reported as they are), else the upstream signature
/// at 0x40000002 and the generation from the MSRs (notes §1, §11, §14).
pub fn upstream_dialect(
    leaf: impl Fn(u32) -> Option<[u32; 4]>,
    msrs: &[u32],
) -> (Option<Dialect>, String) {
    if let Some(r) = leaf(upstream::CPUID_7X)
        && r.contains(&upstream::CPUID_SIGNATURE)
    {
        return (
            Some(Dialect::Upstream7x),
            format!(
                "CPUID {:#x} = {:#x} {:#x} {:#x} {:#x} (EAX..EDX: the 7.x line's ABI version and \
                 features)",
                upstream::CPUID_7X,
                r[0],
                r[1],
                r[2],
                r[3]
            ),
        );
    }
    let upstream_sig = leaf(abi::x86::cpuid::HYPERVISOR_BASE)
        .is_some_and(|e| e[0] >= upstream::CPUID_VENDOR_FEATURES)
        && leaf(upstream::CPUID_VENDOR_FEATURES).is_some_and(|e| e[1] == upstream::CPUID_SIGNATURE);
    if !upstream_sig {
        return (
            None,
            "no local signature MSR, no upstream CPUID 0x40000002 signature".into(),
        );
    }
    let has = |m: u32| msrs.contains(&m);
    let generation = if has(upstream::v1::MSR_SWITCH_CR3) {
        Dialect::UpstreamV1
    } else if has(upstream::mid::MSR_SWITCH_CR3) || has(upstream::mid::MSR_SUPERVISOR_RSP) {
        Dialect::UpstreamMid
    } else {
        Dialect::UpstreamV2
    };
    (
        Some(generation),
        "CPUID 0x40000002.EBX = \"PVM\"; generation from the MSR index list".into(),
    )
}

#[cfg(test)]
mod upstream_tests {
    use super::*;

    #[test]
    fn a_cpuid_difference_reads_back() {
        let d = CpuidDiff {
            function: 0x8000_0001,
            index: 0,
            bits: [0, 0, 0x60, 0xc00_0000],
        };
        let text = d.to_string();
        assert_eq!(text, "0x80000001.0: eax 0x0 ebx 0x0 ecx 0x60 edx 0xc000000");
        assert_eq!(CpuidDiff::parse(&text), Some(d));
        assert_eq!(CpuidDiff::parse("0x1.0: eax 0x0"), None);
    }

    fn cpuid(entries: &[(u32, [u32; 4])]) -> impl Fn(u32) -> Option<[u32; 4]> + '_ {
        move |f| entries.iter().find(|(l, _)| *l == f).map(|(_, r)| *r)
    }

    const SIG: [(u32, [u32; 4]); 2] = [
        (0x4000_0000, [upstream::CPUID_VENDOR_FEATURES, 0, 0, 0]),
        (
            upstream::CPUID_VENDOR_FEATURES,
            [0, upstream::CPUID_SIGNATURE, 0, 0],
        ),
    ];

    #[test]
    fn the_generation_follows_from_the_msr_list() {
        let d = |msrs: &[u32]| upstream_dialect(cpuid(&SIG), msrs).0;
        assert_eq!(
            d(&[upstream::v1::MSR_SWITCH_CR3]),
            Some(Dialect::UpstreamV1)
        );
        assert_eq!(
            d(&[upstream::mid::MSR_SWITCH_CR3]),
            Some(Dialect::UpstreamMid)
        );
        assert_eq!(d(&[upstream::MSR_VCPU_STRUCT]), Some(Dialect::UpstreamV2));
        assert_eq!(upstream_dialect(cpuid(&[]), &[]).0, None);
    }

    #[test]
    fn the_7x_line_is_told_by_its_leaf_and_reports_it() {
        let mut entries = SIG.to_vec();
        entries.push((upstream::CPUID_7X, [3, upstream::CPUID_SIGNATURE, 0x11, 0]));
        let (d, why) = upstream_dialect(cpuid(&entries), &[]);
        assert_eq!(d, Some(Dialect::Upstream7x));
        assert!(why.contains("0x40000200 = 0x3"), "{why}");
    }
}
