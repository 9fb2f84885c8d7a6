//! The CPU contract: what CPUID says is what the VMM configured (`KVM_SET_CPUID2`, read back
//! with the `ConfiguredCpuid` request) from CPL0, from CPL3 and through the environment's PV
//! CPUID; the features a PVM host must hide or show; every architectural MSR accessible
//! exactly when that CPUID offers it (read-only ones refusing writes); the TSC; and the
//! instruction classes a kernel uses giving their architectural results at CPL0.

use guest_lib::abi::case::FLAG_IRQCHIP;
use guest_lib::abi::env::Area;
use guest_lib::abi::x86::msr;
use guest_lib::arch::instr;
use guest_lib::case::Spec;
use guest_lib::exception::Exception;
use guest_lib::user::{self, UserExit};
use guest_lib::{case, case_table, check, check_eq, log, rt, vmm};

// --- CPUID ----------------------------------------------------------------------------------

/// How a CPUID case reads the leaf.
mod via {
    /// The CPUID instruction at CPL0.
    pub const CPL0: u64 = 0;
    /// The CPUID instruction at CPL3.
    pub const CPL3: u64 = 1 << 48;
    /// The environment's paravirtual CPUID.
    pub const PV: u64 = 2 << 48;
}

/// The bits of `leaf`/`sub` that are not the VMM's to fix: KVM updates them at run time from
/// the vCPU's own state (`kvm_update_cpuid_runtime`), or the VMM sets them per vCPU.
/// `[eax, ebx, ecx, edx]` masks of the bits that must match.
const fn static_bits(leaf: u32, sub: u32) -> [u32; 4] {
    match (leaf, sub) {
        // EBX[31:24] initial APIC ID (per vCPU); ECX.OSXSAVE mirrors CR4.OSXSAVE; EDX.APIC
        // mirrors IA32_APIC_BASE.EN.
        (1, _) => [!0, 0x00ff_ffff, !(1 << 27), !(1 << 9)],
        // ECX.OSPKE mirrors CR4.PKE.
        (7, 0) => [!0, !0, !(1 << 4), !0],
        // EBX: XSAVE area size for the XCR0 (and XSS) in force.
        (0xd, 0) | (0xd, 1) => [!0, 0, !0, !0],
        // EDX: x2APIC ID (per vCPU).
        (0xb, _) | (0x1f, _) => [!0, !0, !0, 0],
        _ => [!0; 4],
    }
}

extern "C" fn u_cpuid_half(arg: u64) -> u64 {
    let (leaf, sub, high) = (
        arg as u32,
        ((arg >> 32) & 0x7fff_ffff) as u32,
        arg >> 63 != 0,
    );
    let r = instr::cpuid(leaf, sub);
    if high {
        u64::from(r[2]) | u64::from(r[3]) << 32
    } else {
        u64::from(r[0]) | u64::from(r[1]) << 32
    }
}

fn cpuid_at_cpl3(leaf: u32, sub: u32) -> [u32; 4] {
    let arg = u64::from(leaf) | u64::from(sub) << 32;
    let half = |high: u64| match user::run(u_cpuid_half, arg | high << 63) {
        UserExit::Returned(v) => v,
        other => guest_lib::error!("CPUID at CPL3 ended with {:?}", other),
    };
    let (lo, hi) = (half(0), half(1));
    [lo as u32, (lo >> 32) as u32, hi as u32, (hi >> 32) as u32]
}

/// One CPUID leaf, read one way, against what the VMM configured (static bits only).
fn cpuid_leaf() {
    let p = rt::case_param();
    let (leaf, sub, how) = (p as u32, ((p >> 32) & 0xffff) as u32, p & (0xff << 48));
    let Some(want) = vmm::configured_cpuid(leaf, sub) else {
        guest_lib::skip!("the VMM configured no CPUID leaf {:#x}.{}", leaf, sub);
    };
    let got = match how {
        via::CPL0 => instr::cpuid(leaf, sub),
        via::CPL3 => cpuid_at_cpl3(leaf, sub),
        _ => match guest_lib::env::current().pv_cpuid(leaf, sub) {
            Ok(r) => r,
            Err(guest_lib::env::EnvError::Unsupported(why)) => guest_lib::skip!("{}", why),
            Err(e) => {
                check!(false, "PV CPUID {:#x}.{} failed: {:?}", leaf, sub, e);
                return;
            }
        },
    };
    let mask = static_bits(leaf, sub);
    for (i, reg) in ["EAX", "EBX", "ECX", "EDX"].iter().enumerate() {
        check_eq!(
            got[i] & mask[i],
            want[i] & mask[i],
            "CPUID {:#x}.{} {} (configured {:#x}, seen {:#x})",
            leaf,
            sub,
            reg,
            want[i],
            got[i]
        );
    }
}

