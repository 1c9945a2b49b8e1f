import JSONKit

/// Where something stands in a configuration file: 1-based line and column,
/// plus the JSON path (`$.usbPassthrough[0].allow[1].vendorId`).
public struct SourceLocation: Sendable, Hashable, CustomStringConvertible {
    /// 1-based line.
    public var line: Int
    /// 1-based column, counted in Unicode scalars.
    public var column: Int
    /// JSON path, such as `$.vms[0]`.
    public var path: String
    /// Creates a location.
    public init(line: Int, column: Int, path: String) {
        self.line = line
        self.column = column
        self.path = path
    }
    /// `LINE:COL`.
    public var description: String { "\(line):\(column)" }
}

/// A case-insensitive regular expression, searched anywhere in a name (Python's
/// `re.search`). The reference vhotplug anchors at the name's start (`re.match`): every
/// pattern written for it matches here what it matched there (`.*ethernet.*`, `Logitech`),
/// and a bare word matches inside a name too (`keyboard` in "USB Keyboard").
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
    /// Swift's regular expressions (the standard library's, no Foundation), case-insensitive.
    /// Boxed: `Regex` comes from a library-evolution module, so held inline it would give
    /// every rule a layout known only at run time (each copy through value witnesses:
    /// the matcher was 1.7 times slower).
    private let regex: RegexBox

    /// Compiles `source`; throws when it is not a valid expression.
    public init(_ source: String) throws {
        self.source = source
        self.regex = RegexBox(try Regex(source).ignoresCase())
        if let unknown = CharacterNames.firstUnknown(in: source) {
            throw UnknownCharacterName(escape: unknown)
        }
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
            return (try? regex.regex.firstMatch(in: text)) != nil
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

    /// Patterns are equal when their sources are.
    public static func == (lhs: NamePattern, rhs: NamePattern) -> Bool { lhs.source == rhs.source }
    /// Hashes the source.
    public func hash(into hasher: inout Hasher) { hasher.combine(source) }
}

/// One allow or deny entry for USB devices. Only the fields present take part in matching.
public struct USBRule: Sendable, Hashable {
    /// `idVendor`, from a hex string such as `"046d"`.
    public var vendorId: UInt16?
    /// `idProduct`, from a hex string such as `"c52b"`.
    public var productId: UInt16?
    /// Matched against the vendor name.
    public var vendorName: NamePattern?
    /// Matched against the product name.
    public var productName: NamePattern?
    /// USB bus number (0-255).
    public var bus: Int?
    /// USB root port (0-255).
    public var port: Int?
    /// Matches when at least one interface has this class.
    public var interfaceClass: UInt8?
    /// Matches when at least one interface has this subclass.
    public var interfaceSubclass: UInt8?
    /// Matches when at least one interface has this protocol.
    public var interfaceProtocol: UInt8?
    /// `bDeviceClass`.
    public var deviceClass: UInt8?
    /// `bDeviceSubClass`.
    public var deviceSubclass: UInt8?
    /// `bDeviceProtocol`.
    public var deviceProtocol: UInt8?
    /// `removable`: the port kinds (`fixed`, `removable`, `unknown`) that match.
    public var removable: Set<String>?
    /// Free text, for logs.
    public var description: String?
    /// A disabled entry is ignored.
    public var disable: Bool
    /// Where the entry starts in the file.
    public var location: SourceLocation?

