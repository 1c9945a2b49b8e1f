"""vhotplug lab guest agent: runs in the outer guest (started by stage2.sh).

Reads JSON requests, one per line, from the virtio-serial port "lab.agent" and
answers each with {"id": ..., "result": ...} or {"id": ..., "error": "..."}.
Requests run in threads, so a long command does not block the others.

ops: ping, status, run, spawn, poll, wait, signal, write, read, links, listdir,
devices, qmp.
Standard library only (started with python3 -S).
"""

import glob
import json
import os
import signal
import socket
import subprocess
import threading
import time

RUN = "/run/vhotplug-lab"
PORT_NAME = "lab.agent"

_procs = {}
_procs_lock = threading.Lock()
_write_lock = threading.Lock()


def uptime():
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def find_port():
    while True:
        for d in glob.glob("/sys/class/virtio-ports/*"):
            try:
                with open(d + "/name") as f:
                    if f.read().strip() == PORT_NAME:
                        dev = "/dev/" + os.path.basename(d)
                        if os.path.exists(dev):
                            return dev
            except OSError:
                pass
        time.sleep(0.05)


def read_text(path, limit=1 << 20):
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def attr(path):
    v = read_text(path)
    return v.strip() if v is not None else None


# ---------------------------------------------------------------------------
# QMP (the inner VMs' observer sockets)

def qmp_call(path, execute, arguments=None, timeout=30, wait_event=None):
    deadline = time.monotonic() + timeout
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(max(0.1, timeout))
    buf = [b""]
    events = []

    def recv_msg():
        while True:
            if b"\n" in buf[0]:
                line, buf[0] = buf[0].split(b"\n", 1)
                if line.strip():
                    return json.loads(line)
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("QMP %s on %s: no answer within %.1f s" % (execute, path, timeout))
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                raise TimeoutError("QMP %s on %s: no answer within %.1f s" % (execute, path, timeout)) from None
            if not chunk:
                raise ConnectionError("QMP %s closed the connection" % path)
            buf[0] += chunk

    def command(msg):
        s.sendall((json.dumps(msg) + "\n").encode())
        while True:
            m = recv_msg()
            if "event" in m:
                events.append(m)
                continue
            return m

    try:
        s.connect(path)
        recv_msg()   # greeting
        r = command({"execute": "qmp_capabilities"})
        if "error" in r:
            return r
        msg = {"execute": execute}
        if arguments:
            msg["arguments"] = arguments
        r = command(msg)
        if "error" in r or not wait_event:
            return r
        want, data = wait_event.get("event"), wait_event.get("data") or {}
        deadline = time.monotonic() + float(wait_event.get("timeout", 10))

        def matches(ev):
            return ev.get("event") == want and all(ev.get("data", {}).get(k) == v for k, v in data.items())
        found = next((e for e in events if matches(e)), None)
        while found is None:
            try:
                m = recv_msg()
            except (TimeoutError, socket.timeout):
                break
            if "event" in m and matches(m):
                found = m
        r["event"] = found
        return r
    finally:
        s.close()


# ---------------------------------------------------------------------------
# sysfs snapshot of the devices the lab plugs

def usb_devices():
    out = {}
    for p in glob.glob("/sys/bus/usb/devices/*"):
        name = os.path.basename(p)
        if ":" in name:
            continue
        d = {k: attr(os.path.join(p, k)) for k in ("idVendor", "idProduct", "busnum", "devnum", "product",
                                                  "manufacturer", "bDeviceClass", "speed")}
        ifaces = []
        for ip in sorted(glob.glob(p + "/" + name + ":*")):
            drv = os.path.join(ip, "driver")
            ifaces.append({"name": os.path.basename(ip), "class": attr(ip + "/bInterfaceClass"),
                           "driver": os.path.basename(os.readlink(drv)) if os.path.islink(drv) else None})
        d["interfaces"] = ifaces
        out[name] = d
    return out


def pci_devices():
    out = {}
    for p in glob.glob("/sys/bus/pci/devices/*"):
        drv = os.path.join(p, "driver")
        grp = os.path.join(p, "iommu_group")
        out[os.path.basename(p)] = {
            "vendor": attr(p + "/vendor"), "device": attr(p + "/device"), "class": attr(p + "/class"),
            "driver": os.path.basename(os.readlink(drv)) if os.path.islink(drv) else None,
            "iommu_group": os.path.basename(os.readlink(grp)) if os.path.islink(grp) else None,
        }
    return out


def input_devices():
    out = {}
    for p in glob.glob("/sys/class/input/event*"):
        real = os.path.realpath(p)
        parts = real.split("/")
        usb = pci = None
        for part in parts:
            if ":" not in part and "-" in part and part[0].isdigit() and not part.startswith("0000"):
                usb = part          # the deepest USB device name (e.g. 1-3.1)
        for part in parts:
            if part.count(":") == 2 and "." in part:
                pci = part          # the deepest PCI function
        out[os.path.basename(p)] = {"name": attr(p + "/device/name"), "usb": usb, "pci": pci,
                                    "devnode": "/dev/input/" + os.path.basename(p),
                                    "node": os.path.exists("/dev/input/" + os.path.basename(p))}
    return out


# ---------------------------------------------------------------------------

