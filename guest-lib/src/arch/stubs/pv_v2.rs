//! pv-v2: the upstream v2 ABI's entry and return stubs (the 6.12 line, notes §11 and
//! docs/research/pvm-v2-host-semantics.md).
//!
//! - the event entry block at `MSR_PVM_EVENT_ENTRY`: +0 for events from user mode, +512 for
//!   events from supervisor mode. The host saved RIP, RFLAGS, RCX, R11, the vector and error
//!   code in the PVCS and left RSP alone; the +512 stub builds the common frame from them on
//!   the interrupted stack (16-byte aligned, as the CPU would), marks the event consumed
//!   (clears the vector's high byte) and calls the dispatcher;
//! - the return to supervisor code is the guest's own (the 6.12 host has no ERETS): the
//!   interrupt flag goes back into the PVCS, an interrupt the host marked pending is asked for
//!   with IRQ_WIN, and `iretq` (same privilege level in hardware) restores RIP, RFLAGS, RSP;
//! - the hypercall: `syscall` with RAX = number, RBX, R10 (the caller's RCX), RDX; RCX and R11
//!   are clobbered.
//!
//! The PVCS of the vCPU is found from RSP (`abi::layout` gives each vCPU its stack): at or
//! below `USER_STACK_TOP` it is vCPU 0's, above it vCPU `(rsp - USER_STACK_TOP - 1) /
//! AP_STACK_SIZE + 1`'s.
//!
//! User mode (vCPU 0 only, as everywhere): the host forces SMEP, so the image is mapped
//! supervisor-only and user code runs from its user alias (`abi::layout::USER_IMAGE_ALIAS`).
//! Frames always hold image addresses: the stubs translate a user RIP from the alias on the way
//! in and back to it on the way out, so the rest of the library never sees the alias.
//! - +0 (an event from user mode) and the LSTAR entry (a user `syscall`): the host left RSP
//!   at the user stack and the user context in the PVCS; the stubs switch to the trap stack
//!   and build the common frame (or the SYSCALL frame) from the PVCS;
//! - the return to user mode: RCX, R11, RIP, CS, RFLAGS and SS go into the PVCS, RSP is
//!   loaded, and the `syscall` at `MSR_PVM_RETU_RIP` is ERETU.

use abi::upstream::{PvcsV2, SYNTHETIC_CPUID};

use crate::arch::instr::with_fixup;
use crate::exception::Exception;

const _: () = assert!(abi::layout::AP_STACK_SIZE == 1 << 16);

