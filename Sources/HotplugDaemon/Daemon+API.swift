import ControlAPI
import DeviceModel
import HostDevices
import HotplugConfig
import HotplugRules
import JSONKit
import Logging
import Reactor
import VMM

/// The daemon's part of the control API: the user's choices and marks, the
/// server, devices waiting for a choice, suspended devices, reply waiters.
struct APIState {
    var server: ControlServer?
    var stateFile: StateFile?
    var state = DaemonState()
    /// Devices (by sysfs path) waiting for a client to choose their VM (`usb_select_vm` sent).
    var selecting: Set<String> = []
    /// Devices detached by `usb_suspend`/`pci_suspend` (sysfs path -> the VM to give them back to).
    var suspended: [String: String] = [:]
    /// Requests waiting for a device's reconcile task to end.
    var idleWaiters: [String: [CheckedContinuation<Void, Never>]] = [:]
    /// The state file's writes, off the event loop (`saveState`): the state to write next (with its
    /// file), whether a write runs, how many saves were asked and how many a finished write covers,
    /// and who waits for theirs.
    var stateQueued: (file: StateFile, state: DaemonState)?
    var stateWriting = false
    var stateAsked = 0
    var stateDone = 0
    var stateWaiters: [(upTo: Int, continuation: CheckedContinuation<Void, Never>)] = []
    /// pci.ids names looked up so far, by vendor and device ID (`lookUpPCINames`); nil: none there.
    var pciNames: [UInt32: (vendor: String?, device: String?)] = [:]
}

extension Daemon: ControlService {
    // MARK: Start and stop

    /// Reads the state file (when `general.persistency`).
    func loadState() {
        let general = configuration.general
        guard general.persistency else { return }
        let file = StateFile(path: general.statePath)
        api.stateFile = file
        api.state = file.load(logger: logger)
        if !api.state.chosenVms.isEmpty || !api.state.disconnected.isEmpty || !api.state.suspended.isEmpty {
            logger.info("state \(general.statePath): \(api.state.chosenVms.count) chosen VMs, \(api.state.disconnected.count) devices detached by the user, \(api.state.suspended.count) suspended")
        }
    }

    /// Writes the state to its file, off the event loop (the write ends with two fsyncs, which a
    /// busy disk can make last long: the loop goes on meanwhile). Writes run one at a time, each of
    /// the state as it is when it starts; returns once a write that covers this call's state is over.
    func saveState() async {
        guard let file = api.stateFile else { return }
        api.stateAsked += 1
        let mine = api.stateAsked
        api.stateQueued = (file, api.state)
        if !api.stateWriting {
            api.stateWriting = true
            Task(executorPreference: loop) { await self.writeQueuedStates() }
        }
        await stateWritten(upTo: mine)
    }

    /// `saveState` when the state is not `before` any more; otherwise returns once the writes
    /// asked so far are over (the state on disk is this one then). A client that sends the same
    /// attach or detach again and again does not cost two fsyncs each time.
    func saveState(ifChangedFrom before: DaemonState) async {
        if api.state != before { await saveState() } else { await stateWritten() }
    }

    /// The writer of `saveState`: writes what is queued until nothing is.
    func writeQueuedStates() async {
        while let (file, state) = api.stateQueued {
            api.stateQueued = nil
            let covers = api.stateAsked
            let error = await loop.runBlocking { () -> StateFileError? in
                do throws(StateFileError) { try file.save(state) } catch { return error }
                return nil
            }
            if let error { logger.error("cannot save the state: \(error)") }
            api.stateDone = covers
            let ready = api.stateWaiters.filter { $0.upTo <= covers }
            api.stateWaiters.removeAll { $0.upTo <= covers }
            for w in ready { w.continuation.resume() }
        }
        api.stateWriting = false
    }

    /// Returns once the writes of the saves asked up to `upTo` (all so far: nil) are over.
    func stateWritten(upTo: Int? = nil) async {
        let target = upTo ?? api.stateAsked
        guard api.stateDone < target else { return }
        await withCheckedContinuation { api.stateWaiters.append((target, $0)) }
    }

    /// Opens the API's listeners when `general.api.enable`: before the first pass, so that a listener that cannot be
    /// made (an address in use, an unknown user) stops the start before any device is touched.
    func openAPI() async throws {
        let settings = configuration.general.api
        guard settings.enable, api.server == nil else { return }
        let server = ControlServer(settings: settings, loop: loop, logger: logger)
        try await server.open()
        api.server = server
    }

