import CLinux
import Foundation
import Reactor

/// A real QEMU (TCG, paused, no disk) with a QMP socket, for tests. Started with
/// `-daemonize`: QEMU's parent exits only once the monitor sockets exist, so the
/// test knows it is ready without waiting on a clock. Killed on `stop()`/deinit.
public final class QEMUInstance: @unchecked Sendable {
    public let dir: String
    /// The QMP socket the code under test uses.
    public let qmpPath: String
    /// A second monitor for the test's own observations.
    public let observerPath: String
    public private(set) var pid: Int32 = 0
    private let extraArgs: [String]
    private let environment: [String: String]
    /// Held while QEMU may run in it: the testbed's folder is removed only after QEMU is gone
    /// (its deinit stops QEMU first; umockdev aborts the test process when a removal fails).
    private let testbed: Testbed?

    /// - Parameters:
    ///   - testbed: run QEMU inside this umockdev testbed (it then sees the fake USB devices).
    ///   - extraArgs: more QEMU arguments (root ports, ...).
    public init(name: String = "vm1", testbed: Testbed? = nil, extraArgs: [String] = [], directory: String? = nil) throws {
        self.testbed = testbed
        dir = directory ?? scratchPath("vhp-qemu")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        qmpPath = dir + "/\(name).qmp"
        observerPath = dir + "/\(name)-obs.qmp"
        self.extraArgs = extraArgs
        var env = cleanEnvironment()
        if let testbed {
            env["UMOCKDEV_DIR"] = testbed.root
            env["LD_PRELOAD"] = try umockdevPreload()
        }
        environment = env
        try start()
    }

    deinit { stop() }

    /// Starts QEMU (again, after `stop()`), ready when this returns.
    public func start() throws {
        let qemu = try requireProgram("qemu-system-x86_64", package: "qemu-system-x86")
        let pidFile = dir + "/qemu.pid"
        try? FileManager.default.removeItem(atPath: pidFile)
        let args = [qemu, "-machine", "q35,accel=tcg", "-S", "-nodefaults", "-display", "none", "-m", "64",
                    "-device", "qemu-xhci,id=xhci,p2=8,p3=8",
                    "-qmp", "unix:\(qmpPath),server=on,wait=off", "-qmp", "unix:\(observerPath),server=on,wait=off",
                    "-daemonize", "-pidfile", pidFile] + extraArgs
        // Output to a file: the daemonized QEMU keeps its inherited descriptors
        // a while, so pipes would not see their end when its parent exits.
        let logPath = dir + "/qemu.log"
        FileManager.default.createFile(atPath: logPath, contents: nil)
        // Extra descriptors: umockdev names its fake netlink sockets by fd number, and a
        // daemon in the same testbed must not get QEMU's numbers (FACTS.md).
        let status = try spawnAndWait([qemu] + Array(args.dropFirst()), environment: environment, output: logPath, extraFds: 200)
        guard status == 0, let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
              let p = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw TestbedError(message: "QEMU did not start: \((try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "")")
        }
        pid = p
    }

    /// Stops QEMU (SIGSTOP: the kernel still takes connections into its listen backlog, nobody
    /// answers) and returns once the kernel shows it stopped: `kill` returns before a running
    /// process has stopped, and a QEMU still running for a moment could greet a connection.
    public func pause() throws {
        kill(pid, SIGSTOP)
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            // /proc/PID/stat: "PID (comm) STATE ...": T once stopped.
            if let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
               let close = stat.lastIndex(of: ")"), stat[close...].dropFirst(2).first == "T" { return }
        }
        throw TestbedError(message: "QEMU (pid \(pid)) did not stop within 10 s of SIGSTOP")
    }

    /// Lets a paused QEMU run again.
    public func resume() { kill(pid, SIGCONT) }

    /// Kills QEMU at once (a VM that dies) and removes its sockets.
    public func stop() {
        guard pid > 0 else { return }
        // Not our child (daemonized): wait for its end through a pidfd.
        let pidfd = vh_pidfd_open(pid)
        kill(pid, SIGKILL)
        if pidfd >= 0 {
            var p = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
            _ = poll(&p, 1, 10_000)
            close(pidfd)
        }
        pid = 0
        try? FileManager.default.removeItem(atPath: qmpPath)
        try? FileManager.default.removeItem(atPath: observerPath)
    }

    /// One command on the observer monitor; returns the raw reply line.
    public func observe(_ command: String, _ arguments: String = "{}") throws -> [String: Any] {
        try QMPLine.exchange(path: observerPath, command: command, arguments: arguments)
    }

    /// vhotplug's ids in `/machine/peripheral` (what it attached).
    public func attachedIds() throws -> [String] {
        try peripheralIds().filter { $0.hasPrefix("vhp-") }
    }

    /// The ids of `/machine/peripheral` (what is attached, the harness's own devices too).
    public func peripheralIds() throws -> [String] {
        let reply = try observe("qom-list", #"{"path": "/machine/peripheral"}"#)
        return ((reply["return"] as? [[String: Any]]) ?? [])
            .filter { ($0["type"] as? String)?.hasPrefix("child<") == true }
            .compactMap { $0["name"] as? String }.sorted()
    }
}

