"""The custom-agent deploy interface with Metal3's customDeploy form: the real
`baremetal` CLI deploys with `deploy_steps: [{interface: deploy, step:
install_coreos, priority: 80}]`, the real ferric-agent (a process here, a loop
device as the node's disk) runs the real coreos-installer, which writes a
CoreOS-like image (a GPT with an ext4 `boot` partition) served over HTTP and
puts the Ignition config from the config drive's user_data on its boot
partition. Needs root, loop devices, sgdisk, mkfs.ext4, debugfs, partx and
unshare, as CI has, and coreos-installer (scripts/install-deps builds it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from support import Baremetal, Ferricd, binary, mac, serve_directory

ROOT = Path(__file__).resolve().parents[2]
IGNITION = {"ignition": {"version": "3.4.0"},
            "storage": {"files": [{"path": "/etc/ferric-marker", "contents": {"source": "data:,ferric-7e21"}}]}}


def coreos_installer() -> Path:
    for candidate in [os.environ.get("COREOS_INSTALLER"), ROOT / ".work/coreos-installer/bin/coreos-installer",
                      shutil.which("coreos-installer")]:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    if os.environ.get("CI"):
        pytest.fail("coreos-installer is missing: scripts/install-deps builds it")
    pytest.skip("coreos-installer is not installed (scripts/install-deps builds it)")


def with_udev(real: Path, directory: Path) -> Path:
    """coreos-installer waits for udev, then finds the `boot` filesystem in
    udev's database. Without udevd (containers, this project's VMs, whose
    kernel parses no partition tables either), the installer runs in a mount
    namespace of its own with an empty /run, udev's control file and a
    `udevadm settle` that adds the partitions (partx) and records their
    filesystems as udev's blkid builtin would. With udevd, it runs as is."""
    if Path("/run/udev/control").exists():
        return real
    shim = directory / "udev-shim"
    shim.mkdir()
    (shim / "udevadm").write_text(
        "#!/bin/sh\n"
        '[ "$1" = settle ] || exit 0\n'
        'disk=$FERRIC_TEST_DISK\n'
        'partx -u "$disk" >/dev/null 2>&1 || partx -a "$disk" >/dev/null 2>&1 || true\n'
        'for part in "$disk"p*; do\n'
        '    [ -b "$part" ] || continue\n'
        '    devno=$(cat "/sys/class/block/${part##*/}/dev")\n'
        '    blkid -p -o udev "$part" | sed "s/^/E:/" >"/run/udev/data/b$devno"\n'
        "done\n"
    )
    wrapper = directory / "coreos-installer"
    wrapper.write_text(
        "#!/bin/sh\n"
        'for arg; do FERRIC_TEST_DISK=$arg; done\n'
        "export FERRIC_TEST_DISK\n"
        "exec unshare --mount --propagation private /bin/sh -c '\n"
        "    mount -t tmpfs ferric-test-udev /run &&\n"
        "    mkdir -p /run/udev/data && : >/run/udev/control &&\n"
        f"    PATH=\"$0:$PATH\" exec \"$@\"' '{shim}' '{real}' \"$@\"\n"
    )
    for script in (shim / "udevadm", wrapper):
        script.chmod(0o755)
    return wrapper


@pytest.fixture
def loop_disk(tmp_path: Path) -> Iterator[str]:
    backing = tmp_path / "target.img"
    with open(backing, "wb") as f:
        f.truncate(256 << 20)
    device = subprocess.run(["losetup", "--find", "--show", "--partscan", str(backing)],
                            check=True, capture_output=True, text=True).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["partx", "-d", device], capture_output=True)
        subprocess.run(["losetup", "-d", device], check=False)


