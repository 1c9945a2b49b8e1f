import JSONKit
import Testing
@testable import HotplugConfig

@Suite("Configuration: usbAuthorization")
struct AuthorizationConfigTests {
    @Test("enable, deauthorizeUnmatched and hostAllow entries load, with their locations")
    func loads() throws {
        let text = """
            {
              "usbAuthorization": {"enable": true, "deauthorizeUnmatched": true,
                "hostAllow": [{"vendorId": "046d", "productId": "c52b"}, {"interfaceClass": 9, "description": "hubs"}]},
            }
            """
        let config = try ConfigurationLoader.parse(text)
        let a = try #require(config.activeUSBAuthorization)
        #expect(a.enable && a.deauthorizeUnmatched)
        #expect(a.hostAllow.count == 2)
        #expect(a.hostAllow[0].vendorId == 0x046d && a.hostAllow[0].productId == 0xc52b)
        #expect(a.hostAllow[1].interfaceClass == 9 && a.hostAllow[1].description == "hubs")
        #expect(a.hostAllow[0].location == SourceLocation(line: 3, column: 19, path: "$.usbAuthorization.hostAllow[0]"))
        #expect(config.summary.hasSuffix(", USB authorization on (2 hostAllow entries, unmatched de-authorized)"))
    }

    @Test("a hostAllow entry may match on removable alone (the host keeps its built-in devices)")
    func hostAllowRemovable() throws {
        let config = try ConfigurationLoader.parse(#"{"usbAuthorization": {"enable": true, "hostAllow": [{"removable": ["fixed"]}]}}"#)
        #expect(config.activeUSBAuthorization?.hostAllow.first?.removable == ["fixed"])
    }

    @Test("absent or enable false: no authorization in force")
    func offByDefault() throws {
        #expect(try ConfigurationLoader.parse("{}").activeUSBAuthorization == nil)
        let off = try ConfigurationLoader.parse(#"{"usbAuthorization": {"hostAllow": [{"vendorId": "1"}]}}"#)
        #expect(off.usbAuthorization?.hostAllow.count == 1)
        #expect(off.activeUSBAuthorization == nil)
        #expect(off.summary.hasSuffix(", USB authorization off"))
    }

    @Test("a typo in a usbAuthorization key: where, and did you mean")
    func typo() throws {
        let d = try singleError(#"{"usbAuthorization": {"enabled": true}}"#)
        #expect(d.message == #"unknown key "enabled"; did you mean "enable"?"#)
        #expect(d.position == "1:23")
        #expect(d.path == "$.usbAuthorization.enabled")
    }

    @Test("hostAllow entries are validated as USB allow entries")
    func entries() throws {
        let text = """
            {"usbAuthorization": {"enable": true, "hostAllow": [
              {"vendorId": "zz"},
              {"deviceId": "1234"},
              {"description": "everything"},
              {"vendorName": "("},
              "046d",
            ]}}
            """
        let all = errors(text)
        #expect(all.map(\.path) == [
            "$.usbAuthorization.hostAllow[0].vendorId",
            "$.usbAuthorization.hostAllow[1].deviceId",
            "$.usbAuthorization.hostAllow[2]",
            "$.usbAuthorization.hostAllow[3].vendorName",
            "$.usbAuthorization.hostAllow[4]",
        ])
        #expect(all.map(\.position) == ["2:16", "3:4", "4:3", "5:18", "6:3"])
        #expect(all[0].message.hasPrefix(#"invalid ID "zz": expected 1 to 4 hex digits"#))
        #expect(all[1].message == #"unknown key "deviceId": it is a PCI key, not valid in a USB entry; did you mean "productId"?"#)
        #expect(all[2].message.hasPrefix("entry has no matching field; it would match every device"))
        #expect(all[3].message.hasPrefix(#"invalid regular expression "(""#))
        #expect(all[4].message == #"expected an object (a hostAllow entry (a USB device the host may use)), found string "046d""#)
    }

    @Test("wrong types: the object, its booleans, hostAllow")
    func types() throws {
        let notObject = try singleError(#"{"usbAuthorization": true}"#)
        #expect(notObject.message.hasPrefix("expected an object (the USB authorization settings"))
        #expect(notObject.path == "$.usbAuthorization")
        let all = errors(#"{"usbAuthorization": {"enable": "yes", "deauthorizeUnmatched": 1, "hostAllow": {}}}"#)
        #expect(all.map(\.path) == ["$.usbAuthorization.enable", "$.usbAuthorization.deauthorizeUnmatched", "$.usbAuthorization.hostAllow"])
        #expect(all.map(\.message) == [#"expected true or false, found string "yes""#, "expected true or false, found number 1",
                                       "expected an array, found object"])
    }

    @Test("deauthorizeUnmatched without enable is an error")
    func deauthorizeNeedsEnable() throws {
        let d = try singleError(#"{"usbAuthorization": {"deauthorizeUnmatched": true}}"#)
        #expect(d.message == #""deauthorizeUnmatched" needs "enable": true (USB authorization is off)"#)
        #expect(d.path == "$.usbAuthorization.deauthorizeUnmatched")
    }

    @Test("hostAllow at the top level says where it belongs")
    func misplaced() throws {
        let d = try singleError(#"{"hostAllow": []}"#)
        #expect(d.message == #"unknown key "hostAllow": it is not a top-level key: put it inside "usbAuthorization""#)
    }
}
