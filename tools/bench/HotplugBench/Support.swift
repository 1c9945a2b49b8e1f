// Support for vhotplug-hotplug-bench: clocks, /proc readings, a persistent QMP
// observer that polls `qom-list /machine/peripheral`, and the daemon as a process
// whose log lines are timestamped as they arrive.
import CLinux
import Foundation
import VHotplugTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// CLOCK_MONOTONIC in nanoseconds.
func now() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Unbuffered output (figures appear as they are measured).
func out(_ s: String, fd: Int32 = 1) {
    var s = s
    s.withUTF8 { b in
        var off = 0
        while off < b.count {
            let n = write(fd, b.baseAddress! + off, b.count - off)
            if n <= 0 { if errno == EINTR { continue }; return }
            off += n
        }
    }
}

func eprint(_ s: String) { out(s, fd: 2) }

func ms(_ ns: UInt64) -> Double { Double(ns) / 1e6 }

/// Sleeps until an absolute CLOCK_MONOTONIC time.
func sleepUntil(_ t: UInt64) {
    var ts = timespec(tv_sec: Int(t / 1_000_000_000), tv_nsec: Int(t % 1_000_000_000))
    while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nil) == EINTR {}
}

func sleepSeconds(_ s: Double) { sleepUntil(now() + UInt64(s * 1e9)) }

/// Nearest-rank percentile (p in 0...100) of samples.
func percentile(_ xs: [Double], _ p: Double) -> Double {
    guard !xs.isEmpty else { return .nan }
    let s = xs.sorted()
    let rank = Int((p / 100 * Double(s.count)).rounded(.up))
    return s[max(0, min(s.count - 1, rank - 1))]
}

func f2(_ x: Double) -> String { String(format: "%.2f", x) }

// MARK: /proc

/// A whole /proc file (they report size 0: read to the end).
func readProc(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var data: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = read(fd, &chunk, chunk.count)
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        data += chunk[0..<n]
    }
    return String(decoding: data, as: UTF8.self)
}

/// What the kernel says about a process (all its threads).
struct ProcSample {
    /// utime + stime in clock ticks (/proc/PID/stat, the whole process).
    var ticks: Int
    var uticks = 0
    var sticks = 0
    /// Time on CPU in ns, summed over threads (/proc/PID/task/*/schedstat, first field).
    var cpuNs: UInt64
    /// voluntary + nonvoluntary context switches, summed over threads.
    var switches: Int
    var voluntary: Int
    var nonvoluntary: Int
    var threads: Int
    /// VmRSS and VmHWM in KiB.
    var rssKiB: Int
    var hwmKiB: Int
    /// RssAnon (heap, stacks, anonymous maps) and RssFile (pages of the program and its libraries).
    var anonKiB = 0
    var fileKiB = 0

    static let ticksPerSecond = Double(sysconf(Int32(_SC_CLK_TCK)))

    static func read(_ pid: Int32) -> ProcSample {
        var s = ProcSample(ticks: 0, cpuNs: 0, switches: 0, voluntary: 0, nonvoluntary: 0, threads: 0, rssKiB: 0, hwmKiB: 0)
        if let stat = readProc("/proc/\(pid)/stat"),
           let close = stat.lastIndex(of: ")") {
            // Fields after "(comm)": state is field 3; utime 14, stime 15.
            let f = stat[stat.index(after: close)...].split(separator: " ")
            if f.count > 13, let u = Int(f[11]), let st = Int(f[12]) { s.ticks = u + st; s.uticks = u; s.sticks = st }
        }
        if let status = readProc("/proc/\(pid)/status") {
            s.rssKiB = field(status, "VmRSS:")
            s.hwmKiB = field(status, "VmHWM:")
            s.anonKiB = field(status, "RssAnon:")
            s.fileKiB = field(status, "RssFile:")
        }
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        s.threads = tasks.count
        for t in tasks {
            if let status = readProc("/proc/\(pid)/task/\(t)/status") {
                s.voluntary += field(status, "voluntary_ctxt_switches:")
                s.nonvoluntary += field(status, "nonvoluntary_ctxt_switches:")
            }
            if let sched = readProc("/proc/\(pid)/task/\(t)/schedstat"),
               let first = sched.split(separator: " ").first, let ns = UInt64(first) {
                s.cpuNs += ns
            }
        }
        s.switches = s.voluntary + s.nonvoluntary
        return s
    }

