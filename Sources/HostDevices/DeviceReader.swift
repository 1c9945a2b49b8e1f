#if canImport(Glibc)
import Glibc
#endif
import JSONKit
import DeviceModel

/// Which kinds of device to read.
public struct DeviceKinds: OptionSet, Sendable, Hashable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    public static let usb = DeviceKinds(rawValue: 1)
    public static let pci = DeviceKinds(rawValue: 2)
    public static let input = DeviceKinds(rawValue: 4)
    public static let all: DeviceKinds = [.usb, .pci, .input]
}

/// Reads devices from sysfs into plain values: sysfs attributes, libusb's
/// configuration descriptors for USB interfaces, usb.ids and libpci for names.
/// It knows nothing of rules or VMs. Not thread-safe (libpci); one per thread.
public final class DeviceReader {
    public let sysfs: Sysfs
    private let usbIDs: USBIDs?
    /// nil: PCI devices without names (the daemon: its rules and logs use IDs; pci.ids costs 2 MB).
    private let pciNames: PCINames?
    /// The devices behind `/` and `/boot`: a device read is held when it holds one (`bootHold`).
    public var bootDevices: BootDevices
    /// libusb, for interface classes; nil: interfaces come from sysfs interface folders only
    /// (tests reading a testbed without umockdev's preload).
    private let libusb: LibUSBContext?
    /// Whether what only `inspect` shows is read: each USB interface's driver (its `driver`
    /// link) and a USB device's `speed`. The daemon decides on classes and has no use for a
    /// driver that, right after a plug, is still being bound, nor for the speed.
    private let inspectFacts: Bool

    /// - Parameters:
    ///   - sysfs: the sysfs tree (`/sys` on a host).
    ///   - usbIDs: the usb.ids database; nil leaves names empty.
    ///   - bootDevices: the devices behind `/` and `/boot`; read from mountinfo when nil.
    public init(sysfs: Sysfs = Sysfs(), usbIDs: USBIDs? = USBIDs(), pciNames: PCINames? = PCINames(),
                bootDevices: BootDevices? = nil, useLibUSB: Bool = true, inspectFacts: Bool = true) {
        self.sysfs = sysfs
        self.inspectFacts = inspectFacts
        self.usbIDs = usbIDs
        self.pciNames = pciNames
        self.bootDevices = bootDevices ?? BootDevices.read(sysfs: sysfs)
        self.libusb = useLibUSB ? LibUSBContext() : nil
    }

    /// Every device of the given kinds, sorted by kind then name; a device that
    /// cannot be read yields its error in `failures` and does not stop the others.
    /// Throws when a bus or class folder cannot be listed (nothing is known then).
    public func enumerate(_ kinds: DeviceKinds = .all) throws(DeviceReadError) -> (devices: [HostDevice], failures: [DeviceReadError]) {
        var devices: [HostDevice] = []
        var failures: [DeviceReadError] = []
        let links = try links(kinds)
        let snapshot = kinds.contains(.usb) ? libusb?.snapshot() : nil
        for (subsystem, link) in links {
            let r = Result { () throws(DeviceReadError) -> HostDevice in
                let path = try devicePath(link)
                switch subsystem {
                case "usb": return .usb(try readUSB(sysPath: path, libusb: snapshot))
                case "pci": return .pci(try readPCI(sysPath: path))
                default: return .input(try readInput(sysPath: path))
                }
            }
            switch r {
            case .success(let d): devices.append(d)
            case .failure(let e): failures.append(e)
            }
        }
        return (devices, failures)
    }

    /// The sysfs paths (below the sysfs root) of the connected devices of the given kinds,
    /// in `enumerate`'s order, without reading them; one that vanishes meanwhile is left out.
    /// Throws as `enumerate` does.
    public func connected(_ kinds: DeviceKinds = .all) throws(DeviceReadError) -> [(subsystem: String, sysPath: String)] {
        try links(kinds).compactMap { (subsystem, link) in (try? devicePath(link)).map { (subsystem, $0) } }
    }

