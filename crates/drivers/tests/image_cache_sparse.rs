//! The sha256 the image cache gives agents for a converted image is computed
//! while the conversion writes it, holes included: it must equal the sha256
//! of the file served, read back, and of qemu-img's own conversion. The
//! qcow2 has holes at the start, in the middle (unallocated clusters and
//! zeroed ones) and at the end, and a size that is not a whole number of
//! clusters. Needs qemu-img and qemu-io, as CI has.

use ferric_drivers::image_cache::{CacheConfig, ImageCache, ImageRequest};
use ferric_image::checksum::sha256_hex;
use ferric_image::format::{Format, Policy};
use std::io::Read;
use std::path::Path;
use std::process::Command;

const MIB: u64 = 1 << 20;

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A sparse qcow2 of `size` bytes at `path`, written by qemu-io: data
/// (`offset`, `len`, byte) and zeroed ranges, nothing else allocated.
fn sparse_qcow2(path: &Path, size: u64) {
    let p = path.to_str().unwrap();
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", p, &size.to_string()],
    );
    let mut commands = Vec::new();
    for (offset, len, byte) in [
        (4 * MIB, MIB, 0xab),
        (5 * MIB, MIB, 0x5a),
        (6 * MIB, 64 << 10, 0xcd),
        (8 * MIB + 4096, 8192, 0x11),
        // Allocated, but all zeros.
        (10 * MIB, 64 << 10, 0x00),
        (12 * MIB, 3 * MIB, 0x77),
    ] {
        commands.push(format!("write -P {byte} {offset} {len}"));
    }
    // Data zeroed again: a zero cluster in the middle.
    commands.push(format!("write -z {} {}", 5 * MIB, MIB));
    let mut args = vec!["-f", "qcow2"];
    for command in &commands {
        args.extend(["-c", command.as_str()]);
    }
    args.push(p);
    run("qemu-io", &args);
}

#[tokio::test]
async fn a_sparse_qcow2_gets_the_sha256_of_the_raw_file_served() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    // Beyond the last data: a trailing hole larger than the hashing sink's
    // zero buffer, ending mid-cluster.
    let size = 40 * MIB + 4096 + 512;
    let qcow2_path = images.join("sparse.qcow2");
    sparse_qcow2(&qcow2_path, size);
    let raw_path = dir.path().join("expected.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            qcow2_path.to_str().unwrap(),
            raw_path.to_str().unwrap(),
        ],
    );
    let expected = std::fs::read(&raw_path).unwrap();
    assert_eq!(expected.len() as u64, size);
    let qcow2 = std::fs::read(&qcow2_path).unwrap();

    let mut config = CacheConfig::new(dir.path().join("cache"));
    config.file_url_allowed_paths = vec![images.clone()];
    let cache = ImageCache::new(config).unwrap();
    let request = ImageRequest {
        url: format!("file://{}", qcow2_path.display()),
        checksum: sha256_hex(&qcow2),
        checksum_algorithm: Some("sha256".into()),
        declared_format: Some(Format::Qcow2),
        permitted_formats: Policy::default().permitted,
        convert_to_raw: true,
    };
    let image = cache.prepare(&request, "node-1").await.unwrap();

    let (mut file, served_size) = cache.open(&image.name).unwrap().unwrap();
    let mut served = Vec::new();
    file.read_to_end(&mut served).unwrap();
    assert_eq!((served_size, image.size), (size, size));
    assert!(served == expected, "the cache converts as qemu-img does");
    assert_eq!(image.sha256, sha256_hex(&served), "hashed as served");
    assert!(
        image.mapped_bytes.unwrap() < size / 4,
        "the holes stayed holes: {:?} mapped",
        image.mapped_bytes
    );
}