const fn cpuid_spec(name: &'static str, summary: &'static str) -> Spec {
    Spec::new(name, Area::Cpu, summary).reqs("KVM-CPUID-1")
}

/// `leaf | sub << 32 | how`.
const fn leaf(leaf: u32, sub: u32, how: u64) -> u64 {
    leaf as u64 | (sub as u64) << 32 | how
}

case_table!(
    cpuid_leaf,
    cpuid_spec,
    [
        (
            "cpu.cpuid.0.cpl0",
            leaf(0, 0, via::CPL0),
            "CPUID.0 at CPL0 is what the VMM configured"
        ),
        (
            "cpu.cpuid.1.cpl0",
            leaf(1, 0, via::CPL0),
            "CPUID.1 at CPL0 is what the VMM configured"
        ),
        (
            "cpu.cpuid.7.cpl0",
            leaf(7, 0, via::CPL0),
            "CPUID.7.0 at CPL0 is what the VMM configured"
        ),
        (
            "cpu.cpuid.d0.cpl0",
            leaf(0xd, 0, via::CPL0),
            "CPUID.0xD.0 at CPL0 is what the VMM configured"
        ),
        (
            "cpu.cpuid.d1.cpl0",
            leaf(0xd, 1, via::CPL0),
            "CPUID.0xD.1 at CPL0 is what the VMM configured"
        ),
        (
            "cpu.cpuid.hv0.cpl0",
            leaf(0x4000_0000, 0, via::CPL0),
            "CPUID.0x40000000 at CPL0 is what the VMM configured"
        ),
        (
            "cpu.cpuid.hv1.cpl0",
            leaf(0x4000_0001, 0, via::CPL0),
            "CPUID.0x40000001 at CPL0 is what the VMM configured"
        ),
        (
            "cpu.cpuid.ext0.cpl0",
            leaf(0x8000_0000, 0, via::CPL0),
            "CPUID.0x80000000 at CPL0 is what the VMM configured"
        ),
        (
            "cpu.cpuid.ext1.cpl0",
            leaf(0x8000_0001, 0, via::CPL0),
            "CPUID.0x80000001 at CPL0 is what the VMM configured"
        ),
        (
            "cpu.cpuid.ext8.cpl0",
            leaf(0x8000_0008, 0, via::CPL0),
            "CPUID.0x80000008 at CPL0 is what the VMM configured"
        ),
        (
            "cpu.cpuid.0.cpl3",
            leaf(0, 0, via::CPL3),
            "CPUID.0 at CPL3 is what the VMM configured"
        ),
        (
            "cpu.cpuid.1.cpl3",
            leaf(1, 0, via::CPL3),
            "CPUID.1 at CPL3 is what the VMM configured"
        ),
        (
            "cpu.cpuid.7.cpl3",
            leaf(7, 0, via::CPL3),
            "CPUID.7.0 at CPL3 is what the VMM configured"
        ),
        (
            "cpu.cpuid.d0.cpl3",
            leaf(0xd, 0, via::CPL3),
            "CPUID.0xD.0 at CPL3 is what the VMM configured"
        ),
        (
            "cpu.cpuid.hv0.cpl3",
            leaf(0x4000_0000, 0, via::CPL3),
            "CPUID.0x40000000 at CPL3 is what the VMM configured"
        ),
        (
            "cpu.cpuid.hv1.cpl3",
            leaf(0x4000_0001, 0, via::CPL3),
            "CPUID.0x40000001 at CPL3 is what the VMM configured"
        ),
        (
            "cpu.cpuid.ext1.cpl3",
            leaf(0x8000_0001, 0, via::CPL3),
            "CPUID.0x80000001 at CPL3 is what the VMM configured"
        ),
        (
            "cpu.cpuid.ext8.cpl3",
            leaf(0x8000_0008, 0, via::CPL3),
            "CPUID.0x80000008 at CPL3 is what the VMM configured"
        ),
        (
            "cpu.cpuid.0.pv",
            leaf(0, 0, via::PV),
            "PV CPUID leaf 0 is what the VMM configured"
        ),
        (
            "cpu.cpuid.1.pv",
            leaf(1, 0, via::PV),
            "PV CPUID leaf 1 is what the VMM configured"
        ),
        (
            "cpu.cpuid.7.pv",
            leaf(7, 0, via::PV),
            "PV CPUID leaf 7.0 is what the VMM configured"
        ),
        (
            "cpu.cpuid.hv0.pv",
            leaf(0x4000_0000, 0, via::PV),
            "PV CPUID leaf 0x40000000 is what the VMM configured"
        ),
        (
            "cpu.cpuid.ext1.pv",
            leaf(0x8000_0001, 0, via::PV),
            "PV CPUID leaf 0x80000001 is what the VMM configured"
        ),
        (
            "cpu.cpuid.ext8.pv",
            leaf(0x8000_0008, 0, via::PV),
            "PV CPUID leaf 0x80000008 is what the VMM configured"
        ),
    ]
);

