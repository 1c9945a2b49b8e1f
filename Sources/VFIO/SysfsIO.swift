#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Reactor
import Synchronization

/// A sysfs (or /dev) call that failed: which call, on which path, with which
/// value, and the errno.
public struct SysfsIOError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The operations of the seam.
    public enum Operation: String, Sendable, Hashable, Codable, CaseIterable {
        case write
        case read
        case readLink = "readlink"
        case exists
    }

    /// The call that failed.
    public var operation: Operation
    /// The absolute path of the call.
    public var path: String
    /// What was written (`write` only).
    public var value: String?
    /// The errno (`EIO` for a short write).
    public var errno: Int32
    /// More about the failure (a short write), if anything.
    public var detail: String?

    /// A failure of `operation` on `path` with `errno`.
    public init(operation: Operation, path: String, value: String? = nil, errno: Int32, detail: String? = nil) {
        self.operation = operation
        self.path = path
        self.value = value
        self.errno = errno
        self.detail = detail
    }

    /// The errno's text (`Device or resource busy`).
    public var errnoText: String { String(cString: strerror(errno)) }

    /// `write "vfio-pci" to /sys/.../driver_override: Device or resource busy (errno 16)`.
    public var description: String {
        let call: String
        switch operation {
        case .write: call = "write \(quote(value ?? "")) to \(path)"
        case .read: call = "read \(path)"
        case .readLink: call = "readlink \(path)"
        case .exists: call = "stat \(path)"
        }
        let more = detail.map { ", \($0)" } ?? ""
        return "\(call): \(errnoText) (errno \(errno)\(more))"
    }
}

/// A value as it is shown in messages: quoted, newlines visible.
func quote(_ s: String) -> String {
    "\"" + s.replacingNewlines() + "\""
}

extension String {
    func replacingNewlines() -> String {
        var out = ""
        for c in self {
            switch c {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default: out.append(c)
            }
        }
        return out
    }
}

/// The one syscall seam of the VFIO rebind: every sysfs write, read and link
/// lookup and every /dev check goes through it, so that a test can make any
/// single call fail with the errno of its choice (see `FaultInjectingSysfsIO`).
public protocol SysfsIO: Sendable {
    /// Writes `value` to the file at `path` in one `write(2)` (sysfs takes a
    /// value per write), opening it write-only and truncating.
    func write(_ value: String, to path: String) throws(SysfsIOError)
    /// The text of a small file (an attribute), without its trailing newline.
    func read(_ path: String) throws(SysfsIOError) -> String
    /// The last component of a symbolic link's target (`driver` -> `nouveau`);
    /// nil when there is no link (`ENOENT`).
    func linkName(_ path: String) throws(SysfsIOError) -> String?
    /// True when something exists at `path` (links followed); false on `ENOENT`.
    func exists(_ path: String) throws(SysfsIOError) -> Bool
}

extension SysfsIO {
    /// `write(_:to:)` on a thread of its own (`EventLoop.runBlocking`): the kernel does the
    /// store's work inside the write (a driver's remove or probe, a USB device configured or
    /// unconfigured), and the loop must go on meanwhile.
    public func write(_ value: String, to path: String, off loop: EventLoop) async throws(SysfsIOError) {
        let failure = await loop.runBlocking { () -> SysfsIOError? in
            do throws(SysfsIOError) { try self.write(value, to: path); return nil } catch { return error }
        }
        if let failure { throw failure }
    }
}

/// The real calls: open/write/close, readlink, access.
public struct SystemSysfsIO: SysfsIO {
    /// The real system calls.
    public init() {}

    /// `open(O_WRONLY|O_TRUNC)`, one `write(2)` (a short write is `EIO`), `close`.
    public func write(_ value: String, to path: String) throws(SysfsIOError) {
        func fail(_ code: Int32, _ detail: String? = nil) -> SysfsIOError {
            SysfsIOError(operation: .write, path: path, value: value, errno: code, detail: detail)
        }
        var fd: Int32
        repeat { fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC) } while fd < 0 && errno == EINTR
        guard fd >= 0 else { throw fail(errno) }
        let bytes = Array(value.utf8)
        var n: Int
        repeat {
            n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        } while n < 0 && errno == EINTR
        let writeErrno = errno
        // Errors of a sysfs store come from write(2); close reports only
        // deferred errors of other file systems, but is checked all the same.
        let closed = close(fd)
        let closeErrno = errno
        if n < 0 { throw fail(writeErrno) }
        if n != bytes.count { throw fail(EIO, "short write: \(n) of \(bytes.count) bytes") }
        if closed != 0 && closeErrno != EINTR { throw fail(closeErrno, "on close") }
    }

    /// `open`, `read` to the end (64 KiB at most), `close`.
    public func read(_ path: String) throws(SysfsIOError) -> String {
        var fd: Int32
        repeat { fd = open(path, O_RDONLY | O_CLOEXEC) } while fd < 0 && errno == EINTR
        guard fd >= 0 else { throw SysfsIOError(operation: .read, path: path, errno: errno) }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while out.count < 65536 {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SysfsIOError(operation: .read, path: path, errno: errno)
            }
            if n == 0 { break }
            out += chunk[0..<n]
        }
        while let last = out.last, last == 0x0A || last == 0x0D { out.removeLast() }
        return String(decoding: out, as: UTF8.self)
    }

    /// `readlink(2)`; `ENOENT` is nil.
    public func linkName(_ path: String) throws(SysfsIOError) -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink(path, &buf, buf.count - 1)
        if n < 0 {
            if errno == ENOENT { return nil }
            throw SysfsIOError(operation: .readLink, path: path, errno: errno)
        }
        let target = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return target.split(separator: "/").last.map(String.init)
    }

    /// `access(F_OK)`; `ENOENT`/`ENOTDIR` is false.
    public func exists(_ path: String) throws(SysfsIOError) -> Bool {
        if access(path, F_OK) == 0 { return true }
        if errno == ENOENT || errno == ENOTDIR { return false }
        throw SysfsIOError(operation: .exists, path: path, errno: errno)
    }
}

