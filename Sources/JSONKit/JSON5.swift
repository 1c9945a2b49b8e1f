// A small JSON5-subset parser that keeps the position of every value.
//
// Accepted: objects, arrays, double- and single-quoted strings (JSON escapes,
// \uXXXX with surrogate pairs, plus \' \v \0 and escaped line breaks),
// decimal numbers, true/false/null, unquoted identifier keys, `//` and `/* */`
// comments, trailing commas. Not accepted (clear error instead): hexadecimal
// numbers, NaN/Infinity, leading '+' or '.', leading zeros.
//
// The parser works on UTF-8 bytes and never traps on input: no force
// unwraps, no unchecked arithmetic, nesting limited to `maxDepth`.

/// A parsed value with the 1-based line and column where it starts.
public struct JSONNode: Sendable {
    public enum Value: Sendable {
        case object(JSONObject)
        case array([JSONNode])
        case string(String)
        case number(JSONNumber)
        case bool(Bool)
        case null
    }

    public var value: Value
    public var line: Int
    public var column: Int

    /// A value made rather than read (line and column 1).
    public init(value: Value, line: Int = 1, column: Int = 1) {
        self.value = value
        self.line = line
        self.column = column
    }

    /// `object`, `array`, `string`, ... as used in "found ..." messages, with the
    /// value itself for scalars.
    public var foundDescription: String {
        switch value {
        case .object: return "object"
        case .array: return "array"
        case .string(let s): return "string \(quoted(s))"
        case .number(let n): return "number \(truncated(n.text))"
        case .bool(let b): return "boolean \(b)"
        case .null: return "null"
        }
    }

    public var isNull: Bool {
        if case .null = value { return true }
        return false
    }
}

/// One `key: value` pair, with the position of the key.
public struct JSONMember: Sendable {
    public var key: String
    public var keyLine: Int
    public var keyColumn: Int
    public var value: JSONNode

    public init(key: String, keyLine: Int = 1, keyColumn: Int = 1, value: JSONNode) {
        self.key = key
        self.keyLine = keyLine
        self.keyColumn = keyColumn
        self.value = value
    }
}

/// An object's members in file order; keys are unique (a duplicate is reported
/// and only the first occurrence kept).
public struct JSONObject: Sendable {
    public var members: [JSONMember] = []

    public init(members: [JSONMember] = []) { self.members = members }

    public func member(_ key: String) -> JSONMember? { members.first { $0.key == key } }
}

/// A number as written, and its integer value when it has one.
public struct JSONNumber: Sendable {
    /// The source text, such as `-12`, `3.5` or `1e3`.
    public var text: String
    /// True when written without fraction or exponent.
    public var isIntegerLiteral: Bool
    /// The value when `isIntegerLiteral` and it fits in an `Int`; nil otherwise.
    public var integer: Int?
}

/// A fatal syntax error.
public struct JSONSyntaxError: Error, Sendable {
    public var line: Int
    public var column: Int
    public var message: String
}

/// A non-fatal problem found while parsing (duplicate keys).
public struct JSONParseIssue: Sendable {
    public var line: Int
    public var column: Int
    public var path: String
    public var message: String
}

/// Parses one JSON5-subset document.
public struct JSONParser {
    public static let maxDepth = 64

    private let bytes: [UInt8]
    private var index = 0
    private var line = 1
    private var column = 1
    private var depth = 0
    private var path: [JSONPathComponent] = []
    /// Duplicate keys found; parsing goes on past them.
    public private(set) var issues: [JSONParseIssue] = []

    public init(bytes: [UInt8]) {
        self.bytes = bytes
        // An initial byte order mark is not part of the text: columns start after it.
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { index = 3 }
    }

    /// Parses the whole input as one value followed by nothing but whitespace and comments.
    public mutating func parseDocument() throws(JSONSyntaxError) -> JSONNode {
        try skipWhitespaceAndComments()
        if peek() == nil {
            throw JSONSyntaxError(line: line, column: column,
                                  message: "the configuration is empty; expected an object")
        }
        let value = try parseValue()
        try skipWhitespaceAndComments()
        if peek() != nil {
            throw fail("unexpected \(describeCurrent()) after the top-level value; expected end of input")
        }
        return value
    }

    // MARK: - Bytes and positions

