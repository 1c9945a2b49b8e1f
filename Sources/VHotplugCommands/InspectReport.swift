import JSONKit
import DeviceModel
import HostDevices
import HotplugRules

/// What `vhotplug inspect` shows for one device: its attributes and, with a
/// configuration, the matcher's decision.
public struct InspectRecord: Sendable {
    public var device: HostDevice
    public var decision: Decision?
    /// `pciIommuAddAll`: what the device's IOMMU group does to it, as the daemon would.
    public var group: GroupRole?

    public init(device: HostDevice, decision: Decision?, group: GroupRole? = nil) {
        self.device = device
        self.decision = decision
        self.group = group
    }

    /// A PCI device's part in its IOMMU group's plan (Matcher.iommuGroupPlan).
    public enum GroupRole: Sendable, Hashable {
        /// Matched with pciIommuAddAll: the note says what goes with it.
        case leads(note: String)
        /// No rule of its own: it goes wherever the leader goes.
        case follows(leader: String, vm: String?)
        /// Two VMs ask for the group: none of it is attached.
        case conflict(String)

        var summary: String {
            switch self {
            case .leads(let note): note
            case .follows(let leader, let vm): "goes with pci \(leader) into \(vm ?? "no VM") (its IOMMU group; pciIommuAddAll)"
            case .conflict(let text): "not attached: \(text)"
            }
        }

        var json: JSONText {
            switch self {
            case .leads(let note): .object([("leads", .string(note))])
            case .follows(let leader, let vm): .object([("follows", .string(leader)), ("targetVm", .optional(vm))])
            case .conflict(let text): .object([("conflict", .string(text))])
            }
        }
    }

    public var subsystem: String {
        switch device {
        case .usb: "usb"
        case .pci: "pci"
        case .input: "input"
        }
    }

    /// `{"subsystem", "sysName", "attributes", "decision"}`.
    public var json: JSONText {
        let attributes: JSONText
        switch device {
        case .usb(let d): attributes = d.jsonAttributes
        case .pci(let d): attributes = d.jsonAttributes
        case .input(let d): attributes = d.jsonAttributes
        }
        var members: [(String, JSONText)] = [
            ("subsystem", .string(subsystem)), ("sysName", .string(device.sysName)), ("attributes", attributes),
        ]
        if let d = decision {
            func entry(_ e: EntryRef?) -> JSONText {
                guard let e else { return .null }
                return .object([("index", .int(e.index)), ("description", .optional(e.description)),
                                ("location", .optional(e.location))])
            }
            members.append(("decision", .object([
                ("targetVm", .optional(d.targetVm)),
                ("ruleSet", d.ruleSetIndex.map { i in
                    .object([("index", .int(i)), ("description", .optional(d.ruleSetDescription))])
                } ?? (d.ruleSetDescription.map { .object([("index", .null), ("description", .string($0))]) } ?? .null)),
                ("entry", entry(d.entry)), ("deniedBy", entry(d.deniedBy)),
                ("reason", .string(d.reason.rawValue)), ("summary", .string(d.summary)),
            ])))
        } else {
            members.append(("decision", .null))
        }
        if let group { members.append(("iommuGroupPlan", group.json)) }
        return .object(members)
    }

