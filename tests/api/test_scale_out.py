"""Several ferricd processes on one PostgreSQL database: one fleet.

Each process is an API and a conductor. They see the same nodes, respect
each other's node locks, split periodic work between them, and the
survivors take over the locks and half-done work of one that dies.
"""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from support import Ferricd, mac, wait_for

FAST = {"heartbeat_interval": 1, "dead_conductor_after": 3, "power_sync_interval": 0}


def test_two_servers_share_nodes_locks_and_work(
    ferricd_factory: Callable[..., Ferricd], postgres_database: str
) -> None:
    a = ferricd_factory(name="a", database=postgres_database, hostname="conductor-a", conductor=FAST)
    b = ferricd_factory(name="b", database=postgres_database, hostname="conductor-b", conductor=FAST)

    # Both conductors are registered and alive, seen from either API.
    for server in (a, b):
        conductors = wait_for(
            lambda s=server: [c for c in s.get("/v1/conductors")["conductors"] if c["alive"]],
            lambda alive: {c["hostname"] for c in alive} == {"conductor-a", "conductor-b"},
            timeout=10,
            what="both conductors alive",
        )
        assert len(conductors) == 2

    # Nodes created through one API are the other's too.
    uuids = [a.create_node(name=f"fleet-{i}")["uuid"] for i in range(12)]
    for i, uuid in enumerate(uuids):
        b.create_port(uuid, mac(100 + i))
    listed = {n["uuid"] for n in b.get("/v1/nodes?limit=1000")["nodes"]}
    assert set(uuids) <= listed

    # Work driven through both APIs at once ends the same way.
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda p: p[0].make_available(p[1]), [((a, b)[i % 2], u) for i, u in enumerate(uuids)]))
        for i, uuid in enumerate(uuids):
            (b, a)[i % 2].provision(uuid, "active")
    for uuid in uuids:
        a.wait_state(uuid, "active")

    # The hash ring gives periodic work to both conductors.
    owners = wait_for(
        lambda: {n["conductor"] for n in a.get("/v1/nodes?fields=uuid,conductor&limit=1000")["nodes"]},
        lambda seen: seen == {"conductor-a", "conductor-b"},
        timeout=10,
        what="nodes owned by both conductors",
    )
    assert owners == {"conductor-a", "conductor-b"}

    # A lock taken through one server is respected by the other.
    slow = uuids[0]
    a.patch_node(slow, [{"op": "add", "path": "/driver_info/fake_delay", "value": 3}])
    a.call("PUT", f"/v1/nodes/{slow}/states/power", 202, json={"target": "power off"})
    resp = b.request("PATCH", f"/v1/nodes/{slow}", json=[{"op": "add", "path": "/extra/x", "value": 1}])
    assert resp.status_code == 409, resp.text
    assert "locked by host conductor-a" in resp.text
    wait_for(lambda: b.node(slow), lambda n: n["power_state"] == "power off" and n["reservation"] is None,
             timeout=15, what="the power action to finish")
    assert b.node(slow)["extra"] == {}, "the refused patch changed nothing"


def test_survivor_takes_over_a_dead_conductors_work(
    ferricd_factory: Callable[..., Ferricd], postgres_database: str
) -> None:
    a = ferricd_factory(name="a", database=postgres_database, hostname="conductor-a", conductor=FAST)
    b = ferricd_factory(name="b", database=postgres_database, hostname="conductor-b", conductor=FAST)
    uuid = a.create_node(name="orphan")["uuid"]
    a.make_available(uuid)
    a.patch_node(uuid, [{"op": "add", "path": "/driver_info/fake_delay", "value": 60}])
    a.provision(uuid, "active")
    node = a.wait_state(uuid, "deploying")
    assert node["reservation"] == "conductor-a"

    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(timeout=10)

    # conductor-b notices the silence and fails the orphaned deployment.
    node = wait_for(lambda: b.node(uuid), lambda n: n["provision_state"] == "deploy failed",
                    timeout=30, what="conductor-b to take over")
    assert node["reservation"] is None
    assert "conductor-a" in node["last_error"], node["last_error"]
    alive = {c["hostname"]: c["alive"] for c in b.get("/v1/conductors")["conductors"]}
    assert alive == {"conductor-a": False, "conductor-b": True}
    # The node can be retried right away through the survivor.
    b.patch_node(uuid, [{"op": "remove", "path": "/driver_info/fake_delay"}])
    b.provision(uuid, "active")
    b.wait_state(uuid, "active")
