import ArgumentParser
import HotplugConfig
import HotplugDaemon
import Reactor
import Logging
#if canImport(Glibc)
import Glibc
import Synchronization
#endif

/// The entry point: `vhotplug inspect ...` and `vhotplug check ...` go to their
/// commands, everything else is the daemon's command line (the seed's, unchanged).
/// Each command owns its options, so `-c` means the same file everywhere.
public enum Entry {
    static let subcommands: [String: any ParsableCommand.Type] = [
        "inspect": Inspect.self, "check": Check.self, "usb": USBCommand.self, "pci": PCICommand.self, "listen": Listen.self, "vmm": VMMCommand.self,
    ]

    public static func main() {
        var raw = Array(CommandLine.arguments.dropFirst())
        // The daemon's long options abbreviated, as argparse takes them (`--conf`, `--attach`).
        if !raw.contains(where: { subcommands[$0] != nil || $0 == "help" }) { raw = expandingAbbreviations(raw) }
        // The daemon first: its plain command line touches no ArgumentParser type
        // (not even the subcommands' table), so that library's pages stay unmapped.
        if let daemon = DaemonArguments(raw) { runDaemon(daemon) }
        let args = clientArguments(raw)
        if let first = args.first, let command = subcommands[first] {
            command.main(Array(args.dropFirst()))
        } else if args.first == "help", args.count > 1, let command = subcommands[args[1]] {
            command.main(["--help"])
        } else {
            Application.main(args)
        }
    }

    /// The plain daemon command line, read without ArgumentParser: the service then
    /// never touches that library's code (nor Foundation's), which keeps it out of the
    /// daemon's memory. Help, version and mistakes go to ArgumentParser.
    static func runDaemon(_ daemon: DaemonArguments) -> Never {
        do {
            try Application.runDaemon(config: daemon.config, attachConnected: daemon.attachConnected, debug: daemon.debug)
        } catch let code as ExitCode {
            exit(code.rawValue)
        } catch {
            writeStderr("vhotplug: \(error)\n")
            exit(1)
        }
        exit(0)
    }
}

/// `-c CONFIG [-a] [-d]` and their long forms, when that is all there is (`-c` may have its
/// value joined, `-cFILE` or `-c=FILE`, as argparse takes it); nil for anything else, which
/// `Application` parses: help and version are printed there, unknown options and missing
/// values reported, and a repeated option takes its last value (as argparse does).
struct DaemonArguments: Equatable {
    var config: String
    var attachConnected = false
    var debug = false

    init?(_ args: [String]) {
        var config: String?
        var attach: Bool?
        var debug: Bool?
        var i = 0
        while i < args.count {
            let a = args[i]
            switch a {
            case "-c", "--config":
                guard config == nil, i + 1 < args.count, !args[i + 1].hasPrefix("-") else { return nil }
                config = args[i + 1]
                i += 1
            case _ where a.hasPrefix("--config="):
                guard config == nil, a.count > "--config=".count else { return nil }
                config = String(a.dropFirst("--config=".count))
            case _ where a.hasPrefix("-c") && a.count > 2:
                // -cFILE; -c=FILE is FILE, as argparse reads it.
                let value = a.dropFirst(2)
                guard config == nil, value != "=" else { return nil }
                config = String(value.hasPrefix("=") ? value.dropFirst() : value)
            case "-a", "--attach-connected", "--no-attach-connected":
                guard attach == nil else { return nil }
                attach = a != "--no-attach-connected"
            case "-d", "--debug", "--no-debug":
                guard debug == nil else { return nil }
                debug = a != "--no-debug"
            default:
                return nil
            }
            i += 1
        }
        guard let config else { return nil }
        self.config = config
        self.attachConnected = attach ?? false
        self.debug = debug ?? false
    }
}

/// The daemon's long options given by a unique prefix (`--conf FILE`, `--attach`, `--no-d`), as
/// the seed's argparse takes them, spelled out; an ambiguous one (`--no`) is left for the parser
/// to refuse. Nothing after `--`.
func expandingAbbreviations(_ args: [String]) -> [String] {
    let options = ["--config", "--attach-connected", "--no-attach-connected", "--debug", "--no-debug", "--help", "--version"]
    var out: [String] = []
    for (i, a) in args.enumerated() {
        if a == "--" { return out + args[i...] }
        guard a.hasPrefix("--"), a.count > 2 else { out.append(a); continue }
        let name = a.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)[0]
        let matches = options.filter { $0.hasPrefix(name) }
        if matches.count == 1, let full = matches.first, full != name {
            out.append(full + a.dropFirst(name.count))
        } else {
            out.append(a)
        }
    }
    return out
}

