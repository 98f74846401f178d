"""Microversion negotiation on the wire, as the OpenStack clients rely on it."""

from __future__ import annotations

import pytest

from support import (
    MAX_VERSION,
    MIN_VERSION,
    VERSION_HEADERS,
    Ferricd,
    assert_ironic_error,
    assert_version_headers,
    random_uuid,
)


def _version_object(doc: dict, server: Ferricd) -> None:
    assert doc["id"] == "v1"
    assert doc["status"] == "CURRENT"
    assert doc["min_version"] == MIN_VERSION
    assert doc["version"] == MAX_VERSION
    assert {"href": f"{server.url}/v1/", "rel": "self"} in doc["links"], doc["links"]


def test_root_document_lists_v1_with_its_range(server: Ferricd) -> None:
    resp = server.request("GET", "/", version=None)
    assert resp.status_code == 200
    assert_version_headers(resp)
    doc = resp.json()
    assert doc["name"] and doc["description"]
    # IPA reads default_version.version, keystoneauth reads versions[].links.
    _version_object(doc["default_version"], server)
    assert len(doc["versions"]) == 1
    _version_object(doc["versions"][0], server)


@pytest.mark.parametrize("path", ["/v1", "/v1/"])
def test_v1_document_has_resources_and_version(server: Ferricd, path: str) -> None:
    resp = server.request("GET", path, version=None)
    assert resp.status_code == 200
    assert_version_headers(resp)
    doc = resp.json()
    assert doc["id"] == "v1"
    assert doc["links"] and all("href" in link and "rel" in link for link in doc["links"])
    assert doc["media_types"]
    for resource in ("nodes", "ports", "drivers"):
        hrefs = [link["href"] for link in doc[resource]]
        assert f"{server.url}/v1/{resource}/" in hrefs, (resource, doc[resource])
    # gophercloud reads the version from here.
    _version_object(doc["version"], server)


def test_version_headers_on_success_and_on_every_error(server: Ferricd) -> None:
    responses = {
        "200": server.request("GET", "/v1/nodes", version="1.30"),
        "404 node": server.request("GET", f"/v1/nodes/{random_uuid()}", version="1.30"),
        "404 route": server.request("GET", "/v1/no-such-resource", version="1.30"),
        "400": server.request("POST", "/v1/nodes", data=b"{not json", version="1.30",
                              headers={"Content-Type": "application/json"}),
        "405": server.request("DELETE", "/v1/nodes", version="1.30"),
        "406": server.request("GET", "/v1/nodes", version="1.999"),
    }
    for what, resp in responses.items():
        # A refused version has no negotiated version to report (Ironic sends min and max only).
        headers = VERSION_HEADERS[:2] if what == "406" else VERSION_HEADERS
        for header in headers:
            assert header in resp.headers, f"{what}: {header} missing: {dict(resp.headers)}"
        assert resp.headers["X-OpenStack-Ironic-API-Minimum-Version"] == MIN_VERSION, what
        assert resp.headers["X-OpenStack-Ironic-API-Maximum-Version"] == MAX_VERSION, what
    assert responses["200"].headers["X-OpenStack-Ironic-API-Version"] == "1.30"
    assert responses["404 node"].status_code == 404
    assert responses["405"].status_code == 405


def test_no_header_means_1_1_and_new_nodes_start_available(server: Ferricd) -> None:
    resp = server.request("GET", "/v1/nodes", version=None)
    assert resp.status_code == 200
    assert resp.headers["X-OpenStack-Ironic-API-Version"] == "1.1"
    node = server.create_node(version=None)
    assert "name" not in node  # name is 1.5
    # Before 1.2 Ironic shows "available" as null (the old NOSTATE).
    assert node["provision_state"] is None
    assert server.node(node["uuid"], version="1.1")["provision_state"] is None
    assert server.node(node["uuid"], version="1.2")["provision_state"] == "available"
    assert server.node(node["uuid"])["provision_state"] == "available"


@pytest.mark.parametrize(("version", "state"), [("1.10", "available"), ("1.11", "enroll"), ("latest", "enroll")])
def test_initial_state_depends_on_version(server: Ferricd, version: str, state: str) -> None:
    node = server.create_node(version=version)
    assert node["provision_state"] == state
    assert server.node(node["uuid"])["provision_state"] == state


def test_latest_is_the_maximum(server: Ferricd) -> None:
    resp = server.request("GET", "/v1/nodes", version="latest")
    assert resp.status_code == 200
    assert_version_headers(resp, MAX_VERSION)


