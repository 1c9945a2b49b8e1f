import ArgumentParser
import Foundation
import Testing
import VHotplugTestSupport
@testable import VHotplugCommands

/// The message ArgumentParser prints for what `parse` refuses; nil when it is accepted.
func refusal<C: ParsableArguments>(_ type: C.Type, _ args: [String]) -> String? {
    do {
        _ = try type.parse(args)
        return nil
    } catch {
        #expect(type.exitCode(for: error) == .validationFailure, "\(args): exit \(type.exitCode(for: error).rawValue)")
        return type.message(for: error)
    }
}

/// The client run as a process that must end by itself (killed after 10 s otherwise: 137).
func client(_ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
    try run(["/usr/bin/timeout", "-s", "KILL", "10", Repository.vhotplug] + args)
}

@Suite("The client's options: bad usage is refused, exit 64")
struct ClientUsageTests {
    @Test("listen --retry: seconds above 0, finite; nan, inf, 0 and negative numbers are refused")
    func retryValues() {
        for bad in ["nan", "inf", "-inf", "0", "-5", "-0.5"] {
            #expect(refusal(Listen.self, ["--retry=\(bad)"])?.hasPrefix("--retry must be a finite number of seconds above 0, not ") == true, "\(bad)")
        }
        for good in ["0.01", "1", "5000", "1e9"] {
            #expect(refusal(Listen.self, ["--retry", good]) == nil, "\(good)")
        }
        #expect(refusal(Listen.self, ["--retry", "nan"]) == "--retry must be a finite number of seconds above 0, not nan")
    }

    @Test("usb, pci or vmm with no action: exit 64 naming the actions (before, the help and exit 0, so a script's empty action passed)")
    func missingActionExit() throws {
        for (group, actions) in [("usb", "list, attach, detach, suspend or resume"), ("pci", "list, attach, detach, suspend or resume"), ("vmm", "args")] {
            let r = try client([group])
            #expect(r.status == 64, "\(group): \(r.status) \(r.stderr)")
            #expect(r.stderr.contains("missing action: \(actions)"), "\(group): \(r.stderr)")
        }
        // Help asked for is still help.
        #expect(try client(["usb", "--help"]).status == 0)
    }

    @Test("listen --retry nan: exit 64 with the message (before, it polled every 50 ms forever)")
    func retryExit() throws {
        let r = try client(["listen", "-u", scratchPath("none") + ".sock", "--retry", "nan"])
        #expect(r.status == 64, "\(r.stderr)")
        #expect(r.stderr.contains("--retry must be a finite number of seconds above 0, not nan"), "\(r.stderr)")
    }

    @Test("listen --retry 5000: waits that long between attempts, does not crash (usleep's microseconds overflowed past 4294 s)")
    func longRetry() throws {
        let p = try ChildProcess([Repository.vhotplug, "listen", "-u", scratchPath("none") + ".sock", "--retry", "5000"],
                                 environment: cleanEnvironment())
        defer { if p.isRunning { p.signal(SIGKILL); _ = p.wait() } }
        // Its first attempt fails at once, and it says so (an empty line: its stderr ended).
        var said = ""
        while !said.contains("retrying every") {
            let line = p.stderrLine()
            said += line + "\n"
            if line.isEmpty { break }
        }
        #expect(said.contains("retrying every 5000.0 s"), "\(said)")
        // Then it sleeps: the kernel shows it in clock_nanosleep (x86-64's 230) or nanosleep (35),
        // past the computation of the delay that overflowed. (Looked at until then, 10 s at most.)
        let deadline = Date().addingTimeInterval(10)
        var call = ""
        while p.isRunning, Date() < deadline {
            call = (try? String(contentsOfFile: "/proc/\(p.pid)/syscall", encoding: .utf8)) ?? ""
            if call.hasPrefix("230 ") || call.hasPrefix("35 ") { break }
        }
        #expect(p.isRunning && (call.hasPrefix("230 ") || call.hasPrefix("35 ")), "\(said) syscall: \(call)")
        p.signal(SIGTERM)
        #expect(p.wait() == 128 + SIGTERM)
    }

