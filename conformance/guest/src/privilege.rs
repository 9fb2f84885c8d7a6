//! Privilege transitions: privileged instructions at CPL3, the user/supervisor round trip,
//! SYSCALL, and what CPL0 code sees of its own privilege.

use guest_lib::PerCpu;
use guest_lib::abi::case::HostCheck;
use guest_lib::abi::env::Area;
use guest_lib::abi::layout::{self, sel::KERNEL_CS, sel::KERNEL_DS};
use guest_lib::abi::x86::{cr0, cr4, desc, msr, rflags};
use guest_lib::arch::instr;
use guest_lib::case::Spec;
use guest_lib::paging::PteFlags;
use guest_lib::{case_table, rt};

use crate::common::{TEST_VA, in_image, upstream};
use guest_lib::abi::env::X86_RING0_ENVS;
use guest_lib::abi::upstream::{
    HOST_GDT_ENTRIES, HOST_IDT_LIMIT, HOST_TSS_SELECTOR, HOST_USER_CS, hc,
};
use guest_lib::exception::{Exception, Frame, SyscallFrame, vector};
use guest_lib::user::{self, UserExit};
use guest_lib::{case, check, check_eq, log};

type Probe = extern "C" fn(u64) -> u64;

/// A CPL3 probe returns 0 when its instruction did not fault (a fault ends the user run).
fn ran<T>(_: Result<T, Exception>) -> u64 {
    0
}

/// The POST-code port: harmless to write, and not the report port.
const POST_PORT: u16 = 0x80;

extern "C" fn p_hlt(_: u64) -> u64 {
    ran(instr::hlt_safe())
}
extern "C" fn p_cli(_: u64) -> u64 {
    ran(instr::cli_safe())
}
extern "C" fn p_sti(_: u64) -> u64 {
    ran(instr::sti_safe())
}
extern "C" fn p_in(_: u64) -> u64 {
    ran(instr::inb_safe(POST_PORT))
}
extern "C" fn p_out(_: u64) -> u64 {
    ran(instr::outb_safe(POST_PORT, 0))
}
extern "C" fn p_rdmsr(_: u64) -> u64 {
    ran(instr::rdmsr_safe(msr::TSC))
}
extern "C" fn p_wrmsr(_: u64) -> u64 {
    ran(instr::rewrite_msr_safe(msr::KERNEL_GS_BASE))
}
extern "C" fn p_read_cr0(_: u64) -> u64 {
    ran(instr::read_cr0_safe())
}
extern "C" fn p_read_cr3(_: u64) -> u64 {
    ran(instr::read_cr3_safe())
}
extern "C" fn p_read_cr4(_: u64) -> u64 {
    ran(instr::read_cr4_safe())
}
// The writes use the values CR0, CR3 and CR4 hold during the probe, so a host that wrongly
// executes them changes nothing.
extern "C" fn p_write_cr0(_: u64) -> u64 {
    ran(instr::write_cr0_probe_safe(layout::BOOT_CR0))
}
extern "C" fn p_write_cr3(_: u64) -> u64 {
    ran(instr::write_cr3_probe_safe(layout::PML4_GPA))
}
extern "C" fn p_write_cr4(_: u64) -> u64 {
    ran(instr::write_cr4_probe_safe(layout::BOOT_CR4))
}
extern "C" fn p_read_dr7(_: u64) -> u64 {
    ran(instr::read_dr7_safe())
}
extern "C" fn p_write_dr7(_: u64) -> u64 {
    ran(instr::write_dr7_safe(DR7_RESET))
}
extern "C" fn p_lgdt(_: u64) -> u64 {
    ran(instr::reload_gdtr_safe())
}
extern "C" fn p_lidt(_: u64) -> u64 {
    ran(instr::reload_idtr_safe())
}
extern "C" fn p_lldt(_: u64) -> u64 {
    ran(instr::reload_ldtr_safe())
}
extern "C" fn p_ltr(_: u64) -> u64 {
    ran(instr::reload_tr_safe())
}
extern "C" fn p_invlpg(_: u64) -> u64 {
    ran(instr::invlpg_safe(TEST_VA.get()))
}
extern "C" fn p_invd(_: u64) -> u64 {
    ran(instr::invd_at_cpl3_safe())
}
extern "C" fn p_wbinvd(_: u64) -> u64 {
    ran(instr::wbinvd_safe())
}
extern "C" fn p_clts(_: u64) -> u64 {
    ran(instr::clts_safe())
}
extern "C" fn p_swapgs(_: u64) -> u64 {
    ran(instr::swapgs_safe())
}
extern "C" fn p_rdpmc(_: u64) -> u64 {
    ran(instr::rdpmc_safe(0))
}
extern "C" fn p_load_kernel_ds(_: u64) -> u64 {
    ran(instr::load_ds_safe(KERNEL_DS))
}

/// DR7's value after reset (bit 10 reads as 1).
const DR7_RESET: u64 = 0x400;

/// Each CPL3 probe and the #GP error code the architecture gives it.
const CPL3_GP: [(Probe, u32); 26] = [
    (p_hlt, 0),
    (p_cli, 0),
    (p_sti, 0),
    (p_in, 0),
    (p_out, 0),
    (p_rdmsr, 0),
    (p_wrmsr, 0),
    (p_read_cr0, 0),
    (p_read_cr3, 0),
    (p_read_cr4, 0),
    (p_write_cr0, 0),
    (p_write_cr3, 0),
    (p_write_cr4, 0),
    (p_read_dr7, 0),
    (p_write_dr7, 0),
    (p_lgdt, 0),
    (p_lidt, 0),
    (p_lldt, 0),
    (p_ltr, 0),
    (p_invlpg, 0),
    (p_invd, 0),
    (p_wbinvd, 0),
    (p_clts, 0),
    (p_swapgs, 0),
    (p_rdpmc, 0),
    // A data segment of DPL 0 loaded at CPL3: #GP with the selector as error code.
    (p_load_kernel_ds, KERNEL_DS as u32),
];

/// Privileged instructions at CPL3 raise #GP in the supervisor (one instance per instruction).
fn cpl3_gp() {
    let i = rt::case_param() as usize;
    let Some(&(probe, ec)) = CPL3_GP.get(i) else {
        guest_lib::error!("no CPL3 probe {}", i)
    };
    check_eq!(
        user::run(probe, 0),
        UserExit::Exception(Exception::gp(ec)),
        "the instruction at CPL3"
    );
}

const fn cpl3_gp_spec(name: &'static str, summary: &'static str) -> Spec {
    Spec::new(name, Area::Priv, summary).reqs("X86-PRIV-1,PVM-RING-1")
}

