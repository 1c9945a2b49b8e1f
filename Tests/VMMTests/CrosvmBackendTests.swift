import DeviceModel
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
import Reactor
import Testing
import VHotplugTestSupport
@testable import VMM

/// VMM's attachment (Swift Testing has an `Attachment` too).
typealias VMAttachment = VMM.Attachment

/// A failure of the test set-up.
struct CrosvmTestError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// The crosvm double of the repository (Tests/Doubles/crosvm).
let crosvmDouble = Repository.root + "/Tests/Doubles/crosvm"

/// A VM played by the crosvm double (`crosvm run-double SOCKET`), in its own
/// temporary folder, with fake USB device nodes: regular files holding an
/// 18-byte USB device descriptor, which the double takes as USB devices.
final class CrosvmVM: @unchecked Sendable {
    let dir: String
    let socketPath: String
    private let process = Process()
    private let exited = DispatchSemaphore(value: 0)
    private var stopped = false

    /// Starts the double and returns once it listens: it prints "ready" on
    /// stdout after `listen()`, and this waits for that line (no sleeping).
    init(_ extra: [String] = []) throws {
        dir = scratchPath("vhp-crosvm")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        socketPath = dir + "/vm.sock"
        process.executableURL = URL(fileURLWithPath: crosvmDouble)
        process.arguments = ["run-double", socketPath] + extra
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        process.terminationHandler = { [exited] _ in exited.signal() }
        try process.run()
        var line = Data()
        while !line.contains(0x0A) {
            let chunk = out.fileHandleForReading.availableData
            guard !chunk.isEmpty else { throw CrosvmTestError( "the crosvm double exited before it was ready") }
            line.append(chunk)
        }
        guard String(decoding: line, as: UTF8.self).hasPrefix("ready") else {
            throw CrosvmTestError( "the crosvm double said \(String(decoding: line, as: UTF8.self))")
        }
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// SIGTERM: the double removes its socket and exits (SIGKILL if it has
    /// not within 5 s).
    func stop() {
        guard !stopped else { return }
        stopped = true
        process.terminate()
        if exited.wait(timeout: .now() + 5) == .timedOut {
            Glibc.kill(process.processIdentifier, SIGKILL)
            exited.wait()
        }
    }

    /// SIGKILL: the VM dies and its socket stays behind (nobody listens).
    func kill() {
        guard !stopped else { return }
        stopped = true
        Glibc.kill(process.processIdentifier, SIGKILL)
        exited.wait()
    }

    /// The guest of a `--guest-not-ready` VM comes up (SIGUSR1).
    func bootGuest() {
        Glibc.kill(process.processIdentifier, SIGUSR1)
    }

    /// A fake device node: a file with a USB device descriptor.
    func node(_ name: String, vendor: UInt16, product: UInt16, bcdUSB: UInt16 = 0x0200, configurations: UInt8 = 1,
              mode: Int = 0o644) throws -> String {
        let path = dir + "/" + name
        let d: [UInt8] = [18, 1, UInt8(bcdUSB & 0xff), UInt8(bcdUSB >> 8), 0, 0, 0, 64,
                          UInt8(vendor & 0xff), UInt8(vendor >> 8), UInt8(product & 0xff), UInt8(product >> 8),
                          0x00, 0x01, 1, 2, 3, configurations]
        guard FileManager.default.createFile(atPath: path, contents: Data(d), attributes: [.posixPermissions: mode]) else {
            throw CrosvmTestError( "cannot create \(path)")
        }
        return path
    }

    /// The crosvm CLI of the double, run directly (to observe the VM).
    func cli(_ args: String...) throws -> String {
        try run([crosvmDouble, "usb"] + args + [socketPath]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

/// A USB device value for a node (bus 1, address and port `n`).
func usbDevice(_ n: Int, node: String, vendor: UInt16 = 0x046d, product: UInt16 = 0xc52b) -> USBDevice {
    USBDevice(sysName: "1-\(n)", sysPath: "/devices/pci0000:00/0000:00:14.0/usb1/1-\(n)", bus: 1, devnum: n,
              port: n, portPath: [n], vendorId: vendor, productId: product, devnode: node)
}

/// A crosvm whose control loop hangs while `flag` (made here) is there: an attach attaches
/// through the double, then hangs until it is killed, and a list hangs. Without the flag it is the double.
func hungCrosvm(_ vm: CrosvmVM) throws -> (crosvm: String, flag: String) {
    let flag = vm.dir + "/hung"
    FileManager.default.createFile(atPath: flag, contents: nil)
    let crosvm = try script(vm.dir, "slow", """
        if [ "$2" = attach ] && [ -e "\(flag)" ]; then "\(crosvmDouble)" "$@"; exec sleep 30; fi
        if [ "$2" = list ] && [ -e "\(flag)" ]; then exec sleep 30; fi
        exec "\(crosvmDouble)" "$@"
        """)
    return (crosvm, flag)
}

/// A small executable script in `dir`.
func script(_ dir: String, _ name: String, _ body: String) throws -> String {
    let path = dir + "/" + name
    guard FileManager.default.createFile(atPath: path, contents: Data(("#!/bin/sh\n" + body + "\n").utf8),
                                         attributes: [.posixPermissions: 0o755]) else {
        throw CrosvmTestError( "cannot create \(path)")
    }
    return path
}

@Suite("crosvm backend against the crosvm double", .serialized)
struct CrosvmBackendTests {
    func backend(_ vm: CrosvmVM, _ host: LoopHost, crosvm: String = crosvmDouble, socket: String? = nil,
                 timeout: Double = 5) -> CrosvmBackend {
        CrosvmBackend(name: "vm1", socketPath: socket ?? vm.socketPath, crosvmPath: crosvm, loop: host.loop,
                      logger: logger, timeout: timeout, sysfsRoot: vm.dir + "/sys")
    }

    func failure(_ body: () async throws(VMError) -> Void) async -> VMError? {
        do throws(VMError) {
            try await body()
            return nil
        } catch {
            return error
        }
    }

    func errorClass(_ e: VMError?) -> String? {
        if case .commandFailed(_, _, let cls, _)? = e { return cls }
        return nil
    }

    @Test("every documented format parses; anything else is unknown")
    func parse() {
        #expect(CrosvmAnswer.parse("ok 9\n") == .ok(port: 9))
        #expect(CrosvmAnswer.parse("devices\n") == .devices([]))
        #expect(CrosvmAnswer.parse("devices 1 046d c52b 9 18d1 4ee7\n") ==
                .devices([.init(port: 1, vendor: 0x046d, product: 0xc52b), .init(port: 9, vendor: 0x18d1, product: 0x4ee7)]))
        #expect(CrosvmAnswer.parse("no_available_port\n") == .noAvailablePort)
        #expect(CrosvmAnswer.parse("no_such_device\n") == .noSuchDevice)
        #expect(CrosvmAnswer.parse("no_such_port\n") == .noSuchPort)
        #expect(CrosvmAnswer.parse("failed_to_open_device\n") == .failedToOpenDevice)
        #expect(CrosvmAnswer.parse("failed_to_init_host_device\n") == .failedToInitHostDevice)
        #expect(CrosvmAnswer.parse("error socket failed\n") == .cliError("socket failed"))
        #expect(CrosvmAnswer.parse("") == .unknown(""))
        #expect(CrosvmAnswer.parse("ok\n") == .unknown("ok"))
        #expect(CrosvmAnswer.parse("ok 0\n") == .unknown("ok 0"))
        #expect(CrosvmAnswer.parse("devices 1 046d\n") == .unknown("devices 1 046d"))
        #expect(CrosvmAnswer.parse("devices 1 46d c52b\n") == .unknown("devices 1 46d c52b"))
        #expect(CrosvmAnswer.parse("no_such_thing\n") == .unknown("no_such_thing"))
    }

    @Test("attach returns crosvm's port; list sees it by vendor:product, as the device this backend put there (a port attached by hand: vendor:product only); detach; detach again is fine")
    func roundTrip() async throws {
        let vm = try CrosvmVM()
        let host = try LoopHost()
        let b = backend(vm, host)
        let dev = usbDevice(2, node: try vm.node("mouse", vendor: 0x046d, product: 0xc52b))
        let a = try await b.attachUSB(dev)
        #expect(a.id == "1" && a.kind == .usb && a.hostKey == "1-2")
        #expect(a.usbVendor == 0x046d && a.usbProduct == 0xc52b)
        #expect(try vm.cli("list") == "devices 1 046d c52b")

        #expect(try vm.cli("attach", "00:00:00:00", try vm.node("by-hand", vendor: 0x1234, product: 0x0001)) == "ok 2")
        let listed = try await b.listAttached()
        #expect(listed == [a, VMAttachment(vm: "vm1", kind: .usb, id: "2", hostKey: "", usbVendor: 0x1234, usbProduct: 0x0001)])

        try await b.detach(a)
        #expect(try vm.cli("list") == "devices 2 1234 0001")
        #expect(try vm.cli("detach", "2") == "ok 2")
        #expect(try vm.cli("list") == "devices")
        #expect(try await b.listAttached().isEmpty)
        try await b.detach(a)                      // crosvm: no_such_device; already detached
        let bogus = VMAttachment(vm: "vm1", kind: .usb, id: "99", hostKey: "")
        try await b.detach(bogus)                  // out of range: no_such_device too
    }

    @Test("a USB 3 device goes to crosvm's USB 3 ports (9-16)")
    func usb3Port() async throws {
        let vm = try CrosvmVM()
        let host = try LoopHost()
        let b = backend(vm, host)
        let a = try await b.attachUSB(usbDevice(3, node: try vm.node("disk", vendor: 0x0781, product: 0x5583, bcdUSB: 0x0320),
                                                vendor: 0x0781, product: 0x5583))
        #expect(a.id == "9")
    }

    @Test("16 ports (8 USB 2, 8 USB 3): the 17th attach gets no_available_port; list cannot show port 16")
    func portsExhausted() async throws {
        let vm = try CrosvmVM()
        let host = try LoopHost()
        let b = backend(vm, host)
        var ports: [String] = []
        for i in 1...8 {
            let node = try vm.node("u2-\(i)", vendor: 0x1000, product: UInt16(i))
            ports.append(try await b.attachUSB(usbDevice(i, node: node, vendor: 0x1000, product: UInt16(i))).id)
        }
        #expect(ports == (1...8).map(String.init))
        // The USB 2 ports are full although the USB 3 ports are free.
        let ninth = try vm.node("u2-9", vendor: 0x1000, product: 9)
        let e9 = await failure { () async throws(VMError) in _ = try await b.attachUSB(usbDevice(9, node: ninth, vendor: 0x1000, product: 9)) }
        #expect(errorClass(e9) == "no_available_port")
        #expect(e9?.description.contains("8 of crosvm's 16 in use") == true)

        for i in 1...8 {
            let node = try vm.node("u3-\(i)", vendor: 0x2000, product: UInt16(i), bcdUSB: 0x0300)
            ports.append(try await b.attachUSB(usbDevice(10 + i, node: node, vendor: 0x2000, product: UInt16(i))).id)
        }
        #expect(ports == (1...16).map(String.init))
        let last = try vm.node("u3-9", vendor: 0x2000, product: 9, bcdUSB: 0x0300)
        let e = await failure { () async throws(VMError) in _ = try await b.attachUSB(usbDevice(19, node: last, vendor: 0x2000, product: 9)) }
        #expect(errorClass(e) == "no_available_port")
        let text = e?.description ?? ""
        #expect(text.contains("VM vm1") && text.contains("no_available_port"))
        #expect(text.contains("the guest has not started its USB (xHCI) driver yet"))
        #expect(text.contains("all ports for this kind of device are taken"))
        #expect(text.contains("16 of crosvm's 16 in use"))

        // crosvm's `usb list` asks for ports 0-15 only: port 16 is not listed.
        let listed = try await b.listAttached()
        #expect(listed.map(\.id) == (1...15).map(String.init))
        try await b.detach(VMAttachment(vm: "vm1", kind: .usb, id: "16", hostKey: ""))
        _ = try await b.attachUSB(usbDevice(19, node: last, vendor: 0x2000, product: 9))
    }

    @Test("USB 3 ports 9-15 held and port 16, which usb list never shows, freed by this backend's own detach: a USB 3 device has a free port (a device waiting for one is set going)")
    func port16FreedByOwnDetach() async throws {
        let vm = try CrosvmVM()
        let host = try LoopHost()
        let b = backend(vm, host)
        var on16: VMAttachment?
        for i in 1...8 {
            let node = try vm.node("u3-\(i)", vendor: 0x2000, product: UInt16(i), bcdUSB: 0x0300)
            let a = try await b.attachUSB(usbDevice(10 + i, node: node, vendor: 0x2000, product: UInt16(i)))
            if a.id == "16" { on16 = a }
        }
        let waiting = usbDevice(19, node: try vm.node("u3-9", vendor: 0x2000, product: 9, bcdUSB: 0x0300), vendor: 0x2000, product: 9)
        // (Its kind, USB 3, is read from sysfs's copy of its descriptors.)
        try FileManager.default.createDirectory(atPath: vm.dir + "/sys" + waiting.sysPath, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: waiting.devnode, toPath: vm.dir + "/sys" + waiting.sysPath + "/descriptors")
        let e = await failure { () async throws(VMError) in _ = try await b.attachUSB(waiting) }
        #expect(e?.isPortsFull == true)
        #expect(await b.hasFreePort(for: .usb(waiting), busPrefix: nil) == false)
        try await b.detach(try #require(on16))
        #expect(await b.hasFreePort(for: .usb(waiting), busPrefix: nil) == true)
        #expect(try await b.attachUSB(waiting).id == "16")
        #expect(await b.hasFreePort(for: .usb(waiting), busPrefix: nil) == false)
    }

    @Test("after a restart, every USB 3 port held (16 unlisted): a USB 3 attach is refused as ports full, not as a guest still booting")
    func portsExhaustedAfterRestart() async throws {
        let vm = try CrosvmVM()
        let host = try LoopHost()
        let before = backend(vm, host)
        for i in 1...8 {
            let node = try vm.node("u3-\(i)", vendor: 0x2000, product: UInt16(i), bcdUSB: 0x0300)
            _ = try await before.attachUSB(usbDevice(10 + i, node: node, vendor: 0x2000, product: UInt16(i)))
        }
        let restarted = backend(vm, host)                  // knows nothing of port 16
        #expect(try await restarted.listAttached().map(\.id) == (9...15).map(String.init))
        let last = try vm.node("u3-9", vendor: 0x2000, product: 9, bcdUSB: 0x0300)
        let e = await failure { () async throws(VMError) in _ = try await restarted.attachUSB(usbDevice(19, node: last, vendor: 0x2000, product: 9)) }
        #expect(errorClass(e) == "no_available_port")
        #expect(e?.isGuestNotReady == false, "\(String(describing: e))")
        #expect(e?.description.contains("8 of crosvm's 16 in use") == true)
        // With port 15 freed, one of 9-15 is free again: nothing is guessed about port 16.
        try await restarted.detach(VMAttachment(vm: "vm1", kind: .usb, id: "15", hostKey: ""))
        #expect(try await restarted.attachUSB(usbDevice(19, node: last, vendor: 0x2000, product: 9)).id == "15")
    }

    @Test("guest not up: no_available_port, and the port crosvm kept anyway is freed; after boot, attach works")
    func guestNotReady() async throws {
        let vm = try CrosvmVM(["--guest-not-ready"])
        let host = try LoopHost()
        let b = backend(vm, host)
        let dev = usbDevice(2, node: try vm.node("mouse", vendor: 0x046d, product: 0xc52b))
        // What crosvm does: refuses, yet keeps the device on port 1.
        let other = try vm.node("other", vendor: 0x1111, product: 0x2222)
        #expect(try vm.cli("attach", "00:00:00:00", other) == "no_available_port")
        #expect(try vm.cli("list") == "devices 1 1111 2222")
        #expect(try vm.cli("detach", "1") == "no_such_device")
        #expect(try vm.cli("list") == "devices")

        for _ in 1...3 {
            let e = await failure { () async throws(VMError) in _ = try await b.attachUSB(dev) }
            #expect(e?.isGuestNotReady == true)
            #expect(e?.description.contains("no_available_port with 0 of its 16 USB ports in use: the guest has not started") == true)
            #expect(try vm.cli("list") == "devices")     // nothing left behind, no port lost
        }
        vm.bootGuest()
        var attached: VMAttachment?
        for _ in 0..<200 where attached == nil {       // SIGUSR1 is asynchronous: retry until the guest is up
            attached = try? await b.attachUSB(dev)
        }
        #expect(attached?.id == "1")
    }

    /// Returns once the double's guest is up (SIGUSR1 is asynchronous): a probe device is
    /// attached by hand until crosvm accepts it; each probe, refused or not, is detached again.
    func waitUntilBooted(_ vm: CrosvmVM) throws {
        let probe = try vm.node("probe", vendor: 0xfeed, product: 0xbeef)
        for _ in 0..<2000 {
            let answer = try vm.cli("attach", "00:00:00:00", probe)
            let words = try vm.cli("list").split(separator: " ").dropFirst().map(String.init)
            for i in stride(from: 0, to: words.count - 2, by: 3) where words[i + 1] == "feed" {
                _ = try vm.cli("detach", words[i])
            }
            if answer.hasPrefix("ok") { return }
        }
        throw CrosvmTestError("the crosvm double's guest did not come up after SIGUSR1")
    }

    @Test("a port crosvm kept for a refused attach, which could not be freed then, is freed at the next try, or after the attach that succeeds",
          arguments: [false, true])
    func keptPortNotFreedAtFirst(bootsBeforeNextTry: Bool) async throws {
        let vm = try CrosvmVM(["--guest-not-ready"])
        let host = try LoopHost()
        let marker = vm.dir + "/failed-once"
        let flaky = try script(vm.dir, "flaky", """
            if [ "$2" = detach ] && [ ! -e \(marker) ]; then touch \(marker); echo "control socket busy" >&2; exit 1; fi
            exec "\(crosvmDouble)" "$@"
            """)
        let b = backend(vm, host, crosvm: flaky)
        let dev = usbDevice(2, node: try vm.node("mouse", vendor: 0x046d, product: 0xc52b))
        let first = await failure { () async throws(VMError) in _ = try await b.attachUSB(dev) }
        #expect(first?.isGuestNotReady == true)
        #expect(try vm.cli("list") == "devices 1 046d c52b")      // kept by crosvm, its detach failed
        if bootsBeforeNextTry {
            vm.bootGuest()
            try waitUntilBooted(vm)
            #expect(try await b.attachUSB(dev).id == "2")
            let listed = try vm.cli("list")
            #expect(listed == "devices 2 046d c52b", "\(listed)")
        } else {
            let next = await failure { () async throws(VMError) in _ = try await b.attachUSB(dev) }
            #expect(next?.isGuestNotReady == true)
            #expect(try vm.cli("list") == "devices")
        }
    }

    @Test("guest not up with more than 8 ports taken, but free ports of both kinds (USB 2 and USB 3): still the guest not being up")
    func guestNotReadyManyPorts() async throws {
        let vm = try CrosvmVM(["--guest-not-ready"])
        let host = try LoopHost()
        // Five USB 2 and five USB 3 devices that crosvm keeps although it refused them (by hand, not vhotplug's).
        for i in 1...5 {
            #expect(try vm.cli("attach", "00:00:00:00", try vm.node("u2-\(i)", vendor: 0x1000, product: UInt16(i))) == "no_available_port")
            #expect(try vm.cli("attach", "00:00:00:00", try vm.node("u3-\(i)", vendor: 0x2000, product: UInt16(i), bcdUSB: 0x0300)) == "no_available_port")
        }
        let dev = usbDevice(2, node: try vm.node("mouse", vendor: 0x046d, product: 0xc52b))
        let e = await failure { () async throws(VMError) in _ = try await backend(vm, host).attachUSB(dev) }
        #expect(e?.isGuestNotReady == true, "\(String(describing: e))")
        #expect(e?.description.contains("10 of its 16 USB ports in use") == true)
    }

    /// A backend whose crosvm's first detach goes through the double, then hangs until it is
    /// killed (0.5 s), and the attachment on port 1 whose detach that was: crosvm freed the port.
    func detachKilledAfterFreeing(_ vm: CrosvmVM, _ host: LoopHost) async throws -> (CrosvmBackend, VMAttachment) {
        let marker = vm.dir + "/detached"
        let slow = try script(vm.dir, "slow", """
            if [ "$2" = detach ] && [ ! -e \(marker) ]; then touch \(marker); "\(crosvmDouble)" "$@"; exec sleep 30; fi
            exec "\(crosvmDouble)" "$@"
            """)
        let b = backend(vm, host, crosvm: slow, timeout: 0.5)
        let a = try await b.attachUSB(usbDevice(2, node: try vm.node("mouse", vendor: 0x046d, product: 0xc52b)))
        #expect(a.id == "1")
        let e = await failure { () async throws(VMError) in try await b.detach(a) }
        #expect(e?.isTimeout == true)
        #expect(try vm.cli("list") == "devices")
        return (b, a)
    }

    @Test("a detach killed at its deadline after crosvm freed the port: what is put on that port since (by an attach of the backend's, or by hand) is not detached",
          arguments: [false, true])
    func detachKilledAfterFreeing(byHand: Bool) async throws {
        let vm = try CrosvmVM()
        let host = try LoopHost()
        let (b, a) = try await detachKilledAfterFreeing(vm, host)
        #expect(try await b.holds(a) == false)
        // Another device gets port 1.
        let key = try vm.node("key", vendor: 0x1050, product: 0x0407)
        if byHand {
            #expect(try vm.cli("attach", "00:00:00:00", key) == "ok 1")
        } else {
            let o = try await b.attachUSB(usbDevice(3, node: key, vendor: 0x1050, product: 0x0407))
            #expect(o.id == "1")
            #expect(try await b.holds(o) == true)
        }
        #expect(try await b.holds(a) == false)
        try await b.detach(a)
        #expect(try vm.cli("list") == "devices 1 1050 0407")
    }

    @Test("device node missing: no_such_device (crosvm fails to open it itself)")
    func nodeMissing() async throws {
        let vm = try CrosvmVM()
        let host = try LoopHost()
        let node = vm.dir + "/gone"
        let e = await failure { () async throws(VMError) in _ = try await backend(vm, host).attachUSB(usbDevice(2, node: node)) }
        #expect(errorClass(e) == "no_such_device")
        #expect(e?.description.contains("\(node) does not exist") == true)
        #expect(e?.description.contains("No such file or directory") == true)
    }

    @Test("a node that is no USB device: crosvm's no_such_device")
    func notAUSBDevice() async throws {
        let vm = try CrosvmVM()
        let host = try LoopHost()
        let node = vm.dir + "/empty"
        FileManager.default.createFile(atPath: node, contents: Data())
        let e = await failure { () async throws(VMError) in _ = try await backend(vm, host).attachUSB(usbDevice(2, node: node)) }
        #expect(errorClass(e) == "no_such_device")
        #expect(e?.description.contains("could not use \(node) as a USB device") == true)
    }

    @Test("unopenable node (a directory): failed_to_open_device, with crosvm's reason")
    func nodeUnopenable() async throws {
        let vm = try CrosvmVM()
        let host = try LoopHost()
        let node = vm.dir + "/dir"
        try FileManager.default.createDirectory(atPath: node, withIntermediateDirectories: false)
        let e = await failure { () async throws(VMError) in _ = try await backend(vm, host).attachUSB(usbDevice(2, node: node)) }
        #expect(errorClass(e) == "failed_to_open_device")
        #expect(e?.description.contains("Is a directory") == true)
    }

    @Test("crosvm cannot use the opened device: failed_to_open_device; cannot set it up: no_such_device, as current crosvm answers (older crosvm said failed_to_init_host_device, which is still understood)")
    func deviceRefusedByVM() async throws {
        let vm = try CrosvmVM()
        let host = try LoopHost()
        let b = backend(vm, host)
        // The double's stand-ins (see its header): mode 000, no configurations.
        let unpollable = try vm.node("unpollable", vendor: 1, product: 2, mode: 0)
        let e1 = await failure { () async throws(VMError) in _ = try await b.attachUSB(usbDevice(2, node: unpollable, vendor: 1, product: 2)) }
        #expect(errorClass(e1) == "failed_to_open_device")
        let broken = try vm.node("broken", vendor: 1, product: 3, configurations: 0)
        let e2 = await failure { () async throws(VMError) in _ = try await b.attachUSB(usbDevice(3, node: broken, vendor: 1, product: 3)) }
        #expect(errorClass(e2) == "no_such_device")
        #expect(e2?.description.contains("or crosvm cannot set the device up") == true, "\(String(describing: e2))")
        #expect(try vm.cli("list") == "devices")
    }

    @Test("VM socket missing: not running, and crosvm is never run")
    func socketMissing() async throws {
        let host = try LoopHost()
        let dir = scratchPath("vhp-crosvm-nosock")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let marker = dir + "/ran"
        let spy = try script(dir, "crosvm", "touch \(marker); echo ok 1")
        let b = CrosvmBackend(name: "vm1", socketPath: dir + "/vm.sock", crosvmPath: spy, loop: host.loop, logger: logger)
        let e = await failure { () async throws(VMError) in _ = try await b.attachUSB(usbDevice(2, node: "/dev/null")) }
        #expect(e == .notRunning(vm: "vm1", reason: "no control socket at \(dir)/vm.sock"))
        #expect(await failure { () async throws(VMError) in _ = try await b.listAttached() }?.isNotRunning == true)
        #expect(await failure { () async throws(VMError) in try await b.detach(VMAttachment(vm: "vm1", kind: .usb, id: "1", hostKey: "")) }?.isNotRunning == true)
        // A regular file in place of the socket: not running either.
        FileManager.default.createFile(atPath: dir + "/vm.sock", contents: Data())
        let e2 = await failure { () async throws(VMError) in _ = try await b.listAttached() }
        #expect(e2 == .notRunning(vm: "vm1", reason: "\(dir)/vm.sock is not a socket"))
        #expect(!FileManager.default.fileExists(atPath: marker))
    }

    @Test("a VM that died and left its socket: crosvm cannot connect, not running")
    func staleSocket() async throws {
        let vm = try CrosvmVM()
        let host = try LoopHost()
        vm.kill()
        #expect(FileManager.default.fileExists(atPath: vm.socketPath))
        let e = await failure { () async throws(VMError) in _ = try await backend(vm, host).listAttached() }
        #expect(e?.isNotRunning == true)
        #expect(e?.description.contains("Connection refused") == true)
    }

    @Test("a socket crosvm cannot use for another reason (a stream socket, such as a QMP one, in its place): a configuration problem, said so, not a VM that is down")
    func wrongKindOfSocket() async throws {
        let vm = try CrosvmVM()
        let host = try LoopHost()
        vm.kill()
        unlink(vm.socketPath)
        let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in vm.socketPath.utf8.enumerated() { raw[i] = b }
        }
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        try #require(bound == 0 && listen(listener, 4) == 0)
        let e = await failure { () async throws(VMError) in _ = try await backend(vm, host).listAttached() }
        #expect(e?.isNotRunning == false, "\(String(describing: e))")
        #expect(e?.description.contains("Protocol wrong type for socket") == true, "\(String(describing: e))")
    }

    @Test("a socket in a folder any user can write is not used (crosvm would hand the opened USB device to whoever listens there): nothing reaches the VM")
    func untrustedFolder() async throws {
        let vm = try CrosvmVM()
        let host = try LoopHost()
        let folder = String(vm.socketPath[..<vm.socketPath.lastIndex(of: "/")!])
        chmod(folder, 0o777)
        defer { chmod(folder, 0o755) }
        let dev = usbDevice(2, node: try vm.node("mouse", vendor: 0x046d, product: 0xc52b))
        let e = await failure { () async throws(VMError) in _ = try await backend(vm, host).attachUSB(dev) }
        #expect(e?.description.contains("which any user can write") == true, "\(String(describing: e))")
        #expect(try vm.cli("list") == "devices")
    }

    @Test("crosvm binary missing: says which and how to fix it")
    func binaryMissing() async throws {
        let vm = try CrosvmVM()
        let host = try LoopHost()
        let dev = usbDevice(2, node: try vm.node("mouse", vendor: 0x046d, product: 0xc52b))
        let e = await failure { () async throws(VMError) in
            _ = try await backend(vm, host, crosvm: "/nonexistent/bin/crosvm").attachUSB(dev)
        }
        #expect(e == .unsupported(vm: "vm1", detail: "crosvm not found at /nonexistent/bin/crosvm: crosvm must be installed, "
                                  + "or its path set as general.crosvm in the configuration"))
        let e2 = await failure { () async throws(VMError) in
            _ = try await backend(vm, host, crosvm: "crosvm-not-installed-here").attachUSB(dev)
        }
        #expect(e2?.description.contains("\"crosvm-not-installed-here\") not found on PATH") == true)
        #expect(e2?.description.contains("general.crosvm") == true)
    }

    @Test("a crosvm that hangs is killed at the deadline")
    func hangingCrosvm() async throws {
        let vm = try CrosvmVM()
        let host = try LoopHost()
        let pidFile = vm.dir + "/hang.pid"
        let hang = try script(vm.dir, "hang", "echo $$ > \(pidFile); exec sleep 30")
        let dev = usbDevice(2, node: try vm.node("mouse", vendor: 0x046d, product: 0xc52b))
        let e = await failure { () async throws(VMError) in _ = try await backend(vm, host, crosvm: hang, timeout: 0.3).attachUSB(dev) }
        #expect(e == .timeout(vm: "vm1", step: "crosvm usb attach \(dev.devnode) (killed after 0.3 s)"))
        let pid = try #require(Int32(String(contentsOfFile: pidFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(Glibc.kill(pid, 0) == -1 && errno == ESRCH)      // killed and reaped
    }

    @Test("a crosvm killed at the deadline after it attached the device: the port is found and taken, not lost")
    func slowCrosvmAttached() async throws {
        let vm = try CrosvmVM()
        let host = try LoopHost()
        // Attaches through the double, then hangs until it is killed.
        let slow = try script(vm.dir, "slow", "if [ \"$2\" = attach ]; then \"\(crosvmDouble)\" \"$@\"; exec sleep 30; fi; exec \"\(crosvmDouble)\" \"$@\"")
        let dev = usbDevice(2, node: try vm.node("mouse", vendor: 0x046d, product: 0xc52b), vendor: 0x046d, product: 0xc52b)
        let b = backend(vm, host, crosvm: slow, timeout: 0.5)
        let a = try await b.attachUSB(dev)
        #expect(a.id == "1")
        #expect(try vm.cli("list") == "devices 1 046d c52b")
        try await b.detach(a)
        #expect(try vm.cli("list") == "devices")
    }

    @Test("an attach killed at the deadline whose usb list is killed too (crosvm's control loop hung): the next attach of that device finds it on the port that attach gave it, and gives it no second port")
    func killedAttachUnknown() async throws {
        let vm = try CrosvmVM()
        let host = try LoopHost()
        let (slow, flag) = try hungCrosvm(vm)
        let dev = usbDevice(2, node: try vm.node("mouse", vendor: 0x046d, product: 0xc52b), vendor: 0x046d, product: 0xc52b)
        let b = backend(vm, host, crosvm: slow, timeout: 0.5)
        let e = await failure { () async throws(VMError) in _ = try await b.attachUSB(dev) }
        #expect(e?.isTimeout == true, "\(String(describing: e))")
        #expect(try vm.cli("list") == "devices 1 046d c52b")
        // crosvm answers lists again; the device is tried again (a reload, say).
        try FileManager.default.removeItem(atPath: flag)
        let a = try await b.attachUSB(dev)
        #expect(a.id == "1")
        #expect(try vm.cli("list") == "devices 1 046d c52b")
    }

    @Test("such an attach abandoned (the device left the host): the port it filled is freed; when crosvm cannot list it, the mark goes all the same, and a later device at that bus and address is not taken for it")
    func killedAttachAbandoned() async throws {
        let vm = try CrosvmVM()
        let host = try LoopHost()
        let (slow, flag) = try hungCrosvm(vm)
        let dev = usbDevice(2, node: try vm.node("mouse", vendor: 0x046d, product: 0xc52b), vendor: 0x046d, product: 0xc52b)
        let b = backend(vm, host, crosvm: slow, timeout: 0.5)
        _ = await failure { () async throws(VMError) in _ = try await b.attachUSB(dev) }
        #expect(try vm.cli("list") == "devices 1 046d c52b")
        // crosvm answers again; the device has left the host.
        try FileManager.default.removeItem(atPath: flag)
        await b.abandonAttach(dev)
        #expect(try vm.cli("list") == "devices")
        await b.abandonAttach(dev) // (nothing left to do: no list)

        // Again, with crosvm still hung when the device leaves.
        FileManager.default.createFile(atPath: flag, contents: nil)
        _ = await failure { () async throws(VMError) in _ = try await b.attachUSB(dev) }
        #expect(try vm.cli("list") == "devices 1 046d c52b")
        await b.abandonAttach(dev) // its list is killed: port 1 stays
        try FileManager.default.removeItem(atPath: flag)
        // Another device of the same kind at the same bus and address: attached on a port of its
        // own, not taken for the one on port 1.
        let next = usbDevice(2, node: try vm.node("mouse2", vendor: 0x046d, product: 0xc52b), vendor: 0x046d, product: 0xc52b)
        let a = try await b.attachUSB(next)
        #expect(a.id == "2")
        #expect(try vm.cli("list") == "devices 1 046d c52b 2 046d c52b")
    }

    @Test("a crosvm that logs more than 1 MiB around its answer: the answer is read, the device taken as attached (not left on a port the backend does not know)",
          arguments: ["stderr", "stdout"])
    func hugeOutput(stream: String) async throws {
        let vm = try CrosvmVM()
        let host = try LoopHost()
        // 2.2 MB of log lines: on stderr after crosvm's run (it has attached the device), on stdout
        // before it (its answer stays last).
        let flood = "yes '[crosvm] a debug line of the USB provider' | head -n 50000"
        let chatty = try script(vm.dir, "chatty", stream == "stderr" ? "\"\(crosvmDouble)\" \"$@\"; \(flood) >&2"
                                                                   : "\(flood); exec \"\(crosvmDouble)\" \"$@\"")
        let dev = usbDevice(2, node: try vm.node("mouse", vendor: 0x046d, product: 0xc52b), vendor: 0x046d, product: 0xc52b)
        let b = backend(vm, host, crosvm: chatty)
        let a = try await b.attachUSB(dev)
        #expect(a.id == "1")
        #expect(try await b.listAttached() == [a])
        try await b.detach(a)
        #expect(try vm.cli("list") == "devices")
    }

    @Test("unknown output, or a non-zero exit without an answer: clear errors")
    func oddCrosvm() async throws {
        let vm = try CrosvmVM()
        let host = try LoopHost()
        let dev = usbDevice(2, node: try vm.node("mouse", vendor: 0x046d, product: 0xc52b))
        let chatty = try script(vm.dir, "chatty", "echo 'attached, I think'")
        let e1 = await failure { () async throws(VMError) in _ = try await backend(vm, host, crosvm: chatty).attachUSB(dev) }
        #expect(e1 == .protocolError(vm: "vm1", detail: "crosvm usb attach \(dev.devnode): unexpected answer \"attached, I think\""))
        let crash = try script(vm.dir, "crash", "echo 'thread main panicked' >&2; exit 101")
        let e2 = await failure { () async throws(VMError) in _ = try await backend(vm, host, crosvm: crash).listAttached() }
        #expect(e2 == .commandFailed(vm: "vm1", command: "usb list", errorClass: "exit 101",
                                     message: "crosvm exited with status 101: thread main panicked"))
        let wrong = try script(vm.dir, "wrong", "echo ok 3")
        let e3 = await failure { () async throws(VMError) in _ = try await backend(vm, host, crosvm: wrong).listAttached() }
        #expect(e3 == .protocolError(vm: "vm1", detail: "crosvm usb list: unexpected answer \"ok 3\""))
    }

    @Test("operations of one VM run in order: concurrent attaches get distinct ports")
    func concurrentAttaches() async throws {
        let vm = try CrosvmVM()
        let host = try LoopHost()
        let b = backend(vm, host)
        let d1 = usbDevice(1, node: try vm.node("a", vendor: 1, product: 1), vendor: 1, product: 1)
        let d2 = usbDevice(2, node: try vm.node("b", vendor: 1, product: 2), vendor: 1, product: 2)
        async let a1 = b.attachUSB(d1)
        async let a2 = b.attachUSB(d2)
        let ids = try await Set([a1.id, a2.id])
        #expect(ids == ["1", "2"])
    }
}
