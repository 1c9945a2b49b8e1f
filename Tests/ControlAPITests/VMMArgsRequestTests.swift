import ControlAPI
import Testing

@Suite("ControlAPI: vmm_args requests")
struct VMMArgsRequestTests {
    @Test("vmm_args: vm, bus prefix and start index (numbers or strings), require_pci; absent and null are defaults")
    func decodes() throws {
        #expect(try decode(#"{"action": "vmm_args", "vm": "net-vm"}"#).get()
            == .vmmArgs(VMMArgsRequest(vm: "net-vm", busPrefix: nil, busStartIndex: 0, requirePCI: false)))
        #expect(try decode(#"{"action": "vmm_args", "vm": "net-vm", "qemu_bus_prefix": "rp", "qemu_bus_start_index": 3, "require_pci": true}"#).get()
            == .vmmArgs(VMMArgsRequest(vm: "net-vm", busPrefix: "rp", busStartIndex: 3, requirePCI: true)))
        // What the reference's Rust client sends: every key, null when not given.
        #expect(try decode(#"{"action": "vmm_args", "vm": "audio-vm", "qemu_bus_prefix": null, "qemu_bus_start_index": "2", "require_pci": false}"#).get()
            == .vmmArgs(VMMArgsRequest(vm: "audio-vm", busPrefix: nil, busStartIndex: 2)))
    }

    @Test("vmm_args errors say what was expected")
    func errors() {
        #expect(failure(#"{"action": "vmm_args"}"#) == #"vmm_args needs "vm": the VM about to start"#)
        #expect(failure(#"{"action": "vmm_args", "vm": 3}"#)?.hasPrefix(#""vm": expected a string"#) == true)
        #expect(failure(#"{"action": "vmm_args", "vm": "v", "qemu_bus_start_index": -1}"#)?
            .hasPrefix(#""qemu_bus_start_index": expected an integer from 0 to 65535"#) == true)
        #expect(failure(#"{"action": "vmm_args", "vm": "v", "qemu_bus_start_index": 1.5}"#) != nil)
        #expect(failure(#"{"action": "vmm_args", "vm": "v", "require_pci": "yes"}"#)?.hasPrefix(#""require_pci": expected true or false"#) == true)
        // A prefix goes into QEMU's -device option syntax: no commas, no '=' smuggled in.
        #expect(failure(#"{"action": "vmm_args", "vm": "v", "qemu_bus_prefix": "rp,x=1"}"#)?.hasPrefix(#""qemu_bus_prefix": expected a QEMU device id prefix"#) == true)
        #expect(failure(#"{"action": "vmm_args", "vm": "v", "qemu_bus_prefix": ""}"#) != nil)
    }
}
