//! Config drives: the OpenStack `config-2` layout that cloud-init, Ignition
//! and Glean read at first boot.
//!
//! Ironic takes a config drive in the provision request either as a
//! gzip+base64 string of a ready image or as a dict
//! `{meta_data, network_data, user_data, vendor_data}` that the server turns
//! into an ISO9660 image (openstacksdk's `openstack/baremetal/configdrive.py`,
//! called from Ironic's `conductor/configdrive_utils.py`). This module does
//! both halves: [`ConfigDrive`] builds the files and the image
//! ([`ConfigDrive::write_iso`], [`ConfigDrive::write_vfat`]), [`encode`] and
//! [`decode`] handle the gzip+base64 wire form sent to the agent.

mod iso;
mod vfat;

use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use serde_json::{Map, Value};

use crate::error::{Error, IoContext, Result};

/// The volume label cloud-init looks for.
pub const LABEL: &str = "config-2";

/// The largest config drive the agent writes: IPA refuses anything above
/// 64 MiB (`MAX_CONFIG_DRIVE_SIZE_MB`) because the partition it carves at
/// the end of the disk is that size. A sensible `max_size` for [`decode`].
pub const MAX_SIZE: u64 = 64 * 1024 * 1024;

/// The metadata versions written, as openstacksdk does: the oldest one
/// cloud-init's OpenStack reader accepts and `latest`.
pub const VERSIONS: [&str; 2] = ["2012-08-10", "latest"];

/// The contents of a config drive, before it becomes an image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigDrive {
    /// `meta_data.json`: always written (Ironic fills `uuid` and `name`).
    pub meta_data: Map<String, Value>,
    /// `user_data`, written as is. Binary is allowed (cloud-init accepts
    /// gzip, MIME multipart, ...). Absent or empty: no file.
    pub user_data: Option<Vec<u8>>,
    /// `network_data.json`. Absent, null or empty: no file.
    pub network_data: Option<Value>,
    /// `vendor_data2.json`. Absent, null or empty: no file.
    pub vendor_data: Option<Value>,
}

/// Whether Python would take the value as true: openstacksdk writes
/// `network_data` and `vendor_data` only `if network_data:`, so `{}` gives
/// no file at all.
fn is_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// The JSON type name for error messages, in the words of the API schema.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn to_json(value: &Value) -> Vec<u8> {
    // Serialising a `Value` cannot fail: its keys are strings and it holds
    // no non-finite floats.
    serde_json::to_vec(value).unwrap_or_default()
}

impl ConfigDrive {
    /// Ironic's dict form, checked against the same schema as Ironic's API
    /// (`_CONFIG_DRIVE_SCHEMA`): an object with at most `meta_data`,
    /// `network_data`, `vendor_data` (objects) and `user_data` (an object, an
    /// array, a string or null). A `user_data` object or array becomes its
    /// JSON text, as Ironic's `jsonutils.dump_as_bytes` does; a string
    /// becomes its UTF-8 bytes.
    pub fn from_ironic_dict(dict: &Value) -> Result<Self> {
        let Value::Object(dict) = dict else {
            return Err(Error::Invalid(format!(
                "config drive must be an object with meta_data, network_data, user_data and \
                 vendor_data, or a gzip+base64 string; got {}",
                json_type(dict)
            )));
        };
        let mut drive = ConfigDrive::default();
        for (key, value) in dict {
            match key.as_str() {
                "meta_data" => match value {
                    Value::Object(meta_data) => drive.meta_data = meta_data.clone(),
                    other => return Err(not_an_object("meta_data", other)),
                },
                "network_data" => match value {
                    Value::Object(_) => drive.network_data = Some(value.clone()),
                    other => return Err(not_an_object("network_data", other)),
                },
                "vendor_data" => match value {
                    Value::Object(_) => drive.vendor_data = Some(value.clone()),
                    other => return Err(not_an_object("vendor_data", other)),
                },
                "user_data" => {
                    drive.user_data = match value {
                        Value::Null => None,
                        Value::String(text) if text.is_empty() => None,
                        Value::String(text) => Some(text.as_bytes().to_vec()),
                        Value::Object(_) | Value::Array(_) => Some(to_json(value)),
                        other => {
                            return Err(Error::Invalid(format!(
                                "config drive user_data must be a string, an object, an array \
                                 or null; got {}",
                                json_type(other)
                            )))
                        }
                    }
                }
                other => {
                    return Err(Error::Invalid(format!(
                        "config drive has an unknown key {other:?}; allowed keys are meta_data, \
                         network_data, user_data and vendor_data"
                    )))
                }
            }
        }
        Ok(drive)
    }

