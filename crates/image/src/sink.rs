//! Where converted image data goes.
//!
//! A converter (qcow2 to raw, a raw stream scanned for zeros) produces the
//! image as a series of data ranges and holes, in ascending offset order. A
//! [`BlockSink`] receives them: the disk writer writes the data with large
//! aligned writes and discards or zeroes the holes, a [`FileSink`] leaves
//! holes sparse, a block map builder hashes each data range.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};

use crate::error::{IoContext, Result};

/// Receives an image as data ranges and holes.
///
/// Calls come in ascending offset order and never overlap: each call starts
/// at or after the end of the previous one. Bytes that are covered by neither
/// a `write_at` nor a `hole` call are holes too.
pub trait BlockSink {
    /// The image has `data.len()` bytes of data at `offset`.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()>;

    /// The image reads as zeros from `offset` for `len` bytes.
    fn hole(&mut self, offset: u64, len: u64) -> Result<()>;

    /// The image is complete and `size` bytes long.
    fn finish(&mut self, size: u64) -> Result<()>;
}

impl<S: BlockSink + ?Sized> BlockSink for &mut S {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        (**self).write_at(offset, data)
    }

    fn hole(&mut self, offset: u64, len: u64) -> Result<()> {
        (**self).hole(offset, len)
    }

    fn finish(&mut self, size: u64) -> Result<()> {
        (**self).finish(size)
    }
}

/// Writes an image to a regular file, leaving holes unallocated.
///
/// The file should be empty (or new): holes are skipped, not zeroed.
pub struct FileSink {
    file: File,
    position: u64,
}

impl FileSink {
    pub fn new(file: File) -> Self {
        FileSink { file, position: 0 }
    }

    pub fn into_inner(self) -> File {
        self.file
    }
}

impl BlockSink for FileSink {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        if offset != self.position {
            self.file
                .seek(SeekFrom::Start(offset))
                .context("seeking in the output file")?;
        }
        self.file
            .write_all(data)
            .context("writing the output file")?;
        self.position = offset + data.len() as u64;
        Ok(())
    }

    fn hole(&mut self, _offset: u64, _len: u64) -> Result<()> {
        Ok(())
    }

    fn finish(&mut self, size: u64) -> Result<()> {
        self.file
            .set_len(size)
            .context("setting the output file's length")?;
        self.file.sync_all().context("syncing the output file")
    }
}

/// Keeps the image in memory; for tests and small images.
#[derive(Debug, Default)]
pub struct VecSink {
    pub data: Vec<u8>,
    /// The `(offset, len)` of every hole call, in order.
    pub holes: Vec<(u64, u64)>,
    pub finished: bool,
}

impl BlockSink for VecSink {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset as usize + data.len();
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[offset as usize..end].copy_from_slice(data);
        Ok(())
    }

    fn hole(&mut self, offset: u64, len: u64) -> Result<()> {
        self.holes.push((offset, len));
        Ok(())
    }

    fn finish(&mut self, size: u64) -> Result<()> {
        self.data.resize(size as usize, 0);
        self.finished = true;
        Ok(())
    }
}

/// Discards the image; for computing a block map or checking a conversion.
#[derive(Debug, Default)]
pub struct NullSink;

impl BlockSink for NullSink {
    fn write_at(&mut self, _offset: u64, _data: &[u8]) -> Result<()> {
        Ok(())
    }

    fn hole(&mut self, _offset: u64, _len: u64) -> Result<()> {
        Ok(())
    }

    fn finish(&mut self, _size: u64) -> Result<()> {
        Ok(())
    }
}
