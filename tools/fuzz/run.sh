#!/usr/bin/env bash
# Runs the libFuzzer targets, one after the other, for SECONDS each (default 300).
#
#   tools/fuzz/run.sh [SECONDS] [TARGET...]     targets: config json qmp usbids sysfs api
#
# Before fuzzing, each target re-runs the inputs saved in tools/fuzz/crashes/TARGET/
# (earlier crashes: regression inputs). New inputs that grow coverage go to
# .build-fuzz/corpus/TARGET/ (the seeds in tools/fuzz/corpus/ are only read); a
# crash, trap, leak or timeout (FUZZ_TIMEOUT s for one input, default 10) is saved
# as tools/fuzz/crashes/TARGET/crash-* and makes the script exit 1.
# Logs: .build-fuzz/logs/TARGET.log. A summary line per target is printed at the end.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=$ROOT/.build-fuzz
SECONDS_EACH=${1:-300}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(config json qmp usbids sysfs api)
TIMEOUT=${FUZZ_TIMEOUT:-10}
# Swift's own crash handler reads memory ASan calls wild: let libFuzzer report the trap.
export SWIFT_BACKTRACE=${SWIFT_BACKTRACE:-enable=no}
SWIFTC=${SWIFTC:-$(command -v swiftc || echo /opt/swift/usr/bin/swiftc)}
if [ -z "${ASAN_SYMBOLIZER_PATH:-}" ] && [ -x "$(dirname "$SWIFTC")/llvm-symbolizer" ]; then
    export ASAN_SYMBOLIZER_PATH=$(dirname "$SWIFTC")/llvm-symbolizer
fi

"$ROOT/tools/fuzz/build.sh" "${TARGETS[@]}" || exit 1
mkdir -p "$OUT/logs"

failed=()
summary=()
for t in "${TARGETS[@]}"; do
    bin=$OUT/bin/fuzz-$t
    crashes=$ROOT/tools/fuzz/crashes/$t
    mkdir -p "$OUT/corpus/$t" "$crashes"
    log=$OUT/logs/$t.log
    : > "$log"
    # Regression inputs first.
    saved=("$crashes"/*)
    if [ -e "${saved[0]}" ]; then
        if ! "$bin" -timeout="$TIMEOUT" -runs=1 "${saved[@]}" >>"$log" 2>&1; then
            echo "fuzz-$t: a saved input in tools/fuzz/crashes/$t still fails (see $log)"
            failed+=("$t")
            summary+=("$t: regression input fails")
            continue
        fi
    fi
    echo "fuzz-$t: ${SECONDS_EACH}s"
    "$bin" -max_total_time="$SECONDS_EACH" -timeout="$TIMEOUT" -print_final_stats=1 \
        -artifact_prefix="$crashes/" "$OUT/corpus/$t" "$ROOT/tools/fuzz/corpus/$t" >>"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    line="$t: ${execs:-?} execs, ${rate:-?} exec/s, ${cov:-cov: ?}, ${SECONDS_EACH}s"
    if [ $rc -ne 0 ]; then
        line+=" -- FAILED (exit $rc): $(grep -m1 -E '^==[0-9]+==ERROR|deadly signal|Fatal error|SUMMARY' "$log")"
        grep -h 'Test unit written to' "$log" | sed "s/^/  /"
        failed+=("$t")
    fi
    summary+=("$line")
done

echo "---- fuzz summary"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}"
    exit 1
fi
