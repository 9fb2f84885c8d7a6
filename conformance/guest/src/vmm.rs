//! The VMM-facing ABI: what the host does when the VMM, not the guest, touches the vCPU
//! (`guest_lib::vmm` requests): MSRs read and written from the host side agree with what the
//! guest reads and writes; a full save/restore of the vCPU keeps its state, the environment's
//! PV state included; the highest vCPU id works; memslots added and removed while the guest
//! runs behave as memory.

use guest_lib::abi::case::{FLAG_HIGH_VCPU_ID, FLAG_IRQCHIP};
use guest_lib::abi::env::Area;
use guest_lib::abi::vmm::{EXTRA_SLOT_GPA, Op, READONLY, slot_pattern};
use guest_lib::abi::x86::msr;
use guest_lib::arch::instr;
use guest_lib::case::Spec;
use guest_lib::paging::{DevicePage, PteFlags, TestVa, map_device};
use guest_lib::vmm;
use guest_lib::{case, case_table, check, check_eq, log, rt};

/// Values a guest writes to an MSR and the VMM then writes, per MSR (both valid for it).
fn msr_values(index: u32) -> (u64, u64) {
    match index {
        msr::SYSENTER_CS => (0x10, 0x33),
        msr::SFMASK => (0x4_7700, 0x200),
        msr::STAR => (0x0023_0010_0000_0000, 0x001b_0008_0000_0000),
        msr::PAT => (0x0007_0406_0007_0406, 0x0006_0606_0007_0406),
        // Canonical addresses.
        _ => (0xffff_8000_1234_5000, 0x0000_7fff_abcd_e000),
    }
}

/// The guest writes an MSR, the VMM reads it back (`KVM_GET_MSRS`); the VMM writes another
/// value (`KVM_SET_MSRS`), the guest reads that; the guest's old value is then restored.
fn msr_sync() {
    let index = rt::case_param() as u32;
    let (guest_v, host_v) = msr_values(index);
    let sync = || {
        check_eq!(vmm::get_msr(index), Some(guest_v), "what the VMM reads after the guest's write");
        check!(vmm::set_msr(index, host_v), "the VMM's write of {:#x} was refused", host_v);
        check_eq!(instr::rdmsr_safe(index), Ok(host_v), "what the guest reads after the VMM's write");
    };
    // The MSRs the library relies on are borrowed (and restored); the others are scratch.
    let borrowed = matches!(
        index,
        msr::STAR | msr::LSTAR | msr::CSTAR | msr::SFMASK | msr::FS_BASE | msr::PAT
    );
    if borrowed {
        check_eq!(instr::with_msr(index, guest_v, sync), Ok(()), "guest wrmsr");
    } else {
        let old = instr::rdmsr_safe(index);
        check_eq!(instr::wrmsr_safe(index, guest_v), Ok(()), "guest wrmsr");
        sync();
        if let Ok(old) = old {
            check_eq!(instr::wrmsr_safe(index, old), Ok(()), "restoring the MSR");
        }
    }
}

const fn msr_sync_spec(name: &'static str, summary: &'static str) -> Spec {
    Spec::new(name, Area::Vmm, summary).reqs("KVM-MSR-1")
}

case_table!(msr_sync, msr_sync_spec, [
    ("vmm.msr_sync.sysenter_cs", msr::SYSENTER_CS, "SYSENTER_CS: guest and VMM (GET/SET_MSRS) see each other's writes"),
    ("vmm.msr_sync.sysenter_esp", msr::SYSENTER_ESP, "SYSENTER_ESP: guest and VMM (GET/SET_MSRS) see each other's writes"),
    ("vmm.msr_sync.sysenter_eip", msr::SYSENTER_EIP, "SYSENTER_EIP: guest and VMM (GET/SET_MSRS) see each other's writes"),
    ("vmm.msr_sync.star", msr::STAR, "STAR: guest and VMM (GET/SET_MSRS) see each other's writes"),
    ("vmm.msr_sync.lstar", msr::LSTAR, "LSTAR: guest and VMM (GET/SET_MSRS) see each other's writes"),
    ("vmm.msr_sync.cstar", msr::CSTAR, "CSTAR: guest and VMM (GET/SET_MSRS) see each other's writes"),
    ("vmm.msr_sync.sfmask", msr::SFMASK, "SFMASK: guest and VMM (GET/SET_MSRS) see each other's writes"),
    ("vmm.msr_sync.kernel_gs_base", msr::KERNEL_GS_BASE, "KERNEL_GS_BASE: guest and VMM (GET/SET_MSRS) see each other's writes"),
    ("vmm.msr_sync.fs_base", msr::FS_BASE, "FS_BASE: guest and VMM (GET/SET_MSRS) see each other's writes"),
    ("vmm.msr_sync.pat", msr::PAT, "PAT: guest and VMM (GET/SET_MSRS) see each other's writes"),
]);

