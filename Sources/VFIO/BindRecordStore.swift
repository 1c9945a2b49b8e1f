#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import HostDevices
import JSONKit
import Reactor

/// A call of the record store that failed: which call (`mkdir`, `open`, `write`, `fsync`,
/// `rename`, `unlink`, or `name`: an address that cannot name a file), on which path, the errno.
public typealias BindRecordStoreError = FileWriteError

/// The bind records of devices vhotplug moved to vfio-pci, one file per device
/// (`DIRECTORY/<address>.json`), so that a restarted (or crashed) vhotplug can
/// still give each device back to the driver it had.
///
/// A record is written atomically (a temporary file in the same folder,
/// `fsync`, `rename`, `fsync` of the folder): a crash leaves the old record or
/// the new one, never half of one. The folder is made on the first write (mode
/// 0700); it belongs on a tmpfs such as `/run`, since a reboot puts every
/// device back on its own driver anyway.
public struct BindRecordStore: Sendable {
    /// The default folder.
    public static let defaultDirectory = "/run/vhotplug/vfio"

    public let directory: String

    public init(directory: String = BindRecordStore.defaultDirectory) {
        self.directory = directory.count > 1 && directory.hasSuffix("/") ? String(directory.dropLast()) : directory
    }

    /// The file of the record of `address`.
    public func path(for address: String) -> String { directory + "/" + address + ".json" }

    /// Writes (or replaces) the record of `record.device`.
    public func save(_ record: BindRecord) throws(BindRecordStoreError) {
        let address = record.device
        guard Self.isAddress(address) else { throw BindRecordStoreError(call: "name", path: address, errno: EINVAL) }
        try makeDirectory(directory)
        try AtomicFile.write(Array((Self.encode(record).rendered(pretty: true) + "\n").utf8), to: path(for: address), mode: 0o600)
    }

    /// Deletes the record of `address`; a record that is not there is already gone.
    public func remove(_ address: String) throws(BindRecordStoreError) {
        guard Self.isAddress(address) else { throw BindRecordStoreError(call: "name", path: address, errno: EINVAL) }
        let file = path(for: address)
        if unlink(file) != 0 && errno != ENOENT {
            throw BindRecordStoreError(call: "unlink", path: file, errno: errno)
        }
        syncDirectory()
    }

    /// Every record in the folder (none when it does not exist), by address; and
    /// a message for each file that is not a valid record (it is left alone).
    public func load() -> (records: [BindRecord], problems: [String]) {
        var records: [BindRecord] = []
        var problems: [String] = []
        for name in Sysfs.list(directory).sorted() where name.hasSuffix(".json") && !name.hasPrefix(".") {
            let file = directory + "/" + name
            let text: String
            do { text = try SystemSysfsIO().read(file) } catch {
                problems.append("\(file): cannot be read: \(error)")
                continue
            }
            switch Self.decode(text) {
            case .success(let record):
                if path(for: record.device) != file {
                    problems.append("\(file): it records \(quoted(record.device)), not the device its name says")
                } else {
                    records.append(record)
                }
            case .failure(let why):
                problems.append("\(file): \(why)")
            }
        }
        return (records, problems)
    }

    // MARK: Format

    /// `{"device": ..., "group": 5, "groupNode": "/dev/vfio/5", "members": [{"address": ..., "originalDriver": ...,
    /// "originalOverride": ..., "wasOnVFIO": false}]}`.
    static func encode(_ r: BindRecord) -> JSONText {
        .object([
            ("device", .string(r.device)),
            ("group", .int(r.group)),
            ("groupNode", .string(r.groupNode)),
            ("members", .array(r.members.map { m in
                .object([
                    ("address", .string(m.address)),
                    ("originalDriver", .optional(m.originalDriver)),
                    ("originalOverride", .optional(m.originalOverride)),
                    ("wasOnVFIO", .bool(m.wasOnVFIO)),
                ])
            })),
        ])
    }

    struct Invalid: Error, CustomStringConvertible {
        var description: String
    }

