//! `ferric image ...` and `ferric configdrive build` as an operator runs them.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn ferric(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferric"))
        .args(args)
        .output()
        .expect("ferric runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn tool(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect("tool runs");
    assert!(out.status.success(), "{cmd} {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn inspect_accepts_and_refuses_with_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.qcow2");
    let bad = dir.path().join("bad.qcow2");
    tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", p(&good), "64M"],
    );
    tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            "/etc/shadow",
            "-u",
            p(&bad),
            "64M",
        ],
    );

    let out = ferric(&["image", "inspect", p(&good)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("qcow2 image, virtual size 67108864 bytes: accepted"),
        "{}",
        text(&out)
    );

    let out = ferric(&["--format", "json", "image", "inspect", p(&good)]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["format"], "qcow2");
    assert_eq!(json["virtual_size"], 67108864);
    assert_eq!(json["verdict"], "accepted");

    let out = ferric(&["image", "inspect", p(&bad)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("refused"), "{}", text(&out));
    assert!(text(&out).contains("/etc/shadow"), "{}", text(&out));

    let out = ferric(&["image", "inspect", "--declared-format", "raw", p(&good)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("refused"), "{}", text(&out));

    // Refused by the policy, not for what it is: the format is still shown.
    let out = ferric(&[
        "--format",
        "json",
        "image",
        "inspect",
        "--permitted",
        "raw",
        p(&good),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["format"], "qcow2");
    assert_eq!(json["virtual_size"], 67108864);
    assert_eq!(json["verdict"], "refused");
    assert!(json["reason"].as_str().unwrap().contains("qcow2"), "{json}");
}

#[test]
fn convert_and_bmap() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let qcow2 = dir.path().join("disk.qcow2");
    let out_raw = dir.path().join("out.raw");
    let map = dir.path().join("out.bmap");
    fs::write(&raw, []).unwrap();
    let file = fs::OpenOptions::new().write(true).open(&raw).unwrap();
    file.set_len(32 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    file.write_all_at(&[0xab; 1 << 20], 8 << 20).unwrap();
    tool(
        "qemu-img",
        &[
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "qcow2",
            p(&raw),
            p(&qcow2),
        ],
    );
    let sum = tool("sha256sum", &[p(&qcow2)]);
    let sum = sum.split_whitespace().next().unwrap();

    // A checksum file: the image's own line is picked, whatever else it holds.
    let sums = dir.path().join("SHA256SUMS");
    fs::write(
        &sums,
        format!("{}  other.qcow2\n{sum}  disk.qcow2\n", "1".repeat(64)),
    )
    .unwrap();
    let sums_url = format!("file://{}", p(&sums));
    let out = ferric(&[
        "image",
        "convert",
        "--checksum",
        &sums_url,
        p(&qcow2),
        p(&out_raw),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("checksum verified"), "{}", text(&out));
    fs::remove_file(&out_raw).unwrap();
    fs::write(&sums, format!("{sum}  other.qcow2\n")).unwrap();
    let out = ferric(&[
        "image",
        "convert",
        "--checksum",
        &sums_url,
        p(&qcow2),
        p(&out_raw),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("disk.qcow2"), "{}", text(&out));
    assert!(!out_raw.exists());

    // A wrong checksum converts nothing and leaves no output file.
    let wrong = "0".repeat(64);
    let out = ferric(&[
        "image",
        "convert",
        "--checksum",
        &wrong,
        p(&qcow2),
        p(&out_raw),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("checksum mismatch"), "{}", text(&out));
    assert!(!out_raw.exists());

    let out = ferric(&[
        "image",
        "convert",
        "--checksum",
        sum,
        "--bmap",
        p(&map),
        p(&qcow2),
        p(&out_raw),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("checksum verified"), "{}", text(&out));
    assert_eq!(fs::read(&out_raw).unwrap(), fs::read(&raw).unwrap());
    // The output is sparse: far fewer blocks than its size.
    use std::os::unix::fs::MetadataExt;
    assert!(fs::metadata(&out_raw).unwrap().blocks() * 512 < 4 << 20);
    let written: serde_json::Value = serde_json::from_slice(&fs::read(&map).unwrap()).unwrap();
    assert_eq!(written["image_size"], 32 << 20);
    assert_eq!(written["mapped_bytes"], 1 << 20);

    let out = ferric(&["image", "bmap", p(&raw)]);
    assert!(out.status.success(), "{}", text(&out));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["ranges"], written["ranges"]);
    assert_eq!(printed["ranges"][0]["start"], 8 << 20);
}

#[test]
fn write_verifies_before_committing() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let target = dir.path().join("target");
    tool("truncate", &["-s", "16M", p(&raw)]);
    tool("sgdisk", &["-n", "1:2048:0", p(&raw)]);
    let sum = tool("sha256sum", &[p(&raw)]);
    let sum = sum.split_whitespace().next().unwrap();
    let out = ferric(&["image", "write", "--checksum", sum, p(&raw), p(&target)]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fs::read(&target).unwrap(), fs::read(&raw).unwrap());

    let out = ferric(&[
        "image",
        "write",
        "--checksum",
        &"1".repeat(64),
        p(&raw),
        p(&target),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("checksum mismatch"), "{}", text(&out));
    assert!(fs::read(&target).unwrap()[..1 << 20]
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn configdrive_build_from_files_and_from_ironic_json() {
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("meta.json");
    let user = dir.path().join("user-data");
    let iso = dir.path().join("drive.iso");
    let vfat = dir.path().join("drive.vfat");
    fs::write(
        &meta,
        r#"{"uuid": "0b3c9c1e-5a4d-4f6e-9a1b-2c3d4e5f6a7b", "hostname": "n1"}"#,
    )
    .unwrap();
    // User data need not be text: a gzipped cloud-config goes in as it is.
    let gzipped = [0x1f, 0x8b, 0x08, 0x00, 0xff, 0xfe, 0x00, 0x01];
    fs::write(&user, gzipped).unwrap();
    let out = ferric(&[
        "configdrive",
        "build",
        "--meta-data",
        p(&meta),
        "--user-data",
        p(&user),
        "-o",
        p(&iso),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let data = Command::new("isoinfo")
        .args(["-R", "-i", p(&iso), "-x", "/openstack/latest/user_data"])
        .output()
        .unwrap();
    assert_eq!(data.stdout, gzipped);
    fs::write(&user, "#cloud-config\nruncmd: [echo hi]\n").unwrap();

    let out = ferric(&[
        "configdrive",
        "build",
        "--meta-data",
        p(&meta),
        "--user-data",
        p(&user),
        "-o",
        p(&iso),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let info = tool("isoinfo", &["-d", "-i", p(&iso)]);
    assert!(info.contains("Volume id: config-2"), "{info}");
    let data = tool(
        "isoinfo",
        &["-R", "-i", p(&iso), "-x", "/openstack/latest/user_data"],
    );
    assert_eq!(data, "#cloud-config\nruncmd: [echo hi]\n");

    let out = ferric(&[
        "configdrive",
        "build",
        "--meta-data",
        p(&meta),
        "--format",
        "vfat",
        "-o",
        p(&vfat),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let probe = tool("blkid", &["-o", "value", "-s", "TYPE", p(&vfat)]);
    assert_eq!(probe.trim(), "vfat");

    let dict = dir.path().join("dict.json");
    fs::write(
        &dict,
        r#"{"meta_data": {"uuid": "u"}, "user_data": {"ignition": {"version": "3.4.0"}}}"#,
    )
    .unwrap();
    let encoded = dir.path().join("drive.b64");
    let out = ferric(&[
        "configdrive",
        "build",
        "--from-json",
        p(&dict),
        "--gzip-base64",
        "-o",
        p(&encoded),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let decoded = dir.path().join("decoded.iso");
    tool(
        "sh",
        &[
            "-c",
            &format!("base64 -d < {} | gunzip > {}", p(&encoded), p(&decoded)),
        ],
    );
    let user_data = tool(
        "isoinfo",
        &["-R", "-i", p(&decoded), "-x", "/openstack/latest/user_data"],
    );
    let parsed: serde_json::Value = serde_json::from_str(&user_data).unwrap();
    assert_eq!(parsed["ignition"]["version"], "3.4.0");

    // Bad input: meta_data that is not JSON.
    fs::write(&meta, "not json").unwrap();
    let out = ferric(&[
        "configdrive",
        "build",
        "--meta-data",
        p(&meta),
        "-o",
        p(&iso),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("is not valid JSON"), "{}", text(&out));
}
