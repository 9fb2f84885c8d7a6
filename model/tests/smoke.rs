//! The model binary end to end: the real guest image, instances named on standard input, one
//! JSON result per line. A sample of pv-v2 instances must PASS on the clean model, and a
//! fault switch must turn a case that checks its rule into a FAIL.

use std::io::Write;
use std::process::{Command, Stdio};

fn run(ids: &[&str], faults: &[&str]) -> Vec<serde_json::Value> {
    let root = conformance::guest_build::workspace_root();
    let built = conformance::guest_build::build(&root).expect("guest image builds");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pvmc-model"));
    cmd.arg("run")
        .arg("--image")
        .arg(&built.path)
        .arg("--timeout-ms")
        .arg("3000");
    for f in faults {
        cmd.arg("--fault").arg(f);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for id in ids {
            writeln!(stdin, "{id}").expect("write id");
        }
    }
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "pvmc-model failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON result per line"))
        .collect()
}

const SAMPLE: [&str; 4] = [
    "io.mmio.movzx8~pv-v2",
    "io.mmio.movs_to_device~pv-v2",
    "io.mmio.page_crossing~pv-v2",
    "io.mmio.rmw_add32~pv-v2",
];

#[test]
fn pv_v2_instances_pass_on_the_clean_model() {
    let results = run(&SAMPLE, &[]);
    assert_eq!(results.len(), SAMPLE.len());
    for (r, id) in results.iter().zip(SAMPLE) {
        assert_eq!(r["id"], id);
        assert_eq!(r["outcome"], "pass", "{r}");
    }
}

#[test]
fn instances_of_other_environments_skip_with_the_reason() {
    let r = run(&["io.mmio.movzx8~hvm64"], &[]);
    assert_eq!(r[0]["outcome"], "skip");
    assert!(
        r[0]["detail"].as_str().unwrap_or("").contains("upstream"),
        "{}",
        r[0]
    );
}

#[test]
fn a_fault_switch_breaks_what_it_names() {
    // Port writes that lose their top byte break every report message: no final status.
    let r = run(&["io.mmio.movzx8~pv-v2"], &["out-truncated"]);
    assert_ne!(r[0]["outcome"], "pass", "{}", r[0]);
}
