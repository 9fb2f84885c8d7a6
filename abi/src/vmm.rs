//! Requests a case makes to the VMM: the host-side half of cases that check what the host
//! does when the VMM, not the guest, acts (injects an NMI or an interrupt, reads or writes a
//! vCPU's MSRs, saves and restores its state, changes memslots, signals an eventfd ...).
//!
//! Protocol: the guest sends a [`MessageKind::Request`](crate::report::MessageKind::Request)
//! message with `line` = the [`Op`], `values[0]` = [`NO_REPLY`] and `values[1..4]` = its
//! arguments. The VMM performs it on the vCPU that sent it (or on the VM), writes the reply
//! into the same message's `values` in guest memory — `values[0]` = a [`Status`] (never
//! [`NO_REPLY`]), `values[1..4]` = the op's results — and resumes the vCPU. Every op's
//! arguments and results are documented on its variant.

/// What the guest asks the VMM to do. Arguments are `a0..a2` (`values[1..4]`), results
/// `r0..r2` (the reply's `values[1..4]`).
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `KVM_GET_MSRS` of MSR `a0` on this vCPU. `r0` = how many MSRs KVM returned (0 or 1),
    /// `r1` = the value.
    GetMsr = 1,
    /// `KVM_SET_MSRS` of MSR `a0` = `a1` on this vCPU. `r0` = how many MSRs KVM accepted
    /// (0 or 1).
    SetMsr = 2,
    /// `KVM_NMI` on this vCPU.
    Nmi = 3,
    /// Inject interrupt vector `a0` with `KVM_INTERRUPT` (userspace irqchip) as soon as the
    /// vCPU can take it: at once when `kvm_run` says it is ready, else after
    /// `request_interrupt_window` reports an open window.
    Interrupt = 4,
    /// `KVM_IRQ_LINE`: set in-kernel irqchip line (GSI) `a0` to level `a1` (0 or 1).
    IrqLine = 5,
    /// Complete the pending exit, then get and set back the whole vCPU state (registers,
    /// special registers, FPU, XSAVE, XCRs, debug registers, events, MP state, LAPIC with an
    /// irqchip, every MSR of `KVM_GET_MSR_INDEX_LIST` plus MSRs `a0` and `a1` when nonzero).
    /// `r0` = how many MSRs were carried, `r1` = MSR `a0`'s value as read, `r2` = MSR `a1`'s.
    RoundTrip = 6,
    /// Add memslot `a0` (1 to [`MAX_EXTRA_SLOT`]) at GPA `a1` of `a2 & SIZE_MASK` bytes of
    /// fresh memory, read-only when `a2 & READONLY`; the VMM fills it with
    /// [`slot_pattern`].
    AddMemslot = 7,
    /// Delete memslot `a0` (one [`Op::AddMemslot`] added).
    RemoveMemslot = 8,
    /// The host's `CLOCK_MONOTONIC` in nanoseconds: `r0`.
    HostNanos = 9,
    /// The CPUID entry the VMM configured (`KVM_SET_CPUID2`) for leaf `a0`, subleaf `a1` on
    /// this vCPU: `r0` = 1 when there is one, `r1` = EAX | EBX << 32, `r2` = ECX | EDX << 32.
    ConfiguredCpuid = 10,
    /// `KVM_GET_VCPU_EVENTS`: `r0` = NMI bits ([`nmi`]), `r1` = interrupt bits
    /// ([`irq`]), `r2` = exception bits ([`exc`]).
    VcpuEvents = 11,
    /// Register an ioeventfd on port `a0` (`a1 & MMIO` clear) or GPA `a0` (set) of `a1 & 0xff`
    /// bytes, with datamatch `a2` when `a1 & DATAMATCH`. `r0` = its id.
    RegisterIoEventfd = 12,
    /// Read (and reset) eventfd `a0`'s counter without blocking: `r0` = the count (0 when
    /// it was never signalled).
    EventfdCount = 13,
    /// Register an irqfd for GSI `a0` (needs the in-kernel irqchip). `r0` = its id.
    RegisterIrqfd = 14,
    /// Signal eventfd `a0` (an irqfd, say).
    SignalEventfd = 15,
    /// Register a coalesced MMIO zone at GPA `a0` of `a1` bytes (`a2` = 1: a coalesced PIO
    /// zone at port `a0`).
    RegisterCoalesced = 16,
    /// Drain this vCPU's coalesced MMIO ring: `r0` = entries drained, `r1` = the first
    /// entry's address, `r2` = the first 8 data bytes of the last entry.
    DrainCoalesced = 17,
    /// This vCPU's KVM vCPU id: `r0`.
    VcpuId = 18,
    /// Whether MSR `a0` is in `KVM_GET_MSR_INDEX_LIST` (what a VMM saves and restores):
    /// `r0` = 1 when it is.
    MsrListed = 19,
    /// What `kvm_run` said at the exit of this request: `r0` = `if_flag`, `r1` =
    /// `ready_for_interrupt_injection` (meaningful without an in-kernel irqchip).
    RunFlags = 20,
    /// Answered by the case's host device (`abi::case::HostCheck::Scratch`), not the VMM core:
    /// entry `a0` of its access log, oldest first. `r0` = flags (`abi::case::io::LOG_*`, size
    /// in bits 8..), `r1` = port or GPA, `r2` = the value (little endian). `BadArgs` past the
    /// end.
    DeviceLog = 21,
    /// Answered by the case's host device: `r0` = how many accesses its log holds.
    DeviceLogLen = 22,
    /// Answered by the case's host device: empties its access log.
    DeviceLogClear = 23,
    /// Entry `a0` of the CPUID table the VMM configured (`KVM_SET_CPUID2`), in its order:
    /// `r0` = leaf | subleaf << 32 | 1 << 63 when the subleaf is significant, `r1` = EAX |
    /// EBX << 32, `r2` = ECX | EDX << 32. `BadArgs` past the end.
    ConfiguredCpuidEntry = 24,
    /// A machine check on this vCPU: `KVM_X86_SETUP_MCE` (once; one bank, `MCG_CTL_P`) and
    /// `KVM_X86_SET_MCE` of an uncorrected error in bank 0 ([`MCE_STATUS`], MCG_STATUS
    /// [`MCE_MCG_STATUS`]). KVM injects #MC, or shuts the vCPU down when the guest's CR4.MCE
    /// is clear or MCG_STATUS.MCIP is still set from an earlier one.
    Mce = 25,
}

