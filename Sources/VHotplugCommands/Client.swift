import ArgumentParser
import CLinux
import ControlAPI
import JSONKit
import Reactor
#if canImport(Glibc)
import Glibc
#endif

// The command-line client of the control API: `vhotplug usb ...`, `vhotplug pci ...`,
// `vhotplug listen`, mirroring the reference's vhotplugcli. Tables for people,
// `--json` for scripts; a failed reply prints its error on stderr and exits 1.

/// Where the daemon's API is: `--transport unix|tcp|vsock` and its address.
struct ConnectionOptions: ParsableArguments {
    @Option(name: [.customShort("t", allowingJoined: true), .customLong("transport")],
            help: "Transport: unix, tcp or vsock (default: unix with --path or where the daemon's socket is; otherwise vsock in a VM, unix on a host)")
    var transportOption: String?

    @Option(name: [.customShort("u", allowingJoined: true), .customLong("path")], help: "Unix socket path (default: /var/lib/vhotplug/vhotplug.sock)")
    var pathOption: String?

    var path: String { pathOption ?? "/var/lib/vhotplug/vhotplug.sock" }

    /// As the reference client: vsock when it runs in a VM (a guest's own vsock CID, from
    /// /dev/vsock), unix otherwise. Unix too whenever a socket path is given, or the default
    /// socket exists here: a host that is itself a VM (nested, in a cloud) runs its own daemon.
    var transport: String {
        if let transportOption { return transportOption }
        if pathOption != nil || access(path, F_OK) == 0 { return "unix" }
        return Self.defaultTransport(localCID: Self.localVsockCID())
    }

    static func defaultTransport(localCID: UInt32?) -> String {
        // Not a guest: no vsock, VMADDR_CID_ANY, the host's 2, or the loopback 1.
        guard let cid = localCID, ![UInt32.max, 2, 1].contains(cid) else { return "unix" }
        return "vsock"
    }

