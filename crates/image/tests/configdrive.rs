//! Config drives built here and read back with real tools: isoinfo, xorriso,
//! blkid, fsck.fat and mtools.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use ferric_image::configdrive::{self, ConfigDrive, MAX_SIZE};
use ferric_image::Error;
use flate2::write::GzEncoder;
use serde_json::{json, Value};

const NODE_UUID: &str = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123";

/// Runs a tool and returns its stdout; fails the test if it fails.
fn run(program: &str, args: &[&str]) -> Vec<u8> {
    let output = Command::new(program)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|err| panic!("running {program}: {err}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn run_text(program: &str, args: &[&str]) -> String {
    String::from_utf8(run(program, args)).expect("tool output is UTF-8")
}

/// Bytes that are not text: every byte value, in a pseudo-random order.
fn binary_bytes(len: usize) -> Vec<u8> {
    let mut state: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        })
        .collect()
}

fn full_dict() -> Value {
    json!({
        "meta_data": {"hostname": "node-1.example.com", "public_keys": {"k": "ssh-ed25519 AAAA"}},
        "network_data": {"links": [{"id": "eth0", "type": "phy"}], "networks": [], "services": []},
        "user_data": "#cloud-config\nruncmd:\n  - echo hello\n",
        "vendor_data": {"cloud": {"region": "r1"}},
    })
}

fn full_drive() -> ConfigDrive {
    ConfigDrive::from_ironic_dict(&full_dict())
        .expect("valid dict")
        .with_node_defaults(NODE_UUID, Some("node-1"))
}

fn write_iso_file(drive: &ConfigDrive, dir: &Path) -> std::path::PathBuf {
    let path = dir.join("configdrive.iso");
    let mut file = fs::File::create(&path).unwrap();
    let size = drive.write_iso(&mut file).expect("ISO written");
    assert_eq!(size, file.metadata().unwrap().len());
    assert_eq!(size % 2048, 0, "ISO size is whole sectors");
    path
}

fn write_vfat_file(drive: &ConfigDrive, dir: &Path) -> std::path::PathBuf {
    let path = dir.join("configdrive.vfat");
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let size = drive.write_vfat(&mut file).expect("VFAT written");
    assert_eq!(size, file.metadata().unwrap().len());
    path
}

const FULL_PATHS: [&str; 8] = [
    "openstack/2012-08-10/meta_data.json",
    "openstack/2012-08-10/network_data.json",
    "openstack/2012-08-10/user_data",
    "openstack/2012-08-10/vendor_data2.json",
    "openstack/latest/meta_data.json",
    "openstack/latest/network_data.json",
    "openstack/latest/user_data",
    "openstack/latest/vendor_data2.json",
];

fn paths(drive: &ConfigDrive) -> Vec<String> {
    drive.files().into_iter().map(|(path, _)| path).collect()
}

// ---------------------------------------------------------------------------
// The dict form and the file layout
// ---------------------------------------------------------------------------

#[test]
fn files_of_a_full_dict_are_the_openstack_layout_with_dated_copies() {
    assert_eq!(paths(&full_drive()), FULL_PATHS);
}

#[test]
fn files_without_network_vendor_and_user_data_are_only_meta_data() {
    let drive = ConfigDrive::from_ironic_dict(&json!({}))
        .unwrap()
        .with_node_defaults(NODE_UUID, None);
    assert_eq!(
        paths(&drive),
        [
            "openstack/2012-08-10/meta_data.json",
            "openstack/latest/meta_data.json"
        ]
    );
}

#[test]
fn empty_or_null_parts_give_no_file_as_in_openstacksdk() {
    let drive = ConfigDrive::from_ironic_dict(&json!({
        "meta_data": {}, "network_data": {}, "vendor_data": {}, "user_data": ""
    }))
    .unwrap();
    assert_eq!(
        paths(&drive),
        [
            "openstack/2012-08-10/meta_data.json",
            "openstack/latest/meta_data.json"
        ]
    );
    let drive = ConfigDrive::from_ironic_dict(&json!({"user_data": null})).unwrap();
    assert_eq!(drive.user_data, None);
}

