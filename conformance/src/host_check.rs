//! The host side of a case: decodes the guest's reports and implements every
//! [`HostCheck`] (an exhaustive `match`, so a new variant cannot be forgotten). Any exit the
//! case's check does not allow (an OUT to another port, MMIO elsewhere, a HLT out of turn)
//! ends the run as unexpected, which the suite classifies as CRASH.

use abi::case::{HostCheck, io};
use abi::layout::MMIO_WINDOW;
use abi::report::{FLAG_HAS_VALUES, GuestStatus, Message, MessageKind};
use runner::kvm::{Action, ExitHandler};

/// State of one case instance's run, from the host's point of view.
#[derive(Debug)]
pub struct CaseHandler {
    check: HostCheck,
    /// Log lines and failed checks, in order.
    pub lines: Vec<String>,
    /// The guest's final status and reason.
    pub result: Option<(GuestStatus, String)>,
    /// What the host-side check found wrong.
    pub host_failures: Vec<String>,
    outs: Vec<(u8, u32)>,
    last_out: u32,
    mmio_writes: Vec<(u64, u8, u64)>,
    mmio_reads: u32,
    next_checkpoint: u64,
    hlt_armed: bool,
    hlts: u64,
    /// Benchmark samples: (metric, operations, TSC cycles).
    pub samples: Vec<(String, u64, u64)>,
}

impl CaseHandler {
    /// A handler for a case with `check`.
    pub fn new(check: HostCheck) -> Self {
        Self {
            check,
            lines: Vec::new(),
            result: None,
            host_failures: Vec::new(),
            outs: Vec::new(),
            last_out: 0,
            mmio_writes: Vec::new(),
            mmio_reads: 0,
            next_checkpoint: 0,
            hlt_armed: false,
            hlts: 0,
            samples: Vec::new(),
        }
    }

    fn unexpected(&self, what: String) -> Action {
        Action::Unexpected(format!(
            "{what} (host check {:?} does not allow it)",
            self.check
        ))
    }

    /// Compares what the host saw with what the check requires; called on the final status.
    fn finish(&mut self) {
        match self.check {
            HostCheck::None | HostCheck::Bench => {}
            HostCheck::PortIo => {
                if self.outs != io::PIO_OUT {
                    self.host_failures.push(format!(
                        "OUTs to port {:#x} seen as (size, value) {:x?}, expected {:x?}",
                        io::ECHO_PORT,
                        self.outs,
                        io::PIO_OUT
                    ));
                }
            }
            HostCheck::Mmio => {
                let (size, value) = io::MMIO_WRITE;
                let want = [(MMIO_WINDOW + io::MMIO_WRITE_OFFSET, size, value)];
                if self.mmio_writes != want {
                    self.host_failures.push(format!(
                        "MMIO writes seen as (gpa, size, value) {:x?}, expected {want:x?}",
                        self.mmio_writes
                    ));
                }
                if self.mmio_reads != 1 {
                    self.host_failures
                        .push(format!("{} MMIO reads seen, expected 1", self.mmio_reads));
                }
            }
            HostCheck::HltExit => {
                if self.hlts != io::HLT_COUNT {
                    self.host_failures.push(format!(
                        "{} HLT exits seen after checkpoints, expected {}",
                        self.hlts,
                        io::HLT_COUNT
                    ));
                }
            }
        }
    }
}