    /// IOCTL_VM_SOCKETS_GET_LOCAL_CID on /dev/vsock; nil without it.
    static func localVsockCID() -> UInt32? {
        let fd = open("/dev/vsock", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var cid: UInt32 = 0
        return withUnsafeMutablePointer(to: &cid) { ioctl(fd, 0x7B9, $0) } == 0 ? cid : nil
    }

    @Option(name: [.customShort("s", allowingJoined: true), .long], help: "TCP host (an IPv4 address, or a name with one)")
    var host: String = "127.0.0.1"

    @Option(name: [.customShort("p", allowingJoined: true), .customLong("api-port"), .customLong("net-port")],
            help: "TCP (1-65535) or vsock (0-4294967295) port of the API")
    var port: Int = 2000

    @Option(name: [.customShort("c", allowingJoined: true), .long], help: "vsock CID of the host")
    var cid: UInt32 = 2

    @Flag(name: [.customShort("d"), .long], inversion: .prefixedNo, help: "Print each line sent and received on stderr")
    var debug = false

    func validate() throws {
        if let t = transportOption, !["unix", "tcp", "vsock"].contains(t) {
            throw ValidationError("--transport must be unix, tcp or vsock, not \(quoted(t))")
        }
        if let problem = addressProblem { throw ValidationError(problem) }
    }

    /// `--host` as an IPv4 address written out; nil when it is not one.
    var ipv4Host: in_addr? {
        var a = in_addr()
        return inet_pton(AF_INET, host, &a) == 1 ? a : nil
    }

    /// `--host` is a name (not digits and dots, not an IPv6 address): looked up when connecting.
    var hostIsName: Bool {
        !host.isEmpty && !host.contains(":") && !host.unicodeScalars.allSatisfy { $0 == "." || ("0"..."9").contains($0) }
    }

    /// `--host`'s IPv4 address: written out, or the first a lookup of the name gives
    /// (`localhost`, /etc/hosts, DNS), as vhotplugcli's socket.connect does.
    func resolvedHost() throws(ClientError) -> in_addr {
        if let a = ipv4Host { return a }
        var hints = addrinfo()
        hints.ai_family = AF_INET
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, nil, &hints, &list)
        defer { if let list { freeaddrinfo(list) } }
        guard rc == 0, let first = list, let sa = first.pointee.ai_addr, first.pointee.ai_family == AF_INET else {
            throw ClientError("cannot find an IPv4 address for --host \(quoted(host)): \(rc == 0 ? "none" : String(cString: gai_strerror(rc)))")
        }
        return sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr }
    }

    /// What is wrong with `--host` and `--api-port` for the transport in use (bad usage), or nil.
    var addressProblem: String? {
        switch transport {
        case "tcp":
            if ipv4Host == nil && !hostIsName { return "--host must be an IPv4 address or a host name, not \(quoted(host))" }
            if !(1...65535).contains(port) { return "--api-port must be from 1 to 65535 over TCP, not \(port)" }
        case "vsock":
            if !(0...0xFFFF_FFFF).contains(port) { return "--api-port must be from 0 to 4294967295 over vsock, not \(port)" }
        default:
            break
        }
        return nil
    }

    var address: String {
        switch transport {
        case "tcp": "\(host):\(port)"
        case "vsock": "vsock CID \(cid) port \(port)"
        default: path
        }
    }

    /// Connects (blocking, with a deadline on each reply).
    func connect(replyTimeout: Int = 120) throws(ClientError) -> APIConnection {
        // Checked by validate() already (exit 64); here for a caller that did not parse.
        if let problem = addressProblem { throw ClientError(problem) }
        let fd: Int32
        switch transport {
        case "tcp":
            let host = try resolvedHost()
            fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_port = in_port_t(UInt16(clamping: port).bigEndian)
            a.sin_addr = host
            try Self.connect(fd, &a, MemoryLayout<sockaddr_in>.size, address)
        case "vsock":
            fd = socket(40, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            // struct sockaddr_vm: family, reserved, port, cid, zero.
            var a: (UInt16, UInt16, UInt32, UInt32, UInt32) = (40, 0, UInt32(clamping: port), cid, 0)
            try Self.connect(fd, &a, 16, address)
        default:
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var a = sockaddr_un()
            let len = vh_sockaddr_un(&a, path)
            guard len > 0 else {
                close(fd)
                throw ClientError("socket path too long: \(path)")
            }
            try Self.connect(fd, &a, Int(len), address)
        }
        var tv = timeval(tv_sec: replyTimeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        return APIConnection(fd: fd, address: address, debug: debug)
    }

    private static func connect<A>(_ fd: Int32, _ addr: inout A, _ len: Int, _ address: String) throws(ClientError) {
        guard fd >= 0 else { throw ClientError("cannot create a socket: \(String(cString: strerror(errno)))") }
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(len)) }
        }
        if r != 0 {
            let code = errno
            close(fd)
            throw ClientError("cannot connect to the vhotplug API at \(address): \(String(cString: strerror(code))) (is the daemon running with general.api enabled?)")
        }
    }
}

struct ClientError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// One connection to the API: requests out, lines in.
final class APIConnection {
    let fd: Int32
    let address: String
    /// `-d`: each line sent and received goes to stderr too.
    let debug: Bool
    private var pending: [UInt8] = []

    init(fd: Int32, address: String, debug: Bool = false) {
        self.fd = fd
        self.address = address
        self.debug = debug
    }

    deinit { close(fd) }

    func send(_ request: JSONText) throws(ClientError) {
        var text = request.rendered() + "\n"
        if debug { writeStderr("-> " + text) }
        let ok = text.withUTF8 { buf -> Bool in
            var off = 0
            while off < buf.count {
                let n = Glibc.send(fd, buf.baseAddress! + off, buf.count - off, Int32(MSG_NOSIGNAL))
                if n <= 0 { if errno == EINTR { continue }; return false }
                off += n
            }
            return true
        }
        if !ok { throw ClientError("cannot send to \(address): \(String(cString: strerror(errno)))") }
    }

