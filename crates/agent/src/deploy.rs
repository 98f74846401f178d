//! The `write_image` deploy step (IPA's `GenericHardwareManager.write_image`,
//! which runs `standby.prepare_image` for a whole-disk image), and
//! `standby.get_partition_uuids`.
//!
//! One pass: the image is downloaded ([`crate::download`]), hashed,
//! inspected and written by [`ferric_image::pipeline::write_stream`], which
//! keeps the disk's first MiB back until the checksum verified and wipes the
//! partition tables on any failure. Unlike IPA, images declared raw are
//! inspected too, and the checksum is checked before the disk can boot.
//! With `stream_raw_images` false in image_info (IPA's switch), the image is
//! downloaded to the spool directory and verified first, and written from
//! there: the disk is not touched by a download that fails.
//! Then the config drive goes into a partition at the end of the disk and
//! the kernel is asked to re-read the partition table.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use ferric_image::checksum::{self, Algorithm, Checksum};
use ferric_image::configdrive;
use ferric_image::format::{Format, Policy};
use ferric_image::partition::{self, Partition, PartitionTable};
use ferric_image::pipeline::{self, StreamOptions};
use ferric_image::writer::{DiskWriter, WriterOptions};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::download::{self, chain, Download, DownloadError, DownloadOptions, Proxies};
use crate::hints::{select_root_device, BlockDevice, HintError, RootDeviceHints};

/// GPT type GUID of an EFI system partition.
const EFI_SYSTEM_PARTITION: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// After a failure mid-write the pipeline wipes the disk's partition tables
/// if any of the image reached it, and leaves it untouched otherwise.
const NOTHING_BOOTABLE: &str = " (no partial image was left bootable on the disk)";
/// How often progress is reported while downloading.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);

/// How the agent writes images.
#[derive(Debug, Clone)]
pub struct DeployOptions {
    /// Where qcow2 images are spooled before conversion (they need random
    /// access). Must hold the whole qcow2 file. Default `/tmp`.
    pub spool_dir: PathBuf,
    /// Accept md5 checksums: the agent config's `md5_enabled` (IPA's).
    /// Default false. The conductor's word, when it gave one, wins.
    pub allow_md5: bool,
    /// What the conductor's lookup said of md5 (`agent_md5_checksum_enable`).
    pub conductor_md5: ConductorMd5,
    /// Image formats accepted. Default: Ironic's `permitted_image_formats`
    /// (raw, gpt, qcow2, iso).
    pub permitted_formats: Vec<Format>,
    pub download: DownloadOptions,
}

impl Default for DeployOptions {
    fn default() -> Self {
        DeployOptions {
            spool_dir: PathBuf::from("/tmp"),
            allow_md5: false,
            conductor_md5: ConductorMd5::default(),
            permitted_formats: Policy::default().permitted,
            download: DownloadOptions::default(),
        }
    }
}

impl DeployOptions {
    /// Whether md5 checksums are accepted: as the conductor said at lookup
    /// (Ironic's `agent_md5_checksum_enable`, IPA follows it), or else as the
    /// agent's config says.
    pub fn md5_allowed(&self) -> bool {
        self.conductor_md5.get().unwrap_or(self.allow_md5)
    }
}

/// The conductor's setting for md5, learnt at lookup, after the command
/// handler was built: shared by every clone of the options.
#[derive(Debug, Clone, Default)]
pub struct ConductorMd5(std::sync::Arc<std::sync::atomic::AtomicU8>);

impl ConductorMd5 {
    const UNSET: u8 = 0;
    const REFUSED: u8 = 1;
    const ALLOWED: u8 = 2;

    pub fn set(&self, allowed: bool) {
        let value = if allowed {
            Self::ALLOWED
        } else {
            Self::REFUSED
        };
        self.0.store(value, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<bool> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            Self::UNSET => None,
            value => Some(value == Self::ALLOWED),
        }
    }
}

