#!/usr/bin/env python3
"""Reference sysfs reader for the fixtures; run INSIDE a umockdev testbed:

    umockdev-run -d usb-hub.umockdev -- python3 check_fixture.py usb-hub.umockdev usb-hub.expected.json

It reads /sys the way vhotplug should (sysfs only: no udev database), builds the
`inspect --json` records, and compares them with the expected file. It also checks:
  * libusb-1.0 (ctypes) enumerates every USB device, and its ACTIVE configuration
    descriptor gives the same interface classes as sysfs (at the current altsetting),
    and the same port path;
  * udev's own classification (`udevadm test-builtin input_id`, systemd) gives the
    expected input kinds;
  * every `N:` node of the fixture exists as a char/block node with its major:minor.
Prints the records it read with --dump. Exit status 0 when all agree.
Python 3 standard library only.
"""

import ctypes
import ctypes.util
import json
import os
import re
import stat
import subprocess
import sys

SYS = "/sys"
problems = []


def problem(msg):
    problems.append(msg)


def read(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    text = data.decode("utf-8", "replace")
    return text[:-1] if text.endswith("\n") else text


def link_name(path):
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def uevent(path):
    out = {}
    for line in (read(os.path.join(path, "uevent")) or "").splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


# ---------------------------------------------------------------------------
# USB


def usb_records():
    base = SYS + "/bus/usb/devices"
    recs = []
    if not os.path.isdir(base):
        return recs
    for name in sorted(os.listdir(base)):
        d = os.path.join(base, name)
        if ":" in name:
            continue
        ue = uevent(d)
        if ue.get("DEVTYPE") != "usb_device":
            problem("%s: DEVTYPE is %r" % (name, ue.get("DEVTYPE")))
            continue
        if name.startswith("usb"):
            port, portpath = 0, ""
        else:
            portpath = name.split("-", 1)[1]
            port = int(portpath.split(".")[0])
        ifaces = []
        for sub in sorted(os.listdir(d)):
            if not re.fullmatch(re.escape(name if not name.startswith("usb") else name[3:] + "-0") +
                                r":\d+\.\d+", sub):
                continue
            i = os.path.join(d, sub)
            ifaces.append({"interfaceNumber": int(read(i + "/bInterfaceNumber"), 16),
                           "interfaceClass": int(read(i + "/bInterfaceClass"), 16),
                           "interfaceSubclass": int(read(i + "/bInterfaceSubClass"), 16),
                           "interfaceProtocol": int(read(i + "/bInterfaceProtocol"), 16),
                           "driver": link_name(i + "/driver"),
                           "_alt": int(read(i + "/bAlternateSetting"))})
            cfgval = int(sub.rsplit(":", 1)[1].split(".")[0])
            if cfgval != int(read(d + "/bConfigurationValue")):
                problem("%s: interface %s is not of the active configuration" % (name, sub))
        ifaces.sort(key=lambda x: x["interfaceNumber"])
        bus, devnum = int(read(d + "/busnum")), int(read(d + "/devnum"))
        devnode = "/dev/" + ue["DEVNAME"] if "DEVNAME" in ue else None
        if devnode != "/dev/bus/usb/%03d/%03d" % (bus, devnum):
            problem("%s: DEVNAME %s does not match busnum/devnum" % (name, devnode))
        cls = int(read(d + "/bDeviceClass"), 16)
        recs.append({"subsystem": "usb", "sysName": name, "attributes": {
            "sysName": name, "bus": bus, "devnum": devnum, "port": port, "portPath": portpath,
            "vendorId": read(d + "/idVendor"), "productId": read(d + "/idProduct"),
            "bcdDevice": read(d + "/bcdDevice"), "deviceClass": cls,
            "deviceSubclass": int(read(d + "/bDeviceSubClass"), 16),
            "deviceProtocol": int(read(d + "/bDeviceProtocol"), 16),
            "manufacturer": read(d + "/manufacturer"), "product": read(d + "/product"),
            "serial": read(d + "/serial"), "interfaces": ifaces, "speed": read(d + "/speed"),
            "removable": read(d + "/removable"), "devnode": devnode, "isHub": cls == 9}})
    return recs


class DevDesc(ctypes.Structure):
    _fields_ = [("bLength", ctypes.c_uint8), ("bDescriptorType", ctypes.c_uint8), ("bcdUSB", ctypes.c_uint16),
                ("bDeviceClass", ctypes.c_uint8), ("bDeviceSubClass", ctypes.c_uint8),
                ("bDeviceProtocol", ctypes.c_uint8), ("bMaxPacketSize0", ctypes.c_uint8),
                ("idVendor", ctypes.c_uint16), ("idProduct", ctypes.c_uint16), ("bcdDevice", ctypes.c_uint16),
                ("iManufacturer", ctypes.c_uint8), ("iProduct", ctypes.c_uint8),
                ("iSerialNumber", ctypes.c_uint8), ("bNumConfigurations", ctypes.c_uint8)]


class IfDesc(ctypes.Structure):
    _fields_ = [("bLength", ctypes.c_uint8), ("bDescriptorType", ctypes.c_uint8),
                ("bInterfaceNumber", ctypes.c_uint8), ("bAlternateSetting", ctypes.c_uint8),
                ("bNumEndpoints", ctypes.c_uint8), ("bInterfaceClass", ctypes.c_uint8),
                ("bInterfaceSubClass", ctypes.c_uint8), ("bInterfaceProtocol", ctypes.c_uint8),
                ("iInterface", ctypes.c_uint8), ("endpoint", ctypes.c_void_p),
                ("extra", ctypes.c_void_p), ("extra_length", ctypes.c_int)]


class Iface(ctypes.Structure):
    _fields_ = [("altsetting", ctypes.POINTER(IfDesc)), ("num_altsetting", ctypes.c_int)]


class CfgDesc(ctypes.Structure):
    _fields_ = [("bLength", ctypes.c_uint8), ("bDescriptorType", ctypes.c_uint8),
                ("wTotalLength", ctypes.c_uint16), ("bNumInterfaces", ctypes.c_uint8),
                ("bConfigurationValue", ctypes.c_uint8), ("iConfiguration", ctypes.c_uint8),
                ("bmAttributes", ctypes.c_uint8), ("MaxPower", ctypes.c_uint8),
                ("interface", ctypes.POINTER(Iface)), ("extra", ctypes.c_void_p), ("extra_length", ctypes.c_int)]


def libusb_check(usb):
    lib = ctypes.CDLL(ctypes.util.find_library("usb-1.0") or "libusb-1.0.so.0")
    lib.libusb_get_device_list.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.POINTER(ctypes.c_void_p))]
    lib.libusb_get_device_list.restype = ctypes.c_ssize_t
    lib.libusb_free_device_list.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
    for fn in ("libusb_get_bus_number", "libusb_get_device_address"):
        getattr(lib, fn).argtypes = [ctypes.c_void_p]
        getattr(lib, fn).restype = ctypes.c_uint8
    lib.libusb_get_device_descriptor.argtypes = [ctypes.c_void_p, ctypes.POINTER(DevDesc)]
    lib.libusb_get_active_config_descriptor.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.POINTER(CfgDesc))]
    lib.libusb_free_config_descriptor.argtypes = [ctypes.POINTER(CfgDesc)]
    lib.libusb_get_port_numbers.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint8), ctypes.c_int]
    ctx = ctypes.c_void_p()
    rc = lib.libusb_init(ctypes.byref(ctx))
    if rc != 0:
        problem("libusb_init failed: %d" % rc)
        return 0
    lst = ctypes.POINTER(ctypes.c_void_p)()
    n = lib.libusb_get_device_list(ctx, ctypes.byref(lst))
    seen = {}
    for k in range(max(n, 0)):
        dev = lst[k]
        bus, addr = lib.libusb_get_bus_number(dev), lib.libusb_get_device_address(dev)
        dd = DevDesc()
        lib.libusb_get_device_descriptor(dev, ctypes.byref(dd))
        cfgp = ctypes.POINTER(CfgDesc)()
        rc = lib.libusb_get_active_config_descriptor(dev, ctypes.byref(cfgp))
        ifs = {}
        if rc == 0:
            cfg = cfgp.contents
            for j in range(cfg.bNumInterfaces):
                it = cfg.interface[j]
                for a in range(it.num_altsetting):
                    d = it.altsetting[a]
                    ifs[(d.bInterfaceNumber, d.bAlternateSetting)] = (d.bInterfaceClass, d.bInterfaceSubClass,
                                                                      d.bInterfaceProtocol)
            lib.libusb_free_config_descriptor(cfgp)
        else:
            problem("libusb: %03d/%03d: get_active_config_descriptor = %d" % (bus, addr, rc))
        ports = (ctypes.c_uint8 * 8)()
        np = lib.libusb_get_port_numbers(dev, ports, 8)
        seen[(bus, addr)] = (dd.idVendor, dd.idProduct, ifs, ".".join(str(ports[i]) for i in range(max(np, 0))))
    lib.libusb_free_device_list(lst, 1)
    lib.libusb_exit(ctx)
    for r in usb:
        a = r["attributes"]
        got = seen.get((a["bus"], a["devnum"]))
        if got is None:
            problem("libusb does not list %s (bus %d dev %d)" % (r["sysName"], a["bus"], a["devnum"]))
            continue
        vid, pid, ifs, portpath = got
        if "%04x" % vid != a["vendorId"] or "%04x" % pid != a["productId"]:
            problem("libusb: %s ids %04x:%04x" % (r["sysName"], vid, pid))
        if portpath != a["portPath"]:
            problem("libusb: %s port path %r, sysfs %r" % (r["sysName"], portpath, a["portPath"]))
        nums = sorted({n for (n, _alt) in ifs})
        if nums != [i["interfaceNumber"] for i in a["interfaces"]]:
            problem("libusb: %s active config interfaces %s, sysfs %s" %
                    (r["sysName"], nums, [i["interfaceNumber"] for i in a["interfaces"]]))
        for i in a["interfaces"]:
            want = (i["interfaceClass"], i["interfaceSubclass"], i["interfaceProtocol"])
            lu = ifs.get((i["interfaceNumber"], i["_alt"]))
            if lu != want:
                problem("libusb: %s interface %d alt %d: %s, sysfs %s" %
                        (r["sysName"], i["interfaceNumber"], i["_alt"], lu, want))
    return len(seen)


