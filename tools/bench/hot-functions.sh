#!/usr/bin/env bash
# Regenerates tools/bench/hot-functions.txt, the release link's symbol ordering: the functions
# the daemon runs (start-up and 150 plug/unplug cycles of the hot-plug benchmark, under
# callgrind), so that the linker puts them together and a running daemon touches fewer pages
# of its 10 MB of code (README "Memory" in tools/bench). Run it after large code changes; a
# stale list only places fewer functions.
set -euo pipefail
cd "$(dirname "$0")/../.."
swift build -c release --static-swift-stdlib --product vhotplug >/dev/null
swift build -c release --static-swift-stdlib --product vhotplug-hotplug-bench >/dev/null
bin=$(swift build -c release --static-swift-stdlib --show-bin-path)
work=$(mktemp -d /dev/shm/vhotplug-order.XXXXXX 2>/dev/null || mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/vhotplug" <<WRAP
#!/bin/sh
exec valgrind --tool=callgrind --demangle=no --dump-instr=no --callgrind-out-file=$work/cg.%p $bin/vhotplug "\$@"
WRAP
chmod +x "$work/vhotplug"
mkdir -p "$work/tmp"
# --late-qemu: the first plugs reach QEMU after the daemon, so that the "failed to find host usb
# device" retry (which the benchmark meets now and then, never under callgrind's slowness) is in
# the profile: its code first run late mapped 0.5 MiB more of the binary (tools/bench/README.md).
echo 1000 > /proc/sys/net/unix/max_dgram_qlen 2>/dev/null || true
TMPDIR="$work/tmp" umockdev-wrapper "$bin/vhotplug-hotplug-bench" --phases latency --cycles 150 --warmup 2 \
    --startups 2 --memory-cycles 0 --no-umockdev-mode --sender direct --late-qemu 3 \
    --vhotplug "$work/vhotplug" >"$work/bench.log" 2>&1 \
    || { tail -20 "$work/bench.log" >&2; exit 1; }
nm "$bin/vhotplug" > "$work/nm.txt"
python3 tools/bench/hot-functions.py "$work" "$work/nm.txt" > tools/bench/hot-functions.txt
echo "tools/bench/hot-functions.txt: $(wc -l < tools/bench/hot-functions.txt) functions"
