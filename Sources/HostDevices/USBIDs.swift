import Synchronization
#if canImport(Glibc)
import Glibc
#endif
/// The system's usb.ids database (vendor and product names), indexed in one pass
/// over the bytes; product names are decoded only when asked for.
///
/// Format: a vendor line is `VVVV  Name`, its products follow as `\tPPPP  Name`;
/// `#` starts a comment; the vendor list ends where the class lists (`C ...`) begin.
public final class USBIDs: Sendable {
    /// Where Debian and other distributions put usb.ids, in order of preference.
    public static let defaultPaths = [
        "/var/lib/usbutils/usb.ids", "/usr/share/hwdata/usb.ids", "/usr/share/misc/usb.ids", "/usr/share/usb.ids",
    ]

    private let bytes: [UInt8]
    /// Vendor ID -> (name range, range of the product lines that follow).
    private let vendors: [UInt16: (name: Range<Int>, products: Range<Int>)]
    /// Product indexes of the vendors looked up so far (productIndex).
    private let products = Mutex<[UInt16: [UInt16: Range<Int>]]>([:])

    /// Indexes the bytes of a usb.ids file. Malformed lines are skipped.
    public init(bytes: [UInt8]) {
        self.bytes = bytes
        var index: [UInt16: (name: Range<Int>, products: Range<Int>)] = [:]
        var current: (id: UInt16, name: Range<Int>, start: Int)?
        var i = 0
        let n = bytes.count
        while i < n {
            let lineStart = i
            while i < n && bytes[i] != 0x0A { i += 1 }
            let lineEnd = i
            i += 1
            guard lineEnd > lineStart else { continue }
            let first = bytes[lineStart]
            if first == 0x09 || first == 0x23 { continue } // product line or comment
            // A new top-level line closes the current vendor.
            if let c = current {
                index[c.id] = (c.name, c.start..<lineStart)
                current = nil
            }
            if let id = Self.hex4(bytes, lineStart, lineEnd) {
                current = (id, Self.nameRange(bytes, lineStart + 4, lineEnd), lineEnd)
            } else if first == 0x43 /* C */ && lineStart + 1 < lineEnd && bytes[lineStart + 1] == 0x20 {
                break // device classes: the vendor list is over
            }
        }
        if let c = current { index[c.id] = (c.name, c.start..<min(i, n)) }
        vendors = index
    }

    /// Loads the first readable file of `paths`; nil when none exists.
    public convenience init?(paths: [String] = USBIDs.defaultPaths) {
        for p in paths {
            if case .success(let b) = Sysfs.readBytes(p, limit: 64 << 20) {
                self.init(bytes: b)
                return
            }
        }
        return nil
    }

    /// Number of vendors indexed.
    public var vendorCount: Int { vendors.count }

    public func vendorName(_ vendor: UInt16) -> String? {
        vendors[vendor].map { text($0.name) }
    }

    public func productName(_ vendor: UInt16, _ product: UInt16) -> String? {
        guard let v = vendors[vendor] else { return nil }
        let index = products.withLock { cache in
            if let known = cache[vendor] { return known }
            let made = productIndex(v.products)
            cache[vendor] = made
            return made
        }
        return index[product].map(text)
    }

    /// A vendor's products by ID (the first line of an ID repeated wins), made the first time
    /// that vendor is asked for: the daemon meets few vendors, Logitech has 700 products.
    private func productIndex(_ block: Range<Int>) -> [UInt16: Range<Int>] {
        let end = min(block.upperBound, bytes.count)
        var out: [UInt16: Range<Int>] = [:]
        bytes.withUnsafeBufferPointer { b in
            guard let base = b.baseAddress else { return }
            var i = block.lowerBound
            while i < end {
                let lineStart = i
                let lineEnd = memchr(base + i, 0x0A, end - i).map { UnsafeRawPointer($0) - UnsafeRawPointer(base) } ?? end
                i = lineEnd + 1
                // Exactly one tab, then four hex digits (interface lines have two tabs).
                guard lineEnd - lineStart > 5, b[lineStart] == 0x09,
                      let id = Self.hex4(b, lineStart + 1, lineEnd), out[id] == nil else { continue }
                out[id] = Self.nameRange(b, lineStart + 5, lineEnd)
            }
        }
        return out
    }

    private func text(_ r: Range<Int>) -> String {
        String(decoding: bytes[r], as: UTF8.self)
    }

    /// Four hex digits at `at` followed by a space or tab.
    private static func hex4<C: RandomAccessCollection<UInt8>>(_ b: C, _ at: Int, _ end: Int) -> UInt16? where C.Index == Int {
        guard end - at >= 5 else { return nil }
        var v: UInt16 = 0
        for k in 0..<4 {
            let c = b[at + k]
            let d: UInt8
            switch c {
            case 0x30...0x39: d = c - 0x30
            case 0x61...0x66: d = c - 0x61 + 10
            case 0x41...0x46: d = c - 0x41 + 10
            default: return nil
            }
            v = v << 4 | UInt16(d)
        }
        let sep = b[at + 4]
        return sep == 0x20 || sep == 0x09 ? v : nil
    }

    /// The name after the ID: separating blanks skipped, trailing blanks and CR dropped.
    private static func nameRange<C: RandomAccessCollection<UInt8>>(_ b: C, _ from: Int, _ end: Int) -> Range<Int> where C.Index == Int {
        var s = from
        while s < end && (b[s] == 0x20 || b[s] == 0x09) { s += 1 }
        var e = end
        while e > s && (b[e - 1] == 0x20 || b[e - 1] == 0x0D || b[e - 1] == 0x09) { e -= 1 }
        return s..<e
    }
}
