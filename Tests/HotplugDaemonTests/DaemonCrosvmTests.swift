import Foundation
import Testing
import VMM
import VHotplugTestSupport

/// A crosvm VM played by the repository's double, with `crosvm` on PATH for the daemon.
final class CrosvmVM: @unchecked Sendable {
    let dir: String
    let socket: String
    let process = Process()

    /// `extra`: the double's options (`--guest-not-ready`: a guest that has not started its USB driver).
    init(name: String = "vm2", _ extra: [String] = []) throws {
        dir = scratchPath("vhp-crosvm")
        try FileManager.default.createDirectory(atPath: dir + "/bin", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: dir + "/bin/crosvm", withDestinationPath: Self.double)
        socket = dir + "/\(name).sock"
        process.executableURL = URL(fileURLWithPath: Self.double)
        process.arguments = ["run-double", socket] + extra
        process.environment = cleanEnvironment()
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        // It prints "ready" once it listens.
        let line = out.fileHandleForReading.readData(ofLength: 6)
        guard String(decoding: line, as: UTF8.self).hasPrefix("ready") else {
            throw TestbedError(message: "the crosvm double did not start")
        }
    }

    /// `crosvm usb list` through the double.
    func list() throws -> String {
        try cli("list")
    }

    /// `crosvm usb ARGS SOCKET` through the double (`attach 00:00:00:00 NODE`: as a user would by hand).
    func cli(_ args: String...) throws -> String {
        try run([dir + "/bin/crosvm", "usb"] + args + [socket]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The guest of a `--guest-not-ready` VM starts its USB driver (SIGUSR1): attaches work from then on.
    func bootGuest() {
        kill(process.processIdentifier, SIGUSR1)
    }

    /// `PATH` with this VM's `crosvm` first, for the daemon.
    var path: String {
        dir + "/bin:" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")
    }

    /// The repository's crosvm double.
    static let double = Repository.root + "/Tests/Doubles/crosvm"

    /// A configuration sending Logitech devices to this VM through a wrapper of the double: a
    /// shell script in this VM's folder (`body`, which runs the double as `CrosvmVM.double`)
    /// named by `general.crosvm`.
    func configWithWrapper(_ body: String) throws -> String {
        let wrapper = dir + "/wrapper"
        try ("#!/bin/sh\n" + body).write(toFile: wrapper, atomically: true, encoding: .utf8)
        guard chmod(wrapper, 0o755) == 0 else { throw TestbedError(message: "chmod \(wrapper)") }
        return try config("""
            {"general": {"crosvm": "\(wrapper)"},
             "usbPassthrough": [{"targetVm": "vm2", "allow": [{"vendorId": "046d"}]}],
             "vms": [{"name": "vm2", "type": "crosvm", "socket": "$SOCKET"}]}
            """)
    }

    /// A configuration in this VM's folder: `text` with `$SOCKET` replaced by the socket's path.
    func config(_ text: String) throws -> String {
        let path = dir + "/vhotplug.conf"
        try text.replacingOccurrences(of: "$SOCKET", with: socket).write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    deinit {
        process.terminate()
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: dir)
    }
}

@Suite("The daemon with a crosvm VM (the double)", .serialized)
struct DaemonCrosvmTests {
    @Test("plug: crosvm usb attach with the device node; unplug: usb detach of the port it returned")
    func crosvm() async throws {
        let tb = await Testbed.make()
        let vm = try CrosvmVM()
        let config = vm.dir + "/vhotplug.conf"
        try """
            {"usbPassthrough": [{"targetVm": "vm2", "allow": [{"vendorId": "046d"}]}],
             "vms": [{"name": "vm2", "type": "crosvm", "socket": "\(vm.socket)"}]}
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        let d = try DaemonProcess(arguments: ["-c", config], testbed: tb, environment: ["PATH": vm.dir + "/bin:" + path])
        try d.waitFor("; listening (")
        try tb.add(file: fixtures + "/logitech-unifying.umockdev")
        try d.waitFor("attached to vm2 as 1")
        #expect(try vm.list() == "devices 1 046d c52b")
        let mark = d.mark
        tb.unplug(receiverPath)
        try d.waitFor("detached from vm2 (1)", from: mark)
        #expect(try vm.list() == "devices")
    }

    @Test("a wrong general.crosvm fails the attach naming it; fixed and reloaded (SIGHUP), the device is attached with the new program")
    func crosvmPathReloaded() async throws {
        let tb = await Testbed.make()
        let vm = try CrosvmVM()
        let config = vm.dir + "/vhotplug.conf"
        func write(crosvm: String) throws {
            try """
                {"general": {"crosvm": "\(crosvm)"},
                 "usbPassthrough": [{"targetVm": "vm2", "allow": [{"vendorId": "046d"}]}],
                 "vms": [{"name": "vm2", "type": "crosvm", "socket": "\(vm.socket)"}]}
                """.write(toFile: config, atomically: true, encoding: .utf8)
        }
        try write(crosvm: vm.dir + "/nowhere/crosvm")
        let d = try DaemonProcess(arguments: ["-c", config], testbed: tb)
        try d.waitFor("; listening (")
        try tb.add(file: fixtures + "/logitech-unifying.umockdev")
        try d.waitFor("attach to vm2 failed: VM vm2: crosvm not found at \(vm.dir)/nowhere/crosvm")
        let mark = d.mark
        try write(crosvm: vm.dir + "/bin/crosvm")
        d.signal(SIGHUP)
        try d.waitFor("configuration reloaded", from: mark)
        try d.waitFor("attached to vm2 as 1", from: mark)
        #expect(try vm.list() == "devices 1 046d c52b")
    }

    @Test("VHOTPLUG_CROSVM_TIMEOUT: a crosvm run that does not finish in that many seconds is killed; the attach is tried again until VHOTPLUG_GUEST_WAIT is over, then fails saying so")
    func crosvmTimeout() async throws {
        let tb = await Testbed.make()
        let vm = try CrosvmVM()
        let hang = vm.dir + "/hang"
        // The daemon stops only after its last run was killed: a run still going at its exit is
        // left running, and would hold the testbed's socket (umockdev's preload leaves it open
        // across exec) that the testbed's teardown waits for.
        try "#!/bin/sh\nexec sleep 30\n".write(toFile: hang, atomically: true, encoding: .utf8)
        #expect(chmod(hang, 0o755) == 0)
        let config = vm.dir + "/vhotplug.conf"
        try """
            {"general": {"crosvm": "\(hang)"},
             "usbPassthrough": [{"targetVm": "vm2", "allow": [{"vendorId": "046d"}]}],
             "vms": [{"name": "vm2", "type": "crosvm", "socket": "\(vm.socket)"}]}
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let d = try DaemonProcess(arguments: ["-c", config], testbed: tb, environment: ["VHOTPLUG_CROSVM_TIMEOUT": "0.3", "VHOTPLUG_GUEST_WAIT": "1"])
        try d.waitFor("; listening (")
        let mark = d.mark
        try tb.add(file: fixtures + "/logitech-unifying.umockdev")
        try d.waitFor("crosvm usb attach /dev/bus/usb/001/004 did not finish within 0.3 s; killed it", from: mark)
        try d.waitFor("vm2 did not answer the attach in time (crosvm killed at its deadline); trying again for up to 1 s", from: mark)
        try d.waitFor("attach to vm2 failed: VM vm2: no answer to crosvm usb ", from: mark)
        try d.waitFor("; gave up waiting for vm2 to answer after ", from: mark)
        #expect(try vm.list() == "devices")
    }

    @Test("a crosvm whose attach and list hang (its control loop stuck) after it attached the device: tried again, and once crosvm answers, the device is found on the port it got, not given a second one (before: failed until a replug, a restart or a reload)")
    func crosvmHungThenAnswers() async throws {
        let tb = await Testbed.make()
        let vm = try CrosvmVM()
        let flag = vm.dir + "/hung"
        FileManager.default.createFile(atPath: flag, contents: nil)
        // Attaches through the double, then hangs until it is killed; every run hangs while the flag is there.
        let config = try vm.configWithWrapper("""
            if [ "$2" = attach ] && [ -e "\(flag)" ]; then "\(CrosvmVM.double)" "$@"; exec sleep 30; fi
            if [ -e "\(flag)" ]; then exec sleep 30; fi
            exec "\(CrosvmVM.double)" "$@"
            """)
        let d = try DaemonProcess(arguments: ["-c", config], testbed: tb, environment: ["VHOTPLUG_CROSVM_TIMEOUT": "0.3"])
        try d.waitFor("; listening (")
        try tb.add(file: fixtures + "/logitech-unifying.umockdev")
        try d.waitFor("vm2 did not answer the attach in time (crosvm killed at its deadline); trying again")
        #expect(try vm.list() == "devices 1 046d c52b")
        // crosvm answers again.
        try FileManager.default.removeItem(atPath: flag)
        try d.waitFor("usb 1-2 046d:c52b \"Logitech\" \"USB Receiver\": attached to vm2 as 1 in ")
        #expect(d.log.contains { $0.contains("once vm2 answered") })
        #expect(try vm.list() == "devices 1 046d c52b")
    }

    @Test("a device unplugged after its crosvm attach was killed at the deadline, and the usb list after it too: once crosvm answers, no port holds it (crosvm frees the port of a device the host lost) and the daemon frees nothing else")
    func killedAttachThenUnplugged() async throws {
        let tb = await Testbed.make()
        let vm = try CrosvmVM()
        let attachHangs = vm.dir + "/attach-hangs", nextListHangs = vm.dir + "/next-list-hangs"
        // While its flag is there an attach attaches through the double, then hangs until it is
        // killed; the first list after its flag is made hangs (the flag goes), later ones answer.
        let config = try vm.configWithWrapper("""
            if [ "$2" = attach ] && [ -e "\(attachHangs)" ]; then "\(CrosvmVM.double)" "$@"; exec sleep 30; fi
            if [ "$2" = list ] && [ -e "\(nextListHangs)" ]; then rm -f "\(nextListHangs)"; exec sleep 30; fi
            exec "\(CrosvmVM.double)" "$@"
            """)
        let d = try DaemonProcess(arguments: ["-c", config], testbed: tb, environment: ["VHOTPLUG_CROSVM_TIMEOUT": "2"])
        try d.waitFor("; listening (")
        FileManager.default.createFile(atPath: attachHangs, contents: nil)
        FileManager.default.createFile(atPath: nextListHangs, contents: nil)
        try tb.add(file: fixtures + "/logitech-unifying.umockdev")
        try d.waitFor("crosvm usb attach /dev/bus/usb/001/004 did not finish within 2 s; killed it")
        #expect(try vm.list() == "devices 1 046d c52b")
        // Unplugged while the list that should tell whether the attach went through hangs.
        let mark = d.mark
        tb.unplug(receiverPath)
        try d.waitFor("unplugged", from: mark)
        // crosvm detached the lost device itself (the double frees its port at the next request). (Should
        // the list end before the unplug is seen, the device is tried again, found on port 1 and detached.)
        let (_, how) = try d.waitFor(anyOf: ["no port holds 1-2 after its attach killed at its deadline; nothing to free",
                                             "detached from vm2 (1)"], from: mark)
        #expect(try vm.list() == "devices", "after \(how)")
    }

    /// A crosvm VM whose guest has not started its USB driver, the receiver's rules sending it
    /// there, the daemon started (`-d`) and the receiver plugged: the daemon has begun to wait.
    func receiverForBootingGuest(environment: [String: String] = [:]) async throws -> (Testbed, CrosvmVM, DaemonProcess) {
        let tb = await Testbed.make()
        let vm = try CrosvmVM(["--guest-not-ready"])
        let config = try vm.config("""
            {"usbPassthrough": [{"targetVm": "vm2", "allow": [{"vendorId": "046d"}]}],
             "vms": [{"name": "vm2", "type": "crosvm", "socket": "$SOCKET"}]}
            """)
        let d = try DaemonProcess(arguments: ["-c", config, "-d"], testbed: tb, environment: environment.merging(["PATH": vm.path]) { a, _ in a })
        try d.waitFor("; listening (")
        try tb.add(file: fixtures + "/logitech-unifying.umockdev")
        try d.waitFor("vm2's guest does not take USB devices yet")
        return (tb, vm, d)
    }

    @Test("a guest that has not started its USB driver (no_available_port): tried again, later and later, until it takes the device; not while the device is unplugged")
    func guestNotReady() async throws {
        let (tb, vm, d) = try await receiverForBootingGuest()
        try d.waitFor("crosvm usb attach /dev/bus/usb/001/004 -> \"no_available_port\"", from: d.mark) // tried again
        #expect(!d.log.contains { $0.contains("attach to vm2 failed") })
        // Unplugged while it waits (a try may be under way): its timer stops, no more tries.
        var mark = d.mark
        tb.unplug(receiverPath)
        try d.waitFor("unplugged", from: mark)
        try d.waitFor("no longer waits for vm2's guest (its timer stopped)", from: mark)
        // Plugged again, then the guest comes up: attached.
        mark = d.mark
        try tb.add(record: receiverRecords(1))
        try d.waitFor("vm2's guest does not take USB devices yet", from: mark)
        vm.bootGuest()
        try d.waitFor("attached to vm2 as 1", from: mark)
        #expect(d.log[mark...].contains { $0.contains("once its guest took USB devices") })
        #expect(try vm.list() == "devices 1 046d c52b")
    }

    @Test("VHOTPLUG_GUEST_WAIT: a guest that never starts its USB driver: the daemon gives up after that many seconds, and tries no more")
    func guestNeverReady() async throws {
        // (The daemon process holds the testbed.)
        let (_, vm, d) = try await receiverForBootingGuest(environment: ["VHOTPLUG_GUEST_WAIT": "1"])
        #expect(d.log.contains { $0.contains("vm2's guest does not take USB devices yet (its USB driver is not up); trying again for up to 1 s") })
        try d.waitFor("attach to vm2 failed: VM vm2: crosvm usb attach /dev/bus/usb/001/004: no_available_port with 0 of its 16 USB ports in use")
        // (Its timer is stopped with the wait.)
        #expect(d.log.contains { $0.contains("gave up waiting for its guest after 1") })
        #expect(try vm.list() == "devices")
    }

    @Test("allowedVms: a device the user moved to crosvm vm2 through the API is found there after a restart (with -a, or without -a and its state), not detached and attached again")
    func restartKeepsAllowedCrosvmVM() async throws {
        let tb = await Testbed.make()
        let vm1 = try CrosvmVM(name: "vm1")
        let vm2 = try CrosvmVM(name: "vm2")
        let api = vm1.dir + "/api.sock", state = vm1.dir + "/vhotplug.state"
        let config = try vm1.config("""
            {"usbPassthrough": [{"allowedVms": ["vm1", "vm2"], "allow": [{"vendorId": "046d"}]}],
             "vms": [{"name": "vm1", "type": "crosvm", "socket": "$SOCKET"},
                     {"name": "vm2", "type": "crosvm", "socket": "\(vm2.socket)"}],
             "general": {"api": {"unixSocket": "\(api)", "unixSocketMode": "0666"}, "statePath": "\(state)"}}
            """)
        func daemon(_ extra: [String]) throws -> DaemonProcess {
            let d = try DaemonProcess(arguments: ["-c", config] + extra, testbed: tb, environment: ["PATH": vm1.path])
            try d.waitFor("; listening (")
            return d
        }
        var d = try daemon([])
        try tb.add(file: fixtures + "/logitech-unifying.umockdev")
        try d.waitFor("attached to vm1 as 1")
        let moved = try run([Repository.vhotplug, "usb", "attach", "--bus", "1", "--port", "2", "--vm", "vm2", "--path", api])
        #expect(moved.status == 0, "\(moved)")
        #expect(try vm1.list() == "devices")
        #expect(try vm2.list() == "devices 1 046d c52b")
        d.stop()

        // With -a and the state file (vm2 chosen): found in vm2, left there.
        d = try daemon(["-a"])
        try d.waitFor("found in VM vm2 as 1")
        d.stop()
        #expect(!d.log.contains { $0.contains("removing stale") || $0.contains("detached from") || $0.contains("attached to") }, "\(d.log)")
        #expect(try vm2.list() == "devices 1 046d c52b")

        // Without -a and without the state file: the rules allow vm2, so it stays.
        try FileManager.default.removeItem(atPath: state)
        d = try daemon([])
        try d.waitFor("found in VM vm2 as 1")
        d.stop()
        #expect(!d.log.contains { $0.contains("removing stale") || $0.contains("detached from") || $0.contains("attached to") }, "\(d.log)")
        #expect(try vm2.list() == "devices 1 046d c52b")
        #expect(try vm1.list() == "devices")
    }

    @Test("restart: a crosvm port whose device vhotplug sends nowhere is left in place (it may be the user's); one whose device is gone from the host is freed")
    func restartLeavesPortsNotItsOwn() async throws {
        let tb = await Testbed.make()
        let vm = try CrosvmVM()
        let config = try vm.config("""
            {"usbPassthrough": [{"targetVm": "vm2", "allow": [{"vendorId": "abcd"}]}],
             "vms": [{"name": "vm2", "type": "crosvm", "socket": "$SOCKET"}]}
            """)
        try tb.add(file: fixtures + "/logitech-unifying.umockdev")
        // By hand: the receiver (no rule sends it anywhere), and a device that is not on the host.
        #expect(try vm.cli("attach", "00:00:00:00", tb.root + "/dev/bus/usb/001/004") == "ok 1")
        let gone = vm.dir + "/gone"
        let descriptor: [UInt8] = [18, 1, 0, 2, 0, 0, 0, 64, 0x11, 0x11, 0x22, 0x22, 0, 1, 1, 2, 3, 1]
        #expect(FileManager.default.createFile(atPath: gone, contents: Data(descriptor)))
        #expect(try vm.cli("attach", "00:00:00:00", gone) == "ok 2")
        let d = try DaemonProcess(arguments: ["-c", config, "-a"], testbed: tb, environment: ["PATH": vm.path])
        try d.waitFor("; listening (")
        d.stop()
        #expect(d.log.contains { $0.contains("VM vm2: port 1 holds usb 1-2 046d:c52b") && $0.contains("left in place") }, "\(d.log)")
        #expect(d.log.contains { $0.contains("VM vm2: removing stale 2 (its device is gone)") }, "\(d.log)")
        #expect(try vm.list() == "devices 1 046d c52b")
    }

    @Test("restart without -a: the user attached by hand a receiver no rule takes, identical to one a rule sends to vm1: its port in vm2 is left in place, and the other is not attached")
    func identicalDeviceAttachedByHand() async throws {
        let tb = await Testbed.make()
        let vm1 = try CrosvmVM(name: "vm1")
        let vm2 = try CrosvmVM(name: "vm2")
        let config = try vm1.config("""
            {"usbPassthrough": [{"targetVm": "vm1", "allow": [{"vendorId": "046d", "port": 2}]}],
             "vms": [{"name": "vm1", "type": "crosvm", "socket": "$SOCKET"}, {"name": "vm2", "type": "crosvm", "socket": "\(vm2.socket)"}]}
            """)
        try tb.add(file: fixtures + "/logitech-unifying.umockdev") // 1-2, address 4: the rule's
        try tb.add(record: receiverRecords(1, port: 3))             // 1-3, address 5: no rule
        #expect(try vm2.cli("attach", "00:00:00:00", tb.root + "/dev/bus/usb/001/005") == "ok 1")
        let d = try DaemonProcess(arguments: ["-c", config], testbed: tb, environment: ["PATH": vm1.path])
        try d.waitFor("; listening (")
        try d.waitFor("VM vm2: port 1 holds usb 1-")
        d.stop()
        #expect(!d.log.contains { $0.contains("found in VM vm2") || $0.contains("detach") || $0.contains("attached to") }, "\(d.log)")
        #expect(try vm2.list() == "devices 1 046d c52b")
        #expect(try vm1.list() == "devices")
    }

    @Test("crosvm's USB 2 ports all taken: the attach fails, and is tried again when a device leaves the VM (before: until a replug)")
    func portsFullTriedAgain() async throws {
        let tb = await Testbed.make()
        let vm = try CrosvmVM()
        let config = try vm.config("""
            {"usbPassthrough": [{"targetVm": "vm2", "allow": [{"vendorId": "046d"}]}],
             "vms": [{"name": "vm2", "type": "crosvm", "socket": "$SOCKET"}]}
            """)
        let d = try DaemonProcess(arguments: ["-c", config], testbed: tb, environment: ["PATH": vm.path])
        try d.waitFor("; listening (")
        // Ports 1-7 taken by hand (USB 2 device descriptors: 18 bytes, bcdUSB 2.00, 1234:000N).
        for i in 1...7 {
            let node = vm.dir + "/u2-\(i)"
            let descriptor: [UInt8] = [18, 1, 0x00, 0x02, 0, 0, 0, 64, 0x34, 0x12, UInt8(i), 0, 0, 1, 0, 0, 0, 1]
            try Data(descriptor).write(to: URL(fileURLWithPath: node))
            #expect(try vm.cli("attach", "00:00:00:00", node) == "ok \(i)")
        }
        try tb.add(file: fixtures + "/logitech-unifying.umockdev")
        try d.waitFor("usb 1-2 046d:c52b \"Logitech\" \"USB Receiver\": attached to vm2 as 8")
        let mark = d.mark
        try tb.add(record: receiverRecords(1, port: 3))
        try d.waitFor("usb 1-3 046d:c52b \"Logitech\" \"USB Receiver\": attach to vm2 failed: VM vm2: usb attach /dev/bus/usb/001/005 failed: "
                      + "no_available_port: \"no free USB port for 1-3 (8 of crosvm's 16 in use)", from: mark)
        try d.waitFor("all ports for this kind of device are taken (8 for USB 2, 8 for USB 3)\"; tried again when a device leaves vm2", from: mark)
        tb.unplug(receiverPath)
        try d.waitFor("usb 1-2 046d:c52b \"Logitech\" \"USB Receiver\": detached from vm2 (8)", from: mark)
        try d.waitFor("usb 1-3 046d:c52b \"Logitech\" \"USB Receiver\": a device left vm2; attaching again", from: mark)
        try d.waitFor("usb 1-3 046d:c52b \"Logitech\" \"USB Receiver\": attached to vm2 as 8", from: mark)
        #expect(try vm.list().hasSuffix(" 8 046d c52b"))
    }

    @Test("ports full: a device leaving whose port the waiting device cannot take (USB 3 for a USB 2 device) does not set it going again (before, a futile attach); one leaving with the right kind of port does, for one waiting device of two")
    func portsFullRightKindOnly() async throws {
        let tb = await Testbed.make()
        let vm = try CrosvmVM()
        let config = try vm.config("""
            {"usbPassthrough": [{"targetVm": "vm2", "allow": [{"vendorId": "046d"}, {"vendorId": "0781"}]}],
             "vms": [{"name": "vm2", "type": "crosvm", "socket": "$SOCKET"}]}
            """)
        let d = try DaemonProcess(arguments: ["-c", config, "-d"], testbed: tb, environment: ["PATH": vm.path])
        try d.waitFor("; listening (")
        for i in 1...7 {
            let node = vm.dir + "/u2-\(i)"
            try Data([18, 1, 0x00, 0x02, 0, 0, 0, 64, 0x34, 0x12, UInt8(i), 0, 0, 1, 0, 0, 0, 1]).write(to: URL(fileURLWithPath: node))
            #expect(try vm.cli("attach", "00:00:00:00", node) == "ok \(i)")
        }
        try tb.add(file: fixtures + "/logitech-unifying.umockdev")          // 1-2: port 8, the last USB 2 port
        try d.waitFor("usb 1-2 046d:c52b \"Logitech\" \"USB Receiver\": attached to vm2 as 8")
        // The flash drive of usb-disk.umockdev (2-2, USB 3: port 9), without the controller and hubs already there.
        let disk = try String(contentsOfFile: fixtures + "/usb-disk.umockdev", encoding: .utf8).components(separatedBy: "\n\n")
            .filter { $0.hasPrefix("P: /devices/pci0000:00/0000:00:14.0/usb2/2-2") }
        try tb.add(record: disk.joined(separator: "\n\n") + "\n")
        try d.waitFor("usb 2-2 0781:5581 \"SanDisk\" \"Ultra\": attached to vm2 as 9")
        let mark = d.mark
        try tb.add(record: receiverRecords(1, port: 3))                      // 1-3 and 1-4: no USB 2 port left
        try tb.add(record: receiverRecords(2, port: 4))
        try d.waitFor("usb 1-3 046d:c52b \"Logitech\" \"USB Receiver\": attach to vm2 failed", from: mark)
        try d.waitFor("usb 1-4 046d:c52b \"Logitech\" \"USB Receiver\": attach to vm2 failed", from: mark)
        tb.unplug("/sys/devices/pci0000:00/0000:00:14.0/usb2/2-2")
        try d.waitFor("detached from vm2 (9)", from: mark)
        try d.waitFor("usb 1-3 046d:c52b \"Logitech\" \"USB Receiver\": a device left vm2, but no port it can take is free there", from: mark)
        try d.waitFor("usb 1-4 046d:c52b \"Logitech\" \"USB Receiver\": a device left vm2, but no port it can take is free there", from: mark)
        tb.unplug(receiverPath)
        try d.waitFor("usb 1-3 046d:c52b \"Logitech\" \"USB Receiver\": attached to vm2 as 8", from: mark)
        d.stop()
        let since = Array(d.log.dropFirst(mark))
        #expect(since.filter { $0.contains("attach to vm2 failed") }.count == 2, "\(since)")      // one each, none after
        #expect(!since.contains { $0.contains("usb 1-4") && $0.contains("attaching again") }, "\(since)")
    }

    @Test("restart after the rules changed: the port vhotplug attached (its record) is detached, though crosvm's list looks like the port the user attached by hand with an identical receiver, which stays")
    func restartKnowsItsOwnPorts() async throws {
        let tb = await Testbed.make()
        let vm = try CrosvmVM()
        let rules = try vm.config("""
            {"usbPassthrough": [{"targetVm": "vm2", "allow": [{"vendorId": "046d", "port": 2}]}],
             "vms": [{"name": "vm2", "type": "crosvm", "socket": "$SOCKET"}]}
            """)
        var d = try DaemonProcess(arguments: ["-c", rules], testbed: tb, environment: ["PATH": vm.path])
        try d.waitFor("; listening (")
        try tb.add(file: fixtures + "/logitech-unifying.umockdev")       // 1-2: the rule's
        try d.waitFor("usb 1-2 046d:c52b \"Logitech\" \"USB Receiver\": attached to vm2 as 1")
        try tb.add(record: receiverRecords(1, port: 3))                  // 1-3: no rule; the user attaches it
        try d.waitFor("usb 1-3 046d:c52b")
        #expect(try vm.cli("attach", "00:00:00:00", tb.root + "/dev/bus/usb/001/005") == "ok 2")
        d.stop()
        let recordFile = tb.root + "/vhotplug-crosvm/" + CrosvmBackend.recordFileName(vm: "vm2", socket: vm.socket)
        #expect(recordFile.hasSuffix("/vm2@" + vm.socket.replacingOccurrences(of: "/", with: "%2F") + ".ports"))
        let record = try String(contentsOfFile: recordFile, encoding: .utf8)
        #expect(record.hasPrefix("crosvm-ports 1 ") && record.hasSuffix("\n1 046d c52b 1 4 1-2\n"), "\(record)")
        // No rule for the receivers now: the daemon's own port goes, the user's stays.
        let none = try vm.config("""
            {"usbPassthrough": [{"targetVm": "vm2", "allow": [{"vendorId": "abcd"}]}],
             "vms": [{"name": "vm2", "type": "crosvm", "socket": "$SOCKET"}]}
            """)
        d = try DaemonProcess(arguments: ["-c", none], testbed: tb, environment: ["PATH": vm.path])
        try d.waitFor("usb 1-2 046d:c52b \"Logitech\" \"USB Receiver\": found in VM vm2 as 1")
        try d.waitFor("VM vm2: port 2 holds usb 1-")
        try d.waitFor("usb 1-2 046d:c52b \"Logitech\" \"USB Receiver\": detached from vm2 (1)")
        #expect(try vm.list() == "devices 2 046d c52b")
        d.stop()
        #expect(!FileManager.default.fileExists(atPath: recordFile), "no port of vhotplug's left: no record")
    }

    @Test("a port record of another crosvm process (another socket) is not used: the port is left in place as the user's may be, and the record goes")
    func portRecordOfAnotherProcess() async throws {
        let tb = await Testbed.make()
        let vm = try CrosvmVM()
        try tb.add(file: fixtures + "/logitech-unifying.umockdev")
        #expect(try vm.cli("attach", "00:00:00:00", tb.root + "/dev/bus/usb/001/004") == "ok 1")
        let record = tb.root + "/vhotplug-crosvm/" + CrosvmBackend.recordFileName(vm: "vm2", socket: vm.socket)
        try FileManager.default.createDirectory(atPath: tb.root + "/vhotplug-crosvm", withIntermediateDirectories: true)
        try "crosvm-ports 1 1 1\n1 046d c52b 1 4 1-2\n".write(toFile: record, atomically: true, encoding: .utf8)
        let config = try vm.config("""
            {"usbPassthrough": [{"targetVm": "vm2", "allow": [{"vendorId": "abcd"}]}],
             "vms": [{"name": "vm2", "type": "crosvm", "socket": "$SOCKET"}]}
            """)
        let d = try DaemonProcess(arguments: ["-c", config], testbed: tb, environment: ["PATH": vm.path])
        try d.waitFor("VM vm2: port 1 holds usb 1-2 046d:c52b")
        d.stop()
        #expect(try vm.list() == "devices 1 046d c52b")
        #expect(!FileManager.default.fileExists(atPath: record))
    }

    @Test("a crosvm usb detach killed at its deadline after it freed the port, which another device got since: the first device replugged does not detach it")
    func detachKilledAfterFreeing() async throws {
        let tb = await Testbed.make()
        let vm = try CrosvmVM()
        // The first detach goes through the double, then hangs until the daemon kills it.
        let config = try vm.configWithWrapper("""
            if [ "$2" = detach ] && [ ! -e "\(vm.dir)/detached" ]; then touch "\(vm.dir)/detached"; "\(CrosvmVM.double)" "$@"; exec sleep 30; fi
            exec "\(CrosvmVM.double)" "$@"
            """)
        let d = try DaemonProcess(arguments: ["-c", config], testbed: tb, environment: ["VHOTPLUG_CROSVM_TIMEOUT": "0.5"])
        try d.waitFor("; listening (")
        try tb.add(file: fixtures + "/logitech-unifying.umockdev")
        try d.waitFor("attached to vm2 as 1")
        var mark = d.mark
        tb.unplug(receiverPath)
        try d.waitFor("detach from vm2 failed: VM vm2: no answer to crosvm usb detach 1", from: mark)
        #expect(try vm.list() == "devices")
        // A second receiver (port 3) gets port 1.
        mark = d.mark
        try tb.add(record: receiverRecords(2, port: 3))
        try d.waitFor("usb 1-3 046d:c52b \"Logitech\" \"USB Receiver\": attached to vm2 as 1", from: mark)
        // The first one plugged again (a new address): it goes to port 2, and the second stays on port 1.
        mark = d.mark
        try tb.add(record: receiverRecords(1))
        try d.waitFor("usb 1-2 046d:c52b \"Logitech\" \"USB Receiver\": attached to vm2 as 2", from: mark)
        #expect(try vm.list() == "devices 1 046d c52b 2 046d c52b")
        #expect(d.log.contains { $0.contains("vm2 let go of 1 after the detach's deadline") })
    }
}