/// Every entry of the CPUID table the VMM configured, read one way: each must match (static
/// bits only); the log lists the leaves that differ.
fn cpuid_every_leaf() {
    let how = rt::case_param();
    let mut mismatched = 0u32;
    let mut compared = 0u32;
    for index in 0..1024u64 {
        let e = match vmm::request(guest_lib::vmm::Op::ConfiguredCpuidEntry, [index, 0, 0]) {
            Ok(e) => e,
            Err(vmm::VmmError::Status(guest_lib::abi::vmm::Status::Unsupported, _)) => {
                guest_lib::skip!("this VMM does not implement the ConfiguredCpuidEntry request")
            }
            // Past the last entry.
            Err(_) => break,
        };
        let (leaf, sub) = (e[0] as u32, ((e[0] >> 32) & 0x7fff_ffff) as u32);
        let want = [
            e[1] as u32,
            (e[1] >> 32) as u32,
            e[2] as u32,
            (e[2] >> 32) as u32,
        ];
        let got = match how {
            via::CPL0 => instr::cpuid(leaf, sub),
            via::CPL3 => cpuid_at_cpl3(leaf, sub),
            _ => match guest_lib::env::current().pv_cpuid(leaf, sub) {
                Ok(r) => r,
                Err(guest_lib::env::EnvError::Unsupported(why)) => guest_lib::skip!("{}", why),
                Err(err) => {
                    check!(false, "PV CPUID {:#x}.{} failed: {:?}", leaf, sub, err);
                    return;
                }
            },
        };
        let mask = static_bits(leaf, sub);
        compared += 1;
        if (0..4).any(|i| got[i] & mask[i] != want[i] & mask[i]) {
            mismatched += 1;
            log!(
                "{:#x}.{}: configured {:x?}, seen {:x?}",
                leaf,
                sub,
                want,
                got
            );
        }
    }
    check!(compared > 10, "only {} configured CPUID entries", compared);
    check_eq!(
        mismatched,
        0,
        "entries (of {}) that differ from what the VMM configured",
        compared
    );
}

const fn every_leaf_spec(name: &'static str, summary: &'static str) -> Spec {
    Spec::new(name, Area::Cpu, summary)
        .reqs("KVM-CPUID-1")
        .timeout_ms(30_000)
}

case_table!(
    cpuid_every_leaf,
    every_leaf_spec,
    [
        (
            "cpu.cpuid.every_leaf.cpl0",
            via::CPL0,
            "every CPUID entry the VMM configured, read at CPL0, matches"
        ),
        (
            "cpu.cpuid.every_leaf.cpl3",
            via::CPL3,
            "every CPUID entry the VMM configured, read at CPL3, matches"
        ),
        (
            "cpu.cpuid.every_leaf.pv",
            via::PV,
            "every CPUID entry the VMM configured, read through the PV CPUID, matches"
        ),
    ]
);

/// Features a PVM host must hide (it offers no hardware virtualization to its guests) or show
/// (a guest must be able to tell it runs on a hypervisor, and which), in what the VMM
/// configured and in what the guest kernel sees.
fn feature_rule() {
    let p = rt::case_param();
    let (leaf, reg, bit, must_be_set) = match p {
        0 => (1u32, 2usize, 5u32, false), // VMX
        1 => (0x8000_0001, 2, 2, false),  // SVM
        2 => (1, 2, 31, true),            // hypervisor present
        _ => (0x4000_0000, 1, 0, true),   // signature (checked below)
    };
    let configured = vmm::configured_cpuid(leaf, 0).unwrap_or([0; 4]);
    let seen = instr::cpuid(leaf, 0);
    if p == 3 {
        let sig = |r: [u32; 4]| [r[1], r[2], r[3]];
        check_eq!(
            sig(configured),
            [0x4b4d_564b, 0x564b_4d56, 0x0000_004d],
            "configured KVM signature"
        );
        check_eq!(
            sig(seen),
            sig(configured),
            "the hypervisor signature the guest sees"
        );
        check!(
            seen[0] >= 0x4000_0001,
            "CPUID.0x40000000 EAX {:#x} names no further leaf",
            seen[0]
        );
        return;
    }
    let bit_of = |r: [u32; 4]| r[reg] & (1 << bit) != 0;
    check_eq!(
        bit_of(configured),
        must_be_set,
        "the configured CPUID {:#x} bit {} of reg {}",
        leaf,
        bit,
        reg
    );
    check_eq!(
        bit_of(seen),
        must_be_set,
        "the CPUID {:#x} bit {} of reg {} the guest sees",
        leaf,
        bit,
        reg
    );
}

const fn feature_spec(name: &'static str, summary: &'static str) -> Spec {
    Spec::new(name, Area::Cpu, summary).reqs("PVM-CPUID-1")
}

