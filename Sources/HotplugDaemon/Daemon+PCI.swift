import DeviceModel
import HotplugRules
import Logging

/// `pciIommuAddAll`: the other devices of a matched device's IOMMU group go to
/// its VM and leave with it. Each follower is a `Tracked` device of its own (its
/// own bind record, `vfio-pci` device and `vhp-pci-...` id); only its `want` is
/// taken from its leader, here, each time a device of the group is reconciled.
/// Every change of a leader's `want` (event, reload, API, VM restart) goes through
/// `reconcile`, so the followers follow from there.
extension Daemon {
    /// Applies the group plan of `t`'s IOMMU group: followers take their leader's
    /// `want`, devices that stopped following want nothing, and a conflict (two VMs)
    /// keeps every member out of VMs. Group mates whose state changed are reconciled.
    func followIOMMUGroup(of t: Tracked) {
        guard case .pci(let d) = t.device, let group = d.iommuGroup else { return }
        let members = groupMembers(of: t)
        // A group of one still needs a look when that one followed (or was held back with)
        // a device that has left: the leader unplugged alone leaves its followers here.
        guard members.count > 1 || members.values.contains(where: { $0.follows != nil || $0.groupConflict != nil })
                || t.follows != nil || t.groupConflict != nil else { return }
        let (plan, byAddress) = groupPlan(members)
        var changed: [String] = []

        // A conflict is logged once, when it appears; it holds every member back.
        if let conflict = plan.conflict, !members.values.contains(where: { $0.groupConflict == conflict }) {
            logger.error("pciIommuAddAll: \(conflict)")
        }
        for (key, o) in members where o.groupConflict != plan.conflict {
            if plan.conflict == nil, o.groupConflict != nil {
                logger.info("\(o.logName): its IOMMU group is no longer asked for by two VMs")
            }
            o.groupConflict = plan.conflict
            o.lastError = plan.conflict
            changed.append(key)
        }

        for (key, o) in members {
            guard case .pci(let od) = o.device else { continue }
            let leader = plan.followers[od.address]
            let want: String?
            if let leader {
                want = byAddress[leader]?.want
            } else if o.follows != nil {
                // It followed a device that no longer leads (rule gone, unplugged): nowhere, unless a
                // rule of its own takes it now (a reload set its `want` for that; before, it was dropped).
                want = o.decision.reason == .matched ? o.want : nil
            } else {
                continue
            }
            guard o.follows != leader || o.want != want else { continue }
            if let old = o.follows, leader == nil {
                logger.info("\(o.logName): no longer goes with pci \(old) (pciIommuAddAll): \(byAddress[old] == nil ? "it left the host" : "its rule changed")")
            }
            o.follows = leader
            o.want = want
            o.failed = false
            o.since = .now()
            changed.append(key)
        }

        for address in plan.leaders {
            guard let o = byAddress[address], let note = plan.note(leader: address, group: group) else { continue }
            if o.groupNote != note {
                o.groupNote = note
                logger.info("\(o.logName): \(note)")
            }
        }

        for key in changed.sorted() where members[key] !== t {
            reconcile(key)
        }
    }

    /// The VM a device goes to as a follower of its IOMMU group's matched device
    /// (`pciIommuAddAll`), before any reconcile has set it: nil when it follows nothing
    /// or the group is in conflict.
    func leaderVM(of t: Tracked) -> String? {
        guard case .pci(let d) = t.device else { return nil }
        let (plan, byAddress) = groupPlan(groupMembers(of: t))
        guard plan.conflict == nil, let leader = plan.followers[d.address] else { return nil }
        return byAddress[leader]?.decision.targetVm
    }

    /// A member of `t`'s IOMMU group (present or leaving) that is in a VM other than `vm`, or on
    /// its way to one, and that VM.
    func groupMateInOtherVM(_ t: Tracked, vm: String) -> (Tracked, String)? {
        guard case .pci(let d) = t.device, let group = d.iommuGroup else { return nil }
        for o in devices.values where o !== t {
            guard case .pci(let od) = o.device, od.iommuGroup == group, let other = o.attachment?.vm ?? o.attachingTo,
                  other != vm else { continue }
            return (o, other)
        }
        return nil
    }

    /// A PCI device left a VM (or a VM went): devices waiting for a group mate to leave look again.
    func wakeGroupWaiters() {
        for (key, o) in devices where o.waitsForGroup && !o.busy { reconcile(key) }
    }

    /// The present followed devices of `t`'s IOMMU group, `t` included, by key.
    func groupMembers(of t: Tracked) -> [String: Tracked] {
        guard case .pci(let d) = t.device, let group = d.iommuGroup else { return [:] }
        return devices.filter { _, o in
            guard o.present, case .pci(let od) = o.device else { return false }
            return od.iommuGroup == group
        }
    }

    /// The group plan of these devices (Matcher.iommuGroupPlan), and the devices by address.
    func groupPlan(_ members: [String: Tracked]) -> (plan: IOMMUGroupPlan, byAddress: [String: Tracked]) {
        var byAddress: [String: Tracked] = [:]
        var pairs: [(device: PCIDevice, decision: Decision)] = []
        for o in members.values {
            guard case .pci(let od) = o.device else { continue }
            byAddress[od.address] = o
            pairs.append((od, o.decision))
        }
        return (Matcher.iommuGroupPlan(pairs), byAddress)
    }

    /// The devices that follow these ones (`pciIommuAddAll`): an API request on a
    /// leading device waits for them too.
    func followers(of keys: [String]) -> [String] {
        let leaders = Set(keys.compactMap { key -> String? in
            if case .pci(let d) = devices[key]?.device { return d.address }
            return nil
        })
        guard !leaders.isEmpty else { return [] }
        return devices.filter { key, o in
            !keys.contains(key) && o.follows.map(leaders.contains) == true
        }.keys.sorted()
    }
}
