"""The `ipmi` hardware type through the `baremetal` CLI, against a real BMC:
OpenIPMI's ipmi_sim on a loopback UDP port, driven by ferricd's ipmitool
(Debian packages `openipmi` and `ipmitool`). The simulated chassis keeps its
power state and boot device in files: no VM is needed.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from support import Baremetal, Ferricd, wait_for

USERNAME = "admin"
PASSWORD = "Pw-0f-the-BMC-3e9a"

# Fast BMC settings for tests: ipmi_sim is not fragile (Ironic's defaults
# are a 5 s minimum interval and a 60 s retry timeout).
IPMI_OPTIONS = {
    "min_command_interval": 0.2,
    "command_retry_timeout": 3,
    "command_timeout": 3,
    "power_state_change_timeout": 10,
}

CHASSIS_SCRIPT = r"""#!/bin/sh
dir=$1
op=$2
shift 2
echo "$op $*" >> "$dir/calls.log"
case $op in
get)
    for parm in "$@"; do
        case $parm in
        power) echo "power:$(cat "$dir/power")" ;;
        boot) echo "boot:$(cat "$dir/boot")" ;;
        esac
    done
    ;;
set)
    while [ $# -ge 2 ]; do
        case $1 in
        power) echo "$2" > "$dir/power" ;;
        shutdown) [ "$2" = 1 ] && echo 0 > "$dir/power" ;;
        boot) echo "$2" > "$dir/boot" ;;
        esac
        shift 2
    done
    ;;
