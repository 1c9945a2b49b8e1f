// vhotplug-cpu-floor: the least a program can do for the benchmark's cycle with the
// components the design card requires, to put the daemon's CPU figure beside it.
//
// It does for each plug what vhotplug must and nothing more: libudev's monitor delivers
// the usb_device's add (libudev's own filter keeps usb_device only), libusb's context
// (its hotplug thread, as in the daemon) gives the configuration descriptor, and one QMP
// connection carries `qmp_capabilities` and vhotplug's `device_add usb-host` line, closed
// at the reply; a remove is `qmp_capabilities` + `device_del` on a new connection, closed
// when the reply and DEVICE_DELETED are in. Bus and address come from the uevent
// (BUSNUM, DEVNUM): no sysfs read, no rules, no state, no async runtime, one log line
// per action. Single-threaded, blocking only in epoll_wait.
//
// Command line as vhotplug's (`-c CONFIG`): the first VM's "socket" is used. The log
// lines are the ones the benchmark waits for. A benchmark tool, not part of vhotplug.
import CLinux
import CUdev
import CUSB
import JSONKit
#if canImport(Glibc)
import Glibc
#endif

func fail(_ message: String) -> Never {
    log("vhotplug-cpu-floor: \(message)")
    exit(1)
}

func log(_ text: String) {
    let line = text + "\n"
    _ = line.utf8CString.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count - 1) }
}

func monotonicMs() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) * 1000 + Double(ts.tv_nsec) / 1e6
}

// SIGTERM ends it (the benchmark's stop), whatever mask and dispositions it inherited.
var termination = sigset_t()
sigemptyset(&termination)
sigaddset(&termination, SIGTERM)
sigaddset(&termination, SIGINT)
sigprocmask(SIG_UNBLOCK, &termination, nil)
signal(SIGTERM, SIG_DFL)
signal(SIGINT, SIG_DFL)

// The configuration: the first VM's QMP socket.
let args = CommandLine.arguments
guard let ci = args.firstIndex(of: "-c"), ci + 1 < args.count else { fail("usage: vhotplug-cpu-floor -c CONFIG") }
func readFile(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var out: [UInt8] = [], chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { return n == 0 ? out : nil }
        out += chunk[0..<n]
    }
}
guard let text = readFile(args[ci + 1]) else { fail("cannot read \(args[ci + 1])") }
var parser = JSONParser(bytes: text)
guard let config = try? parser.parseDocument(), case .object(let top) = config.value,
      case .array(let vms)? = top.member("vms")?.value.value, let first = vms.first,
      case .object(let vm) = first.value, case .string(let qmpPath)? = vm.member("socket")?.value.value
else { fail("no vms[0].socket in \(args[ci + 1])") }

// Events: libudev's monitor from the "udev" source, whose messages libudev's own socket
// filter can judge in the kernel (it attaches none for the "kernel" source: vhotplug has
// its own filter for that). Under umockdev both sources are the same socket.
let source = "udev"
guard let udev = udev_new(), let monitor = udev_monitor_new_from_netlink(udev, source) else { fail("libudev") }
udev_monitor_filter_add_match_subsystem_devtype(monitor, "usb", "usb_device")
guard udev_monitor_enable_receiving(monitor) >= 0 else { fail("udev_monitor_enable_receiving") }
let monitorFd = udev_monitor_get_fd(monitor)

// Enrichment: libusb, kept for the life of the process (its hotplug thread runs).
var usbContext: OpaquePointer?
guard libusb_init(&usbContext) == 0, let usb = usbContext else { fail("libusb_init") }

// Two epoll sets: the monitor's, and the QMP connection's (waited on alone while an
// exchange runs: the benchmark plugs one device at a time).
let epfd = epoll_create1(Int32(EPOLL_CLOEXEC)), qmpEpfd = epoll_create1(Int32(EPOLL_CLOEXEC))
func watch(_ fd: Int32, in set: Int32) {
    var ev = epoll_event(events: EPOLLIN.rawValue, data: epoll_data_t(fd: fd))
    _ = epoll_ctl(set, EPOLL_CTL_ADD, fd, &ev)
}
watch(monitorFd, in: epfd)

/// Milliseconds with two decimals, without Foundation.
func ms2(_ v: Double) -> String {
    let c = Int((v * 100).rounded())
    return "\(c / 100).\(c % 100 < 10 ? "0" : "")\(c % 100)"
}

/// Whether `line` holds `needle` (bytes; Swift's String search costs more than the rest here).
func has(_ line: [UInt8], _ needle: StaticString) -> Bool {
    let n = UnsafeBufferPointer(start: needle.utf8Start, count: needle.utf8CodeUnitCount)
    guard line.count >= n.count else { return false }
    return line.withUnsafeBufferPointer { l in
        for i in 0...(l.count - n.count) where l[i] == n[0] && memcmp(l.baseAddress! + i, n.baseAddress!, n.count) == 0 { return true }
        return false
    }
}

