import Foundation
import Testing
import VFIO

/// A fresh folder under the system's temporary folder; removed by `done()`.
struct TempFolder {
    let path: String
    init() throws {
        var template = Array((NSTemporaryDirectory() + "/vhotplug-records-XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else { throw POSIXError(.EIO) }
        path = String(cString: made)
    }
    func done() { try? FileManager.default.removeItem(atPath: path) }
    func files(_ sub: String = "") -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: path + sub)) ?? []).sorted()
    }
}

let twoMembers = BindRecord(device: "0000:01:00.0", group: 2, members: [
    .init(address: "0000:01:00.0", originalDriver: "nouveau"),
    .init(address: "0000:01:00.1", originalDriver: nil, originalOverride: "snd_hda_intel", wasOnVFIO: false),
    .init(address: "0000:01:00.2", originalDriver: "vfio-pci", wasOnVFIO: true),
], groupNode: "/dev/vfio/2")

@Suite("VFIO bind records kept on disk for a restarted vhotplug")
struct BindRecordStoreTests {
    @Test("a record survives the round trip, in <address>.json, with no temporary file left")
    func roundTrip() throws {
        let dir = try TempFolder()
        defer { dir.done() }
        // the folder is made on the first write, below a missing parent too
        let store = BindRecordStore(directory: dir.path + "/run/vfio/")
        #expect(store.load().records.isEmpty && store.load().problems.isEmpty)
        try store.save(twoMembers)
        #expect(dir.files("/run/vfio") == ["0000:01:00.0.json"])
        let text = try String(contentsOfFile: dir.path + "/run/vfio/0000:01:00.0.json", encoding: .utf8)
        #expect(text.contains("\"originalDriver\": \"nouveau\""))
        let (records, problems) = store.load()
        #expect(problems == [])
        #expect(records == [twoMembers])
        var mode = stat()
        #expect(stat(dir.path + "/run/vfio", &mode) == 0 && mode.st_mode & 0o777 == 0o700)
    }

    @Test("saving again replaces the record; remove deletes it, and removing an absent one is no error")
    func replaceAndRemove() throws {
        let dir = try TempFolder()
        defer { dir.done() }
        let store = BindRecordStore(directory: dir.path)
        try store.save(twoMembers)
        var other = twoMembers
        other.members = [other.members[0]]
        try store.save(other)
        #expect(store.load().records == [other])
        let nic = BindRecord(device: "0000:00:1f.6", group: 12, members: [.init(address: "0000:00:1f.6", originalDriver: "e1000e")],
                             groupNode: "/dev/vfio/12")
        try store.save(nic)
        #expect(store.load().records.map(\.device) == ["0000:00:1f.6", "0000:01:00.0"])
        try store.remove("0000:01:00.0")
        #expect(store.load().records == [nic])
        try store.remove("0000:01:00.0")
        #expect(dir.files() == ["0000:00:1f.6.json"])
    }

    @Test("corrupt or foreign files are reported, with where and what, and the valid records still load")
    func corrupt() throws {
        let dir = try TempFolder()
        defer { dir.done() }
        let store = BindRecordStore(directory: dir.path)
        try store.save(twoMembers)
        let bad: [(String, String, String)] = [
            ("0000:02:00.0.json", "{\"device\": \"0000:02:00.0\", \"group\": ", "not JSON: 1:"),
            ("0000:03:00.0.json", "{\"device\": \"0000:03:00.0\", \"group\": \"5\", \"groupNode\": \"/dev/vfio/5\", \"members\": []}",
             "$.group: expected a whole number, found string \"5\" at 1:"),
            ("0000:04:00.0.json", "{\"device\": \"0000:04:00.0\", \"group\": 5, \"groupNode\": \"/dev/vfio/5\", \"members\": [{\"address\": \"0000:04:00.0\"}]}",
             "$.members[0].wasOnVFIO: expected true or false, found nothing"),
            ("0000:05:00.0.json", "{\"device\": \"../../etc\", \"group\": 5, \"groupNode\": \"/dev/vfio/5\", \"members\": []}",
             "$.device: \"../../etc\" is not a PCI address"),
            ("0000:06:00.0.json", "{\"device\": \"0000:07:00.0\", \"group\": 5, \"groupNode\": \"/dev/vfio/5\", \"members\": []}",
             "it records \"0000:07:00.0\", not the device its name says"),
            ("0000:08:00.0.json", "[]", "$: expected an object, found array"),
        ]
        for (name, text, _) in bad {
            try text.write(toFile: dir.path + "/" + name, atomically: false, encoding: .utf8)
        }
        // not records at all: ignored silently
        try "x".write(toFile: dir.path + "/.0000:09:00.0.json.tmp", atomically: false, encoding: .utf8)
        try "x".write(toFile: dir.path + "/README", atomically: false, encoding: .utf8)
        let (records, problems) = store.load()
        #expect(records == [twoMembers])
        #expect(problems.count == bad.count, "\(problems)")
        for (name, _, why) in bad {
            #expect(problems.contains { $0.hasPrefix(dir.path + "/" + name + ": ") && $0.contains(why) },
                    "no problem \(why) for \(name) in \(problems)")
        }
    }

    @Test("an address that cannot name a file is refused; an unwritable folder is a clear error")
    func refused() throws {
        let dir = try TempFolder()
        defer { dir.done() }
        let store = BindRecordStore(directory: dir.path)
        var evil = twoMembers
        evil.device = "../x"
        #expect(throws: BindRecordStoreError.self) { try store.save(evil) }
        #expect(dir.files() == [])
        try "file".write(toFile: dir.path + "/blocker", atomically: false, encoding: .utf8)
        let blocked = BindRecordStore(directory: dir.path + "/blocker/vfio")
        let error = #expect(throws: BindRecordStoreError.self) { try blocked.save(twoMembers) }
        #expect(error?.description == "mkdir \(dir.path)/blocker/vfio: Not a directory (errno 20)")
    }
}
