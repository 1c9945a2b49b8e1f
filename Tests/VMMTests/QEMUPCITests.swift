import DeviceModel
import Foundation
import Logging
import Reactor
import Testing
import VHotplugTestSupport
@testable import VMM

let wifi = PCIDevice(address: "0000:00:14.3", sysPath: "/devices/pci0000:00/0000:00:14.3", vendorId: 0x8086, deviceId: 0xa0f0)
let keyboard = InputDevice(sysName: "event0", sysPath: "/devices/platform/i8042/serio0/input/input0/event0",
                           devnode: "/dev/input/event0", name: "AT Translated Set 2 keyboard", busType: 0x11)

/// Root ports rp1, rp2, ep1; a device of the harness already on rp1.
let rootPorts = ["-device", "pcie-root-port,id=rp1,chassis=1", "-device", "pcie-root-port,id=rp2,chassis=2",
                 "-device", "pcie-root-port,id=ep1,chassis=3", "-device", "virtio-rng-pci,id=rng,bus=rp1"]

@Suite("QEMU backend: PCI and evdev against a real QEMU", .serialized)
struct QEMUPCITests {
    @Test("the first free root port is chosen (rp1 holds a device); QEMU's error for an absent host device comes back")
    func pciAbsent() async throws {
        let qemu = try QEMUInstance(extraArgs: rootPorts)
        let host = try LoopHost()
        let backend = QEMUBackend(name: "vm1", socketPath: qemu.qmpPath, loop: host.loop, logger: logger)
        let port = try await backend.nextFreeRootPort(prefix: nil)
        #expect(port == "ep1")    // sorted: ep1, rp1 (in use), rp2
        let e = await #expect(throws: VMError.self) { try await backend.attachPCI(wifi) }
        #expect(e?.description.contains("vfio") == true)
        #expect(e?.description.contains("0000:00:14.3") == true)
        #expect(try qemu.attachedIds() == [])
    }

    @Test("a bus prefix limits the ports; with none free the error names the VM and its ports")
    func noFreePort() async throws {
        let qemu = try QEMUInstance(extraArgs: rootPorts)
        let host = try LoopHost()
        let backend = QEMUBackend(name: "vm1", socketPath: qemu.qmpPath, loop: host.loop, logger: logger)
        let e = await #expect(throws: VMError.self) { try await backend.attachEvdev(keyboard, busPrefix: "zz") }
        #expect(e?.description == "VM vm1: no free pcie-root-port with an id starting with \"zz\" for /dev/input/event0; its root ports: ep1, rp1 (in use), rp2")
        let bare = try QEMUInstance()
        let backend2 = QEMUBackend(name: "vm2", socketPath: bare.qmpPath, loop: host.loop, logger: logger)
        let e2 = await #expect(throws: VMError.self) { try await backend2.attachPCI(wifi) }
        #expect(e2?.description.contains("its root ports: none") == true)
    }

    @Test("a PCI device leaves the root ports of evdev's prefix to input devices; with only those free, the error says they are kept")
    func evdevPortsKept() async throws {
        let qemu = try QEMUInstance(extraArgs: rootPorts)
        let host = try LoopHost()
        let backend = QEMUBackend(name: "vm1", socketPath: qemu.qmpPath, loop: host.loop, logger: logger)
        #expect(try await backend.nextFreeRootPort(prefix: nil) == "ep1")    // nothing kept: the first free one
        await backend.keepPorts(forEvdev: ["ep", ""])                        // an empty prefix keeps nothing
        #expect(try await backend.nextFreeRootPort(prefix: nil) == "rp2")
        #expect(try await backend.nextFreeRootPort(prefix: "ep") == "ep1")  // input devices still get theirs
        // rp2 taken as well: only ep1 is free, and it stays for input devices.
        _ = try qemu.observe("device_add", #"{"driver": "virtio-rng-pci", "id": "rng2", "bus": "rp2"}"#)
        let e = await #expect(throws: VMError.self) { try await backend.attachPCI(wifi) }
        #expect(e?.description == "VM vm1: no free pcie-root-port for 0000:00:14.3; its root ports: ep1 (kept for input devices), rp1 (in use), rp2 (in use)")
    }

    @Test("evdev: QEMU's reply for a node that is no event device is returned as it is")
    func evdevNotEvdev() async throws {
        let qemu = try QEMUInstance(extraArgs: rootPorts)
        let host = try LoopHost()
        let backend = QEMUBackend(name: "vm1", socketPath: qemu.qmpPath, loop: host.loop, logger: logger)
        var null = keyboard
        null.devnode = "/dev/null"
        let e = await #expect(throws: VMError.self) { try await backend.attachEvdev(null, busPrefix: "rp") }
        #expect(e?.description.contains("/dev/null: is not an evdev device") == true)
        var absent = keyboard
        absent.devnode = "/dev/input/event999"
        let e2 = await #expect(throws: VMError.self) { try await backend.attachEvdev(absent, busPrefix: nil) }
        #expect(e2?.description.contains("Could not open '/dev/input/event999'") == true)
    }

    @Test("a QEMU that stops answering while the root ports are looked at: the attach fails with the timeout of that step (before, the timeout was swallowed and the device_add failed on the closed connection, as a protocol error)")
    func portScanTimeout() async throws {
        let server = try FakeQMPServer(.replies([
            #"{"return": {}, "id": 1}"# + "\n",
            #"{"return": [{"name": "ep1", "type": "child<pcie-root-port>"}], "id": 2}"# + "\n",
            #"{"return": [], "id": 3}"# + "\n",
            "", // qom-get ep1 parent_bus: no answer
        ]))
        let host = try LoopHost()
        let backend = QEMUBackend(name: "vm1", socketPath: server.path, loop: host.loop, logger: logger, timeout: 0.3)
        let e = await #expect(throws: VMError.self) { try await backend.attachEvdev(keyboard, busPrefix: "ep") }
        #expect(e == .timeout(vm: "vm1", step: "qom-get"))
        #expect(!server.received.contains { $0.contains("device_add") })
    }
}