    /// Starts answering on the listeners `openAPI` made (clients waited in the backlog).
    func serveAPI() async {
        await api.server?.serve(self)
    }

    func stopAPI() async {
        await api.server?.stop()
    }

    /// A reload's `general`: the state file and the API's listeners follow the new settings
    /// (`previous`: those in force before). The API's listeners are replaced only when its
    /// settings changed; their connections close (clients connect again). Listeners that
    /// cannot be made leave the previous ones in force, as a rejected configuration would.
    func reloadGeneral(previous: GeneralSettings) async {
        let general = configuration.general
        if general.persistency != previous.persistency || general.statePath != previous.statePath {
            if general.persistency {
                // What the daemon knows now is written there (not what an earlier run left in it).
                api.stateFile = StateFile(path: general.statePath)
                logger.info("state: kept in \(general.statePath) from now on")
                await saveState()
            } else {
                api.stateFile = nil
                logger.info("state: no longer kept (general.persistency is false)")
            }
        }
        guard general.api != previous.api else { return }
        if let old = api.server {
            await old.stop()
            api.server = nil
            logger.info("API: its settings changed; the previous listeners and their connections are closed")
        }
        if general.api.enable && !stopping {
            do {
                try await openAPI()
            } catch {
                logger.error("API: cannot apply the new settings (\(error)); the previous ones stay in force")
                configuration.general.api = previous.api
                do {
                    try await openAPI()
                } catch {
                    logger.error("API: off: the previous listeners cannot be made again either (\(error))")
                }
            }
            await serveAPI()
        } else if !general.api.enable {
            logger.info("API: off (general.api)")
        }
        // No client listens on the new listeners yet: devices waiting for a choice go where they
        // go when nobody listens (a client that connects is asked about the next ones).
        if !api.selecting.isEmpty { await lastListenerGone() }
    }

    /// At start: devices a suspend took before vhotplug restarted (the state file) are suspended
    /// again, so that `-a` leaves them on the host and a resume gives them back; the marks of
    /// devices no longer connected go, as an unplug's would have.
    func restoreSuspended(_ found: [HostDevice]) {
        guard !api.state.suspended.isEmpty else { return }
        var seen = Set<String>()
        for device in found {
            let id = Self.identity(device)
            guard let vm = api.state.suspended[id], let key = Self.key(device) else { continue }
            api.suspended[key] = vm
            seen.insert(id)
        }
        let gone = Set(api.state.suspended.keys).subtracting(seen)
        guard !gone.isEmpty else { return }
        for id in gone { api.state.suspended[id] = nil }
        logger.info("\(gone.count) devices suspended before vhotplug restarted are no longer connected: decided afresh when plugged")
        Task(executorPreference: loop) { await self.saveState() }
    }

    // MARK: Hooks from the engine

    /// Where a device that appears (or whose rules changed) should go: nowhere when the
    /// user detached it; with several allowed VMs, the one chosen last, else a client
    /// is asked (`usb_select_vm`) and it waits; with no client listening, the default.
    func initialWant(_ key: String, _ t: Tracked) -> String? {
        let candidates = t.decision.candidateVms
        guard let first = t.decision.targetVm ?? candidates.first else { return nil }
        if let vm = api.suspended[key] {
            // (A device a suspend took before vhotplug restarted: one unplugged since is not.)
            logger.info("\(t.logName): suspended (for \(vm)); stays on the host until resumed")
            return nil
        }
        let id = Self.identity(t.device)
        if api.state.disconnected.contains(id) {
            logger.info("\(t.logName): detached by the user earlier; stays on the host until attached through the API")
            return nil
        }
        guard candidates.count > 1 else { return first }
        if let chosen = api.state.chosenVms[id], candidates.contains(chosen) { return chosen }
        if let server = api.server, server.listenerCount > 0, case .usb(let d) = t.device {
            api.selecting.insert(key)
            logger.info("\(t.logName): may go to \(candidates.joined(separator: ", ")); waiting for a client to choose")
            server.post(APINotification.usbSelectVM(d, allowedVms: candidates))
            return nil
        }
        return first
    }