#[cfg(target_os = "none")]
core::arch::global_asm!(
    r#"
    .text
    .macro pvmc_v2_pvcs_of_rsp
"#,
    super::pvcs_of_rsp!(),
    r#"
    .endm

    # RCX = the PVCS; leaves its vector word in R11, with the vector of an event the host
    # names by a bit alone put in the low byte: the NMI bit without STD is an NMI (vector 2),
    # the MCE bit a machine check (18) (the 6.12 host writes 0x200 / 0x400 for them,
    # docs/research/pvm-nmi-mce-eretu-star.md §1-2).
    .macro pvmc_v2_event_word
    movzwl {vector}(%rcx), %r11d
    testl ${std}, %r11d
    jnz 98f
    testl ${nmi}, %r11d
    jz 97f
    orl $2, %r11d
    jmp 98f
97: testl ${mce}, %r11d
    jz 98f
    orl $18, %r11d
98:
    .endm

    # An address of the image's user alias becomes the image address (and back).
    .macro pvmc_v2_to_image reg
    cmpq ${alias}, \reg
    jb 95f
    cmpq ${alias_end}, \reg
    jae 95f
    subq ${alias_off}, \reg
95:
    .endm
    .macro pvmc_v2_to_alias reg
    cmpq ${image}, \reg
    jb 96f
    cmpq ${image_end}, \reg
    jae 96f
    addq ${alias_off}, \reg
96:
    .endm

    # From user mode, RSP = the user stack: onto the trap stack, RCX = vCPU 0's PVCS (user
    # mode runs there only), and the user context it holds pushed as an interrupt frame (SS,
    # RSP, RFLAGS, CS, RIP as an image address).
    .macro pvmc_v2_user_frame
    movq %rsp, pvmc_v2_user_rsp(%rip)
    leaq pvmc_trap_stack_top(%rip), %rsp
    movl ${pvcs0}, %ecx
    movzwl {o_user_ss}(%rcx), %r11d
    pushq %r11
    pushq pvmc_v2_user_rsp(%rip)
    movl {eflags}(%rcx), %r11d
    pushq %r11
    movzwl {o_user_cs}(%rcx), %r11d
    pushq %r11
    movq {rip}(%rcx), %r11
    pvmc_v2_to_image %r11
    pushq %r11
    .endm

    .balign 4096
    .global pvmc_v2_event_entry
pvmc_v2_event_entry:
    # +0: an event from user mode.
    jmp pvmc_v2_user_event
    .org pvmc_v2_event_entry + 512
    # +512: an event from supervisor mode. RCX = entry and R11 = 0x202 (the originals are in
    # the PVCS); RSP as interrupted.
    movq %rsp, %rcx
    andq $-16, %rsp
    pushq ${kernel_ds}
    pushq %rcx
    pvmc_v2_pvcs_of_rsp
    movl {eflags}(%rcx), %r11d
    pushq %r11
    pushq ${kernel_cs}
    pushq {rip}(%rcx)
    movzwl {errcode}(%rcx), %r11d
    pushq %r11
    # The whole vector word: the event bits above the vector (STD, NMI, MCE) go into the
    # frame too (the dispatcher looks at the low byte).
    pvmc_v2_event_word
    pushq %r11
"#,
    super::push_gprs!(),
    super::drop_stale_errcode!(),
    super::gprs_rcx_r11_from_pvcs!(),
    r#"
    movb $0, {vector}+1(%rcx)
    movq %rsp, %rdi
    cld
    call pvmc_exception_dispatch
"#,
    super::pop_gprs!(),
    r#"
    addq $16, %rsp
    # Stack: RIP, CS, RFLAGS, RSP, SS with the kernel's selectors; back in hardware CPL3 on
    # the host's.
    movq ${user_cs}, 8(%rsp)
    movq ${user_ds}, 32(%rsp)
    testl $0x200, 16(%rsp)
    jz 2f
    pushq %rcx
    leaq 8(%rsp), %rcx
    pvmc_v2_pvcs_of_rsp
    orq $0x200, (%rcx)
    btq $8, (%rcx)
    popq %rcx
    jnc 2f
    pushq %rax
    pushq %rcx
    pushq %r11
    movl ${irq_win}, %eax
    syscall
    popq %r11
    popq %rcx
    popq %rax
2:  iretq

pvmc_v2_user_event:
    # From user mode: RSP = the user stack, the user context in vCPU 0's PVCS.
    pvmc_v2_user_frame
    movzwl {errcode}(%rcx), %r11d
    pushq %r11
    pvmc_v2_event_word
    pushq %r11
"#,
    super::push_gprs!(),
    super::drop_stale_errcode!(),
    super::gprs_rcx_r11_from_pvcs!(),
    r#"
    movb $0, {vector}+1(%rcx)
    movq %rsp, %rdi
    cld
    call pvmc_exception_dispatch
"#,
    super::pop_gprs!(),
    r#"
    addq $16, %rsp
    jmp *pvmc_user_returns(%rip)

    # A user `syscall`, at LSTAR: RSP = the user stack, RIP/RCX/R11/RFLAGS in the PVCS.
    .global pvmc_v2_syscall_entry
pvmc_v2_syscall_entry:
    pvmc_v2_user_frame
"#,
    super::push_gprs!(),
    r#"
    movq {pvcs_rcx}(%rcx), %r11
    pvmc_v2_to_image %r11
    movq %r11, 16(%rsp)
    movq {pvcs_r11}(%rcx), %r11
    movq %r11, 80(%rsp)
    movq %rsp, %rdi
    cld
    call pvmc_syscall_dispatch
"#,
    super::pop_gprs!(),
    r#"
    jmp *pvmc_user_returns+8(%rip)

    # To user mode from an interrupt frame (RIP, CS, RFLAGS, RSP, SS), registers restored.
    # The ERETU `syscall` lies within the first 16 bytes (`in_user_return`).
    .global pvmc_v2_user_return
pvmc_v2_user_return:
    call pvmc_v2_stage
    movq 24(%rsp), %rsp
    .global pvmc_v2_retu
pvmc_v2_retu:
    syscall
    ud2

    # The frame (above the return address) and RCX/R11 into vCPU 0's PVCS.
pvmc_v2_stage:
    movq %rcx, {pvcs0}+{pvcs_rcx}
    movq %r11, {pvcs0}+{pvcs_r11}
    movq 8(%rsp), %rcx
    pvmc_v2_to_alias %rcx
    movq %rcx, {pvcs0}+{rip}
    movq 16(%rsp), %rcx
    movw %cx, {pvcs0}+{o_user_cs}
    movq 24(%rsp), %rcx
    movl %ecx, {pvcs0}+{eflags}
    movq 40(%rsp), %rcx
    movw %cx, {pvcs0}+{o_user_ss}
    ret

    .bss
    .balign 8
pvmc_v2_user_rsp:
    .skip 8
    .text
"#,
    ust = const abi::layout::USER_STACK_TOP,
    pvcs0 = const abi::layout::VIF_GPA,
    kernel_cs = const abi::layout::sel::KERNEL_CS,
    kernel_ds = const abi::layout::sel::KERNEL_DS,
    user_cs = const abi::upstream::HOST_USER_CS,
    user_ds = const abi::upstream::HOST_USER_DS,
    eflags = const core::mem::offset_of!(PvcsV2, eflags),
    rip = const core::mem::offset_of!(PvcsV2, rip),
    pvcs_rcx = const core::mem::offset_of!(PvcsV2, rcx),
    pvcs_r11 = const core::mem::offset_of!(PvcsV2, r11),
    errcode = const core::mem::offset_of!(PvcsV2, event_errcode),
    vector = const core::mem::offset_of!(PvcsV2, event_vector),
    std = const abi::upstream::vector_bits::STD,
    nmi = const abi::upstream::vector_bits::NMI,
    mce = const abi::upstream::vector_bits::MCE,
    irq_win = const abi::upstream::hc::IRQ_WIN,
    errmask = const super::idt::ERROR_CODE_VECTORS,
    o_user_cs = const core::mem::offset_of!(PvcsV2, user_cs),
    o_user_ss = const core::mem::offset_of!(PvcsV2, user_ss),
    image = const abi::layout::IMAGE_BASE,
    image_end = const abi::layout::IMAGE_END,
    alias = const abi::layout::USER_IMAGE_ALIAS,
    alias_end = const abi::layout::USER_IMAGE_ALIAS + (abi::layout::IMAGE_END - abi::layout::IMAGE_BASE),
    alias_off = const abi::layout::USER_ALIAS_OFFSET,
    options(att_syntax)
);

