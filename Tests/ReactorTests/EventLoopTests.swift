import CLinux
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

    /// Twenty timers due at the same instant, and one after them that ends the wait: the order
    /// they fired in.
    func sameInstantOrder() async -> [Int] {
        let box = Box()
        let loop = self.loop
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let at = Deadline.after(0.01)
            for n in 1...20 { loop.schedule(at: at) { box.order.append(n) } }
            loop.schedule(at: .after(0.03)) { box.order.append(21); c.resume() }
        }
        return box.order
    }

    /// A read wait whose deadline comes in the same pass as its data: a timer due at the wait's
    /// deadline, scheduled before it (so it fires first), writes a byte into the pipe. Returns
    /// whether the wait ended readable (rather than timed out).
    func readableAtItsDeadline() async -> Bool {
        let (r, w) = makePipe()
        defer { loop.forget(r); close(r); close(w) }
        let at = Deadline.after(0.01)
        loop.schedule(at: at) { _ = write(w, "x", 1) }
        do {
            try await loop.readable(r, deadline: at)
            return true
        } catch {
            return false
        }
    }

    /// Two timers due at the same instant (the loop fires both in one pass), each cancelling
    /// the other when it fires: whichever fires first, the other must not. A third, later,
    /// ends the wait. Returns what fired, the third's 3 last.
    func cancelledByATimerDueWithIt() async -> [Int] {
        let box = Box()
        let loop = self.loop
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            final class Tokens: @unchecked Sendable { var all: [Int: TimerToken] = [:] }
            let tokens = Tokens()
            let at = Deadline.after(0.01)
            for (mine, other) in [(1, 2), (2, 1)] {
                tokens.all[mine] = loop.schedule(at: at) {
                    box.order.append(mine)
                    if let t = tokens.all[other] { loop.cancel(t) }
                }
            }
            loop.schedule(at: .after(0.05)) { box.order.append(3); c.resume() }
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

    /// timerfd_settime calls of: a timer scheduled and cancelled in one turn of the loop,
    /// then a 10 ms sleep (its own timer, set once; expired, nothing to disarm).
    func timerCallsOfCancelledThenSleep() async -> Int {
        let before = loop.timerCalls
        let t = loop.schedule(at: .after(5)) {}
        loop.cancel(t)
        await loop.sleep(0.01)
        return loop.timerCalls - before
    }

    func pendingTimers() -> Int { loop.pendingTimers }
    func onLoopThread() -> Bool { loop.inLoop }
    func controlCalls() -> Int { loop.controlCalls }

    /// Waits for `fd` to be readable while a timer writes a byte to `writer` a moment
    /// later (the wait is registered first), then reads the byte.
    func waitForLateByte(_ fd: Int32, writer: Int32) async throws {
        loop.schedule(at: .after(0.005)) { _ = write(writer, "x", 1) }
        try await loop.readable(fd, deadline: .after(5))
        var byte: UInt8 = 0
        _ = read(fd, &byte, 1)
    }

    /// A read wait and a write wait on one socket at once (both registered in the same turn
    /// of the loop): the write one ends at once (the socket is writable), which disarms the
    /// one-shot registration of both; the read one must be re-armed to end when a byte comes.
    func readAndWriteAtOnce(_ fd: Int32, peer: Int32) async throws -> (writeFirst: Bool, readEnded: Bool) {
        final class Order: @unchecked Sendable { var names: [String] = [] }
        let order = Order()
        let loop = self.loop
        // Isolated to this actor (it uses `self`), so it runs on the loop's thread.
        let reader = Task { () async throws -> Void in
            try await self.loop.readable(fd, deadline: .after(5))
            order.names.append("read")
        }
        try await loop.writable(fd, deadline: .after(5))
        order.names.append("write")
        loop.schedule(at: .after(0.02)) { _ = write(peer, "x", 1) }
        try await reader.value
        return (order.names.first == "write", order.names == ["write", "read"])
    }

    func forget(_ fd: Int32) { loop.forget(fd) }
}

