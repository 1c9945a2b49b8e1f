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

    public init(action: String, subsystem: String, devtype: String = "", sysPath: String, sysName: String,
                devnode: String? = nil, driver: String? = nil, seqnum: UInt64 = 0) {
        self.action = action
        self.subsystem = subsystem
        self.devtype = devtype
        self.sysPath = sysPath
        self.sysName = sysName
        self.devnode = devnode
        self.driver = driver
        self.seqnum = seqnum
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
    public init(subsystems: [String] = ["usb", "pci", "input", "vfio"], source requested: String? = nil) throws(DeviceReadError) {
        guard let u = udev_new() else {
            throw DeviceReadError(device: "udev", attribute: "udev_new", reason: "libudev could not start")
        }
        let chosen = requested ?? (Self.udevdRunning() ? "udev" : "kernel")
        guard let m = udev_monitor_new_from_netlink(u, chosen) else {
            udev_unref(u)
            throw DeviceReadError(device: "udev", attribute: "monitor", reason: "cannot open the \(chosen) netlink monitor")
        }
        for s in subsystems { udev_monitor_filter_add_match_subsystem_devtype(m, s, nil) }
        // Room for event storms (a dock with many devices, 1000 plug events).
        _ = udev_monitor_set_receive_buffer_size(m, 8 << 20)
        guard udev_monitor_enable_receiving(m) >= 0 else {
            udev_monitor_unref(m)
            udev_unref(u)
            throw DeviceReadError(device: "udev", attribute: "monitor", reason: "cannot receive \(chosen) events: \(String(cString: strerror(errno)))")
        }
        udev = u
        monitor = m
        source = chosen
        fd = udev_monitor_get_fd(m)
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
    }

    /// Replaces the subsystem filter (for instance `input` joins when evdev passthrough is turned on).
    public func setSubsystems(_ subsystems: [String]) {
        udev_monitor_filter_remove(monitor)
        for s in subsystems { udev_monitor_filter_add_match_subsystem_devtype(monitor, s, nil) }
        udev_monitor_filter_update(monitor)
    }

    deinit {
        udev_monitor_unref(monitor)
        udev_unref(udev)
    }

    /// The next event already received, or nil when none is waiting.
    public func receive() -> DeviceEvent? {
        guard let dev = udev_monitor_receive_device(monitor) else { return nil }
        defer { udev_device_unref(dev) }
        func text(_ p: UnsafePointer<CChar>?) -> String? { p.map { String(cString: $0) } }
        return DeviceEvent(
            action: text(udev_device_get_action(dev)) ?? "",
            subsystem: text(udev_device_get_subsystem(dev)) ?? "",
            devtype: text(udev_device_get_devtype(dev)) ?? "",
            sysPath: text(udev_device_get_devpath(dev)) ?? "",
            sysName: text(udev_device_get_sysname(dev)) ?? "",
            // From the event's own properties: the getters would read sysfs for what it lacks.
            devnode: text(udev_device_get_property_value(dev, "DEVNAME")).map { $0.hasPrefix("/") ? $0 : "/dev/" + $0 },
            driver: text(udev_device_get_property_value(dev, "DRIVER")),
            seqnum: UInt64(udev_device_get_seqnum(dev)))
    }
}
