#if canImport(Glibc)
import Glibc
#endif

/// A job for a short-lived helper thread.
private final class BlockingJob: @unchecked Sendable {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}

extension EventLoop {
    /// Runs a call that may block (a sysfs write in which the kernel configures a
    /// device, for hundreds of milliseconds) on a helper thread of its own, and resumes
    /// the caller on its executor with the result: the loop goes on meanwhile. For rare
    /// calls only (a thread each); without a thread, the call runs here.
    public func runBlocking<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { (c: CheckedContinuation<T, Never>) in
            let job = Unmanaged.passRetained(BlockingJob { c.resume(returning: body()) })
            var thread = pthread_t()
            let rc = pthread_create(&thread, nil, { arg in
                guard let arg else { return nil }
                Unmanaged<BlockingJob>.fromOpaque(arg).takeRetainedValue().run()
                return nil
            }, job.toOpaque())
            if rc == 0 {
                pthread_detach(thread)
            } else {
                job.takeRetainedValue().run()
            }
        }
    }
}
