import Foundation
import Testing
import VHotplugTestSupport

@Suite("Running as a systemd service")
struct ServiceTests {
    /// A datagram socket standing for systemd's notification socket.
    func notifySocket() throws -> (fd: Int32, path: String) {
        let path = scratchPath("notify")
        let fd = try unixSocket(.datagram, boundAt: path)
        var tv = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        return (fd, path)
    }

    @Test("READY=1 reaches $NOTIFY_SOCKET after the first pass; with JOURNAL_STREAM, log lines have priorities and no timestamps")
    func notify() throws {
        let (fd, path) = try notifySocket()
        defer { close(fd); unlink(path) }
        let dir = scratchPath("svc")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let config = dir + "/vhotplug.conf"
        try #"{"vms": [{"name": "vm1", "type": "qemu", "socket": "\#(dir)/vm1.qmp"}]}"#.write(toFile: config, atomically: true, encoding: .utf8)
        let d = try DaemonProcess(arguments: ["-c", config], environment: ["NOTIFY_SOCKET": path, "JOURNAL_STREAM": "8:1234"])
        var buf = [UInt8](repeating: 0, count: 256)
        let n = recv(fd, &buf, buf.count, 0)
        #expect(n > 0 && String(decoding: buf[0..<max(n, 0)], as: UTF8.self) == "READY=1")
        let i = try d.waitFor("vhotplug ok: ")
        #expect(d.log[i].hasPrefix("<6>vhotplug ok: "))
        #expect(d.log.allSatisfy { $0.hasPrefix("<") })   // no timestamps: every line starts with its priority
        #expect(d.stop() == 0)
    }
}
