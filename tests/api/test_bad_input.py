"""Refused requests: Ironic's status code and error shape, and nothing changed in the store.

Every test takes a snapshot of all nodes and ports before the bad request and
compares it afterwards.
"""

from __future__ import annotations

import json

import pytest

from support import Ferricd, assert_ironic_error, random_uuid

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def node(server: Ferricd) -> dict:
    node = server.create_node(name="victim", driver_info={"ipmi_address": "10.0.0.1"}, extra={"k": "v"})
    server.create_port(node["uuid"], "52:54:00:aa:00:01")
    return node


def test_malformed_json_in_create(server: Ferricd, node: dict) -> None:
    before = server.snapshot()
    resp = server.request("POST", "/v1/nodes", data=b'{"driver": "fake-hardware",', headers=JSON)
    assert_ironic_error(resp, 400)
    assert server.snapshot() == before


def test_malformed_json_in_patch(server: Ferricd, node: dict) -> None:
    before = server.snapshot()
    resp = server.request("PATCH", f"/v1/nodes/{node['uuid']}", data=b'[{"op": "add", ', headers=JSON)
    assert_ironic_error(resp, 400)
    assert server.snapshot() == before


def test_patch_that_is_not_a_list_of_operations(server: Ferricd, node: dict) -> None:
    before = server.snapshot()
    resp = server.request("PATCH", f"/v1/nodes/{node['uuid']}", json={"name": "x"})
    assert_ironic_error(resp, 400)
    assert server.snapshot() == before


def test_unknown_field_in_create(server: Ferricd, node: dict) -> None:
    before = server.snapshot()
    resp = server.request("POST", "/v1/nodes", json={"driver": "fake-hardware", "colour": "blue"})
    assert_ironic_error(resp, 400)
    assert server.snapshot() == before


def test_unknown_field_in_patch(server: Ferricd, node: dict) -> None:
    before = server.snapshot()
    resp = server.request("PATCH", f"/v1/nodes/{node['uuid']}", json=[{"op": "add", "path": "/colour", "value": "blue"}])
    assert_ironic_error(resp, 400)
    assert server.snapshot() == before


def test_unknown_field_in_port_create(server: Ferricd, node: dict) -> None:
    before = server.snapshot()
    resp = server.request("POST", "/v1/ports",
                          json={"node_uuid": node["uuid"], "address": "52:54:00:aa:00:02", "colour": "blue"})
    assert_ironic_error(resp, 400)
    assert server.snapshot() == before


def test_create_without_driver(server: Ferricd, node: dict) -> None:
    before = server.snapshot()
    resp = server.request("POST", "/v1/nodes", json={"name": "no-driver"})
    assert_ironic_error(resp, 400)
    assert server.snapshot() == before


def test_field_newer_than_the_version_in_create(server: Ferricd, node: dict) -> None:
    before = server.snapshot()
    resp = server.request("POST", "/v1/nodes", version="1.45",
                          json={"driver": "fake-hardware", "automated_clean": False})  # 1.47
    assert_ironic_error(resp, 406)
    assert server.snapshot() == before


def test_field_newer_than_the_version_in_patch(server: Ferricd, node: dict) -> None:
    before = server.snapshot()
    resp = server.request("PATCH", f"/v1/nodes/{node['uuid']}", version="1.47",
                          json=[{"op": "replace", "path": "/protected", "value": True}])  # 1.48
    assert_ironic_error(resp, 406)
    assert server.snapshot() == before


@pytest.mark.parametrize("target", ["active", "deploy", "provide", "deleted", "undeploy"])
def test_invalid_transition_from_enroll(server: Ferricd, node: dict, target: str) -> None:
    before = server.snapshot()
    resp = server.request("PUT", f"/v1/nodes/{node['uuid']}/states/provision", json={"target": target})
    assert_ironic_error(resp, 400)
    assert server.snapshot() == before


def test_unknown_provision_target(server: Ferricd, node: dict) -> None:
    before = server.snapshot()
    resp = server.request("PUT", f"/v1/nodes/{node['uuid']}/states/provision", json={"target": "levitate"})
    assert_ironic_error(resp, 400)
    assert server.snapshot() == before


