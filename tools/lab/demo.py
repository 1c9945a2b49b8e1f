"""`make demo`: boot the lab, plug each kind of device into the outer guest, and
narrate what the guest sees, what `vhotplug inspect` reads and where the lab's
rules (tools/lab/lab.conf) send it; unplug; print a summary.

(Once the daemon lands this narrates the running daemon's attach/detach instead.)
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import labkit  # noqa: E402
from labkit import Lab, LabError  # noqa: E402

# (what, kind, id, behind-a-hub kind)
SCENARIO = [
    ("USB mouse", "usb-mouse", "mouse1", None),
    ("USB keyboard", "usb-kbd", "kbd1", None),
    ("USB disk", "usb-storage", "disk1", None),
    ("USB hub with a mouse behind it", "usb-hub", "hub1", "usb-mouse"),
    ("Intel e1000e NIC on a PCIe root port", "e1000e", "nic1", None),
    ("virtio keyboard (non-USB input)", "virtio-keyboard-pci", "vkbd1", None),
]


def say(msg=""):
    print(msg, flush=True)


def describe_guest(p):
    g = p.guest or {}
    if g.get("subsystem") == "usb":
        extra = []
        if g.get("input"):
            extra.append(", ".join("/dev/input/" + e for e in g["input"]))
        if g.get("block"):
            extra.append(", ".join("/dev/" + b for b in g["block"]))
        drivers = ",".join(sorted({i["driver"] or "-" for i in g.get("interfaces", [])}))
        return "USB %s  %s:%s %r  bus %s dev %s, driver %s%s" % (
            g["name"], g["idVendor"], g["idProduct"], g.get("product"), g["busnum"], g["devnum"], drivers,
            ("  " + "; ".join(extra)) if extra else "")
    if g.get("subsystem") == "pci":
        extra = ("  " + ", ".join("/dev/input/" + e for e in g["input"])) if g.get("input") else ""
        return "PCI %s  %s:%s, driver %s, IOMMU group %s%s" % (
            g["name"], g["vendor"][2:], g["device"][2:], g["driver"], g["iommu_group"], extra)
    return str(g)


def inspect_lines(rec):
    a = rec["attributes"]
    sub = rec["subsystem"]
    if sub == "usb":
        ifs = " ".join("%02x/%02x/%02x%s" % (i["interfaceClass"], i["interfaceSubclass"], i["interfaceProtocol"],
                                            (":" + i["driver"]) if i.get("driver") else "") for i in a["interfaces"])
        names = " ".join(x for x in (a.get("vendorName") or a.get("manufacturer"),
                                     a.get("productName") or a.get("product")) if x)
        return "%s:%s %s, port path %s, %s Mb/s, interfaces %s%s" % (
            a["vendorId"], a["productId"], names, a.get("portPath") or "-", a.get("speed"), ifs,
            ", hub" if a.get("isHub") else "")
    if sub == "pci":
        return "%s:%s %s %s, class %02x%02x, driver %s, IOMMU group %s%s" % (
            a["vendorId"], a["deviceId"], a.get("vendorName") or "", a.get("deviceName") or "",
            a["deviceClass"], a["deviceSubclass"], a.get("driver"), a.get("iommuGroup"),
            " (alone)" if not a.get("iommuGroupPeers") else " with " + " ".join(a["iommuGroupPeers"]))
    return "%s %r bus 0x%04x, kinds %s, %s" % (a["devnode"], a.get("name"), a.get("busType", 0),
                                               ",".join(a.get("kinds") or []) or "-",
                                               "on USB" if a.get("hasUSBAncestor") else "not USB")


def decision_text(rec):
    d = rec.get("decision")
    if d is None:
        return "(inspect gave no decision)"
    text = d.get("summary") or ("%s (%s)" % (d.get("targetVm"), d.get("reason")))
    if rec["subsystem"] == "input" and text.endswith(" ()"):
        text = text[:-3] + " (evdevPassthrough)"
    return text


def main(vms=("vm1", "vm2")):
    t_start = time.monotonic()
    try:
        binary = labkit.find_vhotplug()
    except LabError as e:
        say("demo: %s" % e)
        return 1
    summary = []
    failures = 0
    with Lab(vms=vms, log=lambda m: None) as lab:
        say("vhotplug lab demo: Debian kernel %s under QEMU (TCG), inner VMs %s" % (lab.prepared.kver, ", ".join(vms)))
        say("  guest ready in %.1f s; vhotplug: %s; rules: %s" % (lab.timings["ready"], binary,
                                                                   os.path.relpath(labkit.LAB_CONF, labkit.REPO_ROOT)))
        for n, (what, kind, id, behind) in enumerate(SCENARIO, 1):
            say("")
            say("[%d/%d] %s" % (n, len(SCENARIO), what))
            p = lab.plug(kind, id)
            where = ("outer xhci port %s" % p.port) if p.port else ("outer root port %s" % p.bus)
            say("  plugged %s (%s) -> guest sees it in %.2f s" % (kind, where, p.elapsed))
            say("  guest:    " + describe_guest(p))
            plugged = [p]
            if behind:
                q = lab.plug(behind, id + "-dev", port=p.port + ".1")
                say("  plugged %s behind it (port %s) in %.2f s" % (behind, q.port, q.elapsed))
                say("  guest:    " + describe_guest(q))
                plugged.append(q)
            # what vhotplug reads, and the rules' decision
            names = []
            for q in plugged:
                names.append(q.guest["name"])
                names += q.guest.get("input", [])
            rc, out, err = lab.vhotplug_cli(["inspect", "--json", "-c", labkit.LAB_CONF] + names, binary=binary)
            decisions = []
            if rc != 0:
                failures += 1
                say("  vhotplug inspect failed (rc %s): %s" % (rc, (err or out).strip()[-400:]))
            else:
                try:
                    records = json.loads(out)
                except ValueError:
                    records = []
                    failures += 1
                    say("  vhotplug inspect: output is not JSON: %s" % out[:200])
                for rec in records:
                    say("  inspect:  %s %s: %s" % (rec["subsystem"], rec["sysName"], inspect_lines(rec)))
                    say("  rules:    %s %s %s" % (rec["subsystem"], rec["sysName"], decision_text(rec)))
                    d = rec.get("decision") or {}
                    decisions.append("%s:%s" % (rec["sysName"], d.get("targetVm") or ("-" if d else "?")))
            t_un = lab.unplug(id)
            say("  unplugged %s -> gone from the guest in %.2f s" % (id, t_un))
            summary.append((what, ", ".join(q.guest["name"] for q in plugged), p.elapsed, t_un, " ".join(decisions)))
        say("")
        say("Summary (boot to ready %.1f s, whole demo %.1f s):" % (lab.timings["ready"], time.monotonic() - t_start))
        say("  %-38s %-22s %7s %7s  %s" % ("device", "guest", "plug", "unplug", "rules (sysName:VM)"))
        for what, guest, tp, tu, dec in summary:
            say("  %-38s %-22s %6.2fs %6.2fs  %s" % (what, guest, tp, tu, dec))
    if failures:
        say("demo: %d step(s) failed" % failures)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
