//! Asking the VMM to act on this vCPU or VM (`abi::vmm`): inject an NMI or an interrupt,
//! read or write an MSR from the host side, save and restore the whole vCPU, add or remove
//! memslots, signal eventfds. Cases of the VMM-facing ABI use these to check what the host
//! does when the VMM, not the guest, touches the guest's state.
//!
//! ```no_run
//! use guest_lib::vmm;
//! // What the VMM reads from MSR 0x10 (the TSC) of this vCPU.
//! let tsc = vmm::get_msr(0x10);
//! ```

pub use abi::vmm::{Op, Status};

/// Why a request did not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmmError {
    /// The VMM answered with this status and these values (`Failed`: the errno first).
    Status(Status, [u64; 3]),
    /// The VMM did not answer at all (a host that ignores requests).
    NoReply,
    /// The reply's status is not one `abi::vmm::Status` knows.
    Garbled(u64),
}

/// Sends request `op` with `args`; the results `r0..r2` on success.
pub fn request(op: Op, args: [u64; 3]) -> Result<[u64; 3], VmmError> {
    let v = crate::report::request(op as u32, args);
    if v[0] == abi::vmm::NO_REPLY {
        return Err(VmmError::NoReply);
    }
    match Status::from_raw(v[0]) {
        Some(Status::Ok) => Ok([v[1], v[2], v[3]]),
        Some(s) => Err(VmmError::Status(s, [v[1], v[2], v[3]])),
        None => Err(VmmError::Garbled(v[0])),
    }
}

/// Like [`request`], but a failure ends the case: SKIP when this VMM does not implement the
/// op (the case cannot run here), ERROR otherwise (the VMM is part of the test rig).
pub fn must(op: Op, args: [u64; 3]) -> [u64; 3] {
    match request(op, args) {
        Ok(r) => r,
        Err(VmmError::Status(Status::Unsupported, _)) => {
            crate::skip!("this VMM does not implement the {:?} request", op)
        }
        Err(e) => crate::error!("VMM request {:?}{:x?} failed: {:?}", op, args, e),
    }
}

/// What the VMM reads from MSR `index` with `KVM_GET_MSRS` (`None`: KVM returned nothing).
pub fn get_msr(index: u32) -> Option<u64> {
    let r = must(Op::GetMsr, [u64::from(index), 0, 0]);
    (r[0] == 1).then_some(r[1])
}

/// Whether `KVM_SET_MSRS` of MSR `index` = `value` was accepted.
pub fn set_msr(index: u32, value: u64) -> bool {
    must(Op::SetMsr, [u64::from(index), value, 0])[0] == 1
}

/// The host's monotonic clock in nanoseconds.
pub fn host_nanos() -> u64 {
    must(Op::HostNanos, [0; 3])[0]
}

/// The CPUID entry the VMM configured for `leaf`/`subleaf` as `[eax, ebx, ecx, edx]`
/// (`None`: it configured none).
pub fn configured_cpuid(leaf: u32, subleaf: u32) -> Option<[u32; 4]> {
    let r = must(
        Op::ConfiguredCpuid,
        [u64::from(leaf), u64::from(subleaf), 0],
    );
    (r[0] == 1).then_some([
        r[1] as u32,
        (r[1] >> 32) as u32,
        r[2] as u32,
        (r[2] >> 32) as u32,
    ])
}

/// One access the case's scratch device logged (`abi::case::HostCheck::Scratch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceAccess {
    /// A write (else a read).
    pub write: bool,
    /// MMIO (else port I/O).
    pub mmio: bool,
    /// Bytes.
    pub size: u8,
    /// Port or GPA.
    pub addr: u64,
    /// The value (little endian).
    pub value: u64,
}

/// How many accesses the scratch device logged.
pub fn device_log_len() -> u64 {
    must(Op::DeviceLogLen, [0; 3])[0]
}

/// Entry `i` of the scratch device's log, oldest first.
pub fn device_log(i: u64) -> Option<DeviceAccess> {
    use abi::case::io::{LOG_MMIO, LOG_SIZE_SHIFT, LOG_WRITE};
    let r = request(Op::DeviceLog, [i, 0, 0]).ok()?;
    Some(DeviceAccess {
        write: r[0] & LOG_WRITE != 0,
        mmio: r[0] & LOG_MMIO != 0,
        size: (r[0] >> LOG_SIZE_SHIFT) as u8,
        addr: r[1],
        value: r[2],
    })
}

/// Empties the scratch device's log.
pub fn device_log_clear() {
    must(Op::DeviceLogClear, [0; 3]);
}
