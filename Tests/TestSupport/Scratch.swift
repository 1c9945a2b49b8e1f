import Foundation

/// The folder of this test process's files, `$TMPDIR/vht-<pid>`, made on first use
/// and removed with everything in it when the process exits (runs used to leave about fifty
/// folders in /tmp each).
private let scratchRoot: String = {
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("vht-\(getpid())").path
    try? FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    atexit { removeScratchRoot() }
    return root
}()

private func removeScratchRoot() {
    try? FileManager.default.removeItem(atPath: scratchRoot)
}

/// A fresh path for one test's files (`prefix-<6 random hex digits>` in this process's scratch
/// folder; short, as Unix socket paths and messages that quote paths must be); the caller makes
/// the folder or file it needs there.
public func scratchPath(_ prefix: String) -> String {
    scratchRoot + "/\(prefix)-" + String(UInt32.random(in: 0x100000...0xFFFFFF), radix: 16)
}
