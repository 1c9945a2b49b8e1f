import CLinux
import Foundation
import Testing
import VFIO
import VMM
import DeviceModel
import VHotplugTestSupport

/// A PS/2 keyboard (evdev passthrough to vm1) and the GPU with its audio function
/// (a PCI rule for vm1) in a testbed; vm1's QEMU with root ports ep1, ep2; the API on a Unix socket.
struct VMMArgsRig {
    let tb: Testbed
    let dir: String
    let socket: String
    let config: String
    var qmpPath: String { dir + "/vm1.qmp" }

    init(pci: Bool = false) async throws {
        tb = await Testbed.make()
        dir = scratchPath("vhp-vmmargs")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        socket = dir + "/api.sock"
        config = dir + "/vhotplug.conf"
        let pciRules = pci ? #""pciPassthrough": [{"targetVm": "vm1", "allow": [{"vendorId": "10de", "deviceId": "1f06"}]}],"# : ""
        try """
            {"evdevPassthrough": [{"targetVm": "vm1", "pcieBusPrefix": "ep", "allow": [{"kind": "keyboard"}], "deny": [{"name": "^Power Button$"}]}], \(pciRules)
             "vms": [{"name": "vm1", "type": "qemu", "socket": "\(qmpPath)"}, {"name": "vm2", "type": "qemu", "socket": "\(dir)/vm2.qmp"}],
             "general": {"api": {"unixSocket": "\(socket)"}, "persistency": false}}
            """.write(toFile: config, atomically: true, encoding: .utf8)
    }

    /// vm1's QEMU (in this folder, so its socket is the configured one).
    func qemu(_ extra: [String] = []) throws -> QEMUInstance {
        try QEMUInstance(testbed: tb, extraArgs: ["-device", "pcie-root-port,id=ep1,chassis=1", "-device", "pcie-root-port,id=ep2,chassis=2"] + extra,
                         directory: dir)
    }

    func daemon() throws -> DaemonProcess {
        let d = try DaemonProcess(arguments: ["-c", config, "-d"], testbed: tb)
        try d.waitFor("; listening (")
        return d
    }

    /// The GPU and its audio function in the testbed, and the kernel's part of a rebind played
    /// there (its bind and unbind events go to the daemon through umockdev). Stop it at the end.
    /// `probed`: each function's `bind` event follows, once the kernel is played, as the kernel sends
    /// it at the end of the driver's probe (a daemon running then waits up to 10 s for a probe without it).
    func gpuWithPlayedKernel(refusals: FakeKernel.Refusals = .init(), probed: Bool = false) throws -> FakeKernel {
        let file = fixtures + "/pci-gpu-audio.umockdev"
        let tb = self.tb
        try tb.add(file: file)
        let kernel = try FakeKernel(root: tb.root, refusals: refusals)
        kernel.start { action, subsystem, devpath in
            if subsystem == "pci" { tb.uevent("/sys" + devpath, action) }
        }
        if probed { try tb.probesOver(file: file) }
        return kernel
    }

    /// A daemon whose rebind of the GPU (plugged once it runs) is held inside the kernel's
    /// unbind from nouveau: writes to nouveau's `unbind` wait while `gate` exists
    /// (Tests/Doubles/slow-store.c), as the kernel runs the driver's remove inside that write,
    /// which takes seconds for some GPU drivers. `end()` at the test's end.
    func rebindHeldInUnbind(environment extra: [String: String] = [:]) throws -> (daemon: DaemonProcess, kernel: FakeKernel, gate: String, end: () -> Void) {
        let gate = dir + "/gate"
        let d = try DaemonProcess(arguments: ["-c", config, "-d"], testbed: tb,
                                  environment: try slowStoreEnvironment(gate: gate, suffix: "/nouveau/unbind").merging(extra) { $1 })
        try d.waitFor("; listening (")
        FileManager.default.createFile(atPath: gate, contents: nil)
        let kernel = try gpuWithPlayedKernel(probed: true)
        // (The daemon is killed before the played kernel stops: a daemon whose loop is in a write
        // to the kernel's FIFOs would wait for a reader that is gone, and the test with it.)
        let end = {
            kill(d.pid, SIGKILL)
            try? FileManager.default.removeItem(atPath: gate)
            kernel.stop()
        }
        do { try d.waitFor("slow-store: holding ") } catch { end(); throw error }
        return (d, kernel, gate, end)
    }

    /// The driver a PCI device of the testbed is bound to.
    func driver(_ address: String) -> String? { FakeKernel.linkName(tb.sysRoot + "/bus/pci/devices/\(address)/driver") }

