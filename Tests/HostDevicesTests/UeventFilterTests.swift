#if canImport(Glibc)
import Glibc
#endif
import CUdev
@testable import HostDevices
import Testing

/// The socket filter, run by the kernel: each message is sent over a datagram socket
/// pair whose receiving end has the program attached (the kernel applies a socket's
/// filter to Unix datagrams as to netlink ones); a message that arrives was accepted.
@Suite("The uevent socket filter")
struct UeventFilterTests {
    static let subsystems = ["usb", "pci", "input", "vfio"]

    /// A socket pair with the program on the receiving end.
    final class Pair {
        let send: Int32, receive: Int32
        init(_ program: [sock_filter]) throws {
            var fds: [Int32] = [0, 0]
            guard socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0, &fds) == 0 else { throw Failure("socketpair: \(errno)") }
            send = fds[0]
            receive = fds[1]
            let e = UeventFilter.attach(program, to: receive)
            guard e == 0 else { throw Failure("SO_ATTACH_FILTER: \(String(cString: strerror(e)))") }
        }
        deinit { close(send); close(receive) }

        func passes(_ message: [UInt8]) -> Bool {
            _ = message.withUnsafeBytes { Glibc.send(send, $0.baseAddress, $0.count, 0) }
            var buf = [UInt8](repeating: 0, count: 8192)
            let n = recv(receive, &buf, buf.count, Int32(MSG_DONTWAIT))
            if n > 0 { #expect(Array(buf[..<n]) == message, "an accepted message arrives whole") }
            return n > 0
        }
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
        init(_ d: String) { description = d }
    }

    static func fields(_ f: [String]) -> [UInt8] { f.flatMap { Array($0.utf8) + [0] } }

    /// A kernel uevent as `kobject_uevent_env` writes it.
    static func kernel(_ action: String, _ devpath: String, _ subsystem: String, devtype: String? = nil) -> [UInt8] {
        fields(["\(action)@\(devpath)", "ACTION=\(action)", "DEVPATH=\(devpath)", "SUBSYSTEM=\(subsystem)"]
               + (devtype.map { ["MAJOR=189", "MINOR=3", "DEVNAME=bus/usb/001/004", "DEVTYPE=\($0)"] } ?? [])
               + ["SEQNUM=4711"])
    }

