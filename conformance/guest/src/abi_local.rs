//! The local dialect's ABI rules (pv-local only): signature MSR, hypercall numbering and
//! results, the TSC-frequency MSR, TLB hypercalls, and that registering the VIF page really
//! switches CPL0 code to native execution.

use guest_lib::abi::env::{Area, Env};
use guest_lib::abi::local::{
    ENOSYS, MSR_SIGNATURE, MSR_TSC_KHZ, MSR_UNKNOWN_12, SIGNATURE, WRMSR_REFUSED, hc,
};
use guest_lib::arch::instr;
use guest_lib::case::Spec;
use guest_lib::env::pv_local;
use guest_lib::exception::Exception;
use guest_lib::paging::{Pte, PteFlags, set_pte};
use guest_lib::{case, check, check_eq, log};

use crate::common::{MSR_SCRATCH, TEST_VA, remap_fixture};

const PV: u32 = Env::PvLocal.bit();

fn signature_msr() {
    check_eq!(
        pv_local::signature(),
        Ok(SIGNATURE),
        "rdmsr of the signature MSR"
    );
    check_eq!(
        instr::wrmsr_safe(MSR_SIGNATURE, 0),
        Err(Exception::gp(0)),
        "wrmsr must #GP"
    );
    check!(
        instr::rdmsr_safe(MSR_UNKNOWN_12).is_ok(),
        "MSR 0x4b564d12 is readable"
    );
    check_eq!(
        instr::wrmsr_safe(MSR_UNKNOWN_12, 0),
        Err(Exception::gp(0)),
        "MSR 0x4b564d12 is read-only"
    );
}
case!(
    signature_msr,
    Spec::new(
        "abi.signature_msr",
        Area::Abi,
        "MSR 0x4b564d11 reads \"PVM\"; it and 0x4b564d12 reject writes"
    )
    .envs(PV)
    .reqs("LOCAL-DETECT-1")
);

fn unknown_hypercall_enosys() {
    for nr in [
        0u64,
        1,
        5,
        12,
        0x0fff,
        0x100f,
        0x2000,
        0x1708_8200,
        u64::MAX,
    ] {
        check!(
            hc::ALL.iter().all(|&(known, _)| known != nr),
            "{:#x} is a known hypercall",
            nr
        );
        check_eq!(
            pv_local::hypercall(nr, 0, 0, 0),
            Ok(ENOSYS),
            "hypercall {:#x}",
            nr
        );
    }
}
case!(
    unknown_hypercall_enosys,
    Spec::new(
        "abi.unknown_hypercall_enosys",
        Area::Abi,
        "unknown hypercall numbers return -ENOSYS"
    )
    .envs(PV)
    .reqs("LOCAL-HC-1")
);

fn hypercall_wrmsr() {
    let v = 0x0000_7f00_1234_5000;
    check_eq!(
        pv_local::hypercall(hc::WRMSR, u64::from(MSR_SCRATCH), v, 0),
        Ok(0),
        "known MSR"
    );
    check_eq!(
        instr::rdmsr_safe(MSR_SCRATCH),
        Ok(v),
        "value written by the hypercall"
    );
    check_eq!(
        pv_local::hypercall(hc::WRMSR, u64::from(MSR_SIGNATURE), 1, 0),
        Ok(WRMSR_REFUSED),
        "read-only MSR"
    );
    check_eq!(
        pv_local::hypercall(hc::WRMSR, 0x1234_5678, 1, 0),
        Ok(WRMSR_REFUSED),
        "unknown MSR"
    );
}
case!(
    hypercall_wrmsr,
    Spec::new(
        "abi.hypercall_wrmsr",
        Area::Abi,
        "WRMSR hypercall: RBX=index, RCX=value; 0 ok, 2 unknown/read-only"
    )
    .envs(PV)
    .reqs("LOCAL-HC-WRMSR")
);

fn tsc_khz_msr() {
    match instr::rdmsr_safe(MSR_TSC_KHZ) {
        Ok(khz) => {
            log!("TSC {} kHz", khz);
            check!(
                (100_000..=10_000_000).contains(&khz),
                "TSC kHz {} out of range",
                khz
            );
        }
        Err(e) => check!(false, "rdmsr TSC kHz faulted: {:?}", e),
    }
    check_eq!(
        instr::wrmsr_safe(MSR_TSC_KHZ, 1),
        Err(Exception::gp(0)),
        "wrmsr must #GP"
    );
}
case!(
    tsc_khz_msr,
    Spec::new(
        "abi.tsc_khz_msr",
        Area::Abi,
        "MSR 0x4b564d13 gives the TSC frequency and is read-only"
    )
    .envs(PV)
    .reqs("LOCAL-MSR-TSC")
);

fn hypercall_tlb_flush() {
    let (a, b) = remap_fixture();
    let rw_us = PteFlags::RW | PteFlags::US;
    set_pte(TEST_VA, Pte::map(&b, rw_us));
    check_eq!(
        pv_local::hypercall(hc::FLUSH_TLB_ONE, TEST_VA.get(), 0, 0),
        Ok(0),
        "FLUSH_TLB_ONE"
    );
    check_eq!(
        instr::read_u64_safe(TEST_VA.get()),
        Ok(0xbbbb),
        "after FLUSH_TLB_ONE"
    );
    set_pte(TEST_VA, Pte::map(&a, rw_us));
    check_eq!(
        pv_local::hypercall(hc::FLUSH_TLB, 0, 0, 0),
        Ok(0),
        "FLUSH_TLB"
    );
    check_eq!(
        instr::read_u64_safe(TEST_VA.get()),
        Ok(0xaaaa),
        "after FLUSH_TLB"
    );
}
case!(
    hypercall_tlb_flush,
    Spec::new(
        "abi.hypercall_tlb_flush",
        Area::Abi,
        "FLUSH_TLB_ONE/FLUSH_TLB make PTE changes visible"
    )
    .envs(PV)
    .reqs("LOCAL-HC-TLB,PVM-SPT-1")
);

fn vif_native_execution() {
    const ITERS: u64 = 100_000;
    let khz = instr::rdmsr_safe(MSR_TSC_KHZ).unwrap_or(0).max(1);
    let t0 = instr::rdtsc();
    instr::spin(ITERS);
    let us = (instr::rdtsc() - t0) * 1000 / khz;
    log!("{} loop iterations took {} us", ITERS, us);
    // Emulated CPL0 costs ~0.5 us per instruction (>100 ms here); native well under 1 ms.
    check!(
        us < 5_000,
        "CPL0 loop took {} us: still emulated after VIF registration?",
        us
    );
}
case!(
    vif_native_execution,
    Spec::new(
        "abi.vif_native_execution",
        Area::Abi,
        "after VIF registration CPL0 code runs natively (fast)"
    )
    .envs(PV)
    .reqs("LOCAL-VIF-1")
);
