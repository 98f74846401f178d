"""Crash safety: SIGKILL ferricd mid-operation, restart it on the same database.

Every node and port must survive; nodes the dead process was working on move
to their failed state with a last_error about the restart and without a lock;
nodes waiting for an agent keep waiting; stable nodes are untouched.
Runs on SQLite, and on PostgreSQL when FERRIC_TEST_POSTGRES_URL is set.
"""

from __future__ import annotations

import re
from typing import Callable

import pytest

from support import Ferricd, mac, wait_for

HOSTNAME = "crash-conductor"
RESTART = re.compile(r"restart|resum", re.I)

# Where each node is when the process dies, and where it must be after the restart.
PLAN = (
    [("deploying", "deploy failed", "active")] * 3
    + [("wait call-back", "wait call-back", "active")] * 2
    + [("cleaning", "clean failed", "available")] * 2
    + [("inspecting", "inspect failed", "manageable")]
    + [("enroll", "enroll", None)]
    + [("deleting", "error", ...)]
    + [("active", "active", None)] * 2
    + [("available", "available", None)] * 2
    + [("manageable", "manageable", None)] * 2
    + [("enroll", "enroll", None)] * 4
)
BUSY = {"deploying", "cleaning", "inspecting", "deleting"}


def delay(server: Ferricd, uuid: str, seconds: int = 60) -> None:
    server.patch_node(uuid, [{"op": "add", "path": "/driver_info/fake_delay", "value": seconds}])


def put_in(server: Ferricd, uuid: str, state: str) -> None:
    """Drives a fresh (enroll) node into `state`; busy states stay busy for a minute."""
    if state == "enroll":
        return
    if state in ("manageable", "inspecting", "cleaning"):
        server.drive(uuid, "manage", "manageable")
        if state == "inspecting":
            delay(server, uuid)
            server.provision(uuid, "inspect")
        elif state == "cleaning":
            delay(server, uuid)
            server.provision(uuid, "provide")
    else:
        server.make_available(uuid)
        if state == "deploying":
            delay(server, uuid)
            server.provision(uuid, "active")
        elif state == "wait call-back":
            server.patch_node(uuid, [{"op": "add", "path": "/driver_info/fake_wait", "value": ["deploy"]}])
            server.provision(uuid, "active")
        elif state in ("active", "deleting"):
            server.drive(uuid, "active", "active")
            if state == "deleting":
                delay(server, uuid)
                server.provision(uuid, "deleted")
    server.wait_state(uuid, state, timeout=20)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'crash.sqlite'}"
    return request.getfixturevalue("postgres_database")


def test_sigkill_mid_operation_then_restart(ferricd_factory: Callable[..., Ferricd], database: str) -> None:
    server = ferricd_factory(name="crash", database=database, hostname=HOSTNAME)
    nodes = []
    for i, (state, _, _) in enumerate(PLAN):
        node = server.create_node(name=f"crash-{i:02}", extra={"plan": state})
        port = server.create_port(node["uuid"], mac(0xC000 + i))
        nodes.append((node["uuid"], port["uuid"]))
    server.call("PUT", f"/v1/nodes/{nodes[-1][0]}/maintenance", 202, json={"reason": "keep me"})
    for (uuid, _), (state, _, _) in zip(nodes, PLAN):
        put_in(server, uuid, state)

    # Everything is in place: the busy nodes are mid-step, the conductor holds their locks.
    before = {n["uuid"]: n for n in server.snapshot()["nodes"]}
    for (uuid, _), (state, _, _) in zip(nodes, PLAN):
        assert before[uuid]["provision_state"] == state, before[uuid]
    server.kill()
    server.start()

    # Recovery happens at start-up; allow it a few seconds in case it runs in the background.
    def recovered(snapshot: dict) -> bool:
        by_uuid = {n["uuid"]: n for n in snapshot["nodes"]}
        return all(by_uuid[uuid]["provision_state"] == after for (uuid, _), (_, after, _) in zip(nodes, PLAN)
                   if uuid in by_uuid)

    snapshot = wait_for(server.snapshot, recovered, 15, "busy nodes to move to their failed states")
    by_uuid = {n["uuid"]: n for n in snapshot["nodes"]}
    assert sorted(by_uuid) == sorted(uuid for uuid, _ in nodes), "every node survives"
    ports = {p["uuid"]: p for p in snapshot["ports"]}
    assert sorted(ports) == sorted(port for _, port in nodes), "every port survives"
    for i, (uuid, port) in enumerate(nodes):
        assert ports[port]["node_uuid"] == uuid
        assert ports[port]["address"] == mac(0xC000 + i)

    for i, ((uuid, _), (state, after, target)) in enumerate(zip(nodes, PLAN)):
        node = by_uuid[uuid]
        where = f"node {i} ({state} -> {after}): {node}"
        assert node["name"] == f"crash-{i:02}", where
        assert node["provision_state"] == after, where
        assert node["reservation"] is None, f"still locked after the restart: {where}"
        if state in BUSY:
            assert node["last_error"] and RESTART.search(node["last_error"]), where
            if target is not ...:
                assert node["target_provision_state"] == target, where
        elif state == "wait call-back":
            # Still waiting for its agent: the default timeout is half an hour.
            assert node["target_provision_state"] == "active", where
        else:
            # Stable nodes are exactly as they were.
            assert node["last_error"] == before[uuid]["last_error"], where
            assert node["target_provision_state"] is None, where
            assert node["maintenance"] == before[uuid]["maintenance"], where
            assert node["driver_info"] == before[uuid]["driver_info"], where
    assert by_uuid[nodes[-1][0]]["maintenance_reason"] == "keep me"

    # Nothing is left locked: every node that is not waiting accepts a patch.
    for (uuid, _), (state, _, _) in zip(nodes, PLAN):
        if state != "wait call-back":
            server.patch_node(uuid, [{"op": "add", "path": "/extra/after_crash", "value": True}])
            assert server.node(uuid)["extra"]["after_crash"] is True

    # And the failed ones can be driven on once the fake hardware is healthy again.
    deploy_failed = nodes[0][0]
    server.patch_node(deploy_failed, [{"op": "remove", "path": "/driver_info/fake_delay"}])
    node = server.drive(deploy_failed, "deleted", "available")
    assert node["last_error"] is None
    clean_failed = nodes[5][0]
    server.patch_node(clean_failed, [{"op": "remove", "path": "/driver_info/fake_delay"}])
    server.drive(clean_failed, "manage", "manageable")


def test_start_up_does_not_touch_a_live_colleagues_nodes(
    ferricd_factory: Callable[..., Ferricd], postgres_database: str
) -> None:
    """Start-up recovers the nodes of its own hostname, not those of another live conductor (PostgreSQL)."""
    database = postgres_database
    first = ferricd_factory(name="first", database=database, hostname="conductor-a")
    node = first.create_node(name="busy")
    uuid = node["uuid"]
    put_in(first, uuid, "deploying")
    # Another conductor starts on the same database while conductor-a is alive and busy.
    second = ferricd_factory(name="second", database=database, hostname="conductor-b")
    node = second.node(uuid)
    assert node["provision_state"] == "deploying", node
    assert node["last_error"] is None