# ---------------------------------------------------------------------------
# PCI


def pci_records():
    base = SYS + "/bus/pci/devices"
    recs = []
    if not os.path.isdir(base):
        return recs
    for addr in sorted(os.listdir(base)):
        d = os.path.join(base, addr)
        cls = int(read(d + "/class"), 16)
        group = link_name(d + "/iommu_group")
        peers = []
        if group is not None:
            gdir = "%s/kernel/iommu_groups/%s/devices" % (SYS, group)
            if not os.path.isdir(gdir):
                problem("%s: %s missing" % (addr, gdir))
            else:
                members = sorted(os.listdir(gdir))
                if addr not in members:
                    problem("%s: not listed in its own group %s" % (addr, group))
                for m in members:
                    if os.path.realpath(os.path.join(gdir, m)) != os.path.realpath(d):
                        peers.append(m)
                    if not os.path.isdir(os.path.join(gdir, m)):
                        problem("group %s: link %s does not resolve" % (group, m))
        drv = link_name(d + "/driver")
        if drv is not None and not os.path.isdir(d + "/driver"):
            problem("%s: driver link does not resolve to a folder" % addr)
        recs.append({"subsystem": "pci", "sysName": addr, "attributes": {
            "address": addr, "vendorId": read(d + "/vendor")[2:], "deviceId": read(d + "/device")[2:],
            "subsystemVendorId": read(d + "/subsystem_vendor")[2:],
            "subsystemDeviceId": read(d + "/subsystem_device")[2:],
            "deviceClass": cls >> 16, "deviceSubclass": (cls >> 8) & 0xFF, "deviceProgIf": cls & 0xFF,
            "driver": drv, "iommuGroup": int(group) if group is not None else None,
            "iommuGroupPeers": sorted(peers), "isBridge": (cls >> 16) == 0x06}})
    return recs