/// A `SysfsIO` for tests: passes every call to `base` and records it, except
/// the calls chosen by its faults, which fail with the fault's errno without
/// reaching `base` (as a kernel that refuses the write would).
///
/// A fault picks calls by operation and path suffix (either may be left open)
/// and by occurrence: the Nth call (1-based) that matches, counted from when
/// the fault was added. With neither an operation nor a suffix, the occurrence
/// is simply the call's index. Each fault fires once.
public final class FaultInjectingSysfsIO: SysfsIO {
    /// One call to make fail.
    public struct Fault: Sendable, Hashable {
        /// The operation to fail; nil: any.
        public var operation: SysfsIOError.Operation?
        /// The end of the path to fail (`/driver_override`, `nouveau/unbind`); nil: any.
        public var pathSuffix: String?
        /// 1 = the first matching call.
        public var occurrence: Int
        /// The errno the call fails with.
        public var errno: Int32

        /// Fails the `occurrence`th call matching `operation` and `pathSuffix` with `errno`.
        public init(operation: SysfsIOError.Operation? = nil, pathSuffix: String? = nil, occurrence: Int = 1, errno: Int32) {
            self.operation = operation
            self.pathSuffix = pathSuffix
            self.occurrence = occurrence
            self.errno = errno
        }

        func matches(_ operation: SysfsIOError.Operation, _ path: String) -> Bool {
            (self.operation == nil || self.operation == operation) && (pathSuffix.map { path.hasSuffix($0) } ?? true)
        }
    }

    /// One call as it was made.
    public struct Call: Sendable, Hashable, CustomStringConvertible {
        /// The operation.
        public var operation: SysfsIOError.Operation
        /// The absolute path.
        public var path: String
        /// What was written (`write` only).
        public var value: String?
        /// The errno it was made to fail with, if it was.
        public var injected: Int32?

        /// `write /path "value" -> errno 5`.
        public var description: String {
            "\(operation.rawValue) \(path)" + (value.map { " \(quote($0))" } ?? "") + (injected.map { " -> errno \($0)" } ?? "")
        }
    }

    private struct State {
        var faults: [(fault: Fault, seen: Int, fired: Bool)]
        var calls: [Call] = []
    }

    private let base: any SysfsIO
    private let state: Mutex<State>

    /// Passes calls to `base`, failing those `faults` pick.
    public init(base: any SysfsIO = SystemSysfsIO(), faults: [Fault] = []) {
        self.base = base
        state = Mutex(State(faults: faults.map { ($0, 0, false) }))
    }

    /// Every call so far, in order.
    public var calls: [Call] { state.withLock { $0.calls } }
    /// The writes so far, in order.
    public var writes: [Call] { calls.filter { $0.operation == .write } }
    /// True when every fault has fired.
    public var allFired: Bool { state.withLock { $0.faults.allSatisfy(\.fired) } }

    /// Adds a fault (counting from the calls made after this point).
    public func add(_ fault: Fault) {
        state.withLock { $0.faults.append((fault, 0, false)) }
    }

    /// Records the call; returns the errno to fail it with, if a fault picks it.
    private func intercept(_ operation: SysfsIOError.Operation, _ path: String, _ value: String? = nil) -> Int32? {
        state.withLock { s in
            var injected: Int32?
            for i in s.faults.indices where !s.faults[i].fired && s.faults[i].fault.matches(operation, path) {
                s.faults[i].seen += 1
                if s.faults[i].seen == s.faults[i].fault.occurrence && injected == nil {
                    s.faults[i].fired = true
                    injected = s.faults[i].fault.errno
                }
            }
            s.calls.append(Call(operation: operation, path: path, value: value, injected: injected))
            return injected
        }
    }

    /// Records the write; fails it if a fault picks it, else passes it on.
    public func write(_ value: String, to path: String) throws(SysfsIOError) {
        if let e = intercept(.write, path, value) { throw SysfsIOError(operation: .write, path: path, value: value, errno: e) }
        try base.write(value, to: path)
    }

    /// Records the read; fails it if a fault picks it, else passes it on.
    public func read(_ path: String) throws(SysfsIOError) -> String {
        if let e = intercept(.read, path) { throw SysfsIOError(operation: .read, path: path, errno: e) }
        return try base.read(path)
    }

    /// Records the readlink; fails it if a fault picks it, else passes it on.
    public func linkName(_ path: String) throws(SysfsIOError) -> String? {
        if let e = intercept(.readLink, path) { throw SysfsIOError(operation: .readLink, path: path, errno: e) }
        return try base.linkName(path)
    }

    /// Records the check; fails it if a fault picks it, else passes it on.
    public func exists(_ path: String) throws(SysfsIOError) -> Bool {
        if let e = intercept(.exists, path) { throw SysfsIOError(operation: .exists, path: path, errno: e) }
        return try base.exists(path)
    }
}
