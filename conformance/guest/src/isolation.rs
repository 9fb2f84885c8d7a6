//! Isolation: guest user code must not reach hypervisor services meant for the guest kernel,
//! nor supervisor-only memory.

use guest_lib::abi::env::{Area, Env, X86_RING0_ENVS};
use guest_lib::abi::local::{HYPERCALL_VECTOR, hc};
use guest_lib::abi::x86::{idt_error_code, pfec};
use guest_lib::arch::instr;
use guest_lib::case::Spec;
use guest_lib::env::pv_local;
use guest_lib::exception::Exception;
use guest_lib::paging::{PteFlags, alloc_frame, map};
use guest_lib::user::{self, UserExit};
use guest_lib::{case, check, check_eq};

use crate::common::{TEST_VA, u_plus_one, upstream};

extern "C" fn u_local_hypercall(nr: u64) -> u64 {
    pv_local::hypercall(nr, 0, 0, 0).map_or(u64::MAX, |v| v as u64)
}

/// In the local dialect, the hypercall instruction from CPL3 must raise an exception in the
/// guest kernel, not halt the vCPU.
fn user_hypercall_denied() {
    let exit = user::run(u_local_hypercall, hc::HALT);
    check!(
        matches!(exit, UserExit::Exception(_)),
        "the HALT hypercall at CPL3 must raise an exception in the kernel, got {:?}",
        exit
    );
}
case!(
    user_hypercall_denied,
    Spec::new(
        "isolation.user_hypercall_denied",
        Area::Isolation,
        "the local dialect's hypercall from CPL3 is refused with an exception"
    )
    .envs(Env::PvLocal.bit())
    .reqs("PVM-ISO-1")
);

/// In an architectural guest, `int $0x1b` is an ordinary software interrupt: through the
/// library's DPL0 gate from CPL3 it raises #GP with the IDT vector in the error code. A PVM
/// host must not claim the vector for guests that do not speak its dialect.
fn user_int_0x1b_gp() {
    let exit = user::run(u_local_hypercall, hc::HALT);
    check_eq!(
        exit,
        UserExit::Exception(Exception::gp(idt_error_code(HYPERCALL_VECTOR))),
        "int $0x1b at CPL3"
    );
}
case!(
    user_int_0x1b_gp,
    Spec::new(
        "isolation.user_int_0x1b_gp",
        Area::Isolation,
        "int $0x1b from CPL3 in an x86 guest is #GP(0xda), not a hypercall"
    )
    .envs(Env::Hvm64.bit())
    .reqs("PVM-ISO-1,X86-EXC-GP")
);

/// Guest user code cannot read a supervisor-only (U/S=0) page of its kernel: #PF with P|U.
fn user_reads_supervisor_page() {
    let f = alloc_frame();
    f.write_u64(0, 0x5ec2e7);
    map(TEST_VA, &f, PteFlags::RW);
    instr::invlpg(TEST_VA.get());
    check_eq!(
        instr::read_u64_safe(TEST_VA.get()),
        Ok(0x5ec2e7),
        "CPL0 read of its own page"
    );
    check_eq!(
        user::run(user::read_probe, TEST_VA.get()),
        UserExit::Exception(Exception::pf(pfec::P | pfec::U, TEST_VA.get())),
        "CPL3 read of a U/S=0 page"
    );
}
case!(
    user_reads_supervisor_page,
    Spec::new(
        "isolation.user_reads_supervisor_page",
        Area::Isolation,
        "CPL3 read of a supervisor-only page faults with P|U"
    )
    .reqs("X86-PG-US-1,PVM-ISO-2")
);

// --- Port I/O from user mode -----------------------------------------------------------------

use guest_lib::abi::case::HostCheck;
use guest_lib::abi::case::io::{SCRATCH_PORT, UNBACKED_BYTE};
use guest_lib::exception::{Frame, vector};
use guest_lib::paging::{DevicePage, TestVa, map_device};
use guest_lib::{case_table, log, rt, vmm};

