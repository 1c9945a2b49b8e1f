import Foundation

/// Where something stands in a configuration file: 1-based line and column,
/// plus the JSON path (`$.usbPassthrough[0].allow[1].vendorId`).
public struct SourceLocation: Sendable, Hashable, CustomStringConvertible {
    public var line: Int
    public var column: Int
    public var path: String
    public init(line: Int, column: Int, path: String) {
        self.line = line
        self.column = column
        self.path = path
    }
    public var description: String { "\(line):\(column)" }
}

/// A case-insensitive regular expression, searched anywhere in a name
/// (Python `re.search` semantics, as the reference vhotplug uses).
///
/// Most patterns people write are plain words (`ethernet`, `.*ethernet.*`,
/// `^Logitech$`): those are recognised when compiled and matched by string
/// comparison on the lower-cased name, without running the regex engine.
public struct NamePattern: @unchecked Sendable, Hashable {
    /// How a literal pattern is matched.
    public enum Literal: Sendable, Hashable {
        case contains(String)
        case equals(String)
        case prefix(String)
        case suffix(String)
    }

    /// The expression as written in the configuration.
    public let source: String
    /// Set when the expression is a plain ASCII word with optional anchors (lower case).
    public let literal: Literal?
    private let regex: NSRegularExpression

    /// Compiles `source`; throws when it is not a valid expression.
    public init(_ source: String) throws {
        self.source = source
        self.regex = try NSRegularExpression(pattern: source, options: [.caseInsensitive])
        self.literal = Self.literalForm(source)
    }

    /// True when the pattern occurs anywhere in `text`.
    public func matches(_ text: String) -> Bool {
        matches(text, lowercased: literal == nil ? text : text.lowercased())
    }

    /// The same, with the caller's lower-cased copy of `text` (computed once per device).
    public func matches(_ text: String, lowercased: String) -> Bool {
        switch literal {
        case .contains(let w): return w.isEmpty || lowercased.contains(w)
        case .equals(let w): return lowercased == w
        case .prefix(let w): return lowercased.hasPrefix(w)
        case .suffix(let w): return lowercased.hasSuffix(w)
        case nil:
            return regex.firstMatch(in: text, options: [], range: NSRange(text.startIndex..., in: text)) != nil
        }
    }

    /// `word`, `.*word.*`, `^word`, `word$`, `^word$` with word in [A-Za-z0-9 _,-]
    /// (no regex metacharacters, ASCII so lower-casing equals case folding).
    static func literalForm(_ source: String) -> Literal? {
        var s = Substring(source)
        var anchoredStart = false, anchoredEnd = false
        if s.hasPrefix("^") { anchoredStart = true; s = s.dropFirst() }
        else if s.hasPrefix(".*") { s = s.dropFirst(2) }
        if s.hasSuffix("$") && !s.hasSuffix("\\$") { anchoredEnd = true; s = s.dropLast() }
        else if s.hasSuffix(".*") { s = s.dropLast(2) }
        let allowed = s.unicodeScalars.allSatisfy { c in
            (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9") || c == " " || c == "_" || c == "," || c == "-"
        }
        guard allowed else { return nil }
        let w = s.lowercased()
        switch (anchoredStart, anchoredEnd) {
        case (true, true): return .equals(w)
        case (true, false): return .prefix(w)
        case (false, true): return .suffix(w)
        case (false, false): return .contains(w)
        }
    }

    public static func == (lhs: NamePattern, rhs: NamePattern) -> Bool { lhs.source == rhs.source }
    public func hash(into hasher: inout Hasher) { hasher.combine(source) }
}

/// One allow or deny entry for USB devices. Only the fields present take part in matching.
public struct USBRule: Sendable, Hashable {
    public var vendorId: UInt16?
    public var productId: UInt16?
    public var vendorName: NamePattern?
    public var productName: NamePattern?
    public var bus: Int?
    public var port: Int?
    public var interfaceClass: UInt8?
    public var interfaceSubclass: UInt8?
    public var interfaceProtocol: UInt8?
    public var deviceClass: UInt8?
    public var deviceSubclass: UInt8?
    public var deviceProtocol: UInt8?
    public var description: String?
    public var disable: Bool
    /// Where the entry starts in the file.
    public var location: SourceLocation?