    private func peek(_ offset: Int = 0) -> UInt8? {
        let (i, overflow) = index.addingReportingOverflow(offset)
        guard !overflow, i >= 0, i < bytes.count else { return nil }
        return bytes[i]
    }

    private mutating func advance() {
        guard index < bytes.count else { return }
        TextPosition.move(&line, &column, past: index, in: bytes)
        index += 1
    }

    /// True at a JSON5 line terminator (LF, CR, U+2028, U+2029): where a `//` comment ends.
    private func atLineTerminator() -> Bool {
        guard let b = peek() else { return false }
        return b == 0x0A || b == 0x0D || (b == 0xE2 && peek(1) == 0x80 && (peek(2) == 0xA8 || peek(2) == 0xA9))
    }

    private func fail(_ message: String) -> JSONSyntaxError {
        JSONSyntaxError(line: line, column: column, message: message)
    }

    /// The character at the current position, for messages: `'}'`, `end of input`, `character U+00E9 'é'`.
    private func describeCurrent() -> String {
        guard let b = peek() else { return "end of input" }
        if b >= 0x21 && b < 0x7F {
            return b == UInt8(ascii: "'") ? "\"'\"" : "'\(Character(Unicode.Scalar(b)))'"
        }
        if b < 0x80 {
            return "character U+\(hex(UInt32(b), width: 4))"
        }
        // A multi-byte scalar (input is valid UTF-8 when it comes from a String).
        let length: Int
        switch b {
        case 0xC0..<0xE0: length = 2
        case 0xE0..<0xF0: length = 3
        default: length = 4
        }
        let end = min(bytes.count, index + length)
        let text = String(decoding: bytes[index..<end], as: UTF8.self)
        if let scalar = text.unicodeScalars.first {
            return "character U+\(hex(scalar.value, width: 4)) '\(text)'"
        }
        return "byte 0x\(hex(UInt32(b), width: 2))"
    }

    // MARK: - Whitespace and comments

    private mutating func skipWhitespaceAndComments() throws(JSONSyntaxError) {
        while let b = peek() {
            switch b {
            case 0x20, 0x09, 0x0A, 0x0D, 0x0B, 0x0C:
                advance()
            case UInt8(ascii: "/"):
                let startLine = line, startColumn = column
                if peek(1) == UInt8(ascii: "/") {
                    while peek() != nil, !atLineTerminator() { advance() }
                } else if peek(1) == UInt8(ascii: "*") {
                    advance(); advance()
                    var closed = false
                    while let c = peek() {
                        if c == UInt8(ascii: "*") && peek(1) == UInt8(ascii: "/") {
                            advance(); advance()
                            closed = true
                            break
                        }
                        advance()
                    }
                    if !closed {
                        throw JSONSyntaxError(line: startLine, column: startColumn,
                                              message: "unterminated block comment: expected '*/'")
                    }
                } else {
                    throw fail("unexpected '/'; comments start with '//' or '/*'")
                }
            case 0xEF where peek(1) == 0xBB && peek(2) == 0xBF: // U+FEFF byte order mark
                advance(); advance(); advance()
            case 0xC2 where peek(1) == 0xA0: // U+00A0 no-break space
                advance(); advance()
            case 0xE2 where peek(1) == 0x80 && (peek(2) == 0xA8 || peek(2) == 0xA9): // U+2028, U+2029
                advance(); advance(); advance()
            default:
                return
            }
        }
    }

    // MARK: - Values

    private mutating func parseValue() throws(JSONSyntaxError) -> JSONNode {
        try skipWhitespaceAndComments()
        guard let b = peek() else {
            throw fail("expected a value, found end of input")
        }
        switch b {
        case UInt8(ascii: "{"):
            return try parseObject()
        case UInt8(ascii: "["):
            return try parseArray()
        case UInt8(ascii: "\""), UInt8(ascii: "'"):
            let (line, column) = (self.line, self.column)
            let s = try parseString()
            return JSONNode(value: .string(s), line: line, column: column)
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return try parseNumber()
        default:
            if isIdentifierStart(b) {
                let (line, column) = (self.line, self.column)
                let word = parseIdentifier()
                switch word {
                case "true": return JSONNode(value: .bool(true), line: line, column: column)
                case "false": return JSONNode(value: .bool(false), line: line, column: column)
                case "null": return JSONNode(value: .null, line: line, column: column)
                default:
                    var message = "unexpected word \(quoted(word)); expected a value (string, number, object, array, true, false or null)"
                    switch word.lowercased() {
                    case "true": message += "; did you mean true?"
                    case "false": message += "; did you mean false?"
                    case "null", "none", "nil": message += "; did you mean null?"
                    case "nan", "infinity": message += "; NaN and Infinity are not supported"
                    default: message += "; strings must be quoted"
                    }
                    throw JSONSyntaxError(line: line, column: column, message: message)
                }
            }
            if b == UInt8(ascii: "+") || b == UInt8(ascii: ".") {
                throw fail("unexpected \(describeCurrent()); numbers must start with a digit or '-'")
            }
            throw fail("unexpected \(describeCurrent()); expected a value (string, number, object, array, true, false or null)")
        }
    }

