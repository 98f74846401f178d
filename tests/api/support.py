"""Helpers shared by the API tests: running ferricd, talking to it, waiting.

Everything here is bounded in time: a test that waits for a state waits for a
fixed number of seconds, then fails with what it saw last.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid as uuidlib
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import requests

ROOT = Path(__file__).resolve().parents[2]

MIN_VERSION = "1.1"
MAX_VERSION = "1.95"

@contextmanager
def serve_directory(root: Path, host: str = "127.0.0.1") -> Iterator[str]:
    """Python's http.server over `root` on a free port of `host`, in a
    thread, for the files a test's nodes or agents fetch; yields its URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer((host, 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://{host}:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


VERSION_HEADERS = (
    "X-OpenStack-Ironic-API-Minimum-Version",
    "X-OpenStack-Ironic-API-Maximum-Version",
    "X-OpenStack-Ironic-API-Version",
)


def binary(env_name: str, name: str) -> Path:
    path = Path(os.environ.get(env_name) or ROOT / "target" / "debug" / name)
    if not path.is_file() or not os.access(path, os.X_OK):
        raise RuntimeError(
            f"{path} is not an executable: build it first (`cargo build --workspace` or `make build`) "
            f"or point {env_name} at it"
        )
    return path


def baremetal_bin() -> Path:
    """The `baremetal` CLI of python-ironicclient, next to the running python."""
    candidates = [
        os.environ.get("BAREMETAL_BIN"),
        Path(sys.executable).parent / "baremetal",
        ROOT / ".venv" / "bin" / "baremetal",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise RuntimeError("the baremetal CLI is missing: run scripts/install-deps")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_table(name: str, values: dict[str, Any]) -> list[str]:
    """A table and, for dict values, its sub-tables ([conductor.pxe])."""
    lines = [f"[{name}]"] + [f"{k} = {toml_value(v)}" for k, v in values.items() if not isinstance(v, dict)]
    for key, value in values.items():
        if isinstance(value, dict):
            lines += toml_table(f"{name}.{key}", value)
    return lines


def write_config(path: Path, conductor: dict[str, Any], sections: dict[str, dict[str, Any]] | None = None) -> Path:
    """ferricd.toml: `conductor` is [conductor] (dict values become its
    sub-tables), `sections` other top-level tables such as [dnsmasq]."""
    lines = toml_table("conductor", conductor)
    for name, values in (sections or {}).items():
        lines += toml_table(name, values)
    path.write_text("\n".join(lines) + "\n")
    return path


class Ferricd:
    """One ferricd process on a free loopback port."""

    def __init__(
        self,
        workdir: Path,
        *,
        database: str | None = None,
        hostname: str = "ferric-test",
        conductor: dict[str, Any] | None = None,
        sections: dict[str, dict[str, Any]] | None = None,
        name: str = "ferricd",
    ) -> None:
        self.bin = binary("FERRICD_BIN", "ferricd")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.database = database or f"sqlite://{workdir / 'ferric.sqlite'}"
        self.hostname = hostname
        self.name = name
        self.config = (
            write_config(workdir / f"{name}.toml", conductor or {}, sections) if conductor or sections else None
        )
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "Ferricd":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        for _attempt in range(3):
            self.port = free_port()
            self.starts += 1
            cmd = [
                str(self.bin),
                "--listen", f"127.0.0.1:{self.port}",
                "--database", self.database,
                "--hostname", self.hostname,
                "--log-level", "info,ferric_conductor=debug",
            ]
            if self.config:
                cmd += ["--config", str(self.config)]
            log = open(self.log_path, "a")
            log.write(f"\n===== start #{self.starts}: {' '.join(cmd)}\n")
            log.flush()
            env = dict(os.environ, NO_COLOR="1", RUST_BACKTRACE="0")
            self.proc = subprocess.Popen(
                cmd, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
            log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    requests.get(self.url + "/", timeout=2)
                    return self
                except requests.RequestException:
                    time.sleep(0.1)
            if self.proc.poll() is None:
                self.kill()
                raise RuntimeError(f"{self.name} did not answer on {self.url} within {timeout} s:\n{self.log()}")
            if "in use" not in self.log():
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
        raise RuntimeError(f"{self.name} could not find a free port:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a power cut."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> "Ferricd":
        self.stop()
        return self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"

    # --- HTTP -------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        version: str | None = "latest",
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        all_headers = {"Accept": "application/json"}
        if version is not None:
            all_headers["X-OpenStack-Ironic-API-Version"] = version
        all_headers.update(headers or {})
        url = path if path.startswith("http") else self.url + path
        return requests.request(method, url, headers=all_headers, timeout=30, **kwargs)

    def call(self, method: str, path: str, expect: int | tuple[int, ...], **kwargs: Any) -> Any:
        """A request that must answer `expect`; returns the JSON body (or None)."""
        resp = self.request(method, path, **kwargs)
        expected = (expect,) if isinstance(expect, int) else expect
        assert resp.status_code in expected, (
            f"{method} {path} {kwargs.get('json', '')!r}: expected {expect}, got "
            f"{resp.status_code} {resp.text[:2000]}"
        )
        if resp.content and resp.headers.get("Content-Type", "").startswith("application/json"):
            return resp.json()
        return None

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.call("GET", path, 200, **kwargs)

    def create_node(self, expect: int = 201, **fields: Any) -> dict:
        fields.setdefault("driver", "fake-hardware")
        version = fields.pop("version", "latest")
        return self.call("POST", "/v1/nodes", expect, json=fields, version=version)

    def node(self, ident: str, **kwargs: Any) -> dict:
        return self.get(f"/v1/nodes/{ident}", **kwargs)

    def patch_node(self, ident: str, ops: list[dict], expect: int = 200, **kwargs: Any) -> Any:
        return self.call("PATCH", f"/v1/nodes/{ident}", expect, json=ops, **kwargs)

    def provision(self, ident: str, target: str, expect: int = 202, **body: Any) -> Any:
        body["target"] = target
        return self.call("PUT", f"/v1/nodes/{ident}/states/provision", expect, json=body)

    def create_port(self, node_uuid: str, address: str, expect: int = 201) -> dict:
        return self.call("POST", "/v1/ports", expect, json={"node_uuid": node_uuid, "address": address})

    def wait_state(self, ident: str, state: str, timeout: float = 30.0, field: str = "provision_state") -> dict:
        return wait_for(
            lambda: self.node(ident),
            lambda n: n[field] == state,
            timeout,
            f"node {ident} {field} == {state!r}",
        )

    def drive(self, ident: str, target: str, state: str, timeout: float = 30.0, **body: Any) -> dict:
        """A provision verb, then wait for the stable state it leads to."""
        self.provision(ident, target, **body)
        return self.wait_state(ident, state, timeout)

    def make_available(self, ident: str) -> dict:
        self.drive(ident, "manage", "manageable")
        return self.drive(ident, "provide", "available")

    def snapshot(self) -> dict:
        """Every node and port in full: compared before and after a refused request."""
        nodes = self.get("/v1/nodes/detail?limit=1000")["nodes"]
        ports = self.get("/v1/ports/detail?limit=1000")["ports"]
        return {
            "nodes": sorted(nodes, key=lambda n: n["uuid"]),
            "ports": sorted(ports, key=lambda p: p["uuid"]),
        }


def wait_for(
    fetch: Callable[[], Any], done: Callable[[Any], bool], timeout: float, what: str, interval: float = 0.2
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = fetch()
        if done(last):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last seen: {last!r}")
        time.sleep(interval)


def assert_version_headers(resp: requests.Response, version: str | None = None) -> None:
    for header in VERSION_HEADERS:
        assert header in resp.headers, f"{header} missing from {resp.status_code} response: {dict(resp.headers)}"
    assert resp.headers["X-OpenStack-Ironic-API-Minimum-Version"] == MIN_VERSION
    assert resp.headers["X-OpenStack-Ironic-API-Maximum-Version"] == MAX_VERSION
    if version is not None:
        assert resp.headers["X-OpenStack-Ironic-API-Version"] == version


def assert_ironic_error(
    resp: requests.Response, status: int, match: str | None = None, *, version_refused: bool = False
) -> dict:
    """Ironic's error shape: {"error_message": "<JSON string>"} and version headers.

    A request whose version itself is refused (406, or 400 for a malformed
    one) has no negotiated version: Ironic sends the minimum and maximum
    headers only, which is what the clients read to retry.
    """
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text[:2000]}"
    assert resp.headers.get("Content-Type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert list(body) == ["error_message"], body
    assert isinstance(body["error_message"], str), f"error_message must be a JSON string, got {body!r}"
    fault = json.loads(body["error_message"])
    assert set(fault) >= {"faultcode", "faultstring", "debuginfo"}, fault
    assert fault["faultcode"] == ("Client" if status < 500 else "Server"), fault
    assert isinstance(fault["faultstring"], str) and fault["faultstring"].strip(), fault
    if match is not None:
        assert re.search(match, fault["faultstring"], re.I), f"{match!r} not in {fault['faultstring']!r}"
    if version_refused:
        for header in VERSION_HEADERS[:2]:
            assert header in resp.headers, f"{header} missing from {resp.status_code} response: {dict(resp.headers)}"
        assert resp.headers["X-OpenStack-Ironic-API-Minimum-Version"] == MIN_VERSION
        assert resp.headers["X-OpenStack-Ironic-API-Maximum-Version"] == MAX_VERSION
    else:
        assert_version_headers(resp)
    return fault


def random_uuid() -> str:
    return str(uuidlib.uuid4())


def mac(n: int) -> str:
    return "52:54:00:%02x:%02x:%02x" % ((n >> 16) & 0xFF, (n >> 8) & 0xFF, n & 0xFF)


class Baremetal:
    """The real `baremetal` CLI of python-ironicclient, standalone (no Keystone)."""

    def __init__(self, url: str, home: Path) -> None:
        self.url = url
        self.bin = baremetal_bin()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env["HOME"] = str(home)  # no clouds.yaml, no cache from the operator's home
        home.mkdir(parents=True, exist_ok=True)
        self.env = env

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(self.bin), "--os-auth-type", "none", "--os-endpoint", self.url, *args]
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"`baremetal {' '.join(args)}` exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    def json(self, *args: str) -> Any:
        proc = self.run(*args, "-f", "json")
        try:
            return json.loads(proc.stdout)
        except json.JSONDecodeError as e:
            raise AssertionError(f"`baremetal {' '.join(args)}` printed no JSON: {proc.stdout!r}") from e

    def rows(self, *args: str) -> list[dict]:
        """A list command's rows, keyed like the API ("provision_state"), whatever the
        client's column headers ("Provision State" in older releases)."""
        return [{key.lower().replace(" ", "_"): value for key, value in row.items()} for row in self.json(*args)]

    def fails(self, *args: str) -> subprocess.CompletedProcess:
        proc = self.run(*args, check=False)
        assert proc.returncode != 0, f"`baremetal {' '.join(args)}` should fail: {proc.stdout}"
        return proc
