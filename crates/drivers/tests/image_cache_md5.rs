//! md5 checksums in the server-side image cache: refused unless the
//! operator sets `[conductor] allow_md5_checksum`, with an error naming it;
//! with it set, an md5-verified image is cached, served, reused and evicted
//! like any other. Images come from file:// sources. Needs qemu-img, as CI
//! has.

use ferric_drivers::image_cache::{chain, CacheConfig, CacheError, ImageCache, ImageRequest};
use ferric_image::checksum::{sha256_hex, Algorithm, Hasher};
use ferric_image::format::{Format, Policy};
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

/// `len` bytes of deterministic noise: a raw disk without any signature.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u32 = 77;
    let mut bytes: Vec<u8> = (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    // No MBR boot signature by chance.
    bytes[510] = 0;
    bytes
}

/// Writes `raw` and its qcow2 (made by qemu-img) into `dir`; returns the
/// qcow2's bytes.
fn qcow2_in(dir: &Path, raw: &[u8]) -> Vec<u8> {
    let (raw_path, qcow2_path) = (dir.join("disk.raw"), dir.join("disk.qcow2"));
    std::fs::write(&raw_path, raw).unwrap();
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .args([&raw_path, &qcow2_path])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(qcow2_path).unwrap()
}

fn md5_hex(data: &[u8]) -> String {
    let mut hasher = Hasher::new(Algorithm::Md5);
    hasher.update(data);
    hasher.finish().hex
}

fn cache(root: &Path, allow_md5_checksum: bool) -> ImageCache {
    let mut config = CacheConfig::new(root.join("cache"));
    config.file_url_allowed_paths = vec![root.join("images")];
    config.allow_md5_checksum = allow_md5_checksum;
    ImageCache::new(config).unwrap()
}

fn request(root: &Path, checksum: String, algorithm: Option<&str>) -> ImageRequest {
    ImageRequest {
        url: format!("file://{}", root.join("images/disk.qcow2").display()),
        checksum,
        checksum_algorithm: algorithm.map(str::to_string),
        declared_format: Some(Format::Qcow2),
        permitted_formats: Policy::default().permitted,
        convert_to_raw: true,
    }
}

fn served(cache: &ImageCache, name: &str) -> Vec<u8> {
    let (mut file, size) = cache.open(name).unwrap().expect("the entry is served");
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).unwrap();
    assert_eq!(bytes.len() as u64, size);
    bytes
}

fn entries(root: &Path) -> Vec<String> {
    match std::fs::read_dir(root.join("cache")) {
        Ok(listing) => listing
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test]
async fn md5_is_refused_by_default_with_the_setting_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("images")).unwrap();
    let qcow2 = qcow2_in(&root.join("images"), &noise(2 << 20));
    let md5 = md5_hex(&qcow2);
    let cache = cache(root, false);
    for wanted in [
        request(root, md5.clone(), None),
        request(root, md5.clone(), Some("md5")),
        request(root, format!("md5:{md5}"), None),
    ] {
        let error = cache.prepare(&wanted, "node-1").await.unwrap_err();
        let text = chain(&error);
        assert!(matches!(error, CacheError::InvalidRequest(_)), "{error:?}");
        assert!(
            text.contains("md5 checksums are disabled")
                && text.contains("allow_md5_checksum = true"),
            "{text}"
        );
    }
    assert!(entries(root).is_empty(), "{:?}", entries(root));
    assert!(!cache.is_in_use(&format!("md5-{md5}-0123456789abcdef.raw")));
}

#[tokio::test]
async fn with_allow_md5_checksum_an_md5_image_is_verified_cached_and_served() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("images")).unwrap();
    let raw = noise(3 << 20);
    let qcow2 = qcow2_in(&root.join("images"), &raw);
    let md5 = md5_hex(&qcow2);
    let cache = cache(root, true);

    // md5 still verifies: a wrong digest caches nothing.
    let error = cache
        .prepare(&request(root, "0".repeat(32), None), "node-1")
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            CacheError::Image {
                source: ferric_image::Error::ChecksumMismatch {
                    algorithm: "md5",
                    ..
                },
                ..
            }
        ),
        "{error:?}"
    );
    assert!(entries(root).is_empty(), "{:?}", entries(root));

    let wanted = request(root, md5.clone(), Some("md5"));
    let image = cache.prepare(&wanted, "node-1").await.unwrap();
    assert!(
        image.name.starts_with(&format!("md5-{md5}-")) && image.name.ends_with(".raw"),
        "{}",
        image.name
    );
    assert_eq!(image.source_checksum, format!("md5:{md5}"));
    assert_eq!(
        (image.format.as_str(), image.source_format.as_str()),
        ("raw", "qcow2")
    );
    // Agents verify what they download against sha256, never md5.
    assert_eq!(image.sha256, sha256_hex(&raw));
    assert!(served(&cache, &image.name) == raw);
    assert_eq!(cache.entries().unwrap(), vec![image.clone()]);

    // The same image again is the same entry.
    let again = cache.prepare(&wanted, "node-2").await.unwrap();
    assert_eq!(again, image);
    assert_eq!(entries(root), vec![image.name.clone()]);

    // Turned off again, the cached md5 entry is not handed out.
    let strict = self::cache(root, false);
    let error = strict.prepare(&wanted, "node-3").await.unwrap_err();
    assert!(chain(&error).contains("allow_md5_checksum"), "{error:?}");

    // Unused, it ages out like any entry.
    cache.release("node-1");
    cache.release("node-2");
    let later = SystemTime::now() + Duration::from_secs(30 * 24 * 3600);
    let report = cache.clean_up_as_of(later).unwrap();
    assert_eq!(report.removed, vec![image.name.clone()]);
    assert!(cache.open(&image.name).unwrap().is_none());
}
