import Foundation
import VHotplugTestSupport
import HotplugDaemon
import Logging
import Testing

/// A fresh folder for one test's state file.
func stateFolder() throws -> String {
    let dir = scratchPath("vhp-state")
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

@Suite("The state file: chosen VMs and detached marks")
struct StateFileTests {
    let logger = Logger(label: "test")

    @Test("saved and loaded back; the write leaves no temporary file; missing folders (two levels) are created")
    func roundTrip() throws {
        let dir = try stateFolder()
        let file = StateFile(path: dir + "/sub/deeper/vhotplug.state")
        #expect(file.load(logger: logger) == DaemonState())
        let state = DaemonState(chosenVms: ["usb:046d:c52b:port=1-2": "vm2"], disconnected: ["usb:1234:5678:serial=A\"B"],
                                suspended: ["usb:046d:c077:port=1-3": "vm1"])
        try file.save(state)
        #expect(file.load(logger: logger) == state)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir + "/sub/deeper") == ["vhotplug.state"])
        try file.save(DaemonState())
        #expect(file.load(logger: logger) == DaemonState())
        let text = try String(contentsOfFile: file.path, encoding: .utf8)
        #expect(text.contains("\"version\": 1"))
    }

    @Test("a corrupt or foreign file is moved aside and the state starts empty")
    func corrupt() throws {
        let dir = try stateFolder()
        let file = StateFile(path: dir + "/vhotplug.state")
        for text in ["{ not json", #"{"version": 2}"#, #"{"version": 1, "disconnected": [1]}"#, "[]", ""] {
            try text.write(toFile: file.path, atomically: true, encoding: .utf8)
            #expect(file.load(logger: logger) == DaemonState(), "for \(text)")
            #expect(!FileManager.default.fileExists(atPath: file.path), "moved aside: \(text)")
            let aside = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("vhotplug.state.corrupt-") }
            #expect(aside.count == 1)
            for a in aside { try FileManager.default.removeItem(atPath: dir + "/" + a) }
        }
    }

    @Test("parse: the reasons name what is wrong")
    func reasons() {
        func reason(_ text: String) -> String? {
            if case .failure(let e) = DaemonState.parse(Array(text.utf8)) { return e.message }
            return nil
        }
        #expect(reason(#"{"version": 1, "chosen_vms": {"a": 3}}"#) == #""chosen_vms"."a": expected a VM name"#)
        #expect(reason(#"{"version": 1, "disconnected": "a"}"#) == #""disconnected": expected an array"#)
        #expect(reason(#"{"version": 1, "suspended": {"a": null}}"#) == #""suspended"."a": expected a VM name"#)
        #expect(reason(#"{"version": 1, "suspended": []}"#) == #""suspended": expected an object"#)
        #expect(reason("{}") == #"expected "version": 1"#)
        #expect(reason(#"{"version": 1}"#) == nil)
    }

    @Test("a folder that cannot be written: save throws with the path, nothing half-written")
    func unwritable() throws {
        let file = StateFile(path: "/proc/vhotplug-test/vhotplug.state")
        #expect(throws: StateFileError.self) { try file.save(DaemonState(disconnected: ["x"])) }
    }
}
