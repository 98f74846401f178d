//! Format detection and safety inspection of disk images.
//!
//! Ironic, through oslo.utils' format inspector, refuses images that would
//! make qemu-img read files other than the image (qcow2 backing and data
//! files, vmdk extents and parents) and images that look like two formats at
//! once (polyglots), which different readers would interpret differently.
//! Ferric does the same, a little more strictly: every image is inspected,
//! including those declared raw, because a "raw" image that is really a qcow2
//! with a backing file is exactly what the check exists to catch.
//!
//! [`inspect_head`] works on the first [`HEAD_LEN`] bytes of a stream,
//! [`inspect`] on a seekable file (it can also read a VHD footer or a VHDX
//! metadata region far from the start). Both run every detector, refuse
//! polyglots and unsafe images, and report the format and virtual size.
//! [`Policy`] then refuses formats the operator did not permit or that do not
//! match the format the image was declared as.

use std::borrow::Cow;
use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::str::FromStr;

use crate::error::{Error, IoContext, Result};

/// A disk image format, by the name Ironic and Glance use for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Raw,
    Qcow2,
    Vmdk,
    Vhd,
    Vhdx,
    Vdi,
    Qed,
    Iso,
    Gpt,
    Mbr,
    Luks,
}

impl Format {
    /// Every format, in the order detectors run and names are listed.
    pub const ALL: [Format; 11] = [
        Format::Raw,
        Format::Qcow2,
        Format::Vmdk,
        Format::Vhd,
        Format::Vhdx,
        Format::Vdi,
        Format::Qed,
        Format::Iso,
        Format::Gpt,
        Format::Mbr,
        Format::Luks,
    ];

    /// The lower-case name: "raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi",
    /// "qed", "iso", "gpt", "mbr", "luks".
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vhd => "vhd",
            Format::Vhdx => "vhdx",
            Format::Vdi => "vdi",
            Format::Qed => "qed",
            Format::Iso => "iso",
            Format::Gpt => "gpt",
            Format::Mbr => "mbr",
            Format::Luks => "luks",
        }
    }

    /// Formats whose bytes are the disk itself (a partition table or a file
    /// system at offset 0), as opposed to a container with its own header.
    fn is_disk_content(self) -> bool {
        matches!(self, Format::Raw | Format::Iso | Format::Gpt | Format::Mbr)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = Error;

    /// Parses a format name, ignoring case. "vpc" (qemu's name for VHD) is
    /// accepted as "vhd".
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        if lower == "vpc" {
            return Ok(Format::Vhd);
        }
        Format::ALL
            .into_iter()
            .find(|format| format.name() == lower)
            .ok_or_else(|| {
                let known: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
                Error::Invalid(format!(
                    "unknown image format {s:?}; known formats are {}",
                    known.join(", ")
                ))
            })
    }
}

/// How many leading bytes [`inspect_head`] wants: enough for the ISO 9660
/// volume descriptors (32 KiB in), the VHDX region table (192 KiB in) and a
/// vmdk descriptor, while staying small enough to hold back in memory.
pub const HEAD_LEN: usize = 1 << 20;

/// What inspection found in an image that passed its safety checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The format the image will be handled as.
    pub format: Format,
    /// The size of the disk the image describes, when it could be read.
    pub virtual_size: Option<u64>,
    /// Other formats the image also matched and that are allowed alongside
    /// `format`: the GPT or MBR of a hybrid ISO, the partition table inside a
    /// fixed VHD. Never a container format.
    pub also_matched: Vec<Format>,
    /// Notes for the logs: versions, features seen, checks that could not be
    /// made from a stream head.
    pub details: Vec<String>,
}

/// Inspects a stream from its first bytes.
///
/// `head` holds the first [`HEAD_LEN`] bytes of the stream (more is fine),
/// or the whole stream when it is shorter; `total_len` is the stream length
/// when known. Unsafe images are refused. What only the end of a file shows
/// (a fixed VHD's footer, a vmdk stream footer, VHDX metadata past the head)
/// is checked only when the head reaches the end; see [`Inspection::details`].
pub fn inspect_head(head: &[u8], total_len: Option<u64>) -> Result<Inspection> {
    let head_len = head.len() as u64;
    let len = match total_len {
        Some(total) if total < head_len => {
            return Err(Error::Invalid(format!(
                "the image head has {head_len} bytes but the image is said to be {total} bytes long"
            )))
        }
        Some(total) if head.len() < HEAD_LEN && total > head_len => {
            return Err(Error::Invalid(format!(
                "inspecting an image needs its first {HEAD_LEN} bytes (or all of it when shorter); \
                 got {head_len} of {total}"
            )))
        }
        Some(total) => Some(total),
        // A short head without a length is the whole stream.
        None if head.len() < HEAD_LEN => Some(head_len),
        None => None,
    };
    inspect_view(&mut View {
        head,
        tail: &[],
        len,
        file: None,
    })
}

/// How many of a stream's last bytes [`inspect_ends`] wants: the largest
/// structure at the end of an image (a backup GPT: 16 KiB of entries and
/// its header, more with 4 KiB sectors).
pub const TAIL_LEN: usize = 64 << 10;

/// Inspects a stream that was read to its end, from its head (as for
/// [`inspect_head`]) and its last bytes: what only the end shows, such as a
/// fixed VHD's footer, is seen too. A raw image written as it streamed is
/// checked this way before it is committed.
pub fn inspect_ends(head: &[u8], tail: &[u8], total_len: u64) -> Result<Inspection> {
    let head = &head[..head.len().min(HEAD_LEN).min(total_len as usize)];
    let tail = &tail[tail.len() - tail.len().min(total_len as usize)..];
    if head.len() < HEAD_LEN && (head.len() as u64) < total_len {
        return Err(Error::Invalid(format!(
            "inspecting an image needs its first {HEAD_LEN} bytes (or all of it when shorter); \
             got {} of {total_len}",
            head.len()
        )));
    }
    inspect_view(&mut View {
        head,
        tail,
        len: Some(total_len),
        file: None,
    })
}

/// Inspects a whole seekable image, reading only what it needs: the head,
/// the VHD footer at the end, VHDX metadata, a vmdk stream footer. Unsafe
/// images are refused. The reader is left at offset 0.
pub fn inspect<R: Read + Seek>(reader: &mut R) -> Result<Inspection> {
    let len = reader
        .seek(SeekFrom::End(0))
        .context("finding the length of the image")?;
    reader
        .seek(SeekFrom::Start(0))
        .context("seeking to the start of the image")?;
    let mut head = vec![0; len.min(HEAD_LEN as u64) as usize];
    reader
        .read_exact(&mut head)
        .context("reading the first bytes of the image")?;
    let inspection = inspect_view(&mut View {
        head: &head,
        tail: &[],
        len: Some(len),
        file: Some(&mut *reader),
    })?;
    reader
        .seek(SeekFrom::Start(0))
        .context("seeking back to the start of the image")?;
    Ok(inspection)
}

