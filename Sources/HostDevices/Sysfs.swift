import CLinux
import JSONKit
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Why one device could not be read. It concerns that device only.
public struct DeviceReadError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The device's sysfs path (below the sysfs root).
    public var device: String
    /// The attribute or step that failed.
    public var attribute: String
    public var reason: String

    public init(device: String, attribute: String, reason: String) {
        self.device = device
        self.attribute = attribute
        self.reason = reason
    }

    public var description: String { "\(device): \(attribute): \(reason)" }
}

/// Text of an errno value.
func errnoText(_ code: Int32) -> String {
    String(cString: strerror(code))
}

/// Raw access to a sysfs tree rooted at `root` (normally `/sys`; a umockdev testbed's
/// `sys` folder in tests). Every read of the package goes through here.
public struct Sysfs: Sendable {
    /// The folder that stands for `/sys`.
    public let root: String

    public init(root: String = "/sys") {
        self.root = root.hasSuffix("/") && root.count > 1 ? String(root.dropLast()) : root
    }

    /// Absolute path of a path relative to `/sys` (`/devices/...` or `bus/usb/...`).
    public func path(_ relative: String) -> String {
        relative.hasPrefix("/") ? root + relative : root + "/" + relative
    }

    /// The bytes of a file, or an errno. Reads through a stack buffer: a sysfs
    /// attribute is one `read` (plus the one that sees the end).
    /// `shortReadIsEnd`: a sysfs attribute (or a regular file) gives all it has in
    /// one `read`, so a short one is the end (one system call instead of two).
    public static func readBytes(_ path: String, limit: Int = 1 << 20, shortReadIsEnd: Bool = false) -> Result<[UInt8], Errno> {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { return .failure(Errno(errno)) }
        defer { close(fd) }
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 4096) { chunk -> Result<[UInt8], Errno> in
            var out: [UInt8] = []
            while out.count < limit {
                let want = min(chunk.count, limit - out.count)
                let n = read(fd, chunk.baseAddress, want)
                if n < 0 {
                    if errno == EINTR { continue }
                    return .failure(Errno(errno))
                }
                if n == 0 { break }
                out.append(contentsOf: UnsafeBufferPointer(rebasing: chunk[0..<n]))
                if shortReadIsEnd && n < want { break }
            }
            return .success(out)
        }
    }

    /// The largest temporary buffer Swift places on the stack (`withUnsafeTemporaryAllocation`
    /// puts a larger one on the heap, one malloc and free for each use).
    public static let stackBuffer = 1024

    /// Calls `body` with a small file's bytes: one `read` into a stack buffer (a sysfs
    /// attribute gives all it has at once). `.success(nil)`: 1 KiB or more (read it with
    /// `readBytes`); a failure: the errno of `open` or `read`.
    public static func withSmallFile<T>(_ path: String, _ body: (UnsafeBufferPointer<UInt8>) -> T) -> Result<T?, Errno> {
        withSmallFile(in: AT_FDCWD, path, body)
    }

    /// `withSmallFile` of `path` relative to the folder open at `folder` (`AT_FDCWD`: the
    /// working folder, or an absolute path).
    public static func withSmallFile<T>(in folder: Int32, _ path: String, _ body: (UnsafeBufferPointer<UInt8>) -> T) -> Result<T?, Errno> {
        let fd = openat(folder, path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { return .failure(Errno(errno)) }
        defer { close(fd) }
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: stackBuffer) { buf -> Result<T?, Errno> in
            var n: Int
            repeat { n = read(fd, buf.baseAddress, buf.count) } while n < 0 && errno == EINTR
            if n < 0 { return .failure(Errno(errno)) }
            guard n < buf.count else { return .success(nil) }
            return .success(body(UnsafeBufferPointer(rebasing: buf[..<n])))
        }
    }

    /// The target of a symbolic link, or nil.
    public static func readLink(_ path: String) -> String? {
        // A stack buffer for the usual target; one that fills it is read again at PATH_MAX.
        for capacity in [stackBuffer, 4096] {
            let target = withUnsafeTemporaryAllocation(of: UInt8.self, capacity: capacity) { buf -> String?? in
                let n = buf.withMemoryRebound(to: CChar.self) { readlink(path, $0.baseAddress!, $0.count) }
                guard n > 0 else { return .some(nil) }
                guard n < capacity else { return nil }
                return String(decoding: UnsafeBufferPointer(rebasing: buf[0..<n]), as: UTF8.self)
            }
            if let target { return target }
        }
        return nil
    }

    /// The last component of a link's target (a driver's or group's name).
    public static func linkName(_ path: String) -> String? {
        readLink(path).flatMap { $0.split(separator: "/").last.map(String.init) }
    }

    /// Entries of a folder, without `.` and `..`; empty when it cannot be read.
    public static func list(_ path: String) -> [String] {
        (try? entries(path)) ?? []
    }

    /// Entries of a folder, without `.` and `..`; empty when there is no such folder; an error
    /// when it is there and cannot be read (out of descriptors or memory, not a folder): a
    /// listing of the devices must not take such a failure for "none".
    public static func entries(_ path: String) throws(DeviceReadError) -> [String] {
        guard let dir = opendir(path) else {
            let code = errno
            if code == ENOENT { return [] }
            throw DeviceReadError(device: path, attribute: "listing", reason: String(cString: strerror(code)) + " (errno \(code))")
        }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// True when something exists at the path (a link is followed).
    public static func exists(_ path: String) -> Bool {
        access(path, F_OK) == 0
    }

    /// The canonical path, links resolved.
    public static func realPath(_ path: String) -> String? {
        guard let p = realpath(path, nil) else { return nil }
        defer { free(p) }
        return String(cString: p)
    }
}

