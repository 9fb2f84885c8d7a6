//! The VMM-facing ABI: what the host does when the VMM, not the guest, touches the vCPU
//! (`guest_lib::vmm` requests): MSRs read and written from the host side agree with what the
//! guest reads and writes; a full save/restore of the vCPU keeps its state, the environment's
//! PV state included; the highest vCPU id works; memslots added and removed while the guest
//! runs behave as memory.

use guest_lib::abi::case::{FLAG_HIGH_VCPU_ID, FLAG_IRQCHIP};
use guest_lib::abi::env::{Area, Env};
use guest_lib::abi::vmm::{EXTRA_SLOT_GPA, Op, READONLY, Status, slot_pattern};
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
        check_eq!(
            vmm::get_msr(index),
            Some(guest_v),
            "what the VMM reads after the guest's write"
        );
        check!(
            vmm::set_msr(index, host_v),
            "the VMM's write of {:#x} was refused",
            host_v
        );
        check_eq!(
            instr::rdmsr_safe(index),
            Ok(host_v),
            "what the guest reads after the VMM's write"
        );
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

case_table!(
    msr_sync,
    msr_sync_spec,
    [
        (
            "vmm.msr_sync.sysenter_cs",
            msr::SYSENTER_CS,
            "SYSENTER_CS: guest and VMM (GET/SET_MSRS) see each other's writes"
        ),
        (
            "vmm.msr_sync.sysenter_esp",
            msr::SYSENTER_ESP,
            "SYSENTER_ESP: guest and VMM (GET/SET_MSRS) see each other's writes"
        ),
        (
            "vmm.msr_sync.sysenter_eip",
            msr::SYSENTER_EIP,
            "SYSENTER_EIP: guest and VMM (GET/SET_MSRS) see each other's writes"
        ),
        (
            "vmm.msr_sync.star",
            msr::STAR,
            "STAR: guest and VMM (GET/SET_MSRS) see each other's writes"
        ),
        (
            "vmm.msr_sync.lstar",
            msr::LSTAR,
            "LSTAR: guest and VMM (GET/SET_MSRS) see each other's writes"
        ),
        (
            "vmm.msr_sync.cstar",
            msr::CSTAR,
            "CSTAR: guest and VMM (GET/SET_MSRS) see each other's writes"
        ),
        (
            "vmm.msr_sync.sfmask",
            msr::SFMASK,
            "SFMASK: guest and VMM (GET/SET_MSRS) see each other's writes"
        ),
        (
            "vmm.msr_sync.kernel_gs_base",
            msr::KERNEL_GS_BASE,
            "KERNEL_GS_BASE: guest and VMM (GET/SET_MSRS) see each other's writes"
        ),
        (
            "vmm.msr_sync.fs_base",
            msr::FS_BASE,
            "FS_BASE: guest and VMM (GET/SET_MSRS) see each other's writes"
        ),
        (
            "vmm.msr_sync.pat",
            msr::PAT,
            "PAT: guest and VMM (GET/SET_MSRS) see each other's writes"
        ),
    ]
);

