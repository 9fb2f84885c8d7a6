//! Benchmark helpers: time batches of operations with the TSC and report each batch as a
//! `Sample` (metric name, operations, cycles). The host turns cycles into nanoseconds with its
//! own TSC calibration and computes the statistics. Reporting happens outside the timed region.

use crate::arch::instr;
use crate::report;

/// Default samples per metric and repetition.
pub const SAMPLES: u32 = 40;

/// Runs `op` `iters` times per sample after a short warm-up, `samples` times, reporting each
/// sample under `metric`.
pub fn measure(metric: &str, samples: u32, iters: u32, mut op: impl FnMut()) {
    for _ in 0..iters.min(8) {
        op();
    }
    for _ in 0..samples {
        let t0 = instr::rdtsc();
        for _ in 0..iters {
            op();
        }
        let dt = instr::rdtsc().wrapping_sub(t0);
        report::sample(metric, u64::from(iters), dt);
    }
}
