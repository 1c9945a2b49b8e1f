// libFuzzer target: the usb.ids index (USBIDs(bytes:)) and its lookups. Every
// vendor line of the input (`VVVV  name`) is looked up, and every product line
// (`\tPPPP  name`) under the vendor line before it; plus the pair the last four
// bytes spell, which is usually absent or in an odd place.
import HostDevices

func hex4(_ b: ArraySlice<UInt8>) -> UInt16? {
    guard b.count >= 4 else { return nil }
    var v: UInt16 = 0
    for c in b.prefix(4) {
        guard let d = UInt8(exactly: Int(String(UnicodeScalar(c)), radix: 16) ?? -1) else { return nil }
        v = v << 4 | UInt16(d)
    }
    return v
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let ids = USBIDs(bytes: bytes)
    _ = ids.vendorCount
    var vendor: UInt16?
    for line in bytes.split(separator: 0x0A) {
        if line.first == 0x09 {
            if let v = vendor, let p = hex4(line.dropFirst()) { _ = ids.productName(v, p) }
        } else if let v = hex4(line) {
            vendor = v
            _ = ids.vendorName(v)
        }
    }
    if size >= 4 {
        let v = UInt16(bytes[size - 4]) << 8 | UInt16(bytes[size - 3])
        let p = UInt16(bytes[size - 2]) << 8 | UInt16(bytes[size - 1])
        _ = ids.vendorName(v)
        _ = ids.productName(v, p)
    }
    return 0
}