/// [`Op::Mce`]'s MCi_STATUS: VAL | UC | EN (SDM Vol. 3B 16.3.2.2).
pub const MCE_STATUS: u64 = (1 << 63) | (1 << 61) | (1 << 60);
/// [`Op::Mce`]'s MCG_STATUS: MCIP | EIPV | RIPV (SDM Vol. 3B 16.3.1.2).
pub const MCE_MCG_STATUS: u64 = 0b111;

impl Op {
    /// Every op, in number order.
    pub const ALL: [Op; 25] = [
        Op::GetMsr,
        Op::SetMsr,
        Op::Nmi,
        Op::Interrupt,
        Op::IrqLine,
        Op::RoundTrip,
        Op::AddMemslot,
        Op::RemoveMemslot,
        Op::HostNanos,
        Op::ConfiguredCpuid,
        Op::VcpuEvents,
        Op::RegisterIoEventfd,
        Op::EventfdCount,
        Op::RegisterIrqfd,
        Op::SignalEventfd,
        Op::RegisterCoalesced,
        Op::DrainCoalesced,
        Op::VcpuId,
        Op::MsrListed,
        Op::RunFlags,
        Op::DeviceLog,
        Op::DeviceLogLen,
        Op::DeviceLogClear,
        Op::ConfiguredCpuidEntry,
        Op::Mce,
    ];

    /// Decodes the raw op.
    pub fn from_raw(raw: u64) -> Option<Op> {
        Op::ALL.into_iter().find(|o| *o as u64 == raw)
    }
}

/// The reply's `values[0]`.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Done; the results are valid.
    Ok = 0,
    /// The op number is unknown.
    UnknownOp = 1,
    /// This VMM backend does not implement the op.
    Unsupported = 2,
    /// The ioctl failed: `values[1]` = errno.
    Failed = 3,
    /// The arguments are invalid (a bad slot number, an unknown eventfd id ...).
    BadArgs = 4,
    /// The case's host side does not allow requests (a benchmark handler, say).
    Refused = 5,
}

impl Status {
    /// Decodes the raw value.
    pub fn from_raw(raw: u64) -> Option<Status> {
        Some(match raw {
            0 => Status::Ok,
            1 => Status::UnknownOp,
            2 => Status::Unsupported,
            3 => Status::Failed,
            4 => Status::BadArgs,
            5 => Status::Refused,
            _ => return None,
        })
    }
}

/// What a guest writes into `values[0]` before sending, so that a VMM that ignores the
/// request (and so never writes a reply) is told apart from one that answered.
pub const NO_REPLY: u64 = u64::MAX;

