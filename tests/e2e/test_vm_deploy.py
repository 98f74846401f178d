"""A QEMU VM provisioned end to end through its BMC: the `ipmi` driver
(ipmitool against ipmi_sim), `ipxe` boot (dnsmasq managed by ferricd,
QEMU's iPXE ROM), the deploy ramdisk, and the `direct` deploy interface
writing a whole-disk image with a config drive; then the VM boots its new
disk, and undeploying cleans the disk. Driven by the real `baremetal` CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from testbed import MAC, MARKER, USER_DATA_PREFIX, Testbed, log

USER_DATA = "ferric-e2e-user-data-7f3a"


@pytest.mark.parametrize("boot_interface", ["ipxe", "pxe"])
def test_a_vm_is_provisioned_and_cleaned_through_ipmi_and_network_boot(tmp_path: Path, boot_interface: str) -> None:
    with Testbed(tmp_path / "bed") as bed:
        uuid = bed.enroll(boot_interface=boot_interface)
        bed.baremetal("node", "manage", "vm-1", "--wait", "120")
        assert bed.server.node(uuid)["power_state"] == "power off"

        # provide: automated cleaning boots the ramdisk over iPXE, erases
        # the disk's metadata, powers the VM off.
        started = time.time()
        bed.baremetal("node", "provide", "vm-1", "--wait", "400")
        clean_seconds = time.time() - started
        node = bed.server.node(uuid)
        assert node["provision_state"] == "available" and node["power_state"] == "power off", node

        bed.baremetal(
            "node", "set", "vm-1",
            "--instance-info", f"image_source=file://{bed.image}",
            "--instance-info", f"image_checksum={bed.image_sha256}",
            "--instance-info", "image_disk_format=raw",
        )
        configdrive = {"meta_data": {"hostname": "vm-1.example"}, "user_data": USER_DATA}
        console_from = len(bed.vm.console_text())
        events_from = len(bed.vm.power_events())
        recorder = bed_recorder(bed, uuid)
        started = time.time()
        bed.baremetal("node", "deploy", "vm-1", "--config-drive", json.dumps(configdrive), "--wait", "600")
        active = recorder.first(state="active", after=started) or time.time()
        marker = bed.wait_console(MARKER, timeout=120, after=console_from)
        recorder.stop()
        # The init prints the config drive after the marker: wait for its last line.
        bed.wait_console("FERRIC-META-DATA:", timeout=60, after=console_from)
        console = bed.vm.console_text()[console_from:]
        assert f"{USER_DATA_PREFIX} {USER_DATA}" in console, console[-3000:]
        assert '"hostname": "vm-1.example"' in console or "vm-1.example" in console, console[-3000:]

        # It booted its disk and will again: boot device disk, and were it
        # to network-boot, its iPXE script boots the disk too.
        assert (bed.vm.dir / "bootdev").read_text().strip() == "default"
        if boot_interface == "ipxe":
            script = requests.get(f"{bed.server.url}/boot/ipxe/{MAC}", timeout=10).text
            assert "kernel " not in script and "sanboot" in script, script
        else:
            name = "01-" + MAC.replace(":", "-")
            config = requests.get(f"{bed.server.url}/boot/pxelinux/pxelinux.cfg/{name}", timeout=10).text
            assert "LOCALBOOT 0" in config and "KERNEL" not in config, config
            # The VM booted PXELINUX from dnsmasq's TFTP, not iPXE's script.
            assert "lpxelinux.0" in bed.server.log(), "dnsmasq never sent lpxelinux.0"
        node = bed.server.node(uuid)
        assert node["provision_state"] == "active" and node["power_state"] == "power on", node

        timings = deploy_timings(bed, recorder, started, active, marker, events_from)
        timings["provide_with_cleaning_s"] = round(clean_seconds, 1)
        timings["agent_peak_rss_mib"] = bed.vm.agent_peak_rss_mib(console)
        timings["deploy_ramdisk_mib"] = round(bed.ramdisk.stat().st_size / 2**20, 1)
        log(f"deploy timings ({boot_interface}): " + json.dumps(timings))
        (tmp_path / "timings.json").write_text(json.dumps(timings, indent=2))

        # Undeploy with cleaning: the disk has no partition table left.
        assert bed.vm.has_partition_table()
        bed.baremetal("node", "undeploy", "vm-1", "--wait", "400")
        node = bed.server.node(uuid)
        assert node["provision_state"] == "available", node
        assert not bed.vm.has_partition_table(), "cleaning left a partition table"


def bed_recorder(bed: Testbed, uuid: str):
    from testbed import Recorder

    return Recorder(bed.server, uuid).start()


def deploy_timings(bed: Testbed, recorder, started: float, active: float, marker: float, events_from: int) -> dict:
    """Seconds of each phase, from the node's steps and the BMC's events."""
    events = bed.vm.power_events()[events_from:]
    power_ons = [t for t, what in events if what.startswith("power on")]
    write = recorder.first(step="write_image", after=started)
    after_write = next((t for t, _, step in recorder.changes if write and t > write and step != "write_image"), None)
    timings = {
        "deploy_to_active_s": round(active - started, 1),
        "deploy_to_console_marker_s": round(marker - started, 1),
    }
    if power_ons:
        timings["power_on_s"] = round(power_ons[0] - started, 1)
        if write:
            timings["ramdisk_boot_to_first_heartbeat_s"] = round(write - power_ons[0], 1)
    if write and after_write:
        timings["image_write_s"] = round(after_write - write, 1)
    if len(power_ons) > 1:
        timings["reboot_to_instance_marker_s"] = round(marker - power_ons[-1], 1)
    return timings


def test_a_ramdisk_deploy_boots_the_vm_into_its_ramdisk_with_no_disk_written(tmp_path: Path) -> None:
    """The ramdisk deploy interface: the instance is a kernel and an
    initramfs the VM fetches over HTTP through iPXE; nothing is written to
    its disk, and it keeps booting them from the network."""
    from testbed import RAMDISK_MARKER, build_test_ramdisk, kernel, serve_directory

    with Testbed(tmp_path / "bed") as bed:
        # The instance's files on a web server of their own, in the
        # namespace (this thread is in it, so the server's is too).
        files = tmp_path / "www"
        files.mkdir()
        vmlinuz, _ = kernel()
        (files / "vmlinuz").write_bytes(vmlinuz.read_bytes())
        (files / "initrd.gz").write_bytes(build_test_ramdisk(tmp_path).read_bytes())
        with serve_directory(files) as www:
            uuid = bed.enroll(deploy_interface="ramdisk")
            bed.baremetal("node", "manage", "vm-1", "--wait", "120")
            bed.baremetal("node", "provide", "vm-1", "--wait", "400")
            bed.baremetal(
                "node", "set", "vm-1",
                "--instance-info", f"kernel={www}/vmlinuz",
                "--instance-info", f"ramdisk={www}/initrd.gz",
                "--instance-info", "ramdisk_kernel_arguments=ferric.test=ramdisk-deploy-42",
            )
            console_from = len(bed.vm.console_text())
            started = time.time()
            bed.baremetal("node", "deploy", "vm-1", "--wait", "300")
            active = time.time()
            marker = bed.wait_console(RAMDISK_MARKER, timeout=120, after=console_from)
            console = bed.vm.console_text()[console_from:]
            line = next(l for l in console.splitlines() if RAMDISK_MARKER in l)
            assert "ferric.test=ramdisk-deploy-42" in line and "console=ttyS0" in line, line
            node = bed.server.node(uuid)
            assert node["provision_state"] == "active" and node["power_state"] == "power on", node
            # Nothing was written: cleaning left no partition table, and the
            # ramdisk deploy wrote none.
            assert not bed.vm.has_partition_table()
            # It keeps network-booting its ramdisk.
            assert (bed.vm.dir / "bootdev").read_text().strip() == "pxe"
            script = requests.get(f"{bed.server.url}/boot/ipxe/{MAC}", timeout=10).text
            assert f"kernel {www}/vmlinuz" in script and f"initrd --name ramdisk {www}/initrd.gz" in script, script
            log("ramdisk deploy timings: " + json.dumps(
                {"deploy_to_active_s": round(active - started, 1), "deploy_to_marker_s": round(marker - started, 1)}))

            bed.baremetal("node", "undeploy", "vm-1", "--wait", "400")
            assert bed.server.node(uuid)["provision_state"] == "available"
            script = requests.get(f"{bed.server.url}/boot/ipxe/{MAC}", timeout=10).text
            assert f"{www}/vmlinuz" not in script, script


def test_an_anaconda_deploy_boots_the_installer_which_calls_back_to_active(tmp_path: Path) -> None:
    """The anaconda deploy interface in a VM: iPXE boots the installer's
    kernel and initrd with inst.ks and inst.stage2; the installer (a
    stand-in: no real one can be fetched here) brings its NIC up, fetches
    the kickstart from ferricd and runs the kickstart's own %pre and last
    %post callbacks; the node goes active and is set to boot its disk."""
    from testbed import INSTALLER_MARKER, build_fake_installer, kernel, serve_directory

    with Testbed(tmp_path / "bed") as bed:
        files = tmp_path / "www"
        files.mkdir()
        vmlinuz, modules = kernel()
        (files / "vmlinuz").write_bytes(vmlinuz.read_bytes())
        (files / "initrd.img").write_bytes(build_fake_installer(tmp_path, modules).read_bytes())
        (files / "install.img").write_bytes(b"stage2")
        (files / "os.tar.gz").write_bytes(b"os")
        with serve_directory(files) as www:
            uuid = bed.enroll(deploy_interface="anaconda")
            bed.baremetal("node", "manage", "vm-1", "--wait", "120")
            bed.baremetal("node", "provide", "vm-1", "--wait", "400")
            bed.baremetal(
                "node", "set", "vm-1",
                "--instance-info", f"image_source={www}/os.tar.gz",
                "--instance-info", f"kernel={www}/vmlinuz",
                "--instance-info", f"ramdisk={www}/initrd.img",
                "--instance-info", f"stage2={www}/install.img",
                "--instance-info", 'image_properties={"disk_file_extension": ".tgz"}',
            )
            console_from = len(bed.vm.console_text())
            started = time.time()
            bed.baremetal("node", "deploy", "vm-1")
            bed.wait_console(f"{INSTALLER_MARKER} inst.ks={bed.server.url}/boot/kickstart/{uuid} "
                             f"inst.stage2={www}/install.img", timeout=120, after=console_from)
            fetched = bed.wait_console(f"{INSTALLER_MARKER} kickstart fetched", timeout=60, after=console_from)
            pre = bed.wait_console(f"{INSTALLER_MARKER} pre done", timeout=60, after=console_from)
            assert bed.server.node(uuid)["driver_internal_info"].get("agent_status") in ("start", "end")
            bed.wait_console(f"{INSTALLER_MARKER} post done", timeout=60, after=console_from)
            node = bed.wait_state(uuid, "active", timeout=60)
            active = time.time()
            assert node["last_error"] is None, node
            assert (bed.vm.dir / "bootdev").read_text().strip() == "default"
            script = requests.get(f"{bed.server.url}/boot/ipxe/{MAC}", timeout=10).text
            assert "vmlinuz" not in script and "sanboot" in script, script
            log("anaconda deploy timings: " + json.dumps({
                "deploy_to_kickstart_fetched_s": round(fetched - started, 1),
                "deploy_to_pre_callback_s": round(pre - started, 1),
                "deploy_to_active_s": round(active - started, 1),
            }))