    /// Creates an entry; fields left nil do not take part in matching.
    public init(vendorId: UInt16? = nil, productId: UInt16? = nil, vendorName: NamePattern? = nil,
                productName: NamePattern? = nil, bus: Int? = nil, port: Int? = nil,
                interfaceClass: UInt8? = nil, interfaceSubclass: UInt8? = nil, interfaceProtocol: UInt8? = nil,
                deviceClass: UInt8? = nil, deviceSubclass: UInt8? = nil, deviceProtocol: UInt8? = nil,
                removable: Set<String>? = nil,
                description: String? = nil, disable: Bool = false, location: SourceLocation? = nil) {
        self.removable = removable
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
    /// Vendor ID, from a hex string such as `"8086"`.
    public var vendorId: UInt16?
    /// Device ID, from a hex string such as `"a7a1"`.
    public var deviceId: UInt16?
    /// Base class (0-255).
    public var deviceClass: UInt8?
    /// Subclass (0-255).
    public var deviceSubclass: UInt8?
    /// Programming interface (0-255).
    public var deviceProgIf: UInt8?
    /// Free text, for logs.
    public var description: String?
    /// A disabled entry is ignored.
    public var disable: Bool
    /// Where the entry starts in the file.
    public var location: SourceLocation?

    /// Creates an entry; fields left nil do not take part in matching.
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
    /// Free text, for logs.
    public var description: String?
    /// The name of the VM (in `Configuration.vms`) the devices go to.
    public var targetVm: String
    /// Entries a device must match one of.
    public var allow: [Rule]
    /// Entries a device must match none of.
    public var deny: [Rule]
    /// A disabled rule set is ignored.
    public var disable: Bool
    /// Where the rule set starts in the file.
    public var location: SourceLocation?
    /// allowedVms, tag, skipOnSuspend, PCI IOMMU policy (Model+API.swift).
    public var options: RuleSetOptions

    /// Creates a rule set.
    public init(description: String? = nil, targetVm: String, allow: [Rule] = [], deny: [Rule] = [],
                disable: Bool = false, location: SourceLocation? = nil, options: RuleSetOptions = RuleSetOptions()) {
        self.options = options
        self.description = description
        self.targetVm = targetVm
        self.allow = allow
        self.deny = deny
        self.disable = disable
        self.location = location
    }
}

/// A rule set of USB entries (`usbPassthrough`).
public typealias USBRuleSet = RuleSet<USBRule>
/// A rule set of PCI entries (`pciPassthrough`).
public typealias PCIRuleSet = RuleSet<PCIRule>

/// `evdevPassthrough`: non-USB input devices go to one QEMU VM as virtio-input-host-pci.
public struct EvdevPassthrough: Sendable, Hashable {
    /// When true, evdev passthrough is off.
    public var disable: Bool
    /// Prefix of the PCIe root port ids to plug the devices into.
    public var pcieBusPrefix: String?
    /// The QEMU VM that gets the devices; empty when disabled and not given.
    public var targetVm: String
    /// Where the object starts in the file.
    public var location: SourceLocation?
    /// Creates the settings.
    public init(disable: Bool = false, pcieBusPrefix: String? = nil, targetVm: String, location: SourceLocation? = nil) {
        self.disable = disable
        self.pcieBusPrefix = pcieBusPrefix
        self.targetVm = targetVm
        self.location = location
    }
}

/// The hypervisor a VM runs under.
public enum VMType: String, Sendable, Hashable, CaseIterable {
    /// QEMU, driven through QMP.
    case qemu
    /// crosvm, driven through its control socket (no PCI hot-plug).
    case crosvm
}

/// A VM devices can be given to.
public struct VMDefinition: Sendable, Hashable {
    /// The name rule sets refer to in `targetVm`.
    public var name: String
    /// The hypervisor.
    public var type: VMType
    /// QMP socket (QEMU) or control socket (crosvm).
    public var socket: String
    /// Where the VM starts in the file.
    public var location: SourceLocation?
    /// Creates a VM definition.
    public init(name: String, type: VMType, socket: String, location: SourceLocation? = nil) {
        self.name = name
        self.type = type
        self.socket = socket
        self.location = location
    }
}

/// A whole, validated configuration.
public struct Configuration: Sendable, Hashable {
    /// USB rule sets, in file order.
    public var usbPassthrough: [USBRuleSet]
    /// PCI rule sets, in file order.
    public var pciPassthrough: [PCIRuleSet]
    /// Evdev passthrough settings, when the key is present.
    public var evdevPassthrough: EvdevPassthrough?
    /// The VMs, in file order.
    public var vms: [VMDefinition]
    /// `evdevPassthrough` in its array form (rule sets), in file order.
    public var evdevRuleSets: [EvdevRuleSet]
    /// `general`: API, state file, crosvm binary.
    public var general: GeneralSettings
    /// USB authorization settings, when the key is present (Model+Authorization.swift).
    public var usbAuthorization: USBAuthorization? = nil

    /// Creates a configuration.
    public init(usbPassthrough: [USBRuleSet] = [], pciPassthrough: [PCIRuleSet] = [],
                evdevPassthrough: EvdevPassthrough? = nil, vms: [VMDefinition] = [],
                evdevRuleSets: [EvdevRuleSet] = [], general: GeneralSettings = GeneralSettings()) {
        self.evdevRuleSets = evdevRuleSets
        self.general = general
        self.usbPassthrough = usbPassthrough
        self.pciPassthrough = pciPassthrough
        self.evdevPassthrough = evdevPassthrough
        self.vms = vms
    }

    /// The VM of that name, if one is defined.
    public func vm(named name: String) -> VMDefinition? { vms.first { $0.name == name } }
}

/// A pattern's `\N{...}` that names no character (see `CharacterNames`).
struct UnknownCharacterName: Error, CustomStringConvertible {
    let escape: String
    var description: String {
        "\(escape) names no Unicode character: expected a character's name, as in " +
            "\\N{LATIN SMALL LETTER E WITH ACUTE}, or its code point, as in \\N{U+E9}"
    }
}

/// A compiled expression behind a reference (see `NamePattern.regex`).
final class RegexBox: @unchecked Sendable {
    let regex: Regex<AnyRegexOutput>
    init(_ regex: Regex<AnyRegexOutput>) { self.regex = regex }
}

extension Configuration {
    /// The root-port id prefixes (`pcieBusPrefix`) that enabled evdev passthrough plugs
    /// input devices into in `vm` (its target, or one of its `allowedVms`). A PCI device is
    /// never put on such a port, so that the input devices keep theirs.
    public func evdevPortPrefixes(for vm: String) -> [String] {
        var out: [String] = []
        func add(_ prefix: String?) {
            if let prefix, !prefix.isEmpty, !out.contains(prefix) { out.append(prefix) }
        }
        if let e = evdevPassthrough, !e.disable, e.targetVm == vm { add(e.pcieBusPrefix) }
        for set in evdevRuleSets where !set.disable && (set.targetVm == vm || set.options.allowedVms.contains(vm)) {
            add(set.options.pcieBusPrefix ?? evdevPassthrough?.pcieBusPrefix)
        }
        return out
    }
}
