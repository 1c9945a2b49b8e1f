#!/usr/bin/env bash
# Where a plug/unplug cycle's CPU goes, kernel included (callgrind counts user-space
# instructions only): the hot-plug benchmark's latency phase (--sender direct), once with
# vhotplug and once with vhotplug-cpu-floor in its place, each under `perf record` (cpu-clock
# samples with call chains, enabled over the measured cycles only: the benchmark's --perf).
# Prints, for each program's loop thread and libusb's thread, the samples split by where they
# fell (tools/bench/cpu-split.py), and the functions with the most samples under them in
# vhotplug's loop thread. An analysis, not a figure: perf's sampling costs CPU itself.
#   tools/bench/cpu-split.sh [CYCLES (100)] [TOP (40)]
set -euo pipefail
cd "$(dirname "$0")/../.."
cycles=${1:-100}
top=${2:-40}
command -v perf >/dev/null || { echo "cpu-split.sh: needs perf (apt-get install linux-perf)" >&2; exit 2; }
for p in vhotplug vhotplug-hotplug-bench vhotplug-cpu-floor; do
    swift build -c release --static-swift-stdlib --product "$p" >/dev/null
done
bin=$(swift build -c release --static-swift-stdlib --show-bin-path)
work=$(mktemp -d /dev/shm/vhotplug-split.XXXXXX 2>/dev/null || mktemp -d)
trap 'rm -rf "$work"' EXIT
echo 1000 > /proc/sys/net/unix/max_dgram_qlen 2>/dev/null || true
for prog in vhotplug vhotplug-cpu-floor; do
    mkdir -p "$work/tmp"
    TMPDIR="$work/tmp" umockdev-wrapper "$bin/vhotplug-hotplug-bench" --phases latency --sender direct \
        --memory-cycles 0 --startups 1 --no-umockdev-mode --cycles "$cycles" --vhotplug "$bin/$prog" \
        --perf "$work/$prog.data" >"$work/$prog.bench" 2>&1 || { tail -20 "$work/$prog.bench" >&2; exit 1; }
    echo "$prog: $(grep 'daemon CPU per attach+detach cycle' "$work/$prog.bench" | sed 's/^.*cycle: //')"
    # The loop thread is named after the program (15 characters at most); libusb's is libusb_event.
    for comm in "${prog:0:15}" libusb_event; do
        perf script -i "$work/$prog.data" --comms "$comm" 2>/dev/null > "$work/$prog.$comm.txt"
        echo " thread $comm:"
        if [ "$prog" = vhotplug ] && [ "$comm" = vhotplug ]; then
            python3 tools/bench/cpu-split.py "$work/$prog.$comm.txt" "$bin/$prog" "$cycles" 10000 --top "$top"
        else
            python3 tools/bench/cpu-split.py "$work/$prog.$comm.txt" "$bin/$prog" "$cycles" 10000
        fi
    done
done
