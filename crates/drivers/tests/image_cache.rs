//! The server-side image cache against a small in-test HTTP server that
//! counts its requests: one download per image, verification and refusals
//! that cache nothing, eviction by age and size that spares images in use.
//! Needs qemu-img, as CI has.

use ferric_drivers::image_cache::{CacheConfig, CacheError, ImageCache, ImageRequest};
use ferric_image::checksum::sha256_hex;
use ferric_image::format::{Format, Policy};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

const MIB: usize = 1 << 20;

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!(
            "ferric-image-cache-test-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Serves fixed files over HTTP/1.1 and counts the requests per path.
struct Server {
    base: String,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

impl Server {
    fn start(files: Vec<(&str, Vec<u8>)>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let files: Arc<HashMap<String, Vec<u8>>> = Arc::new(
            files
                .into_iter()
                .map(|(p, b)| (format!("/{p}"), b))
                .collect(),
        );
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let seen = counts.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (files, seen) = (files.clone(), seen.clone());
                std::thread::spawn(move || {
                    let _ = respond(stream, &files, &seen);
                });
            }
        });
        Server { base, counts }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    fn requests(&self, path: &str) -> usize {
        let counts = self.counts.lock().unwrap();
        counts.get(&format!("/{path}")).copied().unwrap_or(0)
    }
}

fn respond(
    mut stream: TcpStream,
    files: &HashMap<String, Vec<u8>>,
    seen: &Mutex<HashMap<String, usize>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
    }
    *seen.lock().unwrap().entry(path.clone()).or_default() += 1;
    match files.get(&path) {
        Some(body) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes())?;
            // Slowly enough that concurrent deploys overlap.
            for chunk in body.chunks(MIB) {
                stream.write_all(chunk)?;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        None => stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?,
    }
    Ok(())
}

/// `len` bytes of deterministic noise: a raw disk without any signature.
fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
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

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The qcow2 of a raw image, made by qemu-img.
fn qcow2_of(dir: &Path, raw: &[u8]) -> Vec<u8> {
    let (raw_path, qcow2_path) = (dir.join("src.raw"), dir.join("src.qcow2"));
    std::fs::write(&raw_path, raw).unwrap();
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw_path.to_str().unwrap(),
        qcow2_path.to_str().unwrap(),
    ]);
    std::fs::read(qcow2_path).unwrap()
}

fn cache_in(dir: &Path, max_size: u64) -> ImageCache {
    let mut config = CacheConfig::new(dir.join("cache"));
    config.max_size = max_size;
    config.ttl = Duration::from_secs(3600);
    config.stall_timeout = Duration::from_secs(10);
    config.retries = 0;
    ImageCache::new(config).unwrap()
}

fn request(url: String, body: &[u8], declared: Option<Format>) -> ImageRequest {
    ImageRequest {
        url,
        checksum: sha256_hex(body),
        checksum_algorithm: Some("sha256".into()),
        declared_format: declared,
        permitted_formats: Policy::default().permitted,
        convert_to_raw: true,
    }
}

