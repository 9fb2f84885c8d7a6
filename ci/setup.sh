#!/usr/bin/env bash
# Installs what pvm-conformance needs on a fresh machine: the pinned Rust toolchain with the
# bare-metal guest target (x86_64-unknown-none), clippy and rustfmt, and the DejaVu font the
# benchmark plot draws its text with. The KVM layer itself is pure Rust over /dev/kvm.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v rustup >/dev/null; then
    echo "ci/setup.sh: rustup is required to install the pinned toolchain" >&2
    exit 2
fi
channel=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
rustup toolchain install "$channel" --profile minimal \
    --target x86_64-unknown-none --component clippy,rustfmt >&2
if [ ! -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        (apt-get update -qq && apt-get install -y -qq fonts-dejavu-core) >&2
    else
        echo "ci/setup.sh: no DejaVu font; install fonts-dejavu-core for the benchmark plot" >&2
    fi
fi
