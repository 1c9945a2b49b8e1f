// libFuzzer target: what the VMs say. First, what QMPClient does with bytes from a QMP socket. The input is
// cut into lines at LF; each line that is not blank is parsed with JSONParser and
// classified with QMPMessage.from (greeting, reply, error reply, event, or garbage),
// and the fields the backends read are read; QMPMessage.fastPath, the client's fast
// paths (the empty return, the greeting, a plain event), must agree with the parser
// whenever it recognises a line.
@testable import VMM
import JSONKit

//
// Then the whole input as the stdout of a `crosvm usb ...` run (`CrosvmAnswer.parse`):
// a port is 1-255, and a `devices` answer written back out parses to the same ports.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let buffer = UnsafeBufferPointer(start: data, count: size)
    crosvmAnswer(String(decoding: buffer, as: UTF8.self))
    for line in buffer.split(separator: 0x0A, omittingEmptySubsequences: true) {
        if line.allSatisfy({ $0 == 0x20 || $0 == 0x0D || $0 == 0x09 }) { continue }
        var parser = JSONParser(bytes: Array(line))
        let parsed = (try? parser.parseDocument()).flatMap(QMPMessage.from)
        // The fast paths (`{"return": {}, "id": N}` and the greeting, CR or not) agree with the
        // parser whenever they answer. The greeting's looks at its first member only: a malformed
        // line that starts like it is let through (its content is never used).
        switch QMPMessage.fastPath(Array(line)) {
        case .reply(let fastId, _)?:
            guard case .reply(let id, let value)? = parsed, id == fastId, case .object(let o) = value.value, o.members.isEmpty else {
                fatalError("the empty return's fast path disagrees with the parser on \(Array(line))")
            }
        case .greeting?:
            if let parsed, case .greeting = parsed {} else if parsed != nil {
                fatalError("the greeting's fast path disagrees with the parser on \(Array(line))")
            }
        case .event(let name, let data)?:
            // Only lines the parser reads as the same event, with the same string members in order.
            func members(_ d: JSONNode?) -> [String]? {
                guard let d else { return nil }
                guard case .object(let o) = d.value else { return ["not an object"] }
                return o.members.map { "\($0.key)\u{0}\($0.value.stringValue ?? "\u{1}not a string")" }
            }
            guard case .event(let parsedName, let parsedData)? = parsed, parsedName == name, members(parsedData) == members(data) else {
                fatalError("the event's fast path disagrees with the parser on \(Array(line))")
            }
        case nil:
            break
        default:
            fatalError("a fast path answered an error reply on \(Array(line))")
        }
        guard let message = parsed else {
            // What the client puts in its protocol error.
            _ = quoted(String(decoding: line.prefix(200), as: UTF8.self))
            continue
        }
        switch message {
        case .greeting:
            break
        case .reply(_, let value):
            // qom-list / query-pci style walks.
            for item in value.arrayValue ?? [] {
                _ = item["name"]?.stringValue
                _ = item["type"]?.stringValue
                for dev in item["devices"]?.arrayValue ?? [] { _ = dev["qdev_id"]?.stringValue }
            }
        case .error(_, let errorClass, let description):
            _ = quoted(errorClass) + quoted(description, limit: 200)
        case .event(let name, let d):
            _ = name.count
            _ = d?["device"]?.stringValue
            _ = d?["path"]?.stringValue
        }
    }
    return 0
}

func crosvmAnswer(_ stdout: String) {
    let answer = CrosvmAnswer.parse(stdout)
    switch answer {
    case .ok(let port):
        if !(1...255).contains(port) { fatalError("crosvm: port \(port) out of range from \(Array(stdout.utf8))") }
    case .devices(let entries):
        let again = "devices" + entries.map { e in
            " \(e.port) " + String(e.vendor, radix: 16).leftPadded(4) + " " + String(e.product, radix: 16).leftPadded(4)
        }.joined()
        guard entries.allSatisfy({ (1...255).contains($0.port) }), CrosvmAnswer.parse(again) == answer else {
            fatalError("crosvm: devices answer does not read back: \(entries) from \(Array(stdout.utf8))")
        }
    case .cliError(let text), .unknown(let text):
        _ = quoted(text, limit: 300)
    default:
        _ = answer.word
    }
}

extension String {
    fileprivate func leftPadded(_ width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}
