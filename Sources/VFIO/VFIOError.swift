/// Why a bind or a restore failed: the device, the step and the cause (an
/// errno with its path and value, a timeout, or a refusal before anything was
/// touched).
public struct VFIOError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The steps of a rebind, in the order they run for each member.
    public enum Step: String, Sendable, Hashable, Codable, CaseIterable {
        /// The checks before anything is written (bridge, boot disk, IOMMU group, vfio-pci loaded).
        case check
        /// Reading the member's current driver and `driver_override`.
        case readState = "read state"
        /// Writing `driver_override` (`vfio-pci`, or the old value back).
        case driverOverride = "driver_override"
        /// Writing the address to the current driver's `unbind`.
        case unbind
        /// Waiting for the `driver` link to go (the `unbind` uevent).
        case waitForUnbind = "wait for unbind"
        /// Writing the address to `/sys/bus/pci/drivers_probe`.
        case driversProbe = "drivers_probe"
        /// Waiting for the `driver` link to name the wanted driver (the `bind` uevent).
        case waitForDriver = "wait for driver"
        /// Waiting for `/dev/vfio/GROUP` (the `add` uevent of subsystem `vfio`).
        case waitForGroupNode = "wait for /dev/vfio"
    }

    /// What went wrong at that step.
    public enum Cause: Sendable, Hashable, CustomStringConvertible {
        /// The device or its group must not, or cannot, be moved; nothing was touched.
        case refused(String)
        /// A system call failed.
        case system(SysfsIOError)
        /// The deadline passed; `state` says what was seen last.
        case timeout(waitingFor: String, seconds: Double, state: String)

        /// The cause in words.
        public var description: String {
            switch self {
            case .refused(let why): why
            case .system(let e): e.description
            case .timeout(let what, let seconds, let state):
                "no \(what) within \(formatSeconds(seconds)) (\(state))"
            }
        }
    }

    /// The PCI address of the member the step was for.
    public var device: String
    /// The step that failed.
    public var step: Step
    /// What went wrong.
    public var cause: Cause
    /// Failures met afterwards while giving the other members back: the
    /// rollback after a failed bind, or the rest of a restore. Empty when every
    /// member went back to the driver it had.
    public var cleanupFailures: [VFIOError]
    /// A bind whose rollback did not finish: its record (what each member had before), kept
    /// in the store, so that the group can still be given back later. Nil otherwise.
    public var keptRecord: BindRecord?

    /// An error of `step` for `device`.
    public init(device: String, step: Step, cause: Cause, cleanupFailures: [VFIOError] = []) {
        self.device = device
        self.step = step
        self.cause = cause
        self.cleanupFailures = cleanupFailures
    }

    /// The errno of a failed system call, nil for refusals and timeouts.
    public var errno: Int32? {
        if case .system(let e) = cause { return e.errno }
        return nil
    }

    /// True when a wait reached its deadline.
    public var isTimeout: Bool {
        if case .timeout = cause { return true }
        return false
    }

    /// True when the device or its group was refused before anything was touched.
    public var isRefusal: Bool {
        if case .refused = cause { return true }
        return false
    }

    /// `0000:01:00.1: drivers_probe: write "0000:01:00.1" to /sys/bus/pci/drivers_probe: Input/output error (errno 5)`,
    /// followed by what the cleanup could not do, if anything.
    public var description: String {
        var text = "\(device): \(step.rawValue): \(cause)"
        if !cleanupFailures.isEmpty {
            text += "; and while giving the devices back: " + cleanupFailures.map(\.description).joined(separator: "; ")
        }
        return text
    }
}

func formatSeconds(_ s: Double) -> String {
    s < 1 ? "\(Int((s * 1000).rounded())) ms" : "\((s * 10).rounded() / 10) s"
}
