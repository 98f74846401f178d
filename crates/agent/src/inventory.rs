//! The hardware inventory, as IPA's generic hardware manager reports it
//! (`list_hardware_info`), read from /sys and /proc alone: no lsblk, lshw,
//! lscpu or ip.
//!
//! Every function takes `sys_root`, the directory holding `sys/`, `proc/`
//! and `dev/`: "/" in production, a fake tree in tests. Reading is
//! best-effort, like IPA's: a missing or unreadable attribute is reported as
//! unknown (empty / null), never as an error. The reads are blocking file
//! I/O; call from a blocking thread.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Component, Path, PathBuf};

use serde_json::{json, Value};

use crate::hints::BlockDevice;

/// Which block devices `block_devices_with` lists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Filter {
    /// Also list attached loop devices (integration tests deploy to one).
    /// Default false: IPA never offers loop devices as disks.
    pub include_loop: bool,
}

/// Kernel names never offered as disks: RAM disks, zram, device-mapper,
/// optical and floppy drives (and loop devices unless asked for).
const SKIPPED_PREFIXES: &[&str] = &["ram", "zram", "dm-", "sr", "fd"];

/// The machine's disks, sorted by name, without loop devices.
pub fn block_devices(sys_root: &Path) -> Vec<BlockDevice> {
    block_devices_with(sys_root, &Filter::default())
}

/// The machine's disks from `<sys_root>/sys/block`, sorted by name. Devices
/// of size 0 (empty card readers, detached loop devices) are skipped, as IPA
/// does.
pub fn block_devices_with(sys_root: &Path, filter: &Filter) -> Vec<BlockDevice> {
    let block_dir = sys_root.join("sys/block");
    let entries = match fs::read_dir(&block_dir) {
        Ok(entries) => entries,
        Err(error) => {
            tracing::warn!(path = %block_dir.display(), %error, "cannot list block devices");
            return Vec::new();
        }
    };
    let mut knames: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|kname| {
            !SKIPPED_PREFIXES.iter().any(|p| kname.starts_with(p))
                && (filter.include_loop || !kname.starts_with("loop"))
        })
        .collect();
    knames.sort();

    let by_path = by_path_links(sys_root);
    knames
        .iter()
        .filter_map(|kname| read_block_device(&block_dir.join(kname), kname, &by_path))
        .collect()
}

fn read_block_device(
    dir: &Path,
    kname: &str,
    by_path: &BTreeMap<String, String>,
) -> Option<BlockDevice> {
    let sectors: u64 = read_attr(&dir.join("size"))?.parse().ok()?;
    if sectors == 0 {
        return None;
    }
    // sysfs spells a '/' in a device name as '!' (cciss!c0d0).
    let name = format!("/dev/{}", kname.replace('!', "/"));
    let device = dir.join("device");
    let serial = read_attr(&dir.join("serial"))
        .or_else(|| read_attr(&device.join("serial")))
        .or_else(|| vpd_unit_serial(&device.join("vpd_pg80")))
        .unwrap_or_default();
    let wwid = read_attr(&device.join("wwid")).or_else(|| read_attr(&dir.join("wwid")));
    let (wwn, wwn_with_extension, wwn_vendor_extension) =
        wwid.as_deref().map(split_wwid).unwrap_or_default();
    Some(BlockDevice {
        by_path: by_path.get(&name).cloned(),
        name,
        size: sectors * 512,
        model: read_attr(&device.join("model")).unwrap_or_default(),
        vendor: read_attr(&device.join("vendor")).unwrap_or_default(),
        serial,
        wwn,
        wwn_with_extension,
        wwn_vendor_extension,
        rotational: read_attr(&dir.join("queue/rotational")).as_deref() == Some("1"),
        hctl: hctl(&device),
    })
}

