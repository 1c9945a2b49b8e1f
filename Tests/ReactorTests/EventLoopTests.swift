import Foundation
import Reactor
import Testing
import VHotplugTestSupport

/// An actor on the loop with the operations under test.
actor LoopProbe {
    let loop: EventLoop
    nonisolated var unownedExecutor: UnownedSerialExecutor { loop.asUnownedSerialExecutor() }
    init(_ loop: EventLoop) { self.loop = loop }

    func readable(_ fd: Int32, within seconds: Double) async throws {
        try await loop.readable(fd, deadline: .after(seconds))
    }

    func run(_ argv: [String], within seconds: Double) async throws -> ProcessResult {
        try await loop.runProcess(argv, deadline: .after(seconds))
    }

    final class Box: @unchecked Sendable { var order: [Int] = [] }

    func timerOrder() async -> [Int] {
        let box = Box()
        let loop = self.loop
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            loop.schedule(at: .after(0.03)) { box.order.append(3); c.resume() }
            loop.schedule(at: .after(0.01)) { box.order.append(1) }
            let t = loop.schedule(at: .after(0.02)) { box.order.append(99) }
            loop.schedule(at: .after(0.02)) { box.order.append(2) }
            loop.cancel(t)
        }
        return box.order
    }

    /// A blocking call on a helper thread (it waits for a byte on `fd`); meanwhile a
    /// timer on the loop writes that byte, which only works if the loop is free.
    /// Returns (the call ran off the loop, the caller resumed on the loop).
    func blockingCallWhileLoopServes() async -> (offLoop: Bool, resumedOnLoop: Bool) {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { return (false, false) }
        let (r, w) = (fds[0], fds[1])
        defer { close(r); close(w) }
        let loop = self.loop
        loop.schedule(at: .after(0.02)) { _ = write(w, "x", 1) }
        let offLoop = await loop.runBlocking { () -> Bool in
            var byte: UInt8 = 0
            let n = read(r, &byte, 1)
            return n == 1 && !loop.inLoop
        }
        return (offLoop, loop.inLoop)
    }

    func pendingTimers() -> Int { loop.pendingTimers }
    func onLoopThread() -> Bool { loop.inLoop }
}

@Suite("The event loop")
struct EventLoopTests {
    @Test("actors on the loop run on its thread")
    func executor() async throws {
        let host = try LoopHost()
        #expect(await LoopProbe(host.loop).onLoopThread())
    }

    @Test("a blocking call runs on a helper thread while the loop goes on, and the caller resumes on the loop")
    func blocking() async throws {
        let host = try LoopHost()
        let r = await LoopProbe(host.loop).blockingCallWhileLoopServes()
        #expect(r.offLoop)
        #expect(r.resumedOnLoop)
    }

    @Test("a wait for a readable fd ends when data arrives")
    func readable() async throws {
        let host = try LoopHost()
        let a = LoopProbe(host.loop)
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        let (r, w) = (fds[0], fds[1])
        defer { close(r); close(w) }
        async let waited: Void = a.readable(r, within: 5)
        #expect(write(w, "x", 1) == 1)
        try await waited
        #expect(await a.pendingTimers() == 0)
    }

    @Test("a wait times out at its deadline, and leaves no timer behind")
    func timeout() async throws {
        let host = try LoopHost()
        let a = LoopProbe(host.loop)
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        let start = Date()
        await #expect(throws: LoopError.timeout) { try await a.readable(fds[0], within: 0.05) }
        #expect(Date().timeIntervalSince(start) >= 0.05)
        #expect(await a.pendingTimers() == 0)
    }

    @Test("timers fire in deadline order; a cancelled one never fires")
    func timers() async throws {
        let host = try LoopHost()
        #expect(await LoopProbe(host.loop).timerOrder() == [1, 2, 3])
    }

    @Test("a program's output and exit status, without a shell in between")
    func process() async throws {
        let host = try LoopHost()
        let r = try await LoopProbe(host.loop).run(["sh", "-c", "echo out; echo err >&2; exit 3"], within: 10)
        #expect(r.status == 3)
        #expect(r.stdout == "out\n")
        #expect(r.stderr == "err\n")
    }

    @Test("a program past its deadline is killed")
    func processTimeout() async throws {
        let host = try LoopHost()
        let a = LoopProbe(host.loop)
        await #expect(throws: LoopError.timeout) { try await a.run(["sleep", "30"], within: 0.1) }
        #expect(await a.pendingTimers() == 0)
    }

    @Test("a missing program is an error naming it")
    func missing() async throws {
        let host = try LoopHost()
        let e = await #expect(throws: LoopError.self) { try await LoopProbe(host.loop).run(["/nonexistent/crosvm"], within: 1) }
        #expect(e?.description.contains("/nonexistent/crosvm") == true)
    }
}
