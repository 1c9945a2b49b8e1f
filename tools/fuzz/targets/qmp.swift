// libFuzzer target: what QMPClient does with bytes from a QMP socket. The input is
// cut into lines at LF; each line that is not blank is parsed with JSONParser and
// classified with QMPMessage.from (greeting, reply, error reply, event, or garbage),
// and the fields the backends read are read.
@testable import VMM
import JSONKit

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let buffer = UnsafeBufferPointer(start: data, count: size)
    for line in buffer.split(separator: 0x0A, omittingEmptySubsequences: true) {
        if line.allSatisfy({ $0 == 0x20 || $0 == 0x0D || $0 == 0x09 }) { continue }
        var parser = JSONParser(bytes: Array(line))
        guard let node = try? parser.parseDocument(), let message = QMPMessage.from(node) else {
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