/// `vhotplug -t tcp -p 2000 usb list` (the reference client's order): connection
/// options before `usb`/`pci`/`listen` move after the subcommand, where they are parsed.
/// As the reference's argparse takes them: `-t tcp`, `-ttcp`, `--transport tcp`,
/// `--transport=tcp`, and `-d`/`--debug`.
func clientArguments(_ args: [String]) -> [String] {
    let withValue: Set<String> = ["-t", "--transport", "-u", "--path", "-s", "--host", "-p", "--api-port", "--net-port", "-c", "--cid"]
    var k = 0
    while k < args.count {
        let a = args[k]
        if a == "-d" || a == "--debug" || a == "--no-debug" {
            k += 1
        } else if withValue.contains(a), k + 1 < args.count {
            k += 2
        } else if let equals = a.firstIndex(of: "="), a.hasPrefix("--"), withValue.contains(String(a[..<equals])) {
            k += 1
        } else if a.count > 2, !a.hasPrefix("--"), withValue.contains(String(a.prefix(2))) {
            k += 1 // -ttcp (the option allows its value joined)
        } else {
            break
        }
    }
    guard k > 0, k < args.count, ["usb", "pci", "listen", "vmm"].contains(args[k]) else { return args }
    let leafEnd = args[k] == "listen" ? k + 1 : min(args.count, k + 2)
    return Array(args[k..<leafEnd]) + Array(args[0..<k]) + Array(args[leafEnd...])
}

/// The daemon's command line: `vhotplug -c CONFIG [-a] [-d]`.
public struct Application: ParsableCommand {
    public static let version = "0.1.0"

    public static let configuration = CommandConfiguration(
        commandName: "vhotplug",
        abstract: "Hot-plugging USB, PCI and input devices to virtual machines",
        usage: """
            vhotplug -c <config> [-a | --attach-connected | --no-attach-connected] [-d | --debug | --no-debug]
              vhotplug inspect [-c <config>] [--json] [--usb] [--pci] [--input] [<sysname> ...]
              vhotplug check -c <config>
              vhotplug usb list|attach|detach|suspend|resume [options]   (the control API's client)
              vhotplug pci list|attach|detach|suspend|resume [options]
              vhotplug listen [--json] [--retry <s>]
              vhotplug vmm args --vm <vm> [--qemu-bus-prefix <p>] [--qemu-bus-start-index <n>] [--require-pci] [--timeout <s>] [--json]
            """,
        discussion: """
            Watches the host's device events and attaches each device to the VM its rules name \
            (QEMU over QMP, crosvm through its control socket).
            """,
        version: version
    )

    @Option(name: [.customShort("c", allowingJoined: true), .long], help: "Path to the configuration file")
    var config: String?

    @Flag(name: [.customShort("a"), .customLong("attach-connected")], inversion: .prefixedNo,
          help: "Attach connected devices on startup")
    var attachConnected = false

    @Flag(name: [.customShort("d"), .customLong("debug")], inversion: .prefixedNo, help: "Enable debug messages")
    var debug = false

    public init() {}

    public func run() throws {
        guard let config else {
            throw ValidationError("Missing expected argument '--config <config>'")
        }
        try Self.runDaemon(config: config, attachConnected: attachConnected, debug: debug)
    }

