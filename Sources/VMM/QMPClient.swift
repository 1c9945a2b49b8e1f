import CLinux
import JSONKit
import Logging
import Reactor
#if canImport(Glibc)
import Glibc
#endif

/// One QMP message as received: a reply, an error reply, or an event.
public enum QMPMessage: Sendable {
    /// The greeting QEMU writes on every new connection (vhotplug reads nothing in it).
    case greeting
    case reply(id: Int?, value: JSONNode)
    case error(id: Int?, errorClass: String, description: String)
    case event(name: String, data: JSONNode?)

    /// QEMU's most frequent line, exactly `{"return": {}, "id": N}` (the answer to
    /// qmp_capabilities, device_add and device_del), read without the general parser; nil
    /// for any other line (the parser then reads it).
    static func emptyReturn(_ line: [UInt8]) -> QMPMessage? {
        let head = #"{"return": {}, "id": "#.utf8
        guard line.count > head.count + 1, line.count < head.count + 20, line.starts(with: head),
              line.last == UInt8(ascii: "}") else { return nil }
        let digits = line[head.count ..< line.count - 1]
        // JSON has no leading zeros: "07" is not a number the parser would take.
        guard digits.first != UInt8(ascii: "0") || digits.count == 1 else { return nil }
        var id = 0
        for c in digits {
            guard c >= 0x30, c <= 0x39 else { return nil }
            id = id * 10 + Int(c - 0x30)
        }
        return .reply(id: id, value: JSONNode(value: .object(JSONObject())))
    }

    /// QEMU's most frequent lines, the empty return, the greeting and an event whose data are
    /// plain strings (DEVICE_DELETED), as they come off the socket (QEMU ends its lines with
    /// CR LF; the LF is already cut), recognised without the general parser; nil for any other
    /// line (the parser then reads it).
    static func fastPath(_ line: [UInt8]) -> QMPMessage? {
        let body = line.last == 0x0D ? Array(line.dropLast()) : line
        return emptyReturn(body) ?? (isGreeting(body) ? .greeting : plainEvent(body))
    }

