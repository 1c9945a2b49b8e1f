@testable import Reactor
import Testing
import VHotplugTestSupport

/// An actor on the loop that holds an AsyncLock, as the VM backends and the VFIO binder do.
actor LockUser {
    let loop: EventLoop
    let lock = AsyncLock()
    var order: [String] = []
    nonisolated var unownedExecutor: UnownedSerialExecutor { loop.asUnownedSerialExecutor() }
    init(_ loop: EventLoop) { self.loop = loop }

    func take(_ name: String) async {
        await lock.acquire()
        order.append(name)
    }

    func release() { lock.release() }

    /// A holds the lock and releases it, nobody queued; then B's continuation is queued, as
    /// when `acquire`'s closure runs as a job of its own after the release (the runtime does
    /// that at times: seen in the lab). B must get the lock: true, or false when it was still
    /// waiting 5 s later (a lost wake-up: it would have waited forever).
    func releasedBeforeQueued() async -> Bool {
        await take("A")
        lock.release()
        let loop = self.loop
        /// Resumes the test once: when B has the lock, or at the 5 s guard (all on the loop's thread).
        final class Once: @unchecked Sendable {
            var continuation: CheckedContinuation<Void, Never>?
            var timedOut = false
            func resume() { continuation?.resume(); continuation = nil }
        }
        let once = Once()
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            once.continuation = c
            let guardTimer = loop.schedule(at: .after(5)) { once.timedOut = true; once.resume() }
            Task(executorPreference: loop) {
                await self.queueLate()
                loop.cancel(guardTimer)
                once.resume()
            }
        }
        return !once.timedOut && lock.isHeld && order == ["A", "B"]
    }

    private func queueLate() async {
        await withCheckedContinuation { lock.queue($0) }
        order.append("B")
    }
}

@Suite("AsyncLock")
struct AsyncLockTests {
    @Test("a lock released between a waiter's look at it and its queueing is handed over, not lost")
    func handOver() async throws {
        let host = try LoopHost()
        #expect(await LockUser(host.loop).releasedBeforeQueued())
    }

    @Test("waiters get the lock in the order they asked")
    func fifo() async throws {
        let host = try LoopHost()
        let user = LockUser(host.loop)
        await user.take("first")
        let tasks = ["a", "b", "c"].map { name in Task(executorPreference: host.loop) { await user.take(name) } }
        for _ in 0..<4 { await user.release() }
        for t in tasks { await t.value }
        #expect(await user.order == ["first", "a", "b", "c"])
    }
}
