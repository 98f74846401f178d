//! qcow2 to raw against the real qemu-img and qemu-io (Debian: qemu-utils).
//!
//! Images are made by qemu-img from raw files with random, compressible,
//! zero-filled and sparse ranges, with many option sets; our conversion must
//! give the bytes `qemu-img convert -O raw` gives, keep holes as holes, and
//! report what the image holds. Broken and refused images are made by
//! qemu-img and then patched.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferric_image::error::{Error, Result};
use ferric_image::qcow2::{CompressionType, ConvertReport, Qcow2};
use ferric_image::sink::{FileSink, VecSink};
use ferric_image::BlockSink;
use tempfile::TempDir;

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program} (Debian package qemu-utils): {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn qemu_io(image: &Path, commands: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for command in commands {
        args.extend(["-c", command]);
    }
    let image = image.to_str().expect("utf-8 path");
    args.push(image);
    let out = run("qemu-io", &args);
    assert!(
        !out.contains("error") && !out.contains("failed"),
        "qemu-io said: {out}"
    );
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[derive(Clone, Copy)]
enum Fill {
    /// Incompressible bytes.
    Random,
    /// Bytes that deflate and zstd compress well.
    Text,
    /// Zeros written out (qemu-img convert makes them unallocated).
    Zeros,
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A sparse raw file of `size` bytes; ranges not listed are holes.
fn make_raw(path: &Path, size: u64, ranges: &[(u64, u64, Fill)]) {
    let mut file = File::create(path).expect("create raw");
    file.set_len(size).expect("size raw");
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d ^ size);
    for &(start, len, fill) in ranges {
        let data: Vec<u8> = (0..len)
            .map(|i| match fill {
                Fill::Random => rng.next() as u8,
                Fill::Text => {
                    b"qcow2 clusters, "[(i % 16) as usize] ^ rng.next().is_multiple_of(4) as u8
                }
                Fill::Zeros => 0,
            })
            .collect();
        file.seek(SeekFrom::Start(start)).expect("seek raw");
        file.write_all(&data).expect("write raw");
    }
}

/// The default raw image: every kind of range, a size that is not a
/// multiple of any cluster size.
fn make_mixed_raw(path: &Path) -> u64 {
    let size = 9 * MIB + 12345;
    make_raw(
        path,
        size,
        &[
            (0, 300 * KIB + 17, Fill::Random),
            (300 * KIB + 17, 200 * KIB, Fill::Zeros),
            (MIB + 3, 70_000, Fill::Text),
            (2 * MIB, 512 * KIB, Fill::Text),
            // [2.5 MiB, 6 MiB) stays empty: a hole even with 2 MiB clusters.
            (6 * MIB + 1000, MIB + 5, Fill::Random),
            (size - 5000, 5000, Fill::Text),
        ],
    );
    size
}

/// Checks the sink contract and counts the calls, passing them on.
struct CountingSink<S> {
    inner: S,
    end: u64,
    writes: u64,
    largest_write: usize,
}

impl<S: BlockSink> BlockSink for CountingSink<S> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        assert!(offset >= self.end, "write_at out of order");
        self.end = offset + data.len() as u64;
        self.writes += 1;
        self.largest_write = self.largest_write.max(data.len());
        self.inner.write_at(offset, data)
    }

    fn hole(&mut self, offset: u64, len: u64) -> Result<()> {
        assert!(offset >= self.end, "hole out of order");
        self.end = offset + len;
        self.inner.hole(offset, len)
    }

    fn finish(&mut self, size: u64) -> Result<()> {
        assert!(self.end <= size, "calls past the virtual size");
        self.inner.finish(size)
    }
}

struct Converted {
    report: ConvertReport,
    output: PathBuf,
    writes: u64,
    largest_write: usize,
}

