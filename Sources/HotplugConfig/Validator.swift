import JSONKit
// Turns a parsed JSON tree into a `Configuration`, collecting every problem.

/// The kinds of object the configuration has, with their keys.
enum ObjectKind {
    case top, usbRuleSet, pciRuleSet, usbEntry, pciEntry, evdev, vm, usbAuthorization
    case evdevRuleSet, evdevEntry, general, api

    static let usbMatchKeys = [
        "vendorId", "productId", "vendorName", "productName", "bus", "port",
        "interfaceClass", "interfaceSubclass", "interfaceProtocol",
        "deviceClass", "deviceSubclass", "deviceProtocol",
    ]
    static let pciMatchKeys = ["address", "vendorId", "deviceId", "deviceClass", "deviceSubclass", "deviceProgIf"]
    static let ruleSetKeys = ["description", "targetVm", "allow", "deny", "disable"]

    var keys: [String] {
        switch self {
        case .top: return ["usbPassthrough", "pciPassthrough", "evdevPassthrough", "vms", "general", "usbAuthorization"]
        case .usbRuleSet: return Self.ruleSetKeys + Self.usbRuleSetOptionKeys
        case .pciRuleSet: return Self.ruleSetKeys + Self.pciRuleSetOptionKeys
        case .evdevRuleSet: return Self.ruleSetKeys + ["pcieBusPrefix"]
        case .evdevEntry: return Self.evdevMatchKeys + ["description", "disable"]
        case .general: return Self.generalKeys
        case .api: return Self.apiKeys
        case .usbEntry: return Self.usbMatchKeys + ["removable", "description", "disable"]
        case .pciEntry: return Self.pciMatchKeys + ["description", "disable"]
        case .evdev: return ["disable", "enable", "pcieBusPrefix", "targetVm"]
        case .vm: return ["name", "type", "socket"]
        case .usbAuthorization: return Self.usbAuthorizationKeys
        }
    }

    /// A specific explanation for a key that belongs somewhere else.
    func misplacedKeyHint(_ key: String) -> String? {
        switch self {
        case .usbEntry:
            if Self.pciMatchKeys.contains(key) {
                let alternative = ["deviceId": "productId", "deviceProgIf": "deviceProtocol"][key]
                return "it is a PCI key, not valid in a USB entry"
                    + (alternative.map { "; did you mean \(quoted($0))?" } ?? "")
            }
            if ["targetVm", "allow", "deny"].contains(key) {
                return "it belongs to the rule set, not to an allow/deny entry"
            }
        case .pciEntry:
            if Self.usbMatchKeys.contains(key) {
                let alternative = ["productId": "deviceId", "deviceProtocol": "deviceProgIf"][key]
                return "it is a USB key, not valid in a PCI entry"
                    + (alternative.map { "; did you mean \(quoted($0))?" } ?? "")
            }
            if ["targetVm", "allow", "deny"].contains(key) {
                return "it belongs to the rule set, not to an allow/deny entry"
            }
        case .usbRuleSet, .pciRuleSet:
            if (Self.usbMatchKeys + Self.pciMatchKeys).contains(key) {
                return "it is a matching field: put it inside an entry of \"allow\" or \"deny\""
            }
        case .top:
            if Self.ruleSetKeys.contains(key) || Self.usbMatchKeys.contains(key) || Self.pciMatchKeys.contains(key) {
                return "it is not a top-level key: put it inside a rule set of \"usbPassthrough\" or \"pciPassthrough\""
            }
            if ["name", "type", "socket"].contains(key) {
                return "it is not a top-level key: put it inside an entry of \"vms\""
            }
            if Self.usbAuthorizationKeys.contains(key) {
                return "it is not a top-level key: put it inside \"usbAuthorization\""
            }
        case .evdev, .vm, .evdevRuleSet, .evdevEntry, .general, .api, .usbAuthorization:
            break
        }
        return nil
    }
}

