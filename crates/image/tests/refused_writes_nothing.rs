//! Every hostile image of the corpus is refused before anything reaches the
//! target, by both ways images are written: `write_stream` (the agent's
//! deploy, onto a disk that holds a recognisable pattern) and `convert_file`
//! (the server's image cache, into a sink that records every call). The
//! error says what is wrong, and the target is unchanged byte for byte.
//!
//! The corpus is made by the real tools (qemu-img, xorriso) and by byte
//! patching, as in inspect_corpus.rs and qcow2.rs.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferric_image::format::{Format, Policy};
use ferric_image::pipeline::{self, StreamOptions};
use ferric_image::sink::VecSink;
use ferric_image::writer::{DiskWriter, WriterOptions};
use ferric_image::Error;
use tempfile::TempDir;

const MIB: u64 = 1 << 20;
/// The size of the target disk, which is also the size limit.
const TARGET_LEN: u64 = 8 * MIB;
/// What every byte of the target holds before, and must hold after.
const PATTERN: u8 = 0xA5;
/// Bits 9-55 of qcow2 L1 and L2 entries: a host offset.
const QCOW2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// The error an image must be refused with.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Refused,
    Corrupt,
    TooLarge,
}

impl Refusal {
    /// The message of `error` when it is of this kind.
    fn message(self, error: &Error) -> Option<&str> {
        match (self, error) {
            (Refusal::Refused, Error::Refused(message))
            | (Refusal::Corrupt, Error::Corrupt(message))
            | (Refusal::TooLarge, Error::TooLarge(message)) => Some(message),
            _ => None,
        }
    }
}

struct Corpus {
    dir: TempDir,
}