    /// The bus and class links of the devices of the given kinds, sorted by kind then name.
    private func links(_ kinds: DeviceKinds) throws(DeviceReadError) -> [(subsystem: String, link: String)] {
        var out: [(String, String)] = []
        if kinds.contains(.usb) {
            let names = try Sysfs.entries(sysfs.path("/bus/usb/devices")).filter { !$0.contains(":") }
            out += names.sorted(by: Self.naturalOrder).map { ("usb", "/bus/usb/devices/" + $0) }
        }
        if kinds.contains(.pci) {
            out += try Sysfs.entries(sysfs.path("/bus/pci/devices")).sorted().map { ("pci", "/bus/pci/devices/" + $0) }
        }
        if kinds.contains(.input) {
            let events = try Sysfs.entries(sysfs.path("/class/input")).filter { $0.hasPrefix("event") }
            out += events.sorted(by: Self.naturalOrder).map { ("input", "/class/input/" + $0) }
        }
        return out
    }

    /// The address (`devnum`) a USB device has now: one replugged at the same port has a
    /// new one. nil when it cannot be read (the device is gone).
    public func usbAddress(sysPath: String) -> Int? {
        try? AttributeReader(dir: sysfs.path(sysPath), device: sysPath).int("devnum", max: 255)
    }

    /// Reads one device by its sysfs path (below the sysfs root, e.g. from a uevent's DEVPATH).
    public func read(sysPath: String, subsystem: String) throws(DeviceReadError) -> HostDevice {
        switch subsystem {
        case "usb": return .usb(try readUSB(sysPath: sysPath, libusb: libusb?.snapshot()))
        case "pci": return .pci(try readPCI(sysPath: sysPath))
        case "input": return .input(try readInput(sysPath: sysPath))
        default: throw DeviceReadError(device: sysPath, attribute: "subsystem", reason: "unsupported subsystem \(quoted(subsystem))")
        }
    }

    /// Resolves a link below the sysfs root to the device's own path (`/devices/...`).
    private func devicePath(_ link: String) throws(DeviceReadError) -> String {
        guard let real = Sysfs.realPath(sysfs.path(link)) else {
            throw DeviceReadError(device: link, attribute: "path", reason: "vanished while being read")
        }
        return real.hasPrefix(sysfs.root + "/") ? String(real.dropFirst(sysfs.root.count)) : real
    }

    // MARK: USB

    /// Reads a USB device (DEVTYPE usb_device) folder. libusb's snapshot is taken after the
    /// device's own attributes are read: libusb's hotplug thread reads a device that has just
    /// come while the daemon reads it, and a snapshot taken at once would wait for it.
    public func readUSB(sysPath: String, libusb: @autoclosure () -> LibUSBSnapshot?) throws(DeviceReadError) -> USBDevice {
        try readUSB(sysPath: sysPath, libusb: libusb(), checked: nil)
    }