    /// Where a device found in `vm` (by a restart, or in it at a reload) goes: it stays while the
    /// rules allow that VM (their target or one of their allowedVms) and the user has neither
    /// detached it nor chosen another allowed VM; otherwise where a device connected now goes.
    func want(_ key: String, _ t: Tracked, placedIn vm: String) -> String? {
        let id = Self.identity(t.device)
        let candidates = t.decision.candidateVms
        let chosenElsewhere = api.state.chosenVms[id].map { $0 != vm && candidates.contains($0) } ?? false
        guard candidates.contains(vm), !api.state.disconnected.contains(id), !chosenElsewhere else { return initialWant(key, t) }
        return vm
    }

    /// A client that enables notifications is asked about every device still waiting for a choice.
    public func notificationsForNewListener() async -> [JSONText] {
        api.selecting.sorted().compactMap { key -> JSONText? in
            guard let t = devices[key], t.present, case .usb(let d) = t.device else { return nil }
            return APINotification.usbSelectVM(d, allowedVms: t.decision.candidateVms)
        }
    }

    /// Nobody is left to choose: devices waiting for a choice go to their first allowed VM
    /// (as when no client listened at all).
    public func lastListenerGone() async {
        for key in api.selecting.sorted() {
            api.selecting.remove(key)
            guard let t = devices[key], t.present, t.want == nil, let first = t.decision.targetVm ?? t.decision.candidateVms.first
            else { continue }
            logger.info("\(t.logName): no client left to choose its VM; it goes to \(first)")
            t.want = first
            t.since = .now()
            reconcile(key)
        }
    }

    /// A USB device appeared: `usb_connected`, for every one (as the reference: an applet
    /// may show what was plugged even when no rule takes it; only lists are limited to devices
    /// some rule takes). Before its `usb_select_vm`.
    func announceConnected(_ t: Tracked) {
        guard case .usb(let d) = t.device else { return }
        api.server?.post(APINotification.usbConnected(d))
    }

    /// A USB device left the host: `usb_disconnected`.
    func announceDisconnected(_ key: String, _ t: Tracked) {
        api.selecting.remove(key)
        guard case .usb(let d) = t.device else { return }
        api.server?.post(APINotification.usbDisconnected(d))
    }

    func announceAttached(_ t: Tracked, vm: String) {
        switch t.device {
        case .usb(let d): api.server?.post(APINotification.usbAttached(d, vm: vm))
        case .pci: if let d = namedForListeners(t) { api.server?.post(APINotification.pciAttached(d, vm: vm)) }
        case .input: break
        }
    }

    func announceDetached(_ t: Tracked, vm: String) {
        switch t.device {
        case .usb(let d): api.server?.post(APINotification.usbDetached(d, vm: vm))
        case .pci: if let d = namedForListeners(t) { api.server?.post(APINotification.pciDetached(d, vm: vm)) }
        case .input: break
        }
    }

    /// A PCI device with its names, when a client listens (nobody listening: nothing looked up).
    func namedForListeners(_ t: Tracked) -> PCIDevice? {
        guard let server = api.server, server.listenerCount > 0, case .pci(let d) = t.device else { return nil }
        lookUpPCINames()
        return named(d, t)
    }

    /// The pci.ids names of the followed PCI devices, as the reference's replies carry them
    /// (udev's ID_VENDOR_FROM_DATABASE): looked up through libpci when a client first needs
    /// them, for every device whose IDs were not looked up yet, and libpci's database let go
    /// again (kept, it would add a megabyte or more to the daemon's memory for names it rarely
    /// needs). Log lines keep the IDs.
    func lookUpPCINames() {
        var library: PCINames?
        for t in devices.values {
            guard case .pci(let d) = t.device, api.pciNames[Self.pciID(d)] == nil else { continue }
            let names = library ?? PCINames()
            library = names
            api.pciNames[Self.pciID(d)] = (names.vendorName(d.vendorId), names.deviceName(d.vendorId, d.deviceId))
        }
        if library != nil { trimSoon() }
    }

    /// `d` (the device `t` follows) as the API shows it: with the names looked up for its IDs
    /// (`lookUpPCINames`) and the driver it is on now.
    func named(_ d: PCIDevice, _ t: Tracked) -> PCIDevice {
        var d = d
        if let now = t.driverNow { d.driver = now }
        guard let found = api.pciNames[Self.pciID(d)] else { return d }
        d.vendorName = d.vendorName ?? found.vendor
        d.deviceName = d.deviceName ?? found.device
        return d
    }