/// Case-insensitive Levenshtein distance; nil when it is more than `limit`. Only the band
/// |i - j| <= limit of the table is worked out (the rest is more than `limit` anyway): the
/// work grows with the words' length times the limit, not with the square of their length.
func editDistance(_ a: String, _ b: String, limit: Int) -> Int? {
    let x = Array(a.lowercased().unicodeScalars), y = Array(b.lowercased().unicodeScalars)
    let n = x.count, m = y.count
    if abs(n - m) > limit { return nil }
    if n == 0 || m == 0 { return max(n, m) }
    let beyond = limit + 1
    var previous = [Int](repeating: beyond, count: m + 1)
    for j in 0...min(m, limit) { previous[j] = j }
    var current = [Int](repeating: beyond, count: m + 1)
    for i in 1...n {
        let lo = max(1, i - limit), hi = min(m, i + limit)
        // Left of the band (column 0 while it is in reach), and right of it below: beyond.
        current[lo - 1] = lo == 1 && i <= limit ? i : beyond
        var rowMin = current[lo - 1]
        for j in lo...hi {
            let cost = x[i - 1] == y[j - 1] ? 0 : 1
            let v = min(previous[j - 1] + cost, previous[j] + 1, current[j - 1] + 1, beyond)
            current[j] = v
            rowMin = min(rowMin, v)
        }
        if hi < m { current[hi + 1] = beyond }
        if rowMin > limit { return nil }
        swap(&previous, &current)
    }
    let d = previous[m]
    return d <= limit ? d : nil
}

/// The longest word (in characters) that gets a suggestion: no typo of a key or a VM name is
/// longer, and it keeps the work of each suggestion small.
let longestSuggestedWord = 64

/// The closest of `candidates` to `word`, when it is close enough to be a likely typo:
/// a case-only difference, or at most 2 edits and at most a third of the candidate.
/// None for a word longer than `longestSuggestedWord` characters.
func closestMatch(_ word: String, among candidates: [String]) -> String? {
    let limit = 2
    // A character is at most 4 UTF-8 bytes: the byte counts rule out the long ones at no cost.
    let longestBytes = 4 * (longestSuggestedWord + limit)
    guard word.utf8.count <= longestBytes, word.unicodeScalars.count <= longestSuggestedWord else { return nil }
    var best: (String, Int)?
    for candidate in candidates where candidate.utf8.count <= longestBytes {
        guard let d = editDistance(word, candidate, limit: limit) else { continue }
        guard d == 0 || d * 3 <= candidate.count else { continue }
        if best == nil || d < (best?.1 ?? Int.max) { best = (candidate, d) }
    }
    return best?.0
}

/// An object being read: its node, its path and its members by key.
struct ObjectView {
    var line: Int
    var column: Int
    var path: String
    var object: JSONObject

    var location: SourceLocation { SourceLocation(line: line, column: column, path: path) }

    /// The member, unless absent or `null`.
    func member(_ key: String) -> JSONMember? {
        guard let m = object.member(key), !m.value.isNull else { return nil }
        return m
    }

    /// True when the key is present with a non-null value.
    func has(_ key: String) -> Bool { member(key) != nil }
}

/// A VM as seen by the validator, for reference checks (kept even when the VM has other errors).
struct KnownVM {
    var name: String
    var type: VMType?
    var line: Int
    var column: Int
}

struct ConfigValidator {
    let file: String
    var diagnostics: [Diagnostic] = []
    /// The "did you mean" of a diagnostic (by its index in `diagnostics`), worked out only if
    /// it is reported (`reported(limit:)`): its candidates may be every VM of the file.
    var suggestions: [Int: (word: String, candidates: [String])] = [:]

    init(file: String) {
        self.file = file
    }

    // MARK: - Reporting

    mutating func error(line: Int, column: Int, path: String, _ message: String) {
        diagnostics.append(Diagnostic(file: file, line: line, column: column, path: path, message: message))
    }

    mutating func error(_ node: JSONNode, path: String, _ message: String) {
        error(line: node.line, column: node.column, path: path, message)
    }

