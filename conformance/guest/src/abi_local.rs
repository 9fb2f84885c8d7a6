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
use guest_lib::{case, case_table, check, check_eq, log, rt};

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
    .smoke()
    .reqs("LOCAL-DETECT-1")
);

/// One hypercall number the dialect does not define (also numbers whose low 32 bits are a
/// known one): -ENOSYS, and every other general register as it was.
fn unknown_hypercall() {
    let nr = rt::case_param();
    check!(
        hc::ALL.iter().all(|&(known, _)| known != nr),
        "{:#x} is a known hypercall",
        nr
    );
    match pv_local::hypercall_preserving(nr, 0x1111, 0x2222, 0x3333) {
        Ok((rax, changed)) => {
            check_eq!(rax, ENOSYS, "result of hypercall {:#x}", nr);
            check_eq!(
                changed,
                0u32,
                "registers (bit 0 RBX .. 12 R15) the hypercall changed"
            );
        }
        Err(e) => check!(false, "hypercall {:#x} raised {:?}", nr, e),
    }
}

const fn unknown_hc_spec(name: &'static str, summary: &'static str) -> Spec {
    Spec::new(name, Area::Abi, summary)
        .envs(PV)
        .reqs("LOCAL-HC-1")
}

case_table!(
    unknown_hypercall,
    unknown_hc_spec,
    [
        (
            "abi.unknown_hypercall.0",
            0u64,
            "hypercall 0 (not defined): -ENOSYS, registers preserved"
        ),
        (
            "abi.unknown_hypercall.1",
            1u64,
            "hypercall 1 (KVM's, not the dialect's): -ENOSYS, registers preserved"
        ),
        (
            "abi.unknown_hypercall.5",
            5u64,
            "hypercall 5 (KVM_HC_KICK_CPU): -ENOSYS, registers preserved"
        ),
        (
            "abi.unknown_hypercall.12",
            12u64,
            "hypercall 12 (KVM_HC_MAP_GPA_RANGE): -ENOSYS, registers preserved"
        ),
        (
            "abi.unknown_hypercall.0fff",
            0xfffu64,
            "hypercall 0xfff (below the dialect's range): -ENOSYS"
        ),
        (
            "abi.unknown_hypercall.100f",
            0x100fu64,
            "hypercall 0x100f (past the dialect's range): -ENOSYS"
        ),
        (
            "abi.unknown_hypercall.1010",
            0x1010u64,
            "hypercall 0x1010: -ENOSYS, registers preserved"
        ),
        (
            "abi.unknown_hypercall.2000",
            0x2000u64,
            "hypercall 0x2000: -ENOSYS, registers preserved"
        ),
        (
            "abi.unknown_hypercall.upstream",
            0x1708_8200u64,
            "the upstream PVM hypercall base 0x17088200: -ENOSYS"
        ),
        (
            "abi.unknown_hypercall.u32_max",
            0xffff_ffffu64,
            "hypercall 0xffffffff: -ENOSYS, registers preserved"
        ),
        (
            "abi.unknown_hypercall.high_bits",
            0x1_0000_1007u64,
            "FLUSH_TLB with bit 32 set: not FLUSH_TLB but -ENOSYS"
        ),
        (
            "abi.unknown_hypercall.u64_max",
            u64::MAX,
            "hypercall 0xffffffffffffffff: -ENOSYS, registers preserved"
        ),
    ]
);

/// Known hypercalls that succeed leave every register but RAX as it was.
fn hypercall_preserves() {
    let (nr, a0, a1) = match rt::case_param() {
        0 => (hc::FLUSH_TLB, 0, 0),
        1 => (hc::FLUSH_TLB_ONE, TEST_VA.get(), 0),
        2 => (hc::WRMSR, u64::from(MSR_SCRATCH), 0x7777_0000),
        _ => (hc::SET_CR4, instr::read_cr4(), 0),
    };
    match pv_local::hypercall_preserving(nr, a0, a1, 0) {
        Ok((rax, changed)) => {
            check_eq!(rax, 0, "result of hypercall {:#x}", nr);
            check_eq!(
                changed,
                0u32,
                "registers (bit 0 RBX .. 12 R15) hypercall {:#x} changed",
                nr
            );
        }
        Err(e) => check!(false, "hypercall {:#x} raised {:?}", nr, e),
    }
}