    private mutating func enterNesting() throws(JSONSyntaxError) {
        depth += 1
        if depth > Self.maxDepth {
            throw fail("nesting too deep: more than \(Self.maxDepth) levels of objects and arrays")
        }
    }

    private mutating func parseObject() throws(JSONSyntaxError) -> JSONNode {
        let (startLine, startColumn) = (line, column)
        try enterNesting()
        advance() // '{'
        var object = JSONObject()
        // Keys seen, for duplicates: the members themselves while the object is small (a QMP
        // message, a rule), a dictionary once it grows (a hand-written list of hundreds).
        var seen: [String: (line: Int, column: Int)] = [:]
        func firstDefinition(_ key: String) -> (line: Int, column: Int)? {
            if object.members.count <= 16 {
                return object.members.first { $0.key == key }.map { ($0.keyLine, $0.keyColumn) }
            }
            if seen.isEmpty { for m in object.members { seen[m.key] = (m.keyLine, m.keyColumn) } }
            return seen[key]
        }
        while true {
            try skipWhitespaceAndComments()
            guard let b = peek() else {
                throw fail("expected a key or '}' in object (opened at \(startLine):\(startColumn)), found end of input")
            }
            if b == UInt8(ascii: "}") {
                advance()
                break
            }
            let (keyLine, keyColumn) = (line, column)
            let key: String
            if b == UInt8(ascii: "\"") || b == UInt8(ascii: "'") {
                key = try parseString()
            } else if isIdentifierStart(b) {
                key = parseIdentifier()
            } else {
                throw fail("expected a key (a string) or '}' in object, found \(describeCurrent())")
            }
            try skipWhitespaceAndComments()
            guard peek() == UInt8(ascii: ":") else {
                throw fail("expected ':' after object key \(quoted(key)), found \(describeCurrent())")
            }
            advance()
            path.append(.key(key))
            let value = try parseValue()
            if let first = firstDefinition(key) {
                issues.append(JSONParseIssue(
                    line: keyLine, column: keyColumn, path: renderPath(path),
                    message: "duplicate key \(quoted(key)) (first defined at \(first.line):\(first.column))"))
            } else {
                if !seen.isEmpty { seen[key] = (keyLine, keyColumn) }
                object.members.append(JSONMember(key: key, keyLine: keyLine, keyColumn: keyColumn, value: value))
            }
            path.removeLast()
            try skipWhitespaceAndComments()
            if peek() == UInt8(ascii: ",") {
                advance()
                continue
            }
            if peek() == UInt8(ascii: "}") {
                advance()
                break
            }
            if peek() == nil {
                throw fail("expected ',' or '}' after object member (object opened at \(startLine):\(startColumn)), found end of input")
            }
            throw fail("expected ',' or '}' after object member, found \(describeCurrent())")
        }
        depth -= 1
        return JSONNode(value: .object(object), line: startLine, column: startColumn)
    }

    private mutating func parseArray() throws(JSONSyntaxError) -> JSONNode {
        let (startLine, startColumn) = (line, column)
        try enterNesting()
        advance() // '['
        var elements: [JSONNode] = []
        while true {
            try skipWhitespaceAndComments()
            guard let b = peek() else {
                throw fail("expected a value or ']' in array (opened at \(startLine):\(startColumn)), found end of input")
            }
            if b == UInt8(ascii: "]") {
                advance()
                break
            }
            if b == UInt8(ascii: ",") {
                throw fail("expected a value or ']' in array, found ','")
            }
            path.append(.index(elements.count))
            elements.append(try parseValue())
            path.removeLast()
            try skipWhitespaceAndComments()
            if peek() == UInt8(ascii: ",") {
                advance()
                continue
            }
            if peek() == UInt8(ascii: "]") {
                advance()
                break
            }
            if peek() == nil {
                throw fail("expected ',' or ']' after array element (array opened at \(startLine):\(startColumn)), found end of input")
            }
            throw fail("expected ',' or ']' after array element, found \(describeCurrent())")
        }
        depth -= 1
        return JSONNode(value: .array(elements), line: startLine, column: startColumn)
    }

