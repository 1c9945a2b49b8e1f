import DeviceModel
import HotplugConfig
import JSONKit
import Reactor
#if canImport(Glibc)
import Glibc
#endif

/// What went wrong talking to a VM. Every case names the VM.
public enum VMError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The VM's socket is absent or refuses connections: the VM is not running.
    case notRunning(vm: String, reason: String)
    /// No answer within the deadline.
    case timeout(vm: String, step: String)
    /// The peer broke the protocol (garbage, closed mid-reply, unexpected answer).
    case protocolError(vm: String, detail: String)
    /// The VM refused the command.
    case commandFailed(vm: String, command: String, errorClass: String, message: String)
    /// The hypervisor cannot do this (crosvm and PCI, no free port, ...).
    case unsupported(vm: String, detail: String)
    /// The VM runs, but its guest does not take the device yet: crosvm refuses USB attaches
    /// until the guest has started its USB (xHCI) driver. Worth trying again later.
    case guestNotReady(vm: String, detail: String)

    public var description: String {
        switch self {
        case .notRunning(let vm, let reason): "VM \(vm) is not running (\(reason))"
        case .timeout(let vm, let step): "VM \(vm): no answer to \(step) in time"
        case .protocolError(let vm, let detail): "VM \(vm): protocol error: \(detail)"
        case .commandFailed(let vm, let command, let cls, let message):
            "VM \(vm): \(command) failed: \(plainOrQuoted(cls)): \(quoted(message, limit: 200))"
        case .unsupported(let vm, let detail): "VM \(vm): \(detail)"
        case .guestNotReady(let vm, let detail): "VM \(vm): \(detail)"
        }
    }

    /// True when the VM is simply not there (the device waits for it).
    public var isNotRunning: Bool {
        if case .notRunning = self { return true }
        return false
    }

    /// True when a detach was asked and the guest had not let go of the device by the
    /// deadline: QEMU keeps the unplug pending and may still complete it (the guest acts
    /// late, the VM is reset), with no client to tell.
    public var isUnplugPending: Bool {
        if case .timeout(_, let step) = self { return step.hasPrefix(VMError.unplugStep) }
        return false
    }

    /// The step of a detach's wait for the guest (`DEVICE_DELETED for ID ...`).
    public static let unplugStep = "DEVICE_DELETED for "

    /// True when a `device_add` went out and got no answer by its deadline (QEMU busy, or
    /// stopped, or realizing a vfio-pci device, which maps its memory): QEMU may still add
    /// the device, and a vfio-pci one is open in QEMU meanwhile.
    public var isAttachUnanswered: Bool {
        if case .timeout(_, let step) = self { return step.hasPrefix(VMError.attachStep) }
        return false
    }

    /// The step of an attach's `device_add` (`device_add vfio-pci ADDRESS`, `device_add usb-host 1-2`).
    public static let attachStep = "device_add "

    /// True when the guest does not take devices yet (it is booting): the attach may work later.
    public var isGuestNotReady: Bool {
        if case .guestNotReady = self { return true }
        return false
    }

    /// True when the VM had no free port for the device: QEMU no free pcie-root-port (for a
    /// PCI or input device), crosvm `no_available_port` with its ports of that kind taken.
    /// A port that frees (a device leaving that VM) lets the attach work.
    public var isPortsFull: Bool {
        switch self {
        case .unsupported(_, let detail): detail.hasPrefix(VMError.noFreeRootPort)
        case .commandFailed(_, _, let errorClass, _): errorClass == "no_available_port"
        default: false
        }
    }

    /// The start of QEMU's refusal for want of a root port.
    public static let noFreeRootPort = "no free pcie-root-port"

    /// True when the VM did not answer some step in time (it says nothing of what it holds).
    public var isTimeout: Bool {
        if case .timeout = self { return true }
        return false
    }
}

/// What kind of device an attachment is.
public enum AttachmentKind: String, Sendable, Hashable, Codable {
    case usb
    case pci
    case evdev
}

/// A device vhotplug put into a VM, as the VM knows it.
public struct Attachment: Sendable, Hashable {
    public var vm: String
    public var kind: AttachmentKind
    /// QEMU device id (`vhp-usb-1-2.3`), or crosvm port number.
    public var id: String
    /// What it is on the host: USB `bus-portpath` (`1-2.3`), PCI address, or event node name.
    public var hostKey: String
    /// USB vendor and product as the VM reports them, when it does (crosvm's list).
    public var usbVendor: UInt16?
    public var usbProduct: UInt16?
    /// The host address a QEMU vfio-pci device was given (`qom-get host`).
    public var pciHost: String?
    /// The host bus and address a QEMU usb-host device was given (`qom-get`).
    public var usbBus: Int?
    public var usbAddress: Int?

