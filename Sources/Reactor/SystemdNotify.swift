import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// systemd's readiness protocol without libsystemd: one datagram ("READY=1",
/// "RELOADING=1", "STOPPING=1", "STATUS=...") to the socket named by
/// `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
public enum SystemdNotify {
    /// Seconds a send may wait for room in the receiver's queue (a systemd too busy to read it).
    public static let sendTimeout = 1

    /// Sends `state`; false when there is no socket to send to (not under systemd) or it failed,
    /// or found no room within `sendTimeout` (before, it could wait for good, on the event loop).
    @discardableResult
    public static func send(_ state: String, socketPath: String? = nil) -> Bool {
        guard let path = socketPath ?? getenv("NOTIFY_SOCKET").map({ String(cString: $0) }), !path.isEmpty else { return false }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var limit = timeval(tv_sec: sendTimeout, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_un()
        var name = path
        let abstract = name.hasPrefix("@")
        if abstract { name = "\0" + name.dropFirst() }
        var length = 0
        withUnsafeMutableBytes(of: &addr.sun_path) { buf in
            let bytes = Array(name.utf8)
            length = min(bytes.count, buf.count - 1)
            for i in 0..<length { buf[i] = bytes[i] }
        }
        addr.sun_family = sa_family_t(AF_UNIX)
        let size = socklen_t(MemoryLayout<sa_family_t>.size + length + (abstract ? 0 : 1))
        let sent = state.withCString { text in
            withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, text, strlen(text), Int32(MSG_NOSIGNAL), $0, size)
                }
            }
        }
        return sent >= 0
    }
}