/// Which formats an operator accepts, and what the image was declared as.
///
/// Following Ironic's `image_format_permitted` and `image_format_matches`:
/// - GPT and MBR disks are raw disks with a partition table. Permitting raw
///   permits them, and a declared raw image may be detected as gpt or mbr.
///   oslo.utils reports MBR disks as "gpt", so permitting or declaring gpt
///   also covers mbr.
/// - A hybrid ISO (ISO 9660 with a GPT or MBR in its system area) is an ISO:
///   it is permitted when iso is, and matches a declared iso, not a declared
///   raw or gpt (Ironic's `detect_file_format` reports iso+gpt as iso).
/// - Anything else must match exactly: a declared raw image that is qcow2 is
///   refused, whatever is permitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Formats accepted. Default: raw, gpt, qcow2, iso (Ironic's default
    /// `[conductor]permitted_image_formats`).
    pub permitted: Vec<Format>,
    /// The format the image was declared as (Glance `disk_format`, the
    /// `image_disk_format` instance_info field), if any. Default: none.
    pub declared: Option<Format>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            permitted: vec![Format::Raw, Format::Gpt, Format::Qcow2, Format::Iso],
            declared: None,
        }
    }
}

impl Policy {
    /// Refuses an inspected image whose format is not permitted or does not
    /// match the declared format.
    pub fn check(&self, inspection: &Inspection) -> Result<()> {
        let format = inspection.format;
        if !self.permits(format) {
            let permitted: Vec<&str> = self.permitted.iter().map(|f| f.name()).collect();
            return Err(Error::Refused(format!(
                "the image is {format}, which is not among the permitted formats ({})",
                permitted.join(", ")
            )));
        }
        if let Some(declared) = self.declared {
            if !declared_matches(declared, format) {
                return Err(Error::Refused(format!(
                    "the image was declared {declared} but its contents are {format}"
                )));
            }
        }
        Ok(())
    }

    fn permits(&self, format: Format) -> bool {
        let has = |f: Format| self.permitted.contains(&f);
        has(format)
            || (matches!(format, Format::Gpt | Format::Mbr) && has(Format::Raw))
            || (format == Format::Mbr && has(Format::Gpt))
    }
}

fn declared_matches(declared: Format, detected: Format) -> bool {
    declared == detected
        || (declared == Format::Raw && matches!(detected, Format::Gpt | Format::Mbr))
        || (declared == Format::Gpt && detected == Format::Mbr)
}

fn refused(message: impl Into<String>) -> Error {
    Error::Refused(message.into())
}

fn corrupt(message: impl Into<String>) -> Error {
    Error::Corrupt(message.into())
}

/// Renders bytes taken from an image (a file name, a descriptor line) for a
/// message: quoted, escaped, and cut short.
fn quoted(bytes: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]);
    let more = if bytes.len() > MAX { "..." } else { "" };
    format!("{text:?}{more}")
}

trait ReadSeek: Read + Seek {}
impl<T: Read + Seek + ?Sized> ReadSeek for T {}

/// The image as inspection sees it: the head always, the rest only when a
/// file is behind it.
struct View<'a> {
    head: &'a [u8],
    /// The last bytes of a stream read to its end (empty otherwise).
    tail: &'a [u8],
    /// The image length, when known.
    len: Option<u64>,
    file: Option<&'a mut dyn ReadSeek>,
}

impl<'a> View<'a> {
    /// `len` bytes at `offset`; None when they lie past the end of the image
    /// or, for a stream, past its head. `len` is bounded by the callers.
    fn read_at(&mut self, offset: u64, len: usize, what: &str) -> Result<Option<Vec<u8>>> {
        let Some(end) = offset.checked_add(len as u64) else {
            return Ok(None);
        };
        if self.len.is_some_and(|total| end > total) {
            return Ok(None);
        }
        if end <= self.head.len() as u64 {
            return Ok(Some(self.head[offset as usize..end as usize].to_vec()));
        }
        if let Some(total) = self.len {
            let tail_start = total - self.tail.len() as u64;
            if offset >= tail_start {
                let at = (offset - tail_start) as usize;
                return Ok(Some(self.tail[at..at + len].to_vec()));
            }
        }
        let Some(file) = self.file.as_deref_mut() else {
            return Ok(None);
        };
        file.seek(SeekFrom::Start(offset))
            .with_context(|| format!("seeking to the {what}"))?;
        let mut buf = vec![0; len];
        file.read_exact(&mut buf)
            .with_context(|| format!("reading the {what}"))?;
        Ok(Some(buf))
    }

    /// `len` bytes at `offset`; None only when they lie past the head of a
    /// stream. Structures past the end of the image are corrupt.
    fn read_within(&mut self, offset: u64, len: usize, what: &str) -> Result<Option<Vec<u8>>> {
        if let Some(bytes) = self.read_at(offset, len, what)? {
            return Ok(Some(bytes));
        }
        let past_end = match (offset.checked_add(len as u64), self.len) {
            (None, _) => true,
            (Some(end), Some(total)) => end > total,
            (Some(_), None) => false,
        };
        if past_end || self.file.is_some() {
            return Err(corrupt(format!(
                "the {what} lies past the end of the image"
            )));
        }
        Ok(None)
    }

    /// Up to `len` bytes at `offset`, cut at the end of the image; None when
    /// they lie past the head of a stream that goes on.
    fn read_upto(&mut self, offset: u64, len: usize, what: &str) -> Result<Option<Vec<u8>>> {
        let len = match self.len {
            Some(total) => (len as u64).min(total.saturating_sub(offset)) as usize,
            None => len,
        };
        self.read_at(offset, len, what)
    }

    /// The first `len` bytes (fewer when the image is shorter), and whether
    /// that is all of them: false when a stream's head ends first.
    fn prefix(&mut self, len: usize, what: &str) -> Result<(Cow<'a, [u8]>, bool)> {
        let head: &'a [u8] = self.head;
        if len <= head.len() {
            return Ok((Cow::Borrowed(&head[..len]), true));
        }
        match self.read_upto(0, len, what)? {
            Some(bytes) => Ok((Cow::Owned(bytes), true)),
            None => Ok((Cow::Borrowed(head), self.len == Some(head.len() as u64))),
        }
    }

    /// The last `len` bytes, when readable.
    fn tail(&mut self, len: usize, what: &str) -> Result<Option<Vec<u8>>> {
        match self.len {
            Some(total) if total >= len as u64 => self.read_at(total - len as u64, len, what),
            _ => Ok(None),
        }
    }
}

/// Reads fixed-size integers from a header, turning a short header into a
/// clean error.
struct Fields<'b> {
    bytes: &'b [u8],
    what: &'static str,
}

impl<'b> Fields<'b> {
    fn new(bytes: &'b [u8], what: &'static str) -> Self {
        Fields { bytes, what }
    }

