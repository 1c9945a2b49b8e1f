import DeviceModel

/// The raw descriptors of a USB device, as the kernel keeps them in sysfs
/// (`descriptors`: the device descriptor, then each configuration descriptor with
/// its interface and endpoint descriptors, as the device sent them).
///
/// An unauthorized device (USB authorization) has these and its `idVendor`/`idProduct`,
/// but no active configuration and no interface folders: its interfaces are read here.
/// The bytes come from the device, which may lie: every length is checked, and a
/// malformed descriptor ends the walk with what was read before it.
public enum USBDescriptors {
    /// The interfaces of the first configuration (alternate setting 0 of each
    /// interface number, in number order): the one the kernel's
    /// `usb_choose_configuration` takes for all but vendor-specific devices.
    public static func firstConfigurationInterfaces(_ bytes: [UInt8]) -> [USBInterface] {
        var out: [USBInterface] = []
        var i = 0
        var inConfiguration = false
        while i + 2 <= bytes.count {
            let length = Int(bytes[i]), type = bytes[i + 1]
            guard length >= 2, i + length <= bytes.count else { break }
            switch type {
            case 2: // CONFIGURATION
                if inConfiguration { return out.sorted { $0.interfaceNumber < $1.interfaceNumber } }
                inConfiguration = true
            case 4 where inConfiguration && length >= 9: // INTERFACE
                let number = bytes[i + 2], alternate = bytes[i + 3]
                if alternate == 0 && !out.contains(where: { $0.interfaceNumber == number }) {
                    out.append(USBInterface(interfaceNumber: number, interfaceClass: bytes[i + 5],
                                            interfaceSubclass: bytes[i + 6], interfaceProtocol: bytes[i + 7]))
                }
            default:
                break
            }
            i += length
        }
        return out.sorted { $0.interfaceNumber < $1.interfaceNumber }
    }

    /// The class of every interface descriptor of every configuration, each alternate setting
    /// included: what the kernel may configure once the device is authorized (it may take
    /// another configuration than the first, an interface's first alternate setting when it has
    /// no setting 0). Each configuration is walked over its `wTotalLength`, as the kernel
    /// parses it: a malformed descriptor ends only its own configuration's walk, and a
    /// configuration header inside a configuration is passed over. Nil when the bytes do not
    /// hold a device descriptor followed by configurations.
    public static func everyInterfaceClass(_ bytes: [UInt8]) -> [UInt8]? {
        guard bytes.count >= 18, bytes[0] >= 18, bytes[1] == 1 else { return nil }
        var classes: [UInt8] = []
        var start = Int(bytes[0])
        while start < bytes.count {
            guard start + 4 <= bytes.count, bytes[start] >= 9, bytes[start + 1] == 2 else { return nil }
            let end = min(bytes.count, start + max(Int(bytes[start + 2]) | Int(bytes[start + 3]) << 8, 9))
            var i = start + Int(bytes[start])
            while i + 2 <= end {
                let length = Int(bytes[i])
                guard length >= 2, i + length <= end else { break }
                if bytes[i + 1] == 4 && length >= 9 { classes.append(bytes[i + 5]) }
                i += length
            }
            start = end
        }
        return classes
    }
}

extension DeviceReader {
    /// The device's `authorized` attribute: false for a device USB authorization keeps
    /// off the host, nil when there is no such attribute (or it cannot be read).
    public func usbAuthorized(sysPath: String) -> Bool? {
        let a = AttributeReader(dir: sysfs.path(sysPath), device: sysPath)
        guard let text = (try? a.optionalString("authorized")).flatMap({ $0 }) else { return nil }
        return text.trimmingWhitespace() != "0"
    }

    /// True when an unconfigured device is a hub in whatever the kernel may configure once it is
    /// authorized: every interface descriptor of every configuration (every alternate setting)
    /// is a hub's, or it has none and its device class is 9. A device that says "hub" only in part
    /// (its first configuration, alternate setting 0) would be authorized as a hub and configured
    /// as a keyboard. False when the descriptors cannot be read.
    func descriptorsSayHub(dir: String, deviceClass: UInt8) -> Bool {
        guard case .success(let bytes) = Sysfs.readBytes(dir + "/descriptors", limit: 64 * 1024),
              let classes = USBDescriptors.everyInterfaceClass(bytes) else { return false }
        return classes.isEmpty ? deviceClass == 9 : classes.allSatisfy { $0 == 9 }
    }

    /// Interfaces of an unconfigured, unauthorized device, from its `descriptors` file.
    func descriptorInterfaces(dir: String) -> [USBInterface] {
        guard case .success(let bytes) = Sysfs.readBytes(dir + "/descriptors", limit: 64 * 1024) else { return [] }
        return USBDescriptors.firstConfigurationInterfaces(bytes)
    }
}
