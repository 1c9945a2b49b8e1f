import DeviceModel
import HostDevices
import HotplugConfig
import HotplugRules
import Logging
import Reactor
import VFIO
#if canImport(Glibc)
import Glibc
#endif

/// USB authorization on the host (`usbAuthorization`), through the kernel's
/// `authorized_default` and `authorized` files (Documentation/usb/authorization.rst).
///
/// With `authorized_default` = 0 on a bus, a new device is enumerated (its
/// descriptors, `idVendor`, `idProduct` are in sysfs) but not configured: it has no
/// interfaces, so no host driver binds to it; a keyboard that no rule sends
/// anywhere types nothing. Every write goes through the `SysfsIO` seam; a failed
/// write is logged with its path and errno and never stops the daemon.
struct USBAuthorizer {
    let sysfs: Sysfs
    let io: any SysfsIO
    /// The `authorized_default` files set to 0, each with the value to write back.
    private(set) var saved: [(path: String, value: String)] = []
    /// usbcore's own value before (`-1`: authorized, except wireless devices).
    private var usbcoreBefore: String?
    /// Set between `engage` and `release`.
    private(set) var engaged = false
    /// A file that keeps `saved` while engaged (one `VALUE PATH` line each), so that a daemon
    /// started after a crash knows the values from before: the files say 0 by then. Nil: none.
    let recordPath: String?

    init(sysfs: Sysfs, io: any SysfsIO, recordPath: String? = nil) {
        self.sysfs = sysfs
        self.io = io
        self.recordPath = recordPath
    }

    /// The values an earlier daemon saved and did not write back (it was killed), in its order.
    private func recorded(_ logger: Logger) -> [(path: String, value: String)] {
        guard let recordPath, let text = try? io.read(recordPath) else { return [] }
        var values: [(path: String, value: String)] = []
        for line in text.split(separator: "\n") {
            guard let space = line.firstIndex(of: " ") else { continue }
            let path = String(line[line.index(after: space)...])
            values.removeAll { $0.path == path }
            values.append((path, String(line[..<space])))
        }
        if !values.isEmpty {
            logger.warning("USB authorization: an earlier vhotplug did not restore authorized_default (killed?): the values from before it (\(recordPath)) are the ones to write back")
        }
        return values
    }

    /// Start with the feature off: the values an earlier daemon (killed while it was on) kept
    /// are written back now, and its record deleted. Nothing else would: the files say 0.
    mutating func restoreRecorded(_ logger: Logger) {
        guard !engaged else { return }
        let earlier = recorded(logger)
        guard !earlier.isEmpty else { return }
        saved = earlier
        usbcoreBefore = nil
        engaged = true
        release(logger)
    }

    /// Keeps `saved` in the record file (written whole, then renamed); deleted when empty.
    private func record(_ logger: Logger) {
        guard let recordPath else { return }
        if saved.isEmpty {
            unlink(recordPath)
            return
        }
        do throws(StateFileError) {
            try StateFile.writeAtomically(saved.map { "\($0.value) \($0.path)\n" }.joined(), to: recordPath)
        } catch {
            logger.warning("USB authorization: cannot keep the values from before (\(error)): a vhotplug killed now could not write them back")
        }
    }

    var usbcorePath: String { sysfs.path("/module/usbcore/parameters/authorized_default") }

    /// Each root hub's `authorized_default` (`/sys/bus/usb/devices/usbN/authorized_default`).
    func rootHubFiles() -> [String] {
        Sysfs.list(sysfs.path("/bus/usb/devices"))
            .filter { $0.hasPrefix("usb") && Int($0.dropFirst(3)) != nil }
            .sorted { Int($0.dropFirst(3)) ?? 0 < Int($1.dropFirst(3)) ?? 0 }
            .map { sysfs.path("/bus/usb/devices/\($0)/authorized_default") }
    }

    /// New devices are not authorized from now on: 0 on every root hub, and on usbcore
    /// (the value a controller plugged later starts its root hub with).
    mutating func engage(_ logger: Logger) {
        let again = engaged
        engaged = true
        let earlier = again ? [:] : Dictionary(recorded(logger), uniquingKeysWith: { $1 })
        var done: [String] = []
        for path in rootHubFiles() + [usbcorePath] where !saved.contains(where: { $0.path == path }) {
            let before: String
            do {
                let now = try io.read(path).trimmingSpaces()
                before = earlier[path] ?? now
            } catch {
                // usbcore's parameter is absent when usbcore is built in without sysfs parameters.
                if error.errno == ENOENT && path == usbcorePath { continue }
                logger.error("USB authorization: cannot read \(path): \(error.errnoText) (errno \(error.errno)); left as it is")
                continue
            }
            guard write("0", to: path, logger) else { continue }
            if path == usbcorePath { usbcoreBefore = before }
            saved.append((path, before))
            done.append(path.hasPrefix(sysfs.path("/bus/")) ? String(path.split(separator: "/").dropLast().last ?? "") : "usbcore")
        }
        if again && done.isEmpty { return } // a reload: nothing new (nor to keep)
        record(logger)
        logger.info("USB authorization: new USB devices are not authorized on the host (authorized_default = 0 on \(done.isEmpty ? "nothing" : done.joined(separator: ", ")))")
    }