def test_configdrive_with_a_verb_that_takes_none(server: Ferricd, node: dict) -> None:
    before = server.snapshot()
    resp = server.request("PUT", f"/v1/nodes/{node['uuid']}/states/provision",
                          json={"target": "manage", "configdrive": {"user_data": "x"}})
    assert_ironic_error(resp, 400)
    assert server.snapshot() == before


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("/provision_state", "active"),
        ("/uuid", "0b6a5f3c-0d8f-4a51-9f4b-5d0b9b0f1a2c"),
        ("/power_state", "power on"),
        ("/target_provision_state", "active"),
        ("/created_at", "2020-01-01T00:00:00+00:00"),
    ],
)
def test_patch_of_read_only_fields(server: Ferricd, node: dict, path: str, value: str) -> None:
    before = server.snapshot()
    resp = server.request("PATCH", f"/v1/nodes/{node['uuid']}", json=[{"op": "replace", "path": path, "value": value}])
    assert_ironic_error(resp, 400)
    assert server.snapshot() == before


def test_patch_during_a_transition_is_a_conflict(server: Ferricd) -> None:
    # Created at 1.1, the node starts "available"; fake_delay keeps its deploy running.
    node = server.create_node(version="1.1", driver_info={"fake_delay": 30})
    uuid = node["uuid"]
    server.provision(uuid, "active")
    server.wait_state(uuid, "deploying", timeout=10)
    before = server.node(uuid)
    resp = server.request("PATCH", f"/v1/nodes/{uuid}", json=[{"op": "add", "path": "/extra/k", "value": "v"}])
    assert_ironic_error(resp, 409)
    after = server.node(uuid)
    assert after["extra"] == before["extra"] == {}
    assert after["provision_state"] == "deploying"
    # A second provision request while it deploys is refused as well.
    resp = server.request("PUT", f"/v1/nodes/{uuid}/states/provision", json={"target": "deleted"})
    assert resp.status_code in (400, 409), resp.text
    assert_ironic_error(resp, resp.status_code)
    assert server.node(uuid)["provision_state"] == "deploying"


def test_duplicate_mac(server: Ferricd, node: dict) -> None:
    other = server.create_node(name="other")
    before = server.snapshot()
    for address in ("52:54:00:aa:00:01", "52:54:00:AA:00:01"):
        resp = server.request("POST", "/v1/ports", json={"node_uuid": other["uuid"], "address": address})
        assert_ironic_error(resp, 409)
    assert server.snapshot() == before


def test_duplicate_mac_by_patch(server: Ferricd, node: dict) -> None:
    port = server.create_port(node["uuid"], "52:54:00:aa:00:02")
    before = server.snapshot()
    resp = server.request("PATCH", f"/v1/ports/{port['uuid']}",
                          json=[{"op": "replace", "path": "/address", "value": "52:54:00:aa:00:01"}])
    assert_ironic_error(resp, 409)
    assert server.snapshot() == before


def test_duplicate_node_name(server: Ferricd, node: dict) -> None:
    before = server.snapshot()
    resp = server.request("POST", "/v1/nodes", json={"driver": "fake-hardware", "name": "victim"})
    assert_ironic_error(resp, 409)
    assert server.snapshot() == before


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/nodes/{uuid}", None),
        ("GET", "/v1/nodes/no-such-node", None),
        ("PATCH", "/v1/nodes/{uuid}", [{"op": "add", "path": "/extra/a", "value": 1}]),
        ("DELETE", "/v1/nodes/{uuid}", None),
        ("GET", "/v1/nodes/{uuid}/states", None),
        ("GET", "/v1/nodes/{uuid}/validate", None),
        ("PUT", "/v1/nodes/{uuid}/states/provision", {"target": "manage"}),
        ("PUT", "/v1/nodes/{uuid}/states/power", {"target": "power on"}),
        ("PUT", "/v1/nodes/{uuid}/management/boot_device", {"boot_device": "pxe"}),
        ("GET", "/v1/nodes/{uuid}/management/boot_device", None),
        ("PUT", "/v1/nodes/{uuid}/maintenance", {"reason": "x"}),
        ("GET", "/v1/ports/{uuid}", None),
        ("PATCH", "/v1/ports/{uuid}", [{"op": "add", "path": "/extra/a", "value": 1}]),
        ("DELETE", "/v1/ports/{uuid}", None),
    ],
)
def test_unknown_resources_are_404(server: Ferricd, node: dict, method: str, path: str, body: object) -> None:
    before = server.snapshot()
    kwargs = {} if body is None else {"json": body}
    resp = server.request(method, path.format(uuid=random_uuid()), **kwargs)
    assert_ironic_error(resp, 404)
    assert server.snapshot() == before