    /// Context switches per thread name (to say which thread switches).
    static func switchesByThread(_ pid: Int32) -> [String: Int] {
        var out: [String: Int] = [:]
        for t in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? [] {
            guard let status = readProc("/proc/\(pid)/task/\(t)/status") else { continue }
            let name = status.split(separator: "\n").first.map { String($0.dropFirst("Name:".count)).trimmingCharacters(in: .whitespaces) } ?? "?"
            out["\(t) \(name)"] = field(status, "voluntary_ctxt_switches:") + field(status, "nonvoluntary_ctxt_switches:")
        }
        return out
    }

    private static func field(_ text: String, _ key: String) -> Int {
        for line in text.split(separator: "\n") where line.hasPrefix(key) {
            return Int(line.dropFirst(key.count).split(whereSeparator: { $0 == " " || $0 == "\t" }).first ?? "") ?? 0
        }
        return 0
    }
}

// MARK: QMP observer

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// A persistent, blocking QMP connection to QEMU's second (observer) monitor.
/// A connected Unix stream socket whose reads time out after 10 s.
func connectUnix(_ path: String) throws -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw BenchError("socket: errno \(errno)") }
    var tv = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var addr = sockaddr_un()
    let len = vh_sockaddr_un(&addr, path)
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(len)) }
    }
    guard rc == 0 else {
        let e = errno
        close(fd)
        throw BenchError("connect \(path): errno \(e)")
    }
    return fd
}

final class QMPObserver: @unchecked Sendable {
    private let fd: Int32
    private var buffer: [UInt8] = []
    private var chunk = [UInt8](repeating: 0, count: 65536)

