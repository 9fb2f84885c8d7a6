//! The guest->host report channel.
//!
//! The guest fills a [`Message`] in its own memory (identity mapped, so its address is a
//! GPA below 4 GiB) and executes `out %eax, $REPORT_PORT` with EAX = that address. The host
//! sees one `KVM_EXIT_IO`, reads the message from guest memory and resumes the vCPU. A
//! [`MessageKind::Result`] message is the case's final status; a case that never sends one
//! ends as CRASH on the host side.
//!
//! That is [`Channel::Exit`]. A VMM that cannot read guest memory on a port exit (QEMU) asks
//! for [`Channel::Stream`] in the boot info instead: the guest writes each message's bytes
//! ([`Message::to_bytes`]) one at a time to the same port, a byte sink on the VMM side (QEMU's
//! `isa-debugcon`), and a request gets no reply (the guest takes it as `Unsupported`).

/// I/O port of the report channel (32-bit `out`, EAX = GPA of a [`Message`]).
pub const REPORT_PORT: u16 = 0x0cf0;
/// How the guest sends messages (`abi::layout::BootInfo::channel`).
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// One 32-bit `out` of the message's GPA to [`REPORT_PORT`]; the VMM reads the message
    /// from guest memory and may write a reply into it before resuming.
    Exit = 0,
    /// The message's [`MESSAGE_SIZE`] bytes, one 8-bit `out` each, to [`REPORT_PORT`]; no
    /// reply.
    Stream = 1,
}

impl Channel {
    /// Decodes the raw field.
    pub fn from_raw(raw: u64) -> Option<Self> {
        match raw {
            0 => Some(Self::Exit),
            1 => Some(Self::Stream),
            _ => None,
        }
    }
}

/// Magic in [`Message::magic`] ("PVMC").
pub const MESSAGE_MAGIC: u32 = u32::from_le_bytes(*b"PVMC");
/// Bytes of [`Message::file`].
pub const FILE_LEN: usize = 64;
/// Bytes of [`Message::text`].
pub const TEXT_LEN: usize = 224;

/// What a [`Message`] carries.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// A log line (`text`).
    Log = 1,
    /// A failed assertion: `text` = expression, `file`/`line`, `values[0]`/`values[1]` = left
    /// and right operands when `flags & FLAG_HAS_VALUES`.
    AssertFail = 2,
    /// Final status: `values[0]` = [`GuestStatus`] (the most severe one recorded),
    /// `values[1]` = how many checks the guest made, `values[2]` = the status the case
    /// finished with (which a failed check recorded earlier may outrank), `text` = its reason.
    Result = 3,
    /// A named checkpoint the host-side expectation of the case inspects: `values[0]` = the
    /// checkpoint number, `values[1..]` = data.
    Checkpoint = 4,
    /// A benchmark sample: `text` = metric, `values[0]` = operations, `values[1]` = TSC cycles
    /// they took, `values[2]` = the `bench::Baseline` it is compared with.
    Sample = 5,
    /// A request to the VMM (`crate::vmm`): `line` = the op, `values[1..4]` = its arguments;
    /// the VMM writes its reply into the message's `values` before resuming.
    Request = 6,
}

impl MessageKind {
    /// Decodes the raw field.
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            1 => Self::Log,
            2 => Self::AssertFail,
            3 => Self::Result,
            4 => Self::Checkpoint,
            5 => Self::Sample,
            6 => Self::Request,
            _ => return None,
        })
    }
}

/// Status a guest can report itself. The host adds XFAIL (from expectations) and CRASH (no
/// status at all). Severity, least first: Pass < Skip < Error < Fail ([`GuestStatus::severity`]):
/// a failed check outranks an error in the same run, as XTF ranks FAILURE above ERROR, so a
/// hypervisor bug is not hidden behind a test problem that followed it.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestStatus {
    /// Every check held.
    Pass = 0,
    /// The hypervisor under test did something wrong.
    Fail = 1,
    /// The case does not apply here (reason in `text`).
    Skip = 2,
    /// The test or its setup is wrong (not the hypervisor).
    Error = 3,
}

impl GuestStatus {
    /// Rank for merging (higher wins).
    pub const fn severity(self) -> u8 {
        match self {
            GuestStatus::Pass => 0,
            GuestStatus::Skip => 1,
            GuestStatus::Error => 2,
            GuestStatus::Fail => 3,
        }
    }

    /// Decodes the raw value.
    pub fn from_raw(raw: u64) -> Option<Self> {
        Some(match raw {
            0 => Self::Pass,
            1 => Self::Fail,
            2 => Self::Skip,
            3 => Self::Error,
            _ => return None,
        })
    }
}

/// [`Message::flags`]: `values[0]`/`values[1]` hold the operands of a failed comparison.
pub const FLAG_HAS_VALUES: u32 = 1;

