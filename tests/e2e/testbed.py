"""A virtual bare-metal machine provisioned end to end, shared by the
end-to-end test and `make demo`.

Everything runs in a network namespace this module creates (and removes):
a bridge with a tap for the VM, ferricd listening on the bridge with the
dnsmasq it manages (DHCP, TFTP, iPXE chainloading), and OpenIPMI's ipmi_sim
as the VM's BMC, whose chassis script (chassis.sh) starts and kills a QEMU
VM under TCG. The Python process itself enters the namespace while the bed
is up, so the `baremetal` and `ferric` CLIs it runs reach ferricd there.

Nothing is mocked: the ipmi hardware type drives ipmitool, the node boots
iPXE from QEMU's ROM, fetches its script and the deploy ramdisk from
ferricd, the agent writes the image and the config drive, and the VM boots
its new disk.
"""

from __future__ import annotations

import ctypes
import functools
import http.server
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

SUBNET = "10.123.0"
HOST_IP = f"{SUBNET}.1"
MAC = "52:54:00:fe:00:01"
IPMI_USER = "admin"
IPMI_PASSWORD = "e2e-BMC-pass-4d2"
MARKER = "FERRIC-INSTANCE-BOOTED"
USER_DATA_PREFIX = "FERRIC-USER-DATA:"

# Modules the test instance loads to read its config drive.
INSTANCE_MODULES = ["virtio_pci", "virtio_blk", "isofs"]

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def log(message: str) -> None:
    print(f"[testbed {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    kwargs.setdefault("check", True)
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    try:
        return subprocess.run(cmd, **kwargs)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"{' '.join(cmd)} exited {e.returncode}: {e.stderr or ''}{e.stdout or ''}") from e


def require_tools() -> None:
    missing = [
        tool
        for tool in ["ip", "qemu-system-x86_64", "ipmi_sim", "ipmitool", "dnsmasq", "syslinux",
                     "mkfs.vfat", "mcopy", "sfdisk", "cpio", "busybox"]
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()
    ]
    if missing:
        raise RuntimeError(f"missing tools: {', '.join(missing)} (run scripts/install-deps)")
    if os.geteuid() != 0:
        raise RuntimeError("the testbed needs root (network namespaces, taps)")


def binary(env: str, name: str) -> Path:
    path = Path(os.environ.get(env) or ROOT / "target" / "debug" / name)
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: run `cargo build --workspace` (or set {env})")
    return path


def static_agent() -> Path:
    """The static ferric-agent: FERRIC_AGENT_STATIC, else built now."""
    given = os.environ.get("FERRIC_AGENT_STATIC")
    if given:
        return Path(given)
    log("building the static agent (scripts/build-agent-static)")
    out = run([str(ROOT / "scripts" / "build-agent-static")], capture_output=True).stdout.strip()
    return Path(out.splitlines()[-1])


def kernel() -> tuple[Path, Path]:
    """The Debian cloud kernel and its modules (scripts/fetch-kernel)."""
    lines = run([str(ROOT / "scripts" / "fetch-kernel")]).stdout.split()
    return Path(lines[0]), Path(lines[1])


# ---- the instance image ------------------------------------------------------


