import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// Signals delivered through a signalfd watched by the loop (no async handler).
public final class SignalSource {
    private let fd: Int32
    private let loop: EventLoop

    /// Blocks `signals` in the calling thread and every thread it starts later:
    /// call first thing in `main`, before the Swift runtime starts threads.
    public static func block(_ signals: [Int32]) {
        var set = sigset_t()
        sigemptyset(&set)
        for s in signals { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Blocks `signals` for the calling thread (and the threads it starts later)
    /// and reports them to `handler` on the loop's thread. Call before any thread starts.
    public init(_ signals: [Int32], loop: EventLoop, handler: @escaping (Int32) -> Void) throws(LoopError) {
        var set = sigset_t()
        sigemptyset(&set)
        for s in signals { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        fd = signalfd(-1, &set, Int32(SFD_NONBLOCK | SFD_CLOEXEC))
        guard fd >= 0 else { throw .system("signalfd", errno) }
        self.loop = loop
        let fd = self.fd
        loop.watch(fd) {
            var info = signalfd_siginfo()
            while read(fd, &info, MemoryLayout<signalfd_siginfo>.size) == MemoryLayout<signalfd_siginfo>.size {
                handler(Int32(info.ssi_signo))
            }
        }
    }

    deinit {
        loop.unwatch(fd)
        close(fd)
    }
}

/// Watches folders for files appearing and disappearing (inotify): the VMs'
/// sockets. A folder that does not exist yet is watched from its nearest
/// existing parent and taken over when it appears.
public final class PathWatcher {
    private let fd: Int32
    private let loop: EventLoop
    /// Watch descriptor -> the watched folder, as each target's path spells it: two spellings
    /// of one folder (`/var/run` is a symlink to `/run` on most systems) share one watch.
    private var folders: [Int32: [String]] = [:]
    /// The paths whose appearance/disappearance is reported.
    private var targets: Set<String> = []
    /// Whether each target existed when last reported (or when watched): after an overflow,
    /// only a target that changed is reported.
    private var exists: [String: Bool] = [:]
    private let handler: (String, Bool) -> Void
    /// Told when a folder cannot be watched (out of inotify watches, no permission): the
    /// appearance of a socket there would go unnoticed.
    public var warn: ((String) -> Void)?

    /// `handler(path, created)` runs on the loop's thread for each target path
    /// that is created (true) or deleted (false); after the kernel dropped events
    /// (its queue overflowed), for each target whose existence changed meanwhile.
    public init(loop: EventLoop, handler: @escaping (String, Bool) -> Void) throws(LoopError) {
        fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        guard fd >= 0 else { throw .system("inotify_init1", errno) }
        self.loop = loop
        self.handler = handler
        loop.watch(fd) { [weak self] in self?.drain() }
    }

    deinit {
        loop.unwatch(fd)
        close(fd)
    }

    /// Reports creation and deletion of `path` from now on; and at once, when it was watched
    /// before `removeAll` and has appeared or gone since (its event went with the old watch).
    public func watch(_ path: String) {
        targets.insert(path)
        armParent(of: path)
        let now = access(path, F_OK) == 0
        if let before = exists[path], before != now {
            report(path, now)
        } else {
            exists[path] = now
        }
    }

    private func report(_ path: String, _ created: Bool) {
        exists[path] = created
        handler(path, created)
    }

    /// Forgets every path (a configuration reload sets them again). What each was known to be
    /// is kept: a socket that appeared (or went) while a reload ran is reported when it is
    /// watched again. (Before, its event, queued under the removed watch, was dropped, and the
    /// VM stayed "not running" until its next restart.)
    public func removeAll() {
        for wd in folders.keys { inotify_rm_watch(fd, wd) }
        folders.removeAll()
        targets.removeAll()
    }

    private func armParent(of path: String) {
        var dir = parentFolder(path)
        // Up to the nearest folder that exists.
        while access(dir, F_OK) != 0 && dir != "/" && dir != "." { dir = parentFolder(dir) }
        guard !folders.values.contains(where: { $0.contains(dir) }) else { return }
        let mask = UInt32(IN_CREATE | IN_DELETE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE_SELF | IN_MOVE_SELF)
        // The kernel gives the watch of a folder already watched under another spelling.
        let wd = inotify_add_watch(fd, dir, mask)
        if wd >= 0 {
            folders[wd, default: []].append(dir)
        } else {
            warn?("cannot watch \(dir) for \(path) (inotify: \(String(cString: strerror(errno)))): its appearance goes unnoticed until a reload or restart")
        }
    }


    private func drain() {
        var buf = [UInt8](repeating: 0, count: 8192)
        while true {
            let n = read(fd, &buf, buf.count)
            if n <= 0 { return }
            var offset = 0
            var rearm = false
            var overflowed = false
            while offset + MemoryLayout<inotify_event>.size <= n {
                let (wd, mask, len) = buf.withUnsafeBytes { raw -> (Int32, UInt32, Int) in
                    let e = raw.loadUnaligned(fromByteOffset: offset, as: inotify_event.self)
                    return (e.wd, e.mask, Int(e.len))
                }
                let nameStart = offset + MemoryLayout<inotify_event>.size
                let nameBytes = buf[nameStart..<min(nameStart + len, n)].prefix { $0 != 0 }
                let name = String(decoding: nameBytes, as: UTF8.self)
                offset = nameStart + len
                if mask & UInt32(IN_Q_OVERFLOW) != 0 {
                    // The kernel's queue was full and events were dropped: each target as it is now.
                    overflowed = true
                    continue
                }
                if mask & UInt32(IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF) != 0 {
                    // A watched folder went away by itself (a watch this object removed
                    // is already forgotten: its IN_IGNORED is not a reason to re-arm). A folder
                    // moved away keeps its watch in the kernel: it is removed.
                    if folders.removeValue(forKey: wd) != nil {
                        rearm = true
                        if mask & UInt32(IN_MOVE_SELF) != 0 { inotify_rm_watch(fd, wd) }
                    }
                    continue
                }
                let created = mask & UInt32(IN_CREATE | IN_MOVED_TO) != 0
                for dir in folders[wd] ?? [] {
                    let path = dir == "/" ? "/" + name : dir == "." ? name : dir + "/" + name
                    if targets.contains(path) {
                        report(path, created)
                    } else if created, targets.contains(where: { $0.hasPrefix(path + "/") }) {
                        rearm = true // a folder on the way to a target appeared
                    }
                }
            }
            if rearm {
                // Watch the deepest existing folder of each target again.
                for wd in folders.keys { inotify_rm_watch(fd, wd) }
                folders.removeAll()
                for t in targets { armParent(of: t) }
            }
            if rearm || overflowed {
                // What changed meanwhile: a target in a folder that just appeared (or replaced the
                // one watched), or while events were dropped (a socket still there is not a restart).
                for t in targets.sorted() {
                    let now = access(t, F_OK) == 0
                    if exists[t] != now { report(t, now) }
                }
            }
        }
    }
}
