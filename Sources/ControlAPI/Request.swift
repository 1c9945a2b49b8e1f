import HotplugConfig
import JSONKit

/// Which USB device(s) a request means.
public enum USBSelector: Sendable, Hashable, CustomStringConvertible {
    /// `/dev/bus/usb/001/004`.
    case deviceNode(String)
    /// Bus number and root port.
    case busPort(Int, Int)
    case vidPid(UInt16, UInt16)
    /// The `tag` of the rule set that took the device.
    case tag(String)

    public var description: String {
        switch self {
        case .deviceNode(let n): "device_node \(quoted(n, limit: 80))"
        case .busPort(let b, let p): "bus \(b) port \(p)"
        case .vidPid(let v, let p): "vid \(hex(UInt32(v), width: 4).lowercased()) pid \(hex(UInt32(p), width: 4).lowercased())"
        case .tag(let t): "tag \(quoted(t, limit: 80))"
        }
    }
}

/// Which PCI device(s) a request means.
public enum PCISelector: Sendable, Hashable, CustomStringConvertible {
    /// Canonical `dddd:bb:dd.f`.
    case address(String)
    case vidDid(UInt16, UInt16)
    case tag(String)

    public var description: String {
        switch self {
        case .address(let a): "address \(a)"
        case .vidDid(let v, let d): "vid \(hex(UInt32(v), width: 4).lowercased()) did \(hex(UInt32(d), width: 4).lowercased())"
        case .tag(let t): "tag \(quoted(t, limit: 80))"
        }
    }
}

/// One decoded request of the control protocol (see reference-api.md).
public enum APIRequest: Sendable, Hashable {
    case enableNotifications
    case usbList(disconnected: Bool?, tag: String?)
    case usbAttach(USBSelector, vm: String?)
    case usbDetach(USBSelector)
    case usbSuspend(vm: String?)
    case usbResume(vm: String?)
    case pciList(disconnected: Bool?, tag: String?)
    case pciAttach(PCISelector, vm: String?)
    case pciDetach(PCISelector)
    case pciSuspend(vm: String?)
    case pciResume(vm: String?)
    case vmmArgs(VMMArgsRequest)

    /// The actions this server knows, as clients spell them.
    public static let actions = ["enable_notifications", "usb_list", "usb_attach", "usb_detach", "usb_suspend", "usb_resume",
                                 "pci_list", "pci_attach", "pci_detach", "pci_suspend", "pci_resume", "vmm_args"]
}

/// `vmm_args`: the arguments a VM launcher adds to a VM's command line so that the
/// PCI and evdev devices the rules give that VM are there from its start.
public struct VMMArgsRequest: Sendable, Hashable {
    public var vm: String
    /// QEMU: each device goes on bus `<prefix><index>` (a free pcie-root-port of the
    /// VM's command line); no `bus=` without a prefix.
    public var busPrefix: String?
    /// The first index (default 0), one more per device.
    public var busStartIndex: Int
    /// A VM that gets no PCI device is an error (the launcher asks again later).
    public var requirePCI: Bool

    public init(vm: String, busPrefix: String? = nil, busStartIndex: Int = 0, requirePCI: Bool = false) {
        self.vm = vm
        self.busPrefix = busPrefix
        self.busStartIndex = busStartIndex
        self.requirePCI = requirePCI
    }

    init(_ f: RequestFields) throws {
        guard let vm = try f.string("vm") else { throw APIRequestError("vmm_args needs \"vm\": the VM about to start") }
        let prefix = try f.string("qemu_bus_prefix")
        if let prefix, prefix.isEmpty || !prefix.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }) {
            throw APIRequestError("\"qemu_bus_prefix\": expected a QEMU device id prefix (letters, digits, \"-\", \"_\", \".\"), found \(quoted(prefix, limit: 40))")
        }
        self.init(vm: vm, busPrefix: prefix, busStartIndex: try f.integer("qemu_bus_start_index") ?? 0,
                  requirePCI: try f.bool("require_pci") ?? false)
    }
}

/// Why a request line was refused; `message` goes back as the reply's `error`.
public struct APIRequestError: Error, Sendable, Hashable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

extension APIRequest {
    /// Decodes one request line (without its newline). Never traps: any input
    /// gives a request or an error naming what was wrong and what was expected.
    public static func decode(line: some Collection<UInt8>) -> Result<APIRequest, APIRequestError> {
        var parser = JSONParser(bytes: Array(line))
        let root: JSONNode
        do {
            root = try parser.parseDocument()
        } catch {
            return .failure(APIRequestError("malformed JSON at column \(error.column): \(error.message)"))
        }
        if let issue = parser.issues.first {
            return .failure(APIRequestError("malformed request at column \(issue.column): \(issue.message)"))
        }
        guard case .object(let object) = root.value else {
            return .failure(APIRequestError("expected a JSON object with an \"action\", found \(root.foundDescription)"))
        }
        do {
            return .success(try decode(RequestFields(object: object)))
        } catch let error as APIRequestError {
            return .failure(error)
        } catch {
            return .failure(APIRequestError("\(error)"))
        }
    }

