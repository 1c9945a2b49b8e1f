import CUdev
#if canImport(Glibc)
import Glibc
#endif

/// One device event, as the kernel (through udevd) reports it.
public struct DeviceEvent: Sendable, Hashable {
    /// `add`, `remove`, `bind`, `unbind`, `change`, `move`.
    public var action: String
    public var subsystem: String
    /// `usb_device`, `usb_interface`, ... (may be empty).
    public var devtype: String
    /// The device's path below /sys (`/devices/...`).
    public var sysPath: String
    public var sysName: String
    /// `/dev/...` when the device has a node.
    public var devnode: String?
    /// The bound driver, from the event itself (bind events).
    public var driver: String?
    public var seqnum: UInt64
    /// A USB device's `add`: its bus, address, IDs and class from the event's properties.
    public var usb: KernelUSBFields?

    public init(action: String, subsystem: String, devtype: String = "", sysPath: String, sysName: String,
                devnode: String? = nil, driver: String? = nil, seqnum: UInt64 = 0, usb: KernelUSBFields? = nil) {
        self.action = action
        self.subsystem = subsystem
        self.devtype = devtype
        self.sysPath = sysPath
        self.sysName = sysName
        self.devnode = devnode
        self.driver = driver
        self.seqnum = seqnum
        self.usb = usb
    }
}

/// libudev's netlink monitor: vhotplug's only use of libudev. Source "udev"
/// (events after udevd has processed them) when udevd runs, else "kernel".
/// Not thread-safe: owned by the event loop's thread.
public final class UdevMonitor: @unchecked Sendable {
    private let udev: OpaquePointer
    private let monitor: OpaquePointer
    /// "udev" or "kernel".
    public let source: String
    /// The socket to wait on for readability.
    public let fd: Int32
    /// The subsystems asked for, as the bytes of `SUBSYSTEM=<name>` values.
    private var wanted: [[UInt8]]
    /// Messages dropped by `receive()`'s own check before libudev parses them.
    public private(set) var dropped = 0
    /// Whether `usb_interface` events and a USB device's `bind` are wanted: only while a
    /// device waits for its interfaces (the daemon sets it). The socket's filter follows:
    /// a change replaces it, and from then on the kernel drops (or keeps) interfaces'
    /// messages as they are queued, so messages queued before the change were judged by the
    /// old filter: a caller that starts waiting for interfaces looks at sysfs once after it.
    public var usbInterfaceEvents = true {
        didSet { if usbInterfaceEvents != oldValue { attachFilter() } }
    }
    /// The errno of the last failed attempt to attach the socket filter (0: attached).
    /// Without it the same messages are dropped after the peek instead.
    public private(set) var filterError: Int32 = 0
    /// The socket's receive buffer as asked for, in bytes (the kernel doubles it).
    public let receiveBuffer: Int
    /// How many times the kernel said that messages were lost (`ENOBUFS`: the receive
    /// buffer was full when a uevent came; the kernel drops it and says so once).
    public private(set) var overflows = 0
    /// Messages were lost since the last `takeOverflow`.
    private var lost = false

    /// 8 MiB: room for event storms (a dock with many devices, 1000 plug events).
    public static let defaultReceiveBuffer = 8 << 20