    fn array<const N: usize>(&self, at: usize) -> Result<[u8; N]> {
        at.checked_add(N)
            .and_then(|end| self.bytes.get(at..end))
            .and_then(|slice| slice.try_into().ok())
            .ok_or_else(|| corrupt(format!("the {} is truncated", self.what)))
    }

    fn u8(&self, at: usize) -> Result<u8> {
        Ok(self.array::<1>(at)?[0])
    }

    fn be16(&self, at: usize) -> Result<u16> {
        self.array(at).map(u16::from_be_bytes)
    }

    fn be32(&self, at: usize) -> Result<u32> {
        self.array(at).map(u32::from_be_bytes)
    }

    fn be64(&self, at: usize) -> Result<u64> {
        self.array(at).map(u64::from_be_bytes)
    }

    fn le16(&self, at: usize) -> Result<u16> {
        self.array(at).map(u16::from_le_bytes)
    }

    fn le32(&self, at: usize) -> Result<u32> {
        self.array(at).map(u32::from_le_bytes)
    }

    fn le64(&self, at: usize) -> Result<u64> {
        self.array(at).map(u64::from_le_bytes)
    }
}

fn inspect_view(view: &mut View<'_>) -> Result<Inspection> {
    let matches = detect(view)?;
    let vhd_footer_only_at_end = !view.head.starts_with(VHD_COOKIE);
    let (format, also_matched, mut details) = resolve(&matches, vhd_footer_only_at_end)?;
    let virtual_size = match format {
        Format::Raw | Format::Mbr => view.len,
        Format::Gpt => check_gpt(view, &mut details)?,
        Format::Qcow2 => check_qcow2(view, &mut details)?,
        Format::Vmdk => check_vmdk(view, &mut details)?,
        Format::Vhd => check_vhd(view, &mut details)?,
        Format::Vhdx => check_vhdx(view, &mut details)?,
        Format::Vdi => check_vdi(view, &mut details)?,
        Format::Qed => {
            return Err(refused(
                "qed images are refused: the format is deprecated and can name a backing file",
            ))
        }
        Format::Iso => check_iso(view, &mut details)?,
        Format::Luks => check_luks(view, &mut details)?,
    };
    Ok(Inspection {
        format,
        virtual_size,
        also_matched,
        details,
    })
}

const QCOW2_MAGIC: &[u8] = b"QFI\xfb";
const QED_MAGIC: &[u8] = b"QED\0";
const VMDK4_MAGIC: &[u8] = b"KDMV";
const VMDK3_MAGIC: &[u8] = b"COWD";
const VHD_COOKIE: &[u8] = b"conectix";
const VHDX_SIGNATURE: &[u8] = b"vhdxfile";
const VDI_SIGNATURE: [u8; 4] = 0xbeda_107f_u32.to_le_bytes();
const LUKS_MAGIC: &[u8] = b"LUKS\xba\xbe";
const GPT_SIGNATURE: &[u8] = b"EFI PART";
/// ISO 9660 (and UDF) volume descriptors start at sector 16 of 2 KiB.
const ISO_DESCRIPTORS: usize = 16 * 2048;

/// Runs every detector; returns the formats matched, raw excluded.
fn detect(view: &mut View<'_>) -> Result<Vec<Format>> {
    let head = view.head;
    let mut found = Vec::new();
    if head.starts_with(QCOW2_MAGIC) {
        found.push(Format::Qcow2);
    }
    if head.starts_with(VMDK4_MAGIC) || head.starts_with(VMDK3_MAGIC) || is_vmdk_descriptor(head) {
        found.push(Format::Vmdk);
    }
    let vhd = head.starts_with(VHD_COOKIE)
        || view
            .tail(512, "VHD footer")?
            .is_some_and(|footer| footer.starts_with(VHD_COOKIE));
    if vhd {
        found.push(Format::Vhd);
    }
    if head.starts_with(VHDX_SIGNATURE) {
        found.push(Format::Vhdx);
    }
    if head.get(0x40..0x44) == Some(&VDI_SIGNATURE[..]) {
        found.push(Format::Vdi);
    }
    if head.starts_with(QED_MAGIC) {
        found.push(Format::Qed);
    }
    if is_iso(head) {
        found.push(Format::Iso);
    }
    if gpt_header_offset(head).is_some() {
        found.push(Format::Gpt);
    }
    if is_mbr(head) {
        found.push(Format::Mbr);
    }
    if head.starts_with(LUKS_MAGIC) {
        found.push(Format::Luks);
    }
    Ok(found)
}

/// Picks the format from the detectors' matches, refusing polyglots.
///
/// A GPT disk carries a protective MBR, so gpt supersedes mbr. A hybrid ISO
/// carries a GPT or an MBR in its system area: Ironic accepts iso+gpt as iso,
/// and since oslo.utils' "gpt" detector matches any MBR, an isohybrid ISO with
/// only an MBR is accepted as iso too. A fixed VHD is a raw disk with a footer
/// at its end, so it may contain a partition table or an ISO. Any other
/// combination is a polyglot and refused.
fn resolve(
    matches: &[Format],
    vhd_footer_only_at_end: bool,
) -> Result<(Format, Vec<Format>, Vec<String>)> {
    let mut details = Vec::new();
    let mut content: Vec<Format> = matches
        .iter()
        .copied()
        .filter(|f| f.is_disk_content())
        .collect();
    let containers: Vec<Format> = matches
        .iter()
        .copied()
        .filter(|f| !f.is_disk_content())
        .collect();
    if content.contains(&Format::Gpt) && content.contains(&Format::Mbr) {
        content.retain(|f| *f != Format::Mbr);
        details.push("the MBR is the GPT's protective MBR".to_string());
    }
    let fixed_vhd = containers == [Format::Vhd] && vhd_footer_only_at_end;
    if containers.len() > 1 || (containers.len() == 1 && !content.is_empty() && !fixed_vhd) {
        let names: Vec<&str> = matches.iter().map(|f| f.name()).collect();
        return Err(refused(format!(
            "the image matches several formats at once ({}); such polyglot images are refused \
             because each reader would see a different disk",
            names.join(", ")
        )));
    }
    let (disk, also) = match content.as_slice() {
        [] => (Format::Raw, Vec::new()),
        [one] => (*one, Vec::new()),
        [Format::Iso, table] => {
            details.push(format!("hybrid ISO with a {table} partition table"));
            (Format::Iso, vec![*table])
        }
        _ => {
            let names: Vec<&str> = content.iter().map(|f| f.name()).collect();
            return Err(refused(format!(
                "the image matches several formats at once ({}); such polyglot images are refused",
                names.join(", ")
            )));
        }
    };
    match containers.first() {
        Some(&container) => {
            let mut also_matched = Vec::new();
            if disk != Format::Raw {
                also_matched.push(disk);
                details.push(format!("the fixed VHD holds a {disk} disk"));
            }
            also_matched.extend(also);
            Ok((container, also_matched, details))
        }
        None => Ok((disk, also, details)),
    }
}

