#if canImport(Glibc)
import Glibc
#endif
import DeviceModel

/// The block devices behind the host's `/` and `/boot`, as sysfs paths of the
/// devices that hold them. A USB or PCI device whose sysfs path is a prefix of one
/// of these is the host's boot disk (or its controller) and is never passed through.
/// A boot filesystem whose disks cannot be found (ZFS: the kernel shows a pool's disks
/// nowhere) is named in `unresolved`, and then every disk the host has is held.
public struct BootDevices: Sendable, Hashable {
    /// Resolved sysfs paths (relative to the sysfs root, starting with `/devices/`).
    public var paths: [String]
    /// The boot filesystems that could not be resolved to their disks, as
    /// `MOUNTPOINT (TYPE SOURCE)`: `/ (zfs rpool/ROOT/pve-1)`. Empty when all were.
    public var unresolved: [String]
    /// Every disk the host had when this was read (sysfs paths like `paths`), read only
    /// when `unresolved` is not empty: each is then held as if it were the boot disk.
    public var disks: [String]

    public init(paths: [String], unresolved: [String] = [], disks: [String] = []) {
        self.paths = paths
        self.unresolved = unresolved
        self.disks = disks
    }

    /// Why a device is held, given a test of whether a block device (its sysfs path) lies
    /// below it: a boot filesystem's does, or any disk's while one is unresolved. nil: not held.
    public func hold(where below: (String) -> Bool) -> BootHold? {
        if paths.contains(where: below) { return .bootDisk }
        if !unresolved.isEmpty, disks.contains(where: below) { return .unresolvedBoot(unresolvedText) }
        return nil
    }

    /// These and `other`'s together: what either holds stays held.
    public func merging(_ other: BootDevices) -> BootDevices {
        func union(_ a: [String], _ b: [String]) -> [String] { a + b.filter { !a.contains($0) } }
        return BootDevices(paths: union(paths, other.paths), unresolved: union(unresolved, other.unresolved),
                           disks: union(disks, other.disks))
    }

    /// The block devices, by name (`nvme0n1p2 nvme0n1`), and the unresolved filesystems, for a log line.
    public var summary: String {
        Self.names(paths) + (unresolved.isEmpty ? "" : "; unresolved: " + unresolvedText)
    }

    /// Block devices' sysfs paths by their names, `sda2 sda`; `none` for none.
    public static func names(_ paths: [String]) -> String {
        let names = paths.compactMap { $0.split(separator: "/").last }.joined(separator: " ")
        return names.isEmpty ? "none" : names
    }

    /// The unresolved boot filesystems in one phrase: `/ (zfs rpool/ROOT/pve-1) and /boot (zfs bpool/BOOT/pve)`.
    public var unresolvedText: String {
        unresolved.joined(separator: " and ")
    }

    /// Why the device folder `sysPath` (below the sysfs root) is held, or nil.
    public func hold(of sysPath: String) -> BootHold? {
        let prefix = sysPath.hasSuffix("/") ? sysPath : sysPath + "/"
        return hold { $0.hasPrefix(prefix) }
    }

    /// True when `sysPath` (a device folder below the sysfs root) holds one of them.
    public func isHeld(by sysPath: String) -> Bool {
        hold(of: sysPath) != nil
    }

    /// Mount points that make a device the boot device.
    public static let mountPoints: Set<String> = ["/", "/boot", "/boot/efi"]

    /// Filesystem types with no local disk: memory (an initramfs, a container's tmpfs) or the network.
    static let diskless: Set<String> = ["rootfs", "tmpfs", "ramfs", "nfs", "nfs4", "cifs", "smb3", "9p", "virtiofs"]

    /// What `read` needs of one mountinfo line.
    public struct Mount: Sendable, Hashable {
        /// `major:minor` (field 3); major 0 when the filesystem has no block device of its own.
        public var devno: String
        /// Field 5.
        public var mountPoint: String
        /// After ` - `: the type, the source and the filesystem's own options (an overlay's layers).
        public var type: String
        public var source: String
        public var superOptions: String
    }

