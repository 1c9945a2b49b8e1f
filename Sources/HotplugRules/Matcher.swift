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

    /// The entry's test (`USBTest`), made for this one call.
    public func matches(_ p: (USBDevice, USBNames)) -> Bool {
        var patterns: [NamePattern] = []
        let test = USBTest(self, patterns: &patterns)
        return patterns.withUnsafeBufferPointer { test.matches(USBFacts(p.0), p.0.interfaces, p.1, patterns: $0) }
    }
}

/// A USB entry as the matcher tests it: the numeric fields as plain values (-1 or nil: absent),
/// the `removable` kinds as bits, the name patterns as indexes into a table. Testing one
/// reads only what it compares, and copies and retains nothing: a decision against 500
/// entries spent nine tenths of its time copying the entries' strings, sets and patterns.
struct USBTest: Sendable {
    var vendorId: Int32, productId: Int32
    var bus: Int?, port: Int?
    var deviceClass: Int16, deviceSubclass: Int16, deviceProtocol: Int16
    var interfaceClass: Int16, interfaceSubclass: Int16, interfaceProtocol: Int16
    /// One bit per `Removability` case that matches (`removableBit`); all of them when absent.
    var removable: UInt8
    /// Indexes into the patterns table; -1: absent.
    var vendorName: Int32, productName: Int32

    /// Compiles `r`, appending its name patterns to `patterns`.
    init(_ r: USBRule, patterns: inout [NamePattern]) {
        func index(_ p: NamePattern?) -> Int32 {
            guard let p else { return -1 }
            patterns.append(p)
            return Int32(patterns.count - 1)
        }
        vendorId = r.vendorId.map(Int32.init) ?? -1
        productId = r.productId.map(Int32.init) ?? -1
        bus = r.bus
        port = r.port
        deviceClass = r.deviceClass.map(Int16.init) ?? -1
        deviceSubclass = r.deviceSubclass.map(Int16.init) ?? -1
        deviceProtocol = r.deviceProtocol.map(Int16.init) ?? -1
        interfaceClass = r.interfaceClass.map(Int16.init) ?? -1
        interfaceSubclass = r.interfaceSubclass.map(Int16.init) ?? -1
        interfaceProtocol = r.interfaceProtocol.map(Int16.init) ?? -1
        if let kinds = r.removable {
            removable = 0
            for k in Removability.allCases where kinds.contains(k.rawValue) { removable |= Self.removableBit(k) }
        } else {
            removable = .max
        }
        vendorName = index(r.vendorName)
        productName = index(r.productName)
    }

    static func removableBit(_ k: Removability) -> UInt8 {
        switch k {
        case .removable: 1
        case .fixed: 2
        case .unknown: 4
        }
    }

    /// Every field present must match (AND); numeric fields are compared first, and the
    /// patterns (`patterns[vendorName]`, ...) run only when they pass. The device comes as
    /// its plain values (`USBFacts`), its interfaces and its names.
    func matches(_ d: USBFacts, _ interfaces: [USBInterface], _ names: USBNames,
                 patterns: UnsafeBufferPointer<NamePattern>) -> Bool {
        if vendorId >= 0, vendorId != d.vendorId { return false }
        if productId >= 0, productId != d.productId { return false }
        if let bus, bus != d.bus { return false }
        if let port, port != d.port { return false }
        if deviceClass >= 0, deviceClass != d.deviceClass { return false }
        if deviceSubclass >= 0, deviceSubclass != d.deviceSubclass { return false }
        if deviceProtocol >= 0, deviceProtocol != d.deviceProtocol { return false }
        if removable & d.removable == 0 { return false }
        if interfaceClass >= 0 || interfaceSubclass >= 0 || interfaceProtocol >= 0 {
            // The three interface fields must hold together on one interface.
            let hit = interfaces.contains { i in
                (interfaceClass < 0 || interfaceClass == Int16(i.interfaceClass))
                    && (interfaceSubclass < 0 || interfaceSubclass == Int16(i.interfaceSubclass))
                    && (interfaceProtocol < 0 || interfaceProtocol == Int16(i.interfaceProtocol))
            }
            if !hit { return false }
        }
        if vendorName >= 0, !Self.any(names.vendor, patterns[Int(vendorName)]) { return false }
        if productName >= 0, !Self.any(names.product, patterns[Int(productName)]) { return false }
        return true
    }

    private static func any(_ texts: [(text: String, lowercased: String)], _ p: NamePattern) -> Bool {
        texts.contains { p.matches($0.text, lowercased: $0.lowercased) }
    }
}

/// A USB device's values that `USBTest` compares, in its types.
struct USBFacts {
    var vendorId: Int32, productId: Int32
    var bus: Int, port: Int
    var deviceClass: Int16, deviceSubclass: Int16, deviceProtocol: Int16
    /// `USBTest.removableBit` of the device's kind.
    var removable: UInt8

    init(_ d: USBDevice) {
        vendorId = Int32(d.vendorId)
        productId = Int32(d.productId)
        bus = d.bus
        port = d.port
        deviceClass = Int16(d.deviceClass)
        deviceSubclass = Int16(d.deviceSubclass)
        deviceProtocol = Int16(d.deviceProtocol)
        removable = USBTest.removableBit(d.removable)
    }
}

/// Every USB entry of a configuration compiled (`USBTest`), in one array: each rule set's
/// allow entries, then its deny entries.
struct USBTable: Sendable {
    var tests: [USBTest] = []
    /// Per rule set, where its allow and deny entries are in `tests`.
    var sets: [(allow: Range<Int>, deny: Range<Int>)] = []
    var patterns: [NamePattern] = []

