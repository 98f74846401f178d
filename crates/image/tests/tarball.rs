//! Root filesystem tarballs made by GNU tar extract faithfully; hostile
//! archives are refused without writing outside the target.
//!
//! These tests need root (owners, device nodes, trusted.* xattrs) and GNU
//! tar, getfattr/setfattr, getfacl/setfacl and setcap; they run as root in CI.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use ferric_image::tarball::{extract, ExtractOptions, ExtractReport};
use ferric_image::Error;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn run(command: &mut Command) -> Vec<u8> {
    let output = command.output().expect("running a command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// A small root filesystem with every kind of entry and metadata.
const BUILD_TREE: &str = r#"
set -eu
cd "$1"
mkdir -p etc usr/bin usr/share/doc private tmp home/user run dev var/empty
printf 'ferric\n' > etc/hostname
printf 'root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n' > etc/passwd
printf 'root:x:0:\ndaemon:x:1:\n' > etc/group
: > empty
head -c 300000 /dev/urandom > usr/bin/tool
truncate -s 8M var/sparse
printf 'middle' | dd of=var/sparse bs=1 seek=4194304 conv=notrunc status=none
printf 'end' >> var/sparse
chmod 0700 private
chmod 1777 tmp
cp usr/bin/tool usr/bin/su && chmod 4755 usr/bin/su
cp usr/bin/tool usr/bin/wall && chmod 2711 usr/bin/wall
ln -s usr/bin bin
ln -s ../usr/bin/tool etc/tool-link
ln -s /usr/share/zoneinfo/UTC etc/localtime
ln usr/bin/su usr/bin/su-hardlink
mkfifo run/initctl
mknod dev/null c 1 3
chmod 0666 dev/null
printf 'secret' > home/user/notes
chown -R 1234:5678 home/user
chown -h 1234:5678 bin
setfattr -n user.comment -v hello etc/hostname
setfattr -n user.empty etc/passwd
setfattr -n trusted.overlay.opaque -v y private
cp usr/bin/tool usr/bin/ping
setcap cap_net_raw+ep usr/bin/ping
setfacl -m u:1234:r,g:5678:rw,u:daemon:rw home/user/notes
setfacl -m u:1234:rwx home/user
setfacl -d -m u:1234:rwx,g:5678:rx home/user
i=0
find . -depth | while read -r p; do
  i=$((i + 1))
  touch -h -d "@$((1000000000 + i * 1000)).$((i * 7919))" "$p"
done
"#;

fn build_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    run(Command::new("sh")
        .args(["-c", BUILD_TREE, "sh"])
        .arg(dir.path()));
    dir
}

/// Runs GNU tar in `source` and returns the archive bytes.
fn gnu_tar(source: &Path, flags: &[&str]) -> Vec<u8> {
    let out = tempfile::NamedTempFile::new().unwrap();
    run(Command::new("tar")
        .args(flags)
        .arg("-cf")
        .arg(out.path())
        .arg("-C")
        .arg(source)
        .arg("."));
    fs::read(out.path()).unwrap()
}

const FULL: &[&str] = &[
    "--xattrs",
    "--xattrs-include=*",
    "--acls",
    "--numeric-owner",
    "-S",
];

/// What a comparison may expect to have survived.
#[derive(Clone, Copy)]
struct Fidelity {
    xattrs: bool,
    acls: bool,
    nanoseconds: bool,
}

const EVERYTHING: Fidelity = Fidelity {
    xattrs: true,
    acls: true,
    nanoseconds: true,
};

fn walk(root: &Path, relative: &Path, out: &mut Vec<PathBuf>) {
    out.push(relative.to_path_buf());
    let path = root.join(relative);
    if fs::symlink_metadata(&path).unwrap().is_dir() {
        let mut children: Vec<_> = fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        children.sort();
        for child in children {
            walk(root, &relative.join(child), out);
        }
    }
}

fn getfattr(path: &Path) -> String {
    let out = run(Command::new("getfattr")
        .args(["-h", "-d", "-m", "-", "-e", "hex", "--absolute-names"])
        .arg(path));
    String::from_utf8(out)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("# file:"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn getfacl(path: &Path) -> String {
    let out = run(Command::new("getfacl")
        .args(["-n", "--absolute-names", "--omit-header"])
        .arg(path));
    String::from_utf8(out).unwrap()
}

/// Asserts that `extracted` holds the same tree as `source`.
fn assert_same_tree(source: &Path, extracted: &Path, fidelity: Fidelity) {
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    walk(source, Path::new("."), &mut theirs);
    walk(extracted, Path::new("."), &mut ours);
    assert_eq!(ours, theirs, "the extracted tree has other names");
    for relative in &theirs {
        let (a, b) = (source.join(relative), extracted.join(relative));
        let (sa, sb) = (
            fs::symlink_metadata(&a).unwrap(),
            fs::symlink_metadata(&b).unwrap(),
        );
        let what = relative.display();
        assert_eq!(sa.mode(), sb.mode(), "mode of {what}");
        assert_eq!(
            (sa.uid(), sa.gid()),
            (sb.uid(), sb.gid()),
            "owner of {what}"
        );
        assert_eq!(sa.mtime(), sb.mtime(), "mtime of {what}");
        if fidelity.nanoseconds {
            assert_eq!(
                sa.mtime_nsec(),
                sb.mtime_nsec(),
                "mtime nanoseconds of {what}"
            );
        }
        let kind = sa.file_type();
        if kind.is_file() {
            assert_eq!(sa.len(), sb.len(), "size of {what}");
            assert_eq!(sa.nlink(), sb.nlink(), "link count of {what}");
            assert!(
                fs::read(&a).unwrap() == fs::read(&b).unwrap(),
                "contents of {what}"
            );
        }
        if kind.is_symlink() {
            assert_eq!(
                fs::read_link(&a).unwrap(),
                fs::read_link(&b).unwrap(),
                "target of {what}"
            );
        }
        if kind.is_char_device() || kind.is_block_device() {
            assert_eq!(sa.rdev(), sb.rdev(), "device number of {what}");
        }
        if fidelity.xattrs {
            assert_eq!(getfattr(&a), getfattr(&b), "xattrs of {what}");
        }
        if fidelity.acls && !kind.is_symlink() {
            assert_eq!(getfacl(&a), getfacl(&b), "ACLs of {what}");
        }
    }
    let su = fs::metadata(extracted.join("usr/bin/su")).unwrap();
    let su_link = fs::metadata(extracted.join("usr/bin/su-hardlink")).unwrap();
    assert_eq!(su.ino(), su_link.ino(), "hard links share an inode");
}

fn extract_bytes(archive: impl Read) -> (tempfile::TempDir, ExtractReport) {
    let target = tempfile::tempdir().unwrap();
    let report = extract(archive, target.path(), &ExtractOptions::default()).unwrap();
    (target, report)
}

#[test]
fn gnu_tar_posix_archive_extracts_faithfully() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let source = build_tree();
    let archive = gnu_tar(source.path(), FULL);
    let (target, report) = extract_bytes(archive.as_slice());
    assert_same_tree(source.path(), target.path(), EVERYTHING);

    // The ACL and capability really are there, not just equally absent.
    assert!(getfacl(&target.path().join("home/user/notes")).contains("user:1:rw-"));
    assert!(getfacl(&target.path().join("home/user")).contains("default:user:1234:rwx"));
    let caps = run(Command::new("getcap").arg(target.path().join("usr/bin/ping")));
    assert!(String::from_utf8_lossy(&caps).contains("cap_net_raw"));

    // Holes stay holes: 8 MiB of mostly nothing takes a few blocks.
    let sparse = fs::metadata(target.path().join("var/sparse")).unwrap();
    assert!(
        sparse.blocks() * 512 < 1024 * 1024,
        "var/sparse is not sparse: {} blocks",
        sparse.blocks()
    );

    assert_eq!(report.symlinks, 3);
    assert_eq!(report.hardlinks, 1);
    assert_eq!(report.devices, 1);
    assert_eq!(report.fifos, 1);
    assert_eq!(report.files, 10);
    assert_eq!(report.directories, 14);
    assert!(report.xattrs >= 4, "{report:?}");
    // notes (access), home/user (access and default).
    assert_eq!(report.acls, 3, "{report:?}");
}

/// Turns compressed bytes into the tar stream.
type Decoder = fn(Vec<u8>) -> Box<dyn Read>;

#[test]
fn compressed_archives_extract_faithfully() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let source = build_tree();
    let decoders: [(&str, Decoder); 4] = [
        ("-z", |b| {
            Box::new(flate2::read::MultiGzDecoder::new(std::io::Cursor::new(b)))
        }),
        ("-j", |b| {
            Box::new(bzip2::read::MultiBzDecoder::new(std::io::Cursor::new(b)))
        }),
        ("-J", |b| {
            Box::new(liblzma::read::XzDecoder::new(std::io::Cursor::new(b)))
        }),
        ("--zstd", |b| {
            Box::new(zstd::stream::read::Decoder::new(std::io::Cursor::new(b)).unwrap())
        }),
    ];
    for (flag, decoder) in decoders {
        let mut flags = FULL.to_vec();
        flags.push(flag);
        let compressed = gnu_tar(source.path(), &flags);
        assert_ne!(&compressed[257..262], b"ustar", "{flag} did not compress");
        let (target, _) = extract_bytes(decoder(compressed));
        assert_same_tree(source.path(), target.path(), EVERYTHING);
    }
}

#[test]
fn text_acls_are_converted_and_names_resolved_in_the_new_root() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    // Without --xattrs the ACLs exist only as SCHILY.acl.* text, with names.
    let source = build_tree();
    let archive = gnu_tar(source.path(), &["--acls", "--numeric-owner"]);
    let text = String::from_utf8_lossy(&archive);
    assert!(text.contains("SCHILY.acl.access") && text.contains("user:daemon:rw-"));
    assert!(!text.contains("SCHILY.xattr"));
    let (target, report) = extract_bytes(archive.as_slice());
    let fidelity = Fidelity {
        xattrs: false,
        ..EVERYTHING
    };
    assert_same_tree(source.path(), target.path(), fidelity);
    assert_eq!(report.acls, 3);
    assert_eq!(report.xattrs, 0);
}

