import Foundation
import Testing
import VHotplugTestSupport

let fixtures = Repository.root + "/Tests/HostDevicesTests/Fixtures"
let receiverPath = "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-2"

/// A configuration: HID mice to vm1 (the receiver has a mouse interface), or what `rules` says.
func writeConfig(_ dir: String, socket: String, allow: String = #"{"interfaceClass": 3, "interfaceProtocol": 2, "description": "HID mouse"}"#,
                 deny: String = "") throws -> String {
    let path = dir + "/vhotplug.conf"
    try """
        {
          "usbPassthrough": [{"description": "Input for vm1", "targetVm": "vm1", "allow": [\(allow)], "deny": [\(deny)]}],
          "vms": [{"name": "vm1", "type": "qemu", "socket": "\(socket)"}],
        }
        """.write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

/// A testbed, a paused QEMU inside it, and a configuration; the daemon is started by each test.
struct Rig {
    let tb: Testbed
    let qemu: QEMUInstance
    let config: String

    init() async throws {
        tb = await Testbed.make()
        qemu = try QEMUInstance(testbed: tb)
        config = try writeConfig(qemu.dir, socket: qemu.qmpPath)
    }

    func daemon(_ extra: [String] = []) throws -> DaemonProcess {
        let d = try DaemonProcess(arguments: ["-c", config, "-d"] + extra, testbed: tb)
        try d.waitFor("listening")
        return d
    }

    /// Plugs the receiver again: its records only (the controller and root hubs
    /// stay), with a new address and new node numbers, as a real replug gets.
    func replugReceiver(_ round: Int = 1) throws {
        let text = try String(contentsOfFile: fixtures + "/logitech-unifying.umockdev", encoding: .utf8)
        var records = text.components(separatedBy: "\n\n").filter {
            $0.hasPrefix("P: /devices/pci0000:00/0000:00:14.0/usb1/1-2")
        }.joined(separator: "\n\n") + "\n"
        let devnum = 4 + round
        let padded = String(format: "%03d", devnum)
        records = records.replacingOccurrences(of: "bus/usb/001/004", with: "bus/usb/001/\(padded)")
            .replacingOccurrences(of: "DEVNUM=004", with: "DEVNUM=\(padded)")
            .replacingOccurrences(of: "devnum=4\\n", with: "devnum=\(devnum)\\n")
        for node in ["hidraw", "event", "mouse"] {
            for n in (0..<10).reversed() {
                records = records.replacingOccurrences(of: "\(node)\(n)\n", with: "\(node)\(n + 10 * round)\n")
                    .replacingOccurrences(of: "/\(node)\(n)/", with: "/\(node)\(n + 10 * round)/")
            }
        }
        try tb.add(record: records)
    }

    /// Unplugs the receiver: the remove event first, then the device goes.
    func unplugReceiver() {
        tb.unplug(receiverPath)
    }
}

@Suite("The daemon with USB devices, a real QEMU and umockdev", .serialized)
struct DaemonUSBTests {
    @Test("plug, unplug, replug: attached, detached, attached again")
    func plugUnplug() async throws {
        let rig = try await Rig()
        let d = try rig.daemon()
        try rig.tb.add(file: fixtures + "/logitech-unifying.umockdev")
        try d.waitFor("usb 1-2 046d:c52b")
        try d.waitFor("attached to vm1 as vhp-usb-1-2")
        #expect(try rig.qemu.attachedIds() == ["vhp-usb-1-2"])
        #expect(d.log.contains { $0.contains("-> vm1") || $0.contains("vm1 (rule set 0 \"Input for vm1\", allow[0] \"HID mouse\")") })
        // Hubs are never attached.
        #expect(!d.log.contains { $0.contains("attached to vm1 as vhp-usb-usb") })

        let mark = d.mark
        rig.unplugReceiver()
        try d.waitFor("detached from vm1 (vhp-usb-1-2)", from: mark)
        #expect(try rig.qemu.attachedIds() == [])

        let mark2 = d.mark
        try rig.replugReceiver()
        try d.waitFor("attached to vm1 as vhp-usb-1-2", from: mark2)
        #expect(try rig.qemu.attachedIds() == ["vhp-usb-1-2"])
        #expect(d.stop() == 0)
        // SIGTERM leaves attached devices with their VM.
        #expect(try rig.qemu.attachedIds() == ["vhp-usb-1-2"])
    }

    @Test("a denied device is not attached, and the log says which deny entry stopped it")
    func denied() async throws {
        let rig = try await Rig()
        _ = try writeConfig(rig.qemu.dir, socket: rig.qemu.qmpPath,
                            deny: #"{"vendorId": "046d", "productId": "c52b", "description": "Unifying stays"}"#)
        let d = try rig.daemon()
        try rig.tb.add(file: fixtures + "/logitech-unifying.umockdev")
        try d.waitFor("denied by rule set 0 \"Input for vm1\", deny[0] \"Unifying stays\"")
        #expect(try rig.qemu.attachedIds() == [])
        #expect(!d.log.contains { $0.contains("attached to") })
    }

    @Test("-a attaches what is already connected at start")
    func attachConnected() async throws {
        let rig = try await Rig()
        try rig.tb.add(file: fixtures + "/logitech-unifying.umockdev")
        let d = try rig.daemon(["-a"])
        try d.waitFor("attached to vm1 as vhp-usb-1-2")
        #expect(try rig.qemu.attachedIds() == ["vhp-usb-1-2"])
    }

    @Test("without -a, a connected device stays on the host")
    func noAttachConnected() async throws {
        let rig = try await Rig()
        try rig.tb.add(file: fixtures + "/logitech-unifying.umockdev")
        let d = try rig.daemon()
        #expect(try rig.qemu.attachedIds() == [])
        #expect(!d.log.contains { $0.contains("attached to") })
    }

    @Test("a VM killed and restarted gets its device back without replugging")
    func vmRestart() async throws {
        let rig = try await Rig()
        let d = try rig.daemon()
        try rig.tb.add(file: fixtures + "/logitech-unifying.umockdev")
        try d.waitFor("attached to vm1 as vhp-usb-1-2")
        rig.qemu.stop()
        let mark = d.mark
        try rig.qemu.start()
        try d.waitFor("attached to vm1 as vhp-usb-1-2", from: mark)
        #expect(try rig.qemu.attachedIds() == ["vhp-usb-1-2"])
    }

    @Test("a VM down when the device comes: attached once the VM starts")
    func vmDownThenUp() async throws {
        let rig = try await Rig()
        rig.qemu.stop()
        let d = try rig.daemon()
        try rig.tb.add(file: fixtures + "/logitech-unifying.umockdev")
        try d.waitFor("VM vm1 is not running; waiting for it")
        let mark = d.mark
        try rig.qemu.start()
        try d.waitFor("attached to vm1 as vhp-usb-1-2", from: mark)
        #expect(try rig.qemu.attachedIds() == ["vhp-usb-1-2"])
    }

    @Test("a restarted vhotplug finds what it attached: no double attach; a stale id is removed")
    func daemonRestart() async throws {
        let rig = try await Rig()
        var d = try rig.daemon()
        try rig.tb.add(file: fixtures + "/logitech-unifying.umockdev")
        try d.waitFor("attached to vm1 as vhp-usb-1-2")
        d.stop()
        d = try rig.daemon()
        #expect(d.log.contains { $0.contains("found in VM vm1 as vhp-usb-1-2") })
        #expect(!d.log.contains { $0.contains("attached to") })
        #expect(try rig.qemu.attachedIds() == ["vhp-usb-1-2"])
        d.stop()
        // The device goes while vhotplug is down: its id is stale at the next start.
        rig.unplugReceiver()
        d = try rig.daemon()
        #expect(d.log.contains { $0.contains("removing stale vhp-usb-1-2") })
        #expect(try rig.qemu.attachedIds() == [])
    }

    @Test("SIGHUP with a changed rule moves the device; a bad configuration is rejected and the old one stays")
    func reload() async throws {
        let rig = try await Rig()
        let d = try rig.daemon()
        try rig.tb.add(file: fixtures + "/logitech-unifying.umockdev")
        try d.waitFor("attached to vm1 as vhp-usb-1-2")

        try "{ \"vms\": [ }".write(toFile: rig.config, atomically: true, encoding: .utf8)
        var mark = d.mark
        d.signal(SIGHUP)
        try d.waitFor("reload rejected", from: mark)
        #expect(try rig.qemu.attachedIds() == ["vhp-usb-1-2"])

        _ = try writeConfig(rig.qemu.dir, socket: rig.qemu.qmpPath, deny: #"{"vendorId": "046d", "description": "no Logitech"}"#)
        mark = d.mark
        d.signal(SIGHUP)
        try d.waitFor("configuration reloaded", from: mark)
        try d.waitFor("detached from vm1", from: mark)
        #expect(try rig.qemu.attachedIds() == [])
    }

    @Test("a device unplugged while its attach is in flight ends detached, nothing left behind")
    func unplugDuringAttach() async throws {
        let rig = try await Rig()
        let d = try rig.daemon()
        try rig.tb.add(file: fixtures + "/logitech-unifying.umockdev")
        rig.unplugReceiver()              // at once: the attach may be in flight, or not started
        let mark = d.mark
        try rig.replugReceiver(1)         // the same port, a new address (5)
        try d.waitFor("attached to vm1 as vhp-usb-1-2", from: mark)
        // Whatever happened to the first plug, the VM now holds exactly the second one.
        #expect(try rig.qemu.attachedIds() == ["vhp-usb-1-2"])
        let addr = try rig.qemu.observe("qom-get", #"{"path": "/machine/peripheral/vhp-usb-1-2", "property": "hostaddr"}"#)
        #expect(addr["return"] as? Int == 5)
    }
}
