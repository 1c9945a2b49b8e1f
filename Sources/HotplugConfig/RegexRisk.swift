/// Swift's Regex engine backtracks, with no bound on the steps a match takes. A group that
/// repeats something that repeats, `(\w+\s?)*` or `(a+)+`, can try exponentially many ways
/// to split a name that almost matches: `^(\w+\s?)*$` on 20 letters and a `!` took 51 s here.
/// The names matched come from the devices themselves (a USB device sends its own), and the
/// daemon decides on its one event loop, so such a pattern is refused when the configuration
/// is loaded. So is a repeated choice whose alternatives can begin with the same character,
/// `(\w|_)+` or `(.|\s)*`: each such character doubles the ways to try (`(.|\s)*Keyboard` on a
/// product name padded with 16 spaces took 0.44 s here, and 3.5 times as long per 2 more).
extension NamePattern {
    /// Why `source` may take exponential time to match, or nil. Looks for a group repeated more
    /// than 3 times or without bound that holds an unbounded repetition (`*`, `+`, `{n,}`), or a
    /// choice (`|`) two of whose alternatives begin with atoms that match a common character.
    /// Escapes, character classes and possessive quantifiers are followed. An alternative's
    /// first atom is compared only when it is a character, an escape, a class or `.` (not a
    /// group or an anchor), by the characters of a sample set (ASCII and a few others) that it
    /// matches, case-insensitively as names are matched.
    public static func backtrackingRisk(_ source: String) -> String? {
        let s = Array(source.unicodeScalars)
        var groups: [Group] = []
        var i = 0
        /// The quantifier at `i`, if any: its length and whether it repeats without bound or
        /// more than 3 times (`repeats`), and whether it is unbounded.
        func quantifier(at i: Int) -> (length: Int, repeats: Bool, unbounded: Bool)? {
            guard i < s.count else { return nil }
            var length: Int
            var repeats = false, unbounded = false
            switch s[i] {
            case "*", "+":
                length = 1; repeats = true; unbounded = true
            case "?":
                length = 1
            case "{":
                // {n}, {n,}, {n,m}; anything else is a literal brace.
                var j = i + 1
                var first = "", second: String? = nil
                while j < s.count, ("0"..."9").contains(s[j]) || s[j] == "," {
                    if s[j] == "," {
                        if second != nil { return nil }
                        second = ""
                    } else if second != nil {
                        second!.unicodeScalars.append(s[j])
                    } else {
                        first.unicodeScalars.append(s[j])
                    }
                    j += 1
                }
                guard j < s.count, s[j] == "}", !first.isEmpty || (second?.isEmpty == false) else { return nil }
                length = j - i + 1
                if let second {
                    if second.isEmpty { unbounded = true; repeats = true } else { repeats = (Int(second) ?? Int.max) > 3 }
                } else {
                    repeats = (Int(first) ?? Int.max) > 3
                }
            default:
                return nil
            }
            // Lazy (`?`) or possessive (`+`) forms.
            if i + length < s.count, s[i + length] == "?" || s[i + length] == "+" { length += 1 }
            return (length, repeats, unbounded)
        }
        func markUnbounded() {
            if !groups.isEmpty { groups[groups.count - 1].unbounded = true }
        }
        func text(_ r: Range<Int>) -> String { String(String.UnicodeScalarView(s[r])) }
        /// An atom at `start..<i` (just read) of the innermost group's current alternative.
        func atom(from start: Int, known: Bool) {
            guard !groups.isEmpty else { return }
            groups[groups.count - 1].atom(known ? text(start..<i) : nil)
        }
        while i < s.count {
            let start = i
            switch s[i] {
            case "|":
                if !groups.isEmpty { groups[groups.count - 1].branch() }
                i += 1
                continue
            case "^", "$":
                atom(from: start, known: false)
                i += 1
                continue
            case "\\":
                // An escape: one atom (\d, \w, \(, \x{41}, \N{...}, \p{...}).
                i += 2
                if i - 1 < s.count, "xNpPgk".unicodeScalars.contains(s[i - 1]), i < s.count, s[i] == "{" {
                    while i < s.count, s[i] != "}" { i += 1 }
                    i += 1
                }
                i = min(i, s.count)
                // Anchors and boundaries are not characters; a back-reference is not one atom.
                let zeroWidth = start + 1 < s.count && "bBAzZGkgyY123456789".unicodeScalars.contains(s[start + 1])
                atom(from: start, known: !zeroWidth)
            case "[":
                // A character class: one atom, up to its closing bracket (a `]` first is literal).
                i += 1
                if i < s.count, s[i] == "^" { i += 1 }
                if i < s.count, s[i] == "]" { i += 1 }
                var depth = 1
                while i < s.count, depth > 0 {
                    if s[i] == "\\" { i += 2; continue }
                    if s[i] == "[" { depth += 1 } else if s[i] == "]" { depth -= 1 }
                    i += 1
                }
                i = min(i, s.count)
                atom(from: start, known: true)
            case "(":
                groups.append(Group(start: i))
                i += 1
                // The group's kind and options, `(?:`, `(?<name>`, `(?i)`, `(?=`, `(?#...)`: not atoms.
                if i < s.count, s[i] == "?" {
                    i += 1
                    if i < s.count, s[i] == "#" {
                        while i < s.count, s[i] != ")" { i += 1 }
                    } else if i < s.count, s[i] == "<" || s[i] == "'" || s[i] == "P",
                              !(s[i] == "<" && i + 1 < s.count && (s[i + 1] == "=" || s[i + 1] == "!")) {
                        let close: Unicode.Scalar = s[i] == "'" ? "'" : ">"
                        while i < s.count, s[i] != close, s[i] != ")" { i += 1 }
                        if i < s.count, s[i] == close { i += 1 }
                    } else if i < s.count, ":>=!|".unicodeScalars.contains(s[i]) {
                        i += 1
                    } else if i < s.count, s[i] == "<" {
                        i += 2
                    } else {
                        // Options, `(?i)` or `(?i-x:`.
                        while i < s.count, s[i] != ":", s[i] != ")" { i += 1 }
                        if i < s.count, s[i] == ":" { i += 1 }
                    }
                    i = min(i, s.count)
                }
                continue
            case ")":
                guard var group = groups.popLast() else { i += 1; continue }
                i += 1
                atom(from: start, known: false)
                if !group.ambiguous, let overlap = group.overlappingChoice() {
                    group.ambiguous = true
                    group.overlap = overlap
                }
                if let q = quantifier(at: i) {
                    let whole = text(group.start..<(i + q.length))
                    if group.unbounded && q.repeats {
                        return "repeats a group that itself repeats without bound (\(whole)): matching it can take "
                            + "exponential time on a name that almost matches, and a device chooses its own name; "
                            + "write it without the nested repetition (for (\\w+\\s?)*, [\\w\\s]*)"
                    }
                    if group.ambiguous && q.repeats, let (a, b, c) = group.overlap {
                        return "repeats a choice whose alternatives \(a) and \(b) both match \(c) (\(whole)): matching "
                            + "it can take exponential time on a name that almost matches, and a device chooses its own "
                            + "name; write the alternatives so that no character starts two of them "
                            + "(for (\\w|_)+, \\w+; for (.|\\s)*, [\\s\\S]*)"
                    }
                    if group.unbounded || q.unbounded { markUnbounded() }
                    i += q.length
                } else if group.unbounded {
                    markUnbounded()
                }
                if group.ambiguous, !groups.isEmpty, groups[groups.count - 1].overlap == nil {
                    groups[groups.count - 1].ambiguous = true
                    groups[groups.count - 1].overlap = group.overlap
                }
                continue
            default:
                i += 1
                atom(from: start, known: true)
            }
            // After an atom: its quantifier.
            if let q = quantifier(at: i) {
                if q.unbounded { markUnbounded() }
                i += q.length
            }
        }
        return nil
    }
}

