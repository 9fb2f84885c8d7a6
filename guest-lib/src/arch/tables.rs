//! GDT, TSS and IDT: built in statics, loaded with `lgdt`/`ltr`/`lidt`, plus the SYSCALL MSRs.
//!
//! Selectors follow the x86-64 Linux layout, which SYSCALL/SYSRET need and which the local
//! host forces for user mode (CS 0x33, SS 0x2b whatever the guest asks for).

use core::arch::asm;

use super::Global;
use super::instr;

/// Kernel code selector.
pub const KERNEL_CS: u16 = 0x10;
/// Kernel data selector.
pub const KERNEL_DS: u16 = 0x18;
/// User 32-bit code selector (RPL 3); STAR's SYSRET base.
pub const USER32_CS: u16 = 0x20 | 3;
/// User data selector (RPL 3).
pub const USER_DS: u16 = 0x28 | 3;
/// User 64-bit code selector (RPL 3).
pub const USER_CS: u16 = 0x30 | 3;
/// TSS selector.
pub const TSS_SEL: u16 = 0x40;

const MSR_EFER: u32 = 0xc000_0080;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_SFMASK: u32 = 0xc000_0084;
const EFER_SCE: u64 = 1;

/// Vectors whose gate is callable from CPL3 (`int3`, `into`, `int $0x80`).
const USER_GATES: [u8; 3] = [3, 4, 0x80];

static GDT: Global<[u64; 10]> = Global::new([
    0,
    0x00cf_9a00_0000_ffff, // 0x08 kernel code, 32-bit (unused)
    0x00af_9a00_0000_ffff, // 0x10 kernel code, 64-bit
    0x00cf_9200_0000_ffff, // 0x18 kernel data
    0x00cf_fa00_0000_ffff, // 0x20 user code, 32-bit (SYSRET base)
    0x00cf_f200_0000_ffff, // 0x28 user data
    0x00af_fa00_0000_ffff, // 0x30 user code, 64-bit
    0,                     // 0x38 unused
    0,                     // 0x40 TSS low (filled in)
    0,                     // 0x48 TSS high
]);

/// 64-bit TSS as u32 words (it is 4-byte aligned only in hardware's eyes).
static TSS: Global<[u32; 26]> = Global::new([0; 26]);

static IDT: Global<[u64; 512]> = Global::new([0; 512]);

#[cfg(target_os = "none")]
unsafe extern "C" {
    static pvmc_vector_stubs: u8;
    static pvmc_trap_stack_top: u8;
    fn pvmc_syscall_entry();
}

/// Address of the entry stub of vector 0 (stubs are 16 bytes apart).
fn stubs_base() -> u64 {
    #[cfg(target_os = "none")]
    {
        core::ptr::addr_of!(pvmc_vector_stubs) as u64
    }
    #[cfg(not(target_os = "none"))]
    {
        0
    }
}

/// Top of the stack used for events from CPL3 and for SYSCALL.
pub fn trap_stack_top() -> u64 {
    #[cfg(target_os = "none")]
    {
        core::ptr::addr_of!(pvmc_trap_stack_top) as u64
    }
    #[cfg(not(target_os = "none"))]
    {
        0
    }
}

fn syscall_entry() -> u64 {
    #[cfg(target_os = "none")]
    {
        pvmc_syscall_entry as *const () as u64
    }
    #[cfg(not(target_os = "none"))]
    {
        0
    }
}

/// An interrupt gate descriptor (two u64 words).
fn gate(handler: u64, dpl: u8) -> (u64, u64) {
    let low = (handler & 0xffff)
        | (u64::from(KERNEL_CS) << 16)
        | ((0x8e | (u64::from(dpl) << 5)) << 40)
        | (((handler >> 16) & 0xffff) << 48);
    (low, handler >> 32)
}

/// Vectors that get a gate: exceptions (0-31), 16 interrupt vectors (32-47) and `int $0x80`.
/// The others stay not present (an event there arrives as #NP with the vector in the error
/// code). Few gates, filled without a filter loop, keep the work before the first case
/// instruction small on hosts that emulate CPL0 (~0.5 us per instruction there).
const GATED: core::ops::Range<usize> = 0..48;

