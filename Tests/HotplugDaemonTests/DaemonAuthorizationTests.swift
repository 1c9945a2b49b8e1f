import Foundation
import Testing
import VHotplugTestSupport

/// usbAuthorization with umockdev and a real (paused) QEMU: the testbed's sysfs files
/// are plain files, so what the daemon writes to `authorized_default` and `authorized`
/// is read back as it left it (no kernel acts on it: the lab does that, Test7).
struct AuthRig {
    static let usb1 = "/devices/pci0000:00/0000:00:14.0/usb1"
    static let usb2 = "/devices/pci0000:00/0000:00:14.0/usb2"
    let tb: Testbed
    let qemu: QEMUInstance
    let config: String

    /// The controller and its root hubs; with `receiver`, the (authorized) receiver too.
    init(receiver: Bool = false) async throws {
        tb = await Testbed.make()
        let text = try String(contentsOfFile: fixtures + "/logitech-unifying.umockdev", encoding: .utf8)
        let records = text.components(separatedBy: "\n\n").filter { receiver || !$0.hasPrefix("P: " + Self.usb1 + "/1-2") }
        try tb.add(record: records.joined(separator: "\n\n") + "\n")
        qemu = try QEMUInstance(testbed: tb)
        config = qemu.dir + "/vhotplug.conf"
    }