    /// `checked`: the device's folder as `configuration(_:)` left it open, with the
    /// configuration value it read (not read again).
    /// `event`: the fields the device's `add` event carried (the `uevent` attribute is then not read).
    private func readUSB(sysPath: String, libusb: @autoclosure () -> LibUSBSnapshot?,
                         checked: (reader: AttributeReader, configuration: String)?,
                         event: KernelUSBFields? = nil) throws(DeviceReadError) -> USBDevice {
        let dir = sysfs.path(sysPath)
        let sysName = lastComponent(sysPath)
        let a = checked?.reader ?? AttributeReader.opened(dir: dir, device: sysPath)
        // The kernel's own `uevent` attribute (usb_dev_uevent) holds eight of the device's
        // attributes in one read; each one it lacks (or cannot be read from it) is read from
        // its own file, which also names it in an error.
        let k: KernelUSBFields
        if let event, event.isComplete {
            k = event
        } else {
            k = ((try? a.withSmallFile("uevent") { KernelUSBFields(bytes: $0) }.get()) ?? nil) ?? KernelUSBFields(uevent: nil)
        }
        let bus = try either(k.busnum) { () throws(DeviceReadError) in try a.int("busnum", max: 255) }
        let devnum = try either(k.devnum) { () throws(DeviceReadError) in try a.int("devnum", max: 255) }
        let vendorId = try either(k.vendorId) { () throws(DeviceReadError) in UInt16(try a.hex("idVendor")) }
        let productId = try either(k.productId) { () throws(DeviceReadError) in UInt16(try a.hex("idProduct")) }
        let (port, portPath) = try Self.ports(sysName: sysName, device: sysPath)
        let deviceClass = try either(k.deviceClass) { () throws(DeviceReadError) in try a.byteHex("bDeviceClass") }
        let bcdDevice = try either(k.bcdDevice) { () throws(DeviceReadError) in UInt16(try a.optionalHex("bcdDevice") ?? 0) }
        // Interface folders are `1-2:1.0`; a root hub's (`usb1`) are `1-0:1.0`.
        let interfacePrefix = portPath.isEmpty ? "\(bus)-0" : sysName
        let config: Int?
        if let checked { config = Int(checked.configuration) } else { config = (try a.optionalString("bConfigurationValue")).flatMap { Int($0) } }
        let removable: Removability = (try a.optionalString("removable")).flatMap(Removability.init(rawValue:)) ?? .unknown
        let manufacturer = try a.optionalString("manufacturer"), product = try a.optionalString("product")
        let serial = try a.optionalString("serial"), speed = inspectFacts ? try a.optionalString("speed") : nil
        var interfaces: [USBInterface]
        if config == nil {
            // Not configured: not authorized (USB authorization), or no configuration set (the
            // kernel refused them all for lack of bus power, or leaves it to a udev rule or
            // usb_modeswitch). No interface folders come until it is, and libusb has no active
            // configuration to read: its descriptors say what it has. (Before, such a device
            // read after the interface wait had no interfaces, and an interface rule never
            // matched it, not even once it was configured.)
            interfaces = descriptorInterfaces(dir: dir)
            // libusb is not asked about it: its hotplug messages are handled all the same. With
            // usbAuthorization every new device is read here, and before, they were handled only
            // at the start (the first pass): each device that left stayed in libusb's memory.
            self.libusb?.handleEvents()
        } else if let known = libusb()?.interfaces(bus: bus, devnum: devnum, vendor: vendorId, product: productId,
                                                   release: bcdDevice, configuration: config) {
            switch known {
            case .success(let list):
                // libusb gives every alternate setting; sysfs says which one is in force.
                interfaces = list.map { i in
                    // One alternate setting: it is the one in force (nothing to read).
                    var current: UInt8 = i.alternates.count == 1 ? i.alternates[0].alternate : 0
                    if i.alternates.count > 1 {
                        let ifDir = "\(dir)/\(interfacePrefix):\(config ?? 0).\(i.number)"
                        // Decimal, unlike the class fields: the kernel prints it with "%2d".
                        current = (try? AttributeReader(dir: ifDir, device: ifDir).int("bAlternateSetting", max: 0xff)).map(UInt8.init) ?? 0
                    }
                    let alt = i.alternates.first { $0.alternate == current } ?? i.alternates[0]
                    return USBInterface(interfaceNumber: i.number, interfaceClass: alt.usbClass,
                                        interfaceSubclass: alt.subclass, interfaceProtocol: alt.proto)
                }
            case .failure(var e):
                e.device = sysPath
                throw e
            }
        } else {
            interfaces = try sysfsInterfaces(dir: dir, prefix: interfacePrefix)
        }
        // Drivers per interface: from each interface folder's `driver` link.
        if let config, inspectFacts {
            for k in interfaces.indices {
                let ifDir = "\(dir)/\(interfacePrefix):\(config).\(interfaces[k].interfaceNumber)"
                interfaces[k].driver = Sysfs.linkName(ifDir + "/driver")
            }
        }
        // Unconfigured: a hub only if every configuration says so (USB authorization authorizes hubs).
        let isHub = config == nil ? descriptorsSayHub(dir: dir, deviceClass: deviceClass)
                                  : USBDevice.isHub(deviceClass: deviceClass, interfaces: interfaces)
        return USBDevice(
            sysName: sysName, sysPath: sysPath, bus: bus, devnum: devnum, port: port, portPath: portPath,
            vendorId: vendorId, productId: productId, bcdDevice: bcdDevice,
            deviceClass: deviceClass, deviceSubclass: try either(k.deviceSubclass) { () throws(DeviceReadError) in try a.byteHex("bDeviceSubClass") },
            deviceProtocol: try either(k.deviceProtocol) { () throws(DeviceReadError) in try a.byteHex("bDeviceProtocol") },
            manufacturer: manufacturer, product: product, serial: serial,
            vendorName: usbIDs?.vendorName(vendorId), productName: usbIDs?.productName(vendorId, productId),
            interfaces: interfaces, speed: speed, removable: removable,
            devnode: Self.usbDevnode(bus: bus, devnum: devnum), isHub: isHub,
            bootHold: bootDevices.hold(of: sysPath))
    }

