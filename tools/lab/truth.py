"""What the guest itself says about its devices, read independently of vhotplug:
sysfs (through the guest agent), `lsusb -v`, `lspci -D -nnk -vmm` and udev's
input_id properties (`udevadm info`). Shaped like `vhotplug inspect --json`
attributes so the lab tests can compare field by field.
"""

import os
import re

USB_DIR = "/sys/bus/usb/devices"
PCI_DIR = "/sys/bus/pci/devices"
INPUT_DIR = "/sys/class/input"


def _hex(v, width=4):
    """'0x8086' / '8086' / 32902 -> '8086'."""
    if v is None:
        return None
    if isinstance(v, int):
        return "%0*x" % (width, v)
    v = v.strip().lower()
    if v.startswith("0x"):
        v = v[2:]
    return "%0*x" % (width, int(v, 16))


def _int16(v):
    return int(v.strip(), 16) if v is not None else None


def _strip(v):
    return v.rstrip("\n") if v is not None else None


# ----------------------------------------------------------------------------
# sysfs


# interface folders: 1-2.3:1.0, and 1-0:1.0 for the root hub usb1
IFACE_RE = re.compile(r"^\d+-[0-9.]+:\d+\.\d+$")


def usb_from_sysfs(lab):
    """{sysName: attributes} for every USB device (root hubs included)."""
    names = [n for n in lab.agent.call("listdir", paths=[USB_DIR])[USB_DIR] or [] if ":" not in n]
    files = ("busnum", "devnum", "devpath", "idVendor", "idProduct", "bcdDevice", "bDeviceClass",
             "bDeviceSubClass", "bDeviceProtocol", "manufacturer", "product", "serial", "speed", "removable")
    dirs = lab.agent.call("listdir", paths=["%s/%s" % (USB_DIR, n) for n in names])
    paths, links = [], []
    for n in names:
        paths += ["%s/%s/%s" % (USB_DIR, n, f) for f in files]
        for entry in dirs["%s/%s" % (USB_DIR, n)] or []:
            if IFACE_RE.match(entry):
                base = "%s/%s/%s" % (USB_DIR, n, entry)
                paths += [base + "/" + f for f in ("bInterfaceNumber", "bInterfaceClass", "bInterfaceSubClass",
                                                   "bInterfaceProtocol")]
                links.append(base + "/driver")
    text = lab.read_files(paths)
    lk = lab.agent.call("links", paths=links) if links else {}
    out = {}
    for n in names:
        def f(name):
            return _strip(text.get("%s/%s/%s" % (USB_DIR, n, name)))
        devpath = f("devpath") or ""
        bus, dev = int(f("busnum")), int(f("devnum"))
        ifaces = []
        for entry in dirs["%s/%s" % (USB_DIR, n)] or []:
            if not IFACE_RE.match(entry):
                continue
            base = "%s/%s/%s" % (USB_DIR, n, entry)
            drv = lk.get(base + "/driver", {}).get("readlink")
            ifaces.append({"interfaceNumber": _int16(text[base + "/bInterfaceNumber"]),
                           "interfaceClass": _int16(text[base + "/bInterfaceClass"]),
                           "interfaceSubclass": _int16(text[base + "/bInterfaceSubClass"]),
                           "interfaceProtocol": _int16(text[base + "/bInterfaceProtocol"]),
                           "driver": os.path.basename(drv) if drv else None})
        ifaces.sort(key=lambda i: i["interfaceNumber"])
        dclass = _int16(f("bDeviceClass"))
        root = devpath in ("", "0")
        out[n] = {
            "sysName": n, "bus": bus, "devnum": dev,
            "port": 0 if root else int(devpath.split(".")[0]),
            "portPath": "" if root else devpath,
            "vendorId": _hex(f("idVendor")), "productId": _hex(f("idProduct")), "bcdDevice": _hex(f("bcdDevice")),
            "deviceClass": dclass, "deviceSubclass": _int16(f("bDeviceSubClass")),
            "deviceProtocol": _int16(f("bDeviceProtocol")),
            "manufacturer": f("manufacturer"), "product": f("product"), "serial": f("serial"),
            "interfaces": ifaces, "speed": f("speed"), "removable": f("removable") or "unknown",
            "devnode": "/dev/bus/usb/%03d/%03d" % (bus, dev),
            "isHub": dclass == 9 or any(i["interfaceClass"] == 9 for i in ifaces),
        }
    return out


