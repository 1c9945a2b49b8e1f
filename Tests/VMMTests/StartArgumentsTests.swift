import Testing
@testable import VMM

@Suite("VMM: a VM's start arguments (vmm_args)")
struct StartArgumentsTests {
    let nic = StartArguments.PCI(address: "0000:01:00.0")
    let gpu = StartArguments.PCI(address: "0000:02:00.0", multifunction: true)
    let audio = StartArguments.PCI(address: "0000:02:00.1")
    let kbd = StartArguments.Evdev(key: "input5-event3", devnode: "/dev/input/event3")

    @Test("QEMU: vfio-pci and virtio-input-host-pci with the daemon's ids, one bus each from the start index")
    func qemuWithBuses() {
        #expect(StartArguments.qemu(pci: [nic, gpu, audio], evdev: [kbd], busPrefix: "rp", busStartIndex: 2) == [
            "-device", "vfio-pci,host=0000:01:00.0,id=vhp-pci-0000-01-00.0,bus=rp2",
            "-device", "vfio-pci,host=0000:02:00.0,id=vhp-pci-0000-02-00.0,bus=rp3,multifunction=on",
            "-device", "vfio-pci,host=0000:02:00.1,id=vhp-pci-0000-02-00.1,bus=rp4",
            "-device", "virtio-input-host-pci,evdev=/dev/input/event3,id=vhp-evdev-input5-event3,bus=rp5",
        ])
    }

    @Test("QEMU without a prefix: no bus (QEMU places them); the start index alone changes nothing")
    func qemuWithoutBuses() {
        #expect(StartArguments.qemu(pci: [nic], evdev: [kbd], busPrefix: nil, busStartIndex: 7) == [
            "-device", "vfio-pci,host=0000:01:00.0,id=vhp-pci-0000-01-00.0",
            "-device", "virtio-input-host-pci,evdev=/dev/input/event3,id=vhp-evdev-input5-event3",
        ])
        #expect(StartArguments.qemu(pci: [], evdev: [], busPrefix: "rp", busStartIndex: 0) == [])
    }

    @Test("the ids are those the daemon's resync recognises in qom-list")
    func idsParse() {
        let args = StartArguments.qemu(pci: [nic], evdev: [kbd], busPrefix: nil, busStartIndex: 0)
        let ids = args.compactMap { $0.split(separator: ",").first { $0.hasPrefix("id=") }.map { String($0.dropFirst(3)) } }
        #expect(ids.compactMap(DeviceIds.parse).map { "\($0.0):\($0.1)" } == ["pci:0000:01:00.0", "evdev:input5-event3"])
        #expect(DeviceIds.parse("vhp-usb-1-2.3")?.1 == "1-2.3")
        // What a VM lists with anything else is not vhotplug's id (its name would go to the log).
        for foreign in ["vhp-usb-1-2\nerror vhotplug: forged", "vhp-usb-1 2", "vhp-pci-0000-01-00.0;x", "vhp-evdev-éa", "vhp-usb-"] {
            #expect(DeviceIds.parse(foreign) == nil, "\(foreign)")
        }
        #expect(VMError.commandFailed(vm: "vm1", command: "device_add", errorClass: "Generic\nError", message: "m").description
                == #"VM vm1: device_add failed: "Generic\nError": "m""#)
    }

    @Test("crosvm: --vfio with the sysfs path and the virtual IOMMU, --input evdev[path=...]")
    func crosvm() {
        #expect(StartArguments.arguments(for: .crosvm, pci: [nic, gpu], evdev: [kbd], busPrefix: "rp", busStartIndex: 0) == [
            "--vfio", "/sys/bus/pci/devices/0000:01:00.0,iommu=viommu",
            "--vfio", "/sys/bus/pci/devices/0000:02:00.0,iommu=viommu",
            "--input", "evdev[path=/dev/input/event3]",
        ])
    }

    @Test("a comma in a node path is doubled (QEMU's option syntax)")
    func commaEscaped() {
        let odd = StartArguments.Evdev(key: "input9-event9", devnode: "/dev/input/by-id/a,b")
        #expect(StartArguments.qemu(pci: [], evdev: [odd], busPrefix: nil, busStartIndex: 0)
            == ["-device", "virtio-input-host-pci,evdev=/dev/input/by-id/a,,b,id=vhp-evdev-input9-event9"])
    }

    @Test("multifunction: function 0 with another function of its slot present")
    func multifunction() {
        let present = ["0000:00:02.0", "0000:02:00.0", "0000:02:00.1", "0000:01:00.0", "0000:03:00.1"]
        #expect(StartArguments.isMultifunctionSlot("0000:02:00.0", present: present))
        #expect(!StartArguments.isMultifunctionSlot("0000:02:00.1", present: present))
        #expect(!StartArguments.isMultifunctionSlot("0000:01:00.0", present: present))
        #expect(!StartArguments.isMultifunctionSlot("0000:00:02.0", present: present))
        // alone in its slot; a function 1 whose function 0 is not listed still makes 03:00.0 multi-function
        #expect(!StartArguments.isMultifunctionSlot("0000:03:00.0", present: ["0000:03:00.0"]))
        #expect(StartArguments.isMultifunctionSlot("0000:03:00.0", present: present))
    }
}
