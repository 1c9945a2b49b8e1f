import JSONKit
import Foundation
import Testing
@testable import HotplugConfig

@Suite("Validation: keys")
struct KeyValidationTests {
    @Test("a key differing only in case is suggested")
    func unknownKeyCaseOnly() throws {
        let d = try singleError(Sample.usbEntry(#"{"vendorID": "046d"}"#))
        #expect(d.message == #"unknown key "vendorID"; did you mean "vendorId"?"#)
        #expect(d.position == "4:6")
        #expect(d.path == "$.usbPassthrough[0].allow[0].vendorID")
        #expect(d.description
            == #"<config>:4:6: error: unknown key "vendorID"; did you mean "vendorId"? (at $.usbPassthrough[0].allow[0].vendorID)"#)
    }

    @Test("a key with a typo is suggested")
    func unknownKeyTypo() throws {
        let d = try singleError(Sample.usbEntry(#"{"prodctId": "c52b", "vendorId": "046d"}"#))
        #expect(d.message == #"unknown key "prodctId"; did you mean "productId"?"#)
        #expect(d.position == "4:6")
        #expect(d.path == "$.usbPassthrough[0].allow[0].prodctId")
    }

    @Test("a key far from any known key lists the valid keys")
    func unknownKeyWithoutSuggestion() throws {
        let d = try singleError(Sample.usbEntry(#"{"color": "red", "vendorId": "046d"}"#))
        #expect(d.message == #"unknown key "color"; valid keys here: vendorId, productId, vendorName, productName, bus, port, interfaceClass, interfaceSubclass, interfaceProtocol, deviceClass, deviceSubclass, deviceProtocol, removable, description, disable"#)
        #expect(d.position == "4:6")
    }

    @Test("a USB-only key in a PCI entry says so")
    func usbKeyInPCIEntry() throws {
        let d = try singleError(Sample.pciEntry(#"{"vendorId": "8086", "productId": "a7a1"}"#))
        #expect(d.message == #"unknown key "productId": it is a USB key, not valid in a PCI entry; did you mean "deviceId"?"#)
        #expect(d.position == "4:26")
        #expect(d.path == "$.pciPassthrough[0].allow[0].productId")

        let interface = try singleError(Sample.pciEntry(#"{"interfaceClass": 3}"#))
        #expect(interface.message == #"unknown key "interfaceClass": it is a USB key, not valid in a PCI entry"#)
        #expect(interface.position == "4:6")
    }

    @Test("a PCI-only key in a USB entry says so")
    func pciKeyInUSBEntry() throws {
        let d = try singleError(Sample.usbEntry(#"{"address": "00:14.3"}"#))
        #expect(d.message == #"unknown key "address": it is a PCI key, not valid in a USB entry"#)
        #expect(d.position == "4:6")
        #expect(d.path == "$.usbPassthrough[0].allow[0].address")

        let progIf = try singleError(Sample.usbEntry(#"{"deviceProgIf": 1}"#))
        #expect(progIf.message
            == #"unknown key "deviceProgIf": it is a PCI key, not valid in a USB entry; did you mean "deviceProtocol"?"#)
    }

    @Test("a rule-set key inside an entry says where it belongs")
    func ruleSetKeyInEntry() throws {
        let d = try singleError(Sample.usbEntry(#"{"vendorId": "046d", "targetVm": "vm1"}"#))
        #expect(d.message == #"unknown key "targetVm": it belongs to the rule set, not to an allow/deny entry"#)
        #expect(d.position == "4:26")
        #expect(d.path == "$.usbPassthrough[0].allow[0].targetVm")
    }

    @Test("a matching field directly in a rule set says where it belongs")
    func matchingKeyInRuleSet() throws {
        let d = try singleError(Sample.ruleSet(#"{"targetVm": "vm1", "vendorId": "046d"}"#))
        #expect(d.message == #"unknown key "vendorId": it is a matching field: put it inside an entry of "allow" or "deny""#)
        #expect(d.position == "4:25")
        #expect(d.path == "$.usbPassthrough[0].vendorId")
    }

    @Test("unknown top-level keys")
    func unknownTopLevelKeys() throws {
        let caseOnly = try singleError(#"{"usbPassThrough": []}"#)
        #expect(caseOnly.message == #"unknown key "usbPassThrough"; did you mean "usbPassthrough"?"#)
        #expect(caseOnly.position == "1:2")
        #expect(caseOnly.path == "$.usbPassThrough")

        let typo = try singleError(#"{"vm": []}"#)
        #expect(typo.message == #"unknown key "vm"; did you mean "vms"?"#)

        let misplaced = try singleError(#"{"targetVm": "vm1"}"#)
        #expect(misplaced.message
            == #"unknown key "targetVm": it is not a top-level key: put it inside a rule set of "usbPassthrough" or "pciPassthrough""#)
    }

    @Test("a key that is not an identifier is shown in brackets in the path")
    func oddKeyPath() throws {
        let d = try singleError(#"{"my key": 1}"#)
        #expect(d.path == #"$["my key"]"#)
        #expect(d.message == #"unknown key "my key"; valid keys here: usbPassthrough, pciPassthrough, evdevPassthrough, vms, general, usbAuthorization"#)
    }

    @Test("unknown keys in evdevPassthrough and VMs")
    func unknownKeysElsewhere() throws {
        let evdev = try singleError(Sample.evdev(#"{"targetVm": "vm1", "pcieBusprefix": "ep"}"#))
        #expect(evdev.message == #"unknown key "pcieBusprefix"; did you mean "pcieBusPrefix"?"#)
        #expect(evdev.position == "3:43")
        #expect(evdev.path == "$.evdevPassthrough.pcieBusprefix")

        let vm = try singleError(Sample.vms([#"{"name": "a", "type": "qemu", "socket": "/s", "sockt": "/t"}"#]))
        #expect(vm.message == #"unknown key "sockt"; did you mean "socket"?"#)
        #expect(vm.path == "$.vms[0].sockt")
    }
}

@Suite("Validation: value types and ranges")
struct ValueValidationTests {
    @Test("a string field given a number")
    func stringGivenNumber() throws {
        let d = try singleError(Sample.usbEntry(#"{"vendorId": "046d", "description": 5}"#))
        #expect(d.message == "expected a string, found number 5")
        #expect(d.position == "4:41")
        #expect(d.path == "$.usbPassthrough[0].allow[0].description")
    }

    @Test("a boolean field given a string")
    func boolGivenString() throws {
        let d = try singleError(Sample.usbEntry(#"{"vendorId": "046d", "disable": "yes"}"#))
        #expect(d.message == #"expected true or false, found string "yes""#)
        #expect(d.position == "4:37")
        #expect(d.path == "$.usbPassthrough[0].allow[0].disable")
    }

    @Test("allow given an object instead of an array")
    func arrayGivenObject() throws {
        let d = try singleError(Sample.ruleSet(#"{"targetVm": "vm1", "allow": {}}"#))
        #expect(d.message == "expected an array, found object")
        #expect(d.position == "4:34")
        #expect(d.path == "$.usbPassthrough[0].allow")
    }

    @Test("entries that are not objects")
    func entryNotObject() throws {
        let all = errors(Sample.ruleSet(#"{"targetVm": "vm1", "allow": [1], "deny": [null]}"#))
        #expect(all.map(\.message) == ["expected an object (an allow entry), found number 1",
                                       "expected an object (a deny entry), found null"])
        #expect(all.map(\.position) == ["4:35", "4:48"])
        #expect(all.map(\.path) == ["$.usbPassthrough[0].allow[0]", "$.usbPassthrough[0].deny[0]"])
    }

    @Test("vms given an object; a VM given a string")
    func vmsWrongTypes() throws {
        let d = try singleError(#"{"vms": {}}"#)
        #expect(d.message == "expected an array, found object")
        #expect(d.position == "1:9")
        #expect(d.path == "$.vms")
        let vm = try singleError(#"{"vms": ["vm1"]}"#)
        #expect(vm.message == #"expected an object (a VM), found string "vm1""#)
        #expect(vm.path == "$.vms[0]")
    }

    @Test("the top level must be an object")
    func topLevelNotObject() throws {
        let array = try singleError("[]")
        #expect(array.message == "expected an object (the configuration), found array")
        #expect(array.position == "1:1")
        #expect(array.path == "$")
        let string = try singleError("  \"vms\"")
        #expect(string.message == #"expected an object (the configuration), found string "vms""#)
        #expect(string.position == "1:3")
        #expect(try singleError("null").message == "expected an object (the configuration), found null")
    }

    @Test("a class above 255")
    func classOutOfRange() throws {
        let d = try singleError(Sample.usbEntry(#"{"interfaceClass": 256}"#))
        #expect(d.message == "256 is out of range: expected an integer from 0 to 255")
        #expect(d.position == "4:24")
        #expect(d.path == "$.usbPassthrough[0].allow[0].interfaceClass")
    }

    @Test("a negative class")
    func classNegative() throws {
        let d = try singleError(Sample.usbEntry(#"{"deviceClass": -1}"#))
        #expect(d.message == "-1 is out of range: expected an integer from 0 to 255")
        #expect(d.position == "4:21")
        #expect(d.path == "$.usbPassthrough[0].allow[0].deviceClass")
    }

    @Test("a fractional class")
    func classFractional() throws {
        let d = try singleError(Sample.usbEntry(#"{"interfaceSubclass": 3.5}"#))
        #expect(d.message == "expected an integer from 0 to 255, found non-integer number 3.5")
        #expect(d.position == "4:27")
        let exponent = try singleError(Sample.pciEntry(#"{"deviceProgIf": 1e2}"#))
        #expect(exponent.message == "expected an integer from 0 to 255, found non-integer number 1e2")
        #expect(exponent.path == "$.pciPassthrough[0].allow[0].deviceProgIf")
    }

    @Test("a class written as a string")
    func classAsString() throws {
        let d = try singleError(Sample.usbEntry(#"{"interfaceProtocol": "3"}"#))
        #expect(d.message == #"expected an integer from 0 to 255, found string "3""#)
        #expect(d.position == "4:27")
    }

    @Test("bus and port ranges")
    func busAndPortRanges() throws {
        let all = errors(Sample.usbEntry(#"{"bus": 256, "port": -1}"#))
        #expect(all.map(\.message) == ["256 is out of range: expected an integer from 0 to 255",
                                       "-1 is out of range: expected an integer from 0 to 255"])
        #expect(all.map(\.position) == ["4:13", "4:26"])
        #expect(all.map(\.path) == ["$.usbPassthrough[0].allow[0].bus", "$.usbPassthrough[0].allow[0].port"])
        let config = try ConfigurationLoader.parse(Sample.usbEntry(#"{"bus": 0, "port": 255}"#))
        #expect(config.usbPassthrough.first?.allow.first?.bus == 0)
        #expect(config.usbPassthrough.first?.allow.first?.port == 255)
    }

    @Test("huge numbers are out of range, not a crash")
    func hugeNumbers() throws {
        let d = try singleError(Sample.usbEntry(#"{"bus": 99999999999999999999999}"#))
        #expect(d.message == "99999999999999999999999 is out of range: expected an integer from 0 to 255")
        #expect(d.position == "4:13")
        for text in ["9223372036854775807", "9223372036854775808", "-9223372036854775808", "-99999999999999999999"] {
            let e = try singleError(Sample.usbEntry("{\"port\": \(text)}"))
            #expect(e.message == "\(text) is out of range: expected an integer from 0 to 255")
        }
        let long = String(repeating: "9", count: 5000)
        let e = try singleError(Sample.usbEntry("{\"deviceClass\": \(long)}"))
        #expect(e.message == String(repeating: "9", count: 60) + "… is out of range: expected an integer from 0 to 255")
        let bigFloat = try singleError(Sample.usbEntry(#"{"deviceClass": 1e999999}"#))
        #expect(bigFloat.message == "expected an integer from 0 to 255, found non-integer number 1e999999")
    }
}

@Suite("Validation: IDs, addresses and patterns")
struct FormatValidationTests {
    @Test("hex ID forms: with or without 0x, any case, 1 to 4 digits")
    func hexIDForms() throws {
        #expect(parseHexID("046d") == 0x046d)
        #expect(parseHexID("0x046D") == 0x046d)
        #expect(parseHexID("0X046d") == 0x046d)
        #expect(parseHexID("46d") == 0x046d)
        #expect(parseHexID("D") == 0x000d)
        #expect(parseHexID("ffff") == 0xffff)
        #expect(parseHexID("0xFFFF") == 0xffff)
        let config = try ConfigurationLoader.parse(Sample.usbEntry(#"{"vendorId": "0x046D", "productId": "c52B"}"#))
        let rule = try #require(config.usbPassthrough.first?.allow.first)
        #expect(rule.vendorId == 0x046d)
        #expect(rule.productId == 0xc52b)
    }

    @Test("malformed hex IDs")
    func malformedHexIDs() throws {
        for bad in ["", "0x", "xyz", "12345", "0x12345", " 046d", "046d ", "+46d", "-1", "0x-1", "٣", "046g"] {
            #expect(parseHexID(bad) == nil, "\(bad)")
        }
        let d = try singleError(Sample.usbEntry(#"{"vendorId": "xyz"}"#))
        #expect(d.message == #"invalid ID "xyz": expected 1 to 4 hex digits, optionally prefixed with 0x, like "046d""#)
        #expect(d.position == "4:18")
        #expect(d.path == "$.usbPassthrough[0].allow[0].vendorId")
        let long = try singleError(Sample.pciEntry(#"{"deviceId": "0x12345"}"#))
        #expect(long.message == #"invalid ID "0x12345": expected 1 to 4 hex digits, optionally prefixed with 0x, like "046d""#)
        #expect(long.path == "$.pciPassthrough[0].allow[0].deviceId")
    }

    @Test("an ID written as a number")
    func hexIDAsNumber() throws {
        let d = try singleError(Sample.usbEntry(#"{"vendorId": 1133}"#))
        #expect(d.message == #"expected a hex string like "046d", found number 1133"#)
        #expect(d.position == "4:18")
        #expect(d.path == "$.usbPassthrough[0].allow[0].vendorId")
    }

    @Test("PCI addresses are canonicalised to lower-case dddd:bb:dd.f")
    func pciAddressCanonical() throws {
        #expect(try parsePCIAddress("0000:00:14.3").get() == "0000:00:14.3")
        #expect(try parsePCIAddress("00:14.3").get() == "0000:00:14.3")
        #expect(try parsePCIAddress("3B:00.1").get() == "0000:3b:00.1")
        #expect(try parsePCIAddress("1:2:3.4").get() == "0001:02:03.4")
        #expect(try parsePCIAddress("ABCD:EF:1f.7").get() == "abcd:ef:1f.7")
        let config = try ConfigurationLoader.parse(Sample.pciEntry(#"{"address": "3B:00.1"}"#))
        #expect(config.pciPassthrough.first?.allow.first?.address == "0000:3b:00.1")
    }

    @Test("a PCI domain past ffff (Intel VMD's 10000 and up) is taken as the kernel names it")
    func pciAddressWideDomain() throws {
        #expect(try parsePCIAddress("10000:E0:06.0").get() == "10000:e0:06.0")
        #expect(try parsePCIAddress("00000:00:14.3").get() == "0000:00:14.3")
        #expect(try parsePCIAddress("ffffffff:00:00.0").get() == "ffffffff:00:00.0")
    }

    @Test("malformed PCI addresses")
    func pciAddressMalformed() throws {
        let format = #"expected "dddd:bb:dd.f" or "bb:dd.f" in hex, like "0000:00:14.3""#
        let cases: [(String, String)] = [
            ("0000:00:20.0", "device 20 is out of range: expected 00 to 1f"),
            ("00:14.8", "function 8 is out of range: expected 0 to 7"),
            ("00:14", format),
            ("14.3", format),
            ("100000000:00:14.3", format),
            ("0000:100:00.0", format),
            ("0000:00:14.3.1", format),
            ("0:0:0:0.0", format),
            ("00:14.", format),
            ("gg:00.0", format),
            ("", format),
        ]
        for (address, problem) in cases {
            let d = try singleError(Sample.pciEntry("{\"address\": \"\(address)\"}"))
            #expect(d.message == "invalid PCI address \"\(address)\": \(problem)")
            #expect(d.position == "4:17")
            #expect(d.path == "$.pciPassthrough[0].allow[0].address")
        }
    }

    @Test("a PCI address given a number")
    func pciAddressNotString() throws {
        let d = try singleError(Sample.pciEntry(#"{"address": 5}"#))
        #expect(d.message == #"expected a PCI address string like "0000:00:14.3", found number 5"#)
        #expect(d.position == "4:17")
    }

    @Test("a regular expression that does not compile")
    func invalidRegex() throws {
        let d = try singleError(Sample.usbEntry(#"{"productName": ".*("}"#))
        #expect(d.message == #"invalid regular expression ".*(": expected ')'"#)
        #expect(d.position == "4:21")
        #expect(d.path == "$.usbPassthrough[0].allow[0].productName")
        let vendor = try singleError(Sample.usbEntry(#"{"vendorName": "[a-"}"#))
        #expect(vendor.message == #"invalid regular expression "[a-": expected ']'"#)
        #expect(vendor.path == "$.usbPassthrough[0].allow[0].vendorName")
    }

    @Test("a pattern that repeats a repeating group is refused (its match can take exponential time on a name a device chooses); other patterns are kept")
    func nestedRepetition() throws {
        let d = try singleError(Sample.usbEntry(#"{"productName": "^(\\w+\\s?)*$"}"#))
        #expect(d.message.hasPrefix(#"regular expression "^(\\w+\\s?)*$" repeats a group that itself repeats without bound ((\w+\s?)*)"#), "\(d.message)")
        #expect(d.position == "4:21")
        #expect(d.path == "$.usbPassthrough[0].allow[0].productName")
        for risky in [#"(a+)+b"#, #"(?:x*y?)*"#, #"((ab)*c)+"#, #"(a|b+){1,}"#, #"(\d+){5}"#, #"([a-z]+ ?){2,10}"#, #"(a+)*?"#, #"(a{2,})+"#] {
            #expect(NamePattern.backtrackingRisk(risky) != nil, "\(risky)")
        }
        for fine in [#"(ab)+"#, #"(a+)?"#, #"(a+){2}"#, #"\(a+\)*"#, #"[(a+)]*"#, #"(?:usb|hid)+ mouse"#, #"a+b*c+"#,
                     #"(\N{LATIN SMALL LETTER A}x)+"#, #"([+*])+"#, #"(a{2})+"#, #"^Logitech"#] {
            #expect(NamePattern.backtrackingRisk(fine) == nil, "\(fine)")
        }
        // (Swift's Regex on the refused pattern: 24 letters and a stop took seconds, or more.)
    }

    @Test("a repeated choice whose alternatives can begin with the same character is refused: it can take exponential time")
    func overlappingChoice() throws {
        let d = try singleError(Sample.usbEntry(#"{"productName": "(.|\\s)*Keyboard"}"#))
        #expect(d.message.hasPrefix(#"regular expression "(.|\\s)*Keyboard" repeats a choice whose alternatives . and \s both match a space ((.|\s)*)"#), "\(d.message)")
        #expect(d.position == "4:21")
        #expect(d.path == "$.usbPassthrough[0].allow[0].productName")
        // Each can split a name that almost matches in exponentially many ways.
        for risky in [#"^(\w|_)+$"#, #"(a|A)*b"#, #"(?:x|[a-z])+!"#, #"((\d|[0-9])z)*"#, #"(?<n>é|\p{L}){4,}"#, #"(ab|a)*c"#,
                      #"(?i:\s|\N{U+A0})+"#, #"(?:y|\x{79})+"#] {
            #expect(NamePattern.backtrackingRisk(risky) != nil, "\(risky)")
        }
        for fine in [#"(\w|-)+"#, #"([a-z]|[0-9])+"#, #"(?:usb|hid)+ mouse"#, #"(.|\n)*"#, #"(a|a)"#, #"(a|a){2}"#,
                     #"(\ba|a)+"#, #"(^a|a)*"#, #"((a)|a)*"#, #"(?=a|a)b"#, #"(?i)(x|y)+"#, #"[(a|a)]*"#, #"\(a|a\)*"#,
                     #"(?#a|a)x*"#, #"(?<a>x|y)+\k<a>"#] {
            #expect(NamePattern.backtrackingRisk(fine) == nil, "\(fine)")
        }
    }

    @Test("an empty name pattern is refused: it would match every device with a name")
    func emptyPattern() throws {
        let d = try singleError(Sample.usbEntry(#"{"productName": "", "description": "camera"}"#))
        #expect(d.message == #"an empty pattern would match every device with a name: give part of the name, or leave "productName" out"#)
        #expect(d.path == "$.usbPassthrough[0].allow[0].productName")
    }

    @Test("a character name that names no character is an error, not a pattern that never matches")
    func unknownCharacterName() throws {
        // JSON "\\N{NOPE}" is the pattern \N{NOPE}, which Swift's Regex compiles and never matches.
        let d = try singleError(Sample.usbEntry(#"{"productName": "Mouse\\N{NOPE}"}"#))
        #expect(d.message == #"invalid regular expression "Mouse\\N{NOPE}": \N{NOPE} names no Unicode character: "# +
                #"expected a character's name, as in \N{LATIN SMALL LETTER E WITH ACUTE}, or its code point, as in \N{U+E9}"#)
        #expect(d.position == "4:21")
        #expect(d.path == "$.usbPassthrough[0].allow[0].productName")
        // A name only Unicode's aliases know never matches in Swift's Regex either.
        let alias = try singleError(Sample.usbEntry(#"{"vendorName": "a[\\N{LINE FEED}]"}"#))
        #expect(alias.message.hasPrefix(#"invalid regular expression "a[\\N{LINE FEED}]": \N{LINE FEED} names no"#))
        // Real names, loosely written, and code points are kept, and match.
        for source in [#"caf\N{LATIN SMALL LETTER E WITH ACUTE}"#, #"caf\N{latin_small_letter_e-with acute}"#,
                       #"caf\N{U+E9}"#, #"[\N{CJK UNIFIED IDEOGRAPH-4E00}x]"#] {
            let pattern = try NamePattern(source)
            #expect(pattern.matches("Café Mouse") != source.contains("4E00"), "\(source)")
        }
        // An escaped backslash before N is no name.
        #expect(try NamePattern(#"a\\N{NOPE}"#).matches(#"a\N{NOPE}"#))
        #expect(CharacterNames.namedEscapes(in: #"a\\N{NOPE}b\N{SPACE}[\N{U+41}]"#) == ["SPACE", "U+41"])
    }

    @Test("name patterns are case-insensitive and match anywhere")
    func namePatterns() throws {
        let config = try ConfigurationLoader.parse(Sample.usbEntry(#"{"vendorName": "logitech", "productName": "^USB .*receiver$"}"#))
        let rule = try #require(config.usbPassthrough.first?.allow.first)
        #expect(rule.vendorName?.matches("Logitech, Inc.") == true)
        #expect(rule.productName?.matches("usb unifying RECEIVER") == true)
        #expect(rule.productName?.matches("A USB receiver") == false)
    }
}

@Suite("Validation: VMs and references")
struct ReferenceValidationTests {
    @Test("a targetVm that no VM defines lists the defined VMs")
    func unknownTargetVm() throws {
        let d = try singleError(Sample.ruleSet(#"{"targetVm": "gui", "allow": [{"vendorId": "046d"}]}"#))
        #expect(d.message == #"unknown VM "gui" in targetVm (defined VMs: "vm1", "net")"#)
        #expect(d.position == "4:18")
        #expect(d.path == "$.usbPassthrough[0].targetVm")
    }

    @Test("an unknown targetVm close to a defined one is suggested")
    func unknownTargetVmSuggestion() throws {
        let d = try singleError(Sample.ruleSet(#"{"targetVm": "VM1", "allow": [{"vendorId": "046d"}]}"#))
        #expect(d.message == #"unknown VM "VM1" in targetVm (defined VMs: "vm1", "net"); did you mean "vm1"?"#)
    }

    @Test("a targetVm when no VMs are defined at all")
    func targetVmWithoutVMs() throws {
        let d = try singleError(#"{"usbPassthrough": [{"targetVm": "vm1", "allow": [{"vendorId": "046d"}]}]}"#)
        #expect(d.message == #"unknown VM "vm1" in targetVm (no VMs are defined; add them under "vms")"#)
        #expect(d.position == "1:34")
        #expect(d.path == "$.usbPassthrough[0].targetVm")
    }

    @Test("two VMs with one name: the second is reported, with the first one's line")
    func duplicateVMName() throws {
        let d = try singleError(Sample.vms([
            #"{"name": "a", "type": "qemu", "socket": "/s1"}"#,
            #"{"name": "a", "type": "crosvm", "socket": "/s2"}"#,
        ]))
        #expect(d.message == #"duplicate VM name "a"; the first VM with this name is on line 3"#)
        #expect(d.position == "4:14")
        #expect(d.path == "$.vms[1].name")
    }

    @Test("two VMs with one socket: an error at the second one's socket, naming the first VM and its line")
    func duplicateSocket() throws {
        let d = try singleError(Sample.vms([
            #"{"name": "vm1", "type": "qemu", "socket": "/run/vm.qmp"}"#,
            #"{"name": "vm2", "type": "crosvm", "socket": "/run/vm.qmp"}"#,
            #"{"name": "vm3", "type": "qemu", "socket": "/run/vm3.qmp"}"#,
        ]), file: "a.conf")
        #expect(d.description == #"a.conf:4:49: error: VM socket "/run/vm.qmp" is already the socket of VM "vm1" (line 3) (at $.vms[1].socket)"#)
        // The first VM's name is wrong: the message gives its line alone.
        let unnamed = errors(Sample.vms([
            #"{"name": "", "type": "qemu", "socket": "/run/vm.qmp"}"#,
            #"{"name": "vm2", "type": "qemu", "socket": "/run/vm.qmp"}"#,
        ]))
        #expect(unnamed.map(\.message) == ["VM name must not be empty", #"VM socket "/run/vm.qmp" is already the socket of the VM on line 3"#])
    }

    @Test("an empty VM name")
    func emptyVMName() throws {
        let d = try singleError(Sample.vms([#"{"name": "", "type": "qemu", "socket": "/s"}"#]))
        #expect(d.message == "VM name must not be empty")
        #expect(d.position == "3:14")
        #expect(d.path == "$.vms[0].name")
    }

    @Test("an empty VM socket")
    func emptyVMSocket() throws {
        let d = try singleError(Sample.vms([#"{"name": "a", "type": "qemu", "socket": ""}"#]))
        #expect(d.message == "VM socket must not be empty")
        #expect(d.position == "3:45")
        #expect(d.path == "$.vms[0].socket")
    }

    @Test("a VM socket with a NUL character, or longer than a Unix socket's 107 bytes; the API's socket too")
    func badSocketPaths() throws {
        let nul = try singleError(Sample.vms([#"{"name": "a", "type": "qemu", "socket": "/run/q\u0000x"}"#]))
        #expect(nul.message == #"VM socket must not contain a NUL character (\u0000)"#)
        #expect(nul.path == "$.vms[0].socket")
        let long = "/run/" + String(repeating: "v", count: 103)
        let tooLong = try singleError(Sample.vms([#"{"name": "a", "type": "qemu", "socket": "\#(long)"}"#]))
        #expect(tooLong.message == "VM socket path is 108 bytes long; a Unix socket's path has at most 107")
        #expect(try ConfigurationLoader.parse(Sample.vms([#"{"name": "a", "type": "qemu", "socket": "\#(long.dropLast())"}"#])).vms.count == 1)
        let relative = try singleError(Sample.vms([#"{"name": "a", "type": "qemu", "socket": "vm1.qmp"}"#]))
        #expect(relative.message == #"VM socket must be an absolute path, found "vm1.qmp""#)
        let api = try singleError(#"{"general": {"api": {"unixSocket": "\#(long)"}}}"#)
        #expect(api.message == "unixSocket path is 108 bytes long; a Unix socket's path has at most 107")
        #expect(api.path == "$.general.api.unixSocket")
    }

    @Test("a VM type other than qemu or crosvm")
    func unknownVMType() throws {
        let d = try singleError(Sample.vms([#"{"name": "a", "type": "kvm", "socket": "/s"}"#]))
        #expect(d.message == #"unknown VM type "kvm": expected "qemu" or "crosvm""#)
        #expect(d.position == "3:27")
        #expect(d.path == "$.vms[0].type")
        let upper = try singleError(Sample.vms([#"{"name": "a", "type": "QEMU", "socket": "/s"}"#]))
        #expect(upper.message == #"unknown VM type "QEMU": expected "qemu" or "crosvm"; did you mean "qemu"?"#)
        let number = try singleError(Sample.vms([#"{"name": "a", "type": 1, "socket": "/s"}"#]))
        #expect(number.message == "expected a string, found number 1")
    }

    @Test("a VM missing all its keys gets one error per key, at its brace")
    func missingVMKeys() throws {
        let all = errors(Sample.vms(["{}"]))
        #expect(all.map(\.message) == [
            #"missing required key "name" (the VM's name, used by targetVm)"#,
            #"missing required key "type" ("qemu" or "crosvm")"#,
            #"missing required key "socket" (the path of the VM's QMP or control socket)"#,
        ])
        #expect(all.allSatisfy { $0.position == "3:5" && $0.path == "$.vms[0]" })
    }

    @Test("a rule set without targetVm")
    func missingTargetVm() throws {
        let d = try singleError(Sample.ruleSet(#"{"allow": [{"vendorId": "046d"}]}"#))
        #expect(d.message == #"missing required key "targetVm" (the name of the VM the devices go to)"#)
        #expect(d.position == "4:5")
        #expect(d.path == "$.usbPassthrough[0]")
    }

    @Test("a targetVm set to null counts as missing")
    func nullTargetVm() throws {
        let d = try singleError(Sample.ruleSet(#"{"targetVm": null, "allow": [{"vendorId": "046d"}]}"#))
        #expect(d.message == #""targetVm" is required (the name of the VM the devices go to); found null"#)
        #expect(d.position == "4:18")
        #expect(d.path == "$.usbPassthrough[0].targetVm")
    }

    @Test("a targetVm that is not a string")
    func targetVmNotString() throws {
        let d = try singleError(Sample.ruleSet(#"{"targetVm": 1}"#))
        #expect(d.message == "expected a string, found number 1")
        #expect(d.position == "4:18")
    }

    @Test("a PCI rule set for a crosvm VM")
    func pciRuleSetForCrosvm() throws {
        let d = try singleError(Sample.ruleSet(#"{"targetVm": "net", "allow": [{"vendorId": "8086"}]}"#, key: "pciPassthrough"))
        #expect(d.message
            == #"crosvm does not support PCI hot-plug; VM "net" (line 2) is a crosvm VM: target a QEMU VM, or disable this rule set"#)
        #expect(d.position == "4:18")
        #expect(d.path == "$.pciPassthrough[0].targetVm")
    }

    @Test("a disabled PCI rule set for a crosvm VM is accepted; USB rule sets for crosvm are fine")
    func disabledPCIRuleSetForCrosvm() throws {
        let config = try ConfigurationLoader.parse(
            Sample.ruleSet(#"{"targetVm": "net", "allow": [{"vendorId": "8086"}], "disable": true}"#, key: "pciPassthrough"))
        #expect(config.pciPassthrough.first?.disable == true)
        let usb = try ConfigurationLoader.parse(Sample.ruleSet(#"{"targetVm": "net", "allow": [{"vendorId": "8086"}]}"#))
        #expect(usb.usbPassthrough.first?.targetVm == "net")
    }

    @Test("evdev passthrough for a crosvm VM")
    func evdevForCrosvm() throws {
        let d = try singleError(Sample.evdev(#"{"targetVm": "net"}"#))
        #expect(d.message
            == #"evdev passthrough needs QEMU; VM "net" (line 2) is a crosvm VM: target a QEMU VM, or set "disable": true"#)
        #expect(d.position == "3:36")
        #expect(d.path == "$.evdevPassthrough.targetVm")
    }

    @Test("disabled evdev passthrough: crosvm target and missing targetVm are accepted")
    func disabledEvdev() throws {
        let crosvm = try ConfigurationLoader.parse(Sample.evdev(#"{"disable": true, "targetVm": "net"}"#))
        #expect(crosvm.evdevPassthrough?.targetVm == "net")
        #expect(crosvm.evdevPassthrough?.disable == true)
        let noTarget = try ConfigurationLoader.parse(Sample.evdev(#"{"disable": true}"#))
        #expect(noTarget.evdevPassthrough == EvdevPassthrough(disable: true, pcieBusPrefix: nil, targetVm: "",
                                                               location: .init(line: 3, column: 23, path: "$.evdevPassthrough")))
        // The reference's spelling: "enable" (before, an unknown key).
        #expect(try ConfigurationLoader.parse(Sample.evdev(#"{"enable": false}"#)).evdevPassthrough?.disable == true)
        let on = try ConfigurationLoader.parse(Sample.evdev(#"{"enable": true, "targetVm": "vm1", "pcieBusPrefix": "rp"}"#))
        #expect(on.evdevPassthrough?.disable == false && on.evdevPassthrough?.targetVm == "vm1")
    }

    @Test("enabled evdev passthrough needs a targetVm")
    func evdevMissingTargetVm() throws {
        let d = try singleError(Sample.evdev(#"{"pcieBusPrefix": "rp"}"#))
        #expect(d.message == #"missing required key "targetVm" (the QEMU VM that gets the input devices)"#)
        #expect(d.position == "3:23")
        #expect(d.path == "$.evdevPassthrough")
    }

    @Test("evdevPassthrough must be an object or an array")
    func evdevNotObject() throws {
        let d = try singleError(Sample.evdev("\"vm1\""))
        #expect(d.message == "expected an object (the evdev passthrough settings, or an array of evdev rule sets), found string \"vm1\"")
        #expect(d.position == "3:23")
        #expect(d.path == "$.evdevPassthrough")
    }

    @Test("evdev passthrough to a QEMU VM loads")
    func evdevToQEMU() throws {
        let config = try ConfigurationLoader.parse(Sample.evdev(#"{"targetVm": "vm1", "pcieBusPrefix": "rp"}"#))
        #expect(config.evdevPassthrough == EvdevPassthrough(disable: false, pcieBusPrefix: "rp", targetVm: "vm1",
                                                             location: .init(line: 3, column: 23, path: "$.evdevPassthrough")))
        #expect(config.summary.contains("evdev passthrough to vm1"))
    }
}

@Suite("Validation: entries, null and reporting")
struct EntryAndReportingTests {
    @Test("an entry with only description and disable would match every device")
    func entryWithoutMatchingField() throws {
        let d = try singleError(Sample.usbEntry(#"{"description": "everything", "disable": true}"#))
        #expect(d.message == "entry has no matching field; it would match every device (use one or more of: vendorId, productId, vendorName, productName, bus, port, interfaceClass, interfaceSubclass, interfaceProtocol, deviceClass, deviceSubclass, deviceProtocol, removable)")
        #expect(d.position == "4:5")
        #expect(d.path == "$.usbPassthrough[0].allow[0]")
    }

    @Test("an empty PCI deny entry would match every device")
    func emptyPCIEntry() throws {
        let d = try singleError(Sample.pciEntry("{}", list: "deny"))
        #expect(d.message == "entry has no matching field; it would match every device (use one or more of: address, vendorId, deviceId, deviceClass, deviceSubclass, deviceProgIf)")
        #expect(d.position == "4:5")
        #expect(d.path == "$.pciPassthrough[0].deny[0]")
    }

    @Test("an entry whose matching fields are all null is empty")
    func entryWithOnlyNullFields() throws {
        let d = try singleError(Sample.usbEntry(#"{"vendorId": null, "description": "x"}"#))
        #expect(d.message.hasPrefix("entry has no matching field; it would match every device"))
        #expect(d.position == "4:5")
    }

    @Test("errors in deny entries carry the deny path")
    func denyEntryPath() throws {
        let d = try singleError(Sample.usbEntry(#"{"vendorId": 5}"#, list: "deny"))
        #expect(d.path == "$.usbPassthrough[0].deny[0].vendorId")
        #expect(d.position == "4:18")
    }

    @Test("null means the key is absent, at every level")
    func nullMeansAbsent() throws {
        let empty = try ConfigurationLoader.parse(
            #"{"usbPassthrough": null, "pciPassthrough": null, "evdevPassthrough": null, "vms": null}"#)
        #expect(empty == Configuration())

        let config = try ConfigurationLoader.parse(Sample.ruleSet(
            #"{"targetVm": "vm1", "description": null, "disable": null, "deny": null, "allow": [{"vendorId": "046d", "productId": null, "vendorName": null, "bus": null, "interfaceClass": null, "description": null, "disable": null}]}"#))
        let set = try #require(config.usbPassthrough.first)
        #expect(set.description == nil && set.disable == false && set.deny.isEmpty)
        #expect(set.allow == [USBRule(vendorId: 0x046d, location: .init(line: 4, column: 87, path: "$.usbPassthrough[0].allow[0]"))])

        let evdev = try ConfigurationLoader.parse(Sample.evdev(#"{"targetVm": "vm1", "pcieBusPrefix": null, "disable": null}"#))
        #expect(evdev.evdevPassthrough?.pcieBusPrefix == nil)
        #expect(evdev.evdevPassthrough?.disable == false)
    }

    @Test("locations of rule sets, entries and VMs")
    func locations() throws {
        let text = Sample.usbEntry(#"{"vendorId": "046d"}"#)
        let config = try ConfigurationLoader.parse(text)
        #expect(config.usbPassthrough.first?.location == .init(line: 3, column: 22, path: "$.usbPassthrough[0]"))
        #expect(config.usbPassthrough.first?.allow.first?.location == .init(line: 4, column: 5, path: "$.usbPassthrough[0].allow[0]"))
        #expect(config.vms.map(\.location) == [
            .init(line: 2, column: 11, path: "$.vms[0]"),
            .init(line: 2, column: 71, path: "$.vms[1]"),
        ])
        #expect(position(of: #"{"name": "net""#, in: text) == "2:71")
        #expect(config.vms.first?.location?.description == "2:11")
    }

    @Test("all errors are reported at once, in file order")
    func multipleErrorsAtOnce() throws {
        let text = """
            {
              "usbPassthrough": [
                {
                  "targetVm": "gui",
                  "allow": [
                    {"vendorID": "046d"},
                    {"interfaceClass": 300, "vendorId": 1133},
                    {"description": "anything"},
                  ],
                },
              ],
              "pciPassthrough": [{"targetVm": "net", "allow": [{"address": "00:14.9"}]}],
              "vms": [
                {"name": "vm1", "type": "qemu", "socket": "/s1"},
                {"name": "net", "type": "crosvm", "socket": "/s2"},
                {"name": "vm1", "type": "xen", "socket": "/s3"},
              ],
            }
            """
        let all = errors(text, file: "/etc/vhotplug.conf")
        #expect(all.map(\.description) == [
            #"/etc/vhotplug.conf:4:19: error: unknown VM "gui" in targetVm (defined VMs: "vm1", "net") (at $.usbPassthrough[0].targetVm)"#,
            #"/etc/vhotplug.conf:6:10: error: unknown key "vendorID"; did you mean "vendorId"? (at $.usbPassthrough[0].allow[0].vendorID)"#,
            #"/etc/vhotplug.conf:7:28: error: 300 is out of range: expected an integer from 0 to 255 (at $.usbPassthrough[0].allow[1].interfaceClass)"#,
            #"/etc/vhotplug.conf:7:45: error: expected a hex string like "046d", found number 1133 (at $.usbPassthrough[0].allow[1].vendorId)"#,
            #"/etc/vhotplug.conf:8:9: error: entry has no matching field; it would match every device (use one or more of: vendorId, productId, vendorName, productName, bus, port, interfaceClass, interfaceSubclass, interfaceProtocol, deviceClass, deviceSubclass, deviceProtocol, removable) (at $.usbPassthrough[0].allow[2])"#,
            #"/etc/vhotplug.conf:12:35: error: crosvm does not support PCI hot-plug; VM "net" (line 15) is a crosvm VM: target a QEMU VM, or disable this rule set (at $.pciPassthrough[0].targetVm)"#,
            #"/etc/vhotplug.conf:12:64: error: invalid PCI address "00:14.9": function 9 is out of range: expected 0 to 7 (at $.pciPassthrough[0].allow[0].address)"#,
            #"/etc/vhotplug.conf:16:14: error: duplicate VM name "vm1"; the first VM with this name is on line 14 (at $.vms[2].name)"#,
            #"/etc/vhotplug.conf:16:29: error: unknown VM type "xen": expected "qemu" or "crosvm" (at $.vms[2].type)"#,
        ])
        for d in all {
            #expect(d.file == "/etc/vhotplug.conf")
        }
    }

    @Test("Diagnostic descriptions: with a path, without one, and for the whole file")
    func diagnosticDescription() {
        #expect(Diagnostic(file: "a.conf", line: 3, column: 7, path: "$.vms[0].name", message: "bad").description
            == "a.conf:3:7: error: bad (at $.vms[0].name)")
        #expect(Diagnostic(file: "a.conf", line: 3, column: 7, path: "", message: "bad").description
            == "a.conf:3:7: error: bad")
        #expect(Diagnostic(file: "a.conf", line: 0, column: 0, path: "", message: "cannot open").description
            == "a.conf: error: cannot open")
    }

    @Test("ConfigurationError prints one diagnostic per line")
    func configurationErrorDescription() {
        let error = ConfigurationError(diagnostics: [
            Diagnostic(file: "f", line: 1, column: 2, path: "$", message: "one"),
            Diagnostic(file: "f", line: 3, column: 4, path: "", message: "two"),
        ])
        #expect(error.description == "f:1:2: error: one (at $)\nf:3:4: error: two")
        // HotplugConfig has no Foundation (the daemon's memory): "\(error)" is the text.
        #expect("\(error)" == error.description)
    }

    @Test("the file name given to parse appears in diagnostics")
    func fileNameInDiagnostics() throws {
        let all = errors("[]", file: "/etc/vhotplug.conf")
        #expect(all.first?.description == "/etc/vhotplug.conf:1:1: error: expected an object (the configuration), found array (at $)")
    }
}
