// The keys of the control API issue: rule-set options (allowedVms, tag,
// skipOnSuspend, PCI IOMMU policy), evdev rule sets, and `general`.

/// Options a rule set may carry beyond its target and entries.
public struct RuleSetOptions: Sendable, Hashable {
    /// VMs a user may choose among (USB: `allowedVms`). Empty: only `targetVm`.
    public var allowedVms: [String]
    /// A name for scripts (`usb attach --tag T`).
    public var tag: String?
    /// Stays attached when the API suspends devices (`usb_suspend`).
    public var skipOnSuspend: Bool
    /// PCI: attach every member of the device's IOMMU group to the VM.
    public var pciIommuAddAll: Bool
    /// PCI: skip a device whose IOMMU group has other members.
    public var pciIommuSkipIfShared: Bool
    /// evdev rule sets: prefix of the PCIe root port ids to plug into.
    public var pcieBusPrefix: String?

    /// Creates options; the defaults change nothing.
    public init(allowedVms: [String] = [], tag: String? = nil, skipOnSuspend: Bool = false,
                pciIommuAddAll: Bool = false, pciIommuSkipIfShared: Bool = false, pcieBusPrefix: String? = nil) {
        self.allowedVms = allowedVms
        self.tag = tag
        self.skipOnSuspend = skipOnSuspend
        self.pciIommuAddAll = pciIommuAddAll
        self.pciIommuSkipIfShared = pciIommuSkipIfShared
        self.pcieBusPrefix = pcieBusPrefix
    }
}

extension RuleSet {
    /// The VMs a device taken by this set may go to: `allowedVms`, else `targetVm`.
    public var candidateVms: [String] { options.allowedVms.isEmpty ? [targetVm] : options.allowedVms }
}

/// One allow or deny entry of an evdev rule set (`evdevPassthrough` as an array).
public struct EvdevRule: Sendable, Hashable {
    /// Matched against the device's name (`Logitech USB Receiver Mouse`).
    public var name: NamePattern?
    /// Matched against the device's platform path (`platform-i8042-serio-0`).
    public var pathTag: NamePattern?
    /// One of the input kinds computed from sysfs (`touchpad`, `keyboard`, ...).
    public var kind: String?
    /// Free text, for logs.
    public var description: String?
    /// A disabled entry is ignored.
    public var disable: Bool
    /// Where the entry starts in the file.
    public var location: SourceLocation?

    /// Creates an entry; fields left nil do not take part in matching.
    public init(name: NamePattern? = nil, pathTag: NamePattern? = nil, kind: String? = nil,
                description: String? = nil, disable: Bool = false, location: SourceLocation? = nil) {
        self.name = name
        self.pathTag = pathTag
        self.kind = kind
        self.description = description
        self.disable = disable
        self.location = location
    }

    /// The input kinds `kind` may name (the raw values of DeviceModel's `InputKind`).
    public static let kinds = ["keyboard", "key", "mouse", "touchpad", "touchscreen", "tablet", "joystick",
                               "accelerometer", "pointingstick", "switch"]
}

/// A rule set of evdev entries (`evdevPassthrough` in its array form).
public typealias EvdevRuleSet = RuleSet<EvdevRule>

/// A transport of the control API.
public enum APITransport: String, Sendable, Hashable, CaseIterable {
    case unix, vsock, tcp
}

/// `general.api`: the control API's listeners and who may use them.
public struct APISettings: Sendable, Hashable {
    public static let defaultUnixSocket = "/var/lib/vhotplug/vhotplug.sock"
    /// Off unless `general.api` is present (then on unless `"enable": false`).
    public var enable: Bool
    public var transports: [APITransport]
    public var unixSocket: String
    /// Owner of the socket file (a user name); nil: the daemon's user.
    public var unixSocketUser: String?
    /// Group of the socket file, and the group whose members may connect (besides root).
    public var unixSocketGroup: String?
    /// Permission bits of the socket file (default 0660).
    public var unixSocketMode: UInt32
    /// TCP address and port (default 127.0.0.1:2000); vsock uses `port` too.
    public var host: String
    public var port: Int
    /// vsock peers (CIDs) that may connect; empty: none.
    public var allowedCids: [UInt32]

    /// Creates settings with the defaults of the reference vhotplug.
    public init(enable: Bool = false, transports: [APITransport] = [.unix], unixSocket: String = defaultUnixSocket,
                unixSocketUser: String? = nil, unixSocketGroup: String? = nil, unixSocketMode: UInt32 = 0o660,
                host: String = "127.0.0.1", port: Int = 2000, allowedCids: [UInt32] = []) {
        self.enable = enable
        self.transports = transports
        self.unixSocket = unixSocket
        self.unixSocketUser = unixSocketUser
        self.unixSocketGroup = unixSocketGroup
        self.unixSocketMode = unixSocketMode
        self.host = host
        self.port = port
        self.allowedCids = allowedCids
    }
}

/// `general`: the API, the state file, the crosvm binary.
public struct GeneralSettings: Sendable, Hashable {
    public static let defaultStatePath = "/var/lib/vhotplug/vhotplug.state"
    public var api: APISettings
    /// Keep chosen VMs and "disconnected" marks in `statePath` across restarts.
    public var persistency: Bool
    public var statePath: String
    /// Path of the crosvm binary; nil: `crosvm` on PATH.
    public var crosvm: String?

    /// Creates settings (defaults: API off, persistency on).
    public init(api: APISettings = APISettings(), persistency: Bool = true, statePath: String = defaultStatePath,
                crosvm: String? = nil) {
        self.api = api
        self.persistency = persistency
        self.statePath = statePath
        self.crosvm = crosvm
    }
}

/// `"046d"`, `"0x046D"` -> 0x046d: the configuration's ID format, for other parsers (the API).
public func parseHexIdentifier(_ text: String) -> UInt16? { parseHexID(text) }

/// `dddd:bb:dd.f` or `bb:dd.f` -> canonical lower-case `dddd:bb:dd.f`; nil when it is not an address.
public func canonicalPCIAddress(_ text: String) -> String? {
    if case .success(let canonical) = parsePCIAddress(text) { return canonical }
    return nil
}
