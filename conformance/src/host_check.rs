//! The host side of a case: [`CaseHandler`] decodes the guest's reports, and a [`Device`] per
//! [`HostCheck`] implements what the host must answer and verify while the case runs.
//! [`device_for`] is the one exhaustive `match` over `HostCheck` (no catch-all arm), so a new
//! variant does not compile until it has a device. Any exit the case's device does not claim
//! (an OUT to another port, MMIO elsewhere, a HLT out of turn) ends the run as unexpected,
//! which the suite classifies as CRASH.

use abi::case::{HostCheck, io};
use abi::layout::MMIO_WINDOW;
use abi::report::{FLAG_HAS_VALUES, GuestStatus, Message, MessageKind};
use runner::vm::{Action, ExitHandler};

/// Whether a device took an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// The device handled it; the vCPU resumes.
    Yes,
    /// Not an exit this device allows.
    NotMine,
}

/// The host side of one [`HostCheck`]: the exits it answers (everything else is unexpected,
/// which is what the provided methods say) and what it verifies at the end.
pub trait Device: Send + std::fmt::Debug {
    /// `OUT` to a port other than the report port.
    fn io_out(&mut self, _port: u16, _data: &[u8]) -> Handled {
        Handled::NotMine
    }
    /// `IN`; fill `data`.
    fn io_in(&mut self, _port: u16, _data: &mut [u8]) -> Handled {
        Handled::NotMine
    }
    /// MMIO write.
    fn mmio_write(&mut self, _gpa: u64, _data: &[u8]) -> Handled {
        Handled::NotMine
    }
    /// MMIO read; fill `data`.
    fn mmio_read(&mut self, _gpa: u64, _data: &mut [u8]) -> Handled {
        Handled::NotMine
    }
    /// `KVM_EXIT_HLT`.
    fn hlt(&mut self) -> Handled {
        Handled::NotMine
    }
    /// A VMM request the device answers itself (`abi::vmm::Op::DeviceLog`, say): the reply's
    /// four values, or `None` to pass it on to the VMM.
    fn request(&mut self, _op: u32, _args: [u64; 3]) -> Option<[u64; 4]> {
        None
    }
    /// A guest checkpoint; `Err` describes why it is out of place.
    fn checkpoint(&mut self, n: u64) -> Result<(), String> {
        Err(format!(
            "checkpoint {n}, but this case's host check takes none"
        ))
    }
    /// Called on the guest's final status: pushes what is wrong to `failures` and returns how
    /// many checks the host made.
    fn finish(&mut self, failures: &mut Vec<String>) -> u32;
}

/// Starts the second VM of a [`HostCheck::Sibling`] case on a thread of its own; the thread
/// yields that VM's outcome and detail.
pub type SiblingLauncher = std::sync::Arc<
    dyn Fn() -> std::thread::JoinHandle<(crate::outcome::Outcome, String)> + Send + Sync,
>;

/// The device of `check` (the exhaustive `match`); `sibling` starts the second VM of a
/// [`HostCheck::Sibling`] case (without it, that case's checkpoints fail).
pub fn device_for(check: HostCheck, sibling: Option<SiblingLauncher>) -> Box<dyn Device> {
    match check {
        HostCheck::Sibling => Box::new(Sibling {
            launcher: sibling,
            running: None,
            result: None,
        }),
        HostCheck::None => Box::new(Nothing),
        HostCheck::PortIo => Box::new(PortIoEcho::default()),
        HostCheck::Mmio => Box::new(MmioDevice::default()),
        HostCheck::HltExit => Box::new(HltCounter::default()),
        HostCheck::Bench | HostCheck::ExitLoop => Box::new(BenchSink),
        HostCheck::Lifecycle => Box::new(Lifecycle),
        HostCheck::Scratch => Box::new(Scratch::new()),
        HostCheck::Shutdown => Box::new(ExpectShutdown),
    }
}

