//! ABI cases of the upstream v2 generation (the 6.12 line; docs/research/pvm-v2-host-semantics.md):
//! hypercall results and errors, MSR validity checks, the PVCS on event delivery, the TLB
//! hypercalls. They run in `pv-v2` only.

use core::sync::atomic::{AtomicU64, Ordering};

use guest_lib::abi::case::HostCheck;
use guest_lib::abi::env::{Area, Env};
use guest_lib::abi::upstream::{
    CPUID_SIGNATURE, CPUID_VENDOR_FEATURES, HC_BASE, HC_WRMSR_EIO, KVM_ENOSYS, MSR_EVENT_ENTRY,
    MSR_LINEAR_ADDRESS_RANGE, MSR_VCPU_STRUCT, event_flags, hc, range_value, vector_bits,
};
use guest_lib::abi::x86::msr;
use guest_lib::arch::instr;
use guest_lib::case::Spec;
use guest_lib::env::{self, pv_v2};
use guest_lib::exception::{self, Exception, Frame};
use guest_lib::paging::{Pte, PteFlags, set_pte};
use guest_lib::{case, check, check_eq, vmm};

use crate::common::{TEST_VA, remap_fixture, u_plus_one, upstream};

const fn v2(name: &'static str, summary: &'static str) -> Spec {
    Spec::new(name, Area::Abi, summary).envs(Env::PvV2.bit())
}

/// A hypercall number no generation defines.
const UNKNOWN_HC: u64 = HC_BASE + 0x100;

fn hc_unknown() {
    check_eq!(
        pv_v2::hypercall(UNKNOWN_HC, 0, 0, 0),
        Ok(KVM_ENOSYS),
        "an unknown hypercall number returns -KVM_ENOSYS"
    );
}
case!(
    hc_unknown,
    v2(
        "abi.v2.hc_unknown",
        "an unknown hypercall number returns -KVM_ENOSYS (-1000)"
    )
    .reqs("UP-HC-1")
);

fn hc_wrmsr_unknown() {
    check_eq!(
        pv_v2::hypercall(hc::WRMSR, 0x4b56_4dff, 1, 0),
        Ok(HC_WRMSR_EIO),
        "PVM_HC_WRMSR of an MSR the host does not know"
    );
}
case!(
    hc_wrmsr_unknown,
    v2(
        "abi.v2.hc_wrmsr_unknown",
        "PVM_HC_WRMSR of an unknown MSR fails with -EIO"
    )
    .reqs("UP-HC-2")
);

fn hc_rdmsr() {
    let old = instr::rdmsr(msr::TSC_AUX);
    let want = 0x5a5au64;
    check_eq!(
        instr::wrmsr_safe(msr::TSC_AUX, want),
        Ok(()),
        "WRMSR TSC_AUX"
    );
    check_eq!(
        pv_v2::hypercall(hc::RDMSR, u64::from(msr::TSC_AUX), 0, 0),
        Ok(want as i64),
        "PVM_HC_RDMSR of TSC_AUX after WRMSR"
    );
    check_eq!(
        instr::wrmsr_safe(msr::TSC_AUX, old),
        Ok(()),
        "restoring TSC_AUX"
    );
}
case!(
    hc_rdmsr,
    v2("abi.v2.hc_rdmsr", "PVM_HC_RDMSR returns what WRMSR stored").reqs("UP-HC-3")
);

fn vcpu_struct_unaligned() {
    let pvcs = pv_v2::pvcs_gpa(0);
    check_eq!(
        instr::wrmsr_safe(MSR_VCPU_STRUCT, pvcs + 8),
        Err(Exception::gp(0)),
        "MSR_PVM_VCPU_STRUCT not page aligned"
    );
    check_eq!(
        instr::rdmsr_safe(MSR_VCPU_STRUCT),
        Ok(pvcs),
        "MSR_PVM_VCPU_STRUCT keeps the registered PVCS"
    );
}
case!(
    vcpu_struct_unaligned,
    v2(
        "abi.v2.vcpu_struct_unaligned",
        "WRMSR of a PVCS address that is not page aligned is #GP(0)"
    )
    .reqs("UP-MSR-1")
);

