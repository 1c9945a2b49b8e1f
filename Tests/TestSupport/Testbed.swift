import CUmockdev
import Foundation
import Synchronization

/// A umockdev testbed: a fake sysfs tree (and /dev) in a temporary folder, with
/// uevents. Code under test reads it through `sysRoot` (no LD_PRELOAD needed);
/// programs started under `umockdev-wrapper`/`umockdev-run` see it as /sys.
///
/// umockdev keeps its state in the process-global `UMOCKDEV_DIR`: only one
/// testbed exists at a time (`Testbed.make()` waits for the previous one to end).
public final class Testbed: @unchecked Sendable {
    /// One testbed at a time; waiting is asynchronous (a blocked thread of the
    /// cooperative pool could deadlock the tests that hold a testbed).
    private actor Queue {
        var busy = false
        var waiters: [CheckedContinuation<Void, Never>] = []
        func acquire() async {
            if !busy { busy = true; return }
            await withCheckedContinuation { waiters.append($0) }
        }
        func release() {
            if waiters.isEmpty { busy = false } else { waiters.removeFirst().resume() }
        }
    }
    private static let queue = Queue()

    /// Waits until no other queued testbed exists, then makes an empty one.
    public static func make() async -> Testbed {
        await queue.acquire()
        let tb = Testbed()
        tb.queued = true
        return tb
    }

    private var queued = false

    private let tb: UnsafeMutablePointer<UMockdevTestbed>

    /// The testbed's root folder (it holds `sys/` and `dev/`).
    public let root: String
    /// The folder standing for `/sys`.
    public var sysRoot: String { root + "/sys" }

    /// Use `make()`: umockdev's preload finds the testbed through the process-wide
    /// UMOCKDEV_DIR, so two testbeds at once would mix their uevents.
    private init() {
        tb = umockdev_testbed_new()
        let dir = umockdev_testbed_get_root_dir(tb)!
        root = String(cString: dir)
        g_free(dir)
    }

    deinit {
        g_object_unref(tb)
        try? FileManager.default.removeItem(atPath: root)
        if queued { Task { await Testbed.queue.release() } }
    }

    /// Adds the devices of a umockdev description file (emits `add` uevents).
    public func add(file: String) throws {
        var error: UnsafeMutablePointer<GError>?
        if umockdev_testbed_add_from_file(tb, file, &error) == 0 {
            let message = error.map { String(cString: $0.pointee.message) } ?? "unknown error"
            if let error { g_error_free(error) }
            throw TestbedError(message: "umockdev cannot load \(file): \(message)")
        }
    }

    /// Adds devices from umockdev description text (`P:`, `E:`, `A:`, `H:`, `L:`, `N:` lines).
    public func add(record: String) throws {
        var error: UnsafeMutablePointer<GError>?
        if umockdev_testbed_add_from_string(tb, record, &error) == 0 {
            let message = error.map { String(cString: $0.pointee.message) } ?? "unknown error"
            if let error { g_error_free(error) }
            throw TestbedError(message: "umockdev cannot load the record: \(message)")
        }
    }

    /// Adds one device (no parent: see `add(record:)` for trees); returns its sysfs path (as the testbed sees it: `/sys/devices/...`).
    @discardableResult
    public func addDevice(subsystem: String, name: String,
                          attributes: [(String, String)], properties: [(String, String)] = []) -> String {
        func flat(_ pairs: [(String, String)]) -> [UnsafePointer<CChar>?] {
            pairs.flatMap { [UnsafePointer(strdup($0.0)), UnsafePointer(strdup($0.1))] } + [nil]
        }
        var a = flat(attributes)
        var p = flat(properties)
        defer { (a + p).forEach { free(UnsafeMutablePointer(mutating: $0)) } }
        let path = a.withUnsafeMutableBufferPointer { ab in
            p.withUnsafeMutableBufferPointer { pb in
                vh_umockdev_add_device(tb, subsystem, name, nil, ab.baseAddress, pb.baseAddress)
            }
        }
        guard let path else { return "" }
        defer { g_free(path) }
        return String(cString: path)
    }

    /// Writes an attribute with arbitrary bytes (garbage, binary descriptors).
    public func setAttribute(_ devpath: String, _ name: String, bytes: [UInt8]) {
        var copy = bytes
        copy.withUnsafeMutableBufferPointer { b in
            umockdev_testbed_set_attribute_binary(tb, devpath, name, b.baseAddress, Int32(b.count))
        }
    }

