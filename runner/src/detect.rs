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
            .copied()
    };
    let upstream_sig = leaf(abi::x86::cpuid::HYPERVISOR_BASE)
        .is_some_and(|e| e.eax >= upstream::CPUID_VENDOR_FEATURES)
        && leaf(upstream::CPUID_VENDOR_FEATURES)
            .is_some_and(|e| e.ebx == upstream::CPUID_SIGNATURE);
    if !upstream_sig {
        return (
            None,
            "no local signature MSR, no upstream CPUID 0x40000002 signature".into(),
        );
    }
    let msrs = kvm.msr_index_list().to_vec();
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
