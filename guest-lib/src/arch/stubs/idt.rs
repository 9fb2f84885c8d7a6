//! IDT-based event delivery, shared by `hvm64` and `pv-local`: 256 vector stubs, the common
//! exception path, the SYSCALL entry, and the trap stack that events from CPL3 and SYSCALL
//! switch to. Returns to CPL3 go through the environment's installed [`super::UserReturns`];
//! returns to CPL0 are `iretq`.
//!
//! Entries from CPL3 first reload the kernel CR3 (PTI style): the local host runs CPL3 on
//! CR3 | 0x1000 and treats the vCPU as in user mode until CR3 is written. On any other host
//! this is a plain reload, so it costs nothing in correctness anywhere.
//!
//! One trap stack and one SYSCALL scratch word: only vCPU 0 runs user code.

#[cfg(target_os = "none")]
use super::{pop_gprs, push_gprs};

/// Bit `v` set for each exception vector `v` < 32 for which the CPU pushes an error code (the
/// stubs of the other vectors push a zero in its place).
pub const ERROR_CODE_VECTORS: u32 = {
    let mut m = 0u32;
    let mut v = 0u8;
    while v < 32 {
        if abi::x86::vector::has_error_code(v) {
            m |= 1 << v;
        }
        v += 1;
    }
    m
};

// #DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP, #VC, #SX (SDM vol. 3 table 6-1).
const _: () = assert!(ERROR_CODE_VECTORS == 0x6022_7d00);

/// Size of each vector stub (gate `v` points at the stub block + `STUB_SIZE * v`).
pub const STUB_SIZE: u64 = 16;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    r#"
    .text
    # One 4 KiB-aligned block of 256 16-byte stubs: gate v differs from gate 0 only by 16*v
    # in its low 16 bits (see tables::init).
    .balign 4096
    .global pvmc_vector_stubs
pvmc_vector_stubs:
    .set vec, 0
    .rept 256
    .balign {stub_size}
    .if (vec < 32) && ((({errmask} >> vec) & 1) == 1)
    .else
    pushq $0
    .endif
    pushq $vec
    jmp pvmc_idt_common
    .set vec, vec + 1
    .endr

pvmc_idt_common:
    # Stack: vector, error code, RIP, CS, RFLAGS, RSP, SS.
    testb $3, 24(%rsp)
    jz 5f
    pushq %rax
    movl ${pml4}, %eax
    movq %rax, %cr3
    popq %rax
5:
"#,
    push_gprs!(),
    r#"
    movq %rsp, %rdi
    cld
    call pvmc_exception_dispatch
"#,
    pop_gprs!(),
    r#"
    addq $16, %rsp
    # Stack: RIP, CS, RFLAGS, RSP, SS.
    testb $3, 8(%rsp)
    jz 6f
    jmp *pvmc_user_returns(%rip)
6:  iretq

    # SYSCALL: RCX = user RIP, R11 = user RFLAGS, RSP = user stack. On the local host the
    # vCPU is still "user" (user CR3) until the kernel CR3 is written; on a host that
    # (wrongly) leaves CPL at 3, the CR3 write raises #GP at `pvmc_syscall_cr3`.
    .global pvmc_syscall_entry
pvmc_syscall_entry:
    movq %rax, pvmc_syscall_scratch(%rip)
    movl ${pml4}, %eax
    .global pvmc_syscall_cr3
pvmc_syscall_cr3:
    movq %rax, %cr3
    movq pvmc_syscall_scratch(%rip), %rax
    movq %rsp, pvmc_syscall_scratch(%rip)
    leaq pvmc_trap_stack_top(%rip), %rsp
    pushq ${user_ds}
    pushq pvmc_syscall_scratch(%rip)
    pushq %r11
    pushq ${user_cs}
    pushq %rcx
"#,
    push_gprs!(),
    r#"
    movq %rsp, %rdi
    cld
    call pvmc_syscall_dispatch
"#,
    pop_gprs!(),
    r#"
    # Stack: RIP, CS, RFLAGS, RSP, SS (an interrupt frame).
    jmp *pvmc_user_returns+8(%rip)

    .bss
    .balign 16
pvmc_trap_stack:
    .skip 16384
    .global pvmc_trap_stack_top
pvmc_trap_stack_top:
pvmc_syscall_scratch:
    .skip 8
    .text
"#,
    stub_size = const STUB_SIZE,
    errmask = const ERROR_CODE_VECTORS,
    user_ds = const abi::layout::sel::USER_DS,
    user_cs = const abi::layout::sel::USER_CS,
    pml4 = const abi::layout::PML4_GPA,
    options(att_syntax)
);

#[cfg(target_os = "none")]
unsafe extern "C" {
    safe static pvmc_vector_stubs: u8;
    safe static pvmc_trap_stack_top: u8;
    safe static pvmc_syscall_entry: u8;
    safe static pvmc_syscall_cr3: u8;
}

/// Address of the stub of vector 0.
pub fn vector_stubs() -> u64 {
    #[cfg(target_os = "none")]
    {
        core::ptr::addr_of!(pvmc_vector_stubs) as u64
    }
    #[cfg(not(target_os = "none"))]
    0
}

/// Top of the stack used for events from CPL3 and for SYSCALL.
pub fn trap_stack_top() -> u64 {
    #[cfg(target_os = "none")]
    {
        core::ptr::addr_of!(pvmc_trap_stack_top) as u64
    }
    #[cfg(not(target_os = "none"))]
    0
}

/// The SYSCALL entry (for IA32_LSTAR).
pub fn syscall_entry() -> u64 {
    #[cfg(target_os = "none")]
    {
        core::ptr::addr_of!(pvmc_syscall_entry) as u64
    }
    #[cfg(not(target_os = "none"))]
    0
}

/// Address of the kernel-CR3 load in the SYSCALL entry (its first privileged instruction): a
/// #GP there from CPL3 means a `syscall` reached LSTAR without switching to CPL0.
pub fn syscall_cr3_rip() -> u64 {
    #[cfg(target_os = "none")]
    {
        core::ptr::addr_of!(pvmc_syscall_cr3) as u64
    }
    #[cfg(not(target_os = "none"))]
    0
}