    /// The next line; nil at end of stream.
    func readLine() throws(ClientError) -> [UInt8]? {
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            if let nl = pending.firstIndex(of: 0x0A) {
                let line = Array(pending[..<nl])
                pending.removeSubrange(...nl)
                if debug { writeStderr("<- " + String(decoding: line, as: UTF8.self) + "\n") }
                return line
            }
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { return nil }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN { throw ClientError("no reply from \(address) in time") }
                throw ClientError("cannot read from \(address): \(String(cString: strerror(errno)))")
            }
            pending.append(contentsOf: chunk[0..<n])
        }
    }

    /// Sends a request and returns its reply (notifications in between are skipped).
    func request(_ request: JSONText) throws(ClientError) -> JSONObject {
        do {
            try send(request)
        } catch {
            // The server may have refused the connection (and said why) before the request
            // went out: its reply, when there is one, is the better message.
            if let line = try? readLine(), let object = parseObject(line), object.member("event") == nil { return object }
            throw error
        }
        while true {
            guard let line = try readLine() else { throw ClientError("\(address) closed the connection without a reply") }
            guard let object = parseObject(line) else { throw ClientError("not a JSON object from \(address): \(quoted(String(decoding: line, as: UTF8.self)))") }
            if object.member("event") == nil { return object }
        }
    }
}

func parseObject(_ line: [UInt8]) -> JSONObject? {
    var parser = JSONParser(bytes: line)
    guard let root = try? parser.parseDocument(), case .object(let o) = root.value else { return nil }
    return o
}

/// A parsed value back to writable JSON (for `--json` output).
func jsonText(_ node: JSONNode) -> JSONText {
    switch node.value {
    case .null: return .null
    case .bool(let b): return .bool(b)
    case .number(let n): return n.integer.map(JSONText.int) ?? .string(n.text)
    case .string(let s): return .string(s)
    case .array(let items): return .array(items.map(jsonText))
    case .object(let o): return objectText(o)
    }
}

func objectText(_ o: JSONObject) -> JSONText { .object(o.members.map { ($0.key, jsonText($0.value)) }) }

extension JSONObject {
    func text(_ key: String) -> String? {
        guard let m = member(key) else { return nil }
        switch m.value.value {
        case .string(let s): return s
        case .number(let n): return n.text
        case .bool(let b): return b ? "true" : "false"
        case .null: return nil
        case .array(let items): return items.compactMap { if case .string(let s) = $0.value { s } else { nil } }.joined(separator: ",")
        case .object: return nil
        }
    }
}

/// Sends one request; a failed reply prints its error and exits 1. With `retryingFor`,
/// connecting is tried again for that many seconds while nothing listens.
func perform(_ connection: ConnectionOptions, _ request: JSONText, json: Bool, retryingFor seconds: Double? = nil) throws -> JSONObject {
    let reply: JSONObject
    do {
        let c = try seconds.map { (s) throws(ClientError) in try connection.connect(retryingFor: s) } ?? connection.connect()
        reply = try c.request(request)
    } catch {
        writeStderr("vhotplug: \(error)\n")
        throw ExitCode(1)
    }
    if reply.text("result") != "ok" {
        if json { writeStdout(objectText(reply).rendered(.python) + "\n") }
        writeStderr("vhotplug: \(reply.text("error") ?? "the daemon reports a failure without a reason")\n")
        throw ExitCode(1)
    }
    return reply
}

/// Builds `{"action": ..., fields...}` leaving out the fields not given.
func request(_ action: String, _ fields: [(String, JSONText?)]) -> JSONText {
    .object([("action", .string(action))] + fields.compactMap { k, v in v.map { (k, $0) } })
}

// MARK: - usb and pci

/// `vhotplug usb ...`.
struct USBCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vhotplug usb", abstract: "List, attach, detach, suspend and resume USB devices through the daemon's API",
        subcommands: [DeviceList<USBKind>.self, DeviceAttach<USBKind>.self, DeviceDetach<USBKind>.self,
                      DeviceSuspend<USBKind>.self, DeviceResume<USBKind>.self])

    /// No action: bad usage (before, the help and exit 0: a script's empty `$ACTION` passed).
    func run() throws { throw missingAction("list, attach, detach, suspend or resume") }
}

/// The error of a command group given no action (exit 64, with the usage).
func missingAction(_ actions: String) -> ValidationError {
    ValidationError("missing action: \(actions)")
}

/// `vhotplug pci ...`.
struct PCICommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vhotplug pci", abstract: "List, attach, detach, suspend and resume PCI devices through the daemon's API",
        subcommands: [DeviceList<PCIKind>.self, DeviceAttach<PCIKind>.self, DeviceDetach<PCIKind>.self,
                      DeviceSuspend<PCIKind>.self, DeviceResume<PCIKind>.self])

    func run() throws { throw missingAction("list, attach, detach, suspend or resume") }
}

