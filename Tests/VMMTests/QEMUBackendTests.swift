import DeviceModel
import Foundation
import Logging
import JSONKit
import Reactor
import Testing
import VHotplugTestSupport
@testable import VMM

let fixtures = Repository.root + "/Tests/HostDevicesTests/Fixtures"
let logger = Logger(label: "test")

/// The receiver of the logitech-unifying fixture: bus 1, address 4, port 2.
let receiver = USBDevice(sysName: "1-2", sysPath: "/devices/pci0000:00/0000:00:14.0/usb1/1-2", bus: 1, devnum: 4,
                         port: 2, portPath: [2], vendorId: 0x046d, productId: 0xc52b, devnode: "/dev/bus/usb/001/004")

@Suite("QMP client against broken peers")
struct QMPPeerTests {
    func open(_ path: String, timeout: Double = 0.3) async throws -> VMError? {
        let host = try LoopHost()
        return try await OnLoop(host.loop).run { loop in
            let c = QMPClient(vm: "vm1", path: path, loop: loop, logger: logger, timeout: timeout)
            do throws(VMError) {
                try await c.open()
                try await c.execute("query-status")
                return nil
            } catch {
                return error
            }
        }
    }

    @Test("an absent socket: the VM is not running")
    func absent() async throws {
        let e = try await open("/nonexistent/vm1.qmp")
        #expect(e?.isNotRunning == true)
        #expect(e?.description.contains("No such file or directory") == true)
    }

    @Test("a QEMU that never greets (stopped: the kernel takes the connection, nobody answers): timeout, not a hang")
    func silent() async throws {
        let qemu = try QEMUInstance()
        try qemu.pause()
        defer { kill(qemu.pid, SIGCONT) }
        let e = try await open(qemu.qmpPath)
        #expect(e == .timeout(vm: "vm1", step: "greeting"))
    }

