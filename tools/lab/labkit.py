"""The real-kernel lab: a Debian kernel booted under QEMU (TCG) with real USB,
PCI hot-plug, vfio-pci and evdev, running the host's own root read-only over
9p, with inner QEMU VMs standing for the VMs vhotplug passes devices to.

Standard library only; runs with Debian's /usr/bin/python3 (3.11) and newer.

    from labkit import Lab
    with Lab() as lab:                       # boots, waits until ready
        rc, out, err = lab.run("lsusb")
        dev = lab.plug("usb-mouse", "m1")    # outer QMP device_add, waits for the guest
        lab.inner_qmp("vm1", "query-status")
        lab.unplug("m1")

See README.md beside this file.
"""

import atexit
import contextlib
import ctypes
import glob
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import threading
import time
import weakref
import zlib

LAB_DIR = os.path.dirname(os.path.abspath(__file__))
GUEST_DIR = os.path.join(LAB_DIR, "guest")


def _find_repo_root():
    d = LAB_DIR
    while True:
        if os.path.exists(os.path.join(d, "Package.swift")):
            return d
        parent = os.path.dirname(d)
        if parent == d:
            # tools/lab -> repository root, even without Package.swift
            return os.path.dirname(os.path.dirname(LAB_DIR))
        d = parent


REPO_ROOT = _find_repo_root()
CACHE_DIR = os.environ.get("VHOTPLUG_LAB_CACHE") or os.path.join(REPO_ROOT, ".cache", "lab")
LAB_CONF = os.path.join(LAB_DIR, "lab.conf")
GUEST_RUN = "/run/vhotplug-lab"          # in the guest (tmpfs)
SWIFT_RUNTIME = "/opt/swift/usr/lib/swift/linux"

# Modules loaded in the guest, in this order (their dependencies first).
# "name options" ; the dependency closure is computed from each .ko's modinfo.
GUEST_MODULES = [
    "virtio_pci", "virtio_console", "9pnet_virtio", "9p", "overlay",
    "usbcore", "xhci-hcd", "xhci-pci", "usb-storage delay_use=0", "sd_mod",
    "hid", "usbhid", "hid-generic", "evdev", "uinput",
    "vfio", "vfio_iommu_type1 allow_unsafe_interrupts=1", "vfio-pci-core", "vfio-pci",
    "e1000e", "virtio_input",
]

# Outer guest kernel command line (the lab adds its own lab.* keys).
KERNEL_CMDLINE = "console=ttyS0 panic=-1 intel_iommu=on i8042.nokbd i8042.noaux quiet loglevel=4"

OUTER_ROOT_PORTS = ["rp1", "rp2", "rp3", "rp4"]
USB_PORTS = [str(i) for i in range(1, 9)]   # qemu-xhci p2=8,p3=8: QEMU ports "1".."8"

# What each plug kind is in QEMU, and how the guest sees it.
USB_KINDS = {
    "usb-mouse": {"driver": "usb-mouse"},
    "usb-kbd": {"driver": "usb-kbd"},
    "usb-tablet": {"driver": "usb-tablet"},
    "usb-storage": {"driver": "usb-storage"},
    "usb-hub": {"driver": "usb-hub"},
}
PCI_KINDS = {
    "e1000e": {"driver": "e1000e"},
    "virtio-keyboard-pci": {"driver": "virtio-keyboard-pci"},
    "virtio-mouse-pci": {"driver": "virtio-mouse-pci"},
    "virtio-tablet-pci": {"driver": "virtio-tablet-pci"},
}


# ----------------------------------------------------------------------------
# Errors


class LabError(Exception):
    """A lab step failed. `step` names it; `console` is the guest console tail."""

    def __init__(self, message, step=None, console=None):
        self.step = step
        self.console = console
        text = message
        if step:
            text = "[step: %s] %s" % (step, message)
        if console:
            text += "\n----- guest console (last lines) -----\n" + console + "\n-----"
        super().__init__(text)


class LabTimeout(LabError):
    pass


class MissingDependency(LabError):
    pass


class QMPError(Exception):
    def __init__(self, cls, desc, command=None):
        self.cls = cls
        self.desc = desc
        self.command = command
        super().__init__("%s: %s%s" % (cls, desc, (" (%s)" % command) if command else ""))


def log_default(msg):
    print(msg, flush=True)


# ----------------------------------------------------------------------------
# Host tools


def which_or_fail(prog, package):
    path = shutil.which(prog)
    if not path:
        raise MissingDependency("%s not found: install it with `apt-get install %s` (or `make deps`)"
                                % (prog, package))
    return path


def qemu_binary():
    return which_or_fail("qemu-system-x86_64", "qemu-system-x86")


def find_vhotplug(required=True):
    """The host's debug build of vhotplug (visible in the guest at the same path)."""
    env = os.environ.get("VHOTPLUG_BIN")
    if env:
        if os.access(env, os.X_OK):
            return os.path.abspath(env)
        if required:
            raise MissingDependency("VHOTPLUG_BIN=%s is not an executable" % env)
        return None
    for cand in (os.path.join(REPO_ROOT, ".build", "debug", "vhotplug"),
                 os.path.join(REPO_ROOT, ".build", "x86_64-unknown-linux-gnu", "debug", "vhotplug")):
        if os.access(cand, os.X_OK):
            return os.path.realpath(cand)
    swift = shutil.which("swift")
    if swift and os.path.isdir(os.path.join(REPO_ROOT, ".build")):   # nothing built: no binary to find
        try:
            out = subprocess.run([swift, "build", "--show-bin-path"], cwd=REPO_ROOT, timeout=120,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout.strip()
            cand = os.path.join(out.splitlines()[-1], "vhotplug") if out else ""
            if cand and os.access(cand, os.X_OK):
                return os.path.realpath(cand)
        except (subprocess.SubprocessError, OSError, IndexError):
            pass
    if required:
        raise MissingDependency("vhotplug binary not found: run swift build (in %s)" % REPO_ROOT)
    return None


# ----------------------------------------------------------------------------
# Kernel modules: dependencies from each module's .modinfo


def read_module_bytes(path):
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        return gzip.decompress(data)
    if path.endswith(".zst"):
        raise LabError("zstd-compressed modules are not supported by the standard library: %s" % path)
    return data


def modinfo(data):
    """Fields of a module's ELF .modinfo section as (key, value) pairs."""
    section = None
    try:
        if data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1:   # ELF64 little-endian
            e_shoff, = struct.unpack_from("<Q", data, 0x28)
            e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", data, 0x3A)
            def sh(i):
                return struct.unpack_from("<IIQQQQIIQQ", data, e_shoff + i * e_shentsize)
            strtab = sh(e_shstrndx)
            stroff = strtab[4]
            for i in range(e_shnum):
                h = sh(i)
                name_end = data.index(b"\0", stroff + h[0])
                if data[stroff + h[0]:name_end] == b".modinfo":
                    section = data[h[4]:h[4] + h[5]]
                    break
    except (struct.error, ValueError, IndexError):
        section = None
    if section is None:       # fall back to scanning the bytes
        section = data
    fields = []
    for item in section.split(b"\0"):
        if b"=" in item:
            k, _, v = item.partition(b"=")
            if re.fullmatch(rb"[a-z_]+", k):
                fields.append((k.decode(), v.decode("utf-8", "replace")))
    return fields


def norm_mod(name):
    return name.replace("-", "_")


def index_modules(moddir):
    """name (with '_') -> path of every module file below moddir."""
    index = {}
    for root, _dirs, files in os.walk(moddir):
        for fn in files:
            m = re.match(r"(.+)\.ko(\.xz|\.gz|\.zst)?$", fn)
            if m:
                index[norm_mod(m.group(1))] = os.path.join(root, fn)
    return index


def module_load_order(moddir, wanted):
    """[(name, path, options)] for `wanted` ("name opts") and all dependencies, deps first."""
    index = index_modules(moddir)
    builtin = set()
    bpath = os.path.join(moddir, "modules.builtin")
    if os.path.exists(bpath):
        with open(bpath) as f:
            for line in f:
                builtin.add(norm_mod(os.path.basename(line.strip()).split(".ko")[0]))
    order, seen, options = [], set(), {}
    for item in wanted:
        name, _, opts = item.partition(" ")
        options[norm_mod(name)] = opts.strip()

    def visit(name, chain):
        n = norm_mod(name)
        if n in seen or n in builtin:
            return
        if n in chain:
            raise LabError("module dependency cycle: %s" % " -> ".join(chain + [n]))
        path = index.get(n)
        if not path:
            raise LabError("kernel module %s not found in %s" % (name, moddir))
        deps = [v for k, v in modinfo(read_module_bytes(path)) if k == "depends"]
        for dep in ",".join(deps).split(","):
            if dep:
                visit(dep, chain + [n])
        seen.add(n)
        order.append((n, path, options.get(n, "")))

    for item in wanted:
        visit(item.partition(" ")[0], [])
    return order


# ----------------------------------------------------------------------------
# cpio (newc) writer


class CpioWriter:
    def __init__(self, fileobj):
        self.f = fileobj
        self.ino = 1

    def _entry(self, name, mode, data=b"", rdev=(0, 0), nlink=1):
        nameb = name.encode() + b"\0"
        hdr = "070701" + "".join("%08X" % v for v in (
            self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(nameb), 0))
        self.ino += 1
        self.f.write(hdr.encode() + nameb)
        self.f.write(b"\0" * ((4 - (110 + len(nameb)) % 4) % 4))
        self.f.write(data)
        self.f.write(b"\0" * ((4 - len(data) % 4) % 4))

    def dir(self, name, perm=0o755):
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def file(self, name, data, perm=0o644):
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name, target):
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name, major, minor, perm=0o600):
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def trailer(self):
        self._entry("TRAILER!!!", 0)


