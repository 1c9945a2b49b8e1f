import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import HostDevices
import Testing
import VHotplugTestSupport

@Suite("The uevent monitor", .serialized)
struct UdevMonitorTests {
    func subsystem(_ bytes: [UInt8]) -> String? { field(bytes, \.subsystem) }

    func field(_ bytes: [UInt8], _ key: KeyPath<UdevMonitor.PeekedFields, Slice<UnsafeBufferPointer<UInt8>>?>) -> String? {
        bytes.withUnsafeBufferPointer { b in UdevMonitor.fields(in: b)[keyPath: key].map { String(decoding: $0, as: UTF8.self) } }
    }

    func kernelMessage(_ fields: [String]) -> [UInt8] {
        fields.flatMap { Array($0.utf8) + [0] }
    }

    @Test("SUBSYSTEM is found in the kernel's messages and in libudev's, and not in a cut-off one")
    func subsystemField() {
        let kernel = kernelMessage(["add@/devices/pci0000:00/usb1/1-2", "ACTION=add", "DEVPATH=/devices/pci0000:00/usb1/1-2",
                                    "SUBSYSTEM=usb", "DEVTYPE=usb_device", "SEQNUM=7"])
        #expect(subsystem(kernel) == "usb")
        #expect(field(kernel, \.action) == "add")
        #expect(field(kernel, \.devtype) == "usb_device")
        // SUBSYSTEM= inside another field's value does not count.
        #expect(subsystem(kernelMessage(["change@/x", "NAME=SUBSYSTEM=usb", "SUBSYSTEM=input"])) == "input")
        // Cut off by the peek's buffer: not trusted ("us" is not "usb").
        let cut = Array(kernel[..<(kernel.firstIndex(of: UInt8(ascii: "b"))!)])
        #expect(subsystem(Array(kernelMessage(["add@/x", "ACTION=add"]) + Array("SUBSYSTEM=us".utf8))) == nil)
        #expect(subsystem(cut) == nil)
        #expect(subsystem(kernelMessage(["add@/x", "ACTION=add"])) == nil)
        #expect(subsystem([]) == nil)

        // libudev's: an 8-byte prefix, the magic, then header size, properties offset and length.
        let properties = kernelMessage(["ACTION=add", "SUBSYSTEM=hidraw", "DEVNAME=/dev/hidraw0"])
        var udev = Array("libudev\0".utf8) + [0xfe, 0xed, 0xca, 0xfe]
        func u32(_ v: Int) -> [UInt8] { withUnsafeBytes(of: UInt32(v)) { Array($0) } }
        udev += u32(40) + u32(40) + u32(properties.count) + Array(repeating: 0, count: 16)
        #expect(udev.count == 40)
        #expect(subsystem(udev + properties) == "hidraw")
        #expect(field(udev + properties, \.action) == "add")
        #expect(field(udev + properties, \.devtype) == nil)
        // A properties offset beyond the message: nothing found, nothing read out of bounds.
        var bad = udev
        bad.replaceSubrange(16..<20, with: u32(4000))
        #expect(subsystem(bad + properties) == nil)
    }

    /// With the socket filter the kernel drops other subsystems and (while none is wanted)
    /// interfaces' messages, so fewer reach the peek: `dropped` counts the peek's drops only.
    @Test("uevents nobody wants (other subsystems, interfaces while no device waits) are dropped before libudev parses them",
          arguments: [true, false])
    func dropsOthers(inKernel: Bool) async throws {
        let tb = await Testbed.make()
        let usb = tb.addDevice(subsystem: "usb", name: "1-1", attributes: usbAttributes(), properties: [("DEVTYPE", "usb_device")])
        let input = tb.addDevice(subsystem: "input", name: "input7", attributes: [("name", "Mouse")], properties: [])
        let monitor = try UdevMonitor(subsystems: ["usb"], source: "kernel", inKernelFilter: inKernel)
        #expect(monitor.filterError == 0)
        tb.uevent(input, "add")
        tb.uevent(input, "change")
        tb.uevent(usb, "add")
        tb.uevent(input, "remove")
        var p = pollfd(fd: monitor.fd, events: Int16(POLLIN), revents: 0)
        #expect(poll(&p, 1, 5000) == 1)
        let e = try #require(monitor.receive())
        #expect(e.subsystem == "usb" && e.action == "add" && e.sysName == "1-1")
        #expect(monitor.dropped == (inKernel ? 0 : 2))
        #expect(monitor.receive() == nil)
        #expect(monitor.dropped == (inKernel ? 0 : 3))

        // Interfaces' events and a device's bind only while the daemon waits for interfaces.
        let interface = tb.addDevice(subsystem: "usb", name: "1-1:1.0", attributes: [("bInterfaceClass", "03")],
                                     properties: [("DEVTYPE", "usb_interface")])
        // umockdev announces a device it adds with an `add` uevent of its own.
        #expect(poll(&p, 1, 5000) == 1)
        #expect(monitor.receive().map { "\($0.action) \($0.devtype)" } == "add usb_interface")
        monitor.usbInterfaceEvents = false
        tb.uevent(interface, "add")
        tb.uevent(usb, "bind")
        tb.uevent(usb, "remove")
        #expect(poll(&p, 1, 5000) == 1)
        #expect(monitor.receive().map { "\($0.action) \($0.sysName)" } == "remove 1-1")
        // The interface's add: in the kernel when filtering; the device's bind (its action is
        // not in libudev's header): by the peek either way.
        #expect(monitor.dropped == (inKernel ? 1 : 5))
        monitor.usbInterfaceEvents = true
        tb.uevent(interface, "bind")
        tb.uevent(usb, "bind")
        #expect(poll(&p, 1, 5000) == 1)
        #expect(monitor.receive().map { "\($0.action) \($0.devtype)" } == "bind usb_interface")
        #expect(monitor.receive().map { "\($0.action) \($0.devtype)" } == "bind usb_device")
        #expect(monitor.dropped == (inKernel ? 1 : 5))

        // Asked for later (evdev passthrough turned on): received.
        monitor.setSubsystems(["usb", "input"])
        tb.uevent(input, "change")
        #expect(poll(&p, 1, 5000) == 1)
        #expect(monitor.receive()?.subsystem == "input")
        #expect(monitor.dropped == (inKernel ? 1 : 5))
    }

