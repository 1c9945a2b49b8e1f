import Foundation
import Testing
import VHotplugTestSupport

/// The QEMU of these tests has root ports rp1 and ep1.
func qemuWithPorts(_ tb: Testbed) throws -> QEMUInstance {
    try QEMUInstance(testbed: tb, extraArgs: ["-device", "pcie-root-port,id=rp1,chassis=1", "-device", "pcie-root-port,id=ep1,chassis=2"])
}

@Suite("The daemon with input and PCI devices, a real QEMU and umockdev", .serialized)
struct DaemonEvdevPCITests {
    @Test("a non-USB keyboard is sent to the evdev VM as virtio-input-host-pci on a root port with the prefix; QEMU's refusal is logged once, not retried")
    func evdev() async throws {
        let tb = await Testbed.make()
        let qemu = try qemuWithPorts(tb)
        let config = qemu.dir + "/vhotplug.conf"
        try """
            {"evdevPassthrough": {"targetVm": "vm1", "pcieBusPrefix": "ep"},
             "vms": [{"name": "vm1", "type": "qemu", "socket": "\(qemu.qmpPath)"}]}
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let d = try DaemonProcess(arguments: ["-c", config, "-d"], testbed: tb)
        try d.waitFor("; listening (")
        try tb.add(file: fixtures + "/ps2-keyboard.umockdev")
        try d.waitFor("input event0 \"AT Translated Set 2 keyboard\": vm1 (evdevPassthrough)")
        try d.waitFor(#""driver":"virtio-input-host-pci","evdev":"/dev/input/event0","id":"vhp-evdev-input0-event0","bus":"ep1""#)
        // umockdev's fake node answers no evdev ioctls, so QEMU refuses it: the daemon says so...
        try d.waitFor("input event0 \"AT Translated Set 2 keyboard\": attach to vm1 failed: VM vm1: device_add failed: GenericError: \"/dev/input/event0: is not an evdev device\"")
        // ...and does not try again: after a later event (a reload), still one attempt.
        let mark = d.mark
        d.signal(SIGHUP)
        try d.waitForIdle(from: try d.waitFor("configuration reloaded", from: mark))
        #expect(d.log.filter { $0.contains(#""evdev":"/dev/input/event0""#) }.count == 1)
        #expect(try qemu.attachedIds() == [])
    }

    @Test("a PCI device on a host without vfio-pci: the daemon says to load it, the device stays on its driver, nothing reaches the VM")
    func pciRollback() async throws {
        let tb = await Testbed.make()
        let qemu = try qemuWithPorts(tb)
        let config = qemu.dir + "/vhotplug.conf"
        try """
            {"pciPassthrough": [{"targetVm": "vm1", "allow": [{"address": "0000:00:14.3", "description": "Wi-Fi"}]}],
             "vms": [{"name": "vm1", "type": "qemu", "socket": "\(qemu.qmpPath)"}]}
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let d = try DaemonProcess(arguments: ["-c", config], testbed: tb)
        try d.waitFor("; listening (")
        try tb.addProbed(file: fixtures + "/pci-wifi.umockdev")
        try d.waitFor("pci 0000:00:14.3 8086:a0f0: vm1 (rule set 0, allow[0] \"Wi-Fi\")")
        try d.waitFor("pci 0000:00:14.3 8086:a0f0: attach to vm1 failed: 0000:00:14.3: check: the vfio-pci driver is not loaded (no /sys/bus/pci/drivers/vfio-pci): modprobe vfio-pci")
        let wifi = tb.sysRoot + "/devices/pci0000:00/0000:00:14.3"
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: wifi + "/driver"))?.hasSuffix("/iwlwifi") == true)
        let override = (try? String(contentsOfFile: wifi + "/driver_override", encoding: .utf8)) ?? ""
        #expect(!override.contains("vfio-pci"))
        #expect(!d.log.contains { $0.contains("device_add") || $0.contains("attached to") })
        #expect(try qemu.attachedIds() == [])
    }

    /// The Wi-Fi of pci-wifi.umockdev in vm1 under vhotplug's id, as an earlier run would have
    /// left it (a device present at the VM's start sits in a powered slot, and a paused VM has no
    /// guest to release it); the daemon (no -d: what it does must not depend on what it logs)
    /// has found it there. Then the rule goes (a reload): its detach waits for the guest in vain.
    struct WifiLeavingVM1 {
        static let wifi = "pci 0000:00:14.3 8086:a0f0"
        static let rule = #""pciPassthrough": [{"targetVm": "vm1", "allow": [{"address": "0000:00:14.3", "description": "Wi-Fi"}]}]"#
        let tb: Testbed
        let qemu: QEMUInstance
        let config: String
        let d: DaemonProcess

        static func vms(_ q: QEMUInstance) -> String { #""vms": [{"name": "vm1", "type": "qemu", "socket": "\#(q.qmpPath)"}]"# }

        init() async throws {
            tb = await Testbed.make()
            try tb.addProbed(file: fixtures + "/pci-wifi.umockdev")
            qemu = try QEMUInstance(testbed: tb, extraArgs: ["-device", "pcie-root-port,id=rp1,chassis=1",
                                                             "-device", "virtio-net-pci,id=vhp-pci-0000-00-14.3,bus=rp1"])
            config = qemu.dir + "/vhotplug.conf"
            try "{\(Self.rule), \(Self.vms(qemu))}".write(toFile: config, atomically: true, encoding: .utf8)
            d = try DaemonProcess(arguments: ["-c", config], testbed: tb, environment: ["VHOTPLUG_UNPLUG_TIMEOUT": "0.5"])
            try d.waitFor("\(Self.wifi): found in VM vm1 as vhp-pci-0000-00-14.3")
            try d.waitFor("; listening (")
            try "{\(Self.vms(qemu))}".write(toFile: config, atomically: true, encoding: .utf8)
            let mark = d.mark
            d.signal(SIGHUP)
            try d.waitFor("\(Self.wifi): detach from vm1 failed: VM vm1: no answer to DEVICE_DELETED for vhp-pci-0000-00-14.3 (the guest did not release it) in time; looking again in 0.5 s", from: mark)
        }
    }

    @Test("a detach the guest does not complete in time is looked at again, later and later, without a second device_del (a reload meanwhile sends none); when QEMU lets go of the device (a reset here), the daemon ends the attachment")
    func detachReleasedAfterItsDeadline() async throws {
        let rig = try await WifiLeavingVM1()
        let (d, qemu, wifi) = (rig.d, rig.qemu, WifiLeavingVM1.wifi)
        var mark = d.mark
        // The first look finds it still there, and says when the next one is.
        try d.waitFor("\(wifi): vm1 still has vhp-pci-0000-00-14.3; looking again in 1 s")
        // A reload meanwhile reconciles the device: it leaves the detach to its looks (a second
        // device_del would time out again, and say so).
        d.signal(SIGHUP)
        try d.waitFor("configuration reloaded", from: mark)
        try d.waitFor("\(wifi): vm1 still has vhp-pci-0000-00-14.3; looking again in 2 s", from: mark)
        #expect(d.log.filter { $0.contains("detach from vm1 failed") }.count == 1)
        #expect(try qemu.attachedIds() == ["vhp-pci-0000-00-14.3"])
        // The VM is reset: QEMU completes the pending unplug, with no client of the daemon's to tell.
        mark = d.mark
        _ = try qemu.observe("system_reset")
        try d.waitFor("\(wifi): vm1 let go of vhp-pci-0000-00-14.3 after the detach's deadline", from: mark)
        #expect(try qemu.attachedIds() == [])
    }

    @Test("two reloads while a detach waits for the guest: vm1 to another QEMU, then back: the looks still ask the QEMU that has the device (before, the second reload sent them to the other one, which said it had let go)")
    func secondReloadKeepsTheBackendThatHasIt() async throws {
        let rig = try await WifiLeavingVM1()
        let (d, wifi) = (rig.d, WifiLeavingVM1.wifi)
        let next = try QEMUInstance(name: "next", testbed: rig.tb, extraArgs: ["-device", "pcie-root-port,id=rp1,chassis=1"])
        defer { next.stop() }
        for q in [next, rig.qemu] {
            try "{\(WifiLeavingVM1.vms(q))}".write(toFile: rig.config, atomically: true, encoding: .utf8)
            let mark = d.mark
            d.signal(SIGHUP)
            try d.waitFor("configuration reloaded", from: mark)
        }
        let mark = d.mark
        let r = try d.waitFor(anyOf: ["\(wifi): vm1 let go of", "\(wifi): vm1 still has", "went with it"], from: mark, timeout: 20)
        #expect(r.text == "\(wifi): vm1 still has", "\(d.log[mark...])")
        #expect(try rig.qemu.attachedIds() == ["vhp-pci-0000-00-14.3"])
    }

    @Test("a detach waiting for the guest of a VM that a reload moved to another QEMU: when the old QEMU dies, a look finds it gone and the device goes on to the new one")
    func lookFindsTheVMGone() async throws {
        let rig = try await WifiLeavingVM1()
        let (d, wifi) = (rig.d, WifiLeavingVM1.wifi)
        let next = try QEMUInstance(name: "next", testbed: rig.tb, extraArgs: ["-device", "pcie-root-port,id=rp1,chassis=1"])
        // vm1 moves to another QEMU and wants the device again: the looks go on through the old one.
        try "{\(WifiLeavingVM1.rule), \(WifiLeavingVM1.vms(next))}".write(toFile: rig.config, atomically: true, encoding: .utf8)
        var mark = d.mark
        d.signal(SIGHUP)
        try d.waitFor("\(wifi): vm1 still has vhp-pci-0000-00-14.3", from: mark)
        // The old QEMU dies (its socket is not vm1's any more: no socket event ends the attachment).
        mark = d.mark
        rig.qemu.stop()
        try d.waitFor("\(wifi): vm1 is not running; vhp-pci-0000-00-14.3 went with it", from: mark)
        // On to the new vm1 (this testbed has no vfio-pci driver: the attach stops there, and says so).
        try d.waitFor("\(wifi): attach to vm1 failed: 0000:00:14.3: check: the vfio-pci driver is not loaded", from: mark)
    }
}