/// `image_info` as Ironic sends it to `write_image`. Ironic sends more
/// fields than these (auth, boot mode, ...), so unknown fields are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageInfo {
    pub id: String,
    pub urls: Vec<String>,
    /// A digest (md5 by default in old Ironic), or the URL of a checksum file.
    #[serde(default)]
    pub checksum: Option<String>,
    #[serde(default)]
    pub os_hash_algo: Option<String>,
    /// A digest or the URL of a checksum file.
    #[serde(default)]
    pub os_hash_value: Option<String>,
    #[serde(default)]
    pub disk_format: Option<String>,
    #[serde(default)]
    pub container_format: Option<String>,
    /// IPA's switch: true (the default) streams the image to the disk as it
    /// downloads; false downloads it to the spool directory first, verifies
    /// it, and only then writes the disk.
    #[serde(default)]
    pub stream_raw_images: Option<bool>,
    #[serde(default)]
    pub node_uuid: Option<String>,
    /// `partition` images are not supported yet.
    #[serde(default)]
    pub image_type: Option<String>,
}

/// Why `write_image` failed. Messages name the image and the disk.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("invalid write_image arguments: {0}")]
    InvalidArgs(String),
    #[error("invalid root device hints in node.properties.root_device")]
    Hints(#[source] HintError),
    #[error("no disk to write the image to: {0}")]
    NoRootDevice(String),
    #[error("image {id} is {size} bytes, larger than {device} ({capacity} bytes); the disk is unchanged")]
    TooLarge {
        id: String,
        size: u64,
        device: String,
        capacity: u64,
    },
    #[error("image {id}: cannot get its checksum")]
    Checksum {
        id: String,
        #[source]
        source: ChecksumSource,
    },
    #[error("invalid config drive")]
    ConfigDrive(#[source] ConfigDriveSource),
    #[error("image {id}: the download failed{note}")]
    Download {
        id: String,
        /// What state the disk was left in, for the operator.
        note: &'static str,
        #[source]
        source: Box<DownloadError>,
    },
    #[error("image {id} could not be written to {device}{note}")]
    Write {
        id: String,
        device: String,
        /// What state the disk was left in, for the operator.
        note: &'static str,
        #[source]
        source: Box<ferric_image::Error>,
    },
    #[error("writing the config drive partition to {device}")]
    ConfigDrivePartition {
        device: String,
        #[source]
        source: ferric_image::Error,
    },
    #[error("{context} {device}")]
    Disk {
        context: &'static str,
        device: String,
        #[source]
        source: io::Error,
    },
    #[error("reading the partition table of {device}")]
    PartitionTable {
        device: String,
        #[source]
        source: ferric_image::Error,
    },
}

/// Where a checksum failed.
#[derive(Debug, thiserror::Error)]
pub enum ChecksumSource {
    #[error(transparent)]
    Value(ferric_image::Error),
    #[error(transparent)]
    File(Box<DownloadError>),
    #[error(
        "md5 checksums are disabled: give a sha256 or sha512 checksum (os_hash_algo and \
         os_hash_value), or allow md5 on the server ([conductor] allow_md5_checksum = true), \
         or, for an agent without a conductor, md5_enabled = true in its config file"
    )]
    Md5Disabled,
}

/// Where a config drive failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigDriveSource {
    #[error(transparent)]
    Decode(ferric_image::Error),
    #[error(transparent)]
    Download(Box<DownloadError>),
    #[error("expected a gzip+base64 string or its http:// URL, got {0}")]
    Type(String),
}

/// Progress of `write_image`, reported while it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployProgress {
    /// `downloading`, then `finishing` (flushing, verifying, converting a
    /// qcow2 image), then `config drive`.
    pub phase: &'static str,
    /// Image bytes downloaded.
    pub bytes_done: u64,
    /// The image's size as the server gave it.
    pub bytes_total: Option<u64>,
    /// Average download rate since the start.
    pub rate_bytes_per_s: f64,
    pub eta_seconds: Option<f64>,
}

impl DeployProgress {
    /// `{"progress": {...}}`, as the running command's `command_result`.
    pub fn to_json(&self) -> Value {
        json!({"progress": {
            "phase": self.phase,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "rate_bytes_per_s": self.rate_bytes_per_s.round(),
            "eta_seconds": self.eta_seconds.map(f64::ceil),
        }})
    }
}