/// What differs between `usb` and `pci`: action prefix, list key, selectors, one-line names.
protocol DeviceKind {
    static var prefix: String { get }
    static var listKey: String { get }
    /// `046d:c52b Logitech, Inc. Unifying Receiver`.
    static func title(_ d: JSONObject) -> String
    /// The column that names the device in `--table` tables.
    static var idField: String { get }
}

enum USBKind: DeviceKind {
    static let prefix = "usb"
    static let listKey = "usb_devices"
    static let idField = "device_node"
    static func title(_ d: JSONObject) -> String {
        "\(d.text("vid") ?? "?"):\(d.text("pid") ?? "?") \(d.text("vendor_name") ?? "") \(d.text("product_name") ?? "")"
    }
}

enum PCIKind: DeviceKind {
    static let prefix = "pci"
    static let listKey = "pci_devices"
    static let idField = "address"
    static func title(_ d: JSONObject) -> String {
        "\(d.text("address") ?? "?") \(d.text("vid") ?? "?"):\(d.text("did") ?? "?") \(d.text("vendor_name") ?? "") \(d.text("device_name") ?? "")"
    }
}

/// The device selectors of attach and detach (`--devnode`, `--bus --port`, `--vid --pid` / `--did`, `--tag`, `--address`).
struct Selector: ParsableArguments {
    @Option(help: "USB: device node, e.g. /dev/bus/usb/001/004")
    var devnode: String?
    @Option(help: "USB: bus number (with --port)")
    var bus: Int?
    @Option(name: .customLong("port"), help: "USB: root port number (with --bus)")
    var usbPort: Int?
    @Option(help: "Vendor ID in hex (with --pid or --did)")
    var vid: String?
    @Option(help: "USB: product ID in hex")
    var pid: String?
    @Option(help: "PCI: device ID in hex")
    var did: String?
    @Option(help: "PCI: address, e.g. 0000:01:00.0")
    var address: String?
    @Option(help: "The rule set's tag")
    var tag: String?

    var fields: [(String, JSONText?)] {
        [("device_node", devnode.map(JSONText.string)), ("bus", bus.map(JSONText.int)), ("port", usbPort.map(JSONText.int)),
         ("vid", vid.map(JSONText.string)), ("pid", pid.map(JSONText.string)), ("did", did.map(JSONText.string)),
         ("address", address.map(JSONText.string)), ("tag", tag.map(JSONText.string))]
    }
}

struct DeviceList<Kind: DeviceKind>: ParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(commandName: "list", abstract: "List the devices some rule passes, with their VM")
    }
    @OptionGroup var connection: ConnectionOptions
    @Flag(help: "Only devices not detached by the user") var connected = false
    @Flag(help: "Only devices the user detached") var disconnected = false
    @Flag(help: "One line per device: vid:pid vendor product (the reference client's)") var short = false
    @Flag(help: "A table, one device per line, with its VM, allowed VMs, tag and detached mark") var table = false
    @Option(help: "Only devices of rule sets with this tag") var tag: String?
    @Flag(help: "The reply's device objects as JSON") var json = false

    func validate() throws {
        if connected && disconnected { throw ValidationError("--connected and --disconnected exclude each other") }
        if [short, table, json].filter({ $0 }).count > 1 { throw ValidationError("--short, --table and --json exclude each other") }
    }

    func run() throws {
        let filter: JSONText? = connected ? .bool(false) : disconnected ? .bool(true) : nil
        let reply = try perform(connection, request("\(Kind.prefix)_list", [("disconnected", filter), ("tag", tag.map(JSONText.string))]), json: json)
        var devices: [JSONObject] = []
        var nodes: [JSONNode] = []
        if let m = reply.member(Kind.listKey), case .array(let items) = m.value.value {
            nodes = items
            devices = items.compactMap { if case .object(let o) = $0.value { o } else { nil } }
        }
        if json {
            writeStdout(JSONText.array(nodes.map(jsonText)).rendered(pretty: true) + "\n")
        } else if short {
            writeStdout(devices.map { printable(Kind.title($0)) + "\n" }.joined())
        } else if table {
            let rows = devices.map { d in
                [d.text(Kind.idField) ?? "", d.text("vm") ?? "-", d.text("allowed_vms") ?? "", d.text("tag") ?? "-",
                 d.text("disconnected") == "true" ? "yes" : "no", Kind.title(d)]
            }
            writeStdout(VHotplugCommands.table(header: [Kind.idField.uppercased(), "VM", "ALLOWED", "TAG", "DETACHED", "DEVICE"], rows: rows))
        } else {
            // As the reference client prints them: the title, each field as `{key:<16}: {value}`
            // with Python's text for the value (None, True, ['vm1']), a blank line.
            for d in devices {
                var out = printable(Kind.title(d)) + "\n"
                for m in d.members {
                    let key = m.key.count < 16 ? m.key + String(repeating: " ", count: 16 - m.key.count) : m.key
                    out += "  \(key): \(printable(pythonText(m.value.value)))\n"
                }
                writeStdout(out + "\n")
            }
        }
    }
}

