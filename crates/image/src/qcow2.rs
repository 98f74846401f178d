//! qcow2 to raw, written from QEMU's specification (docs/interop/qcow2.txt).
//!
//! [`Qcow2::open`] parses the header and refuses what must never be followed
//! (backing files, external data files, encryption) and what it does not
//! know (unknown incompatible features). [`Qcow2::convert`] first checks
//! every L1 and L2 entry ([`Qcow2::check_tables`]), so that a truncated or
//! corrupt image is refused before anything reaches the sink, then walks the
//! tables again in guest order and hands the guest image to a [`BlockSink`]:
//! data as large writes, unallocated and zero clusters as holes.
//!
//! Handled: versions 2 and 3, cluster sizes 512 B to 2 MiB, compressed
//! clusters (raw deflate, or zstd when the header says so), zero clusters and
//! extended L2 entries (subclusters). Memory stays bounded: one L2 table, one
//! output run of a few MiB and one compressed read-ahead window at a time,
//! plus an L1 table capped at QEMU's own limit of 32 MiB.
//!
//! What the tables cannot show is found only when the data is read: a
//! compressed cluster that does not decompress, or a read that fails. Those
//! errors come after earlier clusters reached the sink; the caller abandons
//! the output (the disk writer wipes what it started).
//!
//! Speed: host-contiguous data clusters are read with one large read, and
//! runs of compressed clusters are read together and decompressed on a few
//! scoped threads (as qemu-img does on its thread pool).

use std::io::{self, Read, Seek, SeekFrom};

use flate2::{Decompress, FlushDecompress, Status};
use zstd::stream::raw::{DParameter, Decoder as ZstdDecoder, InBuffer, Operation, OutBuffer};

use crate::error::{Error, IoContext, Result};
use crate::sink::BlockSink;

const MAGIC: &[u8; 4] = b"QFI\xfb";
const V2_HEADER_LEN: usize = 72;
const V3_MIN_HEADER_LEN: usize = 104;
const MIN_CLUSTER_BITS: u32 = 9;
/// QEMU refuses clusters larger than 2 MiB; so do we, which bounds every buffer.
const MAX_CLUSTER_BITS: u32 = 21;
/// QEMU's limit on the L1 table, which bounds the memory it takes here too.
const MAX_L1_BYTES: u64 = 32 << 20;
/// The largest write handed to the sink: large enough to amortise syscalls.
const MAX_RUN: usize = 4 << 20;
/// How much to read at once around a compressed cluster: compressed clusters
/// are usually packed one after the other, so one read serves many.
const COMPRESSED_READ_AHEAD: u64 = 512 << 10;
/// The most compressed data read at once for a batch of compressed
/// clusters; more means they are scattered, and they are read one by one.
const MAX_BATCH_INPUT: u64 = 8 << 20;
/// Threads decompressing compressed clusters (the calling one included).
const MAX_WORKERS: usize = 4;

pub(crate) const INCOMPAT_DIRTY: u64 = 1 << 0;
pub(crate) const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub(crate) const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub(crate) const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
pub(crate) const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
pub(crate) const INCOMPAT_KNOWN: u64 = INCOMPAT_DIRTY
    | INCOMPAT_CORRUPT
    | INCOMPAT_DATA_FILE
    | INCOMPAT_COMPRESSION_TYPE
    | INCOMPAT_EXTENDED_L2;

const EXT_END: u32 = 0;
const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Bits 9-55 of L1 and standard L2 entries: a host offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_ZERO: u64 = 1;
const SUBCLUSTERS: u64 = 32;

/// How compressed clusters are compressed (header field `compression_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionType {
    /// Raw deflate streams, without zlib header (type 0, the default).
    Deflate,
    /// zstd frames (type 1).
    Zstd,
}

/// What [`Qcow2::convert`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConvertReport {
    pub virtual_size: u64,
    /// Bytes handed to the sink through `write_at`.
    pub data_bytes: u64,
    /// Bytes handed to the sink through `hole` (unallocated and zero clusters).
    pub hole_bytes: u64,
    /// Guest clusters that were stored compressed.
    pub compressed_clusters: u64,
}

/// A qcow2 image open for reading.
pub struct Qcow2<R> {
    source: Source<R>,
    version: u32,
    cluster_bits: u32,
    virtual_size: u64,
    l1_offset: u64,
    /// L1 entries that cover the virtual size (the table may hold more).
    l1_needed: u64,
    compression: CompressionType,
    extended_l2: bool,
    /// One per worker thread, made on first use and kept across batches.
    decompressors: Vec<Decompressor>,
    /// Threads that decompress a batch of compressed clusters.
    workers: usize,
}

