#!/usr/bin/env python3
"""Writes the umockdev fixtures of this folder and their *.expected.json.

    python3 Tests/HostDevicesTests/Fixtures/make-fixtures.py [--check]

The device data is spelled out below, one function per fixture; the sysfs layout
(attribute names and formats, uevent lines, descriptors) comes from
tools/bench/umockdevgen.py. With --check nothing is written: it fails when a
committed file differs from what this script would write.
Python 3 standard library only.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "tools", "bench"))

from umockdevgen import (  # noqa: E402
    Bed, Dev, MEM32, MEM64, MEM64_PREF, config_descriptor, cs, device_descriptor, endpoint,
    hid_descriptor, iad, interface, le16, le32, ss_companion,
)

XHCI_PHYS = "usb-0000:00:14.0-"

# Real capability bitmaps as the kernel prints them.
USB_KEYBOARD_KEYS = "1000000000007 ff9f207ac14057ff febeffdfffefffff fffffffffffffffe"
AT_KEYBOARD_KEYS = "402000000 3803078f800d001 feffffdfffefffff fffffffffffffffe"
CONSUMER_KEYS = [113, 114, 115, 128, 133, 140, 142, 144, 150, 152, 155, 156, 158, 159, 161, 163, 164, 165,
                 166, 167, 168, 169, 171, 172, 173, 176, 177, 178, 179, 180, 181, 182, 183, 184, 185, 186,
                 187, 188, 189, 190, 204, 206, 207, 208, 209, 210, 212, 217, 224, 225, 226, 228, 240,
                 0x160, 0x162, 0x166, 0x16a, 0x16e, 0x172, 0x174, 0x176, 0x178, 0x179, 0x17a, 0x17b,
                 0x17c, 0x17d, 0x17f, 0x180, 0x182, 0x183, 0x185, 0x188, 0x189, 0x18b, 0x18c, 0x18e,
                 0x18f, 0x190, 0x191, 0x192, 0x193, 0x195, 0x198, 0x199, 0x19b, 0x19c, 0x1a0, 0x1a1,
                 0x1a2, 0x1a3, 0x1a4, 0x1a5, 0x1a6, 0x1a7, 0x1a8, 0x1a9, 0x1aa, 0x1ab, 0x1ac, 0x1ad,
                 0x1ae, 0x1b0, 0x1b1, 0x1b7, 0x240, 0x241, 0x242, 0x243, 0x244, 0x245, 0x246, 0x247,
                 0x248, 0x249, 0x24a, 0x24b, 0x24c, 0x24d, 0x250, 0x251]


def mouse_caps(buttons):
    return dict(ev=[0, 1, 2, 4], key=list(range(0x110, 0x110 + buttons)), msc=[4])


# ---------------------------------------------------------------------------
def logitech_unifying():
    """Logitech Unifying receiver 046d:c52b (RQR12.11) on root port 2, usbhid on all three
    interfaces, hid-generic at the HID level (as when hid-logitech-dj is not loaded)."""
    bed = Bed()
    pci, hs, ss = bed.xhci()
    dd = device_descriptor(0x0200, 0, 0, 0, 8, 0x046D, 0xC52B, 0x1211, 1, 2, 0)
    cfg = config_descriptor(1, 0xA0, 0x31, [
        interface(0, 0, 1, 3, 1, 1), hid_descriptor(0x3B), endpoint(0x81, 3, 8, 8),
        interface(1, 0, 1, 3, 1, 2), hid_descriptor(0x94), endpoint(0x82, 3, 8, 2),
        interface(2, 0, 1, 3, 0, 0), hid_descriptor(0x62), endpoint(0x83, 3, 32, 2),
    ], iConfiguration=4)
    u = bed.usb(hs, 2, dd, [cfg], devnum=4, strings={"manufacturer": "Logitech", "product": "USB Receiver"},
                speed="12", config_strings={1: "RQR12.11_B0032"},
                interfaces={0: {"driver": "usbhid"}, 1: {"driver": "usbhid"}, 2: {"driver": "usbhid"}})
    phys = XHCI_PHYS + "2/input%d"
    h0 = bed.hid(u.interfaces[0].path, 3, 0x046D, 0xC52B, 1, "Logitech USB Receiver", phys % 0, hidraw=0)
    bed.input(h0.path, 3, "Logitech USB Receiver", phys % 0, 3, 0x046D, 0xC52B, 0x0111, event=3,
              ev="120013", key=USB_KEYBOARD_KEYS, msc=[4], led=[0, 1, 2, 3, 4], has_usb=True)
    h1 = bed.hid(u.interfaces[1].path, 3, 0x046D, 0xC52B, 2, "Logitech USB Receiver", phys % 1, hidraw=1)
    bed.input(h1.path, 4, "Logitech USB Receiver Mouse", phys % 1, 3, 0x046D, 0xC52B, 0x0111, event=4,
              mouse=0, rel=[0, 1, 6, 8, 11, 12], has_usb=True, **mouse_caps(16))
    bed.input(h1.path, 5, "Logitech USB Receiver Consumer Control", phys % 1, 3, 0x046D, 0xC52B, 0x0111,
              event=5, ev=[0, 1, 2, 3, 4], key=CONSUMER_KEYS, rel=[6], abs=[0x20], msc=[4], has_usb=True)
    bed.hid(u.interfaces[2].path, 3, 0x046D, 0xC52B, 3, "Logitech USB Receiver", phys % 2, hidraw=2)
    return bed


# ---------------------------------------------------------------------------
def usb_ethernet():
    """Realtek RTL8153 0bda:8153 (USB 3.0 gigabit Ethernet) on the SuperSpeed bus.
    Two configurations: 1 = vendor-specific ff/ff/00 (r8152), 2 = CDC ECM (02/06/00 + 0a/00/00).
    ACTIVE: configuration 2, cdc_ether bound -- what a kernel without r8152 does (usb core picks
    the first non-vendor configuration). Interfaces are therefore 2-1:2.0 and 2-1:2.1."""
    bed = Bed()
    pci, hs, ss = bed.xhci()
    dd = device_descriptor(0x0300, 0, 0, 0, 9, 0x0BDA, 0x8153, 0x3000, 1, 2, 6, nconfigs=2)
    cfg1 = config_descriptor(1, 0xA0, 0x24, [
        interface(0, 0, 3, 0xFF, 0xFF, 0x00),
        endpoint(0x81, 2, 1024, 0), ss_companion(3),
        endpoint(0x02, 2, 1024, 0), ss_companion(3),
        endpoint(0x83, 3, 2, 8), ss_companion(0, 0, 2),
    ])
    cfg2 = config_descriptor(2, 0xA0, 0x24, [
        interface(0, 0, 1, 0x02, 0x06, 0x00, 5),
        cs(0x24, 0x00, le16(0x0110)),                                  # CDC header 1.10
        cs(0x24, 0x06, 0x00, 0x01),                                    # union: master 0, slave 1
        cs(0x24, 0x0F, 3, le32(0), le16(1514), le16(0), 0),            # Ethernet networking
        endpoint(0x83, 3, 16, 8), ss_companion(0, 0, 16),
        interface(1, 0, 0, 0x0A, 0x00, 0x00),
        interface(1, 1, 2, 0x0A, 0x00, 0x00, 4),
        endpoint(0x81, 2, 1024, 0), ss_companion(3),
        endpoint(0x02, 2, 1024, 0), ss_companion(3),
    ])
    u = bed.usb(ss, 1, dd, [cfg1, cfg2], active=2, devnum=2, speed="5000",
                strings={"manufacturer": "Realtek", "product": "USB 10/100/1000 LAN", "serial": "000001"},
                interfaces={0: {"driver": "cdc_ether", "string": "CDC Communications Control"},
                            1: {"driver": "cdc_ether", "alt": 1, "string": "Ethernet Data"}})
    n = bed.classdev(u.interfaces[0].path, "net", "enx00e04c680a1b", "net")
    n.prop("INTERFACE", "enx00e04c680a1b").prop("IFINDEX", "4")
    for k, v in (("address", "00:e0:4c:68:0a:1b"), ("addr_len", "6"), ("broadcast", "ff:ff:ff:ff:ff:ff"),
                 ("type", "1"), ("ifindex", "4"), ("iflink", "4"), ("mtu", "1500"), ("operstate", "up"),
                 ("carrier", "1"), ("speed", "1000"), ("duplex", "full"), ("tx_queue_len", "1000"),
                 ("flags", "0x1003"), ("name_assign_type", "4"), ("addr_assign_type", "0")):
        n.attr(k, v)
    return bed


# ---------------------------------------------------------------------------
def usb_hub():
    """Genesys Logic GL850G USB 2.0 hub 05e3:0608 (single TT, 09/00/01) on root port 2,
    a Logitech M100 mouse 046d:c077 (low speed, 03/01/02) on its port 3: 1-2.3."""
    bed = Bed()
    pci, hs, ss = bed.xhci()
    hub_dd = device_descriptor(0x0200, 9, 0, 1, 64, 0x05E3, 0x0608, 0x6060, 0, 1, 0)
    hub_cfg = config_descriptor(1, 0xE0, 0x32, [interface(0, 0, 1, 9, 0, 0), endpoint(0x81, 3, 1, 12)])
    hub = bed.usb(hs, 2, hub_dd, [hub_cfg], devnum=5, speed="480", maxchild=4,
                  strings={"product": "USB2.0 Hub"}, interfaces={0: {"driver": "hub"}})
    m_dd = device_descriptor(0x0200, 0, 0, 0, 8, 0x046D, 0xC077, 0x7200, 1, 2, 0)
    m_cfg = config_descriptor(1, 0xA0, 0x32, [interface(0, 0, 1, 3, 1, 2), hid_descriptor(0x2E),
                                              endpoint(0x81, 3, 4, 10)])
    m = bed.usb(hub, 3, m_dd, [m_cfg], devnum=6, speed="1.5",
                strings={"manufacturer": "Logitech", "product": "USB Optical Mouse"},
                interfaces={0: {"driver": "usbhid"}})
    phys = XHCI_PHYS + "2.3/input0"
    h = bed.hid(m.interfaces[0].path, 3, 0x046D, 0xC077, 1, "Logitech USB Optical Mouse", phys, hidraw=0)
    bed.input(h.path, 6, "Logitech USB Optical Mouse", phys, 3, 0x046D, 0xC077, 0x0111, event=6, mouse=0,
              rel=[0, 1, 8, 11], has_usb=True, **mouse_caps(3))
    return bed


# ---------------------------------------------------------------------------
def webcam():
    """Logitech HD Pro Webcam C920 046d:082d (USB 2.0, IAD, ef/02/01): UVC video control 0e/01/00 +
    streaming 0e/02/00 (uvcvideo), audio control 01/01/00 + streaming 01/02/00 (snd-usb-audio),
    the snapshot-button input of uvcvideo, video4linux and ALSA nodes. Descriptor set shortened to
    one YUY2 format with two frame sizes and five streaming alternate settings."""
    bed = Bed()
    pci, hs, ss = bed.xhci()
    dd = device_descriptor(0x0200, 0xEF, 0x02, 0x01, 64, 0x046D, 0x082D, 0x0011, 0, 2, 1)
    vc_units = [
        cs(0x24, 0x02, 1, le16(0x0201), 0, 0, le16(0), le16(0), le16(0), 3, 0x0E, 0x20, 0x00),  # camera
        cs(0x24, 0x05, 3, 1, le16(0x4000), 2, 0x7F, 0x17, 0, 0x00),                            # processing (UVC 1.1)
        cs(0x24, 0x03, 4, le16(0x0101), 0, 3, 0),                                              # output
    ]
    vc_total = 13 + sum(len(x) for x in vc_units)
    vc_header = cs(0x24, 0x01, le16(0x0110), le16(vc_total), le32(30000000), 1, 1)
    yuy2 = bytes.fromhex("5955593200001000800000aa00389b71")

    def frame(index, w, h):
        return cs(0x24, 0x05, index, 0, le16(w), le16(h), le32(w * h * 16 * 15), le32(w * h * 16 * 30),
                  le32(w * h * 2), le32(333333), 2, le32(333333), le32(666666))
    vs_rest = [cs(0x24, 0x04, 1, 2, yuy2, 16, 1, 0, 0, 0, 0), frame(1, 640, 480), frame(2, 320, 240),
               cs(0x24, 0x0D, 1, 1, 4)]
    vs_total = 14 + sum(len(x) for x in vs_rest)
    vs_header = cs(0x24, 0x01, 1, le16(vs_total), 0x81, 0, 4, 0, 0, 0, 1, 0)
    ac_units = [
        cs(0x24, 0x02, 1, le16(0x0201), 0, 2, le16(0x0003), 0, 0),  # input terminal: microphone
        cs(0x24, 0x03, 3, le16(0x0101), 0, 5, 0),                   # output terminal: USB streaming
        cs(0x24, 0x06, 5, 1, 1, 0x03, 0x00, 0x00, 0),               # feature unit: mute, volume
    ]
    ac_total = 9 + sum(len(x) for x in ac_units)
    items = [iad(0, 2, 0x0E, 0x03, 0x00),
             interface(0, 0, 1, 0x0E, 0x01, 0x00), vc_header] + vc_units + [
             endpoint(0x83, 3, 16, 8), cs(0x25, 0x03, le16(16)),
             interface(1, 0, 0, 0x0E, 0x02, 0x00), vs_header] + vs_rest
    for alt, mps in enumerate((0x00C0, 0x0180, 0x0200, 0x0B20, 0x13FC), start=1):
        items += [interface(1, alt, 1, 0x0E, 0x02, 0x00), endpoint(0x81, 5, mps, 1)]
    items += [iad(2, 2, 0x01, 0x02, 0x00),
              interface(2, 0, 0, 0x01, 0x01, 0x00), cs(0x24, 0x01, le16(0x0100), le16(ac_total), 1, 3)] + ac_units
    items += [interface(3, 0, 0, 0x01, 0x02, 0x00),
              interface(3, 1, 1, 0x01, 0x02, 0x00),
              cs(0x24, 0x01, 3, 1, le16(0x0001)),                       # AS general: PCM, terminal 3
              cs(0x24, 0x02, 1, 2, 2, 16, 1, 0x80, 0x3E, 0x00),         # type I, 2ch, 16 bit, 16 kHz
              endpoint(0x84, 5, 0x44, 4, audio=True), cs(0x25, 0x01, 0x01, 0x00, le16(0))]
    cfg = config_descriptor(1, 0x80, 0xFA, items)
    u = bed.usb(hs, 4, dd, [cfg], devnum=3, speed="480",
                strings={"product": "HD Pro Webcam C920", "serial": "9F2C3A1E"},
                interfaces={0: {"driver": "uvcvideo"}, 1: {"driver": "uvcvideo"},
                            2: {"driver": "snd-usb-audio"}, 3: {"driver": "snd-usb-audio"}})
    vc = u.interfaces[0].path
    for i in (0, 1):
        v = bed.classdev(vc, "video4linux", "video%d" % i, "video4linux", node=("video%d" % i, 81, i))
        v.attr("name", "HD Pro Webcam C920").attr("index", i).attr("dev_debug", "0")
    mc = bed.classdev(vc, "media", "media0", "media", node=("media0", 239, 0))
    mc.attr("model", "HD Pro Webcam C920")
    bed.input(vc, 7, "HD Pro Webcam C920", XHCI_PHYS + "4/button", 3, 0x046D, 0x082D, 0x0011, event=7,
              ev=[0, 1], key=[212], has_usb=True)
    card = bed.classdev(u.interfaces[2].path, "sound", "card1", "sound")
    card.attr("id", "C920").attr("number", "1")
    bed.classdev(card.path, None, "controlC1", "sound", node=("snd/controlC1", 116, 8))
    bed.classdev(card.path, None, "pcmC1D0c", "sound", node=("snd/pcmC1D0c", 116, 9))
    return bed


# ---------------------------------------------------------------------------
def bluetooth():
    """Intel AX201 Bluetooth 8087:0026 (e0/01/01, no strings) on internal root port 10, btusb on
    both interfaces (interface 1 has seven alternate settings for SCO)."""
    bed = Bed()
    pci, hs, ss = bed.xhci()
    dd = device_descriptor(0x0200, 0xE0, 0x01, 0x01, 64, 0x8087, 0x0026, 0x0002, 0, 0, 0)
    items = [interface(0, 0, 3, 0xE0, 0x01, 0x01), endpoint(0x81, 3, 64, 1), endpoint(0x02, 2, 64, 1),
             endpoint(0x82, 2, 64, 1)]
    for alt, mps in enumerate((0, 9, 17, 25, 33, 49, 63)):
        items += [interface(1, alt, 2, 0xE0, 0x01, 0x01), endpoint(0x03, 1, mps, 1), endpoint(0x83, 1, mps, 1)]
    cfg = config_descriptor(1, 0xE0, 0x32, items)
    u = bed.usb(hs, 10, dd, [cfg], devnum=2, speed="12", removable="fixed",
                interfaces={0: {"driver": "btusb"}, 1: {"driver": "btusb"}})
    hci = bed.classdev(u.interfaces[0].path, "bluetooth", "hci0", "bluetooth", devtype="host", link_device=True)
    hci.attr("name", "hci0").attr("type", "Primary").attr("bus", "USB")
    rf = bed.classdev(hci.path, None, "rfkill0", "rfkill")
    rf.prop("RFKILL_NAME", "hci0").prop("RFKILL_TYPE", "bluetooth").prop("RFKILL_STATE", "1")
    rf.attr("name", "hci0").attr("type", "bluetooth").attr("state", "1").attr("soft", "0").attr("hard", "0")
    return bed


# ---------------------------------------------------------------------------
def usb_disk():
    """SanDisk Ultra USB 3.0 flash drive 0781:5581 (08/06/50, usb-storage) on the SuperSpeed bus,
    with the SCSI host/target/device chain, sda (8:0) and sda1 (8:1), sg0."""
    bed = Bed()
    pci, hs, ss = bed.xhci()
    dd = device_descriptor(0x0320, 0, 0, 0, 9, 0x0781, 0x5581, 0x0100, 1, 2, 3)
    cfg = config_descriptor(1, 0x80, 0x70, [interface(0, 0, 2, 0x08, 0x06, 0x50),
                                            endpoint(0x81, 2, 1024, 0), ss_companion(15),
                                            endpoint(0x02, 2, 1024, 0), ss_companion(15)])
    u = bed.usb(ss, 2, dd, [cfg], devnum=3, speed="5000",
                strings={"manufacturer": "SanDisk", "product": "Ultra", "serial": "4C530001090921117043"},
                interfaces={0: {"driver": "usb-storage"}})
    host = bed.add(Dev(u.interfaces[0].path + "/host0", "scsi", "scsi_host"))
    sh = bed.classdev(host.path, "scsi_host", "host0", "scsi_host")
    sh.attr("proc_name", "usb-storage").attr("unique_id", "0").attr("can_queue", "1").attr("host_busy", "0")
    target = bed.add(Dev(host.path + "/target0:0:0", "scsi", "scsi_target"))
    sdev = Dev(target.path + "/0:0:0:0", "scsi", "scsi_device", driver="sd", driver_bus="scsi")
    sdev.prop("MODALIAS", "scsi:t-0x00")
    for k, v in (("vendor", "SanDisk "), ("model", "Ultra           "), ("rev", "1.00"), ("type", "0"),
                 ("scsi_level", "7"), ("state", "running"), ("device_blocked", "0"), ("queue_depth", "1"),
                 ("timeout", "30"), ("modalias", "scsi:t-0x00")):
        sdev.attr(k, v)
    bed.add(sdev)
    bed.classdev(sdev.path, "scsi_disk", "0:0:0:0", "scsi_disk").attr("FUA", "0").attr("cache_type", "write through")
    bed.classdev(sdev.path, "scsi_device", "0:0:0:0", "scsi_device")
    bed.classdev(sdev.path, "scsi_generic", "sg0", "scsi_generic", node=("sg0", 21, 0))
    sda = bed.block(sdev.path, "sda", 8, 0, 60062500, diskseq=3, removable=1)
    sda.device_link(sdev.path)
    bed.block(sda.path, "sda1", 8, 1, 60060452, partn=1, start=2048, sub=None)
    return bed


# ---------------------------------------------------------------------------
TGL = dict(subvendor=0x1028, subdevice=0x0991)  # a Dell XPS 13 9310 (Tiger Lake-LP)


def pci_wifi():
    """Intel Wi-Fi 6 AX201 8086:a0f0 (CNVi, 0x028000, iwlwifi) at 0000:00:14.3 on Tiger Lake-LP.
    IOMMU group 8 holds the whole multi-function device 00:14: xHCI 00:14.0 (xhci_hcd, with its
    root hubs), shared SRAM 00:14.2 (no driver) and the Wi-Fi."""
    bed = Bed()
    bed.xhci(iommu_group=8, multifunction=True)
    bed.pci("0000:00:14.2", 0x8086, 0xA0EF, 0x050000, 0x20, driver=None, iommu_group=8, irq=255,
            bars=[(0x603112C000, 0x4000, MEM64), (0x6031135000, 0x1000, MEM64)], pcie=(9, 1, 1), **TGL)
    w = bed.pci("0000:00:14.3", 0x8086, 0xA0F0, 0x028000, 0x20, 0x8086, 0x0244, "iwlwifi", iommu_group=8,
                irq=16, bars=[(0x6031128000, 0x4000, MEM64)], pcie=(9, 1, 1),
                extra_attrs={"reset_method": "flr"})
    n = bed.classdev(w.path, "net", "wlp0s20f3", "net", devtype="wlan")
    n.prop("INTERFACE", "wlp0s20f3").prop("IFINDEX", "3")
    for k, v in (("address", "f4:46:37:8a:1c:2d"), ("addr_len", "6"), ("type", "1"), ("ifindex", "3"),
                 ("mtu", "1500"), ("operstate", "up"), ("carrier", "1"), ("name_assign_type", "4")):
        n.attr(k, v)
    bed.classdev(w.path, "ieee80211", "phy0", "ieee80211").attr("index", "0").attr("name", "phy0")
    return bed


# ---------------------------------------------------------------------------
def pci_gpu_audio():
    """NVIDIA GeForce RTX 2060 SUPER (TU106, 10de:1f06, 0x030000, nouveau) at 0000:01:00.0 and its
    HDMI audio function 10de:10f9 (0x040300, snd_hda_intel) at 0000:01:00.1, behind the CPU's PCIe
    x16 root port 0000:00:01.0 (8086:1901, 0x060400, pcieport). Root port: IOMMU group 1; GPU and
    audio share group 2."""
    bed = Bed()
    rp = bed.pci("0000:00:01.0", 0x8086, 0x1901, 0x060400, 0x0D, 0x1043, 0x8694, "pcieport", iommu_group=1,
                 irq=122, bridge=(0, 1, 1, (0xF6000000, 0x1100000), (0xE0000000, 0x12000000)),
                 pcie=(4, 3, 16, True), link=("8.0 GT/s PCIe", "8.0 GT/s PCIe", "16"))
    gpu = bed.pci("0000:01:00.0", 0x10DE, 0x1F06, 0x030000, 0xA1, 0x1043, 0x8703, "nouveau", parent=rp.path,
                  iommu_group=2, irq=133, multifunction=True,
                  bars=[(0xF6000000, 0x1000000, MEM32), (0xE0000000, 0x10000000, MEM64_PREF),
                        (0xF0000000, 0x2000000, MEM64_PREF)],
                  pcie=(0, 3, 16), link=("8.0 GT/s PCIe", "8.0 GT/s PCIe", "16"),
                  extra_attrs={"boot_vga": "1", "reset_method": "bus"})
    bed.classdev(gpu.path, "drm", "card0", "drm", devtype="drm_minor", node=("dri/card0", 226, 0))
    bed.classdev(gpu.path, "drm", "renderD128", "drm", devtype="drm_minor", node=("dri/renderD128", 226, 128))
    aud = bed.pci("0000:01:00.1", 0x10DE, 0x10F9, 0x040300, 0xA1, 0x1043, 0x8703, "snd_hda_intel",
                  parent=rp.path, iommu_group=2, irq=17, bars=[(0xF7080000, 0x4000, MEM32)],
                  pcie=(0, 3, 16), link=("8.0 GT/s PCIe", "8.0 GT/s PCIe", "16"),
                  extra_attrs={"reset_method": "bus"})
    card = bed.classdev(aud.path, "sound", "card0", "sound")
    card.attr("id", "NVidia").attr("number", "0")
    bed.classdev(card.path, None, "controlC0", "sound", node=("snd/controlC0", 116, 2))
    bed.classdev(card.path, None, "hwC0D0", "sound", node=("snd/hwC0D0", 116, 3))
    bed.classdev(card.path, None, "pcmC0D3p", "sound", node=("snd/pcmC0D3p", 116, 4))
    return bed


# ---------------------------------------------------------------------------
def ps2_keyboard():
    """The laptop keyboard: AT Translated Set 2 keyboard on i8042 serio0 (atkbd), input0/event0,
    plus the ACPI power button (LNXPWRBN, input1/event1) every PC has."""
    bed = Bed()
    i8042 = bed.add(Dev("/devices/platform/i8042", "platform", driver="i8042"))
    i8042.prop("MODALIAS", "platform:i8042").attr("modalias", "platform:i8042").attr("driver_override", "(null)")
    serio = Dev(i8042.path + "/serio0", "serio", driver="atkbd")
    for k, v in (("SERIO_TYPE", "06"), ("SERIO_PROTO", "00"), ("SERIO_ID", "00"), ("SERIO_EXTRA", "00"),
                 ("MODALIAS", "serio:ty06pr00id00ex00"), ("SERIO_FIRMWARE_ID", "PNP: PNP0303")):
        serio.prop(k, v)
    for k, v in (("description", "i8042 KBD port"), ("modalias", "serio:ty06pr00id00ex00"),
                 ("bind_mode", "auto"), ("firmware_id", "PNP: PNP0303"), ("id/type", "06"), ("id/proto", "00"),
                 ("id/id", "00"), ("id/extra", "00"), ("set", "2"), ("softraw", "1"), ("softrepeat", "0"),
                 ("scroll", "0"), ("extra", "0"), ("err_count", "0"), ("force_release", "369-370")):
        serio.attr(k, v)
    bed.add(serio)
    bed.input(serio.path, 0, "AT Translated Set 2 keyboard", "isa0060/serio0/input0", 0x11, 0x0001, 0x0001,
              0xAB41, event=0, ev="120013", key=AT_KEYBOARD_KEYS, msc=[4], led=[0, 1, 2])
    sysm = bed.add(Dev("/devices/LNXSYSTM:00", "acpi"))
    sysm.prop("MODALIAS", "acpi:LNXSYSTM:").attr("hid", "LNXSYSTM").attr("path", "\\").attr("modalias", "acpi:LNXSYSTM:")
    pwr = bed.add(Dev(sysm.path + "/LNXPWRBN:00", "acpi", driver="button", driver_bus="acpi"))
    pwr.prop("MODALIAS", "acpi:LNXPWRBN:").attr("hid", "LNXPWRBN").attr("modalias", "acpi:LNXPWRBN:")
    bed.input(pwr.path, 1, "Power Button", "LNXPWRBN/button/input0", 0x19, 0x0000, 0x0001, 0x0000, event=1,
              ev=[0, 1], key=[116])
    return bed


# ---------------------------------------------------------------------------
def i2c_touchpad():
    """ELAN I2C-HID touchpad ELAN0001:00 04F3:3195 (bustype 0018, hid-multitouch, a clickpad) on the
    Tiger Lake-LP Serial IO I2C controller #0 (0000:00:15.0, 8086:a0e8, intel-lpss) ->
    i2c_designware.0 -> i2c-1. hid-multitouch makes two inputs: the Touchpad (input13/event9) and a
    relative 'Mouse' (input12/event8, which udev calls mouse + pointing stick on I2C)."""
    bed = Bed()
    lpss = bed.pci("0000:00:15.0", 0x8086, 0xA0E8, 0x0C8000, 0x20, driver="intel-lpss", iommu_group=9, irq=27,
                   bars=[(0x4017000000, 0x1000, MEM64)], multifunction=True, pcie=(9, 1, 1), **TGL)
    dw = Dev(lpss.path + "/i2c_designware.0", "platform", driver="i2c_designware")
    dw.prop("MODALIAS", "platform:i2c_designware").attr("modalias", "platform:i2c_designware")
    dw.attr("driver_override", "(null)")
    bed.add(dw)
    adap = bed.add(Dev(dw.path + "/i2c-1", "i2c", "i2c_adapter"))
    adap.attr("name", "Synopsys DesignWare I2C adapter")
    bed.classdev(adap.path, "i2c-dev", "i2c-1", "i2c-dev", node=("i2c-1", 89, 1)).attr(
        "name", "Synopsys DesignWare I2C adapter")
    client = Dev(adap.path + "/i2c-ELAN0001:00", "i2c", driver="i2c_hid_acpi", driver_bus="i2c")
    client.prop("MODALIAS", "acpi:ELAN0001:PNP0C50:")
    client.attr("name", "ELAN0001:00").attr("modalias", "acpi:ELAN0001:PNP0C50:")
    bed.add(client)
    hname = "ELAN0001:00 04F3:3195"
    h = bed.hid(client.path, 0x18, 0x04F3, 0x3195, 1, hname, "i2c-ELAN0001:00", driver="hid-multitouch",
                group=4, hidraw=3)
    bed.input(h.path, 12, hname + " Mouse", "i2c-ELAN0001:00", 0x18, 0x04F3, 0x3195, 0x0100, event=8, mouse=1,
              ev=[0, 1, 2, 4], key=[0x110, 0x111], rel=[0, 1], msc=[4])
    bed.input(h.path, 13, hname + " Touchpad", "i2c-ELAN0001:00", 0x18, 0x04F3, 0x3195, 0x0100, event=9,
              ev=[0, 1, 3, 4], key=[0x110, 0x145, 0x148, 0x14A, 0x14D, 0x14E, 0x14F],
              abs=[0x00, 0x01, 0x2F, 0x35, 0x36, 0x37, 0x39], msc=[5], prop=[0, 2])
    return bed


# ---------------------------------------------------------------------------
def pci_nvme_boot():
    """Samsung SSD 980 PRO 1TB (144d:a80a, 0x010802, nvme) at 0000:02:00.0 behind the Tiger Lake-LP
    root port #9 0000:00:1d.0 (8086:a0b0, pcieport): nvme0, ng0n1, namespace nvme0n1 (259:0) with
    nvme0n1p1 (259:1, the EFI system partition) and nvme0n1p2 (259:2, the root filesystem; see
    pci-nvme-boot.mountinfo). IOMMU groups: root port 11, NVMe 12."""
    bed = Bed()
    rp = bed.pci("0000:00:1d.0", 0x8086, 0xA0B0, 0x060400, 0x20, driver="pcieport", iommu_group=11, irq=124,
                 bridge=(0, 2, 2, (0x7A300000, 0x100000), None), pcie=(4, 3, 4, True),
                 link=("8.0 GT/s PCIe", "8.0 GT/s PCIe", "4"), **TGL)
    nv = bed.pci("0000:02:00.0", 0x144D, 0xA80A, 0x010802, 0x00, 0x144D, 0xA801, "nvme", parent=rp.path,
                 iommu_group=12, irq=16, bars=[(0x7A300000, 0x4000, MEM64)], pcie=(0, 3, 4),
                 link=("8.0 GT/s PCIe", "16.0 GT/s PCIe", "4"), extra_attrs={"reset_method": "flr bus"})
    ctrl = bed.classdev(nv.path, "nvme", "nvme0", "nvme", node=("nvme0", 240, 0))
    for k, v in (("model", "Samsung SSD 980 PRO 1TB".ljust(40)), ("serial", "S5GXNF0R912345A".ljust(20)),
                 ("firmware_rev", "5B2QGXA7"), ("transport", "pcie"), ("state", "live"),
                 ("address", "0000:02:00.0"), ("cntlid", "6"), ("queue_count", "9"), ("sqsize", "1023"),
                 ("numa_node", "-1"),
                 ("subsysnqn", "nqn.1994-11.com.samsung:nvme:980PRO:M.2:S5GXNF0R912345A")):
        ctrl.attr(k, v)
    bed.classdev(ctrl.path, None, "ng0n1", "nvme-generic", node=("ng0n1", 239, 0))
    disk = bed.block(ctrl.path, "nvme0n1", 259, 0, 1953525168, diskseq=1, sub=None,
                     extra={"wwid": "eui.002538b911b3c4a1", "nsid": "1"})
    disk.device_link(ctrl.path)
    bed.block(disk.path, "nvme0n1p1", 259, 1, 1048576, partn=1, start=2048, sub=None,
              partname="EFI System Partition")
    bed.block(disk.path, "nvme0n1p2", 259, 2, 1952472064, partn=2, start=1050624, sub=None)
    return bed


MOUNTINFO = """\
22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
23 28 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw
24 28 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=8031780k,nr_inodes=2007945,mode=755,inode64
25 24 0:23 / /dev/pts rw,nosuid,noexec,relatime shared:3 - devpts devpts rw,gid=5,mode=620,ptmxmode=000
26 28 0:24 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs rw,size=1612564k,mode=755,inode64
28 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
29 22 0:6 / /sys/kernel/security rw,nosuid,nodev,noexec,relatime shared:8 - securityfs securityfs rw
30 24 0:25 / /dev/shm rw,nosuid,nodev shared:4 - tmpfs tmpfs rw,inode64
33 22 0:27 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
44 28 259:1 / /boot/efi rw,relatime shared:31 - vfat /dev/nvme0n1p1 rw,fmask=0077,dmask=0077,codepage=437,iocharset=ascii,shortname=mixed,utf8,errors=remount-ro
51 26 0:45 / /run/user/1000 rw,nosuid,nodev,relatime shared:412 - tmpfs tmpfs rw,size=1612560k,nr_inodes=403140,mode=700,uid=1000,gid=1000,inode64
"""

FIXTURES = [
    ("logitech-unifying", logitech_unifying),
    ("usb-ethernet", usb_ethernet),
    ("usb-hub", usb_hub),
    ("webcam", webcam),
    ("bluetooth", bluetooth),
    ("usb-disk", usb_disk),
    ("pci-wifi", pci_wifi),
    ("pci-gpu-audio", pci_gpu_audio),
    ("ps2-keyboard", ps2_keyboard),
    ("i2c-touchpad", i2c_touchpad),
    ("pci-nvme-boot", pci_nvme_boot),
]


def outputs():
    for name, fn in FIXTURES:
        bed = fn()
        yield name + ".umockdev", bed.render()
        yield name + ".expected.json", bed.expected_json()
    yield "pci-nvme-boot.mountinfo", MOUNTINFO


def main():
    check = "--check" in sys.argv[1:]
    bad = 0
    for fname, text in outputs():
        path = os.path.join(HERE, fname)
        if check:
            try:
                with open(path) as f:
                    same = f.read() == text
            except FileNotFoundError:
                same = False
            if not same:
                print("out of date: " + fname, file=sys.stderr)
                bad += 1
        else:
            with open(path, "w") as f:
                f.write(text)
            print("wrote " + fname)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