/// Converts with our code and with qemu-img; asserts the bytes and the
/// report agree with what qemu-img says about the image.
fn convert_and_compare(image: &Path) -> Converted {
    let dir = image.parent().expect("image dir");
    let name = image.file_name().expect("name").to_string_lossy();
    let expected = dir.join(format!("{name}.qemu.raw"));
    let output = dir.join(format!("{name}.ours.raw"));
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            path_str(image),
            path_str(&expected),
        ],
    );

    let mut qcow2 = Qcow2::open(File::open(image).expect("open image")).expect("open qcow2");
    let cluster_size = qcow2.cluster_size();
    let mut sink = CountingSink {
        inner: FileSink::new(File::create(&output).expect("create output")),
        end: 0,
        writes: 0,
        largest_write: 0,
    };
    let report = qcow2
        .convert(&mut sink, u64::MAX)
        .unwrap_or_else(|e| panic!("{name}: {e}"));

    let ours = fs::read(&output).expect("read ours");
    let theirs = fs::read(&expected).expect("read qemu's");
    assert_eq!(ours.len(), theirs.len(), "{name}: output length");
    if let Some(at) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
        panic!("{name}: output differs from qemu-img's at byte {at:#x}");
    }
    assert_eq!(report.virtual_size, ours.len() as u64);
    assert_eq!(
        report.data_bytes + report.hole_bytes,
        report.virtual_size,
        "{name}"
    );

    let (data_bytes, compressed_clusters) = qemu_map(image, cluster_size);
    assert_eq!(
        report.data_bytes, data_bytes,
        "{name}: data bytes against qemu-img map"
    );
    assert_eq!(
        report.compressed_clusters, compressed_clusters,
        "{name}: compressed clusters"
    );
    Converted {
        report,
        output,
        writes: sink.writes,
        largest_write: sink.largest_write,
    }
}

/// (bytes with data, compressed clusters) according to `qemu-img map`.
fn qemu_map(image: &Path, cluster_size: u64) -> (u64, u64) {
    let map = run(
        "qemu-img",
        &["map", "-f", "qcow2", "--output=json", path_str(image)],
    );
    let map: serde_json::Value = serde_json::from_str(&map).expect("qemu-img map json");
    let mut data = 0;
    let mut compressed = 0;
    for range in map.as_array().expect("map array") {
        let length = range["length"].as_u64().expect("length");
        // "data" is the qcow2 metadata's word; "zero" may also come from
        // holes in the image file under preallocated clusters.
        if range["data"] == true {
            data += length;
        }
        if range["compressed"] == true {
            compressed += length.div_ceil(cluster_size);
        }
    }
    (data, compressed)
}

fn allocated_bytes(path: &Path) -> u64 {
    fs::metadata(path).expect("metadata").blocks() * 512
}