    // MARK: - Strings

    private mutating func parseString() throws(JSONSyntaxError) -> String {
        let (startLine, startColumn) = (line, column)
        guard let quote = peek() else { throw fail("expected a string") }
        advance()
        // Most strings hold no escape and no control character: taken whole up to the quote.
        var end = index
        while end < bytes.count {
            let c = bytes[end]
            if c == quote || c == UInt8(ascii: "\\") || c < 0x20 { break }
            end += 1
        }
        if end < bytes.count, bytes[end] == quote {
            let text = String(decoding: bytes[index ..< end], as: UTF8.self)
            // Past the closing quote (a U+2028 or U+2029 in the string starts a line).
            while index <= end { advance() }
            return text
        }
        var buffer: [UInt8] = []
        while true {
            guard let b = peek() else {
                throw JSONSyntaxError(line: startLine, column: startColumn,
                                      message: "unterminated string: expected a closing \(quote == UInt8(ascii: "'") ? "\"'\"" : "'\"'")")
            }
            if b == quote {
                advance()
                break
            }
            switch b {
            case 0x0A, 0x0D:
                throw JSONSyntaxError(line: startLine, column: startColumn,
                                      message: "unterminated string: a line break comes before the closing quote (write \\n for a line break)")
            case UInt8(ascii: "\\"):
                try parseEscape(into: &buffer)
            case 0x00..<0x20 where b != 0x09:
                throw fail("control character U+\(hex(UInt32(b), width: 4)) in string; write it as an escape such as \\u\(hex(UInt32(b), width: 4))")
            default:
                buffer.append(b)
                advance()
            }
        }
        return String(decoding: buffer, as: UTF8.self)
    }

    private mutating func parseEscape(into buffer: inout [UInt8]) throws(JSONSyntaxError) {
        let (escLine, escColumn) = (line, column)
        advance() // backslash
        guard let c = peek() else {
            throw JSONSyntaxError(line: escLine, column: escColumn, message: "unterminated string: input ends inside an escape sequence")
        }
        func simple(_ byte: UInt8) { buffer.append(byte) }
        switch c {
        case UInt8(ascii: "\""), UInt8(ascii: "'"), UInt8(ascii: "\\"), UInt8(ascii: "/"):
            simple(c); advance()
        case UInt8(ascii: "b"): simple(0x08); advance()
        case UInt8(ascii: "f"): simple(0x0C); advance()
        case UInt8(ascii: "n"): simple(0x0A); advance()
        case UInt8(ascii: "r"): simple(0x0D); advance()
        case UInt8(ascii: "t"): simple(0x09); advance()
        case UInt8(ascii: "v"): simple(0x0B); advance()
        case UInt8(ascii: "0") where !(peek(1).map(isDigit) ?? false):
            simple(0x00); advance()
        case 0x0A: // escaped line break: a line continuation
            advance()
        case 0x0D:
            advance()
            if peek() == 0x0A { advance() }
        case UInt8(ascii: "u"):
            advance()
            let first = try parseHex4(escLine: escLine, escColumn: escColumn)
            var scalarValue = first
            if (0xD800...0xDBFF).contains(first) {
                guard peek() == UInt8(ascii: "\\"), peek(1) == UInt8(ascii: "u") else {
                    throw JSONSyntaxError(line: escLine, column: escColumn,
                                          message: "invalid \\u escape: high surrogate \\u\(hex(first, width: 4)) is not followed by a low surrogate \\uDC00-\\uDFFF")
                }
                advance(); advance()
                let second = try parseHex4(escLine: escLine, escColumn: escColumn)
                guard (0xDC00...0xDFFF).contains(second) else {
                    throw JSONSyntaxError(line: escLine, column: escColumn,
                                          message: "invalid \\u escape: high surrogate \\u\(hex(first, width: 4)) is followed by \\u\(hex(second, width: 4)), not by a low surrogate \\uDC00-\\uDFFF")
                }
                scalarValue = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            } else if (0xDC00...0xDFFF).contains(first) {
                throw JSONSyntaxError(line: escLine, column: escColumn,
                                      message: "invalid \\u escape: lone low surrogate \\u\(hex(first, width: 4))")
            }
            guard let scalar = Unicode.Scalar(scalarValue) else {
                throw JSONSyntaxError(line: escLine, column: escColumn, message: "invalid \\u escape")
            }
            buffer.append(contentsOf: Array(String(Character(scalar)).utf8))
        default:
            throw JSONSyntaxError(line: escLine, column: escColumn,
                                  message: "invalid escape sequence '\\\(printable(c))' in string; expected one of \\\" \\' \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX")
        }
    }

