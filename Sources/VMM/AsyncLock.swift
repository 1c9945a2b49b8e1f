/// A FIFO lock for tasks on one serial executor: the operations of one VM run
/// one after another, in the order they were asked for.
final class AsyncLock {
    private var held = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    func acquire() async {
        if !held {
            held = true
            return
        }
        await withCheckedContinuation { waiters.append($0) }
    }

    func release() {
        if waiters.isEmpty {
            held = false
        } else {
            waiters.removeFirst().resume()
        }
    }

    /// Operations waiting behind the current one.
    var queued: Int { waiters.count }
}
