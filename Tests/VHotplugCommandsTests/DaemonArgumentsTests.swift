import Foundation
import Testing
import JSONKit
import VHotplugTestSupport
@testable import VHotplugCommands

/// The daemon's command line read without ArgumentParser: exactly the seed's forms;
/// anything else is left (nil) to ArgumentParser, which prints help, version or the error.
@Suite("The daemon's command line (fast path)")
struct DaemonArgumentsTests {
    @Test("every seed form of -c, -a and -d")
    func seedForms() {
        #expect(DaemonArguments(["-c", "/etc/v.conf"]) == DaemonArguments(config: "/etc/v.conf"))
        #expect(DaemonArguments(["--config", "a.conf", "-a", "-d"])
                == DaemonArguments(config: "a.conf", attachConnected: true, debug: true))
        #expect(DaemonArguments(["-a", "--config=b.conf", "--debug"])
                == DaemonArguments(config: "b.conf", attachConnected: true, debug: true))
        #expect(DaemonArguments(["--attach-connected", "-c", "x", "--no-debug"])
                == DaemonArguments(config: "x", attachConnected: true, debug: false))
        #expect(DaemonArguments(["--no-attach-connected", "-c", "x", "-d"])
                == DaemonArguments(config: "x", attachConnected: false, debug: true))
    }

    @Test("-c with its value joined, as argparse takes it: -cFILE and -c=FILE")
    func joinedConfig() throws {
        #expect(DaemonArguments(["-c/etc/v.conf"]) == DaemonArguments(config: "/etc/v.conf"))
        #expect(DaemonArguments(["-a", "-cx.conf", "-d"]) == DaemonArguments(config: "x.conf", attachConnected: true, debug: true))
        #expect(DaemonArguments(["-c=x.conf"]) == DaemonArguments(config: "x.conf"))
        // The fallback (a repeated -c, for one: the last wins, as with argparse) takes them too, and check.
        #expect(try Application.parse(["-cx.conf", "-cy.conf"]).config == "y.conf")
        #expect(try Application.parse(["-c", "x.conf", "-c=y.conf"]).config == "y.conf")
        #expect(try Check.parse(["-cx.conf"]).config == "x.conf")
    }

    @Test("long options abbreviated to a unique prefix, as argparse takes them; an ambiguous one is left to be refused")
    func abbreviations() throws {
        #expect(expandingAbbreviations(["--conf", "x", "--attach", "--deb"]) == ["--config", "x", "--attach-connected", "--debug"])
        #expect(expandingAbbreviations(["--con=x", "--no-a", "--no-d"]) == ["--config=x", "--no-attach-connected", "--no-debug"])
        #expect(expandingAbbreviations(["--no", "--vers", "--he"]) == ["--no", "--version", "--help"])
        #expect(expandingAbbreviations(["-c", "x", "--", "--conf"]) == ["-c", "x", "--", "--conf"])
        let r = try run([Repository.vhotplug, "--conf", "/nonexistent/v.conf", "--attach"])
        #expect(r.status == 2, "\(r.stderr)")
        #expect(r.stderr.contains(#"cannot open configuration file "/nonexistent/v.conf""#), "\(r.stderr)")
        let version = try run([Repository.vhotplug, "--vers"])
        #expect(version.status == 0 && version.stdout.contains(Application.version), "\(version.stderr)")
        #expect(try run([Repository.vhotplug, "--no", "-c", "x"]).status == 64)
    }

    @Test("the daemon started with -cFILE reads FILE (before: exit 64)")
    func joinedConfigRuns() throws {
        let r = try run([Repository.vhotplug, "-c/nonexistent/v.conf"])
        #expect(r.status == 2, "\(r.stderr)")
        #expect(r.stderr.contains(#"cannot open configuration file "/nonexistent/v.conf""#), "\(r.stderr)")
        let check = try run([Repository.vhotplug, "check", "-c" + Repository.root + "/data/vhotplug.conf"])
        #expect(check.status == 0, "\(check.stderr)")
    }

    @Test("the reference client's global options before the subcommand, in every form argparse takes, move after it")
    func clientOptionsFirst() {
        #expect(clientArguments(["-t", "tcp", "-p", "2001", "usb", "list", "--short"]) == ["usb", "list", "-t", "tcp", "-p", "2001", "--short"])
        #expect(clientArguments(["--transport=tcp", "-ttcp", "-d", "pci", "attach", "--address", "x"])
                == ["pci", "attach", "--transport=tcp", "-ttcp", "-d", "--address", "x"])
        #expect(clientArguments(["--debug", "-u/run/v.sock", "listen", "--json"]) == ["listen", "--debug", "-u/run/v.sock", "--json"])
        // The daemon's own command line is left alone (its -c is the configuration, -d debug).
        #expect(clientArguments(["-d", "-c", "/etc/v.conf"]) == ["-d", "-c", "/etc/v.conf"])
        #expect(clientArguments(["-c", "/etc/v.conf", "-d"]) == ["-c", "/etc/v.conf", "-d"])
    }

    @Test("help, version, unknown, repeated or incomplete options go to ArgumentParser")
    func fallbacks() {
        for args in [[], ["-h"], ["--help"], ["--version"], ["-c"], ["-c", "-a"], ["--config="],
                     ["-c", "x", "-x"], ["-c", "x", "-c", "y"], ["-a", "-a", "-c", "x"], ["-d", "--no-debug", "-c", "x"],
                     ["-ad", "-c", "x"], ["-c", "x", "extra"], ["-a", "-d"]] {
            #expect(DaemonArguments(args) == nil, "\(args)")
        }
    }
}

