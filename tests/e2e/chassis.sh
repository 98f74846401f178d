#!/bin/bash
# The chassis of a virtual machine, for OpenIPMI's ipmi_sim (its
# `chassis_control` program): ipmi_sim runs `chassis.sh VMDIR get PARM...`
# (answering `PARM:VALUE` lines) and `chassis.sh VMDIR set PARM VALUE...`.
# Power on starts QEMU (TCG) with the stored boot device; power off kills it,
# as pulling the plug does; soft off asks the guest over QMP. VMDIR/vm.env
# names the tap, the MAC, the disk and the memory; events.log records each
# power change with its time.
set -u
dir=$1
op=$2
shift 2
# shellcheck source=/dev/null
. "$dir/vm.env"
pidfile=$dir/qemu.pid

log() { echo "$(date +%s.%N) $*" >>"$dir/events.log"; }

# A killed QEMU stays a zombie for a moment: that is off already.
running() {
    local pid
    pid=$(cat "$pidfile" 2>/dev/null) || return 1
    [[ -r /proc/$pid/stat ]] || return 1
    local state
    state=$(sed 's/^.*) //' "/proc/$pid/stat" | cut -d' ' -f1)
    [[ $state != Z && $state != X ]]
}

boot_device() { cat "$dir/bootdev" 2>/dev/null || echo default; }

start() {
    local order
    case $(boot_device) in
    pxe) order=n ;;
    cdrom) order=d ;;
    *) order=c ;;
    esac
    rm -f "$pidfile"
    qemu-system-x86_64 -accel tcg -m "$MEM" -smp 1 -nodefaults -display none -no-reboot \
        -daemonize -pidfile "$pidfile" \
        -chardev "file,id=console,path=$dir/console.log,append=on" -serial chardev:console \
        -qmp "unix:$dir/qmp.sock,server=on,wait=off" \
        -netdev "tap,id=n0,ifname=$TAP,script=no,downscript=no" \
        -device "virtio-net-pci,netdev=n0,mac=$MAC" \
        -device virtio-rng-pci \
        -drive "file=$DISK,if=virtio,format=raw,cache=unsafe" \
        -boot "order=$order" 2>>"$dir/qemu.err" || { log "qemu failed"; return 1; }
    log "power on boot=$(boot_device)"
}

stop() {
    local pid
    pid=$(cat "$pidfile" 2>/dev/null) && kill -9 "$pid" 2>/dev/null
    log "power off"
}

soft_off() {
    timeout 5 python3 - "$dir/qmp.sock" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b'{"execute":"qmp_capabilities"}\n{"execute":"system_powerdown"}\n')
s.recv(4096)
PY
    log "soft off requested"
}

case $op in
get)
    for parm in "$@"; do
        case $parm in
        power) if running; then echo power:1; else echo power:0; fi ;;
        boot) echo "boot:$(boot_device)" ;;
        esac
    done
    ;;
set)
    while (($# >= 2)); do
        case $1 in
        power)
            if [[ $2 == 1 ]]; then
                running || start
            elif running; then
                stop
            fi
            ;;
        reset) if running; then stop; sleep 0.2; fi; start ;;
        boot) echo "$2" >"$dir/bootdev"; log "boot device $2" ;;
        shutdown) running && soft_off ;;
        esac
        shift 2
    done
    ;;
esac
exit 0
