//! The server-side image cache for `image_download_source=local`: download
//! once, inspect, convert to raw, checksum and block map, keyed by content,
//! with size and age limits.
//!
//! Ironic's `InstanceImageCache` (`[pxe]instance_master_path`,
//! `image_cache_size`, `image_cache_ttl`) keeps master images that agents
//! then download from the conductor's HTTP server. Ferric does the same with
//! these rules:
//! - An entry is named after the checksum of the original image (the one the
//!   operator gave, verified on the download) and whether it was converted:
//!   `sha256-<hex>.raw` (converted to raw) or `sha256-<hex>.img` (served as
//!   downloaded). The same image deployed twice is downloaded once, also when
//!   the deploys run at the same time (one lock per entry name).
//! - An entry is a directory (`image`, `meta.json`, `bmap.json`) built under a
//!   temporary name and renamed into place when complete, so a crash leaves a
//!   `.tmp-*` directory (removed later), never a half-written entry.
//! - A running deploy holds a lease on its entry (per node); leased entries
//!   are never evicted. Others go when unused for longer than the TTL, then,
//!   least recently used first, while the cache is over its size limit
//!   (counted in allocated bytes, leased entries included, as Ironic does).
//! - md5 checksums are refused unless the operator allows them
//!   (`[conductor] allow_md5_checksum`, Ironic's `[agent]allow_md5_checksum`);
//!   an entry verified by md5 is named `md5-<hex>-...`.
//! - Sources are http(s) URLs, or `file://` paths inside the directories the
//!   operator allowed (`file_url_allowed_paths`), resolved through symlinks
//!   before the check; /dev, /sys, /proc, /boot, /etc and /run are refused
//!   whatever the list says, and only regular files are read (Ironic's
//!   CVE-2025-44021: `file:///dev/zero` hung the checksum).
//! - The sha256 of a converted image, which agents verify what they download
//!   against, is computed while the conversion writes it (`HashingSink`),
//!   not by reading the result back.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ferric_image::bmap::{self, BmapSink};
use ferric_image::checksum::{self, Algorithm, Checksum, Digested, Hasher};
use ferric_image::format::{self, Format, Inspection, Policy};
use ferric_image::pipeline;
use ferric_image::sink::{FileSink, NullSink};
use ferric_image::BlockSink;
use serde::{Deserialize, Serialize};

/// File names inside an entry's directory.
const IMAGE_FILE: &str = "image";
const META_FILE: &str = "meta.json";
const BMAP_FILE: &str = "bmap.json";
const DOWNLOAD_FILE: &str = "download";
/// Prefixes of directories that are not (or no longer) entries.
const TEMP_PREFIX: &str = ".tmp-";
const DELETE_PREFIX: &str = ".del-";
/// The most a checksum file may hold.
const CHECKSUM_FILE_MAX: usize = 1 << 20;
/// Chunks in flight between the download and the thread writing it.
const IN_FLIGHT: usize = 16;

/// How the cache behaves.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Where entries live; created on first use.
    pub dir: PathBuf,
    /// The cache's size limit in allocated bytes (Ironic's
    /// `[pxe]image_cache_size`, 20 GiB by default there). Also the largest
    /// download accepted.
    pub max_size: u64,
    /// Entries unused for longer than this are removed (Ironic's
    /// `[pxe]image_cache_ttl`, a week by default there).
    pub ttl: Duration,
    /// The largest virtual size an image may have.
    pub max_virtual_size: u64,
    pub connect_timeout: Duration,
    /// A download that receives nothing for this long fails (or resumes).
    pub stall_timeout: Duration,
    /// Retries of a failed download, resuming with Range.
    pub retries: u32,
    /// A lease not renewed for this long lapses (a deploy that vanished
    /// without releasing it: a timed-out node, a restarted conductor).
    pub lease_ttl: Duration,
    /// Directories `file://` image sources may name (Ironic's
    /// `[conductor]file_url_allowed_paths`). Empty: `file://` is refused.
    pub file_url_allowed_paths: Vec<PathBuf>,
    /// Accept md5 checksums (Ironic's `[agent]allow_md5_checksum`). Default
    /// false: md5 is broken, and a checksum is what names an entry.
    pub allow_md5_checksum: bool,
}

/// Why an md5 checksum is refused, with the setting that allows it.
pub const MD5_DISABLED: &str = "md5 checksums are disabled: give a sha256 or sha512 checksum \
     (image_os_hash_algo and image_os_hash_value), or set [conductor] allow_md5_checksum = true \
     in ferricd.toml";

/// Where `file://` sources are never read from, whatever the allow-list says.
const FORBIDDEN_FILE_ROOTS: &[&str] = &["/dev", "/sys", "/proc", "/boot", "/etc", "/run"];