/// The host clock advances between two requests by what the TSC says. Each host reading is
/// bracketed by two TSC readings, so the host's interval must lie between the inner and the
/// outer TSC interval: a request that waits for the VMM (a busy host) widens the bracket
/// instead of failing the check.
fn host_clock() {
    let khz = rt::cycles_per_ms().max(1);
    let read = || {
        let before = instr::rdtsc();
        let n = vmm::host_nanos();
        (before, n, instr::rdtsc())
    };
    let (a0, n0, b0) = read();
    while instr::rdtsc() - b0 < 20 * khz {
        core::hint::spin_loop();
    }
    let (a1, n1, b1) = read();
    let us = |cycles: u64| cycles * 1000 / khz;
    let host_us = (n1 - n0) / 1000;
    let (inner_us, outer_us) = (us(a1 - b0), us(b1 - a0));
    log!(
        "20 ms by the TSC: host clock {} us, TSC between {} and {} us",
        host_us,
        inner_us,
        outer_us
    );
    check!(n1 > n0, "the host clock did not advance");
    // The TSC rate is known to the kHz: 0.1% plus 50 us covers its rounding.
    let slack = outer_us / 1000 + 50;
    check!(
        host_us + slack >= inner_us && host_us <= outer_us + slack,
        "host clock {} us outside the TSC's {}..{} us for the same interval",
        host_us,
        inner_us,
        outer_us
    );
}
case!(
    host_clock,
    Spec::new(
        "vmm.host_clock",
        Area::Vmm,
        "the guest TSC (at its advertised rate) and the host clock agree over 20 ms"
    )
    .smoke()
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
    check_eq!(
        instr::wrmsr_safe(msr::KERNEL_GS_BASE, 0xffff_8888_0000_1000),
        Ok(()),
        "setup"
    );
    check_eq!(
        instr::wrmsr_safe(msr::SYSENTER_ESP, 0xffff_8888_0000_2000),
        Ok(()),
        "setup"
    );
    // What the CPU kept of the write: AMD CPUs (and KVM for an AMD guest) keep only the low
    // 32 bits of SYSENTER_ESP; the round trip must preserve whatever was kept (the host-image
    // run on QEMU's AMD-flavoured CPU showed it).
    let esp = instr::rdmsr_safe(msr::SYSENTER_ESP);
    instr::set_fs_base(0x7777_0000);
    let cr0 = instr::read_cr0();
    let cr3 = instr::read_cr3();
    let cr4 = instr::read_cr4();
    let mode_before = env.mode();
    let r = vmm::must(Op::RoundTrip, [u64::from(a), u64::from(b), 0]);
    log!(
        "{} MSRs carried; PV MSRs read {:#x} {:#x}",
        r[0],
        r[1],
        r[2]
    );
    check!(r[0] > 10, "only {} MSRs carried", r[0]);
    check_eq!(
        instr::rdmsr_safe(msr::KERNEL_GS_BASE),
        Ok(0xffff_8888_0000_1000),
        "KERNEL_GS_BASE"
    );
    check_eq!(instr::rdmsr_safe(msr::SYSENTER_ESP), esp, "SYSENTER_ESP");
    check_eq!(instr::rdmsr_safe(msr::FS_BASE), Ok(0x7777_0000), "FS_BASE");
    check_eq!(instr::read_cr0(), cr0, "CR0");
    check_eq!(instr::read_cr3(), cr3, "CR3");
    check_eq!(instr::read_cr4(), cr4, "CR4");
    check_eq!(env.mode(), mode_before, "the environment's mode");
    if let Some(Ok(v)) = before_a {
        check_eq!(
            instr::rdmsr_safe(a),
            Ok(v),
            "PV MSR {:#x} after the round trip",
            a
        );
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
    .smoke()
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

static REMOTE_READ: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// vCPU 1's side of [`memslot_add_remove`]: reads the new slot when pinged.
fn read_slot_on_ap(_: &mut guest_lib::exception::Frame, ex: guest_lib::Exception) -> bool {
    if ex.vector != crate::common::PING_VECTOR {
        return false;
    }
    instr::invlpg(SLOT_VA.get());
    let v = instr::read_u64_safe(SLOT_VA.get() + 8).unwrap_or(u64::MAX);
    REMOTE_READ.store(v, core::sync::atomic::Ordering::SeqCst);
    guest_lib::apic::eoi();
    true
}

/// A memslot the VMM adds while vCPUs run (vCPU 1 sits halted inside KVM_RUN) is memory with
/// the VMM's contents, for both vCPUs; once removed, the same GPAs are not memory any more: a
/// read is an MMIO exit the VMM answers (all ones here), not stale memory.
fn memslot_add_remove() {
    use core::sync::atomic::Ordering::SeqCst;
    use guest_lib::{apic, smp};
    if let Err(e) = apic::enable_x2apic(apic::SPURIOUS_VECTOR) {
        guest_lib::skip!("no usable x2APIC: {:?}", e);
    }
    if !smp::wait_for_aps(1000 * rt::cycles_per_ms()) {
        guest_lib::error!("vCPU 1 did not come online");
    }
    let r = vmm::request(Op::AddMemslot, [1, EXTRA_SLOT_GPA, SLOT_PAGES * 4096]);
    if let Err(vmm::VmmError::Status(Status::Unsupported, _)) = r {
        guest_lib::skip!("this VMM does not implement the AddMemslot request");
    }
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
    guest_lib::exception::set_hook(Some(read_slot_on_ap));
    apic::send_ipi(1, crate::common::PING_VECTOR);
    let t0 = instr::rdtsc();
    while REMOTE_READ.load(SeqCst) == 0 && instr::rdtsc() - t0 < 50 * rt::cycles_per_ms() {
        core::hint::spin_loop();
    }
    guest_lib::exception::set_hook(None);
    check_eq!(
        REMOTE_READ.load(SeqCst),
        slot_pattern(EXTRA_SLOT_GPA + 8),
        "what vCPU 1 reads in the new slot"
    );
    check_eq!(
        instr::write_u64_safe(SLOT_VA, 0x1234),
        Ok(()),
        "write to the new slot"
    );
    check_eq!(instr::read_u64_safe(SLOT_VA.get()), Ok(0x1234), "read back");
    check_eq!(
        vmm::device_log_len(),
        0,
        "MMIO exits while the slot is memory"
    );
    check_eq!(
        vmm::request(Op::RemoveMemslot, [1, 0, 0]).map(drop),
        Ok(()),
        "removing it"
    );
    instr::invlpg(SLOT_VA.get());
    check_eq!(
        instr::read_u64_safe(SLOT_VA.get()),
        Ok(u64::MAX),
        "a read of the removed slot (the VMM answers all ones)"
    );
    check_eq!(vmm::device_log_len(), 1, "MMIO exits after the removal");
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
        "a memslot added while vCPUs run is memory for both; once removed, reads are MMIO exits"
    )
    .vcpus(2)
    .flags(FLAG_IRQCHIP)
    .host(guest_lib::abi::case::HostCheck::Scratch)
    .reqs("KVM-MEMSLOT-1")
);

/// A read-only memslot reads as memory; a write to it exits to the VMM (MMIO) and leaves the
/// memory unchanged; the guest sees no fault.
fn memslot_readonly() {
    let r = vmm::request(
        Op::AddMemslot,
        [2, EXTRA_SLOT_GPA, (SLOT_PAGES * 4096) | READONLY],
    );
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
    check_eq!(
        instr::write_u64_safe(SLOT_VA, 0x1234),
        Ok(()),
        "a write to the read-only slot (no fault)"
    );
    check_eq!(
        vmm::device_log(0).map(|a| (a.write, a.mmio, a.addr, a.value)),
        Some((true, true, EXTRA_SLOT_GPA, 0x1234)),
        "the write as an MMIO exit"
    );
    check_eq!(
        instr::read_u64_safe(SLOT_VA.get()),
        Ok(slot_pattern(EXTRA_SLOT_GPA)),
        "the slot's memory after the write"
    );
}
case!(
    memslot_readonly,
    Spec::new(
        "vmm.memslot_readonly",
        Area::Vmm,
        "a read-only memslot reads as the VMM's memory; writes exit as MMIO and change nothing"
    )
    .host(guest_lib::abi::case::HostCheck::Scratch)
    .smoke()
    .reqs("KVM-MEMSLOT-1")
);

/// What the VMM writes to the local dialect's VIF MSR in a [`vif_write`] case, given the value
/// it read (`now`) and a fresh RAM frame (`spare`).
mod vif {
    /// The value just read, written back.
    pub const SAME: u64 = 0;
    /// Without the enable bit.
    pub const NO_ENABLE: u64 = 1;
    /// Zero (no page, not enabled).
    pub const ZERO: u64 = 2;
    /// Bit 11 set, which the host itself sets while the vCPU is in user mode (inferred).
    pub const USER_MODE_BIT: u64 = 3;
    /// A reserved low bit (bit 7) set.
    pub const RESERVED_BIT: u64 = 4;
    /// A page above MAXPHYADDR.
    pub const BEYOND_MAXPHYADDR: u64 = 5;
    /// The last page of the 64-bit space (the page's end wraps around to 0).
    pub const WRAP: u64 = 6;
    /// A page in the MMIO window (no memory behind it).
    pub const UNBACKED: u64 = 7;
    /// A page of a read-only memslot.
    pub const READONLY_SLOT: u64 = 8;
    /// Another page of RAM (then moved back).
    pub const OTHER_PAGE: u64 = 9;
}

/// The VMM writes one value to the local dialect's VIF MSR (which registers the shared page
/// and switches CPL0 code to native execution). A value the VMM can read from some vCPU (a
/// registered page with or without the enable bit, the unregistered 0) is accepted, reads back
/// as written and leaves the mode it implies; an invalid one (reserved bits, the host's own
/// state bits, not guest memory, above MAXPHYADDR, wrapping) is refused, and then nothing changed: the VMM
/// reads the old value back and the guest still runs natively.
fn vif_write() {
    use guest_lib::abi::layout::MMIO_WINDOW;
    use guest_lib::abi::local::{MSR_VIF, VIF_ENABLE, VIF_HOST_BIT};
    use guest_lib::env::Mode;
    let scenario = rt::case_param();
    let env = guest_lib::env::current();
    let Some(now) = vmm::get_msr(MSR_VIF) else {
        guest_lib::error!("the VMM cannot read the VIF MSR");
    };
    log!("the VMM reads the VIF MSR as {:#x}", now);
    check!(
        now & VIF_ENABLE != 0,
        "the registered VIF MSR lacks the enable bit: {:#x}",
        now
    );
    let low = now & 0xfff;
    let maxphys = instr::cpuid(0x8000_0008, 0)[0] & 0xff;
    // (value, Some(mode afterwards) when it must be accepted, None when refused)
    let (value, accept) = match scenario {
        vif::SAME => (now, Some(Mode::PvNative)),
        vif::NO_ENABLE => (now & !VIF_ENABLE, Some(Mode::PvNative)),
        vif::ZERO => (0, Some(Mode::PvEmulated)),
        vif::USER_MODE_BIT => (now | 0x800, None),
        vif::RESERVED_BIT => (now | 0x80, None),
        vif::BEYOND_MAXPHYADDR => ((1u64 << maxphys.clamp(36, 52)) | low, None),
        vif::WRAP => (0xffff_ffff_ffff_f000 | low, None),
        vif::UNBACKED => (MMIO_WINDOW | low, None),
        vif::READONLY_SLOT => {
            let r = vmm::request(Op::AddMemslot, [3, EXTRA_SLOT_GPA, 4096 | READONLY]);
            check_eq!(r.map(drop), Ok(()), "adding a read-only memslot");
            (EXTRA_SLOT_GPA | low, None)
        }
        vif::OTHER_PAGE => (
            guest_lib::paging::alloc_frame().pa() | low,
            Some(Mode::PvNative),
        ),
        _ => guest_lib::error!("unknown VIF scenario {}", scenario),
    };
    let accepted = vmm::set_msr(MSR_VIF, value);
    let after = vmm::get_msr(MSR_VIF);
    let mode = env.mode();
    log!(
        "the VMM wrote {:#x}: {}; it then reads {:x?}; mode {:?}",
        value,
        if accepted { "accepted" } else { "refused" },
        after,
        mode
    );
    check_eq!(
        accepted,
        accept.is_some(),
        "whether the VMM's write of {:#x} is accepted",
        value
    );
    match accept {
        Some(want_mode) if accepted => {
            check_eq!(
                after.map(|v| v & !VIF_HOST_BIT),
                Some(value & !VIF_HOST_BIT),
                "the value read back (but for the host's bit 10)"
            );
            check_eq!(mode, want_mode, "the mode the accepted value implies");
        }
        _ if !accepted => {
            check_eq!(after, Some(now), "the VIF MSR after the refused write");
            check_eq!(mode, Mode::PvNative, "the mode after the refused write");
        }
        _ => {}
    }
    if accepted && value != now {
        check!(
            vmm::set_msr(MSR_VIF, now),
            "restoring the VIF MSR was refused"
        );
        check_eq!(
            env.mode(),
            Mode::PvNative,
            "the mode once the VMM restored the VIF MSR"
        );
    }
}

const fn vif_spec(name: &'static str, summary: &'static str) -> Spec {
    Spec::new(name, Area::Vmm, summary)
        .envs(guest_lib::abi::env::Env::PvLocal.bit())
        .reqs("PVM-VMM-2")
}

case_table!(
    vif_write,
    vif_spec,
    [
        (
            "vmm.vif.same_value",
            vif::SAME,
            "the VMM writing back the VIF MSR value it read is accepted; nothing changes"
        ),
        (
            "vmm.vif.no_enable",
            vif::NO_ENABLE,
            "a VMM write of the registered page without the enable bit is accepted and reads back"
        ),
        (
            "vmm.vif.zero",
            vif::ZERO,
            "a VMM write of 0 unregisters the page (emulated CPL0), and the old value restores it"
        ),
        (
            "vmm.vif.user_mode_bit",
            vif::USER_MODE_BIT,
            "a VMM write setting the host's user-mode bit 11 is refused; nothing changes"
        ),
        (
            "vmm.vif.reserved_bit",
            vif::RESERVED_BIT,
            "a VMM write of the VIF MSR with a reserved bit is refused; nothing changes"
        ),
        (
            "vmm.vif.beyond_maxphyaddr",
            vif::BEYOND_MAXPHYADDR,
            "a VMM write of a VIF page above MAXPHYADDR is refused; nothing changes"
        ),
        (
            "vmm.vif.wrap",
            vif::WRAP,
            "a VMM write of the last page of the address space is refused; nothing changes"
        ),
        (
            "vmm.vif.unbacked",
            vif::UNBACKED,
            "a VMM write of a VIF page with no memory behind it is refused; nothing changes"
        ),
        (
            "vmm.vif.readonly_slot",
            vif::READONLY_SLOT,
            "a VMM write of a VIF page in a read-only memslot is refused; nothing changes"
        ),
        (
            "vmm.vif.other_page",
            vif::OTHER_PAGE,
            "a VMM write moving the VIF page to other RAM is accepted (and moved back)"
        ),
    ]
);

/// The MSRs that hold the environment's PV state are in `KVM_GET_MSR_INDEX_LIST`, so a VMM
/// that saves what the list names carries them.
fn pv_msrs_listed() {
    let msrs = guest_lib::env::current().pv_state_msrs();
    if msrs.is_empty() {
        guest_lib::skip!("this environment has no PV state MSRs");
    }
    for &m in msrs {
        check_eq!(
            vmm::must(Op::MsrListed, [u64::from(m), 0, 0])[0],
            1,
            "MSR {:#x} listed",
            m
        );
    }
}
case!(
    pv_msrs_listed,
    Spec::new(
        "vmm.pv_msrs_listed",
        Area::Vmm,
        "the MSRs holding PV state are in KVM_GET_MSR_INDEX_LIST (so a VMM migrates them)"
    )
    .envs(guest_lib::abi::env::Env::PvLocal.bit())
    .reqs("PVM-VMM-1")
);

/// A VMM that saves and restores the dialect's VIF MSR of a guest that never registered a
/// page (an ordinary kernel; a vCPU before its guest set PV mode up) must be able to write
/// back what it read.
fn vif_restore_unregistered() {
    use guest_lib::abi::local::MSR_VIF;
    let Some(v) = vmm::get_msr(MSR_VIF) else {
        guest_lib::skip!("the host has no VIF MSR");
    };
    log!("the VMM reads the unregistered VIF MSR as {:#x}", v);
    check!(
        vmm::set_msr(MSR_VIF, v),
        "writing back {:#x} was refused",
        v
    );
    check_eq!(vmm::get_msr(MSR_VIF), Some(v), "the VIF MSR afterwards");
}
case!(
    vif_restore_unregistered,
    Spec::new(
        "vmm.vif.restore_unregistered",
        Area::Vmm,
        "the VMM can write back the unregistered VIF MSR value it read (restore of a fresh vCPU)"
    )
    .envs(guest_lib::abi::env::Env::Hvm64.bit())
    .reqs("KVM-STATE-1,PVM-VMM-1")
);

/// An MSR of the host's paravirtual ranges (KVM's 0x4b564d00.., the local dialect's
/// 0x4b564d10..) exists for the VMM (`KVM_GET_MSRS` returns it) exactly when it exists for the
/// guest (`rdmsr` does not #GP), and then both read the same value (but for the VIF MSR's
/// host bit).
fn pv_msr_views() {
    use guest_lib::abi::local::{MSR_VIF, VIF_HOST_BIT};
    let index = rt::case_param() as u32;
    let guest = instr::rdmsr_safe(index);
    let host = vmm::get_msr(index);
    log!(
        "MSR {:#x}: guest rdmsr {:x?}, VMM {:x?}",
        index,
        guest,
        host
    );
    check_eq!(
        host.is_some(),
        guest.is_ok(),
        "whether MSR {:#x} exists (VMM vs guest)",
        index
    );
    if let (Ok(g), Some(h)) = (guest, host) {
        let mask = if index == MSR_VIF { !VIF_HOST_BIT } else { !0 };
        check_eq!(
            h & mask,
            g & mask,
            "MSR {:#x} as the VMM and the guest read it",
            index
        );
    }
}

const fn pv_msr_spec(name: &'static str, summary: &'static str) -> Spec {
    Spec::new(name, Area::Vmm, summary).reqs("KVM-MSR-2")
}

case_table!(
    pv_msr_views,
    pv_msr_spec,
    [
        (
            "vmm.pv_msr.kvm_wall_clock",
            guest_lib::abi::x86::kvm_msr::WALL_CLOCK_NEW,
            "MSR_KVM_WALL_CLOCK_NEW exists for the VMM iff for the guest"
        ),
        (
            "vmm.pv_msr.kvm_system_time",
            guest_lib::abi::x86::kvm_msr::SYSTEM_TIME_NEW,
            "MSR_KVM_SYSTEM_TIME_NEW: VMM and guest views agree"
        ),
        (
            "vmm.pv_msr.kvm_async_pf_en",
            guest_lib::abi::x86::kvm_msr::ASYNC_PF_EN,
            "MSR_KVM_ASYNC_PF_EN: VMM and guest views agree"
        ),
        (
            "vmm.pv_msr.kvm_steal_time",
            guest_lib::abi::x86::kvm_msr::STEAL_TIME,
            "MSR_KVM_STEAL_TIME: VMM and guest views agree"
        ),
        (
            "vmm.pv_msr.kvm_pv_eoi",
            guest_lib::abi::x86::kvm_msr::PV_EOI_EN,
            "MSR_KVM_PV_EOI_EN: VMM and guest views agree"
        ),
        (
            "vmm.pv_msr.kvm_poll_control",
            guest_lib::abi::x86::kvm_msr::POLL_CONTROL,
            "MSR_KVM_POLL_CONTROL: VMM and guest views agree"
        ),
        (
            "vmm.pv_msr.local_vif",
            guest_lib::abi::local::MSR_VIF,
            "the local dialect's VIF MSR: VMM and guest views agree"
        ),
        (
            "vmm.pv_msr.local_signature",
            guest_lib::abi::local::MSR_SIGNATURE,
            "the local dialect's signature MSR: VMM and guest views agree"
        ),
        (
            "vmm.pv_msr.local_12",
            guest_lib::abi::local::MSR_UNKNOWN_12,
            "the local dialect's MSR 0x4b564d12: VMM and guest views agree"
        ),
        (
            "vmm.pv_msr.local_tsc_khz",
            guest_lib::abi::local::MSR_TSC_KHZ,
            "the local dialect's TSC kHz MSR: VMM and guest views agree"
        ),
        (
            "vmm.pv_msr.local_14",
            0x4b56_4d14,
            "MSR 0x4b564d14 (past the dialect's MSRs): VMM and guest views agree"
        ),
        (
            "vmm.pv_msr.local_ff",
            0x4b56_4dff,
            "MSR 0x4b564dff (end of the range): VMM and guest views agree"
        ),
    ]
);

/// The VMM cannot change the dialect's read-only MSRs (signature, TSC kHz, 0x4b564d12):
/// `KVM_SET_MSRS` refuses, and the value stays.
fn pv_msr_readonly_for_vmm() {
    let index = rt::case_param() as u32;
    let Some(v) = vmm::get_msr(index) else {
        guest_lib::skip!("the host has no MSR {:#x}", index);
    };
    check!(
        !vmm::set_msr(index, v ^ 0x10),
        "the VMM's write of MSR {:#x} was accepted",
        index
    );
    check_eq!(vmm::get_msr(index), Some(v), "MSR {:#x} afterwards", index);
    check_eq!(
        instr::rdmsr_safe(index),
        Ok(v),
        "what the guest reads afterwards"
    );
}

const fn pv_ro_spec(name: &'static str, summary: &'static str) -> Spec {
    // The local dialect's MSRs: an upstream host has none of them.
    Spec::new(name, Area::Vmm, summary)
        .envs(Env::Hvm64.bit() | Env::PvLocal.bit())
        .local_dialect()
        .reqs("PVM-VMM-2")
}

case_table!(
    pv_msr_readonly_for_vmm,
    pv_ro_spec,
    [
        (
            "vmm.pv_msr_ro.signature",
            guest_lib::abi::local::MSR_SIGNATURE,
            "the VMM cannot change the signature MSR"
        ),
        (
            "vmm.pv_msr_ro.tsc_khz",
            guest_lib::abi::local::MSR_TSC_KHZ,
            "the VMM cannot change the TSC kHz MSR"
        ),
        (
            "vmm.pv_msr_ro.local_12",
            guest_lib::abi::local::MSR_UNKNOWN_12,
            "the VMM cannot change MSR 0x4b564d12"
        ),
    ]
);

/// What the dialect's TSC kHz MSR says is the rate `KVM_GET_TSC_KHZ` gave the VMM (the boot
/// info carries that).
fn tsc_khz_matches_vmm() {
    let Ok(khz) = instr::rdmsr_safe(guest_lib::abi::local::MSR_TSC_KHZ) else {
        guest_lib::skip!("no TSC kHz MSR");
    };
    check_eq!(
        khz,
        rt::boot_info().tsc_khz,
        "TSC kHz MSR vs KVM_GET_TSC_KHZ"
    );
}
case!(
    tsc_khz_matches_vmm,
    Spec::new(
        "vmm.tsc_khz_matches_vmm",
        Area::Vmm,
        "the TSC kHz MSR says what KVM_GET_TSC_KHZ tells the VMM"
    )
    .envs(Env::Hvm64.bit() | Env::PvLocal.bit())
    .local_dialect()
    .reqs("LOCAL-MSR-TSC,X86-TSC-1")
);
