#if canImport(Glibc)
import Glibc
#endif

/// The block devices behind the host's `/` and `/boot`, as sysfs paths of the
/// devices that hold them. A USB or PCI device whose sysfs path is a prefix of one
/// of these is the host's boot disk (or its controller) and is never passed through.
public struct BootDevices: Sendable, Hashable {
    /// Resolved sysfs paths (relative to the sysfs root, starting with `/devices/`).
    public var paths: [String]

    public init(paths: [String]) {
        self.paths = paths
    }

    /// True when `sysPath` (a device folder below the sysfs root) holds one of them.
    public func isHeld(by sysPath: String) -> Bool {
        let prefix = sysPath.hasSuffix("/") ? sysPath : sysPath + "/"
        return paths.contains { $0.hasPrefix(prefix) }
    }

    /// Mount points that make a device the boot device.
    public static let mountPoints: Set<String> = ["/", "/boot", "/boot/efi"]

    /// `major:minor` of the filesystems mounted at `/` and `/boot`, from mountinfo text.
    /// Field 5 is the mount point, field 3 `major:minor`; after ` - `: type and source.
    /// A filesystem with major 0 (btrfs, overlay, zfs) falls back to its source device.
    public static func mountedDevices(mountInfo: String) -> [(devno: String, source: String)] {
        var out: [(String, String)] = []
        for line in mountInfo.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 10, let dash = fields.firstIndex(of: "-"), dash + 2 < fields.count else { continue }
            let mountPoint = unescapeOctal(String(fields[4]))
            guard mountPoints.contains(mountPoint) else { continue }
            out.append((String(fields[2]), unescapeOctal(String(fields[dash + 2]))))
        }
        return out
    }

    /// Reads mountinfo and resolves each boot filesystem to the sysfs paths of
    /// its block devices, through device-mapper and md `slaves` links and NVMe
    /// multipath subsystems (to their controllers).
    public static func read(sysfs: Sysfs, mountInfoPath: String = "/proc/self/mountinfo") -> BootDevices {
        guard case .success(let bytes) = Sysfs.readBytes(mountInfoPath, limit: 8 << 20) else {
            return BootDevices(paths: [])
        }
        var queue: [String] = []
        for (devno, source) in mountedDevices(mountInfo: String(decoding: bytes, as: UTF8.self)) {
            var number = devno
            if devno.hasPrefix("0:"), source.hasPrefix("/dev/") {
                var st = stat()
                if stat(source, &st) == 0, (st.st_mode & S_IFMT) == S_IFBLK {
                    number = "\(major(st.st_rdev)):\(minor(st.st_rdev))"
                }
            }
            if !number.hasPrefix("0:") && Sysfs.exists(sysfs.path("/dev/block/\(number)")) {
                queue.append(sysfs.path("/dev/block/\(number)"))
            } else if source.hasPrefix("/dev/"), let name = source.split(separator: "/").last {
                // No device-number link: the block class by the source's name (`/dev/nvme0n1p2`).
                queue.append(sysfs.path("/class/block/\(name)"))
            }
        }
        var result: [String] = []
        var seen = Set<String>()
        while let next = queue.popLast() {
            guard let real = Sysfs.realPath(next), seen.insert(real).inserted else { continue }
            let relative = real.hasPrefix(sysfs.root) ? String(real.dropFirst(sysfs.root.count)) : real
            result.append(relative)
            // Stacked devices (LVM, dm-crypt, md): follow them down to the disks.
            for slave in Sysfs.list(real + "/slaves") { queue.append(real + "/slaves/" + slave) }
            // A namespace of native NVMe multipath lives under its subsystem
            // (`/devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1`), which links each of its
            // controllers (`nvme0 -> .../0000:3d:00.0/nvme/nvme0`): those hold it.
            let parts = real.split(separator: "/", omittingEmptySubsequences: false)
            if let k = parts.firstIndex(where: { $0.hasPrefix("nvme-subsys") && Int($0.dropFirst("nvme-subsys".count)) != nil }),
               k > 0, parts[k - 1] == "nvme-subsystem" {
                let subsystem = parts[...k].joined(separator: "/")
                for entry in Sysfs.list(subsystem) where entry.hasPrefix("nvme") && Int(entry.dropFirst(4)) != nil {
                    queue.append(subsystem + "/" + entry)
                }
            }
        }
        return BootDevices(paths: result)
    }

    private static func major(_ dev: UInt) -> UInt32 { UInt32((dev >> 8) & 0xfff) | UInt32((dev >> 32) & ~0xfff) }
    private static func minor(_ dev: UInt) -> UInt32 { UInt32(dev & 0xff) | UInt32((dev >> 12) & ~0xff) }

    /// mountinfo escapes space, tab, newline and backslash as `\ooo`.
    static func unescapeOctal(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var bytes: [UInt8] = []
        let u = Array(s.utf8)
        var i = 0
        while i < u.count {
            if u[i] == 0x5C, i + 4 <= u.count, u[(i + 1)..<(i + 4)].allSatisfy({ (0x30...0x37).contains($0) }) {
                bytes.append(u[(i + 1)..<(i + 4)].reduce(UInt8(0)) { $0 &* 8 &+ ($1 - 0x30) })
                i += 4
            } else {
                bytes.append(u[i])
                i += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
