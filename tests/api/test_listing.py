"""Node listing: fields, paging with `next`, sorting, detail and filters."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from support import Ferricd, assert_ironic_error, random_uuid

NAMES = ["n-charlie", "n-alpha", "n-golf", "n-echo", "n-bravo", "n-foxtrot", "n-delta"]


@pytest.fixture
def fleet(server: Ferricd) -> dict[str, dict]:
    """Seven nodes in different states, classes, maintenance and association."""
    nodes = {}
    for i, name in enumerate(NAMES):
        nodes[name] = server.create_node(name=name, resource_class="gold" if i % 2 else "silver")
    server.drive("n-alpha", "manage", "manageable")
    server.drive("n-bravo", "manage", "manageable")
    server.make_available("n-charlie")
    server.call("PUT", "/v1/nodes/n-delta/maintenance", 202, json={"reason": "fan"})
    server.patch_node("n-echo", [{"op": "add", "path": "/instance_uuid", "value": random_uuid()}])
    return nodes


def names(listing: dict) -> list[str]:
    return [n["name"] for n in listing["nodes"]]


def test_default_fields(server: Ferricd, fleet: dict) -> None:
    listing = server.get("/v1/nodes")
    assert sorted(names(listing)) == sorted(NAMES)
    for node in listing["nodes"]:
        assert set(node) == {"uuid", "name", "instance_uuid", "power_state", "provision_state", "maintenance",
                             "links"}, node
        assert any(link["rel"] == "self" and link["href"].endswith(f"/v1/nodes/{node['uuid']}")
                   for link in node["links"]), node["links"]


def test_fields_parameter(server: Ferricd, fleet: dict) -> None:
    listing = server.get("/v1/nodes?fields=uuid,name,driver")
    assert len(listing["nodes"]) == len(NAMES)
    for node in listing["nodes"]:
        assert set(node) - {"links"} == {"uuid", "name", "driver"}, node
        assert node["driver"] == "fake-hardware"
    one = server.get(f"/v1/nodes/{fleet['n-alpha']['uuid']}?fields=provision_state")
    assert set(one) - {"links"} == {"provision_state"}
    assert one["provision_state"] == "manageable"
    # An unknown field name is a client error.
    assert_ironic_error(server.request("GET", "/v1/nodes?fields=uuid,bogus"), 400)
    # fields arrived in 1.8.
    assert_ironic_error(server.request("GET", "/v1/nodes?fields=uuid", version="1.7"), 406)


def test_limit_marker_and_next_link(server: Ferricd, fleet: dict) -> None:
    first = server.get("/v1/nodes?limit=3&sort_key=name")
    assert names(first) == sorted(NAMES)[:3]
    link = first["next"]
    query = parse_qs(urlsplit(link).query)
    assert link.startswith(f"{server.url}/v1/nodes?"), link
    assert query["limit"] == ["3"]
    assert query["marker"] == [first["nodes"][-1]["uuid"]]

    seen = names(first)
    pages = 1
    while "next" in first:
        first = server.get(first["next"])
        seen += names(first)
        pages += 1
        assert pages <= 5, "next links never end"
    assert seen == sorted(NAMES), "following next must visit every node once, in order"
    assert pages == 3

    # The marker alone continues after that node.
    after = server.get(f"/v1/nodes?sort_key=name&marker={fleet['n-delta']['uuid']}")
    assert names(after) == ["n-echo", "n-foxtrot", "n-golf"]
    # An unknown marker is a missing node, as in Ironic.
    assert_ironic_error(server.request("GET", f"/v1/nodes?marker={random_uuid()}"), 404)


def test_limit_larger_than_the_list_has_no_next(server: Ferricd, fleet: dict) -> None:
    listing = server.get("/v1/nodes?limit=50")
    assert len(listing["nodes"]) == len(NAMES)
    assert "next" not in listing


def test_next_link_keeps_fields_and_sorting(server: Ferricd, fleet: dict) -> None:
    page = server.get("/v1/nodes?limit=2&fields=uuid,name&sort_key=name&sort_dir=desc")
    assert names(page) == sorted(NAMES, reverse=True)[:2]
    page2 = server.get(page["next"])
    assert names(page2) == sorted(NAMES, reverse=True)[2:4]
    assert all(set(n) - {"links"} == {"uuid", "name"} for n in page2["nodes"])


@pytest.mark.parametrize("direction", ["asc", "desc"])
def test_sort_by_name(server: Ferricd, fleet: dict, direction: str) -> None:
    listing = server.get(f"/v1/nodes?sort_key=name&sort_dir={direction}")
    assert names(listing) == sorted(NAMES, reverse=direction == "desc")


def test_sort_by_created_at_follows_creation_order(server: Ferricd, fleet: dict) -> None:
    listing = server.get("/v1/nodes?sort_key=created_at&sort_dir=asc&fields=uuid,name,created_at")
    assert names(listing) == NAMES


def test_invalid_sort_is_refused(server: Ferricd, fleet: dict) -> None:
    assert_ironic_error(server.request("GET", "/v1/nodes?sort_dir=sideways"), 400)
    assert_ironic_error(server.request("GET", "/v1/nodes?sort_key=no_such_field"), 400)


def test_detail(server: Ferricd, fleet: dict) -> None:
    for path in ("/v1/nodes/detail", "/v1/nodes?detail=True"):
        listing = server.get(path)
        assert sorted(names(listing)) == sorted(NAMES)
        for node in listing["nodes"]:
            for field in ("driver", "driver_info", "properties", "instance_info", "extra", "resource_class",
                          "created_at", "updated_at", "last_error", "target_provision_state"):
                assert field in node, f"{path}: {field} missing"
    # detail as a parameter arrived in 1.43.
    assert_ironic_error(server.request("GET", "/v1/nodes?detail=True", version="1.42"), 406)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("provision_state=manageable", ["n-alpha", "n-bravo"]),
        ("provision_state=available", ["n-charlie"]),
        ("provision_state=enroll", ["n-delta", "n-echo", "n-foxtrot", "n-golf"]),
        ("driver=fake-hardware", NAMES),
        ("driver=ipmi", []),
        ("maintenance=true", ["n-delta"]),
        ("maintenance=false", [n for n in NAMES if n != "n-delta"]),
        ("associated=true", ["n-echo"]),
        ("associated=false", [n for n in NAMES if n != "n-echo"]),
        ("resource_class=gold", ["n-alpha", "n-echo", "n-foxtrot"]),
        ("resource_class=silver", ["n-bravo", "n-charlie", "n-delta", "n-golf"]),
        ("resource_class=gold&provision_state=manageable", ["n-alpha"]),
    ],
)
def test_filters(server: Ferricd, fleet: dict, query: str, expected: list[str]) -> None:
    assert sorted(names(server.get(f"/v1/nodes?{query}"))) == sorted(expected)
    assert sorted(names(server.get(f"/v1/nodes/detail?{query}"))) == sorted(expected)


def test_ports_filtered_by_node_and_address(server: Ferricd, fleet: dict) -> None:
    a = fleet["n-alpha"]["uuid"]
    b = fleet["n-bravo"]["uuid"]
    pa = server.create_port(a, "52:54:00:00:00:0a")
    server.create_port(b, "52:54:00:00:00:0b")
    listing = server.get(f"/v1/ports?node_uuid={a}")["ports"]
    assert [p["uuid"] for p in listing] == [pa["uuid"]]
    listing = server.get("/v1/ports?address=52:54:00:00:00:0a")["ports"]
    assert [p["uuid"] for p in listing] == [pa["uuid"]]
    listing = server.get(f"/v1/nodes/{a}/ports")["ports"]
    assert [p["uuid"] for p in listing] == [pa["uuid"]]


@pytest.mark.parametrize("path", ["/v1/nodes/", "/v1/ports/", "/v1/nodes/detail/", "/v1/drivers/"])
def test_collections_accept_a_trailing_slash(server: Ferricd, fleet: dict, path: str) -> None:
    # python-ironicclient lists ports as GET /v1/ports/?node=...; Ironic serves both spellings.
    resp = server.request("GET", path)
    assert resp.status_code == 200, resp.text
    assert resp.json() == server.get(path.rstrip("/"))