    /// The first `limit` diagnostics in file order (by line, then column; stable), with their
    /// suggestions.
    func reported(limit: Int) -> [Diagnostic] {
        let sorted = diagnostics.enumerated().sorted { a, b in
            (a.element.line, a.element.column, a.offset) < (b.element.line, b.element.column, b.offset)
        }
        return sorted.prefix(limit).map { index, diagnostic in
            var d = diagnostic
            if let s = suggestions[index], let match = closestMatch(s.word, among: s.candidates) {
                d.message += "; did you mean \(quoted(match))?"
            }
            return d
        }
    }

    // MARK: - Objects

    /// Checks that `node` is an object and reports its unknown keys.
    mutating func object(_ node: JSONNode, path: String, kind: ObjectKind, what: String) -> ObjectView? {
        guard case .object(let object) = node.value else {
            error(node, path: path, "expected an object (\(what)), found \(node.foundDescription)")
            return nil
        }
        let known = kind.keys
        for member in object.members where !known.contains(member.key) {
            var message: String
            if let hint = kind.misplacedKeyHint(member.key) {
                message = "unknown key \(quoted(member.key)): \(hint)"
            } else if let suggestion = closestMatch(member.key, among: known) {
                message = "unknown key \(quoted(member.key)); did you mean \(quoted(suggestion))?"
            } else {
                message = "unknown key \(quoted(member.key)); valid keys here: " + known.joined(separator: ", ")
            }
            error(line: member.keyLine, column: member.keyColumn, path: appendingKey(path, member.key), message)
        }
        return ObjectView(line: node.line, column: node.column, path: path, object: object)
    }

    /// Reports a missing (or null) required key at the object's opening brace.
    mutating func require(_ view: ObjectView, _ key: String, what: String) {
        if let m = view.object.member(key), m.value.isNull {
            error(m.value, path: appendingKey(view.path, key), "\(quoted(key)) is required (\(what)); found null")
        } else if view.object.member(key) == nil {
            error(line: view.line, column: view.column, path: view.path, "missing required key \(quoted(key)) (\(what))")
        }
    }

    // MARK: - Scalars

    mutating func string(_ view: ObjectView, _ key: String) -> String? {
        guard let m = view.member(key) else { return nil }
        guard case .string(let s) = m.value.value else {
            error(m.value, path: appendingKey(view.path, key), "expected a string, found \(m.value.foundDescription)")
            return nil
        }
        return s
    }

    mutating func bool(_ view: ObjectView, _ key: String) -> Bool? {
        guard let m = view.member(key) else { return nil }
        guard case .bool(let b) = m.value.value else {
            error(m.value, path: appendingKey(view.path, key), "expected true or false, found \(m.value.foundDescription)")
            return nil
        }
        return b
    }

    mutating func integer(_ view: ObjectView, _ key: String, range: ClosedRange<Int>) -> Int? {
        guard let m = view.member(key) else { return nil }
        let path = appendingKey(view.path, key)
        let expected = "expected an integer from \(range.lowerBound) to \(range.upperBound)"
        guard case .number(let n) = m.value.value else {
            error(m.value, path: path, "\(expected), found \(m.value.foundDescription)")
            return nil
        }
        guard n.isIntegerLiteral else {
            error(m.value, path: path, "\(expected), found non-integer number \(truncated(n.text))")
            return nil
        }
        guard let value = n.integer, range.contains(value) else {
            error(m.value, path: path, "\(truncated(n.text)) is out of range: \(expected)")
            return nil
        }
        return value
    }

    mutating func byte(_ view: ObjectView, _ key: String) -> UInt8? {
        integer(view, key, range: 0...255).flatMap { UInt8(exactly: $0) }
    }

    mutating func hexID(_ view: ObjectView, _ key: String) -> UInt16? {
        guard let m = view.member(key) else { return nil }
        let path = appendingKey(view.path, key)
        guard case .string(let s) = m.value.value else {
            error(m.value, path: path, "expected a hex string like \"046d\", found \(m.value.foundDescription)")
            return nil
        }
        guard let value = parseHexID(s) else {
            error(m.value, path: path, "invalid ID \(quoted(s)): expected 1 to 4 hex digits, optionally prefixed with 0x, like \"046d\"")
            return nil
        }
        return value
    }