    @Test("a socket in a folder any user can write is not used, unless the folder is sticky and the socket root's: anyone could have put it there")
    func untrustedFolder() async throws {
        let qemu = try QEMUInstance()
        defer { chmod(qemu.dir, 0o755) }
        // Any user may write there, and replace the socket: refused before any connection.
        chmod(qemu.dir, 0o777)
        let e = try await open(qemu.qmpPath)
        #expect(e == .unsupported(vm: "vm1", detail: "its socket \(qemu.qmpPath) is not used: it is in \(qemu.dir), which any user can write, "
            + "and anyone could put a socket of their own in its place; put it in a folder that only root or the VM's user can write"))
        // Sticky (as /tmp): root's socket is used; another user's is not.
        chmod(qemu.dir, 0o1777)
        #expect(try await open(qemu.qmpPath) == nil)
        try #require(chown(qemu.qmpPath, 65534, 65534) == 0)
        let other = try await open(qemu.qmpPath)
        #expect(other?.description.contains("it belongs to uid 65534, in \(qemu.dir), which any user can write") == true, "\(String(describing: other))")
        // In a folder only its owner writes, whoever's socket it is.
        chmod(qemu.dir, 0o755)
        #expect(try await open(qemu.qmpPath) == nil)
    }

    @Test("a busy socket (QEMU serving another client, its monitor serves one at a time): timeout")
    func neverAccepts() async throws {
        let qemu = try QEMUInstance()
        // The other client: greeted, and kept connected.
        let other = try APIClient(path: qemu.qmpPath)
        _ = try other.readLine()
        #expect(try await open(qemu.qmpPath) == .timeout(vm: "vm1", step: "greeting"))
        withExtendedLifetime(other) {}
    }

    @Test("garbage instead of a reply: a protocol error")
    func garbage() async throws {
        let server = try FakeQMPServer(.greetThenReply("this is not json\n"))
        let e = try await open(server.path)
        #expect(e?.description.contains("not a QMP message") == true)
    }

    @Test("a peer that never stops writing: the exchange ends at its deadline, the loop serves its timers meanwhile, the events kept are bounded")
    func flood() async throws {
        let server = try FakeQMPServer(.flood)
        let host = try LoopHost()
        final class Fired: @unchecked Sendable { var at: Deadline? }
        let fired = Fired()
        let (e, kept) = try await OnLoop(host.loop).run { loop -> (VMError?, Int) in
            let c = QMPClient(vm: "vm1", path: server.path, loop: loop, logger: logger, timeout: 0.5)
            // A timer due while the flood goes on: served only if the loop still looks at its fds.
            loop.schedule(at: .after(0.05)) { fired.at = .now() }
            do throws(VMError) {
                try await c.open()
                try await c.execute("query-status")
                return (nil, c.events.count)
            } catch {
                return (error, c.events.count)
            }
        }
        #expect(e == .timeout(vm: "vm1", step: "qmp_capabilities (QEMU kept writing)"))
        #expect(fired.at != nil)
        #expect(kept <= QMPClient.maxEvents)
    }

    @Test("events kept are bounded in bytes too: a peer that sends large events keeps only the newest within the budget")
    func largeEventsBounded() async throws {
        // 40 events of 64 KiB (2.5 MiB of lines) before the reply, then a small one: what is kept
        // fits in QMPClient.maxEventBytes, the newest last.
        let big = #"{"event": "BIG", "data": {"blob": ""# + String(repeating: "x", count: 64 << 10) + #""}}"# + "\n"
        let server = try FakeQMPServer(.replies([
            #"{"return": {}, "id": 1}"# + "\n",
            String(repeating: big, count: 40)
                + #"{"event": "DEVICE_DELETED", "data": {"device": "vhp-usb-1-2"}}"# + "\n"
                + #"{"return": {"status": "running", "running": true}, "id": 2}"# + "\n",
        ]))
        let host = try LoopHost()
        let names = try await OnLoop(host.loop).run { loop -> [String] in
            let c = QMPClient(vm: "vm1", path: server.path, loop: loop, logger: logger, timeout: 5)
            try await c.open()
            try await c.execute("query-status")
            return c.events.map(\.name)
        }
        #expect(names.count <= QMPClient.maxEventBytes / big.utf8.count + 1)
        #expect(names.last == "DEVICE_DELETED")
    }

    @Test("the reply to qmp_capabilities before the greeting: taken, and the command after it answered")
    func replyBeforeGreeting() async throws {
        let server = try FakeQMPServer(.replyBeforeGreeting(#"{"return": {"status": "running", "running": true}, "id": 2}"# + "\n"))
        let host = try LoopHost()
        let status = try await OnLoop(host.loop).run { loop -> String? in
            let c = QMPClient(vm: "vm1", path: server.path, loop: loop, logger: logger, timeout: 2)
            try c.start()
            return try await c.execute("query-status")["status"]?.stringValue
        }
        #expect(status == "running")
    }

    @Test("a peer that closes mid-reply: a protocol error")
    func closedMidReply() async throws {
        let server = try FakeQMPServer(.greetThenReply(#"{"return": {"#))
        let e = try await open(server.path)
        #expect(e?.description.contains("closed the connection") == true)
    }

    @Test("replies out of order: a reply to another request, an event, replies whose id is no integer, then ours")
    func outOfOrder() async throws {
        let server = try FakeQMPServer(.replies([
            #"{"return": {}, "id": 1}"# + "\n",
            #"{"return": {"stale": true}, "id": 77}"# + "\n" + #"{"event": "RESUME", "data": {}}"# + "\n"
                + #"{"return": {"odd": true}, "id": "2"}"# + "\n" + #"{"return": {"odd": true}, "id": 2.5}"# + "\n"
                + #"{"return": {"status": "paused", "running": false}, "id": 2}"# + "\n",
        ]))
        let host = try LoopHost()
        let status = try await OnLoop(host.loop).run { loop -> String? in
            let c = QMPClient(vm: "vm1", path: server.path, loop: loop, logger: logger, timeout: 2)
            try await c.open()
            let reply = try await c.execute("query-status")
            #expect(c.events.map(\.name) == ["RESUME"])
            return reply["status"]?.stringValue
        }
        #expect(status == "paused")
    }

    @Test("a request line is the renderer's output for {execute, arguments, id}, byte for byte, escapes included")
    func requestLines() throws {
        let host = try LoopHost()
        let c = QMPClient(vm: "vm1", path: "/nonexistent", loop: host.loop, logger: logger)
        let cases: [(String, [(String, JSONText)])] = [
            ("qmp_capabilities", []),
            ("device_add", [("driver", .string("usb-host")), ("id", .string("vhp-usb-1-2")), ("hostbus", .int(1)), ("hostaddr", .int(4))]),
            ("device_del", [("id", .string("vhp-usb-1-2"))]),
            ("qom-get", [("path", .string("/machine/peripheral/a\"b\\c\n")), ("property", .string("hostbus"))]),
            ("x\"y", [("list", .array([.int(-1), .bool(true), .null, .object([])]))]),
        ]
        for (k, (command, arguments)) in cases.enumerated() {
            let (id, line) = c.request(command, arguments)
            #expect(id == k + 1)
            var members: [(String, JSONText)] = [("execute", .string(command))]
            if !arguments.isEmpty { members.append(("arguments", .object(arguments))) }
            members.append(("id", .int(id)))
            #expect(line == JSONText.object(members).renderedBytes() + [0x0A], "\(String(decoding: line, as: UTF8.self))")
        }
    }

    @Test("lines that come a few bytes at a time are put together; a read that emptied the socket is followed by a wait, not by a read that finds nothing")
    func dribbled() async throws {
        let server = try FakeQMPServer(.dribble(chunk: 7, [
            #"{"return": {}, "id": 1}"# + "\n",
            #"{"return": {"status": "running", "running": true}, "id": 2}"# + "\r\n",
        ]))
        let host = try LoopHost()
        let (status, emptyReads) = try await OnLoop(host.loop).run { loop -> (String?, Int) in
            let c = QMPClient(vm: "vm1", path: server.path, loop: loop, logger: logger, timeout: 2)
            try await c.open()
            let reply = try await c.execute("query-status")
            return (reply["status"]?.stringValue, c.emptyReads)
        }
        #expect(status == "running")
        // About 30 pieces; only the first read (right after connect, perhaps before the
        // greeting's first piece) may find nothing.
        #expect(emptyReads <= 1)
    }

    @Test("a peer that stalls in the middle of a command: timeout naming the command, not a hang")
    func stallsMidCommand() async throws {
        let server = try FakeQMPServer(.replies([#"{"return": {}, "id": 1}"# + "\n", ""]))
        let e = try await open(server.path)
        #expect(e == .timeout(vm: "vm1", step: "query-status"))
    }

    @Test("a regular file in place of the socket: not running")
    func regularFile() async throws {
        let path = scratchPath("notasocket")
        FileManager.default.createFile(atPath: path, contents: Data())
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(try await open(path)?.isNotRunning == true)
    }
}

@Suite("QEMU backend against a real QEMU", .serialized)
struct QEMUBackendTests {
    @Test("QMP: negotiation, a reply, an error reply with its class")
    func qmp() async throws {
        let qemu = try QEMUInstance()
        let host = try LoopHost()
        let (status, error) = try await OnLoop(host.loop).run { loop in
            let c = QMPClient(vm: "vm1", path: qemu.qmpPath, loop: loop, logger: logger)
            try await c.open()
            let status = try await c.execute("query-status")["status"]?.stringValue
            var failure: VMError?
            do throws(VMError) { try await c.execute("device_del", [("id", .string("nope"))]) } catch let e { failure = e }
            c.close()
            return (status, failure)
        }
        #expect(status == "prelaunch")
        #expect(error == .commandFailed(vm: "vm1", command: "device_del", errorClass: "DeviceNotFound", message: "Device 'nope' not found"))
    }

    @Test("a connection kept for a next operation is looked at first: usable while QEMU runs, not once it has exited, even with its greeting still unread")
    func usableConnection() async throws {
        let qemu = try QEMUInstance()
        let host = try LoopHost()
        // As `prepare` leaves it: connected, qmp_capabilities sent, nothing read.
        let client = try await OnLoop(host.loop).run { loop in
            let c = QMPClient(vm: "vm1", path: qemu.qmpPath, loop: loop, logger: logger)
            try c.start()
            return UncheckedBox(c)
        }
        // QEMU's greeting (and its answer) wait on the socket, unread.
        var p = pollfd(fd: client.value.fd, events: Int16(POLLIN), revents: 0)
        #expect(poll(&p, 1, 20_000) == 1)
        let before = try await OnLoop(host.loop).run { _ in client.value.isUsable }
        qemu.stop()
        let after = try await OnLoop(host.loop).run { _ in client.value.isUsable }
        #expect(before)
        #expect(!after)
        try await OnLoop(host.loop).run { _ in client.value.close() }
    }

    @Test("waiting for an event past its deadline times out and leaves the connection usable")
    func eventTimeoutKeepsConnection() async throws {
        let qemu = try QEMUInstance()
        let host = try LoopHost()
        let (timedOut, status) = try await OnLoop(host.loop).run { loop in
            let c = QMPClient(vm: "vm1", path: qemu.qmpPath, loop: loop, logger: logger)
            try await c.open()
            var timedOut = false
            do throws(VMError) {
                _ = try await c.waitForEvent("DEVICE_DELETED", deadline: .after(0.05)) { _ in true }
            } catch .timeout {
                timedOut = true
            }
            let status = try await c.execute("query-status")["status"]?.stringValue
            c.close()
            return (timedOut, status)
        }
        #expect(timedOut)
        #expect(status == "prelaunch")
    }

    @Test("attach a USB device of the testbed, list it, attach again (no double), detach")
    func usbRoundTrip() async throws {
        let (qemu, host, backend) = try await receiverRig()
        defer { withExtendedLifetime(host) {} }
        let a = try await backend.attachUSB(receiver)
        #expect(a.id == "vhp-usb-1-2")
        #expect(try qemu.attachedIds() == ["vhp-usb-1-2"])
        let listed = try await backend.listAttached()
        #expect(listed.count == 1)
        #expect(listed.first?.hostKey == "1-2" && listed.first?.usbBus == 1 && listed.first?.usbAddress == 4)
        _ = try await backend.attachUSB(receiver)          // already there: success, still one
        #expect(try qemu.attachedIds() == ["vhp-usb-1-2"])
        try await backend.detach(a)
        #expect(try qemu.attachedIds() == [])
        try await backend.detach(a)                         // already gone: not an error
    }

    @Test("a stale id is removed only while it holds the device listed: one an attach reused since stays")
    func removeStaleChecksTheDevice() async throws {
        let (qemu, host, backend) = try await receiverRig()
        defer { withExtendedLifetime(host) {} }
        _ = try await backend.attachUSB(receiver)
        let listed = try #require(try await backend.listAttached().first)
        // As listed before the receiver was replugged (another address) and attached again under its id.
        var earlier = listed
        earlier.usbAddress = 3
        #expect(try await backend.removeStale(earlier) == false)
        #expect(try qemu.attachedIds() == ["vhp-usb-1-2"])
        #expect(try await backend.removeStale(listed) == true)
        #expect(try qemu.attachedIds() == [])
        // Gone meanwhile: nothing left to remove, and no device_del for it.
        #expect(try await backend.removeStale(listed) == true)
    }

    /// QEMU's `hostbus` and `hostaddr` of a usb-host device are what it was asked for by: one
    /// attached by its node (`hostdevice`, when QEMU's own USB list lacks the device) has 0 in
    /// both. Read as 0/0, a restarted daemon would find no device for it and remove it from the
    /// guest as stale. (QEMU under umockdev cannot open a node: a QMP peer answers as QEMU does.)
    @Test("a usb-host device attached by its node is listed with the bus and address of its node, and removeStale checks them")
    func byNodeListed() async throws {
        let byNode = #"{"return": "/dev/bus/usb/001/004", "id": 5}"#
        let list = try FakeQMPServer(.replies([
            #"{"return": {}, "id": 1}"# + "\n",
            #"{"return": [{"name": "vhp-usb-1-2", "type": "child<usb-host>"}, {"name": "other", "type": "child<usb-host>"}], "id": 2}"# + "\n",
            #"{"return": 0, "id": 3}"# + "\n", #"{"return": 0, "id": 4}"# + "\n", byNode + "\n",
        ]))
        let host = try LoopHost()
        let listed = try await QEMUBackend(name: "vm1", socketPath: list.path, loop: host.loop, logger: logger).listAttached()
        #expect(listed.count == 1)
        #expect(listed.first?.hostKey == "1-2" && listed.first?.usbBus == 1 && listed.first?.usbAddress == 4)
        #expect(list.received.contains { $0.contains(#""property":"hostdevice""#) })

        // removeStale reads the node too: the same device, so it is removed (device_del, then DEVICE_DELETED).
        let remove = try FakeQMPServer(.replies([
            #"{"return": {}, "id": 1}"# + "\n",
            #"{"return": 0, "id": 2}"# + "\n", #"{"return": 0, "id": 3}"# + "\n", byNode.replacingOccurrences(of: #""id": 5"#, with: #""id": 4"#) + "\n",
            #"{"return": {}, "id": 5}"# + "\n" + #"{"event": "DEVICE_DELETED", "data": {"device": "vhp-usb-1-2", "path": "/machine/peripheral/vhp-usb-1-2"}, "timestamp": {"seconds": 1, "microseconds": 0}}"# + "\n",
        ]))
        let first = try #require(listed.first)
        #expect(try await QEMUBackend(name: "vm1", socketPath: remove.path, loop: host.loop, logger: logger).removeStale(first) == true)
        #expect(remove.received.contains { $0.contains(#""execute":"device_del""#) })

        // A node path that names no bus and address (a descriptor QEMU was passed) says nothing.
        #expect(QEMUBackend.busAndAddress(node: "/dev/bus/usb/003/017")! == (3, 17))
        for other in ["/dev/fdset/1", "/dev/bus/usb/1/4", "/dev/bus/usb/001", "dev/bus/usb/001/004", "/dev/bus/usb/000/004", ""] {
            #expect(QEMUBackend.busAndAddress(node: other) == nil, "\(other)")
        }
    }

    /// A testbed with the receiver, a QEMU in it (which holds the testbed), and a backend for that QEMU.
    func receiverRig() async throws -> (qemu: QEMUInstance, host: LoopHost, backend: QEMUBackend) {
        let tb = await Testbed.make()
        try tb.add(file: fixtures + "/logitech-unifying.umockdev")
        let qemu = try QEMUInstance(testbed: tb)
        let host = try LoopHost()
        return (qemu, host, QEMUBackend(name: "vm1", socketPath: qemu.qmpPath, loop: host.loop, logger: logger))
    }

    /// A QEMU (no testbed), a backend for it, and the receiver at an address no device has.
    func absentDeviceRig() throws -> (qemu: QEMUInstance, host: LoopHost, backend: QEMUBackend, missing: USBDevice) {
        let qemu = try QEMUInstance()
        let host = try LoopHost()
        var missing = receiver
        missing.devnum = 99
        return (qemu, host, QEMUBackend(name: "vm1", socketPath: qemu.qmpPath, loop: host.loop, logger: logger), missing)
    }

    @Test("a device QEMU cannot find: the error says so, after bounded retries and an attach by its node")
    func absentDevice() async throws {
        let rig = try absentDeviceRig()
        let e = await #expect(throws: VMError.self) { try await rig.backend.attachUSB(rig.missing) }
        #expect(e?.description.contains("failed to find host usb device 1:99") == true)
        #expect(e?.description.contains("by node") == true)
        #expect(try rig.qemu.attachedIds() == [])
    }

    @Test("a device QEMU's USB list lacks is attached by its node; that device_add unanswered by its deadline is an unanswered attach (QEMU may still add it), not a failure")
    func byNodeUnanswered() async throws {
        // qmp_capabilities answered; each device_add by bus and address "failed to find host usb
        // device" (1 + 8 retries, 5 ms doubling below 1 s); the one by node never answered.
        let notFound = (2...10).map { #"{"error": {"class": "GenericError", "desc": "failed to find host usb device 1:4"}, "id": \#($0)}"# + "\n" }
        let server = try FakeQMPServer(.replies([#"{"return": {}, "id": 1}"# + "\n"] + notFound + [""]))
        let host = try LoopHost()
        let backend = QEMUBackend(name: "vm1", socketPath: server.path, loop: host.loop, logger: logger, timeout: 0.3)
        let e = await #expect(throws: VMError.self) { try await backend.attachUSB(receiver) }
        #expect(e?.isAttachUnanswered == true)
        #expect(e == .timeout(vm: "vm1", step: "device_add usb-host 1-2"))
        let adds = server.received.filter { $0.contains("device_add") }
        #expect(adds.count == 10)
        #expect(adds.dropLast().allSatisfy { $0.contains(#""hostbus":1"#) && $0.contains(#""hostaddr":4"#) })
        #expect(adds.last?.contains(#""hostdevice":"/dev/bus/usb/001/004""#) == true)
        #expect(adds.allSatisfy { $0.contains(#""id":"vhp-usb-1-2""#) })
    }

    @Test("a peer that closes the connection before its greeting (a QEMU killed, its socket file left) is a VM not running")
    func closedBeforeGreeting() async throws {
        let server = try FakeQMPServer(.closeAtOnce)
        let host = try LoopHost()
        let backend = QEMUBackend(name: "vm1", socketPath: server.path, loop: host.loop, logger: logger, timeout: 2)
        let e = await #expect(throws: VMError.self) { _ = try await backend.listAttached() }
        #expect(e?.isNotRunning == true, "\(String(describing: e))")
    }

    @Test("a device_del QEMU does not answer in time is an unplug still pending (the daemon asks again later), not a failure")
    func deviceDelUnanswered() async throws {
        let server = try FakeQMPServer(.replies([#"{"return": {}, "id": 1}"# + "\n", ""]))
        let host = try LoopHost()
        let backend = QEMUBackend(name: "vm1", socketPath: server.path, loop: host.loop, logger: logger, timeout: 0.3)
        let e = await #expect(throws: VMError.self) {
            try await backend.detach(Attachment(vm: "vm1", kind: .usb, id: "vhp-usb-1-2", hostKey: "1-2"))
        }
        #expect(e?.isUnplugPending == true, "\(String(describing: e))")
        #expect(e == .timeout(vm: "vm1", step: VMError.unplugStep + "vhp-usb-1-2 (QEMU did not answer device_del)"))
        #expect(server.received.contains { $0.contains(#""execute":"device_del""#) })
    }

    @Test("a device that leaves the host during its attach is not retried: one device_add, no attach by node")
    func deviceLeftDuringAttach() async throws {
        let rig = try absentDeviceRig()
        final class Asked: @unchecked Sendable { var count = 0 }
        let asked = Asked()
        // Present when the attach starts; gone by the time QEMU's first answer comes.
        let e = await #expect(throws: VMError.self) {
            try await rig.backend.attachUSB(rig.missing, present: { asked.count += 1; return false })
        }
        #expect(e?.description.contains("failed to find host usb device 1:99; the device has left the host") == true)
        #expect(e?.description.contains("by node") == false)
        #expect(asked.count == 1)
    }

    /// Runs `detach` of each id as its own task, all started in one turn of the loop (as a
    /// hub's unplug starts them), and returns each one's error (nil: detached).
    /// An id `vhp-pci-...` is detached as a PCI device, any other as a USB one.
    func detachTogether(_ backend: QEMUBackend, _ loop: EventLoop, _ ids: [String], kind: AttachmentKind? = nil) async throws -> [VMError?] {
        try await OnLoop(loop).run { loop in
            let tasks = ids.map { id in
                Task(executorPreference: loop) { () async -> VMError? in
                    do throws(VMError) {
                        let k = kind ?? (id.hasPrefix("vhp-pci-") ? .pci : .usb)
                        try await backend.detach(Attachment(vm: "vm1", kind: k, id: id, hostKey: ""))
                        return nil
                    } catch {
                        return error
                    }
                }
            }
            var errors: [VMError?] = []
            for t in tasks { errors.append(await t.value) }
            return errors
        }
    }

    @Test("devices detached together share one connection: every device_del goes out, their DEVICE_DELETED events are awaited together")
    func detachBatch() async throws {
        let qemu = try QEMUInstance()
        for n in 1...3 {
            _ = try qemu.observe("device_add", #"{"driver": "usb-mouse", "id": "vhp-usb-1-\#(n)", "bus": "xhci.0"}"#)
        }
        #expect(try qemu.attachedIds() == ["vhp-usb-1-1", "vhp-usb-1-2", "vhp-usb-1-3"])
        let host = try LoopHost()
        let log = CapturedLog()
        let backend = QEMUBackend(name: "vm1", socketPath: qemu.qmpPath, loop: host.loop, logger: log.logger())
        // one of them QEMU does not have: already gone, not an error
        let errors = try await detachTogether(backend, host.loop, ["vhp-usb-1-1", "vhp-usb-1-2", "vhp-usb-9-9", "vhp-usb-1-3"])
        #expect(errors.allSatisfy { $0 == nil }, "\(errors)")
        #expect(try qemu.attachedIds() == [])
        let sent = log.all.filter { $0.contains("qmp vm1 -> ") }
        #expect(sent.filter { $0.contains("qmp_capabilities") }.count == 1, "one connection: \(sent)")
        #expect(sent.filter { $0.contains("device_del") }.count == 4)
        #expect(log.all.filter { $0.contains("DEVICE_DELETED") }.count == 3)
        // and the next detaches, later, make a batch of their own
        _ = try qemu.observe("device_add", #"{"driver": "usb-mouse", "id": "vhp-usb-1-4", "bus": "xhci.0"}"#)
        #expect(try await detachTogether(backend, host.loop, ["vhp-usb-1-4"]) == [nil])
        #expect(log.all.filter { $0.contains("qmp vm1 -> ") && $0.contains("qmp_capabilities") }.count == 2)
        #expect(try qemu.attachedIds() == [])
    }

    /// A QEMU with an e1000e (vhp-pci-0000-01-00.0, which no guest OS will release) and a
    /// USB mouse (vhp-usb-1-1), and a backend that waits 0.3 s for DEVICE_DELETED.
    func nicAndMouse() throws -> (QEMUInstance, LoopHost, CapturedLog, QEMUBackend) {
        let qemu = try QEMUInstance(extraArgs: ["-device", "pcie-root-port,id=rp1,chassis=1",
                                                "-device", "e1000e,bus=rp1,id=vhp-pci-0000-01-00.0"])
        _ = try qemu.observe("device_add", #"{"driver": "usb-mouse", "id": "vhp-usb-1-1", "bus": "xhci.0"}"#)
        let host = try LoopHost()
        let log = CapturedLog()
        let backend = QEMUBackend(name: "vm1", socketPath: qemu.qmpPath, loop: host.loop, logger: log.logger(), unplugTimeout: 0.3)
        return (qemu, host, log, backend)
    }

    @Test("in a batch, a device whose DEVICE_DELETED never comes times out alone; the others are detached")
    func detachBatchTimeout() async throws {
        // A PCI device with no guest OS to acknowledge its unplug: no DEVICE_DELETED (FACTS.md).
        // Detached here as a USB one would be, to put it in the batch.
        let (qemu, host, log, backend) = try nicAndMouse()
        let errors = try await detachTogether(backend, host.loop, ["vhp-pci-0000-01-00.0", "vhp-usb-1-1"], kind: .usb)
        #expect(errors[0] == .timeout(vm: "vm1", step: "DEVICE_DELETED for vhp-pci-0000-01-00.0 (the guest did not release it)"))
        #expect(errors[1] == nil)
        #expect(try qemu.attachedIds() == ["vhp-pci-0000-01-00.0"])
        #expect(log.all.filter { $0.contains("-> {\"execute\":\"qmp_capabilities\"") }.count == 1)
    }

    @Test("a detach asked again while QEMU still waits for the guest (\"already in the process of unplug\") waits for the same DEVICE_DELETED")
    func detachAgainWhilePending() async throws {
        let (qemu, host, log, backend) = try nicAndMouse()
        let timedOut = VMError.timeout(vm: "vm1", step: "DEVICE_DELETED for vhp-pci-0000-01-00.0 (the guest did not release it)")
        let first = try await detachTogether(backend, host.loop, ["vhp-pci-0000-01-00.0"])
        #expect(first == [timedOut])
        let again = try await detachTogether(backend, host.loop, ["vhp-pci-0000-01-00.0"])
        #expect(again == [timedOut])
        #expect(log.all.contains { $0.contains("already in the process of unplug") })
        #expect(try qemu.attachedIds().contains("vhp-pci-0000-01-00.0"))
    }

    @Test("PCI devices are not batched: each detach has its own connection, in the order asked")
    func pciNotBatched() async throws {
        let (qemu, host, log, backend) = try nicAndMouse()
        let errors = try await detachTogether(backend, host.loop, ["vhp-pci-0000-01-00.0", "vhp-usb-1-1"])
        #expect(errors[0] == .timeout(vm: "vm1", step: "DEVICE_DELETED for vhp-pci-0000-01-00.0 (the guest did not release it)"))
        #expect(errors[1] == nil)
        let sent = log.all.filter { $0.contains("qmp vm1 -> ") }
        #expect(sent.filter { $0.contains("qmp_capabilities") }.count == 2)
        // the USB device's device_del waited for the PCI one's session to end
        let order = sent.filter { $0.contains("device_del") }.map { $0.contains("vhp-pci-") ? "pci" : "usb" }
        #expect(order == ["pci", "usb"])
        withExtendedLifetime(qemu) {} // QEMU runs until here
    }

    @Test("a VM that is not running: every detach of the batch says so")
    func detachBatchNotRunning() async throws {
        let qemu = try QEMUInstance()
        let host = try LoopHost()
        let backend = QEMUBackend(name: "vm1", socketPath: qemu.qmpPath, loop: host.loop, logger: logger)
        qemu.stop()
        let errors = try await detachTogether(backend, host.loop, ["vhp-usb-1-1", "vhp-usb-1-2", "vhp-usb-1-3"])
        #expect(errors.allSatisfy { $0?.isNotRunning == true }, "\(errors)")
    }

    @Test("a VM killed: not running; started again: usable")
    func restart() async throws {
        let (qemu, host, backend) = try await receiverRig()
        defer { withExtendedLifetime(host) {} }
        qemu.stop()
        let e = await #expect(throws: VMError.self) { try await backend.attachUSB(receiver) }
        #expect(e?.isNotRunning == true)
        try qemu.start()
        _ = try await backend.attachUSB(receiver)
        #expect(try qemu.attachedIds() == ["vhp-usb-1-2"])
    }
}

@Suite("QMP lines")
struct QMPLineTests {
    func parsed(_ text: String) -> QMPMessage? {
        var p = JSONParser(bytes: Array(text.utf8))
        return (try? p.parseDocument()).flatMap(QMPMessage.from)
    }

    /// An event's data as `key=value` lines (string values; `?` for any other), nil for none.
    func flat(_ data: JSONNode?) -> [String]? {
        guard let data else { return nil }
        guard case .object(let o) = data.value else { return ["not an object"] }
        return o.members.map { "\($0.key)=\($0.value.stringValue ?? "?")" }
    }

    @Test("the empty return is read without the parser, as the parser reads it; any other line is left to the parser")
    func emptyReturn() {
        for (text, id) in [(#"{"return": {}, "id": 3}"#, 3), (#"{"return": {}, "id": 0}"#, 0), (#"{"return": {}, "id": 123456789012345678}"#, 123456789012345678)] {
            guard case .reply(let fast, let value)? = QMPMessage.emptyReturn(Array(text.utf8)),
                  case .reply(let slow, _)? = parsed(text) else {
                Issue.record("not read as a reply: \(text)")
                continue
            }
            #expect(fast == id && slow == id)
            guard case .object(let o) = value.value else { Issue.record("not an object"); continue }
            #expect(o.members.isEmpty)
        }
        for text in [#"{"return": {}, "id": }"#, #"{"return": {}, "id": -1}"#, #"{"return": {}, "id": 1x}"#,
                     #"{"return": {}, "id": 1}}"#, #"{"return": {}}"#, #"{"return": {}, "id": 1234567890123456789012}"#,
                     #"{"return": {"a": 1}, "id": 1}"#, #"{"QMP": {}}"#, #"{"return": {}, "id": 07}"#, ""] {
            #expect(QMPMessage.emptyReturn(Array(text.utf8)) == nil, "\(text)")
        }
    }

    @Test("QEMU's own lines, CR included, take the fast path: the empty return, the greeting and an event of plain strings (DEVICE_DELETED)")
    func fastPathOnQEMUsLines() {
        // Byte for byte what QEMU 7.2 writes (FACTS.md), the LF cut as the client cuts it.
        let greeting = #"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}"# + "\r"
        guard case .greeting? = QMPMessage.fastPath(Array(greeting.utf8)) else {
            Issue.record("the greeting missed the fast path")
            return
        }
        guard case .greeting? = parsed(greeting) else { Issue.record("the parser does not read the greeting"); return }
        guard case .reply(let id, _)? = QMPMessage.fastPath(Array((#"{"return": {}, "id": 2}"# + "\r").utf8)) else {
            Issue.record("the empty return missed the fast path")
            return
        }
        #expect(id == 2)
        // QEMU 7.2's DEVICE_DELETED of a usb-host, byte for byte: the event and its data as the parser reads them.
        let deleted = #"{"timestamp": {"seconds": 1796542435, "microseconds": 850845}, "event": "DEVICE_DELETED", "data": {"device": "vhp-usb-1-2", "path": "/machine/peripheral/vhp-usb-1-2"}}"#
        for text in [deleted + "\r", #"{"timestamp": {"seconds": 0, "microseconds": 7}, "event": "RESUME"}"#,
                     #"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "X", "data": {}}"#,
                     #"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "X", "data": {"a": "1", "a": "2"}}"#] {
            guard case .event(let name, let data)? = QMPMessage.fastPath(Array(text.utf8)),
                  case .event(let parsedName, let parsedData)? = parsed(text) else {
                Issue.record("missed the event's fast path, or the parser disagrees: \(text)")
                continue
            }
            #expect(name == parsedName)
            #expect(flat(data) == flat(parsedData), "\(text)")
        }
        guard case .event(_, let data)? = QMPMessage.fastPath(Array(deleted.utf8)) else {
            Issue.record("DEVICE_DELETED without its CR missed the fast path")
            return
        }
        #expect(data?["device"]?.stringValue == "vhp-usb-1-2" && data?["path"]?.stringValue == "/machine/peripheral/vhp-usb-1-2")
        // Anything else goes to the parser.
        for text in [#"{"return": {"a": 1}, "id": 1}"#, #"{"event": "DEVICE_DELETED", "data": {"device": "x"}}"#, #"{"QMP": 1}"#, "\r", "",
                     #"{"timestamp": {"seconds": 01, "microseconds": 2}, "event": "X"}"#,
                     #"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "X", "data": {"n": 5}}"#,
                     #"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "X", "data": {"a": "\u0041"}}"#,
                     #"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "X"} "#] {
            #expect(QMPMessage.fastPath(Array(text.utf8)) == nil, "\(text)")
        }
        // A line that starts as the greeting is one for the parser too.
        guard case .greeting? = parsed(#"{"QMP": {}, "return": {}, "id": 1}"#) else { Issue.record("QMP member not read first"); return }
    }
}

/// Hands a loop-bound object between a test and its loop's thread.
struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