impl<R: Read + Seek> Qcow2<R> {
    /// Parses and checks the header, refusing on its own (defence in depth,
    /// the inspector also checks): backing file, external data file,
    /// encryption, unknown incompatible features, versions other than 2/3,
    /// L1 table out of the file, sizes that overflow.
    pub fn open(mut reader: R) -> Result<Self> {
        let file_len = reader
            .seek(SeekFrom::End(0))
            .context("finding the length of the qcow2 image")?;
        let mut source = Source {
            reader,
            pos: None,
            len: file_len,
        };
        if file_len < V2_HEADER_LEN as u64 {
            return Err(Error::Corrupt(format!(
                "qcow2 image is {file_len} bytes long, shorter than its {V2_HEADER_LEN}-byte header"
            )));
        }
        let mut fixed = [0u8; V2_HEADER_LEN];
        source.read_at(0, &mut fixed, "the qcow2 header")?;
        if &fixed[0..4] != MAGIC {
            return Err(Error::Invalid(
                "not a qcow2 image: the file does not start with the qcow2 magic \"QFI\\xfb\""
                    .into(),
            ));
        }
        let version = be32(&fixed, 4);
        if version != 2 && version != 3 {
            return Err(Error::Unsupported(format!(
                "qcow2 version {version}; only versions 2 and 3 are supported"
            )));
        }
        let cluster_bits = be32(&fixed, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(Error::Unsupported(format!(
                "qcow2 cluster_bits is {cluster_bits}; cluster sizes from 512 bytes (9) to 2 MiB (21) are supported"
            )));
        }
        let cluster_size = 1u64 << cluster_bits;

        // The header and its extensions live in the first cluster.
        let first_len = cluster_size.min(file_len) as usize;
        let mut first = vec![0u8; first_len];
        source.read_at(0, &mut first, "the first cluster of the qcow2 image")?;

        let (header_len, incompatible, refcount_order, compression_field) = if version == 2 {
            (V2_HEADER_LEN, 0, 4, 0)
        } else {
            if first.len() < V3_MIN_HEADER_LEN {
                return Err(Error::Corrupt(format!(
                    "qcow2 version 3 image is {file_len} bytes long, shorter than its {V3_MIN_HEADER_LEN}-byte header"
                )));
            }
            let header_len = be32(&first, 100) as usize;
            if header_len < V3_MIN_HEADER_LEN
                || !header_len.is_multiple_of(8)
                || header_len > first.len()
            {
                return Err(Error::Corrupt(format!(
                    "qcow2 header_length is {header_len}; it must be a multiple of 8, at least \
                     {V3_MIN_HEADER_LEN} and fit in the first cluster ({first_len} bytes)"
                )));
            }
            let compression_field = if header_len > 104 { first[104] } else { 0 };
            (
                header_len,
                be64(&first, 72),
                be32(&first, 96),
                compression_field,
            )
        };
        let extensions = parse_extensions(&first, header_len)?;

        let unknown = incompatible & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(Error::Unsupported(format!(
                "qcow2 image uses unknown incompatible features ({}); it cannot be read safely",
                describe_features(unknown, &extensions.feature_names)
            )));
        }
        if incompatible & INCOMPAT_CORRUPT != 0 {
            return Err(Error::Corrupt(
                "qcow2 image is marked corrupt (incompatible feature bit 1): QEMU found its \
                 metadata inconsistent; repair it with qemu-img check -r all first"
                    .into(),
            ));
        }
        if incompatible & INCOMPAT_DATA_FILE != 0 || extensions.data_file.is_some() {
            let name = extensions.data_file.unwrap_or_default();
            return Err(Error::Refused(format!(
                "qcow2 image has an external data file ({name:?}); external data files are refused"
            )));
        }

        let backing_offset = be64(&fixed, 8);
        if backing_offset != 0 {
            let name = read_backing_name(&mut source, backing_offset, be32(&fixed, 16));
            return Err(Error::Refused(format!(
                "qcow2 image has a backing file ({name:?}); backing files are refused"
            )));
        }
        match be32(&fixed, 32) {
            0 => {}
            1 => {
                return Err(Error::Refused(
                    "qcow2 image is encrypted (AES); encrypted images are refused".into(),
                ))
            }
            2 => {
                return Err(Error::Refused(
                    "qcow2 image is encrypted (LUKS); encrypted images are refused".into(),
                ))
            }
            other => {
                return Err(Error::Refused(format!(
                "qcow2 image has unknown encryption method {other}; encrypted images are refused"
            )))
            }
        }

        let compression =
            match (
                incompatible & INCOMPAT_COMPRESSION_TYPE != 0,
                compression_field,
            ) {
                (false, 0) => CompressionType::Deflate,
                (false, t) => {
                    return Err(Error::Corrupt(format!(
                    "qcow2 compression_type is {t} but the compression type feature bit is not set"
                )))
                }
                (true, 1) => CompressionType::Zstd,
                (true, 0) => return Err(Error::Corrupt(
                    "qcow2 compression type feature bit is set but compression_type is 0 or absent"
                        .into(),
                )),
                (true, t) => {
                    return Err(Error::Unsupported(format!(
                        "qcow2 compression_type {t}; only 0 (deflate) and 1 (zstd) are known"
                    )))
                }
            };
        let extended_l2 = incompatible & INCOMPAT_EXTENDED_L2 != 0;
        if extended_l2 && cluster_bits < 14 {
            return Err(Error::Corrupt(format!(
                "qcow2 image has extended L2 entries with {cluster_size}-byte clusters; \
                 they need clusters of at least 16 KiB"
            )));
        }
        if refcount_order > 6 {
            return Err(Error::Corrupt(format!(
                "qcow2 refcount_order is {refcount_order}; at most 6 (64-bit refcounts) is allowed"
            )));
        }