    mutating func pciAddress(_ view: ObjectView, _ key: String) -> String? {
        guard let m = view.member(key) else { return nil }
        let path = appendingKey(view.path, key)
        guard case .string(let s) = m.value.value else {
            error(m.value, path: path, "expected a PCI address string like \"0000:00:14.3\", found \(m.value.foundDescription)")
            return nil
        }
        switch parsePCIAddress(s) {
        case .success(let canonical):
            return canonical
        case .failure(let problem):
            error(m.value, path: path, "invalid PCI address \(quoted(s)): \(problem.message)")
            return nil
        }
    }

    mutating func pattern(_ view: ObjectView, _ key: String) -> NamePattern? {
        guard let source = string(view, key), let m = view.member(key) else { return nil }
        if source.isEmpty {
            self.error(m.value, path: appendingKey(view.path, key),
                       "an empty pattern would match every device with a name: give part of the name, or leave \(quoted(key)) out")
            return nil
        }
        if let risk = NamePattern.backtrackingRisk(source) {
            self.error(m.value, path: appendingKey(view.path, key), "regular expression \(quoted(source)) \(risk)")
            return nil
        }
        do {
            return try NamePattern(source)
        } catch {
            self.error(m.value, path: appendingKey(view.path, key),
                       "invalid regular expression \(quoted(source)): \(regexErrorText(source))")
            return nil
        }
    }

    /// The elements of an array member with their paths; reports a non-array.
    mutating func array(_ view: ObjectView, _ key: String) -> [(node: JSONNode, path: String)] {
        guard let m = view.member(key) else { return [] }
        let path = appendingKey(view.path, key)
        guard case .array(let elements) = m.value.value else {
            error(m.value, path: path, "expected an array, found \(m.value.foundDescription)")
            return []
        }
        return elements.enumerated().map { ($0.element, appendingIndex(path, $0.offset)) }
    }

    // MARK: - The configuration

    mutating func configuration(_ root: JSONNode) -> Configuration? {
        guard let top = object(root, path: "$", kind: .top, what: "the configuration") else {
            return nil
        }
        var config = Configuration()

        // VMs first, so rule sets can be checked against them.
        var known: [String: KnownVM] = [:]
        var sockets: [String: (name: String?, line: Int)] = [:]
        for (node, path) in array(top, "vms") {
            guard let view = object(node, path: path, kind: .vm, what: "a VM") else { continue }
            if let vm = vmDefinition(view, known: &known, sockets: &sockets) { config.vms.append(vm) }
        }
        let namesInFileOrder = known.values.sorted { ($0.line, $0.column) < ($1.line, $1.column) }.map(\.name)
        let context = VMContext(known: known, names: namesInFileOrder)

        for (node, path) in array(top, "usbPassthrough") {
            guard let view = object(node, path: path, kind: .usbRuleSet, what: "a USB rule set") else { continue }
            if let set = ruleSet(view, context: context, entryKind: .usbEntry, bus: .usb, entry: { v, e in v.usbRule(e) }) {
                config.usbPassthrough.append(set)
            }
        }
        for (node, path) in array(top, "pciPassthrough") {
            guard let view = object(node, path: path, kind: .pciRuleSet, what: "a PCI rule set") else { continue }
            if let set = ruleSet(view, context: context, entryKind: .pciEntry, bus: .pci, entry: { v, e in v.pciRule(e) }) {
                config.pciPassthrough.append(set)
            }
        }
        if let m = top.member("evdevPassthrough"), !m.value.isNull {
            if case .array = m.value.value {
                config.evdevRuleSets = evdevRuleSets(top, context: context)
            } else if let view = object(m.value, path: appendingKey("$", "evdevPassthrough"), kind: .evdev,
                                        what: "the evdev passthrough settings, or an array of evdev rule sets") {
                config.evdevPassthrough = evdev(view, context: context)
            }
        }
        if let m = top.member("general"), !m.value.isNull,
           let view = object(m.value, path: appendingKey("$", "general"), kind: .general, what: "the general settings") {
            config.general = general(view)
        }
        config.usbAuthorization = usbAuthorization(top)
        return config
    }

