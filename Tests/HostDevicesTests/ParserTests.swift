#if canImport(Glibc)
import Glibc
#endif
import DeviceModel
import Foundation
import JSONKit
@testable import HostDevices
import Testing
import VHotplugTestSupport

@Suite("usb.ids")
struct USBIDsTests {
    let sample = USBIDs(bytes: Array("""
        # comment
        #
        046d  Logitech, Inc.
        \tc52b  Unifying Receiver
        \t\t00  interface line, not a product
        \tc077  M105 Optical Mouse
        0bda  Realtek Semiconductor Corp.
        \t8153  RTL8153 Gigabit Ethernet Adapter\r
        ffff  Last vendor
        C 00  (Defined at Interface level)
        \t01  Audio
        """.utf8))

    @Test("vendor and product names")
    func names() {
        #expect(sample.vendorName(0x046d) == "Logitech, Inc.")
        #expect(sample.productName(0x046d, 0xc52b) == "Unifying Receiver")
        #expect(sample.productName(0x046d, 0xc077) == "M105 Optical Mouse")
        #expect(sample.productName(0x0bda, 0x8153) == "RTL8153 Gigabit Ethernet Adapter")
        #expect(sample.vendorName(0xffff) == "Last vendor")
    }

    @Test("unknown IDs, interface lines and class lists give nothing")
    func unknown() {
        #expect(sample.vendorName(0x1234) == nil)
        #expect(sample.productName(0x046d, 0x0000) == nil)
        #expect(sample.productName(0x046d, 0x00) == nil)
        #expect(sample.productName(0xffff, 0x0001) == nil)
        #expect(sample.vendorCount == 3)
    }

    @Test("garbage does not crash", arguments: [
        "", "\n\n", "zzzz  no", "046d", "046d ", "\t\t\t", "046d  x\n\tc5", "046d  x\n\tc52bQ", String(repeating: "\t", count: 10_000),
    ])
    func garbage(_ text: String) {
        let ids = USBIDs(bytes: Array(text.utf8))
        _ = ids.vendorName(0x046d)
        _ = ids.productName(0x046d, 0xc52b)
    }

    @Test("upper-case hex and a tab after the ID are product lines too; a product ID inside a name is not")
    func forms() {
        let ids = USBIDs(bytes: Array("046d  Logitech\n\tC52B  Upper\n\tc077\tTabbed\n\tc078  see \tc079 x\n\t\tc079  interface\n".utf8))
        #expect(ids.productName(0x046d, 0xc52b) == "Upper")
        #expect(ids.productName(0x046d, 0xc077) == "Tabbed")
        #expect(ids.productName(0x046d, 0xc078) == "see \tc079 x")
        #expect(ids.productName(0x046d, 0xc079) == nil)
    }

    @Test("every product of the system's usb.ids is found with the name a line-by-line reading gives")
    func everyProduct() throws {
        let ids = try #require(USBIDs(), "usb.ids not found: install the Debian package usb.ids")
        let path = try #require(USBIDs.defaultPaths.first { access($0, R_OK) == 0 })
        guard case .success(let bytes) = Sysfs.readBytes(path, limit: 64 << 20) else { Issue.record("cannot read \(path)"); return }
        var vendor: UInt16?
        var expected: [UInt32: String] = [:] // the first line of an ID repeated in a vendor's block wins
        for line in bytes.split(separator: 0x0A, omittingEmptySubsequences: false).map({ String(decoding: $0, as: UTF8.self) }) {
            if line.hasPrefix("C ") { break }
            if line.hasPrefix("#") || line.isEmpty { continue }
            let tabs = line.prefix { $0 == "\t" }.count
            let body = line.dropFirst(tabs)
            guard body.count > 5, let id = UInt16(body.prefix(4), radix: 16), " \t".contains(body.dropFirst(4).first!) else { continue }
            if tabs == 0 { vendor = id; continue }
            guard tabs == 1, let v = vendor else { continue }
            let key = UInt32(v) << 16 | UInt32(id)
            if expected[key] == nil { expected[key] = body.dropFirst(4).trimmingCharacters(in: " \t\r") }
        }
        var checked = 0
        for (key, name) in expected {
            let (v, id) = (UInt16(key >> 16), UInt16(key & 0xffff))
            #expect(ids.productName(v, id) == name, "\(String(v, radix: 16)):\(String(id, radix: 16))")
            checked += 1
        }
        #expect(checked > 10_000)
    }

