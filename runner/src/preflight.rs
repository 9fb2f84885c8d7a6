//! Host preflight, in the style of `virt-host-validate`: can the suite run here, and what kind
//! of host is it? [`gather`] reads only what an unprivileged process may (`/dev/kvm`, `/proc`,
//! `/sys/module/*/parameters`, `/sys/devices/system/cpu/vulnerabilities`) and changes nothing;
//! [`checks`] turns those facts into the table, so it can be tested with any facts.

use crate::detect::{HostInfo, KvmStatus};

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Fine for the suite.
    Pass,
    /// The suite runs, with a limitation the detail names.
    Warn,
    /// The suite cannot run here (the detail says why).
    Fail,
    /// A fact, for the record.
    Info,
}

impl Status {
    /// Label in the table.
    pub const fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Info => "INFO",
        }
    }
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What is checked.
    pub name: &'static str,
    /// The outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
}

/// The facts the checks judge.
#[derive(Clone, Debug)]
pub struct Facts {
    /// Host detection (`/dev/kvm`, KVM module, PVM dialect).
    pub host: HostInfo,
    /// CPU flags from `/proc/cpuinfo`.
    pub cpu_flags: Vec<String>,
    /// `/proc/cmdline`.
    pub cmdline: String,
    /// `/sys/devices/system/cpu/vulnerabilities/meltdown` (`None`: unreadable).
    pub meltdown: Option<String>,
    /// The KVM modules' parameters as `module.name=value`.
    pub module_params: Vec<String>,
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Reads the facts of this machine.
pub fn gather() -> Facts {
    let cpu_flags = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("flags"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.split_whitespace().map(str::to_string).collect())
        })
        .unwrap_or_default();
    let mut module_params = Vec::new();
    for module in ["kvm_pvm", "kvm_intel", "kvm_amd"] {
        let dir = std::path::Path::new("/sys/module")
            .join(module)
            .join("parameters");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
        names.sort();
        for n in names {
            let name = n.to_string_lossy();
            if let Some(v) = read(&dir.join(&*name).to_string_lossy()) {
                module_params.push(format!("{module}.{name}={v}"));
            }
        }
    }
    Facts {
        host: crate::detect::detect(),
        cpu_flags,
        cmdline: read("/proc/cmdline").unwrap_or_default(),
        meltdown: read("/sys/devices/system/cpu/vulnerabilities/meltdown"),
        module_params,
    }
}

