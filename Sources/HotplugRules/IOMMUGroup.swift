import DeviceModel
import HotplugConfig

/// How the devices of one IOMMU group move together when a rule set says
/// `pciIommuAddAll`: the matched device leads, every other member follows it
/// into its VM (each as its own device), bridges stay on the host, and a member
/// that a rule sends to another VM stops the whole group.
public struct IOMMUGroupPlan: Sendable, Hashable {
    /// Members whose deciding rule set says `pciIommuAddAll` (addresses, sorted).
    public var leaders: [String] = []
    /// Members that go wherever their leader goes: address -> the leader's address.
    public var followers: [String: String] = [:]
    /// Members left on the host because they are PCI bridges (addresses, sorted).
    public var bridges: [String] = []
    /// Set when two members' rules send them to different VMs while one of them
    /// says `pciIommuAddAll`: no member of the group may be attached.
    public var conflict: String?

    public init() {}

    /// What a leader's group does with it, as the daemon logs it and `inspect` shows it
    /// (nil: not a leader, or it takes nothing and no bridge stays behind).
    public func note(leader address: String, group: Int) -> String? {
        guard conflict == nil, leaders.contains(address) else { return nil }
        let mine = followers.filter { $0.value == address }.keys.sorted()
        guard !mine.isEmpty || !bridges.isEmpty else { return nil }
        var note = "IOMMU group \(group) goes with it (pciIommuAddAll): "
            + (mine.isEmpty ? "no other device" : mine.map { "pci \($0)" }.joined(separator: ", "))
        if !bridges.isEmpty {
            note += "; left on the host: " + bridges.map { "pci \($0)" }.joined(separator: ", ")
                + " (PCI bridges are never passed through)"
        }
        return note
    }
}

extension Matcher {
    /// The plan for one IOMMU group, from each present member's device and decision.
    ///
    /// - A leader is a member matched by a rule set with `pciIommuAddAll`.
    /// - With a leader, every member no rule sends anywhere follows the first
    ///   leader (by address), except bridges (never passed through) and a device
    ///   serving the host's `/` or `/boot` (the rebind refuses such a group anyway).
    /// - A member matched into another VM than a leader's is a conflict naming both.
    public static func iommuGroupPlan(_ members: [(device: PCIDevice, decision: Decision)]) -> IOMMUGroupPlan {
        var plan = IOMMUGroupPlan()
        let sorted = members.sorted { $0.device.address < $1.device.address }
        let leaders = sorted.filter { $0.decision.reason == .matched && $0.decision.options.pciIommuAddAll }
        guard let first = leaders.first else { return plan }
        plan.leaders = leaders.map(\.device.address)
        for (device, decision) in sorted where device.address != first.device.address {
            if decision.reason == .matched, let vm = decision.targetVm {
                if vm != first.decision.targetVm, plan.conflict == nil {
                    let group = device.iommuGroup.map { "IOMMU group \($0)" } ?? "the IOMMU group"
                    let what = decision.options.pciIommuAddAll ? " with pciIommuAddAll too" : ""
                    plan.conflict = "\(group): pci \(first.device.address) goes to \(first.decision.summary) with "
                        + "pciIommuAddAll, but pci \(device.address) goes to \(decision.summary)\(what): "
                        + "one group cannot be in two VMs, so none of it is attached"
                }
                continue
            }
            if device.isBridge {
                plan.bridges.append(device.address)
            } else if decision.reason != .bootDevice {
                plan.followers[device.address] = first.device.address
            }
        }
        return plan
    }
}