        let virtual_size = be64(&fixed, 24);
        let l1_size = u64::from(be32(&fixed, 36));
        let l1_offset = be64(&fixed, 40);
        let entry_bytes = if extended_l2 { 16 } else { 8 };
        let l1_span = cluster_size * (cluster_size / entry_bytes);
        let l1_needed = virtual_size.div_ceil(l1_span);
        if l1_needed * 8 > MAX_L1_BYTES {
            return Err(Error::Unsupported(format!(
                "qcow2 virtual size {virtual_size} needs an L1 table of {l1_needed} entries with \
                 {cluster_size}-byte clusters, more than QEMU's limit of {} entries",
                MAX_L1_BYTES / 8
            )));
        }
        if l1_size < l1_needed {
            return Err(Error::Corrupt(format!(
                "qcow2 L1 table has {l1_size} entries but the virtual size {virtual_size} needs {l1_needed}"
            )));
        }
        if !l1_offset.is_multiple_of(cluster_size) {
            return Err(Error::Corrupt(format!(
                "qcow2 L1 table offset {l1_offset:#x} is not aligned to a cluster"
            )));
        }
        // l1_size < 2^32, so l1_size * 8 cannot overflow; the sum can.
        let l1_end = l1_offset.checked_add(l1_size * 8);
        if l1_end.is_none_or(|end| end > file_len) {
            return Err(Error::Corrupt(format!(
                "qcow2 L1 table ({l1_size} entries at offset {l1_offset:#x}) goes past the end \
                 of the file ({file_len} bytes)"
            )));
        }

