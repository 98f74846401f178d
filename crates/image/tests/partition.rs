//! Partition tables checked against the real tools: sfdisk and sgdisk read
//! what we write, and we read what they write. Sparse temp files throughout.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use ferric_image::partition::{
    add_partition_at_end, create_layout, read_table, relocate_gpt_backup, BootMode, Layout,
    PartitionTable, TableKind, DEFAULT_EFI_SYSTEM_MIB,
};
use ferric_image::Error;
use serde_json::Value;
use tempfile::NamedTempFile;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

const LINUX_DATA: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";
const LINUX_SWAP: &str = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f";
const EFI_SYSTEM: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
const BIOS_BOOT: &str = "21686148-6449-6e6f-744e-656564454649";

fn sparse(size: u64) -> NamedTempFile {
    let f = NamedTempFile::new().unwrap();
    f.as_file().set_len(size).unwrap();
    f
}

/// Runs a tool; returns whether it succeeded, its stdout, and both outputs
/// together for messages.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(pipe);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.success(), stdout, all)
}

fn must(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    let (ok, stdout, all) = run(program, args, stdin);
    assert!(ok, "{program} {args:?} failed:\n{all}");
    stdout
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn sfdisk_verify(p: &Path) {
    let out = must("sfdisk", &["-V", path_str(p)], None);
    assert!(out.contains("No errors detected"), "sfdisk -V:\n{out}");
}

fn sgdisk_verify(p: &Path) {
    let out = must("sgdisk", &["-v", path_str(p)], None);
    assert!(out.contains("No problems found"), "sgdisk -v:\n{out}");
}

fn sfdisk_json(p: &Path) -> Value {
    let out = must("sfdisk", &["-J", path_str(p)], None);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["partitiontable"].clone()
}

fn read(f: &NamedTempFile) -> Option<PartitionTable> {
    let mut file = File::open(f.path()).unwrap();
    let size = file.metadata().unwrap().len();
    read_table(&mut file, size).unwrap()
}

fn open_rw(f: &NamedTempFile) -> (File, u64) {
    let file = File::options()
        .read(true)
        .write(true)
        .open(f.path())
        .unwrap();
    let size = file.metadata().unwrap().len();
    (file, size)
}

/// The sfdisk JSON partition with this number (from its node name).
fn json_part(table: &Value, number: u32) -> Value {
    table["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            let node = p["node"].as_str().unwrap();
            let digits: String = node
                .chars()
                .rev()
                .take_while(|c| c.is_ascii_digit())
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            digits.parse::<u32>().unwrap() == number
        })
        .cloned()
        .unwrap_or_else(|| panic!("no partition {number} in {table:#}"))
}

/// Checks that our reading of the disk agrees with sfdisk's on every field
/// sfdisk reports.
fn assert_matches_sfdisk(ours: &PartitionTable, theirs: &Value) {
    let ss = theirs["sectorsize"].as_u64().unwrap();
    assert_eq!(ours.sector_size, ss);
    let label = theirs["label"].as_str().unwrap();
    assert_eq!(
        ours.kind,
        if label == "gpt" {
            TableKind::Gpt
        } else {
            TableKind::Mbr
        }
    );
    assert_eq!(
        ours.disk_id.to_lowercase(),
        theirs["id"].as_str().unwrap().to_lowercase()
    );
    let json_parts = theirs["partitions"].as_array().unwrap();
    assert_eq!(
        ours.partitions.len(),
        json_parts.len(),
        "{ours:#?} vs {theirs:#}"
    );
    for p in &ours.partitions {
        let j = json_part(theirs, p.number);
        assert_eq!(
            p.start,
            j["start"].as_u64().unwrap() * ss,
            "start of {}",
            p.number
        );
        assert_eq!(
            p.size,
            j["size"].as_u64().unwrap() * ss,
            "size of {}",
            p.number
        );
        let jtype = j["type"].as_str().unwrap().to_lowercase();
        if label == "gpt" {
            assert_eq!(p.type_id, jtype);
            assert_eq!(
                p.uuid.as_deref(),
                Some(j["uuid"].as_str().unwrap().to_lowercase().as_str())
            );
            assert_eq!(p.name.as_deref(), j["name"].as_str());
            let attrs = j["attrs"].as_str().unwrap_or("");
            assert_eq!(p.bootable, attrs.contains("LegacyBIOSBootable"));
        } else {
            assert_eq!(p.type_id, format!("0x{jtype:0>2}"));
            assert_eq!(p.bootable, j["bootable"].as_bool().unwrap_or(false));
            let sig = ours.disk_id.trim_start_matches("0x");
            assert_eq!(p.uuid, Some(format!("{sig}-{:02x}", p.number)));
        }
    }
}