extern "C" fn u_port(kind: u64) -> u64 {
    let buf = [0x5au8; 4];
    let mut inbuf = [0u8; 4];
    match kind {
        0 => u64::from(instr::inb(SCRATCH_PORT)),
        1 => u64::from(instr::inw(SCRATCH_PORT)),
        2 => u64::from(instr::inl(SCRATCH_PORT)),
        3 => {
            instr::outb(SCRATCH_PORT, 1);
            0
        }
        4 => {
            instr::outw(SCRATCH_PORT, 1);
            0
        }
        5 => {
            instr::outl(SCRATCH_PORT, 1);
            0
        }
        6 => {
            instr::rep_ins(SCRATCH_PORT, 1, &mut inbuf, false);
            u64::from(inbuf[0])
        }
        _ => {
            instr::rep_outs(SCRATCH_PORT, 1, &buf, false);
            0
        }
    }
}

/// Port I/O at CPL3 without I/O permission (IOPL 0, no I/O bitmap) raises #GP(0) in the kernel
/// and never reaches the port: the VMM sees no access.
fn user_port_denied() {
    let kind = rt::case_param();
    let exit = user::run(u_port, kind);
    check_eq!(
        exit,
        UserExit::Exception(Exception::gp(0)),
        "port I/O at CPL3 (kind {})",
        kind
    );
    check_eq!(vmm::device_log_len(), 0, "accesses that reached the VMM");
}

const fn scratch_spec(name: &'static str, summary: &'static str) -> Spec {
    Spec::new(name, Area::Isolation, summary).host(HostCheck::Scratch)
}

case_table!(
    user_port_denied,
    scratch_spec,
    [
        (
            "isolation.user_port.in8",
            0,
            "IN (1 byte) at CPL3 without permission: #GP(0), no access",
            "X86-IO-PERM-1,PVM-ISO-3"
        ),
        (
            "isolation.user_port.in16",
            1,
            "IN (2 bytes) at CPL3 without permission: #GP(0), no access",
            "X86-IO-PERM-1,PVM-ISO-3"
        ),
        (
            "isolation.user_port.in32",
            2,
            "IN (4 bytes) at CPL3 without permission: #GP(0), no access",
            "X86-IO-PERM-1,PVM-ISO-3"
        ),
        (
            "isolation.user_port.out8",
            3,
            "OUT (1 byte) at CPL3 without permission: #GP(0), no access",
            "X86-IO-PERM-1,PVM-ISO-3"
        ),
        (
            "isolation.user_port.out16",
            4,
            "OUT (2 bytes) at CPL3 without permission: #GP(0), no access",
            "X86-IO-PERM-1,PVM-ISO-3"
        ),
        (
            "isolation.user_port.out32",
            5,
            "OUT (4 bytes) at CPL3 without permission: #GP(0), no access",
            "X86-IO-PERM-1,PVM-ISO-3"
        ),
        (
            "isolation.user_port.insb",
            6,
            "REP INSB at CPL3 without permission: #GP(0), no access",
            "X86-IO-PERM-1,PVM-ISO-3"
        ),
        (
            "isolation.user_port.outsb",
            7,
            "REP OUTSB at CPL3 without permission: #GP(0), no access",
            "X86-IO-PERM-1,PVM-ISO-3"
        ),
    ]
);

static GRANTED: guest_lib::PerCpu<bool> = guest_lib::PerCpu::new(false);

/// Raises the user frame's IOPL to 3 on its first #GP (once: a second #GP ends the run).
fn grant_iopl(frame: &mut Frame, ex: Exception) -> bool {
    use guest_lib::abi::x86::rflags;
    if ex.vector != vector::GP || GRANTED.replace(true) {
        return false;
    }
    frame.rflags |= rflags::IOPL;
    true
}

