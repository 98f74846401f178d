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

/// Size of the chunks passed from the reading thread to the writing one:
/// the inspected head fits in the first, and the disk gets large writes.
const CHUNK: usize = 2 << 20;
const _: () = assert!(CHUNK >= format::HEAD_LEN);
/// Chunks in flight from the reading thread to each of the others.
const IN_FLIGHT: usize = 4;

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
        let outcome = write_chunks(reader.chunks, &mut writer, options);
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

/// A buffer whose start is aligned for O_DIRECT, so that a chunk of a raw
/// image goes from the source to the disk without another copy.
struct AlignedBuf {
    store: Vec<u8>,
    at: usize,
}

impl AlignedBuf {
    fn new() -> Self {
        let store = vec![0u8; CHUNK + crate::writer::ALIGN];
        let at = store.as_ptr().align_offset(crate::writer::ALIGN);
        AlignedBuf { store, at }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.store[self.at..self.at + CHUNK]
    }
}

/// A chunk of the source, shared by the hashing and the writing side. Its
/// buffer goes back to the reading thread when both are done with it.
struct Chunk {
    buf: Option<AlignedBuf>,
    len: usize,
    pool: SyncSender<AlignedBuf>,
}

impl std::ops::Deref for Chunk {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.buf {
            Some(buf) => &buf.store[buf.at..buf.at + self.len],
            None => &[],
        }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            let _ = self.pool.try_send(buf);
        }
    }
}

type ChunkResult = io::Result<std::sync::Arc<Chunk>>;

/// The reading thread and the writing side's end of its channel.
struct ReaderThread<'scope> {
    chunks: Receiver<ChunkResult>,
    handle: std::thread::ScopedJoinHandle<'scope, ReadOutcome>,
}

/// Reads the source on one thread and hashes it on another, so that the
/// hash (about 1.7 GiB/s for sha256 on one core) is the only work on its
/// core; the writing side gets the same chunks without a copy.
fn spawn_reader<'scope, R: Read + Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    mut source: R,
    algorithm: Option<Algorithm>,
) -> ReaderThread<'scope> {
    let (send_chunk, chunks) = sync_channel::<ChunkResult>(IN_FLIGHT);
    let hashing = algorithm.map(|algorithm| {
        let (send, received) = sync_channel::<std::sync::Arc<Chunk>>(IN_FLIGHT);
        let handle = scope.spawn(move || {
            let mut hasher = Hasher::new(algorithm);
            for chunk in received {
                hasher.update(&chunk);
            }
            hasher.finish()
        });
        (send, handle)
    });
    let handle = scope.spawn(move || {
        // Every buffer is in a channel, in a hand or back in the pool: the
        // pool never needs more room than that.
        let (give_back, pool) = sync_channel::<AlignedBuf>(2 * IN_FLIGHT + 4);
        let (to_hasher, hasher) = hashing.unzip();
        let mut total = 0u64;
        loop {
            let mut buf = pool.try_recv().unwrap_or_else(|_| AlignedBuf::new());
            let n = match bmap::fill(&mut source, buf.as_mut_slice()) {
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
            total += n as u64;
            let last = n < CHUNK;
            if n > 0 {
                let chunk = std::sync::Arc::new(Chunk {
                    buf: Some(buf),
                    len: n,
                    pool: give_back.clone(),
                });
                if let Some(to_hasher) = &to_hasher {
                    // The hasher only stops when this thread lets it.
                    let _ = to_hasher.send(chunk.clone());
                }
                if send_chunk.send(Ok(chunk)).is_err() {
                    // The writer stopped; its error is the one reported.
                    return Ok((total, None));
                }
            }
            if last {
                drop(to_hasher);
                let digest = match hasher.map(|h| h.join()) {
                    Some(Ok(digest)) => Some(digest),
                    Some(Err(_)) => {
                        return Err(Error::io(
                            "hashing the image",
                            io::Error::other("the hashing thread panicked"),
                        ))
                    }
                    None => None,
                };
                return Ok((total, digest));
            }
        }
    });
    ReaderThread { chunks, handle }
}

/// The writing thread's view of the source: chunks from the reading thread.
struct ChannelReader {
    chunks: Receiver<ChunkResult>,
    current: Option<std::sync::Arc<Chunk>>,
    at: usize,
}

impl ChannelReader {
    fn new(first: Option<std::sync::Arc<Chunk>>, chunks: Receiver<ChunkResult>) -> Self {
        ChannelReader {
            chunks,
            current: first,
            at: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(current) = &self.current {
                if self.at < current.len() {
                    let n = buf.len().min(current.len() - self.at);
                    buf[..n].copy_from_slice(&current[self.at..self.at + n]);
                    self.at += n;
                    return Ok(n);
                }
            }
            match self.chunks.recv() {
                Ok(chunk) => {
                    self.current = Some(chunk?);
                    self.at = 0;
                }
                Err(_) => {
                    self.current = None;
                    return Ok(0);
                }
            }
        }
    }
}

/// The first chunk of the source, if there is one.
fn first_chunk(chunks: &Receiver<ChunkResult>) -> Result<Option<std::sync::Arc<Chunk>>> {
    match chunks.recv() {
        Ok(chunk) => chunk
            .map(Some)
            .map_err(|e| decompress::read_error("reading the image", e)),
        Err(_) => Ok(None),
    }
}