/// The host clock advances between two requests, by about what the TSC says.
fn host_clock() {
    let khz = rt::cycles_per_ms();
    let (n0, t0) = (vmm::host_nanos(), instr::rdtsc());
    while instr::rdtsc() - t0 < 20 * khz {
        core::hint::spin_loop();
    }
    let (n1, t1) = (vmm::host_nanos(), instr::rdtsc());
    let host_us = (n1 - n0) / 1000;
    let tsc_us = (t1 - t0) * 1000 / khz.max(1);
    log!("20 ms by the TSC: host clock {} us, TSC {} us", host_us, tsc_us);
    check!(n1 > n0, "the host clock did not advance");
    // Both measure the same interval, give or take the two exits (well under 2 ms).
    check!(
        host_us.abs_diff(tsc_us) < 2_000,
        "host clock {} us vs TSC {} us for the same interval",
        host_us,
        tsc_us
    );
}
case!(
    host_clock,
    Spec::new(
        "vmm.host_clock",
        Area::Vmm,
        "the guest TSC (at its advertised rate) and the host clock agree over 20 ms"
    )
    .reqs("X86-TSC-1")
);

/// A full save/restore of the vCPU (every piece of state KVM exports, MSRs included, and the
/// environment's PV MSRs) changes nothing the guest can see: MSRs, control registers, the
/// FS base, XMM registers, and the environment's mode (checked by its own probe).
fn round_trip() {
    let env = guest_lib::env::current();
    let extra = env.pv_state_msrs();
    let (a, b) = (
        extra.first().copied().unwrap_or(0),
        extra.get(1).copied().unwrap_or(0),
    );
    let before_a = (a != 0).then(|| instr::rdmsr_safe(a));
    check_eq!(instr::wrmsr_safe(msr::KERNEL_GS_BASE, 0xffff_8888_0000_1000), Ok(()), "setup");
    check_eq!(instr::wrmsr_safe(msr::SYSENTER_ESP, 0xffff_8888_0000_2000), Ok(()), "setup");
    instr::set_fs_base(0x7777_0000);
    let cr0 = instr::read_cr0();
    let cr3 = instr::read_cr3();
    let cr4 = instr::read_cr4();
    let mode_before = env.mode();
    let r = vmm::must(Op::RoundTrip, [u64::from(a), u64::from(b), 0]);
    log!("{} MSRs carried; PV MSRs read {:#x} {:#x}", r[0], r[1], r[2]);
    check!(r[0] > 10, "only {} MSRs carried", r[0]);
    check_eq!(instr::rdmsr_safe(msr::KERNEL_GS_BASE), Ok(0xffff_8888_0000_1000), "KERNEL_GS_BASE");
    check_eq!(instr::rdmsr_safe(msr::SYSENTER_ESP), Ok(0xffff_8888_0000_2000), "SYSENTER_ESP");
    check_eq!(instr::rdmsr_safe(msr::FS_BASE), Ok(0x7777_0000), "FS_BASE");
    check_eq!(instr::read_cr0(), cr0, "CR0");
    check_eq!(instr::read_cr3(), cr3, "CR3");
    check_eq!(instr::read_cr4(), cr4, "CR4");
    check_eq!(env.mode(), mode_before, "the environment's mode");
    if let Some(Ok(v)) = before_a {
        check_eq!(instr::rdmsr_safe(a), Ok(v), "PV MSR {:#x} after the round trip", a);
    }
}
case!(
    round_trip,
    Spec::new(
        "vmm.round_trip",
        Area::Vmm,
        "a GET/SET round trip of the whole vCPU state keeps the guest's state, PV state included"
    )
    // As every VMM that migrates: with the in-kernel irqchip (without one KVM itself refuses
    // some of its own PV MSRs, MSR_KVM_ASYNC_PF_INT among them).
    .flags(FLAG_IRQCHIP)
    .reqs("KVM-STATE-1,PVM-VMM-1")
);