#[test]
fn bios_mbr_layout_is_what_ironic_makes() {
    let disk = sparse(4 * GIB);
    let (mut file, size) = open_rw(&disk);
    let layout = Layout {
        ephemeral_mib: 1024,
        swap_mib: 512,
        configdrive_mib: 64,
        ..Layout::new(BootMode::Bios)
    };
    let result = create_layout(&mut file, size, &layout).unwrap();
    drop(file);
    sfdisk_verify(disk.path());
    let json = sfdisk_json(disk.path());
    assert_eq!(json["label"], "dos");
    assert_matches_sfdisk(&result.table, &json);

    assert_eq!(result.ephemeral, Some(1));
    assert_eq!(result.swap, Some(2));
    assert_eq!(result.configdrive, Some(3));
    assert_eq!(result.root, 4);
    assert_eq!((result.efi_system, result.bios_grub), (None, None));
    let expect = [
        (1, 2048, 1024 * 2048, "83", false),
        (2, 2048 + 1024 * 2048, 512 * 2048, "82", false),
        (3, 2048 + 1536 * 2048, 64 * 2048, "83", false),
        (
            4,
            2048 + 1600 * 2048,
            4 * GIB / 512 - 2048 - 1600 * 2048,
            "83",
            true,
        ),
    ];
    for (n, start, sectors, ty, boot) in expect {
        let p = json_part(&json, n);
        assert_eq!(p["start"].as_u64().unwrap(), start, "partition {n}");
        assert_eq!(p["size"].as_u64().unwrap(), sectors, "partition {n}");
        assert_eq!(p["type"], ty, "partition {n}");
        assert_eq!(
            p["bootable"].as_bool().unwrap_or(false),
            boot,
            "partition {n}"
        );
    }
}

#[test]
fn bios_gpt_layout_has_a_bios_boot_partition_first() {
    let disk = sparse(4 * GIB);
    let (mut file, size) = open_rw(&disk);
    let layout = Layout {
        label: Some(TableKind::Gpt),
        swap_mib: 256,
        root_mib: 2048,
        ..Layout::new(BootMode::Bios)
    };
    let result = create_layout(&mut file, size, &layout).unwrap();
    drop(file);
    sfdisk_verify(disk.path());
    sgdisk_verify(disk.path());
    let json = sfdisk_json(disk.path());
    assert_eq!(json["label"], "gpt");
    assert_matches_sfdisk(&result.table, &json);
    assert_eq!(result.bios_grub, Some(1));
    assert_eq!(result.swap, Some(2));
    assert_eq!(result.root, 3);
    let expect = [
        (1, 2048, 2048, BIOS_BOOT),
        (2, 4096, 256 * 2048, LINUX_SWAP),
        (3, 4096 + 256 * 2048, 2048 * 2048, LINUX_DATA),
    ];
    for (n, start, sectors, ty) in expect {
        let p = json_part(&json, n);
        assert_eq!(p["start"].as_u64().unwrap(), start, "partition {n}");
        assert_eq!(p["size"].as_u64().unwrap(), sectors, "partition {n}");
        assert_eq!(
            p["type"].as_str().unwrap().to_lowercase(),
            ty,
            "partition {n}"
        );
        // parted sets no boot flag on GPT for BIOS boot.
        assert!(p.get("attrs").is_none(), "partition {n}");
    }
}