case_table!(
    cpl3_gp,
    cpl3_gp_spec,
    [
        ("priv.cpl3_gp.hlt", 0, "HLT at CPL3 raises #GP(0)"),
        ("priv.cpl3_gp.cli", 1, "CLI at CPL3 (IOPL 0) raises #GP(0)"),
        ("priv.cpl3_gp.sti", 2, "STI at CPL3 (IOPL 0) raises #GP(0)"),
        (
            "priv.cpl3_gp.in",
            3,
            "IN at CPL3 (IOPL 0, no I/O bitmap) raises #GP(0)"
        ),
        (
            "priv.cpl3_gp.out",
            4,
            "OUT at CPL3 (IOPL 0, no I/O bitmap) raises #GP(0)"
        ),
        ("priv.cpl3_gp.rdmsr", 5, "RDMSR at CPL3 raises #GP(0)"),
        ("priv.cpl3_gp.wrmsr", 6, "WRMSR at CPL3 raises #GP(0)"),
        (
            "priv.cpl3_gp.read_cr0",
            7,
            "MOV from CR0 at CPL3 raises #GP(0)"
        ),
        (
            "priv.cpl3_gp.read_cr3",
            8,
            "MOV from CR3 at CPL3 raises #GP(0)"
        ),
        (
            "priv.cpl3_gp.read_cr4",
            9,
            "MOV from CR4 at CPL3 raises #GP(0)"
        ),
        (
            "priv.cpl3_gp.write_cr0",
            10,
            "MOV to CR0 at CPL3 raises #GP(0)"
        ),
        (
            "priv.cpl3_gp.write_cr3",
            11,
            "MOV to CR3 at CPL3 raises #GP(0)"
        ),
        (
            "priv.cpl3_gp.write_cr4",
            12,
            "MOV to CR4 at CPL3 raises #GP(0)"
        ),
        (
            "priv.cpl3_gp.read_dr7",
            13,
            "MOV from DR7 at CPL3 raises #GP(0)"
        ),
        (
            "priv.cpl3_gp.write_dr7",
            14,
            "MOV to DR7 at CPL3 raises #GP(0)"
        ),
        ("priv.cpl3_gp.lgdt", 15, "LGDT at CPL3 raises #GP(0)"),
        ("priv.cpl3_gp.lidt", 16, "LIDT at CPL3 raises #GP(0)"),
        ("priv.cpl3_gp.lldt", 17, "LLDT at CPL3 raises #GP(0)"),
        ("priv.cpl3_gp.ltr", 18, "LTR at CPL3 raises #GP(0)"),
        ("priv.cpl3_gp.invlpg", 19, "INVLPG at CPL3 raises #GP(0)"),
        ("priv.cpl3_gp.invd", 20, "INVD at CPL3 raises #GP(0)"),
        ("priv.cpl3_gp.wbinvd", 21, "WBINVD at CPL3 raises #GP(0)"),
        ("priv.cpl3_gp.clts", 22, "CLTS at CPL3 raises #GP(0)"),
        ("priv.cpl3_gp.swapgs", 23, "SWAPGS at CPL3 raises #GP(0)"),
        (
            "priv.cpl3_gp.rdpmc",
            24,
            "RDPMC at CPL3 with CR4.PCE=0 raises #GP(0)"
        ),
        (
            "priv.cpl3_gp.load_kernel_ds",
            25,
            "loading DS with a DPL0 data segment at CPL3 raises #GP(selector)"
        ),
    ]
);

static SNAPSHOT: PerCpu<Option<Frame>> = PerCpu::new(None);

fn snapshot_probe_trap(frame: &mut Frame, ex: Exception) -> bool {
    let (_, trap) = user::gpr_probe();
    if ex.vector != vector::UD || frame.rip != trap {
        return false;
    }
    SNAPSHOT.set(Some(*frame));
    frame.rip += 2;
    true
}

/// CPL3 -> CPL0 (#UD) -> CPL3 (iretq) preserves all 15 general registers both ways.
fn user_roundtrip_gprs() {
    SNAPSHOT.set(None);
    user::set_fault_hook(Some(snapshot_probe_trap));
    let (probe, _) = user::gpr_probe();
    let exit = user::run_raw(probe, 0);
    user::set_fault_hook(None);
    let Some(frame) = SNAPSHOT.get() else {
        check!(
            false,
            "the probe's #UD never reached the supervisor (exit {:?})",
            exit
        );
        return;
    };
    let seen = user::gpr_mismatch_mask(&user::frame_gprs(&frame));
    check_eq!(
        seen,
        0u64,
        "registers changed on the way to CPL0 (bit i = register i)"
    );
    check_eq!(frame.cs & 3, 3u64, "frame CS RPL");
    check_eq!(
        exit,
        UserExit::Returned(0),
        "registers changed on the way back to CPL3 (mask)"
    );
}
case!(
    user_roundtrip_gprs,
    Spec::new(
        "priv.user_roundtrip_gprs",
        Area::Priv,
        "CPL3->CPL0->CPL3 via #UD/iretq keeps every GPR"
    )
    .reqs("X86-EVT-2,PVM-SWITCH-1")
);

static SYSCALL_SEEN: PerCpu<Option<SyscallFrame>> = PerCpu::new(None);

fn record_syscall(f: &mut SyscallFrame) -> bool {
    SYSCALL_SEEN.set(Some(*f));
    false
}

/// Runs `probe` at CPL3 with the SYSCALL entry recording its frame: how the run ended, and
/// the frame the kernel's entry saw (if it ran).
fn run_recording_syscall(probe: Probe) -> (UserExit, Option<SyscallFrame>) {
    SYSCALL_SEEN.set(None);
    user::set_syscall_hook(Some(record_syscall));
    let exit = user::run(probe, 0);
    user::set_syscall_hook(None);
    (exit, SYSCALL_SEEN.get())
}

extern "C" fn u_syscall(_: u64) -> u64 {
    instr::syscall(0x77)
}

extern "C" fn u_syscall_hypercall_number(_: u64) -> u64 {
    instr::syscall(hc::TLB_FLUSH_CURRENT)
}

/// Upstream ABI: SYSCALL is a hypercall only from supervisor mode; from user mode it is an
/// event to the guest kernel's LSTAR whatever RAX holds (notes §4.1, §5.2), so user code
/// cannot call the host with a hypercall number.
fn user_syscall_not_hypercall() {
    let (exit, seen) = run_recording_syscall(u_syscall_hypercall_number);
    check_eq!(
        exit,
        UserExit::Syscall(hc::TLB_FLUSH_CURRENT),
        "a user SYSCALL with a hypercall number in RAX must reach the kernel's LSTAR"
    );
    check!(seen.is_some(), "the kernel's SYSCALL entry did not run");
}
case!(
    user_syscall_not_hypercall,
    upstream(
        "abi.upstream.user_syscall_not_hypercall",
        "a SYSCALL from user mode with a hypercall number in RAX is an event to LSTAR, no hypercall"
    )
    .reqs("PVM-ISO-1")
);

