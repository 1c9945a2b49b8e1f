import JSONKit
extension Configuration {
    /// A one-line summary for `vhotplug check`, such as
    /// `ok: 1 USB rule set (3 allow, 2 deny entries), 1 PCI rule set (2 allow, 0 deny entries),
    /// evdev passthrough disabled, 1 VM (vm1: qemu)`.
    ///
    /// Counts include disabled rule sets and entries.
    public var summary: String {
        // Names with control characters are quoted so the summary stays on one line.
        func name(_ text: String) -> String {
            text.unicodeScalars.contains { $0.properties.generalCategory == .control } ? quoted(text) : text
        }
        func count(_ n: Int, _ noun: String) -> String { "\(n) \(noun)\(n == 1 ? "" : "s")" }
        func ruleSets<R>(_ sets: [RuleSet<R>], _ kind: String) -> String {
            let allow = sets.reduce(0) { $0 + $1.allow.count }
            let deny = sets.reduce(0) { $0 + $1.deny.count }
            return "\(count(sets.count, "\(kind) rule set")) (\(allow) allow, \(deny) deny entries)"
        }
        let evdev: String
        switch evdevPassthrough {
        case nil where !evdevRuleSets.isEmpty:
            // The array form: rule sets of their own.
            evdev = ruleSets(evdevRuleSets, "evdev")
        case nil: evdev = "no evdev passthrough"
        case let e? where e.disable: evdev = "evdev passthrough disabled"
        case let e?: evdev = "evdev passthrough to \(name(e.targetVm))"
        }
        var vmPart = count(vms.count, "VM")
        if !vms.isEmpty {
            vmPart += " (" + vms.map { "\(name($0.name)): \($0.type.rawValue)" }.joined(separator: ", ") + ")"
        }
        var parts = [ruleSets(usbPassthrough, "USB"), ruleSets(pciPassthrough, "PCI"), evdev, vmPart]
        if let a = usbAuthorization {
            parts.append(a.enable ? "USB authorization on (\(a.hostAllow.count) hostAllow entr\(a.hostAllow.count == 1 ? "y" : "ies")\(a.deauthorizeUnmatched ? ", unmatched de-authorized" : ""))" : "USB authorization off")
        }
        return "ok: " + parts.joined(separator: ", ")
    }
}
