import DeviceModel
import Foundation
@testable import HostDevices
import Testing
import VHotplugTestSupport

/// A fake sysfs tree in a scratch folder: block devices under their controllers,
/// `/dev/block` and `/class/block` links to them, btrfs member links, and a mountinfo file.
final class FakeBlockSysfs {
    let root = scratchPath("sysfs-boot")
    var mountInfo: String { root + "/mountinfo" }
    private let fm = FileManager.default

    static let sata = "/devices/pci0000:00/0000:00:17.0"
    static let nvme = "/devices/pci0000:00/0000:00:1d.0/0000:3d:00.0"
    static let xhci = "/devices/pci0000:00/0000:00:14.0"
    static let usbDisk = xhci + "/usb2/2-1"
    static let mouse = xhci + "/usb1/1-3"
    static let gpu = "/devices/pci0000:00/0000:00:01.0/0000:01:00.0"

    init() throws {
        try fm.createDirectory(atPath: root + Self.mouse, withIntermediateDirectories: true)
        try fm.createDirectory(atPath: root + Self.gpu, withIntermediateDirectories: true)
        // sda on the SATA controller, nvme0n1 on the NVMe one, sdb on a USB disk; loop0 is virtual.
        try disk("sda", devno: "8:0", at: Self.sata + "/ata1/host0/target0:0:0/0:0:0:0/block/sda", partitions: [2: "8:2"])
        try disk("nvme0n1", devno: "259:0", at: Self.nvme + "/nvme/nvme0/nvme0n1", partitions: [2: "259:2"], separator: "p")
        try disk("sdb", devno: "8:16", at: Self.usbDisk + "/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb", partitions: [1: "8:17"])
        try disk("loop0", devno: "7:0", at: "/devices/virtual/block/loop0", partitions: [:])
    }

    deinit { try? fm.removeItem(atPath: root) }

    /// A disk and its partitions (each with a `partition` file), linked from `/dev/block` and `/class/block`.
    func disk(_ name: String, devno: String, at path: String, partitions: [Int: String], separator: String = "") throws {
        try fm.createDirectory(atPath: root + path, withIntermediateDirectories: true)
        try link(name, devno, path)
        for (n, number) in partitions {
            let part = "\(name)\(separator)\(n)"
            try fm.createDirectory(atPath: root + path + "/" + part, withIntermediateDirectories: true)
            try "\(n)\n".write(toFile: root + path + "/" + part + "/partition", atomically: true, encoding: .utf8)
            try link(part, number, path + "/" + part)
        }
    }

    private func link(_ name: String, _ devno: String, _ path: String) throws {
        for folder in ["/dev/block", "/class/block"] {
            try fm.createDirectory(atPath: root + folder, withIntermediateDirectories: true)
        }
        try fm.createSymbolicLink(atPath: root + "/dev/block/" + devno, withDestinationPath: "../.." + path)
        try fm.createSymbolicLink(atPath: root + "/class/block/" + name, withDestinationPath: "../.." + path)
    }

    /// `/sys/fs/btrfs/FSID/devices/NAME` for each member, as Linux links them.
    func btrfs(_ fsid: String, members: [String: String]) throws {
        let folder = root + "/fs/btrfs/" + fsid + "/devices"
        try fm.createDirectory(atPath: folder, withIntermediateDirectories: true)
        for (name, path) in members {
            try fm.createSymbolicLink(atPath: folder + "/" + name, withDestinationPath: "../../../.." + path)
        }
    }

    /// `fstab`: the lines of this test's /etc/fstab (none: no such file).
    func read(_ lines: [String], fstab: [String]? = nil) throws -> BootDevices {
        try (lines.joined(separator: "\n") + "\n").write(toFile: mountInfo, atomically: true, encoding: .utf8)
        let fstabPath = root + "/fstab"
        try? FileManager.default.removeItem(atPath: fstabPath)
        if let fstab { try (fstab.joined(separator: "\n") + "\n").write(toFile: fstabPath, atomically: true, encoding: .utf8) }
        return BootDevices.read(sysfs: Sysfs(root: root), mountInfoPath: mountInfo, fstabPath: fstabPath)
    }
}