/// Receives progress; called from the download thread.
pub type ProgressFn<'a> = &'a (dyn Fn(DeployProgress) + Sync);

/// What `write_image` did.
#[derive(Debug, Clone)]
pub struct WriteImageOutcome {
    pub image_id: String,
    pub device: String,
    pub format: Format,
    pub source_bytes: u64,
    pub resumes: u32,
    pub config_drive: Option<Partition>,
    /// As `standby.get_partition_uuids` answers.
    pub partition_uuids: Value,
}

impl WriteImageOutcome {
    /// The step's `deploy_result`: IPA's `prepare_image` result (`{"result":
    /// "prepare_image: image (<id>) written to device <dev> root_uuid=<id>"}`)
    /// with Ferric's details alongside.
    pub fn to_deploy_result(&self) -> Value {
        let root_uuid = self.partition_uuids["root uuid"]
            .as_str()
            .unwrap_or("None")
            .to_owned();
        json!({
            "result": format!(
                "prepare_image: image ({}) written to device {} root_uuid={root_uuid}",
                self.image_id, self.device
            ),
            "device": self.device,
            "image_format": self.format.name(),
            "bytes_downloaded": self.source_bytes,
            "download_resumes": self.resumes,
            "config_drive_partition": self.config_drive.as_ref().map(|p| partition_device(&self.device, p.number)),
            "partition_uuids": self.partition_uuids,
        })
    }
}

/// The disk to install on: the first matching the node's
/// `properties.root_device` hints, or without hints the smallest disk of
/// at least 4 GiB (IPA's rule).
pub fn root_device(node: &Value, disks: &[BlockDevice]) -> Result<BlockDevice, DeployError> {
    let hints = match node.pointer("/properties/root_device") {
        None | Some(Value::Null) => None,
        Some(hints) => Some(RootDeviceHints::parse(hints).map_err(DeployError::Hints)?),
    };
    if let Some(device) = select_root_device(disks, hints.as_ref()) {
        return Ok(device.clone());
    }
    let listed: Vec<String> = disks.iter().map(ToString::to_string).collect();
    let listed = if listed.is_empty() {
        "none".to_owned()
    } else {
        listed.join(", ")
    };
    Err(DeployError::NoRootDevice(match hints {
        Some(_) => format!(
            "no disk matches the root device hints {}; disks: {listed}",
            node["properties"]["root_device"]
        ),
        None => format!("no disk of at least 4 GiB and no root device hints; disks: {listed}"),
    }))
}

/// The expected checksum: `os_hash_algo` + `os_hash_value`, else
/// `checksum` (md5 only if allowed); either may be a checksum file's URL.
pub fn expected_checksum(
    info: &ImageInfo,
    options: &DeployOptions,
    download: &DownloadOptions,
) -> Result<Checksum, DeployError> {
    let (value, algorithm) = match (&info.os_hash_value, &info.checksum) {
        (Some(value), _) if !value.trim().is_empty() => (value, info.os_hash_algo.as_deref()),
        (_, Some(value)) if !value.trim().is_empty() => (value, None),
        _ => {
            return Err(DeployError::InvalidArgs(
                "image_info has no checksum: give os_hash_algo and os_hash_value, or checksum"
                    .into(),
            ))
        }
    };
    let failed = |source| DeployError::Checksum {
        id: info.id.clone(),
        source,
    };
    // md5 is parsed here and refused below, with the setting to change.
    let checksum = if checksum::is_url(value) {
        download::fetch_checksum(value.trim(), &info.urls[0], algorithm, true, download)
            .map_err(|e| failed(ChecksumSource::File(Box::new(e))))?
    } else {
        Checksum::parse(value, algorithm, true).map_err(|e| failed(ChecksumSource::Value(e)))?
    };
    if checksum.algorithm == Algorithm::Md5 && !options.md5_allowed() {
        return Err(failed(ChecksumSource::Md5Disabled));
    }
    Ok(checksum)
}