    /// A write to the played kernel's files, as the binder makes it.
    func kernelWrite(_ path: String, _ text: String) {
        let fd = vh_open_direct(tb.sysRoot + path, O_WRONLY | O_CLOEXEC)
        _ = text.withCString { write(fd, $0, strlen($0)) }
        close(fd)
    }

    /// Moves `address` from `driver` to vfio-pci through the played kernel, as a bind does it.
    func moveToVFIO(_ address: String, from driver: String, _ kernel: FakeKernel) throws {
        try "vfio-pci".write(toFile: tb.sysRoot + "/bus/pci/devices/\(address)/driver_override", atomically: false, encoding: .utf8)
        kernelWrite("/bus/pci/drivers/\(driver)/unbind", address)
        try kernel.waitFor("unbind \(address) from \(driver)")
        kernelWrite("/bus/pci/drivers_probe", address)
        try kernel.waitFor("bind \(address) to vfio-pci")
    }

    /// `vhotplug vmm args ARGS --path SOCKET`.
    func vmmArgs(_ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        try run([Repository.vhotplug, "vmm", "args"] + args + ["--path", socket])
    }
}

@Suite("vmm_args end to end: the daemon, umockdev, a real QEMU, the CLI", .serialized)
struct DaemonVMMArgsTests {
    @Test("the launcher asks before the daemon is up (the CLI retries); the VM starts with the evdev device under the daemon's id: found as attached, no second device_add, detached on unplug")
    func evdevColdplug() async throws {
        let rig = try await VMMArgsRig()
        try rig.tb.add(file: fixtures + "/ps2-keyboard.umockdev")
        // The launcher first: nothing listens yet, it keeps trying.
        let launcher = try ChildProcess([Repository.vhotplug, "vmm", "args", "--vm", "vm1", "--qemu-bus-prefix", "ep",
                                         "--qemu-bus-start-index", "2", "--timeout", "30", "--path", rig.socket])
        #expect(launcher.stderrLine() == "vhotplug: waiting up to 30.0 s for the daemon at \(rig.socket)")
        let d = try rig.daemon()
        #expect(d.log.contains { $0.contains("VM vm1 is not running") })
        let printed = launcher.stdout()
        #expect(launcher.wait() == 0)
        // The reference prints the arguments joined by spaces, with no newline.
        #expect(printed == "-device virtio-input-host-pci,evdev=/dev/input/event0,id=vhp-evdev-input0-event0,bus=ep2")
        try d.waitFor("input event0 \"AT Translated Set 2 keyboard\": for vm1 from its start (vmm_args)")
        try d.waitFor("API: vmm_args for vm1: 0 PCI and 1 input device: -device virtio-input-host-pci")
        #expect(!d.log.contains { $0.contains("which is running") })

        // vm1 starts with a device under that id (umockdev's node is no real evdev device for
        // QEMU, so a virtio keyboard stands in for it, on the bus the arguments name).
        let mark = d.mark
        let qemu = try rig.qemu(["-device", "virtio-keyboard-pci,id=vhp-evdev-input0-event0,bus=ep2"])
        try d.waitFor("input event0 \"AT Translated Set 2 keyboard\": found in VM vm1 as vhp-evdev-input0-event0", from: mark)
        #expect(!d.log[mark...].contains { $0.contains("device_add") })
        #expect(try qemu.peripheralIds().contains("vhp-evdev-input0-event0"))

        // Unplugged from the host: the daemon removes it from the VM (this paused QEMU has no
        // guest to release it, so the device_del is what is seen here; the lab sees it go).
        let unplug = d.mark
        rig.tb.unplug("/sys/devices/platform/i8042/serio0/input/input0/event0")
        try d.waitFor(#"{"execute":"device_del","arguments":{"id":"vhp-evdev-input0-event0"}"#, from: unplug)
        #expect(!d.log[mark...].contains { $0.contains("device_add") })
    }

    @Test("a VM holds the id of an input device that left, whose event node the keyboard has now: not taken for the keyboard, removed as stale")
    func evdevNodeReused() async throws {
        let rig = try await VMMArgsRig()
        try rig.tb.add(file: fixtures + "/ps2-keyboard.umockdev") // input0, event0
        // input3 had event0 before it (the kernel gives a freed event node out again).
        let qemu = try rig.qemu(["-device", "virtio-keyboard-pci,id=vhp-evdev-input3-event0,bus=ep2"])
        let d = try rig.daemon()
        // (Asked, not waited for: this paused QEMU's guest never lets go, and the start is not held up.)
        try d.waitFor(#"{"execute":"device_del","arguments":{"id":"vhp-evdev-input3-event0"}"#)
        #expect(!d.log.contains { $0.contains("cannot remove vhp-evdev-input3-event0") }, "\(d.log)")
        #expect(!d.log.contains { $0.contains("found in VM vm1 as vhp-evdev-input3-event0") }, "\(d.log)")
        #expect(DeviceIds.evdev(InputDevice(sysName: "event0", sysPath: "/devices/platform/i8042/serio0/input/input0/event0", devnode: "/dev/input/event0"))
                == "vhp-evdev-input0-event0")
        withExtendedLifetime(qemu) {}
    }

    @Test("an id of the form before inputM (vhp-evdev-event0, an earlier version's): found as the keyboard's, not removed")
    func evdevIdOfEarlierVersion() async throws {
        let rig = try await VMMArgsRig()
        try rig.tb.add(file: fixtures + "/ps2-keyboard.umockdev")
        let qemu = try rig.qemu(["-device", "virtio-keyboard-pci,id=vhp-evdev-event0,bus=ep2"])
        let d = try rig.daemon()
        try d.waitForIdle(from: try d.waitFor("input event0 \"AT Translated Set 2 keyboard\": found in VM vm1 as vhp-evdev-event0"))
        #expect(!d.log.contains { $0.contains("device_del") || $0.contains("device_add") }, "\(d.log)")
        withExtendedLifetime(qemu) {}
    }

    @Test("a running VM gets the arguments with a warning; unknown VM and require_pci without PCI fail; --json prints the list")
    func runningAndFailures() async throws {
        let rig = try await VMMArgsRig()
        try rig.tb.add(file: fixtures + "/ps2-keyboard.umockdev")
        let qemu = try rig.qemu()
        let d = try rig.daemon()
        let json = try rig.vmmArgs(["--vm", "vm1", "--json"])
        #expect(json.status == 0, "\(json.stderr)")
        #expect(json.stdout == #"["-device","virtio-input-host-pci,evdev=/dev/input/event0,id=vhp-evdev-input0-event0"]"# + "\n")
        try d.waitFor("API: vmm_args for VM vm1, which is running: its devices are hot-plugged into it")
        _ = qemu

        let unknown = try rig.vmmArgs(["--vm", "nope", "--timeout", "0"])
        #expect(unknown.status == 1)
        #expect(unknown.stdout == "")
        #expect(unknown.stderr == "vhotplug: vmm_args: no VM named \"nope\" (configured: \"vm1\", \"vm2\")\n")

        let noPCI = try rig.vmmArgs(["--vm", "vm2", "--require-pci"])
        #expect(noPCI.status == 1)
        #expect(noPCI.stderr == "vhotplug: no PCI device for VM vm2\n")
        let nothing = try rig.vmmArgs(["--vm", "vm2", "--qemu-bus-prefix", "rp"])
        #expect(nothing.status == 0 && nothing.stdout == "")

        let raw = try APIClient(path: rig.socket)
        let r = try raw.request(#"{"action": "vmm_args", "vm": "vm1", "qemu_bus_prefix": "ep,multifunction=on"}"#)
        #expect(r["result"] as? String == "failed")
        #expect((r["error"] as? String)?.hasPrefix(#""qemu_bus_prefix": expected a QEMU device id prefix"#) == true)
    }

    @Test("the GPU moved its IOMMU group to vfio-pci for vm1 and leaves the host: its audio function takes over the record and goes back to snd_hda_intel")
    func groupRecordHandedOver() async throws {
        let rig = try await VMMArgsRig(pci: true)
        let kernel = try rig.gpuWithPlayedKernel()
        defer { kernel.stop() }
        let tb = rig.tb
        let gpu = "0000:01:00.0", audio = "0000:01:00.1"
        let d = try rig.daemon()
        // The launcher asks for vm1's arguments: the GPU's group goes to vfio-pci, the audio function with it.
        let r = try rig.vmmArgs(["--vm", "vm1", "--require-pci"])
        #expect(r.status == 0, "\(r); kernel: \(kernel.log)")
        #expect(r.stdout.contains("host=\(gpu)"))
        #expect(rig.driver(gpu) == "vfio-pci" && rig.driver(audio) == "vfio-pci", "kernel: \(kernel.log)")
        func records() -> [String] { (try? FileManager.default.contentsOfDirectory(atPath: tb.root + "/vhotplug-vfio").sorted()) ?? [] }
        #expect(records() == ["\(gpu).json"], "kept in the testbed's folder (VHOTPLUG_VFIO_RECORDS)")
        // `pci list` shows the driver each is on now.
        let listed = try run([Repository.vhotplug, "pci", "list", "--json", "--path", rig.socket])
        let items = try JSONSerialization.jsonObject(with: Data(listed.stdout.utf8)) as? [[String: Any]] ?? []
        #expect(items.map { $0["driver"] as? String } == ["vfio-pci", "vfio-pci"], "\(listed)")
        // The GPU leaves before the VM starts. Only its record says where the audio function was.
        let mark = d.mark
        tb.unplug("/sys/devices/pci0000:00/0000:00:01.0/\(gpu)")
        try d.waitFor("pci \(gpu) 10de:1f06: left the host; pci \(audio) 10de:10f9 keeps the record of IOMMU group 2", from: mark)
        try d.waitFor("pci \(audio) 10de:10f9: back on its host driver (\(audio) -> snd_hda_intel)", from: mark)
        #expect(rig.driver(audio) == "snd_hda_intel", "kernel: \(kernel.log)")
        let override = (try? String(contentsOfFile: tb.sysRoot + "/bus/pci/devices/\(audio)/driver_override", encoding: .utf8)) ?? ""
        #expect(!override.contains("vfio-pci"))
        #expect(records() == [], "the record goes with the give-back")
    }

    @Test("a VM started with its PCI device (vmm_args) whose QMP does not answer in time: the device stays on vfio-pci, taken as attached until the VM says")
    func silentVMKeepsVFIO() async throws {
        let rig = try await VMMArgsRig(pci: true)
        let kernel = try rig.gpuWithPlayedKernel()
        defer { kernel.stop() }
        let gpu = "0000:01:00.0"
        let d = try DaemonProcess(arguments: ["-c", rig.config, "-d"], testbed: rig.tb, environment: ["VHOTPLUG_QMP_TIMEOUT": "0.3"])
        try d.waitFor("; listening (")
        #expect(try rig.vmmArgs(["--vm", "vm1", "--require-pci"]).status == 0)
        // The VM starts with the GPU on its command line, and its QMP says nothing yet (QEMU pins a
        // large guest's memory for vfio before its monitor answers): the GPU may be open in QEMU.
        let vm = try FakeQMPServer(.silent, path: rig.qmpPath)
        try d.waitFor("pci \(gpu) 10de:1f06: attach to vm1: VM vm1: no answer to ")
        try d.waitFor("; taken as attached, asking vm1 again in ")
        #expect(rig.driver(gpu) == "vfio-pci", "kernel: \(kernel.log)")
        #expect(!d.log.contains { $0.contains("back on its host driver") || $0.contains("attach to vm1 failed") }, "\(d.log)")
        withExtendedLifetime(vm) {}
    }

    @Test("the GPU to vm1 and its audio function (one IOMMU group) to vm2 at the same moment: the audio function waits while the GPU's attach is on its way, and goes once the GPU has failed to get there (before, both went, and vm2 refused its device for good)")
    func groupMatesToTwoVMs() async throws {
        let rig = try await VMMArgsRig(pci: true)
        let gpu = "pci 0000:01:00.0 10de:1f06", audio = "pci 0000:01:00.1 10de:10f9"
        let config = try String(contentsOfFile: rig.config, encoding: .utf8)
        try config.replacingOccurrences(
            of: #""pciPassthrough": [{"targetVm": "vm1", "allow": [{"vendorId": "10de", "deviceId": "1f06"}]}],"#,
            with: #""pciPassthrough": [{"targetVm": "vm1", "allow": [{"vendorId": "10de", "deviceId": "1f06"}]}, "#
                + #"{"targetVm": "vm2", "allow": [{"address": "0000:01:00.1"}]}],"#)
            .write(toFile: rig.config, atomically: true, encoding: .utf8)
        let vm1 = try rig.qemu()
        let vm2 = try QEMUInstance(name: "vm2", testbed: rig.tb, extraArgs: ["-device", "pcie-root-port,id=rp1,chassis=1"],
                                   directory: rig.dir)
        let d = try DaemonProcess(arguments: ["-c", rig.config, "-d"], testbed: rig.tb,
                                  environment: ["VHOTPLUG_QMP_TIMEOUT": "2", "VHOTPLUG_PCI_ATTACH_TIMEOUT": "1"])
        try d.waitFor("; listening (")
        // vm1 does not answer: the GPU's attach stays on its way there for the QMP deadline.
        try vm1.pause()
        defer { kill(vm1.pid, SIGCONT) }
        let kernel = try rig.gpuWithPlayedKernel(probed: true)
        defer { kernel.stop() }
        try d.waitFor("\(audio): waits for \(gpu), on its way to vm1, to get there and leave or to fail (one IOMMU group) before it goes to vm2")
        try d.waitFor("\(gpu): attach to vm1: VM vm1: no answer to ")
        #expect(!d.log.contains { $0.contains("qmp vm2 -> ") && $0.contains("device_add") }, "\(d.log)")
        // vm1 answers: it has no GPU (no device_add reached it), and no root port for one. The GPU
        // is not there, and the audio function goes to vm2 (whose QEMU refuses it: no real VFIO here).
        let mark = d.mark
        kill(vm1.pid, SIGCONT)
        try d.waitFor("\(audio): attach to vm2 failed: ", from: mark)
        #expect(d.log[mark...].contains { $0.contains("qmp vm2 -> ") && $0.contains("device_add") }, "\(d.log[mark...])")
        withExtendedLifetime(vm2) {}
    }

    @Test("the VFIO rebind's sysfs stores run off the event loop: while the kernel is inside the GPU driver's unbind (held here), a keyboard plugged meanwhile is sent to vm1; then the rebind goes on",
          .timeLimit(.minutes(1)))
    func rebindOffLoop() async throws {
        let rig = try await VMMArgsRig(pci: true)
        let qemu = try rig.qemu()
        let held = try rig.rebindHeldInUnbind()
        defer { held.end() }
        let (d, kernel, gate) = (held.daemon, held.kernel, held.gate)
        // The loop goes on: the keyboard's event is handled and its device_add goes to vm1.
        try rig.tb.add(file: fixtures + "/ps2-keyboard.umockdev")
        try d.waitFor(#""driver":"virtio-input-host-pci","evdev":"/dev/input/event0","id":"vhp-evdev-input0-event0""#)
        #expect(rig.driver("0000:01:00.0") == "nouveau")
        // The store ends: the group reaches vfio-pci (vm1 then has no root port for it: they are kept for input devices).
        try FileManager.default.removeItem(atPath: gate)
        try kernel.waitFor("bind 0000:01:00.0 to vfio-pci")
        try d.waitFor("pci 0000:01:00.0 10de:1f06: on vfio-pci (IOMMU group 2, 2 devices)")
        withExtendedLifetime(qemu) {}
    }

    @Test("SIGTERM while the kernel does not end a VFIO rebind's sysfs store (held here): the daemon waits for it a bounded time, then stops all the same",
          .timeLimit(.minutes(1)))
    func stopDuringEndlessStore() async throws {
        let rig = try await VMMArgsRig(pci: true)
        let qemu = try rig.qemu()
        let held = try rig.rebindHeldInUnbind(environment: ["VHOTPLUG_STOP_WAIT": "0.5"])
        defer { held.end() }
        let d = held.daemon
        let mark = d.mark
        d.signal(SIGTERM)
        // Before, the stop waited for the store as long as it lasted (systemd killed the daemon
        // after 10 s, before it gave the host's USB authorization back).
        try d.waitFor("vhotplug: a VFIO bind or give-back still runs after 0.5 s (the kernel has not ended its sysfs store); stopping without it", from: mark)
        #expect(d.process.wait() == 0)
        #expect(rig.driver("0000:01:00.0") == "nouveau")
        withExtendedLifetime(qemu) {}
    }

    @Test("a GPU taken as attached to a silent vm1, whose IOMMU group a reload puts in conflict: when vm1's socket goes, the group goes back to its host drivers")
    func conflictFreedWhenVMGoes() async throws {
        let rig = try await VMMArgsRig(pci: true)
        let kernel = try rig.gpuWithPlayedKernel()
        defer { kernel.stop() }
        let gpu = "0000:01:00.0", audio = "0000:01:00.1"
        let d = try DaemonProcess(arguments: ["-c", rig.config, "-d"], testbed: rig.tb, environment: ["VHOTPLUG_QMP_TIMEOUT": "0.3"])
        try d.waitFor("; listening (")
        #expect(try rig.vmmArgs(["--vm", "vm1", "--require-pci"]).status == 0)
        var vm: FakeQMPServer? = try FakeQMPServer(.silent, path: rig.qmpPath)
        try d.waitFor("; taken as attached, asking vm1 again in ")
        // The GPU's rule now takes its whole group, and another sends the audio function to vm2.
        let config = try String(contentsOfFile: rig.config, encoding: .utf8)
        try config.replacingOccurrences(
            of: #""pciPassthrough": [{"targetVm": "vm1", "allow": [{"vendorId": "10de", "deviceId": "1f06"}]}],"#,
            with: #""pciPassthrough": [{"targetVm": "vm1", "pciIommuAddAll": true, "allow": [{"vendorId": "10de", "deviceId": "1f06"}]}, "#
                + #"{"targetVm": "vm2", "allow": [{"address": "\#(audio)"}]}],"#)
            .write(toFile: rig.config, atomically: true, encoding: .utf8)
        var mark = d.mark
        d.signal(SIGHUP)
        try d.waitFor("pciIommuAddAll: IOMMU group 2: ", from: mark)
        // The group leaves vm1; vm1 does not answer: it may still have the GPU, which stays on vfio-pci.
        try d.waitFor("pci \(gpu) 10de:1f06: detach from vm1 failed: ", from: mark)
        #expect(rig.driver(gpu) == "vfio-pci", "kernel: \(kernel.log)")
        // vm1 stops (its socket goes): nothing holds the group any more.
        mark = d.mark
        vm = nil
        try d.waitFor("VM vm1: socket removed", from: mark)
        try d.waitFor("pci \(gpu) 10de:1f06: back on its host driver", from: mark)
        #expect(rig.driver(gpu) == "nouveau" && rig.driver(audio) == "snd_hda_intel", "kernel: \(kernel.log)")
        withExtendedLifetime(vm) {}
    }

    @Test("a give-back that did not finish (the audio function's driver refused it): the next vmm_args binds the GPU again")
    func rebindAfterFailedGiveBack() async throws {
        let rig = try await VMMArgsRig(pci: true)
        let kernel = try rig.gpuWithPlayedKernel(refusals: .init(bind: ["0000:01:00.1": "snd_hda_intel"]))
        defer { kernel.stop() }
        let gpu = "0000:01:00.0"
        let d = try rig.daemon()
        #expect(try rig.vmmArgs(["--vm", "vm1", "--require-pci"]).status == 0)
        #expect(rig.driver(gpu) == "vfio-pci")
        // No rule takes the GPU any more: the group goes back, the GPU to nouveau, the audio function nowhere.
        let withRule = try String(contentsOfFile: rig.config, encoding: .utf8)
        try withRule.replacingOccurrences(of: #""pciPassthrough": [{"targetVm": "vm1", "allow": [{"vendorId": "10de", "deviceId": "1f06"}]}],"#, with: "")
            .write(toFile: rig.config, atomically: true, encoding: .utf8)
        var mark = d.mark
        d.signal(SIGHUP)
        try d.waitFor("pci \(gpu) 10de:1f06: cannot give the device back to its driver: ", from: mark, timeout: 30)
        #expect(rig.driver(gpu) == "nouveau", "kernel: \(kernel.log)")
        // The rule again, and the launcher asks again: the GPU must be on vfio-pci for the VM's start.
        try withRule.write(toFile: rig.config, atomically: true, encoding: .utf8)
        mark = d.mark
        d.signal(SIGHUP)
        try d.waitFor("configuration reloaded", from: mark)
        let r = try rig.vmmArgs(["--vm", "vm1", "--require-pci"])
        #expect(r.status == 0, "\(r)")
        #expect(rig.driver(gpu) == "vfio-pci", "kernel: \(kernel.log)")
        try d.waitFor("pci \(gpu) 10de:1f06: on vfio-pci for the start of vm1", from: mark)
    }

    @Test("a start after a bind cut short (the GPU back on nouveau, its audio function still on vfio-pci): the audio function takes the GPU's record and goes back to snd_hda_intel; also when it has a record of its own (made while the group was on vfio-pci), read after the GPU's",
          arguments: [false, true])
    func bindCutShortAtStart(audioHasItsOwn: Bool) async throws {
        let rig = try await VMMArgsRig()
        let kernel = try rig.gpuWithPlayedKernel()
        defer { kernel.stop() }
        let tb = rig.tb
        let gpu = "0000:01:00.0", audio = "0000:01:00.1"
        // What a daemon killed in the middle of a bind left: the audio function moved, its record written.
        try BindRecordStore(directory: tb.root + "/vhotplug-vfio").save(BindRecord(
            device: gpu, group: 2,
            members: [.init(address: gpu, originalDriver: "nouveau"), .init(address: audio, originalDriver: "snd_hda_intel")],
            groupNode: "/dev/vfio/2"))
        if audioHasItsOwn {
            // Before, it was put back over the merged record: nothing to give back, the audio function stayed on vfio-pci.
            try BindRecordStore(directory: tb.root + "/vhotplug-vfio").save(BindRecord(
                device: audio, group: 2,
                members: [.init(address: gpu, originalDriver: "vfio-pci", wasOnVFIO: true),
                          .init(address: audio, originalDriver: "vfio-pci", wasOnVFIO: true)],
                groupNode: "/dev/vfio/2"))
        }
        try rig.moveToVFIO(audio, from: "snd_hda_intel", kernel)
        let d = try rig.daemon()
        try d.waitFor("pci \(gpu): its VFIO record goes to pci \(audio) 10de:10f9, still on vfio-pci")
        try d.waitFor("pci \(audio) 10de:10f9: back on its host driver (\(audio) -> snd_hda_intel)")
        #expect(rig.driver(audio) == "snd_hda_intel" && rig.driver(gpu) == "nouveau", "kernel: \(kernel.log)")
    }

    @Test("a start with the GPU on vfio-pci from an earlier run (its record kept) that the user detached, or moved to vm2 (the state file): it goes back to nouveau, or is for vm2, not for the rule's first VM",
          arguments: [false, true])
    func adoptedRecordKeepsUserChoice(chosenVm2: Bool) async throws {
        let rig = try await VMMArgsRig()
        let kernel = try rig.gpuWithPlayedKernel()
        defer { kernel.stop() }
        let tb = rig.tb
        let gpu = "0000:01:00.0", audio = "0000:01:00.1"
        let state = rig.dir + "/state.json"
        try (chosenVm2 ? #"{"version": 1, "chosen_vms": {"pci:0000:01:00.0": "vm2"}}"# : #"{"version": 1, "disconnected": ["pci:0000:01:00.0"]}"#)
            .write(toFile: state, atomically: true, encoding: .utf8)
        try """
            {"pciPassthrough": [{"allowedVms": ["vm1", "vm2"], "allow": [{"vendorId": "10de", "deviceId": "1f06"}]}],
             "vms": [{"name": "vm1", "type": "qemu", "socket": "\(rig.qmpPath)"}, {"name": "vm2", "type": "qemu", "socket": "\(rig.dir)/vm2.qmp"}],
             "general": {"api": {"unixSocket": "\(rig.socket)"}, "statePath": "\(state)"}}
            """.write(toFile: rig.config, atomically: true, encoding: .utf8)
        // What an earlier run left: the group on vfio-pci, the GPU's record.
        try BindRecordStore(directory: tb.root + "/vhotplug-vfio").save(BindRecord(
            device: gpu, group: 2,
            members: [.init(address: gpu, originalDriver: "nouveau"), .init(address: audio, originalDriver: "snd_hda_intel")],
            groupNode: "/dev/vfio/2"))
        for (address, driver) in [(gpu, "nouveau"), (audio, "snd_hda_intel")] { try rig.moveToVFIO(address, from: driver, kernel) }
        let d = try rig.daemon()
        if chosenVm2 {
            // Before, the rule's first VM: a GPU the user had put in vm2 was moved to vm1 by a restart.
            try d.waitFor("pci \(gpu) 10de:1f06: on vfio-pci from an earlier run (\(gpu) from nouveau, \(audio) from snd_hda_intel); still for vm2")
            try d.waitFor("pci \(gpu) 10de:1f06: VM vm2 is not running; waiting for it")
        } else {
            // Before, it was for vm1 again, and stayed on vfio-pci waiting for it.
            try d.waitFor("pci \(gpu) 10de:1f06: on vfio-pci from an earlier run (\(gpu) from nouveau, \(audio) from snd_hda_intel); no VM takes it now")
            try d.waitFor("pci \(gpu) 10de:1f06: back on its host driver")
            #expect(rig.driver(gpu) == "nouveau" && rig.driver(audio) == "snd_hda_intel", "kernel: \(kernel.log)")
        }
        #expect(!d.log.contains { $0.contains("still for vm1") || $0.contains("vm1 is not running; waiting") }, "\(d.log)")
    }

    @Test("a start with the GPU on vfio-pci from an earlier run, for no VM now, while vm1 does not answer: it stays on vfio-pci until vm1 has been listed, then goes back to nouveau")
    func adoptedRecordWaitsForListing() async throws {
        let rig = try await VMMArgsRig()
        let kernel = try rig.gpuWithPlayedKernel()
        defer { kernel.stop() }
        let gpu = "0000:01:00.0", audio = "0000:01:00.1"
        try """
            {"pciPassthrough": [{"targetVm": "vm1", "allow": [{"vendorId": "10de", "deviceId": "9999"}]}],
             "vms": [{"name": "vm1", "type": "qemu", "socket": "\(rig.qmpPath)"}, {"name": "vm2", "type": "qemu", "socket": "\(rig.dir)/vm2.qmp"}],
             "general": {"api": {"unixSocket": "\(rig.socket)"}, "persistency": false}}
            """.write(toFile: rig.config, atomically: true, encoding: .utf8)
        try BindRecordStore(directory: rig.tb.root + "/vhotplug-vfio").save(BindRecord(
            device: gpu, group: 2,
            members: [.init(address: gpu, originalDriver: "nouveau"), .init(address: audio, originalDriver: "snd_hda_intel")],
            groupNode: "/dev/vfio/2"))
        for (address, driver) in [(gpu, "nouveau"), (audio, "snd_hda_intel")] { try rig.moveToVFIO(address, from: driver, kernel) }
        // vm1 runs (an earlier run may have given it the GPU) and does not answer.
        let qemu = try rig.qemu()
        try qemu.pause()
        var stopped = true
        defer { if stopped { kill(qemu.pid, SIGCONT) } }
        let d = try DaemonProcess(arguments: ["-c", rig.config, "-d"], testbed: rig.tb, environment: ["VHOTPLUG_QMP_TIMEOUT": "0.5"])
        try d.waitFor("pci \(gpu) 10de:1f06: on vfio-pci from an earlier run (\(gpu) from nouveau, \(audio) from snd_hda_intel); no VM takes it now")
        // Before, it went back to nouveau at once: the kernel's unbind waits for the VM that holds it.
        try d.waitFor("pci \(gpu) 10de:1f06: stays on vfio-pci until vm1 can be listed: an earlier run left it there, and that VM may hold it")
        #expect(rig.driver(gpu) == "vfio-pci" && rig.driver(audio) == "vfio-pci", "kernel: \(kernel.log)")
        kill(qemu.pid, SIGCONT)
        stopped = false
        let listed = try d.waitFor("VM vm1: its devices listed")
        try d.waitFor("pci \(gpu) 10de:1f06: back on its host driver", from: listed)
        #expect(rig.driver(gpu) == "nouveau" && rig.driver(audio) == "snd_hda_intel", "kernel: \(kernel.log)")
    }

    @Test("pciIommuAddAll: the GPU and its audio function both fail to attach to vm1 (QEMU refuses them): the group goes back to its host drivers, none of it stays on vfio-pci")
    func groupBackWhenAllFail() async throws {
        let rig = try await VMMArgsRig()
        let kernel = try rig.gpuWithPlayedKernel()
        defer { kernel.stop() }
        let gpu = "0000:01:00.0", audio = "0000:01:00.1"
        try """
            {"pciPassthrough": [{"targetVm": "vm1", "pciIommuAddAll": true, "allow": [{"vendorId": "10de", "deviceId": "1f06"}]}],
             "vms": [{"name": "vm1", "type": "qemu", "socket": "\(rig.qmpPath)"}],
             "general": {"api": {"unixSocket": "\(rig.socket)"}, "persistency": false}}
            """.write(toFile: rig.config, atomically: true, encoding: .utf8)
        let qemu = try rig.qemu()
        let d = try DaemonProcess(arguments: ["-c", rig.config, "-d", "-a"], testbed: rig.tb)
        // The testbed's devices are no real ones for QEMU: each device_add vfio-pci fails.
        try d.waitFor("pci \(gpu) 10de:1f06: attach to vm1 failed: ")
        try d.waitFor("pci \(audio) 10de:10f9: attach to vm1 failed: ")
        // Before, the GPU (failed first, while its audio function was still going to vm1) stayed on vfio-pci for good.
        try d.waitFor("back on its host driver (\(gpu) -> nouveau, \(audio) -> snd_hda_intel)")
        #expect(rig.driver(gpu) == "nouveau" && rig.driver(audio) == "snd_hda_intel", "kernel: \(kernel.log)")
        #expect(try qemu.attachedIds() == [])
    }

    @Test("a PCI device for the VM on a host without vfio-pci: vmm_args fails saying so, the device stays on its driver")
    func pciWithoutVFIO() async throws {
        let rig = try await VMMArgsRig(pci: true)
        try rig.tb.add(file: fixtures + "/pci-gpu-audio.umockdev")
        let d = try rig.daemon()
        let r = try rig.vmmArgs(["--vm", "vm1", "--require-pci"])
        #expect(r.status == 1)
        #expect(r.stderr.hasPrefix("vhotplug: vmm_args for vm1: pci 0000:01:00.0 10de:1f06 cannot go to vfio-pci: "), "\(r.stderr)")
        #expect(r.stderr.contains("modprobe vfio-pci"))
        try d.waitFor("pci 0000:01:00.0 10de:1f06: cannot go to vfio-pci for vm1")
        let gpu = rig.tb.sysRoot + "/devices/pci0000:00/0000:00:01.0/0000:01:00.0"
        let override = (try? String(contentsOfFile: gpu + "/driver_override", encoding: .utf8)) ?? ""
        #expect(!override.contains("vfio-pci"))
    }
}
