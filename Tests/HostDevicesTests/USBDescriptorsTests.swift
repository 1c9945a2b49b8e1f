import DeviceModel
@testable import HostDevices
import Testing

@Suite("USB descriptors (an unauthorized device's interfaces)")
struct USBDescriptorsTests {
    static func bytes(_ hex: String) -> [UInt8] {
        let digits = Array(hex.filter { !$0.isWhitespace })
        return stride(from: 0, to: digits.count - 1, by: 2).map { UInt8(String(digits[$0...$0 + 1]), radix: 16)! }
    }

    /// QEMU's usb-kbd, read from an unauthorized device's `descriptors` in the lab.
    static let keyboard = bytes("""
        12010002000000402706010000000104 0b01 09022200010108a032 090400000103010100 0921110100012 23f00 0705810308 0007
        """)

    func triples(_ list: [USBInterface]) -> [[UInt8]] {
        list.map { [$0.interfaceNumber, $0.interfaceClass, $0.interfaceSubclass, $0.interfaceProtocol] }
    }

    @Test("the lab's unauthorized keyboard: one HID boot keyboard interface")
    func keyboard() {
        #expect(triples(USBDescriptors.firstConfigurationInterfaces(Self.keyboard)) == [[0, 3, 1, 1]])
    }

    @Test("the Logitech receiver of the fixtures: three HID interfaces")
    func receiver() {
        let d = Self.bytes("12010002000000086D042BC511120102000109025400030104A031090400000103010100092111010001223B00070581030800080904010001030102000921110100012294000705820308000209040200010300000009211101000122620007058303200002")
        #expect(triples(USBDescriptors.firstConfigurationInterfaces(d)) == [[0, 3, 1, 1], [1, 3, 1, 2], [2, 3, 0, 0]])
    }

    @Test("alternate settings other than 0 and a second configuration are left out")
    func alternatesAndSecondConfiguration() {
        let device = "120100020000004027060100000001040b01"
        let config1 = "0902 2d00 02 01 00 a0 32" + "0904 0000 00 0e 01 00 00" + "0904 0001 01 0e 02 00 00" + "0904 0100 01 0a 00 00 00"
        let config2 = "0902 1200 01 02 00 a0 32" + "0904 0000 01 08 06 50 00"
        let list = USBDescriptors.firstConfigurationInterfaces(Self.bytes(device + config1 + config2))
        #expect(triples(list) == [[0, 0x0e, 1, 0], [1, 0x0a, 0, 0]])
    }

    @Test("lying lengths and garbage: what was read before, never a crash", arguments: [
        "", "00", "0902", "1201000200000040270601000000010400", "0902000001010800", "09020000010108a032 0904",
        "09020000010108a032 0004000001030101", "09020000010108a032 ff04000001030101", "0904000001030101 00",
    ])
    func garbage(_ hex: String) {
        _ = USBDescriptors.firstConfigurationInterfaces(Self.bytes(hex))
    }

    @Test("an interface after a zero-length descriptor is not read")
    func zeroLengthStops() {
        let d = Self.bytes("09020000010108a032 0004 09040000010301010 0")
        #expect(USBDescriptors.firstConfigurationInterfaces(d).isEmpty)
        let ok = Self.bytes("09020000010108a032 090400000103010100")
        #expect(triples(USBDescriptors.firstConfigurationInterfaces(ok)) == [[0, 3, 1, 1]])
    }

    @Test("1000 random byte strings: no crash, interface numbers unique")
    func random() {
        var g = SystemRandomNumberGenerator()
        for _ in 0..<1000 {
            let n = Int.random(in: 0..<200, using: &g)
            var b = (0..<n).map { _ in UInt8.random(in: 0...255, using: &g) }
            if b.count > 20 { b[18] = 9; b[19] = 2 }
            let list = USBDescriptors.firstConfigurationInterfaces(b)
            #expect(Set(list.map(\.interfaceNumber)).count == list.count)
        }
    }
}
