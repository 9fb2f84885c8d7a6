//! `cargo xtask`: the project's automation entry point.
//!
//! - `cargo xtask conformance [...]`: build the guest image, run the suite, report.
//! - `cargo xtask bench [...]`: benchmarks, baselines, plot; `--compare a.json b.json`.
//! - `cargo xtask coverage`: requirement -> cases -> last outcome, and what no case checks.
//! - `cargo xtask certify [...]`: a report's verdict against a profile, and the HTML
//!   certificate (exit 0 certified, 1 not certified, 2 bad input).
//! - `cargo xtask diff A.json B.json`: the instances whose outcome differs (exit 1 if any).
//! - `cargo xtask build-guests`: only build the guest image.
//!
//! Exit status of `conformance`: 0 when nothing failed, crashed or errored; 1 otherwise;
//! 2 for usage or setup errors (one line on stderr naming the input and the problem); 130 or
//! 143 when SIGINT or SIGTERM interrupted the run (the reports hold what finished).
//! Nothing here panics on bad input or on a closed or full stdout (see `out`).

mod bench_cmd;
mod certify_cmd;
mod conformance_cmd;
mod coverage_cmd;
mod diff_cmd;
mod host_check_cmd;
mod images_cmd;
mod merge_cmd;
mod mutants_cmd;
mod out;
mod plot;
mod tidy;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "pvm-conformance automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build the guest image and run conformance cases against a PVM host.
    Conformance(Box<conformance_cmd::Args>),
    /// Run the benchmark guests and native baselines; print the table, write JSON and a plot.
    Bench(bench_cmd::Args),
    /// Requirement -> cases -> last outcome; the requirements without a case.
    Coverage(coverage_cmd::Args),
    /// Certify a conformance report against a profile: verdict, reasons, HTML certificate.
    Certify(certify_cmd::Args),
    /// The case instances whose outcome differs between two reports (exit 1 if any).
    Diff(diff_cmd::Args),
    /// Run the upstream cases on the reference model once per fault switch; print which
    /// cases caught each switch and `caught N/M`.
    MutantsModel(mutants_cmd::Args),
    /// Merge the reports of one selection run in pieces (--shard K/N, several hosts) into one.
    Merge(merge_cmd::Args),
    /// Print the preflight table of this host (/dev/kvm, KVM module, PVM dialect, CPU
    /// features, KPTI...); exit 1 with the reason when the suite cannot run here.
    HostCheck,
    /// The reference model's speed (release build): guest instructions per second on
    /// straight-line code and the pv-v2 benchmark cases, median and spread.
    BenchModel {
        /// Repetitions (one VM each) per benchmark.
        #[arg(long, default_value_t = 5)]
        repetitions: usize,
    },
    /// Build the guest image (x86_64-unknown-none) and print its path.
    BuildGuests,
    /// Build a host image: kernel, initramfs with the worker, guest image and profile; disks
    /// as raw, qcow2 and the GCE tarball.
    Images(images_cmd::Args),
    /// Host kernel modules: `kmod build` builds an out-of-tree module for a kernel's headers.
    Kmod(images_cmd::KmodArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Conformance(args) => conformance_cmd::run(*args),
        Cmd::Images(args) => images_cmd::run(args),
        Cmd::Kmod(args) => images_cmd::kmod(args),
        Cmd::Bench(args) => bench_cmd::run(args),
        Cmd::Coverage(args) => coverage_cmd::run(args),
        Cmd::Certify(args) => certify_cmd::run(args),
        Cmd::Diff(args) => diff_cmd::run(args),
        Cmd::MutantsModel(args) => mutants_cmd::run(args),
        Cmd::HostCheck => host_check_cmd::run(),
        Cmd::Merge(args) => merge_cmd::run(args),
        Cmd::BenchModel { repetitions } => mutants_cmd::bench_model(repetitions),
        Cmd::BuildGuests => {
            conformance::guest_build::build(&conformance::guest_build::workspace_root())
                .map_err(anyhow::Error::from)
                .and_then(|b| {
                    if let Some(why) = &b.rebuilt {
                        out::errln!("note: rebuilt the guest image: {why}");
                    }
                    out::outln!("{}", b.path.display())
                })
                .map(|()| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            out::errln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