#[test]
fn uefi_gpt_layout_has_the_esp_first_and_root_to_the_end() {
    let disk = sparse(16 * GIB);
    let (mut file, size) = open_rw(&disk);
    let layout = Layout {
        ephemeral_mib: 2048,
        swap_mib: 1024,
        configdrive_mib: 64,
        efi_system_mib: 0,
        ..Layout::new(BootMode::Uefi)
    };
    let result = create_layout(&mut file, size, &layout).unwrap();
    drop(file);
    sfdisk_verify(disk.path());
    sgdisk_verify(disk.path());
    let json = sfdisk_json(disk.path());
    assert_eq!(json["label"], "gpt");
    assert_matches_sfdisk(&result.table, &json);
    assert_eq!(result.efi_system, Some(1));
    assert_eq!(result.ephemeral, Some(2));
    assert_eq!(result.swap, Some(3));
    assert_eq!(result.configdrive, Some(4));
    assert_eq!(result.root, 5);

    let esp = json_part(&json, 1);
    assert_eq!(esp["start"], 2048);
    assert_eq!(esp["size"].as_u64().unwrap(), DEFAULT_EFI_SYSTEM_MIB * 2048);
    assert_eq!(esp["type"].as_str().unwrap().to_lowercase(), EFI_SYSTEM);
    assert_eq!(
        json_part(&json, 3)["type"].as_str().unwrap().to_lowercase(),
        LINUX_SWAP
    );
    let root = json_part(&json, 5);
    let last_lba = json["lastlba"].as_u64().unwrap();
    assert_eq!(
        root["start"].as_u64().unwrap() + root["size"].as_u64().unwrap() - 1,
        last_lba
    );
    assert_eq!(root["start"].as_u64().unwrap() % 2048, 0);
    assert_eq!(
        result.table.partitions[0].name.as_deref(),
        Some("efi-system")
    );
}

#[test]
fn uefi_mbr_layout_marks_the_esp_active() {
    let disk = sparse(4 * GIB);
    let (mut file, size) = open_rw(&disk);
    let layout = Layout {
        label: Some(TableKind::Mbr),
        efi_system_mib: 200,
        ..Layout::new(BootMode::Uefi)
    };
    let result = create_layout(&mut file, size, &layout).unwrap();
    drop(file);
    sfdisk_verify(disk.path());
    let json = sfdisk_json(disk.path());
    assert_matches_sfdisk(&result.table, &json);
    let esp = json_part(&json, 1);
    assert_eq!(esp["type"], "ef");
    assert_eq!(esp["bootable"], true);
    assert!(!json_part(&json, 2)["bootable"].as_bool().unwrap_or(false));
}

#[test]
fn layouts_that_do_not_fit_are_refused() {
    let disk = sparse(4 * GIB);
    let (mut file, size) = open_rw(&disk);
    let five = Layout {
        label: Some(TableKind::Mbr),
        ephemeral_mib: 10,
        swap_mib: 10,
        configdrive_mib: 10,
        ..Layout::new(BootMode::Uefi)
    };
    let err = create_layout(&mut file, size, &five).unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    assert!(err.to_string().contains("4 primary"), "{err}");

    let big = Layout {
        root_mib: 4096,
        ..Layout::new(BootMode::Bios)
    };
    let err = create_layout(&mut file, size, &big).unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err}");
    // Nothing was written.
    assert!(read(&disk).is_none());
}

/// A 64 MiB GPT image made by sgdisk, with an ESP and a root partition.
fn sgdisk_image() -> NamedTempFile {
    let image = sparse(64 * MIB);
    must(
        "sgdisk",
        &[
            "-n",
            "1:2048:+20M",
            "-t",
            "1:ef00",
            "-c",
            "1:EFI system",
            "-n",
            "2:0:0",
            "-t",
            "2:8300",
            "-c",
            "2:root",
            "-A",
            "2:set:2",
            path_str(image.path()),
        ],
        None,
    );
    image
}

fn copy_to_start(image: &NamedTempFile, disk_size: u64) -> NamedTempFile {
    let disk = sparse(disk_size);
    let mut data = Vec::new();
    File::open(image.path())
        .unwrap()
        .read_to_end(&mut data)
        .unwrap();
    let mut f = File::options().write(true).open(disk.path()).unwrap();
    f.write_all(&data).unwrap();
    disk
}

