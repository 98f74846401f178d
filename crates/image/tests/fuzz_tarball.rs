//! Mutated tar archives never panic, never write outside the target, and
//! either extract or fail with a clean error.

use std::fs;

use ferric_image::tarball::{extract, ExtractOptions};
use proptest::prelude::*;

fn header(name: &[u8], typeflag: u8, link: &[u8], size: usize, mode: &[u8; 8]) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(mode);
    h[108..116].copy_from_slice(b"0002322\0");
    h[116..124].copy_from_slice(b"0013056\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"14000000000\0");
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..265].copy_from_slice(b"ustar\x0000");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = [key.as_bytes(), b"=", value, b"\n"].concat();
    let mut length = body.len() + 2;
    while format!("{length} ").len() + body.len() != length {
        length += 1;
    }
    [format!("{length} ").as_bytes(), &body].concat()
}

fn push(out: &mut Vec<u8>, header: Vec<u8>, data: &[u8]) {
    HEADERS.with(|h| h.borrow_mut().push(out.len()));
    out.extend(header);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

thread_local! {
    /// Where `seed` put its headers, so that mutations can keep checksums valid.
    static HEADERS: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Recomputes the checksum of the header at `at`.
fn fix_checksum(bytes: &mut [u8], at: usize) {
    let Some(h) = bytes.get_mut(at..at + 512) else {
        return;
    };
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// A small archive exercising most of the reader: directories, files, PAX
/// xattrs and ACLs, GNU long names, GNU sparse 1.0, symbolic and hard links.
fn seed() -> Vec<u8> {
    HEADERS.with(|h| h.borrow_mut().clear());
    let mut out = Vec::new();
    push(&mut out, header(b"dir/", b'5', b"", 0, b"0000750\0"), b"");
    let pax = [
        pax_record("SCHILY.xattr.user.note", b"a\nb"),
        pax_record(
            "SCHILY.acl.access",
            b"user::rw-\nuser:1234:r--\ngroup::r--\nmask::r--\nother::---\n",
        ),
        pax_record("mtime", b"1234567890.5"),
    ]
    .concat();
    push(
        &mut out,
        header(b"PaxHeaders/f", b'x', b"", pax.len(), b"0000644\0"),
        &pax,
    );
    push(
        &mut out,
        header(b"dir/f", b'0', b"", 5, b"0004755\0"),
        b"hello",
    );
    let long = b"dir/a-rather-long-name-that-needs-a-gnu-extension-header-because-it-exceeds-one-hundred-bytes-ok";
    push(
        &mut out,
        header(b"././@LongLink", b'L', b"", long.len(), b"0000644\0"),
        long,
    );
    push(
        &mut out,
        header(b"dir/short", b'0', b"", 3, b"0000600\0"),
        b"abc",
    );
    let sparse = [
        pax_record("GNU.sparse.major", b"1"),
        pax_record("GNU.sparse.minor", b"0"),
        pax_record("GNU.sparse.name", b"dir/sparse"),
        pax_record("GNU.sparse.realsize", b"8192"),
    ]
    .concat();
    push(
        &mut out,
        header(b"PaxHeaders/s", b'x', b"", sparse.len(), b"0000644\0"),
        &sparse,
    );
    let mut data = b"1\n4096\n3\n".to_vec();
    data.resize(512, 0);
    data.extend_from_slice(b"xyz");
    push(
        &mut out,
        header(b"GNUSparseFile/s", b'0', b"", data.len(), b"0000644\0"),
        &data,
    );
    push(
        &mut out,
        header(b"dir/link", b'2', b"f", 0, b"0000777\0"),
        b"",
    );
    push(
        &mut out,
        header(b"dir/hard", b'1', b"dir/f", 0, b"0000644\0"),
        b"",
    );
    push(&mut out, header(b"dir/p", b'6', b"", 0, b"0000644\0"), b"");
    out.extend([0u8; 1024]);
    out
}

#[test]
fn the_seed_extracts() {
    let target = tempfile::tempdir().unwrap();
    let report = extract(seed().as_slice(), target.path(), &ExtractOptions::default()).unwrap();
    assert_eq!(report.files, 3);
    assert_eq!(report.symlinks, 1);
    assert_eq!(report.hardlinks, 1);
    assert_eq!(report.fifos, 1);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!((report.xattrs, report.acls), (1, 1));
    }
    assert_eq!(
        fs::read(target.path().join("dir/sparse")).unwrap()[4096..4099],
        *b"xyz"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn mutated_archives_fail_cleanly(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in prop::option::of(any::<prop::sample::Index>()),
        keep_checksums_valid in any::<bool>(),
    ) {
        let mut bytes = seed();
        for (at, value) in &edits {
            let i = at.index(bytes.len());
            bytes[i] = *value;
        }
        // Otherwise most header edits stop at the checksum.
        if keep_checksums_valid {
            for at in HEADERS.with(|h| h.borrow().clone()) {
                fix_checksum(&mut bytes, at);
            }
        }
        if let Some(cut) = cut {
            let len = cut.index(bytes.len());
            bytes.truncate(len);
        }
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().join("root");
        fs::create_dir(&root).unwrap();
        // Ok or an Error value: either is fine, a panic is not.
        let _ = extract(bytes.as_slice(), &root, &ExtractOptions::default());
        let names: Vec<_> = fs::read_dir(scratch.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        prop_assert_eq!(names, vec![std::ffi::OsString::from("root")]);
    }
}
