import CLinux
import HotplugConfig
#if canImport(Glibc)
import Glibc
#endif

/// A socket set-up failure: what, on which address, and errno's text.
public struct SocketError: Error, Sendable, CustomStringConvertible {
    public var message: String
    init(_ message: String) { self.message = message }
    init(_ step: String, _ what: String, errno code: Int32) {
        message = "\(step) \(what): \(String(cString: strerror(code))) (errno \(code))"
    }
    public var description: String { message }

    /// A `socket()` of `family` that failed; a family the process may not use (a systemd
    /// unit's `RestrictAddressFamilies=`, as vhotplug's own unit has) says how to allow it.
    static func socketCall(_ family: String, _ what: String, errno code: Int32) -> SocketError {
        var e = SocketError("socket", what, errno: code)
        if code == EAFNOSUPPORT || code == EPERM || code == EACCES {
            e.message += "; under systemd, the unit's RestrictAddressFamilies= must list \(family)"
        }
        return e
    }
}

/// The peer of an accepted connection, for checks and logs.
public enum APIPeer: Sendable, Hashable, CustomStringConvertible {
    case unix(pid: Int32, uid: UInt32, gid: UInt32)
    case tcp(String)
    case vsock(cid: UInt32, port: UInt32)

    /// `unix`, `tcp` or `vsock`.
    public var transport: String {
        switch self {
        case .unix: "unix"
        case .tcp: "tcp"
        case .vsock: "vsock"
        }
    }

    /// Who is at the other end, for limits shared by all of its connections: `uid 1000`,
    /// `CID 3`, `tcp 127.0.0.1` (a pid, or a port, changes from one connection to the next).
    public var party: String {
        switch self {
        case .unix(_, let uid, _): "uid \(uid)"
        case .tcp(let address): "tcp " + (address.lastIndex(of: ":").map { String(address[..<$0]) } ?? address)
        case .vsock(let cid, _): "CID \(cid)"
        }
    }

    public var description: String {
        switch self {
        case .unix(let pid, let uid, let gid): "pid \(pid) uid \(uid) gid \(gid)"
        case .tcp(let address): "tcp \(address)"
        case .vsock(let cid, let port): "vsock cid \(cid) port \(port)"
        }
    }
}

/// `struct sockaddr_vm` (linux/vm_sockets.h): 16 bytes.
struct VSockAddress {
    var family = UInt16(40) // AF_VSOCK
    var reserved: UInt16 = 0
    var port: UInt32
    var cid: UInt32
    var zero: UInt32 = 0
}

let afVSock: Int32 = 40
let vmaddrCidAny: UInt32 = 0xFFFF_FFFF

