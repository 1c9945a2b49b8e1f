import JSONKit

/// One problem found in a configuration file, with where it is.
///
/// Rendered (``description``) as `FILE:LINE:COL: error: MESSAGE (at JSONPATH)`.
/// The ` (at …)` part is left out when ``path`` is empty (syntax errors), and
/// `LINE:COL:` is left out when ``line`` is 0 (problems with the file as a
/// whole, such as a file that cannot be read).
public struct Diagnostic: Sendable, Hashable, CustomStringConvertible {
    /// The file name as given to the loader (`<config>` for text parsed from memory).
    public var file: String
    /// 1-based line; 0 when the problem concerns the whole file.
    public var line: Int
    /// 1-based column, counted in Unicode scalars; 0 when the problem concerns the whole file.
    public var column: Int
    /// JSON path of the offending value, such as `$.usbPassthrough[0].allow[1].vendorId`;
    /// empty for syntax errors and file-level errors.
    public var path: String
    /// What is wrong and, where it helps, what was expected.
    public var message: String

    /// Creates a diagnostic.
    public init(file: String, line: Int, column: Int, path: String, message: String) {
        self.file = file
        self.line = line
        self.column = column
        self.path = path
        self.message = message
    }

    /// `FILE:LINE:COL: error: MESSAGE (at JSONPATH)`.
    public var description: String {
        var text = line > 0 ? "\(file):\(line):\(column): error: \(message)" : "\(file): error: \(message)"
        if !path.isEmpty { text += " (at \(path))" }
        return text
    }
}

/// The error every ``ConfigurationLoader`` entry point throws: the problems found in one
/// configuration, in file order; past ``ConfigurationLoader/maximumReportedErrors``, only counted.
public struct ConfigurationError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The problems reported, sorted by line and column; never empty when thrown.
    public var diagnostics: [Diagnostic]
    /// How many more problems were found after those (not reported).
    public var omitted: Int

    /// Creates an error from its diagnostics.
    public init(diagnostics: [Diagnostic], omitted: Int = 0) {
        self.diagnostics = diagnostics
        self.omitted = omitted
    }

    /// Every problem found: those reported and those omitted.
    public var count: Int { diagnostics.count + omitted }

    /// One diagnostic per line; then, when some were left out, `FILE: N more errors not shown`.
    public var description: String {
        var lines = diagnostics.map(\.description)
        if omitted > 0 {
            lines.append("\(diagnostics.first?.file ?? "<config>"): \(omitted) more error\(omitted == 1 ? "" : "s") not shown")
        }
        return lines.joined(separator: "\n")
    }
}
