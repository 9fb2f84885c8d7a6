//! The report channel to the host, and the macros cases use to check things.
//!
//! - `check!(cond)` / `check_eq!(left, right)`: soft checks; a failure is reported with the
//!   expression, file, line (and both values) and the case goes on, ending as FAIL. Every
//!   check is counted, passed or not; the count goes to the host with the final status, and
//!   the host turns a PASS without a single check into ERROR (a case that checks nothing must
//!   not pass).
//! - `log!(...)`: a log line in the case's detail.
//! - `skip!(...)`, `error!(...)`: end the case now as SKIP / ERROR with a reason.
//! - [`finish`]: end the case with a status (the most severe of it and what was recorded:
//!   a failed check outranks a later ERROR, see `GuestStatus::severity`).

use core::fmt::{self, Write};

use abi::report::{
    Channel, FILE_LEN, FLAG_HAS_VALUES, GuestStatus, Message, MessageKind, REPORT_PORT, TEXT_LEN,
};

use core::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use crate::arch;

/// The [`Channel`] messages go out on, as raw value (set once by `rt::start`).
static CHANNEL: AtomicU8 = AtomicU8::new(Channel::Exit as u8);

/// Sends every later message on `c` (the boot info's channel; `rt::start` calls this first).
pub fn use_channel(c: Channel) {
    CHANNEL.store(c as u8, Ordering::Relaxed);
}

fn stream() -> bool {
    CHANNEL.load(Ordering::Relaxed) == Channel::Stream as u8
}

static WORST: AtomicU8 = AtomicU8::new(GuestStatus::Pass as u8);
static CHECKS: AtomicU32 = AtomicU32::new(0);

fn status_of(raw: u8) -> GuestStatus {
    GuestStatus::from_raw(u64::from(raw)).unwrap_or(GuestStatus::Error)
}

/// Records `s` if it is more severe than what was recorded so far (on any vCPU).
pub fn record(s: GuestStatus) {
    let _ = WORST.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
        (s.severity() > status_of(w).severity()).then_some(s as u8)
    });
}

/// The most severe status recorded so far.
pub fn worst() -> GuestStatus {
    status_of(WORST.load(Ordering::Acquire))
}

/// Counts one check (called by `check!`/`check_eq!` whether it held or not).
pub fn count_check() {
    CHECKS.fetch_add(1, Ordering::Relaxed);
}

/// How many checks were made so far.
pub fn checks() -> u32 {
    CHECKS.load(Ordering::Relaxed)
}

fn send(msg: &Message) {
    if stream() {
        arch::instr::rep_outs(REPORT_PORT, 1, &msg.to_bytes(), false);
        return;
    }
    // The message lives on the stack or in .data, both identity mapped below 4 GiB, so its
    // address is the GPA the host reads.
    arch::instr::outl(REPORT_PORT, msg as *const Message as u64 as u32);
}

/// Writes into a fixed byte buffer, truncating (always leaving a final NUL).
struct FixedWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Write for FixedWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len().saturating_sub(self.len + 1);
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

fn fill(buf: &mut [u8], args: fmt::Arguments<'_>) {
    let mut w = FixedWriter { buf, len: 0 };
    let _ = w.write_fmt(args);
}

/// Sends a log line.
pub fn log(args: fmt::Arguments<'_>) {
    let mut m = Message::new(MessageKind::Log);
    fill(&mut m.text, args);
    send(&m);
}

/// Sends a checkpoint for the case's host-side expectation.
pub fn checkpoint(number: u64, data: [u64; 3]) {
    let mut m = Message::new(MessageKind::Checkpoint);
    m.values = [number, data[0], data[1], data[2]];
    send(&m);
}

/// Reports a benchmark sample: `ops` operations of `metric` took `cycles` TSC cycles; the host
/// compares the metric with `baseline`.
pub fn sample(metric: &str, baseline: abi::bench::Baseline, ops: u64, cycles: u64) {
    let mut m = Message::new(MessageKind::Sample);
    m.values[0] = ops;
    m.values[1] = cycles;
    m.values[2] = baseline as u64;
    let n = metric.len().min(TEXT_LEN - 1);
    m.text[..n].copy_from_slice(&metric.as_bytes()[..n]);
    send(&m);
}

/// Sends a VMM request message (`abi::vmm`) and returns the values of the reply.
pub(crate) fn request(op: u32, args: [u64; 3]) -> [u64; 4] {
    let mut m = Message::new(MessageKind::Request);
    m.line = op;
    m.values = [abi::vmm::NO_REPLY, args[0], args[1], args[2]];
    if stream() {
        // The stream has no way back: the VMM sees the request, the case sees Unsupported.
        send(&m);
        return [abi::vmm::Status::Unsupported as u64, 0, 0, 0];
    }
    arch::instr::report_exchange(REPORT_PORT, &mut m)
}

/// Reports a failed check and records FAIL.
pub fn check_failed(file: &str, line: u32, expr: fmt::Arguments<'_>, values: Option<(u64, u64)>) {
    let mut m = Message::new(MessageKind::AssertFail);
    m.line = line;
    let f = file.as_bytes();
    let skip = f.len().saturating_sub(FILE_LEN - 1);
    m.file[..f.len() - skip].copy_from_slice(&f[skip..]);
    fill(&mut m.text, expr);
    if let Some((l, r)) = values {
        m.flags = FLAG_HAS_VALUES;
        m.values[0] = l;
        m.values[1] = r;
    }
    send(&m);
    record(GuestStatus::Fail);
}

