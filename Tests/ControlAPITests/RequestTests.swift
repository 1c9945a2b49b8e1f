import ControlAPI
import DeviceModel
import JSONKit
import Testing

func decode(_ text: String) -> Result<APIRequest, APIRequestError> {
    APIRequest.decode(line: Array(text.utf8))
}

func failure(_ text: String) -> String? {
    if case .failure(let e) = decode(text) { return e.message }
    return nil
}

@Suite("ControlAPI: request decoding")
struct RequestTests {
    @Test("every action decodes; absent and null fields are not given")
    func actions() throws {
        #expect(try decode(#"{"action": "enable_notifications"}"#).get() == .enableNotifications)
        #expect(try decode(#"{"action": "usb_list"}"#).get() == .usbList(disconnected: nil, tag: nil))
        #expect(try decode(#"{"action": "usb_list", "disconnected": true, "tag": "cam"}"#).get() == .usbList(disconnected: true, tag: "cam"))
        #expect(try decode(#"{"action": "usb_list", "disconnected": null, "tag": null}"#).get() == .usbList(disconnected: nil, tag: nil))
        #expect(try decode(#"{"action": "usb_attach", "device_node": "/dev/bus/usb/001/004", "vm": "vm1"}"#).get()
            == .usbAttach(.deviceNode("/dev/bus/usb/001/004"), vm: "vm1"))
        #expect(try decode(#"{"action": "usb_detach", "vid": "046D", "pid": "0xc52b"}"#).get() == .usbDetach(.vidPid(0x046d, 0xc52b)))
        #expect(try decode(#"{"action": "usb_detach", "tag": "cam"}"#).get() == .usbDetach(.tag("cam")))
        #expect(try decode(#"{"action": "usb_suspend"}"#).get() == .usbSuspend(vm: nil))
        #expect(try decode(#"{"action": "usb_resume", "vm": "vm2"}"#).get() == .usbResume(vm: "vm2"))
        #expect(try decode(#"{"action": "pci_list", "disconnected": false}"#).get() == .pciList(disconnected: false, tag: nil))
        #expect(try decode(#"{"action": "pci_attach", "address": "01:00.0", "vm": "vm1"}"#).get() == .pciAttach(.address("0000:01:00.0"), vm: "vm1"))
        #expect(try decode(#"{"action": "pci_detach", "vid": "8086", "did": "a7a1"}"#).get() == .pciDetach(.vidDid(0x8086, 0xa7a1)))
        #expect(try decode(#"{"action": "pci_suspend", "vm": "vm1"}"#).get() == .pciSuspend(vm: "vm1"))
        #expect(try decode(#"{"action": "pci_resume"}"#).get() == .pciResume(vm: nil))
    }

    @Test("bus and port as integers (the CLI) or strings (the documentation)")
    func busPort() throws {
        #expect(try decode(#"{"action": "usb_attach", "bus": 3, "port": 2}"#).get() == .usbAttach(.busPort(3, 2), vm: nil))
        #expect(try decode(#"{"action": "usb_attach", "bus": "3", "port": "2"}"#).get() == .usbAttach(.busPort(3, 2), vm: nil))
        #expect(failure(#"{"action": "usb_attach", "bus": "three", "port": 2}"#)
            == #""bus": expected an integer from 0 to 65535 (a number or a decimal string), found "three""#)
        #expect(failure(#"{"action": "usb_attach", "bus": 3}"#) == #"usb_attach: "bus" and "port" go together"#)
        #expect(failure(#"{"action": "usb_attach", "bus": 3.5, "port": 1}"#)
            == #""bus": expected an integer from 0 to 65535 (a number or a decimal string), found 3.5"#)
    }

    @Test("errors: missing action, unknown action, wrong types, malformed JSON, no selector")
    func errors() {
        #expect(failure(#"{"vm": "vm1"}"#)?.hasPrefix(#"missing "action" (one of: enable_notifications, usb_list"#) == true)
        #expect(failure(#"{"action": "usb_frobnicate"}"#)?.hasPrefix(#"unknown action "usb_frobnicate" (known: "#) == true)
        #expect(failure(#"{"action": 5}"#) == #""action": expected a string, found number 5"#)
        #expect(failure(#"{"action": "usb_list", "disconnected": "yes"}"#) == #""disconnected": expected true or false, found string "yes""#)
        #expect(failure(#"{"action": "usb_list""#)?.hasPrefix("malformed JSON at column") == true)
        #expect(failure("[1, 2]") == #"expected a JSON object with an "action", found array"#)
        #expect(failure("\u{FF}") != nil)
        #expect(failure(#"{"action": "usb_attach"}"#) == #"usb_attach needs a device: "device_node", "bus" and "port", "vid" and "pid", or "tag""#)
        #expect(failure(#"{"action": "usb_attach", "tag": "cam", "vm": "vm1"}"#) == #"usb_attach: "vm" cannot be used with "tag""#)
        #expect(failure(#"{"action": "pci_attach", "tag": "gpu", "vm": "vm1"}"#) == #"pci_attach: "vm" cannot be used with "tag""#)
        #expect(failure(#"{"action": "usb_detach", "vid": "zz", "pid": "1"}"#) == #""vid": expected 1 to 4 hex digits like "046d", found "zz""#)
        #expect(failure(#"{"action": "pci_detach", "address": "00:14.9"}"#)
            == #"invalid PCI address "00:14.9": expected "dddd:bb:dd.f" or "bb:dd.f" in hex"#)
        #expect(failure(#"{"action": "usb_list", "action": "pci_list"}"#)?.contains("duplicate") == true)
    }

    @Test("odd input never traps: deep nesting, long strings, control bytes")
    func oddInput() {
        #expect(failure(String(repeating: "[", count: 10000)) != nil)
        #expect(failure(#"{"action": ""# + String(repeating: "x", count: 100_000) + #""}"#)?.count ?? 0 < 2000)
        #expect(failure("{\"action\": \"\u{1}\"}")?.contains("\\u0001") == true)
    }
}