/// One QMP exchange on a new connection; `done` says, given the lines so far, whether it is over.
/// The socket is non-blocking: the loop waits in epoll_wait for each piece of the answer.
func qmp(_ lines: String, done: ([[UInt8]]) -> Bool) -> [[UInt8]]? {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var addr = sockaddr_un()
    let len = vh_sockaddr_un(&addr, qmpPath)
    guard len > 0 else { return nil }
    let ok = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(len)) }
    }
    guard ok == 0 else { return nil }
    let sent = lines.utf8CString.withUnsafeBufferPointer { send(fd, $0.baseAddress, $0.count - 1, Int32(MSG_NOSIGNAL)) }
    guard sent > 0 else { return nil }
    watch(fd, in: qmpEpfd) // closing the socket takes it out of the set
    var received: [[UInt8]] = []
    var pending: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 1024)
    var ev = epoll_event()
    while true {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n > 0 {
            pending += buf[0..<n]
            while let nl = pending.firstIndex(of: 0x0A) {
                received.append(Array(pending[..<nl]))
                pending.removeSubrange(...nl)
            }
            if done(received) { return received }
            continue
        }
        if n == 0 || errno != EAGAIN { return nil }
        let r = epoll_wait(qmpEpfd, &ev, 1, 5000)
        if r == 0 { return nil } // QEMU did not answer in 5 s
        if r < 0 && errno != EINTR { return nil }
    }
}

log("vhotplug-cpu-floor: vm1 at \(qmpPath), events from \(source); listening (0 ms)")
var ev = epoll_event()
while true {
    let n = epoll_wait(epfd, &ev, 1, -1)
    if n < 0 { if errno == EINTR { continue }; fail("epoll_wait") }
    guard let dev = udev_monitor_receive_device(monitor) else { continue }
    defer { udev_device_unref(dev) }
    let t0 = monotonicMs()
    func property(_ name: String) -> String? { udev_device_get_property_value(dev, name).map { String(cString: $0) } }
    guard let action = udev_device_get_action(dev).map({ String(cString: $0) }),
          let sysName = udev_device_get_sysname(dev).map({ String(cString: $0) }),
          let bus = property("BUSNUM").flatMap({ Int($0) }), let devnum = property("DEVNUM").flatMap({ Int($0) })
    else { continue }
    let id = "vhp-usb-" + String(sysName.map { $0 == "." ? "-" : $0 })
    switch action {
    case "add":
        // libusb: queued hotplug messages handled, then the device's configuration 1.
        var zero = timeval(tv_sec: 0, tv_usec: 0)
        _ = libusb_handle_events_timeout_completed(usb, &zero, nil)
        var list: UnsafeMutablePointer<OpaquePointer?>?
        let count = libusb_get_device_list(usb, &list)
        var classes = 0
        if count > 0, let list {
            for k in 0..<count {
                guard let d = list[k], Int(libusb_get_bus_number(d)) == bus, Int(libusb_get_device_address(d)) == devnum else { continue }
                var cfg: UnsafeMutablePointer<libusb_config_descriptor>?
                if libusb_get_config_descriptor_by_value(d, 1, &cfg) == 0, let cfg {
                    classes = Int(cfg.pointee.bNumInterfaces)
                    libusb_free_config_descriptor(cfg)
                }
            }
            libusb_free_device_list(list, 1)
        }
        // QEMU's libusb learns of the device from the same uevent: "failed to find host usb
        // device" means it is behind; asked again after 5, 10, 20 ... ms (as vhotplug does).
        var reply: [[UInt8]]?
        for delay in [5, 10, 20, 40, 80, 160, 320, 640, 0] {
            reply = qmp(#"{"execute":"qmp_capabilities","id":1}"# + "\n"
                        + #"{"execute":"device_add","arguments":{"driver":"usb-host","id":"\#(id)","hostbus":\#(bus),"hostaddr":\#(devnum)},"id":2}"# + "\n") {
                $0.contains { has($0, #""id": 2"#) }
            }
            guard delay > 0, reply?.contains(where: { has($0, "failed to find host usb device") }) == true else { break }
            usleep(useconds_t(delay * 1000))
        }
        let ok = reply?.contains { has($0, #""return""#) && has($0, #""id": 2"#) } ?? false
        let answer = reply.map { $0.map { String(decoding: $0, as: UTF8.self) }.joined(separator: " ") } ?? "no answer"
        log("usb \(sysName) (\(classes) interfaces): \(ok ? "attached to vm1 as \(id)" : "attach failed: \(answer)") in \(ms2(monotonicMs() - t0)) ms")
    case "remove":
        let reply = qmp(#"{"execute":"qmp_capabilities","id":1}"# + "\n"
                        + #"{"execute":"device_del","arguments":{"id":"\#(id)"},"id":2}"# + "\n") { lines in
            // The reply, and DEVICE_DELETED for the id (the benchmark plugs one device, so its name alone).
            lines.contains { has($0, #""id": 2"#) } && lines.contains { has($0, "DEVICE_DELETED") && has($0, #""device": "vhp-usb-"#) }
        }
        log("usb \(sysName): \(reply != nil ? "detached from vm1 (\(id))" : "detach failed") in \(ms2(monotonicMs() - t0)) ms")
    default:
        continue
    }
}