    public init(vendorId: UInt16? = nil, productId: UInt16? = nil, vendorName: NamePattern? = nil,
                productName: NamePattern? = nil, bus: Int? = nil, port: Int? = nil,
                interfaceClass: UInt8? = nil, interfaceSubclass: UInt8? = nil, interfaceProtocol: UInt8? = nil,
                deviceClass: UInt8? = nil, deviceSubclass: UInt8? = nil, deviceProtocol: UInt8? = nil,
                description: String? = nil, disable: Bool = false, location: SourceLocation? = nil) {
        self.vendorId = vendorId
        self.productId = productId
        self.vendorName = vendorName
        self.productName = productName
        self.bus = bus
        self.port = port
        self.interfaceClass = interfaceClass
        self.interfaceSubclass = interfaceSubclass
        self.interfaceProtocol = interfaceProtocol
        self.deviceClass = deviceClass
        self.deviceSubclass = deviceSubclass
        self.deviceProtocol = deviceProtocol
        self.description = description
        self.disable = disable
        self.location = location
    }
}

/// One allow or deny entry for PCI devices.
public struct PCIRule: Sendable, Hashable {
    /// Canonical `dddd:bb:dd.f`, lower case.
    public var address: String?
    public var vendorId: UInt16?
    public var deviceId: UInt16?
    public var deviceClass: UInt8?
    public var deviceSubclass: UInt8?
    public var deviceProgIf: UInt8?
    public var description: String?
    public var disable: Bool
    public var location: SourceLocation?

    public init(address: String? = nil, vendorId: UInt16? = nil, deviceId: UInt16? = nil,
                deviceClass: UInt8? = nil, deviceSubclass: UInt8? = nil, deviceProgIf: UInt8? = nil,
                description: String? = nil, disable: Bool = false, location: SourceLocation? = nil) {
        self.address = address
        self.vendorId = vendorId
        self.deviceId = deviceId
        self.deviceClass = deviceClass
        self.deviceSubclass = deviceSubclass
        self.deviceProgIf = deviceProgIf
        self.description = description
        self.disable = disable
        self.location = location
    }
}

/// A rule set: devices allowed (and not denied) go to `targetVm`.
public struct RuleSet<Rule: Sendable & Hashable>: Sendable, Hashable {
    public var description: String?
    public var targetVm: String
    public var allow: [Rule]
    public var deny: [Rule]
    public var disable: Bool
    public var location: SourceLocation?

    public init(description: String? = nil, targetVm: String, allow: [Rule] = [], deny: [Rule] = [],
                disable: Bool = false, location: SourceLocation? = nil) {
        self.description = description
        self.targetVm = targetVm
        self.allow = allow
        self.deny = deny
        self.disable = disable
        self.location = location
    }
}

public typealias USBRuleSet = RuleSet<USBRule>
public typealias PCIRuleSet = RuleSet<PCIRule>

/// `evdevPassthrough`: non-USB input devices go to one QEMU VM as virtio-input-host-pci.
public struct EvdevPassthrough: Sendable, Hashable {
    public var disable: Bool
    public var pcieBusPrefix: String?
    public var targetVm: String
    public var location: SourceLocation?
    public init(disable: Bool = false, pcieBusPrefix: String? = nil, targetVm: String, location: SourceLocation? = nil) {
        self.disable = disable
        self.pcieBusPrefix = pcieBusPrefix
        self.targetVm = targetVm
        self.location = location
    }
}

/// The hypervisor a VM runs under.
public enum VMType: String, Sendable, Hashable, CaseIterable {
    case qemu
    case crosvm
}

/// A VM devices can be given to.
public struct VMDefinition: Sendable, Hashable {
    public var name: String
    public var type: VMType
    /// QMP socket (QEMU) or control socket (crosvm).
    public var socket: String
    public var location: SourceLocation?
    public init(name: String, type: VMType, socket: String, location: SourceLocation? = nil) {
        self.name = name
        self.type = type
        self.socket = socket
        self.location = location
    }
}

/// A whole, validated configuration.
public struct Configuration: Sendable, Hashable {
    public var usbPassthrough: [USBRuleSet]
    public var pciPassthrough: [PCIRuleSet]
    public var evdevPassthrough: EvdevPassthrough?
    public var vms: [VMDefinition]

    public init(usbPassthrough: [USBRuleSet] = [], pciPassthrough: [PCIRuleSet] = [],
                evdevPassthrough: EvdevPassthrough? = nil, vms: [VMDefinition] = []) {
        self.usbPassthrough = usbPassthrough
        self.pciPassthrough = pciPassthrough
        self.evdevPassthrough = evdevPassthrough
        self.vms = vms
    }

    /// The VM of that name, if one is defined.
    public func vm(named name: String) -> VMDefinition? { vms.first { $0.name == name } }
}
