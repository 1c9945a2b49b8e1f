// libFuzzer target: the parsers of sysfs and procfs text that a device or the
// host controls: capability bitmaps and the input kinds computed from them,
// hex attributes, USB port names and the natural order of device names,
// mountinfo (with its octal escapes), the quoting of device strings in messages,
// the USB `descriptors` file (binary: device and configuration descriptors), and a
// USB device's `uevent` (the fields an add event carries: BUSNUM, PRODUCT, TYPE, ...).
//
// The first byte picks the bus type and the quote limit; the rest is the text.
// Its lines, in order, are read as the ev/key/rel/abs/sw/properties bitmaps.
@testable import HostDevices
import JSONKit

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let control = data[0]
    let bytes = UnsafeBufferPointer(start: data + 1, count: size - 1)
    let text = String(decoding: bytes, as: UTF8.self)

    // The bytes as a USB device's `descriptors` file (device descriptor, then its
    // configurations): what a device says of itself, read for unauthorized devices.
    let interfaces = USBDescriptors.firstConfigurationInterfaces(Array(bytes))
    if interfaces.count > 256 { fatalError("more interfaces than a configuration can hold: \(interfaces.count)") }

    // The bytes as a USB device's uevent: what is read back out is what was read.
    let k = KernelUSBFields(bytes: bytes)
    if k.isComplete, let b = k.busnum, let d = k.devnum, let v = k.vendorId, let p = k.productId, let r = k.bcdDevice,
       let c = k.deviceClass, let sc = k.deviceSubclass, let pr = k.deviceProtocol {
        let hex = { (x: UInt16) in String(x, radix: 16) }
        let again = KernelUSBFields(uevent: "BUSNUM=\(b)\nDEVNUM=\(d)\nPRODUCT=\(hex(v))/\(hex(p))/\(hex(r))\nTYPE=\(c)/\(sc)/\(pr)\n")
        if again != k { fatalError("uevent fields do not read back: \(k) -> \(again)") }
    }

    // Whole text as one attribute.
    _ = Bitmap(sysfs: text)
    _ = parseHex(text)
    _ = quoted(text, limit: Int(control))
    _ = truncated(text, limit: Int(control))
    _ = BootDevices.unescapeOctal(text)
    for m in BootDevices.mountedDevices(mountInfo: text) { _ = m.devno.count + m.source.count + BootDevices.overlayLayers(m.superOptions).count }
    _ = try? DeviceReader.ports(sysName: text, device: "fuzz")

    // Lines as the six capability files of one input device.
    let lines = text.split(separator: "\n", omittingEmptySubsequences: false).prefix(6).map(String.init)
    var maps = lines.map { Bitmap(sysfs: $0) ?? Bitmap(words: []) }
    while maps.count < 6 { maps.append(Bitmap(words: [])) }
    let caps = InputCapabilities(ev: maps[0], key: maps[1], rel: maps[2], abs: maps[3], sw: maps[4], properties: maps[5])
    _ = caps.kinds
    _ = caps.kinds(busType: UInt16(control))
    for m in maps { _ = m.has(Int(control) * 8 - 64) }

    // Two names in natural order: antisymmetric.
    if lines.count >= 2 {
        let a = lines[0], b = lines[1]
        if DeviceReader.naturalOrder(a, b) && DeviceReader.naturalOrder(b, a) {
            fatalError("naturalOrder: both \(quoted(a)) < \(quoted(b)) and the reverse")
        }
        for l in lines { _ = parseHex(l); _ = try? DeviceReader.ports(sysName: l, device: "fuzz") }
    }
    return 0
}
