//! Opt-in cases (`FLAG_OPT_IN`): they run only with `--opt-in` and a `--filter` naming them,
//! never in a default or full run, because on a nested host they can reach past the host
//! under test (VMCALL/VMMCALL that the PVM host does not handle go to the outer hypervisor).

use guest_lib::abi::case::FLAG_OPT_IN;
use guest_lib::abi::env::Area;
use guest_lib::arch::optin;
use guest_lib::case::Spec;
use guest_lib::exception::{Exception, vector};
use guest_lib::{case, check, log};

/// KVM's answer to a hypercall number it does not know (-KVM_ENOSYS).
const KVM_ENOSYS: u64 = (-1000i64) as u64;

/// VMCALL from the guest kernel is the host's to answer: KVM's hypercall ABI (-KVM_ENOSYS for
/// an unknown number) or #UD in the guest; it must come back to the guest either way.
fn vmcall_answered() {
    let r = optin::vmcall_safe(0xdead);
    log!("VMCALL 0xdead gave {:x?}", r);
    check!(
        r == Ok(KVM_ENOSYS) || r == Err(Exception::new(vector::UD)),
        "VMCALL must return -KVM_ENOSYS or raise #UD, got {:x?}",
        r
    );
}
case!(
    vmcall_answered,
    Spec::new(
        "isolation.optin.vmcall",
        Area::Isolation,
        "opt-in: VMCALL from the guest kernel is answered by the host (-KVM_ENOSYS) or #UD"
    )
    .flags(FLAG_OPT_IN)
    .reqs("PVM-ISO-6")
);
