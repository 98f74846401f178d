//! The inventory read from a fake /sys + /proc + /dev tree, and from this
//! machine.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use ferric_agent::hints::{select_root_device, BlockDevice, RootDeviceHints};
use ferric_agent::inventory::{block_devices, block_devices_with, inventory, Filter};
use serde_json::json;

const GIB: u64 = 1 << 30;

fn write(root: &Path, path: &str, contents: impl AsRef<[u8]>) {
    let path = root.join(path);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
}

fn link(root: &Path, path: &str, target: &str) {
    let path = root.join(path);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    symlink(target, path).unwrap();
}

/// A block device directory with its size in 512-byte sectors.
fn block(root: &Path, kname: &str, sectors: u64, rotational: bool) {
    write(
        root,
        &format!("sys/block/{kname}/size"),
        format!("{sectors}\n"),
    );
    write(
        root,
        &format!("sys/block/{kname}/queue/rotational"),
        if rotational { "1\n" } else { "0\n" },
    );
}

const SCSI_DEV: &str = "sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0";
const NVME_DEV: &str = "sys/devices/pci0000:00/0000:00:1d.0/nvme/nvme0";
const NIC_DEV: &str = "sys/devices/pci0000:00/0000:00:03.0";

fn fake_machine(root: &Path, efi: bool) {
    // A SATA disk: 60 GiB, rotational, NAA wwid with a vendor extension,
    // serial only in VPD page 0x80, two by-path links.
    block(root, "sda", 60 * GIB / 512, true);
    write(root, &format!("{SCSI_DEV}/model"), "ST60000NM  \n");
    write(root, &format!("{SCSI_DEV}/vendor"), "ATA     \n");
    write(
        root,
        &format!("{SCSI_DEV}/wwid"),
        "naa.600508b1001c4d1f2f5a1b8e3c9d0e7a\n",
    );
    let mut vpd = vec![0x00, 0x80, 0x00, 0x0a];
    vpd.extend_from_slice(b"  ZA1B2C3D");
    write(root, &format!("{SCSI_DEV}/vpd_pg80"), vpd);
    link(
        root,
        "sys/block/sda/device",
        &format!("../../../{SCSI_DEV}"),
    );
    link(
        root,
        "dev/disk/by-path/pci-0000:00:1f.2-ata-1.0",
        "../../sda",
    );
    link(root, "dev/disk/by-path/pci-0000:00:1f.2-ata-1", "../../sda");
    link(
        root,
        "dev/disk/by-path/pci-0000:00:1f.2-ata-1-part1",
        "../../sda1",
    );

    // An NVMe namespace: 10 GiB SSD, serial on the controller, eui wwid.
    block(root, "nvme0n1", 10 * GIB / 512, false);
    write(root, "sys/block/nvme0n1/wwid", "eui.0025388b71b4a4e1\n");
    write(root, &format!("{NVME_DEV}/model"), "Samsung SSD 970 EVO\n");
    write(root, &format!("{NVME_DEV}/serial"), "S4EWNX0R123456\n");
    link(
        root,
        "sys/block/nvme0n1/device",
        &format!("../../../{NVME_DEV}"),
    );
    link(
        root,
        "dev/disk/by-path/pci-0000:00:1d.0-nvme-1",
        "../../nvme0n1",
    );

    // An attached loop device (1 MiB), a detached one and devices never
    // offered as disks.
    block(root, "loop0", 2048, false);
    block(root, "loop1", 0, false);
    block(root, "sdb", 0, true); // empty card reader
    for skipped in ["sr0", "ram0", "zram0", "dm-0", "fd0"] {
        block(root, skipped, 1 << 24, false);
    }

    // Network: one NIC, a VLAN on it, loopback, a bridge and a NIC with a
    // locally assigned MAC.
    write(root, "sys/class/net/eth0/address", "52:54:00:AB:CD:EF\n");
    write(root, "sys/class/net/eth0/carrier", "1\n");
    write(root, "sys/class/net/eth0/speed", "1000\n");
    write(root, &format!("{NIC_DEV}/vendor"), "0x8086\n");
    write(root, &format!("{NIC_DEV}/device"), "0x100e\n");
    fs::create_dir_all(root.join("sys/bus/pci/drivers/e1000")).unwrap();
    link(
        root,
        &format!("{NIC_DEV}/driver"),
        "../../../bus/pci/drivers/e1000",
    );
    link(
        root,
        "sys/class/net/eth0/device",
        &format!("../../../../{NIC_DEV}"),
    );
    write(
        root,
        "sys/class/net/eth0.100/address",
        "52:54:00:ab:cd:ef\n",
    );
    write(root, "sys/class/net/eth0.100/carrier", "0\n");
    write(root, "sys/class/net/lo/address", "00:00:00:00:00:00\n");
    write(root, "sys/class/net/br0/address", "52:54:00:00:00:99\n");
    write(root, "sys/class/net/eth1/address", "fa:16:3e:00:00:01\n");
    fs::create_dir_all(root.join("sys/class/net/eth1/device")).unwrap();

    write(
        root,
        "proc/net/fib_trie",
        "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n\
         Local:\n  +-- 0.0.0.0/0 3 0 5\n     +-- 127.0.0.0/8 2 0 2\n        |-- 127.0.0.1\n           /32 host LOCAL\n\
         \x20    +-- 192.0.2.0/24 2 0 2\n        |-- 192.0.2.0\n           /32 link BROADCAST\n\
         \x20       |-- 192.0.2.10\n           /32 host LOCAL\n\
         \x20       |-- 192.0.2.255\n           /32 link BROADCAST\n",
    );
    write(
        root,
        "proc/net/route",
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
         eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
         eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n",
    );
    write(
        root,
        "proc/net/if_inet6",
        "00000000000000000000000000000001 01 80 10 80       lo\n\
         fe80000000000000505400fffeabcdef 02 40 20 80     eth0\n",
    );

    write(
        root,
        "proc/cpuinfo",
        "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6230\n\
         cpu MHz\t\t: 2100.000\nphysical id\t: 0\nflags\t\t: fpu vme sse2 vmx\n\n\
         processor\t: 1\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6230\n\
         cpu MHz\t\t: 2100.000\nphysical id\t: 1\nflags\t\t: fpu vme sse2 vmx\n\n",
    );
    write(
        root,
        "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq",
        "3900000\n",
    );
    write(root, "proc/sys/kernel/arch", "x86_64\n");
    write(root, "proc/sys/kernel/hostname", "node-1\n");
    write(
        root,
        "proc/meminfo",
        "MemTotal:       16318412 kB\nMemFree:         1000000 kB\n",
    );
    write(
        root,
        "sys/devices/system/memory/block_size_bytes",
        "8000000\n",
    );
    for (block, state) in [
        ("memory0", "online"),
        ("memory1", "online"),
        ("memory2", "offline"),
    ] {
        write(
            root,
            &format!("sys/devices/system/memory/{block}/state"),
            format!("{state}\n"),
        );
    }

    for (name, value) in [
        ("product_name", "PowerEdge R640"),
        ("product_serial", "ABC1234"),
        ("sys_vendor", "Dell Inc."),
        ("bios_vendor", "Dell Inc."),
        ("bios_version", "2.11.2"),
        ("bios_date", "04/21/2021"),
    ] {
        write(
            root,
            &format!("sys/class/dmi/id/{name}"),
            format!("{value}\n"),
        );
    }
    if efi {
        fs::create_dir_all(root.join("sys/firmware/efi/efivars")).unwrap();
        write(
            root,
            "proc/cmdline",
            "BOOT_IMAGE=/vmlinuz ipa-api-url=http://192.0.2.1:6385 BOOTIF=01-52-54-00-ab-cd-ef\n",
        );
    }
}

