"""The anaconda deploy interface, with the test playing the installer: nothing
boots, but the test fetches the node's iPXE script and kickstart over HTTP as
the node would, checks the installer's parameters, validates every rendered
kickstart with pykickstart's ksvalidator, and runs the kickstart's own %pre,
%post and %onerror commands (their curl callbacks reach ferricd). Nodes are
driven with the real `baremetal` CLI (fake power, ipxe boot)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

from support import Baremetal, Ferricd, serve_directory

KS_VALIDATOR = Path(sys.executable).parent / "ksvalidator"
TARBALL = b"not really a tarball, but the installer is not really here either" * 100
TREEINFO = """[header]
type = productmd.treeinfo
version = 1.2

[tree]
arch = x86_64

[images-x86_64]
kernel = images/pxeboot/vmlinuz
initrd = images/pxeboot/initrd.img

[stage2]
mainimage = images/install.img
"""


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[str]:
    """An HTTP server with the installer's files, an OS tarball, a repository
    tree and kickstart templates."""
    root = tmp_path / "mirror"
    for name, body in [
        ("vmlinuz", b"installer kernel"),
        ("initrd.img", b"installer initrd"),
        ("install.img", b"stage2"),
        ("os.tar.gz", TARBALL),
        ("repo/.treeinfo", TREEINFO.encode()),
        ("repo/images/pxeboot/vmlinuz", b"tree kernel"),
        ("repo/images/pxeboot/initrd.img", b"tree initrd"),
        ("evil-include.j2", b"{% include '/etc/passwd' %}\n"),
        ("evil-internals.j2", b"{{ ''.__class__.__mro__[1].__subclasses__() }}\n"),
    ]:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    with serve_directory(root) as url:
        yield url


def anaconda_server(factory: Callable[..., Ferricd], tmp_path: Path, callback_timeout: int = 120) -> Ferricd:
    files = tmp_path / "deploy"
    files.mkdir(exist_ok=True)
    (files / "vmlinuz").write_bytes(b"deploy kernel")
    (files / "initrd").write_bytes(b"deploy initrd")
    return factory(
        conductor={
            "automated_clean": False,
            "deploy_callback_timeout": callback_timeout,
            "callback_check_interval": 1,
            "pxe": {
                "deploy_kernel": str(files / "vmlinuz"),
                "deploy_ramdisk": str(files / "initrd"),
                "kernel_append_params": "console=ttyS0",
            },
        }
    )


def enroll(bm: Baremetal, name: str, mac: str, **instance_info: object) -> str:
    node = bm.json(
        "node", "create", "--driver", "fake-hardware", "--boot-interface", "ipxe",
        "--deploy-interface", "anaconda", "--name", name,
    )
    bm.run("port", "create", mac, "--node", node["uuid"])
    args = []
    for key, value in instance_info.items():
        args += ["--instance-info", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    if args:
        bm.run("node", "set", name, *args)
    bm.run("node", "manage", name, "--wait", "30")
    bm.run("node", "provide", name, "--wait", "30")
    return node["uuid"]


def liveimg_info(mirror: str) -> dict[str, object]:
    return {
        "image_source": f"{mirror}/os.tar.gz",
        "kernel": f"{mirror}/vmlinuz",
        "ramdisk": f"{mirror}/initrd.img",
        "stage2": f"{mirror}/install.img",
        "image_properties": {"disk_file_extension": ".tgz"},
    }


def boot_script(server: Ferricd, mac: str) -> str:
    resp = requests.get(f"{server.url}/boot/ipxe/{mac.replace(':', '-')}", timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.text


def kernel_params(script: str) -> dict[str, str]:
    line = next(l for l in script.splitlines() if l.startswith("kernel "))
    return dict(p.split("=", 1) for p in line.split()[2:] if "=" in p)


def fetch_kickstart(server: Ferricd, mac: str, tmp_path: Path) -> tuple[str, Path]:
    """The kickstart as the installer gets it: from inst.ks of the node's
    script. Checked with ksvalidator."""
    url = kernel_params(boot_script(server, mac))["inst.ks"]
    resp = requests.get(url, timeout=10)
    assert resp.status_code == 200, resp.text
    path = tmp_path / f"ks-{mac.replace(':', '')}.cfg"
    path.write_text(resp.text)
    proc = subprocess.run([str(KS_VALIDATOR), str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, f"ksvalidator refused the kickstart:\n{proc.stdout}{proc.stderr}\n{resp.text}"
    return resp.text, path


def sections(kickstart: str, name: str) -> list[tuple[str, str]]:
    """The (header, body) of each `%<name>` section."""
    found = []
    for match in re.finditer(rf"^(%{name}\b[^\n]*)\n(.*?)^%end$", kickstart, re.M | re.S):
        found.append((match.group(1), match.group(2)))
    return found


def run_section(body: str) -> None:
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", body], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"section failed:\n{body}\n{proc.stdout}{proc.stderr}"


def test_the_installer_boots_fetches_its_kickstart_and_calls_back_to_active(
    ferricd_factory: Callable[..., Ferricd], mirror: str, tmp_path: Path
) -> None:
    server = anaconda_server(ferricd_factory, tmp_path)
    bm = Baremetal(server.url, tmp_path / "home")
    mac = "52:54:00:ac:00:01"
    uuid = enroll(bm, "ks-1", mac, **liveimg_info(mirror))
    rows = {r["interface"]: r for r in bm.rows("node", "validate", "ks-1")}
    assert rows["deploy"]["result"] is True, rows["deploy"]
    # Not deploying: no kickstart, and the node boots its disk.
    assert requests.get(f"{server.url}/boot/kickstart/{uuid}", timeout=10).status_code == 404
    assert "kernel " not in boot_script(server, mac)

    configdrive = {"meta_data": {"hostname": "ks-host"}, "user_data": "#cloud-config\nfinal_message: FERRIC\n"}
    bm.run("node", "deploy", "ks-1", "--config-drive", json.dumps(configdrive))
    node = server.wait_state(uuid, "wait call-back", timeout=20)
    assert node["power_state"] == "power on"

    # The node's iPXE script boots the installer with inst.ks and inst.stage2.
    script = boot_script(server, mac)
    assert f"kernel {mirror}/vmlinuz console=ttyS0 inst.ks=" in script, script
    assert f"initrd --name ramdisk {mirror}/initrd.img" in script, script
    params = kernel_params(script)
    assert params["inst.ks"] == f"{server.url}/boot/kickstart/{uuid}"
    assert params["inst.stage2"] == f"{mirror}/install.img"
    assert "inst.repo" not in params and params["BOOTIF"] == "01-52-54-00-ac-00-01"

    kickstart, _ = fetch_kickstart(server, mac, tmp_path)
    # The OS image: a URL ending in the image's extension (a tarball), which
    # leads to the image.
    liveimg = re.search(r"^liveimg --url=(\S+)$", kickstart, re.M)
    assert liveimg and liveimg.group(1) == f"{server.url}/boot/liveimg/{uuid}.tgz", kickstart
    assert requests.get(liveimg.group(1), timeout=10).content == TARBALL
    assert requests.get(f"{server.url}/boot/liveimg/{uuid}", timeout=10).status_code == 404
    # The token never shows in the API.
    shown = server.node(uuid)
    assert "anaconda_ks_template_secret" not in json.dumps(shown) or "******" in json.dumps(shown)
    token = re.search(r'"agent_token": "([^"]+)"', kickstart).group(1)
    assert token not in json.dumps(shown)

    # %pre: the installer starts. The node keeps waiting.
    [(_, pre)] = sections(kickstart, "pre")
    run_section(pre)
    node = server.node(uuid)
    assert node["provision_state"] == "wait call-back"
    assert node["driver_internal_info"]["agent_status"] == "start"

    # The config drive's %post writes the files cloud-init reads; run it
    # into a directory of ours instead of the installed system's.
    posts = sections(kickstart, "post")
    [drive] = [body for header, body in posts if "seed=" in body]
    seed = tmp_path / "seed"
    run_section(drive.replace("seed=/var/lib/cloud/seed/config_drive", f"seed={seed}"))
    assert (seed / "openstack/latest/user_data").read_text() == configdrive["user_data"]
    meta = json.loads((seed / "openstack/latest/meta_data.json").read_text())
    assert meta["hostname"] == "ks-host" and meta["uuid"] == uuid

    # The last %post says "end": the node boots its disk and is active.
    header, end = posts[-1]
    assert "--nochroot" in header and '"agent_status": "end"' in end
    run_section(end)
    # From the "end" on, even before the conductor has taken it in, a
    # reboot the installer makes itself does not start it again.
    assert "vmlinuz" not in boot_script(server, mac)
    assert requests.get(f"{server.url}/boot/kickstart/{uuid}", timeout=10).status_code == 404
    node = server.wait_state(uuid, "active", timeout=20)
    assert node["last_error"] is None
    assert "kernel " not in boot_script(server, mac)
    boot = bm.json("node", "boot", "device", "show", "ks-1")
    assert boot["boot_device"] == "disk" and boot["persistent"] is True, boot
    # The kickstart (and its token) is gone with the deployment.
    assert requests.get(f"{server.url}/boot/kickstart/{uuid}", timeout=10).status_code == 404
    assert "agent_secret_token" not in server.node(uuid)["driver_internal_info"]
    # A late callback with the old token is refused.
    late = requests.post(
        f"{server.url}/v1/heartbeat/{uuid}",
        json={"callback_url": "", "agent_token": token, "agent_status": "end"},
        headers={"X-OpenStack-Ironic-API-Version": "1.72"}, timeout=10,
    )
    assert late.status_code in (400, 404), late.text


def test_onerror_fails_the_deploy_with_its_message_and_a_wrong_token_gets_400(
    ferricd_factory: Callable[..., Ferricd], mirror: str, tmp_path: Path
) -> None:
    server = anaconda_server(ferricd_factory, tmp_path)
    bm = Baremetal(server.url, tmp_path / "home")
    mac = "52:54:00:ac:00:02"
    uuid = enroll(bm, "ks-2", mac, **liveimg_info(mirror))
    bm.run("node", "deploy", "ks-2")
    server.wait_state(uuid, "wait call-back", timeout=20)
    kickstart, _ = fetch_kickstart(server, mac, tmp_path)
    # Without a config drive, no config drive section.
    assert "seed=" not in kickstart

    wrong = requests.post(
        f"{server.url}/v1/heartbeat/{uuid}",
        json={"callback_url": "", "agent_token": "x" * 43, "agent_status": "end"},
        headers={"X-OpenStack-Ironic-API-Version": "1.72"}, timeout=10,
    )
    assert wrong.status_code == 400, wrong.text
    assert "token" in json.loads(wrong.json()["error_message"])["faultstring"]
    assert server.node(uuid)["provision_state"] == "wait call-back"

    [(_, onerror)] = sections(kickstart, "onerror")
    run_section(onerror)
    node = server.wait_state(uuid, "deploy failed", timeout=20)
    assert "the installer reported an error: The installer failed" in node["last_error"], node
    assert node["power_state"] == "power off"
    assert requests.get(f"{server.url}/boot/kickstart/{uuid}", timeout=10).status_code == 404


def test_repository_mode_reads_the_treeinfo_and_installs_from_the_tree(
    ferricd_factory: Callable[..., Ferricd], mirror: str, tmp_path: Path
) -> None:
    server = anaconda_server(ferricd_factory, tmp_path)
    bm = Baremetal(server.url, tmp_path / "home")
    mac = "52:54:00:ac:00:03"
    uuid = enroll(bm, "ks-3", mac, image_source=f"{mirror}/repo/")
    configdrive = {"meta_data": {"hostname": "repo-host"}, "user_data": "#cloud-config\n"}
    bm.run("node", "deploy", "ks-3", "--config-drive", json.dumps(configdrive))
    server.wait_state(uuid, "wait call-back", timeout=20)
    script = boot_script(server, mac)
    assert f"kernel {mirror}/repo/images/pxeboot/vmlinuz " in script, script
    assert f"initrd --name ramdisk {mirror}/repo/images/pxeboot/initrd.img" in script
    params = kernel_params(script)
    assert params["inst.repo"] == f"{mirror}/repo/" and "inst.stage2" not in params
    kickstart, _ = fetch_kickstart(server, mac, tmp_path)
    assert f"url --url={mirror}/repo/" in kickstart and "liveimg" not in kickstart
    assert "seed=/var/lib/cloud/seed/config_drive" in kickstart
    [(_, pre)] = sections(kickstart, "pre")
    run_section(pre)
    run_section(sections(kickstart, "post")[-1][1])
    server.wait_state(uuid, "active", timeout=20)


def test_templates_come_from_the_node_and_cannot_escape_their_sandbox(
    ferricd_factory: Callable[..., Ferricd], mirror: str, tmp_path: Path
) -> None:
    server = anaconda_server(ferricd_factory, tmp_path)
    bm = Baremetal(server.url, tmp_path / "home")
    for n, template in enumerate(["evil-include.j2", "evil-internals.j2"]):
        name, mac = f"ks-evil-{n}", f"52:54:00:ac:01:0{n}"
        info = liveimg_info(mirror) | {"ks_template": f"{mirror}/{template}"}
        uuid = enroll(bm, name, mac, **info)
        bm.run("node", "deploy", name)
        node = server.wait_state(uuid, "deploy failed", timeout=20)
        assert "kickstart template" in node["last_error"], node["last_error"]
        assert "root:" not in node["last_error"] and "__class__" not in node["last_error"]
        assert "ks_options" not in node["last_error"]
        assert requests.get(f"{server.url}/boot/kickstart/{uuid}", timeout=10).status_code == 404

    # An image property names the template; instance_info's wins over it.
    own = "text\nreboot\nliveimg --url={{ ks_options.liveimg_url }}\n%pre\n{{ ks_options.heartbeat_url }}\n%end\n"
    mirror_root = tmp_path / "mirror"
    (mirror_root / "own.j2").write_text(own)
    (mirror_root / "other.j2").write_text("{{ nonsense_that_fails }}")
    info = liveimg_info(mirror)
    info["image_properties"] = {"ks_template": f"{mirror}/other.j2", "disk_file_extension": ".zip"}
    info["ks_template"] = f"{mirror}/own.j2"
    mac = "52:54:00:ac:01:09"
    uuid = enroll(bm, "ks-own", mac, **info)
    bm.run("node", "deploy", "ks-own")
    server.wait_state(uuid, "wait call-back", timeout=20)
    kickstart, _ = fetch_kickstart(server, mac, tmp_path)
    # .zip is no extension the installer knows: a disk image, no extension.
    assert f"liveimg --url={server.url}/boot/liveimg/{uuid}\n" in kickstart, kickstart
    assert f"{server.url}/v1/heartbeat/{uuid}" in kickstart


def test_missing_installer_files_fail_validation_and_the_deploy_is_refused(
    ferricd_factory: Callable[..., Ferricd], mirror: str, tmp_path: Path
) -> None:
    server = anaconda_server(ferricd_factory, tmp_path)
    bm = Baremetal(server.url, tmp_path / "home")
    for n, missing in enumerate(["kernel", "ramdisk", "stage2"]):
        info = liveimg_info(mirror)
        del info[missing]
        name = f"ks-miss-{n}"
        uuid = enroll(bm, name, f"52:54:00:ac:02:0{n}", **info)
        rows = {r["interface"]: r for r in bm.rows("node", "validate", name)}
        assert rows["deploy"]["result"] is False, rows["deploy"]
        assert f"{missing}" in rows["deploy"]["reason"] and "_id" in rows["deploy"]["reason"], rows["deploy"]
        proc = bm.fails("node", "deploy", name)
        assert missing in proc.stderr, proc.stderr
        assert server.node(uuid)["provision_state"] == "available"
    # A pre-built config drive cannot be written by the installer.
    uuid = enroll(bm, "ks-cd", "52:54:00:ac:02:09", **liveimg_info(mirror))
    refused = server.provision(uuid, "active", expect=400, configdrive="H4sIAAAAAAAAA+3BAQ0AAADCoPdPbQ43oAAA")
    assert "dict" in json.dumps(refused), refused
    assert server.node(uuid)["provision_state"] == "available"


def test_an_installer_that_never_calls_back_times_out(
    ferricd_factory: Callable[..., Ferricd], mirror: str, tmp_path: Path
) -> None:
    server = anaconda_server(ferricd_factory, tmp_path, callback_timeout=3)
    bm = Baremetal(server.url, tmp_path / "home")
    uuid = enroll(bm, "ks-slow", "52:54:00:ac:03:01", **liveimg_info(mirror))
    bm.run("node", "deploy", "ks-slow")
    node = server.wait_state(uuid, "deploy failed", timeout=30)
    assert "Timeout reached while waiting for callback" in node["last_error"], node
    assert node["power_state"] == "power off"