    /// True when udevd runs on this host: its control socket accepts a connection.
    public static func udevdRunning(runDir: String = "/run/udev") -> Bool {
        // The socket file outlives a stopped udevd: only a connection proves it listens.
        let path = runDir + "/control"
        let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return false }
        withUnsafeMutableBytes(of: &addr.sun_path) { buf in
            for (i, b) in bytes.enumerated() { buf[i] = b }
        }
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        } == 0
    }

    /// Opens the monitor for the given subsystems. `source` nil chooses by whether udevd runs.
    /// `inKernelFilter` false keeps libudev's own filter (tests of the userspace peek alone).
    public init(subsystems: [String] = ["usb", "pci", "input", "vfio"], source requested: String? = nil,
                inKernelFilter: Bool = true, receiveBuffer: Int = UdevMonitor.defaultReceiveBuffer) throws(DeviceReadError) {
        guard let u = udev_new() else {
            throw DeviceReadError(device: "udev", attribute: "udev_new", reason: "libudev could not start")
        }
        let chosen = requested ?? (Self.udevdRunning() ? "udev" : "kernel")
        guard let m = udev_monitor_new_from_netlink(u, chosen) else {
            udev_unref(u)
            throw DeviceReadError(device: "udev", attribute: "monitor", reason: "cannot open the \(chosen) netlink monitor")
        }
        for s in subsystems { udev_monitor_filter_add_match_subsystem_devtype(m, s, nil) }
        _ = udev_monitor_set_receive_buffer_size(m, Int32(clamping: receiveBuffer))
        guard udev_monitor_enable_receiving(m) >= 0 else {
            udev_monitor_unref(m)
            udev_unref(u)
            throw DeviceReadError(device: "udev", attribute: "monitor", reason: "cannot receive \(chosen) events: \(String(cString: strerror(errno)))")
        }
        udev = u
        monitor = m
        source = chosen
        self.receiveBuffer = receiveBuffer
        wanted = subsystems.map { Array($0.utf8) }
        fd = udev_monitor_get_fd(m)
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        filtering = inKernelFilter
        attachFilter()
    }

    /// Whether vhotplug's socket filter is used.
    private var filtering = true

    /// Replaces the socket's filter (libudev's, on the `udev` source) with vhotplug's
    /// (UeventFilter): the same subsystems, in both message formats, and no `usb_interface`
    /// messages while none is wanted.
    private func attachFilter() {
        guard filtering else { return }
        let names = wanted.map { String(decoding: $0, as: UTF8.self) }
        filterError = UeventFilter.attach(UeventFilter.program(subsystems: names, usbInterfaces: usbInterfaceEvents), to: fd)
    }

    /// Replaces the subsystem filter (for instance `input` joins when evdev passthrough is turned on).
    public func setSubsystems(_ subsystems: [String]) {
        wanted = subsystems.map { Array($0.utf8) }
        udev_monitor_filter_remove(monitor)
        for s in subsystems { udev_monitor_filter_add_match_subsystem_devtype(monitor, s, nil) }
        udev_monitor_filter_update(monitor)
        attachFilter()
    }

    deinit {
        udev_monitor_unref(monitor)
        udev_unref(udev)
    }

    /// The next event already received, or nil when none is waiting.
    public func receive() -> DeviceEvent? {
        guard dropUnwanted() else { return nil }
        guard let dev = udev_monitor_receive_device(monitor) else {
            if errno == ENOBUFS { noteOverflow() }
            return nil
        }
        defer { udev_device_unref(dev) }
        func text(_ p: UnsafePointer<CChar>?) -> String? { p.map { String(cString: $0) } }
        let action = text(udev_device_get_action(dev)) ?? ""
        let devtype = text(udev_device_get_devtype(dev)) ?? ""
        var usb: KernelUSBFields?
        if (action == "add" || action == "remove") && devtype == "usb_device" {
            func property(_ key: String) -> UnsafePointer<CChar>? { udev_device_get_property_value(dev, key) }
            usb = KernelUSBFields(product: property("PRODUCT"), type: property("TYPE"),
                                  busnum: property("BUSNUM"), devnum: property("DEVNUM"))
        }
        return DeviceEvent(
            action: action,
            subsystem: text(udev_device_get_subsystem(dev)) ?? "",
            devtype: devtype,
            sysPath: text(udev_device_get_devpath(dev)) ?? "",
            sysName: text(udev_device_get_sysname(dev)) ?? "",
            // From the event's own properties: the getters would read sysfs for what it lacks.
            devnode: text(udev_device_get_property_value(dev, "DEVNAME")).map { $0.hasPrefix("/") ? $0 : "/dev/" + $0 },
            driver: text(udev_device_get_property_value(dev, "DRIVER")),
            seqnum: UInt64(udev_device_get_seqnum(dev)), usb: usb)
    }

    /// Discards waiting messages that would be thrown away after libudev parsed them (tens of
    /// thousands of instructions each), up to the first one that is wanted or cannot be told
    /// from a peek at its fields (libudev then decides, with its own checks). The kernel source
    /// has no in-kernel subsystem filter (libudev gives the udev source one only), so every
    /// uevent of the host arrives: a USB mouse's plug is 17, of which 4 are `usb`, and of those
    /// only the device's own `add` matters unless `usbInterfaceEvents` is on.
    /// False when nothing is left to read.
    private func dropUnwanted() -> Bool {
        // The fields looked at come first: a stack buffer's worth is enough (a field cut off is not trusted).
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: Sysfs.stackBuffer) { buf in
            while true {
                let n = recv(fd, buf.baseAddress, buf.count, Int32(MSG_PEEK) | Int32(MSG_DONTWAIT))
                // Nothing waiting (libudev's own read would say the same); an error: libudev reads and reports.
                if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return false }
                // The kernel reports a full buffer once, on the next read, before the messages
                // still queued (which came before the lost ones).
                if n < 0 && errno == ENOBUFS {
                    noteOverflow()
                    continue
                }
                guard n > 0 else { return true }
                let fields = Self.fields(in: UnsafeBufferPointer(rebasing: buf[..<n]))
                guard wants(fields) == false else { return true }
                // A loss between the peek and here is reported by this read instead (the
                // message then stays queued: peeked again).
                if recv(fd, nil, 0, Int32(MSG_DONTWAIT)) < 0 {
                    if errno == ENOBUFS { noteOverflow() }
                    continue
                }
                dropped += 1
            }
        }
    }

    private func noteOverflow() {
        overflows += 1
        lost = true
    }

    /// True once after messages were lost, when the messages queued before the loss
    /// have all been received (nothing is waiting): what sysfs says from then on is newer
    /// than any event read so far, and a rescan of it finds what the lost ones said.
    public func takeOverflow() -> Bool {
        guard lost else { return false }
        var byte: UInt8 = 0
        while true {
            let n = recv(fd, &byte, 1, Int32(MSG_PEEK) | Int32(MSG_DONTWAIT))
            if n < 0 && errno == ENOBUFS {
                overflows += 1 // lost again meanwhile: look at what is queued behind the report
                continue
            }
            // A message waits (or another error, which the next receive reports): after it.
            guard n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) else { return false }
            lost = false
            return true
        }
    }

    /// False when the peeked message is certainly not wanted; nil when it cannot be told.
    func wants(_ f: PeekedFields) -> Bool? {
        Self.wants(f, subsystems: wanted, usbInterfaceEvents: usbInterfaceEvents)
    }

    /// The peek's decision (UeventFilter never drops a message this would keep: tested).
    static func wants(_ f: PeekedFields, subsystems wanted: [[UInt8]], usbInterfaceEvents: Bool) -> Bool? {
        guard let subsystem = f.subsystem else { return nil }
        guard wanted.contains(where: { $0.elementsEqual(subsystem) }) else { return false }
        if !usbInterfaceEvents, subsystem.elementsEqual("usb".utf8) {
            // Every usb uevent has a DEVTYPE: none seen means the peek was cut before it (and
            // UeventFilter may have judged the whole message by its devtype): libudev decides.
            guard let devtype = f.devtype else { return nil }
            if devtype.elementsEqual("usb_interface".utf8) { return false }
            if devtype.elementsEqual("usb_device".utf8), let action = f.action, action.elementsEqual("bind".utf8) { return false }
        }
        return true
    }

    /// The fields a peek looks at, as byte slices of the peeked message.
    struct PeekedFields {
        var action: Slice<UnsafeBufferPointer<UInt8>>?
        var subsystem: Slice<UnsafeBufferPointer<UInt8>>?
        var devtype: Slice<UnsafeBufferPointer<UInt8>>?
    }

    private static let actionKey = Array("ACTION=".utf8)
    private static let subsystemKey = Array("SUBSYSTEM=".utf8)
    private static let devtypeKey = Array("DEVTYPE=".utf8)

    /// ACTION, SUBSYSTEM and DEVTYPE of a uevent message as it arrives on the socket: the
    /// kernel's (`action@devpath` then NUL-separated `KEY=value`) or libudev's (a `libudev`
    /// header, then the same properties at its offset). A field cut off by the end of the
    /// peeked bytes is not taken.
    static func fields(in message: UnsafeBufferPointer<UInt8>) -> PeekedFields {
        var out = PeekedFields()
        guard let base = message.baseAddress else { return out }
        var i = 0
        if message.count >= 24, message.starts(with: "libudev\0".utf8) {
            // After the prefix, the magic and the header size: the properties' offset (host
            // order, like libudev writes it); they run to the end of the message.
            i = Int(UnsafeRawPointer(base).loadUnaligned(fromByteOffset: 16, as: UInt32.self))
        }
        func value(_ key: [UInt8], _ from: Int, _ to: Int) -> Slice<UnsafeBufferPointer<UInt8>>? {
            guard to - from > key.count, message[from ..< from + key.count].elementsEqual(key) else { return nil }
            return message[(from + key.count) ..< to]
        }
        while i < message.count {
            guard let nul = memchr(base + i, 0, message.count - i) else { break }
            let j = UnsafeRawPointer(nul) - UnsafeRawPointer(base)
            switch message[i] {
            case UInt8(ascii: "A"): out.action = out.action ?? value(actionKey, i, j)
            case UInt8(ascii: "S"): out.subsystem = out.subsystem ?? value(subsystemKey, i, j)
            case UInt8(ascii: "D"): out.devtype = out.devtype ?? value(devtypeKey, i, j)
            default: break
            }
            i = j + 1
        }
        return out
    }
}