/// [`HostCheck::Shutdown`]: only checkpoint 0 (the shutdown itself is judged by
/// `crate::exec::classify`, from [`CaseHandler::last_checkpoint`]).
#[derive(Debug)]
struct ExpectShutdown;

impl Device for ExpectShutdown {
    fn checkpoint(&mut self, n: u64) -> Result<(), String> {
        match n {
            0 => Ok(()),
            n => Err(format!("checkpoint {n}: this host check takes only 0")),
        }
    }

    fn finish(&mut self, _: &mut Vec<String>) -> u32 {
        0
    }
}

/// [`HostCheck::Sibling`]: starts the second VM at checkpoint 0, waits for it at checkpoint 1.
struct Sibling {
    launcher: Option<SiblingLauncher>,
    running: Option<std::thread::JoinHandle<(crate::outcome::Outcome, String)>>,
    result: Option<(crate::outcome::Outcome, String)>,
}

impl std::fmt::Debug for Sibling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sibling(result {:?})", self.result)
    }
}

impl Device for Sibling {
    fn checkpoint(&mut self, n: u64) -> Result<(), String> {
        match n {
            0 => match (&self.launcher, &self.running) {
                (Some(l), None) => {
                    self.running = Some(l());
                    Ok(())
                }
                (None, _) => Err("checkpoint 0: no second VM can be started here".into()),
                (_, Some(_)) => Err("checkpoint 0 twice".into()),
            },
            1 => match self.running.take() {
                Some(h) => {
                    self.result = Some(h.join().unwrap_or_else(|_| {
                        (
                            crate::outcome::Outcome::Error,
                            "the second VM's thread panicked".into(),
                        )
                    }));
                    Ok(())
                }
                None => Err("checkpoint 1 before checkpoint 0".into()),
            },
            n => Err(format!("checkpoint {n}: this host check takes 0 and 1")),
        }
    }

    fn finish(&mut self, failures: &mut Vec<String>) -> u32 {
        if self.launcher.is_none() {
            // The second VM itself: nothing to check on the host.
            return 0;
        }
        match &self.result {
            Some((crate::outcome::Outcome::Pass, _)) => {}
            Some((o, detail)) => {
                failures.push(format!("the second VM ended {}: {detail}", o.label()))
            }
            None => failures.push("the second VM was never waited for (no checkpoint 1)".into()),
        }
        1
    }
}

/// One access [`Scratch`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Access {
    write: bool,
    mmio: bool,
    addr: u64,
    size: usize,
    value: u64,
}

/// [`HostCheck::Scratch`]: port and MMIO register files that log every access.
#[derive(Debug)]
struct Scratch {
    ports: [u8; io::SCRATCH_PORTS as usize],
    /// What the next IN from the counter port returns.
    counter: u64,
    mmio: Vec<u8>,
    log: Vec<Access>,
}

/// Bound of the access log (a guest that loops on the device must not exhaust host memory).
const SCRATCH_LOG_MAX: usize = 4096;

impl Scratch {
    fn new() -> Self {
        Self {
            ports: [0; io::SCRATCH_PORTS as usize],
            counter: 0,
            mmio: (0..io::SCRATCH_MMIO_SIZE)
                .map(io::scratch_initial)
                .collect(),
            log: Vec::new(),
        }
    }

    /// The register-file range of an access, if it lies wholly inside one.
    fn port_range(port: u16, len: usize) -> Option<std::ops::Range<usize>> {
        let off = usize::from(port.checked_sub(io::SCRATCH_PORT)?);
        (off + len <= usize::from(io::SCRATCH_PORTS)).then_some(off..off + len)
    }

    fn mmio_range(gpa: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let off = gpa.checked_sub(MMIO_WINDOW + io::SCRATCH_MMIO_OFFSET)?;
        let off = usize::try_from(off).ok()?;
        (off + len <= io::SCRATCH_MMIO_SIZE as usize).then_some(off..off + len)
    }

    fn record(&mut self, write: bool, mmio: bool, addr: u64, data: &[u8]) {
        if self.log.len() < SCRATCH_LOG_MAX {
            self.log.push(Access {
                write,
                mmio,
                addr,
                size: data.len(),
                value: le_value(data),
            });
        }
    }
}

