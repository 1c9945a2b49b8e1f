// libFuzzer target: JSONKit's JSON5 parser on arbitrary bytes.
//
// Property checked beyond "no trap": a document that parses, written back with
// JSONText (the writer of `inspect --json` and messages), parses again to the
// same rendering. Non-integer numbers are carried as their source text.
import JSONKit

func text(_ node: JSONNode) -> JSONText {
    switch node.value {
    case .null: return .null
    case .bool(let b): return .bool(b)
    case .string(let s): return .string(s)
    case .number(let n): return n.integer.map(JSONText.int) ?? .string(n.text)
    case .array(let items): return .array(items.map(text))
    case .object(let o): return .object(o.members.map { ($0.key, text($0.value)) })
    }
}

/// Messages built from parsed values (foundDescription quotes and truncates).
func describeAll(_ node: JSONNode) -> Int {
    var n = node.foundDescription.utf8.count
    switch node.value {
    case .array(let items): for i in items { n &+= describeAll(i) }
    case .object(let o): for m in o.members { n &+= quoted(m.key).utf8.count &+ describeAll(m.value) }
    default: break
    }
    return n
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    var parser = JSONParser(bytes: bytes)
    guard let node = try? parser.parseDocument() else { return 0 }
    _ = describeAll(node)
    for issue in parser.issues { _ = issue.message.count + issue.path.count }
    let first = text(node).rendered()
    var again = JSONParser(bytes: Array(first.utf8))
    do {
        let second = text(try again.parseDocument()).rendered()
        if first != second { fatalError("round trip changed the document:\n\(first)\n\(second)") }
    } catch {
        fatalError("JSONText output does not parse back (\(error.line):\(error.column) \(error.message)):\n\(first)")
    }
    _ = text(node).rendered(pretty: true)
    // The control API's style (Python's json.dumps): it parses back to the same document.
    let python = text(node).rendered(.python)
    var back = JSONParser(bytes: Array(python.utf8))
    guard let parsed = try? back.parseDocument(), text(parsed).rendered() == first else {
        fatalError("the Python-style rendering does not parse back to the same document:\n\(python)\n\(first)")
    }
    if python.utf8.contains(where: { $0 >= 0x80 }) { fatalError("the Python-style rendering is not ASCII: \(python)") }
    return 0
}
