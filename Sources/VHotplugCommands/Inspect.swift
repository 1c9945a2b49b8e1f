import JSONKit
import ArgumentParser
import DeviceModel
import HostDevices
import HotplugConfig
import HotplugRules

/// `vhotplug inspect`: every device with its attributes, and with `-c` the decision.
struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vhotplug inspect",
        abstract: "Show devices as vhotplug reads them, and where the rules send them",
        discussion: """
            Attributes are named as the rule parameters. Runs as an ordinary user. \
            SYSNAME selects devices: a USB name (1-2.3), a PCI address (0000:00:14.3) or an event node (event3).
            """)

    @Option(name: [.customShort("c", allowingJoined: true), .long], help: "Configuration whose rules decide each device")
    var config: String?

    @Flag(help: "Print a JSON array for tools")
    var json = false

    @Flag(help: "USB devices") var usb = false
    @Flag(help: "PCI devices") var pci = false
    @Flag(help: "Input event devices") var input = false

    @Argument(help: "Only these devices")
    var sysNames: [String] = []

    func run() throws {
        let matcher = try config.map { Matcher(try loadConfiguration($0)) }
        var kinds: DeviceKinds = []
        if usb { kinds.insert(.usb) }
        if pci { kinds.insert(.pci) }
        if input { kinds.insert(.input) }
        if kinds.isEmpty { kinds = .all }
        let reader = DeviceReader()
        var (devices, failures) = try reader.enumerate(kinds)
        let read = devices
        if !sysNames.isEmpty {
            let wanted = Set(sysNames.map { $0.hasPrefix("/dev/input/") ? String($0.dropFirst(11)) : $0 })
            devices = devices.filter { wanted.contains($0.sysName) || ($0.pciShortAddress.map(wanted.contains) ?? false) }
            // A failure is of a wanted device when it names it, or its PCI address in domain 0000,
            // or the folder it lies in (an event device's errors name its parent `inputN`). Before,
            // those two were taken for "no such device", hiding why it could not be read.
            func of(_ f: DeviceReadError, _ w: String) -> Bool {
                f.device.hasSuffix("/" + w) || f.device.hasSuffix("/0000:" + w)
                    || Sysfs.exists(reader.sysfs.path(f.device) + "/" + w)
            }
            failures = failures.filter { f in wanted.contains { of(f, $0) } }
            let found = Set(devices.flatMap { [$0.sysName] + ($0.pciShortAddress.map { [$0] } ?? []) })
            let missing = wanted.subtracting(found).filter { w in !failures.contains { of($0, w) } }
            if !missing.isEmpty {
                writeStderr("vhotplug inspect: no such device: \(missing.sorted().joined(separator: ", "))\n")
                throw ExitCode(1)
            }
        }
        let records = inspectRecords(devices, matcher: matcher, among: read)
        if json {
            writeStdout(JSONText.array(records.map(\.json)).rendered(pretty: true) + "\n")
        } else {
            writeStdout(records.map(\.human).joined(separator: "\n\n") + (records.isEmpty ? "" : "\n"))
        }
        for f in failures {
            writeStderr("vhotplug inspect: cannot read \(f)\n")
        }
        if !failures.isEmpty { throw ExitCode(1) }
    }
}

extension HostDevice {
    /// `00:14.3` for a PCI device in domain 0000 (as `lspci` prints it).
    var pciShortAddress: String? {
        if case .pci(let d) = self, d.address.hasPrefix("0000:") { return String(d.address.dropFirst(5)) }
        return nil
    }
}
