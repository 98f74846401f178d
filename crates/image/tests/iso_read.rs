//! ISO images made by real xorriso (whose mkisofs emulation adds Rock Ridge
//! unless told `--norock`), read back with `ferric_image::iso`, and
//! crafted bad images (real ones with patched bytes) that must be refused
//! without writing anything outside the extraction directory.

use std::collections::BTreeMap;
use std::fs;
use std::io::Cursor;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use ferric_image::configdrive::ConfigDrive;
use ferric_image::iso::{IsoEntry, IsoEntryKind, IsoImage, Naming};
use ferric_image::Error;
use serde_json::json;

/// Builds an ISO of `source` with `xorriso -as mkisofs <flags> -o X source`.
fn xorriso(source: &Path, flags: &[&str]) -> Vec<u8> {
    xorriso_with(&[], source, flags)
}

/// Like [`xorriso`], with native xorriso options before `-as mkisofs`.
fn xorriso_with(native: &[&str], source: &Path, flags: &[&str]) -> Vec<u8> {
    let out = tempfile::tempdir().expect("tempdir");
    let iso = out.path().join("image.iso");
    let output = Command::new("xorriso")
        .args(native)
        .arg("-as")
        .arg("mkisofs")
        .args(flags)
        .arg("-o")
        .arg(&iso)
        .arg(source)
        .output()
        .expect("running xorriso (Debian package xorriso)");
    assert!(
        output.status.success(),
        "xorriso failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    fs::read(&iso).expect("reading the ISO")
}

fn open(image: &[u8]) -> IsoImage<Cursor<Vec<u8>>> {
    IsoImage::open(Cursor::new(image.to_vec())).expect("opening the ISO")
}

/// What the source tree holds: path -> (kind, size, permission bits).
type Tree = BTreeMap<String, (IsoEntryKind, u64, u32)>;

fn source_tree(root: &Path) -> Tree {
    fn walk(dir: &Path, prefix: &str, out: &mut Tree) {
        for entry in fs::read_dir(dir).expect("read_dir") {
            let entry = entry.expect("dir entry");
            let path = format!("{prefix}/{}", entry.file_name().to_string_lossy());
            let meta = fs::symlink_metadata(entry.path()).expect("lstat");
            let mode = meta.mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(entry.path()).expect("readlink");
                let target = target.to_string_lossy().into_owned();
                out.insert(path, (IsoEntryKind::Symlink(target), 0, mode));
            } else if meta.is_dir() {
                out.insert(path.clone(), (IsoEntryKind::Directory, 0, mode));
                walk(&entry.path(), &path, out);
            } else {
                out.insert(path, (IsoEntryKind::File, meta.len(), mode));
            }
        }
    }
    let mut out = Tree::new();
    walk(root, "", &mut out);
    out
}

fn listed(entries: &[IsoEntry], with_modes: bool) -> Tree {
    entries
        .iter()
        .map(|e| {
            let mode = if with_modes {
                e.mode.expect("Rock Ridge gives every entry a mode")
            } else {
                assert_eq!(e.mode, None, "{}", e.path);
                0
            };
            (e.path.clone(), (e.kind.clone(), e.size, mode))
        })
        .collect()
}

fn without_modes(tree: &Tree) -> Tree {
    tree.iter()
        .map(|(p, (k, s, _))| (p.clone(), (k.clone(), *s, 0)))
        .collect()
}

/// A deterministic, not very compressible byte pattern.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

const LONG_NAME: &str =
    "a file name that is much longer than the 64 characters that plain Joliet allows.txt";

