//! The deploy path end to end on files: stream, hash, decompress, inspect,
//! convert, write, verify, commit; and what a failure leaves on the target.

use std::fs::{self, File};
use std::io::Cursor;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferric_image::checksum::{Algorithm, Checksum, Hasher};
use ferric_image::format::{Format, Policy};
use ferric_image::pipeline::{self, StreamOptions};
use ferric_image::sink::FileSink;
use ferric_image::writer::{DiskWriter, WriterOptions};
use ferric_image::Error;

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().expect("the tool runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A 64 MiB GPT disk image with two partitions and data in them.
fn gpt_disk(dir: &Path) -> PathBuf {
    let path = dir.join("disk.img");
    let file = File::create(&path).unwrap();
    file.set_len(64 << 20).unwrap();
    run(Command::new("sgdisk")
        .args(["-n", "1:2048:+16M", "-t", "1:ef00", "-n", "2:0:0"])
        .arg(&path));
    let pattern: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 253) as u8 | 1).collect();
    file.write_all_at(&pattern, 2 << 20).unwrap();
    file.write_all_at(&pattern, 40 << 20).unwrap();
    path
}

fn sha256(data: &[u8]) -> Checksum {
    let mut h = Hasher::new(Algorithm::Sha256);
    h.update(data);
    Checksum::parse(&h.finish().hex, None, false).unwrap()
}

fn has_partition_table(path: &Path) -> bool {
    // sfdisk -d prints the table and fails when there is none.
    Command::new("sfdisk")
        .arg("-d")
        .arg(path)
        .output()
        .unwrap()
        .status
        .success()
}

fn target(dir: &Path, max_size: Option<u64>) -> (PathBuf, DiskWriter) {
    let path = dir.join("target");
    let writer = DiskWriter::open(
        &path,
        WriterOptions {
            max_size,
            ..WriterOptions::default()
        },
    )
    .unwrap();
    (path, writer)
}

fn options(checksum: Option<Checksum>, dir: &Path) -> StreamOptions {
    StreamOptions {
        checksum,
        spool_dir: Some(dir.to_path_buf()),
        ..StreamOptions::default()
    }
}

#[test]
fn raw_gpt_disk_is_written_sparse_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let image = fs::read(gpt_disk(dir.path())).unwrap();
    let (path, writer) = target(dir.path(), None);
    let report = pipeline::write_stream(
        Cursor::new(image.clone()),
        writer,
        &options(Some(sha256(&image)), dir.path()),
    )
    .unwrap();
    assert_eq!(report.format, Format::Gpt);
    assert_eq!(report.source_bytes, image.len() as u64);
    assert_eq!(fs::read(&path).unwrap(), image);
    assert!(report.write.hole_bytes > 50 << 20, "{:?}", report.write);
    assert!(has_partition_table(&path));
}

#[test]
fn checksum_mismatch_leaves_no_partition_table() {
    let dir = tempfile::tempdir().unwrap();
    let image = fs::read(gpt_disk(dir.path())).unwrap();
    // The target held a bootable disk before.
    let path = dir.path().join("target");
    fs::write(&path, &image).unwrap();
    assert!(has_partition_table(&path));
    let writer = DiskWriter::open(&path, WriterOptions::default()).unwrap();
    let wrong = Checksum::parse(&"ab".repeat(32), None, false).unwrap();
    let err = pipeline::write_stream(
        Cursor::new(image),
        writer,
        &options(Some(wrong), dir.path()),
    )
    .unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("sha256 checksum mismatch"),
        "{err}"
    );
    assert!(!has_partition_table(&path), "a partition table survived");
    let after = fs::read(&path).unwrap();
    assert!(after[..1 << 20].iter().all(|&b| b == 0));
    assert!(after[after.len() - (1 << 20)..].iter().all(|&b| b == 0));
    // blkid finds nothing either.
    let probe = Command::new("blkid").arg("-p").arg(&path).output().unwrap();
    assert!(
        !probe.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.stdout)
    );
}

#[test]
fn compressed_streams_are_decompressed_in_the_pass() {
    let dir = tempfile::tempdir().unwrap();
    let image = fs::read(gpt_disk(dir.path())).unwrap();
    for (tool, args) in [
        ("gzip", vec!["-c", "-1"]),
        ("zstd", vec!["-c", "-q", "-1"]),
        ("xz", vec!["-c", "-0", "-T1"]),
        ("bzip2", vec!["-c", "-1"]),
    ] {
        let compressed = run(Command::new("sh").arg("-c").arg(format!(
            "{tool} {} < {}",
            args.join(" "),
            dir.path().join("disk.img").display()
        )));
        let _ = fs::remove_file(dir.path().join("target"));
        let (path, writer) = target(dir.path(), None);
        let report = pipeline::write_stream(
            Cursor::new(compressed.clone()),
            writer,
            // The checksum covers the bytes as served: the compressed file.
            &options(Some(sha256(&compressed)), dir.path()),
        )
        .unwrap();
        assert_eq!(report.compression.name(), tool);
        assert_eq!(fs::read(&path).unwrap(), image, "{tool}");
        fs::remove_file(&path).unwrap();
    }
}