impl Device for Scratch {
    fn io_out(&mut self, port: u16, data: &[u8]) -> Handled {
        let Some(r) = Self::port_range(port, data.len()) else {
            return Handled::NotMine;
        };
        self.ports[r].copy_from_slice(data);
        self.record(true, false, u64::from(port), data);
        Handled::Yes
    }

    fn io_in(&mut self, port: u16, data: &mut [u8]) -> Handled {
        if port == io::SCRATCH_COUNTER_PORT {
            let n = self.counter.to_le_bytes();
            let len = data.len().min(8);
            data[..len].copy_from_slice(&n[..len]);
            self.counter += 1;
            self.record(false, false, u64::from(port), data);
            return Handled::Yes;
        }
        let Some(r) = Self::port_range(port, data.len()) else {
            return Handled::NotMine;
        };
        data.copy_from_slice(&self.ports[r]);
        self.record(false, false, u64::from(port), data);
        Handled::Yes
    }

    fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> Handled {
        // Outside the register file: memory that is not there (logged, the write dropped).
        if let Some(r) = Self::mmio_range(gpa, data.len()) {
            self.mmio[r].copy_from_slice(data);
        }
        self.record(true, true, gpa, data);
        Handled::Yes
    }

    fn mmio_read(&mut self, gpa: u64, data: &mut [u8]) -> Handled {
        match Self::mmio_range(gpa, data.len()) {
            Some(r) => data.copy_from_slice(&self.mmio[r]),
            // Memory that is not there reads as all ones (an open bus).
            None => data.fill(io::UNBACKED_BYTE),
        }
        self.record(false, true, gpa, data);
        Handled::Yes
    }

    fn request(&mut self, op: u32, args: [u64; 3]) -> Option<[u64; 4]> {
        use abi::vmm::{Op, Status};
        let ok = Status::Ok as u64;
        let op = Op::from_raw(u64::from(op))?;
        if op == Op::DeviceLog {
            let entry = usize::try_from(args[0]).ok().and_then(|i| self.log.get(i));
            return Some(match entry {
                Some(a) => {
                    let bit = |set: bool, mask: u64| if set { mask } else { 0 };
                    let flags = bit(a.write, io::LOG_WRITE)
                        | bit(a.mmio, io::LOG_MMIO)
                        | ((a.size as u64) << io::LOG_SIZE_SHIFT);
                    [ok, flags, a.addr, a.value]
                }
                None => [Status::BadArgs as u64, 0, 0, 0],
            });
        }
        if op == Op::DeviceLogLen {
            return Some([ok, self.log.len() as u64, 0, 0]);
        }
        if op == Op::DeviceLogClear {
            self.log.clear();
            return Some([ok, 0, 0, 0]);
        }
        None
    }

    fn finish(&mut self, _: &mut Vec<String>) -> u32 {
        // The guest checks what the device saw (through the log); the device checks nothing
        // on its own.
        0
    }
}

/// [`HostCheck::None`]: nothing beyond the report channel, no host checks.
#[derive(Debug)]
struct Nothing;

impl Device for Nothing {
    fn finish(&mut self, _: &mut Vec<String>) -> u32 {
        0
    }
}

/// [`HostCheck::PortIo`]: records OUTs to the echo port and answers INs.
#[derive(Debug, Default)]
struct PortIoEcho {
    outs: Vec<(u8, u32)>,
    last_out: u32,
}

fn le_value(data: &[u8]) -> u64 {
    data.iter().rev().fold(0, |v, &b| (v << 8) | u64::from(b))
}

impl Device for PortIoEcho {
    fn io_out(&mut self, port: u16, data: &[u8]) -> Handled {
        if port != io::ECHO_PORT {
            return Handled::NotMine;
        }
        let v = le_value(data) as u32;
        self.outs.push((data.len() as u8, v));
        self.last_out = v;
        Handled::Yes
    }