    /// A record from its file's text, or what is wrong with it (line:column and JSON path).
    static func decode(_ text: String) -> Result<BindRecord, Invalid> {
        var parser = JSONParser(bytes: Array(text.utf8))
        let root: JSONNode
        do { root = try parser.parseDocument() } catch {
            return .failure(Invalid(description: "not JSON: \(error.line):\(error.column): \(error.message)"))
        }
        do throws(Invalid) {
            let object = try Self.object(root, "$")
            let device = try Self.string(object, "device", "$", optional: false)!
            guard isAddress(device) else { throw Invalid(description: "$.device: \(quoted(device)) is not a PCI address") }
            let group = try Self.int(object, "group", "$")
            let groupNode = try Self.string(object, "groupNode", "$", optional: false)!
            guard case .array(let items)? = object.member("members")?.value.value else {
                throw Invalid(description: "$.members: expected an array" + Self.found(object.member("members")?.value))
            }
            var members: [BindRecord.Member] = []
            for (i, item) in items.enumerated() {
                let path = "$.members[\(i)]"
                let m = try Self.object(item, path)
                let address = try Self.string(m, "address", path, optional: false)!
                guard isAddress(address) else { throw Invalid(description: "\(path).address: \(quoted(address)) is not a PCI address") }
                guard case .bool(let was)? = m.member("wasOnVFIO")?.value.value else {
                    throw Invalid(description: "\(path).wasOnVFIO: expected true or false" + Self.found(m.member("wasOnVFIO")?.value))
                }
                members.append(BindRecord.Member(address: address,
                                                 originalDriver: try Self.string(m, "originalDriver", path, optional: true),
                                                 originalOverride: try Self.string(m, "originalOverride", path, optional: true),
                                                 wasOnVFIO: was))
            }
            return .success(BindRecord(device: device, group: group, members: members, groupNode: groupNode))
        } catch {
            return .failure(error)
        }
    }

    private static func found(_ node: JSONNode?) -> String {
        node.map { ", found \($0.foundDescription) at \($0.line):\($0.column)" } ?? ", found nothing"
    }

    private static func object(_ node: JSONNode, _ path: String) throws(Invalid) -> JSONObject {
        guard case .object(let o) = node.value else { throw Invalid(description: "\(path): expected an object" + found(node)) }
        return o
    }

    /// A string member; nil when optional and null or absent.
    private static func string(_ o: JSONObject, _ key: String, _ path: String, optional: Bool) throws(Invalid) -> String? {
        let node = o.member(key)?.value
        if case .string(let s)? = node?.value { return s }
        if optional && (node == nil || node?.isNull == true) { return nil }
        throw Invalid(description: "\(path).\(key): expected a string\(optional ? " or null" : "")" + found(node))
    }

    private static func int(_ o: JSONObject, _ key: String, _ path: String) throws(Invalid) -> Int {
        let node = o.member(key)?.value
        guard case .number(let n)? = node?.value, let v = n.integer, v >= 0 else {
            throw Invalid(description: "\(path).\(key): expected a whole number" + found(node))
        }
        return v
    }

    /// `dddd:bb:dd.f` (hexadecimal digits, colons and a dot): safe as a file name.
    static func isAddress(_ s: String) -> Bool {
        !s.isEmpty && s.count <= 32 && s.first != "." && s.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x66) || (c >= 0x41 && c <= 0x46) || c == 0x3A || c == 0x2E
        }
    }

    // MARK: Files

    /// `mkdir -p` with mode 0700.
    private func makeDirectory(_ path: String) throws(BindRecordStoreError) {
        if Sysfs.exists(path) { return }
        if let slash = path.lastIndex(of: "/"), slash > path.startIndex {
            try makeDirectory(String(path[..<slash]))
        }
        if mkdir(path, 0o700) != 0 && errno != EEXIST {
            throw BindRecordStoreError(call: "mkdir", path: path, errno: errno)
        }
    }

    /// Makes a rename or unlink durable (best effort: the folder is usually a tmpfs).
    private func syncDirectory() {
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        _ = fsync(fd)
        close(fd)
    }
}