        Ok(Qcow2 {
            source,
            version,
            cluster_bits,
            virtual_size,
            l1_offset,
            l1_needed,
            compression,
            extended_l2,
            decompressors: Vec::new(),
            workers: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .clamp(1, MAX_WORKERS),
        })
    }

    pub fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// The qcow2 version: 2 (compat=0.10) or 3 (compat=1.1).
    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn compression_type(&self) -> CompressionType {
        self.compression
    }

    /// Whether L2 entries carry subcluster bitmaps (`extended_l2=on`).
    pub fn has_extended_l2(&self) -> bool {
        self.extended_l2
    }

    /// Gives back the reader.
    pub fn into_inner(self) -> R {
        self.source.reader
    }

    /// Checks every L1 and L2 entry that maps the guest image, as
    /// [`Qcow2::convert`] reads them: L2 tables and data clusters aligned and
    /// inside the file, compressed data starting inside the file, zero
    /// clusters only in version 3, subcluster bitmaps consistent. Reads the
    /// tables only, one L2 table at a time, never the data.
    pub fn check_tables(&mut self) -> Result<()> {
        let l1 = self.read_l1()?;
        self.check_l2_tables(&l1)
    }

    /// Writes the guest image to `sink` in ascending order: data ranges
    /// through `write_at` (adjacent data clusters coalesced into writes of up
    /// to 4 MiB), unallocated and zero clusters through `hole`; then
    /// `finish(virtual_size)`. Refuses before writing anything when the
    /// virtual size is larger than `max_size` (`Error::TooLarge`) or when a
    /// table entry is corrupt (`Error::Corrupt`, see [`Qcow2::check_tables`]).
    pub fn convert<S: BlockSink>(&mut self, sink: &mut S, max_size: u64) -> Result<ConvertReport> {
        let virtual_size = self.virtual_size;
        if virtual_size > max_size {
            return Err(Error::TooLarge(format!(
                "qcow2 virtual size is {virtual_size} bytes, more than the {max_size} bytes allowed"
            )));
        }
        let l1 = self.read_l1()?;
        // The tables are a small part of the file (a 64 KiB L2 table maps
        // 512 MiB): reading them twice costs little, and the sink sees
        // nothing of an image whose tables are corrupt.
        self.check_l2_tables(&l1)?;

        let cluster_size = self.cluster_size();
        let l1_span = self.l1_span();
        let mut l2 = vec![0u8; cluster_size as usize];
        let mut l2_cached: Option<u64> = None;
        let mut window = ReadWindow::default();
        // Pieces are at most a cluster and at most the virtual size.
        let run = (MAX_RUN as u64).max(cluster_size).min(virtual_size);
        let mut out = Output::new(run as usize);
        // Consecutive compressed clusters, decompressed together in parallel.
        let mut batch: Vec<CompressedJob> = Vec::new();
        let batch_limit = (MAX_RUN as u64 / cluster_size).max(2) as usize;
        let mut decompressed = Vec::new();

        for l1_index in 0..self.l1_needed {
            let span_start = l1_index * l1_span;
            let span_end = (span_start + l1_span).min(virtual_size);
            let l1_entry = be64(&l1, (l1_index * 8) as usize);
            let Some(l2_offset) = self.l2_table(l1_entry, span_start)? else {
                self.flush_compressed(&mut batch, sink, &mut out, &mut window, &mut decompressed)?;
                out.hole(sink, &mut self.source, span_start, span_end - span_start)?;
                continue;
            };
            if l2_cached != Some(l2_offset) {
                self.source
                    .read_at(l2_offset, &mut l2, "a qcow2 L2 table")?;
                l2_cached = Some(l2_offset);
            }

            let clusters = (span_end - span_start).div_ceil(cluster_size) as usize;
            for index in 0..clusters {
                let guest = span_start + index as u64 * cluster_size;
                let len = cluster_size.min(virtual_size - guest);
                let cluster = self.cluster(&l2, index, guest, len)?;
                if !matches!(cluster, Cluster::Compressed(_)) {
                    self.flush_compressed(
                        &mut batch,
                        sink,
                        &mut out,
                        &mut window,
                        &mut decompressed,
                    )?;
                }
                match cluster {
                    Cluster::Compressed(job) => {
                        batch.push(job);
                        if batch.len() >= batch_limit {
                            self.flush_compressed(
                                &mut batch,
                                sink,
                                &mut out,
                                &mut window,
                                &mut decompressed,
                            )?;
                        }
                    }
                    Cluster::Hole => out.hole(sink, &mut self.source, guest, len)?,
                    Cluster::Data { host } => {
                        let piece = Piece::Host { offset: host, len };
                        out.data(sink, &mut self.source, guest, piece)?;
                    }
                    Cluster::Subclusters { host, allocated } => {
                        self.subclusters(sink, &mut out, guest, len, host, allocated)?;
                    }
                }
            }
        }
        self.flush_compressed(&mut batch, sink, &mut out, &mut window, &mut decompressed)?;
        out.finish(sink, &mut self.source, virtual_size)
    }

    /// Bytes of an L2 entry: 16 with subcluster bitmaps, else 8.
    fn l2_entry_bytes(&self) -> usize {
        if self.extended_l2 {
            16
        } else {
            8
        }
    }

    /// Guest bytes one L1 entry (one L2 table) maps.
    fn l1_span(&self) -> u64 {
        let cluster_size = self.cluster_size();
        cluster_size * (cluster_size / self.l2_entry_bytes() as u64)
    }

    /// The L1 entries that map the guest image.
    fn read_l1(&mut self) -> Result<Vec<u8>> {
        // Bounded by MAX_L1_BYTES, checked in open().
        let mut l1 = vec![0u8; (self.l1_needed * 8) as usize];
        self.source
            .read_at(self.l1_offset, &mut l1, "the qcow2 L1 table")?;
        Ok(l1)
    }

    /// Reads every L2 table the L1 entries point to, one at a time, and
    /// checks each entry that maps the guest image.
    fn check_l2_tables(&mut self, l1: &[u8]) -> Result<()> {
        let cluster_size = self.cluster_size();
        let l1_span = self.l1_span();
        let mut l2 = vec![0u8; cluster_size as usize];
        let mut l2_read: Option<u64> = None;
        for l1_index in 0..self.l1_needed {
            let span_start = l1_index * l1_span;
            let span_end = (span_start + l1_span).min(self.virtual_size);
            let l1_entry = be64(l1, (l1_index * 8) as usize);
            let Some(l2_offset) = self.l2_table(l1_entry, span_start)? else {
                continue;
            };
            if l2_read != Some(l2_offset) {
                self.source
                    .read_at(l2_offset, &mut l2, "a qcow2 L2 table")?;
                l2_read = Some(l2_offset);
            }
            let clusters = (span_end - span_start).div_ceil(cluster_size) as usize;
            for index in 0..clusters {
                let guest = span_start + index as u64 * cluster_size;
                let len = cluster_size.min(self.virtual_size - guest);
                self.cluster(&l2, index, guest, len)?;
            }
        }
        Ok(())
    }

    /// Where the L2 table of an L1 entry is, checked to be aligned and inside
    /// the file; None when the entry maps nothing.
    fn l2_table(&self, l1_entry: u64, span_start: u64) -> Result<Option<u64>> {
        let cluster_size = self.cluster_size();
        let l2_offset = l1_entry & OFFSET_MASK;
        if l2_offset == 0 {
            return Ok(None);
        }
        if !l2_offset.is_multiple_of(cluster_size) {
            return Err(Error::Corrupt(format!(
                "qcow2 L1 entry for guest offset {span_start:#x} points to an L2 table at \
                 {l2_offset:#x}, which is not aligned to a cluster"
            )));
        }
        if l2_offset + cluster_size > self.source.len {
            return Err(Error::Corrupt(format!(
                "qcow2 L1 entry for guest offset {span_start:#x} points to an L2 table at \
                 {l2_offset:#x}, past the end of the file ({} bytes)",
                self.source.len
            )));
        }
        Ok(Some(l2_offset))
    }

    /// Reads entry `index` of an L2 table, which maps `len` guest bytes at
    /// `guest`, and checks it against the file.
    fn cluster(&self, l2: &[u8], index: usize, guest: u64, len: u64) -> Result<Cluster> {
        let entry_bytes = self.l2_entry_bytes();
        let entry = be64(l2, index * entry_bytes);
        if entry & L2_COMPRESSED != 0 {
            return self
                .compressed_job(entry, guest, len)
                .map(Cluster::Compressed);
        }
        let host = entry & OFFSET_MASK;
        if !host.is_multiple_of(self.cluster_size()) {
            return Err(Error::Corrupt(format!(
                "qcow2 L2 entry for guest offset {guest:#x} points to host offset \
                 {host:#x}, which is not aligned to a cluster"
            )));
        }
        if self.extended_l2 {
            let bitmap = be64(l2, index * entry_bytes + 8);
            return self.subcluster_cluster(guest, len, host, bitmap);
        }
        if entry & L2_ZERO != 0 {
            if self.version == 2 {
                return Err(Error::Corrupt(format!(
                    "qcow2 version 2 image has a zero cluster at guest offset {guest:#x}; \
                     zero clusters exist only in version 3"
                )));
            }
            return Ok(Cluster::Hole);
        }
        if host == 0 {
            return Ok(Cluster::Hole);
        }
        self.check_in_file(guest, host, len)?;
        Ok(Cluster::Data { host })
    }

    /// A standard cluster of an image with extended L2 entries: 32
    /// subclusters, each allocated, zero or unallocated.
    fn subcluster_cluster(&self, guest: u64, len: u64, host: u64, bitmap: u64) -> Result<Cluster> {
        let allocated = bitmap as u32;
        let zero = (bitmap >> 32) as u32;
        if allocated & zero != 0 {
            return Err(Error::Corrupt(format!(
                "qcow2 L2 entry for guest offset {guest:#x} marks subclusters both allocated \
                 and zero (bitmap {bitmap:#018x})"
            )));
        }
        if allocated == 0 {
            return Ok(Cluster::Hole);
        }
        if host == 0 {
            return Err(Error::Corrupt(format!(
                "qcow2 L2 entry for guest offset {guest:#x} has allocated subclusters but no \
                 host offset"
            )));
        }
        if allocated == u32::MAX {
            self.check_in_file(guest, host, len)?;
            return Ok(Cluster::Data { host });
        }
        let sub_size = self.cluster_size() / SUBCLUSTERS;
        for sub in 0..SUBCLUSTERS {
            let start = sub * sub_size;
            if start >= len {
                break;
            }
            if allocated & (1 << sub) != 0 {
                self.check_in_file(guest + start, host + start, sub_size.min(len - start))?;
            }
        }
        Ok(Cluster::Subclusters { host, allocated })
    }

    /// Hands a partly allocated cluster to `out`, subcluster by subcluster;
    /// checked by [`Qcow2::subcluster_cluster`].
    fn subclusters<S: BlockSink>(
        &mut self,
        sink: &mut S,
        out: &mut Output,
        guest: u64,
        len: u64,
        host: u64,
        allocated: u32,
    ) -> Result<()> {
        let sub_size = self.cluster_size() / SUBCLUSTERS;
        for sub in 0..SUBCLUSTERS {
            let start = sub * sub_size;
            if start >= len {
                break;
            }
            let sub_len = sub_size.min(len - start);
            if allocated & (1 << sub) != 0 {
                let piece = Piece::Host {
                    offset: host + start,
                    len: sub_len,
                };
                out.data(sink, &mut self.source, guest + start, piece)?;
            } else {
                out.hole(sink, &mut self.source, guest + start, sub_len)?;
            }
        }
        Ok(())
    }

    fn check_in_file(&self, guest: u64, host: u64, len: u64) -> Result<()> {
        // host < 2^56 and len <= 2 MiB: no overflow.
        if host + len > self.source.len {
            return Err(Error::Corrupt(format!(
                "qcow2 L2 entry for guest offset {guest:#x} points to data at host offset \
                 {host:#x}, past the end of the file ({} bytes)",
                self.source.len
            )));
        }
        Ok(())
    }

    /// Reads a compressed L2 entry: where its data is, checked against the file.
    fn compressed_job(&self, entry: u64, guest: u64, len: u64) -> Result<CompressedJob> {
        // The descriptor: the host offset in bits 0..x, then the count of
        // additional 512-byte sectors in bits x..62.
        let x = 62 - (self.cluster_bits - 8);
        let host = entry & ((1u64 << x) - 1);
        let sectors = ((entry & ((1u64 << 62) - 1)) >> x) + 1;
        let compressed_len = sectors * 512 - (host & 511);
        if host >= self.source.len {
            return Err(Error::Corrupt(format!(
                "qcow2 L2 entry for guest offset {guest:#x} points to compressed data at host \
                 offset {host:#x}, past the end of the file ({} bytes)",
                self.source.len
            )));
        }
        // The last sector may be cut short at the end of the file: QEMU reads
        // past the end as zeros and stops once a cluster is produced.
        let end = (host + compressed_len).min(self.source.len);
        Ok(CompressedJob {
            guest,
            len,
            host,
            end,
        })
    }

    /// Decompresses the batched compressed clusters (guest-contiguous), on
    /// several threads when their data can be read in one go, and hands
    /// them to `out`.
    fn flush_compressed<S: BlockSink>(
        &mut self,
        batch: &mut Vec<CompressedJob>,
        sink: &mut S,
        out: &mut Output,
        window: &mut ReadWindow,
        decompressed: &mut Vec<u8>,
    ) -> Result<()> {
        let Some(first) = batch.first() else {
            return Ok(());
        };
        let cs = self.cluster_size() as usize;
        let needed = batch.len() * cs;
        if decompressed.len() < needed {
            decompressed.resize(needed, 0);
        }
        let decompressed = &mut decompressed[..needed];
        while self.decompressors.len() < self.workers {
            self.decompressors
                .push(Decompressor::new(self.compression)?);
        }

        let base = batch.iter().map(|job| job.host).min().unwrap_or(first.host);
        let top = batch.iter().map(|job| job.end).max().unwrap_or(first.end);
        if top - base <= MAX_BATCH_INPUT {
            let input = window.get(&mut self.source, base, top)?;
            let per_worker = batch.len().div_ceil(self.workers);
            let work = batch
                .chunks(per_worker)
                .zip(decompressed.chunks_mut(per_worker * cs))
                .zip(self.decompressors.iter_mut());
            std::thread::scope(|scope| {
                let mut inline = None;
                let mut spawned = Vec::new();
                for ((jobs, outs), decompressor) in work {
                    let task = move || -> Result<()> {
                        for (job, out) in jobs.iter().zip(outs.chunks_mut(cs)) {
                            let from = (job.host - base) as usize;
                            let to = (job.end - base) as usize;
                            decompressor.cluster(&input[from..to], out, job)?;
                        }
                        Ok(())
                    };
                    if inline.is_none() {
                        inline = Some(task);
                    } else {
                        spawned.push(scope.spawn(task));
                    }
                }
                let mut result = inline.map_or(Ok(()), |mut task| task());
                for handle in spawned {
                    let worker = handle
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                    result = result.and(worker);
                }
                result
            })?;
        } else {
            // Scattered clusters: one at a time, each with its own read.
            for (job, out) in batch.iter().zip(decompressed.chunks_mut(cs)) {
                let input = window.get(&mut self.source, job.host, job.end)?;
                if let Some(decompressor) = self.decompressors.first_mut() {
                    decompressor.cluster(input, out, job)?;
                }
            }
        }

        for (job, bytes) in batch.iter().zip(decompressed.chunks(cs)) {
            let piece = Piece::Bytes(&bytes[..job.len as usize]);
            out.data(sink, &mut self.source, job.guest, piece)?;
        }
        out.report.compressed_clusters += batch.len() as u64;
        batch.clear();
        Ok(())
    }
}

