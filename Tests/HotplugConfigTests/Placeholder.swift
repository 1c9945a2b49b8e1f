import Testing
import Foundation
@testable import HotplugConfig

@Test func smoke() throws {
    let c = try ConfigurationLoader.load(path: "/work/main/data/vhotplug.conf")
    print(c.summary)
    print(c)
    for text in ["", "[]", "{\"vms\": [{\"name\": \"a\", \"type\": \"crosvm\", \"socket\": \"\"}, {\"name\": \"a\", \"type\": \"QEMU\", \"socket\": 3}], \"usbPassthrough\": [{\"targetVm\": \"b\", \"allow\": [{\"vendorID\": \"046d\"}, {\"description\": \"x\"}, {\"productName\": \".*(\", \"bus\": 300, \"vendorId\": 1133, \"productId\": \"12345\", \"address\": \"1\"}]}], \"pciPassthrough\": [{\"targetVm\": \"a\", \"allow\": [{\"address\": \"00:20.0\", \"productId\": \"1\"}, {\"address\": \"0:0\", \"deviceClass\": 1.5}]}], \"evdevPassthrough\": {\"targetVm\": \"a\"}}", "{\"a\": 1, \"a\": 2}", "{\"a\": \"x", "{\"a\" 1}", "{\"a\": 1 \"b\"}", "[" , "{\"vms\": [1,]", "{'x': 0x1F}", "{\"x\": True}", "{\"x\": \"\\uD800\"}", "{\"x\": 99999999999999999999999999}", String(repeating: "[", count: 100), "{/* x"] {
        do { _ = try ConfigurationLoader.parse(text) } catch { print("---\n\(error)") }
    }
    do { _ = try ConfigurationLoader.load(path: "/nonexistent") } catch { print(error) }
    do { _ = try ConfigurationLoader.load(path: "/tmp") } catch { print(error) }
    do { _ = try ConfigurationLoader.parse(bytes: [0x7b, 0x0a, 0x20, 0xff, 0x7d]) } catch { print(error) }
}