/// SYSCALL from CPL3 enters LSTAR at CPL0 (CS from STAR) with RCX = next RIP, R11 = RFLAGS.
fn syscall_to_cpl0() {
    let (exit, seen) = run_recording_syscall(u_syscall);
    check_eq!(
        exit,
        UserExit::Syscall(0x77),
        "syscall must reach the CPL0 handler"
    );
    if let Some(f) = seen {
        let entry = u_syscall as *const () as u64;
        check!(
            f.gprs.rcx > entry && f.gprs.rcx < entry + 64,
            "RCX {:#x} is not a return address in the caller",
            f.gprs.rcx
        );
        check_eq!(
            f.gprs.r11 & rflags::FIXED,
            rflags::FIXED,
            "R11 holds RFLAGS (bit 1 set)"
        );
    }
}
case!(
    syscall_to_cpl0,
    Spec::new(
        "priv.syscall_to_cpl0",
        Area::Priv,
        "SYSCALL from CPL3 enters LSTAR at CPL0 with RCX/R11 set"
    )
    .reqs("X86-SYSCALL-1")
);

/// Code running as the guest kernel sees CS with RPL 0 (the selector it loaded).
fn cs_rpl_at_cpl0() {
    let cs = instr::read_cs();
    log!("cs = {:#x}", cs);
    check_eq!(cs, KERNEL_CS, "CS as read by `mov %cs` at CPL0");
}
case!(
    cs_rpl_at_cpl0,
    Spec::new(
        "priv.cs_rpl_at_cpl0",
        Area::Priv,
        "`mov %cs` at CPL0 reads the kernel selector (RPL 0)"
    )
    .smoke()
    .reqs("X86-PRIV-2,PVM-RING-2")
    .host(HostCheck::None)
    .envs(X86_RING0_ENVS)
);

/// Upstream ABI: the guest kernel runs in hardware ring 3 on the host's `__USER_CS`.
fn cs_upstream() {
    check_eq!(
        instr::read_cs(),
        HOST_USER_CS,
        "CS as read by `mov %cs` in supervisor mode"
    );
}
case!(
    cs_upstream,
    upstream(
        "abi.upstream.ring.cs",
        "`mov %cs` in supervisor mode reads the host's __USER_CS, 0x33"
    )
    .smoke()
    .reqs("UP-RING-1")
);

// --- CPL0: the same instructions take effect ---------------------------------------------------

/// CLI and STI at CPL0 change RFLAGS.IF as PUSHF shows it.
fn cpl0_cli_sti() {
    let _ = instr::sti_safe();
    let on = instr::read_rflags() & rflags::IF;
    let _ = instr::cli_safe();
    let off = instr::read_rflags() & rflags::IF;
    check_eq!(on, rflags::IF, "PUSHF after STI shows IF=1");
    check_eq!(off, 0u64, "PUSHF after CLI shows IF=0");
}
case!(
    cpl0_cli_sti,
    Spec::new(
        "priv.cpl0.cli_sti",
        Area::Priv,
        "CLI/STI at CPL0 take effect as PUSHF shows (ring compression invisible)"
    )
    .reqs("X86-PRIV-3,PVM-RING-2")
    .envs(X86_RING0_ENVS)
);

/// Upstream ABI: the hardware runs the guest kernel with IF=1 and IOPL 0 whatever it does;
/// CLI and STI trap and set the virtual IF in the PVCS.
fn flags_upstream() {
    let env = guest_lib::env::current();
    let booted = (instr::read_rflags(), env.virtual_interrupt_flag());
    let _ = instr::sti_safe();
    let on = (instr::read_rflags(), env.virtual_interrupt_flag());
    let _ = instr::cli_safe();
    let off = (instr::read_rflags(), env.virtual_interrupt_flag());
    for (when, (f, vif), want) in [
        ("as booted", booted, false),
        ("after STI", on, true),
        ("after CLI", off, false),
    ] {
        check_eq!(f & rflags::IF, rflags::IF, "PUSHF's IF {}", when);
        check_eq!(f & rflags::IOPL, 0u64, "PUSHF's IOPL {}", when);
        check_eq!(vif, Some(want), "the virtual IF {}", when);
    }
}
case!(
    flags_upstream,
    upstream(
        "abi.upstream.ring.flags",
        "PUSHF in supervisor mode shows IF=1 and IOPL 0; CLI/STI set only the PVCS's virtual IF"
    )
    .reqs("UP-RING-2")
);

/// CR0.WP and CR0.TS written at CPL0 read back.
fn cpl0_cr0_bits() {
    let base = instr::read_cr0();
    instr::set_cr0_wp(false);
    let wp_off = instr::read_cr0();
    instr::set_cr0_wp(true);
    instr::set_cr0_ts(true);
    let ts_on = instr::read_cr0();
    let _ = instr::clts_safe();
    let after = instr::read_cr0();
    check_eq!(wp_off, base & !cr0::WP, "CR0 with WP cleared");
    check_eq!(ts_on, base | cr0::TS, "CR0 with TS set");
    check_eq!(after, base, "CLTS clears TS and CR0 is back");
    check_eq!(
        u64::from(instr::smsw()),
        base & 0xffff,
        "SMSW is CR0's low word"
    );
}
case!(
    cpl0_cr0_bits,
    Spec::new(
        "priv.cpl0.cr0_bits",
        Area::Priv,
        "CR0.WP and CR0.TS written at CPL0 read back; CLTS clears TS; SMSW agrees"
    )
    .reqs("X86-PRIV-3")
);

extern "C" fn p_rdtsc(_: u64) -> u64 {
    instr::rdtsc_safe().map_or(0, |t| t | 1)
}

/// CR4.TSD set at CPL0 makes RDTSC at CPL3 raise #GP(0); cleared, it works again.
fn cpl0_cr4_tsd() {
    instr::set_cr4_user_bits(cr4::TSD, true);
    let tsd_on = instr::read_cr4() & cr4::TSD;
    let denied = user::run(p_rdtsc, 0);
    instr::set_cr4_user_bits(cr4::TSD, false);
    let allowed = user::run(p_rdtsc, 0);
    check_eq!(tsd_on, cr4::TSD, "CR4.TSD reads back");
    check_eq!(
        denied,
        UserExit::Exception(Exception::gp(0)),
        "RDTSC at CPL3 with CR4.TSD=1"
    );
    check!(
        matches!(allowed, UserExit::Returned(t) if t != 0),
        "RDTSC at CPL3 with CR4.TSD=0: {:?}",
        allowed
    );
}
case!(
    cpl0_cr4_tsd,
    Spec::new(
        "priv.cpl0.cr4_tsd",
        Area::Priv,
        "CR4.TSD=1 makes RDTSC at CPL3 #GP(0); TSD=0 allows it"
    )
    .reqs("X86-PRIV-4")
    .envs(X86_RING0_ENVS)
);

