import Foundation
import Testing
import VHotplugTestSupport

/// `pciIommuAddAll` in the daemon, with the GPU and its HDMI audio (IOMMU group 2) of
/// pci-gpu-audio.umockdev. The testbed has no vfio-pci driver (nor `driver_override`), so
/// every attach stops at the rebind: which devices try, and which do not, is what is looked at.
@Suite("The daemon with pciIommuAddAll, a real QEMU and umockdev", .serialized)
struct DaemonIOMMUGroupTests {
    static let gpu = "pci 0000:01:00.0 10de:1f06"
    static let audio = "pci 0000:01:00.1 10de:10f9"

    func start(_ sets: String) async throws -> (Testbed, QEMUInstance, DaemonProcess) {
        let tb = await Testbed.make()
        let qemu = try qemuWithPorts(tb)
        let config = qemu.dir + "/vhotplug.conf"
        try """
            {"pciPassthrough": [\(sets)],
             "vms": [{"name": "vm1", "type": "qemu", "socket": "\(qemu.qmpPath)"},
                     {"name": "vm2", "type": "qemu", "socket": "\(qemu.dir)/vm2.sock"}]}
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let d = try DaemonProcess(arguments: ["-c", config, "-d"], testbed: tb)
        try d.waitFor("; listening (")
        try tb.addProbed(file: fixtures + "/pci-gpu-audio.umockdev")
        return (tb, qemu, d)
    }

    @Test("the GPU's rule says pciIommuAddAll: its audio function, which no rule takes, goes to vm1 with it; the root port stays")
    func followerFollows() async throws {
        let (_, qemu, d) = try await start(#"{"description": "GPU", "targetVm": "vm1", "pciIommuAddAll": true, "allow": [{"address": "0000:01:00.0"}]}"#)
        try d.waitFor("\(Self.gpu): IOMMU group 2 goes with it (pciIommuAddAll): pci 0000:01:00.1")
        // Both try vm1 (the audio function on its own), and both stop at the rebind.
        try d.waitFor("\(Self.gpu): attach to vm1 failed: ")
        try d.waitFor("\(Self.audio): attach to vm1 failed: ")
        #expect(!d.log.contains { $0.contains("pci 0000:00:01.0") && $0.contains("attach") }, "the root port is not touched")
        #expect(try qemu.attachedIds() == [])
    }

    @Test("the GPU unplugged alone: its audio function no longer follows it, and says so")
    func leaderLeavesAlone() async throws {
        let (tb, _, d) = try await start(#"{"description": "GPU", "targetVm": "vm1", "pciIommuAddAll": true, "allow": [{"address": "0000:01:00.0"}]}"#)
        try d.waitFor("\(Self.audio): attach to vm1 failed: ")
        let mark = d.mark
        tb.unplug("/sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0")
        try d.waitFor("\(Self.gpu): unplugged", from: mark)
        try d.waitFor("\(Self.audio): no longer goes with pci 0000:01:00.0 (pciIommuAddAll): it left the host", from: mark)
    }

    @Test("a reload gives the audio function a rule of its own for vm1, where its group goes: it still goes to vm1 (before, it was sent nowhere)")
    func followerGetsOwnRule() async throws {
        let (_, qemu, d) = try await start(#"{"description": "GPU", "targetVm": "vm1", "pciIommuAddAll": true, "allow": [{"address": "0000:01:00.0"}]}"#)
        try d.waitFor("\(Self.audio): attach to vm1 failed: ")
        let config = qemu.dir + "/vhotplug.conf"
        let text = try String(contentsOfFile: config, encoding: .utf8)
        try text.replacingOccurrences(of: #""pciPassthrough": ["#,
                                      with: #""pciPassthrough": [{"description": "Audio", "targetVm": "vm1", "allow": [{"address": "0000:01:00.1"}]}, "#)
            .write(toFile: config, atomically: true, encoding: .utf8)
        let mark = d.mark
        d.signal(SIGHUP)
        try d.waitFor("configuration reloaded", from: mark)
        try d.waitFor("\(Self.audio): vm1 (rule set 0 \"Audio\", allow[0])", from: mark)
        try d.waitFor("\(Self.audio): attach to vm1 failed: ", from: mark)
    }

    @Test("without pciIommuAddAll the audio function stays out of the VM (only the GPU tries)")
    func noAddAll() async throws {
        let (_, qemu, d) = try await start(#"{"targetVm": "vm1", "allow": [{"address": "0000:01:00.0"}]}"#)
        try d.waitFor("\(Self.gpu): attach to vm1 failed: ")
        let mark = d.mark
        d.signal(SIGHUP)
        try d.waitForIdle(from: try d.waitFor("configuration reloaded", from: mark))
        #expect(!d.log.contains { $0.contains(Self.audio) && $0.contains("attach") }, "\(d.log)")
        #expect(!d.log.contains { $0.contains("pciIommuAddAll") })
        #expect(try qemu.attachedIds() == [])
    }

    @Test("a rule sends the audio function to vm2: one error naming both rules and VMs, nothing attached, not even tried; a reload keeps it to one")
    func conflict() async throws {
        let (_, qemu, d) = try await start(#"""
            {"description": "GPU", "targetVm": "vm1", "pciIommuAddAll": true, "allow": [{"address": "0000:01:00.0"}]},
            {"description": "Audio", "targetVm": "vm2", "allow": [{"address": "0000:01:00.1"}]}
            """#)
        let error = "pciIommuAddAll: IOMMU group 2: pci 0000:01:00.0 goes to vm1 (rule set 0 \"GPU\", allow[0]) "
            + "with pciIommuAddAll, but pci 0000:01:00.1 goes to vm2 (rule set 1 \"Audio\", allow[0]): "
            + "one group cannot be in two VMs, so none of it is attached"
        try d.waitFor(error)
        try d.waitFor("\(Self.audio): vm2 (rule set 1 \"Audio\", allow[0])")
        let mark = d.mark
        d.signal(SIGHUP)
        try d.waitForIdle(from: try d.waitFor("configuration reloaded", from: mark))
        #expect(d.log.filter { $0.contains("pciIommuAddAll: IOMMU group 2") }.count == 1)
        #expect(!d.log.contains { $0.contains("attach to") || $0.contains("on vfio-pci") || $0.contains("device_add") }, "\(d.log)")
        #expect(try qemu.attachedIds() == [])
    }
}
