import HotplugConfig
import JSONKit
import Logging
import Reactor
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The logic behind the API: the daemon implements it; the server only moves
/// lines. It never sees a socket, so the logic does not depend on the transport.
public protocol ControlService: AnyObject, Sendable {
    /// The reply (`APIReply.ok(...)` or `APIReply.failed(...)`) to one request.
    /// `enable_notifications` is answered by the server itself.
    func handle(_ request: APIRequest) async -> JSONText
    /// Notifications a client that has just enabled them should get at once (choices
    /// still waiting for it: `usb_select_vm`), sent after its `ok`.
    func notificationsForNewListener() async -> [JSONText]
    /// The last client listening for notifications has gone.
    func lastListenerGone() async
}

extension ControlService {
    public func notificationsForNewListener() async -> [JSONText] { [] }
    public func lastListenerGone() async {}
}

/// Limits that keep one client from affecting the daemon.
public struct ServerLimits: Sendable {
    /// A request line longer than this gets an error and the connection is dropped.
    public var maxLineBytes = 64 * 1024
    /// Replies and notifications waiting for a client that does not read: beyond this it is dropped.
    public var maxPendingOutput = 1 << 20
    /// A client that cannot take any output for this long is dropped.
    public var writeTimeout: Double = 10
    /// Connections at once over each transport (Unix, TCP, vsock); more are refused. Each
    /// transport has its own share: guests over vsock cannot take the host's Unix clients' places.
    public var maxConnections = 64
    /// Connections at once from one party (a uid, a guest's CID): one client cannot take every
    /// place of a transport with idle connections and lock the others out.
    public var maxConnectionsPerParty = 16
    /// Refused connections of one party are logged once in this many seconds (with how many
    /// more there were): a guest or user that retries in a loop cannot flood the journal.
    public var refusalLogInterval: Double = 60

    public init() {}
}

