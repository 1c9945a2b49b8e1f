import DeviceModel
import HotplugConfig
import JSONKit
import Logging
import Reactor
#if canImport(Glibc)
import Glibc
#endif

/// A crosvm VM, driven through crosvm's own command line (`crosvm usb ...`)
/// against the VM's control socket. crosvm has no other stable control
/// interface: its socket speaks crosvm's internal serialisation, and
/// `crosvm_control` is a Rust/C library. Each operation runs one `crosvm`
/// process (without a shell, followed by the event loop, killed at its
/// deadline); the operations of one VM run in order, and never wait for
/// another VM.
///
/// ## What crosvm prints (google/crosvm, read in its 2025-2026 sources)
/// Answers of the VM (`vm_control/src/lib.rs`, `impl Display for
/// UsbControlResult`), printed on stdout with exit status 0, whatever the
/// answer (`src/main.rs`, `modify_usb`):
/// - `ok <port>`: attached at that port (1-16), or detached from it.
/// - `no_available_port`: no free port of the device's kind. crosvm has 16
///   ports: 1-8 for USB 2 devices, 9-16 for USB 3 devices (by bcdUSB;
///   `xhci_regs.rs`, `usb_hub.rs`). crosvm also answers this while the guest
///   has not started its xHCI driver (the event ring is not set up), and then
///   keeps the device on the port anyway (`UsbPort::attach` stores it before it
///   signals the guest): this backend frees such a port (see `attachUSB`), and
///   with ports of both kinds free it throws `.guestNotReady` (the daemon tries again).
/// - `no_such_device`: the file is not a USB device (attach), or the port is
///   empty or out of range (detach).
/// - `no_such_port`: not produced by current crosvm; accepted on detach.
/// - `failed_to_open_device`: crosvm could not add the device to its event loop.
/// - `failed_to_init_host_device`: crosvm could not set the device up (older
///   crosvm).
/// - `devices[ <port> <vid:04x> <pid:04x>]...`: the answer to `usb list`, one
///   triple per occupied port, in port order. The CLI asks only for ports 0-15
///   (`vm_control/src/client.rs`, `do_usb_list`), so a device on port 16 is
///   never listed.
///
/// Failures of the command line itself (`vm_control/src/client.rs`,
/// `ModifyUsbError`), printed on stdout as `error <text>` with exit status 1
/// (`src/sys/linux/main.rs`, `error_to_exit_code`), details on stderr:
/// - `error failed to open device <path>: <os error>`: `usb attach` opens the
///   node read-write itself, before it connects to the VM, and passes it over.
/// - `error socket failed`: no connection to the VM (stderr: `failed to connect
///   to socket at '"<path>"': <os error>`), or it broke.
/// - `error unexpected response: <response>`: the VM answered something else,
///   e.g. `error: Input/output error (os error 5)` when its USB controller did
///   not answer in time.
/// Bad arguments exit with status 35 (`CommandStatus::InvalidArgs`).
public actor CrosvmBackend: VMBackend {
    public nonisolated let name: String
    public nonisolated var type: VMType { .crosvm }
    public nonisolated let socketPath: String
    /// The crosvm program: a path, or a name looked up on PATH (`setProgram` on a reload).
    public private(set) var crosvmPath: String
    private let loop: EventLoop
    private let logger: Logger
    private let lock = AsyncLock()
    /// Seconds allowed for each crosvm run (crosvm itself sets no limit).
    let timeout: Double
    /// Ports this backend attached or saw in `usb list`: any other port that
    /// appears holds something vhotplug did not put there.
    private var knownPorts: Set<Int> = []
    /// What each port holds by an attach of this backend: an attachment of a port that an
    /// attach gave to another device since is of a device that left it (it is not detached).
    private var holders: [Int: Attachment] = [:]
    /// Ports whose detach was killed at its deadline: crosvm may have freed them (and given
    /// them to the next attach). Before anything is detached from one again, `usb list` says
    /// whether it still holds that device.
    private var unsure: Set<Int> = []
    /// Attachments that `usb list` showed gone after such a detach, by port: whatever is put
    /// on the port since (by hand, say) is not theirs.
    private var released: [Int: Attachment] = [:]
    /// Ports crosvm kept for a refused attach that could not be freed then, with what they
    /// held: freed at the next try, or after the attach that succeeds.
    private var unfreed: [Int: Attachment] = [:]
    /// Devices (bus, address) whose attach was killed at its deadline while `usb list` could not
    /// say either whether crosvm did it: their next attach looks at the list first.
    private var attachUnknown: Set<[Int]> = []
    /// Port 16, which `usb list` never shows, was last freed by a detach of this backend (and not
    /// filled by an attach of it since): a USB 3 device can take it with ports 9-15 held.
    private var sixteenFree = false
    /// The sysfs tree (`/sys`).
    private let sysfsRoot: String

    public nonisolated var unownedExecutor: UnownedSerialExecutor { loop.asUnownedSerialExecutor() }

    /// - Parameters:
    ///   - socketPath: the VM's control socket (`crosvm run -s SOCKET`).
    ///   - crosvmPath: the crosvm program (from the configuration; `crosvm` on PATH by default).
    ///   - timeout: seconds for each crosvm run before it is killed.
    ///   - recordPath: where the ports this backend attached are kept for a restarted daemon (nil: not kept).
    ///   - sysfsRoot: the sysfs tree, where a USB device's descriptors are read (`hasFreePort`).
    public init(name: String, socketPath: String, crosvmPath: String = "crosvm", loop: EventLoop, logger: Logger,
                timeout: Double = 5, recordPath: String? = nil, sysfsRoot: String = "/sys") {
        self.sysfsRoot = sysfsRoot
        self.name = name
        self.socketPath = socketPath
        self.crosvmPath = crosvmPath
        self.loop = loop
        self.logger = logger
        self.timeout = timeout
        self.recordPath = recordPath
    }

    // MARK: The record of ports

    /// `crosvm usb list` gives each port's vendor and product only: the user's ports and
    /// vhotplug's look alike. What this backend attached is kept in a file (on /run), with
    /// the VM's socket it was attached through (its device and inode: a new crosvm process
    /// binds a new socket, and has none of the old one's devices), so that a restarted daemon
    /// finds its own ports with where on the host their devices are, and treats them as
    /// QEMU's ids are treated (a device its rules now send nowhere leaves; a port whose device
    /// left the host is freed), and leaves the user's alone.
    ///
    /// Lines: `crosvm-ports 1 DEV INO`, then `PORT VENDOR PRODUCT BUS DEVNUM SYSNAME` each.
    private let recordPath: String?
    /// What the file holds now (it is written only when that changes).
    private var recorded: String?
    /// The record has been read (at the first list of this backend).
    private var recordRead = false

    /// The record's file name for a VM and its socket: `vm2@%2Frun%2Fvm2.sock.ports` (`/` and `%`
    /// escaped). A reload that gives the VM another socket gives it another file: the backend of
    /// the old socket, kept until its devices have left, writes its own.
    public static func recordFileName(vm: String, socket: String) -> String {
        func escaped(_ s: String) -> String {
            var out = ""
            for c in s {
                switch c {
                case "%": out += "%25"
                case "/": out += "%2F"
                default: out.append(c)
                }
            }
            return out
        }
        return escaped(vm) + "@" + escaped(socket) + ".ports"
    }

    /// What an earlier run attached through this socket, merged once into `holders` (a port of
    /// this run's stays its own), before the first list or the first write of the record.
    private func readRecordOnce() {
        guard !recordRead else { return }
        recordRead = true
        holders.merge(readRecord()) { mine, _ in mine }
    }

    /// The VM socket's device and inode, or nil when it cannot be seen.
    private func socketIdentity() -> String? {
        var st = stat()
        guard stat(socketPath, &st) == 0 else { return nil }
        return "\(st.st_dev) \(st.st_ino)"
    }

    /// The ports the record holds for the VM's present socket (none for another socket).
    private func readRecord() -> [Int: Attachment] {
        guard let recordPath, let text = AtomicFile.read(recordPath) else { return [:] }
        recorded = text // (one of another process is removed at the next save)
        let lines = text.split(separator: "\n")
        guard let head = lines.first, let identity = socketIdentity(), head == "crosvm-ports 1 " + identity else {
            logger.debug("VM \(name): the port record \(recordPath) is of another crosvm process; not used")
            return [:]
        }
        var ports: [Int: Attachment] = [:]
        for line in lines.dropFirst() {
            let f = line.split(separator: " ")
            guard f.count == 6, let port = Int(f[0]), (1...16).contains(port), let vendor = UInt16(f[1], radix: 16),
                  let product = UInt16(f[2], radix: 16), let bus = Int(f[3]), let devnum = Int(f[4]) else { continue }
            ports[port] = Attachment(vm: name, kind: .usb, id: String(port), hostKey: String(f[5]),
                                     usbVendor: vendor, usbProduct: product, usbBus: bus, usbAddress: devnum)
        }
        return ports
    }

    /// Writes the ports this backend holds (removes the file when there are none).
    private func saveRecord() {
        guard let recordPath else { return }
        readRecordOnce()
        let lines = holders.keys.sorted().compactMap { port -> String? in
            guard let a = holders[port], !a.hostKey.isEmpty, let v = a.usbVendor, let p = a.usbProduct,
                  let bus = a.usbBus, let devnum = a.usbAddress else { return nil }
            return "\(port) \(hex4(v)) \(hex4(p)) \(bus) \(devnum) \(a.hostKey)"
        }
        let text = lines.isEmpty ? nil : socketIdentity().map { "crosvm-ports 1 \($0)\n" + lines.map { $0 + "\n" }.joined() }
        guard text != recorded else { return }
        do throws(FileWriteError) {
            if let text {
                try AtomicFile.write(Array(text.utf8), to: recordPath, folderMode: 0o700)
            } else if unlink(recordPath) != 0 && errno != ENOENT {
                throw FileWriteError(call: "unlink", path: recordPath, errno: errno)
            }
            recorded = text
        } catch {
            logger.warning("VM \(name): cannot keep the record of its ports: \(error); a restarted vhotplug takes them for the user's")
        }
    }

    // MARK: Attach

    /// `crosvm usb attach 00:00:00:00 DEVNODE SOCKET` (crosvm ignores the first
    /// argument but requires it). Returns the port as the attachment's id.
    ///
    /// On `no_available_port` the VM's ports are listed: a port that appeared
    /// with this device's vendor and product is one crosvm kept although it
    /// refused the attach (the guest was not up), and it is detached, so the
    /// device is not half-attached and the port not lost.
    public func attachUSB(_ device: USBDevice, present: @escaping @Sendable () -> Bool) async throws(VMError) -> Attachment {
        await lock.acquire()
        defer { lock.release() }
        let node = device.devnode
        let what = "\(device.sysName) (\(hex4(device.vendorId)):\(hex4(device.productId)), \(node))"
        let command = "usb attach \(node)"
        let identity = [device.bus, device.devnum]
        if attachUnknown.contains(identity) {
            // An earlier attach of this device was killed, and crosvm could not list its ports then:
            // a port that holds it now, which vhotplug did not fill, is that attach's; the device is
            // not given a second one. (A list that fails again leaves it unknown.)
            let listed = try await list()
            attachUnknown.remove(identity)
            if let a = takeUnclaimedPort(of: device, in: listed, since: "since an attach killed at its deadline") { return a }
        }
        let answer: CrosvmAnswer, result: ProcessResult
        do throws(VMError) {
            (answer, result) = try await crosvm(["attach", "00:00:00:00", node, socketPath], step: command)
        } catch .timeout(let vm, let step) {
            // Killed at the deadline, perhaps after crosvm attached it: a port that now holds this
            // device (its vendor and product) and that vhotplug did not fill is taken as its own,
            // so that the device is neither half-attached nor attached twice.
            do throws(VMError) {
                let listed = try await list()
                if let a = takeUnclaimedPort(of: device, in: listed, since: "though crosvm \(command) was killed at its deadline") { return a }
            } catch {
                attachUnknown.insert(identity)
            }
            throw .timeout(vm: vm, step: step)
        }
        switch answer {
        case .ok(let port):
            logger.debug("VM \(name): crosvm attached \(what) at port \(port)")
            let a = attached(device, port: port)
            if !unfreed.isEmpty, let listed = try? await list() {
                unfreed = unfreed.filter { port, _ in listed.contains { $0.id == String(port) } }
                _ = await freeKept(stillUnfreed(in: listed))
            }
            return a
        case .noAvailablePort:
            let inUse = await reclaimRefusedPort(device)
            // With free ports of both kinds (1-8 for USB 2, 9-16 for USB 3) no kind of port is full,
            // whatever kind the device is: the guest is not up.
            if let inUse, inUse.filter({ $0 <= 8 }).count < 8, inUse.filter({ $0 > 8 }).count < 8 {
                let detail = "crosvm \(command): no_available_port with \(inUse.count) of its 16 USB ports in use: the guest "
                    + "has not started its USB (xHCI) driver yet; crosvm refuses attaches until it has"
                logger.debug("VM \(name): \(detail)")
                throw .guestNotReady(vm: name, detail: detail)
            }
            // Short enough for VMError's description (which cuts messages at 200 characters).
            let ports = inUse.map { "\($0.count) of crosvm's 16 in use" } ?? "ports not listed"
            throw failure(command, "no_available_port",
                          "no free USB port for \(device.sysName) (\(ports)): either the guest has not started its USB "
                          + "(xHCI) driver yet, or all ports for this kind of device are taken (8 for USB 2, 8 for USB 3)")
        case .noSuchDevice:
            throw failure(command, "no_such_device",
                          "crosvm could not use \(node) as a USB device (no_such_device): the device is gone, "
                          + "the node is not a USB device node, or crosvm cannot set the device up")
        case .failedToOpenDevice:
            throw failure(command, "failed_to_open_device",
                          "crosvm could not start using \(node) for \(what) (failed_to_open_device)")
        case .failedToInitHostDevice:
            throw failure(command, "failed_to_init_host_device",
                          "crosvm could not set up \(what) (failed_to_init_host_device): the device may be in use "
                          + "by a host driver or in a bad state; replugging it may help")
        case .cliError(let text) where text.hasPrefix("failed to open device"):
            if text.contains(strerrorText(ENOENT)) {
                throw failure(command, "no_such_device",
                              "\(node) does not exist (the device was unplugged?): crosvm said \(text)")
            }
            throw failure(command, "failed_to_open_device",
                          "crosvm cannot open \(node) read-write for \(what): \(text)")
        case .noSuchPort, .devices, .cliError, .unknown:
            throw unexpected(command, answer, result)
        }
    }

    /// What an attach of `device` at `port` is; the port holds it now.
    private func attached(_ device: USBDevice, port: Int) -> Attachment {
        let a = Attachment(vm: name, kind: .usb, id: String(port), hostKey: DeviceIds.usbKey(device),
                           usbVendor: device.vendorId, usbProduct: device.productId, usbBus: device.bus, usbAddress: device.devnum)
        knownPorts.insert(port)
        holders[port] = a
        if port == 16 { sixteenFree = false }
        unsure.remove(port)
        released[port] = nil
        saveRecord()
        return a
    }

    /// An attach killed at its deadline may have gone through: the first listed port that holds a
    /// device with `device`'s vendor and product, and that vhotplug did not fill, is taken as its
    /// port (logged, with `since`).
    private func takeUnclaimedPort(of device: USBDevice, in listed: [Attachment], since: String) -> Attachment? {
        guard let port = unclaimedPorts(of: device, in: listed).first else { return nil }
        logger.warning("VM \(name): \(device.sysName) is on port \(port) \(since): taken as attached")
        return attached(device, port: port)
    }

    /// The listed ports that hold a device with `device`'s vendor and product and that no
    /// attach of vhotplug filled: ones crosvm kept for an attach it refused or was killed in.
    private func unclaimedPorts(of device: USBDevice, in listed: [Attachment]) -> [Int] {
        listed.compactMap { a in
            guard a.usbVendor == device.vendorId, a.usbProduct == device.productId,
                  let port = Int(a.id), !knownPorts.contains(port) else { return nil }
            return port
        }
    }

    /// The device of an attach whose outcome crosvm never told (`attachUnknown`) will not be
    /// attached here: a port that holds it (its vendor and product, not filled by vhotplug) is
    /// freed, so that it is not left in the VM; and it is no longer unknown, so that a later
    /// device at its bus and address is not taken for it. A list that fails leaves the port.
    public func abandonAttach(_ device: USBDevice) async {
        let identity = [device.bus, device.devnum]
        guard attachUnknown.contains(identity) else { return }
        await lock.acquire()
        defer { lock.release() }
        guard attachUnknown.remove(identity) != nil else { return }
        let listed: [Attachment]
        do throws(VMError) {
            listed = try await list()
        } catch {
            logger.warning("VM \(name): cannot list its ports to free what an attach of \(device.sysName) killed at its deadline may have left: \(error)")
            return
        }
        // (The first such port, as the attach would have taken it: `takeUnclaimedPort`.)
        guard let kept = unclaimedPorts(of: device, in: listed).first else {
            logger.info("VM \(name): no port holds \(device.sysName) after its attach killed at its deadline; nothing to free")
            return
        }
        let freed = await freeKept(listed.filter { $0.id == String(kept) },
                                   why: "since an attach killed at its deadline, and \(device.sysName) will not be attached there")
        if freed.contains(kept) {
            logger.info("VM \(name): freed port \(kept), which an attach of \(device.sysName) killed at its deadline had filled")
        }
    }

    /// After `no_available_port`: frees a port crosvm kept for this device
    /// anyway. Returns the ports in use, or nil when listing failed.
    private func reclaimRefusedPort(_ device: USBDevice) async -> Set<Int>? {
        let listed: [Attachment]
        do throws(VMError) {
            listed = try await list()
        } catch {
            logger.debug("VM \(name): cannot list ports after no_available_port: \(error)")
            return nil
        }
        // crosvm's `usb list` never shows port 16: count it when vhotplug put something there.
        var inUse = Set(listed.compactMap { Int($0.id) }).union(knownPorts.filter { $0 == 16 })
        let kept = Set(unclaimedPorts(of: device, in: listed)).union(stillUnfreed(in: listed).compactMap { Int($0.id) })
        let freed = await freeKept(listed.filter { Int($0.id).map(kept.contains) == true })
        inUse.subtract(freed)
        // A port that could not be freed stays unknown, so that the next try frees it.
        knownPorts.formUnion(inUse.subtracting(unfreed.keys))
        // Or when the other USB 3 ports (9-15) are all held: after a restart vhotplug knows nothing
        // of port 16, but a guest that took 7 USB 3 devices is up and crosvm gives the lowest free
        // port first, so port 16 is taken too (not remembered: it is a guess from this list).
        if (9...15).allSatisfy(inUse.contains) {
            inUse.insert(16)
            sixteenFree = false // (crosvm would have given it: filled by hand since)
        }
        return inUse
    }

    /// The listed ports that still hold what crosvm kept of a refused attach and could not be
    /// freed then (the same vendor and product on the same port, which no attach has filled).
    private func stillUnfreed(in listed: [Attachment]) -> [Attachment] {
        listed.filter { a in
            guard let port = Int(a.id), !knownPorts.contains(port), let was = unfreed[port] else { return false }
            return was.sameDevice(as: a)
        }
    }

    /// Detaches `kept`, ports crosvm kept for attaches it refused (the guest was not up), or
    /// (`why`) that an attach killed at its deadline left. Returns the ports freed; those it
    /// could not free are in `unfreed` for the next try.
    private func freeKept(_ kept: [Attachment],
                          why: String = "although it refused the attach (no_available_port, guest not up yet)") async -> Set<Int> {
        var freed: Set<Int> = []
        for a in kept {
            guard let port = Int(a.id) else { continue }
            // (Debug: while the guest boots, each try of the daemon's does this.)
            let what = "\(a.usbVendor.map(hex4) ?? "?"):\(a.usbProduct.map(hex4) ?? "?")"
            logger.debug("VM \(name): crosvm kept \(what) on port \(port) \(why); freeing that port")
            do throws(VMError) {
                let command = "usb detach \(port)"
                let (answer, result) = try await crosvm(["detach", String(port), socketPath], step: command)
                switch answer {
                case .ok, .noSuchDevice, .noSuchPort: break     // freed (while the guest boots crosvm says no_such_device)
                default: throw unexpected(command, answer, result)
                }
                freed.insert(port)
                unfreed[port] = nil
            } catch {
                logger.warning("VM \(name): could not free port \(port), which crosvm kept \(why): \(error); tried again at the next attach")
                unfreed[port] = a
            }
        }
        return freed
    }

    // MARK: Detach

    /// `crosvm usb detach PORT SOCKET` with the port an attach returned.
    /// `no_such_device` and `no_such_port` mean the port is already empty:
    /// success. So is a port that holds another device now: an attach of this
    /// backend's put it there since, or, after a detach killed at its deadline,
    /// `usb list` shows another vendor and product there (or none).
    public func detach(_ attachment: Attachment) async throws(VMError) {
        guard let port = Int(attachment.id), (1...255).contains(port) else {
            throw .protocolError(vm: name, detail: "\(quoted(attachment.id)) is not a crosvm USB port number")
        }
        await lock.acquire()
        defer { lock.release() }
        guard try await stillHolds(attachment, port: port, list: unsure.contains(port)) else {
            logger.info("VM \(name): port \(port) no longer holds \(device(of: attachment)); nothing detached")
            return
        }
        let command = "usb detach \(port)"
        let answer: CrosvmAnswer, result: ProcessResult
        do throws(VMError) {
            (answer, result) = try await crosvm(["detach", String(port), socketPath], step: command)
        } catch .timeout(let vm, let step) {
            unsure.insert(port) // crosvm may have freed it
            throw .timeout(vm: vm, step: step)
        }
        switch answer {
        case .ok:
            freed(port)
            if port == 16 { sixteenFree = true }
            logger.debug("VM \(name): crosvm detached port \(port)")
        case .noSuchDevice, .noSuchPort:
            freed(port)
            if port == 16 { sixteenFree = true }
            logger.debug("VM \(name): port \(port) was already empty (\(answer.word))")
        case .noAvailablePort, .failedToOpenDevice, .failedToInitHostDevice, .devices, .cliError, .unknown:
            throw unexpected(command, answer, result)
        }
    }

    /// Whether `port` may still hold the device of `attachment`: not when an attach of this
    /// backend gave the port to another device since; with `list`, not when `usb list` shows
    /// another vendor and product there, or nothing (port 16, which it never shows, is taken as held).
    private func stillHolds(_ attachment: Attachment, port: Int, list listing: Bool) async throws(VMError) -> Bool {
        if let holder = holders[port], !holder.sameDevice(as: attachment) { return false }
        if released[port] == attachment { return false }
        guard listing, port != 16 else { return true }
        let held = try await list().contains { $0.id == attachment.id && $0.sameDevice(as: attachment) }
        if held {
            unsure.remove(port)
        } else {
            freed(port)
            released[port] = attachment
        }
        return held
    }

    /// The port is empty now, as far as this backend knows.
    private func freed(_ port: Int) {
        knownPorts.remove(port)
        if holders.removeValue(forKey: port) != nil { saveRecord() }
        unsure.remove(port)
    }

    /// `1-2 (046d:c52b)`: the device of an attachment, for the log.
    private func device(of a: Attachment) -> String {
        let ids = a.usbVendor.map { v in "\(hex4(v)):\(hex4(a.usbProduct ?? 0))" } ?? "?"
        return a.hostKey.isEmpty ? ids : "\(a.hostKey) (\(ids))"
    }

    /// Whether the VM still has the device of `attachment` (after a detach killed at its
    /// deadline): its port holds a device of the same vendor and product, and no attach of
    /// this backend's gave the port to another device since.
    public func holds(_ attachment: Attachment) async throws(VMError) -> Bool {
        guard let port = Int(attachment.id) else { return false }
        await lock.acquire()
        defer { lock.release() }
        return try await stillHolds(attachment, port: port, list: true)
    }

    /// A USB device: whether a port of its kind is free. The kind is crosvm's: USB 3 when the
    /// device descriptor's bcdUSB has 0x0300 set (as crosvm reads it from the device node; read
    /// here from sysfs's copy, `descriptors`: opening or reading the node takes the device's lock,
    /// which a reset or an authorization store holds, and wakes a suspended device), ports 9-16, of which `usb list` never shows 16, taken as held when 9-15
    /// are, as an attach refused then is (unless a detach of this backend's freed it since); USB 2 ports 1-8 otherwise. Nil when it cannot tell.
    public func hasFreePort(for device: HostDevice, busPrefix: String?) async -> Bool? {
        guard case .usb(let d) = device, let bcdUSB = Self.bcdUSB(sysfsRoot + d.sysPath + "/descriptors") else { return nil }
        await lock.acquire()
        defer { lock.release() }
        guard let listed = try? await list() else { return nil }
        let held = Set(listed.compactMap { Int($0.id) })
        let usb3 = bcdUSB & 0x0300 == 0x0300
        let ports = usb3 ? 9...15 : 1...8
        return ports.contains { !held.contains($0) } || (usb3 && sixteenFree)
    }

    /// bcdUSB of the device descriptor a file starts with (a USB device node, or its device's
    /// `descriptors` in sysfs), or nil.
    static func bcdUSB(_ node: String) -> UInt16? {
        let fd = open(node, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var b = [UInt8](repeating: 0, count: 4)
        let n = b.withUnsafeMutableBytes { read(fd, $0.baseAddress!, 4) }
        guard n == 4, b[1] == 1 else { return nil } // (bDescriptorType 1: a device descriptor)
        return UInt16(b[2]) | UInt16(b[3]) << 8
    }

    // MARK: List

    /// `crosvm usb list SOCKET`: every occupied port, with the vendor and
    /// product crosvm reports (`hostKey` is empty: crosvm does not know where
    /// the device is on the host; match by vendor and product). crosvm's CLI
    /// never reports port 16.
    /// crosvm has no PCI hot-plug here (configurations that ask for it are rejected when loaded).
    public func attachPCI(_ device: PCIDevice) async throws(VMError) -> Attachment {
        throw .unsupported(vm: name, detail: "crosvm VMs take no PCI devices from vhotplug")
    }

    /// crosvm takes evdev devices only at start (`--input evdev[path=...]`), not at run time.
    public func attachEvdev(_ device: InputDevice, busPrefix: String?) async throws(VMError) -> Attachment {
        throw .unsupported(vm: name, detail: "crosvm has no run-time evdev hot-plug")
    }

    public func listAttached() async throws(VMError) -> [Attachment] {
        await lock.acquire()
        defer { lock.release() }
        let listed = try await list()
        readRecordOnce()
        knownPorts = Set(listed.compactMap { Int($0.id) }).union(knownPorts.filter { $0 >= 16 })
        // (A new crosvm process behind the same socket has none of the old one's devices.)
        holders = holders.filter { port, holder in
            port >= 16 || listed.contains { $0.id == String(port) && $0.sameDevice(as: holder) }
        }
        saveRecord()
        // A port this backend filled says which device it holds (its host port and address).
        return listed.map { a in Int(a.id).flatMap { holders[$0] } ?? a }
    }

    private func list() async throws(VMError) -> [Attachment] {
        let (answer, result) = try await crosvm(["list", socketPath], step: "usb list")
        guard case .devices(let entries) = answer else { throw unexpected("usb list", answer, result) }
        return entries.map {
            Attachment(vm: name, kind: .usb, id: String($0.port), hostKey: "", usbVendor: $0.vendor, usbProduct: $0.product)
        }
    }

    /// The crosvm program from now on (a reload changed `general.crosvm`); the VM and its ports stay.
    public func setProgram(_ path: String) {
        crosvmPath = path
    }

    // MARK: Running crosvm

    /// Runs `crosvm usb ARGS`, after checking that the VM's socket is there (a
    /// VM that is down is `.notRunning` without running crosvm). Failures that
    /// every subcommand shares are thrown here; the answer is returned.
    private func crosvm(_ args: [String], step: String) async throws(VMError) -> (CrosvmAnswer, ProcessResult) {
        try checkSocket()
        let argv = [crosvmPath, "usb"] + args
        let started = Deadline.now()
        let result: ProcessResult
        do {
            result = try await loop.runProcess(argv, deadline: .after(timeout))
        } catch LoopError.timeout {
            logger.warning("VM \(name): crosvm \(step) did not finish within \(seconds(timeout)); killed it")
            throw .timeout(vm: name, step: "crosvm \(step) (killed after \(seconds(timeout)))")
        } catch LoopError.system(let call, let code) where call.hasPrefix("spawn") {
            let detail = missingProgram(code)
            logger.error("VM \(name): \(detail)")
            throw .unsupported(vm: name, detail: detail)
        } catch {
            logger.error("VM \(name): cannot run crosvm \(step): \(error)")
            throw .protocolError(vm: name, detail: "cannot run crosvm \(step): \(error)")
        }
        let answer = CrosvmAnswer.parse(result.stdout)
        let ms = Int(Deadline.now().seconds(since: started) * 1000)
        logger.debug("VM \(name): crosvm \(step) -> \(quoted(answer.text, limit: 300)) (exit \(result.status), \(ms) ms)")
        if case .cliError(let text) = answer, text == "socket failed" {
            let why = logLine(result.stderr, containing: "socket at") ?? lastLine(result.stderr)
            // Refused, or no socket: the VM is down. Any other error (permission denied, a stream
            // socket such as a QMP one: "Protocol wrong type for socket") is the configuration's,
            // and says so (before, it too was taken for a VM that is not running, and waited for).
            let down = ["(os error \(ECONNREFUSED))", "(os error \(ENOENT))"].contains { why.contains($0) }
            if why.contains("failed to connect") && down {
                logger.info("VM \(name): crosvm cannot connect to \(socketPath): \(why)")
                throw .notRunning(vm: name, reason: "crosvm cannot connect to \(socketPath): \(why)")
            }
            if why.contains("failed to connect") {
                logger.error("VM \(name): crosvm cannot connect to \(socketPath): \(why): is it this VM's crosvm control socket, and may vhotplug use it?")
                throw .protocolError(vm: name, detail: "crosvm cannot connect to \(socketPath): \(why)")
            }
            logger.warning("VM \(name): crosvm \(step) lost the connection to the VM: \(why)")
            throw .protocolError(vm: name, detail: "crosvm \(step): the VM's socket failed: \(why)")
        }
        return (answer, result)
    }

    /// The socket must exist and be a socket; anything else means the VM is down.
    private func checkSocket() throws(VMError) {
        var st = stat()
        guard stat(socketPath, &st) == 0 else {
            let e = errno
            throw .notRunning(vm: name, reason: e == ENOENT ? "no control socket at \(socketPath)"
                                                           : "\(socketPath): \(strerrorText(e))")
        }
        guard st.st_mode & S_IFMT == S_IFSOCK else {
            throw .notRunning(vm: name, reason: "\(socketPath) is not a socket")
        }
        // crosvm opens the USB device as root and passes it to whoever listens there.
        if let problem = SocketTrust.problem(socketPath) {
            logger.error("VM \(name): its socket \(socketPath) is not used: \(problem)")
            throw .unsupported(vm: name, detail: "its socket \(socketPath) is not used: \(problem)")
        }
    }

    private func missingProgram(_ code: Int32) -> String {
        let how = "crosvm must be installed, or its path set as general.crosvm in the configuration"
        if code == ENOENT {
            return crosvmPath.contains("/") ? "crosvm not found at \(crosvmPath): \(how)"
                                            : "crosvm (\(quoted(crosvmPath))) not found on PATH: \(how)"
        }
        return "cannot run crosvm at \(crosvmPath): \(strerrorText(code)) (\(how))"
    }

    private func failure(_ command: String, _ cls: String, _ message: String) -> VMError {
        logger.warning("VM \(name): crosvm \(command): \(message)")
        return .commandFailed(vm: name, command: command, errorClass: cls, message: message)
    }

    /// An answer that does not belong to the command, a CLI error, a non-zero
    /// exit without an answer, or text that is none of crosvm's.
    private func unexpected(_ command: String, _ answer: CrosvmAnswer, _ result: ProcessResult) -> VMError {
        let err = lastLine(result.stderr)
        switch answer {
        case .cliError(let text):
            return failure(command, "error", "crosvm: \(text)" + (err.isEmpty ? "" : " (\(err))"))
        case .unknown(let text) where result.status != 0:
            let said = [text, err].filter { !$0.isEmpty }.joined(separator: "; ")
            return failure(command, "exit \(result.status)",
                           "crosvm exited with status \(result.status)" + (said.isEmpty ? "" : ": \(said)"))
        default:
            let detail = "crosvm \(command): unexpected answer \(quoted(answer.text, limit: 200))"
            logger.warning("VM \(name): \(detail)")
            return .protocolError(vm: name, detail: detail)
        }
    }
}

extension Attachment {
    /// Whether two attachments of a crosvm port may be of one device: the same vendor and
    /// product, and the same place on the host when both know it (`usb list` does not).
    fileprivate func sameDevice(as other: Attachment) -> Bool {
        guard usbVendor == other.usbVendor || usbVendor == nil || other.usbVendor == nil,
              usbProduct == other.usbProduct || usbProduct == nil || other.usbProduct == nil else { return false }
        guard !hostKey.isEmpty, !other.hostKey.isEmpty else { return true }
        return hostKey == other.hostKey && usbBus == other.usbBus && usbAddress == other.usbAddress
    }
}

/// One answer of `crosvm usb ...`, from its stdout (formats: see `CrosvmBackend`).
enum CrosvmAnswer: Equatable, Sendable {
    /// One occupied port of `devices ...`.
    struct Entry: Equatable, Sendable {
        var port: Int
        var vendor: UInt16
        var product: UInt16
    }

    case ok(port: Int)
    case devices([Entry])
    case noAvailablePort
    case noSuchDevice
    case noSuchPort
    case failedToOpenDevice
    case failedToInitHostDevice
    /// `error <text>`: the crosvm command line failed before or after asking the VM.
    case cliError(String)
    /// Anything else (the whole output, trimmed).
    case unknown(String)

    /// The answer on the last non-empty line of stdout (crosvm prints one line).
    static func parse(_ stdout: String) -> CrosvmAnswer {
        let lines = stdout.split(whereSeparator: \.isNewline).map { $0.trimmingSpaces() }.filter { !$0.isEmpty }
        guard let line = lines.last else { return .unknown("") }
        if line.hasPrefix("error ") { return .cliError(String(line.dropFirst(6)).trimmingSpaces()) }
        let words = line.split(separator: " ")
        switch words.first {
        case "ok"?:
            if words.count == 2, let port = Int(words[1]), (1...255).contains(port) { return .ok(port: port) }
        case "devices"?:
            let rest = words.dropFirst()
            guard rest.count % 3 == 0 else { break }
            var entries: [Entry] = []
            var i = rest.startIndex
            while i < rest.endIndex {
                guard let port = Int(rest[i]), (1...255).contains(port),
                      rest[i + 1].count == 4, let vid = UInt16(rest[i + 1], radix: 16),
                      rest[i + 2].count == 4, let pid = UInt16(rest[i + 2], radix: 16) else {
                    return .unknown(lines.joined(separator: "\n"))
                }
                entries.append(Entry(port: port, vendor: vid, product: pid))
                i += 3
            }
            return .devices(entries)
        default:
            if words.count == 1, let simple = Self.words[String(words[0])] { return simple }
        }
        return .unknown(lines.joined(separator: "\n"))
    }

    private static let words: [String: CrosvmAnswer] = [
        "no_available_port": .noAvailablePort, "no_such_device": .noSuchDevice, "no_such_port": .noSuchPort,
        "failed_to_open_device": .failedToOpenDevice, "failed_to_init_host_device": .failedToInitHostDevice,
    ]

    /// crosvm's word for the simple answers.
    var word: String {
        switch self {
        case .ok: "ok"
        case .devices: "devices"
        case .noAvailablePort: "no_available_port"
        case .noSuchDevice: "no_such_device"
        case .noSuchPort: "no_such_port"
        case .failedToOpenDevice: "failed_to_open_device"
        case .failedToInitHostDevice: "failed_to_init_host_device"
        case .cliError: "error"
        case .unknown: "?"
        }
    }

    /// The answer as crosvm printed it.
    var text: String {
        switch self {
        case .ok(let port): "ok \(port)"
        case .devices(let entries): (["devices"] + entries.map { "\($0.port) \(hex4($0.vendor)) \(hex4($0.product))" }).joined(separator: " ")
        case .cliError(let text): "error \(text)"
        case .unknown(let text): text
        default: word
        }
    }
}

private func strerrorText(_ code: Int32) -> String { String(cString: strerror(code)) }

private func seconds(_ s: Double) -> String {
    s == s.rounded() ? "\(Int(s)) s" : "\(s) s"
}

/// The first line of crosvm's log (stderr) that contains `text`, without the
/// `[<time> <LEVEL> <tag>] ` prefix of its log lines.
private func logLine(_ log: String, containing text: String) -> String? {
    guard let line = log.split(whereSeparator: \.isNewline).first(where: { $0.contains(text) }) else { return nil }
    if line.hasPrefix("["), let end = line.firstIndex(of: "]") {
        return line[line.index(after: end)...].trimmingSpaces()
    }
    return line.trimmingSpaces()
}

private func lastLine(_ text: String) -> String {
    text.split(whereSeparator: \.isNewline).map { $0.trimmingSpaces() }.last { !$0.isEmpty } ?? ""
}

extension Substring {
    fileprivate func trimmingSpaces() -> String {
        var s = self[...]
        while let c = s.first, c == " " || c == "\t" || c == "\r" { s = s.dropFirst() }
        while let c = s.last, c == " " || c == "\t" || c == "\r" { s = s.dropLast() }
        return String(s)
    }
}

extension String {
    fileprivate func trimmingSpaces() -> String { self[...].trimmingSpaces() }
}