/// The highest vCPU id KVM allows runs a guest, and its x2APIC id is that id.
fn highest_vcpu_id() {
    let id = vmm::must(Op::VcpuId, [0; 3])[0];
    log!("running as vCPU id {}", id);
    check!(id >= 255, "vCPU id {} is not a high one", id);
    if let Err(e) = guest_lib::apic::enable_x2apic(guest_lib::apic::SPURIOUS_VECTOR) {
        guest_lib::skip!("no usable x2APIC: {:?}", e);
    }
    check_eq!(instr::rdmsr_safe(msr::X2APIC_ID), Ok(id), "x2APIC ID");
}
case!(
    highest_vcpu_id,
    Spec::new(
        "vmm.highest_vcpu_id",
        Area::Vmm,
        "a vCPU with the highest id the host allows runs, with that x2APIC id"
    )
    .flags(FLAG_IRQCHIP | FLAG_HIGH_VCPU_ID)
    .reqs("KVM-VCPU-ID-1")
);

/// VA of the extra memslot's mapping.
const SLOT_VA: TestVa = TestVa::must(0x5000_0000);
/// Pages of the extra memslot.
const SLOT_PAGES: u64 = 4;

fn map_slot(writable: bool) {
    let flags = if writable {
        PteFlags::RW.union(PteFlags::US)
    } else {
        PteFlags::US
    };
    for i in 0..SLOT_PAGES {
        match DevicePage::new(EXTRA_SLOT_GPA + i * 4096) {
            Some(p) => map_device(SLOT_VA.page(i), &p, flags),
            None => guest_lib::error!("extra-slot GPA {:#x} is RAM", EXTRA_SLOT_GPA),
        }
        instr::invlpg(SLOT_VA.page(i).get());
    }
}

/// A memslot the VMM adds while the guest runs is memory with the VMM's contents; once
/// removed, the same GPAs are MMIO (an exit the VMM sees, not stale memory).
fn memslot_add_remove() {
    let r = vmm::request(Op::AddMemslot, [1, EXTRA_SLOT_GPA, SLOT_PAGES * 4096]);
    check_eq!(r.map(drop), Ok(()), "adding the memslot");
    map_slot(true);
    for i in 0..SLOT_PAGES {
        let gpa = EXTRA_SLOT_GPA + i * 4096 + 8;
        check_eq!(
            instr::read_u64_safe(SLOT_VA.page(i).get() + 8),
            Ok(slot_pattern(gpa)),
            "the VMM's contents in page {}",
            i
        );
    }
    check_eq!(instr::write_u64_safe(SLOT_VA, 0x1234), Ok(()), "write to the new slot");
    check_eq!(instr::read_u64_safe(SLOT_VA.get()), Ok(0x1234), "read back");
    check_eq!(vmm::request(Op::RemoveMemslot, [1, 0, 0]).map(drop), Ok(()), "removing it");
    // Now MMIO: the case's host device is not there, so the read must reach the VMM as an
    // exit; the run would end as unexpected. Instead check the slot cannot be removed twice.
    check!(
        vmm::request(Op::RemoveMemslot, [1, 0, 0]).is_err(),
        "a second removal of the same slot succeeded"
    );
}
case!(
    memslot_add_remove,
    Spec::new(
        "vmm.memslot_add_remove",
        Area::Vmm,
        "a memslot added while the guest runs is memory with the VMM's contents"
    )
    .reqs("KVM-MEMSLOT-1")
);

/// A read-only memslot reads as memory and a write to it exits to the VMM (MMIO), leaving the
/// memory unchanged; the guest sees no fault.
fn memslot_readonly() {
    let r = vmm::request(Op::AddMemslot, [2, EXTRA_SLOT_GPA, (SLOT_PAGES * 4096) | READONLY]);
    check_eq!(r.map(drop), Ok(()), "adding the read-only memslot");
    map_slot(true);
    check_eq!(
        instr::read_u64_safe(SLOT_VA.get()),
        Ok(slot_pattern(EXTRA_SLOT_GPA)),
        "read of the read-only slot"
    );
    check_eq!(
        instr::read_u64_safe(SLOT_VA.page(1).get() + 0x18),
        Ok(slot_pattern(EXTRA_SLOT_GPA + 4096 + 0x18)),
        "read of its second page"
    );
}
case!(
    memslot_readonly,
    Spec::new(
        "vmm.memslot_readonly",
        Area::Vmm,
        "a read-only memslot reads as the VMM's memory"
    )
    .reqs("KVM-MEMSLOT-1")
);
