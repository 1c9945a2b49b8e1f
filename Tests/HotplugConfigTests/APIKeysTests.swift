import Testing
@testable import HotplugConfig

@Suite("Validation: the control API's keys")
struct APIKeysTests {
    @Test("allowedVms, tag, skipOnSuspend load; allowedVms alone sets the default VM; crosvm VMs are fine for USB")
    func ruleSetOptions() throws {
        let config = try ConfigurationLoader.parse(Sample.ruleSet(
            #"{"allowedVms": ["vm1", "net"], "tag": "camera", "skipOnSuspend": true, "allow": [{"vendorId": "046d"}]}"#))
        let set = try #require(config.usbPassthrough.first)
        #expect(set.targetVm == "vm1")
        #expect(set.options.allowedVms == ["vm1", "net"])
        #expect(set.options.tag == "camera")
        #expect(set.options.skipOnSuspend)
        #expect(set.candidateVms == ["vm1", "net"])
        let plain = try ConfigurationLoader.parse(Sample.ruleSet(#"{"targetVm": "vm1", "allow": [{"vendorId": "046d"}]}"#))
        #expect(plain.usbPassthrough.first?.candidateVms == ["vm1"])
    }

    @Test("a rule set without targetVm and allowedVms")
    func noTarget() throws {
        let d = try singleError(Sample.ruleSet(#"{"allow": [{"vendorId": "046d"}]}"#))
        #expect(d.message == #"missing required key "targetVm" (the name of the VM the devices go to)"#)
        #expect(d.position == "4:5")
        #expect(d.path == "$.usbPassthrough[0]")
    }

    @Test("allowedVms null is allowedVms left out: without targetVm, the rule set is an error (not dropped)")
    func allowedVmsNull() throws {
        let d = try singleError(Sample.ruleSet(#"{"allowedVms": null, "allow": [{"vendorId": "046d"}]}"#))
        #expect(d.message == #"missing required key "targetVm" (the name of the VM the devices go to)"#)
        #expect(d.path == "$.usbPassthrough[0]")
    }

    @Test("allowedVms: unknown VM, duplicate, wrong type, empty, targetVm outside it")
    func allowedVmsErrors() throws {
        let text = Sample.ruleSet(#"{"targetVm": "vm1", "allowedVms": ["net", "vm2", "net", 3], "allow": [{"vendorId": "046d"}]}"#)
        let all = errors(text)
        #expect(all.map(\.message) == [
            #"targetVm "vm1" is not one of allowedVms; with allowedVms, targetVm is the default choice and must be listed there"#,
            #"unknown VM "vm2" in allowedVms (defined VMs: "vm1", "net"); did you mean "vm1"?"#,
            #"VM "net" is listed twice in allowedVms"#,
            "expected a VM name (a string), found number 3",
        ])
        #expect(all.map(\.path) == ["$.usbPassthrough[0].targetVm", "$.usbPassthrough[0].allowedVms[1]",
                                    "$.usbPassthrough[0].allowedVms[2]", "$.usbPassthrough[0].allowedVms[3]"])
        #expect(all[1].position == position(of: #""vm2""#, in: text))
        let empty = try singleError(Sample.ruleSet(#"{"allowedVms": [], "allow": [{"vendorId": "046d"}]}"#))
        #expect(empty.message == "allowedVms must name at least one VM")
        #expect(empty.path == "$.usbPassthrough[0].allowedVms")
        let notArray = try singleError(Sample.ruleSet(#"{"allowedVms": "vm1", "allow": [{"vendorId": "046d"}]}"#))
        #expect(notArray.message == #"expected an array of VM names like ["vm1", "vm2"], found string "vm1""#)
    }

    @Test("PCI: a crosvm VM in allowedVms; IOMMU keys; contradictory IOMMU keys")
    func pciOptions() throws {
        let text = Sample.ruleSet(#"{"allowedVms": ["vm1", "net"], "allow": [{"vendorId": "8086"}]}"#, key: "pciPassthrough")
        let d = try singleError(text)
        #expect(d.message.hasPrefix(#"crosvm does not support PCI hot-plug; VM "net" (line 2) is a crosvm VM"#))
        #expect(d.path == "$.pciPassthrough[0].allowedVms[1]")
        #expect(d.position == position(of: #""net"]"#, in: text))
        let ok = try ConfigurationLoader.parse(Sample.ruleSet(
            #"{"targetVm": "vm1", "tag": "wifi", "pciIommuAddAll": true, "allow": [{"vendorId": "8086"}]}"#, key: "pciPassthrough"))
        #expect(ok.pciPassthrough.first?.options == RuleSetOptions(tag: "wifi", pciIommuAddAll: true))
        let both = try singleError(Sample.ruleSet(
            #"{"targetVm": "vm1", "pciIommuAddAll": true, "pciIommuSkipIfShared": true, "allow": [{"vendorId": "8086"}]}"#,
            key: "pciPassthrough"))
        #expect(both.message == "pciIommuSkipIfShared and pciIommuAddAll contradict each other: set at most one of them")
        #expect(both.path == "$.pciPassthrough[0].pciIommuSkipIfShared")
        // The IOMMU keys are for PCI only.
        let usb = try singleError(Sample.ruleSet(#"{"targetVm": "vm1", "pciIommuAddAll": true, "allow": [{"vendorId": "8086"}]}"#))
        #expect(usb.message.hasPrefix(#"unknown key "pciIommuAddAll""#))
    }

    @Test("removable: an array of port kinds; a bare string is an error")
    func removable() throws {
        let config = try ConfigurationLoader.parse(Sample.usbEntry(#"{"removable": ["removable", "unknown"]}"#))
        #expect(config.usbPassthrough.first?.allow.first?.removable == ["removable", "unknown"])
        let bare = try singleError(Sample.usbEntry(#"{"removable": "removable"}"#))
        #expect(bare.message == #"expected an array of "fixed", "removable", "unknown", found string "removable"; write ["removable"]"#)
        #expect(bare.position == "4:19")
        #expect(bare.path == "$.usbPassthrough[0].allow[0].removable")
        let typo = try singleError(Sample.usbEntry(#"{"removable": ["fixd"]}"#))
        #expect(typo.message == #"unknown port kind "fixd": expected an array of "fixed", "removable", "unknown"; did you mean "fixed"?"#)
        #expect(typo.path == "$.usbPassthrough[0].allow[0].removable[0]")
        #expect(typo.position == "4:20")
    }

    @Test("evdevPassthrough as rule sets: name, pathTag, kind; crosvm target and a bad kind are errors")
    func evdevRuleSets() throws {
        let config = try ConfigurationLoader.parse(Sample.evdev(
            #"[{"targetVm": "vm1", "pcieBusPrefix": "rp", "allow": [{"kind": "touchpad"}, {"pathTag": "platform-thinkpad_acpi"}], "deny": [{"name": "^Power Button$"}]}]"#))
        let set = try #require(config.evdevRuleSets.first)
        #expect(set.targetVm == "vm1")
        #expect(set.options.pcieBusPrefix == "rp")
        #expect(set.allow.map(\.kind) == ["touchpad", nil])
        #expect(set.allow[1].pathTag?.source == "platform-thinkpad_acpi")
        #expect(set.deny.first?.name?.source == "^Power Button$")
        #expect(config.evdevPassthrough == nil)

        // The ports kept for input devices in each VM (PCI devices do not take them).
        #expect(config.evdevPortPrefixes(for: "vm1") == ["rp"])
        #expect(config.evdevPortPrefixes(for: "net") == [])
        let object = try ConfigurationLoader.parse(Sample.evdev(#"{"targetVm": "vm1", "pcieBusPrefix": "ep"}"#))
        #expect(object.evdevPortPrefixes(for: "vm1") == ["ep"])
        let off = try ConfigurationLoader.parse(Sample.evdev(#"{"disable": true, "targetVm": "vm1", "pcieBusPrefix": "ep"}"#))
        #expect(off.evdevPortPrefixes(for: "vm1") == [])
        let two = try ConfigurationLoader.parse(Sample.evdev(
            #"[{"targetVm": "vm1", "pcieBusPrefix": "ep", "allow": [{"kind": "mouse"}]}, {"targetVm": "vm1", "allow": [{"kind": "key"}]}, {"targetVm": "vm1", "pcieBusPrefix": "kb", "disable": true, "allow": [{"kind": "keyboard"}]}]"#))
        #expect(two.evdevPortPrefixes(for: "vm1") == ["ep"])    // no prefix: any port, none kept; disabled: none

        let text = Sample.evdev(#"[{"targetVm": "net", "allow": [{"kind": "touchpd"}, {"name": "("}]}]"#)
        let all = errors(text)
        #expect(all.count == 3)
        #expect(all[0].message.hasPrefix(#"evdev passthrough needs QEMU; VM "net" (line 2) is a crosvm VM"#))
        #expect(all[0].path == "$.evdevPassthrough[0].targetVm")
        #expect(all[1].message.hasPrefix(#"unknown input kind "touchpd": expected one of keyboard, key, mouse, touchpad"#))
        #expect(all[1].message.hasSuffix(#"did you mean "touchpad"?"#))
        #expect(all[1].path == "$.evdevPassthrough[0].allow[0].kind")
        #expect(all[1].position == position(of: #""touchpd""#, in: text))
        #expect(all[2].message.hasPrefix(#"invalid regular expression "(""#))
        let empty = try singleError(Sample.evdev(#"[{"targetVm": "vm1", "allow": [{"description": "all"}]}]"#))
        #expect(empty.message == "entry has no matching field; it would match every device (use one or more of: name, pathTag, kind)")
    }

    @Test("general: api, persistency, statePath, crosvm load with defaults")
    func general() throws {
        let defaults = try ConfigurationLoader.parse("{}")
        #expect(defaults.general == GeneralSettings())
        #expect(!defaults.general.api.enable)
        #expect(defaults.general.persistency)
        #expect(defaults.general.statePath == "/var/lib/vhotplug/vhotplug.state")
        let config = try ConfigurationLoader.parse("""
            {"general": {"persistency": false, "statePath": "/tmp/s", "crosvm": "/usr/bin/crosvm",
              "api": {"transports": ["unix", "tcp", "vsock"], "unixSocket": "/run/v.sock", "unixSocketGroup": "vhotplug",
                      "unixSocketUser": "root", "unixSocketMode": "0600", "host": "0.0.0.0", "port": 2001, "allowedCids": [3, 4]}}}
            """)
        let g = config.general
        #expect(g.api == APISettings(enable: true, transports: [.unix, .tcp, .vsock], unixSocket: "/run/v.sock",
                                     unixSocketUser: "root", unixSocketGroup: "vhotplug", unixSocketMode: 0o600,
                                     host: "0.0.0.0", port: 2001, allowedCids: [3, 4]))
        #expect(!g.persistency)
        #expect(g.statePath == "/tmp/s")
        #expect(g.crosvm == "/usr/bin/crosvm")
    }

    @Test("api: a socket mode given as a number is refused even when it fits (440: 0440 or 0670?); the TCP host must be an address")
    func modeNumberAndHost() throws {
        for (mode, host) in [("440", "not an ip"), ("432", "example.org")] {
            let text = """
                {"general": {"api": {"transports": ["tcp", "unix"], "unixSocketMode": \(mode), "host": "\(host)"}}}
                """
            let byPath = Dictionary(errors(text).map { ($0.path, $0) }, uniquingKeysWith: { a, _ in a })
            #expect(byPath["$.general.api.unixSocketMode"]?.message
                == #"expected permission bits as an octal string like "0660", found \#(mode) (JSON numbers are decimal: write "0\#(mode)" for octal \#(mode))"#)
            #expect(byPath["$.general.api.host"]?.message
                == #"expected an IPv4 or IPv6 address (or "localhost") to listen on, found "\#(host)""#)
            #expect(byPath["$.general.api.host"]?.position == position(of: "\"\(host)\"", in: text))
        }
        for host in ["127.0.0.1", "::1", "0.0.0.0", "localhost", "fe80::1"] {
            let c = try ConfigurationLoader.parse(#"{"general": {"api": {"transports": ["tcp"], "host": "\#(host)"}}}"#, file: "<config>")
            #expect(c.general.api.host == host)
        }
    }

    @Test("general: each error with its position and path")
    func generalErrors() throws {
        let text = """
            {"general": {"persistency": "yes", "statePath": "", "api": {"enable": 1, "transports": ["unix", "tpc"],
              "unixSocketMode": 660, "port": 70000, "allowedCids": [-1], "unixSocket": "rel.sock", "hostt": "x"}}}
            """
        let all = errors(text)
        let byPath = Dictionary(all.map { ($0.path, $0) }, uniquingKeysWith: { a, _ in a })
        #expect(byPath["$.general.persistency"]?.message == #"expected true or false, found string "yes""#)
        #expect(byPath["$.general.persistency"]?.position == position(of: #""yes""#, in: text))
        #expect(byPath["$.general.statePath"]?.message == "statePath must not be empty (leave the key out for the default)")
        #expect(byPath["$.general.api.enable"]?.message == "expected true or false, found number 1")
        #expect(byPath["$.general.api.transports[1]"]?.message == #"expected "unix", "vsock" or "tcp", found string "tpc""#)
        #expect(byPath["$.general.api.transports[1]"]?.position == position(of: #""tpc""#, in: text))
        #expect(byPath["$.general.api.unixSocketMode"]?.message
            == #"expected permission bits as an octal string like "0660", found 660 (JSON numbers are decimal: write "0660" for octal 660)"#)
        #expect(byPath["$.general.api.port"]?.message == "70000 is out of range: expected an integer from 1 to 65535")
        #expect(byPath["$.general.api.allowedCids[0]"]?.message == "expected a vsock CID (an integer from 0 to 4294967295), found number -1")
        #expect(byPath["$.general.api.unixSocket"]?.message == #"expected an absolute path, found "rel.sock""#)
        #expect(byPath["$.general.api.hostt"]?.message == #"unknown key "hostt"; did you mean "host"?"#)
        #expect(all.count == 9)
    }

    @Test("an empty transports list is refused, as an empty allowedVms is (the API would be on, with no listener)")
    func noTransports() throws {
        let d = try singleError(#"{"general": {"api": {"transports": []}}}"#)
        #expect(d.message == #"transports must name at least one transport: "unix", "vsock" or "tcp" (to turn the API off, set "enable": false)"#)
        #expect(d.path == "$.general.api.transports")
        #expect(d.position == "1:36")
    }

    @Test("a relative statePath is refused, as a relative unixSocket is (it would depend on the daemon's working folder)")
    func relativeStatePath() throws {
        let d = try singleError(#"{"general": {"statePath": "state/v.state"}}"#)
        #expect(d.message == #"expected an absolute path, found "state/v.state""#)
        #expect(d.path == "$.general.statePath")
        #expect(d.position == "1:27")
    }

    @Test("vsock without allowedCids is refused")
    func vsockNeedsCids() throws {
        let d = try singleError(#"{"general": {"api": {"transports": ["vsock"]}}}"#)
        #expect(d.message == #"the vsock transport needs "allowedCids" (the VMs' CIDs that may connect)"#)
        #expect(d.path == "$.general.api.transports")
        #expect(d.position == "1:36")
    }
}
