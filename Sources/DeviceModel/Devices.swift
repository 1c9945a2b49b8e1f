import JSONKit

/// Plain values describing host devices, as read from sysfs. No I/O here:
/// `HostDevices` fills them, `HotplugRules` decides on them.

/// How the kernel sees a USB port: `removable`, `fixed` or `unknown`
/// (sysfs `removable` attribute of the device).
public enum Removability: String, Sendable, Hashable, Codable, CaseIterable {
    case removable
    case fixed
    case unknown
}

/// Why a device is kept on the host for the host's own `/` and `/boot`.
public enum BootHold: Sendable, Hashable, Codable {
    /// A filesystem mounted at `/` or `/boot` lives on it: the host's boot disk, or its controller.
    case bootDisk
    /// It holds a disk, and a boot filesystem could not be resolved to its disks
    /// (`/ (zfs rpool/ROOT/pve-1)`): every disk the host had at start stays on the host.
    case unresolvedBoot(String)

    /// What the device serves, after "holds" or "serves": `the host's / or /boot`,
    /// `a disk, while the host's / (zfs rpool/ROOT/pve-1) cannot be resolved to its disks`.
    public var what: String {
        switch self {
        case .bootDisk: return "the host's / or /boot"
        case .unresolvedBoot(let filesystems): return "a disk, while the host's \(filesystems) cannot be resolved to its disks"
        }
    }
}

/// One interface of a USB device's active configuration.
public struct USBInterface: Sendable, Hashable, Codable {
    public var interfaceNumber: UInt8
    public var interfaceClass: UInt8
    public var interfaceSubclass: UInt8
    public var interfaceProtocol: UInt8
    /// The host driver bound to it, if any.
    public var driver: String?

    public init(interfaceNumber: UInt8, interfaceClass: UInt8, interfaceSubclass: UInt8,
                interfaceProtocol: UInt8, driver: String? = nil) {
        self.interfaceNumber = interfaceNumber
        self.interfaceClass = interfaceClass
        self.interfaceSubclass = interfaceSubclass
        self.interfaceProtocol = interfaceProtocol
        self.driver = driver
    }
}

/// A USB device (udev DEVTYPE `usb_device`).
public struct USBDevice: Sendable, Hashable, Codable {
    /// Kernel name, e.g. `1-2.3`.
    public var sysName: String
    /// The sysfs path below `/sys`, e.g. `/devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2.3`.
    public var sysPath: String
    public var bus: Int
    public var devnum: Int
    /// The root port: first number after the dash of `sysName`.
    public var port: Int
    /// Port numbers from the root hub down, e.g. `[2, 3]` for `1-2.3`.
    public var portPath: [Int]
    public var vendorId: UInt16
    public var productId: UInt16
    public var bcdDevice: UInt16
    public var deviceClass: UInt8
    public var deviceSubclass: UInt8
    public var deviceProtocol: UInt8
    /// The device's own strings (may be absent or sanitised).
    public var manufacturer: String?
    public var product: String?
    public var serial: String?
    /// Names from the system's usb.ids, when listed there.
    public var vendorName: String?
    public var productName: String?
    public var interfaces: [USBInterface]
    /// Speed in Mbit/s as the kernel says it (`1.5`, `12`, `480`, `5000`, ...).
    public var speed: String?
    public var removable: Removability
    /// `/dev/bus/usb/BBB/DDD`.
    public var devnode: String
    /// True for hubs (`isHub(deviceClass:interfaces:)`).
    /// A hub: every interface of its configuration is a hub's (class 9; a real hub has just
    /// one), or, with no interface known yet, its device class is. A device with a hub
    /// interface beside others (a keyboard that also says "hub") is not one: as a hub it
    /// would be authorized on the host and kept from every VM.
    public static func isHub(deviceClass: UInt8, interfaces: [USBInterface]) -> Bool {
        interfaces.isEmpty ? deviceClass == 9 : interfaces.allSatisfy { $0.interfaceClass == 9 }
    }

    public var isHub: Bool
    /// Set when the device is kept on the host for the host's `/` or `/boot` (and why).
    public var bootHold: BootHold?
    /// True when a filesystem the host has mounted at `/` or `/boot` lives on it, or may
    /// (`bootHold`); setting true without a `bootHold` makes it the boot disk.
    public var holdsHostBootFilesystem: Bool {
        get { bootHold != nil }
        set { bootHold = newValue ? bootHold ?? .bootDisk : nil }
    }

    public init(sysName: String, sysPath: String, bus: Int, devnum: Int, port: Int, portPath: [Int],
                vendorId: UInt16, productId: UInt16, bcdDevice: UInt16 = 0,
                deviceClass: UInt8 = 0, deviceSubclass: UInt8 = 0, deviceProtocol: UInt8 = 0,
                manufacturer: String? = nil, product: String? = nil, serial: String? = nil,
                vendorName: String? = nil, productName: String? = nil, interfaces: [USBInterface] = [],
                speed: String? = nil, removable: Removability = .unknown, devnode: String,
                isHub: Bool = false, bootHold: BootHold? = nil) {
        self.sysName = sysName
        self.sysPath = sysPath
        self.bus = bus
        self.devnum = devnum
        self.port = port
        self.portPath = portPath
        self.vendorId = vendorId
        self.productId = productId
        self.bcdDevice = bcdDevice
        self.deviceClass = deviceClass
        self.deviceSubclass = deviceSubclass
        self.deviceProtocol = deviceProtocol
        self.manufacturer = manufacturer
        self.product = product
        self.serial = serial
        self.vendorName = vendorName
        self.productName = productName
        self.interfaces = interfaces
        self.speed = speed
        self.removable = removable
        self.devnode = devnode
        self.isHub = isHub
        self.bootHold = bootHold
    }
}

