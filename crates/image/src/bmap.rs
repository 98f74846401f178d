//! Block maps: which ranges of a raw image hold data, with a sha256 per
//! range (bmaptool's idea, in JSON).
//!
//! A block map is produced in the pass that converts or scans an image
//! ([`BmapSink`] wraps any [`BlockSink`]). A writer then writes only the mapped
//! ranges and leaves the rest as holes ([`copy_mapped`]), and verifies the
//! image range by range as it writes, so a corrupt cache is caught before the
//! disk is made bootable.

use std::io::{Read, Seek, SeekFrom};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::checksum::to_hex;
use crate::error::{Error, IoContext, Result};
use crate::sink::BlockSink;

/// The `format` field of every block map.
pub const FORMAT: &str = "ferric-bmap";
/// The version written and the only one read.
pub const VERSION: u32 = 1;
/// The granularity of zero detection when scanning raw images.
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;
/// Ranges longer than this are split, so that verification is range by range
/// even across large data runs.
pub const MAX_RANGE_LEN: u64 = 64 << 20;
/// A bound on what a parsed map may claim, to keep memory bounded.
const MAX_RANGES: usize = 1 << 22;

/// One range of data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappedRange {
    pub start: u64,
    pub length: u64,
    pub sha256: String,
}

impl MappedRange {
    pub fn end(&self) -> u64 {
        self.start + self.length
    }
}

/// The block map of a raw image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockMap {
    pub format: String,
    pub version: u32,
    /// The size of the raw image in bytes.
    pub image_size: u64,
    /// The granularity of zero detection.
    pub block_size: u32,
    /// The sum of the ranges' lengths.
    pub mapped_bytes: u64,
    pub ranges: Vec<MappedRange>,
}

impl BlockMap {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a block map always serialises")
    }

    /// Parses and checks a block map: ranges sorted, not overlapping, inside
    /// the image, with sha256 digests.
    pub fn from_json(text: &str) -> Result<Self> {
        let map: BlockMap = serde_json::from_str(text)
            .map_err(|e| Error::Invalid(format!("the block map is not valid JSON: {e}")))?;
        map.validate()?;
        Ok(map)
    }

    fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::Invalid(format!("invalid block map: {why}")));
        if self.format != FORMAT || self.version != VERSION {
            return bad(format!(
                "format {:?} version {} is not {FORMAT:?} version {VERSION}",
                self.format, self.version
            ));
        }
        if self.block_size == 0 || !self.block_size.is_power_of_two() {
            return bad(format!(
                "block size {} is not a power of two",
                self.block_size
            ));
        }
        if self.ranges.len() > MAX_RANGES {
            return bad(format!("{} ranges is too many", self.ranges.len()));
        }
        let mut previous_end = 0u64;
        let mut mapped = 0u64;
        for (i, range) in self.ranges.iter().enumerate() {
            let Some(end) = range.start.checked_add(range.length) else {
                return bad(format!("range {i} overflows"));
            };
            if range.length == 0 {
                return bad(format!("range {i} is empty"));
            }
            if range.start < previous_end {
                return bad(format!(
                    "range {i} starts at {} inside or before the previous range",
                    range.start
                ));
            }
            if end > self.image_size {
                return bad(format!(
                    "range {i} ends at {end}, past the image size {}",
                    self.image_size
                ));
            }
            if range.sha256.len() != 64 || !range.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad(format!("range {i} has no sha256 digest"));
            }
            previous_end = end;
            mapped += range.length;
        }
        if mapped != self.mapped_bytes {
            return bad(format!(
                "mapped_bytes is {} but the ranges hold {mapped}",
                self.mapped_bytes
            ));
        }
        Ok(())
    }
}

/// Passes an image on to another sink and records its block map.
pub struct BmapSink<S> {
    inner: S,
    block_size: u32,
    ranges: Vec<MappedRange>,
    open: Option<(u64, u64, Sha256)>,
    size: Option<u64>,
}

impl<S: BlockSink> BmapSink<S> {
    pub fn new(inner: S, block_size: u32) -> Self {
        BmapSink {
            inner,
            block_size,
            ranges: Vec::new(),
            open: None,
            size: None,
        }
    }

    fn close_range(&mut self) {
        if let Some((start, length, hasher)) = self.open.take() {
            self.ranges.push(MappedRange {
                start,
                length,
                sha256: to_hex(&hasher.finalize()),
            });
        }
    }

    /// The block map, once `finish` was called, and the inner sink.
    pub fn into_parts(mut self) -> (Option<BlockMap>, S) {
        self.close_range();
        let map = self.size.map(|image_size| BlockMap {
            format: FORMAT.into(),
            version: VERSION,
            image_size,
            block_size: self.block_size,
            mapped_bytes: self.ranges.iter().map(|r| r.length).sum(),
            ranges: std::mem::take(&mut self.ranges),
        });
        (map, self.inner)
    }
}