/// A value as Python's `str()` writes it (the reference client's `{value}`): None, True,
/// False, numbers, strings as they are, and inside lists and objects strings as `repr()`.
func pythonText(_ v: JSONNode.Value, nested: Bool = false) -> String {
    switch v {
    case .null: return "None"
    case .bool(let b): return b ? "True" : "False"
    case .number(let n): return n.text
    case .string(let s): return nested ? pythonRepr(s) : s
    case .array(let items): return "[" + items.map { pythonText($0.value, nested: true) }.joined(separator: ", ") + "]"
    case .object(let o):
        return "{" + o.members.map { pythonRepr($0.key) + ": " + pythonText($0.value.value, nested: true) }.joined(separator: ", ") + "}"
    }
}

/// Python's `repr()` of a string: single quotes, double quotes when it holds a single quote
/// and no double quote.
func pythonRepr(_ s: String) -> String {
    let quote: Unicode.Scalar = s.contains("'") && !s.contains("\"") ? "\"" : "'"
    var out = String(quote)
    for c in s.unicodeScalars {
        if c == "\\" || c == quote { out.unicodeScalars.append("\\") }
        out.unicodeScalars.append(c)
    }
    out.unicodeScalars.append(quote)
    return out
}

/// Text from a device (names, serials) with its control characters escaped (`\x1b`): it
/// stays on its line and cannot steer the terminal.
func printable(_ s: String) -> String {
    guard s.unicodeScalars.contains(where: { $0.value < 0x20 || (0x7F..<0xA0).contains($0.value) }) else { return s }
    var out = ""
    for c in s.unicodeScalars {
        if c.value < 0x20 || (0x7F..<0xA0).contains(c.value) {
            out += "\\x" + String(repeating: "0", count: c.value < 0x10 ? 1 : 0) + String(c.value, radix: 16)
        } else {
            out.unicodeScalars.append(c)
        }
    }
    return out
}

/// Columns padded to their widest cell; device strings escaped so they stay on one line.
func table(header: [String], rows: [[String]]) -> String {
    let all = [header] + rows.map { $0.map { cell in String(JSONText.string(cell).rendered().dropFirst().dropLast()) } }
    var widths = [Int](repeating: 0, count: header.count)
    for row in all { for (i, c) in row.enumerated() { widths[i] = max(widths[i], c.count) } }
    return all.map { row in
        row.enumerated().map { i, c in i == row.count - 1 ? c : c + String(repeating: " ", count: widths[i] - c.count) }
            .joined(separator: "  ")
    }.joined(separator: "\n") + "\n"
}

/// A command that sends one request and, with `--json`, prints the reply.
protocol OneRequest: ParsableCommand {
    var connection: ConnectionOptions { get }
    var json: Bool { get }
    var request: JSONText { get }
}

extension OneRequest {
    func run() throws {
        let reply = try perform(connection, request, json: json)
        if json { writeStdout(objectText(reply).rendered(.python) + "\n") }
    }
}

struct DeviceAttach<Kind: DeviceKind>: OneRequest {
    static var configuration: CommandConfiguration {
        CommandConfiguration(commandName: "attach", abstract: "Attach a device (clears its detached mark; remembers the VM)")
    }
    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var selector: Selector
    @Option(help: "The VM to attach to (not sent with --tag: the API takes no VM with a tag)") var vm: String?
    @Flag(help: "Print the reply as JSON") var json = false

    func validate() throws {
        if selector.tag != nil, vm != nil {
            writeStderr("vhotplug: --vm \(vm ?? "") is not sent with --tag (the API takes no VM with a tag; vhotplugcli leaves it out too)\n")
        }
    }

