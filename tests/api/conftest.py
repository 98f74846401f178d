"""Fixtures: ferricd processes on free loopback ports, and the clients that talk to them.

The binaries are built by `make build`/`make test`, not here: the tests use
target/debug/ferricd and target/debug/ferric (FERRICD_BIN and FERRIC_BIN
override them).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from support import Baremetal, Ferricd, binary


@pytest.fixture(scope="session")
def binaries() -> dict[str, Path]:
    try:
        return {"ferricd": binary("FERRICD_BIN", "ferricd"), "ferric": binary("FERRIC_BIN", "ferric")}
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for server in getattr(item, "_ferricd_servers", []):
            report.sections.append((f"{server.name} log ({server.log_path})", server.log()[-20000:]))


@pytest.fixture
def ferricd_factory(
    request: pytest.FixtureRequest, tmp_path: Path, binaries: dict[str, Path]
) -> Iterator[Callable[..., Ferricd]]:
    """Starts ferricd processes for one test; all of them are killed at teardown.

    factory(conductor={...}, database=URL, hostname=NAME, start=True)
    """
    servers: list[Ferricd] = []
    request.node._ferricd_servers = servers

    def factory(*, start: bool = True, **kwargs: Any) -> Ferricd:
        name = kwargs.pop("name", f"ferricd-{len(servers) + 1}")
        server = Ferricd(tmp_path / name, name=name, **kwargs)
        servers.append(server)
        return server.start() if start else server

    yield factory
    for server in servers:
        server.kill()


@pytest.fixture
def server(ferricd_factory: Callable[..., Ferricd]) -> Ferricd:
    """A ferricd with the default configuration on a fresh SQLite database."""
    return ferricd_factory(name="ferricd")


@pytest.fixture
def baremetal(server: Ferricd, tmp_path: Path) -> Baremetal:
    return Baremetal(server.url, tmp_path / "home")


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database (dropped afterwards) on FERRIC_TEST_POSTGRES_URL's server.

    Skipped without FERRIC_TEST_POSTGRES_URL unless FERRIC_REQUIRE_POSTGRES=1,
    which `make test` sets: then a missing server is a failure, not a skip.
    """
    base = os.environ.get("FERRIC_TEST_POSTGRES_URL")
    if not base:
        if os.environ.get("FERRIC_REQUIRE_POSTGRES") == "1":
            pytest.fail("FERRIC_REQUIRE_POSTGRES=1 but FERRIC_TEST_POSTGRES_URL is not set", pytrace=False)
        pytest.skip("FERRIC_TEST_POSTGRES_URL is not set")
    import psycopg

    name = f"ferric_api_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(base)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
