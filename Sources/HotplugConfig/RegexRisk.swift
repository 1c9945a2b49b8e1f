/// Swift's Regex engine backtracks, with no bound on the steps a match takes. A group that
/// repeats something that repeats, `(\w+\s?)*` or `(a+)+`, can try exponentially many ways
/// to split a name that almost matches: `^(\w+\s?)*$` on 20 letters and a `!` took 51 s here.
/// The names matched come from the devices themselves (a USB device sends its own), and the
/// daemon decides on its one event loop, so such a pattern is refused when the configuration
/// is loaded.
extension NamePattern {
    /// Why `source` may take exponential time to match, or nil. Looks for a group that holds an
    /// unbounded repetition (`*`, `+`, `{n,}`) and is itself repeated more than 3 times or without
    /// bound. Escapes, character classes and possessive quantifiers are followed; alternation
    /// inside a repeated group is not looked at.
    public static func backtrackingRisk(_ source: String) -> String? {
        let s = Array(source.unicodeScalars)
        // Per open group: whether it holds an unbounded repetition, and where it starts.
        var groups: [(unbounded: Bool, start: Int)] = []
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
        while i < s.count {
            switch s[i] {
            case "\\":
                // An escape: one atom (\d, \w, \(, \x{41}, \N{...}, \p{...}).
                i += 2
                if i - 1 < s.count, "xNpPgk".unicodeScalars.contains(s[i - 1]), i < s.count, s[i] == "{" {
                    while i < s.count, s[i] != "}" { i += 1 }
                    i += 1
                }
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
            case "(":
                groups.append((false, i))
                i += 1
                continue
            case ")":
                guard let group = groups.popLast() else { i += 1; continue }
                i += 1
                if let q = quantifier(at: i) {
                    if group.unbounded && q.repeats {
                        let text = String(String.UnicodeScalarView(s[group.start..<(i + q.length)]))
                        return "repeats a group that itself repeats without bound (\(text)): matching it can take "
                            + "exponential time on a name that almost matches, and a device chooses its own name; "
                            + "write it without the nested repetition (for (\\w+\\s?)*, [\\w\\s]*)"
                    }
                    if group.unbounded || q.unbounded { markUnbounded() }
                    i += q.length
                } else if group.unbounded {
                    markUnbounded()
                }
                continue
            default:
                i += 1
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
