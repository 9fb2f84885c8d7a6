//! Single instructions as functions, and their fault-tolerant `_safe` forms.
//!
//! A `_safe` form runs the instruction with an entry in the exception-fixup table
//! (`pvmc_extable`): if it faults, the exception handler records the exception and resumes
//! after the instruction, and the function returns `Err(Exception)`. The plain forms may
//! fault; the resulting exception is then unexpected and ends the case as FAIL.

use core::arch::asm;

use abi::x86::{apic_base, cr0, cr3, cr4, msr};

use crate::exception::{self, Exception};
use crate::paging::TestVa;

/// Runs `$insn` with a fixup entry; evaluates to `Result<(), Exception>`. Faults resume at
/// the label after the instruction; traps (`int3`, `int n`) report that label as RIP, which
/// has an entry too.
macro_rules! with_fixup {
    ($insn:literal $(, $($ops:tt)*)?) => {
        with_fixup!(pre "", $insn, post "" $(, $($ops)*)?)
    };
    (pre $pre:literal, $insn:literal, post $post:literal $(, $($ops:tt)*)?) => {{
        $crate::exception::arm_fixup();
        // SAFETY: the instruction is named by the calling function, which documents its
        // effect; if it faults, the handler resumes at label 3 with all registers as they
        // were, as if the instruction had been skipped.
        unsafe {
            core::arch::asm!(
                $pre,
                "2:",
                $insn,
                "3:",
                $post,
                ".pushsection pvmc_extable, \"a\"",
                ".balign 8",
                ".quad 2b, 3b",
                ".quad 3b, 3b",
                ".popsection",
                $($($ops)*,)?
                options(att_syntax)
            );
        }
        $crate::exception::take_fixup()
    }};
}
pub(crate) use with_fixup;

/// `out %al, (%dx)`.
pub fn outb(port: u16, v: u8) {
    // SAFETY: port I/O has no memory-safety effect on the guest; the VMM sees an exit.
    unsafe { asm!("outb %al, %dx", in("dx") port, in("al") v, options(att_syntax, nostack)) }
}

/// `out %ax, (%dx)`.
pub fn outw(port: u16, v: u16) {
    // SAFETY: as in `outb`.
    unsafe { asm!("outw %ax, %dx", in("dx") port, in("ax") v, options(att_syntax, nostack)) }
}

/// `out %eax, (%dx)`.
pub fn outl(port: u16, v: u32) {
    // SAFETY: as in `outb`.
    unsafe { asm!("outl %eax, %dx", in("dx") port, in("eax") v, options(att_syntax, nostack)) }
}

/// `in (%dx), %al`.
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as in `outb`.
    unsafe { asm!("inb %dx, %al", in("dx") port, out("al") v, options(att_syntax, nostack)) }
    v
}

/// `in (%dx), %ax`.
pub fn inw(port: u16) -> u16 {
    let v: u16;
    // SAFETY: as in `outb`.
    unsafe { asm!("inw %dx, %ax", in("dx") port, out("ax") v, options(att_syntax, nostack)) }
    v
}

/// `in (%dx), %eax`.
pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as in `outb`.
    unsafe { asm!("inl %dx, %eax", in("dx") port, out("eax") v, options(att_syntax, nostack)) }
    v
}

/// `rdmsr`; faults (#GP) on an unknown MSR.
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reading an MSR has no memory-safety effect.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(att_syntax, nostack))
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// `rdmsr` returning the exception instead of faulting.
pub fn rdmsr_safe(msr: u32) -> Result<u64, Exception> {
    let (mut lo, mut hi): (u32, u32) = (0, 0);
    with_fixup!("rdmsr", in("ecx") msr, inout("eax") lo, inout("edx") hi)?;
    Ok((u64::from(hi) << 32) | u64::from(lo))
}

/// `wrmsr`.
///
/// # Safety
/// Some MSRs change how memory is accessed (EFER, PAT, segment bases); the caller must keep
/// the guest's memory model intact.
pub unsafe fn wrmsr(msr: u32, v: u64) {
    // SAFETY: the caller upholds the function's contract.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32,
             options(att_syntax, nostack))
    }
}

/// Whether `index` changes the guest's memory model or the library's own entry points (EFER,
/// the SYSCALL MSRs, PAT, FS/GS base, APIC base): [`wrmsr_safe`] refuses those (use the
/// `unsafe` [`wrmsr`]).
const fn changes_memory_model(index: u32) -> bool {
    matches!(
        index,
        msr::PAT | msr::APIC_BASE | msr::FS_BASE | msr::GS_BASE
    ) || (index >= msr::EFER && index <= msr::SFMASK)
}

