// libFuzzer target: the control API's request parser (ControlAPI.APIRequest.decode),
// fed as the server is: bytes cut at LF, a trailing CR dropped, each line decoded.
//
// Properties beyond "no trap": every line gives a request or an error; an error's
// text is bounded (a client's junk is never echoed in full) and its failed reply
// renders on one line; a decoded request's selectors describe themselves.
import ControlAPI
import JSONKit

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    for var line in bytes.split(separator: 0x0A, omittingEmptySubsequences: true) {
        if line.last == 0x0D { line = line.dropLast() }
        switch APIRequest.decode(line: line) {
        case .success(let request):
            switch request {
            case .usbAttach(let s, _), .usbDetach(let s): _ = s.description
            case .pciAttach(let s, _), .pciDetach(let s): _ = s.description
            default: _ = "\(request)"
            }
        case .failure(let error):
            if error.message.utf8.count > 2048 { fatalError("error text of \(error.message.utf8.count) bytes") }
            let reply = APIReply.failed(error.message).rendered()
            if reply.contains("\n") || reply.contains("\r") { fatalError("a failed reply spans lines: \(reply)") }
        }
    }
    return 0
}
