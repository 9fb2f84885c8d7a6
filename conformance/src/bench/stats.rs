//! Statistics of benchmark series: median, p99 and the coefficient of variation of the
//! per-repetition medians.

use serde::{Deserialize, Serialize};

/// Statistics of one series (ns per operation).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Median over all samples.
    pub median_ns: f64,
    /// 99th percentile over all samples.
    pub p99_ns: f64,
    /// Coefficient of variation of the per-repetition medians.
    pub cv: f64,
    /// Samples.
    pub samples: usize,
    /// Median of each repetition (one VM each), in run order: shows whether a high CV comes
    /// from one disturbed VM or from a general spread.
    #[serde(default)]
    pub rep_medians_ns: Vec<f64>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The median of `v`.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    percentile(&s, 0.5)
}

/// Statistics of repeated runs: `reps[i]` are the samples of repetition `i`.
pub fn stats(reps: &[Vec<f64>]) -> Stats {
    let mut all: Vec<f64> = reps.iter().flatten().copied().collect();
    all.sort_by(f64::total_cmp);
    let meds: Vec<f64> = reps
        .iter()
        .filter(|r| !r.is_empty())
        .map(|r| median(r))
        .collect();
    let cv = if meds.len() < 2 {
        0.0
    } else {
        let mean = meds.iter().sum::<f64>() / meds.len() as f64;
        let var = meds.iter().map(|m| (m - mean).powi(2)).sum::<f64>() / (meds.len() - 1) as f64;
        if mean > 0.0 { var.sqrt() / mean } else { 0.0 }
    };
    Stats {
        median_ns: percentile(&all, 0.5),
        p99_ns: percentile(&all, 0.99),
        cv,
        samples: all.len(),
        rep_medians_ns: meds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_known_series() {
        let s = stats(&[
            vec![1.0, 2.0, 3.0],
            vec![2.0, 2.0, 2.0],
            vec![3.0, 4.0, 5.0],
        ]);
        assert_eq!(s.samples, 9);
        assert_eq!(s.median_ns, 2.0);
        assert_eq!(s.p99_ns, 5.0);
        // Repetition medians 2, 2, 4: mean 8/3, sample sd sqrt(4/3).
        assert!((s.cv - (4.0f64 / 3.0).sqrt() / (8.0 / 3.0)).abs() < 1e-12);
        assert_eq!(stats(&[vec![7.0]]).cv, 0.0);
        assert!(stats(&[]).median_ns.is_nan());
    }
}
