"""`make demo`: Ferric provisions a virtual machine, live.

Builds the deploy ramdisk and a small instance image, makes a network
namespace with dnsmasq, ferricd and an IPMI BMC (ipmi_sim) whose chassis is a
QEMU VM, then enrolls the VM with the `ferric` CLI, cleans it, deploys the
image with a config drive and waits until the VM's console shows its new OS
printing the config drive's user_data. Everything is torn down at the end.
Exits 0 only if the VM booted its new OS.

Run as root after `cargo build -p ferricd -p ferric-cli` (scripts/demo does
all of it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from testbed import IPMI_PASSWORD, IPMI_USER, MAC, MARKER, USER_DATA_PREFIX, Recorder, Testbed, binary

USER_DATA = "hello from the config drive, written by Ferric"


def bold(text: str) -> str:
    return f"\033[1m{text}\033[0m" if sys.stdout.isatty() else text


def say(text: str) -> None:
    print(f"\n{bold('## ' + text)}", flush=True)


def ferric(bed: Testbed, *args: str, show: bool = True) -> None:
    if show:
        shown = " ".join(a if " " not in a and a else json.dumps(a) for a in args)
        print(f"\n$ ferric {shown}", flush=True)
    env = dict(os.environ, FERRIC_URL=bed.server.url)
    subprocess.run([str(binary("FERRIC_BIN", "ferric")), *args], env=env, check=True)


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="ferric-demo-"))
    ok = False
    try:
        say("Building the deploy ramdisk and an instance image; starting the test bed")
        with Testbed(workdir) as bed:
            print(f"ferricd {bed.server.url} in network namespace {bed.netns.name}, with dnsmasq on br0")
            print(f"BMC: ipmi_sim on 127.0.0.1:{bed.bmc.port}; its chassis is a QEMU VM (TCG), NIC {MAC}")
            print(f"deploy ramdisk: {bed.ramdisk.stat().st_size / 2**20:.1f} MiB; "
                  f"instance image: {bed.image.stat().st_size >> 20} MiB (SYSLINUX, a kernel, an init)")

            say("Enroll the VM with its BMC and its NIC")
            ferric(bed, "node", "create", "--driver", "ipmi", "--name", "vm-1",
                   "--boot-interface", "ipxe", "--deploy-interface", "direct",
                   "--driver-info", "ipmi_address=127.0.0.1", "--driver-info", f"ipmi_port={bed.bmc.port}",
                   "--driver-info", f"ipmi_username={IPMI_USER}", "--driver-info", f"ipmi_password={IPMI_PASSWORD}",
                   "--property", "capabilities=boot_mode:bios")
            ferric(bed, "port", "create", MAC, "--node", "vm-1")
            ferric(bed, "node", "manage", "vm-1", "--wait", "120")

            say("Provide: cleaning boots the deploy ramdisk over iPXE and wipes the disk's metadata")
            ferric(bed, "node", "provide", "vm-1", "--wait", "400")

            say("Deploy the image with a config drive")
            configdrive = workdir / "config-drive.json"
            configdrive.write_text(json.dumps({"meta_data": {"hostname": "vm-1.example"}, "user_data": USER_DATA}))
            print(configdrive.read_text())
            node = bed.server.node("vm-1")
            recorder = Recorder(bed.server, node["uuid"]).start()
            console_from = len(bed.vm.console_text())
            started = time.time()
            ferric(bed, "node", "deploy", "vm-1", "--image-url", f"file://{bed.image}",
                   "--image-checksum", bed.image_sha256, "--config-drive", str(configdrive), "--wait", "600")
            active = recorder.first(state="active", after=started) or time.time()
            say("The VM boots its new disk; its console says")
            marker = bed.wait_console(MARKER, timeout=120, after=console_from)
            recorder.stop()
            # The config drive's lines come after the marker.
            bed.wait_console(USER_DATA_PREFIX, timeout=60, after=console_from)
            console = bed.vm.console_text()[console_from:]
            lines = [line for line in console.splitlines() if MARKER in line or USER_DATA_PREFIX in line]
            for line in lines:
                print(f"    {line.strip()}")
            ok = any(USER_DATA in line for line in lines)
            say("Timings")
            print(f"deploy -> active: {active - started:.1f} s; deploy -> the new OS's console line: "
                  f"{marker - started:.1f} s")
            print(f"the agent's peak RSS in the VM: {bed.vm.agent_peak_rss_mib(console)} MiB")
            say("Tearing everything down")
    except Exception as e:  # noqa: BLE001 - the demo reports and fails
        print(f"\ndemo failed: {e}", file=sys.stderr)
        print(f"(its files are kept in {workdir})", file=sys.stderr)
        return 1
    if not ok:
        print(f"\ndemo failed: the VM did not show its config drive (files in {workdir})", file=sys.stderr)
        return 1
    subprocess.run(["rm", "-rf", str(workdir)], check=False)
    say("Done: Ferric powered the VM through its BMC, network-booted it, wrote its disk, and it booted its new OS.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