/// `wrmsr` returning the exception instead of faulting. For MSRs under test, which have no
/// effect on the memory model; the ones that do (`changes_memory_model`) end the case as
/// ERROR.
pub fn wrmsr_safe(msr: u32, v: u64) -> Result<(), Exception> {
    if changes_memory_model(msr) {
        crate::error!("wrmsr_safe({msr:#x}): this MSR changes the memory model; use wrmsr");
    }
    with_fixup!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32)
}

/// Enables the x2APIC through IA32_APIC_BASE (x2APIC mode changes only how the APIC is
/// addressed, not memory), returning the exception if the write faults.
pub fn enable_x2apic_mode_safe() -> Result<(), Exception> {
    let base = rdmsr_safe(msr::APIC_BASE)?;
    let v = base | apic_base::EN | apic_base::EXTD;
    with_fixup!("wrmsr", in("ecx") msr::APIC_BASE, in("eax") v as u32, in("edx") (v >> 32) as u32)
}

/// Reads a u64 at any virtual address, returning the exception on a fault.
pub fn read_u64_safe(va: u64) -> Result<u64, Exception> {
    let mut v: u64 = 0;
    with_fixup!("movq ({a}), {v}", a = in(reg) va, v = inout(reg) v)?;
    Ok(v)
}

/// Writes a u64 at a test address, returning the exception on a fault. A [`TestVa`] lies
/// outside everything the loader maps, so the write reaches either nothing (and faults) or a
/// frame a case mapped there itself.
pub fn write_u64_safe(va: TestVa, v: u64) -> Result<(), Exception> {
    with_fixup!("movq {v}, ({a})", a = in(reg) va.get(), v = in(reg) v)
}

/// Executes `ud2`; always returns the #UD (or whatever the hypervisor delivered).
pub fn ud2_safe() -> Result<(), Exception> {
    with_fixup!("ud2")
}

/// Executes `int3`.
pub fn int3_safe() -> Result<(), Exception> {
    with_fixup!("int3")
}

/// Divides by zero (`div` with a zero divisor).
pub fn divide_by_zero_safe() -> Result<(), Exception> {
    with_fixup!("divq {d}", d = in(reg) 0u64, inout("rax") 1u64 => _, inout("rdx") 0u64 => _)
}

/// `sti; hlt`: enables interrupts and halts until one arrives (the STI shadow makes the pair
/// atomic, so an interrupt that is already pending wakes the `hlt`).
pub fn sti_hlt() {
    // SAFETY: interrupts are delivered through the library's IDT (see `sti`); halting has no
    // memory-safety effect.
    unsafe { asm!("sti", "hlt", options(att_syntax, nostack)) }
}

/// Executes `hlt` (exits to the VMM when there is no in-kernel irqchip).
pub fn hlt() {
    // SAFETY: halting has no memory-safety effect.
    unsafe { asm!("hlt", options(att_syntax, nostack)) }
}

/// Executes `hlt`, returning the exception (e.g. #GP at CPL3).
pub fn hlt_safe() -> Result<(), Exception> {
    with_fixup!("hlt")
}

/// Executes `cli`, returning the exception (e.g. #GP at CPL3 with IOPL 0).
pub fn cli_safe() -> Result<(), Exception> {
    with_fixup!("cli")
}

/// Reads CR3 with a fixup (privileged: #GP at CPL3).
pub fn read_cr3_safe() -> Result<u64, Exception> {
    let mut v: u64 = 0;
    with_fixup!("movq %cr3, {v}", v = inout(reg) v)?;
    Ok(v)
}

/// `outb` with a fixup (#GP at CPL3 with IOPL 0).
pub fn outb_safe(port: u16, v: u8) -> Result<(), Exception> {
    with_fixup!("outb %al, %dx", in("dx") port, in("al") v)
}

/// CR0.
pub fn read_cr0() -> u64 {
    let v: u64;
    // SAFETY: reading a control register has no side effect.
    unsafe { asm!("movq %cr0, {}", out(reg) v, options(att_syntax, nostack)) }
    v
}

/// CR2 (the last #PF address).
pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading a control register has no side effect.
    unsafe { asm!("movq %cr2, {}", out(reg) v, options(att_syntax, nostack)) }
    v
}

/// CR3.
pub fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading a control register has no side effect.
    unsafe { asm!("movq %cr3, {}", out(reg) v, options(att_syntax, nostack)) }
    v
}

/// CR4.
pub fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reading a control register has no side effect.
    unsafe { asm!("movq %cr4, {}", out(reg) v, options(att_syntax, nostack)) }
    v
}