    /// An event exactly as QEMU writes it, `{"timestamp": {"seconds": S, "microseconds": U},
    /// "event": "NAME"}`, with or without `, "data": {"KEY": "VALUE", ...}` before the last
    /// brace, every string printable ASCII without quote or backslash (DEVICE_DELETED's `device`
    /// and `path`); nil for anything else, which the parser reads. What it gives is what the
    /// parser gives (the `qmp` fuzz target checks): a repeated key keeps its first value.
    static func plainEvent(_ line: [UInt8]) -> QMPMessage? {
        line.withUnsafeBufferPointer { b -> QMPMessage? in
            guard let base = b.baseAddress else { return nil }
            var i = 0
            func literal(_ s: StaticString) -> Bool {
                let n = s.utf8CodeUnitCount
                guard i + n <= b.count, memcmp(base + i, s.utf8Start, n) == 0 else { return false }
                i += n
                return true
            }
            // A JSON integer as QEMU writes one: 0, or digits without a leading zero.
            func number() -> Bool {
                let start = i
                while i < b.count, b[i] >= 0x30, b[i] <= 0x39 { i += 1 }
                return i > start && i - start <= 18 && (i - start == 1 || b[start] != 0x30)
            }
            // The rest of a string whose opening quote is read.
            func plainString() -> String? {
                let start = i
                while i < b.count, isPlainTextByte(b[i]) { i += 1 }
                guard i < b.count, b[i] == 0x22 else { return nil }
                defer { i += 1 }
                return String(decoding: UnsafeBufferPointer(rebasing: b[start ..< i]), as: UTF8.self)
            }
            guard literal(#"{"timestamp": {"seconds": "#), number(), literal(#", "microseconds": "#), number(),
                  literal(#"}, "event": ""#), let name = plainString() else { return nil }
            var data: JSONNode?
            if literal(#", "data": {"#) {
                var object = JSONObject()
                if !literal("}") {
                    while true {
                        guard literal("\""), let key = plainString(), literal(#": ""#), let value = plainString() else { return nil }
                        if object.member(key) == nil { object.members.append(JSONMember(key: key, value: JSONNode(value: .string(value)))) }
                        if literal("}") { break }
                        guard literal(", ") else { return nil }
                    }
                }
                data = JSONNode(value: .object(object))
            }
            guard literal("}"), i == b.count else { return nil }
            return .event(name: name, data: data)
        }
    }

    /// Whether a line is QEMU's greeting, `{"QMP": {"version": ..., "capabilities": [...]}}`,
    /// known by its first member without the general parser (it is the longest line of a short
    /// exchange and nothing in it is used).
    static func isGreeting(_ line: [UInt8]) -> Bool {
        let head = #"{"QMP": {"#.utf8
        return line.count > head.count + 1 && line.starts(with: head) && line.last == UInt8(ascii: "}")
    }

    /// Classifies one parsed line; nil when it is none of QMP's messages.
    static func from(_ node: JSONNode) -> QMPMessage? {
        guard case .object(let o) = node.value else { return nil }
        // Only the greeting has a "QMP" member (what `isGreeting` relies on).
        if o.member("QMP") != nil { return .greeting }
        // No id: the answer to the one command outstanding. An id that is no integer answers
        // none of ours (they are 1, 2, ...): Int.min matches nothing.
        let id = o.member("id").map { m -> Int in
            if case .number(let n) = m.value.value, let i = n.integer { return i }
            return Int.min
        }
        if let r = o.member("return") { return .reply(id: id, value: r.value) }
        if let e = o.member("error") {
            guard case .object(let eo) = e.value.value else { return .error(id: id, errorClass: "?", description: "") }
            return .error(id: id, errorClass: eo.member("class")?.value.stringValue ?? "?",
                          description: eo.member("desc")?.value.stringValue ?? "")
        }
        if let ev = o.member("event"), let name = ev.value.stringValue {
            return .event(name: name, data: o.member("data")?.value)
        }
        return nil
    }
}

extension JSONNode {
    /// The string, when this is one.
    public var stringValue: String? {
        if case .string(let s) = value { return s }
        return nil
    }

    /// Member of an object, when this is one.
    public subscript(key: String) -> JSONNode? {
        if case .object(let o) = value { return o.member(key)?.value }
        return nil
    }

    /// The elements, when this is an array.
    public var arrayValue: [JSONNode]? {
        if case .array(let a) = value { return a }
        return nil
    }

    public var intValue: Int? {
        if case .number(let n) = value { return n.integer }
        return nil
    }
}

/// A QMP connection to one QEMU, driven by the event loop: non-blocking socket,
/// capabilities negotiation, replies matched to requests by id, events kept
/// for whoever waits for them, and a deadline on every exchange.
///
/// QEMU serves one QMP client at a time and VM managers share the socket: a
/// connection is opened for a batch of commands and closed right after.
public final class QMPClient {
    public let vm: String
    public let path: String
    private let loop: EventLoop
    private let logger: Logger
    /// Seconds allowed for each exchange.
    public let timeout: Double
    private(set) var fd: Int32 = -1
    private var buffer: [UInt8] = []
    /// How much of `buffer` is known to hold no line end (not searched again).
    private var scanned = 0
    /// Lines and reads so far (`receive` looks at its deadline every 64th).
    private var pace = 0
    /// The last read took everything queued: the next one waits for the socket first.
    private var drained = false
    /// Reads that found nothing (EAGAIN), for the tests.
    private(set) var emptyReads = 0
    private var nextId = 1
    /// Events received while waiting for replies, oldest first, each with the length of its line.
    public private(set) var events: [(name: String, data: JSONNode?, bytes: Int)] = []
    /// The sum of the kept events' line lengths (bounded by `maxEventBytes`).
    private var keptBytes = 0
    /// The length of the line `receive` returned last.
    private var lineBytes = 0
    /// Longest line accepted from QEMU (query-pci on a big VM is well below).
    static let maxLine = 4 << 20
    /// Bytes one read asks for: 1 KiB on the stack (a larger temporary buffer is a malloc for
    /// every read). QEMU's usual lines fit at once; a long reply (qom-list, query-pci) takes more.
    static let readChunk = 1024

    public init(vm: String, path: String, loop: EventLoop, logger: Logger, timeout: Double = 5) {
        self.vm = vm
        self.path = path
        self.loop = loop
        self.logger = logger
        self.timeout = timeout
    }

    deinit { close() }

    public var isOpen: Bool { fd >= 0 }

    /// Connects, reads the greeting and negotiates capabilities.
    public func open() async throws(VMError) {
        guard fd < 0 else { return }
        try start()
        try await finishOpen()
    }

    /// The id of the `qmp_capabilities` sent by `start`, until its reply is read.
    private var capabilitiesId: Int?

    /// The part of `open` that does not wait: connects, and sends `qmp_capabilities`
    /// at once (QEMU reads it right after writing its greeting), so that one round
    /// trip is saved and the negotiation goes on while the caller does other work.
    public func start() throws(VMError) {
        guard fd < 0 else { return }
        if let problem = SocketTrust.problem(path) {
            throw .unsupported(vm: vm, detail: "its socket \(path) is not used: \(problem)")
        }
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw .notRunning(vm: vm, reason: "socket: \(String(cString: strerror(errno)))") }
        var addr = sockaddr_un()
        let len = vh_sockaddr_un(&addr, path)
        guard len > 0 else {
            Glibc.close(s)
            throw .unsupported(vm: vm, detail: "socket path too long: \(path)")
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(len)) }
        }
        if rc != 0 {
            let e = errno
            if e == EINPROGRESS || e == EAGAIN {
                // A full backlog: QEMU is busy with another client.
                Glibc.close(s)
                throw .timeout(vm: vm, step: "connect (socket busy)")
            }
            Glibc.close(s)
            throw .notRunning(vm: vm, reason: "\(path): \(String(cString: strerror(e)))")
        }
        fd = s
        connectedAt = .now()
        buffer.removeAll(keepingCapacity: true)
        scanned = 0
        drained = false
        let (id, line) = request("qmp_capabilities", [])
        let sent = line.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        // A fresh socket takes a 60-byte line whole; if not, finishOpen sends it after the greeting.
        capabilitiesId = sent == line.count ? id : nil
        if sent > 0 && sent != line.count {
            close()
            throw .protocolError(vm: vm, detail: "send: a partial qmp_capabilities")
        }
    }