const fn preserve_spec(name: &'static str, summary: &'static str) -> Spec {
    Spec::new(name, Area::Abi, summary)
        .envs(PV)
        .reqs("LOCAL-HC-1")
}

case_table!(
    hypercall_preserves,
    preserve_spec,
    [
        (
            "abi.preserves.flush_tlb",
            0,
            "FLUSH_TLB returns 0 and changes no register but RAX"
        ),
        (
            "abi.preserves.flush_tlb_one",
            1,
            "FLUSH_TLB_ONE returns 0 and changes no register but RAX"
        ),
        (
            "abi.preserves.wrmsr",
            2,
            "WRMSR returns 0 and changes no register but RAX"
        ),
        (
            "abi.preserves.set_cr4",
            3,
            "SET_CR4 (same value) returns 0 and changes no register but RAX"
        ),
    ]
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
    .smoke()
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

/// The control-register hypercalls take effect as the register reads show (and read back the
/// same through MOV), and the descriptor-table ones keep exception delivery working.
fn hypercall_effect() {
    use guest_lib::abi::x86::{cr0, cr4};
    match rt::case_param() {
        0 => {
            let old = instr::read_cr0();
            check_eq!(
                pv_local::hypercall(hc::SET_CR0, old & !cr0::WP, 0, 0),
                Ok(0),
                "SET_CR0 without WP"
            );
            check_eq!(instr::read_cr0() & cr0::WP, 0, "CR0.WP after SET_CR0");
            check_eq!(
                pv_local::hypercall(hc::SET_CR0, old, 0, 0),
                Ok(0),
                "SET_CR0 back"
            );
            check_eq!(instr::read_cr0(), old, "CR0 restored");
        }
        1 => {
            let old = instr::read_cr4();
            check_eq!(
                pv_local::hypercall(hc::SET_CR4, old | cr4::PCE, 0, 0),
                Ok(0),
                "SET_CR4 with PCE"
            );
            check_eq!(
                instr::read_cr4() & cr4::PCE,
                cr4::PCE,
                "CR4.PCE after SET_CR4"
            );
            check_eq!(
                pv_local::hypercall(hc::SET_CR4, old, 0, 0),
                Ok(0),
                "SET_CR4 back"
            );
            check_eq!(instr::read_cr4(), old, "CR4 restored");
        }
        2 => {
            // A VA in PML4 slot 1, which the clone does not share with the current tables.
            let va = guest_lib::paging::TestVa::must(0x80_0000_0000);
            let space = guest_lib::paging::AddressSpace::clone_current();
            let f = guest_lib::paging::alloc_frame();
            f.write_u64(0, 0x5e7c_3000);
            space.map(va, &f, PteFlags::RW | PteFlags::US);
            let old = instr::read_cr3();
            check_eq!(
                pv_local::hypercall(hc::SET_CR3, space.cr3(), 0, 0),
                Ok(0),
                "SET_CR3 to the new tables"
            );
            check_eq!(instr::read_cr3(), space.cr3(), "CR3 after SET_CR3");
            check_eq!(
                instr::read_u64_safe(va.get()),
                Ok(0x5e7c_3000),
                "a mapping only the new tables have"
            );
            check_eq!(
                pv_local::hypercall(hc::SET_CR3, old, 0, 0),
                Ok(0),
                "SET_CR3 back"
            );
            check!(
                instr::read_u64_safe(va.get()).is_err(),
                "the new tables' mapping after switching back"
            );
        }
        3 => {
            let gdt = instr::sgdt();
            check_eq!(
                pv_local::hypercall(hc::LOAD_GDT, gdt.base, u64::from(gdt.limit), 0),
                Ok(0),
                "LOAD_GDT"
            );
            check_eq!(instr::sgdt(), gdt, "SGDT after LOAD_GDT");
            check_eq!(
                instr::load_ds_safe(guest_lib::abi::layout::sel::KERNEL_DS),
                Ok(()),
                "a segment load after LOAD_GDT"
            );
        }
        _ => {
            let idt = instr::sidt();
            check_eq!(
                pv_local::hypercall(hc::LOAD_IDT, idt.base, u64::from(idt.limit), 0),
                Ok(0),
                "LOAD_IDT"
            );
            check_eq!(instr::sidt(), idt, "SIDT after LOAD_IDT");
            check_eq!(
                instr::ud2_safe(),
                Err(Exception::new(guest_lib::exception::vector::UD)),
                "an exception after LOAD_IDT"
            );
        }
    }
}

const fn effect_spec(name: &'static str, summary: &'static str) -> Spec {
    Spec::new(name, Area::Abi, summary)
        .envs(PV)
        .reqs("LOCAL-HC-2")
}

case_table!(
    hypercall_effect,
    effect_spec,
    [
        (
            "abi.hypercall.set_cr0",
            0,
            "SET_CR0 clears and restores CR0.WP as MOV from CR0 shows"
        ),
        (
            "abi.hypercall.set_cr4",
            1,
            "SET_CR4 sets and restores CR4.PCE as MOV from CR4 shows"
        ),
        (
            "abi.hypercall.set_cr3",
            2,
            "SET_CR3 switches to other page tables and back"
        ),
        (
            "abi.hypercall.load_gdt",
            3,
            "LOAD_GDT with the current table: SGDT agrees, segment loads work"
        ),
        (
            "abi.hypercall.load_idt",
            4,
            "LOAD_IDT with the current table: SIDT agrees, exceptions arrive"
        ),
    ]
);

/// SET_VIF_GPA moves the VIF page (the VMM then reads the new page, without the enable bit as
/// docs/local-dialect.md says); the VIF MSR moves it back, and CPL0 code stays native.
fn set_vif_gpa() {
    use guest_lib::abi::local::{MSR_VIF, VIF_ENABLE};
    let Some(before) = guest_lib::vmm::get_msr(MSR_VIF) else {
        guest_lib::error!("the VMM cannot read the VIF MSR");
    };
    let page = guest_lib::paging::alloc_frame().pa();
    check_eq!(
        pv_local::hypercall(hc::SET_VIF_GPA, page, 0, 0),
        Ok(0),
        "SET_VIF_GPA"
    );
    let after = guest_lib::vmm::get_msr(MSR_VIF);
    log!(
        "VIF MSR as the VMM reads it: {:#x} before, {:x?} after SET_VIF_GPA",
        before,
        after
    );
    check_eq!(
        after.map(|v| v & !0xfff),
        Some(page),
        "the page the VMM reads after SET_VIF_GPA"
    );
    check!(
        guest_lib::vmm::set_msr(MSR_VIF, before | VIF_ENABLE),
        "moving the page back"
    );
    check_eq!(
        guest_lib::env::current().mode(),
        guest_lib::env::Mode::PvNative,
        "CPL0 execution mode afterwards"
    );
}
case!(
    set_vif_gpa,
    Spec::new(
        "abi.hypercall.set_vif_gpa",
        Area::Abi,
        "SET_VIF_GPA moves the VIF page where the VMM reads it"
    )
    .envs(PV)
    .reqs("LOCAL-HC-2,LOCAL-VIF-1")
);

/// HALT with the virtual IF set blocks until an interrupt (with an in-kernel irqchip), which
/// is then delivered.
fn hypercall_halt() {
    use core::sync::atomic::{AtomicU32, Ordering::SeqCst};
    use guest_lib::apic;
    static TICKS: AtomicU32 = AtomicU32::new(0);
    fn tick(_: &mut guest_lib::exception::Frame, ex: Exception) -> bool {
        if ex.vector != 0x28 {
            return false;
        }
        TICKS.fetch_add(1, SeqCst);
        apic::eoi();
        true
    }
    if let Err(e) = apic::enable_x2apic(apic::SPURIOUS_VECTOR) {
        guest_lib::skip!("no usable x2APIC: {:?}", e);
    }
    guest_lib::exception::set_hook(Some(tick));
    let t0 = instr::rdtsc();
    apic::start_lvt_timer(0x28, 3_000_000, false, false);
    apic::set_interrupts(true);
    let r = pv_local::hypercall(hc::HALT, 0, 0, 0);
    let ms = (instr::rdtsc() - t0) / guest_lib::rt::cycles_per_ms().max(1);
    apic::set_interrupts(false);
    apic::stop_lvt_timer();
    guest_lib::exception::set_hook(None);
    log!("HALT returned {:?} after {} ms", r, ms);
    check_eq!(r, Ok(0), "HALT's result");
    check_eq!(
        TICKS.load(SeqCst),
        1,
        "timer interrupts (the one that ended the HALT)"
    );
    check!(
        ms >= 2,
        "HALT returned after {} ms, before the 3 ms timer",
        ms
    );
}
case!(
    hypercall_halt,
    Spec::new(
        "abi.hypercall.halt",
        Area::Abi,
        "HALT blocks until an interrupt (in-kernel irqchip), which is delivered"
    )
    .envs(PV)
    .flags(guest_lib::abi::case::FLAG_IRQCHIP)
    .reqs("LOCAL-HC-2,X86-HLT-2")
);

/// The dialect's read-only MSRs refuse guest writes with #GP(0) and keep their value.
fn pv_msr_guest_write() {
    let index = rt::case_param() as u32;
    let before = instr::rdmsr_safe(index);
    check!(before.is_ok(), "MSR {:#x} is readable: {:?}", index, before);
    check_eq!(
        instr::wrmsr_safe(index, 0x1234),
        Err(Exception::gp(0)),
        "WRMSR of MSR {:#x}",
        index
    );
    check_eq!(
        instr::rdmsr_safe(index),
        before,
        "MSR {:#x} afterwards",
        index
    );
}

const fn ro_spec(name: &'static str, summary: &'static str) -> Spec {
    // The local dialect's MSRs: an upstream host has none of them.
    Spec::new(name, Area::Abi, summary)
        .envs(Env::Hvm64.bit() | Env::PvLocal.bit())
        .local_dialect()
        .reqs("LOCAL-MSR-RO")
}

case_table!(
    pv_msr_guest_write,
    ro_spec,
    [
        (
            "abi.msr_readonly.signature",
            MSR_SIGNATURE,
            "the signature MSR refuses guest writes with #GP(0)"
        ),
        (
            "abi.msr_readonly.tsc_khz",
            MSR_TSC_KHZ,
            "the TSC kHz MSR refuses guest writes with #GP(0)"
        ),
        (
            "abi.msr_readonly.msr_12",
            MSR_UNKNOWN_12,
            "MSR 0x4b564d12 refuses guest writes with #GP(0)"
        ),
    ]
);

/// An x86 guest (that never registered a VIF page) can detect the dialect the way a PV kernel
/// does before it switches: the signature MSR, and the KVM leaves of CPUID.
fn detect_from_x86() {
    check_eq!(
        pv_local::signature(),
        Ok(SIGNATURE),
        "the signature MSR from an x86 guest"
    );
    let sig = instr::cpuid(guest_lib::abi::x86::cpuid::HYPERVISOR_BASE, 0);
    check_eq!(
        [sig[1], sig[2], sig[3]],
        [0x4b4d_564b, 0x564b_4d56, 0x0000_004d],
        "CPUID 0x40000000 signature"
    );
}
case!(
    detect_from_x86,
    Spec::new(
        "abi.detect_from_x86",
        Area::Abi,
        "an x86 guest detects the local dialect (signature MSR, KVM CPUID leaves)"
    )
    .envs(Env::Hvm64.bit())
    .local_dialect()
    .smoke()
    .reqs("LOCAL-DETECT-1")
);