#[cfg(target_os = "none")]
unsafe extern "C" {
    safe static pvmc_v2_event_entry: u8;
    safe static pvmc_v2_syscall_entry: u8;
    safe static pvmc_v2_user_return: u8;
    safe static pvmc_v2_retu: u8;
}

/// The return-to-user stubs (the same one serves events and SYSCALL: both leave an interrupt
/// frame).
pub fn user_returns() -> super::UserReturns {
    #[cfg(target_os = "none")]
    let r = core::ptr::addr_of!(pvmc_v2_user_return) as u64;
    #[cfg(not(target_os = "none"))]
    let r = 0;
    super::UserReturns {
        from_event: r,
        from_syscall: r,
    }
}

/// Address of the ERETU `syscall` (for `MSR_PVM_RETU_RIP`).
pub fn retu_rip() -> u64 {
    #[cfg(target_os = "none")]
    {
        core::ptr::addr_of!(pvmc_v2_retu) as u64
    }
    #[cfg(not(target_os = "none"))]
    0
}

/// The entry of a user `syscall` (for LSTAR).
pub fn syscall_entry() -> u64 {
    #[cfg(target_os = "none")]
    {
        core::ptr::addr_of!(pvmc_v2_syscall_entry) as u64
    }
    #[cfg(not(target_os = "none"))]
    0
}

/// Address of the event entry block (for `MSR_PVM_EVENT_ENTRY`).
pub fn event_entry() -> u64 {
    #[cfg(target_os = "none")]
    {
        core::ptr::addr_of!(pvmc_v2_event_entry) as u64
    }
    #[cfg(not(target_os = "none"))]
    0
}

/// The hypercall (`syscall` in supervisor mode) with a fixup; returns RAX.
pub fn hypercall_safe(nr: u64, a0: u64, a1: u64, a2: u64) -> Result<u64, Exception> {
    let mut rax = nr;
    // RBX cannot be an asm operand (LLVM reserves it): swap it in and out around `syscall`.
    with_fixup!(pre "xchgq {b}, %rbx", "syscall", post "xchgq {b}, %rbx",
        b = inout(reg) a0 => _, inout("rax") rax, in("r10") a1, in("rdx") a2,
        out("rcx") _, out("r11") _)?;
    Ok(rax)
}

