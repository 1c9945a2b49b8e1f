import Foundation
import Testing
import VHotplugTestSupport

/// The daemon's mount table (VHOTPLUG_MOUNTINFO): `/` on a tmpfs, and with `boot`, `/boot` on
/// the USB disk's sda1 (8:1, usb-disk.umockdev's SanDisk at 2-2).
private func writeMountTable(_ path: String, boot: Bool) throws {
    var lines = ["1 0 0:30 / / rw,relatime shared:1 - tmpfs tmpfs rw"]
    if boot { lines.append("22 1 8:1 / /boot rw,relatime shared:5 - vfat /dev/sda1 rw") }
    try (lines.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
}

/// A change of the host's mount table that holds nothing: a tmpfs mounted on a scratch folder
/// and unmounted (two change events, as the kernel sends for any mount).
private func touchMountTable() throws {
    let dir = scratchPath("vhp-mount")
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    guard mount("tmpfs", dir, "tmpfs", 0, nil) == 0 else {
        throw TestFailure("mount tmpfs on \(dir): \(String(cString: strerror(errno))) (the tests run as root)")
    }
    umount(dir)
}

private struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ text: String) { description = text }
}

@Suite("The host's boot disk found again after the start (a reload, a change of the mount table)", .serialized)
struct DaemonBootDevicesTests {
    static let disk = "usb 2-2 0781:5581 \"SanDisk\" \"Ultra\""

    /// A testbed with a paused QEMU, a configuration sending the SanDisk disk to vm1 (with
    /// `allowDisk`) or HID mice only, and the daemon on a mount table of its own.
    func start(allowDisk: Bool, boot: Bool) async throws -> (Rig, DaemonProcess, mounts: String) {
        let rig = try await Rig()
        if allowDisk {
            _ = try writeConfig(rig.qemu.dir, socket: rig.qemu.qmpPath, allow: #"{"vendorId": "0781", "description": "the disk"}"#)
        }
        let mounts = rig.qemu.dir + "/mountinfo"
        try writeMountTable(mounts, boot: boot)
        let d = try rig.daemon(environment: ["VHOTPLUG_MOUNTINFO": mounts, "VHOTPLUG_FSTAB": rig.qemu.dir + "/no-fstab"])
        return (rig, d, mounts)
    }

    @Test("/boot mounted from a USB disk in a VM after the start: the mount table's change holds it, and it leaves the VM; unmounted again, it stays held until a reload, which sends it back")
    func bootMountedAfterStart() async throws {
        let (rig, d, mounts) = try await start(allowDisk: true, boot: false)
        try rig.tb.add(file: fixtures + "/usb-disk.umockdev")
        try d.waitFor(Self.disk + ": attached to vm1")
        var mark = d.mark
        try writeMountTable(mounts, boot: true)
        try touchMountTable()
        // Before: the boot devices were read at the start only; the disk stayed in vm1.
        try d.waitFor("the mount table changed: the host's boot filesystems are on sda1 sda (were on none)", from: mark)
        try d.waitFor(Self.disk + ": none: holds the host's / or /boot", from: mark)
        try d.waitFor(Self.disk + ": detached from vm1", from: mark)
        // Unmounted: what was held stays held (a /boot unmounted for a moment is no reason to pass it through).
        mark = d.mark
        try writeMountTable(mounts, boot: false)
        try touchMountTable()
        try d.waitFor("the mount table changed: boot filesystems on none; the devices of those gone stay held until a reload", from: mark)
        #expect(!d.log[mark...].contains { $0.contains(Self.disk) && $0.contains("vm1") }, "\(d.log[mark...])")
        // A reload reads them as they are.
        mark = d.mark
        d.signal(SIGHUP)
        try d.waitFor("reload: the host's boot filesystems are on none (were on sda1 sda)", from: mark)
        try d.waitFor(Self.disk + ": attached to vm1", from: mark)
    }

    @Test("a reload whose rules send the disk to vm1 after /boot was mounted from it: it is held (before: the boot devices of the start, and it went to vm1)")
    func reloadFindsBootDisk() async throws {
        let (rig, d, mounts) = try await start(allowDisk: false, boot: false)
        try rig.tb.add(file: fixtures + "/usb-disk.umockdev")
        try d.waitFor(Self.disk + ": none: no rule matches")
        // The mount table file changes with no change event for the daemon (a reload finds it).
        try writeMountTable(mounts, boot: true)
        _ = try writeConfig(rig.qemu.dir, socket: rig.qemu.qmpPath, allow: #"{"vendorId": "0781", "description": "the disk"}"#)
        let mark = d.mark
        d.signal(SIGHUP)
        try d.waitFor("reload: every device decided again", from: mark)
        #expect(d.log[mark...].contains { $0.contains(Self.disk + ": none: holds the host's / or /boot") }, "\(d.log[mark...])")
        #expect(!d.log[mark...].contains { $0.contains(Self.disk) && $0.contains("vm1") }, "\(d.log[mark...])")
    }
}
