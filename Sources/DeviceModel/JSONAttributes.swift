import JSONKit

/// Four lower-case hex digits: `046d`.
public func hex4(_ v: UInt16) -> String { hexDigits(UInt64(v), count: 4) }

/// Two lower-case hex digits: `0e`.
public func hex2(_ v: UInt8) -> String { hexDigits(UInt64(v), count: 2) }

/// Six lower-case hex digits: a PCI class, `060100`.
public func hex6(_ v: UInt64) -> String { hexDigits(v, count: 6) }

/// The low `count` nibbles of `v` as lower-case hex, written in place (a small string:
/// no allocation; every log name and attribute list has some).
func hexDigits(_ v: UInt64, count: Int) -> String {
    String(unsafeUninitializedCapacity: count) { buf in
        for k in 0..<count {
            let nibble = UInt8((v >> (4 * UInt64(count - 1 - k))) & 0xF)
            buf[k] = nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") + nibble - 10
        }
        return count
    }
}

extension USBDevice {
    /// The attributes under the rule parameter names (`inspect --json`).
    public var jsonAttributes: JSONText {
        .object([
            ("sysName", .string(sysName)), ("bus", .int(bus)), ("devnum", .int(devnum)), ("port", .int(port)),
            ("portPath", .string(portPath.map(String.init).joined(separator: "."))),
            ("vendorId", .string(hex4(vendorId))), ("productId", .string(hex4(productId))),
            ("bcdDevice", .string(hex4(bcdDevice))),
            ("deviceClass", .int(Int(deviceClass))), ("deviceSubclass", .int(Int(deviceSubclass))),
            ("deviceProtocol", .int(Int(deviceProtocol))),
            ("manufacturer", .optional(manufacturer)), ("product", .optional(product)), ("serial", .optional(serial)),
            ("vendorName", .optional(vendorName)), ("productName", .optional(productName)),
            ("interfaces", .array(interfaces.map { i in
                .object([("interfaceNumber", .int(Int(i.interfaceNumber))), ("interfaceClass", .int(Int(i.interfaceClass))),
                         ("interfaceSubclass", .int(Int(i.interfaceSubclass))),
                         ("interfaceProtocol", .int(Int(i.interfaceProtocol))), ("driver", .optional(i.driver))])
            })),
            ("speed", .optional(speed)), ("removable", .string(removable.rawValue)), ("devnode", .string(devnode)),
            ("isHub", .bool(isHub)), ("bootDevice", .bool(holdsHostBootFilesystem)),
        ])
    }
}

extension PCIDevice {
    /// The attributes under the rule parameter names (`inspect --json`).
    public var jsonAttributes: JSONText {
        .object([
            ("address", .string(address)), ("vendorId", .string(hex4(vendorId))), ("deviceId", .string(hex4(deviceId))),
            ("subsystemVendorId", .string(hex4(subsystemVendorId))), ("subsystemDeviceId", .string(hex4(subsystemDeviceId))),
            ("deviceClass", .int(Int(deviceClass))), ("deviceSubclass", .int(Int(deviceSubclass))),
            ("deviceProgIf", .int(Int(deviceProgIf))),
            ("vendorName", .optional(vendorName)), ("deviceName", .optional(deviceName)), ("driver", .optional(driver)),
            ("iommuGroup", .optional(iommuGroup)), ("iommuGroupPeers", .array(iommuGroupPeers.map(JSONText.string))),
            ("isBridge", .bool(isBridge)), ("bootDevice", .bool(holdsHostBootFilesystem)),
        ])
    }
}

extension InputDevice {
    /// The attributes (`inspect --json`).
    public var jsonAttributes: JSONText {
        .object([
            ("sysName", .string(sysName)), ("devnode", .string(devnode)), ("name", .optional(name)), ("phys", .optional(phys)),
            ("busType", .int(Int(busType))), ("vendorId", .string(hex4(vendorId))), ("productId", .string(hex4(productId))),
            ("hasUSBAncestor", .bool(hasUSBAncestor)), ("kinds", .array(kinds.map { .string($0.rawValue) })),
            ("pathTag", .optional(pathTag)),
        ])
    }
}
