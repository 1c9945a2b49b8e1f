import DeviceModel
import HotplugConfig
import JSONKit
import Logging
import Reactor

/// A QEMU VM driven over QMP. One connection per batch of commands (QEMU serves
/// one client at a time, and VM managers need the socket too); the operations
/// of this VM run in order, and never wait for another VM.
public actor QEMUBackend: VMBackend {
    public nonisolated let name: String
    public nonisolated var type: VMType { .qemu }
    public nonisolated let socketPath: String
    private let loop: EventLoop
    private let logger: Logger
    private let lock = AsyncLock()
    /// Seconds for each QMP exchange.
    let timeout: Double
    /// Seconds to wait for DEVICE_DELETED after device_del.
    let unplugTimeout: Double
    /// Seconds for a `device_add vfio-pci` (QEMU maps the device's memory).
    let pciTimeout: Double

    public nonisolated var unownedExecutor: UnownedSerialExecutor { loop.asUnownedSerialExecutor() }

    public init(name: String, socketPath: String, loop: EventLoop, logger: Logger,
                timeout: Double = 5, unplugTimeout: Double = 10, pciTimeout: Double = 60, batchHold: Double = 0.25) {
        self.name = name
        self.socketPath = socketPath
        self.loop = loop
        self.logger = logger
        self.timeout = timeout
        self.unplugTimeout = unplugTimeout
        self.pciTimeout = pciTimeout
        self.batchHold = batchHold
    }

    /// A connection opened ahead of an operation (`prepare`): connected, its
    /// `qmp_capabilities` sent, closed by its timer when no operation takes it.
    /// `handedOver`: kept by the operation before for the one waiting (not `prepare`'s).
    private var prepared: (client: QMPClient, timer: TimerToken, handedOver: Bool)?
    /// How long a prepared connection waits for its operation.
    static let preparedLinger = 0.05
    /// Seconds after its connect a connection may still be passed on to a waiting
    /// operation: a batch holds the socket this long at most before the VM's other
    /// clients (its manager), waiting in the listen backlog, get their turn.
    let batchHold: Double

    /// Runs `body` on a fresh connection, after the operations queued before it.
    /// The connection is made and `qmp_capabilities` sent at once; the first command
    /// follows it without waiting for the greeting (QEMU answers them in order).
    /// A connection `prepare` made is taken when there is one, and so is the one the
    /// operation before this one ended on when this one was already waiting: operations
    /// asked together (the devices of a dock, `-a` at start) share one connection, held
    /// for as long as they keep coming and no longer.
    public func session<T>(_ body: (QMPClient) async throws(VMError) -> T) async throws(VMError) -> T {
        await lock.acquire()
        defer { lock.release() }
        var client: QMPClient
        if let p = prepared {
            prepared = nil
            loop.cancel(p.timer)
            client = p.client
            if !client.isUsable {
                client.close()
                client = QMPClient(vm: name, path: socketPath, loop: loop, logger: logger, timeout: timeout)
            }
        } else {
            client = QMPClient(vm: name, path: socketPath, loop: loop, logger: logger, timeout: timeout)
        }
        // (Runs before the lock's release: the next operation finds the connection kept.)
        var keep = false
        defer { keep ? handOver(client) : client.close() }
        if !client.isOpen { try await connect(client) }
        let result = try await body(client)
        // Only a connection whose exchanges all ended well (after a timeout or an error
        // an answer may still be on its way, and the client has closed it), and not for ever.
        keep = lock.queued > 0 && client.isOpen && Deadline.now().seconds(since: client.connectedAt) < batchHold
        return result
    }

    /// Keeps a connection for the operation waiting on the lock.
    private func handOver(_ client: QMPClient) {
        dropPrepared()
        client.clearEvents()
        keepForNext(client, handedOver: true)
    }

    /// Keeps a connection for the next operation; closed by its timer if none takes it.
    private func keepForNext(_ client: QMPClient, handedOver: Bool) {
        let timer = loop.schedule(at: .after(Self.preparedLinger)) {
            self.assumeIsolated { $0.dropPrepared() }
        }
        prepared = (client, timer, handedOver)
    }

    /// Connects; a full listen backlog (QEMU busy with another client: its manager,
    /// or a stopped QEMU) is tried again with a short back-off until the exchange's deadline.
    private func connect(_ client: QMPClient) async throws(VMError) {
        let deadline = Deadline.after(timeout)
        var delay = 0.005
        while true {
            do throws(VMError) {
                try client.start()
                return
            } catch .timeout(let vm, let step) where step.hasPrefix("connect") {
                guard Deadline.now() < deadline else { throw .timeout(vm: vm, step: step) }
                await loop.sleep(min(delay, max(0, deadline.seconds(since: .now()))))
                delay = min(delay * 2, 0.25)
            }
        }
    }

    /// Connects while the daemon reads a new device (and sends `qmp_capabilities`),
    /// so that its `device_add` goes out as soon as the rules have decided. Only when
    /// no operation runs: the socket serves one client at a time. Called on the
    /// loop's thread (the daemon's actor shares this actor's executor), so the
    /// connect happens before the caller goes on.
    public nonisolated func prepare() {
        assumeIsolated { $0.startPrepared() }
    }

    private func startPrepared() {
        guard prepared == nil, !lock.isHeld else { return }
        let client = QMPClient(vm: name, path: socketPath, loop: loop, logger: logger, timeout: timeout)
        do {
            try client.start()
        } catch {
            return // the operation, if one comes, connects itself and reports the error
        }
        keepForNext(client, handedOver: false)
    }

    /// Closes a connection `prepare` made for an operation that will not come (one kept
    /// for an operation waiting on the lock stays for it).
    public nonisolated func unprepare() {
        assumeIsolated { backend in
            if backend.prepared?.handedOver == false { backend.dropPrepared() }
        }
    }

    private func dropPrepared() {
        guard let p = prepared else { return }
        prepared = nil
        loop.cancel(p.timer)
        p.client.close()
    }

    // MARK: USB

    /// `device_add usb-host` with the device's bus and address, under a vhotplug id.
    ///
    /// QEMU's libusb learns of a new device from the same uevent as vhotplug:
    /// "failed to find host usb device" right after a plug means QEMU is behind,
    /// so that error is retried with a short back-off, bounded (about 1.3 s), while
    /// `present` says the device is still there (QEMU cannot find one that has left).
    /// An id that already exists is checked: the same device is success,
    /// another one (a stale attachment) is removed first.
    public func attachUSB(_ device: USBDevice, present: @escaping @Sendable () -> Bool) async throws(VMError) -> Attachment {
        let attachment = made(by: .usb(device))
        let id = attachment.id
        let args: [(String, JSONText)] = [
            ("driver", .string("usb-host")), ("id", .string(id)),
            ("hostbus", .int(device.bus)), ("hostaddr", .int(device.devnum)),
        ]
        return try await session { (qmp) throws(VMError) in
            var delay = 0.005
            while true {
                do throws(VMError) {
                    try await unanswered("usb-host \(device.sysName)") { () throws(VMError) in try await qmp.execute("device_add", args) }
                    return attachment
                } catch .commandFailed(let vm, let command, let cls, let message) where message.contains("failed to find host usb device") {
                    // A device unplugged meanwhile is not waited for: each failed device_add holds
                    // this VM's socket (QEMU answers it after its RCU drain), and so every device behind it.
                    let left = VMError.commandFailed(vm: vm, command: command, errorClass: cls,
                                                     message: message + "; the device has left the host")
                    guard present() else { throw left }
                    if delay < 1 {
                        logger.debug("VM \(name): QEMU does not know \(device.sysName) yet; retrying in \(Int(delay * 1000)) ms")
                        await loop.sleep(delay)
                        delay *= 2
                        guard present() else { throw left }
                        continue
                    }
                    // QEMU's libusb never learnt of the device (it happens when no udevd
                    // runs): let QEMU open the node itself.
                    logger.info("VM \(name): QEMU's USB list lacks \(device.sysName); attaching by its node \(device.devnode)")
                    do throws(VMError) {
                        try await unanswered("usb-host \(device.sysName)") { () throws(VMError) in
                            try await qmp.execute("device_add", [
                                ("driver", .string("usb-host")), ("id", .string(id)), ("hostdevice", .string(device.devnode)),
                            ])
                        }
                        return attachment
                    } catch {
                        // Unanswered: QEMU may still add it (the caller asks later).
                        if error.isAttachUnanswered { throw error }
                        throw .commandFailed(vm: vm, command: command, errorClass: cls,
                                             message: message + "; by node: \(error)")
                    }
                } catch .commandFailed(_, _, _, let message) where message.contains("Duplicate device ID") {
                    if let existing = try await usbHost(qmp, id: id), existing == (device.bus, device.devnum) {
                        return attachment
                    }
                    logger.info("VM \(name): \(id) holds another device; replacing it")
                    try await deleteDevice(qmp, id: id)
                }
            }
        }
    }

    /// The host bus and address of a usb-host device, or nil.
    private func usbHost(_ qmp: QMPClient, id: String) async throws(VMError) -> (Int, Int)? {
        do throws(VMError) {
            return try await hostAddress(qmp, id: id)
        } catch .commandFailed {
            return nil
        }
    }

    /// The host bus and address of usb-host device `id`; nil when QEMU does not say. `hostbus`
    /// and `hostaddr` are what the device was asked for by: one attached by its node
    /// (`hostdevice`, the fallback above) has 0 in both, and its node names them instead.
    /// Errors of QEMU (the id gone: `DeviceNotFound`) are thrown.
    private func hostAddress(_ qmp: QMPClient, id: String) async throws(VMError) -> (Int, Int)? {
        guard let b = try await property(qmp, id, "hostbus").intValue,
              let a = try await property(qmp, id, "hostaddr").intValue else { return nil }
        if b != 0 || a != 0 { return (b, a) }
        guard let node = try await property(qmp, id, "hostdevice").stringValue else { return nil }
        return Self.busAndAddress(node: node)
    }

    /// `/dev/bus/usb/BBB/DDD` -> (BBB, DDD); nil for another path (a `/dev/fdset/N`).
    static func busAndAddress(node: String) -> (Int, Int)? {
        let parts = node.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 6, parts[0].isEmpty, parts[1] == "dev", parts[2] == "bus", parts[3] == "usb",
              parts[4].count == 3, parts[5].count == 3,
              let b = Int(parts[4]), let a = Int(parts[5]), b > 0, a > 0 else { return nil }
        return (b, a)
    }

    /// A property of vhotplug's device `id` (`qom-get` below /machine/peripheral).
    private func property(_ qmp: QMPClient, _ id: String, _ name: String) async throws(VMError) -> JSONNode {
        try await qmp.execute("qom-get", [("path", .string("/machine/peripheral/\(id)")), ("property", .string(name))])
    }

    // MARK: PCI and evdev

    /// `device_add vfio-pci host=ADDRESS bus=<free root port>` (root buses cannot hot-plug).
    /// A timeout of the `device_add` itself is `VMError.isAttachUnanswered`: QEMU may still
    /// finish it, and the caller asks later (`holds`) rather than take the device back.
    public func attachPCI(_ device: PCIDevice) async throws(VMError) -> Attachment {
        let attachment = made(by: .pci(device))
        let args: [(String, JSONText)] = [("driver", .string("vfio-pci")), ("host", .string(device.address)), ("id", .string(attachment.id))]
        return try await session { (qmp) throws(VMError) in
            try await unlessPresent(qmp, attachment, property: "host", value: device.address) { () throws(VMError) in
                let port = try await freeRootPort(qmp, prefix: nil, for: device.address)
                // Realizing vfio-pci maps the device's memory: seconds on a real host,
                // about 5 s under TCG. It gets its own, longer deadline.
                try await unanswered("vfio-pci \(device.address)") { () throws(VMError) in
                    try await qmp.execute("device_add", args + [("bus", .string(port))], timeout: pciTimeout)
                }
            }
        }
    }

    /// Runs a `device_add`; a timeout once it may have gone out (its reply, or the greeting
    /// read before it) is `VMError.isAttachUnanswered`, step `device_add WHAT`: QEMU may still
    /// add the device, and the caller asks later (`holds`) rather than take it as failed.
    private func unanswered(_ what: String, _ add: () async throws(VMError) -> Void) async throws(VMError) {
        do throws(VMError) {
            try await add()
        } catch .timeout {
            throw .timeout(vm: name, step: VMError.attachStep + what)
        }
    }

    public nonisolated func attachment(for device: HostDevice) -> Attachment? { made(by: device) }

    /// What an attach of `device` makes: vhotplug's id, and what identifies the device on the host.
    nonisolated func made(by device: HostDevice) -> Attachment {
        switch device {
        case .usb(let d):
            return Attachment(vm: name, kind: .usb, id: DeviceIds.usb(d), hostKey: DeviceIds.usbKey(d),
                              usbVendor: d.vendorId, usbProduct: d.productId, usbBus: d.bus, usbAddress: d.devnum)
        case .pci(let d):
            var a = Attachment(vm: name, kind: .pci, id: DeviceIds.pci(address: d.address), hostKey: d.address)
            a.pciHost = d.address
            return a
        case .input(let d):
            return Attachment(vm: name, kind: .evdev, id: DeviceIds.evdev(d), hostKey: DeviceIds.evdevKey(d))
        }
    }

    /// `device_add virtio-input-host-pci evdev=/dev/input/eventN bus=<free root port>`.
    /// An event device another program holds exclusively (EVIOCGRAB) is refused by
    /// QEMU; that reply is returned as it is, and not retried.
    public func attachEvdev(_ device: InputDevice, busPrefix: String?) async throws(VMError) -> Attachment {
        let attachment = made(by: .input(device))
        return try await session { (qmp) throws(VMError) in
            try await unlessPresent(qmp, attachment, property: "evdev", value: device.devnode) { () throws(VMError) in
                let port = try await freeRootPort(qmp, prefix: busPrefix, for: device.devnode)
                try await unanswered("virtio-input-host-pci \(device.devnode)") { () throws(VMError) in
                    try await qmp.execute("device_add", [
                        ("driver", .string("virtio-input-host-pci")), ("evdev", .string(device.devnode)),
                        ("id", .string(attachment.id)), ("bus", .string(port)),
                    ])
                }
            }
        }
    }

    /// Runs `add`; when QEMU refuses (a duplicate id, no free root port), a device of
    /// vhotplug's id whose `property` is `value` means the device is there already (given on
    /// the VM's command line by `vmm_args`, or added by an earlier run): that is success.
    private func unlessPresent(_ qmp: QMPClient, _ attachment: Attachment, property: String, value: String,
                               _ add: () async throws(VMError) -> Void) async throws(VMError) -> Attachment {
        do throws(VMError) {
            try await add()
            return attachment
        } catch {
            switch error {
            case .commandFailed, .unsupported: break
            default: throw error
            }
            guard let there = try? await self.property(qmp, attachment.id, property).stringValue, there == value else { throw error }
            logger.info("VM \(name): \(attachment.id) is in the VM already (\(property) \(value))")
            return attachment
        }
    }

    /// Prefixes of the root port ids that evdev passthrough to this VM uses (`pcieBusPrefix`):
    /// a PCI device never takes such a port, so that input devices keep theirs.
    private(set) var evdevPortPrefixes: [String] = []

    /// Keeps the ports whose id starts with one of `prefixes` for input devices.
    public func keepPorts(forEvdev prefixes: [String]) {
        evdevPortPrefixes = prefixes.filter { !$0.isEmpty }
    }

    /// A PCI or input device: whether a root port it may take is free (USB: nil, QEMU's USB
    /// buses are not looked at).
    public func hasFreePort(for device: HostDevice, busPrefix: String?) async -> Bool? {
        let prefix: String?
        switch device {
        case .usb: return nil
        case .pci: prefix = nil
        case .input: prefix = busPrefix
        }
        do {
            _ = try await nextFreeRootPort(prefix: prefix)
            return true
        } catch {
            return error.isPortsFull ? false : nil
        }
    }

    /// The root port the next PCI or evdev attach would use.
    public func nextFreeRootPort(prefix: String?) async throws(VMError) -> String {
        try await session { (qmp) throws(VMError) in try await freeRootPort(qmp, prefix: prefix, for: "a device") }
    }

    /// The first `pcie-root-port` with nothing on its bus (and an id starting with
    /// `prefix`). Occupancy comes from each device's `parent_bus`, which QEMU
    /// knows before the guest's firmware has numbered any bus.
    func freeRootPort(_ qmp: QMPClient, prefix: String?, for what: String) async throws(VMError) -> String {
        var ports: [String] = []
        var devices: [String] = []
        for folder in ["/machine/peripheral", "/machine/peripheral-anon"] {
            let list: JSONNode
            do {
                list = try await qmp.execute("qom-list", [("path", .string(folder))])
            } catch .commandFailed {
                continue
            }
            for entry in list.arrayValue ?? [] {
                guard let n = entry["name"]?.stringValue, let type = entry["type"]?.stringValue, type.hasPrefix("child<") else { continue }
                if type == "child<pcie-root-port>" && folder == "/machine/peripheral" { ports.append(n) }
                devices.append(folder + "/" + n)
            }
        }
        var used: Set<String> = []
        for d in devices {
            // A device QEMU refuses to say of (gone meanwhile) is on no port; a timeout or a broken
            // connection fails the attach as it is (before, it was lost here, and the device_add
            // failed on the closed connection).
            do throws(VMError) {
                if let bus = try await qmp.execute("qom-get", [("path", .string(d)), ("property", .string("parent_bus"))]).stringValue {
                    used.insert(bus)
                }
            } catch .commandFailed {
            }
        }
        // A PCI device (no prefix) leaves the ports of evdev's prefixes to input devices.
        func keptForEvdev(_ port: String) -> Bool { prefix == nil && evdevPortPrefixes.contains { port.hasPrefix($0) } }
        let candidates = ports.filter { prefix.map($0.hasPrefix) ?? !keptForEvdev($0) }
        if let free = candidates.sorted().first(where: { !used.contains("/machine/peripheral/\($0)/\($0)") }) {
            return free
        }
        let described = ports.sorted().map { p in
            let name = plainOrQuoted(p)
            return used.contains("/machine/peripheral/\(p)/\(p)") ? "\(name) (in use)" : keptForEvdev(p) ? "\(name) (kept for input devices)" : name
        }
        throw .unsupported(vm: name, detail: VMError.noFreeRootPort + (prefix.map { " with an id starting with \"\($0)\"" } ?? "")
                           + " for \(what); its root ports: " + (described.isEmpty ? "none" : described.joined(separator: ", ")))
    }

    // MARK: Detach and list

    /// A detach that joined a running batch: its id, and how its caller learns the outcome.
    private struct Joiner {
        let id: String
        let done: CheckedContinuation<JoinOutcome, Never>
    }

    private enum JoinOutcome {
        case done(VMError?)
        /// The batch's connection failed before this one's device_del went out: ask again.
        case again
    }

    /// Detaches asked for while a batch runs, for it to take on its connection.
    private var joiners: [Joiner] = []
    /// True from the moment a detach batch is asked for until it takes no more detaches.
    private var batchOpen = false

    /// `device_del`, then `DEVICE_DELETED` of that id; a device QEMU does not have is
    /// already gone.
    ///
    /// USB devices detached together (a hub or a dock unplugged) share one connection: each
    /// device_del goes out as soon as it is asked for and the events are awaited together.
    /// QEMU 7.2 sends a USB device's DEVICE_DELETED about 50 ms after device_del's reply
    /// (the device leaves the guest at once; the event waits for QEMU's RCU thread, which
    /// batches in 10 ms sleeps), so one at a time, four devices would hold the socket for
    /// 200 ms. PCI and evdev devices leave one at a time, in the order asked: the members
    /// of an IOMMU group go back to their drivers when the last of them has left, and the
    /// daemon relies on that order (their unplug waits for the guest anyway).
    public func detach(_ attachment: Attachment) async throws(VMError) {
        guard attachment.kind == .usb else {
            try await session { (qmp) throws(VMError) in try await deleteDevice(qmp, id: attachment.id) }
            return
        }
        while batchOpen {
            let outcome = await withCheckedContinuation { (c: CheckedContinuation<JoinOutcome, Never>) in
                // The closure may run as a job of its own (see AsyncLock.acquire), after the
                // batch has closed: then this detach asks again.
                if batchOpen { joiners.append(Joiner(id: attachment.id, done: c)) } else { c.resume(returning: .again) }
            }
            switch outcome {
            case .done(let error?): throw error
            case .done(nil): return
            case .again: continue
            }
        }
        batchOpen = true
        var mine: VMError?
        do throws(VMError) {
            try await session { (qmp) throws(VMError) in
                mine = await deleteDevices(qmp, [attachment.id], more: true)
            }
        } catch {
            // No connection (the VM is not running, say), so `deleteDevices` did not run (it
            // closes the batch itself): whoever joined meanwhile learns the same.
            mine = error
            for j in joiners { j.done.resume(returning: .done(error)) }
            joiners.removeAll()
            batchOpen = false
        }
        if let mine { throw mine }
    }

    /// `device_del`, then waits for `DEVICE_DELETED` of that id, in an operation's session.
    func deleteDevice(_ qmp: QMPClient, id: String) async throws(VMError) {
        if let error = await deleteDevices(qmp, [id], more: false) { throw error }
    }

    /// Deletes `ids` on `qmp` and, with `more`, every joiner of the detach batch as it comes,
    /// until each has its DEVICE_DELETED or its error; returns the outcome of the first of
    /// `ids` (the others' outcomes matter to no one here but the log). A joiner whose
    /// device_del could not go out (the connection failed) is told to ask again.
    private func deleteDevices(_ qmp: QMPClient, _ ids: [String], more: Bool) async -> VMError? {
        struct Waiting { let id: String; let deadline: Deadline; let joiner: Joiner? }
        var toSend: [(id: String, joiner: Joiner?)] = ids.map { ($0, nil) }
        var waiting: [Waiting] = []
        var first: VMError?
        func finish(_ id: String, _ joiner: Joiner?, _ error: VMError?) {
            if let joiner { joiner.done.resume(returning: .done(error)) } else if id == ids.first { first = error }
        }
        /// Everything still open fails with `error` (a joiner not yet sent asks again).
        func failAll(_ error: VMError) {
            for w in waiting { finish(w.id, w.joiner, error) }
            for t in toSend { if let j = t.joiner { j.done.resume(returning: .again) } else { finish(t.id, nil, error) } }
            if more {
                for j in joiners { j.done.resume(returning: .again) }
                joiners.removeAll()
                batchOpen = false
            }
        }
        while true {
            if more {
                toSend += joiners.map { ($0.id, $0) }
                joiners.removeAll()
            }
            if toSend.isEmpty && waiting.isEmpty {
                // No suspension between this look at `joiners` and the close.
                if more { batchOpen = false }
                return first
            }
            // One device_del at a time, looking for joiners after each: a hub's devices come
            // one event after the other while the first device_del is answered.
            if let (id, joiner) = toSend.first {
                do throws(VMError) {
                    do throws(VMError) {
                        try await qmp.execute("device_del", [("id", .string(id))])
                    } catch .commandFailed(_, _, _, let message) where message.contains("already in the process of unplug") {
                        // An earlier device_del (one whose wait timed out) is still on its way:
                        // its DEVICE_DELETED is what to wait for, as for this one.
                    }
                    toSend.removeFirst()
                    waiting.append(Waiting(id: id, deadline: .after(unplugTimeout), joiner: joiner))
                } catch .commandFailed(_, _, let cls, let message) {
                    toSend.removeFirst()
                    // Not there: already gone.
                    finish(id, joiner, cls == "DeviceNotFound" || message.contains("not found") ? nil
                           : .commandFailed(vm: name, command: "device_del", errorClass: cls, message: message))
                } catch .timeout(_, let step) where step == "device_del" {
                    // The device_del went out and QEMU did not answer it in time: it may still carry
                    // it out, as it may those already waiting for their DEVICE_DELETED. Each of them
                    // is an unplug still pending (the caller asks the VM again later).
                    toSend.removeFirst()
                    waiting.append(Waiting(id: id, deadline: .now(), joiner: joiner))
                    for w in waiting {
                        finish(w.id, w.joiner, .timeout(vm: name, step: VMError.unplugStep + "\(w.id) (QEMU did not answer device_del)"))
                    }
                    waiting.removeAll()
                    failAll(.timeout(vm: name, step: "device_del"))
                    return first
                } catch {
                    failAll(error)
                    return first
                }
                continue
            }
            guard let deadline = waiting.map(\.deadline).min() else { continue }
            let ids = Set(waiting.map(\.id))
            do throws(VMError) {
                let data = try await qmp.waitForEvent("DEVICE_DELETED", deadline: deadline) { data in
                    data?["device"]?.stringValue.map(ids.contains) ?? false
                }
                guard let id = data?["device"]?.stringValue, let k = waiting.firstIndex(where: { $0.id == id }) else { continue }
                let w = waiting.remove(at: k)
                if guestRefused(qmp, w.id) { logger.warning("VM \(name): the guest reported an error unplugging \(w.id)") }
                finish(w.id, w.joiner, nil)
            } catch .timeout {
                let now = Deadline.now()
                for w in waiting where w.deadline <= now {
                    finish(w.id, w.joiner, guestRefused(qmp, w.id)
                        ? .commandFailed(vm: name, command: "device_del", errorClass: "DEVICE_UNPLUG_GUEST_ERROR",
                                         message: "the guest refused to release \(w.id)")
                        : .timeout(vm: name, step: VMError.unplugStep + "\(w.id) (the guest did not release it)"))
                }
                waiting.removeAll { $0.deadline <= now }
            } catch {
                failAll(error)
                return first
            }
        }
    }

    /// Whether the guest reported an error unplugging `id` (DEVICE_UNPLUG_GUEST_ERROR).
    private func guestRefused(_ qmp: QMPClient, _ id: String) -> Bool {
        qmp.events.contains { $0.name == "DEVICE_UNPLUG_GUEST_ERROR" && $0.data?["device"]?.stringValue == id }
    }

    /// Removes a device of vhotplug's whose host device is gone (a `device_del`, not waited
    /// for). Checks first, in the same session, that the id still holds the device
    /// listed (a USB device's host bus and address, a PCI device's host address): between the
    /// listing and this removal, an attach of a new device at the same port may have used the id.
    /// An id gone meanwhile counts as removed.
    public func removeStale(_ attachment: Attachment) async throws(VMError) -> Bool {
        try await session { (qmp) throws(VMError) in
            let listed: String?
            switch attachment.kind {
            case .usb: listed = attachment.usbBus.flatMap { b in attachment.usbAddress.map { "\(b)/\($0)" } }
            case .pci: listed = attachment.pciHost
            case .evdev: listed = nil
            }
            if let listed {
                do throws(VMError) {
                    let now: String
                    if attachment.kind == .usb {
                        now = try await hostAddress(qmp, id: attachment.id).map { "\($0.0)/\($0.1)" } ?? ""
                    } else {
                        let v = try await property(qmp, attachment.id, "host")
                        now = v.stringValue ?? ""
                    }
                    guard now == listed else { return false }
                } catch .commandFailed(_, _, let cls, _) where cls == "DeviceNotFound" {
                    return true // gone meanwhile
                }
            }
            // Asked, not waited for: a PCI or input device leaves when the guest lets go (up to
            // the unplug deadline, or never in a guest that is not running), and its device is
            // gone from the host. Waiting would hold this VM's session, and the daemon's start.
            do throws(VMError) {
                try await qmp.execute("device_del", [("id", .string(attachment.id))])
            } catch .commandFailed(_, _, let cls, let message) where cls == "DeviceNotFound" || message.contains("already in the process of unplug") {
                // Gone meanwhile, or on its way out already.
            }
            return true
        }
    }

    /// Whether `/machine/peripheral` still has the attachment's id (one `qom-list`).
    public func holds(_ attachment: Attachment) async throws(VMError) -> Bool {
        try await session { (qmp) throws(VMError) in
            let list = try await qmp.execute("qom-list", [("path", .string("/machine/peripheral"))])
            return (list.arrayValue ?? []).contains { $0["name"]?.stringValue == attachment.id }
        }
    }

    /// vhotplug's devices in the VM, from `qom-list /machine/peripheral`; USB
    /// ones with their host bus and address.
    public func listAttached() async throws(VMError) -> [Attachment] {
        try await session { (qmp) throws(VMError) in
            let list = try await qmp.execute("qom-list", [("path", .string("/machine/peripheral"))])
            var out: [Attachment] = []
            for entry in list.arrayValue ?? [] {
                guard let id = entry["name"]?.stringValue, entry["type"]?.stringValue?.hasPrefix("child<") == true,
                      let (kind, key) = DeviceIds.parse(id) else { continue }
                var a = Attachment(vm: name, kind: kind, id: id, hostKey: key)
                if kind == .usb, let (bus, addr) = try await usbHost(qmp, id: id) {
                    a.usbBus = bus
                    a.usbAddress = addr
                }
                if kind == .pci {
                    // By host address (two identical cards stay distinct).
                    a.pciHost = try? await property(qmp, id, "host").stringValue
                    if let host = a.pciHost { a.hostKey = host }
                }
                out.append(a)
            }
            return out
        }
    }
}