    @Test("the system's usb.ids loads and knows Logitech")
    func system() throws {
        let ids = try #require(USBIDs(), "usb.ids not found: install the Debian package usb.ids")
        #expect(ids.vendorCount > 1000)
        #expect(ids.vendorName(0x046d)?.contains("Logitech") == true)
        #expect(ids.productName(0x1d6b, 0x0002) == "2.0 root hub")
    }
}

@Suite("Sysfs attribute parsing")
struct AttributeParsingTests {
    @Test("hex forms")
    func hex() {
        #expect(parseHex("046d") == 0x046d)
        #expect(parseHex("0x8086\n") == 0x8086)
        #expect(parseHex("0X0280") == 0x280)
        #expect(parseHex("") == nil)
        #expect(parseHex("0x") == nil)
        #expect(parseHex("zz") == nil)
        #expect(parseHex("12345678901234567") == nil)
    }

    @Test("port paths from USB names")
    func ports() throws {
        #expect(try DeviceReader.ports(sysName: "1-2", device: "x") == (2, [2]))
        #expect(try DeviceReader.ports(sysName: "3-10.4.1", device: "x") == (10, [10, 4, 1]))
        #expect(try DeviceReader.ports(sysName: "usb1", device: "x") == (0, []))
        #expect(throws: DeviceReadError.self) { try DeviceReader.ports(sysName: "1-", device: "x") }
        #expect(throws: DeviceReadError.self) { try DeviceReader.ports(sysName: "1-2..3", device: "x") }
        #expect(throws: DeviceReadError.self) { try DeviceReader.ports(sysName: "weird", device: "x") }
    }

    @Test("device strings in logs: control characters escaped, length bounded")
    func quoting() {
        #expect(quoted("Mouse") == "\"Mouse\"")
        #expect(quoted("a\u{1b}[31mred\n\u{9b}") == "\"a\\u001B[31mred\\n\\u009B\"")
        #expect(quoted(String(repeating: "x", count: 500)).count < 90)
    }

    @Test("natural order of device names")
    func order() {
        #expect(["1-10", "1-2", "usb2", "1-2.3", "usb10"].sorted(by: DeviceReader.naturalOrder) == ["1-2", "1-2.3", "1-10", "usb2", "usb10"])
        #expect(["event10", "event2"].sorted(by: DeviceReader.naturalOrder) == ["event2", "event10"])
    }
}

@Suite("Mount points of the host's boot filesystems")
struct MountInfoTests {
    let mountInfo = """
        22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
        23 22 0:21 / /proc rw,nosuid shared:12 - proc proc rw
        30 22 259:1 / /boot/efi rw,relatime shared:2 - vfat /dev/nvme0n1p1 rw
        31 22 8:17 / /media/usb\\040stick rw - vfat /dev/sdb1 rw
        32 22 0:45 / /boot rw - btrfs /dev/mapper/boot rw
        """

    @Test("/, /boot and /boot/efi are found; other mounts are not")
    func parse() {
        let found = BootDevices.mountedDevices(mountInfo: mountInfo)
        #expect(found.map(\.devno) == ["259:2", "259:1", "0:45"])
        #expect(found.last?.source == "/dev/mapper/boot")
    }

    @Test("octal escapes in mount points")
    func escapes() {
        #expect(BootDevices.unescapeOctal("/media/usb\\040stick") == "/media/usb stick")
        #expect(BootDevices.unescapeOctal("\\0") == "\\0")
        #expect(BootDevices.unescapeOctal("a\\") == "a\\")
    }

    @Test("a device holds a boot filesystem when one lives below its folder")
    func held() {
        let b = BootDevices(paths: ["/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host0/target0:0:0/0:0:0:0/block/sda/sda1"])
        #expect(b.isHeld(by: "/devices/pci0000:00/0000:00:14.0/usb2/2-1"))
        #expect(!b.isHeld(by: "/devices/pci0000:00/0000:00:14.0/usb2/2-10"))
        #expect(b.isHeld(by: "/devices/pci0000:00/0000:00:14.0"))
    }
}