/// The synthetic CPUID (`invlpg 0xffffffffff4d5650; cpuid`) with a fixup; EAX..EDX.
pub fn synthetic_cpuid_safe(leaf: u32, sub: u32) -> Result<[u32; 4], Exception> {
    let (mut a, mut c) = (leaf, sub);
    let (mut b, mut d) = (0u64, 0u32);
    with_fixup!(pre "xchgq {b}, %rbx",
        ".byte {s0}, {s1}, {s2}, {s3}, {s4}, {s5}, {s6}, {s7}, {s8}, {s9}",
        post "xchgq {b}, %rbx",
        b = inout(reg) b, inout("eax") a, inout("ecx") c, inout("edx") d,
        s0 = const SYNTHETIC_CPUID[0], s1 = const SYNTHETIC_CPUID[1],
        s2 = const SYNTHETIC_CPUID[2], s3 = const SYNTHETIC_CPUID[3],
        s4 = const SYNTHETIC_CPUID[4], s5 = const SYNTHETIC_CPUID[5],
        s6 = const SYNTHETIC_CPUID[6], s7 = const SYNTHETIC_CPUID[7],
        s8 = const SYNTHETIC_CPUID[8], s9 = const SYNTHETIC_CPUID[9])?;
    Ok([a, b as u32, c, d])
}

/// Reads the field `offset` bytes into the PVCS at `pvcs` (identity-mapped guest RAM); `T` is
/// the field's type.
fn pvcs_read<T: Copy>(pvcs: u64, offset: usize) -> T {
    // SAFETY: the PVCS pages are guest RAM reserved for them in the layout (identity mapped,
    // page aligned; callers name a field by its `offset_of!` and type, so the access is in
    // the page and naturally aligned); the host writes them too, so the access is volatile.
    unsafe { core::ptr::read_volatile((pvcs + offset as u64) as *const T) }
}

/// Writes the field `offset` bytes into the PVCS at `pvcs`; `T` is the field's type.
fn pvcs_write<T>(pvcs: u64, offset: usize, v: T) {
    // SAFETY: as in `pvcs_read`; only the owning vCPU's code writes its PVCS.
    unsafe { core::ptr::write_volatile((pvcs + offset as u64) as *mut T, v) }
}

/// Reads `event_flags` of the PVCS at `pvcs`.
pub fn read_event_flags(pvcs: u64) -> u64 {
    pvcs_read(pvcs, core::mem::offset_of!(PvcsV2, event_flags))
}

/// Sets `user_gsbase` of the PVCS at `pvcs`: the GS base ERETU gives user mode.
pub fn write_user_gsbase(pvcs: u64, v: u64) {
    pvcs_write(pvcs, core::mem::offset_of!(PvcsV2, user_gsbase), v);
}

/// Reads `event_vector` of the PVCS at `pvcs`.
pub fn read_event_vector(pvcs: u64) -> u16 {
    pvcs_read(pvcs, core::mem::offset_of!(PvcsV2, event_vector))
}

/// Writes `event_vector` of the PVCS at `pvcs`.
pub fn write_event_vector(pvcs: u64, v: u16) {
    pvcs_write(pvcs, core::mem::offset_of!(PvcsV2, event_vector), v);
}

/// Writes `event_flags` of the PVCS at `pvcs`.
pub fn write_event_flags(pvcs: u64, v: u64) {
    pvcs_write(pvcs, core::mem::offset_of!(PvcsV2, event_flags), v);
}

/// Zeroes the PVCS page at `pvcs`, puts the host's user selectors in it and registers it and
/// the event entry block with the host (on the vCPU that owns it).
pub fn register(pvcs: u64) {
    // SAFETY: the PVCS page is reserved for this vCPU in the guest layout (identity mapped
    // RAM); nothing else uses it, and the host reads it only once it is registered below.
    unsafe {
        core::ptr::write_bytes(pvcs as *mut u8, 0, abi::layout::PAGE_SIZE as usize);
        let cs = (pvcs + core::mem::offset_of!(PvcsV2, user_cs) as u64) as *mut u16;
        core::ptr::write_volatile(cs, abi::upstream::HOST_USER_CS);
        let ss = (pvcs + core::mem::offset_of!(PvcsV2, user_ss) as u64) as *mut u16;
        core::ptr::write_volatile(ss, abi::upstream::HOST_USER_DS);
    }
    // SAFETY: these MSRs change where the host delivers events and which page it shares; both
    // are the guest's own (the entry block is in the image, the PVCS page reserved above).
    unsafe {
        crate::arch::instr::wrmsr(abi::upstream::MSR_VCPU_STRUCT, pvcs);
        crate::arch::instr::wrmsr(abi::upstream::MSR_EVENT_ENTRY, event_entry());
    }
    // SAFETY: where a user `syscall` enters and where ERETU is: the library's own stubs.
    unsafe {
        crate::arch::instr::wrmsr(abi::upstream::MSR_RETU_RIP, retu_rip());
        crate::arch::instr::wrmsr(abi::x86::msr::LSTAR, syscall_entry());
    }
}