#[test]
fn qcow2_stream_is_spooled_verified_and_converted() {
    let dir = tempfile::tempdir().unwrap();
    let raw = gpt_disk(dir.path());
    let qcow2 = dir.path().join("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-c", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2));
    let bytes = fs::read(&qcow2).unwrap();
    let (path, writer) = target(dir.path(), None);
    let report = pipeline::write_stream(
        Cursor::new(bytes.clone()),
        writer,
        &options(Some(sha256(&bytes)), dir.path()),
    )
    .unwrap();
    assert_eq!(report.format, Format::Qcow2);
    assert_eq!(fs::read(&path).unwrap(), fs::read(&raw).unwrap());

    // The same with a wrong checksum: nothing is converted, the disk is clean.
    fs::write(&path, fs::read(&raw).unwrap()).unwrap();
    let writer = DiskWriter::open(&path, WriterOptions::default()).unwrap();
    let wrong = Checksum::parse(&"cd".repeat(32), None, false).unwrap();
    let err = pipeline::write_stream(
        Cursor::new(bytes),
        writer,
        &options(Some(wrong), dir.path()),
    )
    .unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
    assert!(!has_partition_table(&path));
}

#[test]
fn raw_declared_qcow2_is_refused_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let qcow2 = dir.path().join("x.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&qcow2)
        .arg("64M"));
    let path = dir.path().join("target");
    fs::write(&path, vec![0x5a; 2 << 20]).unwrap();
    let writer = DiskWriter::open(&path, WriterOptions::default()).unwrap();
    let mut opts = options(None, dir.path());
    opts.policy = Policy {
        declared: Some(Format::Raw),
        ..Policy::default()
    };
    let err = pipeline::write_stream(File::open(&qcow2).unwrap(), writer, &opts).unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err}");
    assert!(
        fs::read(&path).unwrap().iter().all(|&b| b == 0x5a),
        "the target changed"
    );
}

#[test]
fn virtual_size_larger_than_the_target_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let qcow2 = dir.path().join("big.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&qcow2)
        .arg("1G"));
    let (path, writer) = target(dir.path(), Some(100 << 20));
    let err = pipeline::write_stream(
        File::open(&qcow2).unwrap(),
        writer,
        &options(None, dir.path()),
    )
    .unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err}");
    assert!(err.to_string().contains("virtual size"), "{err}");
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
}

/// A raw image with data and zeros at odd offsets and an odd length, over
/// several of the reading thread's chunks: written from the chunks with
/// O_DIRECT where aligned and staged where not, it reads back the same.
#[test]
fn raw_stream_with_odd_runs_is_written_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let len = (9 << 20) + 12_345;
    let mut image = vec![0u8; len];
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for (start, end) in [
        (0, 3000),
        (1 << 20, (1 << 20) + 70_000),
        ((2 << 20) - 5, (4 << 20) + 7),
        ((6 << 20) + 4096, (8 << 20) + 1),
        (len - 100, len),
    ] {
        for byte in &mut image[start..end] {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8 | 1;
        }
    }
    let (path, writer) = target(dir.path(), None);
    let report = pipeline::write_stream(
        Cursor::new(image.clone()),
        writer,
        &options(Some(sha256(&image)), dir.path()),
    )
    .unwrap();
    assert_eq!(report.format, Format::Raw);
    assert_eq!(report.write.image_size, len as u64);
    assert!(report.write.hole_bytes > 2 << 20, "{:?}", report.write);
    assert_eq!(fs::read(&path).unwrap(), image);
}

/// A fixed VHD is a raw disk with a footer at its end: streamed, it looks
/// raw until the end, where it is seen and refused before commit, so the
/// target has no partition table; the same file inspected whole is a VHD.
#[test]
fn fixed_vhd_stream_is_refused_at_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let raw = gpt_disk(dir.path());
    let vhd = dir.path().join("disk.vhd");
    run(Command::new("qemu-img")
        .args([
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "vpc",
            "-o",
            "subformat=fixed",
        ])
        .arg(&raw)
        .arg(&vhd));
    let image = fs::read(&vhd).unwrap();
    assert_eq!(&image[image.len() - 512..][..8], b"conectix");
    let (path, writer) = target(dir.path(), None);
    let err = pipeline::write_stream(
        Cursor::new(image.clone()),
        writer,
        &options(Some(sha256(&image)), dir.path()),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err}");
    assert!(err.to_string().contains("vhd"), "{err}");
    assert!(!has_partition_table(&path), "a partition table survived");
    let whole = ferric_image::format::inspect(&mut File::open(&vhd).unwrap()).unwrap();
    assert_eq!(whole.format, Format::Vhd);
    // The same disk without the footer is written.
    let plain = fs::read(&raw).unwrap();
    let (path, writer) = target(dir.path(), None);
    pipeline::write_stream(
        Cursor::new(plain.clone()),
        writer,
        &options(Some(sha256(&plain)), dir.path()),
    )
    .unwrap();
    assert_eq!(fs::read(&path).unwrap(), plain);
}

