//! Format inspection against a corpus made by the real tools (qemu-img,
//! xorriso, sgdisk, sfdisk) and by byte patching: every unsafe image is
//! refused with the expected reason, every good one is accepted with the
//! right format and virtual size, and inspecting only the head of a stream
//! gives the same verdict as inspecting the whole file where the head
//! suffices.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use ferric_image::format::{inspect, inspect_head, Format, Inspection, Policy, HEAD_LEN};
use ferric_image::Error;
use tempfile::TempDir;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

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
    fn run(&self, program: &str, args: &[&str]) -> String {
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
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn qemu_img_create(&self, args: &[&str]) -> PathBuf {
        let mut all = vec!["create", "-q"];
        all.extend_from_slice(args);
        self.run("qemu-img", &all);
        // The file name is the argument before the size.
        self.path(args[args.len() - 2])
    }

    /// The virtual size qemu-img reports, read as the given format.
    fn qemu_virtual_size(&self, path: &Path, format: &str) -> u64 {
        let json = self.run(
            "qemu-img",
            &[
                "info",
                "--output=json",
                "-f",
                format,
                path.to_str().unwrap(),
            ],
        );
        let info: serde_json::Value = serde_json::from_str(&json).unwrap();
        info["virtual-size"].as_u64().unwrap()
    }

    /// A sparse file of `len` bytes.
    fn sparse(&self, name: &str, len: u64) -> PathBuf {
        let path = self.path(name);
        File::create(&path).unwrap().set_len(len).unwrap();
        path
    }

    /// A plain ISO made by xorriso, plus extra xorriso arguments.
    fn iso(&self, name: &str, extra: &[&str]) -> PathBuf {
        let tree = self.path("iso-tree");
        fs::create_dir_all(&tree).unwrap();
        fs::write(tree.join("hello.txt"), "hello\n").unwrap();
        let mut args = vec!["-as", "mkisofs", "-quiet", "-V", "FERRIC", "-o", name];
        args.extend_from_slice(extra);
        args.push("iso-tree");
        self.run("xorriso", &args);
        self.path(name)
    }
}

fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    let mut file = OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.write_all(bytes).unwrap();
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut file = File::open(path).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0; len];
    file.read_exact(&mut buf).unwrap();
    buf
}

fn copy(from: &Path, to: &Path) -> PathBuf {
    fs::copy(from, to).unwrap();
    to.to_path_buf()
}

fn inspect_file(path: &Path) -> ferric_image::Result<Inspection> {
    let mut file = File::open(path).unwrap();
    inspect(&mut file)
}

fn inspect_stream_head(path: &Path) -> ferric_image::Result<Inspection> {
    let len = fs::metadata(path).unwrap().len();
    let mut head = Vec::new();
    File::open(path)
        .unwrap()
        .take(HEAD_LEN as u64)
        .read_to_end(&mut head)
        .unwrap();
    inspect_head(&head, Some(len))
}

/// Both entry points agree: same format and size, or the same error.
fn same_verdict(path: &Path) -> ferric_image::Result<Inspection> {
    let file = inspect_file(path);
    let head = inspect_stream_head(path);
    match (&file, &head) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.format, b.format, "{path:?}");
            assert_eq!(a.virtual_size, b.virtual_size, "{path:?}");
            assert_eq!(a.also_matched, b.also_matched, "{path:?}");
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{path:?}"),
        _ => panic!("inspect gave {file:?} but inspect_head gave {head:?} for {path:?}"),
    }
    file
}

#[track_caller]
fn assert_refused<T: std::fmt::Debug>(result: ferric_image::Result<T>, needles: &[&str]) {
    match result {
        Err(Error::Refused(message)) => {
            for needle in needles {
                assert!(
                    message.contains(needle),
                    "refusal {message:?} does not mention {needle:?}"
                );
            }
        }
        other => panic!("expected a refusal mentioning {needles:?}, got {other:?}"),
    }
}

#[track_caller]
fn assert_corrupt<T: std::fmt::Debug>(result: ferric_image::Result<T>, needle: &str) {
    match result {
        Err(Error::Corrupt(message)) => {
            assert!(
                message.contains(needle),
                "{message:?} does not mention {needle:?}"
            )
        }
        other => panic!("expected a corrupt-image error mentioning {needle:?}, got {other:?}"),
    }
}

