#!/usr/bin/env bash
# The Swift tests (`make test-unit`, after `swift build --build-tests`), in two processes side
# by side. Each runs one test at a time: umockdev's testbed is process-wide, and suites side by
# side in one process (a daemon's timing beside another suite's QEMU and testbed) made rare
# failures. Two processes have a testbed each. The tests mostly wait (QEMU, the daemon's
# replies): one process kept 2 CPUs about 30 % busy for 3 minutes; two take about 2.
#   - the daemon's suites (HotplugDaemonTests) but its API suite;
#   - everything else, then the daemon's API suite, then the VFIO tests, which play the kernel
#     with FIFOs in their testbed, without umockdev's preload.
# Each process's output goes to .build/test-logs/NAME.log and is printed when both are done;
# the exit status is non-zero when any part failed.
set -uo pipefail
cd "$(dirname "$0")/.."
SWIFT=${SWIFT:-swift}
logs=.build/test-logs
rm -rf "$logs"
mkdir -p "$logs"
# (--ignore-lock: SwiftPM would make the second process wait for the first's lock on .build;
# --skip-build: neither writes there.)
test=("$SWIFT" test --skip-build --ignore-lock)

run() {
    local name=$1
    shift
    "$@" >"$logs/$name.log" 2>&1
    echo $? >"$logs/$name.rc"
}

echo "Swift tests in two processes; their output follows when both are done (also in $logs/)"
(run daemon umockdev-wrapper "${test[@]}" --no-parallel --filter HotplugDaemonTests --skip DaemonAPITests) &
(
    run rest umockdev-wrapper "${test[@]}" --no-parallel --skip VFIOTests --skip HotplugDaemonTests
    run api umockdev-wrapper "${test[@]}" --no-parallel --filter DaemonAPITests
    run vfio "${test[@]}" --filter VFIOTests
) &
wait

status=0
for name in daemon rest api vfio; do
    echo "==== $name ($logs/$name.log)"
    cat "$logs/$name.log"
    rc=$(cat "$logs/$name.rc" 2>/dev/null || echo 1)
    [ "$rc" = 0 ] || status=1
done
echo "==== summary"
for name in daemon rest api vfio; do
    rc=$(cat "$logs/$name.rc" 2>/dev/null || echo 1)
    line=$(grep -E "Test run with .* (passed|failed)" "$logs/$name.log" | tail -n 1)
    echo "$name: exit $rc: ${line:-no summary line}"
done
exit $status