@Suite("Boot devices: btrfs members, unresolved roots, overlays")
struct BootDevicesTests {
    @Test("every member of a btrfs RAID1 root is held, though mountinfo names one; another btrfs is not")
    func btrfsRaid1() throws {
        let sys = try FakeBlockSysfs()
        try sys.btrfs("0b3a7f1e-5c1d-4d2e-9a77-2f1c5e7d9a10", members: [
            "sda2": FakeBlockSysfs.sata + "/ata1/host0/target0:0:0/0:0:0:0/block/sda/sda2",
            "nvme0n1p2": FakeBlockSysfs.nvme + "/nvme/nvme0/nvme0n1/nvme0n1p2",
        ])
        try sys.btrfs("5e0c2b44-1111-4a4a-8b8b-0123456789ab", members: [
            "sdb1": FakeBlockSysfs.usbDisk + "/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb/sdb1",
        ])
        let boot = try sys.read([
            "29 1 0:26 /@ / rw,relatime shared:1 - btrfs /dev/sda2 rw,space_cache=v2,subvolid=256,subvol=/@",
            "40 29 0:41 /data /srv rw,relatime shared:5 - btrfs /dev/sdb1 rw,subvolid=5,subvol=/",
        ])
        #expect(boot.isHeld(by: FakeBlockSysfs.sata), "\(boot.paths)")
        #expect(boot.isHeld(by: FakeBlockSysfs.nvme), "\(boot.paths)")
        #expect(!boot.isHeld(by: FakeBlockSysfs.usbDisk))
        #expect(!boot.isHeld(by: FakeBlockSysfs.xhci))
        #expect(boot.unresolved.isEmpty && boot.disks.isEmpty)
        #expect(boot.hold(of: FakeBlockSysfs.nvme) == .bootDisk)
    }