#[test]
fn block_devices_are_read_from_sysfs() {
    let root = tempfile::tempdir().unwrap();
    fake_machine(root.path(), true);

    let disks = block_devices(root.path());
    assert_eq!(
        disks,
        vec![
            BlockDevice {
                name: "/dev/nvme0n1".into(),
                size: 10 * GIB,
                model: "Samsung SSD 970 EVO".into(),
                vendor: String::new(),
                serial: "S4EWNX0R123456".into(),
                wwn: "eui.0025388b71b4a4e1".into(),
                wwn_with_extension: String::new(),
                wwn_vendor_extension: String::new(),
                rotational: false,
                hctl: None,
                by_path: Some("/dev/disk/by-path/pci-0000:00:1d.0-nvme-1".into()),
            },
            BlockDevice {
                name: "/dev/sda".into(),
                size: 60 * GIB,
                model: "ST60000NM".into(),
                vendor: "ATA".into(),
                serial: "ZA1B2C3D".into(),
                wwn: "0x600508b1001c4d1f".into(),
                wwn_with_extension: "0x600508b1001c4d1f2f5a1b8e3c9d0e7a".into(),
                wwn_vendor_extension: "0x2f5a1b8e3c9d0e7a".into(),
                rotational: true,
                hctl: Some("0:0:0:0".into()),
                by_path: Some("/dev/disk/by-path/pci-0000:00:1f.2-ata-1".into()),
            },
        ]
    );

    let with_loop = block_devices_with(root.path(), &Filter { include_loop: true });
    let names: Vec<&str> = with_loop.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["/dev/loop0", "/dev/nvme0n1", "/dev/sda"]);
    assert_eq!(with_loop[0].size, 1 << 20);
}

