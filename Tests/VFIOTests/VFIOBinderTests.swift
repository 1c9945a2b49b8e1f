import DeviceModel
import Foundation
import Synchronization
import HostDevices
import Testing
import VFIO
import VHotplugTestSupport

/// An onboard NIC in its own IOMMU group (the lab's e1000e).
let nic = "0000:00:1f.6"
let nicRecord = endpointRecord(address: nic, group: 12, driver: "e1000e")

/// What a failure test expects of every member afterwards.
func expectRolledBack(_ lab: Lab, _ original: [String: String?], group: Int, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    for (address, driver) in original.sorted(by: { $0.key < $1.key }) {
        #expect(lab.driver(address) == driver, "\(address) is not back on \(driver ?? "no driver"); kernel: \(lab.kernel.log)",
                sourceLocation: sourceLocation)
        #expect(lab.override(address) == "", "\(address): driver_override left as \(lab.override(address))",
                sourceLocation: sourceLocation)
    }
    #expect(!lab.groupNodeExists(group), "/dev/vfio/\(group) left behind", sourceLocation: sourceLocation)
    let left = try await lab.leftovers()
    #expect(left.waits == 0 && left.timers == 0, "leftover waits/timers: \(left)", sourceLocation: sourceLocation)
}

@Suite("VFIO rebinding against a kernel played in a umockdev testbed", .serialized)
struct VFIOBinderTests {
    // MARK: Success