esac
exit 0
"""


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VirtualBmc:
    """One ipmi_sim on 127.0.0.1 with user admin and PASSWORD."""

    def __init__(self, workdir: Path) -> None:
        for program in ("ipmi_sim", "ipmitool"):
            if shutil.which(program) is None:
                pytest.fail(f"{program} is not installed: run scripts/install-deps (openipmi, ipmitool)",
                            pytrace=False)
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_udp_port()
        self.proc: subprocess.Popen | None = None
        script = self.dir / "chassis.sh"
        script.write_text(CHASSIS_SCRIPT)
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        (self.dir / "power").write_text("0\n")
        (self.dir / "boot").write_text("default\n")
        (self.dir / "state").mkdir(exist_ok=True)
        (self.dir / "bmc.emu").write_text(
            "mc_setbmc 0x20\n"
            "mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n"
            "sel_enable 0x20 1000 0x0a\n"
            "mc_enable 0x20\n"
        )
        auths = "none md2 md5 straight"
        (self.dir / "lan.conf").write_text(
            'name "ferric-api-bmc"\n'
            "set_working_mc 0x20\n"
            "startlan 1\n"
            f"  addr 127.0.0.1 {self.port}\n"
            "  priv_limit admin\n"
            f"  allowed_auths_callback {auths}\n"
            f"  allowed_auths_user {auths}\n"
            f"  allowed_auths_operator {auths}\n"
            f"  allowed_auths_admin {auths}\n"
            "  guid a123456789abcdefa123456789abcdef\n"
            "endlan\n"
            f'chassis_control "{script} {self.dir}"\n'
            f'user 1 true "" "" user 10 {auths}\n'
            f'user 2 true "{USERNAME}" "{PASSWORD}" admin 10 {auths}\n'
        )

    def start(self) -> "VirtualBmc":
        log = open(self.dir / "ipmi_sim.log", "a")
        self.proc = subprocess.Popen(
            ["ipmi_sim", "-c", str(self.dir / "lan.conf"), "-f", str(self.dir / "bmc.emu"),
             "-s", str(self.dir / "state"), "-n"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        env = dict(os.environ, IPMI_PASSWORD=PASSWORD, IPMITOOL_PASSWORD=PASSWORD)
        deadline = time.monotonic() + 20
        while True:
            probe = subprocess.run(
                ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(self.port), "-U", USERNAME,
                 "-E", "-C", "3", "-R", "1", "-N", "1", "power", "status"],
                env=env, capture_output=True, timeout=30,
            )
            if probe.returncode == 0:
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ipmi_sim did not answer: {(self.dir / 'ipmi_sim.log').read_text()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    @property
    def power(self) -> str:
        return (self.dir / "power").read_text().strip()

    def driver_info_args(self, password: str = PASSWORD) -> list[str]:
        args = []
        for key, value in (("ipmi_address", "127.0.0.1"), ("ipmi_port", str(self.port)),
                           ("ipmi_username", USERNAME), ("ipmi_password", password)):
            args += ["--driver-info", f"{key}={value}"]
        return args


@pytest.fixture
def bmc(tmp_path: Path) -> Iterator[VirtualBmc]:
    sim = VirtualBmc(tmp_path / "bmc").start()
    yield sim
    sim.stop()


def ipmi_ferricd(factory: Callable[..., Ferricd], **conductor) -> Ferricd:
    """A ferricd with the ipmi hardware type enabled and fast BMC settings."""
    conductor = {"enabled_hardware_types": ["fake-hardware", "ipmi"], **conductor}
    server = factory(conductor=conductor, start=False)
    with open(server.config, "a") as f:
        f.write("\n[conductor.ipmi]\n")
        for key, value in IPMI_OPTIONS.items():
            f.write(f"{key} = {value}\n")
    return server.start()


def enroll(baremetal: Baremetal, bmc: VirtualBmc, name: str, password: str = PASSWORD) -> str:
    return baremetal.json(
        "node", "create", "--driver", "ipmi", "--name", name, *bmc.driver_info_args(password)
    )["uuid"]


def test_power_on_off_reboot_and_boot_device(ferricd_factory: Callable[..., Ferricd], bmc: VirtualBmc,
                                             tmp_path: Path) -> None:
    server = ipmi_ferricd(ferricd_factory)
    baremetal = Baremetal(server.url, tmp_path / "home")
    drivers = [d["name"] for d in server.get("/v1/drivers")["drivers"]]
    assert "ipmi" in drivers, drivers

    uuid = enroll(baremetal, bmc, "ipmi-1")
    node = baremetal.json("node", "show", "ipmi-1")
    assert node["power_interface"] == "ipmitool"
    assert node["management_interface"] == "ipmitool"
    assert node["driver_info"]["ipmi_password"] == "******"
    results = {row["interface"]: row for row in baremetal.rows("node", "validate", "ipmi-1")}
    assert results["power"]["result"] is True, results["power"]
    assert results["management"]["result"] is True, results["management"]

    # Verification reads the power state from the BMC.
    baremetal.run("node", "manage", "ipmi-1", "--wait", "60")
    assert baremetal.json("node", "show", "ipmi-1")["power_state"] == "power off"

    baremetal.run("node", "power", "on", "ipmi-1")
    node = server.wait_state(uuid, "power on", field="power_state", timeout=30)
    assert node["target_power_state"] is None and node["last_error"] is None, node
    assert bmc.power == "1"
    assert baremetal.json("node", "show", "ipmi-1")["power_state"] == "power on"

    baremetal.run("node", "power", "off", "ipmi-1")
    server.wait_state(uuid, "power off", field="power_state", timeout=30)
    assert bmc.power == "0"

    baremetal.run("node", "reboot", "ipmi-1")
    wait_for(lambda: server.node(uuid), lambda n: n["power_state"] == "power on" and n["target_power_state"] is None,
             30, "the reboot to end with the node on")
    assert bmc.power == "1"

    # ipmi_sim keeps the boot device, not its flags: only the device reads back.
    baremetal.run("node", "boot", "device", "set", "ipmi-1", "pxe", "--persistent")
    assert baremetal.json("node", "boot", "device", "show", "ipmi-1")["boot_device"] == "pxe"
    assert (bmc.dir / "boot").read_text().strip() == "pxe"
    baremetal.run("node", "boot", "device", "set", "ipmi-1", "disk")
    assert baremetal.json("node", "boot", "device", "show", "ipmi-1") == {"boot_device": "disk", "persistent": False}
    assert (bmc.dir / "boot").read_text().strip() == "default"
    supported = server.get(f"/v1/nodes/{uuid}/management/boot_device/supported")["supported_boot_devices"]
    assert set(supported) >= {"pxe", "disk", "cdrom", "bios"}, supported


def test_invalid_driver_info_is_refused_with_a_clear_message(ferricd_factory: Callable[..., Ferricd],
                                                            tmp_path: Path) -> None:
    server = ipmi_ferricd(ferricd_factory)
    baremetal = Baremetal(server.url, tmp_path / "home")
    baremetal.json("node", "create", "--driver", "ipmi", "--name", "no-bmc")
    results = {row["interface"]: row for row in baremetal.rows("node", "validate", "no-bmc")}
    assert results["power"]["result"] is False
    assert "ipmi_address" in results["power"]["reason"], results["power"]
    proc = baremetal.fails("node", "power", "on", "no-bmc")
    assert "ipmi_address" in proc.stderr, proc.stderr

    baremetal.run("node", "set", "no-bmc", "--driver-info", "ipmi_address=127.0.0.1",
                  "--driver-info", "ipmi_priv_level=root")
    proc = baremetal.fails("node", "power", "on", "no-bmc")
    assert "privilege level" in proc.stderr, proc.stderr


def test_wrong_credentials_give_a_readable_last_error_without_the_password(
        ferricd_factory: Callable[..., Ferricd], bmc: VirtualBmc, tmp_path: Path) -> None:
    server = ipmi_ferricd(ferricd_factory)
    baremetal = Baremetal(server.url, tmp_path / "home")
    wrong = "Wr0ng-pa55word-5c1f"
    uuid = enroll(baremetal, bmc, "bad-creds", password=wrong)

    baremetal.run("node", "power", "on", "bad-creds")
    node = wait_for(lambda: server.node(uuid), lambda n: n["last_error"] and n["target_power_state"] is None,
                    30, "a last_error about the refused credentials")
    error = node["last_error"]
    assert f"127.0.0.1:{bmc.port}" in error, error
    assert "credentials" in error, error
    assert wrong not in error and PASSWORD not in error, error
    assert bmc.power == "0"

    # Verification fails the same way and the node stays in enroll.
    baremetal.run("node", "manage", "bad-creds")
    node = wait_for(lambda: server.node(uuid), lambda n: n["target_provision_state"] is None, 30,
                    "verification to end")
    assert node["provision_state"] == "enroll", node
    assert "credentials" in node["last_error"], node
    assert wrong not in node["last_error"], node
    assert wrong not in server.log() and PASSWORD not in server.log()


def test_a_stopped_bmc_puts_the_node_into_maintenance_until_it_answers(
        ferricd_factory: Callable[..., Ferricd], bmc: VirtualBmc, tmp_path: Path) -> None:
    server = ipmi_ferricd(ferricd_factory, power_sync_interval=1, power_failure_threshold=2)
    baremetal = Baremetal(server.url, tmp_path / "home")
    uuid = enroll(baremetal, bmc, "flaky-bmc")
    baremetal.run("node", "manage", "flaky-bmc", "--wait", "60")

    # The chassis comes on behind Ferric's back: the sync sees it.
    (bmc.dir / "power").write_text("1\n")
    server.wait_state(uuid, "power on", field="power_state", timeout=30)

    bmc.stop()
    node = wait_for(lambda: server.node(uuid), lambda n: n["maintenance"], 60,
                    "the node of the silent BMC to go into maintenance")
    assert node["fault"] == "power failure", node
    assert f"127.0.0.1:{bmc.port}" in node["maintenance_reason"], node
    assert PASSWORD not in node["maintenance_reason"], node
    assert node["power_state"] is None, node

    bmc.start()
    node = wait_for(lambda: server.node(uuid), lambda n: not n["maintenance"], 60,
                    "the node to leave maintenance once its BMC answers")
    assert node["fault"] is None, node
    assert node["power_state"] == "power on", node
    assert PASSWORD not in server.log()