// ---------------------------------------------------------------- qcow2

use crate::qcow2::{
    INCOMPAT_COMPRESSION_TYPE as QCOW2_INCOMPAT_COMPRESSION,
    INCOMPAT_CORRUPT as QCOW2_INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE as QCOW2_INCOMPAT_DATA_FILE,
    INCOMPAT_DIRTY as QCOW2_INCOMPAT_DIRTY, INCOMPAT_EXTENDED_L2 as QCOW2_INCOMPAT_EXTENDED_L2,
    INCOMPAT_KNOWN as QCOW2_INCOMPAT_KNOWN,
};
const QCOW2_EXT_DATA_FILE: u32 = 0x4441_5441;
const QCOW2_EXT_CRYPTO_HEADER: u32 = 0x0537_be77;
/// qemu's limit on the active L1 table (QCOW_MAX_L1_SIZE).
const QCOW2_MAX_L1_BYTES: u64 = 32 << 20;
/// qemu refuses backing file names longer than this.
const QCOW2_MAX_BACKING_NAME: u32 = 1023;

/// Checks a qcow2 header (docs/interop/qcow2.txt in QEMU).
///
/// The "corrupt" incompatible bit is refused as corrupt: qemu sets it when it
/// found its own metadata inconsistent (overlapping clusters, bad offsets),
/// so a converter could read other clusters' data as the guest's; the
/// operator can repair the image with `qemu-img check -r all`. The "dirty"
/// bit only means refcounts may be stale, which reading does not depend on.
fn check_qcow2(view: &mut View<'_>, details: &mut Vec<String>) -> Result<Option<u64>> {
    let h = Fields::new(view.head, "qcow2 header");
    let version = h.be32(4)?;
    if version != 2 && version != 3 {
        return Err(refused(format!(
            "qcow2 version {version} is refused: only versions 2 and 3 are accepted"
        )));
    }
    let backing_offset = h.be64(8)?;
    let backing_len = h.be32(16)?;
    let cluster_bits = h.be32(20)?;
    let size = h.be64(24)?;
    let crypt_method = h.be32(32)?;
    let l1_size = h.be32(36)?;
    let l1_offset = h.be64(40)?;
    if !(9..=21).contains(&cluster_bits) {
        return Err(corrupt(format!(
            "qcow2 cluster_bits is {cluster_bits}; it must be between 9 and 21"
        )));
    }
    let cluster_size = 1u64 << cluster_bits;
    let (incompatible, header_length, compression_type) = if version == 3 {
        let incompatible = h.be64(72)?;
        let refcount_order = h.be32(96)?;
        let header_length = h.be32(100)?;
        if header_length < 104 || header_length % 8 != 0 || u64::from(header_length) > cluster_size
        {
            return Err(corrupt(format!(
                "qcow2 header_length is {header_length}; it must be a multiple of 8 \
                 between 104 and the cluster size {cluster_size}"
            )));
        }
        if refcount_order > 6 {
            return Err(corrupt(format!(
                "qcow2 refcount_order is {refcount_order}; it must be at most 6"
            )));
        }
        let compression_type = if header_length > 104 { h.u8(104)? } else { 0 };
        (incompatible, header_length, compression_type)
    } else {
        (0, 72, 0)
    };

    if backing_offset != 0 {
        let name = match view.read_at(
            backing_offset,
            backing_len.min(QCOW2_MAX_BACKING_NAME) as usize,
            "qcow2 backing file name",
        )? {
            Some(name) => quoted(&name),
            None => format!("its name at offset {backing_offset} was not read"),
        };
        return Err(refused(format!(
            "qcow2 image has a backing file ({name}); backing files are refused"
        )));
    }

    let extensions = qcow2_extensions(view, u64::from(header_length), cluster_size)?;
    if incompatible & QCOW2_INCOMPAT_DATA_FILE != 0 || extensions.data_file.is_some() {
        let name = extensions
            .data_file
            .unwrap_or_else(|| "no name recorded".to_string());
        return Err(refused(format!(
            "qcow2 image keeps its data in an external data file ({name}); external data files are refused"
        )));
    }
    let unknown = incompatible & !QCOW2_INCOMPAT_KNOWN;
    if unknown != 0 {
        return Err(refused(format!(
            "qcow2 image uses incompatible features unknown to this inspector (bits {unknown:#x}); \
             such images are refused"
        )));
    }
    if incompatible & QCOW2_INCOMPAT_CORRUPT != 0 {
        return Err(corrupt(
            "qcow2 image is marked corrupt by qemu; repair it with `qemu-img check -r all` and upload it again",
        ));
    }
    if crypt_method != 0 || extensions.crypto_header {
        return Err(refused(format!(
            "qcow2 image is encrypted (crypt_method {crypt_method}); encrypted images are refused"
        )));
    }
    let compression_bit = incompatible & QCOW2_INCOMPAT_COMPRESSION != 0;
    match (compression_bit, compression_type) {
        (_, 0) => {}
        (true, 1) => details.push("qcow2 clusters are compressed with zstd".to_string()),
        (false, kind) => {
            return Err(corrupt(format!(
                "qcow2 compression type is {kind} but the compression type feature bit is not set"
            )))
        }
        (true, kind) => {
            return Err(refused(format!(
                "qcow2 compression type {kind} is unknown; such images are refused"
            )))
        }
    }
    if incompatible & QCOW2_INCOMPAT_DIRTY != 0 {
        details.push("qcow2 image is marked dirty (refcounts may be stale)".to_string());
    }
    let extended_l2 = incompatible & QCOW2_INCOMPAT_EXTENDED_L2 != 0;
    if extended_l2 {
        details.push("qcow2 image uses extended L2 entries (subclusters)".to_string());
    }

    if size > i64::MAX as u64 {
        return Err(corrupt(format!("qcow2 virtual size {size} overflows")));
    }
    let l2_entry_size = if extended_l2 { 16 } else { 8 };
    let bytes_per_l1_entry = u128::from(cluster_size) * u128::from(cluster_size / l2_entry_size);
    let l1_needed = u128::from(size).div_ceil(bytes_per_l1_entry);
    if u128::from(l1_size) < l1_needed {
        return Err(corrupt(format!(
            "qcow2 L1 table has {l1_size} entries, too few for the virtual size {size}"
        )));
    }
    if u64::from(l1_size) * 8 > QCOW2_MAX_L1_BYTES {
        return Err(corrupt(format!(
            "qcow2 L1 table has {l1_size} entries, more than qemu accepts"
        )));
    }
    if l1_size != 0 && l1_offset % cluster_size != 0 {
        return Err(corrupt(format!(
            "qcow2 L1 table offset {l1_offset} is not aligned to the cluster size {cluster_size}"
        )));
    }
    details.push(format!(
        "qcow2 version {version}, cluster size {cluster_size}"
    ));
    Ok(Some(size))
}

struct Qcow2Extensions {
    data_file: Option<String>,
    crypto_header: bool,
}

