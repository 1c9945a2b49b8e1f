import DeviceModel
import JSONKit

/// Replies and notifications of the control protocol, field names as the
/// reference vhotplug writes them (reference-api.md).
public enum APIReply {
    /// `{"result": "ok", ...}`.
    public static func ok(_ fields: [(String, JSONText)] = []) -> JSONText {
        .object([("result", .string("ok"))] + fields)
    }

    /// `{"result": "failed", "error": "..."}`.
    public static func failed(_ error: String) -> JSONText {
        .object([("result", .string("failed")), ("error", .string(error))])
    }

    /// True for an `ok` reply.
    public static func isOK(_ reply: JSONText) -> Bool {
        if case .object(let members) = reply, let r = members.first(where: { $0.0 == "result" }), r.1 == .string("ok") {
            return true
        }
        return false
    }
}

/// What the daemon knows of a device beyond its sysfs values, for list items.
public struct APIPlacement: Sendable, Hashable {
    /// VMs the device may go to.
    public var allowedVms: [String]
    /// The VM holding it, if any.
    public var vm: String?
    /// The rule set's tag.
    public var tag: String?
    /// The user detached it ("disconnected" mark).
    public var disconnected: Bool
    /// PCI: listed only because it shares an IOMMU group.
    public var iommuMember: Bool

    public init(allowedVms: [String], vm: String?, tag: String? = nil, disconnected: Bool = false, iommuMember: Bool = false) {
        self.allowedVms = allowedVms
        self.vm = vm
        self.tag = tag
        self.disconnected = disconnected
        self.iommuMember = iommuMember
    }
}

extension USBDevice {
    /// `":030101:030102:"`: the interfaces' class, subclass and protocol in hex, between colons,
    /// each triple once, in the order first seen (udev's ID_USB_INTERFACES, which the reference
    /// sends). Nil without interfaces (udev then sets no property: the reference sends null).
    public var interfaceString: String? {
        var triples: [String] = []
        for i in interfaces {
            let triple = hex2(i.interfaceClass) + hex2(i.interfaceSubclass) + hex2(i.interfaceProtocol)
            if !triples.contains(triple) { triples.append(triple) }
        }
        return triples.isEmpty ? nil : ":" + triples.joined(separator: ":") + ":"
    }

    /// The device object of the protocol (`usb_device`, items of `usb_devices`); with a
    /// placement, the list fields (`allowed_vms`, `vm`, and this server's `tag`, `disconnected`).
    public func apiObject(_ placement: APIPlacement? = nil) -> JSONText {
        var fields: [(String, JSONText)] = [
            ("device_node", .string(devnode)),
            ("vid", .string(hex4(vendorId))), ("pid", .string(hex4(productId))),
            // Always strings, as the reference's udev names (ID_VENDOR, ID_MODEL) are: the IDs when
            // neither usb.ids nor the device names it (applets join the two names).
            ("vendor_name", .string(vendorName ?? manufacturer ?? hex4(vendorId))),
            ("product_name", .string(productName ?? product ?? hex4(productId))),
            ("interfaces", .optional(interfaceString)),
            ("device_class", .int(Int(deviceClass))), ("device_subclass", .int(Int(deviceSubclass))),
            ("device_protocol", .int(Int(deviceProtocol))),
            ("busnum", .int(bus)), ("devnum", .int(devnum)), ("portnum", .int(port)),
            ("serial", .optional(serial)), ("sys_name", .string(sysName)),
        ]
        if let p = placement {
            fields += [("allowed_vms", .array(p.allowedVms.map(JSONText.string))), ("vm", .optional(p.vm)),
                       ("tag", .optional(p.tag)), ("disconnected", .bool(p.disconnected))]
        }
        return .object(fields)
    }
}

extension PCIDevice {
    /// The device object of the protocol (`pci_device`, items of `pci_devices`).
    public func apiObject(_ placement: APIPlacement? = nil) -> JSONText {
        var fields: [(String, JSONText)] = [
            ("address", .string(address)), ("driver", .optional(driver)),
            ("vendor_id", .int(Int(vendorId))), ("device_id", .int(Int(deviceId))),
            // Upper-case hex, as the kernel's PCI_ID and PCI_SUBSYS_ID, which the reference sends.
            ("vid", .string(upperHex4(vendorId))), ("did", .string(upperHex4(deviceId))),
            ("vendor_name", .string(vendorName ?? upperHex4(vendorId))), ("device_name", .string(deviceName ?? upperHex4(deviceId))),
            ("pci_class", .int(Int(deviceClass))), ("pci_subclass", .int(Int(deviceSubclass))),
            ("pci_prog_if", .int(Int(deviceProgIf))),
            ("pci_subsystem_vendor_id", .string(upperHex4(subsystemVendorId))), ("pci_subsystem_id", .string(upperHex4(subsystemDeviceId))),
        ]
        if let p = placement {
            fields += [("allowed_vms", .array(p.allowedVms.map(JSONText.string))), ("vm", .optional(p.vm)),
                       ("tag", .optional(p.tag)), ("disconnected", .bool(p.disconnected))]
            if p.iommuMember { fields.append(("iommu_member", .bool(true))) }
        }
        return .object(fields)
    }
}

/// The notifications of the protocol.
public enum APINotification {
    public static func usbConnected(_ d: USBDevice) -> JSONText {
        .object([("event", .string("usb_connected")), ("usb_device", d.apiObject())])
    }

    public static func usbDisconnected(_ d: USBDevice) -> JSONText {
        .object([("event", .string("usb_disconnected")), ("usb_device", d.apiObject())])
    }

    public static func usbAttached(_ d: USBDevice, vm: String) -> JSONText {
        .object([("event", .string("usb_attached")), ("usb_device", d.apiObject()), ("vm", .string(vm))])
    }

    public static func usbDetached(_ d: USBDevice, vm: String) -> JSONText {
        .object([("event", .string("usb_detached")), ("usb_device", d.apiObject()), ("vm", .string(vm))])
    }

    public static func usbSelectVM(_ d: USBDevice, allowedVms: [String]) -> JSONText {
        .object([("event", .string("usb_select_vm")), ("usb_device", d.apiObject()),
                 ("allowed_vms", .array(allowedVms.map(JSONText.string)))])
    }

    public static func pciAttached(_ d: PCIDevice, vm: String) -> JSONText {
        .object([("event", .string("pci_attached")), ("pci_device", d.apiObject()), ("vm", .string(vm))])
    }

    public static func pciDetached(_ d: PCIDevice, vm: String) -> JSONText {
        .object([("event", .string("pci_detached")), ("pci_device", d.apiObject()), ("vm", .string(vm))])
    }
}

/// `A0F0`: four upper-case hex digits.
func upperHex4(_ v: UInt16) -> String { hex4(v).uppercased() }
