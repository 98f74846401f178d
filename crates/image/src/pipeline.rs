//! The reader stacks that connect the pieces: one pass from a download to a
//! disk, and conversions of local files.
//!
//! [`write_stream`] is what the agent runs for a deploy: the source is read
//! and hashed on one thread (the checksum covers the bytes as served), while
//! the other thread decompresses, inspects the first MiB, and writes the raw
//! image through the [`DiskWriter`], skipping zero blocks. The disk's first
//! MiB is held back and written only after the checksum verified; any failure
//! wipes it. qcow2 needs random access, so a qcow2 stream is spooled to a file
//! first, verified, and only then converted.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use crate::bmap::{self, BlockMap, BmapSink};
use crate::checksum::{Algorithm, Checksum, Digested, Hasher};
use crate::decompress::{self, Compression, Limited};
use crate::error::{Error, IoContext, Result};
use crate::format::{self, Format, Inspection, Policy};
use crate::qcow2::Qcow2;
use crate::sink::{write_behind, BlockSink};
use crate::writer::{DiskWriter, WriteSummary};

/// Size of the chunks passed from the reading thread to the writing one.
const CHUNK: usize = 1 << 20;
/// Chunks in flight between the two threads.
const IN_FLIGHT: usize = 8;

/// What [`write_stream`] checks and where it may spool.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// The checksum of the bytes as read from the source.
    pub checksum: Option<Checksum>,
    /// Permitted formats and the declared one.
    pub policy: Policy,
    /// Directory for spooling qcow2 images; None refuses qcow2 streams.
    pub spool_dir: Option<std::path::PathBuf>,
    /// Granularity of zero detection.
    pub block_size: u32,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            checksum: None,
            policy: Policy::default(),
            spool_dir: None,
            block_size: bmap::DEFAULT_BLOCK_SIZE,
        }
    }
}

/// What a deploy wrote.
#[derive(Debug, Clone)]
pub struct StreamReport {
    pub compression: Compression,
    pub format: Format,
    /// Bytes read from the source.
    pub source_bytes: u64,
    /// The source's digest, when a checksum was given.
    pub digest: Option<Digested>,
    pub write: WriteSummary,
}

/// Streams an image from `source` to `writer`: hash, decompress, inspect,
/// convert, write, verify, then commit; on any error the disk is wiped and
/// the error returned.
pub fn write_stream<R: Read + Send>(
    source: R,
    writer: DiskWriter,
    options: &StreamOptions,
) -> Result<StreamReport> {
    let algorithm = options.checksum.as_ref().map(|c| c.algorithm);
    let mut writer = writer;
    let result = std::thread::scope(|scope| {
        let reader = spawn_reader(scope, source, algorithm);
        let outcome = write_chunks(reader.channel, &mut writer, options);
        // The reader stops when the receiving end is gone; join it for the digest.
        let read = reader.handle.join().unwrap_or_else(|_| {
            Err(Error::io(
                "reading the image",
                io::Error::other("the reading thread panicked"),
            ))
        });
        outcome.and_then(|written| Ok((written, read?)))
    });
    let ((compression, format, spooled), (source_bytes, digest)) = match result {
        Ok(done) => done,
        Err(error) => return Err(abandon_after(writer, error)),
    };
    if let (Some(expected), Some(actual)) = (&options.checksum, &digest) {
        if let Err(error) = expected.verify(actual) {
            // Whatever was on the disk, it must not boot now.
            return Err(wipe_after(writer, error));
        }
    }
    // A spooled qcow2 image is converted only now that its checksum verified.
    if let Some(spool) = spooled {
        let capacity = writer.capacity();
        let converted =
            Qcow2::open(spool).and_then(|mut image| image.convert(&mut writer, capacity));
        if let Err(error) = converted {
            return Err(abandon_after(writer, error));
        }
    }
    let write = writer.commit()?;
    Ok(StreamReport {
        compression,
        format,
        source_bytes,
        digest,
        write,
    })
}

fn wipe_after(writer: DiskWriter, error: Error) -> Error {
    with_cleanup(error, writer.wipe())
}

fn abandon_after(writer: DiskWriter, error: Error) -> Error {
    with_cleanup(error, writer.abandon())
}

fn with_cleanup(error: Error, cleanup: Result<()>) -> Error {
    match cleanup {
        Ok(()) => error,
        // The original error matters more; say that the wipe failed too.
        Err(wipe) => Error::Invalid(format!("{error}; then wiping the target failed: {wipe}")),
    }
}

type ReadOutcome = Result<(u64, Option<Digested>)>;

/// The reading thread and the writing side's end of its channel.
struct ReaderThread<'scope> {
    channel: ChannelReader,
    handle: std::thread::ScopedJoinHandle<'scope, ReadOutcome>,
}