    /// True when a USB device's active configuration is set and every one of its
    /// interfaces has its folder: right after the `add` event it may not be yet.
    public func usbConfigured(sysPath: String) -> Bool {
        configuration(AttributeReader.opened(dir: sysfs.path(sysPath), device: sysPath)) != nil
    }

    /// True when a USB device's active configuration is set but not every one of its
    /// interfaces has its folder yet: the kernel is configuring it (it has just been plugged).
    public func usbInterfacesComing(sysPath: String) -> Bool {
        let a = AttributeReader.opened(dir: sysfs.path(sysPath), device: sysPath)
        guard let config = (try? a.optionalString("bConfigurationValue")).flatMap({ $0 }),
              !config.trimmingWhitespace().isEmpty else { return false }
        return configuration(a) == nil
    }

    /// Reads a USB device once `usbConfigured` holds, through the folder that check opened
    /// (one open and one `bConfigurationValue` read fewer than the check and `read` apart);
    /// nil while the configuration or an interface is not there yet. `event`: what the
    /// device's `add` event said of it (`DeviceEvent.usb`).
    public func readUSBIfConfigured(sysPath: String, event: KernelUSBFields? = nil) -> Result<HostDevice, DeviceReadError>? {
        let a = AttributeReader.opened(dir: sysfs.path(sysPath), device: sysPath)
        guard let config = configuration(a) else { return nil }
        return Result { () throws(DeviceReadError) in
            .usb(try readUSB(sysPath: sysPath, libusb: libusb?.snapshot(), checked: (a, config), event: event))
        }
    }

    /// The active configuration's value of the device `a` reads, when it is set and every
    /// interface has its folder.
    private func configuration(_ a: AttributeReader) -> String? {
        guard let config = (try? a.optionalString("bConfigurationValue")).flatMap({ $0 }), !config.isEmpty,
              let count = (try? a.optionalString("bNumInterfaces")).flatMap({ $0 }).flatMap({ UInt8($0.trimmingWhitespace()) }).map(Int.init)
        else { return nil }   // (a u8: a negative count, from a malformed sysfs, made `0..<count` trap)
        let sysName = lastComponent(a.device)
        let prefix = sysName.hasPrefix("usb") ? "\(sysName.dropFirst(3))-0:" : sysName + ":"
        // Interfaces are numbered 0 ..< bNumInterfaces (USB 2.0 9.6.5): look for each by name;
        // a device numbering them otherwise is counted in the folder instead.
        let configValue = config.trimmingWhitespace()
        if (0..<count).allSatisfy({ n in a.exists("\(prefix)\(configValue).\(n)") }) { return configValue }
        return Sysfs.list(a.dir).filter { $0.hasPrefix(prefix) }.count >= count ? configValue : nil
    }

    /// `/dev/bus/usb/BBB/DDD`.
    public static func usbDevnode(bus: Int, devnum: Int) -> String {
        func pad(_ n: Int) -> String { let s = String(n); return String(repeating: "0", count: max(0, 3 - s.count)) + s }
        return "/dev/bus/usb/\(pad(bus))/\(pad(devnum))"
    }

    /// `1-2.3` -> root port 2, path [2, 3]; `usb1` (a root hub) -> 0, [].
    static func ports(sysName: String, device: String) throws(DeviceReadError) -> (Int, [Int]) {
        if sysName.hasPrefix("usb"), Int(sysName.dropFirst(3)) != nil { return (0, []) }
        guard let dash = sysName.firstIndex(of: "-") else {
            throw DeviceReadError(device: device, attribute: "name", reason: "not a USB device name: \(quoted(sysName))")
        }
        let parts = sysName[sysName.index(after: dash)...].split(separator: ".", omittingEmptySubsequences: false)
        var path: [Int] = []
        for p in parts {
            guard let n = Int(p), n >= 0, n <= 255 else {
                throw DeviceReadError(device: device, attribute: "name", reason: "bad port path in \(quoted(sysName))")
            }
            path.append(n)
        }
        return (path.first ?? 0, path)
    }

