import CUdev
import Foundation
import HostDevices
#if canImport(Glibc)
import Glibc
#endif

// MARK: uevents sent at a kernel's cost (--sender direct)

/// Sends a plug's uevents the way `umockdev_testbed_uevent` does, with the same bytes to the
/// same sockets, but with all of its per-uevent work done before t0.
///
/// Why: the benchmark's sender stands in for the kernel. umockdev's sender spends about
/// 0.3 ms on each uevent (a libudev device read from the testbed, a glob of the listeners'
/// sockets, then socket + connect + sendmsg + close per listener, all through its preload),
/// so the 17 uevents of a plug keep one of the machine's 2 CPUs busy for about 5 ms. That is
/// the whole attach window, competing with QEMU and the daemon. A kernel queues the same 17
/// messages in microseconds.
///
/// What is kept: each message is the one umockdev 0.17 builds (its libudev header with the
/// subsystem and devtype hashes, then ACTION, DEVPATH, SUBSYSTEM, SEQNUM and the lines of the
/// device's sysfs `uevent` file), read with the same libudev calls. It goes to every `event<N>` listener of the testbed, in
/// umockdev's order (message by message, every listener for each). `selfCheck` compares the
/// two senders' datagrams at start. What moves before t0: the libudev reads, the glob and
/// the connects. At t0 it only makes one `send` per listener and message.
final class DirectSender {
    private let udev: OpaquePointer
    private let root: String
    /// Our own sequence numbers, far from umockdev's (nobody here reads them; libudev passes them on).
    private var seqnum: UInt64 = 1_000_000

    init(root: String) {
        udev = udev_new()
        self.root = root
    }

    deinit { udev_unref(udev) }

    /// A batch ready to go: the messages and the connected listeners.
    struct Batch {
        var messages: [[UInt8]]
        var sockets: [Int32]
    }

    /// Builds each message (`/sys/devices/...` paths) and connects to the current listeners.
    func prepare(_ syspaths: [String], action: String) throws -> Batch {
        let messages = try syspaths.map { try message(syspath: $0, action: action) }
        return Batch(messages: messages, sockets: connectListeners())
    }

    /// Sends the batch: each message to every listener, then closes the sockets.
    func send(_ batch: Batch) {
        for m in batch.messages {
            for fd in batch.sockets {
                _ = m.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            }
        }
        for fd in batch.sockets { close(fd) }
    }

    /// umockdev's message for one uevent (uevent_sender.c, `uevent_sender_send`, as 0.17.16 sends it).
    func message(syspath: String, action: String) throws -> [UInt8] {
        guard let dev = udev_device_new_from_syspath(udev, syspath) else {
            throw BenchError("direct sender: no such device \(syspath)")
        }
        defer { udev_device_unref(dev) }
        guard let subsystem = udev_device_get_subsystem(dev).map({ String(cString: $0) }),
              let devpath = udev_device_get_devpath(dev).map({ String(cString: $0) }) else {
            throw BenchError("direct sender: \(syspath) has no subsystem")
        }
        let devtype = udev_device_get_devtype(dev).map { String(cString: $0) }
        var props: [UInt8] = []
        func add(_ key: String, _ value: String) { props += Array((key + value).utf8) + [0] }
        add("ACTION=", action)
        add("DEVPATH=", devpath)
        add("SUBSYSTEM=", subsystem)
        add("SEQNUM=", String(seqnum))
        seqnum += 1
        // umockdev 0.17 then passes the lines of the device's `uevent` file on as they are.
        let uevent = (try? String(contentsOfFile: root + syspath + "/uevent", encoding: .utf8)) ?? ""
        for line in uevent.split(separator: "\n") where !line.isEmpty { props += Array(line.utf8) + [0] }
        // struct udev_monitor_netlink_header: "libudev\0", magic, header size, properties
        // offset and length, subsystem and devtype hashes, tag bloom (0); in network order.
        var header: [UInt8] = Array("libudev".utf8) + [0]
        func be32(_ v: UInt32) { header += [UInt8(v >> 24), UInt8((v >> 16) & 0xff), UInt8((v >> 8) & 0xff), UInt8(v & 0xff)] }
        func host32(_ v: UInt32) { header += withUnsafeBytes(of: v.littleEndian) { Array($0) } }
        let headerSize: UInt32 = 40
        be32(0xfeed_cafe)
        host32(headerSize)
        host32(headerSize)
        host32(UInt32(props.count))
        be32(UeventFilter.murmur2(subsystem))
        be32(devtype.map { UeventFilter.murmur2($0) } ?? 0)
        be32(0)
        be32(0)
        return header + props
    }

    /// The listeners' sockets (`event<N>` in the testbed root), connected; one that refuses
    /// (its owner closed its monitor) is skipped, as umockdev does.
    private func connectListeners() -> [Int32] {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [])
            .filter { $0.hasPrefix("event") && $0.dropFirst(5).first?.isNumber == true }
        var fds: [Int32] = []
        for name in names {
            let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            guard fd >= 0 else { continue }
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            let path = Array((root + "/" + name).utf8)
            withUnsafeMutableBytes(of: &addr.sun_path) { p in
                for (i, b) in path.prefix(p.count - 1).enumerated() { p[i] = b }
            }
            let ok = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            if ok == 0 { fds.append(fd) } else { close(fd) }
        }
        return fds
    }

    /// Checks that this sender's datagrams are umockdev's: a uevent monitor of the benchmark's
    /// own (a listener through umockdev's preload) receives one uevent of each `syspaths` from
    /// umockdev and one from this sender; they must be equal but for SEQNUM. Throws on a difference.
    func selfCheck(_ syspaths: [String], umockdevSend: (String) -> Void) throws {
        let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 15 /* NETLINK_KOBJECT_UEVENT */)
        guard fd >= 0 else { throw BenchError("direct sender check: no uevent socket: errno \(errno)") }
        defer { close(fd) }
        // struct sockaddr_nl: family (u16), pad (u16), pid (u32), groups (u32): group 2, udev's.
        var sa: [UInt32] = [UInt32(AF_NETLINK), 0, 2]
        let bound = sa.withUnsafeMutableBytes {
            bind(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), 12)
        }
        guard bound == 0 else { throw BenchError("direct sender check: bind failed: errno \(errno)") }
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        func receive() throws -> [UInt8] {
            var buf = [UInt8](repeating: 0, count: 8192)
            let n = recv(fd, &buf, buf.count, 0)
            guard n > 0 else { throw BenchError("direct sender check: nothing received (errno \(errno))") }
            return Array(buf[..<n])
        }
        /// Header without the properties length, and the properties without SEQNUM.
        func comparable(_ m: [UInt8]) -> ([UInt8], [[UInt8]]) {
            let head = Array(m.prefix(20)) + Array(m.dropFirst(24).prefix(16))
            let props = m.dropFirst(40).split(separator: 0).map(Array.init).filter { !$0.starts(with: Array("SEQNUM=".utf8)) }
            return (head, props)
        }
        for p in syspaths {
            umockdevSend(p)
            let theirs = try receive()
            send(try prepare([p], action: "change"))
            let ours = try receive()
            guard comparable(theirs) == comparable(ours) else {
                throw BenchError("direct sender check: \(p): umockdev sent \(theirs), the direct sender \(ours)")
            }
        }
    }
}