@Suite("Input kinds from capability bitmaps (udev input_id)")
struct InputKindTests {
    func caps(ev: String, key: String = "0", rel: String = "0", abs: String = "0", sw: String = "0", props: String = "0") -> InputCapabilities {
        InputCapabilities(ev: Bitmap(sysfs: ev)!, key: Bitmap(sysfs: key)!, rel: Bitmap(sysfs: rel)!,
                          abs: Bitmap(sysfs: abs)!, sw: Bitmap(sysfs: sw)!, properties: Bitmap(sysfs: props)!)
    }

    @Test("bitmap words are most significant first")
    func bitmap() throws {
        let b = try #require(Bitmap(sysfs: "1 0 fffffffffffffffe"))
        #expect(b.has(1) && b.has(63) && !b.has(0) && b.has(128) && !b.has(127) && !b.has(500))
        #expect(Bitmap(sysfs: "zz") == nil)
        #expect(Bitmap(sysfs: "11111111111111111") == nil)
    }

    @Test("AT keyboard")
    func keyboard() {
        let k = caps(ev: "120013", key: "402000000 3803078f800d001 feffffdfffefffff fffffffffffffffe")
        #expect(k.kinds == [.key, .keyboard])
    }

    @Test("USB mouse")
    func mouse() {
        #expect(caps(ev: "17", key: "70000 0 0 0 0", rel: "903").kinds == [.mouse])
    }

    @Test("touchpad: absolute finger tool, not direct")
    func touchpad() {
        let t = caps(ev: "1b", key: "e520 10000 0 0 0 0", abs: "2e0800000000003", props: "5")
        #expect(t.kinds == [.touchpad])
    }

    @Test("touchscreen: direct with touch")
    func touchscreen() {
        #expect(caps(ev: "b", key: "400 0 0 0 0 0", abs: "260800000000003", props: "2").kinds == [.touchscreen])
    }

    @Test("tablet: stylus")
    func tablet() {
        #expect(caps(ev: "b", key: "1c03 0 0 0 0 0", abs: "1000003").kinds == [.tablet])
    }

    @Test("lid switch")
    func lid() {
        #expect(caps(ev: "21", sw: "1").kinds == [.switch])
    }

    @Test("power button: a key, not a keyboard")
    func powerButton() {
        #expect(caps(ev: "3", key: "10000000000000 0").kinds == [.key])
    }

    @Test("accelerometer: 3D coordinates and no keys")
    func accelerometer() {
        #expect(caps(ev: "9", abs: "7").kinds == [.accelerometer])
    }

    @Test("joystick axes and buttons")
    func joystick() {
        #expect(caps(ev: "1b", key: "ffff00000000 0 0 0 0", abs: "3003f").kinds == [.joystick])
        // Two joystick buttons and no axis (a gamepad's buttons alone): still a joystick.
        #expect(caps(ev: "3", key: "3000000000000 0 0 0 0").kinds == [.joystick])
    }

    @Test("joystick un-detection as udev does it: a keyboard with stray joystick buttons, one button, a tablet pad")
    func notAJoystick() {
        // The AT keyboard above (8 of the 10 well-known keys) also claiming BTN_TRIGGER..BTN_BASE: a keyboard.
        let keyboard = caps(ev: "120013", key: "3f00000000 402000000 3803078f800d001 feffffdfffefffff fffffffffffffffe")
        #expect(keyboard.kinds == [.key, .keyboard])
        // Three of the well-known keys (LEFTCTRL, CAPSLOCK, NUMLOCK; the first word is not full) with
        // the same buttons: a joystick that has a few keys.
        let threeKeys = caps(ev: "3", key: "3f00000000 0 0 20 400000020000000")
        #expect(threeKeys.kinds == [.joystick, .key])
        // One joystick button and nothing else: not a joystick (udev tags it as neither).
        #expect(caps(ev: "3", key: "1000000000000 0 0 0 0").kinds == [])
        // One axis (ABS_RX) alone: the same.
        #expect(caps(ev: "9", abs: "8").kinds == [])
        // A tablet pad: BTN_0, BTN_1, a wheel and two axes in the joystick range (RX, RY); no relative X/Y.
        let pad = caps(ev: "f", key: "3 0 0 0 0", rel: "100", abs: "18")
        #expect(pad.kinds == [.tablet])
    }
}

