//! Values several case modules share: test addresses, MSR numbers and interrupt vectors.
//! (Vectors must have IDT gates in the guest library: below 48.)

use guest_lib::arch::instr;
use guest_lib::check_eq;
use guest_lib::paging::{Frame, PteFlags, TestVa, alloc_frame, map};

/// A VA in PML4 slot 0 (shared by the kernel and the user PML4) with no mapping yet.
pub const TEST_VA: TestVa = TestVa::must(0x4000_0000);
/// A canonical VA that is never mapped.
pub const UNMAPPED: TestVa = TestVa::must(0x7fff_0000_0000);
/// IA32_KERNEL_GS_BASE: an MSR with no effect on these guests (they never SWAPGS), for MSR
/// tests and benchmarks.
pub const MSR_SCRATCH: u32 = guest_lib::abi::x86::msr::KERNEL_GS_BASE;
/// Vector of the LAPIC timer interrupt.
pub const TIMER_VECTOR: u8 = 0x2e;
/// IPI vector vCPU 0 sends to vCPU 1.
pub const PING_VECTOR: u8 = 0x2c;
/// IPI vector vCPU 1 answers with.
pub const PONG_VECTOR: u8 = 0x2d;

/// An ABI case of every upstream generation (`abi::env::UPSTREAM_ENVS`): what they share
/// (the hypercalls and their effects), and the rules the upstream ABI puts in place of x86
/// ring-0 rules (`abi.upstream.ring.*`, next to the case of the x86 rule each replaces, which
/// runs in `abi::env::X86_RING0_ENVS`).
pub const fn upstream(name: &'static str, summary: &'static str) -> guest_lib::case::Spec {
    guest_lib::case::Spec::new(name, guest_lib::abi::env::Area::Abi, summary)
        .envs(guest_lib::abi::env::UPSTREAM_ENVS)
}

/// A user-mode probe that returns its argument plus one (a user run that must simply work).
pub extern "C" fn u_plus_one(x: u64) -> u64 {
    x + 1
}

/// Whether `va` lies in the guest image (where the library's own tables are).
pub fn in_image(va: u64) -> bool {
    (guest_lib::abi::layout::IMAGE_BASE..guest_lib::abi::layout::IMAGE_END).contains(&va)
}

/// Two frames holding 0xaaaa and 0xbbbb, with [`TEST_VA`] mapped (RW, US) to the first and
/// that mapping checked; for cases that remap [`TEST_VA`] and check a flush.
pub fn remap_fixture() -> (Frame, Frame) {
    let (a, b) = (alloc_frame(), alloc_frame());
    a.write_u64(0, 0xaaaa);
    b.write_u64(0, 0xbbbb);
    map(TEST_VA, &a, PteFlags::RW | PteFlags::US);
    instr::invlpg(TEST_VA.get());
    check_eq!(
        instr::read_u64_safe(TEST_VA.get()),
        Ok(0xaaaa),
        "first mapping"
    );
    (a, b)
}

/// Spins for `ms` milliseconds (by the TSC).
pub fn spin_ms(ms: u64) {
    let t0 = guest_lib::arch::instr::rdtsc();
    while guest_lib::arch::instr::rdtsc() - t0 < ms * guest_lib::rt::cycles_per_ms() {
        core::hint::spin_loop();
    }
}