#[test]
fn relocating_the_backup_gpt_of_a_whole_disk_image() {
    let image = sgdisk_image();
    let disk = copy_to_start(&image, GIB);
    let before = read(&disk).unwrap();
    let (ok, _, out) = run("sgdisk", &["-v", path_str(disk.path())], None);
    assert!(
        !ok || !out.contains("No problems found"),
        "sgdisk saw no problem:\n{out}"
    );

    let (mut file, size) = open_rw(&disk);
    relocate_gpt_backup(&mut file, size).unwrap();
    drop(file);
    sgdisk_verify(disk.path());
    sfdisk_verify(disk.path());
    let json = sfdisk_json(disk.path());
    assert_eq!(json["lastlba"].as_u64().unwrap(), GIB / 512 - 34);
    let after = read(&disk).unwrap();
    assert_eq!(after.partitions, before.partitions);
    assert_eq!(after.disk_id, before.disk_id);
    assert_matches_sfdisk(&after, &json);

    // The old backup header no longer lingers in the free space.
    let mut f = File::open(disk.path()).unwrap();
    f.seek(SeekFrom::Start(64 * MIB - 512)).unwrap();
    let mut sig = [0u8; 8];
    f.read_exact(&mut sig).unwrap();
    assert_ne!(&sig, b"EFI PART");

    // Doing it again changes nothing.
    let (mut file, size) = open_rw(&disk);
    relocate_gpt_backup(&mut file, size).unwrap();
    drop(file);
    assert_eq!(read(&disk).unwrap(), after);
    sgdisk_verify(disk.path());
}

#[test]
fn relocating_is_a_no_op_for_mbr() {
    let disk = sparse(256 * MIB);
    must(
        "sfdisk",
        &["-q", path_str(disk.path())],
        Some("label: dos\n,100M\n"),
    );
    let before = std::fs::read(disk.path()).unwrap();
    let (mut file, size) = open_rw(&disk);
    relocate_gpt_backup(&mut file, size).unwrap();
    assert_eq!(std::fs::read(disk.path()).unwrap(), before);
}

#[test]
fn config_drive_on_gpt_lands_where_sgdisk_puts_it() {
    let image = sgdisk_image();
    // Shrink root so there is room after it, as a real image would have.
    must(
        "sgdisk",
        &["-d", "2", "-n", "2:0:+30M", path_str(image.path())],
        None,
    );
    let ours = copy_to_start(&image, GIB);
    let reference = copy_to_start(&image, GIB);

    let (mut file, size) = open_rw(&ours);
    let part = add_partition_at_end(&mut file, size, 64 * MIB, "config-2").unwrap();
    drop(file);
    sgdisk_verify(ours.path());
    sfdisk_verify(ours.path());

    // What IPA runs: sgdisk -e, then sgdisk -n 0:-64MB:0.
    must("sgdisk", &["-e", path_str(reference.path())], None);
    must(
        "sgdisk",
        &["-n", "0:-64M:0", path_str(reference.path())],
        None,
    );
    let theirs = sfdisk_json(reference.path());
    let expected = json_part(&theirs, 3);
    assert_eq!(part.number, 3);
    assert_eq!(part.start, expected["start"].as_u64().unwrap() * 512);
    assert_eq!(part.size, expected["size"].as_u64().unwrap() * 512);
    assert!(part.size >= 64 * MIB);
    assert_eq!(part.start % MIB, 0);
    assert_eq!(part.type_id, LINUX_DATA);
    assert_eq!(part.name.as_deref(), Some("config-2"));

    let json = sfdisk_json(ours.path());
    let table = read(&ours).unwrap();
    assert_matches_sfdisk(&table, &json);
    assert_eq!(table.partitions.len(), 3);
}

#[test]
fn config_drive_on_mbr_is_a_primary_at_the_end() {
    let disk = sparse(GIB);
    must(
        "sfdisk",
        &["-q", path_str(disk.path())],
        Some("label: dos\n,100M,83,*\n,200M,82\n"),
    );
    let (mut file, size) = open_rw(&disk);
    let part = add_partition_at_end(&mut file, size, 64 * MIB, "config-2").unwrap();
    drop(file);
    sfdisk_verify(disk.path());
    let json = sfdisk_json(disk.path());
    let p = json_part(&json, 3);
    assert_eq!(part.number, 3);
    assert_eq!(p["start"].as_u64().unwrap(), (GIB - 64 * MIB) / 512);
    assert_eq!(p["size"].as_u64().unwrap(), 64 * MIB / 512);
    assert_eq!(p["type"], "c");
    assert_eq!(part.start, GIB - 64 * MIB);
    assert_eq!(part.size, 64 * MIB);
    assert_eq!(part.type_id, "0x0c");
    assert_matches_sfdisk(&read(&disk).unwrap(), &json);
    // The boot flag of partition 1 survived.
    assert_eq!(json_part(&json, 1)["bootable"], true);
}