/// Upstream ABI: the guest's CR4 is stored, not loaded into the hardware, and RDTSC does not
/// trap: with the guest's CR4.TSD set, RDTSC in user mode still runs.
fn cr4_tsd_upstream() {
    instr::set_cr4_user_bits(cr4::TSD, true);
    let tsd_on = instr::read_cr4() & cr4::TSD;
    let ran = user::run(p_rdtsc, 0);
    instr::set_cr4_user_bits(cr4::TSD, false);
    check_eq!(tsd_on, cr4::TSD, "CR4.TSD reads back");
    check!(
        matches!(ran, UserExit::Returned(t) if t != 0),
        "RDTSC in user mode with the guest's CR4.TSD=1: {:?}",
        ran
    );
}
case!(
    cr4_tsd_upstream,
    upstream(
        "abi.upstream.ring.cr4_tsd",
        "the guest's CR4.TSD reads back but has no hardware effect: RDTSC in user mode runs"
    )
    .reqs("UP-RING-3")
);

/// Upstream ABI: the guest's CR4 is stored, not loaded into the hardware, whose
/// CR4.OSXMMEXCPT is the host's (set): with the guest's OSXMMEXCPT clear, an unmasked SIMD
/// floating-point exception is still #XM, in both modes.
fn cr4_osxmmexcpt_upstream() {
    instr::enable_sse(false);
    let clear = instr::read_cr4() & cr4::OSXMMEXCPT;
    let kernel = instr::sse_zero_divide_safe();
    let user = user::run(u_sse_div0, 0);
    instr::enable_sse(true);
    check_eq!(clear, 0u64, "CR4.OSXMMEXCPT reads back clear");
    check_eq!(
        kernel,
        Err(Exception::new(vector::XM)),
        "an unmasked SSE zero-divide in supervisor mode with the guest's OSXMMEXCPT clear"
    );
    check_eq!(
        user,
        UserExit::Exception(Exception::new(vector::XM)),
        "an unmasked SSE zero-divide in user mode with the guest's OSXMMEXCPT clear"
    );
}
case!(
    cr4_osxmmexcpt_upstream,
    upstream(
        "abi.upstream.ring.cr4_osxmmexcpt",
        "the guest's CR4.OSXMMEXCPT=0 reads back but has no hardware effect: #XM, not #UD"
    )
    .reqs("UP-RING-3")
);

/// CR3 written with its own value reads back; DR7 written at CPL0 reads back.
fn cpl0_cr3_dr7() {
    let cr3 = instr::read_cr3();
    check_eq!(
        instr::reload_cr3_safe(),
        Ok(()),
        "MOV to CR3 of its own value"
    );
    check_eq!(instr::read_cr3(), cr3, "CR3 after the reload");
    let le_ge: u64 = 0x300; // exact-breakpoint bits: no breakpoint enabled
    check_eq!(
        instr::write_dr7_safe(DR7_RESET | le_ge),
        Ok(()),
        "MOV to DR7"
    );
    check_eq!(
        instr::read_dr7_safe(),
        Ok(DR7_RESET | le_ge),
        "DR7 reads back"
    );
    check_eq!(
        instr::write_dr7_safe(DR7_RESET),
        Ok(()),
        "DR7 back to its reset value"
    );
}
case!(
    cpl0_cr3_dr7,
    Spec::new(
        "priv.cpl0.cr3_dr7",
        Area::Priv,
        "MOV to CR3 and DR7 at CPL0 take effect and read back"
    )
    .reqs("X86-PRIV-3")
);

/// SWAPGS at CPL0 exchanges GS_BASE and KERNEL_GS_BASE.
fn cpl0_swapgs() {
    let mark = 0x0000_7f11_2233_4000;
    check_eq!(
        instr::wrmsr_safe(msr::KERNEL_GS_BASE, mark),
        Ok(()),
        "KERNEL_GS_BASE"
    );
    let gs = instr::rdmsr_safe(msr::GS_BASE);
    check_eq!(instr::swapgs_safe(), Ok(()), "SWAPGS at CPL0");
    let (gs_after, kgs_after) = (
        instr::rdmsr_safe(msr::GS_BASE),
        instr::rdmsr_safe(msr::KERNEL_GS_BASE),
    );
    check_eq!(instr::swapgs_safe(), Ok(()), "SWAPGS back");
    check_eq!(gs_after, Ok(mark), "GS_BASE after SWAPGS");
    check_eq!(kgs_after, gs, "KERNEL_GS_BASE after SWAPGS");
}
case!(
    cpl0_swapgs,
    Spec::new(
        "priv.cpl0.swapgs",
        Area::Priv,
        "SWAPGS at CPL0 exchanges GS_BASE and KERNEL_GS_BASE"
    )
    .reqs("X86-PRIV-3")
);

/// WBINVD, LGDT/LIDT/LLDT of the current values and INVLPG at CPL0 do not fault.
fn cpl0_system_insns() {
    check_eq!(instr::wbinvd_safe(), Ok(()), "WBINVD");
    check_eq!(instr::reload_gdtr_safe(), Ok(()), "LGDT");
    check_eq!(instr::reload_idtr_safe(), Ok(()), "LIDT");
    check_eq!(instr::reload_ldtr_safe(), Ok(()), "LLDT");
    check_eq!(instr::invlpg_safe(TEST_VA.get()), Ok(()), "INVLPG");
    check_eq!(
        instr::reload_tr_safe(),
        Err(Exception::gp(u32::from(layout::sel::TSS))),
        "LTR of the busy TSS: #GP(selector)"
    );
}
case!(
    cpl0_system_insns,
    Spec::new(
        "priv.cpl0.system_insns",
        Area::Priv,
        "WBINVD, LGDT/LIDT/LLDT, INVLPG at CPL0 work; LTR of a busy TSS is #GP(sel)"
    )
    .reqs("X86-PRIV-3")
    .envs(X86_RING0_ENVS)
);

/// A 64-bit system descriptor of `base` and limit 0x67 (a TSS's size), type `kind`, present
/// or not.
const fn system_descriptor(base: u64, kind: u64, present: bool) -> [u64; 2] {
    desc::system(base, 0x67, kind, present)
}

/// Selector 0x08 of [`scratch_gdt`]: a data segment.
const GDT_DATA: u16 = 0x08;
/// A base for the system descriptors of [`scratch_gdt`] (what it points at is never used).
const SYSTEM_BASE: u64 = TEST_VA.get() + 0x800;

/// A GDT in a scratch frame mapped at `TEST_VA`: a data segment at [`GDT_DATA`] and the
/// 16-byte `system` descriptors at their selectors.
fn scratch_gdt(system: &[(u16, [u64; 2])]) -> guest_lib::paging::Frame {
    let f = guest_lib::paging::alloc_frame();
    guest_lib::paging::map(TEST_VA, &f, PteFlags::RW);
    instr::invlpg(TEST_VA.get());
    f.write_u64(u64::from(GDT_DATA), 0x00cf_9300_0000_ffff);
    for &(sel, desc) in system {
        f.write_u64(u64::from(sel), desc[0]);
        f.write_u64(u64::from(sel) + 8, desc[1]);
    }
    f
}