enum Sockets {
    /// A listening Unix socket at `path`, owned by `uid`/`gid` (nil: unchanged) with `mode`.
    /// A stale socket file is removed first; a live one (something answers) is an error.
    static func unixListener(path: String, mode: UInt32, uid: UInt32?, gid: UInt32?) throws -> Int32 {
        var addr = sockaddr_un()
        let len = vh_sockaddr_un(&addr, path)
        guard len > 0 else { throw SocketError("the API socket path is too long (at most 107 bytes): \(path)") }
        let dir = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        if !dir.isEmpty, access(dir, F_OK) != 0, mkdir(dir, 0o755) != 0, errno != EEXIST {
            throw SocketError("cannot create", "the API socket's folder \(dir)", errno: errno)
        }
        var st = stat()
        if lstat(path, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFSOCK else {
                throw SocketError("\(path) exists and is not a socket; refusing to replace it")
            }
            if unixAnswers(&addr, len) {
                throw SocketError("another process is listening on \(path) (is vhotplug already running?)")
            }
            unlink(path)
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SocketError("socket", "AF_UNIX", errno: errno) }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(len)) }
        }
        guard bound == 0 else {
            let code = errno
            close(fd)
            throw SocketError("bind", path, errno: code)
        }
        // Owner and mode before listen(): no connection is possible before they are set. Never
        // through a link: one swapped in for the socket after bind() (in a folder others can
        // write) would give its target to the socket's user and group.
        if uid != nil || gid != nil, lchown(path, uid ?? UInt32.max, gid ?? UInt32.max) != 0 {
            let code = errno
            close(fd)
            throw SocketError("chown", path, errno: code)
        }
        guard fchmodat(AT_FDCWD, path, mode_t(mode), AT_SYMLINK_NOFOLLOW) == 0 else {
            let code = errno
            close(fd)
            throw SocketError("chmod", path, errno: code)
        }
        guard listen(fd, 16) == 0 else {
            let code = errno
            close(fd)
            throw SocketError("listen", path, errno: code)
        }
        return fd
    }

    /// True when a process accepts connections on the socket (a blocking connect to a
    /// Unix socket returns at once: accepted, refused or the backlog full).
    private static func unixAnswers(_ addr: inout sockaddr_un, _ len: Int32) -> Bool {
        let probe = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard probe >= 0 else { return false }
        defer { close(probe) }
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(probe, $0, socklen_t(len)) }
        }
        return r == 0 || errno == EAGAIN
    }

    /// A listening TCP socket on an IPv4 or IPv6 address literal (`localhost` is 127.0.0.1).
    static func tcpListener(host: String, port: Int) throws -> Int32 {
        let literal = host == "localhost" ? "127.0.0.1" : host
        var v4 = sockaddr_in()
        var v6 = sockaddr_in6()
        let family: Int32
        if inet_pton(AF_INET, literal, &v4.sin_addr) == 1 {
            family = AF_INET
            v4.sin_family = sa_family_t(AF_INET)
            v4.sin_port = in_port_t(UInt16(port).bigEndian)
        } else if inet_pton(AF_INET6, literal, &v6.sin6_addr) == 1 {
            family = AF_INET6
            v6.sin6_family = sa_family_t(AF_INET6)
            v6.sin6_port = in_port_t(UInt16(port).bigEndian)
        } else {
            throw SocketError("the API's TCP host must be an IP address, found \(host)")
        }
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SocketError.socketCall(family == AF_INET ? "AF_INET" : "AF_INET6", "TCP", errno: errno) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound: Int32 = family == AF_INET
            ? withUnsafePointer(to: &v4) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            : withUnsafePointer(to: &v6) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
        guard bound == 0, listen(fd, 16) == 0 else {
            let code = errno
            close(fd)
            throw SocketError("bind/listen", "\(host):\(port)", errno: code)
        }
        return fd
    }

    /// A listening vsock socket on `port` (any CID of this host).
    static func vsockListener(port: Int) throws -> Int32 {
        let fd = socket(afVSock, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SocketError.socketCall("AF_VSOCK", "AF_VSOCK (is the vsock module loaded?)", errno: errno) }
        var addr = VSockAddress(port: UInt32(port), cid: vmaddrCidAny)
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<VSockAddress>.size)) }
        }
        guard bound == 0, listen(fd, 16) == 0 else {
            let code = errno
            close(fd)
            throw SocketError("bind/listen", "vsock port \(port)", errno: code)
        }
        return fd
    }

    /// Accepts one connection (non-blocking); nil when none is waiting. `transport` says how to read the peer.
    static func accept(_ listener: Int32, transport: APITransport) throws(SocketError) -> (fd: Int32, peer: APIPeer)? {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let fd = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                SwiftGlibc.accept(listener, $0, &len)
            }
        }
        if fd >= 0 {
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        }
        if fd < 0 {
            let code = errno
            if code == EAGAIN || code == EINTR || code == ECONNABORTED { return nil }
            throw SocketError("accept", "on the \(transport.rawValue) API socket", errno: code)
        }
        switch transport {
        case .unix:
            // struct ucred: pid, uid, gid.
            var cred: (Int32, UInt32, UInt32) = (0, UInt32.max, UInt32.max)
            var size = socklen_t(12)
            if getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &size) != 0 { cred = (0, UInt32.max, UInt32.max) }
            return (fd, .unix(pid: cred.0, uid: cred.1, gid: cred.2))
        case .vsock:
            let addr = withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: VSockAddress.self, capacity: 1) { $0.pointee } }
            return (fd, .vsock(cid: addr.cid, port: addr.port))
        case .tcp:
            var text = [CChar](repeating: 0, count: 64)
            var port: UInt16 = 0
            if storage.ss_family == sa_family_t(AF_INET) {
                withUnsafePointer(to: &storage) {
                    $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { p in
                        var a = p.pointee.sin_addr
                        inet_ntop(AF_INET, &a, &text, 64)
                        port = UInt16(bigEndian: p.pointee.sin_port)
                    }
                }
            } else {
                withUnsafePointer(to: &storage) {
                    $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { p in
                        var a = p.pointee.sin6_addr
                        inet_ntop(AF_INET6, &a, &text, 64)
                        port = UInt16(bigEndian: p.pointee.sin6_port)
                    }
                }
            }
            let address = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            probeWhenIdle(fd)
            return (fd, .tcp(address + ":\(port)"))
        }
    }

    /// Seconds of silence before the kernel probes a TCP client, between its probes, and the probes
    /// unanswered before it drops the connection; milliseconds sent data may stay unacknowledged.
    static let tcpKeepIdle: Int32 = 60, tcpKeepInterval: Int32 = 10, tcpKeepCount: Int32 = 3, tcpUserTimeout: Int32 = 90_000

    /// A TCP client whose host vanished (powered off, its network changed: no FIN, no RST) is found
    /// by the kernel's keepalive probes within about 90 s and dropped, with no timer in the daemon.
    /// Before, its connection stayed for the daemon's life: it kept one of its party's places, and,
    /// had it asked for notifications, devices waited for its choice of VM.
    static func probeWhenIdle(_ fd: Int32) {
        func set(_ level: Int32, _ option: Int32, _ value: Int32) {
            var v = value
            _ = setsockopt(fd, level, option, &v, socklen_t(MemoryLayout<Int32>.size))
        }
        set(SOL_SOCKET, SO_KEEPALIVE, 1)
        set(Int32(IPPROTO_TCP), TCP_KEEPIDLE, tcpKeepIdle)
        set(Int32(IPPROTO_TCP), TCP_KEEPINTVL, tcpKeepInterval)
        set(Int32(IPPROTO_TCP), TCP_KEEPCNT, tcpKeepCount)
        set(Int32(IPPROTO_TCP), TCP_USER_TIMEOUT, tcpUserTimeout)
    }

    /// The supplementary groups the peer of a connected Unix socket had when it connected
    /// (SO_PEERGROUPS, Linux 4.13); nil when the kernel cannot say. Read at connect time, as
    /// SO_PEERCRED's uid and gid are: /proc/PID/status says what the process with that pid has
    /// now, which may be another process by then.
    static func peerGroups(_ fd: Int32) -> [UInt32]? {
        let soPeerGroups: Int32 = 59
        var groups = [UInt32](repeating: 0, count: 64)
        var size = socklen_t(groups.count * MemoryLayout<UInt32>.size)
        var rc = getsockopt(fd, SOL_SOCKET, soPeerGroups, &groups, &size)
        if rc != 0 && errno == ERANGE {
            groups = [UInt32](repeating: 0, count: Int(size) / MemoryLayout<UInt32>.size + 1)
            size = socklen_t(groups.count * MemoryLayout<UInt32>.size)
            rc = getsockopt(fd, SOL_SOCKET, soPeerGroups, &groups, &size)
        }
        guard rc == 0 else { return nil }
        return Array(groups.prefix(Int(size) / MemoryLayout<UInt32>.size))
    }

    /// The supplementary groups of a process (`Groups:` of /proc/PID/status).
    static func supplementaryGroups(pid: Int32) -> [UInt32] {
        let fd = open("/proc/\(pid)/status", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 8192)
        let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return [] }
        let text = String(decoding: bytes[0..<n], as: UTF8.self)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("Groups:") }) else { return [] }
        return line.dropFirst("Groups:".count).split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap { UInt32($0) }
    }

    /// The uid of a user name (or a number), nil when unknown.
    static func userID(_ name: String) -> UInt32? {
        if let n = UInt32(name) { return n }
        guard let pw = getpwnam(name) else { return nil }
        return pw.pointee.pw_uid
    }

    /// The gid of a group name (or a number), nil when unknown.
    static func groupID(_ name: String) -> UInt32? {
        if let n = UInt32(name) { return n }
        guard let gr = getgrnam(name) else { return nil }
        return gr.pointee.gr_gid
    }
}