    /// The peer closed or reset the connection before the session was negotiated: a QEMU alive
    /// would have greeted (one busy with another client keeps a new one in its backlog), so
    /// its process is ending (killed, its socket file left behind).
    private var endedBeforeGreeting: VMError {
        .notRunning(vm: vm, reason: "it closed the connection before its greeting (its process is ending)")
    }

    /// True once the greeting and the capabilities' reply have been read.
    public private(set) var negotiated = false

    /// The waiting part of `open`: the greeting, then the capabilities' reply.
    /// `execute` does it on its own when it has not been done: its command is then
    /// sent first, so that QEMU runs both without a round trip between them.
    public func finishOpen() async throws(VMError) {
        guard fd >= 0 else { throw .protocolError(vm: vm, detail: "not connected") }
        guard !negotiated else { return }
        do throws(VMError) {
            let deadline = Deadline.after(timeout)
            var answered = false
            while true {
                guard let message = try await receive(deadline: deadline, step: "greeting") else { continue }
                if case .greeting = message { break }
                // The reply to the qmp_capabilities sent at connect, ahead of the greeting (seen
                // once in CI under load): the greeting follows; nothing in it is used.
                if case .reply(let rid, _) = message, let id = capabilitiesId, rid == id, !answered {
                    answered = true
                    continue
                }
                throw VMError.protocolError(vm: vm, detail: "expected the QMP greeting")
            }
            if let id = capabilitiesId {
                capabilitiesId = nil
                if !answered { _ = try await awaitReply(id, command: "qmp_capabilities", deadline: deadline) }
            } else {
                let (id, line) = request("qmp_capabilities", [])
                try await send(line, deadline: deadline, step: "qmp_capabilities")
                _ = try await awaitReply(id, command: "qmp_capabilities", deadline: deadline)
            }
            negotiated = true
        } catch {
            close()
            throw error
        }
    }

    /// Closes the connection (QEMU then serves its next client).
    public func close() {
        guard fd >= 0 else { return }
        loop.forget(fd)
        Glibc.close(fd)
        fd = -1
        buffer.removeAll()
        scanned = 0
        drained = false
        negotiated = false
        capabilitiesId = nil
    }

    /// Runs one command and returns its `return` value; QEMU's error replies
    /// become `.commandFailed`. Events that arrive meanwhile are kept in `events`.
    @discardableResult
    public func execute(_ command: String, _ arguments: [(String, JSONText)] = [],
                        timeout: Double? = nil) async throws(VMError) -> JSONNode {
        guard fd >= 0 else { throw .protocolError(vm: vm, detail: "not connected") }
        let (id, line) = request(command, arguments)
        let deadline = Deadline.after(timeout ?? self.timeout)
        // Not negotiated yet: only when qmp_capabilities went out with the connect,
        // so that this command follows it on the wire.
        if !negotiated && capabilitiesId == nil { try await finishOpen() }
        try await send(line, deadline: deadline, step: command)
        if !negotiated { try await finishOpen() }
        return try await awaitReply(id, command: command, deadline: deadline)
    }