#[test]
fn option_sets_convert_like_qemu_img() {
    let dir = TempDir::new().expect("tempdir");
    let raw = dir.path().join("mixed.raw");
    // qemu-img rounds the virtual size up to whole 512-byte sectors.
    let size = make_mixed_raw(&raw).next_multiple_of(512);
    let option_sets: &[(&str, bool)] = &[
        ("compat=0.10,cluster_size=65536", false),
        ("compat=0.10,cluster_size=512", false),
        ("compat=1.1,cluster_size=512", false),
        ("compat=1.1,cluster_size=4096", false),
        ("compat=1.1,cluster_size=65536", false),
        ("compat=1.1,cluster_size=2097152", false),
        (
            "compat=1.1,cluster_size=65536,refcount_bits=64,lazy_refcounts=on",
            false,
        ),
        ("compat=0.10,cluster_size=65536", true),
        ("compat=1.1,cluster_size=512", true),
        ("compat=1.1,cluster_size=4096", true),
        ("compat=1.1,cluster_size=65536", true),
        ("compat=1.1,cluster_size=2097152", true),
        ("compat=1.1,cluster_size=4096,compression_type=zstd", true),
        ("compat=1.1,cluster_size=65536,compression_type=zstd", true),
        (
            "compat=1.1,cluster_size=2097152,compression_type=zstd",
            true,
        ),
        ("compat=1.1,cluster_size=65536,extended_l2=on", false),
        ("compat=1.1,cluster_size=2097152,extended_l2=on", false),
        ("compat=1.1,cluster_size=65536,extended_l2=on", true),
        (
            "compat=1.1,cluster_size=131072,extended_l2=on,compression_type=zstd",
            true,
        ),
    ];
    for (index, &(options, compress)) in option_sets.iter().enumerate() {
        let image = dir.path().join(format!("set{index}.qcow2"));
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2", "-o", options];
        if compress {
            args.push("-c");
        }
        args.extend([path_str(&raw), path_str(&image)]);
        run("qemu-img", &args);

        let qcow2 = Qcow2::open(File::open(&image).expect("open")).expect("open qcow2");
        assert_eq!(qcow2.virtual_size(), size, "{options}");
        assert_eq!(
            qcow2.version(),
            if options.contains("0.10") { 2 } else { 3 }
        );
        assert_eq!(qcow2.has_extended_l2(), options.contains("extended_l2=on"));
        let zstd = options.contains("zstd");
        let expected_type = if zstd {
            CompressionType::Zstd
        } else {
            CompressionType::Deflate
        };
        assert_eq!(qcow2.compression_type(), expected_type);

        let converted = convert_and_compare(&image);
        let report = converted.report;
        assert_eq!(report.virtual_size, size, "{options}");
        // The random and text ranges are data, the rest (zeros, holes) not.
        assert!(
            report.data_bytes >= 300 * KIB + 70_000 + 512 * KIB + MIB + 5000,
            "{options}: {report:?}"
        );
        assert!(report.hole_bytes >= MIB, "{options}: {report:?}");
        if compress {
            assert!(
                report.compressed_clusters > 0,
                "{options}: nothing compressed"
            );
        } else {
            assert_eq!(report.compressed_clusters, 0, "{options}");
        }
        // Holes stay holes in the output: only the data takes blocks.
        assert!(
            allocated_bytes(&converted.output) <= report.data_bytes + 128 * KIB,
            "{options}: {} bytes allocated",
            allocated_bytes(&converted.output)
        );
        fs::remove_file(&image).ok();
    }
}

#[test]
fn zero_clusters_discards_and_subclusters_convert_like_qemu_img() {
    let dir = TempDir::new().expect("tempdir");
    let cases: &[(&str, &[&str])] = &[
        (
            "compat=1.1,cluster_size=65536",
            &[
                "write -P 0x11 0 1M",
                "write -z 256k 128k",
                "write -z -u 512k 64k",
                "discard 768k 64k",
                "write -P 0x22 2M 100k",
                "write -z 4M 1M",
                "write -P 0x33 7M 4k",
            ],
        ),
        (
            "compat=0.10,cluster_size=65536",
            &[
                "write -P 0x11 0 1M",
                "write -z 256k 128k",
                "discard 768k 64k",
                "write -P 0x22 2M 100k",
            ],
        ),
        (
            "compat=1.1,cluster_size=4096",
            &[
                "write -P 0x44 0 3M",
                "write -z 12k 8k",
                "discard 1M 64k",
                "write -z 5M 1M",
            ],
        ),
        (
            "compat=1.1,cluster_size=65536,extended_l2=on",
            &[
                "write -P 0x33 0 64k",
                "write -z 2k 4k",
                "write -P 0x44 70k 2k",
                "write -P 0x45 131072 3k",
                "discard 8k 2k",
                "write -z 1M 64k",
                "write -P 0x46 3M 1M",
                "write -z -u 3200k 6k",
            ],
        ),
        (
            "compat=1.1,cluster_size=65536,preallocation=metadata",
            &["write -P 0x55 64k 64k", "write -P 0x56 1M 200k"],
        ),
        (
            "compat=0.10,cluster_size=65536,preallocation=metadata",
            &["write -P 0x57 64k 64k"],
        ),
    ];
    for (index, &(options, commands)) in cases.iter().enumerate() {
        let image = dir.path().join(format!("io{index}.qcow2"));
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                options,
                path_str(&image),
                "8M",
            ],
        );
        qemu_io(&image, commands);
        let converted = convert_and_compare(&image);
        if !options.contains("preallocation") {
            assert!(converted.report.hole_bytes > 0, "{options}");
        }
    }
}