    struct VMContext {
        var known: [String: KnownVM]
        /// Defined names, in file order.
        var names: [String]
    }

    /// One VM of `vms`; `known` (by name) and `sockets` (the VM, by name when it has a valid
    /// one, and line of each socket) gather the VMs before it, for duplicates.
    mutating func vmDefinition(_ view: ObjectView, known: inout [String: KnownVM],
                               sockets: inout [String: (name: String?, line: Int)]) -> VMDefinition? {
        let errorsBefore = diagnostics.count
        require(view, "name", what: "the VM's name, used by targetVm")
        require(view, "type", what: "\"qemu\" or \"crosvm\"")
        require(view, "socket", what: "the path of the VM's QMP or control socket")
        let name = string(view, "name")
        let socket = string(view, "socket")
        var type: VMType?
        if let typeName = string(view, "type"), let m = view.member("type") {
            type = VMType(rawValue: typeName)
            if type == nil {
                var message = "unknown VM type \(quoted(typeName)): expected \"qemu\" or \"crosvm\""
                if let suggestion = VMType.allCases.first(where: { $0.rawValue == typeName.lowercased() }) {
                    message += "; did you mean \(quoted(suggestion.rawValue))?"
                }
                error(m.value, path: appendingKey(view.path, "type"), message)
            }
        }
        if let socket, let m = view.member("socket") {
            if let problem = Self.socketPathProblem(socket) {
                error(m.value, path: appendingKey(view.path, "socket"), "VM socket \(problem)")
            } else if let first = sockets[socket] {
                // Events on a socket would all be credited to the first VM.
                let owner = first.name.map { "VM \(quoted($0)) (line \(first.line))" } ?? "the VM on line \(first.line)"
                error(m.value, path: appendingKey(view.path, "socket"), "VM socket \(quoted(socket)) is already the socket of \(owner)")
            } else {
                let valid = name.flatMap { $0.isEmpty || known[$0] != nil ? nil : $0 }
                sockets[socket] = (valid, view.line)
            }
        }
        if let name, let m = view.member("name") {
            if name.isEmpty {
                error(m.value, path: appendingKey(view.path, "name"), "VM name must not be empty")
            } else if let first = known[name] {
                error(m.value, path: appendingKey(view.path, "name"),
                      "duplicate VM name \(quoted(name)); the first VM with this name is on line \(first.line)")
            } else {
                known[name] = KnownVM(name: name, type: type, line: view.line, column: view.column)
            }
        }
        guard diagnostics.count == errorsBefore, let name, let type, let socket else { return nil }
        return VMDefinition(name: name, type: type, socket: socket, location: view.location)
    }

    /// Checks a `targetVm` value against the defined VMs; returns the VM when defined.
    mutating func checkTarget(_ name: String, node: JSONNode, path: String, context: VMContext,
                              key: String = "targetVm") -> KnownVM? {
        if let vm = context.known[name] { return vm }
        var message = "unknown VM \(quoted(name)) in \(key)"
        let listed = 10
        if context.names.isEmpty {
            message += " (no VMs are defined; add them under \"vms\")"
        } else {
            message += " (defined VMs: " + context.names.prefix(listed).map { quoted($0) }.joined(separator: ", ")
                + (context.names.count > listed ? " and \(context.names.count - listed) more)" : ")")
        }
        error(node, path: path, message)
        suggestions[diagnostics.count - 1] = (name, context.names)
        return nil
    }

