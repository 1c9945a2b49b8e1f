import Logging
import Synchronization

/// Log lines kept for a test to read ("LEVEL message").
public final class CapturedLog: Sendable {
    public let lines = Mutex<[String]>([])
    public var all: [String] { lines.withLock { $0 } }

    public init() {}

    public func logger() -> Logger {
        Logger(label: "test") { _ in CaptureHandler(sink: self) }
    }
}

/// Sends every message, at every level, to a `CapturedLog`.
public struct CaptureHandler: LogHandler {
    let sink: CapturedLog
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .trace

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String,
                    file: String, function: String, line: UInt) {
        sink.lines.withLock { $0.append("\(level) \(message)") }
    }
}