def pci_from_sysfs(lab):
    names = lab.agent.call("listdir", paths=[PCI_DIR])[PCI_DIR] or []
    files = ("vendor", "device", "subsystem_vendor", "subsystem_device", "class")
    text = lab.read_files(["%s/%s/%s" % (PCI_DIR, n, f) for n in names for f in files])
    lk = lab.agent.call("links", paths=["%s/%s/%s" % (PCI_DIR, n, l) for n in names for l in ("driver", "iommu_group")])
    groups = {}
    for n in names:
        g = lk["%s/%s/iommu_group" % (PCI_DIR, n)]["readlink"]
        if g:
            groups.setdefault(os.path.basename(g), []).append(n)
    out = {}
    for n in names:
        def f(name):
            return _strip(text["%s/%s/%s" % (PCI_DIR, n, name)])
        cls = int(f("class"), 16)
        drv = lk["%s/%s/driver" % (PCI_DIR, n)]["readlink"]
        g = lk["%s/%s/iommu_group" % (PCI_DIR, n)]["readlink"]
        g = os.path.basename(g) if g else None
        out[n] = {
            "address": n, "vendorId": _hex(f("vendor")), "deviceId": _hex(f("device")),
            "subsystemVendorId": _hex(f("subsystem_vendor")), "subsystemDeviceId": _hex(f("subsystem_device")),
            "deviceClass": cls >> 16, "deviceSubclass": (cls >> 8) & 0xFF, "deviceProgIf": cls & 0xFF,
            "driver": os.path.basename(drv) if drv else None,
            "iommuGroup": int(g) if g is not None else None,
            "iommuGroupPeers": sorted(p for p in groups.get(g, []) if p != n) if g is not None else [],
            "isBridge": (cls >> 16) == 0x06,
        }
    return out


USB_DEV_RE = re.compile(r"^(usb\d+|\d+-\d+(\.\d+)*)$")


def input_from_sysfs(lab):
    names = [n for n in lab.agent.call("listdir", paths=[INPUT_DIR])[INPUT_DIR] or [] if n.startswith("event")]
    files = ("device/name", "device/phys", "device/id/bustype", "device/id/vendor", "device/id/product")
    text = lab.read_files(["%s/%s/%s" % (INPUT_DIR, n, f) for n in names for f in files])
    lk = lab.agent.call("links", paths=["%s/%s" % (INPUT_DIR, n) for n in names]
                        + ["%s/%s/device" % (INPUT_DIR, n) for n in names])
    out = {}
    for n in names:
        def f(name):
            return _strip(text["%s/%s/%s" % (INPUT_DIR, n, name)])
        real = lk["%s/%s" % (INPUT_DIR, n)]["realpath"]
        parent = lk["%s/%s/device" % (INPUT_DIR, n)]["realpath"]     # /sys/devices/.../inputN
        tag = parent[len("/sys/devices/"):] if parent.startswith("/sys/devices/") else None
        if tag and os.path.basename(tag).startswith("input"):
            tag = os.path.dirname(tag)
        out[n] = {
            "sysName": n, "devnode": "/dev/input/" + n, "name": f("device/name"), "phys": f("device/phys"),
            "busType": _int16(f("device/id/bustype")), "vendorId": _hex(f("device/id/vendor")),
            "productId": _hex(f("device/id/product")),
            "hasUSBAncestor": any(USB_DEV_RE.match(part) for part in real.split("/")),
            "pathTag": tag,
        }
    return out


UDEV_KINDS = {"ID_INPUT_KEYBOARD": "keyboard", "ID_INPUT_KEY": "key", "ID_INPUT_MOUSE": "mouse",
              "ID_INPUT_TOUCHPAD": "touchpad", "ID_INPUT_TOUCHSCREEN": "touchscreen", "ID_INPUT_TABLET": "tablet",
              "ID_INPUT_JOYSTICK": "joystick", "ID_INPUT_ACCELEROMETER": "accelerometer",
              "ID_INPUT_POINTINGSTICK": "pointingstick", "ID_INPUT_SWITCH": "switch"}


def input_kinds_from_udev(lab, names):
    """{eventN: sorted kinds} from udev's input_id builtin (ID_INPUT_* properties)."""
    if not names:
        return {}
    script = "; ".join("echo '@@ %s'; udevadm info --query=property --name=/dev/input/%s" % (n, n) for n in names)
    out = lab.check(script)
    res, cur = {}, None
    for line in out.splitlines():
        if line.startswith("@@ "):
            cur = line[3:].strip()
            res[cur] = []
        elif cur and "=" in line:
            k, _, v = line.partition("=")
            if k in UDEV_KINDS and v.strip() == "1":
                res[cur].append(UDEV_KINDS[k])
    return {k: sorted(v) for k, v in res.items()}


# ----------------------------------------------------------------------------
# lsusb -v