/// The environment's stored descriptor tables with `limit` for the table at `TEST_VA`
/// loaded, or the case ends (ERROR where an upstream environment has none, FAIL where LGDT
/// faults).
fn with_scratch_gdt(limit: u16, body: impl FnOnce(&guest_lib::arch::StoredGdt<'_>)) {
    let Some(mut tables) = guest_lib::env::current().stored_descriptor_tables() else {
        guest_lib::error!("an upstream environment without stored descriptor tables");
    };
    match tables.load_gdt(TEST_VA, limit) {
        Ok(gdt) => body(&gdt),
        Err(e) => check!(false, "LGDT of the case's GDT: {:?}", e),
    }
}

/// Upstream ABI: LGDT is stored and LTR emulated (KVM's `__load_segment_descriptor`) against
/// the guest's own GDT at the stored GDTR, since the hardware runs on the host's: an available
/// TSS loads and is marked busy in the guest's memory; a selector past the limit, a
/// non-TSS descriptor, a busy TSS and a TSS with a non-canonical base are #GP(selector), the
/// null selector #GP(0), a TSS not present #NP(selector).
fn ltr_guest_gdt() {
    const AVAILABLE: u16 = 0x10;
    const BUSY: u16 = 0x20;
    const ABSENT: u16 = 0x30;
    const NON_CANONICAL: u16 = 0x40;
    const PAST_LIMIT: u16 = 0x50;
    let f = scratch_gdt(&[
        (
            AVAILABLE,
            system_descriptor(SYSTEM_BASE, desc::TSS_AVAILABLE, true),
        ),
        (BUSY, system_descriptor(SYSTEM_BASE, desc::TSS_BUSY, true)),
        (
            ABSENT,
            system_descriptor(SYSTEM_BASE, desc::TSS_AVAILABLE, false),
        ),
        (
            NON_CANONICAL,
            system_descriptor(
                0x8000_0000_0000_0000 | SYSTEM_BASE,
                desc::TSS_AVAILABLE,
                true,
            ),
        ),
    ]);
    with_scratch_gdt(PAST_LIMIT - 1, |gdt| {
        let ltr = |sel: u16| gdt.ltr(sel);
        let gp = |sel: u16| Err(Exception::gp(u32::from(sel)));
        check_eq!(ltr(PAST_LIMIT), gp(PAST_LIMIT), "LTR past the GDT limit");
        check_eq!(ltr(0), gp(0), "LTR of the null selector");
        check_eq!(ltr(GDT_DATA), gp(GDT_DATA), "LTR of a data segment");
        check_eq!(ltr(BUSY), gp(BUSY), "LTR of a busy TSS");
        check_eq!(
            ltr(ABSENT),
            Err(Exception::new(vector::NP).with_error_code(u32::from(ABSENT))),
            "LTR of a TSS not present"
        );
        check_eq!(
            ltr(NON_CANONICAL),
            gp(NON_CANONICAL),
            "LTR of a TSS with a non-canonical base"
        );
        let before = f.read_u64(u64::from(AVAILABLE));
        check_eq!(ltr(AVAILABLE), Ok(()), "LTR of an available TSS");
        check_eq!(
            f.read_u64(u64::from(AVAILABLE)),
            before | desc::TSS_BUSY_FLAG,
            "the TSS descriptor after LTR: marked busy, nothing else changed"
        );
        check_eq!(
            ltr(AVAILABLE),
            gp(AVAILABLE),
            "LTR of the same TSS again (now busy)"
        );
    });
}
case!(
    ltr_guest_gdt,
    upstream(
        "abi.upstream.ring.ltr_guest_gdt",
        "LGDT is stored and LTR emulated against the guest's GDT: the TSS turns busy; bad ones fault"
    )
    .reqs("UP-RING-9")
);

/// Upstream ABI: LLDT is emulated against the guest's GDT like LTR, and the host has no LDT.
/// The null selector is accepted; past the limit, through the (null) LDT, a data segment, a
/// TSS and an LDT descriptor with a non-canonical base are #GP(selector), an LDT descriptor
/// not present #NP(selector). (One that loads shuts the vCPU down: `lldt_shutdown`.)
fn lldt_checks() {
    const TSS: u16 = 0x10;
    const ABSENT: u16 = 0x20;
    const NON_CANONICAL: u16 = 0x30;
    const PAST_LIMIT: u16 = 0x40;
    scratch_gdt(&[
        (
            TSS,
            system_descriptor(SYSTEM_BASE, desc::TSS_AVAILABLE, true),
        ),
        (ABSENT, system_descriptor(SYSTEM_BASE, desc::LDT, false)),
        (
            NON_CANONICAL,
            system_descriptor(0x8000_0000_0000_0000 | SYSTEM_BASE, desc::LDT, true),
        ),
    ]);
    with_scratch_gdt(PAST_LIMIT - 1, |gdt| {
        let gp = |sel: u16| Err(Exception::gp(u32::from(sel)));
        check_eq!(gdt.lldt(0), Ok(()), "LLDT of the null selector");
        check_eq!(
            gdt.lldt(PAST_LIMIT),
            gp(PAST_LIMIT),
            "LLDT past the GDT limit"
        );
        check_eq!(
            gdt.lldt(TSS | 4),
            gp(TSS | 4),
            "LLDT of a selector into the LDT"
        );
        check_eq!(gdt.lldt(GDT_DATA), gp(GDT_DATA), "LLDT of a data segment");
        check_eq!(gdt.lldt(TSS), gp(TSS), "LLDT of a TSS");
        check_eq!(
            gdt.lldt(ABSENT),
            Err(Exception::new(vector::NP).with_error_code(u32::from(ABSENT))),
            "LLDT of an LDT descriptor not present"
        );
        check_eq!(
            gdt.lldt(NON_CANONICAL),
            gp(NON_CANONICAL),
            "LLDT of an LDT descriptor with a non-canonical base"
        );
    });
}
case!(
    lldt_checks,
    upstream(
        "abi.upstream.ring.lldt_checks",
        "LLDT is emulated against the guest's GDT: null loads; bad selectors and descriptors fault"
    )
    .reqs("UP-RING-10")
);

/// Upstream ABI: the host has no LDT: LLDT of a valid LDT descriptor shuts the vCPU down
/// (`pvm_set_segment` refuses a non-null LDTR with a triple fault).
fn lldt_shutdown() {
    const LDT: u16 = 0x10;
    scratch_gdt(&[(LDT, system_descriptor(SYSTEM_BASE, desc::LDT, true))]);
    with_scratch_gdt(0x1f, |gdt| {
        guest_lib::report::checkpoint(0, [0; 3]);
        let r = gdt.lldt(LDT);
        check!(
            false,
            "LLDT of an LDT descriptor came back ({:?}) instead of a shutdown",
            r
        );
    });
}
case!(
    lldt_shutdown,
    upstream(
        "abi.upstream.ring.lldt_shutdown",
        "LLDT of a valid LDT descriptor shuts the vCPU down: the host has no LDT"
    )
    .host(HostCheck::Shutdown)
    .reqs("UP-RING-10")
);

extern "C" fn p_rdtscp_aux(_: u64) -> u64 {
    instr::rdtscp_safe().map_or(u64::MAX, |(_, aux)| u64::from(aux))
}

/// RDTSCP returns IA32_TSC_AUX in ECX, at CPL0 and CPL3.
fn rdtscp_aux() {
    if !guest_lib::apic::has_feature(RDTSCP) {
        guest_lib::skip!("CPUID does not offer RDTSCP");
    }
    let aux = 0x5a3;
    check_eq!(instr::wrmsr_safe(msr::TSC_AUX, aux), Ok(()), "TSC_AUX");
    check_eq!(
        instr::rdtscp_safe().map(|(_, a)| u64::from(a)),
        Ok(aux),
        "RDTSCP at CPL0"
    );
    check_eq!(
        user::run(p_rdtscp_aux, 0),
        UserExit::Returned(aux),
        "RDTSCP at CPL3"
    );
}
case!(
    rdtscp_aux,
    Spec::new(
        "priv.rdtscp_aux",
        Area::Priv,
        "RDTSCP returns IA32_TSC_AUX in ECX at CPL0 and CPL3"
    )
    .reqs("X86-PRIV-4")
);

/// CPUID.80000001H:EDX.RDTSCP.
const RDTSCP: guest_lib::abi::x86::cpuid::Feature = (0x8000_0001, 3, 27);

// --- What CPL0 code observes about itself --------------------------------------------------------

/// SGDT, SIDT, STR, SLDT at CPL0 return what the library loaded.
fn cpl0_observe_tables() {
    let gdt = instr::sgdt();
    let idt = instr::sidt();
    check_eq!(gdt.limit, 79u16, "GDTR limit (10 descriptors)");
    check!(
        (layout::IMAGE_BASE..layout::IMAGE_END).contains(&gdt.base),
        "GDTR base {:#x} is the library's GDT in the image",
        gdt.base
    );
    check_eq!(idt.limit, 4095u16, "IDTR limit (256 gates)");
    check!(
        (layout::IMAGE_BASE..layout::IMAGE_END).contains(&idt.base),
        "IDTR base {:#x} is the library's IDT in the image",
        idt.base
    );
    check_eq!(instr::str_selector(), layout::sel::TSS, "STR");
    check_eq!(instr::sldt(), 0u16, "SLDT (no LDT)");
}
case!(
    cpl0_observe_tables,
    Spec::new(
        "priv.observe.tables",
        Area::Priv,
        "SGDT/SIDT/STR/SLDT at CPL0 read back what the guest loaded"
    )
    .reqs("X86-PRIV-2,PVM-RING-2")
    .smoke()
    .envs(X86_RING0_ENVS)
);

/// Upstream ABI: the host stores GDTR and IDTR and ignores TR; SGDT, SIDT, SLDT and STR do not
/// trap and show the host's registers, unless the host has UMIP, where the host emulates them.
/// Either way the GDT is the kernel's or the host's whole GDT, the IDT has 256 gates, the TSS
/// selector is 0x40 (the guest library's and the host's alike) and the LDT is null.
fn tables_upstream() {
    let gdt = instr::sgdt();
    let idt = instr::sidt();
    let kernels = gdt.limit == 79 && in_image(gdt.base);
    let hosts = usize::from(gdt.limit) == HOST_GDT_ENTRIES * 8 - 1 && !in_image(gdt.base);
    check!(
        kernels || hosts,
        "SGDT shows base {:#x} limit {:#x}: neither the kernel's GDT (limit 79, in the image) \
         nor the host's ({} entries, outside it)",
        gdt.base,
        gdt.limit,
        HOST_GDT_ENTRIES
    );
    check_eq!(idt.limit, HOST_IDT_LIMIT, "IDTR limit (256 gates)");
    check_eq!(instr::str_selector(), HOST_TSS_SELECTOR, "STR");
    check_eq!(instr::sldt(), 0u16, "SLDT (LDTR null)");
}
case!(
    tables_upstream,
    upstream(
        "abi.upstream.ring.tables",
        "SGDT/SIDT/STR/SLDT in supervisor mode show the host's registers (or, under UMIP, the kernel's)"
    )
    .reqs("UP-RING-4")
);

/// PUSHF at CPL0 shows the interrupt flag the kernel set, and IOPL 0.
fn cpl0_observe_rflags() {
    let f = instr::read_rflags();
    check_eq!(
        f & rflags::IF,
        0u64,
        "IF while the kernel runs with interrupts off"
    );
    check_eq!(f & rflags::IOPL, 0u64, "IOPL 0");
    check_eq!(f & rflags::FIXED, rflags::FIXED, "bit 1");
}
case!(
    cpl0_observe_rflags,
    Spec::new(
        "priv.observe.rflags",
        Area::Priv,
        "PUSHF at CPL0 shows IF=0 (as booted) and IOPL 0"
    )
    .reqs("X86-PRIV-2,PVM-RING-2")
    .envs(X86_RING0_ENVS)
);

// --- Exceptions raised by user code ----------------------------------------------------------------

static USER_FAULT: PerCpu<Option<(Exception, u64, u64)>> = PerCpu::new(None);

/// Records the first user exception (vector, error code, RIP, CS) and lets the run end.
fn record_user_fault(frame: &mut Frame, ex: Exception) -> bool {
    if USER_FAULT.get().is_none() {
        USER_FAULT.set(Some((ex, frame.rip, frame.cs)));
    }
    false
}

extern "C" fn u_div0(_: u64) -> u64 {
    ran(instr::divide_by_zero_safe())
}
extern "C" fn u_int3(_: u64) -> u64 {
    ran(instr::int3_safe())
}
extern "C" fn u_into(_: u64) -> u64 {
    ran(instr::into_safe())
}
extern "C" fn u_ud2(_: u64) -> u64 {
    ran(instr::ud2_safe())
}
extern "C" fn u_single_step(_: u64) -> u64 {
    instr::single_step_nop();
    0
}
extern "C" fn u_fwait(_: u64) -> u64 {
    ran(instr::fwait_safe())
}
extern "C" fn u_x87_pending(_: u64) -> u64 {
    instr::x87_pend_zero_divide();
    ran(instr::fwait_safe())
}
extern "C" fn u_sse_div0(_: u64) -> u64 {
    ran(instr::sse_zero_divide_safe())
}
extern "C" fn u_int80(_: u64) -> u64 {
    ran(instr::int_n_safe::<0x80>())
}
extern "C" fn u_int21(_: u64) -> u64 {
    ran(instr::int_n_safe::<0x21>())
}
extern "C" fn u_misaligned_ac(va: u64) -> u64 {
    instr::misaligned_read_with_ac_safe(va).unwrap_or(0)
}

/// Where the frame's RIP must be for an exception from a `_safe` primitive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReportedAt {
    /// A fault: at the instruction.
    Instruction,
    /// A trap: just after it.
    After,
    /// Just after the single-stepped `nop` of `instr::single_step_nop`.
    SingleStep,
}