    /// Every mount of mountinfo text, in its order. Field 5 is the mount point,
    /// field 3 `major:minor`; after ` - `: type, source and the filesystem's options.
    public static func mounts(mountInfo: String) -> [Mount] {
        var out: [Mount] = []
        for line in mountInfo.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 10, let dash = fields.firstIndex(of: "-"), dash + 2 < fields.count else { continue }
            out.append(Mount(devno: String(fields[2]), mountPoint: unescapeOctal(String(fields[4])),
                             type: unescapeOctal(String(fields[dash + 1])), source: unescapeOctal(String(fields[dash + 2])),
                             superOptions: dash + 3 < fields.count ? String(fields[dash + 3]) : ""))
        }
        return out
    }

    /// The filesystems mounted at `/` and `/boot`, from mountinfo text.
    public static func mountedDevices(mountInfo: String) -> [Mount] {
        mounts(mountInfo: mountInfo).filter { mountPoints.contains($0.mountPoint) }
    }

    /// Reads mountinfo and resolves each boot filesystem to the sysfs paths of
    /// its block devices: every member of a btrfs filesystem, an overlay's layers,
    /// then from a partition to its disk, down through device-mapper and md `slaves` links and NVMe multipath
    /// subsystems (to their controllers). One that cannot be resolved (zfs), no `/`
    /// in mountinfo, or mountinfo unreadable, is put in `unresolved`.
    public static func read(sysfs: Sysfs, mountInfoPath: String = "/proc/self/mountinfo", fstabPath: String = "/etc/fstab") -> BootDevices {
        let fstab = (try? Sysfs.readBytes(fstabPath, limit: 1 << 20).get()).map { Self.fstab(String(decoding: $0, as: UTF8.self)) } ?? [:]
        let mounts: [Mount]
        switch Sysfs.readBytes(mountInfoPath, limit: 8 << 20) {
        case .success(let bytes): mounts = Self.mounts(mountInfo: String(decoding: bytes, as: UTF8.self))
        case .failure(let error): return BootDevices(paths: [], unresolved: ["/ (\(mountInfoPath): \(error))"], disks: allDisks(sysfs))
        }
        var queue: [String] = []
        var unresolved: [String] = []
        for (i, mount) in mounts.enumerated() where mountPoints.contains(mount.mountPoint) {
            let (devices, unknown) = backing(of: i, in: mounts, sysfs: sysfs, fstab: fstab)
            queue += devices
            if let unknown { unresolved.append("\(mount.mountPoint) (\(unknown))") }
        }
        if !mounts.contains(where: { $0.mountPoint == "/" }) {
            // A chroot: the filesystem it lies in is not listed.
            unresolved.append("/ (not a mount point in \(mountInfoPath))")
        }
        var result: [String] = []
        var seen = Set<String>()
        while let next = queue.popLast() {
            guard let real = Sysfs.realPath(next), seen.insert(real).inserted else { continue }
            result.append(relative(real, sysfs))
            // A partition of a stacked or virtual disk (md126p2 of an IMSM RAID, loop0p1): its disk
            // has the `slaves` and the `loop` folder, not the partition. A disk's partition lies in
            // its disk's folder, so the folder above is the disk.
            if access(real + "/partition", F_OK) == 0, let slash = real.lastIndex(of: "/") {
                queue.append(String(real[..<slash]))
            }
            // Stacked devices (LVM, dm-crypt, md): follow them down to the disks.
            for slave in Sysfs.list(real + "/slaves") { queue.append(real + "/slaves/" + slave) }
            // A loop device below them (a live system's device-mapper snapshot over loop devices):
            // the disk its file lies on.
            if let file = loopBackingFile(real) {
                if file.hasPrefix("/"), let holder = mount(holding: file, in: mounts, except: -1) {
                    let (found, unknown) = backing(of: holder, in: mounts, sysfs: sysfs, depth: 1, fstab: fstab)
                    queue += found
                    if let unknown { unresolved.append("a loop device of \(file) (\(unknown))") }
                } else {
                    unresolved.append("a loop device of \(file)")
                }
            }
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
        return BootDevices(paths: result, unresolved: unresolved, disks: unresolved.isEmpty ? [] : allDisks(sysfs))
    }

    /// The sysfs paths of the block devices the filesystem `mounts[index]` lives on, and,
    /// when some of its storage cannot be found, what that is (`zfs rpool/ROOT/pve-1`).
    static func backing(of index: Int, in mounts: [Mount], sysfs: Sysfs, depth: Int = 0,
                        fstab: [String: String] = [:]) -> (devices: [String], unknown: String?) {
        let mount = mounts[index]
        if mount.type == "autofs" {
            // An automount point (systemd's, for /boot or the ESP). Mounted now: the filesystem on
            // top is its own line, resolved as any other. Not yet: the device fstab names for it;
            // none there is systemd-gpt-auto's ESP, which lies on the disk that holds the root.
            if mounts.contains(where: { $0.mountPoint == mount.mountPoint && $0.type != "autofs" }) { return ([], nil) }
            guard let spec = fstab[mount.mountPoint] else { return ([], nil) }
            let named = Mount(devno: "0:0", mountPoint: mount.mountPoint, type: "autofs", source: devicePath(spec), superOptions: "")
            switch blockDevice(of: named, sysfs: sysfs) {
            case .found(let device): return ([device], nil)
            case .notInSysfs: return ([], nil)
            case .none: return ([], "automount of \(spec), not mounted")
            }
        }
        switch blockDevice(of: mount, sysfs: sysfs) {
        case .found(let device):
            // (A loop device, a live system's squashfs: `read` follows it to its file's disk.)
            return (mount.type == "btrfs" ? btrfsMembers(of: device, sysfs: sysfs) : [device], nil)
        case .notInSysfs:
            // A block device this sysfs does not list (a test's tree: the host's lists every one).
            return ([], nil)
        case .none:
            break
        }
        if diskless.contains(mount.type) { return ([], nil) }
        guard mount.type == "overlay", depth < 4 else { return ([], "\(mount.type) \(mount.source)") }
        // An overlay lives where its layers do. A layer no other mount holds is out of this
        // namespace's sight (a container's storage, an initramfs's tmpfs after switch_root).
        var devices: [String] = []
        for layer in overlayLayers(mount.superOptions) {
            guard layer.hasPrefix("/") else { return (devices, "overlay with layer \(layer)") }
            guard let holder = self.mount(holding: layer, in: mounts, except: index) else { continue }
            let (found, unknown) = backing(of: holder, in: mounts, sysfs: sysfs, depth: depth + 1, fstab: fstab)
            devices += found
            if let unknown { return (devices, "overlay on \(unknown)") }
        }
        return (devices, nil)
    }

    enum BlockDevice { case found(String), notInSysfs, none }

    /// fstab's mount points and the device each names (`UUID=…`, `/dev/sdb1`, …).
    static func fstab(_ text: String) -> [String: String] {
        var out: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 2, !fields[0].hasPrefix("#") else { continue }
            out[unescapeOctal(String(fields[1]))] = unescapeOctal(String(fields[0]))
        }
        return out
    }

    /// The device node an fstab device names: `UUID=x` as `/dev/disk/by-uuid/x` (udev's link), ….
    static func devicePath(_ spec: String) -> String {
        for (tag, folder) in [("UUID=", "by-uuid"), ("PARTUUID=", "by-partuuid"), ("LABEL=", "by-label"), ("PARTLABEL=", "by-partlabel")]
        where spec.hasPrefix(tag) {
            return "/dev/disk/\(folder)/" + spec.dropFirst(tag.count)
        }
        return spec
    }

    /// The file a loop device reads (`/sys/block/loopN/loop/backing_file`), without the kernel's
    /// ` (deleted)` mark; nil for any other block device.
    static func loopBackingFile(_ device: String) -> String? {
        guard case .success(let bytes) = Sysfs.readBytes(device + "/loop/backing_file", limit: 8192) else { return nil }
        var text = String(decoding: bytes, as: UTF8.self)
        while text.last == "\n" { text.removeLast() }
        if text.hasSuffix(" (deleted)") { text.removeLast(" (deleted)".count) }
        return text.isEmpty ? nil : text
    }

    /// The block device a filesystem is mounted from: by its device number or, when that is
    /// anonymous (btrfs), its source's (`/dev/nvme0n1p2`); its sysfs path when sysfs has it.
    static func blockDevice(of mount: Mount, sysfs: Sysfs) -> BlockDevice {
        var number: String? = mount.devno.hasPrefix("0:") ? nil : mount.devno
        if number == nil, mount.source.hasPrefix("/dev/") {
            var st = stat()
            if stat(mount.source, &st) == 0, (st.st_mode & S_IFMT) == S_IFBLK {
                number = "\(major(st.st_rdev)):\(minor(st.st_rdev))"
            }
        }
        if let number, Sysfs.exists(sysfs.path("/dev/block/\(number)")) { return .found(sysfs.path("/dev/block/\(number)")) }
        // No device-number link: the block class by the source's name (`/dev/nvme0n1p2`).
        if mount.source.hasPrefix("/dev/"), let name = mount.source.split(separator: "/").last,
           Sysfs.exists(sysfs.path("/class/block/\(name)")) {
            return .found(sysfs.path("/class/block/\(name)"))
        }
        return number == nil ? .none : .notInSysfs
    }

    /// Every member of the btrfs filesystem one of whose devices is `device` (a sysfs path):
    /// Linux links each member as `/sys/fs/btrfs/FSID/devices/NAME`.
    static func btrfsMembers(of device: String, sysfs: Sysfs) -> [String] {
        guard let real = Sysfs.realPath(device) else { return [device] }
        let filesystems = sysfs.path("/fs/btrfs")
        for fsid in Sysfs.list(filesystems) {
            let folder = "\(filesystems)/\(fsid)/devices"
            let members = Sysfs.list(folder).map { "\(folder)/\($0)" }
            if members.contains(where: { Sysfs.realPath($0) == real }) { return [device] + members }
        }
        return [device]
    }

    /// The index of the mount a path lies on: the longest mount point above it, the last
    /// of equal ones; `except` (the overlay asking) left out. nil: none but that one.
    static func mount(holding path: String, in mounts: [Mount], except: Int) -> Int? {
        var best: Int?
        for (i, m) in mounts.enumerated() where i != except {
            guard m.mountPoint == "/" || path == m.mountPoint || path.hasPrefix(m.mountPoint + "/") else { continue }
            if let b = best, mounts[b].mountPoint.count > m.mountPoint.count { continue }
            best = i
        }
        return best
    }

    /// An overlay's layer folders from its options: `upperdir=`, the `:`-separated
    /// `lowerdir=` (`\:` is a colon in a name) or one `lowerdir+=`/`datadir+=` per layer.
    static func overlayLayers(_ options: String) -> [String] {
        var layers: [String] = []
        for option in options.split(separator: ",") {
            guard let eq = option.firstIndex(of: "=") else { continue }
            let value = unescapeOctal(String(option[option.index(after: eq)...]))
            switch option[..<eq] {
            case "upperdir", "lowerdir+", "datadir+": layers.append(value)
            case "lowerdir":
                var current = "", escaped = false
                for c in value {
                    if escaped { current.append(c); escaped = false } else if c == "\\" { escaped = true } else if c == ":" {
                        if !current.isEmpty { layers.append(current) }
                        current = ""
                    } else { current.append(c) }
                }
                if !current.isEmpty { layers.append(current) }
            default: continue
            }
        }
        return layers
    }

    /// Every whole disk in sysfs but virtual ones (loop, device-mapper, md, zram).
    static func allDisks(_ sysfs: Sysfs) -> [String] {
        Sysfs.list(sysfs.path("/class/block")).compactMap { name -> String? in
            let link = sysfs.path("/class/block/\(name)")
            guard !Sysfs.exists(link + "/partition"), let real = Sysfs.realPath(link) else { return nil }
            let path = relative(real, sysfs)
            return path.hasPrefix("/devices/virtual/") ? nil : path
        }.sorted()
    }

    /// A real path below the sysfs root, relative to it.
    static func relative(_ real: String, _ sysfs: Sysfs) -> String {
        real.hasPrefix(sysfs.root) ? String(real.dropFirst(sysfs.root.count)) : real
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