#[test]
fn network_data_absent_leaves_the_other_files() {
    let mut dict = full_dict();
    dict.as_object_mut().unwrap().remove("network_data");
    let drive = ConfigDrive::from_ironic_dict(&dict).unwrap();
    assert_eq!(drive.network_data, None);
    assert_eq!(
        paths(&drive),
        [
            "openstack/2012-08-10/meta_data.json",
            "openstack/2012-08-10/user_data",
            "openstack/2012-08-10/vendor_data2.json",
            "openstack/latest/meta_data.json",
            "openstack/latest/user_data",
            "openstack/latest/vendor_data2.json",
        ]
    );
}

#[test]
fn dated_copies_equal_latest() {
    let files = full_drive().files();
    for name in [
        "meta_data.json",
        "network_data.json",
        "user_data",
        "vendor_data2.json",
    ] {
        let get = |version: &str| {
            let path = format!("openstack/{version}/{name}");
            files
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, bytes)| bytes.clone())
                .unwrap_or_else(|| panic!("{path} missing"))
        };
        assert_eq!(get("2012-08-10"), get("latest"), "{name}");
    }
}

#[test]
fn file_contents_are_the_json_and_bytes_given() {
    let files = full_drive().files();
    let get = |path: &str| {
        files
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .unwrap()
    };
    let meta: Value = serde_json::from_slice(&get("openstack/latest/meta_data.json")).unwrap();
    assert_eq!(
        meta,
        json!({
            "hostname": "node-1.example.com",
            "public_keys": {"k": "ssh-ed25519 AAAA"},
            "uuid": NODE_UUID,
            "name": "node-1",
        })
    );
    let network: Value =
        serde_json::from_slice(&get("openstack/latest/network_data.json")).unwrap();
    assert_eq!(network, full_dict()["network_data"]);
    let vendor: Value = serde_json::from_slice(&get("openstack/latest/vendor_data2.json")).unwrap();
    assert_eq!(vendor, full_dict()["vendor_data"]);
    assert_eq!(
        get("openstack/latest/user_data"),
        b"#cloud-config\nruncmd:\n  - echo hello\n"
    );
}

#[test]
fn user_data_object_or_array_is_serialised_as_json() {
    let ignition = json!({"ignition": {"version": "3.4.0"}, "storage": {"files": []}});
    let drive = ConfigDrive::from_ironic_dict(&json!({"user_data": ignition})).unwrap();
    let bytes = drive.user_data.expect("user_data set");
    assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), ignition);

    let drive = ConfigDrive::from_ironic_dict(&json!({"user_data": [1, "two"]})).unwrap();
    assert_eq!(drive.user_data.as_deref(), Some(&b"[1,\"two\"]"[..]));

    // Ironic dumps even an empty object: "{}" is a true bytes value.
    let drive = ConfigDrive::from_ironic_dict(&json!({"user_data": {}})).unwrap();
    assert_eq!(drive.user_data.as_deref(), Some(&b"{}"[..]));
}

#[test]
fn user_data_string_is_utf8() {
    let drive = ConfigDrive::from_ironic_dict(&json!({"user_data": "héllo ✓"})).unwrap();
    assert_eq!(drive.user_data.unwrap(), "héllo ✓".as_bytes());
}

#[test]
fn node_defaults_fill_uuid_and_name_only_when_absent() {
    let drive = ConfigDrive::from_ironic_dict(&json!({})).unwrap();
    let filled = drive.clone().with_node_defaults(NODE_UUID, Some("node-1"));
    assert_eq!(
        Value::Object(filled.meta_data),
        json!({"uuid": NODE_UUID, "name": "node-1"})
    );

    // No name on the node: Ironic adds only the uuid (`if node.name`).
    let filled = drive.clone().with_node_defaults(NODE_UUID, None);
    assert_eq!(Value::Object(filled.meta_data), json!({"uuid": NODE_UUID}));
    let filled = drive.with_node_defaults(NODE_UUID, Some(""));
    assert_eq!(Value::Object(filled.meta_data), json!({"uuid": NODE_UUID}));

    // The caller's values win.
    let drive =
        ConfigDrive::from_ironic_dict(&json!({"meta_data": {"uuid": "mine", "name": "given"}}))
            .unwrap()
            .with_node_defaults(NODE_UUID, Some("node-1"));
    assert_eq!(
        Value::Object(drive.meta_data),
        json!({"uuid": "mine", "name": "given"})
    );
}