/// What an L2 entry says about one guest cluster, checked against the file.
enum Cluster {
    /// Reads as zeros: unallocated, or a zero cluster.
    Hole,
    /// Stored as is at `host`.
    Data { host: u64 },
    /// Stored compressed.
    Compressed(CompressedJob),
    /// Extended L2 entry with some of its 32 subclusters allocated (bit n of
    /// `allocated` for subcluster n), the others holes.
    Subclusters { host: u64, allocated: u32 },
}

/// A compressed guest cluster and where its data lies in the file.
struct CompressedJob {
    guest: u64,
    /// Guest bytes it stands for (less than a cluster at the very end).
    len: u64,
    host: u64,
    end: u64,
}

/// A decompressor for the image's compression type, reused across clusters.
enum Decompressor {
    Deflate(Decompress),
    Zstd(ZstdDecoder<'static>),
}

impl Decompressor {
    fn new(kind: CompressionType) -> Result<Self> {
        Ok(match kind {
            CompressionType::Deflate => Decompressor::Deflate(Decompress::new(false)),
            CompressionType::Zstd => Decompressor::Zstd(new_zstd_decoder()?),
        })
    }

    /// Decompresses one cluster into `out` (one cluster long: never more is
    /// produced); at least the job's guest bytes must come out.
    fn cluster(&mut self, input: &[u8], out: &mut [u8], job: &CompressedJob) -> Result<()> {
        let produced = match self {
            Decompressor::Deflate(inflater) => inflate(inflater, input, out),
            Decompressor::Zstd(decoder) => unzstd(decoder, input, out),
        };
        let (guest, host, len) = (job.guest, job.host, job.len);
        let produced = produced.map_err(|why| {
            Error::Corrupt(format!(
                "qcow2 compressed cluster for guest offset {guest:#x} (host offset {host:#x}) \
                 does not decompress: {why}"
            ))
        })?;
        if (produced as u64) < len {
            return Err(Error::Corrupt(format!(
                "qcow2 compressed cluster for guest offset {guest:#x} (host offset {host:#x}) \
                 decompresses to {produced} bytes instead of {len}"
            )));
        }
        Ok(())
    }
}

/// Inflates a raw deflate stream into `out`, stopping when `out` is full.
fn inflate(inflater: &mut Decompress, input: &[u8], out: &mut [u8]) -> Result<usize, String> {
    inflater.reset(false);
    let (mut read, mut written) = (0usize, 0usize);
    while written < out.len() {
        let (in_before, out_before) = (inflater.total_in(), inflater.total_out());
        let status = inflater
            .decompress(&input[read..], &mut out[written..], FlushDecompress::Finish)
            .map_err(|e| e.to_string())?;
        read += (inflater.total_in() - in_before) as usize;
        written += (inflater.total_out() - out_before) as usize;
        let stalled = inflater.total_in() == in_before && inflater.total_out() == out_before;
        if status == Status::StreamEnd || stalled {
            break;
        }
    }
    Ok(written)
}

fn new_zstd_decoder() -> Result<ZstdDecoder<'static>> {
    let mut decoder =
        ZstdDecoder::new().map_err(|e| Error::io("setting up the zstd decompressor", e))?;
    // A cluster is at most 2 MiB: refuse frames that ask for windows much
    // larger (8 MiB) rather than allocating whatever they ask.
    decoder
        .set_parameter(DParameter::WindowLogMax(MAX_CLUSTER_BITS + 2))
        .map_err(|e| Error::io("setting up the zstd decompressor", e))?;
    Ok(decoder)
}