    @Test("one device: e1000e -> vfio-pci through driver_override, unbind, drivers_probe; /dev/vfio/12 appears")
    func oneDevice() async throws {
        let lab = try await Lab(records: [nicRecord])
        defer { lab.stop() }
        let record = try await lab.binder.bind(try lab.device(nic))
        #expect(lab.driver(nic) == "vfio-pci")
        #expect(lab.override(nic) == "vfio-pci")
        #expect(lab.groupNodeExists(12))
        #expect(record == BindRecord(device: nic, group: 12, members: [.init(address: nic, originalDriver: "e1000e")],
                                     groupNode: lab.testbed.root + "/dev/vfio/12"))
        #expect(lab.writes == [
            "/bus/pci/devices/\(nic)/driver_override <- vfio-pci",
            "/bus/pci/drivers/e1000e/unbind <- \(nic)",
            "/bus/pci/drivers_probe <- \(nic)",
        ])
        let left = try await lab.leftovers()
        #expect(left.waits == 0 && left.timers == 0)
    }

    @Test("a group of two: the GPU and its HDMI audio both end on vfio-pci, in address order")
    func groupOfTwo() async throws {
        let lab = try await Lab(fixture: "pci-gpu-audio.umockdev")
        defer { lab.stop() }
        // Asking for the audio function moves the GPU too (QEMU needs the whole group).
        let record = try await lab.binder.bind(try lab.device(audio))
        #expect(lab.driver(gpu) == "vfio-pci" && lab.driver(audio) == "vfio-pci")
        #expect(lab.groupNodeExists(2))
        #expect(record.members.map(\.address) == [gpu, audio])
        #expect(record.members.map(\.originalDriver) == ["nouveau", "snd_hda_intel"])
        #expect(lab.driver("0000:00:01.0") == "pcieport", "the root port (another group) is not touched")
        #expect(lab.writes == [
            "/bus/pci/devices/\(gpu)/driver_override <- vfio-pci",
            "/bus/pci/drivers/nouveau/unbind <- \(gpu)",
            "/bus/pci/drivers_probe <- \(gpu)",
            "/bus/pci/devices/\(audio)/driver_override <- vfio-pci",
            "/bus/pci/drivers/snd_hda_intel/unbind <- \(audio)",
            "/bus/pci/drivers_probe <- \(audio)",
        ])
    }

    @Test("a group mate removed since the device was read: the bind moves the members the group has now")
    func mateRemovedSinceRead() async throws {
        let lab = try await Lab(fixture: "pci-gpu-audio.umockdev")
        defer { lab.stop() }
        let device = try lab.device(gpu)
        #expect(device.iommuGroupPeers == [audio])
        // The audio function leaves (a driver's remove, a hot-unplug of it alone).
        lab.testbed.remove("/sys/devices/pci0000:00/0000:00:01.0/\(audio)")
        #expect(!FileManager.default.fileExists(atPath: lab.testbed.sysRoot + "/kernel/iommu_groups/2/devices/\(audio)"))
        let record = try await lab.binder.bind(device)
        #expect(record.members.map(\.address) == [gpu])
        #expect(lab.driver(gpu) == "vfio-pci")
        #expect(lab.groupNodeExists(2))
    }

    @Test("a bind after a give-back that did not finish records what each member had before the first bind")
    func bindAfterFailedRestore() async throws {
        // drivers_probe: 1 and 2 are the bind's; 3 (the audio function going back, first) fails.
        let lab = try await Lab(fixture: "pci-gpu-audio.umockdev",
                                faults: [.init(operation: .write, pathSuffix: "/drivers_probe", occurrence: 3, errno: EIO)])
        defer { lab.stop() }
        let first = try await lab.binder.bind(try lab.device(gpu))
        await #expect(throws: VFIOError.self) { try await lab.binder.restore(first) }
        #expect(lab.driver(gpu) == "nouveau" && lab.driver(audio) == nil)
        let again = try await lab.binder.bind(try lab.device(gpu), previous: first)
        #expect(lab.driver(gpu) == "vfio-pci" && lab.driver(audio) == "vfio-pci")
        #expect(again.members == [.init(address: gpu, originalDriver: "nouveau"), .init(address: audio, originalDriver: "snd_hda_intel")])
        try await lab.binder.restore(again)
        #expect(lab.driver(gpu) == "nouveau" && lab.driver(audio) == "snd_hda_intel")
    }

    @Test("a group of three with a member that has no driver (Wi-Fi, xHCI, shared SRAM); restore gives each its own back")
    func groupWithUnboundMember() async throws {
        let lab = try await Lab(fixture: "pci-wifi.umockdev")
        defer { lab.stop() }
        let record = try await lab.binder.bind(try lab.device("0000:00:14.3"))
        #expect(record.members.map(\.address) == ["0000:00:14.0", "0000:00:14.2", "0000:00:14.3"])
        #expect(record.members.map(\.originalDriver) == ["xhci_hcd", nil, "iwlwifi"])
        for a in ["0000:00:14.0", "0000:00:14.2", "0000:00:14.3"] { #expect(lab.driver(a) == "vfio-pci") }
        // No unbind for the member without a driver.
        #expect(!lab.writes.contains { $0.contains("unbind <- 0000:00:14.2") })
        try await lab.binder.restore(record)
        try await expectRolledBack(lab, ["0000:00:14.0": "xhci_hcd", "0000:00:14.2": nil, "0000:00:14.3": "iwlwifi"], group: 8)
    }

    @Test("two restores of one group at once (two members' records, as two devices of it leaving together): both end, and the group is back on its drivers")
    func twoRestoresAtOnce() async throws {
        let lab = try await Lab(fixture: "pci-gpu-audio.umockdev")
        defer { lab.stop() }
        let first = try await lab.binder.bind(try lab.device(audio))
        // The GPU's own bind, its group already on vfio-pci: a record that moves nothing.
        let second = try await lab.binder.bind(try lab.device(gpu))
        #expect(second.members.allSatisfy { $0.wasOnVFIO })
        let binder = lab.binder
        async let a: Void = binder.restore(second)
        async let b: Void = binder.restore(first)
        try await a
        try await b
        #expect(lab.driver(gpu) == "nouveau" && lab.driver(audio) == "snd_hda_intel")
    }

    @Test("a device already on vfio-pci is left as it is, and restore leaves it there")
    func alreadyOnVFIO() async throws {
        let lab = try await Lab(records: [endpointRecord(address: nic, group: 12, driver: "vfio-pci")], natural: [nic: "e1000e"])
        defer { lab.stop() }
        let record = try await lab.binder.bind(try lab.device(nic))
        #expect(record.members == [.init(address: nic, originalDriver: "vfio-pci", wasOnVFIO: true)])
        #expect(lab.writes.isEmpty)
        #expect(lab.driver(nic) == "vfio-pci")
        try await lab.binder.restore(record)
        #expect(lab.writes.isEmpty)
        #expect(lab.driver(nic) == "vfio-pci")
    }

    @Test("a group where one member is on vfio-pci already: only the other moves, and only it goes back")
    func halfOnVFIO() async throws {
        let lab = try await Lab(records: [
            endpointRecord(address: "0000:03:00.0", group: 7, driver: "igb"),
            endpointRecord(address: "0000:03:00.1", group: 7, driver: "vfio-pci"),
        ], natural: ["0000:03:00.1": "igb"])
        defer { lab.stop() }
        let record = try await lab.binder.bind(try lab.device("0000:03:00.0"))
        #expect(record.members.map(\.wasOnVFIO) == [false, true])
        #expect(lab.driver("0000:03:00.0") == "vfio-pci" && lab.driver("0000:03:00.1") == "vfio-pci")
        #expect(!lab.writes.contains { $0.contains("0000:03:00.1") })
        try await lab.binder.restore(record)
        #expect(lab.driver("0000:03:00.0") == "igb" && lab.driver("0000:03:00.1") == "vfio-pci")
        #expect(lab.groupNodeExists(7), "the node stays: a member is still on vfio-pci")
    }

    @Test("a bridge inside the group is left on its driver; the endpoint moves")
    func bridgeInGroup() async throws {
        let lab = try await Lab(records: [
            endpointRecord(address: "0000:05:00.0", group: 14, driver: "pcieport", cls: "0x060400"),
            endpointRecord(address: "0000:06:00.0", parent: "/devices/pci0000:00/0000:05:00.0", group: 14, driver: "ahci",
                           cls: "0x010601"),
        ])
        defer { lab.stop() }
        let record = try await lab.binder.bind(try lab.device("0000:06:00.0"))
        #expect(record.members.map(\.address) == ["0000:06:00.0"])
        #expect(lab.driver("0000:05:00.0") == "pcieport" && lab.driver("0000:06:00.0") == "vfio-pci")
        #expect(!lab.writes.contains { $0.contains("0000:05:00.0") })
    }

    @Test("a bridge of the group on a host driver that keeps the IOMMU (an ISA bridge on lpc_ich, with a PCH's audio and SMBus): refused before anything is written (before, the SMBus went to vfio-pci for a device_add that could not succeed); with no driver it is left")
    func hostBoundBridgeInGroup() async throws {
        let records = [
            endpointRecord(address: "0000:00:1f.0", group: 11, driver: "lpc_ich", cls: "0x060100"),
            endpointRecord(address: "0000:00:1f.3", group: 11, driver: "snd_hda_intel", cls: "0x040300"),
            endpointRecord(address: "0000:00:1f.4", group: 11, driver: "i801_smbus", cls: "0x0c0500"),
        ]
        let lab = try await Lab(records: records)
        defer { lab.stop() }
        let error = await #expect(throws: VFIOError.self) { try await lab.binder.bind(try lab.device("0000:00:1f.3")) }
        let text = error.map { "\($0)" } ?? ""
        #expect(text.contains("0000:00:1f.0") && text.contains("lpc_ich") && text.contains("0x060100"), "\(text)")
        #expect(lab.writes.isEmpty, "\(lab.writes)")
        #expect(lab.driver("0000:00:1f.3") == "snd_hda_intel" && lab.driver("0000:00:1f.4") == "i801_smbus")
    }

    @Test("the same ISA bridge without a driver does not stand in the way: the group's endpoints move, the bridge is left")
    func unboundBridgeInGroup() async throws {
        let lab = try await Lab(records: [
            endpointRecord(address: "0000:00:1f.0", group: 11, driver: nil, cls: "0x060100"),
            endpointRecord(address: "0000:00:1f.3", group: 11, driver: "snd_hda_intel", cls: "0x040300"),
            endpointRecord(address: "0000:00:1f.4", group: 11, driver: "i801_smbus", cls: "0x0c0500"),
        ])
        defer { lab.stop() }
        let record = try await lab.binder.bind(try lab.device("0000:00:1f.3"))
        #expect(record.members.map(\.address) == ["0000:00:1f.3", "0000:00:1f.4"])
        #expect(!lab.writes.contains { $0.contains("0000:00:1f.0") })
    }

    @Test("restore after success: every member back on its driver, driver_override empty, /dev/vfio/2 gone")
    func restoreAfterBind() async throws {
        let lab = try await Lab(fixture: "pci-gpu-audio.umockdev")
        defer { lab.stop() }
        let record = try await lab.binder.bind(try lab.device(gpu))
        // The daemon keeps records across restarts: they survive JSON.
        let saved = try JSONDecoder().decode(BindRecord.self, from: JSONEncoder().encode(record))
        try await lab.binder.restore(saved)
        try await expectRolledBack(lab, [gpu: "nouveau", audio: "snd_hda_intel"], group: 2)
        #expect(Array(lab.writes.suffix(6)) == [
            "/bus/pci/devices/\(audio)/driver_override <- \\n",
            "/bus/pci/drivers/vfio-pci/unbind <- \(audio)",
            "/bus/pci/drivers_probe <- \(audio)",
            "/bus/pci/devices/\(gpu)/driver_override <- \\n",
            "/bus/pci/drivers/vfio-pci/unbind <- \(gpu)",
            "/bus/pci/drivers_probe <- \(gpu)",
        ])
    }

    @Test("restore of a group one of whose members has left the host (its slot unplugged before its remove event came): the others go back, and it is no failure")
    func restoreWithAMemberGone() async throws {
        let lab = try await Lab(fixture: "pci-gpu-audio.umockdev")
        defer { lab.stop() }
        let record = try await lab.binder.bind(try lab.device(gpu))
        lab.testbed.remove("/sys/devices/pci0000:00/0000:00:01.0/\(audio)")
        try await lab.binder.restore(record)
        #expect(lab.driver(gpu) == "nouveau" && lab.override(gpu) == "")
    }

    @Test("restore keeps going when one member cannot go back, and says which")
    func restorePartialFailure() async throws {
        let lab = try await Lab(fixture: "pci-gpu-audio.umockdev")
        defer { lab.stop() }
        let record = try await lab.binder.bind(try lab.device(gpu))
        lab.io.add(.init(operation: .write, pathSuffix: "vfio-pci/unbind", occurrence: 1, errno: EBUSY))
        let e = await #expect(throws: VFIOError.self) { try await lab.binder.restore(record) }
        #expect(e?.device == audio && e?.step == .unbind && e?.errno == EBUSY)
        #expect(e?.cleanupFailures == [])
        #expect(e?.description.contains("Device or resource busy") == true)
        #expect(lab.driver(audio) == "vfio-pci", "the unbind failed: still on vfio-pci")
        #expect(lab.driver(gpu) == "nouveau" && lab.override(gpu) == "")
    }

    @Test("two binds asked for at once run one after the other, never interleaved")
    func concurrentBinds() async throws {
        let lab = try await Lab(fixture: "pci-gpu-audio.umockdev", records: [nicRecord])
        defer { lab.stop() }
        let (g, n, binder) = (try lab.device(gpu), try lab.device(nic), lab.binder)
        async let first = binder.bind(g)
        async let second = binder.bind(n)
        let records = try await [first, second]
        #expect(records.map(\.group) == [2, 12])
        #expect(lab.driver(gpu) == "vfio-pci" && lab.driver(audio) == "vfio-pci" && lab.driver(nic) == "vfio-pci")
        let owners = lab.writes.map { $0.contains(nic) ? "N" : "G" }.joined()
        #expect(owners == "GGGGGGNNN" || owners == "NNNGGGGGG", "\(lab.writes)")
    }

    // MARK: Failures, each rolled back

    /// One failure of the rebind, for the first or the second member of the GPU's group.
    struct Failure: Sendable, CustomTestStringConvertible {
        enum How: Sendable {
            case fault(SysfsIOError.Operation, suffix: String, errno: Int32)
            case refuseUnbind(String, from: String)
            case refuseBind(String)
            case noGroupNode
        }
        var name: String
        var how: How
        var device: String
        var step: VFIOError.Step
        var testDescription: String { name }
    }

    static let failures: [Failure] = [
        Failure(name: "driver_override write, 1st member", how: .fault(.write, suffix: "\(gpu)/driver_override", errno: EACCES),
                device: gpu, step: .driverOverride),
        Failure(name: "driver_override write, 2nd member", how: .fault(.write, suffix: "\(audio)/driver_override", errno: EACCES),
                device: audio, step: .driverOverride),
        Failure(name: "unbind write, 1st member", how: .fault(.write, suffix: "nouveau/unbind", errno: ENODEV),
                device: gpu, step: .unbind),
        Failure(name: "unbind write, 2nd member", how: .fault(.write, suffix: "snd_hda_intel/unbind", errno: ENODEV),
                device: audio, step: .unbind),
        Failure(name: "unbind never completes, 1st member", how: .refuseUnbind(gpu, from: "nouveau"),
                device: gpu, step: .waitForUnbind),
        Failure(name: "unbind never completes, 2nd member", how: .refuseUnbind(audio, from: "snd_hda_intel"),
                device: audio, step: .waitForUnbind),
        Failure(name: "drivers_probe write, 1st member", how: .fault(.write, suffix: "drivers_probe", errno: EIO),
                device: gpu, step: .driversProbe),
        Failure(name: "drivers_probe write, 2nd member", how: .fault(.write, suffix: "/bus/pci/drivers_probe", errno: ENOMEM),
                device: audio, step: .driversProbe),
        Failure(name: "vfio-pci never binds, 1st member", how: .refuseBind(gpu), device: gpu, step: .waitForDriver),
        Failure(name: "vfio-pci never binds, 2nd member", how: .refuseBind(audio), device: audio, step: .waitForDriver),
        Failure(name: "/dev/vfio/2 never appears (after both members)", how: .noGroupNode, device: gpu, step: .waitForGroupNode),
    ]

    @Test("a failure at each step, for the first and the second member: every member back where it was", arguments: failures)
    func failureRollsBack(_ f: Failure) async throws {
        var refusals = FakeKernel.Refusals()
        var faults: [FaultInjectingSysfsIO.Fault] = []
        var timeout = 5.0
        switch f.how {
        case .fault(let op, let suffix, let errno):
            // The 2nd member's drivers_probe is the 2nd write to that file.
            let occurrence = f.step == .driversProbe && f.device == audio ? 2 : 1
            faults = [.init(operation: op, pathSuffix: suffix, occurrence: occurrence, errno: errno)]
        case .refuseUnbind(let a, let d):
            refusals.unbind[a] = d
            timeout = 0.5
        case .refuseBind(let a):
            refusals.bind[a] = "vfio-pci"
            timeout = 0.5
        case .noGroupNode:
            refusals.groupNode = true
            timeout = 0.5
        }
        let lab = try await Lab(fixture: "pci-gpu-audio.umockdev", refusals: refusals, faults: faults, timeout: timeout)
        defer { lab.stop() }
        let e = await #expect(throws: VFIOError.self) { try await lab.binder.bind(try lab.device(gpu)) }
        #expect(e?.device == f.device, "\(String(describing: e))")
        #expect(e?.step == f.step, "\(String(describing: e))")
        #expect(e?.cleanupFailures == [], "\(String(describing: e))")
        if case .fault(_, _, let errno) = f.how {
            #expect(e?.errno == errno)
            #expect(e?.description.contains(String(cString: strerror(errno))) == true)
            #expect(lab.io.allFired)
        } else {
            #expect(e?.isTimeout == true)
            #expect(e?.description.contains("within 500 ms") == true, "\(String(describing: e))")
        }
        #expect(e?.description.hasPrefix(f.device + ": " + f.step.rawValue) == true, "\(String(describing: e))")
        try await expectRolledBack(lab, [gpu: "nouveau", audio: "snd_hda_intel"], group: 2)
    }

    @Test("/dev/vfio/12 never appears for a group of one: rolled back")
    func noGroupNodeSingle() async throws {
        let lab = try await Lab(records: [nicRecord], refusals: .init(groupNode: true), timeout: 0.5)
        defer { lab.stop() }
        let e = await #expect(throws: VFIOError.self) { try await lab.binder.bind(try lab.device(nic)) }
        #expect(e?.step == .waitForGroupNode && e?.isTimeout == true)
        #expect(e?.description.contains("/dev/vfio/12") == true)
        try await expectRolledBack(lab, [nic: "e1000e"], group: 12)
    }

    @Test("every sysfs write of the rebind failing in turn: the group always ends on its original drivers")
    func everyWriteInTurn() async throws {
        // The writes of a successful bind of the group (3 per member).
        let writes = 6
        for n in 1...writes {
            let lab = try await Lab(fixture: "pci-gpu-audio.umockdev",
                              faults: [.init(operation: .write, occurrence: n, errno: EIO)])
            defer { lab.stop() }
            let e = await #expect(throws: VFIOError.self, "write \(n)") { try await lab.binder.bind(try lab.device(gpu)) }
            #expect(e?.errno == EIO && e?.cleanupFailures == [], "write \(n): \(String(describing: e))")
            #expect(lab.io.writes[n - 1].injected == EIO)
            try await expectRolledBack(lab, [gpu: "nouveau", audio: "snd_hda_intel"], group: 2)
        }
        // And with no fault, exactly that many writes.
        let lab = try await Lab(fixture: "pci-gpu-audio.umockdev")
        defer { lab.stop() }
        _ = try await lab.binder.bind(try lab.device(gpu))
        #expect(lab.io.writes.count == writes)
    }

    @Test("a failure while rolling back is reported beside the first one")
    func rollbackFailure() async throws {
        // The audio's drivers_probe fails; then the GPU's unbind from vfio-pci fails too.
        let lab = try await Lab(fixture: "pci-gpu-audio.umockdev", faults: [
            .init(operation: .write, pathSuffix: "drivers_probe", occurrence: 2, errno: EIO),
            .init(operation: .write, pathSuffix: "vfio-pci/unbind", occurrence: 1, errno: EBUSY),
        ])
        defer { lab.stop() }
        let e = await #expect(throws: VFIOError.self) { try await lab.binder.bind(try lab.device(gpu)) }
        #expect(e?.device == audio && e?.step == .driversProbe)
        #expect(e?.cleanupFailures.map(\.device) == [gpu])
        #expect(e?.cleanupFailures.first?.errno == EBUSY)
        #expect(e?.description.contains("while giving the devices back") == true)
        // The audio went back; the GPU is stranded on vfio-pci, and the error says so.
        #expect(lab.driver(audio) == "snd_hda_intel")
        #expect(lab.driver(gpu) == "vfio-pci")
    }

    // MARK: Refusals (nothing touched)

    @Test("a PCI bridge is refused")
    func bridgeRefused() async throws {
        let lab = try await Lab(fixture: "pci-gpu-audio.umockdev")
        defer { lab.stop() }
        let e = await #expect(throws: VFIOError.self) { try await lab.binder.bind(try lab.device("0000:00:01.0")) }
        #expect(e?.step == .check && e?.isRefusal == true)
        #expect(e?.description.contains("bridge") == true)
        #expect(lab.io.writes.isEmpty)
        #expect(lab.driver("0000:00:01.0") == "pcieport")
    }

    @Test("the host's boot-disk controller is refused")
    func bootDeviceRefused() async throws {
        let lab = try await Lab(records: [nicRecord], boot: ["/devices/pci0000:00/\(nic)/nvme/nvme0/nvme0n1"])
        defer { lab.stop() }
        let device = try lab.device(nic)
        #expect(device.holdsHostBootFilesystem)
        let e = await #expect(throws: VFIOError.self) { try await lab.binder.bind(device) }
        #expect(e?.step == .check && e?.isRefusal == true)
        #expect(e?.description.contains("/boot") == true)
        #expect(lab.io.writes.isEmpty)
    }

    @Test("a group that holds the boot-disk controller is refused, naming it")
    func bootPeerRefused() async throws {
        let lab = try await Lab(fixture: "pci-gpu-audio.umockdev",
                          boot: ["/devices/pci0000:00/0000:00:01.0/\(audio)/nvme/nvme0/nvme0n1/nvme0n1p2"])
        defer { lab.stop() }
        let e = await #expect(throws: VFIOError.self) { try await lab.binder.bind(try lab.device(gpu)) }
        #expect(e?.device == gpu && e?.step == .check)
        #expect(e?.description.contains("IOMMU group 2 also holds \(audio)") == true)
        #expect(lab.io.writes.isEmpty)
        #expect(lab.driver(gpu) == "nouveau")
    }

    @Test("while / is unresolved, a group with a disk's controller is refused, saying why")
    func unresolvedBootPeerRefused() async throws {
        let lab = try await Lab(fixture: "pci-gpu-audio.umockdev", unresolvedBoot: ["/ (zfs rpool/ROOT/pve-1)"],
                                disks: ["/devices/pci0000:00/0000:00:01.0/\(audio)/nvme/nvme0/nvme0n1"])
        defer { lab.stop() }
        let e = await #expect(throws: VFIOError.self) { try await lab.binder.bind(try lab.device(gpu)) }
        #expect(e?.description.contains("IOMMU group 2 also holds \(audio), which serves a disk, while the host's "
                                        + "/ (zfs rpool/ROOT/pve-1) cannot be resolved to its disks") == true, "\(String(describing: e))")
        #expect(lab.io.writes.isEmpty)
        #expect(lab.driver(gpu) == "nouveau")
        let direct = await #expect(throws: VFIOError.self) { try await lab.binder.bind(try lab.device(audio)) }
        #expect(direct?.description.contains("it serves a disk, while the host's / (zfs rpool/ROOT/pve-1)") == true)
    }

    @Test("a device with no IOMMU group is refused with a clear error")
    func noIOMMUGroup() async throws {
        let lab = try await Lab(records: [endpointRecord(address: nic, group: nil, driver: "e1000e")])
        defer { lab.stop() }
        let device = try lab.device(nic)
        #expect(device.iommuGroup == nil)
        let e = await #expect(throws: VFIOError.self) { try await lab.binder.bind(device) }
        #expect(e?.step == .check && e?.isRefusal == true)
        #expect(e?.description.hasPrefix("\(nic): check: no IOMMU group: the IOMMU is off or absent (intel_iommu=on") == true,
                "\(String(describing: e))")
        #expect(lab.io.writes.isEmpty)
        #expect(lab.driver(nic) == "e1000e")
    }

    @Test("vfio-pci not loaded: refused before anything is written")
    func vfioNotLoaded() async throws {
        let lab = try await Lab(records: [nicRecord], vfioLoaded: false)
        defer { lab.stop() }
        let e = await #expect(throws: VFIOError.self) { try await lab.binder.bind(try lab.device(nic)) }
        #expect(e?.step == .check && e?.description.contains("modprobe vfio-pci") == true)
        #expect(lab.io.writes.isEmpty)
    }

    // MARK: The seam

    @Test("the real seam: a write's error names the path, the value and the errno")
    func systemIOError() throws {
        let io = SystemSysfsIO()
        let e = #expect(throws: SysfsIOError.self) { try io.write("vfio-pci", to: "/nonexistent/driver_override") }
        #expect(e?.errno == ENOENT)
        #expect(e?.description == #"write "vfio-pci" to /nonexistent/driver_override: No such file or directory (errno 2)"#)
        #expect(try io.linkName("/nonexistent/driver") == nil)
        #expect(try io.exists("/nonexistent") == false)
    }

    @Test("the fault injector picks a call by path suffix and occurrence, or by index")
    func faultInjector() throws {
        let dir = scratchPath("vfio-io")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for f in ["a", "b"] { _ = FileManager.default.createFile(atPath: dir + "/" + f, contents: nil) }
        let io = FaultInjectingSysfsIO(faults: [.init(operation: .write, pathSuffix: "/b", occurrence: 2, errno: EBUSY),
                                                .init(occurrence: 5, errno: EPERM)])
        try io.write("1", to: dir + "/a")
        try io.write("2", to: dir + "/b")
        #expect(throws: SysfsIOError(operation: .write, path: dir + "/b", value: "3", errno: EBUSY)) { try io.write("3", to: dir + "/b") }
        #expect(try io.read(dir + "/b") == "2")
        #expect(throws: SysfsIOError(operation: .exists, path: dir, errno: EPERM)) { _ = try io.exists(dir) }
        try io.write("4", to: dir + "/b")
        #expect(io.calls.map(\.injected) == [nil, nil, EBUSY, nil, EPERM, nil])
        #expect(io.allFired)
    }
}