/// Runs `probe` at CPL3 and checks the exception it raises: vector, error code, a CS with RPL 3
/// and the RIP where the architecture reports it (`at`).
fn expect_user_exception(probe: Probe, arg: u64, want: Exception, at: ReportedAt) {
    USER_FAULT.set(None);
    user::set_fault_hook(Some(record_user_fault));
    let exit = user::run(probe, arg);
    user::set_fault_hook(None);
    check_eq!(exit, UserExit::Exception(want), "the exception from CPL3");
    let Some((_, rip, cs)) = USER_FAULT.get() else {
        check!(false, "no user exception reached the kernel");
        return;
    };
    check_eq!(cs & 3, 3u64, "frame CS has RPL 3");
    let site = guest_lib::arch::safe_site(rip);
    match at {
        ReportedAt::Instruction => check_eq!(
            site,
            Some(guest_lib::arch::SafeSite::Instruction),
            "frame RIP {:#x} is the faulting instruction",
            rip
        ),
        ReportedAt::After => check_eq!(
            site,
            Some(guest_lib::arch::SafeSite::After),
            "frame RIP {:#x} is just after the trapping instruction",
            rip
        ),
        ReportedAt::SingleStep => {
            let f = instr::single_step_nop as *const () as u64;
            check!(
                (f..f + 32).contains(&rip),
                "frame RIP {:#x} is after the stepped nop (function at {:#x})",
                rip,
                f
            );
        }
    }
}

