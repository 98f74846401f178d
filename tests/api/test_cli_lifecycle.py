"""A node's whole life through the real `baremetal` CLI (python-ironicclient).

The CLI asks for its newest microversion (above ours), gets 406, reads the
maximum header and retries: each command here exercises that negotiation.
"""

from __future__ import annotations

import json
import re

from support import Baremetal, Ferricd

NOT_FOUND = re.compile(r"not (be )?found.*404", re.I)
USER_DATA = "#cloud-config\npassword: s3cret-user-data-do-not-echo\n"
CONFIG_DRIVE = {
    "meta_data": {"hostname": "cli-1.example.net", "public_keys": {"0": "ssh-ed25519 AAAA test"}},
    "user_data": USER_DATA,
}


def show(baremetal: Baremetal, ident: str) -> dict:
    return baremetal.json("node", "show", ident)


def test_node_lifecycle_with_the_baremetal_cli(server: Ferricd, baremetal: Baremetal) -> None:
    node = baremetal.json("node", "create", "--driver", "fake-hardware", "--name", "cli-1")
    uuid = node["uuid"]
    assert node["name"] == "cli-1"
    assert node["provision_state"] == "enroll"
    assert node["driver"] == "fake-hardware"

    port = baremetal.json("port", "create", "52:54:00:12:34:56", "--node", uuid)
    assert port["address"] == "52:54:00:12:34:56"
    assert port["node_uuid"] == uuid
    ports = baremetal.rows("port", "list", "--node", uuid)
    assert [p["uuid"] for p in ports] == [port["uuid"]]

    listed = baremetal.rows("node", "list")
    assert [(n["uuid"], n["name"], n["provision_state"]) for n in listed] == [(uuid, "cli-1", "enroll")]

    baremetal.run("node", "manage", "cli-1", "--wait", "60")
    node = show(baremetal, "cli-1")
    assert node["provision_state"] == "manageable"
    assert node["target_provision_state"] is None
    assert node["last_error"] is None

    baremetal.run("node", "provide", "cli-1", "--wait", "60")
    node = show(baremetal, "cli-1")
    assert node["provision_state"] == "available"
    assert node["target_provision_state"] is None
    assert node["power_state"] == "power off"
    assert node["last_error"] is None

    baremetal.run("node", "deploy", "cli-1", "--config-drive", json.dumps(CONFIG_DRIVE), "--wait", "60")
    node = show(baremetal, "cli-1")
    assert node["provision_state"] == "active"
    assert node["target_provision_state"] is None
    assert node["power_state"] == "power on"
    assert node["last_error"] is None
    # The config drive is stored but never shown: not by the CLI, not on the wire.
    assert node["instance_info"]["configdrive"] == "******"
    assert "s3cret-user-data" not in json.dumps(node)
    raw = server.request("GET", f"/v1/nodes/{uuid}").text
    assert "s3cret-user-data" not in raw
    assert "s3cret-user-data" not in server.request("GET", "/v1/nodes/detail").text
    listed = baremetal.rows("node", "list", "--provision-state", "active")
    assert [n["uuid"] for n in listed] == [uuid]

    baremetal.run("node", "undeploy", "cli-1", "--wait", "60")
    node = show(baremetal, "cli-1")
    assert node["provision_state"] == "available"
    assert node["target_provision_state"] is None
    assert node["power_state"] == "power off"
    assert "configdrive" not in node["instance_info"]

    baremetal.run("node", "delete", "cli-1")
    proc = baremetal.fails("node", "show", uuid)
    assert NOT_FOUND.search(proc.stderr + proc.stdout), proc.stderr
    proc = baremetal.fails("port", "show", port["uuid"])
    assert NOT_FOUND.search(proc.stderr + proc.stdout), proc.stderr
    assert baremetal.json("port", "list") == []
    assert baremetal.json("node", "list") == []
