//! The benchmark plot: one horizontal bar per (benchmark, environment) and per native
//! baseline, median ns per operation on a log scale, written as SVG and PNG with plotters.
//! Text needs a TrueType font: DejaVu Sans from the system (Debian `fonts-dejavu-core`, which
//! `ci/setup.sh` installs).

use std::path::Path;

use abi::env::Env;
use anyhow::{Context, bail};
use conformance::bench::BenchReport;
use plotters::prelude::*;
use plotters::style::FontStyle;

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn load_font() -> anyhow::Result<()> {
    let path = FONTS
        .iter()
        .find(|p| Path::new(p).exists())
        .with_context(|| {
            format!(
                "no DejaVu Sans font for the plot (looked in {FONTS:?}; install fonts-dejavu-core)"
            )
        })?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{path} is not a usable font"))
}

/// One colour per environment, in `Env::ALL` order; native host rows are grey.
const PALETTE: [RGBColor; 5] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
];
const HOST_GREY: RGBColor = RGBColor(0x55, 0x55, 0x55);
const COLOR_NAMES: [&str; 5] = ["blue", "red", "green", "orange", "purple"];

fn env_index(env: &str) -> Option<usize> {
    Env::ALL.iter().position(|e| e.name() == env)
}

fn env_color(env: &str) -> RGBColor {
    env_index(env).map_or(HOST_GREY, |i| PALETTE[i % PALETTE.len()])
}

/// "blue: hvm64, red: pv-local, ..." for the environments in `r`.
fn legend(r: &BenchReport) -> String {
    let mut seen: Vec<usize> = r
        .benchmarks
        .iter()
        .filter_map(|b| env_index(&b.env))
        .collect();
    seen.sort_unstable();
    seen.dedup();
    seen.iter()
        .map(|&i| {
            format!(
                "{}: {}",
                COLOR_NAMES[i % COLOR_NAMES.len()],
                Env::ALL[i].name()
            )
        })
        .chain(std::iter::once("grey: native host".to_string()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    r: &BenchReport,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let mut bars: Vec<(String, String, f64)> = r
        .benchmarks
        .iter()
        .filter(|b| b.stats.samples > 0)
        .map(|b| {
            (
                format!("{} ({})", b.name, b.env),
                b.env.clone(),
                b.stats.median_ns,
            )
        })
        .collect();
    bars.extend(
        r.native
            .iter()
            .map(|n| (n.name.clone(), "host".into(), n.stats.median_ns)),
    );
    if bars.is_empty() {
        bail!("nothing to plot");
    }
    let max = bars.iter().map(|b| b.2).fold(1.0, f64::max) * 2.0;
    let min = bars
        .iter()
        .map(|b| b.2)
        .fold(f64::INFINITY, f64::min)
        .max(0.1)
        / 2.0;
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let n = bars.len() as i32;
    let title = format!(
        "median ns/op, {} repetitions - {}",
        r.repetitions,
        legend(r)
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(260)
        .build_cartesian_2d((min..max).log_scale(), 0..n)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    chart
        .configure_mesh()
        .y_labels(bars.len())
        .y_label_formatter(&|y| labels.get(*y as usize).cloned().unwrap_or_default())
        .x_desc("ns per operation (log scale)")
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, env, v))| {
            let i = i as i32;
            let mut bar = Rectangle::new([(min, i), (*v, i + 1)], env_color(env).filled());
            bar.set_margin(3, 3, 0, 0);
            bar
        }))
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(())
}

/// Writes `<stem>.svg` and `<stem>.png`.
pub fn write(r: &BenchReport, svg: &Path, png: &Path) -> anyhow::Result<()> {
    load_font()?;
    let rows = r.benchmarks.len() + r.native.len();
    let size = (1100, (120 + 26 * rows as u32).max(300));
    draw(SVGBackend::new(svg, size).into_drawing_area(), r)?;
    draw(BitMapBackend::new(png, size).into_drawing_area(), r)?;
    Ok(())
}
