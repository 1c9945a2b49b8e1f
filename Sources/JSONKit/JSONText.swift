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

    /// Compact JSON (one line), or indented by two spaces when `pretty`.
    public func rendered(pretty: Bool = false) -> String {
        var out = ""
        out.reserveCapacity(256) // most documents are one short line: no regrowing on the way
        write(to: &out, pretty: pretty, indent: 0)
        return out
    }

    private func write(to out: inout String, pretty: Bool, indent: Int) {
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let n): out += String(n)
        case .string(let s): Self.escape(s, into: &out)
        case .array(let items):
            if items.isEmpty { out += "[]"; return }
            out += "["
            for (k, item) in items.enumerated() {
                if k > 0 { out += "," }
                if pretty { out += "\n" + String(repeating: "  ", count: indent + 1) }
                item.write(to: &out, pretty: pretty, indent: indent + 1)
            }
            if pretty { out += "\n" + String(repeating: "  ", count: indent) }
            out += "]"
        case .object(let members):
            if members.isEmpty { out += "{}"; return }
            out += "{"
            for (k, (key, value)) in members.enumerated() {
                if k > 0 { out += "," }
                if pretty { out += "\n" + String(repeating: "  ", count: indent + 1) }
                Self.escape(key, into: &out)
                out += pretty ? ": " : ":"
                value.write(to: &out, pretty: pretty, indent: indent + 1)
            }
            if pretty { out += "\n" + String(repeating: "  ", count: indent) }
            out += "}"
        }
    }

    static func escape(_ s: String, into out: inout String) {
        out += "\""
        if isPlainText(s) {
            out += s
        } else {
            for scalar in s.unicodeScalars { appendEscaped(scalar, to: &out) }
        }
        out += "\""
    }
}


/// Printable ASCII without quotes or backslashes (ids, paths, most names): nothing to escape,
/// so it goes in whole.
func isPlainText(_ s: String) -> Bool {
    s.utf8.allSatisfy { $0 >= 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "\"") && $0 != UInt8(ascii: "\\") }
}

/// Appends one scalar as a JSON string holds it: quotes, backslashes and
/// control characters (C0, DEL, C1, the line and paragraph separators) escaped,
/// so that device-supplied text stays on one line and cannot steer a terminal.
func appendEscaped(_ scalar: Unicode.Scalar, to out: inout String) {
    switch scalar {
    case "\"": out += "\\\""
    case "\\": out += "\\\\"
    case "\n": out += "\\n"
    case "\r": out += "\\r"
    case "\t": out += "\\t"
    default:
        let v = scalar.value
        if v < 0x20 || v == 0x7F || (0x80..<0xA0).contains(v) || v == 0x2028 || v == 0x2029 {
            out += "\\u" + hex(v, width: 4)
        } else {
            out.unicodeScalars.append(scalar)
        }
    }
}
