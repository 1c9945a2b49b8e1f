#!/usr/bin/env bash
# vhotplug benchmarks (release build). Prints one line per figure; README "Figures" quotes them.
#  1. the matcher: one USB device decided against a 500-entry configuration;
#  2. `vhotplug inspect --json` over 200 devices (a generated umockdev testbed on tmpfs).
set -euo pipefail
cd "$(dirname "$0")/../.."
swift build -c release --product vhotplug >/dev/null
swift build -c release --product vhotplug-bench >/dev/null
bin=$(swift build -c release --show-bin-path)
"$bin/vhotplug-bench"

work=$(mktemp -d /dev/shm/vhotplug-bench.XXXXXX 2>/dev/null || mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 tools/bench/gen-testbed.py -n 200 -o "$work/all.umockdev" --split "$work/parts" >/dev/null
args=()
for f in "$work"/parts/*.umockdev; do args+=(-d "$f"); done
TMPDIR="$work" umockdev-run "${args[@]}" -- python3 - "$bin/vhotplug" <<'PY'
import json, resource, statistics, subprocess, sys, time
exe = sys.argv[1]
samples = []
for _ in range(15):
    t0 = time.perf_counter()
    out = subprocess.run([exe, "inspect", "--json"], check=True, capture_output=True).stdout
    samples.append((time.perf_counter() - t0) * 1000)
n = len(json.loads(out))
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(f"inspect --json over {n} devices: median {statistics.median(samples):.1f} ms, "
      f"min {min(samples):.1f} ms, max {max(samples):.1f} ms, max resident {rss:.1f} MiB")
PY