#[test]
fn gnu_format_with_old_sparse_headers_extracts() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let source = build_tree();
    let archive = gnu_tar(source.path(), &["--format=gnu", "-S", "--numeric-owner"]);
    assert!(archive
        .chunks(512)
        .any(|h| h.len() == 512 && h[156] == b'S' && &h[257..263] == b"ustar "));
    let (target, _) = extract_bytes(archive.as_slice());
    let fidelity = Fidelity {
        xattrs: false,
        acls: false,
        nanoseconds: false,
    };
    assert_same_tree(source.path(), target.path(), fidelity);
    let sparse = fs::metadata(target.path().join("var/sparse")).unwrap();
    assert!(sparse.blocks() * 512 < 1024 * 1024);
}

#[test]
fn metadata_can_be_left_out_on_request() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let source = build_tree();
    let archive = gnu_tar(source.path(), FULL);
    let target = tempfile::tempdir().unwrap();
    let options = ExtractOptions {
        preserve_owners: false,
        preserve_xattrs: false,
        preserve_acls: false,
    };
    let report = extract(archive.as_slice(), target.path(), &options).unwrap();
    assert_eq!((report.xattrs, report.acls), (0, 0));
    let notes = target.path().join("home/user/notes");
    assert_eq!(fs::metadata(&notes).unwrap().uid(), 0);
    assert_eq!(getfattr(&notes), "");
    assert_eq!(getfattr(&target.path().join("usr/bin/ping")), "");
}