/// Permitted formats and the declared one (`disk_format`; a declared raw
/// image is inspected all the same).
pub fn policy(info: &ImageInfo, options: &DeployOptions) -> Result<Policy, DeployError> {
    let declared = match info.disk_format.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(name) => Some(Format::from_str(name).map_err(|e| {
            DeployError::InvalidArgs(format!("image_info.disk_format: {}", chain(&e)))
        })?),
    };
    Ok(Policy {
        permitted: options.permitted_formats.clone(),
        declared,
    })
}

/// Decodes the `configdrive` argument: null or empty for none, gzip+base64
/// text, or an http:// URL serving that text. At most 64 MiB decoded.
pub fn config_drive(
    value: &Value,
    download: &DownloadOptions,
) -> Result<Option<Vec<u8>>, DeployError> {
    let text = match value {
        Value::Null => return Ok(None),
        Value::String(text) if text.trim().is_empty() => return Ok(None),
        Value::String(text) => text,
        other => {
            return Err(DeployError::ConfigDrive(ConfigDriveSource::Type(
                json_type(other).into(),
            )))
        }
    };
    let fetched;
    let text = if checksum::is_url(text) {
        // base64 of gzip of at most MAX_SIZE bytes stays below twice that.
        fetched = download::fetch_text(text.trim(), configdrive::MAX_SIZE * 2, download)
            .map_err(|e| DeployError::ConfigDrive(ConfigDriveSource::Download(Box::new(e))))?;
        &fetched
    } else {
        text
    };
    configdrive::decode(text, configdrive::MAX_SIZE)
        .map(Some)
        .map_err(|e| DeployError::ConfigDrive(ConfigDriveSource::Decode(e)))
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a Boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => {
            "an object (build the config drive image in the conductor and send it gzip+base64)"
        }
    }
}

/// The device node of partition `number` of `disk`: `sda1`, `nvme0n1p1`,
/// `loop0p1`.
pub fn partition_device(disk: &str, number: u32) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{number}")
    } else {
        format!("{disk}{number}")
    }
}

/// Parses `step.args` of a `write_image` deploy step.
pub fn parse_args(args: &Value) -> Result<(ImageInfo, Value), DeployError> {
    let image_info = args
        .get("image_info")
        .ok_or_else(|| DeployError::InvalidArgs("image_info is missing".into()))?;
    let info: ImageInfo = serde_json::from_value(image_info.clone())
        .map_err(|e| DeployError::InvalidArgs(format!("image_info: {e}")))?;
    if info.urls.is_empty() {
        return Err(DeployError::InvalidArgs("image_info.urls is empty".into()));
    }
    if info.image_type.as_deref() == Some("partition") {
        return Err(DeployError::InvalidArgs(
            "partition images are not supported by this agent; use a whole-disk image".into(),
        ));
    }
    if let Some(container) = info.container_format.as_deref() {
        if !container.eq_ignore_ascii_case("bare") {
            return Err(DeployError::InvalidArgs(format!(
                "container_format {container:?} is not supported; only bare images can be written"
            )));
        }
    }
    let configdrive = args
        .get("configdrive")
        .cloned()
        .or_else(|| image_info.get("configdrive").cloned())
        .unwrap_or(Value::Null);
    Ok((info, configdrive))
}

