//! Case descriptors and the shared vocabulary of host-side expectations.
//!
//! A case is declared once, in the guest binary, with `guest_lib::case!`. The macro places a
//! [`CaseDesc`] in the ELF section [`CASE_SECTION`]; the host reads that section to build its
//! case table, so the runner, `--list`, the report and the expectations all see the same set.
//! What the host must do or check while the case runs is named by a [`HostCheck`]; the values
//! both sides use for it are the constants in [`io`].

/// ELF section holding the [`CaseDesc`] array (a C identifier, so the linker also defines
/// `__start_pvmc_cases`/`__stop_pvmc_cases`).
pub const CASE_SECTION: &str = "pvmc_cases";
/// [`CaseDesc::magic`] ("CASE").
pub const CASE_MAGIC: u32 = u32::from_le_bytes(*b"CASE");
/// [`CaseDesc::version`] of this layout.
pub const CASE_DESC_VERSION: u16 = 3;
/// Bytes of [`CaseDesc::name`].
pub const NAME_LEN: usize = 48;
/// Bytes of [`CaseDesc::requirements`].
pub const REQS_LEN: usize = 64;
/// Bytes of [`CaseDesc::summary`].
pub const SUMMARY_LEN: usize = 120;

/// [`CaseDesc::flags`]: only run with `--selftest` (and by the suite's own tests).
pub const FLAG_SELFTEST: u32 = 1 << 0;
/// [`CaseDesc::flags`]: create an in-kernel irqchip (LAPIC) for this case.
pub const FLAG_IRQCHIP: u32 = 1 << 1;
/// [`CaseDesc::flags`]: part of the smoke suite (a fast, broad sample; `--suite smoke`).
pub const FLAG_SMOKE: u32 = 1 << 2;
/// [`CaseDesc::flags`]: only in the full suite (stress or long cases; `--suite full`).
pub const FLAG_SLOW: u32 = 1 << 3;
/// [`CaseDesc::flags`]: give the vCPUs the highest ids the host allows (the last vCPU gets
/// `KVM_CAP_MAX_VCPU_ID - 1`).
pub const FLAG_HIGH_VCPU_ID: u32 = 1 << 4;
/// [`CaseDesc::flags`]: opt-in only: runs only when asked for by name with `--opt-in` (cases
/// that could reach past the host under test, such as VMCALL on a nested host).
pub const FLAG_OPT_IN: u32 = 1 << 5;
/// [`CaseDesc::flags`]: the case checks what the local dialect's host shows an x86 guest (its
/// MSRs and CPUID leaves); it runs only where the host speaks that dialect and SKIPs elsewhere.
pub const FLAG_LOCAL_DIALECT: u32 = 1 << 6;

/// Host-side behaviour a case needs beyond the report channel. Each variant is implemented
/// once by the host harness (an exhaustive `match`), and its constants live in [`io`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostCheck {
    /// Nothing beyond the report channel.
    None = 0,
    /// Port I/O echo device on [`io::ECHO_PORT`]: the host records every OUT and answers
    /// INs; it checks the OUTs against [`io::PIO_OUT`].
    PortIo = 1,
    /// MMIO device in the MMIO window: the host checks the write against [`io::MMIO_WRITE`]
    /// and answers the read with [`io::MMIO_READ_VALUE`].
    Mmio = 2,
    /// The guest executes `hlt` [`io::HLT_COUNT`] times; the host must see exactly that many
    /// `KVM_EXIT_HLT`s, each after a checkpoint.
    HltExit = 3,
    /// Benchmark: the host answers OUTs to [`io::BENCH_PORT`] and MMIO at
    /// [`io::BENCH_MMIO_OFFSET`] as fast as it can and collects `Sample` reports.
    Bench = 4,
    /// The guest loops on `out` to [`io::BENCH_PORT`] forever once it is set up: the host
    /// times the exits (the runner's own per-exit cost against a raw `KVM_RUN` loop).
    ExitLoop = 5,
    /// The guest does nothing: the host measures the VM lifecycle (create, boot, report,
    /// teardown). Its check is the host's: the guest must reach its case and report PASS.
    Lifecycle = 6,
    /// A scratch device: ports [`io::SCRATCH_PORT`].. and MMIO at [`io::SCRATCH_MMIO_OFFSET`]..
    /// of the window are register files (a write stores its bytes, a read returns them); MMIO
    /// anywhere else (no memory there) reads as [`io::UNBACKED_BYTE`]s and drops writes. The
    /// host logs every access, which the guest reads back with the `abi::vmm::Op::DeviceLog`
    /// request. Port I/O elsewhere is unexpected.
    Scratch = 7,
    /// A second VM at the same time: at checkpoint 0 the host starts another VM running the
    /// same case with [`io::SIBLING_PARAM`] added to its parameter (while this one goes on
    /// running); at checkpoint 1 it waits for that VM's result, which must be PASS.
    Sibling = 8,
    /// The guest reports checkpoint 0, then does what must make the host shut the vCPU down
    /// (a triple fault, e.g. an invalid PVM entry point): the case passes when the run ends in
    /// a shutdown after checkpoint 0 and before any final status, with no check failed before
    /// it (else FAIL). A guest that goes on reports FAIL itself.
    Shutdown = 9,
}

