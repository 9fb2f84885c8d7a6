#!/usr/bin/env bash
# Installs what pvm-conformance needs on a fresh machine: the pinned Rust toolchain with the
# bare-metal guest target (x86_64-unknown-none), clippy and rustfmt, the DejaVu font the
# benchmark plot draws its text with, cmake/cc/libclang for the reference model's Unicorn build,
# Chromium and tesseract for the certificate's browser test, and QEMU for --target qemu. The KVM
# layer itself is pure Rust over /dev/kvm.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v rustup >/dev/null; then
    echo "ci/setup.sh: rustup is required to install the pinned toolchain" >&2
    exit 2
fi
channel=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
rustup toolchain install "$channel" --profile minimal \
    --target x86_64-unknown-none --component clippy,rustfmt >&2
# Debian packages, each only when missing: the DejaVu font the benchmark plot draws its text
# with, and (unless PVMC_SETUP_BROWSER=0) headless Chromium and tesseract for the certificate's
# browser test (xtask/tests/certify_browser.rs; .ci/run requires it with PVMC_REQUIRE_BROWSER=1).
packages=()
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || packages+=(fonts-dejavu-core)
# The reference model (model/) builds the Unicorn CPU emulator from source: cmake, a C
# compiler, and libclang for its bindings. Only libclang itself counts (the names bindgen
# loads: libclang.so*, libclang-N.so*): libclang-cpp, which other packages bring, is not it.
command -v cmake >/dev/null || packages+=(cmake)
command -v cc >/dev/null || packages+=(gcc g++ make)
compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null \
    || compgen -G '/usr/lib/x86_64-linux-gnu/libclang-[0-9]*.so*' >/dev/null \
    || compgen -G '/usr/lib/x86_64-linux-gnu/libclang.so*' >/dev/null \
    || packages+=(libclang-dev)
# Host images (cargo xtask images, kmod build): a static busybox, sfdisk, GRUB's i386-pc
# image and modules, Debian's kernel headers for the out-of-tree marker module.
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || packages+=(busybox-static)
command -v sfdisk >/dev/null || packages+=(fdisk)
[ -e /usr/lib/grub/i386-pc/boot.img ] || packages+=(grub-pc-bin)
command -v grub-mkimage >/dev/null || packages+=(grub-common)
command -v mkfs.ext4 >/dev/null || packages+=(e2fsprogs)
command -v xz >/dev/null || packages+=(xz-utils)
command -v strip >/dev/null || packages+=(binutils)
ls -d /usr/src/linux-headers-*-amd64 >/dev/null 2>&1 || packages+=(linux-headers-amd64)
# OpenSSH: the client for --target ssh, the server for its loopback end-to-end test.
command -v ssh >/dev/null || packages+=(openssh-client)
[ -x /usr/sbin/sshd ] || packages+=(openssh-server)
if [ "${PVMC_SETUP_BROWSER:-1}" != 0 ]; then
    command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
        || packages+=(chromium)
    command -v tesseract >/dev/null || packages+=(tesseract-ocr)
fi
if [ ${#packages[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        (apt-get update -qq \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}") >&2
    else
        echo "ci/setup.sh: missing Debian packages ${packages[*]} (fonts-dejavu-core for the" \
            "benchmark plot, cmake, a C compiler and libclang-dev for the reference model," \
            "chromium and tesseract-ocr for the certificate's browser test)" >&2
    fi
fi
# QEMU for --target qemu (shared/notes/qemu-and-images.md): qemu-system-x86 with qboot, and
# qemu-utils, both from the same place. On bookworm that is bookworm-backports (QEMU 10.0):
# installing bookworm's qemu-system-x86 7.2 next to a backports qemu-utils removes the latter.
if ! command -v qemu-system-x86_64 >/dev/null || ! command -v qemu-img >/dev/null; then
    codename=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release 2>/dev/null || true)
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        release=()
        if [ "$codename" = bookworm ]; then
            if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
                printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' \
                    'Suites: bookworm-backports' 'Components: main' \
                    'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' \
                    > /etc/apt/sources.list.d/bookworm-backports.sources
            fi
            release=(-t bookworm-backports)
        fi
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "${release[@]}" qemu-system-x86 qemu-utils) >&2
    else
        echo "ci/setup.sh: missing qemu-system-x86 and qemu-utils (for --target qemu)" >&2
    fi
fi
