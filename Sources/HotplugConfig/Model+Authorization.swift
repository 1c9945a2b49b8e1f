/// `usbAuthorization`: USB devices are not authorized on the host unless the
/// configuration says they may be (the kernel's USB authorization, see
/// Documentation/usb/authorization.rst): a device no rule sends to a VM and no
/// `hostAllow` entry lets the host use is never configured by the host, so no
/// host driver (a keyboard's, a disk's) ever binds to it.
public struct USBAuthorization: Sendable, Hashable {
    /// When false, vhotplug leaves USB authorization alone.
    public var enable: Bool
    /// At start (and on reload), connected devices that no rule and no `hostAllow`
    /// entry match are de-authorized. Hubs and the host's boot disk never are.
    public var deauthorizeUnmatched: Bool
    /// Devices the host may use: authorized when they arrive (same keys as `allow` entries).
    public var hostAllow: [USBRule]
    /// Where the object starts in the file.
    public var location: SourceLocation?

    /// Creates the settings.
    public init(enable: Bool = false, deauthorizeUnmatched: Bool = false, hostAllow: [USBRule] = [],
                location: SourceLocation? = nil) {
        self.enable = enable
        self.deauthorizeUnmatched = deauthorizeUnmatched
        self.hostAllow = hostAllow
        self.location = location
    }
}

extension Configuration {
    /// The USB authorization settings in force: nil unless `usbAuthorization.enable` is true.
    public var activeUSBAuthorization: USBAuthorization? {
        guard let a = usbAuthorization, a.enable else { return nil }
        return a
    }
}
