import CLinux
#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Why a wait ended without its event.
public enum LoopError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The deadline passed first.
    case timeout
    /// The wait was cancelled (the fd was closed by its owner, or the loop stopped).
    case cancelled
    /// A system call failed.
    case system(String, Int32)

    public var description: String {
        switch self {
        case .timeout: "timed out"
        case .cancelled: "cancelled"
        case .system(let call, let code): "\(call): \(String(cString: strerror(code)))"
        }
    }
}

/// A point in time on the monotonic clock, in nanoseconds.
public struct Deadline: Sendable, Hashable, Comparable {
    public var nanoseconds: UInt64

    public init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }

    public static func now() -> Deadline {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Deadline(nanoseconds: UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec))
    }

    /// `seconds` from now.
    public static func after(_ seconds: Double) -> Deadline {
        Deadline(nanoseconds: now().nanoseconds &+ UInt64(max(0, seconds) * 1e9))
    }

    /// Seconds from `earlier` to this deadline.
    public func seconds(since earlier: Deadline) -> Double {
        Double(Int64(bitPattern: nanoseconds &- earlier.nanoseconds)) / 1e9
    }

    public static func < (a: Deadline, b: Deadline) -> Bool { a.nanoseconds < b.nanoseconds }
}

/// A handle to a timer, for cancelling it.
public struct TimerToken: Sendable, Hashable {
    let id: UInt64
}

/// One thread, one epoll: file descriptors, timers (one timerfd armed to the
/// earliest deadline, disarmed when there is none), and Swift jobs. It is the
/// serial executor of every actor of the daemon, so all of the daemon's state
/// is touched from this thread only and an idle daemon makes no system calls.
///
/// The methods that register waits must be called on the loop's thread (from an
/// actor that uses this executor); `enqueue` and `stop` from anywhere.
public final class EventLoop: SerialExecutor, TaskExecutor, @unchecked Sendable {
    private let epfd: Int32
    private let wakeFd: Int32
    private let timerFd: Int32
    private let queue = Mutex<[UnownedJob]>([])
    private let stopped = Atomic<Bool>(false)
    private var thread: pthread_t?

    private struct Waiter {
        var continuation: CheckedContinuation<Void, any Error>
        var timer: TimerToken?
    }
    /// One-shot waits for readability (or writability), by fd.
    private var readWaiters: [Int32: Waiter] = [:]
    private var writeWaiters: [Int32: Waiter] = [:]
    /// Persistent handlers (udev monitor, signals, inotify).
    private var handlers: [Int32: () -> Void] = [:]
    /// The events a handler's fd is registered for, when not `EPOLLIN` (the mount table's `EPOLLPRI`).
    private var handlerEvents: [Int32: UInt32] = [:]
    /// The events each fd is registered for in epoll; 0 for an fd that stays in the set
    /// disarmed: a one-shot wait's registration after its event (see `updateRegistration`).
    private var registered: [Int32: UInt32] = [:]
    /// `epoll_ctl` calls made, for tests of how many a wait costs.
    public private(set) var controlCalls = 0

    private var timers: [UInt64: (deadline: Deadline, fire: () -> Void)] = [:]
    private var nextTimerId: UInt64 = 1
    private var armedFor: Deadline?
    /// Timers came or went since the timerfd was last set: it is set again, to the earliest
    /// one, before the loop next waits (a timer scheduled and cancelled before then, like a
    /// kept connection taken at once, costs no system call; one cancelled after costs one
    /// instead of a wake-up for nothing).
    private var timersChanged = false
    /// `timerfd_settime` calls made, for tests of what timers cost.
    public private(set) var timerCalls = 0

