import DeviceModel
import Foundation
import HostDevices
import Reactor
import Synchronization
import VFIO
import VHotplugTestSupport

let fixtures = Repository.root + "/Tests/HostDevicesTests/Fixtures"
let gpu = "0000:01:00.0"
let audio = "0000:01:00.1"

/// A single-function device in its own IOMMU group, in umockdev's record format
/// (a helper record makes the group folder, another the driver folder, as in
/// the fixtures).
func endpointRecord(address: String, parent: String = "/devices/pci0000:00", group: Int?, driver: String?,
                    cls: String = "0x020000", vendor: String = "0x8086", device: String = "0x15bc") -> String {
    let path = parent + "/" + address
    let up = String(repeating: "../", count: path.split(separator: "/").count)
    var text = """
        P: \(path)
        E: SUBSYSTEM=pci
        E: PCI_SLOT_NAME=\(address)
        A: class=\(cls)\\n
        A: vendor=\(vendor)\\n
        A: device=\(device)\\n
        A: driver_override=(null)\\n

        """
    if let driver { text += "L: driver=\(up)bus/pci/drivers/\(driver)\n" }
    if let group { text += "L: iommu_group=\(up)kernel/iommu_groups/\(group)\n" }
    text += "\n"
    if let group {
        text += """
            P: /devices/../kernel/iommu_groups/\(group)/devices/../.umockdev-iommu-group-\(group)-\(address)
            E: SUBSYSTEM=umockdev-helper
            A: ../type=DMA\\n
            L: ../devices/\(address)=../../../..\(path)


            """
    }
    if let driver {
        text += """
            P: /devices/../bus/pci/drivers/\(driver)/.umockdev-pci-driver-\(driver)-\(address)
            E: SUBSYSTEM=umockdev-helper
            A: ../../../drivers_autoprobe=1\\n
            A: ../../../drivers_probe=
            A: ../bind=
            A: ../unbind=
            L: ../\(address)=../../../..\(path)


            """
    }
    return text
}

/// A testbed, the kernel playing in it, an event loop, and a binder fed by the
/// kernel's uevents. One per test; `stop()` ends the kernel's threads.
final class Lab {
    let testbed: Testbed
    let host: LoopHost
    let io: FaultInjectingSysfsIO
    /// The binder the kernel's events go to (`restartBinder` replaces it).
    private let current: BinderSlot
    var binder: VFIOBinder { current.binder }
    let timeout: Double
    let probeQuiet: Double
    let probeLimit: Double
    let boot: BootDevices
    let kernel: FakeKernel
    let reader: DeviceReader

    init(fixture: String? = nil, records: [String] = [], natural: [String: String] = [:], vfioLoaded: Bool = true,
         refusals: FakeKernel.Refusals = .init(), faults: [FaultInjectingSysfsIO.Fault] = [],
         timeout: Double = 5, boot: [String] = [], unresolvedBoot: [String] = [], disks: [String] = [],
         store: BindRecordStore? = nil, probeQuiet: Double = 0.5, probeLimit: Double = 10) async throws {
        testbed = await Testbed.make()
        if let fixture { try testbed.add(file: fixtures + "/" + fixture) }
        for r in records { try testbed.add(record: r) }
        kernel = try FakeKernel(root: testbed.root, natural: natural, vfioLoaded: vfioLoaded, refusals: refusals)
        host = try LoopHost()
        io = FaultInjectingSysfsIO(faults: faults)
        self.timeout = timeout
        self.probeQuiet = probeQuiet
        self.probeLimit = probeLimit
        let boot = BootDevices(paths: boot, unresolved: unresolvedBoot, disks: disks)
        self.boot = boot
        let current = BinderSlot(Self.makeBinder(host, testbed, io, boot, timeout, store, probeQuiet, probeLimit))
        self.current = current
        // The daemon's udev monitor passes events on the same way.
        kernel.start { action, subsystem, devpath in
            let binder = current.binder
            Task { await binder.deviceEvent(action: action, subsystem: subsystem, sysPath: devpath) }
        }
        reader = DeviceReader(sysfs: Sysfs(root: testbed.sysRoot), usbIDs: nil, bootDevices: boot,
                              useLibUSB: false)
    }

    deinit { kernel.stop() }

    /// A new binder in place of the old one, as a restarted daemon makes: it
    /// knows nothing of earlier binds but what `store` holds.
    func restartBinder(store: BindRecordStore?) -> VFIOBinder {
        let next = Self.makeBinder(host, testbed, io, boot, timeout, store, probeQuiet, probeLimit)
        current.binder = next
        return next
    }

    private static func makeBinder(_ host: LoopHost, _ testbed: Testbed, _ io: FaultInjectingSysfsIO, _ boot: BootDevices,
                                   _ timeout: Double, _ store: BindRecordStore?, _ probeQuiet: Double,
                                   _ probeLimit: Double) -> VFIOBinder {
        VFIOBinder(loop: host.loop, sysfs: Sysfs(root: testbed.sysRoot), devRoot: testbed.root + "/dev",
                   io: io, bootDevices: boot, timeout: timeout, store: store, probeQuiet: probeQuiet,
                   probeLimit: probeLimit)
    }

    func stop() { kernel.stop() }

    /// The device as the daemon would read it.
    func device(_ address: String) throws -> PCIDevice {
        let real = try FileManager.default.destinationOfSymbolicLink(atPath: testbed.sysRoot + "/bus/pci/devices/\(address)")
        return try reader.readPCI(sysPath: "/" + real.split(separator: "/").drop { $0 == ".." }.joined(separator: "/"))
    }

    func driver(_ address: String) -> String? {
        FakeKernel.linkName(testbed.sysRoot + "/bus/pci/devices/\(address)/driver")
    }

    /// `driver_override` as text; empty when cleared (`\n`, or `(null)` as the kernel shows it).
    func override(_ address: String) -> String {
        let s = ((try? String(contentsOfFile: testbed.sysRoot + "/bus/pci/devices/\(address)/driver_override", encoding: .utf8)) ?? "?")
            .trimmingCharacters(in: .whitespacesAndNewlines)
        return s == "(null)" ? "" : s
    }

    func groupNodeExists(_ group: Int) -> Bool {
        FileManager.default.fileExists(atPath: testbed.root + "/dev/vfio/\(group)")
    }

    /// Waits and timers the binder still holds (none after every operation).
    func leftovers() async throws -> (waits: Int, timers: Int) {
        let waits = await binder.pendingWaits
        let timers = try await OnLoop(host.loop).run { $0.pendingTimers }
        return (waits, timers)
    }

    /// The writes made, as `path-suffix <- value` (path below the sysfs root).
    var writes: [String] {
        io.writes.map { w in
            let p = w.path.hasPrefix(testbed.sysRoot) ? String(w.path.dropFirst(testbed.sysRoot.count)) : w.path
            return "\(p) <- \((w.value ?? "").replacingOccurrences(of: "\n", with: "\\n"))"
        }
    }
}

/// The binder the kernel's events go to, replaced when the "daemon" restarts.
final class BinderSlot: Sendable {
    private let slot: Mutex<VFIOBinder>
    init(_ binder: VFIOBinder) { slot = Mutex(binder) }
    var binder: VFIOBinder {
        get { slot.withLock { $0 } }
        set { slot.withLock { $0 = newValue } }
    }
}
