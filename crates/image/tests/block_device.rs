//! The disk writer on real block devices (loop devices): O_DIRECT writes, the
//! device's size as the bound, refusal of a mounted device, the config drive
//! partition read back by blkid. Needs root and loop devices, as CI has.

use std::fs::{self, File};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferric_image::checksum::{Algorithm, Checksum, Hasher};
use ferric_image::configdrive::ConfigDrive;
use ferric_image::pipeline::{self, StreamOptions};
use ferric_image::writer::{DiskWriter, WriterOptions};
use ferric_image::Error;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("the tool runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loop device over a sparse file, detached on drop.
struct Loop {
    device: PathBuf,
}

impl Loop {
    fn new(backing: &Path, size: u64) -> Loop {
        File::create(backing).unwrap().set_len(size).unwrap();
        // Test binaries run in parallel: two may pick the same free device,
        // and the loser gets EBUSY. Try again.
        let mut attempt = 0;
        let device = loop {
            let out = Command::new("losetup")
                .args(["--find", "--show", "--partscan"])
                .arg(backing)
                .output()
                .unwrap();
            attempt += 1;
            if out.status.success() {
                break String::from_utf8(out.stdout).unwrap();
            }
            assert!(
                attempt < 10,
                "losetup: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(std::time::Duration::from_millis(100 * attempt));
        };
        Loop {
            device: PathBuf::from(device.trim()),
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        // Unmount in case a test stopped half way; usually nothing is mounted.
        let _ = Command::new("umount")
            .arg(&self.device)
            .stderr(std::process::Stdio::null())
            .status();
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

fn gpt_image(dir: &Path) -> Vec<u8> {
    let path = dir.join("image.raw");
    File::create(&path).unwrap().set_len(32 << 20).unwrap();
    run(Command::new("sgdisk")
        .args(["-n", "1:2048:0", "-t", "1:8300"])
        .arg(&path));
    let mut image = fs::read(&path).unwrap();
    for (i, b) in image[(1 << 20)..(9 << 20)].iter_mut().enumerate() {
        *b = (i % 241) as u8 | 1;
    }
    image
}

fn sha256(data: &[u8]) -> Checksum {
    let mut h = Hasher::new(Algorithm::Sha256);
    h.update(data);
    Checksum::parse(&h.finish().hex, None, false).unwrap()
}

#[test]
fn image_and_config_drive_on_a_loop_device() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Loop::new(&dir.path().join("disk"), 256 << 20);
    let image = gpt_image(dir.path());
    let writer = DiskWriter::open(&disk.device, WriterOptions::default()).unwrap();
    assert!(writer.is_block_device());
    assert_eq!(writer.capacity(), 256 << 20);
    let report = pipeline::write_stream(
        Cursor::new(image.clone()),
        writer,
        &StreamOptions {
            checksum: Some(sha256(&image)),
            ..StreamOptions::default()
        },
    )
    .unwrap();
    assert!(
        report.write.direct_io,
        "O_DIRECT was not used on a block device"
    );
    let written = fs::read(&disk.device).unwrap();
    assert_eq!(&written[..image.len()], &image[..]);

    // The config drive goes into a new partition at the end of the disk.
    let drive = ConfigDrive::from_ironic_dict(&serde_json::json!({
        "meta_data": {"uuid": "c5d1b0e4-7a4c-4d2b-9a51-3c0e0c3e9a11"},
        "user_data": "#cloud-config\n",
    }))
    .unwrap();
    let mut iso = Cursor::new(Vec::new());
    drive.write_iso(&mut iso).unwrap();
    let mut dev = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk.device)
        .unwrap();
    let partition =
        pipeline::write_config_drive_partition(&mut dev, 256 << 20, iso.get_ref()).unwrap();
    drop(dev);
    assert_eq!(partition.number, 2);
    DiskWriter::reread_partition_table(&disk.device).unwrap();
    // The kernel sees the new partition where it was put (containers may
    // have no device node for it, so check sysfs and read the whole disk).
    let name = disk
        .device
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    // Some sandboxes hide partitions from sysfs even after BLKRRPART.
    if let Ok(start) = fs::read_to_string(format!("/sys/class/block/{name}/{name}p2/start")) {
        assert_eq!(start.trim().parse::<u64>().unwrap() * 512, partition.start);
    }
    let table = run(Command::new("sfdisk").arg("-J").arg(&disk.device));
    assert!(table.contains("\"name\": \"config-2\""), "{table}");
    assert!(
        table.contains(&format!("\"start\": {}", partition.start / 512)),
        "{table}"
    );
    let label = run(Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "LABEL", "-O"])
        .arg(partition.start.to_string())
        .arg(&disk.device));
    assert_eq!(label.trim(), "config-2");
    run(Command::new("sgdisk").arg("-v").arg(&disk.device));
}

#[test]
fn mounted_device_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Loop::new(&dir.path().join("disk"), 64 << 20);
    run(Command::new("mkfs.ext4").arg("-q").arg(&disk.device));
    let mount_point = dir.path().join("mnt");
    fs::create_dir(&mount_point).unwrap();
    run(Command::new("mount").arg(&disk.device).arg(&mount_point));
    let err = match DiskWriter::open(&disk.device, WriterOptions::default()) {
        Ok(_) => panic!("a mounted device was opened for writing"),
        Err(e) => e,
    };
    run(Command::new("umount").arg(&mount_point));
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
    assert!(err.to_string().contains("mounted on"), "{err}");
}