@Suite("VFIO records across a restart of vhotplug, against a kernel played in a umockdev testbed", .serialized)
struct VFIORestartTests {
    @Test("bind writes the record; a new binder (a restarted vhotplug) restores from it alone; the record goes")
    func restoreAfterRestart() async throws {
        let dir = try TempFolder()
        defer { dir.done() }
        let store = BindRecordStore(directory: dir.path + "/vfio")
        let lab = try await Lab(fixture: "pci-gpu-audio.umockdev", store: store)
        defer { lab.stop() }
        let record = try await lab.binder.bind(try lab.device(gpu))
        #expect(lab.driver(gpu) == "vfio-pci" && lab.driver(audio) == "vfio-pci")
        #expect(dir.files("/vfio") == ["\(gpu).json"])
        // vhotplug is killed: the bind exists only in the file
        let restarted = lab.restartBinder(store: BindRecordStore(directory: dir.path + "/vfio"))
        let (records, problems) = restarted.store!.load()
        #expect(problems == [])
        #expect(records == [record])
        try await restarted.restore(try #require(records.first))
        try await expectRolledBack(lab, [gpu: "nouveau", audio: "snd_hda_intel"], group: 2)
        #expect(dir.files("/vfio") == [], "the record outlives its restore")
    }

    @Test("a bind whose record cannot be kept moves nothing: a restarted daemon could not give the group back")
    func unsavableRecordRefused() async throws {
        let dir = try TempFolder()
        defer { dir.done() }
        // The records' folder is a file: every save fails.
        FileManager.default.createFile(atPath: dir.path + "/vfio", contents: Data("x".utf8))
        let lab = try await Lab(fixture: "pci-gpu-audio.umockdev", store: BindRecordStore(directory: dir.path + "/vfio"))
        defer { lab.stop() }
        let error = await #expect(throws: VFIOError.self) { try await lab.binder.bind(try lab.device(gpu)) }
        #expect(error?.step == .check && "\(error.map { "\($0)" } ?? "")".contains("its VFIO record cannot be kept"), "\(String(describing: error))")
        #expect(lab.writes.isEmpty, "\(lab.writes)")
        #expect(lab.driver(gpu) == "nouveau" && lab.driver(audio) == "snd_hda_intel")
    }

    @Test("the device whose bind moved its group leaves the host: its record goes over to a mate still here, which gives the group back")
    func handOverToMate() async throws {
        let dir = try TempFolder()
        defer { dir.done() }
        let lab = try await Lab(fixture: "pci-gpu-audio.umockdev", store: BindRecordStore(directory: dir.path + "/vfio"))
        defer { lab.stop() }
        let record = try await lab.binder.bind(try lab.device(gpu))
        #expect(lab.driver(audio) == "vfio-pci" && lab.override(audio) == "vfio-pci")
        // The GPU goes (unplugged); the audio function stays on vfio-pci, and only the GPU's record says where it was before.
        lab.testbed.remove("/sys/devices/pci0000:00/0000:00:01.0/\(gpu)")
        let next = try #require(await lab.binder.handOver(record, to: audio, merging: nil))
        #expect(next == BindRecord(device: audio, group: 2, members: [.init(address: audio, originalDriver: "snd_hda_intel")],
                                   groupNode: record.groupNode))
        #expect(dir.files("/vfio") == ["\(audio).json"], "stored under the mate, the GPU's deleted")
        try await lab.binder.restore(next)
        #expect(lab.driver(audio) == "snd_hda_intel")
        #expect(lab.override(audio) == "")
        // A record with nothing left to give back (the mate was on vfio-pci before) is deleted, not passed on.
        let onVFIO = BindRecord(device: gpu, group: 2, members: [.init(address: audio, originalDriver: "vfio-pci", wasOnVFIO: true)],
                                groupNode: record.groupNode)
        #expect(await lab.binder.handOver(onVFIO, to: audio, merging: nil) == nil)
    }

    @Test("a hand-over to a mate whose own give-back is running waits for it: the record it stores under the mate outlives that give-back (before, the give-back's end deleted it, and the group's drivers were forgotten)")
    func handOverWaitsForGiveBack() async throws {
        let dir = try TempFolder()
        defer { dir.done() }
        let store = BindRecordStore(directory: dir.path + "/vfio")
        let lab = try await Lab(fixture: "pci-gpu-audio.umockdev", store: store)
        defer { lab.stop() }
        let binder = lab.binder
        let record = try await binder.bind(try lab.device(gpu))
        // The audio function's own record, as if its own attach had bound it.
        let own = BindRecord(device: audio, group: 2, members: [.init(address: audio, originalDriver: "snd_hda_intel")],
                             groupNode: record.groupNode)
        try store.save(own)
        // Its give-back is in the middle of its unbind from vfio-pci...
        lab.kernel.hold("vfio-pci/unbind")
        let giveBack = Task { try await binder.restore(own) }
        try lab.kernel.waitFor("held unbind \(audio)")
        // ...when the GPU leaves the host and hands its record over to it.
        lab.testbed.remove("/sys/devices/pci0000:00/0000:00:01.0/\(gpu)")
        let done = Atomic<Bool>(false)
        let handOver = Task {
            let next = await binder.handOver(record, to: audio, merging: own)
            done.store(true, ordering: .releasing)
            return next
        }
        // The hand-over waits behind the give-back (the old code did not: it finished now).
        let deadline = Date().addingTimeInterval(20)
        while await binder.queuedOperations == 0 && !done.load(ordering: .acquiring) && Date() < deadline { await Task.yield() }
        let ranDuringGiveBack = done.load(ordering: .acquiring)
        #expect(!ranDuringGiveBack, "the hand-over ran during the give-back")
        lab.kernel.release("vfio-pci/unbind")
        try await giveBack.value
        let next = try #require(await handOver.value)
        #expect(next.device == audio && next.members.map(\.address) == [audio])
        #expect(dir.files("/vfio") == ["\(audio).json"], "the hand-over's record is there, the GPU's gone")
        #expect(lab.driver(audio) == "snd_hda_intel")
    }

    @Test("a failed restore keeps the record for another try; forget deletes it")
    func failedRestoreKeepsRecord() async throws {
        let dir = try TempFolder()
        defer { dir.done() }
        let lab = try await Lab(records: [nicRecord], faults: [.init(operation: .write, pathSuffix: "/drivers_probe", occurrence: 2, errno: EIO)],
                                store: BindRecordStore(directory: dir.path))
        defer { lab.stop() }
        let record = try await lab.binder.bind(try lab.device(nic))
        await #expect(throws: VFIOError.self) { try await lab.binder.restore(record) }
        #expect(dir.files() == ["\(nic).json"])
        await lab.binder.forget(record)
        #expect(dir.files() == [])
    }

    @Test("a bind whose rollback does not finish keeps its record, written before anything moved, of what each member had, and hands it to the caller; bound again with it and restored, both are back")
    func failedRollbackKeepsRecord() async throws {
        let dir = try TempFolder()
        defer { dir.done() }
        // drivers_probe: the GPU's (1) works, the audio function's (2) fails, and so does its way back (3).
        let lab = try await Lab(fixture: "pci-gpu-audio.umockdev",
                                faults: [.init(operation: .write, pathSuffix: "/drivers_probe", occurrence: 2, errno: EIO),
                                         .init(operation: .write, pathSuffix: "/drivers_probe", occurrence: 3, errno: EIO)],
                                store: BindRecordStore(directory: dir.path))
        defer { lab.stop() }
        let e = await #expect(throws: VFIOError.self) { _ = try await lab.binder.bind(try lab.device(gpu)) }
        #expect(e?.cleanupFailures.count == 1)
        #expect(lab.driver(gpu) == "nouveau" && lab.driver(audio) == nil)
        let (records, problems) = BindRecordStore(directory: dir.path).load()
        #expect(problems == [])
        #expect(records.map(\.members) == [[.init(address: gpu, originalDriver: "nouveau"), .init(address: audio, originalDriver: "snd_hda_intel")]])
        // The caller gets it too (the daemon keeps it). Bound again with it, what each member had
        // first stays recorded (before, the caller had none: the next bind recorded the group as it
        // was left, the audio function on no driver), and the restore gives both back.
        let kept = try #require(e?.keptRecord, "the error carries no record")
        #expect(kept == records.first)
        let again = try await lab.binder.bind(try lab.device(gpu), previous: kept)
        #expect(again.members == kept.members)
        try await lab.binder.restore(again)
        #expect(lab.driver(gpu) == "nouveau" && lab.driver(audio) == "snd_hda_intel")
        #expect(dir.files() == [])
    }

    @Test("a rolled-back bind writes no record")
    func rollbackWritesNothing() async throws {
        let dir = try TempFolder()
        defer { dir.done() }
        let lab = try await Lab(records: [nicRecord], faults: [.init(operation: .write, pathSuffix: "/drivers_probe", occurrence: 1, errno: EIO)],
                                store: BindRecordStore(directory: dir.path))
        defer { lab.stop() }
        await #expect(throws: VFIOError.self) { _ = try await lab.binder.bind(try lab.device(nic)) }
        #expect(lab.driver(nic) == "e1000e")
        #expect(dir.files() == [])
    }
}