    /// Fills `meta_data` defaults as Ironic's `build_configdrive` does: `uuid`
    /// is the node's UUID and `name` the node's name (only if it has one),
    /// unless the caller already set them.
    pub fn with_node_defaults(mut self, node_uuid: &str, node_name: Option<&str>) -> Self {
        self.meta_data
            .entry("uuid")
            .or_insert_with(|| Value::String(node_uuid.to_owned()));
        if let Some(name) = node_name.filter(|name| !name.is_empty()) {
            self.meta_data
                .entry("name")
                .or_insert_with(|| Value::String(name.to_owned()));
        }
        self
    }

    /// The files of the OpenStack `config-2` layout, as (path, bytes) sorted
    /// by path: `openstack/<version>/meta_data.json`, `user_data`,
    /// `network_data.json` and `vendor_data2.json` for every version in
    /// [`VERSIONS`]. The vendor data file is `vendor_data2.json` because
    /// that is the name openstacksdk writes and cloud-init reads for
    /// dynamic vendor data.
    pub fn files(&self) -> Vec<(String, Vec<u8>)> {
        let meta_data = to_json(&Value::Object(self.meta_data.clone()));
        let network_data = self.network_data.as_ref().filter(|v| is_truthy(v));
        let vendor_data = self.vendor_data.as_ref().filter(|v| is_truthy(v));
        let user_data = self.user_data.as_ref().filter(|u| !u.is_empty());

        let mut files = Vec::new();
        for version in VERSIONS {
            let dir = format!("openstack/{version}");
            files.push((format!("{dir}/meta_data.json"), meta_data.clone()));
            if let Some(network_data) = network_data {
                files.push((format!("{dir}/network_data.json"), to_json(network_data)));
            }
            if let Some(vendor_data) = vendor_data {
                files.push((format!("{dir}/vendor_data2.json"), to_json(vendor_data)));
            }
            if let Some(user_data) = user_data {
                files.push((format!("{dir}/user_data"), user_data.clone()));
            }
        }
        files.sort();
        files
    }

    /// Writes an ISO9660 image with Joliet and Rock Ridge and the volume
    /// label `config-2` (as genisoimage does for Ironic), from offset 0 of
    /// `out`. Returns its size in bytes. Refuses (`TooLarge`) an image
    /// above [`MAX_SIZE`], which the agent would refuse to write.
    pub fn write_iso<W: Write + Seek>(&self, out: &mut W) -> Result<u64> {
        let files = self.files();
        // Refuse early, before the image is built in memory.
        check_size(files.iter().map(|(_, bytes)| bytes.len() as u64).sum())?;
        let image = iso::build(&Tree::from_files(files))?;
        check_size(image.len() as u64)?;
        out.seek(std::io::SeekFrom::Start(0))
            .context("seeking to the start of the config drive")?;
        out.write_all(&image)
            .context("writing the config drive ISO image")?;
        out.flush().context("flushing the config drive ISO image")?;
        Ok(image.len() as u64)
    }

    /// Writes a VFAT image labelled `CONFIG-2` (FAT upper-cases labels;
    /// cloud-init matches the label case-insensitively) from offset 0 of
    /// `out`. The volume is sized to the files with some headroom. Returns
    /// its size in bytes; refuses (`TooLarge`) above [`MAX_SIZE`].
    pub fn write_vfat<W: Read + Write + Seek>(&self, out: &mut W) -> Result<u64> {
        vfat::write(&Tree::from_files(self.files()), out)
    }
}

fn not_an_object(key: &str, value: &Value) -> Error {
    Error::Invalid(format!(
        "config drive {key} must be an object; got {}",
        json_type(value)
    ))
}

fn check_size(size: u64) -> Result<()> {
    if size > MAX_SIZE {
        return Err(Error::TooLarge(format!(
            "the config drive would be {size} bytes; the agent accepts at most {MAX_SIZE} bytes \
             (64 MiB): make user_data smaller"
        )));
    }
    Ok(())
}

/// A directory tree built from the sorted file list, shared by the ISO and
/// VFAT writers.
#[derive(Debug, Default)]
struct Tree {
    dirs: BTreeMap<String, Tree>,
    files: BTreeMap<String, Vec<u8>>,
}

