#!/usr/bin/env python3
"""vhotplug real-kernel lab.

    python3 tools/lab/lab.py prepare [--refresh]   download kernel + busybox, write the initramfs
    python3 tools/lab/lab.py boot                  boot, print timings and the guest's devices, stop
    python3 tools/lab/lab.py shell [--vms vm1,vm2] boot and read guest commands from stdin
    python3 tools/lab/lab.py run CMD...            boot, run one guest command, stop
    python3 tools/lab/lab.py demo                  the daemon in the guest: plug, narrate, summary

See tools/lab/README.md.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import labkit  # noqa: E402
from labkit import Lab, LabError  # noqa: E402


def cmd_prepare(args):
    p = labkit.prepare(refresh=args.refresh)
    print("kernel:    %s" % p.kernel)
    print("initramfs: %s (%d modules)" % (p.initrd, len(p.modules)))
    print("modules:   %s" % " ".join(m.split(".ko")[0] for m in p.modules))
    return 0


def _vms(args):
    return [v for v in args.vms.split(",") if v] if args.vms else ["vm1"]


def cmd_boot(args):
    with Lab(vms=_vms(args)) as lab:
        print(lab.check("uname -a; lsusb; lspci -nn; ls /dev/input /dev/vfio; "
                        "cat /run/vhotplug-lab/sanity; ls /run/vhotplug-lab"))
        for vm in lab.vms:
            print("%s: %s" % (vm, lab.inner_qmp(vm, "query-status")))
            print("%s peripherals: %s" % (vm, lab.inner_peripherals(vm)))
        print("timings: %s" % {k: round(v, 2) for k, v in lab.timings.items()})
    return 0


def cmd_run(args):
    with Lab(vms=_vms(args)) as lab:
        rc, out, err = lab.run(" ".join(args.cmd), timeout=args.timeout)
        sys.stdout.write(out)
        sys.stderr.write(err)
        return rc if rc is not None else 124


def cmd_shell(args):
    with Lab(vms=_vms(args)) as lab:
        print("lab ready in %.1f s. Guest commands, one per line (Ctrl-D to stop). "
              "Lines starting with ':' are Python with `lab` in scope, e.g. "
              ":lab.plug('usb-mouse','m1')" % lab.timings["ready"])
        while True:
            try:
                line = input("guest# ")
            except EOFError:
                break
            if not line.strip():
                continue
            try:
                if line.startswith(":"):
                    r = eval(line[1:], {"lab": lab, "labkit": labkit})  # noqa: S307 - interactive tool
                    print(repr(r))
                else:
                    rc, out, err = lab.run(line, timeout=120)
                    sys.stdout.write(out)
                    sys.stdout.write(err)
                    if rc:
                        print("(rc %s)" % rc)
            except (LabError, labkit.QMPError, Exception) as e:  # noqa: BLE001
                print("error: %s" % e)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--refresh", action="store_true", help="pick and download the newest kernel again")
    for name in ("boot", "shell", "demo"):
        p = sub.add_parser(name)
        p.add_argument("--vms", default=None, help="inner VMs (default vm1)")
    p = sub.add_parser("run")
    p.add_argument("--vms", default=None)
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("cmd", nargs="+")
    args = ap.parse_args(argv)
    try:
        if args.command == "prepare":
            return cmd_prepare(args)
        if args.command == "boot":
            return cmd_boot(args)
        if args.command == "run":
            return cmd_run(args)
        if args.command == "shell":
            return cmd_shell(args)
        if args.command == "demo":
            import demo
            return demo.main(_vms(args))
    except LabError as e:
        print("lab: FAILED: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lab: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