    fn io_in(&mut self, port: u16, data: &mut [u8]) -> Handled {
        if port != io::ECHO_PORT {
            return Handled::NotMine;
        }
        let v = io::pio_in_answer(self.last_out, data.len() as u8);
        let bytes = v.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
        Handled::Yes
    }

    fn finish(&mut self, failures: &mut Vec<String>) -> u32 {
        if self.outs != io::PIO_OUT {
            failures.push(format!(
                "OUTs to port {:#x} seen as (size, value) {:x?}, expected {:x?}",
                io::ECHO_PORT,
                self.outs,
                io::PIO_OUT
            ));
        }
        1
    }
}

/// [`HostCheck::Mmio`]: records the write, answers the read.
#[derive(Debug, Default)]
struct MmioDevice {
    writes: Vec<(u64, u8, u64)>,
    reads: u32,
}

impl Device for MmioDevice {
    fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> Handled {
        if gpa != MMIO_WINDOW + io::MMIO_WRITE_OFFSET {
            return Handled::NotMine;
        }
        self.writes.push((gpa, data.len() as u8, le_value(data)));
        Handled::Yes
    }

    fn mmio_read(&mut self, gpa: u64, data: &mut [u8]) -> Handled {
        if gpa != MMIO_WINDOW + io::MMIO_READ_OFFSET || data.len() != 4 {
            return Handled::NotMine;
        }
        self.reads += 1;
        data.copy_from_slice(&io::MMIO_READ_VALUE.to_le_bytes());
        Handled::Yes
    }

    fn finish(&mut self, failures: &mut Vec<String>) -> u32 {
        let (size, value) = io::MMIO_WRITE;
        let want = [(MMIO_WINDOW + io::MMIO_WRITE_OFFSET, size, value)];
        if self.writes != want {
            failures.push(format!(
                "MMIO writes seen as (gpa, size, value) {:x?}, expected {want:x?}",
                self.writes
            ));
        }
        if self.reads != 1 {
            failures.push(format!("{} MMIO reads seen, expected 1", self.reads));
        }
        2
    }
}

/// [`HostCheck::HltExit`]: one `KVM_EXIT_HLT` after each checkpoint, in order.
#[derive(Debug, Default)]
struct HltCounter {
    next_checkpoint: u64,
    armed: bool,
    hlts: u64,
}

impl Device for HltCounter {
    fn checkpoint(&mut self, n: u64) -> Result<(), String> {
        if n != self.next_checkpoint {
            return Err(format!(
                "checkpoint {n} out of order (expected {})",
                self.next_checkpoint
            ));
        }
        self.next_checkpoint += 1;
        self.armed = true;
        Ok(())
    }

    fn hlt(&mut self) -> Handled {
        if !self.armed {
            return Handled::NotMine;
        }
        self.armed = false;
        self.hlts += 1;
        Handled::Yes
    }

    fn finish(&mut self, failures: &mut Vec<String>) -> u32 {
        if self.hlts != io::HLT_COUNT {
            failures.push(format!(
                "{} HLT exits seen after checkpoints, expected {}",
                self.hlts,
                io::HLT_COUNT
            ));
        }
        1
    }
}

/// [`HostCheck::Bench`] and [`HostCheck::ExitLoop`]: answers the benchmark port and MMIO
/// offset at once; the measurements are the guest's samples (or the host's own timing).
#[derive(Debug)]
struct BenchSink;

impl Device for BenchSink {
    fn io_out(&mut self, port: u16, _: &[u8]) -> Handled {
        if port == io::BENCH_PORT {
            Handled::Yes
        } else {
            Handled::NotMine
        }
    }

    fn mmio_write(&mut self, gpa: u64, _: &[u8]) -> Handled {
        if gpa == MMIO_WINDOW + io::BENCH_MMIO_OFFSET {
            Handled::Yes
        } else {
            Handled::NotMine
        }
    }

    fn finish(&mut self, _: &mut Vec<String>) -> u32 {
        0
    }
}

