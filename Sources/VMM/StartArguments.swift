import HotplugConfig

/// The command-line arguments that give a VM its PCI and evdev devices from its
/// start (the API's `vmm_args`), instead of hot-plugging them once it runs.
///
/// QEMU devices get vhotplug's own ids (`DeviceIds`): when the VM comes up, the
/// daemon's resync finds them in `qom-list` and treats them as attached (it
/// detaches them on unplug, and never adds them a second time).
public enum StartArguments {
    /// One PCI function bound to vfio-pci for the VM.
    public struct PCI: Sendable, Hashable {
        /// `dddd:bb:dd.f`.
        public var address: String
        /// Function 0 of a slot with other functions: QEMU needs `multifunction=on`.
        public var multifunction: Bool

        public init(address: String, multifunction: Bool = false) {
            self.address = address
            self.multifunction = multifunction
        }
    }

    /// One input event device (`/dev/input/eventN`).
    public struct Evdev: Sendable, Hashable {
        /// `input7-event3` (DeviceIds.evdevKey).
        public var key: String
        /// `/dev/input/event3`.
        public var devnode: String

        public init(key: String, devnode: String) {
            self.key = key
            self.devnode = devnode
        }
    }

    /// The arguments for a VM of this type.
    public static func arguments(for type: VMType, pci: [PCI], evdev: [Evdev], busPrefix: String?, busStartIndex: Int) -> [String] {
        switch type {
        case .qemu: qemu(pci: pci, evdev: evdev, busPrefix: busPrefix, busStartIndex: busStartIndex)
        case .crosvm: crosvm(pci: pci, evdev: evdev)
        }
    }

    /// `-device vfio-pci,host=ADDRESS,id=vhp-pci-…[,bus=<prefix><index>][,multifunction=on]` for each
    /// function, then `-device virtio-input-host-pci,evdev=NODE,id=vhp-evdev-inputM-eventN[,bus=…]` for each
    /// input device. With a prefix, each device has its own bus: `<prefix><start>`, `<prefix><start+1>`, …
    /// (root ports, so that the daemon can unplug them later); without one, QEMU places them.
    public static func qemu(pci: [PCI], evdev: [Evdev], busPrefix: String?, busStartIndex: Int) -> [String] {
        var out: [String] = []
        var index = busStartIndex
        func bus() -> String {
            guard let busPrefix else { return "" }
            defer { index += 1 }
            return ",bus=\(busPrefix)\(index)"
        }
        for d in pci {
            out += ["-device", "vfio-pci,host=\(d.address),id=\(DeviceIds.pci(address: d.address))\(bus())"
                        + (d.multifunction ? ",multifunction=on" : "")]
        }
        for e in evdev {
            out += ["-device", "virtio-input-host-pci,evdev=\(qemuOptionValue(e.devnode)),id=\(DeviceIds.prefix)evdev-\(e.key)\(bus())"]
        }
        return out
    }

    /// `--vfio /sys/bus/pci/devices/ADDRESS,iommu=viommu` for each function, then
    /// `--input evdev[path=NODE]` for each input device.
    public static func crosvm(pci: [PCI], evdev: [Evdev]) -> [String] {
        pci.flatMap { ["--vfio", "/sys/bus/pci/devices/\($0.address),iommu=viommu"] }
            + evdev.flatMap { ["--input", "evdev[path=\($0.devnode)]"] }
    }

    /// A value inside QEMU's `-device a=b,c=d` syntax: a comma is written twice.
    static func qemuOptionValue(_ s: String) -> String {
        s.replacing(",", with: ",,")
    }

    /// True when `address` is function 0 and another function of its slot
    /// (`dddd:bb:dd.*`) is among `present`.
    public static func isMultifunctionSlot(_ address: String, present: some Sequence<String>) -> Bool {
        guard address.hasSuffix(".0"), let dot = address.lastIndex(of: ".") else { return false }
        let slot = address[...dot]
        return present.contains { $0 != address && $0.hasPrefix(slot) }
    }
}
