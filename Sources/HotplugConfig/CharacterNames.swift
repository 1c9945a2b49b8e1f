/// Swift's regular expressions accept `\N{NAME}` for any NAME and, when no character has that
/// name, compile a pattern that never matches: a rule written with a misspelt name would
/// silently stop matching. Each `\N{...}` of a pattern is therefore looked up here when the
/// configuration is loaded.
enum CharacterNames {
    /// The first `\N{...}` of `source` that names no character Swift's regular expressions
    /// know, as written (`\N{NOPE}`); nil when every one does (or there is none).
    static func firstUnknown(in source: String) -> String? {
        for name in namedEscapes(in: source) where !known(name) {
            return "\\N{\(name)}"
        }
        return nil
    }

    /// The names inside each `\N{...}` of `source`. An escaped backslash (`\\N{x}`) is a
    /// backslash and an `N`, not an escape.
    static func namedEscapes(in source: String) -> [String] {
        var names: [String] = []
        var i = source.unicodeScalars.startIndex
        let scalars = source.unicodeScalars
        while i < scalars.endIndex {
            guard scalars[i] == "\\" else { scalars.formIndex(after: &i); continue }
            let next = scalars.index(after: i)
            guard next < scalars.endIndex else { break }
            if scalars[next] == "N", scalars.index(after: next) < scalars.endIndex,
               scalars[scalars.index(after: next)] == "{" {
                let open = scalars.index(after: next)
                guard let close = scalars[open...].firstIndex(of: "}") else { break }
                names.append(String(scalars[scalars.index(after: open)..<close]))
                i = scalars.index(after: close)
            } else {
                i = scalars.index(after: next)
            }
        }
        return names
    }

    /// True when Swift's regular expressions match some character for `\N{name}`: a
    /// character is looked for whose Unicode name equals `name` loosely (case, spaces,
    /// underscores and hyphens aside), and the expression must match it.
    static func known(_ name: String) -> Bool {
        guard let scalar = candidate(name),
              let regex = try? Regex("\\N{\(name)}") else { return false }
        return (try? regex.wholeMatch(in: String(Character(scalar)))) != nil
    }

    private static func candidate(_ name: String) -> Unicode.Scalar? {
        if name.hasPrefix("U+") {
            return UInt32(name.dropFirst(2), radix: 16).flatMap(Unicode.Scalar.init)
        }
        let wanted = name.utf8.compactMap(looseByte)
        guard !wanted.isEmpty else { return nil }
        for value in UInt32(0)...0x10FFFF {
            guard let scalar = Unicode.Scalar(value), let n = scalar.properties.name,
                  looselyEqual(n, wanted) else { continue }
            return scalar
        }
        return nil
    }

    /// `name` compared with `wanted` (already loose), without a copy of `name`.
    private static func looselyEqual(_ name: String, _ wanted: [UInt8]) -> Bool {
        var k = 0
        for b in name.utf8 {
            guard let c = looseByte(b) else { continue }
            guard k < wanted.count, wanted[k] == c else { return false }
            k += 1
        }
        return k == wanted.count
    }

    /// Upper case; nil for the spaces, underscores and hyphens that loose matching ignores.
    private static func looseByte(_ b: UInt8) -> UInt8? {
        switch b {
        case UInt8(ascii: " "), UInt8(ascii: "_"), UInt8(ascii: "-"): return nil
        case UInt8(ascii: "a")...UInt8(ascii: "z"): return b - 32
        default: return b
        }
    }
}