@Suite("ControlAPI: replies and device objects")
struct ReplyTests {
    let mouse = USBDevice(sysName: "1-2", sysPath: "/devices/x/usb1/1-2", bus: 1, devnum: 4, port: 2, portPath: [2],
                          vendorId: 0x046d, productId: 0xc52b, deviceClass: 0, manufacturer: "Logitech", product: "USB Receiver",
                          serial: nil, vendorName: "Logitech, Inc.", productName: "Unifying Receiver",
                          interfaces: [USBInterface(interfaceNumber: 0, interfaceClass: 3, interfaceSubclass: 1, interfaceProtocol: 1),
                                       USBInterface(interfaceNumber: 1, interfaceClass: 3, interfaceSubclass: 1, interfaceProtocol: 2)],
                          devnode: "/dev/bus/usb/001/004")

    @Test("a USB object has every field of the reference protocol, in its spelling")
    func usbObject() {
        #expect(mouse.apiObject().rendered() == #"{"device_node":"/dev/bus/usb/001/004","vid":"046d","pid":"c52b","vendor_name":"Logitech, Inc.","product_name":"Unifying Receiver","interfaces":":030101:030102:","device_class":0,"device_subclass":0,"device_protocol":0,"busnum":1,"devnum":4,"portnum":2,"serial":null,"sys_name":"1-2"}"#)
        let listed = mouse.apiObject(APIPlacement(allowedVms: ["vm1", "vm2"], vm: nil, tag: "rx", disconnected: true)).rendered()
        #expect(listed.hasSuffix(#""sys_name":"1-2","allowed_vms":["vm1","vm2"],"vm":null,"tag":"rx","disconnected":true}"#))
    }

    @Test("interfaces as udev's ID_USB_INTERFACES: each triple once (a headset's two streaming interfaces), null without interfaces")
    func interfaces() {
        var headset = mouse
        headset.interfaces = [(0, 1, 1, 0), (1, 1, 2, 0), (2, 1, 2, 0), (3, 3, 0, 0)].map {
            USBInterface(interfaceNumber: $0.0, interfaceClass: $0.1, interfaceSubclass: $0.2, interfaceProtocol: $0.3)
        }
        #expect(headset.interfaceString == ":010100:010200:030000:")
        headset.interfaces = []
        #expect(headset.interfaceString == nil)
        #expect(headset.apiObject().rendered().contains(#""interfaces":null,"#))
    }