    /// Interfaces from the interface folders (`1-2:1.0`) of the active configuration.
    private func sysfsInterfaces(dir: String, prefix: String) throws(DeviceReadError) -> [USBInterface] {
        var out: [USBInterface] = []
        for entry in Sysfs.list(dir) where entry.hasPrefix(prefix + ":") {
            let a = AttributeReader(dir: dir + "/" + entry, device: entry)
            guard (try a.optionalString("bInterfaceClass")) != nil else { continue }
            out.append(USBInterface(
                interfaceNumber: try a.byteHex("bInterfaceNumber"), interfaceClass: try a.byteHex("bInterfaceClass"),
                interfaceSubclass: try a.byteHex("bInterfaceSubClass"), interfaceProtocol: try a.byteHex("bInterfaceProtocol")))
        }
        return out.sorted { $0.interfaceNumber < $1.interfaceNumber }
    }

    // MARK: PCI

    /// Reads a PCI function folder.
    public func readPCI(sysPath: String) throws(DeviceReadError) -> PCIDevice {
        let dir = sysfs.path(sysPath)
        let address = lastComponent(sysPath).lowercased()
        let a = AttributeReader(dir: dir, device: sysPath)
        let vendorId = UInt16(try a.hex("vendor"))
        let deviceId = UInt16(try a.hex("device"))
        let cls = try a.hex("class", max: 0xFF_FFFF)
        var group: Int?
        var peers: [String] = []
        if let g = Sysfs.linkName(dir + "/iommu_group").flatMap({ Int($0) }) {
            group = g
            peers = Sysfs.list(sysfs.path("/kernel/iommu_groups/\(g)/devices")).filter { $0 != address }.sorted()
        }
        return PCIDevice(
            address: address, sysPath: sysPath, vendorId: vendorId, deviceId: deviceId,
            subsystemVendorId: UInt16(try a.optionalHex("subsystem_vendor") ?? 0),
            subsystemDeviceId: UInt16(try a.optionalHex("subsystem_device") ?? 0),
            deviceClass: UInt8(cls >> 16), deviceSubclass: UInt8((cls >> 8) & 0xFF), deviceProgIf: UInt8(cls & 0xFF),
            vendorName: pciNames?.vendorName(vendorId), deviceName: pciNames?.deviceName(vendorId, deviceId),
            driver: Sysfs.linkName(dir + "/driver"), iommuGroup: group, iommuGroupPeers: peers,
            isBridge: cls >> 16 == 0x06, bootHold: bootDevices.hold(of: sysPath))
    }

    // MARK: Input

    /// Reads an event device (`/devices/.../inputN/eventM`); its capabilities live in the parent `inputN`.
    public func readInput(sysPath: String) throws(DeviceReadError) -> InputDevice {
        guard Sysfs.exists(sysfs.path(sysPath)) else {
            throw DeviceReadError(device: sysPath, attribute: "path", reason: "vanished while being read")
        }
        let sysName = lastComponent(sysPath)
        let parentPath = parentFolder(sysPath)
        let parent = AttributeReader(dir: sysfs.path(parentPath), device: parentPath)
        func bitmap(_ name: String) throws(DeviceReadError) -> Bitmap {
            guard let text = try parent.optionalString("capabilities/" + name) else { return Bitmap(words: []) }
            guard let b = Bitmap(sysfs: text) else {
                throw DeviceReadError(device: parentPath, attribute: "capabilities/" + name, reason: "not a bitmap: \(quoted(text))")
            }
            return b
        }
        guard let ev = Bitmap(sysfs: try parent.string("capabilities/ev")) else {
            throw DeviceReadError(device: parentPath, attribute: "capabilities/ev", reason: "not a bitmap")
        }
        let caps = InputCapabilities(ev: ev, key: try bitmap("key"), rel: try bitmap("rel"), abs: try bitmap("abs"),
                                     sw: try bitmap("sw"), properties: try bitmap("properties"))
        let busType = UInt16(try parent.optionalHex("id/bustype") ?? 0)
        return InputDevice(
            sysName: sysName, sysPath: sysPath, devnode: "/dev/input/" + sysName,
            name: try parent.optionalString("name"), phys: try parent.optionalString("phys"),
            busType: busType,
            vendorId: UInt16(try parent.optionalHex("id/vendor") ?? 0),
            productId: UInt16(try parent.optionalHex("id/product") ?? 0),
            hasUSBAncestor: hasUSBAncestor(parentPath),
            kinds: caps.kinds(busType: busType), pathTag: pathTag(of: parentPath))
    }

    /// True when an input event device (`/devices/.../inputN/eventM`) hangs below a USB
    /// device: USB rules decide for it, and it need not be read. A few `readlink`s.
    public func inputHasUSBAncestor(sysPath: String) -> Bool {
        hasUSBAncestor(parentFolder(sysPath))
    }