#[test]
fn config_drive_is_refused_with_four_mbr_primaries() {
    let disk = sparse(GIB);
    must(
        "sfdisk",
        &["-q", path_str(disk.path())],
        Some("label: dos\n,100M\n,100M\n,100M\n,100M\n"),
    );
    let before = std::fs::read(disk.path()).unwrap();
    let (mut file, size) = open_rw(&disk);
    let err = add_partition_at_end(&mut file, size, 64 * MIB, "config-2").unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err}");
    assert!(err.to_string().contains("4 primary partitions"), "{err}");
    assert_eq!(std::fs::read(disk.path()).unwrap(), before);
}

#[test]
fn config_drive_is_refused_without_room() {
    let gpt = sparse(256 * MIB);
    must("sgdisk", &["-n", "1:0:0", path_str(gpt.path())], None);
    let (mut file, size) = open_rw(&gpt);
    let err = add_partition_at_end(&mut file, size, 64 * MIB, "config-2").unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err}");
    assert!(err.to_string().contains("no room"), "{err}");

    let mbr = sparse(256 * MIB);
    must(
        "sfdisk",
        &["-q", path_str(mbr.path())],
        Some("label: dos\n,220M\n"),
    );
    let (mut file, size) = open_rw(&mbr);
    let err = add_partition_at_end(&mut file, size, 64 * MIB, "config-2").unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err}");

    let blank = sparse(256 * MIB);
    let (mut file, size) = open_rw(&blank);
    let err = add_partition_at_end(&mut file, size, 64 * MIB, "config-2").unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
}

#[test]
fn reading_gpt_made_by_sgdisk() {
    let image = sgdisk_image();
    let table = read(&image).unwrap();
    assert_matches_sfdisk(&table, &sfdisk_json(image.path()));
    assert!(!table.used_backup_gpt);
    assert_eq!(table.partitions[0].name.as_deref(), Some("EFI system"));
    assert!(table.partitions[1].bootable);
}

#[test]
fn reading_mbr_with_logical_partitions_made_by_sfdisk() {
    let disk = sparse(GIB);
    must(
        "sfdisk",
        &["-q", path_str(disk.path())],
        Some("label: dos\n,100M,83,*\n,50M,82\n,10M,7\n,500M,5\n,100M,83\n,,b\n"),
    );
    sfdisk_verify(disk.path());
    let table = read(&disk).unwrap();
    let json = sfdisk_json(disk.path());
    assert_matches_sfdisk(&table, &json);
    let numbers: Vec<u32> = table.partitions.iter().map(|p| p.number).collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5, 6]);
    let extended = &table.partitions[3];
    assert_eq!(extended.type_id, "0x05");
    for logical in &table.partitions[4..] {
        assert!(logical.start > extended.start);
        assert!(logical.start + logical.size <= extended.start + extended.size);
    }
}

/// sfdisk and sgdisk here cannot make a 4096-byte-sector GPT on a file, so
/// gptman (an implementation independent of our reader) makes it.
#[test]
fn reading_gpt_with_4096_byte_sectors() {
    let disk = sparse(256 * MIB);
    let (mut file, _) = open_rw(&disk);
    let guid = [0x11; 16];
    let mut gpt = gptman::GPT::new_from(&mut file, 4096, guid).unwrap();
    let esp = [
        0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9,
        0x3b,
    ];
    gpt[1] = gptman::GPTPartitionEntry {
        partition_type_guid: esp,
        unique_partition_guid: [0x22; 16],
        starting_lba: 256,
        ending_lba: 256 + 2559,
        attribute_bits: 0,
        partition_name: "esp".into(),
    };
    gpt[2] = gptman::GPTPartitionEntry {
        partition_type_guid: [0x33; 16],
        unique_partition_guid: [0x44; 16],
        starting_lba: 4096,
        ending_lba: gpt.header.last_usable_lba,
        attribute_bits: 1 << 2,
        partition_name: "root".into(),
    };
    gpt.write_into(&mut file).unwrap();
    gptman::GPT::write_protective_mbr_into(&mut file, 4096).unwrap();
    drop(file);

    let table = read(&disk).unwrap();
    assert_eq!(table.sector_size, 4096);
    assert_eq!(table.kind, TableKind::Gpt);
    assert_eq!(table.disk_id, "11111111-1111-1111-1111-111111111111");
    let p = &table.partitions;
    assert_eq!(p.len(), 2);
    assert_eq!((p[0].start, p[0].size), (MIB, 10 * MIB));
    assert_eq!(p[0].type_id, EFI_SYSTEM);
    assert_eq!(p[0].name.as_deref(), Some("esp"));
    assert_eq!(p[1].start, 16 * MIB);
    assert_eq!(p[1].start + p[1].size, 256 * MIB - 5 * 4096);
    assert!(p[1].bootable);

    // Its backup is found too.
    let (mut file, size) = open_rw(&disk);
    file.seek(SeekFrom::Start(4096)).unwrap();
    file.write_all(&[0u8; 4096]).unwrap();
    let backup = read_table(&mut file, size).unwrap().unwrap();
    assert!(backup.used_backup_gpt);
    assert_eq!(backup.partitions, table.partitions);
}