@pytest.fixture
def coreos_image(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A 64 MiB CoreOS-like raw image (GPT, an ext4 partition labelled boot
    at 1 MiB, a patterned root partition) over HTTP."""
    www = tmp_path / "www"
    www.mkdir()
    image = www / "coreos.raw"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["sgdisk", "-n", "1:2048:+32M", "-c", "1:boot", "-n", "2:0:0", "-c", "2:root", str(image)],
                   check=True, capture_output=True)
    boot = tmp_path / "boot.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "boot", str(boot), "32M"], check=True, capture_output=True)
    with open(image, "r+b") as f, open(boot, "rb") as b:
        f.seek(1 << 20)
        shutil.copyfileobj(b, f)
        f.seek(40 << 20)
        f.write(b"coreos-root" * 10_000)
    with serve_directory(www) as url:
        yield f"{url}/coreos.raw", image


def test_metal3_custom_deploy_runs_install_coreos_with_the_real_installer(
    server: Ferricd, baremetal: Baremetal, loop_disk: str, coreos_image: tuple[str, Path], tmp_path: Path
) -> None:
    url, image = coreos_image
    installer = with_udev(coreos_installer(), tmp_path)
    node = baremetal.json(
        "node", "create", "--driver", "fake-hardware", "--name", "coreos-1",
        "--deploy-interface", "custom-agent",
        "--property", "root_device=" + json.dumps({"name": loop_disk}),
    )
    uuid = node["uuid"]
    address = mac(90)
    baremetal.run("port", "create", address, "--node", uuid)
    baremetal.run("node", "set", "coreos-1", "--instance-info", f"image_source={url}")
    # No image checksum is needed: custom-agent validates no image.
    rows = {r["interface"]: r for r in baremetal.rows("node", "validate", "coreos-1")}
    assert rows["deploy"]["result"] is True, rows["deploy"]

    agent_log = tmp_path / "agent.log"
    log = open(agent_log, "w")
    agent = subprocess.Popen(
        [str(binary("FERRIC_AGENT_BIN", "ferric-agent")), "--no-power", "--cmdline", "/dev/null",
         "--api-url", server.url, "--mac", address, "--listen", "127.0.0.1:0",
         "--advertise-host", "127.0.0.1", "--include-loop-devices", "--device", loop_disk],
        stdout=log, stderr=subprocess.STDOUT,
        env=dict(os.environ, FERRIC_COREOS_INSTALLER=str(installer)),
    )
    try:
        baremetal.run("node", "manage", "coreos-1", "--wait", "60")
        baremetal.run("node", "provide", "coreos-1", "--wait", "120", timeout=180)
        # Outside the agent's window (after prepare_instance_boot, 60): refused.
        proc = baremetal.fails(
            "node", "deploy", "coreos-1", "--deploy-steps",
            json.dumps([{"interface": "deploy", "step": "install_coreos", "args": {}, "priority": 50}]))
        assert "61 to 99" in proc.stderr, proc.stderr
        steps = [{"interface": "deploy", "step": "install_coreos", "args": {}, "priority": 80}]
        baremetal.run("node", "deploy", "coreos-1", "--deploy-steps", json.dumps(steps),
                      "--config-drive", json.dumps({"user_data": IGNITION}), "--wait", "240", timeout=300)
        shown = baremetal.json("node", "show", "coreos-1")
        assert shown["provision_state"] == "active", (shown, agent_log.read_text()[-4000:])
        assert shown["last_error"] is None

        # The image is on the disk: its GPT and root partition.
        with open(loop_disk, "rb") as disk, open(image, "rb") as source:
            assert disk.read(1 << 20) == source.read(1 << 20)
            disk.seek(40 << 20)
            source.seek(40 << 20)
            assert disk.read(1 << 20) == source.read(1 << 20)
        # The Ignition config landed on the boot partition.
        boot = tmp_path / "boot-after.ext4"
        with open(loop_disk, "rb") as disk, open(boot, "wb") as out:
            disk.seek(1 << 20)
            out.write(disk.read(32 << 20))
        config = subprocess.run(["debugfs", "-R", "cat /ignition/config.ign", str(boot)],
                                check=True, capture_output=True, text=True).stdout
        assert json.loads(config) == IGNITION, config
        # The installer ran (its output is in the agent's log); the Ignition
        # config itself is in no log.
        text = agent_log.read_text()
        assert "install_coreos" in text and "ferric-7e21" not in text, text[-4000:]
        assert "ferric-7e21" not in server.log()
    finally:
        agent.kill()
        agent.wait()
        log.close()