/// An errno value from a failed call.
public struct Errno: Error, Sendable, Hashable, CustomStringConvertible {
    public var code: Int32
    public init(_ code: Int32) { self.code = code }
    public var description: String { errnoText(code) }
}

/// A folder held open (`O_PATH`) for the reads below it: each attribute is then one path
/// component for the kernel to look up, not the whole path from the root, and no path
/// string is built for it. Closed with the last reference.
final class OpenFolder {
    /// The descriptor, or -1 when the folder could not be opened (it vanished): reads then
    /// go by full path and fail as they would have.
    let fd: Int32

    init(_ path: String) {
        fd = vh_open_folder(path)
    }

    deinit { if fd >= 0 { close(fd) } }
}

/// Reads the attributes of one device folder, turning every failure into a
/// `DeviceReadError` that names the device and the attribute.
struct AttributeReader {
    let dir: String
    let device: String
    /// The folder open, when the reader holds it (`opened`): attributes are read relative to it.
    let folder: OpenFolder?

    init(dir: String, device: String) {
        self.dir = dir
        self.device = device
        folder = nil
    }

    /// A reader that holds `dir` open while it lives (for a device of several attributes).
    static func opened(dir: String, device: String) -> AttributeReader {
        AttributeReader(dir: dir, device: device, folder: OpenFolder(dir))
    }

    private init(dir: String, device: String, folder: OpenFolder) {
        self.dir = dir
        self.device = device
        self.folder = folder
    }

    /// The attribute's text without the trailing newline, nil when absent.
    /// Garbage (non-UTF-8, NUL bytes) is an error.
    func optionalString(_ name: String) throws(DeviceReadError) -> String? {
        let path = { dir + "/" + name }
        /// The text without its trailing newlines; nil when it holds NUL or is not UTF-8.
        func text(_ b: UnsafeBufferPointer<UInt8>) -> String? {
            var end = b.count
            while end > 0 && (b[end - 1] == 0x0A || b[end - 1] == 0x0D) { end -= 1 }
            let body = UnsafeBufferPointer(rebasing: b[..<end])
            if end > 0, let base = body.baseAddress, memchr(base, 0, end) != nil { return nil }
            return String(validating: body, as: UTF8.self)
        }
        var result: String??
        switch withSmallFile(name, text) {
        case .success(let small?): result = small
        case .success(nil):
            // 1 KiB or more: read it whole (up to 64 KiB).
            switch Sysfs.readBytes(path(), limit: 64 * 1024, shortReadIsEnd: true) {
            case .success(let bytes): result = bytes.withUnsafeBufferPointer(text)
            case .failure(let e): return try missing(e, name)
            }
        case .failure(let e): return try missing(e, name)
        }
        guard let s = result ?? nil else {
            throw DeviceReadError(device: device, attribute: name, reason: "not valid UTF-8 text")
        }
        return s
    }

