"""umockdevgen: build umockdev device descriptions (*.umockdev) of realistic
Linux 6.x sysfs trees: PCI functions, xHCI root hubs, USB devices with their
raw descriptors, HID/input/evdev children, block devices, IOMMU groups.

Python 3 standard library only. Used by
  Tests/HostDevicesTests/Fixtures/make-fixtures.py  (the hand-picked fixtures)
  tools/bench/gen-testbed.py                         (N devices for the benchmark)

The umockdev text format (umockdev_testbed_add_from_string):
  P: /devices/...      sysfs path (must come first in a block)
  N: node[=HEX]        /dev node (relative to /dev), optional contents
  E: KEY=VALUE         uevent property (written to the `uevent` file)
  A: name=VALUE        text attribute (\\n and \\\\ escapes)
  H: name=HEX          binary attribute
  L: name=TARGET       symlink inside the device folder

Two things sysfs has that the format cannot name directly are made with a
"helper" block whose P: path climbs out of /devices with `..`:
  * /sys/kernel/iommu_groups/N/devices/<addr> links (and `type`)
  * /sys/bus/pci/drivers/<driver>/ folders (bind, unbind, new_id, remove_id, links)
The helper's own folder is a dot-folder (udev's enumerator skips names that start
with "."), and its SUBSYSTEM is "umockdev-helper"; see Fixtures/README.md.
"""

import json
import posixpath
import struct

# --------------------------------------------------------------------------
# Text rendering


def esc(value):
    """Escape a text attribute value for an A: line (g_strcompress syntax)."""
    out = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20:
            out.append("\\%03o" % ord(ch))
        else:
            out.append(ch)
    return "".join(out)


def hexs(data):
    return data.hex().upper()


def updots(path):
    """'../' repeated once per component of a /devices/... path (to reach /sys)."""
    return "../" * len([c for c in path.split("/") if c])


def kernfs_relative(link_dir, target):
    """The relative target the kernel writes for a sysfs link placed in `link_dir`
    (kernfs_get_target_path: climb until the base holds the target's parent)."""
    base = link_dir.rstrip("/")
    tparent = posixpath.dirname(target)
    ups = 0
    while not (tparent == base or tparent.startswith(base + "/") or base == ""):
        base = posixpath.dirname(base) if base != "/" else ""
        base = "" if base == "/" else base
        ups += 1
    return "../" * ups + target[len(base):].lstrip("/")


class Dev:
    """One sysfs device: a block of the umockdev file."""

    def __init__(self, path, subsystem, devtype=None, driver=None, driver_bus=None):
        assert path.startswith("/devices/"), path
        self.path = path
        self.subsystem = subsystem
        self.props = [("SUBSYSTEM", subsystem)]  # SUBSYSTEM kept first for readability
        self.attrs = []
        self.hattrs = []
        self.links = []
        self.node = None
        self.node_contents = None
        if devtype:
            self.props.append(("DEVTYPE", devtype))
        if driver:
            self.set_driver(driver, driver_bus or subsystem)

    @property
    def name(self):
        return self.path.rsplit("/", 1)[1]

    def set_driver(self, driver, bus):
        self.props.append(("DRIVER", driver))
        self.links.append(("driver", updots(self.path) + "bus/%s/drivers/%s" % (bus, driver)))

    def prop(self, key, value):
        self.props.append((key, str(value)))
        return self

    def attr(self, key, value, newline=True):
        value = str(value)
        self.attrs.append((key, value + ("\n" if newline else "")))
        return self

    def hattr(self, key, data):
        self.hattrs.append((key, bytes(data)))
        return self

    def link(self, key, target):
        self.links.append((key, target))
        return self

    def link_to(self, key, sys_target):
        """A link to another place of /sys (given as a /sys-relative path), spelled as sysfs does."""
        self.links.append((key, kernfs_relative(self.path, sys_target)))
        return self

    def device_link(self, parent_path):
        """The `device` link class devices have to their parent."""
        return self.link_to("device", parent_path)

    def devnode(self, name, major, minor, contents=None):
        self.node = name
        self.node_contents = contents
        self.props.append(("MAJOR", str(major)))
        self.props.append(("MINOR", str(minor)))
        self.props.append(("DEVNAME", "/dev/" + name))
        self.attr("dev", "%d:%d" % (major, minor))
        return self

    def render(self):
        lines = ["P: " + self.path]
        if self.node:
            if self.node_contents:
                lines.append("N: %s=%s" % (self.node, hexs(self.node_contents)))
            else:
                lines.append("N: " + self.node)
        for k, v in self.props:
            lines.append("E: %s=%s" % (k, v))
        for k, v in sorted(self.attrs, key=lambda kv: kv[0]):
            lines.append("A: %s=%s" % (k, esc(v)))
        for k, v in self.hattrs:
            lines.append("H: %s=%s" % (k, hexs(v)))
        for k, v in self.links:
            lines.append("L: %s=%s" % (k, v))
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# USB descriptors


def le16(v):
    return struct.pack("<H", v)


def le32(v):
    return struct.pack("<I", v)


def device_descriptor(bcdUSB, cls, sub, proto, mps0, vid, pid, bcd, iManufacturer, iProduct, iSerial,
                      nconfigs=1):
    return bytes([18, 1]) + le16(bcdUSB) + bytes([cls, sub, proto, mps0]) + le16(vid) + le16(pid) + \
        le16(bcd) + bytes([iManufacturer, iProduct, iSerial, nconfigs])


def interface(num, alt, nep, cls, sub, proto, iInterface=0):
    return bytes([9, 4, num, alt, nep, cls, sub, proto, iInterface])


