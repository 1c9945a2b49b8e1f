#!/usr/bin/env python3
"""Generate a umockdev testbed with N USB mice, for vhotplug's coldplug benchmark (`-a`).

    python3 tools/bench/gen-mice.py [-n 100] [-o out.umockdev] [--split DIR]

The host of gen-testbed.py's base (PCI functions, an integrated xHCI with 14 USB 2
ports on bus 1), a 7-port USB 2.0 hub (1a40:0201) on each root port, and Logitech
USB Optical Mice (046d:c077, low speed, one HID boot-mouse interface, with their HID,
hidraw, input, eventN and mouseN children) filling the hubs in root-port order
(1-1.1 ... 1-1.7, 1-2.1, ...); past 98 mice, hubs behind the last hubs. Mice and hubs
share bus 1's addresses (2..127). Deterministic. Python 3 standard library only.
"""

import argparse
import importlib.util
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("gen_testbed", os.path.join(here, "gen-testbed.py"))
gen_testbed = importlib.util.module_from_spec(spec)
sys.path.insert(0, here)
spec.loader.exec_module(gen_testbed)


def build(n):
    """One 7-port hub on each of the 14 root ports, mice filling them in port order
    (root port 1 first); past 98 mice, second-level hubs on the last ports."""
    g = gen_testbed.Gen(n, 1)
    g.pci_base()
    root = next(h for h in g.hubs if not h["ss"])
    ss_roots = [h for h in g.hubs if h["ss"]]

    def place(kind, at):
        """Places a device on the first free port of hub entry `at` (attach_point draws from g.hubs)."""
        saved = g.hubs
        g.hubs = [at]
        ok = g.usb_plain(kind) if kind == "hub7" else g.usb_hid(kind)
        new = g.hubs[1:]
        g.hubs = saved + new
        if not ok:
            raise SystemExit("cannot place a %s" % kind)
        return new[0] if new else None

    hubs = [place("hub7", root) for _ in range(14)]
    spare = len(hubs) - 1
    while sum(len(h["ports"]) for h in hubs) < n:
        hubs.append(place("hub7", hubs[spare]))  # takes a port, gives 7
        spare -= 1
    for _ in range(n):
        place("mouse", next(h for h in hubs if h["ports"]))
    g.hubs = [root] + ss_roots
    return g.bed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=100, help="number of mice (default 100)")
    ap.add_argument("-o", "--output", help="one umockdev file")
    ap.add_argument("--split", metavar="DIR", help="DIR/part-NNNN.umockdev files of at most 40 records "
                                                   "(umockdev parses one big file in quadratic time)")
    args = ap.parse_args()
    bed = build(args.n)
    text = bed.render()
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    if args.split:
        os.makedirs(args.split, exist_ok=True)
        blocks = [b.strip("\n") for b in text.split("\n\n") if b.strip()]
        for i in range(0, len(blocks), 40):
            with open(os.path.join(args.split, "part-%04d.umockdev" % (i // 40)), "w") as f:
                f.write("\n\n".join(blocks[i:i + 40]) + "\n")
    if not args.output and not args.split:
        sys.stdout.write(text)
    usb = [d for d in bed.devs if ("DEVTYPE", "usb_device") in d.props]
    hubs = [d for d in usb if dict(d.attrs).get("bDeviceClass", "").strip() == "09"]
    print("%d mice, %d hubs (root hubs included), %d sysfs records" % (args.n, len(hubs), len(bed.devs)),
          file=sys.stderr)


if __name__ == "__main__":
    main()
