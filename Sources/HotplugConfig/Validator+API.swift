import JSONKit
#if canImport(Glibc)
import Glibc
#endif
// Validation of the control API issue's keys: rule-set options, `removable`,
// evdev rule sets (the array form of `evdevPassthrough`) and `general`.

/// Which kind of devices a rule set is for.
enum RuleBus {
    case usb, pci, evdev

    var matchKeys: [String] {
        switch self {
        case .usb: ObjectKind.usbMatchKeys + ["removable"]
        case .pci: ObjectKind.pciMatchKeys
        case .evdev: ObjectKind.evdevMatchKeys
        }
    }

    /// The error for a crosvm VM as the target (PCI and evdev need QEMU).
    func crosvmMessage(_ vm: String, line: Int) -> String {
        switch self {
        case .pci, .usb:
            "crosvm does not support PCI hot-plug; VM \(quoted(vm)) (line \(line)) is a crosvm VM: target a QEMU VM, or disable this rule set"
        case .evdev:
            "evdev passthrough needs QEMU; VM \(quoted(vm)) (line \(line)) is a crosvm VM: target a QEMU VM, or disable this rule set"
        }
    }
}

extension ObjectKind {
    static let usbRuleSetOptionKeys = ["allowedVms", "tag", "skipOnSuspend"]
    static let pciRuleSetOptionKeys = ["allowedVms", "tag", "skipOnSuspend", "pciIommuAddAll", "pciIommuSkipIfShared"]
    static let evdevMatchKeys = ["name", "pathTag", "kind"]
    static let generalKeys = ["api", "persistency", "statePath", "crosvm"]
    static let apiKeys = ["enable", "transports", "unixSocket", "unixSocketUser", "unixSocketGroup", "unixSocketMode",
                          "host", "port", "allowedCids"]
}

extension ConfigValidator {
    /// `allowedVms`, `tag`, `skipOnSuspend` and the PCI IOMMU keys of a rule set.
    mutating func ruleSetOptions(_ view: ObjectView, context: VMContext, bus: RuleBus, disable: Bool,
                                 targetVm: String?) -> RuleSetOptions {
        var options = RuleSetOptions()
        options.tag = string(view, "tag")
        if let tag = options.tag, tag.isEmpty, let m = view.member("tag") {
            error(m.value, path: appendingKey(view.path, "tag"), "tag must not be empty")
        }
        options.skipOnSuspend = bool(view, "skipOnSuspend") ?? false
        options.pciIommuAddAll = bool(view, "pciIommuAddAll") ?? false
        options.pciIommuSkipIfShared = bool(view, "pciIommuSkipIfShared") ?? false
        if options.pciIommuAddAll && options.pciIommuSkipIfShared, let m = view.member("pciIommuSkipIfShared") {
            error(m.value, path: appendingKey(view.path, "pciIommuSkipIfShared"),
                  "pciIommuSkipIfShared and pciIommuAddAll contradict each other: set at most one of them")
        }
        if bus == .evdev { options.pcieBusPrefix = string(view, "pcieBusPrefix") }
        guard let m = view.member("allowedVms") else { return options }
        let path = appendingKey(view.path, "allowedVms")
        guard case .array(let elements) = m.value.value else {
            error(m.value, path: path, "expected an array of VM names like [\"vm1\", \"vm2\"], found \(m.value.foundDescription)")
            return options
        }
        if elements.isEmpty {
            error(m.value, path: path, "allowedVms must name at least one VM")
        }
        var listed = Set<String>()
        for (i, node) in elements.enumerated() {
            let itemPath = appendingIndex(path, i)
            guard case .string(let name) = node.value else {
                error(node, path: itemPath, "expected a VM name (a string), found \(node.foundDescription)")
                continue
            }
            if !listed.insert(name).inserted {
                error(node, path: itemPath, "VM \(quoted(name)) is listed twice in allowedVms")
                continue
            }
            if let vm = checkTarget(name, node: node, path: itemPath, context: context, key: "allowedVms"),
               bus == .pci, !disable, vm.type == .crosvm {
                error(node, path: itemPath, bus.crosvmMessage(name, line: vm.line))
            }
            options.allowedVms.append(name)
        }
        if let targetVm, !options.allowedVms.isEmpty, !options.allowedVms.contains(targetVm), let t = view.member("targetVm") {
            error(t.value, path: appendingKey(view.path, "targetVm"),
                  "targetVm \(quoted(targetVm)) is not one of allowedVms; with allowedVms, targetVm is the default choice and must be listed there")
        }
        return options
    }

