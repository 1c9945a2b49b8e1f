import JSONKit
import Foundation
import Testing
@testable import HotplugConfig

@Suite("JSON5 syntax")
struct JSON5SyntaxTests {
    // MARK: - Accepted syntax

    @Test("line and block comments are ignored anywhere whitespace may be")
    func comments() throws {
        let text = """
            // leading comment
            { /* inline */ "vms": [ // trailing
              {"name": "vm1", /* between members */ "type": "qemu", "socket": "/s"} /* after a value */
            ] /* multi
                 line */ }
            // end
            """
        let config = try ConfigurationLoader.parse(text)
        #expect(config.vms.map(\.name) == ["vm1"])
        #expect(config.vms.first?.location?.line == 3)
    }

    @Test("a comment marker inside a string is part of the string")
    func commentMarkersInStrings() throws {
        let config = try ConfigurationLoader.parse(#"{"vms": [{"name": "a//b/*c*/", "type": "qemu", "socket": "/s"}]}"#)
        #expect(config.vms.first?.name == "a//b/*c*/")
    }

    @Test("trailing commas in objects and arrays")
    func trailingCommas() throws {
        let config = try ConfigurationLoader.parse(#"{"vms": [{"name": "a", "type": "qemu", "socket": "/s",},],}"#)
        #expect(config.vms.count == 1)
    }

    @Test("single-quoted strings and keys")
    func singleQuotedStrings() throws {
        let config = try ConfigurationLoader.parse(#"{'vms': [{'name': 'it\'s "x"', 'type': 'qemu', 'socket': '/s'}]}"#)
        #expect(config.vms.first?.name == #"it's "x""#)
    }

    @Test("unquoted identifier keys")
    func unquotedKeys() throws {
        let config = try ConfigurationLoader.parse(#"{vms: [{name: "a", type: "crosvm", socket: "/s"}]}"#)
        #expect(config.vms.first == VMDefinition(name: "a", type: .crosvm, socket: "/s", location: config.vms.first?.location))
    }

    @Test("JSON string escapes, and a raw tab")
    func stringEscapes() throws {
        let config = try ConfigurationLoader.parse(
            "{\"vms\": [{\"name\": \"a\\\"b\\\\c\\/d\\n\\t\\u00e9\\b\\f\\r\\u0041\", \"type\": \"qemu\", \"socket\": \"/x\ty\"}]}")
        #expect(config.vms.first?.name == "a\"b\\c/d\n\t\u{e9}\u{8}\u{c}\rA")
        #expect(config.vms.first?.socket == "/x\ty")
    }

    @Test("\\u surrogate pairs decode to one scalar; raw non-ASCII passes through")
    func surrogatePairs() throws {
        let config = try ConfigurationLoader.parse(#"{"vms": [{"name": "\uD83D\uDE00 😀 é", "type": "qemu", "socket": "/s"}]}"#)
        #expect(config.vms.first?.name == "😀 😀 é")
    }

    @Test("a byte order mark at the start is skipped")
    func byteOrderMark() throws {
        let config = try ConfigurationLoader.parse("\u{FEFF}{\"vms\": []}")
        #expect(config.vms.isEmpty)
    }

    @Test("CRLF line endings: lines and columns are still right")
    func crlfLineEndings() throws {
        let d = try singleError("{\r\n  \"vms\": 5\r\n}\r\n")
        #expect(d.message == "expected an array, found number 5")
        #expect(d.position == "2:10")
        #expect(d.path == "$.vms")
    }

    @Test("bare CR, U+2028 and U+2029 end a line as LF does (JSON5's line terminators); CRLF is one line break")
    func otherLineTerminators() throws {
        for br in ["\r", "\u{2028}", "\u{2029}", "\r\n", "\n"] {
            let name = br.unicodeScalars.map { "U+" + hex($0.value, width: 4) }.joined(separator: " ")
            let d = try singleError("{" + br + "  \"vms\": []," + br + "  \"x\": 1" + br + "}" + br)
            #expect(d.position == "3:3", "\(name)")
            // A // comment ends there too.
            let c = try singleError("{ // note" + br + "  \"vms\": 5" + br + "}")
            #expect(c.position == "2:10" && c.path == "$.vms", "\(name): \(c)")
        }
        // Inside a string, U+2028 (allowed there by JSON5) starts a line too.
        let all = errors("{\"vms\": \"a\u{2028}b\", \"x\": 1}")
        #expect(all.map(\.position) == ["1:9", "2:5"])
    }

    @Test("a tab counts as one column")
    func tabsCountAsOneColumn() throws {
        let d = try singleError("{\n\t\"vms\": 5}")
        #expect(d.position == "2:9")
    }

    @Test("columns count characters, not UTF-8 bytes")
    func columnsCountCharacters() throws {
        let text = #"{"vms": [{"name": "héllo 😀 wörld", "type": "qemu", "socket": 5}]}"#
        let d = try singleError(text)
        #expect(d.message == "expected a string, found number 5")
        #expect(d.position == position(of: "5}", in: text))
        #expect(d.position == "1:62")
    }

    // MARK: - String errors

    @Test("unterminated string: points at the opening quote")
    func unterminatedString() throws {
        let d = try singleError(#"{"vms": [{"name": "vm1"#)
        #expect(d.message == #"unterminated string: expected a closing '"'"#)
        #expect(d.position == "1:19")
        #expect(d.path == "")
        #expect(d.description == #"<config>:1:19: error: unterminated string: expected a closing '"'"#)

        let single = try singleError("{'vms': 'abc")
        #expect(single.message == #"unterminated string: expected a closing "'""#)
        #expect(single.position == "1:9")
    }

    @Test("a line break inside a string is an unterminated string")
    func lineBreakInString() throws {
        let d = try singleError("{\"vms\": \"abc\n\"}")
        #expect(d.message == #"unterminated string: a line break comes before the closing quote (write \n for a line break)"#)
        #expect(d.position == "1:9")
    }

    @Test("control characters in strings must be escaped")
    func controlCharacterInString() throws {
        let d = try singleError("{\"vms\": \"a\u{1}b\"}")
        #expect(d.message == #"control character U+0001 in string; write it as an escape such as \u0001"#)
        #expect(d.position == "1:11")
    }

    @Test("an unknown escape sequence")
    func invalidEscape() throws {
        let text = #"{"vms": [{"name": "a\x41"}]}"#
        let d = try singleError(text)
        #expect(d.message == #"invalid escape sequence '\x' in string; expected one of \" \' \\ \/ \b \f \n \r \t \uXXXX"#)
        #expect(d.position == position(of: #"\x"#, in: text))
        #expect(d.position == "1:21")
    }

    @Test("\\u needs four hex digits")
    func shortUnicodeEscape() throws {
        let d = try singleError(#"{"vms": "\u12G4"}"#)
        #expect(d.message == #"invalid \u escape: expected 4 hex digits after \u"#)
        #expect(d.position == "1:10")
    }

    @Test("a high surrogate without its low surrogate")
    func loneHighSurrogate() throws {
        let text = #"{"vms": [{"name": "x\uD83D"}]}"#
        let d = try singleError(text)
        #expect(d.message == #"invalid \u escape: high surrogate \uD83D is not followed by a low surrogate \uDC00-\uDFFF"#)
        #expect(d.position == "1:21")

        let wrongPair = try singleError(#"{"vms": "\uD83D\u0041"}"#)
        #expect(wrongPair.message
            == #"invalid \u escape: high surrogate \uD83D is followed by \u0041, not by a low surrogate \uDC00-\uDFFF"#)
        #expect(wrongPair.position == "1:10")
    }

    @Test("a low surrogate on its own")
    func loneLowSurrogate() throws {
        let d = try singleError(#"{"vms": "\uDE00"}"#)
        #expect(d.message == #"invalid \u escape: lone low surrogate \uDE00"#)
        #expect(d.position == "1:10")
    }

    // MARK: - Structure errors

    @Test("a missing comma between object members")
    func missingCommaBetweenMembers() throws {
        let d = try singleError("{\n  \"vms\": []\n  \"usbPassthrough\": []\n}\n")
        #expect(d.message == #"expected ',' or '}' after object member, found '"'"#)
        #expect(d.position == "3:3")
        #expect(d.description == #"<config>:3:3: error: expected ',' or '}' after object member, found '"'"#)
    }

    @Test("a missing comma between array elements")
    func missingCommaInArray() throws {
        let d = try singleError(#"{"vms": [{} {}]}"#)
        #expect(d.message == "expected ',' or ']' after array element, found '{'")
        #expect(d.position == "1:13")
    }

    @Test("a missing colon after a key")
    func missingColon() throws {
        let d = try singleError(#"{"vms" []}"#)
        #expect(d.message == #"expected ':' after object key "vms", found '['"#)
        #expect(d.position == "1:8")
    }

    @Test("a key that is not a string")
    func nonStringKey() throws {
        let d = try singleError("{1: 2}")
        #expect(d.message == "expected a key (a string) or '}' in object, found '1'")
        #expect(d.position == "1:2")
    }

    @Test("two commas in a row in an array")
    func doubleCommaInArray() throws {
        let d = try singleError(#"{"vms": [{},,]}"#)
        #expect(d.message == "expected a value or ']' in array, found ','")
        #expect(d.position == "1:13")
    }

    @Test("truncated input: a clear error, never a crash")
    func truncatedInput() throws {
        let d1 = try singleError(#"{"vms": ["#)
        #expect(d1.message == "expected a value or ']' in array (opened at 1:9), found end of input")
        #expect(d1.position == "1:10")
        let d2 = try singleError(#"{"vms": [{"name": "vm1", "#)
        #expect(d2.message == "expected a key or '}' in object (opened at 1:10), found end of input")
        #expect(d2.position == "1:26")
        let d3 = try singleError(#"{"vms": [{"name""#)
        #expect(d3.message == #"expected ':' after object key "name", found end of input"#)
        #expect(d3.position == "1:17")
        let d4 = try singleError(#"{"vms": []"#)
        #expect(d4.message == "expected ',' or '}' after object member (object opened at 1:1), found end of input")
        let d5 = try singleError(#"{"vms": "#)
        #expect(d5.message == "expected a value, found end of input")

        // Every proper prefix of the seed sample fails with one syntax error.
        let seed = Array(try String(contentsOfFile: dataFile("vhotplug.conf"), encoding: .utf8).unicodeScalars)
        let lastBrace = try #require(seed.lastIndex(of: "}"))
        for length in 0...lastBrace {
            let prefix = String(String.UnicodeScalarView(seed[0..<length]))
            let all = errors(prefix)
            #expect(all.count == 1, "prefix of length \(length): \(all)")
            #expect(all.first?.path == "", "prefix of length \(length) should be a syntax error")
            #expect((all.first?.line ?? 0) >= 1)
        }
    }

    @Test("empty input, or only comments")
    func emptyInput() throws {
        let d = try singleError("")
        #expect(d.message == "the configuration is empty; expected an object")
        #expect(d.position == "1:1")
        let comments = try singleError("  // nothing here\n/* nor here */\n")
        #expect(comments.message == "the configuration is empty; expected an object")
        #expect(comments.position == "3:1")
    }

    @Test("content after the top-level value")
    func trailingContent() throws {
        let d = try singleError("{} }")
        #expect(d.message == "unexpected '}' after the top-level value; expected end of input")
        #expect(d.position == "1:4")
        let two = try singleError("{}\n{}")
        #expect(two.position == "2:1")
    }

    @Test("an unterminated block comment points at its start")
    func unterminatedBlockComment() throws {
        let d = try singleError("{\n  /* never closed\n")
        #expect(d.message == "unterminated block comment: expected '*/'")
        #expect(d.position == "2:3")
    }

    @Test("a lone slash")
    func loneSlash() throws {
        let d = try singleError("{ / }")
        #expect(d.message == "unexpected '/'; comments start with '//' or '/*'")
        #expect(d.position == "1:3")
    }

    @Test("a character that cannot start a value")
    func unexpectedCharacter() throws {
        let d = try singleError(#"{"vms": @}"#)
        #expect(d.message == "unexpected '@'; expected a value (string, number, object, array, true, false or null)")
        #expect(d.position == "1:9")
        let nonASCII = try singleError(#"{"vms": é}"#)
        #expect(nonASCII.message
            == "unexpected character U+00E9 'é'; expected a value (string, number, object, array, true, false or null)")
    }

    // MARK: - Words and numbers

    @Test("capitalised or foreign literals get a hint")
    func literalHints() throws {
        let d = try singleError(#"{"vms": True}"#)
        #expect(d.message == #"unexpected word "True"; expected a value (string, number, object, array, true, false or null); did you mean true?"#)
        #expect(d.position == "1:9")
        #expect(try singleError(#"{"vms": None}"#).message.hasSuffix("did you mean null?"))
        #expect(try singleError(#"{"vms": FALSE}"#).message.hasSuffix("did you mean false?"))
        #expect(try singleError(#"{"vms": NaN}"#).message.hasSuffix("NaN and Infinity are not supported"))
        #expect(try singleError(#"{"vms": qemu}"#).message.hasSuffix("strings must be quoted"))
    }

    @Test("hexadecimal number literals are refused with a hint")
    func hexNumberLiteral() throws {
        let d = try singleError(#"{"vms": 0x1F}"#)
        #expect(d.message == #"hexadecimal numbers are not supported (0x1F); IDs are written as strings, like "046d""#)
        #expect(d.position == "1:9")
    }

    @Test("malformed numbers")
    func malformedNumbers() throws {
        let cases: [(String, String, String)] = [
            (#"{"vms": 007}"#, "numbers must not have leading zeros", "1:9"),
            (#"{"vms": -}"#, "expected a digit after '-', found '}'", "1:10"),
            (#"{"vms": 1.}"#, "expected a digit after '.' in number, found '}'", "1:11"),
            (#"{"vms": 1e}"#, "expected a digit in the exponent of a number, found '}'", "1:11"),
            (#"{"vms": +1}"#, "unexpected '+'; numbers must start with a digit or '-'", "1:9"),
            (#"{"vms": .5}"#, "unexpected '.'; numbers must start with a digit or '-'", "1:9"),
            (#"{"vms": 12abc}"#, #"invalid number "12abc""#, "1:9"),
        ]
        for (text, message, position) in cases {
            let d = try singleError(text)
            #expect(d.message == message, "\(text)")
            #expect(d.position == position, "\(text)")
        }
    }

    // MARK: - Duplicates and nesting

    @Test("a duplicate key is an error at the second occurrence")
    func duplicateKeys() throws {
        let d = try singleError("{\n  \"vms\": [],\n  \"vms\": []\n}\n")
        #expect(d.message == #"duplicate key "vms" (first defined at 2:3)"#)
        #expect(d.position == "3:3")
        #expect(d.path == "$.vms")
        #expect(d.description == #"<config>:3:3: error: duplicate key "vms" (first defined at 2:3) (at $.vms)"#)
    }

    @Test("duplicates are found in small objects and in large ones (past 16 members the keys go into a table)",
          arguments: [5, 16, 17, 40])
    func duplicatesAtEverySize(members: Int) throws {
        // Keys k0..k(n-1), one per line, then a repeat of k1 and (for large objects) of the last key.
        var lines = (0..<members).map { "\"k\($0)\": \($0)," }
        lines.append("\"k1\": 100,")
        lines.append("\"k\(members - 1)\": 101,")
        lines.append("\"late\": 1, \"late\": 2")
        var parser = JSONParser(bytes: Array(("{\n" + lines.joined(separator: "\n") + "\n}").utf8))
        let node = try parser.parseDocument()
        #expect(parser.issues.map(\.message) == [
            #"duplicate key "k1" (first defined at 3:1)"#,
            "duplicate key \"k\(members - 1)\" (first defined at \(members + 1):1)",
            #"duplicate key "late" (first defined at \#(members + 4):1)"#,
        ])
        guard case .object(let o) = node.value else { Issue.record("not an object"); return }
        #expect(o.members.map(\.key) == (0..<members).map { "k\($0)" } + ["late"], "the first occurrence kept")
        func int(_ key: String) -> Int? {
            if case .number(let n)? = o.member(key)?.value.value { return n.integer }
            return nil
        }
        #expect(int("k1") == 1 && int("late") == 1, "the first value kept")
    }

    @Test("a duplicate key inside an entry has the entry's path")
    func duplicateKeyInEntry() throws {
        let d = try singleError(Sample.usbEntry(#"{"vendorId": "046d", "vendorId": "046e"}"#))
        #expect(d.message == #"duplicate key "vendorId" (first defined at 4:6)"#)
        #expect(d.position == "4:26")
        #expect(d.path == "$.usbPassthrough[0].allow[0].vendorId")
    }

    @Test("a peer's line for the debug log: JSON as it is; control characters (ESC, CR, C1, U+2028) escaped")
    func loggableLines() {
        let json = #"{"return": [{"name": "vhp-usb-1-2", "type": "child<usb-host>"}], "id": 2}"#
        #expect(loggableLine(Array(json.utf8)) == json)
        #expect(loggableLine(Array("{\"a\": \"é\"}".utf8)) == "{\"a\": \"é\"}")
        let hostile = Array("x\u{1B}[2Jy\r\nz\u{9B}w\u{2028}".utf8) + [0xFF]
        #expect(loggableLine(hostile) == #"x\u001B[2Jy\r\nz\u009Bw\u2028\#u{FFFD}"#)
    }

    @Test("deep nesting is an error, not a stack overflow")
    func deepNesting() throws {
        let arrays = try singleError(String(repeating: "[", count: 100_000))
        #expect(arrays.message == "nesting too deep: more than 64 levels of objects and arrays")
        #expect(arrays.position == "1:65")
        let objects = try singleError(String(repeating: #"{"a":"#, count: 10_000))
        #expect(objects.message == "nesting too deep: more than 64 levels of objects and arrays")
        #expect(objects.position == "1:321")
    }

    @Test("64 levels of nesting are fine, 65 are not")
    func nestingLimit() throws {
        // The top-level object is level 1, so 63 arrays inside it make 64 levels.
        let ok = try singleError(#"{"x": "# + String(repeating: "[", count: 63) + String(repeating: "]", count: 63) + "}")
        #expect(ok.message.hasPrefix(#"unknown key "x""#))
        let tooDeep = try singleError(#"{"x": "# + String(repeating: "[", count: 64) + String(repeating: "]", count: 64) + "}")
        #expect(tooDeep.message == "nesting too deep: more than 64 levels of objects and arrays")
        #expect(tooDeep.position == "1:70")
    }

    // MARK: - Robustness

    @Test("mutated configurations never crash the loader")
    func mutatedInputsNeverCrash() throws {
        let seed = Array(try Data(contentsOf: URL(fileURLWithPath: dataFile("example-full.conf"))))
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> Int {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Int(truncatingIfNeeded: state >> 33)
        }
        let interesting: [UInt8] = Array("{}[]:,\"'\\/*-0123456789eE.xtrufalsn \n\u{7f}".utf8) + [0x00, 0xC3, 0xFF, 0xED, 0xA0]
        for _ in 0..<1500 {
            var bytes = seed
            for _ in 0..<(1 + next() % 6) {
                guard !bytes.isEmpty else { break }
                let at = next() % bytes.count
                switch next() % 4 {
                case 0: bytes[at] = interesting[next() % interesting.count]
                case 1: bytes.remove(at: at)
                case 2: bytes.insert(interesting[next() % interesting.count], at: at)
                default: bytes.removeSubrange(at..<min(bytes.count, at + next() % 64))
                }
            }
            do {
                _ = try ConfigurationLoader.parse(bytes: bytes)
            } catch let error as ConfigurationError {
                #expect(!error.diagnostics.isEmpty)
                #expect(error.diagnostics.allSatisfy { $0.line >= 1 && $0.column >= 1 })
            }
            // The same bytes as text (invalid UTF-8 repaired), so the parser itself sees every mutation.
            do {
                _ = try ConfigurationLoader.parse(String(decoding: bytes, as: UTF8.self))
            } catch let error as ConfigurationError {
                #expect(!error.diagnostics.isEmpty)
                #expect(error.diagnostics.allSatisfy { $0.line >= 1 && $0.column >= 1 })
            }
        }
    }
}
