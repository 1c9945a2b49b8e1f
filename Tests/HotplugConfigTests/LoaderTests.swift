import CLinux
import JSONKit
import Foundation
import Synchronization
import Testing
@testable import HotplugConfig

@Suite("Loading files")
struct LoaderTests {
    /// A fresh temporary directory, removed by the caller.
    private func temporaryDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory
            .appendingPathComponent("hotplugconfig-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    /// The single diagnostic of loading `path`, which must fail.
    private func loadError(_ path: String) throws -> Diagnostic {
        do {
            let config = try ConfigurationLoader.load(path: path)
            Issue.record("expected \(path) to be rejected, it loaded: \(config.summary)")
            throw CancellationError()
        } catch let error as ConfigurationError {
            try #require(error.diagnostics.count == 1, "\(error.diagnostics)")
            return error.diagnostics[0]
        }
    }

    @Test("a missing file: the message names the file and the errno text")
    func missingFile() throws {
        let d = try loadError("/nonexistent/vhotplug.conf")
        #expect(d.message == #"cannot open configuration file "/nonexistent/vhotplug.conf": No such file or directory (errno 2)"#)
        #expect(d.file == "/nonexistent/vhotplug.conf")
        #expect(d.line == 0 && d.path == "")
        #expect(d.description
            == #"/nonexistent/vhotplug.conf: error: cannot open configuration file "/nonexistent/vhotplug.conf": No such file or directory (errno 2)"#)
    }

    @Test("a directory instead of a file")
    func directory() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let d = try loadError(dir.path)
        #expect(d.message == "cannot read configuration file \"\(dir.path)\": not a regular file (a directory)")
    }

    @Test("a FIFO, or a device, is refused at once: opening a FIFO to read would wait for a writer")
    func notARegularFile() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let fifo = dir.appendingPathComponent("fifo.conf").path
        try #require(mkfifo(fifo, 0o600) == 0)
        // The load runs beside the test. One that waits for a writer is let go at the deadline
        // (a writer comes and goes) and fails the test, rather than hanging it.
        let done = DispatchSemaphore(value: 0)
        let result = Mutex<Diagnostic?>(nil)
        Thread { [self] in
            let d = try? loadError(fifo)
            result.withLock { $0 = d }
            done.signal()
        }.start()
        if done.wait(timeout: .now() + 20) == .timedOut {
            Issue.record("the load of a FIFO waited for a writer")
            // A writer's open, past umockdev's preload (which holds a lock while the load's open()
            // waits, and would make this one wait for it).
            let fd = vh_open_direct(fifo, O_WRONLY | O_NONBLOCK)
            if fd >= 0 { close(fd) }
            done.wait()
        }
        let d = try #require(result.withLock { $0 })
        #expect(d.message == "cannot read configuration file \"\(fifo)\": not a regular file (a FIFO)")
        #expect(d.description == "\(fifo): error: cannot read configuration file \"\(fifo)\": not a regular file (a FIFO)")
        #expect(try loadError("/dev/null").message == "cannot read configuration file \"/dev/null\": not a regular file (a character device)")
    }

    @Test("a file that is not UTF-8: points at the first bad byte")
    func notUTF8() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("latin1.conf")
        // "café" in Latin-1, on line 2.
        try Data(Array(#"{\#n  "vms": [{"name": "caf"#.utf8) + [0xE9] + Array(#""}]}"#.utf8)).write(to: file)
        let d = try loadError(file.path)
        #expect(d.message == "the file is not valid UTF-8: invalid byte 0xe9; configuration files must be UTF-8 text")
        #expect(d.position == "2:24")
        #expect(d.file == file.path)
        #expect(d.path == "")
    }

    @Test("bytes that are not UTF-8: truncated, overlong and surrogate sequences")
    func invalidUTF8Sequences() throws {
        let cases: [([UInt8], String)] = [
            (Array("{}".utf8) + [0xC3], "1:3"),                // truncated two-byte sequence at the end
            (Array("{\"é\": ".utf8) + [0xC0, 0x80] + Array("}".utf8), "1:7"), // overlong NUL, after a 2-byte scalar
            ([0xED, 0xA0, 0x80], "1:1"),                        // an encoded surrogate
            (Array("{\n\n".utf8) + [0xFF], "3:1"),
            (Array("{\r\r\n".utf8) + [0xFF], "3:1"),             // a bare CR and a CRLF: two line breaks
            (Array("{\u{2028}é".utf8) + [0xFF], "2:2"),
        ]
        for (bytes, position) in cases {
            do {
                _ = try ConfigurationLoader.parse(bytes: bytes, file: "x.conf")
                Issue.record("expected \(bytes) to be rejected")
            } catch let error as ConfigurationError {
                #expect(error.diagnostics.count == 1)
                #expect(error.diagnostics.first?.position == position, "\(bytes)")
                #expect(error.diagnostics.first?.message.hasPrefix("the file is not valid UTF-8") == true)
            }
        }
    }

    @Test("a valid file with a byte order mark loads")
    func fileWithByteOrderMark() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("bom.conf")
        try Data([0xEF, 0xBB, 0xBF] + Array(#"{"vms": [{"name": "a", "type": "qemu", "socket": "/s"}]}"#.utf8)).write(to: file)
        let config = try ConfigurationLoader.load(path: file.path)
        #expect(config.vms.first?.location == .init(line: 1, column: 10, path: "$.vms[0]"))
    }

    @Test("diagnostics of a loaded file name the file")
    func diagnosticsNameTheFile() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("bad.conf")
        try Data("{\n  \"vms\": 1\n}\n".utf8).write(to: file)
        let d = try loadError(file.path)
        #expect(d.description == "\(file.path):2:10: error: expected an array, found number 1 (at $.vms)")
    }

    @Test("a file larger than the limit is refused")
    func tooLarge() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("huge.conf")
        try Data(repeating: 0x20, count: ConfigurationLoader.maximumFileSize + 1).write(to: file)
        let d = try loadError(file.path)
        #expect(d.message == "configuration file \"\(file.path)\" is too large (more than 16 MiB)")
    }

    @Test("parse(bytes:) accepts valid UTF-8")
    func parseBytes() throws {
        let config = try ConfigurationLoader.parse(bytes: Array(#"{"vms": [{"name": "é", "type": "qemu", "socket": "/s"}]}"#.utf8))
        #expect(config.vms.first?.name == "é")
    }
}
