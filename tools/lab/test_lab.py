#!/usr/bin/env python3
"""Real-kernel lab tests (unittest): python3 tools/lab/test_lab.py [-v] [TestClass[.test]]

Each class boots its own lab (about 7 s). A failure names the step and shows
the guest console tail. A missing dependency is a failure saying what to
install, never a skip.
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import labkit  # noqa: E402
import truth  # noqa: E402
from labkit import Lab, LabError, QMPError  # noqa: E402

TIMINGS = []     # (what, seconds), printed at the end


def note(what, seconds):
    TIMINGS.append((what, seconds))


def setUpModule():
    # Fail loudly (not skip) when the machine lacks what the lab needs.
    labkit.qemu_binary()
    labkit.which_or_fail("dpkg", "dpkg")
    labkit.which_or_fail("apt-get", "apt")
    labkit.prepare()


def tearDownModule():
    if TIMINGS:
        print("\nlab timings:", file=sys.stderr)
        for what, s in TIMINGS:
            print("  %-48s %6.2f s" % (what, s), file=sys.stderr)


LAB_HANGS = []  # tests run a second time after the guest (or an inner VM's QEMU) stopped answering


def lab_hung(exc):
    """Why a test's error is the lab's machinery hanging, not vhotplug, or None.

    Two hangs of TCG-in-TCG vfio (FACTS.md) are recognised: the guest agent going
    silent (the guest kernel hung), and an inner VM's QEMU leaving its observer
    monitor unanswered while the agent lives. vhotplug never connects to the observer
    monitor (`<vm>-obs.qmp`), so it cannot be what holds that monitor silent."""
    while exc is not None:
        text = str(exc)
        if isinstance(exc, labkit.LabTimeout) and "guest agent did not answer" in text:
            return "the guest stopped answering (its kernel hung)"
        if isinstance(exc, labkit.LabError) and "guest agent qmp failed" in text \
                and re.search(r"-obs\.qmp: no answer within", text):
            return "an inner VM's QEMU stopped answering its observer QMP monitor"
        exc = exc.__cause__ or exc.__context__
    return None


class HeldResult:
    """A test result's calls for one test, held until it is known whether they stand."""

    def __init__(self, real):
        self._real = real
        self.calls = []

    def __getattr__(self, name):
        attr = getattr(self._real, name)
        if not callable(attr):
            return attr

        def held(*args, **kw):
            self.calls.append((name, args, kw))
        return held

    def hung(self):
        for name, args, _ in self.calls:
            if name in ("addError", "addFailure"):
                why = lab_hung(args[1][1])
                if why:
                    return why
        return None

    def replay(self):
        for name, args, kw in self.calls:
            getattr(self._real, name)(*args, **kw)


class LabCase(unittest.TestCase):
    vms = ("vm1",)
    lab = None

    def run(self, result=None):
        """Runs the test; if the lab itself hung meanwhile, once more in a new lab.

        The Debian 6.1 guest kernel can hang inside vfio during a physical NIC unplug
        (FACTS.md: about 1 in 15 there; here first seen on 2026-12-06, once in the 40-odd
        lab runs of four sessions). The agent then answers nothing, and every later test of
        the class would fail on the same dead guest. Once (session 6, during a vfio-pci
        detach) the inner VM's QEMU stopped answering QMP instead, the guest alive: its
        observer monitor, which vhotplug never uses, went silent too (`lab_hung`).
        Only those cases are run again, after a reboot, and said on stderr and in the
        closing line; the second run counts as it is, so a test that hangs the lab every
        time still fails."""
        if result is None:
            return super().run(result)
        held = HeldResult(result)
        super().run(held)
        why = held.hung()
        if not why:
            held.replay()
            return result
        LAB_HANGS.append("%s (%s)" % (self.id(), why))
        print("\nlab: during %s %s; rebooting the lab and running the test once more" % (self.id(), why),
              file=sys.stderr, flush=True)
        cls = type(self)
        try:
            cls.tearDownClass()
            cls.setUpClass()
        except Exception:
            result.startTest(self)
            result.addError(self, sys.exc_info())
            result.stopTest(self)
            return result
        return super().run(result)

    @classmethod
    def setUpClass(cls):
        cls.lab = Lab(vms=cls.vms, log=lambda m: print(m, file=sys.stderr, flush=True))
        cls.lab.__enter__()
        note("%s: boot to ready" % cls.__name__, cls.lab.timings["ready"])

    @classmethod
    def tearDownClass(cls):
        if cls.lab:
            cls.lab.close()

    def tearDown(self):
        # leave the guest as the next test expects it: nothing plugged
        if self.lab and self.lab.plugged:
            try:
                self.lab.unplug_all()
            except LabError as e:
                print("tearDown: unplug failed: %s" % e, file=sys.stderr)

    def plug(self, kind, id, **kw):
        p = self.lab.plug(kind, id, **kw)
        note("plug %s (device_add -> guest sees it)" % kind, p.elapsed)
        return p

    def unplug(self, id):
        kind = self.lab.plugged[id].kind
        t = self.lab.unplug(id)
        note("unplug %s (device_del -> guest lost it)" % kind, t)


class Test1Lab(LabCase):
    """The lab itself: boot, guest root, devices seen by the guest's own tools, inner VMs."""

    vms = ("vm1",)

    def test_boot_and_guest_root(self):
        lab = self.lab
        # (How long the boot took is a figure, noted for the class, not a condition: a loaded
        # machine boots the lab more slowly, which says nothing of vhotplug.)
        out = lab.check("stat -f -c %T /proc /sys /run /dev; cat /proc/cmdline; grep ' / ' /proc/mounts; "
                        "ls /run/vhotplug-lab; uname -r")
        lines = out.splitlines()
        self.assertEqual(lines[:3], ["proc", "sysfs", "tmpfs"], out)
        self.assertIn("lab.stage2=", lines[4])
        self.assertIn("overlay", lines[5])
        self.assertIn("vm1.qmp", out)
        self.assertEqual(lines[-1].strip(), lab.prepared.kver)
        # the root is writable (tmpfs overlay) without touching the host
        lab.check("echo hello > /var/lib/vhotplug/lab-test && cat /var/lib/vhotplug/lab-test")
        self.assertFalse(os.path.exists("/var/lib/vhotplug/lab-test"))
        # udevd runs; modules are there; no PS/2 keyboard
        lab.check("pidof systemd-udevd && test -d /sys/bus/pci/drivers/vfio-pci && test -c /dev/uinput")
        self.assertEqual(lab.check("ls /dev/input | grep -c event || true").strip(), "0")
        # the host's build tree is visible at the same path (9p)
        self.assertEqual(lab.check("test -f %s/Package.swift && echo ok" % labkit.REPO_ROOT).strip(), "ok")
        # the inner VM runs and has its controller and root ports
        self.assertEqual(lab.inner_qmp("vm1", "query-status")["status"], "running")
        per = lab.inner_peripherals("vm1")
        for dev in ("xhci", "rp1", "rp2", "rp3", "rp4", "ep1", "ep2"):
            self.assertIn(dev, per)

    def test_usb_devices_in_guest(self):
        lab = self.lab
        m = self.plug("usb-mouse", "m1")
        k = self.plug("usb-kbd", "k1")
        d = self.plug("usb-storage", "d1")
        h = self.plug("usb-hub", "h1", behind=[("usb-kbd", "hk1")])
        hk = h.behind[0]
        self.assertEqual(hk.port, h.port + ".1")
        self.assertEqual(hk.guest["name"], "%s.1" % h.guest["name"])
        lsusb = lab.check("lsusb")
        for p, vidpid in ((m, "0627:0001"), (k, "0627:0001"), (d, "46f4:0001"), (h, "0409:55aa"), (hk, "0627:0001")):
            bus, dev = int(p.guest["busnum"]), int(p.guest["devnum"])
            self.assertIn("Bus %03d Device %03d: ID %s" % (bus, dev, vidpid), lsusb)
            self.assertTrue(lab.check("test -c /dev/bus/usb/%03d/%03d && echo ok" % (bus, dev)).strip() == "ok")
        tree = lab.check("lsusb -t")
        self.assertRegex(tree, r"Class=Hub, Driver=hub/8p")
        self.assertEqual(m.guest["interfaces"][0]["driver"], "usbhid")
        self.assertEqual(d.guest["interfaces"][0]["driver"], "usb-storage")
        # input nodes for the HID devices, a disk for the storage
        self.assertTrue(m.guest["input"] and k.guest["input"] and hk.guest["input"])
        self.assertTrue(d.guest["block"])
        self.assertIn("LABD1", lab.check("ls /dev/disk/by-id"))
        # the outer QEMU's view agrees on ports
        info = lab.outer_qmp("human-monitor-command", **{"command-line": "info usb"})
        self.assertIn("Port %s.1" % h.port, info)
        for id in ("hk1", "h1", "m1", "k1", "d1"):
            g = lab.plugged[id].guest["name"] if id in lab.plugged else None
            if id in lab.plugged:
                self.unplug(id)
            if g:
                self.assertNotIn(g, lab.guest_devices()["usb"])
        self.assertEqual(lab.plugged, {})
        self.assertEqual(lab.check("lsusb | grep -v 'root hub' || true").strip(), "")

    def test_pci_devices_in_guest(self):
        lab = self.lab
        n = self.plug("e1000e", "n1")
        v = self.plug("virtio-keyboard-pci", "vk1")
        self.assertNotEqual(n.bus, v.bus)
        lspci = lab.check("lspci -D -nn")
        self.assertRegex(lspci, re.escape(n.guest["name"]) + r" .*\[8086:10d3\]")
        self.assertRegex(lspci, re.escape(v.guest["name"]) + r" .*\[1af4:1052\]")
        self.assertEqual(truth.lspci_kernel_driver(lab, n.guest["name"]), "e1000e")
        self.assertTrue(n.guest["iommu_group"])
        # the virtio keyboard is an input device with no USB ancestor
        ev = v.guest["input"][0]
        props = lab.check("udevadm info --query=property --name=/dev/input/%s" % ev)
        self.assertIn("ID_INPUT_KEYBOARD=1", props)
        self.assertNotIn("ID_BUS=usb", props)
        self.unplug("vk1")
        self.unplug("n1")
        now = lab.guest_devices()
        self.assertNotIn(n.guest["name"], now["pci"])
        self.assertNotIn(ev, now["input"])

    def test_inner_vm_restart_and_second_vm(self):
        lab = self.lab
        pid1 = lab.check("cat /run/vhotplug-lab/vm1.pid").strip()
        t = time.monotonic()
        lab.vm_restart("vm1")
        note("inner VM restart (stop -> QMP answers)", time.monotonic() - t)
        pid2 = lab.check("cat /run/vhotplug-lab/vm1.pid").strip()
        self.assertNotEqual(pid1, pid2)
        self.assertEqual(lab.inner_qmp("vm1", "query-status")["status"], "running")
        lab.check("test -S /run/vhotplug-lab/vm1.qmp")
        # the daemon's socket answers too (and is free again afterwards)
        r = lab.agent.call("qmp", socket="/run/vhotplug-lab/vm1.qmp", execute="query-status")
        self.assertEqual(r["return"]["status"], "running")
        # vm2 on request
        t = time.monotonic()
        lab.vm_start("vm2")
        note("inner VM vm2 start on request", time.monotonic() - t)
        self.assertIn("rp1", lab.inner_peripherals("vm2"))
        lab.vm_stop("vm2")
        self.assertNotEqual(lab.run("test -e /run/vhotplug-lab/vm2.qmp")[0], 0)

    def test_start_and_stop_a_guest_daemon(self):
        """The plumbing start_vhotplug uses (spawn, log capture, stop), with a stand-in program."""
        lab = self.lab
        lab.write_file("/run/vhotplug-lab/stand-in.conf", '{"vms": []}')
        # the trap comes first: the test may signal as soon as the log shows the configuration
        pid = lab.start_vhotplug(args=["-c", "trap 'echo got TERM; exit 3' TERM; "
                                             "echo started with $LD_LIBRARY_PATH; cat /run/vhotplug-lab/stand-in.conf; "
                                             "while :; do sleep 0.1; done"],
                                 binary="/bin/sh",
                                 ready=lambda l: "vms" in l.vhotplug_log())
        self.assertTrue(pid)
        self.assertTrue(lab.vhotplug_running())
        log = lab.vhotplug_log()
        self.assertIn(labkit.SWIFT_RUNTIME, log)
        self.assertIn('{"vms": []}', log)
        self.assertEqual(lab.stop_vhotplug(), 3)
        self.assertIn("got TERM", lab.vhotplug_log())
        self.assertFalse(lab.vhotplug_running())

    def test_step_timeout_names_step_and_shows_console(self):
        with self.assertRaises(labkit.LabTimeout) as cm:
            self.lab.wait_for(lambda: False, 0.3, "an impossible step")
        msg = str(cm.exception)
        self.assertIn("[step: an impossible step]", msg)
        self.assertIn("guest console", msg)
        self.assertIn("lab-stage2", msg)
        with self.assertRaises(labkit.LabTimeout) as cm:
            self.lab.run("sleep 5", timeout=0.5)
        self.assertIn("sleep 5", str(cm.exception))


class Test2VFIO(LabCase):
    """The manual VFIO path the daemon will automate (issue 5)."""

    def test_e1000e_to_vfio_and_into_inner_vm(self):
        lab = self.lab
        n = self.plug("e1000e", "n1")
        addr = n.guest["name"]
        self.assertEqual(n.guest["driver"], "e1000e")
        t = time.monotonic()
        group = lab.vfio_bind(addr)
        note("vfio-pci rebind (driver_override/unbind/drivers_probe)", time.monotonic() - t)
        self.assertEqual(truth.lspci_kernel_driver(lab, addr), "vfio-pci")
        lab.check("test -c /dev/vfio/%d" % group)
        # the inner VM takes it on a root port
        t = time.monotonic()
        self.assertEqual(lab.inner_qmp("vm1", "device_add", driver="vfio-pci", host=addr, bus="rp1", id="lab-vf1",
                                       timeout=60), {})
        note("inner VM device_add vfio-pci", time.monotonic() - t)
        self.assertEqual(lab.inner_peripherals("vm1").get("lab-vf1"), "vfio-pci")
        on_rp1 = [d for d in lab.inner_pci("vm1") if d["qdev_id"] == "lab-vf1"]
        self.assertEqual(len(on_rp1), 1, lab.inner_pci("vm1"))
        self.assertEqual((on_rp1[0]["vendor"], on_rp1[0]["device"], on_rp1[0]["parent"]), (0x8086, 0x10d3, "rp1"))
        # QEMU's errors seen here (FACTS): root bus cannot hot-plug, absent host device
        with self.assertRaises(QMPError) as cm:
            lab.inner_qmp("vm1", "device_add", driver="e1000e", bus="pcie.0", id="lab-x")
        self.assertIn("does not support hotplugging", cm.exception.desc)
        with self.assertRaises(QMPError) as cm:
            lab.inner_qmp("vm1", "device_add", driver="vfio-pci", host="0000:00:14.3", bus="rp2", id="lab-y")
        self.assertIn("no such host device", cm.exception.desc)
        # unplug from the inner VM completes at once (native PCIe hot-plug)
        t = time.monotonic()
        r = lab.inner_qmp("vm1", "device_del", id="lab-vf1", timeout=30,
                          wait_event={"event": "DEVICE_DELETED", "data": {"device": "lab-vf1"}, "timeout": 20})
        self.assertIsNotNone(r["event"], "no DEVICE_DELETED for lab-vf1")
        note("inner VM device_del vfio-pci -> DEVICE_DELETED", time.monotonic() - t)
        self.assertNotIn("lab-vf1", lab.inner_peripherals("vm1"))
        # and back on its own driver, as libvirt's managed mode does
        self.assertEqual(lab.vfio_unbind(addr), "e1000e")
        self.assertEqual(truth.lspci_kernel_driver(lab, addr), "e1000e")
        self.unplug("n1")

    def test_usb_and_evdev_into_inner_vm(self):
        """usb-host and virtio-input-host-pci of real guest devices, by hand (issues 4, 5)."""
        lab = self.lab
        m = self.plug("usb-mouse", "m1")
        bus, dev = int(m.guest["busnum"]), int(m.guest["devnum"])
        t = time.monotonic()
        # QEMU's libusb may learn of the device a moment after the guest's udev (FACTS): that
        # error is tried again, as the daemon does, until QEMU knows it (10 s at most).
        delay, deadline = 0.005, time.monotonic() + 10
        while True:
            try:
                lab.inner_qmp("vm1", "device_add", driver="usb-host", hostbus=bus, hostaddr=dev, id="lab-uh1", bus="xhci.0")
                break
            except QMPError as e:
                self.assertIn("failed to find host usb device", e.desc)
                self.assertLess(time.monotonic(), deadline, "QEMU never found the guest's mouse: %s" % e.desc)
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        note("inner VM device_add usb-host", time.monotonic() - t)
        self.assertIn("lab-uh1", lab.inner_usb("vm1"))
        v = self.plug("virtio-keyboard-pci", "vk1")
        ev = v.guest["input"][0]
        lab.inner_qmp("vm1", "device_add", driver="virtio-input-host-pci", evdev="/dev/input/" + ev, bus="rp2", id="lab-ev1")
        self.assertEqual(lab.inner_peripherals("vm1").get("lab-ev1"), "virtio-input-host-pci")
        for id in ("lab-ev1", "lab-uh1"):
            r = lab.inner_qmp("vm1", "device_del", id=id,
                              wait_event={"event": "DEVICE_DELETED", "data": {"device": id}, "timeout": 20})
            self.assertIsNotNone(r["event"], "no DEVICE_DELETED for %s" % id)
        self.unplug("vk1")
        self.unplug("m1")


