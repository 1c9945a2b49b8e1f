#!/usr/bin/env bash
# Builds the libFuzzer targets of tools/fuzz/targets/ into .build-fuzz/bin/, compiling
# the modules they need straight from Sources/ with swiftc (the package's .build is
# left alone; swift-log's sources are read from .build/checkouts, resolved if missing).
#
#   tools/fuzz/build.sh            # every target
#   tools/fuzz/build.sh json qmp   # some targets
#
# Environment: SWIFTC (default: swiftc on PATH, else /opt/swift/usr/bin/swiftc),
# FUZZ_OPT (default -O; -Onone for easier debugging), FUZZ_SANITIZERS (default fuzzer,address).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=$ROOT/.build-fuzz
SWIFTC=${SWIFTC:-$(command -v swiftc || echo /opt/swift/usr/bin/swiftc)}
SWIFT=${SWIFT:-$(dirname "$SWIFTC")/swift}
CLANG=${CLANG:-$(dirname "$SWIFTC")/clang}
OPT=${FUZZ_OPT:--O}
SAN=${FUZZ_SANITIZERS:-fuzzer,address}
ALL_TARGETS=(config json qmp usbids sysfs api)
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL_TARGETS[@]}")

mkdir -p "$OUT/mods" "$OUT/obj" "$OUT/bin" "$OUT/include/CLinux"

# C shims: the packages' module maps, and one for CLinux (SwiftPM makes it from include/).
CFLAGS=(-I "$ROOT/Sources/CUSB" -I "$ROOT/Sources/CPCI" -I "$ROOT/Sources/CUdev" -I "$OUT/include/CLinux")
for f in $(pkg-config --cflags libusb-1.0 libpci libudev 2>/dev/null); do CFLAGS+=(-Xcc "$f"); done
cat > "$OUT/include/CLinux/module.modulemap" <<MAP
module CLinux {
    umbrella header "$ROOT/Sources/CLinux/include/clinux.h"
    export *
}
MAP

COMMON=(-parse-as-library -swift-version 6 -enable-upcoming-feature NonisolatedNonsendingByDefault
        -I "$OUT/mods" "${CFLAGS[@]}" -g)

# One module: name, then its sources. Rebuilt only when a source or this script is newer.
module() {
    local name=$1; shift
    local flags=("${COMMON[@]}" "$OPT" -sanitize="$SAN" -enable-testing)
    if [ "$name" = Logging ]; then flags=(-parse-as-library -swift-version 6 -package-name swift_log -enable-upcoming-feature ExistentialAny -enable-upcoming-feature MemberImportVisibility -enable-upcoming-feature InternalImportsByDefault -enable-upcoming-feature NonisolatedNonsendingByDefault -g -O); fi
    local obj=$OUT/obj/$name.o stale=0
    [ -f "$obj" ] || stale=1
    for s in "$@" "$0"; do [ "$s" -nt "$obj" ] && stale=1; done
    [ -f "$OUT/obj/$name.flags" ] && [ "$(cat "$OUT/obj/$name.flags")" = "${flags[*]}" ] || stale=1
    # A module rebuilt earlier in this run may be a dependency: rebuild what follows it.
    [ -n "$REBUILT" ] && stale=1
    [ $stale = 1 ] || return 0
    REBUILT=1
    echo "module $name"
    "$SWIFTC" "${flags[@]}" -wmo -module-name "$name" \
        -emit-module -emit-module-path "$OUT/mods/$name.swiftmodule" \
        -c -o "$obj" "$@"
    touch "$obj"   # swiftc keeps the old file (and its time) when the code is unchanged
    echo "${flags[*]}" > "$OUT/obj/$name.flags"
}

srcs() { ls "$ROOT/Sources/$1"/*.swift; }

need_logging() {
    local log=$ROOT/.build/checkouts/swift-log/Sources/Logging
    if [ ! -d "$log" ]; then "$SWIFT" package resolve >/dev/null; fi
    module Logging $(find "$log" -name '*.swift' | sort)
}
need_clinux() {
    local obj=$OUT/obj/CLinux-c.o
    if [ ! -f "$obj" ] || [ "$ROOT/Sources/CLinux/clinux.c" -nt "$obj" ]; then
        "$CLANG" -c -O1 -g -I "$ROOT/Sources/CLinux/include" "$ROOT/Sources/CLinux/clinux.c" -o "$obj"
    fi
}

# Modules of each target, in dependency order.
deps_of() {
    case $1 in
        json)   echo JSONKit ;;
        config) echo JSONKit HotplugConfig ;;
        qmp)    echo JSONKit DeviceModel HotplugConfig CLinux Logging Reactor VMM ;;
        usbids|sysfs) echo JSONKit DeviceModel HostDevices ;;
        api)    echo JSONKit DeviceModel HotplugConfig CLinux Logging Reactor ControlAPI ;;
        *) echo "unknown target: $1" >&2; exit 2 ;;
    esac
}

declare -A BUILT=()
REBUILT=
for t in "${TARGETS[@]}"; do
    objs=()
    for m in $(deps_of "$t"); do
        if [ -z "${BUILT[$m]:-}" ]; then
            case $m in
                Logging) need_logging ;;
                CLinux) need_clinux ;;
                HotplugConfig) module "$m" $(srcs "$m") ;;
                *) module "$m" $(srcs "$m") ;;
            esac
            BUILT[$m]=1
        fi
        if [ "$m" = CLinux ]; then objs+=("$OUT/obj/CLinux-c.o"); else objs+=("$OUT/obj/$m.o"); fi
    done
    bin=$OUT/bin/fuzz-$t fresh=1
    for s in "$ROOT/tools/fuzz/targets/$t.swift" "${objs[@]}"; do [ -f "$bin" ] && [ ! "$s" -nt "$bin" ] || fresh=0; done
    [ $fresh = 1 ] && continue
    echo "target fuzz-$t"
    "$SWIFTC" "${COMMON[@]}" "$OPT" -sanitize="$SAN" -module-name "Fuzz_$t" \
        "$ROOT/tools/fuzz/targets/$t.swift" "${objs[@]}" \
        -use-ld=lld -lusb-1.0 -lpci -ludev -o "$OUT/bin/fuzz-$t"
done