    @Test("names are always strings: the IDs when neither usb.ids / pci.ids nor the device names it")
    func unnamed() {
        var bare = mouse
        bare.vendorName = nil
        bare.productName = nil
        bare.manufacturer = nil
        bare.product = nil
        #expect(bare.apiObject().rendered().contains(#""vendor_name":"046d","product_name":"c52b""#))
        var strings = bare
        strings.manufacturer = "Logitech"
        strings.product = "USB Receiver"
        #expect(strings.apiObject().rendered().contains(#""vendor_name":"Logitech","product_name":"USB Receiver""#))
        let nic = PCIDevice(address: "0000:01:00.0", sysPath: "/devices/pci0000:00/0000:00:02.0/0000:01:00.0", vendorId: 0x8086,
                            deviceId: 0x10d3, subsystemVendorId: 0x8086, subsystemDeviceId: 0x0000, deviceClass: 2)
        #expect(nic.apiObject().rendered().contains(#""vendor_name":"8086","device_name":"10D3""#))
    }

    @Test("a PCI object has every field of the reference protocol")
    func pciObject() {
        let nic = PCIDevice(address: "0000:01:00.0", sysPath: "/devices/pci0000:00/0000:00:02.0/0000:01:00.0", vendorId: 0x8086,
                            deviceId: 0x10d3, subsystemVendorId: 0x8086, subsystemDeviceId: 0x0000, deviceClass: 2,
                            vendorName: "Intel Corporation", deviceName: "82574L", driver: "e1000e")
        #expect(nic.apiObject(APIPlacement(allowedVms: ["vm1"], vm: "vm1", iommuMember: true)).rendered() == #"{"address":"0000:01:00.0","driver":"e1000e","vendor_id":32902,"device_id":4307,"vid":"8086","did":"10D3","vendor_name":"Intel Corporation","device_name":"82574L","pci_class":2,"pci_subclass":0,"pci_prog_if":0,"pci_subsystem_vendor_id":"8086","pci_subsystem_id":"0000","allowed_vms":["vm1"],"vm":"vm1","tag":null,"disconnected":false,"iommu_member":true}"#)
    }

    @Test("replies and notifications")
    func replies() {
        #expect(APIReply.ok().rendered() == #"{"result":"ok"}"#)
        #expect(APIReply.failed("no\nway").rendered() == #"{"result":"failed","error":"no\nway"}"#)
        #expect(APIReply.isOK(APIReply.ok([("x", .int(1))])))
        #expect(!APIReply.isOK(APIReply.failed("x")))
        #expect(APINotification.usbAttached(mouse, vm: "vm1").rendered().hasPrefix(#"{"event":"usb_attached","usb_device":{"device_node":"/dev/bus/usb/001/004","#))
        #expect(APINotification.usbSelectVM(mouse, allowedVms: ["a", "b"]).rendered().hasSuffix(#""allowed_vms":["a","b"]}"#))
    }

    @Test("on the wire as Python's json.dumps writes: spaces after commas and colons, non-ASCII escaped")
    func pythonStyle() {
        #expect(APIReply.ok([("usb_devices", .array([.int(1), .null]))]).rendered(.python) == #"{"result": "ok", "usb_devices": [1, null]}"#)
        #expect(APIReply.failed("Caf\u{E9} \u{1F600}\n").rendered(.python) == #"{"result": "failed", "error": "Caf\u00e9 \ud83d\ude00\n"}"#)
        #expect(JSONText.object([]).rendered(.python) == "{}" && JSONText.array([]).rendered(.python) == "[]")
        #expect(JSONText.string("a\u{8}b\u{C}c\u{1}").rendered(.python) == #""a\bb\fc\u0001""#)
    }
}
