import Foundation
import Testing
import VHotplugTestSupport

/// Runs the built `vhotplug` under `umockdev-run` with a fixture: the process sees
/// the fake devices as /sys, and libusb and libpci see them too.
func inspectUnderUmockdev(_ fixture: String, _ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
    let umockdevRun = try requireProgram("umockdev-run", package: "umockdev")
    #expect(FileManager.default.isExecutableFile(atPath: Repository.vhotplug), "build vhotplug first (swift build)")
    return try run([umockdevRun, "-d", "\(fixtureDir)/\(fixture).umockdev", "--", Repository.vhotplug] + args)
}

let fixtureDir = Repository.root + "/Tests/HostDevicesTests/Fixtures"
let fixtureNames = ["logitech-unifying", "usb-ethernet", "usb-hub", "webcam", "bluetooth", "usb-disk",
                    "pci-wifi", "pci-gpu-audio", "ps2-keyboard", "i2c-touchpad", "pci-nvme-boot"]

/// JSON text with sorted keys, so that key order does not matter.
func canonical(_ value: Any) -> String {
    guard let data = try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .fragmentsAllowed]) else {
        return "\(value)"
    }
    return String(decoding: data, as: UTF8.self)
}

func records(_ json: String) throws -> [String: [String: Any]] {
    let list = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [[String: Any]])
    var out: [String: [String: Any]] = [:]
    for r in list { out["\(r["subsystem"]!)/\(r["sysName"]!)"] = r }
    return out
}