case_table!(
    feature_rule,
    feature_spec,
    [
        (
            "cpu.hides.vmx",
            0,
            "CPUID.1:ECX.VMX is clear (configured and seen)"
        ),
        (
            "cpu.hides.svm",
            1,
            "CPUID.0x80000001:ECX.SVM is clear (configured and seen)"
        ),
        (
            "cpu.shows.hypervisor",
            2,
            "CPUID.1:ECX bit 31 (hypervisor present) is set (configured and seen)"
        ),
        (
            "cpu.shows.kvm_signature",
            3,
            "CPUID.0x40000000 carries the KVM signature (configured and seen)"
        ),
    ]
);

// --- MSRs -----------------------------------------------------------------------------------

/// When an MSR exists, from the configured CPUID.
#[derive(Clone, Copy, Debug)]
enum Offered {
    /// Always (architectural since long, or emulated by KVM for every guest).
    Always,
    /// When CPUID `leaf`.`sub` register `reg` bit `bit` is set (any of two, for vendor pairs).
    Bit(u32, u32, usize, u32),
    /// When either of two bits is set.
    Either((u32, u32, usize, u32), (u32, u32, usize, u32)),
}

/// What a guest may do with an MSR that exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Read it and write the value back.
    ReadWrite,
    /// Read it; a write raises #GP(0).
    ReadOnly,
    /// Write it (with the given value); a read raises #GP(0).
    WriteOnly(u64),
    /// Read it; write it back only through `instr::with_msr` (the library relies on it).
    Borrowed,
}

fn offered(o: Offered) -> bool {
    let bit = |(leaf, sub, reg, bit): (u32, u32, usize, u32)| {
        vmm::configured_cpuid(leaf, sub).is_some_and(|r| r[reg] & (1 << bit) != 0)
    };
    match o {
        Offered::Always => true,
        Offered::Bit(l, s, r, b) => bit((l, s, r, b)),
        Offered::Either(a, b) => bit(a) || bit(b),
    }
}

const fn msr_rule(index: u32) -> Option<(Offered, Access)> {
    use Access::*;
    use Offered::*;
    Some(match index {
        msr::TSC => (Bit(1, 0, 3, 4), ReadOnly),
        msr::APIC_BASE => (Bit(1, 0, 3, 9), Borrowed),
        msr::MTRRCAP => (Bit(1, 0, 3, 12), ReadOnly),
        msr::SYSENTER_CS | msr::SYSENTER_ESP | msr::SYSENTER_EIP => (Bit(1, 0, 3, 11), ReadWrite),
        msr::MCG_CAP => (Bit(1, 0, 3, 14), ReadOnly),
        msr::MCG_STATUS => (Bit(1, 0, 3, 14), ReadWrite),
        msr::PAT => (Bit(1, 0, 3, 16), Borrowed),
        msr::MTRR_DEF_TYPE | msr::MTRR_PHYSBASE0 | msr::MTRR_FIX64K => {
            (Bit(1, 0, 3, 12), ReadWrite)
        }
        msr::EFER => (Bit(0x8000_0001, 0, 3, 29), ReadOnly),
        msr::STAR | msr::LSTAR | msr::CSTAR | msr::SFMASK => (Bit(0x8000_0001, 0, 3, 11), Borrowed),
        msr::FS_BASE => (Bit(0x8000_0001, 0, 3, 29), Borrowed),
        msr::KERNEL_GS_BASE => (Bit(0x8000_0001, 0, 3, 29), ReadWrite),
        msr::TSC_AUX => (Either((0x8000_0001, 0, 3, 27), (7, 0, 2, 22)), ReadWrite),
        msr::TSC_DEADLINE => (Bit(1, 0, 2, 24), ReadWrite),
        msr::TSC_ADJUST => (Bit(7, 0, 1, 1), ReadWrite),
        msr::SPEC_CTRL => (Either((7, 0, 3, 26), (0x8000_0008, 0, 1, 14)), ReadWrite),
        msr::PRED_CMD => (Either((7, 0, 3, 26), (0x8000_0008, 0, 1, 12)), WriteOnly(1)),
        msr::ARCH_CAPABILITIES => (Bit(7, 0, 3, 29), ReadOnly),
        msr::XSS => (Bit(0xd, 1, 0, 3), ReadWrite),
        msr::PERF_CAPABILITIES => (Bit(1, 0, 2, 15), ReadOnly),
        msr::UMWAIT_CONTROL => (Bit(7, 0, 2, 5), ReadWrite),
        msr::PKRS => (Bit(7, 0, 2, 31), ReadWrite),
        msr::FEATURE_CONTROL => (Either((1, 0, 2, 5), (1, 0, 2, 6)), ReadWrite),
        msr::VMX_BASIC => (Bit(1, 0, 2, 5), ReadOnly),
        msr::AMD_VM_CR | msr::AMD_VM_HSAVE_PA => (Bit(0x8000_0001, 0, 2, 2), ReadWrite),
        msr::MISC_ENABLE | msr::AMD_HWCR | msr::DEBUGCTL => (Always, ReadWrite),
        _ => return None,
    })
}