    /// Below a USB device, and not through a Bluetooth link: a classic Bluetooth keyboard
    /// (hidp, `.../1-10:1.0/bluetooth/hci0/hci0:3/0005:046D:B342.0001/input/inputN`) is no
    /// part of the USB adapter that carries its radio, which stays on the host (before, it was
    /// taken for the adapter's, and no rule could send it anywhere; the reference's test is
    /// udev's ID_BUS, "bluetooth" there).
    private func hasUSBAncestor(_ sysPath: String) -> Bool {
        var path = Substring(sysPath)
        while let slash = path.lastIndex(of: "/"), slash != path.startIndex {
            path = path[..<slash]
            switch Sysfs.linkName(sysfs.path(String(path)) + "/subsystem") {
            case "usb": return true
            case "bluetooth": return false
            default: continue
            }
        }
        return false
    }

    private func parentFolder(_ path: String) -> String {
        String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)])
    }

    /// A short tag of where the device hangs: the path below `/devices/` up to the
    /// `inputN` folder (without it), e.g. `platform/i8042/serio0/input` (rule entries match it with a regex).
    private func pathTag(of inputPath: String) -> String? {
        var parts = inputPath.split(separator: "/")
        guard parts.first == "devices" else { return nil }
        parts.removeFirst()
        if parts.last?.hasPrefix("input") == true { parts.removeLast() }
        return parts.joined(separator: "/")
    }

    /// `1-2` before `1-10`; `event2` before `event10`.
    static func naturalOrder(_ a: String, _ b: String) -> Bool {
        var i = a.utf8.makeIterator(), j = b.utf8.makeIterator()
        var x = i.next(), y = j.next()
        func isDigit(_ c: UInt8?) -> Bool { c.map { $0 >= 0x30 && $0 <= 0x39 } ?? false }
        while let cx = x, let cy = y {
            if isDigit(cx) && isDigit(cy) {
                var nx = 0, ny = 0, lx = 0, ly = 0
                while isDigit(x), lx < 18 { nx = nx * 10 + Int(x! - 0x30); lx += 1; x = i.next() }
                while isDigit(y), ly < 18 { ny = ny * 10 + Int(y! - 0x30); ly += 1; y = j.next() }
                if nx != ny { return nx < ny }
                continue
            }
            if cx != cy { return cx < cy }
            x = i.next(); y = j.next()
        }
        return x == nil && y != nil
    }
}

/// The fields of a USB device's `uevent` attribute that the kernel writes for every USB
/// device (usb_dev_uevent): `PRODUCT=vid/pid/bcdDevice` (hex), `TYPE=class/subclass/protocol`
/// (decimal), `BUSNUM=` and `DEVNUM=` (decimal). A field absent or malformed is nil. The
/// device's `add` event carries the same properties: the monitor takes them from it, and
/// the reader then does not read the attribute.
public struct KernelUSBFields: Sendable, Hashable {
    public var busnum: Int?, devnum: Int?
    public var vendorId: UInt16?, productId: UInt16?, bcdDevice: UInt16?
    public var deviceClass: UInt8?, deviceSubclass: UInt8?, deviceProtocol: UInt8?

    /// True when every field is known (nothing left to read from sysfs).
    public var isComplete: Bool {
        busnum != nil && devnum != nil && vendorId != nil && productId != nil && bcdDevice != nil
            && deviceClass != nil && deviceSubclass != nil && deviceProtocol != nil
    }

    init(uevent: String?) {
        guard var text = uevent else { return }
        self = text.withUTF8 { KernelUSBFields(bytes: $0) }
    }

    /// From an event's property values (C strings; nil when the event lacks one).
    public init(product: UnsafePointer<CChar>?, type: UnsafePointer<CChar>?,
                busnum: UnsafePointer<CChar>?, devnum: UnsafePointer<CChar>?) {
        func value<T>(_ p: UnsafePointer<CChar>?, _ parse: (UnsafeBufferPointer<UInt8>) -> T?) -> T? {
            guard let p else { return nil }
            return p.withMemoryRebound(to: UInt8.self, capacity: 1) { u in
                parse(UnsafeBufferPointer(start: u, count: strlen(p)))
            }
        }
        self.busnum = value(busnum) { Self.number($0, 0, $0.count) }
        self.devnum = value(devnum) { Self.number($0, 0, $0.count) }
        if let (v, p, b) = value(product, { Self.triple($0, 0, $0.count, hex: true, max: 0xffff) }) {
            (vendorId, productId, bcdDevice) = (UInt16(v), UInt16(p), UInt16(b))
        }
        if let (c, s, p) = value(type, { Self.triple($0, 0, $0.count, hex: false, max: 0xff) }) {
            (deviceClass, deviceSubclass, deviceProtocol) = (UInt8(c), UInt8(s), UInt8(p))
        }
    }

