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
    /// When each line arrived (the greeting, then the replies).
    private(set) var lineTimes: [UInt64] = []

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
                lineTimes.append(now())
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
    private var value: Result<(Int, UInt64, UInt64), BenchError>?

    func set(_ v: Result<(Int, UInt64, UInt64), BenchError>) { cond.lock(); value = v; cond.broadcast(); cond.unlock() }

    func wait() -> Result<(Int, UInt64, UInt64), BenchError> {
        cond.lock()
        defer { cond.unlock() }
        while value == nil { cond.wait() }
        return value!
    }
}

/// The floor of the attach figure for any program that connects to QEMU when the device's
/// first uevent comes (as vhotplug must: the QMP socket is shared with the VM's manager and
/// is not held between operations). No daemon runs: at t0 a thread of the benchmark connects,
/// writes vhotplug's own `qmp_capabilities` and `device_add usb-host` lines at once (QEMU
/// reads QMP a byte at a time, so the bytes matter; "failed to find host usb device" retried
/// the way vhotplug does), while the main thread sends the plug's 17 uevents; the figure ends
/// when the observer sees the id. Same testbed, QEMU, observer and cycles as the latency figure.
///
/// Then the calibration FACTS.md gives for this kind of machine (2.81 ms there): the same
/// connection and lines into an idle QEMU, the plug's uevents sent 50 ms before t0.
func floorPhase() async throws {
    let tb = await Testbed.make()
    try tb.add(record: try controllerRecords(0))
    _ = try directSender(tb)
    let qemu = try QEMUInstance(name: "vm1", testbed: tb)
    defer { qemu.stop(); try? FileManager.default.removeItem(atPath: qemu.dir) }
    let poller = try Poller(observerPath: qemu.observerPath, needle: #""vhp-usb-"#)
    defer { poller.stop() }
    _ = try poller.wait(for: 0)
    var round = 0
    for bare in [false, true] {
        var seenAt: [Double] = [], greeting: [Double] = [], reply: [Double] = []
        var retries = 0
        for k in 0..<(opts.warmup + opts.cycles) {
            let r = try floorRound(tb, qemu, poller, round: round, bare: bare)
            round += 1
            retries += r.retries
            if k >= opts.warmup {
                seenAt.append(r.seen)
                greeting.append(r.greeting)
                reply.append(r.reply)
            }
        }
        if bare { measured.bare = seenAt } else { measured.floor = seenAt }
        let what = bare ? "bare QMP into an idle QEMU (uevents 50 ms before; FACTS.md measured 2.81 ms on its machine): connect + "
                        : "attach floor, no daemon: QMP connect + "
        figure(what + "vhotplug's qmp_capabilities + device_add lines written at \(bare ? "t0" : "the first add uevent"), to the id in qom-list "
               + "(\(opts.cycles) cycles): \(summary(seenAt)); \"failed to find host usb device\" retries: \(retries)")
        note("greeting read \(summary(greeting)); device_add reply read \(summary(reply))")
    }
}

/// One plug, the benchmark's own QMP connection adding the device, then its removal.
private func floorRound(_ tb: Testbed, _ qemu: QEMUInstance, _ poller: Poller, round: Int, bare: Bool) throws
    -> (seen: Double, greeting: Double, reply: Double, retries: Int) {
    let plug = try receiverPlug(round: round)
    let bus = controller(round / addressesPerBus).bus
    let devnum = 5 + round % addressesPerBus
    let held = tb.holdListeners()
    try tb.add(record: plug.text)
    tb.releaseListeners(held)
    sleepSeconds(opts.gap)
    let path = qemu.qmpPath
    // vhotplug's own lines (QMPClient.request), byte for byte.
    let lines = [#"{"execute":"qmp_capabilities","id":1}"#,
                 #"{"execute":"device_add","arguments":{"driver":"usb-host","id":"\#(plug.id)","hostbus":\#(bus),"hostaddr":\#(devnum)},"id":2}"#]
    let adds = try Uevents(tb, plug.paths, "add")
    if bare {
        adds.send()
        sleepSeconds(0.05)
    }
    let result = ShotResult()
    let t0 = now()
    let thread = Thread {
        var tries = 0
        var delay = 0.005
        do {
            while true {
                let shot = try QMPShot(path: path)
                let reply = try shot.send(lines, replies: 2)
                if reply.contains("failed to find host usb device") && delay < 1 {
                    tries += 1
                    sleepSeconds(delay)
                    delay *= 2
                    continue
                }
                guard reply.contains("\"return\"") else { throw BenchError("device_add: \(reply)") }
                let times = shot.lineTimes
                result.set(.success((tries, times.first ?? t0, times.last ?? t0)))
                return
            }
        } catch let e as BenchError {
            result.set(.failure(e))
        } catch {
            result.set(.failure(BenchError("\(error)")))
        }
    }
    thread.start()
    if !bare { adds.send() }
    let seen = try poller.wait(for: 1)
    let (tries, greeted, replied) = try result.wait().get()
    sleepSeconds(opts.gap)
    _ = try QMPShot(path: path).send([#"{"execute":"qmp_capabilities"}"#,
                                      #"{"execute":"device_del","arguments":{"id":"\#(plug.id)"}}"#], replies: 2)
    _ = try poller.wait(for: 0)
    for c in plug.paths.filter({ $0 != plug.devicePath }).sorted(by: { $0.count > $1.count }) { tb.uevent("/sys" + c, "remove") }
    tb.uevent("/sys" + plug.devicePath, "remove")
    tb.remove("/sys" + plug.devicePath)
    sleepSeconds(opts.gap)
    return (ms(seen - t0), ms(greeted - t0), ms(replied - t0), tries)
}