# ---------------------------------------------------------------------------
# input

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "tools", "bench"))


def input_records():
    from umockdevgen import input_kinds, sysfs_to_bits
    base = SYS + "/class/input"
    recs = []
    if not os.path.isdir(base):
        return recs
    for name in sorted(os.listdir(base)):
        if not re.fullmatch(r"event\d+", name):
            continue
        d = os.path.realpath(os.path.join(base, name))
        ue = uevent(d)
        parent = os.path.dirname(d)
        caps = {c: sysfs_to_bits(read(parent + "/capabilities/" + c) or "0")
                for c in ("ev", "key", "rel", "abs", "msc", "led", "snd", "ff", "sw")}
        caps["prop"] = sysfs_to_bits(read(parent + "/properties") or "0")
        bustype = int(read(parent + "/id/bustype"), 16)
        usb = False
        p = parent
        while p.startswith(SYS + "/devices/"):
            if link_name(p + "/subsystem") == "usb" and uevent(p).get("DEVTYPE") == "usb_device":
                usb = True
            p = os.path.dirname(p)
        kinds = input_kinds(caps, bustype)
        recs.append({"subsystem": "input", "sysName": name, "attributes": {
            "sysName": name, "devnode": "/dev/" + ue.get("DEVNAME", "?"), "name": read(parent + "/name"),
            "phys": read(parent + "/phys"), "busType": bustype, "vendorId": read(parent + "/id/vendor"),
            "productId": read(parent + "/id/product"), "hasUSBAncestor": usb, "kinds": kinds}})
        # systemd's own opinion
        try:
            out = subprocess.run(["udevadm", "test-builtin", "input_id", os.path.join(base, name)],
                                 capture_output=True, text=True, timeout=30).stdout
            udev = sorted({m.lower() for m in re.findall(r"^ID_INPUT_([A-Z]+)=1$", out, re.M)})
            if udev != kinds:
                problem("%s: udevadm input_id says %s, reader says %s" % (name, udev, kinds))
        except (OSError, subprocess.SubprocessError) as e:
            problem("udevadm test-builtin input_id failed: %s" % e)
    return recs


