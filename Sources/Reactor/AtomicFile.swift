#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A call of `AtomicFile` (or of a store built on it) that failed: which call (`mkdir`, `open`,
/// `write`, `fsync`, `rename`, `unlink`; `name`: a key that cannot name a file), on which path, the errno.
public struct FileWriteError: Error, Sendable, Hashable, CustomStringConvertible {
    public var call: String
    public var path: String
    public var errno: Int32

    public init(call: String, path: String, errno: Int32) {
        self.call = call
        self.path = path
        self.errno = errno
    }

    public var description: String {
        if call == "name" { return "\(path): not a name a record file can have" }
        return "\(call) \(path): \(String(cString: strerror(errno))) (errno \(errno))"
    }
}

/// Files that a crash leaves whole: the old content or the new one, never half of either.
/// The daemon's records (VFIO binds, USB authorization defaults, crosvm ports) and its state.
/// The folder of `path`: `/` for `/name`, `.` for a name alone (a path relative to the working folder).
public func parentFolder(_ path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "." }
    guard slash != path.startIndex else { return "/" }
    return String(path[..<slash])
}

public enum AtomicFile {
    /// Writes `bytes` to `path`: a temporary file in the same folder (`.NAME.tmp`, hidden),
    /// `fsync`, `rename` over `path`, `fsync` of the folder (best effort: usually a tmpfs).
    /// `folderMode`: the folder, and each missing one above it, is made first with that mode.
    public static func write(_ bytes: [UInt8], to path: String, mode: mode_t = 0o644, folderMode: mode_t? = nil) throws(FileWriteError) {
        let slash = path.lastIndex(of: "/")
        let folder = parentFolder(path)
        if let folderMode { try makeFolders(folder, mode: folderMode) }
        let name = slash.map { String(path[path.index(after: $0)...]) } ?? path
        let temporary = (folder == "/" ? "" : folder) + "/." + name + ".tmp"
        // Made afresh, never opened through a link: a temporary file left by a crash, or a link
        // planted in a folder others can write, is removed first (the link, not its target),
        // and O_EXCL | O_NOFOLLOW refuse one put back meanwhile. (Before, a link there made
        // root truncate and write whatever file it named.)
        unlink(temporary)
        var fd: Int32
        repeat { fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode) } while fd < 0 && errno == EINTR
        guard fd >= 0 else { throw FileWriteError(call: "open", path: temporary, errno: errno) }
        func fail(_ call: String) -> FileWriteError {
            let e = errno
            close(fd)
            unlink(temporary)
            return FileWriteError(call: call, path: temporary, errno: e)
        }
        var written = 0
        while written < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + written, $0.count - written) }
            if n < 0 {
                if errno == EINTR { continue }
                throw fail("write")
            }
            written += n
        }
        if fsync(fd) != 0 { throw fail("fsync") }
        close(fd)
        if rename(temporary, path) != 0 {
            let e = errno
            unlink(temporary)
            throw FileWriteError(call: "rename", path: path, errno: e)
        }
        let dfd = open(folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 {
            _ = fsync(dfd)
            close(dfd)
        }
    }

    /// The text of a small file (its first `limit` bytes), or nil when it cannot be read.
    public static func read(_ path: String, limit: Int = 1 << 20) -> String? {
        var fd: Int32
        repeat { fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK) } while fd < 0 && errno == EINTR
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count < limit {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { if n < 0 { return nil }; break }
            bytes += chunk[..<n]
        }
        return String(decoding: bytes.prefix(limit), as: UTF8.self)
    }

    /// Makes `path` and each missing folder above it (`mkdir -p`), with `mode`.
    public static func makeFolders(_ path: String, mode: mode_t = 0o755) throws(FileWriteError) {
        var missing: [String] = []
        var d = path
        while access(d, F_OK) != 0, d != "/", d != ".", !d.isEmpty {
            missing.append(d)
            guard let slash = d.lastIndex(of: "/") else { break }
            d = slash == d.startIndex ? "/" : String(d[..<slash])
        }
        for m in missing.reversed() where mkdir(m, mode) != 0 && errno != EEXIST {
            throw FileWriteError(call: "mkdir", path: m, errno: errno)
        }
    }
}