    public init(vm: String, kind: AttachmentKind, id: String, hostKey: String,
                usbVendor: UInt16? = nil, usbProduct: UInt16? = nil, usbBus: Int? = nil, usbAddress: Int? = nil) {
        self.vm = vm
        self.kind = kind
        self.id = id
        self.hostKey = hostKey
        self.usbVendor = usbVendor
        self.usbProduct = usbProduct
        self.usbBus = usbBus
        self.usbAddress = usbAddress
    }
}

/// One VM, as vhotplug drives it. Implementations are actors on the daemon's
/// event loop: a slow or dead VM only delays its own operations.
public protocol VMBackend: Actor {
    nonisolated var name: String { get }
    nonisolated var type: VMType { get }
    /// The socket path: its folder is watched for the VM coming up.
    nonisolated var socketPath: String { get }

    /// Attaches a USB device. `present` says whether the device is still on the host (the
    /// same one: not unplugged, not replaced): a backend that retries asks it first.
    func attachUSB(_ device: USBDevice, present: @escaping @Sendable () -> Bool) async throws(VMError) -> Attachment
    /// Attaches a PCI function already bound to vfio-pci, on a free PCIe root port.
    func attachPCI(_ device: PCIDevice) async throws(VMError) -> Attachment
    /// Attaches an input event device (virtio-input-host-pci) on a free root port
    /// whose id starts with `busPrefix` (any free root port when nil).
    func attachEvdev(_ device: InputDevice, busPrefix: String?) async throws(VMError) -> Attachment
    /// Detaches what an earlier attach returned; a device the VM no longer has is not an error.
    func detach(_ attachment: Attachment) async throws(VMError)
    /// What vhotplug attached to this VM earlier (its ids / ports), for resync after restarts.
    func listAttached() async throws(VMError) -> [Attachment]
    /// Whether the VM has a free port `device` could take now (`busPrefix`: an input device's
    /// root ports); nil when it cannot tell. Asked before trying again an attach that found none.
    func hasFreePort(for device: HostDevice, busPrefix: String?) async -> Bool?
    /// Removes an attachment `listAttached` returned that stands for no device: only while it
    /// is still the one listed (not one an attach put under the same id since). True when removed.
    func removeStale(_ attachment: Attachment) async throws(VMError) -> Bool
    /// Whether the VM still has the device of `attachment` (after a detach whose wait for
    /// the guest ended without an answer, or an attach that was not answered).
    func holds(_ attachment: Attachment) async throws(VMError) -> Bool
    /// An attach of `device` that ended without the VM's answer will not be tried again (the
    /// device left the host, goes elsewhere, or its attach failed for good): what it may have
    /// put in the VM is taken out. (crosvm: an attach killed at its deadline whose `usb list`
    /// was killed too; QEMU's attaches are followed by their id instead.)
    func abandonAttach(_ device: USBDevice) async
    /// The attachment an attach of `device` makes, when it is known without the VM's answer
    /// (QEMU: vhotplug's id); nil when only the VM can tell (crosvm's port).
    nonisolated func attachment(for device: HostDevice) -> Attachment?
    /// A device that may go to this VM has just appeared and is being read: the backend
    /// may get its connection ready meanwhile. Unused, it is closed by `unprepare` or shortly after.
    /// Called on the loop's thread, synchronously.
    nonisolated func prepare()
    /// The device did not come to this VM after all: drop what `prepare` opened.
    /// Called on the loop's thread, synchronously.
    nonisolated func unprepare()
}

extension VMBackend {
    public nonisolated func prepare() {}
    public nonisolated func unprepare() {}

    public func holds(_ attachment: Attachment) async throws(VMError) -> Bool {
        try await listAttached().contains { $0.id == attachment.id }
    }

    public nonisolated func attachment(for device: HostDevice) -> Attachment? { nil }

    public func abandonAttach(_ device: USBDevice) async {}

    public func hasFreePort(for device: HostDevice, busPrefix: String?) async -> Bool? { nil }

    public func removeStale(_ attachment: Attachment) async throws(VMError) -> Bool {
        try await detach(attachment)
        return true
    }
}

/// vhotplug's QEMU device ids: `vhp-usb-1-2.3` for USB (bus and port path),
/// `vhp-pci-0000-01-00.0` for PCI, `vhp-evdev-input7-event3` for input devices (the input
/// device and its event node: the kernel gives a freed `eventN` to the next device, never
/// an `inputN` of the same boot). They are stable for a device's place, and recognisable in
/// `qom-list` after a restart.
public enum DeviceIds {
    public static let prefix = "vhp-"