    /// A request line with the next id (logged with `-d`).
    func request(_ command: String, _ arguments: [(String, JSONText)]) -> (Int, [UInt8]) {
        let id = nextId
        nextId += 1
        // {"execute":COMMAND,"arguments":{...},"id":N}, written around the arguments (the
        // renderer's own output for an object of these three members, byte for byte).
        var line: [UInt8] = []
        line.reserveCapacity(256)
        line.append(contentsOf: #"{"execute":"#.utf8)
        JSONText.appendString(command, to: &line)
        if !arguments.isEmpty {
            line.append(contentsOf: #","arguments":"#.utf8)
            JSONText.object(arguments).append(to: &line)
        }
        line.append(contentsOf: #","id":"#.utf8)
        line.append(contentsOf: String(id).utf8)
        line.append(UInt8(ascii: "}"))
        logger.debug("qmp \(vm) -> \(String(decoding: line, as: UTF8.self))")
        line.append(0x0A)
        return (id, line)
    }

    /// Reads until the reply to request `id`; events met on the way are kept.
    private func awaitReply(_ id: Int, command: String, deadline: Deadline) async throws(VMError) -> JSONNode {
        while true {
            guard let message = try await receive(deadline: deadline, step: command) else { continue }
            switch message {
            case .reply(let rid, let value) where rid == id || rid == nil:
                return value
            case .error(let rid, let cls, let desc) where rid == id || rid == nil:
                throw .commandFailed(vm: vm, command: command, errorClass: cls, message: desc)
            case .event(let name, let data):
                keep(name, data)
            case .reply, .error:
                // An answer to another request (a connection reused after a timeout): skip it.
                logger.debug("qmp \(vm): skipping a reply to an earlier request")
            case .greeting:
                close() // (the stream is not what it should be: nothing more is read from it)
                throw .protocolError(vm: vm, detail: "unexpected greeting")
            }
        }
    }

    /// Waits for an event (one already received counts), up to `deadline`.
    public func waitForEvent(_ name: String, deadline: Deadline, where match: (JSONNode?) -> Bool) async throws(VMError) -> JSONNode? {
        if !negotiated { try await finishOpen() }
        if let i = events.firstIndex(where: { $0.name == name && match($0.data) }) {
            let event = events.remove(at: i)
            keptBytes -= event.bytes
            return event.data
        }
        guard fd >= 0 else { throw .protocolError(vm: vm, detail: "not connected") }
        while true {
            // A timeout here leaves the connection as it was (no command is outstanding): the
            // caller may go on waiting for other events on it.
            guard let message = try await receive(deadline: deadline, step: "waiting for \(name)", closeOnTimeout: false) else { continue }
            if case .event(let n, let data) = message {
                if n == name && match(data) { return data }
                keep(n, data)
            }
        }
    }

    /// Keeps an event for a later `waitForEvent`; past 256, or past `maxEventBytes` of lines,
    /// the oldest go, and an event larger than that alone is not kept (a QEMU that sends
    /// events without end, or large ones, cannot grow the daemon).
    private func keep(_ name: String, _ data: JSONNode?) {
        let size = lineBytes
        guard size <= Self.maxEventBytes else {
            logger.debug("qmp \(vm): not keeping a \(size)-byte event \(quoted(name))")
            return
        }
        var drop = 0
        while drop < events.count && (events.count - drop >= Self.maxEvents || keptBytes + size > Self.maxEventBytes) {
            keptBytes -= events[drop].bytes
            drop += 1
        }
        if drop > 0 {
            events.removeFirst(drop)
        }
        events.append((name, data, size))
        keptBytes += size
    }

    static let maxEvents = 256
    /// Bytes of lines the kept events may hold (a parsed event takes tens of times its line).
    static let maxEventBytes = 1 << 20

    /// Drops the events received so far.
    public func clearEvents() {
        events.removeAll()
        keptBytes = 0
    }

    /// Whether the connection is open and QEMU has not closed its end (a QEMU that exited):
    /// one `poll` of the socket, without waiting. A Unix socket reports its peer's close
    /// (`POLLRDHUP`/`POLLHUP`) whatever is still queued to read (a `SHUTDOWN` event, an
    /// unread greeting), which a peek at the data would not. A connection kept for a next
    /// operation is looked at before it is used, so that a VM gone meanwhile reads as not
    /// running.
    public var isUsable: Bool {
        guard fd >= 0 else { return false }
        let rdhup: Int16 = 0x2000 // POLLRDHUP (<poll.h> defines it under _GNU_SOURCE only)
        var p = pollfd(fd: fd, events: Int16(POLLIN) | rdhup, revents: 0)
        guard poll(&p, 1, 0) >= 0 else { return false }
        return p.revents & (Int16(POLLHUP) | rdhup | Int16(POLLERR) | Int16(POLLNVAL)) == 0
    }

    /// When the connection was made (a kept connection is passed on for a short while only).
    public private(set) var connectedAt = Deadline.now()

    // MARK: Wire

    private func send(_ bytes: [UInt8], deadline: Deadline, step: String) async throws(VMError) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 { offset += n; continue }
            if n < 0 && (errno == EAGAIN || errno == EINTR) {
                do { try await loop.writable(fd, deadline: deadline) } catch { throw fail(error, step) }
                continue
            }
            let e = errno
            close()
            if !negotiated && (e == EPIPE || e == ECONNRESET) {
                throw endedBeforeGreeting
            }
            throw .protocolError(vm: vm, detail: "send: \(String(cString: strerror(e)))")
        }
    }

    /// The next message, or nil for a line to ignore. Garbage closes the connection, and so
    /// does a timeout unless `closeOnTimeout` is false.
    private func receive(deadline: Deadline, step: String, closeOnTimeout: Bool = true) async throws(VMError) -> QMPMessage? {
        while true {
            // A peer that keeps writing never makes a read wait, where the deadline's timer
            // would end the exchange: every 64th line or read looks at the deadline here, and
            // lets other work have its turn.
            pace &+= 1
            if pace % 64 == 0 {
                guard Deadline.now() < deadline else {
                    if closeOnTimeout { close() }
                    throw .timeout(vm: vm, step: step + " (QEMU kept writing)")
                }
                await Task.yield()
            }
            if let nl = buffer[scanned...].firstIndex(of: 0x0A) {
                let line = Array(buffer[..<nl])
                buffer.removeSubrange(...nl)
                scanned = 0
                if line.allSatisfy({ $0 == 0x20 || $0 == 0x0D || $0 == 0x09 }) { return nil }
                logger.debug("qmp \(vm) <- \(loggableLine(line.prefix(2000)))")
                lineBytes = line.count
                if let message = QMPMessage.fastPath(line) { return message }
                var parser = JSONParser(bytes: line)
                guard let node = try? parser.parseDocument(), let message = QMPMessage.from(node) else {
                    close()
                    throw .protocolError(vm: vm, detail: "not a QMP message: \(quoted(String(decoding: line.prefix(200), as: UTF8.self)))")
                }
                return message
            }
            scanned = buffer.count
            if buffer.count > Self.maxLine {
                close()
                throw .protocolError(vm: vm, detail: "a line longer than \(Self.maxLine) bytes")
            }
            guard fd >= 0 else { throw .protocolError(vm: vm, detail: "connection closed") }
            let fd = self.fd
            func waitReadable() async throws(VMError) {
                do {
                    try await loop.readable(fd, deadline: deadline)
                } catch LoopError.timeout where !closeOnTimeout {
                    throw .timeout(vm: vm, step: step)
                } catch {
                    throw fail(error, step)
                }
            }
            // The last read emptied the socket: wait for more before reading (epoll reports
            // at once what came meanwhile) instead of a read that fails with EAGAIN.
            if drained {
                drained = false
                try await waitReadable()
            }
            let n = withUnsafeTemporaryAllocation(of: UInt8.self, capacity: Self.readChunk) { chunk -> Int in
                let n = read(fd, chunk.baseAddress, chunk.count)
                if n > 0 { buffer.append(contentsOf: UnsafeBufferPointer(rebasing: chunk[0..<n])) }
                return n
            }
            if n > 0 {
                // A stream socket's read returns less than asked only when nothing more is queued.
                drained = n < Self.readChunk
                continue
            }
            if errno == EAGAIN || errno == EINTR, n < 0 {
                emptyReads += 1
                try await waitReadable()
                continue
            }
            let e = n == 0 ? 0 : errno
            close()
            if step == "greeting" && (e == 0 || e == ECONNRESET) {
                throw endedBeforeGreeting
            }
            if e == 0 { throw .protocolError(vm: vm, detail: "QEMU closed the connection during \(step)") }
            throw .protocolError(vm: vm, detail: "read: \(String(cString: strerror(e)))")
        }
    }

    private func fail(_ error: any Error, _ step: String) -> VMError {
        close()
        if let e = error as? LoopError, e == .timeout { return .timeout(vm: vm, step: step) }
        return .protocolError(vm: vm, detail: "\(step): \(error)")
    }
}
