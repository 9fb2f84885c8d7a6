//! Single instructions as functions, and their fault-tolerant `_safe` forms.
//!
//! A `_safe` form runs the instruction with an entry in the exception-fixup table
//! (`pvmc_extable`): if it faults, the exception handler records the exception and resumes
//! after the instruction, and the function returns `Err(Exception)`. The plain forms may
//! fault; the resulting exception is then unexpected and ends the case as FAIL.

use core::arch::asm;

use abi::x86::{apic_base, cr0, cr3, cr4, msr, mxcsr};

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

/// Sends `msg` on the report channel (`out %eax, (%dx)` with EAX = its address) and reads back
/// its `values`, which the host may have rewritten (a VMM request's reply) before resuming.
pub fn report_exchange(port: u16, msg: &mut abi::report::Message) -> [u64; 4] {
    let p: *mut abi::report::Message = msg;
    // SAFETY: port I/O has no memory effects the compiler must know about beyond the host
    // rewriting `*msg`, which the asm block allows (no `nomem`) and which we read back below
    // through the same raw pointer, derived from a unique reference that is live throughout.
    unsafe {
        asm!("outl %eax, %dx", in("dx") port, in("eax") p as u64 as u32, options(att_syntax, nostack));
        core::ptr::read_volatile(core::ptr::addr_of!((*p).values))
    }
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

static MSR_BORROWED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Whether [`with_msr`] has one of the SYSCALL MSRs or a segment base borrowed (user mode must
/// not be entered then: its way back to the kernel would go to the borrowed value).
pub fn msr_borrowed() -> bool {
    MSR_BORROWED.load(core::sync::atomic::Ordering::SeqCst)
}

/// Whether `pat` keeps memory coherent: every entry WB, WT, UC or UC- (no WC/WP, which would
/// let writes be combined or dropped behind the guest's back).
const fn pat_is_coherent(pat: u64) -> bool {
    let mut i = 0;
    while i < 8 {
        let t = (pat >> (8 * i)) & 0xff;
        if !matches!(t, 0 | 4 | 6 | 7) {
            return false;
        }
        i += 1;
    }
    true
}

/// Writes `v` to one of the MSRs [`wrmsr_safe`] refuses because the library relies on them
/// (the SYSCALL MSRs STAR/LSTAR/CSTAR/SFMASK, FS_BASE, PAT, and APIC_BASE with its own
/// value), runs `f`, and restores the old value; returns `f`'s result, or the exception of the write. While `f` runs, user mode
/// cannot be entered ([`msr_borrowed`]; `user::run` refuses), and a PAT value must be
/// coherent; other MSRs end the case as ERROR.
pub fn with_msr<R>(index: u32, v: u64, f: impl FnOnce() -> R) -> Result<R, Exception> {
    let old = rdmsr_safe(index)?;
    let allowed = matches!(
        index,
        msr::STAR | msr::LSTAR | msr::CSTAR | msr::SFMASK | msr::FS_BASE
    ) || (index == msr::PAT && pat_is_coherent(v))
        || (index == msr::APIC_BASE && v == old);
    if !allowed {
        crate::error!("with_msr({index:#x}, {v:#x}): not an MSR (or value) it can borrow");
    }
    MSR_BORROWED.store(true, core::sync::atomic::Ordering::SeqCst);
    let wrote: Result<(), Exception> =
        with_fixup!("wrmsr", in("ecx") index, in("eax") v as u32, in("edx") (v >> 32) as u32);
    let out = wrote.map(|()| f());
    // SAFETY: `old` is the value the MSR had when the library was running normally (read
    // above); putting it back restores the memory model and entry points the library relies
    // on. Nothing entered user mode in between (checked by `user::run` via `msr_borrowed`).
    unsafe { wrmsr(index, old) };
    MSR_BORROWED.store(false, core::sync::atomic::Ordering::SeqCst);
    out
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

/// Writes a u32 at a test address (see [`write_u64_safe`]), returning the exception on a
/// fault.
pub fn write_u32_safe(va: TestVa, v: u32) -> Result<(), Exception> {
    with_fixup!("movl {v:e}, ({a})", a = in(reg) va.get(), v = in(reg) v)
}

/// Reads a u32 at `va`, returning the exception on a fault.
pub fn read_u32_safe(va: u64) -> Result<u32, Exception> {
    let mut v: u32 = 0;
    with_fixup!("movl ({a}), {v:e}", a = in(reg) va, v = inout(reg) v)?;
    Ok(v)
}

/// Reads an x2APIC register (MSRs 0x800-0x8ff) without a fixup entry.
pub fn read_x2apic(index: u32) -> u64 {
    assert!(
        (msr::X2APIC_FIRST..msr::X2APIC_END).contains(&index),
        "not an x2APIC MSR: {index:#x}"
    );
    rdmsr(index)
}

/// Executes `ud2`; always returns the #UD (or whatever the hypervisor delivered).
pub fn ud2_safe() -> Result<(), Exception> {
    with_fixup!("ud2")
}

/// Executes `int3`.
pub fn int3_safe() -> Result<(), Exception> {
    with_fixup!("int3")
}

/// Loads RFLAGS with `flags` (the bits CPL3 code may change; IF and IOPL stay), executes a
/// plain `int3` (no fixup: the event goes to the exception hook, which must resume after
/// it) and returns RFLAGS as the instruction after it sees them: a handler's return must
/// restore the interrupted flags.
pub fn int3_with_flags(flags: u64) -> u64 {
    let out: u64;
    // SAFETY: POPFQ at any privilege level changes only the flags that level may change (no
    // memory effect); the #BP handler returns after the `int3`, where PUSHFQ/POP read the
    // flags back. The target has no red zone and the block is not `nostack`, so its pushes
    // clobber nothing live.
    unsafe {
        asm!(
            "pushq {f}",
            "popfq",
            "int3",
            "pushfq",
            "popq {o}",
            f = in(reg) flags,
            o = lateout(reg) out,
            options(att_syntax)
        )
    }
    out
}

/// `rdgsbase` (needs CR4.FSGSBASE, which the hosts here set).
pub fn rdgsbase() -> u64 {
    let v: u64;
    // SAFETY: reads a register; no memory effect.
    unsafe { asm!("rdgsbase {}", out(reg) v, options(att_syntax, nomem, nostack)) }
    v
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

/// A descriptor-table register as SGDT/SIDT store it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableRegister {
    /// Limit.
    pub limit: u16,
    /// Linear base.
    pub base: u64,
}

impl TableRegister {
    /// The 10 bytes LGDT/LIDT read and SGDT/SIDT write: the limit, then the base.
    pub fn to_bytes(self) -> [u8; 10] {
        let mut b = [0u8; 10];
        b[..2].copy_from_slice(&self.limit.to_le_bytes());
        b[2..].copy_from_slice(&self.base.to_le_bytes());
        b
    }
}

fn store_table(which: u8) -> TableRegister {
    let mut buf = [0u8; 10];
    // SAFETY: SGDT/SIDT write 10 bytes to the given buffer, which is exactly that big; they
    // are not privileged (without UMIP) and change nothing.
    unsafe {
        if which == 0 {
            asm!("sgdt ({})", in(reg) buf.as_mut_ptr(), options(att_syntax, nostack))
        } else {
            asm!("sidt ({})", in(reg) buf.as_mut_ptr(), options(att_syntax, nostack))
        }
    }
    let mut base = [0u8; 8];
    base.copy_from_slice(&buf[2..10]);
    TableRegister {
        limit: u16::from_le_bytes([buf[0], buf[1]]),
        base: u64::from_le_bytes(base),
    }
}

/// `sgdt`.
pub fn sgdt() -> TableRegister {
    store_table(0)
}

/// `sidt`.
pub fn sidt() -> TableRegister {
    store_table(1)
}

/// `str` (the task register's selector).
pub fn str_selector() -> u16 {
    let v: u16;
    // SAFETY: STR only reads the task register.
    unsafe { asm!("str {0:x}", out(reg) v, options(att_syntax, nostack)) }
    v
}

/// `sldt` (the LDT selector).
pub fn sldt() -> u16 {
    let v: u16;
    // SAFETY: SLDT only reads the LDTR.
    unsafe { asm!("sldt {0:x}", out(reg) v, options(att_syntax, nostack)) }
    v
}

/// `smsw` (the low 16 bits of CR0).
pub fn smsw() -> u16 {
    let v: u16;
    // SAFETY: SMSW only reads CR0.
    unsafe { asm!("smsw {0:x}", out(reg) v, options(att_syntax, nostack)) }
    v
}

/// `lgdt` of the GDTR's current value (a no-op at CPL0; #GP at CPL3), with a fixup.
pub fn reload_gdtr_safe() -> Result<(), Exception> {
    // SAFETY: the table is the one loaded now, so every selector in use keeps its meaning.
    unsafe { lgdt_safe(sgdt()) }
}

/// `lgdt` of `table`, with a fixup.
///
/// # Safety
///
/// Where the GDTR is the hardware's (x86 at CPL0), `table` must be a GDT holding the
/// descriptors of every selector in use (CS, SS, the data segments, TR) as they are now, in
/// memory that stays valid while it is loaded. On an upstream PVM host the hardware runs on
/// the host's GDT and the host only stores the value, for the descriptor loads it emulates.
pub unsafe fn lgdt_safe(table: TableRegister) -> Result<(), Exception> {
    let b = table.to_bytes();
    with_fixup!("lgdt ({p})", p = in(reg) b.as_ptr())
}

/// `ltr` of `sel`, with a fixup.
///
/// # Safety
///
/// A successful LTR writes the GDT: it marks the TSS descriptor `sel` names busy. The current
/// GDT must be memory the caller owns, and that descriptor a TSS that stays valid while TR
/// names it (the CPU takes interrupt stacks and the I/O bitmap from it).
pub unsafe fn ltr_safe(sel: u16) -> Result<(), Exception> {
    with_fixup!("ltr {s:x}", s = in(reg) sel)
}

/// `lldt` of `sel`, with a fixup.
///
/// # Safety
///
/// Where the LDTR is the hardware's, the LDT `sel` names must hold the descriptors of every
/// LDT selector in use, in memory that stays valid while it is loaded.
pub unsafe fn lldt_safe(sel: u16) -> Result<(), Exception> {
    with_fixup!("lldt {s:x}", s = in(reg) sel)
}

/// `lidt` of the IDTR's current value, with a fixup.
pub fn reload_idtr_safe() -> Result<(), Exception> {
    let cur = sidt().to_bytes();
    with_fixup!("lidt ({p})", p = in(reg) cur.as_ptr())
}

/// `lldt` of the current LDT selector (a no-op at CPL0), with a fixup.
pub fn reload_ldtr_safe() -> Result<(), Exception> {
    let sel = sldt();
    with_fixup!("lldt {s:x}", s = in(reg) sel)
}

/// `ltr` of the current TR selector, with a fixup (#GP at CPL3; at CPL0 the TSS is busy, so
/// #GP(selector) as well).
pub fn reload_tr_safe() -> Result<(), Exception> {
    let sel = str_selector();
    with_fixup!("ltr {s:x}", s = in(reg) sel)
}

/// CR3 written with its current value, with a fixup (#GP at CPL3).
pub fn reload_cr3_safe() -> Result<(), Exception> {
    let v = read_cr3_safe()?;
    with_fixup!("movq {v}, %cr3", v = in(reg) v)
}

/// CR0 read with a fixup.
pub fn read_cr0_safe() -> Result<u64, Exception> {
    let mut v: u64 = 0;
    with_fixup!("movq %cr0, {v}", v = inout(reg) v)?;
    Ok(v)
}

/// CR4 read with a fixup.
pub fn read_cr4_safe() -> Result<u64, Exception> {
    let mut v: u64 = 0;
    with_fixup!("movq %cr4, {v}", v = inout(reg) v)?;
    Ok(v)
}

/// CR0 written with its current value, with a fixup.
pub fn reload_cr0_safe() -> Result<(), Exception> {
    let v = read_cr0_safe()?;
    with_fixup!("movq {v}, %cr0", v = in(reg) v)
}

/// DR7 read with a fixup.
pub fn read_dr7_safe() -> Result<u64, Exception> {
    let mut v: u64 = 0;
    with_fixup!("movq %dr7, {v}", v = inout(reg) v)?;
    Ok(v)
}

/// DR7 written with `v`, with a fixup. Breakpoints stay disabled unless `v` enables them, which
/// callers must not do (the library handles no #DB).
pub fn write_dr7_safe(v: u64) -> Result<(), Exception> {
    with_fixup!("movq {v}, %dr7", v = in(reg) v)
}

/// `xsetbv`: XCR `index` = `v`, with a fixup (needs CR4.OSXSAVE).
pub fn xsetbv_safe(index: u32, v: u64) -> Result<(), Exception> {
    with_fixup!("xsetbv", in("ecx") index, in("eax") v as u32, in("edx") (v >> 32) as u32)
}

/// `xgetbv`: XCR `index`, with a fixup (needs CR4.OSXSAVE).
pub fn xgetbv_safe(index: u32) -> Result<u64, Exception> {
    let (mut lo, mut hi) = (0u32, 0u32);
    with_fixup!("xgetbv", in("ecx") index, inout("eax") lo, inout("edx") hi)?;
    Ok(u64::from(lo) | u64::from(hi) << 32)
}

/// A u64 read at `va` with RFLAGS.AC set around it (`stac`/`clac`: SMAP lets CPL0 access user
/// pages then), with a fixup. Needs SMAP (STAC/CLAC #UD without it).
pub fn read_u64_stac_safe(va: u64) -> Result<u64, Exception> {
    let mut v: u64 = 0;
    with_fixup!(pre "stac", "movq ({a}), {v}", post "clac", a = in(reg) va, v = inout(reg) v)?;
    Ok(v)
}

/// `wrpkru`: PKRU = `v`, with a fixup (needs CR4.PKE).
pub fn wrpkru_safe(v: u32) -> Result<(), Exception> {
    with_fixup!("wrpkru", in("eax") v, in("ecx") 0u32, in("edx") 0u32)
}

/// DR6 (the debug status), with a fixup.
pub fn read_dr6_safe() -> Result<u64, Exception> {
    let mut v: u64 = 0;
    with_fixup!("movq %dr6, {v}", v = inout(reg) v)?;
    Ok(v)
}

/// Signed 64-bit division of `i64::MIN` by -1 (the quotient overflows: #DE), with a fixup.
pub fn idiv_overflow_safe() -> Result<(), Exception> {
    with_fixup!(
        "idivq {d}",
        d = in(reg) -1i64,
        inout("rax") i64::MIN => _,
        inout("rdx") -1i64 => _
    )
}

/// `int $N`, with a fixup: the software interrupt through gate `N` (a trap: a handler that
/// returns resumes after it; a fault on the gate reports the instruction).
pub fn int_n_safe<const N: u8>() -> Result<(), Exception> {
    with_fixup!("int ${n}", n = const N)
}

/// A read through RBP (an SS-relative reference) at a non-canonical address: #SS(0), with a
/// fixup. RBP is saved and restored around it.
pub fn ss_noncanonical_read_safe() -> Result<(), Exception> {
    with_fixup!(
        pre "pushq %rbp\nmovq {a}, %rbp",
        "movq (%rbp), {t}",
        post "popq %rbp",
        a = in(reg) 0x8000_0000_0000_0000u64,
        t = out(reg) _
    )
}

/// `clts` with a fixup.
pub fn clts_safe() -> Result<(), Exception> {
    with_fixup!("clts")
}

/// `wbinvd` with a fixup.
pub fn wbinvd_safe() -> Result<(), Exception> {
    with_fixup!("wbinvd")
}

/// `invd` with a fixup (only ever expected to fault: at CPL0 it would drop dirty cache lines).
pub fn invd_at_cpl3_safe() -> Result<(), Exception> {
    if read_cs() & 3 == 0 {
        crate::error!("invd is only for CPL3 probes");
    }
    with_fixup!("invd")
}

/// `swapgs` with a fixup (exchanges GS_BASE and KERNEL_GS_BASE; the library never uses GS).
pub fn swapgs_safe() -> Result<(), Exception> {
    with_fixup!("swapgs")
}

/// `rdpmc` of counter `ecx` with a fixup.
pub fn rdpmc_safe(counter: u32) -> Result<u64, Exception> {
    let (mut lo, mut hi): (u32, u32) = (0, 0);
    with_fixup!("rdpmc", in("ecx") counter, inout("eax") lo, inout("edx") hi)?;
    Ok((u64::from(hi) << 32) | u64::from(lo))
}

/// `rdtsc` with a fixup (#GP at CPL3 with CR4.TSD=1).
pub fn rdtsc_safe() -> Result<u64, Exception> {
    let (mut lo, mut hi): (u32, u32) = (0, 0);
    with_fixup!("rdtsc", inout("eax") lo, inout("edx") hi)?;
    Ok((u64::from(hi) << 32) | u64::from(lo))
}

/// `rdtscp` with a fixup: the TSC and IA32_TSC_AUX.
pub fn rdtscp_safe() -> Result<(u64, u32), Exception> {
    let (mut lo, mut hi, mut aux): (u32, u32, u32) = (0, 0, 0);
    with_fixup!("rdtscp", inout("eax") lo, inout("edx") hi, inout("ecx") aux)?;
    Ok(((u64::from(hi) << 32) | u64::from(lo), aux))
}

/// `sti` with a fixup.
pub fn sti_safe() -> Result<(), Exception> {
    with_fixup!("sti")
}

/// `inb` with a fixup.
pub fn inb_safe(port: u16) -> Result<u8, Exception> {
    let mut v: u8 = 0;
    with_fixup!("inb %dx, %al", in("dx") port, inout("al") v)?;
    Ok(v)
}

/// `wrmsr` of an MSR with its current value (a no-op at CPL0), with a fixup.
pub fn rewrite_msr_safe(msr: u32) -> Result<(), Exception> {
    let v = rdmsr_safe(msr)?;
    with_fixup!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32)
}

/// Sets or clears CR4 bits among TSD and PCE (they only decide what CPL3 may read).
pub fn set_cr4_user_bits(bits: u64, on: bool) {
    let allowed = cr4::TSD | cr4::PCE;
    if bits & !allowed != 0 {
        crate::error!("set_cr4_user_bits: {bits:#x} has bits other than TSD/PCE");
    }
    let cur = read_cr4();
    let v = if on { cur | bits } else { cur & !bits };
    // SAFETY: TSD and PCE only decide whether CPL3 may execute RDTSC/RDPMC.
    unsafe { asm!("movq {}, %cr4", in(reg) v, options(att_syntax, nostack)) }
}

/// Sets or clears CR4.MCE (machine checks are delivered as #MC when set, else they shut the
/// CPU down), with a fixup: `Err` when the CPU refuses the bit.
pub fn set_cr4_mce_safe(on: bool) -> Result<(), Exception> {
    let cur = read_cr4();
    let v = if on { cur | cr4::MCE } else { cur & !cr4::MCE };
    with_fixup!("movq {v}, %cr4", v = in(reg) v)
}

/// Sets or clears CR0.TS (x87/SSE instructions then raise #NM; the library uses neither).
pub fn set_cr0_ts(on: bool) {
    let cr0 = read_cr0();
    let v = if on { cr0 | cr0::TS } else { cr0 & !cr0::TS };
    // SAFETY: TS only decides whether x87/SSE instructions raise #NM.
    unsafe { write_cr0(v) }
}

/// Enables SSE: CR4.OSFXSR, and CR4.OSXMMEXCPT when `xmm_exceptions` (else unmasked SIMD
/// exceptions raise #UD). The library itself is built without SSE.
pub fn enable_sse(xmm_exceptions: bool) {
    let mut v = read_cr4() | cr4::OSFXSR;
    if xmm_exceptions {
        v |= cr4::OSXMMEXCPT;
    } else {
        v &= !cr4::OSXMMEXCPT;
    }
    // SAFETY: OSFXSR/OSXMMEXCPT only enable SSE instructions and pick #XM or #UD for their
    // exceptions; no memory is affected.
    unsafe { asm!("movq {}, %cr4", in(reg) v, options(att_syntax, nostack)) }
}

/// Sets IA32_FS_BASE (the library never uses FS; cases use it to check that transitions keep
/// the user's FS base).
pub fn set_fs_base(v: u64) {
    // SAFETY: the library and the cases address memory only through DS/SS and absolute
    // addresses, never through FS, so its base changes nothing they rely on.
    unsafe { wrmsr(msr::FS_BASE, v) }
}

/// `invlpg` with a fixup (#GP at CPL3).
pub fn invlpg_safe(va: u64) -> Result<(), Exception> {
    with_fixup!("invlpg ({a})", a = in(reg) va)
}

/// CR0 written with `v` (the value the caller knows is current), with a fixup: for CPL3 probes,
/// which must fault; at CPL0 it is [`write_cr0`].
pub fn write_cr0_probe_safe(v: u64) -> Result<(), Exception> {
    if read_cs() & 3 == 0 && v != read_cr0() {
        crate::error!("write_cr0_probe_safe: {v:#x} is not the current CR0");
    }
    with_fixup!("movq {v}, %cr0", v = in(reg) v)
}

/// CR3 written with `v`, with a fixup: for CPL3 probes (see [`write_cr0_probe_safe`]).
pub fn write_cr3_probe_safe(v: u64) -> Result<(), Exception> {
    if read_cs() & 3 == 0 && v != read_cr3() {
        crate::error!("write_cr3_probe_safe: {v:#x} is not the current CR3");
    }
    with_fixup!("movq {v}, %cr3", v = in(reg) v)
}

/// CR4 written with `v`, with a fixup: for CPL3 probes (see [`write_cr0_probe_safe`]).
pub fn write_cr4_probe_safe(v: u64) -> Result<(), Exception> {
    if read_cs() & 3 == 0 && v != read_cr4() {
        crate::error!("write_cr4_probe_safe: {v:#x} is not the current CR4");
    }
    with_fixup!("movq {v}, %cr4", v = in(reg) v)
}

/// Loads DS with `sel`, with a fixup, and restores the previous DS (a #GP leaves DS as it was).
pub fn load_ds_safe(sel: u16) -> Result<(), Exception> {
    let old: u16;
    // SAFETY: reading DS has no effect.
    unsafe { asm!("movw %ds, {0:x}", out(reg) old, options(att_syntax, nostack)) }
    let r = with_fixup!("movw {s:x}, %ds", s = in(reg) sel);
    // SAFETY: `old` is the selector DS held a moment ago, so reloading it is valid.
    unsafe { asm!("movw {0:x}, %ds", in(reg) old, options(att_syntax, nostack)) }
    r
}

/// The FS base a load of FS with `sel` gives (64-bit mode takes the descriptor's 32-bit base),
/// with a fixup; FS and its base are restored afterwards. Needs CR4.FSGSBASE.
pub fn fs_base_of_selector_safe(sel: u16) -> Result<u64, Exception> {
    let (old_sel, old_base): (u16, u64);
    // SAFETY: reading FS and its base has no effect.
    unsafe {
        asm!("movw %fs, {0:x}", "rdfsbase {1}", out(reg) old_sel, out(reg) old_base,
            options(att_syntax, nostack))
    }
    let r = with_fixup!("movw {s:x}, %fs", s = in(reg) sel);
    let base: u64;
    // SAFETY: reads the FS base, then puts back the selector FS held a moment ago (valid) and
    // its base; nothing else uses FS in the library.
    unsafe {
        asm!("rdfsbase {b}", "movw {s:x}, %fs", "wrfsbase {o}", b = out(reg) base,
            s = in(reg) old_sel, o = in(reg) old_base, options(att_syntax, nostack))
    }
    r.map(|()| base)
}

/// Sets RFLAGS.TF, executes one `nop` (which traps with #DB after it) and clears TF again. The
/// #DB goes to the normal dispatch (a user fault hook, or an unexpected exception at CPL0).
/// Never inlined, so a case can check that the #DB reported a RIP inside it.
#[inline(never)]
pub fn single_step_nop() {
    // SAFETY: TF makes the instruction after POPF raise #DB, which the dispatcher handles; the
    // second POPF restores the flags (TF clear). The stack is balanced.
    unsafe {
        asm!(
            "pushfq",
            "orq $0x100, (%rsp)",
            "popfq",
            "nop",
            "pushfq",
            "andq $~0x100, (%rsp)",
            "popfq",
            options(att_syntax)
        )
    }
}

/// Executes the byte 0xce (`into`, invalid in 64-bit mode: #UD), with a fixup.
pub fn into_safe() -> Result<(), Exception> {
    with_fixup!(".byte 0xce")
}

/// `fwait` with a fixup (#NM with CR0.TS=1 and CR0.MP=1; #MF with an unmasked x87 exception
/// pending).
pub fn fwait_safe() -> Result<(), Exception> {
    with_fixup!("fwait")
}

/// Leaves an unmasked x87 zero-divide pending (FNINIT, zero-divide unmasked, 1/0 with the
/// no-wait form), so that the next waiting x87 instruction raises #MF.
pub fn x87_pend_zero_divide() {
    let cw: u16 = 0x037b; // default 0x037f with ZM (bit 2) cleared
    // SAFETY: only the x87 unit's state changes (the library does not use it); FDIVP's result
    // is popped, leaving the stack empty, and FNCLEX is not executed so the error stays pending.
    unsafe {
        asm!(
            "fninit",
            "fldcw ({cw})",
            "fldz",
            "fld1",
            "fdivp %st, %st(1)",
            cw = in(reg) &cw,
            options(att_syntax, nostack)
        )
    }
}

/// FNINIT: clears pending x87 exceptions (after [`x87_pend_zero_divide`]).
pub fn x87_reset() {
    // SAFETY: only the x87 unit's state changes.
    unsafe { asm!("fninit", options(att_syntax, nostack)) }
}

/// DIVSS of 1.0 by 0.0 with the zero-divide exception unmasked in MXCSR, with a fixup: #XM
/// (or #UD with CR4.OSXMMEXCPT=0). MXCSR is reset to its default afterwards. Needs SSE
/// enabled ([`enable_sse`]).
pub fn sse_zero_divide_safe() -> Result<(), Exception> {
    let unmasked: u32 = mxcsr::DEFAULT & !mxcsr::ZM;
    let default: u32 = mxcsr::DEFAULT;
    let one: u32 = 0x3f80_0000;
    let r = with_fixup!(pre "ldmxcsr ({m}); movd {o:e}, %xmm0; xorps %xmm1, %xmm1",
        "divss %xmm1, %xmm0", post "",
        m = in(reg) &unmasked, o = in(reg) one, out("xmm0") _, out("xmm1") _);
    // SAFETY: restores the default MXCSR (all exceptions masked).
    unsafe { asm!("ldmxcsr ({})", in(reg) &default, options(att_syntax, nostack)) }
    r
}

/// Sets RFLAGS.DF, executes `ud2` (a hook must resume after it: RIP + 2), reads RFLAGS and
/// clears DF again; returns the RFLAGS seen after the event (did DF survive it?). One asm block,
/// so no compiled code runs with DF set.
pub fn df_across_ud2() -> u64 {
    let f: u64;
    // SAFETY: DF is set and cleared inside the block; the #UD is handled by the caller's hook,
    // which resumes at the next instruction; the entry stubs clear DF before any Rust code.
    unsafe { asm!("std", "ud2", "pushfq", "popq {f}", "cld", f = out(reg) f, options(att_syntax)) }
    f
}

/// Sets RFLAGS.AC, executes `ud2` (resumed by a hook), reads RFLAGS and clears AC; returns the
/// RFLAGS seen after the event.
pub fn ac_across_ud2() -> u64 {
    let f: u64;
    // SAFETY: AC only enables alignment checks, which nothing between setting and clearing it
    // trips (no memory access but the stack, which is aligned).
    unsafe {
        asm!(
            "pushfq", "orq $0x40000, (%rsp)", "popfq",
            "ud2",
            "pushfq", "popq {f}",
            "pushfq", "andq $~0x40000, (%rsp)", "popfq",
            f = out(reg) f, options(att_syntax)
        )
    }
    f
}

/// Writes `v` to XMM0, executes `ud2` (resumed by a hook) and returns XMM0's low 64 bits after
/// the event (did the host keep the guest's SSE state?). Needs SSE enabled.
pub fn xmm0_across_ud2(v: u64) -> u64 {
    let r: u64;
    // SAFETY: only XMM0 and the #UD (handled by the caller's hook) are involved.
    unsafe {
        asm!("movq {v}, %xmm0", "ud2", "movq %xmm0, {r}", v = in(reg) v, r = out(reg) r,
             out("xmm0") _, options(att_syntax))
    }
    r
}

/// The u64 at FS:0 before and after a `ud2` (resumed by a hook): did the FS base survive?
pub fn fs0_across_ud2() -> (u64, u64) {
    let (a, b): (u64, u64);
    // SAFETY: reads through FS, whose base the caller set to a mapped test page; the #UD is
    // handled by the caller's hook.
    unsafe {
        asm!("movq %fs:0, {a}", "ud2", "movq %fs:0, {b}", a = out(reg) a, b = out(reg) b,
             options(att_syntax))
    }
    (a, b)
}

/// A u64 read at `va + 1` (misaligned), with a fixup: #AC at CPL3 with CR0.AM and RFLAGS.AC.
pub fn misaligned_read_safe(va: u64) -> Result<u64, Exception> {
    let mut v: u64 = 0;
    with_fixup!("movq 1({a}), {v}", a = in(reg) va, v = inout(reg) v)?;
    Ok(v)
}

/// Sets RFLAGS.AC, reads the u64 at `va + 1` (misaligned) with a fixup and clears AC: #AC(0)
/// at CPL3 with CR0.AM=1. One asm block, so no compiled code runs with AC set.
pub fn misaligned_read_with_ac_safe(va: u64) -> Result<u64, Exception> {
    let mut v: u64 = 0;
    with_fixup!(pre "pushfq; orq $0x40000, (%rsp); popfq", "movq 1({a}), {v}",
        post "pushfq; andq $~0x40000, (%rsp); popfq", a = in(reg) va, v = inout(reg) v)?;
    Ok(v)
}

/// Loads CR3 with `space`, runs `f` and loads the previous CR3 back.
pub fn with_cr3<R>(space: &crate::paging::AddressSpace, f: impl FnOnce() -> R) -> R {
    let prev = read_cr3();
    // SAFETY: an `AddressSpace` holds every entry of the table it was cloned from (the image,
    // stacks and loader mappings stay), so switching to it keeps all memory the guest uses.
    unsafe { asm!("movq {}, %cr3", in(reg) space.cr3(), options(att_syntax, nostack)) }
    let r = f();
    // SAFETY: `prev` is the CR3 that was in force when this function was entered.
    unsafe { asm!("movq {}, %cr3", in(reg) prev, options(att_syntax, nostack)) }
    r
}

/// Sets or clears EFER.NXE. Clearing it makes the NX bit of a paging entry reserved; the
/// loader's entries have NX clear, so only test mappings are affected.
pub fn set_efer_nxe(on: bool) {
    let v = rdmsr(msr::EFER);
    let v = if on {
        v | abi::x86::efer::NXE
    } else {
        v & !abi::x86::efer::NXE
    };
    // SAFETY: NXE only changes the meaning of bit 63 of paging entries, which is clear in every
    // entry the guest's own memory depends on.
    unsafe { wrmsr(msr::EFER, v) }
}

// --- Device access for the I/O cases --------------------------------------------------------

/// A guest-physical address in the MMIO window (identity mapped, no RAM behind it) with room
/// for an 8-byte access: writes through it reach the VMM, never guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioAddr(u64);

impl MmioAddr {
    /// `gpa` if it lies in the MMIO window with 8 bytes of room (any alignment).
    pub const fn new(gpa: u64) -> Option<Self> {
        use abi::layout::{MMIO_WINDOW, MMIO_WINDOW_SIZE};
        if gpa >= MMIO_WINDOW && gpa + 8 <= MMIO_WINDOW + MMIO_WINDOW_SIZE {
            Some(Self(gpa))
        } else {
            None
        }
    }

    /// The address.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// A plain `mov` of `size` bytes (1, 2, 4 or 8; else 8) of `v` to `a`.
pub fn mmio_write(a: MmioAddr, size: u8, v: u64) {
    let p = a.0;
    // SAFETY: `p` is in the MMIO window (checked when `a` was made), which the loader maps and
    // which holds no Rust object; the store exits to the VMM.
    unsafe {
        match size {
            1 => {
                asm!("movb {v}, ({p})", p = in(reg) p, v = in(reg_byte) v as u8, options(att_syntax, nostack))
            }
            2 => {
                asm!("movw {v:x}, ({p})", p = in(reg) p, v = in(reg) v as u16, options(att_syntax, nostack))
            }
            4 => {
                asm!("movl {v:e}, ({p})", p = in(reg) p, v = in(reg) v as u32, options(att_syntax, nostack))
            }
            _ => {
                asm!("movq {v}, ({p})", p = in(reg) p, v = in(reg) v, options(att_syntax, nostack))
            }
        }
    }
}

/// A plain `mov` of `size` bytes (1, 2, 4 or 8; else 8) from `a` into a register of that size;
/// the value zero-extended.
pub fn mmio_read(a: MmioAddr, size: u8) -> u64 {
    let p = a.0;
    // SAFETY: as in `mmio_write`; the load exits to the VMM, which supplies the value.
    unsafe {
        match size {
            1 => {
                let v: u8;
                asm!("movb ({p}), {v}", p = in(reg) p, v = out(reg_byte) v, options(att_syntax, nostack));
                u64::from(v)
            }
            2 => {
                let v: u16;
                asm!("movw ({p}), {v:x}", p = in(reg) p, v = out(reg) v, options(att_syntax, nostack));
                u64::from(v)
            }
            4 => {
                let v: u32;
                asm!("movl ({p}), {v:e}", p = in(reg) p, v = out(reg) v, options(att_syntax, nostack));
                u64::from(v)
            }
            _ => {
                let v: u64;
                asm!("movq ({p}), {v}", p = in(reg) p, v = out(reg) v, options(att_syntax, nostack));
                v
            }
        }
    }
}

/// How an MMIO load extends its value into a 64-bit register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extend {
    /// `movzbq`.
    ZeroByte,
    /// `movzwq`.
    ZeroWord,
    /// `movsbq`.
    SignByte,
    /// `movswq`.
    SignWord,
    /// `movslq`.
    SignDword,
}

/// A `movzx`/`movsx` load from `a` into a 64-bit register.
pub fn mmio_read_extend(a: MmioAddr, how: Extend) -> u64 {
    let p = a.0;
    let v: u64;
    // SAFETY: as in `mmio_read`.
    unsafe {
        match how {
            Extend::ZeroByte => {
                asm!("movzbq ({p}), {v}", p = in(reg) p, v = out(reg) v, options(att_syntax, nostack))
            }
            Extend::ZeroWord => {
                asm!("movzwq ({p}), {v}", p = in(reg) p, v = out(reg) v, options(att_syntax, nostack))
            }
            Extend::SignByte => {
                asm!("movsbq ({p}), {v}", p = in(reg) p, v = out(reg) v, options(att_syntax, nostack))
            }
            Extend::SignWord => {
                asm!("movswq ({p}), {v}", p = in(reg) p, v = out(reg) v, options(att_syntax, nostack))
            }
            Extend::SignDword => {
                asm!("movslq ({p}), {v}", p = in(reg) p, v = out(reg) v, options(att_syntax, nostack))
            }
        }
    }
    v
}

/// A read-modify-write instruction with a memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rmw {
    /// `addl $imm, (m)`.
    Add32(u32),
    /// `orb $imm, (m)`.
    Or8(u8),
    /// `incq (m)`.
    Inc64,
    /// `xchgl %r, (m)` (implicitly locked); returns the old value.
    Xchg32(u32),
    /// `lock xaddl %r, (m)`; returns the old value.
    LockXadd32(u32),
    /// `btsq $n, (m)`; returns the old bit.
    Bts64(u8),
}

/// Executes `op` on `a`; returns what the instruction leaves in its register operand (the old
/// value for XCHG/XADD, the old bit for BTS, else 0).
pub fn mmio_rmw(a: MmioAddr, op: Rmw) -> u64 {
    let p = a.0;
    // SAFETY: as in `mmio_write`: the memory operand is in the MMIO window.
    unsafe {
        match op {
            Rmw::Add32(v) => {
                asm!("addl {v:e}, ({p})", p = in(reg) p, v = in(reg) v, options(att_syntax, nostack));
                0
            }
            Rmw::Or8(v) => {
                asm!("orb {v}, ({p})", p = in(reg) p, v = in(reg_byte) v, options(att_syntax, nostack));
                0
            }
            Rmw::Inc64 => {
                asm!("incq ({p})", p = in(reg) p, options(att_syntax, nostack));
                0
            }
            Rmw::Xchg32(v) => {
                let mut r = v;
                asm!("xchgl {r:e}, ({p})", p = in(reg) p, r = inout(reg) r, options(att_syntax, nostack));
                u64::from(r)
            }
            Rmw::LockXadd32(v) => {
                let mut r = v;
                asm!("lock xaddl {r:e}, ({p})", p = in(reg) p, r = inout(reg) r, options(att_syntax, nostack));
                u64::from(r)
            }
            Rmw::Bts64(bit) => {
                let c: u8;
                asm!("btsq {b}, ({p})", "setc {c}", p = in(reg) p, b = in(reg) u64::from(bit & 63), c = out(reg_byte) c, options(att_syntax, nostack));
                u64::from(c)
            }
        }
    }
}

/// `rep movsb` of `src` (guest RAM) to the MMIO window at `a`.
pub fn mmio_movs_to(a: MmioAddr, src: &[u8]) {
    let n = src.len().min(8);
    // SAFETY: RSI reads `n` bytes of `src` (borrowed, `n` <= its length); RDI writes `n` bytes
    // in the MMIO window (8 bytes of room checked when `a` was made). DF is clear (ABI).
    unsafe {
        asm!("rep movsb", inout("rsi") src.as_ptr() => _, inout("rdi") a.0 => _,
             inout("rcx") n => _, options(att_syntax, nostack))
    }
}

/// `rep movsb` from the MMIO window at `a` into `dst` (guest RAM).
pub fn mmio_movs_from(a: MmioAddr, dst: &mut [u8]) {
    let n = dst.len().min(8);
    // SAFETY: RSI reads `n` bytes of the MMIO window (room checked when `a` was made); RDI
    // writes `n` bytes into `dst` (mutably borrowed, `n` <= its length). DF is clear.
    unsafe {
        asm!("rep movsb", inout("rsi") a.0 => _, inout("rdi") dst.as_mut_ptr() => _,
             inout("rcx") n => _, options(att_syntax, nostack))
    }
}

/// The item size of a string-I/O primitive: 1, 2 or (anything else) 4 bytes.
const fn string_io_size(size: u8) -> usize {
    match size {
        1 => 1,
        2 => 2,
        _ => 4,
    }
}

/// One `rep` string-I/O instruction of each item size and direction, with RCX = `$count`,
/// DX = `$port` and the buffer pointer in `$ptr_reg` (`"rsi"` for OUTS, `"rdi"` for INS); DF
/// is set around the instruction for `backwards` and cleared again before the block ends.
macro_rules! rep_string_io {
    ($size:expr, $backwards:expr, $port:expr, $count:expr, $ptr_reg:tt, $ptr:expr,
     $b:literal, $w:literal, $l:literal) => {
        // SAFETY: see the callers: the instruction moves `$count` items of `$size` bytes
        // between the port and the buffer `$ptr` points into (inside it in both directions).
        unsafe {
            match ($size, $backwards) {
                (1, false) => asm!($b, in("dx") $port, inout($ptr_reg) $ptr => _, inout("rcx") $count => _, options(att_syntax, nostack)),
                (2, false) => asm!($w, in("dx") $port, inout($ptr_reg) $ptr => _, inout("rcx") $count => _, options(att_syntax, nostack)),
                (_, false) => asm!($l, in("dx") $port, inout($ptr_reg) $ptr => _, inout("rcx") $count => _, options(att_syntax, nostack)),
                (1, true) => asm!("std", $b, "cld", in("dx") $port, inout($ptr_reg) $ptr => _, inout("rcx") $count => _, options(att_syntax, nostack)),
                (2, true) => asm!("std", $w, "cld", in("dx") $port, inout($ptr_reg) $ptr => _, inout("rcx") $count => _, options(att_syntax, nostack)),
                (_, true) => asm!("std", $l, "cld", in("dx") $port, inout($ptr_reg) $ptr => _, inout("rcx") $count => _, options(att_syntax, nostack)),
            }
        }
    };
}

/// `rep outs` of `size`-byte (1, 2 or 4) items of `buf` to `port`: all of them, in memory
/// order, or with RFLAGS.DF set from the last item down.
pub fn rep_outs(port: u16, size: u8, buf: &[u8], backwards: bool) {
    let size = string_io_size(size);
    let count = buf.len() / size;
    if count == 0 {
        return;
    }
    let start = if backwards { (count - 1) * size } else { 0 };
    let src = buf[start..].as_ptr();
    // OUTS reads `count` items of `size` bytes from RSI, which stays inside `buf` (ascending
    // from its start, or with DF descending from its last item).
    rep_string_io!(
        size,
        backwards,
        port,
        count,
        "rsi",
        src,
        "rep outsb",
        "rep outsw",
        "rep outsl"
    );
}

/// `rep ins` of `size`-byte (1, 2 or 4) items from `port` into `buf`: in memory order, or with
/// RFLAGS.DF set from the last item down.
pub fn rep_ins(port: u16, size: u8, buf: &mut [u8], backwards: bool) {
    let size = string_io_size(size);
    let count = buf.len() / size;
    if count == 0 {
        return;
    }
    let start = if backwards { (count - 1) * size } else { 0 };
    let dst = buf[start..].as_mut_ptr();
    // INS writes `count` items of `size` bytes at RDI, which stays inside `buf` (mutably
    // borrowed; ascending, or with DF descending from its last item).
    rep_string_io!(
        size, backwards, port, count, "rdi", dst, "rep insb", "rep insw", "rep insl"
    );
}