/// Loads CR0.
///
/// # Safety
/// Changing CR0 (paging, write protection) changes the memory model; the caller must keep
/// all memory the guest uses accessible.
pub unsafe fn write_cr0(v: u64) {
    // SAFETY: the caller upholds the function's contract.
    unsafe { asm!("movq {}, %cr0", in(reg) v, options(att_syntax, nostack)) }
}

/// `invlpg` of one virtual address.
pub fn invlpg(va: u64) {
    // SAFETY: invalidating a TLB entry never makes a valid mapping invalid; at worst it costs
    // a page walk.
    unsafe { asm!("invlpg ({})", in(reg) va, options(att_syntax, nostack)) }
}

/// `rdtsc`.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reading the TSC has no side effect.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(att_syntax, nostack)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// `cpuid`: EAX, EBX, ECX, EDX.
pub fn cpuid(leaf: u32, sub: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// The CS selector as the guest sees it.
pub fn read_cs() -> u16 {
    let v: u16;
    // SAFETY: reading a segment register has no side effect.
    unsafe { asm!("movw %cs, {0:x}", out(reg) v, options(att_syntax, nostack)) }
    v
}

/// RFLAGS.
pub fn read_rflags() -> u64 {
    let v: u64;
    // SAFETY: pushf/pop leaves the stack as it was.
    unsafe { asm!("pushfq", "popq {}", out(reg) v, options(att_syntax)) }
    v
}

/// Busy loop of `n` iterations of a few plain (unprivileged) instructions, for telling
/// native from emulated execution apart.
pub fn spin(n: u64) {
    // SAFETY: only decrements a register.
    unsafe { asm!("2: dec {n}", "jnz 2b", n = inout(reg) n => _, options(att_syntax, nostack)) }
}

/// Executes `ud2` without a fixup entry: the #UD goes to the normal dispatch (a case's hook,
/// or an unexpected exception).
pub fn raise_ud() {
    // SAFETY: raises #UD, which the dispatcher handles; nothing else is touched.
    unsafe { asm!("ud2", options(att_syntax)) }
}

/// `syscall` with RAX = `nr` (for user-mode code); returns RAX.
pub fn syscall(nr: u64) -> u64 {
    let mut rax = nr;
    // SAFETY: at CPL3 this transfers to the library's SYSCALL entry, which either returns with
    // `sysretq` (RCX/R11 clobbered, declared here) or ends the user run.
    unsafe { asm!("syscall", inout("rax") rax, out("rcx") _, out("r11") _, options(att_syntax)) }
    rax
}

/// Sets or clears CR0.WP.
pub fn set_cr0_wp(on: bool) {
    const WP: u64 = cr0::WP;
    let cr0 = read_cr0();
    let v = if on { cr0 | WP } else { cr0 & !WP };
    // SAFETY: WP only decides whether CPL0 writes to read-only pages fault; toggling it never
    // makes accessible memory inaccessible.
    unsafe { write_cr0(v) }
}

/// Executes the code at `va`, which must be a single `ret` (0xc3) if it is readable; returns
/// the exception if fetching it faults (e.g. NX or not present).
pub fn exec_ret_safe(va: u64) -> Result<(), Exception> {
    if let Ok(q) = read_u64_safe(va & !7)
        && (q >> (8 * (va & 7))) as u8 != 0xc3
    {
        panic!("exec_ret_safe: {va:#x} does not hold a `ret`");
    }
    exception::arm_exec(va);
    // SAFETY: the target is either a single `ret` (checked above) or faults on fetch, in which
    // case the dispatcher returns to the instruction after this call (popping the return
    // address) with the exception recorded.
    unsafe { asm!("call *{t}", t = in(reg) va, clobber_abi("C"), options(att_syntax)) }
    exception::disarm_exec()
}

fn check_mmio(gpa: u64) {
    use abi::layout::{MMIO_WINDOW, MMIO_WINDOW_SIZE};
    if !gpa.is_multiple_of(4) || !(MMIO_WINDOW..MMIO_WINDOW + MMIO_WINDOW_SIZE - 3).contains(&gpa) {
        panic!("MMIO access at {gpa:#x} outside the MMIO window");
    }
}

/// 32-bit write in the MMIO window (identity mapped, no RAM behind it).
pub fn mmio_write_u32(gpa: u64, v: u32) {
    check_mmio(gpa);
    // SAFETY: the address lies in the MMIO window (checked), which the loader maps and which
    // holds no Rust object; the access exits to the VMM.
    unsafe { core::ptr::write_volatile(gpa as *mut u32, v) }
}

/// 32-bit read in the MMIO window.
pub fn mmio_read_u32(gpa: u64) -> u32 {
    check_mmio(gpa);
    // SAFETY: as in `mmio_write_u32`.
    unsafe { core::ptr::read_volatile(gpa as *const u32) }
}

/// Reads a u64 at `va` with a plain load (no fixup): for benchmark loops. A fault is an
/// unexpected exception and ends the case.
pub fn touch_read(va: u64) -> u64 {
    let v: u64;
    // SAFETY: a load through inline asm does not create a Rust reference; if `va` is not
    // mapped the fault goes to the exception dispatcher, which ends the case.
    unsafe { asm!("movq ({a}), {v}", a = in(reg) va, v = out(reg) v, options(att_syntax, nostack)) }
    v
}

/// Writes a u64 at a test address with a plain store (no fixup), for benchmark loops and
/// user-mode probes. A fault is an unexpected exception and ends the case.
pub fn touch_write(va: TestVa, v: u64) {
    // SAFETY: a `TestVa` is outside everything the loader maps, so the store reaches only a
    // frame a case mapped there (holding no Rust object) or faults into the dispatcher.
    unsafe {
        asm!("movq {v}, ({a})", a = in(reg) va.get(), v = in(reg) v, options(att_syntax, nostack))
    }
}

/// Writes `v` to the first u64 of each of `pages` consecutive 4 KiB pages from `first` with
/// plain stores (benchmark loops: one store and the address arithmetic per page). The whole
/// range must be test addresses; a fault is an unexpected exception and ends the case.
pub fn touch_write_pages(first: TestVa, pages: u64, v: u64) {
    let len = pages.saturating_mul(abi::layout::PAGE_SIZE);
    // Both ends outside the loader's ranges and less than a GiB apart: the range cannot reach
    // into the first GiB or its alias (each a GiB long) without one end inside it.
    let last = first.get().checked_add(len.saturating_sub(1));
    if pages == 0 || len >= 1 << 30 || last.and_then(TestVa::new).is_none() {
        crate::error!(
            "touch_write_pages: {pages} pages from {:#x} leave the test range",
            first.get()
        );
    }
    let mut a = first.get();
    for _ in 0..pages {
        // SAFETY: every address of the range is a test address (checked above), so each store
        // reaches a frame a case mapped there (holding no Rust object) or faults into the
        // dispatcher.
        unsafe {
            asm!("movq {v}, ({a})", a = in(reg) a, v = in(reg) v, options(att_syntax, nostack))
        }
        a += abi::layout::PAGE_SIZE;
    }
}

/// Reloads CR3 with its current value (flushes non-global TLB entries).
pub fn reload_cr3() {
    let cr3 = read_cr3();
    // SAFETY: the same page tables stay in force; only the TLB is flushed.
    unsafe { asm!("movq {}, %cr3", in(reg) cr3, options(att_syntax, nostack)) }
}

/// Reloads CR3 with its current value and bit 63 set (no flush; needs CR4.PCIDE).
pub fn reload_cr3_noflush() {
    let cr3 = read_cr3() | cr3::NOFLUSH;
    // SAFETY: as in `reload_cr3`; with CR4.PCIDE=1 bit 63 only suppresses the flush.
    unsafe { asm!("movq {}, %cr3", in(reg) cr3, options(att_syntax, nostack)) }
}

/// Sets CR4.PCIDE (CR3 bits 11:0 must be 0, which the layout guarantees); returns the exception
/// if the CPU refuses.
pub fn enable_pcid() -> Result<(), Exception> {
    let cr4 = read_cr4() | cr4::PCIDE;
    with_fixup!("movq {v}, %cr4", v = in(reg) cr4)
}

/// `sti`: lets maskable interrupts in (the library's IDT has gates for vectors below 48).
pub fn sti() {
    // SAFETY: interrupts are delivered through the library's IDT, whose dispatcher handles
    // them (a case hook, or an unexpected-event FAIL); no memory is touched.
    unsafe { asm!("sti", options(att_syntax, nostack)) }
}

/// `cli`.
pub fn cli() {
    // SAFETY: masking interrupts has no memory-safety effect.
    unsafe { asm!("cli", options(att_syntax, nostack)) }
}

/// RSP.
pub fn read_rsp() -> u64 {
    let v: u64;
    // SAFETY: copies the stack pointer into a register.
    unsafe { asm!("movq %rsp, {}", out(reg) v, options(att_syntax, nomem, nostack)) }
    v
}

/// Writes an x2APIC register (MSRs 0x800-0x8ff) without a fixup entry, so it may be used on
/// any vCPU at any time (a fault is an unexpected exception).
pub fn write_x2apic(index: u32, v: u64) {
    assert!(
        (msr::X2APIC_FIRST..msr::X2APIC_END).contains(&index),
        "not an x2APIC MSR: {index:#x}"
    );
    // SAFETY: x2APIC registers control interrupt delivery, not the memory model.
    unsafe { wrmsr(index, v) }
}
