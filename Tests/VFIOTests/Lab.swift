import DeviceModel
import Foundation
import HostDevices
import Reactor
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
    let binder: VFIOBinder
    let kernel: FakeKernel
    let reader: DeviceReader

    init(fixture: String? = nil, records: [String] = [], natural: [String: String] = [:], vfioLoaded: Bool = true,
         refusals: FakeKernel.Refusals = .init(), faults: [FaultInjectingSysfsIO.Fault] = [],
         timeout: Double = 5, boot: [String] = []) async throws {
        testbed = await Testbed.make()
        if let fixture { try testbed.add(file: fixtures + "/" + fixture) }
        for r in records { try testbed.add(record: r) }
        kernel = try FakeKernel(root: testbed.root, natural: natural, vfioLoaded: vfioLoaded, refusals: refusals)
        host = try LoopHost()
        io = FaultInjectingSysfsIO(faults: faults)
        let binder = VFIOBinder(loop: host.loop, sysfs: Sysfs(root: testbed.sysRoot), devRoot: testbed.root + "/dev",
                                io: io, bootDevices: BootDevices(paths: boot), timeout: timeout)
        self.binder = binder
        // The daemon's udev monitor passes events on the same way.
        kernel.start { action, subsystem, devpath in
            Task { await binder.deviceEvent(action: action, subsystem: subsystem, sysPath: devpath) }
        }
        reader = DeviceReader(sysfs: Sysfs(root: testbed.sysRoot), usbIDs: nil, bootDevices: BootDevices(paths: boot),
                              useLibUSB: false)
    }

    deinit { kernel.stop() }

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