    /// Moves umockdev's listener sockets (`event<fd>` in the testbed root, one per uevent
    /// socket of a process under its preload) aside, so that uevents sent meanwhile reach
    /// none of them: of every process, or only those `pid` holds. `releaseListeners` puts
    /// them back.
    public func holdListeners(of pid: pid_t? = nil) -> [String] {
        var names = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).filter { $0.hasPrefix("event") }
        if let pid {
            // /proc/net/unix: the inode of the socket bound to each path; the process's fds name theirs.
            let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
            let held = Set(fds.compactMap { try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/" + $0) })
            // Read to its end: String(contentsOfFile:) stops after the first 4 KiB of a /proc file.
            let table = FileHandle(forReadingAtPath: "/proc/net/unix").map { String(decoding: $0.readDataToEndOfFile(), as: UTF8.self) } ?? ""
            var inodes: [String: String] = [:]
            for line in table.split(separator: "\n").dropFirst() {
                let f = line.split(separator: " ", omittingEmptySubsequences: true)
                if f.count >= 8, f[7].hasPrefix(root + "/event") { inodes[String(f[7].dropFirst(root.count + 1))] = String(f[6]) }
            }
            names = names.filter { inodes[$0].map { held.contains("socket:[\($0)]") } ?? false }
        }
        for n in names { rename(root + "/" + n, root + "/held-" + n) }
        return names
    }

    public func releaseListeners(_ names: [String]) {
        for n in names { rename(root + "/held-" + n, root + "/" + n) }
    }

    /// Sends a uevent (`add`, `change`, `remove`, `bind`, ...).
    public func uevent(_ devpath: String, _ action: String) {
        umockdev_testbed_uevent(tb, devpath, action)
    }

    /// Adds a umockdev file, then sends for each PCI device of it that has a driver the
    /// `bind` uevent a kernel sends once the driver's probe is over (umockdev sends `add`
    /// only; vhotplug waits for a new PCI device's first probe before rebinding it).
    public func addProbed(file: String) throws {
        try add(file: file)
        try probesOver(file: file)
    }

    /// Sends the `bind` uevent of each PCI device of a umockdev file (added already) that has a
    /// driver: the kernel's word that its driver's probe is over.
    public func probesOver(file: String) throws {
        let text = try String(contentsOfFile: file, encoding: .utf8)
        for record in text.components(separatedBy: "\n\n") {
            let lines = record.split(separator: "\n")
            guard let p = lines.first(where: { $0.hasPrefix("P: ") }), lines.contains("E: SUBSYSTEM=pci"),
                  lines.contains(where: { $0.hasPrefix("L: driver=") }) else { continue }
            uevent("/sys" + p.dropFirst(3), "bind")
        }
    }

    /// Removes a device (send the `remove` uevent first: this sends none).
    public func remove(_ devpath: String) {
        umockdev_testbed_remove_device(tb, devpath)
        removeDanglingLinks()
    }

    /// Unplugs a device as the kernel does: `remove` events for its children
    /// (deepest first) and for itself, then the device and its links go.
    public func unplug(_ devpath: String) {
        let dir = root + devpath
        var children: [String] = []
        if let e = FileManager.default.enumerator(atPath: dir) {
            while let rel = e.nextObject() as? String {
                if rel.hasSuffix("/uevent"), !rel.contains("/power/") {
                    children.append(devpath + "/" + String(rel.dropLast("/uevent".count)))
                }
            }
        }
        // Their device nodes go too (umockdev keeps them otherwise).
        var nodes: [String] = []
        for d in children + [devpath] {
            let text = (try? String(contentsOfFile: root + d + "/uevent", encoding: .utf8)) ?? ""
            for line in text.split(separator: "\n") where line.hasPrefix("DEVNAME=") {
                nodes.append(root + "/dev/" + line.dropFirst("DEVNAME=".count).replacingOccurrences(of: "/dev/", with: ""))
            }
        }
        for child in children.sorted(by: { $0.count > $1.count }) { uevent(child, "remove") }
        uevent(devpath, "remove")
        remove(devpath)
        for node in nodes { try? FileManager.default.removeItem(atPath: node) }
    }

    /// umockdev leaves the bus, class and device-node links of a removed device:
    /// drop every dangling link so that the same device can be added again.
    private func removeDanglingLinks() {
        let fm = FileManager.default
        guard let e = fm.enumerator(atPath: root) else { return }
        var dangling: [String] = []
        while let rel = e.nextObject() as? String {
            if rel.hasPrefix("sys/devices") { e.skipDescendants(); continue }
            let path = root + "/" + rel
            if (try? fm.destinationOfSymbolicLink(atPath: path)) != nil, !fm.fileExists(atPath: path) {
                dangling.append(path)
            }
        }
        for path in dangling { try? fm.removeItem(atPath: path) }
    }

}

public struct TestbedError: Error, CustomStringConvertible {
    public var message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}

/// Paths of the repository, for tests.
public enum Repository {
    /// The repository root (from this file's place: Tests/TestSupport/Testbed.swift).
    public static let root: String = {
        var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(3)
        return parts.joined(separator: "/")
    }()

