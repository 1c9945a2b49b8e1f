import CLinux
import Foundation
import Synchronization

/// Plays the kernel's part of a VFIO rebind in a umockdev testbed.
///
/// `/sys/bus/pci/drivers_probe` and every driver's `bind` and `unbind` become
/// FIFOs, each served by a thread of its own that blocks in `open`/`read` until
/// the code under test writes, then does what Linux does for that write: moves
/// the device's `driver` link (and the driver folder's link back), honouring
/// `driver_override`, creates or removes `/dev/vfio/GROUP` when the first
/// member of a group binds to vfio-pci or the last one leaves it, and sends the
/// uevents (`bind`/`unbind` of subsystem `pci`, `add`/`remove` of subsystem
/// `vfio`) to `events`. `driver_override` stays a plain file: the kernel stores
/// it without a uevent, and the writes to it need no answer.
///
/// Unlike the kernel, a FIFO write returns before the "kernel" has acted on it:
/// the code under test must wait for the outcome by event, which is what is tested.
public final class FakeKernel: @unchecked Sendable {
    public typealias EventSink = @Sendable (_ action: String, _ subsystem: String, _ devpath: String) -> Void

    /// What the kernel refuses to do (to make waits time out).
    public struct Refusals: Sendable {
        /// Binds refused: address -> driver.
        public var bind: [String: String] = [:]
        /// Unbinds refused: address -> driver.
        public var unbind: [String: String] = [:]
        /// Never create `/dev/vfio/GROUP`.
        public var groupNode = false

        public init(bind: [String: String] = [:], unbind: [String: String] = [:], groupNode: Bool = false) {
            self.bind = bind
            self.unbind = unbind
            self.groupNode = groupNode
        }
    }

    let sys: String
    let dev: String
    /// The driver each device gets from `drivers_probe` without an override.
    let naturalDrivers: [String: String]
    private let refusals: Refusals
    private let fifos: [String]
    private let stopping = Atomic<Bool>(false)
    private let done = DispatchGroup()
    /// One kernel: its actions happen one at a time (the device lock, roughly).
    private let lock = Mutex<[String]>([])
    private var stopped = false

    /// - Parameters:
    ///   - root: the testbed's root folder.
    ///   - natural: drivers for devices that are on vfio-pci at the start (the
    ///     others' natural driver is the one they have).
    ///   - vfioLoaded: whether the vfio-pci driver folder exists.
    public init(root: String, natural: [String: String] = [:], vfioLoaded: Bool = true, refusals: Refusals = Refusals()) throws {
        sys = root + "/sys"
        dev = root + "/dev"
        self.refusals = refusals
        let fm = FileManager.default
        let drivers = sys + "/bus/pci/drivers"
        if vfioLoaded {
            try fm.createDirectory(atPath: drivers + "/vfio-pci", withIntermediateDirectories: true)
        }
        try fm.createDirectory(atPath: dev + "/vfio", withIntermediateDirectories: true)
        var paths = [sys + "/bus/pci/drivers_probe"]
        for driver in try fm.contentsOfDirectory(atPath: drivers).sorted() {
            paths += [drivers + "/\(driver)/bind", drivers + "/\(driver)/unbind"]
        }
        for path in paths {
            unlink(path)
            guard mkfifo(path, 0o644) == 0 else { throw TestbedError(message: "mkfifo \(path): errno \(errno)") }
        }
        fifos = paths
        var naturalDrivers = natural
        for address in try fm.contentsOfDirectory(atPath: sys + "/bus/pci/devices") {
            if let d = Self.linkName(sys + "/bus/pci/devices/\(address)/driver"), d != "vfio-pci", naturalDrivers[address] == nil {
                naturalDrivers[address] = d
            }
            // A group with a member on vfio-pci already has its node.
            if Self.linkName(sys + "/bus/pci/devices/\(address)/driver") == "vfio-pci",
               let g = Self.linkName(sys + "/bus/pci/devices/\(address)/iommu_group") {
                _ = fm.createFile(atPath: dev + "/vfio/\(g)", contents: nil)
            }
        }
        self.naturalDrivers = naturalDrivers
    }

    deinit { stop() }