#[test]
fn a_destroyed_primary_gpt_falls_back_to_the_backup() {
    let image = sgdisk_image();
    let good = read(&image).unwrap();
    let (mut file, size) = open_rw(&image);
    file.seek(SeekFrom::Start(512)).unwrap();
    file.write_all(&vec![0u8; 33 * 512]).unwrap();
    let table = read_table(&mut file, size).unwrap().unwrap();
    assert!(table.used_backup_gpt);
    assert_eq!(table.partitions, good.partitions);
    assert_eq!(table.disk_id, good.disk_id);

    // Rewriting repairs the primary.
    relocate_gpt_backup(&mut file, size).unwrap();
    drop(file);
    sgdisk_verify(image.path());
    let repaired = read(&image).unwrap();
    assert!(!repaired.used_backup_gpt);
    assert_eq!(repaired.partitions, good.partitions);
}

#[test]
fn a_corrupt_primary_gpt_checksum_falls_back_and_both_bad_is_corrupt() {
    let image = sgdisk_image();
    let (mut file, size) = open_rw(&image);
    // Flip a byte of the primary header's disk GUID: its CRC no longer matches.
    file.seek(SeekFrom::Start(512 + 60)).unwrap();
    file.write_all(&[0x5a]).unwrap();
    let table = read_table(&mut file, size).unwrap().unwrap();
    assert!(table.used_backup_gpt);

    file.seek(SeekFrom::Start(size - 512 + 60)).unwrap();
    file.write_all(&[0x5a]).unwrap();
    let err = read_table(&mut file, size).unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("primary") && text.contains("backup"),
        "{text}"
    );
}

#[test]
fn a_blank_disk_has_no_table() {
    let disk = sparse(64 * MIB);
    assert!(read(&disk).is_none());
    let mut tiny = std::io::Cursor::new(vec![0u8; 100]);
    assert!(read_table(&mut tiny, 100).unwrap().is_none());
}

/// Like IPA on disks past 2 TiB: the MBR config drive ends at 2 TiB, the
/// most MBR can address, rather than at the end of the disk.
#[test]
fn config_drive_on_a_large_mbr_disk_ends_at_2_tib() {
    const TIB: u64 = 1 << 40;
    let disk = sparse(3 * TIB);
    must(
        "sfdisk",
        &["-q", path_str(disk.path())],
        Some("label: dos\n,100M,83,*\n"),
    );
    let (mut file, size) = open_rw(&disk);
    let part = add_partition_at_end(&mut file, size, 64 * MIB, "config-2").unwrap();
    drop(file);
    assert_eq!(part.start + part.size, 2 * TIB);
    assert_eq!(part.size, 64 * MIB);
    let json = sfdisk_json(disk.path());
    assert_matches_sfdisk(&read(&disk).unwrap(), &json);

    // With the space below 2 TiB taken, it is refused and says why.
    let full = sparse(3 * TIB);
    must(
        "sfdisk",
        &["-q", path_str(full.path())],
        Some("label: dos\n,2097100M\n"),
    );
    let (mut file, size) = open_rw(&full);
    let err = add_partition_at_end(&mut file, size, 64 * MIB, "config-2").unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err}");
    assert!(err.to_string().contains("2 TiB"), "{err}");
}