fn spawn_reader<'scope, R: Read + Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    mut source: R,
    algorithm: Option<Algorithm>,
) -> ReaderThread<'scope> {
    let (send_chunk, chunks) = sync_channel::<io::Result<Vec<u8>>>(IN_FLIGHT);
    let (give_back, returned) = sync_channel::<Vec<u8>>(IN_FLIGHT + 2);
    let handle = scope.spawn(move || {
        let mut hasher = algorithm.map(Hasher::new);
        let mut total = 0u64;
        loop {
            let mut buf = returned.try_recv().unwrap_or_else(|_| vec![0; CHUNK]);
            buf.resize(CHUNK, 0);
            let n = match bmap::fill(&mut source, &mut buf) {
                Ok(n) => n,
                Err(e) => {
                    // Keep the cause in the text: the error itself stays here.
                    let mut message = e.to_string();
                    let mut cause = std::error::Error::source(&e);
                    while let Some(inner) = cause {
                        message.push_str(&format!(": {inner}"));
                        cause = inner.source();
                    }
                    let _ = send_chunk.send(Err(io::Error::other(message)));
                    return Err(e);
                }
            };
            buf.truncate(n);
            if let Some(h) = &mut hasher {
                h.update(&buf);
            }
            total += n as u64;
            let last = n < CHUNK;
            if n > 0 && send_chunk.send(Ok(buf)).is_err() {
                // The writer stopped; its error is the one reported.
                return Ok((total, None));
            }
            if last {
                return Ok((total, hasher.map(Hasher::finish)));
            }
        }
    });
    ReaderThread {
        channel: ChannelReader::new(chunks, give_back),
        handle,
    }
}

/// The writing thread's view of the source: chunks from the reading thread.
struct ChannelReader {
    chunks: Receiver<io::Result<Vec<u8>>>,
    returned: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
}

