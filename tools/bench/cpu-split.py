#!/usr/bin/env python3
"""Splits the CPU samples of one thread (from `perf script` text, cpu-clock samples with call
chains) by where they fell: the kernel, the Swift runtime and standard library, the program's
own code, libc's allocator, the rest of libc, libudev, libusb, umockdev's preload. With --top N,
also the N functions with the most samples under them (inclusive, demangled).

    cpu-split.py SCRIPT_TEXT PROGRAM_PATH CYCLES HZ [--top N]

Prints one line per part: samples, share, and milliseconds per cycle (samples / HZ / CYCLES).
perf's timer sampling costs CPU itself (each sample is a timer interrupt, in this VM a VM
exit), so the milliseconds are higher than the benchmark's own figure: compare shares, and
the two programs' totals, not these milliseconds with the benchmark's."""
import collections
import re
import subprocess
import sys

FRAME = re.compile(r"^\s*[0-9a-f]+ (.+?)(?:\+0x[0-9a-f]+)? \((.*)\)$")
RUNTIME = re.compile(r"^(swift_|swift::|_swift|__swift|\$ss|\$sS|getCache|withStatusRecordLock|destroyTask|completeTask)")


def part(symbol, dso, program):
    if "kallsyms" in dso:
        return "kernel"
    if dso == program:
        return "Swift runtime and standard library" if RUNTIME.match(symbol) else "own code"
    name = dso.rsplit("/", 1)[-1]
    if name.startswith("libc.so"):
        if re.search(r"malloc|free|_int_|unlink_chunk|consolidate|tcache", symbol):
            return "libc: malloc and free"
        return "libc: the rest (system call stubs, string functions, locks)"
    for lib in ("libudev", "libusb", "libumockdev-preload", "ld-linux"):
        if name.startswith(lib):
            return lib
    return "other: " + name


def main():
    args = sys.argv[1:]
    top = 0
    if "--top" in args:
        i = args.index("--top")
        top = int(args[i + 1])
        del args[i:i + 2]
    path, program, cycles, hz = args[0], args[1], int(args[2]), float(args[3])
    parts = collections.Counter()
    inclusive = collections.Counter()
    total = 0
    with open(path, errors="replace") as f:
        blocks = f.read().split("\n\n")
    for block in blocks:
        frames = [m.groups() for m in (FRAME.match(l) for l in block.strip().split("\n")[1:]) if m]
        if not frames:
            continue
        total += 1
        parts[part(frames[0][0], frames[0][1], program)] += 1
        if top:
            for name in {("[kernel]" if "kallsyms" in d else s) for s, d in frames}:
                inclusive[name] += 1
    if total == 0:
        sys.exit("cpu-split.py: no samples in " + path)
    ms = lambda n: n / hz / cycles * 1000
    print("  %6d samples, %.2f ms a cycle under perf (%d cycles, %d Hz)" % (total, ms(total), cycles, hz))
    for name, n in parts.most_common():
        print("  %6d %5.1f%% %6.3f ms  %s" % (n, 100.0 * n / total, ms(n), name))
    if top:
        names = [n for n, _ in inclusive.most_common(top)]
        demangled = subprocess.run(["swift", "demangle", "--simplified"], input="\n".join(names),
                                   capture_output=True, text=True).stdout.split("\n")
        print("  the %d functions with the most samples under them (inclusive):" % top)
        for name, shown in zip(names, demangled):
            n = inclusive[name]
            print("  %6d %5.1f%%  %s" % (n, 100.0 * n / total, shown[:140]))


if __name__ == "__main__":
    main()
