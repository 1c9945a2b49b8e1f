import JSONKit
import Foundation
import Testing
@testable import HotplugConfig

@Suite("The seed sample and the full example")
struct SampleConfigurationTests {
    @Test("the seed README's sample (data/vhotplug.conf) loads as written, trailing commas included")
    func seedSampleLoadsExactly() throws {
        let path = dataFile("vhotplug.conf")
        let text = try String(contentsOfFile: path, encoding: .utf8)
        // The sample really has trailing commas: this is what must be tolerated.
        #expect(text.contains("\"description\": \"HID Mouse\",\n                },"))
        #expect(text.contains("\"description\": \"Ethernet devices\",\n                },"))

        let config = try ConfigurationLoader.load(path: path)

        #expect(config.usbPassthrough.count == 1)
        let usb = try #require(config.usbPassthrough.first)
        #expect(usb.description == "Devices for VM1")
        #expect(usb.targetVm == "vm1")
        #expect(usb.disable == false)
        #expect(usb.location == HotplugConfig.SourceLocation(line: 3, column: 9, path: "$.usbPassthrough[0]"))
        #expect(usb.allow == [
            USBRule(interfaceClass: 3, interfaceProtocol: 2, description: "HID Mouse",
                    location: .init(line: 7, column: 17, path: "$.usbPassthrough[0].allow[0]")),
            USBRule(productName: try NamePattern(".*ethernet.*"), description: "Ethernet devices",
                    location: .init(line: 12, column: 17, path: "$.usbPassthrough[0].allow[1]")),
            USBRule(vendorId: 0x067b, productId: 0x23a3, description: "Prolific USB-to-Serial Bridge", disable: true,
                    location: .init(line: 16, column: 17, path: "$.usbPassthrough[0].allow[2]")),
        ])
        #expect(usb.deny == [
            USBRule(vendorId: 0x046d, productId: 0xc52b, description: "Logitech, Inc. Unifying Receiver",
                    location: .init(line: 24, column: 17, path: "$.usbPassthrough[0].deny[0]")),
            USBRule(vendorId: 0x0b95, productId: 0x1790, description: "AX88179 Gigabit Ethernet",
                    location: .init(line: 29, column: 17, path: "$.usbPassthrough[0].deny[1]")),
        ])
        // Field by field for the entry with a pattern (NamePattern equality compares sources only).
        let ethernet = usb.allow[1]
        #expect(ethernet.productName?.source == ".*ethernet.*")
        #expect(ethernet.productName?.matches("ASIX USB Ethernet Adapter") == true)
        #expect(ethernet.vendorName == nil && ethernet.vendorId == nil && ethernet.productId == nil)
        #expect(ethernet.bus == nil && ethernet.port == nil)

        #expect(config.pciPassthrough == [
            PCIRuleSet(description: "Devices for VM1", targetVm: "vm1", allow: [
                PCIRule(address: "0000:00:14.3", description: "Intel WiFi card",
                        location: .init(line: 42, column: 17, path: "$.pciPassthrough[0].allow[0]")),
                PCIRule(vendorId: 0x8086, deviceId: 0xa7a1, description: "Intel Iris GPU",
                        location: .init(line: 46, column: 17, path: "$.pciPassthrough[0].allow[1]")),
            ], deny: [], disable: false, location: .init(line: 38, column: 9, path: "$.pciPassthrough[0]")),
        ])
        #expect(config.evdevPassthrough == EvdevPassthrough(
            disable: true, pcieBusPrefix: "ep", targetVm: "vm1",
            location: .init(line: 54, column: 25, path: "$.evdevPassthrough")))
        #expect(config.vms == [
            VMDefinition(name: "vm1", type: .qemu, socket: "/tmp/qmp-socket1",
                         location: .init(line: 60, column: 9, path: "$.vms[0]")),
        ])
        #expect(config.vm(named: "vm1")?.type == .qemu)
    }

    @Test("the Fixtures copies are identical to the data/ files")
    func fixturesMatchDataFiles() throws {
        for name in ["vhotplug.conf", "example-full.conf"] {
            let fixtureBytes = try Data(contentsOf: URL(fileURLWithPath: try fixture(name)))
            let dataBytes = try Data(contentsOf: URL(fileURLWithPath: dataFile(name)))
            #expect(fixtureBytes == dataBytes, "Tests/HotplugConfigTests/Fixtures/\(name) differs from data/\(name)")
        }
    }

    @Test("the seed sample loads from the test bundle too")
    func seedFixtureLoads() throws {
        let config = try ConfigurationLoader.load(path: try fixture("vhotplug.conf"))
        #expect(config.usbPassthrough.first?.allow.count == 3)
    }

    @Test("summary of the seed sample")
    func seedSummary() throws {
        let config = try ConfigurationLoader.load(path: dataFile("vhotplug.conf"))
        #expect(config.summary
            == "ok: 1 USB rule set (3 allow, 2 deny entries), 1 PCI rule set (2 allow, 0 deny entries), evdev passthrough disabled, 1 VM (vm1: qemu)")
    }

    @Test("data/example-full.conf loads, with every part in place")
    func exampleFullLoads() throws {
        let config = try ConfigurationLoader.load(path: dataFile("example-full.conf"))
        #expect(config.vms.map(\.name) == ["gui-vm", "net-vm", "audio-vm"])
        #expect(config.vms.map(\.type) == [.qemu, .crosvm, .qemu])
        #expect(config.usbPassthrough.map(\.targetVm) == ["gui-vm", "net-vm", "audio-vm"])
        #expect(config.usbPassthrough.map(\.disable) == [false, false, true])
        let gui = try #require(config.usbPassthrough.first)
        #expect(gui.allow[0].interfaceClass == 3 && gui.allow[0].interfaceSubclass == 1 && gui.allow[0].interfaceProtocol == 2)
        #expect(gui.allow[1].vendorId == 0x067b && gui.allow[1].productId == 0x23a3)
        #expect(gui.allow[2].vendorName?.matches("Logitech, Inc.") == true)
        #expect(gui.allow[2].productName?.matches("USB Keyboard") == true)
        #expect(gui.allow[3].bus == 3 && gui.allow[3].port == 2 && gui.allow[3].disable)
        let net = config.usbPassthrough[1]
        #expect(net.allow[0].deviceClass == 224 && net.allow[0].deviceSubclass == 1 && net.allow[0].deviceProtocol == 1)
        #expect(net.allow[1].productName?.source == ".*ethernet.*")
        let pci = try #require(config.pciPassthrough.first)
        #expect(pci.targetVm == "gui-vm")
        #expect(pci.allow.map(\.address) == ["0000:00:14.3", nil, nil])
        #expect(pci.allow[2].deviceClass == 2 && pci.allow[2].deviceSubclass == 128 && pci.allow[2].deviceProgIf == 0)
        #expect(pci.deny.first?.address == "0000:00:1f.6")
        #expect(pci.options == RuleSetOptions(allowedVms: ["gui-vm", "audio-vm"], tag: "wifi-gpu", pciIommuAddAll: true))
        #expect(gui.options == RuleSetOptions(tag: "input", skipOnSuspend: true))
        #expect(gui.allow[2].removable == ["removable", "unknown"])
        #expect(net.candidateVms == ["net-vm", "gui-vm"])
        #expect(config.general.api.enable && config.general.api.transports == [.unix, .vsock, .tcp])
        #expect(config.general.api.unixSocketMode == 0o660 && config.general.api.allowedCids == [3])
        #expect(config.general.crosvm == "/run/current-system/sw/bin/crosvm")
        #expect(config.evdevPassthrough == EvdevPassthrough(
            disable: false, pcieBusPrefix: "rp", targetVm: "gui-vm", location: config.evdevPassthrough?.location))
        #expect(config.summary
            == "ok: 3 USB rule sets (7 allow, 2 deny entries), 1 PCI rule set (3 allow, 1 deny entries), evdev passthrough to gui-vm, 3 VMs (gui-vm: qemu, net-vm: crosvm, audio-vm: qemu), USB authorization on (2 hostAllow entries)")
        let auth = try #require(config.activeUSBAuthorization)
        #expect(!auth.deauthorizeUnmatched)
        #expect(auth.hostAllow.map(\.vendorId) == [0x046d, nil])
        #expect(auth.hostAllow[1].interfaceClass == 8 && auth.hostAllow[1].bus == 1 && auth.hostAllow[1].port == 4)
    }

    @Test("data/example-full.conf uses every key of the format")
    func exampleFullUsesEveryKey() throws {
        let bytes = Array(try String(contentsOfFile: dataFile("example-full.conf"), encoding: .utf8).utf8)
        var parser = JSONParser(bytes: bytes)
        let root = try parser.parseDocument()
        var usedKeys: [ObjectKind: Set<String>] = [:]
        func collect(_ node: JSONNode, as kind: ObjectKind) {
            guard case .object(let object) = node.value else { return }
            for member in object.members {
                usedKeys[kind, default: []].insert(member.key)
                let children: [JSONNode]
                if case .array(let elements) = member.value.value { children = elements } else { children = [member.value] }
                let childKind: ObjectKind? = switch (kind, member.key) {
                case (.top, "usbPassthrough"): .usbRuleSet
                case (.top, "pciPassthrough"): .pciRuleSet
                case (.top, "evdevPassthrough"): .evdev
                case (.top, "vms"): .vm
                case (.top, "general"): .general
                case (.general, "api"): .api
                case (.top, "usbAuthorization"): .usbAuthorization
                case (.usbAuthorization, "hostAllow"): .usbEntry
                case (.usbRuleSet, "allow"), (.usbRuleSet, "deny"): .usbEntry
                case (.pciRuleSet, "allow"), (.pciRuleSet, "deny"): .pciEntry
                default: nil
                }
                if let childKind { children.forEach { collect($0, as: childKind) } }
            }
        }
        collect(root, as: .top)
        for kind in [ObjectKind.top, .usbRuleSet, .pciRuleSet, .usbEntry, .pciEntry, .evdev, .vm, .general, .api, .usbAuthorization] {
            #expect(usedKeys[kind, default: []] == Set(kind.keys), "keys of \(kind)")
        }
    }

    @Test("an empty object is a valid, empty configuration")
    func emptyObjectIsValid() throws {
        let config = try ConfigurationLoader.parse("{}")
        #expect(config == Configuration())
        #expect(config.summary
            == "ok: 0 USB rule sets (0 allow, 0 deny entries), 0 PCI rule sets (0 allow, 0 deny entries), no evdev passthrough, 0 VMs")
    }

    @Test("the summary counts evdevPassthrough's array form (rule sets), as the README's example")
    func summaryOfEvdevRuleSets() throws {
        let config = try ConfigurationLoader.parse("""
            {"vms": [{"name": "gui-vm", "type": "qemu", "socket": "/s"}],
             "evdevPassthrough": [
                {"targetVm": "gui-vm", "pcieBusPrefix": "rp",
                 "allow": [{"kind": "touchpad"}, {"pathTag": "^platform-thinkpad_acpi$"}, {"kind": "keyboard"}],
                 "deny": [{"name": "^Power Button$"}]}
             ]}
            """)
        #expect(config.summary
            == "ok: 0 USB rule sets (0 allow, 0 deny entries), 0 PCI rule sets (0 allow, 0 deny entries), 1 evdev rule set (3 allow, 1 deny entries), 1 VM (gui-vm: qemu)")
    }

    @Test("the summary stays on one line even for odd VM names")
    func summaryStaysOnOneLine() throws {
        let config = try ConfigurationLoader.parse(#"{"vms": [{"name": "a\nb", "type": "crosvm", "socket": "/s"}]}"#)
        #expect(!config.summary.contains("\n"))
        #expect(config.summary.hasSuffix(#"1 VM ("a\nb": crosvm)"#))
    }
}