#[test]
fn mostly_empty_image_stays_sparse_and_data_is_coalesced() {
    let dir = TempDir::new().expect("tempdir");
    let image = dir.path().join("sparse.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", path_str(&image), "256M"],
    );
    qemu_io(
        &image,
        &["write -P 0x5a 100M 10M", "write -P 0x5b 200M 64k"],
    );
    let converted = convert_and_compare(&image);
    assert_eq!(converted.report.data_bytes, 10 * MIB + 64 * KIB);
    assert_eq!(converted.report.hole_bytes, 246 * MIB - 64 * KIB);
    assert_eq!(
        fs::metadata(&converted.output).expect("meta").len(),
        256 * MIB
    );
    assert!(allocated_bytes(&converted.output) < 12 * MIB);
    // 10 MiB of contiguous clusters in writes of up to 4 MiB, plus the lone one.
    assert!(converted.writes <= 4, "{} writes", converted.writes);
    assert_eq!(converted.largest_write, 4 * MIB as usize);
}

// ---- broken and refused images ----

fn make_image(dir: &Path, name: &str, options: &str) -> PathBuf {
    let raw = dir.join(format!("{name}.raw"));
    make_raw(
        &raw,
        8 * MIB,
        &[
            (0, 3 * MIB, Fill::Random),
            (5 * MIB, 2 * MIB + 77, Fill::Text),
        ],
    );
    let image = dir.join(format!("{name}.qcow2"));
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            options,
            path_str(&raw),
            path_str(&image),
        ],
    );
    image
}

fn read_be64(path: &Path, offset: u64) -> u64 {
    let mut file = File::open(path).expect("open");
    file.seek(SeekFrom::Start(offset)).expect("seek");
    let mut b = [0u8; 8];
    file.read_exact(&mut b).expect("read");
    u64::from_be_bytes(b)
}

fn write_be64(path: &Path, offset: u64, value: u64) {
    let mut file = OpenOptions::new().write(true).open(path).expect("open rw");
    file.seek(SeekFrom::Start(offset)).expect("seek");
    file.write_all(&value.to_be_bytes()).expect("write");
}

fn l1_offset(path: &Path) -> u64 {
    read_be64(path, 40)
}

/// Opens and converts into memory; the sink is returned for inspection.
fn open_and_convert(path: &Path, max_size: u64) -> (Result<ConvertReport>, VecSink) {
    let mut sink = VecSink::default();
    let result = Qcow2::open(File::open(path).expect("open"))
        .and_then(|mut q| q.convert(&mut sink, max_size));
    (result, sink)
}

/// The sink received no call at all: no data, no hole, no finish.
#[track_caller]
fn assert_sink_untouched(sink: &VecSink) {
    assert!(
        sink.data.is_empty() && sink.holes.is_empty() && !sink.finished,
        "the sink received {} bytes of data, holes {:?}, finished: {}",
        sink.data.len(),
        sink.holes,
        sink.finished
    );
}

/// The corrupt-image error of a conversion, which must have reached the
/// sink before anything was written.
#[track_caller]
fn corrupt_message(path: &Path) -> String {
    let (result, sink) = open_and_convert(path, u64::MAX);
    let message = match result {
        Err(Error::Corrupt(message)) => message,
        other => panic!("expected a corrupt-image error, got {other:?}"),
    };
    assert_sink_untouched(&sink);
    message
}