fn user_exc() {
    use ReportedAt::{After, Instruction, SingleStep};
    match rt::case_param() {
        0 => expect_user_exception(u_div0, 0, Exception::new(vector::DE), Instruction),
        1 => expect_user_exception(u_single_step, 0, Exception::new(vector::DB), SingleStep),
        2 => expect_user_exception(u_int3, 0, Exception::new(vector::BP), After),
        3 => expect_user_exception(u_into, 0, Exception::new(vector::UD), Instruction),
        4 => expect_user_exception(u_ud2, 0, Exception::new(vector::UD), Instruction),
        5 => {
            instr::set_cr0_ts(true);
            check_eq!(
                instr::read_cr0() & cr0::TS,
                cr0::TS,
                "CR0.TS reads back set"
            );
            expect_user_exception(u_fwait, 0, Exception::new(vector::NM), Instruction);
            instr::set_cr0_ts(false);
        }
        6 => {
            expect_user_exception(u_x87_pending, 0, Exception::new(vector::MF), Instruction);
            instr::x87_reset();
        }
        7 => {
            instr::enable_sse(true);
            expect_user_exception(u_sse_div0, 0, Exception::new(vector::XM), Instruction);
        }
        8 => {
            instr::enable_sse(false);
            check_eq!(
                instr::read_cr4() & cr4::OSXMMEXCPT,
                0u64,
                "CR4.OSXMMEXCPT reads back clear"
            );
            expect_user_exception(u_sse_div0, 0, Exception::new(vector::UD), Instruction);
        }
        9 => {
            let f = guest_lib::paging::alloc_frame();
            guest_lib::paging::map(TEST_VA, &f, PteFlags::RW | PteFlags::US);
            instr::invlpg(TEST_VA.get());
            expect_user_exception(
                u_misaligned_ac,
                TEST_VA.get(),
                Exception::new(vector::AC),
                Instruction,
            );
        }
        10 => expect_user_exception(u_int80, 0, Exception::new(0x80), After),
        11 => expect_user_exception(
            u_int21,
            0,
            Exception::gp(guest_lib::abi::x86::idt_error_code(0x21)),
            Instruction,
        ),
        n => guest_lib::error!("no user exception {}", n),
    }
}

const fn user_exc_spec(name: &'static str, summary: &'static str) -> Spec {
    Spec::new(name, Area::Priv, summary).reqs("X86-EVT-4,PVM-SWITCH-2")
}

case_table!(
    user_exc,
    user_exc_spec,
    [
        (
            "priv.user_exc.de",
            0,
            "DIV by zero at CPL3: #DE to the kernel, RIP at the DIV"
        ),
        (
            "priv.user_exc.db_single_step",
            1,
            "TF set at CPL3: #DB after the next instruction"
        ),
        (
            "priv.user_exc.bp",
            2,
            "INT3 at CPL3 (DPL3 gate): #BP to the kernel"
        ),
        (
            "priv.user_exc.into_ud",
            3,
            "INTO at CPL3 is invalid in 64-bit mode: #UD"
        ),
        ("priv.user_exc.ud", 4, "UD2 at CPL3: #UD to the kernel"),
        (
            "priv.user_exc.mf",
            6,
            "an unmasked x87 zero-divide pending at FWAIT (CR0.NE=1): #MF"
        ),
        (
            "priv.user_exc.xm",
            7,
            "an unmasked SSE zero-divide at CPL3 with CR4.OSXMMEXCPT=1: #XM"
        ),
        (
            "priv.user_exc.ac",
            9,
            "a misaligned read at CPL3 with CR0.AM and RFLAGS.AC: #AC(0)"
        ),
        (
            "priv.user_exc.int80",
            10,
            "INT $0x80 at CPL3 through a DPL3 gate: vector 0x80 to the kernel, RIP after it"
        ),
        (
            "priv.user_exc.int_dpl0_gp",
            11,
            "INT $0x21 at CPL3 through a DPL0 gate: #GP(0x10a)"
        ),
    ]
);

const fn user_exc_ring0_spec(name: &'static str, summary: &'static str) -> Spec {
    user_exc_spec(name, summary).envs(X86_RING0_ENVS)
}

case_table!(
    user_exc,
    user_exc_ring0_spec,
    [
        (
            "priv.user_exc.nm",
            5,
            "FWAIT at CPL3 with CR0.TS=1, MP=1: #NM"
        ),
        (
            "priv.user_exc.xm_as_ud",
            8,
            "an unmasked SSE zero-divide with CR4.OSXMMEXCPT=0: #UD"
        ),
    ]
);

/// Upstream ABI: the guest's CR0 is stored, not loaded into the hardware (TS=0 there): with
/// the guest's CR0.TS set, FWAIT runs in both modes.
fn cr0_ts_upstream() {
    instr::set_cr0_ts(true);
    let ts = instr::read_cr0() & cr0::TS;
    let kernel = instr::fwait_safe();
    let user = user::run(u_fwait, 0);
    instr::set_cr0_ts(false);
    check_eq!(ts, cr0::TS, "CR0.TS reads back set");
    check_eq!(
        kernel,
        Ok(()),
        "FWAIT in supervisor mode with the guest's CR0.TS set"
    );
    check_eq!(
        user,
        UserExit::Returned(0),
        "FWAIT in user mode with the guest's CR0.TS set"
    );
}
case!(
    cr0_ts_upstream,
    upstream(
        "abi.upstream.ring.cr0_ts",
        "the guest's CR0.TS reads back but has no hardware effect: FWAIT runs in both modes"
    )
    .reqs("UP-RING-3")
);

// --- State preserved across a user -> kernel -> user round trip ---------------------------------

/// Resumes a user `ud2` at the next instruction.
fn skip_user_ud2(frame: &mut Frame, ex: Exception) -> bool {
    if ex.vector != vector::UD {
        return false;
    }
    frame.rip += 2;
    true
}