#[test]
fn hints_pick_a_disk_read_from_sysfs() {
    let root = tempfile::tempdir().unwrap();
    fake_machine(root.path(), true);
    let disks = block_devices_with(root.path(), &Filter { include_loop: true });

    // The default rule skips the 1 MiB loop device and the 10 GiB NVMe wins.
    assert_eq!(
        select_root_device(&disks, None).unwrap().name,
        "/dev/nvme0n1"
    );
    // Integration tests reach a loop device by name.
    let hints = RootDeviceHints::parse(&json!({"name": "loop0"})).unwrap();
    assert_eq!(
        select_root_device(&disks, Some(&hints)).unwrap().name,
        "/dev/loop0"
    );
    let hints =
        RootDeviceHints::parse(&json!({"wwn": "0x600508B1001C4D1F", "hctl": "0:0:0:0"})).unwrap();
    assert_eq!(
        select_root_device(&disks, Some(&hints)).unwrap().name,
        "/dev/sda"
    );
}

#[test]
fn inventory_has_ipas_shape() {
    let root = tempfile::tempdir().unwrap();
    fake_machine(root.path(), true);

    let inventory = inventory(root.path());
    assert_eq!(
        inventory["cpu"],
        json!({
            "model_name": "Intel(R) Xeon(R) Gold 6230",
            "frequency": "3900.0000",
            "count": 2,
            "architecture": "x86_64",
            "flags": ["fpu", "vme", "sse2", "vmx"],
            "socket_count": 2,
        })
    );
    assert_eq!(
        inventory["memory"],
        json!({"total": 16318412u64 * 1024, "physical_mb": 256})
    );
    assert_eq!(
        inventory["disks"],
        json!([
            {
                "name": "/dev/nvme0n1", "model": "Samsung SSD 970 EVO", "size": 10 * GIB,
                "rotational": false, "wwn": "eui.0025388b71b4a4e1", "serial": "S4EWNX0R123456",
                "vendor": null, "wwn_with_extension": null, "wwn_vendor_extension": null,
                "hctl": null, "by_path": "/dev/disk/by-path/pci-0000:00:1d.0-nvme-1",
            },
            {
                "name": "/dev/sda", "model": "ST60000NM", "size": 60 * GIB, "rotational": true,
                "wwn": "0x600508b1001c4d1f", "serial": "ZA1B2C3D", "vendor": "ATA",
                "wwn_with_extension": "0x600508b1001c4d1f2f5a1b8e3c9d0e7a",
                "wwn_vendor_extension": "0x2f5a1b8e3c9d0e7a", "hctl": "0:0:0:0",
                "by_path": "/dev/disk/by-path/pci-0000:00:1f.2-ata-1",
            },
        ])
    );
    assert_eq!(
        inventory["interfaces"],
        json!([
            {
                "name": "eth0", "mac_address": "52:54:00:ab:cd:ef",
                "ipv4_address": "192.0.2.10", "ipv6_address": "fe80::5054:ff:feab:cdef",
                "has_carrier": true, "lldp": null, "vendor": "0x8086", "product": "0x100e",
                "client_id": null, "biosdevname": null, "speed_mbps": 1000,
                "pci_address": "0000:00:03.0", "driver": "e1000",
            },
            {
                "name": "eth0.100", "mac_address": "52:54:00:ab:cd:ef",
                "ipv4_address": null, "ipv6_address": null,
                "has_carrier": false, "lldp": null, "vendor": null, "product": null,
                "client_id": null, "biosdevname": null, "speed_mbps": null,
                "pci_address": null, "driver": null,
            },
        ])
    );
    assert_eq!(
        inventory["system_vendor"],
        json!({
            "product_name": "PowerEdge R640",
            "serial_number": "ABC1234",
            "manufacturer": "Dell Inc.",
            "firmware": {"vendor": "Dell Inc.", "version": "2.11.2", "build_date": "04/21/2021"},
        })
    );
    assert_eq!(
        inventory["boot"],
        json!({"current_boot_mode": "uefi", "pxe_interface": "01-52-54-00-ab-cd-ef"})
    );
    assert_eq!(inventory["hostname"], "node-1");
    assert!(inventory["bmc_address"].is_null());
}

