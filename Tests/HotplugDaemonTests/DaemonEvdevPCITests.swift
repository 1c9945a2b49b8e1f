import Foundation
import Testing
import VHotplugTestSupport

/// The QEMU of these tests has root ports rp1 and ep1.
func qemuWithPorts(_ tb: Testbed) throws -> QEMUInstance {
    try QEMUInstance(testbed: tb, extraArgs: ["-device", "pcie-root-port,id=rp1,chassis=1", "-device", "pcie-root-port,id=ep1,chassis=2"])
}

@Suite("The daemon with input and PCI devices, a real QEMU and umockdev", .serialized)
struct DaemonEvdevPCITests {
    @Test("a non-USB keyboard is sent to the evdev VM as virtio-input-host-pci on a root port with the prefix; QEMU's refusal is logged once, not retried")
    func evdev() async throws {
        let tb = await Testbed.make()
        let qemu = try qemuWithPorts(tb)
        let config = qemu.dir + "/vhotplug.conf"
        try """
            {"evdevPassthrough": {"targetVm": "vm1", "pcieBusPrefix": "ep"},
             "vms": [{"name": "vm1", "type": "qemu", "socket": "\(qemu.qmpPath)"}]}
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let d = try DaemonProcess(arguments: ["-c", config, "-d"], testbed: tb)
        try d.waitFor("; listening (")
        try tb.add(file: fixtures + "/ps2-keyboard.umockdev")
        try d.waitFor("input event0 \"AT Translated Set 2 keyboard\": vm1 (evdevPassthrough)")
        try d.waitFor(#""driver":"virtio-input-host-pci","evdev":"/dev/input/event0","id":"vhp-evdev-event0","bus":"ep1""#)
        // umockdev's fake node answers no evdev ioctls, so QEMU refuses it: the daemon says so...
        try d.waitFor("input event0 \"AT Translated Set 2 keyboard\": attach to vm1 failed: VM vm1: device_add failed: GenericError: \"/dev/input/event0: is not an evdev device\"")
        // ...and does not try again: after a later event (a reload), still one attempt.
        let mark = d.mark
        d.signal(SIGHUP)
        try d.waitFor("configuration reloaded", from: mark)
        #expect(d.log.filter { $0.contains(#""evdev":"/dev/input/event0""#) }.count == 1)
        #expect(try qemu.attachedIds() == [])
    }

    @Test("a PCI device on a host without vfio-pci: the daemon says to load it, the device stays on its driver, nothing reaches the VM")
    func pciRollback() async throws {
        let tb = await Testbed.make()
        let qemu = try qemuWithPorts(tb)
        let config = qemu.dir + "/vhotplug.conf"
        try """
            {"pciPassthrough": [{"targetVm": "vm1", "allow": [{"address": "0000:00:14.3", "description": "Wi-Fi"}]}],
             "vms": [{"name": "vm1", "type": "qemu", "socket": "\(qemu.qmpPath)"}]}
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let d = try DaemonProcess(arguments: ["-c", config], testbed: tb)
        try d.waitFor("; listening (")
        try tb.addProbed(file: fixtures + "/pci-wifi.umockdev")
        try d.waitFor("pci 0000:00:14.3 8086:a0f0: vm1 (rule set 0, allow[0] \"Wi-Fi\")")
        try d.waitFor("pci 0000:00:14.3 8086:a0f0: attach to vm1 failed: 0000:00:14.3: check: the vfio-pci driver is not loaded (no /sys/bus/pci/drivers/vfio-pci): modprobe vfio-pci")
        let wifi = tb.sysRoot + "/devices/pci0000:00/0000:00:14.3"
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: wifi + "/driver"))?.hasSuffix("/iwlwifi") == true)
        let override = (try? String(contentsOfFile: wifi + "/driver_override", encoding: .utf8)) ?? ""
        #expect(!override.contains("vfio-pci"))
        #expect(!d.log.contains { $0.contains("device_add") || $0.contains("attached to") })
        #expect(try qemu.attachedIds() == [])
    }
}
