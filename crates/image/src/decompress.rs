//! Decompression inside the stream: gzip, zstd, xz and bzip2, detected by
//! their magic numbers, with bounded memory.
//!
//! Memory stays bounded whatever the input claims: zstd's window is capped at
//! 128 MiB and xz's decoder at 256 MiB of dictionary and state. Output size is
//! bounded by the caller with [`Limited`], which turns a decompression bomb
//! into [`Error::TooLarge`] as soon as it crosses the limit.

use std::io::{self, Chain, Cursor, Read};

use crate::error::{Error, IoContext, Result};

/// The largest zstd window accepted (2^27 = 128 MiB, zstd's own default cap).
const ZSTD_WINDOW_LOG_MAX: u32 = 27;
/// The most memory the xz decoder may use.
const XZ_MEMORY_LIMIT: u64 = 256 << 20;
/// How many leading bytes [`detect`] looks at.
pub const MAGIC_LEN: usize = 6;

/// A compression wrapper around an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Xz,
    Bzip2,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::Bzip2 => "bzip2",
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Recognises a compressed stream from its first bytes.
pub fn detect(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Compression::Xz
    } else if head.len() >= 4 && head.starts_with(b"BZh") && (b'1'..=b'9').contains(&head[3]) {
        Compression::Bzip2
    } else {
        Compression::None
    }
}

/// A reader whose first bytes were read ahead and are served again.
pub type Peeked<R> = Chain<Cursor<Vec<u8>>, R>;

/// Reads up to `len` bytes ahead of `reader` (fewer at the end of the stream)
/// and returns them with a reader that yields the whole stream again.
pub fn peek<R: Read>(mut reader: R, len: usize) -> Result<(Vec<u8>, Peeked<R>)> {
    let mut head = vec![0; len];
    let filled = crate::bmap::fill(&mut reader, &mut head)?;
    head.truncate(filled);
    Ok((head.clone(), Cursor::new(head).chain(reader)))
}

/// Wraps `reader` in the decoder for `compression`.
pub fn decoder<'a, R: Read + Send + 'a>(
    reader: R,
    compression: Compression,
) -> Result<Box<dyn Read + Send + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(Named::new(
            flate2::read::MultiGzDecoder::new(reader),
            compression,
        )),
        Compression::Zstd => {
            let mut decoder =
                zstd::stream::read::Decoder::new(reader).context("starting the zstd decoder")?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .context("limiting the zstd window")?;
            Box::new(Named::new(decoder, compression))
        }
        Compression::Xz => {
            let stream = liblzma::stream::Stream::new_stream_decoder(
                XZ_MEMORY_LIMIT,
                liblzma::stream::CONCATENATED,
            )
            .map_err(|e| Error::io("starting the xz decoder", e.into()))?;
            Box::new(Named::new(
                liblzma::read::XzDecoder::new_stream(reader, stream),
                compression,
            ))
        }
        Compression::Bzip2 => Box::new(Named::new(
            bzip2::read::MultiBzDecoder::new(reader),
            compression,
        )),
    })
}

/// Detects the compression of `reader` by its magic number and returns the
/// decompressed stream with the compression found.
pub fn open<'a, R: Read + Send + 'a>(
    reader: R,
) -> Result<(Compression, Box<dyn Read + Send + 'a>)> {
    let (head, reader) = peek(reader, MAGIC_LEN)?;
    let compression = detect(&head);
    Ok((compression, decoder(reader, compression)?))
}

/// Names the compression in a decoder's I/O errors, so "corrupt deflate
/// stream" reads as "corrupt gzip data: corrupt deflate stream".
struct Named<R> {
    inner: R,
    compression: Compression,
}

impl<R> Named<R> {
    fn new(inner: R, compression: Compression) -> Self {
        Named { inner, compression }
    }
}

impl<R: Read> Read for Named<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::Interrupted {
                e
            } else {
                io::Error::new(
                    e.kind(),
                    format!("corrupt or truncated {} data: {e}", self.compression),
                )
            }
        })
    }
}