/// When the kernel grants IOPL 3, a user IN is allowed, and it is the VMM's port that answers
/// (it exits like the kernel's own): IOPL is virtual, never the hardware's. With parameter 1
/// the upstream ABI's rule: both guest modes run with hardware IOPL 0 and no I/O bitmap, and
/// ERETU keeps IOPL out of the user flags, so the IN is #GP(0) again and reaches nothing.
fn iopl3_grant() {
    GRANTED.set(false);
    user::set_fault_hook(Some(grant_iopl));
    let exit = user::run(u_port, 0);
    user::set_fault_hook(None);
    if rt::case_param() == 1 {
        check!(GRANTED.get(), "the first user IN did not raise #GP");
        check_eq!(
            exit,
            UserExit::Exception(Exception::gp(0)),
            "the user IN after the kernel granted IOPL 3"
        );
        check_eq!(
            vmm::device_log_len(),
            0,
            "INs that reached the VMM's device"
        );
        return;
    }
    check!(
        matches!(exit, UserExit::Returned(_)),
        "the IN with IOPL 3 ended with {:?}",
        exit
    );
    check_eq!(
        vmm::device_log_len(),
        1,
        "INs that reached the VMM's device"
    );
}
case!(
    iopl3_grant,
    scratch_spec(
        "isolation.iopl3_grant",
        "with IOPL 3 granted by the kernel, a user IN reaches the VMM's device"
    )
    .smoke()
    .reqs("X86-IO-PERM-1,PVM-ISO-3")
    .envs(X86_RING0_ENVS)
);
case!(
    iopl3_grant,
    upstream(
        "abi.upstream.ring.iopl",
        "user port I/O is #GP(0) even after the kernel grants IOPL 3 (hardware IOPL 0, no I/O bitmap)"
    )
    .host(HostCheck::Scratch)
    .param(1)
    .smoke()
    .reqs("UP-RING-7,PVM-ISO-3")
);

// --- Hostile values in the frame of a return to user mode ----------------------------------

/// How the fault hook spoils the user frame.
mod spoil {
    pub const RIP: u64 = 0;
    pub const SS: u64 = 1;
    pub const DATA_CS: u64 = 2;
    pub const NULL_CS: u64 = 3;
    pub const RSP: u64 = 4;
    pub const RFLAGS: u64 = 5;
    /// Added to the above: the upstream ABI's rule for the return (ERETU), which refuses any
    /// CS or SS but the host's user selectors with #GP(0) at the ERETU itself (notes §4.3).
    pub const ERETU: u64 = 0x100;
}

static SPOIL: guest_lib::PerCpu<Option<u64>> = guest_lib::PerCpu::new(None);

/// On the user's `int3`, makes the frame it returns to hostile (once).
fn spoil_frame(frame: &mut Frame, ex: Exception) -> bool {
    use guest_lib::abi::layout::sel::USER_DS;
    if ex.vector != vector::BP {
        return false;
    }
    let Some(how) = SPOIL.replace(None) else {
        return false;
    };
    match how {
        spoil::RIP => frame.rip = 0x8000_0000_0000_1000,
        spoil::SS => frame.ss = 0x78 | 3,
        spoil::DATA_CS => frame.cs = u64::from(USER_DS),
        // The null selector with RPL 3 (RPL 0 would be a return to the kernel).
        spoil::NULL_CS => frame.cs = 3,
        spoil::RSP => frame.rsp = 0x8000_0000_0000_2000,
        _ => frame.rflags |= 0xffff_ffff_ffc0_0000,
    }
    true
}

extern "C" fn u_trap_then_flags(_: u64) -> u64 {
    let _ = instr::int3_safe();
    instr::read_rflags()
}