/// udev's ID_WWN, ID_WWN_WITH_EXTENSION and ID_WWN_VENDOR_EXTENSION from a
/// sysfs `wwid`. An NAA identifier ("naa.<hex>") is "0x" + its first 16 hex
/// digits, the rest being the vendor extension; other kinds (NVMe "eui.",
/// "nvme.") are used whole, as udev does for NVMe.
fn split_wwid(wwid: &str) -> (String, String, String) {
    if let Some(hex) = wwid.strip_prefix("naa.") {
        let hex = hex.to_lowercase();
        if hex.len() > 16 && hex.is_char_boundary(16) {
            let (wwn, extension) = hex.split_at(16);
            return (
                format!("0x{wwn}"),
                format!("0x{hex}"),
                format!("0x{extension}"),
            );
        }
        return (format!("0x{hex}"), format!("0x{hex}"), String::new());
    }
    (wwid.to_owned(), String::new(), String::new())
}

/// The unit serial number from a SCSI VPD page 0x80: a 4-byte header whose
/// bytes 2-3 give the length, then the ASCII serial.
fn vpd_unit_serial(path: &Path) -> Option<String> {
    let page = fs::read(path).ok()?;
    if page.len() < 4 || page[1] != 0x80 {
        return None;
    }
    let length = u16::from_be_bytes([page[2], page[3]]) as usize;
    let serial = page.get(4..4 + length)?;
    let serial = String::from_utf8_lossy(serial).trim().to_owned();
    (!serial.is_empty()).then_some(serial)
}

/// The SCSI address: the last component of the `device` link when it reads
/// H:C:T:L, else the entry under `device/scsi_device` (IPA's source).
fn hctl(device: &Path) -> Option<String> {
    let from_link = fs::read_link(device)
        .ok()
        .and_then(|target| Some(target.file_name()?.to_str()?.to_owned()))
        .filter(|name| is_hctl(name));
    from_link.or_else(|| {
        let mut names: Vec<String> = fs::read_dir(device.join("scsi_device"))
            .ok()?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| is_hctl(name))
            .collect();
        names.sort();
        names.into_iter().next()
    })
}

fn is_hctl(name: &str) -> bool {
    let parts: Vec<&str> = name.split(':').collect();
    parts.len() == 4
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `/dev/sdX` -> `/dev/disk/by-path/<link>` from the links under
/// `<sys_root>/dev/disk/by-path`. When several links name one device, the
/// first by name wins, so the answer does not depend on directory order.
fn by_path_links(sys_root: &Path) -> BTreeMap<String, String> {
    let mut links = BTreeMap::new();
    let Ok(entries) = fs::read_dir(sys_root.join("dev/disk/by-path")) else {
        return links;
    };
    let mut names: Vec<(String, PathBuf)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            Some((e.file_name().into_string().ok()?, e.path()))
        })
        .collect();
    names.sort();
    let base = Path::new("/dev/disk/by-path");
    for (name, path) in names {
        let Ok(target) = fs::read_link(&path) else {
            continue;
        };
        // Resolve as the link would be in production, then map back.
        let device = lexical_normalize(&base.join(target));
        let Some(device) = device.to_str() else {
            continue;
        };
        links
            .entry(device.to_owned())
            .or_insert_with(|| format!("/dev/disk/by-path/{name}"));
    }
    links
}

