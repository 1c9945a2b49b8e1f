import CLinux
import Foundation
import Reactor

/// An event loop running on its own thread for the life of a test.
public final class LoopHost: @unchecked Sendable {
    public let loop: EventLoop
    private let thread: Thread

    public init() throws {
        let loop = try EventLoop()
        self.loop = loop
        thread = Thread { loop.run() }
        thread.start()
    }

    deinit { loop.stop() }
}

/// Runs closures on a loop's thread (as the daemon's actors do).
public actor OnLoop {
    public let loop: EventLoop
    public nonisolated var unownedExecutor: UnownedSerialExecutor { loop.asUnownedSerialExecutor() }
    public init(_ loop: EventLoop) { self.loop = loop }

    public func run<T: Sendable>(_ body: @Sendable (EventLoop) async throws -> T) async throws -> T {
        try await body(loop)
    }
}

/// A Unix socket server that plays a broken QMP peer, on its own thread.
public final class FakeQMPServer: @unchecked Sendable {
    public enum Behaviour: Sendable {
        /// Accepts and never says anything.
        case silent
        /// Accepts and closes at once, greeting no one (a QEMU whose process is ending).
        case closeAtOnce
        /// Sends the greeting, then this text in reply to the first command, then closes.
        case greetThenReply(String)
        /// Sends the greeting, then for each line received the next of these texts (each
        /// may hold several lines, or none: a stall), then keeps the connection open.
        case replies([String])
        /// Answers the first line (qmp_capabilities, id 1) before sending the greeting, then
        /// answers the next line with this text.
        case replyBeforeGreeting(String)
        /// Sends the greeting, then, once a line is received, events without end (until the
        /// client closes): a QEMU that never stops writing.
        case flood
        /// As `replies`, each text (the greeting too) written `chunk` bytes at a time, each
        /// piece only once the client has read the one before (the socket's send queue
        /// empty): every read of the client finds one piece and nothing after it.
        case dribble(chunk: Int, [String])
    }

    public let path: String
    private let fd: Int32
    private let thread: Thread?
    private final class Lines: @unchecked Sendable {
        let lock = NSLock()
        var lines: [String] = []
    }
    private let log = Lines()
    /// The lines the client sent so far, as they were read (`replies`, `dribble`, ...).
    public var received: [String] { log.lock.withLock { log.lines } }

    /// `path`: where it listens (a VM's configured socket); a scratch path by default.
    public init(_ behaviour: Behaviour, path: String? = nil) throws {
        let final = path ?? scratchPath("fakeqmp") + ".sock"
        // Bound and listening under another name, then renamed into place: a watcher of the
        // final path never sees a socket that refuses connections (bound, not yet listening).
        let path = final + ".new"
        let s = try unixSocket(.stream, boundAt: path)
        guard listen(s, 4) == 0, rename(path, final) == 0 else { throw TestbedError(message: "fake QMP server: listen failed") }
        fd = s
        self.path = final
        let log = self.log
        thread = Thread {
            let c = accept(s, nil, nil)
            guard c >= 0 else { return }
            func send(_ text: String) { _ = text.withCString { write(c, $0, strlen($0)) } }
            func readLine() -> Bool {
                var byte: UInt8 = 0
                var line: [UInt8] = []
                while read(c, &byte, 1) == 1 {
                    if byte == 0x0A {
                        log.lock.withLock { log.lines.append(String(decoding: line, as: UTF8.self)) }
                        return true
                    }
                    line.append(byte)
                }
                return false
            }
            switch behaviour {
            case .closeAtOnce:
                close(c)
                return
            case .silent:
                var byte: UInt8 = 0
                while read(c, &byte, 1) > 0 {}
            case .greetThenReply(let text):
                send(#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}"# + "\n")
                if readLine() { send(text) }
            case .replies(let texts):
                send(#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}"# + "\n")
                for text in texts {
                    guard readLine() else { break }
                    if !text.isEmpty { send(text) }
                }
                var byte: UInt8 = 0
                while read(c, &byte, 1) > 0 {}
            case .replyBeforeGreeting(let text):
                guard readLine() else { break }
                send(#"{"return": {}, "id": 1}"# + "\n")
                send(#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}"# + "\n")
                guard readLine() else { break }
                send(text)
                var byte: UInt8 = 0
                while read(c, &byte, 1) > 0 {}
            case .flood:
                send(#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}"# + "\n")
                guard readLine() else { break }
                let event = Array((#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RTC_CHANGE", "data": {"offset": "0"}}"# + "\n").utf8)
                let block = Array([[UInt8]](repeating: event, count: 64).joined())
                while block.withUnsafeBytes({ Glibc.send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) > 0 {}
            case .dribble(let chunk, let texts):
                func dribble(_ text: String) {
                    let bytes = Array(text.utf8)
                    var offset = 0
                    while offset < bytes.count {
                        let piece = Array(bytes[offset..<min(offset + chunk, bytes.count)])
                        _ = piece.withUnsafeBytes { write(c, $0.baseAddress, $0.count) }
                        offset += piece.count
                        // Unread bytes of this socket (SIOCOUTQ): 0 once the client has read the piece.
                        var queued: Int32 = 1
                        while ioctl(c, 0x5411, &queued) == 0 && queued > 0 { sched_yield() }
                    }
                }
                dribble(#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}"# + "\n")
                for text in texts {
                    guard readLine() else { break }
                    dribble(text)
                }
                var byte: UInt8 = 0
                while read(c, &byte, 1) > 0 {}
            }
            close(c)
        }
        thread?.start()
    }

    deinit {
        close(fd)
        unlink(path)
    }
}
