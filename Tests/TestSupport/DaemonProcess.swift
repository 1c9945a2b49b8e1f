import Foundation

/// The vhotplug daemon run as a real process (inside a umockdev testbed when
/// given one), its log followed line by line so a test waits for what it
/// says — an event, not a clock.
public final class DaemonProcess: @unchecked Sendable {
    /// The daemon, its stdout and stderr in one pipe (a `ChildProcess`, not Foundation's
    /// Process, whose waitUntilExit once waited for good for a program that had ended).
    public let process: ChildProcess
    private let lock = NSCondition()
    private var lines: [String] = []
    private var ended = false
    private let reader: Thread
    /// Held while the daemon may run in it: the testbed's folder is removed only after the
    /// daemon is gone (umockdev aborts the test process when a removal finds files appearing).
    private let testbed: Testbed?

    public init(arguments: [String], testbed: Testbed? = nil, environment extra: [String: String] = [:]) throws {
        self.testbed = testbed
        var env = cleanEnvironment()
        if testbed != nil, !(ProcessInfo.processInfo.environment["LD_PRELOAD"] ?? "").contains("umockdev") {
            // umockdev delivers a testbed's uevents only when the sending process runs under its preload.
            throw TestbedError(message: "the tests must run under umockdev-wrapper for uevents to reach vhotplug: use `make test` (it runs `umockdev-wrapper swift test`)")
        }
        if let testbed {
            env["UMOCKDEV_DIR"] = testbed.root
            env["LD_PRELOAD"] = try umockdevPreload()
            // The testbed's own VFIO records (the host's /run/vhotplug/vfio is left alone).
            env["VHOTPLUG_VFIO_RECORDS"] = testbed.root + "/vhotplug-vfio"
            env["VHOTPLUG_AUTHORIZATION_RECORD"] = testbed.root + "/usb-authorized-default"
            env["VHOTPLUG_CROSVM_RECORDS"] = testbed.root + "/vhotplug-crosvm"
        }
        for (k, v) in extra { env[k] = v }
        process = try ChildProcess([Repository.vhotplug] + arguments, environment: env, mergingStderr: true)
        let fd = process.takeOutput()
        let box = LineBox()
        // The pipe's reader owns its end: it reads to the end of the daemon's output (and of any
        // program of its own that kept a copy), then closes it.
        reader = Thread {
            var pending: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = read(fd, &buf, buf.count)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                pending += buf[0..<n]
                while let nl = pending.firstIndex(of: 0x0A) {
                    box.deliver(String(decoding: pending[..<nl], as: UTF8.self))
                    pending.removeSubrange(...nl)
                }
            }
            close(fd)
            box.deliver(nil)
        }
        box.owner = self
        reader.start()
    }

    private final class LineBox: @unchecked Sendable {
        weak var owner: DaemonProcess?
        func deliver(_ line: String?) { owner?.append(line) }
    }

    private func append(_ line: String?) {
        lock.lock()
        if let line { lines.append(line) } else { ended = true }
        lock.broadcast()
        lock.unlock()
    }

    /// Every line so far.
    public var log: [String] {
        lock.lock()
        defer { lock.unlock() }
        return lines
    }

    /// Waits until a line after index `from` contains `text`; returns its index.
    /// Fails (throws) at the deadline or when the daemon exits, with the log.
    @discardableResult
    public func waitFor(_ text: String, from: Int = 0, timeout: Double = 20) throws -> Int {
        try waitFor(anyOf: [text], from: from, timeout: timeout).line
    }

    /// Waits for the first line (from line `from` on) that contains one of `texts`; returns
    /// the line's number and which text it holds.
    @discardableResult
    public func waitFor(anyOf texts: [String], from: Int = 0, timeout: Double = 20) throws -> (line: Int, text: String) {
        let deadline = Date().addingTimeInterval(timeout)
        lock.lock()
        defer { lock.unlock() }
        var checked = from
        while true {
            while checked < lines.count {
                if let t = texts.first(where: { lines[checked].contains($0) }) { return (checked, t) }
                checked += 1
            }
            if ended { break }
            if !lock.wait(until: deadline) { break }
        }
        let wanted = texts.map { "\"\($0)\"" }.joined(separator: " or ")
        throw TestbedError(message: "vhotplug never logged \(wanted); its log:\n" + lines.joined(separator: "\n"))
    }

    /// Waits until the daemon (run with `-d`) says that no device operation is in flight and no
    /// start or reload is under way, after line `from`: what the event logged there started is
    /// over. A check that something did not happen comes after this.
    @discardableResult
    public func waitForIdle(from: Int, timeout: Double = 20) throws -> Int {
        try waitFor("idle: no device operation in flight", from: from + 1, timeout: timeout)
    }

    /// `waitForIdle` after the start: what the first pass started is over.
    public func waitForIdleAfterStart() throws {
        try waitForIdle(from: try waitFor("; listening ("))
    }

    /// The number of log lines so far (a mark for `waitFor(from:)`).
    public var mark: Int { log.count }

    public func signal(_ signo: Int32) { process.signal(signo) }

    /// Its process id.
    public var pid: pid_t { process.pid }

    /// Stops it (SIGTERM) and waits for its exit; returns the exit status.
    @discardableResult
    public func stop() -> Int32 {
        if process.isRunning { signal(SIGTERM) }
        return process.wait()
    }

    deinit {
        if process.isRunning {
            signal(SIGKILL)
            _ = process.wait()
        }
    }
}