@Suite("vhotplug inspect, end to end under umockdev-run", .serialized)
struct InspectCommandTests {
    @Test("inspect --json reports every attribute of the fixture's devices (libusb, libpci, sysfs)", arguments: fixtureNames)
    func json(_ fixture: String) throws {
        let r = try inspectUnderUmockdev(fixture, ["inspect", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let ours = try records(r.stdout)
        let data = try Data(contentsOf: URL(fileURLWithPath: "\(fixtureDir)/\(fixture).expected.json"))
        let expected = try #require(try JSONSerialization.jsonObject(with: data) as? [[String: Any]])
        #expect(Set(ours.keys) == Set(expected.map { "\($0["subsystem"]!)/\($0["sysName"]!)" }))
        for e in expected {
            let key = "\(e["subsystem"]!)/\(e["sysName"]!)"
            let attributes = try #require((ours[key]?["attributes"]) as? [String: Any], "\(key) missing")
            for (name, value) in e["attributes"] as? [String: Any] ?? [:] {
                #expect(canonical(attributes[name] ?? "(absent)") == canonical(value), "\(fixture) \(key) \(name)")
            }
            #expect(ours[key]?["decision"] is NSNull)
        }
    }

    @Test("names come from usb.ids and libpci")
    func names() throws {
        let usb = try records(try inspectUnderUmockdev("logitech-unifying", ["inspect", "--json", "--usb"]).stdout)
        let receiver = try #require(usb["usb/1-2"]?["attributes"] as? [String: Any])
        #expect((receiver["vendorName"] as? String)?.contains("Logitech") == true)
        #expect((receiver["productName"] as? String)?.contains("Unifying") == true)
        let pci = try records(try inspectUnderUmockdev("pci-wifi", ["inspect", "--json", "--pci"]).stdout)
        let wifi = try #require(pci["pci/0000:00:14.3"]?["attributes"] as? [String: Any])
        #expect((wifi["vendorName"] as? String)?.contains("Intel") == true)
        #expect(wifi["deviceName"] is String)
    }

    @Test("with -c, each device carries the decision: rule set, entry, deny, or why not")
    func decisions() throws {
        let config = scratchPath("inspect") + ".conf"
        try """
            {
              "usbPassthrough": [{
                "description": "Input for the GUI VM", "targetVm": "gui",
                "allow": [{"interfaceClass": 3, "interfaceProtocol": 2, "description": "HID mouse"}],
                "deny": [{"vendorId": "046d", "productId": "c52b", "description": "Unifying stays"}]
              }, {
                "targetVm": "net", "allow": [{"vendorId": "046d", "description": "all Logitech"}]
              }],
              "vms": [{"name": "gui", "type": "qemu", "socket": "/run/gui.sock"},
                      {"name": "net", "type": "crosvm", "socket": "/run/net.sock"}]
            }
            """.write(toFile: config, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: config) }
        let r = try inspectUnderUmockdev("logitech-unifying", ["inspect", "--json", "-c", config])
        #expect(r.status == 0, "\(r.stderr)")
        let all = try records(r.stdout)
        let receiver = try #require(all["usb/1-2"]?["decision"] as? [String: Any])
        #expect(receiver["targetVm"] as? String == "net")       // denied by set 0, taken by set 1
        #expect((receiver["ruleSet"] as? [String: Any])?["index"] as? Int == 1)
        #expect((receiver["entry"] as? [String: Any])?["description"] as? String == "all Logitech")
        #expect(receiver["reason"] as? String == "matched")
        let hub = try #require(all["usb/usb1"]?["decision"] as? [String: Any])
        #expect(hub["targetVm"] is NSNull)
        #expect(hub["reason"] as? String == "hub")
        let keyboard = try #require(all["input/event3"]?["decision"] as? [String: Any])
        #expect(keyboard["reason"] as? String == "usb-input")

        let human = try inspectUnderUmockdev("logitech-unifying", ["inspect", "-c", config, "1-2"])
        #expect(human.status == 0)
        #expect(human.stdout.contains("ID 046d:c52b"))
        #expect(human.stdout.contains("interface 1: 03/01/02 driver usbhid"))
        #expect(human.stdout.contains("-> net (rule set 1, allow[0] \"all Logitech\")"))
        #expect(!human.stdout.contains("usb1"))
    }

    @Test("human output reads like lspci -nnk")
    func humanPCI() throws {
        let r = try inspectUnderUmockdev("pci-gpu-audio", ["inspect", "--pci"])
        #expect(r.status == 0)
        #expect(r.stdout.contains("0000:01:00.0 class [0300]"))
        #expect(r.stdout.contains("Kernel driver in use: nouveau"))
        #expect(r.stdout.contains("IOMMU group"))
        #expect(r.stdout.contains("with 0000:01:00.1"))
    }

    @Test("with -c, pciIommuAddAll: the GPU's group mate (its audio function, no rule of its own) goes with it, even shown alone; a rule for the mate to another VM: none of the group")
    func iommuGroupPlan() throws {
        let config = scratchPath("inspect-group") + ".conf"
        func write(audioTo vm: String?) throws {
            let audio = vm.map { #", {"targetVm": "\#($0)", "allow": [{"address": "0000:01:00.1"}]}"# } ?? ""
            try """
                {"pciPassthrough": [{"targetVm": "gui", "pciIommuAddAll": true, "allow": [{"vendorId": "10de", "deviceClass": 3}]}\(audio)],
                 "vms": [{"name": "gui", "type": "qemu", "socket": "/run/gui.sock"}, {"name": "net", "type": "qemu", "socket": "/run/net.sock"}]}
                """.write(toFile: config, atomically: true, encoding: .utf8)
        }
        defer { try? FileManager.default.removeItem(atPath: config) }
        try write(audioTo: nil)
        let r = try inspectUnderUmockdev("pci-gpu-audio", ["inspect", "--json", "--pci", "-c", config])
        #expect(r.status == 0, "\(r.stderr)")
        let all = try records(r.stdout)
        let audio = try #require(all["pci/0000:01:00.1"])
        #expect((audio["decision"] as? [String: Any])?["targetVm"] is NSNull)
        let plan = try #require(audio["iommuGroupPlan"] as? [String: Any], "\(audio)")
        #expect(plan["follows"] as? String == "0000:01:00.0")
        #expect(plan["targetVm"] as? String == "gui")
        let gpu = try #require(all["pci/0000:01:00.0"]?["iommuGroupPlan"] as? [String: Any])
        #expect(gpu["leads"] as? String == "IOMMU group 2 goes with it (pciIommuAddAll): pci 0000:01:00.1")
        #expect(all["pci/0000:00:01.0"]?["iommuGroupPlan"] == nil)       // alone in its group
        // Shown alone, the audio function still follows the GPU.
        let human = try inspectUnderUmockdev("pci-gpu-audio", ["inspect", "-c", config, "01:00.1"])
        #expect(human.status == 0, "\(human.stderr)")
        #expect(human.stdout.contains("-> none: no rule matches"), "\(human.stdout)")
        #expect(human.stdout.contains("-> goes with pci 0000:01:00.0 into gui (its IOMMU group; pciIommuAddAll)"), "\(human.stdout)")
        // The configuration's path joined to -c, as the daemon's command line and argparse take it.
        for joined in ["-c" + config, "-c=" + config] {
            let j = try inspectUnderUmockdev("pci-gpu-audio", ["inspect", joined, "01:00.1"])
            #expect(j.status == 0 && j.stdout == human.stdout, "\(joined): \(j.stderr)")
        }
        // A rule sends the audio function to another VM: the group cannot be in two VMs.
        try write(audioTo: "net")
        let conflict = try inspectUnderUmockdev("pci-gpu-audio", ["inspect", "-c", config, "01:00.0"])
        #expect(conflict.status == 0, "\(conflict.stderr)")
        #expect(conflict.stdout.contains("-> not attached: IOMMU group 2: pci 0000:01:00.0 goes to gui"), "\(conflict.stdout)")
        #expect(conflict.stdout.contains("so none of it is attached"), "\(conflict.stdout)")
    }

    @Test("an unknown device name fails with exit code 1")
    func unknownDevice() throws {
        let r = try inspectUnderUmockdev("usb-hub", ["inspect", "9-9"])
        #expect(r.status == 1)
        #expect(r.stderr.contains("no such device: 9-9"))
    }

    @Test("a named device that cannot be read says why (an event device whose input's name is not UTF-8), not 'no such device'")
    func namedDeviceUnreadable() throws {
        let umockdevRun = try requireProgram("umockdev-run", package: "umockdev")
        let text = try String(contentsOfFile: "\(fixtureDir)/ps2-keyboard.umockdev", encoding: .utf8)
        let broken = text.replacingOccurrences(of: "A: name=AT Translated Set 2 keyboard\\n", with: "H: name=4B6579FF626F6172640A")
        #expect(broken != text)
        let file = scratchPath("inspect-broken") + ".umockdev"
        try broken.write(toFile: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: file) }
        let r = try run([umockdevRun, "-d", file, "--", Repository.vhotplug, "inspect", "event0"])
        #expect(r.status == 1)
        #expect(!r.stderr.contains("no such device"), "\(r.stderr)")
        #expect(r.stderr.contains("cannot read") && r.stderr.contains("input0") && r.stderr.contains("name"), "\(r.stderr)")
    }

    @Test("inspect runs as an ordinary user (as nobody when the tests run as root)")
    func ordinaryUser() throws {
        let umockdevRun = try requireProgram("umockdev-run", package: "umockdev")
        var argv = [umockdevRun, "-d", "\(fixtureDir)/logitech-unifying.umockdev", "--", Repository.vhotplug, "inspect", "--json", "1-2"]
        if getuid() == 0 { argv = [try requireProgram("runuser", package: "util-linux"), "-u", "nobody", "--"] + argv }
        let r = try run(argv)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try records(r.stdout)["usb/1-2"] != nil)
    }