    init(_ ruleSets: [RuleSet<USBRule>]) {
        for set in ruleSets {
            let a = tests.count
            for r in set.allow { tests.append(USBTest(r, patterns: &patterns)) }
            let d = tests.count
            for r in set.deny { tests.append(USBTest(r, patterns: &patterns)) }
            sets.append((a..<d, d..<tests.count))
        }
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
    /// `configuration.usbPassthrough` compiled for testing.
    private let usb: USBTable

    public init(_ configuration: Configuration) {
        self.configuration = configuration
        usb = USBTable(configuration.usbPassthrough)
    }

    /// Where a USB device goes. Hubs and the host's boot disk never go anywhere.
    public func decide(_ device: USBDevice) -> Decision {
        if device.isHub { return Decision(reason: .hub) }
        if let hold = device.bootHold { return Decision(reason: .bootDevice, bootHold: hold) }
        let facts = USBFacts(device), interfaces = device.interfaces, names = USBNames(device)
        // The closure reads the table through locals: through `self`, each test copied the matcher.
        let table = usb
        return table.tests.withUnsafeBufferPointer { tests in
            table.patterns.withUnsafeBufferPointer { patterns in
                table.sets.withUnsafeBufferPointer { sets in
                    Self.decide(in: configuration.usbPassthrough) { set, deny, i in
                        tests[(deny ? sets[set].deny : sets[set].allow).lowerBound + i]
                            .matches(facts, interfaces, names, patterns: patterns)
                    }
                }
            }
        }
    }

    /// Where a PCI device goes. Bridges and the boot disk's controller never go anywhere.
    public func decide(_ device: PCIDevice) -> Decision {
        if device.isBridge { return Decision(reason: .bridge) }
        if let hold = device.bootHold { return Decision(reason: .bootDevice, bootHold: hold) }
        return Self.skipIfShared(device, Self.decide(device, in: configuration.pciPassthrough))
    }

    /// True when some input device can go somewhere (evdev passthrough is on):
    /// otherwise the daemon neither reads nor follows input devices.
    public var decidesInputDevices: Bool {
        if configuration.evdevRuleSets.contains(where: { !$0.disable }) { return true }
        guard let evdev = configuration.evdevPassthrough else { return false }
        return !evdev.disable
    }

    /// The input kinds `evdevPassthrough`'s object form takes.
    static let evdevKinds: Set<InputKind> = [.keyboard, .mouse, .touchpad, .touchscreen, .tablet, .pointingStick]

    /// Where a non-USB input device goes (`evdevPassthrough`).
    public func decide(_ device: InputDevice) -> Decision {
        if device.hasUSBAncestor { return Decision(reason: .usbInput) }
        if !configuration.evdevRuleSets.isEmpty { return Self.decide(device, in: configuration.evdevRuleSets) }
        guard let evdev = configuration.evdevPassthrough, !evdev.disable else {
            return Decision(reason: .evdevDisabled)
        }
        // What udev would call a keyboard, mouse, touchpad, touchscreen or tablet (as the
        // reference vhotplug takes), and a pointing stick: buttons and switches stay with the
        // host (QEMU grabs what it opens: logind would lose the power button and the lid).
        guard device.kinds.contains(where: Self.evdevKinds.contains) else { return Decision(reason: .inputKind) }
        return Decision(targetVm: evdev.targetVm, ruleSetDescription: "evdevPassthrough", reason: .matched)
    }

    static func decide<R: RuleEntry>(_ raw: R.Device, in sets: [RuleSet<R>]) -> Decision {
        let device = R.prepare(raw)
        return decide(in: sets) { set, deny, i in (deny ? sets[set].deny[i] : sets[set].allow[i]).matches(device) }
    }

    /// The decision, with `test(set, deny, index)` saying whether an entry matches the device
    /// (enabled or not): `deny` false for `allow[index]` of rule set `set`, true for `deny[index]`.
    static func decide<R: RuleEntry>(in sets: [RuleSet<R>], test: (Int, Bool, Int) -> Bool) -> Decision {
        // The first denied and the first disabled match, as positions: a `Decision` held in
        // the loop was copied at every entry.
        var denied: (set: Int, allow: Int, deny: Int)?
        var disabled: (set: Int, allow: Int)?
        for setIndex in sets.indices {
            let setDisabled = sets[setIndex].disable
            var allowIndex: Int?
            for i in 0..<sets[setIndex].allow.count where test(setIndex, false, i) {
                if setDisabled || sets[setIndex].allow[i].disable {
                    if disabled == nil { disabled = (setIndex, i) }
                    continue
                }
                allowIndex = i
                break
            }
            guard let allowIndex else { continue }
            let set = sets[setIndex]
            if let denyIndex = set.deny.indices.first(where: { !set.deny[$0].disable && test(setIndex, true, $0) }) {
                if denied == nil { denied = (setIndex, allowIndex, denyIndex) }
                continue
            }
            var decision = Decision(targetVm: set.targetVm, ruleSetIndex: setIndex, ruleSetDescription: set.description,
                                    entry: ref(allowIndex, set.allow[allowIndex]), reason: .matched)
            decision.options = set.options
            return decision
        }
        if let (s, a, d) = denied {
            return Decision(ruleSetIndex: s, ruleSetDescription: sets[s].description, entry: ref(a, sets[s].allow[a]),
                            deniedBy: ref(d, sets[s].deny[d]), reason: .denied)
        }
        if let (s, a) = disabled {
            return Decision(ruleSetIndex: s, ruleSetDescription: sets[s].description, entry: ref(a, sets[s].allow[a]), reason: .disabled)
        }
        return Decision(reason: .noRule)
    }

    private static func ref<R: RuleEntry>(_ index: Int, _ e: R) -> EntryRef {
        EntryRef(index: index, description: e.description, location: e.location.map { "\($0.line):\($0.column)" })
    }
}