/// Decompresses zstd frames into `out`, stopping when `out` is full (the
/// compressed data may be followed by padding up to the sector's end).
fn unzstd(
    decoder: &mut ZstdDecoder<'static>,
    input: &[u8],
    out: &mut [u8],
) -> Result<usize, String> {
    decoder.reinit().map_err(|e| e.to_string())?;
    let mut input = InBuffer::around(input);
    let mut output = OutBuffer::around(out);
    while output.pos() < output.capacity() {
        let (in_before, out_before) = (input.pos(), output.pos());
        decoder
            .run(&mut input, &mut output)
            .map_err(|e| e.to_string())?;
        if input.pos() == in_before && output.pos() == out_before {
            break;
        }
    }
    Ok(output.pos())
}

/// The image file, with its length and where its cursor is, so that
/// consecutive reads need no seek.
struct Source<R> {
    reader: R,
    pos: Option<u64>,
    len: u64,
}

impl<R: Read + Seek> Source<R> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8], what: &str) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.len) {
            return Err(Error::Corrupt(format!(
                "qcow2 image is truncated: {what} ({} bytes at offset {offset:#x}) goes past \
                 the end of the file ({} bytes)",
                buf.len(),
                self.len
            )));
        }
        if self.pos != Some(offset) {
            self.pos = None;
            self.reader
                .seek(SeekFrom::Start(offset))
                .with_context(|| format!("seeking to {what} in the qcow2 image"))?;
        }
        self.pos = None;
        match self.reader.read_exact(buf) {
            Ok(()) => {
                self.pos = Some(offset + buf.len() as u64);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(Error::Corrupt(format!(
                "qcow2 image is truncated: the file ended while reading {what} at offset {offset:#x}"
            ))),
            Err(e) => Err(Error::io(format!("reading {what} from the qcow2 image"), e)),
        }
    }
}