def test_openstack_api_version_header_form(server: Ferricd) -> None:
    node = server.create_node(name="ver-node")
    resp = server.request(
        "GET", f"/v1/nodes/{node['uuid']}", version=None, headers={"OpenStack-API-Version": "baremetal 1.40"}
    )
    assert resp.status_code == 200, resp.text
    assert_version_headers(resp, "1.40")
    body = resp.json()
    assert "traits" in body  # 1.37
    assert "bios_interface" in body  # 1.40
    assert "fault" not in body  # 1.42


@pytest.mark.parametrize("version", ["1.0", "1.96", "2.0", "1.115"])
def test_versions_outside_the_range_are_refused_with_406(server: Ferricd, version: str) -> None:
    for method, path in (("GET", "/v1/nodes"), ("GET", "/v1/nodes/detail"), ("GET", "/v1/ports")):
        resp = server.request(method, path, version=version)
        assert_ironic_error(resp, 406, version_refused=True)
    # The same through the standard header form.
    resp = server.request("GET", "/v1/nodes", version=None, headers={"OpenStack-API-Version": f"baremetal {version}"})
    assert_ironic_error(resp, 406, version_refused=True)
    # A refused create must not create anything.
    resp = server.request("POST", "/v1/nodes", version=version, json={"driver": "fake-hardware"})
    assert_ironic_error(resp, 406, version_refused=True)
    assert server.get("/v1/nodes")["nodes"] == []


def test_malformed_version_is_a_bad_request(server: Ferricd) -> None:
    resp = server.request("GET", "/v1/nodes", version="one.five")
    assert_ironic_error(resp, 400, version_refused=True)


def test_fields_newer_than_the_version_are_hidden(server: Ferricd) -> None:
    node = server.create_node(name="hidden-1", resource_class="gold", owner="team-a", description="rack 4")
    uuid = node["uuid"]
    gated = {"name": "1.5", "resource_class": "1.21", "owner": "1.50", "description": "1.51"}
    newest = server.node(uuid, version="1.1")
    for field in gated:
        assert field not in newest, f"{field} shown at 1.1: {newest}"
    for field, version in gated.items():
        minor = int(version.split(".")[1])
        before = server.node(uuid, version=f"1.{minor - 1}")
        at = server.node(uuid, version=version)
        assert field not in before, f"{field} shown at 1.{minor - 1}"
        assert field in at, f"{field} hidden at {version}"
    assert server.node(uuid, version="1.51")["description"] == "rack 4"
    # Lists hide them too.
    listed = server.get("/v1/nodes/detail", version="1.1")["nodes"]
    assert listed and all("name" not in n and "resource_class" not in n for n in listed)
    listed = server.get("/v1/nodes", version="1.5")["nodes"]
    assert [n["name"] for n in listed] == ["hidden-1"]


def test_get_by_name_from_1_5(server: Ferricd) -> None:
    node = server.create_node(name="by-name")
    assert server.node("by-name", version="1.5")["uuid"] == node["uuid"]


@pytest.mark.parametrize(("version", "field", "value"), [("1.4", "name", "too-early"),
                                                         ("1.20", "resource_class", "gold"),
                                                         ("1.49", "owner", "team-a")])
def test_fields_newer_than_the_version_are_refused_in_create(
    server: Ferricd, version: str, field: str, value: str
) -> None:
    resp = server.request("POST", "/v1/nodes", version=version, json={"driver": "fake-hardware", field: value})
    assert_ironic_error(resp, 406)
    assert server.get("/v1/nodes")["nodes"] == []


@pytest.mark.parametrize(("version", "field", "value"), [("1.4", "name", "too-early"),
                                                         ("1.20", "resource_class", "gold"),
                                                         ("1.50", "description", "x")])
def test_fields_newer_than_the_version_are_refused_in_patch(
    server: Ferricd, version: str, field: str, value: str
) -> None:
    node = server.create_node()
    before = server.snapshot()
    resp = server.request("PATCH", f"/v1/nodes/{node['uuid']}", version=version,
                          json=[{"op": "add", "path": f"/{field}", "value": value}])
    assert_ironic_error(resp, 406)
    assert server.snapshot() == before


def test_provision_verbs_are_gated_by_version(server: Ferricd) -> None:
    node = server.create_node()
    resp = server.request("PUT", f"/v1/nodes/{node['uuid']}/states/provision", version="1.3",
                          json={"target": "manage"})
    assert_ironic_error(resp, 406)
    assert server.node(node["uuid"])["provision_state"] == "enroll"