/// Fills and loads the GDT (reloading every segment register), the TSS and the IDT, and
/// enables SYSCALL with LSTAR at the library's entry.
pub fn init() {
    let tss_base = TSS.addr();
    // Upper-half alias of the trap stack: the local host's native mode only switches to an
    // RSP0 in the upper half (a lower-half one ends in #SS -> #DF -> triple fault).
    let rsp0 = abi::layout::HIGH_ALIAS + trap_stack_top();
    TSS.set_at(1, rsp0 as u32);
    TSS.set_at(2, (rsp0 >> 32) as u32);
    TSS.set_at(25, 104 << 16); // I/O map base beyond the limit: no I/O bitmap

    let limit = 103u64;
    GDT.set_at(
        8,
        limit | ((tss_base & 0xff_ffff) << 16) | (0x89 << 40) | (((tss_base >> 24) & 0xff) << 56),
    );
    GDT.set_at(9, tss_base >> 32);

    // The stubs are one 4 KiB-aligned block below 4 GiB, so gate v is gate 0 plus 16 * v
    // (no carry out of the low 16 offset bits, high word 0): one add and one store per gate.
    let base = stubs_base();
    let (gate0, high) = gate(base, 0);
    if !base.is_multiple_of(4096) || high != 0 {
        crate::error!("IDT stubs at {base:#x} are not one 4 KiB block below 4 GiB");
    }
    for v in GATED {
        IDT.set_at(2 * v, gate0 + 16 * v as u64);
    }
    for v in USER_GATES {
        let (lo, hi) = gate(base + 16 * u64::from(v), 3);
        IDT.set_at(2 * usize::from(v), lo);
        IDT.set_at(2 * usize::from(v) + 1, hi);
    }

    load_gdt(GDT.addr(), 10 * 8 - 1);
    load_idt(IDT.addr(), 16 * 256 - 1);
    load_tr(TSS_SEL);

    let efer = instr::rdmsr(MSR_EFER);
    let star = (u64::from(USER32_CS) << 48) | (u64::from(KERNEL_CS) << 32);
    // SAFETY: EFER.SCE only enables SYSCALL; STAR/LSTAR/SFMASK only affect SYSCALL, whose
    // entry point is the library's own stub.
    unsafe {
        instr::wrmsr(MSR_EFER, efer | EFER_SCE);
        instr::wrmsr(MSR_STAR, star);
        instr::wrmsr(MSR_LSTAR, syscall_entry());
        instr::wrmsr(MSR_SFMASK, 0x4_7700); // TF, IF, DF, IOPL, NT, AC cleared on entry
    }
}

/// On a vCPU other than 0: loads the GDT and IDT that vCPU 0 built. No TSS (the TSS descriptor
/// is vCPU 0's and busy; other vCPUs never run at CPL3) and no SYSCALL MSRs.
pub fn load_ap() {
    load_gdt(GDT.addr(), 10 * 8 - 1);
    load_idt(IDT.addr(), 16 * 256 - 1);
}

/// Loads GDTR and reloads CS (far return) and the data segment registers.
fn load_gdt(base: u64, limit: u16) {
    let desc: [u64; 2] = [u64::from(limit) | (base << 16), base >> 48];
    // SAFETY: the GDT is a static that lives forever and holds the selectors loaded here with
    // the same meaning the host's initial state gave them (flat 64-bit code and data).
    unsafe {
        asm!(
            "lgdt ({d})",
            "pushq ${cs}",
            "leaq 2f(%rip), {t}",
            "pushq {t}",
            "lretq",
            "2:",
            "movw ${ds}, {t:x}",
            "movw {t:x}, %ds",
            "movw {t:x}, %es",
            "movw {t:x}, %ss",
            "movw {t:x}, %fs",
            "movw {t:x}, %gs",
            d = in(reg) desc.as_ptr(),
            t = out(reg) _,
            cs = const KERNEL_CS,
            ds = const KERNEL_DS,
            options(att_syntax)
        )
    }
}

fn load_idt(base: u64, limit: u16) {
    let desc: [u64; 2] = [u64::from(limit) | (base << 16), base >> 48];
    // SAFETY: the IDT is a static that lives forever; its gates point at the library's stubs.
    unsafe { asm!("lidt ({})", in(reg) desc.as_ptr(), options(att_syntax, nostack)) }
}

fn load_tr(sel: u16) {
    // SAFETY: the selector names the TSS descriptor written by `init`, whose TSS is a static.
    unsafe { asm!("ltr {0:x}", in(reg) sel, options(att_syntax, nostack)) }
}