/// The control API server: listeners from `general.api`, one task per connection
/// on the event loop (no threads, no polling), newline-delimited JSON.
public actor ControlServer {
    nonisolated let loop: EventLoop
    public nonisolated var unownedExecutor: UnownedSerialExecutor { loop.asUnownedSerialExecutor() }

    /// One client; touched only by this actor (hence unchecked).
    final class Connection: @unchecked Sendable {
        let fd: Int32
        let peer: APIPeer
        var input: [UInt8] = []
        var output: [UInt8] = []
        var notifications = false
        var writing = false
        /// The peer has shut its side (end of file): it is closed once its output is sent.
        var finishing = false
        var closed = false
        init(fd: Int32, peer: APIPeer) {
            self.fd = fd
            self.peer = peer
        }
    }

    let settings: APISettings
    let limits: ServerLimits
    var logger: Logger
    var service: (any ControlService)?
    var listeners: [(fd: Int32, transport: APITransport)] = []
    var connections: [Int32: Connection] = [:]
    /// When a refused connection of each party was last logged, and how many were refused since.
    var refusalsLogged: [String: (at: Deadline, more: Int)] = [:]
    /// Group whose members may connect over the Unix socket (besides root and the daemon's user).
    var allowedGroup: UInt32?
    var running = false
    /// Told of each connection the server ends or refuses, with the reason (tests, metrics).
    var observer: (@Sendable (APIPeer, String?) -> Void)?

    /// Sets the observer of ended and refused connections.
    public func observeDrops(_ observer: @escaping @Sendable (APIPeer, String?) -> Void) {
        self.observer = observer
    }

    /// Open connections.
    public var connectionCount: Int { connections.count }

    /// Bytes of replies and notifications waiting for clients to read them.
    public var pendingOutput: Int { connections.values.reduce(0) { $0 + $1.output.count } }

    public init(settings: APISettings, limits: ServerLimits = ServerLimits(), loop: EventLoop, logger: Logger) {
        self.settings = settings
        self.limits = limits
        self.loop = loop
        self.logger = logger
    }

    /// Creates the listeners of `settings.transports` and starts accepting.
    public func start(service: any ControlService) throws {
        try open()
        serve(service)
    }

    /// Creates the listeners of `settings.transports`; clients that connect wait in the
    /// listen backlog until `serve`. Nothing is left open when it throws.
    public func open() throws {
        guard listeners.isEmpty else { return }
        var uid: UInt32?
        if let user = settings.unixSocketUser {
            guard let id = Sockets.userID(user) else { throw SocketError("unixSocketUser: no user named \(quoted(user))") }
            uid = id
        }
        if let group = settings.unixSocketGroup {
            guard let id = Sockets.groupID(group) else { throw SocketError("unixSocketGroup: no group named \(quoted(group))") }
            allowedGroup = id
        }
        do {
            for transport in settings.transports {
                switch transport {
                case .unix:
                    let fd = try Sockets.unixListener(path: settings.unixSocket, mode: settings.unixSocketMode, uid: uid, gid: allowedGroup)
                    listeners.append((fd, .unix))
                    logger.info("API: listening on \(settings.unixSocket) (mode \(String(settings.unixSocketMode, radix: 8)), root\(allowedGroup.map { " and group \($0)" } ?? ""))")
                case .tcp:
                    let fd = try Sockets.tcpListener(host: settings.host, port: settings.port)
                    listeners.append((fd, .tcp))
                    logger.warning("API: listening on TCP \(settings.host):\(settings.port); TCP has no peer credentials: anyone who can reach it may use the API")
                case .vsock:
                    let fd = try Sockets.vsockListener(port: settings.port)
                    listeners.append((fd, .vsock))
                    logger.info("API: listening on vsock port \(settings.port) for CIDs \(settings.allowedCids.map(String.init).joined(separator: ", "))")
                }
            }
        } catch {
            for l in listeners { close(l.fd) }
            if listeners.contains(where: { $0.transport == .unix }) { unlink(settings.unixSocket) }
            listeners = []
            throw error
        }
    }

    /// Starts accepting on the listeners `open` created.
    public func serve(_ service: any ControlService) {
        guard !running else { return }
        self.service = service
        running = true
        for l in listeners {
            Task(executorPreference: loop) { await self.acceptLoop(l.fd, l.transport) }
        }
    }

    /// Closes every listener and connection (the Unix socket file is removed).
    public func stop() {
        running = false
        for l in listeners {
            loop.forget(l.fd)
            close(l.fd)
        }
        if listeners.contains(where: { $0.transport == .unix }) { unlink(settings.unixSocket) }
        listeners = []
        for c in connections.values { drop(c, reason: nil) }
    }

    /// Connections that asked for notifications; readable from any actor.
    public nonisolated var listenerCount: Int { listening.load(ordering: .relaxed) }
    private nonisolated let listening = Atomic<Int>(0)
    /// Notifications posted from other actors, sent in order by one drain task.
    private nonisolated let posted = Mutex<(events: [JSONText], draining: Bool)>(([], false))

    /// Queues a notification from any actor, without waiting; sent in posting order. While no
    /// client listens (a host without an applet) nothing is built, queued or rendered.
    public nonisolated func post(_ event: @autoclosure () -> JSONText) {
        guard listenerCount > 0 else { return }
        let event = event()
        let startDrain = posted.withLock { p -> Bool in
            p.events.append(event)
            if p.draining { return false }
            p.draining = true
            return true
        }
        if startDrain { Task(executorPreference: loop) { await self.drainPosted() } }
    }

    private func drainPosted() {
        while true {
            let batch = posted.withLock { p -> [JSONText] in
                let b = p.events
                p.events.removeAll()
                if b.isEmpty { p.draining = false }
                return b
            }
            if batch.isEmpty { return }
            for e in batch { notify(e) }
        }
    }

    /// Sends a notification line to every connection that enabled them.
    public func notify(_ event: JSONText) {
        let line = event.rendered(.python) + "\n"
        for c in connections.values where c.notifications { enqueue(c, line) }
    }

    // MARK: Accepting

    func acceptLoop(_ fd: Int32, _ transport: APITransport) async {
        // Failures in a row (out of descriptors and the like): the connection waiting stays in the
        // backlog, so each try fails at once. Said once per streak, with the back-off doubling
        // from 0.1 s to 10 s (before, an error line every 0.1 s for as long as it lasted).
        var failures = 0
        while running {
            do { try await loop.readable(fd) } catch { return }
            while running {
                let accepted: (fd: Int32, peer: APIPeer)?
                do {
                    accepted = try Sockets.accept(fd, transport: transport)
                } catch {
                    let backOff = Self.acceptBackOff(afterFailures: failures)
                    if failures == 0 {
                        logger.error("API: \(error); trying again in \(backOff) s, then less often (said again when it works)")
                    } else {
                        logger.debug("API: accept failed again (\(failures + 1) in a row); trying again in \(backOff) s")
                    }
                    failures += 1
                    await loop.sleep(backOff)
                    break
                }
                guard let (cfd, peer) = accepted else {
                    // Nothing waiting, and no error: over. (Out of descriptors, accept fails before it
                    // looks at the backlog, so a success alone does not end the streak.)
                    if failures > 0 {
                        logger.info("API: accepting connections again after \(failures) failed tries")
                        failures = 0
                    }
                    break
                }
                admit(cfd, peer)
            }
        }
    }

    /// Seconds to wait after `failures` failed accepts in a row: 0.1, doubling, up to 10.
    static func acceptBackOff(afterFailures failures: Int) -> Double {
        min(0.1 * Double(1 << min(failures, 7)), 10)
    }

    func admit(_ fd: Int32, _ peer: APIPeer) {
        if let refusal = refusal(peer, groups: { pid in Sockets.peerGroups(fd) ?? Sockets.supplementaryGroups(pid: pid) }) {
            return refuse(fd, peer, refusal, error: "permission denied: \(refusal)")
        }
        let same = connections.values.reduce(0) { $0 + ($1.peer.transport == peer.transport ? 1 : 0) }
        if same >= limits.maxConnections {
            return refuse(fd, peer, "already \(same) connections over \(peer.transport)", error: "too many connections over \(peer.transport)")
        }
        let party = peer.party
        let own = connections.values.reduce(0) { $0 + ($1.peer.party == party ? 1 : 0) }
        if own >= limits.maxConnectionsPerParty {
            return refuse(fd, peer, "already \(own) connections from \(party)", error: "too many connections from \(party) (\(own))")
        }
        let c = Connection(fd: fd, peer: peer)
        connections[fd] = c
        logger.debug("API: connection from \(peer)")
        Task(executorPreference: loop) { await self.readLoop(c) }
    }

    /// Refuses a connection: one error line to it, then closed. Logged once per
    /// `refusalLogInterval` for each party, with the count of those refused meanwhile.
    func refuse(_ fd: Int32, _ peer: APIPeer, _ why: String, error: String) {
        observer?(peer, "refused: \(why)")
        let line = APIReply.failed(error).rendered(.python) + "\n"
        _ = line.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
        close(fd)
        let party = peer.party, now = Deadline.now()
        if let last = refusalsLogged[party], now.seconds(since: last.at) < limits.refusalLogInterval {
            refusalsLogged[party]?.more += 1
            logger.debug("API: refused connection from \(peer): \(why)")
            return
        }
        let more = refusalsLogged[party]?.more ?? 0
        let earlier = more > 0 ? " (and \(more) more from \(party) before, not logged)" : ""
        logger.warning("API: refused connection from \(peer): \(why)\(earlier)")
        if refusalsLogged.count >= 1024 {
            refusalsLogged = refusalsLogged.filter { now.seconds(since: $0.value.at) < limits.refusalLogInterval }
        }
        refusalsLogged[party] = (now, 0)
    }

    /// Why a peer may not connect, or nil (for tests and tools: a Unix peer's supplementary
    /// groups are read from /proc).
    public func refusalText(_ peer: APIPeer) -> String? { refusal(peer, groups: Sockets.supplementaryGroups(pid:)) }

    /// Why a peer may not connect, or nil. `groups`: a Unix peer's supplementary groups, asked for
    /// only when its uid and primary group do not decide.
    func refusal(_ peer: APIPeer, groups: (Int32) -> [UInt32]) -> String? {
        switch peer {
        case .unix(let pid, let uid, let gid):
            if uid == 0 || uid == geteuid() { return nil }
            if let g = allowedGroup, gid == g || groups(pid).contains(g) { return nil }
            return allowedGroup.map { "uid \(uid) is not root and not in group \($0)" } ?? "uid \(uid) is not root (no unixSocketGroup is configured)"
        case .vsock(let cid, _):
            return settings.allowedCids.contains(cid) ? nil : "CID \(cid) is not in allowedCids"
        case .tcp:
            return nil
        }
    }

    // MARK: Reading

    func readLoop(_ c: Connection) async {
        var chunk = [UInt8](repeating: 0, count: 16384)
        while !c.closed {
            do { try await loop.readable(c.fd) } catch LoopError.cancelled { return } catch {
                // (epoll refused the fd: out of memory, max_user_watches.) Before, the connection
                // stayed, and kept its place, until the daemon stopped.
                drop(c, reason: "cannot wait for its requests: \(error)")
                return
            }
            if c.closed { return }
            let n = chunk.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress, $0.count, 0) }
            if n == 0 {
                // The peer sent all it will (`shutdown(SHUT_WR)`, as `socat` and `nc` do at the
                // end of their input): what is still to be sent to it goes first (every request
                // read has its reply queued by now).
                if c.output.isEmpty { drop(c, reason: nil) } else { c.finishing = true }
                return
            }
            if n < 0 {
                if errno == EAGAIN || errno == EINTR { continue }
                drop(c, reason: "read failed: \(String(cString: strerror(errno)))")
                return
            }
            // The input held no newline (every complete line was taken): only the new bytes are
            // searched, and the lines taken are removed at once at the end. (Before, each line
            // moved the rest of the buffer and each read searched it all again: a client sending
            // empty lines, or a long line a byte at a time, cost the loop time quadratic in its reads.)
            var from = c.input.count
            var taken = 0
            c.input.append(contentsOf: chunk[0..<n])
            defer { if !c.closed { c.input.removeFirst(taken) } }
            while let nl = Self.newline(in: c.input, from: from) {
                var line = c.input[taken..<nl]
                taken = nl + 1
                from = taken
                if line.last == 0x0D { line = line.dropLast() }
                if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { continue }
                if line.count > limits.maxLineBytes { return tooLong(c) }
                let wasListening = c.notifications
                let reply = await process(c, Array(line))
                if c.closed { return }
                enqueue(c, reply.rendered(.python) + "\n")
                if c.closed { return }
                if c.notifications && !wasListening, let service {
                    for event in await service.notificationsForNewListener() where !c.closed {
                        enqueue(c, event.rendered(.python) + "\n")
                    }
                    if c.closed { return }
                }
            }
            if c.input.count - taken > limits.maxLineBytes { return tooLong(c) }
        }
    }

    /// The index of the first newline in `bytes` at or after `from`, or nil.
    static func newline(in bytes: [UInt8], from: Int) -> Int? {
        bytes.withUnsafeBufferPointer { b in
            guard from < b.count, let base = b.baseAddress, let p = memchr(base + from, 0x0A, b.count - from) else { return nil }
            return UnsafeRawPointer(base).distance(to: UnsafeRawPointer(p))
        }
    }

    /// An oversized request: an error reply, then the connection is dropped.
    func tooLong(_ c: Connection) {
        let why = "request line longer than \(limits.maxLineBytes) bytes"
        enqueue(c, APIReply.failed("\(why); closing the connection").rendered(.python) + "\n")
        drop(c, reason: why)
    }

    func process(_ c: Connection, _ line: [UInt8]) async -> JSONText {
        switch APIRequest.decode(line: line) {
        case .failure(let error):
            logger.debug("API: \(c.peer): bad request: \(error.message)")
            return APIReply.failed(error.message)
        case .success(.enableNotifications):
            if !c.notifications {
                c.notifications = true
                listening.add(1, ordering: .relaxed)
            }
            return APIReply.ok()
        case .success(let request):
            guard let service else { return APIReply.failed("the daemon is not ready") }
            return await service.handle(request)
        }
    }

    // MARK: Writing

    func enqueue(_ c: Connection, _ text: String) {
        guard !c.closed else { return }
        c.output.append(contentsOf: text.utf8)
        if c.output.count > limits.maxPendingOutput {
            drop(c, reason: "more than \(limits.maxPendingOutput) bytes of output wait for it (it does not read)")
            return
        }
        flush(c)
    }

    /// Writes what the socket takes now; the rest waits for writability (with a deadline).
    func flush(_ c: Connection) {
        defer { if c.finishing && c.output.isEmpty { drop(c, reason: nil) } }
        while !c.output.isEmpty && !c.closed {
            let n = c.output.withUnsafeBytes { send(c.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 {
                c.output.removeFirst(n)
            } else if n < 0 && (errno == EAGAIN || errno == EINTR) {
                if errno == EAGAIN, !c.writing {
                    c.writing = true
                    Task(executorPreference: loop) { await self.writeLoop(c) }
                }
                if errno == EAGAIN { return }
            } else {
                drop(c, reason: "write failed: \(String(cString: strerror(errno)))")
                return
            }
        }
    }

    func writeLoop(_ c: Connection) async {
        defer { c.writing = false }
        while !c.closed && !c.output.isEmpty {
            do {
                try await loop.writable(c.fd, deadline: .after(limits.writeTimeout))
            } catch LoopError.timeout {
                drop(c, reason: "it read nothing for \(limits.writeTimeout) s")
                return
            } catch LoopError.cancelled {
                return
            } catch {
                drop(c, reason: "cannot wait to write to it: \(error)")
                return
            }
            flush(c)
        }
    }

    func drop(_ c: Connection, reason: String?) {
        guard !c.closed else { return }
        c.closed = true
        if c.notifications, listening.subtract(1, ordering: .relaxed).newValue == 0, running, let service {
            Task(executorPreference: loop) { await service.lastListenerGone() }
        }
        if let reason { logger.warning("API: dropped connection from \(c.peer): \(reason)") }
        observer?(c.peer, reason)
        loop.forget(c.fd)
        close(c.fd)
        connections[c.fd] = nil
    }
}
