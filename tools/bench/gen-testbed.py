#!/usr/bin/env python3
"""Generate a umockdev testbed with N devices for benchmarking `vhotplug inspect --json`.

    python3 tools/bench/gen-testbed.py [-n 200] [--seed 1] [-o out.umockdev] [--expected out.json]
    umockdev-run -d out.umockdev -- vhotplug inspect --json

"Devices" are what `inspect` reports: USB devices (root hubs included), PCI functions
and evdev nodes (eventN); the file holds exactly N of them (more sysfs entries: USB
interfaces, HID devices, SCSI/block chains, hidraw, net, ...). The mix is realistic:
a host with an integrated xHCI and, as needed, add-in xHCI cards; keyboards, mice,
Unifying receivers, security keys, game pads, flash drives, Ethernet and serial
adapters, Bluetooth dongles behind USB 2.0 hubs and USB 3 hubs (each USB 3 hub shows
on both buses, as real ones do); NVMe, NIC, GPU+audio cards behind PCIe root ports;
the laptop keyboard, power button, lid switch and an I2C touchpad. IOMMU groups and
PCI driver folders are included (see Tests/HostDevicesTests/Fixtures/README.md).

--expected writes what a correct reader reports (the fixtures' *.expected.json schema).
Deterministic for a given -n and --seed. Python 3 standard library only.
"""

import argparse
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from umockdevgen import (  # noqa: E402
    Bed, Dev, MEM32, MEM64, config_descriptor, device_descriptor, endpoint,
    hid_descriptor, interface, ss_companion,
)

USB_KEYBOARD_KEYS = "1000000000007 ff9f207ac14057ff febeffdfffefffff fffffffffffffffe"
AT_KEYBOARD_KEYS = "402000000 3803078f800d001 feffffdfffefffff fffffffffffffffe"
CONSUMER = [113, 114, 115, 140, 150, 155, 158, 159, 163, 164, 165, 166, 172, 0x174, 0x1a0]
# a CCID class descriptor (smart-card interface of a YubiKey): CCID 1.00, T=1
CCID_DESCRIPTOR = bytes.fromhex("362100010007020000 00a00f0000a00f000000 8025000080250000 00fe000000 00000000 00000000"
                                "fe000400 0b040000 ffff 0000 00 01".replace(" ", ""))
XPAD_KEYS = [0x130, 0x131, 0x133, 0x134, 0x136, 0x137, 0x13a, 0x13b, 0x13c, 0x13d, 0x13e, 0x2c0, 0x2c1, 0x2c2, 0x2c3]


def u_ports(dev):
    return int(dict(dev.attrs)["maxchild"])