/// Walks the header extensions between the header and the end of the first
/// cluster.
fn qcow2_extensions(view: &mut View<'_>, start: u64, cluster_size: u64) -> Result<Qcow2Extensions> {
    let (area, complete) = view.prefix(cluster_size as usize, "qcow2 header cluster")?;
    let mut found = Qcow2Extensions {
        data_file: None,
        crypto_header: false,
    };
    let short = || {
        if complete {
            corrupt("qcow2 header extensions run past the first cluster")
        } else {
            refused(format!(
                "qcow2 header extensions run past the first {} bytes, which is all that was inspected",
                area.len()
            ))
        }
    };
    let mut offset = start as usize;
    loop {
        let f = Fields::new(&area, "qcow2 header extension");
        let (Ok(kind), Ok(len)) = (f.be32(offset), f.be32(offset + 4)) else {
            return Err(short());
        };
        if kind == 0 {
            return Ok(found);
        }
        let data_start = offset + 8;
        let Some(data) = data_start
            .checked_add(len as usize)
            .and_then(|data_end| area.get(data_start..data_end))
        else {
            return Err(short());
        };
        let data_end = data_start + data.len();
        match kind {
            QCOW2_EXT_DATA_FILE => found.data_file = Some(quoted(data)),
            QCOW2_EXT_CRYPTO_HEADER => found.crypto_header = true,
            _ => {}
        }
        offset = data_end.next_multiple_of(8);
    }
}

// ---------------------------------------------------------------- vmdk

const VMDK_DESCRIPTOR_MAX: usize = (1 << 20) - 1;
const VMDK_GD_AT_END: u64 = u64::MAX;
const VMDK_MARKER_EOS: u32 = 0;
const VMDK_MARKER_FOOTER: u32 = 3;

/// A text file that looks like a vmdk descriptor ("# Disk DescriptorFile",
/// createType=...): the data is in other files.
fn is_vmdk_descriptor(head: &[u8]) -> bool {
    let window = &head[..head.len().min(64 << 10)];
    let text = match window.iter().position(|&b| b == 0) {
        Some(nul) => &window[..nul],
        None => window,
    };
    if text.is_empty()
        || !text
            .iter()
            .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        return false;
    }
    let lower = text.to_ascii_lowercase();
    let contains = |needle: &[u8]| lower.windows(needle.len()).any(|w| w == needle);
    contains(b"# disk descriptorfile") || contains(b"createtype=")
}

#[derive(Debug, Default)]
struct VmdkDescriptor {
    create_type: Option<String>,
    parent_hint: Option<String>,
    extents: Vec<VmdkExtent>,
}

#[derive(Debug)]
struct VmdkExtent {
    kind: String,
    file: Option<String>,
}

/// Parses a vmdk descriptor the way oslo.utils does: every line must be a
/// comment, a ddb entry, a `key=value` field or an extent; anything else is
/// refused.
fn parse_vmdk_descriptor(text: &str) -> Result<VmdkDescriptor> {
    let mut descriptor = VmdkDescriptor::default();
    for line in text.lines().map(str::trim) {
        let lower = line.to_ascii_lowercase();
        let first_word = lower.split_whitespace().next().unwrap_or("");
        if line.is_empty() || line.starts_with('#') || lower.starts_with("ddb") {
            continue;
        }
        if matches!(first_word, "rw" | "rdonly" | "noaccess") {
            let kind = lower.split_whitespace().nth(2).unwrap_or("").to_string();
            let file = line.split('"').nth(1).map(|name| name.to_string());
            descriptor.extents.push(VmdkExtent { kind, file });
            continue;
        }
        match line.split_once('=') {
            Some((key, value)) if !key.trim().contains(char::is_whitespace) => {
                let value = value.trim().trim_matches('"').to_string();
                match key.trim().to_ascii_lowercase().as_str() {
                    "createtype" => descriptor.create_type = Some(value),
                    "parentfilenamehint" => descriptor.parent_hint = Some(value),
                    _ => {}
                }
            }
            _ => {
                return Err(refused(format!(
                    "vmdk descriptor has a line this inspector does not understand ({}); \
                     such images are refused",
                    quoted(line.as_bytes())
                )))
            }
        }
    }
    Ok(descriptor)
}

fn check_vmdk(view: &mut View<'_>, details: &mut Vec<String>) -> Result<Option<u64>> {
    let head = view.head;
    if head.starts_with(VMDK3_MAGIC) {
        return Err(refused(
            "vmdk version 3 (\"COWD\", VMFS sparse) images are refused; \
             only monolithicSparse and streamOptimized vmdk are accepted",
        ));
    }
    if !head.starts_with(VMDK4_MAGIC) {
        return Err(refuse_vmdk_descriptor_file(head));
    }
    let h = Fields::new(head, "vmdk header");
    let header = VmdkHeader::parse(&h)?;
    if !(1..=3).contains(&header.version) {
        return Err(refused(format!(
            "vmdk version {} is refused: only versions 1 to 3 are accepted",
            header.version
        )));
    }
    if header.descriptor_sector != 1 || header.descriptor_sectors == 0 {
        return Err(refused(
            "vmdk sparse image has no embedded descriptor at sector 1; such images are refused",
        ));
    }
    if header.gtes_per_gt > 512 || header.granularity == 0 || header.gtes_per_gt == 0 {
        return Err(corrupt(format!(
            "vmdk grain layout is invalid ({} grain table entries of {} sectors)",
            header.gtes_per_gt, header.granularity
        )));
    }

    let descriptor_len = header
        .descriptor_sectors
        .saturating_mul(512)
        .min(VMDK_DESCRIPTOR_MAX as u64) as usize;
    let raw = match view.read_upto(512, descriptor_len, "vmdk descriptor")? {
        Some(raw) => raw,
        None => {
            // A stream whose head ends inside the declared descriptor area:
            // fine as long as the text itself ends (NUL-padded) in the head.
            let rest = head.get(512..).unwrap_or(&[]);
            let rest = &rest[..rest.len().min(descriptor_len)];
            if !rest.contains(&0) {
                return Err(refused(
                    "vmdk descriptor extends past the inspected head of the image; \
                     such images are refused",
                ));
            }
            rest.to_vec()
        }
    };
    let text = match raw.iter().position(|&b| b == 0) {
        Some(nul) => &raw[..nul],
        None => &raw[..],
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return Err(refused(
            "vmdk descriptor is not text; such images are refused",
        ));
    };
    let descriptor = parse_vmdk_descriptor(text)?;
    let create_type = descriptor.create_type.clone().unwrap_or_default();
    if !matches!(
        create_type.to_ascii_lowercase().as_str(),
        "monolithicsparse" | "streamoptimized"
    ) {
        return Err(refused(format!(
            "vmdk createType {} is refused: only self-contained monolithicSparse and \
             streamOptimized vmdk images are accepted",
            quoted(create_type.as_bytes())
        )));
    }
    if let Some(parent) = &descriptor.parent_hint {
        return Err(refused(format!(
            "vmdk image names a parent image ({}); parent images are refused",
            quoted(parent.as_bytes())
        )));
    }
    check_vmdk_extents(&descriptor.extents)?;

    let mut capacity = header.capacity;
    if header.gd_offset == VMDK_GD_AT_END {
        match view.tail(1536, "vmdk stream footer")? {
            Some(footer) => capacity = check_vmdk_footer(&header, &footer)?,
            None => details.push(
                "vmdk footer at the end of the stream was not checked (not in the head)"
                    .to_string(),
            ),
        }
    }
    details.push(format!("vmdk {create_type}, version {}", header.version));
    capacity
        .checked_mul(512)
        .map(Some)
        .ok_or_else(|| corrupt(format!("vmdk capacity of {capacity} sectors overflows")))
}

