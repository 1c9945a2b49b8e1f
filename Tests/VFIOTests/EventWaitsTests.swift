import Reactor
import Synchronization
import Testing
@testable import VFIO
import VHotplugTestSupport

/// A flag the test sets and a wait's condition reads.
final class Flag: Sendable {
    private let value = Mutex(false)
    var isSet: Bool { value.withLock { $0 } }
    func set() { value.withLock { $0 = true } }
}

/// Owns an `EventWaits` on a loop, as `VFIOBinder` does.
actor WaitHarness {
    nonisolated let loop: EventLoop
    private let waits: EventWaits
    nonisolated var unownedExecutor: UnownedSerialExecutor { loop.asUnownedSerialExecutor() }

    init(loop: EventLoop) {
        self.loop = loop
        waits = EventWaits(loop: loop)
    }

    /// Waits for `flag` on `key`; `checked` is called on every look at the condition.
    func wait(_ key: EventWaits.Key, seconds: Double, flag: Flag, checked: @escaping @Sendable () -> Void = {}) async -> String {
        let outcome = await waits.wait(for: key, deadline: .after(seconds)) {
            // Read before telling the test: a flag the test sets once told cannot change this look.
            let set = flag.isSet
            checked()
            return set ? .done : .notYet("flag not set")
        }
        switch outcome {
        case .satisfied: return "satisfied"
        case .timedOut(let seen): return "timed out (\(seen))"
        case .failed(let e): return "failed: \(e)"
        }
    }

    func notify(_ key: EventWaits.Key) { waits.notify(key) }
    func notifyAll() { waits.notifyAll() }
    var count: Int { waits.count }
    var timers: Int { loop.pendingTimers }
}

@Suite("Waiting by event, with a deadline")
struct EventWaitsTests {
    @Test("a condition already true (its event came first) is seen by the check right after registering")
    func eventBeforeWait() async throws {
        let host = try LoopHost()
        let h = WaitHarness(loop: host.loop)
        let flag = Flag()
        flag.set()
        #expect(await h.wait(.pci("0000:01:00.0"), seconds: 10, flag: flag) == "satisfied")
        #expect(await h.count == 0)
        #expect(await h.timers == 0)
    }

    @Test("only an event for its own key wakes a wait; then the condition is checked again")
    func onlyItsKey() async throws {
        let host = try LoopHost()
        let h = WaitHarness(loop: host.loop)
        let flag = Flag()
        let (checks, checked) = AsyncStream.makeStream(of: Void.self)
        async let result = h.wait(.pci("0000:01:00.0"), seconds: 10, flag: flag) { checked.yield() }
        var seen = checks.makeAsyncIterator()
        await seen.next() // the check made right after registering: the wait is in place
        flag.set()
        await h.notify(.pci("0000:01:00.1"))
        await h.notify(.vfioGroup("0000:01:00.0"))
        #expect(await h.count == 1, "events for other keys do not look at the condition")
        await h.notify(.pci("0000:01:00.0"))
        #expect(await result == "satisfied")
        #expect(await h.count == 0)
        #expect(await h.timers == 0, "the deadline's timer is cancelled")
    }

    @Test("after events were lost, every wait looks at its condition again")
    func eventsLost() async throws {
        let host = try LoopHost()
        let h = WaitHarness(loop: host.loop)
        let (pciFlag, groupFlag) = (Flag(), Flag())
        let (checks, checked) = AsyncStream.makeStream(of: Void.self)
        async let pci = h.wait(.pci("0000:01:00.0"), seconds: 10, flag: pciFlag) { checked.yield() }
        async let group = h.wait(.vfioGroup("12"), seconds: 10, flag: groupFlag) { checked.yield() }
        var seen = checks.makeAsyncIterator()
        await seen.next()
        await seen.next() // both waits are in place
        pciFlag.set()
        groupFlag.set()  // and their events are lost
        await h.notifyAll()
        #expect(await pci == "satisfied")
        #expect(await group == "satisfied")
        #expect(await h.count == 0)
        #expect(await h.timers == 0)
    }

    @Test("a wait ends at its deadline with what it saw last")
    func deadline() async throws {
        let host = try LoopHost()
        let h = WaitHarness(loop: host.loop)
        let start = Deadline.now()
        #expect(await h.wait(.vfioGroup("2"), seconds: 0.05, flag: Flag()) == "timed out (flag not set)")
        #expect(Deadline.now().seconds(since: start) >= 0.05)
        #expect(await h.count == 0)
        #expect(await h.timers == 0)
    }
}