def op_status(req):
    vms = {}
    for vm in req.get("vms") or []:
        path = "%s/%s-obs.qmp" % (RUN, vm)
        if not os.path.exists(path):
            vms[vm] = "no socket"
            continue
        try:
            r = qmp_call(path, "query-status", timeout=3)
            vms[vm] = r.get("return", {}).get("status") or str(r.get("error"))
        except Exception as e:  # noqa: BLE001
            vms[vm] = "error: %s" % e
    marks = {}
    for line in (read_text(RUN + "/marks") or "").splitlines():
        k, _, v = line.partition(" ")
        try:
            marks[k] = float(v)
        except ValueError:
            pass
    return {"uptime": uptime(), "udev_settled": os.path.exists(RUN + "/udev.settled"), "vms": vms,
            "sanity": [l for l in (read_text(RUN + "/sanity") or "").splitlines() if l.strip()],
            "stage2_error": (read_text(RUN + "/stage2.error") or "").strip() or None, "marks": marks}


def _env(extra):
    env = dict(os.environ)
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.update(extra or {})
    return env


def op_run(req):
    p = subprocess.Popen(["/bin/sh", "-c", req["cmd"]], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True, env=_env(req.get("env")))
    timedout = False
    try:
        out, err = p.communicate((req.get("input") or "").encode(), timeout=req.get("timeout_s") or 30)
    except subprocess.TimeoutExpired:
        timedout = True
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
        out, err = p.communicate()
    return {"rc": None if timedout else p.returncode, "timedout": timedout,
            "stdout": out.decode("utf-8", "replace"), "stderr": err.decode("utf-8", "replace")}


def op_spawn(req):
    os.makedirs(os.path.dirname(req["log"]), exist_ok=True)
    logf = open(req["log"], "ab")
    p = subprocess.Popen(["/bin/sh", "-c", "exec " + req["cmd"]], stdin=subprocess.DEVNULL, stdout=logf,
                         stderr=subprocess.STDOUT, start_new_session=True, env=_env(req.get("env")))
    logf.close()
    with _procs_lock:
        _procs[p.pid] = p
    return {"pid": p.pid}


def _proc(pid):
    with _procs_lock:
        p = _procs.get(pid)
    if p is None:
        raise KeyError("no spawned process %s" % pid)
    return p


def op_poll(req):
    return {"rc": _proc(req["pid"]).poll()}


def op_wait(req):
    p = _proc(req["pid"])
    try:
        return {"rc": p.wait(req.get("timeout_s") or 10)}
    except subprocess.TimeoutExpired:
        return {"rc": None}


def op_signal(req):
    p = _proc(req["pid"])
    if p.poll() is None:
        try:
            os.kill(p.pid, req.get("sig", signal.SIGTERM))
        except ProcessLookupError:
            pass
    return {"rc": p.poll()}


def op_write(req):
    os.makedirs(os.path.dirname(req["path"]) or "/", exist_ok=True)
    with open(req["path"], "w") as f:
        f.write(req["data"])
    return {}


def op_read(req):
    limit = int(req.get("limit") or (1 << 20))
    return {p: read_text(p, limit) for p in req["paths"]}


def op_links(req):
    out = {}
    for p in req["paths"]:
        try:
            link = os.readlink(p)
        except OSError:
            link = None
        out[p] = {"readlink": link, "realpath": os.path.realpath(p), "exists": os.path.exists(p)}
    return out


def op_listdir(req):
    out = {}
    for p in req["paths"]:
        try:
            out[p] = sorted(os.listdir(p))
        except OSError:
            out[p] = None
    return out


def block_devices():
    out = {}
    for p in glob.glob("/sys/class/block/sd*"):
        name = os.path.basename(p)
        if os.path.exists(p + "/partition"):
            continue
        usb = None
        for part in os.path.realpath(p).split("/"):
            if ":" not in part and "-" in part and part[0].isdigit():
                usb = part
        out[name] = {"usb": usb, "devnode": "/dev/" + name, "node": os.path.exists("/dev/" + name),
                     "size": attr(p + "/size")}
    return out


def op_devices(_req):
    return {"usb": usb_devices(), "pci": pci_devices(), "input": input_devices(), "block": block_devices()}


def op_qmp(req):
    return qmp_call(req["socket"], req["execute"], req.get("arguments"), req.get("timeout_s") or 30,
                    req.get("wait_event"))


OPS = {"ping": lambda r: {"uptime": uptime(), "pid": os.getpid()}, "status": op_status, "run": op_run,
       "spawn": op_spawn, "poll": op_poll, "wait": op_wait, "signal": op_signal, "write": op_write,
       "read": op_read, "links": op_links, "listdir": op_listdir, "devices": op_devices, "qmp": op_qmp}


def main():
    dev = find_port()
    fd = os.open(dev, os.O_RDWR)

    def reply(msg):
        data = (json.dumps(msg) + "\n").encode()
        with _write_lock:
            view = memoryview(data)
            while view:
                try:
                    n = os.write(fd, view)
                except OSError:
                    return     # host not connected: the reply is lost, the host times out
                view = view[n:]

    def handle(req):
        rid = req.get("id")
        try:
            fn = OPS.get(req.get("op"))
            if fn is None:
                raise ValueError("unknown op %r" % req.get("op"))
            reply({"id": rid, "result": fn(req)})
        except Exception as e:  # noqa: BLE001
            reply({"id": rid, "error": "%s: %s" % (type(e).__name__, e)})

    print("lab-agent: listening on %s (uptime %.2f)" % (dev, uptime()), flush=True)
    buf = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            time.sleep(0.05)   # host not connected yet
            continue
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if not line.strip():
                continue
            try:
                req = json.loads(line)
            except ValueError:
                continue
            if req.get("op") == "ping":
                handle(req)     # answered inline: the readiness probe stays cheap
            else:
                threading.Thread(target=handle, args=(req,), daemon=True).start()


if __name__ == "__main__":
    main()