/// One report from the guest; see the module documentation for the protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    /// [`MESSAGE_MAGIC`].
    pub magic: u32,
    /// [`MessageKind`] as raw value.
    pub kind: u32,
    /// Source line (assertions), else 0.
    pub line: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Kind-specific values.
    pub values: [u64; 4],
    /// Source file (assertions), NUL padded.
    pub file: [u8; FILE_LEN],
    /// Text, NUL padded.
    pub text: [u8; TEXT_LEN],
}

/// Offset of [`Message::values`] (where the VMM writes a request's reply).
pub const VALUES_OFFSET: usize = 16;

/// Size of a [`Message`] in bytes.
pub const MESSAGE_SIZE: usize = core::mem::size_of::<Message>();

const _: () = {
    assert!(MESSAGE_SIZE == 16 + 32 + FILE_LEN + TEXT_LEN);
    assert!(core::mem::offset_of!(Message, kind) == 4);
    assert!(core::mem::offset_of!(Message, line) == 8);
    assert!(core::mem::offset_of!(Message, flags) == 12);
    assert!(core::mem::offset_of!(Message, values) == VALUES_OFFSET);
    assert!(core::mem::offset_of!(Message, file) == 48);
    assert!(core::mem::offset_of!(Message, text) == 48 + FILE_LEN);
};

impl Message {
    /// An empty message of `kind`.
    pub const fn new(kind: MessageKind) -> Self {
        Self {
            magic: MESSAGE_MAGIC,
            kind: kind as u32,
            line: 0,
            flags: 0,
            values: [0; 4],
            file: [0; FILE_LEN],
            text: [0; TEXT_LEN],
        }
    }

    /// The exact `#[repr(C)]` byte layout (little endian), as [`Channel::Stream`] sends it.
    pub fn to_bytes(&self) -> [u8; MESSAGE_SIZE] {
        let mut b = [0u8; MESSAGE_SIZE];
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..8].copy_from_slice(&self.kind.to_le_bytes());
        b[8..12].copy_from_slice(&self.line.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        for (i, v) in self.values.iter().enumerate() {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        b[48..48 + FILE_LEN].copy_from_slice(&self.file);
        b[48 + FILE_LEN..].copy_from_slice(&self.text);
        b
    }

    /// Decodes a message from its raw bytes (as read by the host from guest memory).
    pub fn from_bytes(b: &[u8; MESSAGE_SIZE]) -> Self {
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(v)
        };
        let mut file = [0u8; FILE_LEN];
        file.copy_from_slice(&b[48..48 + FILE_LEN]);
        let mut text = [0u8; TEXT_LEN];
        text.copy_from_slice(&b[48 + FILE_LEN..]);
        Self {
            magic: u32_at(0),
            kind: u32_at(4),
            line: u32_at(8),
            flags: u32_at(12),
            values: [u64_at(16), u64_at(24), u64_at(32), u64_at(40)],
            file,
            text,
        }
    }

    /// The text as a string (up to the first NUL).
    pub fn text_str(&self) -> &str {
        crate::fixed_str_read(&self.text)
    }

    /// The file as a string (up to the first NUL).
    pub fn file_str(&self) -> &str {
        crate::fixed_str_read(&self.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_the_guest_lays_out() {
        let mut m = Message::new(MessageKind::AssertFail);
        m.line = 42;
        m.flags = FLAG_HAS_VALUES;
        m.values = [1, 2, 3, 4];
        m.file = crate::fixed_str("src/cases.rs");
        m.text = crate::fixed_str("a == b");
        // Same bytes as the guest's in-memory representation.
        let mut raw = [0u8; MESSAGE_SIZE];
        raw[0..4].copy_from_slice(&m.magic.to_le_bytes());
        raw[4..8].copy_from_slice(&m.kind.to_le_bytes());
        raw[8..12].copy_from_slice(&m.line.to_le_bytes());
        raw[12..16].copy_from_slice(&m.flags.to_le_bytes());
        for (i, v) in m.values.iter().enumerate() {
            raw[16 + 8 * i..24 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        raw[48..48 + FILE_LEN].copy_from_slice(&m.file);
        raw[48 + FILE_LEN..].copy_from_slice(&m.text);
        assert_eq!(m.to_bytes(), raw, "to_bytes is the in-memory layout");
        let d = Message::from_bytes(&raw);
        assert_eq!(d, m);
        assert_eq!(d.text_str(), "a == b");
        assert_eq!(d.file_str(), "src/cases.rs");
        assert_eq!(MessageKind::from_raw(d.kind), Some(MessageKind::AssertFail));
    }

    #[test]
    fn channels_round_trip_and_unknown_ones_are_refused() {
        for c in [Channel::Exit, Channel::Stream] {
            assert_eq!(Channel::from_raw(c as u64), Some(c));
        }
        assert_eq!(Channel::from_raw(2), None);
    }
}