#[test]
fn truncated_images_are_corrupt() {
    let dir = TempDir::new().expect("tempdir");
    let image = make_image(dir.path(), "whole", "cluster_size=4096");
    let len = fs::metadata(&image).expect("meta").len();

    // In the middle of the L2 tables: the 8 MiB image has four, one per 2 MiB.
    let l2_last = read_be64(&image, l1_offset(&image) + 3 * 8) & 0x00ff_ffff_ffff_fe00;
    assert!(l2_last != 0 && l2_last < len);
    let cut_l2 = dir.path().join("cut-l2.qcow2");
    fs::copy(&image, &cut_l2).expect("copy");
    OpenOptions::new()
        .write(true)
        .open(&cut_l2)
        .expect("open")
        .set_len(l2_last + 2048)
        .expect("truncate");
    let message = corrupt_message(&cut_l2);
    assert!(
        message.contains("L2 table") && message.contains("past the end"),
        "{message}"
    );

    // In the middle of the data.
    let cut_data = dir.path().join("cut-data.qcow2");
    fs::copy(&image, &cut_data).expect("copy");
    OpenOptions::new()
        .write(true)
        .open(&cut_data)
        .expect("open")
        .set_len(len / 2 + 100)
        .expect("truncate");
    let message = corrupt_message(&cut_data);
    assert!(
        message.contains("guest offset") || message.contains("truncated"),
        "{message}"
    );

    // Late in the data, after the first 3 MiB would have been written.
    let cut_late = dir.path().join("cut-late.qcow2");
    fs::copy(&image, &cut_late).expect("copy");
    OpenOptions::new()
        .write(true)
        .open(&cut_late)
        .expect("open")
        .set_len(len - len / 4)
        .expect("truncate");
    let message = corrupt_message(&cut_late);
    assert!(
        message.contains("guest offset") && message.contains("past the end"),
        "{message}"
    );

    // Inside the header.
    let cut_header = dir.path().join("cut-header.qcow2");
    fs::copy(&image, &cut_header).expect("copy");
    OpenOptions::new()
        .write(true)
        .open(&cut_header)
        .expect("open")
        .set_len(50)
        .expect("truncate");
    corrupt_message(&cut_header);
}

#[test]
fn l2_entry_past_the_end_is_corrupt_and_names_the_guest_offset() {
    let dir = TempDir::new().expect("tempdir");
    let image = make_image(dir.path(), "l2", "cluster_size=65536");
    let len = fs::metadata(&image).expect("meta").len();
    let l2 = read_be64(&image, l1_offset(&image)) & 0x00ff_ffff_ffff_fe00;
    // Guest cluster 3 is data (the first 3 MiB are random).
    let past_end = (len / 65536 + 16) * 65536;
    write_be64(&image, l2 + 3 * 8, past_end | 1 << 63);
    let message = corrupt_message(&image);
    assert!(message.contains("guest offset 0x30000"), "{message}");
    assert!(message.contains("past the end of the file"), "{message}");
}

/// A copy of `image` with the big-endian `value` at `offset`.
fn patched(image: &Path, name: &str, offset: u64, value: u64) -> PathBuf {
    let path = image.with_file_name(name);
    fs::copy(image, &path).expect("copy");
    write_be64(&path, offset, value);
    path
}

/// Four L2 tables (4 KiB clusters, 2 MiB each) and data in the first three:
/// a bad entry in the last table used to be found only after 6 MiB had
/// reached the sink.
#[test]
fn bad_entry_in_the_last_l2_table_is_refused_before_any_write() {
    const COPIED: u64 = 1 << 63;
    let dir = TempDir::new().expect("tempdir");
    let image = make_image(dir.path(), "last", "cluster_size=4096");
    let len = fs::metadata(&image).expect("meta").len();
    let (result, sink) = open_and_convert(&image, u64::MAX);
    result.expect("the unpatched image converts");
    assert!(
        sink.data[..3 * MIB as usize].iter().any(|&b| b != 0),
        "no data before the last L2 table"
    );

    let last_l1 = l1_offset(&image) + 3 * 8;
    let l2_last = read_be64(&image, last_l1) & 0x00ff_ffff_ffff_fe00;
    assert!(l2_last != 0);
    // Guest 6 MiB, the first entry of the last table, is data (text).
    let entry = read_be64(&image, l2_last);
    assert!(entry & 0x00ff_ffff_ffff_fe00 != 0, "{entry:#x}");
    let past_end = (len / 4096 + 16) * 4096;

    let data_past_end = patched(&image, "data.qcow2", l2_last, past_end | COPIED);
    let message = corrupt_message(&data_past_end);
    assert!(
        message.contains("guest offset 0x600000") && message.contains("past the end of the file"),
        "{message}"
    );

    let second = read_be64(&image, l2_last + 8);
    let unaligned = patched(&image, "unaligned.qcow2", l2_last + 8, second + 512);
    let message = corrupt_message(&unaligned);
    assert!(
        message.contains("guest offset 0x601000") && message.contains("not aligned"),
        "{message}"
    );

    // Compressed, with its data past the end: bit 62, the offset below bit
    // 62 - (12 - 8) = 58.
    let compressed = patched(&image, "compressed.qcow2", l2_last, 1 << 62 | past_end);
    let message = corrupt_message(&compressed);
    assert!(
        message.contains("compressed data") && message.contains("past the end of the file"),
        "{message}"
    );

    let table_past_end = patched(&image, "table.qcow2", last_l1, past_end | COPIED);
    let message = corrupt_message(&table_past_end);
    assert!(
        message.contains("guest offset 0x600000") && message.contains("L2 table"),
        "{message}"
    );

    // A zero cluster in a version 2 image.
    let v2 = make_image(dir.path(), "last-v2", "compat=0.10,cluster_size=4096");
    let v2_l2_last = read_be64(&v2, l1_offset(&v2) + 3 * 8) & 0x00ff_ffff_ffff_fe00;
    let v2_entry = read_be64(&v2, v2_l2_last + 8);
    let zero = patched(&v2, "zero-v2.qcow2", v2_l2_last + 8, v2_entry | 1);
    let message = corrupt_message(&zero);
    assert!(
        message.contains("guest offset 0x601000") && message.contains("version 3"),
        "{message}"
    );
}

