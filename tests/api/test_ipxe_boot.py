"""The ipxe boot interface as a node sees it over HTTP, and its settings
through the real `baremetal` CLI: the entry script, the per-MAC script in
deploy and local modes, the deploy files, the dnsmasq host entries, and
kernel parameters that would inject iPXE commands refused at the API.
No VM here: tests/e2e boots a real one."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import requests

from support import Baremetal, Ferricd

MAC = "52:54:00:1b:00:01"


def boot_server(ferricd_factory: Callable[..., Ferricd], tmp_path: Path) -> tuple[Ferricd, Path]:
    files = tmp_path / "deploy"
    files.mkdir()
    (files / "vmlinuz").write_bytes(b"kernel-bytes" * 1000)
    (files / "initrd").write_bytes(b"ramdisk-bytes" * 1000)
    hosts = tmp_path / "hosts"
    hosts.mkdir()
    server = ferricd_factory(
        conductor={
            "automated_clean": False,
            "deploy_callback_timeout": 4,
            "callback_check_interval": 1,
            "pxe": {
                "deploy_kernel": str(files / "vmlinuz"),
                "deploy_ramdisk": str(files / "initrd"),
                "kernel_append_params": "console=ttyS0",
                "dhcp_hosts_dir": str(hosts),
            },
        }
    )
    return server, hosts


def script(server: Ferricd, mac: str) -> requests.Response:
    return requests.get(f"{server.url}/boot/ipxe/{mac}", timeout=10)


def test_scripts_follow_the_node_through_a_deploy(
    ferricd_factory: Callable[..., Ferricd], tmp_path: Path
) -> None:
    server, hosts = boot_server(ferricd_factory, tmp_path)
    bm = Baremetal(server.url, tmp_path / "home")
    node = bm.json(
        "node", "create", "--driver", "fake-hardware", "--boot-interface", "ipxe",
        "--name", "pxe-1", "--driver-info", "fake_wait=[\"deploy\"]",
    )
    bm.run("port", "create", MAC, "--node", node["uuid"])

    entry = requests.get(f"{server.url}/boot/boot.ipxe", timeout=10)
    assert entry.status_code == 200
    assert entry.text.startswith("#!ipxe\n")
    assert f"chain --autofree {server.url}/boot/ipxe/${{mac:hexhyp}}" in entry.text

    # Not deploying: the node boots its disk (UEFI by default: exit to firmware).
    local = script(server, MAC.replace(":", "-"))
    assert local.status_code == 200, local.text
    assert "kernel " not in local.text and "\nexit" in local.text
    assert local.headers["Cache-Control"] == "no-store"
    # Unknown and malformed MACs get 404: iPXE's chain fails and it boots on.
    assert script(server, "52-54-00-99-99-99").status_code == 404
    assert script(server, "..%2Fetc%2Fpasswd").status_code == 404

    bm.run("node", "manage", "pxe-1", "--wait", "30")
    bm.run("node", "provide", "pxe-1", "--wait", "30")
    assert not list(hosts.iterdir()), "no DHCP entry before a deploy"
    bm.run("node", "deploy", "pxe-1")
    server.wait_state(node["uuid"], "wait call-back", timeout=15)

    deploy = script(server, MAC).text
    assert f"kernel {server.url}/boot/deploy/kernel console=ttyS0 " in deploy, deploy
    assert f"ipa-api-url={server.url} BOOTIF=01-52-54-00-1b-00-01 initrd=ramdisk" in deploy
    assert f"initrd --name ramdisk {server.url}/boot/deploy/ramdisk" in deploy
    entries = {p.name: p.read_text() for p in hosts.iterdir()}
    assert entries == {"ferric-52-54-00-1b-00-01": f"{MAC},set:ferric\n"}, entries
    kernel = requests.get(f"{server.url}/boot/deploy/kernel", timeout=10)
    assert kernel.status_code == 200 and kernel.content == b"kernel-bytes" * 1000
    part = requests.get(f"{server.url}/boot/deploy/ramdisk", headers={"Range": "bytes=0-12"}, timeout=10)
    assert part.status_code == 206 and part.content == b"ramdisk-bytes"
    assert requests.get(f"{server.url}/boot/deploy/other", timeout=10).status_code == 404

    # The agent never boots: deploy failed after the callback timeout, powered off.
    failed = server.wait_state(node["uuid"], "deploy failed", timeout=20)
    assert "Timeout reached while waiting for callback" in failed["last_error"], failed
    assert server.node(node["uuid"])["power_state"] == "power off"

    # Undeploy: the ramdisk is gone and the node boots its disk. Its DHCP
    # entry stays (dnsmasq only adds host records); the script decides.
    bm.run("node", "set", "pxe-1", "--driver-info", "fake_wait=[]")
    bm.run("node", "undeploy", "pxe-1", "--wait", "30")
    assert "kernel " not in script(server, MAC).text
    assert [p.name for p in hosts.iterdir()] == ["ferric-52-54-00-1b-00-01"]


def test_kernel_parameters_that_inject_ipxe_commands_are_refused(
    ferricd_factory: Callable[..., Ferricd], tmp_path: Path
) -> None:
    server, _ = boot_server(ferricd_factory, tmp_path)
    bm = Baremetal(server.url, tmp_path / "home")
    bm.run("node", "create", "--driver", "fake-hardware", "--boot-interface", "ipxe", "--name", "pxe-2")
    for bad, reason in [
        ("quiet\n#!ipxe\nshell", "line break"),
        ("quiet #!ipxe", "iPXE"),
        ("quiet || shell", "iPXE"),
        ("ip=${net0/ip}", "iPXE"),
    ]:
        proc = bm.fails("node", "set", "pxe-2", "--driver-info", f"kernel_append_params={bad}")
        assert "kernel_append_params" in proc.stderr and reason in proc.stderr, proc.stderr
        proc = bm.fails("node", "set", "pxe-2", "--instance-info", f"kernel_append_params={bad}")
        assert reason in proc.stderr, proc.stderr
    node = bm.json("node", "show", "pxe-2", "--fields", "driver_info", "instance_info")
    assert "kernel_append_params" not in node["driver_info"], node
    # A node created with them is refused too (400), not stored.
    resp = requests.post(
        f"{server.url}/v1/nodes",
        json={"driver": "fake-hardware", "name": "pxe-3",
              "driver_info": {"kernel_append_params": "a\nb"}},
        headers={"X-OpenStack-Ironic-API-Version": "latest"},
        timeout=10,
    )
    assert resp.status_code == 400 and "line break" in resp.text, resp.text
    assert not [n for n in server.get("/v1/nodes")["nodes"] if n["name"] == "pxe-3"]

    # Good parameters pass; %default% keeps the server's.
    bm.run("node", "set", "pxe-2", "--driver-info", "kernel_append_params=%default% ipa-debug=1")
    # A deploy ramdisk that is not a URL fails validation with the reason.
    bm.run("node", "set", "pxe-2", "--driver-info", "deploy_ramdisk=/etc/shadow")
    rows = {r["interface"]: r for r in bm.rows("node", "validate", "pxe-2")}
    assert rows["boot"]["result"] is False, rows["boot"]
    assert "deploy_ramdisk" in rows["boot"]["reason"] and "http(s)" in rows["boot"]["reason"]


def test_pxe_nodes_get_pxelinux_configurations(ferricd_factory: Callable[..., Ferricd], tmp_path: Path) -> None:
    server, hosts = boot_server(ferricd_factory, tmp_path)
    bm = Baremetal(server.url, tmp_path / "home")
    mac = "52:54:00:1b:00:02"
    node = bm.json(
        "node", "create", "--driver", "fake-hardware", "--boot-interface", "pxe", "--name", "pxe-bios",
        "--driver-info", "fake_wait=[\"deploy\"]", "--property", "capabilities=boot_mode:bios",
    )
    bm.run("port", "create", mac, "--node", node["uuid"])
    config_url = f"{server.url}/boot/pxelinux/pxelinux.cfg/01-52-54-00-1b-00-02"
    local = requests.get(config_url, timeout=10)
    assert local.status_code == 200 and "LOCALBOOT 0" in local.text, local.text
    # Only 01-<mac> names are answered; a pxe node has no iPXE script.
    assert requests.get(f"{server.url}/boot/pxelinux/pxelinux.cfg/default", timeout=10).status_code == 404
    assert script(server, mac).status_code == 404
    module = requests.get(f"{server.url}/boot/pxelinux/ldlinux.c32", timeout=10)
    assert module.status_code == 200
    assert module.content == Path("/usr/lib/syslinux/modules/bios/ldlinux.c32").read_bytes()
    assert requests.get(f"{server.url}/boot/pxelinux/..%2F..%2Fetc%2Fpasswd", timeout=10).status_code == 404

    bm.run("node", "manage", "pxe-bios", "--wait", "30")
    bm.run("node", "provide", "pxe-bios", "--wait", "30")
    bm.run("node", "deploy", "pxe-bios")
    server.wait_state(node["uuid"], "wait call-back", timeout=15)
    deploy = requests.get(config_url, timeout=10).text
    assert f"  KERNEL {server.url}/boot/deploy/kernel\n" in deploy, deploy
    assert f"  INITRD {server.url}/boot/deploy/ramdisk\n" in deploy, deploy
    assert "  APPEND console=ttyS0 ipa-api-url=" in deploy, deploy
    entries = {p.name: p.read_text() for p in hosts.iterdir()}
    assert entries == {"ferric-52-54-00-1b-00-02": f"{mac},set:ferric-pxe\n"}, entries

    # PXELINUX boots BIOS machines only: a UEFI node is refused at validation.
    bm.run("node", "create", "--driver", "fake-hardware", "--boot-interface", "pxe", "--name", "pxe-uefi")
    rows = {r["interface"]: r for r in bm.rows("node", "validate", "pxe-uefi")}
    assert rows["boot"]["result"] is False and "BIOS" in rows["boot"]["reason"], rows["boot"]