impl HostCheck {
    /// Decodes the raw value.
    pub fn from_raw(raw: u8) -> Option<Self> {
        Some(match raw {
            0 => Self::None,
            1 => Self::PortIo,
            2 => Self::Mmio,
            3 => Self::HltExit,
            4 => Self::Bench,
            5 => Self::ExitLoop,
            6 => Self::Lifecycle,
            7 => Self::Scratch,
            8 => Self::Sibling,
            9 => Self::Shutdown,
            _ => return None,
        })
    }
}

/// Values shared by a guest case and its [`HostCheck`].
pub mod io {
    /// Echo port of [`super::HostCheck::PortIo`].
    pub const ECHO_PORT: u16 = 0x0cf4;
    /// The OUTs the guest performs, in order: (size in bytes, value).
    pub const PIO_OUT: [(u8, u32); 3] = [(1, 0x5a), (2, 0xa55a), (4, 0xdead_beef)];
    /// What an IN of `size` bytes from [`ECHO_PORT`] returns: the last OUT value, bitwise
    /// inverted, truncated to `size`.
    pub const fn pio_in_answer(last_out: u32, size: u8) -> u32 {
        let v = !last_out;
        match size {
            1 => v & 0xff,
            2 => v & 0xffff,
            _ => v,
        }
    }
    /// Offset into the MMIO window of the write of [`super::HostCheck::Mmio`].
    pub const MMIO_WRITE_OFFSET: u64 = 0x10;
    /// The MMIO write: (size, value).
    pub const MMIO_WRITE: (u8, u64) = (4, 0xfeed_f00d);
    /// Offset into the MMIO window of the read.
    pub const MMIO_READ_OFFSET: u64 = 0x20;
    /// Value the host answers the 4-byte MMIO read with.
    pub const MMIO_READ_VALUE: u32 = 0x1234_5678;
    /// Number of `hlt` the guest of [`super::HostCheck::HltExit`] executes.
    pub const HLT_COUNT: u64 = 3;
    /// Port the exit benchmarks write to.
    pub const BENCH_PORT: u16 = 0x0cf6;
    /// Offset into the MMIO window of the MMIO exit benchmark.
    pub const BENCH_MMIO_OFFSET: u64 = 0x100;
    /// First port of [`super::HostCheck::Scratch`]'s port register file.
    pub const SCRATCH_PORT: u16 = 0x0d00;
    /// Ports of the scratch register file (one byte each).
    pub const SCRATCH_PORTS: u16 = 8;
    /// The scratch device's counter port: each IN returns how many INs it answered before
    /// (0, 1, 2 ...), truncated to the access size; OUTs to it are unexpected.
    pub const SCRATCH_COUNTER_PORT: u16 = SCRATCH_PORT + SCRATCH_PORTS;
    /// Offset into the MMIO window of the scratch device's MMIO register file.
    pub const SCRATCH_MMIO_OFFSET: u64 = 0x1_0000;
    /// Bytes of the MMIO register file (two pages, for accesses that cross a page).
    pub const SCRATCH_MMIO_SIZE: u64 = 0x2000;
    /// What a byte of the MMIO register file holds before anything wrote it.
    pub const fn scratch_initial(offset: u64) -> u8 {
        (offset as u8) ^ 0xa5
    }
    /// What [`super::HostCheck::Scratch`] answers for each byte of an MMIO read outside its
    /// register file (guest-physical space without memory).
    pub const UNBACKED_BYTE: u8 = 0xff;
    /// Added to the case parameter of the second VM [`super::HostCheck::Sibling`] starts.
    pub const SIBLING_PARAM: u64 = 1 << 32;
    /// A logged access's flags (`abi::vmm::Op::DeviceLog` `r0`): a write (else a read).
    pub const LOG_WRITE: u64 = 1 << 0;
    /// A logged access's flags: MMIO (else port I/O).
    pub const LOG_MMIO: u64 = 1 << 1;
    /// A logged access's flags: bits 8.. hold the size in bytes.
    pub const LOG_SIZE_SHIFT: u32 = 8;
}