    /// Runs the daemon until SIGTERM/SIGINT; exit code 1 when it cannot start, 2 for a bad configuration.
    static func runDaemon(config: String, attachConnected: Bool, debug: Bool) throws {
        // Before any other thread exists: these signals are read from a signalfd.
        SignalSource.block([SIGHUP, SIGTERM, SIGINT])
        bootstrapLogging(debug: debug)
        let configuration = try loadConfiguration(config)
        let logger = Logger(label: "vhotplug")
        let loop: EventLoop
        do { loop = try EventLoop() } catch {
            writeStderr("vhotplug: cannot start the event loop: \(error)\n")
            throw ExitCode(1)
        }
        var options = DaemonOptions(configPath: config, attachConnected: attachConnected)
        // Tests keep the daemon's records in their testbed (the host's /run/vhotplug is left alone).
        func absolutePath(_ variable: String, _ current: String, _ what: String) -> String {
            guard let value = getenv(variable).map({ String(cString: $0) }) else { return current }
            if value.hasPrefix("/") { return value }
            logger.warning("\(variable)=\(value) ignored: expected an absolute path (\(current) \(what))")
            return current
        }
        options.vfioRecordDirectory = absolutePath("VHOTPLUG_VFIO_RECORDS", options.vfioRecordDirectory, "holds the VFIO records")
        options.authorizationRecordPath = absolutePath("VHOTPLUG_AUTHORIZATION_RECORD", options.authorizationRecordPath,
                                                       "keeps the authorized_default values from before")
        options.crosvmRecordDirectory = absolutePath("VHOTPLUG_CROSVM_RECORDS", options.crosvmRecordDirectory,
                                                     "holds the ports vhotplug attached in crosvm VMs")
        // Tests give the daemon a mount table of their own (its changes are still the host's).
        options.mountInfoPath = absolutePath("VHOTPLUG_MOUNTINFO", options.mountInfoPath, "lists the mounts")
        options.fstabPath = absolutePath("VHOTPLUG_FSTAB", options.fstabPath, "names an automounted /boot's device")
        let daemon = Daemon(options: options, configuration: configuration, loop: loop, logger: logger)
        let failure = StartFailure()
        // On the loop from the first job: the global executor (and its worker-pool
        // monitor, which wakes every second) is never used.
        Task(executorPreference: loop) {
            do {
                // systemd (Type=notify): ready once the first pass over connected devices is done.
                try await daemon.start(onReady: { SystemdNotify.send("READY=1") })
            } catch {
                failure.message = "\(error)"
                loop.stop()
            }
        }
        // The daemon lives as long as the loop runs (its handlers refer to it).
        withExtendedLifetime(daemon) { loop.run() }
        if let message = failure.message {
            writeStderr("vhotplug: cannot start: \(message)\n")
            throw ExitCode(1)
        }
    }
}

/// A start-up error handed from the daemon's task to `main`.
final class StartFailure: @unchecked Sendable {
    var message: String?
}

/// Loads and validates a configuration; on errors prints every diagnostic to
/// stderr and exits with code 2.
func loadConfiguration(_ path: String) throws -> Configuration {
    do {
        return try ConfigurationLoader.load(path: path)
    } catch let error as ConfigurationError {
        writeStderr(error.description + "\n")
        let n = error.count
        writeStderr("vhotplug: \(path): \(n) error\(n == 1 ? "" : "s") in the configuration\n")
        throw ExitCode(2)
    }
}

func writeStderr(_ s: String) {
    var s = s
    s.withUTF8(writeStderr)
}

/// Bytes to stderr, whole (a short write is continued).
func writeStderr(_ buf: UnsafeBufferPointer<UInt8>) {
    guard let base = buf.baseAddress else { return }
    var off = 0
    while off < buf.count {
        let n = write(2, base + off, buf.count - off)
        if n <= 0 { if errno == EINTR { continue }; return }
        off += n
    }
}

func writeStdout(_ s: String) {
    var s = s
    s.withUTF8 { buf in
        var off = 0
        while off < buf.count {
            let n = write(1, buf.baseAddress! + off, buf.count - off)
            if n <= 0 { if errno == EINTR { continue }; return }
            off += n
        }
    }
}

/// Logging to stderr; `-d` lowers the level to debug. When journald reads
/// stderr (`JOURNAL_STREAM` is set) lines carry no timestamp of their own.
func bootstrapLogging(debug: Bool) {
    let level: Logger.Level = debug ? (getenv("VHOTPLUG_TRACE") != nil ? .trace : .debug) : .info
    let journal = getenv("JOURNAL_STREAM") != nil
    tzset() // once: the handler's localtime_r does not look at the time zone file again
    LoggingSystem.bootstrap { label in StderrLogHandler(label: label, logLevel: level, journal: journal) }
}