fn lexical_normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// A sysfs/procfs attribute, trimmed; `None` when missing or empty.
fn read_attr(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn link_basename(path: &Path) -> Option<String> {
    let target = fs::read_link(path).ok()?;
    Some(target.file_name()?.to_str()?.to_owned())
}

fn or_null(value: &str) -> Value {
    if value.is_empty() {
        Value::Null
    } else {
        Value::String(value.to_owned())
    }
}

/// A disk in the inventory's shape (IPA's `BlockDevice.serialize`); unknown
/// strings are `null`, as IPA reports them.
pub fn disk_json(device: &BlockDevice) -> Value {
    json!({
        "name": device.name,
        "model": or_null(&device.model),
        "size": device.size,
        "rotational": device.rotational,
        "wwn": or_null(&device.wwn),
        "serial": or_null(&device.serial),
        "vendor": or_null(&device.vendor),
        "wwn_with_extension": or_null(&device.wwn_with_extension),
        "wwn_vendor_extension": or_null(&device.wwn_vendor_extension),
        "hctl": device.hctl,
        "by_path": device.by_path,
    })
}

/// The full inventory in IPA's shape: `cpu`, `memory`, `disks`,
/// `interfaces`, `system_vendor`, `boot`, `hostname`, `bmc_address`,
/// `bmc_v6address` (always null: no IPMI here).
pub fn inventory(sys_root: &Path) -> Value {
    let disks: Vec<Value> = block_devices(sys_root).iter().map(disk_json).collect();
    json!({
        "cpu": cpu(sys_root),
        "memory": memory(sys_root),
        "disks": disks,
        "interfaces": interfaces(sys_root),
        "system_vendor": system_vendor(sys_root),
        "boot": boot(sys_root),
        "hostname": read_attr(&sys_root.join("proc/sys/kernel/hostname"))
            .or_else(|| read_attr(&sys_root.join("etc/hostname")))
            .unwrap_or_default(),
        "bmc_address": null,
        "bmc_v6address": null,
    })
}

/// `/proc/cpuinfo` as one key/value map per processor, keys lower-cased.
fn cpuinfo_sections(sys_root: &Path) -> Vec<BTreeMap<String, String>> {
    let text = fs::read_to_string(sys_root.join("proc/cpuinfo")).unwrap_or_default();
    text.split("\n\n")
        .map(|section| {
            section
                .lines()
                .filter_map(|line| {
                    let (key, value) = line.split_once(':')?;
                    Some((key.trim().to_lowercase(), value.trim().to_owned()))
                })
                .collect::<BTreeMap<_, _>>()
        })
        .filter(|section| !section.is_empty())
        .collect()
}

/// IPA's `get_cpus` (lscpu's view): model name, maximum frequency in MHz
/// (cpufreq's max, else /proc/cpuinfo's current), logical CPU count,
/// architecture, flags, sockets.
fn cpu(sys_root: &Path) -> Value {
    let sections = cpuinfo_sections(sys_root);
    let processors: Vec<&BTreeMap<String, String>> = sections
        .iter()
        .filter(|s| s.contains_key("processor"))
        .collect();
    let first = processors.first().copied().or(sections.first());
    let field = |key: &str| first.and_then(|s| s.get(key)).cloned().unwrap_or_default();
    let model_name = [field("model name"), field("cpu model"), field("cpu")]
        .into_iter()
        .find(|v| !v.is_empty())
        .unwrap_or_default();
    let frequency =
        read_attr(&sys_root.join("sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"))
            .and_then(|khz| khz.parse::<u64>().ok())
            .map(|khz| format!("{:.4}", khz as f64 / 1000.0))
            .unwrap_or_else(|| field("cpu mhz"));
    let flags = [field("flags"), field("features")]
        .into_iter()
        .find(|v| !v.is_empty())
        .unwrap_or_default();
    let flags: Vec<&str> = flags.split_whitespace().collect();
    let sockets: BTreeSet<&String> = processors
        .iter()
        .filter_map(|s| s.get("physical id"))
        .collect();
    let count = processors.len();
    let socket_count = if sockets.is_empty() {
        usize::from(count > 0)
    } else {
        sockets.len()
    };
    json!({
        "model_name": model_name,
        "frequency": frequency,
        "count": count,
        "architecture": read_attr(&sys_root.join("proc/sys/kernel/arch"))
            .unwrap_or_else(|| std::env::consts::ARCH.to_owned()),
        "flags": flags,
        "socket_count": socket_count,
    })
}

/// IPA's `get_memory`: `total` is MemTotal in bytes (psutil's figure);
/// `physical_mb` is the online memory blocks' size in MiB (lshw reads the
/// DIMMs instead), null when the kernel has no memory block devices.
fn memory(sys_root: &Path) -> Value {
    let meminfo = fs::read_to_string(sys_root.join("proc/meminfo")).unwrap_or_default();
    let total = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024);
    json!({ "total": total, "physical_mb": physical_memory_mb(sys_root) })
}