    /// Starts serving the FIFOs; uevents go to `events`.
    public func start(events: @escaping EventSink) {
        for path in fifos {
            done.enter()
            let thread = Thread { [self] in
                serve(path, events)
                done.leave()
            }
            thread.start()
        }
    }

    /// Ends every serving thread and waits for them. Each blocked in `open` is released by an
    /// empty write: opened without blocking (a FIFO nobody reads refuses it at once), and again
    /// until every thread has ended. (Before, one blocking open a FIFO: when the code under
    /// test wrote to that FIFO at the same moment, the thread read its write, went back to
    /// `open`, and nothing released it again: the test hung in `stop`, seen once in a clean-clone run.)
    public func stop() {
        guard !stopped else { return }
        stopped = true
        stopping.store(true, ordering: .releasing)
        repeat {
            for path in fifos {
                let fd = vh_open_direct(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC)
                if fd >= 0 { close(fd) }
            }
        } while done.wait(timeout: .now() + 0.05) == .timedOut
    }

    /// What the kernel did, in order (for failure messages).
    public var log: [String] { lock.withLock { $0 } }

    /// Signalled after each write the kernel acted on.
    private let changed = NSCondition()

    /// Waits until the kernel has done `entry` (a line of `log`, e.g. "bind 0000:01:00.1 to vfio-pci").
    public func waitFor(_ entry: String, timeout: Double = 10) throws {
        let deadline = Date().addingTimeInterval(timeout)
        changed.lock()
        defer { changed.unlock() }
        while !log.contains(entry) {
            if !changed.wait(until: deadline) {
                throw TestbedError(message: "the played kernel never did \"\(entry)\"; it did: \(log)")
            }
        }
    }

    // MARK: Serving

