import DeviceModel
import Foundation
@testable import HostDevices
import JSONKit
import Testing
import VHotplugTestSupport

/// The real-world device fixtures (umockdev files) beside these tests.
enum Fixtures {
    static let dir = Repository.root + "/Tests/HostDevicesTests/Fixtures"
    static let names = [
        "logitech-unifying", "usb-ethernet", "usb-hub", "webcam", "bluetooth", "usb-disk",
        "pci-wifi", "pci-gpu-audio", "ps2-keyboard", "i2c-touchpad", "pci-nvme-boot",
    ]

    /// The expected records: (subsystem, sysName) -> attributes.
    static func expected(_ name: String) throws -> [String: [String: Any]] {
        let data = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/\(name).expected.json"))
        let list = try #require(try JSONSerialization.jsonObject(with: data) as? [[String: Any]])
        var out: [String: [String: Any]] = [:]
        for record in list {
            let key = "\(record["subsystem"] ?? "?")/\(record["sysName"] ?? "?")"
            out[key] = record["attributes"] as? [String: Any]
        }
        return out
    }

    /// Our records in the same shape, through JSON text (what `inspect --json` prints).
    static func actual(_ devices: [HostDevice]) throws -> [String: [String: Any]] {
        let text = JSONText.array(devices.map { d -> JSONText in
            let (subsystem, attributes): (String, JSONText) = switch d {
            case .usb(let u): ("usb", u.jsonAttributes)
            case .pci(let p): ("pci", p.jsonAttributes)
            case .input(let i): ("input", i.jsonAttributes)
            }
            return .object([("subsystem", .string(subsystem)), ("sysName", .string(d.sysName)), ("attributes", attributes)])
        }).rendered()
        let list = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]])
        var out: [String: [String: Any]] = [:]
        for r in list { out["\(r["subsystem"]!)/\(r["sysName"]!)"] = r["attributes"] as? [String: Any] }
        return out
    }

    /// JSON text with sorted keys: a comparison that ignores key order.
    static func canonical(_ value: Any) -> String {
        guard let data = try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .fragmentsAllowed]) else {
            return "\(value)"
        }
        return String(decoding: data, as: UTF8.self)
    }

    /// Every expected attribute equals ours; the same devices on both sides.
    static func compare(expected: [String: [String: Any]], actual: [String: [String: Any]], fixture: String) {
        #expect(Set(expected.keys) == Set(actual.keys), "devices of \(fixture)")
        for (key, attributes) in expected {
            guard let ours = actual[key] else { continue }
            for (name, value) in attributes {
                let a = ours[name].map(canonical) ?? "(absent)"
                let e = canonical(value)
                #expect(a == e, "\(fixture): \(key) \(name): expected \(e), read \(a)")
            }
        }
    }
}

@Suite("Real-world devices read from umockdev fixtures", .serialized)
struct FixtureTests {
    @Test("every attribute of every device, read from the testbed's sysfs", arguments: Fixtures.names)
    func fixture(_ name: String) async throws {
        let tb = await Testbed.make()
        try tb.add(file: "\(Fixtures.dir)/\(name).umockdev")
        let sysfs = Sysfs(root: tb.sysRoot)
        let mountInfo = "\(Fixtures.dir)/\(name).mountinfo"
        let boot = FileManager.default.fileExists(atPath: mountInfo)
            ? BootDevices.read(sysfs: sysfs, mountInfoPath: mountInfo) : BootDevices(paths: [])
        let reader = DeviceReader(sysfs: sysfs, usbIDs: USBIDs(), bootDevices: boot, useLibUSB: false)
        let (devices, failures) = try reader.enumerate()
        #expect(failures.isEmpty, "\(failures)")
        Fixtures.compare(expected: try Fixtures.expected(name), actual: try Fixtures.actual(devices), fixture: name)
    }

    @Test("the NVMe controller holding / and /boot/efi is the boot device; nothing else is")
    func bootDisk() async throws {
        let tb = await Testbed.make()
        try tb.add(file: "\(Fixtures.dir)/pci-nvme-boot.umockdev")
        let sysfs = Sysfs(root: tb.sysRoot)
        let boot = BootDevices.read(sysfs: sysfs, mountInfoPath: "\(Fixtures.dir)/pci-nvme-boot.mountinfo")
        #expect(!boot.paths.isEmpty)
        let reader = DeviceReader(sysfs: sysfs, usbIDs: nil, bootDevices: boot, useLibUSB: false)
        let pci = try reader.enumerate(.pci).devices.compactMap { d -> PCIDevice? in
            if case .pci(let p) = d { return p }
            return nil
        }
        #expect(pci.first { $0.address == "0000:02:00.0" }?.holdsHostBootFilesystem == true)
        // The bridge above it holds it too: bridges are excluded anyway, by class.
        #expect(pci.filter { $0.holdsHostBootFilesystem }.allSatisfy { $0.address == "0000:02:00.0" || $0.isBridge })
    }

    @Test("native NVMe multipath: a namespace under its subsystem is held by the subsystem's controllers")
    func nvmeMultipathBootDisk() throws {
        let root = scratchPath("sysfs-nvme-mp")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let fm = FileManager.default
        let controller = "/devices/pci0000:00/0000:00:1d.0/0000:3d:00.0"
        try fm.createDirectory(atPath: root + controller + "/nvme/nvme0", withIntermediateDirectories: true)
        let subsystem = root + "/devices/virtual/nvme-subsystem/nvme-subsys0"
        try fm.createDirectory(atPath: subsystem + "/nvme0n1/nvme0n1p2", withIntermediateDirectories: true)
        try fm.createSymbolicLink(atPath: subsystem + "/nvme0", withDestinationPath: "../../../pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0")
        try fm.createDirectory(atPath: root + "/dev/block", withIntermediateDirectories: true)
        try fm.createSymbolicLink(atPath: root + "/dev/block/259:2",
                                  withDestinationPath: "../../devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1/nvme0n1p2")
        let mountInfo = root + "/mountinfo"
        try "29 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw\n".write(toFile: mountInfo, atomically: true, encoding: .utf8)
        let boot = BootDevices.read(sysfs: Sysfs(root: root), mountInfoPath: mountInfo)
        #expect(boot.isHeld(by: controller), "\(boot.paths)")
        #expect(!boot.isHeld(by: "/devices/pci0000:00/0000:00:1c.0"))
    }

    @Test("a USB disk holding / is the boot device")
    func usbBootDisk() async throws {
        let tb = await Testbed.make()
        try tb.add(file: "\(Fixtures.dir)/usb-disk.umockdev")
        let sysfs = Sysfs(root: tb.sysRoot)
        let mountInfo = scratchPath("mountinfo")
        try "29 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n".write(toFile: mountInfo, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: mountInfo) }
        let reader = DeviceReader(sysfs: sysfs, usbIDs: nil, bootDevices: BootDevices.read(sysfs: sysfs, mountInfoPath: mountInfo),
                                  useLibUSB: false)
        let disks = try reader.enumerate(.usb).devices.compactMap { d -> USBDevice? in
            if case .usb(let u) = d, u.interfaces.contains(where: { $0.interfaceClass == 8 }) { return u }
            return nil
        }
        #expect(disks.count == 1)
        #expect(disks.first?.holdsHostBootFilesystem == true)
    }
}