    /// udevd's message: libudev's header (hashes in network order), then the properties.
    static func udev(_ action: String, _ devpath: String, _ subsystem: String, devtype: String? = nil,
                     magic: UInt32 = 0xfeed_cafe) -> [UInt8] {
        let props = fields(["ACTION=\(action)", "DEVPATH=\(devpath)", "SUBSYSTEM=\(subsystem)"]
                           + (devtype.map { ["DEVTYPE=\($0)"] } ?? []) + ["SEQNUM=4711"])
        func be(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.bigEndian) { Array($0) } }
        func host(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v) { Array($0) } }
        return Array("libudev\0".utf8) + be(magic) + host(40) + host(40) + host(UInt32(props.count))
            + be(UeventFilter.murmur2(subsystem)) + be(devtype.map { UeventFilter.murmur2($0) } ?? 0) + be(0) + be(0) + props
    }

    static let mouse = "/devices/pci0000:00/0000:00:14.0/usb1/1-2"

    @Test("the kernel's own format, other formats and messages shorter than libudev's header pass to the peek unread")
    func othersPass() throws {
        let pair = try Pair(UeventFilter.program(subsystems: Self.subsystems, usbInterfaces: false))
        for action in ["add", "remove", "bind", "change"] {
            for sub in ["usb", "hidraw", "block", "net", ""] {
                #expect(pair.passes(Self.kernel(action, Self.mouse + "/x", sub, devtype: "usb_interface")))
            }
        }
        let udev = Self.udev("add", "/x", "hidraw")
        for cut in [1, 4, 8, 12, 20, 28, 39] { #expect(pair.passes(Array(udev.prefix(cut))), "\(cut) bytes") }
        #expect(pair.passes(Array("libudeX\0".utf8) + Array(udev.dropFirst(8))))
        #expect(pair.passes([0]))
    }

    @Test("the program is small (a socket's option memory is 20 KiB on Linux 6.1) and replaces itself on a socket")
    func smallAndReplaceable() throws {
        for interfaces in [false, true] {
            #expect(UeventFilter.program(subsystems: Self.subsystems, usbInterfaces: interfaces).count < 40)
        }
        let pair = try Pair(UeventFilter.program(subsystems: Self.subsystems, usbInterfaces: true))
        for round in 0..<50 {
            let interfaces = round % 2 == 1
            #expect(UeventFilter.attach(UeventFilter.program(subsystems: Self.subsystems, usbInterfaces: interfaces), to: pair.receive) == 0)
            #expect(pair.passes(Self.udev("add", Self.mouse + "/1-2:1.0", "usb", devtype: "usb_interface")) == interfaces)
        }
    }

    @Test("libudev format: by the header's hashes; usb_interface dropped only while no interface is wanted; a wrong magic passes")
    func udevFormat() throws {
        for interfaces in [false, true] {
            let pair = try Pair(UeventFilter.program(subsystems: Self.subsystems, usbInterfaces: interfaces))
            #expect(pair.passes(Self.udev("add", Self.mouse, "usb", devtype: "usb_device")))
            #expect(pair.passes(Self.udev("add", Self.mouse + "/1-2:1.0", "usb", devtype: "usb_interface")) == interfaces)
            #expect(pair.passes(Self.udev("bind", Self.mouse, "usb", devtype: "usb_device")))
            #expect(pair.passes(Self.udev("add", "/devices/pci0000:00/0000:00:02.0", "pci")))
            #expect(pair.passes(Self.udev("add", "/devices/virtual/input/input9/event9", "input")))
            #expect(pair.passes(Self.udev("add", "/devices/virtual/vfio/5", "vfio")))
            for other in ["hidraw", "hid", "block", "usbmisc", "usb_endpoint", ""] {
                #expect(!pair.passes(Self.udev("add", Self.mouse + "/x", other, devtype: "usb_interface")), "\(other) dropped")
            }
            #expect(pair.passes(Self.udev("add", Self.mouse + "/x", "hidraw", magic: 0xdead_beef)))
            #expect(pair.passes(Array(Self.udev("add", "/x", "hidraw").prefix(20))), "cut inside the header: accepted")
        }
        // Without usb, usb messages are dropped too.
        let pci = try Pair(UeventFilter.program(subsystems: ["pci"], usbInterfaces: true))
        #expect(!pci.passes(Self.udev("add", Self.mouse, "usb", devtype: "usb_device")))
        #expect(pci.passes(Self.udev("add", "/devices/pci0000:00/0000:00:02.0", "pci")))
    }

    @Test("the subsystem hash is libudev's: its own filter for usb tests the same constant")
    func hashIsLibudevs() throws {
        let u = try #require(udev_new())
        defer { udev_unref(u) }
        let m = try #require(udev_monitor_new_from_netlink(u, "udev"))
        defer { udev_monitor_unref(m) }
        udev_monitor_filter_add_match_subsystem_devtype(m, "usb", "usb_device")
        #expect(udev_monitor_filter_update(m) >= 0)
        var insns = [sock_filter](repeating: sock_filter(), count: 512)
        var count = socklen_t(insns.count)  // SO_GET_FILTER counts instructions, not bytes
        #expect(getsockopt(udev_monitor_get_fd(m), SOL_SOCKET, SO_GET_FILTER, &insns, &count) == 0)
        let constants = Set(insns.prefix(Int(count)).map(\.k))
        #expect(constants.contains(UeventFilter.murmur2("usb")))
        #expect(constants.contains(UeventFilter.murmur2("usb_device")))
    }

    @Test("whatever the kernel drops, the peek would drop too (2000 random messages in both formats)")
    func neverDropsWhatThePeekKeeps() throws {
        var rng = SystemRandomNumberGenerator()
        let names = ["usb", "pci", "input", "vfio", "hidraw", "hid", "usbmisc", "usb_endpoint", "us", "", "inpu", "block", "net"]
        let devtypes: [String?] = [nil, "usb_device", "usb_interface", "partition", "usb"]
        let actions = ["add", "remove", "bind", "unbind", "change", "move"]
        var dropped = 0
        for round in 0..<2000 {
            let wanted = Array(Self.subsystems.shuffled(using: &rng).prefix(Int.random(in: 1...4, using: &rng)))
            let interfaces = Bool.random(using: &rng)
            let pair = try Pair(UeventFilter.program(subsystems: wanted, usbInterfaces: interfaces))
            let devpath = "/devices/" + String(repeating: "p", count: Int.random(in: 0...120, using: &rng))
            let sub = names.randomElement(using: &rng)!, type = devtypes.randomElement(using: &rng)!
            let action = actions.randomElement(using: &rng)!
            var message = Bool.random(using: &rng) ? Self.kernel(action, devpath, sub, devtype: type)
                                                   : Self.udev(action, devpath, sub, devtype: type)
            if round % 7 == 0 { message = Array(message.prefix(Int.random(in: 0...message.count, using: &rng))) }
            if message.isEmpty { continue }
            guard !pair.passes(message) else { continue }
            dropped += 1
            let peek = message.withUnsafeBufferPointer { b in
                UdevMonitor.wants(UdevMonitor.fields(in: b), subsystems: wanted.map { Array($0.utf8) }, usbInterfaceEvents: interfaces)
            }
            // Kept by the peek would be a loss; nil (it cannot tell, e.g. cut short) goes to libudev,
            // which drops by the same header hash.
            #expect(peek != true, "dropped in the kernel but wanted: \(String(decoding: message.map { $0 == 0 ? 10 : $0 }, as: UTF8.self))")
        }
        #expect(dropped > 500, "the filter drops something (\(dropped) of 2000)")
    }
}