    init(path: String) throws {
        fd = try connectUnix(path)
        _ = try line()                                 // greeting
        _ = try command(#"{"execute": "qmp_capabilities"}"#)
    }

    deinit { close(fd) }

    /// One line from QEMU (without its newline).
    private func line() throws -> ArraySlice<UInt8> {
        while true {
            if let nl = buffer.firstIndex(of: 0x0A) {
                let l = buffer[..<nl]
                defer { buffer.removeSubrange(...nl) }
                return ArraySlice(l)
            }
            let n = read(fd, &chunk, chunk.count)
            guard n > 0 else { throw BenchError("QMP observer: connection closed or timed out (errno \(errno))") }
            buffer += chunk[0..<n]
        }
    }

    /// Sends a command; returns its reply line (events are skipped).
    @discardableResult
    func command(_ json: String) throws -> [UInt8] {
        let bytes = Array((json + "\n").utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { throw BenchError("QMP observer: write failed") }
            off += n
        }
        while true {
            let l = try line()
            if contains(l, returnKey) || contains(l, errorKey) { return Array(l) }
        }
    }

    private let returnKey = Array(#""return""#.utf8)
    private let errorKey = Array(#""error""#.utf8)
    static let query = #"{"execute": "qom-list", "arguments": {"path": "/machine/peripheral"}}"#

    /// `qom-list /machine/peripheral`: the raw reply.
    func peripheral() throws -> [UInt8] { try command(Self.query) }
}

func contains<C: Collection>(_ hay: C, _ needle: [UInt8]) -> Bool where C.Element == UInt8, C.Index == Int {
    countOccurrences(hay, needle, limit: 1) > 0
}

/// Occurrences of `needle` in `hay` (up to `limit`).
func countOccurrences<C: Collection>(_ hay: C, _ needle: [UInt8], limit: Int = .max) -> Int where C.Element == UInt8, C.Index == Int {
    guard !needle.isEmpty, hay.count >= needle.count else { return 0 }
    var n = 0
    var i = hay.startIndex
    let last = hay.endIndex - needle.count
    let first = needle[0]
    while i <= last {
        if hay[i] == first {
            var k = 1
            while k < needle.count && hay[i + k] == needle[k] { k += 1 }
            if k == needle.count {
                n += 1
                if n >= limit { return n }
                i += needle.count
                continue
            }
        }
        i += 1
    }
    return n
}

/// Polls `qom-list /machine/peripheral` on a persistent observer connection every
/// `period` on its own thread, and records when the number of ids matching
/// `needle` changes (the time of the reply that first shows the new count).
final class Poller: @unchecked Sendable {
    private let observer: QMPObserver
    private let needle: [UInt8]
    private let period: UInt64
    private let cond = NSCondition()
    private var running = true
    private var current = -1
    /// (count, time of the reply that first showed it).
    private var changedAt: UInt64 = 0
    private(set) var polls = 0
    private var roundTrips: [Double] = []
    private var thread: Thread?
    private var failure: String?

    init(observerPath: String, needle: String, periodNs: UInt64 = 500_000) throws {
        observer = try QMPObserver(path: observerPath)
        self.needle = Array(needle.utf8)
        period = periodNs
        let t = Thread { [unowned self] in self.loop() }
        t.name = "poller"
        thread = t
        t.start()
    }

    private func loop() {
        var next = now()
        while true {
            cond.lock()
            let run = running
            cond.unlock()
            if !run { break }
            let sent = now()
            let reply: [UInt8]
            do { reply = try observer.peripheral() } catch {
                cond.lock(); failure = "\(error)"; running = false; cond.broadcast(); cond.unlock()
                return
            }
            let received = now()
            let n = countOccurrences(reply, needle)
            cond.lock()
            polls += 1
            if roundTrips.count < 100_000 { roundTrips.append(ms(received - sent)) }
            if n != current {
                current = n
                changedAt = received
                cond.broadcast()
            }
            cond.unlock()
            next += period
            let t = now()
            if next < t { next = t } else { sleepUntil(next) }
        }
    }

    /// Waits until the count is `target`; returns the time of the reply that first showed it.
    func wait(for target: Int, timeout: Double = 20) throws -> UInt64 {
        let deadline = Date().addingTimeInterval(timeout)
        cond.lock()
        defer { cond.unlock() }
        while current != target {
            if let failure { throw BenchError(failure) }
            if !cond.wait(until: deadline) { throw BenchError("the VM never showed \(target) matching ids (it shows \(current))") }
        }
        return changedAt
    }

    var count: Int { cond.lock(); defer { cond.unlock() }; return current }

    /// Median observer round trip (qom-list) in ms.
    var medianRoundTrip: Double { cond.lock(); defer { cond.unlock() }; return percentile(roundTrips, 50) }

    func stop() {
        cond.lock(); running = false; cond.unlock()
        while thread?.isFinished == false { usleep(200) }
    }
}

// MARK: The daemon

/// vhotplug as a process inside the testbed (LD_PRELOAD + UMOCKDEV_DIR), its
/// output read line by line on a thread that timestamps each line on arrival.
final class Daemon: @unchecked Sendable {
    let pid: pid_t
    /// Just before posix_spawn.
    let spawnedAt: UInt64
    private let cond = NSCondition()
    private var lines: [(text: String, at: UInt64)] = []
    private var ended = false
    private let readFd: Int32

    /// - Parameter testbed: nil runs it outside any testbed (no umockdev preload).
    init(executable: String, arguments: [String], testbed: Testbed?, extraEnv: [String: String] = [:]) throws {
        var env = cleanEnvironment()
        if let testbed {
            env["UMOCKDEV_DIR"] = testbed.root
            env["LD_PRELOAD"] = try umockdevPreload()
        }
        for (k, v) in extraEnv { env[k] = v }
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw BenchError("pipe: errno \(errno)") }
        _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
        let argv = [executable] + arguments
        let cArgs = argv.map { strdup($0) } + [nil]
        let cEnv = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (cArgs + cEnv).forEach { free($0) } }
        var p: pid_t = 0
        spawnedAt = now()
        let rc = posix_spawn(&p, executable, &actions, nil, cArgs, cEnv)
        close(fds[1])
        guard rc == 0 else { close(fds[0]); throw BenchError("cannot start \(executable): errno \(rc)") }
        pid = p
        readFd = fds[0]
        Daemon.running.append(self)
        let t = Thread { [self] in self.readLoop() }
        t.name = "daemon-log"
        t.start()
    }

    private func readLoop() {
        var pending: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(readFd, &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            let at = now()
            pending += chunk[0..<n]
            var got: [(String, UInt64)] = []
            while let nl = pending.firstIndex(of: 0x0A) {
                got.append((String(decoding: pending[..<nl], as: UTF8.self), at))
                pending.removeSubrange(...nl)
            }
            if !got.isEmpty {
                cond.lock(); lines += got.map { (text: $0.0, at: $0.1) }; cond.broadcast(); cond.unlock()
            }
        }
        close(readFd)
        cond.lock(); ended = true; cond.broadcast(); cond.unlock()
    }

    var mark: Int { cond.lock(); defer { cond.unlock() }; return lines.count }

    var log: [(text: String, at: UInt64)] { cond.lock(); defer { cond.unlock() }; return lines }

    /// Waits for a line containing `text` after index `from`; returns its index and arrival time.
    @discardableResult
    func waitFor(_ text: String, from: Int = 0, timeout: Double = 30) throws -> (index: Int, at: UInt64) {
        let deadline = Date().addingTimeInterval(timeout)
        cond.lock()
        defer { cond.unlock() }
        var i = from
        while true {
            while i < lines.count {
                if lines[i].text.contains(text) { return (i, lines[i].at) }
                i += 1
            }
            if ended || !cond.wait(until: deadline) { break }
        }
        throw BenchError("vhotplug never logged \"\(text)\"; the end of its log:\n"
                         + lines.suffix(30).map(\.text).joined(separator: "\n"))
    }

    /// Lines after `from` containing `text`.
    func count(_ text: String, from: Int = 0) -> Int {
        cond.lock(); defer { cond.unlock() }
        return lines[from...].filter { $0.text.contains(text) }.count
    }

    /// Waits for the process to end by itself; returns the exit status.
    @discardableResult
    func waitExit() -> Int32 {
        let status = waitForExit(pid)
        stopped = true
        Daemon.running.removeAll { $0 === self }
        return status
    }

    /// Every daemon not yet stopped (stopped by `stopAll` when the benchmark fails).
    nonisolated(unsafe) static var running: [Daemon] = []
    private var stopped = false

    static func stopAll() {
        for d in running { d.stop() }
    }

    /// The processes whose parent is `pid` (the daemon under strace is strace's child).
    static func children(of pid: pid_t) -> [pid_t] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { name -> pid_t? in
            guard let p = pid_t(name), let stat = readProc("/proc/\(p)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
            let f = stat[stat.index(after: close)...].split(separator: " ")
            return f.count > 1 && pid_t(f[1]) == pid ? p : nil
        }
    }

    /// SIGTERM (to its children first: a daemon run under strace), then waits for the
    /// exit; returns the exit status.
    @discardableResult
    func stop() -> Int32 {
        if stopped { return 0 }
        stopped = true
        Daemon.running.removeAll { $0 === self }
        for c in Daemon.children(of: pid) { kill(c, SIGTERM) }
        kill(pid, SIGTERM)
        let status = waitForExit(pid)
        cond.lock()
        while !ended { cond.wait() }
        cond.unlock()
        return status
    }
}

// MARK: perf

/// `perf record` attached to a process with its events off, switched on and off through perf's
/// control FIFOs (each command acknowledged), so that the samples are those of the cycles
/// between `enable` and `finish`: cpu-clock (a timer: this VM has no hardware counters), with
/// call chains (frame pointers), at 10 kHz.
final class PerfRecord {
    let output: String
    let pid: pid_t
    private let dir: String
    private let ctl: Int32
    private let ack: Int32