/// A return to user mode through a frame with a hostile value (non-canonical RIP or RSP, a
/// bad SS, a data or null CS, reserved RFLAGS bits): the return is refused, or user code gets
/// an ordinary exception, or (reserved RFLAGS bits) the bits are dropped; never does user
/// code run with the bad state, and the kernel can enter user mode normally afterwards.
fn hostile_return() {
    let eretu = rt::case_param() & spoil::ERETU != 0;
    let how = rt::case_param() & !spoil::ERETU;
    SPOIL.set(Some(how));
    user::set_fault_hook(Some(spoil_frame));
    let exit = user::run(u_trap_then_flags, 0);
    user::set_fault_hook(None);
    log!("the spoiled return ended with {:?}", exit);
    // The exception the architecture gives for the spoiled return (an IRETQ fault in the
    // kernel; a dialect may deliver the same exception as a user event instead).
    let allowed: &[Exception] = match how {
        spoil::SS | spoil::DATA_CS if eretu => &[Exception::gp(0)],
        spoil::RIP | spoil::NULL_CS => &[Exception::gp(0)],
        spoil::SS => &[Exception::gp(0x78)],
        spoil::DATA_CS => &[Exception::gp(0x28)],
        spoil::RSP => &[Exception::new(vector::SS), Exception::gp(0)],
        _ => &[],
    };
    let held = match exit {
        UserExit::Returned(flags) if how == spoil::RFLAGS => flags & 0xffff_ffff_ffc0_0000 == 0,
        UserExit::ReturnRefused(e, _) => allowed.contains(&e),
        UserExit::Exception(e) => !eretu && allowed.contains(&e),
        _ => false,
    };
    check!(
        held,
        "the return through the spoiled frame ended with {:?}; allowed: {:?} (or, for reserved \
         RFLAGS bits, a return without them)",
        exit,
        allowed
    );
    check_eq!(
        user::run(u_plus_one, 7),
        UserExit::Returned(8),
        "an ordinary user run afterwards"
    );
}

const fn hostile_spec(name: &'static str, summary: &'static str) -> Spec {
    Spec::new(name, Area::Isolation, summary).reqs("PVM-ISO-4,X86-IRET-1")
}

case_table!(
    hostile_return,
    hostile_spec,
    [
        (
            "isolation.return.noncanonical_rip",
            spoil::RIP,
            "a return to user mode at a non-canonical RIP is refused"
        ),
        (
            "isolation.return.null_cs",
            spoil::NULL_CS,
            "a return to user mode with a null CS is refused"
        ),
        (
            "isolation.return.noncanonical_rsp",
            spoil::RSP,
            "a return with a non-canonical user RSP ends in a stack fault"
        ),
        (
            "isolation.return.reserved_rflags",
            spoil::RFLAGS,
            "reserved RFLAGS bits in a return frame do not reach user code"
        ),
    ]
);

const fn hostile_ring0_spec(name: &'static str, summary: &'static str) -> Spec {
    hostile_spec(name, summary).envs(X86_RING0_ENVS)
}

case_table!(
    hostile_return,
    hostile_ring0_spec,
    [
        (
            "isolation.return.bad_ss",
            spoil::SS,
            "a return to user mode with an SS past the GDT is refused"
        ),
        (
            "isolation.return.data_cs",
            spoil::DATA_CS,
            "a return to user mode with a data selector in CS is refused"
        ),
    ]
);

case_table!(
    hostile_return,
    upstream,
    [
        (
            "abi.upstream.ring.eretu_bad_ss",
            spoil::SS | spoil::ERETU,
            "ERETU with an SS other than the host's __USER_DS: #GP(0) at the ERETU",
            "UP-RING-8,PVM-ISO-4"
        ),
        (
            "abi.upstream.ring.eretu_data_cs",
            spoil::DATA_CS | spoil::ERETU,
            "ERETU with a data selector in CS: #GP(0) at the ERETU",
            "UP-RING-8,PVM-ISO-4"
        ),
    ]
);

// --- Guest-physical space without memory ---------------------------------------------------

const PROBE_VA: TestVa = TestVa::must(0x7000_0000);