    mutating func ruleSet<Rule>(_ view: ObjectView, context: VMContext, entryKind: ObjectKind, bus: RuleBus,
                                entry: (inout ConfigValidator, ObjectView) -> Rule?) -> RuleSet<Rule>? {
        let errorsBefore = diagnostics.count
        if bus == .usb || bus == .pci, view.has("allowedVms"), !view.has("targetVm") {
            // allowedVms alone is enough: its first VM is the default.
        } else {
            require(view, "targetVm", what: "the name of the VM the devices go to")
        }
        let description = string(view, "description")
        let disable = bool(view, "disable") ?? false
        var targetVm = string(view, "targetVm")
        if let targetVm, let m = view.member("targetVm") {
            let path = appendingKey(view.path, "targetVm")
            if let vm = checkTarget(targetVm, node: m.value, path: path, context: context),
               bus != .usb, !disable, vm.type == .crosvm {
                error(m.value, path: path, bus.crosvmMessage(targetVm, line: vm.line))
            }
        }
        let options = ruleSetOptions(view, context: context, bus: bus, disable: disable, targetVm: targetVm)
        if targetVm == nil { targetVm = options.allowedVms.first }
        let allow = entries(view, "allow", kind: entryKind, matchKeys: bus.matchKeys, what: "an allow entry", entry: entry)
        let deny = entries(view, "deny", kind: entryKind, matchKeys: bus.matchKeys, what: "a deny entry", entry: entry)
        guard diagnostics.count == errorsBefore, let targetVm else { return nil }
        return RuleSet(description: description, targetVm: targetVm, allow: allow, deny: deny,
                       disable: disable, location: view.location, options: options)
    }

    /// The matching entries of an array member (`allow`, `deny`, `hostAllow`); an entry
    /// with no matching field (it would match every device) is an error.
    mutating func entries<Rule>(_ view: ObjectView, _ key: String, kind: ObjectKind, matchKeys: [String], what: String,
                                entry: (inout ConfigValidator, ObjectView) -> Rule?) -> [Rule] {
        var list: [Rule] = []
        for (node, path) in array(view, key) {
            guard let entryView = object(node, path: path, kind: kind, what: what) else { continue }
            let allKeysKnown = entryView.object.members.allSatisfy { kind.keys.contains($0.key) }
            if allKeysKnown && !matchKeys.contains(where: entryView.has) {
                error(line: entryView.line, column: entryView.column, path: path,
                      "entry has no matching field; it would match every device (use one or more of: \(matchKeys.joined(separator: ", ")))")
            }
            if let rule = entry(&self, entryView) { list.append(rule) }
        }
        return list
    }

    mutating func usbRule(_ view: ObjectView) -> USBRule? {
        let errorsBefore = diagnostics.count
        let rule = USBRule(
            vendorId: hexID(view, "vendorId"),
            productId: hexID(view, "productId"),
            vendorName: pattern(view, "vendorName"),
            productName: pattern(view, "productName"),
            bus: integer(view, "bus", range: 0...255),
            port: integer(view, "port", range: 0...255),
            interfaceClass: byte(view, "interfaceClass"),
            interfaceSubclass: byte(view, "interfaceSubclass"),
            interfaceProtocol: byte(view, "interfaceProtocol"),
            deviceClass: byte(view, "deviceClass"),
            deviceSubclass: byte(view, "deviceSubclass"),
            deviceProtocol: byte(view, "deviceProtocol"),
            removable: removable(view),
            description: string(view, "description"),
            disable: bool(view, "disable") ?? false,
            location: view.location)
        return diagnostics.count == errorsBefore ? rule : nil
    }

    mutating func pciRule(_ view: ObjectView) -> PCIRule? {
        let errorsBefore = diagnostics.count
        let rule = PCIRule(
            address: pciAddress(view, "address"),
            vendorId: hexID(view, "vendorId"),
            deviceId: hexID(view, "deviceId"),
            deviceClass: byte(view, "deviceClass"),
            deviceSubclass: byte(view, "deviceSubclass"),
            deviceProgIf: byte(view, "deviceProgIf"),
            description: string(view, "description"),
            disable: bool(view, "disable") ?? false,
            location: view.location)
        return diagnostics.count == errorsBefore ? rule : nil
    }

