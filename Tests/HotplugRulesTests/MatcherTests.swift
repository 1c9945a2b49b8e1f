import DeviceModel
import HotplugConfig
import HotplugRules
import Testing

/// A composite wireless receiver: keyboard, mouse and vendor HID interfaces.
let receiver = USBDevice(
    sysName: "1-2", sysPath: "/devices/pci0000:00/0000:00:14.0/usb1/1-2", bus: 1, devnum: 5, port: 2, portPath: [2],
    vendorId: 0x046d, productId: 0xc52b, bcdDevice: 0x1203, deviceClass: 0, deviceSubclass: 0, deviceProtocol: 0,
    manufacturer: "Logitech", product: "USB Receiver", vendorName: "Logitech, Inc.", productName: "Unifying Receiver",
    interfaces: [
        USBInterface(interfaceNumber: 0, interfaceClass: 3, interfaceSubclass: 1, interfaceProtocol: 1),
        USBInterface(interfaceNumber: 1, interfaceClass: 3, interfaceSubclass: 1, interfaceProtocol: 2),
        USBInterface(interfaceNumber: 2, interfaceClass: 3, interfaceSubclass: 0, interfaceProtocol: 0),
    ],
    devnode: "/dev/bus/usb/001/005")

/// A Bluetooth adapter: class e0/01/01 at the device level.
let bluetooth = USBDevice(
    sysName: "3-10.4", sysPath: "/devices/pci0000:00/0000:00:14.0/usb3/3-10/3-10.4", bus: 3, devnum: 7, port: 10,
    portPath: [10, 4], vendorId: 0x8087, productId: 0x0026, deviceClass: 0xe0, deviceSubclass: 1, deviceProtocol: 1,
    vendorName: "Intel Corp.", productName: "AX201 Bluetooth",
    interfaces: [USBInterface(interfaceNumber: 0, interfaceClass: 0xe0, interfaceSubclass: 1, interfaceProtocol: 1)],
    devnode: "/dev/bus/usb/003/007")

func config(_ text: String) throws -> Configuration {
    try ConfigurationLoader.parse(text, file: "test.conf")
}

/// One USB rule set for vm1 with the given allow entries (JSON object texts) and deny entries.
func usbConfig(allow: [String], deny: [String] = [], extraSets: String = "") throws -> Matcher {
    let text = """
        {"usbPassthrough": [{"targetVm": "vm1", "allow": [\(allow.joined(separator: ","))],
                             "deny": [\(deny.joined(separator: ","))]}\(extraSets)],
         "vms": [{"name": "vm1", "type": "qemu", "socket": "/tmp/a"},
                 {"name": "vm2", "type": "qemu", "socket": "/tmp/b"}]}
        """
    return Matcher(try config(text))
}

@Suite("USB rule parameters, each matching and not matching")
struct USBParameterTests {
    @Test("each seed parameter matches the receiver", arguments: [
        #"{"vendorId": "046d"}"#, #"{"vendorId": "0x046D"}"#, #"{"productId": "c52b"}"#,
        #"{"vendorName": "logitech"}"#, #"{"vendorName": "^Logitech, Inc\\.$"}"#,
        #"{"productName": "unifying"}"#, #"{"productName": "USB Rec"}"#,
        #"{"bus": 1}"#, #"{"port": 2}"#,
        #"{"interfaceClass": 3}"#, #"{"interfaceSubclass": 1}"#, #"{"interfaceProtocol": 2}"#,
        #"{"interfaceClass": 3, "interfaceSubclass": 0, "interfaceProtocol": 0}"#,
        #"{"deviceClass": 0}"#, #"{"deviceSubclass": 0}"#, #"{"deviceProtocol": 0}"#,
        #"{"vendorId": "046d", "productId": "c52b", "bus": 1, "port": 2}"#,
    ])
    func matches(_ entry: String) throws {
        let d = try usbConfig(allow: [entry]).decide(receiver)
        #expect(d.targetVm == "vm1")
        #expect(d.reason == .matched)
        #expect(d.entry?.index == 0)
    }