    init(pid target: pid_t, output: String, hz: Int = 10000) throws {
        self.output = output
        dir = NSTemporaryDirectory() + "/vhp-perf-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for f in ["ctl", "ack"] where mkfifo(dir + "/" + f, 0o600) != 0 { throw BenchError("mkfifo \(dir)/\(f): errno \(errno)") }
        // Opened read-write: neither open waits for perf's side.
        ctl = open(dir + "/ctl", O_RDWR | O_CLOEXEC)
        ack = open(dir + "/ack", O_RDWR | O_CLOEXEC)
        let argv = ["perf", "record", "-q", "-e", "cpu-clock", "-F", String(hz), "-g", "-p", String(target), "-D", "-1",
                    "--control", "fifo:\(dir)/ctl,\(dir)/ack", "-o", output]
        var p: pid_t = 0
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        // SIGINT as perf expects it (the benchmark's process may ignore or block it, and a child
        // inherits both): default, unblocked. Before, perf never saw the SIGINT that ends it.
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var none = sigset_t(), interrupt = sigset_t()
        sigemptyset(&none)
        sigemptyset(&interrupt)
        sigaddset(&interrupt, SIGINT)
        posix_spawnattr_setsigmask(&attr, &none)
        posix_spawnattr_setsigdefault(&attr, &interrupt)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let cArgs = argv.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) } }
        let rc = posix_spawnp(&p, "perf", &actions, &attr, cArgs, environ)
        guard rc == 0 else { throw BenchError("cannot start perf (apt-get install linux-perf): errno \(rc)") }
        pid = p
    }

    /// Sends a control command and waits for perf's "ack".
    private func command(_ text: String) throws {
        let line = Array((text + "\n").utf8)
        guard write(ctl, line, line.count) == line.count else { throw BenchError("perf control: errno \(errno)") }
        var got: [UInt8] = []
        var byte: UInt8 = 0
        while !got.contains(0x0A) {
            var fds = [pollfd(fd: ack, events: Int16(POLLIN), revents: 0)]
            guard poll(&fds, 1, 30_000) == 1, read(ack, &byte, 1) == 1 else { throw BenchError("perf did not acknowledge \(text)") }
            got.append(byte)
        }
    }

    func enable() throws { try command("enable") }

    /// Off, then perf is stopped (SIGINT: it writes its file) and waited for.
    func finish() throws {
        try command("disable")
        kill(pid, SIGINT)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        close(ctl)
        close(ack)
        try? FileManager.default.removeItem(atPath: dir)
    }
}
