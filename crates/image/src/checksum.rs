//! Image checksums: md5 (which an operator can forbid), sha256 and sha512.
//!
//! A checksum is given as a hex value, optionally prefixed with its algorithm
//! (`sha256:ab12...`), or as the URL of a checksum file (`<hex>  <name>`
//! lines, as sha256sum writes them, or BSD `SHA256 (name) = <hex>` lines).
//! The algorithm comes from the caller, the prefix, or the length of the hex.
//! Hashing happens in the same pass that writes the data: [`HashingReader`]
//! hashes whatever flows through it.

use std::io::{self, Read};

use md5::Md5;
use sha2::{Digest, Sha256, Sha512};

use crate::error::{Error, Result};

/// A checksum algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// The length of a digest in hex digits.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Md5 => 32,
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    /// By name, as Ironic's `image_os_hash_algo` spells it.
    pub fn from_name(name: &str) -> Result<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "md5" => Ok(Algorithm::Md5),
            "sha256" => Ok(Algorithm::Sha256),
            "sha512" => Ok(Algorithm::Sha512),
            other => Err(Error::Invalid(format!(
                "unsupported checksum algorithm {other:?}; use md5, sha256 or sha512"
            ))),
        }
    }

    /// From the length of a hex digest.
    pub fn from_hex_len(len: usize) -> Option<Self> {
        [Algorithm::Md5, Algorithm::Sha256, Algorithm::Sha512]
            .into_iter()
            .find(|a| a.hex_len() == len)
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An expected checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    pub algorithm: Algorithm,
    /// Lower-case hex.
    pub hex: String,
}

/// Whether a checksum value is the URL of a checksum file rather than a digest.
pub fn is_url(value: &str) -> bool {
    let value = value.trim();
    ["http://", "https://", "file://"].iter().any(|scheme| {
        value.len() > scheme.len() && value[..scheme.len()].eq_ignore_ascii_case(scheme)
    })
}

impl Checksum {
    /// Parses a digest: `hex` or `algo:hex`; `algorithm` (e.g. from
    /// `image_os_hash_algo`) wins over the length of the hex. md5 is refused
    /// unless `allow_md5`.
    pub fn parse(value: &str, algorithm: Option<&str>, allow_md5: bool) -> Result<Self> {
        let value = value.trim();
        let (prefix, hex) = match value.split_once(':') {
            Some((prefix, hex)) if !is_url(value) => (Some(prefix), hex),
            _ => (None, value),
        };
        if is_url(value) {
            return Err(Error::Invalid(format!(
                "checksum {value:?} is a URL; fetch the checksum file and use Checksum::from_checksum_file"
            )));
        }
        let hex = hex.trim().to_ascii_lowercase();
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Invalid(format!(
                "checksum {value:?} is not a hexadecimal digest"
            )));
        }
        let algorithm = match algorithm.or(prefix) {
            Some(name) => Algorithm::from_name(name)?,
            None => Algorithm::from_hex_len(hex.len()).ok_or_else(|| {
                Error::Invalid(format!(
                    "cannot tell the algorithm of a {}-digit checksum; expected 32 (md5), 64 (sha256) or 128 (sha512) digits",
                    hex.len()
                ))
            })?,
        };
        if hex.len() != algorithm.hex_len() {
            return Err(Error::Invalid(format!(
                "a {algorithm} checksum has {} hex digits, not {}",
                algorithm.hex_len(),
                hex.len()
            )));
        }
        if algorithm == Algorithm::Md5 && !allow_md5 {
            return Err(Error::Invalid(
                "md5 checksums are disabled on this server; give a sha256 or sha512 checksum"
                    .into(),
            ));
        }
        Ok(Checksum { algorithm, hex })
    }

    /// Picks the line for `image_name` (a file name or URL: its last path
    /// segment is compared) out of a checksum file. A file holding a single
    /// digest and nothing else is accepted too.
    pub fn from_checksum_file(
        text: &str,
        image_name: &str,
        algorithm: Option<&str>,
        allow_md5: bool,
    ) -> Result<Self> {
        let wanted = basename(image_name);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        if let [only] = lines.as_slice() {
            if !only.contains(char::is_whitespace) {
                return Self::parse(only, algorithm, allow_md5);
            }
        }
        for line in &lines {
            if let Some((name, digest)) = parse_bsd_line(line) {
                if basename(name) == wanted {
                    return Self::parse(digest, algorithm, allow_md5);
                }
                continue;
            }
            let Some((digest, name)) = line.split_once(char::is_whitespace) else {
                continue;
            };
            // sha256sum marks binary mode with '*' before the name.
            let name = name.trim_start().trim_start_matches('*');
            if basename(name) == wanted {
                return Self::parse(digest, algorithm, allow_md5);
            }
        }
        Err(Error::Invalid(format!(
            "the checksum file has no line for {wanted:?}"
        )))
    }

    /// Checks a computed digest against this one.
    pub fn verify(&self, actual: &Digested) -> Result<()> {
        if actual.algorithm != self.algorithm || actual.hex != self.hex {
            return Err(Error::ChecksumMismatch {
                algorithm: self.algorithm.name(),
                expected: self.hex.clone(),
                actual: actual.hex.clone(),
            });
        }
        Ok(())
    }
}

