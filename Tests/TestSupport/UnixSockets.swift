import CLinux
import Foundation

/// Calls `body` with `path` as a Unix socket address (cut to what `sun_path` holds) and its size.
public func withUnixAddress<T>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &addr.sun_path) { buf in
        for (i, b) in path.utf8.prefix(buf.count - 1).enumerated() { buf[i] = b }
    }
    return withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
}

/// What a Unix socket carries.
public enum UnixSocketKind: Sendable {
    case stream, datagram
}

/// A new Unix socket of `kind` bound at `path`; the caller closes it.
public func unixSocket(_ kind: UnixSocketKind, boundAt path: String) throws -> Int32 {
    let type = kind == .stream ? Int32(SOCK_STREAM.rawValue) : Int32(SOCK_DGRAM.rawValue)
    let fd = socket(AF_UNIX, type | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw TestbedError(message: "socket: errno \(errno)") }
    guard withUnixAddress(path, { bind(fd, $0, $1) }) == 0 else {
        let code = errno
        close(fd)
        throw TestbedError(message: "bind \(path): errno \(code)")
    }
    return fd
}
