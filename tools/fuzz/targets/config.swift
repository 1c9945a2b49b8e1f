// libFuzzer target: configuration loading (UTF-8 check, JSON5 parse, validation)
// as `vhotplug check` and the daemon do it, then the one-line summary or the
// diagnostics' text.
import HotplugConfig

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    do {
        let configuration = try ConfigurationLoader.parse(bytes: bytes, file: "fuzz.conf")
        _ = configuration.summary
    } catch let error as ConfigurationError {
        if error.diagnostics.isEmpty { fatalError("a ConfigurationError without diagnostics") }
        _ = error.description
    } catch {
        fatalError("unexpected error type: \(error)")
    }
    return 0
}