/// [`HostCheck::Lifecycle`]: the guest only has to boot, reach its case and report; that is
/// the host's one check.
#[derive(Debug)]
struct Lifecycle;

impl Device for Lifecycle {
    fn finish(&mut self, _: &mut Vec<String>) -> u32 {
        1
    }
}

/// One benchmark sample as the guest reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Metric name.
    pub metric: String,
    /// Operations in the batch.
    pub ops: u64,
    /// TSC cycles they took.
    pub cycles: u64,
    /// The native baseline the metric is compared with (`None` if the guest named an unknown one).
    pub baseline: Option<abi::bench::Baseline>,
}

/// The guest's final status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestResult {
    /// The most severe status the guest recorded.
    pub status: GuestStatus,
    /// The status the case finished with (a failed check may outrank it).
    pub finished_with: GuestStatus,
    /// The reason given with it.
    pub reason: String,
    /// Checks the guest made.
    pub checks: u32,
}

/// State of one case instance's run, from the host's point of view.
#[derive(Debug)]
pub struct CaseHandler {
    check: HostCheck,
    device: Box<dyn Device>,
    /// Log lines and failed checks, in order.
    pub lines: Vec<String>,
    /// The guest's final status.
    pub result: Option<GuestResult>,
    /// What the host-side check found wrong.
    pub host_failures: Vec<String>,
    /// Checks the host made.
    pub host_checks: u32,
    /// Benchmark samples.
    pub samples: Vec<Sample>,
    /// The last checkpoint the guest reported.
    pub last_checkpoint: Option<u64>,
    /// Checks the guest reported failed (before any final status: a case that ends in an
    /// expected shutdown sends none).
    pub failed_checks: u32,
}

impl CaseHandler {
    /// A handler for a case with `check`.
    pub fn new(check: HostCheck) -> Self {
        Self::with_sibling(check, None)
    }

    /// A handler for a case with `check` that can start a second VM ([`HostCheck::Sibling`]).
    pub fn with_sibling(check: HostCheck, sibling: Option<SiblingLauncher>) -> Self {
        Self {
            check,
            device: device_for(check, sibling),
            lines: Vec::new(),
            result: None,
            host_failures: Vec::new(),
            host_checks: 0,
            samples: Vec::new(),
            last_checkpoint: None,
            failed_checks: 0,
        }
    }

    /// The case's host check.
    pub fn check(&self) -> HostCheck {
        self.check
    }

    fn answer(&self, h: Handled, what: impl FnOnce() -> String) -> Action {
        match h {
            Handled::Yes => Action::Continue,
            Handled::NotMine => Action::Unexpected(format!(
                "{} (host check {:?} does not allow it)",
                what(),
                self.check
            )),
        }
    }

    fn on_result(&mut self, msg: &Message) -> Action {
        let status = GuestStatus::from_raw(msg.values[0]);
        let finished_with = GuestStatus::from_raw(msg.values[2]);
        let (Some(status), Some(finished_with)) = (status, finished_with) else {
            return Action::Unexpected(format!(
                "final status with unknown values {:?}",
                &msg.values[..3]
            ));
        };
        self.result = Some(GuestResult {
            status,
            finished_with,
            reason: msg.text_str().to_string(),
            checks: u32::try_from(msg.values[1]).unwrap_or(u32::MAX),
        });
        self.host_checks += self.device.finish(&mut self.host_failures);
        Action::Stop
    }
}