fn basename(name: &str) -> &str {
    let name = name.split(['?', '#']).next().unwrap_or(name);
    name.rsplit('/').next().unwrap_or(name)
}

/// `SHA256 (name) = hex`
fn parse_bsd_line(line: &str) -> Option<(&str, &str)> {
    let (_algo, rest) = line.split_once(" (")?;
    let (name, digest) = rest.rsplit_once(") = ")?;
    Some((name, digest))
}

/// A computed digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digested {
    pub algorithm: Algorithm,
    pub hex: String,
}

/// A running hash of one of the supported algorithms.
#[derive(Clone)]
pub enum Hasher {
    Md5(Md5),
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Md5 => Hasher::Md5(Md5::new()),
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Digested {
        let (algorithm, bytes) = match self {
            Hasher::Md5(h) => (Algorithm::Md5, h.finalize().to_vec()),
            Hasher::Sha256(h) => (Algorithm::Sha256, h.finalize().to_vec()),
            Hasher::Sha512(h) => (Algorithm::Sha512, h.finalize().to_vec()),
        };
        Digested {
            algorithm,
            hex: to_hex(&bytes),
        }
    }
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// The sha256 of `data` in hex.
pub fn sha256_hex(data: &[u8]) -> String {
    to_hex(&Sha256::digest(data))
}

/// Hashes everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Option<Hasher>,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    /// `algorithm` None counts bytes without hashing.
    pub fn new(inner: R, algorithm: Option<Algorithm>) -> Self {
        HashingReader {
            inner,
            hasher: algorithm.map(Hasher::new),
            bytes: 0,
        }
    }

    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }

    /// The digest of what was read, or None when nothing was hashed.
    pub fn finish(self) -> Option<Digested> {
        self.hasher.map(Hasher::finish)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&buf[..n]);
        }
        self.bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA256_ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn algorithm_from_length_prefix_or_name() {
        let c = Checksum::parse(SHA256_ABC, None, false).unwrap();
        assert_eq!(c.algorithm, Algorithm::Sha256);
        let c = Checksum::parse(
            &format!("SHA256:{}", SHA256_ABC.to_uppercase()),
            None,
            false,
        )
        .unwrap();
        assert_eq!(c.hex, SHA256_ABC);
        let md5 = "900150983cd24fb0d6963f7d28e17f72";
        assert_eq!(
            Checksum::parse(md5, None, true).unwrap().algorithm,
            Algorithm::Md5
        );
        let err = Checksum::parse(md5, None, false).unwrap_err();
        assert!(
            err.to_string().contains("md5 checksums are disabled"),
            "{err}"
        );
        let err = Checksum::parse(md5, Some("sha256"), true).unwrap_err();
        assert!(err.to_string().contains("64 hex digits"), "{err}");
        let err = Checksum::parse("abc", None, true).unwrap_err();
        assert!(err.to_string().contains("3-digit"), "{err}");
        let err = Checksum::parse("zz", None, true).unwrap_err();
        assert!(err.to_string().contains("not a hexadecimal"), "{err}");
        let err = Checksum::parse(SHA256_ABC, Some("sha1"), true).unwrap_err();
        assert!(
            err.to_string().contains("unsupported checksum algorithm"),
            "{err}"
        );
        assert!(Checksum::parse("https://x/SHA256SUMS", None, true).is_err());
    }

    #[test]
    fn checksum_files() {
        let other = "a".repeat(64);
        let text = format!("{other}  other.img\n{SHA256_ABC} *disk.qcow2\n");
        let c = Checksum::from_checksum_file(&text, "http://h/images/disk.qcow2?x=1", None, false)
            .unwrap();
        assert_eq!(c.hex, SHA256_ABC);
        let bsd = format!("SHA256 (disk.img) = {SHA256_ABC}\n");
        assert_eq!(
            Checksum::from_checksum_file(&bsd, "disk.img", None, false)
                .unwrap()
                .hex,
            SHA256_ABC
        );
        let single = format!("{SHA256_ABC}\n");
        assert!(Checksum::from_checksum_file(&single, "anything", None, false).is_ok());
        let err = Checksum::from_checksum_file(&text, "missing.img", None, false).unwrap_err();
        assert!(
            err.to_string().contains("no line for \"missing.img\""),
            "{err}"
        );
    }

    #[test]
    fn hashing_reader_and_verify() {
        let mut r = HashingReader::new(&b"abc"[..], Some(Algorithm::Sha256));
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert_eq!(r.bytes_read(), 3);
        let digest = r.finish().unwrap();
        let expected = Checksum::parse(SHA256_ABC, None, false).unwrap();
        expected.verify(&digest).unwrap();
        let wrong = Checksum::parse(&"0".repeat(64), None, false).unwrap();
        assert!(matches!(
            wrong.verify(&digest),
            Err(Error::ChecksumMismatch { .. })
        ));
        let mut h = Hasher::new(Algorithm::Sha512);
        h.update(b"abc");
        assert!(h.finish().hex.starts_with("ddaf35a193617aba"));
        let mut h = Hasher::new(Algorithm::Md5);
        h.update(b"abc");
        assert_eq!(h.finish().hex, "900150983cd24fb0d6963f7d28e17f72");
    }
}