    @Test("a USB device's add and remove events carry its bus, address, IDs and class from their properties; other events do not")
    func usbFieldsOfAdd() async throws {
        let tb = await Testbed.make()
        let usb = tb.addDevice(subsystem: "usb", name: "2-4", attributes: usbAttributes(),
                               properties: [("DEVTYPE", "usb_device"), ("PRODUCT", "46d/c52b/1211"), ("TYPE", "0/0/0"),
                                            ("BUSNUM", "002"), ("DEVNUM", "017")])
        let bare = tb.addDevice(subsystem: "usb", name: "2-5", attributes: usbAttributes(),
                                properties: [("DEVTYPE", "usb_device"), ("PRODUCT", "46d/c52b/1211")])
        let monitor = try UdevMonitor(subsystems: ["usb"], source: "kernel")
        var p = pollfd(fd: monitor.fd, events: Int16(POLLIN), revents: 0)
        tb.uevent(usb, "add")
        #expect(poll(&p, 1, 5000) == 1)
        let added = try #require(monitor.receive())
        let fields = try #require(added.usb)
        #expect(fields.isComplete)
        #expect(fields.vendorId == 0x046d && fields.productId == 0xc52b && fields.bcdDevice == 0x1211)
        #expect(fields.deviceClass == 0 && fields.deviceSubclass == 0 && fields.deviceProtocol == 0)
        #expect(fields.busnum == 2 && fields.devnum == 17)
        // Missing properties: what the event lacks is nil (the reader then reads the attribute).
        tb.uevent(bare, "add")
        #expect(poll(&p, 1, 5000) == 1)
        let addedBare = try #require(monitor.receive())
        let partial = try #require(addedBare.usb)
        #expect(!partial.isComplete && partial.vendorId == 0x046d && partial.busnum == nil)
        // A remove says which address left (a remove of an earlier device at that port is told apart).
        tb.uevent(usb, "remove")
        #expect(poll(&p, 1, 5000) == 1)
        let removed = try #require(monitor.receive())
        #expect(removed.action == "remove" && removed.usb?.devnum == 17 && removed.usb?.busnum == 2)
        tb.uevent(usb, "change")
        #expect(poll(&p, 1, 5000) == 1)
        let changed = try #require(monitor.receive())
        #expect(changed.action == "change" && changed.usb == nil)
    }

    /// The host's own kernel, not umockdev (which has no socket buffer to overflow): `change`
    /// uevents of one of this machine's PCI devices, written to its `uevent` file (root).
    @Test("a full socket: the kernel's report of lost uevents is noted, and said once the messages queued before it are read")
    func overflow() throws {
        let devices = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/bus/pci/devices")) ?? []
        let device = try #require(devices.sorted().first, "this test writes `change` to a PCI device's uevent file of the host: it needs a PCI device in /sys/bus/pci/devices")
        try #require(getuid() == 0, "this test writes to /sys/bus/pci/devices/\(device)/uevent: run it as root")
        let monitor = try UdevMonitor(subsystems: ["pci"], source: "kernel", receiveBuffer: 4096)
        #expect(!monitor.takeOverflow())
        let sent = 50
        for _ in 0..<sent {
            let fd = open("/sys/bus/pci/devices/\(device)/uevent", O_WRONLY)
            try #require(fd >= 0, "cannot open the uevent file: \(String(cString: strerror(errno)))")
            #expect(write(fd, "change", 6) == 6)
            close(fd)
        }
        var received = 0
        var saidAfter: Int?
        while true {
            let e = monitor.receive()
            if let e {
                #expect(e.action == "change" && e.subsystem == "pci" && e.sysName == device)
                received += 1
            }
            if monitor.takeOverflow() {
                saidAfter = received
                break
            }
            if e == nil { break }
        }
        // 8 KiB (the kernel doubles the size asked for) hold a few of the 50.
        #expect(received > 0 && received < sent)
        #expect(monitor.overflows == 1)
        #expect(saidAfter == received)
        #expect(monitor.receive() == nil)
        #expect(!monitor.takeOverflow())
    }
}
