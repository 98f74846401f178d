//! Mutates a small real ISO (made once with xorriso: Rock Ridge, Joliet,
//! subdirectories, a symbolic link, continuation areas) and runs the whole
//! reader on it: no panic, only clean errors (never an I/O error, which
//! would mean a read past a bound that was not checked), and nothing written
//! outside the extraction directory.

use std::fs;
use std::io::Cursor;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use ferric_image::iso::{IsoEntryKind, IsoImage};
use ferric_image::Error;
use proptest::prelude::*;

fn small_iso() -> &'static [u8] {
    static ISO: OnceLock<Vec<u8>> = OnceLock::new();
    ISO.get_or_init(|| {
        let source = tempfile::tempdir().expect("tempdir");
        let root = source.path();
        fs::create_dir_all(root.join("boot/grub")).unwrap();
        fs::write(root.join("boot/vmlinuz"), b"kernel").unwrap();
        fs::write(root.join("boot/grub/grub.cfg"), b"menuentry x {}\n").unwrap();
        fs::write(root.join("empty"), b"").unwrap();
        fs::write(root.join("a somewhat long file name.txt"), b"long").unwrap();
        symlink("boot/vmlinuz", root.join("vmlinuz")).unwrap();
        symlink("../empty", root.join("boot/up")).unwrap();
        let out = tempfile::tempdir().expect("tempdir");
        let iso = out.path().join("small.iso");
        let status = Command::new("xorriso")
            .args(["-as", "mkisofs", "-R", "-J", "-no-pad", "-V", "FUZZ", "-o"])
            .arg(&iso)
            .arg(root)
            .output()
            .expect("running xorriso (Debian package xorriso)");
        assert!(status.status.success(), "{:?}", status);
        fs::read(&iso).unwrap()
    })
}

fn le32(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize
}

/// The bytes worth mutating: the volume descriptors, every directory of
/// both trees (up to its last used byte) and the Rock Ridge continuation
/// areas. Mutating file data or padding would test little.
fn hot_offsets() -> &'static [usize] {
    static HOT: OnceLock<Vec<usize>> = OnceLock::new();
    HOT.get_or_init(|| {
        let image = small_iso();
        let mut sectors = vec![16usize, 17, 18];
        let mut dirs: Vec<(usize, usize)> = Vec::new();
        for descriptor in [16usize, 17] {
            let d = &image[descriptor * 2048..];
            if &d[1..6] == b"CD001" && (d[0] == 1 || d[0] == 2) {
                dirs.push((le32(d, 156 + 2), le32(d, 156 + 10)));
            }
        }
        while let Some((extent, size)) = dirs.pop() {
            let data = &image[extent * 2048..extent * 2048 + size];
            sectors.extend((0..size / 2048).map(|s| extent + s));
            let mut pos = 0;
            while pos < data.len() {
                let len = data[pos] as usize;
                if len == 0 {
                    pos = (pos / 2048 + 1) * 2048;
                    continue;
                }
                let record = &data[pos..pos + len];
                let ident = &record[33..33 + record[32] as usize];
                if record[25] & 2 != 0 && ident != [0] && ident != [1] {
                    dirs.push((le32(record, 2), le32(record, 10)));
                }
                if let Some(ce) = record.windows(4).position(|w| w == b"CE\x1c\x01") {
                    sectors.push(le32(record, ce + 4));
                }
                pos += len;
            }
        }
        sectors.sort_unstable();
        sectors.dedup();
        let mut hot = Vec::new();
        for sector in sectors {
            let bytes = &image[sector * 2048..(sector + 1) * 2048];
            let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
            hot.extend((0..used).map(|o| sector * 2048 + o));
        }
        hot
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Byte(usize, u8),
    /// A 32-bit little-endian field (extents, sizes, CE fields).
    Word(usize, u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let offset = (0..hot_offsets().len()).prop_map(|i| hot_offsets()[i]);
    let word = prop_oneof![
        Just(0u32),
        Just(1),
        Just(16),
        Just(18),
        Just(19),
        Just(20),
        Just(0xFFFF_FFFF),
        Just(0x7FFF_FFFF),
        any::<u32>(),
    ];
    prop_oneof![
        (offset.clone(), any::<u8>()).prop_map(|(o, b)| Mutation::Byte(o, b)),
        (offset, word).prop_map(|(o, w)| Mutation::Word(o, w)),
    ]
}

fn mutated(mutations: &[Mutation]) -> Vec<u8> {
    let mut image = small_iso().to_vec();
    for m in mutations {
        match *m {
            Mutation::Byte(o, b) => image[o] = b,
            Mutation::Word(o, w) => {
                let end = (o + 4).min(image.len());
                image[o..end].copy_from_slice(&w.to_le_bytes()[..end - o]);
            }
        }
    }
    image
}

fn clean(err: &Error) {
    assert!(
        !matches!(err, Error::Io { .. }),
        "unexpected I/O error: {err:?}"
    );
    assert!(!err.to_string().is_empty());
}

/// Every symbolic link in the extracted tree resolves (if it resolves at
/// all) inside the target.
fn assert_contained(target: &Path) {
    assert_links_inside(target, &target.canonicalize().unwrap());
}

fn assert_links_inside(dir: &Path, canonical_target: &Path) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            if let Ok(resolved) = entry.path().canonicalize() {
                assert!(
                    resolved.starts_with(canonical_target),
                    "{} resolves to {}",
                    entry.path().display(),
                    resolved.display()
                );
            }
        } else if kind.is_dir() {
            assert_links_inside(&entry.path(), canonical_target);
        }
    }
}

fn run(image: Vec<u8>) {
    let mut iso = match IsoImage::open(Cursor::new(image)) {
        Ok(iso) => iso,
        Err(err) => return clean(&err),
    };
    let _ = iso.volume_id();
    match iso.entries() {
        Ok(entries) => {
            for entry in entries.iter().take(50) {
                if entry.kind == IsoEntryKind::File {
                    match iso.read_file(&entry.path, 1 << 20) {
                        Ok(data) => assert_eq!(data.len() as u64, entry.size),
                        Err(err) => clean(&err),
                    }
                    if let Err(err) = iso.copy_file(&entry.path, &mut std::io::sink()) {
                        clean(&err);
                    }
                }
            }
        }
        Err(err) => clean(&err),
    }
    let scratch = tempfile::tempdir().unwrap();
    let target = scratch.path().join("target");
    fs::create_dir(&target).unwrap();
    if let Err(err) = iso.extract(&target) {
        clean(&err);
    }
    let beside: Vec<_> = fs::read_dir(scratch.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, ["target"]);
    assert_contained(&target);
}

#[test]
fn the_unmutated_image_extracts() {
    let mut iso = IsoImage::open(Cursor::new(small_iso().to_vec())).unwrap();
    assert_eq!(iso.entries().unwrap().len(), 8);
    let scratch = tempfile::tempdir().unwrap();
    let summary = iso.extract(scratch.path()).unwrap();
    assert_eq!((summary.files, summary.symlinks), (4, 2));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn mutated_images_fail_cleanly(mutations in proptest::collection::vec(mutation(), 1..6)) {
        run(mutated(&mutations));
    }
}