impl CacheConfig {
    /// Ironic's defaults in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CacheConfig {
            dir: dir.into(),
            max_size: 20 << 30,
            ttl: Duration::from_secs(7 * 24 * 3600),
            max_virtual_size: 4 << 40,
            connect_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
            retries: 3,
            lease_ttl: Duration::from_secs(2 * 3600),
            file_url_allowed_paths: Vec::new(),
            allow_md5_checksum: false,
        }
    }

    /// The file a `file://` source names, if the allow-list permits it:
    /// an absolute path, resolved through symlinks, inside an allowed
    /// directory and none of the forbidden ones, and a regular file.
    pub fn local_file(&self, url: &str) -> Result<PathBuf, CacheError> {
        let refused =
            |why: String| CacheError::InvalidRequest(format!("image source {url}: {why}"));
        let raw = url
            .strip_prefix("file://")
            .ok_or_else(|| refused("not a file:// URL".into()))?;
        let path = percent_decode(raw).ok_or_else(|| refused("invalid percent-encoding".into()))?;
        let path = PathBuf::from(path);
        if !path.is_absolute() || raw.contains(['?', '#']) {
            return Err(refused(
                "a file:// URL needs an absolute path (file:///dir/image) without query".into(),
            ));
        }
        if self.file_url_allowed_paths.is_empty() {
            return Err(refused(
                "file:// sources are not allowed: the operator lists directories in \
                 [conductor] file_url_allowed_paths"
                    .into(),
            ));
        }
        let real =
            fs::canonicalize(&path).map_err(|e| refused(format!("cannot resolve it: {e}")))?;
        self.check_resolved(url, &real)?;
        let meta = fs::metadata(&real).map_err(|e| refused(format!("cannot read it: {e}")))?;
        if !meta.is_file() {
            return Err(refused(format!("{} is not a regular file", real.display())));
        }
        Ok(real)
    }

    /// Opens the file a `file://` source names, checked by
    /// [`Self::local_file`], without following a symlink or blocking on a
    /// FIFO swapped in since the check, and checks again what was opened.
    pub fn open_local_file(&self, url: &str) -> Result<File, CacheError> {
        use std::os::unix::fs::OpenOptionsExt;
        use std::os::unix::io::AsRawFd;
        let refused =
            |why: String| CacheError::InvalidRequest(format!("image source {url}: {why}"));
        let real = self.local_file(url)?;
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&real)
            .map_err(|e| refused(format!("cannot open it: {e}")))?;
        let meta = file
            .metadata()
            .map_err(|e| refused(format!("cannot read it: {e}")))?;
        if !meta.is_file() {
            return Err(refused(format!("{} is not a regular file", real.display())));
        }
        let opened = fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .map_err(|e| refused(format!("cannot tell what was opened: {e}")))?;
        self.check_resolved(url, &opened)?;
        Ok(file)
    }

    /// The allow-list rules for a path with no symlinks left in it.
    fn check_resolved(&self, url: &str, real: &Path) -> Result<(), CacheError> {
        let refused =
            |why: String| CacheError::InvalidRequest(format!("image source {url}: {why}"));
        if let Some(root) = FORBIDDEN_FILE_ROOTS
            .iter()
            .find(|root| real.starts_with(root))
        {
            return Err(refused(format!(
                "it resolves to {}, and nothing under {root} is ever read as an image",
                real.display()
            )));
        }
        let allowed = self
            .file_url_allowed_paths
            .iter()
            .any(|dir| fs::canonicalize(dir).is_ok_and(|dir| real.starts_with(dir)));
        if !allowed {
            return Err(refused(format!(
                "{} is not inside the directories of [conductor] file_url_allowed_paths",
                real.display()
            )));
        }
        Ok(())
    }
}

/// `%XX` decoding of a URL path; None when malformed or not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The image an operator asked for.
#[derive(Debug, Clone)]
pub struct ImageRequest {
    /// `http://` or `https://` URL of the original image.
    pub url: String,
    /// A digest (`hex` or `algo:hex`) or the URL of a checksum file.
    pub checksum: String,
    /// `image_os_hash_algo`, when given.
    pub checksum_algorithm: Option<String>,
    /// The format the image was declared as (`image_disk_format`).
    pub declared_format: Option<Format>,
    pub permitted_formats: Vec<Format>,
    /// Convert to raw on the server (else serve the image as downloaded).
    pub convert_to_raw: bool,
}

/// A complete entry, as the agent is told about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachedImage {
    /// The entry's name, also the last segment of its URL.
    pub name: String,
    /// The format served: `raw` when converted.
    pub format: String,
    /// The format of the original image.
    pub source_format: String,
    /// `algo:hex` of the original image, as verified.
    pub source_checksum: String,
    /// The sha256 of the file served.
    pub sha256: String,
    /// The size of the file served.
    pub size: u64,
    pub virtual_size: Option<u64>,
    /// Bytes of data in the block map (raw images only).
    pub mapped_bytes: Option<u64>,
    /// The source URL without credentials or query.
    pub source: String,
}

/// What a clean-up removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    pub removed: Vec<String>,
    pub freed_bytes: u64,
    /// Allocated bytes left in the cache.
    pub remaining_bytes: u64,
}