/// A reader that fails once more than `limit` bytes come out of it.
///
/// Put it after the decoder: a gzip of zeros that expands past the target's
/// size stops there, after reading at most `limit + 1` bytes.
pub struct Limited<R> {
    inner: R,
    limit: u64,
    read: u64,
    what: &'static str,
}

impl<R> Limited<R> {
    /// `what` names the limit in the error, e.g. "the target disk's size".
    pub fn new(inner: R, limit: u64, what: &'static str) -> Self {
        Limited {
            inner,
            limit,
            read: 0,
            what,
        }
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }
}

/// The message [`Limited`] fails with; [`is_too_large`] finds it again.
#[derive(Debug)]
struct LimitExceeded(String);

impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LimitExceeded {}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Ask for one byte more than allowed so that reaching the limit
        // exactly is fine and crossing it is seen.
        let room = (self.limit - self.read.min(self.limit)).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(io::Error::other(LimitExceeded(limit_message(
                self.limit, self.what,
            ))));
        }
        Ok(n)
    }
}

fn limit_message(limit: u64, what: &str) -> String {
    format!("the image expands to more than {limit} bytes, {what}")
}

/// The error of a [`Limited`] reader, for code that counts bytes itself.
pub fn limit_exceeded(limit: u64, what: &str) -> Error {
    Error::TooLarge(limit_message(limit, what))
}

/// Turns the I/O error of a read through [`Limited`] into [`Error::TooLarge`]
/// when that is what it is, or into an [`Error::Io`] with `context`.
pub fn read_error(context: &str, error: io::Error) -> Error {
    if let Some(limit) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<LimitExceeded>())
    {
        return Error::TooLarge(limit.0.clone());
    }
    Error::io(context, error)
}

/// Whether `error` came from a [`Limited`] reader crossing its limit.
pub fn is_too_large(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<LimitExceeded>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn roundtrip(compression: Compression, data: &[u8]) -> Vec<u8> {
        let compressed = match compression {
            Compression::None => data.to_vec(),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(data, 3).unwrap(),
            Compression::Xz => {
                let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Bzip2 => {
                let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
        };
        assert_eq!(detect(&compressed), compression);
        let (found, mut reader) = open(Cursor::new(compressed)).unwrap();
        assert_eq!(found, compression);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn every_compression_round_trips() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Zstd,
            Compression::Xz,
            Compression::Bzip2,
        ] {
            assert_eq!(roundtrip(c, &data), data, "{c}");
        }
    }

    #[test]
    fn short_streams_are_raw() {
        assert_eq!(roundtrip(Compression::None, b"ab"), b"ab");
        assert_eq!(roundtrip(Compression::None, b""), b"");
    }

    #[test]
    fn limit_stops_a_bomb() {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&vec![0; 64 << 20]).unwrap();
        let bomb = e.finish().unwrap();
        assert!(bomb.len() < 1 << 20);
        let (_, reader) = open(Cursor::new(bomb)).unwrap();
        let mut limited = Limited::new(reader, 1 << 20, "the target's size");
        let err = io::copy(&mut limited, &mut io::sink()).unwrap_err();
        assert!(is_too_large(&err));
        let err = read_error("decompressing", err);
        assert!(matches!(err, Error::TooLarge(_)), "{err}");
        assert!(limited.bytes_read() <= (1 << 20) + 1);
    }

    #[test]
    fn exact_limit_is_fine() {
        let mut limited = Limited::new(Cursor::new(vec![1; 1000]), 1000, "x");
        assert_eq!(io::copy(&mut limited, &mut io::sink()).unwrap(), 1000);
    }

    #[test]
    fn corrupt_data_names_the_compression() {
        let mut data = roundtrip_bytes();
        let len = data.len();
        data.truncate(len / 2);
        let (_, mut reader) = open(Cursor::new(data)).unwrap();
        let err = reader.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("gzip"), "{err}");
    }

    fn roundtrip_bytes() -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 13 % 255) as u8).collect();
        e.write_all(&data).unwrap();
        e.finish().unwrap()
    }
}
