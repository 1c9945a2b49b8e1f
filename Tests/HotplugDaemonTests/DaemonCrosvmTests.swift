import Foundation
import Testing
import VHotplugTestSupport

/// A crosvm VM played by the repository's double, with `crosvm` on PATH for the daemon.
final class CrosvmVM: @unchecked Sendable {
    let dir: String
    let socket: String
    let process = Process()

    init() throws {
        dir = scratchPath("vhp-crosvm")
        try FileManager.default.createDirectory(atPath: dir + "/bin", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: dir + "/bin/crosvm", withDestinationPath: Repository.root + "/Tests/Doubles/crosvm")
        socket = dir + "/vm2.sock"
        process.executableURL = URL(fileURLWithPath: Repository.root + "/Tests/Doubles/crosvm")
        process.arguments = ["run-double", socket]
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
        try run([dir + "/bin/crosvm", "usb", "list", socket]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
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

    @Test("VHOTPLUG_CROSVM_TIMEOUT: a crosvm run that does not finish in that many seconds is killed, and the attach fails saying so")
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
        let d = try DaemonProcess(arguments: ["-c", config], testbed: tb, environment: ["VHOTPLUG_CROSVM_TIMEOUT": "0.3"])
        try d.waitFor("; listening (")
        let mark = d.mark
        try tb.add(file: fixtures + "/logitech-unifying.umockdev")
        try d.waitFor("crosvm usb attach /dev/bus/usb/001/004 did not finish within 0.3 s; killed it", from: mark, timeout: 4)
        try d.waitFor("attach to vm2 failed: VM vm2: no answer to crosvm usb attach /dev/bus/usb/001/004 (killed after 0.3 s) in time",
                      from: mark, timeout: 4)
        #expect(try vm.list() == "devices")
    }
}
