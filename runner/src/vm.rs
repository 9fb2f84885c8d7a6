//! The backend seam: what a VM that runs a test guest looks like to the rest of the suite,
//! whatever executes it (KVM here; a software model of a PVM host later).
//!
//! - [`Backend`] creates [`Vm`]s; [`Vm`] has guest RAM ([`GuestRam`]), takes a
//!   backend-neutral [`InitialState`], runs with an [`ExitHandler`] under [`RunLimits`]
//!   (timeout and [`Cancel`]) and dumps registers;
//! - [`ExitHandler`] sees the exits that matter to a case and answers with an [`Action`];
//! - [`RunEnd`] says how a run ended.
//!
//! `crate::boot` is the one boot path on top of this; the suite, the benchmarks and the
//! examples all use it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use abi::report::Message;

use crate::Result;

/// What the exit handler wants after an exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Resume the vCPU.
    Continue,
    /// End the run normally (e.g. the guest reported its final status).
    Stop,
    /// End the run: the exit was not one the case allows (reason).
    Unexpected(String),
    /// Perform this VMM request (`abi::vmm`) on the vCPU that made it, write the reply into
    /// its message and resume.
    Serve(VmmRequest),
    /// Write these reply values into the request's message (without performing it) and
    /// resume: the handler answered the request itself (refused it, say).
    Reply([u64; 4]),
}

/// A request the guest made to the VMM (`abi::vmm`): the raw op and its three arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmmRequest {
    /// `abi::vmm::Op` as raw value (the backend answers `UnknownOp` for one it does not know).
    pub op: u32,
    /// The arguments `a0..a2`.
    pub args: [u64; 3],
}

/// The exits a case sees. The report channel is decoded before it reaches
/// [`ExitHandler::report`]. Every other exit is unexpected unless a handler says otherwise,
/// which is what the provided methods do.
pub trait ExitHandler {
    /// A message on the report channel.
    fn report(&mut self, msg: &Message) -> Action;
    /// `OUT` to a port other than the report port.
    fn io_out(&mut self, port: u16, data: &[u8]) -> Action {
        Action::Unexpected(format!(
            "OUT to port {port:#x} of {} bytes ({data:x?})",
            data.len()
        ))
    }
    /// `IN`; fill `data`.
    fn io_in(&mut self, port: u16, data: &mut [u8]) -> Action {
        Action::Unexpected(format!("IN from port {port:#x} of {} bytes", data.len()))
    }
    /// MMIO write.
    fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> Action {
        Action::Unexpected(format!("MMIO write at {gpa:#x} of {} bytes", data.len()))
    }
    /// MMIO read; fill `data`.
    fn mmio_read(&mut self, gpa: u64, data: &mut [u8]) -> Action {
        Action::Unexpected(format!("MMIO read at {gpa:#x} of {} bytes", data.len()))
    }
    /// `KVM_EXIT_HLT` (a halt the backend did not handle itself).
    fn hlt(&mut self) -> Action {
        Action::Unexpected("HLT exit".into())
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// The handler stopped the run.
    Stopped,
    /// The timeout expired (the vCPU was interrupted).
    Timeout(Duration),
    /// The run was cancelled from outside ([`Cancel::cancel`]).
    Cancelled,
    /// A vCPU that was not halted kept every register unchanged for this long (a livelock
    /// inside `KVM_RUN`, say), at this RIP.
    NoProgress {
        /// How long nothing changed.
        after: Duration,
        /// The RIP it stayed at.
        rip: u64,
    },
    /// Triple fault (`KVM_EXIT_SHUTDOWN`).
    Shutdown,
    /// `KVM_EXIT_INTERNAL_ERROR` with its suberror.
    InternalError(u32),
    /// `KVM_EXIT_FAIL_ENTRY` with the hardware reason.
    FailEntry(u64),
    /// An exit the case does not allow, or an unhandled exit reason.
    Unexpected(String),
}

/// A registered "kick this run out of the guest" callback.
type Kicker = Arc<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct CancelState {
    cancelled: AtomicBool,
    kickers: Mutex<Vec<(u64, Kicker)>>,
    next_id: AtomicU64,
}

/// Cancels runs from another thread (a signal handler thread, say): once [`Cancel::cancel`]
/// is called, every run using this token ends as [`RunEnd::Cancelled`] as soon as its vCPUs
/// are kicked out of the guest, and runs started later end at once.
#[derive(Clone, Default)]
pub struct Cancel(Arc<CancelState>);

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cancel({})", self.is_cancelled())
    }
}