    private mutating func parseHex4(escLine: Int, escColumn: Int) throws(JSONSyntaxError) -> UInt32 {
        var value: UInt32 = 0
        for _ in 0..<4 {
            guard let b = peek(), let digit = hexDigitValue(b) else {
                throw JSONSyntaxError(line: escLine, column: escColumn,
                                      message: "invalid \\u escape: expected 4 hex digits after \\u")
            }
            value = value << 4 | UInt32(digit)
            advance()
        }
        return value
    }

    // MARK: - Numbers

    private mutating func parseNumber() throws(JSONSyntaxError) -> JSONNode {
        let (startLine, startColumn) = (line, column)
        let start = index
        var negative = false
        var isInteger = true
        if peek() == UInt8(ascii: "-") {
            negative = true
            advance()
        }
        guard let first = peek(), isDigit(first) else {
            throw fail("expected a digit after '-', found \(describeCurrent())")
        }
        var magnitude: Int? = 0
        let intStart = index
        while let d = peek(), isDigit(d) {
            if let m = magnitude {
                let (times10, o1) = m.multipliedReportingOverflow(by: 10)
                let (sum, o2) = times10.addingReportingOverflow(Int(d - UInt8(ascii: "0")))
                magnitude = (o1 || o2) ? nil : sum
            }
            advance()
        }
        if first == UInt8(ascii: "0") && index - intStart > 1 {
            throw JSONSyntaxError(line: startLine, column: startColumn, message: "numbers must not have leading zeros")
        }
        if peek() == UInt8(ascii: ".") {
            isInteger = false
            advance()
            guard let d = peek(), isDigit(d) else {
                throw fail("expected a digit after '.' in number, found \(describeCurrent())")
            }
            while let d = peek(), isDigit(d) { advance() }
        }
        if peek() == UInt8(ascii: "e") || peek() == UInt8(ascii: "E") {
            isInteger = false
            advance()
            if peek() == UInt8(ascii: "+") || peek() == UInt8(ascii: "-") { advance() }
            guard let d = peek(), isDigit(d) else {
                throw fail("expected a digit in the exponent of a number, found \(describeCurrent())")
            }
            while let d = peek(), isDigit(d) { advance() }
        }
        if let next = peek(), isIdentifierPart(next) || next == UInt8(ascii: ".") {
            // Something like 0x1F or 12abc: report the whole word.
            var end = index
            while end < bytes.count, isIdentifierPart(bytes[end]) || bytes[end] == UInt8(ascii: ".") { end += 1 }
            let word = String(decoding: bytes[start..<end], as: UTF8.self)
            let lower = word.lowercased()
            if lower.hasPrefix("0x") || lower.hasPrefix("-0x") {
                throw JSONSyntaxError(line: startLine, column: startColumn,
                                      message: "hexadecimal numbers are not supported (\(truncated(word))); IDs are written as strings, like \"046d\"")
            }
            throw JSONSyntaxError(line: startLine, column: startColumn, message: "invalid number \(quoted(word))")
        }
        let text = String(decoding: bytes[start..<index], as: UTF8.self)
        var integer: Int? = nil
        if isInteger, let m = magnitude {
            integer = negative ? -m : m
        }
        return JSONNode(value: .number(JSONNumber(text: text, isIntegerLiteral: isInteger, integer: integer)),
                        line: startLine, column: startColumn)
    }

    // MARK: - Identifiers

    private mutating func parseIdentifier() -> String {
        var buffer: [UInt8] = []
        while let b = peek(), isIdentifierPart(b) {
            buffer.append(b)
            advance()
        }
        return String(decoding: buffer, as: UTF8.self)
    }
}

