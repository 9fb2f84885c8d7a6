#!/usr/bin/env bash
# Regression CI for users of the suite (PVM developers, vendors): run on a machine whose
# /dev/kvm is the PVM host under test. Writes the JSON report, the per-case progress log,
# JUnit XML and TAP13 into OUT (default: conformance-results/) and exits with the suite's status
# (0 ok, 1 failures/crashes/errors, 2 setup problems). Extra arguments go to
# `cargo xtask conformance` (e.g. --env pv-local --expectations my-host.toml).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-conformance-results}
mkdir -p "$out"
"$root/ci/setup.sh"
cd "$root"
status=0
cargo xtask conformance --report "$out/report.json" --junit "$out/junit.xml" --tap "$@" \
    > "$out/results.tap" || status=$?
exit "$status"