#[test]
fn bios_machine_without_optional_files() {
    let root = tempfile::tempdir().unwrap();
    fake_machine(root.path(), false);
    for gone in [
        "sys/class/dmi",
        "sys/devices/system/memory",
        "sys/devices/system/cpu",
    ] {
        fs::remove_dir_all(root.path().join(gone)).unwrap();
    }

    let inventory = inventory(root.path());
    assert_eq!(
        inventory["boot"],
        json!({"current_boot_mode": "bios", "pxe_interface": null})
    );
    assert_eq!(inventory["memory"]["physical_mb"], json!(null));
    assert_eq!(inventory["cpu"]["frequency"], "2100.000");
    assert_eq!(inventory["system_vendor"]["product_name"], "");

    // A root with nothing in it reads as an empty machine, not a panic.
    let empty = tempfile::tempdir().unwrap();
    let empty_inventory = ferric_agent::inventory::inventory(empty.path());
    assert_eq!(empty_inventory["disks"], json!([]));
    assert_eq!(empty_inventory["interfaces"], json!([]));
    assert_eq!(empty_inventory["cpu"]["count"], 0);
    assert_eq!(empty_inventory["memory"]["total"], json!(null));
}

#[test]
fn this_machine() {
    let inventory = inventory(Path::new("/"));
    let count = inventory["cpu"]["count"].as_u64().unwrap();
    assert!(count >= 1, "cpu: {}", inventory["cpu"]);
    let total = inventory["memory"]["total"].as_u64().unwrap();
    assert!(total > 0, "memory: {}", inventory["memory"]);
    let interfaces = inventory["interfaces"].as_array().unwrap();
    assert!(!interfaces.is_empty(), "no NIC found: {inventory}");
    assert!(interfaces.iter().all(|i| i["name"] != "lo"));
    for disk in inventory["disks"].as_array().unwrap() {
        let name = disk["name"].as_str().unwrap();
        assert!(
            name.starts_with("/dev/") && !name.starts_with("/dev/loop"),
            "{name}"
        );
        assert!(disk["size"].as_u64().unwrap() > 0);
    }
    assert!(["uefi", "bios"].contains(&inventory["boot"]["current_boot_mode"].as_str().unwrap()));
}