impl Tree {
    fn from_files(files: Vec<(String, Vec<u8>)>) -> Self {
        let mut root = Tree::default();
        for (path, contents) in files {
            let mut parts: Vec<&str> = path.split('/').collect();
            let Some(name) = parts.pop() else { continue };
            let mut dir = &mut root;
            for part in parts {
                dir = dir.dirs.entry(part.to_owned()).or_default();
            }
            dir.files.insert(name.to_owned(), contents);
        }
        root
    }

    /// The number of directories below this one, for sizing.
    fn dir_count(&self) -> u64 {
        self.dirs.values().map(|d| 1 + d.dir_count()).sum()
    }

    /// The sizes of all files below this one, for sizing.
    fn file_sizes(&self) -> Vec<u64> {
        let mut sizes: Vec<u64> = self.files.values().map(|f| f.len() as u64).collect();
        for dir in self.dirs.values() {
            sizes.extend(dir.file_sizes());
        }
        sizes
    }
}

/// gzip + base64 (standard alphabet, padded, no line breaks), as Ironic
/// sends config drives to the agent.
pub fn encode(image: &[u8]) -> String {
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let compressed = gz
        .write_all(image)
        .and_then(|()| gz.finish())
        .unwrap_or_default();
    base64::engine::general_purpose::STANDARD.encode(compressed)
}

/// Lenient like Python's `base64.b64decode`, which IPA uses: missing padding
/// and non-zero trailing bits are accepted.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes the gzip+base64 form into the image.
///
/// Like IPA (`partition_utils.get_configdrive`): the image must be gzipped
/// (IPA does not accept a plain base64 image), concatenated gzip members are
/// joined, and whitespace and line breaks in the base64 text are ignored.
/// Unlike Python's `b64decode`, other characters outside the base64 alphabet
/// are refused instead of silently dropped, so URL-safe base64 gives an
/// error rather than a corrupt image. URLs are the caller's business.
///
/// Refuses (`TooLarge`) an image that decompresses to more than `max_size`
/// bytes, stopping as soon as it passes the limit: never more than
/// `max_size + 1` bytes are held, so a gzip bomb costs little memory or time.
pub fn decode(text: &str, max_size: u64) -> Result<Vec<u8>> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(Error::Invalid(
            "the config drive is empty; expected a gzip+base64 string".to_owned(),
        ));
    }
    if trimmed.contains("://") {
        return Err(Error::Invalid(
            "the config drive is a URL, not gzip+base64 data; download it first".to_owned(),
        ));
    }
    let mut compact = Vec::with_capacity(trimmed.len());
    for (offset, byte) in trimmed.bytes().enumerate() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' | b'=' => compact.push(byte),
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ => {
                return Err(Error::Invalid(format!(
                    "the config drive is not base64: unexpected character at offset {offset} \
                     (only A-Z, a-z, 0-9, '+', '/', '=' and whitespace are allowed)"
                )))
            }
        }
    }
    let compressed = LENIENT
        .decode(&compact)
        .map_err(|err| Error::Invalid(format!("the config drive is not valid base64: {err}")))?;
    if !compressed.starts_with(&[0x1f, 0x8b]) {
        return Err(Error::Invalid(
            "the config drive is base64 but not gzip-compressed; Ironic sends gzip+base64"
                .to_owned(),
        ));
    }
    gunzip_limited(&compressed, max_size)
}

/// Decompresses, holding at most `max_size + 1` bytes: the buffer grows by
/// doubling but never past the limit, so the allocation is bounded too.
fn gunzip_limited(compressed: &[u8], max_size: u64) -> Result<Vec<u8>> {
    let limit = usize::try_from(max_size.saturating_add(1)).unwrap_or(usize::MAX);
    let mut decoder = MultiGzDecoder::new(compressed);
    let mut out: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let read = decoder.read(&mut chunk).map_err(|err| {
            Error::Invalid(format!(
                "the config drive is not valid gzip data: {err} (after {} decompressed bytes)",
                out.len()
            ))
        })?;
        if read == 0 {
            return Ok(out);
        }
        let keep = read.min(limit - out.len());
        if out.capacity() - out.len() < keep {
            let wanted = (out.len() + keep).max(out.capacity().saturating_mul(2));
            out.reserve_exact(wanted.min(limit) - out.len());
        }
        out.extend_from_slice(&chunk[..keep]);
        if out.len() as u64 > max_size {
            return Err(Error::TooLarge(format!(
                "the config drive decompresses to more than {max_size} bytes; refused"
            )));
        }
    }
}