/// The VMM's writes of the PVM MSRs get the host's checks too (KVM_SET_MSRS goes through
/// `pvm_set_msr`): an unaligned PVCS or a linear range wider than the host's is refused and
/// changes nothing; a valid write (the value already there) is accepted.
fn vmm_msr_checks() {
    let pvcs = pv_v2::pvcs_gpa(0);
    check!(
        !vmm::set_msr(MSR_VCPU_STRUCT, pvcs + 8),
        "the VMM's write of an unaligned MSR_PVM_VCPU_STRUCT was accepted"
    );
    check_eq!(
        vmm::get_msr(MSR_VCPU_STRUCT),
        Some(pvcs),
        "MSR_PVM_VCPU_STRUCT after the refused write"
    );
    let range = vmm::get_msr(MSR_LINEAR_ADDRESS_RANGE);
    check!(
        range.is_some(),
        "the VMM cannot read the linear-address range MSR"
    );
    if let Some(r) = range {
        // PML4 slots 0x100..0x1ff: wider than any host's range (notes §7).
        let wide = range_value(0x100, 0x1ff);
        check!(
            !vmm::set_msr(MSR_LINEAR_ADDRESS_RANGE, wide),
            "the VMM's write of a range wider than the host's ({:#x}) was accepted",
            wide
        );
        check_eq!(
            vmm::get_msr(MSR_LINEAR_ADDRESS_RANGE),
            Some(r),
            "the range MSR after the refused write"
        );
    }
    check!(
        vmm::set_msr(MSR_VCPU_STRUCT, pvcs),
        "the VMM's write of the registered PVCS address was refused"
    );
    check_eq!(
        pv_v2::hypercall(UNKNOWN_HC, 0, 0, 0),
        Ok(KVM_ENOSYS),
        "a hypercall afterwards"
    );
}
case!(
    vmm_msr_checks,
    v2(
        "abi.v2.vmm_msr_checks",
        "the VMM's KVM_SET_MSRS of a PVM MSR gets the host's checks: invalid values refused"
    )
    .reqs("UP-MSR-1,PVM-VMM-2")
);

fn signature() {
    let kvm = env::current().pv_cpuid(0x4000_0000, 0);
    check!(
        kvm.is_ok_and(|r| [r[1], r[2], r[3]] == [0x4b4d_564b, 0x564b_4d56, 0x0000_004d]),
        "the KVM signature at CPUID 0x40000000: {:x?}",
        kvm
    );
    let pvm = env::current().pv_cpuid(CPUID_VENDOR_FEATURES, 0);
    check_eq!(
        pvm.map(|r| r[1]),
        Ok(CPUID_SIGNATURE),
        "the PVM signature in EBX of CPUID {:#x}",
        CPUID_VENDOR_FEATURES
    );
}
case!(
    signature,
    v2(
        "abi.v2.signature",
        "the synthetic CPUID shows the KVM and PVM signatures"
    )
    .reqs("UP-DETECT-1")
);

fn tsc_msr() {
    let a = instr::rdmsr_safe(msr::TSC);
    let b = instr::rdmsr_safe(msr::TSC);
    check!(
        matches!((a, b), (Ok(x), Ok(y)) if x > 0 && y > x),
        "RDMSR of the TSC twice: {:x?} then {:x?}",
        a,
        b
    );
}
case!(
    tsc_msr,
    v2("abi.v2.tsc_msr", "RDMSR of IA32_TSC reads a running TSC").reqs("UP-MSR-2")
);

/// Remaps `TEST_VA` from frame A to frame B, runs `flush` and checks that B is read.
fn remap_then(flush: impl Fn(), what: &str) {
    let (_, b) = remap_fixture();
    set_pte(TEST_VA, Pte::map(&b, PteFlags::RW));
    flush();
    check_eq!(
        instr::read_u64_safe(TEST_VA.get()),
        Ok(0xbbbb),
        "after remap + {}",
        what
    );
    set_pte(TEST_VA, Pte::ABSENT);
    env::current().flush_tlb().ok();
}

fn tlb_hypercalls() {
    remap_then(
        || {
            check_eq!(
                pv_v2::hypercall(hc::TLB_INVLPG, TEST_VA.get(), 0, 0),
                Ok(0),
                "PVM_HC_TLB_INVLPG"
            );
        },
        "PVM_HC_TLB_INVLPG",
    );
    remap_then(
        || {
            check_eq!(
                pv_v2::hypercall(hc::TLB_FLUSH, 0, 0, 0),
                Ok(0),
                "PVM_HC_TLB_FLUSH"
            );
        },
        "PVM_HC_TLB_FLUSH",
    );
    remap_then(
        || {
            check_eq!(
                pv_v2::hypercall(hc::LOAD_PGTBL, 1, instr::read_cr3(), 0),
                Ok(0),
                "PVM_HC_LOAD_PGTBL with the flush flag"
            );
        },
        "PVM_HC_LOAD_PGTBL(flush)",
    );
}
case!(
    tlb_hypercalls,
    v2(
        "abi.v2.tlb_hypercalls",
        "TLB_INVLPG, TLB_FLUSH and LOAD_PGTBL with the flush flag drop stale translations"
    )
    .reqs("UP-TLB-1")
);

