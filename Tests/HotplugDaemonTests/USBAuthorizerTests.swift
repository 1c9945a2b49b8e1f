import DeviceModel
import Foundation
import VHotplugTestSupport
@testable import HotplugDaemon
import HostDevices
import Logging
import Synchronization
import Testing
import VFIO

/// The authorizer alone, through the SysfsIO seam with injected failures, on a
/// folder standing for /sys (plain files: what is written is read back).
@Suite("USB authorization: the sysfs writes and their failures (the SysfsIO seam)")
struct USBAuthorizerTests {
    let root: String

    init() throws {
        root = scratchPath("vhp-auth")
        for (path, value) in [("bus/usb/devices/usb1/authorized_default", "1\n"), ("bus/usb/devices/usb2/authorized_default", "1\n"),
                              ("bus/usb/devices/usb10/authorized_default", "2\n"),
                              ("module/usbcore/parameters/authorized_default", "-1\n"), ("devices/x/1-2/authorized", "0\n")] {
            try FileManager.default.createDirectory(atPath: root + "/" + (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try value.write(toFile: root + "/" + path, atomically: false, encoding: .utf8)
        }
    }

    func value(_ path: String) -> String {
        ((try? String(contentsOfFile: root + "/" + path, encoding: .utf8)) ?? "<missing>").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// An authorizer on the folder, its seam (faults added by the test) and its log.
    func make(_ faults: [FaultInjectingSysfsIO.Fault] = []) -> (USBAuthorizer, FaultInjectingSysfsIO, CapturedLog) {
        let io = FaultInjectingSysfsIO(faults: faults)
        return (USBAuthorizer(sysfs: Sysfs(root: root), io: io), io, CapturedLog())
    }

    var device: USBDevice {
        USBDevice(sysName: "1-2", sysPath: "/devices/x/1-2", bus: 1, devnum: 4, port: 2, portPath: [2],
                  vendorId: 0x046d, productId: 0xc52b, devnode: "/dev/bus/usb/001/004")
    }

    @Test("engage writes 0 everywhere and release writes back each value as it was")
    func engageRelease() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        var (a, io, log) = make()
        a.engage(log.logger())
        #expect(["usb1", "usb2", "usb10"].map { value("bus/usb/devices/\($0)/authorized_default") } == ["0", "0", "0"])
        #expect(value("module/usbcore/parameters/authorized_default") == "0")
        #expect(log.all.last == "info USB authorization: new USB devices are not authorized on the host (authorized_default = 0 on usb1, usb2, usb10, usbcore)")
        a.release(log.logger())
        #expect(["usb1", "usb2", "usb10"].map { value("bus/usb/devices/\($0)/authorized_default") } == ["1", "1", "2"])
        #expect(value("module/usbcore/parameters/authorized_default") == "-1")
        #expect(io.writes.count == 8)
        #expect(log.all.last == "info USB authorization: authorized_default restored (usb1 = 1, usb2 = 1, usb10 = 2, usbcore = -1)")
    }

    @Test("each write failing in turn is logged with its path and errno; the others are done; nothing stops")
    func everyWriteFailingInTurn() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let targets = ["usb1/authorized_default", "usb2/authorized_default", "usb10/authorized_default", "usbcore/parameters/authorized_default"]
        for (k, suffix) in targets.enumerated() {
            // engage fails on one file: that one is left alone, and not "restored" later.
            var (a, io, log) = make([.init(operation: .write, pathSuffix: suffix, errno: EIO)])
            a.engage(log.logger())
            #expect(io.allFired)
            let path = suffix.hasPrefix("usbcore") ? root + "/module/" + suffix : root + "/bus/usb/devices/" + suffix
            #expect(log.all.contains("error USB authorization: cannot write \"0\" to \(path): Input/output error (errno 5)"))
            let after = targets.map { t in t.hasPrefix("usbcore") ? value("module/" + t) : value("bus/usb/devices/" + t) }
            #expect(after.enumerated().allSatisfy { i, v in i == k ? v != "0" : v == "0" }, "\(after)")
            a.release(log.logger())
            #expect(!io.writes.contains { $0.path == path && $0.value != "0" }, "a file never set is not restored")
            #expect(value("bus/usb/devices/usb1/authorized_default") == "1" && value("module/usbcore/parameters/authorized_default") == "-1")
        }
    }

    @Test("a controller that appears while engaged, then a reload (engage again), then release: its root hub gets usbcore's own value back, once")
    func rootHubAddedThenReload() throws {
        var (a, _, log) = make()
        a.engage(log.logger())
        // A dock's controller: its root hub appears, with the 0 usbcore now gives.
        try FileManager.default.createDirectory(atPath: root + "/devices/pci/usb3", withIntermediateDirectories: true)
        try "0\n".write(toFile: root + "/devices/pci/usb3/authorized_default", atomically: false, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: root + "/bus/usb/devices/usb3", withDestinationPath: "../../../devices/pci/usb3")
        a.rootHubAdded("/devices/pci/usb3", log.logger())
        a.engage(log.logger())
        #expect(a.saved.filter { $0.path.hasSuffix("usb3/authorized_default") }.count == 1)
        a.release(log.logger())
        #expect(value("devices/pci/usb3/authorized_default") == "1", "usbcore's -1 authorizes wired devices: 1")
    }

    @Test("a failing restore is logged and the other files are still restored")
    func failingRestore() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        var (a, io, log) = make()
        a.engage(log.logger())
        io.add(.init(operation: .write, pathSuffix: "usb1/authorized_default", errno: EBUSY))
        a.release(log.logger())
        #expect(log.all.contains("error USB authorization: cannot write \"1\" to \(root)/bus/usb/devices/usb1/authorized_default: Device or resource busy (errno 16)"))
        #expect(value("bus/usb/devices/usb2/authorized_default") == "1")
        #expect(value("module/usbcore/parameters/authorized_default") == "-1")
    }

    @Test("a device's authorized: written and logged; a failure is logged and reported, not thrown")
    func deviceAuthorized() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let (a, io, log) = make()
        #expect(a.set(device, authorized: true, why: "going to vm1", log.logger()))
        #expect(value("devices/x/1-2/authorized") == "1")
        #expect(log.all.last?.hasPrefix("info usb 1-2 046d:c52b: authorized on the host (going to vm1) in ") == true)
        io.add(.init(operation: .write, pathSuffix: "1-2/authorized", errno: ENODEV))
        #expect(!a.set(device, authorized: false, why: "it left vm1", log.logger()))
        #expect(value("devices/x/1-2/authorized") == "1")
        #expect(log.all.last == "error USB authorization: cannot write \"0\" to \(root)/devices/x/1-2/authorized: No such device (errno 19)")
    }
}
