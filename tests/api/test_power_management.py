"""Power, boot device, maintenance and validation through the `baremetal` CLI."""

from __future__ import annotations

import pytest

from support import Baremetal, Ferricd, wait_for


@pytest.fixture
def node(server: Ferricd, baremetal: Baremetal) -> str:
    uuid = baremetal.json("node", "create", "--driver", "fake-hardware", "--name", "pm-1")["uuid"]
    baremetal.run("node", "manage", "pm-1", "--wait", "60")
    return uuid


def test_power_on_and_off(server: Ferricd, baremetal: Baremetal, node: str) -> None:
    baremetal.run("node", "power", "on", "pm-1")
    n = server.wait_state(node, "power on", field="power_state", timeout=20)
    assert n["target_power_state"] is None
    assert baremetal.json("node", "show", "pm-1")["power_state"] == "power on"

    baremetal.run("node", "power", "off", "pm-1")
    server.wait_state(node, "power off", field="power_state", timeout=20)
    assert baremetal.json("node", "show", "pm-1")["power_state"] == "power off"

    baremetal.run("node", "reboot", "pm-1")
    server.wait_state(node, "power on", field="power_state", timeout=20)
    states = server.get(f"/v1/nodes/{node}/states")
    assert states["power_state"] == "power on"
    assert states["target_power_state"] is None
    assert states["provision_state"] == "manageable"


def test_power_failure_reports_last_error(server: Ferricd, baremetal: Baremetal, node: str) -> None:
    baremetal.run("node", "power", "off", "pm-1")
    server.wait_state(node, "power off", field="power_state", timeout=20)
    server.patch_node(node, [{"op": "add", "path": "/driver_info/fake_fail", "value": ["power"]}])
    # The API accepts the request (202); the conductor records the failure.
    baremetal.run("node", "power", "on", "pm-1")
    n = wait_for(lambda: server.node(node), lambda n: n["last_error"], 20, "a last_error about the power failure")
    assert n["power_state"] == "power off"
    assert n["target_power_state"] is None


def test_boot_device(server: Ferricd, baremetal: Baremetal, node: str) -> None:
    supported = baremetal.json("node", "boot", "device", "show", "pm-1", "--supported")
    assert "pxe" in supported["supported_boot_devices"] and "disk" in supported["supported_boot_devices"]

    baremetal.run("node", "boot", "device", "set", "pm-1", "pxe", "--persistent")
    assert baremetal.json("node", "boot", "device", "show", "pm-1") == {"boot_device": "pxe", "persistent": True}
    baremetal.run("node", "boot", "device", "set", "pm-1", "disk")
    assert baremetal.json("node", "boot", "device", "show", "pm-1") == {"boot_device": "disk", "persistent": False}

    proc = baremetal.fails("node", "boot", "device", "set", "pm-1", "floppy")
    assert "floppy" in proc.stderr or "invalid" in proc.stderr.lower()
    assert baremetal.json("node", "boot", "device", "show", "pm-1")["boot_device"] == "disk"


def test_maintenance_set_and_unset(server: Ferricd, baremetal: Baremetal, node: str) -> None:
    baremetal.run("node", "maintenance", "set", "pm-1", "--reason", "replacing a DIMM")
    n = baremetal.json("node", "show", "pm-1")
    assert n["maintenance"] is True
    assert n["maintenance_reason"] == "replacing a DIMM"
    assert [x["uuid"] for x in baremetal.rows("node", "list", "--maintenance")] == [node]

    baremetal.run("node", "maintenance", "unset", "pm-1")
    n = baremetal.json("node", "show", "pm-1")
    assert n["maintenance"] is False
    assert n["maintenance_reason"] is None
    assert baremetal.json("node", "list", "--maintenance") == []


def test_validate(server: Ferricd, baremetal: Baremetal, node: str) -> None:
    rows = baremetal.rows("node", "validate", "pm-1")
    results = {row["interface"]: row for row in rows}
    for iface in ("power", "management", "boot", "deploy"):
        assert results[iface]["result"] is True, results[iface]
    raw = server.get(f"/v1/nodes/{node}/validate")
    assert raw["power"]["result"] is True
    assert set(raw["power"]) >= {"result", "reason"}

    server.patch_node(node, [{"op": "add", "path": "/driver_info/fake_fail", "value": ["validate"]}])
    rows = baremetal.rows("node", "validate", "pm-1")
    failed = [row for row in rows if row["result"] is False]
    assert failed, rows
    assert all(row["reason"] for row in failed), failed