/// Writes the image of `args` (`{image_info, configdrive}`) to the root
/// device of `node` among `disks`. Everything that can be checked is
/// checked before the disk is touched.
pub fn write_image(
    args: &Value,
    node: &Value,
    disks: &[BlockDevice],
    options: &DeployOptions,
    progress: ProgressFn<'_>,
) -> Result<WriteImageOutcome, DeployError> {
    let (info, configdrive) = parse_args(args)?;
    let mut download_options = options.download.clone();
    download_options.proxies = Proxies::from_image_info(&args["image_info"])
        .map_err(|e| DeployError::InvalidArgs(chain(&e)))?;
    for url in &info.urls {
        download::check_url(url).map_err(|e| DeployError::Download {
            id: info.id.clone(),
            note: "",
            source: Box::new(e),
        })?;
    }
    let device = root_device(node, disks)?;
    let policy = policy(&info, options)?;
    let drive = config_drive(&configdrive, &download_options)?;
    let checksum = expected_checksum(&info, options, &download_options)?;
    tracing::info!(image = %info.id, device = %device.name, "writing the image");

    let source =
        Download::open(&info.urls, &download_options).map_err(|source| DeployError::Download {
            id: info.id.clone(),
            note: " (the disk is unchanged)",
            source: Box::new(source),
        })?;
    // A raw image's download is its size: one larger than the disk is
    // refused before anything is written (qcow2 is checked by its virtual
    // size before conversion; a compressed stream while it expands).
    let declared_raw = info
        .disk_format
        .as_deref()
        .is_none_or(|f| f.trim().eq_ignore_ascii_case("raw"));
    if let (true, Some(size)) = (declared_raw, source.size()) {
        if size > device.size {
            return Err(DeployError::TooLarge {
                id: info.id.clone(),
                size,
                device: device.name.clone(),
                capacity: device.size,
            });
        }
    }
    let open_writer = || {
        DiskWriter::open(Path::new(&device.name), WriterOptions::default()).map_err(|source| {
            DeployError::Write {
                id: info.id.clone(),
                device: device.name.clone(),
                note: "",
                source: Box::new(source),
            }
        })
    };
    let stream = StreamOptions {
        checksum: Some(checksum.clone()),
        policy,
        spool_dir: Some(options.spool_dir.clone()),
        ..StreamOptions::default()
    };
    let mut counted = Counted::new(source, progress);
    // IPA's stream_raw_images: true streams the image to the disk as it
    // arrives; false downloads it to the spool first, and the disk is
    // touched only once the download is complete and verified.
    let streamed = info.stream_raw_images.unwrap_or(true);
    let mut disk_touched = streamed;
    let written = if streamed {
        pipeline::write_stream(&mut counted, open_writer()?, &stream)
    } else {
        match spool_verified(&mut counted, &options.spool_dir, &checksum, device.size) {
            Ok(spooled) => {
                disk_touched = true;
                pipeline::write_stream(spooled, open_writer()?, &stream)
            }
            Err(error) => Err(error),
        }
    };
    let (source_bytes, resumes) = (counted.inner.bytes_read(), counted.inner.resumes());
    if let (Err(_), Some(failure)) = (&written, counted.inner.take_failure()) {
        return Err(DeployError::Download {
            id: info.id,
            note: if disk_touched {
                NOTHING_BOOTABLE
            } else {
                " (the disk is unchanged)"
            },
            source: Box::new(failure),
        });
    }
    let report = written.map_err(|source| DeployError::Write {
        id: info.id.clone(),
        device: device.name.clone(),
        note: match source {
            _ if !disk_touched => " (the image was not written; the disk is unchanged)",
            ferric_image::Error::Refused(_) => " (refused before writing; the disk is unchanged)",
            // write_stream wipes the disk's start and end after a mismatch.
            ferric_image::Error::ChecksumMismatch { .. } => {
                " (the disk was wiped and has no partition table)"
            }
            _ => NOTHING_BOOTABLE,
        },
        source: Box::new(source),
    })?;
    tracing::info!(
        image = %info.id, device = %device.name, format = %report.format,
        bytes = report.source_bytes, "image written and verified"
    );

    let config_drive = match drive {
        Some(drive) => {
            progress(counted.progress("config drive"));
            Some(write_config_drive(&device.name, &drive)?)
        }
        None => None,
    };
    reread_partition_table(&device.name)?;
    let partition_uuids = partition_uuids(Path::new(&device.name))?;
    Ok(WriteImageOutcome {
        image_id: info.id,
        device: device.name,
        format: report.format,
        source_bytes,
        resumes,
        config_drive,
        partition_uuids,
    })
}

