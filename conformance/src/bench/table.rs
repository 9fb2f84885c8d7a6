//! The benchmark table as text, and `--compare` of two bench reports.

use super::BenchReport;

/// The benchmark table as text.
pub fn table(r: &BenchReport) -> String {
    let mut out = format!(
        "{:<22} {:<9} {:>12} {:>12} {:>7} {:>9}  {}\n",
        "benchmark", "env", "median ns", "p99 ns", "cv %", "ratio", "baseline / note"
    );
    for b in &r.benchmarks {
        if b.stats.samples == 0 {
            out += &format!(
                "{:<22} {:<9} {:>12} {:>12} {:>7} {:>9}  {}\n",
                b.name, b.env, "-", "-", "-", "-", b.note
            );
            continue;
        }
        out += &format!(
            "{:<22} {:<9} {:>12.1} {:>12.1} {:>7.2} {:>9}  {}\n",
            b.name,
            b.env,
            b.stats.median_ns,
            b.stats.p99_ns,
            b.stats.cv * 100.0,
            b.ratio_to_native.map_or("-".into(), |x| format!("{x:.2}x")),
            b.baseline.as_deref().unwrap_or("")
        );
    }
    for n in &r.native {
        out += &format!(
            "{:<22} {:<9} {:>12.1} {:>12.1} {:>7.2} {:>9}\n",
            n.name,
            "host",
            n.stats.median_ns,
            n.stats.p99_ns,
            n.stats.cv * 100.0,
            "1.00x"
        );
    }
    for o in &r.runner_overhead_by_env {
        out += &format!(
            "runner overhead {:<9} raw KVM_RUN exit {:.1} ns, runner exit {:.1} ns ({:.3}x), case overhead {}, per-instance overhead in a run {}\n",
            o.env,
            o.raw_exit_ns,
            o.runner_exit_ns,
            o.runner_to_raw,
            o.case_overhead_ms
                .map_or("not measured".into(), |ms| format!("{ms:.2} ms (median)")),
            o.instance_overhead_ms
                .map_or("not measured".into(), |ms| format!(
                    "{ms:.3} ms (median; goal <= 1 ms: {})",
                    if ms <= 1.0 { "met" } else { "NOT met" }
                ))
        );
    }
    out
}

/// `b / a` per (benchmark, env) present in both reports, as text.
pub fn compare(a: &BenchReport, b: &BenchReport) -> String {
    let mut out = format!(
        "{:<22} {:<9} {:>12} {:>12} {:>8}\n",
        "benchmark", "env", "a median", "b median", "b/a"
    );
    for x in a.benchmarks.iter().filter(|x| x.stats.samples > 0) {
        if let Some(y) = b
            .benchmarks
            .iter()
            .find(|y| y.name == x.name && y.env == x.env && y.stats.samples > 0)
        {
            out += &format!(
                "{:<22} {:<9} {:>12.1} {:>12.1} {:>7.3}x\n",
                x.name,
                x.env,
                x.stats.median_ns,
                y.stats.median_ns,
                y.stats.median_ns / x.stats.median_ns
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{BenchRow, SCHEMA, Stats};

    #[test]
    fn compare_matches_rows_by_name_and_env() {
        let row = |name: &str, env: &str, m: f64| BenchRow {
            name: name.into(),
            env: env.into(),
            stats: Stats {
                median_ns: m,
                p99_ns: m,
                cv: 0.0,
                samples: 1,
                rep_medians_ns: vec![m],
            },
            baseline: None,
            ratio_to_native: None,
            note: String::new(),
        };
        let rep = |rows| BenchReport {
            schema: SCHEMA.into(),
            target: "local".into(),
            host: crate::report::fixtures::run_info().host,
            tsc_khz: 1,
            repetitions: 1,
            benchmarks: rows,
            native: vec![],
            runner_overhead: None,
            runner_overhead_by_env: vec![],
            wall_ms: 0,
        };
        let a = rep(vec![row("x", "hvm64", 100.0), row("y", "hvm64", 10.0)]);
        let b = rep(vec![row("x", "hvm64", 150.0), row("x", "pv-local", 1.0)]);
        let c = compare(&a, &b);
        assert!(c.contains("1.500x"), "{c}");
        assert!(!c.contains("\ny "), "{c}");
    }
}