#[track_caller]
fn assert_accepted(
    result: ferric_image::Result<Inspection>,
    format: Format,
    virtual_size: u64,
) -> Inspection {
    let inspection = result.unwrap_or_else(|e| panic!("expected {format}, got {e}"));
    assert_eq!(inspection.format, format, "{inspection:?}");
    assert_eq!(
        inspection.virtual_size,
        Some(virtual_size),
        "{inspection:?}"
    );
    inspection
}

// ------------------------------------------------------------- qcow2

#[test]
fn qcow2_v2_and_v3_are_accepted_with_their_virtual_size() {
    let c = Corpus::new();
    let v2 = c.qemu_img_create(&["-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "1G"]);
    let v3 = c.qemu_img_create(&["-f", "qcow2", "v3.qcow2", "3G"]);
    let small = c.qemu_img_create(&["-f", "qcow2", "-o", "cluster_size=512", "small.qcow2", "5M"]);
    for (path, size) in [(&v2, GIB), (&v3, 3 * GIB), (&small, 5 * MIB)] {
        assert_eq!(c.qemu_virtual_size(path, "qcow2"), size);
        let inspection = assert_accepted(same_verdict(path), Format::Qcow2, size);
        Policy::default().check(&inspection).unwrap();
    }
    let inspection = inspect_file(&v2).unwrap();
    assert!(inspection.details.iter().any(|d| d.contains("version 2")));
}

#[test]
fn qcow2_backing_file_is_refused_and_named() {
    let c = Corpus::new();
    let path = c.qemu_img_create(&[
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        "/etc/shadow",
        "-u",
        "backed.qcow2",
        "1G",
    ]);
    assert_refused(same_verdict(&path), &["backing file", "\"/etc/shadow\""]);
    // A qcow2 v2 image (no header extensions) too.
    let v2 = c.qemu_img_create(&[
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        "-F",
        "raw",
        "-b",
        "/etc/shadow",
        "-u",
        "backed2.qcow2",
        "1G",
    ]);
    assert_refused(same_verdict(&v2), &["backing file", "/etc/shadow"]);
}

#[test]
fn qcow2_external_data_file_is_refused() {
    let c = Corpus::new();
    let path = c.qemu_img_create(&[
        "-f",
        "qcow2",
        "-o",
        "data_file=guest.raw",
        "data.qcow2",
        "1G",
    ]);
    assert_refused(same_verdict(&path), &["external data file", "guest.raw"]);

    // The header extension alone (feature bit cleared) is refused as well.
    let ext_only = copy(&path, &c.path("ext-only.qcow2"));
    let mut incompatible = read_at(&ext_only, 72, 8);
    incompatible[7] &= !0x04;
    patch(&ext_only, 72, &incompatible);
    assert_refused(
        same_verdict(&ext_only),
        &["external data file", "guest.raw"],
    );

    // And the bit alone.
    let plain = c.qemu_img_create(&["-f", "qcow2", "plain.qcow2", "1G"]);
    patch(&plain, 79, &[0x04]);
    assert_refused(same_verdict(&plain), &["external data file"]);
}

#[test]
fn qcow2_unknown_incompatible_features_are_refused() {
    let c = Corpus::new();
    let path = c.qemu_img_create(&["-f", "qcow2", "unknown.qcow2", "1G"]);
    patch(&path, 79, &[0x20]);
    assert_refused(same_verdict(&path), &["unknown", "0x20"]);
    patch(&path, 72, &[0x80, 0, 0, 0, 0, 0, 0, 0]);
    assert_refused(same_verdict(&path), &["unknown"]);
}

#[test]
fn qcow2_known_features_are_accepted_except_corrupt() {
    let c = Corpus::new();
    let dirty = c.qemu_img_create(&["-f", "qcow2", "dirty.qcow2", "1G"]);
    patch(&dirty, 79, &[0x01]);
    let inspection = assert_accepted(same_verdict(&dirty), Format::Qcow2, GIB);
    assert!(inspection.details.iter().any(|d| d.contains("dirty")));

    let extended = c.qemu_img_create(&["-f", "qcow2", "-o", "extended_l2=on", "ext.qcow2", "1G"]);
    assert_accepted(same_verdict(&extended), Format::Qcow2, GIB);

    let zstd = c.qemu_img_create(&[
        "-f",
        "qcow2",
        "-o",
        "compression_type=zstd",
        "z.qcow2",
        "1G",
    ]);
    assert_accepted(same_verdict(&zstd), Format::Qcow2, GIB);

    let corrupt = c.qemu_img_create(&["-f", "qcow2", "corrupt.qcow2", "1G"]);
    patch(&corrupt, 79, &[0x02]);
    assert_corrupt(same_verdict(&corrupt), "marked corrupt");
}

#[test]
fn qcow2_other_versions_are_refused() {
    let c = Corpus::new();
    let path = c.qemu_img_create(&["-f", "qcow2", "v4.qcow2", "1G"]);
    patch(&path, 4, &4u32.to_be_bytes());
    assert_refused(same_verdict(&path), &["version 4"]);
    patch(&path, 4, &1u32.to_be_bytes());
    assert_refused(same_verdict(&path), &["version 1"]);
}

#[test]
fn qcow2_encryption_is_refused() {
    let c = Corpus::new();
    let luks = c.qemu_img_create(&[
        "-f",
        "qcow2",
        "--object",
        "secret,id=sec0,data=123456",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0",
        "luks.qcow2",
        "64M",
    ]);
    assert_refused(same_verdict(&luks), &["encrypted"]);

    // Legacy AES: crypt_method 1 on a plain image.
    let aes = c.qemu_img_create(&["-f", "qcow2", "aes.qcow2", "64M"]);
    patch(&aes, 32, &1u32.to_be_bytes());
    assert_refused(same_verdict(&aes), &["encrypted", "crypt_method 1"]);
}

#[test]
fn qcow2_nonsensical_headers_are_refused_as_corrupt() {
    let c = Corpus::new();
    let base = c.qemu_img_create(&["-f", "qcow2", "base.qcow2", "1G"]);

    let bits = copy(&base, &c.path("bits.qcow2"));
    patch(&bits, 20, &30u32.to_be_bytes());
    assert_corrupt(same_verdict(&bits), "cluster_bits");
    patch(&bits, 20, &8u32.to_be_bytes());
    assert_corrupt(same_verdict(&bits), "cluster_bits");

    let header_length = copy(&base, &c.path("hl.qcow2"));
    patch(&header_length, 100, &50u32.to_be_bytes());
    assert_corrupt(same_verdict(&header_length), "header_length");
    patch(&header_length, 100, &(1u32 << 20).to_be_bytes());
    assert_corrupt(same_verdict(&header_length), "header_length");

    let size = copy(&base, &c.path("size.qcow2"));
    patch(&size, 24, &u64::MAX.to_be_bytes());
    assert_corrupt(same_verdict(&size), "overflows");
    // A size the L1 table cannot map.
    patch(&size, 24, &(1u64 << 50).to_be_bytes());
    assert_corrupt(same_verdict(&size), "L1 table");

    let extension = copy(&base, &c.path("ext.qcow2"));
    // An extension longer than the header cluster.
    let header_length = u32::from_be_bytes(read_at(&base, 100, 4).try_into().unwrap());
    let mut ext = 0x1234_5678u32.to_be_bytes().to_vec();
    ext.extend_from_slice(&0x00ff_0000u32.to_be_bytes());
    patch(&extension, u64::from(header_length), &ext);
    assert_corrupt(same_verdict(&extension), "extensions");
}

// ------------------------------------------------------------- vmdk

/// Replaces the embedded descriptor of a sparse vmdk (at sector 1).
fn rewrite_vmdk_descriptor(path: &Path, text: &str) {
    let sectors = u64::from_le_bytes(read_at(path, 36, 8).try_into().unwrap());
    let mut area = vec![0u8; (sectors * 512) as usize];
    assert!(text.len() < area.len(), "descriptor too long for the area");
    area[..text.len()].copy_from_slice(text.as_bytes());
    patch(path, 512, &area);
}

fn vmdk_descriptor_text(path: &Path) -> String {
    let raw = read_at(path, 512, 1024);
    let end = raw.iter().position(|&b| b == 0).unwrap();
    String::from_utf8(raw[..end].to_vec()).unwrap()
}

#[test]
fn vmdk_sparse_and_stream_optimized_are_accepted() {
    let c = Corpus::new();
    let sparse = c.qemu_img_create(&["-f", "vmdk", "sparse.vmdk", "1G"]);
    let stream = c.qemu_img_create(&[
        "-f",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        "s.vmdk",
        "2G",
    ]);
    for (path, size) in [(&sparse, GIB), (&stream, 2 * GIB)] {
        assert_eq!(c.qemu_virtual_size(path, "vmdk"), size);
        let inspection = assert_accepted(same_verdict(path), Format::Vmdk, size);
        // Not in Ironic's default permitted list.
        assert_refused(
            Policy::default().check(&inspection),
            &["vmdk", "not among the permitted"],
        );
    }
}

#[test]
fn vmdk_flat_descriptor_file_is_refused() {
    let c = Corpus::new();
    let path = c.qemu_img_create(&[
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        "flat.vmdk",
        "10M",
    ]);
    assert!(c.path("flat-flat.vmdk").exists());
    assert_refused(same_verdict(&path), &["monolithicFlat", "flat-flat.vmdk"]);

    // A descriptor naming an absolute path, as an attacker would write it.
    let shadow = c.path("shadow.vmdk");
    fs::write(
        &shadow,
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
         createType=\"monolithicFlat\"\nRW 20 FLAT \"/etc/shadow\" 0\n",
    )
    .unwrap();
    assert_refused(same_verdict(&shadow), &["other files", "/etc/shadow"]);
}

#[test]
fn vmdk_sparse_whose_descriptor_names_other_files_is_refused() {
    let c = Corpus::new();
    let base = c.qemu_img_create(&["-f", "vmdk", "base.vmdk", "1G"]);
    let original = vmdk_descriptor_text(&base);
    let own_extent = "RW 2097152 SPARSE \"base.vmdk\"";
    assert!(original.contains(own_extent), "{original}");

    let absolute = copy(&base, &c.path("absolute.vmdk"));
    rewrite_vmdk_descriptor(
        &absolute,
        &original.replace(own_extent, "RW 2097152 SPARSE \"/etc/shadow\""),
    );
    assert_refused(
        same_verdict(&absolute),
        &["names another file", "/etc/shadow"],
    );

    let flat = copy(&base, &c.path("flat-extent.vmdk"));
    rewrite_vmdk_descriptor(
        &flat,
        &original.replace(own_extent, "RW 2097152 FLAT \"secret.img\" 0"),
    );
    assert_refused(same_verdict(&flat), &["FLAT extent", "secret.img"]);

    let second = copy(&base, &c.path("second.vmdk"));
    rewrite_vmdk_descriptor(
        &second,
        &original.replace(
            own_extent,
            &format!("{own_extent}\nRW 2048 SPARSE \"other.vmdk\""),
        ),
    );
    assert_refused(same_verdict(&second), &["2 extents"]);

    let parent = copy(&base, &c.path("parent.vmdk"));
    rewrite_vmdk_descriptor(
        &parent,
        &original.replace(
            "parentCID=ffffffff",
            "parentCID=12345678\nparentFileNameHint=\"/etc/shadow\"",
        ),
    );
    assert_refused(same_verdict(&parent), &["parent", "/etc/shadow"]);

    let flat_type = copy(&base, &c.path("type.vmdk"));
    rewrite_vmdk_descriptor(
        &flat_type,
        &original.replace("monolithicSparse", "twoGbMaxExtentSparse"),
    );
    assert_refused(
        same_verdict(&flat_type),
        &["createType", "twoGbMaxExtentSparse"],
    );

    let garbage = copy(&base, &c.path("garbage.vmdk"));
    rewrite_vmdk_descriptor(
        &garbage,
        &format!("{original}\nthis is not a descriptor line\n"),
    );
    assert_refused(same_verdict(&garbage), &["does not understand"]);
}

// ------------------------------------------------------------- other formats

#[test]
fn qed_is_always_refused() {
    let c = Corpus::new();
    let path = c.qemu_img_create(&["-f", "qed", "x.qed", "1G"]);
    assert_refused(same_verdict(&path), &["qed"]);
}

#[test]
fn vhd_vhdx_vdi_are_detected_with_their_virtual_size() {
    let c = Corpus::new();
    let vhd = c.qemu_img_create(&["-f", "vpc", "dynamic.vhd", "1G"]);
    let vhd_size = c.qemu_virtual_size(&vhd, "vpc");
    assert_accepted(same_verdict(&vhd), Format::Vhd, vhd_size);

    let vdi = c.qemu_img_create(&["-f", "vdi", "x.vdi", "1G"]);
    assert_eq!(c.qemu_virtual_size(&vdi, "vdi"), GIB);
    assert_accepted(same_verdict(&vdi), Format::Vdi, GIB);

    // qemu-img puts the VHDX metadata region past the first MiB: the file
    // inspection reads it, the head inspection reports the size as unknown.
    let vhdx = c.qemu_img_create(&["-f", "vhdx", "x.vhdx", "1G"]);
    assert_eq!(c.qemu_virtual_size(&vhdx, "vhdx"), GIB);
    let inspection = assert_accepted(inspect_file(&vhdx), Format::Vhdx, GIB);
    assert_refused(Policy::default().check(&inspection), &["vhdx"]);
    let head = inspect_stream_head(&vhdx).unwrap();
    assert_eq!(head.format, Format::Vhdx);
    assert_eq!(head.virtual_size, None);
    assert!(head
        .details
        .iter()
        .any(|d| d.contains("past the inspected head")));
}

#[test]
fn fixed_vhd_is_found_by_its_footer() {
    let c = Corpus::new();
    let path = c.qemu_img_create(&["-f", "vpc", "-o", "subformat=fixed", "fixed.vhd", "10M"]);
    let size = c.qemu_virtual_size(&path, "vpc");
    assert_accepted(inspect_file(&path), Format::Vhd, size);
    // The footer is only at the end: a stream head alone sees a raw disk
    // (as qemu's own probe does).
    assert_eq!(inspect_stream_head(&path).unwrap().format, Format::Raw);

    // A fixed VHD holding a partitioned disk is a VHD, not a polyglot.
    let disk = c.sparse("disk.img", 16 * MIB);
    c.run("sgdisk", &["-n", "1:2048:0", disk.to_str().unwrap()]);
    let holding = c.path("gpt.vhd");
    c.run(
        "qemu-img",
        &[
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "vpc",
            "-o",
            "subformat=fixed,force_size=on",
            "disk.img",
            "gpt.vhd",
        ],
    );
    let inspection = assert_accepted(inspect_file(&holding), Format::Vhd, 16 * MIB);
    assert_eq!(inspection.also_matched, vec![Format::Gpt]);
}

#[test]
fn vhd_and_vdi_with_a_parent_are_refused() {
    let c = Corpus::new();
    let vhd = c.qemu_img_create(&["-f", "vpc", "diff.vhd", "1G"]);
    patch(&vhd, 60, &4u32.to_be_bytes());
    assert_refused(same_verdict(&vhd), &["differencing", "parent"]);

    let vdi = c.qemu_img_create(&["-f", "vdi", "diff.vdi", "1G"]);
    patch(&vdi, 0x4c, &4u32.to_le_bytes());
    assert_refused(same_verdict(&vdi), &["differencing", "parent"]);
}

#[test]
fn vhdx_with_a_parent_is_refused() {
    let c = Corpus::new();
    let path = c.qemu_img_create(&["-f", "vhdx", "diff.vhdx", "1G"]);
    // Region table at 192 KiB: find the metadata region, then the file
    // parameters item, and set its HasParent flag.
    let table = read_at(&path, 0x30000, 16 + 32 * 8);
    let count = u32::from_le_bytes(table[8..12].try_into().unwrap()) as usize;
    let metadata_guid = [
        0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88,
        0x6e,
    ];
    let meta_offset = (0..count)
        .map(|i| &table[16 + i * 32..16 + (i + 1) * 32])
        .find(|entry| entry[..16] == metadata_guid)
        .map(|entry| u64::from_le_bytes(entry[16..24].try_into().unwrap()))
        .expect("metadata region");
    let meta = read_at(&path, meta_offset, 32 * 16);
    let entries = u16::from_le_bytes(meta[10..12].try_into().unwrap()) as usize;
    let file_parameters_guid = [
        0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d, 0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7,
        0x6b,
    ];
    let item_offset = (0..entries)
        .map(|i| &meta[32 + i * 32..32 + (i + 1) * 32])
        .find(|entry| entry[..16] == file_parameters_guid)
        .map(|entry| u32::from_le_bytes(entry[16..20].try_into().unwrap()))
        .expect("file parameters item");
    let flags_at = meta_offset + u64::from(item_offset) + 4;
    let flags = u32::from_le_bytes(read_at(&path, flags_at, 4).try_into().unwrap());
    patch(&path, flags_at, &(flags | 2).to_le_bytes());
    assert_refused(inspect_file(&path), &["VHDX", "parent"]);
}

#[test]
fn luks_is_detected_and_not_permitted_by_default() {
    let c = Corpus::new();
    let path = c.qemu_img_create(&[
        "-f",
        "luks",
        "--object",
        "secret,id=sec0,data=123456",
        "-o",
        "key-secret=sec0",
        "x.luks",
        "16M",
    ]);
    let inspection = assert_accepted(same_verdict(&path), Format::Luks, 16 * MIB);
    assert_refused(Policy::default().check(&inspection), &["luks"]);
    let permitted = Policy {
        permitted: vec![Format::Luks],
        declared: Some(Format::Luks),
    };
    permitted.check(&inspection).unwrap();

    // A crafted LUKS1 header is enough.
    let crafted = c.path("crafted.luks");
    let mut header = vec![0u8; 4096 * 512 + MIB as usize];
    header[..6].copy_from_slice(b"LUKS\xba\xbe");
    header[6..8].copy_from_slice(&1u16.to_be_bytes());
    header[8..11].copy_from_slice(b"aes");
    header[40..51].copy_from_slice(b"xts-plain64");
    header[72..78].copy_from_slice(b"sha256");
    header[104..108].copy_from_slice(&4096u32.to_be_bytes());
    header[108..112].copy_from_slice(&64u32.to_be_bytes());
    fs::write(&crafted, &header).unwrap();
    assert_accepted(same_verdict(&crafted), Format::Luks, MIB);
}

// ------------------------------------------------------------- raw, partition tables, iso

#[test]
fn raw_gpt_and_mbr_disks_are_accepted_with_their_length() {
    let c = Corpus::new();
    let raw = c.sparse("raw.img", 10 * MIB);
    patch(&raw, 4 * MIB, b"some file system data");
    let inspection = assert_accepted(same_verdict(&raw), Format::Raw, 10 * MIB);
    Policy::default().check(&inspection).unwrap();

    let gpt = c.sparse("gpt.img", 64 * MIB);
    c.run(
        "sgdisk",
        &[
            "-n",
            "1:2048:+10M",
            "-t",
            "1:ef00",
            "-n",
            "2:0:0",
            "-t",
            "2:8300",
            "gpt.img",
        ],
    );
    let inspection = assert_accepted(same_verdict(&gpt), Format::Gpt, 64 * MIB);
    assert!(inspection.also_matched.is_empty());
    let declared_raw = Policy {
        declared: Some(Format::Raw),
        ..Policy::default()
    };
    declared_raw.check(&inspection).unwrap();

    let mbr = c.sparse("mbr.img", 32 * MIB);
    let mut sfdisk = Command::new("sfdisk")
        .args(["--quiet", mbr.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\n,10MiB,83,*\n,,83\n")
        .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    let inspection = assert_accepted(same_verdict(&mbr), Format::Mbr, 32 * MIB);
    // Ironic treats a partitioned disk as raw: permitted and matching a
    // declared raw.
    Policy::default().check(&inspection).unwrap();
    declared_raw.check(&inspection).unwrap();
}

#[test]
fn gpt_with_a_hybrid_mbr_or_a_bad_checksum_is_refused() {
    let c = Corpus::new();
    let hybrid = c.sparse("hybrid.img", 64 * MIB);
    c.run(
        "sgdisk",
        &["-n", "1:2048:+10M", "-n", "2:0:0", "hybrid.img"],
    );
    c.run("sgdisk", &["-h", "1", "hybrid.img"]);
    assert_refused(same_verdict(&hybrid), &["hybrid"]);

    let bad = c.sparse("bad.img", 64 * MIB);
    c.run("sgdisk", &["-n", "1:2048:0", "bad.img"]);
    patch(&bad, 512 + 56, b"tampered");
    assert_corrupt(same_verdict(&bad), "GPT header checksum");
}

/// The volume size isoinfo reports, in bytes.
fn isoinfo_size(c: &Corpus, path: &Path) -> u64 {
    let info = c.run("isoinfo", &["-d", "-i", path.to_str().unwrap()]);
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|line| line.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} missing in {info}"))
            .trim()
            .parse()
            .unwrap()
    };
    field("Volume size is:") * field("Logical block size is:")
}

#[test]
fn iso_and_hybrid_isos_are_accepted_as_iso() {
    let c = Corpus::new();
    let plain = c.iso("plain.iso", &[]);
    let inspection = assert_accepted(same_verdict(&plain), Format::Iso, isoinfo_size(&c, &plain));
    assert!(inspection.also_matched.is_empty());
    Policy::default().check(&inspection).unwrap();

    c.sparse("part.img", MIB);
    let gpt = c.iso(
        "gpt.iso",
        &[
            "-append_partition",
            "2",
            "0xef",
            "part.img",
            "-appended_part_as_gpt",
        ],
    );
    let inspection = assert_accepted(same_verdict(&gpt), Format::Iso, isoinfo_size(&c, &gpt));
    assert_eq!(inspection.also_matched, vec![Format::Gpt]);
    let declared = |format| Policy {
        declared: Some(format),
        ..Policy::default()
    };
    declared(Format::Iso).check(&inspection).unwrap();
    assert_refused(
        declared(Format::Raw).check(&inspection),
        &["declared raw", "iso"],
    );
    assert_refused(declared(Format::Gpt).check(&inspection), &["declared gpt"]);

    // isohybrid with only an MBR: oslo.utils' gpt detector matches any MBR,
    // so Ironic accepts it as iso; so does Ferric.
    let mbr = c.iso("mbr.iso", &["-append_partition", "2", "0x83", "part.img"]);
    let inspection = assert_accepted(same_verdict(&mbr), Format::Iso, isoinfo_size(&c, &mbr));
    assert_eq!(inspection.also_matched, vec![Format::Mbr]);
}

#[test]
fn iso_with_a_qcow2_header_in_its_system_area_is_a_refused_polyglot() {
    let c = Corpus::new();
    let iso = c.iso("poly.iso", &[]);
    let qcow2 = c.qemu_img_create(&["-f", "qcow2", "x.qcow2", "1G"]);
    patch(&iso, 0, &read_at(&qcow2, 0, 512));
    assert_refused(same_verdict(&iso), &["polyglot", "qcow2", "iso"]);

    // A qcow2 header in front of a GPT disk likewise.
    let disk = c.sparse("disk.img", 16 * MIB);
    c.run("sgdisk", &["-n", "1:2048:0", "disk.img"]);
    patch(&disk, 0, &read_at(&qcow2, 0, 112));
    assert_refused(same_verdict(&disk), &["polyglot", "qcow2", "gpt"]);
}

// ------------------------------------------------------------- policy

#[test]
fn policy_refuses_declared_raw_that_is_qcow2_and_unpermitted_formats() {
    let c = Corpus::new();
    let qcow2 = c.qemu_img_create(&["-f", "qcow2", "x.qcow2", "1G"]);
    let inspection = same_verdict(&qcow2).unwrap();
    let declared_raw = Policy {
        declared: Some(Format::Raw),
        ..Policy::default()
    };
    assert_refused(declared_raw.check(&inspection), &["declared raw", "qcow2"]);
    let declared_qcow2 = Policy {
        declared: Some(Format::Qcow2),
        ..Policy::default()
    };
    declared_qcow2.check(&inspection).unwrap();
    let raw_only = Policy {
        permitted: vec![Format::Raw],
        declared: None,
    };
    assert_refused(
        raw_only.check(&inspection),
        &["qcow2", "not among the permitted", "raw"],
    );

    let vhd = c.qemu_img_create(&["-f", "vpc", "x.vhd", "1G"]);
    let inspection = same_verdict(&vhd).unwrap();
    assert_refused(
        Policy::default().check(&inspection),
        &["vhd", "not among the permitted"],
    );

    let iso = c.iso("x.iso", &[]);
    let inspection = same_verdict(&iso).unwrap();
    assert_refused(
        declared_qcow2.check(&inspection),
        &["declared qcow2", "iso"],
    );
}

#[test]
fn head_shorter_than_asked_is_an_invalid_call() {
    let head = vec![0u8; 4096];
    assert!(matches!(
        inspect_head(&head, Some(1 << 30)),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        inspect_head(&head, Some(100)),
        Err(Error::Invalid(_))
    ));
    let whole = inspect_head(&head, None).unwrap();
    assert_eq!(
        (whole.format, whole.virtual_size),
        (Format::Raw, Some(4096))
    );
}
