//! The benchmark chart of the certificate, as inline SVG written by hand (no font files, no
//! scripts): one horizontal bar per (benchmark, environment) and per native baseline, the
//! median ns per operation on a log scale, with a whisker from the lowest to the highest
//! per-VM median (how much the number moves from VM to VM). Colours follow the environment
//! (`Env::ALL` order, as the `cargo xtask bench` plot); native host rows are grey.

use std::fmt::Write;

use abi::env::Env;

use super::html::escape;
use crate::bench::{BenchReport, Stats};

/// One colour per environment, in `Env::ALL` order.
const PALETTE: [&str; 5] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd"];
/// Native host rows.
const HOST_GREY: &str = "#555555";

const WIDTH: f64 = 1100.0;
const LABEL_W: f64 = 330.0;
const PLOT_W: f64 = 660.0;
const ROW_H: f64 = 20.0;
const TOP: f64 = 54.0;
const BOTTOM: f64 = 40.0;

fn env_color(env: &str) -> &'static str {
    Env::ALL
        .iter()
        .position(|e| e.name() == env)
        .map_or(HOST_GREY, |i| PALETTE[i % PALETTE.len()])
}

/// `12.3 ns`, `4.56 µs`, `7.89 ms`, `1.23 s`.
pub fn format_ns(ns: f64) -> String {
    let (v, unit) = if ns < 1e3 {
        (ns, "ns")
    } else if ns < 1e6 {
        (ns / 1e3, "µs")
    } else if ns < 1e9 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    if v < 10.0 {
        format!("{v:.2} {unit}")
    } else if v < 100.0 {
        format!("{v:.1} {unit}")
    } else {
        format!("{v:.0} {unit}")
    }
}

/// The grid label of 10^`dec` ns: `0.1 ns`, `1 ns`, `10 ns`, `100 ns`, `1 µs`, ...
fn decade_label(dec: i32) -> String {
    let (unit, base) = match dec {
        ..=2 => ("ns", 0),
        3..=5 => ("µs", 3),
        6..=8 => ("ms", 6),
        _ => ("s", 9),
    };
    let exp = dec - base;
    if exp >= 0 {
        format!("{} {unit}", 10u64.pow(exp.unsigned_abs()))
    } else {
        format!("{} {unit}", 10f64.powi(exp))
    }
}

struct Bar {
    label: String,
    color: &'static str,
    median: f64,
    spread: Option<(f64, f64)>,
    p99: f64,
}

fn bar(label: String, color: &'static str, s: &Stats) -> Option<Bar> {
    let ok = |v: f64| v.is_finite() && v > 0.0;
    if !ok(s.median_ns) || s.samples == 0 {
        return None;
    }
    let meds: Vec<f64> = s
        .rep_medians_ns
        .iter()
        .copied()
        .filter(|v| ok(*v))
        .collect();
    let spread = (meds.len() >= 2).then(|| {
        (
            meds.iter().copied().fold(f64::INFINITY, f64::min),
            meds.iter().copied().fold(0.0, f64::max),
        )
    });
    Some(Bar {
        label,
        color,
        median: s.median_ns,
        spread,
        p99: s.p99_ns,
    })
}

