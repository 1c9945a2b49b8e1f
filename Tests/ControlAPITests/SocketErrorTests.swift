@testable import ControlAPI
import Foundation
import Testing

@Suite("ControlAPI: socket errors")
struct SocketErrorTests {
    @Test("a socket family the process may not use (a unit's RestrictAddressFamilies=) names the family to allow; other errors do not")
    func familyHint() {
        let refused = SocketError.socketCall("AF_VSOCK", "AF_VSOCK (is the vsock module loaded?)", errno: EAFNOSUPPORT)
        #expect(refused.message == "socket AF_VSOCK (is the vsock module loaded?): Address family not supported by protocol (errno 97); under systemd, the unit's RestrictAddressFamilies= must list AF_VSOCK")
        let other = SocketError.socketCall("AF_INET", "TCP", errno: EMFILE)
        #expect(other.message == "socket TCP: Too many open files (errno 24)")
    }
}
