"""The ramdisk deploy interface through the real `baremetal` CLI (fake power,
ipxe and pxe boot): the instance is a kernel and ramdisk (or an ISO) the node
network-boots; its boot script says so for as long as it is deployed, and
bad or missing instance files are refused with the reason. tests/e2e boots a
real VM into one."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import requests

from support import Baremetal, Ferricd

MAC = "52:54:00:ad:00:01"


def ramdisk_server(factory: Callable[..., Ferricd], tmp_path: Path) -> Ferricd:
    files = tmp_path / "deploy"
    files.mkdir()
    (files / "vmlinuz").write_bytes(b"deploy kernel")
    (files / "initrd").write_bytes(b"deploy initrd")
    return factory(
        conductor={
            "automated_clean": False,
            "pxe": {
                "deploy_kernel": str(files / "vmlinuz"),
                "deploy_ramdisk": str(files / "initrd"),
                "kernel_append_params": "console=ttyS0",
            },
        }
    )


def script(server: Ferricd, mac: str = MAC) -> str:
    resp = requests.get(f"{server.url}/boot/ipxe/{mac.replace(':', '-')}", timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.text


def test_the_node_boots_its_instance_ramdisk_until_undeployed(
    ferricd_factory: Callable[..., Ferricd], tmp_path: Path
) -> None:
    server = ramdisk_server(ferricd_factory, tmp_path)
    bm = Baremetal(server.url, tmp_path / "home")
    node = bm.json("node", "create", "--driver", "fake-hardware", "--boot-interface", "ipxe",
                   "--deploy-interface", "ramdisk", "--name", "rd-1")
    bm.run("port", "create", MAC, "--node", node["uuid"])
    bm.run("node", "manage", "rd-1", "--wait", "30")
    bm.run("node", "provide", "rd-1", "--wait", "30")

    # Nothing to boot yet: validation says what is missing, deploy is refused.
    rows = {r["interface"]: r for r in bm.rows("node", "validate", "rd-1")}
    assert rows["deploy"]["result"] is False and "kernel and ramdisk" in rows["deploy"]["reason"], rows
    proc = bm.fails("node", "deploy", "rd-1")
    assert "kernel and ramdisk" in proc.stderr, proc.stderr
    bm.run("node", "set", "rd-1", "--instance-info", "kernel=http://images.example/vmlinuz")
    rows = {r["interface"]: r for r in bm.rows("node", "validate", "rd-1")}
    assert rows["deploy"]["result"] is False and "both" in rows["deploy"]["reason"], rows
    # Parameters iPXE would run are refused at the API.
    proc = bm.fails("node", "set", "rd-1", "--instance-info", "ramdisk_kernel_arguments=quiet ; shell")
    assert "ramdisk_kernel_arguments" in proc.stderr, proc.stderr

    bm.run("node", "set", "rd-1",
           "--instance-info", "ramdisk=http://images.example/initrd.img",
           "--instance-info", "ramdisk_kernel_arguments=rd.marker=42")
    bm.run("node", "deploy", "rd-1", "--wait", "30")
    shown = bm.json("node", "show", "rd-1")
    assert shown["provision_state"] == "active" and shown["power_state"] == "power on", shown
    text = script(server)
    assert ("kernel http://images.example/vmlinuz console=ttyS0 rd.marker=42 "
            "BOOTIF=01-52-54-00-ad-00-01 initrd=ramdisk") in text, text
    assert "initrd --name ramdisk http://images.example/initrd.img" in text, text
    assert "/boot/deploy/" not in text
    boot = bm.json("node", "boot", "device", "show", "rd-1")
    assert boot == {"boot_device": "pxe", "persistent": True}, boot

    # Undeployed: back to the disk.
    bm.run("node", "undeploy", "rd-1", "--wait", "30")
    assert "images.example" not in script(server)


def test_an_iso_is_booted_with_sanboot_and_pxelinux_refuses_it(
    ferricd_factory: Callable[..., Ferricd], tmp_path: Path
) -> None:
    server = ramdisk_server(ferricd_factory, tmp_path)
    bm = Baremetal(server.url, tmp_path / "home")
    for name, boot, mac in [("iso-ipxe", "ipxe", MAC), ("iso-pxe", "pxe", "52:54:00:ad:00:02")]:
        node = bm.json("node", "create", "--driver", "fake-hardware", "--boot-interface", boot,
                       "--deploy-interface", "ramdisk", "--name", name,
                       "--property", "capabilities=boot_mode:bios")
        bm.run("node", "set", name, "--instance-info", "boot_iso=http://images.example/live.iso")
        bm.run("port", "create", mac, "--node", node["uuid"])
        bm.run("node", "manage", name, "--wait", "30")
        bm.run("node", "provide", name, "--wait", "30")
    bm.run("node", "deploy", "iso-ipxe", "--wait", "30")
    assert "sanboot --no-describe http://images.example/live.iso" in script(server)
    rows = {r["interface"]: r for r in bm.rows("node", "validate", "iso-pxe")}
    assert rows["deploy"]["result"] is False and "cannot boot an ISO" in rows["deploy"]["reason"], rows
    proc = bm.fails("node", "deploy", "iso-pxe")
    assert "ISO" in proc.stderr, proc.stderr