// MARK: - Positions

/// 1-based lines and columns (columns count Unicode scalars) as UTF-8 text is read byte by
/// byte. JSON5's line terminators each end a line: LF, CR, CRLF (one line break), U+2028
/// and U+2029.
public enum TextPosition {
    /// Moves `line` and `column` past `bytes[i]`.
    @inline(__always)
    public static func move(_ line: inout Int, _ column: inout Int, past i: Int, in bytes: [UInt8]) {
        let b = bytes[i]
        let lineEnds = b == 0x0A
            || (b == 0x0D && (i + 1 == bytes.count || bytes[i + 1] != 0x0A)) // a CR of CRLF: the LF ends the line
            || ((b == 0xA8 || b == 0xA9) && i >= 2 && bytes[i - 1] == 0x80 && bytes[i - 2] == 0xE2)
        if lineEnds {
            line += 1
            column = 1
        } else if b & 0xC0 != 0x80 {
            // Count Unicode scalars: continuation bytes do not start a column.
            column += 1
        }
    }

    /// The line and column of byte `offset` (from the start, or after an initial byte order mark).
    public static func of(offset: Int, in bytes: [UInt8]) -> (line: Int, column: Int) {
        var line = 1, column = 1
        let start = bytes.starts(with: [0xEF, 0xBB, 0xBF]) ? min(3, offset) : 0
        for i in start..<max(start, min(offset, bytes.count)) { move(&line, &column, past: i, in: bytes) }
        return (line, column)
    }
}

// MARK: - Character classes and small helpers

private func isDigit(_ b: UInt8) -> Bool { b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }

private func isIdentifierStart(_ b: UInt8) -> Bool {
    (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z"))
        || b == UInt8(ascii: "_") || b == UInt8(ascii: "$")
}

private func isIdentifierPart(_ b: UInt8) -> Bool { isIdentifierStart(b) || isDigit(b) }

private func hexDigitValue(_ b: UInt8) -> UInt8? {
    switch b {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): return b - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): return b - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): return b - UInt8(ascii: "A") + 10
    default: return nil
    }
}

private func printable(_ b: UInt8) -> String {
    if b >= 0x20 && b < 0x7F { return String(Character(Unicode.Scalar(b))) }
    return "x\(hex(UInt32(b), width: 2))"
}

/// Upper-case hexadecimal, zero-padded to `width`.
public func hex(_ value: UInt32, width: Int) -> String {
    let digits = String(value, radix: 16, uppercase: true)
    return String(repeating: "0", count: max(0, width - digits.count)) + digits
}

/// Shortens long text for messages.
public func truncated(_ text: String, limit: Int = 60) -> String {
    guard text.count > limit else { return text }
    return String(text.prefix(limit)) + "…"
}

/// `"text"` with JSON escapes, shortened when long, for messages.
public func quoted(_ text: String, limit: Int = 60) -> String {
    if text.utf8.count <= limit, isPlainText(text) { return "\"" + text + "\"" }
    var out = "\""
    var count = 0
    for scalar in text.unicodeScalars {
        if count >= limit {
            out += "…"
            break
        }
        count += 1
        appendEscaped(scalar, to: &out)
    }
    return out + "\""
}

// MARK: - JSON paths

/// One step of a JSON path.
public enum JSONPathComponent: Sendable, Hashable {
    case key(String)
    case index(Int)
}

/// `$.a.b[0]["odd key"]`.
public func renderPath(_ components: [JSONPathComponent]) -> String {
    components.reduce("$") { path, component in
        switch component {
        case .key(let key): return appendingKey(path, key)
        case .index(let i): return appendingIndex(path, i)
        }
    }
}

/// `path.key`, or `path["key"]` when the key is not a plain identifier.
public func appendingKey(_ path: String, _ key: String) -> String {
    let plain = !key.isEmpty && key.utf8.count <= 60 && key.utf8.enumerated().allSatisfy { i, b in
        i == 0 ? isIdentifierStart(b) : isIdentifierPart(b)
    }
    return plain ? "\(path).\(key)" : "\(path)[\(quoted(key))]"
}

/// `path[index]`.
public func appendingIndex(_ path: String, _ index: Int) -> String { "\(path)[\(index)]" }
