#!/bin/sh
# vhotplug lab: the inner VMs (run in the outer guest).
#   innervm.sh start|stop|status NAME
#   innervm.sh start NAME [QEMU ARGUMENTS...]   (added to NAME's QEMU command line)
# NAME's daemon socket: /run/vhotplug-lab/NAME.qmp (for vhotplug);
# observer socket:      /run/vhotplug-lab/NAME-obs.qmp (for the lab).
# q35 + TCG, no disk (SeaBIOS runs and numbers the buses), a qemu-xhci
# controller (8 ports) and hot-pluggable root ports rp1..rp4 and ep1..ep2.
RUN=/run/vhotplug-lab
cmd=$1 name=$2
[ $# -ge 2 ] && shift 2
[ -n "$name" ] || { echo "usage: $0 start|stop|status NAME" >&2; exit 2; }
mkdir -p $RUN
pidfile=$RUN/$name.pid

running() {
    [ -f $pidfile ] || return 1
    pid=$(cat $pidfile 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -d /proc/$pid ] || return 1
    state=$(sed -n 's/^State:\s*\(.\).*/\1/p' /proc/$pid/status 2>/dev/null)
    [ "$state" != Z ] && [ -n "$state" ]
}

case "$cmd" in
start)
    if running; then echo "$name already running (pid $(cat $pidfile))"; exit 0; fi
    rm -f $RUN/$name.qmp $RUN/$name-obs.qmp $pidfile
    exec qemu-system-x86_64 -name "$name" \
        -machine q35 -accel tcg,tb-size=32 \
        -global ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off \
        -m 128 -nodefaults -display none -no-user-config \
        -device qemu-xhci,id=xhci,p2=8,p3=8 \
        -device pcie-root-port,id=rp1,chassis=1,bus=pcie.0 \
        -device pcie-root-port,id=rp2,chassis=2,bus=pcie.0 \
        -device pcie-root-port,id=rp3,chassis=3,bus=pcie.0 \
        -device pcie-root-port,id=rp4,chassis=4,bus=pcie.0 \
        -device pcie-root-port,id=ep1,chassis=5,bus=pcie.0 \
        -device pcie-root-port,id=ep2,chassis=6,bus=pcie.0 \
        -qmp unix:$RUN/$name.qmp,server=on,wait=off \
        -qmp unix:$RUN/$name-obs.qmp,server=on,wait=off \
        -pidfile $pidfile -daemonize "$@" \
        2>>$RUN/$name.log
    ;;
stop)
    running || { rm -f $pidfile; exit 0; }
    pid=$(cat $pidfile)
    kill -TERM "$pid"
    i=0
    while running; do
        i=$((i+1))
        [ $i -eq 100 ] && kill -KILL "$pid"
        [ $i -gt 200 ] && { echo "$name (pid $pid) does not stop" >&2; exit 1; }
        sleep 0.05
    done
    rm -f $pidfile $RUN/$name.qmp $RUN/$name-obs.qmp
    ;;
status)
    if running; then echo running; else echo stopped; exit 1; fi
    ;;
*) echo "usage: $0 start|stop|status NAME" >&2; exit 2 ;;
esac