    /// Lines in the manner of `lsusb` / `lspci -nnk`.
    public var human: String {
        var lines: [String] = []
        switch device {
        case .usb(let d):
            let names = [d.vendorName ?? d.manufacturer, d.productName ?? d.product].compactMap { $0 }
            lines.append("Bus \(pad3(d.bus)) Device \(pad3(d.devnum)): ID \(hex4(d.vendorId)):\(hex4(d.productId)) "
                         + names.map { clean($0) }.joined(separator: " ") + "  [\(d.sysName)]")
            var facts = ["port \(d.port)"]
            if !d.portPath.isEmpty { facts.append("path \(d.portPath.map(String.init).joined(separator: "."))") }
            if let s = d.speed { facts.append("\(s) Mb/s") }
            facts.append(d.removable.rawValue)
            facts.append("class \(hex2(d.deviceClass))/\(hex2(d.deviceSubclass))/\(hex2(d.deviceProtocol))")
            facts.append("bcdDevice \(hex4(d.bcdDevice))")
            if d.isHub { facts.append("hub") }
            if let hold = d.bootHold { facts.append("holds " + hold.what) }
            lines.append("    " + facts.joined(separator: ", "))
            let strings = [("manufacturer", d.manufacturer), ("product", d.product), ("serial", d.serial)]
                .compactMap { k, v in v.map { "\(k) \(quoted($0))" } }
            if !strings.isEmpty { lines.append("    " + strings.joined(separator: ", ")) }
            lines.append("    devnode \(d.devnode)")
            for i in d.interfaces {
                lines.append("    interface \(i.interfaceNumber): \(hex2(i.interfaceClass))/\(hex2(i.interfaceSubclass))/\(hex2(i.interfaceProtocol))"
                             + (i.driver.map { " driver \($0)" } ?? ""))
            }
        case .pci(let d):
            lines.append("\(d.address) class [\(hex2(d.deviceClass))\(hex2(d.deviceSubclass))] prog-if \(hex2(d.deviceProgIf)): "
                         + [d.vendorName, d.deviceName].compactMap { $0 }.map { clean($0) }.joined(separator: " ")
                         + " [\(hex4(d.vendorId)):\(hex4(d.deviceId))]")
            lines.append("\tSubsystem: [\(hex4(d.subsystemVendorId)):\(hex4(d.subsystemDeviceId))]")
            lines.append("\tKernel driver in use: \(d.driver ?? "(none)")")
            if let g = d.iommuGroup {
                lines.append("\tIOMMU group \(g)" + (d.iommuGroupPeers.isEmpty ? ", alone" : ", with \(d.iommuGroupPeers.joined(separator: " "))"))
            } else {
                lines.append("\tIOMMU group: none")
            }
            if d.isBridge { lines.append("\tbridge") }
            if let hold = d.bootHold { lines.append("\tholds " + hold.what) }
        case .input(let d):
            lines.append("\(d.sysName): \(quoted(d.name ?? "")) bus \(hex4(d.busType)) id \(hex4(d.vendorId)):\(hex4(d.productId))"
                         + " kinds \(d.kinds.isEmpty ? "-" : d.kinds.map(\.rawValue).joined(separator: ","))")
            lines.append("\tdevnode \(d.devnode), phys \(quoted(d.phys ?? "")), "
                         + (d.hasUSBAncestor ? "on USB" : "not USB") + (d.pathTag.map { ", path \($0)" } ?? ""))
        }
        if let decision {
            lines.append((subsystem == "usb" ? "    " : "\t") + "-> " + decision.summary)
        }
        if let group { lines.append("\t-> " + group.summary) }
        return lines.joined(separator: "\n")
    }

    private func pad3(_ n: Int) -> String {
        let s = String(n)
        return String(repeating: "0", count: max(0, 3 - s.count)) + s
    }

    /// A name with control characters escaped and bounded (device-supplied text).
    private func clean(_ s: String) -> String {
        let q = quoted(s)
        return q == "\"\(s)\"" ? s : q
    }
}

/// Builds the records of `inspect`, deciding each device when a matcher is given, with
/// each PCI device's part in its IOMMU group's `pciIommuAddAll` plan; the plan is made over
/// `all` (every device read: a device shown alone still follows a mate not shown).
public func inspectRecords(_ devices: [HostDevice], matcher: Matcher?, among all: [HostDevice]? = nil) -> [InspectRecord] {
    func decide(_ device: HostDevice) -> Decision? {
        switch device {
        case .usb(let d): matcher?.decide(d)
        case .pci(let d): matcher?.decide(d)
        case .input(let d): matcher?.decide(d)
        }
    }
    // The groups' plans (with a matcher only): member address -> its role.
    var roles: [String: InspectRecord.GroupRole] = [:]
    if matcher != nil {
        var groups: [Int: [(device: PCIDevice, decision: Decision)]] = [:]
        for case .pci(let d) in all ?? devices {
            if let g = d.iommuGroup, let decision = decide(.pci(d)) { groups[g, default: []].append((d, decision)) }
        }
        for (group, members) in groups where members.count > 1 {
            let plan = Matcher.iommuGroupPlan(members)
            let vmOf = Dictionary(members.map { ($0.device.address, $0.decision.targetVm) }, uniquingKeysWith: { a, _ in a })
            for m in members {
                let a = m.device.address
                if let conflict = plan.conflict {
                    roles[a] = .conflict(conflict)
                } else if let leader = plan.followers[a] {
                    roles[a] = .follows(leader: leader, vm: vmOf[leader] ?? nil)
                } else if let note = plan.note(leader: a, group: group) {
                    roles[a] = .leads(note: note)
                }
            }
        }
    }
    return devices.map { device in
        var role: InspectRecord.GroupRole?
        if case .pci(let d) = device { role = roles[d.address] }
        return InspectRecord(device: device, decision: decide(device), group: role)
    }
}