fn invalid_message(dict: Value) -> String {
    match ConfigDrive::from_ironic_dict(&dict) {
        Err(Error::Invalid(message)) => message,
        other => panic!("{dict} should be Invalid, got {other:?}"),
    }
}

#[test]
fn bad_dict_shapes_are_refused_with_a_reason() {
    assert!(invalid_message(json!("a string")).contains("must be an object"));
    assert!(invalid_message(json!([1, 2])).contains("got an array"));
    assert!(invalid_message(json!(null)).contains("got null"));
    assert!(invalid_message(json!({"meta_data": "x"})).contains("meta_data must be an object"));
    assert!(invalid_message(json!({"meta_data": null})).contains("meta_data must be an object"));
    assert!(
        invalid_message(json!({"network_data": [1]})).contains("network_data must be an object")
    );
    assert!(invalid_message(json!({"vendor_data": 3})).contains("vendor_data must be an object"));
    assert!(invalid_message(json!({"user_data": 42})).contains("user_data must be a string"));
    assert!(invalid_message(json!({"user_data": true})).contains("got a boolean"));
    let message = invalid_message(json!({"metadata": {}}));
    assert!(message.contains("unknown key \"metadata\""), "{message}");
}

// ---------------------------------------------------------------------------
// ISO9660, read back with isoinfo, xorriso and blkid
// ---------------------------------------------------------------------------

#[test]
fn iso_has_label_joliet_and_rock_ridge() {
    let dir = tempfile::tempdir().unwrap();
    let iso = write_iso_file(&full_drive(), dir.path());
    let iso = iso.to_str().unwrap();

    let info = run_text("isoinfo", &["-d", "-i", iso]);
    assert!(info.contains("Volume id: config-2\n"), "{info}");
    assert!(info.contains("Joliet with UCS level 3 found"), "{info}");
    assert!(
        info.contains("Rock Ridge signatures version 1 found"),
        "{info}"
    );

    let blkid = run_text("blkid", &["-o", "value", "-s", "LABEL", "-s", "TYPE", iso]);
    assert_eq!(blkid, "config-2\niso9660\n");
}

#[test]
fn iso_rock_ridge_and_joliet_trees_hold_every_file() {
    let drive = full_drive();
    let dir = tempfile::tempdir().unwrap();
    let iso = write_iso_file(&drive, dir.path());
    let iso = iso.to_str().unwrap();

    let mut listed: Vec<String> = run_text("isoinfo", &["-R", "-f", "-i", iso])
        .lines()
        .map(str::to_owned)
        .collect();
    listed.sort();
    let mut expected: Vec<String> = vec![
        "/openstack".into(),
        "/openstack/2012-08-10".into(),
        "/openstack/latest".into(),
    ];
    expected.extend(FULL_PATHS.iter().map(|p| format!("/{p}")));
    expected.sort();
    assert_eq!(listed, expected);

    for (path, contents) in drive.files() {
        let path = format!("/{path}");
        let rock_ridge = run("isoinfo", &["-R", "-i", iso, "-x", &path]);
        assert_eq!(rock_ridge, contents, "Rock Ridge {path}");
        let joliet = run("isoinfo", &["-J", "-i", iso, "-x", &path]);
        assert_eq!(joliet, contents, "Joliet {path}");
    }
}