/// Why an image could not be cached.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The request cannot work: the operator must change it.
    #[error("{0}")]
    InvalidRequest(String),
    #[error("downloading {url}")]
    Download {
        url: String,
        #[source]
        source: DownloadError,
    },
    #[error("image {url}")]
    Image {
        url: String,
        #[source]
        source: ferric_image::Error,
    },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("the server answered HTTP {0}")]
    Status(u16),
    #[error("the request failed")]
    Http(#[source] reqwest::Error),
    #[error("no data arrived for {0:?}")]
    Stalled(Duration),
    #[error("the image is larger than the cache's size limit of {0} bytes")]
    TooLarge(u64),
    #[error("the connection ended after {got} of {expected} bytes")]
    Truncated { got: u64, expected: u64 },
    #[error("the server does not honour Range, so the download cannot resume at byte {0}")]
    NoResume(u64),
    #[error("writing the download")]
    Write(#[source] io::Error),
}

impl DownloadError {
    fn retryable(&self) -> bool {
        match self {
            DownloadError::Status(status) => *status >= 500 || *status == 429,
            DownloadError::Http(_) | DownloadError::Stalled(_) => true,
            DownloadError::Truncated { .. } => true,
            _ => false,
        }
    }
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> CacheError {
    let context = context.into();
    move |source| CacheError::Io { context, source }
}

/// An error and its causes on one line, for `last_error`.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// A URL as errors and logs show it (Ferric's one definition).
pub use ferric_types::url::redact;

/// Whether `name` is the name of an entry: `sha256-<64 hex>`,
/// `sha512-<128 hex>` or `md5-<32 hex>`, `-<16 hex>` of its source, then
/// `.raw` or `.img`.
/// Nothing else is ever opened, so a name cannot reach outside the cache.
pub fn is_entry_name(name: &str) -> bool {
    let is_hex = |text: &str, len: usize| {
        text.len() == len
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let Some((stem, extension)) = name.rsplit_once('.') else {
        return false;
    };
    let mut parts = stem.split('-');
    let (Some(algorithm), Some(hex), Some(source), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let length = match algorithm {
        "sha256" => 64,
        "sha512" => 128,
        "md5" => 32,
        _ => return false,
    };
    matches!(extension, "raw" | "img") && is_hex(hex, length) && is_hex(source, 16)
}

/// An entry is the image of this checksum from this source (its URL without
/// credentials or query): a request naming another source downloads and
/// verifies its own copy rather than reusing one it merely knows the
/// checksum of.
fn entry_name(checksum: &Checksum, source: &str, converted: bool) -> String {
    let extension = if converted { "raw" } else { "img" };
    let source = checksum::sha256_hex(redact(source).as_bytes());
    format!(
        "{}-{}-{}.{extension}",
        checksum.algorithm.name(),
        checksum.hex,
        &source[..16]
    )
}

struct Lease {
    name: String,
    expires: Instant,
}

#[derive(Default)]
struct State {
    /// By holder (a node's UUID): one image per running deploy.
    leases: HashMap<String, Lease>,
    /// Temporary directories of downloads in progress.
    building: HashSet<PathBuf>,
}

impl State {
    fn in_use(&self, name: &str, now: Instant) -> bool {
        self.leases
            .values()
            .any(|l| l.name == name && l.expires > now)
    }
}

struct Inner {
    config: CacheConfig,
    client: reqwest::Client,
    state: Mutex<State>,
    /// One lock per entry name: a second deploy of an image waits for the
    /// first one's download instead of starting its own.
    building_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The image cache. Cheap to clone.
#[derive(Clone)]
pub struct ImageCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ImageCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageCache")
            .field("dir", &self.inner.config.dir)
            .finish()
    }
}

impl ImageCache {
    /// A cache in `config.dir`. Temporary directories a previous run left
    /// are removed now; the directory itself is created on first use.
    pub fn new(config: CacheConfig) -> Result<ImageCache, CacheError> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|e| {
                CacheError::InvalidRequest(format!("cannot build the HTTP client: {e}"))
            })?;
        let cache = ImageCache {
            inner: Arc::new(Inner {
                config,
                client,
                state: Mutex::default(),
                building_locks: Mutex::default(),
            }),
        };
        if let Ok(listing) = fs::read_dir(cache.dir()) {
            for entry in listing.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(TEMP_PREFIX) || name.starts_with(DELETE_PREFIX) {
                    tracing::info!(dir = %entry.path().display(), "removing a left-over temporary image directory");
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(cache)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.config.dir
    }

    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// Makes sure the image of `request` is cached and leases it to
    /// `holder` (a node's UUID; a previous lease of the holder ends).
    /// Downloads, verifies, inspects and converts it if it is not cached.
    pub async fn prepare(
        &self,
        request: &ImageRequest,
        holder: &str,
    ) -> Result<CachedImage, CacheError> {
        let url = redact(&request.url);
        if request.url.starts_with("file://") {
            // Checked before a cache hit too: a refused path gets nothing.
            self.inner.config.local_file(&request.url)?;
        } else if !(request.url.starts_with("http://") || request.url.starts_with("https://")) {
            return Err(CacheError::InvalidRequest(format!(
                "the image source {url} is not an http(s) or file:// URL"
            )));
        }
        let checksum = self.expected_checksum(request).await?;
        let name = entry_name(&checksum, &request.url, request.convert_to_raw);
        let lock = self.building_lock(&name);
        let result = {
            let _building = lock.lock().await;
            match self.lease_existing(&name, holder)? {
                Some(image) => Ok(image),
                None => self.build(request, &checksum, &name, holder).await,
            }
        };
        drop(lock);
        self.forget_building_lock(&name);
        let image = result?;
        // A cache hit must satisfy this request's policy too.
        let policy = Policy {
            permitted: request.permitted_formats.clone(),
            declared: request.declared_format,
        };
        let source_format =
            image
                .source_format
                .parse::<Format>()
                .map_err(|source| CacheError::Image {
                    url: url.clone(),
                    source,
                });
        let checked = source_format.and_then(|format| {
            policy
                .check(&Inspection {
                    format,
                    virtual_size: image.virtual_size,
                    also_matched: Vec::new(),
                    details: Vec::new(),
                })
                .map_err(|source| CacheError::Image { url, source })
        });
        if let Err(e) = checked {
            self.release(holder);
            return Err(e);
        }
        Ok(image)
    }

    /// Ends `holder`'s lease, if any.
    pub fn release(&self, holder: &str) {
        self.inner.state.lock().unwrap().leases.remove(holder);
    }

    /// Extends `holder`'s lease while its deploy goes on.
    pub fn renew(&self, holder: &str) {
        let expires = Instant::now() + self.inner.config.lease_ttl;
        if let Some(lease) = self.inner.state.lock().unwrap().leases.get_mut(holder) {
            lease.expires = expires;
        }
    }

    /// Whether some deploy holds a lease on the entry `name`.
    pub fn is_in_use(&self, name: &str) -> bool {
        self.inner
            .state
            .lock()
            .unwrap()
            .in_use(name, Instant::now())
    }

    /// Opens the image of a complete entry for serving, with its size.
    /// None for an invalid name or no such entry.
    pub fn open(&self, name: &str) -> Result<Option<(File, u64)>, CacheError> {
        if !is_entry_name(name) {
            return Ok(None);
        }
        let entry = self.dir().join(name);
        if !entry.join(META_FILE).is_file() {
            return Ok(None);
        }
        match File::open(entry.join(IMAGE_FILE)) {
            Ok(file) => {
                let size = file
                    .metadata()
                    .map_err(io_error(format!("reading the size of cached image {name}")))?
                    .len();
                Ok(Some((file, size)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(format!("opening cached image {name}"))(e)),
        }
    }

    /// The complete entries, least recently used first.
    pub fn entries(&self) -> Result<Vec<CachedImage>, CacheError> {
        let mut listed = self.list()?;
        listed.sort_by_key(|e| e.last_used);
        listed
            .into_iter()
            .map(|e| read_meta(&self.dir().join(&e.name)))
            .collect()
    }

    /// Removes entries unused for longer than the TTL, then the least
    /// recently used ones while the cache is over its size limit; leased
    /// entries stay. Blocking: call it from a blocking thread.
    pub fn clean_up(&self) -> Result<CleanupReport, CacheError> {
        self.clean_up_as_of(SystemTime::now())
    }

    /// [`ImageCache::clean_up`] as if it were `now` (for tests).
    pub fn clean_up_as_of(&self, now: SystemTime) -> Result<CleanupReport, CacheError> {
        let config = &self.inner.config;
        let mut report = CleanupReport::default();
        let doomed = {
            let state = self.inner.state.lock().unwrap();
            let instant = Instant::now();
            let mut entries = self.list()?;
            entries.sort_by_key(|e| e.last_used);
            let mut total: u64 = entries.iter().map(|e| e.allocated).sum();
            let mut doomed = Vec::new();
            let mut kept = Vec::new();
            for entry in entries {
                let age = now
                    .duration_since(entry.last_used)
                    .unwrap_or(Duration::ZERO);
                if age > config.ttl && !state.in_use(&entry.name, instant) {
                    total -= entry.allocated;
                    doomed.push(entry);
                } else {
                    kept.push(entry);
                }
            }
            for entry in kept {
                if total <= config.max_size {
                    break;
                }
                if !state.in_use(&entry.name, instant) {
                    total -= entry.allocated;
                    doomed.push(entry);
                }
            }
            report.remaining_bytes = total;
            // Renamed away under the lock: once it is released nothing
            // can lease or serve these any more.
            let mut moved = Vec::new();
            for entry in doomed {
                let from = self.dir().join(&entry.name);
                let to = self.dir().join(format!(
                    "{DELETE_PREFIX}{}-{}",
                    entry.name,
                    uuid::Uuid::new_v4().simple()
                ));
                match fs::rename(&from, &to) {
                    Ok(()) => moved.push((entry, to)),
                    Err(e) => {
                        tracing::warn!(entry = %entry.name, error = %e, "could not evict a cached image")
                    }
                }
            }
            drop(state);
            moved
        };
        for (entry, path) in doomed {
            if let Err(e) = fs::remove_dir_all(&path) {
                tracing::warn!(dir = %path.display(), error = %e, "could not remove an evicted image");
            }
            tracing::info!(entry = %entry.name, bytes = entry.allocated, "evicted a cached image");
            report.freed_bytes += entry.allocated;
            report.removed.push(entry.name);
        }
        // Downloads a crash interrupted, and deletions that failed.
        // Chosen under the lock, removed after it: removing gigabytes must
        // not hold up leases and lookups.
        let leftovers: Vec<PathBuf> = match fs::read_dir(self.dir()) {
            Ok(listing) => {
                let state = self.inner.state.lock().unwrap();
                listing
                    .flatten()
                    .filter(|entry| {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        name.starts_with(DELETE_PREFIX)
                            || (name.starts_with(TEMP_PREFIX)
                                && !state.building.contains(&entry.path()))
                    })
                    .map(|entry| entry.path())
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        for path in leftovers {
            let _ = fs::remove_dir_all(path);
        }
        Ok(report)
    }

    // ---- internals ----

    fn building_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner
            .building_locks
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    fn forget_building_lock(&self, name: &str) {
        let mut locks = self.inner.building_locks.lock().unwrap();
        if locks.get(name).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(name);
        }
    }

    fn lease(&self, state: &mut State, name: &str, holder: &str) {
        state.leases.insert(
            holder.to_string(),
            Lease {
                name: name.to_string(),
                expires: Instant::now() + self.inner.config.lease_ttl,
            },
        );
    }

    /// Leases a complete entry and marks it used now; None if absent.
    fn lease_existing(&self, name: &str, holder: &str) -> Result<Option<CachedImage>, CacheError> {
        let mut state = self.inner.state.lock().unwrap();
        let entry = self.dir().join(name);
        let meta = entry.join(META_FILE);
        if !meta.is_file() {
            return Ok(None);
        }
        let image = read_meta(&entry)?;
        touch(&meta)?;
        self.lease(&mut state, name, holder);
        tracing::debug!(entry = name, "image cache hit");
        Ok(Some(image))
    }

    /// The operator's checksum, fetching a checksum file if one is named.
    /// md5 only if the operator allows it.
    async fn expected_checksum(&self, request: &ImageRequest) -> Result<Checksum, CacheError> {
        let value = request.checksum.trim();
        let algorithm = request.checksum_algorithm.as_deref();
        let invalid = |e: ferric_image::Error| CacheError::InvalidRequest(e.to_string());
        // md5 is parsed here and refused below, with the setting to change.
        let checksum = if checksum::is_url(value) {
            if !(value.starts_with("http://") || value.starts_with("https://")) {
                return Err(CacheError::InvalidRequest(format!(
                    "the checksum file {} is not an http(s) URL",
                    redact(value)
                )));
            }
            let text = self.fetch_text(value, CHECKSUM_FILE_MAX).await?;
            Checksum::from_checksum_file(&text, &request.url, algorithm, true).map_err(invalid)?
        } else {
            Checksum::parse(value, algorithm, true).map_err(invalid)?
        };
        if checksum.algorithm == Algorithm::Md5 && !self.inner.config.allow_md5_checksum {
            return Err(CacheError::InvalidRequest(MD5_DISABLED.into()));
        }
        Ok(checksum)
    }

    async fn fetch_text(&self, url: &str, max: usize) -> Result<String, CacheError> {
        let failed = |source| CacheError::Download {
            url: redact(url),
            source,
        };
        let mut response = tokio::time::timeout(
            self.inner.config.stall_timeout,
            self.inner.client.get(url).send(),
        )
        .await
        .map_err(|_| failed(DownloadError::Stalled(self.inner.config.stall_timeout)))?
        .map_err(|e| failed(DownloadError::Http(e.without_url())))?;
        if !response.status().is_success() {
            return Err(failed(DownloadError::Status(response.status().as_u16())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| failed(DownloadError::Http(e.without_url())))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > max {
                return Err(failed(DownloadError::TooLarge(max as u64)));
            }
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// Downloads, verifies and converts into a temporary directory, then
    /// renames it into place and leases it.
    async fn build(
        &self,
        request: &ImageRequest,
        checksum: &Checksum,
        name: &str,
        holder: &str,
    ) -> Result<CachedImage, CacheError> {
        fs::create_dir_all(self.dir()).map_err(io_error(format!(
            "creating the image cache directory {}",
            self.dir().display()
        )))?;
        let temp = self.dir().join(format!(
            "{TEMP_PREFIX}{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        fs::create_dir(&temp).map_err(io_error(format!("creating {}", temp.display())))?;
        self.inner
            .state
            .lock()
            .unwrap()
            .building
            .insert(temp.clone());
        // Forgotten however this ends, a dropped (cancelled) build included,
        // so a later clean-up removes what it left.
        struct Building<'a>(&'a ImageCache, PathBuf);
        impl Drop for Building<'_> {
            fn drop(&mut self) {
                let mut state = self.0.inner.state.lock().unwrap_or_else(|p| p.into_inner());
                state.building.remove(&self.1);
            }
        }
        let building = Building(self, temp.clone());
        let built = self.build_in(request, checksum, name, &temp).await;
        let installed = built.and_then(|image| {
            let mut state = self.inner.state.lock().unwrap();
            let target = self.dir().join(name);
            fs::rename(&temp, &target)
                .map_err(io_error(format!("installing cached image {name}")))?;
            sync_dir(self.dir())?;
            self.lease(&mut state, name, holder);
            Ok(image)
        });
        drop(building);
        match installed {
            Ok(image) => {
                tracing::info!(entry = name, source = %image.source, format = %image.format,
                               bytes = image.size, "image cached");
                // Make room; the new entry is leased and stays.
                let cache = self.clone();
                match tokio::task::spawn_blocking(move || cache.clean_up()).await {
                    Ok(Err(e)) => tracing::warn!(error = %chain(&e), "image cache clean-up failed"),
                    Err(e) => tracing::warn!(error = %e, "image cache clean-up panicked"),
                    Ok(Ok(_)) => {}
                }
                Ok(image)
            }
            Err(e) => {
                let _ = tokio::task::spawn_blocking(move || fs::remove_dir_all(&temp)).await;
                Err(e)
            }
        }
    }

    async fn build_in(
        &self,
        request: &ImageRequest,
        checksum: &Checksum,
        name: &str,
        temp: &Path,
    ) -> Result<CachedImage, CacheError> {
        let url = redact(&request.url);
        let download = temp.join(DOWNLOAD_FILE);
        let digests = if request.url.starts_with("file://") {
            let file = self.inner.config.open_local_file(&request.url)?;
            let max = self.inner.config.max_size;
            let algorithm = checksum.algorithm;
            let target = download.clone();
            tokio::task::spawn_blocking(move || copy_hashed(file, &target, algorithm, max))
                .await
                .map_err(|e| DownloadError::Write(io::Error::other(e.to_string())))
                .and_then(|r| r)
        } else {
            self.download(&request.url, &download, checksum.algorithm)
                .await
        }
        .map_err(|source| CacheError::Download {
            url: url.clone(),
            source,
        })?;
        let (expected, sha256) = digests;
        checksum
            .verify(&expected)
            .map_err(|source| CacheError::Image {
                url: url.clone(),
                source,
            })?;
        let job = Conversion {
            name: name.to_string(),
            source: url,
            source_checksum: format!("{}:{}", checksum.algorithm.name(), checksum.hex),
            source_sha256: sha256.hex,
            policy: Policy {
                permitted: request.permitted_formats.clone(),
                declared: request.declared_format,
            },
            convert_to_raw: request.convert_to_raw,
            max_virtual_size: self.inner.config.max_virtual_size,
            dir: temp.to_path_buf(),
        };
        tokio::task::spawn_blocking(move || job.run())
            .await
            .map_err(|e| CacheError::Io {
                context: "converting the image".into(),
                source: io::Error::other(e.to_string()),
            })?
    }

    /// Streams `url` into `path` (written and hashed on a blocking thread),
    /// resuming with Range after a failure. Returns the digest in the
    /// operator's algorithm and the sha256.
    async fn download(
        &self,
        url: &str,
        path: &Path,
        algorithm: Algorithm,
    ) -> Result<(Digested, Digested), DownloadError> {
        let config = &self.inner.config;
        let (send, mut receive) = tokio::sync::mpsc::channel::<Vec<u8>>(IN_FLIGHT);
        let file = File::create_new(path).map_err(DownloadError::Write)?;
        let writer = tokio::task::spawn_blocking(move || {
            let mut file = io::BufWriter::with_capacity(1 << 20, file);
            let mut operator = Hasher::new(algorithm);
            let mut sha256 = Hasher::new(Algorithm::Sha256);
            while let Some(chunk) = receive.blocking_recv() {
                operator.update(&chunk);
                sha256.update(&chunk);
                file.write_all(&chunk)?;
            }
            let file = file.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            Ok::<_, io::Error>((operator.finish(), sha256.finish()))
        });
        let mut received = 0u64;
        let mut expected: Option<u64> = None;
        let mut attempt = 0;
        let fetched = loop {
            match self
                .fetch_once(url, &send, &mut received, &mut expected)
                .await
            {
                Ok(()) => break Ok(()),
                Err(e) if e.retryable() && attempt < config.retries && !send.is_closed() => {
                    attempt += 1;
                    tracing::warn!(url = %redact(url), attempt, received, error = %chain(&e),
                                   "image download failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                }
                Err(e) => break Err(e),
            }
        };
        drop(send);
        let written = writer
            .await
            .map_err(|e| DownloadError::Write(io::Error::other(e.to_string())))?;
        // A writer failure closes the channel and surfaces here first.
        let digests = written.map_err(DownloadError::Write)?;
        fetched.map(|()| digests)
    }

    async fn fetch_once(
        &self,
        url: &str,
        send: &tokio::sync::mpsc::Sender<Vec<u8>>,
        received: &mut u64,
        expected: &mut Option<u64>,
    ) -> Result<(), DownloadError> {
        let config = &self.inner.config;
        let stall = config.stall_timeout;
        let mut get = self.inner.client.get(url);
        if *received > 0 {
            get = get.header(reqwest::header::RANGE, format!("bytes={received}-"));
        }
        let mut response = tokio::time::timeout(stall, get.send())
            .await
            .map_err(|_| DownloadError::Stalled(stall))?
            .map_err(|e| DownloadError::Http(e.without_url()))?;
        let status = response.status().as_u16();
        if *received > 0 {
            let resumes_here = status == 206
                && response
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok())
                    == Some(*received);
            if !resumes_here {
                return Err(if (200..300).contains(&status) {
                    DownloadError::NoResume(*received)
                } else {
                    DownloadError::Status(status)
                });
            }
        } else if status != 200 {
            return Err(DownloadError::Status(status));
        } else {
            *expected = response.content_length();
        }
        if let Some(total) = *expected {
            if total > config.max_size {
                return Err(DownloadError::TooLarge(config.max_size));
            }
        }
        loop {
            let chunk = tokio::time::timeout(stall, response.chunk())
                .await
                .map_err(|_| DownloadError::Stalled(stall))?
                .map_err(|e| DownloadError::Http(e.without_url()))?;
            let Some(chunk) = chunk else { break };
            *received += chunk.len() as u64;
            if *received > config.max_size {
                return Err(DownloadError::TooLarge(config.max_size));
            }
            if send.send(chunk.to_vec()).await.is_err() {
                // The writer failed; its error is reported.
                return Ok(());
            }
        }
        match *expected {
            Some(total) if *received < total => Err(DownloadError::Truncated {
                got: *received,
                expected: total,
            }),
            _ => Ok(()),
        }
    }

    /// Complete entries with their last use and allocated size.
    fn list(&self) -> Result<Vec<Listed>, CacheError> {
        let listing = match fs::read_dir(self.dir()) {
            Ok(listing) => listing,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(io_error(format!("listing {}", self.dir().display()))(e));
            }
        };
        let mut entries = Vec::new();
        for entry in listing.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_entry_name(&name) {
                continue;
            }
            let path = entry.path();
            let Ok(meta) = fs::metadata(path.join(META_FILE)) else {
                continue;
            };
            let last_used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let mut allocated = meta.blocks() * 512;
            if let Ok(files) = fs::read_dir(&path) {
                for file in files.flatten() {
                    if file.file_name() != META_FILE {
                        if let Ok(m) = file.metadata() {
                            allocated += m.blocks() * 512;
                        }
                    }
                }
            }
            entries.push(Listed {
                name,
                last_used,
                allocated,
            });
        }
        Ok(entries)
    }
}

/// Copies a local image into the cache, hashing it in the same pass (the
/// operator's algorithm and sha256), at most `max` bytes.
fn copy_hashed(
    input: File,
    target: &Path,
    algorithm: Algorithm,
    max: u64,
) -> Result<(Digested, Digested), DownloadError> {
    let mut input = io::Read::take(input, max.saturating_add(1));
    let mut output = io::BufWriter::with_capacity(
        1 << 20,
        File::create_new(target).map_err(DownloadError::Write)?,
    );
    let mut operator = Hasher::new(algorithm);
    let mut sha256 = Hasher::new(Algorithm::Sha256);
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = io::Read::read(&mut input, &mut buffer).map_err(DownloadError::Write)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > max {
            return Err(DownloadError::TooLarge(max));
        }
        operator.update(&buffer[..n]);
        sha256.update(&buffer[..n]);
        output
            .write_all(&buffer[..n])
            .map_err(DownloadError::Write)?;
    }
    let file = output
        .into_inner()
        .map_err(|e| DownloadError::Write(e.into_error()))?;
    file.sync_all().map_err(DownloadError::Write)?;
    Ok((operator.finish(), sha256.finish()))
}

struct Listed {
    name: String,
    last_used: SystemTime,
    allocated: u64,
}

fn read_meta(entry: &Path) -> Result<CachedImage, CacheError> {
    let path = entry.join(META_FILE);
    let text =
        fs::read_to_string(&path).map_err(io_error(format!("reading {}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| CacheError::Io {
        context: format!("parsing {}", path.display()),
        source: io::Error::new(io::ErrorKind::InvalidData, e),
    })
}

/// Marks an entry used now (its meta file's modification time).
fn touch(meta: &Path) -> Result<(), CacheError> {
    File::options()
        .write(true)
        .open(meta)
        .and_then(|f| f.set_modified(SystemTime::now()))
        .map_err(io_error(format!("marking {} used", meta.display())))
}

fn sync_dir(dir: &Path) -> Result<(), CacheError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(format!("syncing {}", dir.display())))
}

fn write_synced(path: &Path, data: &[u8]) -> Result<(), CacheError> {
    File::create_new(path)
        .and_then(|mut f| {
            f.write_all(data)?;
            f.sync_all()
        })
        .map_err(io_error(format!("writing {}", path.display())))
}

/// The blocking part of building an entry: inspect, convert or scan, hash,
/// write the metadata. Runs on a blocking thread.
struct Conversion {
    name: String,
    source: String,
    source_checksum: String,
    source_sha256: String,
    policy: Policy,
    convert_to_raw: bool,
    max_virtual_size: u64,
    dir: PathBuf,
}

impl Conversion {
    fn run(self) -> Result<CachedImage, CacheError> {
        let image_error = |source| CacheError::Image {
            url: self.source.clone(),
            source,
        };
        let download = self.dir.join(DOWNLOAD_FILE);
        let output = self.dir.join(IMAGE_FILE);
        let mut source = pipeline::open_image(&download).map_err(image_error)?;
        let (image, block_map) = if self.convert_to_raw {
            let out = File::options()
                .write(true)
                .create_new(true)
                .open(&output)
                .map_err(io_error(format!("creating {}", output.display())))?;
            let (converted, sink) = pipeline::convert_file(
                &mut source,
                HashingSink::new(FileSink::new(out), Algorithm::Sha256),
                &self.policy,
                self.max_virtual_size,
            )
            .map_err(image_error)?;
            drop(source);
            let (sha256, _) = sink.into_parts().map_err(image_error)?;
            fs::remove_file(&download)
                .map_err(io_error(format!("removing {}", download.display())))?;
            let image = CachedImage {
                name: self.name.clone(),
                format: Format::Raw.name().into(),
                source_format: converted.inspection.format.name().into(),
                source_checksum: self.source_checksum.clone(),
                sha256: sha256.hex,
                size: converted.virtual_size,
                virtual_size: Some(converted.virtual_size),
                mapped_bytes: Some(converted.block_map.mapped_bytes),
                source: self.source.clone(),
            };
            (image, Some(converted.block_map))
        } else {
            let inspection = format::inspect(&mut source).map_err(image_error)?;
            self.policy.check(&inspection).map_err(image_error)?;
            if let Some(size) = inspection.virtual_size {
                if size > self.max_virtual_size {
                    return Err(image_error(ferric_image::Error::TooLarge(format!(
                        "the image's virtual size is {size} bytes; at most {} are accepted",
                        self.max_virtual_size
                    ))));
                }
            }
            let size = source
                .metadata()
                .map_err(io_error("reading the size of the download"))?
                .len();
            // Served as is; a raw image still gets its block map.
            let block_map = if matches!(
                inspection.format,
                Format::Raw | Format::Gpt | Format::Mbr | Format::Iso
            ) {
                let mut sink = BmapSink::new(NullSink, bmap::DEFAULT_BLOCK_SIZE);
                bmap::scan(&mut source, &mut sink, bmap::DEFAULT_BLOCK_SIZE)
                    .map_err(image_error)?;
                sink.into_parts().0
            } else {
                None
            };
            drop(source);
            fs::rename(&download, &output)
                .map_err(io_error(format!("renaming {}", download.display())))?;
            let image = CachedImage {
                name: self.name.clone(),
                format: inspection.format.name().into(),
                source_format: inspection.format.name().into(),
                source_checksum: self.source_checksum.clone(),
                sha256: self.source_sha256.clone(),
                size,
                virtual_size: inspection.virtual_size,
                mapped_bytes: block_map.as_ref().map(|m| m.mapped_bytes),
                source: self.source.clone(),
            };
            (image, block_map)
        };
        if let Some(map) = block_map {
            write_synced(&self.dir.join(BMAP_FILE), map.to_json().as_bytes())?;
        }
        let meta = serde_json::to_vec_pretty(&image).expect("entry metadata always serialises");
        write_synced(&self.dir.join(META_FILE), &meta)?;
        sync_dir(&self.dir)?;
        Ok(image)
    }
}

/// Zeros to hash holes with, a bounded chunk at a time.
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// Forwards a converted image to `inner` and hashes the file it makes:
/// data as written, holes (announced or skipped over) and the tail up to the
/// final size as zeros. One pass is enough because a converter's calls come
/// in ascending offset order; a call that goes back fails rather than give
/// a wrong digest. Holes cost CPU (sha256 of their zeros), not I/O.
struct HashingSink<S> {
    inner: S,
    /// None once finished.
    hasher: Option<Hasher>,
    /// Every byte before this offset is hashed.
    hashed: u64,
    digest: Option<Digested>,
}

impl<S: BlockSink> HashingSink<S> {
    fn new(inner: S, algorithm: Algorithm) -> Self {
        HashingSink {
            inner,
            hasher: Some(Hasher::new(algorithm)),
            hashed: 0,
            digest: None,
        }
    }

    /// Hashes zeros from where hashing stopped up to `offset`.
    fn zeros_up_to(&mut self, offset: u64) -> ferric_image::Result<&mut Hasher> {
        let out_of_order = |what: String| ferric_image::Error::Corrupt(what);
        let hasher = self
            .hasher
            .as_mut()
            .ok_or_else(|| out_of_order("the conversion went on after it finished".into()))?;
        if offset < self.hashed {
            return Err(out_of_order(format!(
                "the conversion went back from byte {} to byte {offset}",
                self.hashed
            )));
        }
        let mut left = offset - self.hashed;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64) as usize;
            hasher.update(&ZEROS[..n]);
            left -= n as u64;
        }
        self.hashed = offset;
        Ok(hasher)
    }

    fn hash_data(&mut self, offset: u64, data: &[u8]) -> ferric_image::Result<()> {
        self.zeros_up_to(offset)?.update(data);
        self.hashed += data.len() as u64;
        Ok(())
    }

    /// The digest and the inner sink, once the image is finished.
    fn into_parts(self) -> ferric_image::Result<(Digested, S)> {
        let digest = self
            .digest
            .ok_or_else(|| ferric_image::Error::Corrupt("the conversion did not finish".into()))?;
        Ok((digest, self.inner))
    }
}

impl<S: BlockSink> BlockSink for HashingSink<S> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> ferric_image::Result<()> {
        self.hash_data(offset, data)?;
        self.inner.write_at(offset, data)
    }

    fn hole(&mut self, offset: u64, len: u64) -> ferric_image::Result<()> {
        let end = offset.checked_add(len).ok_or_else(|| {
            ferric_image::Error::Corrupt(format!("a hole of {len} bytes at byte {offset}"))
        })?;
        self.zeros_up_to(offset)?;
        self.zeros_up_to(end)?;
        self.inner.hole(offset, len)
    }

    fn finish(&mut self, size: u64) -> ferric_image::Result<()> {
        self.zeros_up_to(size)?;
        self.digest = self.hasher.take().map(Hasher::finish);
        self.inner.finish(size)
    }

    fn write_owned(
        &mut self,
        offset: u64,
        buffer: Vec<u8>,
        len: usize,
    ) -> ferric_image::Result<Vec<u8>> {
        self.hash_data(offset, &buffer[..len])?;
        self.inner.write_owned(offset, buffer, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferric_image::sink::VecSink;

    /// Holes announced and skipped over, at the start, in the middle and at
    /// the end (longer than the zero buffer), and owned buffers: the digest
    /// is the sha256 of the bytes the sink holds.
    #[test]
    fn the_hashing_sink_hashes_the_image_as_written() {
        let mut sink = HashingSink::new(VecSink::default(), Algorithm::Sha256);
        sink.hole(0, 4096).unwrap();
        sink.write_at(4096, &[1; 1000]).unwrap();
        // 5096..8192 is a hole nobody announced.
        sink.write_at(8192, &[2; 4096]).unwrap();
        sink.hole(12288, (3 << 20) + 7).unwrap();
        let buffer = sink
            .write_owned((3 << 20) + 12295, vec![3; 8192], 5000)
            .unwrap();
        assert_eq!(buffer.len(), 8192);
        let size = (5 << 20) + 3;
        sink.finish(size).unwrap();
        let (digest, written) = sink.into_parts().unwrap();
        assert_eq!(written.data.len() as u64, size);
        assert_eq!(digest.algorithm, Algorithm::Sha256);
        assert_eq!(digest.hex, checksum::sha256_hex(&written.data));

        let mut empty = HashingSink::new(NullSink, Algorithm::Sha256);
        empty.finish(0).unwrap();
        assert_eq!(empty.into_parts().unwrap().0.hex, checksum::sha256_hex(b""));
    }

    #[test]
    fn the_hashing_sink_refuses_calls_out_of_order() {
        let mut sink = HashingSink::new(NullSink, Algorithm::Sha256);
        sink.write_at(4096, &[1; 4096]).unwrap();
        let error = sink.write_at(0, &[1; 10]).unwrap_err();
        assert!(error.to_string().contains("went back"), "{error}");
        assert!(sink.hole(4096, 1).is_err(), "a hole over data");
        assert!(sink.finish(100).is_err(), "an image shorter than its data");
        let unfinished = HashingSink::new(NullSink, Algorithm::Sha256);
        assert!(unfinished.into_parts().is_err());
        let mut finished = HashingSink::new(NullSink, Algorithm::Sha256);
        finished.finish(10).unwrap();
        assert!(finished.write_at(10, &[1]).is_err());
    }

    #[test]
    fn entry_names_are_strict() {
        let hex = "a".repeat(64);
        let source = "0123456789abcdef";
        assert!(is_entry_name(&format!("sha256-{hex}-{source}.raw")));
        assert!(is_entry_name(&format!(
            "sha512-{}-{source}.img",
            "0".repeat(128)
        )));
        assert!(is_entry_name(&format!(
            "md5-{}-{source}.raw",
            "a".repeat(32)
        )));
        assert!(!is_entry_name(&format!("sha256-{hex}.raw")), "no source");
        for bad in [
            format!("sha256-{hex}"),
            format!("sha256-{}.raw", "A".repeat(64)),
            format!("md5-{}.raw", "a".repeat(32)),
            format!("md5-{}-{source}.raw", "a".repeat(31)),
            format!("sha256-{hex}.raw/../x"),
            "../etc/passwd".to_string(),
            format!("../sha256-{hex}.raw"),
            format!("sha256-{}.raw", "a".repeat(63)),
            format!("{TEMP_PREFIX}sha256-{hex}.raw"),
            String::new(),
        ] {
            assert!(!is_entry_name(&bad), "{bad}");
        }
    }

    #[test]
    fn urls_lose_credentials_and_queries() {
        assert_eq!(
            redact("https://user:pw@host:8080/a/b.img?sig=x#f"),
            "https://host:8080/a/b.img?…"
        );
        assert_eq!(redact("http://host"), "http://host");
    }
}
