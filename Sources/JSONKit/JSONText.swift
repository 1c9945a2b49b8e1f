/// A JSON value with ordered object keys, for output people and tools read
/// (`inspect --json`, the control API). Writing only; parsing lives with the configuration.
public indirect enum JSONText: Sendable, Hashable {
    case null
    case bool(Bool)
    case int(Int)
    case string(String)
    case array([JSONText])
    case object([(String, JSONText)])

    public static func == (a: JSONText, b: JSONText) -> Bool { a.rendered() == b.rendered() }
    public func hash(into h: inout Hasher) { h.combine(rendered()) }

    /// `.string` or `.null`.
    public static func optional(_ s: String?) -> JSONText { s.map(JSONText.string) ?? .null }
    public static func optional(_ n: Int?) -> JSONText { n.map(JSONText.int) ?? .null }

    /// How a document is written.
    public enum Style: Sendable {
        /// One line, no spaces (QMP, the state file's values).
        case compact
        /// Indented by two spaces (files people read, `--json`).
        case pretty
        /// One line as Python's `json.dumps` writes it by default: `", "` and `": "` between
        /// items, every non-ASCII character as `\uXXXX`. The reference vhotplug's control API
        /// writes so, and scripts that read it with grep or sed expect exactly that text.
        case python
    }

    /// Compact JSON (one line), or indented by two spaces when `pretty`.
    public func rendered(pretty: Bool = false) -> String {
        rendered(pretty ? .pretty : .compact)
    }

    public func rendered(_ style: Style) -> String {
        String(decoding: renderedBytes(style), as: UTF8.self)
    }

    /// `rendered` as UTF-8 bytes (what goes on a socket), written without building a String.
    public func renderedBytes(pretty: Bool = false) -> [UInt8] {
        renderedBytes(pretty ? .pretty : .compact)
    }

    public func renderedBytes(_ style: Style) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(256) // most documents are one short line: no regrowing on the way
        write(to: &out, style: style, indent: 0)
        return out
    }

    /// Appends the compact rendering to `out` (a document built around it, as a QMP request
    /// line around its arguments, without wrapping them in another value first).
    public func append(to out: inout [UInt8]) {
        write(to: &out, style: .compact, indent: 0)
    }

    /// Appends `s` as a JSON string (quoted and escaped).
    public static func appendString(_ s: String, to out: inout [UInt8]) {
        escape(s, into: &out)
    }

    private func write(to out: inout [UInt8], style: Style, indent: Int) {
        let pretty = style == .pretty
        switch self {
        case .null: out.append(contentsOf: "null".utf8)
        case .bool(let b): out.append(contentsOf: (b ? "true" : "false").utf8)
        case .int(let n): out.append(contentsOf: String(n).utf8)
        case .string(let s): Self.escape(s, into: &out, asciiOnly: style == .python)
        case .array(let items):
            if items.isEmpty { out.append(contentsOf: "[]".utf8); return }
            out.append(UInt8(ascii: "["))
            for (k, item) in items.enumerated() {
                if k > 0 { Self.separator(&out, style) }
                if pretty { Self.newline(&out, indent + 1) }
                item.write(to: &out, style: style, indent: indent + 1)
            }
            if pretty { Self.newline(&out, indent) }
            out.append(UInt8(ascii: "]"))
        case .object(let members):
            if members.isEmpty { out.append(contentsOf: "{}".utf8); return }
            out.append(UInt8(ascii: "{"))
            for (k, (key, value)) in members.enumerated() {
                if k > 0 { Self.separator(&out, style) }
                if pretty { Self.newline(&out, indent + 1) }
                Self.escape(key, into: &out, asciiOnly: style == .python)
                out.append(UInt8(ascii: ":"))
                if style != .compact { out.append(UInt8(ascii: " ")) }
                value.write(to: &out, style: style, indent: indent + 1)
            }
            if pretty { Self.newline(&out, indent) }
            out.append(UInt8(ascii: "}"))
        }
    }

    /// Between two items: a comma, and a space in Python's style.
    private static func separator(_ out: inout [UInt8], _ style: Style) {
        out.append(UInt8(ascii: ","))
        if style == .python { out.append(UInt8(ascii: " ")) }
    }

    private static func newline(_ out: inout [UInt8], _ indent: Int) {
        out.append(0x0A)
        out.append(contentsOf: repeatElement(UInt8(ascii: " "), count: 2 * indent))
    }

    /// `asciiOnly`: every non-ASCII scalar as `\uXXXX` (a surrogate pair above U+FFFF), as
    /// Python's `json.dumps` writes them.
    static func escape(_ s: String, into out: inout [UInt8], asciiOnly: Bool = false) {
        out.append(UInt8(ascii: "\""))
        if isPlainText(s) {
            out.append(contentsOf: s.utf8)
        } else {
            for scalar in s.unicodeScalars {
                if asciiOnly && (scalar == "\u{8}" || scalar == "\u{C}") {
                    out.append(contentsOf: (scalar == "\u{8}" ? "\\b" : "\\f").utf8) // as Python writes them
                } else if let e = jsonEscape(scalar) {
                    out.append(contentsOf: (asciiOnly ? e.lowercased() : e).utf8)
                } else if asciiOnly && !scalar.isASCII {
                    for unit in UTF16.encode(scalar)! { out.append(contentsOf: ("\\u" + hex(UInt32(unit), width: 4).lowercased()).utf8) }
                } else {
                    out.append(contentsOf: UTF8.encode(scalar)!)
                }
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}


/// Printable ASCII without quotes or backslashes (ids, paths, most names): nothing to escape,
/// so it goes in whole.
func isPlainText(_ s: String) -> Bool {
    // Over the contiguous bytes (a native string always has them): an iterator over the
    // UTF-8 view costs tens of instructions a byte, and every QMP line and log name comes here.
    s.utf8.withContiguousStorageIfAvailable { bytes in
        for b in bytes where !isPlainTextByte(b) { return false }
        return true
    } ?? s.utf8.allSatisfy(isPlainTextByte)
}

/// A byte of plain text (`isPlainText`): printable ASCII, neither a quote nor a backslash;
/// a JSON string of such bytes reads as it is written.
@inlinable
public func isPlainTextByte(_ b: UInt8) -> Bool {
    b >= 0x20 && b < 0x7F && b != UInt8(ascii: "\"") && b != UInt8(ascii: "\\")
}

/// Text a peer sent (a QMP line) for a debug log: as it is, but for control characters (C0,
/// DEL, C1, the line and paragraph separators), written as their JSON escapes. A line that is
/// not JSON cannot put raw bytes into the log: a terminal's escape sequences, a forged line.
public func loggableLine(_ bytes: some Collection<UInt8>) -> String {
    let text = String(decoding: bytes, as: UTF8.self)
    guard text.utf8.contains(where: { $0 < 0x20 || $0 >= 0x7F }) else { return text }
    var out = ""
    for scalar in text.unicodeScalars {
        if scalar == "\"" || scalar == "\\" { out.unicodeScalars.append(scalar) } else { appendEscaped(scalar, to: &out) }
    }
    return out
}

/// Appends one scalar as a JSON string holds it (see `jsonEscape`).
func appendEscaped(_ scalar: Unicode.Scalar, to out: inout String) {
    if let e = jsonEscape(scalar) {
        out += e
    } else {
        out.unicodeScalars.append(scalar)
    }
}

/// The escape sequence JSON text holds for a scalar, nil when it goes in as it is:
/// quotes, backslashes and control characters (C0, DEL, C1, the line and paragraph
/// separators) are escaped, so that device-supplied text stays on one line and
/// cannot steer a terminal.
func jsonEscape(_ scalar: Unicode.Scalar) -> String? {
    switch scalar {
    case "\"": return "\\\""
    case "\\": return "\\\\"
    case "\n": return "\\n"
    case "\r": return "\\r"
    case "\t": return "\\t"
    default:
        let v = scalar.value
        if v < 0x20 || v == 0x7F || (0x80..<0xA0).contains(v) || v == 0x2028 || v == 0x2029 {
            return "\\u" + hex(v, width: 4)
        }
        return nil
    }
}