    @Test("--usb, --pci and --input select the kinds")
    func kinds() throws {
        let r = try records(try inspectUnderUmockdev("logitech-unifying", ["inspect", "--json", "--input"]).stdout)
        #expect(!r.isEmpty && r.keys.allSatisfy { $0.hasPrefix("input/") })
    }
}

@Suite("vhotplug check")
struct CheckCommandTests {
    @Test("the seed's sample is valid: one summary line, exit 0")
    func seed() throws {
        let r = try run([Repository.vhotplug, "check", "-c", Repository.root + "/data/vhotplug.conf"])
        #expect(r.status == 0)
        #expect(r.stdout.hasSuffix("ok: 1 USB rule set (3 allow, 2 deny entries), 1 PCI rule set (2 allow, 0 deny entries), evdev passthrough disabled, 1 VM (vm1: qemu)\n"))
    }

    @Test("a bad configuration: every error with file:line:column, exit 2")
    func bad() throws {
        let path = scratchPath("bad") + ".conf"
        try """
            {
              "usbPassthrough": [{"targetVm": "vm2", "allow": [{"vendorID": "046d"}]}],
              "vms": [{"name": "vm1", "type": "qemu", "socket": "/tmp/x"}]
            }
            """.write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let r = try run([Repository.vhotplug, "check", "-c", path])
        #expect(r.status == 2)
        #expect(r.stderr.contains("\(path):2:53: error: unknown key \"vendorID\"; did you mean \"vendorId\"? (at $.usbPassthrough[0].allow[0].vendorID)"))
        #expect(r.stderr.contains("\(path):2:35: error: unknown VM \"vm2\" in targetVm (defined VMs: \"vm1\")"))
        #expect(r.stderr.contains("2 errors in the configuration"))
        #expect(r.stdout.isEmpty)
    }

    @Test("150 errors: the first 100 in file order, then how many more, then the count of all")
    func manyErrors() throws {
        let path = scratchPath("many") + ".conf"
        let names = (0..<150).map { "\"x\($0)\"" }.joined(separator: ", ")
        try #"{"usbPassthrough": [{"allowedVms": [\#(names)], "allow": [{"vendorId": "046d"}]}], "vms": [{"name": "vm1", "type": "qemu", "socket": "/tmp/x"}]}"#
            .write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let r = try run([Repository.vhotplug, "check", "-c", path])
        #expect(r.status == 2)
        let lines = r.stderr.split(separator: "\n").map(String.init)
        #expect(lines.count == 102)
        #expect(lines.prefix(100).allSatisfy { $0.contains(": error: unknown VM \"x") })
        #expect(lines.suffix(2) == ["\(path): 50 more errors not shown", "vhotplug: \(path): 150 errors in the configuration"])
    }

    @Test("the daemon command line rejects a bad configuration with exit 2 too")
    func daemonBadConfig() throws {
        let r = try run([Repository.vhotplug, "-c", "/nonexistent/vhotplug.conf"])
        #expect(r.status == 2)
        #expect(r.stderr.contains("/nonexistent/vhotplug.conf"))
    }

    @Test("--version and -h")
    func version() throws {
        #expect(try run([Repository.vhotplug, "--version"]).stdout == "0.1.0\n")
        let help = try run([Repository.vhotplug, "-h"]).stdout
        #expect(help.contains("-a, --attach-connected/--no-attach-connected"))
        #expect(help.contains("-d, --debug/--no-debug"))
    }
}