    /// With `--tag`, no `vm`: the reference client leaves it out, and scripts that give both keep working.
    var request: JSONText {
        VHotplugCommands.request("\(Kind.prefix)_attach", selector.fields + [("vm", selector.tag == nil ? vm.map(JSONText.string) : nil)])
    }
}

struct DeviceDetach<Kind: DeviceKind>: OneRequest {
    static var configuration: CommandConfiguration {
        CommandConfiguration(commandName: "detach", abstract: "Detach a device and keep it on the host (also after replug and restart)")
    }
    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var selector: Selector
    @Flag(help: "Print the reply as JSON") var json = false
    var request: JSONText { VHotplugCommands.request("\(Kind.prefix)_detach", selector.fields) }
}

struct DeviceSuspend<Kind: DeviceKind>: OneRequest {
    static var configuration: CommandConfiguration {
        CommandConfiguration(commandName: "suspend", abstract: "Detach every device (of a VM) except skipOnSuspend ones")
    }
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Only this VM's devices") var vm: String?
    @Flag(help: "Print the reply as JSON") var json = false
    var request: JSONText { VHotplugCommands.request("\(Kind.prefix)_suspend", [("vm", vm.map(JSONText.string))]) }
}

struct DeviceResume<Kind: DeviceKind>: OneRequest {
    static var configuration: CommandConfiguration {
        CommandConfiguration(commandName: "resume", abstract: "Attach the suspended devices again")
    }
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Only this VM's devices") var vm: String?
    @Flag(help: "Print the reply as JSON") var json = false
    var request: JSONText { VHotplugCommands.request("\(Kind.prefix)_resume", [("vm", vm.map(JSONText.string))]) }
}

// MARK: - listen

/// `vhotplug listen`: prints notifications; reconnects when the daemon goes away.
struct Listen: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vhotplug listen", abstract: "Print the daemon's notifications as they come (reconnects on its own)")
    @OptionGroup var connection: ConnectionOptions
    @Flag(help: "Print each notification as its JSON line") var json = false
    @Option(help: "Seconds between reconnection attempts (a finite number above 0; at least 0.05 s are waited)") var retry: Double = 1

    func validate() throws {
        guard retry > 0, retry.isFinite else { throw ValidationError("--retry must be a finite number of seconds above 0, not \(retry)") }
    }

    func run() throws {
        // It runs until stopped: whatever mask or handlers it inherited, SIGTERM and SIGINT end it.
        var set = sigset_t()
        sigemptyset(&set)
        for signo in [SIGTERM, SIGINT, SIGHUP] {
            sigaddset(&set, signo)
            signal(signo, SIG_DFL)
        }
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
        var announcedWait = false
        while true {
            do {
                let c = try connection.connect(replyTimeout: 0)
                let reply = try c.request(.object([("action", .string("enable_notifications"))]))
                guard reply.text("result") == "ok" else {
                    writeStderr("vhotplug: \(reply.text("error") ?? "notifications refused")\n")
                    throw ExitCode(1)
                }
                writeStderr("vhotplug: listening to \(connection.address)\n")
                announcedWait = false
                while let line = try c.readLine() {
                    guard let event = parseObject(line) else { continue }
                    if json {
                        writeStdout(String(decoding: line, as: UTF8.self) + "\n")
                    } else {
                        writeStdout(describe(event) + "\n")
                    }
                }
                writeStderr("vhotplug: \(connection.address) closed the connection; reconnecting\n")
            } catch let error as ClientError {
                if !announcedWait { writeStderr("vhotplug: \(error); retrying every \(retry) s\n") }
                announcedWait = true
            }
            // A client's back-off between reconnection attempts (the daemon may be restarting).
            sleep(seconds: max(0.05, retry))
        }
    }

    /// `usb_attached vm1: 046d:c52b Logitech, Inc. Unifying Receiver (/dev/bus/usb/001/004)`.
    func describe(_ e: JSONObject) -> String {
        let name = e.text("event") ?? "?"
        var subject = ""
        if let m = e.member("usb_device"), case .object(let d) = m.value.value {
            subject = USBKind.title(d) + " (\(d.text("device_node") ?? "?"))"
        } else if let m = e.member("pci_device"), case .object(let d) = m.value.value {
            subject = PCIKind.title(d) + " (\(d.text("address") ?? "?"))"
        }
        var text = name + (e.text("vm").map { " \($0)" } ?? "") + ": " + subject
        if let allowed = e.text("allowed_vms") { text += "; allowed VMs: \(allowed)" }
        return String(JSONText.string(text).rendered().dropFirst().dropLast())
    }
}