impl ExitHandler for CaseHandler {
    fn report(&mut self, msg: &Message) -> Action {
        match MessageKind::from_raw(msg.kind) {
            Some(MessageKind::Log) => {
                self.lines.push(format!("log: {}", msg.text_str()));
                Action::Continue
            }
            Some(MessageKind::AssertFail) => {
                let mut line = format!(
                    "check failed at {}:{}: {}",
                    msg.file_str(),
                    msg.line,
                    msg.text_str()
                );
                if msg.flags & FLAG_HAS_VALUES != 0 {
                    line += &format!(" [left={:#x} right={:#x}]", msg.values[0], msg.values[1]);
                }
                self.lines.push(line);
                self.failed_checks = self.failed_checks.saturating_add(1);
                Action::Continue
            }
            Some(MessageKind::Checkpoint) => {
                self.last_checkpoint = Some(msg.values[0]);
                if let Err(why) = self.device.checkpoint(msg.values[0]) {
                    self.host_failures.push(why);
                }
                Action::Continue
            }
            Some(MessageKind::Sample) => {
                self.samples.push(Sample {
                    metric: msg.text_str().to_string(),
                    ops: msg.values[0],
                    cycles: msg.values[1],
                    baseline: abi::bench::Baseline::from_raw(msg.values[2]),
                });
                Action::Continue
            }
            Some(MessageKind::Result) => self.on_result(msg),
            // Every case may ask the VMM to act (abi::vmm); the guest checks the outcome. The
            // case's device answers the requests that are about it.
            Some(MessageKind::Request) => {
                let args = [msg.values[1], msg.values[2], msg.values[3]];
                match self.device.request(msg.line, args) {
                    Some(reply) => Action::Reply(reply),
                    None => Action::Serve(runner::vm::VmmRequest { op: msg.line, args }),
                }
            }
            None => Action::Unexpected(format!("report message of unknown kind {}", msg.kind)),
        }
    }

    fn io_out(&mut self, port: u16, data: &[u8]) -> Action {
        let h = self.device.io_out(port, data);
        self.answer(h, || {
            format!("OUT to port {port:#x} of {} bytes ({data:x?})", data.len())
        })
    }

    fn io_in(&mut self, port: u16, data: &mut [u8]) -> Action {
        let n = data.len();
        let h = self.device.io_in(port, data);
        self.answer(h, || format!("IN from port {port:#x} of {n} bytes"))
    }

    fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> Action {
        let h = self.device.mmio_write(gpa, data);
        self.answer(h, || {
            format!("MMIO write at {gpa:#x} of {} bytes", data.len())
        })
    }

    fn mmio_read(&mut self, gpa: u64, data: &mut [u8]) -> Action {
        let n = data.len();
        let h = self.device.mmio_read(gpa, data);
        self.answer(h, || format!("MMIO read at {gpa:#x} of {n} bytes"))
    }