# ---------------------------------------------------------------------------


def check_nodes(fixture):
    blocks = open(fixture).read().split("\n\n")
    n = 0
    for b in blocks:
        node = re.search(r"^N: ([^=\n]+)", b, re.M)
        dev = re.search(r"^A: dev=(\d+):(\d+)", b, re.M)
        if not node:
            continue
        n += 1
        subsystem = re.search(r"^E: SUBSYSTEM=(.*)$", b, re.M).group(1)
        path = "/dev/" + node.group(1)
        try:
            st = os.stat(path)
        except OSError as e:
            problem("node %s: %s" % (path, e))
            continue
        want_block = subsystem == "block"
        if want_block != stat.S_ISBLK(st.st_mode) or (not want_block and not stat.S_ISCHR(st.st_mode)):
            problem("node %s: wrong type (mode %o)" % (path, st.st_mode))
        if dev and (os.major(st.st_rdev), os.minor(st.st_rdev)) != (int(dev.group(1)), int(dev.group(2))):
            problem("node %s: %d:%d, fixture says %s:%s" % (path, os.major(st.st_rdev), os.minor(st.st_rdev),
                                                            dev.group(1), dev.group(2)))
    return n


def run(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        problem("%s: %s" % (" ".join(cmd), e))
        return None
    if r.returncode != 0:
        problem("%s: exit status %d: %s" % (" ".join(cmd), r.returncode, r.stderr.strip()[:300]))
        return None
    return r


def tool_checks(fixture, expected):
    """What the standard tools make of the testbed: lsusb, lsusb -v, lsusb -t, lspci, udevadm."""
    usb = [r["attributes"] for r in expected if r["subsystem"] == "usb"]
    pci = [r["attributes"] for r in expected if r["subsystem"] == "pci"]
    if usb:
        r = run(["lsusb"])
        if r and len(re.findall(r"^Bus \d{3} Device \d{3}: ID ", r.stdout, re.M)) != len(usb):
            problem("lsusb lists %d devices, expected %d" % (r.stdout.count("\nBus ") + 1, len(usb)))
        r = run(["lsusb", "-v"])
        if r:
            if "Warning" in r.stdout or "Warning" in r.stderr:
                problem("lsusb -v warns: " + "; ".join(l.strip() for l in (r.stdout + r.stderr).splitlines()
                                                          if "Warning" in l)[:300])
            blocks = {}
            for block in re.split(r"^(?=Bus \d{3} Device \d{3})", r.stdout, flags=re.M):
                m = re.match(r"Bus (\d{3}) Device (\d{3}): ID ([0-9a-f]{4}):([0-9a-f]{4})", block)
                if not m:
                    continue
                trip = re.findall(r"bInterfaceClass\s+(\d+).*?\n\s+bInterfaceSubClass\s+(\d+).*?\n"
                                  r"\s+bInterfaceProtocol\s+(\d+)", block)
                blocks[(int(m.group(1)), int(m.group(2)))] = (m.group(3), m.group(4),
                                                              {tuple(int(x) for x in t) for t in trip})
            for a in usb:
                b = blocks.get((a["bus"], a["devnum"]))
                if b is None:
                    problem("lsusb -v: no block for %s" % a["sysName"])
                    continue
                if (b[0], b[1]) != (a["vendorId"], a["productId"]):
                    problem("lsusb -v: %s shows %s:%s" % (a["sysName"], b[0], b[1]))
                for i in a["interfaces"]:
                    t = (i["interfaceClass"], i["interfaceSubclass"], i["interfaceProtocol"])
                    if t not in b[2]:
                        problem("lsusb -v: %s interface %d class %s not shown" % (a["sysName"],
                                                                                 i["interfaceNumber"], t))
        r = run(["lsusb", "-t"])
        if r:
            lines = [l for l in r.stdout.splitlines() if " If " in l]
            want = sorted((i["driver"] or "[none]") for a in usb if a["port"] != 0 for i in a["interfaces"])
            got = sorted(re.search(r"Driver=([^/,]*)", l).group(1) or "[none]" for l in lines)
            if got != want:
                problem("lsusb -t: interface drivers %s, expected %s" % (got, want))
        run(["ls", "-lR", "/sys/bus/usb/devices/"])
    if pci:
        r = run(["lspci", "-nnk", "-vv"])
        if r:
            blocks = {}
            for block in r.stdout.split("\n\n"):
                m = re.match(r"([0-9a-f]{2}:[0-9a-f]{2}\.[0-7]) .*\[([0-9a-f]{4}):([0-9a-f]{4})\]", block)
                if m:
                    blocks["0000:" + m.group(1)] = (m.group(2), m.group(3), block)
            for a in pci:
                b = blocks.get(a["address"])
                if b is None:
                    problem("lspci: %s not listed" % a["address"])
                    continue
                if (b[0], b[1]) != (a["vendorId"], a["deviceId"]):
                    problem("lspci: %s shows %s:%s" % (a["address"], b[0], b[1]))
                if a["driver"] and "Kernel driver in use: %s" % a["driver"] not in b[2]:
                    problem("lspci: %s: driver %s not shown" % (a["address"], a["driver"]))
                if a["iommuGroup"] is not None and "IOMMU group: %d" % a["iommuGroup"] not in b[2]:
                    problem("lspci: %s: IOMMU group %d not shown" % (a["address"], a["iommuGroup"]))
    r = run(["udevadm", "info", "--export-db"])
    if r:
        listed = set(re.findall(r"^P: (.*)$", r.stdout, re.M))
        for path in re.findall(r"^P: (.*)$", open(fixture).read(), re.M):
            if path.startswith("/devices/../"):
                if path in listed:
                    problem("udevadm lists the helper %s" % path)
            elif path not in listed:
                problem("udevadm info --export-db does not list %s" % path)


def check_mountinfo(fixture, expected):
    """With NAME.mountinfo beside the fixture: its / and /boot* filesystems must map, through
    /sys/dev/block/MAJ:MIN, to block devices below one of the fixture's PCI devices."""
    path = fixture[: -len(".umockdev")] + ".mountinfo"
    if not os.path.exists(path):
        return 0
    n = 0
    pci = [r["sysName"] for r in expected if r["subsystem"] == "pci"]
    for line in open(path):
        f = line.split()
        if len(f) < 5 or f[4] not in ("/", "/boot", "/boot/efi"):
            continue
        n += 1
        real = os.path.realpath(SYS + "/dev/block/" + f[2])
        if not os.path.isdir(real):
            problem("mountinfo: %s (%s) has no /sys/dev/block entry" % (f[4], f[2]))
        elif not any("/" + a + "/" in real for a in pci):
            problem("mountinfo: %s resolves to %s, below none of %s" % (f[4], real, pci))
    return n


def strip_private(recs):
    for r in recs:
        for i in r["attributes"].get("interfaces", []):
            i.pop("_alt", None)
    return recs


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if not os.environ.get("UMOCKDEV_DIR"):
        sys.exit("check_fixture.py: run me under umockdev-run")
    fixture, expected_path = args
    usb = usb_records()
    nlibusb = libusb_check(usb) if usb else 0
    got = strip_private(usb + pci_records() + input_records())
    nnodes = check_nodes(fixture)
    if "--dump" in sys.argv:
        print(json.dumps(got, indent=2))
    expected = json.load(open(expected_path))
    tool_checks(fixture, expected)
    check_mountinfo(fixture, expected)
    gmap = {(r["subsystem"], r["sysName"]): r for r in got}
    emap = {(r["subsystem"], r["sysName"]): r for r in expected}
    for k in sorted(set(gmap) | set(emap)):
        if k not in gmap:
            problem("%s %s: expected but not found in sysfs" % k)
        elif k not in emap:
            problem("%s %s: in sysfs but not in the expected file" % k)
        else:
            ga, ea = gmap[k]["attributes"], emap[k]["attributes"]
            for key in sorted(set(ga) | set(ea)):
                if ga.get(key, "<absent>") != ea.get(key, "<absent>"):
                    problem("%s %s: %s: sysfs %s, expected %s" % (k[0], k[1], key, json.dumps(ga.get(key)),
                                                                  json.dumps(ea.get(key))))
    counts = {s: sum(1 for r in got if r["subsystem"] == s) for s in ("usb", "pci", "input")}
    status = "FAIL" if problems else "ok"
    print("%s: %s (usb %d, libusb %d, pci %d, input %d, nodes %d)" % (
        os.path.basename(fixture), status, counts["usb"], nlibusb, counts["pci"], counts["input"], nnodes))
    for p in problems:
        print("  - " + p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
