import DeviceModel
#if canImport(Glibc)
import Glibc
#endif
@testable import HostDevices
import Testing
import VHotplugTestSupport

/// A USB device's attributes as the kernel shows them.
func usbAttributes(vendor: String = "046d", product: String = "c077", devnum: String = "3",
                   extra: [(String, String)] = []) -> [(String, String)] {
    [("idVendor", vendor), ("idProduct", product), ("bcdDevice", "7200"), ("busnum", "1"), ("devnum", devnum),
     ("bDeviceClass", "00"), ("bDeviceSubClass", "00"), ("bDeviceProtocol", "00"), ("bConfigurationValue", "1"),
     ("speed", "1.5"), ("removable", "removable"), ("manufacturer", "Logitech"), ("product", "USB Optical Mouse")] + extra
}

/// Reads a testbed directly (no preload): interfaces from the interface folders.
func reader(_ tb: Testbed, boot: [String] = []) -> DeviceReader {
    DeviceReader(sysfs: Sysfs(root: tb.sysRoot), usbIDs: USBIDs(), bootDevices: BootDevices(paths: boot), useLibUSB: false)
}

@Suite("Reading devices from a umockdev testbed", .serialized)
struct TestbedReadTests {
    @Test("a device with garbage attributes yields an error for that device only")
    func garbage() async throws {
        let tb = await Testbed.make()
        tb.addDevice(subsystem: "usb", name: "1-1", attributes: usbAttributes(), properties: [("DEVTYPE", "usb_device")])
        tb.addDevice(subsystem: "usb", name: "1-2", attributes: usbAttributes(vendor: "zz!", devnum: "4"),
                     properties: [("DEVTYPE", "usb_device")])
        let bad = tb.addDevice(subsystem: "usb", name: "1-3", attributes: usbAttributes(devnum: "5"),
                               properties: [("DEVTYPE", "usb_device")])
        tb.setAttribute(bad, "product", bytes: [0x4d, 0xff, 0xfe, 0x00, 0x41])
        tb.addDevice(subsystem: "usb", name: "1-4", attributes: usbAttributes(devnum: "999"),
                     properties: [("DEVTYPE", "usb_device")])
        let (devices, failures) = try reader(tb).enumerate(.usb)
        #expect(devices.map(\.sysName) == ["1-1"])
        #expect(failures.count == 3)
        let text = failures.map(\.description).joined(separator: "\n")
        #expect(text.contains("1-2: idVendor: expected a hex number"))
        #expect(text.contains("1-3: product: not valid UTF-8 text"))
        #expect(text.contains("1-4: devnum: expected a number up to 255"))
    }