/// The outcome a self-test is designed to produce ([`CaseDesc::designed`]); the suite's own
/// tests check that it does.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Designed {
    /// Not a self-test: the case must pass (or be a documented deviation).
    Pass = 0,
    /// A failed check.
    Fail = 1,
    /// No final status (timeout).
    Crash = 2,
    /// `skip!`.
    Skip = 3,
    /// `error!`.
    Error = 4,
}

impl Designed {
    /// Decodes the raw value.
    pub fn from_raw(raw: u8) -> Option<Self> {
        Some(match raw {
            0 => Self::Pass,
            1 => Self::Fail,
            2 => Self::Crash,
            3 => Self::Skip,
            4 => Self::Error,
            _ => return None,
        })
    }
}

/// A case descriptor as stored in [`CASE_SECTION`]. `E` is the entry-point type: the guest
/// stores a function pointer, the host reads it back as `u64` (same size and offset).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaseDesc<E> {
    /// [`CASE_MAGIC`].
    pub magic: u32,
    /// [`CASE_DESC_VERSION`].
    pub version: u16,
    /// [`crate::env::Area`] discriminant.
    pub area: u8,
    /// [`HostCheck`] discriminant.
    pub host: u8,
    /// Mask of [`crate::env::Env::bit`] the case applies to.
    pub envs: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Per-case timeout in milliseconds; 0 = the runner's default.
    pub timeout_ms: u32,
    /// Number of vCPUs (1 to `layout::MAX_VCPUS`).
    pub vcpus: u16,
    /// [`Designed`] outcome (self-tests), else [`Designed::Pass`].
    pub designed: u8,
    /// Zero.
    pub reserved: u8,
    /// Case name (`area.what`), NUL padded.
    pub name: [u8; NAME_LEN],
    /// Requirement ids, comma separated, NUL padded.
    pub requirements: [u8; REQS_LEN],
    /// One-line description, NUL padded.
    pub summary: [u8; SUMMARY_LEN],
    /// Parameter the case function reads back (`guest_lib::rt::case_param`): one function
    /// serves a table of cases, each its own instance.
    pub param: u64,
    /// Entry point of the case function.
    pub entry: E,
}

/// Size of one descriptor.
pub const CASE_DESC_SIZE: usize = core::mem::size_of::<CaseDesc<u64>>();
/// Offset of [`CaseDesc::param`].
pub const PARAM_OFFSET: usize = 256;
/// Offset of [`CaseDesc::entry`].
pub const ENTRY_OFFSET: usize = core::mem::offset_of!(CaseDesc<u64>, entry);