def lsusb_verbose(lab):
    """{(bus, devnum): {...}} from `lsusb -v` (strings as the tool prints them)."""
    rc, out, err = lab.run("lsusb -v", timeout=60)
    devices, cur, iface = {}, None, None
    for line in out.splitlines():
        m = re.match(r"^Bus (\d+) Device (\d+): ID ([0-9a-f]{4}):([0-9a-f]{4})\s*(.*)$", line)
        if m:
            cur = {"bus": int(m.group(1)), "devnum": int(m.group(2)), "vendorId": m.group(3),
                   "productId": m.group(4), "names": m.group(5).strip(), "interfaces": []}
            devices[(cur["bus"], cur["devnum"])] = cur
            iface = None
            continue
        if cur is None:
            continue
        s = line.strip()
        m = re.match(r"^(\w+)\s+(\S+)\s*(.*)$", s)
        if not m:
            continue
        key, val, rest = m.group(1), m.group(2), m.group(3).strip()
        if key == "bInterfaceNumber":
            iface = {"interfaceNumber": int(val, 0)}
            cur["interfaces"].append(iface)
        elif key in ("bInterfaceClass", "bInterfaceSubClass", "bInterfaceProtocol") and iface is not None:
            iface[{"bInterfaceClass": "interfaceClass", "bInterfaceSubClass": "interfaceSubclass",
                   "bInterfaceProtocol": "interfaceProtocol"}[key]] = int(val, 0)
        elif key in ("bDeviceClass", "bDeviceSubClass", "bDeviceProtocol") and "deviceClass_" + key not in cur:
            cur[{"bDeviceClass": "deviceClass", "bDeviceSubClass": "deviceSubclass",
                 "bDeviceProtocol": "deviceProtocol"}[key]] = int(val, 0)
            cur["deviceClass_" + key] = True
        elif key == "bcdDevice":
            major, _, minor = val.partition(".")
            cur["bcdDevice"] = "%02x%s" % (int(major, 16), minor.zfill(2))
        elif key in ("iManufacturer", "iProduct", "iSerial"):
            cur[{"iManufacturer": "manufacturer", "iProduct": "product", "iSerial": "serial"}[key]] = \
                rest if int(val, 0) != 0 else None
    for d in devices.values():
        for k in [k for k in d if k.startswith("deviceClass_")]:
            del d[k]
    return devices


# ----------------------------------------------------------------------------
# lspci -D -nnk -vmm


def lspci_vmm(lab):
    """{address: {...}} from `lspci -D -nnk -vmm` (names and IDs as lspci resolves them)."""
    out = lab.check("lspci -D -nnk -vmm")
    devices, cur = {}, None
    for line in out.splitlines() + [""]:
        if not line.strip():
            cur = None
            continue
        k, _, v = line.partition(":")
        v = v.strip()
        if k == "Slot":
            cur = {"address": v}
            devices[v] = cur
            continue
        if cur is None:
            continue
        m = re.match(r"^(.*?)\s*\[([0-9a-f]{4})\]$", v)
        if k in ("Vendor", "Device", "SVendor", "SDevice", "Class") and m:
            cur[k + "Name"] = m.group(1)
            cur[k + "Id"] = m.group(2)
        elif k == "ProgIf":
            cur["ProgIf"] = int(v, 16)
        elif k in ("Driver", "IOMMUGroup", "Rev"):
            cur[k] = v
    return devices


def lspci_kernel_driver(lab, address):
    """`Kernel driver in use` of `lspci -nnk -s ADDRESS`."""
    out = lab.check("lspci -nnk -s %s" % address)
    m = re.search(r"Kernel driver in use:\s*(\S+)", out)
    return m.group(1) if m else None


# ----------------------------------------------------------------------------
# comparing


def norm(v):
    """Inspect values in comparable form: hex IDs lower case, port paths as 'a.b'."""
    if isinstance(v, list) and all(isinstance(x, int) for x in v) and v and not isinstance(v[0], bool):
        return ".".join(str(x) for x in v)
    if isinstance(v, str):
        return v
    return v


def compare(kind, name, got, want, keys=None, mismatches=None, source="sysfs"):
    """Append 'kind name key: inspect X, source Y' for every differing key."""
    mismatches = [] if mismatches is None else mismatches
    for k in keys or want.keys():
        if k not in want:
            continue
        if k not in got:
            mismatches.append("%s %s: inspect has no %r (%s says %r)" % (kind, name, k, source, want[k]))
            continue
        g, w = norm(got[k]), norm(want[k])
        if k in ("vendorId", "productId", "deviceId", "subsystemVendorId", "subsystemDeviceId", "bcdDevice") \
                and g is not None and w is not None:
            g, w = _hex(g) if isinstance(g, str) else _hex(g), _hex(w) if isinstance(w, str) else _hex(w)
        if k == "interfaces":
            g = [{kk: i.get(kk) for kk in ("interfaceNumber", "interfaceClass", "interfaceSubclass",
                                           "interfaceProtocol", "driver") if kk in w[0]} for i in g] if w else g
            g = sorted(g, key=lambda i: i.get("interfaceNumber", 0))
        if k in ("iommuGroupPeers", "kinds"):
            g, w = sorted(g or []), sorted(w or [])
        if g != w:
            mismatches.append("%s %s: %s: inspect %r, %s %r" % (kind, name, k, got[k], source, want[k]))
    return mismatches