    fn hlt(&mut self) -> Action {
        let h = self.device.hlt();
        self.answer(h, || "HLT exit".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result_msg(status: GuestStatus, checks: u64) -> Message {
        let mut m = Message::new(MessageKind::Result);
        m.values[0] = status as u64;
        m.values[1] = checks;
        m.values[2] = status as u64;
        m
    }

    #[test]
    fn port_io_check_records_and_answers() {
        let mut h = CaseHandler::new(HostCheck::PortIo);
        for (size, v) in io::PIO_OUT {
            let b = v.to_le_bytes();
            assert_eq!(
                h.io_out(io::ECHO_PORT, &b[..usize::from(size)]),
                Action::Continue
            );
            let mut back = vec![0u8; usize::from(size)];
            assert_eq!(h.io_in(io::ECHO_PORT, &mut back), Action::Continue);
            assert_eq!(le_value(&back) as u32, io::pio_in_answer(v, size));
        }
        assert_eq!(h.report(&result_msg(GuestStatus::Pass, 3)), Action::Stop);
        assert!(h.host_failures.is_empty(), "{:?}", h.host_failures);
        assert_eq!(h.host_checks, 1);
        assert_eq!(h.result.as_ref().map(|r| r.checks), Some(3));
    }

    #[test]
    fn port_io_check_catches_a_wrong_value() {
        let mut h = CaseHandler::new(HostCheck::PortIo);
        h.io_out(io::ECHO_PORT, &[0x5b]);
        h.report(&result_msg(GuestStatus::Pass, 1));
        assert_eq!(h.host_failures.len(), 1);
        assert!(matches!(h.io_out(0x80, &[0]), Action::Unexpected(_)));
    }

    #[test]
    fn mmio_check_answers_the_read_and_verifies_the_write() {
        let mut h = CaseHandler::new(HostCheck::Mmio);
        let (_, v) = io::MMIO_WRITE;
        let w = (v as u32).to_le_bytes();
        assert_eq!(
            h.mmio_write(MMIO_WINDOW + io::MMIO_WRITE_OFFSET, &w),
            Action::Continue
        );
        let mut r = [0u8; 4];
        assert_eq!(
            h.mmio_read(MMIO_WINDOW + io::MMIO_READ_OFFSET, &mut r),
            Action::Continue
        );
        assert_eq!(u32::from_le_bytes(r), io::MMIO_READ_VALUE);
        assert!(matches!(
            h.mmio_write(MMIO_WINDOW, &w),
            Action::Unexpected(_)
        ));
        h.report(&result_msg(GuestStatus::Pass, 1));
        assert!(h.host_failures.is_empty(), "{:?}", h.host_failures);
        let mut missing = CaseHandler::new(HostCheck::Mmio);
        missing.report(&result_msg(GuestStatus::Pass, 1));
        assert_eq!(missing.host_failures.len(), 2);
    }

    #[test]
    fn hlt_check_needs_a_checkpoint_before_each_hlt() {
        let mut h = CaseHandler::new(HostCheck::HltExit);
        assert!(matches!(h.hlt(), Action::Unexpected(_)));
        let mut cp = Message::new(MessageKind::Checkpoint);
        for i in 0..io::HLT_COUNT {
            cp.values[0] = i;
            h.report(&cp);
            assert_eq!(h.hlt(), Action::Continue);
        }
        h.report(&result_msg(GuestStatus::Pass, 0));
        assert!(h.host_failures.is_empty());
        assert_eq!(h.host_checks, 1);
    }

    #[test]
    fn sibling_check_starts_the_second_vm_and_needs_it_to_pass() {
        use crate::outcome::Outcome;
        let launch = |o: Outcome| -> SiblingLauncher {
            std::sync::Arc::new(move || std::thread::spawn(move || (o, "detail".into())))
        };
        let cp = |n: u64| {
            let mut m = Message::new(MessageKind::Checkpoint);
            m.values[0] = n;
            m
        };
        let mut ok = CaseHandler::with_sibling(HostCheck::Sibling, Some(launch(Outcome::Pass)));
        ok.report(&cp(0));
        ok.report(&cp(1));
        ok.report(&result_msg(GuestStatus::Pass, 1));
        assert!(ok.host_failures.is_empty(), "{:?}", ok.host_failures);
        assert_eq!(ok.host_checks, 1);
        let mut bad = CaseHandler::with_sibling(HostCheck::Sibling, Some(launch(Outcome::Fail)));
        bad.report(&cp(0));
        bad.report(&cp(1));
        bad.report(&result_msg(GuestStatus::Pass, 1));
        assert!(
            bad.host_failures[0].contains("second VM ended FAIL"),
            "{:?}",
            bad.host_failures
        );
        let mut never = CaseHandler::with_sibling(HostCheck::Sibling, Some(launch(Outcome::Pass)));
        never.report(&cp(0));
        never.report(&result_msg(GuestStatus::Pass, 1));
        assert_eq!(never.host_failures.len(), 1);
        let mut no_launcher = CaseHandler::new(HostCheck::Sibling);
        no_launcher.report(&cp(0));
        assert_eq!(no_launcher.host_failures.len(), 1);
    }

    #[test]
    fn a_checkpoint_where_none_is_taken_is_a_host_failure() {
        let mut h = CaseHandler::new(HostCheck::None);
        h.report(&Message::new(MessageKind::Checkpoint));
        assert_eq!(h.host_failures.len(), 1);
    }

    #[test]
    fn a_result_with_an_unknown_status_is_unexpected() {
        let mut h = CaseHandler::new(HostCheck::None);
        let mut m = result_msg(GuestStatus::Pass, 0);
        m.values[0] = 9;
        assert!(matches!(h.report(&m), Action::Unexpected(_)));
    }
}