def endpoint(addr, attrs, mps, interval, audio=False):
    if audio:  # audio class 1.0 endpoints carry bRefresh and bSynchAddress
        return bytes([9, 5, addr, attrs]) + le16(mps) + bytes([interval, 0, 0])
    return bytes([7, 5, addr, attrs]) + le16(mps) + bytes([interval])


def ss_companion(max_burst=0, attrs=0, bytes_per_interval=0):
    return bytes([6, 0x30, max_burst, attrs]) + le16(bytes_per_interval)


def iad(first, count, cls, sub, proto, iFunction=0):
    return bytes([8, 0x0B, first, count, cls, sub, proto, iFunction])


def hid_descriptor(report_len, bcdHID=0x0111, country=0):
    return bytes([9, 0x21]) + le16(bcdHID) + bytes([country, 1, 0x22]) + le16(report_len)


def cs(*parts):
    """A class-specific descriptor; the length byte is computed."""
    body = b"".join(bytes(p) if not isinstance(p, int) else bytes([p]) for p in parts)
    return bytes([len(body) + 1]) + body


def config_descriptor(value, attrs, max_power_raw, items, iConfiguration=0):
    body = b"".join(items)
    numbers = set()
    for d in split_descriptors(body):
        if d[1] == 4:
            numbers.add(d[2])
    total = 9 + len(body)
    head = bytes([9, 2]) + le16(total) + bytes([len(numbers), value, iConfiguration, attrs, max_power_raw])
    return head + body


def split_descriptors(data):
    out = []
    i = 0
    while i < len(data):
        n = data[i]
        if n < 2 or i + n > len(data):
            raise ValueError("bad descriptor at %d" % i)
        out.append(data[i:i + n])
        i += n
    return out


def parse_config(cfg):
    """Interfaces (all alternate settings) and IADs of one configuration descriptor."""
    assert cfg[1] == 2 and struct.unpack("<H", cfg[2:4])[0] == len(cfg), "wTotalLength mismatch"
    ifaces = []
    iads = []
    cur = None
    for d in split_descriptors(cfg)[1:]:
        if d[1] == 4:
            cur = {"num": d[2], "alt": d[3], "nep": d[4], "cls": d[5], "sub": d[6], "proto": d[7],
                   "iInterface": d[8], "eps": []}
            ifaces.append(cur)
        elif d[1] == 5:
            assert cur is not None
            cur["eps"].append(d[2])
        elif d[1] == 0x0B:
            iads.append({"first": d[2], "count": d[3], "cls": d[4], "sub": d[5], "proto": d[6]})
    for i in ifaces:
        assert len(i["eps"]) == i["nep"], "bNumEndpoints mismatch in interface %d alt %d" % (i["num"], i["alt"])
    nums = {i["num"] for i in ifaces}
    assert cfg[4] == len(nums), "bNumInterfaces mismatch"
    return ifaces, iads


# --------------------------------------------------------------------------
# Input capability bitmaps (the kernel's input_print_bitmap / modalias)

EV_MAX, KEY_MAX, REL_MAX, ABS_MAX, MSC_MAX = 0x1F, 0x2FF, 0x0F, 0x3F, 0x07
LED_MAX, SND_MAX, FF_MAX, SW_MAX, PROP_MAX = 0x0F, 0x07, 0x7F, 0x10, 0x1F
KEY_MIN_INTERESTING = 113  # KEY_MUTE
CAP_MAX = {"ev": EV_MAX, "key": KEY_MAX, "rel": REL_MAX, "abs": ABS_MAX, "msc": MSC_MAX,
           "led": LED_MAX, "snd": SND_MAX, "ff": FF_MAX, "sw": SW_MAX, "prop": PROP_MAX}
EV_BIT = {"key": 1, "rel": 2, "abs": 3, "msc": 4, "sw": 5, "led": 0x11, "snd": 0x12, "ff": 0x15}