    /// `removable`: an array of "fixed", "removable", "unknown".
    mutating func removable(_ view: ObjectView) -> Set<String>? {
        guard let m = view.member("removable") else { return nil }
        let path = appendingKey(view.path, "removable")
        let expected = "expected an array of \"fixed\", \"removable\", \"unknown\""
        guard case .array(let elements) = m.value.value else {
            var message = "\(expected), found \(m.value.foundDescription)"
            if case .string(let s) = m.value.value { message += "; write [\(quoted(s))]" }
            error(m.value, path: path, message)
            return nil
        }
        if elements.isEmpty { error(m.value, path: path, "\(expected); an empty array matches no device") }
        var result = Set<String>()
        for (i, node) in elements.enumerated() {
            let itemPath = appendingIndex(path, i)
            guard case .string(let s) = node.value else {
                error(node, path: itemPath, "\(expected), found \(node.foundDescription)")
                continue
            }
            guard ["fixed", "removable", "unknown"].contains(s) else {
                var message = "unknown port kind \(quoted(s)): \(expected)"
                if let suggestion = closestMatch(s, among: ["fixed", "removable", "unknown"]) {
                    message += "; did you mean \(quoted(suggestion))?"
                }
                error(node, path: itemPath, message)
                continue
            }
            result.insert(s)
        }
        return result
    }

    /// `evdevPassthrough` as an array of rule sets.
    mutating func evdevRuleSets(_ top: ObjectView, context: VMContext) -> [EvdevRuleSet] {
        var sets: [EvdevRuleSet] = []
        for (node, path) in array(top, "evdevPassthrough") {
            guard let view = object(node, path: path, kind: .evdevRuleSet, what: "an evdev rule set") else { continue }
            if let set = ruleSet(view, context: context, entryKind: .evdevEntry, bus: .evdev, entry: { v, e in v.evdevRule(e) }) {
                sets.append(set)
            }
        }
        return sets
    }

    mutating func evdevRule(_ view: ObjectView) -> EvdevRule? {
        let errorsBefore = diagnostics.count
        var kind = string(view, "kind")
        if let k = kind, !EvdevRule.kinds.contains(k), let m = view.member("kind") {
            var message = "unknown input kind \(quoted(k)): expected one of " + EvdevRule.kinds.joined(separator: ", ")
            if let suggestion = closestMatch(k, among: EvdevRule.kinds) { message += "; did you mean \(quoted(suggestion))?" }
            error(m.value, path: appendingKey(view.path, "kind"), message)
            kind = nil
        }
        let rule = EvdevRule(name: pattern(view, "name"), pathTag: pattern(view, "pathTag"), kind: kind,
                             description: string(view, "description"), disable: bool(view, "disable") ?? false,
                             location: view.location)
        return diagnostics.count == errorsBefore ? rule : nil
    }

    /// `general`.
    mutating func general(_ view: ObjectView) -> GeneralSettings {
        var settings = GeneralSettings()
        settings.persistency = bool(view, "persistency") ?? true
        settings.statePath = absolutePath(view, "statePath") ?? GeneralSettings.defaultStatePath
        settings.crosvm = nonEmptyPath(view, "crosvm")
        if let m = view.member("api"),
           let api = object(m.value, path: appendingKey(view.path, "api"), kind: .api, what: "the control API settings") {
            settings.api = apiSettings(api)
        }
        return settings
    }

    mutating func nonEmptyPath(_ view: ObjectView, _ key: String) -> String? {
        guard let s = string(view, key) else { return nil }
        if s.isEmpty, let m = view.member(key) {
            error(m.value, path: appendingKey(view.path, key), "\(key) must not be empty (leave the key out for the default)")
            return nil
        }
        if s.utf8.contains(0), let m = view.member(key) {
            error(m.value, path: appendingKey(view.path, key), "\(key) must not contain a NUL character (\\u0000)")
            return nil
        }
        return s
    }

    /// A path that must be absolute: relative, it would depend on the daemon's working folder.
    mutating func absolutePath(_ view: ObjectView, _ key: String) -> String? {
        guard let s = nonEmptyPath(view, key) else { return nil }
        if !s.hasPrefix("/"), let m = view.member(key) {
            error(m.value, path: appendingKey(view.path, key), "expected an absolute path, found \(quoted(s))")
            return nil
        }
        return s
    }

