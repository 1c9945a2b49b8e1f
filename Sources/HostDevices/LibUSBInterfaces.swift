import CUSB
#if canImport(Glibc)
import Glibc
#endif
import DeviceModel

/// A libusb context, kept for the life of the process (the daemon) or of one scan.
/// libusb keeps its own device list current; a device it has not seen yet is
/// simply absent from a snapshot, and the reader then uses sysfs interface folders.
public final class LibUSBContext {
    fileprivate let context: OpaquePointer

    /// nil when libusb cannot start (no usbfs, for instance).
    public init?() {
        var ctx: OpaquePointer?
        guard libusb_init(&ctx) == 0, let ctx else { return nil }
        context = ctx
    }

    deinit { libusb_exit(context) }

    /// The devices libusb knows now (its hotplug messages handled first).
    public func snapshot() -> LibUSBSnapshot {
        handleEvents()
        return LibUSBSnapshot(self)
    }

    /// libusb's hotplug thread queues a message per arrival and departure (the departure's
    /// holding the device that left) that only event handling frees: handled here, without
    /// waiting, so a long-running daemon does not grow.
    public func handleEvents() {
        var zero = timeval(tv_sec: 0, tv_usec: 0)
        _ = libusb_handle_events_timeout_completed(context, &zero, nil)
    }
}

/// One snapshot of libusb's device list. Configuration descriptors are parsed
/// only for the devices asked about.
public final class LibUSBSnapshot {
    /// One interface of the active configuration with all its alternate settings.
    public struct Interface: Sendable {
        public var number: UInt8
        public var alternates: [(alternate: UInt8, usbClass: UInt8, subclass: UInt8, proto: UInt8)]
    }

    private let owner: LibUSBContext
    private var list: UnsafeMutablePointer<OpaquePointer?>?
    private var count = 0

    fileprivate init(_ owner: LibUSBContext) {
        self.owner = owner
        var l: UnsafeMutablePointer<OpaquePointer?>?
        let count = libusb_get_device_list(owner.context, &l)
        guard count >= 0, let l else { return }
        list = l
        self.count = count
    }

    /// The device at bus:devnum. A scan: the daemon asks once per snapshot, and a host's
    /// few dozen devices cost less to scan than to index.
    private func device(bus: Int, devnum: Int) -> OpaquePointer? {
        guard let list else { return nil }
        for k in 0..<count {
            if let dev = list[k], Int(libusb_get_bus_number(dev)) == bus, Int(libusb_get_device_address(dev)) == devnum { return dev }
        }
        return nil
    }

    deinit {
        if let list { libusb_free_device_list(list, 1) }
    }

    /// Interfaces of the device at bus:devnum from the descriptor of its configuration
    /// `configuration` (bConfigurationValue, as sysfs says; nil: not configured); nil when
    /// libusb does not know the device. libusb takes the descriptor from the ones it read
    /// when the device came (libusb_get_active_config_descriptor would read sysfs's
    /// bConfigurationValue twice more to learn what the caller already knows).
    /// `vendor`, `product`, `release`: the device's IDs and bcdDevice as sysfs says. libusb's
    /// entry at bus:devnum is taken only when its device descriptor says the same: libusb's
    /// list may still hold a device that has left (it hears no departure without udevd, or
    /// when its socket overflowed), and addresses come again (a controller registered again
    /// starts them over; they wrap after 127). Before, such a device's interfaces were given
    /// to the new one (a USB disk taken for the HID mouse that had had its address).
    public func interfaces(bus: Int, devnum: Int, vendor: UInt16, product: UInt16, release: UInt16,
                           configuration: Int?) -> Result<[Interface], DeviceReadError>? {
        guard let dev = device(bus: bus, devnum: devnum) else { return nil }
        var descriptor = libusb_device_descriptor()
        guard libusb_get_device_descriptor(dev, &descriptor) == 0, descriptor.idVendor == vendor,
              descriptor.idProduct == product, descriptor.bcdDevice == release else { return nil }
        guard let value = configuration.flatMap(UInt8.init(exactly:)) else { return .success([]) } // not configured (yet)
        var config: UnsafeMutablePointer<libusb_config_descriptor>?
        let rc = libusb_get_config_descriptor_by_value(dev, value, &config)
        if rc == LIBUSB_ERROR_NOT_FOUND.rawValue { return .success([]) } // no such configuration
        guard rc == 0, let config else {
            let text = String(cString: libusb_strerror(rc))
            return .failure(DeviceReadError(device: "usb \(bus):\(devnum)", attribute: "descriptors", reason: "libusb: \(text)"))
        }
        defer { libusb_free_config_descriptor(config) }
        var out: [Interface] = []
        let c = config.pointee
        for i in 0..<Int(c.bNumInterfaces) {
            guard let iface = c.interface?[i], iface.num_altsetting > 0, let alt = iface.altsetting else { continue }
            var entry = Interface(number: alt[0].bInterfaceNumber, alternates: [])
            for k in 0..<Int(iface.num_altsetting) {
                let a = alt[k]
                entry.alternates.append((a.bAlternateSetting, a.bInterfaceClass, a.bInterfaceSubClass, a.bInterfaceProtocol))
            }
            out.append(entry)
        }
        return .success(out)
    }
}