    private func serve(_ path: String, _ events: EventSink) {
        while true {
            let fd = vh_open_direct(path, O_RDONLY | O_CLOEXEC)
            if fd < 0 {
                if errno == EINTR { continue }
                return
            }
            var data: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 256)
            while true {
                let n = read(fd, &chunk, chunk.count)
                if n > 0 { data += chunk[0..<n]; continue }
                if n < 0 && errno == EINTR { continue }
                break
            }
            close(fd)
            if data.isEmpty && stopping.load(ordering: .acquiring) { return }
            let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            // Writes are one address each; back-to-back writers could share one read.
            var addresses: [String] = []
            var rest = Substring(text)
            while rest.count >= 12 {
                addresses.append(String(rest.prefix(12)))
                rest = rest.dropFirst(12).drop { $0 == "\n" || $0 == " " }
            }
            for address in addresses {
                handle(path, address, events)
            }
            if stopping.load(ordering: .acquiring) { return }
        }
    }

    /// Writes kept waiting, unacted on, by the suffix of the file written (`hold`).
    private let held = Mutex<[String: DispatchSemaphore]>([:])

    /// From now on, a write to a file whose path ends with `suffix` (`vfio-pci/unbind`) waits
    /// until `release(suffix)`: the code under test is then in the middle of that step. The
    /// log gets `held FILE ADDRESS` (e.g. "held unbind 0000:01:00.1") when one arrives.
    public func hold(_ suffix: String) {
        held.withLock { $0[suffix] = DispatchSemaphore(value: 0) }
    }

    /// Lets the writes `hold(suffix)` keeps go on, and the next ones through.
    public func release(_ suffix: String) {
        held.withLock { $0.removeValue(forKey: suffix) }?.signal()
    }

    private func handle(_ path: String, _ address: String, _ events: EventSink) {
        let file = (path as NSString).lastPathComponent
        let driver = ((path as NSString).deletingLastPathComponent as NSString).lastPathComponent
        if let gate = held.withLock({ gates in gates.first { path.hasSuffix($0.key) }?.value }) {
            lock.withLock { $0.append("held \(file) \(address)") }
            changed.lock()
            changed.broadcast()
            changed.unlock()
            gate.wait()
        }
        lock.withLock { log in
            switch file {
            case "drivers_probe": probe(address, &log, events)
            case "unbind": unbind(address, from: driver, &log, events)
            case "bind": bind(address, to: driver, &log, events)
            default: log.append("? \(path)")
            }
        }
        changed.lock()
        changed.broadcast()
        changed.unlock()
    }

    // MARK: The kernel's side

    private func devicePath(_ address: String) -> String { sys + "/bus/pci/devices/\(address)" }

    /// `/devices/...` of a device (its DEVPATH).
    private func devpath(_ address: String) -> String {
        let real = (try? FileManager.default.destinationOfSymbolicLink(atPath: devicePath(address))) ?? ""
        // "../../../devices/pci0000:00/..." -> "/devices/pci0000:00/..."
        return "/" + real.split(separator: "/").drop { $0 == ".." }.joined(separator: "/")
    }

    private func probe(_ address: String, _ log: inout [String], _ events: EventSink) {
        guard FileManager.default.fileExists(atPath: devicePath(address)) else { return log.append("probe \(address): ENODEV") }
        if let d = Self.linkName(devicePath(address) + "/driver") { return log.append("probe \(address): already on \(d)") }
        let override = ((try? String(contentsOfFile: devicePath(address) + "/driver_override", encoding: .utf8)) ?? "")
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let target = override.isEmpty || override == "(null)" ? naturalDrivers[address] : override
        guard let target else { return log.append("probe \(address): no driver matches") }
        attach(address, target, &log, events)
    }

    private func bind(_ address: String, to driver: String, _ log: inout [String], _ events: EventSink) {
        if let d = Self.linkName(devicePath(address) + "/driver") { return log.append("bind \(address): EBUSY (on \(d))") }
        attach(address, driver, &log, events)
    }

    private func attach(_ address: String, _ driver: String, _ log: inout [String], _ events: EventSink) {
        if refusals.bind[address] == driver { return log.append("probe \(address): \(driver) refuses it") }
        let fm = FileManager.default
        let driverDir = sys + "/bus/pci/drivers/\(driver)"
        guard fm.fileExists(atPath: driverDir) else { return log.append("probe \(address): no driver \(driver)") }
        let rel = devpath(address).dropFirst() // "devices/pci0000:00/..."
        let up = String(repeating: "../", count: rel.split(separator: "/").count)
        if driver == "vfio-pci", let g = Self.linkName(devicePath(address) + "/iommu_group") {
            let node = dev + "/vfio/\(g)"
            if !fm.fileExists(atPath: node) && !refusals.groupNode {
                _ = fm.createFile(atPath: node, contents: nil)
                log.append("add /dev/vfio/\(g)")
                events("add", "vfio", "/devices/virtual/vfio/\(g)")
            }
        }
        symlink(up + "bus/pci/drivers/\(driver)", devicePath(address) + "/driver")
        symlink("../../../../" + rel, driverDir + "/\(address)")
        log.append("bind \(address) to \(driver)")
        events("bind", "pci", devpath(address))
    }

    private func unbind(_ address: String, from driver: String, _ log: inout [String], _ events: EventSink) {
        guard Self.linkName(devicePath(address) + "/driver") == driver else {
            return log.append("unbind \(address) from \(driver): ENODEV (not bound to it)")
        }
        if refusals.unbind[address] == driver { return log.append("unbind \(address) from \(driver): stuck") }
        let fm = FileManager.default
        if driver == "vfio-pci", let g = Self.linkName(devicePath(address) + "/iommu_group") {
            let others = ((try? fm.contentsOfDirectory(atPath: sys + "/kernel/iommu_groups/\(g)/devices")) ?? [])
                .filter { $0 != address && Self.linkName(devicePath($0) + "/driver") == "vfio-pci" }
            if others.isEmpty && fm.fileExists(atPath: dev + "/vfio/\(g)") {
                unlink(dev + "/vfio/\(g)")
                log.append("remove /dev/vfio/\(g)")
                events("remove", "vfio", "/devices/virtual/vfio/\(g)")
            }
        }
        unlink(devicePath(address) + "/driver")
        unlink(sys + "/bus/pci/drivers/\(driver)/\(address)")
        log.append("unbind \(address) from \(driver)")
        events("unbind", "pci", devpath(address))
    }

    public static func linkName(_ path: String) -> String? {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: path)).flatMap { $0.split(separator: "/").last.map(String.init) }
    }
}