#[test]
fn image_larger_than_the_device_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Loop::new(&dir.path().join("disk"), 16 << 20);
    let image = gpt_image(dir.path());
    let writer = DiskWriter::open(&disk.device, WriterOptions::default()).unwrap();
    let err =
        pipeline::write_stream(Cursor::new(image), writer, &StreamOptions::default()).unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err}");
    // Nothing bootable is left behind.
    let after = fs::read(&disk.device).unwrap();
    assert!(after[..1 << 20].iter().all(|&b| b == 0));
}

/// A disk that held other data: with holes zeroed (the default) or
/// discarded, the image's holes read back as zeros afterwards; skipped, the
/// old data stays where the image has holes (right only on a clean disk).
#[test]
fn holes_are_zeroed_discarded_or_skipped_on_a_used_disk() {
    use ferric_image::writer::HoleMode;
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let image = gpt_image(dir.path());
    // From 9 MiB to the backup GPT at its end, the image is a hole.
    assert!(image[(9 << 20)..(31 << 20)].iter().all(|&b| b == 0));
    for mode in [HoleMode::Zero, HoleMode::Discard, HoleMode::Skip] {
        let backing = dir.path().join(format!("used-{mode:?}"));
        let disk = Loop::new(&backing, 64 << 20);
        // The old contents: 0xEE everywhere.
        let old = File::options().write(true).open(&disk.device).unwrap();
        old.write_all_at(&vec![0xEE; 64 << 20], 0).unwrap();
        old.sync_all().unwrap();
        drop(old);
        let writer = DiskWriter::open(
            &disk.device,
            WriterOptions {
                holes: mode,
                ..WriterOptions::default()
            },
        )
        .unwrap();
        let report = pipeline::write_stream(
            Cursor::new(image.clone()),
            writer,
            &StreamOptions {
                checksum: Some(sha256(&image)),
                ..StreamOptions::default()
            },
        )
        .unwrap();
        assert!(report.write.hole_bytes >= 20 << 20, "{:?}", report.write);
        let mut after = vec![0u8; image.len()];
        File::open(&disk.device)
            .unwrap()
            .read_exact_at(&mut after, 0)
            .unwrap();
        match mode {
            HoleMode::Zero | HoleMode::Discard => {
                assert!(after == image, "{mode:?}: the holes are not zeros")
            }
            HoleMode::Skip => {
                assert_eq!(after[..9 << 20], image[..9 << 20], "{mode:?}: the data");
                assert!(
                    after[(10 << 20)..(31 << 20)].iter().all(|&b| b == 0xEE),
                    "{mode:?}: the old data under the holes was touched"
                );
            }
        }
    }
}
