import JSONKit
import Foundation
import Testing
@testable import HotplugConfig

/// Large input is validated, and reports stay readable however many errors. (How fast is
/// `tools/bench/large-config.py`'s to say: no test here times itself.)
@Suite("Validation: large input")
struct LargeInputTests {
    @Test("editDistance: Levenshtein within the limit, nil beyond it")
    func editDistanceValues() {
        #expect(editDistance("kitten", "sitting", limit: 3) == 3)
        #expect(editDistance("kitten", "sitting", limit: 2) == nil)
        #expect(editDistance("flaw", "lawn", limit: 2) == 2)
        #expect(editDistance("ab", "ba", limit: 2) == 2)
        #expect(editDistance("VendorID", "vendorId", limit: 2) == 0)
        #expect(editDistance("", "ab", limit: 2) == 2)
        #expect(editDistance("abcdef", "abcxyz", limit: 2) == nil)
        #expect(editDistance("abcdefgh", "bcdefghX", limit: 2) == 2)
        #expect(editDistance("abcdefgh", "cdefghXY", limit: 2) == nil)
    }

    @Test("editDistance of two long words that differ at their end")
    func editDistanceLong() {
        let stem = String(repeating: "a", count: 20_000)
        #expect(editDistance(stem + "x", stem + "y", limit: 2) == 1)
    }

    @Test("a 20 KB targetVm next to a 20 KB VM name that differs at its end: no suggestion")
    func longNames() throws {
        let stem = String(repeating: "v", count: 20_000)
        let text = Sample.vms([#"{"name": "\#(stem)1", "type": "qemu", "socket": "/s"}"#])
            .replacingOccurrences(of: "\n}\n", with: ",\n  \"usbPassthrough\": [{\"targetVm\": \"\(stem)2\", \"allow\": [{\"vendorId\": \"046d\"}]}]\n}\n")
        let d = try singleError(text)
        #expect(d.message.hasPrefix("unknown VM \"vvvv") && !d.message.contains("did you mean"), "\(d.message.prefix(300))")
    }

    @Test("a message lists at most 10 defined VMs, and says how many more")
    func fewDefinedVMs() throws {
        let vms = (1...15).map { #"{"name": "vm\#($0)", "type": "qemu", "socket": "/s\#($0)"}"# }
        let text = Sample.vms(vms)
            .replacingOccurrences(of: "\n}\n", with: ",\n  \"usbPassthrough\": [{\"targetVm\": \"vm13x\", \"allow\": [{\"vendorId\": \"046d\"}]}]\n}\n")
        let d = try singleError(text)
        let first10 = (1...10).map { "\"vm\($0)\"" }.joined(separator: ", ")
        // The suggestion looks at every VM, also those the list leaves out.
        #expect(d.message == "unknown VM \"vm13x\" in targetVm (defined VMs: \(first10) and 5 more); did you mean \"vm13\"?")
    }

    @Test("20000 unknown names in allowedVms: the first 100 errors are reported, then how many more")
    func manyUnknownNames() throws {
        let names = (0..<20_000).map { "\"x\($0)\"" }.joined(separator: ", ")
        let text = Sample.ruleSet(#"{"allowedVms": [\#(names)], "allow": [{"vendorId": "046d"}]}"#)
        do {
            _ = try ConfigurationLoader.parse(text, file: "big.conf")
            Issue.record("accepted")
        } catch let error as ConfigurationError {
            #expect(error.diagnostics.count == 100)
            #expect(error.diagnostics.first?.message == #"unknown VM "x0" in allowedVms (defined VMs: "vm1", "net")"#)
            #expect(error.diagnostics.last?.path == "$.usbPassthrough[0].allowedVms[99]")
            #expect(error.description.split(separator: "\n").last == "big.conf: 19900 more errors not shown")
        }
    }
}