extern "C" fn u_df(_: u64) -> u64 {
    instr::df_across_ud2()
}
extern "C" fn u_ac(_: u64) -> u64 {
    instr::ac_across_ud2()
}
extern "C" fn u_xmm0(v: u64) -> u64 {
    instr::xmm0_across_ud2(v)
}
extern "C" fn u_fs0(_: u64) -> u64 {
    let (a, b) = instr::fs0_across_ud2();
    if a == b { a } else { u64::MAX }
}

fn preserve() {
    user::set_fault_hook(Some(skip_user_ud2));
    match rt::case_param() {
        0 => {
            let exit = user::run(u_df, 0);
            check!(
                matches!(exit, UserExit::Returned(f) if f & rflags::DF != 0),
                "RFLAGS.DF after the event: {:?}",
                exit
            );
        }
        1 => {
            let exit = user::run(u_ac, 0);
            check!(
                matches!(exit, UserExit::Returned(f) if f & rflags::AC != 0),
                "RFLAGS.AC after the event: {:?}",
                exit
            );
        }
        2 => {
            instr::enable_sse(true);
            let v = 0x0123_4567_89ab_cdef;
            check_eq!(
                user::run(u_xmm0, v),
                UserExit::Returned(v),
                "XMM0 after the event"
            );
        }
        3 => {
            let f = guest_lib::paging::alloc_frame();
            f.write_u64(0, 0xf5ba_5e00);
            guest_lib::paging::map(TEST_VA, &f, PteFlags::RW | PteFlags::US);
            instr::invlpg(TEST_VA.get());
            instr::set_fs_base(TEST_VA.get());
            check_eq!(
                user::run(u_fs0, 0),
                UserExit::Returned(0xf5ba_5e00),
                "FS:0 before and after the event"
            );
        }
        n => guest_lib::error!("no preservation check {}", n),
    }
    user::set_fault_hook(None);
}

const fn preserve_spec(name: &'static str, summary: &'static str) -> Spec {
    Spec::new(name, Area::Priv, summary).reqs("X86-EVT-2,PVM-SWITCH-1")
}

case_table!(
    preserve,
    preserve_spec,
    [
        (
            "priv.preserve.rflags_df",
            0,
            "RFLAGS.DF set at CPL3 survives an event round trip"
        ),
        (
            "priv.preserve.rflags_ac",
            1,
            "RFLAGS.AC set at CPL3 survives an event round trip"
        ),
        (
            "priv.preserve.xmm",
            2,
            "the user's XMM registers survive an event round trip"
        ),
        (
            "priv.preserve.fs_base",
            3,
            "the user's FS base survives an event round trip"
        ),
    ]
);

// --- 32-bit compatibility mode ------------------------------------------------------------

/// Events the compatibility-mode probes raised: (vector, frame RIP, frame CS), in order.
static COMPAT_EVENTS: PerCpu<[(u8, u64, u64); 2]> = PerCpu::new([(0, 0, 0); 2]);
static COMPAT_COUNT: PerCpu<usize> = PerCpu::new(0);

/// Switches to compatibility mode at the entry trap, then records each event; resumes after
/// the first #BP from the probe (which then goes on in compatibility mode), ends the run on
/// anything else.
fn compat_hook(frame: &mut Frame, ex: Exception) -> bool {
    if user::compat32_switch(frame, ex) {
        return true;
    }
    let n = COMPAT_COUNT.get();
    if n < 2 {
        let mut ev = COMPAT_EVENTS.get();
        ev[n] = (ex.vector, frame.rip, frame.cs);
        COMPAT_EVENTS.set(ev);
    }
    COMPAT_COUNT.set(n + 1);
    ex.vector == vector::BP && n == 0
}

/// Code in a 32-bit compatibility-mode segment (CS 0x23) at CPL3, entered through the kernel
/// (IRET to CS 0x23) or by a far return from 64-bit user code: its events reach the
/// 64-bit kernel with a 64-bit frame whose CS is the compatibility selector and whose RIP is
/// the 32-bit instruction's; a kernel's return to it (after #BP) resumes compatibility mode.
fn compat32() {
    use guest_lib::abi::layout::sel::USER32_CS;
    use guest_lib::user::{Compat32, CompatEntry};
    let (probe, how) = match rt::case_param() {
        0 => (Compat32::Ud, CompatEntry::Kernel),
        1 => (Compat32::BpThenUd, CompatEntry::Kernel),
        2 => (Compat32::Read, CompatEntry::Kernel),
        _ => (Compat32::Ud, CompatEntry::FarReturn),
    };
    let (start, after_bp, load) = user::compat32_sites(probe);
    COMPAT_COUNT.set(0);
    user::set_fault_hook(Some(compat_hook));
    let exit = user::run_compat32(probe, how);
    user::set_fault_hook(None);
    let ev = COMPAT_EVENTS.get();
    let cs = u64::from(USER32_CS);
    match probe {
        Compat32::Ud => {
            check_eq!(
                exit,
                UserExit::Exception(Exception::new(vector::UD)),
                "UD2 in compatibility mode"
            );
            check_eq!(
                ev[0],
                (vector::UD, start, cs),
                "the #UD frame (vector, RIP, CS)"
            );
        }
        Compat32::BpThenUd => {
            check_eq!(
                exit,
                UserExit::Exception(Exception::new(vector::UD)),
                "the probe's end after INT3"
            );
            check_eq!(
                ev[0],
                (vector::BP, after_bp, cs),
                "the #BP frame (trap: RIP after INT3)"
            );
            check_eq!(
                ev[1],
                (vector::UD, after_bp, cs),
                "the #UD after the return to compatibility mode"
            );
        }
        Compat32::Read => {
            use guest_lib::exception::pfec;
            check_eq!(
                exit,
                UserExit::Exception(Exception::pf(pfec::U, 0xdead_0000)),
                "a 32-bit load of an unmapped address"
            );
            check_eq!(
                ev[0],
                (vector::PF, load, cs),
                "the #PF frame (vector, RIP, CS)"
            );
        }
    }
}

const fn compat_spec(name: &'static str, summary: &'static str) -> Spec {
    Spec::new(name, Area::Priv, summary).reqs("X86-COMPAT-1,PVM-SWITCH-2")
}

case_table!(
    compat32,
    compat_spec,
    [
        (
            "priv.compat32.ud",
            0,
            "UD2 in a 32-bit compatibility-mode segment: #UD with CS 0x23 and the 32-bit RIP"
        ),
        (
            "priv.compat32.bp_return",
            1,
            "INT3 in compatibility mode: #BP, and the return resumes compatibility mode"
        ),
        (
            "priv.compat32.pf",
            2,
            "a 32-bit load of an unmapped address: #PF(U) with CS 0x23, CR2"
        ),
        (
            "priv.compat32.far_return",
            3,
            "64-bit user code far-returns to CS 0x23 and runs 32-bit code (#UD there)"
        ),
    ]
);