    mutating func evdev(_ view: ObjectView, context: VMContext) -> EvdevPassthrough? {
        let errorsBefore = diagnostics.count
        // `"enable": false` is the reference's other spelling of `"disable": true`.
        let disable = (bool(view, "disable") ?? false) || !(bool(view, "enable") ?? true)
        if !disable {
            require(view, "targetVm", what: "the QEMU VM that gets the input devices")
        }
        let prefix = string(view, "pcieBusPrefix")
        let targetVm = string(view, "targetVm")
        if let targetVm, let m = view.member("targetVm") {
            let path = appendingKey(view.path, "targetVm")
            if let vm = checkTarget(targetVm, node: m.value, path: path, context: context),
               !disable, vm.type == .crosvm {
                error(m.value, path: path,
                      "evdev passthrough needs QEMU; VM \(quoted(targetVm)) (line \(vm.line)) is a crosvm VM: target a QEMU VM, or set \"disable\": true")
            }
        }
        guard diagnostics.count == errorsBefore else { return nil }
        return EvdevPassthrough(disable: disable, pcieBusPrefix: prefix, targetVm: targetVm ?? "", location: view.location)
    }
}

// MARK: - Value formats

/// `"046d"`, `"0x046D"`, `"46d"` -> 0x046d; nil unless 1-4 hex digits after an optional `0x`.
func parseHexID(_ text: String) -> UInt16? {
    var digits = Substring(text)
    if digits.hasPrefix("0x") || digits.hasPrefix("0X") { digits = digits.dropFirst(2) }
    guard (1...4).contains(digits.utf8.count), digits.utf8.allSatisfy(isHexDigit) else { return nil }
    return UInt16(digits, radix: 16)
}

private func isHexDigit(_ b: UInt8) -> Bool {
    (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9")) || (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "f"))
        || (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "F"))
}

struct PCIAddressProblem: Error {
    var message: String
}

/// `dddd:bb:dd.f` or `bb:dd.f` (hex) -> canonical lower-case `dddd:bb:dd.f`, as the kernel names
/// devices (`%04x`: a domain past ffff, such as Intel VMD's 10000, has more digits).
func parsePCIAddress(_ text: String) -> Result<String, PCIAddressProblem> {
    let format = PCIAddressProblem(message: "expected \"dddd:bb:dd.f\" or \"bb:dd.f\" in hex, like \"0000:00:14.3\"")
    let parts = text.split(separator: ":", omittingEmptySubsequences: false)
    guard parts.count == 2 || parts.count == 3, let last = parts.last else { return .failure(format) }
    let slotParts = last.split(separator: ".", omittingEmptySubsequences: false)
    guard slotParts.count == 2 else { return .failure(format) }
    let domainText = parts.count == 3 ? parts[0] : "0"
    let busText = parts[parts.count - 2]
    func field(_ s: Substring, maxDigits: Int) -> UInt32? {
        guard (1...maxDigits).contains(s.utf8.count), s.utf8.allSatisfy(isHexDigit) else { return nil }
        return UInt32(s, radix: 16)
    }
    guard let domain = field(domainText, maxDigits: 8), let bus = field(busText, maxDigits: 2),
          let device = field(slotParts[0], maxDigits: 2), let function = field(slotParts[1], maxDigits: 1)
    else { return .failure(format) }
    if device > 0x1F {
        return .failure(PCIAddressProblem(message: "device \(slotParts[0]) is out of range: expected 00 to 1f"))
    }
    if function > 7 {
        return .failure(PCIAddressProblem(message: "function \(slotParts[1]) is out of range: expected 0 to 7"))
    }
    let canonical = "\(hex(domain, width: 4)):\(hex(bus, width: 2)):\(hex(device, width: 2)).\(hex(function, width: 1))"
    return .success(canonical.lowercased())
}

/// A readable reason why `source` does not compile. NSRegularExpression's own
/// error on Linux says only "The value is invalid", so ask Swift's Regex parser,
/// whose messages say what was expected; a pattern it compiles may still name a
/// character that does not exist (`\N{NOPE}`, `CharacterNames`).
func regexErrorText(_ source: String) -> String {
    if #available(macOS 13, *) {
        do {
            _ = try Regex(source)
        } catch {
            return String(describing: error)
        }
    }
    if let unknown = CharacterNames.firstUnknown(in: source) {
        return String(describing: UnknownCharacterName(escape: unknown))
    }
    return "the Swift Regex engine rejects it"
}
