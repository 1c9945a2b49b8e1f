import CUdev
#if canImport(Glibc)
import Glibc
#endif

/// The classic BPF program vhotplug attaches to its uevent socket, so the kernel drops
/// messages the daemon never acts on before they wake it.
///
/// It reads udevd's format (libudev's header: the subsystem and devtype hashes at fixed
/// offsets), which is what the `udev` source receives, and what umockdev sends on every
/// socket. It drops other subsystems (as libudev's own filter, which it replaces, does) and,
/// while no device waits for its interfaces, `usb_interface` messages (a USB mouse's plug
/// is 17 uevents, 3 of them its interfaces'; the daemon acts on one).
///
/// Everything else is accepted and left to the userspace peek and libudev, as before: the
/// kernel's own format (the `kernel` source, a host without udevd; its SUBSYSTEM sits after
/// the devpath and classic BPF has no loops: a scan unrolled over the devpath is thousands of
/// instructions, over the 20 KiB of option memory a socket gets on Linux 6.1), a wrong magic,
/// a message shorter than the header. A filter only ever spares work; it never decides alone
/// what is wanted (the peek would drop whatever this drops: tested).
public enum UeventFilter {
    /// The program for these subsystems; `usbInterfaces` false also drops `usb_interface`.
    public static func program(subsystems: [String], usbInterfaces: Bool) -> [sock_filter] {
        var a = BPFAssembler()
        let accept = a.label(), drop = a.label()
        // Shorter than libudev's header (40 bytes): no load below may run past the end
        // (classic BPF drops a message on an out-of-bounds load).
        let long = a.label()
        a.loadLength()
        a.jumpIfAtLeast(40, then: long, else: accept)
        a.place(long)
        // "libudev\0", then its magic.
        let prefix2 = a.label(), magic = a.label(), hashes = a.label()
        a.load(.word, at: 0)
        a.jumpIfEqual(word("libu"), then: prefix2, else: accept)
        a.place(prefix2)
        a.load(.word, at: 4)
        a.jumpIfEqual(word("dev\0"), then: magic, else: accept)
        a.place(magic)
        a.load(.word, at: 8)
        a.jumpIfEqual(0xfeed_cafe, then: hashes, else: accept)
        a.place(hashes)
        // The subsystem's hash, then for usb the devtype's.
        a.load(.word, at: 24)
        for s in subsystems where s != "usb" {
            let next = a.label()
            a.jumpIfEqual(murmur2(s), then: accept, else: next)
            a.place(next)
        }
        if subsystems.contains("usb") {
            let usb = a.label()
            a.jumpIfEqual(murmur2("usb"), then: usb, else: drop)
            a.place(usb)
            if !usbInterfaces {
                a.load(.word, at: 28)
                a.jumpIfEqual(murmur2("usb_interface"), then: drop, else: accept)
            }
            a.jumpAlways(accept)
        }
        a.place(drop)
        a.returnValue(0)
        a.place(accept)
        a.returnValue(UInt32.max)
        return a.assemble()
    }

    /// Attaches the program to a socket: 0, or the errno of `setsockopt`.
    public static func attach(_ program: [sock_filter], to fd: Int32) -> Int32 {
        program.withUnsafeBufferPointer { insns in
            var prog = sock_fprog(len: UInt16(insns.count), filter: UnsafeMutablePointer(mutating: insns.baseAddress))
            return setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, socklen_t(MemoryLayout<sock_fprog>.size)) == 0 ? 0 : errno
        }
    }

    /// Four ASCII bytes as classic BPF loads them (network order).
    static func word(_ s: StaticString) -> UInt32 {
        s.withUTF8Buffer { b in b.reduce(0) { $0 << 8 | UInt32($1) } }
    }

    /// MurmurHash2 (32 bit, seeded with the length): how udevd hashes a subsystem or devtype
    /// into its header, for socket filters.
    public static func murmur2<S: StringProtocol>(_ s: S) -> UInt32 {
        let bytes = Array(s.utf8)
        let m: UInt32 = 0x5bd1_e995
        var h = UInt32(truncatingIfNeeded: bytes.count)
        var i = 0
        while bytes.count - i >= 4 {
            var k = UInt32(bytes[i]) | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2]) << 16 | UInt32(bytes[i + 3]) << 24
            k = k &* m
            k ^= k >> 24
            k = k &* m
            h = h &* m
            h ^= k
            i += 4
        }
        let rest = bytes.count - i
        if rest == 3 { h ^= UInt32(bytes[i + 2]) << 16 }
        if rest >= 2 { h ^= UInt32(bytes[i + 1]) << 8 }
        if rest >= 1 {
            h ^= UInt32(bytes[i])
            h = h &* m
        }
        h ^= h >> 13
        h = h &* m
        h ^= h >> 15
        return h
    }
}

