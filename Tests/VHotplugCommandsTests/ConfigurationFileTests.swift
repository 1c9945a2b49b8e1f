import Foundation
import Testing
import VHotplugTestSupport

/// A configuration path that names a FIFO: opening it to read would wait for a writer.
@Suite("A configuration file that is not a regular file")
struct ConfigurationFileTests {
    /// A folder with a FIFO in it; the caller removes the folder.
    func fifo() throws -> (dir: String, path: String) {
        let dir = scratchPath("fifo")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = dir + "/vhotplug.conf"
        try #require(mkfifo(path, 0o600) == 0)
        return (dir, path)
    }

    @Test("check -c FIFO: refused at once, exit 2 (a check that waits is killed after 10 s)")
    func check() throws {
        let (dir, path) = try fifo()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try run(["/usr/bin/timeout", "-s", "KILL", "10", Repository.vhotplug, "check", "-c", path])
        #expect(r.status == 2, "\(r.stderr)")
        #expect(r.stderr.contains("\(path): error: cannot read configuration file \"\(path)\": not a regular file (a FIFO)"), "\(r.stderr)")
    }

    @Test("SIGHUP after the configuration was replaced by a FIFO: the reload is rejected, the old configuration stays, the event loop goes on")
    func reload() throws {
        let (dir, fifoPath) = try fifo()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let config = dir + "/real.conf"
        try #"{"vms": [{"name": "vm1", "type": "qemu", "socket": "\#(dir)/vm1.qmp"}]}"#.write(toFile: config, atomically: true, encoding: .utf8)
        let link = dir + "/link.conf"
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: config)
        let d = try DaemonProcess(arguments: ["-c", link])
        try d.waitFor("; listening (")
        // The configuration is now the FIFO.
        unlink(link)
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: fifoPath)
        var mark = d.mark
        d.signal(SIGHUP)
        // The reason is on the line after the rejection's; the test's reader may get it in a later read.
        let rejected = try d.waitFor("reload rejected, the previous configuration stays in force", from: mark, timeout: 10)
        try d.waitFor("not a regular file (a FIFO)", from: rejected, timeout: 10)
        // Still serving its loop: a reload of the real file goes through, SIGTERM ends it.
        unlink(link)
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: config)
        mark = d.mark
        d.signal(SIGHUP)
        try d.waitFor("configuration reloaded", from: mark, timeout: 10)
        #expect(d.stop() == 0)
    }
}
