import CPCI

/// PCI vendor and device names through libpci (pci.ids; the udev hwdb is not asked).
/// libpci is not thread-safe: one instance per thread of use.
public final class PCINames {
    private let access: UnsafeMutablePointer<pci_access>?

    /// `idsPath`: a pci.ids file; nil for libpci's default.
    public init(idsPath: String? = nil) {
        access = idsPath.map { p in p.withCString { vh_pci_names_open($0) } } ?? vh_pci_names_open(nil)
    }

    deinit {
        if let access { pci_cleanup(access) }
    }

    public func vendorName(_ vendor: UInt16) -> String? {
        lookup { vh_pci_lookup_vendor(access, $0, $1, Int32(vendor)) }
    }

    public func deviceName(_ vendor: UInt16, _ device: UInt16) -> String? {
        lookup { vh_pci_lookup_device(access, $0, $1, Int32(vendor), Int32(device)) }
    }

    private func lookup(_ call: (UnsafeMutablePointer<CChar>, Int32) -> UnsafeMutablePointer<CChar>?) -> String? {
        guard access != nil else { return nil }
        var buf = [CChar](repeating: 0, count: 256)
        return buf.withUnsafeMutableBufferPointer { b -> String? in
            guard let base = b.baseAddress, let p = call(base, Int32(b.count)) else { return nil }
            return String(cString: p)
        }
    }
}