/// A classic BPF program with forward jumps to labels, resolved at the end.
struct BPFAssembler {
    enum Size {
        case word, half, byte
        var code: UInt16 { switch self { case .word: 0x00; case .half: 0x08; case .byte: 0x10 } }
        var bytes: Int { switch self { case .word: 4; case .half: 2; case .byte: 1 } }
    }

    private struct Insn {
        var code: UInt16
        var k: UInt32
        var jt: Int? = nil
        var jf: Int? = nil
        /// `ja`: k is this label's distance.
        var target: Int? = nil
    }

    private var insns: [Insn] = []
    private var places: [Int?] = []

    mutating func label() -> Int {
        places.append(nil)
        return places.count - 1
    }

    mutating func place(_ l: Int) { places[l] = insns.count }

    // Classes, modes and operations of linux/filter.h (bpf_common.h).
    private static let ld: UInt16 = 0x00, jmp: UInt16 = 0x05, ret: UInt16 = 0x06
    private static let abs: UInt16 = 0x20, len: UInt16 = 0x80
    private static let jeq: UInt16 = 0x10, jge: UInt16 = 0x30

    /// A = packet[at] (big-endian).
    mutating func load(_ size: Size, at k: UInt32) { insns.append(Insn(code: Self.ld | size.code | Self.abs, k: k)) }
    /// A = the packet's length.
    mutating func loadLength() { insns.append(Insn(code: Self.ld | Self.len, k: 0)) }
    mutating func jumpIfEqual(_ k: UInt32, then t: Int, else f: Int) {
        insns.append(Insn(code: Self.jmp | Self.jeq, k: k, jt: t, jf: f))
    }
    /// A >= k.
    mutating func jumpIfAtLeast(_ k: UInt32, then t: Int, else f: Int) {
        insns.append(Insn(code: Self.jmp | Self.jge, k: k, jt: t, jf: f))
    }
    mutating func jumpAlways(_ l: Int) { insns.append(Insn(code: Self.jmp, k: 0, target: l)) }
    mutating func returnValue(_ k: UInt32) { insns.append(Insn(code: Self.ret, k: k)) }

    /// The instructions; a jump backwards, a conditional one past 255 instructions or an
    /// unplaced label is a mistake in the program's construction (trapped: tests build every shape).
    func assemble() -> [sock_filter] {
        insns.enumerated().map { i, insn in
            func distance(_ l: Int) -> Int {
                guard let at = places[l] else { preconditionFailure("BPF label \(l) not placed") }
                let d = at - (i + 1)
                precondition(d >= 0, "BPF jump backwards at \(i)")
                return d
            }
            var k = insn.k
            if let t = insn.target { k = UInt32(distance(t)) }
            let jt = insn.jt.map(distance) ?? 0
            let jf = insn.jf.map(distance) ?? 0
            precondition(jt <= 255 && jf <= 255, "BPF conditional jump too far at \(i)")
            return sock_filter(code: insn.code, jt: UInt8(jt), jf: UInt8(jf), k: k)
        }
    }
}