extension DaemonArguments {
    init(config: String, attachConnected: Bool = false, debug: Bool = false) {
        self.init(["-c", config])!
        self.attachConnected = attachConnected
        self.debug = debug
    }
}

@Suite("The log line's timestamp")
struct LogTimestampTests {
    @Test("local time, ISO 8601 with the offset, as date(1) prints it for the same second")
    func format() throws {
        let ours = StderrLogHandler.timestamp()
        #expect(ours.wholeMatch(of: /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{4}/) != nil, "\(ours)")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/date")
        p.arguments = ["+%Y-%m-%dT%H:%M:%S%z"]
        let pipe = Pipe()
        p.standardOutput = pipe
        try p.run()
        p.waitUntilExit()
        let theirs = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let again = StderrLogHandler.timestamp()
        // The same second on one side or the other of date's.
        #expect(theirs == ours || theirs == again, "ours \(ours) / \(again), date \(theirs)")
    }
}

@Suite("The client's text output")
struct ClientOutputTests {
    @Test("values as Python's str() prints them, as the reference client's lists")
    func pythonValues() throws {
        var parser = JSONParser(bytes: Array(#"{"a": null, "b": true, "c": 7, "d": "x'y", "e": ["vm1", "it's"], "f": {"k": "v"}}"#.utf8))
        let o = try parser.parseDocument()
        guard case .object(let obj) = o.value else { Issue.record("not an object"); return }
        #expect(obj.members.map { pythonText($0.value.value) } == ["None", "True", "7", "x'y", #"['vm1', "it's"]"#, "{'k': 'v'}"])
    }

    @Test("the transport by default: vsock in a VM (a guest's own vsock CID), unix on a host or with --path")
    func defaultTransport() throws {
        #expect(ConnectionOptions.defaultTransport(localCID: 3) == "vsock")
        for cid: UInt32? in [nil, 2, 1, UInt32.max] { #expect(ConnectionOptions.defaultTransport(localCID: cid) == "unix") }
        #expect(try ConnectionOptions.parse(["--path", "/run/v.sock"]).transport == "unix")
        #expect(try ConnectionOptions.parse(["-ttcp", "--path", "/run/v.sock"]).transport == "tcp")
        #expect(try ConnectionOptions.parse(["--net-port", "2001"]).port == 2001)
        #expect(try ConnectionOptions.parse(["-d"]).debug && !(try ConnectionOptions.parse(["--no-debug"]).debug))
    }

    @Test("control characters of device strings are escaped")
    func printableText() {
        #expect(printable("Mouse\u{1B}[2J\n") == #"Mouse\x1b[2J\x0a"#)
        #expect(printable("Maus ä") == "Maus ä")
    }
}
