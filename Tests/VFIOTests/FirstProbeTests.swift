import DeviceModel
import Foundation
import Reactor
import Testing
import VFIO
import VHotplugTestSupport

/// A function hot-plugged a moment ago, with no driver yet: the kernel's own first
/// probe (e1000e) is still to come. In group 13 alone, or in the NIC's group 12.
private let fresh = "0000:02:00.0"
private func freshRecord(group: Int) -> String { endpointRecord(address: fresh, group: group, driver: nil) }
private let freshDevpath = "/devices/pci0000:00/\(fresh)"

/// What the kernel's first probe does at the end: binds the driver (and sends `bind`).
private func kernelProbes(_ lab: Lab, _ address: String, driver: String = "e1000e") throws {
    try SystemSysfsIO().write(address, to: lab.testbed.sysRoot + "/bus/pci/drivers/\(driver)/bind")
}

@Suite("VFIO: a device just added is rebound only after the kernel's first probe of it", .serialized)
struct FirstProbeTests {
    // (The quiet window is an hour: a bind that waited for it instead of the event fails the time limit.)
    @Test("the device itself: the bind waits for its bind event (quiet window an hour) and records e1000e as its driver",
          .timeLimit(.minutes(1)))
    func waitsForOwnProbe() async throws {
        let lab = try await Lab(records: [nicRecord, freshRecord(group: 13)], natural: [fresh: "e1000e"], probeQuiet: 3600)
        defer { lab.stop() }
        await lab.binder.deviceEvent(action: "add", subsystem: "pci", sysPath: freshDevpath)
        let device = try lab.device(fresh)
        let binder = lab.binder
        let binding = Task { try await binder.bind(device) }
        try kernelProbes(lab, fresh)
        let record = try await binding.value
        #expect(record.members == [.init(address: fresh, originalDriver: "e1000e")], "kernel: \(lab.kernel.log)")
        #expect(lab.driver(fresh) == "vfio-pci")
        #expect(lab.writes.first == "/bus/pci/devices/\(fresh)/driver_override <- vfio-pci")
        try await lab.binder.restore(record)
        #expect(lab.driver(fresh) == "e1000e" && lab.override(fresh) == "")
        let left = try await lab.leftovers()
        #expect(left.waits == 0 && left.timers == 0)
    }

    @Test("a group mate just added (the race seen in the lab): the NIC's bind waits for the mate's probe, both go and come back")
    func waitsForGroupMate() async throws {
        let lab = try await Lab(records: [nicRecord, freshRecord(group: 12)], natural: [fresh: "e1000e"], probeQuiet: 60)
        defer { lab.stop() }
        await lab.binder.deviceEvent(action: "add", subsystem: "pci", sysPath: freshDevpath)
        let device = try lab.device(nic)
        let binder = lab.binder
        let binding = Task { try await binder.bind(device) }
        try kernelProbes(lab, fresh)
        let record = try await binding.value
        #expect(record.members == [.init(address: nic, originalDriver: "e1000e"), .init(address: fresh, originalDriver: "e1000e")],
                "kernel: \(lab.kernel.log)")
        #expect(lab.driver(nic) == "vfio-pci" && lab.driver(fresh) == "vfio-pci")
        try await lab.binder.restore(record)
        #expect(lab.driver(nic) == "e1000e" && lab.driver(fresh) == "e1000e")
    }

    @Test("no driver wants it: the bind goes on after the quiet window (0.3 s) with no bind event")
    func noDriverAfterWindow() async throws {
        let lab = try await Lab(records: [nicRecord, freshRecord(group: 13)], probeQuiet: 0.3)
        defer { lab.stop() }
        await lab.binder.deviceEvent(action: "add", subsystem: "pci", sysPath: freshDevpath)
        let start = Deadline.now()
        let record = try await lab.binder.bind(try lab.device(fresh))
        #expect(Deadline.now().seconds(since: start) >= 0.3)
        #expect(record.members == [.init(address: fresh, originalDriver: nil)])
        #expect(lab.driver(fresh) == "vfio-pci")
        // The wait is over for good: the binder no longer waits for this device's first probe.
        #expect(await lab.binder.devicesInFirstProbe == 0)
        try await lab.binder.restore(record)
        _ = try await lab.binder.bind(try lab.device(fresh))
        let left = try await lab.leftovers()
        #expect(left.waits == 0 && left.timers == 0)
    }

    @Test("a probe that outlasts the quiet window (driver link there, no bind event yet: e1000e under TCG) is waited for")
    func slowProbe() async throws {
        let lab = try await Lab(records: [nicRecord], probeQuiet: 0.2)
        defer { lab.stop() }
        // The NIC was just added and its driver's probe runs: the link is there, `bind` is not sent yet.
        let devpath = "/devices/pci0000:00/\(nic)"
        await lab.binder.deviceEvent(action: "add", subsystem: "pci", sysPath: devpath)
        let device = try lab.device(nic)
        let binder = lab.binder
        let binding = Task { try await binder.bind(device) }
        // The probe takes 0.6 s, three quiet windows: the kernel's time, played on the loop's timer.
        try await OnLoop(lab.host.loop).run { await $0.sleep(0.6) }
        #expect(lab.writes == [], "nothing is written while the probe runs")
        await binder.deviceEvent(action: "bind", subsystem: "pci", sysPath: devpath)
        let record = try await binding.value
        #expect(record.members == [.init(address: nic, originalDriver: "e1000e")])
        #expect(lab.driver(nic) == "vfio-pci")
    }

    @Test("a driver link and no bind event ever (a lost event): the bind goes on at the limit (0.5 s), not before, never stuck")
    func bindEventLost() async throws {
        let lab = try await Lab(records: [nicRecord], probeQuiet: 0.1, probeLimit: 0.5)
        defer { lab.stop() }
        await lab.binder.deviceEvent(action: "add", subsystem: "pci", sysPath: "/devices/pci0000:00/\(nic)")
        let start = Deadline.now()
        let record = try await lab.binder.bind(try lab.device(nic))
        #expect(Deadline.now().seconds(since: start) >= 0.45)
        #expect(record.members == [.init(address: nic, originalDriver: "e1000e")])
        let left = try await lab.leftovers()
        #expect(left.waits == 0 && left.timers == 0)
    }

    @Test("a device whose add the binder never saw (there at start) is not waited for", .timeLimit(.minutes(1)))
    func presentAtStartNotWaited() async throws {
        let lab = try await Lab(records: [nicRecord], probeQuiet: 3600)
        defer { lab.stop() }
        #expect(await lab.binder.devicesInFirstProbe == 0)
        _ = try await lab.binder.bind(try lab.device(nic))
        #expect(lab.driver(nic) == "vfio-pci")
    }

    @Test("give-back of a device recorded with no driver that a driver took meanwhile: left on that driver, no error")
    func restoreLeavesNewDriver() async throws {
        let lab = try await Lab(records: [nicRecord])
        defer { lab.stop() }
        // The record says "no driver" (made before the kernel's first probe); e1000e has it now.
        let record = BindRecord(device: nic, group: 12, members: [.init(address: nic, originalDriver: nil)],
                                groupNode: lab.testbed.root + "/dev/vfio/12")
        try await lab.binder.restore(record)
        #expect(lab.driver(nic) == "e1000e")
        #expect(lab.override(nic) == "")
        #expect(!lab.writes.contains { $0.contains("unbind") || $0.contains("drivers_probe") }, "\(lab.writes)")
    }
}