/// A read of guest-physical space outside every memslot reaches the VMM as MMIO (which answers
/// all ones here), never memory of the host or of another guest; a write is dropped there.
fn outside_memslots() {
    let maxphys = instr::cpuid(0x8000_0008, 0)[0] & 0xff;
    let gpa = match rt::case_param() {
        0 => guest_lib::abi::layout::RAM_SIZE,
        1 => 0x2000_0000,
        2 => 0xf000_0000,
        3 => 0x1_0000_0000,
        _ => (1u64 << maxphys.clamp(36, 52)) - 4096,
    };
    let Some(page) = DevicePage::new(gpa) else {
        guest_lib::error!("{:#x} is not a device page", gpa);
    };
    map_device(
        PROBE_VA,
        &page,
        guest_lib::paging::PteFlags::RW.union(guest_lib::paging::PteFlags::US),
    );
    instr::invlpg(PROBE_VA.get());
    check_eq!(
        instr::read_u64_safe(PROBE_VA.get() + 0x18),
        Ok(u64::from_ne_bytes([UNBACKED_BYTE; 8])),
        "read of GPA {:#x}",
        gpa + 0x18
    );
    check_eq!(
        instr::write_u64_safe(PROBE_VA, 0x1234),
        Ok(()),
        "write to GPA {:#x}",
        gpa
    );
    check_eq!(
        instr::read_u64_safe(PROBE_VA.get()),
        Ok(u64::from_ne_bytes([UNBACKED_BYTE; 8])),
        "read after the write"
    );
    let n = vmm::device_log_len();
    check_eq!(n, 3, "MMIO exits the VMM saw");
    let first = vmm::device_log(0);
    check_eq!(
        first.map(|a| (a.mmio, a.addr)),
        Some((true, gpa + 0x18)),
        "the first exit's GPA"
    );
}

case_table!(
    outside_memslots,
    scratch_spec,
    [
        (
            "isolation.gpa.past_ram",
            0,
            "a read just past guest RAM is an MMIO exit, not memory",
            "PVM-ISO-5,KVM-MEMSLOT-2"
        ),
        (
            "isolation.gpa.512m",
            1,
            "a read at 512 MiB (no memslot) is an MMIO exit",
            "PVM-ISO-5,KVM-MEMSLOT-2"
        ),
        (
            "isolation.gpa.below_4g",
            2,
            "a read just below 4 GiB (no memslot) is an MMIO exit",
            "PVM-ISO-5,KVM-MEMSLOT-2"
        ),
        (
            "isolation.gpa.4g",
            3,
            "a read at 4 GiB (no memslot) is an MMIO exit",
            "PVM-ISO-5,KVM-MEMSLOT-2"
        ),
        (
            "isolation.gpa.top",
            4,
            "a read of the last page below MAXPHYADDR is an MMIO exit",
            "PVM-ISO-5,KVM-MEMSLOT-2"
        ),
    ]
);

/// A paging entry with an address bit at or above MAXPHYADDR is a reserved-bit #PF (RSVD|P),
/// not an access anywhere.
fn beyond_maxphyaddr() {
    let maxphys = instr::cpuid(0x8000_0008, 0)[0] & 0xff;
    if maxphys >= 52 {
        guest_lib::skip!("MAXPHYADDR is 52: no address bit above it");
    }
    let f = guest_lib::paging::alloc_frame();
    map(PROBE_VA, &f, PteFlags::RW | PteFlags::US);
    guest_lib::paging::set_pte(
        PROBE_VA,
        guest_lib::paging::Pte::map_with_high_bit(
            &f,
            guest_lib::paging::PteFlags::RW.union(guest_lib::paging::PteFlags::US),
            maxphys,
        ),
    );
    instr::invlpg(PROBE_VA.get());
    use guest_lib::abi::x86::pfec;
    check_eq!(
        instr::read_u64_safe(PROBE_VA.get()),
        Err(Exception::pf(pfec::P | pfec::RSVD, PROBE_VA.get())),
        "read through an entry with address bit {}",
        maxphys
    );
    check_eq!(vmm::device_log_len(), 0, "exits the access made");
}
case!(
    beyond_maxphyaddr,
    scratch_spec(
        "isolation.gpa.beyond_maxphyaddr",
        "an entry with an address bit at MAXPHYADDR is a reserved-bit #PF, not an access"
    )
    .smoke()
    .reqs("X86-PF-RSVD-1,PVM-ISO-5")
);