    public init() throws(LoopError) {
        epfd = epoll_create1(Int32(EPOLL_CLOEXEC))
        wakeFd = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        timerFd = timerfd_create(CLOCK_MONOTONIC, Int32(TFD_CLOEXEC | TFD_NONBLOCK))
        guard epfd >= 0, wakeFd >= 0, timerFd >= 0 else { throw .system("epoll/eventfd/timerfd", errno) }
        for fd in [wakeFd, timerFd] {
            var ev = epoll_event(events: EPOLLIN.rawValue, data: epoll_data_t(fd: fd))
            epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev)
        }
    }

    deinit {
        close(epfd)
        close(wakeFd)
        close(timerFd)
    }

    // MARK: Executor

    public func enqueue(_ job: consuming ExecutorJob) {
        let unowned = UnownedJob(job)
        let first = queue.withLock { q -> Bool in
            q.append(unowned)
            return q.count == 1
        }
        // On the loop's own thread the queue is looked at before the next epoll_wait.
        if first && !inLoop { wake() }
    }

    /// Lets `assumeIsolated` succeed on the loop's thread outside a job (in an fd
    /// handler), so that a handler can call into the loop's actors synchronously.
    public func checkIsolated() {
        precondition(inLoop, "not on the event loop's thread")
    }

    public func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(ordinary: self)
    }

    public func isSameExclusiveExecutionContext(other: EventLoop) -> Bool { self === other }

    private func wake() {
        var one: UInt64 = 1
        _ = write(wakeFd, &one, 8)
    }

    /// True on the loop's own thread.
    public var inLoop: Bool {
        guard let thread else { return false }
        return pthread_equal(thread, pthread_self()) != 0
    }

    // MARK: Running

    /// Runs the loop on the calling thread until `stop()`.
    public func run() {
        thread = pthread_self()
        var events = [epoll_event](repeating: epoll_event(), count: 32)
        // Rounds of jobs in a row with more jobs queued after them: every 64th looks at epoll
        // without waiting, so that a task that keeps yielding (a peer that keeps writing)
        // cannot keep the fds and timers of everything else from being served.
        var busyRounds = 0
        var batch: [UnownedJob] = []
        batch.reserveCapacity(64)
        let serial = asUnownedSerialExecutor(), task = asUnownedTaskExecutor()
        while !stopped.load(ordering: .acquiring) {
            // The queue and this round's batch swap buffers: neither is copied or allocated.
            queue.withLock { swap(&$0, &batch) }
            // Each job runs as the loop in both roles: the serial executor of every actor and
            // the task executor of every task (all are made with the loop as their preference).
            // A task's move into an actor, or back out to a nonisolated function, then finds
            // itself already where it must run and goes on inline; run as the serial executor
            // only, each such move was a trip through the queue (38 a plug/unplug cycle).
            for job in batch { job.runSynchronously(isolatedTo: serial, taskExecutor: task) }
            batch.removeAll(keepingCapacity: true)
            if stopped.load(ordering: .acquiring) { break }
            var wait: Int32 = -1
            if queue.withLock({ !$0.isEmpty }) {
                busyRounds += 1
                if busyRounds % 64 != 0 { continue }
                wait = 0
            } else {
                busyRounds = 0
            }
            if timersChanged { setTimer() }
            let n = epoll_wait(epfd, &events, Int32(events.count), wait)
            if n < 0 { continue } // EINTR
            for k in 0..<Int(n) {
                let fd = events[k].data.fd
                let flags = events[k].events
                if fd == wakeFd {
                    var v: UInt64 = 0
                    _ = read(wakeFd, &v, 8)
                } else if fd == timerFd {
                    var v: UInt64 = 0
                    _ = read(timerFd, &v, 8)
                    fireTimers()
                } else {
                    dispatch(fd: fd, flags: flags)
                }
            }
        }
        // Whatever still waits is cancelled, so that no task hangs forever.
        for (_, w) in readWaiters { w.continuation.resume(throwing: LoopError.cancelled) }
        for (_, w) in writeWaiters { w.continuation.resume(throwing: LoopError.cancelled) }
        readWaiters.removeAll()
        writeWaiters.removeAll()
    }

    /// Ends `run()` after the jobs in hand.
    public func stop() {
        stopped.store(true, ordering: .releasing)
        wake()
    }

    private func dispatch(fd: Int32, flags: UInt32) {
        let error = flags & (EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0
        if let handler = handlers[fd] {
            handler()
            return
        }
        // A one-shot registration is disarmed by the event that reported it.
        if let have = registered[fd], have & EPOLLONESHOT.rawValue != 0 { registered[fd] = 0 }
        if flags & EPOLLIN.rawValue != 0 || error, let w = readWaiters.removeValue(forKey: fd) {
            if let t = w.timer { cancel(t) }
            w.continuation.resume()
        }
        if flags & EPOLLOUT.rawValue != 0 || error, let w = writeWaiters.removeValue(forKey: fd) {
            if let t = w.timer { cancel(t) }
            w.continuation.resume()
        }
        updateRegistration(fd)
    }

    /// Makes epoll's registration of `fd` match its waiters and handler.
    ///
    /// A handler's registration is level-triggered and lasts until `unwatch`. Waits are
    /// one-shot (`EPOLLONESHOT`): the event that ends a wait disarms the fd in the kernel,
    /// and the fd stays in the set, so that the next wait re-arms it with one `MOD` instead
    /// of an `ADD` and a `DEL` around every wait (a QMP exchange waits three times). A
    /// disarmed fd reports nothing; `forget` (before `close`) drops it, and closing an fd
    /// takes it out of the set. A wait that ends without its event (timeout, cancel) leaves
    /// an armed registration: that one is deleted.
    ///
    /// Returns 0, or the errno of an `epoll_ctl` that failed (a closed fd: EBADF).
    @discardableResult
    private func updateRegistration(_ fd: Int32) -> Int32 {
        let persistent = handlers[fd] != nil
        var want: UInt32 = 0
        if readWaiters[fd] != nil { want |= EPOLLIN.rawValue }
        if persistent { want |= handlerEvents[fd] ?? EPOLLIN.rawValue }
        if writeWaiters[fd] != nil { want |= EPOLLOUT.rawValue }
        if want != 0 && !persistent { want |= EPOLLONESHOT.rawValue }
        let have = registered[fd]
        if want == 0 {
            // Not in the set, or disarmed (it stays there, silent): nothing to do.
            guard let have, have != 0 else { return 0 }
            control(EPOLL_CTL_DEL, fd, 0)
            registered[fd] = nil
            return 0
        }
        guard want != have else { return 0 }
        if control(have == nil ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, want) {
            registered[fd] = want
            return 0
        }
        guard errno == ENOENT || errno == EEXIST else { return errno }
        // What the map said is stale: the fd was closed without `forget` (and its number
        // reused), or `forget` dropped a disarmed fd that was not closed after all.
        guard control(errno == ENOENT ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, want) else { return errno }
        registered[fd] = want
        return 0
    }

    @discardableResult
    private func control(_ op: Int32, _ fd: Int32, _ events: UInt32) -> Bool {
        controlCalls += 1
        var ev = epoll_event(events: events, data: epoll_data_t(fd: fd))
        return epoll_ctl(epfd, op, fd, &ev) == 0
    }

    // MARK: Waiting for file descriptors

    /// Suspends until `fd` is readable (or has an error or hang-up), or throws
    /// `.timeout` at the deadline. One waiter per fd and direction.
    public func readable(_ fd: Int32, deadline: Deadline? = nil) async throws {
        try await wait(fd, write: false, deadline: deadline)
    }

    /// Suspends until `fd` is writable (a non-blocking connect completed), or the deadline.
    public func writable(_ fd: Int32, deadline: Deadline? = nil) async throws {
        try await wait(fd, write: true, deadline: deadline)
    }

    private func wait(_ fd: Int32, write: Bool, deadline: Deadline?) async throws {
        precondition(inLoop, "EventLoop waits must be registered on the loop's thread")
        if stopped.load(ordering: .acquiring) { throw LoopError.cancelled }
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            // This closure may run as a job of its own (see AsyncLock.acquire): the loop may
            // have stopped, or the fd been closed, meanwhile.
            if stopped.load(ordering: .acquiring) {
                c.resume(throwing: LoopError.cancelled)
                return
            }
            var timer: TimerToken?
            if let deadline {
                timer = schedule(at: deadline) { [unowned self] in
                    let w = write ? self.writeWaiters.removeValue(forKey: fd) : self.readWaiters.removeValue(forKey: fd)
                    self.updateRegistration(fd)
                    // What came by the deadline counts, though epoll's word of it is not handled yet
                    // (it may come later in this pass, or in the next): a reply there is no timeout.
                    var p = pollfd(fd: fd, events: Int16(write ? POLLOUT : POLLIN), revents: 0)
                    if poll(&p, 1, 0) == 1 {
                        w?.continuation.resume()
                    } else {
                        w?.continuation.resume(throwing: LoopError.timeout)
                    }
                }
            }
            let waiter = Waiter(continuation: c, timer: timer)
            let previous = write ? writeWaiters.updateValue(waiter, forKey: fd) : readWaiters.updateValue(waiter, forKey: fd)
            if let previous {
                if let t = previous.timer { cancel(t) }
                previous.continuation.resume(throwing: LoopError.cancelled)
            }
            let error = updateRegistration(fd)
            if error != 0 {
                // Not a descriptor epoll can watch (closed): the wait fails now instead of never ending.
                _ = write ? writeWaiters.removeValue(forKey: fd) : readWaiters.removeValue(forKey: fd)
                if let timer { cancel(timer) }
                c.resume(throwing: LoopError.system("epoll_ctl", error))
            }
        }
    }

    /// Cancels the waits on `fd` (call before closing it).
    public func forget(_ fd: Int32) {
        for w in [readWaiters.removeValue(forKey: fd), writeWaiters.removeValue(forKey: fd)].compactMap({ $0 }) {
            if let t = w.timer { cancel(t) }
            w.continuation.resume(throwing: LoopError.cancelled)
        }
        handlers[fd] = nil
        handlerEvents[fd] = nil
        // A disarmed fd is left to the `close` that follows (it takes it out of the set).
        if registered[fd] == 0 { registered[fd] = nil }
        updateRegistration(fd)
    }

    /// Calls `handler` on the loop's thread each time `fd` is readable (or has `events`:
    /// `EPOLLPRI` for a change of the mount table, whose file is always readable), until `unwatch`.
    /// Returns 0, or the errno of an `epoll_ctl` that failed (a file epoll cannot watch: EPERM).
    @discardableResult
    public func watch(_ fd: Int32, events: UInt32 = EPOLLIN.rawValue, _ handler: @escaping () -> Void) -> Int32 {
        precondition(thread == nil || inLoop, "watch must be called on the loop's thread")
        handlers[fd] = handler
        handlerEvents[fd] = events == EPOLLIN.rawValue ? nil : events
        let error = updateRegistration(fd)
        if error != 0 {
            handlers[fd] = nil
            handlerEvents[fd] = nil
        }
        return error
    }

    public func unwatch(_ fd: Int32) {
        handlers[fd] = nil
        handlerEvents[fd] = nil
        updateRegistration(fd)
    }

    // MARK: Timers

    /// Calls `fire` on the loop's thread at `deadline`.
    @discardableResult
    public func schedule(at deadline: Deadline, _ fire: @escaping () -> Void) -> TimerToken {
        // The timerfd is set from the loop's thread just before it waits: a timer scheduled
        // from another thread while the loop waits would not be seen until its next wake-up.
        precondition(thread == nil || inLoop, "timers must be scheduled on the loop's thread")
        let id = nextTimerId
        nextTimerId += 1
        timers[id] = (deadline, fire)
        timersChanged = true
        return TimerToken(id: id)
    }

    public func cancel(_ token: TimerToken) {
        guard timers.removeValue(forKey: token.id) != nil else { return }
        timersChanged = true
    }

    /// Suspends for `seconds` (retry back-off; never used to wait for an event).
    public func sleep(_ seconds: Double) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            schedule(at: .after(seconds)) { c.resume() }
        }
    }

    /// Number of timers pending (tests check that an idle daemon holds none).
    public var pendingTimers: Int { timers.count }

    /// Sets the timerfd to the earliest timer (or disarms it) unless it is set so already.
    private func setTimer() {
        timersChanged = false
        var earliest: Deadline?
        for t in timers.values where earliest == nil || t.deadline < earliest! { earliest = t.deadline }
        guard earliest != armedFor else { return }
        armedFor = earliest
        var spec = itimerspec()
        if let earliest {
            let ns = max(earliest.nanoseconds, 1)
            spec.it_value = timespec(tv_sec: Int(ns / 1_000_000_000), tv_nsec: Int(ns % 1_000_000_000))
        }
        timerfd_settime(timerFd, Int32(TFD_TIMER_ABSTIME), &spec, nil)
        timerCalls += 1
    }

    private func fireTimers() {
        let now = Deadline.now()
        // The timerfd has expired: whatever it is set to next is a new setting.
        armedFor = nil
        timersChanged = true
        // Earliest first; those due at the same instant in the order they were scheduled.
        let due = timers.filter { $0.value.deadline <= now }.sorted {
            $0.value.deadline != $1.value.deadline ? $0.value.deadline < $1.value.deadline : $0.key < $1.key
        }
        // Each is taken out as it fires: one cancelled meanwhile by the callback of another
        // (both due in this pass) is gone, and does not fire.
        for (id, _) in due { timers.removeValue(forKey: id)?.fire() }
    }
}