fn le_value(data: &[u8]) -> u64 {
    data.iter().rev().fold(0, |v, &b| (v << 8) | u64::from(b))
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
                Action::Continue
            }
            Some(MessageKind::Checkpoint) => {
                let n = msg.values[0];
                match self.check {
                    HostCheck::HltExit if n == self.next_checkpoint => {
                        self.next_checkpoint += 1;
                        self.hlt_armed = true;
                    }
                    _ => self
                        .host_failures
                        .push(format!("checkpoint {n} out of order")),
                }
                Action::Continue
            }
            Some(MessageKind::Sample) => {
                self.samples
                    .push((msg.text_str().to_string(), msg.values[0], msg.values[1]));
                Action::Continue
            }
            Some(MessageKind::Result) => {
                let status = GuestStatus::from_raw(msg.values[0]).unwrap_or(GuestStatus::Error);
                self.result = Some((status, msg.text_str().to_string()));
                self.finish();
                Action::Stop
            }
            None => Action::Unexpected(format!("report message of unknown kind {}", msg.kind)),
        }
    }

    fn io_out(&mut self, port: u16, data: &[u8]) -> Action {
        match self.check {
            HostCheck::Bench if port == io::BENCH_PORT => Action::Continue,
            HostCheck::PortIo if port == io::ECHO_PORT => {
                let v = le_value(data) as u32;
                self.outs.push((data.len() as u8, v));
                self.last_out = v;
                Action::Continue
            }
            _ => self.unexpected(format!(
                "OUT to port {port:#x} of {} bytes ({:x?})",
                data.len(),
                data
            )),
        }
    }

    fn io_in(&mut self, port: u16, data: &mut [u8]) -> Action {
        match self.check {
            HostCheck::PortIo if port == io::ECHO_PORT => {
                let v = io::pio_in_answer(self.last_out, data.len() as u8);
                let bytes = v.to_le_bytes();
                let n = data.len().min(4);
                data[..n].copy_from_slice(&bytes[..n]);
                Action::Continue
            }
            _ => self.unexpected(format!("IN from port {port:#x} of {} bytes", data.len())),
        }
    }

    fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> Action {
        match self.check {
            HostCheck::Bench if gpa == MMIO_WINDOW + io::BENCH_MMIO_OFFSET => Action::Continue,
            HostCheck::Mmio if gpa == MMIO_WINDOW + io::MMIO_WRITE_OFFSET => {
                self.mmio_writes
                    .push((gpa, data.len() as u8, le_value(data)));
                Action::Continue
            }
            _ => self.unexpected(format!("MMIO write at {gpa:#x} of {} bytes", data.len())),
        }
    }

    fn mmio_read(&mut self, gpa: u64, data: &mut [u8]) -> Action {
        match self.check {
            HostCheck::Mmio if gpa == MMIO_WINDOW + io::MMIO_READ_OFFSET && data.len() == 4 => {
                self.mmio_reads += 1;
                data.copy_from_slice(&io::MMIO_READ_VALUE.to_le_bytes());
                Action::Continue
            }
            _ => self.unexpected(format!("MMIO read at {gpa:#x} of {} bytes", data.len())),
        }
    }

    fn hlt(&mut self) -> Action {
        match self.check {
            HostCheck::HltExit if self.hlt_armed => {
                self.hlt_armed = false;
                self.hlts += 1;
                Action::Continue
            }
            _ => self.unexpected("HLT exit".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result_msg(status: GuestStatus) -> Message {
        let mut m = Message::new(MessageKind::Result);
        m.values[0] = status as u64;
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
        assert_eq!(h.report(&result_msg(GuestStatus::Pass)), Action::Stop);
        assert!(h.host_failures.is_empty(), "{:?}", h.host_failures);
    }

    #[test]
    fn port_io_check_catches_a_wrong_value_and_stray_ports() {
        let mut h = CaseHandler::new(HostCheck::PortIo);
        h.io_out(io::ECHO_PORT, &[0x5b]);
        h.report(&result_msg(GuestStatus::Pass));
        assert_eq!(h.host_failures.len(), 1);
        assert!(matches!(h.io_out(0x80, &[0]), Action::Unexpected(_)));
        let mut none = CaseHandler::new(HostCheck::None);
        assert!(matches!(none.hlt(), Action::Unexpected(_)));
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
        h.report(&result_msg(GuestStatus::Pass));
        assert!(h.host_failures.is_empty());
    }
}
