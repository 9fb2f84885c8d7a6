//! GDT, TSS and IDT: built in statics, loaded with `lgdt`/`ltr`/`lidt`, plus the SYSCALL MSRs.
//!
//! Selectors follow `abi::layout::sel` (the x86-64 Linux layout, which SYSCALL/SYSRET need
//! and which the local host forces for user mode: CS 0x33, SS 0x2b whatever the guest asks
//! for).

use core::arch::asm;

use abi::layout::sel::{KERNEL_CS, KERNEL_DS, TSS as TSS_SEL, USER32_CS};
use abi::x86::{desc, efer, msr, rflags};

use super::BootCell;
use super::instr;
use super::stubs::idt;
use crate::exception::Exception;

/// Vectors whose gate is callable from CPL3 (`int3`, `into`, `int $0x80`).
const USER_GATES: [u8; 3] = [3, 4, 0x80];

/// RFLAGS bits SYSCALL clears on entry.
const SFMASK: u64 = rflags::TF | rflags::IF | rflags::DF | rflags::IOPL | rflags::NT | rflags::AC;

const GDT_ENTRIES: usize = 10;

static GDT: BootCell<[u64; GDT_ENTRIES]> = BootCell::new([
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

const _: () = {
    assert!(KERNEL_CS == 0x10 && KERNEL_DS == 0x18 && USER32_CS == 0x23);
    assert!(abi::layout::sel::USER_DS == 0x2b && abi::layout::sel::USER_CS == 0x33);
    assert!(TSS_SEL as usize == 8 * (GDT_ENTRIES - 2));
};

/// 64-bit TSS as u32 words (it is 4-byte aligned only in hardware's eyes).
static TSS: BootCell<[u32; 26]> = BootCell::new([0; 26]);

static IDT: BootCell<[u64; 512]> = BootCell::new([0; 512]);

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

/// Fills and loads the GDT (reloading every segment register), the TSS and the IDT (gates to
/// the [`idt`] stubs), and enables SYSCALL with LSTAR at the library's entry. vCPU 0 only.
pub fn init() {
    let tss_base = TSS.addr();
    // Upper-half alias of the trap stack: the local host's native mode only switches to an
    // RSP0 in the upper half (a lower-half one ends in #SS -> #DF -> triple fault).
    let rsp0 = abi::layout::HIGH_ALIAS + idt::trap_stack_top();
    TSS.init(|t| {
        t[1] = rsp0 as u32;
        t[2] = (rsp0 >> 32) as u32;
        t[25] = 104 << 16; // I/O map base beyond the limit: no I/O bitmap
    });

    GDT.init(|g| {
        [g[8], g[9]] = desc::system(tss_base, 103, desc::TSS_AVAILABLE, true);
    });

    // The stubs are one 4 KiB-aligned block below 4 GiB, so gate v is gate 0 plus 16 * v
    // (no carry out of the low 16 offset bits, high word 0): one add and one store per gate.
    let base = idt::vector_stubs();
    let (gate0, high) = gate(base, 0);
    if !base.is_multiple_of(4096) || high != 0 {
        crate::error!("IDT stubs at {base:#x} are not one 4 KiB block below 4 GiB");
    }
    IDT.init(|idt_words| {
        for v in GATED {
            idt_words[2 * v] = gate0 + idt::STUB_SIZE * v as u64;
        }
        for v in USER_GATES {
            let (lo, hi) = gate(base + idt::STUB_SIZE * u64::from(v), 3);
            idt_words[2 * usize::from(v)] = lo;
            idt_words[2 * usize::from(v) + 1] = hi;
        }
    });

    load_gdt(GDT.addr(), (GDT_ENTRIES * 8 - 1) as u16);
    load_idt(IDT.addr(), 16 * 256 - 1);
    load_tr(TSS_SEL);

    let efer_now = instr::rdmsr(msr::EFER);
    let star = (u64::from(USER32_CS) << 48) | (u64::from(KERNEL_CS) << 32);
    // SAFETY: EFER.SCE only enables SYSCALL; STAR/LSTAR/SFMASK only affect SYSCALL, whose
    // entry point is the library's own stub.
    unsafe {
        instr::wrmsr(msr::EFER, efer_now | efer::SCE);
        instr::wrmsr(msr::STAR, star);
        instr::wrmsr(msr::LSTAR, idt::syscall_entry());
        instr::wrmsr(msr::SFMASK, SFMASK);
    }
}

/// On a vCPU other than 0: loads the GDT and IDT that vCPU 0 built. No TSS (the TSS descriptor
/// is vCPU 0's and busy; other vCPUs never run at CPL3) and no SYSCALL MSRs.
pub fn load_ap() {
    load_gdt(GDT.addr(), (GDT_ENTRIES * 8 - 1) as u16);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_split_the_handler_address_and_carry_the_dpl() {
        let (lo, hi) = gate(0x1234_5678_9abc_def0, 3);
        assert_eq!(lo & 0xffff, 0xdef0);
        assert_eq!((lo >> 16) & 0xffff, u64::from(KERNEL_CS));
        assert_eq!(
            (lo >> 40) & 0xff,
            0x8e | (3 << 5),
            "present interrupt gate, DPL 3"
        );
        assert_eq!(lo >> 48, 0x9abc);
        assert_eq!(hi, 0x1234_5678);
        // Gate v of a 4 KiB-aligned stub block is gate 0 plus 16 * v (what `init` relies on).
        let (g0, _) = gate(0x20_1000, 0);
        let (g47, _) = gate(0x20_1000 + 16 * 47, 0);
        assert_eq!(g47, g0 + 16 * 47);
    }
}

/// Proof that the host stores the guest's GDTR and TR without loading them into the hardware,
/// which runs on the host's GDT and TR (the upstream PVM ABI, notes §6): there LGDT and LTR only
/// change what the host's emulated descriptor loads read. Only an environment module whose host
/// does that makes one ([`crate::env::Environment::stored_descriptor_tables`]).
#[derive(Debug)]
pub struct StoredDescriptorTables(());

impl StoredDescriptorTables {
    /// The proof. An environment module calls this only for a host of the upstream ABI.
    pub(crate) const fn new() -> Self {
        Self(())
    }

    /// LGDT of a table at `base` with `limit`; the [`StoredGdt`] whose LTRs read it.
    pub fn load_gdt(
        &mut self,
        base: crate::paging::TestVa,
        limit: u16,
    ) -> Result<StoredGdt<'_>, Exception> {
        let table = instr::TableRegister {
            limit,
            base: base.get(),
        };
        // SAFETY: with this proof the hardware keeps the host's GDT (see the type), so no
        // selector in use changes meaning; the stored table only serves emulated loads.
        unsafe { instr::lgdt_safe(table) }?;
        Ok(StoredGdt(core::marker::PhantomData))
    }
}

/// The guest's stored GDTR as [`StoredDescriptorTables::load_gdt`] set it: a table at a
/// [`crate::paging::TestVa`], which only a case's own mapping puts (scratch) memory behind.
#[derive(Debug)]
pub struct StoredGdt<'a>(core::marker::PhantomData<&'a mut StoredDescriptorTables>);

impl StoredGdt<'_> {
    /// LTR of `sel`: the host's emulation reads the descriptor from the stored table and, if
    /// it loads, writes its busy bit there.
    pub fn ltr(&self, sel: u16) -> Result<(), Exception> {
        // SAFETY: the GDTR is the table `load_gdt` stored, at a test address, so the busy bit
        // lands in scratch memory or faults. (The borrow of the proof keeps other LGDTs through
        // it away; the only other LGDT, `instr::reload_gdtr_safe`, stores what SGDT shows: the
        // host's GDT, outside the guest's address range, or under the host's UMIP this table.) The hardware TR stays the host's, so no stack or I/O bitmap comes from
        // the TSS the descriptor names.
        unsafe { instr::ltr_safe(sel) }
    }

    /// LLDT of `sel`: the host's emulation reads the descriptor from the stored table; the
    /// upstream host has no LDT, so a descriptor that loads shuts the vCPU down.
    pub fn lldt(&self, sel: u16) -> Result<(), Exception> {
        // SAFETY: the hardware LDTR stays the host's (null) whatever the host makes of this;
        // the emulation only reads the stored table, at a test address.
        unsafe { instr::lldt_safe(sel) }
    }
}
