import DeviceModel
import HotplugConfig

extension EvdevRule: RuleEntry {
    public static func prepare(_ d: InputDevice) -> InputDevice { d }

    /// Every field present must match: name and path tag (regexes), and the input kind.
    public func matches(_ d: InputDevice) -> Bool {
        if let k = kind, !d.kinds.contains(where: { $0.rawValue == k }) { return false }
        if let p = name, !p.matches(d.name ?? "") { return false }
        if let p = pathTag, !p.matches(d.pathTag ?? "") { return false }
        return true
    }
}

extension Matcher {
    /// `pciIommuSkipIfShared`: a device whose IOMMU group has other members is not taken.
    static func skipIfShared(_ device: PCIDevice, _ decision: Decision) -> Decision {
        guard decision.reason == .matched, decision.options.pciIommuSkipIfShared, !device.iommuGroupPeers.isEmpty else {
            return decision
        }
        var skipped = Decision(ruleSetIndex: decision.ruleSetIndex, ruleSetDescription: decision.ruleSetDescription,
                               entry: decision.entry, reason: .iommuShared)
        skipped.options = decision.options
        return skipped
    }
}