/// An uncompressed raw image, written straight from the chunks the reading
/// thread filled: scanned for zeros and handed to the writer, with no copy
/// in between (the writer sends aligned runs to the disk with O_DIRECT).
///
/// Once the stream ended, the image is inspected again with its last bytes
/// (a fixed VHD is a raw disk with a footer) and refused, before commit, if
/// the policy does not allow what it turned out to be.
fn write_raw_chunks(
    first: std::sync::Arc<Chunk>,
    chunks: &Receiver<ChunkResult>,
    writer: &mut DiskWriter,
    options: &StreamOptions,
) -> Result<u64> {
    let block = options.block_size.max(512) as usize;
    let capacity = writer.capacity();
    let mut offset = 0u64;
    let mut next = Some(first.clone());
    // The last two chunks hold the tail: every chunk but the last is full.
    let (mut previous, mut last): (Option<std::sync::Arc<Chunk>>, _) = (None, None);
    loop {
        let chunk = match next.take() {
            Some(chunk) => chunk,
            None => match first_chunk(chunks)? {
                Some(chunk) => chunk,
                None => break,
            },
        };
        let end = offset + chunk.len() as u64;
        if end > capacity {
            return Err(decompress::limit_exceeded(
                capacity,
                "the size of the target",
            ));
        }
        bmap::emit_runs(&chunk, offset, block, writer)?;
        offset = end;
        previous = last.replace(chunk);
    }
    let mut tail = Vec::with_capacity(format::TAIL_LEN);
    let last_len = last.as_ref().map_or(0, |chunk| chunk.len());
    if let Some(previous) = previous.filter(|_| last_len < format::TAIL_LEN) {
        let want = format::TAIL_LEN - last_len;
        tail.extend_from_slice(&previous[previous.len().saturating_sub(want)..]);
    }
    if let Some(last) = &last {
        tail.extend_from_slice(&last[last_len.saturating_sub(format::TAIL_LEN)..]);
    }
    let whole = format::inspect_ends(&first, &tail, offset)?;
    options.policy.check(&whole)?;
    writer.finish(offset)?;
    Ok(offset)
}

/// Decompresses and inspects; writes raw images, spools qcow2.
fn write_chunks(
    chunks: Receiver<ChunkResult>,
    writer: &mut DiskWriter,
    options: &StreamOptions,
) -> Result<(Compression, Format, Option<File>)> {
    let first = first_chunk(&chunks)?;
    // The common case, an uncompressed raw image, takes the short way. The
    // first chunk holds the whole head (it is full unless the image ends).
    if let Some(first) = &first {
        let inspection = match decompress::detect(first) {
            Compression::None => Some(format::inspect_head(
                &first[..first.len().min(format::HEAD_LEN)],
                None,
            )?),
            _ => None,
        };
        if let Some(inspection) = inspection.filter(|i| is_raw_like(i.format)) {
            options.policy.check(&inspection)?;
            check_virtual_size(&inspection, writer.capacity())?;
            write_raw_chunks(first.clone(), &chunks, writer, options)?;
            return Ok((Compression::None, inspection.format, None));
        }
    }
    let source = ChannelReader::new(first, chunks);
    let (compression, decompressed) = decompress::open(source)?;
    let capacity = writer.capacity();
    let (head, stream) = decompress::peek(decompressed, format::HEAD_LEN)?;
    let inspection = format::inspect_head(&head, None)?;
    options.policy.check(&inspection)?;
    check_virtual_size(&inspection, capacity)?;
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
    let mut magic = [0u8; decompress::MAGIC_LEN];
    let magic_len = bmap::fill(source, &mut magic)?;
    let compression = decompress::detect(&magic[..magic_len]);
    if compression != Compression::None {
        return convert_compressed(source, compression, sink, policy, max_size);
    }
    source
        .seek(SeekFrom::Start(0))
        .context("rewinding the image")?;
    let inspection = format::inspect(source)?;
    policy.check(&inspection)?;
    check_virtual_size(&inspection, max_size)?;
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
    finish_mapped(inspection, virtual_size, mapped)
}

/// What a conversion into `mapped` found, and its sink back.
fn finish_mapped<S: BlockSink>(
    inspection: Inspection,
    virtual_size: u64,
    mapped: BmapSink<S>,
) -> Result<(Converted, S)> {
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

/// Refuses an image whose virtual size is over `limit`.
fn check_virtual_size(inspection: &Inspection, limit: u64) -> Result<()> {
    match inspection.virtual_size {
        Some(size) if size > limit => Err(too_large(size, limit)),
        _ => Ok(()),
    }
}

/// [`convert_file`] for a compressed file: a raw image is decompressed,
/// inspected and mapped in one pass, bounded by `max_size`. A compressed
/// qcow2 would need spooling (qcow2 needs random access) and is refused;
/// qcow2 compresses its own clusters.
fn convert_compressed<S: BlockSink + Send>(
    source: &mut File,
    compression: Compression,
    sink: S,
    policy: &Policy,
    max_size: u64,
) -> Result<(Converted, S)> {
    source
        .seek(SeekFrom::Start(0))
        .context("rewinding the image")?;
    let decompressed = decompress::decoder(&mut *source, compression)?;
    let (head, stream) = decompress::peek(decompressed, format::HEAD_LEN)?;
    let inspection = format::inspect_head(&head, None)?;
    policy.check(&inspection)?;
    check_virtual_size(&inspection, max_size)?;
    if !is_raw_like(inspection.format) {
        return Err(Error::Unsupported(format!(
            "a {compression}-compressed {} image cannot be converted; decompress it first",
            inspection.format
        )));
    }
    let mut mapped = BmapSink::new(sink, bmap::DEFAULT_BLOCK_SIZE);
    let limited = Limited::new(stream, max_size, "the size limit");
    let virtual_size = write_behind(&mut mapped, |sink| {
        bmap::scan(limited, sink, bmap::DEFAULT_BLOCK_SIZE)
    })?;
    finish_mapped(inspection, virtual_size, mapped)
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