/// A source tree with everything the tests want: deep directories, long
/// names, a symbolic link, a 5 MiB file, empty files, odd modes.
fn rich_source() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fs::create_dir_all(root.join("isolinux")).unwrap();
    fs::write(root.join("isolinux/vmlinuz"), pattern(5 * 1024 * 1024, 1)).unwrap();
    fs::write(root.join("isolinux/initrd.img"), pattern(70_001, 2)).unwrap();
    fs::write(root.join(".treeinfo"), b"[general]\nname = Test\n").unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("isolinux/also-empty"), b"").unwrap();
    fs::write(root.join(LONG_NAME), b"long").unwrap();
    fs::write(root.join("MixedCase.Name"), b"case").unwrap();
    let mut deep = root.to_path_buf();
    for level in 0..20 {
        deep.push(format!("level{level:02}"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("bottom.txt"), b"deep down").unwrap();
    symlink("../.treeinfo", root.join("isolinux/treeinfo-link")).unwrap();
    symlink("isolinux/vmlinuz", root.join("vmlinuz")).unwrap();
    fs::create_dir(root.join("private")).unwrap();
    fs::write(root.join("private/script.sh"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(
        root.join("private/script.sh"),
        fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// Checks the extracted tree against the source: same entries, contents,
/// symlink targets and modes.
fn assert_extracted_like(source: &Path, extracted: &Path) {
    let want = source_tree(source);
    let got = source_tree(extracted);
    assert_eq!(got, want);
    for (path, (kind, _, _)) in &want {
        if *kind == IsoEntryKind::File {
            let rel = &path[1..];
            assert_eq!(
                fs::read(extracted.join(rel)).unwrap(),
                fs::read(source.join(rel)).unwrap(),
                "{path}"
            );
        }
    }
}

#[test]
fn rock_ridge_image_lists_reads_and_extracts_the_source_tree() {
    let source = rich_source();
    let image = xorriso(source.path(), &["-R", "-J", "-V", "BOOT_LABEL"]);
    let mut iso = open(&image);
    assert_eq!(iso.naming(), Naming::RockRidge);
    assert_eq!(iso.volume_id(), "BOOT_LABEL");

    let entries = iso.entries().unwrap();
    assert_eq!(listed(&entries, true), source_tree(source.path()));
    // Parents come before their children.
    for (index, entry) in entries.iter().enumerate() {
        let parent = &entry.path[..entry.path.rfind('/').unwrap()];
        if !parent.is_empty() {
            assert!(
                entries[..index].iter().any(|e| e.path == parent),
                "{}",
                entry.path
            );
        }
    }

    for entry in entries.iter().filter(|e| e.kind == IsoEntryKind::File) {
        let want = fs::read(source.path().join(&entry.path[1..])).unwrap();
        assert_eq!(
            iso.read_file(&entry.path, u64::MAX).unwrap(),
            want,
            "{}",
            entry.path
        );
    }
    let kernel = iso.read_file("isolinux/vmlinuz", 5 * 1024 * 1024).unwrap();
    assert_eq!(kernel, pattern(5 * 1024 * 1024, 1));
    let mut copied = Vec::new();
    assert_eq!(
        iso.copy_file("/isolinux/initrd.img", &mut copied).unwrap(),
        70_001
    );
    assert_eq!(copied, pattern(70_001, 2));

    let target = tempfile::tempdir().unwrap();
    let summary = iso.extract(target.path()).unwrap();
    assert_extracted_like(source.path(), target.path());
    assert_eq!(summary.symlinks, 2);
    assert_eq!(summary.files, 9);
    assert_eq!(summary.directories, 22);
    assert!(summary.skipped.is_empty());
}

#[test]
fn read_file_errors_name_the_problem() {
    let source = rich_source();
    let mut iso = open(&xorriso(source.path(), &["-R", "-J"]));
    let too_large = iso.read_file("/isolinux/vmlinuz", 1024).unwrap_err();
    assert!(matches!(too_large, Error::TooLarge(_)), "{too_large}");
    assert!(too_large.to_string().contains("/isolinux/vmlinuz"));
    for (path, words) in [
        ("/nope", "not in the ISO image"),
        ("/ISOLINUX/vmlinuz", "not in the ISO image"),
        ("/isolinux", "is a directory"),
        ("/vmlinuz", "symbolic link"),
        ("/empty/x", "is a file, not a directory"),
    ] {
        let err = iso.read_file(path, u64::MAX).unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{path}: {err}");
        assert!(err.to_string().contains(words), "{path}: {err}");
    }
    assert_eq!(iso.read_file("/empty", 0).unwrap(), b"");
}

#[test]
fn only_listed_paths_are_extracted() {
    let source = rich_source();
    let mut iso = open(&xorriso(source.path(), &["-R"]));
    let target = tempfile::tempdir().unwrap();
    let summary = iso
        .extract_paths(target.path(), &["/isolinux/vmlinuz", "private"])
        .unwrap();
    let got = source_tree(target.path());
    let paths: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(
        paths,
        [
            "/isolinux",
            "/isolinux/vmlinuz",
            "/private",
            "/private/script.sh"
        ]
    );
    assert_eq!(summary.files, 2);
    let err = iso.extract_paths(target.path(), &["/missing"]).unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
}

#[test]
fn joliet_names_are_used_without_rock_ridge() {
    let source = tempfile::tempdir().unwrap();
    let root = source.path();
    fs::create_dir_all(root.join("EFI/boot")).unwrap();
    fs::write(root.join("EFI/boot/grubx64.efi"), pattern(4097, 3)).unwrap();
    fs::write(root.join("MixedCase name.cfg"), b"joliet").unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    let image = xorriso(root, &["--norock", "-J", "-V", "config-2"]);
    let mut iso = open(&image);
    assert_eq!(iso.naming(), Naming::Joliet);
    assert_eq!(iso.volume_id(), "config-2");
    let entries = iso.entries().unwrap();
    assert_eq!(listed(&entries, false), without_modes(&source_tree(root)));
    assert_eq!(
        iso.read_file("/EFI/boot/grubx64.efi", 1 << 20).unwrap(),
        pattern(4097, 3)
    );
    let target = tempfile::tempdir().unwrap();
    iso.extract(target.path()).unwrap();
    assert_eq!(
        fs::read(target.path().join("MixedCase name.cfg")).unwrap(),
        b"joliet"
    );
    assert_eq!(
        fs::read(target.path().join("EFI/boot/grubx64.efi")).unwrap(),
        pattern(4097, 3)
    );
}

#[test]
fn plain_iso9660_names_lose_their_version() {
    let source = tempfile::tempdir().unwrap();
    let root = source.path();
    fs::create_dir(root.join("isolinux")).unwrap();
    fs::write(root.join("isolinux/vmlinuz"), b"kernel").unwrap();
    fs::write(root.join("readme.txt"), b"text").unwrap();
    let mut iso = open(&xorriso(root, &["--norock", "-V", "PLAIN"]));
    assert_eq!(iso.naming(), Naming::Plain);
    let paths: Vec<String> = iso.entries().unwrap().into_iter().map(|e| e.path).collect();
    assert_eq!(paths, ["/ISOLINUX", "/ISOLINUX/VMLINUZ", "/README.TXT"]);
    assert_eq!(iso.read_file("/ISOLINUX/VMLINUZ", 100).unwrap(), b"kernel");
}

#[test]
fn relocated_deep_directories_appear_where_they_belong() {
    // With deep_paths_off xorriso moves directories deeper than 8 levels
    // to the root (Rock Ridge RE) and leaves a child link (CL) behind.
    let source = rich_source();
    let image = xorriso_with(&["-compliance", "deep_paths_off"], source.path(), &["-R"]);
    assert!(image.windows(4).any(|w| w == b"CL\x0c\x01"), "no CL entry");
    assert!(image.windows(4).any(|w| w == b"RE\x04\x01"), "no RE entry");
    let mut iso = open(&image);
    assert_eq!(
        listed(&iso.entries().unwrap(), true),
        source_tree(source.path())
    );
    let bottom: String = (0..20).map(|l| format!("/level{l:02}")).collect();
    assert_eq!(
        iso.read_file(&format!("{bottom}/bottom.txt"), 100).unwrap(),
        b"deep down"
    );
}

#[test]
fn deeper_than_the_limit_is_refused() {
    let source = tempfile::tempdir().unwrap();
    let mut deep = source.path().to_path_buf();
    for _ in 0..70 {
        deep.push("d");
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("f"), b"x").unwrap();
    let mut iso = open(&xorriso(source.path(), &["-R"]));
    let err = iso.entries().unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err}");
    assert!(err.to_string().contains("deeper than 64"), "{err}");
}

#[test]
fn config_drive_reads_back() {
    let drive = ConfigDrive::from_ironic_dict(&json!({
        "meta_data": {"hostname": "node-1"},
        "user_data": "#cloud-config\n",
        "network_data": {"links": []},
    }))
    .unwrap()
    .with_node_defaults("1be26c0b-03f2-4d2e-ae87-c02d7f33c123", Some("node-1"));
    let mut image = Cursor::new(Vec::new());
    drive.write_iso(&mut image).unwrap();
    let mut iso = IsoImage::open(Cursor::new(image.into_inner())).unwrap();
    assert_eq!(iso.volume_id(), "config-2");
    let files: Vec<(String, Vec<u8>)> = drive.files();
    let entries = iso.entries().unwrap();
    let listed_files: Vec<&str> = entries
        .iter()
        .filter(|e| e.kind == IsoEntryKind::File)
        .map(|e| e.path.as_str())
        .collect();
    let want: Vec<String> = files.iter().map(|(p, _)| format!("/{p}")).collect();
    assert_eq!(listed_files, want);
    for (path, bytes) in &files {
        assert_eq!(&iso.read_file(path, 1 << 20).unwrap(), bytes, "{path}");
    }
    let meta: serde_json::Value = serde_json::from_slice(
        &iso.read_file("/openstack/latest/meta_data.json", 1 << 20)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(meta["uuid"], "1be26c0b-03f2-4d2e-ae87-c02d7f33c123");
}

// ---------------------------------------------------------------------------
// Crafted images.
// ---------------------------------------------------------------------------

/// A directory record of the primary tree, found by walking it.
#[derive(Debug)]
struct RawRecord {
    offset: usize,
    ident: Vec<u8>,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Every record (but `.` and `..`) of the primary tree.
fn primary_records(image: &[u8]) -> Vec<RawRecord> {
    fn walk(image: &[u8], extent: u32, size: u32, out: &mut Vec<RawRecord>) {
        let start = extent as usize * 2048;
        let mut pos = start;
        while pos < start + size as usize {
            let len = image[pos] as usize;
            if len == 0 {
                pos = (pos / 2048 + 1) * 2048;
                continue;
            }
            let record = &image[pos..pos + len];
            let ident = record[33..33 + record[32] as usize].to_vec();
            if ident != [0] && ident != [1] {
                let (child, child_size) = (le32(record, 2), le32(record, 10));
                out.push(RawRecord { offset: pos, ident });
                if record[25] & 2 != 0 {
                    walk(image, child, child_size, out);
                }
            }
            pos += len;
        }
    }
    let root = &image[16 * 2048 + 156..];
    let mut out = Vec::new();
    walk(image, le32(root, 2), le32(root, 10), &mut out);
    out
}

fn record<'a>(records: &'a [RawRecord], ident: &str) -> &'a RawRecord {
    records
        .iter()
        .find(|r| r.ident == ident.as_bytes())
        .unwrap_or_else(|| panic!("no record {ident} in {records:?}"))
}

/// Writes a both-endian 32-bit field.
fn patch_both32(image: &mut [u8], at: usize, value: u32) {
    image[at..at + 4].copy_from_slice(&value.to_le_bytes());
    image[at + 4..at + 8].copy_from_slice(&value.to_be_bytes());
}

/// Replaces the one occurrence of `from` by `to` (same length).
fn replace_once(image: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let hits: Vec<usize> = image
        .windows(from.len())
        .enumerate()
        .filter(|(_, w)| *w == from)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "{:?} occurs {} times", from, hits.len());
    image[hits[0]..hits[0] + to.len()].copy_from_slice(to);
}

fn nm(name: &str) -> Vec<u8> {
    let mut entry = vec![b'N', b'M', 5 + name.len() as u8, 1, 0];
    entry.extend_from_slice(name.as_bytes());
    entry
}

fn ucs2(name: &str) -> Vec<u8> {
    name.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

/// An extraction directory inside a scratch directory, so a test can see
/// that nothing at all was written, inside or beside it.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("target")).unwrap();
        Scratch { dir }
    }

    fn target(&self) -> std::path::PathBuf {
        self.dir.path().join("target")
    }

    fn assert_untouched(&self) {
        let mut all = Vec::new();
        fn walk(dir: &Path, out: &mut Vec<String>) {
            for entry in fs::read_dir(dir).unwrap() {
                let entry = entry.unwrap();
                out.push(entry.path().display().to_string());
                if entry.file_type().unwrap().is_dir() {
                    walk(&entry.path(), out);
                }
            }
        }
        walk(self.dir.path(), &mut all);
        assert_eq!(all, [self.target().display().to_string()]);
    }
}

fn assert_refused(image: Vec<u8>, words: &[&str]) {
    let mut iso = open(&image);
    let scratch = Scratch::new();
    let err = iso.extract(&scratch.target()).unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err}");
    for word in words {
        assert!(err.to_string().contains(word), "{err:?} lacks {word:?}");
    }
    scratch.assert_untouched();
}

#[test]
fn rock_ridge_name_dot_dot_is_refused() {
    let source = tempfile::tempdir().unwrap();
    fs::write(source.path().join("zz"), b"evil").unwrap();
    let mut image = xorriso(source.path(), &["-R"]);
    replace_once(&mut image, &nm("zz"), &nm(".."));
    let mut iso = open(&image);
    let paths: Vec<String> = iso.entries().unwrap().into_iter().map(|e| e.path).collect();
    assert_eq!(paths, ["/.."]);
    assert_refused(image, &["\"/..\"", "\"..\""]);
}

#[test]
fn rock_ridge_name_climbing_out_is_refused() {
    let source = tempfile::tempdir().unwrap();
    fs::create_dir(source.path().join("sub")).unwrap();
    fs::write(source.path().join("sub/abcdefghijk"), b"evil").unwrap();
    let mut image = xorriso(source.path(), &["-R", "-J"]);
    replace_once(&mut image, &nm("abcdefghijk"), &nm("../../etc/x"));
    assert_refused(image, &["/sub/../../etc/x", "containing \"/\""]);
}

#[test]
fn joliet_name_climbing_out_is_refused() {
    let source = tempfile::tempdir().unwrap();
    fs::write(source.path().join("abcdefghijk"), b"evil").unwrap();
    let mut image = xorriso(source.path(), &["--norock", "-J"]);
    replace_once(&mut image, &ucs2("abcdefghijk"), &ucs2("../../etc/x"));
    let mut iso = open(&image);
    assert_eq!(iso.naming(), Naming::Joliet);
    assert_eq!(iso.entries().unwrap()[0].path, "/../../etc/x");
    // Reading by path walks components, so the name cannot be reached.
    assert!(iso.read_file("/../../etc/x", 100).is_err());
    assert_refused(image, &["/../../etc/x"]);
}

#[test]
fn absolute_symlink_with_a_file_beneath_it_is_refused() {
    let source = tempfile::tempdir().unwrap();
    symlink("abcde", source.path().join("aaaa")).unwrap();
    fs::create_dir(source.path().join("bbbb")).unwrap();
    fs::write(source.path().join("bbbb/passwd"), b"root::0:0::/:/bin/sh\n").unwrap();
    let mut image = xorriso(source.path(), &["-R"]);
    // SL component "abcde" becomes ROOT + "etc": the link points at /etc.
    replace_once(
        &mut image,
        &[0, 5, b'a', b'b', b'c', b'd', b'e'],
        &[8, 0, 0, 3, b'e', b't', b'c'],
    );
    // The directory takes the link's name, so its file lies "beneath" it.
    replace_once(&mut image, &nm("bbbb"), &nm("aaaa"));
    let mut iso = open(&image);
    let entries = iso.entries().unwrap();
    assert_eq!(entries[0].kind, IsoEntryKind::Symlink("/etc".into()));
    assert_eq!(entries[2].path, "/aaaa/passwd");
    assert_refused(image, &["/aaaa", "absolute"]);
}

#[test]
fn same_name_twice_is_refused() {
    let source = tempfile::tempdir().unwrap();
    symlink("bbbb", source.path().join("aaaa")).unwrap();
    fs::create_dir(source.path().join("bbbb")).unwrap();
    fs::write(source.path().join("bbbb/passwd"), b"x").unwrap();
    let mut image = xorriso(source.path(), &["-R"]);
    replace_once(&mut image, &nm("bbbb"), &nm("aaaa"));
    assert_refused(image, &["/aaaa", "appears twice"]);
}

#[test]
fn symlinks_climbing_out_are_refused() {
    for (link, target) in [
        ("up", "../outside"),
        ("sub/up", "../../outside"),
        ("sub/deep", "../../../../../../../../../tmp"),
        ("sub/sneaky", "x/../../.."),
    ] {
        let source = tempfile::tempdir().unwrap();
        fs::create_dir(source.path().join("sub")).unwrap();
        symlink(target, source.path().join(link)).unwrap();
        fs::write(source.path().join("sub/after"), b"x").unwrap();
        let image = xorriso(source.path(), &["-R"]);
        assert_refused(image, &[&format!("/{link}"), target]);
    }
    // A link to "." then a link "through" it with "..": each alone looks
    // harmless, together they leave the target.
    let source = tempfile::tempdir().unwrap();
    symlink(".", source.path().join("s")).unwrap();
    symlink("s/..", source.path().join("x")).unwrap();
    assert_refused(xorriso(source.path(), &["-R"]), &["/x", "after descending"]);
}

#[test]
fn symlinks_that_stay_inside_are_extracted() {
    let source = tempfile::tempdir().unwrap();
    fs::create_dir_all(source.path().join("a/b")).unwrap();
    symlink("../../top", source.path().join("a/b/up2")).unwrap();
    symlink(".", source.path().join("self")).unwrap();
    symlink("a/b", source.path().join("down")).unwrap();
    fs::write(source.path().join("top"), b"top").unwrap();
    let mut iso = open(&xorriso(source.path(), &["-R"]));
    let target = tempfile::tempdir().unwrap();
    iso.extract(target.path()).unwrap();
    assert_extracted_like(source.path(), target.path());
}

#[test]
fn extent_past_the_end_is_corrupt() {
    let source = tempfile::tempdir().unwrap();
    fs::write(source.path().join("hello"), b"hello").unwrap();
    let mut image = xorriso(source.path(), &["-R", "-J"]);
    let at = record(&primary_records(&image), "HELLO.;1").offset;
    patch_both32(&mut image, at + 2, 0x00F0_0000);
    let mut iso = open(&image);
    let err = iso.entries().unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)), "{err}");
    assert!(err.to_string().contains("/hello"), "{err}");
    assert!(err.to_string().contains("past the end"), "{err}");
    assert!(matches!(
        iso.read_file("/hello", 100),
        Err(Error::Corrupt(_))
    ));
    let scratch = Scratch::new();
    assert!(matches!(
        iso.extract(&scratch.target()),
        Err(Error::Corrupt(_))
    ));
    scratch.assert_untouched();

    // A size that runs past the end is caught the same way.
    let mut image = xorriso(source.path(), &["-R"]);
    let at = record(&primary_records(&image), "HELLO.;1").offset;
    patch_both32(&mut image, at + 10, 0xFFFF_FF00);
    let err = open(&image).read_file("/hello", u64::MAX).unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)), "{err}");
}

