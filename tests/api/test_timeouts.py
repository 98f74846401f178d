"""Agents that never call back: the conductor fails the node after deploy_callback_timeout."""

from __future__ import annotations

import re
import time
from typing import Callable

from support import Ferricd

FAST_TIMEOUTS = {"deploy_callback_timeout": 2, "callback_check_interval": 1}
TIMEOUT = re.compile(r"timeout|timed out", re.I)


def waiting_node(server: Ferricd, phase: str) -> str:
    node = server.create_node(name=f"wait-{phase}", driver_info={"fake_wait": [phase]})
    server.create_port(node["uuid"], "52:54:00:77:00:01")
    return node["uuid"]


def test_deploy_callback_timeout(ferricd_factory: Callable[..., Ferricd]) -> None:
    server = ferricd_factory(conductor=FAST_TIMEOUTS)
    uuid = waiting_node(server, "deploy")
    server.make_available(uuid)
    server.provision(uuid, "active")
    node = server.wait_state(uuid, "wait call-back", timeout=10)
    assert node["target_provision_state"] == "active"
    node = server.wait_state(uuid, "deploy failed", timeout=15)
    assert node["last_error"] and TIMEOUT.search(node["last_error"]), node
    assert node["target_provision_state"] == "active"
    node = server.wait_state(uuid, "power off", field="power_state", timeout=10)
    assert node["reservation"] is None
    # The operator can recover the node: undeploy cleans it back to available.
    server.patch_node(uuid, [{"op": "remove", "path": "/driver_info/fake_wait"}])
    server.drive(uuid, "deleted", "available")


def test_clean_wait_timeout_sets_maintenance(ferricd_factory: Callable[..., Ferricd]) -> None:
    server = ferricd_factory(conductor=FAST_TIMEOUTS)
    uuid = waiting_node(server, "clean")
    server.drive(uuid, "manage", "manageable")
    server.provision(uuid, "provide")
    node = server.wait_state(uuid, "clean wait", timeout=10)
    assert node["target_provision_state"] == "available"
    node = server.wait_state(uuid, "clean failed", timeout=15)
    assert node["last_error"] and TIMEOUT.search(node["last_error"]), node
    assert node["target_provision_state"] == "available"
    # Ironic: a cleaning failure puts the node into maintenance with fault "clean failure".
    assert node["maintenance"] is True
    assert node["fault"] == "clean failure"


def test_inspect_wait_timeout(ferricd_factory: Callable[..., Ferricd]) -> None:
    server = ferricd_factory(conductor=FAST_TIMEOUTS)
    uuid = waiting_node(server, "inspect")
    server.drive(uuid, "manage", "manageable")
    server.provision(uuid, "inspect")
    server.wait_state(uuid, "inspect wait", timeout=10)
    node = server.wait_state(uuid, "inspect failed", timeout=15)
    assert node["last_error"] and TIMEOUT.search(node["last_error"]), node


def test_wait_call_back_survives_a_restart_then_times_out(ferricd_factory: Callable[..., Ferricd]) -> None:
    server = ferricd_factory(conductor={"deploy_callback_timeout": 6, "callback_check_interval": 1},
                             hostname="waiter")
    uuid = waiting_node(server, "deploy")
    server.make_available(uuid)
    server.provision(uuid, "active")
    server.wait_state(uuid, "wait call-back", timeout=10)
    server.kill()
    server.start()
    node = server.node(uuid)
    assert node["provision_state"] in ("wait call-back", "deploy failed"), node
    node = server.wait_state(uuid, "deploy failed", timeout=20)
    assert node["last_error"] and TIMEOUT.search(node["last_error"]), node


def test_callback_timeout_does_not_fire_early(ferricd_factory: Callable[..., Ferricd]) -> None:
    server = ferricd_factory(conductor={"deploy_callback_timeout": 30, "callback_check_interval": 1})
    uuid = waiting_node(server, "deploy")
    server.make_available(uuid)
    server.provision(uuid, "active")
    server.wait_state(uuid, "wait call-back", timeout=10)
    # Several check intervals pass; the 30 s timeout has not.
    time.sleep(4)
    node = server.node(uuid)
    assert node["provision_state"] == "wait call-back", node
    assert node["last_error"] is None


def test_a_node_never_heard_from_is_network_booted_again(ferricd_factory: Callable[..., Ferricd], tmp_path) -> None:
    """[conductor.pxe] boot_retry_timeout: a node that network-booted and
    never called back is set to boot from the network once more and
    rebooted, each time the timeout passes, until the callback timeout."""
    files = tmp_path / "deploy"
    files.mkdir()
    (files / "vmlinuz").write_bytes(b"k")
    (files / "initrd").write_bytes(b"r")
    server = ferricd_factory(conductor={
        "deploy_callback_timeout": 120, "callback_check_interval": 1, "automated_clean": False,
        "pxe": {"deploy_kernel": str(files / "vmlinuz"), "deploy_ramdisk": str(files / "initrd"),
                "boot_retry_timeout": 10},
    })
    node = server.create_node(name="retry-1", boot_interface="ipxe", deploy_interface="direct",
                              instance_info={"image_source": "http://192.0.2.1/disk.raw",
                                             "image_checksum": "a" * 64})
    uuid = node["uuid"]
    server.create_port(uuid, "52:54:00:77:00:09")
    server.make_available(uuid)
    server.provision(uuid, "active")
    server.wait_state(uuid, "wait call-back", timeout=10)
    boot = f"/v1/nodes/{uuid}/management/boot_device"
    assert server.get(boot)["boot_device"] == "pxe"
    # The firmware used its one network boot: it would now boot the disk.
    server.call("PUT", boot, 204, json={"boot_device": "disk", "persistent": False})
    assert "boot_retry_at" not in server.node(uuid)["driver_internal_info"]
    start = time.monotonic()
    deadline = start + 30
    while "boot_retry_at" not in server.node(uuid)["driver_internal_info"]:
        assert time.monotonic() < deadline, "no boot retry after 30 s"
        time.sleep(0.5)
    assert time.monotonic() - start >= 5, "retried before its timeout"
    node = server.node(uuid)
    assert node["provision_state"] == "wait call-back" and node["power_state"] == "power on", node
    assert server.get(boot) == {"boot_device": "pxe", "persistent": False}
    first = node["driver_internal_info"]["boot_retry_at"]
    # Ten seconds later, once more.
    deadline = time.monotonic() + 30
    while server.node(uuid)["driver_internal_info"]["boot_retry_at"] == first:
        assert time.monotonic() < deadline, "no second boot retry"
        time.sleep(0.5)