impl<S: BlockSink> BmapSink<S> {
    /// Adds `data`, written at `offset`, to the open range or starts one.
    fn record(&mut self, mut offset: u64, mut data: &[u8]) {
        while !data.is_empty() {
            let extends = matches!(&self.open, Some((start, len, _)) if start + len == offset && *len < MAX_RANGE_LEN);
            if !extends {
                self.close_range();
                self.open = Some((offset, 0, Sha256::new()));
            }
            let (_, len, hasher) = self.open.as_mut().expect("a range is open");
            let take = data.len().min((MAX_RANGE_LEN - *len) as usize);
            hasher.update(&data[..take]);
            *len += take as u64;
            offset += take as u64;
            data = &data[take..];
        }
    }
}

impl<S: BlockSink> BlockSink for BmapSink<S> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.inner.write_at(offset, data)?;
        self.record(offset, data);
        Ok(())
    }

    fn hole(&mut self, offset: u64, len: u64) -> Result<()> {
        self.close_range();
        self.inner.hole(offset, len)
    }

    fn finish(&mut self, size: u64) -> Result<()> {
        self.close_range();
        self.size = Some(size);
        self.inner.finish(size)
    }

    fn write_owned(&mut self, offset: u64, buffer: Vec<u8>, len: usize) -> Result<Vec<u8>> {
        self.record(offset, &buffer[..len]);
        self.inner.write_owned(offset, buffer, len)
    }
}