/// An open group of `NamePattern.backtrackingRisk`'s scan.
private struct Group {
    /// Where it starts in the pattern.
    var start: Int
    /// Whether it holds an unbounded repetition.
    var unbounded = false
    /// Whether it holds a choice two of whose alternatives can begin with the same character,
    /// and which (the two atoms and the character).
    var ambiguous = false
    var overlap: (String, String, String)?
    /// Each alternative's first atom (nil: none yet, or not one compared), and whether the
    /// current alternative has had one.
    private var firsts: [String?] = []
    private var current: String?
    private var started = false

    init(start: Int) { self.start = start }

    /// One atom of the current alternative; `source` nil when it is not compared.
    mutating func atom(_ source: String?) {
        if !started { current = source; started = true }
    }

    /// A `|`: the current alternative ends.
    mutating func branch() {
        firsts.append(started ? current : nil)
        current = nil
        started = false
    }

    /// Two alternatives whose first atoms match a common character, with it; nil if none.
    mutating func overlappingChoice() -> (String, String, String)? {
        guard !firsts.isEmpty else { return nil }
        branch()
        let atoms = firsts.compactMap { $0 }
        let sets = atoms.map(Self.sampleMatches)
        for a in 0..<atoms.count {
            for b in (a + 1)..<atoms.count {
                let common = sets[a].intersection(sets[b])
                if let k = common.min() {
                    return (atoms[a], atoms[b], Self.describe(k))
                }
            }
        }
        return nil
    }

    /// The characters an atom is compared by: printable ASCII, tab and line feed, and a few
    /// letters, digits and spaces from further on.
    static let samples: [Character] = (0x20...0x7E).map { Character(Unicode.Scalar(UInt8($0))) }
        + ["\t", "\n", "é", "É", "ß", "Ω", "ж", "中", "٣", "€", "\u{A0}", "\u{2003}", "😀"]

    /// The indices in `samples` of the characters `atom` matches (none when it does not compile).
    static func sampleMatches(_ atom: String) -> Set<Int> {
        guard let regex = try? Regex("(?:\(atom))").ignoresCase() else { return [] }
        var found = Set<Int>()
        for (k, c) in samples.enumerated() where (try? regex.wholeMatch(in: String(c))) != nil {
            found.insert(k)
        }
        return found
    }

    static func describe(_ k: Int) -> String {
        let c = samples[k]
        switch c {
        case " ": return "a space"
        case "\t": return "a tab"
        case "\n": return "a line feed"
        default:
            let v = c.unicodeScalars.first!.value
            return v < 0x80 || !c.isWhitespace ? "\"\(c)\"" : "U+" + String(v, radix: 16, uppercase: true)
        }
    }
}