#[test]
fn directory_looping_to_the_root_is_corrupt() {
    let source = tempfile::tempdir().unwrap();
    fs::create_dir_all(source.path().join("a/b")).unwrap();
    fs::write(source.path().join("a/b/file"), b"x").unwrap();
    for flags in [&["-R", "-J"][..], &["--norock"][..]] {
        let mut image = xorriso(source.path(), flags);
        let root_extent = le32(&image, 16 * 2048 + 156 + 2);
        let at = record(&primary_records(&image), "B").offset;
        patch_both32(&mut image, at + 2, root_extent);
        let mut iso = open(&image);
        let err = iso.entries().unwrap_err();
        assert!(matches!(err, Error::Corrupt(_)), "{err}");
        // Plain ISO9660 names are upper case.
        assert!(err.to_string().to_lowercase().contains("/a/b"), "{err}");
        assert!(err.to_string().contains("loops"), "{err}");
        let scratch = Scratch::new();
        assert!(matches!(
            iso.extract(&scratch.target()),
            Err(Error::Corrupt(_))
        ));
        scratch.assert_untouched();
    }
}

#[test]
fn multi_extent_files_are_joined() {
    let source = tempfile::tempdir().unwrap();
    fs::write(source.path().join("part1"), pattern(3000, 7)).unwrap();
    fs::write(source.path().join("part2"), pattern(5000, 8)).unwrap();
    let mut image = xorriso(source.path(), &["-R"]);
    let records = primary_records(&image);
    let first = record(&records, "PART1.;1");
    let second = record(&records, "PART2.;1");
    assert_eq!(second.offset, first.offset + image[first.offset] as usize);
    let (first_at, second_at) = (first.offset, second.offset);
    // The first record becomes part one of a multi-extent file whose last
    // part is the second record (same ISO name, as ECMA-119 demands).
    image[first_at + 25] |= 0x80;
    image[second_at + 33 + 4] = b'1';
    let mut iso = open(&image);
    let entries = iso.entries().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].path, "/part1");
    assert_eq!(entries[0].size, 8000);
    let mut want = pattern(3000, 7);
    want.extend(pattern(5000, 8));
    assert_eq!(iso.read_file("/part1", 8000).unwrap(), want);

    // A part without its last part is corrupt.
    image[second_at + 25] |= 0x80;
    let err = open(&image).entries().unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)), "{err}");
    assert!(err.to_string().contains("no last part"), "{err}");
}

#[test]
fn not_an_iso_is_refused_cleanly() {
    let err = IsoImage::open(Cursor::new(vec![0u8; 40_000])).unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)), "{err}");
    let err = IsoImage::open(Cursor::new(vec![0u8; 100])).unwrap_err();
    assert!(err.to_string().contains("too small"), "{err}");
}

#[test]
fn existing_symlink_in_the_target_is_not_written_through() {
    let source = tempfile::tempdir().unwrap();
    fs::create_dir(source.path().join("etc")).unwrap();
    fs::write(source.path().join("etc/passwd"), b"evil").unwrap();
    let mut iso = open(&xorriso(source.path(), &["-R"]));
    let scratch = tempfile::tempdir().unwrap();
    let outside = scratch.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let target = scratch.path().join("target");
    fs::create_dir(&target).unwrap();
    symlink(&outside, target.join("etc")).unwrap();
    let err = iso.extract(&target).unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err}");
    assert!(err.to_string().contains("/etc"), "{err}");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
}