def bits_to_sysfs(bits, maxbit):
    nwords = maxbit // 64 + 1
    words = [0] * nwords
    for b in bits:
        assert 0 <= b <= maxbit
        words[b // 64] |= 1 << (b % 64)
    i = nwords - 1
    while i > 0 and words[i] == 0:
        i -= 1
    return " ".join("%x" % words[j] for j in range(i, -1, -1))


def sysfs_to_bits(text):
    words = [int(w, 16) for w in text.split()][::-1]
    return sorted(64 * i + b for i, w in enumerate(words) for b in range(64) if w >> b & 1)


def as_bits(spec):
    if spec is None:
        return []
    if isinstance(spec, str):
        return sysfs_to_bits(spec)
    return sorted(set(spec))


# --------------------------------------------------------------------------
# PCI config space


def pcie_capability(devtype, speed=3, width=1, slot=False, next_ptr=0):
    """A PCI Express capability (v2) at its offset; 0x3c bytes."""
    flags = 0x0002 | (devtype << 4) | (0x100 if slot else 0)
    devcap = 0x00008fc2 if devtype in (0, 1) else 0x00008001
    linkcap = speed | (width << 4) | (0x3 << 10) | (0x1 << 15)
    linkctl = 0x0040
    linksta = speed | (width << 4) | 0x1000
    b = bytes([0x10, next_ptr]) + le16(flags) + le32(devcap) + le16(0x2810) + le16(0x0000)
    b += le32(linkcap) + le16(linkctl) + le16(linksta)
    b += le32(0x00080000 if slot else 0) + le16(0) + le16(0x0040 if slot else 0)  # slot cap/ctl/sta
    b += le16(0) + le16(0) + le32(0)  # root ctl/cap/sta
    b += le32(0x00000010) + le16(0) + le16(0)  # devcap2/ctl2/sta2
    b += le32(((1 << speed) - 1) << 1) + le16(speed) + le16(0)  # linkcap2/ctl2/sta2
    b += le32(0) + le16(0) + le16(0)  # slot cap2/ctl2/sta2
    assert len(b) == 0x3C
    return b


def pm_capability(next_ptr):
    return bytes([0x01, next_ptr]) + le16(0xC803) + le16(0x0008) + bytes([0, 0])


MEM64, MEM64_PREF, MEM32, IO = "mem64", "mem64pref", "mem32", "io"
RESOURCE_FLAGS = {MEM64: 0x140204, MEM64_PREF: 0x14220C, MEM32: 0x40200, IO: 0x40101}


def pci_config(vendor, device, cls, rev, subvendor, subdevice, bars, irq_line, irq_pin=1, header=0,
               multifunction=False, bridge=None, pcie=None):
    cfg = bytearray(256)
    struct.pack_into("<HH", cfg, 0, vendor, device)
    struct.pack_into("<HH", cfg, 4, 0x0406 if header == 0 else 0x0407, 0x0010)
    cfg[8] = rev
    cfg[9] = cls & 0xFF
    cfg[10] = (cls >> 8) & 0xFF
    cfg[11] = (cls >> 16) & 0xFF
    cfg[0x0C] = 0x10 if header == 0 else 0x00
    cfg[0x0E] = header | (0x80 if multifunction else 0)
    if header == 0:
        off = 0x10
        for (start, size, kind) in bars:
            if kind == IO:
                struct.pack_into("<I", cfg, off, start | 1)
                off += 4
            elif kind == MEM32:
                struct.pack_into("<I", cfg, off, start)
                off += 4
            else:
                low = (start & 0xFFFFFFF0) | 0x4 | (0x8 if kind == MEM64_PREF else 0)
                struct.pack_into("<II", cfg, off, low, start >> 32)
                off += 8
        struct.pack_into("<HH", cfg, 0x2C, subvendor, subdevice)
    else:
        prim, sec, sub, mem, pref = bridge
        cfg[0x18], cfg[0x19], cfg[0x1A] = prim, sec, sub
        cfg[0x1C], cfg[0x1D] = 0xF0, 0x00  # no I/O window
        if mem:
            struct.pack_into("<HH", cfg, 0x20, (mem[0] >> 16) & 0xFFF0, ((mem[0] + mem[1] - 1) >> 16) & 0xFFF0)
        else:
            struct.pack_into("<HH", cfg, 0x20, 0xFFF0, 0x0000)
        if pref:
            end = pref[0] + pref[1] - 1
            struct.pack_into("<HH", cfg, 0x24, ((pref[0] >> 16) & 0xFFF0) | 1, ((end >> 16) & 0xFFF0) | 1)
            struct.pack_into("<II", cfg, 0x28, pref[0] >> 32, end >> 32)
        else:
            struct.pack_into("<HH", cfg, 0x24, 0xFFF1, 0x0001)
        struct.pack_into("<H", cfg, 0x3E, 0x0010)
    cfg[0x34] = 0x40
    cfg[0x3C] = irq_line
    cfg[0x3D] = irq_pin
    cfg[0x40:0x48] = pm_capability(0x50)
    if pcie is not None:
        cfg[0x50:0x50 + 0x3C] = pcie_capability(*pcie)
    else:  # conventional PCI-style integrated function: stop after PM
        cfg[0x41] = 0
    return bytes(cfg)


# --------------------------------------------------------------------------
# The testbed builder


class Bed:
    """Collects devices (blocks), expected inspect records and helper blocks."""

    def __init__(self, kernel="6.1.0-18-amd64"):
        self.kernel = kernel
        self.devs = []
        self.by_path = {}
        self.expected = []
        self.iommu = {}  # group -> [pci dev path]
        self.pci_drivers = {}  # driver -> [pci dev path]
        self.next_devnum = {}
        self.usb_minor_used = set()

    # ---- generic
    def add(self, dev):
        assert dev.path not in self.by_path, "duplicate " + dev.path
        self.devs.append(dev)
        self.by_path[dev.path] = dev
        return dev

    def classdev(self, parent, sub, name, subsystem, devtype=None, node=None, link_device=True):
        """A class device below `parent` (path), e.g. net/enx..., drm/card0."""
        path = "%s/%s/%s" % (parent, sub, name) if sub else "%s/%s" % (parent, name)
        d = Dev(path, subsystem, devtype)
        if link_device:
            d.device_link(parent)
        if node:
            d.devnode(*node)
        return self.add(d)

    # ---- PCI
    def pci(self, addr, vendor, device, cls, rev=0x00, subvendor=0, subdevice=0, driver=None,
            parent="/devices/pci0000:00", iommu_group=None, irq=16, bars=(), multifunction=False,
            bridge=None, pcie=None, numa_node=-1, extra_attrs=None, link=None):
        """bridge = (primary, secondary, subordinate, (mem_start, size) or None, (pref_start, size) or None).
        pcie = (devtype, speed, width[, slot]) for an Express capability; link = (cur, max speed text, width)."""
        path = parent + "/" + addr
        header = 1 if bridge else 0
        d = Dev(path, "pci", driver=driver)
        modalias = "pci:v%08Xd%08Xsv%08Xsd%08Xbc%02Xsc%02Xi%02X" % (
            vendor, device, subvendor, subdevice,
            cls >> 16, (cls >> 8) & 0xFF, cls & 0xFF)
        d.prop("PCI_CLASS", "%X" % cls)
        d.prop("PCI_ID", "%04X:%04X" % (vendor, device))
        d.prop("PCI_SUBSYS_ID", "%04X:%04X" % (subvendor, subdevice))
        d.prop("PCI_SLOT_NAME", addr)
        d.prop("MODALIAS", modalias)
        d.attr("vendor", "0x%04x" % vendor)
        d.attr("device", "0x%04x" % device)
        d.attr("subsystem_vendor", "0x%04x" % subvendor)
        d.attr("subsystem_device", "0x%04x" % subdevice)
        d.attr("class", "0x%06x" % cls)
        d.attr("revision", "0x%02x" % rev)
        d.attr("irq", irq)
        d.attr("enable", "1" if driver else "0")
        d.attr("modalias", modalias)
        d.attr("numa_node", numa_node)
        d.attr("local_cpus", "ff")
        d.attr("local_cpulist", "0-7")
        d.attr("msi_bus", "1")
        d.attr("broken_parity_status", "0")
        d.attr("d3cold_allowed", "1")
        d.attr("dma_mask_bits", "64" if not bridge else "32")
        d.attr("consistent_dma_mask_bits", "64" if not bridge else "32")
        d.attr("driver_override", "(null)")
        d.attr("ari_enabled", "0")
        d.attr("power_state", "D0")
        d.attr("power/control", "auto" if driver else "on")
        d.attr("power/runtime_status", "active")
        if link:
            cur, mx, width = link
            d.attr("current_link_speed", cur)
            d.attr("max_link_speed", mx)
            d.attr("current_link_width", width)
            d.attr("max_link_width", width)
        # resource file: 13 lines for functions, 17 for bridges (CONFIG_PCI_IOV)
        nlines = 17 if bridge else 13
        res = [(0, 0, 0)] * nlines
        idx = 0
        for (start, size, kind) in bars:
            res[idx] = (start, start + size - 1, RESOURCE_FLAGS[kind])
            idx += 2 if kind in (MEM64, MEM64_PREF) else 1
        if bridge:
            prim, sec, sub, mem, pref = bridge
            if mem:
                res[14] = (mem[0], mem[0] + mem[1] - 1, 0x200)
            if pref:
                res[15] = (pref[0], pref[0] + pref[1] - 1, 0x102201)
            d.attr("secondary_bus_number", sec)
            d.attr("subordinate_bus_number", sub)
        d.attr("resource", "\n".join("0x%016x 0x%016x 0x%016x" % r for r in res))
        d.hattr("config", pci_config(vendor, device, cls, rev, subvendor, subdevice, bars, irq,
                                     header=header, multifunction=multifunction, bridge=bridge, pcie=pcie))
        for k, v in (extra_attrs or {}).items():
            d.attr(k, v)
        if iommu_group is not None:
            d.link("iommu_group", updots(path) + "kernel/iommu_groups/%d" % iommu_group)
            self.iommu.setdefault(iommu_group, []).append(path)
        if driver:
            self.pci_drivers.setdefault(driver, []).append(path)
        self.add(d)
        d.facts = {"address": addr, "vendorId": "%04x" % vendor, "deviceId": "%04x" % device,
                   "subsystemVendorId": "%04x" % subvendor, "subsystemDeviceId": "%04x" % subdevice,
                   "deviceClass": cls >> 16, "deviceSubclass": (cls >> 8) & 0xFF, "deviceProgIf": cls & 0xFF,
                   "driver": driver, "iommuGroup": iommu_group, "isBridge": (cls >> 16) == 0x06}
        self.expected.append(("pci", addr, d))
        return d

    def xhci(self, addr="0000:00:14.0", vendor=0x8086, device=0xA0ED, subvendor=0x1028, subdevice=0x0991,
             rev=0x20, iommu_group=None, usb2_ports=12, usb3_ports=4, usb3_speed="10000", bus_base=1,
             irq=125, mem=0x6031100000, multifunction=False, parent="/devices/pci0000:00", pcie=(9, 1, 1)):
        pci = self.pci(addr, vendor, device, 0x0C0330, rev, subvendor, subdevice, "xhci_hcd",
                       iommu_group=iommu_group, irq=irq, bars=[(mem, 0x10000, MEM64)], pcie=pcie,
                       multifunction=multifunction, parent=parent)
        hs = self.root_hub(pci.path, addr, bus_base, False, usb2_ports)
        ss = self.root_hub(pci.path, addr, bus_base + 1, True, usb3_ports, speed=usb3_speed)
        return pci, hs, ss

    # ---- USB
    def _devnum(self, bus, devnum):
        if devnum is None:
            devnum = self.next_devnum.get(bus, 2)
        self.next_devnum[bus] = max(self.next_devnum.get(bus, 2), devnum + 1)
        return devnum

    def root_hub(self, hcd_path, hcd_addr, bus, usb3, maxchild, speed=None):
        kver = self.kernel.split("-")[0].split(".")
        bcd = int(kver[0]) << 8 | int(kver[1])
        pid = 0x0003 if usb3 else 0x0002
        if usb3:
            ddesc = device_descriptor(0x0310, 9, 0, 3, 9, 0x1D6B, pid, bcd, 3, 2, 1)
            cfg = config_descriptor(1, 0xE0, 0, [interface(0, 0, 1, 9, 0, 0), endpoint(0x81, 3, 4, 12),
                                                 ss_companion(0, 0, 2)])
        else:
            ddesc = device_descriptor(0x0200, 9, 0, 1, 64, 0x1D6B, pid, bcd, 3, 2, 1)
            cfg = config_descriptor(1, 0xE0, 0, [interface(0, 0, 1, 9, 0, 0), endpoint(0x81, 3, 4, 12)])
        strings = {"manufacturer": "Linux %s xhci-hcd" % self.kernel, "product": "xHCI Host Controller",
                   "serial": hcd_addr}
        return self.usb(None, None, ddesc, [cfg], strings=strings, speed=speed or ("5000" if usb3 else "480"),
                        removable="unknown", maxchild=maxchild, interfaces={0: {"driver": "hub"}},
                        root=(hcd_path, bus), devnum=1)

    def usb(self, parent, port, ddesc, configs, active=1, strings=None, speed="12", removable="removable",
            maxchild=0, interfaces=None, devnum=None, root=None, config_strings=None, bMaxPower=None,
            ltm=False, usb2_lpm=False):
        """A usb_device. parent: the parent usb Dev (None with root=(hcd_path, bus) for a root hub)."""
        strings = strings or {}
        interfaces = interfaces or {}
        if root:
            hcd_path, bus = root
            name = "usb%d" % bus
            devpath = "0"
            path = "%s/%s" % (hcd_path, name)
            ifprefix = "%d-0" % bus
            portpath = ""
            devnum = 1
            self.next_devnum.setdefault(bus, 2)
        else:
            bus = parent.usb_bus
            devpath = str(port) if parent.usb_devpath == "0" else "%s.%d" % (parent.usb_devpath, port)
            name = "%d-%s" % (bus, devpath)
            path = "%s/%s" % (parent.path, name)
            ifprefix = name
            portpath = devpath
            devnum = self._devnum(bus, devnum)
        minor = (bus - 1) * 128 + (devnum - 1)
        assert minor not in self.usb_minor_used
        self.usb_minor_used.add(minor)
        bcdUSB, cls, sub, proto, mps0 = struct.unpack("<HBBBB", ddesc[2:8])
        vid, pid, bcd = struct.unpack("<HHH", ddesc[8:14])
        assert ddesc[17] == len(configs)
        cfg = [c for c in configs if c[5] == active]
        assert len(cfg) == 1, "active configuration %d not found" % active
        cfg = cfg[0]
        ifaces, iads = parse_config(cfg)
        blob = ddesc + b"".join(configs)

        d = Dev(path, "usb", "usb_device")
        d.devnode("bus/usb/%03d/%03d" % (bus, devnum), 189, minor, contents=blob)
        d.set_driver("usb", "usb")
        d.prop("PRODUCT", "%x/%x/%x" % (vid, pid, bcd))
        d.prop("TYPE", "%d/%d/%d" % (cls, sub, proto))
        d.prop("BUSNUM", "%03d" % bus)
        d.prop("DEVNUM", "%03d" % devnum)
        d.hattr("descriptors", blob)
        d.attr("idVendor", "%04x" % vid)
        d.attr("idProduct", "%04x" % pid)
        d.attr("bcdDevice", "%04x" % bcd)
        d.attr("bDeviceClass", "%02x" % cls)
        d.attr("bDeviceSubClass", "%02x" % sub)
        d.attr("bDeviceProtocol", "%02x" % proto)
        d.attr("bMaxPacketSize0", "%d" % mps0)
        d.attr("bNumConfigurations", "%d" % len(configs))
        d.attr("bConfigurationValue", "%u" % active)
        d.attr("bNumInterfaces", "%2d" % cfg[4])
        d.attr("bmAttributes", "%2x" % cfg[7])
        superspeed = speed in ("5000", "10000", "20000")
        d.attr("bMaxPower", "%dmA" % (cfg[8] * (8 if superspeed else 2)))
        cstr = (config_strings or {}).get(active)
        d.attrs.append(("configuration", cstr + "\n" if cstr else ""))
        d.attr("busnum", bus)
        d.attr("devnum", devnum)
        d.attr("devpath", devpath)
        d.attr("speed", speed)
        d.attr("version", "%2x.%02x" % (bcdUSB >> 8, bcdUSB & 0xFF))
        d.attr("maxchild", maxchild)
        d.attr("quirks", "0x0")
        d.attr("avoid_reset_quirk", "0")
        d.attr("authorized", "1")
        d.attr("removable", removable)
        d.attr("ltm_capable", "yes" if ltm else "no")
        d.attr("rx_lanes", "1")
        d.attr("tx_lanes", "1")
        d.attr("urbnum", 0x1F + 7 * devnum)
        d.attr("power/control", "auto")
        d.attr("power/autosuspend", "2" if cls != 9 else "0")
        d.attr("power/active_duration", "48210")
        d.attr("power/connected_duration", "48210")
        d.attr("power/level", "auto")
        d.attr("power/runtime_status", "active")
        if cls != 9:
            d.attr("power/persist", "1")
        if usb2_lpm:
            d.attr("power/usb2_hardware_lpm", "enabled")
        if root:
            d.attr("authorized_default", "1")
            d.attr("interface_authorized_default", "1")
        for key in ("manufacturer", "product", "serial"):
            if strings.get(key) is not None:
                d.attr(key, strings[key])
        d.usb_bus = bus
        d.usb_devpath = devpath
        self.add(d)

        # interfaces of the active configuration, each at its current alternate setting
        seen = sorted({i["num"] for i in ifaces})
        ifrecords = []
        d.interfaces = {}
        for num in seen:
            info = interfaces.get(num, {})
            alt = info.get("alt", 0)
            desc = [i for i in ifaces if i["num"] == num and i["alt"] == alt]
            assert desc, "interface %d alt %d not in descriptors" % (num, alt)
            desc = desc[0]
            ipath = "%s/%s:%d.%d" % (path, ifprefix, active, num)
            drv = info.get("driver")
            it = Dev(ipath, "usb", "usb_interface")
            if drv:
                it.set_driver(drv, "usb")
            it.prop("PRODUCT", "%x/%x/%x" % (vid, pid, bcd))
            it.prop("TYPE", "%d/%d/%d" % (cls, sub, proto))
            it.prop("INTERFACE", "%d/%d/%d" % (desc["cls"], desc["sub"], desc["proto"]))
            modalias = "usb:v%04Xp%04Xd%04Xdc%02Xdsc%02Xdp%02Xic%02Xisc%02Xip%02Xin%02X" % (
                vid, pid, bcd, cls, sub, proto, desc["cls"], desc["sub"], desc["proto"], num)
            it.prop("MODALIAS", modalias)
            it.attr("bInterfaceNumber", "%02x" % num)
            it.attr("bAlternateSetting", "%2d" % alt)
            it.attr("bNumEndpoints", "%02x" % desc["nep"])
            it.attr("bInterfaceClass", "%02x" % desc["cls"])
            it.attr("bInterfaceSubClass", "%02x" % desc["sub"])
            it.attr("bInterfaceProtocol", "%02x" % desc["proto"])
            it.attr("modalias", modalias)
            it.attr("supports_autosuspend", "1")
            it.attr("authorized", "1")
            if info.get("string"):
                it.attr("interface", info["string"])
            for a in iads:
                if a["first"] <= num < a["first"] + a["count"]:
                    it.attr("iad_bFirstInterface", "%02x" % a["first"])
                    it.attr("iad_bInterfaceCount", "%02x" % a["count"])
                    it.attr("iad_bFunctionClass", "%02x" % a["cls"])
                    it.attr("iad_bFunctionSubClass", "%02x" % a["sub"])
                    it.attr("iad_bFunctionProtocol", "%02x" % a["proto"])
            self.add(it)
            d.interfaces[num] = it
            ifrecords.append({"interfaceNumber": num, "interfaceClass": desc["cls"],
                              "interfaceSubclass": desc["sub"], "interfaceProtocol": desc["proto"],
                              "driver": drv})
        d.facts = {"sysName": name, "bus": bus, "devnum": devnum,
                   "port": 0 if root else int(devpath.split(".")[0]), "portPath": portpath,
                   "vendorId": "%04x" % vid, "productId": "%04x" % pid, "bcdDevice": "%04x" % bcd,
                   "deviceClass": cls, "deviceSubclass": sub, "deviceProtocol": proto,
                   "manufacturer": strings.get("manufacturer"), "product": strings.get("product"),
                   "serial": strings.get("serial"), "interfaces": ifrecords, "speed": speed,
                   "removable": removable, "devnode": "/dev/bus/usb/%03d/%03d" % (bus, devnum),
                   "isHub": cls == 9}
        self.expected.append(("usb", name, d))
        return d

    # ---- HID and input
    def hid(self, parent, bus, vendor, product, seq, name, phys, driver="hid-generic", group=1, uniq="",
            hidraw=None, report_descriptor=None):
        hname = "%04X:%04X:%04X.%04X" % (bus, vendor, product, seq)
        h = Dev(parent + "/" + hname, "hid", driver=driver)
        h.prop("HID_ID", "%04X:%08X:%08X" % (bus, vendor, product))
        h.prop("HID_NAME", name)
        h.prop("HID_PHYS", phys)
        h.prop("HID_UNIQ", uniq)
        modalias = "hid:b%04Xg%04Xv%08Xp%08X" % (bus, group, vendor, product)
        h.prop("MODALIAS", modalias)
        h.attr("modalias", modalias)
        h.attr("country", "00")
        if report_descriptor:
            h.hattr("report_descriptor", report_descriptor)
        self.add(h)
        if hidraw is not None:
            self.classdev(h.path, "hidraw", "hidraw%d" % hidraw, "hidraw",
                          node=("hidraw%d" % hidraw, 243, hidraw))
        return h

    def input(self, parent, num, name, phys, bustype, vendor, product, version, event=None, uniq=None,
              ev=None, key=None, rel=None, abs=None, msc=None, led=None, snd=None, ff=None, sw=None,
              prop=None, mouse=None, has_usb=False):
        caps = {"ev": as_bits(ev), "key": as_bits(key), "rel": as_bits(rel), "abs": as_bits(abs),
                "msc": as_bits(msc), "led": as_bits(led), "snd": as_bits(snd), "ff": as_bits(ff),
                "sw": as_bits(sw), "prop": as_bits(prop)}
        for c, b in EV_BIT.items():
            assert bool(caps[c]) == (b in caps["ev"]), "%s: EV bit %d vs %s bits" % (name, b, c)
        for c, spec in (("key", key), ("ev", ev), ("rel", rel), ("abs", abs)):
            if isinstance(spec, str):
                assert bits_to_sysfs(caps[c], CAP_MAX[c]) == spec, (c, spec)
        text = {c: bits_to_sysfs(caps[c], CAP_MAX[c]) for c in caps}
        path = "%s/input/input%d" % (parent, num)
        i = Dev(path, "input")
        modalias = "input:b%04Xv%04Xp%04Xe%04X-" % (bustype, vendor, product, version)
        for letter, c, lo in (("e", "ev", 0), ("k", "key", KEY_MIN_INTERESTING), ("r", "rel", 0),
                              ("a", "abs", 0), ("m", "msc", 0), ("l", "led", 0), ("s", "snd", 0),
                              ("f", "ff", 0), ("w", "sw", 0)):
            modalias += letter + "".join("%X," % b for b in caps[c] if b >= lo)
        i.prop("PRODUCT", "%x/%x/%x/%x" % (bustype, vendor, product, version))
        i.prop("NAME", '"%s"' % name)
        if phys:
            i.prop("PHYS", '"%s"' % phys)
        if uniq:
            i.prop("UNIQ", '"%s"' % uniq)
        i.prop("PROP", text["prop"])
        i.prop("EV", text["ev"])
        for c in ("key", "rel", "abs", "msc", "led", "snd", "ff", "sw"):
            if EV_BIT[c] in caps["ev"]:
                i.prop(c.upper(), text[c])
        i.prop("MODALIAS", modalias)
        i.attr("name", name)
        i.attr("phys", phys or "")
        i.attr("uniq", uniq or "")
        i.attr("modalias", modalias)
        i.attr("properties", text["prop"])
        i.attr("inhibited", "0")
        i.attr("id/bustype", "%04x" % bustype)
        i.attr("id/vendor", "%04x" % vendor)
        i.attr("id/product", "%04x" % product)
        i.attr("id/version", "%04x" % version)
        for c in ("ev", "key", "rel", "abs", "msc", "led", "snd", "ff", "sw"):
            i.attr("capabilities/" + c, text[c])
        self.add(i)
        i.caps = caps
        if event is not None:
            e = self.classdev(path, None, "event%d" % event, "input",
                              node=("input/event%d" % event, 13, 64 + event))
            e.facts = {"devnode": "/dev/input/event%d" % event, "name": name, "phys": phys,
                       "busType": bustype, "vendorId": "%04x" % vendor, "productId": "%04x" % product,
                       "hasUSBAncestor": has_usb, "kinds": input_kinds(caps, bustype)}
            self.expected.append(("input", "event%d" % event, e))
        if mouse is not None:
            self.classdev(path, None, "mouse%d" % mouse, "input", node=("input/mouse%d" % mouse, 13, 32 + mouse))
        return i

    # ---- block
    def block(self, parent, name, major, minor, size, devtype="disk", partn=None, start=None, diskseq=None,
              removable=0, partname=None, extra=None, sub="block"):
        path = ("%s/%s/%s" % (parent, sub, name)) if sub else ("%s/%s" % (parent, name))
        b = Dev(path, "block", devtype)
        b.devnode(name, major, minor)
        if diskseq is not None:
            b.prop("DISKSEQ", diskseq)
        if partn is not None:
            b.prop("PARTN", partn)
            if partname:
                b.prop("PARTNAME", partname)
            b.attr("partition", partn)
            b.attr("start", start)
        else:
            b.attr("removable", removable)
            b.attr("range", "16" if major == 8 else "0")
            b.attr("ext_range", "256")
            b.attr("capability", "1" if removable else "0")
            b.attr("events", "media_change" if removable else "")
            b.attr("hidden", "0")
            b.attr("queue/logical_block_size", "512")
            b.attr("queue/rotational", "0")
        b.attr("size", size)
        b.attr("ro", "0")
        b.attr("alignment_offset", "0")
        b.attr("discard_alignment", "0")
        b.attr("inflight", "       0        0")
        b.attr("stat", "     215        0    11682       61        0        0        0        0        0      116       61        0        0        0        0        0        0")
        for k, v in (extra or {}).items():
            b.attr(k, v)
        return self.add(b)

    # ---- helpers for /sys/kernel/iommu_groups and /sys/bus/pci/drivers
    def helper_blocks(self):
        out = []
        for g in sorted(self.iommu):
            h = Dev("/devices/../kernel/iommu_groups/%d/devices/../.umockdev-iommu-group-%d" % (g, g),
                    "umockdev-helper")
            h.attr("../type", "DMA-FQ")
            h.attr("../reserved_regions", "0x00000000fee00000 0x00000000feefffff msi")
            for p in sorted(self.iommu[g]):
                addr = p.rsplit("/", 1)[1]
                h.link("../devices/" + addr, "../../../.." + p)
            out.append(h)
        for drv in sorted(self.pci_drivers):
            # named after its first device too, so that testbeds made of several files do not collide
            first = sorted(self.pci_drivers[drv])[0].rsplit("/", 1)[1]
            h = Dev("/devices/../bus/pci/drivers/%s/.umockdev-pci-driver-%s-%s" % (drv, drv, first),
                    "umockdev-helper")
            for f in ("bind", "unbind", "new_id", "remove_id"):
                h.attrs.append(("../" + f, ""))
            h.attrs.append(("../../../drivers_probe", ""))
            h.attr("../../../drivers_autoprobe", "1")
            for p in sorted(self.pci_drivers[drv]):
                addr = p.rsplit("/", 1)[1]
                h.link("../" + addr, "../../../.." + p)
            out.append(h)
        # umockdev files a block device whose path has no "/block/" component (nvme0n1 below
        # .../nvme/nvme0) under /sys/dev/char; the kernel has it in /sys/dev/block.
        devblock = [d for d in self.devs if d.subsystem == "block" and "/block/" not in d.path]
        if devblock:
            h = Dev("/devices/../dev/block/.umockdev-dev-block-%s" % devblock[0].name, "umockdev-helper")
            for d in devblock:
                devno = dict(d.attrs)["dev"].strip()
                h.link("../" + devno, "../.." + d.path)
            out.append(h)
        return out

    # ---- output
    def render(self):
        """The umockdev file: devices sorted by path, then the helper blocks.
        (The format has no comment syntax: documentation lives in README.md.)"""
        parts = []
        for d in sorted(self.devs, key=lambda d: d.path):
            parts.append(d.render())
        for h in self.helper_blocks():
            parts.append(h.render())
        return "\n".join(parts)

    def expected_records(self):
        peers = {}
        for g, members in self.iommu.items():
            addrs = sorted(p.rsplit("/", 1)[1] for p in members)
            for a in addrs:
                peers[a] = [x for x in addrs if x != a]
        recs = []
        for subsystem, sysname, d in self.expected:
            attrs = dict(d.facts)
            if subsystem == "pci":
                is_bridge = attrs.pop("isBridge")
                attrs["iommuGroupPeers"] = peers.get(sysname, [])
                attrs["isBridge"] = is_bridge
            if subsystem == "input":
                attrs = {"sysName": sysname, **attrs}
            recs.append({"subsystem": subsystem, "sysName": sysname, "attributes": attrs})

        def key(r):
            a = r["attributes"]
            if r["subsystem"] == "usb":  # bus by bus, root hub first, then by port path
                return (0, a["bus"], [int(p) for p in a["portPath"].split(".") if p], "")
            if r["subsystem"] == "pci":
                return (1, 0, [], r["sysName"])
            return (2, int(r["sysName"][5:]), [], "")
        recs.sort(key=key)
        return recs

    def expected_json(self):
        return json.dumps(self.expected_records(), indent=2) + "\n"


# --------------------------------------------------------------------------
# udev's input_id classification (systemd src/udev/udev-builtin-input_id.c, v252)

EV_KEY, EV_REL, EV_ABS, EV_SW = 1, 2, 3, 5
BTN_MISC, BTN_0, BTN_1, BTN_MOUSE, BTN_JOYSTICK, BTN_DIGI = 0x100, 0x100, 0x101, 0x110, 0x120, 0x140
BTN_TOOL_PEN, BTN_TOOL_FINGER, BTN_TOUCH, BTN_STYLUS = 0x140, 0x145, 0x14A, 0x14B
BTN_TRIGGER_HAPPY, BTN_TRIGGER_HAPPY1, BTN_TRIGGER_HAPPY40 = 0x2C0, 0x2C0, 0x2E7
BTN_DPAD_UP, BTN_DPAD_RIGHT = 0x220, 0x223
KEY_OK, KEY_ALS_TOGGLE = 0x160, 0x230
REL_X, REL_Y, REL_HWHEEL, REL_WHEEL = 0, 1, 6, 8
ABS_X, ABS_Y, ABS_Z, ABS_RX, ABS_PRESSURE = 0, 1, 2, 3, 0x18
ABS_MT_SLOT, ABS_MT_POSITION_X, ABS_MT_POSITION_Y = 0x2F, 0x35, 0x36
PROP_DIRECT, PROP_POINTING_STICK, PROP_ACCELEROMETER = 1, 5, 6
BUS_I2C = 0x18


def input_kinds(caps, bustype):
    """Sorted kinds as udev's input_id builtin (systemd 252) would set ID_INPUT_* for them."""
    ev, key, rel, ab, props = (set(caps[c]) for c in ("ev", "key", "rel", "abs", "prop"))
    kinds = set()

    def pointers():
        has_keys = EV_KEY in ev
        has_abs = ABS_X in ab and ABS_Y in ab
        has_3d = has_abs and ABS_Z in ab
        is_accel = PROP_ACCELEROMETER in props or (not has_keys and has_3d)
        if is_accel:
            kinds.add("accelerometer")
            return True
        is_stick = PROP_POINTING_STICK in props
        stylus, pen = BTN_STYLUS in key, BTN_TOOL_PEN in key
        finger_no_pen = BTN_TOOL_FINGER in key and not pen
        mouse_button = any(b in key for b in range(BTN_MOUSE, BTN_JOYSTICK))
        has_rel = EV_REL in ev and REL_X in rel and REL_Y in rel
        has_mt = ABS_MT_POSITION_X in ab and ABS_MT_POSITION_Y in ab
        if has_mt and ABS_MT_SLOT in ab and (ABS_MT_SLOT - 1) in ab:
            has_mt = False
        direct = PROP_DIRECT in props
        touch = BTN_TOUCH in key
        joy = False
        if (BTN_JOYSTICK - 1) not in key:
            joy = any(b in key for b in list(range(BTN_JOYSTICK, BTN_DIGI)) +
                      list(range(BTN_TRIGGER_HAPPY1, BTN_TRIGGER_HAPPY40 + 1)) +
                      list(range(BTN_DPAD_UP, BTN_DPAD_RIGHT + 1)))
        joy = joy or any(a in ab for a in range(ABS_RX, ABS_PRESSURE))
        tablet = touchpad = abs_mouse = touchscreen = joystick = mouse = False
        if has_abs:
            if stylus or pen:
                tablet = True
            elif finger_no_pen and not direct:
                touchpad = True
            elif mouse_button:
                abs_mouse = True
            elif touch or direct:
                touchscreen = True
            elif joy:
                joystick = True
        elif joy:
            joystick = True
        if has_mt:
            if stylus or pen:
                tablet = True
            elif finger_no_pen and not direct:
                touchpad = True
            elif touch or direct:
                touchscreen = True
        if not tablet and not touchpad and not joystick and mouse_button and (has_rel or not has_abs):
            mouse = True
        if mouse and bustype == BUS_I2C:
            is_stick = True
        for flag, k in ((is_stick, "pointingstick"), (mouse or abs_mouse, "mouse"), (touchpad, "touchpad"),
                        (touchscreen, "touchscreen"), (joystick, "joystick"), (tablet, "tablet")):
            if flag:
                kinds.add(k)
        return tablet or mouse or abs_mouse or touchpad or touchscreen or joystick or is_stick

    def keys():
        if EV_KEY not in ev:
            return False
        found = any(b < BTN_MISC for b in key)
        if not found:
            found = any(KEY_OK <= b < BTN_DPAD_UP or KEY_ALS_TOGGLE <= b < BTN_TRIGGER_HAPPY for b in key)
        ret = False
        if found:
            kinds.add("key")
            ret = True
        if all(b in key for b in range(1, 32)):
            kinds.add("keyboard")
            ret = True
        return ret

    is_pointer = pointers()
    is_key = keys()
    if not is_pointer and not is_key and EV_REL in ev and (REL_WHEEL in rel or REL_HWHEEL in rel):
        kinds.add("key")
    if EV_SW in ev:
        kinds.add("switch")
    return sorted(kinds)