/// A new pipe: (read end, write end).
func makePipe() -> (Int32, Int32) {
    var fds: [Int32] = [0, 0]
    #expect(pipe(&fds) == 0)
    return (fds[0], fds[1])
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
        let (r, w) = makePipe()
        defer { close(r); close(w) }
        async let waited: Void = a.readable(r, within: 5)
        #expect(write(w, "x", 1) == 1)
        try await waited
        #expect(await a.pendingTimers() == 0)
    }

    @Test("waits on one fd, one after the other, re-arm its one-shot registration: one epoll_ctl a wait, none to forget it")
    func repeatedWaits() async throws {
        let host = try LoopHost()
        let a = LoopProbe(host.loop)
        let (r, w) = makePipe()
        defer { close(r); close(w) }
        let before = await a.controlCalls()
        for _ in 0..<3 { try await a.waitForLateByte(r, writer: w) }
        // data already there when the wait comes: the re-armed registration reports it at once
        #expect(write(w, "y", 1) == 1)
        try await a.readable(r, within: 5)
        await a.forget(r)
        #expect(await a.controlCalls() - before == 4) // ADD, MOD, MOD, MOD (it was ADD and DEL for each)
        #expect(await a.pendingTimers() == 0)
    }

    @Test("an fd closed without forget, its number reused, and an fd forgotten but kept: both can be waited on again")
    func staleRegistrations() async throws {
        let host = try LoopHost()
        let a = LoopProbe(host.loop)
        let (r, w) = makePipe()
        try await a.waitForLateByte(r, writer: w)
        // closed behind the loop's back; a new pipe's read end takes the same number
        let (r2, w2) = makePipe()
        #expect(dup2(r2, r) == r)
        close(r2)
        try await a.waitForLateByte(r, writer: w2)
        // forgotten (as before a close) but not closed
        await a.forget(r)
        try await a.waitForLateByte(r, writer: w2)
        await a.forget(r)
        close(r); close(w); close(w2)
    }

    @Test("a read wait and a write wait on one socket at once each end on their own event")
    func readAndWrite() async throws {
        let host = try LoopHost()
        let a = LoopProbe(host.loop)
        var sv: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &sv) == 0)
        defer { close(sv[0]); close(sv[1]) }
        let r = try await a.readAndWriteAtOnce(sv[0], peer: sv[1])
        #expect(r.writeFirst)
        #expect(r.readEnded)
        await a.forget(sv[0])
    }

    @Test("a wait on a descriptor that is not open fails at once, naming epoll_ctl, and leaves no timer behind")
    func badDescriptor() async throws {
        let host = try LoopHost()
        let a = LoopProbe(host.loop)
        await #expect(throws: LoopError.system("epoll_ctl", EBADF)) { try await a.readable(100_000, within: 5) }
        #expect(await a.pendingTimers() == 0)
    }

    @Test("a wait times out at its deadline, and leaves no timer behind")
    func timeout() async throws {
        let host = try LoopHost()
        let a = LoopProbe(host.loop)
        let (r, w) = makePipe()
        defer { close(r); close(w) }
        let start = Date()
        await #expect(throws: LoopError.timeout) { try await a.readable(r, within: 0.05) }
        #expect(Date().timeIntervalSince(start) >= 0.05)
        #expect(await a.pendingTimers() == 0)
    }

    @Test("timers fire in deadline order; a cancelled one never fires")
    func timers() async throws {
        let host = try LoopHost()
        #expect(await LoopProbe(host.loop).timerOrder() == [1, 2, 3])
    }

    @Test("timers due at the same instant fire in the order they were scheduled (before, in no set order)")
    func sameInstant() async throws {
        let host = try LoopHost()
        #expect(await LoopProbe(host.loop).sameInstantOrder() == Array(1...21))
    }

    @Test("data that came by a wait's deadline ends the wait as readable, though epoll has not said so yet (before: a timeout)")
    func dataAtTheDeadline() async throws {
        let host = try LoopHost()
        #expect(await LoopProbe(host.loop).readableAtItsDeadline())
    }

    @Test("a timer cancelled by the callback of a timer due in the same pass never fires")
    func cancelledInTheSamePass() async throws {
        let host = try LoopHost()
        let probe = LoopProbe(host.loop)
        let fired = await probe.cancelledByATimerDueWithIt()
        #expect(fired == [1, 3]) // (the first scheduled fires first)
        #expect(await probe.pendingTimers() == 0)
    }

    @Test("the timerfd is set once before the loop waits: a timer scheduled and cancelled in one turn costs no system call")
    func timerCalls() async throws {
        let host = try LoopHost()
        let probe = LoopProbe(host.loop)
        #expect(await probe.timerCallsOfCancelledThenSleep() == 1)
        #expect(await probe.pendingTimers() == 0)
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

    @Test("a program that exits while a child of its own still holds its output: its answer and status, not a timeout")
    func processGrandchildHoldsPipe() async throws {
        let host = try LoopHost()
        let pidFile = scratchPath("vhp-grandchild") + ".pid"
        defer { unlink(pidFile) }
        let r: Result<ProcessResult, any Error>
        do {
            r = .success(try await LoopProbe(host.loop).run(["sh", "-c", "echo ok 3; sleep 30 & echo $! > \(pidFile); exit 0"], within: 3))
        } catch {
            r = .failure(error)
        }
        if let text = try? String(contentsOfFile: pidFile, encoding: .utf8), let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
            kill(pid, SIGKILL)
        }
        let result = try r.get()
        #expect(result.status == 0)
        #expect(result.stdout == "ok 3\n")
    }

    @Test("a program killed at its deadline goes with the children it started (a wrapper's crosvm that would finish its request later)")
    func processTimeoutKillsChildren() async throws {
        let host = try LoopHost()
        let pidFile = scratchPath("vhp-grandchild") + ".pid"
        defer { unlink(pidFile) }
        await #expect(throws: LoopError.timeout) {
            try await LoopProbe(host.loop).run(["sh", "-c", "sleep 30 & echo $! > \(pidFile); wait"], within: 2)
        }
        let text = try String(contentsOfFile: pidFile, encoding: .utf8)
        let pid = try #require(Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)))
        let pidfd = vh_pidfd_open(pid)
        guard pidfd >= 0 else {
            #expect(errno == ESRCH, "pidfd_open: errno \(errno)") // gone (and reaped) already
            return
        }
        defer { close(pidfd) }
        var p = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
        let gone = poll(&p, 1, 10_000) == 1
        if !gone { kill(pid, SIGKILL) }
        #expect(gone, "the child of the killed program still runs")
    }

    @Test("a missing program is an error naming it")
    func missing() async throws {
        let host = try LoopHost()
        let e = await #expect(throws: LoopError.self) { try await LoopProbe(host.loop).run(["/nonexistent/crosvm"], within: 1) }
        #expect(e?.description.contains("/nonexistent/crosvm") == true)
    }
}