/// Deregisters a kicker when dropped (see [`Cancel::on_cancel`]).
#[must_use = "the kicker is deregistered when the guard is dropped"]
pub struct CancelGuard {
    state: Arc<CancelState>,
    id: u64,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Ok(mut k) = self.state.kickers.lock() {
            k.retain(|(id, _)| *id != self.id);
        }
    }
}

impl Cancel {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels: sets the flag and calls every registered kicker.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        if let Ok(k) = self.0.kickers.lock() {
            for (_, kick) in k.iter() {
                kick();
            }
        }
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// Registers `kick`, called (under a lock, so never after the guard is dropped) when the
    /// token is cancelled. A backend registers one per vCPU thread for the length of a run,
    /// then checks [`Cancel::is_cancelled`] before entering the guest.
    pub fn on_cancel(&self, kick: impl Fn() + Send + Sync + 'static) -> CancelGuard {
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut k) = self.0.kickers.lock() {
            k.push((id, Arc::new(kick)));
        }
        CancelGuard {
            state: Arc::clone(&self.0),
            id,
        }
    }
}

/// Bounds of one run.
#[derive(Clone, Debug)]
pub struct RunLimits {
    /// The run ends as [`RunEnd::Timeout`] after this long.
    pub timeout: Duration,
    /// The run ends as [`RunEnd::Cancelled`] when this is cancelled.
    pub cancel: Cancel,
    /// When set, the run ends as [`RunEnd::NoProgress`] once a vCPU that is not halted keeps
    /// every register unchanged this long (sampled every [`PROGRESS_SAMPLE`]): a host that
    /// livelocks inside `KVM_RUN` then costs this, not the whole timeout. Benchmarks leave it
    /// off (the samples interrupt the guest).
    pub no_progress: Option<Duration>,
}

/// How often a run with [`RunLimits::no_progress`] samples its vCPUs' registers.
pub const PROGRESS_SAMPLE: Duration = Duration::from_millis(25);

/// The no-progress bound conformance runs use.
pub const NO_PROGRESS: Duration = Duration::from_millis(175);

impl RunLimits {
    /// A timeout and a fresh (never cancelled) token, without progress sampling.
    pub fn timeout(timeout: Duration) -> Self {
        Self {
            timeout,
            cancel: Cancel::new(),
            no_progress: None,
        }
    }
}

/// How to build a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmOptions {
    /// Bytes of RAM at GPA 0.
    pub ram: u64,
    /// Create the in-kernel irqchip (LAPIC, IOAPIC, PIC).
    pub irqchip: bool,
    /// Number of vCPUs (1 to `abi::layout::MAX_VCPUS`).
    pub vcpus: u32,
    /// Give the vCPUs the highest ids the host allows (`KVM_CAP_MAX_VCPU_ID` - `vcpus` ...)
    /// instead of 0, 1, ...
    pub high_vcpu_ids: bool,
}

impl Default for VmOptions {
    fn default() -> Self {
        Self {
            ram: abi::layout::RAM_SIZE,
            irqchip: false,
            vcpus: 1,
            high_vcpu_ids: false,
        }
    }
}

/// Guest-physical memory as the host sees it.
pub trait GuestRam: Sync {
    /// Size in bytes (RAM is `0..size`).
    fn size(&self) -> u64;
    /// Copies `data` to guest-physical `gpa`.
    fn write(&self, gpa: u64, data: &[u8]) -> Result<()>;
    /// Copies from guest-physical `gpa` into `out`.
    fn read(&self, gpa: u64, out: &mut [u8]) -> Result<()>;
}

impl dyn GuestRam + '_ {
    /// Writes a little-endian u64.
    pub fn write_u64(&self, gpa: u64, v: u64) -> Result<()> {
        self.write(gpa, &v.to_le_bytes())
    }

    /// Reads a little-endian u64.
    pub fn read_u64(&self, gpa: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

/// A flat 64-bit segment (base 0, limit 4 GiB, DPL 0): all the initial state needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlatSegment {
    /// Selector.
    pub selector: u16,
    /// 64-bit code (else data).
    pub code: bool,
}

/// The state one vCPU starts in, in backend-neutral form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuState {
    /// RIP.
    pub rip: u64,
    /// RSP.
    pub rsp: u64,
    /// RDI.
    pub rdi: u64,
    /// RSI.
    pub rsi: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
    /// CS.
    pub cs: FlatSegment,
    /// DS, ES, FS, GS and SS.
    pub data: FlatSegment,
    /// Runnable at once (with an in-kernel irqchip, a vCPU whose id is not 0 would otherwise
    /// wait for INIT/SIPI).
    pub runnable: bool,
}

/// The state every vCPU of a VM starts in (index = vCPU).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialState {
    /// One entry per vCPU.
    pub vcpus: Vec<VcpuState>,
}

