import Foundation
import Testing
import VHotplugTestSupport

/// A testbed, one or two real QEMUs, and a configuration with the control API on a
/// Unix socket in the test's folder; the daemon, the CLI and raw clients are driven by each test.
struct APIRig {
    let tb: Testbed
    let qemu: QEMUInstance
    var qemu2: QEMUInstance?
    let base: Rig
    let config: String
    var socket: String { qemu.dir + "/api.sock" }
    var statePath: String { qemu.dir + "/vhotplug.state" }

    /// `ruleSets`: the usbPassthrough array's text (default: the receiver's mouse interface to vm1).
    init(twoVMs: Bool = false, ruleSets: String? = nil, api: String = "") async throws {
        base = try await Rig()
        tb = base.tb
        qemu = base.qemu
        if twoVMs { qemu2 = try QEMUInstance(name: "vm2", testbed: tb) }
        config = qemu.dir + "/api.conf"
        self.api = api
        try write(ruleSets: ruleSets ?? #"[{"targetVm": "vm1", "tag": "mouse", "allow": [{"interfaceClass": 3, "interfaceProtocol": 2}]}]"#)
    }

    private let api: String

    /// (Re)writes the configuration with these rule sets (the usbPassthrough array's text).
    func write(ruleSets: String) throws {
        let vm2 = qemu2.map { #", {"name": "vm2", "type": "qemu", "socket": "\#($0.qmpPath)"}"# } ?? ""
        try """
            {
              "usbPassthrough": \(ruleSets),
              "vms": [{"name": "vm1", "type": "qemu", "socket": "\(qemu.qmpPath)"}\(vm2)],
              "general": {"api": {"unixSocket": "\(socket)", "unixSocketMode": "0666"\(api)}, "statePath": "\(statePath)"},
            }
            """.write(toFile: config, atomically: true, encoding: .utf8)
    }

    /// Two VMs, the receiver allowed in both (vm1 first), the daemon started, and the receiver
    /// plugged: with no client to choose, it is in vm1.
    static func allowedVMsWithReceiverInVM1() async throws -> (APIRig, QEMUInstance, DaemonProcess) {
        let rig = try await APIRig(twoVMs: true, ruleSets: #"[{"allowedVms": ["vm1", "vm2"], "allow": [{"vendorId": "046d"}]}]"#)
        let vm2 = try #require(rig.qemu2)
        let d = try rig.daemon()
        try rig.tb.add(file: fixtures + "/logitech-unifying.umockdev")
        try d.waitFor("attached to vm1 as vhp-usb-1-2")
        return (rig, vm2, d)
    }

    func daemon(_ extra: [String] = []) throws -> DaemonProcess {
        let d = try DaemonProcess(arguments: ["-c", config, "-d"] + extra, testbed: tb)
        try d.waitFor("; listening (")
        return d
    }

    /// Runs `vhotplug ARGS --path SOCKET` (the CLI).
    func cli(_ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        try run([Repository.vhotplug] + args + ["--path", socket])
    }

    /// `usb list --json`, decoded.
    func list(_ extra: [String] = []) throws -> [[String: Any]] {
        let r = try cli(["usb", "list", "--json"] + extra)
        guard r.status == 0, let items = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]] else {
            throw TestbedError(message: "usb list failed (\(r.status)): \(r.stdout) \(r.stderr)")
        }
        return items
    }
}

@Suite("The control API end to end: the daemon, real QEMUs, umockdev, the CLI and raw clients", .serialized)
struct DaemonAPITests {
    @Test("list, detach (the device leaves QEMU), replug stays detached, attach again; notifications on the way")
    func listDetachAttach() async throws {
        let rig = try await APIRig()
        let d = try rig.daemon()
        let listener = try APIClient(path: rig.socket)
        #expect(try listener.request(#"{"action": "enable_notifications"}"#)["result"] as? String == "ok")
        try rig.tb.add(file: fixtures + "/logitech-unifying.umockdev")
        // usb_connected for every USB device, as the reference: the root hubs too (no rule takes them).
        var announced: [String] = []
        while announced.last != "/dev/bus/usb/001/004" {
            let connected = try listener.waitForEvent("usb_connected")
            announced.append(try #require((connected["usb_device"] as? [String: Any])?["device_node"] as? String))
        }
        #expect(announced.contains("/dev/bus/usb/001/001"), "\(announced)")
        let attached = try listener.waitForEvent("usb_attached")
        #expect(attached["vm"] as? String == "vm1")
        #expect(try rig.qemu.attachedIds() == ["vhp-usb-1-2"])

        // The list: only devices a rule passes (no hubs), every field of the reference.
        let items = try rig.list()
        try #require(items.count == 1)
        let item = items[0]
        #expect(item["device_node"] as? String == "/dev/bus/usb/001/004")
        #expect(item["vid"] as? String == "046d" && item["pid"] as? String == "c52b")
        #expect(item["vm"] as? String == "vm1")
        #expect(item["allowed_vms"] as? [String] == ["vm1"])
        #expect(item["busnum"] as? Int == 1 && item["devnum"] as? Int == 4 && item["portnum"] as? Int == 2)
        #expect(item["sys_name"] as? String == "1-2")
        #expect((item["interfaces"] as? String)?.contains(":030102:") == true)
        for key in ["vendor_name", "product_name", "device_class", "device_subclass", "device_protocol", "serial", "tag"] {
            #expect(item.keys.contains(key), "missing \(key)")
        }
        let table = try rig.cli(["usb", "list", "--table"])
        #expect(table.status == 0 && table.stdout.contains("/dev/bus/usb/001/004  vm1"))
        // --short: the reference client's title lines only.
        let short = try rig.cli(["usb", "list", "--short"])
        #expect(short.status == 0 && short.stdout == "046d:c52b Logitech, Inc. Unifying Receiver\n", "\(short)")
        // The reference client's order: connection options before the subcommand.
        let first = try run([Repository.vhotplug, "-t", "unix", "-u", rig.socket, "usb", "list", "--short"])
        #expect(first.status == 0 && first.stdout == short.stdout)
        // Joined and `=` forms, and -d: the lines exchanged on stderr.
        let joined = try run([Repository.vhotplug, "--transport=unix", "-u" + rig.socket, "-d", "usb", "list", "--short"])
        #expect(joined.status == 0 && joined.stdout == short.stdout, "\(joined)")
        #expect(joined.stderr.contains(#"-> {"action":"usb_list""#) && joined.stderr.contains(#"<- {"result": "ok", "usb_devices": ["#), "\(joined.stderr)")
        let people = try rig.cli(["usb", "list"])
        // The reference client's form: `{key:<16}: {value}`, Python's None and lists, a blank line after.
        #expect(people.stdout.hasPrefix("046d:c52b ") && people.stdout.contains("\n  device_node     : /dev/bus/usb/001/004\n"), "\(people.stdout)")
        #expect(people.stdout.contains("\n  serial          : None\n") && people.stdout.contains("\n  allowed_vms     : ['vm1']\n"))
        #expect(people.stdout.hasSuffix("\n\n"))

        // Detach by device node: it leaves QEMU, the listener hears it, the list shows the mark.
        let detach = try rig.cli(["usb", "detach", "--devnode", "/dev/bus/usb/001/004"])
        #expect(detach.status == 0, "\(detach.stderr)")
        #expect(try rig.qemu.attachedIds() == [])
        #expect(try listener.waitForEvent("usb_detached")["vm"] as? String == "vm1")
        #expect(try rig.list(["--disconnected"]).count == 1)
        #expect(try rig.list(["--connected"]).isEmpty)
        #expect(try rig.list(["--tag", "mouse"]).count == 1)
        #expect(try rig.list(["--tag", "other"]).isEmpty)

        // Replugged: remembered as detached by the user, not attached.
        var mark = d.mark
        rig.base.unplugReceiver()
        _ = try listener.waitForEvent("usb_disconnected")
        try rig.base.replugReceiver(1)
        try d.waitFor("detached by the user earlier", from: mark)
        #expect(try rig.qemu.attachedIds() == [])

        // Attach by bus and port (the new address is 5): in QEMU again, the mark is gone.
        mark = d.mark
        let attach = try rig.cli(["usb", "attach", "--bus", "1", "--port", "2", "--vm", "vm1"])
        #expect(attach.status == 0, "\(attach.stderr)")
        #expect(try rig.qemu.attachedIds() == ["vhp-usb-1-2"])
        #expect(try rig.list(["--disconnected"]).isEmpty)
        #expect(try listener.waitForEvent("usb_attached")["vm"] as? String == "vm1")

        // Errors: a failed reply is printed on stderr, exit 1.
        let unknownVM = try rig.cli(["usb", "attach", "--vid", "046d", "--pid", "c52b", "--vm", "vm9"])
        #expect(unknownVM.status == 1)
        #expect(unknownVM.stderr.contains(#"VM "vm9" may not take usb 1-2 046d:c52b"#))
        let none = try rig.cli(["usb", "detach", "--vid", "1234", "--pid", "5678"])
        #expect(none.status == 1 && none.stderr.contains("no USB device matches vid 1234 pid 5678"))
        let noDaemon = try run([Repository.vhotplug, "usb", "list", "--path", rig.qemu.dir + "/nothing.sock"])
        #expect(noDaemon.status == 1 && noDaemon.stderr.contains("cannot connect to the vhotplug API at"))
        #expect(d.stop() == 0)
    }

    @Test("a detach or attach that changes nothing in the state does not write its file again (before, two fsyncs each time a script sent it)")
    func unchangedStateNotWritten() async throws {
        let rig = try await APIRig()
        try rig.tb.add(file: fixtures + "/logitech-unifying.umockdev")
        let d = try rig.daemon(["-a"])
        try d.waitFor("attached to vm1 as vhp-usb-1-2")
        func inode() throws -> UInt64 {
            try #require(FileManager.default.attributesOfItem(atPath: rig.statePath)[.systemFileNumber] as? UInt64)
        }
        #expect(try rig.cli(["usb", "detach", "--tag", "mouse"]).status == 0)
        let written = try inode()
        #expect(try rig.cli(["usb", "detach", "--tag", "mouse"]).status == 0)
        #expect(try inode() == written, "the state file was written again (a new file renamed over it)")
        #expect(try rig.cli(["usb", "attach", "--tag", "mouse"]).status == 0)
        let again = try inode()
        #expect(again != written, "the attach cleared the mark: written")
        // vhotplugcli sends no VM with a tag, and says nothing; this client leaves it out too, saying so
        // (before, the daemon refused the request: "vm" cannot be used with "tag").
        let both = try rig.cli(["usb", "attach", "--tag", "mouse", "--vm", "vm1"])
        #expect(both.status == 0, "\(both.stderr)")
        #expect(both.stderr.contains("--vm vm1 is not sent with --tag"), "\(both.stderr)")
        #expect(try inode() == again)
        #expect(try rig.qemu.attachedIds() == ["vhp-usb-1-2"])
        #expect(d.stop() == 0)
    }

    @Test("the detached mark survives a daemon restart (state file); attach clears it")
    func restartKeepsMark() async throws {
        let rig = try await APIRig()
        try rig.tb.add(file: fixtures + "/logitech-unifying.umockdev")
        var d = try rig.daemon(["-a"])
        try d.waitFor("attached to vm1 as vhp-usb-1-2")
        #expect(try rig.cli(["usb", "detach", "--tag", "mouse"]).status == 0)
        #expect(try rig.qemu.attachedIds() == [])
        d.stop()
        let state = try String(contentsOfFile: rig.statePath, encoding: .utf8)
        #expect(state.contains("usb:046d:c52b:"))
        #expect(!FileManager.default.fileExists(atPath: rig.socket), "the socket file is removed at exit")

        d = try rig.daemon(["-a"])
        #expect(d.log.contains { $0.contains("detached by the user earlier") })
        #expect(try rig.qemu.attachedIds() == [])
        #expect(try rig.list()[0]["disconnected"] as? Bool == true)
        #expect(try rig.cli(["usb", "attach", "--devnode", "/dev/bus/usb/001/004"]).status == 0)
        #expect(try rig.qemu.attachedIds() == ["vhp-usb-1-2"])
        d.stop()

        // A corrupt state file is moved aside with a warning; the daemon starts empty.
        try "{ not json".write(toFile: rig.statePath, atomically: true, encoding: .utf8)
        d = try rig.daemon()
        #expect(d.log.contains { $0.contains("state file \(rig.statePath): it is not a valid state file") && $0.contains(".corrupt-") })
        let aside = try FileManager.default.contentsOfDirectory(atPath: rig.qemu.dir).filter { $0.hasPrefix("vhotplug.state.corrupt-") }
        #expect(aside.count == 1)
    }

    @Test("the state file is written off the event loop: while its write is held (a slow disk), the daemon answers other requests; the detach that asked for it is answered once it is on disk",
          .timeLimit(.minutes(1)))
    func stateWriteOffLoop() async throws {
        let rig = try await APIRig()
        // Opens for writing of the state's temporary file are held while the gate exists (Tests/Doubles/slow-store.c).
        let gate = rig.qemu.dir + "/gate"
        let d = try DaemonProcess(arguments: ["-c", rig.config, "-d"], testbed: rig.tb,
                                  environment: try slowStoreEnvironment(gate: gate, suffix: "/.vhotplug.state.tmp"))
        try d.waitFor("; listening (")
        try rig.tb.add(file: fixtures + "/logitech-unifying.umockdev")
        try d.waitFor("attached to vm1 as vhp-usb-1-2")
        FileManager.default.createFile(atPath: gate, contents: nil)
        defer { try? FileManager.default.removeItem(atPath: gate) } // (a failed test does not leave the daemon held)
        let detach = Task.detached { try rig.cli(["usb", "detach", "--tag", "mouse"]) }
        try d.waitFor("slow-store: holding ")
        // The loop goes on: the device leaves vm1, and another client is answered.
        try d.waitFor("detached from vm1 (vhp-usb-1-2)")
        let listed = try rig.list()
        #expect(listed.first?["disconnected"] as? Bool == true, "\(listed)")
        try FileManager.default.removeItem(atPath: gate)
        let reply = try await detach.value
        #expect(reply.status == 0, "\(reply)")
        #expect(try String(contentsOfFile: rig.statePath, encoding: .utf8).contains("usb:046d:c52b:"))
    }

    @Test("allowedVms: no client listening -> the first VM; a listener gets usb_select_vm and chooses; the choice is kept")
    func selectVM() async throws {
        let (rig, vm2, d) = try await APIRig.allowedVMsWithReceiverInVM1()
        var mark = d.mark
        rig.base.unplugReceiver()
        try d.waitFor("detached from vm1", from: mark)

        let applet = try APIClient(path: rig.socket)
        #expect(try applet.request(#"{"action": "enable_notifications"}"#)["result"] as? String == "ok")
        try rig.base.replugReceiver(1)
        // Connected first, then the question (as the reference sends them).
        let first = try applet.readObject(timeout: 20)
        #expect(first["event"] as? String == "usb_connected", "\(first)")
        let select = try applet.readObject(timeout: 20)
        #expect(select["event"] as? String == "usb_select_vm", "\(select)")
        #expect(select["allowed_vms"] as? [String] == ["vm1", "vm2"])
        let node = try #require((select["usb_device"] as? [String: Any])?["device_node"] as? String)
        #expect(try rig.qemu.attachedIds() == [] && vm2.attachedIds() == [])
        // A second client at the same time: the CLI lists it as waiting (in no VM).
        #expect(try rig.list()[0]["vm"] is NSNull)

        let reply = try applet.request(#"{"action": "usb_attach", "device_node": "\#(node)", "vm": "vm2"}"#)
        #expect(reply["result"] as? String == "ok", "\(reply)")
        #expect(try vm2.attachedIds() == ["vhp-usb-1-2"])
        #expect(try rig.qemu.attachedIds() == [])
        #expect(try String(contentsOfFile: rig.statePath, encoding: .utf8).contains("\"vm2\""))

        // Replugged: straight to the VM chosen last, no question.
        mark = d.mark
        rig.base.unplugReceiver()
        try rig.base.replugReceiver(2)
        try d.waitFor("attached to vm2 as vhp-usb-1-2", from: mark)
        #expect(!d.log[mark...].contains { $0.contains("waiting for a client to choose") })
    }

    @Test("allowedVms: a daemon restarted without -a leaves a device in the allowed VM an earlier run put it in")
    func restartKeepsAllowedVM() async throws {
        var (rig, vm2, d) = try await APIRig.allowedVMsWithReceiverInVM1()
        #expect(try rig.cli(["usb", "attach", "--bus", "1", "--port", "2", "--vm", "vm2"]).status == 0)
        #expect(try vm2.attachedIds() == ["vhp-usb-1-2"])
        d.stop()

        // Without -a, and without the choice the state file keeps: the rules allow vm2, so it stays.
        try FileManager.default.removeItem(atPath: rig.statePath)
        d = try rig.daemon()
        try d.waitFor("found in VM vm2 as vhp-usb-1-2")
        #expect(try rig.list()[0]["vm"] as? String == "vm2")
        // A clean exit lets what the daemon started finish: whatever it did with the device is done.
        d.stop()
        #expect(!d.log.contains { $0.contains("detached from vm2") || $0.contains("\"device_del\"") }, "\(d.log)")
        #expect(try vm2.attachedIds() == ["vhp-usb-1-2"])
        #expect(try rig.qemu.attachedIds() == [])
    }

    @Test("a reload that lets a device be in vm1 or vm2 leaves it in vm2, where the rules before put it (as a restart does)")
    func reloadKeepsAllowedVM() async throws {
        let rig = try await APIRig(twoVMs: true, ruleSets: #"[{"targetVm": "vm2", "allow": [{"vendorId": "046d"}]}]"#)
        let vm2 = try #require(rig.qemu2)
        let d = try rig.daemon()
        try rig.tb.add(file: fixtures + "/logitech-unifying.umockdev")
        try d.waitFor("attached to vm2 as vhp-usb-1-2")
        try rig.write(ruleSets: #"[{"allowedVms": ["vm1", "vm2"], "allow": [{"vendorId": "046d"}]}]"#)
        let mark = d.mark
        d.signal(SIGHUP)
        try d.waitFor("configuration reloaded", from: mark)
        try d.waitFor("usb 1-2 046d:c52b \"Logitech\" \"USB Receiver\": vm1 (rule set 0, allow[0]); stays in vm2, which its rules allow too", from: mark)
        // The API's reply comes once the device is idle: nothing moved it meanwhile.
        #expect(try rig.cli(["usb", "attach", "--bus", "1", "--port", "2", "--vm", "vm2"]).status == 0)
        #expect(!d.log[mark...].contains { $0.contains("detached from vm2") || $0.contains("attached to vm1") }, "\(d.log)")
        #expect(try vm2.attachedIds() == ["vhp-usb-1-2"])
        #expect(try rig.qemu.attachedIds() == [])
    }

    @Test("a device waiting for a client's choice that a reload sends to one VM: attached there, and a client that starts listening is not asked about it")
    func reloadEndsChoice() async throws {
        let rig = try await APIRig(twoVMs: true, ruleSets: #"[{"allowedVms": ["vm1", "vm2"], "allow": [{"vendorId": "046d"}]}]"#)
        let d = try rig.daemon()
        let applet = try APIClient(path: rig.socket)
        #expect(try applet.request(#"{"action": "enable_notifications"}"#)["result"] as? String == "ok")
        try rig.tb.add(file: fixtures + "/logitech-unifying.umockdev")
        _ = try applet.waitForEvent("usb_select_vm")      // the applet does not choose
        try rig.write(ruleSets: #"[{"targetVm": "vm1", "allow": [{"vendorId": "046d"}]}]"#)
        let mark = d.mark
        d.signal(SIGHUP)
        try d.waitFor("attached to vm1 as vhp-usb-1-2", from: mark)
        // What a new listener gets comes right after the reply to enable_notifications, before the
        // reply to its next request. Before, it was asked about the device (allowed_vms ["vm1"]).
        let late = try APIClient(path: rig.socket)
        try late.send(#"{"action": "enable_notifications"}"# + "\n" + #"{"action": "usb_list"}"# + "\n")
        var lines: [[String: Any]] = []
        while lines.filter({ $0["event"] == nil }).count < 2 { lines.append(try late.readObject()) }
        #expect(!lines.contains { $0["event"] as? String == "usb_select_vm" }, "\(lines)")
    }

    @Test("a reload applies general: the API moves to another socket (the old one's connections close), the state file moves, API settings that cannot be applied leave the previous listeners, then the API turns off")
    func reloadAppliesGeneral() async throws {
        let rig = try await APIRig()
        let d = try rig.daemon()
        try rig.tb.add(file: fixtures + "/logitech-unifying.umockdev")
        try d.waitFor("attached to vm1 as vhp-usb-1-2")
        let applet = try APIClient(path: rig.socket)
        #expect(try applet.request(#"{"action": "enable_notifications"}"#)["result"] as? String == "ok")
        let moved = rig.qemu.dir + "/api2.sock", state2 = rig.qemu.dir + "/state2"
        func reload(general: String, until text: String) throws -> Int {
            try """
                {
                  "usbPassthrough": [{"targetVm": "vm1", "tag": "mouse", "allow": [{"interfaceClass": 3, "interfaceProtocol": 2}]}],
                  "vms": [{"name": "vm1", "type": "qemu", "socket": "\(rig.qemu.qmpPath)"}],
                  "general": \(general),
                }
                """.write(toFile: rig.config, atomically: true, encoding: .utf8)
            let mark = d.mark
            d.signal(SIGHUP)
            return try d.waitFor(text, from: mark)
        }
        func cli(_ path: String, _ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
            try run([Repository.vhotplug] + args + ["--path", path])
        }

        _ = try reload(general: #"{"api": {"unixSocket": "\#(moved)", "unixSocketMode": "0666"}, "statePath": "\#(state2)"}"#,
                       until: "API: listening on \(moved)")
        #expect(d.log.contains { $0.contains("state: kept in \(state2) from now on") })
        #expect(!FileManager.default.fileExists(atPath: rig.socket), "the old socket file is removed")
        #expect(try applet.readLine() == nil, "the old listener's connection is closed")
        #expect(try cli(moved, ["usb", "detach", "--tag", "mouse"]).status == 0)
        #expect(try rig.qemu.attachedIds() == [])
        #expect(try String(contentsOfFile: state2, encoding: .utf8).contains("usb:046d:c52b:"), "the mark is kept in the new state file")

        // A group that does not exist: the new listener cannot be made; the previous one is made again.
        let bad = rig.qemu.dir + "/api3.sock"
        let refused = try reload(general: #"{"api": {"unixSocket": "\#(bad)", "unixSocketGroup": "no-such-group-vhp"}, "statePath": "\#(state2)"}"#,
                                 until: "API: cannot apply the new settings (unixSocketGroup: no group named \"no-such-group-vhp\"); the previous ones stay in force")
        _ = try d.waitFor("API: listening on \(moved)", from: refused)
        #expect(!FileManager.default.fileExists(atPath: bad))
        #expect(try cli(moved, ["usb", "attach", "--tag", "mouse"]).status == 0)
        #expect(try rig.qemu.attachedIds() == ["vhp-usb-1-2"])

        _ = try reload(general: #"{"api": {"enable": false, "unixSocket": "\#(moved)"}, "persistency": false}"#, until: "API: off (general.api)")
        #expect(d.log.contains { $0.contains("state: no longer kept (general.persistency is false)") })
        #expect(!FileManager.default.fileExists(atPath: moved))
        #expect(try cli(moved, ["usb", "list"]).status != 0)
    }

    @Test("out of descriptors: the API's accept fails, said once for the whole streak, with back-off; once a descriptor is free, clients are served again")
    func acceptFailuresBackOff() async throws {
        let rig = try await APIRig()
        let d = try rig.daemon()
        let pid = d.pid
        func limitDescriptors(_ n: Int) throws {
            let r = try run(["prlimit", "--pid", "\(pid)", "--nofile=\(n):\(max(n, 4096))"])   // util-linux
            try #require(r.status == 0, "prlimit: \(r.stderr)")
        }
        // Fewer than it has open: no descriptor more for anything (those open stay).
        try limitDescriptors(4)
        let mark = d.mark
        let client = try APIClient(path: rig.socket)     // waits in the backlog: each accept fails
        try d.waitFor("API: accept", from: mark)
        // The condition lasts a while: three more tries fail, 0.1, 0.2 and 0.4 s apart (before the
        // back-off, an error line every 0.1 s), said at debug level only.
        try d.waitFor("API: accept failed again (4 in a row); trying again in 0.8 s", from: mark)
        try limitDescriptors(4096)
        let again = try d.waitFor("API: accepting connections again after ", from: mark)
        #expect(d.log[again].hasSuffix("after 4 failed tries") || d.log[again].hasSuffix("after 5 failed tries"), "\(d.log[again])")
        #expect(try client.request(#"{"action": "usb_list"}"#)["result"] as? String == "ok")
        let failures = d.log[mark...].filter { $0.contains("error vhotplug") && $0.contains("API: ") }
        #expect(failures.count == 1, "\(failures)")
        #expect(failures.first?.contains("trying again in 0.1 s, then less often") == true, "\(failures)")
    }

    @Test("a move to vm2 asked while vm1 has not answered the attach (QEMU stopped): the reply says vm1 did not answer; once vm1 runs again, the device is in vm2 only")
    func moveWhileAttachUnanswered() async throws {
        let rig = try await APIRig(twoVMs: true, ruleSets: #"[{"allowedVms": ["vm1", "vm2"], "allow": [{"vendorId": "046d"}]}]"#)
        let vm2 = try #require(rig.qemu2)
        // Connected before QEMU's libusb starts (at its first usb-host): QEMU finds it when it runs.
        try rig.tb.add(file: fixtures + "/logitech-unifying.umockdev")
        try rig.qemu.pause()
        defer { kill(rig.qemu.pid, SIGCONT) }
        let d = try DaemonProcess(arguments: ["-c", rig.config, "-d", "-a"], testbed: rig.tb, environment: ["VHOTPLUG_QMP_TIMEOUT": "0.5"])
        let name = "usb 1-2 046d:c52b \"Logitech\" \"USB Receiver\""
        try d.waitFor("\(name): attach to vm1: VM vm1: no answer to device_add usb-host 1-2 in time; taken as attached, asking vm1 again in 0.5 s")
        // The user moves it to vm2 meanwhile: it must leave vm1 first, which does not answer.
        let mark = d.mark
        let move = Task.detached { try rig.cli(["usb", "attach", "--bus", "1", "--port", "2", "--vm", "vm2"]) }
        try d.waitFor("\(name): detach from vm1 failed: VM vm1: no answer to ", from: mark)
        let reply = try await move.value
        #expect(reply.status == 1 && reply.stderr.contains("to vm2 failed: VM vm1: no answer to "), "\(reply)")
        #expect(reply.stderr.contains("; vm1 has not said whether it has the device: vhotplug asks it again and carries out the request then"), "\(reply)")
        #expect(try vm2.attachedIds() == [])
        // vm1 runs again: whether QEMU ran the device_add it had queued or dropped it with its
        // closed connection, the device ends in vm2, and in vm2 only.
        kill(rig.qemu.pid, SIGCONT)
        try d.waitFor("\(name): attached to vm2 as vhp-usb-1-2", from: mark, timeout: 30)
        #expect(try vm2.attachedIds() == ["vhp-usb-1-2"])
        #expect(try rig.qemu.attachedIds() == [])
        #expect(!d.log[mark...].contains { $0.contains("attached to vm1") })
    }

    @Test("allowedVms: a client that starts listening later is asked too; when the last listener leaves, the device goes to the first VM")
    func selectVMLateListenerAndNobodyLeft() async throws {
        let rig = try await APIRig(twoVMs: true, ruleSets: #"[{"allowedVms": ["vm1", "vm2"], "allow": [{"vendorId": "046d"}]}]"#)
        let vm2 = try #require(rig.qemu2)
        let d = try rig.daemon()
        let first = try APIClient(path: rig.socket)
        #expect(try first.request(#"{"action": "enable_notifications"}"#)["result"] as? String == "ok")
        try rig.tb.add(file: fixtures + "/logitech-unifying.umockdev")
        _ = try first.waitForEvent("usb_select_vm")
        try d.waitFor("waiting for a client to choose")

        // A second applet, started after the question went out, gets it when it subscribes.
        let late = try APIClient(path: rig.socket)
        #expect(try late.request(#"{"action": "enable_notifications"}"#)["result"] as? String == "ok")
        let asked = try late.waitForEvent("usb_select_vm")
        #expect(asked["allowed_vms"] as? [String] == ["vm1", "vm2"])
        #expect(try rig.qemu.attachedIds() == [] && vm2.attachedIds() == [])

        // Both leave without choosing: nobody can choose any more, so the first allowed VM takes it.
        let mark = d.mark
        first.shutdown()
        late.shutdown()
        try d.waitFor("no client left to choose its VM; it goes to vm1", from: mark)
        try d.waitFor("attached to vm1 as vhp-usb-1-2", from: mark)
        #expect(try rig.qemu.attachedIds() == ["vhp-usb-1-2"])
        #expect(try vm2.attachedIds() == [])
    }

    @Test("TCP as well as the Unix socket: the CLI reaches the daemon with -t tcp, in both option orders; the daemon warns that TCP has no credentials")
    func tcpTransport() async throws {
        // A free port: bound by us, then let go for the daemon.
        let probe = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(probe, $0, len) } }
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(probe, $0, &len) } }
        let port = Int(UInt16(bigEndian: addr.sin_port))
        close(probe)
        try #require(port > 0)

        let rig = try await APIRig(api: #", "transports": ["unix", "tcp"], "host": "127.0.0.1", "port": \#(port)"#)
        let d = try rig.daemon()
        try d.waitFor("API: listening on TCP 127.0.0.1:\(port); TCP has no peer credentials")
        try rig.tb.add(file: fixtures + "/logitech-unifying.umockdev")
        try d.waitFor("attached to vm1 as vhp-usb-1-2")
        for args in [["usb", "list", "--json", "-t", "tcp", "-s", "127.0.0.1", "--api-port", "\(port)"],
                     ["-t", "tcp", "-s", "127.0.0.1", "--api-port", "\(port)", "usb", "list", "--json"]] {
            let r = try run([Repository.vhotplug] + args)
            #expect(r.status == 0, "\(args): \(r.stderr)")
            let items = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]]
            #expect(items?.count == 1 && items?.first?["vm"] as? String == "vm1", "\(r.stdout)")
        }
        // Nothing listens on the next port: a clear error, exit 1.
        let none = try run([Repository.vhotplug, "usb", "list", "-t", "tcp", "-s", "127.0.0.1", "--api-port", "\(port == 65535 ? port - 1 : port + 1)"])
        #expect(none.status == 1)
        #expect(none.stderr.contains("127.0.0.1"), "\(none.stderr)")
    }

    @Test("usb suspend detaches all but skipOnSuspend devices; resume gives them back")
    func suspendResume() async throws {
        let rig = try await APIRig(ruleSets: """
            [{"targetVm": "vm1", "allow": [{"port": 2}]}, {"targetVm": "vm1", "skipOnSuspend": true, "allow": [{"port": 3}]}]
            """)
        let d = try rig.daemon()
        try rig.tb.add(file: fixtures + "/logitech-unifying.umockdev")
        try rig.base.replugReceiver(1, port: 3)
        try d.waitFor("attached to vm1 as vhp-usb-1-2")
        try d.waitFor("attached to vm1 as vhp-usb-1-3")
        let suspend = try rig.cli(["usb", "suspend"])
        #expect(suspend.status == 0, "\(suspend.stderr)")
        #expect(try rig.qemu.attachedIds() == ["vhp-usb-1-3"])
        let resume = try rig.cli(["usb", "resume", "--vm", "vm1"])
        #expect(resume.status == 0, "\(resume.stderr)")
        #expect(try rig.qemu.attachedIds().sorted() == ["vhp-usb-1-2", "vhp-usb-1-3"])
        #expect(try rig.cli(["usb", "suspend", "--vm", "nope"]).stderr.contains(#"no VM named "nope""#))

        // Suspended, then unplugged: a device plugged at that port later is decided by its rules
        // on arrival, and a resume has nothing of the one that left.
        #expect(try rig.cli(["usb", "suspend"]).status == 0)
        let mark = d.mark
        rig.base.unplugReceiver()
        try d.waitFor("usb 1-2 046d:c52b \"Logitech\" \"USB Receiver\": unplugged", from: mark)
        try rig.base.replugReceiver(2)
        try d.waitFor("attached to vm1 as vhp-usb-1-2", from: mark)
        #expect(try rig.cli(["usb", "resume"]).status == 0)
        try d.waitFor("API: resume USB: attaching 0 devices", from: mark)
    }

    @Test("usb suspend while a device's attach is still running (QEMU stopped): the device does not end in the VM; resume gives it back")
    func suspendDuringAttach() async throws {
        let rig = try await APIRig()
        // A QMP exchange waits as long as QEMU is stopped (no deadline during the test).
        let d = try DaemonProcess(arguments: ["-c", rig.config, "-d"], testbed: rig.tb, environment: ["VHOTPLUG_QMP_TIMEOUT": "600"])
        try d.waitFor("; listening (")
        try rig.qemu.pause()
        defer { kill(rig.qemu.pid, SIGCONT) }
        let mark = d.mark
        try rig.tb.add(file: fixtures + "/logitech-unifying.umockdev")
        try d.waitFor("qmp vm1 -> ", from: mark)
        let suspend = Task.detached { try rig.cli(["usb", "suspend"]) }
        try d.waitFor("API: suspend USB: detaching", from: mark)
        kill(rig.qemu.pid, SIGCONT)
        let reply = try await suspend.value
        #expect(reply.status == 0, "\(reply)")
        try d.waitFor("attached to vm1 as vhp-usb-1-2", from: mark)
        #expect(try rig.qemu.attachedIds() == [])
        let resume = try rig.cli(["usb", "resume"])
        #expect(resume.status == 0, "\(resume)")
        #expect(try rig.qemu.attachedIds() == ["vhp-usb-1-2"])
    }

    @Test("what usb suspend took survives a daemon restart (state file): -a leaves it on the host, resume gives it back; one unplugged while vhotplug was down is decided afresh")
    func restartKeepsSuspend() async throws {
        let rig = try await APIRig()
        func stateFile() throws -> String { try String(contentsOfFile: rig.statePath, encoding: .utf8) }
        try rig.tb.add(file: fixtures + "/logitech-unifying.umockdev")
        var d = try rig.daemon(["-a"])
        try d.waitFor("attached to vm1 as vhp-usb-1-2")
        #expect(try rig.cli(["usb", "suspend"]).status == 0)
        #expect(try rig.qemu.attachedIds() == [])
        d.stop()
        #expect(try stateFile().contains(#""suspended": {"#))

        d = try rig.daemon(["-a"])
        try d.waitFor("usb 1-2 046d:c52b \"Logitech\" \"USB Receiver\": suspended (for vm1); stays on the host until resumed")
        #expect(try rig.qemu.attachedIds() == [])
        #expect(try rig.cli(["usb", "resume"]).status == 0)
        #expect(try rig.qemu.attachedIds() == ["vhp-usb-1-2"])
        #expect(try !stateFile().contains(#""suspended""#))

        // Suspended again, and unplugged while vhotplug is down: its mark goes, and plugged again it is attached.
        #expect(try rig.cli(["usb", "suspend"]).status == 0)
        d.stop()
        rig.tb.unplug(receiverPath)
        d = try rig.daemon(["-a"])
        try d.waitFor("1 devices suspended before vhotplug restarted are no longer connected: decided afresh when plugged")
        let mark = d.mark
        try rig.tb.add(record: receiverRecords(1))
        try d.waitFor("attached to vm1 as vhp-usb-1-2", from: mark)
        d.stop()
        #expect(try !stateFile().contains(#""suspended""#))
    }

    @Test("a reload that changes a suspended device's rules does not attach it before the resume")
    func reloadWhileSuspended() async throws {
        let rig = try await APIRig()
        let d = try rig.daemon()
        try rig.tb.add(file: fixtures + "/logitech-unifying.umockdev")
        try d.waitFor("attached to vm1 as vhp-usb-1-2")
        #expect(try rig.cli(["usb", "suspend"]).status == 0)
        #expect(try rig.qemu.attachedIds() == [])
        try rig.write(ruleSets: #"[{"targetVm": "vm1", "tag": "receiver", "allow": [{"vendorId": "046d"}]}]"#)
        let mark = d.mark
        d.signal(SIGHUP)
        try d.waitFor("usb 1-2 046d:c52b \"Logitech\" \"USB Receiver\": suspended; stays on the host until resumed", from: mark)
        try d.waitForIdle(from: try d.waitFor("configuration reloaded", from: mark))
        #expect(!d.log[mark...].contains { $0.contains("attached to vm1") }, "\(d.log)")
        #expect(try rig.qemu.attachedIds() == [])
        #expect(try rig.cli(["usb", "resume"]).status == 0)
        #expect(try rig.qemu.attachedIds() == ["vhp-usb-1-2"])
    }

    @Test("malformed, unknown, oversized requests and a client that never reads do not affect the daemon; strangers are refused")
    func robustness() async throws {
        let rig = try await APIRig()
        let d = try rig.daemon()
        try rig.tb.add(file: fixtures + "/logitech-unifying.umockdev")
        try d.waitFor("attached to vm1 as vhp-usb-1-2")
        let c = try APIClient(path: rig.socket)
        let bad = try c.request("{\"action\": ")
        #expect(bad["result"] as? String == "failed")
        #expect((bad["error"] as? String)?.hasPrefix("malformed JSON") == true)
        #expect((try c.request(#"{"action": "usb_teleport"}"#)["error"] as? String)?.hasPrefix(#"unknown action "usb_teleport""#) == true)
        #expect((try c.request(#"{"device_node": "/dev/bus/usb/001/004"}"#)["error"] as? String)?.hasPrefix(#"missing "action""#) == true)

        let big = try APIClient(path: rig.socket)
        try? big.send(String(repeating: "a", count: 70_000)) // the server may close before taking it all
        #expect((try big.readObject()["error"] as? String)?.hasPrefix("request line longer than 65536 bytes") == true)
        #expect(try big.readLine() == nil)

        // Thousands of requests, no reply read: the server drops it once its output bound is passed.
        let mark = d.mark
        let greedy = try APIClient(path: rig.socket)
        try? greedy.send(String(repeating: #"{"action": "usb_list"}"# + "\n", count: 8000)) // may be cut off by the drop
        try d.waitFor("(it does not read)", from: mark)

        // A stranger (uid nobody) is refused by its peer credentials, with the reason logged.
        let setpriv = try requireProgram("setpriv", package: "util-linux")
        let stranger = try run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", Repository.vhotplug,
                                "usb", "list", "--path", rig.socket])
        #expect(stranger.status == 1)
        #expect(stranger.stderr.contains("permission denied: uid 65534 is not root"), "\(stranger.stderr)")
        try d.waitFor("refused connection from pid", from: mark)

        // Through all of it the daemon kept serving.
        #expect(try c.request(#"{"action": "usb_list"}"#)["result"] as? String == "ok")
        #expect(try rig.list().count == 1)
        #expect(d.process.isRunning)
    }

    @Test("vhotplug listen prints notifications and reconnects after a daemon restart")
    func listen() async throws {
        let rig = try await APIRig()
        var d = try rig.daemon()
        let listener = try DaemonProcess(arguments: ["listen", "--json", "--retry", "0.1", "--path", rig.socket])
        try listener.waitFor("listening to \(rig.socket)")
        try rig.tb.add(file: fixtures + "/logitech-unifying.umockdev")
        try listener.waitFor(#""event": "usb_attached""#)
        let mark = listener.mark
        d.stop()
        try listener.waitFor("closed the connection; reconnecting", from: mark)
        d = try rig.daemon()
        try listener.waitFor("listening to \(rig.socket)", from: mark)
        let people = try DaemonProcess(arguments: ["listen", "--path", rig.socket])
        try people.waitFor("listening to")
        #expect(try rig.cli(["usb", "detach", "--devnode", "/dev/bus/usb/001/004"]).status == 0)
        try listener.waitFor(#""event": "usb_detached""#, from: mark)
        try people.waitFor("usb_detached vm1: 046d:c52b")
        listener.stop()
        people.stop()
    }
}

@Suite("The control API with PCI devices (umockdev: listing only, no vfio-pci here)", .serialized)
struct DaemonAPIPCITests {
    @Test("pci list: the GPU a rule passes, its audio function as iommu_member; pciIommuSkipIfShared leaves both out")
    func pciList() async throws {
        let tb = await Testbed.make()
        let qemu = try qemuWithPorts(tb)
        let socket = qemu.dir + "/api.sock"
        func config(_ extra: String) throws -> String {
            let path = qemu.dir + "/pci.conf"
            try """
                {"pciPassthrough": [{"targetVm": "vm1", "tag": "gpu", \(extra) "allow": [{"vendorId": "10de", "deviceId": "1f06"}]}],
                 "vms": [{"name": "vm1", "type": "qemu", "socket": "\(qemu.qmpPath)"}],
                 "general": {"api": {"unixSocket": "\(socket)"}, "persistency": false}}
                """.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }
        try tb.add(file: fixtures + "/pci-gpu-audio.umockdev")
        var d = try DaemonProcess(arguments: ["-c", try config("")], testbed: tb)
        try d.waitFor("; listening (")
        let r = try run([Repository.vhotplug, "pci", "list", "--json", "--path", socket])
        #expect(r.status == 0, "\(r.stderr)")
        let items = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]])
        #expect(items.map { $0["address"] as? String } == ["0000:01:00.0", "0000:01:00.1"])
        #expect(items[0]["vendor_id"] as? Int == 0x10de && items[0]["did"] as? String == "1F06" && items[0]["pci_class"] as? Int == 3)
        #expect(items[0]["tag"] as? String == "gpu" && items[0]["allowed_vms"] as? [String] == ["vm1"])
        // Names from pci.ids (libpci), as the reference's udev names; log lines keep the IDs.
        #expect(items[0]["vendor_name"] as? String == "NVIDIA Corporation" && items[0]["device_name"] as? String == "TU106 [GeForce RTX 2060 SUPER]",
                "\(items[0])")
        #expect(items[1]["vendor_name"] as? String == "NVIDIA Corporation")
        #expect(items[0]["iommu_member"] == nil)
        #expect(items[1]["iommu_member"] as? Bool == true && items[1]["driver"] as? String == "snd_hda_intel")
        #expect(try run([Repository.vhotplug, "pci", "list", "--table", "--path", socket]).stdout.contains("0000:01:00.0  -   vm1"))
        // Another tag: neither the GPU nor its group's members.
        #expect(try run([Repository.vhotplug, "pci", "list", "--json", "--tag", "wifi", "--path", socket]).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines) == "[]")
        d.stop()

        d = try DaemonProcess(arguments: ["-c", try config(#""pciIommuSkipIfShared": true,"#), "-a"], testbed: tb)
        try d.waitFor("; listening (")
        #expect(d.log.contains { $0.contains("pci 0000:01:00.0 10de:1f06: none: its IOMMU group is shared and rule set 0 says pciIommuSkipIfShared") })
        #expect(try run([Repository.vhotplug, "pci", "list", "--json", "--path", socket]).stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "[]")
    }
}

@Suite("evdev rule sets in the daemon (umockdev, a real QEMU)", .serialized)
struct DaemonEvdevRuleSetTests {
    @Test("evdevPassthrough as rule sets: a keyboard by kind goes to its set's VM on a root port with the set's prefix")
    func evdevRuleSets() async throws {
        let tb = await Testbed.make()
        let qemu = try qemuWithPorts(tb)
        let config = qemu.dir + "/vhotplug.conf"
        try """
            {"evdevPassthrough": [{"targetVm": "vm1", "pcieBusPrefix": "ep", "allow": [{"kind": "keyboard"}], "deny": [{"name": "^Power Button$"}]}],
             "vms": [{"name": "vm1", "type": "qemu", "socket": "\(qemu.qmpPath)"}]}
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let d = try DaemonProcess(arguments: ["-c", config, "-d"], testbed: tb)
        try d.waitFor("; listening (")
        try tb.add(file: fixtures + "/ps2-keyboard.umockdev")
        try d.waitFor("input event0 \"AT Translated Set 2 keyboard\": vm1 (rule set 0, allow[0])")
        try d.waitFor(#""driver":"virtio-input-host-pci","evdev":"/dev/input/event0","id":"vhp-evdev-input0-event0","bus":"ep1""#)
    }
}
