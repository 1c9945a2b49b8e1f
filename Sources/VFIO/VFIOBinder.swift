import DeviceModel
import HostDevices
import Logging
import Reactor

/// Moves every endpoint of a PCI device's IOMMU group to vfio-pci, and back.
///
/// For each member (the group's endpoints in address order; PCI bridges are
/// left alone): record its driver and `driver_override`, write `vfio-pci` to
/// `driver_override`, write the address to its driver's `unbind` and wait for
/// the `driver` link to go, write the address to `/sys/bus/pci/drivers_probe`
/// and wait for the link to name vfio-pci; then wait for `/dev/vfio/GROUP`.
/// A member already on vfio-pci is left as it is. If any step fails, every
/// member touched goes back to the driver it had, in reverse order, and the
/// error names the device, the step and the errno (or the timeout).
///
/// Waits are driven by uevents that the daemon passes to `deviceEvent`, each
/// with a deadline (`timeout` seconds per wait); nothing polls or sleeps.
///
/// An actor on the daemon's event loop: its timers are the loop's, and binds
/// and restores run one at a time, in order, while events are still taken in.
/// The sysfs writes themselves are synchronous system calls on the loop's
/// thread (the kernel unbinds and probes within the `write`).
public actor VFIOBinder {
    /// The driver that hands devices to VMs.
    public static let vfioDriver = "vfio-pci"

    /// The sysfs tree (`/sys`, or a testbed's).
    public nonisolated let sysfs: Sysfs
    /// The folder standing for `/dev` (`/dev/vfio/GROUP` is looked for below it).
    public nonisolated let devRoot: String
    /// Seconds allowed for each wait of a bind (an unbind, a bind, the group node).
    public nonisolated let timeout: Double
    /// Seconds allowed for each wait while giving devices back (a restore, or
    /// the rollback of a failed bind): longer, since a device stranded on
    /// vfio-pci costs the user more than a slow rollback.
    public nonisolated let restoreTimeout: Double
    /// Where each bind's record is kept until its restore (nil: in memory only).
    public nonisolated let store: BindRecordStore?
    /// Seconds of quiet (no PCI `add` or `bind` event) after which a device just
    /// added, and still without a `bind` event, is taken to have no driver that
    /// wants it: its first probe is over.
    public nonisolated let probeQuiet: Double
    /// The longest a bind waits for a member's first probe, from its `add` event.
    public nonisolated let probeLimit: Double

    private let loop: EventLoop
    private let io: any SysfsIO
    private var bootDevices: BootDevices
    private let logger: Logger
    private let waits: EventWaits
    private let lock = AsyncLock()
    /// Devices whose `add` event came and whose first probe may still run: address -> when it was added.
    private var firstProbes: [String: Deadline] = [:]
    /// The last PCI `add` or `bind` event (probes of a new slot come one after another).
    private var lastProbeActivity = Deadline(nanoseconds: 0)

    /// The event loop: this actor runs on the daemon's loop thread.
    public nonisolated var unownedExecutor: UnownedSerialExecutor { loop.asUnownedSerialExecutor() }

    /// - Parameters:
    ///   - loop: the daemon's event loop (this actor's executor and timers).
    ///   - sysfs: the sysfs tree.
    ///   - devRoot: the folder standing for `/dev`.
    ///   - io: the syscall seam (a `FaultInjectingSysfsIO` in tests).
    ///   - bootDevices: the devices behind `/` and `/boot`, to refuse a group that holds one;
    ///     read from mountinfo when nil.
    ///   - timeout: seconds for each wait of a bind.
    ///   - restoreTimeout: seconds for each wait while giving devices back.
    ///   - store: where each successful bind's record is written, and deleted after its restore,
    ///     so that another run of the daemon can give the devices back.
    ///   - probeQuiet: seconds without PCI `add`/`bind` events after which a device just added
    ///     is taken to have no driver (its first probe is over without a `bind`).
    ///   - probeLimit: the longest wait for a just-added device's first probe, from its `add`.
    public init(loop: EventLoop, sysfs: Sysfs = Sysfs(), devRoot: String = "/dev", io: any SysfsIO = SystemSysfsIO(),
                bootDevices: BootDevices? = nil, timeout: Double = 5, restoreTimeout: Double = 10,
                store: BindRecordStore? = nil, probeQuiet: Double = 0.5, probeLimit: Double = 10,
                logger: Logger = Logger(label: "vhotplug.vfio")) {
        self.loop = loop
        self.sysfs = sysfs
        self.devRoot = devRoot.count > 1 && devRoot.hasSuffix("/") ? String(devRoot.dropLast()) : devRoot
        self.io = io
        self.bootDevices = bootDevices ?? BootDevices.read(sysfs: sysfs)
        self.timeout = timeout
        self.restoreTimeout = restoreTimeout
        self.store = store
        self.probeQuiet = probeQuiet
        self.probeLimit = probeLimit
        self.logger = logger
        waits = EventWaits(loop: loop)
    }

    // MARK: Events

    /// A uevent, as the daemon's udev monitor received it: wakes whatever waits
    /// on that device. `sysPath` is the DEVPATH (`/devices/...`, with or without
    /// the sysfs root). The rebind listens for `bind`/`unbind` of subsystem `pci`
    /// and `add` of subsystem `vfio` (`/devices/virtual/vfio/GROUP`); any other
    /// action on those devices only causes a re-check, which is harmless.
    ///
    /// A PCI `add` starts the device's first probe (the kernel's own driver
    /// matching); its `bind` ends it. A bind waits for the first probe of every
    /// member of the group, so that it does not race the kernel's driver.
    public func deviceEvent(action: String, subsystem: String, sysPath: String) {
        guard let name = sysPath.split(separator: "/").last.map(String.init) else { return }
        switch subsystem {
        case "pci":
            let address = name.lowercased()
            switch action {
            case "add": firstProbes[address] = .now()
            case "bind", "remove": firstProbes[address] = nil
            default: break
            }
            if action == "add" || action == "bind" { lastProbeActivity = .now() }
            waits.notify(.pci(address))
        case "vfio": waits.notify(.vfioGroup(name))
        default: break
        }
    }

    /// Device events were lost: each wait looks at its condition again (its event may have
    /// been one of them) instead of sitting until its deadline.
    public func eventsLost() {
        waits.notifyAll()
    }

    /// Waits in progress (tests check that none is left behind).
    public var pendingWaits: Int { waits.count }

    /// Devices just added whose first probe is still waited for, or not yet known to be over (tests).
    public var devicesInFirstProbe: Int { firstProbes.count }

    /// Operations (binds, give-backs, hand-overs) waiting for the one running (tests).
    public var queuedOperations: Int { lock.queued }

    // MARK: Bind

    /// Moves every endpoint of `device`'s IOMMU group to vfio-pci and waits for
    /// `/dev/vfio/GROUP`. Atomic in effect: on any failure, every member touched
    /// is back on the driver it had (as far as the kernel lets it) before the
    /// error is thrown; what could not be undone is in `cleanupFailures`.
    ///
    /// Refused, with nothing touched: a bridge, a device serving the host's `/`
    /// or `/boot` (or a group holding one), a device without an IOMMU group, and
    /// any group when vfio-pci is not loaded.
    ///
    /// `previous`: the record of an earlier bind of the group whose restore did not finish
    /// (a member left on vfio-pci, or on no driver): what it says a member had before
    /// vhotplug's first bind is what the new record keeps for that member.
    public func bind(_ device: PCIDevice, previous: BindRecord? = nil) async throws(VFIOError) -> BindRecord {
        await lock.acquire()
        defer { lock.release() }
        let start = Deadline.now()
        await waitForFirstProbe(device.address.lowercased())
        let (group, addresses) = try plan(device)
        for address in addresses { await waitForFirstProbe(address) }
        var members: [BindRecord.Member] = []
        for address in addresses {
            members.append(try readState(address))
        }
        if members.contains(where: { !$0.wasOnVFIO }) {
            try requireVFIODriver(device.address)
        }
        let recorded = members.map { m in previous?.members.first { $0.address == m.address && !$0.wasOnVFIO } ?? m }
        let record = BindRecord(device: device.address, group: group, members: recorded, groupNode: groupNode(group))
        // Kept before anything moves: a daemon killed in the middle (or a rollback that does
        // not finish) leaves a record of what each member had. Nothing moves without it (before,
        // the group moved all the same, and a restarted daemon found it on vfio-pci with no record
        // of its drivers: it stayed there for good).
        if let store {
            do { try store.save(record) } catch {
                throw VFIOError(device: device.address, step: .check, cause: .refused(
                    "its VFIO record cannot be kept (\(error)), and without it a restarted vhotplug could not give IOMMU group \(group) back to its drivers; nothing was moved"))
            }
        }
        if let previous, previous.device != record.device { forget(previous) }
        var touched: [BindRecord.Member] = []
        do throws(VFIOError) {
            for member in members where !member.wasOnVFIO {
                touched.append(member)
                try await moveToVFIO(member)
            }
            try await waitForGroupNode(group, device: device.address)
        } catch {
            logger.warning("\(error.device): \(error.step.rawValue) failed; giving \(touched.map(\.address).joined(separator: ", ")) back")
            var failure = error
            failure.cleanupFailures = await giveBack(touched.reversed())
            if failure.cleanupFailures.isEmpty {
                // All back as before this bind: the record is what it was before it.
                if previous?.device != record.device { forget(record) }
                if let previous { save(previous) }
            } else {
                // Some members stay moved: the caller keeps the record (it is stored too), and
                // gives them back with it. Before, only the store had it: the next bind, reading
                // the group as it was left, recorded vfio-pci as what they had, for good.
                failure.keptRecord = record
            }
            throw failure
        }
        let moved = members.map { m in m.wasOnVFIO ? "\(m.address) (already)" : "\(m.address) from \(m.originalDriver ?? "no driver")" }
        logger.info("IOMMU group \(group) on vfio-pci in \(formatSeconds(Deadline.now().seconds(since: start))): \(moved.joined(separator: ", "))")
        return record
    }

    /// Stores `record` (nothing happens without a store); a failure is logged.
    private func save(_ record: BindRecord) {
        guard let store else { return }
        do { try store.save(record) } catch {
            logger.warning("\(record.device): cannot keep its VFIO record (\(error)): a restarted vhotplug could not give IOMMU group \(record.group) back to its drivers")
        }
    }

    /// The devices behind `/` and `/boot` as they are now (the daemon read them again): a group
    /// holding one is refused from now on.
    public func setBootDevices(_ devices: BootDevices) {
        bootDevices = devices
    }

    /// Returns once no bind or give-back is running (those asked before this call are over).
    public func quiesce() async {
        await lock.acquire()
        lock.release()
    }

    /// Deletes the stored record of a bind whose devices need nothing more
    /// (they left the host). Nothing happens without a store.
    public func forget(_ record: BindRecord) {
        guard let store else { return }
        do { try store.remove(record.device) } catch {
            logger.warning("\(record.device): cannot delete its VFIO record: \(error)")
        }
    }

    /// The record of a bind whose device left the host, passed on to `address`, a member of
    /// its group still on the host: the record also says what the other members had before
    /// the bind, and without it they would stay on vfio-pci for good. The new record holds
    /// the members still on the host (and those of `own`, `address`'s own record, which it
    /// replaces); it is stored under `address` and the old one deleted. nil (and both deleted)
    /// when none of them has anything to go back to. It waits for a bind or give-back running
    /// (the heir's own give-back would otherwise delete, when it ends, the record made here
    /// under the heir's address).
    public func handOver(_ record: BindRecord, to address: String, merging own: BindRecord?) async -> BindRecord? {
        await lock.acquire()
        defer { lock.release() }
        let here = record.members.filter { m in
            m.address != record.device && ((try? io.exists(devicePath(m.address))) ?? false)
        }
        var members = here
        for m in own?.members ?? [] where !members.contains(where: { $0.address == m.address }) { members.append(m) }
        forget(record)
        guard members.contains(where: { !$0.wasOnVFIO }) else {
            if let own { forget(own) }
            return nil
        }
        let next = BindRecord(device: address, group: record.group, members: members, groupNode: record.groupNode)
        save(next)
        return next
    }

    /// Gives every member the bind moved back to the driver it had, as
    /// libvirt's managed mode does: its old `driver_override` (none: `"\n"`),
    /// unbind from vfio-pci, `drivers_probe`, and wait for the old driver's link.
    /// Members that were on vfio-pci before the bind stay there. Every member is
    /// tried even when one fails; the error names the first failure and lists
    /// the others in `cleanupFailures`.
    public func restore(_ record: BindRecord) async throws(VFIOError) {
        await lock.acquire()
        defer { lock.release() }
        let failures = await giveBack(record.members.filter { !$0.wasOnVFIO }.reversed())
        if var first = failures.first {
            first.cleanupFailures = Array(failures.dropFirst())
            throw first   // the record stays: another try (or another run) may still give them back
        }
        logger.info("IOMMU group \(record.group) back on its drivers")
        forget(record)
    }

    // MARK: First probe

    /// Waits until the kernel's first probe of `device` and of every other
    /// device of its IOMMU group is over (see `waitForFirstProbe`); at once when
    /// none of them was just added. `bind` does the same wait itself; a caller
    /// may wait first to look again at whether the bind is still wanted.
    public func firstProbesOver(_ device: PCIDevice) async {
        await waitForFirstProbe(device.address.lowercased())
        for peer in groupPeers(of: device) { await waitForFirstProbe(peer) }
    }

    /// The other devices of `device`'s IOMMU group as sysfs lists them now (a function added
    /// after the device was read counts, one removed since does not), in address order; as read
    /// with the device when sysfs lists no group.
    private func groupPeers(of device: PCIDevice) -> [String] {
        var peers = device.iommuGroupPeers
        if let group = device.iommuGroup {
            let now = Sysfs.list(sysfs.path("/kernel/iommu_groups/\(group)/devices"))
            if !now.isEmpty { peers = now }
        }
        return Set(peers.map { $0.lowercased() }).subtracting([device.address.lowercased()]).sorted()
    }

    /// Waits until the first probe of a device just added is over: its `bind`
    /// event, or `probeQuiet` seconds without PCI `add`/`bind` events (no driver
    /// wants it; while a new slot's functions are probed one after another the
    /// wait goes on), and never more than `probeLimit` seconds after its `add`.
    /// A device whose `add` this binder did not see is not waited for.
    private func waitForFirstProbe(_ address: String) async {
        guard firstProbes[address] != nil else { return }
        let start = Deadline.now()
        while let added = firstProbes[address] {
            let limit = Deadline(nanoseconds: added.nanoseconds &+ UInt64(probeLimit * 1e9))
            let quiet = Deadline(nanoseconds: lastProbeActivity.nanoseconds &+ UInt64(probeQuiet * 1e9))
            let deadline = quiet < limit ? quiet : limit
            // The kernel makes the `driver` link before it calls the driver's probe, and sends
            // `bind` after it: a link with no `bind` yet is a probe still running (e1000e takes
            // more than a second under TCG), waited for up to the limit.
            let now = Deadline.now()
            let probing = now < limit && (try? io.linkName(devicePath(address) + "/driver")).flatMap { $0 } != nil
            guard now < deadline || probing else {
                firstProbes[address] = nil
                logger.info("\(address): just added; no driver took it within \(formatSeconds(Deadline.now().seconds(since: added))) (\(now < limit ? "no probe activity for \(formatSeconds(probeQuiet))" : "the limit"))")
                return
            }
            _ = await waits.wait(for: .pci(address), deadline: probing ? limit : deadline) { [self] in
                assumeIsolated { $0.firstProbes[address] == nil } ? .done : .notYet("first probe running")
            }
        }
        let driver = (try? io.linkName(devicePath(address) + "/driver")).flatMap { $0 } ?? "no driver"
        logger.info("\(address): just added; waited \(formatSeconds(Deadline.now().seconds(since: start))) for the kernel's first probe (\(driver))")
    }

    // MARK: Steps

    /// The checks made before anything is touched; the group's endpoints, in address order.
    private func plan(_ device: PCIDevice) throws(VFIOError) -> (group: Int, members: [String]) {
        let address = device.address.lowercased()
        func refuse(_ why: String) -> VFIOError { VFIOError(device: address, step: .check, cause: .refused(why)) }
        if device.isBridge {
            throw refuse("a PCI bridge: bridges are never passed through")
        }
        if let hold = device.bootHold {
            throw refuse("it serves \(hold.what): never passed through")
        }
        guard let group = device.iommuGroup else {
            throw refuse("no IOMMU group: the IOMMU is off or absent (intel_iommu=on or amd_iommu=on on the kernel "
                + "command line, VT-d/AMD-Vi in the firmware); vfio-pci and QEMU cannot use such a device")
        }
        var members = [address]
        for peer in groupPeers(of: device) {
            let classText: String
            do { classText = try io.read(devicePath(peer) + "/class") } catch {
                throw VFIOError(device: peer, step: .readState, cause: .system(error))
            }
            guard let cls = parseHex(classText) else {
                throw VFIOError(device: peer, step: .readState, cause: .refused("its class \(quote(classText)) is not a PCI class"))
            }
            if cls >> 16 == 0x06 {
                // A bridge stays on the host. vfio can take the group only while every device of it
                // that stays has no driver or one that leaves the IOMMU to its owner (pcieport,
                // pci-stub): an ISA/LPC bridge on lpc_ich (00:1f.0, with a PCH's audio, SMBus and SPI
                // flash) makes the group unusable. Refused here, before the SMBus and the flash
                // controller are taken off the host for a device_add that cannot succeed.
                let driver = try currentDriver(peer)
                if let driver, !Self.groupSafeBridgeDrivers.contains(driver) {
                    throw refuse("IOMMU group \(group) also holds \(peer), a bridge (class 0x\(hex6(cls))) "
                        + "that stays on the host on its driver \(driver): vfio-pci cannot take a group while a host "
                        + "driver has one of its devices")
                }
                logger.debug("\(peer), a bridge in IOMMU group \(group), is left \(driver.map { "on \($0)" } ?? "without a driver")")
                continue
            }
            if let hold = bootHold(peer) {
                throw refuse("IOMMU group \(group) also holds \(peer), which serves \(hold.what): "
                    + "the group cannot be passed through")
            }
            members.append(peer)
        }
        return (group, members.sorted())
    }

    /// Drivers of a bridge that may stay on the host in a group given to vfio-pci: they leave
    /// the group's IOMMU to its owner (the kernel's `driver_managed_dma`).
    static let groupSafeBridgeDrivers: Set<String> = ["pcieport", "pci-stub", vfioDriver]

    /// Why a PCI function is kept on the host, or nil: it serves a block device when its
    /// address is a component of the block device's sysfs path (addresses are unique, domain included).
    private func bootHold(_ address: String) -> BootHold? {
        bootDevices.hold { $0.split(separator: "/").contains { $0 == address } }
    }

    /// The member's driver and `driver_override` now.
    private func readState(_ address: String) throws(VFIOError) -> BindRecord.Member {
        let driver = try currentDriver(address)
        let override: String
        do { override = try io.read(devicePath(address) + "/driver_override") } catch {
            throw VFIOError(device: address, step: .readState, cause: .system(error))
        }
        let trimmed = override.trimmedWhitespace()
        return BindRecord.Member(address: address, originalDriver: driver,
                                 originalOverride: trimmed.isEmpty || trimmed == "(null)" ? nil : trimmed,
                                 wasOnVFIO: driver == Self.vfioDriver)
    }

    private func currentDriver(_ address: String) throws(VFIOError) -> String? {
        do { return try io.linkName(devicePath(address) + "/driver") } catch {
            throw VFIOError(device: address, step: .readState, cause: .system(error))
        }
    }

    private func requireVFIODriver(_ address: String) throws(VFIOError) {
        let present: Bool
        do { present = try io.exists(driverPath(Self.vfioDriver)) } catch {
            throw VFIOError(device: address, step: .check, cause: .system(error))
        }
        if !present {
            throw VFIOError(device: address, step: .check, cause: .refused(
                "the vfio-pci driver is not loaded (no \(driverPath(Self.vfioDriver))): modprobe vfio-pci"))
        }
    }

    private func moveToVFIO(_ m: BindRecord.Member) async throws(VFIOError) {
        let a = m.address
        try await write(Self.vfioDriver, to: devicePath(a) + "/driver_override", device: a, step: .driverOverride)
        if let driver = m.originalDriver {
            try await write(a, to: driverPath(driver) + "/unbind", device: a, step: .unbind)
            try await waitForDriver(a, nil, step: .waitForUnbind, seconds: timeout)
        }
        try await write(a, to: sysfs.path("/bus/pci/drivers_probe"), device: a, step: .driversProbe)
        try await waitForDriver(a, Self.vfioDriver, step: .waitForDriver, seconds: timeout)
    }

    /// Puts members back (state-driven: each one is looked at as it is now, so
    /// a member the failed step left half-way goes back too). Returns the failures.
    private func giveBack(_ members: [BindRecord.Member]) async -> [VFIOError] {
        var failures: [VFIOError] = []
        for m in members {
            do throws(VFIOError) {
                try await giveBack(m)
            } catch {
                // A member that has left the host (its slot unplugged: the kernel removed it before
                // its remove event came) has nothing to give back; before, that was an error, and the
                // record was kept for a retry that could only fail again.
                if (try? io.exists(devicePath(m.address))) == false {
                    logger.info("\(m.address): left the host; nothing to give back (\(error.step))")
                    continue
                }
                logger.error("\(m.address) could not go back to \(m.originalDriver ?? "no driver"): \(error)")
                failures.append(error)
            }
        }
        return failures
    }

    private func giveBack(_ m: BindRecord.Member) async throws(VFIOError) {
        let a = m.address
        try await write(m.originalOverride ?? "\n", to: devicePath(a) + "/driver_override", device: a, step: .driverOverride)
        let current = try currentDriver(a)
        if current == m.originalDriver { return }
        if let current {
            if m.originalDriver == nil && current != Self.vfioDriver {
                // It had no driver when recorded, and its driver came meanwhile (the kernel's
                // first probe finished after the record was made): that is where it belongs.
                logger.info("\(a): had no driver when recorded, now on \(current) (its driver took it meanwhile): left there")
                return
            }
            guard current == Self.vfioDriver else {
                throw VFIOError(device: a, step: .unbind, cause: .refused(
                    "bound to \(current), neither vfio-pci nor its old driver (\(m.originalDriver ?? "none")): left alone"))
            }
            try await write(a, to: driverPath(current) + "/unbind", device: a, step: .unbind)
            try await waitForDriver(a, nil, step: .waitForUnbind, seconds: restoreTimeout)
        }
        if let original = m.originalDriver {
            try await write(a, to: sysfs.path("/bus/pci/drivers_probe"), device: a, step: .driversProbe)
            try await waitForDriver(a, original, step: .waitForDriver, seconds: restoreTimeout)
        }
    }

    /// One sysfs store, on a thread of its own (`SysfsIO.write(_:to:off:)`): the kernel runs the
    /// driver's remove or probe inside the write (a GPU driver's can take seconds, and vfio-pci's
    /// remove waits for the VM that holds the device), and the loop must go on meanwhile: other
    /// devices' events, other VMs, the API. The binder's lock keeps its own steps in order.
    private func write(_ value: String, to path: String, device: String, step: VFIOError.Step) async throws(VFIOError) {
        do { try await io.write(value, to: path, off: loop) } catch {
            throw VFIOError(device: device, step: step, cause: .system(error))
        }
        logger.trace("wrote \(quote(value)) to \(path)")
    }

    /// Waits until the `driver` link names `expected` (nil: until there is no link).
    private func waitForDriver(_ address: String, _ expected: String?, step: VFIOError.Step,
                               seconds: Double) async throws(VFIOError) {
        let link = devicePath(address) + "/driver"
        let io = self.io
        let outcome = await waits.wait(for: .pci(address), deadline: .after(seconds)) {
            do throws(SysfsIOError) {
                let now = try io.linkName(link)
                return now == expected ? .done : .notYet(now.map { "bound to \($0)" } ?? "no driver bound")
            } catch {
                return .failed(error)
            }
        }
        try Self.check(outcome, device: address, step: step,
                       waitingFor: expected.map { "bind to \($0)" } ?? "unbind", seconds: seconds)
    }

    /// A wait's outcome as success or the error that names the device, the step and what was awaited.
    private static func check(_ outcome: EventWaits.Outcome, device: String, step: VFIOError.Step, waitingFor: String,
                              seconds: Double) throws(VFIOError) {
        switch outcome {
        case .satisfied:
            return
        case .failed(let e):
            throw VFIOError(device: device, step: step, cause: .system(e))
        case .timedOut(let seen):
            throw VFIOError(device: device, step: step, cause: .timeout(waitingFor: waitingFor, seconds: seconds, state: seen))
        }
    }

    private func waitForGroupNode(_ group: Int, device: String) async throws(VFIOError) {
        let node = groupNode(group)
        let io = self.io
        let outcome = await waits.wait(for: .vfioGroup(String(group)), deadline: .after(timeout)) {
            do throws(SysfsIOError) {
                return try io.exists(node) ? .done : .notYet("\(node) absent")
            } catch {
                return .failed(error)
            }
        }
        try Self.check(outcome, device: device, step: .waitForGroupNode, waitingFor: node, seconds: timeout)
    }

    // MARK: Paths

    private func devicePath(_ address: String) -> String { sysfs.path("/bus/pci/devices/\(address)") }
    private func driverPath(_ driver: String) -> String { sysfs.path("/bus/pci/drivers/\(driver)") }
    private func groupNode(_ group: Int) -> String { devRoot + "/vfio/\(group)" }
}

extension String {
    func trimmedWhitespace() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\n" || f == "\t" || f == "\r" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\n" || l == "\t" || l == "\r" { s = s.dropLast() }
        return String(s)
    }
}