/// Sleeps `seconds` (finite, not negative), however long: a day at a time, so that a
/// timespec holds it (usleep's 32-bit microseconds overflow past 4294 s). A signal handled
/// meanwhile does not cut it short.
func sleep(seconds: Double) {
    var left = seconds
    while left > 0 {
        let chunk = min(left, 86_400)
        let whole = chunk.rounded(.down)
        var request = timespec(tv_sec: Int(whole), tv_nsec: Int((chunk - whole) * 1_000_000_000))
        var remaining = timespec()
        while nanosleep(&request, &remaining) != 0, errno == EINTR { request = remaining }
        left -= chunk
    }
}

// MARK: - vmm args

/// `vhotplug vmm ...`.
struct VMMCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vhotplug vmm", abstract: "Ask the daemon for a VM's start arguments",
        subcommands: [VMMArgs.self])

    func run() throws { throw missingAction("args") }
}

/// `vhotplug vmm args --vm V`: the arguments that give a VM about to start its PCI and
/// evdev devices (the daemon moves the PCI ones to vfio-pci first). Printed joined by
/// spaces without a newline, for a launcher's command line; `--json` prints the list.
/// The daemon may start after the launcher: connecting is retried until `--timeout`.
struct VMMArgs: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "args", abstract: "Print the arguments that give a VM about to start its PCI and evdev devices")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "The VM about to start") var vm: String
    @Option(help: "QEMU: put each device on bus <prefix><index> (free pcie-root-ports of the VM)") var qemuBusPrefix: String?
    @Option(help: "QEMU: the first bus index (one more per device)") var qemuBusStartIndex: Int?
    @Flag(help: "Fail when the rules give the VM no PCI device") var requirePci = false
    @Option(help: "Seconds to keep trying to reach the daemon") var timeout: Double = 30
    @Flag(help: "Print the arguments as a JSON list") var json = false

    func validate() throws {
        if let i = qemuBusStartIndex, !(0...65535).contains(i) {
            throw ValidationError("--qemu-bus-start-index must be from 0 to 65535, not \(i)")
        }
        guard timeout >= 0, timeout.isFinite else { throw ValidationError("--timeout must be a number of seconds, not \(timeout)") }
    }

    var request: JSONText {
        VHotplugCommands.request("vmm_args", [
            ("vm", .string(vm)), ("qemu_bus_prefix", qemuBusPrefix.map(JSONText.string)),
            ("qemu_bus_start_index", qemuBusStartIndex.map(JSONText.int)), ("require_pci", requirePci ? .bool(true) : nil),
        ])
    }

    func run() throws {
        let reply = try perform(connection, request, json: json, retryingFor: timeout)
        var args: [String] = []
        if let m = reply.member("vmm_args"), case .array(let items) = m.value.value {
            args = items.compactMap { if case .string(let s) = $0.value { s } else { nil } }
        }
        writeStdout(json ? JSONText.array(args.map(JSONText.string)).rendered() + "\n" : args.joined(separator: " "))
    }
}

extension ConnectionOptions {
    /// Connects, trying again while nothing listens yet (the daemon may start after
    /// the caller): a back-off from 50 ms to 1 s between attempts, until `seconds`.
    /// The first failure is said on stderr once.
    func connect(retryingFor seconds: Double) throws(ClientError) -> APIConnection {
        let start = Deadline.now()
        var delay = 0.05
        var said = false
        while true {
            do {
                return try connect()
            } catch {
                let left = seconds - Deadline.now().seconds(since: start)
                guard left > 0 else {
                    throw ClientError("\(error.description) (tried for \(seconds) s)")
                }
                if !said { writeStderr("vhotplug: waiting up to \(seconds) s for the daemon at \(address)\n") }
                said = true
                usleep(useconds_t(min(delay, left) * 1_000_000))
                delay = min(delay * 2, 1)
            }
        }
    }
}