/// A sparse vmdk is its own single extent; qemu ignores the extent lines of
/// its embedded descriptor, but anything beyond one SPARSE extent without a
/// path is not what qemu-img or VMware write and is refused (oslo.utils
/// refuses any extent line containing '/').
fn check_vmdk_extents(extents: &[VmdkExtent]) -> Result<()> {
    for extent in extents {
        let file = extent.file.as_deref().unwrap_or("");
        if file.contains(['/', '\\']) || file.contains("..") {
            return Err(refused(format!(
                "vmdk descriptor extent names another file ({}); extents outside the image are refused",
                quoted(file.as_bytes())
            )));
        }
        if extent.kind != "sparse" {
            return Err(refused(format!(
                "vmdk descriptor has a {} extent ({}), which is stored in another file; \
                 such images are refused",
                extent.kind.to_ascii_uppercase(),
                quoted(file.as_bytes())
            )));
        }
    }
    match extents.len() {
        1 => Ok(()),
        0 => Err(refused(
            "vmdk descriptor lists no extent; such images are refused",
        )),
        n => Err(refused(format!(
            "vmdk descriptor lists {n} extents, so it names other files; \
             a self-contained sparse vmdk has exactly one"
        ))),
    }
}

/// Refuses a vmdk that is only a text descriptor: its data lives in the
/// extent files it names (monolithicFlat, twoGbMaxExtent*, vmfs...).
fn refuse_vmdk_descriptor_file(head: &[u8]) -> Error {
    let window = &head[..head.len().min(64 << 10)];
    let text = String::from_utf8_lossy(window);
    let (create_type, extent) = match parse_vmdk_descriptor(&text) {
        Ok(descriptor) => (
            descriptor.create_type.unwrap_or_default(),
            descriptor
                .extents
                .into_iter()
                .find_map(|extent| extent.file)
                .unwrap_or_default(),
        ),
        Err(_) => (String::new(), String::new()),
    };
    refused(format!(
        "vmdk descriptor file (createType {}) keeps its data in other files ({}); \
         only self-contained monolithicSparse and streamOptimized vmdk images are accepted",
        quoted(create_type.as_bytes()),
        quoted(extent.as_bytes())
    ))
}

struct VmdkHeader {
    magic: [u8; 4],
    version: u32,
    capacity: u64,
    granularity: u64,
    descriptor_sector: u64,
    descriptor_sectors: u64,
    gtes_per_gt: u32,
    gd_offset: u64,
}

impl VmdkHeader {
    fn parse(h: &Fields<'_>) -> Result<Self> {
        Ok(VmdkHeader {
            magic: h.array(0)?,
            version: h.le32(4)?,
            capacity: h.le64(12)?,
            granularity: h.le64(20)?,
            descriptor_sector: h.le64(28)?,
            descriptor_sectors: h.le64(36)?,
            gtes_per_gt: h.le32(44)?,
            gd_offset: h.le64(56)?,
        })
    }
}

/// Checks the footer of a streamOptimized vmdk whose grain directory is at
/// the end (footer marker, header copy, end-of-stream marker; as qemu and
/// oslo.utils check it) and returns the capacity it declares, which qemu
/// uses instead of the first header's.
fn check_vmdk_footer(header: &VmdkHeader, tail: &[u8]) -> Result<u64> {
    let marker = Fields::new(tail, "vmdk footer marker");
    let footer = VmdkHeader::parse(&Fields::new(&tail[512..], "vmdk footer"))?;
    let end = Fields::new(&tail[1024..], "vmdk end-of-stream marker");
    let zeros = |bytes: &[u8]| bytes.iter().all(|&b| b == 0);
    let marker_ok =
        marker.le32(8)? == 0 && marker.le32(12)? == VMDK_MARKER_FOOTER && zeros(&tail[16..512]);
    let end_ok = end.le64(0)? == 0
        && end.le32(8)? == 0
        && end.le32(12)? == VMDK_MARKER_EOS
        && zeros(&tail[1024 + 16..]);
    if !marker_ok || !end_ok {
        return Err(corrupt("vmdk stream footer markers are invalid"));
    }
    if footer.magic != header.magic
        || footer.version != header.version
        || footer.descriptor_sector != header.descriptor_sector
        || footer.descriptor_sectors != header.descriptor_sectors
    {
        return Err(refused(
            "vmdk stream footer disagrees with the header (signature, version or descriptor); \
             such images are refused",
        ));
    }
    if footer.gd_offset == VMDK_GD_AT_END {
        return Err(corrupt("vmdk stream footer points at yet another footer"));
    }
    Ok(footer.capacity)
}

// ---------------------------------------------------------------- vhd, vhdx, vdi

/// Checks a VHD footer: the copy at the start of a dynamic disk, else the
/// one at the end of a fixed disk. Differencing disks name a parent file.
fn check_vhd(view: &mut View<'_>, details: &mut Vec<String>) -> Result<Option<u64>> {
    let footer = if view.head.starts_with(VHD_COOKIE) {
        view.head[..view.head.len().min(512)].to_vec()
    } else {
        view.tail(512, "VHD footer")?.unwrap_or_default()
    };
    let f = Fields::new(&footer, "VHD footer");
    let current_size = f.be64(48)?;
    match f.be32(60)? {
        2 => details.push("fixed VHD".to_string()),
        3 => details.push("dynamic VHD".to_string()),
        4 => {
            return Err(refused(
                "VHD differencing disk refers to a parent image; parent images are refused",
            ))
        }
        other => return Err(corrupt(format!("VHD disk type {other} is unknown"))),
    }
    Ok(Some(current_size))
}

/// Lays a Microsoft GUID out as it is stored: the first three fields little
/// endian.
const fn ms_guid(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> [u8; 16] {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5],
        d4[6], d4[7],
    ]
}

const VHDX_METADATA_REGION: [u8; 16] = ms_guid(
    0x8B7C_A206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);