/// Compressed data read ahead: one read serves the clusters packed after it.
#[derive(Default)]
struct ReadWindow {
    start: u64,
    data: Vec<u8>,
}

impl ReadWindow {
    fn get<R: Read + Seek>(
        &mut self,
        source: &mut Source<R>,
        start: u64,
        end: u64,
    ) -> Result<&[u8]> {
        let have = start >= self.start && end <= self.start + self.data.len() as u64;
        if !have {
            let read_end = end
                .max(start.saturating_add(COMPRESSED_READ_AHEAD))
                .min(source.len);
            self.data.clear();
            self.data.resize((read_end - start) as usize, 0);
            self.start = start;
            if let Err(e) = source.read_at(start, &mut self.data, "compressed qcow2 data") {
                self.data.clear();
                return Err(e);
            }
        }
        let from = (start - self.start) as usize;
        let to = (end - self.start) as usize;
        Ok(&self.data[from..to])
    }
}

/// Where a data range comes from.
enum Piece<'a> {
    /// Bytes of the image file, read (merged with neighbours) later.
    Host { offset: u64, len: u64 },
    /// Bytes already at hand (a decompressed cluster).
    Bytes(&'a [u8]),
}

/// Collects guest-contiguous data into one buffer, reading host-contiguous
/// ranges with one read, and coalesces holes; hands both to the sink in
/// ascending order.
struct Output {
    buf: Vec<u8>,
    /// Bytes of `buf` in use; they belong at `start` in the guest.
    used: usize,
    start: u64,
    /// A host range not read yet: (host offset, position in `buf`, length).
    pending_read: Option<(u64, usize, usize)>,
    hole: Option<(u64, u64)>,
    report: ConvertReport,
}

impl Output {
    fn new(capacity: usize) -> Self {
        Output {
            buf: vec![0; capacity],
            used: 0,
            start: 0,
            pending_read: None,
            hole: None,
            report: ConvertReport::default(),
        }
    }