/// One architectural MSR: it exists (RDMSR without #GP) exactly when the configured CPUID
/// offers it; when it does, the accesses its kind allows work (a write of the value just read
/// is accepted and reads back) and the others raise #GP(0); when it does not, RDMSR and WRMSR
/// raise #GP(0).
fn msr_contract() {
    let index = rt::case_param() as u32;
    let Some((when, access)) = msr_rule(index) else {
        guest_lib::error!("no rule for MSR {:#x}", index);
    };
    let exists = offered(when);
    let read = instr::rdmsr_safe(index);
    log!(
        "MSR {:#x}: CPUID offers it: {}; RDMSR {:x?}",
        index,
        exists,
        read
    );
    if !exists {
        check_eq!(
            read,
            Err(Exception::gp(0)),
            "RDMSR of MSR {:#x}, which CPUID does not offer",
            index
        );
        if !matches!(access, Access::Borrowed) {
            check_eq!(
                instr::wrmsr_safe(index, 0),
                Err(Exception::gp(0)),
                "WRMSR of MSR {:#x}",
                index
            );
        }
        return;
    }
    match access {
        Access::ReadWrite => {
            check!(
                read.is_ok(),
                "RDMSR of MSR {:#x}, which CPUID offers: {:?}",
                index,
                read
            );
            if let Ok(v) = read {
                check_eq!(
                    instr::wrmsr_safe(index, v),
                    Ok(()),
                    "WRMSR of MSR {:#x} with its own value",
                    index
                );
                check_eq!(
                    instr::rdmsr_safe(index),
                    Ok(v),
                    "MSR {:#x} after writing its value back",
                    index
                );
            }
        }
        Access::Borrowed => {
            check!(
                read.is_ok(),
                "RDMSR of MSR {:#x}, which CPUID offers: {:?}",
                index,
                read
            );
            if let Ok(v) = read {
                let back = instr::with_msr(index, v, || instr::rdmsr_safe(index));
                check_eq!(
                    back,
                    Ok(Ok(v)),
                    "MSR {:#x} written with its own value",
                    index
                );
            }
        }
        Access::ReadOnly => {
            check!(
                read.is_ok(),
                "RDMSR of MSR {:#x}, which CPUID offers: {:?}",
                index,
                read
            );
            if let Ok(v) = read
                && index != msr::EFER
                && index != msr::TSC
            {
                check_eq!(
                    instr::wrmsr_safe(index, v ^ 1),
                    Err(Exception::gp(0)),
                    "WRMSR of read-only MSR {:#x}",
                    index
                );
                check_eq!(
                    instr::rdmsr_safe(index),
                    Ok(v),
                    "read-only MSR {:#x} afterwards",
                    index
                );
            }
        }
        Access::WriteOnly(v) => {
            check_eq!(
                read,
                Err(Exception::gp(0)),
                "RDMSR of write-only MSR {:#x}",
                index
            );
            check_eq!(
                instr::wrmsr_safe(index, v),
                Ok(()),
                "WRMSR of write-only MSR {:#x}",
                index
            );
        }
    }
}

const fn msr_spec(name: &'static str, summary: &'static str) -> Spec {
    // A realistic VM: with the in-kernel irqchip (APIC MSRs need it).
    Spec::new(name, Area::Cpu, summary)
        .flags(FLAG_IRQCHIP)
        .reqs("X86-MSR-2")
}