/// Highest memslot number [`Op::AddMemslot`] takes (slot 0 is RAM).
pub const MAX_EXTRA_SLOT: u64 = 8;
/// [`Op::AddMemslot`] `a2`: size bits.
pub const SIZE_MASK: u64 = (1 << 40) - 1;
/// [`Op::AddMemslot`] `a2`: make the slot read-only (`KVM_MEM_READONLY`).
pub const READONLY: u64 = 1 << 63;
/// Where cases put extra memslots: above the MMIO window, below 4 GiB.
pub const EXTRA_SLOT_GPA: u64 = 0x4000_0000;
const _: () =
    assert!(EXTRA_SLOT_GPA >= crate::layout::MMIO_WINDOW + crate::layout::MMIO_WINDOW_SIZE);

/// The 8-byte value at `gpa` of memory that [`Op::AddMemslot`] added.
pub const fn slot_pattern(gpa: u64) -> u64 {
    gpa ^ 0x5107_5107_5107_5107
}

/// Largest memslot [`Op::AddMemslot`] takes (64 MiB).
pub const MAX_SLOT_SIZE: u64 = 64 << 20;

/// Whether an [`Op::AddMemslot`] request names a slot, GPA and size a VMM takes: slot 1 to
/// [`MAX_EXTRA_SLOT`], a page-aligned GPA, a non-zero size of whole pages up to
/// [`MAX_SLOT_SIZE`]. (Whether the slot is free and where it may go are the VMM's to check.)
pub const fn memslot_request_valid(slot: u64, gpa: u64, size: u64) -> bool {
    let page = crate::layout::PAGE_SIZE;
    slot != 0
        && slot <= MAX_EXTRA_SLOT
        && size != 0
        && size <= MAX_SLOT_SIZE
        && size.is_multiple_of(page)
        && gpa.is_multiple_of(page)
}

/// Fills `mem`, the memory of a slot at `gpa`, with [`slot_pattern`] (8-byte words; a
/// shorter tail is left as it is).
pub fn fill_slot_pattern(mem: &mut [u8], gpa: u64) {
    for (i, word) in mem.chunks_exact_mut(8).enumerate() {
        word.copy_from_slice(&slot_pattern(gpa + 8 * i as u64).to_le_bytes());
    }
}

/// [`Op::RegisterIoEventfd`] `a1`: the address is a GPA (MMIO), not a port.
pub const MMIO: u64 = 1 << 8;
/// [`Op::RegisterIoEventfd`] `a1`: match only writes of `a2`.
pub const DATAMATCH: u64 = 1 << 9;

/// [`Op::VcpuEvents`] `r0` bits.
pub mod nmi {
    /// An NMI is being injected.
    pub const INJECTED: u64 = 1 << 0;
    /// An NMI is pending.
    pub const PENDING: u64 = 1 << 1;
    /// NMIs are masked (the vCPU is in its NMI handler).
    pub const MASKED: u64 = 1 << 2;
}

/// [`Op::VcpuEvents`] `r1` bits (bits 8..16 = the vector).
pub mod irq {
    /// An interrupt is being injected.
    pub const INJECTED: u64 = 1 << 0;
    /// Interrupt shadow (after STI / MOV SS).
    pub const SHADOW: u64 = 1 << 1;
}

/// [`Op::VcpuEvents`] `r2` bits (bits 8..16 = the vector).
pub mod exc {
    /// An exception is being injected.
    pub const INJECTED: u64 = 1 << 0;
    /// An exception is pending.
    pub const PENDING: u64 = 1 << 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_and_statuses_round_trip() {
        for (i, op) in Op::ALL.into_iter().enumerate() {
            assert_eq!(op as u64, i as u64 + 1);
            assert_eq!(Op::from_raw(op as u64), Some(op));
        }
        assert_eq!(Op::from_raw(0), None);
        for s in 0..6 {
            assert_eq!(Status::from_raw(s).map(|x| x as u64), Some(s));
        }
        assert_eq!(Status::from_raw(NO_REPLY), None);
    }

    #[test]
    fn memslot_requests_and_their_pattern() {
        let page = crate::layout::PAGE_SIZE;
        assert!(memslot_request_valid(1, EXTRA_SLOT_GPA, page));
        assert!(memslot_request_valid(MAX_EXTRA_SLOT, 0, MAX_SLOT_SIZE));
        assert!(!memslot_request_valid(0, 0, page), "slot 0 is RAM");
        assert!(!memslot_request_valid(MAX_EXTRA_SLOT + 1, 0, page));
        assert!(!memslot_request_valid(1, 0, 0));
        assert!(!memslot_request_valid(1, 0, MAX_SLOT_SIZE + page));
        assert!(!memslot_request_valid(1, 0, page / 2));
        assert!(!memslot_request_valid(1, 8, page));
        let mut m = [0u8; 20];
        fill_slot_pattern(&mut m, 0x1000);
        assert_eq!(m[8..16], slot_pattern(0x1008).to_le_bytes());
        assert_eq!(m[16..], [0; 4], "the tail");
    }
}