#[test]
fn iso_extracted_by_xorriso_equals_the_input() {
    let drive = full_drive();
    let dir = tempfile::tempdir().unwrap();
    let iso = write_iso_file(&drive, dir.path());
    let iso = iso.to_str().unwrap();

    let found = run_text("xorriso", &["-indev", iso, "-find", "/", "-type", "f"]);
    let mut found: Vec<&str> = found
        .lines()
        .map(|l| l.trim_matches('\''))
        .filter(|l| l.starts_with('/'))
        .collect();
    found.sort();
    let expected: Vec<String> = FULL_PATHS.iter().map(|p| format!("/{p}")).collect();
    assert_eq!(found, expected);

    let out = dir.path().join("extracted");
    run(
        "xorriso",
        &[
            "-osirrox",
            "on",
            "-indev",
            iso,
            "-extract",
            "/",
            out.to_str().unwrap(),
        ],
    );
    for (path, contents) in drive.files() {
        assert_eq!(fs::read(out.join(&path)).unwrap(), contents, "{path}");
    }
}

#[test]
fn iso_keeps_binary_and_large_user_data() {
    let mut drive = full_drive();
    let user_data = binary_bytes(3 * 1024 * 1024 + 17);
    drive.user_data = Some(user_data.clone());
    let dir = tempfile::tempdir().unwrap();
    let iso = write_iso_file(&drive, dir.path());
    let iso = iso.to_str().unwrap();
    for version in ["latest", "2012-08-10"] {
        let path = format!("/openstack/{version}/user_data");
        assert!(run("isoinfo", &["-R", "-i", iso, "-x", &path]) == user_data);
    }
}

#[test]
fn iso_without_network_data_has_no_such_file() {
    let drive = ConfigDrive::from_ironic_dict(&json!({"user_data": "x"}))
        .unwrap()
        .with_node_defaults(NODE_UUID, Some("n"));
    let dir = tempfile::tempdir().unwrap();
    let iso = write_iso_file(&drive, dir.path());
    let listed = run_text("isoinfo", &["-R", "-f", "-i", iso.to_str().unwrap()]);
    assert!(!listed.contains("network_data"), "{listed}");
    assert!(listed.contains("/openstack/latest/user_data"), "{listed}");
    let meta = run(
        "isoinfo",
        &[
            "-R",
            "-i",
            iso.to_str().unwrap(),
            "-x",
            "/openstack/latest/meta_data.json",
        ],
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&meta).unwrap(),
        json!({"uuid": NODE_UUID, "name": "n"})
    );
}

#[test]
fn iso_is_written_from_the_start_of_the_handle() {
    let drive = full_drive();
    let mut cursor = std::io::Cursor::new(Vec::new());
    cursor.seek(SeekFrom::Start(12345)).unwrap();
    let size = drive.write_iso(&mut cursor).unwrap();
    assert_eq!(cursor.get_ref().len() as u64, size);
    assert_eq!(&cursor.get_ref()[32769..32774], b"CD001");
}

#[test]
fn too_large_a_drive_is_refused() {
    let mut drive = full_drive();
    // Two copies (latest and dated) of a little over half the limit.
    drive.user_data = Some(vec![b'a'; MAX_SIZE as usize / 2 + 1]);
    let mut cursor = std::io::Cursor::new(Vec::new());
    assert!(matches!(
        drive.write_iso(&mut cursor),
        Err(Error::TooLarge(_))
    ));
    assert!(matches!(
        drive.write_vfat(&mut cursor),
        Err(Error::TooLarge(_))
    ));
}

// ---------------------------------------------------------------------------
// VFAT, read back with fsck.fat, blkid and mtools
// ---------------------------------------------------------------------------

fn mcopy_out(image: &str, path: &str, dir: &Path) -> Vec<u8> {
    let target = dir.join("copied");
    let _ = fs::remove_file(&target);
    run(
        "mcopy",
        &[
            "-n",
            "-i",
            image,
            &format!("::/{path}"),
            target.to_str().unwrap(),
        ],
    );
    fs::read(target).unwrap()
}