const VHDX_FILE_PARAMETERS: [u8; 16] = ms_guid(
    0xCAA1_6737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
const VHDX_VIRTUAL_DISK_SIZE: [u8; 16] = ms_guid(
    0x2FA5_4224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
const VHDX_PARENT_LOCATOR: [u8; 16] = ms_guid(
    0xA8D3_5F2D,
    0xB30B,
    0x454D,
    [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
);
const VHDX_REGION_TABLE: usize = 0x30000;
const VHDX_MAX_ENTRIES: usize = 2047;
const VHDX_HAS_PARENT: u32 = 1 << 1;

/// Checks a VHDX (MS-VHDX): finds the metadata region through the region
/// table, refuses differencing disks, reads the virtual disk size.
fn check_vhdx(view: &mut View<'_>, details: &mut Vec<String>) -> Result<Option<u64>> {
    let head = view.head;
    let table = Fields::new(
        head.get(VHDX_REGION_TABLE..).unwrap_or(&[]),
        "VHDX region table",
    );
    if table.array::<4>(0)? != *b"regi" {
        return Err(corrupt("VHDX region table signature is missing"));
    }
    let count = table.le32(8)? as usize;
    if count > VHDX_MAX_ENTRIES {
        return Err(corrupt(format!(
            "VHDX region table has {count} entries; at most {VHDX_MAX_ENTRIES} are allowed"
        )));
    }
    let mut metadata = None;
    for i in 0..count {
        let entry = 16 + i * 32;
        if table.array::<16>(entry)? == VHDX_METADATA_REGION {
            metadata = Some((table.le64(entry + 16)?, table.le32(entry + 24)?));
        }
    }
    let Some((meta_offset, meta_len)) = metadata else {
        return Err(corrupt("VHDX region table has no metadata region"));
    };

    let unread = |details: &mut Vec<String>| {
        details.push(format!(
            "VHDX metadata at offset {meta_offset} is past the inspected head: \
             virtual size unknown, parent not checked"
        ));
        Ok(None)
    };
    let Some(header) = view.read_within(meta_offset, 32, "VHDX metadata table")? else {
        return unread(details);
    };
    let h = Fields::new(&header, "VHDX metadata table");
    if h.array::<8>(0)? != *b"metadata" {
        return Err(corrupt("VHDX metadata table signature is missing"));
    }
    let entries = h.le16(10)? as usize;
    if entries > VHDX_MAX_ENTRIES {
        return Err(corrupt(format!(
            "VHDX metadata table has {entries} entries; at most {VHDX_MAX_ENTRIES} are allowed"
        )));
    }
    let entries_at = meta_offset.saturating_add(32);
    let Some(table) = view.read_within(entries_at, entries * 32, "VHDX metadata entries")? else {
        return unread(details);
    };
    let t = Fields::new(&table, "VHDX metadata entries");
    let mut virtual_size = None;
    let mut size_seen = false;
    for i in 0..entries {
        let entry = i * 32;
        let id = t.array::<16>(entry)?;
        let item_offset = t.le32(entry + 16)?;
        let item_len = t.le32(entry + 20)?;
        if item_offset >= meta_len {
            return Err(corrupt(format!(
                "VHDX metadata item at offset {item_offset} lies outside the metadata region"
            )));
        }
        let item_at = meta_offset.saturating_add(u64::from(item_offset));
        if id == VHDX_PARENT_LOCATOR {
            return Err(refused(
                "VHDX differencing disk has a parent locator; parent images are refused",
            ));
        }
        if id == VHDX_FILE_PARAMETERS {
            if item_len < 8 {
                return Err(corrupt("VHDX file parameters are truncated"));
            }
            if let Some(params) = view.read_within(item_at, 8, "VHDX file parameters")? {
                let flags = Fields::new(&params, "VHDX file parameters").le32(4)?;
                if flags & VHDX_HAS_PARENT != 0 {
                    return Err(refused(
                        "VHDX differencing disk refers to a parent image; parent images are refused",
                    ));
                }
            } else {
                details.push("VHDX file parameters were not checked (past the head)".to_string());
            }
        }
        if id == VHDX_VIRTUAL_DISK_SIZE {
            size_seen = true;
            if item_len < 8 {
                return Err(corrupt("VHDX virtual disk size is truncated"));
            }
            if let Some(size) = view.read_within(item_at, 8, "VHDX virtual disk size")? {
                virtual_size = Some(Fields::new(&size, "VHDX virtual disk size").le64(0)?);
            }
        }
    }
    if !size_seen {
        return Err(corrupt("VHDX metadata has no virtual disk size"));
    }
    Ok(virtual_size)
}

/// Checks a VirtualBox VDI header (QEMU block/vdi.c). Undo and differencing
/// images refer to a parent.
fn check_vdi(view: &mut View<'_>, details: &mut Vec<String>) -> Result<Option<u64>> {
    let h = Fields::new(view.head, "VDI header");
    let image_type = h.le32(0x4c)?;
    let disk_size = h.le64(0x170)?;
    match image_type {
        1 => details.push("dynamic VDI".to_string()),
        2 => details.push("fixed VDI".to_string()),
        3 | 4 => {
            return Err(refused(format!(
                "VDI image of type {image_type} (undo or differencing) refers to a parent image; \
                 parent images are refused"
            )))
        }
        other => return Err(corrupt(format!("VDI image type {other} is unknown"))),
    }
    Ok(Some(disk_size))
}

// ---------------------------------------------------------------- iso, gpt, mbr, luks

/// ISO 9660 or UDF: a volume descriptor identifier at sector 16 (the check
/// oslo.utils makes).
fn is_iso(head: &[u8]) -> bool {
    let id = head.get(ISO_DESCRIPTORS + 1..ISO_DESCRIPTORS + 6);
    matches!(
        id,
        Some(b"CD001") | Some(b"BEA01") | Some(b"NSR02") | Some(b"NSR03")
    )
}

/// Virtual size of an ISO: volume space size times logical block size, from
/// the primary volume descriptor; the image length for UDF-only images.
fn check_iso(view: &mut View<'_>, details: &mut Vec<String>) -> Result<Option<u64>> {
    let pvd = Fields::new(
        view.head.get(ISO_DESCRIPTORS..).unwrap_or(&[]),
        "ISO primary volume descriptor",
    );
    if pvd.u8(0)? != 1 || pvd.array::<5>(1)? != *b"CD001" {
        details.push("UDF image without an ISO 9660 primary volume descriptor".to_string());
        return Ok(view.len);
    }
    let blocks = pvd.le32(80)?;
    let block_size = pvd.le16(128)?;
    if !block_size.is_power_of_two() || !(512..=2048).contains(&block_size) {
        return Err(corrupt(format!(
            "ISO logical block size {block_size} is invalid"
        )));
    }
    let size = u64::from(blocks) * u64::from(block_size);
    if let Some(len) = view.len {
        if size > len {
            return Err(corrupt(format!(
                "ISO volume is {size} bytes but the image is only {len} bytes long"
            )));
        }
    }
    Ok(Some(size))
}

/// Where a GPT header is: LBA 1 for 512-byte sectors, or for 4 KiB sectors.
fn gpt_header_offset(head: &[u8]) -> Option<usize> {
    [512, 4096]
        .into_iter()
        .find(|&at| head.get(at..at + 8) == Some(GPT_SIGNATURE))
}

const MBR_PROTECTIVE: u8 = 0xee;

fn mbr_entries(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    (0..4).filter_map(move |i| head.get(446 + i * 16..446 + (i + 1) * 16))
}

/// An MBR partition table: the boot signature, valid boot flags, at least
/// one partition, and not a FAT boot sector (which also ends in 55 AA; the
/// same test oslo.utils makes).
fn is_mbr(head: &[u8]) -> bool {
    if head.get(510..512) != Some(&[0x55, 0xaa][..]) {
        return false;
    }
    let fat_boot_sector = head[0x10] == 2 && head[0x15] == 0xf8;
    let flags_ok = mbr_entries(head).all(|entry| entry[0] == 0 || entry[0] == 0x80);
    let any_partition = mbr_entries(head).any(|entry| entry[4] != 0);
    !fat_boot_sector && flags_ok && any_partition
}

/// Checks a GPT disk: header CRC, partition array CRC (when readable), and a
/// protective MBR (as oslo.utils checks it: one 0xEE partition from LBA 1 and
/// nothing else, so no hybrid MBR showing other partitions to BIOS).
fn check_gpt(view: &mut View<'_>, details: &mut Vec<String>) -> Result<Option<u64>> {
    let head = view.head;
    let at = gpt_header_offset(head).ok_or_else(|| corrupt("GPT header is missing"))?;
    let sector = at as u64;
    let h = Fields::new(&head[at..], "GPT header");
    let header_size = h.le32(12)? as usize;
    let header_crc = h.le32(16)?;
    if header_size < 92 || header_size > at {
        return Err(corrupt(format!("GPT header size {header_size} is invalid")));
    }
    let mut header = h.bytes.get(..header_size).unwrap_or(&[]).to_vec();
    if header.len() != header_size {
        return Err(corrupt("the GPT header is truncated"));
    }
    header[16..20].fill(0);
    if crc32(&header) != header_crc {
        return Err(corrupt("GPT header checksum does not match"));
    }
    if h.le64(24)? != 1 {
        return Err(corrupt("GPT primary header does not say it is at LBA 1"));
    }
    let entries_lba = h.le64(72)?;
    let entries = h.le32(80)?;
    let entry_size = h.le32(84)?;
    let entries_crc = h.le32(88)?;
    if entry_size < 128 || !entry_size.is_power_of_two() {
        return Err(corrupt(format!(
            "GPT partition entry size {entry_size} is invalid"
        )));
    }
    let array_len = u64::from(entries) * u64::from(entry_size);
    if array_len > 1 << 20 {
        return Err(corrupt(format!(
            "GPT partition array of {array_len} bytes is implausibly large"
        )));
    }
    let array_at = entries_lba
        .checked_mul(sector)
        .ok_or_else(|| corrupt("GPT partition array offset overflows"))?;
    match view.read_within(array_at, array_len as usize, "GPT partition array")? {
        Some(array) if crc32(&array) == entries_crc => {}
        Some(_) => return Err(corrupt("GPT partition array checksum does not match")),
        None => {
            details.push("GPT partition array is past the head and was not checked".to_string())
        }
    }

    if head.get(510..512) != Some(&[0x55, 0xaa][..]) {
        return Err(corrupt("GPT disk has no protective MBR"));
    }
    let mut used = mbr_entries(head).filter(|entry| entry[4] != 0);
    let protective = used.next();
    let protective_ok = protective.is_some_and(|entry| {
        entry[4] == MBR_PROTECTIVE && entry[8..12] == 1u32.to_le_bytes() && (entry[0] == 0)
    });
    if !protective_ok || used.next().is_some() {
        return Err(refused(
            "GPT disk has a hybrid or invalid MBR (it must hold one 0xEE partition from LBA 1 \
             and nothing else); such images are refused",
        ));
    }
    details.push(format!(
        "GPT with {entries} partition entries, {sector}-byte sectors"
    ));
    Ok(view.len)
}

/// CRC-32 (IEEE), as GPT uses.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}

/// LUKS1 (the version qemu and oslo.utils read): the virtual size is what
/// follows the payload offset.
fn check_luks(view: &mut View<'_>, details: &mut Vec<String>) -> Result<Option<u64>> {
    let h = Fields::new(view.head, "LUKS header");
    let version = h.be16(6)?;
    if version != 1 {
        return Err(Error::Unsupported(format!(
            "LUKS version {version} is not supported: only LUKS1 is inspected"
        )));
    }
    let payload = u64::from(h.be32(104)?) * 512;
    details.push(format!("LUKS1, payload at offset {payload}"));
    match view.len {
        Some(len) if payload > len => Err(corrupt(format!(
            "LUKS payload offset {payload} lies past the end of the image ({len} bytes)"
        ))),
        Some(len) => Ok(Some(len - payload)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_of_known_text() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn guid_layout_matches_the_on_disk_bytes() {
        assert_eq!(
            VHDX_METADATA_REGION,
            [
                0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f,
                0x88, 0x6e
            ]
        );
    }

    #[test]
    fn names_round_trip() {
        for format in Format::ALL {
            assert_eq!(format.name().parse::<Format>().unwrap(), format);
            assert_eq!(
                format.to_string().to_uppercase().parse::<Format>().unwrap(),
                format
            );
        }
        assert_eq!("vpc".parse::<Format>().unwrap(), Format::Vhd);
        assert!(matches!("ext4".parse::<Format>(), Err(Error::Invalid(_))));
    }

    #[test]
    fn policy_follows_ironic() {
        let inspection = |format| Inspection {
            format,
            virtual_size: None,
            also_matched: Vec::new(),
            details: Vec::new(),
        };
        let declared = |format| Policy {
            declared: Some(format),
            ..Policy::default()
        };
        assert!(declared(Format::Raw)
            .check(&inspection(Format::Gpt))
            .is_ok());
        assert!(declared(Format::Raw)
            .check(&inspection(Format::Mbr))
            .is_ok());
        assert!(declared(Format::Raw)
            .check(&inspection(Format::Qcow2))
            .is_err());
        assert!(declared(Format::Raw)
            .check(&inspection(Format::Iso))
            .is_err());
        assert!(declared(Format::Iso)
            .check(&inspection(Format::Iso))
            .is_ok());
        assert!(Policy::default().check(&inspection(Format::Mbr)).is_ok());
        assert!(Policy::default().check(&inspection(Format::Vhd)).is_err());
        let raw_only = Policy {
            permitted: vec![Format::Raw],
            declared: None,
        };
        assert!(raw_only.check(&inspection(Format::Gpt)).is_ok());
        assert!(raw_only.check(&inspection(Format::Iso)).is_err());
    }
}