    @Test("a bus folder that is there and cannot be listed is an error, not \"no devices\"; one that is not there is none")
    func unlistableBus() throws {
        let root = scratchPath("vhp-unlistable")
        for folder in [root, root + "/bus", root + "/bus/usb"] { try #require(mkdir(folder, 0o755) == 0) }
        close(open(root + "/bus/usb/devices", O_CREAT | O_WRONLY | O_CLOEXEC, 0o644))  // a file: opendir fails (ENOTDIR)
        defer {
            unlink(root + "/bus/usb/devices")
            for folder in [root + "/bus/usb", root + "/bus", root] { rmdir(folder) }
        }
        let reader = DeviceReader(sysfs: Sysfs(root: root), usbIDs: nil, bootDevices: BootDevices(paths: []), useLibUSB: false)
        let error = #expect(throws: DeviceReadError.self) { try reader.enumerate(.usb) }
        #expect(error?.description == root + "/bus/usb/devices: listing: Not a directory (errno 20)", "\(String(describing: error))")
        #expect(throws: DeviceReadError.self) { try reader.connected(.all) }
        // No PCI bus at all (no such folder): no PCI devices.
        #expect(try reader.enumerate(.pci).devices.isEmpty)
    }

    @Test("a classic Bluetooth keyboard below a USB Bluetooth adapter is not a USB device's input: evdev rules decide it; a USB keyboard's input is")
    func bluetoothKeyboard() async throws {
        let tb = await Testbed.make()
        try tb.add(file: "\(Fixtures.dir)/bluetooth.umockdev")
        let link = "/devices/pci0000:00/0000:00:14.0/usb1/1-10/1-10:1.0/bluetooth/hci0/hci0:3"
        try tb.add(record: """
            P: \(link)
            E: SUBSYSTEM=bluetooth
            E: DEVTYPE=link

            P: \(link)/0005:046D:B342.0001
            E: SUBSYSTEM=hid
            E: HID_ID=0005:0000046D:0000B342

            P: \(link)/0005:046D:B342.0001/input/input25
            E: SUBSYSTEM=input
            A: capabilities/abs=0\\n
            A: capabilities/ev=120013\\n
            A: capabilities/key=402000000 3803078f800d001 feffffdfffefffff fffffffffffffffe\\n
            A: capabilities/rel=0\\n
            A: capabilities/sw=0\\n
            A: id/bustype=0005\\n
            A: id/product=b342\\n
            A: id/vendor=046d\\n
            A: name=Logitech K380 Keyboard\\n
            A: properties=0\\n

            P: \(link)/0005:046D:B342.0001/input/input25/event7
            N: input/event7
            E: SUBSYSTEM=input
            E: DEVNAME=/dev/input/event7
            A: dev=13:71\\n

            """)
        let r = reader(tb)
        let event = link + "/0005:046D:B342.0001/input/input25/event7"
        #expect(!r.inputHasUSBAncestor(sysPath: event))
        guard case .input(let k) = try r.read(sysPath: event, subsystem: "input") else { Issue.record("not input"); return }
        #expect(!k.hasUSBAncestor && k.busType == 5 && k.kinds.contains(.keyboard), "\(k)")
        // (The adapter's own folders stay below USB.)
        #expect(r.inputHasUSBAncestor(sysPath: "/devices/pci0000:00/0000:00:14.0/usb1/1-10/1-10:1.0/input/input3/event3"))
    }

    @Test("a device that vanishes while being read is an error for it")
    func vanished() async throws {
        let tb = await Testbed.make()
        let path = tb.addDevice(subsystem: "usb", name: "1-1", attributes: usbAttributes(), properties: [("DEVTYPE", "usb_device")])
        let sysPath = String(path.dropFirst(4)) // "/sys/devices/..." -> "/devices/..."
        let r = reader(tb)
        #expect(throws: Never.self) { try r.read(sysPath: sysPath, subsystem: "usb") }
        tb.uevent(path, "remove")
        tb.remove(path)
        let e = #expect(throws: DeviceReadError.self) { try r.read(sysPath: sysPath, subsystem: "usb") }
        #expect(e?.attribute == "busnum")
        #expect(e?.reason.contains("missing") == true)
    }

    @Test("attributes of a plain USB device, interfaces from sysfs, names from usb.ids")
    func plainMouse() async throws {
        let tb = await Testbed.make()
        let attributes = usbAttributes().map { "A: \($0.0)=\($0.1)" }.joined(separator: "\n")
        try tb.add(record: """
            P: /devices/pci0000:00/0000:00:14.0/usb1/1-1
            E: SUBSYSTEM=usb
            E: DEVTYPE=usb_device
            \(attributes)

            P: /devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0
            E: SUBSYSTEM=usb
            E: DEVTYPE=usb_interface
            A: bInterfaceNumber=00
            A: bInterfaceClass=03
            A: bInterfaceSubClass=01
            A: bInterfaceProtocol=02
            L: driver=../../../../../../bus/usb/drivers/usbhid

            """)
        let (devices, failures) = try reader(tb).enumerate(.usb)
        #expect(failures.isEmpty)
        guard case .usb(let d)? = devices.first else { Issue.record("no USB device"); return }
        #expect(d.sysName == "1-1" && d.bus == 1 && d.devnum == 3 && d.port == 1 && d.portPath == [1])
        #expect(d.vendorId == 0x046d && d.productId == 0xc077 && d.bcdDevice == 0x7200)
        #expect(d.manufacturer == "Logitech" && d.product == "USB Optical Mouse" && d.serial == nil)
        #expect(d.vendorName == "Logitech, Inc.")
        #expect(d.productName != nil && d.productName == USBIDs()?.productName(0x046d, 0xc077))
        #expect(d.interfaces == [USBInterface(interfaceNumber: 0, interfaceClass: 3, interfaceSubclass: 1, interfaceProtocol: 2,
                                              driver: "usbhid")])
        #expect(d.sysPath == "/devices/pci0000:00/0000:00:14.0/usb1/1-1")
        #expect(d.speed == "1.5" && d.removable == .removable && d.devnode == "/dev/bus/usb/001/003")
        #expect(!d.isHub && !d.holdsHostBootFilesystem)
        // The daemon's reader leaves the drivers and the speed out, and only them.
        let daemonReader = DeviceReader(sysfs: Sysfs(root: tb.sysRoot), usbIDs: USBIDs(), bootDevices: BootDevices(paths: []),
                                        useLibUSB: false, inspectFacts: false)
        guard case .usb(var without)? = try daemonReader.enumerate(.usb).devices.first else { Issue.record("no USB device"); return }
        #expect(without.interfaces.map(\.driver) == [nil] && without.speed == nil)
        without.interfaces[0].driver = "usbhid"
        without.speed = "1.5"
        #expect(without == d)
    }

    @Test("a USB device is read through its readiness check's folder once its configuration and every interface are there, not before")
    func readWhenConfigured() async throws {
        let tb = await Testbed.make()
        let attributes = usbAttributes(extra: [("bNumInterfaces", " 2")]).map { "A: \($0.0)=\($0.1)" }.joined(separator: "\n")
        func interface(_ n: Int) -> String {
            """
            P: /devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.\(n)
            E: SUBSYSTEM=usb
            E: DEVTYPE=usb_interface
            A: bInterfaceNumber=0\(n)
            A: bInterfaceClass=03
            A: bInterfaceSubClass=01
            A: bInterfaceProtocol=0\(n + 1)

            """
        }
        try tb.add(record: """
            P: /devices/pci0000:00/0000:00:14.0/usb1/1-1
            E: SUBSYSTEM=usb
            E: DEVTYPE=usb_device
            \(attributes)

            \(interface(0))
            """)
        let sysPath = "/devices/pci0000:00/0000:00:14.0/usb1/1-1"
        let r = reader(tb)
        // one of its two interfaces: not yet
        #expect(!r.usbConfigured(sysPath: sysPath))
        #expect(r.readUSBIfConfigured(sysPath: sysPath) == nil)
        try tb.add(record: interface(1))
        #expect(r.usbConfigured(sysPath: sysPath))
        guard case .success(.usb(let d))? = r.readUSBIfConfigured(sysPath: sysPath) else {
            Issue.record("not read once configured"); return
        }
        // what the separate read gives, the configuration value included
        #expect(HostDevice.usb(d) == (try r.read(sysPath: sysPath, subsystem: "usb")))
        #expect(d.interfaces.map(\.interfaceProtocol) == [1, 2])
        // no active configuration (set to 0 by the host): not configured
        tb.setAttribute("/sys" + sysPath, "bConfigurationValue", bytes: Array("\n".utf8))
        #expect(r.readUSBIfConfigured(sysPath: sysPath) == nil)
        // gone: not configured either (the remove event decides, not this read)
        tb.remove("/sys" + sysPath)
        #expect(r.readUSBIfConfigured(sysPath: sysPath) == nil)
    }

    @Test("the kernel's uevent attribute gives IDs, class and bus/device numbers in one read; a malformed field is read from its own file")
    func ueventFields() async throws {
        let tb = await Testbed.make()
        // Files that disagree with the uevent: which one was read shows in the result.
        let files = usbAttributes(vendor: "1111", product: "2222", devnum: "9")
        let uevent: [(String, String)] = [("DEVTYPE", "usb_device"), ("PRODUCT", "46d/c52b/1211"), ("TYPE", "9/0/1"),
                                          ("BUSNUM", "003"), ("DEVNUM", "004")]
        let good = tb.addDevice(subsystem: "usb", name: "3-1", attributes: files, properties: uevent)
        let bad = tb.addDevice(subsystem: "usb", name: "3-2", attributes: files,
                               properties: [("DEVTYPE", "usb_device"), ("PRODUCT", "46d/zz/1211"), ("TYPE", "9/0"),
                                            ("BUSNUM", "300"), ("DEVNUM", "004")])
        let r = reader(tb)
        guard case .usb(let d) = try r.read(sysPath: String(good.dropFirst(4)), subsystem: "usb") else { Issue.record("not USB"); return }
        #expect(d.vendorId == 0x046d && d.productId == 0xc52b && d.bcdDevice == 0x1211)
        #expect(d.deviceClass == 9 && d.deviceSubclass == 0 && d.deviceProtocol == 1 && d.isHub)
        #expect(d.bus == 3 && d.devnum == 4)
        guard case .usb(let e) = try r.read(sysPath: String(bad.dropFirst(4)), subsystem: "usb") else { Issue.record("not USB"); return }
        #expect(e.vendorId == 0x1111 && e.productId == 0x2222 && e.bcdDevice == 0x7200, "PRODUCT malformed: the files")
        #expect(e.deviceClass == 0 && e.bus == 1 && e.devnum == 4, "TYPE and BUSNUM malformed: the files; DEVNUM from the uevent")

        // The add event's fields, when it has them all, stand for the uevent attribute (not read).
        let configured = usbAttributes(vendor: "1111", product: "2222", devnum: "9", extra: [("bNumInterfaces", " 0")])
        let third = String(tb.addDevice(subsystem: "usb", name: "3-3", attributes: configured, properties: uevent).dropFirst(4))
        let event = KernelUSBFields(product: "abcd/1234/100", type: "255/1/2", busnum: "005", devnum: "006")
        #expect(event.isComplete)
        guard case .usb(let f)? = try r.readUSBIfConfigured(sysPath: third, event: event)?.get() else { Issue.record("not read"); return }
        #expect(f.vendorId == 0xabcd && f.productId == 0x1234 && f.bcdDevice == 0x100, "the event's, not the attribute's")
        #expect(f.deviceClass == 255 && f.deviceSubclass == 1 && f.deviceProtocol == 2 && f.bus == 5 && f.devnum == 6)
        #expect(f.devnode == "/dev/bus/usb/005/006" && f.manufacturer == "Logitech")
        // One field missing or malformed: the attribute, all of it.
        for partial in [KernelUSBFields(product: "abcd/1234/100", type: nil, busnum: "005", devnum: "006"),
                        KernelUSBFields(product: "abcd/1234", type: "255/1/2", busnum: "005", devnum: "006"),
                        KernelUSBFields(product: "abcd/1234/100", type: "255/1/2", busnum: "256", devnum: "006")] {
            #expect(!partial.isComplete)
            guard case .usb(let g)? = try r.readUSBIfConfigured(sysPath: third, event: partial)?.get() else { Issue.record("not read"); return }
            #expect(g.vendorId == 0x046d && g.productId == 0xc52b && g.bus == 3 && g.devnum == 4 && g.deviceClass == 9)
        }
        #expect(KernelUSBFields(product: nil, type: nil, busnum: nil, devnum: nil) == KernelUSBFields(uevent: nil))
        // A malformed interface count (a kernel prints a u8) is a device not configured yet, not a crash.
        for count in ["-1", "256", "x"] {
            let odd = usbAttributes(vendor: "1111", product: "3333", devnum: "10", extra: [("bNumInterfaces", count)])
            let added = tb.addDevice(subsystem: "usb", name: "3-4", attributes: odd, properties: uevent)
            #expect(r.readUSBIfConfigured(sysPath: String(added.dropFirst(4))) == nil, "bNumInterfaces \(count)")
            tb.remove(added)
        }

        let k = KernelUSBFields(uevent: "MAJOR=189\nPRODUCT=1d6b/2/601\nTYPE=9/0/1\nBUSNUM=001\nDEVNUM=001\n")
        #expect(k.vendorId == 0x1d6b && k.productId == 2 && k.bcdDevice == 0x601 && k.deviceClass == 9 && k.busnum == 1)
        for broken in ["PRODUCT=10000/1/1", "PRODUCT=1/1", "PRODUCT=", "TYPE=256/0/0", "TYPE=-1/0/0", "BUSNUM=x", "BUSNUM=256", "=", ""] {
            let f = KernelUSBFields(uevent: broken)
            #expect(f.vendorId == nil && f.deviceClass == nil && f.busnum == nil, "\(broken)")
        }
    }
}