    /// A root hub (a USB controller) that appeared while engaged: usbcore gave it 0;
    /// at release it gets what usbcore would have given it.
    mutating func rootHubAdded(_ sysPath: String, _ logger: Logger) {
        guard engaged, let name = sysPath.split(separator: "/").last else { return }
        // Under its bus name, as `engage` names it: one file, one entry, whichever saw it first.
        let path = sysfs.path("/bus/usb/devices/\(name)/authorized_default")
        guard !saved.contains(where: { $0.path == path }) else { return }
        guard write("0", to: path, logger) else { return }
        saved.append((path, usbcoreBefore.map { $0 == "-1" ? "1" : $0 } ?? "1"))
        record(logger)
    }

    /// Writes back every `authorized_default` as it was (stop, or the feature turned off).
    mutating func release(_ logger: Logger) {
        guard engaged else { return }
        engaged = false
        var done: [String] = []
        for (path, value) in saved where write(value, to: path, logger) {
            done.append("\(path.hasPrefix(sysfs.path("/bus/")) ? String(path.split(separator: "/").dropLast().last ?? "") : "usbcore") = \(value)")
        }
        saved = []
        usbcoreBefore = nil
        record(logger)
        logger.info("USB authorization: authorized_default restored (\(done.isEmpty ? "nothing to restore" : done.joined(separator: ", ")))")
    }

    /// Writes a device's `authorized`; logs what and why, or the failure.
    @discardableResult
    func set(_ device: USBDevice, authorized: Bool, why: String, _ logger: Logger) -> Bool {
        // The kernel configures (or unconfigures) the device within the write: its time is logged.
        let start = Deadline.now()
        guard write(authorized ? "1" : "0", to: sysfs.path(device.sysPath + "/authorized"), logger) else { return false }
        logSet(device, authorized: authorized, why: why, since: start, logger)
        return true
    }

    private func logSet(_ device: USBDevice, authorized: Bool, why: String, since start: Deadline, _ logger: Logger) {
        let ms = Deadline.now().seconds(since: start) * 1000
        logger.info("\(HostDevice.usb(device).logName): \(authorized ? "authorized" : "de-authorized") on the host (\(why)) in \(Double(Int(ms * 100)) / 100) ms")
    }

    private static func logFailure(_ value: String, _ path: String, _ error: SysfsIOError, _ logger: Logger) {
        logger.error("USB authorization: cannot write \"\(value)\" to \(path): \(error.errnoText) (errno \(error.errno))")
    }

    /// The same, with the write on a helper thread (`SysfsIO.write(_:to:off:)`): the
    /// kernel configures or unconfigures the device inside it (155-260 ms for a keyboard
    /// in the TCG lab), and the loop must not wait for that.
    @discardableResult
    func set(_ device: USBDevice, authorized: Bool, why: String, _ logger: Logger, on loop: EventLoop) async -> Bool {
        let start = Deadline.now()
        let value = authorized ? "1" : "0", path = sysfs.path(device.sysPath + "/authorized")
        do { try await io.write(value, to: path, off: loop) } catch {
            Self.logFailure(value, path, error, logger)
            return false
        }
        logSet(device, authorized: authorized, why: why, since: start, logger)
        return true
    }

    /// One write through the seam; a failure is logged (path, errno), never thrown.
    func write(_ value: String, to path: String, _ logger: Logger) -> Bool {
        do {
            try io.write(value, to: path)
            return true
        } catch {
            Self.logFailure(value, path, error, logger)
            return false
        }
    }
}

extension String {
    fileprivate func trimmingSpaces() -> String {
        var s = Substring(self)
        while let c = s.last, c == " " || c == "\n" { s = s.dropLast() }
        while let c = s.first, c == " " { s = s.dropFirst() }
        return String(s)
    }
}

// MARK: - The daemon's side

extension Daemon {
    /// The settings in force, nil when the feature is off.
    var authorization: USBAuthorization? { configuration.activeUSBAuthorization }

    /// True when a `hostAllow` entry (enabled) matches the device.
    func hostAllows(_ d: USBDevice) -> Bool {
        authorization?.hostAllow.contains { !$0.disable && $0.matches(d) } ?? false
    }

