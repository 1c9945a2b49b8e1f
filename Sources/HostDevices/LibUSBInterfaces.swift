import CUSB
import DeviceModel

/// Interface classes from the active configuration descriptor, through libusb.
/// One snapshot of libusb's device list: create one per scan, or per event.
public final class LibUSBSnapshot {
    /// One interface of the active configuration with all its alternate settings
    /// (index = bAlternateSetting as libusb lists them).
    public struct Interface: Sendable {
        public var number: UInt8
        public var alternates: [(alternate: UInt8, usbClass: UInt8, subclass: UInt8, proto: UInt8)]
    }

    /// (bus, device address) -> interfaces, or the libusb error for that device.
    private var table: [Int: Result<[Interface], DeviceReadError>] = [:]
    private var context: OpaquePointer?

    /// Takes the list of devices libusb knows now. Without libusb (no context),
    /// the snapshot is empty and every lookup answers nil.
    public init() {
        var ctx: OpaquePointer?
        guard libusb_init(&ctx) == 0, let ctx else { return }
        context = ctx
        var list: UnsafeMutablePointer<OpaquePointer?>?
        let count = libusb_get_device_list(ctx, &list)
        guard count >= 0, let list else { return }
        defer { libusb_free_device_list(list, 1) }
        for k in 0..<count {
            guard let dev = list[k] else { continue }
            let bus = Int(libusb_get_bus_number(dev))
            let addr = Int(libusb_get_device_address(dev))
            table[bus << 8 | addr] = Self.interfaces(dev, name: "usb \(bus):\(addr)")
        }
    }

    deinit {
        if let context { libusb_exit(context) }
    }

    /// Interfaces of the device at bus:devnum; nil when libusb does not know it.
    public func interfaces(bus: Int, devnum: Int) -> Result<[Interface], DeviceReadError>? {
        table[bus << 8 | devnum]
    }

    private static func interfaces(_ dev: OpaquePointer, name: String) -> Result<[Interface], DeviceReadError> {
        var config: UnsafeMutablePointer<libusb_config_descriptor>?
        let rc = libusb_get_active_config_descriptor(dev, &config)
        if rc == LIBUSB_ERROR_NOT_FOUND.rawValue { return .success([]) } // unconfigured
        guard rc == 0, let config else {
            let text = String(cString: libusb_strerror(rc))
            return .failure(DeviceReadError(device: name, attribute: "descriptors", reason: "libusb: \(text)"))
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