/// The chart of `r`, or `None` when it has no row with a positive median.
pub fn bench_chart(r: &BenchReport) -> Option<String> {
    let mut bars: Vec<Bar> = r
        .benchmarks
        .iter()
        .filter_map(|b| {
            bar(
                format!("{} ({})", b.name, b.env),
                env_color(&b.env),
                &b.stats,
            )
        })
        .collect();
    bars.extend(
        r.native
            .iter()
            .filter_map(|n| bar(format!("{} (native host)", n.name), HOST_GREY, &n.stats)),
    );
    if bars.is_empty() {
        return None;
    }
    let values = bars
        .iter()
        .flat_map(|b| [Some(b.median), b.spread.map(|s| s.0), b.spread.map(|s| s.1)])
        .flatten();
    let (lo, hi) = values.fold((f64::INFINITY, 0.0_f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo_dec, hi_dec) = (
        lo.log10().floor(),
        hi.log10().ceil().max(lo.log10().floor() + 1.0),
    );
    let x = |v: f64| LABEL_W + (v.log10() - lo_dec) / (hi_dec - lo_dec) * PLOT_W;
    let height = TOP + ROW_H * bars.len() as f64 + BOTTOM;
    let mut s = String::new();
    // `write!` into a String cannot fail.
    let _ = write!(
        s,
        "<svg class=\"chart\" viewBox=\"0 0 {WIDTH} {height}\" width=\"{WIDTH}\" \
         height=\"{height}\" role=\"img\" aria-label=\"benchmark medians\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <text x=\"{LABEL_W}\" y=\"16\" font-size=\"14\" font-weight=\"bold\">median ns per \
         operation (log scale), {} VMs per benchmark; whisker: lowest to highest per-VM \
         median</text>\n",
        r.repetitions
    );
    // Legend: one swatch per colour present, in bar order.
    let mut legend: Vec<(&str, String)> = Vec::new();
    for b in r.benchmarks.iter().filter(|b| b.stats.samples > 0) {
        let c = env_color(&b.env);
        if !legend.iter().any(|(x, _)| *x == c) {
            legend.push((c, b.env.clone()));
        }
    }
    if !r.native.is_empty() {
        legend.push((HOST_GREY, "native host".into()));
    }
    let mut lx = LABEL_W;
    for (color, name) in &legend {
        let _ = write!(
            s,
            "<rect x=\"{lx:.1}\" y=\"24\" width=\"12\" height=\"12\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"34\">{}</text>",
            lx + 16.0,
            escape(name)
        );
        lx += 34.0 + 7.5 * name.chars().count() as f64;
    }
    s.push('\n');
    let plot_bottom = TOP + ROW_H * bars.len() as f64;
    let mut dec = lo_dec;
    while dec <= hi_dec {
        let gx = x(10f64.powf(dec));
        let _ = writeln!(
            s,
            "<line x1=\"{gx:.1}\" y1=\"{:.1}\" x2=\"{gx:.1}\" y2=\"{plot_bottom:.1}\" \
             stroke=\"#cccccc\"/><text x=\"{gx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" \
             fill=\"#333333\">{}</text>",
            TOP - 6.0,
            plot_bottom + 16.0,
            escape(&decade_label(dec as i32))
        );
        dec += 1.0;
    }
    for (i, b) in bars.iter().enumerate() {
        let y = TOP + ROW_H * i as f64;
        let mid = y + ROW_H / 2.0;
        let x0 = x(10f64.powf(lo_dec));
        let tip = format!(
            "{}: median {}, p99 {}",
            b.label,
            format_ns(b.median),
            format_ns(b.p99)
        );
        let _ = writeln!(
            s,
            "<g><title>{}</title><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
             <rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>",
            escape(&tip),
            LABEL_W - 8.0,
            mid + 4.0,
            escape(&b.label),
            y + 3.0,
            (x(b.median) - x0).max(1.0),
            ROW_H - 6.0,
            b.color
        );
        let mut right = x(b.median);
        if let Some((a, z)) = b.spread {
            let (xa, xz) = (x(a), x(z));
            right = right.max(xz);
            let _ = write!(
                s,
                "<line x1=\"{xa:.1}\" y1=\"{mid:.1}\" x2=\"{xz:.1}\" y2=\"{mid:.1}\" \
                 stroke=\"#000000\"/><line x1=\"{xa:.1}\" y1=\"{:.1}\" x2=\"{xa:.1}\" \
                 y2=\"{:.1}\" stroke=\"#000000\"/><line x1=\"{xz:.1}\" y1=\"{:.1}\" \
                 x2=\"{xz:.1}\" y2=\"{:.1}\" stroke=\"#000000\"/>",
                mid - 5.0,
                mid + 5.0,
                mid - 5.0,
                mid + 5.0
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\">{}</text></g>",
            right + 6.0,
            mid + 4.0,
            escape(&format_ns(b.median))
        );
    }
    s.push_str("</svg>\n");
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::bench_report;
    use super::*;

    #[test]
    fn the_chart_has_a_bar_per_measured_row_and_escapes_names() {
        let svg = bench_chart(&bench_report()).expect("a chart");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        // Two bars (the empty row skipped) and two legend swatches.
        assert_eq!(svg.matches("<rect").count(), 4, "{svg}");
        assert!(
            !svg.contains(">hvm64</text>"),
            "no swatch for an environment without bars"
        );
        assert!(svg.contains(">pv-local</text>") && svg.contains(">native host</text>"));
        assert!(svg.contains("hypercall&lt;x&gt; (pv-local)"));
        assert!(!svg.contains("<x>"));
        assert!(svg.contains(PALETTE[1]) && svg.contains(HOST_GREY));
        assert!(svg.contains("1.50 µs") && svg.contains("150 ns"));
        // Decade grid from 100 ns to 10 µs.
        assert!(svg.contains(">100 ns<") && svg.contains(">10 µs<"), "{svg}");
        let mut empty = bench_report();
        empty.benchmarks.clear();
        empty.native.clear();
        assert!(bench_chart(&empty).is_none());
    }

    #[test]
    fn durations_are_formatted_with_their_unit() {
        assert_eq!(format_ns(12.345), "12.3 ns");
        assert_eq!(format_ns(1234.0), "1.23 µs");
        assert_eq!(format_ns(2.5e6), "2.50 ms");
        assert_eq!(format_ns(3e9), "3.00 s");
        let grid: Vec<String> = (-2..=10).map(decade_label).collect();
        assert_eq!(
            grid.join(","),
            "0.01 ns,0.1 ns,1 ns,10 ns,100 ns,1 µs,10 µs,100 µs,1 ms,10 ms,100 ms,1 s,10 s"
        );
    }
}
