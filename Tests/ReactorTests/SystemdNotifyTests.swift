import CLinux
import Foundation
import Reactor
import Synchronization
import Testing
import VHotplugTestSupport

@Suite("systemd's readiness protocol")
struct SystemdNotifyTests {
    /// A datagram socket standing for systemd's, which nobody reads, and its path.
    func receiver() throws -> (fd: Int32, path: String) {
        let path = scratchPath("notify")
        return (try unixSocket(.datagram, boundAt: path), path)
    }

    @Test("a datagram reaches the socket; with no socket named, nothing is sent")
    func sends() throws {
        let (fd, path) = try receiver()
        defer { close(fd) }
        #expect(SystemdNotify.send("READY=1", socketPath: path))
        var buf = [UInt8](repeating: 0, count: 64)
        let n = recv(fd, &buf, buf.count, Int32(MSG_DONTWAIT))
        #expect(n == 7 && String(decoding: buf[0..<max(0, n)], as: UTF8.self) == "READY=1")
        #expect(!SystemdNotify.send("READY=1", socketPath: ""))
    }

    @Test("a receiver whose queue is full (a systemd that does not read it): the send gives up, false, instead of waiting for good")
    func fullQueue() throws {
        let (fd, path) = try receiver()
        defer { close(fd) }
        // Fill its queue: datagrams sent without waiting, from one socket after another (each
        // socket has its own send buffer), until a fresh socket finds no room for one more: the
        // receiver's queue holds `net.unix.max_dgram_qlen` datagrams.
        var fillers: [Int32] = []
        defer { for f in fillers { close(f) } }
        var full = false
        fill: for _ in 0..<1000 {
            let filler = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            try #require(filler >= 0)
            fillers.append(filler)
            for n in 0..<100_000 {
                let sent = withUnixAddress(path) { sendto(filler, "x", 1, Int32(MSG_DONTWAIT | MSG_NOSIGNAL), $0, $1) }
                if sent < 0 {
                    try #require(errno == EAGAIN, "errno \(errno)")
                    if n == 0 { full = true; break fill }
                    break
                }
            }
        }
        try #require(full, "the receiver's queue never filled")
        // The send runs beside the test; one that waits for room is let go at the deadline (a
        // datagram read from the queue) and fails the test, rather than hanging it.
        let done = DispatchSemaphore(value: 0)
        let result = Mutex<Bool?>(nil)
        Thread {
            let sent = SystemdNotify.send("READY=1", socketPath: path)
            result.withLock { $0 = sent }
            done.signal()
        }.start()
        if done.wait(timeout: .now() + 20) == .timedOut {
            Issue.record("the send waited for room in the queue")
            var buf = [UInt8](repeating: 0, count: 8)
            while recv(fd, &buf, buf.count, Int32(MSG_DONTWAIT)) > 0 {}
            done.wait()
        }
        #expect(result.withLock { $0 } == false)
    }
}