def test_port_on_an_unknown_node(server: Ferricd, node: dict) -> None:
    # Ironic answers 400, not 404: the port request names a missing node.
    before = server.snapshot()
    resp = server.request("POST", "/v1/ports", json={"node_uuid": random_uuid(), "address": "52:54:00:aa:00:09"})
    assert_ironic_error(resp, 400)
    assert server.snapshot() == before


def test_body_over_one_mebibyte(server: Ferricd, node: dict) -> None:
    before = server.snapshot()
    body = json.dumps({"driver": "fake-hardware", "extra": {"blob": "x" * (1024 * 1024 + 16)}}).encode()
    resp = server.request("POST", "/v1/nodes", data=body, headers=JSON)
    assert_ironic_error(resp, 413)
    assert server.snapshot() == before


def test_body_just_under_the_limit_is_accepted(server: Ferricd) -> None:
    node = server.create_node(extra={"blob": "x" * (900 * 1024)})
    assert len(server.node(node["uuid"])["extra"]["blob"]) == 900 * 1024


def test_delete_of_an_active_node(server: Ferricd) -> None:
    node = server.create_node(version="1.1")  # starts available
    uuid = node["uuid"]
    server.drive(uuid, "active", "active")
    before = server.snapshot()
    resp = server.request("DELETE", f"/v1/nodes/{uuid}")
    assert_ironic_error(resp, 409)
    assert server.snapshot() == before


def test_delete_of_a_node_with_ports_in_enroll_removes_the_ports(server: Ferricd, node: dict) -> None:
    server.call("DELETE", f"/v1/nodes/{node['uuid']}", 204)
    assert server.get("/v1/ports")["ports"] == []


@pytest.mark.parametrize("target", ["power sideways", "on", "", "POWER ON"])
def test_invalid_power_target(server: Ferricd, node: dict, target: str) -> None:
    before = server.snapshot()
    resp = server.request("PUT", f"/v1/nodes/{node['uuid']}/states/power", json={"target": target})
    assert_ironic_error(resp, 400)
    assert server.snapshot() == before


def test_invalid_boot_device(server: Ferricd, node: dict) -> None:
    before = server.snapshot()
    resp = server.request("PUT", f"/v1/nodes/{node['uuid']}/management/boot_device", json={"boot_device": "floppy"})
    assert_ironic_error(resp, 400)
    assert server.snapshot() == before


@pytest.mark.parametrize("address", ["not-a-mac", "52:54:00:aa:00", "52:54:00:aa:00:01:02", "zz:54:00:aa:00:01", ""])
def test_invalid_mac(server: Ferricd, node: dict, address: str) -> None:
    before = server.snapshot()
    resp = server.request("POST", "/v1/ports", json={"node_uuid": node["uuid"], "address": address})
    assert_ironic_error(resp, 400)
    assert server.snapshot() == before


def test_invalid_mac_by_patch(server: Ferricd, node: dict) -> None:
    port = server.get("/v1/ports")["ports"][0]
    before = server.snapshot()
    resp = server.request("PATCH", f"/v1/ports/{port['uuid']}",
                          json=[{"op": "replace", "path": "/address", "value": "nope"}])
    assert_ironic_error(resp, 400)
    assert server.snapshot() == before
