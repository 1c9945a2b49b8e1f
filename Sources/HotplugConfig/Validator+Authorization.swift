import JSONKit
// `usbAuthorization`: validated like the rest (Model+Authorization.swift).

extension ObjectKind {
    static let usbAuthorizationKeys = ["enable", "deauthorizeUnmatched", "hostAllow"]
}

extension ConfigValidator {
    /// `usbAuthorization` {enable, deauthorizeUnmatched, hostAllow [USB entries]}; nil when absent.
    mutating func usbAuthorization(_ top: ObjectView) -> USBAuthorization? {
        guard let m = top.member("usbAuthorization"),
              let view = object(m.value, path: appendingKey("$", "usbAuthorization"), kind: .usbAuthorization,
                                what: "the USB authorization settings: enable, deauthorizeUnmatched, hostAllow")
        else { return nil }
        let errorsBefore = diagnostics.count
        let enable = bool(view, "enable") ?? false
        let deauthorizeUnmatched = bool(view, "deauthorizeUnmatched") ?? false
        let hostAllow = entries(view, "hostAllow", kind: .usbEntry, matchKeys: RuleBus.usb.matchKeys, what: "a hostAllow entry (a USB device the host may use)",
                                entry: { v, e in v.usbRule(e) })
        if deauthorizeUnmatched && !enable, let d = view.member("deauthorizeUnmatched") {
            error(d.value, path: appendingKey(view.path, "deauthorizeUnmatched"),
                  "\"deauthorizeUnmatched\" needs \"enable\": true (USB authorization is off)")
        }
        guard diagnostics.count == errorsBefore else { return nil }
        return USBAuthorization(enable: enable, deauthorizeUnmatched: deauthorizeUnmatched, hostAllow: hostAllow,
                                location: view.location)
    }
}