case_table!(
    msr_contract,
    msr_spec,
    [
        (
            "cpu.msr.tsc",
            msr::TSC,
            "IA32_TIME_STAMP_COUNTER exists iff CPUID.1:EDX.TSC"
        ),
        (
            "cpu.msr.apic_base",
            msr::APIC_BASE,
            "IA32_APIC_BASE exists iff CPUID.1:EDX.APIC; read/write"
        ),
        (
            "cpu.msr.mtrrcap",
            msr::MTRRCAP,
            "IA32_MTRRCAP exists iff CPUID.1:EDX.MTRR; read-only"
        ),
        (
            "cpu.msr.sysenter_cs",
            msr::SYSENTER_CS,
            "IA32_SYSENTER_CS exists iff CPUID.1:EDX.SEP; read/write"
        ),
        (
            "cpu.msr.sysenter_eip",
            msr::SYSENTER_EIP,
            "IA32_SYSENTER_EIP exists iff CPUID.1:EDX.SEP; read/write"
        ),
        (
            "cpu.msr.mcg_cap",
            msr::MCG_CAP,
            "IA32_MCG_CAP exists iff CPUID.1:EDX.MCA; read-only"
        ),
        (
            "cpu.msr.mcg_status",
            msr::MCG_STATUS,
            "IA32_MCG_STATUS exists iff CPUID.1:EDX.MCA; read/write"
        ),
        (
            "cpu.msr.pat",
            msr::PAT,
            "IA32_PAT exists iff CPUID.1:EDX.PAT; read/write"
        ),
        (
            "cpu.msr.mtrr_def_type",
            msr::MTRR_DEF_TYPE,
            "IA32_MTRR_DEF_TYPE exists iff CPUID.1:EDX.MTRR; read/write"
        ),
        (
            "cpu.msr.mtrr_physbase0",
            msr::MTRR_PHYSBASE0,
            "IA32_MTRR_PHYSBASE0 exists iff CPUID.1:EDX.MTRR; read/write"
        ),
        (
            "cpu.msr.mtrr_fix64k",
            msr::MTRR_FIX64K,
            "IA32_MTRR_FIX64K_00000 exists iff CPUID.1:EDX.MTRR; read/write"
        ),
        (
            "cpu.msr.efer",
            msr::EFER,
            "IA32_EFER exists iff CPUID.0x80000001:EDX.LM"
        ),
        (
            "cpu.msr.star",
            msr::STAR,
            "IA32_STAR exists iff CPUID.0x80000001:EDX.SYSCALL; read/write"
        ),
        (
            "cpu.msr.lstar",
            msr::LSTAR,
            "IA32_LSTAR exists iff CPUID.0x80000001:EDX.SYSCALL; read/write"
        ),
        (
            "cpu.msr.cstar",
            msr::CSTAR,
            "IA32_CSTAR exists iff CPUID.0x80000001:EDX.SYSCALL; read/write"
        ),
        (
            "cpu.msr.sfmask",
            msr::SFMASK,
            "IA32_FMASK exists iff CPUID.0x80000001:EDX.SYSCALL; read/write"
        ),
        (
            "cpu.msr.fs_base",
            msr::FS_BASE,
            "IA32_FS_BASE exists iff CPUID.0x80000001:EDX.LM; read/write"
        ),
        (
            "cpu.msr.kernel_gs_base",
            msr::KERNEL_GS_BASE,
            "IA32_KERNEL_GS_BASE exists iff CPUID.0x80000001:EDX.LM; read/write"
        ),
        (
            "cpu.msr.tsc_aux",
            msr::TSC_AUX,
            "IA32_TSC_AUX exists iff RDTSCP or RDPID is offered"
        ),
        (
            "cpu.msr.tsc_deadline",
            msr::TSC_DEADLINE,
            "IA32_TSC_DEADLINE exists iff CPUID.1:ECX.TSC-Deadline"
        ),
        (
            "cpu.msr.tsc_adjust",
            msr::TSC_ADJUST,
            "IA32_TSC_ADJUST exists iff CPUID.7.0:EBX.TSC_ADJUST"
        ),
        (
            "cpu.msr.spec_ctrl",
            msr::SPEC_CTRL,
            "IA32_SPEC_CTRL exists iff IBRS (Intel or AMD bit) is offered"
        ),
        (
            "cpu.msr.pred_cmd",
            msr::PRED_CMD,
            "IA32_PRED_CMD is write-only iff IBPB is offered"
        ),
        (
            "cpu.msr.arch_capabilities",
            msr::ARCH_CAPABILITIES,
            "IA32_ARCH_CAPABILITIES exists iff CPUID.7.0:EDX bit 29; read-only"
        ),
        (
            "cpu.msr.xss",
            msr::XSS,
            "IA32_XSS exists iff CPUID.0xD.1:EAX.XSAVES"
        ),
        (
            "cpu.msr.perf_capabilities",
            msr::PERF_CAPABILITIES,
            "IA32_PERF_CAPABILITIES exists iff CPUID.1:ECX.PDCM; read-only"
        ),
        (
            "cpu.msr.umwait_control",
            msr::UMWAIT_CONTROL,
            "IA32_UMWAIT_CONTROL exists iff CPUID.7.0:ECX.WAITPKG"
        ),
        (
            "cpu.msr.pkrs",
            msr::PKRS,
            "IA32_PKRS exists iff CPUID.7.0:ECX.PKS"
        ),
        (
            "cpu.msr.feature_control",
            msr::FEATURE_CONTROL,
            "IA32_FEATURE_CONTROL exists iff VMX or SMX is offered"
        ),
        (
            "cpu.msr.vmx_basic",
            msr::VMX_BASIC,
            "IA32_VMX_BASIC exists iff CPUID.1:ECX.VMX"
        ),
        (
            "cpu.msr.vm_hsave_pa",
            msr::AMD_VM_HSAVE_PA,
            "VM_HSAVE_PA exists iff CPUID.0x80000001:ECX.SVM"
        ),
        (
            "cpu.msr.misc_enable",
            msr::MISC_ENABLE,
            "IA32_MISC_ENABLE exists (KVM emulates it); read/write"
        ),
        (
            "cpu.msr.debugctl",
            msr::DEBUGCTL,
            "IA32_DEBUGCTL exists; read/write"
        ),
    ]
);