// --- Hostile archives, written by hand since GNU tar will not make them. ---

fn header(name: &str, typeflag: u8, link: &str, size: usize) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"14000000000\0");
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..265].copy_from_slice(b"ustar\x0000");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// An archive of (name, typeflag, link target, contents) entries.
fn archive(entries: &[(&str, u8, &str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, typeflag, link, data) in entries {
        out.extend(header(name, *typeflag, link, data.len()));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend([0u8; 1024]);
    out
}

/// Extracts into `<scratch>/root` and returns the error with the scratch dir.
fn extract_hostile(bytes: &[u8]) -> (tempfile::TempDir, Error) {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("root");
    fs::create_dir(&root).unwrap();
    fs::create_dir(scratch.path().join("outside")).unwrap();
    let err =
        extract(bytes, &root, &ExtractOptions::default()).expect_err("the archive must be refused");
    (scratch, err)
}

fn assert_refused(err: &Error, naming: &str) {
    assert!(matches!(err, Error::Refused(_)), "not a refusal: {err:?}");
    assert!(
        err.to_string().contains(naming),
        "{err} does not name {naming}"
    );
}

fn assert_nothing_outside(scratch: &Path) {
    let mut names: Vec<_> = fs::read_dir(scratch)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["outside", "root"]);
    assert_eq!(
        fs::read_dir(scratch.join("outside")).unwrap().count(),
        0,
        "something was written outside"
    );
}

#[test]
fn dot_dot_is_refused() {
    let (scratch, err) = extract_hostile(&archive(&[
        ("fine", b'0', "", b"ok"),
        ("../escape", b'0', "", b"evil"),
    ]));
    assert_refused(&err, "../escape");
    assert_nothing_outside(scratch.path());
    assert_eq!(fs::read(scratch.path().join("root/fine")).unwrap(), b"ok");

    let (scratch, err) = extract_hostile(&archive(&[("a/../../b", b'0', "", b"evil")]));
    assert_refused(&err, "a/../../b");
    assert_nothing_outside(scratch.path());
    assert!(
        !scratch.path().join("root/a").exists(),
        "refused before writing anything"
    );
}

#[test]
fn absolute_paths_are_refused() {
    let name = format!("/tmp/ferric-tarball-abs-{}", std::process::id());
    let (scratch, err) = extract_hostile(&archive(&[(&name, b'0', "", b"evil")]));
    assert_refused(&err, &name);
    assert_nothing_outside(scratch.path());
    assert!(!Path::new(&name).exists());
}

#[test]
fn writing_through_a_symlink_is_refused() {
    // An absolute symlink is fine in a root filesystem; writing through it is not.
    let scratch = tempfile::tempdir().unwrap();
    let outside = scratch.path().join("outside");
    let link = outside.to_str().unwrap().to_owned();
    let (scratch, err) = extract_hostile(&archive(&[
        ("etc", b'2', &link, b""),
        ("etc/passwd", b'0', "", b"evil"),
    ]));
    assert_refused(&err, "etc/passwd");
    assert!(err.to_string().contains("symbolic link `etc`"), "{err}");
    assert_nothing_outside(scratch.path());
    assert!(fs::symlink_metadata(scratch.path().join("root/etc"))
        .unwrap()
        .is_symlink());

    // Also for directories and symlinks made through the link.
    for entry in [
        ("etc/sub", b'5', ""),
        ("etc/l", b'2', "x"),
        ("etc/fifo", b'6', ""),
    ] {
        let (scratch, err) = extract_hostile(&archive(&[
            ("etc", b'2', "../outside", b""),
            (entry.0, entry.1, entry.2, b""),
        ]));
        // The relative link already climbs out and is refused first.
        assert_refused(&err, "etc");
        assert_nothing_outside(scratch.path());
        let (scratch, err) = extract_hostile(&archive(&[
            ("etc", b'2', &link, b""),
            (entry.0, entry.1, entry.2, b""),
        ]));
        assert_refused(&err, entry.0);
        assert_nothing_outside(scratch.path());
    }
}

#[test]
fn relative_symlinks_climbing_out_are_refused() {
    let (scratch, err) = extract_hostile(&archive(&[
        ("x", b'2', "../..", b""),
        ("x/y", b'0', "", b"evil"),
    ]));
    assert_refused(&err, "`x`");
    assert_nothing_outside(scratch.path());
    let (scratch, err) = extract_hostile(&archive(&[("a/b/c", b'2', "../../../etc", b"")]));
    assert_refused(&err, "a/b/c");
    assert_nothing_outside(scratch.path());

    // Climbing that stays inside is normal.
    let target = tempfile::tempdir().unwrap();
    extract(
        archive(&[
            ("a/b/c", b'2', "../../etc", b""),
            ("etc2", b'2', "/etc", b""),
        ])
        .as_slice(),
        target.path(),
        &ExtractOptions::default(),
    )
    .unwrap();
    assert_eq!(
        fs::read_link(target.path().join("a/b/c")).unwrap(),
        Path::new("../../etc")
    );
    assert_eq!(
        fs::read_link(target.path().join("etc2")).unwrap(),
        Path::new("/etc")
    );
}

#[test]
fn hard_links_out_of_the_archive_are_refused() {
    let (scratch, err) = extract_hostile(&archive(&[("passwd", b'1', "/etc/passwd", b"")]));
    assert_refused(&err, "/etc/passwd");
    assert_nothing_outside(scratch.path());
    assert!(!scratch.path().join("root/passwd").exists());

    let (scratch, err) = extract_hostile(&archive(&[("l", b'1', "../outside/x", b"")]));
    assert_refused(&err, "../outside/x");
    assert_nothing_outside(scratch.path());

    let (scratch, err) = extract_hostile(&archive(&[("l", b'1', "missing", b"")]));
    assert_refused(&err, "does not exist");
    assert_nothing_outside(scratch.path());

    // A hard link through a symlink to outside.
    let link = scratch.path().join("outside").to_str().unwrap().to_owned();
    let (scratch2, err) = extract_hostile(&archive(&[
        ("o", b'2', &link, b""),
        ("l", b'1', "o/x", b""),
    ]));
    assert_refused(&err, "o/x");
    assert_nothing_outside(scratch2.path());
}

#[test]
fn a_later_file_replaces_a_hard_link_instead_of_writing_through_it() {
    let target = tempfile::tempdir().unwrap();
    let bytes = archive(&[
        ("original", b'0', "", b"original"),
        ("alias", b'1', "original", b""),
        ("alias", b'0', "", b"replaced"),
    ]);
    extract(bytes.as_slice(), target.path(), &ExtractOptions::default()).unwrap();
    assert_eq!(
        fs::read(target.path().join("original")).unwrap(),
        b"original"
    );
    assert_eq!(fs::read(target.path().join("alias")).unwrap(), b"replaced");
}

#[test]
fn truncated_and_garbage_archives_are_corrupt() {
    let target = tempfile::tempdir().unwrap();
    let mut bytes = archive(&[("file", b'0', "", &[7u8; 2000])]);
    bytes.truncate(1024);
    let err = extract(bytes.as_slice(), target.path(), &ExtractOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains("file"), "{err}");

    let err = extract(
        &[0x42u8; 4096][..],
        target.path(),
        &ExtractOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)), "{err:?}");
}

#[test]
fn every_gnu_sparse_version_extracts() {
    let source = tempfile::tempdir().unwrap();
    let script = "set -eu; cd \"$1\"; truncate -s 3M a; printf start | dd of=a conv=notrunc status=none; \
                  printf middle | dd of=a bs=1 seek=1500000 conv=notrunc status=none; printf end >> a";
    run(Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(source.path()));
    let expected = fs::read(source.path().join("a")).unwrap();
    for version in ["0.0", "0.1", "1.0"] {
        let flag = format!("--sparse-version={version}");
        let archive = gnu_tar(source.path(), &["--format=posix", "-S", &flag]);
        let (target, report) = extract_bytes(archive.as_slice());
        let extracted = target.path().join("a");
        assert!(
            fs::read(&extracted).unwrap() == expected,
            "contents with sparse {version}"
        );
        assert!(
            fs::metadata(&extracted).unwrap().blocks() * 512 < 1024 * 1024,
            "holes with sparse {version}"
        );
        assert_eq!(report.files, 1, "with sparse {version}: {report:?}");
        assert!(report.bytes < 100_000, "with sparse {version}: {report:?}");
    }
}