    static func decode(_ f: RequestFields) throws -> APIRequest {
        guard let action = try f.string("action") else {
            throw APIRequestError("missing \"action\" (one of: \(actions.joined(separator: ", ")))")
        }
        switch action {
        case "enable_notifications": return .enableNotifications
        case "usb_list": return .usbList(disconnected: try f.bool("disconnected"), tag: try f.string("tag"))
        case "pci_list": return .pciList(disconnected: try f.bool("disconnected"), tag: try f.string("tag"))
        case "usb_attach":
            let selector = try usbSelector(f, action: action)
            let vm = try f.string("vm")
            if case .tag = selector, vm != nil { throw APIRequestError("usb_attach: \"vm\" cannot be used with \"tag\"") }
            return .usbAttach(selector, vm: vm)
        case "usb_detach": return .usbDetach(try usbSelector(f, action: action))
        case "pci_attach":
            let selector = try pciSelector(f, action: action)
            let vm = try f.string("vm")
            if case .tag = selector, vm != nil { throw APIRequestError("pci_attach: \"vm\" cannot be used with \"tag\"") }
            return .pciAttach(selector, vm: vm)
        case "pci_detach": return .pciDetach(try pciSelector(f, action: action))
        case "usb_suspend": return .usbSuspend(vm: try f.string("vm"))
        case "usb_resume": return .usbResume(vm: try f.string("vm"))
        case "pci_suspend": return .pciSuspend(vm: try f.string("vm"))
        case "pci_resume": return .pciResume(vm: try f.string("vm"))
        case "vmm_args": return .vmmArgs(try VMMArgsRequest(f))
        default:
            throw APIRequestError("unknown action \(quoted(action, limit: 80)) (known: \(actions.joined(separator: ", ")))")
        }
    }

    static func usbSelector(_ f: RequestFields, action: String) throws -> USBSelector {
        if let node = try f.string("device_node") { return .deviceNode(node) }
        let bus = try f.integer("bus"), port = try f.integer("port")
        if let bus, let port { return .busPort(bus, port) }
        if bus != nil || port != nil { throw APIRequestError("\(action): \"bus\" and \"port\" go together") }
        let vid = try f.hexID("vid"), pid = try f.hexID("pid")
        if let vid, let pid { return .vidPid(vid, pid) }
        if vid != nil || pid != nil { throw APIRequestError("\(action): \"vid\" and \"pid\" go together") }
        if let tag = try f.string("tag") { return .tag(tag) }
        throw APIRequestError("\(action) needs a device: \"device_node\", \"bus\" and \"port\", \"vid\" and \"pid\", or \"tag\"")
    }

    static func pciSelector(_ f: RequestFields, action: String) throws -> PCISelector {
        if let text = try f.string("address") {
            guard let address = canonicalPCIAddress(text) else {
                throw APIRequestError("invalid PCI address \(quoted(text, limit: 80)): expected \"dddd:bb:dd.f\" or \"bb:dd.f\" in hex")
            }
            return .address(address)
        }
        let vid = try f.hexID("vid"), did = try f.hexID("did")
        if let vid, let did { return .vidDid(vid, did) }
        if vid != nil || did != nil { throw APIRequestError("\(action): \"vid\" and \"did\" go together") }
        if let tag = try f.string("tag") { return .tag(tag) }
        throw APIRequestError("\(action) needs a device: \"address\", \"vid\" and \"did\", or \"tag\"")
    }
}

/// A request object's fields; absent and `null` both mean "not given".
struct RequestFields {
    var object: JSONObject

    func value(_ key: String) -> JSONNode? {
        guard let m = object.member(key), !m.value.isNull else { return nil }
        return m.value
    }

    func string(_ key: String) throws -> String? {
        guard let v = value(key) else { return nil }
        guard case .string(let s) = v.value else {
            throw APIRequestError("\"\(key)\": expected a string, found \(v.foundDescription)")
        }
        return s
    }

    func bool(_ key: String) throws -> Bool? {
        guard let v = value(key) else { return nil }
        guard case .bool(let b) = v.value else {
            throw APIRequestError("\"\(key)\": expected true or false, found \(v.foundDescription)")
        }
        return b
    }

    /// An integer from 0 to 65535, as a number or a decimal string (`"3"`).
    func integer(_ key: String) throws -> Int? {
        guard let v = value(key) else { return nil }
        let expected = "\"\(key)\": expected an integer from 0 to 65535 (a number or a decimal string)"
        switch v.value {
        case .number(let n):
            guard n.isIntegerLiteral, let i = n.integer, (0...65535).contains(i) else {
                throw APIRequestError("\(expected), found \(truncated(n.text))")
            }
            return i
        case .string(let s):
            guard !s.isEmpty, s.count <= 5, s.allSatisfy(\.isASCII), let i = Int(s), (0...65535).contains(i) else {
                throw APIRequestError("\(expected), found \(quoted(s, limit: 40))")
            }
            return i
        default:
            throw APIRequestError("\(expected), found \(v.foundDescription)")
        }
    }

    /// A 16-bit ID as a hex string (`"046d"`, `"0x046d"`).
    func hexID(_ key: String) throws -> UInt16? {
        guard let s = try string(key) else { return nil }
        guard let v = parseHexIdentifier(s) else {
            throw APIRequestError("\"\(key)\": expected 1 to 4 hex digits like \"046d\", found \(quoted(s, limit: 40))")
        }
        return v
    }
}