// --- Hypercalls from user mode (the local dialect) -----------------------------------------

extern "C" fn u_hypercall_args(sel: u64) -> u64 {
    let (nr, a0, a1) = match sel {
        0 => (hc::FLUSH_TLB, 0, 0),
        1 => (hc::SET_CR3, 0x2000, 0),
        2 => (hc::WRMSR, u64::from(crate::common::MSR_SCRATCH), 0xbad),
        3 => (hc::SET_VIF_GPA, 0x9000, 0),
        4 => (hc::LOAD_IDT, 0, 0),
        _ => (hc::IRET_FRAME, 0, 0),
    };
    pv_local::hypercall(nr, a0, a1, 0).map_or(u64::MAX, |v| v as u64)
}

/// Every hypercall from CPL3 is refused with an exception in the guest kernel and has no
/// effect (the scratch MSR, the VIF registration and the IDT are unchanged).
fn user_hypercall() {
    use guest_lib::abi::local::MSR_VIF;
    let sel = rt::case_param();
    let msr_before = instr::rdmsr_safe(crate::common::MSR_SCRATCH);
    let vif_before = vmm::get_msr(MSR_VIF);
    let idt_before = instr::sidt();
    let exit = user::run(u_hypercall_args, sel);
    check!(
        matches!(exit, UserExit::Exception(_)),
        "hypercall {} from CPL3 ended with {:?}",
        sel,
        exit
    );
    check_eq!(
        instr::rdmsr_safe(crate::common::MSR_SCRATCH),
        msr_before,
        "the scratch MSR afterwards"
    );
    check_eq!(vmm::get_msr(MSR_VIF), vif_before, "the VIF MSR afterwards");
    check_eq!(instr::sidt(), idt_before, "the IDT register afterwards");
}

const fn user_hc_spec(name: &'static str, summary: &'static str) -> Spec {
    Spec::new(name, Area::Isolation, summary)
        .envs(Env::PvLocal.bit())
        .reqs("PVM-ISO-1")
}

case_table!(
    user_hypercall,
    user_hc_spec,
    [
        (
            "isolation.user_hypercall.flush_tlb",
            0,
            "FLUSH_TLB from CPL3 is refused with an exception"
        ),
        (
            "isolation.user_hypercall.set_cr3",
            1,
            "SET_CR3 from CPL3 is refused with an exception"
        ),
        (
            "isolation.user_hypercall.wrmsr",
            2,
            "WRMSR hypercall from CPL3 is refused; the MSR is unchanged"
        ),
        (
            "isolation.user_hypercall.set_vif_gpa",
            3,
            "SET_VIF_GPA from CPL3 is refused; the registration is unchanged"
        ),
        (
            "isolation.user_hypercall.load_idt",
            4,
            "LOAD_IDT from CPL3 is refused; the IDT is unchanged"
        ),
        (
            "isolation.user_hypercall.iret_frame",
            5,
            "IRET_FRAME from CPL3 is refused with an exception"
        ),
    ]
);

// --- Supervisor-only memory: every access kind ---------------------------------------------

/// User write and fetch of a supervisor-only page fault (P|W|U, P|U|I), and the page keeps
/// its contents.
fn user_touches_supervisor_page() {
    if let Err(guest_lib::env::EnvError::Unsupported(why)) =
        guest_lib::env::current().supervisor_only_pages()
    {
        guest_lib::skip!("{}", why);
    }
    let f = alloc_frame();
    f.write_u64(0, 0xc3);
    map(TEST_VA, &f, PteFlags::RW);
    instr::invlpg(TEST_VA.get());
    let fetch = rt::case_param() == 1;
    let exit = if fetch {
        user::run_raw(TEST_VA.get(), 0)
    } else {
        user::probe_write(TEST_VA)
    };
    let want = if fetch {
        Exception::pf(pfec::P | pfec::U | pfec::I, TEST_VA.get())
    } else {
        Exception::pf(pfec::P | pfec::W | pfec::U, TEST_VA.get())
    };
    check_eq!(exit, UserExit::Exception(want), "the CPL3 access");
    check_eq!(f.read_u64(0), 0xc3, "the page's contents afterwards");
}