/// Ends the case with `status` (or a more severe one recorded earlier) and a reason.
pub fn finish(status: GuestStatus, reason: &str) -> ! {
    finish_fmt(status, format_args!("{reason}"))
}

/// [`finish`] with a formatted reason.
pub fn finish_fmt(status: GuestStatus, reason: fmt::Arguments<'_>) -> ! {
    record(status);
    let mut m = Message::new(MessageKind::Result);
    m.values[0] = worst() as u64;
    m.values[1] = u64::from(checks());
    m.values[2] = status as u64;
    fill(&mut m.text[..TEXT_LEN], reason);
    send(&m);
    loop {
        arch::instr::hlt();
    }
}

/// Logs a formatted line to the host.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => { $crate::report::log(format_args!($($arg)*)) };
}

/// Soft check: on failure reports the expression (plus an optional formatted note) and the
/// case ends as FAIL when it finishes.
#[macro_export]
macro_rules! check {
    ($cond:expr $(,)?) => {{
        $crate::report::count_check();
        if !$cond {
            $crate::report::check_failed(file!(), line!(), format_args!("{}", stringify!($cond)), None);
        }
    }};
    ($cond:expr, $($arg:tt)+) => {{
        $crate::report::count_check();
        if !$cond {
            $crate::report::check_failed(file!(), line!(),
                format_args!("{}: {}", stringify!($cond), format_args!($($arg)+)), None);
        }
    }};
}

/// Soft equality check of two values convertible to `u64`; reports both values on failure.
#[macro_export]
macro_rules! check_eq {
    ($left:expr, $right:expr $(,)?) => {
        $crate::check_eq!($left, $right, "")
    };
    ($left:expr, $right:expr, $($arg:tt)+) => {{
        let (l, r) = ($left, $right);
        $crate::report::count_check();
        if l != r {
            $crate::report::check_failed(
                file!(),
                line!(),
                format_args!("{} == {} {}: {:?} != {:?}", stringify!($left), stringify!($right),
                    format_args!($($arg)+), l, r),
                $crate::report::as_values(&l, &r),
            );
        }
    }};
}

/// Ends the case as SKIP with a reason.
#[macro_export]
macro_rules! skip {
    ($($arg:tt)*) => {
        $crate::report::finish_fmt($crate::abi::report::GuestStatus::Skip, format_args!($($arg)*))
    };
}

/// Ends the case as ERROR (the test or its setup is wrong) with a reason.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => {
        $crate::report::finish_fmt($crate::abi::report::GuestStatus::Error, format_args!($($arg)*))
    };
}

/// Values of a failed `check_eq!` for the message's numeric fields, when they are integers.
pub fn as_values<T: AsValue>(l: &T, r: &T) -> Option<(u64, u64)> {
    Some((l.as_value()?, r.as_value()?))
}

/// Types whose values travel in a failed check's numeric fields.
pub trait AsValue {
    /// The value as u64, if it has one.
    fn as_value(&self) -> Option<u64>;
}

macro_rules! as_value_int {
    ($($t:ty),*) => {$(
        impl AsValue for $t {
            fn as_value(&self) -> Option<u64> { Some(*self as u64) }
        }
    )*};
}
as_value_int!(u8, u16, u32, u64, usize, i8, i16, i32, i64, bool);

impl<T, E> AsValue for Result<T, E> {
    fn as_value(&self) -> Option<u64> {
        None
    }
}

impl<T> AsValue for Option<T> {
    fn as_value(&self) -> Option<u64> {
        None
    }
}

/// Types compared by `check_eq!` whose failures carry no numeric values (the text shows
/// them with `Debug`).
macro_rules! as_value_none {
    ($($t:ty),*) => {$(
        impl AsValue for $t {
            fn as_value(&self) -> Option<u64> { None }
        }
    )*};
}
as_value_none!(
    crate::user::UserExit,
    crate::exception::Exception,
    crate::env::Mode,
    crate::vmm::VmmError,
    crate::arch::instr::TableRegister,
    crate::vmm::DeviceAccess,
    [u32; 4],
    [u32; 3],
    [u64; 3],
    (u8, u64, u64),
    ()
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_writer_truncates_and_keeps_a_final_nul() {
        // Message fields start zeroed; the writer never touches the last byte.
        let mut buf = [0u8; 8];
        fill(&mut buf, format_args!("{}-{}", "abcdef", 12345));
        assert_eq!(&buf, b"abcdef-\0");
        let mut small = [0u8; 1];
        fill(&mut small, format_args!("x"));
        assert_eq!(small, [0], "no room: nothing written");
    }

    #[test]
    fn the_worst_status_wins_and_fail_outranks_error() {
        record(GuestStatus::Skip);
        record(GuestStatus::Error);
        record(GuestStatus::Fail);
        record(GuestStatus::Error);
        assert_eq!(worst(), GuestStatus::Fail);
    }
}