// --- TSC ------------------------------------------------------------------------------------

/// The TSC never goes backwards: across a thousand reads at CPL0, across an exit to the VMM,
/// and from CPL0 to CPL3 and back.
fn tsc_monotonic() {
    let mut last = instr::rdtsc();
    for i in 0..1000 {
        if i % 100 == 0 {
            let _ = vmm::host_nanos();
        }
        let t = instr::rdtsc();
        check!(
            t >= last,
            "TSC went back from {} to {} (read {})",
            last,
            t,
            i
        );
        last = t;
    }
    extern "C" fn u_rdtsc(_: u64) -> u64 {
        instr::rdtsc()
    }
    let before = instr::rdtsc();
    let user_tsc = match user::run(u_rdtsc, 0) {
        UserExit::Returned(v) => v,
        other => guest_lib::error!("user RDTSC ended with {:?}", other),
    };
    let after = instr::rdtsc();
    check!(
        before <= user_tsc && user_tsc <= after,
        "CPL3 TSC {} not within CPL0's {}..{}",
        user_tsc,
        before,
        after
    );
}
case!(
    tsc_monotonic,
    Spec::new(
        "cpu.tsc.monotonic",
        Area::Cpu,
        "the TSC never goes backwards, across exits and privilege changes"
    )
    .smoke()
    .reqs("X86-TSC-2")
);

/// IA32_TSC_ADJUST (when offered): adding to it moves the TSC by as much.
fn tsc_adjust() {
    if !offered(Offered::Bit(7, 0, 1, 1)) {
        guest_lib::skip!("CPUID does not offer IA32_TSC_ADJUST");
    }
    let step = 1u64 << 40;
    let adj = instr::rdmsr_safe(msr::TSC_ADJUST).unwrap_or(0);
    let t0 = instr::rdtsc();
    check_eq!(
        instr::wrmsr_safe(msr::TSC_ADJUST, adj.wrapping_add(step)),
        Ok(()),
        "WRMSR TSC_ADJUST"
    );
    let t1 = instr::rdtsc();
    log!(
        "TSC_ADJUST reads {:x?} after the write; the TSC moved by {}",
        instr::rdmsr_safe(msr::TSC_ADJUST),
        t1.wrapping_sub(t0)
    );
    check!(
        t1.wrapping_sub(t0) >= step,
        "TSC moved by {} after adding {} to TSC_ADJUST",
        t1.wrapping_sub(t0),
        step
    );
    check!(
        t1.wrapping_sub(t0) < step + (1 << 32),
        "TSC moved by {} (more than the adjustment)",
        t1.wrapping_sub(t0)
    );
    check_eq!(
        instr::wrmsr_safe(msr::TSC_ADJUST, adj),
        Ok(()),
        "restoring TSC_ADJUST"
    );
}
case!(
    tsc_adjust,
    Spec::new(
        "cpu.tsc.adjust",
        Area::Cpu,
        "adding to IA32_TSC_ADJUST moves the TSC by as much"
    )
    .reqs("X86-TSC-2")
);

// --- Instruction classes at CPL0 ------------------------------------------------------------

