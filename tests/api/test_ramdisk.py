"""The ramdisk endpoints as an agent uses them over HTTP: lookup by MAC with
IPA's microversions, the token once, heartbeats, and the token never in a log."""

from __future__ import annotations

from support import Ferricd, assert_ironic_error, mac


def test_agent_lookup_and_heartbeat(server: Ferricd) -> None:
    node = server.create_node(name="ramdisk-1", driver_info={"fake_wait": ["deploy"]})
    uuid = node["uuid"]
    server.create_port(uuid, mac(41))
    server.make_available(uuid)
    server.provision(uuid, "active")
    server.wait_state(uuid, "wait call-back")

    # IPA asks for 1.62 at most when it looks up, with every MAC it has.
    query = {"addresses": f"{mac(41).upper()},{mac(99)}"}
    first = server.get("/v1/lookup", params=query, version="1.62")
    token = first["config"]["agent_token"]
    assert len(token) >= 32 and token != "******"
    assert first["node"]["uuid"] == uuid
    assert set(first["node"]) >= {"uuid", "properties", "instance_info", "driver_internal_info"}
    assert "driver_info" not in first["node"]
    assert first["config"]["agent_token_required"] is True
    again = server.get("/v1/lookup", params={"node_uuid": uuid}, version="1.62")
    assert again["config"]["agent_token"] == "******"

    hb = f"/v1/heartbeat/{uuid}"
    body = {"callback_url": "https://192.0.2.10:9999", "agent_token": token,
            "agent_version": "10.0.0", "agent_verify_ca": "-----BEGIN CERTIFICATE-----"}
    resp = server.request("POST", hb, json=body, version="1.68")
    assert resp.status_code == 202, resp.text
    wrong = server.request("POST", hb, json={**body, "agent_token": "x" * 43}, version="1.68")
    assert_ironic_error(wrong, 400)
    assert "Invalid or missing agent token" in wrong.json()["error_message"]
    node = server.node(uuid)
    assert node["driver_internal_info"]["agent_url"] == "https://192.0.2.10:9999"
    assert node["driver_internal_info"]["agent_secret_token"] == "******"

    # No lookup for a node that expects no agent, or for unknown MACs.
    assert_ironic_error(server.request("GET", "/v1/lookup", params={"addresses": mac(98)}), 404)
    other = server.create_node(name="ramdisk-idle")
    server.create_port(other["uuid"], mac(42))
    assert_ironic_error(server.request("GET", "/v1/lookup", params={"addresses": mac(42)}), 404)

    # The token is a secret: it is in no response and in no log line.
    assert token not in str(server.get(f"/v1/nodes/{uuid}"))
    assert token not in server.log()