    @Test("a zfs root is unresolved: every disk's device and controller is held, other devices are not")
    func zfsRoot() throws {
        // Proxmox VE's: the pool's datasets, no block device named anywhere.
        let boot = try FakeBlockSysfs().read(["22 1 0:21 / / rw,relatime shared:1 - zfs rpool/ROOT/pve-1 rw,xattr,noacl",
                                              "45 22 0:45 / /rpool rw,relatime shared:30 - zfs rpool rw,xattr,noacl"])
        #expect(boot.unresolved == ["/ (zfs rpool/ROOT/pve-1)"])
        for disk in [FakeBlockSysfs.sata, FakeBlockSysfs.nvme, FakeBlockSysfs.usbDisk, FakeBlockSysfs.xhci] {
            #expect(boot.isHeld(by: disk), "\(disk): \(boot.disks)")
            #expect(boot.hold(of: disk) == .unresolvedBoot("/ (zfs rpool/ROOT/pve-1)"))
        }
        #expect(!boot.isHeld(by: FakeBlockSysfs.mouse))
        #expect(!boot.isHeld(by: FakeBlockSysfs.gpu))
        // Whole disks only, virtual ones (loop0) left out.
        #expect(Set(boot.disks.compactMap { $0.split(separator: "/").last }) == ["sda", "sdb", "nvme0n1"])
        #expect(boot.hold(of: FakeBlockSysfs.sata)?.what
                == "a disk, while the host's / (zfs rpool/ROOT/pve-1) cannot be resolved to its disks")
    }

    @Test("no / in mountinfo (a chroot) or no mountinfo at all: unresolved, every disk held")
    func rootNotListed() throws {
        let sys = try FakeBlockSysfs()
        let chroot = try sys.read(["23 22 0:22 / /proc rw,relatime shared:12 - proc proc rw"])
        #expect(chroot.unresolved == ["/ (not a mount point in \(sys.mountInfo))"])
        #expect(chroot.isHeld(by: FakeBlockSysfs.sata) && !chroot.isHeld(by: FakeBlockSysfs.mouse))
        let none = BootDevices.read(sysfs: Sysfs(root: sys.root), mountInfoPath: sys.root + "/absent")
        #expect(none.unresolved.first?.hasPrefix("/ (\(sys.root)/absent: ") == true, "\(none.unresolved)")
        #expect(none.isHeld(by: FakeBlockSysfs.nvme))
    }

    @Test("an overlay root lives where its layers do: an upper dir on a disk holds it; tmpfs, rootfs and unseen layers hold nothing")
    func overlayRoot() throws {
        let sys = try FakeBlockSysfs()
        // The upper dir on a USB disk's ext4, the lower one on tmpfs.
        let persistent = try sys.read([
            "30 1 0:40 / / rw,relatime shared:1 - overlay overlay rw,lowerdir=/run/ro,upperdir=/persist/upper,workdir=/persist/work",
            "25 30 0:23 / /run rw,nosuid shared:5 - tmpfs tmpfs rw,mode=755",
            "26 25 0:24 / /run/ro ro,relatime shared:6 - tmpfs tmpfs ro",
            "27 30 8:17 / /persist rw,relatime shared:7 - ext4 /dev/sdb1 rw",
        ])
        #expect(persistent.isHeld(by: FakeBlockSysfs.usbDisk), "\(persistent.paths)")
        #expect(!persistent.isHeld(by: FakeBlockSysfs.sata) && persistent.unresolved.isEmpty)
        // No disk at all: an initramfs, an overlay on tmpfs, a container's overlay whose layers it cannot see.
        let diskless = [
            ["1 1 0:2 / / rw shared:1 - rootfs rootfs rw"],
            ["30 1 0:40 / / rw shared:1 - overlay overlay rw,lowerdir=/run/ro,upperdir=/run/rw/upper,workdir=/run/rw/work",
             "25 30 0:23 / /run rw,nosuid shared:5 - tmpfs tmpfs rw,mode=755"],
            ["600 540 0:52 / / rw,relatime master:250 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/Q4TZ:/var/lib/docker/overlay2/l/7NZP,upperdir=/var/lib/docker/overlay2/9a1f/diff,workdir=/var/lib/docker/overlay2/9a1f/work",
             "612 600 8:2 /var/lib/docker/containers/9a1f/hosts /etc/hosts rw,relatime - ext4 /dev/sda2 rw"],
        ]
        for lines in diskless {
            let boot = try sys.read(lines)
            #expect(boot.unresolved.isEmpty && boot.paths.isEmpty, "\(lines[0]): \(boot)")
            #expect(!boot.isHeld(by: FakeBlockSysfs.sata) && !boot.isHeld(by: FakeBlockSysfs.usbDisk))
        }
        // An upper dir on zfs: unresolved, named through the overlay.
        let onZFS = try sys.read([
            "30 1 0:40 / / rw shared:1 - overlay overlay rw,lowerdir=/run/ro,upperdir=/tank/upper,workdir=/tank/work",
            "31 30 0:45 / /tank rw shared:2 - zfs tank/root rw",
        ])
        #expect(onZFS.unresolved == ["/ (overlay on zfs tank/root)"])
        #expect(onZFS.isHeld(by: FakeBlockSysfs.nvme))
    }

    @Test("an automounted /boot (systemd's autofs point): mounted, the filesystem on top; not yet, the device fstab names, or none (gpt-auto's ESP, on the root's disk); one it cannot find: unresolved")
    func automountedBoot() throws {
        let sys = try FakeBlockSysfs()
        let root = "22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw"
        let automount = "40 22 0:42 / /boot rw,relatime shared:20 - autofs systemd-1 rw,fd=47,pgrp=1,timeout=0,minproto=5,maxproto=5,direct"
        // systemd-gpt-auto (no fstab entry): only the root's disk.
        let gptAuto = try sys.read([root, automount])
        #expect(gptAuto.unresolved.isEmpty, "\(gptAuto)")
        #expect(gptAuto.isHeld(by: FakeBlockSysfs.sata) && !gptAuto.isHeld(by: FakeBlockSysfs.nvme) && !gptAuto.isHeld(by: FakeBlockSysfs.usbDisk))
        // /boot on a USB stick, x-systemd.automount, not mounted yet: the stick fstab names.
        let fstab = ["# /etc/fstab", "/dev/sda2 / ext4 defaults 0 1", "/dev/sdb1 /boot vfat noauto,x-systemd.automount 0 2"]
        let pending = try sys.read([root, automount], fstab: fstab)
        #expect(pending.isHeld(by: FakeBlockSysfs.usbDisk) && pending.unresolved.isEmpty, "\(pending)")
        // Mounted: the vfat line on top.
        let mounted = try sys.read([root, automount, "41 40 8:17 / /boot rw,relatime shared:21 - vfat /dev/sdb1 rw"])
        #expect(mounted.isHeld(by: FakeBlockSysfs.usbDisk) && mounted.unresolved.isEmpty)
        // A device it cannot find (no /dev/disk/by-uuid link here): unresolved, every disk held.
        let unknown = try sys.read([root, automount], fstab: ["UUID=0000-1111 /boot vfat noauto,x-systemd.automount 0 2"])
        #expect(unknown.unresolved == ["/boot (automount of UUID=0000-1111, not mounted)"], "\(unknown)")
        #expect(unknown.isHeld(by: FakeBlockSysfs.nvme))
    }

    @Test("a live system's root on device-mapper over loop devices (dmsquash-live): the disk of the loop device's file is held")
    func liveOnDeviceMapper() throws {
        let sys = try FakeBlockSysfs()
        let fm = FileManager.default
        try sys.disk("loop1", devno: "7:1", at: "/devices/virtual/block/loop1", partitions: [:])
        try fm.createDirectory(atPath: sys.root + "/devices/virtual/block/loop1/loop", withIntermediateDirectories: true)
        try "/run/initramfs/live/LiveOS/rootfs.img\n".write(toFile: sys.root + "/devices/virtual/block/loop1/loop/backing_file",
                                                          atomically: true, encoding: .utf8)
        try sys.disk("dm-0", devno: "253:0", at: "/devices/virtual/block/dm-0", partitions: [:])
        try fm.createDirectory(atPath: sys.root + "/devices/virtual/block/dm-0/slaves", withIntermediateDirectories: true)
        try fm.createSymbolicLink(atPath: sys.root + "/devices/virtual/block/dm-0/slaves/loop1", withDestinationPath: "../../loop1")
        let boot = try sys.read([
            "22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/live-rw rw",
            "25 22 8:17 / /run/initramfs/live ro,relatime shared:5 - iso9660 /dev/sdb1 ro",
        ])
        #expect(boot.isHeld(by: FakeBlockSysfs.usbDisk) && boot.unresolved.isEmpty, "\(boot)")
        #expect(!boot.isHeld(by: FakeBlockSysfs.sata))
    }

    @Test("a root on a partition of an md RAID (IMSM's md126p2), or LVM on one: the array's disks are held, found through the whole array's slaves (a partition has none)")
    func partitionedRaid() throws {
        let sys = try FakeBlockSysfs()
        let fm = FileManager.default
        let md = "/devices/virtual/block/md126"
        try sys.disk("md126", devno: "9:126", at: md, partitions: [2: "259:10", 3: "259:11"], separator: "p")
        try fm.createDirectory(atPath: sys.root + md + "/slaves", withIntermediateDirectories: true)
        try fm.createSymbolicLink(atPath: sys.root + md + "/slaves/sda", withDestinationPath: "../../../../.." + FakeBlockSysfs.sata + "/ata1/host0/target0:0:0/0:0:0:0/block/sda")
        try fm.createSymbolicLink(atPath: sys.root + md + "/slaves/sdb", withDestinationPath: "../../../../.." + FakeBlockSysfs.usbDisk + "/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb")
        let direct = try sys.read(["22 1 259:10 / / rw,relatime shared:1 - ext4 /dev/md126p2 rw"])
        #expect(direct.isHeld(by: FakeBlockSysfs.usbDisk) && direct.isHeld(by: FakeBlockSysfs.sata) && direct.unresolved.isEmpty, "\(direct)")
        #expect(!direct.isHeld(by: FakeBlockSysfs.nvme) && !direct.isHeld(by: FakeBlockSysfs.mouse))
        // LVM on the array's third partition: dm-0's slave is the partition.
        try sys.disk("dm-0", devno: "253:0", at: "/devices/virtual/block/dm-0", partitions: [:])
        try fm.createDirectory(atPath: sys.root + "/devices/virtual/block/dm-0/slaves", withIntermediateDirectories: true)
        try fm.createSymbolicLink(atPath: sys.root + "/devices/virtual/block/dm-0/slaves/md126p3", withDestinationPath: "../../md126/md126p3")
        let lvm = try sys.read(["22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/vg-root rw"])
        #expect(lvm.isHeld(by: FakeBlockSysfs.usbDisk) && lvm.isHeld(by: FakeBlockSysfs.sata) && lvm.unresolved.isEmpty, "\(lvm)")
        #expect(!lvm.isHeld(by: FakeBlockSysfs.nvme))
    }

    @Test("a root on a partition of a partitioned loop device (losetup -P) whose file is on a USB disk: the disk is held")
    func partitionedLoop() throws {
        let sys = try FakeBlockSysfs()
        let loop = "/devices/virtual/block/loop3"
        try sys.disk("loop3", devno: "7:3", at: loop, partitions: [1: "259:20"], separator: "p")
        try FileManager.default.createDirectory(atPath: sys.root + loop + "/loop", withIntermediateDirectories: true)
        try "/media/stick/disk.img\n".write(toFile: sys.root + loop + "/loop/backing_file", atomically: true, encoding: .utf8)
        let boot = try sys.read([
            "22 1 259:20 / / rw,relatime shared:1 - ext4 /dev/loop3p1 rw",
            "25 22 8:17 / /media/stick rw,relatime shared:5 - vfat /dev/sdb1 rw",
        ])
        #expect(boot.isHeld(by: FakeBlockSysfs.usbDisk) && boot.unresolved.isEmpty, "\(boot)")
        #expect(!boot.isHeld(by: FakeBlockSysfs.sata))
    }

    @Test("a live system's root (overlay over a squashfs on loop0, whose file is on a USB stick): the stick is held")
    func liveSystem() throws {
        let sys = try FakeBlockSysfs()
        try FileManager.default.createDirectory(atPath: sys.root + "/devices/virtual/block/loop0/loop", withIntermediateDirectories: true)
        try "/run/live/medium/live/filesystem.squashfs\n".write(toFile: sys.root + "/devices/virtual/block/loop0/loop/backing_file",
                                                              atomically: true, encoding: .utf8)
        let boot = try sys.read([
            "30 1 0:40 / / rw shared:1 - overlay overlay rw,lowerdir=/run/live/rootfs/filesystem.squashfs,upperdir=/run/live/overlay/rw,workdir=/run/live/overlay/work",
            "25 30 0:23 / /run rw,nosuid shared:5 - tmpfs tmpfs rw,mode=755",
            "26 25 8:17 / /run/live/medium ro,noatime shared:6 - vfat /dev/sdb1 ro",
            "27 25 7:0 / /run/live/rootfs/filesystem.squashfs ro,noatime shared:7 - squashfs /dev/loop0 ro",
        ])
        #expect(boot.isHeld(by: FakeBlockSysfs.usbDisk), "\(boot)")
        #expect(!boot.isHeld(by: FakeBlockSysfs.sata) && boot.unresolved.isEmpty)
    }

    @Test("overlay layers from the options: lowerdir's colons and escapes, lowerdir+ and datadir+")
    func overlayLayers() {
        #expect(BootDevices.overlayLayers("rw,lowerdir=/a:/b\\134:c::/d,upperdir=/u\\054x,workdir=/w")
                == ["/a", "/b:c", "/d", "/u,x"])
        #expect(BootDevices.overlayLayers("rw,lowerdir+=/l1,lowerdir+=/l2,datadir+=/d1,upperdir=/u") == ["/l1", "/l2", "/d1", "/u"])
    }
}
