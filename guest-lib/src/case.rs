//! Declaring cases: [`Spec`] (a `const` builder) and the [`case!`](crate::case!) macro.
//!
//! ```text
//! fn port_out_in() { /* ... */ }
//! case!(port_out_in, Spec::new("io.port_out_in", Area::Io, "OUT/IN of 1, 2, 4 bytes")
//!     .host(HostCheck::PortIo)
//!     .reqs("X86-IO-1"));
//! ```
//! The macro places a `CaseDesc` in the `pvmc_cases` ELF section; the host reads that section
//! to know the cases, so there is no other list to keep in sync.

use abi::case::{CASE_DESC_VERSION, CASE_MAGIC, CaseDesc, Designed, FLAG_SELFTEST, HostCheck};
use abi::env::{ALL_ENVS, Area};
use abi::fixed_str;

/// A case's metadata, built in `const` context.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    name: &'static str,
    area: Area,
    summary: &'static str,
    envs: u32,
    host: HostCheck,
    flags: u32,
    timeout_ms: u32,
    reqs: &'static str,
    vcpus: u16,
    designed: Designed,
    param: u64,
}

impl Spec {
    /// A case named `name` (`area.what`), in `area`, for every environment, no host check.
    pub const fn new(name: &'static str, area: Area, summary: &'static str) -> Self {
        Self {
            name,
            area,
            summary,
            envs: ALL_ENVS,
            host: HostCheck::None,
            flags: 0,
            timeout_ms: 0,
            reqs: "",
            vcpus: 1,
            designed: Designed::Pass,
            param: 0,
        }
    }

    /// The parameter the case function reads with `guest_lib::rt::case_param` (for tables of
    /// cases sharing one function; see `case_table!`).
    pub const fn param(mut self, param: u64) -> Self {
        self.param = param;
        self
    }

    /// Environments the case applies to (mask of `Env::bit`).
    pub const fn envs(mut self, envs: u32) -> Self {
        self.envs = envs;
        self
    }

    /// The host-side behaviour the case needs.
    pub const fn host(mut self, host: HostCheck) -> Self {
        self.host = host;
        self
    }

    /// `FLAG_*` bits from `abi::case`.
    pub const fn flags(mut self, flags: u32) -> Self {
        self.flags = flags;
        self
    }

    /// A timeout other than the runner's default.
    pub const fn timeout_ms(mut self, ms: u32) -> Self {
        self.timeout_ms = ms;
        self
    }

    /// Number of vCPUs (vCPU 0 runs the case; the others idle, see `crate::smp`).
    pub const fn vcpus(mut self, n: u16) -> Self {
        assert!(
            n >= 1 && n as u32 <= abi::layout::MAX_VCPUS,
            "vCPU count out of range"
        );
        self.vcpus = n;
        self
    }

    /// Part of the smoke suite (`--suite smoke`): fast and broad.
    pub const fn smoke(mut self) -> Self {
        self.flags |= abi::case::FLAG_SMOKE;
        self
    }

    /// Only in the full suite (`--suite full`): stress or long-running.
    pub const fn slow(mut self) -> Self {
        self.flags |= abi::case::FLAG_SLOW;
        self
    }

    /// Checks the local dialect's host as an x86 guest sees it: SKIPs on any other host
    /// (`abi::case::FLAG_LOCAL_DIALECT`).
    pub const fn local_dialect(mut self) -> Self {
        self.flags |= abi::case::FLAG_LOCAL_DIALECT;
        self
    }

    /// A self-test of the suite that must end with `outcome` (only run with `--selftest`).
    pub const fn selftest(mut self, outcome: Designed) -> Self {
        self.flags |= FLAG_SELFTEST;
        self.designed = outcome;
        self
    }

    /// Requirement ids (comma separated) the case checks.
    pub const fn reqs(mut self, reqs: &'static str) -> Self {
        self.reqs = reqs;
        self
    }
}

/// Builds the descriptor the `case!` macro stores. The name must be `area.what` and not empty
/// (checked at compile time; the host checks it again, with duplicates, when it loads the
/// image).
pub const fn describe(s: Spec, entry: fn()) -> CaseDesc<fn()> {
    assert!(!s.name.is_empty(), "a case needs a name");
    CaseDesc {
        magic: CASE_MAGIC,
        version: CASE_DESC_VERSION,
        area: s.area as u8,
        host: s.host as u8,
        envs: s.envs,
        flags: s.flags,
        timeout_ms: s.timeout_ms,
        vcpus: s.vcpus,
        designed: s.designed as u8,
        reserved: 0,
        name: fixed_str(s.name),
        requirements: fixed_str(s.reqs),
        summary: fixed_str(s.summary),
        param: s.param,
        entry,
    }
}
