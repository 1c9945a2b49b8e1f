import CLinux
import DeviceModel
import HostDevices
import HotplugConfig
import HotplugRules
import JSONKit
import Logging
import Reactor
import VFIO
import VMM
#if canImport(Glibc)
import Glibc
#endif

/// How the daemon was started.
public struct DaemonOptions: Sendable {
    public var configPath: String
    /// `-a`: attach every connected device the rules assign, at start.
    public var attachConnected: Bool
    /// The sysfs tree (`/sys`).
    public var sysfsRoot: String
    /// The crosvm binary (`crosvm` on PATH by default).
    public var crosvmPath: String
    /// Seconds to wait for a new USB device's interfaces before deciding on what is known.
    public var interfaceWait: Double
    /// Where the record of each device moved to vfio-pci is kept (`/run/vhotplug/vfio`):
    /// a restarted daemon gives such devices back to their drivers from there.
    public var vfioRecordDirectory: String
    /// Where the `authorized_default` values from before USB authorization are kept while it is
    /// on (`/run/vhotplug/usb-authorized-default`): a daemon that restarts after a crash writes
    /// those back at its stop, not the 0s the crashed one left.
    public var authorizationRecordPath: String
    /// Where the ports vhotplug attached in each crosvm VM are kept (`/run/vhotplug/crosvm`, a
    /// file a VM and socket): a restarted daemon knows them from ports the user attached by hand.
    public var crosvmRecordDirectory: String = "/run/vhotplug/crosvm"
    /// Where the boot filesystems are found (`/proc/self/mountinfo`, and `/etc/fstab` for an
    /// automounted `/boot`). The mount table's changes are followed on `/proc/self/mountinfo`.
    public var mountInfoPath = "/proc/self/mountinfo"
    public var fstabPath = "/etc/fstab"

    public init(configPath: String, attachConnected: Bool = false, sysfsRoot: String = "/sys",
                crosvmPath: String = "crosvm", interfaceWait: Double = 5,
                vfioRecordDirectory: String = BindRecordStore.defaultDirectory,
                authorizationRecordPath: String = "/run/vhotplug/usb-authorized-default") {
        self.configPath = configPath
        self.attachConnected = attachConnected
        self.sysfsRoot = sysfsRoot
        self.crosvmPath = crosvmPath
        self.interfaceWait = interfaceWait
        self.vfioRecordDirectory = vfioRecordDirectory
        self.authorizationRecordPath = authorizationRecordPath
    }
}

/// One device the daemon follows: what it is, where the rules send it, where
/// it should be and where it is. `reconcile` moves `attachment` towards `want`.
/// Touched only from the `Daemon` actor (its reconcile tasks run on the same loop).
final class Tracked: @unchecked Sendable {
    var device: HostDevice {
        didSet { logName = device.logName }
    }
    /// How log lines and replies name the device (made once per reading of it).
    private(set) var logName: String
    var decision: Decision
    /// The VM the device should be in (nil: in none).
    var want: String?
    /// Where it is, as far as the daemon knows.
    var attachment: Attachment? {
        didSet {
            leaveVia = nil // the backend to leave through goes with the attachment it made
            unanswered = nil
        }
    }
    /// An operation on the attachment whose outcome the VM had not given by its deadline
    /// (Daemon.lookAgain): the daemon asks the VM, later and later, whether it has the device.
    /// Cleared with the attachment.
    var unanswered: Unanswered?
    /// Set by that look's timer: the next reconcile only asks the VM.
    var lookNow = false
    /// That look's timer.
    var lookTimer: TimerToken?
    /// An unanswered attach that the VM then did not have was tried once more (a second one fails).
    var attachRetried = false
    /// A PCI device whose attach waits for a member of its IOMMU group to leave another VM
    /// (the group moving: one group can be open in one VM at a time).
    var waitsForGroup = false
    /// A PCI device's driver since its last bind or unbind event (nil: none since it was read;
    /// `.some(nil)`: no driver). `device` keeps what was read, as an attach compares it.
    var driverNow: String??
    /// An explicit detach (the API's): sent even while an earlier one waits for the guest.
    var detachAgain = false
    /// The VM refused the attach because its guest had not started its USB driver yet (crosvm,
    /// while the guest boots), or crosvm did not answer it in time: the attach is tried again
    /// on a timer (`Daemon.waitForGuest`).
    var guestWait: GuestWait?
    /// A crosvm attach of this device was killed at its deadline (crosvm's control loop busy or
    /// hung): whether it went through may be unknown to the backend until it lists its ports.
    /// Once the device will not be attached there (`Daemon.settleUnknownAttach`), the backend
    /// frees a port the attach may have filled. Cleared by an attach that gets there.
    var unsettled: (vm: String, device: USBDevice)?

    struct GuestWait {
        /// The VM whose guest is waited for.
        var vm: String
        /// Its last try's failure was crosvm's silence (killed at its deadline), not its guest.
        var silent = false
        /// When it first refused.
        var since: Deadline
        /// Attaches it refused so far.
        var tries = 0
        /// Seconds from the next refusal to the try after it.
        var delay: Double
        /// The next try's timer (nil once it fired: the try is due).
        var timer: TimerToken?
    }

    struct Unanswered {
        /// An attach (QEMU still realizing a vfio-pci device) or a detach (a guest that had not let go).
        enum Operation { case attach, detach }
        var operation: Operation
        /// Seconds until the next look.
        var delay: Double
        /// A detach crosvm was killed in, whose port the look found still holding the device:
        /// crosvm does not finish it later by itself, so the loop sends it again.
        var resend = false
        /// A detach that failed (no connection, no greeting, an error): the VM may never have
        /// had the request, so a look that finds the device still there sends it again, as
        /// for crosvm (QEMU refuses a second device_del while the guest is unplugging).
        var sendAgainIfHeld = false
    }
    /// Still on the host.
    var present = true
    /// A reconcile task is running for it.
    var busy = false
    /// On vfio-pci from an earlier run while a VM that may hold it has not been listed
    /// (`unlisted`): not given back to its driver (the kernel's unbind would wait for that VM
    /// without end, or pull the device out of its guest) until every VM has been.
    var placementUnknown = false
    /// `reconcile` was asked while the task ran: it looks at the device once more before it ends
    /// (the task may be past the point where it would have seen the change).
    var again = false
    /// The attach failed for a reason other than the VM being down: not retried
    /// until something changes (replug, VM restart, reload).
    var failed = false {
        didSet { if !failed { attachRetried = false; waitsForPort = nil } } // something changed: a fresh try, with its one retry
    }
    /// The attach failed for want of a free port in this VM (root ports, crosvm's USB ports):
    /// tried again when a device leaves that VM.
    var waitsForPort: String?
    /// Woken by a departure from this VM to take the port it freed (`wakeFirstPortWaiter`): if it
    /// does not take it (its attach failed otherwise, or it left), the next waiter is woken.
    var wokenForPort: String?
    /// When the event that started the current work arrived (latency in logs).
    var since: Deadline
    /// A PCI device vhotplug moved to vfio-pci: the drivers to give back.
    var vfio: BindRecord?
    /// The last attach or detach failure, for API replies.
    var lastError: String?
    /// The backend the device's attachment was made through, when a reload retired it (the VM
    /// left the configuration, or its socket changed): the device leaves through it first.
    var leaveVia: (any VMBackend)?
    /// The VM an attach of this device is on its way to (from its IOMMU group check to its end):
    /// a group mate going to another VM meanwhile waits, as for a mate in that VM.
    var attachingTo: String?
    /// `pciIommuAddAll`: the address of the group mate whose VM this device follows (Daemon+PCI.swift).
    var follows: String?
    /// `pciIommuAddAll`: why no device of its IOMMU group may be attached (two VMs asked for it).
    var groupConflict: String?
    /// The last `pciIommuAddAll` note logged for a leading device (logged again only when it changes).
    var groupNote: String?

    /// Where the device should be, now: `want`, unless its IOMMU group is in conflict.
    var target: String? { groupConflict == nil ? want : nil }

    init(device: HostDevice, decision: Decision, since: Deadline) {
        self.device = device
        self.logName = device.logName
        self.decision = decision
        self.since = since
    }
}