/// The path of umockdev's preload library, or a failure naming the package.
public func umockdevPreload() throws -> String {
    for p in ["/usr/lib/x86_64-linux-gnu/libumockdev-preload.so.0", "/usr/lib/libumockdev-preload.so.0",
              "/usr/lib64/libumockdev-preload.so.0"] where FileManager.default.fileExists(atPath: p) {
        return p
    }
    throw TestbedError(message: "libumockdev-preload.so not found: install the Debian package umockdev")
}

/// A blocking QMP client for tests (the code under test has its own).
public enum QMPLine {
    public static func exchange(path: String, command: String, arguments: String) throws -> [String: Any] {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestbedError(message: "socket failed") }
        defer { close(fd) }
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let rc = withUnixAddress(path) { connect(fd, $0, $1) }
        guard rc == 0 else { throw TestbedError(message: "connect \(path): errno \(errno)") }
        var buffer = [UInt8]()
        func line() throws -> [String: Any] {
            while true {
                if let nl = buffer.firstIndex(of: 0x0A) {
                    let l = Array(buffer[..<nl])
                    buffer.removeSubrange(...nl)
                    if let o = try JSONSerialization.jsonObject(with: Data(l)) as? [String: Any] { return o }
                    continue
                }
                var chunk = [UInt8](repeating: 0, count: 65536)
                let n = read(fd, &chunk, chunk.count)
                guard n > 0 else { throw TestbedError(message: "QMP closed") }
                buffer += chunk[0..<n]
            }
        }
        func send(_ s: String) { _ = s.withCString { write(fd, $0, strlen($0)) } }
        _ = try line()
        send(#"{"execute": "qmp_capabilities"}"# + "\n")
        while try line()["return"] == nil {}
        send(#"{"execute": "\#(command)", "arguments": \#(arguments)}"# + "\n")
        while true {
            let reply = try line()
            if reply["return"] != nil || reply["error"] != nil { return reply }
        }
    }
}

/// Runs a program to its end with its output in a file; returns its exit status.
/// (posix_spawn and waitpid: no helper threads, no pipes to drain.)
public func spawnAndWait(_ argv: [String], environment: [String: String], output: String, extraFds: Int32 = 0) throws -> Int32 {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_APPEND, 0o644)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    if extraFds > 0 {
        for fd in 3..<(3 + extraFds) { posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", O_RDONLY, 0) }
    }
    let cArgs = argv.map { strdup($0) } + [nil]
    let cEnv = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { (cArgs + cEnv).forEach { free($0) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, argv[0], &actions, nil, cArgs, cEnv)
    guard rc == 0 else { throw TestbedError(message: "cannot start \(argv[0]): errno \(rc)") }
    return waitForExit(pid)
}

/// Waits for the child `pid` to end and reaps it; its exit status (128 + the signal that ended it).
public func waitForExit(_ pid: pid_t) -> Int32 {
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return EventLoop.exitCode(status)
}

/// A program started with its stdout and stderr in pipes, read here, and reaped with waitpid.
/// (Not Foundation's Process: its waitUntilExit once waited for good for a program that had
/// ended, the termination lost, and the test suite hung with it.)
public final class ChildProcess: @unchecked Sendable {
    public let pid: pid_t
    private var outFd: Int32
    private var errFd: Int32
    private let lock = NSLock()
    /// Its exit status once reaped.
    private var status: Int32?

    /// `environment`: the program's whole environment (nil: this process's).
    /// `mergingStderr`: its stderr goes to the stdout pipe (`takeOutput`).
    public init(_ argv: [String], environment: [String: String]? = nil, mergingStderr: Bool = false) throws {
        var outPipe: [Int32] = [-1, -1], errPipe: [Int32] = [-1, -1]
        guard pipe(&outPipe) == 0, mergingStderr || pipe(&errPipe) == 0 else { throw TestbedError(message: "pipe: errno \(errno)") }
        // (Kept from other children; dup2 gives this one its copies without the flag.)
        for fd in outPipe + errPipe where fd >= 0 { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, mergingStderr ? outPipe[1] : errPipe[1], 2)
        let cArgs = argv.map { strdup($0) } + [nil]
        let cEnv = environment.map { $0.map { strdup("\($0.key)=\($0.value)") } + [nil] }
        defer {
            cArgs.forEach { free($0) }
            cEnv?.forEach { free($0) }
        }
        var pid: pid_t = 0
        let rc = cEnv.map { posix_spawn(&pid, argv[0], &actions, nil, cArgs, $0) } ?? posix_spawn(&pid, argv[0], &actions, nil, cArgs, environ)
        for fd in [outPipe[1], errPipe[1]] where fd >= 0 { close(fd) }
        guard rc == 0 else {
            for fd in [outPipe[0], errPipe[0]] where fd >= 0 { close(fd) }
            throw TestbedError(message: "cannot start \(argv[0]): errno \(rc)")
        }
        self.pid = pid
        outFd = outPipe[0]
        errFd = errPipe[0]
    }

    deinit {
        for fd in [outFd, errFd] where fd >= 0 { close(fd) }
    }

    /// The read end of its stdout pipe, for the caller to read and close (it is no longer this one's).
    public func takeOutput() -> Int32 {
        defer { outFd = -1 }
        return outFd
    }

    /// The next line of its stderr (without the newline), or what came before its end.
    public func stderrLine() -> String {
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while read(errFd, &byte, 1) == 1, byte != 0x0A { line.append(byte) }
        return String(decoding: line, as: UTF8.self)
    }

    /// All of its stdout, to its end.
    public func stdout() -> String {
        var out: [UInt8] = [], buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(outFd, &buf, buf.count)
            if n > 0 { out += buf[0..<n] } else if n < 0 && errno == EINTR { continue } else { break }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Its exit status (128 + the signal when one ended it), once it has ended.
    public func wait() -> Int32 {
        lock.lock()
        defer { lock.unlock() }
        if let status { return status }
        let s = waitForExit(pid)
        status = s
        return s
    }

    /// True until it has ended (reaped here when it has).
    public var isRunning: Bool {
        lock.lock()
        defer { lock.unlock() }
        guard status == nil else { return false }
        var raw: Int32 = 0
        guard waitpid(pid, &raw, WNOHANG) == pid else { return true }
        status = EventLoop.exitCode(raw)
        return false
    }

    /// Sends it `signo` unless it has been reaped (its pid may be another's by then).
    public func signal(_ signo: Int32) {
        lock.lock()
        defer { lock.unlock() }
        if status == nil { kill(pid, signo) }
    }
}

/// A daemon's environment with the kernel's slow stores played (`Tests/Doubles/slow-store.c`,
/// before umockdev's preload): a write to a file whose path ends in `suffix` waits while
/// `gate` exists.
public func slowStoreEnvironment(gate: String, suffix: String) throws -> [String: String] {
    ["LD_PRELOAD": try slowStoreLibrary() + ":" + umockdevPreload(),
     "VHOTPLUG_TEST_SLOW_GATE": gate, "VHOTPLUG_TEST_SLOW_SUFFIX": suffix]
}

/// `Tests/Doubles/slow-store.c` built as a preload library (once per test process). The
/// first C compiler found is used: cc, gcc, clang, or the Swift toolchain's clang.
func slowStoreLibrary() throws -> String {
    let out = NSTemporaryDirectory() + "/vhotplug-slow-store-\(getpid()).so"
    if FileManager.default.fileExists(atPath: out) { return out }
    let candidates = ["/usr/bin/cc", "/usr/bin/gcc", "/usr/bin/clang", "/opt/swift/usr/bin/clang"]
    guard let compiler = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
        throw TestbedError(message: "no C compiler to build Tests/Doubles/slow-store.c: install the Debian package gcc")
    }
    // Built aside and renamed: a test that asks meanwhile never loads half a library.
    let building = out + ".\(UUID().uuidString)"
    let r = try run([compiler, "-shared", "-fPIC", "-O1", "-o", building, Repository.root + "/Tests/Doubles/slow-store.c", "-ldl"])
    guard r.status == 0, rename(building, out) == 0 else {
        throw TestbedError(message: "\(compiler) could not build slow-store.c: \(r.stderr)")
    }
    return out
}
