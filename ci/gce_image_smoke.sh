#!/usr/bin/env bash
# The image's GCE side without GCE: boots a host image's disk (GRUB, as GCE does) under QEMU
# with no run-time archive, a virtio-net NIC on QEMU's user network and ci/fake_metadata.py
# answering at 169.254.169.254. The image must bring the network up, fetch its instance ids
# from the metadata attribute pvmc-ids, stream every result to its second serial port and
# PUT its verdict to the guest attribute pvmc/verdict.
# Usage: ci/gce_image_smoke.sh IMAGE_DIR ID...
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
image=$1
shift
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '%s\n' "$@" > "$work/ids"
disk="$image/disk.qcow2"
test -s "$disk" || { echo "gce_image_smoke: $disk is missing (build with --format qcow2)" >&2; exit 1; }
net="user,id=n0,net=169.254.169.0/24,host=169.254.169.2,dhcpstart=169.254.169.15"
net="$net,guestfwd=tcp:169.254.169.254:80-cmd:python3 $root/ci/fake_metadata.py $work"
start=$(date +%s)
timeout 600 qemu-system-x86_64 -M pc -accel tcg -cpu max -m 1024 -nodefaults -display none \
    -no-reboot -drive "file=$disk,format=qcow2,if=ide,snapshot=on" \
    -netdev "$net" -device virtio-net-pci,netdev=n0 \
    -serial "file:$work/console.log" -serial "file:$work/results.out"
echo "gce_image_smoke: QEMU ran $(( $(date +%s) - start )) s"
results=$(grep -c '"outcome"' "$work/results.out" || true)
status=0
if [ "$results" -ne "$#" ]; then
    echo "gce_image_smoke: $results results for $# ids" >&2
    status=1
fi
grep -q '"end"' "$work/results.out" || { echo "gce_image_smoke: no end line" >&2; status=1; }
if ! test -s "$work/verdict"; then
    echo "gce_image_smoke: no verdict was PUT" >&2
    status=1
else
    echo "gce_image_smoke: verdict: $(cat "$work/verdict")"
fi
if [ "$status" -ne 0 ]; then
    echo "--- console:" >&2; tail -n 30 "$work/console.log" >&2
    echo "--- results:" >&2; cut -c1-200 "$work/results.out" >&2
    echo "--- metadata requests:" >&2; cat "$work/requests.log" >&2 || true
fi
exit "$status"