class Test3Inspect(LabCase):
    """`vhotplug inspect --json` in the guest against sysfs, lsusb -v, lspci -nnk and udev."""

    @classmethod
    def setUpClass(cls):
        cls.vhotplug = labkit.find_vhotplug()    # "vhotplug binary not found: run swift build"
        super().setUpClass()

    def plug_everything(self):
        self.plug("usb-mouse", "m1")
        self.plug("usb-kbd", "k1")
        self.plug("usb-storage", "d1")
        h = self.plug("usb-hub", "h1")
        self.plug("usb-mouse", "hm1", port=h.port + ".1")
        self.plug("e1000e", "n1")
        self.plug("virtio-keyboard-pci", "vk1")
        self.lab.settle()

    def inspect(self, *args):
        t = time.monotonic()
        rc, out, err = self.lab.vhotplug_cli(["inspect", "--json"] + list(args), binary=self.vhotplug)
        note("vhotplug inspect --json %s" % " ".join(args), time.monotonic() - t)
        self.assertEqual(rc, 0, "vhotplug inspect failed (rc %s):\n%s\n%s" % (rc, out[-2000:], err[-3000:]))
        try:
            records = json.loads(out)
        except ValueError as e:
            self.fail("inspect --json is not JSON (%s):\n%s" % (e, out[:2000]))
        self.assertIsInstance(records, list)
        by = {}
        for r in records:
            by[(r["subsystem"], r["sysName"])] = r
        return by

    def test_inspect_matches_guest_sysfs_lsusb_lspci(self):
        lab = self.lab
        self.plug_everything()
        records = self.inspect()
        usb = truth.usb_from_sysfs(lab)
        pci = truth.pci_from_sysfs(lab)
        inp = truth.input_from_sysfs(lab)
        kinds = truth.input_kinds_from_udev(lab, list(inp))
        lsusb = truth.lsusb_verbose(lab)
        lspci = truth.lspci_vmm(lab)
        bad = []
        # every device of the guest is reported, and nothing else
        for sub, names in (("usb", usb), ("pci", pci), ("input", inp)):
            got = {n for (s, n) in records if s == sub}
            if got != set(names):
                bad.append("%s: inspect lists %s, the guest has %s" % (sub, sorted(got), sorted(names)))
        for name, want in usb.items():
            r = records.get(("usb", name))
            if not r:
                continue
            a = r["attributes"]
            truth.compare("usb", name, a, want, mismatches=bad)
            lv = lsusb.get((want["bus"], want["devnum"]))
            if lv is None:
                bad.append("usb %s: lsusb -v does not list bus %d device %d" % (name, want["bus"], want["devnum"]))
            else:
                truth.compare("usb", name, a, lv, keys=("vendorId", "productId", "bcdDevice", "deviceClass",
                                                        "deviceSubclass", "deviceProtocol", "manufacturer",
                                                        "product", "serial", "interfaces"),
                              mismatches=bad, source="lsusb -v")
        for name, want in pci.items():
            r = records.get(("pci", name))
            if not r:
                continue
            a = r["attributes"]
            truth.compare("pci", name, a, want, mismatches=bad)
            lv = lspci.get(name, {})
            alt = {"vendorId": lv.get("VendorId"), "deviceId": lv.get("DeviceId"),
                   "subsystemVendorId": lv.get("SVendorId"), "subsystemDeviceId": lv.get("SDeviceId"),
                   "deviceClass": int(lv["ClassId"][:2], 16) if lv.get("ClassId") else None,
                   "deviceSubclass": int(lv["ClassId"][2:], 16) if lv.get("ClassId") else None,
                   "deviceProgIf": lv.get("ProgIf", 0), "driver": lv.get("Driver"),
                   "iommuGroup": int(lv["IOMMUGroup"]) if lv.get("IOMMUGroup") else want["iommuGroup"]}
            if a.get("vendorName") is not None:
                alt["vendorName"] = lv.get("VendorName")
            if a.get("deviceName") is not None:
                alt["deviceName"] = lv.get("DeviceName")
            truth.compare("pci", name, a, alt, mismatches=bad, source="lspci -nnk -vmm")
        for name, want in inp.items():
            r = records.get(("input", name))
            if not r:
                continue
            a = r["attributes"]
            want = dict(want)
            if a.get("pathTag") is None:
                want.pop("pathTag")
            want["kinds"] = kinds.get(name, [])
            truth.compare("input", name, a, want, mismatches=bad, source="sysfs/udev")
        self.assertEqual(bad, [], "inspect disagrees with the guest:\n  " + "\n  ".join(bad))
        # the plugged devices are there with the expected identities
        m = lab.plugged["m1"].guest["name"]
        self.assertEqual(records[("usb", m)]["attributes"]["vendorId"], "0627")
        self.assertTrue(records[("usb", lab.plugged["h1"].guest["name"])]["attributes"]["isHub"])
        self.assertFalse(records[("input", lab.plugged["vk1"].guest["input"][0])]["attributes"]["hasUSBAncestor"])
        self.assertTrue(records[("input", lab.plugged["m1"].guest["input"][0])]["attributes"]["hasUSBAncestor"])

    def test_inspect_decisions_with_lab_conf(self):
        lab = self.lab
        self.plug_everything()
        records = self.inspect("-c", labkit.LAB_CONF)
        g = {id: p.guest for id, p in lab.plugged.items()}

        def decision(sub, name):
            d = records[(sub, name)].get("decision")
            self.assertIsNotNone(d, "no decision for %s %s with -c" % (sub, name))
            return d
        for id in ("m1", "k1", "d1", "hm1"):
            self.assertEqual(decision("usb", g[id]["name"]).get("targetVm"), "vm1", "%s: %s" % (id, decision("usb", g[id]["name"])))
        hub = decision("usb", g["h1"]["name"])
        self.assertIsNone(hub.get("targetVm"))
        self.assertEqual(hub.get("reason"), "hub")
        self.assertEqual(decision("pci", g["n1"]["name"]).get("targetVm"), "vm1")
        self.assertIsNone(decision("pci", g["vk1"]["name"]).get("targetVm"))   # no PCI rule for virtio
        self.assertEqual(decision("input", g["vk1"]["input"][0]).get("targetVm"), "vm1")   # evdev passthrough
        usb_input = decision("input", g["m1"]["input"][0])
        self.assertIsNone(usb_input.get("targetVm"))
        self.assertEqual(usb_input.get("reason"), "usb-input")


