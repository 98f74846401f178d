"""A direct deploy driven by the real `baremetal` CLI: fake power, the real
ferric-agent as a process, an image served by Python's http.server, and a loop
device as the node's disk (root device hint by name). Needs root, as CI has."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from support import Baremetal, Ferricd, binary, mac, serve_directory


@pytest.fixture
def loop_disk(tmp_path: Path) -> Iterator[str]:
    backing = tmp_path / "target.img"
    with open(backing, "wb") as f:
        f.truncate(256 << 20)
    device = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


@pytest.fixture
def image_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """http.server over a directory holding a small GPT disk image as qcow2."""
    images = tmp_path / "images"
    images.mkdir()
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["sgdisk", "-n", "1:2048:0", str(raw)], check=True, capture_output=True)
    with open(raw, "r+b") as f:
        f.seek(2 << 20)
        f.write(b"ferric" * 100_000)
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(images / "disk.qcow2")], check=True)
    with serve_directory(images) as url:
        yield url, raw


def test_direct_deploy_with_the_baremetal_cli(
    server: Ferricd, baremetal: Baremetal, loop_disk: str, image_server: tuple[str, Path], tmp_path: Path
) -> None:
    base, raw = image_server
    qcow2 = (tmp_path / "images" / "disk.qcow2").read_bytes()
    node = baremetal.json(
        "node", "create", "--driver", "fake-hardware", "--name", "direct-1",
        "--deploy-interface", "direct",
        "--property", "root_device=" + json.dumps({"name": loop_disk}),
    )
    uuid = node["uuid"]
    address = mac(77)
    baremetal.run("port", "create", address, "--node", uuid)
    baremetal.run("node", "set", "direct-1",
                  "--instance-info", f"image_source={base}/disk.qcow2",
                  "--instance-info", "image_os_hash_algo=sha256",
                  "--instance-info", "image_os_hash_value=" + hashlib.sha256(qcow2).hexdigest(),
                  "--instance-info", "image_disk_format=qcow2")
    log = open(tmp_path / "agent.log", "w")
    agent = subprocess.Popen(
        [str(binary("FERRIC_AGENT_BIN", "ferric-agent")), "--no-power", "--cmdline", "/dev/null",
         "--api-url", server.url, "--mac", address, "--listen", "127.0.0.1:0",
         "--advertise-host", "127.0.0.1", "--include-loop-devices", "--device", loop_disk],
        stdout=subprocess.DEVNULL, stderr=log,
    )
    try:
        baremetal.run("node", "manage", "direct-1", "--wait", "60")
        baremetal.run("node", "provide", "direct-1", "--wait", "120", timeout=180)
        drive = {"meta_data": {"hostname": "direct-1"}, "user_data": "#cloud-config\n"}
        # One agent serves both operations: when cleaning ends its token is
        # forgotten and it looks itself up again for the deploy.
        baremetal.run("node", "deploy", "direct-1", "--config-drive", json.dumps(drive), "--wait", "180", timeout=240)
        shown = baremetal.json("node", "show", "direct-1")
        assert shown["provision_state"] == "active", (shown, (tmp_path / "agent.log").read_text())
        assert shown["power_state"] == "power on"
        # The image's data is on the disk and a config-2 partition at its end.
        with open(loop_disk, "rb") as disk, open(raw, "rb") as source:
            disk.seek(2 << 20)
            source.seek(2 << 20)
            assert disk.read(1 << 20) == source.read(1 << 20)
        table = json.loads(subprocess.run(["sfdisk", "-J", loop_disk], check=True, capture_output=True, text=True).stdout)
        last = table["partitiontable"]["partitions"][-1]
        label = subprocess.run(
            ["blkid", "-p", "-o", "value", "-s", "LABEL", "-O", str(last["start"] * 512), loop_disk],
            capture_output=True, text=True,
        ).stdout.strip()
        assert label == "config-2"
    finally:
        agent.kill()
        agent.wait()
        log.close()


def test_operator_steps_run_in_manual_cleaning(
    server: Ferricd, baremetal: Baremetal, loop_disk: str, tmp_path: Path
) -> None:
    """An operator's step from the agent's step directory, unknown to the
    conductor until the agent is up, runs in manual cleaning with its args
    on stdin; one that fails, and one the agent does not offer, fail the
    cleaning with a readable last_error."""
    steps = tmp_path / "steps.d"
    steps.mkdir()
    marker = tmp_path / "marker.json"
    (steps / "write_marker.toml").write_text(
        'step = "write_marker"\n'
        'kinds = ["clean"]\n'
        'command = ["/bin/sh", "-c", "cat > \\"$MARKER\\"; echo \'{\\"written\\": true}\'"]\n'
        f'environment = {{ MARKER = "{marker}" }}\n'
        "[argsinfo.text]\n"
        'description = "What to write"\n'
        "required = true\n"
    )
    (steps / "always_fails.toml").write_text(
        'step = "always_fails"\n'
        'kinds = ["clean"]\n'
        'command = ["/bin/sh", "-c", "echo the firmware refused >&2; exit 3"]\n'
    )
    node = baremetal.json(
        "node", "create", "--driver", "fake-hardware", "--name", "steps-1",
        "--deploy-interface", "direct",
        "--property", "root_device=" + json.dumps({"name": loop_disk}),
    )
    address = mac(78)
    baremetal.run("port", "create", address, "--node", node["uuid"])
    log = open(tmp_path / "agent.log", "w")
    agent = subprocess.Popen(
        [str(binary("FERRIC_AGENT_BIN", "ferric-agent")), "--no-power", "--cmdline", "/dev/null",
         "--api-url", server.url, "--mac", address, "--listen", "127.0.0.1:0",
         "--advertise-host", "127.0.0.1", "--include-loop-devices", "--device", loop_disk,
         "--step-dir", str(steps)],
        stdout=subprocess.DEVNULL, stderr=log,
    )
    try:
        baremetal.run("node", "manage", "steps-1", "--wait", "60")
        step = [{"interface": "deploy", "step": "write_marker", "args": {"text": "hello"}}]
        baremetal.run("node", "clean", "steps-1", "--clean-steps", json.dumps(step), "--wait", "120", timeout=180)
        shown = baremetal.json("node", "show", "steps-1")
        assert shown["provision_state"] == "manageable", (shown, (tmp_path / "agent.log").read_text())
        assert json.loads(marker.read_text()) == {"text": "hello"}
        cached = shown["driver_internal_info"]["agent_cached_clean_steps"]
        assert any(s["step"] == "write_marker" for s in cached), cached

        failing = [{"interface": "deploy", "step": "always_fails"}]
        baremetal.run("node", "clean", "steps-1", "--clean-steps", json.dumps(failing), "--wait", "120",
                      check=False, timeout=180)
        shown = baremetal.json("node", "show", "steps-1")
        assert shown["provision_state"] == "clean failed", shown
        assert "exit" in shown["last_error"] and "the firmware refused" in shown["last_error"], shown["last_error"]

        # A failed cleaning leaves the node in maintenance, as in Ironic.
        assert shown["maintenance"], shown
        baremetal.run("node", "maintenance", "unset", "steps-1")
        baremetal.run("node", "manage", "steps-1", "--wait", "60")
        unknown = [{"interface": "deploy", "step": "no_such_step"}]
        baremetal.run("node", "clean", "steps-1", "--clean-steps", json.dumps(unknown), "--wait", "120",
                      check=False, timeout=180)
        shown = baremetal.json("node", "show", "steps-1")
        assert shown["provision_state"] == "clean failed", shown
        assert "no_such_step" in shown["last_error"] and "agent" in shown["last_error"], shown["last_error"]
    finally:
        agent.kill()
        agent.wait()
        log.close()
