import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// The outcome of a program run to its end.
public struct ProcessResult: Sendable, Hashable {
    /// Exit status, or 128 + signal number when it was killed.
    public var status: Int32
    public var stdout: String
    public var stderr: String
}

extension EventLoop {
    /// Runs a program without a shell (`argv[0]` is a path, or a name looked up
    /// on PATH), following its output and exit through the loop (pipes and a
    /// pidfd). At the deadline it is killed and `.timeout` is thrown. Of each of its
    /// streams, the last MiB is kept.
    public func runProcess(_ argv: [String], deadline: Deadline) async throws -> ProcessResult {
        precondition(!argv.isEmpty && inLoop)
        var outPipe: [Int32] = [-1, -1], errPipe: [Int32] = [-1, -1]
        guard pipe(&outPipe) == 0 else { throw LoopError.system("pipe", errno) }
        guard pipe(&errPipe) == 0 else {
            close(outPipe[0]); close(outPipe[1])
            throw LoopError.system("pipe", errno)
        }
        for fd in [outPipe[0], outPipe[1], errPipe[0], errPipe[1]] { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        for fd in [outPipe[0], errPipe[0]] { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
        // The daemon blocks SIGHUP/SIGTERM/SIGINT for its signalfd: the child gets
        // an empty mask and default handlers back, as a program expects.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in [SIGHUP, SIGTERM, SIGINT, SIGPIPE, SIGCHLD] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        // In a process group of its own, which its deadline kills whole (`fail`).
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))
        var pid: pid_t = 0
        let cArgs = argv.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) } }
        let rc = posix_spawnp(&pid, argv[0], &actions, &attributes, cArgs, environ)
        close(outPipe[1])
        close(errPipe[1])
        guard rc == 0 else {
            close(outPipe[0]); close(errPipe[0])
            throw LoopError.system("spawn \(argv[0])", rc)
        }
        let pidfd = vh_pidfd_open(pid)
        guard pidfd >= 0 else {
            let e = errno
            close(outPipe[0]); close(errPipe[0])
            kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            throw LoopError.system("pidfd_open", e)
        }
        let child = RunningProcess(pid: pid, pidfd: pidfd, out: outPipe[0], err: errPipe[0])
        return try await withCheckedThrowingContinuation { (c: CheckedContinuation<ProcessResult, any Error>) in
            child.start(loop: self, deadline: deadline, continuation: c)
        }
    }

    /// A `waitpid` status as an exit status: the program's own, or 128 + the signal that ended it.
    public static func exitCode(_ status: Int32) -> Int32 {
        let sig = status & 0x7f
        return sig == 0 ? (status >> 8) & 0xff : 128 + sig
    }
}

/// A child process followed by the loop: both pipes drained as they fill, the
/// exit seen through its pidfd, a timer for the deadline. No polling.
private final class RunningProcess {
    let pid: pid_t
    let pidfd: Int32
    let outFd: Int32
    let errFd: Int32
    var open: Set<Int32>
    var output: [Int32: [UInt8]] = [:]
    var exited = false
    var timer: TimerToken?
    var continuation: CheckedContinuation<ProcessResult, any Error>?

    init(pid: pid_t, pidfd: Int32, out: Int32, err: Int32) {
        self.pid = pid
        self.pidfd = pidfd
        outFd = out
        errFd = err
        open = [out, err]
    }

    func start(loop: EventLoop, deadline: Deadline, continuation: CheckedContinuation<ProcessResult, any Error>) {
        self.continuation = continuation
        for fd in open {
            loop.watch(fd) { [self] in drain(fd, loop) }
        }
        loop.watch(pidfd) { [self] in
            loop.unwatch(pidfd)
            exited = true
            // (`self.`: the parameter of the same name is never nil. Before, a process killed at its
            // deadline that took longer than `fail`'s wait to die was never reaped: a zombie and its
            // pidfd, for the daemon's life.)
            if self.continuation == nil {
                _ = reap() // killed at its deadline (`fail`), gone only now
            } else if open.isEmpty {
                finishIfDone(loop)
            } else {
                // All it wrote is in the pipes: read to there, not to their end, which a child of
                // its own still holding them (a wrapper's background job) would put off until the
                // deadline (the answer lost for a timeout).
                for fd in Array(open) where self.continuation != nil && open.contains(fd) { drain(fd, loop, toEnd: true) }
            }
        }
        timer = loop.schedule(at: deadline) { [self] in fail(loop, LoopError.timeout) }
    }

    /// Reads what `fd` has; with `toEnd` (the program has exited) everything it has now, and
    /// closes it then even if it is not at its end.
    private func drain(_ fd: Int32, _ loop: EventLoop, toEnd: Bool = false) {
        var buf = [UInt8](repeating: 0, count: 4096)
        // What an exited program wrote is in the pipe, which holds a MiB at most (fs.pipe-max-size):
        // read to the end of that, not on while a child of its own that holds the pipe keeps writing
        // (the loop would never get back to anything else).
        var left = Self.limit
        while true {
            let n = read(fd, &buf, buf.count)
            if n > 0 {
                output[fd, default: []] += buf[0..<n]
                // Past the limit only the last part is kept (the answer is printed last); the program
                // runs on: killed, it might have done its work unseen (crosvm, a device attached).
                if let kept = output[fd], kept.count > 2 * Self.limit { output[fd]?.removeFirst(kept.count - Self.limit) }
                if !toEnd { return }
                left -= n
                if left > 0 { continue }
                break
            }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno == EAGAIN && !toEnd { return }
            break
        }
        loop.unwatch(fd)
        close(fd)
        open.remove(fd)
        finishIfDone(loop)
    }

    /// Bytes of each stream kept: its last ones.
    static let limit = 1 << 20

    private func reap() -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        close(pidfd)
        return status
    }

    private func finishIfDone(_ loop: EventLoop) {
        guard exited, open.isEmpty, let c = continuation else { return }
        continuation = nil
        if let timer { loop.cancel(timer) }
        let status = reap()
        c.resume(returning: ProcessResult(status: EventLoop.exitCode(status),
                                          stdout: String(decoding: (output[outFd] ?? []).suffix(Self.limit), as: UTF8.self),
                                          stderr: String(decoding: (output[errFd] ?? []).suffix(Self.limit), as: UTF8.self)))
    }

    private func fail(_ loop: EventLoop, _ error: LoopError) {
        guard let c = continuation else { return }
        continuation = nil
        if let timer { loop.cancel(timer) }
        for fd in open { loop.unwatch(fd); close(fd) }
        open.removeAll()
        // With the children it started (not reaped, it keeps its group's id): a wrapper script's
        // crosvm left running would hold the device and finish its request later, unseen.
        kill(-pid, SIGKILL)
        kill(pid, SIGKILL)
        // A killed process is gone within a millisecond or so, and is reaped here; one inside an
        // uninterruptible kernel wait (opening a USB node whose device lock a stuck reset holds)
        // ignores SIGKILL until it leaves it: the loop waits 100 ms at most, then reaps it when
        // its pidfd says it is gone (a blocking waitpid would stop the loop for as long).
        var p = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
        if exited || poll(&p, 1, 100) == 1 {
            if !exited { loop.unwatch(pidfd) }
            exited = true
            _ = reap()
        }
        c.resume(throwing: error)
    }
}
