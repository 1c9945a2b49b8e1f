import JSONKit
import Logging
import Reactor
#if canImport(Glibc)
import Glibc
#endif

/// What the user decided that outlives the daemon: the VM chosen for a device
/// a rule lets several VMs take, devices the user detached ("disconnected"), and
/// devices a suspend took out of their VM, with that VM (until the resume, or until
/// they are unplugged). Keys are device identities (`Daemon.identity`), stable across replugs.
public struct DaemonState: Sendable, Hashable {
    public var chosenVms: [String: String] = [:]
    public var disconnected: Set<String> = []
    public var suspended: [String: String] = [:]

    public init(chosenVms: [String: String] = [:], disconnected: Set<String> = [], suspended: [String: String] = [:]) {
        self.chosenVms = chosenVms
        self.disconnected = disconnected
        self.suspended = suspended
    }

    /// `{"version": 1, "chosen_vms": {...}, "disconnected": [...], "suspended": {...}}`, keys
    /// sorted; `suspended` only when a device is (a file an older vhotplug reads the same).
    public var json: JSONText {
        var members: [(String, JSONText)] = [
            ("version", .int(1)),
            ("chosen_vms", Self.object(chosenVms)),
            ("disconnected", .array(disconnected.sorted().map(JSONText.string))),
        ]
        if !suspended.isEmpty { members.append(("suspended", Self.object(suspended))) }
        return .object(members)
    }

    private static func object(_ map: [String: String]) -> JSONText {
        .object(map.keys.sorted().map { ($0, .string(map[$0] ?? "")) })
    }

    /// Parses the file's text; nil with the reason when it is not a state file.
    public static func parse(_ bytes: [UInt8]) -> Result<DaemonState, StateFileError> {
        var parser = JSONParser(bytes: bytes)
        let root: JSONNode
        do { root = try parser.parseDocument() } catch {
            return .failure(StateFileError("line \(error.line), column \(error.column): \(error.message)"))
        }
        guard case .object(let top) = root.value else { return .failure(StateFileError("expected an object, found \(root.foundDescription)")) }
        guard let version = top.member("version"), case .number(let n) = version.value.value, n.integer == 1 else {
            return .failure(StateFileError("expected \"version\": 1"))
        }
        var state = DaemonState()
        for (name, path) in [("chosen_vms", \DaemonState.chosenVms), ("suspended", \DaemonState.suspended)] {
            guard let m = top.member(name) else { continue }
            guard case .object(let o) = m.value.value else { return .failure(StateFileError("\"\(name)\": expected an object")) }
            for member in o.members {
                guard case .string(let vm) = member.value.value else {
                    return .failure(StateFileError("\"\(name)\".\(quoted(member.key)): expected a VM name"))
                }
                state[keyPath: path][member.key] = vm
            }
        }
        if let m = top.member("disconnected") {
            guard case .array(let items) = m.value.value else { return .failure(StateFileError("\"disconnected\": expected an array")) }
            for item in items {
                guard case .string(let s) = item.value else { return .failure(StateFileError("\"disconnected\": expected strings")) }
                state.disconnected.insert(s)
            }
        }
        return .success(state)
    }
}

/// Why the state file could not be used.
public struct StateFileError: Error, Sendable, CustomStringConvertible {
    public var message: String
    init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The state file: read once at start, written whole and atomically on each change
/// (a temporary file in the same folder, fsync, rename, fsync of the folder).
public struct StateFile: Sendable {
    public let path: String
    /// Files larger than this are not state files.
    static let maximumSize = 4 << 20

    public init(path: String) { self.path = path }

    var directory: String { parentFolder(path) }

    /// The saved state. Missing: empty. Unreadable or corrupt: moved aside to
    /// `PATH.corrupt-<unix time>` with a warning, and empty.
    public func load(logger: Logger) -> DaemonState {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            let code = errno
            if code == ENOENT { return DaemonState() }
            moveAside("cannot open it: \(String(cString: strerror(code)))", logger: logger)
            return DaemonState()
        }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        var failure: String?
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                failure = "cannot read it: \(String(cString: strerror(errno)))"
                break
            }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
            if bytes.count > Self.maximumSize {
                failure = "it is larger than \(Self.maximumSize >> 20) MiB"
                break
            }
        }
        close(fd)
        if let failure {
            moveAside(failure, logger: logger)
            return DaemonState()
        }
        switch DaemonState.parse(bytes) {
        case .success(let state):
            return state
        case .failure(let error):
            moveAside("it is not a valid state file (\(error.message))", logger: logger)
            return DaemonState()
        }
    }

    private func moveAside(_ why: String, logger: Logger) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let aside = "\(path).corrupt-\(now.tv_sec)"
        if rename(path, aside) == 0 {
            logger.warning("state file \(path): \(why); moved aside to \(aside), starting with empty state")
        } else {
            logger.warning("state file \(path): \(why); cannot move it aside (\(String(cString: strerror(errno)))), starting with empty state")
        }
    }

    /// Writes the state atomically; the folder is created when missing.
    public func save(_ state: DaemonState) throws(StateFileError) {
        try Self.writeAtomically(state.json.rendered(pretty: true) + "\n", to: path)
    }

    /// Writes `text` to `path` atomically (`AtomicFile`); the folder is created when missing.
    static func writeAtomically(_ text: String, to path: String) throws(StateFileError) {
        do throws(FileWriteError) {
            try AtomicFile.write(Array(text.utf8), to: path, folderMode: 0o755)
        } catch {
            throw StateFileError("cannot \(error.call) \(error.path): \(String(cString: strerror(error.errno)))")
        }
    }
}