impl Corpus {
    fn new() -> Self {
        Corpus {
            dir: tempfile::tempdir().expect("creating a temp dir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs a tool in the corpus directory and returns its stdout.
    fn run(&self, program: &str, args: &[&str]) -> Vec<u8> {
        let output = Command::new(program)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    /// `qemu-img create -q <args>`; the file name is the argument before
    /// the size.
    fn qemu_img_create(&self, args: &[&str]) -> PathBuf {
        let mut all = vec!["create", "-q"];
        all.extend_from_slice(args);
        self.run("qemu-img", &all);
        self.path(args[args.len() - 2])
    }

    /// An 8 MiB qcow2 image with data in [0, 3 MiB) and [5 MiB, 7 MiB):
    /// with 4 KiB clusters, four L2 tables of 2 MiB each, three of them
    /// mapping data.
    fn qcow2_with_data(&self, name: &str, options: &str) -> PathBuf {
        let raw = format!("{name}.raw");
        let file = File::create(self.path(&raw)).expect("create raw");
        file.set_len(8 * MIB).expect("size raw");
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for (start, len) in [(0, 3 * MIB), (5 * MIB, 2 * MIB)] {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8 | 1
                })
                .collect();
            file.write_all_at(&data, start).expect("write raw");
        }
        let image = self.path(name);
        self.run(
            "qemu-img",
            &[
                "convert", "-f", "raw", "-O", "qcow2", "-o", options, &raw, name,
            ],
        );
        image
    }

    /// A plain ISO made by xorriso.
    fn iso(&self, name: &str) -> PathBuf {
        let tree = self.path("iso-tree");
        fs::create_dir_all(&tree).expect("iso tree");
        fs::write(tree.join("hello.txt"), "hello\n").expect("iso file");
        self.run(
            "xorriso",
            &[
                "-as", "mkisofs", "-quiet", "-V", "FERRIC", "-o", name, "iso-tree",
            ],
        );
        self.path(name)
    }

    /// A new target file holding the pattern, opened as the agent opens a
    /// disk, bounded to its size.
    fn target(&self, name: &str) -> (PathBuf, DiskWriter) {
        let path = self.path(name);
        fs::write(&path, vec![PATTERN; TARGET_LEN as usize]).expect("fill the target");
        let writer = DiskWriter::open(
            &path,
            WriterOptions {
                max_size: Some(TARGET_LEN),
                ..WriterOptions::default()
            },
        )
        .expect("open the target");
        (path, writer)
    }

    /// Streams `image` onto a patterned target and converts it into a
    /// recording sink; both must fail with `refusal`, a message containing
    /// every needle, and nothing written. All failures are reported at once.
    #[track_caller]
    fn assert_refused(&self, image: &Path, policy: &Policy, refusal: Refusal, needles: &[&str]) {
        let name = image.file_name().expect("name").to_string_lossy();
        let mut failures = Vec::new();

        let (target, writer) = self.target(&format!("{name}.target"));
        let spool = self.path("spool");
        fs::create_dir_all(&spool).expect("spool dir");
        let options = StreamOptions {
            policy: policy.clone(),
            spool_dir: Some(spool),
            ..StreamOptions::default()
        };
        let source = File::open(image).expect("open image");
        let streamed = pipeline::write_stream(source, writer, &options).map(|_| ());
        failures.extend(wrong_outcome("write_stream", &streamed, refusal, needles));
        let after = fs::read(&target).expect("read the target");
        if after.len() as u64 != TARGET_LEN {
            failures.push(format!(
                "write_stream: the target is now {} bytes long instead of {TARGET_LEN}",
                after.len()
            ));
        }
        if let Some(at) = after.iter().position(|&b| b != PATTERN) {
            let changed = after.iter().filter(|&&b| b != PATTERN).count();
            failures.push(format!(
                "write_stream: the target changed: {changed} bytes, the first at offset {at:#x}"
            ));
        }

        let mut sink = VecSink::default();
        let mut source = File::open(image).expect("open image");
        let converted =
            pipeline::convert_file(&mut source, &mut sink, policy, TARGET_LEN).map(|_| ());
        failures.extend(wrong_outcome("convert_file", &converted, refusal, needles));
        // Holes write nothing; a stream found too large midway may have
        // announced some before it was.
        if !sink.data.is_empty() || sink.finished {
            failures.push(format!(
                "convert_file: the sink received {} bytes of data, {} holes, finished: {}",
                sink.data.len(),
                sink.holes.len(),
                sink.finished
            ));
        }

        assert!(failures.is_empty(), "{name}:\n{}", failures.join("\n"));
    }
}

/// What is wrong with `result`, if it is not the expected refusal.
fn wrong_outcome(
    entry: &str,
    result: &ferric_image::Result<()>,
    refusal: Refusal,
    needles: &[&str],
) -> Option<String> {
    let error = match result {
        Ok(()) => return Some(format!("{entry}: accepted, expected {refusal:?}")),
        Err(error) => error,
    };
    let Some(message) = refusal.message(error) else {
        return Some(format!("{entry}: expected {refusal:?}, got {error:?}"));
    };
    let missing: Vec<&&str> = needles
        .iter()
        .filter(|needle| !message.contains(**needle))
        .collect();
    if missing.is_empty() {
        None
    } else {
        Some(format!("{entry}: {message:?} does not mention {missing:?}"))
    }
}

fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    let mut file = OpenOptions::new().write(true).open(path).expect("open rw");
    file.seek(SeekFrom::Start(offset)).expect("seek");
    file.write_all(bytes).expect("patch");
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut file = File::open(path).expect("open");
    file.seek(SeekFrom::Start(offset)).expect("seek");
    let mut buf = vec![0; len];
    file.read_exact(&mut buf).expect("read");
    buf
}

fn read_be64(path: &Path, offset: u64) -> u64 {
    u64::from_be_bytes(read_at(path, offset, 8).try_into().expect("8 bytes"))
}

/// The host offset of the L2 table of L1 entry `index`.
fn qcow2_l2_table(path: &Path, index: u64) -> u64 {
    let l1 = read_be64(path, 40);
    let l2 = read_be64(path, l1 + index * 8) & QCOW2_OFFSET_MASK;
    assert!(l2 != 0, "L1 entry {index} maps no L2 table");
    l2
}

// ------------------------------------------------------------- qcow2 headers

#[test]
fn qcow2_backing_file_pointing_at_etc_shadow() {
    let c = Corpus::new();
    for (name, compat) in [
        ("backed.qcow2", "compat=1.1"),
        ("backed2.qcow2", "compat=0.10"),
    ] {
        let image = c.qemu_img_create(&[
            "-f",
            "qcow2",
            "-o",
            compat,
            "-F",
            "raw",
            "-b",
            "/etc/shadow",
            "-u",
            name,
            "8M",
        ]);
        c.assert_refused(
            &image,
            &Policy::default(),
            Refusal::Refused,
            &["backing file", "/etc/shadow"],
        );
    }
}

#[test]
fn qcow2_external_data_file() {
    let c = Corpus::new();
    let image = c.qemu_img_create(&[
        "-f",
        "qcow2",
        "-o",
        "data_file=guest.raw",
        "data.qcow2",
        "8M",
    ]);
    c.assert_refused(
        &image,
        &Policy::default(),
        Refusal::Refused,
        &["external data file", "guest.raw"],
    );
}

#[test]
fn qcow2_unknown_incompatible_feature_bits() {
    let c = Corpus::new();
    let image = c.qcow2_with_data("unknown.qcow2", "cluster_size=65536");
    patch(&image, 79, &[0x20]);
    c.assert_refused(
        &image,
        &Policy::default(),
        Refusal::Refused,
        &["incompatible features", "0x20"],
    );
}

#[test]
fn qcow2_versions_1_and_4() {
    let c = Corpus::new();
    for version in [1u32, 4] {
        let image = c.qcow2_with_data(&format!("v{version}.qcow2"), "cluster_size=65536");
        patch(&image, 4, &version.to_be_bytes());
        c.assert_refused(
            &image,
            &Policy::default(),
            Refusal::Refused,
            &[&format!("version {version}")],
        );
    }
}

#[test]
fn qcow2_encrypted_with_luks() {
    let c = Corpus::new();
    let image = c.qemu_img_create(&[
        "-f",
        "qcow2",
        "--object",
        "secret,id=sec0,data=123456",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
        "luks.qcow2",
        "8M",
    ]);
    c.assert_refused(&image, &Policy::default(), Refusal::Refused, &["encrypted"]);
}

// ------------------------------------------------------------- other formats

#[test]
fn vmdk_flat_descriptors() {
    let c = Corpus::new();
    let flat = c.qemu_img_create(&[
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        "flat.vmdk",
        "8M",
    ]);
    c.assert_refused(
        &flat,
        &Policy::default(),
        Refusal::Refused,
        &["monolithicFlat", "flat-flat.vmdk"],
    );

    // A descriptor naming an absolute path, as an attacker would write it.
    let shadow = c.path("shadow.vmdk");
    fs::write(
        &shadow,
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
         createType=\"monolithicFlat\"\nRW 20 FLAT \"/etc/shadow\" 0\n",
    )
    .expect("write descriptor");
    c.assert_refused(
        &shadow,
        &Policy::default(),
        Refusal::Refused,
        &["other files", "/etc/shadow"],
    );
}

#[test]
fn vmdk_sparse_with_an_extent_naming_another_file() {
    let c = Corpus::new();
    let image = c.qemu_img_create(&["-f", "vmdk", "extent.vmdk", "8M"]);
    // The embedded descriptor, at sector 1, names the image itself.
    let raw = read_at(&image, 512, 1024);
    let end = raw.iter().position(|&b| b == 0).expect("descriptor end");
    let original = String::from_utf8(raw[..end].to_vec()).expect("utf-8 descriptor");
    let own_extent = "RW 16384 SPARSE \"extent.vmdk\"";
    assert!(original.contains(own_extent), "{original}");
    let text = original.replace(own_extent, "RW 16384 SPARSE \"/etc/shadow\"");
    let sectors = u64::from_le_bytes(read_at(&image, 36, 8).try_into().expect("8 bytes"));
    let mut area = vec![0u8; (sectors * 512) as usize];
    area[..text.len()].copy_from_slice(text.as_bytes());
    patch(&image, 512, &area);
    c.assert_refused(
        &image,
        &Policy::default(),
        Refusal::Refused,
        &["names another file", "/etc/shadow"],
    );
}

#[test]
fn qed() {
    let c = Corpus::new();
    let image = c.qemu_img_create(&["-f", "qed", "x.qed", "8M"]);
    c.assert_refused(&image, &Policy::default(), Refusal::Refused, &["qed"]);
}

#[test]
fn iso_with_a_qcow2_header_inside() {
    let c = Corpus::new();
    let iso = c.iso("poly.iso");
    let qcow2 = c.qemu_img_create(&["-f", "qcow2", "x.qcow2", "8M"]);
    patch(&iso, 0, &read_at(&qcow2, 0, 512));
    c.assert_refused(
        &iso,
        &Policy::default(),
        Refusal::Refused,
        &["polyglot", "qcow2", "iso"],
    );
}

#[test]
fn qcow2_declared_raw() {
    let c = Corpus::new();
    let image = c.qcow2_with_data("declared.qcow2", "cluster_size=65536");
    let declared_raw = Policy {
        declared: Some(Format::Raw),
        ..Policy::default()
    };
    c.assert_refused(
        &image,
        &declared_raw,
        Refusal::Refused,
        &["declared raw", "qcow2"],
    );
}

// ------------------------------------------------------------- broken qcow2

#[test]
fn qcow2_truncated_in_its_last_l2_table() {
    let c = Corpus::new();
    let image = c.qcow2_with_data("cut.qcow2", "cluster_size=4096");
    let l2_last = qcow2_l2_table(&image, 3);
    OpenOptions::new()
        .write(true)
        .open(&image)
        .expect("open")
        .set_len(l2_last + 2048)
        .expect("truncate");
    c.assert_refused(
        &image,
        &Policy::default(),
        Refusal::Corrupt,
        &["L2 table", "past the end"],
    );
}

#[test]
fn qcow2_truncated_in_its_data() {
    let c = Corpus::new();
    let image = c.qcow2_with_data("cut-data.qcow2", "cluster_size=4096");
    let len = fs::metadata(&image).expect("meta").len();
    // In the data of [5 MiB, 7 MiB): the first 3 MiB were already handed
    // on when a conversion reached it.
    OpenOptions::new()
        .write(true)
        .open(&image)
        .expect("open")
        .set_len(len - len / 4)
        .expect("truncate");
    c.assert_refused(
        &image,
        &Policy::default(),
        Refusal::Corrupt,
        &["past the end"],
    );
}

#[test]
fn qcow2_l2_entry_past_the_end_after_valid_data() {
    let c = Corpus::new();
    let image = c.qcow2_with_data("past.qcow2", "cluster_size=4096");
    let len = fs::metadata(&image).expect("meta").len();
    // Guest 6 MiB, the first entry of the last L2 table, is data.
    let l2_last = qcow2_l2_table(&image, 3);
    assert!(read_be64(&image, l2_last) & QCOW2_OFFSET_MASK != 0);
    let past_end = (len / 4096 + 16) * 4096;
    patch(&image, l2_last, &(past_end | 1 << 63).to_be_bytes());
    c.assert_refused(
        &image,
        &Policy::default(),
        Refusal::Corrupt,
        &["guest offset 0x600000", "past the end of the file"],
    );
}

// ------------------------------------------------------------- sizes

#[test]
fn qcow2_virtual_size_larger_than_the_target() {
    let c = Corpus::new();
    let image = c.qemu_img_create(&["-f", "qcow2", "big.qcow2", "16M"]);
    c.assert_refused(
        &image,
        &Policy::default(),
        Refusal::TooLarge,
        &["virtual size"],
    );
}

/// A stream learns that it is too large only once more than the target's
/// size came out of it: until then it was all zeros, which the disk writer
/// holds as a pending hole, so the target is left as it was; convert_file
/// decompresses and stops at its limit too.
#[test]
fn zstd_of_zeros_larger_than_the_target() {
    let c = Corpus::new();
    let bomb = c.path("bomb.raw.zst");
    // Streamed, so the frame does not say how large it expands.
    let compressed = zstd::encode_all(std::io::repeat(0).take(4 * TARGET_LEN), 3).expect("zstd");
    assert!(compressed.len() < MIB as usize);
    fs::write(&bomb, compressed).expect("write bomb");
    c.assert_refused(
        &bomb,
        &Policy::default(),
        Refusal::TooLarge,
        &["expands to more than"],
    );
}