impl ChannelReader {
    fn new(chunks: Receiver<io::Result<Vec<u8>>>, returned: SyncSender<Vec<u8>>) -> Self {
        ChannelReader {
            chunks,
            returned,
            current: Vec::new(),
            at: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.current.len() {
            match self.chunks.recv() {
                Ok(chunk) => {
                    let used = std::mem::replace(&mut self.current, chunk?);
                    let _ = self.returned.try_send(used);
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Decompresses and inspects; writes raw images, spools qcow2.
fn write_chunks(
    source: ChannelReader,
    writer: &mut DiskWriter,
    options: &StreamOptions,
) -> Result<(Compression, Format, Option<File>)> {
    let (compression, decompressed) = decompress::open(source)?;
    let capacity = writer.capacity();
    let (head, stream) = decompress::peek(decompressed, format::HEAD_LEN)?;
    let inspection = format::inspect_head(&head, None)?;
    options.policy.check(&inspection)?;
    if let Some(size) = inspection.virtual_size {
        if size > capacity {
            return Err(too_large(size, capacity));
        }
    }
    match inspection.format {
        Format::Qcow2 => {
            let Some(dir) = &options.spool_dir else {
                return Err(Error::Unsupported(
                    "qcow2 images need a spool directory to be streamed".into(),
                ));
            };
            let mut spool = tempfile::tempfile_in(dir)
                .with_context(|| format!("creating a spool file in {}", dir.display()))?;
            // The spool holds the qcow2 file, which is at most a little larger
            // than what it expands to.
            let limit = capacity
                .saturating_add(capacity / 8)
                .saturating_add(64 << 20);
            let mut limited = Limited::new(stream, limit, "the spool limit");
            io::copy(&mut limited, &mut spool)
                .map_err(|e| decompress::read_error("spooling the qcow2 image", e))?;
            spool
                .seek(SeekFrom::Start(0))
                .context("rewinding the spool file")?;
            let inspection = format::inspect(&mut spool)?;
            options.policy.check(&inspection)?;
            spool
                .seek(SeekFrom::Start(0))
                .context("rewinding the spool file")?;
            Ok((compression, Format::Qcow2, Some(spool)))
        }
        format if is_raw_like(format) => {
            let limited = Limited::new(stream, capacity, "the size of the target");
            bmap::scan(limited, writer, options.block_size)?;
            Ok((compression, format, None))
        }
        other => Err(Error::Unsupported(format!(
            "{other} images cannot be written; convert them to raw or qcow2"
        ))),
    }
}

/// Formats written byte for byte.
fn is_raw_like(format: Format) -> bool {
    matches!(
        format,
        Format::Raw | Format::Gpt | Format::Mbr | Format::Iso | Format::Luks
    )
}

fn too_large(size: u64, capacity: u64) -> Error {
    Error::TooLarge(format!(
        "the image's virtual size is {size} bytes but the target holds {capacity}"
    ))
}

/// What [`convert_file`] found and did.
#[derive(Debug, Clone)]
pub struct Converted {
    pub inspection: Inspection,
    pub virtual_size: u64,
    pub data_bytes: u64,
    pub block_map: BlockMap,
}

/// Converts a local image to raw into `sink` and maps it: inspect, check the
/// policy, then qcow2 to raw or a scan of a raw image. Nothing reaches the
/// sink if the image is refused. `max_size` bounds the virtual size.
pub fn convert_file<S: BlockSink + Send>(
    source: &mut File,
    sink: S,
    policy: &Policy,
    max_size: u64,
) -> Result<(Converted, S)> {
    source
        .seek(SeekFrom::Start(0))
        .context("rewinding the image")?;
    let inspection = format::inspect(source)?;
    policy.check(&inspection)?;
    if let Some(size) = inspection.virtual_size {
        if size > max_size {
            return Err(too_large(size, max_size));
        }
    }
    source
        .seek(SeekFrom::Start(0))
        .context("rewinding the image")?;
    let mut mapped = BmapSink::new(sink, bmap::DEFAULT_BLOCK_SIZE);
    // Reading and converting on this thread; hashing the block map and
    // writing on another.
    let virtual_size = match inspection.format {
        Format::Qcow2 => {
            let mut image = Qcow2::open(&mut *source)?;
            write_behind(&mut mapped, |sink| image.convert(sink, max_size))?.virtual_size
        }
        format if is_raw_like(format) => {
            let limited = Limited::new(&mut *source, max_size, "the size limit");
            write_behind(&mut mapped, |sink| {
                bmap::scan(limited, sink, bmap::DEFAULT_BLOCK_SIZE)
            })?
        }
        other => {
            return Err(Error::Unsupported(format!(
                "{other} images cannot be converted; only raw and qcow2 are"
            )))
        }
    };
    let (map, sink) = mapped.into_parts();
    let block_map = map.ok_or_else(|| Error::Corrupt("the conversion did not finish".into()))?;
    Ok((
        Converted {
            inspection,
            virtual_size,
            data_bytes: block_map.mapped_bytes,
            block_map,
        },
        sink,
    ))
}

/// Writes a raw image through its block map: only the mapped ranges are
/// read and written, each verified against its sha256 as it goes (hashing on
/// this thread, writing on another); the disk's start is written only when
/// every range verified, and wiped on any failure.
pub fn write_mapped<R: Read + Seek + Send>(
    source: &mut R,
    map: &BlockMap,
    writer: DiskWriter,
) -> Result<WriteSummary> {
    let mut writer = writer;
    if let Err(error) = write_behind(&mut writer, |sink| bmap::copy_mapped(source, map, sink)) {
        return Err(wipe_after(writer, error));
    }
    writer.commit()
}

/// Hashes a whole file with one sequential read.
pub fn hash_file(file: &mut File, algorithm: Algorithm) -> Result<Digested> {
    file.seek(SeekFrom::Start(0))
        .context("rewinding the image")?;
    let mut hasher = Hasher::new(algorithm);
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = bmap::fill(file, &mut buf)?;
        hasher.update(&buf[..n]);
        if n < buf.len() {
            break;
        }
    }
    Ok(hasher.finish())
}

/// Opens a file for [`convert_file`], with a clear error.
pub fn open_image(path: &Path) -> Result<File> {
    File::open(path).with_context(|| format!("opening {}", path.display()))
}

/// The smallest config drive partition, as IPA makes it.
pub const CONFIG_DRIVE_PARTITION_MIN: u64 = 64 << 20;

/// After a whole-disk image: moves the GPT backup to the real end of the
/// disk, adds a partition at the end for the config drive (at least 64 MiB),
/// and writes the config drive image into it, synced. Returns the partition.
pub fn write_config_drive_partition(
    disk: &mut File,
    disk_size: u64,
    drive: &[u8],
) -> Result<crate::partition::Partition> {
    crate::partition::relocate_gpt_backup(disk, disk_size)?;
    let size = (drive.len() as u64)
        .max(CONFIG_DRIVE_PARTITION_MIN)
        .next_multiple_of(1 << 20);
    let partition = crate::partition::add_partition_at_end(disk, disk_size, size, "config-2")?;
    if (drive.len() as u64) > partition.size {
        return Err(Error::TooLarge(format!(
            "the config drive ({} bytes) does not fit its partition ({} bytes)",
            drive.len(),
            partition.size
        )));
    }
    use std::os::unix::fs::FileExt;
    disk.write_all_at(drive, partition.start)
        .context("writing the config drive partition")?;
    disk.sync_all()
        .context("syncing the config drive partition")?;
    Ok(partition)
}

/// Extracts a root filesystem tarball, compressed or not (gzip, bzip2, xz,
/// zstd, detected by magic), into `target`; see [`crate::tarball::extract`].
pub fn extract_tarball<R: Read + Send>(
    source: R,
    target: &Path,
    options: &crate::tarball::ExtractOptions,
) -> Result<(Compression, crate::tarball::ExtractReport)> {
    let (compression, tar) = decompress::open(source)?;
    let report = crate::tarball::extract(tar, target, options)?;
    Ok((compression, report))
}