/// Every directory in the cache (entries and anything else).
fn listing(cache: &ImageCache) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache.dir())
        .map(|l| {
            l.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn served(cache: &ImageCache, name: &str) -> Option<Vec<u8>> {
    let (mut file, size) = cache.open(name).unwrap()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).unwrap();
    assert_eq!(bytes.len() as u64, size);
    Some(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qcow2_image_is_downloaded_once_and_served_as_verified_raw() {
    let dir = TempDir::new();
    let raw = noise(4 * MIB, 1);
    let qcow2 = qcow2_of(&dir.0, &raw);
    let server = Server::start(vec![("disk.qcow2", qcow2.clone())]);
    let cache = cache_in(&dir.0, 1 << 30);
    let wanted = request(server.url("disk.qcow2"), &qcow2, Some(Format::Qcow2));

    // Two deploys of the same image at once, and a third one later.
    let (first, second) = tokio::join!(
        cache.prepare(&wanted, "node-1"),
        cache.prepare(&wanted, "node-2")
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    let third = cache.prepare(&wanted, "node-3").await.unwrap();
    assert_eq!(server.requests("disk.qcow2"), 1, "downloaded once");
    assert_eq!(first, second);
    assert_eq!(first, third);
    let prefix = format!("sha256-{}-", sha256_hex(&qcow2));
    assert!(
        first.name.starts_with(&prefix) && first.name.ends_with(".raw"),
        "{}",
        first.name
    );
    assert_eq!(first.format, "raw");
    assert_eq!(first.source_format, "qcow2");
    assert_eq!(first.sha256, sha256_hex(&raw), "the raw image's sha256");
    assert_eq!(first.size, raw.len() as u64);
    assert_eq!(first.mapped_bytes, Some(raw.len() as u64));
    assert!(served(&cache, &first.name).unwrap() == raw);
    assert_eq!(listing(&cache), vec![first.name.clone()]);
    assert!(cache.is_in_use(&first.name));
    for node in ["node-1", "node-2", "node-3"] {
        cache.release(node);
    }
    assert!(!cache.is_in_use(&first.name));

    // Declared as something else, the cached image is refused all the same.
    let mut declared_raw = wanted.clone();
    declared_raw.declared_format = Some(Format::Raw);
    let error = cache.prepare(&declared_raw, "node-4").await.unwrap_err();
    assert!(
        matches!(
            &error,
            CacheError::Image {
                source: ferric_image::Error::Refused(_),
                ..
            }
        ),
        "{error:?}"
    );
    assert!(!cache.is_in_use(&first.name));

    // A new cache over the same directory finds the entry.
    let again = cache_in(&dir.0, 1 << 30);
    assert_eq!(again.prepare(&wanted, "node-5").await.unwrap(), first);
    assert_eq!(server.requests("disk.qcow2"), 1);
}

#[tokio::test]
async fn an_image_not_converted_is_served_as_downloaded() {
    let dir = TempDir::new();
    let raw = noise(2 * MIB, 2);
    let qcow2 = qcow2_of(&dir.0, &raw);
    let sums = format!(
        "{}  other.img\n{}  disk.qcow2\n",
        "0".repeat(64),
        sha256_hex(&qcow2)
    );
    let server = Server::start(vec![
        ("disk.qcow2", qcow2.clone()),
        ("SHA256SUMS", sums.into_bytes()),
    ]);
    let cache = cache_in(&dir.0, 1 << 30);
    let mut wanted = request(server.url("disk.qcow2"), &qcow2, None);
    wanted.checksum = server.url("SHA256SUMS");
    wanted.checksum_algorithm = None;
    wanted.convert_to_raw = false;
    let image = cache.prepare(&wanted, "node-1").await.unwrap();
    let prefix = format!("sha256-{}-", sha256_hex(&qcow2));
    assert!(
        image.name.starts_with(&prefix) && image.name.ends_with(".img"),
        "{}",
        image.name
    );
    assert_eq!(image.format, "qcow2");
    assert_eq!(image.sha256, sha256_hex(&qcow2));
    assert_eq!(image.virtual_size, Some(raw.len() as u64));
    assert!(served(&cache, &image.name).unwrap() == qcow2);
}

#[tokio::test]
async fn a_checksum_mismatch_caches_nothing() {
    let dir = TempDir::new();
    let raw = noise(2 * MIB, 3);
    let server = Server::start(vec![("disk.raw", raw.clone())]);
    let cache = cache_in(&dir.0, 1 << 30);
    let mut wanted = request(server.url("disk.raw"), &raw, None);
    wanted.checksum = "ab".repeat(32);
    let error = cache.prepare(&wanted, "node-1").await.unwrap_err();
    assert!(
        matches!(
            &error,
            CacheError::Image {
                source: ferric_image::Error::ChecksumMismatch { .. },
                ..
            }
        ),
        "{error:?}"
    );
    assert!(listing(&cache).is_empty(), "{:?}", listing(&cache));
    assert!(cache.entries().unwrap().is_empty());

    // A missing image and an md5 checksum: nothing either.
    let missing = request(server.url("nope.raw"), &raw, None);
    let error = cache.prepare(&missing, "node-1").await.unwrap_err();
    assert!(
        ferric_drivers::image_cache::chain(&error).contains("HTTP 404"),
        "{error:?}"
    );
    let mut md5 = request(server.url("disk.raw"), &raw, None);
    md5.checksum = "0".repeat(32);
    md5.checksum_algorithm = None;
    assert!(matches!(
        cache.prepare(&md5, "node-1").await,
        Err(CacheError::InvalidRequest(_))
    ));
    assert!(listing(&cache).is_empty(), "{:?}", listing(&cache));
    assert!(!cache.is_in_use(&format!("sha256-{}-0123456789abcdef.raw", "ab".repeat(32))));
}

#[tokio::test]
async fn a_qcow2_image_with_a_backing_file_is_refused() {
    let dir = TempDir::new();
    let base = dir.0.join("base.raw");
    std::fs::write(&base, noise(MIB, 4)).unwrap();
    let overlay = dir.0.join("overlay.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        base.to_str().unwrap(),
        "-F",
        "raw",
        overlay.to_str().unwrap(),
    ]);
    let qcow2 = std::fs::read(&overlay).unwrap();
    let server = Server::start(vec![("overlay.qcow2", qcow2.clone())]);
    let cache = cache_in(&dir.0, 1 << 30);
    for convert_to_raw in [true, false] {
        let mut wanted = request(server.url("overlay.qcow2"), &qcow2, None);
        wanted.convert_to_raw = convert_to_raw;
        let error = cache.prepare(&wanted, "node-1").await.unwrap_err();
        let text = ferric_drivers::image_cache::chain(&error);
        assert!(text.contains("backing file"), "{text}");
        assert!(listing(&cache).is_empty(), "{:?}", listing(&cache));
    }
}

#[tokio::test]
async fn the_least_recently_used_entries_go_over_the_size_limit_but_not_those_in_use() {
    let dir = TempDir::new();
    let images: Vec<Vec<u8>> = (0..4).map(|i| noise(4 * MIB, 10 + i)).collect();
    let names = ["a.raw", "b.raw", "c.raw", "d.raw"];
    let server = Server::start(names.iter().copied().zip(images.clone()).collect());
    // Room for two entries of a little over 4 MiB each.
    let cache = cache_in(&dir.0, 10 * MIB as u64);
    let wanted = |i: usize| request(server.url(names[i]), &images[i], None);

    let a = cache.prepare(&wanted(0), "node-a").await.unwrap();
    cache.release("node-a");
    let b = cache.prepare(&wanted(1), "node-b").await.unwrap();
    cache.release("node-b");
    // a is used again, so b is now the least recently used.
    cache.prepare(&wanted(0), "node-a").await.unwrap();
    cache.release("node-a");
    let c = cache.prepare(&wanted(2), "node-c").await.unwrap();
    let mut expected = vec![a.name.clone(), c.name.clone()];
    expected.sort();
    assert_eq!(listing(&cache), expected, "b was evicted");
    assert_eq!(server.requests("a.raw"), 1);

    // c stays leased; d comes: a goes, c stays though over the limit.
    let d = cache.prepare(&wanted(3), "node-d").await.unwrap();
    let mut expected = vec![c.name.clone(), d.name.clone()];
    expected.sort();
    assert_eq!(listing(&cache), expected);
    // With everything leased, the cache may exceed its limit.
    let b_again = cache.prepare(&wanted(1), "node-b").await.unwrap();
    assert_eq!(b_again, b);
    assert_eq!(listing(&cache).len(), 3);
    let report = cache.clean_up().unwrap();
    assert!(report.removed.is_empty());
    // Released, the oldest goes.
    cache.release("node-c");
    let report = cache.clean_up().unwrap();
    assert_eq!(report.removed, vec![c.name.clone()]);
    assert!(report.remaining_bytes <= 10 * MIB as u64);
    assert!(cache.open(&c.name).unwrap().is_none());
}

#[tokio::test]
async fn entries_unused_for_longer_than_the_ttl_go_unless_in_use() {
    let dir = TempDir::new();
    let (one, two) = (noise(MIB, 20), noise(MIB, 21));
    let server = Server::start(vec![("one.raw", one.clone()), ("two.raw", two.clone())]);
    let cache = cache_in(&dir.0, 1 << 30);
    let first = cache
        .prepare(&request(server.url("one.raw"), &one, None), "node-1")
        .await
        .unwrap();
    cache.release("node-1");
    let second = cache
        .prepare(&request(server.url("two.raw"), &two, None), "node-2")
        .await
        .unwrap();

    let report = cache.clean_up().unwrap();
    assert!(report.removed.is_empty(), "{report:?}");
    let later = SystemTime::now() + Duration::from_secs(2 * 3600);
    let report = cache.clean_up_as_of(later).unwrap();
    assert_eq!(report.removed, vec![first.name.clone()]);
    assert_eq!(listing(&cache), vec![second.name.clone()]);
    cache.release("node-2");
    let report = cache.clean_up_as_of(later).unwrap();
    assert_eq!(report.removed, vec![second.name]);
    assert!(listing(&cache).is_empty());
}

#[tokio::test]
async fn half_written_entries_are_never_served_and_are_removed() {
    let dir = TempDir::new();
    let hex = "c".repeat(64);
    let name = format!("sha256-{hex}-0123456789abcdef.raw");
    let root = dir.0.join("cache");
    // What a crash mid-download leaves, and a directory with an entry's
    // name but no metadata.
    let temp = root.join(format!(".tmp-{name}-0123"));
    std::fs::create_dir_all(&temp).unwrap();
    std::fs::write(temp.join("image"), b"partial").unwrap();
    std::fs::create_dir_all(root.join(&name)).unwrap();
    std::fs::write(root.join(&name).join("image"), b"partial").unwrap();

    let cache = cache_in(&dir.0, 1 << 30);
    assert!(
        !temp.exists(),
        "left-over temporary directories are removed"
    );
    assert!(cache.open(&name).unwrap().is_none());
    assert!(cache.open(&format!("../cache/{name}")).unwrap().is_none());
    assert!(cache.open("..").unwrap().is_none());
    assert!(cache.entries().unwrap().is_empty());
}

/// A file:// source is read only from an allowed directory, after its
/// symlinks are resolved; system directories and special files never are.
#[tokio::test]
async fn file_sources_are_read_only_from_allowed_directories() {
    let dir = TempDir::new();
    let images = dir.0.join("images");
    std::fs::create_dir(&images).unwrap();
    let raw = noise(2 * MIB, 7);
    let qcow2 = qcow2_of(&dir.0, &raw);
    std::fs::write(images.join("disk.qcow2"), &qcow2).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", images.join("passwd.img")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", images.join("zero.img")).unwrap();
    std::fs::create_dir(images.join("subdir")).unwrap();
    std::fs::write(dir.0.join("outside.img"), &raw).unwrap();

    let url = |path: &Path| format!("file://{}", path.display());
    let mut config = CacheConfig::new(dir.0.join("cache"));
    config.file_url_allowed_paths = vec![images.clone()];
    let cache = ImageCache::new(config.clone()).unwrap();

    let good = request(url(&images.join("disk.qcow2")), &qcow2, Some(Format::Qcow2));
    let cached = cache.prepare(&good, "node-1").await.unwrap();
    assert_eq!(cached.format, "raw");
    assert_eq!(served(&cache, &cached.name).unwrap(), raw);

    let refused = |path: PathBuf, why: &'static str| {
        let cache = cache.clone();
        let request = request(url(&path), b"irrelevant", None);
        async move {
            let error = cache.prepare(&request, "node-2").await.unwrap_err();
            let text = ferric_drivers::image_cache::chain(&error);
            assert!(
                matches!(error, CacheError::InvalidRequest(_)) && text.contains(why),
                "{}: {text}",
                path.display()
            );
        }
    };
    refused(images.join("passwd.img"), "/etc").await;
    refused(images.join("zero.img"), "/dev").await;
    refused(images.join("subdir"), "not a regular file").await;
    refused(dir.0.join("outside.img"), "file_url_allowed_paths").await;
    refused(images.join("../outside.img"), "file_url_allowed_paths").await;
    refused(images.join("missing.img"), "cannot resolve").await;
    // Even an operator allowing / gets nothing from the system directories.
    let mut everything = config.clone();
    everything.file_url_allowed_paths = vec![PathBuf::from("/")];
    let error = everything
        .local_file("file:///proc/self/environ")
        .unwrap_err();
    assert!(error.to_string().contains("/proc"), "{error}");
    // Without an allow-list, file:// is refused and says where to allow it.
    let error = CacheConfig::new(dir.0.join("c2"))
        .local_file(&url(&images.join("disk.qcow2")))
        .unwrap_err();
    assert!(
        error.to_string().contains("file_url_allowed_paths"),
        "{error}"
    );
    assert_eq!(
        listing(&cache),
        vec![cached.name.clone()],
        "nothing else cached"
    );
}

/// Knowing an image's checksum is not enough: a request for the same bytes
/// from another source downloads and verifies its own copy.
#[tokio::test]
async fn the_same_image_from_another_source_is_fetched_again() {
    let dir = TempDir::new();
    let raw = noise(2 * MIB, 9);
    let server = Server::start(vec![("a.raw", raw.clone()), ("b.raw", raw.clone())]);
    let cache = cache_in(&dir.0, 1 << 30);
    let first = cache
        .prepare(&request(server.url("a.raw"), &raw, None), "node-1")
        .await
        .unwrap();
    let second = cache
        .prepare(&request(server.url("b.raw"), &raw, None), "node-2")
        .await
        .unwrap();
    assert_ne!(first.name, second.name);
    assert_eq!(first.sha256, second.sha256);
    assert_eq!((server.requests("a.raw"), server.requests("b.raw")), (1, 1));
    // A source whose server does not have it gets nothing from the cache.
    let error = cache
        .prepare(&request(server.url("c.raw"), &raw, None), "node-3")
        .await
        .unwrap_err();
    assert!(
        ferric_drivers::image_cache::chain(&error).contains("404"),
        "{error:?}"
    );
}