#[test]
fn vfat_is_clean_labelled_and_holds_every_file() {
    let drive = full_drive();
    let dir = tempfile::tempdir().unwrap();
    let image = write_vfat_file(&drive, dir.path());
    let image = image.to_str().unwrap();

    run("fsck.fat", &["-n", image]);
    let blkid = run_text(
        "blkid",
        &["-o", "value", "-s", "LABEL", "-s", "TYPE", image],
    );
    let blkid_upper = blkid.to_ascii_uppercase();
    assert_eq!(blkid_upper, "CONFIG-2\nVFAT\n", "{blkid}");

    let listing = run_text("mdir", &["-b", "-i", image, "::/openstack/latest"]);
    let mut names: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "meta_data.json",
            "network_data.json",
            "user_data",
            "vendor_data2.json"
        ],
        "{listing}"
    );
    let listing = run_text("mdir", &["-b", "-i", image, "::/openstack"]);
    assert!(listing.contains("/openstack/2012-08-10"), "{listing}");

    for (path, contents) in drive.files() {
        assert_eq!(
            run("mtype", &["-i", image, &format!("::/{path}")]),
            contents,
            "mtype {path}"
        );
        assert_eq!(
            mcopy_out(image, &path, dir.path()),
            contents,
            "mcopy {path}"
        );
    }
}

#[test]
fn vfat_keeps_binary_and_large_user_data() {
    let mut drive = full_drive();
    let user_data = binary_bytes(5 * 1024 * 1024 + 3);
    drive.user_data = Some(user_data.clone());
    let dir = tempfile::tempdir().unwrap();
    let image = write_vfat_file(&drive, dir.path());
    let image = image.to_str().unwrap();
    run("fsck.fat", &["-n", image]);
    for version in ["latest", "2012-08-10"] {
        let path = format!("openstack/{version}/user_data");
        assert!(mcopy_out(image, &path, dir.path()) == user_data, "{path}");
    }
}

#[test]
fn vfat_with_only_meta_data_is_clean() {
    let drive = ConfigDrive::default().with_node_defaults(NODE_UUID, None);
    let dir = tempfile::tempdir().unwrap();
    let image = write_vfat_file(&drive, dir.path());
    let image = image.to_str().unwrap();
    run("fsck.fat", &["-n", image]);
    let meta = run(
        "mtype",
        &["-i", image, "::/openstack/latest/meta_data.json"],
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&meta).unwrap(),
        json!({"uuid": NODE_UUID})
    );
    let listing = run_text("mdir", &["-b", "-i", image, "::/openstack/latest"]);
    assert!(!listing.contains("network_data"), "{listing}");
}

// ---------------------------------------------------------------------------
// gzip + base64
// ---------------------------------------------------------------------------

#[test]
fn encode_decode_round_trip() {
    let mut iso = std::io::Cursor::new(Vec::new());
    full_drive().write_iso(&mut iso).unwrap();
    let image = iso.into_inner();
    let text = configdrive::encode(&image);
    assert!(text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)));
    assert_eq!(configdrive::decode(&text, MAX_SIZE).unwrap(), image);

    // The same bytes as Python's gzip.decompress(base64.b64decode(text)).
    let compressed = base64::engine::general_purpose::STANDARD
        .decode(&text)
        .unwrap();
    assert_eq!(&compressed[..2], [0x1f, 0x8b]);
}

#[test]
fn decode_accepts_line_breaks_whitespace_and_missing_padding() {
    let image = binary_bytes(10_000);
    let text = configdrive::encode(&image);
    let wrapped: String = text
        .as_bytes()
        .chunks(76)
        .map(|line| format!("{}\r\n", std::str::from_utf8(line).unwrap()))
        .collect();
    assert_eq!(
        configdrive::decode(&format!("  {wrapped}\n"), MAX_SIZE).unwrap(),
        image
    );
    let unpadded = text.trim_end_matches('=');
    assert_eq!(configdrive::decode(unpadded, MAX_SIZE).unwrap(), image);
}

#[test]
fn decode_accepts_concatenated_gzip_members() {
    let one = b"first part ".to_vec();
    let two = b"second part".to_vec();
    let mut compressed = Vec::new();
    for part in [&one, &two] {
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(part).unwrap();
        compressed.extend(gz.finish().unwrap());
    }
    let text = base64::engine::general_purpose::STANDARD.encode(compressed);
    assert_eq!(
        configdrive::decode(&text, MAX_SIZE).unwrap(),
        b"first part second part"
    );
}

