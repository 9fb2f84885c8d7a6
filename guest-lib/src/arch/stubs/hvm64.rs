//! hvm64: back to CPL3 the architectural way, `iretq` from an event and `sysretq` from a
//! SYSCALL.

use super::UserReturns;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    r#"
    .text
    .global pvmc_hvm64_iret_to_user
pvmc_hvm64_iret_to_user:
    iretq

    # RSP at RIP, CS, RFLAGS, RSP, SS built by the SYSCALL entry.
    .global pvmc_hvm64_sysret_to_user
pvmc_hvm64_sysret_to_user:
    popq %rcx
    addq $8, %rsp
    popq %r11
    popq %rsp
    sysretq
"#,
    options(att_syntax)
);

#[cfg(target_os = "none")]
unsafe extern "C" {
    safe static pvmc_hvm64_iret_to_user: u8;
    safe static pvmc_hvm64_sysret_to_user: u8;
}

/// The hvm64 return paths.
pub fn user_returns() -> UserReturns {
    #[cfg(target_os = "none")]
    {
        UserReturns {
            from_event: core::ptr::addr_of!(pvmc_hvm64_iret_to_user) as u64,
            from_syscall: core::ptr::addr_of!(pvmc_hvm64_sysret_to_user) as u64,
        }
    }
    #[cfg(not(target_os = "none"))]
    UserReturns {
        from_event: 0,
        from_syscall: 0,
    }
}
