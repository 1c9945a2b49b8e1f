import CLinux
import Foundation

/// A raw client of the control API for tests: a blocking Unix socket whose reads
/// have a deadline, lines in and out, JSON decoded with Foundation.
public final class APIClient: @unchecked Sendable {
    public let fd: Int32
    private var pending = Data()

    /// Connects to `path`; throws when nothing listens there.
    public init(path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var addr = sockaddr_un()
        let len = vh_sockaddr_un(&addr, path)
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(len)) }
        }
        if r != 0 {
            let code = errno
            close(fd)
            throw TestbedError(message: "cannot connect to \(path): \(String(cString: strerror(code)))")
        }
    }

    deinit { close(fd) }

    /// Ends the connection (both directions); the server sees end of stream.
    public func shutdown() { _ = Foundation.shutdown(fd, Int32(SHUT_RDWR)) }

    /// Sends raw text (add the newline yourself).
    public func send(_ text: String) throws {
        var data = Array(text.utf8)
        var off = 0
        while off < data.count {
            let n = data.withUnsafeMutableBytes { Foundation.send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { throw TestbedError(message: "send failed: \(String(cString: strerror(errno)))") }
            off += n
        }
    }

    /// The next line, or nil at end of stream; throws at the deadline.
    public func readLine(timeout: Double = 20) throws -> String? {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let nl = pending.firstIndex(of: 0x0A) {
                let line = String(decoding: pending[pending.startIndex..<nl], as: UTF8.self)
                pending.removeSubrange(pending.startIndex...nl)
                return line
            }
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { throw TestbedError(message: "no line from the API within \(timeout) s (have: \(String(decoding: pending, as: UTF8.self)))") }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, Int32(left * 1000) + 1)
            if ready <= 0 { continue }
            var buf = [UInt8](repeating: 0, count: 65536)
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 {
                if pending.isEmpty { return nil }
                let line = String(decoding: pending, as: UTF8.self)
                pending.removeAll()
                return line
            }
            pending.append(contentsOf: buf[0..<n])
        }
    }

    /// The next line as a JSON object.
    public func readObject(timeout: Double = 20) throws -> [String: Any] {
        guard let line = try readLine(timeout: timeout) else { throw TestbedError(message: "the API closed the connection") }
        guard let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
            throw TestbedError(message: "not a JSON object: \(line)")
        }
        return object
    }

    /// Sends one request object (JSON text) and returns the reply, skipping notifications (lines with "event").
    public func request(_ json: String, timeout: Double = 60) throws -> [String: Any] {
        try send(json + "\n")
        while true {
            let o = try readObject(timeout: timeout)
            if o["event"] == nil { return o }
        }
    }

    /// The next notification whose event is `event` (others are skipped).
    public func waitForEvent(_ event: String, timeout: Double = 20) throws -> [String: Any] {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let o = try readObject(timeout: max(0.01, deadline.timeIntervalSinceNow))
            if o["event"] as? String == event { return o }
        }
    }
}