fn decode_invalid(text: &str) -> String {
    match configdrive::decode(text, MAX_SIZE) {
        Err(Error::Invalid(message)) => message,
        other => panic!("{text:?} should be Invalid, got {other:?}"),
    }
}

#[test]
fn decode_refuses_bad_base64() {
    assert!(decode_invalid("H4sI!!!!").contains("not base64"));
    assert!(decode_invalid("H4sI-_AA").contains("not base64"));
    assert!(decode_invalid("H4sIA").contains("not valid base64"));
    assert!(decode_invalid("").contains("empty"));
    assert!(decode_invalid(" \n ").contains("empty"));
    assert!(decode_invalid("https://example.com/cd.iso").contains("URL"));
}

#[test]
fn decode_refuses_data_that_is_not_gzip() {
    // IPA does not accept a plain base64 image: gzip.GzipFile refuses it.
    let mut iso = std::io::Cursor::new(Vec::new());
    full_drive().write_iso(&mut iso).unwrap();
    let text = base64::engine::general_purpose::STANDARD.encode(iso.into_inner());
    assert!(decode_invalid(&text).contains("not gzip"));
}

#[test]
fn decode_refuses_truncated_or_corrupt_gzip() {
    let image = binary_bytes(100_000);
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&image).unwrap();
    let compressed = gz.finish().unwrap();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);

    let truncated = b64(&compressed[..compressed.len() / 2]);
    assert!(decode_invalid(&truncated).contains("not valid gzip"));

    let mut bad_crc = compressed.clone();
    let n = bad_crc.len();
    bad_crc[n - 8] ^= 0xff;
    assert!(decode_invalid(&b64(&bad_crc)).contains("not valid gzip"));

    let mut trailing = compressed;
    trailing.extend_from_slice(b"garbage");
    assert!(decode_invalid(&b64(&trailing)).contains("not valid gzip"));
}

#[test]
fn decode_limit_is_exact() {
    let image = vec![7u8; 1000];
    let text = configdrive::encode(&image);
    assert_eq!(configdrive::decode(&text, 1000).unwrap(), image);
    assert!(matches!(
        configdrive::decode(&text, 999),
        Err(Error::TooLarge(_))
    ));
    assert!(matches!(
        configdrive::decode(&text, 0),
        Err(Error::TooLarge(_))
    ));
}

/// Counts the bytes each thread holds, so a test can measure its own peak
/// allocation while other tests run in parallel.
struct CountingAllocator;

thread_local! {
    static HELD: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn track(grow: usize, shrink: usize) {
    let _ = HELD.try_with(|held| {
        let now = held.get().saturating_add(grow).saturating_sub(shrink);
        held.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counting only touches const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as our caller's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            track(layout.size(), 0);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) };
        track(0, layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as our caller's.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            track(new_size, layout.size());
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// The most bytes this thread held at once while `f` ran, above what it
/// held before.
fn peak_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = HELD.with(Cell::get);
    PEAK.with(|peak| peak.set(base));
    let value = f();
    (value, PEAK.with(Cell::get) - base)
}

#[test]
fn decode_refuses_a_gzip_bomb_quickly_and_without_big_memory() {
    // 1 GiB of zeros, streamed through the encoder: about 1 MiB compressed.
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
    let zeros = vec![0u8; 1024 * 1024];
    for _ in 0..1024 {
        gz.write_all(&zeros).unwrap();
    }
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 2 * 1024 * 1024, "{} bytes", bomb.len());
    let text = base64::engine::general_purpose::STANDARD.encode(&bomb);
    drop(bomb);

    let limit = 8 * 1024 * 1024;
    let start = Instant::now();
    let (result, peak) = peak_allocation(|| configdrive::decode(&text, limit));
    let elapsed = start.elapsed();
    match result {
        Err(Error::TooLarge(message)) => assert!(message.contains("8388608"), "{message}"),
        other => panic!("a gzip bomb must be TooLarge, got {other:?}"),
    }
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    // The decoded compressed copy (about 1 MiB), the inflate state and
    // buffers, and at most limit + 1 bytes of output.
    assert!(
        peak < limit as usize + 4 * 1024 * 1024,
        "decoding held {peak} bytes at its peak"
    );
}
