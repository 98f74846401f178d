"""`ferric ignition`: the Ignition config that makes a CoreOS live system run
ferric-agent. Checked against Ignition's own v3.4 JSON schema (tests/data,
see its README), and for the values that must never reach its systemd unit.
No ferricd is needed: only target/debug/ferric (or FERRIC_BIN)."""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import struct
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from support import ROOT, binary

SCHEMA = ROOT / "tests" / "data" / "ignition-v3.4-schema.json"
AGENT_CONFIG_RS = ROOT / "crates" / "agent" / "src" / "config.rs"

API = "http://192.0.2.1:6385"
IMAGE = "192.0.2.1:5000/ferric/agent:latest"
CONFIG_PATH = "/etc/ferric-agent/agent.toml"
RUN_AGENT = f"--config {CONFIG_PATH}"


@pytest.fixture(scope="module")
def ferric() -> Path:
    try:
        return binary("FERRIC_BIN", "ferric")
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA.read_text())


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    """A validator of the draft the schema names ($schema: draft-04)."""
    cls = jsonschema.validators.validator_for(schema)
    assert cls is jsonschema.Draft4Validator
    cls.check_schema(schema)
    return cls(schema)


def ssh_key(comment: str) -> str:
    """An ed25519 public key line: the type as an SSH string, then 32 bytes."""
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + os.urandom(32)
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


def run(ferric: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ferric, "ignition", *args], capture_output=True, text=True, timeout=30)