/// Downloads the whole image into an unlinked file in `dir`, hashing it on
/// the way, and checks the checksum: the image is then written from the
/// spool. The spool holds at most a little more than the disk.
/// Bytes an unprivileged writer may still use on the file system of `dir`.
fn free_space(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("a NUL byte in the path"))?;
    // SAFETY: statvfs is plain data that statvfs(3) fills; zeroed is valid.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: the path is NUL-terminated and `stats` lives for the call.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

fn spool_verified<R: Read>(
    source: &mut R,
    dir: &Path,
    checksum: &Checksum,
    disk_size: u64,
) -> Result<File, ferric_image::Error> {
    use ferric_image::decompress::{read_error, Limited};
    use ferric_image::error::IoContext;
    use std::io::Write;
    let path = dir.join(format!(".ferric-spool-{}", uuid::Uuid::new_v4().simple()));
    let mut spool = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("creating a spool file in {}", dir.display()))?;
    // Unlinked at once: its space is freed however the deploy ends.
    std::fs::remove_file(&path).with_context(|| format!("unlinking {}", path.display()))?;
    // The spool is often the ramdisk's memory: never more than is free
    // there, less 64 MiB for the agent itself.
    let free = free_space(dir)
        .with_context(|| format!("reading the free space of {}", dir.display()))?
        .saturating_sub(64 << 20);
    let limit = disk_size
        .saturating_add(disk_size / 8)
        .saturating_add(64 << 20)
        .min(free);
    let mut hashing = checksum::HashingReader::new(
        Limited::new(
            source,
            limit,
            "the free space of the spool directory or the disk size",
        ),
        Some(checksum.algorithm),
    );
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match hashing.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error("downloading the image to the spool", e)),
        };
        spool
            .write_all(&buf[..n])
            .context("writing the spool file")?;
    }
    let bytes = hashing.bytes_read();
    let digest = hashing
        .finish()
        .expect("the spool is hashed with the checksum's algorithm");
    checksum.verify(&digest)?;
    spool
        .seek(SeekFrom::Start(0))
        .context("rewinding the spool file")?;
    tracing::info!(bytes, "image spooled and verified");
    Ok(spool)
}

fn open_disk(device: &str, write: bool) -> Result<(File, u64), DeployError> {
    let disk_error = |context, source| DeployError::Disk {
        context,
        device: device.to_owned(),
        source,
    };
    let mut disk = OpenOptions::new()
        .read(true)
        .write(write)
        .open(device)
        .map_err(|e| disk_error("opening", e))?;
    let size = disk
        .seek(SeekFrom::End(0))
        .map_err(|e| disk_error("finding the size of", e))?;
    Ok((disk, size))
}

fn write_config_drive(device: &str, drive: &[u8]) -> Result<Partition, DeployError> {
    let (mut disk, size) = open_disk(device, true)?;
    let partition =
        pipeline::write_config_drive_partition(&mut disk, size, drive).map_err(|source| {
            DeployError::ConfigDrivePartition {
                device: device.to_owned(),
                source,
            }
        })?;
    tracing::info!(
        device,
        partition = partition.number,
        start = partition.start,
        "config drive written"
    );
    Ok(partition)
}

/// BLKRRPART. Loop devices set up without partition scanning answer
/// EINVAL: logged, not fatal (nothing reads partitions through them).
fn reread_partition_table(device: &str) -> Result<(), DeployError> {
    match DiskWriter::reread_partition_table(Path::new(device)) {
        Ok(()) => Ok(()),
        Err(ferric_image::Error::Io { source, .. })
            if source.raw_os_error() == Some(libc::EINVAL) =>
        {
            tracing::info!(
                device,
                "the kernel does not scan partitions on this device (EINVAL); not re-read"
            );
            Ok(())
        }
        Err(ferric_image::Error::Io { source, .. }) => Err(DeployError::Disk {
            context: "re-reading the partition table of",
            device: device.to_owned(),
            source,
        }),
        Err(other) => Err(DeployError::PartitionTable {
            device: device.to_owned(),
            source: other,
        }),
    }
}