    @Test("each seed parameter, with another value, does not match", arguments: [
        #"{"vendorId": "046e"}"#, #"{"productId": "c52c"}"#,
        #"{"vendorName": "microsoft"}"#, #"{"productName": "ethernet"}"#,
        #"{"bus": 2}"#, #"{"port": 3}"#,
        #"{"interfaceClass": 8}"#, #"{"interfaceSubclass": 6}"#, #"{"interfaceProtocol": 80}"#,
        #"{"deviceClass": 224}"#, #"{"deviceSubclass": 1}"#, #"{"deviceProtocol": 1}"#,
        // Every field must match (AND): one wrong field spoils the entry.
        #"{"vendorId": "046d", "productId": "0000"}"#,
        // The three interface fields must hold together on ONE interface:
        // class 3 / subclass 0 / protocol 2 is on no single interface.
        #"{"interfaceClass": 3, "interfaceSubclass": 0, "interfaceProtocol": 2}"#,
    ])
    func doesNotMatch(_ entry: String) throws {
        let d = try usbConfig(allow: [entry]).decide(receiver)
        #expect(d.targetVm == nil)
        #expect(d.reason == .noRule)
    }

    @Test("device class fields match a device that sets them")
    func deviceClassBluetooth() throws {
        let m = try usbConfig(allow: [#"{"deviceClass": 224, "deviceSubclass": 1, "deviceProtocol": 1}"#])
        #expect(m.decide(bluetooth).targetVm == "vm1")
        #expect(m.decide(receiver).targetVm == nil)
    }

    @Test("port is the root port, not the last port of the path")
    func rootPort() throws {
        #expect(try usbConfig(allow: [#"{"port": 10}"#]).decide(bluetooth).targetVm == "vm1")
        #expect(try usbConfig(allow: [#"{"port": 4}"#]).decide(bluetooth).targetVm == nil)
    }

    @Test("names match the device's own strings when usb.ids has no name")
    func ownStrings() throws {
        var d = receiver
        d.vendorName = nil
        d.productName = nil
        #expect(try usbConfig(allow: [#"{"vendorName": "^logitech$"}"#]).decide(d).targetVm == "vm1")
        #expect(try usbConfig(allow: [#"{"productName": "receiver"}"#]).decide(d).targetVm == "vm1")
        d.manufacturer = nil
        #expect(try usbConfig(allow: [#"{"vendorName": "logitech"}"#]).decide(d).targetVm == nil)
    }

    @Test("the seed's .*ethernet.* matches case-insensitively")
    func seedEthernetPattern() throws {
        var d = receiver
        d.productName = "AX88179 Gigabit Ethernet"
        #expect(try usbConfig(allow: [#"{"productName": ".*ethernet.*"}"#]).decide(d).targetVm == "vm1")
    }
}

@Suite("Rule sets: order, deny, disable")
struct RuleSetTests {
    @Test("deny in the same set stops the device and is reported")
    func denied() throws {
        let m = try usbConfig(allow: [#"{"interfaceClass": 3, "description": "HID"}"#],
                              deny: [#"{"vendorId": "1234"}"#, #"{"vendorId": "046d", "productId": "c52b", "description": "Unifying"}"#])
        let d = m.decide(receiver)
        #expect(d.targetVm == nil)
        #expect(d.reason == .denied)
        #expect(d.deniedBy?.index == 1)
        #expect(d.deniedBy?.description == "Unifying")
        #expect(d.entry?.description == "HID")
        #expect(d.summary.contains("deny[1] \"Unifying\""))
    }

    @Test("a deny in one set does not stop a later set from taking it")
    func laterSetTakes() throws {
        let m = try usbConfig(allow: [#"{"interfaceClass": 3}"#], deny: [#"{"vendorId": "046d"}"#],
                              extraSets: #", {"targetVm": "vm2", "description": "second", "allow": [{"vendorId": "046d"}]}"#)
        let d = m.decide(receiver)
        #expect(d.targetVm == "vm2")
        #expect(d.ruleSetIndex == 1)
        #expect(d.ruleSetDescription == "second")
    }

    @Test("the first set that takes it decides")
    func firstWins() throws {
        let m = try usbConfig(allow: [#"{"vendorId": "046d"}"#],
                              extraSets: #", {"targetVm": "vm2", "allow": [{"vendorId": "046d"}]}"#)
        #expect(m.decide(receiver).targetVm == "vm1")
    }

    @Test("the first matching allow entry is reported")
    func firstEntry() throws {
        let m = try usbConfig(allow: [#"{"vendorId": "8087"}"#, #"{"interfaceProtocol": 2, "description": "HID Mouse"}"#,
                                      #"{"vendorId": "046d"}"#])
        let d = m.decide(receiver)
        #expect(d.entry?.index == 1)
        #expect(d.entry?.description == "HID Mouse")
        #expect(d.entry?.location != nil)
    }

    @Test("a disabled allow entry does not take; the reason says disabled")
    func disabledEntry() throws {
        let m = try usbConfig(allow: [#"{"vendorId": "046d", "disable": true}"#])
        let d = m.decide(receiver)
        #expect(d.targetVm == nil)
        #expect(d.reason == .disabled)
    }

    @Test("a disabled entry is skipped and a later enabled one takes")
    func disabledThenEnabled() throws {
        let m = try usbConfig(allow: [#"{"vendorId": "046d", "disable": true}"#, #"{"productId": "c52b"}"#])
        #expect(m.decide(receiver).entry?.index == 1)
    }

    @Test("a disabled deny entry does not deny")
    func disabledDeny() throws {
        let m = try usbConfig(allow: [#"{"vendorId": "046d"}"#], deny: [#"{"vendorId": "046d", "disable": true}"#])
        #expect(m.decide(receiver).targetVm == "vm1")
    }

    @Test("a disabled rule set is skipped")
    func disabledSet() throws {
        let m = Matcher(try config("""
            {"usbPassthrough": [{"targetVm": "vm1", "disable": true, "allow": [{"vendorId": "046d"}]},
                                {"targetVm": "vm2", "allow": [{"productId": "c52b"}]}],
             "vms": [{"name": "vm1", "type": "qemu", "socket": "/a"}, {"name": "vm2", "type": "qemu", "socket": "/b"}]}
            """))
        #expect(m.decide(receiver).targetVm == "vm2")
    }

    @Test("hubs are never chosen, whatever the rules")
    func hub() throws {
        var hub = receiver
        hub.isHub = true
        hub.deviceClass = 9
        let d = try usbConfig(allow: [#"{"vendorId": "046d"}"#, #"{"deviceClass": 9}"#]).decide(hub)
        #expect(d.targetVm == nil)
        #expect(d.reason == .hub)
    }

    @Test("the host's boot disk is never chosen")
    func bootDisk() throws {
        var disk = receiver
        disk.holdsHostBootFilesystem = true
        let d = try usbConfig(allow: [#"{"vendorId": "046d"}"#]).decide(disk)
        #expect(d.targetVm == nil)
        #expect(d.reason == .bootDevice)
    }
}

let wifi = PCIDevice(address: "0000:00:14.3", sysPath: "/devices/pci0000:00/0000:00:14.3", vendorId: 0x8086,
                     deviceId: 0xa0f0, deviceClass: 2, deviceSubclass: 0x80, deviceProgIf: 0, driver: "iwlwifi",
                     iommuGroup: 5)

func pciMatcher(_ entries: [String]) throws -> Matcher {
    Matcher(try config("""
        {"pciPassthrough": [{"targetVm": "vm1", "allow": [\(entries.joined(separator: ","))]}],
         "vms": [{"name": "vm1", "type": "qemu", "socket": "/a"}]}
        """))
}

@Suite("PCI rule parameters")
struct PCIParameterTests {
    @Test("each parameter matches", arguments: [
        #"{"address": "0000:00:14.3"}"#, #"{"address": "00:14.3"}"#, #"{"vendorId": "8086"}"#, #"{"deviceId": "A0F0"}"#,
        #"{"deviceClass": 2}"#, #"{"deviceSubclass": 128}"#, #"{"deviceProgIf": 0}"#,
    ])
    func matches(_ entry: String) throws {
        #expect(try pciMatcher([entry]).decide(wifi).targetVm == "vm1")
    }

    @Test("each parameter, with another value, does not match", arguments: [
        #"{"address": "0000:00:14.2"}"#, #"{"vendorId": "10de"}"#, #"{"deviceId": "a7a1"}"#,
        #"{"deviceClass": 3}"#, #"{"deviceSubclass": 0}"#, #"{"deviceProgIf": 1}"#,
    ])
    func doesNotMatch(_ entry: String) throws {
        #expect(try pciMatcher([entry]).decide(wifi).targetVm == nil)
    }

    @Test("bridges and the boot disk's controller are never chosen")
    func neverChosen() throws {
        var bridge = wifi
        bridge.isBridge = true
        #expect(try pciMatcher([#"{"vendorId": "8086"}"#]).decide(bridge).reason == .bridge)
        var nvme = wifi
        nvme.holdsHostBootFilesystem = true
        #expect(try pciMatcher([#"{"vendorId": "8086"}"#]).decide(nvme).reason == .bootDevice)
    }

    @Test("a disk's controller while / is unresolved is never chosen, and the decision says why")
    func unresolvedBootNeverChosen() throws {
        var nvme = wifi
        nvme.bootHold = .unresolvedBoot("/ (zfs rpool/ROOT/pve-1)")
        let d = try pciMatcher([#"{"vendorId": "8086"}"#]).decide(nvme)
        #expect(d.targetVm == nil && d.reason == .bootDevice)
        #expect(d.summary == "none: holds a disk, while the host's / (zfs rpool/ROOT/pve-1) cannot be resolved to its disks")
        nvme.holdsHostBootFilesystem = true
        #expect(nvme.bootHold == .unresolvedBoot("/ (zfs rpool/ROOT/pve-1)"))
        nvme.bootHold = nil
        nvme.holdsHostBootFilesystem = true
        #expect(try pciMatcher([#"{"vendorId": "8086"}"#]).decide(nvme).summary == "none: holds the host's / or /boot")
    }
}

@Suite("evdev passthrough decisions")
struct EvdevTests {
    let keyboard = InputDevice(sysName: "event0", sysPath: "/devices/platform/i8042/serio0/input/input0/event0",
                               devnode: "/dev/input/event0", name: "AT Translated Set 2 keyboard", busType: 0x11,
                               kinds: [.key, .keyboard])

    func matcher(_ evdev: String) throws -> Matcher {
        Matcher(try config("""
            {"evdevPassthrough": \(evdev), "vms": [{"name": "vm1", "type": "qemu", "socket": "/a"}]}
            """))
    }

    @Test("a non-USB input device goes to the evdev target")
    func goes() throws {
        #expect(try matcher(#"{"targetVm": "vm1", "pcieBusPrefix": "ep"}"#).decide(keyboard).targetVm == "vm1")
    }

    @Test("the object form takes keyboards and pointers only: not the power button, the lid switch or a jack")
    func kinds() throws {
        let m = try matcher(#"{"targetVm": "vm1"}"#)
        for kinds: [InputKind] in [[.mouse], [.touchpad], [.touchscreen], [.tablet], [.pointingStick], [.key, .keyboard]] {
            var d = keyboard
            d.kinds = kinds
            #expect(m.decide(d).targetVm == "vm1", "\(kinds)")
        }
        for kinds: [InputKind] in [[.key], [.switch], [], [.accelerometer], [.joystick]] {
            var d = keyboard
            d.kinds = kinds
            let decision = m.decide(d)
            #expect(decision.targetVm == nil && decision.reason == .inputKind, "\(kinds)")
        }
    }

    @Test("disabled evdev passthrough takes nothing")
    func disabled() throws {
        let d = try matcher(#"{"targetVm": "vm1", "disable": true}"#).decide(keyboard)
        #expect(d.targetVm == nil)
        #expect(d.reason == .evdevDisabled)
    }

    @Test("an input device of a USB device is left to the USB rules")
    func usbInput() throws {
        var k = keyboard
        k.hasUSBAncestor = true
        #expect(try matcher(#"{"targetVm": "vm1"}"#).decide(k).reason == .usbInput)
    }
}

@Suite("The seed's sample configuration")
struct SeedSampleTests {
    @Test("HID mouse interface goes to vm1; the denied receiver does not")
    func seed() throws {
        let path = String(#filePath.split(separator: "/").dropLast(3).joined(separator: "/"))
        let m = Matcher(try ConfigurationLoader.load(path: "/" + path + "/data/vhotplug.conf"))
        var mouse = receiver
        mouse.vendorId = 0x1234
        #expect(m.decide(mouse).targetVm == "vm1")          // HID Mouse interface 03/xx/02
        let denied = m.decide(receiver)                    // Logitech Unifying: denied
        #expect(denied.targetVm == nil)
        #expect(denied.reason == .denied)
        #expect(denied.deniedBy?.description == "Logitech, Inc. Unifying Receiver")
        var serial = receiver
        serial.vendorId = 0x067b
        serial.productId = 0x23a3
        serial.interfaces = [USBInterface(interfaceNumber: 0, interfaceClass: 0xff, interfaceSubclass: 0, interfaceProtocol: 0)]
        #expect(m.decide(serial).reason == .disabled)      // Prolific entry is disabled
        #expect(m.decide(wifi).targetVm == "vm1")          // address 0000:00:14.3
    }
}

@Suite("Matcher: the control API's keys")
struct MatcherAPIKeysTests {
    @Test("removable matches the device's port kind")
    func removable() throws {
        var fixed = receiver
        fixed.removable = .fixed
        var plugged = receiver
        plugged.removable = .removable
        let m = try usbConfig(allow: [#"{"vendorId": "046d", "removable": ["removable", "unknown"]}"#])
        #expect(m.decide(plugged).targetVm == "vm1")
        #expect(m.decide(receiver).targetVm == "vm1") // unknown
        #expect(m.decide(fixed).reason == .noRule)
    }

    @Test("a decision carries allowedVms, tag and skipOnSuspend of its rule set")
    func options() throws {
        let m = Matcher(try config("""
            {"usbPassthrough": [{"allowedVms": ["vm2", "vm1"], "tag": "receiver", "skipOnSuspend": true, "allow": [{"vendorId": "046d"}]}],
             "vms": [{"name": "vm1", "type": "qemu", "socket": "/tmp/a"}, {"name": "vm2", "type": "crosvm", "socket": "/tmp/b"}]}
            """))
        let d = m.decide(receiver)
        #expect(d.targetVm == "vm2")
        #expect(d.candidateVms == ["vm2", "vm1"])
        #expect(d.options.tag == "receiver")
        #expect(d.options.skipOnSuspend)
        #expect(m.decide(bluetooth).candidateVms == [])
    }

    @Test("pciIommuSkipIfShared: a device whose group has other members is skipped, a lone one is taken")
    func skipIfShared() throws {
        let m = Matcher(try config("""
            {"pciPassthrough": [{"targetVm": "vm1", "pciIommuSkipIfShared": true, "allow": [{"vendorId": "8086"}]}],
             "vms": [{"name": "vm1", "type": "qemu", "socket": "/tmp/a"}]}
            """))
        let alone = PCIDevice(address: "0000:00:14.3", sysPath: "/devices/pci0000:00/0000:00:14.3", vendorId: 0x8086, deviceId: 0xa0f0,
                              iommuGroup: 5)
        var shared = alone
        shared.iommuGroupPeers = ["0000:00:14.0"]
        #expect(m.decide(alone).targetVm == "vm1")
        let d = m.decide(shared)
        #expect(d.reason == .iommuShared)
        #expect(d.targetVm == nil)
        #expect(d.summary == "none: its IOMMU group is shared and rule set 0 says pciIommuSkipIfShared")
    }

    @Test("evdev rule sets match name, pathTag and kind; deny wins; USB input stays with USB rules")
    func evdevRuleSets() throws {
        let m = Matcher(try config("""
            {"evdevPassthrough": [{"targetVm": "vm1", "allow": [{"kind": "touchpad"}, {"pathTag": "^platform-thinkpad_acpi$"}, {"name": "keyboard", "kind": "keyboard"}],
                                   "deny": [{"name": "^Power Button$"}]}],
             "vms": [{"name": "vm1", "type": "qemu", "socket": "/tmp/a"}]}
            """))
        let touchpad = InputDevice(sysName: "event5", sysPath: "/devices/platform/i8042/serio1/input/input5/event5",
                                   devnode: "/dev/input/event5", name: "SynPS/2 Synaptics TouchPad", kinds: [.touchpad],
                                   pathTag: "platform-i8042-serio-1")
        let hotkeys = InputDevice(sysName: "event7", sysPath: "/devices/platform/thinkpad_acpi/input/input7/event7",
                                  devnode: "/dev/input/event7", name: "ThinkPad Extra Buttons", kinds: [.key],
                                  pathTag: "platform-thinkpad_acpi")
        let keyboard = InputDevice(sysName: "event2", sysPath: "/devices/platform/i8042/serio0/input/input2/event2",
                                   devnode: "/dev/input/event2", name: "AT Translated Set 2 keyboard", kinds: [.keyboard],
                                   pathTag: "platform-i8042-serio-0")
        var power = keyboard
        power.name = "Power Button"
        var powerKey = power
        powerKey.kinds = [.key]
        var notKeyboard = keyboard
        notKeyboard.kinds = [.key]
        var usb = touchpad
        usb.hasUSBAncestor = true
        #expect(m.decide(touchpad).targetVm == "vm1")
        #expect(m.decide(touchpad).entry?.index == 0)
        #expect(m.decide(hotkeys).entry?.index == 1)
        #expect(m.decide(keyboard).entry?.index == 2)
        #expect(m.decide(notKeyboard).reason == .noRule) // name matches, kind does not
        #expect(m.decide(powerKey).reason == .noRule)
        var powerTouch = power
        powerTouch.kinds = [.touchpad]
        #expect(m.decide(powerTouch).reason == .denied)
        #expect(m.decide(usb).reason == .usbInput)
    }

    @Test("the kinds the configuration accepts are DeviceModel's input kinds")
    func kindsAgree() {
        #expect(EvdevRule.kinds.sorted() == InputKind.allCases.map(\.rawValue).sorted())
    }
}

@Suite("The matcher's compiled table of USB entries")
struct USBTableTests {
    /// Three rule sets whose entries sit at different offsets of the matcher's one table:
    /// each set's allow and deny entries, and each name pattern, must be its own.
    @Test("each rule set's allow, deny and name patterns are its own")
    func offsets() throws {
        let m = try usbConfig(
            allow: [#"{"vendorId": "1111"}"#, #"{"productName": "^nothing$"}"#],
            deny: [#"{"vendorName": "logitech"}"#, #"{"bus": 9}"#],
            extraSets: """
                , {"targetVm": "vm2", "allow": [{"vendorName": "^nobody$"}, {"productName": "receiver", "port": 2}],
                   "deny": [{"productName": "^unifying receiver$", "bus": 2}, {"vendorName": "intel"}]},
                {"targetVm": "vm1", "allow": [{"vendorId": "046d"}], "deny": []}
                """)
        // Set 0 takes neither device; set 1 takes the receiver (allow[1]; deny[0] needs bus 2).
        let d = m.decide(receiver)
        #expect(d.targetVm == "vm2")
        #expect(d.ruleSetIndex == 1)
        #expect(d.entry?.index == 1)
        // The Bluetooth adapter: set 1's allow[1] fails on its name; nothing else takes it.
        #expect(m.decide(bluetooth).reason == .noRule)
        // Each entry, tested alone, agrees with the matcher's table.
        for set in m.configuration.usbPassthrough {
            for e in set.allow + set.deny {
                let alone = try usbConfig(allow: [Self.json(e)]).decide(receiver).reason == .matched
                #expect(e.matches(receiver) == alone, "\(e)")
            }
        }
    }

    /// An entry as the configuration writes it (only the fields these tests use).
    static func json(_ e: USBRule) -> String {
        var parts: [String] = []
        if let v = e.vendorId { parts.append(#""vendorId": "\#(String(v, radix: 16))""#) }
        if let v = e.vendorName { parts.append(#""vendorName": "\#(v.source)""#) }
        if let v = e.productName { parts.append(#""productName": "\#(v.source)""#) }
        if let v = e.bus { parts.append(#""bus": \#(v)"#) }
        if let v = e.port { parts.append(#""port": \#(v)"#) }
        return "{" + parts.joined(separator: ", ") + "}"
    }

    @Test("removable: a device's kind against the kinds an entry names")
    func removableKinds() throws {
        for kind in Removability.allCases {
            var d = receiver
            d.removable = kind
            for named in [["fixed"], ["removable"], ["unknown"], ["fixed", "unknown"], ["removable", "fixed", "unknown"]] {
                let list = named.map { "\"\($0)\"" }.joined(separator: ", ")
                let m = try usbConfig(allow: [#"{"vendorId": "046d", "removable": [\#(list)]}"#])
                #expect((m.decide(d).reason == .matched) == named.contains(kind.rawValue), "\(kind) against \(named)")
            }
        }
    }
}

@Suite("What a hub is")
struct HubTests {
    @Test("a hub has only hub interfaces (or, none known yet, the hub device class); a keyboard with a hub interface beside is no hub")
    func hubDefinition() {
        let hubInterface = USBInterface(interfaceNumber: 0, interfaceClass: 9, interfaceSubclass: 0, interfaceProtocol: 0)
        let keyboard = USBInterface(interfaceNumber: 0, interfaceClass: 3, interfaceSubclass: 1, interfaceProtocol: 1)
        #expect(USBDevice.isHub(deviceClass: 9, interfaces: [hubInterface]))
        #expect(USBDevice.isHub(deviceClass: 9, interfaces: []))
        #expect(!USBDevice.isHub(deviceClass: 0, interfaces: []))
        var second = hubInterface
        second.interfaceNumber = 1
        #expect(!USBDevice.isHub(deviceClass: 0, interfaces: [keyboard, second]))
        #expect(!USBDevice.isHub(deviceClass: 9, interfaces: [keyboard]))
    }
}
