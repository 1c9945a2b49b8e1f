import Foundation
import Reactor
import Testing
import VHotplugTestSupport

/// What a watcher reported, from the loop's thread to the test's.
private final class Reports: @unchecked Sendable {
    private let lock = NSLock()
    private var reports: [(path: String, created: Bool)] = []
    private let arrived = DispatchSemaphore(value: 0)
    /// The watcher, kept (and dropped) on the loop's thread.
    var watcher: PathWatcher?

    var all: [(path: String, created: Bool)] { lock.withLock { reports } }

    func add(_ path: String, _ created: Bool) {
        lock.withLock { reports.append((path, created)) }
        arrived.signal()
    }

    /// Waits (for reports, not for time) until `path` is reported with `created`, or `seconds` pass.
    func wait(for path: String, created: Bool, seconds: Double) -> Bool {
        let end = DispatchTime.now() + seconds
        while true {
            if lock.withLock({ reports.contains { $0.path == path && $0.created == created } }) { return true }
            if arrived.wait(timeout: end) == .timedOut { return false }
        }
    }
}

@Suite("Watching for the VMs' sockets")
struct PathWatcherTests {
    /// A watcher on the loop, reporting into `reports`, watching `paths`.
    private func watching(_ paths: [String], _ host: LoopHost, _ reports: Reports) async throws {
        try await OnLoop(host.loop).run { loop in
            let w = try PathWatcher(loop: loop) { path, created in reports.add(path, created) }
            for p in paths { w.watch(p) }
            reports.watcher = w
        }
    }

    /// A new scratch folder.
    private func folder(_ name: String) throws -> String {
        let dir = scratchPath(name)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    private func makeFile(_ path: String) throws {
        let fd = open(path, O_CREAT | O_WRONLY, 0o600)
        try #require(fd >= 0, "cannot create \(path)")
        close(fd)
    }

    @Test("a socket that appears while a reload forgets and sets the watches again is reported once, when it is watched again")
    func appearsDuringReload() async throws {
        let host = try LoopHost()
        let dir = try folder("watch-reload")
        let path = dir + "/vm1.qmp"
        let reports = Reports()
        try await watching([path], host, reports)
        // One loop job, as the daemon's reload: the socket appears before the loop reads its
        // inotify event, which the removed watch then takes with it.
        try await OnLoop(host.loop).run { _ in
            let fd = open(path, O_CREAT | O_WRONLY, 0o600)
            close(fd)
            reports.watcher?.removeAll()
            reports.watcher?.watch(path)
        }
        #expect(reports.wait(for: path, created: true, seconds: 5), "\(reports.all)")
        try await OnLoop(host.loop).run { _ in }          // the loop has read inotify since
        #expect(reports.all.count == 1, "\(reports.all)")
    }

    @Test("two spellings of one folder (a symlink, as /var/run to /run): each target is reported under its own path")
    func twoSpellings() async throws {
        let host = try LoopHost()
        let dir = scratchPath("watch-alias")
        try FileManager.default.createDirectory(atPath: dir + "/run", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: dir + "/var-run", withDestinationPath: "run")
        let reports = Reports()
        try await watching([dir + "/var-run/vm1.qmp", dir + "/run/vm2.qmp"], host, reports)
        try makeFile(dir + "/run/vm1.qmp")
        try makeFile(dir + "/run/vm2.qmp")
        #expect(reports.wait(for: dir + "/var-run/vm1.qmp", created: true, seconds: 5), "\(reports.all)")
        #expect(reports.wait(for: dir + "/run/vm2.qmp", created: true, seconds: 5), "\(reports.all)")
    }

    @Test("a watched folder replaced by another that holds the socket already (mv -T of a prepared folder): the socket is reported")
    func folderReplaced() async throws {
        let host = try LoopHost()
        let dir = scratchPath("watch-replace")
        try FileManager.default.createDirectory(atPath: dir + "/vm1", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir + "/vm1.new", withIntermediateDirectories: true)
        let reports = Reports()
        try await watching([dir + "/vm1/qmp.sock"], host, reports)
        try makeFile(dir + "/vm1.new/qmp.sock")
        #expect(rename(dir + "/vm1.new", dir + "/vm1") == 0, "rename: \(String(cString: strerror(errno)))")
        #expect(reports.wait(for: dir + "/vm1/qmp.sock", created: true, seconds: 5), "\(reports.all)")
    }

    @Test("after the kernel dropped inotify events (its queue overflowed), each watched path that changed is reported as it is now, and only those")
    func overflow() async throws {
        let host = try LoopHost()
        let dir = try folder("watch")
        let target = dir + "/vm1.sock"
        // A socket there all along (its VM runs): an overflow is no news of it.
        let steady = dir + "/vm2.sock"
        let sfd = open(steady, O_CREAT | O_WRONLY, 0o600)
        try #require(sfd >= 0)
        close(sfd)
        let reports = Reports()
        let gate = DispatchSemaphore(value: 0)
        try await OnLoop(host.loop).run { loop in
            let w = try PathWatcher(loop: loop) { path, created in reports.add(path, created) }
            w.watch(target)
            w.watch(steady)
            reports.watcher = w
            // The loop's thread is held here while the kernel's queue fills.
            loop.schedule(at: .now()) { gate.wait() }
        }
        // More events than the queue holds, then the target: its event is dropped.
        let text = (try? String(contentsOfFile: "/proc/sys/fs/inotify/max_queued_events", encoding: .utf8)) ?? ""
        let limit = try #require(Int(text.trimmingCharacters(in: .whitespacesAndNewlines)), "cannot read /proc/sys/fs/inotify/max_queued_events")
        for i in 0...limit {
            let fd = open(dir + "/f\(i)", O_CREAT | O_WRONLY, 0o600)
            try #require(fd >= 0)
            close(fd)
        }
        let fd = open(target, O_CREAT | O_WRONLY, 0o600)
        try #require(fd >= 0)
        close(fd)
        gate.signal()
        #expect(reports.wait(for: target, created: true, seconds: 20))
        #expect(reports.all.allSatisfy { $0.path == target })
        try await OnLoop(host.loop).run { _ in reports.watcher = nil }
        try? FileManager.default.removeItem(atPath: dir)
    }
}
