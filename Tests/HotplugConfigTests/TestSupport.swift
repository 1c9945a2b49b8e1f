import JSONKit
import Foundation
import Testing
@testable import HotplugConfig

/// The repository's root, found from this file's path (Tests/HotplugConfigTests/TestSupport.swift).
let repositoryRoot = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// A file of the repository's data/ folder.
func dataFile(_ name: String) -> String {
    repositoryRoot.appendingPathComponent("data").appendingPathComponent(name).path
}

/// A file of the test bundle's Fixtures/ folder.
func fixture(_ name: String) throws -> String {
    let url = try #require(Bundle.module.url(forResource: name, withExtension: nil, subdirectory: "Fixtures"))
    return url.path
}

/// Parses `text`, which must fail; returns the diagnostics.
func errors(_ text: String, file: String = "<config>",
            sourceLocation: Testing.SourceLocation = #_sourceLocation) -> [Diagnostic] {
    do {
        let configuration = try ConfigurationLoader.parse(text, file: file)
        Issue.record("expected the configuration to be rejected, it loaded: \(configuration.summary)",
                     sourceLocation: sourceLocation)
        return []
    } catch let error as ConfigurationError {
        #expect(!error.diagnostics.isEmpty, sourceLocation: sourceLocation)
        return error.diagnostics
    } catch {
        Issue.record("unexpected error type: \(error)", sourceLocation: sourceLocation)
        return []
    }
}

/// Parses `text`, which must fail with exactly one diagnostic; returns it.
func singleError(_ text: String, file: String = "<config>", sourceLocation: Testing.SourceLocation = #_sourceLocation) throws -> Diagnostic {
    let all = errors(text, file: file, sourceLocation: sourceLocation)
    try #require(all.count == 1, "expected one diagnostic, got: \(all.map(\.description))", sourceLocation: sourceLocation)
    return all[0]
}

extension Diagnostic {
    /// `LINE:COL`, for compact expectations.
    var position: String { "\(line):\(column)" }
}

/// `LINE:COL` (1-based, in characters) of the `occurrence`-th `needle` in `text`;
/// computed independently of the parser, to check the positions it reports.
func position(of needle: String, in text: String, occurrence: Int = 1) -> String {
    var searchStart = text.startIndex
    var found: Range<String.Index>?
    for _ in 0..<occurrence {
        guard let range = text.range(of: needle, range: searchStart..<text.endIndex) else { return "not found" }
        found = range
        searchStart = range.upperBound
    }
    guard let found else { return "not found" }
    let before = text[text.startIndex..<found.lowerBound]
    let line = before.filter { $0 == "\n" }.count + 1
    let lineStart = before.lastIndex(of: "\n").map { text.index(after: $0) } ?? text.startIndex
    let column = text[lineStart..<found.lowerBound].unicodeScalars.count + 1
    return "\(line):\(column)"
}

/// Building blocks for small configurations with predictable positions.
enum Sample {
    /// Line 2 of every sample: a QEMU VM "vm1" and a crosvm VM "net".
    static let vmsLine =
        #"  "vms": [{"name": "vm1", "type": "qemu", "socket": "/run/vm1.sock"}, {"name": "net", "type": "crosvm", "socket": "/run/net.sock"}],"#

    /// A configuration whose only USB entry is `entry`, on line 4 from column 5,
    /// at `$.usbPassthrough[0].<list>[0]`.
    static func usbEntry(_ entry: String, list: String = "allow") -> String {
        "{\n\(vmsLine)\n  \"usbPassthrough\": [{\"targetVm\": \"vm1\", \"\(list)\": [\n    \(entry)\n  ]}]\n}\n"
    }

    /// A configuration whose only PCI entry is `entry`, on line 4 from column 5,
    /// at `$.pciPassthrough[0].<list>[0]`.
    static func pciEntry(_ entry: String, list: String = "allow") -> String {
        "{\n\(vmsLine)\n  \"pciPassthrough\": [{\"targetVm\": \"vm1\", \"\(list)\": [\n    \(entry)\n  ]}]\n}\n"
    }

    /// A configuration whose only rule set (under `key`) is `ruleSet`, on line 4 from column 5.
    static func ruleSet(_ ruleSet: String, key: String = "usbPassthrough") -> String {
        "{\n\(vmsLine)\n  \"\(key)\": [\n    \(ruleSet)\n  ]\n}\n"
    }

    /// A configuration with only `vms`, one VM object per line from line 3, column 5.
    static func vms(_ vms: [String]) -> String {
        "{\n  \"vms\": [\n" + vms.map { "    \($0),\n" }.joined() + "  ]\n}\n"
    }

    /// A configuration with `evdevPassthrough` set to `evdev` on line 3.
    static func evdev(_ evdev: String) -> String {
        "{\n\(vmsLine)\n  \"evdevPassthrough\": \(evdev)\n}\n"
    }
}
