//! Values several case modules share: test addresses, MSR numbers and interrupt vectors.
//! (Vectors must have IDT gates in the guest library: below 48.)

/// A VA in PML4 slot 0 (shared by the kernel and the user PML4) with no mapping yet.
pub const TEST_VA: u64 = 0x4000_0000;
/// A canonical VA that is never mapped.
pub const UNMAPPED: u64 = 0x7fff_0000_0000;
/// IA32_KERNEL_GS_BASE: an MSR with no effect on these guests, for MSR tests and benchmarks.
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// Vector of the LAPIC timer interrupt.
pub const TIMER_VECTOR: u8 = 0x2e;
/// IPI vector vCPU 0 sends to vCPU 1.
pub const PING_VECTOR: u8 = 0x2c;
/// IPI vector vCPU 1 answers with.
pub const PONG_VECTOR: u8 = 0x2d;