/// What the #BP hook saw: the frame's vector word (with the PVCS's event bits) and
/// `PVCS.event_flags` (`u64::MAX`: no #BP yet).
static SEEN_VECTOR: AtomicU64 = AtomicU64::new(u64::MAX);
static SEEN_FLAGS: AtomicU64 = AtomicU64::new(u64::MAX);

fn record_bp(frame: &mut Frame, e: Exception) -> bool {
    if e.vector != 3 {
        return false;
    }
    SEEN_VECTOR.store(frame.vector, Ordering::SeqCst);
    SEEN_FLAGS.store(pv_v2::read_event_flags(), Ordering::SeqCst);
    true
}

/// The arithmetic flags (CF, PF, AF, ZF, SF, OF) and the fixed bit 1.
const ARITH: u64 = 0x8d5;

fn event_pvcs() {
    let env = env::current();
    exception::set_hook(Some(record_bp));
    env.set_interrupts(true);
    let after = instr::int3_with_flags(ARITH | 0x2);
    let flags_after = pv_v2::read_event_flags();
    env.set_interrupts(false);
    exception::set_hook(None);
    let vector = SEEN_VECTOR.load(Ordering::SeqCst);
    check!(vector != u64::MAX, "the #BP handler did not run");
    check_eq!(vector & 0xff, 3, "PVCS.event_vector's vector");
    check_eq!(
        vector & u64::from(vector_bits::STD),
        u64::from(vector_bits::STD),
        "PVCS.event_vector has STD (a synchronous event not yet consumed)"
    );
    check_eq!(
        SEEN_FLAGS.load(Ordering::SeqCst) & event_flags::IF,
        0,
        "PVCS.event_flags.IF in the handler (delivery clears it)"
    );
    check_eq!(
        flags_after & event_flags::IF,
        event_flags::IF,
        "PVCS.event_flags.IF after the return"
    );
    check_eq!(
        after & ARITH,
        ARITH,
        "the arithmetic flags after the return (PVCS.eflags must carry them)"
    );
}
case!(
    event_pvcs,
    v2(
        "abi.v2.event_pvcs",
        "a supervisor #BP: PVCS vector with STD, IF cleared in the handler, RFLAGS and IF back after"
    )
    .reqs("UP-EVT-1")
);

static NMIS: AtomicU64 = AtomicU64::new(0);

fn count_nmi(_: &mut Frame, ex: Exception) -> bool {
    if ex.vector != guest_lib::abi::x86::vector::NMI {
        return false;
    }
    NMIS.fetch_add(1, Ordering::SeqCst);
    true
}

/// An NMI while the last supervisor event is not consumed (the vector word's high byte set):
/// the host only sets the NMI bit there, and delivers the NMI at the next ERETU, as an event
/// from user mode.
fn nmi_while_unconsumed() {
    NMIS.store(0, Ordering::SeqCst);
    exception::set_hook(Some(count_nmi));
    let unconsumed = vector_bits::STD | 0x20;
    pv_v2::write_event_vector(unconsumed);
    vmm::must(guest_lib::abi::vmm::Op::Nmi, [0; 3]);
    // An exit and a while for the host to act on the NMI.
    let _ = vmm::host_nanos();
    crate::common::spin_ms(2);
    let word = pv_v2::read_event_vector();
    let during = NMIS.load(Ordering::SeqCst);
    // The NMI comes as an event from user mode: counted, and user code resumed.
    guest_lib::user::set_fault_hook(Some(count_nmi));
    let ran = guest_lib::user::run(u_plus_one, 7);
    guest_lib::user::set_fault_hook(None);
    exception::set_hook(None);
    check_eq!(
        during,
        0,
        "NMIs delivered while the last event was not consumed"
    );
    check_eq!(
        word,
        unconsumed | vector_bits::NMI,
        "PVCS.event_vector after the NMI (the NMI bit added, the rest kept)"
    );
    check_eq!(
        ran,
        guest_lib::user::UserExit::Returned(8),
        "the user run after the pending NMI"
    );
    check_eq!(
        NMIS.load(Ordering::SeqCst),
        1,
        "NMIs delivered by the ERETU that followed"
    );
}