/// The daemon: one actor on the event loop. Device events -> read the device ->
/// decide -> reconcile each device towards where it should be. No polling: it
/// waits on the udev monitor, the VM sockets' folders, signals and replies.
public actor Daemon {
    nonisolated let loop: EventLoop
    public nonisolated var unownedExecutor: UnownedSerialExecutor { loop.asUnownedSerialExecutor() }

    var options: DaemonOptions
    var logger: Logger
    var configuration: Configuration
    var matcher: Matcher
    var backends: [String: any VMBackend] = [:]
    /// VMs known to be down (their socket refuses): devices wait for the socket to appear.
    var vmDown: Set<String> = []
    /// VMs whose devices could not be listed (no answer in time, an error: not a VM that is down),
    /// with the delay before the next time they are asked and its timer (`relistLater`). Until
    /// every VM has been listed, a PCI device an earlier run left on vfio-pci stays there
    /// (`placementUnknown`): one of them may hold it.
    var unlisted: [String: (delay: Double, timer: TimerToken?)] = [:]
    /// How many times a device left each VM (a port may have freed): an attach refused for want
    /// of a port while this moved is tried again at once.
    var portsFreed: [String: Int] = [:]
    /// Some device may wait for a port (set with any `waitsForPort`; cleared by a departure that
    /// finds none): a departure looks through the devices only then.
    var mayWaitForPort = false
    let reader: DeviceReader
    /// Moves PCI devices (their whole IOMMU group) to vfio-pci and back.
    let binder: VFIOBinder
    /// The devices behind the host's `/` and `/boot`, never passed through: read at start and at
    /// each reload; a change of the mount table adds what it mounted there (see `mountsChanged`).
    var boot: BootDevices
    var monitor: UdevMonitor?
    var watcher: PathWatcher?
    var signals: SignalSource?
    /// Followed devices by sysfs path.
    var devices: [String: Tracked] = [:]
    /// USB devices whose interfaces are not all there yet: sysfs path -> (event time, deadline timer).
    var pendingUSB: [String: (since: Deadline, timer: TimerToken, event: KernelUSBFields?)] = [:] {
        // Interfaces' events are parsed only while a device waits for its interfaces.
        didSet { monitor?.usbInterfaceEvents = !pendingUSB.isEmpty }
    }
    /// Called once the first pass over connected devices is done (systemd READY=1).
    var onReady: (() -> Void)?
    var stopping = false
    /// The start is over (the first pass has found what the VMs have): a SIGHUP before that
    /// is kept for then (`reloadPending`), so that a reload does not reconcile devices whose
    /// attachments are not known yet (a crosvm port attached twice, a bind before its record).
    var started = false
    /// A SIGHUP came during the start or during a reload: one more reload follows it.
    var reloadPending = false
    /// The boot devices changed during the start: every device is decided again once it is over.
    var decidePending = false
    /// A reload is under way (it waits for the API's listeners): reloads run one at a time.
    var reloading = false
    /// The pending `malloc_trim` (see `trimSoon`).
    var trimTimer: TimerToken?
    /// The control API: server, state file, the user's choices (Daemon+API.swift).
    var api = APIState()
    /// `usbAuthorization`: the host's `authorized_default` and devices' `authorized` (USBAuthorization.swift).
    var authorizer: USBAuthorizer
    /// Seconds a QEMU detach waits for the guest to let go (`VHOTPLUG_UNPLUG_TIMEOUT`, 10).
    var unplugTimeout = 10.0
    /// Seconds a `device_add vfio-pci` may take (`VHOTPLUG_PCI_ATTACH_TIMEOUT`, 60).
    var pciAttachTimeout = 60.0
    /// Seconds for each other QMP exchange (`VHOTPLUG_QMP_TIMEOUT`, 5).
    var qmpTimeout = 5.0
    /// Seconds a stop waits for a VFIO bind or give-back, and for the state file (`VHOTPLUG_STOP_WAIT`,
    /// 4: both within systemd's TimeoutStopSec of 10 s).
    var stopWait = 4.0
    /// Seconds after its connect a QMP connection may be passed on to the VM's next operation
    /// when that one is already waiting (`VHOTPLUG_QMP_BATCH_HOLD`, 0.25).
    var qmpBatchHold = 0.25
    /// Seconds each run of crosvm's command line may take before it is killed (`VHOTPLUG_CROSVM_TIMEOUT`, 5).
    var crosvmTimeout = 5.0
    /// The longest wait between two looks at an operation the VM did not answer in time.
    static let lookCap = 300.0
    /// Seconds a device is tried again while its VM's guest does not take USB devices yet
    /// (`VHOTPLUG_GUEST_WAIT`, 300): 0.25 s after the first refusal, then twice as late each time, up to 30 s.
    var guestWaitLimit = 300.0
    static let guestRetryFirst = 0.25
    static let guestRetryCap = 30.0

    public init(options: DaemonOptions, configuration: Configuration, loop: EventLoop, logger: Logger) {
        self.options = options
        self.configuration = configuration
        self.matcher = Matcher(configuration)
        self.loop = loop
        self.logger = logger
        let sysfs = Sysfs(root: options.sysfsRoot)
        // The host's boot devices, read from mountinfo for both users.
        let boot = BootDevices.read(sysfs: sysfs, mountInfoPath: options.mountInfoPath, fstabPath: options.fstabPath)
        self.boot = boot
        Self.warnUnresolved(boot, logger)
        // No PCI names: rules and log lines use IDs, and libpci's pci.ids list is 2 MB of memory.
        self.reader = DeviceReader(sysfs: sysfs, pciNames: nil, bootDevices: boot, inspectFacts: false)
        self.authorizer = USBAuthorizer(sysfs: sysfs, io: SystemSysfsIO(), recordPath: options.authorizationRecordPath)
        self.binder = VFIOBinder(loop: loop, sysfs: sysfs, bootDevices: boot,
                                 store: BindRecordStore(directory: options.vfioRecordDirectory), logger: logger)
    }

    static func warnUnresolved(_ boot: BootDevices, _ logger: Logger) {
        guard !boot.unresolved.isEmpty else { return }
        logger.warning("""
            the host's \(boot.unresolvedText) cannot be resolved to its disks: every disk there is now \
            (\(BootDevices.names(boot.disks))) stays on the host, with its USB device or PCI controller
            """)
    }

    /// Follows the mount table's changes (a `/boot` mounted after the start, a root moved to
    /// other disks): `/proc/self/mountinfo` reports each as `EPOLLPRI`.
    func followMountTable() {
        let fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            logger.warning("cannot open /proc/self/mountinfo (\(String(cString: strerror(errno)))): boot filesystems mounted from now on are found at a reload only")
            return
        }
        let error = loop.watch(fd, events: EPOLLPRI.rawValue) { [self] in
            Task(executorPreference: self.loop) { await self.mountsChanged() }
        }
        guard error == 0 else {
            close(fd)
            logger.warning("cannot follow the mount table (epoll: \(String(cString: strerror(error)))): boot filesystems mounted from now on are found at a reload only")
            return
        }
        // (Open for the daemon's life.)
    }

    /// Reads the boot devices again. `keep`: what was held stays held too (a filesystem unmounted
    /// for a moment, a disk leaving the root's array, does not send its disk to a VM at once: a
    /// reload, or a restart, lets it go). Returns whether the held devices changed; the reader, the
    /// binder and each device followed have them then.
    func readBootDevices(_ why: String, keep: Bool) -> Bool {
        let read = BootDevices.read(sysfs: reader.sysfs, mountInfoPath: options.mountInfoPath, fstabPath: options.fstabPath)
        let fresh = keep ? boot.merging(read) : read
        guard fresh != boot else {
            if keep, read != boot { logger.debug("\(why): boot filesystems on \(read.summary); the devices of those gone stay held until a reload") }
            return false
        }
        logger.info("\(why): the host's boot filesystems are on \(fresh.summary) (were on \(boot.summary))")
        if fresh.unresolved != boot.unresolved { Self.warnUnresolved(fresh, logger) }
        boot = fresh
        reader.bootDevices = fresh
        // (A job queued now runs before any bind the decisions below start.)
        let binder = self.binder
        Task(executorPreference: loop) { await binder.setBootDevices(fresh) }
        for (_, t) in devices where t.present { applyBootHold(t) }
        return true
    }

    /// Sets whether a followed device holds a boot filesystem, as a reading of it would now.
    func applyBootHold(_ t: Tracked) {
        switch t.device {
        case .usb(var d):
            let hold = boot.hold(of: d.sysPath)
            if hold != d.bootHold { d.bootHold = hold; t.device = .usb(d) }
        case .pci(var d):
            let hold = boot.hold(of: d.sysPath)
            if hold != d.bootHold { d.bootHold = hold; t.device = .pci(d) }
        case .input:
            break
        }
    }

    /// The mount table changed: boot filesystems mounted since are held, and devices that hold
    /// one now are decided again (one in a VM leaves it).
    func mountsChanged() {
        guard readBootDevices("the mount table changed", keep: true) else { return }
        // During the start the devices' attachments are not known yet: decided again once they are
        // (as a SIGHUP then is; before, a crosvm port could be attached twice, a bind made before its record).
        guard started else { decidePending = true; return }
        decideAgain()
    }

    /// Starts: signals, the event monitor (before reading devices, so none is
    /// missed), the VM sockets' watch, then the first pass over connected devices.
    public func start(onReady: (() -> Void)? = nil) async throws {
        self.onReady = onReady
        signals = try SignalSource([SIGHUP, SIGTERM, SIGINT], loop: loop) { [self] signo in
            Task(executorPreference: self.loop) { await self.signal(signo) }
        }
        // VHOTPLUG_EVENT_SOURCE=udev|kernel overrides the detection (a container whose
        // /run/udev is not the host's, a udevd that does not answer on its control socket).
        let forced = environment("VHOTPLUG_EVENT_SOURCE", expected: "udev or kernel") { ["udev", "kernel"].contains($0) ? $0 : nil }
        // VHOTPLUG_UEVENT_BUFFER=BYTES: the event socket's receive buffer (8 MiB by default).
        let buffer = environment("VHOTPLUG_UEVENT_BUFFER", expected: "a number of bytes from 4096 to 1073741824") {
            Int($0).flatMap { (4096...(1 << 30)).contains($0) ? $0 : nil }
        } ?? UdevMonitor.defaultReceiveBuffer
        // How long a QEMU detach waits for the guest (10 s), and a vfio-pci device_add for QEMU (60 s).
        unplugTimeout = environmentSeconds("VHOTPLUG_UNPLUG_TIMEOUT") ?? unplugTimeout
        pciAttachTimeout = environmentSeconds("VHOTPLUG_PCI_ATTACH_TIMEOUT") ?? pciAttachTimeout
        qmpTimeout = environmentSeconds("VHOTPLUG_QMP_TIMEOUT") ?? qmpTimeout
        stopWait = environmentSeconds("VHOTPLUG_STOP_WAIT") ?? stopWait
        qmpBatchHold = environment("VHOTPLUG_QMP_BATCH_HOLD", expected: "seconds from 0 to 3600") {
            Double($0).flatMap { (0...3600).contains($0) ? $0 : nil }
        } ?? qmpBatchHold
        crosvmTimeout = environmentSeconds("VHOTPLUG_CROSVM_TIMEOUT") ?? crosvmTimeout
        guestWaitLimit = environmentSeconds("VHOTPLUG_GUEST_WAIT") ?? guestWaitLimit
        // How long a USB device whose add event came before its interfaces waits for them (5 s).
        options.interfaceWait = environmentSeconds("VHOTPLUG_INTERFACE_WAIT") ?? options.interfaceWait
        let monitor = try UdevMonitor(subsystems: eventSubsystems, source: forced, receiveBuffer: buffer)
        monitor.usbInterfaceEvents = !pendingUSB.isEmpty
        if let forced {
            logger.info("listening to \(forced) events (VHOTPLUG_EVENT_SOURCE)")
        } else if monitor.source == "kernel" {
            logger.warning("udevd is not running: listening to kernel events directly")
        }
        if monitor.filterError != 0 {
            logger.warning("cannot filter uevents in the kernel (SO_ATTACH_FILTER: \(String(cString: strerror(monitor.filterError)))): each is read and dropped after a look")
        }
        // (Its events wait in its socket until the first pass has read the devices: `followEvents`.)
        self.monitor = monitor
        followMountTable()
        watcher = try PathWatcher(loop: loop) { [self] path, created in
            Task(executorPreference: self.loop) { await self.socketChanged(path, created: created) }
        }
        let logger = self.logger
        watcher?.warn = { logger.warning("\($0)") }
        makeBackends()
        loadState()
        try await openAPI()
        try await firstPass()
        await serveAPI()
        logger.info("vhotplug \(configuration.summary); following \(devices.count) devices; listening (\(monitor.source) events)")
        started = true
        onReady?()
        if decidePending {
            decidePending = false
            decideAgain()
        }
        if reloadPending { await reloadInTurn() }
        noteIfIdle()
    }

    /// At debug level, says so when no device operation is in flight and no start or reload is
    /// under way (after the line that began one, what it started is over when this comes): tests
    /// wait for it before they check that something did not happen. (Not looked at otherwise.)
    func noteIfIdle() {
        guard logger.logLevel <= .debug, started, !reloading, !devices.values.contains(where: \.busy) else { return }
        logger.debug("idle: no device operation in flight")
    }

    // MARK: Configuration and VMs

    /// The event subsystems the configuration needs: input only with evdev passthrough on
    /// (a USB mouse's 3 input nodes would otherwise be received and read for nothing).
    var eventSubsystems: [String] {
        matcher.decidesInputDevices ? ["usb", "pci", "vfio", "input"] : ["usb", "pci", "vfio"]
    }

    /// The device kinds the first pass reads.
    var followedKinds: DeviceKinds {
        matcher.decidesInputDevices ? .all : [.usb, .pci]
    }

    /// Makes a backend for each configured VM (keeping one whose type and socket are the same);
    /// returns the names of the VMs whose backend is new, in order.
    @discardableResult
    func makeBackends() -> [String] {
        watcher?.removeAll()
        var next: [String: any VMBackend] = [:]
        for vm in configuration.vms {
            if let old = backends[vm.name], old.type == vm.type, old.socketPath == vm.socket {
                next[vm.name] = old
            } else {
                switch vm.type {
                case .qemu:
                    next[vm.name] = QEMUBackend(name: vm.name, socketPath: vm.socket, loop: loop, logger: logger,
                                                timeout: qmpTimeout, unplugTimeout: unplugTimeout, pciTimeout: pciAttachTimeout,
                                                batchHold: qmpBatchHold)
                case .crosvm:
                    next[vm.name] = CrosvmBackend(name: vm.name, socketPath: vm.socket,
                                                  crosvmPath: crosvmProgram(configuration),
                                                  loop: loop, logger: logger, timeout: crosvmTimeout,
                                                  recordPath: options.crosvmRecordDirectory + "/" + CrosvmBackend.recordFileName(vm: vm.name, socket: vm.socket),
                                                  sysfsRoot: options.sysfsRoot)
                }
            }
            watcher?.watch(vm.socket)
            // Kept across reloads: the evdev ports, and crosvm's program, are set again from this configuration.
            if let qemu = next[vm.name] as? QEMUBackend {
                let prefixes = configuration.evdevPortPrefixes(for: vm.name)
                qemu.assumeIsolated { $0.keepPorts(forEvdev: prefixes) }
            } else if let crosvm = next[vm.name] as? CrosvmBackend {
                let program = crosvmProgram(configuration)
                crosvm.assumeIsolated { $0.setProgram(program) }
            }
        }
        // A VM that a reload removed, or whose socket or type changed, still holds what was
        // attached to it: each such device leaves through the backend that attached it.
        for (name, old) in backends where next[name] !== old {
            // (One that a reload before retired keeps the backend that has it.)
            for t in devices.values where t.attachment?.vm == name && t.leaveVia == nil { t.leaveVia = old }
        }
        let fresh = next.filter { backends[$0.key] !== $0.value }.keys.sorted()
        backends = next
        return fresh
    }

    /// The crosvm program a configuration names (`general.crosvm`), else the daemon's default.
    func crosvmProgram(_ c: Configuration) -> String {
        c.general.crosvm ?? options.crosvmPath
    }

    func vmName(forSocket path: String) -> String? {
        configuration.vms.first { $0.socket == path }?.name
    }

    /// A VM's socket appeared (the VM started or restarted) or vanished.
    func socketChanged(_ path: String, created: Bool) async {
        guard let vm = vmName(forSocket: path) else { return }
        if !created {
            logger.info("VM \(vm): socket removed; its devices wait for it to come back")
            vmDown.insert(vm)
            for t in devices.values where t.guestWait?.vm == vm { endGuestWait(t) }
            // (Not one attached through a backend a reload retired: that VM's socket is another.)
            for (key, t) in devices where t.attachment?.vm == vm && t.leaveVia == nil {
                t.attachment = nil
                // One that should have left it (its guest never let go, or its IOMMU group is in
                // conflict) is free now: back to its driver.
                if t.target != vm {
                    reconcile(key)
                    // Going nowhere: off the host again (usbAuthorization), as after a detach.
                    if t.target == nil { Task(executorPreference: loop) { await self.deauthorizeAfterVM(t, vm: vm) } }
                } else if !t.busy {
                    // It waits for the VM off the host (usbAuthorization), not in the host's drivers.
                    Task(executorPreference: loop) { await self.deauthorizeAfterVM(t, vm: vm) }
                }
            }
            wakeGroupWaiters()
            return
        }
        logger.info("VM \(vm): socket appeared; giving it back its devices")
        vmDown.remove(vm)
        // A new QEMU or crosvm process has none of the devices the old one had.
        for t in devices.values where t.attachment?.vm == vm && t.leaveVia == nil { t.attachment = nil }
        for t in devices.values where t.want == vm {
            t.failed = false
            t.since = .now()
            endGuestWait(t) // a new guest: tried at once, and waited for afresh
        }
        // The socket file exists from QEMU's bind(), a moment before its listen():
        // a refused connection right now is retried, briefly and boundedly. A VM that just
        // started may also be too busy to answer in time (QEMU setting up vfio devices under
        // TCG): its list is asked for twice more before its devices are given back, as devices
        // it was started with would otherwise be added again (QEMU refuses them as duplicates).
        var delay = 0.005
        var timeouts = 0
        while !stopping {
            let error = await resync(vm: vm)
            if vmDown.contains(vm) {
                guard delay < 1, access(path, F_OK) == 0 else { break }
                await loop.sleep(delay)
                delay *= 2
            } else if case .timeout = error, timeouts < 2, access(path, F_OK) == 0 {
                timeouts += 1
                logger.info("VM \(vm): asking again for its devices before giving them back")
            } else {
                break
            }
        }
        for (key, t) in devices where t.want == vm { reconcile(key) }
    }

    // MARK: First pass

    /// Reads every connected device, finds what the VMs already have from an
    /// earlier run (their ids), removes stale ids, and with `-a` attaches the rest.
    func firstPass() async throws {
        // New devices off the host before the connected ones are read: one plugged meanwhile is
        // read with them (and de-authorized by `deauthorizeUnmatched`), or arrives unauthorized.
        if authorization != nil && !stopping { authorizer.engage(logger) }
        let found: [HostDevice], failures: [DeviceReadError]
        do {
            (found, failures) = try reader.enumerate(followedKinds)
        } catch {
            // Nothing is known of the devices (out of descriptors or memory): the start stops here,
            // before any VM record or id is taken as stale. (Before, an empty listing.)
            authorizer.release(logger)
            throw error
        }
        for f in failures { logger.warning("cannot read \(f)") }
        let now = Deadline.now()
        // USB devices the kernel is still configuring (plugged as the daemon starts): decided
        // once their interfaces have come, as after their add event. (Before, one was decided
        // on the interfaces there were, and its interfaces' events were not waited for: a
        // receiver read with its keyboard interface alone was never taken for the mouse it is.)
        var arriving: [String] = []
        restoreSuspended(found)
        for device in found {
            guard let key = Self.key(device) else { continue }
            if case .usb = device, reader.usbInterfacesComing(sysPath: key) {
                arriving.append(key)
                continue
            }
            let t = Tracked(device: device, decision: decide(device), since: now)
            devices[key] = t
            if options.attachConnected { t.want = initialWant(key, t) }
            if options.attachConnected || t.decision.targetVm != nil { logDecision(t) }
        }
        // Events from here on: one that came since the monitor opened is of a device read above
        // (a repeated add) or of one plugged since. Before, the start's waits (the API's listeners)
        // let such an event start an attach whose device the loop above then followed afresh:
        // two attaches of one device.
        followEvents()
        await adoptBindRecords()
        // (Off: what an earlier daemon, killed while it was on, left at 0 is written back.)
        if authorization == nil { authorizer.restoreRecorded(logger) }
        engageAuthorization()
        // Each VM is asked at the same time: a VM that does not answer costs its
        // own deadline once, not one per VM before it.
        await withTaskGroup(of: Void.self) { group in
            for vm in configuration.vms.map(\.name) {
                group.addTask(executorPreference: self.loop) { await self.resync(vm: vm) }
            }
        }
        if unlisted.isEmpty { placementsKnown() }
        for key in devices.keys.sorted() { reconcile(key) }
        for key in arriving where devices[key] == nil { deviceAdded(key, at: now) }
    }

    /// Handles the monitor's events from now on.
    func followEvents() {
        guard let monitor else { return }
        loop.watch(monitor.fd) { [self] in
            // One event per wake-up, handled at once on the loop's thread (this actor's
            // executor): the work it starts (a VM's reply) runs before the next event
            // is read, and epoll (level-triggered) comes back for the rest.
            if let e = monitor.receive() {
                let time = Deadline.now()
                self.assumeIsolated { $0.handle(e, at: time) }
            }
            // Events were lost, and the ones queued before the loss are all handled.
            if monitor.takeOverflow() { self.assumeIsolated { $0.eventsLost() } }
        }
    }

    /// The records an earlier run left of devices it moved to vfio-pci: each
    /// present device still on vfio-pci gets its record back. One the rules
    /// still send to a configured VM stays there (and goes to that VM); any
    /// other goes back to its recorded driver once no VM holds it. A record of
    /// a device gone, or no longer on vfio-pci, is stale and deleted; a file
    /// that is no record is reported and left alone.
    func adoptBindRecords() async {
        guard let store = binder.store else { return }
        let (records, problems) = store.load()
        for p in problems { logger.warning("VFIO record ignored: \(p)") }
        // Devices whose own record a handed-over one was merged into: theirs is done.
        var merged: Set<String> = []
        for var record in records where !merged.contains(record.device) {
            /// The followed PCI device at `address` when it was on vfio-pci as the first pass read it.
            func onVFIOAtStart(_ address: String) -> Tracked? {
                tracked(pci: address).flatMap { $0.pciDriver == VFIOBinder.vfioDriver ? $0 : nil }
            }
            var holder = onVFIOAtStart(record.device)
            if holder == nil, let heir = record.members.lazy.filter({ !$0.wasOnVFIO }).compactMap({ onVFIOAtStart($0.address) }).first,
               case .pci(let d) = heir.device {
                // The device is off vfio-pci (or gone) and a member is still on it: a bind or a
                // give-back cut short (the daemon killed meanwhile). That member takes the record.
                // Merged with the heir's own record (read already, or still to come in this loop: before,
                // it was ignored, and then put back over the merged one, which lost what the group had).
                let own = heir.vfio ?? records.first { $0.device == d.address }
                merged.insert(d.address)
                guard let next = await binder.handOver(record, to: d.address, merging: own) else { continue }
                logger.info("pci \(record.device): its VFIO record goes to \(heir.device.logName), still on vfio-pci")
                record = next
                holder = heir
            }
            guard let t = holder else {
                // A member the bind moved that is on no driver now: a bind or give-back cut short
                // between its unbind and its probe (the daemon killed). Given back with the record
                // (before, the record was deleted and the device stayed with no driver).
                if let cut = record.members.first(where: { m in !m.wasOnVFIO && tracked(pci: m.address).map { $0.pciDriver == nil } == true }) {
                    do {
                        try await binder.restore(record)
                        logger.info("pci \(record.device): its VFIO record is of a bind or give-back cut short (\(cut.address) on no driver): IOMMU group \(record.group) given back to its drivers")
                    } catch {
                        logger.error("pci \(record.device): its VFIO record is of a bind or give-back cut short (\(cut.address) on no driver), and giving IOMMU group \(record.group) back failed: \(error); the record stays")
                    }
                    continue
                }
                let now = tracked(pci: record.device).map { "now on \($0.pciDriver ?? "no driver")" } ?? "gone"
                logger.info("pci \(record.device): stale VFIO record deleted (the device is \(now))")
                do { try store.remove(record.device) } catch { logger.warning("pci \(record.device): \(error)") }
                continue
            }
            t.vfio = record
            t.placementUnknown = true // (until the VMs are listed)
            let drivers = record.members.map { "\($0.address) from \($0.originalDriver ?? "no driver")" }.joined(separator: ", ")
            // Where a device connected now goes: the user's detach and choice of VM (the state file)
            // count. (Before, the rule's first VM: a device the user had detached, or put in another
            // allowed VM, went to that one.)
            if let key = Self.key(t.device), let vm = initialWant(key, t), backends[vm] != nil {
                t.want = vm
                logger.info("\(t.logName): on vfio-pci from an earlier run (\(drivers)); still for \(vm)")
            } else if let vm = leaderVM(of: t), backends[vm] != nil {
                t.want = vm
                logger.info("\(t.logName): on vfio-pci from an earlier run (\(drivers)); still for \(vm) with its IOMMU group (pciIommuAddAll)")
            } else {
                t.want = nil
                logger.info("\(t.logName): on vfio-pci from an earlier run (\(drivers)); no VM takes it now: back to its driver once it is in no VM")
            }
        }
    }

    /// The followed PCI device at `address`.
    func tracked(pci address: String) -> Tracked? {
        devices.values.first { t in
            if case .pci(let d) = t.device { return d.address == address }
            return false
        }
    }

    /// What the VM has of vhotplug's devices: matches them to the followed
    /// devices, and removes what belongs to no device present. Returns why the VM could not
    /// be listed, or nil.
    @discardableResult
    func resync(vm: String) async -> VMError? {
        guard let backend = backends[vm] else { return nil }
        let listed: [Attachment]
        do {
            listed = try await backend.listAttached()
            // A reload meanwhile gave the VM another backend: what this one listed is not of it.
            guard backends[vm] === backend else { return nil }
            vmDown.remove(vm)
        } catch {
            guard backends[vm] === backend else { return nil }
            if error.isNotRunning {
                vmDown.insert(vm)
                logger.info("VM \(vm) is not running; its devices will follow when it starts")
                listedOrDown(vm)
            } else {
                // Asked again later: until then what it holds is not known (before, it was taken
                // to hold nothing, for good: a device it had, sent elsewhere by the rules, stayed
                // in it, and one on vfio-pci was given back to its driver from under it).
                let delay = relistLater(vm)
                logger.warning("VM \(vm): cannot list its devices: \(error); asking again in \(Self.seconds(delay))")
            }
            return error
        }
        if unlisted[vm] != nil { logger.info("VM \(vm): its devices listed") }
        defer { listedOrDown(vm) }
        for a in listed {
            if let t = owner(of: a, in: vm) {
                if t.attachment == nil {
                    t.attachment = a
                    // Found where an earlier run put it: it stays while the rules allow that VM (their
                    // target or one of their allowedVms) and the user has not detached it; otherwise it
                    // goes where a device connected at start goes now.
                    if t.want == nil, let key = Self.key(t.device) { t.want = want(key, t, placedIn: vm) }
                    logger.info("\(t.logName): found in VM \(vm) as \(a.id)")
                }
            } else if a.hostKey.isEmpty, let held = onHost(a) {
                // A crosvm port says nothing of who attached it: one that holds a device on the host
                // that vhotplug sends to no VM (or one already placed) may be the user's.
                logger.info("VM \(vm): port \(a.id) holds \(held.logName), which vhotplug does not send there; left in place")
            } else {
                logger.info("VM \(vm): removing stale \(a.id) (its device is gone)")
                do {
                    if try await !backend.removeStale(a) {
                        logger.info("VM \(vm): \(a.id) holds another device since it was listed; left in place")
                    } else if a.kind != .usb, backend.type == .qemu {
                        // Not waited for: its root port frees when the guest lets go, which a device
                        // waiting for a port there learns from these looks.
                        lookAtStale(a, vm: vm, backend: backend, after: unplugTimeout)
                    }
                } catch {
                    logger.warning("VM \(vm): cannot remove \(a.id): \(error)")
                }
            }
        }
        return nil
    }

    /// Asks `vm` for its devices again after a delay that doubles each time (0.5 s to 5 minutes),
    /// unless that is on its way already; returns the delay.
    func relistLater(_ vm: String) -> Double {
        if let entry = unlisted[vm], entry.timer != nil { return entry.delay }
        let delay = unlisted[vm].map { min($0.delay * 2, 300) } ?? 0.5
        let timer = loop.schedule(at: .after(delay)) { [self] in
            assumeIsolated { daemon in
                daemon.unlisted[vm]?.timer = nil
                Task(executorPreference: daemon.loop) { await daemon.relist(vm) }
            }
        }
        unlisted[vm] = (delay, timer)
        return delay
    }

    /// A VM that could not be listed is asked again; once it answers, what it has moves as the
    /// rules say, and what it lacks goes to it: a device whose attach failed while the VM did not
    /// answer is tried again (before, it waited for a replug).
    func relist(_ vm: String) async {
        guard !stopping, unlisted[vm] != nil else { return }
        guard started else {
            _ = relistLater(vm) // (the start decides every device once it has listed the VMs)
            return
        }
        guard await resync(vm: vm) == nil else { return }
        for (key, t) in devices where t.attachment?.vm == vm || t.want == vm {
            if t.want == vm && t.failed && t.present {
                logger.info("\(t.logName): \(vm) answers again; attaching again")
                t.failed = false
                t.since = .now()
            }
            reconcile(key)
        }
    }

    /// `vm` was listed, or found down: it is no longer to be asked again. Once every VM is
    /// listed, the PCI devices an earlier run left on vfio-pci are known to be where the
    /// listings found them, and decided (during the start, the first pass does that).
    func listedOrDown(_ vm: String) {
        if let entry = unlisted.removeValue(forKey: vm), let timer = entry.timer { loop.cancel(timer) }
        if unlisted.isEmpty && started { placementsKnown() }
    }

    /// Every VM listed: the devices held back for one of them go where the rules say.
    func placementsKnown() {
        for (key, t) in devices where t.placementUnknown {
            t.placementUnknown = false
            t.failed = false // (an attach elsewhere that the group's unknown holder may have refused)
            t.lastError = nil
            if started { reconcile(key) }
        }
    }

    /// A stale PCI or input device asked to leave `vm` (`resync`, not waited for) holds its root
    /// port until the guest lets go: the VM is asked `delay` seconds later whether it still has it,
    /// then twice as late each time (up to 5 minutes); once it is gone, it counts as a departure
    /// (devices waiting for a port there try again). The looks end with the VM's backend.
    func lookAtStale(_ a: Attachment, vm: String, backend: any VMBackend, after delay: Double) {
        loop.schedule(at: .after(delay)) { [self] in
            Task(executorPreference: self.loop) { await self.staleLook(a, vm: vm, backend: backend, delay: delay) }
        }
    }

    func staleLook(_ a: Attachment, vm: String, backend: any VMBackend, delay: Double) async {
        guard !stopping, backends[vm] === backend, !vmDown.contains(vm), !attachedAgain(a) else { return }
        let held: Bool
        do throws(VMError) {
            held = try await backend.holds(a)
        } catch {
            guard !error.isNotRunning else { return }
            held = true // asked again later
        }
        guard backends[vm] === backend else { return }
        if held {
            lookAtStale(a, vm: vm, backend: backend, after: min(delay * 2, Self.lookCap))
        } else {
            logger.info("VM \(vm): stale \(a.id) has left")
            wakePortWaiters(vm: vm)
        }
    }

    /// Whether a device vhotplug follows is in `a`'s VM under its id now (a PCI device back at the
    /// same address): the stale one's looks end, as what they would find is that device.
    func attachedAgain(_ a: Attachment) -> Bool {
        devices.values.contains { $0.attachment?.vm == a.vm && $0.attachment?.id == a.id }
    }

    /// A USB device on the host with the vendor and product of an attachment crosvm listed.
    func onHost(_ a: Attachment) -> HostDevice? {
        presentUSB(withIDsOf: a).first?.device
    }

    /// The followed USB devices on the host with the vendor and product of a crosvm attachment.
    func presentUSB(withIDsOf a: Attachment) -> [Tracked] {
        devices.values.filter { t in
            guard case .usb(let d) = t.device, t.present else { return false }
            return d.vendorId == a.usbVendor && d.productId == a.usbProduct
        }
    }

    /// The followed device an attachment listed by a VM stands for.
    func owner(of a: Attachment, in vm: String) -> Tracked? {
        switch a.kind {
        case .usb:
            if !a.hostKey.isEmpty, a.hostKey != "?" {
                // QEMU: by port path, and the same bus/address (a replug changes the address).
                return devices.values.first { t in
                    guard case .usb(let d) = t.device, d.sysName == a.hostKey else { return false }
                    return a.usbAddress == nil || (a.usbBus == d.bus && a.usbAddress == d.devnum)
                }
            }
            // crosvm: by vendor and product, among the devices not yet placed that the rules send to
            // some VM: first one that goes to this VM, then one the user chose this VM for (the state
            // file), then one the rules allow there (an earlier run or the user put it there).
            let sameIDs = presentUSB(withIDsOf: a)
            let unplaced = sameIDs.filter { $0.attachment == nil && !$0.decision.candidateVms.isEmpty }
                .sorted { (Self.key($0.device) ?? "") < (Self.key($1.device) ?? "") }
            if let t = unplaced.first(where: { $0.want == vm })
                ?? unplaced.first(where: { api.state.chosenVms[Self.identity($0.device)] == vm && $0.decision.candidateVms.contains(vm) })
                ?? unplaced.first(where: { $0.decision.candidateVms.contains(vm) }) {
                return t
            }
            // One the rules no longer allow there (the rules changed: it leaves this VM), only when
            // no other device on the host has these IDs: the port may hold that one (the user's).
            return sameIDs.count == 1 ? unplaced.first : nil
        case .pci:
            // By host address: two identical cards stay distinct.
            return devices.values.first { t in
                if case .pci(let d) = t.device { return d.address == (a.pciHost ?? a.hostKey) }
                return false
            }
        case .evdev:
            return devices.values.first { t in
                // By input device and event node: a device that got a freed event node is another.
                // An id of the form before them (`vhp-evdev-event3`, vhotplug before 2026-12-07) by
                // its event node, as it was made: an upgrade keeps the VMs' devices (removing them
                // would fail the re-add while QEMU still grabs the node).
                guard case .input(let d) = t.device else { return false }
                return a.hostKey.hasPrefix("event") ? d.sysName == a.hostKey : DeviceIds.evdevKey(d) == a.hostKey
            }
        }
    }

    // MARK: Events

    static func key(_ device: HostDevice) -> String? {
        switch device {
        case .usb(let d): d.sysPath
        case .pci(let d): d.sysPath
        case .input(let d): d.sysPath
        }
    }

    func handle(_ e: DeviceEvent, at time: Deadline) {
        logger.trace("event \(e.action) \(e.subsystem) \(e.devtype) \(e.sysPath)")
        switch e.subsystem {
        case "usb":
            switch (e.devtype, e.action) {
            case ("usb_device", "add"):
                if e.sysName.hasPrefix("usb") { authorizer.rootHubAdded(e.sysPath, logger) }
                prepareUSBTargets()
                deviceAdded(e.sysPath, at: time, event: e.usb)
            case ("usb_device", "bind"), ("usb_interface", "add"), ("usb_interface", "bind"):
                let devicePath = e.devtype == "usb_device" ? e.sysPath : parent(e.sysPath)
                if pendingUSB[devicePath] != nil { checkPending(devicePath) }
            case ("usb_device", "remove"):
                if let gone = e.usb?.devnum, let here = reader.usbAddress(sysPath: e.sysPath), here != gone {
                    // The remove of the device that was at this port before the one there now, which was
                    // read already (by a rescan or the start, before this event was handled); before, that
                    // one was taken as unplugged, detached, and attached again at its own add event.
                    if let t = devices[e.sysPath], t.present, case .usb(let d) = t.device, d.devnum != here {
                        deviceRemoved(e.sysPath) // (what is followed there is neither: a third device)
                    } else {
                        logger.info("usb \(e.sysName): the remove event of an earlier device there (address \(gone)); the one at address \(here) stays")
                    }
                    return
                }
                deviceRemoved(e.sysPath)
            default:
                break
            }
        case "pci", "vfio":
            // Driver changes wake the VFIO binder's waits.
            let binder = self.binder
            Task(executorPreference: loop) { await binder.deviceEvent(action: e.action, subsystem: e.subsystem, sysPath: e.sysPath) }
            guard e.subsystem == "pci" else { return }
            // The driver a device is on now (vfio-pci while in a VM), as `pci list` shows it. Kept
            // beside the device read (an attach compares that to see whether it was replugged).
            if e.action == "bind" || e.action == "unbind", let t = devices[e.sysPath], case .pci = t.device {
                t.driverNow = .some(Sysfs.linkName(reader.sysfs.path(e.sysPath) + "/driver"))
            }
            if e.action == "add" { admit(e.sysPath, subsystem: "pci", since: time) }
            if e.action == "remove" { deviceRemoved(e.sysPath) }
        case "input" where e.sysName.hasPrefix("event"):
            // An input node of a USB device follows its USB device: not even read.
            if e.action == "add", matcher.decidesInputDevices, !reader.inputHasUSBAncestor(sysPath: e.sysPath) {
                admit(e.sysPath, subsystem: "input", since: time)
            }
            if e.action == "remove" { deviceRemoved(e.sysPath) }
        default:
            break
        }
    }

    /// The VMs the USB rule sets send devices to (a short list), for `prepareUSBTargets`.
    var usbTargetVMs: [String] {
        var seen: [String] = []
        for set in configuration.usbPassthrough where !set.disable && !seen.contains(set.targetVm) {
            seen.append(set.targetVm)
        }
        return seen
    }

    /// A USB device arrived: while it is read and decided, the VMs it may go to open
    /// their connections (at most 3: more would cost QEMU more than it saves).
    func prepareUSBTargets() {
        let vms = usbTargetVMs.filter { !vmDown.contains($0) }
        guard !vms.isEmpty, vms.count <= 3 else { return }
        for vm in vms { backends[vm]?.prepare() }
    }

    /// The decision is made: connections prepared for other VMs are closed now.
    func unprepareUSBTargets(except target: String?) {
        for vm in usbTargetVMs where vm != target { backends[vm]?.unprepare() }
    }

    func parent(_ path: String) -> String {
        String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)])
    }

    /// `event`: what the `add` event said of the device (not read again from sysfs).
    func deviceAdded(_ sysPath: String, at time: Deadline, event: KernelUSBFields? = nil) {
        if let old = devices[sysPath], old.present {
            return // already followed (a repeated add)
        }
        // A device still waiting for its interfaces: this add (a repeated one, `udevadm trigger`,
        // or a replug whose remove was lost) starts the wait over, with its own fields.
        if let p = pendingUSB.removeValue(forKey: sysPath) { loop.cancel(p.timer) }
        // An unauthorized device (usbAuthorization) gets no interfaces until it is
        // authorized: it is decided on its descriptors at once.
        if let read = reader.readUSBIfConfigured(sysPath: sysPath, event: event) {
            admit(sysPath, subsystem: "usb", since: time, read: read)
            return
        }
        if authorization != nil && reader.usbAuthorized(sysPath: sysPath) == false {
            admit(sysPath, subsystem: "usb", since: time)
            return
        }
        // Interfaces come with their own events: wait for them (with a deadline).
        logger.debug("usb \(sysPath.split(separator: "/").last ?? ""): configuration or interfaces not there yet; waiting for their events")
        let timer = loop.schedule(at: .after(options.interfaceWait)) { [self] in
            Task(executorPreference: self.loop) { await self.pendingTimedOut(sysPath, waitingSince: time) }
        }
        pendingUSB[sysPath] = (time, timer, event)
        // The socket filter now keeps interfaces' events; one that was queued before it
        // changed was dropped, but its interface is in sysfs already.
        checkPending(sysPath)
    }

    func checkPending(_ sysPath: String) {
        guard let p = pendingUSB[sysPath] else { return }
        // The add event's fields hold while the device at the port is the one it announced
        // (after lost events, another may be there: another address).
        var event = p.event
        if let n = event?.devnum, reader.usbAddress(sysPath: sysPath) != n { event = nil }
        guard let read = reader.readUSBIfConfigured(sysPath: sysPath, event: event) else { return }
        loop.cancel(p.timer)
        pendingUSB[sysPath] = nil
        admit(sysPath, subsystem: "usb", since: p.since, read: read)
    }

    /// `waitingSince`: the event of the wait whose timer fired. A wait begun since (a repeated add,
    /// a replug, handled between the timer and this task) is not ended by it.
    func pendingTimedOut(_ sysPath: String, waitingSince: Deadline) {
        guard pendingUSB[sysPath]?.since == waitingSince, let p = pendingUSB.removeValue(forKey: sysPath) else { return }
        logger.info("usb \(sysPath.split(separator: "/").last ?? ""): interfaces incomplete after \(options.interfaceWait) s; deciding on what is known")
        admit(sysPath, subsystem: "usb", since: p.since)
    }

    /// Reads a new device (unless `read` is what was read of it already), decides, and
    /// sends it where the rules say.
    func admit(_ sysPath: String, subsystem: String, since: Deadline, read: Result<HostDevice, DeviceReadError>? = nil) {
        if let old = devices[sysPath], old.present, subsystem != "usb" { return } // a repeated add
        let device: HostDevice
        do throws(DeviceReadError) {
            if let read { device = try read.get() } else { device = try reader.read(sysPath: sysPath, subsystem: subsystem) }
            logger.debug("\(subsystem) \(sysPath.split(separator: "/").last ?? ""): read \(ms(since: since)) after its event")
        } catch {
            // A device that is already gone again (an input node of a USB device
            // QEMU has just taken) is no news; anything else is worth a warning.
            if error.reason.contains("vanished") || error.reason.contains("missing") {
                logger.debug("gone before it could be read: \(error)")
            } else {
                logger.warning("cannot read \(error)")
            }
            return
        }
        let decision = decide(device)
        if subsystem == "usb" { unprepareUSBTargets(except: decision.targetVm) }
        if let t = devices[sysPath] {
            // Replugged while its detach was still running.
            if let record = t.vfio {
                // What the old bind recorded was of the device that left: the new one is bound afresh,
                // and a group mate the old bind moved keeps the record (before, it was forgotten, and
                // the mate stayed on vfio-pci for good).
                t.vfio = nil
                Task(executorPreference: loop) { await self.passOn(record, leaving: t, replugged: true) }
            }
            t.device = device
            t.driverNow = nil
            t.decision = decision
            t.present = true
            t.failed = false
            t.since = since
        } else {
            devices[sysPath] = Tracked(device: device, decision: decision, since: since)
        }
        let t = devices[sysPath]!
        logDecision(t)
        // Connected first, then (a choice of VMs) the question where it goes.
        announceConnected(t)
        t.want = initialWant(sysPath, t)
        authorizeOnArrival(t)
        reconcile(sysPath)
    }

    func deviceRemoved(_ sysPath: String) {
        if let p = pendingUSB.removeValue(forKey: sysPath) { loop.cancel(p.timer) }
        guard let t = devices[sysPath] else { return }
        // What a suspend remembered was of this device: one plugged at the same port later is decided afresh.
        if api.suspended[sysPath] != nil, setSuspended(sysPath, t, nil) {
            Task(executorPreference: loop) { await self.saveState() }
        }
        t.present = false
        t.want = nil
        t.since = .now()
        logger.info("\(t.logName): unplugged")
        announceDisconnected(sysPath, t)
        reconcile(sysPath)
    }

    /// The event socket overflowed (a storm of events while the daemon was busy or
    /// stopped): the kernel dropped some. What they said is found in sysfs.
    func eventsLost() {
        let size = (monitor?.receiveBuffer ?? 0) >> 10
        logger.warning("device events were lost (the event socket's \(size) KiB receive buffer was full; VHOTPLUG_UEVENT_BUFFER sets it): reading the connected devices again")
        let binder = self.binder
        Task(executorPreference: loop) { await binder.eventsLost() }
        rescan()
    }

    /// Follows what events did not say: a connected device not followed is taken as just
    /// plugged, a followed one no longer in sysfs as unplugged, and a USB device with
    /// another address at a followed port as unplugged and plugged again. Devices followed
    /// and still there are not read again. (After lost events, and on SIGHUP.)
    func rescan() {
        let now = Deadline.now()
        var seen = Set<String>()
        // Every kind is listed: input devices followed while evdev passthrough was on are still there.
        let connected: [(subsystem: String, sysPath: String)]
        do { connected = try reader.connected(.all) } catch {
            // Not taken for "no devices": each followed one would be taken as gone (detached from its
            // VM, and a PCI device's record forgotten with its group on vfio-pci).
            logger.error("cannot list the devices (\(error)): the rescan is skipped, nothing is taken as gone")
            return
        }
        for (subsystem, sysPath) in connected {
            seen.insert(sysPath)
            if pendingUSB[sysPath] != nil {
                checkPending(sysPath)
                continue
            }
            if let t = devices[sysPath], t.present {
                guard case .usb(let d) = t.device, let address = reader.usbAddress(sysPath: sysPath), address != d.devnum else { continue }
                logger.info("\(t.logName): now at address \(address) (was \(d.devnum)): replugged")
                deviceRemoved(sysPath)
            }
            switch subsystem {
            case "usb":
                // A root hub whose add event was lost: its 0 is usbcore's, not a value from before.
                if devices[sysPath] == nil, let name = sysPath.split(separator: "/").last, name.hasPrefix("usb") {
                    authorizer.rootHubAdded(sysPath, logger)
                }
                deviceAdded(sysPath, at: now)
            case "pci": admit(sysPath, subsystem: "pci", since: now)
            default:
                if matcher.decidesInputDevices, !reader.inputHasUSBAncestor(sysPath: sysPath) {
                    admit(sysPath, subsystem: "input", since: now)
                }
            }
        }
        let gone = Set(pendingUSB.keys).union(devices.filter { $0.value.present }.keys).subtracting(seen)
        for sysPath in gone.sorted() { deviceRemoved(sysPath) }
    }

    func decide(_ device: HostDevice) -> Decision {
        switch device {
        case .usb(let d): matcher.decide(d)
        case .pci(let d): matcher.decide(d)
        case .input(let d): matcher.decide(d)
        }
    }

    func logDecision(_ t: Tracked) {
        logger.info("\(t.logName): \(t.decision.summary)")
    }

    // MARK: Reconcile

    /// Moves a device towards where it should be, one VM operation at a time.
    /// Events that change `want` meanwhile are picked up by the same task.
    func reconcile(_ key: String) {
        guard let t = devices[key] else { return }
        followIOMMUGroup(of: t)
        guard !t.busy else {
            t.again = true
            return
        }
        t.busy = true
        Task(executorPreference: loop) { await self.reconcileTask(key, t) }
    }

    func reconcileTask(_ key: String, _ t: Tracked) async {
        t.waitsForGroup = false // set again if it still waits
        let before = t.attachment
        repeat {
            t.again = false
            await reconcileLoop(key, t)
        } while t.again && !stopping
        t.busy = false
        t.detachAgain = false
        if !t.present && t.attachment == nil && devices[key] === t { devices[key] = nil }
        // A PCI device that left a VM on the way (it may be in another now): devices waiting
        // for a member of their group to leave look again.
        if case .pci = t.device, before != nil, t.attachment != before { wakeGroupWaiters() }
        // Its port in that VM is free: a device that found the VM's ports full tries again.
        if let b = before, t.attachment != b { wakePortWaiters(vm: b.vm) }
        // Woken for a freed port, and it did not take it: the port is still free for the next waiter.
        if let vm = t.wokenForPort {
            t.wokenForPort = nil
            if t.attachment?.vm != vm, t.waitsForPort != vm { wakePortWaiters(vm: vm, departed: false) }
        }
        reconciled(key)
        trimSoon()
        noteIfIdle()
    }

    /// A device left `vm`: the first device whose attach there failed for want of a free port,
    /// and for which the VM now has one, is tried again (before, they waited for a replug, a
    /// reload or the VM's restart). The VM is asked first, so that a device that still could not
    /// get a port (the one freed is of another kind: a USB port, a root port kept for input
    /// devices, crosvm's USB 2 ports for a USB 3 device) is not moved to vfio-pci, or authorized
    /// on the host, for nothing. One that is busy (in its failure's clean-up) runs again.
    /// (`departed` false: no device left, the port a woken waiter did not take is offered again.)
    func wakePortWaiters(vm: String, departed: Bool = true) {
        if departed { portsFreed[vm, default: 0] &+= 1 }
        guard mayWaitForPort else { return } // (every unplug comes here: no look through the devices)
        let waiters = devices.filter { $0.value.waitsForPort == vm && $0.value.failed && $0.value.present }
        if waiters.isEmpty, !devices.values.contains(where: { $0.waitsForPort != nil }) { mayWaitForPort = false }
        guard !waiters.isEmpty, let backend = backends[vm] else { return }
        let keys = waiters.keys.sorted()
        Task(executorPreference: loop) { await self.wakeFirstPortWaiter(keys, vm: vm, backend: backend) }
    }

    func wakeFirstPortWaiter(_ keys: [String], vm: String, backend: any VMBackend) async {
        for key in keys {
            guard let o = devices[key], o.waitsForPort == vm, o.failed, o.present else { continue }
            if await backend.hasFreePort(for: o.device, busPrefix: evdevPrefix(o)) == false {
                logger.debug("\(o.logName): a device left \(vm), but no port it can take is free there")
                continue
            }
            guard devices[key] === o, o.waitsForPort == vm, o.failed, o.present else { continue }
            logger.info("\(o.logName): a device left \(vm); attaching again")
            o.failed = false
            o.since = .now()
            o.wokenForPort = vm
            reconcile(key)
            return // (one port freed: the next waiter waits for the next departure, or for this one not to take it)
        }
    }

    /// The root ports an input device may take (`pcieBusPrefix`).
    func evdevPrefix(_ t: Tracked) -> String? {
        guard case .input = t.device else { return nil }
        return t.decision.options.pcieBusPrefix ?? configuration.evdevPassthrough?.pcieBusPrefix
    }

    /// Half a second after the last VM operation, the allocator gives its free pages
    /// back to the system (`malloc_trim`): after a burst (a dock, an event storm) the
    /// daemon's memory returns to its level before. No timer runs while nothing happens.
    /// Each operation moves the timer (cancelled and scheduled again in one turn of the
    /// loop: one `timerfd_settime`). A timer left to fire at its first deadline and wait
    /// again for the rest costs more: 0.4 more wake-ups a plug/unplug cycle in the
    /// benchmark (sessions 5 and 11).
    func trimSoon() {
        if let t = trimTimer { loop.cancel(t) }
        trimTimer = loop.schedule(at: .after(0.5)) { [self] in
            assumeIsolated { daemon in
                daemon.trimTimer = nil
                _ = vh_malloc_trim()
            }
        }
    }

    func reconcileLoop(_ key: String, _ t: Tracked) async {
        if t.lookNow {
            t.lookNow = false
            // Only the look: a device_del again could cancel an unplug the guest is in the
            // middle of (a second attention-button press within Linux's 5 s does).
            guard await lookAgain(key, t) else { return }
        }
        while !stopping {
            // Waiting for a guest that is no longer where the device goes (unplugged, sent elsewhere,
            // its VM down) ends.
            if let w = t.guestWait, w.vm != t.target || !t.present || t.failed || t.attachment != nil || vmDown.contains(w.vm) {
                logger.debug("\(t.logName): no longer waits for \(w.vm)'s guest (its timer stopped)")
                endGuestWait(t)
            }
            await settleUnknownAttach(t)
            // An attachment of the device that was at this port before it (its remove and add
            // handled before this task ran, or found by a rescan) leaves first.
            if let a = t.attachment, a.vm != t.target || !t.present || !a.stands(for: t.device) || t.leaveVia != nil {
                guard let backend = t.leaveVia ?? backends[a.vm] else { t.attachment = nil; continue }
                // A detach the guest has not finished stays with its looks (scheduled): another
                // device_del could cancel it in the guest, and would hold the VM's socket for the
                // whole wait again. Only an explicit detach (the API's) sends one.
                if t.unanswered?.operation == .detach && !t.detachAgain && t.unanswered?.resend != true { return }
                let explicit = t.detachAgain
                t.detachAgain = false
                do {
                    try await backend.detach(a)
                    logger.info("\(t.logName): detached from \(a.vm) (\(a.id)) in \(ms(since: t.since))")
                    t.attachment = nil
                    announceDetached(t, vm: a.vm)
                    if t.target == nil { await deauthorizeAfterVM(t, vm: a.vm) }
                } catch {
                    if error.isNotRunning {
                        t.attachment = nil // the VM is gone, and the device with it
                        // Going nowhere: off the host again (usbAuthorization), as after a detach.
                        if t.target == nil { await deauthorizeAfterVM(t, vm: a.vm) }
                        continue
                    }
                    t.lastError = "\(error)"
                    if error.isUnplugPending || (error.isTimeout && backend.type == .crosvm) {
                        // QEMU may still complete it: the daemon looks again, then less and less often.
                        // (An explicit detach pressed again: the looks start over. One asked while this
                        // one waited was served by it.) crosvm, killed at the deadline, may have freed the
                        // port, and give it to the next attach: nothing is detached from it again before
                        // `usb list` shows whether it still holds this device.
                        if t.unanswered?.operation != .detach || explicit {
                            t.unanswered = .init(operation: .detach, delay: backend.type == .crosvm ? crosvmTimeout : unplugTimeout)
                        }
                        t.unanswered?.resend = false
                        t.detachAgain = false
                        logger.error("\(t.logName): detach from \(a.vm) failed: \(error); looking again in \(Self.seconds(t.unanswered?.delay ?? 0))")
                        scheduleLook(key, t)
                    } else {
                        // The VM may not have had the request at all (no connection, no greeting): it is
                        // asked later whether it still has the device, and sent the detach again if so.
                        // Without this the device stayed in the VM, and its entry here, for good.
                        // (Failed again after such a look: the looks go on as late as they had come.)
                        let earlier = t.unanswered.flatMap { $0.operation == .detach && $0.sendAgainIfHeld ? $0.delay : nil }
                        var looks = Tracked.Unanswered(operation: .detach, delay: earlier ?? qmpTimeout)
                        looks.sendAgainIfHeld = true
                        t.unanswered = looks
                        t.detachAgain = false
                        // (Once the tries come every 5 minutes, at debug level: a VM that refuses for good.)
                        logger.log(level: Self.quietAtCap(looks.delay, else: .error),
                                   "\(t.logName): detach from \(a.vm) failed: \(error); asking \(a.vm) again in \(Self.seconds(looks.delay))")
                        scheduleLook(key, t)
                    }
                    return
                }
            } else if t.attachment == nil, let vm = t.target, t.present, !t.failed, vmDown.contains(vm) {
                logger.info("\(t.logName): VM \(vm) is not running; waiting for it")
                await deauthorizeAfterVM(t, vm: vm)
                return
            } else if t.attachment == nil, t.guestWait?.timer != nil {
                return // its next try is on a timer (waitForGuest)
            } else if t.attachment == nil, let vm = t.target, t.present, !t.failed {
                guard let backend = backends[vm] else {
                    logger.error("\(t.logName): VM \(vm) is not configured")
                    return
                }
                // The group moving to another VM: a member still in the one it leaves holds the
                // group open there, and QEMU would refuse this one (the group busy), leaving it
                // on vfio-pci in no VM. It waits, and goes once that member has left.
                if let (mate, other) = groupMateInOtherVM(t, vm: vm) {
                    let mateIs = mate.attachment == nil ? ", on its way to \(other), to get there and leave or to fail" : " to leave \(other)"
                    let why = "waits for \(mate.logName)\(mateIs) (one IOMMU group) before it goes to \(vm)"
                    if t.lastError != why { logger.info("\(t.logName): \(why)") }
                    t.lastError = why
                    t.waitsForGroup = true
                    return
                }
                // Two members of one group sent to two VMs at the same moment: the second waits for
                // this attach (before, both passed the check above, and the VM that came second
                // refused its device for good, the group being busy in the other).
                t.attachingTo = vm
                defer {
                    t.attachingTo = nil
                    // It did not get there: a mate waiting for it looks again.
                    if case .pci = t.device, t.attachment == nil { wakeGroupWaiters() }
                }
                let attempted = t.device
                let freedBefore = portsFreed[vm, default: 0]
                do {
                    await authorizeForVM(t, vm: vm)
                    // Replugged during the authorization's write (150-260 ms): the new device is
                    // authorized and attached in the next round, not attached unauthorized now.
                    guard t.present, t.device == attempted else { continue }
                    // Sent elsewhere or nowhere meanwhile (the API's detach, a reload): not attached
                    // here (before, it was, and detached in the next round).
                    guard t.target == vm else {
                        if t.target == nil { await deauthorizeAfterVM(t, vm: vm) }
                        continue
                    }
                    guard let a = try await attach(t, to: backend) else { continue }
                    t.attachment = a
                    leaveThroughIfRetired(t, backend, vm: vm)
                    t.attachRetried = false
                    t.unsettled = nil
                    if let w = t.guestWait {
                        let once = w.silent ? "once \(vm) answered (\(w.tries) tries before)" : "once its guest took USB devices (\(w.tries) refused before)"
                        logger.info("\(t.logName): attached to \(vm) as \(a.id) in \(ms(since: t.since)), \(once)")
                        endGuestWait(t)
                    } else {
                        logger.info("\(t.logName): attached to \(vm) as \(a.id) in \(ms(since: t.since))")
                    }
                    announceAttached(t, vm: vm)
                } catch let error as VMError {
                    // crosvm killed at its deadline (its VM's control loop busy or hung): it may have attached it.
                    let crosvmSilent = error.isTimeout && backend.type == .crosvm
                    if crosvmSilent, case .usb(let d) = attempted { t.unsettled = (vm, d) }
                    if error.isNotRunning, backends[vm] !== backend {
                        // The backend a reload retired meanwhile: its process is gone, which says
                        // nothing of the VM's new socket (before, the VM was taken as down for good).
                        continue
                    } else if error.isNotRunning {
                        vmDown.insert(vm)
                        endGuestWait(t)
                        logger.info("\(t.logName): VM \(vm) is not running; waiting for it")
                    } else if error.isAttachUnanswered || (error.isTimeout && t.vfio != nil && attempted.isPCI),
                              let a = backend.attachment(for: attempted) {
                        // QEMU may still add it (a vfio-pci device is open in QEMU meanwhile: giving
                        // it back to its driver now would make the kernel's unbind wait for QEMU, on
                        // the daemon's thread). It is taken as attached until the VM says. So is a
                        // device on vfio-pci that a VM which did not answer before the device_add may
                        // hold all the same (it started with it: vmm_args). One unplugged or replugged
                        // meanwhile too: once the VM says it has it, it is taken out (before, it was
                        // forgotten, and a device_add QEMU finished late stayed in the VM).
                        let delay = a.kind == .pci ? pciAttachTimeout : qmpTimeout
                        t.attachment = a
                        leaveThroughIfRetired(t, backend, vm: vm)
                        t.unanswered = .init(operation: .attach, delay: delay)
                        t.lastError = "\(error); taken as attached while QEMU may still be adding it"
                        let left = t.present && t.device == attempted ? "" : "; it left the host meanwhile: taken out once \(vm) says it has it"
                        logger.warning("\(t.logName): attach to \(vm): \(error); taken as attached, asking \(vm) again in \(Self.seconds(delay))\(left)")
                        scheduleLook(key, t)
                        return
                    } else if !t.present || t.device != attempted {
                        // Unplugged (or replugged) while its attach ran: no failure; the loop looks again.
                        logger.info("\(t.logName): left the host during its attach to \(vm) (\(error))")
                        await deauthorizeAfterVM(t, vm: vm)
                        continue
                    } else if t.target != vm || backends[vm] !== backend {
                        // Sent elsewhere while the attach ran (a reload, the API, its IOMMU group), or
                        // the VM given another process: this failure is not the device's, and the loop
                        // looks again (before, it was marked failed, and stayed on the host until a replug).
                        logger.info("\(t.logName): attach to \(vm) failed (\(error)); \(Self.goesNow(t))")
                        await settleUnknownAttach(t)
                        if t.target == nil { await deauthorizeAfterVM(t, vm: vm) }
                        continue
                    } else if error.isPortsFull, portsFreed[vm, default: 0] != freedBefore {
                        // A device left the VM while this attach ran: its port may be free now.
                        logger.info("\(t.logName): \(vm) had no free port, and a device has left it since; attaching again")
                        continue
                    } else if error.isGuestNotReady, waitForGuest(key, t, vm: vm) {
                        t.lastError = "\(error); vhotplug tries again while the guest boots"
                    } else if crosvmSilent, waitForGuest(key, t, vm: vm, silent: true) {
                        // Tried again as for a guest that boots; the next try finds the device on a port
                        // if this one put it there after all. (Before, it failed until something changed.)
                        t.lastError = "\(error); vhotplug tries again"
                    } else {
                        t.failed = true
                        t.lastError = "\(error)"
                        // (No port free: tried again when a device leaves that VM.)
                        if error.isPortsFull { t.waitsForPort = vm; mayWaitForPort = true }
                        let then = error.isPortsFull ? "; tried again when a device leaves \(vm)" : ""
                        if let w = t.guestWait {
                            let waited = Self.seconds(Deadline.now().seconds(since: w.since))
                            let forWhat = w.silent ? "\(vm) to answer" : "its guest"
                            logger.error("\(t.logName): attach to \(vm) failed: \(error); gave up waiting for \(forWhat) after \(waited) (\(w.tries + 1) tries)\(then)")
                            endGuestWait(t)
                        } else {
                            logger.error("\(t.logName): attach to \(vm) failed: \(error)\(then)")
                        }
                    }
                    await settleUnknownAttach(t)
                    await deauthorizeAfterVM(t, vm: vm)
                    await giveBackDriver(t)
                    return
                } catch {
                    if !t.present || t.device != attempted || t.target != vm {
                        // (As above: gone, or sent elsewhere, while its bind ran.)
                        logger.info("\(t.logName): attach to \(vm) failed (\(error)); \(t.present && t.device == attempted ? Self.goesNow(t) : "it left the host meanwhile")")
                        if t.target == nil { await deauthorizeAfterVM(t, vm: vm) }
                        continue
                    }
                    t.failed = true
                    t.lastError = "\(error)"
                    endGuestWait(t)
                    logger.error("\(t.logName): attach to \(vm) failed: \(error)")
                    await deauthorizeAfterVM(t, vm: vm)
                    // (A bind that failed and could not undo itself kept its record: the group goes back.)
                    await giveBackDriver(t)
                    return
                }
            } else if t.attachment == nil && (t.target == nil || t.failed) {
                // Nowhere to go (or its attach failed): a PCI device goes back to the driver it had.
                await giveBackDriver(t)
                return
            } else {
                return
            }
        }
    }

    /// Where a device goes now that its attach elsewhere is over, for a log line.
    static func goesNow(_ t: Tracked) -> String {
        t.target.map { "it goes to \($0) now" } ?? "it goes to no VM now"
    }

    /// An attach made through `backend` ended after a reload retired it (the VM removed, or
    /// given another socket or type): the device is in that VM's old process, and leaves
    /// through the backend that put it there (as `makeBackends` marks what was attached before).
    func leaveThroughIfRetired(_ t: Tracked, _ backend: any VMBackend, vm: String) {
        if backends[vm] !== backend { t.leaveVia = backend }
    }

    /// The VM refused the attach because its guest has not started its USB driver yet (it
    /// boots): the attach is tried again by a timer, 0.25 s later, then twice as late each
    /// time up to 30 s, until `guestWaitLimit` seconds after the first refusal. False when
    /// that time is over (the caller fails the device). No timer runs once the wait ends
    /// (`endGuestWait`: attached, failed, the device unplugged or sent elsewhere, the VM down).
    /// `silent`: crosvm did not answer the attach in time (it was killed at its deadline).
    func waitForGuest(_ key: String, _ t: Tracked, vm: String, silent: Bool = false) -> Bool {
        var w = t.guestWait ?? .init(vm: vm, since: .now(), delay: Self.guestRetryFirst)
        let left = guestWaitLimit - Deadline.now().seconds(since: w.since)
        guard left >= 0.05 else { return false }
        if t.guestWait == nil || w.silent != silent {
            let why = silent ? "\(vm) did not answer the attach in time (crosvm killed at its deadline)"
                             : "\(vm)'s guest does not take USB devices yet (its USB driver is not up)"
            logger.info("\(t.logName): \(why); trying again for up to \(Self.seconds(guestWaitLimit))")
        }
        w.silent = silent
        if let old = w.timer { loop.cancel(old) }
        let delay = min(w.delay, left)
        w.tries += 1
        w.delay = min(w.delay * 2, Self.guestRetryCap)
        w.timer = loop.schedule(at: .after(delay)) { [self] in
            assumeIsolated { daemon in
                guard daemon.devices[key] === t, t.guestWait?.vm == vm else { return }
                t.guestWait?.timer = nil
                daemon.reconcile(key)
            }
        }
        t.guestWait = w
        return true
    }

    /// A crosvm attach killed at its deadline (`Tracked.unsettled`) whose device will not be
    /// attached there after all (it left the host, goes elsewhere, or failed for good; not while
    /// it is tried again): the backend frees the port the attach may have filled, so that the
    /// device is not left in the VM. (Before, it stayed there, and the backend's mark of it could
    /// make a later device at the same bus and address be taken for it.)
    func settleUnknownAttach(_ t: Tracked) async {
        guard let u = t.unsettled, t.guestWait == nil, t.attachment == nil,
              !t.present || t.failed || t.target != u.vm || t.device != .usb(u.device) else { return }
        t.unsettled = nil
        await backends[u.vm]?.abandonAttach(u.device)
    }

    /// The device no longer waits for its VM's guest: its timer is cancelled.
    func endGuestWait(_ t: Tracked) {
        if let timer = t.guestWait?.timer { loop.cancel(timer) }
        t.guestWait = nil
    }

    /// In `t.unanswered`'s delay, a reconcile that asks the VM whether it has the device
    /// (`lookAgain`). One pending look per device: a timer that finds the attachment
    /// changed does nothing.
    func scheduleLook(_ key: String, _ t: Tracked) {
        guard let a = t.attachment, let delay = t.unanswered?.delay else { return }
        if let old = t.lookTimer { loop.cancel(old) }
        t.lookTimer = loop.schedule(at: .after(delay)) { [self] in
            assumeIsolated { daemon in
                t.lookTimer = nil
                guard daemon.devices[key] === t, t.attachment == a, t.unanswered != nil else { return }
                t.lookNow = true
                daemon.reconcile(key)
            }
        }
    }

    /// Asks the VM whether it has the device of an operation it did not answer in time.
    /// A detach: gone, the attachment ends (true: the caller goes on, a PCI device back to its
    /// driver unless it is wanted elsewhere). An attach: there, it is confirmed; gone, the
    /// attach failed and the device goes back to its driver. Otherwise (still there after a
    /// detach, no answer) the next look is scheduled, twice as late (up to 5 minutes), and false.
    func lookAgain(_ key: String, _ t: Tracked) async -> Bool {
        guard let a = t.attachment, let pending = t.unanswered, let backend = t.leaveVia ?? backends[a.vm] else { return true }
        do {
            let held = try await backend.holds(a)
            guard t.attachment == a else { return true }
            switch (pending.operation, held) {
            case (.detach, false):
                logger.info("\(t.logName): \(a.vm) let go of \(a.id) after the detach's deadline")
                t.attachment = nil
                t.lastError = nil
                announceDetached(t, vm: a.vm)
                if t.target == nil { await deauthorizeAfterVM(t, vm: a.vm) }
                return true
            case (.attach, true):
                t.unanswered = nil
                t.lastError = nil
                t.attachRetried = false
                // (A device replugged meanwhile is another one: the loop takes this one out.)
                guard t.present, a.stands(for: t.device), t.target == a.vm else { return true }
                logger.info("\(t.logName): attached to \(a.vm) as \(a.id) (QEMU finished after the deadline) in \(ms(since: t.since))")
                announceAttached(t, vm: a.vm)
                return true
            case (.attach, false):
                t.attachment = nil
                // Wanted elsewhere now (an API request, a reload), replugged or unplugged
                // meanwhile: not this attach's failure; the loop does what is wanted now. Going
                // nowhere, it is off the host again (usbAuthorization: authorized for this attach),
                // as after a detach; before, it stayed authorized.
                guard t.target == a.vm, t.present, a.stands(for: t.device) else {
                    if t.target == nil { await deauthorizeAfterVM(t, vm: a.vm) }
                    return true
                }
                if !t.attachRetried {
                    // QEMU answers now, and dropped or refused the device_add (it discards what
                    // a client that left had queued): once more, with QEMU's own answer this time.
                    t.attachRetried = true
                    logger.info("\(t.logName): \(a.vm) does not have \(a.id) after the deadline; attaching again")
                    return true
                }
                t.failed = true
                t.lastError = "VM \(a.vm) does not have \(a.id): QEMU did not add it"
                logger.error("\(t.logName): attach to \(a.vm) failed: QEMU does not have \(a.id) after the deadline")
                await deauthorizeAfterVM(t, vm: a.vm)
                await giveBackDriver(t)
                return false
            case (.detach, true) where backend.type == .crosvm || pending.sendAgainIfHeld:
                // The port still holds it (listed just now), and crosvm does not finish a detach later
                // by itself; or the detach failed before the VM may have had it: sent again while the
                // device is to leave; otherwise it stays where it is.
                guard a.vm != t.target || !t.present || !a.stands(for: t.device) || t.leaveVia != nil else {
                    t.unanswered = nil
                    t.lastError = nil
                    logger.info("\(t.logName): \(a.vm) still has \(a.id) after the detach's deadline; it stays there")
                    return true
                }
                var next = pending
                next.delay = min(pending.delay * 2, Self.lookCap)
                next.resend = true
                t.unanswered = next
                logger.log(level: Self.quietAtCap(pending.delay), "\(t.logName): \(a.vm) still has \(a.id) after the detach's deadline; detaching again")
                return true
            case (.detach, true):
                // (Not inside the log line: swift-log evaluates a debug message only at debug level.)
                let next = lookLater(key, t)
                // A guest that never lets go (no hotplug driver, stopped in firmware) is looked at every
                // 5 minutes until it does or the VM stops; said once, then only at debug level.
                if next >= Self.lookCap && pending.delay < Self.lookCap {
                    logger.info("\(t.logName): \(a.vm) still has \(a.id); its guest has not let go: looking again every \(Self.seconds(next)), logged at debug level only")
                } else {
                    logger.log(level: Self.quietAtCap(pending.delay), "\(t.logName): \(a.vm) still has \(a.id); looking again in \(Self.seconds(next))")
                }
            }
        } catch {
            // The VM is not running (stopped, killed with its socket file left behind, or retired
            // by a reload that moved it): the device is in no VM, and the loop goes on from there.
            if error.isNotRunning {
                guard t.attachment == a else { return true }
                logger.info("\(t.logName): \(a.vm) is not running; \(a.id) went with it")
                t.attachment = nil
                t.lastError = nil
                if pending.operation == .detach { announceDetached(t, vm: a.vm) } // (an unconfirmed attach was never announced)
                if t.target == nil { await deauthorizeAfterVM(t, vm: a.vm) }
                return true
            }
            guard t.attachment == a else { return true }
            let next = lookLater(key, t)
            logger.warning("\(t.logName): cannot ask \(a.vm) whether it has \(a.id): \(error); asking again in \(Self.seconds(next))")
        }
        return false
    }

    /// The level of a line about a look or try `delay` seconds apart: debug once they come
    /// every 5 minutes (a VM or guest that will not let go is not news every time).
    static func quietAtCap(_ delay: Double, else level: Logger.Level = .info) -> Logger.Level {
        delay >= lookCap ? .debug : level
    }

    /// Schedules the next look, twice as late as the last one (up to 5 minutes); returns its delay.
    func lookLater(_ key: String, _ t: Tracked) -> Double {
        guard var next = t.unanswered else { return 0 }
        next.delay = min(next.delay * 2, Self.lookCap)
        t.unanswered = next
        scheduleLook(key, t)
        return next.delay
    }

    /// A number of seconds (0.1 to 3600) from the environment; a bad one is logged and ignored.
    func environmentSeconds(_ name: String) -> Double? {
        environment(name, expected: "seconds from 0.1 to 3600") { Double($0).flatMap { (0.1...3600).contains($0) ? $0 : nil } }
    }

    /// The value of an environment variable as `parse` reads it; one it cannot read is logged
    /// (with what was `expected`) and ignored.
    func environment<T>(_ name: String, expected: String, _ parse: (String) -> T?) -> T? {
        guard let text = getenv(name).map({ String(cString: $0) }) else { return nil }
        guard let v = parse(text) else {
            logger.warning("\(name)=\(quoted(text)) ignored: expected \(expected)")
            return nil
        }
        return v
    }

    static func seconds(_ v: Double) -> String {
        v == v.rounded() ? "\(Int(v)) s" : "\(Double(Int(v * 10)) / 10) s"
    }

    /// One attach, by kind. PCI devices are bound to vfio-pci first (their whole
    /// IOMMU group); a failed bind leaves every member on its own driver. Nil when a
    /// PCI device is no longer for this VM once bound (a group mate that arrived
    /// meanwhile put its group in conflict, say): the caller looks again.
    func attach(_ t: Tracked, to backend: any VMBackend) async throws -> Attachment? {
        let device = t.device
        switch device {
        case .usb(let d):
            return try await backend.attachUSB(d, present: { [t] in t.present && t.device == device })
        case .pci(let d):
            if needsBind(t, d) {
                // A device just added (or a group mate) is bound only after the kernel's
                // first probe of it; what is wanted may have changed meanwhile. (A record with
                // the device off vfio-pci: a give-back that did not finish; bound again.)
                await binder.firstProbesOver(d)
                guard t.target == backend.name else { return nil }
                let record = try await bindToVFIO(t, d)
                logger.info("\(t.logName): on vfio-pci (\(Self.groupText(record))) in \(ms(since: t.since))")
            }
            guard t.target == backend.name else { return nil }
            return try await backend.attachPCI(d)
        case .input(let d):
            return try await backend.attachEvdev(d, busPrefix: evdevPrefix(t))
        }
    }

    /// Binds the device (and its IOMMU group) to vfio-pci, with its record in `t.vfio`; also
    /// when the bind fails and its rollback does not finish, so that giving the group back
    /// can still finish it.
    func bindToVFIO(_ t: Tracked, _ d: PCIDevice) async throws(VFIOError) -> BindRecord {
        do {
            let record = try await binder.bind(d, previous: t.vfio)
            t.vfio = record
            return record
        } catch {
            if let kept = error.keptRecord { t.vfio = kept }
            throw error
        }
    }

    /// True when the PCI device is to be bound to vfio-pci: no record of a bind, or a record
    /// while the device is off vfio-pci now (a give-back that did not finish). Its `driver`
    /// link is read only when there is a record.
    func needsBind(_ t: Tracked, _ d: PCIDevice) -> Bool {
        t.vfio == nil || Sysfs.linkName(reader.sysfs.path(d.sysPath) + "/driver") != VFIOBinder.vfioDriver
    }

    /// Gives a PCI device (and its group) back to the drivers it had, as libvirt's
    /// managed mode does, once it is in no VM and is going to none.
    func giveBackDriver(_ t: Tracked) async {
        guard t.attachment == nil else { return }
        guard let record = t.vfio else {
            // Nothing of its own to give back (a device replugged while its detach ran handed its
            // old record to a mate, which held the group while this one was still in the VM).
            releaseMates(of: t)
            return
        }
        guard t.present else {
            t.vfio = nil // unplugged from the host: nothing to give back of it
            await passOn(record, leaving: t)
            return
        }
        if t.placementUnknown && !unlisted.isEmpty {
            let vms = unlisted.keys.sorted().joined(separator: ", ")
            let why = "stays on vfio-pci until \(vms) can be listed: an earlier run left it there, and \(unlisted.count == 1 ? "that VM" : "one of them") may hold it"
            if t.lastError != why { logger.warning("\(t.logName): \(why)") }
            t.lastError = why
            return
        }
        // The group goes back as a whole: not while another of its devices is in a VM
        // (or on its way to one), which would lose the device from under that VM.
        if let mate = groupMateInUse(t) {
            logger.info("\(t.logName): IOMMU group \(record.group) stays on vfio-pci while \(mate.device.logName) is in a VM or going to one")
            return
        }
        do {
            try await binder.restore(record)
            // (A mate's record handed over meanwhile, merged with this one, stays.)
            if t.vfio == record { t.vfio = nil }
            let drivers = record.members.filter { !$0.wasOnVFIO }
                .map { "\($0.address) -> \($0.originalDriver ?? "no driver")" }.joined(separator: ", ")
            logger.info("\(t.logName): back on its host driver (\(drivers.isEmpty ? "its group stays as it was before vhotplug" : drivers))")
        } catch {
            logger.error("\(t.logName): cannot give the device back to its driver: \(error)")
            return
        }
        releaseMates(of: t)
    }

    /// A group mate kept on vfio-pci for `t` (it held a record, and `t` was in a VM) can go back
    /// now, in its own task (a reconcile; one that is running looks again), so that nothing else
    /// moves it meanwhile.
    func releaseMates(of t: Tracked) {
        // (A mate whose attach failed too: before, it was left out, and when it had failed first,
        // while `t` was still going to its VM, its group stayed on vfio-pci with no VM for good.)
        for o in groupMates(of: t) where o.vfio != nil && o.attachment == nil && (o.target == nil || o.failed) {
            if let key = Self.key(o.device), devices[key] === o { reconcile(key) }
        }
    }

    /// The record of a device that left the host (unplugged, or replugged as a new device)
    /// also says what its group mates had before the bind: a mate still here that the bind
    /// moved takes it over, and gives the group back when it is free (at once when it is).
    /// With no such mate, the record is forgotten.
    func passOn(_ record: BindRecord, leaving t: Tracked, replugged: Bool = false) async {
        let heir = groupMates(of: t).first { m in
            guard case .pci(let d) = m.device else { return false }
            return record.members.contains { $0.address == d.address && !$0.wasOnVFIO }
        }
        guard let heir, case .pci(let d) = heir.device else {
            await binder.forget(record)
            return
        }
        heir.vfio = await binder.handOver(record, to: d.address, merging: heir.vfio)
        logger.info("\(t.logName): \(replugged ? "plugged again while it left its VM" : "left the host"); \(heir.device.logName) keeps the record of \(Self.groupText(record)) (what its devices had before vfio-pci)")
        if let key = Self.key(heir.device), devices[key] === heir { reconcile(key) }
    }

    /// The other followed PCI devices of `t`'s IOMMU group.
    func groupMates(of t: Tracked) -> [Tracked] {
        groupMembers(of: t).values.filter { $0 !== t }
    }

    /// `IOMMU group 12, 2 devices`: what a bind moved, for the log.
    static func groupText(_ record: BindRecord) -> String {
        "IOMMU group \(record.group), \(record.members.count) device\(record.members.count == 1 ? "" : "s")"
    }

    /// A device of `t`'s IOMMU group that is in a VM or going to one (a mate whose attach
    /// failed is going nowhere until something changes: before, it kept the group on vfio-pci
    /// with no VM after the others left).
    func groupMateInUse(_ t: Tracked) -> Tracked? {
        groupMates(of: t).first { $0.attachment != nil || ($0.target != nil && !$0.failed) }
    }

    func ms(since: Deadline) -> String {
        let v = Deadline.now().seconds(since: since) * 1000
        return v < 10 ? "\(Double(Int(v * 100)) / 100) ms" : "\(Int(v)) ms"
    }

    // MARK: Signals

    func signal(_ signo: Int32) async {
        switch signo {
        case SIGHUP:
            guard started else {
                if !reloadPending { logger.info("SIGHUP while starting: the configuration is reloaded once the start is over") }
                reloadPending = true
                return
            }
            await reloadInTurn()
        default:
            logger.info("vhotplug: stopping (signal \(signo)); attached devices stay with their VMs")
            stopping = true
            // A bind or give-back in progress finishes first: cut between a device's unbind and its
            // probe, it would be left with no driver. Not for ever: a sysfs store the kernel does not
            // end (an unbind waits for the VM that holds the device to let go) kept the daemon from
            // stopping, and the host's USB authorization from being given back, until systemd killed
            // it. A bind or give-back cut short keeps its record, and the next start finishes it.
            if await !finishes(within: stopWait, { await self.binder.quiesce() }) {
                logger.error("vhotplug: a VFIO bind or give-back still runs after \(Self.seconds(stopWait)) (the kernel has not ended its sysfs store); stopping without it: its record is kept for the next start")
            }
            await stopAPI()
            // (A user's choice made just before is not lost; a disk that does not answer is not waited for.)
            if await !finishes(within: stopWait, { await self.stateWritten() }) {
                logger.error("vhotplug: the state file is still being written after \(Self.seconds(stopWait)); stopping without it")
            }
            authorizer.release(logger)
            loop.stop()
        }
    }

    /// Runs `operation` in a task of its own and waits for it at most `seconds`: false when it was
    /// still running then (it goes on; its end is not waited for).
    func finishes(within seconds: Double, _ operation: @escaping @Sendable () async -> Void) async -> Bool {
        let wait = BoundedWait(loop: loop)
        return await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
            wait.start(c, seconds: seconds)
            Task(executorPreference: loop) {
                await operation()
                wait.end(true)
            }
        }
    }

    /// Reloads one at a time: a SIGHUP during a reload is followed by one more (for any number
    /// of them), which reads the file as it is then.
    func reloadInTurn() async {
        guard !reloading else {
            reloadPending = true
            return
        }
        reloading = true
        repeat {
            reloadPending = false
            await reload()
        } while reloadPending && !stopping
        reloading = false
        noteIfIdle()
    }

    /// SIGHUP: a valid new configuration replaces the old; devices whose
    /// decision changed move. A bad one is rejected, the old one stays.
    func reload() async {
        let next: Configuration
        do {
            next = try ConfigurationLoader.load(path: options.configPath)
        } catch {
            logger.error("reload rejected, the previous configuration stays in force:\n\(error)")
            return
        }
        let followedInput = matcher.decidesInputDevices
        let authorizationWasActive = authorization != nil
        let crosvmChanged = crosvmProgram(next) != crosvmProgram(configuration)
        let previousGeneral = configuration.general
        configuration = next
        matcher = Matcher(next)
        let fresh = makeBackends()
        logger.info("configuration reloaded: \(next.summary)")
        if matcher.decidesInputDevices && !followedInput {
            // evdev passthrough turned on: input events from now on, and the input devices already there.
            monitor?.setSubsystems(eventSubsystems)
            let found: [HostDevice]
            do {
                let listed = try reader.enumerate(.input)
                for f in listed.failures { logger.warning("cannot read \(f)") }
                found = listed.devices
            } catch {
                logger.error("cannot list the input devices (\(error)): those there now are followed from their next event")
                found = []
            }
            let now = Deadline.now()
            for device in found {
                guard let key = Self.key(device), devices[key] == nil else { continue }
                let t = Tracked(device: device, decision: .init(reason: .noRule), since: now)
                devices[key] = t
            }
        }
        // The boot filesystems as they are now (what a change of the mount table kept held goes).
        _ = readBootDevices("reload", keep: false)
        // A reload also follows what events did not say (the daemon was stopped, events were lost).
        rescan()
        decideAgain(crosvmChanged: crosvmChanged)
        reloadAuthorization(wasActive: authorizationWasActive)
        logger.debug("reload: every device decided again, USB authorization applied")
        // A VM that is new, or has another socket or type, is looked at afresh: what was known
        // of its old socket says nothing (its new one may be there already, with no inotify event
        // to come).
        vmDown.formIntersection(next.vms.map(\.name))
        // A VM no longer configured is not asked again (nor waited for).
        for vm in unlisted.keys where !next.vms.contains(where: { $0.name == vm }) { listedOrDown(vm) }
        for name in fresh {
            vmDown.remove(name)
            guard let path = backends[name]?.socketPath, access(path, F_OK) == 0 else { continue }
            Task(executorPreference: loop) { await self.socketChanged(path, created: true) }
        }
        // Last: the API's switch waits (for the old listeners to close), and the rest of a
        // reload is done without a wait, as one step of the loop.
        await reloadGeneral(previous: previousGeneral)
    }

    /// Decides every present device again (the rules, or what they see, changed): one whose
    /// decision changed moves. `crosvmChanged`: another crosvm program; what failed with the old
    /// one is tried again.
    func decideAgain(crosvmChanged: Bool = false) {
        for (key, t) in devices where t.present {
            let decision = decide(t.device)
            if decision != t.decision {
                t.decision = decision
                // (A choice asked of the clients under the old rules is asked again if still open.)
                api.selecting.remove(key)
                // Where it is, when the new rules allow it there, as a restart would find it.
                // Suspended (usb_suspend/pci_suspend): it stays off; the resume decides, under the rules then in force.
                let suspended = api.suspended[key] != nil && t.attachment == nil
                t.want = suspended ? nil : t.attachment.map { want(key, t, placedIn: $0.vm) } ?? initialWant(key, t)
                t.failed = false
                t.since = .now()
                if suspended {
                    logger.info("\(t.logName): suspended; stays on the host until resumed (its rules now: \(decision.summary))")
                } else if let vm = t.attachment?.vm, t.want == vm, vm != decision.targetVm {
                    logger.info("\(t.logName): \(decision.summary); stays in \(vm), which its rules allow too")
                } else {
                    logDecision(t)
                }
            } else if crosvmChanged, t.failed, let vm = t.want, backends[vm] is CrosvmBackend {
                // Another crosvm program (a wrong path fixed): what failed with the old one is tried again.
                t.failed = false
                t.since = .now()
            }
            reconcile(key)
        }
    }
}

