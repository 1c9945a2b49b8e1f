/// A FIFO lock for tasks on one serial executor (the event loop): the operations
/// of one VM, or the binds of the VFIO binder, run one after another in the order
/// they were asked for, while other work goes on between their steps.
public final class AsyncLock {
    private var held = false

    public init() {}
    private var waiters: [CheckedContinuation<Void, Never>] = []

    public func acquire() async {
        if !held {
            held = true
            return
        }
        await withCheckedContinuation { waiters.append($0) }
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