/// One class of instructions a kernel uses, executed at CPL0: the architectural result (never
/// an emulation failure of the host).
fn insn_class() {
    use guest_lib::arch::insn;
    match rt::case_param() {
        0 => check_eq!(
            insn::string_ops(),
            insn::STRING_OPS_RESULT,
            "REP MOVSB/STOSB/CMPSB/SCASB/LODSB"
        ),
        1 => {
            if !has(1, 0, 2, 13) {
                guest_lib::skip!("CPUID offers no CMPXCHG16B");
            }
            check_eq!(
                insn::atomics(),
                insn::ATOMICS_RESULT,
                "LOCK CMPXCHG/XADD/INC, XCHG, CMPXCHG16B"
            )
        }
        2 => check_eq!(
            insn::bit_ops(),
            insn::BIT_OPS_RESULT,
            "BSF/BSR/BT/BTS/BTR/BSWAP/SHLD/SHRD/ROL"
        ),
        3 => {
            if !has(1, 0, 2, 23) {
                guest_lib::skip!("CPUID offers no POPCNT");
            }
            check_eq!(
                insn::popcnt_tzcnt(),
                insn::POPCNT_TZCNT_RESULT,
                "POPCNT/TZCNT"
            )
        }
        4 => check_eq!(
            insn::mul_div(),
            insn::MUL_DIV_RESULT,
            "MUL/IMUL/DIV/IDIV of 128-bit operands"
        ),
        5 => {
            instr::enable_sse(true);
            check_eq!(
                insn::sse_moves(),
                insn::SSE_MOVES_RESULT,
                "MOVDQU/MOVAPS/MOVQ/PXOR/PADDQ"
            )
        }
        6 => {
            if !has(1, 0, 2, 26) {
                guest_lib::skip!("CPUID offers no XSAVE");
            }
            // The round trip moves XMM0 with MOVDQU: #UD unless CR4.OSFXSR (QEMU showed it).
            instr::enable_sse(true);
            check_eq!(
                insn::xsave_roundtrip(&guest_lib::paging::alloc_frame()),
                Ok(insn::XSAVE_RESULT),
                "XSETBV/XGETBV/XSAVE/XRSTOR of x87+SSE"
            )
        }
        7 => check_eq!(
            insn::fences_and_flushes(),
            insn::FENCES_RESULT,
            "MFENCE/LFENCE/SFENCE/CLFLUSH/PREFETCH"
        ),
        8 => {
            let (a, b) = (instr::rdtsc(), instr::rdtsc());
            check!(b >= a, "RDTSC went backwards: {} then {}", a, b);
        }
        9 => check_eq!(
            insn::stack_and_flags(),
            insn::STACK_FLAGS_RESULT,
            "PUSHF/POPF/LAHF/SAHF/ENTER/LEAVE"
        ),
        10 => check_eq!(
            insn::cmov_setcc(),
            insn::CMOV_SETCC_RESULT,
            "CMOVcc/SETcc/ADC/SBB"
        ),
        11 => {
            if !has(1, 0, 2, 20) {
                guest_lib::skip!("CPUID offers no SSE4.2 CRC32");
            }
            check_eq!(insn::crc32(), insn::CRC32_RESULT, "CRC32 of 8 bytes")
        }
        12 => {
            if !has(1, 0, 2, 30) {
                guest_lib::skip!("CPUID offers no RDRAND");
            }
            check!(
                insn::rdrand_ok(),
                "RDRAND never reported success in 100 tries"
            )
        }
        13 => check_eq!(
            insn::segment_queries(),
            insn::SEGMENT_QUERIES_RESULT,
            "LAR/LSL/VERR/VERW on the kernel selectors"
        ),
        n => guest_lib::error!("no instruction class {}", n),
    }
}

/// Whether the CPUID the guest kernel sees (the instruction, as a kernel reads it) offers a
/// feature: a kernel uses what it sees, so the instruction classes are gated on that.
fn has(leaf: u32, sub: u32, reg: usize, bit: u32) -> bool {
    instr::cpuid(leaf, sub)[reg] & (1 << bit) != 0
}

const fn insn_spec(name: &'static str, summary: &'static str) -> Spec {
    Spec::new(name, Area::Cpu, summary).reqs("PVM-INSN-1")
}

case_table!(
    insn_class,
    insn_spec,
    [
        (
            "cpu.insn.string_ops",
            0,
            "string instructions at CPL0 give their architectural results"
        ),
        (
            "cpu.insn.atomics",
            1,
            "locked atomics (CMPXCHG, XADD, CMPXCHG16B) at CPL0 give their results"
        ),
        (
            "cpu.insn.bit_ops",
            2,
            "bit and shift instructions at CPL0 give their results"
        ),
        (
            "cpu.insn.popcnt_tzcnt",
            3,
            "POPCNT/TZCNT at CPL0 give their results"
        ),
        (
            "cpu.insn.mul_div",
            4,
            "128-bit MUL/DIV at CPL0 give their results"
        ),
        (
            "cpu.insn.sse_moves",
            5,
            "SSE moves and integer ops at CPL0 give their results"
        ),
        (
            "cpu.insn.xsave",
            6,
            "XSETBV/XGETBV/XSAVE/XRSTOR at CPL0 round-trip the SSE state"
        ),
        (
            "cpu.insn.fences_flushes",
            7,
            "fences, CLFLUSH and PREFETCH at CPL0 execute"
        ),
        (
            "cpu.insn.rdtsc",
            8,
            "RDTSC at CPL0 executes and is monotonic"
        ),
        (
            "cpu.insn.stack_flags",
            9,
            "PUSHF/POPF/LAHF/SAHF/ENTER/LEAVE at CPL0 give their results"
        ),
        (
            "cpu.insn.cmov_setcc",
            10,
            "CMOVcc/SETcc/ADC/SBB at CPL0 give their results"
        ),
        ("cpu.insn.crc32", 11, "CRC32 at CPL0 gives its result"),
        ("cpu.insn.rdrand", 12, "RDRAND at CPL0 reports success"),
    ]
);

const fn insn_ring0_spec(name: &'static str, summary: &'static str) -> Spec {
    insn_spec(name, summary).envs(guest_lib::abi::env::X86_RING0_ENVS)
}

case_table!(
    insn_class,
    insn_ring0_spec,
    [(
        "cpu.insn.segment_queries",
        13,
        "LAR/LSL/VERR/VERW at CPL0 describe the kernel's segments"
    )]
);