def module_closure(modules_dir: Path, names: list[str]) -> list[Path]:
    """The .ko files of `names` and what they need, dependencies first."""
    deps: dict[str, list[str]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        path, _, needs = line.partition(":")
        deps[path] = needs.split()
    by_name = {Path(p).name.removesuffix(".ko").replace("-", "_"): p for p in deps}
    order: list[str] = []

    def visit(path: str) -> None:
        for needed in deps[path]:
            visit(needed)
        if path not in order:
            order.append(path)

    for name in names:
        visit(by_name[name])
    return [modules_dir / p for p in order]


INSTANCE_INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /mnt
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in /lib/modules/*.ko; do :; done
while read -r m; do insmod "/lib/modules/$m"; done < /lib/modules/order
echo "%(marker)s on $(uname -r)" > /dev/console
dev=""
for i in $(seq 50); do dev=$(findfs LABEL=config-2 2>/dev/null) && break; sleep 0.2; done
if [ -n "$dev" ] && mount -t iso9660 -o ro "$dev" /mnt; then
    echo "%(prefix)s $(cat /mnt/openstack/latest/user_data)" > /dev/console
    echo "FERRIC-META-DATA: $(cat /mnt/openstack/latest/meta_data.json)" > /dev/console
else
    echo "FERRIC-NO-CONFIG-DRIVE" > /dev/console
fi
while true; do sleep 3600; done
""" % {"marker": MARKER, "prefix": USER_DATA_PREFIX}


def build_instance_image(workdir: Path, vmlinuz: Path, modules_dir: Path) -> tuple[Path, str]:
    """A 48 MiB whole-disk image: MBR, one FAT16 partition with SYSLINUX, the
    kernel and an initrd whose init prints the marker and the config drive's
    user_data. Returns the image and its sha256."""
    work = workdir / "instance"
    tree = work / "initrd"
    (tree / "bin").mkdir(parents=True, exist_ok=True)
    (tree / "lib" / "modules").mkdir(parents=True, exist_ok=True)
    shutil.copy(shutil.which("busybox") or "/bin/busybox", tree / "bin" / "busybox")
    (tree / "init").write_text(INSTANCE_INIT)
    (tree / "init").chmod(0o755)
    order = []
    for ko in module_closure(modules_dir, INSTANCE_MODULES):
        shutil.copy(ko, tree / "lib" / "modules" / ko.name)
        order.append(ko.name)
    (tree / "lib" / "modules" / "order").write_text("\n".join(order) + "\n")
    files = run(["find", ".", "-mindepth", "1"], cwd=tree).stdout
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree, input=files.encode(),
                          capture_output=True, check=True).stdout
    import gzip
    (work / "initrd.gz").write_bytes(gzip.compress(cpio, 6))
    (work / "syslinux.cfg").write_text(
        "SERIAL 0 115200\nDEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n"
        "  KERNEL /vmlinuz\n  INITRD /initrd.gz\n  APPEND console=ttyS0 quiet\n"
    )
    size_mib = 48
    part = work / "p1.img"
    part.unlink(missing_ok=True)
    run(["mkfs.vfat", "-F", "16", "-n", "FERRICOS", "-C", str(part), str((size_mib - 1) * 1024)])
    run(["syslinux", "--install", str(part)])
    shutil.copy(vmlinuz, work / "vmlinuz")
    run(["mcopy", "-i", str(part), str(work / "syslinux.cfg"), str(work / "vmlinuz"),
         str(work / "initrd.gz"), "::/"])
    image = workdir / "images" / "instance.img"
    image.parent.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size_mib << 20)
    run(["sfdisk", "--quiet", str(image)], input="label: dos\nstart=2048, type=6, bootable\n")
    with open(image, "r+b") as f, open(part, "rb") as p:
        f.seek(1 << 20)
        shutil.copyfileobj(p, f)
        mbr = Path("/usr/lib/syslinux/mbr/mbr.bin").read_bytes()[:440]
        f.seek(0)
        f.write(mbr)
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    return image, digest


RAMDISK_MARKER = "FERRIC-RAMDISK-INSTANCE"

RAMDISK_INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev
mount -t proc proc /proc
mount -t devtmpfs dev /dev
echo "%(marker)s cmdline: $(cat /proc/cmdline)" > /dev/console
while true; do sleep 3600; done
""" % {"marker": RAMDISK_MARKER}


def build_test_ramdisk(workdir: Path) -> Path:
    """An initramfs whose init prints RAMDISK_MARKER and its kernel command
    line: the instance of a ramdisk deploy."""
    tree = workdir / "test-ramdisk"
    (tree / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy(shutil.which("busybox") or "/bin/busybox", tree / "bin" / "busybox")
    (tree / "init").write_text(RAMDISK_INIT)
    (tree / "init").chmod(0o755)
    files = run(["find", ".", "-mindepth", "1"], cwd=tree).stdout
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree, input=files.encode(),
                          capture_output=True, check=True).stdout
    import gzip
    out = workdir / "test-ramdisk.gz"
    out.write_bytes(gzip.compress(cpio, 6))
    return out


INSTALLER_MARKER = "FERRIC-FAKE-INSTALLER:"

# A stand-in for the anaconda installer: it reads inst.ks from its kernel
# command line, brings its NIC up with DHCP, fetches the kickstart, and runs
# the kickstart's own %pre and last %post sections (their curl callbacks go
# through a curl-to-wget shim: busybox has no curl).
INSTALLER_INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp /usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
while read -r m; do insmod "/lib/modules/$m"; done < /lib/modules/order
say() { echo "%(marker)s $*" > /dev/console; }
for p in $(cat /proc/cmdline); do
    case "$p" in
        inst.ks=*) ks="${p#inst.ks=}" ;;
        inst.stage2=*) stage2="${p#inst.stage2=}" ;;
    esac
done
say "inst.ks=$ks inst.stage2=$stage2"
ip link set lo up
for i in $(seq 50); do [ -e /sys/class/net/eth0 ] && break; sleep 0.2; done
ip link set eth0 up
udhcpc -i eth0 -s /bin/dhcp-script -q -n -t 20 >/dev/null 2>&1 || say "no DHCP lease"
if ! wget -q -O /tmp/ks.cfg "$ks"; then say "no kickstart"; while true; do sleep 3600; done; fi
say "kickstart fetched ($(wc -l < /tmp/ks.cfg) lines)"
awk '/^%%pre/{f=1; next} /^%%end/{f=0} f' /tmp/ks.cfg > /tmp/pre.sh
awk '/^%%post/{f=1; buf=""; next} /^%%end/{if (f) last=buf; f=0; next} f{buf=buf $0 "\\n"} END{printf "%%s", last}' /tmp/ks.cfg > /tmp/post.sh
if sh /tmp/pre.sh; then say "pre done"; else say "pre failed"; fi
sleep 2
if sh /tmp/post.sh; then say "post done"; else say "post failed"; fi
while true; do sleep 3600; done
""" % {"marker": INSTALLER_MARKER}

DHCP_SCRIPT = """#!/bin/sh
case "$1" in bound|renew) ip addr add "$ip/${mask:-24}" dev "$interface" ;; esac
exit 0
"""

# curl as the kickstart calls it, done by busybox's wget: the -d body to the
# last URL, as JSON, with Ironic's API version header.
CURL_SHIM = """#!/bin/sh
data=""; url=""
while [ $# -gt 0 ]; do
    case "$1" in
        -d|--data) data="$2"; shift 2 ;;
        -H|-X|--header|--retry|--retry-delay) shift 2 ;;
        -*) shift ;;
        *) url="$1"; shift ;;
    esac
done
exec wget -q -O - --header "Content-Type: application/json" \\
    --header "X-OpenStack-Ironic-API-Version: 1.72" --post-data "$data" "$url"
"""


def build_fake_installer(workdir: Path, modules_dir: Path) -> Path:
    """The fake installer's initramfs (INSTALLER_INIT), with the modules of
    QEMU's virtio NIC."""
    tree = workdir / "fake-installer"
    for sub in ("bin", "usr/bin", "lib/modules"):
        (tree / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(shutil.which("busybox") or "/bin/busybox", tree / "bin" / "busybox")
    for path, text in [("init", INSTALLER_INIT), ("bin/dhcp-script", DHCP_SCRIPT), ("usr/bin/curl", CURL_SHIM)]:
        (tree / path).write_text(text)
        (tree / path).chmod(0o755)
    order = []
    for ko in module_closure(modules_dir, ["virtio_pci", "virtio_net"]):
        shutil.copy(ko, tree / "lib" / "modules" / ko.name)
        order.append(ko.name)
    (tree / "lib" / "modules" / "order").write_text("\n".join(order) + "\n")
    files = run(["find", ".", "-mindepth", "1"], cwd=tree).stdout
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree, input=files.encode(),
                          capture_output=True, check=True).stdout
    import gzip
    out = workdir / "fake-installer.gz"
    out.write_bytes(gzip.compress(cpio, 6))
    return out


def build_deploy_ramdisk(workdir: Path, ferric: Path, vmlinuz: Path, modules_dir: Path) -> Path:
    out = workdir / "deploy.initramfs"
    run([str(ferric), "ramdisk", "build", "--kernel", str(vmlinuz), "--modules", str(modules_dir),
         "--agent", str(static_agent()), "-o", str(out)])
    return out


@contextmanager
def serve_directory(root: Path, host: str = HOST_IP) -> Iterator[str]:
    """Python's http.server over `root` on a free port of `host`, in a
    thread, for the files a test's nodes or agents fetch; yields its URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer((host, 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://{host}:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


# ---- the namespace -----------------------------------------------------------


class Netns:
    """A network namespace with bridge br0 (HOST_IP/24, fd12:3::1/64) and tap0."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._home: int | None = None

    def create(self) -> "Netns":
        run(["ip", "netns", "add", self.name])
        for cmd in [
            ["link", "set", "lo", "up"],
            ["link", "add", "br0", "type", "bridge"],
            ["addr", "add", f"{HOST_IP}/24", "dev", "br0"],
            ["addr", "add", "fd12:3::1/64", "dev", "br0", "nodad"],
            ["link", "set", "br0", "up"],
            ["tuntap", "add", "dev", "tap0", "mode", "tap"],
            ["link", "set", "tap0", "master", "br0", "up"],
        ]:
            run(["ip", "-n", self.name, *cmd])
        return self

    def enter(self) -> None:
        """Moves this thread (and the processes it starts) into the namespace."""
        self._home = os.open("/proc/self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the test namespace")
        finally:
            os.close(target)

    def leave(self) -> None:
        if self._home is not None:
            _libc.setns(self._home, CLONE_NEWNET)
            os.close(self._home)
            self._home = None

    def delete(self) -> None:
        self.leave()
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


# ---- the BMC and the VM ------------------------------------------------------


class VirtualMachine:
    """The VM's directory: disk, console, events; chassis.sh acts on it."""

    def __init__(self, directory: Path, disk_mib: int = 4160, mem_mib: int = 512) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.disk = self.dir / "disk.img"
        with open(self.disk, "wb") as f:
            f.truncate(disk_mib << 20)
        (self.dir / "vm.env").write_text(
            f"TAP=tap0\nMAC={MAC}\nDISK={self.disk}\nMEM={mem_mib}\n"
        )
        (self.dir / "bootdev").write_text("default\n")
        self.console = self.dir / "console.log"
        self.console.touch()
        self.events = self.dir / "events.log"
        self.events.touch()

    def console_text(self) -> str:
        return self.console.read_text(errors="replace")

    def agent_peak_rss_mib(self, console: str) -> float | None:
        """The largest peak RSS the agent logged on the console."""
        import re

        values = [int(v) for v in re.findall(r"peak_rss_kib=(\d+)", console)]
        return round(max(values) / 1024, 1) if values else None

    def power_events(self) -> list[tuple[float, str]]:
        out = []
        for line in self.events.read_text().splitlines():
            stamp, _, what = line.partition(" ")
            out.append((float(stamp), what))
        return out

    def kill(self) -> None:
        try:
            pid = int((self.dir / "qemu.pid").read_text())
            os.kill(pid, signal.SIGKILL)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            pass

    def has_partition_table(self) -> bool:
        with open(self.disk, "rb") as f:
            head = f.read(1024)
        return head[510:512] == b"\x55\xaa" or head[512:520] == b"EFI PART"


class Bmc:
    """ipmi_sim on 127.0.0.1 inside the namespace, driving the VM."""

    def __init__(self, directory: Path, vm: VirtualMachine, port: int = 6230) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.vm = vm
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Bmc":
        auths = "none md2 md5 straight"
        (self.dir / "lan.conf").write_text(
            'name "ferric-e2e-bmc"\nset_working_mc 0x20\nstartlan 1\n'
            f"  addr 127.0.0.1 {self.port}\n  priv_limit admin\n"
            f"  allowed_auths_callback {auths}\n  allowed_auths_user {auths}\n"
            f"  allowed_auths_operator {auths}\n  allowed_auths_admin {auths}\n"
            "  guid a123456789abcdefa123456789abcdef\nendlan\n"
            f'chassis_control "{HERE / "chassis.sh"} {self.vm.dir}"\n'
            f'user 2 true "{IPMI_USER}" "{IPMI_PASSWORD}" admin 10 {auths}\n'
        )
        (self.dir / "bmc.emu").write_text(
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n"
            "sel_enable 0x20 1000 0x0a\nmc_enable 0x20\n"
        )
        (self.dir / "state").mkdir(exist_ok=True)
        logf = open(self.dir / "ipmi_sim.log", "a")
        self.proc = subprocess.Popen(
            ["ipmi_sim", "-c", str(self.dir / "lan.conf"), "-f", str(self.dir / "bmc.emu"),
             "-s", str(self.dir / "state"), "-n"],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
        )
        logf.close()
        env = dict(os.environ, IPMI_PASSWORD=IPMI_PASSWORD)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            probe = subprocess.run(
                ["ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", str(self.port),
                 "-U", IPMI_USER, "-E", "-R", "1", "-N", "1", "power", "status"],
                env=env, capture_output=True,
            )
            if probe.returncode == 0:
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"ipmi_sim did not answer: {(self.dir / 'ipmi_sim.log').read_text()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


# ---- ferricd -----------------------------------------------------------------


def toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    raise TypeError(value)


def write_toml(path: Path, tables: dict[str, dict[str, Any]]) -> None:
    lines = []
    for name, values in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")


class Server:
    """ferricd on HOST_IP inside the namespace, with its managed dnsmasq."""

    def __init__(self, directory: Path, kernel_path: Path, ramdisk: Path, images: Path, port: int = 6385):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.url = f"http://{HOST_IP}:{port}"
        self.log_path = self.dir / "ferricd.log"
        self.config = self.dir / "ferricd.toml"
        write_toml(self.config, {
            "conductor": {
                "enabled_hardware_types": ["ipmi"],
                "automated_clean": True,
                "deploy_callback_timeout": 300,
                "callback_check_interval": 2,
                "power_sync_interval": 10,
                "image_download_source": "local",
                "file_url_allowed_paths": [str(images)],
                "image_cache_dir": str(self.dir / "image-cache"),
            },
            "conductor.ipmi": {
                "min_command_interval": 0.2,
                "command_retry_timeout": 30,
                "default_boot_mode": "bios",
            },
            "conductor.pxe": {
                "deploy_kernel": str(kernel_path),
                "deploy_ramdisk": str(ramdisk),
                "kernel_append_params": "console=ttyS0",
                "default_boot_mode": "bios",
            },
            "dnsmasq": {
                "enabled": True,
                "interface": "br0",
                "dhcp_ranges": [f"{SUBNET}.100,{SUBNET}.199,255.255.255.0,1h", "fd12:3::,ra-only"],
                "state_dir": str(self.dir / "dnsmasq"),
                "extra_args": ["--enable-ra"],
            },
        })
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Server":
        import requests

        logf = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [str(binary("FERRICD_BIN", "ferricd")), "--config", str(self.config),
             "--listen", f"{HOST_IP}:{self.port}", "--database", f"sqlite://{self.dir / 'ferric.sqlite'}",
             "--hostname", "ferric-e2e", "--log-level", "info,ferric_conductor=debug"],
            cwd=self.dir, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            env=dict(os.environ, NO_COLOR="1"),
        )
        logf.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                requests.get(self.url + "/", timeout=2)
                return self
            except requests.RequestException:
                time.sleep(0.2)
        raise RuntimeError(f"ferricd did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def node(self, ident: str) -> dict:
        import requests

        resp = requests.get(f"{self.url}/v1/nodes/{ident}",
                            headers={"X-OpenStack-Ironic-API-Version": "latest"}, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---- timings -----------------------------------------------------------------


@dataclass
class Recorder:
    """Polls the node and notes when its state or step changes."""

    server: Server
    uuid: str
    changes: list[tuple[float, str, str | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> "Recorder":
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        last = None
        while not self._stop.is_set():
            try:
                node = self.server.node(self.uuid)
            except Exception:  # noqa: BLE001 - a busy server is retried
                time.sleep(0.2)
                continue
            step = (node.get("deploy_step") or {}).get("step") or (node.get("clean_step") or {}).get("step")
            now = (node["provision_state"], step)
            if now != last:
                self.changes.append((time.time(), now[0], now[1]))
                last = now
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()

    def first(self, state: str | None = None, step: str | None = None, after: float = 0) -> float | None:
        for t, s, st in self.changes:
            if t >= after and (state is None or s == state) and (step is None or st == step):
                return t
        return None


# ---- the whole bed -----------------------------------------------------------


class Testbed:
    """Builds the images, makes the namespace, starts the BMC and ferricd.
    Use as a context manager; everything is torn down on exit."""

    __test__ = False  # not a pytest class

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.netns = Netns(f"ferric-e2e-{os.getpid()}")
        self.vm = VirtualMachine(workdir / "vm")
        self.bmc = Bmc(workdir / "bmc", self.vm)
        self.server: Server | None = None
        self.image: Path | None = None
        self.image_sha256 = ""
        self.timings: dict[str, float] = {}

    def __enter__(self) -> "Testbed":
        require_tools()
        vmlinuz, modules = kernel()
        ferric = binary("FERRIC_BIN", "ferric")
        log("building the deploy ramdisk and the instance image")
        ramdisk = build_deploy_ramdisk(self.workdir, ferric, vmlinuz, modules)
        self.ramdisk = ramdisk
        self.image, self.image_sha256 = build_instance_image(self.workdir, vmlinuz, modules)
        try:
            self.netns.create()
            self.netns.enter()
            self.bmc.start()
            self.server = Server(self.workdir / "ferricd", vmlinuz, ramdisk, self.image.parent).start()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        log(f"ferricd at {self.server.url}, BMC at 127.0.0.1:{self.bmc.port}, namespace {self.netns.name}")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.vm.kill()
        if self.server:
            self.server.stop()
        self.bmc.stop()
        self.netns.delete()

    def baremetal(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        bin_ = ROOT / ".venv" / "bin" / "baremetal"
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env["HOME"] = str(self.workdir / "home")
        cmd = [str(bin_), "--os-auth-type", "none", "--os-endpoint", self.server.url, *args]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"baremetal {' '.join(args)} exited {proc.returncode}: {proc.stderr}{proc.stdout}")
        return proc

    def baremetal_json(self, *args: str) -> Any:
        return json.loads(self.baremetal(*args, "-f", "json").stdout)

    def enroll(self, name: str = "vm-1", boot_interface: str = "ipxe", deploy_interface: str = "direct") -> str:
        node = self.baremetal_json(
            "node", "create", "--driver", "ipmi", "--name", name,
            "--boot-interface", boot_interface, "--deploy-interface", deploy_interface,
            "--driver-info", "ipmi_address=127.0.0.1",
            "--driver-info", f"ipmi_port={self.bmc.port}",
            "--driver-info", f"ipmi_username={IPMI_USER}",
            "--driver-info", f"ipmi_password={IPMI_PASSWORD}",
            "--property", "capabilities=boot_mode:bios",
        )
        self.baremetal("port", "create", MAC, "--node", node["uuid"])
        return node["uuid"]

    def wait_state(self, uuid: str, state: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        node = {}
        while time.monotonic() < deadline:
            node = self.server.node(uuid)
            if node["provision_state"] == state:
                return node
            if node["provision_state"] in ("deploy failed", "clean failed", "error") and state != node["provision_state"]:
                raise RuntimeError(f"node went {node['provision_state']}: {node['last_error']}\n{self.diagnostics()}")
            time.sleep(0.5)
        raise RuntimeError(f"node not {state} after {timeout} s: {node.get('provision_state')}\n{self.diagnostics()}")

    def wait_console(self, text: str, timeout: float, after: int = 0) -> float:
        """Waits for `text` on the VM's console (from offset `after`); a
        console that says the config drive is missing fails at once."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            console = self.vm.console_text()[after:]
            if text in console:
                return time.time()
            if "FERRIC-NO-CONFIG-DRIVE" in console:
                raise RuntimeError(f"the instance found no config drive\n{self.diagnostics()}")
            time.sleep(0.2)
        raise RuntimeError(f"{text!r} not on the console after {timeout} s\n{self.diagnostics()}")

    def diagnostics(self) -> str:
        tail = lambda text, n=60: "\n".join(text.splitlines()[-n:])  # noqa: E731
        parts = [
            "--- console (tail) ---", tail(self.vm.console_text()),
            "--- power events ---", (self.vm.events.read_text()),
            "--- ferricd log (tail) ---", tail(self.server.log() if self.server else ""),
        ]
        qemu_err = self.vm.dir / "qemu.err"
        if qemu_err.exists():
            parts += ["--- qemu errors ---", qemu_err.read_text()]
        return "\n".join(parts)
