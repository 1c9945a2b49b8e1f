/// A FIFO lock for tasks on one serial executor (the event loop): the operations
/// of one VM, or the binds of the VFIO binder, run one after another in the order
/// they were asked for, while other work goes on between their steps.
public final class AsyncLock {
    private var held = false

    public init() {}
    private var waiters: [CheckedContinuation<Void, Never>] = []

    /// Takes the lock, after those who asked before.
    ///
    /// The continuation's closure looks at `held` again: it can run as a job of its own, after
    /// the holder has released the lock with nobody queued, and a waiter queued then would
    /// wait forever (seen in the lab: the VFIO binder's restores of one IOMMU group, asked for
    /// by two devices at once; the second never ran). Everything runs on the loop's thread,
    /// so the look and the queueing are one step.
    public func acquire(isolation: isolated (any Actor)? = #isolation) async {
        if !held {
            held = true
            return
        }
        await withCheckedContinuation(isolation: isolation) { queue($0) }
    }

    /// Queues a waiter, or gives it the lock at once when it was released meanwhile.
    func queue(_ waiter: CheckedContinuation<Void, Never>) {
        if held {
            waiters.append(waiter)
        } else {
            held = true
            waiter.resume()
        }
    }

    public func release() {
        if waiters.isEmpty {
            held = false
        } else {
            waiters.removeFirst().resume()
        }
    }

    /// True while an operation holds the lock.
    public var isHeld: Bool { held }

    /// Operations waiting behind the current one.
    public var queued: Int { waiters.count }
}