const _: () = {
    assert!(CASE_DESC_SIZE == 272);
    assert!(core::mem::size_of::<CaseDesc<fn()>>() == CASE_DESC_SIZE);
    assert!(core::mem::offset_of!(CaseDesc<fn()>, entry) == ENTRY_OFFSET);
    assert!(core::mem::offset_of!(CaseDesc<u64>, envs) == 8);
    assert!(core::mem::offset_of!(CaseDesc<u64>, flags) == 12);
    assert!(core::mem::offset_of!(CaseDesc<u64>, timeout_ms) == 16);
    assert!(core::mem::offset_of!(CaseDesc<u64>, vcpus) == 20);
    assert!(core::mem::offset_of!(CaseDesc<u64>, designed) == 22);
    assert!(core::mem::offset_of!(CaseDesc<u64>, name) == 24);
    assert!(core::mem::offset_of!(CaseDesc<u64>, requirements) == 24 + NAME_LEN);
    assert!(core::mem::offset_of!(CaseDesc<u64>, summary) == 24 + NAME_LEN + REQS_LEN);
    assert!(core::mem::offset_of!(CaseDesc<u64>, param) == PARAM_OFFSET);
    assert!(ENTRY_OFFSET == 264);
};

impl CaseDesc<u64> {
    /// Decodes one descriptor from section bytes (little endian). Returns `None` when the
    /// magic or version does not match.
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < CASE_DESC_SIZE {
            return None;
        }
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let mut e = [0u8; 8];
        e.copy_from_slice(&b[ENTRY_OFFSET..ENTRY_OFFSET + 8]);
        let mut name = [0u8; NAME_LEN];
        name.copy_from_slice(&b[24..24 + NAME_LEN]);
        let mut requirements = [0u8; REQS_LEN];
        requirements.copy_from_slice(&b[24 + NAME_LEN..24 + NAME_LEN + REQS_LEN]);
        let mut summary = [0u8; SUMMARY_LEN];
        summary.copy_from_slice(&b[24 + NAME_LEN + REQS_LEN..PARAM_OFFSET]);
        let mut p = [0u8; 8];
        p.copy_from_slice(&b[PARAM_OFFSET..PARAM_OFFSET + 8]);
        let d = Self {
            magic: u32_at(0),
            version: u16_at(4),
            area: b[6],
            host: b[7],
            envs: u32_at(8),
            flags: u32_at(12),
            timeout_ms: u32_at(16),
            vcpus: u16_at(20),
            designed: b[22],
            reserved: b[23],
            name,
            requirements,
            summary,
            param: u64::from_le_bytes(p),
            entry: u64::from_le_bytes(e),
        };
        (d.magic == CASE_MAGIC && d.version == CASE_DESC_VERSION).then_some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rejects_bad_magic_and_short_input() {
        assert!(CaseDesc::parse(&[0u8; CASE_DESC_SIZE]).is_none());
        assert!(CaseDesc::parse(&[0u8; 10]).is_none());
        let mut b = [0u8; CASE_DESC_SIZE];
        b[0..4].copy_from_slice(&CASE_MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&CASE_DESC_VERSION.to_le_bytes());
        b[6] = 3;
        b[24..27].copy_from_slice(b"x.y");
        b[PARAM_OFFSET..ENTRY_OFFSET].copy_from_slice(&7u64.to_le_bytes());
        b[ENTRY_OFFSET..].copy_from_slice(&0x20_1000u64.to_le_bytes());
        let d = CaseDesc::parse(&b).expect("valid descriptor");
        assert_eq!(d.area, 3);
        assert_eq!(crate::fixed_str_read(&d.name), "x.y");
        assert_eq!(d.entry, 0x20_1000);
        assert_eq!(d.param, 7);
    }

    #[test]
    fn pio_answers_are_inverted_and_truncated() {
        assert_eq!(io::pio_in_answer(0x5a, 1), 0xa5);
        assert_eq!(io::pio_in_answer(0xdead_beef, 4), 0x2152_4110);
        assert_eq!(io::pio_in_answer(0xa55a, 2), 0x5aa5);
    }
}