/// A raw stream longer than the target stops at the target's size, and the
/// target keeps no partition table.
#[test]
fn raw_stream_larger_than_the_target_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let image = fs::read(gpt_disk(dir.path())).unwrap();
    let limit = (image.len() / 2) as u64;
    let (path, writer) = target(dir.path(), Some(limit));
    let err =
        pipeline::write_stream(Cursor::new(image), writer, &options(None, dir.path())).unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("more than {limit} bytes, the size of the target")),
        "{err}"
    );
    assert!(!has_partition_table(&path), "a partition table survived");
}

#[test]
fn decompression_bomb_stops_at_the_target_size() {
    let dir = tempfile::tempdir().unwrap();
    // 2 GiB of zeros as zstd: a few KiB.
    let bomb = run(Command::new("sh")
        .arg("-c")
        .arg("head -c 2147483648 /dev/zero | zstd -q -3 -c"));
    assert!(bomb.len() < 1 << 20);
    let (_, writer) = target(dir.path(), Some(64 << 20));
    let started = std::time::Instant::now();
    let err =
        pipeline::write_stream(Cursor::new(bomb), writer, &options(None, dir.path())).unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err}");
    assert!(started.elapsed().as_secs() < 20);
}

#[test]
fn convert_file_maps_and_matches_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let raw = gpt_disk(dir.path());
    let qcow2 = dir.path().join("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2));
    let out = dir.path().join("out.raw");
    let (converted, _) = pipeline::convert_file(
        &mut File::open(&qcow2).unwrap(),
        FileSink::new(File::create(&out).unwrap()),
        &Policy::default(),
        1 << 30,
    )
    .unwrap();
    assert_eq!(converted.inspection.format, Format::Qcow2);
    assert_eq!(converted.virtual_size, 64 << 20);
    assert_eq!(fs::read(&out).unwrap(), fs::read(&raw).unwrap());
    // The map covers the data: GPT headers and the two 3 MiB patterns.
    let map = &converted.block_map;
    assert!(
        map.mapped_bytes >= 6 << 20 && map.mapped_bytes < 8 << 20,
        "{}",
        map.mapped_bytes
    );
    // Copying through the map gives the image back.
    let again = dir.path().join("again.raw");
    let mut sink = FileSink::new(File::create(&again).unwrap());
    ferric_image::bmap::copy_mapped(&mut File::open(&out).unwrap(), map, &mut sink).unwrap();
    assert_eq!(fs::read(&again).unwrap(), fs::read(&raw).unwrap());
}

/// A compressed raw image converts as its decompressed form, in one pass; a
/// compressed qcow2 is refused with what to do.
#[test]
fn convert_file_decompresses_raw_images() {
    let dir = tempfile::tempdir().unwrap();
    let raw = gpt_disk(dir.path());
    let xz = dir.path().join("disk.raw.xz");
    fs::write(&xz, run(Command::new("xz").args(["-c", "-1"]).arg(&raw))).unwrap();
    let out = dir.path().join("out.raw");
    let (converted, _) = pipeline::convert_file(
        &mut File::open(&xz).unwrap(),
        FileSink::new(File::create(&out).unwrap()),
        &Policy::default(),
        1 << 30,
    )
    .unwrap();
    assert_eq!(converted.inspection.format, Format::Gpt);
    assert_eq!(converted.virtual_size, 64 << 20);
    assert_eq!(fs::read(&out).unwrap(), fs::read(&raw).unwrap());
    assert!(converted.block_map.mapped_bytes < 8 << 20);

    let qcow2 = dir.path().join("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2));
    let gz = dir.path().join("disk.qcow2.gz");
    fs::write(&gz, run(Command::new("gzip").arg("-c").arg(&qcow2))).unwrap();
    let err = pipeline::convert_file(
        &mut File::open(&gz).unwrap(),
        ferric_image::sink::NullSink,
        &Policy::default(),
        1 << 30,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("gzip-compressed qcow2"), "{err}");
}

#[test]
fn compressed_tarballs_are_detected_and_extracted() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(tree.join("etc/hostname"), "node-1\n").unwrap();
    for (flag, name) in [
        ("-z", "gzip"),
        ("-j", "bzip2"),
        ("-J", "xz"),
        ("--zstd", "zstd"),
        ("", "none"),
    ] {
        let archive = dir.path().join(format!("root-{name}.tar"));
        let mut cmd = Command::new("tar");
        cmd.arg("-C").arg(&tree).arg("-c");
        if !flag.is_empty() {
            cmd.arg(flag);
        }
        run(cmd.arg("-f").arg(&archive).arg("."));
        let target = dir.path().join(format!("out-{name}"));
        fs::create_dir(&target).unwrap();
        let (compression, report) =
            pipeline::extract_tarball(File::open(&archive).unwrap(), &target, &Default::default())
                .unwrap();
        assert_eq!(compression.name(), name);
        assert_eq!(report.files, 1);
        assert_eq!(
            fs::read_to_string(target.join("etc/hostname")).unwrap(),
            "node-1\n"
        );
    }
}
