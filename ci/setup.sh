#!/usr/bin/env bash
# Installs what pvm-conformance needs on a fresh machine: the pinned Rust toolchain with the
# bare-metal guest target (x86_64-unknown-none), clippy and rustfmt. `--target local` needs no
# system packages (the KVM layer is pure Rust over /dev/kvm).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v rustup >/dev/null; then
    echo "ci/setup.sh: rustup is required to install the pinned toolchain" >&2
    exit 2
fi
channel=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
rustup toolchain install "$channel" --profile minimal \
    --target x86_64-unknown-none --component clippy,rustfmt >&2
