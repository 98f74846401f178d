//! Where converted image data goes.
//!
//! A converter (qcow2 to raw, a raw stream scanned for zeros) produces the
//! image as a series of data ranges and holes, in ascending offset order. A
//! [`BlockSink`] receives them: the disk writer writes the data with large
//! aligned writes and discards or zeroes the holes, a [`FileSink`] leaves
//! holes sparse, a block map builder hashes each data range.

use std::fs::File;
use std::os::unix::fs::FileExt;

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

    /// Like `write_at` with `buffer[..len]`, handing over the buffer: a sink
    /// that passes data to another thread does so without a copy. Returns a
    /// buffer for the caller to fill next (of any length and contents).
    fn write_owned(&mut self, offset: u64, buffer: Vec<u8>, len: usize) -> Result<Vec<u8>> {
        self.write_at(offset, &buffer[..len])?;
        Ok(buffer)
    }
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

    fn write_owned(&mut self, offset: u64, buffer: Vec<u8>, len: usize) -> Result<Vec<u8>> {
        (**self).write_owned(offset, buffer, len)
    }
}

/// Writes an image to a regular file, leaving holes unallocated.
///
/// The file should be empty (or new): holes are skipped, not zeroed.
pub struct FileSink {
    file: File,
    /// Bytes written since writeback was last started.
    unflushed: u64,
}

/// Writeback is started every this many bytes, so that the disk writes while
/// the conversion goes on and the final fsync has little left to do.
const WRITEBACK_EVERY: u64 = 64 << 20;

impl FileSink {
    pub fn new(file: File) -> Self {
        FileSink { file, unflushed: 0 }
    }

    pub fn into_inner(self) -> File {
        self.file
    }
}

impl BlockSink for FileSink {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.file
            .write_all_at(data, offset)
            .context("writing the output file")?;
        self.unflushed += data.len() as u64;
        if self.unflushed >= WRITEBACK_EVERY {
            self.unflushed = 0;
            start_writeback(&self.file);
        }
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

/// Asks the kernel to start writing the file's dirty pages, without waiting.
/// Only a hint: the final fsync is what makes the data durable.
fn start_writeback(file: &File) {
    use std::os::unix::io::AsRawFd;
    // SAFETY: sync_file_range takes the descriptor and plain integers; offset
    // 0 with length 0 means the whole file.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
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

/// What [`write_behind`] passes to its writing thread.
enum Op {
    /// Write `buffer[..len]` at the offset.
    Write(u64, Vec<u8>, usize),
    Hole(u64, u64),
    Finish(u64),
}

/// The producing side of [`write_behind`]: a [`BlockSink`] that hands every
/// call to the writing thread.
pub struct WriteBehind {
    ops: std::sync::mpsc::SyncSender<Op>,
    buffers: std::sync::mpsc::Receiver<Vec<u8>>,
    /// Set when the writing thread stopped: its error is the one to report.
    stopped: bool,
}

impl WriteBehind {
    fn send(&mut self, op: Op) -> Result<()> {
        if self.ops.send(op).is_err() {
            self.stopped = true;
            return Err(crate::Error::io(
                "handing data to the writing thread",
                std::io::Error::other("the writing thread stopped"),
            ));
        }
        Ok(())
    }
}

impl BlockSink for WriteBehind {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let mut buffer = self.buffers.try_recv().unwrap_or_default();
        if buffer.len() < data.len() {
            buffer.resize(data.len(), 0);
        }
        buffer[..data.len()].copy_from_slice(data);
        self.send(Op::Write(offset, buffer, data.len()))
    }

    fn write_owned(&mut self, offset: u64, buffer: Vec<u8>, len: usize) -> Result<Vec<u8>> {
        self.send(Op::Write(offset, buffer, len))?;
        Ok(self.buffers.try_recv().unwrap_or_default())
    }

    fn hole(&mut self, offset: u64, len: u64) -> Result<()> {
        self.send(Op::Hole(offset, len))
    }

    fn finish(&mut self, size: u64) -> Result<()> {
        self.send(Op::Finish(size))
    }
}

/// Runs `work` with a sink whose calls are carried out by `sink` on a second
/// thread, so that producing the image (reading, decompressing, hashing) and
/// writing it overlap. Returns `work`'s result once every call reached `sink`;
/// an error of the writing thread is returned as the cause.
pub fn write_behind<S, T, F>(sink: &mut S, work: F) -> Result<T>
where
    S: BlockSink + Send,
    F: FnOnce(&mut WriteBehind) -> Result<T>,
{
    const IN_FLIGHT: usize = 4;
    std::thread::scope(|scope| {
        let (ops, received) = std::sync::mpsc::sync_channel::<Op>(IN_FLIGHT);
        let (give_back, buffers) = std::sync::mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT + 2);
        let writing = scope.spawn(move || -> Result<()> {
            for op in received {
                match op {
                    Op::Write(offset, buffer, len) => {
                        let buffer = sink.write_owned(offset, buffer, len)?;
                        let _ = give_back.try_send(buffer);
                    }
                    Op::Hole(offset, len) => sink.hole(offset, len)?,
                    Op::Finish(size) => sink.finish(size)?,
                }
            }
            Ok(())
        });
        let mut proxy = WriteBehind {
            ops,
            buffers,
            stopped: false,
        };
        let outcome = work(&mut proxy);
        let stopped = proxy.stopped;
        drop(proxy);
        let written = writing.join().unwrap_or_else(|_| {
            Err(crate::Error::io(
                "writing the image",
                std::io::Error::other("the writing thread panicked"),
            ))
        });
        match (outcome, written) {
            (Ok(value), Ok(())) => Ok(value),
            (Err(_), Err(cause)) if stopped => Err(cause),
            (Err(error), _) => Err(error),
            (Ok(_), Err(cause)) => Err(cause),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_behind_delivers_everything_in_order() {
        let mut sink = VecSink::default();
        let n = write_behind(&mut sink, |s| {
            for i in 0..100u64 {
                s.write_at(i * 10, &[i as u8; 10])?;
            }
            s.hole(1000, 24)?;
            s.finish(1024)?;
            Ok(7)
        })
        .unwrap();
        assert_eq!(n, 7);
        assert!(sink.finished);
        assert_eq!(sink.data.len(), 1024);
        assert_eq!(sink.data[995], 99);
        assert_eq!(sink.holes, vec![(1000, 24)]);
    }

    struct Failing;

    impl BlockSink for Failing {
        fn write_at(&mut self, offset: u64, _data: &[u8]) -> Result<()> {
            Err(crate::Error::TooLarge(format!("no room at {offset}")))
        }
        fn hole(&mut self, _offset: u64, _len: u64) -> Result<()> {
            Ok(())
        }
        fn finish(&mut self, _size: u64) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_writing_threads_error_is_the_cause() {
        let err = write_behind(&mut Failing, |s| {
            for i in 0..1000u64 {
                s.write_at(i, &[1])?;
            }
            s.finish(1000)
        })
        .unwrap_err();
        assert!(err.to_string().contains("no room at 0"), "{err}");
    }
}