const fn iso_spec(name: &'static str, summary: &'static str) -> Spec {
    Spec::new(name, Area::Isolation, summary)
}

case_table!(
    user_touches_supervisor_page,
    iso_spec,
    [
        (
            "isolation.user_writes_supervisor_page",
            0,
            "CPL3 write of a supervisor-only page faults with P|W|U",
            "X86-PG-US-1,PVM-ISO-2"
        ),
        (
            "isolation.user_fetches_supervisor_page",
            1,
            "CPL3 fetch from a supervisor-only page faults with P|U|I",
            "X86-PG-US-1,PVM-ISO-2"
        ),
    ]
);

// --- Two VMs at once -----------------------------------------------------------------------

/// Frames each VM fills (the same GPAs in both: a host that shared memory between them would
/// show the other's pattern there).
const SIBLING_FRAMES: usize = 32;

fn pattern(sibling: bool, frame: usize, word: u64) -> u64 {
    let who = if sibling {
        0x5b1b_0000_0000_0000
    } else {
        0x3a1a_0000_0000_0000
    };
    who | ((frame as u64) << 16) | word
}

/// Whether any word of `frames` holds the other VM's pattern; whether all of ours is intact.
fn scan(frames: &[guest_lib::paging::Frame], sibling: bool) -> (u64, u64) {
    let (mut foreign, mut damaged) = (0, 0);
    for (i, f) in frames.iter().enumerate() {
        for w in (0..512u64).step_by(8) {
            let v = f.read_u64(w * 8);
            if v == pattern(!sibling, i, w) {
                foreign += 1;
            } else if v != pattern(sibling, i, w) {
                damaged += 1;
            }
        }
    }
    (foreign, damaged)
}

/// Two VMs running at the same time (the host starts the second at checkpoint 0) fill the same
/// guest-physical frames with their own patterns and scan them while the other runs: neither
/// ever sees the other's pattern, and neither's memory changes.
fn two_vms() {
    use guest_lib::report::checkpoint;
    let sibling = rt::case_param() & guest_lib::abi::case::io::SIBLING_PARAM != 0;
    let frames: [guest_lib::paging::Frame; SIBLING_FRAMES] =
        core::array::from_fn(|_| alloc_frame());
    for (i, f) in frames.iter().enumerate() {
        for w in (0..512u64).step_by(8) {
            f.write_u64(w * 8, pattern(sibling, i, w));
        }
    }
    if !sibling {
        checkpoint(0, [0; 3]);
    }
    let t0 = instr::rdtsc();
    let mut rounds = 0u64;
    let (mut foreign, mut damaged) = (0, 0);
    while instr::rdtsc() - t0 < 30 * rt::cycles_per_ms() || rounds < 2 {
        let (f, d) = scan(&frames, sibling);
        foreign += f;
        damaged += d;
        rounds += 1;
    }
    if !sibling {
        checkpoint(1, [0; 3]);
        let (f, d) = scan(&frames, sibling);
        foreign += f;
        damaged += d;
    }
    log!(
        "{} VM: {} scans",
        if sibling { "second" } else { "first" },
        rounds
    );
    check_eq!(foreign, 0, "words holding the other VM's pattern");
    check_eq!(damaged, 0, "words of this VM's pattern that changed");
}
case!(
    two_vms,
    Spec::new(
        "isolation.two_vms",
        Area::Isolation,
        "two VMs at once fill and scan the same GPAs: neither sees the other's memory"
    )
    .host(HostCheck::Sibling)
    .smoke()
    .reqs("PVM-ISO-7")
);
