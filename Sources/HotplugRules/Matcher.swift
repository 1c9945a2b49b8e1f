import DeviceModel
import HotplugConfig

/// Matches one entry against one device. Every field present must match (AND).
public protocol RuleEntry: Sendable, Hashable {
    associatedtype Device
    /// What one decision computes once for all entries (e.g. lower-cased names).
    associatedtype Prepared
    static func prepare(_ device: Device) -> Prepared
    /// True when the entry would match if it were enabled.
    func matches(_ device: Prepared) -> Bool
    var disable: Bool { get }
    var description: String? { get }
    var location: SourceLocation? { get }
}

extension USBRule: RuleEntry {
    public static func prepare(_ d: USBDevice) -> (USBDevice, USBNames) { (d, USBNames(d)) }

    /// True when the entry would match (numeric fields first, names last).
    public func matches(_ d: USBDevice) -> Bool { matches(Self.prepare(d)) }

    /// Numeric fields are compared first; regular expressions run only when they pass.
    public func matches(_ p: (USBDevice, USBNames)) -> Bool {
        let d = p.0
        if let v = vendorId, v != d.vendorId { return false }
        if let v = productId, v != d.productId { return false }
        if let v = bus, v != d.bus { return false }
        if let v = port, v != d.port { return false }
        if let v = deviceClass, v != d.deviceClass { return false }
        if let v = deviceSubclass, v != d.deviceSubclass { return false }
        if let v = deviceProtocol, v != d.deviceProtocol { return false }
        if let v = removable, !v.contains(d.removable.rawValue) { return false }
        if interfaceClass != nil || interfaceSubclass != nil || interfaceProtocol != nil {
            // The three interface fields must hold together on one interface.
            let hit = d.interfaces.contains { i in
                (interfaceClass.map { $0 == i.interfaceClass } ?? true)
                    && (interfaceSubclass.map { $0 == i.interfaceSubclass } ?? true)
                    && (interfaceProtocol.map { $0 == i.interfaceProtocol } ?? true)
            }
            if !hit { return false }
        }
        let names = p.1
        if let p = vendorName, !names.vendor.contains(where: { p.matches($0.text, lowercased: $0.lowercased) }) { return false }
        if let p = productName, !names.product.contains(where: { p.matches($0.text, lowercased: $0.lowercased) }) { return false }
        return true
    }
}

/// A USB device's names, from usb.ids and from its own strings, with their
/// lower-cased copies: computed once per decision, not once per entry.
public struct USBNames: Sendable {
    var vendor: [(text: String, lowercased: String)]
    var product: [(text: String, lowercased: String)]

    init(_ d: USBDevice) {
        func both(_ a: String?, _ b: String?) -> [(String, String)] {
            var out: [(String, String)] = []
            if let a { out.append((a, a.lowercased())) }
            if let b, b != a { out.append((b, b.lowercased())) }
            return out
        }
        vendor = both(d.vendorName, d.manufacturer)
        product = both(d.productName, d.product)
    }
}

extension PCIRule: RuleEntry {
    public static func prepare(_ d: PCIDevice) -> PCIDevice { d }

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
        return Self.skipIfShared(device, Self.decide(device, in: configuration.pciPassthrough))
    }

    /// True when some input device can go somewhere (evdev passthrough is on):
    /// otherwise the daemon neither reads nor follows input devices.
    public var decidesInputDevices: Bool {
        if configuration.evdevRuleSets.contains(where: { !$0.disable }) { return true }
        guard let evdev = configuration.evdevPassthrough else { return false }
        return !evdev.disable
    }

    /// Where a non-USB input device goes (`evdevPassthrough`).
    public func decide(_ device: InputDevice) -> Decision {
        if device.hasUSBAncestor { return Decision(reason: .usbInput) }
        if !configuration.evdevRuleSets.isEmpty { return Self.decide(device, in: configuration.evdevRuleSets) }
        guard let evdev = configuration.evdevPassthrough, !evdev.disable else {
            return Decision(reason: .evdevDisabled)
        }
        return Decision(targetVm: evdev.targetVm, ruleSetDescription: "evdevPassthrough", reason: .matched)
    }

    static func decide<R: RuleEntry>(_ raw: R.Device, in sets: [RuleSet<R>]) -> Decision {
        let device = R.prepare(raw)
        var denied: Decision?
        var disabled: Decision?
        for setIndex in sets.indices {
            // Entries are visited in place, through the array's buffer: no copy of an
            // entry (its strings, patterns and sets) for each test.
            let setDisabled = sets[setIndex].disable
            let allowIndex: Int? = sets[setIndex].allow.withUnsafeBufferPointer { allow in
                for i in allow.indices where allow[i].matches(device) {
                    if allow[i].disable || setDisabled {
                        if disabled == nil {
                            disabled = Decision(ruleSetIndex: setIndex, ruleSetDescription: sets[setIndex].description,
                                                entry: ref(i, allow[i]), reason: .disabled)
                        }
                        continue
                    }
                    return i
                }
                return nil
            }
            guard let allowIndex else { continue }
            let set = sets[setIndex]
            if let denyIndex = set.deny.indices.first(where: { !set.deny[$0].disable && set.deny[$0].matches(device) }) {
                if denied == nil {
                    denied = Decision(ruleSetIndex: setIndex, ruleSetDescription: set.description,
                                      entry: ref(allowIndex, set.allow[allowIndex]), deniedBy: ref(denyIndex, set.deny[denyIndex]),
                                      reason: .denied)
                }
                continue
            }
            var decision = Decision(targetVm: set.targetVm, ruleSetIndex: setIndex, ruleSetDescription: set.description,
                                    entry: ref(allowIndex, set.allow[allowIndex]), reason: .matched)
            decision.options = set.options
            return decision
        }
        return denied ?? disabled ?? Decision(reason: .noRule)
    }

    private static func ref<R: RuleEntry>(_ index: Int, _ e: R) -> EntryRef {
        EntryRef(index: index, description: e.description, location: e.location.map { "\($0.line):\($0.column)" })
    }
}