fn physical_memory_mb(sys_root: &Path) -> Option<u64> {
    let dir = sys_root.join("sys/devices/system/memory");
    let block_size = u64::from_str_radix(&read_attr(&dir.join("block_size_bytes"))?, 16).ok()?;
    let online = fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("memory"))
        .filter(|e| read_attr(&e.path().join("state")).as_deref() == Some("online"))
        .count() as u64;
    (online > 0).then(|| online * block_size / (1 << 20))
}

/// IPA's `list_network_interfaces`: physical NICs (with a `device` link),
/// bonds and VLANs (`eth0.100`); `lo`, bridges and veths are left out, as
/// are interfaces without a MAC or with a locally assigned `fa:` one.
fn interfaces(sys_root: &Path) -> Vec<Value> {
    let net = sys_root.join("sys/class/net");
    let Ok(entries) = fs::read_dir(&net) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    let ipv4 = ipv4_addresses(sys_root);
    let ipv6 = ipv6_addresses(sys_root);
    names
        .into_iter()
        .filter(|name| {
            let dir = net.join(name);
            is_vlan(name) || dir.join("device").exists() || dir.join("bonding").exists()
        })
        .filter_map(|name| {
            let dir = net.join(&name);
            let mac = read_attr(&dir.join("address"))?.to_lowercase();
            if mac.starts_with("fa:") {
                tracing::warn!(interface = %name, %mac, "ignoring locally assigned MAC address");
                return None;
            }
            let speed = read_attr(&dir.join("speed"))
                .and_then(|s| s.parse::<i64>().ok())
                .filter(|s| *s > 0);
            Some(json!({
                "name": name,
                "mac_address": mac,
                "ipv4_address": ipv4.get(&name).map(|a| a.to_string()),
                "ipv6_address": ipv6.get(&name).map(|a| a.to_string()),
                "has_carrier": read_attr(&dir.join("carrier")).as_deref() == Some("1"),
                "lldp": null,
                "vendor": read_attr(&dir.join("device/vendor")),
                "product": read_attr(&dir.join("device/device")),
                "client_id": null,
                "biosdevname": null,
                "speed_mbps": speed,
                "pci_address": link_basename(&dir.join("device")),
                "driver": link_basename(&dir.join("device/driver")),
            }))
        })
        .collect()
}

fn is_vlan(name: &str) -> bool {
    name.split_once('.')
        .is_some_and(|(_, id)| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
}

/// Each interface's first IPv4 address: the host's local addresses from
/// `/proc/net/fib_trie`, given to the interface whose route in
/// `/proc/net/route` covers them most narrowly (the default route is not
/// considered).
fn ipv4_addresses(sys_root: &Path) -> BTreeMap<String, Ipv4Addr> {
    let trie = fs::read_to_string(sys_root.join("proc/net/fib_trie")).unwrap_or_default();
    let mut local: Vec<Ipv4Addr> = Vec::new();
    let mut leaf: Option<Ipv4Addr> = None;
    for line in trie.lines() {
        let line = line.trim();
        if let Some(address) = line.strip_prefix("|-- ") {
            leaf = address.trim().parse().ok();
        } else if line.starts_with("/32 host LOCAL") {
            if let Some(address) = leaf {
                if !local.contains(&address) {
                    local.push(address);
                }
            }
        }
    }

    let routes_text = fs::read_to_string(sys_root.join("proc/net/route")).unwrap_or_default();
    // The kernel prints the addresses as host-order integers of network-order bytes.
    let hex = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_ne_bytes);
    let routes: Vec<(String, u32, u32)> = routes_text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (iface, dest, mask) = (fields.first()?, fields.get(1)?, fields.get(7)?);
            let dest = u32::from_be_bytes(hex(dest)?);
            let mask = u32::from_be_bytes(hex(mask)?);
            (mask != 0).then(|| (iface.to_string(), dest, mask))
        })
        .collect();

    let mut by_interface = BTreeMap::new();
    for address in local {
        let bits = u32::from(address);
        let best = routes
            .iter()
            .filter(|(_, dest, mask)| bits & mask == dest & mask)
            .max_by_key(|(_, _, mask)| mask.count_ones());
        if let Some((iface, _, _)) = best {
            by_interface.entry(iface.clone()).or_insert(address);
        }
    }
    by_interface
}