/// Extended L2 entries (16 KiB clusters, 16 MiB per L2 table): bad
/// subcluster bitmaps and offsets in the third table, data in the first.
#[test]
fn bad_subclusters_in_a_later_l2_table_are_refused_before_any_write() {
    let dir = TempDir::new().expect("tempdir");
    let image = dir.path().join("ext.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=16384,extended_l2=on",
            path_str(&image),
            "40M",
        ],
    );
    qemu_io(
        &image,
        &[
            "write -P 0x61 0 1M",
            "write -P 0x62 33M 64k",
            "write -P 0x63 34M 4k",
        ],
    );
    let len = fs::metadata(&image).expect("meta").len();
    let (result, sink) = open_and_convert(&image, u64::MAX);
    result.expect("the unpatched image converts");
    assert!(sink.data[..MIB as usize].iter().all(|&b| b == 0x61));

    let l2 = read_be64(&image, l1_offset(&image) + 2 * 8) & 0x00ff_ffff_ffff_fe00;
    assert!(l2 != 0);
    // 16-byte entries: the offset, then the bitmap (allocated in the low
    // half, zero in the high half).
    let full = l2 + ((33 * MIB - 32 * MIB) / (16 * KIB)) * 16;
    assert_eq!(read_be64(&image, full + 8), 0xffff_ffff);
    let both = patched(&image, "both.qcow2", full + 8, u64::MAX);
    let message = corrupt_message(&both);
    assert!(
        message.contains("guest offset 0x2100000") && message.contains("both allocated and zero"),
        "{message}"
    );

    // 4 KiB at 34 MiB: the first 8 of 32 subclusters allocated.
    let partial = l2 + ((34 * MIB - 32 * MIB) / (16 * KIB)) * 16;
    assert_eq!(read_be64(&image, partial + 8), 0xff);
    let past_end = (len / (16 * KIB) + 16) * 16 * KIB;
    let moved = patched(&image, "moved.qcow2", partial, past_end | 1 << 63);
    let message = corrupt_message(&moved);
    assert!(
        message.contains("guest offset 0x2200000") && message.contains("past the end of the file"),
        "{message}"
    );
}

#[test]
fn l1_entry_past_the_end_is_corrupt() {
    let dir = TempDir::new().expect("tempdir");
    let image = make_image(dir.path(), "l1", "cluster_size=65536");
    let len = fs::metadata(&image).expect("meta").len();
    write_be64(
        &image,
        l1_offset(&image),
        (((len / 65536) + 100) * 65536) | (1 << 63),
    );
    let message = corrupt_message(&image);
    assert!(
        message.contains("guest offset 0x0") && message.contains("past the end"),
        "{message}"
    );
}

