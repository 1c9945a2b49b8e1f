import JSONKit
#if canImport(Glibc)
import Glibc
#endif

/// Reads, parses and validates vhotplug configuration files.
///
/// The format is JSON with a few JSON5 conveniences (comments, trailing commas,
/// single-quoted strings, unquoted keys). Every problem found is reported at
/// once, each with its line, column and JSON path, in a thrown
/// ``ConfigurationError``.
public enum ConfigurationLoader {
    /// Configuration files larger than this are refused (16 MiB).
    public static let maximumFileSize = 16 << 20

    /// At most this many errors are reported, the first in the file; the others are counted
    /// (``ConfigurationError/omitted``).
    public static let maximumReportedErrors = 100

    /// Loads the configuration file at `path`.
    ///
    /// - Throws: ``ConfigurationError`` when the file cannot be read, is not
    ///   UTF-8, is not valid JSON5, or does not describe a valid configuration.
    public static func load(path: String) throws -> Configuration {
        let bytes = try readFile(path)
        return try parse(bytes: bytes, file: path)
    }

    /// Parses and validates configuration text; `file` names it in diagnostics.
    ///
    /// - Throws: ``ConfigurationError`` listing every problem found.
    public static func parse(_ text: String, file: String = "<config>") throws -> Configuration {
        try parse(validUTF8: Array(text.utf8), file: file)
    }

    /// Parses configuration bytes, which must be UTF-8 (an initial byte order mark is allowed).
    ///
    /// - Throws: ``ConfigurationError``; for bytes that are not UTF-8 it points at the first bad byte.
    public static func parse(bytes: [UInt8], file: String = "<config>") throws -> Configuration {
        if let offset = firstInvalidUTF8Offset(bytes) {
            let (line, column) = TextPosition.of(offset: offset, in: bytes)
            throw ConfigurationError(diagnostics: [Diagnostic(
                file: file, line: line, column: column, path: "",
                message: "the file is not valid UTF-8: invalid byte 0x\(hex(UInt32(bytes[offset]), width: 2).lowercased()); configuration files must be UTF-8 text")])
        }
        return try parse(validUTF8: bytes, file: file)
    }

    // MARK: - Implementation

    private static func parse(validUTF8 bytes: [UInt8], file: String) throws(ConfigurationError) -> Configuration {
        var parser = JSONParser(bytes: bytes)
        let root: JSONNode
        do {
            root = try parser.parseDocument()
        } catch {
            throw ConfigurationError(diagnostics: [Diagnostic(
                file: file, line: error.line, column: error.column, path: "", message: error.message)])
        }
        var validator = ConfigValidator(file: file)
        for issue in parser.issues {
            validator.error(line: issue.line, column: issue.column, path: issue.path, issue.message)
        }
        let configuration = validator.configuration(root)
        guard validator.diagnostics.isEmpty, let configuration else {
            let reported = validator.reported(limit: maximumReportedErrors)
            throw ConfigurationError(diagnostics: reported.isEmpty
                ? [Diagnostic(file: file, line: root.line, column: root.column, path: "$", message: "invalid configuration")]
                : reported, omitted: validator.diagnostics.count - reported.count)
        }
        return configuration
    }

    private static func readFile(_ path: String) throws(ConfigurationError) -> [UInt8] {
        func failure(_ message: String) -> ConfigurationError {
            ConfigurationError(diagnostics: [Diagnostic(file: path, line: 0, column: 0, path: "", message: message)])
        }
        func errnoText(_ code: Int32) -> String {
            "\(String(cString: strerror(code))) (errno \(code))"
        }
        // Without waiting: opening a FIFO to read waits for a writer (a daemon's reload
        // would hold its event loop). What is not a regular file is refused before any read.
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        if fd < 0 {
            let code = errno
            throw failure("cannot open configuration file \(quoted(path, limit: 200)): \(errnoText(code))")
        }
        defer { close(fd) }
        var info = stat()
        if fstat(fd, &info) != 0 {
            let code = errno
            throw failure("cannot read configuration file \(quoted(path, limit: 200)): \(errnoText(code))")
        }
        if info.st_mode & S_IFMT != S_IFREG {
            throw failure("cannot read configuration file \(quoted(path, limit: 200)): not a regular file (\(fileKind(info.st_mode)))")
        }
        // A regular file's reads ignore O_NONBLOCK: it is read as it is.
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                let code = errno
                if code == EINTR { continue }
                throw failure("cannot read configuration file \(quoted(path, limit: 200)): \(errnoText(code))")
            }
            if count == 0 { break }
            result.append(contentsOf: chunk[0..<count])
            if result.count > maximumFileSize {
                throw failure("configuration file \(quoted(path, limit: 200)) is too large (more than \(maximumFileSize >> 20) MiB)")
            }
        }
        return result
    }

    /// What a file that is not a regular file is, for messages: `a FIFO`, `a directory`.
    static func fileKind(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFDIR: "a directory"
        case S_IFIFO: "a FIFO"
        case S_IFCHR: "a character device"
        case S_IFBLK: "a block device"
        case S_IFSOCK: "a socket"
        default: "file type 0o\(String(mode & S_IFMT, radix: 8))"
        }
    }

    /// The offset of the first byte that does not belong to valid UTF-8, or nil.
    static func firstInvalidUTF8Offset(_ bytes: [UInt8]) -> Int? {
        var iterator = bytes.makeIterator()
        var decoder = UTF8()
        var offset = 0
        while true {
            switch decoder.decode(&iterator) {
            case .scalarValue(let scalar):
                offset += UTF8.width(scalar)
            case .emptyInput:
                return nil
            case .error:
                return min(offset, max(0, bytes.count - 1))
            }
        }
    }
}