/// Log lines on stderr, one `write` each. For a terminal or a file:
/// `2026-11-25T12:58:21+0000 info vhotplug: [Module] message` (swift-log's
/// StreamLogHandler format, without its `strftime`, which looks at /etc/localtime
/// again for every line). For journald (`journal`): `<6>message`, the syslog
/// priority prefix it understands, and no timestamp of our own.
struct StderrLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level
    var journal = false
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        log(level: event.level, message: event.message, metadata: event.metadata, source: event.source,
            file: event.file, function: event.function, line: event.line)
    }

    func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String,
             file: String, function: String, line: UInt) {
        if journal {
            let priority: Int
            switch level {
            case .trace, .debug: priority = 7
            case .info: priority = 6
            case .notice: priority = 5
            case .warning: priority = 4
            case .error: priority = 3
            case .critical: priority = 2
            }
            // One journal entry per line: a multi-line message keeps its priority on each.
            let text = "\(message)".split(separator: "\n", omittingEmptySubsequences: false)
                .map { "<\(priority)>\($0)" }.joined(separator: "\n")
            writeStderr(text + "\n")
            return
        }
        // One byte buffer sized once: the line is built in place and written as it is.
        let text = message.description
        var line: [UInt8] = []
        line.reserveCapacity(text.utf8.count + label.utf8.count + source.utf8.count + 48)
        Self.appendTimestamp(to: &line)
        line.append(UInt8(ascii: " "))
        line.append(contentsOf: level.rawValue.utf8)
        line.append(UInt8(ascii: " "))
        line.append(contentsOf: label.utf8)
        line.append(UInt8(ascii: ":"))
        // Metadata is rare (none in the daemon's own lines): merged and sorted only when there is some.
        if !self.metadata.isEmpty || !(metadata ?? [:]).isEmpty {
            let all = self.metadata.merging(metadata ?? [:]) { $1 }
            line.append(contentsOf: (" " + all.sorted { $0.key < $1.key }.map { "\($0)=\($1)" }.joined(separator: " ")).utf8)
        }
        line.append(contentsOf: " [".utf8)
        line.append(contentsOf: source.utf8)
        line.append(contentsOf: "] ".utf8)
        line.append(contentsOf: text.utf8)
        line.append(UInt8(ascii: "\n"))
        line.withUnsafeBufferPointer(writeStderr)
    }

    /// Local time, ISO 8601 with the UTC offset, written digit by digit (one log line each).
    static func timestamp() -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(24)
        appendTimestamp(to: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// `timestamp()` appended to a line being built.
    static func appendTimestamp(to bytes: inout [UInt8]) {
        let t = time(nil)
        if let text = lastStamp.withLock({ $0.second == t ? $0.text : nil }) {
            bytes.append(contentsOf: text)
            return
        }
        var text: [UInt8] = []
        text.reserveCapacity(24)
        format(t, into: &text)
        lastStamp.withLock { $0 = (t, text) }
        bytes.append(contentsOf: text)
    }

    /// The last second written, for the lines logged within it (most lines of a burst):
    /// localtime_r and the digits cost more than the rest of a line.
    private static let lastStamp = Mutex<(second: time_t, text: [UInt8])>((-1, []))

    private static func format(_ second: time_t, into bytes: inout [UInt8]) {
        var t = second
        var tm = Glibc.tm()
        localtime_r(&t, &tm)
        let offset = tm.tm_gmtoff / 60
        func digits(_ v: Int, _ width: Int) {
            var d = 1
            for _ in 1..<width { d *= 10 }
            var v = v
            while d > 0 {
                bytes.append(UInt8(ascii: "0") + UInt8((v / d) % 10))
                v %= d
                d /= 10
            }
        }
        digits(Int(tm.tm_year) + 1900, 4); bytes.append(UInt8(ascii: "-"))
        digits(Int(tm.tm_mon) + 1, 2); bytes.append(UInt8(ascii: "-"))
        digits(Int(tm.tm_mday), 2); bytes.append(UInt8(ascii: "T"))
        digits(Int(tm.tm_hour), 2); bytes.append(UInt8(ascii: ":"))
        digits(Int(tm.tm_min), 2); bytes.append(UInt8(ascii: ":"))
        digits(Int(tm.tm_sec), 2)
        bytes.append(UInt8(ascii: offset < 0 ? "-" : "+"))
        digits(abs(offset) / 60, 2)
        digits(abs(offset) % 60, 2)
    }
}

/// `vhotplug check -c FILE`: validates a configuration.
struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vhotplug check",
        abstract: "Validate a configuration file and print a summary",
        discussion: "Exit code 0 when the configuration is valid, 2 when it is not (its errors are printed: the first 100, then how many more).")

    @Option(name: [.customShort("c", allowingJoined: true), .long], help: "Path to the configuration file")
    var config: String

    func run() throws {
        let configuration = try loadConfiguration(config)
        writeStdout("\(config): \(configuration.summary)\n")
    }
}
