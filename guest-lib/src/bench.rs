//! Benchmark helpers: time batches of operations with the TSC and report each batch as a
//! `Sample` (metric name, operations, cycles, the native baseline it compares with). The host
//! turns cycles into nanoseconds with its own TSC calibration and computes the statistics.
//! Reporting happens outside the timed region.

pub use abi::bench::{Baseline, SAMPLES};

use crate::arch::instr;
use crate::report;

/// Runs `op` `iters` times per sample after a short warm-up, `samples` times, reporting each
/// sample under `metric`, compared with `baseline`.
pub fn measure(metric: &str, baseline: Baseline, samples: u32, iters: u32, mut op: impl FnMut()) {
    for _ in 0..iters.min(8) {
        op();
    }
    for _ in 0..samples {
        let t0 = instr::rdtsc();
        for _ in 0..iters {
            op();
        }
        let dt = instr::rdtsc().wrapping_sub(t0);
        report::sample(metric, baseline, u64::from(iters), dt);
    }
}
