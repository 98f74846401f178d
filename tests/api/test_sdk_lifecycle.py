"""A node's whole life through openstacksdk's baremetal proxy, as Ansible and Metal3 tooling use it."""

from __future__ import annotations

import json

import openstack
import pytest
from openstack import exceptions

from support import Ferricd

USER_DATA = "#!/bin/sh\necho sdk-secret-user-data\n"


@pytest.fixture
def conn(server: Ferricd) -> openstack.connection.Connection:
    return openstack.connection.Connection(auth_type="none", baremetal_endpoint_override=server.url)


def test_node_lifecycle_with_openstacksdk(server: Ferricd, conn: openstack.connection.Connection) -> None:
    bm = conn.baremetal
    node = bm.create_node(driver="fake-hardware", name="sdk-1", properties={"cpus": 8})
    assert node.provision_state == "enroll"
    assert node.name == "sdk-1"
    port = bm.create_port(address="52:54:00:00:5d:01", node_id=node.id)
    assert port.node_id == node.id

    node = bm.set_node_provision_state(node, "manage", wait=True, timeout=60)
    assert node.provision_state == "manageable"
    node = bm.set_node_provision_state(node, "provide", wait=True, timeout=60)
    assert node.provision_state == "available"
    assert bm.get_node(node.id).power_state == "power off"

    config_drive = {"meta_data": {"hostname": "sdk-1"}, "user_data": USER_DATA}
    node = bm.set_node_provision_state(node, "active", config_drive=config_drive, wait=True, timeout=60)
    assert node.provision_state == "active"
    node = bm.get_node("sdk-1")
    assert node.provision_state == "active"
    assert node.target_provision_state is None
    assert node.power_state == "power on"
    assert node.instance_info["configdrive"] == "******"
    assert "sdk-secret-user-data" not in json.dumps(node.to_dict(computed=False))

    assert [n.id for n in bm.nodes(provision_state="active")] == [node.id]
    assert [p.id for p in bm.ports(node_id=node.id)] == [port.id]

    node = bm.set_node_provision_state(node, "deleted", wait=True, timeout=60)
    assert node.provision_state == "available"
    node = bm.get_node(node.id)
    assert node.power_state == "power off"
    assert "configdrive" not in node.instance_info

    bm.delete_node(node.id)
    with pytest.raises(exceptions.NotFoundException):
        bm.get_node(node.id)
    with pytest.raises(exceptions.NotFoundException):
        bm.get_port(port.id)
    assert list(bm.nodes()) == []
    assert list(bm.ports()) == []


def test_sdk_wait_for_provision_state_reports_a_failed_deploy(
    server: Ferricd, conn: openstack.connection.Connection
) -> None:
    bm = conn.baremetal
    node = bm.create_node(driver="fake-hardware", name="sdk-fail", driver_info={"fake_fail": ["deploy"]})
    bm.set_node_provision_state(node, "manage", wait=True, timeout=60)
    bm.set_node_provision_state(node, "provide", wait=True, timeout=60)
    with pytest.raises(exceptions.ResourceFailure):
        bm.set_node_provision_state(node, "active", wait=True, timeout=60)
    node = bm.get_node(node.id)
    assert node.provision_state == "deploy failed"
    assert node.target_provision_state == "active"
    assert node.last_error
