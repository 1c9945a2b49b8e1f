import Foundation
import Reactor
import Testing
import VHotplugTestSupport

@Suite("Files written whole")
struct AtomicFileTests {
    @Test("a link planted where the temporary file goes is not followed: the file it names is left as it was, and the write lands in place")
    func plantedLink() throws {
        let dir = scratchPath("vhp-atomic")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let victim = dir + "/victim"
        try "precious\n".write(toFile: victim, atomically: false, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: dir + "/.state.tmp", withDestinationPath: victim)
        try AtomicFile.write(Array("new\n".utf8), to: dir + "/state")
        #expect(try String(contentsOfFile: victim, encoding: .utf8) == "precious\n")
        #expect(try String(contentsOfFile: dir + "/state", encoding: .utf8) == "new\n")
        #expect(!FileManager.default.fileExists(atPath: dir + "/.state.tmp"))
    }
}
