#!/usr/bin/env bash
# Regression CI for users of the suite (PVM developers, vendors): run on a machine whose
# /dev/kvm is the PVM host under test. Works from any directory. Writes the JSON report, the
# per-instance progress log, JUnit XML and TAP13 into OUT (default: conformance-results/,
# relative to the directory it is called from) and exits with the suite's status: 0 ok,
# 1 failures/crashes/errors, 2 setup problems (including "nothing could run": it passes
# --require-kvm), 130/143 when interrupted. Extra arguments go to `cargo xtask conformance`
# (e.g. --env pv-local --expectations my-host.toml).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:-conformance-results}
mkdir -p "$out"
out=$(cd "$out" && pwd)
# The browser packages serve only this repository's own tests, not a conformance run.
PVMC_SETUP_BROWSER=0 "$root/ci/setup.sh"
status=0
(cd "$root" && cargo xtask conformance --require-kvm --report "$out/report.json" \
    --junit "$out/junit.xml" --tap "$@") > "$out/results.tap" || status=$?
exit "$status"