    init(bytes: UnsafeBufferPointer<UInt8>) {
        var i = 0
        let n = bytes.count
        func starts(_ key: StaticString, at j: Int, _ end: Int) -> Bool {
            let k = key.utf8Start, len = key.utf8CodeUnitCount
            guard end - j > len else { return false }
            for m in 0..<len where bytes[j + m] != k[m] { return false }
            return true
        }
        while i < n {
            var end = i
            while end < n && bytes[end] != 0x0A { end += 1 }
            switch bytes[i] {
            case UInt8(ascii: "B") where starts("BUSNUM=", at: i, end): busnum = Self.number(bytes, i + 7, end)
            case UInt8(ascii: "D") where starts("DEVNUM=", at: i, end): devnum = Self.number(bytes, i + 7, end)
            case UInt8(ascii: "P") where starts("PRODUCT=", at: i, end):
                if let (v, p, b) = Self.triple(bytes, i + 8, end, hex: true, max: 0xffff) {
                    (vendorId, productId, bcdDevice) = (UInt16(v), UInt16(p), UInt16(b))
                }
            case UInt8(ascii: "T") where starts("TYPE=", at: i, end):
                if let (c, s, p) = Self.triple(bytes, i + 5, end, hex: false, max: 0xff) {
                    (deviceClass, deviceSubclass, deviceProtocol) = (UInt8(c), UInt8(s), UInt8(p))
                }
            default: break
            }
            i = end + 1
        }
    }

    /// The numbers of an `a/b/c` value in `bytes[from..<end]`, each at most `max`.
    static func triple(_ bytes: UnsafeBufferPointer<UInt8>, _ from: Int, _ end: Int, hex: Bool, max: Int) -> (Int, Int, Int)? {
        var out = (0, 0, 0), k = 0, digits = 0, j = from
        while j < end {
            let c = bytes[j]
            if c == UInt8(ascii: "/") {
                guard digits > 0, k < 2 else { return nil }
                k += 1
                digits = 0
            } else {
                let d: Int
                switch c {
                case 0x30...0x39: d = Int(c - 0x30)
                case 0x61...0x66 where hex: d = Int(c - 0x61 + 10)
                case 0x41...0x46 where hex: d = Int(c - 0x41 + 10)
                default: return nil
                }
                let v: Int
                switch k {
                case 0: out.0 = out.0 * (hex ? 16 : 10) + d; v = out.0
                case 1: out.1 = out.1 * (hex ? 16 : 10) + d; v = out.1
                default: out.2 = out.2 * (hex ? 16 : 10) + d; v = out.2
                }
                digits += 1
                guard digits <= 5, v <= max else { return nil }
            }
            j += 1
        }
        guard k == 2, digits > 0 else { return nil }
        return out
    }

    /// A decimal of 1-3 digits up to 255 in `bytes[from..<end]`.
    static func number(_ bytes: UnsafeBufferPointer<UInt8>, _ from: Int, _ end: Int) -> Int? {
        guard end > from, end - from <= 3 else { return nil }
        var v = 0
        for j in from..<end {
            guard bytes[j] >= 0x30 && bytes[j] <= 0x39 else { return nil }
            v = v * 10 + Int(bytes[j] - 0x30)
        }
        return v <= 255 ? v : nil
    }
}

/// `value`, or else what `read` gives (typed throws do not pass through `??`).
func either<T>(_ value: T?, _ read: () throws(DeviceReadError) -> T) throws(DeviceReadError) -> T {
    if let value { return value }
    return try read()
}

/// The last component of a path (`1-2` of `/devices/.../usb1/1-2`), without splitting it all.
func lastComponent(_ path: String) -> String {
    guard let slash = path.utf8.lastIndex(of: UInt8(ascii: "/")) else { return path }
    return String(path[path.utf8.index(after: slash)...])
}