    public static func usb(_ d: USBDevice) -> String { prefix + "usb-" + usbKey(d) }
    public static func usbKey(_ d: USBDevice) -> String { d.sysName }
    public static func pci(address: String) -> String { prefix + "pci-" + address.replacingColons() }
    public static func evdev(_ d: InputDevice) -> String { prefix + "evdev-" + evdevKey(d) }
    /// `input7-event3` (`event3` when the event node has no input device above it).
    public static func evdevKey(_ d: InputDevice) -> String { evdevKey(inputName: d.inputName, eventNode: d.sysName) }
    public static func evdevKey(inputName: String?, eventNode: String) -> String { (inputName.map { $0 + "-" } ?? "") + eventNode }

    /// The kind and host key of one of vhotplug's ids; nil for any other id.
    public static func parse(_ id: String) -> (AttachmentKind, String)? {
        guard id.hasPrefix(prefix) else { return nil }
        let rest = id.dropFirst(prefix.count)
        for kind in [AttachmentKind.usb, .pci, .evdev] where rest.hasPrefix(kind.rawValue + "-") {
            let key = String(rest.dropFirst(kind.rawValue.count + 1))
            // Only what vhotplug's own ids hold (port paths, PCI addresses, input names): an id a
            // VM lists with anything else (a newline, in the log) is not vhotplug's.
            guard !key.isEmpty, key.unicodeScalars.allSatisfy(isIdCharacter) else { return nil }
            return (kind, kind == .pci ? key.restoringColons() : key)
        }
        return nil
    }
}

/// Whether a VM's socket can be trusted to be its VM's. vhotplug runs as root and hands what it
/// sends there to whoever listens: QEMU's commands and, through crosvm, open USB devices. A
/// socket in a folder any user can write may be anyone's: one there is trusted only when the
/// folder is sticky (`/tmp`: nobody replaces another's file) and the socket is root's or the
/// folder owner's. (Two system calls, each time a connection is made.)
public enum SocketTrust {
    /// Why the socket at `path` is not trusted, or nil (also when it is not there: the
    /// connection then says so).
    public static func problem(_ path: String) -> String? {
        var st = stat()
        guard lstat(path, &st) == 0 else { return nil }
        var socketPath = path
        if st.st_mode & S_IFMT == S_IFLNK {
            guard let real = realpath(path, nil) else { return nil }
            socketPath = String(cString: real)
            free(real)
            guard stat(socketPath, &st) == 0 else { return nil }
        }
        let folder = parentFolder(socketPath)
        var fs = stat()
        guard stat(folder, &fs) == 0, fs.st_mode & S_IWOTH != 0 else { return nil }
        let fix = "put it in a folder that only root or the VM's user can write"
        if fs.st_mode & S_ISVTX == 0 {
            return "it is in \(folder), which any user can write, and anyone could put a socket of their own in its place; \(fix)"
        }
        if st.st_uid != 0 && st.st_uid != fs.st_uid {
            return "it belongs to uid \(st.st_uid), in \(folder), which any user can write: anyone could have made it while the VM was down; "
                + "vhotplug trusts a socket there only when it is root's, or \(fix)"
        }
        return nil
    }
}

/// A name a VM gave (an error class, a port's id) as it is when it is printable ASCII with no
/// space, quoted otherwise: a log line stays one line, whatever the VM sent.
func plainOrQuoted(_ text: String) -> String {
    text.unicodeScalars.allSatisfy { $0.value > 0x20 && $0.value < 0x7F } ? text : quoted(text, limit: 60)
}

/// ASCII letters, digits, `.`, `-`, `_`.
private func isIdCharacter(_ c: Unicode.Scalar) -> Bool {
    ("a"..."z").contains(c) || ("A"..."Z").contains(c) || ("0"..."9").contains(c) || c == "." || c == "-" || c == "_"
}

extension String {
    /// `0000:01:00.0` -> `0000-01-00.0` (QEMU ids allow no colons).
    func replacingColons() -> String { String(map { $0 == ":" ? "-" : $0 }) }
    /// `0000-01-00.0` -> `0000:01:00.0`.
    func restoringColons() -> String { String(map { $0 == "-" ? ":" : $0 }) }
}

extension VMBackend {
    /// Attaches a USB device, taken to stay on the host meanwhile.
    public func attachUSB(_ device: USBDevice) async throws(VMError) -> Attachment {
        try await attachUSB(device, present: { true })
    }
}