/// A PCI function.
public struct PCIDevice: Sendable, Hashable, Codable {
    /// `dddd:bb:dd.f`, lower case.
    public var address: String
    public var sysPath: String
    public var vendorId: UInt16
    public var deviceId: UInt16
    public var subsystemVendorId: UInt16
    public var subsystemDeviceId: UInt16
    /// Base class, subclass and programming interface (sysfs `class` = 0xCCSSPP).
    public var deviceClass: UInt8
    public var deviceSubclass: UInt8
    public var deviceProgIf: UInt8
    public var vendorName: String?
    public var deviceName: String?
    public var driver: String?
    public var iommuGroup: Int?
    /// Other functions in the same IOMMU group (addresses), this one excluded.
    public var iommuGroupPeers: [String]
    /// PCI-to-PCI bridges (class 06/04) and other bridges (class 06): never passed through.
    public var isBridge: Bool
    /// Set when the function is kept on the host for the host's `/` or `/boot` (and why).
    public var bootHold: BootHold?
    /// True when a filesystem the host has mounted at `/` or `/boot` is served by it, or may
    /// be (`bootHold`); setting true without a `bootHold` makes it the boot disk's controller.
    public var holdsHostBootFilesystem: Bool {
        get { bootHold != nil }
        set { bootHold = newValue ? bootHold ?? .bootDisk : nil }
    }

    public init(address: String, sysPath: String, vendorId: UInt16, deviceId: UInt16,
                subsystemVendorId: UInt16 = 0, subsystemDeviceId: UInt16 = 0,
                deviceClass: UInt8 = 0, deviceSubclass: UInt8 = 0, deviceProgIf: UInt8 = 0,
                vendorName: String? = nil, deviceName: String? = nil, driver: String? = nil,
                iommuGroup: Int? = nil, iommuGroupPeers: [String] = [], isBridge: Bool = false,
                bootHold: BootHold? = nil) {
        self.address = address
        self.sysPath = sysPath
        self.vendorId = vendorId
        self.deviceId = deviceId
        self.subsystemVendorId = subsystemVendorId
        self.subsystemDeviceId = subsystemDeviceId
        self.deviceClass = deviceClass
        self.deviceSubclass = deviceSubclass
        self.deviceProgIf = deviceProgIf
        self.vendorName = vendorName
        self.deviceName = deviceName
        self.driver = driver
        self.iommuGroup = iommuGroup
        self.iommuGroupPeers = iommuGroupPeers
        self.isBridge = isBridge
        self.bootHold = bootHold
    }
}

/// What an input device is, computed from its capability bitmaps as udev's input_id does.
public enum InputKind: String, Sendable, Hashable, Codable, CaseIterable {
    case keyboard
    case key
    case mouse
    case touchpad
    case touchscreen
    case tablet
    case joystick
    case accelerometer
    case pointingStick = "pointingstick"
    case `switch`
}

/// An input event device (`/dev/input/eventN`).
public struct InputDevice: Sendable, Hashable, Codable {
    /// `input7`: the input device the event node belongs to (the folder above it in sysfs).
    /// The kernel numbers these anew for each device (the lowest free `eventN` is given out
    /// again): it tells a device from the one that had its event node before.
    public var inputName: String? {
        let parts = sysPath.split(separator: "/")
        guard parts.count >= 2, parts[parts.count - 2].hasPrefix("input") else { return nil }
        return String(parts[parts.count - 2])
    }

    /// `event3`.
    public var sysName: String
    public var sysPath: String
    public var devnode: String
    public var name: String?
    public var phys: String?
    /// Linux bus type (`BUS_USB` = 3, `BUS_I8042` = 0x11, `BUS_I2C` = 0x18, ...).
    public var busType: UInt16
    public var vendorId: UInt16
    public var productId: UInt16
    /// True when a USB device is an ancestor (then USB passthrough owns it).
    public var hasUSBAncestor: Bool
    public var kinds: [InputKind]
    /// Where it hangs: the sysfs path of its `inputN` folder below `/devices/`, without `inputN` (`platform/i8042/serio0/input`).
    public var pathTag: String?

    public init(sysName: String, sysPath: String, devnode: String, name: String? = nil, phys: String? = nil,
                busType: UInt16 = 0, vendorId: UInt16 = 0, productId: UInt16 = 0,
                hasUSBAncestor: Bool = false, kinds: [InputKind] = [], pathTag: String? = nil) {
        self.sysName = sysName
        self.sysPath = sysPath
        self.devnode = devnode
        self.name = name
        self.phys = phys
        self.busType = busType
        self.vendorId = vendorId
        self.productId = productId
        self.hasUSBAncestor = hasUSBAncestor
        self.kinds = kinds
        self.pathTag = pathTag
    }
}

/// A device of any kind, as read from sysfs.
public enum HostDevice: Sendable, Hashable {
    case usb(USBDevice)
    case pci(PCIDevice)
    case input(InputDevice)

    public var sysName: String {
        switch self {
        case .usb(let d): d.sysName
        case .pci(let d): d.address
        case .input(let d): d.sysName
        }
    }

    public var isPCI: Bool {
        if case .pci = self { return true }
        return false
    }
}