#[test]
fn virtual_size_over_the_limit_writes_nothing() {
    let dir = TempDir::new().expect("tempdir");
    let image = make_image(dir.path(), "big", "cluster_size=65536");
    let (result, sink) = open_and_convert(&image, 8 * MIB - 1);
    assert!(matches!(result, Err(Error::TooLarge(_))), "{result:?}");
    assert!(sink.data.is_empty() && sink.holes.is_empty() && !sink.finished);
    let (result, sink) = open_and_convert(&image, 8 * MIB);
    assert_eq!(result.expect("exactly the limit").virtual_size, 8 * MIB);
    assert!(sink.finished);
}

fn refused_message(path: &Path) -> String {
    match Qcow2::open(File::open(path).expect("open")) {
        Err(Error::Refused(message)) => message,
        Err(other) => panic!("expected a refusal, got {other:?}"),
        Ok(_) => panic!("expected a refusal, the image opened"),
    }
}

#[test]
fn backing_file_is_refused() {
    let dir = TempDir::new().expect("tempdir");
    let base = dir.path().join("base.qcow2");
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", path_str(&base), "1M"],
    );
    let overlay = dir.path().join("overlay.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            path_str(&base),
            "-F",
            "qcow2",
            path_str(&overlay),
        ],
    );
    let message = refused_message(&overlay);
    assert!(
        message.contains("backing file") && message.contains("base.qcow2"),
        "{message}"
    );
}

#[test]
fn external_data_file_is_refused() {
    let dir = TempDir::new().expect("tempdir");
    let image = dir.path().join("with-data-file.qcow2");
    let data = dir.path().join("data.raw");
    let options = format!("data_file={}", path_str(&data));
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &options,
            path_str(&image),
            "1M",
        ],
    );
    let message = refused_message(&image);
    assert!(
        message.contains("external data file") && message.contains("data.raw"),
        "{message}"
    );
}

#[test]
fn encrypted_image_is_refused() {
    let dir = TempDir::new().expect("tempdir");
    let image = dir.path().join("luks.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "--object",
            "secret,id=sec0,data=not-a-real-secret",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
            path_str(&image),
            "1M",
        ],
    );
    let message = refused_message(&image);
    assert!(message.contains("encrypted (LUKS)"), "{message}");
}

#[test]
fn header_feature_bits_and_versions() {
    let dir = TempDir::new().expect("tempdir");
    let image = make_image(dir.path(), "features", "cluster_size=65536");
    let incompatible = read_be64(&image, 72);

    // An unknown incompatible feature: refused before anything is read.
    let unknown = dir.path().join("unknown.qcow2");
    fs::copy(&image, &unknown).expect("copy");
    write_be64(&unknown, 72, incompatible | 1 << 5);
    match Qcow2::open(File::open(&unknown).expect("open")) {
        Err(Error::Unsupported(message)) => assert!(message.contains("bit 5"), "{message}"),
        Err(other) => panic!("expected unsupported, got {other:?}"),
        Ok(_) => panic!("an unknown incompatible feature was accepted"),
    }

    // QEMU's corrupt bit.
    let marked = dir.path().join("marked.qcow2");
    fs::copy(&image, &marked).expect("copy");
    write_be64(&marked, 72, incompatible | 1 << 1);
    assert!(corrupt_message(&marked).contains("marked corrupt"));

    // The dirty bit only concerns refcounts: the data reads the same.
    let dirty = dir.path().join("dirty.qcow2");
    fs::copy(&image, &dirty).expect("copy");
    write_be64(&dirty, 72, incompatible | 1);
    let (result, sink) = open_and_convert(&dirty, u64::MAX);
    result.expect("dirty image converts");
    let (_, clean) = open_and_convert(&image, u64::MAX);
    assert!(sink.data == clean.data);

    // Version 4 does not exist.
    let v4 = dir.path().join("v4.qcow2");
    fs::copy(&image, &v4).expect("copy");
    let word = read_be64(&v4, 0);
    write_be64(&v4, 0, (word & !0xffff_ffff) | 4);
    assert!(matches!(
        Qcow2::open(File::open(&v4).expect("open")),
        Err(Error::Unsupported(_))
    ));

    // Not qcow2 at all.
    let raw = dir.path().join("features.raw");
    assert!(matches!(
        Qcow2::open(File::open(&raw).expect("open")),
        Err(Error::Invalid(_))
    ));
}