    /// Start (and a reload that keeps or turns the feature on): new devices off the
    /// host, then each connected device as the settings say.
    func engageAuthorization() {
        // (Not after a SIGTERM during the start: its release has run, and would not run again.)
        guard let auth = authorization, !stopping else { return }
        authorizer.engage(logger)
        for t in devices.values where t.present {
            guard case .usb(let d) = t.device, let authorized = reader.usbAuthorized(sysPath: d.sysPath) else { continue }
            if !authorized {
                if d.isHub {
                    authorizer.set(d, authorized: true, why: "a hub: devices behind it must enumerate", logger)
                } else if hostAllows(d) {
                    authorizer.set(d, authorized: true, why: "a hostAllow entry matches", logger)
                }
            } else if auth.deauthorizeUnmatched, !d.isHub, !d.holdsHostBootFilesystem, t.decision.targetVm == nil,
                      t.attachment == nil, !hostAllows(d) {
                authorizer.set(d, authorized: false, why: "deauthorizeUnmatched: no rule and no hostAllow entry matches", logger)
            }
        }
    }

    /// The feature turned off by a reload: `authorized_default` back as it was, and the
    /// devices it kept off the host (in no VM) are authorized.
    func disengageAuthorization() {
        authorizer.release(logger)
        for t in devices.values where t.present && t.attachment == nil {
            guard case .usb(let d) = t.device, reader.usbAuthorized(sysPath: d.sysPath) == false else { continue }
            authorizer.set(d, authorized: true, why: "USB authorization turned off", logger)
        }
    }

    /// A reload: the feature turned on, off, or its settings changed.
    func reloadAuthorization(wasActive: Bool) {
        if authorization != nil {
            engageAuthorization()
        } else if wasActive {
            disengageAuthorization()
        }
    }

    /// A new USB device was read and decided: a hub or a hostAllow device is authorized
    /// now; one a rule sends to a VM is authorized just before its attach; any other
    /// stays unauthorized.
    func authorizeOnArrival(_ t: Tracked) {
        guard authorization != nil, case .usb(let d) = t.device, reader.usbAuthorized(sysPath: d.sysPath) == false else { return }
        if d.isHub || hostAllows(d) {
            let why = d.isHub ? "a hub: devices behind it must enumerate" : "a hostAllow entry matches"
            let authorizer = self.authorizer, logger = self.logger, loop = self.loop
            Task(executorPreference: loop) { await authorizer.set(d, authorized: true, why: why, logger, on: loop) }
        } else if let vm = t.decision.targetVm {
            logger.info("\(t.logName): stays unauthorized on the host until it is attached to \(vm)")
        } else {
            logger.info("\(t.logName): stays unauthorized on the host (no rule sends it to a VM, no hostAllow entry matches)")
        }
    }

    /// Just before a USB attach. Seen in the lab (tools/lab/test_lab.py, Test7
    /// test_4, kernel 6.1, QEMU 7.2): QEMU's usb-host accepts an unauthorized device
    /// (`device_add` returns `{}`, `info usb` lists it) but gets it unconfigured, with
    /// no interface to claim, and the SET_CONFIGURATION its guest sends goes through
    /// usbfs, where the kernel keeps an unauthorized device unconfigured. Authorized,
    /// the kernel configures it at once (the write returns once it has), host drivers
    /// bind for the moment until QEMU detaches them, and the attach works.
    func authorizeForVM(_ t: Tracked, vm: String) async {
        guard authorization != nil, case .usb(let d) = t.device, reader.usbAuthorized(sysPath: d.sysPath) == false else { return }
        await authorizer.set(d, authorized: true, why: "going to \(vm)", logger, on: loop)
    }

    /// The device left its VM (a detach, or an attach that failed) and is still plugged
    /// in: it goes off the host again, unless a hostAllow entry matches or it is a hub.
    func deauthorizeAfterVM(_ t: Tracked, vm: String) async {
        guard authorization != nil, t.present, t.attachment == nil, case .usb(let d) = t.device,
              !d.isHub, !hostAllows(d), reader.usbAuthorized(sysPath: d.sysPath) == true else { return }
        await authorizer.set(d, authorized: false, why: "it left \(vm)", logger, on: loop)
        // The kernel unconfigures the device inside that write, and a reload may come meanwhile:
        // one that turned USB authorization off, or let a hostAllow entry match the device, saw it
        // still authorized and left it. It goes back on the host (before, it stayed off until a
        // replug). A device on its way to a VM again is authorized by its attach.
        guard t.present, t.attachment == nil, t.device == .usb(d) else { return }
        let why = authorization == nil ? "USB authorization was turned off during its de-authorization"
                : hostAllows(d) ? "a hostAllow entry matches it since its de-authorization began" : nil
        if let why, reader.usbAuthorized(sysPath: d.sysPath) == false {
            await authorizer.set(d, authorized: true, why: why, logger, on: loop)
        }
    }
}
