//! Native baselines measured on the host in the same run: getpid, a page fault on fresh
//! anonymous memory, a signal round trip, CPUID (`abi::bench::Baseline`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use abi::bench::{Baseline, SAMPLES};
use serde::{Deserialize, Serialize};

use super::stats::{Stats, stats};
use crate::Error;

/// A native baseline measured on the host.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NativeRow {
    /// Name (`Baseline::name`).
    pub name: String,
    /// Statistics.
    #[serde(flatten)]
    pub stats: Stats,
}

fn batch(iters: u32, op: &mut dyn FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..iters {
        op();
    }
    t.elapsed().as_secs_f64() * 1e9 / f64::from(iters)
}

fn series(reps: usize, f: &mut dyn FnMut() -> Result<f64, Error>) -> Result<Stats, Error> {
    let mut all = Vec::new();
    for _ in 0..reps {
        all.push((0..SAMPLES).map(|_| f()).collect::<Result<Vec<_>, _>>()?);
    }
    Ok(stats(&all))
}

fn page_fault_ns() -> Result<f64, Error> {
    const PAGES: usize = 64;
    let mut m = memmap2::MmapMut::map_anon(PAGES * 4096).map_err(|error| Error::Io {
        path: "anonymous mapping".into(),
        error,
    })?;
    let t = Instant::now();
    for p in 0..PAGES {
        m[p * 4096] = 1;
    }
    let ns = t.elapsed().as_secs_f64() * 1e9 / PAGES as f64;
    std::hint::black_box(&m);
    Ok(ns)
}

fn signal_stats(reps: usize) -> Result<Stats, Error> {
    let flag = Arc::new(AtomicBool::new(false));
    let sig = signal_hook::consts::SIGUSR2;
    let id = signal_hook::flag::register(sig, Arc::clone(&flag)).map_err(|error| Error::Io {
        path: "SIGUSR2 handler".into(),
        error,
    })?;
    let mut failed = None;
    let s = series(reps, &mut || {
        Ok(batch(500, &mut || {
            if let Err(e) = signal_hook::low_level::raise(sig) {
                failed.get_or_insert(e);
            }
            flag.store(false, Ordering::Relaxed);
        }))
    });
    signal_hook::low_level::unregister(id);
    match failed {
        Some(error) => Err(Error::Io {
            path: "raise(SIGUSR2)".into(),
            error,
        }),
        None => s,
    }
}

/// Every native baseline, each as `reps` repetitions of timed batches.
pub fn native_baselines(reps: usize) -> Result<Vec<NativeRow>, Error> {
    let getpid = series(reps, &mut || {
        Ok(batch(2000, &mut || {
            std::hint::black_box(std::process::id());
        }))
    })?;
    let page_fault = series(reps, &mut page_fault_ns)?;
    let signal = signal_stats(reps)?;
    let cpuid = series(reps, &mut || {
        Ok(batch(200, &mut || {
            std::hint::black_box(core::arch::x86_64::__cpuid(0));
        }))
    })?;
    Ok([
        (Baseline::Getpid, getpid),
        (Baseline::PageFault, page_fault),
        (Baseline::Signal, signal),
        (Baseline::Cpuid, cpuid),
    ]
    .into_iter()
    .map(|(b, stats)| NativeRow {
        name: b.name().into(),
        stats,
    })
    .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_baselines_have_every_sample() {
        let n = native_baselines(2).expect("baselines");
        assert_eq!(n.len(), 4);
        for r in &n {
            assert_eq!(r.stats.samples, 2 * SAMPLES as usize, "{r:?}");
            assert!(r.stats.median_ns > 0.0 && r.stats.median_ns < 1e9, "{r:?}");
        }
    }
}