/// A VM a guest image can be booted into and run (see the module documentation).
pub trait Vm: Send {
    /// Guest RAM.
    fn memory(&self) -> &dyn GuestRam;
    /// Sets the state every vCPU starts in.
    fn set_initial_state(&mut self, state: &InitialState) -> Result<()>;
    /// The guest TSC frequency in kHz.
    fn tsc_khz(&self) -> Result<u32>;
    /// Runs the vCPUs until the handler stops the run, a vCPU crashes, the timeout expires or
    /// the run is cancelled.
    fn run(&mut self, handler: &mut (dyn ExitHandler + Send), limits: &RunLimits)
    -> Result<RunEnd>;
    /// A one-line dump of every vCPU's registers, for CRASH details.
    fn register_dump(&self) -> String;
    /// How the guest must send its reports ([`abi::report::Channel::Exit`] unless the VMM
    /// cannot read guest memory at a port exit).
    fn report_channel(&self) -> abi::report::Channel {
        abi::report::Channel::Exit
    }
}

/// Something that creates [`Vm`]s.
pub trait Backend: Send + Sync {
    /// Short name for reports (`kvm`, ...).
    fn name(&self) -> &'static str;
    /// A fresh VM with zeroed RAM.
    fn create_vm(&self, opts: &VmOptions) -> Result<Box<dyn Vm>>;
}

/// Decodes a write of `data` to the report port (`abi::report::REPORT_PORT`: the 4-byte GPA
/// of a message) and hands the message to the handler; returns its action and the message's
/// GPA (where a request's reply goes), or how the run ends when the write is malformed. Every
/// backend decodes the channel with this.
pub fn report_exit(
    mem: &dyn GuestRam,
    handler: &mut (dyn ExitHandler + Send),
    data: &[u8],
) -> std::result::Result<(Action, u64), RunEnd> {
    let gpa = match <[u8; 4]>::try_from(data) {
        Ok(b) => u64::from(u32::from_le_bytes(b)),
        Err(_) => {
            return Err(RunEnd::Unexpected(format!(
                "report port written with {} bytes (want a 4-byte GPA)",
                data.len()
            )));
        }
    };
    let mut raw = [0u8; abi::report::MESSAGE_SIZE];
    let action = match mem.read(gpa, &mut raw) {
        Ok(()) => {
            let msg = Message::from_bytes(&raw);
            if msg.magic == abi::report::MESSAGE_MAGIC {
                handler.report(&msg)
            } else {
                Action::Unexpected(format!("report message at {gpa:#x} has bad magic"))
            }
        }
        Err(_) => Action::Unexpected(format!("report message at {gpa:#x} outside RAM")),
    };
    Ok((action, gpa))
}

/// Writes the reply `values` of request `req` into the message at `at` (the GPA
/// [`report_exit`] returned).
pub fn write_reply(
    mem: &dyn GuestRam,
    at: Option<u64>,
    req: VmmRequest,
    values: [u64; 4],
) -> Result<()> {
    let Some(gpa) = at else {
        return Err(crate::RunnerError::Setup(format!(
            "a reply to VMM request {req:?} outside a report exit"
        )));
    };
    let mut bytes = [0u8; 32];
    for (chunk, v) in bytes.chunks_exact_mut(8).zip(values) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    mem.write(gpa + abi::report::VALUES_OFFSET as u64, &bytes)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[test]
    fn cancel_kicks_registered_runs_and_never_a_deregistered_one() {
        let c = Cancel::new();
        let kicks = Arc::new(AtomicUsize::new(0));
        let k = Arc::clone(&kicks);
        let guard = c.on_cancel(move || {
            k.fetch_add(1, Ordering::SeqCst);
        });
        let k2 = Arc::clone(&kicks);
        drop(c.on_cancel(move || {
            k2.fetch_add(100, Ordering::SeqCst);
        }));
        assert!(!c.is_cancelled());
        c.clone().cancel();
        assert!(c.is_cancelled());
        assert_eq!(kicks.load(Ordering::SeqCst), 1);
        drop(guard);
    }

    struct OnlyReports;
    impl ExitHandler for OnlyReports {
        fn report(&mut self, _: &Message) -> Action {
            Action::Stop
        }
    }

    #[test]
    fn exits_a_handler_does_not_claim_are_unexpected() {
        let mut h = OnlyReports;
        assert!(matches!(h.io_out(0x80, &[1]), Action::Unexpected(s) if s.contains("0x80")));
        assert!(matches!(h.hlt(), Action::Unexpected(_)));
        let mut b = [0u8; 4];
        assert!(matches!(h.mmio_read(0x1000, &mut b), Action::Unexpected(_)));
    }
}