/// Each interface's first IPv6 address from `/proc/net/if_inet6`.
fn ipv6_addresses(sys_root: &Path) -> BTreeMap<String, Ipv6Addr> {
    let text = fs::read_to_string(sys_root.join("proc/net/if_inet6")).unwrap_or_default();
    let mut by_interface = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(hex), Some(iface)) = (fields.first(), fields.last()) else {
            continue;
        };
        if fields.len() < 6 {
            continue;
        }
        if let Ok(bits) = u128::from_str_radix(hex, 16) {
            by_interface
                .entry((*iface).to_owned())
                .or_insert(Ipv6Addr::from(bits));
        }
    }
    by_interface
}

/// IPA's `get_system_vendor_info`, from the DMI attributes lshw reads.
fn system_vendor(sys_root: &Path) -> Value {
    let dmi = sys_root.join("sys/class/dmi/id");
    let attr = |name: &str| read_attr(&dmi.join(name)).unwrap_or_default();
    json!({
        "product_name": attr("product_name"),
        "serial_number": attr("product_serial"),
        "manufacturer": attr("sys_vendor"),
        "firmware": {
            "vendor": attr("bios_vendor"),
            "version": attr("bios_version"),
            "build_date": attr("bios_date"),
        },
    })
}

/// IPA's `get_boot_info`: UEFI when the kernel exposes /sys/firmware/efi;
/// `pxe_interface` is the `BOOTIF=` kernel parameter, if any.
fn boot(sys_root: &Path) -> Value {
    let mode = if sys_root.join("sys/firmware/efi").is_dir() {
        "uefi"
    } else {
        "bios"
    };
    let cmdline = fs::read_to_string(sys_root.join("proc/cmdline")).unwrap_or_default();
    let bootif = cmdline
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix("BOOTIF="))
        .map(str::to_owned);
    json!({ "current_boot_mode": mode, "pxe_interface": bootif })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naa_wwid_splits_into_wwn_and_vendor_extension() {
        assert_eq!(
            split_wwid("naa.600508b1001c4d1f2f5a1b8e3c9d0e7a"),
            (
                "0x600508b1001c4d1f".to_owned(),
                "0x600508b1001c4d1f2f5a1b8e3c9d0e7a".to_owned(),
                "0x2f5a1b8e3c9d0e7a".to_owned()
            )
        );
        assert_eq!(
            split_wwid("naa.5000C500A1B2C3D4"),
            (
                "0x5000c500a1b2c3d4".to_owned(),
                "0x5000c500a1b2c3d4".to_owned(),
                String::new()
            )
        );
        assert_eq!(
            split_wwid("eui.0025388b71b4a4e1"),
            (
                "eui.0025388b71b4a4e1".to_owned(),
                String::new(),
                String::new()
            )
        );
    }

    #[test]
    fn hctl_and_vlan_shapes() {
        assert!(is_hctl("0:0:0:0"));
        assert!(is_hctl("10:2:31:7"));
        assert!(!is_hctl("0:0:0"));
        assert!(!is_hctl("virtio1"));
        assert!(!is_hctl("a:0:0:0"));
        assert!(is_vlan("eth0.100"));
        assert!(!is_vlan("eth0"));
        assert!(!is_vlan("eth0."));
    }

    #[test]
    fn lexical_normalize_resolves_relative_links() {
        assert_eq!(
            lexical_normalize(Path::new("/dev/disk/by-path/../../sda")),
            PathBuf::from("/dev/sda")
        );
    }
}