    static func pciID(_ d: PCIDevice) -> UInt32 { UInt32(d.vendorId) << 16 | UInt32(d.deviceId) }

    /// A device's reconcile task ended: requests waiting on it go on.
    func reconciled(_ key: String) {
        for c in api.idleWaiters.removeValue(forKey: key) ?? [] { c.resume() }
    }

    /// Waits until none of these devices has a reconcile task running.
    func settle(_ keys: [String]) async {
        let all = keys + followers(of: keys)
        // Passes until one finds all of them idle: a device that waited for a member of its
        // IOMMU group to leave another VM is set going again when that member's task ends.
        var again = true
        while again {
            again = false
            for key in all {
                while let t = devices[key], t.busy {
                    again = true
                    await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                        // The closure may run as a job of its own (see AsyncLock.acquire), after the
                        // task has ended: then there is nothing to wait for.
                        if t.busy { api.idleWaiters[key, default: []].append(c) } else { c.resume() }
                    }
                }
            }
        }
    }

    /// A device's identity across replugs and restarts, for the state file:
    /// `usb:046d:c52b:serial=XYZ` (or `:port=1-2` without a serial), `pci:0000:01:00.0`.
    static func identity(_ device: HostDevice) -> String {
        switch device {
        case .usb(let d): "usb:\(hex4(d.vendorId)):\(hex4(d.productId)):" + (d.serial.map { "serial=\($0)" } ?? "port=\(d.sysName)")
        case .pci(let d): "pci:\(d.address)"
        case .input(let d): "input:\(d.sysName)"
        }
    }

    // MARK: Requests

    public func handle(_ request: APIRequest) async -> JSONText {
        switch request {
        case .enableNotifications:
            return APIReply.ok()
        case .usbList(let disconnected, let tag):
            return APIReply.ok([("usb_devices", .array(list(usb: true, disconnected: disconnected, tag: tag)))])
        case .pciList(let disconnected, let tag):
            lookUpPCINames()
            return APIReply.ok([("pci_devices", .array(list(usb: false, disconnected: disconnected, tag: tag)))])
        case .usbAttach(let selector, let vm):
            return await attach(selected(usb: selector), what: selector.description, bus: "USB", vm: vm)
        case .pciAttach(let selector, let vm):
            return await attach(selected(pci: selector), what: selector.description, bus: "PCI", vm: vm)
        case .usbDetach(let selector):
            return await detach(selected(usb: selector), what: selector.description, bus: "USB")
        case .pciDetach(let selector):
            return await detach(selected(pci: selector), what: selector.description, bus: "PCI")
        case .usbSuspend(let vm):
            return await suspendOrResume(usb: true, vm: vm, resume: false)
        case .pciSuspend(let vm):
            return await suspendOrResume(usb: false, vm: vm, resume: false)
        case .usbResume(let vm):
            return await suspendOrResume(usb: true, vm: vm, resume: true)
        case .pciResume(let vm):
            return await suspendOrResume(usb: false, vm: vm, resume: true)
        case .vmmArgs(let request):
            return await vmmArgs(request)
        }
    }

    /// Present devices some rule takes, USB or PCI, sorted by name.
    func managed(usb: Bool) -> [(key: String, t: Tracked)] {
        devices.filter { _, t in
            guard t.present, !t.decision.candidateVms.isEmpty else { return false }
            switch t.device {
            case .usb: return usb
            case .pci: return !usb
            case .input: return false
            }
        }.map { (key: $0.key, t: $0.value) }.sorted { $0.key < $1.key }
    }

    func list(usb: Bool, disconnected: Bool?, tag: String?) -> [JSONText] {
        let items = managed(usb: usb).filter { _, t in
            let marked = api.state.disconnected.contains(Self.identity(t.device))
            if let disconnected, disconnected != marked { return false }
            if let tag, t.decision.options.tag != tag { return false }
            return true
        }
        // The IOMMU group members listed are those of the devices listed (same tag, same mark).
        return items.compactMap { _, t in
            let marked = api.state.disconnected.contains(Self.identity(t.device))
            let placement = APIPlacement(allowedVms: t.decision.candidateVms, vm: t.attachment?.vm,
                                         tag: t.decision.options.tag, disconnected: marked)
            switch t.device {
            case .usb(let d): return d.apiObject(placement)
            case .pci(let d): return named(d, t).apiObject(placement)
            case .input: return nil
            }
        } + (usb ? [] : iommuMembers(of: items.map(\.t), disconnected: disconnected))
    }

    /// PCI devices no rule takes that share an IOMMU group with a listed one
    /// (`iommu_member: true`): they go to vfio-pci with it.
    func iommuMembers(of listed: [Tracked], disconnected: Bool?) -> [JSONText] {
        guard disconnected != true else { return [] }
        var seen = Set<String>()
        var out: [JSONText] = []
        for t in listed {
            // The group as the followed devices show it now (a function hot-plugged after
            // `t` was read is not among `t`'s peers read then).
            let mates = groupMates(of: t).compactMap { m -> (PCIDevice, Tracked)? in
                if case .pci(let p) = m.device { return (p, m) }
                return nil
            }
            for (p, member) in mates.sorted(by: { $0.0.address < $1.0.address }) where !seen.contains(p.address) {
                seen.insert(p.address)
                guard member.decision.candidateVms.isEmpty, !p.isBridge else { continue }
                out.append(named(p, member).apiObject(APIPlacement(allowedVms: t.decision.candidateVms, vm: member.attachment?.vm,
                                                    tag: t.decision.options.tag, iommuMember: true)))
            }
        }
        return out
    }

    func selected(usb selector: USBSelector) -> [(key: String, t: Tracked)] {
        managed(usb: true).filter { _, t in
            guard case .usb(let d) = t.device else { return false }
            switch selector {
            case .deviceNode(let n): return d.devnode == n
            case .busPort(let b, let p): return d.bus == b && d.port == p
            case .vidPid(let v, let p): return d.vendorId == v && d.productId == p
            case .tag(let tag): return t.decision.options.tag == tag
            }
        }
    }

    func selected(pci selector: PCISelector) -> [(key: String, t: Tracked)] {
        managed(usb: false).filter { _, t in
            guard case .pci(let d) = t.device else { return false }
            switch selector {
            case .address(let a): return d.address == a
            case .vidDid(let v, let i): return d.vendorId == v && d.deviceId == i
            case .tag(let tag): return t.decision.options.tag == tag
            }
        }
    }

    func noMatch(_ bus: String, _ what: String) -> JSONText {
        APIReply.failed("no \(bus) device matches \(what) (only connected devices some rule passes can be managed)")
    }

    /// Explicit attach: clears the "disconnected" mark, remembers the choice, waits for the VM.
    func attach(_ targets: [(key: String, t: Tracked)], what: String, bus: String, vm: String?) async -> JSONText {
        guard !targets.isEmpty else { return noMatch(bus, what) }
        var wanted: [(String, Tracked, String)] = []
        for (key, t) in targets {
            let id = Self.identity(t.device)
            let candidates = t.decision.candidateVms
            guard let target = vm ?? api.state.chosenVms[id].flatMap({ candidates.contains($0) ? $0 : nil }) ?? t.decision.targetVm else {
                continue
            }
            guard candidates.contains(target) else {
                return APIReply.failed("VM \(quoted(target)) may not take \(t.logName) (allowed: \(candidates.joined(separator: ", ")))")
            }
            wanted.append((key, t, target))
        }
        let before = api.state
        for (key, t, target) in wanted {
            let id = Self.identity(t.device)
            api.state.disconnected.remove(id)
            if t.decision.candidateVms.count > 1 { api.state.chosenVms[id] = target }
            aim(key, t, at: target)
            logger.info("\(t.logName): attach to \(target) requested through the API")
            reconcile(key)
        }
        await saveState(ifChangedFrom: before)
        await settle(wanted.map(\.0))
        // (An attach QEMU has not answered yet counts as not done: the daemon asks it later.)
        for (_, t, target) in wanted where t.attachment?.vm != target || t.unanswered != nil {
            if vmDown.contains(target) {
                return APIReply.failed("VM \(target) is not running; \(t.logName) will be attached when it starts")
            }
            return failure("attach of \(t.logName) to \(target)", t)
        }
        return APIReply.ok()
    }

    /// The reply to an attach or detach that did not come about: `what` failed, with the
    /// device's last error; while a VM has not said whether it has the device (an operation
    /// unanswered by its deadline), that the daemon asks it again and carries out the
    /// request, which stays, then.
    func failure(_ what: String, _ t: Tracked) -> JSONText {
        var text = "\(what) failed: \(t.lastError ?? "see the daemon's log")"
        if t.unanswered != nil, let vm = t.attachment?.vm {
            text += "; \(vm) has not said whether it has the device: vhotplug asks it again and carries out the request then"
        }
        return APIReply.failed(text)
    }

    /// Marks the device suspended (`vm`: the VM a resume gives it back to) or not (nil), here
    /// and in the state, by its identity, so that a restart of vhotplug keeps it. True when the
    /// state changed (the caller saves it).
    @discardableResult
    func setSuspended(_ key: String, _ t: Tracked, _ vm: String?) -> Bool {
        api.suspended[key] = vm
        let id = Self.identity(t.device)
        guard api.state.suspended[id] != vm else { return false }
        api.state.suspended[id] = vm
        return true
    }

    /// The device goes to `vm` now (an explicit request): no choice or suspension
    /// pending for it any more, and a fresh try.
    func aim(_ key: String, _ t: Tracked, at vm: String) {
        api.selecting.remove(key)
        setSuspended(key, t, nil)
        t.want = vm
        t.failed = false
        t.lastError = nil
        t.since = .now()
        endGuestWait(t) // tried at once
    }

    /// Explicit detach: marks the device "disconnected" (kept across replug and restart).
    func detach(_ targets: [(key: String, t: Tracked)], what: String, bus: String) async -> JSONText {
        guard !targets.isEmpty else { return noMatch(bus, what) }
        let before = api.state
        for (key, t) in targets {
            api.state.disconnected.insert(Self.identity(t.device))
            api.selecting.remove(key)
            setSuspended(key, t, nil)
            t.want = nil
            t.since = .now()
            t.detachAgain = true
            logger.info("\(t.logName): detach requested through the API; marked disconnected")
            reconcile(key)
        }
        await saveState(ifChangedFrom: before)
        await settle(targets.map(\.key))
        for (_, t) in targets where t.attachment != nil {
            return failure("detach of \(t.logName) from \(t.attachment?.vm ?? "?")", t)
        }
        return APIReply.ok()
    }

    /// Suspend: detaches every attached device of the kind (of `vm`, when given) except
    /// `skipOnSuspend` ones, remembering their VM. Resume: gives them back.
    func suspendOrResume(usb: Bool, vm: String?, resume: Bool) async -> JSONText {
        if let vm, configuration.vm(named: vm) == nil { return APIReply.failed("no VM named \(quoted(vm))") }
        var keys: [String] = []
        var stateChanged = false
        for (key, t) in managed(usb: usb) {
            if resume {
                guard let target = api.suspended[key], vm == nil || target == vm else { continue }
                stateChanged = setSuspended(key, t, nil) || stateChanged
                // Only where its rules may send it now (a reload may have changed them).
                guard t.decision.candidateVms.contains(target) else { continue }
                t.want = target
                t.failed = false
            } else {
                // Where it goes (not where it is): a device whose attach is still running is
                // suspended too, and one on its way out of its VM (detached by the user) is not.
                guard let target = t.want, vm == nil || target == vm, !t.decision.options.skipOnSuspend else { continue }
                stateChanged = setSuspended(key, t, target) || stateChanged
                t.want = nil
            }
            t.since = .now()
            keys.append(key)
            reconcile(key)
        }
        // (Kept across a restart of vhotplug: a resume after it gives them back.)
        if stateChanged { await saveState() }
        let verb = resume ? "resume" : "suspend"
        logger.info("API: \(verb) \(usb ? "USB" : "PCI")\(vm.map { " of \($0)" } ?? ""): \(resume ? "attaching" : "detaching") \(keys.count) devices")
        await settle(keys)
        for key in keys {
            // (An attach QEMU has not answered yet counts as not done, as for the attach request.)
            guard let t = devices[key], t.attachment?.vm != t.want || t.unanswered != nil else { continue }
            let problem = t.want.map { "is not back in \($0)" } ?? "is still in \(t.attachment?.vm ?? "?")"
            return APIReply.failed("\(verb): \(t.logName) \(problem): \(t.lastError ?? "see the daemon's log")")
        }
        return APIReply.ok()
    }
}