    /// The folder of the built products (the test bundle's own folder).
    public static let productsDir: String = {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var parts = exe.split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast()
        // Inside an .xctest bundle folder on some layouts: go up to the products folder.
        while let last = parts.last, last.hasSuffix(".xctest") || last == "MacOS" || last == "Contents" { parts.removeLast() }
        return parts.joined(separator: "/")
    }()

    /// The `vhotplug` executable built beside the tests.
    public static var vhotplug: String { productsDir + "/vhotplug" }
}

/// Runs a program, returning its exit status and outputs. Fails the caller clearly
/// when the program does not exist (a missing Debian package).
public func run(_ argv: [String], environment: [String: String]? = nil, input: String? = nil) throws -> (status: Int32, stdout: String, stderr: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: argv[0].hasPrefix("/") ? argv[0] : "/usr/bin/env")
    p.arguments = argv[0].hasPrefix("/") ? Array(argv.dropFirst()) : argv
    p.environment = environment ?? cleanEnvironment()
    let out = Pipe(), err = Pipe(), inp = Pipe()
    p.standardOutput = out
    p.standardError = err
    p.standardInput = inp
    try p.run()
    if let input { inp.fileHandleForWriting.write(Data(input.utf8)) }
    try? inp.fileHandleForWriting.close()
    // Read both pipes to the end before waiting (no deadlock on large output).
    let group = DispatchGroup()
    nonisolated(unsafe) var errData = Data()
    group.enter()
    DispatchQueue.global().async {
        errData = err.fileHandleForReading.readDataToEndOfFile()
        group.leave()
    }
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    group.wait()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: outData, as: UTF8.self), String(decoding: errData, as: UTF8.self))
}

/// This process's environment without umockdev's (the tests run under its
/// preload; a child sees a testbed only when given one explicitly).
public func cleanEnvironment() -> [String: String] {
    var env = ProcessInfo.processInfo.environment
    env["UMOCKDEV_DIR"] = nil
    if let preload = env["LD_PRELOAD"] {
        let kept = preload.split(whereSeparator: { $0 == ":" || $0 == " " }).filter { !$0.contains("umockdev") }
        env["LD_PRELOAD"] = kept.isEmpty ? nil : kept.joined(separator: ":")
    }
    return env
}

/// The path of a program on PATH, or a failure naming the Debian package to install.
public func requireProgram(_ name: String, package: String) throws -> String {
    for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
        let p = "\(dir)/\(name)"
        if FileManager.default.isExecutableFile(atPath: p) { return p }
    }
    throw TestbedError(message: "\(name) not found: install the Debian package \(package) (make deps)")
}

/// The Logitech receiver fixture's names that must be unique in one testbed (umockdev
/// cannot make a node or device of the same name twice), renumbered for plug `round`:
/// hidraw/event/mouse nodes, input devices and HID devices.
public func renumberReceiverNames(_ records: String, round: Int) -> String {
    var records = records
    for node in ["hidraw", "event", "mouse"] {
        for n in (0..<10).reversed() {
            records = records.replacingOccurrences(of: "\(node)\(n)\n", with: "\(node)\(n + 10 * round)\n")
                .replacingOccurrences(of: "/\(node)\(n)/", with: "/\(node)\(n + 10 * round)/")
        }
    }
    for n in (0..<10).reversed() {
        records = records.replacingOccurrences(of: "/input\(n)", with: "/input\(n + 10 * round)")
            .replacingOccurrences(of: "C52B.000\(n)", with: String(format: "C52B.%04d", n + 10 * round))
    }
    return records
}