    fn data<S: BlockSink, R: Read + Seek>(
        &mut self,
        sink: &mut S,
        source: &mut Source<R>,
        guest: u64,
        piece: Piece<'_>,
    ) -> Result<()> {
        if let Some((start, len)) = self.hole.take() {
            sink.hole(start, len)?;
            self.report.hole_bytes += len;
        }
        let len = match &piece {
            Piece::Host { len, .. } => *len as usize,
            Piece::Bytes(bytes) => bytes.len(),
        };
        if self.used > 0
            && (self.start + self.used as u64 != guest || self.used + len > self.buf.len())
        {
            self.flush_data(sink, source)?;
        }
        if self.used == 0 {
            self.start = guest;
        }
        match piece {
            Piece::Bytes(bytes) => self.buf[self.used..self.used + len].copy_from_slice(bytes),
            Piece::Host { offset, .. } => match &mut self.pending_read {
                Some((host, at, pending))
                    if *host + *pending as u64 == offset && *at + *pending == self.used =>
                {
                    *pending += len;
                }
                _ => {
                    self.read_pending(source)?;
                    self.pending_read = Some((offset, self.used, len));
                }
            },
        }
        self.used += len;
        Ok(())
    }

    fn hole<S: BlockSink, R: Read + Seek>(
        &mut self,
        sink: &mut S,
        source: &mut Source<R>,
        guest: u64,
        len: u64,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.flush_data(sink, source)?;
        match &mut self.hole {
            Some((start, hole_len)) if *start + *hole_len == guest => *hole_len += len,
            _ => {
                if let Some((start, hole_len)) = self.hole.take() {
                    sink.hole(start, hole_len)?;
                    self.report.hole_bytes += hole_len;
                }
                self.hole = Some((guest, len));
            }
        }
        Ok(())
    }

    fn read_pending<R: Read + Seek>(&mut self, source: &mut Source<R>) -> Result<()> {
        if let Some((host, at, len)) = self.pending_read.take() {
            source.read_at(host, &mut self.buf[at..at + len], "qcow2 data clusters")?;
        }
        Ok(())
    }

    fn flush_data<S: BlockSink, R: Read + Seek>(
        &mut self,
        sink: &mut S,
        source: &mut Source<R>,
    ) -> Result<()> {
        self.read_pending(source)?;
        if self.used > 0 {
            // Handing the buffer over lets a write-behind sink skip a copy.
            let capacity = self.buf.len();
            let buffer = std::mem::take(&mut self.buf);
            let mut next = sink.write_owned(self.start, buffer, self.used)?;
            if next.len() < capacity {
                next.resize(capacity, 0);
            }
            self.buf = next;
            self.report.data_bytes += self.used as u64;
            self.used = 0;
        }
        Ok(())
    }

    fn finish<S: BlockSink, R: Read + Seek>(
        mut self,
        sink: &mut S,
        source: &mut Source<R>,
        virtual_size: u64,
    ) -> Result<ConvertReport> {
        self.flush_data(sink, source)?;
        if let Some((start, len)) = self.hole.take() {
            sink.hole(start, len)?;
            self.report.hole_bytes += len;
        }
        sink.finish(virtual_size)?;
        self.report.virtual_size = virtual_size;
        Ok(self.report)
    }
}

/// What the header extensions say that matters here.
#[derive(Default)]
struct Extensions {
    data_file: Option<String>,
    /// (bit, name) of incompatible features, for error messages.
    feature_names: Vec<(u32, String)>,
}

fn parse_extensions(first: &[u8], header_len: usize) -> Result<Extensions> {
    let mut extensions = Extensions::default();
    let mut pos = header_len;
    while pos + 8 <= first.len() {
        let kind = be32(first, pos);
        let len = be32(first, pos + 4) as usize;
        if kind == EXT_END {
            break;
        }
        let data_start = pos + 8;
        let Some(data) = data_start
            .checked_add(len)
            .and_then(|end| first.get(data_start..end))
        else {
            return Err(Error::Corrupt(format!(
                "qcow2 header extension {kind:#010x} at offset {pos:#x} ({len} bytes) goes past \
                 the first cluster"
            )));
        };
        match kind {
            EXT_DATA_FILE => {
                extensions.data_file = Some(String::from_utf8_lossy(data).into_owned())
            }
            EXT_FEATURE_NAMES => {
                for entry in data.chunks_exact(48) {
                    if entry[0] == 0 {
                        let name = &entry[2..];
                        let name = name.split(|&b| b == 0).next().unwrap_or(name);
                        extensions.feature_names.push((
                            u32::from(entry[1]),
                            String::from_utf8_lossy(name).into_owned(),
                        ));
                    }
                }
            }
            _ => {}
        }
        pos = data_start + len.div_ceil(8) * 8;
    }
    Ok(extensions)
}

fn describe_features(bits: u64, names: &[(u32, String)]) -> String {
    (0..64)
        .filter(|bit| bits & (1u64 << bit) != 0)
        .map(|bit| match names.iter().find(|(b, _)| *b == bit) {
            Some((_, name)) => format!("bit {bit} \"{name}\""),
            None => format!("bit {bit}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The backing file's name, for the error message; best effort.
fn read_backing_name<R: Read + Seek>(source: &mut Source<R>, offset: u64, len: u32) -> String {
    let len = len.min(1023) as usize;
    let mut name = vec![0u8; len];
    match source.read_at(offset, &mut name, "the backing file name") {
        Ok(()) => String::from_utf8_lossy(&name).into_owned(),
        Err(_) => format!("name unreadable at offset {offset:#x}"),
    }
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(b)
}

fn be64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(b)
}
