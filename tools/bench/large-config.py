#!/usr/bin/env python3
"""Times `vhotplug check -c FILE` on large configurations: validation work that would grow
faster than the input shows here (the unit tests check what is reported, not how fast).
Usage: large-config.py VHOTPLUG [RUNS]. One line per configuration: median, min and max of RUNS."""
import os, statistics, subprocess, sys, tempfile, time

exe = sys.argv[1]
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 7
stem = "v" * 20_000
vms = '"vms": [{"name": "vm1", "type": "qemu", "socket": "/run/vm1.qmp"}]'
cases = [
    # A 20 KB targetVm beside a 20 KB VM name that differs at its end: the "did you mean"
    # search compares two long words (bounded edit distance: linear, not quadratic).
    ("a 20 KB targetVm next to a 20 KB VM name differing at its end (1 error)", 2,
     '{"vms": [{"name": "%s1", "type": "qemu", "socket": "/s"}], '
     '"usbPassthrough": [{"targetVm": "%s2", "allow": [{"vendorId": "046d"}]}]}' % (stem, stem)),
    # 20000 unknown names in allowedVms: 100 errors reported, the rest counted.
    ("20000 unknown names in allowedVms (20000 errors, 100 shown)", 2,
     '{%s, "usbPassthrough": [{"targetVm": "vm1", "allowedVms": [%s], "allow": [{"vendorId": "046d"}]}]}'
     % (vms, ", ".join('"x%d"' % i for i in range(20_000)))),
    # A valid configuration of 5000 allow entries.
    ("5000 allow entries, valid", 0,
     '{%s, "usbPassthrough": [{"targetVm": "vm1", "allow": [%s]}]}'
     % (vms, ", ".join('{"vendorId": "%04x", "productId": "%04x"}' % (i // 256, i % 256) for i in range(5000)))),
]
with tempfile.TemporaryDirectory() as work:
    for what, status, text in cases:
        path = os.path.join(work, "c.conf")
        with open(path, "w") as f:
            f.write(text)
        samples = []
        for _ in range(runs):
            t0 = time.perf_counter()
            r = subprocess.run([exe, "check", "-c", path], capture_output=True)
            samples.append((time.perf_counter() - t0) * 1000)
            if r.returncode != status:
                sys.exit("%s: exit %d, expected %d: %s" % (what, r.returncode, status, r.stderr[-500:]))
        print("vhotplug check, %s, %d KB: median %.1f ms, min %.1f ms, max %.1f ms"
              % (what, len(text) // 1024, statistics.median(samples), min(samples), max(samples)))
