// libFuzzer target: what QMPClient does with bytes from a QMP socket. The input is
// cut into lines at LF; each line that is not blank is parsed with JSONParser and
// classified with QMPMessage.from (greeting, reply, error reply, event, or garbage),
// and the fields the backends read are read; QMPMessage.emptyReturn, the client's fast
// path, must agree with the parser whenever it recognises a line.
@testable import VMM
import JSONKit

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let buffer = UnsafeBufferPointer(start: data, count: size)
    for line in buffer.split(separator: 0x0A, omittingEmptySubsequences: true) {
        if line.allSatisfy({ $0 == 0x20 || $0 == 0x0D || $0 == 0x09 }) { continue }
        var parser = JSONParser(bytes: Array(line))
        let parsed = (try? parser.parseDocument()).flatMap(QMPMessage.from)
        // The fast path for `{"return": {}, "id": N}` agrees with the parser whenever it answers.
        if case .reply(let fastId, _)? = QMPMessage.emptyReturn(Array(line)) {
            guard case .reply(let id, let value)? = parsed, id == fastId, case .object(let o) = value.value, o.members.isEmpty else {
                fatalError("emptyReturn disagrees with the parser on \(Array(line))")
            }
        }
        guard let message = parsed else {
            // What the client puts in its protocol error.
            _ = quoted(String(decoding: line.prefix(200), as: UTF8.self))
            continue
        }
        switch message {
        case .greeting(let g):
            _ = g["QMP"]?["version"]?["qemu"]?["major"]?.intValue
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