    /// Why `path` cannot name a Unix socket, or nil: empty, a NUL character, or longer than
    /// the 107 bytes of `sun_path` (the kernel's limit, which would cut it short).
    static func socketPathProblem(_ path: String) -> String? {
        if path.isEmpty { return "must not be empty" }
        if !path.hasPrefix("/") { return "must be an absolute path, found \(quoted(path))" }
        if path.utf8.contains(0) { return "must not contain a NUL character (\\u0000)" }
        if path.utf8.count > 107 { return "path is \(path.utf8.count) bytes long; a Unix socket's path has at most 107" }
        return nil
    }

    mutating func apiSettings(_ view: ObjectView) -> APISettings {
        var api = APISettings()
        api.enable = bool(view, "enable") ?? true
        if let m = view.member("transports") {
            api.transports = []
            let items = array(view, "transports")
            if items.isEmpty, case .array = m.value.value {
                error(m.value, path: appendingKey(view.path, "transports"),
                      #"transports must name at least one transport: "unix", "vsock" or "tcp" (to turn the API off, set "enable": false)"#)
            }
            for (node, path) in items {
                guard case .string(let s) = node.value, let t = APITransport(rawValue: s) else {
                    var message = "expected \"unix\", \"vsock\" or \"tcp\", found \(node.foundDescription)"
                    if case .string(let s) = node.value,
                       let suggestion = closestMatch(s, among: APITransport.allCases.map(\.rawValue)) {
                        message += "; did you mean \(quoted(suggestion))?"
                    }
                    error(node, path: path, message)
                    continue
                }
                if api.transports.contains(t) {
                    error(node, path: path, "transport \(quoted(s)) is listed twice")
                    continue
                }
                api.transports.append(t)
            }
        }
        api.unixSocket = absolutePath(view, "unixSocket") ?? APISettings.defaultUnixSocket
        if let m = view.member("unixSocket"), let problem = Self.socketPathProblem(api.unixSocket) {
            error(m.value, path: appendingKey(view.path, "unixSocket"), "unixSocket \(problem)")
        }
        api.unixSocketUser = nonEmptyPath(view, "unixSocketUser")
        api.unixSocketGroup = nonEmptyPath(view, "unixSocketGroup")
        if let mode = socketMode(view) { api.unixSocketMode = mode }
        api.host = nonEmptyPath(view, "host") ?? api.host
        if let m = view.member("host"), case .string = m.value.value, !api.host.isEmpty, !Self.isIPAddress(api.host) {
            error(m.value, path: appendingKey(view.path, "host"),
                  "expected an IPv4 or IPv6 address (or \"localhost\") to listen on, found \(quoted(api.host))")
        }
        api.port = integer(view, "port", range: 1...65535) ?? api.port
        for (node, path) in array(view, "allowedCids") {
            guard case .number(let n) = node.value, n.isIntegerLiteral, let v = n.integer, (0...0xFFFF_FFFF).contains(v) else {
                error(node, path: path, "expected a vsock CID (an integer from 0 to 4294967295), found \(node.foundDescription)")
                continue
            }
            api.allowedCids.append(UInt32(v))
        }
        if api.transports.contains(.vsock), api.allowedCids.isEmpty, let m = view.member("transports") {
            error(m.value, path: appendingKey(view.path, "transports"),
                  "the vsock transport needs \"allowedCids\" (the VMs' CIDs that may connect)")
        }
        return api
    }

    /// `unixSocketMode`: an octal string ("0660"); a JSON number is refused (decimal or octal?).
    mutating func socketMode(_ view: ObjectView) -> UInt32? {
        guard let m = view.member("unixSocketMode") else { return nil }
        let path = appendingKey(view.path, "unixSocketMode")
        let expected = "expected permission bits as an octal string like \"0660\""
        switch m.value.value {
        case .string(let s):
            guard !s.isEmpty, s.count <= 4, s.allSatisfy({ ("0"..."7").contains($0) }), let v = UInt32(s, radix: 8) else {
                error(m.value, path: path, "\(expected), found \(quoted(s))")
                return nil
            }
            return v
        case .number(let n):
            // Refused whatever its value: 440 may mean 0440 or 0670 (decimal 440), and a wrong
            // guess opens the API to the wrong users.
            error(m.value, path: path, "\(expected), found \(truncated(n.text)) (JSON numbers are decimal: write \"0\(truncated(n.text))\" for octal \(truncated(n.text)))")
            return nil
        default:
            error(m.value, path: path, "\(expected), found \(m.value.foundDescription)")
            return nil
        }
    }

    /// An address the API's TCP listener can bind: an IPv4 or IPv6 literal, or `localhost`.
    static func isIPAddress(_ host: String) -> Bool {
        if host == "localhost" { return true }
        var v4 = in_addr(), v6 = in6_addr()
        return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
    }
}
