//! The one error type of the image crate.
//!
//! Every variant reads as a sentence an operator can act on: the message says
//! what was wrong with the image or the target, the cause (if any) is kept in
//! `#[source]`.

use std::io;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image is well formed but unsafe or not allowed: a qcow2 backing
    /// file, a polyglot, a format outside the permitted list, ...
    #[error("image refused: {0}")]
    Refused(String),
    /// The image claims to be a format but its structures are broken:
    /// truncated tables, offsets past the end of the file, ...
    #[error("image is corrupt: {0}")]
    Corrupt(String),
    /// The image uses a feature this code does not implement.
    #[error("unsupported image: {0}")]
    Unsupported(String),
    /// The data read does not have the checksum the operator gave.
    #[error("{algorithm} checksum mismatch: expected {expected}, got {actual}")]
    ChecksumMismatch {
        algorithm: &'static str,
        expected: String,
        actual: String,
    },
    /// The image (or what it expands to) does not fit where it must go.
    #[error("image too large: {0}")]
    TooLarge(String),
    /// A caller-supplied argument is wrong: a malformed checksum, a bad
    /// config drive dict, a target that is mounted, ...
    #[error("{0}")]
    Invalid(String),
    /// An I/O error, with what was being done when it happened.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Adds context to `io::Result`s: `file.read_exact(&mut buf).context("reading the qcow2 header")?`.
pub trait IoContext<T> {
    fn context(self, context: impl Into<String>) -> Result<T>;
    fn with_context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::io(context, source))
    }

    fn with_context<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|source| Error::io(context(), source))
    }
}
