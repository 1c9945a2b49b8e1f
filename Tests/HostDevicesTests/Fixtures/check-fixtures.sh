#!/bin/sh
# Checks every umockdev fixture of this folder, and tools/bench/gen-testbed.py.
# Exit status 0 when all checks pass, 1 on a problem, 2 when a tool is missing.
#
#   Tests/HostDevicesTests/Fixtures/check-fixtures.sh [FIXTURE.umockdev ...]
#
# Per fixture (check_fixture.py, run inside `umockdev-run -d FIXTURE`):
#   - a sysfs-only reader rebuilds the `inspect --json` records; they must equal
#     FIXTURE.expected.json;
#   - libusb-1.0 must enumerate every USB device, with the same interface classes
#     (ACTIVE configuration, current alternate setting) and port path as sysfs;
#   - udev's own input_id builtin (udevadm test-builtin) must agree on input kinds;
#   - every N: node must exist as a char/block node with its major:minor;
#   - lsusb, lsusb -v (no warnings, all interface classes), lsusb -t (drivers),
#     lspci -nnk -vv (ids, driver, IOMMU group), udevadm info --export-db (every
#     device, no helper), ls -lR /sys/bus/usb/devices/ must work;
#   - FIXTURE.mountinfo, when present, must point into the fixture's disks.
# Also: make-fixtures.py --check (the files are what the generator writes).
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
for tool in umockdev-run lsusb lspci udevadm python3; do
    command -v "$tool" >/dev/null 2>&1 || { echo "check-fixtures: $tool is missing" >&2; exit 2; }
done
# umockdev builds its testbed under TMPDIR: a tmpfs makes loading several times faster
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
    export TMPDIR=/dev/shm
fi
status=0

python3 "$here/make-fixtures.py" --check || status=1

[ $# -gt 0 ] || set -- "$here"/*.umockdev
for f in "$@"; do
    umockdev-run -d "$f" -- python3 "$here/check_fixture.py" "$f" "${f%.umockdev}.expected.json" || status=1
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# Fixtures that share no device load together as one machine: at most one of the
# USB fixtures / pci-wifi (they all have the xHCI at 00:14.0), plus the others.
if [ $# -eq 0 ] || [ "$*" = "$(echo "$here"/*.umockdev)" ]; then
    for usb in usb-hub pci-wifi; do
        set -- "$usb" pci-gpu-audio pci-nvme-boot ps2-keyboard i2c-touchpad
        printf 'combined (%s): ' "$*"
        python3 - "$here" "$tmp/combined" "$@" <<'PY'
import json, sys
here, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(out + ".umockdev", "w") as f:
    f.write("\n".join(open("%s/%s.umockdev" % (here, n)).read() for n in names))
recs = []
for n in names:
    recs += json.load(open("%s/%s.expected.json" % (here, n)))
json.dump(recs, open(out + ".expected.json", "w"))
PY
        umockdev-run -d "$tmp/combined.umockdev" -- \
            python3 "$here/check_fixture.py" "$tmp/combined.umockdev" "$tmp/combined.expected.json" || status=1
    done
fi
for n in 12 200; do
    printf 'gen-testbed -n %s: ' "$n"
    if ! python3 "$root/tools/bench/gen-testbed.py" -n "$n" -o "$tmp/bench.umockdev" \
            --expected "$tmp/bench.expected.json" --split "$tmp/split$n" 2>"$tmp/gen.log"; then
        echo "generator failed: $(cat "$tmp/gen.log")"
        status=1
        continue
    fi
    # shellcheck disable=SC2046
    umockdev-run $(for p in "$tmp/split$n"/*.umockdev; do printf -- '-d %s ' "$p"; done) -- \
        python3 "$here/check_fixture.py" "$tmp/bench.umockdev" "$tmp/bench.expected.json" || status=1
done

if [ "$status" -eq 0 ]; then
    echo "check-fixtures: all checks passed"
else
    echo "check-fixtures: FAILED" >&2
fi
exit "$status"