    /// HID mice to vm1 (or `allow`), with `auth` as the usbAuthorization object.
    /// A daemon with the feature on, killed (SIGKILL) once it has set authorized_default to 0.
    func killedWithDefaultsAtZero() throws {
        try write(auth: #"{"enable": true}"#)
        let first = try daemon()
        try first.waitFor("USB authorization: new USB devices are not authorized on the host")
        first.signal(SIGKILL)
        _ = first.process.wait()
    }

    func write(auth: String, allow: String = #"{"interfaceClass": 3, "interfaceProtocol": 2, "description": "HID mouse"}"#) throws {
        try """
            {
              "usbPassthrough": [{"targetVm": "vm1", "allow": [\(allow)]}],
              "vms": [{"name": "vm1", "type": "qemu", "socket": "\(qemu.qmpPath)"}],
              "usbAuthorization": \(auth),
            }
            """.write(toFile: config, atomically: true, encoding: .utf8)
    }

    func daemon(environment: [String: String] = [:]) throws -> DaemonProcess {
        let d = try DaemonProcess(arguments: ["-c", config, "-d"], testbed: tb, environment: environment)
        try d.waitFor("; listening (")
        return d
    }

    /// A sysfs attribute as the testbed holds it.
    func attribute(_ devpath: String, _ name: String) -> String {
        ((try? String(contentsOfFile: tb.sysRoot + devpath + "/" + name, encoding: .utf8)) ?? "<missing>")
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Authorization on, the daemon started, and the receiver plugged (unauthorized) and attached to vm1.
    func daemonWithReceiverInVM1() throws -> DaemonProcess {
        try write(auth: #"{"enable": true}"#)
        let d = try daemon()
        try plugUnauthorizedReceiver()
        try d.waitFor("attached to vm1 as vhp-usb-1-2")
        return d
    }

    /// Plugs the receiver as an unauthorized device arrives: its device record only
    /// (no interfaces, no driver), `authorized` 0 and no active configuration. `round`: plugged
    /// again, at the next address (`receiverRecords`).
    func plugUnauthorizedReceiver(round: Int = 0) throws {
        let text = try String(contentsOfFile: fixtures + "/logitech-unifying.umockdev", encoding: .utf8)
        let device = round == 0 ? text.components(separatedBy: "\n\n").first { $0.hasPrefix("P: " + receiverDevpath + "\n") }!
                                : try receiverRecords(round, interfaces: false)
        let record = device.split(separator: "\n").filter { !$0.hasPrefix("L: driver=") && !$0.hasPrefix("E: DRIVER=") }
            .joined(separator: "\n")
            .replacingOccurrences(of: "A: authorized=1\\n", with: "A: authorized=0\\n")
            .replacingOccurrences(of: "A: bConfigurationValue=1\\n", with: "A: bConfigurationValue=\\n")
        try tb.add(record: record + "\n")
    }
}

extension AuthRig {
    /// Plugs, at the receiver's port and as an unauthorized device, one of device class 9 whose
    /// `descriptors` are `descriptors` (hex; their device descriptor says how many configurations).
    func plugUnauthorizedHubClass(descriptors hex: String) throws {
        let text = try String(contentsOfFile: fixtures + "/logitech-unifying.umockdev", encoding: .utf8)
        let device = text.components(separatedBy: "\n\n").first { $0.hasPrefix("P: " + receiverDevpath + "\n") }!
        let configurations = Int(hex.dropFirst(34).prefix(2), radix: 16) ?? 1
        let record = device.split(separator: "\n")
            .filter { !$0.hasPrefix("L: driver=") && !$0.hasPrefix("E: DRIVER=") && !$0.hasPrefix("H: descriptors=") && !$0.hasPrefix("N: ") }
            .joined(separator: "\n")
            .replacingOccurrences(of: "A: authorized=1\\n", with: "A: authorized=0\\n")
            .replacingOccurrences(of: "A: bConfigurationValue=1\\n", with: "A: bConfigurationValue=\\n")
            .replacingOccurrences(of: "A: bDeviceClass=00\\n", with: "A: bDeviceClass=09\\n")
            .replacingOccurrences(of: "A: bNumConfigurations=1\\n", with: "A: bNumConfigurations=\(configurations)\\n")
            .replacingOccurrences(of: "E: TYPE=0/0/0", with: "E: TYPE=9/0/1")
        try tb.add(record: record + "\nH: descriptors=" + hex + "\n")
    }
}

let receiverDevpath = "/devices/pci0000:00/0000:00:14.0/usb1/1-2"

@Suite("usbAuthorization: the daemon with umockdev and a real QEMU", .serialized)
struct DaemonAuthorizationTests {
    @Test("authorized_default is 0 on every root hub while the daemon runs, and written back when it stops")
    func defaultsWrittenAndRestored() async throws {
        let rig = try await AuthRig()
        try rig.write(auth: #"{"enable": true}"#)
        #expect(rig.attribute(AuthRig.usb1, "authorized_default") == "1")
        let d = try rig.daemon()
        try d.waitFor("USB authorization: new USB devices are not authorized on the host (authorized_default = 0 on usb1, usb2)")
        #expect(rig.attribute(AuthRig.usb1, "authorized_default") == "0")
        #expect(rig.attribute(AuthRig.usb2, "authorized_default") == "0")
        #expect(d.stop() == 0)
        #expect(d.log.contains { $0.contains("USB authorization: authorized_default restored (usb1 = 1, usb2 = 1)") })
        #expect(rig.attribute(AuthRig.usb1, "authorized_default") == "1")
        #expect(rig.attribute(AuthRig.usb2, "authorized_default") == "1")
    }

    @Test("a daemon killed with authorized_default at 0: the next one writes back the values from before the first, not its 0s")
    func defaultsRestoredAfterAKill() async throws {
        let rig = try await AuthRig()
        try rig.killedWithDefaultsAtZero()
        #expect(rig.attribute(AuthRig.usb1, "authorized_default") == "0")   // what a killed daemon leaves
        let second = try rig.daemon()
        #expect(second.log.contains { $0.contains("USB authorization: an earlier vhotplug did not restore authorized_default") })
        #expect(second.stop() == 0)
        #expect(second.log.contains { $0.contains("USB authorization: authorized_default restored (usb1 = 1, usb2 = 1)") }, "\(second.log)")
        #expect(rig.attribute(AuthRig.usb1, "authorized_default") == "1")
        #expect(rig.attribute(AuthRig.usb2, "authorized_default") == "1")
        // Restored: a third start reads the files as they are (nothing recorded is left).
        let third = try rig.daemon()
        #expect(!third.log.contains { $0.contains("an earlier vhotplug did not restore") })
        #expect(third.stop() == 0)
        #expect(rig.attribute(AuthRig.usb1, "authorized_default") == "1")
    }

    @Test("a daemon killed with authorized_default at 0, restarted with usbAuthorization off: it writes back the values from before at its start (before, they stayed 0 with nothing to restore them)")
    func defaultsRestoredAfterAKillWhenOff() async throws {
        let rig = try await AuthRig()
        try rig.killedWithDefaultsAtZero()
        #expect(rig.attribute(AuthRig.usb1, "authorized_default") == "0")
        try rig.write(auth: #"{"enable": false}"#)
        let second = try rig.daemon()
        #expect(second.log.contains { $0.contains("USB authorization: an earlier vhotplug did not restore authorized_default") }, "\(second.log)")
        #expect(second.log.contains { $0.contains("USB authorization: authorized_default restored (usb1 = 1, usb2 = 1)") }, "\(second.log)")
        #expect(rig.attribute(AuthRig.usb1, "authorized_default") == "1")
        #expect(rig.attribute(AuthRig.usb2, "authorized_default") == "1")
        #expect(!FileManager.default.fileExists(atPath: rig.tb.root + "/usb-authorized-default"))
        #expect(second.stop() == 0)
        #expect(rig.attribute(AuthRig.usb1, "authorized_default") == "1")
    }

    @Test("a controller whose add event the daemon missed (events lost), found by a rescan (a reload): its authorized_default is written back at the stop as usbcore would have given it (before, the 0 it had from usbcore was taken as its value from before)")
    func rootHubFoundByRescan() async throws {
        let rig = try await AuthRig()
        let usbcore = rig.tb.sysRoot + "/module/usbcore/parameters"
        try FileManager.default.createDirectory(atPath: usbcore, withIntermediateDirectories: true)
        try "-1\n".write(toFile: usbcore + "/authorized_default", atomically: false, encoding: .utf8)
        try rig.write(auth: #"{"enable": true}"#)
        let d = try rig.daemon()
        try d.waitFor("USB authorization: new USB devices are not authorized on the host (authorized_default = 0 on usb1, usb2, usbcore)")
        // A third root hub, with the 0 usbcore gives it now; the daemon gets no event of it.
        let text = try String(contentsOfFile: fixtures + "/logitech-unifying.umockdev", encoding: .utf8)
        let records = text.components(separatedBy: "\n\n").filter {
            $0.hasPrefix("P: " + AuthRig.usb1 + "\n") || $0.hasPrefix("P: " + AuthRig.usb1 + "/1-0:1.0\n")
        }
        #expect(records.count == 2)
        let usb3 = records.joined(separator: "\n\n")
            .replacingOccurrences(of: "/usb1", with: "/usb3").replacingOccurrences(of: "1-0:1.0", with: "3-0:1.0")
            .replacingOccurrences(of: "bus/usb/001/", with: "bus/usb/003/").replacingOccurrences(of: "BUSNUM=001", with: "BUSNUM=003")
            .replacingOccurrences(of: "A: busnum=1\\n", with: "A: busnum=3\\n")
            .replacingOccurrences(of: "A: authorized_default=1\\n", with: "A: authorized_default=0\\n")
        let held = rig.tb.holdListeners(of: d.pid)
        try rig.tb.add(record: usb3 + "\n")
        rig.tb.releaseListeners(held)
        #expect(!d.log.contains { $0.contains("usb usb3") })
        let mark = d.mark
        d.signal(SIGHUP)
        try d.waitFor("usb usb3 1d6b:0002", from: mark)
        #expect(d.stop() == 0)
        #expect(d.log.contains { $0.contains("USB authorization: authorized_default restored (usb1 = 1, usb2 = 1, usbcore = -1, usb3 = 1)") }, "\(d.log)")
        #expect(rig.attribute(AuthRig.usb1.replacingOccurrences(of: "/usb1", with: "/usb3"), "authorized_default") == "1")
        #expect(rig.attribute(AuthRig.usb1, "authorized_default") == "1")
    }

    @Test("an API listener that cannot be made stops the start before any device is touched: exit 1, authorized_default as it was, nothing attached")
    func apiFailureTouchesNothing() async throws {
        let rig = try await AuthRig(receiver: true)
        // A regular file where the API's socket goes: the daemon refuses to replace it.
        let socket = rig.qemu.dir + "/api.sock"
        #expect(FileManager.default.createFile(atPath: socket, contents: Data("not a socket".utf8)))
        try """
            {
              "usbPassthrough": [{"targetVm": "vm1", "allow": [{"interfaceClass": 3, "interfaceProtocol": 2}]}],
              "vms": [{"name": "vm1", "type": "qemu", "socket": "\(rig.qemu.qmpPath)"}],
              "usbAuthorization": {"enable": true},
              "general": {"api": {"unixSocket": "\(socket)"}},
            }
            """.write(toFile: rig.config, atomically: true, encoding: .utf8)
        let d = try DaemonProcess(arguments: ["-c", rig.config, "-a"], testbed: rig.tb)
        try d.waitFor("vhotplug: cannot start: \(socket) exists and is not a socket")
        #expect(d.process.wait() == 1)
        #expect(rig.attribute(AuthRig.usb1, "authorized_default") == "1")
        #expect(rig.attribute(AuthRig.usb2, "authorized_default") == "1")
        #expect(!d.log.contains { $0.contains("USB authorization") || $0.contains("attach") }, "\(d.log)")
        #expect(try rig.qemu.attachedIds() == [])
        #expect(try String(contentsOfFile: socket, encoding: .utf8) == "not a socket")
    }

    @Test("off (enable false): authorized_default is not touched")
    func disabledTouchesNothing() async throws {
        let rig = try await AuthRig()
        try rig.write(auth: #"{"enable": false, "hostAllow": [{"vendorId": "046d"}]}"#)
        // (Unauthorized, it has no interfaces: decided when the wait for them ends.)
        let d = try rig.daemon(environment: ["VHOTPLUG_INTERFACE_WAIT": "0.5"])
        try rig.plugUnauthorizedReceiver()
        try d.waitFor("usb 1-2 046d:c52b", timeout: 20)
        #expect(rig.attribute(AuthRig.usb1, "authorized_default") == "1")
        #expect(rig.attribute(receiverDevpath, "authorized") == "0")
        #expect(!d.log.contains { $0.contains("USB authorization:") || $0.contains("authorized on the host") })
    }

    @Test("an unmatched device stays unauthorized, decided at once on its descriptors (no 5 s wait for interfaces)")
    func unmatchedStaysUnauthorized() async throws {
        let rig = try await AuthRig()
        try rig.write(auth: #"{"enable": true}"#, allow: #"{"vendorId": "1234"}"#)
        let d = try rig.daemon()
        try rig.plugUnauthorizedReceiver()
        try d.waitFor("usb 1-2 046d:c52b \"Logitech\" \"USB Receiver\": stays unauthorized on the host (no rule sends it to a VM, no hostAllow entry matches)")
        #expect(rig.attribute(receiverDevpath, "authorized") == "0")
        #expect(!d.log.contains { $0.contains("interfaces incomplete") || $0.contains("waiting for their events") })
        #expect(try rig.qemu.attachedIds() == [])
    }

    @Test("devices decided on their descriptors (unauthorized) still let libusb free what it keeps of devices that left: its hotplug messages are handled at each such read, not only at reads of configured devices (before, never again after the start: one device kept for each plug, for months)")
    func libusbMessagesHandled() async throws {
        let rig = try await AuthRig()
        try rig.write(auth: #"{"enable": true}"#, allow: #"{"vendorId": "1234"}"#)
        // libusb's debug log says when it frees a device ("destroy device BUS.ADDRESS").
        let d = try rig.daemon(environment: ["LIBUSB_DEBUG": "4"])
        let stays = "usb 1-2 046d:c52b \"Logitech\" \"USB Receiver\": stays unauthorized on the host"
        try rig.plugUnauthorizedReceiver()
        try d.waitFor(stays)
        let mark = d.mark
        rig.tb.unplug("/sys" + receiverDevpath)
        try d.waitFor("usb 1-2 046d:c52b \"Logitech\" \"USB Receiver\": unplugged", from: mark)
        // libusb's own thread has heard of the departure (it queues its message for event handling).
        try d.waitFor("udev hotplug event. action: remove.", from: mark)
        let again = d.mark
        try rig.plugUnauthorizedReceiver()
        try d.waitFor(stays, from: again)
        try d.waitFor("destroy device 1.4", from: mark, timeout: 10)
    }

    /// A keyboard that says "hub" where vhotplug reads and "keyboard" where the kernel looks,
    /// once authorized: its device class is 9 and the first configuration's interfaces (alternate
    /// setting 0) are a hub's, but the kernel would configure a HID keyboard interface.
    static let fakeHubs: [(String, String)] = [
        // Two configurations: the kernel prefers the second (a UAC3 one; or the first draws more
        // than the port gives), whose interface 1 is a keyboard.
        ("two configurations", "12010002090001406D042BC5111200010002"
            + "09021900010100E0FA" + "090400000109000000" + "0705810301000C"
            + "09021B00020200A032" + "090400000001013000" + "090401000003010100"),
        // Interface 1 has no alternate setting 0: the kernel takes its first one, a keyboard.
        ("an interface without alternate setting 0", "12010002090001406D042BC5111200010001"
            + "09021B00020100A032" + "090400000009000000" + "090401010003010100"),
        // A configuration header inside the configuration: the kernel skips it and goes on.
        ("a configuration header inside the configuration", "12010002090001406D042BC5111200010001"
            + "09022400020100A032" + "090400000009000000" + "090209000000000000" + "090401000003010100"),
    ]

    @Test("a device that says \"hub\" only in part (its first configuration, alternate setting 0) is no hub: it stays unauthorized (before, it was authorized as a hub, and the kernel configured its keyboard)",
          arguments: 0..<fakeHubs.count)
    func fakeHubStaysUnauthorized(_ index: Int) async throws {
        let (what, hex) = Self.fakeHubs[index]
        let rig = try await AuthRig()
        try rig.write(auth: #"{"enable": true}"#, allow: #"{"vendorId": "1234"}"#)
        let d = try rig.daemon()
        try rig.plugUnauthorizedHubClass(descriptors: hex)
        let outcome = try d.waitFor(anyOf: ["usb 1-2 046d:c52b \"Logitech\" \"USB Receiver\": stays unauthorized on the host",
                                            "usb 1-2 046d:c52b \"Logitech\" \"USB Receiver\": authorized on the host"])
        #expect(outcome.text.hasSuffix("stays unauthorized on the host"), "\(what): \(d.log)")
        #expect(!d.log.contains { $0.contains("a hub: devices behind it must enumerate") }, "\(what)")
        #expect(d.stop() == 0)
        #expect(rig.attribute(receiverDevpath, "authorized") == "0", "\(what)")
    }

    @Test("a hub (every interface of its one configuration a hub's) is authorized when it arrives")
    func hubAuthorized() async throws {
        let rig = try await AuthRig()
        try rig.write(auth: #"{"enable": true}"#, allow: #"{"vendorId": "1234"}"#)
        let d = try rig.daemon()
        // (usb-hub.umockdev's hub, with a second alternate setting, multi-TT, as many hubs have.)
        try rig.plugUnauthorizedHubClass(descriptors: "1201000209000140E305080660600001000109022900010100E032"
                                         + "0904000001090000000705810301000C" + "0904000101090200000705810301000C")
        try d.waitFor("usb 1-2 046d:c52b \"Logitech\" \"USB Receiver\": authorized on the host (a hub: devices behind it must enumerate)")
        #expect(rig.attribute(receiverDevpath, "authorized") == "1")
    }

    @Test("a hostAllow device is authorized when it arrives")
    func hostAllowAuthorized() async throws {
        let rig = try await AuthRig()
        try rig.write(auth: #"{"enable": true, "hostAllow": [{"vendorId": "046d", "productId": "c52b"}]}"#, allow: #"{"vendorId": "1234"}"#)
        let d = try rig.daemon()
        try rig.plugUnauthorizedReceiver()
        try d.waitFor("usb 1-2 046d:c52b \"Logitech\" \"USB Receiver\": authorized on the host (a hostAllow entry matches)")
        #expect(rig.attribute(receiverDevpath, "authorized") == "1")
        #expect(try rig.qemu.attachedIds() == [])
    }

    @Test("a device going to a VM: matched on its descriptors' interfaces, authorized before device_add, de-authorized after it leaves the VM")
    func authorizedForTheVM() async throws {
        let rig = try await AuthRig()
        let d = try rig.daemonWithReceiverInVM1()
        #expect(try rig.qemu.attachedIds() == ["vhp-usb-1-2"])
        #expect(rig.attribute(receiverDevpath, "authorized") == "1")
        let log = d.log
        let authorized = try #require(log.firstIndex { $0.contains("usb 1-2 046d:c52b \"Logitech\" \"USB Receiver\": authorized on the host (going to vm1)") })
        let deviceAdd = try #require(log.firstIndex { $0.contains("qmp vm1 -> ") && $0.contains("device_add") })
        #expect(authorized < deviceAdd)
        #expect(log.contains { $0.contains("stays unauthorized on the host until it is attached to vm1") })
        #expect(!log.contains { $0.contains("interfaces incomplete") })

        // The rule goes (a reload): the device leaves vm1, and goes off the host again.
        let mark = d.mark
        try rig.write(auth: #"{"enable": true}"#, allow: #"{"vendorId": "1234"}"#)
        d.signal(SIGHUP)
        let detached = try d.waitFor("detached from vm1 (vhp-usb-1-2)", from: mark)
        let deauthorized = try d.waitFor("de-authorized on the host (it left vm1)", from: mark)
        // (The test's barrier, `waitForIdle`, comes after what the detach's task did next.)
        #expect(try d.waitForIdle(from: detached) > deauthorized)
        #expect(rig.attribute(receiverDevpath, "authorized") == "0")
        #expect(try rig.qemu.attachedIds() == [])

        // Unplugged while in the VM: nothing is written to a device that is gone.
        let mark2 = d.mark
        try rig.write(auth: #"{"enable": true}"#)
        d.signal(SIGHUP)
        try d.waitFor("attached to vm1 as vhp-usb-1-2", from: mark2)
        rig.tb.unplug("/sys" + receiverDevpath)
        try d.waitForIdle(from: try d.waitFor("detached from vm1 (vhp-usb-1-2)", from: mark2))
        #expect(!d.log[mark2...].contains { $0.contains("de-authorized") })
    }

    @Test("a VM that stops: the device it had waits for it off the host, and is authorized again when it is back")
    func vmStops() async throws {
        let rig = try await AuthRig()
        let d = try rig.daemonWithReceiverInVM1()
        let mark = d.mark
        rig.qemu.stop()
        try d.waitFor("VM vm1: socket removed", from: mark)
        try d.waitFor("de-authorized on the host (it left vm1)", from: mark)
        #expect(rig.attribute(receiverDevpath, "authorized") == "0")
        try rig.qemu.start()
        try d.waitFor("authorized on the host (going to vm1)", from: mark)
        try d.waitFor("attached to vm1 as vhp-usb-1-2", from: mark)
        #expect(rig.attribute(receiverDevpath, "authorized") == "1")
    }

    @Test("a VM killed (its socket file left behind), then a reload no rule of which takes the device: the detach finds the VM gone, and the device goes off the host")
    func vmGoneThenUnwanted() async throws {
        let rig = try await AuthRig()
        let d = try rig.daemonWithReceiverInVM1()
        #expect(rig.attribute(receiverDevpath, "authorized") == "1")
        kill(rig.qemu.pid, SIGKILL)
        try rig.write(auth: #"{"enable": true}"#, allow: #"{"vendorId": "1234"}"#)
        let mark = d.mark
        d.signal(SIGHUP)
        try d.waitFor("configuration reloaded", from: mark)
        try d.waitFor("de-authorized on the host (it left vm1)", from: mark)
        #expect(rig.attribute(receiverDevpath, "authorized") == "0")
    }

    @Test("deauthorizeUnmatched: a connected device no rule and no hostAllow entry matches is de-authorized at start; hubs are not")
    func deauthorizeUnmatchedAtStart() async throws {
        let rig = try await AuthRig(receiver: true)
        try rig.write(auth: #"{"enable": true, "deauthorizeUnmatched": true}"#, allow: #"{"vendorId": "1234"}"#)
        #expect(rig.attribute(receiverDevpath, "authorized") == "1")
        let d = try rig.daemon()
        #expect(d.log.contains { $0.contains("usb 1-2 046d:c52b \"Logitech\" \"USB Receiver\": de-authorized on the host (deauthorizeUnmatched: no rule and no hostAllow entry matches)") })
        #expect(rig.attribute(receiverDevpath, "authorized") == "0")
        #expect(rig.attribute(AuthRig.usb1, "authorized") == "1")
        #expect(!d.log.contains { $0.contains("usb usb1") && $0.contains("de-authorized") })
    }

    @Test("deauthorizeUnmatched: a device plugged during the start, after the connected devices were read and before authorized_default was 0 (authorized by the kernel), is de-authorized too (before, it was taken as a new device, and stayed authorized)")
    func deauthorizeUnmatchedPluggedDuringStart() async throws {
        let rig = try await AuthRig()
        try rig.write(auth: #"{"enable": true, "deauthorizeUnmatched": true}"#, allow: #"{"vendorId": "1234"}"#)
        // usb1's authorized_default is a FIFO: the daemon's read of it waits for this test.
        let file = rig.tb.sysRoot + AuthRig.usb1 + "/authorized_default"
        unlink(file)
        #expect(mkfifo(file, 0o644) == 0)
        let d = try DaemonProcess(arguments: ["-c", rig.config, "-d"], testbed: rig.tb)
        let w = open(file, O_WRONLY | O_CLOEXEC)   // returns once the daemon opens it to read
        #expect(w >= 0)
        // Plugged now, authorized by the kernel (authorized_default is still 1).
        let text = try String(contentsOfFile: fixtures + "/logitech-unifying.umockdev", encoding: .utf8)
        try rig.tb.add(record: text.components(separatedBy: "\n\n").filter { $0.hasPrefix("P: " + receiverDevpath) }.joined(separator: "\n\n") + "\n")
        #expect(write(w, "1\n", 2) == 2)
        close(w)
        // The daemon writes its 0: read it, then usb1's file is a plain one again.
        let r = open(file, O_RDONLY | O_CLOEXEC)
        var buffer = [UInt8](repeating: 0, count: 16)
        var got: [UInt8] = []
        while true {
            let n = read(r, &buffer, buffer.count)
            if n <= 0 { break }
            got += buffer[0..<n]
        }
        close(r)
        #expect(String(decoding: got, as: UTF8.self) == "0")
        unlink(file)
        try "0\n".write(toFile: file, atomically: false, encoding: .utf8)
        try d.waitFor("; listening (")
        let name = "usb 1-2 046d:c52b \"Logitech\" \"USB Receiver\""
        let outcome = try d.waitFor(anyOf: ["\(name): de-authorized on the host (deauthorizeUnmatched", "\(name): none"])
        #expect(outcome.text.contains("de-authorized"), "\(d.log)")
        #expect(rig.attribute(receiverDevpath, "authorized") == "0")
        #expect(d.stop() == 0)
        #expect(rig.attribute(AuthRig.usb1, "authorized_default") == "1")
    }

    @Test("turned off by a reload: authorized_default written back, the device kept off the host authorized")
    func reloadTurnsItOff() async throws {
        let rig = try await AuthRig()
        try rig.write(auth: #"{"enable": true}"#, allow: #"{"vendorId": "1234"}"#)
        let d = try rig.daemon()
        try rig.plugUnauthorizedReceiver()
        try d.waitFor("stays unauthorized on the host (no rule")
        let mark = d.mark
        try rig.write(auth: #"{"enable": false}"#, allow: #"{"vendorId": "1234"}"#)
        d.signal(SIGHUP)
        try d.waitFor("authorized on the host (USB authorization turned off)", from: mark)
        #expect(d.log[mark...].contains { $0.contains("USB authorization: authorized_default restored (usb1 = 1, usb2 = 1)") })
        #expect(rig.attribute(AuthRig.usb1, "authorized_default") == "1")
        #expect(rig.attribute(receiverDevpath, "authorized") == "1")
    }

    @Test("a reload during a de-authorization's write (the kernel unconfigures the device inside it) that turns the feature off, or lets a hostAllow entry match: once the write is over, the device is authorized again (before, it stayed off the host until a replug)",
          arguments: [(#"{"enable": false}"#, "USB authorization was turned off during its de-authorization"),
                      (#"{"enable": true, "hostAllow": [{"vendorId": "046d"}]}"#, "a hostAllow entry matches it since its de-authorization began")])
    func reloadDuringDeauthorization(auth: String, why: String) async throws {
        let rig = try await AuthRig()
        try rig.write(auth: #"{"enable": true}"#)
        // Writes of the receiver's `authorized` are held while the gate file exists (Tests/Doubles/slow-store.c).
        let gate = rig.qemu.dir + "/gate"
        let d = try rig.daemon(environment: try slowStoreEnvironment(gate: gate, suffix: "/1-2/authorized"))
        try rig.plugUnauthorizedReceiver()
        try d.waitFor("attached to vm1 as vhp-usb-1-2")
        // A reload that sends it nowhere: it leaves vm1, and its de-authorization is held.
        FileManager.default.createFile(atPath: gate, contents: nil)
        defer { try? FileManager.default.removeItem(atPath: gate) } // (a failed test does not leave the daemon held)
        var mark = d.mark
        try rig.write(auth: #"{"enable": true}"#, allow: #"{"vendorId": "ffff"}"#)
        d.signal(SIGHUP)
        try d.waitFor("slow-store: holding ", from: mark)
        // The reload under test, while the write is under way: it finds the device still authorized.
        mark = d.mark
        try rig.write(auth: auth, allow: #"{"vendorId": "ffff"}"#)
        d.signal(SIGHUP)
        // (It found the device authorized: the kernel's file reads 1 during the store; umockdev's, opened with
        // O_TRUNC by the held write, reads empty, which the daemon takes as authorized too.)
        try d.waitFor("reload: every device decided again, USB authorization applied", from: mark)
        #expect(!d.log[mark...].contains { $0.contains("authorized on the host") })
        // The write ends.
        try FileManager.default.removeItem(atPath: gate)
        try d.waitFor("usb 1-2 046d:c52b \"Logitech\" \"USB Receiver\": authorized on the host (\(why))", from: mark)
        #expect(rig.attribute(receiverDevpath, "authorized") == "1")
        #expect(d.log[mark...].contains { $0.contains("de-authorized on the host (it left vm1)") })
    }

    /// A daemon whose writes of the receiver's `authorized` are held while `gate` (made here)
    /// exists, and the receiver plugged for vm1: its authorization's write is held when this returns.
    func plugWithAuthorizationHeld(_ rig: AuthRig) throws -> (d: DaemonProcess, gate: String, mark: Int) {
        try rig.write(auth: #"{"enable": true}"#)
        let gate = rig.qemu.dir + "/gate"
        let d = try rig.daemon(environment: try slowStoreEnvironment(gate: gate, suffix: "/1-2/authorized"))
        FileManager.default.createFile(atPath: gate, contents: nil)
        let mark = d.mark
        try rig.plugUnauthorizedReceiver()
        try d.waitFor("slow-store: holding ", from: mark)
        return (d, gate, mark)
    }

    @Test("replugged while its authorization for vm1 is written (the kernel configures it inside the write): the device there now is attached, at its own address, not the one that left")
    func repluggedDuringAuthorization() async throws {
        let rig = try await AuthRig()
        let (d, gate, mark) = try plugWithAuthorizationHeld(rig)
        defer { try? FileManager.default.removeItem(atPath: gate) } // (a failed test does not leave the daemon held)
        // Unplugged and plugged again (address 5) while the write is held.
        rig.tb.unplug(receiverPath)
        let unplugged = try d.waitFor("unplugged", from: mark)
        try rig.plugUnauthorizedReceiver(round: 1)
        try d.waitFor("stays unauthorized on the host until it is attached to vm1", from: unplugged)
        try FileManager.default.removeItem(atPath: gate)
        try d.waitFor("attached to vm1 as vhp-usb-1-2", from: mark)
        // The held write went with the device that left: the new one was authorized on its own.
        #expect(d.log[mark...].filter { $0.contains("authorized on the host (going to vm1)") }.count == 2, "\(d.log[mark...])")
        #expect(rig.attribute(receiverDevpath, "authorized") == "1")
        #expect(d.log[mark...].contains { $0.contains(#""hostbus":1,"hostaddr":5"#) })
        #expect(!d.log[mark...].contains { $0.contains(#""hostaddr":4"#) }, "\(d.log[mark...])")
        #expect(try rig.qemu.attachedIds() == ["vhp-usb-1-2"])
    }

    @Test("a reload that sends the device nowhere while its authorization for vm1 is written: it is not attached to vm1 (before, it was, and detached in the next round), and goes off the host again")
    func reloadDuringAuthorization() async throws {
        let rig = try await AuthRig()
        let (d, gate, mark) = try plugWithAuthorizationHeld(rig)
        defer { try? FileManager.default.removeItem(atPath: gate) } // (a failed test does not leave the daemon held)
        // No rule takes it any more.
        try rig.write(auth: #"{"enable": true}"#, allow: #"{"vendorId": "ffff"}"#)
        d.signal(SIGHUP)
        try d.waitFor("usb 1-2 046d:c52b \"Logitech\" \"USB Receiver\": none: no rule matches", from: mark)
        try FileManager.default.removeItem(atPath: gate)
        try d.waitFor("usb 1-2 046d:c52b \"Logitech\" \"USB Receiver\": de-authorized on the host", from: mark)
        #expect(!d.log[mark...].contains { $0.contains(#""execute":"device_add""#) }, "\(d.log[mark...])")
        #expect(try rig.qemu.attachedIds() == [])
        #expect(rig.attribute(receiverDevpath, "authorized") == "0")
    }

    @Test("a failing sysfs write is logged with its path and errno, and stops nothing")
    func failingWriteIsLogged() async throws {
        let rig = try await AuthRig()
        try rig.write(auth: #"{"enable": true}"#)
        // usb1's authorized_default becomes a folder: writing it fails with EISDIR.
        let file = rig.tb.sysRoot + AuthRig.usb1 + "/authorized_default"
        try FileManager.default.removeItem(atPath: file)
        try FileManager.default.createDirectory(atPath: file, withIntermediateDirectories: false)
        let d = try rig.daemon()
        #expect(d.log.contains { $0.contains("USB authorization: cannot read /sys/bus/usb/devices/usb1/authorized_default: Is a directory (errno 21)") || $0.contains("USB authorization: cannot write \"0\" to /sys/bus/usb/devices/usb1/authorized_default: Is a directory (errno 21)") })
        #expect(rig.attribute(AuthRig.usb2, "authorized_default") == "0")
        // The daemon goes on: a device for vm1 is authorized and attached.
        try rig.plugUnauthorizedReceiver()
        try d.waitFor("attached to vm1 as vhp-usb-1-2")
        #expect(d.stop() == 0)
        #expect(rig.attribute(AuthRig.usb2, "authorized_default") == "1")
    }
}