/// IPA's `get_partition_uuids` for a whole-disk image, read from the disk:
/// `{"root uuid": <GPT disk GUID or MBR signature>, "partitions": {"<n>":
/// {device, uuid, name, type, start, size}}, "efi system partition uuid"}`;
/// `{}` for a disk without a partition table.
pub fn partition_uuids(device: &Path) -> Result<Value, DeployError> {
    let name = device.display().to_string();
    let (mut disk, size) = open_disk(&name, false)?;
    let table =
        partition::read_table(&mut disk, size).map_err(|source| DeployError::PartitionTable {
            device: name.clone(),
            source,
        })?;
    Ok(table.map_or_else(|| json!({}), |t| uuids_of(&name, &t)))
}

fn uuids_of(device: &str, table: &PartitionTable) -> Value {
    let mut partitions = serde_json::Map::new();
    let mut answer = serde_json::Map::new();
    answer.insert("root uuid".into(), json!(table.disk_id));
    for p in &table.partitions {
        if p.type_id == EFI_SYSTEM_PARTITION {
            if let Some(uuid) = &p.uuid {
                answer
                    .entry("efi system partition uuid")
                    .or_insert_with(|| json!(uuid));
            }
        }
        partitions.insert(
            p.number.to_string(),
            json!({
                "device": partition_device(device, p.number),
                "uuid": p.uuid,
                "name": p.name,
                "type": p.type_id,
                "start": p.start,
                "size": p.size,
            }),
        );
    }
    answer.insert("partitions".into(), Value::Object(partitions));
    Value::Object(answer)
}

/// Counts the bytes read from the download and reports progress.
struct Counted<'a> {
    inner: Download,
    progress: ProgressFn<'a>,
    started: Instant,
    last_report: Option<Instant>,
}

impl<'a> Counted<'a> {
    fn new(inner: Download, progress: ProgressFn<'a>) -> Self {
        Counted {
            inner,
            progress,
            started: Instant::now(),
            last_report: None,
        }
    }

    fn progress(&self, phase: &'static str) -> DeployProgress {
        let done = self.inner.bytes_read();
        let total = self.inner.size();
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = if elapsed > 0.0 {
            done as f64 / elapsed
        } else {
            0.0
        };
        let eta = match total {
            Some(total) if rate > 0.0 => Some(total.saturating_sub(done) as f64 / rate),
            _ => None,
        };
        DeployProgress {
            phase,
            bytes_done: done,
            bytes_total: total,
            rate_bytes_per_s: rate,
            eta_seconds: eta,
        }
    }
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let due = self
            .last_report
            .is_none_or(|last| last.elapsed() >= PROGRESS_INTERVAL);
        if n == 0 {
            (self.progress)(self.progress("finishing"));
        } else if due {
            self.last_report = Some(Instant::now());
            (self.progress)(self.progress("downloading"));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, gib: u64) -> BlockDevice {
        BlockDevice {
            name: name.into(),
            size: gib << 30,
            ..BlockDevice::default()
        }
    }

    #[test]
    fn root_device_follows_hints_or_the_default_rule() {
        let disks = [
            disk("/dev/sda", 100),
            disk("/dev/sdb", 10),
            disk("/dev/sdc", 2),
        ];
        let chosen = root_device(&json!({}), &disks).unwrap();
        assert_eq!(chosen.name, "/dev/sdb");
        let hinted = json!({"properties": {"root_device": {"name": "/dev/sdc"}}});
        assert_eq!(root_device(&hinted, &disks).unwrap().name, "/dev/sdc");
        let none = json!({"properties": {"root_device": {"name": "/dev/sdz"}}});
        let error = root_device(&none, &disks).unwrap_err().to_string();
        assert!(
            error.contains("/dev/sdz") && error.contains("/dev/sda"),
            "{error}"
        );
        let bad = json!({"properties": {"root_device": {"colour": "red"}}});
        assert!(matches!(
            root_device(&bad, &disks),
            Err(DeployError::Hints(_))
        ));
    }