    @Test("-p/--api-port: 1-65535 over TCP, 0-4294967295 over vsock; nothing wraps")
    func portValues() {
        #expect(refusal(ConnectionOptions.self, ["-t", "tcp", "-p", "67537"]) == "--api-port must be from 1 to 65535 over TCP, not 67537")
        #expect(refusal(ConnectionOptions.self, ["-t", "tcp", "-p", "0"]) == "--api-port must be from 1 to 65535 over TCP, not 0")
        #expect(refusal(ConnectionOptions.self, ["-ttcp", "-p-1"]) == "--api-port must be from 1 to 65535 over TCP, not -1")
        #expect(refusal(ConnectionOptions.self, ["-t", "vsock", "--api-port", "4294967296"]) == "--api-port must be from 0 to 4294967295 over vsock, not 4294967296")
        #expect(refusal(ConnectionOptions.self, ["-t", "vsock", "--net-port=-1"]) == "--api-port must be from 0 to 4294967295 over vsock, not -1")
        for ok in [["-t", "tcp", "-p", "1"], ["-t", "tcp", "-p", "65535"], ["-t", "vsock", "-p", "0"], ["-t", "vsock", "-p", "4294967295"]] {
            #expect(refusal(ConnectionOptions.self, ok) == nil, "\(ok)")
        }
    }

    @Test("-s/--host: an IPv4 address or a host name over TCP")
    func hostValues() {
        #expect(refusal(ConnectionOptions.self, ["-t", "tcp", "-s", "1.2.3"]) == #"--host must be an IPv4 address or a host name, not "1.2.3""#)
        #expect(refusal(ConnectionOptions.self, ["-t", "tcp", "--host", "::1"]) == #"--host must be an IPv4 address or a host name, not "::1""#)
        for ok in ["127.0.0.1", "localhost", "10.0.0.2", "vhotplug-host.example"] {
            #expect(refusal(ConnectionOptions.self, ["-t", "tcp", "-s", ok]) == nil, "\(ok)")
        }
    }

    @Test("-s with a name is looked up, as vhotplugcli's socket.connect does (before, only an IPv4 address or localhost was taken): localhost gives 127.0.0.1; a name with no address is an error naming it, exit 1")
    func hostNames() throws {
        let local = try ConnectionOptions.parse(["-t", "tcp", "-s", "localhost"])
        #expect(try local.resolvedHost().s_addr == inet_addr("127.0.0.1"))
        // (A machine whose DNS server does not answer says so within a second: RES_OPTIONS.)
        let r = try run(["/usr/bin/env", "RES_OPTIONS=timeout:1 attempts:1", "/usr/bin/timeout", "-s", "KILL", "10", Repository.vhotplug,
                         "-t", "tcp", "-s", "no-such-host.invalid", "usb", "list"])
        #expect(r.status == 1, "\(r.stderr)")
        #expect(r.stderr.contains(#"cannot find an IPv4 address for --host "no-such-host.invalid""#), "\(r.stderr)")
    }

    @Test("a bad host or port, the global options first as vhotplugcli takes them: exit 64 and the message, no connection tried")
    func addressExit() throws {
        let host = try client(["-t", "tcp", "-s", "1.2.3", "usb", "list"])
        #expect(host.status == 64, "\(host.stderr)")
        #expect(host.stderr.contains(#"--host must be an IPv4 address or a host name, not "1.2.3""#), "\(host.stderr)")
        let port = try client(["-t", "tcp", "-p", "67537", "usb", "list"])
        #expect(port.status == 64, "\(port.stderr)")
        #expect(port.stderr.contains("--api-port must be from 1 to 65535 over TCP, not 67537"), "\(port.stderr)")
    }
}
