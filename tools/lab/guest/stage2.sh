#!/bin/sh
# vhotplug lab, stage 2: PID 1 of the outer guest, in the host's root
# (9p, read-only, under a tmpfs overlay). Mounts the guest's own /run, /dev/pts,
# checks that /proc, /sys and /run are the guest's, starts systemd-udevd, the
# inner VMs (innervm.sh) and the guest agent (agent.py) on the virtio-serial
# port "lab.agent". Everything it writes goes to /run/vhotplug-lab.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8
LAB=$(dirname "$0")
RUN=/run/vhotplug-lab

mount -t tmpfs -o mode=0755,nosuid,nodev,size=256m tmpfs /run
mkdir -p $RUN /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=000 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
# The repository may live under /tmp on the host (a CI clone): it stays visible
# at the same path once /tmp is the guest's own tmpfs.
REPO=$(cd "$LAB/../../.." && pwd)
case "$REPO" in /tmp/*) mkdir -p /run/lab-repo && mount --bind "$REPO" /run/lab-repo ;; esac
mount -t tmpfs -o mode=1777 tmpfs /tmp 2>/dev/null || true
case "$REPO" in /tmp/*) mkdir -p "$REPO" && mount --bind /run/lab-repo "$REPO" ;; esac

mark() { read u _ < /proc/uptime; echo "$1 $u" >> $RUN/marks; echo "lab-stage2: $1 (uptime $u)"; }
mark stage2

VMS=none
for arg in $(cat /proc/cmdline); do
    case "$arg" in lab.vms=*) VMS="${arg#lab.vms=}" ;; esac
done

# Sanity: the chroot's /proc, /sys, /run, /dev are the guest's, not the host's over 9p.
{
    [ "$(stat -f -c %T /proc)" = proc ] || echo "/proc is $(stat -f -c %T /proc), not the guest's procfs"
    [ "$(stat -f -c %T /sys)" = sysfs ] || echo "/sys is $(stat -f -c %T /sys), not the guest's sysfs"
    [ "$(stat -f -c %T /run)" = tmpfs ] || echo "/run is $(stat -f -c %T /run), not a tmpfs"
    grep -q 'lab.stage2=' /proc/cmdline || echo "/proc/cmdline is not the guest's"
    [ -d /sys/bus/usb ] || echo "/sys/bus/usb missing (usbcore not loaded?)"
    [ -d /sys/bus/pci/drivers/vfio-pci ] || echo "vfio-pci driver missing"
    grep -q ' / overlay ' /proc/mounts || echo "root is not an overlay: $(grep ' / ' /proc/mounts | tail -1)"
    touch /var/lib/.lab-write-test 2>/dev/null && rm -f /var/lib/.lab-write-test || echo "root is not writable"
} > $RUN/sanity 2>&1
mkdir -p /var/lib/vhotplug

# udev, as on a real host
(
    /lib/systemd/systemd-udevd --daemon >$RUN/udevd.log 2>&1 || { echo "systemd-udevd failed" > $RUN/stage2.error; exit 1; }
    mark udevd
    udevadm trigger --type=subsystems --action=add
    udevadm trigger --type=devices --action=add
    udevadm settle --timeout=60
    mark udev-settled
    touch $RUN/udev.settled
) &

# the inner VMs
if [ "$VMS" != none ]; then
    for vm in $(echo "$VMS" | tr , ' '); do
        ( "$LAB/innervm.sh" start "$vm" && mark "vm-$vm" ) &
    done
fi

# the agent, restarted if it dies (this shell, PID 1, reaps orphans meanwhile)
while :; do
    mark agent-start
    /usr/bin/python3 -S -B -u "$LAB/agent.py"
    echo "lab-stage2: agent exited with status $?; restarting"
    sleep 1
done