    fn info(extra: Value) -> ImageInfo {
        let mut base = json!({"id": "img", "urls": ["http://h/img.raw"]});
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn checksums_prefer_os_hash_and_refuse_md5() {
        let options = DeployOptions::default();
        let sha = "a".repeat(64);
        let both = info(json!({"os_hash_algo": "sha256", "os_hash_value": sha,
                               "checksum": "b".repeat(32)}));
        let got = expected_checksum(&both, &options, &options.download).unwrap();
        assert_eq!(got.hex, sha);
        let md5 = info(json!({"checksum": "b".repeat(32)}));
        let refused = expected_checksum(&md5, &options, &options.download).unwrap_err();
        assert!(
            chain(&refused).contains("allow_md5_checksum = true"),
            "{}",
            chain(&refused)
        );
        let algo_md5 = info(json!({"os_hash_algo": "md5", "os_hash_value": "b".repeat(32)}));
        assert!(matches!(
            expected_checksum(&algo_md5, &options, &options.download),
            Err(DeployError::Checksum {
                source: ChecksumSource::Md5Disabled,
                ..
            })
        ));
        let allowed = DeployOptions {
            allow_md5: true,
            ..DeployOptions::default()
        };
        assert!(expected_checksum(&md5, &allowed, &allowed.download).is_ok());
        assert!(matches!(
            expected_checksum(&info(json!({})), &options, &options.download),
            Err(DeployError::InvalidArgs(_))
        ));
    }

    #[test]
    fn declared_formats_become_the_policy() {
        let options = DeployOptions::default();
        let qcow2 = policy(&info(json!({"disk_format": "qcow2"})), &options).unwrap();
        assert_eq!(qcow2.declared, Some(Format::Qcow2));
        let none = policy(&info(json!({})), &options).unwrap();
        assert_eq!(none.declared, None);
        assert!(policy(&info(json!({"disk_format": "floppy"})), &options).is_err());
    }

    #[test]
    fn arguments_are_checked() {
        assert!(parse_args(&json!({})).is_err());
        assert!(parse_args(&json!({"image_info": {"id": "x", "urls": []}})).is_err());
        let partition = json!({"image_info": {"id": "x", "urls": ["http://h/i"],
                                              "image_type": "partition"}});
        assert!(chain(&parse_args(&partition).unwrap_err()).contains("partition images"));
        let ok = json!({"image_info": {"id": "x", "urls": ["http://h/i"], "extra": 1},
                        "configdrive": "H4sI"});
        let (info, drive) = parse_args(&ok).unwrap();
        assert_eq!(info.id, "x");
        assert_eq!(drive, json!("H4sI"));
    }

    #[test]
    fn config_drives_are_decoded_or_refused() {
        let options = DownloadOptions::default();
        assert_eq!(config_drive(&Value::Null, &options).unwrap(), None);
        assert_eq!(config_drive(&json!(""), &options).unwrap(), None);
        let encoded = configdrive::encode(b"drive");
        assert_eq!(
            config_drive(&json!(encoded), &options).unwrap().as_deref(),
            Some(&b"drive"[..])
        );
        assert!(config_drive(&json!({"meta_data": {}}), &options).is_err());
        assert!(config_drive(&json!("not base64!"), &options).is_err());
        assert!(config_drive(&json!("file:///etc/shadow"), &options).is_err());
    }

    #[test]
    fn partition_devices_are_named_as_linux_does() {
        assert_eq!(partition_device("/dev/sda", 2), "/dev/sda2");
        assert_eq!(partition_device("/dev/nvme0n1", 1), "/dev/nvme0n1p1");
        assert_eq!(partition_device("/dev/loop3", 2), "/dev/loop3p2");
    }

    #[test]
    fn progress_serializes_with_the_documented_fields() {
        let progress = DeployProgress {
            phase: "downloading",
            bytes_done: 50,
            bytes_total: Some(100),
            rate_bytes_per_s: 10.4,
            eta_seconds: Some(4.2),
        };
        assert_eq!(
            progress.to_json(),
            json!({"progress": {"phase": "downloading", "bytes_done": 50, "bytes_total": 100,
                                "rate_bytes_per_s": 10.0, "eta_seconds": 5.0}})
        );
    }
}