class Gen:
    def __init__(self, n, seed):
        self.n = n
        self.rng = random.Random(seed)
        self.bed = Bed()
        self.input_no = 0
        self.event_no = 0
        self.mouse_no = 0
        self.hidraw_no = 0
        self.hid_seq = 0
        self.scsi_host = 0
        self.disk_no = 0
        self.iommu_group = 0
        self.next_bus = 1
        self.hubs = []  # attach points: dicts {dev, ss, ports(set free), depth}
        self.controllers = 0
        self.serial_no = 0

    # ---------------------------------------------------------------- helpers
    def count(self):
        return len(self.bed.expected)

    def left(self):
        return self.n - self.count()

    def group(self):
        g = self.iommu_group
        self.iommu_group += 1
        return g

    def next_input(self, parent, name, phys, bustype, vid, pid, ver, mouse=False, **caps):
        num, ev = self.input_no, self.event_no
        self.input_no += 1
        self.event_no += 1
        m = None
        if mouse:
            m = self.mouse_no
            self.mouse_no += 1
        return self.bed.input(parent, num, name, phys, bustype, vid, pid, ver, event=ev, mouse=m, **caps)

    def next_hid(self, parent, bus, vid, pid, name, phys, driver="hid-generic"):
        self.hid_seq += 1
        h = self.bed.hid(parent, bus, vid, pid, self.hid_seq, name, phys, driver=driver, hidraw=self.hidraw_no)
        self.hidraw_no += 1
        return h

    def serial(self):
        self.serial_no += 1
        return "%08X%04d" % (self.rng.getrandbits(32), self.serial_no)

    # ---------------------------------------------------------------- PCI
    ROOT_PORT_SLOTS = [(d, f) for d in (0x1C, 0x1D, 0x06, 0x01, 0x07, 0x1B) for f in range(8)]
    MISC_SLOTS = [(d, 0) for d in list(range(0x02, 0x06)) + list(range(0x07, 0x14)) + [0x16, 0x18, 0x19, 0x1A]]

    def free_slot(self, slots):
        for d, f in slots:
            addr = "0000:00:%02x.%d" % (d, f)
            if "/devices/pci0000:00/" + addr not in self.bed.by_path:
                return addr
        return None

    def root_port(self, secondary_size=0x100000):
        addr = self.free_slot(self.ROOT_PORT_SLOTS)
        bus = self.next_bus
        self.next_bus += 1
        fn = int(addr[-1])
        mem = 0x80000000 + bus * 0x01000000
        rp = self.bed.pci(addr, 0x8086, 0x7AB8 + fn, 0x060400, 0x11, 0x1043, 0x8882, "pcieport",
                          iommu_group=self.group(), irq=120 + bus, bridge=(0, bus, bus, (mem, secondary_size), None),
                          pcie=(4, 3, 4, True), link=("8.0 GT/s PCIe", "8.0 GT/s PCIe", "4"))
        return rp, bus, mem

    def root_port_free(self, reserve=0):
        used = sum(1 for d, f in self.ROOT_PORT_SLOTS
                   if "/devices/pci0000:00/0000:00:%02x.%d" % (d, f) in self.bed.by_path)
        return used + reserve < len(self.ROOT_PORT_SLOTS)

    def pci_base(self):
        b = self.bed
        b.pci("0000:00:00.0", 0x8086, 0x4680, 0x060000, 0x02, 0x1043, 0x8882, None, iommu_group=self.group(),
              irq=0, bars=[])
        g = self.group()
        b.pci("0000:00:1f.0", 0x8086, 0x7A84, 0x060100, 0x11, 0x1043, 0x8882, None, iommu_group=g, irq=0,
              multifunction=True)
        b.pci("0000:00:1f.3", 0x8086, 0x7AD0, 0x040300, 0x11, 0x1043, 0x8882, "snd_hda_intel", iommu_group=g,
              irq=201, bars=[(0x6004100000, 0x4000, MEM64)])
        b.pci("0000:00:1f.4", 0x8086, 0x7AA3, 0x0C0500, 0x11, 0x1043, 0x8882, "i801_smbus", iommu_group=g,
              irq=16, bars=[(0x6004108000, 0x100, MEM64)])
        pci, hs, ss = b.xhci("0000:00:14.0", 0x8086, 0x7AE0, 0x1043, 0x8882, 0x11, iommu_group=self.group(),
                             usb2_ports=14, usb3_ports=10)
        self.controllers += 1
        self.add_root(hs, False, 14)
        self.add_root(ss, True, 10)

    def add_root(self, dev, ss, ports):
        self.hubs.append({"dev": dev, "ss": ss, "ports": list(range(1, ports + 1)), "depth": 0})

    def xhci_card(self):
        """A Renesas uPD720201 USB 3.0 card (4 ports) behind a root port: a new pair of buses."""
        rp, bus, mem = self.root_port()
        addr = "0000:%02x:00.0" % bus
        ubase = 2 * self.controllers + 1
        pci, hs, ss = self.bed.xhci(addr, 0x1912, 0x0014, 0x1912, 0x0014, 0x03, iommu_group=self.group(),
                                    usb2_ports=4, usb3_ports=4, usb3_speed="5000", bus_base=ubase, mem=mem,
                                    parent=rp.path, pcie=(0, 2, 1), irq=140 + bus)
        self.controllers += 1
        self.add_root(hs, False, 4)
        self.add_root(ss, True, 4)

    def nvme(self):
        rp, bus, mem = self.root_port()
        addr = "0000:%02x:00.0" % bus
        nv = self.bed.pci(addr, 0x144D, 0xA80A, 0x010802, 0x00, 0x144D, 0xA801, "nvme", parent=rp.path,
                          iommu_group=self.group(), irq=16, bars=[(mem, 0x4000, MEM64)], pcie=(0, 3, 4),
                          link=("8.0 GT/s PCIe", "16.0 GT/s PCIe", "4"))
        k = sum(1 for d in self.bed.devs if d.subsystem == "nvme")
        ctrl = self.bed.classdev(nv.path, "nvme", "nvme%d" % k, "nvme", node=("nvme%d" % k, 240, k))
        ctrl.attr("model", "Samsung SSD 980 PRO 1TB".ljust(40)).attr("transport", "pcie")
        disk = self.bed.block(ctrl.path, "nvme%dn1" % k, 259, 3 * k, 1953525168, diskseq=10 + k, sub=None)
        self.bed.block(disk.path, "nvme%dn1p1" % k, 259, 3 * k + 1, 1953521664, partn=1, start=2048, sub=None)

    def nic(self):
        rp, bus, mem = self.root_port()
        addr = "0000:%02x:00.0" % bus
        d = self.bed.pci(addr, 0x8086, 0x15F3, 0x020000, 0x03, 0x1043, 0x87D2, "igc", parent=rp.path,
                         iommu_group=self.group(), irq=17, bars=[(mem, 0x100000, MEM32), (mem + 0x100000, 0x4000, MEM32)],
                         pcie=(0, 2, 1), link=("5.0 GT/s PCIe", "5.0 GT/s PCIe", "1"))
        n = self.bed.classdev(d.path, "net", "enp%ds0" % bus, "net")
        n.prop("INTERFACE", "enp%ds0" % bus).attr("address", "04:42:1a:%02x:00:01" % bus)

    def gpu(self):
        rp, bus, mem = self.root_port(0x2000000)
        g = self.group()
        for fn, (dev, cls, drv) in enumerate(((0x2484, 0x030000, "nouveau"), (0x228B, 0x040300, "snd_hda_intel"))):
            self.bed.pci("0000:%02x:00.%d" % (bus, fn), 0x10DE, dev, cls, 0xA1, 0x1462, 0x3976, drv,
                         parent=rp.path, iommu_group=g, irq=130 + fn, multifunction=True,
                         bars=[(mem + fn * 0x1000000, 0x1000000, MEM32)], pcie=(0, 3, 16),
                         link=("8.0 GT/s PCIe", "16.0 GT/s PCIe", "16"))

    MISC = [(0x8086, 0x7AE2, 0x010601, "ahci"), (0x8086, 0x7A83, 0x118000, "intel_pch_thermal"),
            (0x8086, 0x7AE8, 0x078000, "mei_me"), (0x8086, 0x7AA4, 0x0C8000, "intel-spi"),
            (0x8086, 0x467D, 0x118000, "proc_thermal"), (0x8086, 0x7A87, 0x050000, None)]

    def misc_pci(self):
        """One integrated PCI function on bus 0 (SATA, thermal, MEI, ...)."""
        addr = self.free_slot(self.MISC_SLOTS)
        if addr is None:
            return False
        vid, did, cls, drv = self.MISC[int(addr[8:10], 16) % len(self.MISC)]
        self.bed.pci(addr, vid, did, cls, 0x11, 0x1043, 0x8882, drv, iommu_group=self.group(),
                     irq=16 + int(addr[8:10], 16) % 8, bars=[(0x60050000000 + 0x100000 * int(addr[8:10], 16),
                                                              0x2000, MEM64)], pcie=(9, 1, 1))
        return True

    def platform_inputs(self):
        b = self.bed
        i8042 = b.add(Dev("/devices/platform/i8042", "platform", driver="i8042"))
        serio = b.add(Dev(i8042.path + "/serio0", "serio", driver="atkbd"))
        serio.attr("description", "i8042 KBD port")
        self.next_input(serio.path, "AT Translated Set 2 keyboard", "isa0060/serio0/input0", 0x11, 1, 1, 0xAB41,
                        ev="120013", key=AT_KEYBOARD_KEYS, msc=[4], led=[0, 1, 2])
        sysm = b.add(Dev("/devices/LNXSYSTM:00", "acpi"))
        pwr = b.add(Dev(sysm.path + "/LNXPWRBN:00", "acpi", driver="button", driver_bus="acpi"))
        self.next_input(pwr.path, "Power Button", "LNXPWRBN/button/input0", 0x19, 0, 1, 0, ev=[0, 1], key=[116])
        lid = b.add(Dev(sysm.path + "/LNXSYBUS:00/PNP0C0D:00", "acpi", driver="button", driver_bus="acpi"))
        self.next_input(lid.path, "Lid Switch", "PNP0C0D/button/input0", 0x19, 0, 5, 0, ev=[0, 5], sw=[0])

    def touchpad(self):
        b = self.bed
        lpss = b.pci("0000:00:15.0", 0x8086, 0x7AFC, 0x0C8000, 0x11, 0x1043, 0x8882, "intel-lpss",
                     iommu_group=self.group(), irq=27, bars=[(0x4017000000, 0x1000, MEM64)])
        dw = b.add(Dev(lpss.path + "/i2c_designware.0", "platform", driver="i2c_designware"))
        adap = b.add(Dev(dw.path + "/i2c-0", "i2c", "i2c_adapter"))
        client = b.add(Dev(adap.path + "/i2c-SYNA7DB5:00", "i2c", driver="i2c_hid_acpi", driver_bus="i2c"))
        name = "SYNA7DB5:00 06CB:CEB3"
        h = self.next_hid(client.path, 0x18, 0x06CB, 0xCEB3, name, "i2c-SYNA7DB5:00", driver="hid-multitouch")
        self.next_input(h.path, name + " Mouse", "i2c-SYNA7DB5:00", 0x18, 0x06CB, 0xCEB3, 0x0100, mouse=True,
                        ev=[0, 1, 2, 4], key=[0x110, 0x111], rel=[0, 1], msc=[4])
        self.next_input(h.path, name + " Touchpad", "i2c-SYNA7DB5:00", 0x18, 0x06CB, 0xCEB3, 0x0100,
                        ev=[0, 1, 3, 4], key=[0x110, 0x145, 0x148, 0x14A, 0x14D, 0x14E, 0x14F],
                        abs=[0x00, 0x01, 0x2F, 0x35, 0x36, 0x37, 0x39], msc=[5], prop=[0, 2])

    # ---------------------------------------------------------------- USB
    def attach_point(self, ss, hub=False):
        cands = [h for h in self.hubs if h["ss"] == ss and h["ports"]
                 and self.bed.next_devnum.get(h["dev"].usb_bus, 2) < 120 and h["depth"] < (4 if hub else 5)]
        if not cands:
            return None
        h = self.rng.choice(cands)
        port = h["ports"].pop(0)
        return h, port

    def phys(self, dev):
        """usb-<host controller PCI address>-<devpath>, as usbhid and friends write `phys`."""
        parts = dev.path.split("/")
        i = next(k for k, p in enumerate(parts) if p.startswith("usb") and p[3:].isdigit())
        return "usb-%s-%s" % (parts[i - 1], dev.usb_devpath)

    def usb_hid(self, kind):
        ap = self.attach_point(False)
        if ap is None:
            return False
        (h, port) = ap
        b = self.bed
        if kind == "keyboard":
            dd = device_descriptor(0x0110, 0, 0, 0, 8, 0x413C, 0x2113, 0x0110, 0, 2, 0)
            cfg = config_descriptor(1, 0xA0, 0x32, [
                interface(0, 0, 1, 3, 1, 1), hid_descriptor(0x41), endpoint(0x81, 3, 8, 24),
                interface(1, 0, 1, 3, 0, 0), hid_descriptor(0x67), endpoint(0x82, 3, 8, 10)])
            u = b.usb(h["dev"], port, dd, [cfg], strings={"product": "Dell KB216 Wired Keyboard"}, speed="1.5",
                      interfaces={0: {"driver": "usbhid"}, 1: {"driver": "usbhid"}})
            ph = self.phys(u) + "/input%d"
            h0 = self.next_hid(u.interfaces[0].path, 3, 0x413C, 0x2113, "Dell KB216 Wired Keyboard", ph % 0)
            self.next_input(h0.path, "Dell KB216 Wired Keyboard", ph % 0, 3, 0x413C, 0x2113, 0x0111,
                            ev="120013", key=USB_KEYBOARD_KEYS, msc=[4], led=[0, 1, 2], has_usb=True)
            h1 = self.next_hid(u.interfaces[1].path, 3, 0x413C, 0x2113, "Dell KB216 Wired Keyboard", ph % 1)
            self.next_input(h1.path, "Dell KB216 Wired Keyboard Consumer Control", ph % 1, 3, 0x413C, 0x2113,
                            0x0111, ev=[0, 1, 4], key=CONSUMER, msc=[4], has_usb=True)
        elif kind == "mouse":
            dd = device_descriptor(0x0200, 0, 0, 0, 8, 0x046D, 0xC077, 0x7200, 1, 2, 0)
            cfg = config_descriptor(1, 0xA0, 0x32, [interface(0, 0, 1, 3, 1, 2), hid_descriptor(0x2E),
                                                    endpoint(0x81, 3, 4, 10)])
            u = b.usb(h["dev"], port, dd, [cfg], strings={"manufacturer": "Logitech", "product": "USB Optical Mouse"},
                      speed="1.5", interfaces={0: {"driver": "usbhid"}})
            ph = self.phys(u) + "/input0"
            h0 = self.next_hid(u.interfaces[0].path, 3, 0x046D, 0xC077, "Logitech USB Optical Mouse", ph)
            self.next_input(h0.path, "Logitech USB Optical Mouse", ph, 3, 0x046D, 0xC077, 0x0111, mouse=True,
                            ev=[0, 1, 2, 4], key=[0x110, 0x111, 0x112], rel=[0, 1, 8, 11], msc=[4], has_usb=True)
        elif kind == "receiver":
            dd = device_descriptor(0x0200, 0, 0, 0, 8, 0x046D, 0xC52B, 0x1211, 1, 2, 0)
            cfg = config_descriptor(1, 0xA0, 0x31, [
                interface(0, 0, 1, 3, 1, 1), hid_descriptor(0x3B), endpoint(0x81, 3, 8, 8),
                interface(1, 0, 1, 3, 1, 2), hid_descriptor(0x94), endpoint(0x82, 3, 8, 2),
                interface(2, 0, 1, 3, 0, 0), hid_descriptor(0x62), endpoint(0x83, 3, 32, 2)], iConfiguration=4)
            u = b.usb(h["dev"], port, dd, [cfg], strings={"manufacturer": "Logitech", "product": "USB Receiver"},
                      config_strings={1: "RQR12.11_B0032"},
                      interfaces={0: {"driver": "usbhid"}, 1: {"driver": "usbhid"}, 2: {"driver": "usbhid"}})
            ph = self.phys(u) + "/input%d"
            h0 = self.next_hid(u.interfaces[0].path, 3, 0x046D, 0xC52B, "Logitech USB Receiver", ph % 0)
            self.next_input(h0.path, "Logitech USB Receiver", ph % 0, 3, 0x046D, 0xC52B, 0x0111, ev="120013",
                            key=USB_KEYBOARD_KEYS, msc=[4], led=[0, 1, 2, 3, 4], has_usb=True)
            h1 = self.next_hid(u.interfaces[1].path, 3, 0x046D, 0xC52B, "Logitech USB Receiver", ph % 1)
            self.next_input(h1.path, "Logitech USB Receiver Mouse", ph % 1, 3, 0x046D, 0xC52B, 0x0111, mouse=True,
                            ev=[0, 1, 2, 4], key=list(range(0x110, 0x120)), rel=[0, 1, 6, 8, 11, 12], msc=[4],
                            has_usb=True)
            self.next_input(h1.path, "Logitech USB Receiver Consumer Control", ph % 1, 3, 0x046D, 0xC52B, 0x0111,
                            ev=[0, 1, 4], key=CONSUMER, msc=[4], has_usb=True)
            self.next_hid(u.interfaces[2].path, 3, 0x046D, 0xC52B, "Logitech USB Receiver", ph % 2)
        elif kind == "yubikey":
            dd = device_descriptor(0x0200, 0, 0, 0, 64, 0x1050, 0x0407, 0x0526, 1, 2, 0)
            cfg = config_descriptor(1, 0x80, 0x0F, [
                interface(0, 0, 1, 3, 1, 1), hid_descriptor(0x47), endpoint(0x81, 3, 8, 10),
                interface(1, 0, 2, 3, 0, 0), hid_descriptor(0x22), endpoint(0x04, 3, 64, 2), endpoint(0x84, 3, 64, 2),
                interface(2, 0, 3, 0x0B, 0, 0), CCID_DESCRIPTOR,
                endpoint(0x02, 2, 64, 0), endpoint(0x82, 2, 64, 0), endpoint(0x83, 3, 8, 32)])
            u = b.usb(h["dev"], port, dd, [cfg], speed="12",
                      strings={"manufacturer": "Yubico", "product": "YubiKey OTP+FIDO+CCID"},
                      interfaces={0: {"driver": "usbhid"}, 1: {"driver": "usbhid"}, 2: {"driver": None}})
            ph = self.phys(u) + "/input%d"
            h0 = self.next_hid(u.interfaces[0].path, 3, 0x1050, 0x0407, "Yubico YubiKey OTP+FIDO+CCID", ph % 0)
            self.next_input(h0.path, "Yubico YubiKey OTP+FIDO+CCID", ph % 0, 3, 0x1050, 0x0407, 0x0110,
                            ev="120013", key=USB_KEYBOARD_KEYS, msc=[4], led=[0, 1, 2, 3, 4], has_usb=True)
            self.next_hid(u.interfaces[1].path, 3, 0x1050, 0x0407, "Yubico YubiKey OTP+FIDO+CCID", ph % 1)
        elif kind == "gamepad":
            dd = device_descriptor(0x0200, 0xFF, 0xFF, 0xFF, 8, 0x045E, 0x028E, 0x0114, 1, 2, 3)
            cfg = config_descriptor(1, 0xA0, 0xFA, [
                interface(0, 0, 2, 0xFF, 0x5D, 0x01), bytes([0x11, 0x21, 0x00, 0x01, 0x01, 0x25, 0x81, 0x14, 0, 0,
                                                             0, 0, 0x13, 0x01, 0x08, 0, 0]),
                endpoint(0x81, 3, 32, 4), endpoint(0x01, 3, 32, 8)])
            u = b.usb(h["dev"], port, dd, [cfg], speed="12",
                      strings={"manufacturer": "\u00a9Microsoft Corporation", "product": "Controller",
                               "serial": self.serial()}, interfaces={0: {"driver": "xpad"}})
            self.next_input(u.interfaces[0].path, "Microsoft X-Box 360 pad", self.phys(u) + "/input0", 3, 0x045E,
                            0x028E, 0x0114, ev=[0, 1, 3, 0x15], key=XPAD_KEYS, abs=[0, 1, 2, 3, 4, 5, 0x10, 0x11],
                            ff=[0x50, 0x51, 0x58, 0x59, 0x5a], has_usb=True)
        return True

    def usb_plain(self, kind):
        """USB devices without input nodes. Super-speed capable ones go to a SS port when one is free."""
        b = self.bed
        if kind in ("disk", "ethernet"):
            ap = self.attach_point(True)
            ss = ap is not None
            if not ss:
                ap = self.attach_point(False)
        else:
            ss = False
            ap = self.attach_point(False)
        if ap is None:
            return False
        h, port = ap
        if kind == "disk":
            def ep(addr):
                return [endpoint(addr, 2, 1024 if ss else 512, 0)] + ([ss_companion(15)] if ss else [])
            dd = device_descriptor(0x0320 if ss else 0x0210, 0, 0, 0, 9 if ss else 64, 0x0951, 0x1666, 0x0110, 1, 2, 3)
            cfg = config_descriptor(1, 0x80, 0x25 if ss else 0x96, [interface(0, 0, 2, 8, 6, 0x50)] + ep(0x81) + ep(0x02))
            u = b.usb(h["dev"], port, dd, [cfg], speed="5000" if ss else "480",
                      strings={"manufacturer": "Kingston", "product": "DataTraveler 3.0", "serial": self.serial()},
                      interfaces={0: {"driver": "usb-storage"}})
            hn = self.scsi_host
            self.scsi_host += 1
            host = b.add(Dev("%s/host%d" % (u.interfaces[0].path, hn), "scsi", "scsi_host"))
            tgt = b.add(Dev("%s/target%d:0:0" % (host.path, hn), "scsi", "scsi_target"))
            sdev = b.add(Dev("%s/%d:0:0:0" % (tgt.path, hn), "scsi", "scsi_device", driver="sd", driver_bus="scsi"))
            sdev.attr("vendor", "Kingston").attr("model", "DataTraveler 3.0")
            k = self.disk_no
            self.disk_no += 1
            name = "sd" + (chr(97 + k) if k < 26 else chr(96 + k // 26) + chr(97 + k % 26))
            disk = b.block(sdev.path, name, 8 if k < 16 else 65, (k % 16) * 16, 60530688, diskseq=100 + k, removable=1)
            disk.device_link(sdev.path)
            b.block(disk.path, name + "1", 8 if k < 16 else 65, (k % 16) * 16 + 1, 60528640, partn=1, start=2048,
                    sub=None)
        elif kind == "ethernet":
            comp = [ss_companion(3)] if ss else []
            dd = device_descriptor(0x0300 if ss else 0x0210, 0xFF, 0xFF, 0x00, 9 if ss else 64, 0x0B95, 0x1790,
                                   0x0100, 1, 2, 3)
            cfg = config_descriptor(1, 0xA0, 0x12 if ss else 0xFA, [
                interface(0, 0, 3, 0xFF, 0xFF, 0x00), endpoint(0x81, 3, 16, 11 if not ss else 8)] + comp +
                [endpoint(0x82, 2, 1024 if ss else 512, 0)] + comp + [endpoint(0x03, 2, 1024 if ss else 512, 0)] + comp)
            mac = "f8:e4:3b:%02x:%02x:%02x" % (self.rng.getrandbits(8), self.rng.getrandbits(8), self.rng.getrandbits(8))
            u = b.usb(h["dev"], port, dd, [cfg], speed="5000" if ss else "480",
                      strings={"manufacturer": "ASIX Elec. Corp.", "product": "AX88179",
                               "serial": mac.replace(":", "").upper()},
                      interfaces={0: {"driver": "ax88179_178a"}})
            n = b.classdev(u.interfaces[0].path, "net", "enx" + mac.replace(":", ""), "net")
            n.prop("INTERFACE", "enx" + mac.replace(":", "")).attr("address", mac)
        elif kind == "serial":
            dd = device_descriptor(0x0200, 0, 0, 0, 8, 0x0403, 0x6001, 0x0600, 1, 2, 3)
            cfg = config_descriptor(1, 0xA0, 0x2D, [interface(0, 0, 2, 0xFF, 0xFF, 0xFF, 2),
                                                    endpoint(0x81, 2, 64, 0), endpoint(0x02, 2, 64, 0)])
            u = b.usb(h["dev"], port, dd, [cfg], strings={"manufacturer": "FTDI", "product": "FT232R USB UART",
                                                          "serial": "A" + self.serial()[:7]},
                      interfaces={0: {"driver": "ftdi_sio", "string": "FT232R USB UART"}})
            k = sum(1 for d in b.devs if d.subsystem == "usb-serial")
            b.add(Dev(u.interfaces[0].path + "/ttyUSB%d" % k, "usb-serial", driver="ftdi_sio", driver_bus="usb-serial"))
        elif kind == "bluetooth":
            dd = device_descriptor(0x0200, 0xE0, 0x01, 0x01, 64, 0x0A12, 0x0001, 0x8891, 0, 2, 0)
            items = [interface(0, 0, 3, 0xE0, 1, 1), endpoint(0x81, 3, 16, 1), endpoint(0x02, 2, 64, 1),
                     endpoint(0x82, 2, 64, 1)]
            for alt, mps in enumerate((0, 9, 17, 25, 33, 49)):
                items += [interface(1, alt, 2, 0xE0, 1, 1), endpoint(0x03, 1, mps, 1), endpoint(0x83, 1, mps, 1)]
            u = b.usb(h["dev"], port, dd, [config_descriptor(1, 0xE0, 0x32, items)],
                      strings={"product": "CSR8510 A10"}, interfaces={0: {"driver": "btusb"}, 1: {"driver": "btusb"}})
        elif kind in ("hub", "hub7"):
            if h["depth"] >= 4:
                h["ports"].insert(0, port)
                return False
            if kind == "hub":  # Genesys Logic GL850G, 4 ports, single TT
                dd = device_descriptor(0x0200, 9, 0, 1, 64, 0x05E3, 0x0608, 0x6060, 0, 1, 0)
                cfg = config_descriptor(1, 0xE0, 0x32, [interface(0, 0, 1, 9, 0, 0), endpoint(0x81, 3, 1, 12)])
                u = b.usb(h["dev"], port, dd, [cfg], speed="480", maxchild=4, strings={"product": "USB2.0 Hub"},
                          interfaces={0: {"driver": "hub"}})
            else:  # Terminus FE2.1, 7 ports, multi TT: the hub driver selects alternate setting 1
                dd = device_descriptor(0x0200, 9, 0, 2, 64, 0x1A40, 0x0201, 0x0100, 0, 1, 0)
                cfg = config_descriptor(1, 0xE0, 0x32, [interface(0, 0, 1, 9, 0, 1), endpoint(0x81, 3, 1, 12),
                                                        interface(0, 1, 1, 9, 0, 2), endpoint(0x81, 3, 1, 12)])
                u = b.usb(h["dev"], port, dd, [cfg], speed="480", maxchild=7,
                          strings={"product": "USB 2.0 Hub [MTT]"}, interfaces={0: {"driver": "hub", "alt": 1}})
            self.hubs.append({"dev": u, "ss": False, "ports": list(range(1, u_ports(u) + 1)), "depth": h["depth"] + 1})
        return True

    def usb3_hub(self):
        """A USB 3 hub: VIA Labs VL817, 2109:0817 on the SS bus and its USB 2 part 2109:2817."""
        ap_ss = self.attach_point(True, hub=True)
        if ap_ss is None:
            return False
        ap_hs = self.attach_point(False, hub=True)
        if ap_hs is None:
            ap_ss[0]["ports"].insert(0, ap_ss[1])
            return False
        b = self.bed
        (hs_h, hs_port), (ss_h, ss_port) = ap_hs, ap_ss
        dd = device_descriptor(0x0320, 9, 0, 3, 9, 0x2109, 0x0817, 0x0473, 1, 2, 0)
        cfg = config_descriptor(1, 0xE0, 0x00, [interface(0, 0, 1, 9, 0, 0), endpoint(0x81, 3, 2, 8),
                                                ss_companion(0, 0, 2)])
        u3 = b.usb(ss_h["dev"], ss_port, dd, [cfg], speed="5000", maxchild=4,
                   strings={"manufacturer": "VIA Labs, Inc.", "product": "USB3.0 Hub"}, interfaces={0: {"driver": "hub"}})
        dd = device_descriptor(0x0210, 9, 0, 2, 64, 0x2109, 0x2817, 0x0473, 1, 2, 0)
        cfg = config_descriptor(1, 0xE0, 0x00, [interface(0, 0, 1, 9, 0, 1), endpoint(0x81, 3, 1, 12),
                                                interface(0, 1, 1, 9, 0, 2), endpoint(0x81, 3, 1, 12)])
        u2 = b.usb(hs_h["dev"], hs_port, dd, [cfg], speed="480", maxchild=4,
                   strings={"manufacturer": "VIA Labs, Inc.", "product": "USB2.0 Hub"},
                   interfaces={0: {"driver": "hub", "alt": 1}})
        self.hubs.append({"dev": u3, "ss": True, "ports": [1, 2, 3, 4], "depth": ss_h["depth"] + 1})
        self.hubs.append({"dev": u2, "ss": False, "ports": [1, 2, 3, 4], "depth": hs_h["depth"] + 1})
        return True

    # ---------------------------------------------------------------- driver
    UNITS = [  # (name, devices it adds, weight)
        ("keyboard", 3, 6), ("mouse", 2, 7), ("receiver", 4, 4), ("yubikey", 2, 3), ("gamepad", 2, 2),
        ("disk", 1, 6), ("ethernet", 1, 3), ("serial", 1, 3), ("bluetooth", 1, 2), ("hub", 1, 5),
        ("usb3hub", 2, 2), ("nvme", 2, 2), ("nic", 2, 2), ("gpu", 3, 1), ("misc_pci", 1, 2),
    ]

    def build(self):
        self.pci_base()
        self.platform_inputs()
        if self.left() >= 3:
            self.touchpad()
        failures = 0
        while self.left() > 0:
            free_hs = sum(len(h["ports"]) for h in self.hubs if not h["ss"] and h["depth"] < 4
                          and self.bed.next_devnum.get(h["dev"].usb_bus, 2) < 120)
            if free_hs <= 1 and self.left() >= 2 and self.usb_plain("hub7"):
                continue
            fits = [u for u in self.UNITS if u[1] <= self.left()]
            name = self.rng.choices(fits, weights=[u[2] for u in fits])[0][0]
            if self.place(name):
                failures = 0
                continue
            # no free port (or slot) for it: add a USB card when that fits, else try something else
            failures += 1
            if self.left() >= 4 and self.root_port_free() and failures > 3:
                self.xhci_card()
            if failures > 200:
                raise SystemExit("cannot place %d more devices (try another -n or --seed)" % self.left())
        assert self.count() == self.n, (self.count(), self.n)
        return self.bed

    def place(self, name):
        if name in ("keyboard", "mouse", "receiver", "yubikey", "gamepad"):
            return self.usb_hid(name)
        if name in ("disk", "ethernet", "serial", "bluetooth", "hub"):
            return self.usb_plain(name)
        if name == "usb3hub":
            return self.usb3_hub()
        if name == "misc_pci":
            return self.misc_pci()
        if not self.root_port_free(reserve=24):  # keep root ports for USB cards
            return False
        getattr(self, name)()
        return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=200, help="number of devices inspect reports (default 200)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-o", "--output", default="-", help="umockdev file (default: stdout)")
    ap.add_argument("--expected", help="also write the expected inspect records (JSON) here")
    ap.add_argument("--split", metavar="DIR",
                    help="also write the testbed as DIR/part-NNNN.umockdev files of at most 40 devices: "
                         "umockdev parses one big file in quadratic time (200 devices: ~4 s, 1000: ~90 s), "
                         "many small ones in linear time (1000: ~3 s). Use: umockdev-run $(for f in DIR/*; "
                         "do printf -- '-d %%s ' $f; done) -- CMD")
    args = ap.parse_args()
    if args.n < 10:
        ap.error("-n must be at least 10 (the base host has that many devices)")
    bed = Gen(args.n, args.seed).build()
    text = bed.render()
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w") as f:
            f.write(text)
    if args.split:
        os.makedirs(args.split, exist_ok=True)
        for old in os.listdir(args.split):
            if old.startswith("part-") and old.endswith(".umockdev"):
                os.unlink(os.path.join(args.split, old))
        blocks = [b.strip("\n") for b in text.split("\n\n") if b.strip()]
        for i in range(0, len(blocks), 40):
            with open(os.path.join(args.split, "part-%04d.umockdev" % (i // 40)), "w") as f:
                f.write("\n\n".join(blocks[i:i + 40]) + "\n")
    if args.expected:
        with open(args.expected, "w") as f:
            f.write(bed.expected_json())
    recs = bed.expected_records()
    counts = {s: sum(1 for r in recs if r["subsystem"] == s) for s in ("usb", "pci", "input")}
    print("devices %d: usb %d, pci %d, input %d; sysfs entries %d" % (
        len(recs), counts["usb"], counts["pci"], counts["input"], len(bed.devs)), file=sys.stderr)


if __name__ == "__main__":
    main()
