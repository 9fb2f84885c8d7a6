//! What guest benchmarks and the host agree on: how many samples a metric takes per VM, and
//! which native (host) baseline a metric is compared with. The guest names the baseline in
//! each `Sample` report (`values[2]`), so the host keeps no list of guest metric names.

/// Samples per metric and repetition (guest benchmarks and host baselines alike).
pub const SAMPLES: u32 = 40;

/// The host-side measurement a guest metric is compared with.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Baseline {
    /// Not compared.
    None = 0,
    /// `getpid()` on the host: a native system call.
    Getpid = 1,
    /// A signal round trip on the host: a native user -> kernel -> user event.
    Signal = 2,
    /// A page fault on fresh anonymous host memory.
    PageFault = 3,
    /// `cpuid` executed by the host process.
    Cpuid = 4,
    /// One port-I/O exit of a raw `KVM_RUN` loop (the runner's lower bound).
    RawExit = 5,
}

impl Baseline {
    /// Every baseline, in report order.
    pub const ALL: [Baseline; 6] = [
        Baseline::None,
        Baseline::Getpid,
        Baseline::Signal,
        Baseline::PageFault,
        Baseline::Cpuid,
        Baseline::RawExit,
    ];

    /// Decodes the raw value.
    pub fn from_raw(raw: u64) -> Option<Self> {
        Baseline::ALL.into_iter().find(|b| *b as u64 == raw)
    }

    /// Name of the baseline row in the bench report.
    pub const fn name(self) -> &'static str {
        match self {
            Baseline::None => "",
            Baseline::Getpid => "native_getpid",
            Baseline::Signal => "native_signal",
            Baseline::PageFault => "native_page_fault",
            Baseline::Cpuid => "native_cpuid",
            Baseline::RawExit => "raw_kvm_exit",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baselines_round_trip() {
        for b in Baseline::ALL {
            assert_eq!(Baseline::from_raw(b as u64), Some(b));
        }
        assert_eq!(Baseline::from_raw(99), None);
    }
}
