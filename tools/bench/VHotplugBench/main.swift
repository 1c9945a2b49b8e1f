// vhotplug-bench: the matcher's speed against a large configuration.
// Run with `tools/bench/run.sh` (release build). Prints one line per figure.
import DeviceModel
import Foundation
import HotplugConfig
import HotplugRules

/// 500 entries over 10 rule sets, in the shapes people write: IDs, interface
/// classes, names (regular expressions), bus/port, and deny entries.
func largeConfiguration(entries: Int = 500) throws -> Configuration {
    var sets: [String] = []
    let perSet = entries / 10
    for s in 0..<10 {
        var allow: [String] = []
        var deny: [String] = []
        for e in 0..<perSet {
            let n = s * perSet + e
            switch n % 5 {
            case 0: allow.append(#"{"vendorId": "\#(String(format: "%04x", 0x1000 + n))", "productId": "\#(String(format: "%04x", n))"}"#)
            case 1: allow.append(#"{"interfaceClass": \#(n % 200 + 20), "interfaceProtocol": \#(n % 7)}"#)
            case 2: allow.append(#"{"vendorName": "^vendor-\#(n)$", "description": "by name \#(n)"}"#)
            case 3: allow.append(#"{"bus": \#(n % 40 + 10), "port": \#(n % 15 + 1)}"#)
            default: deny.append(#"{"vendorId": "\#(String(format: "%04x", 0x2000 + n))"}"#)
            }
        }
        sets.append(#"{"targetVm": "vm\#(s % 3 + 1)", "allow": [\#(allow.joined(separator: ","))], "deny": [\#(deny.joined(separator: ","))]}"#)
    }
    let text = #"{"usbPassthrough": [\#(sets.joined(separator: ","))], "vms": [{"name": "vm1", "type": "qemu", "socket": "/a"}, {"name": "vm2", "type": "qemu", "socket": "/b"}, {"name": "vm3", "type": "crosvm", "socket": "/c"}]}"#
    return try ConfigurationLoader.parse(text, file: "bench.conf")
}

func median(_ xs: [Double]) -> Double { xs.sorted()[xs.count / 2] }

let configuration = try largeConfiguration()
let matcher = Matcher(configuration)
let entryCount = configuration.usbPassthrough.reduce(0) { $0 + $1.allow.count + $1.deny.count }

// A mouse no entry takes: the worst case, every entry is tried.
let mouse = USBDevice(
    sysName: "1-4", sysPath: "/devices/pci0000:00/0000:00:14.0/usb1/1-4", bus: 1, devnum: 9, port: 4, portPath: [4],
    vendorId: 0x046d, productId: 0xc077, manufacturer: "Logitech", product: "USB Optical Mouse",
    vendorName: "Logitech, Inc.", productName: "M105 Optical Mouse",
    interfaces: [USBInterface(interfaceNumber: 0, interfaceClass: 3, interfaceSubclass: 1, interfaceProtocol: 2)],
    devnode: "/dev/bus/usb/001/009")

var samples: [Double] = []
var sink = 0
for _ in 0..<2000 {
    let t0 = DispatchTime.now().uptimeNanoseconds
    let d = matcher.decide(mouse)
    let t1 = DispatchTime.now().uptimeNanoseconds
    if d.targetVm != nil { sink += 1 }
    samples.append(Double(t1 - t0) / 1000)
}
print(String(format: "decide one USB device against %d entries (no match, all tried): median %.2f µs, p90 %.2f µs",
             entryCount, median(samples), samples.sorted()[samples.count * 9 / 10]))

// The same with a device the last rule set takes by ID.
var last = mouse
last.vendorId = UInt16(0x1000 + 450)
last.productId = 450
samples = []
for _ in 0..<2000 {
    let t0 = DispatchTime.now().uptimeNanoseconds
    let d = matcher.decide(last)
    let t1 = DispatchTime.now().uptimeNanoseconds
    if d.targetVm != nil { sink += 1 }
    samples.append(Double(t1 - t0) / 1000)
}
print(String(format: "decide one USB device matched by the last rule set: median %.2f µs (%@)",
             median(samples), matcher.decide(last).summary))
if sink == 0 { print("(no decision matched)") }