/// The PS/2 keyboard of ps2-keyboard.umockdev (serio0, input0, event0) as another one: serio `serio`,
/// input device and event node `number` (the fixture's i8042 must be there; its power button is input1).
func ps2Keyboard(serio: Int, number: Int) throws -> String {
    let text = try String(contentsOfFile: fixtures + "/ps2-keyboard.umockdev", encoding: .utf8)
    let records = text.components(separatedBy: "\n\n").filter { $0.contains("/i8042/serio0") }
    return records.joined(separator: "\n\n")
        .replacingOccurrences(of: "serio0", with: "serio\(serio)")
        .replacingOccurrences(of: "input0", with: "input\(number)")
        .replacingOccurrences(of: "event0", with: "event\(number)")
        .replacingOccurrences(of: "MINOR=64", with: "MINOR=\(64 + number)")
        .replacingOccurrences(of: "dev=13:64", with: "dev=13:\(64 + number)") + "\n"
}

@Suite("Input devices waiting for a root port, a real QEMU and umockdev", .serialized)
struct DaemonPortWaitTests {
    /// The PS/2 keyboard's testbed, a QEMU whose only evdev root port (ep1) holds an input device
    /// under `held` (as an earlier run left it), and a daemon for it (`-d`, unplug deadline 0.5 s).
    static func oneEvdevPort(held: String, daemonArguments: [String] = []) async throws -> (Testbed, QEMUInstance, DaemonProcess) {
        let tb = await Testbed.make()
        try tb.add(file: fixtures + "/ps2-keyboard.umockdev")
        let qemu = try QEMUInstance(testbed: tb, extraArgs: ["-device", "pcie-root-port,id=ep1,chassis=1",
                                                             "-device", "virtio-rng-pci,id=\(held),bus=ep1"])
        let config = qemu.dir + "/vhotplug.conf"
        try """
            {"evdevPassthrough": {"targetVm": "vm1", "pcieBusPrefix": "ep"},
             "vms": [{"name": "vm1", "type": "qemu", "socket": "\(qemu.qmpPath)"}]}
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let d = try DaemonProcess(arguments: daemonArguments + ["-c", config, "-d"], testbed: tb,
                                  environment: ["VHOTPLUG_UNPLUG_TIMEOUT": "0.5"])
        return (tb, qemu, d)
    }

    @Test("two input devices wait for vm1's only evdev port; when it frees, the first waiter's attach fails for another reason (QEMU refuses its node): the port is still free, and the second waiter is tried (before, it waited for another departure)")
    func nextWaiterAfterAFailedRetry() async throws {
        // ep1 holds the fixture's keyboard under vhotplug's id, as an earlier run would have left it.
        let (tb, qemu, d) = try await Self.oneEvdevPort(held: "vhp-evdev-input0-event0")
        try d.waitFor("input event0 \"AT Translated Set 2 keyboard\": found in VM vm1 as vhp-evdev-input0-event0")
        try d.waitFor("; listening (")
        for (serio, n) in [(1, 5), (2, 6)] {
            try tb.add(record: try ps2Keyboard(serio: serio, number: n))
            try d.waitFor("input event\(n) \"AT Translated Set 2 keyboard\": attach to vm1 failed: VM vm1: no free pcie-root-port with an id starting with \"ep\" for /dev/input/event\(n); its root ports: ep1 (in use); tried again when a device leaves vm1")
        }
        // The keyboard in ep1 leaves; the paused guest lets go of it at a reset.
        var mark = d.mark
        tb.unplug("/sys/devices/platform/i8042/serio0")
        try d.waitFor("input event0 \"AT Translated Set 2 keyboard\": detach from vm1 failed", from: mark)
        _ = try qemu.observe("system_reset")
        try d.waitFor("input event0 \"AT Translated Set 2 keyboard\": vm1 let go of vhp-evdev-input0-event0 after the detach's deadline", from: mark)
        // The first waiter gets its turn, and QEMU refuses umockdev's node...
        try d.waitFor("input event5 \"AT Translated Set 2 keyboard\": a device left vm1; attaching again", from: mark)
        mark = try d.waitFor("input event5 \"AT Translated Set 2 keyboard\": attach to vm1 failed: VM vm1: device_add failed: GenericError: \"/dev/input/event5: is not an evdev device\"", from: mark)
        // ...so ep1 is still free: the next waiter is tried on it.
        try d.waitFor(#""driver":"virtio-input-host-pci","evdev":"/dev/input/event6","id":"vhp-evdev-input6-event6","bus":"ep1""#, from: mark)
        #expect(try qemu.attachedIds() == [])
    }

    @Test("a restarted daemon removes a stale input device from vm1's only evdev port without waiting for the guest; the keyboard it then cannot place is tried again once the guest lets go of the stale one (before, nothing noticed: it waited for another departure)")
    func staleRemovalFreesAPort() async throws {
        // ep1 holds an input device an earlier run attached, of a keyboard no longer on the host.
        let (_, qemu, d) = try await Self.oneEvdevPort(held: "vhp-evdev-input9-event9", daemonArguments: ["-a"])
        try d.waitFor("VM vm1: removing stale vhp-evdev-input9-event9 (its device is gone)")
        // The paused guest does not let go of it: the keyboard finds no port.
        try d.waitFor("input event0 \"AT Translated Set 2 keyboard\": attach to vm1 failed: VM vm1: no free pcie-root-port with an id starting with \"ep\" for /dev/input/event0; its root ports: ep1 (in use); tried again when a device leaves vm1")
        let mark = d.mark
        _ = try qemu.observe("system_reset")
        try d.waitFor("input event0 \"AT Translated Set 2 keyboard\": a device left vm1; attaching again", from: mark)
        try d.waitFor(#""driver":"virtio-input-host-pci","evdev":"/dev/input/event0","id":"vhp-evdev-input0-event0","bus":"ep1""#, from: mark)
    }
}