class Test4Cleanup(unittest.TestCase):
    """A lab run ended by a signal leaves nothing behind; the next one starts at once."""

    CHILD = r"""
import sys, time
sys.path.insert(0, %r)
from labkit import Lab
with Lab(log=lambda m: None) as lab:
    print("READY %%d %%s" %% (lab.proc.pid, lab.rundir), flush=True)
    lab.plug("usb-mouse", "m1")
    print("PLUGGED", flush=True)
    time.sleep(600)
""" % HERE

    def run_and_signal(self, sig):
        t = time.monotonic()
        # a shell's background job ignores SIGINT, and a child would inherit that: Ctrl-C is SIG_DFL here
        child = subprocess.Popen([sys.executable, "-c", self.CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            line = _readline(child, 90)
            if not line.startswith("READY"):
                self.fail("child did not boot: %r %s" % (line, _stderr(child)))
            _, pid, rundir = line.split()
            pid = int(pid)
            line = _readline(child, 60)
            if line.strip() != "PLUGGED":
                self.fail("child did not plug: %r %s" % (line, _stderr(child)))
            child.send_signal(sig)
            rc = child.wait(30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            child.stdout.close()
            child.stderr.close()
        note("cleanup run (%s): boot + plug + stop" % signal.Signals(sig).name, time.monotonic() - t)
        self.assertNotEqual(rc, 0)
        self.assertFalse(_alive(pid), "outer QEMU %d still running after %s" % (pid, signal.Signals(sig).name))
        self.assertFalse(os.path.exists(rundir), "run dir %s left behind" % rundir)

    def test_sigterm(self):
        self.run_and_signal(signal.SIGTERM)

    def test_ctrl_c(self):
        self.run_and_signal(signal.SIGINT)


# ----------------------------------------------------------------------------
# The daemon (issue 4)

LAB_RULES = {
    # tools/lab/lab.conf's USB rules, as a dict the SIGHUP test can change
    "usbPassthrough": [{
        "description": "Lab: input devices and disks for vm1",
        "targetVm": "vm1",
        "allow": [
            {"interfaceClass": 3, "interfaceProtocol": 2, "description": "HID Mouse"},
            {"interfaceClass": 3, "interfaceProtocol": 1, "description": "HID Keyboard"},
            {"interfaceClass": 8, "description": "USB mass storage"},
        ],
    }],
    "vms": [
        {"name": "vm1", "type": "qemu", "socket": "/run/vhotplug-lab/vm1.qmp"},
        {"name": "vm2", "type": "qemu", "socket": "/run/vhotplug-lab/vm2.qmp"},
    ],
}


def evdev_id(lab, ev):
    """vhotplug's QEMU id of the guest's event node `ev`: vhp-evdev-inputM-eventN."""
    rc, out, _ = lab.run("readlink /sys/class/input/%s/device" % ev)
    assert rc == 0, "no input device above %s" % ev
    return "vhp-evdev-%s-%s" % (out.strip().rsplit("/", 1)[-1], ev)


def vhp_ids(peripherals):
    """vhotplug's ids among an inner VM's peripherals."""
    return {k for k in peripherals if k.startswith("vhp-")}


class DaemonCase(LabCase):
    """A class that runs the real daemon in the guest (no tests of its own).

    Its own boot: the daemon takes the devices the other classes plug. Each test
    starts a daemon and stops it; the log is appended to, `self.mark` is where
    this daemon's part begins. A failure shows the daemon log and the console."""

    vms = ("vm1",)

    @classmethod
    def setUpClass(cls):
        cls.vhotplug = labkit.find_vhotplug()    # "vhotplug binary not found: run swift build"
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        # the daemon's warnings and errors over the whole class, for a reader (not asserted)
        if cls.lab and not cls.lab._closed:
            try:
                text = cls.lab.vhotplug_log(timeout=5)
            except LabError:
                text = ""
            seen = {}
            for line in text.splitlines():
                m = re.search(r" (warning|error|critical) (vhotplug: .*)", line)
                if m and "reload rejected" not in line:      # test_7 sends a broken configuration on purpose
                    key = re.sub(r"[0-9a-fA-F]+", "#", m.group(0))
                    seen.setdefault(key, [0, m.group(0).strip()])[0] += 1
            if seen:
                print("\nvhotplug warnings/errors in the lab (whole log: .cache/lab/last-vhotplug.log):",
                      file=sys.stderr)
                for n, line in seen.values():
                    print("  %3dx %s" % (n, line[:300]), file=sys.stderr)
        super().tearDownClass()

    def setUp(self):
        self.mark = 0

    def tearDown(self):
        lab = self.lab
        try:
            super().tearDown()     # unplug everything; a running daemon detaches it
            if lab.vhotplug:
                try:
                    lab.wait_inner("vm1", lambda p: not vhp_ids(p), 15, "tearDown: the daemon detaches everything")
                except LabError as e:
                    print("tearDown: %s" % e, file=sys.stderr)
        finally:
            lab.stop_vhotplug()
            # whatever is left goes, so that the next test starts clean
            try:
                if lab.run("%s/innervm.sh status vm1" % labkit.GUEST_DIR)[0] != 0:
                    lab.vm_start("vm1")      # a test that failed between vm_stop and vm_start
                for id in sorted(vhp_ids(lab.inner_peripherals("vm1"))):
                    lab.inner_qmp("vm1", "device_del", id=id,
                                  wait_event={"event": "DEVICE_DELETED", "data": {"device": id}, "timeout": 10})
            except (LabError, QMPError) as e:
                print("tearDown: cannot clean vm1: %s" % e, file=sys.stderr)

    # -- helpers ---------------------------------------------------------------

    def start(self, *args, config=None, what=None, env=None):
        """Starts vhotplug in the guest (with -d: the log shows the QMP traffic and
        QEMU's "failed to find host usb device" retries) and waits for "listening"."""
        lab = self.lab
        if "-d" not in args:
            args += ("-d",)
        self.mark = lab.vhotplug_log_mark()
        mark = self.mark
        t = time.monotonic()
        lab.start_vhotplug(list(args), config=config, binary=self.vhotplug, timeout=30, env=env,
                           ready=lambda l: "; listening (" in l.vhotplug_log(since=mark))
        note(what or "daemon: start -> \"listening\" (spawn + first pass)", time.monotonic() - t)
        return mark

    def wait_idle(self, since):
        """Waits for the daemon's (-d) word that no device operation is in flight and no start
        or reload is under way, after offset `since` of the whole log: what the event logged
        before `since` started is over, and a check that something did not happen can follow."""
        return self.lab.wait_log(r"idle: no device operation in flight", since=since)

    def wait_idle_after(self, pattern, since=None):
        """wait_idle after the line matching `pattern` (from `since`, default this run)."""
        m = self.lab.wait_log(pattern, since=self.mark if since is None else since)
        return self.wait_idle(m.end())

    def log(self):
        return self.lab.vhotplug_log(since=self.mark)

    def diag(self):
        return "\n----- vhotplug log -----\n%s\n----- guest console (last lines) -----\n%s" % (
            self.log()[-6000:], self.lab.console_tail(25))

    def assertLog(self, pattern, since=None):
        """The daemon's log (this run, or from offset `since` of the whole log) matches."""
        text = self.lab.vhotplug_log(since=self.mark if since is None else since)
        m = re.search(pattern, text)
        if not m:
            self.fail("the daemon's log has no /%s/%s" % (pattern, self.diag()))
        return m

    def assertNotLog(self, pattern, since=None):
        text = self.lab.vhotplug_log(since=self.mark if since is None else since)
        m = re.search(pattern, text)
        if m:
            self.fail("the daemon's log has %r, unexpected%s" % (m.group(0), self.diag()))

    def vhp(self):
        return vhp_ids(self.lab.inner_peripherals("vm1"))



class Test5Daemon(DaemonCase):
    """`vhotplug -c lab.conf` as the guest's host daemon: USB devices plugged into
    the guest end up in the inner VM vm1 (seen through its observer monitor), and
    leave it on unplug; VM restart, daemon restart, coldplug with -a, SIGHUP."""

    def plug_attached(self, kind, id, what=None, **kw):
        """Plugs a device the rules send to vm1; waits for vhotplug's id in vm1.
        Returns (Plugged, end-to-end seconds, the daemon's logged milliseconds)."""
        lab = self.lab
        mark = lab.vhotplug_log_mark()
        before = self.vhp()
        t = time.monotonic()
        p = lab.plug(kind, id, wait=False, **kw)
        per = lab.wait_inner("vm1", lambda per: vhp_ids(per) - before, 20,
                             "vhotplug attaches %s %s to vm1" % (kind, id), interval=0.02)
        e2e = time.monotonic() - t
        lab.wait_plugged(p)
        name = p.guest["name"]
        self.assertEqual(vhp_ids(per) - before, {"vhp-usb-" + name}, self.diag())
        m = lab.wait_log(r"usb %s [0-9a-f]{4}:[0-9a-f]{4}[^\n]*: attached to vm1 as vhp-usb-%s in ([0-9.]+) ms"
                         % (re.escape(name), re.escape(name)), since=mark, timeout=10)
        ms = float(m.group(1))
        what = what or kind
        note("daemon: plug %s -> in vm1 (end to end)" % what, e2e)
        note("daemon: plug %s -> attached (its log, ms/1000)" % what, ms / 1000)
        print("\n  %s %s: plugged -> vhp-usb-%s in vm1 in %.2f s end to end; the daemon logs %.1f ms"
              % (kind, name, name, e2e, ms), file=sys.stderr)
        return p, e2e, ms

    def unplug_detached(self, id, names):
        """Unplugs; waits until vm1 has none of vhp-usb-<names> and the log says detached."""
        lab = self.lab
        mark = lab.vhotplug_log_mark()
        kind = lab.plugged[id].kind
        ids = {"vhp-usb-" + n for n in names}
        t = time.monotonic()
        lab.unplug(id)
        lab.wait_inner("vm1", lambda per: not (ids & set(per)), 20, "vhotplug detaches %s" % sorted(ids), interval=0.02)
        e2e = time.monotonic() - t
        mss = []
        for n in names:
            lab.wait_log(r"usb %s [^\n]*: unplugged" % re.escape(n), since=mark, timeout=10)
            m = lab.wait_log(r"usb %s [^\n]*: detached from vm1 \(vhp-usb-%s\) in ([0-9.]+) ms"
                             % (re.escape(n), re.escape(n)), since=mark, timeout=10)
            mss.append(float(m.group(1)))
        note("daemon: unplug %s -> gone from vm1 (end to end)" % kind, e2e)
        note("daemon: unplug %s -> detached (its log, ms/1000)" % kind, max(mss) / 1000)
        return e2e, mss

    def assertInnerUSB(self, vhp_id, product):
        info = self.lab.inner_usb("vm1")
        self.assertRegex(info, r"Product %s, ID: %s\b" % (re.escape(product), re.escape(vhp_id)),
                         "vm1's `info usb` does not show %s as %s:\n%s%s" % (product, vhp_id, info, self.diag()))

    def assertGuestReleased(self, p):
        """The guest's own driver let go of the device: the VM has it."""
        now = self.lab.guest_devices()
        name = p.guest["name"]
        held = [k for k, v in now["input"].items() if v.get("usb") == name] + \
               [k for k, v in now["block"].items() if v.get("usb") == name]
        self.assertEqual(held, [], "the guest still has %s's event node or disk%s" % (name, self.diag()))

    # -- scenarios ---------------------------------------------------------------

    def test_1_mouse_plug_unplug_replug(self):
        self.start()
        self.assertLog(r"vhotplug ok: [^\n]*following \d+ devices; listening \(udev events\)")
        p, e2e, ms = self.plug_attached("usb-mouse", "m1", what="usb-mouse")
        name = p.guest["name"]
        self.assertLog(r'usb %s 0627:0001 [^\n]*: vm1 \(rule set 0 "Lab: input devices and disks for vm1", '
                       r'allow\[0\] "HID Mouse"\)' % re.escape(name))
        self.assertInnerUSB("vhp-usb-" + name, "QEMU USB Mouse")
        self.assertGuestReleased(p)
        self.unplug_detached("m1", [name])
        self.assertEqual(self.vhp(), set())
        # the same mouse again, on the same port: a new address, attached again
        p2, _, _ = self.plug_attached("usb-mouse", "m2", port=p.port, what="usb-mouse (replug)")
        self.assertEqual(p2.guest["name"], name)
        self.assertNotEqual(p2.guest["devnum"], p.guest["devnum"])
        self.unplug_detached("m2", [name])
        self.assertNotLog(r"(error|warning) [^\n]*usb %s " % re.escape(name))

    def test_2_hub_is_not_passed_through_the_mouse_behind_it_is(self):
        self.start()
        h = self.lab.plug("usb-hub", "h1")
        hub = h.guest["name"]
        self.lab.wait_log(r"usb %s 0409:55aa [^\n]*: none: USB hubs are never passed through" % re.escape(hub),
                          since=self.mark, timeout=10)
        p, _, _ = self.plug_attached("usb-mouse", "hm1", port=h.port + ".1", what="usb-mouse behind a hub")
        self.assertEqual(p.guest["name"], hub + ".1")
        self.assertEqual(self.vhp(), {"vhp-usb-%s.1" % hub})
        self.assertLog(r'usb %s\.1 0627:0001 [^\n]*: vm1 \(rule set 0 [^\n]*allow\[0\] "HID Mouse"\)' % re.escape(hub))
        self.assertNotLog(r"usb %s [^\n]*attached" % re.escape(hub))
        # unplugging the hub takes the mouse with it
        self.unplug_detached("h1", [hub + ".1"])

    def test_3_keyboard_and_disk(self):
        self.start()
        k, _, _ = self.plug_attached("usb-kbd", "k1")
        self.assertLog(r'usb %s 0627:0001 [^\n]*: vm1 \(rule set 0 [^\n]*allow\[1\] "HID Keyboard"\)'
                       % re.escape(k.guest["name"]))
        self.assertInnerUSB("vhp-usb-" + k.guest["name"], "QEMU USB Keyboard")
        d, _, _ = self.plug_attached("usb-storage", "d1")
        disk = d.guest["name"]
        self.assertTrue(disk.startswith("2-"), "usb-storage is SuperSpeed (bus 2): %s" % disk)
        self.assertLog(r'usb %s 46f4:0001 [^\n]*: vm1 \(rule set 0 [^\n]*allow\[2\] "USB mass storage"\)'
                       % re.escape(disk))
        self.assertInnerUSB("vhp-usb-" + disk, "QEMU USB HARDDRIVE")
        self.assertGuestReleased(k)
        self.assertGuestReleased(d)
        self.unplug_detached("k1", [k.guest["name"]])
        self.unplug_detached("d1", [disk])

    def test_4_vm_restart_gets_its_device_back(self):
        lab = self.lab
        self.start()
        p, _, _ = self.plug_attached("usb-mouse", "m1")
        name, vid = p.guest["name"], "vhp-usb-" + p.guest["name"]
        t = time.monotonic()
        lab.vm_stop("vm1")
        lab.wait_log(r"VM vm1: socket removed", since=self.mark, timeout=10)
        mark = lab.vhotplug_log_mark()
        t_start = time.monotonic()
        lab.vm_start("vm1")         # until its observer monitor answers
        t_up = time.monotonic()
        lab.wait_inner("vm1", lambda per: vid in per, 20, "vhotplug gives %s back to the restarted vm1" % vid,
                       interval=0.02)
        t_back = time.monotonic()
        m = lab.wait_log(r"usb %s [^\n]*: attached to vm1 as %s in ([0-9.]+) ms" % (re.escape(name), re.escape(vid)),
                         since=mark, timeout=10)
        self.assertLog(r"VM vm1: socket appeared; giving it back its devices", since=mark)
        note("inner VM restart (stop + start until QMP answers)", t_up - t)
        note("daemon: VM start -> device back in vm1 (from innervm.sh start)", t_back - t_start)
        note("daemon: VM QMP answers -> device back in vm1", t_back - t_up)
        note("daemon: socket appeared -> re-attached (its log, ms/1000)", float(m.group(1)) / 1000)
        print("\n  vm1 restarted in %.2f s; %s back %.2f s after `innervm.sh start`, daemon logs %s ms"
              % (t_up - t, vid, t_back - t_start, m.group(1)), file=sys.stderr)
        # no replug: the guest still has the device at the same address
        self.assertEqual(lab.guest_devices()["usb"][name]["devnum"], p.guest["devnum"])
        self.assertInnerUSB(vid, "QEMU USB Mouse")
        self.unplug_detached("m1", [name])

    def test_5_daemon_restart_finds_its_devices_and_removes_stale_ones(self):
        lab = self.lab
        self.start()
        p, _, _ = self.plug_attached("usb-mouse", "m1")
        name, vid = p.guest["name"], "vhp-usb-" + p.guest["name"]
        self.assertEqual(lab.stop_vhotplug(), 0, self.diag())
        self.assertLog(r"stopping \(signal 15\); attached devices stay with their VMs")
        self.assertEqual(self.vhp(), {vid})
        # a new daemon finds it, and does not attach it again (-d shows its QMP traffic)
        self.start("-a", what="daemon: restart with a device attached -> \"listening\"")
        self.wait_idle_after(r"usb %s [^\n]*: found in VM vm1 as %s" % (re.escape(name), re.escape(vid)))
        self.assertNotLog(r'"execute":"device_add"')
        self.assertNotLog(r"attached to vm1")
        self.assertEqual(self.vhp(), {vid})
        # and it is the new daemon that detaches it on unplug
        self.unplug_detached("m1", [name])
        # a device unplugged while no daemon runs leaves a stale id: the next daemon removes it
        p, _, _ = self.plug_attached("usb-mouse", "m2")
        name, vid = p.guest["name"], "vhp-usb-" + p.guest["name"]
        self.assertEqual(lab.stop_vhotplug(), 0, self.diag())
        lab.unplug("m2")
        self.assertIn(vid, self.vhp(), "QEMU keeps a usb-host whose host device left")
        self.start()
        self.assertLog(r"VM vm1: removing stale %s \(its device is gone\)" % re.escape(vid))
        lab.wait_inner("vm1", lambda per: vid not in per, 10, "stale %s removed" % vid)

    def test_6_coldplug_only_with_a(self):
        lab = self.lab
        plugged = [lab.plug("usb-mouse", "m1"), lab.plug("usb-kbd", "k1"), lab.plug("usb-storage", "d1")]
        want = {"vhp-usb-" + p.guest["name"] for p in plugged}
        # without -a connected devices stay where they are
        self.start()
        self.wait_idle_after(r"; listening \(")
        self.assertEqual(self.vhp(), set())
        self.assertNotLog(r"attached to vm1")
        lab.stop_vhotplug()
        # with -a, each one the rules assign is attached at start
        self.mark = lab.vhotplug_log_mark()
        t = time.monotonic()
        lab.start_vhotplug(["-a", "-d"], binary=self.vhotplug)
        lab.wait_inner("vm1", lambda per: want <= vhp_ids(per), 30, "vhotplug -a attaches %s" % sorted(want),
                       interval=0.02)
        took = time.monotonic() - t
        self.assertEqual(self.vhp(), want)
        logged = [float(x) for x in re.findall(r": attached to vm1 as vhp-usb-\S+ in ([0-9.]+) ms", self.log())]
        self.assertEqual(len(logged), 3, self.diag())
        self.assertLog(r"following \d+ devices; listening")
        note("daemon -a: start -> 3 connected devices in vm1", took)
        note("daemon -a: last attach (its log, ms/1000, from its first pass)", max(logged) / 1000)
        print("\n  vhotplug -a: 3 connected devices in vm1 %.2f s after the start; logged %s ms"
              % (took, ", ".join("%g" % x for x in logged)), file=sys.stderr)

    def test_7_sighup_reload(self):
        lab = self.lab
        self.start(config=LAB_RULES)
        p, _, _ = self.plug_attached("usb-mouse", "m1")
        name, vid = p.guest["name"], "vhp-usb-" + p.guest["name"]
        conf = "/run/vhotplug-lab/vhotplug.conf"
        # the rules no longer take mice: the mouse leaves vm1
        no_mouse = json.loads(json.dumps(LAB_RULES))
        no_mouse["usbPassthrough"][0]["allow"].pop(0)
        mark = lab.vhotplug_log_mark()
        lab.write_file(conf, json.dumps(no_mouse))
        lab.signal_vhotplug(signal.SIGHUP)
        lab.wait_log(r"configuration reloaded", since=mark, timeout=10)
        lab.wait_inner("vm1", lambda per: vid not in per, 10, "reload: the mouse leaves vm1")
        lab.wait_log(r"usb %s [^\n]*: detached from vm1" % re.escape(name), since=mark, timeout=10)
        # a broken configuration is rejected; nothing moves
        mark = lab.vhotplug_log_mark()
        lab.write_file(conf, '{"usbPassthrough": [{"targetVm": "nowhere"}], "vms": [')
        lab.signal_vhotplug(signal.SIGHUP)
        lab.wait_log(r"reload rejected, the previous configuration stays in force", since=mark, timeout=10)
        self.assertTrue(lab.vhotplug_running(), self.diag())
        # the rules take mice again: back in vm1
        mark = lab.vhotplug_log_mark()
        lab.write_file(conf, json.dumps(LAB_RULES))
        lab.signal_vhotplug(signal.SIGHUP)
        lab.wait_inner("vm1", lambda per: vid in per, 10, "reload: the mouse is back in vm1")
        lab.wait_log(r"usb %s [^\n]*: attached to vm1 as %s" % (re.escape(name), re.escape(vid)), since=mark, timeout=10)

    def test_8_without_udevd_kernel_events(self):
        """No udevd on the host: the daemon says so once, follows the kernel's events, and
        attaches by the device's node what QEMU's libusb cannot find.

        QEMU's libusb learns of new devices from udevd too: once it has started (any
        earlier usb-host in that QEMU; here a failing one primes it), `usb-host
        hostbus/hostaddr` of a device plugged while no udevd runs fails with "failed to
        find host usb device" however long one waits. `hostdevice=/dev/bus/usb/BBB/DDD`
        works: after its bounded retries the daemon attaches by the node."""
        lab = self.lab
        with contextlib.suppress(QMPError):
            lab.inner_qmp("vm1", "device_add", driver="usb-host", id="prime", hostbus=1, hostaddr=127)
        # udevd leaves its control socket behind when it exits; a host without udevd has none
        lab.check("udevadm control --exit && rm -f /run/udev/control && ! pidof systemd-udevd")
        try:
            self.start()
            self.assertLog(r"warning vhotplug: [^\n]*udevd is not running: listening to kernel events directly")
            self.assertLog(r"following \d+ devices; listening \(kernel events\)")
            mark = lab.vhotplug_log_mark()
            p = lab.plug("usb-mouse", "m1")
            name = p.guest["name"]
            lab.wait_log(r'usb %s 0627:0001 [^\n]*: vm1 \(rule set 0 [^\n]*allow\[0\] "HID Mouse"\)' % re.escape(name),
                         since=mark, timeout=10)
            lab.wait_log(r"VM vm1: QEMU's USB list lacks %s; attaching by its node /dev/bus/usb/\d{3}/\d{3}" % re.escape(name),
                         since=mark, timeout=20)
            lab.wait_log(r"usb %s [^\n]*: attached to vm1 as vhp-usb-%s in [0-9.]+ ms" % (re.escape(name), re.escape(name)),
                         since=mark, timeout=20)
            lab.wait_inner("vm1", lambda per: "vhp-usb-" + name in per, 10, "kernel events: mouse in vm1")
            self.assertInnerUSB("vhp-usb-" + name, "QEMU USB Mouse")
            self.unplug_detached("m1", [name])
        finally:
            lab.check("/lib/systemd/systemd-udevd --daemon >/dev/null 2>&1 && udevadm settle --timeout=30 "
                      "&& test -S /run/udev/control")

    def test_9_lost_events_are_found_in_sysfs(self):
        """The kernel drops uevents when the daemon's event socket is full (a storm while
        it is busy or stopped; here a small socket, VHOTPLUG_UEVENT_BUFFER, and a stopped
        daemon): the mouse's unplug and the keyboard's plug are lost. The daemon learns of
        the loss (ENOBUFS), handles what was queued before it, then reads sysfs again: the
        mouse leaves vm1 and the keyboard goes in."""
        lab = self.lab
        self.start(env={"VHOTPLUG_UEVENT_BUFFER": "16384"})
        self.assertNotLog(r"events were lost")
        p, _, _ = self.plug_attached("usb-mouse", "m1")
        mouse = p.guest["name"]
        lab.signal_vhotplug(signal.SIGSTOP)
        try:
            # 40 `change` uevents of a root hub (udevd forwards each): far more than the
            # socket's 32 KiB hold, so whatever comes next is dropped by the kernel.
            lab.check("hub=$(ls -d /sys/bus/usb/devices/usb* | head -n 1) && "
                      "for i in $(seq 40); do echo change > $hub/uevent; done && udevadm settle --timeout=120",
                      timeout=180)
            mark = lab.vhotplug_log_mark()
            lab.unplug("m1")
            k = lab.plug("usb-kbd", "k1")
            lab.settle()
        finally:
            lab.signal_vhotplug(signal.SIGCONT)
        kbd = k.guest["name"]
        lab.wait_log(r"warning vhotplug: [^\n]*device events were lost \(the event socket's 16 KiB receive buffer "
                     r"was full; VHOTPLUG_UEVENT_BUFFER sets it\): reading the connected devices again", since=mark, timeout=60)
        lab.wait_log(r"usb %s [^\n]*: unplugged" % re.escape(mouse), since=mark, timeout=20)
        lab.wait_log(r"usb %s [^\n]*: detached from vm1 \(vhp-usb-%s\)" % (re.escape(mouse), re.escape(mouse)),
                     since=mark, timeout=20)
        lab.wait_log(r"usb %s 0627:0001 [^\n]*: attached to vm1 as vhp-usb-%s" % (re.escape(kbd), re.escape(kbd)),
                     since=mark, timeout=20)
        lab.wait_inner("vm1", lambda per: vhp_ids(per) == {"vhp-usb-" + kbd}, 20,
                       "after the rescan: the keyboard in vm1, the mouse gone")
        self.unplug_detached("k1", [kbd])

# ----------------------------------------------------------------------------
# The daemon with PCI (vfio-pci) and evdev passthrough (issue 5)

PCI_RULES = {
    # tools/lab/lab.conf's PCI and evdev rules (no USB rules: USB is Test5Daemon's)
    "pciPassthrough": [{
        "description": "Lab: the e1000e NIC for vm1",
        "targetVm": "vm1",
        "allow": [{"vendorId": "8086", "deviceId": "10d3", "description": "Intel 82574L (QEMU e1000e)"}],
    }],
    "evdevPassthrough": {"pcieBusPrefix": "rp", "targetVm": "vm1"},
    "vms": LAB_RULES["vms"],
}
# The same without the PCI rule: the e1000e goes nowhere.
NO_PCI_RULES = {k: v for k, v in PCI_RULES.items() if k != "pciPassthrough"}
GUEST_CONF = labkit.GUEST_RUN + "/vhotplug.conf"
VFIO_RECORDS = "/run/vhotplug/vfio"     # the daemon's persistent VFIO records (in the guest)
PCI_ATTACH_DEADLINE = 90                # s: QEMU realizing vfio-pci under TCG takes ~5 s idle, far more under load


def pci_id(address):
    return "vhp-pci-" + address.replace(":", "-")


class Test6DaemonPCIEvdev(DaemonCase):
    """The daemon with PCI and evdev passthrough (issue 5), `vhotplug -c CONF -d` in the
    guest: an e1000e hot-plugged into the guest goes to vfio-pci and into vm1 (query-pci),
    leaves it on SIGHUP (back on e1000e) and on unplug; a virtio keyboard goes to vm1 as
    virtio-input-host-pci; a restarted daemon finds the NIC in vm1; a SIGKILLed daemon's
    VFIO record lets the next one give the NIC back to e1000e."""

    def setUp(self):
        super().setUp()
        # no VFIO record of an earlier test
        self.lab.check("rm -rf %s" % VFIO_RECORDS)

    # -- helpers ---------------------------------------------------------------

    def driver(self, address):
        return self.lab.check("d=/sys/bus/pci/devices/%s; [ -e $d/driver ] && basename $(readlink $d/driver) || true"
                              % address).strip()

    def plug_nic(self, id="n1", what="e1000e"):
        """Plugs an e1000e into the guest; waits until vhotplug has it in vm1.
        Returns (Plugged, its address, vhotplug's id in vm1)."""
        lab = self.lab
        mark = lab.vhotplug_log_mark()
        before = self.vhp()
        t = time.monotonic()
        p = lab.plug("e1000e", id, wait=False)
        per = lab.wait_inner("vm1", lambda per: {i for i in vhp_ids(per) - before if i.startswith("vhp-pci-")},
                             PCI_ATTACH_DEADLINE, "vhotplug attaches the e1000e %s to vm1" % id, interval=0.05)
        e2e = time.monotonic() - t
        lab.wait_plugged(p)
        addr = p.guest["name"]
        vid = pci_id(addr)
        self.assertEqual(vhp_ids(per) - before, {vid}, self.diag())
        self.assertEqual(per[vid], "vfio-pci")
        key = r"pci %s 8086:10d3[^\n]*: " % re.escape(addr)
        self.assertLog(key + r'vm1 \(rule set 0 "Lab: the e1000e NIC for vm1", allow\[0\] "Intel 82574L', since=mark)
        bound = lab.wait_log(key + r"on vfio-pci \(IOMMU group (\d+), 1 device\) in ([0-9.]+) ms", since=mark,
                             timeout=10)
        attached = lab.wait_log(key + r"attached to vm1 as %s in ([0-9.]+) ms" % re.escape(vid), since=mark,
                                timeout=10)
        sysfs_ms, total_ms = float(bound.group(2)), float(attached.group(1))
        note("daemon: %s add event -> on vfio-pci (sysfs rebind, its log)" % what, sysfs_ms / 1000)
        note("daemon: %s vfio-pci -> QEMU's reply (QMP, its log)" % what, (total_ms - sysfs_ms) / 1000)
        note("daemon: %s add event -> attached (its log)" % what, total_ms / 1000)
        note("daemon: plug %s -> in vm1 (end to end)" % what, e2e)
        print("\n  %s %s: in vm1 as %s %.2f s after the plug; the daemon: sysfs %.0f ms + QMP %.0f ms = %.0f ms"
              % (what, addr, vid, e2e, sysfs_ms, total_ms - sysfs_ms, total_ms), file=sys.stderr)
        return p, addr, vid, int(bound.group(1))

    def assertInVM1(self, vid, vendor, device, wait=0):
        """vm1's query-pci has `vid` with these IDs behind one of its pcie-root-ports; returns the port.
        wait: seconds to wait for it in query-pci (a VM just started shows nothing behind its root
        ports until its firmware has numbered the buses)."""
        if wait:
            self.lab.wait_for(lambda: any(d["qdev_id"] == vid for d in self.lab.inner_pci("vm1")), wait,
                              "%s in vm1's query-pci" % vid, interval=0.1)
        pci = [d for d in self.lab.inner_pci("vm1") if d["qdev_id"] == vid]
        self.assertEqual(len(pci), 1, "vm1's query-pci has %d entries for %s:\n%s%s"
                         % (len(pci), vid, self.lab.inner_pci("vm1"), self.diag()))
        self.assertEqual((pci[0]["vendor"], pci[0]["device"]), (vendor, device))
        per = self.lab.inner_peripherals("vm1")
        self.assertEqual(per.get(pci[0]["parent"]), "pcie-root-port", "%s is behind %r" % (vid, pci[0]["parent"]))
        return pci[0]["parent"]

    def assertNotInVM1(self, vid):
        self.assertEqual([d for d in self.lab.inner_pci("vm1") if d["qdev_id"] == vid], [])
        self.assertNotIn(vid, self.lab.inner_peripherals("vm1"))

    def assertOnVFIO(self, addr, group):
        self.assertEqual(self.driver(addr), "vfio-pci", self.diag())
        self.assertEqual(truth.lspci_kernel_driver(self.lab, addr), "vfio-pci")
        self.lab.check("test -c /dev/vfio/%d" % group)

    def assertBackOnE1000e(self, addr):
        self.assertEqual(self.driver(addr), "e1000e", self.diag())
        self.assertEqual(self.lab.check("cat /sys/bus/pci/devices/%s/driver_override" % addr).strip(), "(null)")

    def reload(self, config):
        mark = self.lab.vhotplug_log_mark()
        self.lab.write_file(GUEST_CONF, json.dumps(config, indent=2))   # as start_vhotplug writes it
        self.lab.signal_vhotplug(signal.SIGHUP)
        self.lab.wait_log(r"configuration reloaded", since=mark, timeout=10)
        return mark

    # -- scenarios ---------------------------------------------------------------

    def test_1_e1000e_to_vm1_then_unplugged_from_the_guest(self):
        lab = self.lab
        self.start(config=PCI_RULES)
        p, addr, vid, group = self.plug_nic()
        port = self.assertInVM1(vid, 0x8086, 0x10d3)
        self.assertTrue(port.startswith(("rp", "ep")), port)
        self.assertOnVFIO(addr, group)
        # unplugged from the guest: it leaves vm1
        mark = lab.vhotplug_log_mark()
        t = time.monotonic()
        lab.unplug("n1")
        lab.wait_inner("vm1", lambda per: vid not in per, 20, "the e1000e leaves vm1", interval=0.02)
        note("daemon: unplug e1000e -> gone from vm1 (end to end)", time.monotonic() - t)
        lab.wait_log(r"pci %s [^\n]*: unplugged" % re.escape(addr), since=mark, timeout=10)
        lab.wait_log(r"pci %s [^\n]*: detached from vm1 \(%s\)" % (re.escape(addr), re.escape(vid)), since=mark,
                     timeout=20)
        self.assertNotInVM1(vid)
        self.assertNotIn(addr, lab.guest_devices()["pci"])
        self.assertNotLog(r"(error|critical) [^\n]*pci %s" % re.escape(addr))

    def test_2_e1000e_sighup_without_its_rule_goes_back_to_e1000e(self):
        lab = self.lab
        self.start(config=PCI_RULES)
        p, addr, vid, group = self.plug_nic(what="e1000e (SIGHUP)")
        self.assertInVM1(vid, 0x8086, 0x10d3)
        t = time.monotonic()
        mark = self.reload(NO_PCI_RULES)
        lab.wait_inner("vm1", lambda per: vid not in per, 20, "reload: the e1000e leaves vm1", interval=0.02)
        lab.wait_log(r"pci %s [^\n]*: detached from vm1 \(%s\)" % (re.escape(addr), re.escape(vid)), since=mark,
                     timeout=20)
        lab.wait_log(r"pci %s [^\n]*: back on its host driver \(%s -> e1000e\)" % (re.escape(addr), re.escape(addr)),
                     since=mark, timeout=30)
        note("daemon: SIGHUP -> e1000e out of vm1 and back on e1000e", time.monotonic() - t)
        self.assertNotInVM1(vid)
        self.assertBackOnE1000e(addr)
        self.assertNotLog(r"(error|critical) [^\n]*pci %s" % re.escape(addr))
        # the rule again: back to vfio-pci and vm1
        mark = self.reload(PCI_RULES)
        lab.wait_inner("vm1", lambda per: vid in per, PCI_ATTACH_DEADLINE, "reload: the e1000e back in vm1")
        lab.wait_log(r"pci %s [^\n]*: attached to vm1 as %s" % (re.escape(addr), re.escape(vid)), since=mark,
                     timeout=10)
        self.assertInVM1(vid, 0x8086, 0x10d3)

    def test_3_virtio_keyboard_evdev_to_vm1(self):
        lab = self.lab
        self.start(config=PCI_RULES)
        mark = lab.vhotplug_log_mark()
        before = self.vhp()
        t = time.monotonic()
        p = lab.plug("virtio-keyboard-pci", "vk1", wait=False)
        per = lab.wait_inner("vm1", lambda per: {i for i in vhp_ids(per) - before if i.startswith("vhp-evdev-")}, 20,
                             "vhotplug attaches the virtio keyboard's event device to vm1", interval=0.02)
        e2e = time.monotonic() - t
        lab.wait_plugged(p)
        ev = p.guest["input"][0]
        vid = evdev_id(lab, ev)
        self.assertEqual(vhp_ids(per) - before, {vid}, self.diag())
        self.assertEqual(per[vid], "virtio-input-host-pci")
        self.assertEqual(lab.inner_qmp("vm1", "qom-get", path="/machine/peripheral/" + vid, property="evdev"),
                         "/dev/input/" + ev)
        port = self.assertInVM1(vid, 0x1af4, 0x1052)
        self.assertTrue(port.startswith("rp"), "%s is on %s, not a root port starting with pcieBusPrefix rp"
                        % (vid, port))
        key = r'input %s "[^"\n]*": ' % re.escape(ev)
        self.assertLog(key + r"vm1 \(", since=mark)
        m = lab.wait_log(key + r"attached to vm1 as %s in ([0-9.]+) ms" % re.escape(vid), since=mark, timeout=10)
        note("daemon: plug virtio keyboard -> evdev in vm1 (end to end)", e2e)
        note("daemon: input add event -> attached (its log)", float(m.group(1)) / 1000)
        # its PCI function goes nowhere (no PCI rule for virtio) and stays on virtio-pci
        self.assertEqual(self.driver(p.guest["name"]), "virtio-pci")
        # unplugged from the guest: removed from vm1
        mark = lab.vhotplug_log_mark()
        t = time.monotonic()
        lab.unplug("vk1")
        lab.wait_inner("vm1", lambda per: vid not in per, 20, "the evdev device leaves vm1", interval=0.02)
        note("daemon: unplug virtio keyboard -> gone from vm1 (end to end)", time.monotonic() - t)
        lab.wait_log(key + r"detached from vm1 \(%s\)" % re.escape(vid), since=mark, timeout=10)
        self.assertNotInVM1(vid)

    def test_4_restarted_daemon_finds_the_e1000e_in_vm1(self):
        lab = self.lab
        self.start(config=PCI_RULES)
        p, addr, vid, group = self.plug_nic(what="e1000e (restart)")
        self.assertEqual(lab.stop_vhotplug(), 0, self.diag())
        self.assertLog(r"stopping \(signal 15\); attached devices stay with their VMs")
        self.assertInVM1(vid, 0x8086, 0x10d3)
        self.assertOnVFIO(addr, group)
        # a new daemon (-a: it would attach what the rules send) finds it by its host address
        self.start("-a", config=PCI_RULES, what="daemon: restart with the e1000e in vm1 -> \"listening\"")
        self.assertLog(r"pci %s [^\n]*: found in VM vm1 as %s" % (re.escape(addr), re.escape(vid)))
        # a reload reconciles every device again: still no second attach
        self.wait_idle_after(r"configuration reloaded", since=self.reload(PCI_RULES))
        self.assertNotLog(r'"execute":"device_add"')
        self.assertNotLog(r"attached to vm1")
        self.assertInVM1(vid, 0x8086, 0x10d3)
        self.assertOnVFIO(addr, group)
        # and the new daemon detaches it on unplug
        mark = lab.vhotplug_log_mark()
        lab.unplug("n1")
        lab.wait_inner("vm1", lambda per: vid not in per, 20, "the e1000e leaves vm1")
        lab.wait_log(r"pci %s [^\n]*: detached from vm1 \(%s\)" % (re.escape(addr), re.escape(vid)), since=mark,
                     timeout=20)

    def test_5_sigkilled_daemon_its_record_gives_the_e1000e_back(self):
        """Persistent VFIO records: a daemon killed while the NIC is on vfio-pci and in vm1;
        vm1 stops; the next daemon keeps the NIC on vfio-pci while the rules still want it,
        and gives it back to e1000e once they do not."""
        lab = self.lab
        self.start(config=PCI_RULES)
        p, addr, vid, group = self.plug_nic(what="e1000e (SIGKILL)")
        record = json.loads(lab.check("cat %s/%s.json" % (VFIO_RECORDS, addr)))
        self.assertEqual(record["device"], addr)
        self.assertEqual(record["group"], group)
        self.assertEqual([(m["address"], m.get("originalDriver")) for m in record["members"]], [(addr, "e1000e")])
        self.assertEqual(lab.stop_vhotplug(sig=signal.SIGKILL), -signal.SIGKILL)
        lab.vm_stop("vm1")
        self.assertEqual(self.driver(addr), "vfio-pci")
        # still wanted (vm1 will take it when it starts): it stays on vfio-pci, its record kept
        self.start(config=PCI_RULES, what="daemon: start with a VFIO record, device wanted")
        self.assertLog(r"pci %s [^\n]*: on vfio-pci from an earlier run" % re.escape(addr))
        self.assertLog(r"pci %s [^\n]*: VM vm1 is not running; waiting for it" % re.escape(addr))
        self.assertEqual(self.driver(addr), "vfio-pci")
        lab.check("test -f %s/%s.json" % (VFIO_RECORDS, addr))
        self.assertEqual(lab.stop_vhotplug(), 0, self.diag())
        # no rule sends it anywhere now: back on e1000e, the record gone
        t = time.monotonic()
        self.start(config=NO_PCI_RULES, what="daemon: start with a VFIO record, device unwanted")
        lab.wait_log(r"pci %s [^\n]*: back on its host driver \(%s -> e1000e\)" % (re.escape(addr), re.escape(addr)),
                     since=self.mark, timeout=30)
        note("daemon: start -> recorded e1000e back on e1000e", time.monotonic() - t)
        self.assertLog(r"pci %s [^\n]*: on vfio-pci from an earlier run" % re.escape(addr))
        self.assertBackOnE1000e(addr)
        lab.check("! test -e %s/%s.json" % (VFIO_RECORDS, addr))
        self.assertNotLog(r"(error|critical) [^\n]*pci %s" % re.escape(addr))
        # A daemon killed between the NIC's unbind and its probe (a bind cut short): on no driver,
        # driver_override vfio-pci, its record there. The next daemon gives it back to e1000e
        # (before, it deleted the record as stale and the NIC stayed with no driver).
        self.assertEqual(lab.stop_vhotplug(), 0, self.diag())
        lab.write_file("%s/%s.json" % (VFIO_RECORDS, addr), json.dumps(record))
        dev = "/sys/bus/pci/devices/%s" % addr
        lab.check("echo vfio-pci > %s/driver_override && echo %s > %s/driver/unbind" % (dev, addr, dev))
        self.assertEqual(self.driver(addr), "")
        self.start(config=NO_PCI_RULES, what="daemon: start with the record of a bind cut short")
        lab.wait_log(r"pci %s: its VFIO record is of a bind or give-back cut short \(%s on no driver\): IOMMU group %d given back"
                     % (re.escape(addr), re.escape(addr), group), since=self.mark, timeout=30)
        self.assertBackOnE1000e(addr)
        lab.check("! test -e %s/%s.json" % (VFIO_RECORDS, addr))
        lab.vm_start("vm1")

    def test_6_vm_restart_gets_the_e1000e_back(self):
        """vm1 restarts: the NIC stays on vfio-pci meanwhile and goes back into the new vm1."""
        lab = self.lab
        self.start(config=PCI_RULES)
        p, addr, vid, group = self.plug_nic(what="e1000e (VM restart)")
        lab.vm_stop("vm1")
        lab.wait_log(r"VM vm1: socket removed", since=self.mark, timeout=10)
        self.assertOnVFIO(addr, group)
        mark = lab.vhotplug_log_mark()
        lab.vm_start("vm1")
        t_up = time.monotonic()
        lab.wait_inner("vm1", lambda per: vid in per, PCI_ATTACH_DEADLINE, "the restarted vm1 gets %s back" % vid,
                       interval=0.05)
        note("daemon: vm1 QMP answers -> e1000e back in vm1", time.monotonic() - t_up)
        lab.wait_log(r"pci %s [^\n]*: attached to vm1 as %s" % (re.escape(addr), re.escape(vid)), since=mark,
                     timeout=10)
        self.assertEqual(lab.inner_peripherals("vm1").get(vid), "vfio-pci")
        self.assertInVM1(vid, 0x8086, 0x10d3, wait=30)
        # no second rebind: it stayed on vfio-pci
        self.assertNotLog(r"pci %s [^\n]*: on vfio-pci \(IOMMU" % re.escape(addr), since=mark)
        self.assertNotLog(r"(error|critical) [^\n]*pci %s" % re.escape(addr))

    def test_7_coldplug_with_a_pci_and_evdev(self):
        """An e1000e and a virtio keyboard already in the guest when the daemon starts:
        with -a both end in vm1 (the NIC through vfio-pci), and leave it on unplug."""
        lab = self.lab
        nic = lab.plug("e1000e", "n1")
        kbd = lab.plug("virtio-keyboard-pci", "vk1")
        addr, ev = nic.guest["name"], kbd.guest["input"][0]
        self.assertEqual(self.driver(addr), "e1000e")
        want = {pci_id(addr): "vfio-pci", evdev_id(lab, ev): "virtio-input-host-pci"}
        t = time.monotonic()
        self.start("-a", config=PCI_RULES, what="daemon: start with -a, an e1000e and a virtio keyboard connected")
        per = lab.wait_inner("vm1", lambda per: set(want) <= vhp_ids(per), PCI_ATTACH_DEADLINE,
                             "-a: the e1000e and the virtio keyboard in vm1", interval=0.05)
        note("daemon: start with -a -> e1000e and virtio keyboard in vm1", time.monotonic() - t)
        self.assertEqual({k: per[k] for k in want}, want, self.diag())
        group = int(lab.wait_log(r"pci %s [^\n]*: on vfio-pci \(IOMMU group (\d+)" % re.escape(addr),
                                 since=self.mark, timeout=10).group(1))
        self.assertOnVFIO(addr, group)
        self.assertInVM1(pci_id(addr), 0x8086, 0x10d3, wait=10)
        self.assertInVM1(evdev_id(lab, ev), 0x1af4, 0x1052, wait=10)
        mark = lab.vhotplug_log_mark()
        lab.unplug("vk1")
        lab.unplug("n1")
        lab.wait_inner("vm1", lambda per: not (set(want) & vhp_ids(per)), 20, "both leave vm1 on unplug")
        lab.wait_log(r"pci %s [^\n]*: detached from vm1" % re.escape(addr), since=mark, timeout=20)
        self.assertNotLog(r"(error|critical) [^\n]*(pci %s|input %s)" % (re.escape(addr), re.escape(ev)))


    def test_8_two_functions_of_one_iommu_group(self):
        """A two-function e1000e (01:00.0 and 01:00.1, one IOMMU group): both go to vm1,
        taking both of its root ports for PCI devices: a third NIC's attach fails for want of a
        root port, and is tried again once a device leaves vm1; when the one whose bind moved
        the group leaves vm1 (denied), the group stays on vfio-pci
        for the other (still in vm1); a reload sends both to vm2: the first waits for the
        other to leave vm1, then both are in vm2; a reload that lets them be in vm1 or vm2 keeps
        them in vm2; `vhotplug pci attach --vm vm1` moves the group back through the API (its
        reply waits for both: the first waits for the other to leave vm2); once they leave,
        both are back on e1000e."""
        lab = self.lab
        rules = json.loads(json.dumps(PCI_RULES))
        rules["general"] = {"api": {"unixSocket": API_SOCK}, "statePath": API_STATE}
        lab.check("rm -f %s" % API_STATE)
        before = set(lab.guest_devices()["pci"])
        port = lab.free_root_port()
        lab.plug("e1000e", "f1", bus=port, addr="0.1", multifunction="on", wait=False)
        lab.plug("e1000e", "f0", bus=port, addr="0.0", multifunction="on", wait=False)
        fns = lab.wait_for(lambda: sorted(set(lab.guest_devices()["pci"]) - before) if
                           len(set(lab.guest_devices()["pci"]) - before) == 2 else None, 30,
                           "the guest sees both functions", interval=0.2)
        # Both functions on e1000e first, then the daemon with -a: binding a function while
        # the kernel's own first probe of it is still running is another matter (see the
        # closing note of session 2), not what this test is about.
        lab.wait_for(lambda: all(self.driver(f) == "e1000e" for f in fns), 30,
                     "both functions of the new e1000e on e1000e", interval=0.2)
        mark = lab.vhotplug_log_mark()
        self.start("-a", config=rules)
        lab.wait_inner("vm1", lambda per: len({i for i in vhp_ids(per) if i.startswith("vhp-pci-")}) == 2,
                       PCI_ATTACH_DEADLINE * 2, "both functions in vm1", interval=0.1)
        bound = re.findall(r"pci (\S+) 8086:10d3[^\n]*: on vfio-pci \(IOMMU group (\d+), 2 devices\)",
                           lab.vhotplug_log(since=mark))
        self.assertEqual(len(bound), 2, self.diag())
        (first, group), (other, _) = bound[0], bound[1]
        self.assertEqual(first[:-1], other[:-1], "two functions of one slot: %s %s" % (first, other))
        # vm1's root ports for PCI devices (ep1, ep2) are both taken now: a third NIC's attach fails
        # (it goes back to e1000e), and is tried again once a device leaves vm1.
        m = lab.vhotplug_log_mark()
        third = lab.wait_plugged(lab.plug("e1000e", "n3", wait=False)).guest["name"]
        key3 = r"pci %s 8086:10d3[^\n]*: " % re.escape(third)
        lab.wait_log(key3 + r"attach to vm1 failed: VM vm1: no free pcie-root-port for [^\n]*; tried again when a device leaves vm1",
                     since=m, timeout=PCI_ATTACH_DEADLINE)
        lab.wait_for(lambda: self.driver(third) == "e1000e", 30, "the third NIC back on e1000e", interval=0.2)
        # The rule denies the first function: it leaves, the group stays on vfio-pci, and the third
        # NIC (its decision unchanged by the reload: only the first's departure sets it going) takes
        # the first's root port.
        only_other = json.loads(json.dumps(rules))
        only_other["pciPassthrough"][0]["deny"] = [{"address": first, "description": "the first function"}]
        m = self.reload(only_other)
        lab.wait_inner("vm1", lambda per: pci_id(first) not in per, 30, "%s leaves vm1" % first)
        lab.wait_log(r"pci %s [^\n]*: IOMMU group %s stays on vfio-pci while pci %s " % (re.escape(first), group, re.escape(other)),
                     since=m, timeout=20)
        self.assertEqual(self.driver(first), "vfio-pci")
        self.assertEqual(self.driver(other), "vfio-pci")
        self.assertInVM1(pci_id(other), 0x8086, 0x10d3)
        lab.wait_log(key3 + r"a device left vm1; attaching again", since=m, timeout=20)
        lab.wait_inner("vm1", lambda per: pci_id(third) in per, PCI_ATTACH_DEADLINE, "the third NIC in vm1", interval=0.1)
        self.assertInVM1(pci_id(third), 0x8086, 0x10d3)
        lab.unplug("n3")
        lab.wait_inner("vm1", lambda per: pci_id(third) not in per, 30, "the third NIC leaves vm1")
        lab.wait_log(key3 + r"detached from vm1", since=m, timeout=20)
        # The group moves to vm2 (the rule for both functions, to vm2): the one in vm1 holds
        # the group open there until it has left, so the first waits for it (QEMU would refuse
        # it in vm2, the group busy, and leave it on vfio-pci in no VM), then both are in vm2.
        lab.vm_start("vm2")
        try:
            to_vm2 = json.loads(json.dumps(rules))
            to_vm2["pciPassthrough"][0]["targetVm"] = "vm2"
            m = self.reload(to_vm2)
            lab.wait_inner("vm2", lambda per: {pci_id(first), pci_id(other)} <= set(per), PCI_ATTACH_DEADLINE * 2,
                           "both functions in vm2", interval=0.1)
            self.assertNotIn(pci_id(other), lab.inner_peripherals("vm1"))
            self.assertLog(r"pci %s [^\n]*: waits for pci %s [^\n]* to leave vm1 \(one IOMMU group\) before it goes to vm2"
                           % (re.escape(first), re.escape(other)), since=m)
            # Either VM allowed: found in vm2, they stay there. The API moves the group to vm1: its
            # reply comes once both are there (a member that waited for its mate is set going again).
            either = json.loads(json.dumps(rules))
            del either["pciPassthrough"][0]["targetVm"]
            either["pciPassthrough"][0]["allowedVms"] = ["vm1", "vm2"]
            m = self.reload(either)
            for f in (first, other):
                lab.wait_log(r"pci %s [^\n]*: vm1 \([^\n]*\); stays in vm2, which its rules allow too" % re.escape(f), since=m, timeout=10)
            self.assertEqual({pci_id(first), pci_id(other)} & set(lab.inner_peripherals("vm2")), {pci_id(first), pci_id(other)})
            t = time.monotonic()
            rc, out, err = lab.vhotplug_cli(["pci", "attach", "--vid", "8086", "--did", "10d3", "--vm", "vm1", "--path", API_SOCK],
                                            binary=self.vhotplug)
            self.assertEqual(rc, 0, out + err + self.diag())
            note("IOMMU group: API pci attach --vm vm1 of both functions (from vm2)", time.monotonic() - t)
            in_vm1 = set(lab.inner_peripherals("vm1"))
            self.assertEqual({pci_id(first), pci_id(other)} & in_vm1, {pci_id(first), pci_id(other)},
                             "the reply came before both functions were in vm1")
            self.assertFalse({pci_id(first), pci_id(other)} & set(lab.inner_peripherals("vm2")))
            self.assertLog(r"pci \S+ [^\n]*: waits for pci \S+ [^\n]* to leave vm2 \(one IOMMU group\) before it goes to vm1", since=m)
            # No rule at all: both leave vm1, and the whole group is back on e1000e.
            m = self.reload({k: v for k, v in rules.items() if k != "pciPassthrough"})
            lab.wait_inner("vm1", lambda per: not ({pci_id(first), pci_id(other)} & set(per)), 30, "both leave vm1")
            lab.wait_for(lambda: self.driver(first) == "e1000e" and self.driver(other) == "e1000e", 30,
                         "both functions back on e1000e", interval=0.2)
        finally:
            lab.vm_stop("vm2")
        # (the third NIC's failed attach for want of a root port aside)
        self.assertNotLog(r"(error|critical) [^\n]*pci (?!%s)0000:" % re.escape(third), since=mark)

    def iommu_pair(self):
        """A free root port for a two-function e1000e (one IOMMU group): the port, the two
        functions' addresses, their vhotplug ids, and rules that take function 0 only with
        pciIommuAddAll (and the API on, with a fresh state file)."""
        lab = self.lab
        port = lab.free_root_port()
        f0 = "0000:%02x:00.0" % lab.root_port_bus(port)
        f1 = f0[:-1] + "1"
        rules = json.loads(json.dumps(PCI_RULES))
        rules["pciPassthrough"][0].update(pciIommuAddAll=True, allow=[{"address": f0, "description": "function 0"}])
        rules["general"] = {"api": {"unixSocket": API_SOCK}, "statePath": API_STATE}
        lab.check("rm -f %s" % API_STATE)
        return port, f0, f1, {pci_id(f0), pci_id(f1)}, rules

    def test_9_iommu_add_all_with_functions_plugged_while_running(self):
        """pciIommuAddAll, and the first-probe race: a rule takes only function 0 of a
        two-function e1000e (one IOMMU group) and says pciIommuAddAll. Both functions are
        plugged while the daemon runs (function 1 first, then 0: the sequence that once raced
        the kernel's own e1000e probe), three times: each time both reach vm1, each on its own
        root port, with no error. Round 1 also asks the API (function 1 listed as an IOMMU
        member in vm1; `pci detach` of function 0 takes both out, `pci attach` both back); round 2 restarts the daemon, which finds both in vm1 and attaches
        nothing twice; rounds 1-2 unplug from the guest (both leave vm1); round 3 restarts vm1
        (both come back), then removes the rule (SIGHUP): both leave vm1 and the group is back
        on e1000e."""
        lab = self.lab
        port, f0, f1, ids, rules = self.iommu_pair()
        self.start(config=rules)
        start_mark = self.mark
        for round in (1, 2, 3):
            mark = lab.vhotplug_log_mark()
            t = time.monotonic()
            lab.plug("e1000e", "g1", bus=port, addr="0.1", multifunction="on", wait=False)
            lab.plug("e1000e", "g0", bus=port, addr="0.0", multifunction="on", wait=False)
            lab.wait_inner("vm1", lambda per: ids <= set(per), PCI_ATTACH_DEADLINE * 2,
                           "round %d: both functions in vm1" % round, interval=0.1)
            note("pciIommuAddAll: plug 2 functions -> both in vm1 (round %d)" % round, time.monotonic() - t)
            key0, key1 = r"pci %s 8086:10d3[^\n]*: " % re.escape(f0), r"pci %s 8086:10d3[^\n]*: " % re.escape(f1)
            self.assertLog(key0 + r"IOMMU group \d+ goes with it \(pciIommuAddAll\): pci %s" % re.escape(f1),
                           since=mark)
            lab.wait_log(key0 + r"attached to vm1 as %s" % re.escape(pci_id(f0)), since=mark, timeout=10)
            lab.wait_log(key1 + r"attached to vm1 as %s" % re.escape(pci_id(f1)), since=mark, timeout=10)
            self.assertLog(r"%s: just added; waited [0-9.]+ m?s for the kernel's first probe \(e1000e\)" % re.escape(f1),
                           since=mark)
            ports = {self.assertInVM1(i, 0x8086, 0x10d3) for i in ids}
            self.assertEqual(len(ports), 2, "each function on its own root port: %s" % ports)
            self.assertNotLog(r"(error|critical) ", since=mark)
            if round == 1:
                rc, out, err = lab.vhotplug_cli(["pci", "list", "--json", "--path", API_SOCK], binary=self.vhotplug)
                self.assertEqual(rc, 0, out + err)
                listed = {d["address"]: d for d in json.loads(out)}
                self.assertEqual(listed[f0].get("vm"), "vm1", out)
                self.assertNotIn("iommu_member", listed[f0], out)
                self.assertEqual((listed[f1].get("vm"), listed[f1].get("iommu_member")), ("vm1", True), out)
                # pci detach of function 0: function 1 leaves with it (the reply waits for both);
                # pci attach: both come back.
                m = lab.vhotplug_log_mark()
                t = time.monotonic()
                rc, out, err = lab.vhotplug_cli(["pci", "detach", "--address", f0, "--path", API_SOCK], binary=self.vhotplug)
                self.assertEqual(rc, 0, out + err)
                self.assertFalse(ids & self.vhp(), "pci detach returned with a function still in vm1")
                self.assertLog(r"pci %s [^\n]*: detached from vm1" % re.escape(f1), since=m)
                rc, out, err = lab.vhotplug_cli(["pci", "attach", "--address", f0, "--path", API_SOCK], binary=self.vhotplug)
                self.assertEqual(rc, 0, out + err)
                lab.wait_inner("vm1", lambda per: ids <= set(per), PCI_ATTACH_DEADLINE * 2, "pci attach: both back in vm1")
                note("pciIommuAddAll: API pci detach + attach of function 0 (both follow)", time.monotonic() - t)
            if round == 2:
                lab.stop_vhotplug()
                self.assertEqual(self.vhp() & ids, ids, "a stopped daemon leaves the devices in vm1")
                m = self.start(config=rules)
                for f in (f0, f1):
                    lab.wait_log(r"pci %s [^\n]*: found in VM vm1 as %s" % (re.escape(f), re.escape(pci_id(f))), since=m, timeout=10)
                self.assertNotLog(r"attached to vm1|device_add", since=m)
                self.assertEqual(self.vhp() & ids, ids)
            if round < 3:
                m = lab.vhotplug_log_mark()
                t = time.monotonic()
                lab.unplug("g0")
                lab.wait_inner("vm1", lambda per: not (ids & set(per)), 30, "round %d: both leave vm1" % round)
                note("pciIommuAddAll: unplug function 0 -> both out of vm1", time.monotonic() - t)
                lab.wait_for(lambda: not {f0, f1} & set(lab.guest_devices()["pci"]), 30, "the guest loses both functions")
                # QEMU (vm1) drops a vfio-pci device whose host device goes; the daemon's own
                # detach follows: the next round starts once both are done.
                for f in (f0, f1):
                    lab.wait_log(r"pci %s [^\n]*: detached from vm1 \(%s\)" % (re.escape(f), re.escape(pci_id(f))),
                                 since=m, timeout=30)
                lab.plugged.pop("g1", None)     # the guest's slot went as a whole
        # Round 3: vm1 restarts and gets both back (the group stays on vfio-pci meanwhile, no second
        # rebind); then the rule goes: function 1 follows function 0 out, and the group is back on e1000e.
        t = time.monotonic()
        lab.vm_stop("vm1")
        lab.wait_log(r"VM vm1: socket removed", since=mark, timeout=10)
        self.assertEqual((self.driver(f0), self.driver(f1)), ("vfio-pci", "vfio-pci"))
        m = lab.vhotplug_log_mark()
        lab.vm_start("vm1")
        lab.wait_inner("vm1", lambda per: ids <= set(per), PCI_ATTACH_DEADLINE * 2, "the restarted vm1 gets both back",
                       interval=0.1)
        note("pciIommuAddAll: vm1 restart -> both back in vm1", time.monotonic() - t)
        for f in (f0, f1):
            lab.wait_log(r"pci %s [^\n]*: attached to vm1 as %s" % (re.escape(f), re.escape(pci_id(f))), since=m, timeout=10)
        self.assertNotLog(r"on vfio-pci \(IOMMU", since=m)
        m = self.reload(NO_PCI_RULES)
        lab.wait_inner("vm1", lambda per: not (ids & set(per)), 30, "both leave vm1 after SIGHUP")
        lab.wait_for(lambda: self.driver(f0) == "e1000e" and self.driver(f1) == "e1000e", 30,
                     "both functions back on e1000e", interval=0.2)
        self.assertLog(r"pci %s [^\n]*: detached from vm1" % re.escape(f1), since=m)
        self.assertNotLog(r"(error|critical) ", since=start_mark)

    def test_11_device_add_unanswered_by_its_deadline_stays_on_vfio_and_is_confirmed(self):
        """A `device_add vfio-pci` QEMU has not answered by the daemon's deadline (0.5 s here;
        realizing the NIC takes seconds under TCG), then QEMU stopped (SIGSTOP) while it realizes:
        the NIC is taken as attached and stays on vfio-pci; the daemon asks vm1 again, and once
        QEMU runs again, confirms it. Before, it gave the NIC back to e1000e while QEMU had it
        open (vfio-pci's unbind waits in the kernel for QEMU, on the daemon's thread)."""
        lab = self.lab
        self.start(config=PCI_RULES, env={"VHOTPLUG_PCI_ATTACH_TIMEOUT": "0.5"})
        mark = lab.vhotplug_log_mark()
        p = lab.plug("e1000e", "n1", wait=False)
        late = lab.wait_log(r"pci (\S+) 8086:10d3[^\n]*: attach to vm1: VM vm1: no answer to device_add vfio-pci \S+ in time; "
                            r"taken as attached, asking vm1 again in 0.5 s", since=mark, timeout=PCI_ATTACH_DEADLINE)
        addr, vid = late.group(1), pci_id(late.group(1))
        qemu = lab.check("cat %s/vm1.pid" % labkit.GUEST_RUN).strip()
        lab.check("kill -STOP %s" % qemu)
        try:
            asked = lab.wait_log(r"pci %s [^\n]*: (cannot ask vm1 whether it has %s: [^\n]*; asking again in 1 s"
                                 r"|attached to vm1 as %s \(QEMU finished after the deadline\))"
                                 % (re.escape(addr), re.escape(vid), re.escape(vid)), since=mark, timeout=20)
            if "finished" in asked.group(0):
                print("\n  vm1 answered before it was stopped: the look confirmed the NIC at once", file=sys.stderr)
            self.assertEqual(self.driver(addr), "vfio-pci", self.diag())
        finally:
            lab.check("kill -CONT %s" % qemu)
        lab.wait_log(r"pci %s [^\n]*: attached to vm1 as %s \(QEMU finished after the deadline\)"
                     % (re.escape(addr), re.escape(vid)), since=mark, timeout=30)
        lab.wait_plugged(p)
        self.assertInVM1(vid, 0x8086, 0x10d3, wait=30)
        self.assertEqual(self.driver(addr), "vfio-pci")
        self.assertNotLog(r"pci %s [^\n]*: back on its host driver" % re.escape(addr), since=mark)
        self.assertEqual(len(re.findall(r'"execute":"device_add"', lab.vhotplug_log(since=mark))), 1)

    def test_10_iommu_add_all_suspend_resume_and_a_sigkilled_daemon(self):
        """pciIommuAddAll with the API's suspend/resume and a SIGKILLed daemon: a two-function
        e1000e (one IOMMU group) already in the guest, a rule for function 0 only, the daemon
        started with -a: both functions in vm1. `pci suspend` takes both out, `pci resume` brings
        both back. A daemon killed with SIGKILL leaves both in vm1 with their VFIO records; the
        next daemon keeps both for vm1 (function 1's record: with its IOMMU group), finds both
        there and attaches nothing twice; unplugging function 0 takes both out."""
        lab = self.lab
        port, f0, f1, ids, rules = self.iommu_pair()
        lab.plug("e1000e", "s1", bus=port, addr="0.1", multifunction="on", wait=False)
        lab.plug("e1000e", "s0", bus=port, addr="0.0", multifunction="on", wait=False)
        lab.wait_for(lambda: self.driver(f0) == "e1000e" and self.driver(f1) == "e1000e", 30,
                     "both functions in the guest on e1000e", interval=0.2)
        self.start("-a", config=rules)
        lab.wait_inner("vm1", lambda per: ids <= set(per), PCI_ATTACH_DEADLINE * 2, "-a: both functions in vm1",
                       interval=0.1)

        def cli(*args):
            rc, out, err = lab.vhotplug_cli(list(args) + ["--path", API_SOCK], binary=self.vhotplug)
            self.assertEqual(rc, 0, "vhotplug %s: %s%s" % (" ".join(args), out, err))

        t = time.monotonic()
        m = lab.vhotplug_log_mark()
        cli("pci", "suspend")
        lab.wait_inner("vm1", lambda per: not (ids & set(per)), 30, "pci suspend: both leave vm1")
        for f in (f0, f1):
            lab.wait_log(r"pci %s [^\n]*: detached from vm1" % re.escape(f), since=m, timeout=30)
        cli("pci", "resume")
        lab.wait_inner("vm1", lambda per: ids <= set(per), PCI_ATTACH_DEADLINE * 2, "pci resume: both back in vm1",
                       interval=0.1)
        note("pciIommuAddAll: pci suspend + resume (both functions)", time.monotonic() - t)

        self.assertEqual(lab.stop_vhotplug(sig=signal.SIGKILL), -signal.SIGKILL)
        for f in (f0, f1):
            lab.check("test -f %s/%s.json" % (VFIO_RECORDS, f))
        self.assertEqual(self.vhp() & ids, ids, "a killed daemon leaves the devices in vm1")
        m = self.start(config=rules, what="daemon: start with the group's VFIO records")
        self.assertLog(r"pci %s [^\n]*: on vfio-pci from an earlier run [^\n]*; still for vm1\n" % re.escape(f0), since=m)
        self.assertLog(r"pci %s [^\n]*: on vfio-pci from an earlier run [^\n]*; still for vm1 with its IOMMU group "
                       r"\(pciIommuAddAll\)" % re.escape(f1), since=m)
        for f in (f0, f1):
            lab.wait_log(r"pci %s [^\n]*: found in VM vm1 as %s" % (re.escape(f), re.escape(pci_id(f))), since=m, timeout=10)
        self.assertNotLog(r"attached to vm1|device_add|no VM takes it now", since=m)
        self.assertEqual((self.driver(f0), self.driver(f1)), ("vfio-pci", "vfio-pci"))

        m = lab.vhotplug_log_mark()
        lab.unplug("s0")
        lab.wait_inner("vm1", lambda per: not (ids & set(per)), 30, "unplug: both leave vm1")
        for f in (f0, f1):
            lab.wait_log(r"pci %s [^\n]*: detached from vm1 \(%s\)" % (re.escape(f), re.escape(pci_id(f))),
                         since=m, timeout=30)
        lab.plugged.pop("s1", None)     # the guest's slot went as a whole
        self.assertNotLog(r"(error|critical) ", since=self.mark)


def auth_rules(keyboard=True, **auth):
    """LAB_RULES with usbAuthorization on; without the keyboard entry when keyboard is False."""
    rules = json.loads(json.dumps(LAB_RULES))
    if not keyboard:
        rules["usbPassthrough"][0]["allow"] = [e for e in rules["usbPassthrough"][0]["allow"]
                                               if e["description"] != "HID Keyboard"]
    rules["usbAuthorization"] = dict({"enable": True}, **auth)
    return rules


ROOT_HUB_DEFAULTS = ["/sys/bus/usb/devices/usb1/authorized_default", "/sys/bus/usb/devices/usb2/authorized_default",
                     "/sys/module/usbcore/parameters/authorized_default"]


class Test7USBAuthorization(DaemonCase):
    """usbAuthorization (issue 7) with the guest's real kernel: `authorized_default` = 0
    on the root hubs while the daemon runs; an unmatched USB keyboard is never configured
    (no interface, no bound driver, no event node); a matched one is authorized just
    before it goes to vm1 and reaches it; one that leaves vm1 is de-authorized; a hub is
    authorized so the mouse behind it enumerates; a stopped daemon restores the defaults."""

    def defaults(self):
        files = self.lab.read_files(ROOT_HUB_DEFAULTS)
        return [None if files.get(p) is None else files[p].strip() for p in ROOT_HUB_DEFAULTS]

    def usb_state(self, name):
        """(authorized, interfaces with their drivers, the guest's event nodes of the device)."""
        lab = self.lab
        devs = lab.guest_devices()
        d = devs["usb"].get(name)
        self.assertIsNotNone(d, "the guest has no USB device %s%s" % (name, self.diag()))
        authorized = lab.read_files(["/sys/bus/usb/devices/%s/authorized" % name])["/sys/bus/usb/devices/%s/authorized" % name]
        nodes = sorted(k for k, v in devs["input"].items() if v.get("usb") == name)
        return (authorized or "").strip(), d["interfaces"], nodes

    def test_1_unmatched_keyboard_has_no_driver_and_no_event_node(self):
        lab = self.lab
        self.assertEqual(self.defaults()[:2], ["1", "1"], "the guest starts with authorized_default 1")
        self.start(config=auth_rules(keyboard=False))
        self.assertLog(r"USB authorization: new USB devices are not authorized on the host "
                       r"\(authorized_default = 0 on usb1, usb2, usbcore\)")
        self.assertEqual(self.defaults(), ["0", "0", "0"])
        t = time.monotonic()
        lab.plug("usb-kbd", "k1", wait=False)
        m = lab.wait_log(r"usb (\S+) 0627:0001 [^\n]*: stays unauthorized on the host "
                         r"\(no rule sends it to a VM, no hostAllow entry matches\)", since=self.mark, timeout=20)
        note("auth: plug usb-kbd -> decided unauthorized (end to end)", time.monotonic() - t)
        name = m.group(1)
        lab.settle()
        authorized, interfaces, nodes = self.usb_state(name)
        self.assertEqual(authorized, "0", self.diag())
        self.assertEqual(interfaces, [], "an unauthorized keyboard has no interfaces (so no driver)%s" % self.diag())
        self.assertEqual(nodes, [], "an unauthorized keyboard has no input device%s" % self.diag())
        self.assertFalse(lab.read_files(["/sys/bus/usb/devices/%s/bConfigurationValue" % name])
                         ["/sys/bus/usb/devices/%s/bConfigurationValue" % name].strip(), "no configuration")
        self.assertEqual(self.vhp(), set())
        self.assertNotLog(r"usb %s: configuration or interfaces not there yet|interfaces incomplete" % re.escape(name))

    def test_2_matched_keyboard_reaches_vm1_and_a_hub_stays_usable(self):
        lab = self.lab
        self.start(config=auth_rules(keyboard=True))
        t = time.monotonic()
        p = lab.plug("usb-kbd", "k1", wait=False)
        per = lab.wait_inner("vm1", lambda per: vhp_ids(per), 20, "vhotplug attaches the keyboard to vm1", interval=0.02)
        note("auth: plug usb-kbd -> in vm1 (end to end)", time.monotonic() - t)
        lab.wait_plugged(p)
        name = p.guest["name"]
        self.assertEqual(vhp_ids(per), {"vhp-usb-" + name}, self.diag())
        i = self.assertLog(r"usb %s 0627:0001 [^\n]*: authorized on the host \(going to vm1\)" % re.escape(name)).start()
        j = self.assertLog(r"usb %s [^\n]*: attached to vm1 as vhp-usb-%s" % (re.escape(name), re.escape(name))).start()
        self.assertLess(i, j, "authorized before the attach%s" % self.diag())
        # QEMU took the configured device: usbhid let go of it (QEMU detached it), no event node on the host
        authorized, interfaces, nodes = self.usb_state(name)
        self.assertEqual(authorized, "1")
        self.assertTrue(interfaces and all(i["driver"] in (None, "usbfs") for i in interfaces), "%s%s" % (interfaces, self.diag()))
        self.assertEqual(nodes, [], self.diag())
        # a hub is authorized at once; the mouse behind it enumerates and goes to vm1
        h = lab.plug("usb-hub", "h1")
        hub = h.guest["name"]
        self.assertLog(r"usb %s 0409:55aa [^\n]*: authorized on the host \(a hub: devices behind it must enumerate\)"
                       % re.escape(hub))
        before = self.vhp()
        m = lab.plug("usb-mouse", "hm1", port=h.port + ".1", wait=False)
        lab.wait_inner("vm1", lambda per: vhp_ids(per) - before, 20, "the mouse behind the hub goes to vm1", interval=0.02)
        lab.wait_plugged(m)
        self.assertEqual(self.vhp() - before, {"vhp-usb-%s.1" % hub})
        # an unplug is no de-authorization (the device is gone)
        mark = lab.vhotplug_log_mark()
        lab.unplug("k1")
        self.wait_idle_after(r"usb %s [^\n]*: detached from vm1" % re.escape(name), since=mark)
        self.assertNotLog(r"usb %s [^\n]*: de-authorized" % re.escape(name), since=mark)

    def test_3_leaving_vm1_deauthorizes_and_a_stopped_daemon_restores_the_defaults(self):
        lab = self.lab
        self.start(config=auth_rules(keyboard=True))
        p = lab.plug("usb-kbd", "k1", wait=False)
        lab.wait_inner("vm1", lambda per: vhp_ids(per), 20, "vhotplug attaches the keyboard to vm1", interval=0.02)
        lab.wait_plugged(p)
        name = p.guest["name"]
        # the rules no longer take keyboards: it leaves vm1 and goes off the host again
        mark = lab.vhotplug_log_mark()
        lab.write_file("/run/vhotplug-lab/vhotplug.conf", json.dumps(auth_rules(keyboard=False)))
        lab.signal_vhotplug(signal.SIGHUP)
        lab.wait_inner("vm1", lambda per: not vhp_ids(per), 10, "reload: the keyboard leaves vm1")
        lab.wait_log(r"usb %s [^\n]*: de-authorized on the host \(it left vm1\)" % re.escape(name), since=mark, timeout=10)
        lab.settle()
        authorized, interfaces, nodes = self.usb_state(name)
        self.assertEqual((authorized, interfaces, nodes), ("0", [], []), self.diag())
        # SIGTERM: the defaults are as they were
        self.assertEqual(self.defaults(), ["0", "0", "0"])
        self.assertEqual(lab.stop_vhotplug(), 0)
        self.assertEqual(self.defaults(), ["1", "1", "-1"])
        self.assertLog(r"USB authorization: authorized_default restored \(usb1 = 1, usb2 = 1, usbcore = -1\)")
        # the host takes new devices again
        m = lab.plug("usb-mouse", "m1")
        self.assertTrue(m.guest["input"], "a mouse plugged after the daemon stopped has its event node")

    def test_4_qemu_needs_the_device_authorized(self):
        """Why the daemon authorizes a device just before its attach (no daemon here).

        QEMU's usb-host accepts an unauthorized device (device_add returns {} and `info
        usb` lists it) but gets it unconfigured, with no interface to claim; the
        SET_CONFIGURATION its guest sends goes through usbfs, and the kernel keeps an
        unauthorized device unconfigured (usb_set_configuration takes configuration 0
        for it). Authorized, the same device is configured at once."""
        lab = self.lab
        lab.check("echo 0 > /sys/bus/usb/devices/usb1/authorized_default; echo 0 > /sys/bus/usb/devices/usb2/authorized_default")
        try:
            before = set(lab.guest_devices()["usb"])
            lab.plug("usb-kbd", "k1", wait=False)
            name = lab.wait_for(lambda: sorted(set(lab.guest_devices()["usb"]) - before), 20, "the keyboard appears")[0]
            lab.settle()
            d = lab.guest_devices()["usb"][name]
            self.assertEqual(d["interfaces"], [])
            self.assertEqual(lab.inner_qmp("vm1", "device_add", driver="usb-host", id="probe",
                                           hostbus=int(d["busnum"]), hostaddr=int(d["devnum"])), {})
            self.assertRegex(lab.inner_usb("vm1"), r"Product QEMU USB Keyboard, ID: probe")
            sysdir = "/sys/bus/usb/devices/" + name
            node = "/dev/bus/usb/%03d/%03d" % (int(d["busnum"]), int(d["devnum"]))
            # USBDEVFS_SETCONFIGURATION 1, as QEMU passes on its guest's SET_CONFIGURATION
            lab.check("python3 -c 'import fcntl, os, struct; fd = os.open(\"%s\", os.O_RDWR); "
                      "fcntl.ioctl(fd, 0x80045505, struct.pack(\"I\", 1))'" % node)
            cfg = lab.read_files([sysdir + "/bConfigurationValue"])[sysdir + "/bConfigurationValue"]
            self.assertEqual(cfg.strip(), "", "an unauthorized device stays unconfigured after SET_CONFIGURATION")
            self.assertEqual(lab.guest_devices()["usb"][name]["interfaces"], [])
            lab.inner_qmp("vm1", "device_del", id="probe",
                          wait_event={"event": "DEVICE_DELETED", "data": {"device": "probe"}, "timeout": 10})
            lab.check("echo 1 > %s/authorized" % sysdir)
            cfg = lab.read_files([sysdir + "/bConfigurationValue"])[sysdir + "/bConfigurationValue"]
            self.assertEqual(cfg.strip(), "1", "authorized: configured at once")
            self.assertTrue(lab.guest_devices()["usb"][name]["interfaces"])
        finally:
            lab.check("echo 1 > /sys/bus/usb/devices/usb1/authorized_default; echo 1 > /sys/bus/usb/devices/usb2/authorized_default")


def _readline(child, timeout):
    """A line of the child's stdout, or '' after timeout seconds (never blocks longer)."""
    import select
    end = time.monotonic() + timeout
    buf = ""
    fd = child.stdout.fileno()
    while time.monotonic() < end:
        r, _, _ = select.select([fd], [], [], max(0, end - time.monotonic()))
        if not r:
            break
        ch = os.read(fd, 1).decode()
        if not ch:
            break
        buf += ch
        if ch == "\n":
            break
    return buf


def _stderr(child):
    if child.poll() is None:
        child.kill()
        child.wait()
    return child.stderr.read()[-3000:]


def _alive(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            state = re.search(r"State:\s*(\S)", f.read()).group(1)
        return state not in ("Z", "X")
    except OSError:
        return False


API_SOCK = labkit.GUEST_RUN + "/api.sock"
API_STATE = labkit.GUEST_RUN + "/vhotplug.state"


class Test6API(LabCase):
    """The control API in the real kernel (issue 6): `vhotplug usb detach` then
    `usb attach --vm` moves a mouse between the inner VMs vm1 and vm2; suspend and
    resume; a restarted daemon keeps the user's choice and detached marks; the
    e1000e NIC detached and attached again through `vhotplug pci` (VFIO for real)."""

    vms = ("vm1", "vm2")

    @classmethod
    def setUpClass(cls):
        cls.vhotplug = labkit.find_vhotplug()
        super().setUpClass()

    def setUp(self):
        self.mark = 0

    def tearDown(self):
        lab = self.lab
        try:
            super().tearDown()
        finally:
            lab.stop_vhotplug()
            lab.run("rm -f %s %s" % (API_STATE, API_SOCK))
            for vm in self.vms:
                try:
                    for id in sorted(vhp_ids(lab.inner_peripherals(vm))):
                        lab.inner_qmp(vm, "device_del", id=id,
                                      wait_event={"event": "DEVICE_DELETED", "data": {"device": id}, "timeout": 10})
                except (LabError, QMPError) as e:
                    print("tearDown: cannot clean %s: %s" % (vm, e), file=sys.stderr)

    def config(self):
        run = labkit.GUEST_RUN
        return {
            "usbPassthrough": [{"description": "Lab: mice for vm1 or vm2", "allowedVms": ["vm1", "vm2"], "tag": "mouse",
                                "allow": [{"interfaceClass": 3, "interfaceProtocol": 2, "description": "HID Mouse"}]}],
            "pciPassthrough": [{"description": "Lab: the e1000e for vm1", "targetVm": "vm1", "tag": "nic",
                                "allow": [{"vendorId": "8086", "deviceId": "10d3"}]}],
            "vms": [{"name": "vm1", "type": "qemu", "socket": run + "/vm1.qmp"},
                    {"name": "vm2", "type": "qemu", "socket": run + "/vm2.qmp"}],
            "general": {"api": {"unixSocket": API_SOCK}, "statePath": API_STATE},
        }

    def start(self, *args):
        lab = self.lab
        self.mark = mark = lab.vhotplug_log_mark()
        t = time.monotonic()
        lab.start_vhotplug(list(args) + ["-d"], config=self.config(), binary=self.vhotplug, timeout=30,
                           ready=lambda l: "; listening (" in l.vhotplug_log(since=mark))
        note("api: daemon start -> \"listening\"", time.monotonic() - t)

    def diag(self):
        return "\n----- vhotplug log -----\n%s\n----- guest console (last lines) -----\n%s" % (
            self.lab.vhotplug_log(since=self.mark)[-6000:], self.lab.console_tail(25))

    def cli(self, *args, what=None):
        """`vhotplug ARGS --path API_SOCK` in the guest; fails the test on a non-zero exit."""
        t = time.monotonic()
        rc, out, err = self.lab.vhotplug_cli(list(args) + ["--path", API_SOCK], binary=self.vhotplug)
        if rc != 0:
            self.fail("vhotplug %s: rc %s\n%s%s%s" % (" ".join(args), rc, out, err, self.diag()))
        if what:
            note("api: %s" % what, time.monotonic() - t)
        return out

    def listed(self, bus="usb"):
        return json.loads(self.cli(bus, "list", "--json"))

    def ids(self, vm):
        return vhp_ids(self.lab.inner_peripherals(vm))

    def test_1_move_a_mouse_between_vms_suspend_resume_and_restart(self):
        lab = self.lab
        self.start()
        p = lab.plug("usb-mouse", "m1")
        vid = "vhp-usb-" + p.guest["name"]
        # No client listens: the first allowed VM takes it.
        lab.wait_inner("vm1", lambda per: vid in per, 20, "the mouse goes to vm1 (the default)")
        [mouse] = self.listed()
        self.assertEqual((mouse["vm"], mouse["allowed_vms"], mouse["tag"]), ("vm1", ["vm1", "vm2"], "mouse"))
        node = mouse["device_node"]

        # Detach, then attach to vm2: the mouse moves between the inner VMs.
        self.cli("usb", "detach", "--devnode", node, what="usb detach (reply after the VM let go)")
        self.assertNotIn(vid, self.ids("vm1"))
        self.cli("usb", "attach", "--devnode", node, "--vm", "vm2", what="usb attach --vm vm2 (reply once in the VM)")
        self.assertIn(vid, self.ids("vm2"))
        self.assertNotIn(vid, self.ids("vm1"))
        self.assertRegex(lab.inner_usb("vm2"), r"Product QEMU USB Mouse, ID: %s\b" % re.escape(vid))

        # Suspend and resume.
        self.cli("usb", "suspend", what="usb suspend")
        self.assertNotIn(vid, self.ids("vm2"))
        self.cli("usb", "resume", what="usb resume")
        self.assertIn(vid, self.ids("vm2"))

        # A restarted daemon keeps the choice: after a replug, the mouse goes to vm2.
        self.assertEqual(lab.stop_vhotplug(), 0, self.diag())
        lab.unplug("m1")
        self.start("-a")
        lab.wait_inner("vm2", lambda per: vid not in per, 10, "the stale id is removed")
        p2 = lab.plug("usb-mouse", "m2", port=p.port)
        vid2 = "vhp-usb-" + p2.guest["name"]
        lab.wait_inner("vm2", lambda per: vid2 in per, 20, "the replugged mouse goes to vm2, the VM chosen before")
        self.assertNotIn(vid2, self.ids("vm1"))

        # Detached, then the daemon restarts: the mark holds, even with -a.
        [mouse] = self.listed()
        self.cli("usb", "detach", "--tag", "mouse")
        self.assertEqual(lab.stop_vhotplug(), 0, self.diag())
        self.start("-a")
        lab.wait_log(r"detached by the user earlier", since=self.mark, timeout=10)
        self.assertNotIn(vid2, self.ids("vm1") | self.ids("vm2"))
        self.assertEqual(self.listed()[0]["disconnected"], True)

    def test_2_pci_detach_and_attach_through_the_api(self):
        lab = self.lab
        self.start()
        n = lab.plug("e1000e", "n1")
        addr = n.guest["name"]
        lab.wait_inner("vm1", lambda per: "vhp-pci-" + addr.replace(":", "-") in per, 90,
                       "the e1000e reaches vm1 through vfio-pci")
        [nic] = self.listed("pci")
        self.assertEqual((nic["address"], nic["vid"], nic["did"], nic["vm"], nic["tag"]), (addr, "8086", "10D3", "vm1", "nic"))
        self.cli("pci", "detach", "--address", addr, what="pci detach (VM lets go, back to e1000e)")
        self.assertNotIn("vhp-pci-" + addr.replace(":", "-"), self.ids("vm1"))
        lab.wait_for(lambda: truth.lspci_kernel_driver(lab, addr) == "e1000e", 20, "the NIC is back on e1000e")
        self.assertEqual(self.listed("pci")[0]["disconnected"], True)
        self.cli("pci", "attach", "--vid", "8086", "--did", "10d3", what="pci attach (vfio-pci + device_add)")
        self.assertIn("vhp-pci-" + addr.replace(":", "-"), self.ids("vm1"))


VMM_API_SOCK = labkit.GUEST_RUN + "/vmm-api.sock"


class Test6VMMArgsVSock(DaemonCase):
    """`vhotplug vmm args` for real (issue 6): with vm1 stopped, the launcher's call moves the
    e1000e to vfio-pci and answers `-device vfio-pci,...,bus=rpN`; vm1 started with those
    arguments has the NIC at boot, the daemon finds it under its own id (no second
    device_add), lists it in vm1, and a `pci detach` takes it out of vm1 and back to e1000e.
    And the API over vsock (vsock_loopback, CID 1): answered when CID 1 is allowed,
    refused (and logged) when it is not."""

    def config(self, **api):
        c = json.loads(json.dumps(PCI_RULES))
        del c["evdevPassthrough"]
        c["general"] = {"api": dict({"unixSocket": VMM_API_SOCK}, **api), "persistency": False}
        return c

    def cli(self, *args):
        return self.lab.vhotplug_cli(list(args), binary=self.vhotplug)

    def test_1_vm1_started_with_vmm_args_has_the_e1000e_at_boot(self):
        lab = self.lab
        nic = lab.plug("e1000e", "n1")
        addr, vid = nic.guest["name"], pci_id(nic.guest["name"])
        lab.vm_stop("vm1")
        # (A 3 s unplug deadline instead of 10: the detach below waits it out, and its first look.)
        self.start(config=self.config(), env={"VHOTPLUG_UNPLUG_TIMEOUT": "3"})
        self.assertLog(r"VM vm1 is not running")
        t = time.monotonic()
        rc, out, err = self.cli("vmm", "args", "--vm", "vm1", "--qemu-bus-prefix", "rp", "--qemu-bus-start-index", "3",
                                "--require-pci", "--path", VMM_API_SOCK)
        note("vmm args: e1000e to vfio-pci + reply", time.monotonic() - t)
        self.assertEqual(rc, 0, err + self.diag())
        # rp3: a free root port of vm1's command line (innervm.sh: rp1..rp4, ep1, ep2)
        self.assertEqual(out, "-device vfio-pci,host=%s,id=%s,bus=rp3" % (addr, vid))
        group = int(self.assertLog(r"pci %s [^\n]*: on vfio-pci for the start of vm1 \(IOMMU group (\d+), 1 device\)"
                                   % re.escape(addr)).group(1))
        self.assertEqual(self.driver(addr), "vfio-pci")
        lab.check("test -c /dev/vfio/%d" % group)

        mark = lab.vhotplug_log_mark()
        t = time.monotonic()
        # With QEMU's default for q35, ACPI hot-plug on the root ports (innervm.sh turns it off): a
        # pending ACPI unplug, which no guest OS completes here, is completed by a reset (below).
        lab.vm_start("vm1", timeout=PCI_ATTACH_DEADLINE,
                     extra_args=out.split(" ") + ["-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=on"])
        note("vmm args: vm1 start with the e1000e on its command line", time.monotonic() - t)
        # The daemon's resync lists vm1's devices once QEMU answers (it answers only after realizing
        # the vfio-pci device, 3 s here). Should that exceed the QMP deadline (5 s) on a loaded
        # machine, the attach that follows finds the device under its id instead: never a second one.
        found = lab.wait_log(r"pci %s [^\n]*: found in VM vm1 as %s|VM vm1: %s is in the VM already \(host %s\)"
                             % (re.escape(addr), re.escape(vid), re.escape(vid), re.escape(addr)), since=mark,
                             timeout=PCI_ATTACH_DEADLINE)
        lab.wait_for(lambda: any(d["qdev_id"] == vid for d in lab.inner_pci("vm1")), 30,
                     "%s in vm1's query-pci" % vid, interval=0.1)
        [dev] = [d for d in lab.inner_pci("vm1") if d["qdev_id"] == vid]
        self.assertEqual((dev["vendor"], dev["device"]), (0x8086, 0x10d3))
        self.assertEqual(dev["parent"], "rp3")
        if "found in VM" in found.group(0):
            self.assertNotLog(r"device_add", since=mark)
        else:
            print("\n  vmm args: vm1's QMP answered after the resync's deadline; the attach found the NIC", file=sys.stderr)
        self.assertEqual(list(self.vhp()), [vid])
        rc, out, err = self.cli("pci", "list", "--json", "--path", VMM_API_SOCK)
        self.assertEqual(rc, 0, err)
        [listed] = json.loads(out)
        self.assertEqual((listed["address"], listed["vm"]), (addr, "vm1"))

        # Detached through the API: the daemon asks vm1 to let go of its id. vm1 has no guest
        # OS to eject it, so QEMU does not release it by the daemon's unplug deadline (3 s here):
        # the reply says so.
        mark = lab.vhotplug_log_mark()
        t = time.monotonic()
        rc, out, err = self.cli("pci", "detach", "--address", addr, "--path", VMM_API_SOCK)
        note("vmm args: pci detach from an OS-less vm1 (DEVICE_DELETED deadline)", time.monotonic() - t)
        self.assertEqual(rc, 1, out + err + self.diag())
        self.assertIn("the guest did not release it", err)
        self.assertLog(r'"execute":"device_del","arguments":\{"id":"%s"\}' % re.escape(vid), since=mark)
        self.assertLog(r"pci %s [^\n]*: detach from vm1 failed: [^\n]*the guest did not release it[^\n]*; looking again in 3 s"
                       % re.escape(addr), since=mark)
        # vm1 is reset (its manager reboots it): QEMU completes the pending unplug, with no client
        # of the daemon's connected to hear it. The daemon's next look (3 s after the deadline)
        # finds the NIC gone, and gives it back to e1000e: not left on vfio-pci with no VM.
        mark = lab.vhotplug_log_mark()
        t = time.monotonic()
        lab.inner_qmp("vm1", "system_reset")
        lab.wait_log(r"pci %s [^\n]*: vm1 let go of %s after the detach's deadline" % (re.escape(addr), re.escape(vid)),
                     since=mark, timeout=30)
        lab.wait_log(r"pci %s [^\n]*: back on its host driver \(%s -> e1000e\)" % (re.escape(addr), re.escape(addr)),
                     since=mark, timeout=20)
        note("vmm args: vm1 reset after a timed-out detach -> the NIC back on e1000e", time.monotonic() - t)
        lab.wait_for(lambda: self.driver(addr) == "e1000e", 20, "the NIC is back on e1000e", interval=0.1)
        self.assertNotLog(r'"execute":"device_del"', since=mark)
        self.assertEqual([d for d in lab.inner_pci("vm1") if d["qdev_id"] == vid], [])

    def test_3_vmm_args_give_a_pci_iommu_add_all_group(self):
        """pciIommuAddAll with vmm_args: a two-function e1000e (one IOMMU group), a rule for
        function 0 only: `vmm args` moves both to vfio-pci and answers a `-device vfio-pci` for
        each, on two root ports; vm1 started with them has both at boot, and the daemon finds
        both under its ids (no device_add)."""
        lab = self.lab
        port = lab.free_root_port()
        f0 = "0000:%02x:00.0" % lab.root_port_bus(port)
        f1 = f0[:-1] + "1"
        lab.plug("e1000e", "v1", bus=port, addr="0.1", multifunction="on", wait=False)
        lab.plug("e1000e", "v0", bus=port, addr="0.0", multifunction="on", wait=False)
        lab.wait_for(lambda: self.driver(f0) == "e1000e" and self.driver(f1) == "e1000e", 30,
                     "both functions in the guest on e1000e", interval=0.2)
        lab.vm_stop("vm1")
        config = self.config()
        config["pciPassthrough"][0].update(pciIommuAddAll=True, allow=[{"address": f0, "description": "function 0"}])
        self.start(config=config)
        t = time.monotonic()
        rc, out, err = self.cli("vmm", "args", "--vm", "vm1", "--qemu-bus-prefix", "rp", "--qemu-bus-start-index", "3",
                                "--require-pci", "--path", VMM_API_SOCK)
        note("vmm args: a two-function group to vfio-pci + reply", time.monotonic() - t)
        self.assertEqual(rc, 0, err + self.diag())
        devices = [a for a in out.split(" ") if a != "-device"]
        self.assertEqual(out.split(" ").count("-device"), 2, out)
        opts = [dict(kv.split("=", 1) for kv in d.split(",")[1:]) for d in devices]
        self.assertEqual(sorted((o["host"], o["id"], o["bus"]) for o in opts),
                         [(f0, pci_id(f0), "rp3"), (f1, pci_id(f1), "rp4")], out)
        self.assertEqual((self.driver(f0), self.driver(f1)), ("vfio-pci", "vfio-pci"))

        mark = lab.vhotplug_log_mark()
        lab.vm_start("vm1", timeout=PCI_ATTACH_DEADLINE * 2, extra_args=out.split(" "))
        for f in (f0, f1):
            lab.wait_log(r"pci %s [^\n]*: found in VM vm1 as %s|VM vm1: %s is in the VM already"
                         % (re.escape(f), re.escape(pci_id(f)), re.escape(pci_id(f))), since=mark,
                         timeout=PCI_ATTACH_DEADLINE * 2)
        lab.wait_for(lambda: {pci_id(f0), pci_id(f1)} <= {d["qdev_id"] for d in lab.inner_pci("vm1")}, 30,
                     "both functions in vm1's query-pci", interval=0.1)
        self.assertNotLog(r'"execute":"device_add"', since=mark)
        self.assertNotLog(r"(error|critical) ", since=self.mark)
        # vm1 (no guest OS) stops with them; the group stays on vfio-pci for it.
        lab.vm_stop("vm1")
        self.assertEqual(lab.stop_vhotplug(), 0)
        lab.vm_start("vm1")

    def test_2_api_over_vsock_loopback(self):
        lab = self.lab
        t = time.monotonic()
        lab.load_modules(["vsock_loopback"])
        note("vsock: insmod vsock_loopback", time.monotonic() - t)
        self.start(config=self.config(transports=["unix", "vsock"], port=2000, allowedCids=[1]))
        self.assertLog(r"API: listening on vsock port 2000 for CIDs 1")
        rc, out, err = self.cli("-t", "vsock", "-c", "1", "-p", "2000", "usb", "list", "--json")
        self.assertEqual((rc, out.strip()), (0, "[]"), err + self.diag())
        rc, out, err = self.cli("pci", "list", "--json", "-t", "vsock", "--cid", "1", "--api-port", "2000")
        self.assertEqual((rc, out.strip()), (0, "[]"), err + self.diag())
        self.assertLog(r"API: connection from vsock cid 1 port \d+")
        self.assertEqual(lab.stop_vhotplug(), 0)

        self.start(config=self.config(transports=["unix", "vsock"], port=2000, allowedCids=[3]))
        mark = lab.vhotplug_log_mark()
        rc, out, err = self.cli("-t", "vsock", "-c", "1", "-p", "2000", "usb", "list")
        self.assertEqual(rc, 1, out + err)
        self.assertIn("CID 1 is not in allowedCids", err)
        lab.wait_log(r"vsock cid 1 port \d+[^\n]*CID 1 is not in allowedCids", since=mark, timeout=10)

    def driver(self, address):
        return self.lab.check("d=/sys/bus/pci/devices/%s; [ -e $d/driver ] && basename $(readlink $d/driver) || true"
                              % address).strip()


if __name__ == "__main__":
    prog = unittest.main(verbosity=2, exit=False)
    r = prog.result
    failed = len(r.failures) + len(r.errors) + len(r.unexpectedSuccesses)
    if LAB_HANGS:
        print("lab: run again after a hang of the lab: %s" % ", ".join(LAB_HANGS), flush=True)
    # a class's set-up that failed is an error of no test run (it counted -1 passed)
    failed_runs = sum(1 for t, _ in r.failures + r.errors if isinstance(t, unittest.TestCase)) + len(r.unexpectedSuccesses)
    print("lab: %d passed, %d failed" % (r.testsRun - failed_runs - len(r.skipped), failed), flush=True)
    sys.exit(0 if r.wasSuccessful() and r.testsRun > 0 else 1)