def generate(ferric: Path, *args: str) -> dict[str, Any]:
    result = run(ferric, *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Follows local references (#/definitions/...)."""
    while "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/"), f"only local references: {ref}"
        schema = root
        for part in ref[2:].split("/"):
            schema = schema[part]
    return schema


def properties(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """The properties a schema names, its allOf parts' included (a file is a
    node and a file)."""
    schema = resolve(schema, root)
    named = dict(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        named.update(properties(part, root))
    return named


def unknown_keys(value: Any, schema: dict[str, Any], root: dict[str, Any], where: str = "") -> list[str]:
    """The keys of `value` its schema does not name. Ignition's schema allows
    any key and Ignition only warns about an unknown one, so a misspelt key
    (`sshAuthorizedkeys`) would validate and silently do nothing."""
    schema = resolve(schema, root)
    found = []
    if isinstance(value, dict):
        named = properties(schema, root)
        for key, item in value.items():
            if key in named:
                found += unknown_keys(item, named[key], root, f"{where}.{key}")
            else:
                found.append(f"{where}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found += unknown_keys(item, schema["items"], root, f"{where}[{index}]")
    return found


def check_ignition(doc: dict[str, Any], validator: jsonschema.protocols.Validator, schema: dict[str, Any]) -> None:
    validator.validate(doc)
    assert unknown_keys(doc, schema, schema) == []
    assert doc["ignition"]["version"] == "3.4.0"


def agent_config_fields() -> set[str]:
    """The keys AgentConfig accepts (it denies unknown ones): its fields."""
    source = AGENT_CONFIG_RS.read_text()
    body = re.search(r"pub struct AgentConfig \{(.*?)\n\}", source, re.S)
    assert body, f"no AgentConfig in {AGENT_CONFIG_RS}"
    fields = set(re.findall(r"^\s*pub (\w+):", body.group(1), re.M))
    assert {"api_url", "insecure", "debug"} <= fields
    return fields


def agent_toml(doc: dict[str, Any]) -> dict[str, Any]:
    [file] = doc["storage"]["files"]
    assert file["path"] == CONFIG_PATH
    assert file["mode"] == 0o600
    source = file["contents"]["source"]
    assert source.startswith("data:;base64,")
    settings = tomllib.loads(base64.b64decode(source.removeprefix("data:;base64,"), validate=True).decode())
    assert set(settings) <= agent_config_fields()
    return settings


def unit(doc: dict[str, Any]) -> tuple[str, dict[str, list[str]]]:
    """The agent's unit: its text and its directives, `Section.Key` -> values."""
    [entry] = doc["systemd"]["units"]
    assert entry["name"] == "ferric-agent.service"
    assert entry["enabled"] is True
    text = entry["contents"]
    directives: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        directives.setdefault(f"{section}.{key}", []).append(value)
    assert directives["Unit.Wants"] == ["network-online.target"]
    assert directives["Unit.After"] == ["network-online.target"]
    assert directives["Service.Restart"] == ["on-failure"]
    assert directives["Install.WantedBy"] == ["multi-user.target"]
    return text, directives


def test_binary_mode_fetches_the_agent_from_ferricd(ferric: Path, validator, schema, tmp_path: Path) -> None:
    key = ssh_key("operator@example")
    doc = generate(ferric, "--api-url", API, "--ssh-key", key, "--insecure", "--debug")
    check_ignition(doc, validator, schema)
    assert agent_toml(doc) == {"api_url": API, "insecure": True, "debug": True}
    assert doc["passwd"]["users"] == [{"name": "core", "sshAuthorizedKeys": [key]}]

    text, directives = unit(doc)
    agent = "/run/ferric-agent/ferric-agent"
    assert directives["Service.ExecStart"] == [f"{agent} {RUN_AGENT}"]
    curl, chmod, chcon = directives["Service.ExecStartPre"]
    curl_words = curl.split()
    assert curl_words[0] == "/usr/bin/curl"
    assert {"--fail", "--retry", "--insecure"} <= set(curl_words)
    assert curl_words[curl_words.index("--output") + 1] == agent
    assert curl_words[-1] == f"{API}/boot/agent/ferric-agent"
    assert chmod == f"/usr/bin/chmod 0755 {agent}"
    assert chcon.startswith("-/usr/bin/chcon ")
    assert "podman" not in text

    # A key file (as ssh-keygen writes it) and --agent-url; no --insecure,
    # so the settings leave TLS verification to the agent's default.
    keys = tmp_path / "id_ed25519.pub"
    other = ssh_key("other@example")
    keys.write_text(f"{other}\n")
    doc = generate(ferric, "--api-url", API + "/", "--ssh-key", str(keys), "--ssh-key", key,
                   "--agent-url", "https://files.example/ferric-agent")
    check_ignition(doc, validator, schema)
    assert agent_toml(doc) == {"api_url": API + "/"}
    assert doc["passwd"]["users"][0]["sshAuthorizedKeys"] == [other, key]
    _, directives = unit(doc)
    curl = directives["Service.ExecStartPre"][0].split()
    assert curl[-1] == "https://files.example/ferric-agent"
    assert "--insecure" not in curl


@pytest.mark.parametrize("insecure_registry", [False, True])
def test_container_mode_runs_the_image_with_the_host_root(
    ferric: Path, validator, schema, tmp_path: Path, insecure_registry: bool
) -> None:
    key = ssh_key("operator@example")
    out = tmp_path / "agent.ign"
    args = ["--api-url", API, "--ssh-key", key, "--container", IMAGE, "--output", str(out)]
    result = run(ferric, *args, *(["--insecure-registry"] if insecure_registry else []))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    doc = json.loads(out.read_text())
    check_ignition(doc, validator, schema)
    assert agent_toml(doc) == {"api_url": API}
    assert doc["passwd"]["users"] == [{"name": "core", "sshAuthorizedKeys": [key]}]

    text, directives = unit(doc)
    assert ("--tls-verify=false" in text) == insecure_registry
    pull = "/usr/bin/podman pull" + (" --tls-verify=false" if insecure_registry else "")
    assert directives["Service.ExecStartPre"] == [f"{pull} {IMAGE}"]
    assert directives["Service.ExecStop"] == ["/usr/bin/podman stop ferric-agent"]
    [start] = directives["Service.ExecStart"]
    assert start.startswith("/usr/bin/podman run --rm --privileged --network host --name ferric-agent ")
    assert start.endswith(f" {IMAGE} ferric-agent {RUN_AGENT}")
    words = start.split()
    volumes = {words[i + 1] for i, word in enumerate(words) if word == "--volume"}
    assert volumes == {"/dev:/dev", "/sys:/sys", "/:/mnt/coreos", f"{CONFIG_PATH}:{CONFIG_PATH}:ro"}
    assert "curl" not in text


def test_the_schema_is_not_vacuous(validator, schema) -> None:
    good = {
        "ignition": {"version": "3.4.0"},
        "systemd": {"units": [{"name": "a.service", "enabled": True, "contents": "[Unit]\n"}]},
        "storage": {"files": [{"path": "/etc/a", "mode": 384, "contents": {"source": "data:,a"}}]},
        "passwd": {"users": [{"name": "core", "sshAuthorizedKeys": ["ssh-ed25519 AAAA"]}]},
    }
    validator.validate(good)
    assert unknown_keys(good, schema, schema) == []

    broken = []
    no_name = copy.deepcopy(good)
    del no_name["systemd"]["units"][0]["name"]
    broken.append(no_name)
    no_path = copy.deepcopy(good)
    del no_path["storage"]["files"][0]["path"]
    broken.append(no_path)
    text_mode = copy.deepcopy(good)
    text_mode["storage"]["files"][0]["mode"] = "0600"
    broken.append(text_mode)
    one_key = copy.deepcopy(good)
    one_key["passwd"]["users"][0]["sshAuthorizedKeys"] = "ssh-ed25519 AAAA"
    broken.append(one_key)
    broken.append({"systemd": good["systemd"]})
    for doc in broken:
        assert not validator.is_valid(doc), doc

    misspelt = copy.deepcopy(good)
    misspelt["passwd"]["users"][0]["sshAuthorizedkeys"] = misspelt["passwd"]["users"][0].pop("sshAuthorizedKeys")
    assert unknown_keys(misspelt, schema, schema) == [".passwd.users[0].sshAuthorizedkeys"]


BAD_INPUT = [
    (["--api-url", f"{API}\nExecStartPre=/bin/sh -c id"], "--api-url", "control character"),
    (["--api-url", "ftp://192.0.2.1/agent"], "--api-url", "not an http:// or https:// URL"),
    (["--api-url", f"{API}/%H"], "--api-url", "specifiers"),
    (["--api-url", API, "--agent-url", f"{API}/agent --output /etc/shadow"], "--agent-url", "more words"),
    (["--api-url", API, "--ssh-key", "ssh-ed25519 not-base64!"], "--ssh-key", "not an SSH public key"),
    (["--api-url", API, "--ssh-key", "/no/such/id.pub"], "--ssh-key", "nor a readable file"),
    (["--api-url", API, "--container", f"{IMAGE} --volume=/:/x"], "--container", "more words"),
    (["--api-url", API, "--container=-v/:/host"], "--container", "start with a letter or a digit"),
]


@pytest.mark.parametrize("args,option,reason", BAD_INPUT, ids=[f"{o} {r}" for _, o, r in BAD_INPUT])
def test_bad_input_is_refused_and_prints_no_json(
    ferric: Path, tmp_path: Path, args: list[str], option: str, reason: str
) -> None:
    out = tmp_path / "agent.ign"
    for output in ([], ["--output", str(out)]):
        result = run(ferric, *args, *output)
        assert result.returncode == 2, result
        assert result.stdout == ""
        assert "error: invalid value" in result.stderr and option in result.stderr, result.stderr
        assert reason in result.stderr, result.stderr
        assert not out.exists()


def test_a_private_key_is_refused(ferric: Path, tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n")
    result = run(ferric, "--api-url", API, "--ssh-key", str(key))
    assert result.returncode == 2 and result.stdout == ""
    assert "holds a private key: give the public key (the .pub file)" in result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("mode", [[], ["--container", IMAGE, "--insecure-registry"]], ids=["binary", "container"])
def test_systemd_reads_the_unit_without_complaint(ferric: Path, tmp_path: Path, mode: list[str]) -> None:
    doc = generate(ferric, "--api-url", API, *mode)
    path = tmp_path / "ferric-agent.service"
    path.write_text(unit(doc)[0])
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                            capture_output=True, text=True, timeout=60)
    # The programs are CoreOS's and the agent's, absent here; anything else
    # (an unknown key, a bad specifier, a syntax error) is a finding.
    complaints = [line for line in result.stderr.splitlines()
                  if line and not re.search(r": Command \S+ is not executable: No such file", line)]
    assert complaints == []