case!(
    nmi_while_unconsumed,
    v2(
        "abi.v2.nmi_while_unconsumed",
        "an NMI while PVCS.event_vector's high byte is set only sets the NMI bit; ERETU delivers it"
    )
    .reqs("UP-NMI-1")
);

/// A flat 32-bit data segment with base `base`, DPL 0 (the host makes it DPL 3).
const fn data_descriptor(base: u32) -> u64 {
    let b = base as u64;
    0x00cf_9300_0000_ffff | (b & 0xff_ffff) << 16 | (b >> 24) << 56
}

extern "C" fn u_fs_base_of(sel: u64) -> u64 {
    instr::fs_base_of_selector_safe(sel as u16).unwrap_or(u64::MAX)
}

/// PVM_HC_LOAD_TLS puts data descriptors into the host GDT's TLS entries (a code descriptor
/// is zeroed) and leaves RAX alone; PVM_HC_LOAD_GS gives a TLS selector's base, and null's
/// for a selector whose RPL is not 3; user code loading the TLS selector gets the base.
fn load_tls_gs() {
    use guest_lib::abi::upstream::HOST_TLS_SELECTORS;
    const BASE: u32 = 0x0012_3000;
    let data = data_descriptor(BASE);
    let code = data | 1 << 43;
    let rax = pv_v2::load_tls([data, code, 0]);
    check_eq!(
        rax,
        Ok(hc::LOAD_TLS as i64),
        "RAX after PVM_HC_LOAD_TLS (the host does not write it)"
    );
    let [slot0, slot1, slot2] = HOST_TLS_SELECTORS;
    check_eq!(
        pv_v2::load_gs(slot0),
        Ok(u64::from(BASE)),
        "PVM_HC_LOAD_GS of TLS entry 0: its base"
    );
    check_eq!(
        pv_v2::load_gs(slot1),
        Ok(0),
        "PVM_HC_LOAD_GS of TLS entry 1 (a code descriptor, which the host zeroes)"
    );
    check_eq!(
        pv_v2::load_gs(slot2 & !3),
        Ok(0),
        "PVM_HC_LOAD_GS of a selector with RPL 0 (made null)"
    );
    check_eq!(
        guest_lib::user::run(u_fs_base_of, u64::from(slot0)),
        guest_lib::user::UserExit::Returned(u64::from(BASE)),
        "the FS base user code gets loading TLS entry 0"
    );
    let _ = pv_v2::load_tls([0; 3]);
}
case!(
    load_tls_gs,
    upstream(
        "abi.upstream.load_tls_gs",
        "PVM_HC_LOAD_TLS installs user data descriptors in the host GDT; PVM_HC_LOAD_GS gives their base"
    )
    .reqs("UP-TLS-1")
);

fn event_entry_non_canonical() {
    guest_lib::report::checkpoint(0, [0; 3]);
    let r = instr::wrmsr_safe(MSR_EVENT_ENTRY, 0x8000_0000_0000_0000);
    check!(
        false,
        "WRMSR of a non-canonical MSR_PVM_EVENT_ENTRY came back ({:?}) instead of a shutdown",
        r
    );
}
case!(
    event_entry_non_canonical,
    v2(
        "abi.v2.event_entry_non_canonical",
        "WRMSR of a non-canonical MSR_PVM_EVENT_ENTRY shuts the vCPU down (triple fault)"
    )
    .host(HostCheck::Shutdown)
    .reqs("UP-MSR-3")
);

extern "C" fn u_rdgsbase(_: u64) -> u64 {
    instr::rdgsbase()
}

fn user_gsbase() {
    const BASE: u64 = 0x0000_1234_5678_9000;
    pv_v2::set_user_gsbase(BASE);
    let r = guest_lib::user::run(u_rdgsbase, 0);
    pv_v2::set_user_gsbase(0);
    check_eq!(
        r,
        guest_lib::user::UserExit::Returned(BASE),
        "RDGSBASE in user mode after ERETU with PVCS.user_gsbase set"
    );
}
case!(
    user_gsbase,
    v2(
        "abi.v2.user_gsbase",
        "ERETU loads the user GS base from PVCS.user_gsbase"
    )
    .reqs("UP-ERETU-1")
);
