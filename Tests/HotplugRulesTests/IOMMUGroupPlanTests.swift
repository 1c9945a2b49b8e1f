import DeviceModel
import HotplugConfig
import HotplugRules
import Testing

/// A two-function NIC (one IOMMU group), its audio-less sibling and a bridge in the same group.
private func function(_ address: String, device: UInt16 = 0x10d3, bridge: Bool = false) -> PCIDevice {
    PCIDevice(address: address, sysPath: "/devices/pci0000:00/0000:00:1c.0/\(address)", vendorId: 0x8086, deviceId: device,
              deviceClass: bridge ? 6 : 2, deviceSubclass: bridge ? 4 : 0, iommuGroup: 7, isBridge: bridge)
}

private let f0 = function("0000:01:00.0")
private let f1 = function("0000:01:00.1", device: 0x10d4)
private let bridge = function("0000:00:1c.0", device: 0x2448, bridge: true)

/// Rule set 0: f0 by address to vm1 (with `pciIommuAddAll` unless `addAll` is false); `more` adds rule sets.
private func groupMatcher(addAll: Bool = true, more: String = "") throws -> Matcher {
    Matcher(try config("""
        {"pciPassthrough": [{"description": "NIC", "targetVm": "vm1", "pciIommuAddAll": \(addAll),
                             "allow": [{"address": "0000:01:00.0"}]}\(more)],
         "vms": [{"name": "vm1", "type": "qemu", "socket": "/tmp/a"}, {"name": "vm2", "type": "qemu", "socket": "/tmp/b"}]}
        """))
}

private func plan(_ m: Matcher, _ devices: [PCIDevice]) -> IOMMUGroupPlan {
    Matcher.iommuGroupPlan(devices.map { (device: $0, decision: m.decide($0)) })
}

@Suite("pciIommuAddAll: how an IOMMU group follows its matched device")
struct IOMMUGroupPlanTests {
    @Test("the matched function leads; the other one, which no rule takes, follows it")
    func followerFollows() throws {
        let p = plan(try groupMatcher(), [f1, f0])
        #expect(p.leaders == [f0.address])
        #expect(p.followers == [f1.address: f0.address])
        #expect(p.bridges == [])
        #expect(p.conflict == nil)
    }

    @Test("without pciIommuAddAll nothing follows (the group still goes to vfio-pci, but not into the VM)")
    func withoutAddAll() throws {
        #expect(plan(try groupMatcher(addAll: false), [f0, f1]) == IOMMUGroupPlan())
    }

    @Test("a group with no matched member, or a leader alone, has no followers")
    func noLeaderOrAlone() throws {
        #expect(plan(try groupMatcher(), [f1]) == IOMMUGroupPlan())
        let alone = plan(try groupMatcher(), [f0])
        #expect(alone.leaders == [f0.address] && alone.followers.isEmpty)
    }

    @Test("a bridge in the group is never a follower; it is listed to be logged")
    func bridgeSkipped() throws {
        let p = plan(try groupMatcher(), [bridge, f0, f1])
        #expect(p.followers == [f1.address: f0.address])
        #expect(p.bridges == [bridge.address])
        #expect(p.conflict == nil)
    }

    @Test("a member that a rule sends to the same VM is attached on its own rule, not as a follower")
    func sameVMIsNoConflict() throws {
        let p = plan(try groupMatcher(more: #", {"targetVm": "vm1", "allow": [{"address": "0000:01:00.1"}]}"#), [f0, f1])
        #expect(p.followers.isEmpty)
        #expect(p.conflict == nil)
    }

    @Test("a member that a rule sends to another VM is a conflict naming both rule sets and both VMs")
    func otherVMConflict() throws {
        let m = try groupMatcher(more: #", {"description": "Second", "targetVm": "vm2", "allow": [{"deviceId": "10d4"}]}"#)
        let p = plan(m, [f1, f0])
        #expect(p.conflict == "IOMMU group 7: pci 0000:01:00.0 goes to vm1 (rule set 0 \"NIC\", allow[0]) with pciIommuAddAll, "
            + "but pci 0000:01:00.1 goes to vm2 (rule set 1 \"Second\", allow[0]): one group cannot be in two VMs, "
            + "so none of it is attached")
        #expect(p.followers.isEmpty)
    }

    @Test("two leaders for two VMs conflict too; the message says the second also asks for the whole group")
    func twoLeadersConflict() throws {
        let m = try groupMatcher(more: #", {"targetVm": "vm2", "pciIommuAddAll": true, "allow": [{"deviceId": "10d4"}]}"#)
        let p = plan(m, [f0, f1])
        #expect(p.leaders == [f0.address, f1.address])
        #expect(p.conflict?.contains("pci 0000:01:00.1 goes to vm2 (rule set 1, allow[0]) with pciIommuAddAll too") == true)
    }

    @Test("a denied member and one serving the host's boot disk: the first follows, the second does not")
    func deniedAndBoot() throws {
        let m = try groupMatcher(more: #", {"targetVm": "vm2", "allow": [{"vendorId": "8086"}], "deny": [{"deviceId": "10d4"}]}"#)
        var boot = function("0000:01:00.2")
        boot.holdsHostBootFilesystem = true
        let p = plan(m, [f0, f1, boot])
        #expect(m.decide(f1).reason == .denied)
        #expect(p.followers == [f1.address: f0.address])
        #expect(p.conflict == nil)
    }
}