/// Whether a block is all zeros. Written so the compiler vectorises it.
pub fn is_zero(block: &[u8]) -> bool {
    let mut chunks = block.chunks_exact(64);
    for chunk in &mut chunks {
        if chunk.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

/// Splits a raw stream into data and zero runs of `block_size` granularity
/// and hands them to `sink`, then finishes it. Returns the image size.
pub fn scan<R: Read, S: BlockSink>(mut reader: R, sink: &mut S, block_size: u32) -> Result<u64> {
    const BUFFER: usize = 4 << 20;
    let block = block_size.max(512) as usize;
    let mut buf = vec![0u8; BUFFER];
    let mut offset = 0u64;
    loop {
        let filled = fill(&mut reader, &mut buf)?;
        if filled == 0 {
            break;
        }
        emit_runs(&buf[..filled], offset, block, sink)?;
        offset += filled as u64;
        if filled < buf.len() {
            break;
        }
    }
    sink.finish(offset)?;
    Ok(offset)
}

/// Hands `data`, which starts at image offset `offset`, to `sink` as runs of
/// data and zeros.
pub fn emit_runs<S: BlockSink>(data: &[u8], offset: u64, block: usize, sink: &mut S) -> Result<()> {
    let mut run_start = 0usize;
    let mut run_zero: Option<bool> = None;
    let mut pos = 0usize;
    while pos < data.len() {
        let end = (pos + block).min(data.len());
        let zero = is_zero(&data[pos..end]);
        match run_zero {
            Some(current) if current != zero => {
                flush_run(data, offset, run_start, pos, current, sink)?;
                run_start = pos;
                run_zero = Some(zero);
            }
            None => run_zero = Some(zero),
            _ => {}
        }
        pos = end;
    }
    if let Some(zero) = run_zero {
        flush_run(data, offset, run_start, data.len(), zero, sink)?;
    }
    Ok(())
}

fn flush_run<S: BlockSink>(
    data: &[u8],
    offset: u64,
    start: usize,
    end: usize,
    zero: bool,
    sink: &mut S,
) -> Result<()> {
    if zero {
        sink.hole(offset + start as u64, (end - start) as u64)
    } else {
        sink.write_at(offset + start as u64, &data[start..end])
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
pub(crate) fn fill<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(crate::decompress::read_error("reading the image", e)),
        }
    }
    Ok(filled)
}

/// Writes the mapped ranges of a raw image to `sink`, the gaps as holes,
/// checking each range's sha256 as it goes; a range that does not match
/// stops the copy with [`Error::ChecksumMismatch`] naming the range.
pub fn copy_mapped<R: Read + Seek, S: BlockSink>(
    source: &mut R,
    map: &BlockMap,
    sink: &mut S,
) -> Result<()> {
    const CHUNK: usize = 4 << 20;
    let mut buf = vec![0u8; CHUNK];
    let mut position = 0u64;
    for range in &map.ranges {
        if range.start > position {
            sink.hole(position, range.start - position)?;
        }
        source
            .seek(SeekFrom::Start(range.start))
            .context("seeking in the image")?;
        let mut hasher = Sha256::new();
        let mut done = 0u64;
        while done < range.length {
            let want = (range.length - done).min(CHUNK as u64) as usize;
            let got = fill(source, &mut buf[..want])?;
            if got < want {
                return Err(Error::Corrupt(format!(
                    "the image ends at {} inside the mapped range at {}",
                    range.start + done + got as u64,
                    range.start
                )));
            }
            hasher.update(&buf[..got]);
            sink.write_at(range.start + done, &buf[..got])?;
            done += got as u64;
        }
        let actual = to_hex(&hasher.finalize());
        if !actual.eq_ignore_ascii_case(&range.sha256) {
            return Err(Error::ChecksumMismatch {
                algorithm: "sha256",
                expected: format!(
                    "{} (range at {}+{})",
                    range.sha256, range.start, range.length
                ),
                actual,
            });
        }
        position = range.end();
    }
    if map.image_size > position {
        sink.hole(position, map.image_size - position)?;
    }
    sink.finish(map.image_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::VecSink;
    use std::io::Cursor;

    fn image() -> Vec<u8> {
        let mut data = vec![0u8; 5 * 4096 + 100];
        data[4096..8192].fill(7);
        data[3 * 4096 + 5] = 1;
        data[5 * 4096 + 99] = 9;
        data
    }

    #[test]
    fn scan_maps_data_and_holes() {
        let data = image();
        let mut sink = BmapSink::new(VecSink::default(), 4096);
        let size = scan(Cursor::new(&data), &mut sink, 4096).unwrap();
        assert_eq!(size, data.len() as u64);
        let (map, inner) = sink.into_parts();
        let map = map.unwrap();
        assert_eq!(inner.data, data);
        let spans: Vec<(u64, u64)> = map.ranges.iter().map(|r| (r.start, r.length)).collect();
        assert_eq!(spans, vec![(4096, 4096), (3 * 4096, 4096), (5 * 4096, 100)]);
        assert_eq!(map.mapped_bytes, 8192 + 100);
        assert_eq!(inner.holes, vec![(0, 4096), (8192, 4096), (4 * 4096, 4096)]);
        let parsed = BlockMap::from_json(&map.to_json()).unwrap();
        assert_eq!(parsed, map);
    }

    #[test]
    fn copy_mapped_writes_and_verifies() {
        let data = image();
        let mut sink = BmapSink::new(VecSink::default(), 4096);
        scan(Cursor::new(&data), &mut sink, 4096).unwrap();
        let map = sink.into_parts().0.unwrap();
        let mut out = VecSink::default();
        copy_mapped(&mut Cursor::new(&data), &map, &mut out).unwrap();
        assert_eq!(out.data, data);

        let mut corrupt = data.clone();
        corrupt[4100] = 8;
        let err =
            copy_mapped(&mut Cursor::new(&corrupt), &map, &mut VecSink::default()).unwrap_err();
        assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
        assert!(err.to_string().contains("range at 4096+4096"), "{err}");
    }

    #[test]
    fn bad_maps_are_refused() {
        let good = r#"{"format":"ferric-bmap","version":1,"image_size":8192,"block_size":4096,"mapped_bytes":4096,"ranges":[{"start":0,"length":4096,"sha256":"ad7facb2586fc6e966c004d7d1d16b024f5805ff7cb47c7a85dabd8b48892ca7"}]}"#;
        BlockMap::from_json(good).unwrap();
        for (bad, why) in [
            (good.replace("\"image_size\":8192", "\"image_size\":100"), "past the image size"),
            (good.replace("\"mapped_bytes\":4096", "\"mapped_bytes\":1"), "mapped_bytes"),
            (good.replace("\"version\":1", "\"version\":2"), "version"),
            (good.replace("\"block_size\":4096", "\"block_size\":3000"), "power of two"),
            (good.replace("ad7f", "zz7f"), "sha256"),
            (good.replace("\"length\":4096", "\"length\":0").replace("\"mapped_bytes\":4096", "\"mapped_bytes\":0"), "empty"),
            (good.replace("\"start\":0", "\"start\":18446744073709551615"), "overflows"),
            (good.replace("}]}", "},{\"start\":0,\"length\":1,\"sha256\":\"ad7facb2586fc6e966c004d7d1d16b024f5805ff7cb47c7a85dabd8b48892ca7\"}]}"), "inside or before"),
            ("[]".to_string(), "not valid JSON"),
        ] {
            let err = BlockMap::from_json(&bad).unwrap_err();
            assert!(err.to_string().contains(why), "{why}: {err}");
        }
    }

    #[test]
    fn long_runs_are_split() {
        let mut sink = BmapSink::new(VecSink::default(), 4096);
        let chunk = vec![1u8; 1 << 20];
        for i in 0..70u64 {
            sink.write_at(i << 20, &chunk).unwrap();
        }
        sink.finish(70 << 20).unwrap();
        let map = sink.into_parts().0.unwrap();
        assert_eq!(map.ranges.len(), 2);
        assert_eq!(map.ranges[0].length, MAX_RANGE_LEN);
    }
}