/// The table for `f`.
pub fn checks(f: &Facts) -> Vec<Check> {
    let mut out = Vec::new();
    let mut row = |name, status, detail: String| {
        out.push(Check {
            name,
            status,
            detail,
        })
    };
    match &f.host.kvm {
        KvmStatus::Usable => row("/dev/kvm", Status::Pass, "opened".into()),
        KvmStatus::Unusable(why) => row("/dev/kvm", Status::Fail, why.clone()),
    }
    let backend = f.host.kvm_backend.as_str();
    match backend {
        "kvm-pvm" => row(
            "KVM vendor module",
            Status::Pass,
            "kvm-pvm (a PVM host)".into(),
        ),
        "kvm-intel" | "kvm-amd" => row(
            "KVM vendor module",
            Status::Warn,
            format!("{backend}: hardware virtualization, not a PVM host (hvm64 only)"),
        ),
        _ => row(
            "KVM vendor module",
            Status::Fail,
            "no KVM vendor module loaded".into(),
        ),
    }
    row(
        "module parameters",
        Status::Info,
        if f.module_params.is_empty() {
            "none readable".into()
        } else {
            f.module_params.join(" ")
        },
    );
    match f.host.dialect {
        Some(d) => row(
            "PVM dialect",
            Status::Pass,
            format!("{} ({})", d.name(), f.host.dialect_evidence),
        ),
        None => row(
            "PVM dialect",
            Status::Warn,
            format!("none: {}", f.host.dialect_evidence),
        ),
    }
    let has = |flag: &str| f.cpu_flags.iter().any(|x| x == flag);
    // What PVM host modules refuse to load without (notes §8.1), and PCID, which v2 requires.
    let missing: Vec<&str> = ["fsgsbase", "rdtscp", "cx16"]
        .into_iter()
        .filter(|x| !has(x))
        .collect();
    if missing.is_empty() {
        row("CPU features", Status::Pass, "fsgsbase rdtscp cx16".into());
    } else {
        row(
            "CPU features",
            Status::Fail,
            format!(
                "missing {} (a PVM host module needs them)",
                missing.join(" ")
            ),
        );
    }
    if has("pcid") {
        row("PCID", Status::Pass, "present".into());
    } else {
        row(
            "PCID",
            Status::Warn,
            "absent: the v2 ABI requires PCID".into(),
        );
    }
    match f.meltdown.as_deref() {
        Some(m) if m.contains("PTI") => row(
            "KPTI",
            Status::Warn,
            format!("{m}: PVM hosts boot with pti=off"),
        ),
        Some(m) => row("KPTI", Status::Pass, format!("off ({m})")),
        None => row(
            "KPTI",
            Status::Info,
            "unknown (vulnerabilities file unreadable)".into(),
        ),
    }
    let words: Vec<&str> = f.cmdline.split_whitespace().collect();
    let flags: Vec<&str> = ["pti=off", "nokaslr", "nopti"]
        .into_iter()
        .filter(|w| words.contains(w))
        .collect();
    row(
        "kernel command line",
        Status::Info,
        if flags.is_empty() {
            "no pti=off/nokaslr".into()
        } else {
            flags.join(" ")
        },
    );
    if has("vmx") || has("svm") {
        row(
            "nested virtualization",
            Status::Info,
            "VMX/SVM exposed: hardware KVM would work here too".into(),
        );
    } else {
        row(
            "nested virtualization",
            Status::Info,
            "no VMX/SVM: the situation PVM is for".into(),
        );
    }
    out
}

/// Why the suite cannot run, if a check failed.
pub fn blocking(checks: &[Check]) -> Option<String> {
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    (!failed.is_empty()).then(|| failed.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(backend: &str, flags: &str, meltdown: &str) -> Facts {
        Facts {
            host: HostInfo {
                kernel: "6.12".into(),
                cpu: "cpu".into(),
                kvm_backend: backend.into(),
                kvm: KvmStatus::Usable,
                dialect: Some(abi::env::Dialect::Local),
                dialect_evidence: "MSR".into(),
                cpuid_differs: Vec::new(),
            },
            cpu_flags: flags.split_whitespace().map(str::to_string).collect(),
            cmdline: "console=ttyS0 pti=off".into(),
            meltdown: Some(meltdown.into()),
            module_params: vec!["kvm_pvm.x=1".into()],
        }
    }

    fn status(c: &[Check], name: &str) -> Status {
        c.iter().find(|c| c.name == name).expect(name).status
    }

    #[test]
    fn a_pvm_host_passes_and_says_what_it_is() {
        let c = checks(&facts(
            "kvm-pvm",
            "fsgsbase rdtscp cx16 pcid",
            "Not affected",
        ));
        assert_eq!(blocking(&c), None);
        assert_eq!(status(&c, "KVM vendor module"), Status::Pass);
        assert_eq!(status(&c, "PVM dialect"), Status::Pass);
        assert_eq!(status(&c, "KPTI"), Status::Pass);
    }

    #[test]
    fn missing_features_kpti_and_no_kvm_are_reported() {
        let mut f = facts("none", "rdtscp", "Mitigation: PTI");
        f.host.kvm = KvmStatus::Unusable("No such file".into());
        let c = checks(&f);
        assert_eq!(status(&c, "CPU features"), Status::Fail);
        assert_eq!(status(&c, "KPTI"), Status::Warn);
        assert_eq!(status(&c, "PCID"), Status::Warn);
        let why = blocking(&c).expect("blocked");
        assert!(
            why.contains("/dev/kvm") && why.contains("fsgsbase"),
            "{why}"
        );
    }
}
