import Reactor

/// Waits for conditions on sysfs, woken by the uevents the daemon feeds in,
/// each with a deadline on the event loop. Lives on the loop's thread (inside
/// `VFIOBinder`); never polls: a condition is checked once right after its wait
/// is registered (so a uevent that came first is not missed) and again on each
/// event for its key, and the timer ends the wait at its deadline.
final class EventWaits {
    /// What an event is about: a PCI function (by address) or a vfio group node (by name).
    enum Key: Hashable {
        case pci(String)
        case vfioGroup(String)
    }

    /// One look at the condition.
    enum Probe {
        case done
        /// Not yet; the text says what was seen (for the timeout message).
        case notYet(String)
        case failed(SysfsIOError)
    }

    enum Outcome {
        case satisfied
        case timedOut(lastSeen: String)
        case failed(SysfsIOError)
    }

    private struct Waiter {
        var key: Key
        var check: () -> Probe
        var continuation: CheckedContinuation<Outcome, Never>
        var timer: TimerToken?
        var lastSeen: String
    }

    private let loop: EventLoop
    private var waiters: [UInt64: Waiter] = [:]
    private var nextId: UInt64 = 1

    init(loop: EventLoop) {
        self.loop = loop
    }

    /// Waits currently registered.
    var count: Int { waiters.count }

    /// Suspends until `check` says done (checked now, then on each event for
    /// `key`), fails, or the deadline passes.
    func wait(for key: Key, deadline: Deadline, until check: @escaping () -> Probe) async -> Outcome {
        await withCheckedContinuation { (c: CheckedContinuation<Outcome, Never>) in
            let id = nextId
            nextId += 1
            waiters[id] = Waiter(key: key, check: check, continuation: c, timer: nil, lastSeen: "not checked")
            waiters[id]?.timer = loop.schedule(at: deadline) { [self] in
                guard let w = waiters[id] else { return }
                finish(id, .timedOut(lastSeen: w.lastSeen))
            }
            evaluate(id)
        }
    }

    /// An event for `key`: re-checks the conditions waiting on it.
    func notify(_ key: Key) {
        for (id, w) in waiters where w.key == key {
            evaluate(id)
        }
    }

    /// Events were lost (the daemon's event socket overflowed): every condition is looked at
    /// again, since its event may have been among them.
    func notifyAll() {
        for id in waiters.keys.sorted() { evaluate(id) }
    }

    private func evaluate(_ id: UInt64) {
        guard let w = waiters[id] else { return }
        switch w.check() {
        case .done: finish(id, .satisfied)
        case .notYet(let seen): waiters[id]?.lastSeen = seen
        case .failed(let e): finish(id, .failed(e))
        }
    }

    private func finish(_ id: UInt64, _ outcome: Outcome) {
        guard let w = waiters.removeValue(forKey: id) else { return }
        if let t = w.timer { loop.cancel(t) }
        w.continuation.resume(returning: outcome)
    }
}