    /// nil for an attribute that is absent; any other errno is the device's error.
    private func missing(_ e: Errno, _ name: String) throws(DeviceReadError) -> String? {
        guard e.code == ENOENT || e.code == ENODATA else {
            throw DeviceReadError(device: device, attribute: name, reason: e.description)
        }
        return nil
    }

    func string(_ name: String) throws(DeviceReadError) -> String {
        guard let s = try optionalString(name) else {
            throw DeviceReadError(device: device, attribute: name, reason: "missing (device removed?)")
        }
        return s
    }

    /// A hexadecimal attribute (`046d`, `0x8086`), checked against `max`.
    func hex(_ name: String, max: UInt64 = UInt64(UInt16.max)) throws(DeviceReadError) -> UInt64 {
        try hexValue(name, try string(name), max: max)
    }

    func optionalHex(_ name: String, max: UInt64 = UInt64(UInt16.max)) throws(DeviceReadError) -> UInt64? {
        guard let s = try optionalString(name) else { return nil }
        return try hexValue(name, s, max: max)
    }

    private func hexValue(_ name: String, _ s: String, max: UInt64) throws(DeviceReadError) -> UInt64 {
        guard let v = parseHex(s), v <= max else {
            throw DeviceReadError(device: device, attribute: name, reason: "expected a hex number up to \(String(max, radix: 16)), found \(quoted(s))")
        }
        return v
    }

    /// A decimal attribute.
    func int(_ name: String, max: Int = Int(Int32.max)) throws(DeviceReadError) -> Int {
        let s = try string(name)
        guard let v = Int(s.trimmingWhitespace()), v >= 0, v <= max else {
            throw DeviceReadError(device: device, attribute: name, reason: "expected a number up to \(max), found \(quoted(s))")
        }
        return v
    }

    func byteHex(_ name: String) throws(DeviceReadError) -> UInt8 {
        UInt8(try hex(name, max: 0xFF))
    }
}

/// Parses `046d`, `0x046D`; nil on anything else (empty, too long, not hex).
public func parseHex(_ text: String) -> UInt64? {
    var s = Substring(text.trimmingWhitespace())
    if s.hasPrefix("0x") || s.hasPrefix("0X") { s = s.dropFirst(2) }
    guard !s.isEmpty, s.count <= 16 else { return nil }
    return UInt64(s, radix: 16)
}

extension String {
    func trimmingWhitespace() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\n" || f == "\t" || f == "\r" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\n" || l == "\t" || l == "\r" { s = s.dropLast() }
        return String(s)
    }
}

extension AttributeReader {
    /// `Sysfs.withSmallFile` of an attribute (relative to the open folder when there is one).
    func withSmallFile<T>(_ name: String, _ body: (UnsafeBufferPointer<UInt8>) -> T) -> Result<T?, Errno> {
        if let fd = folder?.fd, fd >= 0 { return Sysfs.withSmallFile(in: fd, name, body) }
        return Sysfs.withSmallFile(dir + "/" + name, body)
    }

    /// Whether something exists at `name` below the folder (a link is followed).
    func exists(_ name: String) -> Bool {
        if let fd = folder?.fd, fd >= 0 { return faccessat(fd, name, F_OK, 0) == 0 }
        return Sysfs.exists(dir + "/" + name)
    }
}
