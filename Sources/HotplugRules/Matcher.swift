import DeviceModel
import HotplugConfig

/// Matches one entry against one device. Every field present must match (AND).
public protocol RuleEntry: Sendable, Hashable {
    associatedtype Device
    /// True when the entry would match if it were enabled.
    func matches(_ device: Device) -> Bool
    var disable: Bool { get }
    var description: String? { get }
    var location: SourceLocation? { get }
}

extension USBRule: RuleEntry {
    /// Numeric fields are compared first; regular expressions run only when they pass.
    public func matches(_ d: USBDevice) -> Bool {
        if let v = vendorId, v != d.vendorId { return false }
        if let v = productId, v != d.productId { return false }
        if let v = bus, v != d.bus { return false }
        if let v = port, v != d.port { return false }
        if let v = deviceClass, v != d.deviceClass { return false }
        if let v = deviceSubclass, v != d.deviceSubclass { return false }
        if let v = deviceProtocol, v != d.deviceProtocol { return false }
        if interfaceClass != nil || interfaceSubclass != nil || interfaceProtocol != nil {
            // The three interface fields must hold together on one interface.
            let hit = d.interfaces.contains { i in
                (interfaceClass.map { $0 == i.interfaceClass } ?? true)
                    && (interfaceSubclass.map { $0 == i.interfaceSubclass } ?? true)
                    && (interfaceProtocol.map { $0 == i.interfaceProtocol } ?? true)
            }
            if !hit { return false }
        }
        if let p = vendorName, !Self.either(p, d.vendorName, d.manufacturer) { return false }
        if let p = productName, !Self.either(p, d.productName, d.product) { return false }
        return true
    }

    /// The database name or the device's own string.
    private static func either(_ p: NamePattern, _ a: String?, _ b: String?) -> Bool {
        if let a, p.matches(a) { return true }
        if let b, b != a, p.matches(b) { return true }
        return false
    }
}

extension PCIRule: RuleEntry {
    public func matches(_ d: PCIDevice) -> Bool {
        if let v = vendorId, v != d.vendorId { return false }
        if let v = deviceId, v != d.deviceId { return false }
        if let v = deviceClass, v != d.deviceClass { return false }
        if let v = deviceSubclass, v != d.deviceSubclass { return false }
        if let v = deviceProgIf, v != d.deviceProgIf { return false }
        if let v = address, v != d.address { return false }
        return true
    }
}

/// The rule matcher: pure, no I/O. Rule sets are tried in file order, disabled
/// ones skipped; a set takes a device when an enabled allow entry matches and no
/// enabled deny entry of the same set matches; the first set that takes it decides.
public struct Matcher: Sendable {
    public let configuration: Configuration

    public init(_ configuration: Configuration) {
        self.configuration = configuration
    }

    /// Where a USB device goes. Hubs and the host's boot disk never go anywhere.
    public func decide(_ device: USBDevice) -> Decision {
        if device.isHub { return Decision(reason: .hub) }
        if device.holdsHostBootFilesystem { return Decision(reason: .bootDevice) }
        return Self.decide(device, in: configuration.usbPassthrough)
    }

    /// Where a PCI device goes. Bridges and the boot disk's controller never go anywhere.
    public func decide(_ device: PCIDevice) -> Decision {
        if device.isBridge { return Decision(reason: .bridge) }
        if device.holdsHostBootFilesystem { return Decision(reason: .bootDevice) }
        return Self.decide(device, in: configuration.pciPassthrough)
    }

    /// Where a non-USB input device goes (`evdevPassthrough`).
    public func decide(_ device: InputDevice) -> Decision {
        if device.hasUSBAncestor { return Decision(reason: .usbInput) }
        guard let evdev = configuration.evdevPassthrough, !evdev.disable else {
            return Decision(reason: .evdevDisabled)
        }
        return Decision(targetVm: evdev.targetVm, ruleSetDescription: "evdevPassthrough", reason: .matched)
    }

    static func decide<R: RuleEntry>(_ device: R.Device, in sets: [RuleSet<R>]) -> Decision {
        var denied: Decision?
        var disabled: Decision?
        for (setIndex, set) in sets.enumerated() {
            // First allow entry that matches, enabled ones first in file order.
            var allowHit: (Int, R)?
            for (i, entry) in set.allow.enumerated() where entry.matches(device) {
                if entry.disable || set.disable {
                    if disabled == nil {
                        disabled = Decision(ruleSetIndex: setIndex, ruleSetDescription: set.description,
                                            entry: ref(i, entry), reason: .disabled)
                    }
                    continue
                }
                allowHit = (i, entry)
                break
            }
            guard let (allowIndex, allowEntry) = allowHit else { continue }
            if let (denyIndex, denyEntry) = set.deny.enumerated().first(where: { !$0.element.disable && $0.element.matches(device) }) {
                if denied == nil {
                    denied = Decision(ruleSetIndex: setIndex, ruleSetDescription: set.description,
                                      entry: ref(allowIndex, allowEntry), deniedBy: ref(denyIndex, denyEntry),
                                      reason: .denied)
                }
                continue
            }
            return Decision(targetVm: set.targetVm, ruleSetIndex: setIndex, ruleSetDescription: set.description,
                            entry: ref(allowIndex, allowEntry), reason: .matched)
        }
        return denied ?? disabled ?? Decision(reason: .noRule)
    }

    private static func ref<R: RuleEntry>(_ index: Int, _ e: R) -> EntryRef {
        EntryRef(index: index, description: e.description, location: e.location.map { "\($0.line):\($0.column)" })
    }
}
