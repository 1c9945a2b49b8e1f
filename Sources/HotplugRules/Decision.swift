import DeviceModel
import HotplugConfig

/// Why a device goes where it goes (or nowhere).
public enum DecisionReason: String, Sendable, Hashable, Codable {
    /// An enabled allow entry of a rule set matched and no deny entry of that set did.
    case matched
    /// Every rule set whose allow entry matched also had a matching deny entry.
    case denied
    /// Only disabled entries or disabled rule sets would have taken it.
    case disabled
    /// No entry of any rule set matches it.
    case noRule = "no-rule"
    /// USB hubs are never passed through.
    case hub
    /// The device holds a filesystem the host has mounted at `/` or `/boot`, or a disk
    /// while one of those cannot be resolved to its disks (`Decision.bootHold` says which).
    case bootDevice = "boot-device"
    /// PCI bridges are never passed through.
    case bridge
    /// Input devices with a USB ancestor belong to USB passthrough.
    case usbInput = "usb-input"
    /// No `evdevPassthrough` section, or it is disabled.
    case evdevDisabled = "evdev-disabled"
    /// The rule set says `pciIommuSkipIfShared` and the device's IOMMU group has other members.
    case iommuShared = "iommu-shared"
    /// `evdevPassthrough` (its object form) takes only what a person types or points with:
    /// not a power button, lid switch, jack or speaker.
    case inputKind = "input-kind"
}

/// A rule entry named by its position and description, for logs and `inspect`.
public struct EntryRef: Sendable, Hashable, Codable {
    /// 0-based index in its `allow` or `deny` list.
    public var index: Int
    public var description: String?
    public var location: String?

    public init(index: Int, description: String?, location: String?) {
        self.index = index
        self.description = description
        self.location = location
    }
}

/// The matcher's verdict for one device.
public struct Decision: Sendable, Hashable {
    /// The VM that takes the device, or nil.
    public var targetVm: String?
    /// 0-based index of the rule set that decided (or that denied it).
    public var ruleSetIndex: Int?
    public var ruleSetDescription: String?
    /// The allow entry that matched.
    public var entry: EntryRef?
    /// The deny entry that stopped it.
    public var deniedBy: EntryRef?
    public var reason: DecisionReason
    /// For `bootDevice`: why the device stays on the host (nil: it is the boot disk).
    public var bootHold: BootHold?
    /// The deciding rule set's options (allowedVms, tag, skipOnSuspend, IOMMU policy).
    public var options = RuleSetOptions()

    /// The VMs the device may go to: `allowedVms`, else `targetVm` (none when not matched).
    public var candidateVms: [String] {
        guard let targetVm else { return [] }
        return options.allowedVms.isEmpty ? [targetVm] : options.allowedVms
    }

    public init(targetVm: String? = nil, ruleSetIndex: Int? = nil, ruleSetDescription: String? = nil,
                entry: EntryRef? = nil, deniedBy: EntryRef? = nil, reason: DecisionReason, bootHold: BootHold? = nil) {
        self.targetVm = targetVm
        self.ruleSetIndex = ruleSetIndex
        self.ruleSetDescription = ruleSetDescription
        self.entry = entry
        self.deniedBy = deniedBy
        self.reason = reason
        self.bootHold = bootHold
    }

    /// One line for people: `vm1 (rule set 0 "Devices for VM1", allow[0] "HID Mouse")`.
    public var summary: String {
        func ref(_ kind: String, _ e: EntryRef) -> String {
            "\(kind)[\(e.index)]" + (e.description.map { " \"\($0)\"" } ?? "")
        }
        var set = ""
        if let i = ruleSetIndex {
            set = "rule set \(i)" + (ruleSetDescription.map { " \"\($0)\"" } ?? "")
        }
        switch reason {
        case .matched:
            let why = [set.isEmpty ? (ruleSetDescription ?? "") : set, entry.map { ref("allow", $0) } ?? ""]
                .filter { !$0.isEmpty }.joined(separator: ", ")
            return (targetVm ?? "?") + (why.isEmpty ? "" : " (\(why))")
        case .denied:
            return "none: denied by \(set)" + (deniedBy.map { ", " + ref("deny", $0) } ?? "")
        case .disabled:
            return "none: only disabled rules match" + (set.isEmpty ? "" : " (\(set)" + (entry.map { ", " + ref("allow", $0) } ?? "") + ")")
        case .noRule: return "none: no rule matches"
        case .hub: return "none: USB hubs are never passed through"
        case .bootDevice: return "none: holds " + (bootHold ?? .bootDisk).what
        case .bridge: return "none: PCI bridges are never passed through"
        case .usbInput: return "none: input device of a USB device (USB rules decide)"
        case .evdevDisabled: return "none: evdev passthrough is disabled"
        case .inputKind: return "none: not a keyboard, mouse, touchpad, touchscreen, tablet or pointing stick (evdevPassthrough)"
        case .iommuShared: return "none: its IOMMU group is shared and \(set.isEmpty ? "the rule set" : set) says pciIommuSkipIfShared"
        }
    }
}
