"""A BMC that stops answering: the power sync puts the node into maintenance, and takes it out again."""

from __future__ import annotations

import time
from typing import Callable

from support import Ferricd, wait_for

POWER_SYNC = {"power_sync_interval": 1, "power_failure_threshold": 2}


def test_power_failure_maintenance_and_recovery(ferricd_factory: Callable[..., Ferricd]) -> None:
    server = ferricd_factory(conductor=POWER_SYNC)
    broken = server.create_node(name="broken-bmc")["uuid"]
    healthy = server.create_node(name="healthy-bmc")["uuid"]
    operator = server.create_node(name="operator-maint")["uuid"]
    for uuid in (broken, healthy, operator):
        server.make_available(uuid)
    server.call("PUT", f"/v1/nodes/{operator}/maintenance", 202, json={"reason": "swapping a PSU"})

    server.patch_node(broken, [{"op": "add", "path": "/driver_info/fake_fail", "value": ["power"]}])
    node = wait_for(lambda: server.node(broken), lambda n: n["maintenance"], 20,
                    "the broken BMC's node to go into maintenance")
    assert node["fault"] == "power failure", node
    assert node["maintenance_reason"], node
    assert node["provision_state"] == "available"
    assert server.node(healthy)["maintenance"] is False

    # The BMC answers again: the node leaves maintenance by itself.
    server.patch_node(broken, [{"op": "remove", "path": "/driver_info/fake_fail"}])
    node = wait_for(lambda: server.node(broken), lambda n: not n["maintenance"], 20,
                    "the node to leave maintenance once its BMC answers")
    assert node["fault"] is None, node
    assert node["maintenance_reason"] is None, node
    assert node["power_state"] == "power off", node

    # Maintenance an operator set is not the power sync's to lift.
    node = server.node(operator)
    assert node["maintenance"] is True
    assert node["maintenance_reason"] == "swapping a PSU"
    assert node["fault"] is None


def test_a_single_failed_read_is_below_the_threshold(ferricd_factory: Callable[..., Ferricd]) -> None:
    server = ferricd_factory(conductor={"power_sync_interval": 1, "power_failure_threshold": 1000})
    uuid = server.create_node(name="flaky")["uuid"]
    server.make_available(uuid)
    server.patch_node(uuid, [{"op": "add", "path": "/driver_info/fake_fail", "value": ["power"]}])
    time.sleep(3)
    node = server.node(uuid)
    assert node["maintenance"] is False, node
    assert node["fault"] is None
