//! Instructions that only opt-in cases may execute (`abi::case::FLAG_OPT_IN`): on a nested
//! host they can reach past the host under test (the outer hypervisor handles VMCALL/VMMCALL
//! when the inner one does not), so no default case uses them. The tidy check allows the
//! mnemonics only here and in `conformance/guest/src/optin.rs`.

use super::instr::with_fixup;
use crate::exception::Exception;

/// `vmcall` with RAX = `nr` (and RBX, RCX, RDX, RSI zero), with a fixup; returns RAX.
pub fn vmcall_safe(nr: u64) -> Result<u64, Exception> {
    let mut rax = nr;
    with_fixup!("vmcall", inout("rax") rax, in("rcx") 0u64, in("rdx") 0u64, in("rsi") 0u64)?;
    Ok(rax)
}