# ----------------------------------------------------------------------------
# prepare: kernel + busybox from Debian, initramfs


def _run(cmd, cwd=None, step=None):
    p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise LabError("`%s` failed (rc %d):\n%s%s" % (" ".join(cmd), p.returncode, p.stdout[-2000:],
                                                       p.stderr[-2000:]), step=step)
    return p.stdout


_apt_updated = []


def newest_kernel_package():
    which_or_fail("apt-cache", "apt")
    out = _run(["apt-cache", "search", "--names-only", r"^linux-image-6\.1\.0-[0-9]+-amd64$"],
               step="prepare: apt-cache search")
    cands = []
    for line in out.splitlines():
        name = line.split(" ", 1)[0]
        m = re.fullmatch(r"linux-image-6\.1\.0-(\d+)-amd64", name)
        if m:
            cands.append((int(m.group(1)), name))
    if not cands and os.geteuid() == 0 and not _apt_updated:
        # a fresh machine whose package lists were never fetched
        _apt_updated.append(True)
        subprocess.run(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return newest_kernel_package()
    if not cands:
        raise MissingDependency("apt-cache finds no linux-image-6.1.0-*-amd64: run `apt-get update` "
                                "(a Debian 12 apt source is needed)", step="prepare")
    return max(cands)[1]


def _read_stamp(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def extract_pvh_vmlinux(bzimage, out):
    """The uncompressed ELF kernel inside a bzImage, when it has a PVH entry note.

    QEMU boots such an ELF directly (PVH), skipping the firmware's real-mode
    setup and the in-guest decompression (about 1-2 s under TCG). None if not."""
    with open(bzimage, "rb") as f:
        data = f.read()
    for magic, fmt in ((b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b\x08", "gz")):
        i = data.find(magic)
        if i < 0:
            continue
        try:
            if fmt == "xz":
                elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[i:])
            else:
                elf = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[i:])
        except (lzma.LZMAError, zlib.error):
            continue
        # XEN_ELFNOTE_PHYS32_ENTRY (18) in a "Xen" note
        if elf[:4] == b"\x7fELF" and _has_pvh_note(elf):
            tmp = out + ".tmp"
            with open(tmp, "wb") as f:
                f.write(elf)
            os.replace(tmp, out)
            return out
    return None


def _has_pvh_note(elf):
    try:
        e_phoff, = struct.unpack_from("<Q", elf, 0x20)
        e_phentsize, e_phnum = struct.unpack_from("<HH", elf, 0x36)
        for i in range(e_phnum):
            p_type, _fl, p_offset, _va, _pa, p_filesz = struct.unpack_from("<IIQQQQ", elf, e_phoff + i * e_phentsize)
            if p_type != 4:          # PT_NOTE
                continue
            off, end = p_offset, p_offset + p_filesz
            while off + 12 <= end:
                namesz, descsz, ntype = struct.unpack_from("<III", elf, off)
                name = elf[off + 12:off + 12 + namesz].rstrip(b"\0")
                if name == b"Xen" and ntype == 18:
                    return True
                off += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    except struct.error:
        return False
    return False


class Prepared:
    def __init__(self, kernel, initrd, kver, modules):
        self.kernel = kernel
        self.initrd = initrd
        self.kver = kver
        self.modules = modules


def _deb_version(deb):
    return _run(["dpkg-deb", "-f", deb, "Version"]).strip()


def prepare(refresh=False, log=log_default):
    """Download and unpack the kernel and busybox, write the initramfs. Cached."""
    which_or_fail("dpkg", "dpkg")
    os.makedirs(CACHE_DIR, exist_ok=True)
    stamp_path = os.path.join(CACHE_DIR, "stamp.json")
    stamp = None if refresh else _read_stamp(stamp_path)
    with open(os.path.join(GUEST_DIR, "init"), "rb") as f:
        init_script = f.read()
    recipe = hashlib.sha256(json.dumps(GUEST_MODULES).encode() + init_script
                            + b"cpio-v1").hexdigest()[:16]

    if stamp and os.path.exists(stamp.get("kernel", "")) and os.path.isdir(stamp.get("moddir", "")) \
            and os.path.exists(stamp.get("busybox", "")):
        kver, kernel, moddir, busybox = stamp["kver"], stamp["kernel"], stamp["moddir"], stamp["busybox"]
    else:
        which_or_fail("apt-get", "apt")
        pkg = newest_kernel_package()
        debs = os.path.join(CACHE_DIR, "debs")
        os.makedirs(debs, exist_ok=True)
        for p in (pkg, "busybox-static"):
            if not glob.glob(os.path.join(debs, p + "_*.deb")):
                log("lab: apt-get download %s" % p)
                _run(["apt-get", "download", p], cwd=debs, step="prepare: apt-get download %s" % p)
        kdeb = sorted(glob.glob(os.path.join(debs, pkg + "_*.deb")))[-1]
        bdeb = sorted(glob.glob(os.path.join(debs, "busybox-static_*.deb")))[-1]
        kroot = os.path.join(CACHE_DIR, pkg)
        broot = os.path.join(CACHE_DIR, "busybox-static")
        for deb, root in ((kdeb, kroot), (bdeb, broot)):
            if os.path.exists(root):
                shutil.rmtree(root)
            log("lab: dpkg -x %s" % os.path.basename(deb))
            _run(["dpkg", "-x", deb, root], step="prepare: dpkg -x")
        kernels = glob.glob(os.path.join(kroot, "boot", "vmlinuz-*"))
        if not kernels:
            raise LabError("no vmlinuz in %s" % kdeb, step="prepare")
        kernel = kernels[0]
        kver = os.path.basename(kernel)[len("vmlinuz-"):]
        moddir = os.path.join(kroot, "lib", "modules", kver)
        busybox = os.path.join(broot, "bin", "busybox")
        stamp = {"package": pkg, "kver": kver, "kernel": kernel, "moddir": moddir, "busybox": busybox,
                 "kernelDeb": os.path.basename(kdeb), "kernelVersion": _deb_version(kdeb),
                 "busyboxVersion": _deb_version(bdeb)}
        with open(stamp_path, "w") as f:
            json.dump(stamp, f, indent=1)

    initrd = os.path.join(CACHE_DIR, "initramfs-%s-%s.cpio.gz" % (kver, recipe))
    order_path = initrd + ".modules"
    if not os.path.exists(initrd) or not os.path.exists(order_path):
        t = time.monotonic()
        order = module_load_order(moddir, GUEST_MODULES)
        buf = io.BytesIO()
        w = CpioWriter(buf)
        for d in ("bin", "dev", "proc", "sys", "lib", "lib/modules", "lower", "upper", "newroot", "run", "tmp"):
            w.dir(d)
        w.chardev("dev/console", 5, 1)
        w.chardev("dev/null", 1, 3, 0o666)
        with open(busybox, "rb") as f:
            w.file("bin/busybox", f.read(), 0o755)
        w.symlink("bin/sh", "busybox")
        w.file("init", init_script, 0o755)
        lines = []
        for name, path, opts in order:
            fn = name + ".ko"
            w.file("lib/modules/" + fn, read_module_bytes(path))
            lines.append((fn + " " + opts).strip())
        w.file("modules.list", ("\n".join(lines) + "\n").encode())
        w.trailer()
        tmp = initrd + ".tmp"
        with open(tmp, "wb") as f:
            f.write(gzip.compress(buf.getvalue(), compresslevel=6))
        os.replace(tmp, initrd)
        with open(order_path, "w") as f:
            f.write("\n".join(lines) + "\n")
        for old in glob.glob(os.path.join(CACHE_DIR, "initramfs-*.cpio.gz")):
            if old != initrd:
                for p in (old, old + ".modules"):
                    with contextlib.suppress(OSError):
                        os.unlink(p)
        log("lab: wrote %s (%d modules, %.1f MB, %.1f s)" % (os.path.basename(initrd), len(order),
                                                             os.path.getsize(initrd) / 1e6,
                                                             time.monotonic() - t))
    with open(order_path) as f:
        modules = [l.strip() for l in f if l.strip()]
    kernel = stamp["kernel"]
    if os.environ.get("VHOTPLUG_LAB_BZIMAGE") != "1":
        vmlinux = os.path.join(CACHE_DIR, "vmlinux-%s" % kver)
        nopvh = vmlinux + ".no-pvh"
        if not os.path.exists(vmlinux) and not os.path.exists(nopvh):
            if extract_pvh_vmlinux(kernel, vmlinux) is None:
                open(nopvh, "w").close()
            else:
                log("lab: extracted %s (PVH boot)" % os.path.basename(vmlinux))
        if os.path.exists(vmlinux):
            kernel = vmlinux
    return Prepared(kernel, initrd, kver, modules)


# ----------------------------------------------------------------------------
# Line-oriented JSON peers: QMP (outer QEMU) and the guest agent


class _JsonLinePeer:
    """A Unix-socket peer speaking one JSON object per line, read by a thread."""

    def __init__(self, path, name):
        self.path = path
        self.name = name
        self.sock = None
        self.lock = threading.Lock()
        self.cond = threading.Condition()
        self.replies = {}
        self.events = []
        self.closed = False
        self.next_id = 1

    def connect(self, timeout):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.path)
                self.sock = s
                break
            except OSError as e:
                last = e
                s.close()
                time.sleep(0.02)
        if self.sock is None:
            raise LabTimeout("cannot connect to %s (%s): %s" % (self.name, self.path, last))
        self._reader = threading.Thread(target=self._read_loop, name="lab-" + self.name, daemon=True)
        self._reader.start()

    def _read_loop(self):
        buf = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue
                    self._dispatch(msg)
        except OSError:
            pass
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def _dispatch(self, msg):
        with self.cond:
            if "event" in msg:
                self.events.append(msg)
            elif "id" in msg:
                self.replies[msg["id"]] = msg
            else:
                self.replies.setdefault("_untagged", []).append(msg)
            self.cond.notify_all()

    def send(self, obj):
        data = (json.dumps(obj) + "\n").encode()
        with self.lock:
            self.sock.sendall(data)

    def request(self, obj, timeout):
        with self.cond:
            rid = self.next_id
            self.next_id += 1
        obj = dict(obj, id=rid)
        self.send(obj)
        deadline = time.monotonic() + timeout
        with self.cond:
            while rid not in self.replies:
                left = deadline - time.monotonic()
                if self.closed:
                    raise LabError("%s closed the connection" % self.name)
                if left <= 0:
                    raise LabTimeout("%s did not answer %s within %.1f s" % (
                        self.name, obj.get("execute") or obj.get("op"), timeout))
                self.cond.wait(min(left, 0.5))
            return self.replies.pop(rid)

    def close(self):
        if self.sock:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self.sock.close()


class QMP(_JsonLinePeer):
    """A QMP client with a persistent connection; events are kept in order."""

    def connect(self, timeout=10):
        super().connect(timeout)
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.replies.get("_untagged"):
                if self.closed or time.monotonic() > deadline:
                    raise LabTimeout("no QMP greeting from %s" % self.name)
                self.cond.wait(0.2)
            self.replies["_untagged"].clear()
        self.execute("qmp_capabilities")

    def execute(self, command, timeout=30, **arguments):
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        reply = self.request(msg, timeout)
        if "error" in reply:
            raise QMPError(reply["error"].get("class"), reply["error"].get("desc"), command)
        return reply.get("return")

    def event_mark(self):
        with self.cond:
            return len(self.events)

    def wait_event(self, name, timeout, since=0, match=None):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for ev in self.events[since:]:
                    if ev.get("event") == name and (match is None or match(ev.get("data", {}))):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    return None
                self.cond.wait(min(left, 0.5))


class AgentClient(_JsonLinePeer):
    def call(self, op, timeout=30, **args):
        reply = self.request(dict(args, op=op), timeout)
        if reply.get("error"):
            raise LabError("guest agent %s failed: %s" % (op, reply["error"]))
        return reply.get("result")


# ----------------------------------------------------------------------------
# The lab


def _set_pdeathsig():
    """Child side: die with the parent (PR_SET_PDEATHSIG), in a process group of its own."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)   # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort
        pass


_LIVE_LABS = weakref.WeakSet()
_TERMINATING = []     # signals received: a terminated run starts no further lab


def _remove_stale_rundirs():
    """Run dirs left by a harness that was SIGKILLed (its QEMU died with it: PDEATHSIG)."""
    for d in glob.glob("/tmp/vhotplug-lab-*"):
        try:
            with open(os.path.join(d, "qemu.pid")) as f:
                pid = int(f.read().strip())
            os.kill(pid, 0)
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                if b"vhotplug-lab" in f.read():
                    continue            # a lab that is running now
        except (OSError, ValueError):
            pass
        if os.path.getmtime(d) < time.time() - 5:
            shutil.rmtree(d, ignore_errors=True)


@atexit.register
def _close_all_labs():
    for lab in list(_LIVE_LABS):
        with contextlib.suppress(Exception):
            lab.close()


class Plugged:
    """A device the lab plugged into the outer guest and where the guest shows it."""

    def __init__(self, kind, id, qemu_driver, bus, port=None, node=None, guest=None, elapsed=None):
        self.kind = kind
        self.id = id
        self.qemu_driver = qemu_driver
        self.bus = bus          # "xhci.0" or a root port id
        self.port = port        # QEMU USB port ("3", "3.1") for USB devices
        self.node = node        # blockdev node name (usb-storage)
        self.guest = guest      # dict: {"subsystem": "usb"|"pci"|"input", "name": sysName, ...}
        self.elapsed = elapsed  # seconds from device_add to the guest seeing it
        self.behind = []        # devices plugged behind this hub
        self.t0 = None          # time.monotonic() when device_add was sent
        self._before = None     # the guest's devices before (for wait_plugged)

    def __repr__(self):
        return "Plugged(%s %s bus=%s port=%s guest=%s %.2fs)" % (
            self.kind, self.id, self.bus, self.port, self.guest and self.guest.get("name"),
            self.elapsed or 0)


class Lab:
    """Boots the outer guest; plug/unplug devices; run commands; talk to the inner VMs.

    Every step has a deadline; a step that fails raises LabError/LabTimeout naming
    the step, with the guest console tail. All processes end when the Lab ends
    (context exit, exception, Ctrl-C, SIGTERM, interpreter exit).
    """

    def __init__(self, vms=("vm1",), memory=2048, smp=2, boot_timeout=90, log=log_default,
                 keep_rundir=None, extra_cmdline=""):
        self.vms = list(vms)
        self.memory = memory
        self.smp = smp
        self.boot_timeout = boot_timeout
        self.log = log or (lambda m: None)
        self.keep_rundir = bool(os.environ.get("VHOTPLUG_LAB_KEEP")) if keep_rundir is None else keep_rundir
        self.extra_cmdline = extra_cmdline
        self.proc = None
        self.qmp = None
        self.agent = None
        self.rundir = None
        self.console_path = None
        self.plugged = {}
        self.timings = {}
        self.vhotplug = None
        self._vhotplug_started = False
        self._old_handlers = {}
        self._closed = False
        self._disk_n = 0
        self._boots = 0

    # -- context ---------------------------------------------------------------

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, _frame):
            # unwind the with-block (close() runs), then exit with 128+signum;
            # no new lab starts in this process afterwards
            _TERMINATING.append(signum)
            raise SystemExit(128 + signum)

        for sig in (signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(ValueError, OSError):
                # (A second boot of the same lab keeps the handlers from before the first.)
                self._old_handlers.setdefault(sig, signal.signal(sig, handler))

    def _restore_signal_handlers(self):
        for sig, h in self._old_handlers.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, h)
        self._old_handlers = {}

    # -- diagnostics -----------------------------------------------------------

    def console_tail(self, n=40):
        path = self.console_path
        if not path or not os.path.exists(path):
            return "(no console output)"
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
        lines = [l.rstrip("\r") for l in data.splitlines()]
        return "\n".join(lines[-n:])

    def fail(self, message, step, timeout=False):
        cls = LabTimeout if timeout else LabError
        daemon = self.vhotplug_log_tail() if self._vhotplug_started else None
        if daemon is not None:
            message += "\n----- vhotplug log (last lines) -----\n" + (daemon or "(empty)") + "\n-----"
        return cls(message, step=step, console=self.console_tail())

    def vhotplug_log_tail(self, n=40):
        """The last lines of the guest daemon's log, or None if it cannot be read now."""
        if not (self.agent and not self.agent.closed and self.proc and self.proc.poll() is None):
            return None
        try:
            text = self.vhotplug_log(timeout=3)
        except Exception:  # noqa: BLE001 - diagnostics only
            return None
        return "\n".join(text.splitlines()[-n:])

    @contextlib.contextmanager
    def step(self, name):
        """Wrap errors of a step so they name it and carry the console tail."""
        try:
            yield
        except LabError as e:
            if e.step:
                raise
            raise self.fail(str(e), name, timeout=isinstance(e, LabTimeout)) from e
        except QMPError as e:
            raise self.fail(str(e), name) from e

    def _check_alive(self, step):
        if self.proc is not None and self.proc.poll() is not None:
            raise self.fail("outer QEMU exited with status %s (see qemu.log: %s)" % (
                self.proc.returncode, self._qemu_log_tail()), step)

    def _qemu_log_tail(self):
        try:
            with open(os.path.join(self.rundir, "qemu.log")) as f:
                return f.read()[-1500:].strip() or "(empty)"
        except OSError:
            return "(none)"

    def wait_for(self, predicate, timeout, step, interval=0.05):
        """Poll predicate() until it returns a truthy value (returned) or the deadline.

        Observing QEMU and the guest only: the harness may poll, the daemon never."""
        deadline = time.monotonic() + timeout
        last_exc = None
        while True:
            self._check_alive(step)
            try:
                v = predicate()
                if v:
                    return v
            except (LabError, QMPError, OSError) as e:   # keep trying until the deadline
                last_exc = e
            if time.monotonic() >= deadline:
                extra = (" (last error: %s)" % last_exc) if last_exc else ""
                raise self.fail("timed out after %.1f s%s" % (timeout, extra), step, timeout=True)
            time.sleep(interval)

    # -- boot ------------------------------------------------------------------

    def start(self):
        if _TERMINATING:
            raise SystemExit(128 + _TERMINATING[0])
        t0 = time.monotonic()
        _LIVE_LABS.add(self)
        self._install_signal_handlers()
        qemu = qemu_binary()
        with self.step("prepare"):
            prep = prepare(log=self.log)
        self.prepared = prep
        _remove_stale_rundirs()
        self.rundir = tempfile.mkdtemp(prefix="vhotplug-lab-", dir="/tmp")
        os.chmod(self.rundir, 0o755)
        self.console_path = os.path.join(self.rundir, "console.log")
        qmp_path = os.path.join(self.rundir, "outer.qmp")
        agent_path = os.path.join(self.rundir, "agent.sock")
        cmdline = "%s lab.stage2=%s lab.vms=%s lab.run=%s %s" % (
            KERNEL_CMDLINE, os.path.join(GUEST_DIR, "stage2.sh"), ",".join(self.vms) or "none",
            self.rundir, self.extra_cmdline)
        cmd = [qemu, "-name", "vhotplug-lab",
               "-machine", "q35,accel=tcg", "-cpu", "max", "-m", str(self.memory), "-smp", str(self.smp),
               "-nodefaults", "-display", "none", "-no-reboot",
               "-kernel", prep.kernel, "-initrd", prep.initrd, "-append", cmdline.strip(),
               "-device", "intel-iommu,intremap=off",
               "-device", "qemu-xhci,id=xhci,p2=8,p3=8"]
        for i, rp in enumerate(OUTER_ROOT_PORTS, start=1):
            cmd += ["-device", "pcie-root-port,id=%s,chassis=%d,bus=pcie.0" % (rp, i)]
        cmd += ["-fsdev", "local,id=fs0,path=/,security_model=none,readonly=on,multidevs=remap",
                "-device", "virtio-9p-pci,fsdev=fs0,mount_tag=host0",
                "-device", "virtio-serial-pci,id=vser",
                "-chardev", "socket,id=agent,path=%s,server=on,wait=off" % agent_path,
                "-device", "virtserialport,chardev=agent,name=lab.agent",
                "-qmp", "unix:%s,server=on,wait=off" % qmp_path,
                "-serial", "file:%s" % self.console_path,
                "-pidfile", os.path.join(self.rundir, "qemu.pid")]
        self._boots += 1
        # VHOTPLUG_LAB_STUCK_FIRST_BOOT=1 starts the first boot paused (-S): a guest that prints
        # nothing, to see the retry below at work.
        if self._boots == 1 and os.environ.get("VHOTPLUG_LAB_STUCK_FIRST_BOOT"):
            cmd.append("-S")
        self.qemu_cmd = cmd
        with open(os.path.join(self.rundir, "qemu.cmd"), "w") as f:
            f.write(" ".join(cmd) + "\n")
        qlog = open(os.path.join(self.rundir, "qemu.log"), "wb")
        self.log("lab: booting %s (run dir %s)" % (prep.kver, self.rundir))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=qlog, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=_set_pdeathsig)
        qlog.close()
        with self.step("outer QEMU QMP"):
            self.wait_for(lambda: os.path.exists(qmp_path), 15, "outer QEMU QMP socket")
            self.qmp = QMP(qmp_path, "outer QMP")
            self.qmp.connect(10)
            self.agent = AgentClient(agent_path, "guest agent")
            self.agent.connect(10)
        # A guest that printed nothing on its console in 30 s never started (seen once in a
        # clean-clone run: the console still empty when the agent's 90 s were over). Its QEMU
        # is stopped and the lab boots once more, saying so; a second such boot fails.
        if self._boots == 1 and not self._console_written(30):
            self.log("lab: the guest printed nothing on its console in 30 s (outer QEMU's output: %r); booting once more"
                     % self._qemu_output_tail())
            self._stop_outer()
            return self.start()
        # guest agent answers (kernel + init + stage2 + python start)
        def ping():
            try:
                return self.agent.call("ping", timeout=0.5)
            except LabTimeout:
                return None
        info = self.wait_for(ping, self.boot_timeout, "boot: guest agent answers", interval=0)
        self.timings["agent"] = time.monotonic() - t0
        # udevd settled, inner VMs answer QMP
        st = self.wait_for(self._ready_status, 60, "boot: udev settled and inner VMs answer QMP", interval=0.1)
        self.timings["ready"] = time.monotonic() - t0
        self.guest_info = info
        self.log("lab: ready in %.1f s (agent %.1f s; guest uptime %.1f s; marks %s)" % (
            self.timings["ready"], self.timings["agent"], st.get("uptime", 0),
            " ".join("%s=%.1f" % kv for kv in sorted(st.get("marks", {}).items(), key=lambda kv: kv[1]))))
        with self.step("boot: guest sanity"):
            self._check_guest_sanity()

    def _ready_status(self):
        st = self.agent.call("status", timeout=10, vms=self.vms)
        if st.get("stage2_error"):
            raise self.fail("guest stage2 failed: %s" % st["stage2_error"], "boot: stage2")
        if not st.get("udev_settled"):
            return None
        for vm in self.vms:
            if st["vms"].get(vm) != "running":
                return None
        self._status = st
        return st

    def _check_guest_sanity(self):
        st = self._status
        problems = [p for p in st.get("sanity", []) if p]
        if problems:
            raise LabError("guest root is not as expected: %s" % "; ".join(problems))

    # -- teardown --------------------------------------------------------------

    def _console_written(self, seconds):
        """True once the guest has written to its console, within `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if os.path.getsize(self.console_path) > 0:
                    return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.1)
        return False

    def _qemu_output_tail(self, n=400):
        with contextlib.suppress(OSError):
            with open(os.path.join(self.rundir, "qemu.log"), "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        return ""

    def _stop_outer(self):
        """Stops a boot that never started: its QEMU, its peers and its run folder."""
        for peer in (self.qmp, self.agent):
            if peer:
                with contextlib.suppress(Exception):
                    peer.close()
        self.qmp = self.agent = None
        if self.proc:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            self.proc = None
        if self.rundir and not self.keep_rundir:
            shutil.rmtree(self.rundir, ignore_errors=True)

    def close(self):
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            if self.vhotplug and self.agent and self.proc and self.proc.poll() is None:
                self.stop_vhotplug(timeout=3)
        if self._vhotplug_started:
            # the daemon's whole log, for a look afterwards: .cache/lab/last-vhotplug.log
            with contextlib.suppress(Exception):
                text = self.vhotplug_log(timeout=3) if self.proc and self.proc.poll() is None else None
                if text is not None:
                    os.makedirs(CACHE_DIR, exist_ok=True)
                    with open(os.path.join(CACHE_DIR, "last-vhotplug.log"), "w") as f:
                        f.write(text)
        if self.qmp and self.proc and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.qmp.execute("quit", timeout=2)
        if self.proc:
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(self.proc.pid, sig)
                    try:
                        self.proc.wait(wait)
                        break
                    except subprocess.TimeoutExpired:
                        continue
            # anything left in its process group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        for peer in (self.qmp, self.agent):
            if peer:
                peer.close()
        if self.rundir and os.path.isdir(self.rundir):
            with contextlib.suppress(OSError):
                os.makedirs(CACHE_DIR, exist_ok=True)
                shutil.copyfile(self.console_path, os.path.join(CACHE_DIR, "last-console.log"))
            if self.keep_rundir:
                self.log("lab: run dir kept: %s" % self.rundir)
            else:
                shutil.rmtree(self.rundir, ignore_errors=True)
        self._restore_signal_handlers()
        _LIVE_LABS.discard(self)

    # -- guest commands --------------------------------------------------------

    def run(self, cmd, timeout=30, input=None, env=None, step=None):
        """Run a shell command in the guest: (rc, stdout, stderr). rc is None on timeout."""
        step = step or ("guest: %s" % cmd[:60])
        self._check_alive(step)
        with self.step(step):
            r = self.agent.call("run", timeout=timeout + 10, cmd=cmd, timeout_s=timeout, input=input, env=env)
        if r.get("timedout"):
            raise self.fail("command timed out after %.1f s: %s\nstdout: %s\nstderr: %s" % (
                timeout, cmd, r["stdout"][-1000:], r["stderr"][-1000:]), step, timeout=True)
        return r["rc"], r["stdout"], r["stderr"]

    def check(self, cmd, timeout=30, **kw):
        """run() that raises on a non-zero exit status; returns stdout."""
        rc, out, err = self.run(cmd, timeout=timeout, **kw)
        if rc != 0:
            raise self.fail("command failed (rc %s): %s\nstdout: %s\nstderr: %s" % (
                rc, cmd, out[-1500:], err[-1500:]), "guest: %s" % cmd[:60])
        return out

    def read_files(self, paths, timeout=10, limit=None):
        """Contents of guest files (None when absent; the first `limit` bytes, 1 MiB by default)."""
        args = {"limit": limit} if limit else {}
        return self.agent.call("read", timeout=timeout, paths=list(paths), **args)

    def write_file(self, path, text, timeout=10):
        """Write a file in the guest (its root is a tmpfs overlay: the host is untouched)."""
        self.agent.call("write", timeout=timeout, path=path, data=text)

    def guest_devices(self, timeout=10):
        """The guest's USB devices, PCI functions and event devices, from sysfs."""
        return self.agent.call("devices", timeout=timeout)

    def settle(self, timeout=30):
        self.check("udevadm settle --timeout=%d" % timeout, timeout=timeout + 5)

    # -- QMP -------------------------------------------------------------------

    def outer_qmp(self, execute, timeout=30, **arguments):
        with self.step("outer QMP %s" % execute):
            return self.qmp.execute(execute, timeout=timeout, **arguments)

    def inner_qmp(self, vm, execute, timeout=30, wait_event=None, **arguments):
        """One command on the inner VM's observer monitor (the daemon's socket stays free).

        wait_event: {"event": "DEVICE_DELETED", "data": {"device": "x"}, "timeout": 10}
        keeps the connection until that event arrives; the reply is then
        {"return": ..., "event": ...}. Raises QMPError on a QMP error."""
        try:
            r = self.agent.call("qmp", timeout=timeout + 10, socket="%s/%s-obs.qmp" % (GUEST_RUN, vm),
                                execute=execute, arguments=arguments, timeout_s=timeout, wait_event=wait_event)
        except LabError as e:
            if "no answer within" not in str(e):
                raise
            raise LabError("%s\n----- where %s's QEMU is stuck -----\n%s\n-----"
                           % (e, vm, self.stuck_qemu(vm))) from e
        if "error" in r:
            raise QMPError(r["error"].get("class"), r["error"].get("desc"), execute)
        if wait_event:
            return r
        return r.get("return")

    def stuck_qemu(self, vm):
        """What an inner VM's QEMU, and the daemon, are doing in the guest kernel (each
        thread's state, wait channel and kernel stack) and the guest kernel's last lines:
        said when the QEMU leaves its observer monitor unanswered."""
        script = r"""
show() { for t in /proc/$1/task/*; do
  echo "$2 task $(basename $t) $(cat $t/comm 2>/dev/null) $(sed -n 's/^State:\s*//p' $t/status 2>/dev/null) wchan=$(cat $t/wchan 2>/dev/null)"
  sed 's/^/    /' $t/stack 2>/dev/null | head -25; done; }
p=$(cat %s/%s.pid 2>/dev/null); [ -n "$p" ] && show $p qemu || echo "no pid file for %s"
for d in $(pgrep -x vhotplug); do show $d vhotplug; done
dmesg | tail -40
""" % (GUEST_RUN, vm, vm)
        try:
            rc, out, err = self.run(script, timeout=20)
            return (out + err)[-12000:]
        except LabError as e:
            return "(could not look: %s)" % e

    def inner_peripherals(self, vm):
        """{id: type} of the inner VM's devices with ids (qom-list /machine/peripheral)."""
        out = {}
        for p in self.inner_qmp(vm, "qom-list", path="/machine/peripheral"):
            t = p.get("type", "")
            if t.startswith("child<"):
                out[p["name"]] = t[6:-1]
        return out

    def inner_pci(self, vm):
        """[{bus, slot, function, vendor, device, qdev_id, parent_bus}] walking bridges."""
        res = []

        def walk(devs, parent):
            for d in devs:
                res.append({"bus": d.get("bus"), "slot": d.get("slot"), "function": d.get("function"),
                            "vendor": d.get("id", {}).get("vendor"), "device": d.get("id", {}).get("device"),
                            "qdev_id": d.get("qdev_id", ""), "parent": parent})
                br = d.get("pci_bridge")
                if br and br.get("devices") is not None:
                    walk(br["devices"], d.get("qdev_id", ""))
        for bus in self.inner_qmp(vm, "query-pci"):
            walk(bus.get("devices", []), "pcie.0")
        return res

    def inner_usb(self, vm):
        """The inner VM's `info usb` lines."""
        return self.inner_qmp(vm, "human-monitor-command", **{"command-line": "info usb"})

    def wait_inner(self, vm, predicate, timeout=30, step=None, interval=0.02):
        """Poll the inner VM's qom-list /machine/peripheral ({id: type}) until
        predicate(peripherals) is true; returns the peripherals. E.g. waiting for
        the daemon's attach: lab.wait_inner("vm1", lambda p: any(t == "usb-host" for t in p.values()))"""
        return self.wait_for(lambda: (lambda p: p if predicate(p) else None)(self.inner_peripherals(vm)),
                             timeout, step or "inner VM %s state" % vm, interval=interval)

    def vm_start(self, vm, timeout=30, extra_args=()):
        """Starts an inner VM; extra_args are added to its QEMU command line (e.g. the
        `vhotplug vmm args` output, split)."""
        with self.step("inner VM %s start" % vm):
            self.check(" ".join(["%s/innervm.sh start %s" % (GUEST_DIR, vm)] + [_shquote(a) for a in extra_args]),
                       timeout=timeout)
            self.wait_for(lambda: self.inner_qmp(vm, "query-status", timeout=5).get("status") == "running",
                          timeout, "inner VM %s answers QMP" % vm)

    def vm_stop(self, vm, timeout=30):
        with self.step("inner VM %s stop" % vm):
            self.check("%s/innervm.sh stop %s" % (GUEST_DIR, vm), timeout=timeout)

    def vm_restart(self, vm, timeout=30):
        self.vm_stop(vm, timeout)
        self.vm_start(vm, timeout)

    # -- plugging --------------------------------------------------------------

    def _usb_ports_in_use(self):
        text = self.outer_qmp("human-monitor-command", **{"command-line": "info usb"})
        return set(re.findall(r"Port ([0-9.]+)", text))

    def free_usb_port(self):
        used = self._usb_ports_in_use()
        for p in USB_PORTS:
            if p not in used:
                return p
        raise LabError("no free USB port on the outer xhci (used: %s)" % sorted(used))

    def _root_ports_in_use(self):
        used = set()
        for bus in self.outer_qmp("query-pci"):
            for d in bus.get("devices", []):
                br = d.get("pci_bridge")
                if br and d.get("qdev_id") in OUTER_ROOT_PORTS and br.get("devices"):
                    used.add(d["qdev_id"])
        used.update(p.bus for p in self.plugged.values() if p.bus in OUTER_ROOT_PORTS)
        return used

    def root_port_bus(self, port):
        """The guest's bus number behind outer root port `port` (its secondary bus, as the
        guest numbered it): a device plugged there at addr=0.F is 0000:BB:00.F in the guest."""
        for bus in self.outer_qmp("query-pci"):
            for d in bus.get("devices", []):
                if d.get("qdev_id") == port and d.get("pci_bridge"):
                    return d["pci_bridge"]["bus"]["secondary"]
        raise LabError("no root port %s in the outer VM's query-pci" % port)

    def free_root_port(self):
        used = self._root_ports_in_use()
        for rp in OUTER_ROOT_PORTS:
            if rp not in used:
                return rp
        raise LabError("no free root port in the outer VM (all of %s used)" % OUTER_ROOT_PORTS)

    def _disk_image(self, size_mb=16):
        self._disk_n += 1
        path = os.path.join(self.rundir, "disk%d.img" % self._disk_n)
        with open(path, "wb") as f:
            f.truncate(size_mb * 1024 * 1024)
        return path

    def plug(self, kind, id, port=None, bus=None, wait=True, timeout=30, behind=(), **props):
        """device_add into the outer guest through its QMP.

        kind: usb-mouse, usb-kbd, usb-tablet, usb-storage, usb-hub, e1000e,
        virtio-keyboard-pci, virtio-mouse-pci, virtio-tablet-pci. USB devices go on
        xhci.0 (port: "N" or "N.M" behind a hub at N; default a free root port);
        PCI devices on a free outer root port (or bus=). With wait, returns once the
        guest shows the new device (Plugged.guest) and udev has settled. Without
        it, returns right after device_add (Plugged.t0: when it was sent); call
        wait_plugged(p) later.
        behind (usb-hub only): [(kind, id), ...] plugged at ports N.1, N.2, ...
        (Plugged.behind lists them).

        While a vhotplug started by this lab runs, a USB device counts as seen once
        its interfaces are there: the daemon may give it to a VM (QEMU's usb-host
        unbinds usbhid/usb-storage) before its event node or disk appears."""
        step = "plug %s %s" % (kind, id)
        if id in self.plugged:
            raise LabError("id %s already plugged" % id, step=step)
        with self.step(step):
            before = self.guest_devices()
            args = {"id": id}
            node = None
            if kind in USB_KINDS:
                qdrv = USB_KINDS[kind]["driver"]
                port = port or self.free_usb_port()
                bus = "xhci.0"
                args.update(bus=bus, port=port)
                if kind == "usb-storage":
                    node = "disk-%s" % id
                    self.outer_qmp("blockdev-add", driver="raw", **{"node-name": node},
                                   file={"driver": "file", "filename": props.pop("image", None) or self._disk_image()})
                    args["drive"] = node
                    args.setdefault("serial", props.pop("serial", "LAB%s" % re.sub(r"[^A-Za-z0-9]", "", id).upper()))
            elif kind in PCI_KINDS:
                qdrv = PCI_KINDS[kind]["driver"]
                bus = bus or self.free_root_port()
                args["bus"] = bus
            else:
                raise LabError("unknown plug kind %r (known: %s)" % (kind, ", ".join(list(USB_KINDS) + list(PCI_KINDS))))
            args.update(props)
            t = time.monotonic()
            try:
                self.qmp.execute("device_add", driver=qdrv, **args)
            except QMPError:
                if node:
                    with contextlib.suppress(QMPError):
                        self.qmp.execute("blockdev-del", **{"node-name": node})
                raise
            p = Plugged(kind, id, qdrv, bus, port=port if kind in USB_KINDS else None, node=node)
            p.t0 = t
            p._before = before
            self.plugged[id] = p
        if wait:
            self.wait_plugged(p, timeout)
        p.behind = []
        if behind and kind != "usb-hub":
            raise LabError("behind= is for usb-hub only", step=step)
        for i, (bkind, bid) in enumerate(behind, start=1):
            p.behind.append(self.plug(bkind, bid, port="%s.%d" % (port, i), wait=wait, timeout=timeout))
        return p

    def wait_plugged(self, p, timeout=30):
        """Waits until the guest shows a device plugged with wait=False (sets p.guest,
        p.elapsed), then for udev to settle. Returns p."""
        if p.guest is not None:
            return p
        with self.step("plug %s %s" % (p.kind, p.id)):
            p.guest = self.wait_for(lambda: self._new_guest_device(p.kind, p._before), timeout,
                                    "plug %s %s: guest sees it" % (p.kind, p.id), interval=0.05)
            p.elapsed = time.monotonic() - p.t0
            self.settle()
        return p

    def _new_guest_device(self, kind, before):
        now = self.guest_devices()
        if kind in USB_KINDS:
            new = sorted(set(now["usb"]) - set(before["usb"]), key=lambda n: (len(n), n))
            if not new:
                return None
            name = new[0]
            d = now["usb"][name]
            # wait until the interfaces are there (configuration set)
            if not d.get("interfaces"):
                return None
            g = {"subsystem": "usb", "name": name, **d}
            if kind in ("usb-mouse", "usb-kbd", "usb-tablet"):
                # and the input device exists
                g["input"] = sorted(k for k, v in now["input"].items() if v.get("usb") == name and v.get("node"))
            if kind == "usb-storage":
                # and the disk
                g["block"] = sorted(k for k, v in now["block"].items() if v.get("usb") == name and v.get("node"))
            if self.vhotplug:
                # a running daemon may have handed it to a VM already (drivers unbound)
                return g
            if kind in ("usb-mouse", "usb-kbd", "usb-tablet") and not g["input"]:
                return None
            if kind == "usb-storage" and not g["block"]:
                return None
            return g
        if kind in PCI_KINDS:
            new = sorted(set(now["pci"]) - set(before["pci"]))
            if not new:
                return None
            name = new[-1]
            d = now["pci"][name]
            if not d.get("driver"):
                return None
            g = {"subsystem": "pci", "name": name, **d}
            if kind.startswith("virtio-") and kind.endswith("-pci"):
                ev = [k for k, v in now["input"].items() if v.get("pci") == name]
                if not ev:
                    return None
                g["input"] = sorted(ev)
            return g
        return None

    def unplug(self, id, wait=True, timeout=30):
        """device_del in the outer guest; waits for DEVICE_DELETED and the guest losing it."""
        step = "unplug %s" % id
        p = self.plugged.get(id)
        with self.step(step):
            mark = self.qmp.event_mark()
            t = time.monotonic()
            self.qmp.execute("device_del", id=id)
            if wait:
                ev = self.qmp.wait_event("DEVICE_DELETED", timeout, since=mark,
                                         match=lambda d: d.get("device") == id)
                if ev is None:
                    raise self.fail("no DEVICE_DELETED for %s within %.1f s" % (id, timeout), step, timeout=True)
                if p and p.guest:
                    sub, name = p.guest["subsystem"], p.guest["name"]
                    self.wait_for(lambda: name not in self.guest_devices()[sub], timeout,
                                  "unplug %s: guest loses %s" % (id, name))
                if p and p.node:
                    self.qmp.execute("blockdev-del", **{"node-name": p.node})
                self.plugged.pop(id, None)
                # devices behind a hub go with it
                if p and p.kind == "usb-hub":
                    for other in [q for q in self.plugged.values() if q.port and q.port.startswith(p.port + ".")]:
                        if other.node:
                            with contextlib.suppress(QMPError):
                                self.qmp.execute("blockdev-del", **{"node-name": other.node})
                        self.plugged.pop(other.id, None)
                self.settle()
        return time.monotonic() - t

    def unplug_all(self):
        for id in [i for i, p in self.plugged.items() if not (p.port and "." in p.port)]:
            if id in self.plugged:
                self.unplug(id)

    # -- kernel modules not in the initramfs -------------------------------------

    def load_modules(self, names, timeout=30):
        """insmod kernel modules (and their dependencies) in the guest from the lab
        kernel's module tree, which the guest sees through its 9p root; modules already
        loaded are skipped. For modules only some tests need (e.g. vsock_loopback)."""
        stamp = _read_stamp(os.path.join(CACHE_DIR, "stamp.json"))
        if not stamp or not os.path.isdir(stamp.get("moddir", "")):
            raise LabError("no lab kernel module tree (run labkit.prepare first)", step="load modules")
        with self.step("load modules %s" % ", ".join(names)):
            for name, path, opts in module_load_order(stamp["moddir"], names):
                if not path.endswith(".ko"):
                    raise LabError("module %s is compressed (%s): insmod in the guest needs a plain .ko" % (name, path))
                # the lab's busybox: the host root the guest runs may have no kmod
                self.check("[ -d /sys/module/%s ] || %s insmod %s %s" % (name, _shquote(stamp["busybox"]), _shquote(path), opts),
                           timeout=timeout)

    # -- VFIO (manual path; the daemon does this itself) ------------------------

    def vfio_bind(self, address, timeout=20):
        """Move a guest PCI function to vfio-pci; returns the IOMMU group number."""
        d = "/sys/bus/pci/devices/%s" % address
        self.check("echo vfio-pci > %s/driver_override && "
                   "{ [ ! -e %s/driver ] || echo %s > %s/driver/unbind; } && "
                   "echo %s > /sys/bus/pci/drivers_probe" % (d, d, address, d, address))
        group = self.check("basename $(readlink %s/iommu_group)" % d).strip()
        self.wait_for(lambda: self.run("test -c /dev/vfio/%s && [ $(basename $(readlink %s/driver)) = vfio-pci ]"
                                       % (group, d))[0] == 0, timeout, "vfio bind %s: /dev/vfio/%s" % (address, group))
        return int(group)

    def vfio_unbind(self, address, timeout=20):
        """Give a function back to its own driver (clear driver_override, unbind, drivers_probe)."""
        d = "/sys/bus/pci/devices/%s" % address
        self.check("echo > %s/driver_override && { [ ! -e %s/driver ] || echo %s > %s/driver/unbind; } && "
                   "echo %s > /sys/bus/pci/drivers_probe" % (d, d, address, d, address))
        return self.wait_for(lambda: self.check("[ -e %s/driver ] && basename $(readlink %s/driver) || true"
                                                % (d, d)).strip(), timeout, "vfio unbind %s" % address)

    # -- vhotplug ----------------------------------------------------------------

    def start_vhotplug(self, args=("-a",), config=None, binary=None, ready=None, timeout=30, env=None):
        """Start vhotplug in the guest (log in /run/vhotplug-lab/vhotplug.log).

        config: a path visible in the guest, or a dict/str written to the guest's
        /run/vhotplug-lab/vhotplug.conf. `-c CONFIG` is added unless args has -c.
        ready: optional predicate(lab) to wait for (e.g. a log line).
        env: extra environment variables for the daemon."""
        binary = binary or find_vhotplug()
        if self.vhotplug:
            raise LabError("vhotplug already running in the guest (pid %s)" % self.vhotplug)
        args = list(args)
        if "-c" not in args and "--config" not in args:
            if config is None:
                config = LAB_CONF
            if isinstance(config, dict):
                config = json.dumps(config, indent=2)
            if isinstance(config, str) and not config.lstrip().startswith(("{", "//", "/*")):
                path = config
            else:
                path = GUEST_RUN + "/vhotplug.conf"
                self.write_file(path, config)
            args = ["-c", path] + args
        env = dict(env or {}, LD_LIBRARY_PATH=SWIFT_RUNTIME)
        cmd = " ".join(_shquote(a) for a in [binary] + args)
        with self.step("start vhotplug"):
            self._vhotplug_started = True
            self.vhotplug = self.agent.call("spawn", cmd=cmd, log=GUEST_RUN + "/vhotplug.log", env=env)["pid"]
            self.vhotplug_cmd = cmd
            if ready:
                self.wait_for(lambda: ready(self), timeout, "vhotplug ready")
            st = self.agent.call("poll", pid=self.vhotplug)
            if st.get("rc") is not None:
                raise self.fail("vhotplug exited at once (rc %s):\n%s" % (st["rc"], self.vhotplug_log()),
                                "start vhotplug")
        return self.vhotplug

    def vhotplug_log(self, since=0, timeout=10):
        """The daemon's log (stdout and stderr), from character offset `since`."""
        text = self.read_files([GUEST_RUN + "/vhotplug.log"], timeout=timeout,
                               limit=64 << 20).get(GUEST_RUN + "/vhotplug.log") or ""
        return text[since:]

    def vhotplug_log_mark(self):
        """An offset for vhotplug_log(since=) and wait_log(since=): the log's length now."""
        return len(self.vhotplug_log())

    def wait_log(self, pattern, since=0, timeout=20, step=None):
        """Waits until the daemon's log (from offset `since`) matches the regular
        expression; returns the match (offsets are those of the whole log). Fails
        at once if the daemon exits. Polling here observes the daemon only."""
        rx = re.compile(pattern)
        step = step or "vhotplug log: /%s/" % pattern[:70]
        exited = []

        def check():
            m = rx.search(self.vhotplug_log(), since)
            if m:
                return m
            if self.vhotplug and self.agent.call("poll", pid=self.vhotplug).get("rc") is not None:
                exited.append(True)
                return True
            return None
        m = self.wait_for(check, timeout, step, interval=0.05)
        if exited:
            raise self.fail("vhotplug exited while waiting", step)
        return m

    def signal_vhotplug(self, sig=signal.SIGHUP):
        """Sends a signal to the guest daemon (SIGHUP: reload its configuration)."""
        if not self.vhotplug:
            raise LabError("vhotplug is not running in the guest")
        self.agent.call("signal", pid=self.vhotplug, sig=int(sig))

    def vhotplug_running(self):
        return bool(self.vhotplug) and self.agent.call("poll", pid=self.vhotplug).get("rc") is None

    def stop_vhotplug(self, sig=signal.SIGTERM, timeout=10):
        """Stop vhotplug (SIGTERM, then SIGKILL); returns its exit status."""
        if not self.vhotplug:
            return None
        pid, self.vhotplug = self.vhotplug, None
        self.agent.call("signal", pid=pid, sig=int(sig))
        r = self.agent.call("wait", timeout=timeout + 5, pid=pid, timeout_s=timeout)
        if r.get("rc") is None:
            self.agent.call("signal", pid=pid, sig=int(signal.SIGKILL))
            r = self.agent.call("wait", timeout=10, pid=pid, timeout_s=5)
        return r.get("rc")

    def vhotplug_cli(self, args, timeout=60, binary=None):
        """Run a vhotplug command (e.g. inspect --json) in the guest: (rc, stdout, stderr)."""
        binary = binary or find_vhotplug()
        cmd = " ".join(_shquote(a) for a in [binary] + list(args))
        return self.run(cmd, timeout=timeout, env={"LD_LIBRARY_PATH": SWIFT_RUNTIME},
                        step="vhotplug %s" % " ".join(args)[:50])


def _shquote(s):
    s = str(s)
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", s):
        return s
    return "'" + s.replace("'", "'\"'\"'") + "'"