extension Substring {
    func trimmingCharacters(in set: String) -> String {
        var t = self
        while let f = t.first, set.contains(f) { t = t.dropFirst() }
        while let l = t.last, set.contains(l) { t = t.dropLast() }
        return String(t)
    }
}

@Suite("Sysfs files through a stack buffer")
struct StackBufferTests {
    /// A scratch folder with a file of `size` bytes and a link to a target of `size` bytes.
    func scratch(_ size: Int) throws -> (dir: String, text: String) {
        let dir = scratchPath("sysfs")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let text = String((0..<size).map { _ in "abcdefghij".randomElement()! })
        let fd = open(dir + "/attr", O_WRONLY | O_CREAT, 0o644)
        #expect(fd >= 0)
        _ = (text + "\n").withCString { write(fd, $0, strlen($0)) }
        close(fd)
        // A target of `size` bytes: path components of 200 at most (NAME_MAX is 255).
        let target = stride(from: 0, to: size, by: 200).map { String(text.dropFirst($0).prefix(199)) }.joined(separator: "/")
        #expect(symlink(target, dir + "/link") == 0)
        return (dir, text)
    }

    @Test("attributes and link targets past the stack buffer are read whole", arguments: [10, Sysfs.stackBuffer - 2, Sysfs.stackBuffer, 3000])
    func longer(size: Int) throws {
        let (dir, text) = try scratch(size)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a = AttributeReader(dir: dir, device: dir)
        #expect(try a.optionalString("attr") == text)
        // The same through a reader that holds the folder open (relative reads).
        #expect(try AttributeReader.opened(dir: dir, device: dir).optionalString("attr") == text)
        let fits = try Sysfs.withSmallFile(dir + "/attr") { $0.count }.get()
        #expect(fits == (size + 1 < Sysfs.stackBuffer ? size + 1 : nil))
        let target = stride(from: 0, to: size, by: 200).map { String(text.dropFirst($0).prefix(199)) }.joined(separator: "/")
        #expect(Sysfs.readLink(dir + "/link") == target)
        #expect(Sysfs.readLink(dir + "/attr") == nil)
    }
}

@Suite("A device folder held open")
struct OpenFolderTests {
    @Test("attributes are read relative to the open folder; a folder gone before or during the read gives what a path read gives")
    func relative() throws {
        let dir = scratchPath("folder")
        try FileManager.default.createDirectory(atPath: dir + "/1-2:1.0", withIntermediateDirectories: true)
        try "1\n".write(toFile: dir + "/bConfigurationValue", atomically: false, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a = AttributeReader.opened(dir: dir, device: "/devices/x")
        #expect(a.folder?.fd ?? -1 >= 0)
        #expect(try a.optionalString("bConfigurationValue") == "1")
        #expect(try a.optionalString("serial") == nil)
        #expect(a.exists("1-2:1.0") && !a.exists("1-2:1.1"))
        // Moved away while held: the open folder still reads its own files (the kernel
        // removes a device's attributes with it, so that is what a vanished device looks like).
        try FileManager.default.moveItem(atPath: dir, toPath: dir + ".moved")
        defer { try? FileManager.default.removeItem(atPath: dir + ".moved") }
        #expect(try a.optionalString("bConfigurationValue") == "1")
        try FileManager.default.removeItem(atPath: dir + ".moved/bConfigurationValue")
        #expect(throws: DeviceReadError(device: "/devices/x", attribute: "bConfigurationValue", reason: "missing (device removed?)")) {
            try a.string("bConfigurationValue")
        }
        // Gone before it was opened: reads go by path and fail as they always did.
        let gone = AttributeReader.opened(dir: dir, device: "/devices/x")
        #expect(gone.folder?.fd == -1)
        #expect(try gone.optionalString("bConfigurationValue") == nil)
        #expect(!gone.exists("1-2:1.0"))
    }
}

@Suite("Hex digits of IDs")
struct HexDigitsTests {
    @Test("hex4 and hex2 are the zero-padded lower-case hex of every value")
    func all() {
        for v in 0...Int(UInt16.max) {
            let s = String(v, radix: 16)
            #expect(hex4(UInt16(v)) == String(repeating: "0", count: 4 - s.count) + s)
        }
        for v in 0...Int(UInt8.max) {
            let s = String(v, radix: 16)
            #expect(hex2(UInt8(v)) == (s.count == 1 ? "0" + s : s))
        }
    }
}