extension Attachment {
    /// False when it is of an earlier device at the same place: a USB device that has
    /// another address now (replugged). True when it cannot be told (crosvm's list).
    func stands(for device: HostDevice) -> Bool {
        guard case .usb(let d) = device, let bus = usbBus, let address = usbAddress else { return true }
        return bus == d.bus && address == d.devnum
    }
}

extension Tracked {
    /// The driver a PCI device had when it was read.
    var pciDriver: String? {
        if case .pci(let d) = device { return d.driver }
        return nil
    }
}

extension HostDevice {
    /// `usb 1-2 046d:c52b "Logitech, Inc." "USB Receiver"`: device strings quoted and bounded.
    var logName: String {
        switch self {
        case .usb(let d):
            var name = "usb "
            name += d.sysName
            name += " "
            name += hex4(d.vendorId)
            name += ":"
            name += hex4(d.productId)
            // The device's own strings first (usb.ids names the model family, not this device).
            for text in [d.manufacturer ?? d.vendorName, d.product ?? d.productName] {
                if let text {
                    name += " "
                    name += quoted(text, limit: 40)
                }
            }
            return name
        case .pci(let d):
            return "pci \(d.address) \(hex4(d.vendorId)):\(hex4(d.deviceId))"
        case .input(let d):
            return "input \(d.sysName) \(quoted(d.name ?? "", limit: 40))"
        }
    }
}

/// `Daemon.finishes(within:)`: the waiter resumed once, by the operation's end or by the timer,
/// both on the loop's thread.
private final class BoundedWait: @unchecked Sendable {
    private let loop: EventLoop
    private var continuation: CheckedContinuation<Bool, Never>?
    private var timer: TimerToken?

    init(loop: EventLoop) { self.loop = loop }

    func start(_ c: CheckedContinuation<Bool, Never>, seconds: Double) {
        continuation = c
        timer = loop.schedule(at: .after(seconds)) { [self] in end(false) }
    }

    func end(_ finished: Bool) {
        if let timer { loop.cancel(timer) }
        timer = nil
        continuation?.resume(returning: finished)
        continuation = nil
    }
}
