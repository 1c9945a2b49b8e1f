import Foundation
import VHotplugTestSupport
#if canImport(Glibc)
import Glibc
#endif

// MARK: The floor of the attach figure (analysis)

/// One QMP connection made the way vhotplug makes it when a device arrives: connect, then
/// `qmp_capabilities` and the command written at once, without waiting for the greeting.
/// Blocking, for the benchmark's own thread.
final class QMPShot {
    private let fd: Int32
    private var buffer: [UInt8] = []

    init(path: String) throws {
        fd = try connectUnix(path)
    }

    deinit { close(fd) }

    /// Writes the lines, then reads until `replies` replies (return or error) have come; the last one.
    func send(_ lines: [String], replies: Int) throws -> String {
        let bytes = Array(lines.map { $0 + "\n" }.joined().utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { throw BenchError("QMP shot: write failed") }
            off += n
        }
        var got = 0
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            while let nl = buffer.firstIndex(of: 0x0A) {
                let line = String(decoding: buffer[..<nl], as: UTF8.self)
                buffer.removeSubrange(...nl)
                if line.contains("\"return\"") || line.contains("\"error\"") {
                    got += 1
                    if got == replies { return line }
                }
            }
            let n = read(fd, &chunk, chunk.count)
            guard n > 0 else { throw BenchError("QMP shot: connection closed or timed out") }
            buffer += chunk[0..<n]
        }
    }
}

/// A result handed from the shot's thread.
final class ShotResult: @unchecked Sendable {
    private let cond = NSCondition()
    private var value: Result<Int, BenchError>?

    func set(_ v: Result<Int, BenchError>) { cond.lock(); value = v; cond.broadcast(); cond.unlock() }

    func wait() -> Result<Int, BenchError> {
        cond.lock()
        defer { cond.unlock() }
        while value == nil { cond.wait() }
        return value!
    }
}

/// The floor of the attach figure for any program that connects to QEMU when the device's
/// first uevent comes (as vhotplug must: the QMP socket is shared with the VM's manager and
/// is not held between operations). No daemon runs: at t0 a thread of the benchmark connects,
/// writes `qmp_capabilities` and `device_add usb-host` at once (retrying QEMU's "failed to find
/// host usb device" the way vhotplug does), while the main thread sends the plug's 17 uevents;
/// the figure ends when the observer sees the id. Same testbed, QEMU, observer and cycles as
/// the latency figure.
func floorPhase() async throws {
    let tb = await Testbed.make()
    try tb.add(record: try controllerRecords(0))
    _ = try directSender(tb)
    let qemu = try QEMUInstance(name: "vm1", testbed: tb)
    defer { qemu.stop(); try? FileManager.default.removeItem(atPath: qemu.dir) }
    let poller = try Poller(observerPath: qemu.observerPath, needle: #""vhp-usb-"#)
    defer { poller.stop() }
    _ = try poller.wait(for: 0)
    var floor: [Double] = []
    var retries = 0
    for round in 0..<(opts.warmup + opts.cycles) {
        let plug = try receiverPlug(round: round)
        let bus = controller(round / addressesPerBus).bus
        let devnum = 5 + round % addressesPerBus
        let held = holdListeners(tb)
        try tb.add(record: plug.text)
        releaseListeners(tb, held)
        sleepSeconds(opts.gap)
        let result = ShotResult()
        let path = qemu.qmpPath
        let add = #"{"execute": "device_add", "arguments": {"driver": "usb-host", "id": "\#(plug.id)", "hostbus": \#(bus), "hostaddr": \#(devnum)}, "id": 2}"#
        let adds = try Uevents(tb, plug.paths, "add")
        let t0 = now()
        let thread = Thread {
            var tries = 0
            var delay = 0.005
            do {
                while true {
                    let shot = try QMPShot(path: path)
                    let reply = try shot.send([#"{"execute": "qmp_capabilities", "id": 1}"#, add], replies: 2)
                    if reply.contains("failed to find host usb device") && delay < 1 {
                        tries += 1
                        sleepSeconds(delay)
                        delay *= 2
                        continue
                    }
                    guard reply.contains("\"return\"") else { throw BenchError("device_add: \(reply)") }
                    result.set(.success(tries))
                    return
                }
            } catch let e as BenchError {
                result.set(.failure(e))
            } catch {
                result.set(.failure(BenchError("\(error)")))
            }
        }
        thread.start()
        adds.send()
        let seen = try poller.wait(for: 1)
        retries += try result.wait().get()
        if round >= opts.warmup { floor.append(ms(seen - t0)) }
        sleepSeconds(opts.gap)
        _ = try QMPShot(path: path).send([#"{"execute": "qmp_capabilities"}"#,
                                          #"{"execute": "device_del", "arguments": {"id": "\#(plug.id)"}}"#], replies: 2)
        _ = try poller.wait(for: 0)
        for c in plug.paths.filter({ $0 != plug.devicePath }).sorted(by: { $0.count > $1.count }) { tb.uevent("/sys" + c, "remove") }
        tb.uevent("/sys" + plug.devicePath, "remove")
        tb.remove("/sys" + plug.devicePath)
        sleepSeconds(opts.gap)
    }
    figure("attach floor, no daemon: QMP connect + qmp_capabilities + device_add written at the first add uevent, to the id in qom-list "
           + "(\(opts.cycles) cycles): \(summary(floor)); \"failed to find host usb device\" retries: \(retries)")
}
