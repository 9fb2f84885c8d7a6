//! The guest's only `unsafe` code: x86 instructions, descriptor tables, the assembly entry
//! stubs of each environment, the exception-fixup table, SMP-safe global cells and raw access
//! to guest-physical memory.
//!
//! Everything here exports safe functions (or `unsafe fn`s with a `# Safety` section when
//! the caller must uphold something, e.g. loading CR0). The rest of the library and every
//! case are written in safe Rust on top.
//!
//! - [`cell`]: [`PerCpu`], [`BootCell`], [`AtomicHook`]: global state that is sound with
//!   several vCPUs.
//! - [`instr`]: single instructions and their `_safe` forms.
//! - [`optin`]: instructions only opt-in cases may execute (VMCALL).
//! - [`insn`]: instruction-class probes (string ops, atomics, SSE, XSAVE ...) for the CPU
//!   cases, with their architectural results.
//! - `tables`: GDT, TSS and IDT.
//! - `stubs`: the assembly entry points of each environment.
//! - `entry`: `_start`, the Rust functions the stubs call, user-mode entry and exit.
//! - `mem`: raw guest-physical access for the library's own page tables and frames.

pub mod cell;
pub mod insn;
pub mod instr;
pub(crate) mod mem;
pub mod optin;
pub(crate) mod stubs;
pub(crate) mod tables;

#[cfg(target_os = "none")]
mod entry;

pub use cell::{AtomicHook, BootCell, FnPtr, PerCpu, aps_released, cpu_index, release_aps};
pub use tables::{StoredDescriptorTables, StoredGdt};

/// Declares a case: `case!(function, spec)`; see `crate::case`. The descriptor goes into the
/// image's `pvmc_cases` section, where the host reads it.
#[macro_export]
macro_rules! case {
    ($f:ident, $spec:expr $(,)?) => {
        const _: () = {
            #[used]
            // SAFETY: `pvmc_cases` is a data section that holds only `CaseDesc<fn()>` values
            // (the linker script keeps it apart from code and other data); nothing executes it
            // and the host only parses it.
            #[unsafe(link_section = "pvmc_cases")]
            static DESC: $crate::abi::case::CaseDesc<fn()> = $crate::case::describe($spec, $f);
        };
    };
}

/// Declares a table of cases served by one function: `case_table!(function, spec_of, [(name,
/// param, summary), ...])`, where `spec_of(name, summary)` gives each entry's `Spec` (area,
/// environments, requirements ...) and the function reads its entry's `param` with
/// `guest_lib::rt::case_param`. Each entry is a case of its own: its own name, instances and
/// outcome.
///
/// Rows may name their own requirement ids as a fourth element, `(name, param, summary,
/// reqs)`, which replace the ones `spec_of` gives.
#[macro_export]
macro_rules! case_table {
    ($f:ident, $spec_of:expr, [$(($name:expr, $param:expr, $summary:expr)),* $(,)?]) => {
        $( $crate::case!($f, ($spec_of)($name, $summary).param($param as u64)); )*
    };
    ($f:ident, $spec_of:expr, [$(($name:expr, $param:expr, $summary:expr, $reqs:expr)),* $(,)?]) => {
        $( $crate::case!($f, ($spec_of)($name, $summary).param($param as u64).reqs($reqs)); )*
    };
}

/// Calls the case function at guest VA `entry` (taken from the case descriptor the host read
/// out of this very image).
pub fn call_case(entry: u64) {
    let valid = (abi::layout::IMAGE_BASE..abi::layout::IMAGE_END).contains(&entry);
    if !valid {
        crate::report::finish(
            abi::report::GuestStatus::Error,
            "case entry outside the image",
        );
    }
    // SAFETY: the host took `entry` from a `CaseDesc<fn()>` of this image and checked that it
    // lies in an executable segment (the range is re-checked above); `case!` only accepts
    // `fn()` items there.
    let f: fn() = unsafe { core::mem::transmute::<usize, fn()>(entry as usize) };
    f();
}

/// Where a RIP lies relative to the `_safe` primitives' instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SafeSite {
    /// At a `_safe` primitive's instruction (where a fault reports RIP).
    Instruction,
    /// Just after it (where a trap, INT3 say, reports RIP).
    After,
}

/// Whether `rip` is at (or just after) the instruction of a `_safe` primitive: lets a case
/// check that an exception reported the right RIP for a fault or a trap.
pub fn safe_site(rip: u64) -> Option<SafeSite> {
    match fixup_for(rip)? {
        resume if resume == rip => Some(SafeSite::After),
        _ => Some(SafeSite::Instruction),
    }
}

/// Looks up a faulting RIP in the exception-fixup table.
pub fn fixup_for(rip: u64) -> Option<u64> {
    #[cfg(target_os = "none")]
    {
        entry::fixup_for(rip)
    }
    #[cfg(not(target_os = "none"))]
    {
        let _ = rip;
        None
    }
}

/// Runs `entry(arg)` at CPL3 on `user_rsp` and returns once [`user_resume`] is called: builds
/// an interrupt frame for the user trampoline and leaves through the environment's
/// return-to-user stub (installed by its `init_bsp`).
pub fn user_enter(arg: u64, entry: u64, user_rsp: u64) {
    #[cfg(target_os = "none")]
    entry::user_enter(arg, entry, user_rsp);
    #[cfg(not(target_os = "none"))]
    {
        let _ = (arg, entry, user_rsp);
        panic!("user mode exists only in the guest");
    }
}

/// Address of the `ud2` that ends a user run after the user function returned.
pub fn user_exit_rip() -> u64 {
    #[cfg(target_os = "none")]
    {
        entry::user_exit_rip()
    }
    #[cfg(not(target_os = "none"))]
    {
        0
    }
}

/// Resumes the supervisor after user mode; see [`crate::user`].
pub fn user_resume() -> ! {
    #[cfg(target_os = "none")]
    {
        entry::user_resume()
    }
    #[cfg(not(target_os = "none"))]
    panic!("user mode exists only in the guest")
}

/// Addresses of the compatibility-mode entry stubs and probes (see `crate::user::Compat32`):
/// (enter by far return, ud, bp_then_ud, after_bp, read, read_insn, enter through the
/// kernel).
pub fn compat32() -> [u64; 7] {
    #[cfg(target_os = "none")]
    {
        entry::compat32()
    }
    #[cfg(not(target_os = "none"))]
    {
        [0; 7]
    }
}

/// Address of the GPR probe (a CPL3 routine, see [`crate::user::gpr_pattern`]) and of the
/// `ud2` in it.
pub fn gpr_probe() -> (u64, u64) {
    #[cfg(target_os = "none")]
    {
        entry::gpr_probe()
    }
    #[cfg(not(target_os = "none"))]
    {
        (0, 0)
    }
}
