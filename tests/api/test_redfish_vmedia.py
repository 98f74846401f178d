"""The `redfish-virtual-media` boot interface through the `baremetal` CLI,
against a real Redfish service: sushy-tools' emulator with its fake driver
(which downloads the image it is told to insert). A deploy builds an ISO of
the deploy kernel and ramdisk carrying a fresh agent token, serves it at an
unguessable URL, inserts it into the system's virtual CD and boots the CD
once; the agent's lookup only sees the token masked (it reads it from its
kernel command line), its heartbeat with that token is accepted, and an
undeploy ejects the media and deletes the ISO.

Needs the Debian cloud kernel of scripts/fetch-kernel (the ISO builder
checks for a bzImage header), xorriso, isolinux and GRUB's EFI modules
(scripts/install-deps).
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
import uuid as uuidlib
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

from support import ROOT, Baremetal, Ferricd, free_port, serve_directory, wait_for

MAC = "52:54:00:7e:00:01"
ISO_URL = re.compile(r"^(?P<base>http://127\.0\.0\.1:\d+)/boot/vmedia/(?P<name>[0-9a-f]{32})\.iso$")


class Sushy:
    """One sushy-emulator (fake driver) with one powered-off system."""

    def __init__(self, workdir: Path) -> None:
        program = ROOT / ".venv" / "bin" / "sushy-emulator"
        if not program.is_file():
            pytest.fail(f"{program} is missing: run scripts/install-deps (sushy-tools)", pytrace=False)
        workdir.mkdir(parents=True, exist_ok=True)
        self.dir = workdir
        self.port = free_port()
        self.system = str(uuidlib.uuid4())
        systems = [{"uuid": self.system, "name": "vmedia-0", "power_state": "Off",
                    "external_notifier": False, "nics": [{"mac": MAC, "ip": "192.0.2.10"}]}]
        # The config file is Python; JSON reads the same but for booleans.
        config = workdir / "emulator.conf"
        config.write_text(
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n"
            f"SUSHY_EMULATOR_LISTEN_PORT = {self.port}\n"
            "SUSHY_EMULATOR_FAKE_DRIVER = True\n"
            f"SUSHY_EMULATOR_STATE_DIR = {json.dumps(str(workdir / 'state'))}\n"
            f"SUSHY_EMULATOR_FAKE_SYSTEMS = {json.dumps(systems).replace('false', 'False')}\n"
        )
        self.log_path = workdir / "emulator.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [str(program), "--config", str(config), "--fake"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        wait_for(self._answers, bool, 30, f"sushy-emulator on port {self.port}")

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"sushy-emulator exited:\n{self.log_path.read_text()}")
        try:
            return requests.get(f"{self.url}/redfish/v1/", timeout=2).ok
        except requests.RequestException:
            return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def system_path(self) -> str:
        return f"/redfish/v1/Systems/{self.system}"

    def get(self, path: str) -> dict:
        resp = requests.get(self.url + path, timeout=10)
        assert resp.ok, f"GET {path}: {resp.status_code} {resp.text}"
        return resp.json()

    def cd(self) -> dict:
        return self.get(f"{self.system_path}/VirtualMedia/Cd")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def sushy(tmp_path: Path) -> Iterator[Sushy]:
    emulator = Sushy(tmp_path / "sushy")
    yield emulator
    emulator.stop()


@pytest.fixture(scope="module")
def deploy_kernel() -> Path:
    """The Debian cloud kernel (scripts/fetch-kernel): the ISO needs a real bzImage."""
    proc = subprocess.run([str(ROOT / "scripts" / "fetch-kernel")], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"scripts/fetch-kernel failed: {proc.stderr}", pytrace=False)
    kernel = Path(proc.stdout.split()[0])
    assert kernel.is_file(), proc.stdout
    for tool in ("xorriso", "grub-mkimage", "mkfs.vfat", "mcopy"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run scripts/install-deps", pytrace=False)
    return kernel


def vmedia_server(factory: Callable[..., Ferricd], tmp_path: Path, kernel: Path) -> Ferricd:
    ramdisk = tmp_path / "initrd"
    ramdisk.write_bytes(b"not really an initramfs\n" * 100)
    return factory(
        conductor={
            "enabled_hardware_types": ["redfish"],
            "automated_clean": False,
            "power_sync_interval": 0,
            "image_cache_dir": str(tmp_path / "image-cache"),
            "pxe": {
                "deploy_kernel": str(kernel),
                "deploy_ramdisk": str(ramdisk),
                "kernel_append_params": "console=ttyS0 ipa-debug=1",
            },
            # The emulator is local: no long retries.
            "redfish": {"connection_attempts": 2, "connection_retry_interval": 0.5,
                        "power_state_poll_interval": 0.5},
        }
    )


def extract(iso: Path, inside: str, dest: Path) -> str:
    proc = subprocess.run(
        ["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", inside, str(dest)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return dest.read_text()


def test_a_deploy_boots_the_ramdisk_from_virtual_media(
    ferricd_factory: Callable[..., Ferricd], tmp_path: Path, sushy: Sushy, deploy_kernel: Path
) -> None:
    server = vmedia_server(ferricd_factory, tmp_path, deploy_kernel)
    bm = Baremetal(server.url, tmp_path / "home")
    node = bm.json(
        "node", "create", "--driver", "redfish", "--name", "vmedia-1",
        "--boot-interface", "redfish-virtual-media", "--deploy-interface", "fake",
        "--driver-info", f"redfish_address={sushy.url}",
        "--driver-info", f"redfish_system_id={sushy.system_path}",
        "--driver-info", "fake_wait=[\"deploy\"]",
    )
    uuid = node["uuid"]
    assert node["boot_interface"] == "redfish-virtual-media"
    bm.run("port", "create", MAC, "--node", uuid)
    rows = {r["interface"]: r for r in bm.rows("node", "validate", "vmedia-1")}
    assert rows["boot"]["result"] is True, rows["boot"]
    assert sushy.cd()["Inserted"] is False

    bm.run("node", "manage", "vmedia-1", "--wait", "60")
    bm.run("node", "provide", "vmedia-1", "--wait", "60")
    bm.run("node", "deploy", "vmedia-1")
    server.wait_state(uuid, "wait call-back", timeout=120)

    # The BMC has our ISO in its CD drive and boots it once.
    cd = sushy.cd()
    assert cd["Inserted"] is True, cd
    found = ISO_URL.match(cd["Image"])
    assert found and found["base"] == server.url, cd["Image"]
    name = found["name"]
    system = sushy.get(sushy.system_path)
    assert system["Boot"]["BootSourceOverrideTarget"] == "Cd", system["Boot"]

    # The ISO downloads (ranges too) and boots the deploy files with the
    # agent's API URL and its token on the kernel command line.
    resp = requests.get(cd["Image"], timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Cache-Control"] == "no-store"
    iso = tmp_path / "boot.iso"
    iso.write_bytes(resp.content)
    part = requests.get(cd["Image"], headers={"Range": "bytes=0-99"}, timeout=10)
    assert part.status_code == 206 and part.content == resp.content[:100]
    assert requests.head(cd["Image"], timeout=10).headers["Content-Length"] == str(len(resp.content))
    isolinux = extract(iso, "/isolinux/isolinux.cfg", tmp_path / "isolinux.cfg")
    assert f"ipa-api-url={server.url} " in isolinux, isolinux
    token_match = re.search(r"ipa-agent-token=([A-Za-z0-9_-]+)\n", isolinux)
    assert token_match, isolinux
    token = token_match[1]
    assert len(token) == 43, token
    assert "APPEND console=ttyS0 ipa-debug=1 ipa-api-url=" in isolinux, isolinux
    grub = extract(iso, "/boot/grub/grub.cfg", tmp_path / "grub.cfg")
    assert f"'ipa-agent-token={token}'" in grub, grub
    assert extract(iso, "/boot/initrd", tmp_path / "initrd.back").startswith("not really an initramfs")

    # Only ferricd's user can read the ISOs on the server.
    vmedia = tmp_path / "image-cache" / "vmedia"
    assert stat.S_IMODE(vmedia.stat().st_mode) == 0o700
    assert [p.name for p in vmedia.iterdir()] == [f"{name}.iso"]
    assert stat.S_IMODE((vmedia / f"{name}.iso").stat().st_mode) == 0o600

    # Other names are not served, and a wrong guess is not told apart from
    # a deleted ISO.
    for other in [f"{'0' * 32}.iso", f"{name.upper()}.iso", name, f"..%2F{name}.iso", f".tmp-{name}.iso"]:
        miss = requests.get(f"{server.url}/boot/vmedia/{other}", timeout=10)
        assert miss.status_code == 404, other
        assert name not in miss.text

    # The agent's lookup sees the token masked (it has its own from the
    # kernel command line), and its heartbeats with that token are accepted.
    lookup = server.get("/v1/lookup", params={"addresses": MAC}, version="1.62")
    assert lookup["node"]["uuid"] == uuid
    assert lookup["config"]["agent_token"] == "******"
    heartbeat = {"callback_url": "https://192.0.2.10:9999", "agent_token": token, "agent_version": "10.0.0"}
    resp = server.request("POST", f"/v1/heartbeat/{uuid}", json=heartbeat, version="1.68")
    assert resp.status_code == 202, resp.text
    wrong = server.request("POST", f"/v1/heartbeat/{uuid}", json={**heartbeat, "agent_token": "x" * 43},
                           version="1.68")
    assert wrong.status_code == 400, wrong.text
    shown = bm.json("node", "show", "vmedia-1", "--fields", "driver_internal_info")["driver_internal_info"]
    assert shown["agent_secret_token"] == "******", shown
    assert "agent_secret_token_pregenerated" in shown, shown  # masked too: its key holds "token"
    assert shown["redfish_vmedia_iso_secret"] == "******", shown

    # Neither the token nor the ISO's name is in an API answer or a log line.
    assert token not in json.dumps(server.node(uuid)) and name not in json.dumps(server.node(uuid))
    assert token not in server.log() and name not in server.log()

    # Undeploy (a node waiting for its agent cannot be changed, fake_wait
    # included; the fake tear down ignores it): the media is ejected and the
    # ISO gone.
    bm.run("node", "undeploy", "vmedia-1", "--wait", "120")
    assert bm.json("node", "show", "vmedia-1")["provision_state"] == "available"
    cd = sushy.cd()
    assert cd["Inserted"] is False, cd
    assert requests.get(f"{server.url}/boot/vmedia/{name}.iso", timeout=10).status_code == 404
    assert list(vmedia.iterdir()) == []
    shown = bm.json("node", "show", "vmedia-1", "--fields", "driver_internal_info")["driver_internal_info"]
    assert "redfish_vmedia_iso_secret" not in shown and "agent_secret_token" not in shown, shown
    assert token not in server.log() and name not in server.log()


def test_a_missing_deploy_kernel_fails_validation_with_the_reason(
    ferricd_factory: Callable[..., Ferricd], tmp_path: Path, sushy: Sushy
) -> None:
    server = vmedia_server(ferricd_factory, tmp_path, tmp_path / "no-such-vmlinuz")
    bm = Baremetal(server.url, tmp_path / "home")
    bm.run(
        "node", "create", "--driver", "redfish", "--name", "vmedia-2",
        "--boot-interface", "redfish-virtual-media", "--deploy-interface", "fake",
        "--driver-info", f"redfish_address={sushy.url}",
        "--driver-info", f"redfish_system_id={sushy.system_path}",
    )
    rows = {r["interface"]: r for r in bm.rows("node", "validate", "vmedia-2")}
    assert rows["power"]["result"] is True, rows["power"]
    assert rows["boot"]["result"] is False, rows["boot"]
    reason = rows["boot"]["reason"]
    assert "deploy_kernel" in reason and "no-such-vmlinuz" in reason and "cannot be read" in reason, reason

    # Deploy files given as URLs (as for iPXE) are refused with the reason.
    bm.run("node", "set", "vmedia-2", "--driver-info", "deploy_kernel=http://192.0.2.1/vmlinuz")
    rows = {r["interface"]: r for r in bm.rows("node", "validate", "vmedia-2")}
    assert "driver_info deploy_kernel" in rows["boot"]["reason"], rows["boot"]

    # A deploy is refused before anything happens to the node.
    bm.run("node", "manage", "vmedia-2", "--wait", "60")
    bm.run("node", "provide", "vmedia-2", "--wait", "60")
    proc = bm.fails("node", "deploy", "vmedia-2")
    assert "deploy_" in proc.stderr, proc.stderr
    assert bm.json("node", "show", "vmedia-2")["provision_state"] == "available"
    assert sushy.cd()["Inserted"] is False


def test_a_ramdisk_deploy_boots_its_boot_iso_from_virtual_media(
    ferricd_factory: Callable[..., Ferricd], tmp_path: Path, sushy: Sushy, deploy_kernel: Path
) -> None:
    """The ramdisk deploy over virtual media: no deploy ramdisk, the BMC
    inserts the instance's own ISO (instance_info boot_iso) and boots it
    for as long as the node is deployed."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "live.iso").write_bytes(b"an ISO the emulator only downloads" * 100)
    (www / "vmlinuz").write_bytes(deploy_kernel.read_bytes())
    (www / "initrd.img").write_bytes(b"the instance initramfs\n" * 100)
    with serve_directory(www) as www_url:
        iso = f"{www_url}/live.iso"
        server = vmedia_server(ferricd_factory, tmp_path, deploy_kernel)
        bm = Baremetal(server.url, tmp_path / "home")
        node = bm.json(
            "node", "create", "--driver", "redfish", "--name", "vmedia-rd",
            "--boot-interface", "redfish-virtual-media", "--deploy-interface", "ramdisk",
            "--driver-info", f"redfish_address={sushy.url}",
            "--driver-info", f"redfish_system_id={sushy.system_path}",
        )
        uuid = node["uuid"]
        bm.run("port", "create", MAC, "--node", uuid)
        bm.run("node", "manage", "vmedia-rd", "--wait", "60")
        bm.run("node", "provide", "vmedia-rd", "--wait", "60")
        rows = {r["interface"]: r for r in bm.rows("node", "validate", "vmedia-rd")}
        assert rows["deploy"]["result"] is False and "boot_iso" in rows["deploy"]["reason"], rows

        # kernel + ramdisk: ferricd downloads them and builds the ISO, with
        # the instance's kernel arguments, at an unguessable URL.
        bm.run("node", "set", "vmedia-rd",
               "--instance-info", f"kernel={www_url}/vmlinuz",
               "--instance-info", f"ramdisk={www_url}/initrd.img",
               "--instance-info", "ramdisk_kernel_arguments=rd.marker=vmedia-7")
        bm.run("node", "deploy", "vmedia-rd", "--wait", "120")
        cd = sushy.cd()
        found = ISO_URL.match(cd["Image"])
        assert cd["Inserted"] is True and found and found["base"] == server.url, cd
        built = tmp_path / "instance.iso"
        built.write_bytes(requests.get(cd["Image"], timeout=30).content)
        isolinux = extract(built, "/isolinux/isolinux.cfg", tmp_path / "instance-isolinux.cfg")
        assert "rd.marker=vmedia-7" in isolinux and "ipa-agent-token" not in isolinux, isolinux
        assert extract(built, "/boot/initrd", tmp_path / "instance-initrd").startswith("the instance initramfs")
        assert sushy.get(sushy.system_path)["Boot"]["BootSourceOverrideEnabled"] == "Continuous"
        bm.run("node", "undeploy", "vmedia-rd", "--wait", "120")
        assert requests.get(cd["Image"], timeout=10).status_code == 404
        assert sushy.cd()["Inserted"] is False

        # boot_iso: the BMC boots the instance's own ISO.
        bm.run("node", "set", "vmedia-rd", "--instance-info", f"boot_iso={iso}")
        bm.run("node", "deploy", "vmedia-rd", "--wait", "120")
        shown = bm.json("node", "show", "vmedia-rd")
        assert shown["provision_state"] == "active" and shown["power_state"] == "power on", shown
        cd = sushy.cd()
        assert cd["Inserted"] is True and cd["Image"] == iso, cd
        boot = sushy.get(sushy.system_path)["Boot"]
        assert boot["BootSourceOverrideTarget"] == "Cd", boot
        assert boot["BootSourceOverrideEnabled"] == "Continuous", boot
        # No deploy ISO was built.
        assert not list((tmp_path / "image-cache" / "vmedia").glob("*.iso"))

        bm.run("node", "undeploy", "vmedia-rd", "--wait", "120")
        assert sushy.cd()["Inserted"] is False
