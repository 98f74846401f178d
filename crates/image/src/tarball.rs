//! Extracting root filesystem tarballs, faithfully and safely.
//!
//! Operators deploy root filesystems as tarballs; [`extract`] takes the
//! already decompressed tar stream (see `crate::decompress`) and writes it
//! into a target directory.
//!
//! Faithful: regular (and sparse) files, directories, symbolic and hard links,
//! character and block devices, fifos, numeric owners, modes with
//! setuid/setgid/sticky, mtimes with nanoseconds, extended attributes and
//! POSIX ACLs all arrive as archived. Nothing is dropped silently: metadata
//! that cannot be applied fails the extraction with the file's name.
//!
//! Safe: the archive cannot write outside the target. Entries with absolute
//! paths or `..` components are refused, every path is walked one component
//! at a time with `O_NOFOLLOW` so nothing is ever written through a symbolic
//! link (one created by the archive or already there), hard links must point
//! at something already inside the target, and an existing file is unlinked,
//! never opened, before an entry replaces it (so a hard link cannot be written
//! through either).
//!
//! Symbolic link policy: absolute targets are kept as they are, since in a
//! root filesystem they are relative to the new root. Relative targets that
//! climb lexically above the root (`x -> ../..` at the top) are refused: they
//! can only be meant to reach the host.
//!
//! The tar reader is our own rather than the `tar` crate's: that crate splits
//! PAX records at newlines, which breaks on GNU tar's multi-line
//! `SCHILY.acl.*` records (and on binary xattr values containing `\n`) and
//! then silently drops every xattr of the file.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::error::{Error, IoContext, Result};

/// What to carry over from the archive besides names and contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractOptions {
    /// Set each entry's owner to the archive's numeric uid/gid (names are
    /// ignored: the ids are what the new root's files mean). Needs root.
    /// Default: true.
    pub preserve_owners: bool,
    /// Set extended attributes (`user.*`, `trusted.*`, `security.*` such as
    /// file capabilities and SELinux labels). Default: true.
    pub preserve_xattrs: bool,
    /// Set POSIX ACLs (access and default). Default: true.
    pub preserve_acls: bool,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            preserve_owners: true,
            preserve_xattrs: true,
            preserve_acls: true,
        }
    }
}

/// What an extraction wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractReport {
    /// Regular files (sparse or not).
    pub files: u64,
    /// Directory entries, including the archive's `./` if it has one.
    pub directories: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    /// Character and block devices.
    pub devices: u64,
    pub fifos: u64,
    /// Bytes of file data written (holes of sparse files not included).
    pub bytes: u64,
    /// Extended attributes set, ACLs not included.
    pub xattrs: u64,
    /// ACLs set (an access and a default ACL on one directory count twice).
    pub acls: u64,
}

/// Extracts a tar stream into `target` (an existing, preferably empty directory).
///
/// Understands ustar, GNU (long names, old sparse) and PAX (long names, large
/// ids and sizes, sub-second mtimes, `SCHILY.xattr.*`, `LIBARCHIVE.xattr.*`,
/// `SCHILY.acl.access`/`.default`, GNU sparse 0.0, 0.1 and 1.0) archives.
/// Directory metadata is applied after all entries, deepest first, so that
/// modes like 0500 and default ACLs do not affect their contents. ACLs stored
/// as text may name users and groups; those names are looked up in the new
/// root's `etc/passwd` and `etc/group`, the only databases that describe its
/// ids. When an archive carries an ACL both as text and as the binary
/// `system.posix_acl_*` xattr (`tar --xattrs-include='*'`), the binary one
/// wins since it holds the exact numeric ids.
///
/// Hard link entries carry no metadata of their own: they share their
/// target's inode. A later entry of the same name replaces an earlier one.
pub fn extract<R: Read>(tar: R, target: &Path, options: &ExtractOptions) -> Result<ExtractReport> {
    let root = Root::open(target)?;
    let mut reader = TarReader::new(tar);
    let mut extractor = Extractor {
        root,
        options: options.clone(),
        // SAFETY: geteuid has no preconditions and cannot fail.
        is_root: unsafe { libc::geteuid() } == 0,
        report: ExtractReport::default(),
        directories: Vec::new(),
        text_acls: Vec::new(),
    };
    while let Some(member) = reader.next_member()? {
        extractor.extract_member(&mut reader, member)?;
    }
    extractor.finish()
}

// ---------------------------------------------------------------------------
// Reading the archive.
// ---------------------------------------------------------------------------

const BLOCK: usize = 512;
/// Largest PAX header, GNU long name or sparse map we hold in memory: real
/// ones are a few KiB, and a hostile archive must not make us allocate more.
const MAX_METADATA: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Directory,
    Symlink,
    Hardlink,
    CharDevice,
    BlockDevice,
    Fifo,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::File => "regular file",
            Kind::Directory => "directory",
            Kind::Symlink => "symbolic link",
            Kind::Hardlink => "hard link",
            Kind::CharDevice => "character device",
            Kind::BlockDevice => "block device",
            Kind::Fifo => "fifo",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AclKind {
    Access,
    Default,
}

impl AclKind {
    fn xattr_name(self) -> &'static str {
        match self {
            AclKind::Access => "system.posix_acl_access",
            AclKind::Default => "system.posix_acl_default",
        }
    }
}

/// How a sparse file's data is laid out.
#[derive(Debug)]
enum Sparse {
    /// The map came with the headers: (offset, length) of each data segment.
    Map {
        real_size: u64,
        segments: Vec<(u64, u64)>,
    },
    /// GNU sparse 1.0: the map is at the start of the member's data.
    MapInData { real_size: u64 },
}

/// One archive member with all its extension headers folded in.
#[derive(Debug)]
struct Member {
    path: Vec<u8>,
    link: Vec<u8>,
    kind: Kind,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: (i64, u32),
    device: (u64, u64),
    sparse: Option<Sparse>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    text_acls: Vec<(AclKind, Vec<u8>)>,
}

struct TarReader<R> {
    inner: R,
    /// Bytes consumed so far, for error messages.
    offset: u64,
    /// Unread data bytes of the current member.
    remaining: u64,
    /// Zero padding after the current member's data.
    padding: u64,
    /// PAX global ('g') records, in force until overridden.
    global: Vec<(String, Vec<u8>)>,
    finished: bool,
}

impl<R: Read> TarReader<R> {
    fn new(inner: R) -> Self {
        TarReader {
            inner,
            offset: 0,
            remaining: 0,
            padding: 0,
            global: Vec::new(),
            finished: false,
        }
    }

    /// Fills `buf`; false at a clean end of stream before the first byte.
    fn read_block(&mut self, buf: &mut [u8; BLOCK]) -> Result<bool> {
        let mut filled = 0;
        while filled < BLOCK {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => {
                    return Err(Error::Corrupt(format!(
                        "tar archive ends in the middle of a header at byte {}",
                        self.offset
                    )))
                }
                Ok(n) => {
                    filled += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("reading the tar archive", e)),
            }
        }
        Ok(true)
    }

    /// Reads up to `buf.len()` bytes of the current member's data.
    fn read_data(&mut self, buf: &mut [u8], name: &str) -> Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        loop {
            match self.inner.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(Error::Corrupt(format!(
                        "tar archive ends in the middle of `{name}`"
                    )))
                }
                Ok(n) => {
                    self.remaining -= n as u64;
                    self.offset += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::io(
                        format!("reading `{name}` from the tar archive"),
                        e,
                    ))
                }
            }
        }
    }

    fn read_data_exact(&mut self, buf: &mut [u8], name: &str) -> Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            let n = self.read_data(&mut buf[filled..], name)?;
            if n == 0 {
                return Err(Error::Corrupt(format!(
                    "`{name}` is shorter in the tar archive than its headers say"
                )));
            }
            filled += n;
        }
        Ok(())
    }

    /// Skips the rest of the current member's data and its padding.
    fn skip_rest(&mut self) -> Result<()> {
        let mut buf = [0u8; 8192];
        while self.remaining > 0 {
            self.read_data(&mut buf, "a member")?;
        }
        while self.padding > 0 {
            let want = buf.len().min(self.padding as usize);
            let n = match self.inner.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(Error::Corrupt(
                        "tar archive ends in the padding after a member".into(),
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("reading the tar archive", e)),
            };
            self.padding -= n as u64;
            self.offset += n as u64;
        }
        Ok(())
    }

    fn start_data(&mut self, size: u64) {
        self.remaining = size;
        self.padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
    }

    /// Reads the whole data of an extension header (PAX, long name).
    fn read_metadata(&mut self, size: u64, what: &str) -> Result<Vec<u8>> {
        if size > MAX_METADATA {
            return Err(Error::TooLarge(format!(
                "tar {what} of {size} bytes at byte {}; at most {MAX_METADATA} are accepted",
                self.offset
            )));
        }
        self.start_data(size);
        let mut data = vec![0u8; size as usize];
        self.read_data_exact(&mut data, what)?;
        self.skip_rest()?;
        Ok(data)
    }

    /// The next member, or None at the end of the archive.
    fn next_member(&mut self) -> Result<Option<Member>> {
        self.skip_rest()?;
        if self.finished {
            return Ok(None);
        }
        let mut local: Vec<(String, Vec<u8>)> = Vec::new();
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pending_extension = false;
        let mut header = [0u8; BLOCK];
        loop {
            let header_offset = self.offset;
            if !self.read_block(&mut header)? || header.iter().all(|&b| b == 0) {
                self.finished = true;
                if pending_extension {
                    return Err(Error::Corrupt(
                        "tar archive ends after an extension header, without the member it describes"
                            .into(),
                    ));
                }
                return Ok(None);
            }
            verify_checksum(&header, header_offset)?;
            let size = parse_number(&header[124..136], "size", header_offset)?;
            match header[156] {
                b'x' => {
                    let data = self.read_metadata(size, "PAX header")?;
                    local.extend(parse_pax(&data, header_offset)?);
                }
                b'g' => {
                    let data = self.read_metadata(size, "PAX global header")?;
                    for (key, value) in parse_pax(&data, header_offset)? {
                        self.global.retain(|(k, _)| *k != key);
                        if !value.is_empty() {
                            self.global.push((key, value));
                        }
                    }
                    let total: usize = self.global.iter().map(|(k, v)| k.len() + v.len()).sum();
                    if total as u64 > MAX_METADATA {
                        return Err(Error::TooLarge(format!(
                            "tar PAX global headers hold more than {MAX_METADATA} bytes"
                        )));
                    }
                }
                b'L' => {
                    long_name =
                        Some(until_nul(&self.read_metadata(size, "GNU long name")?).to_vec())
                }
                b'K' => {
                    long_link =
                        Some(until_nul(&self.read_metadata(size, "GNU long link")?).to_vec())
                }
                b'V' => {
                    // A volume label names the archive, not a file.
                    self.start_data(size);
                    self.skip_rest()?;
                    continue;
                }
                _ => {
                    let member = self.build_member(
                        &header,
                        header_offset,
                        size,
                        local,
                        long_name,
                        long_link,
                    )?;
                    return Ok(Some(member));
                }
            }
            pending_extension = true;
        }
    }

    fn build_member(
        &mut self,
        h: &[u8; BLOCK],
        at: u64,
        header_size: u64,
        local: Vec<(String, Vec<u8>)>,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> Result<Member> {
        let ustar = &h[257..263] == b"ustar\0";
        let gnu = &h[257..265] == b"ustar  \0";
        let mut path = match long_name {
            Some(name) => name,
            None => {
                let name = until_nul(&h[0..100]);
                let prefix = until_nul(&h[345..500]);
                if ustar && !prefix.is_empty() {
                    [prefix, b"/", name].concat()
                } else {
                    name.to_vec()
                }
            }
        };
        let mut link = long_link.unwrap_or_else(|| until_nul(&h[157..257]).to_vec());
        let mode = parse_number(&h[100..108], "mode", at)?;
        let mut uid = parse_number(&h[108..116], "uid", at)?;
        let mut gid = parse_number(&h[116..124], "gid", at)?;
        let mut size = header_size;
        let mtime = parse_number(&h[136..148], "mtime", at)?;
        let mut mtime = (
            i64::try_from(mtime).map_err(|_| corrupt_field("mtime", at))?,
            0u32,
        );
        let device = if ustar || gnu {
            (
                parse_number(&h[329..337], "device major", at)?,
                parse_number(&h[337..345], "device minor", at)?,
            )
        } else {
            (0, 0)
        };

        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut text_acls: Vec<(AclKind, Vec<u8>)> = Vec::new();
        let mut sparse_records: Vec<(String, Vec<u8>)> = Vec::new();
        let mut set_xattr = |name: &[u8], value: Vec<u8>| {
            xattrs.retain(|(n, _)| n != name);
            xattrs.push((name.to_vec(), value));
        };
        for (key, value) in self.global.iter().chain(local.iter()) {
            let key = key.as_str();
            match key {
                "path" if !value.is_empty() => path = value.clone(),
                "linkpath" if !value.is_empty() => link = value.clone(),
                "size" if !value.is_empty() => size = parse_decimal(value, key, at)?,
                "uid" if !value.is_empty() => uid = parse_decimal(value, key, at)?,
                "gid" if !value.is_empty() => gid = parse_decimal(value, key, at)?,
                "mtime" if !value.is_empty() => mtime = parse_pax_time(value, at)?,
                "SCHILY.acl.access" => {
                    text_acls.retain(|(k, _)| *k != AclKind::Access);
                    text_acls.push((AclKind::Access, value.clone()));
                }
                "SCHILY.acl.default" => {
                    text_acls.retain(|(k, _)| *k != AclKind::Default);
                    text_acls.push((AclKind::Default, value.clone()));
                }
                "SCHILY.acl.ace" => {
                    return Err(Error::Unsupported(format!(
                        "tar member at byte {at} carries an NFSv4 ACL (SCHILY.acl.ace), which cannot be set on Linux filesystems"
                    )))
                }
                "SCHILY.fflags" if !value.is_empty() => {
                    return Err(Error::Unsupported(format!(
                        "tar member at byte {at} carries BSD file flags (SCHILY.fflags = {:?}), which this extractor does not set",
                        String::from_utf8_lossy(value)
                    )))
                }
                "RHT.security.selinux" => set_xattr(b"security.selinux", value.clone()),
                _ => {
                    if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                        set_xattr(name.as_bytes(), value.clone());
                    } else if let Some(name) = key.strip_prefix("LIBARCHIVE.xattr.") {
                        let name = percent_decode(name).ok_or_else(|| corrupt_field("LIBARCHIVE.xattr name", at))?;
                        let value = base64::engine::general_purpose::GeneralPurpose::new(
                            &base64::alphabet::STANDARD,
                            base64::engine::GeneralPurposeConfig::new()
                                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
                        )
                        .decode(value)
                        .map_err(|_| corrupt_field("LIBARCHIVE.xattr value", at))?;
                        set_xattr(&name, value);
                    } else if key.starts_with("GNU.sparse.") {
                        sparse_records.push((key.to_string(), value.clone()));
                    }
                    // Other keywords (atime, ctime, uname, gname, comment,
                    // charset, ...) carry nothing a root filesystem needs.
                }
            }
        }

        let typeflag = h[156];
        let mut sparse = None;
        let kind = match typeflag {
            b'0' | b'\0' | b'7' if path.ends_with(b"/") && typeflag != b'7' => Kind::Directory,
            b'0' | b'\0' | b'7' => Kind::File,
            b'1' => Kind::Hardlink,
            b'2' => Kind::Symlink,
            b'3' => Kind::CharDevice,
            b'4' => Kind::BlockDevice,
            b'5' | b'D' => Kind::Directory,
            b'6' => Kind::Fifo,
            b'S' => {
                sparse = Some(self.read_old_gnu_sparse(h, at)?);
                Kind::File
            }
            other => {
                return Err(Error::Unsupported(format!(
                    "tar member `{}` at byte {at} has type {:?}, which is not a file, directory, link, device or fifo",
                    String::from_utf8_lossy(&path),
                    other as char
                )))
            }
        };
        if !sparse_records.is_empty() && kind == Kind::File {
            let (name, map) = pax_sparse(&sparse_records, at)?;
            if let Some(name) = name {
                path = name;
            }
            sparse = Some(map);
        }

        let uid = u32::try_from(uid).map_err(|_| corrupt_field("uid", at))?;
        let gid = u32::try_from(gid).map_err(|_| corrupt_field("gid", at))?;
        self.start_data(size);
        Ok(Member {
            path,
            link,
            kind,
            mode: (mode & 0o7777) as u32,
            uid: uid.into(),
            gid: gid.into(),
            mtime,
            device,
            sparse,
            xattrs,
            text_acls,
        })
    }

    /// Reads an old GNU sparse map: four entries in the header, more in
    /// extension blocks that come before the data.
    fn read_old_gnu_sparse(&mut self, h: &[u8; BLOCK], at: u64) -> Result<Sparse> {
        let real_size = parse_number(&h[483..495], "sparse real size", at)?;
        let mut segments = Vec::new();
        let push_entries =
            |area: &[u8], count: usize, segments: &mut Vec<(u64, u64)>| -> Result<()> {
                for i in 0..count {
                    let entry = &area[i * 24..i * 24 + 24];
                    if entry[0] == 0 {
                        break;
                    }
                    let offset = parse_number(&entry[0..12], "sparse offset", at)?;
                    let length = parse_number(&entry[12..24], "sparse length", at)?;
                    segments.push((offset, length));
                }
                Ok(())
            };
        push_entries(&h[386..482], 4, &mut segments)?;
        let mut extended = h[482] != 0;
        let mut block = [0u8; BLOCK];
        while extended {
            if segments.len() as u64 * 16 > MAX_METADATA {
                return Err(Error::TooLarge(format!(
                    "sparse map of the tar member at byte {at} is larger than {MAX_METADATA} bytes"
                )));
            }
            if !self.read_block(&mut block)? {
                return Err(Error::Corrupt(format!(
                    "tar archive ends in the sparse map of the member at byte {at}"
                )));
            }
            push_entries(&block[..504], 21, &mut segments)?;
            extended = block[504] != 0;
        }
        Ok(Sparse::Map {
            real_size,
            segments,
        })
    }
}

/// The sparse layout (and real name) described by GNU.sparse.* PAX records.
fn pax_sparse(records: &[(String, Vec<u8>)], at: u64) -> Result<(Option<Vec<u8>>, Sparse)> {
    let get = |key: &str| {
        records
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    };
    let name = get("GNU.sparse.name").map(<[u8]>::to_vec);
    let major = get("GNU.sparse.major")
        .map(|v| parse_decimal(v, "GNU.sparse.major", at))
        .transpose()?;
    if let Some(major) = major {
        if major != 1 {
            return Err(Error::Unsupported(format!(
                "tar member at byte {at} uses GNU sparse format {major}.x; 0.0, 0.1 and 1.0 are supported"
            )));
        }
        let real_size = get("GNU.sparse.realsize")
            .ok_or_else(|| corrupt_field("GNU.sparse.realsize", at))
            .and_then(|v| parse_decimal(v, "GNU.sparse.realsize", at))?;
        return Ok((name, Sparse::MapInData { real_size }));
    }
    let real_size = get("GNU.sparse.size")
        .or_else(|| get("GNU.sparse.realsize"))
        .ok_or_else(|| corrupt_field("GNU.sparse.size", at))
        .and_then(|v| parse_decimal(v, "GNU.sparse.size", at))?;
    let mut segments = Vec::new();
    if let Some(map) = get("GNU.sparse.map") {
        // Format 0.1: "offset,length,offset,length,...".
        let numbers = map
            .split(|&b| b == b',')
            .filter(|n| !n.is_empty())
            .map(|n| parse_decimal(n, "GNU.sparse.map", at))
            .collect::<Result<Vec<_>>>()?;
        if numbers.len() % 2 != 0 {
            return Err(corrupt_field("GNU.sparse.map", at));
        }
        segments.extend(numbers.chunks(2).map(|c| (c[0], c[1])));
    } else {
        // Format 0.0: repeated offset/numbytes records, in order.
        let mut offset = None;
        for (key, value) in records {
            match key.as_str() {
                "GNU.sparse.offset" => offset = Some(parse_decimal(value, key, at)?),
                "GNU.sparse.numbytes" => {
                    let o = offset
                        .take()
                        .ok_or_else(|| corrupt_field("GNU.sparse.numbytes", at))?;
                    segments.push((o, parse_decimal(value, key, at)?));
                }
                _ => {}
            }
        }
    }
    Ok((
        name,
        Sparse::Map {
            real_size,
            segments,
        },
    ))
}

fn corrupt_field(field: &str, at: u64) -> Error {
    Error::Corrupt(format!(
        "tar header at byte {at} has an invalid {field} field"
    ))
}

fn until_nul(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(end) => &field[..end],
        None => field,
    }
}

fn verify_checksum(h: &[u8; BLOCK], at: u64) -> Result<()> {
    let stored = parse_number(&h[148..156], "checksum", at)?;
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored == unsigned || i64::try_from(stored).ok() == Some(signed) {
        Ok(())
    } else {
        Err(Error::Corrupt(format!(
            "tar header at byte {at} has a bad checksum (stored {stored}, computed {unsigned}); this is not a tar archive or it is damaged"
        )))
    }
}

/// Parses a numeric header field: octal text, or GNU base-256 when the top
/// bit of the first byte is set.
fn parse_number(field: &[u8], name: &str, at: u64) -> Result<u64> {
    if let Some(&first) = field.first() {
        if first & 0x80 != 0 {
            if first == 0xff {
                return Err(Error::Unsupported(format!(
                    "tar header at byte {at} has a negative {name}"
                )));
            }
            let mut value: u64 = u64::from(first & 0x7f);
            for &b in &field[1..] {
                value = value
                    .checked_mul(256)
                    .and_then(|v| v.checked_add(u64::from(b)))
                    .ok_or_else(|| corrupt_field(name, at))?;
            }
            return Ok(value);
        }
    }
    let text = until_nul(field);
    let digits: &[u8] = {
        let start = text.iter().position(|&b| b != b' ').unwrap_or(text.len());
        let rest = &text[start..];
        let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        if rest[end..].iter().any(|&b| b != b' ') {
            return Err(corrupt_field(name, at));
        }
        &rest[..end]
    };
    let mut value: u64 = 0;
    for &d in digits {
        if !(b'0'..=b'7').contains(&d) {
            return Err(corrupt_field(name, at));
        }
        value = value
            .checked_mul(8)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
            .ok_or_else(|| corrupt_field(name, at))?;
    }
    Ok(value)
}

fn parse_decimal(value: &[u8], name: &str, at: u64) -> Result<u64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| corrupt_field(name, at))
}

/// Parses a PAX time, "seconds[.fraction]", possibly negative.
fn parse_pax_time(value: &[u8], at: u64) -> Result<(i64, u32)> {
    let text = std::str::from_utf8(value).map_err(|_| corrupt_field("mtime", at))?;
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = int.parse().map_err(|_| corrupt_field("mtime", at))?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(corrupt_field("mtime", at));
    }
    let mut nanos: u32 = 0;
    for i in 0..9 {
        let digit = frac.as_bytes().get(i).map_or(0, |d| u32::from(d - b'0'));
        nanos = nanos * 10 + digit;
    }
    // "-1.5" is 1.5 s before the epoch: -2 s plus 0.5 s.
    if int.starts_with('-') && nanos > 0 {
        let secs = secs
            .checked_sub(1)
            .ok_or_else(|| corrupt_field("mtime", at))?;
        return Ok((secs, 1_000_000_000 - nanos));
    }
    Ok((secs, nanos))
}

/// Splits PAX extended header data into records, "<length> <key>=<value>\n",
/// where the value may contain anything, newlines included.
fn parse_pax(data: &[u8], at: u64) -> Result<Vec<(String, Vec<u8>)>> {
    let bad = || {
        Error::Corrupt(format!(
            "tar PAX header at byte {at} has a malformed record"
        ))
    };
    let mut records = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let space = rest
            .iter()
            .take(20)
            .position(|&b| b == b' ')
            .ok_or_else(bad)?;
        let length: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if length <= space + 1 || length > rest.len() || rest[length - 1] != b'\n' {
            return Err(bad());
        }
        let record = &rest[space + 1..length - 1];
        let equals = record.iter().position(|&b| b == b'=').ok_or_else(bad)?;
        let key = std::str::from_utf8(&record[..equals]).map_err(|_| bad())?;
        records.push((key.to_string(), record[equals + 1..].to_vec()));
        rest = &rest[length..];
    }
    Ok(records)
}

fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------
// POSIX ACLs: text (as GNU tar stores them) to the kernel's xattr format.
// ---------------------------------------------------------------------------

const ACL_XATTR_VERSION: u32 = 2;
const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_GROUP: u16 = 0x08;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;
const ACL_UNDEFINED_ID: u32 = u32::MAX;

/// Which id database an ACL name is looked up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdKind {
    User,
    Group,
}

/// Converts an ACL in text form (acl(5): "user::rw-\nuser:1234:r--\n...",
/// entries separated by newlines or commas, `#` comments) to the binary
/// `system.posix_acl_*` xattr value: a version 2 header, then sorted
/// (tag u16, perm u16, id u32) little-endian entries.
///
/// `resolve` maps a user or group name to its id.
fn acl_text_to_xattr(
    text: &str,
    mut resolve: impl FnMut(IdKind, &str) -> std::result::Result<u32, String>,
) -> std::result::Result<Vec<u8>, String> {
    let mut entries: Vec<(u16, u16, u32)> = Vec::new();
    for raw in text.split(['\n', ',']) {
        let entry = raw.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        let fields: Vec<&str> = entry.split(':').map(str::trim).collect();
        let (tag, qualifier, perms) = match fields.as_slice() {
            [tag, qualifier, perms] => (*tag, *qualifier, *perms),
            // "other::r--" is sometimes written "other:r--".
            [tag @ ("other" | "o" | "mask" | "m"), perms] => (*tag, "", *perms),
            _ => {
                return Err(format!(
                    "ACL entry {entry:?} is not tag:qualifier:permissions"
                ))
            }
        };
        let (tag, id) = match (tag, qualifier.is_empty()) {
            ("user" | "u", true) => (ACL_USER_OBJ, ACL_UNDEFINED_ID),
            ("user" | "u", false) => (
                ACL_USER,
                numeric_or(qualifier, || resolve(IdKind::User, qualifier))?,
            ),
            ("group" | "g", true) => (ACL_GROUP_OBJ, ACL_UNDEFINED_ID),
            ("group" | "g", false) => (
                ACL_GROUP,
                numeric_or(qualifier, || resolve(IdKind::Group, qualifier))?,
            ),
            ("mask" | "m", true) => (ACL_MASK, ACL_UNDEFINED_ID),
            ("other" | "o", true) => (ACL_OTHER, ACL_UNDEFINED_ID),
            _ => {
                return Err(format!(
                    "ACL entry {entry:?} has an unknown tag or a misplaced qualifier"
                ))
            }
        };
        let mut perm = 0u16;
        for c in perms.chars() {
            perm |= match c {
                'r' => 4,
                'w' => 2,
                'x' => 1,
                '-' => 0,
                _ => {
                    return Err(format!(
                        "ACL entry {entry:?} has an unknown permission {c:?}"
                    ))
                }
            };
        }
        entries.push((tag, perm, id));
    }
    entries.sort_by_key(|&(tag, _, id)| (tag, id));
    if entries
        .windows(2)
        .any(|w| w[0].0 == w[1].0 && w[0].2 == w[1].2)
    {
        return Err("ACL has the same entry twice".into());
    }
    let has = |tag| entries.iter().any(|e| e.0 == tag);
    if !(has(ACL_USER_OBJ) && has(ACL_GROUP_OBJ) && has(ACL_OTHER)) {
        return Err("ACL lacks one of the user::, group:: and other:: entries".into());
    }
    if (has(ACL_USER) || has(ACL_GROUP)) && !has(ACL_MASK) {
        return Err("ACL names users or groups but has no mask:: entry".into());
    }
    let mut out = Vec::with_capacity(4 + 8 * entries.len());
    out.extend_from_slice(&ACL_XATTR_VERSION.to_le_bytes());
    for (tag, perm, id) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    Ok(out)
}

fn numeric_or(
    qualifier: &str,
    resolve: impl FnOnce() -> std::result::Result<u32, String>,
) -> std::result::Result<u32, String> {
    if qualifier.bytes().all(|b| b.is_ascii_digit()) {
        match qualifier.parse::<u32>() {
            Ok(id) if id != ACL_UNDEFINED_ID => Ok(id),
            _ => Err(format!("ACL id {qualifier} is out of range")),
        }
    } else {
        resolve()
    }
}

// ---------------------------------------------------------------------------
// Writing into the target, one component at a time.
// ---------------------------------------------------------------------------

fn os_error() -> io::Error {
    io::Error::last_os_error()
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(os_error())
    } else {
        Ok(())
    }
}

fn open_at(dir: RawFd, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; openat does not keep the pointer.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            libc::c_uint::from(mode),
        )
    };
    if fd < 0 {
        return Err(os_error());
    }
    // SAFETY: openat just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_dir_at(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    open_at(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
}

fn lstat_at(dir: RawFd, name: &CStr) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `name` is NUL-terminated and `st` is valid for one stat.
    check(unsafe {
        libc::fstatat(
            dir,
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

fn file_type(st: &libc::stat) -> libc::mode_t {
    st.st_mode & libc::S_IFMT
}

fn timespecs(mtime: (i64, u32)) -> [libc::timespec; 2] {
    [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: mtime.0 as libc::time_t,
            tv_nsec: mtime.1 as libc::c_long,
        },
    ]
}

/// A path inside the target, split into checked components.
struct EntryPath {
    components: Vec<CString>,
    display: String,
}

/// Why an archive path cannot name something inside the target.
enum PathProblem {
    Absolute,
    DotDot,
    Nul,
}

impl EntryPath {
    fn parse(raw: &[u8]) -> std::result::Result<Self, PathProblem> {
        if raw.starts_with(b"/") {
            return Err(PathProblem::Absolute);
        }
        let mut components = Vec::new();
        for component in raw.split(|&b| b == b'/') {
            match component {
                b"" | b"." => {}
                b".." => return Err(PathProblem::DotDot),
                _ => components.push(CString::new(component).map_err(|_| PathProblem::Nul)?),
            }
        }
        let display = components
            .iter()
            .map(|c| c.to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        let display = if display.is_empty() {
            ".".to_string()
        } else {
            display
        };
        Ok(EntryPath {
            components,
            display,
        })
    }

    fn split_last(&self) -> Option<(&CString, &[CString])> {
        self.components.split_last()
    }

    fn join_onto(&self, base: &Path) -> PathBuf {
        let mut path = base.to_path_buf();
        for c in &self.components {
            path.push(OsStr::from_bytes(c.as_bytes()));
        }
        path
    }
}

fn path_error(problem: PathProblem, raw: &[u8], what: &str) -> Error {
    let shown = String::from_utf8_lossy(raw);
    match problem {
        PathProblem::Absolute => Error::Refused(format!(
            "{what} `{shown}` is an absolute path; entries must stay inside the target directory"
        )),
        PathProblem::DotDot => Error::Refused(format!(
            "{what} `{shown}` has a `..` component; entries must stay inside the target directory"
        )),
        PathProblem::Nul => Error::Corrupt(format!("{what} `{shown}` contains a NUL byte")),
    }
}

struct Root {
    dir: OwnedFd,
    path: PathBuf,
}

impl Root {
    fn open(target: &Path) -> Result<Root> {
        let name = CString::new(target.as_os_str().as_bytes()).map_err(|_| {
            Error::Invalid(format!("target directory {target:?} contains a NUL byte"))
        })?;
        let dir = open_at(libc::AT_FDCWD, &name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .with_context(|| format!("opening the target directory {}", target.display()))?;
        Ok(Root {
            dir,
            path: target.to_path_buf(),
        })
    }

    /// Opens the directory made of `components`, refusing symbolic links on
    /// the way. Missing directories are created (0755) when `create`, else
    /// the result is None.
    fn open_directory(
        &self,
        components: &[CString],
        create: bool,
        whole: &str,
    ) -> Result<Option<OwnedFd>> {
        let mut current = self
            .dir
            .try_clone()
            .context("duplicating the target directory descriptor")?;
        for (i, component) in components.iter().enumerate() {
            let prefix = || {
                components[..=i]
                    .iter()
                    .map(|c| c.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/")
            };
            let at = current.as_raw_fd();
            let next = match open_dir_at(at, component) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    if !create {
                        return Ok(None);
                    }
                    // SAFETY: `component` is NUL-terminated.
                    let made = check(unsafe { libc::mkdirat(at, component.as_ptr(), 0o755) });
                    match made {
                        Err(e) if e.raw_os_error() != Some(libc::EEXIST) => {
                            return Err(Error::io(
                                format!("creating directory `{}` in the target", prefix()),
                                e,
                            ))
                        }
                        _ => {}
                    }
                    let fd = open_dir_at(at, component).with_context(|| {
                        format!("opening directory `{}` in the target", prefix())
                    })?;
                    // The umask must not decide the mode of directories the archive implies.
                    // SAFETY: fchmod on a descriptor we own.
                    check(unsafe { libc::fchmod(fd.as_raw_fd(), 0o755) })
                        .with_context(|| format!("setting the mode of directory `{}`", prefix()))?;
                    fd
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                    let is_link =
                        lstat_at(at, component).is_ok_and(|st| file_type(&st) == libc::S_IFLNK);
                    return Err(if is_link {
                        Error::Refused(format!(
                            "entry `{whole}` goes through the symbolic link `{}`; writing through symbolic links is refused",
                            prefix()
                        ))
                    } else {
                        Error::Refused(format!(
                            "entry `{whole}` needs `{}` to be a directory, but the target has something else there",
                            prefix()
                        ))
                    });
                }
                Err(e) => {
                    return Err(Error::io(
                        format!("opening directory `{}` in the target", prefix()),
                        e,
                    ))
                }
            };
            current = next;
        }
        Ok(Some(current))
    }

    /// Opens the parent directory of `path` (creating it as needed) and
    /// returns it with the last component.
    fn parent_of<'p>(&self, path: &'p EntryPath) -> Result<(OwnedFd, &'p CString)> {
        let (name, parents) = path.split_last().ok_or_else(|| {
            Error::Refused("an archive entry names the target directory itself".into())
        })?;
        let parent = self
            .open_directory(parents, true, &path.display)?
            .ok_or_else(|| {
                Error::Invalid(format!("could not create the parent of `{}`", path.display))
            })?;
        Ok((parent, name))
    }
}

/// Removes whatever is at `name` so that a new entry can take its place;
/// never follows it.
fn remove_existing(parent: RawFd, name: &CStr, display: &str, kind: Kind) -> Result<()> {
    let st = match lstat_at(parent, name) {
        Ok(st) => st,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => {
            return Err(Error::io(
                format!("inspecting `{display}` in the target"),
                e,
            ))
        }
    };
    let flags = if file_type(&st) == libc::S_IFDIR {
        libc::AT_REMOVEDIR
    } else {
        0
    };
    // SAFETY: `name` is NUL-terminated.
    match check(unsafe { libc::unlinkat(parent, name.as_ptr(), flags) }) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => Err(Error::Invalid(format!(
            "`{display}` is a non-empty directory in the target, so the archive's {} of that name cannot replace it",
            kind.describe()
        ))),
        Err(e) => Err(Error::io(format!("removing the existing `{display}` from the target"), e)),
    }
}

/// Runs `create`; if something is already there, removes it and tries once more.
fn create_replacing(
    parent: RawFd,
    name: &CStr,
    display: &str,
    kind: Kind,
    mut create: impl FnMut() -> io::Result<()>,
) -> Result<()> {
    match create() {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            remove_existing(parent, name, display, kind)?;
            create().with_context(|| format!("creating {} `{display}`", kind.describe()))
        }
        other => other.with_context(|| format!("creating {} `{display}`", kind.describe())),
    }
}

/// Metadata to apply to an entry once it exists.
struct Metadata {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, u32),
    /// Extended attributes, binary ACL xattrs included.
    xattrs: Vec<(CString, Vec<u8>)>,
}

fn is_acl_xattr(name: &[u8]) -> bool {
    name == b"system.posix_acl_access" || name == b"system.posix_acl_default"
}

struct PendingDirectory {
    path: EntryPath,
    metadata: Metadata,
}

struct PendingAcl {
    path: EntryPath,
    kind: AclKind,
    text: String,
}

struct Extractor {
    root: Root,
    options: ExtractOptions,
    is_root: bool,
    report: ExtractReport,
    directories: Vec<PendingDirectory>,
    text_acls: Vec<PendingAcl>,
}

impl Extractor {
    fn extract_member<R: Read>(&mut self, tar: &mut TarReader<R>, member: Member) -> Result<()> {
        let path =
            EntryPath::parse(&member.path).map_err(|p| path_error(p, &member.path, "entry"))?;
        let metadata = self.metadata(&member, &path)?;
        match member.kind {
            Kind::Directory => self.directory(path, metadata),
            Kind::File => self.file(tar, &member, &path, &metadata),
            Kind::Symlink => self.symlink(&member, &path, &metadata),
            Kind::Hardlink => self.hardlink(&member, &path),
            Kind::CharDevice | Kind::BlockDevice | Kind::Fifo => {
                self.special(&member, &path, &metadata)
            }
        }
    }

    /// Sorts the member's xattrs and ACLs by the options, queueing text ACLs.
    fn metadata(&mut self, member: &Member, path: &EntryPath) -> Result<Metadata> {
        let mut xattrs = Vec::new();
        for (name, value) in &member.xattrs {
            let wanted = if is_acl_xattr(name) {
                self.options.preserve_acls
            } else {
                self.options.preserve_xattrs
            };
            if wanted {
                let name = CString::new(name.clone()).map_err(|_| {
                    Error::Corrupt(format!(
                        "an extended attribute name of `{}` contains a NUL byte",
                        path.display
                    ))
                })?;
                xattrs.push((name, value.clone()));
            }
        }
        if self.options.preserve_acls {
            for (kind, text) in &member.text_acls {
                let binary_present = member
                    .xattrs
                    .iter()
                    .any(|(n, _)| n == kind.xattr_name().as_bytes());
                if binary_present || text.is_empty() {
                    continue;
                }
                let text = String::from_utf8(text.clone()).map_err(|_| {
                    Error::Corrupt(format!(
                        "the ACL of `{}` in the archive is not UTF-8 text",
                        path.display
                    ))
                })?;
                self.text_acls.push(PendingAcl {
                    path: EntryPath {
                        components: path.components.clone(),
                        display: path.display.clone(),
                    },
                    kind: *kind,
                    text,
                });
            }
        }
        Ok(Metadata {
            mode: member.mode,
            uid: member.uid as u32,
            gid: member.gid as u32,
            mtime: member.mtime,
            xattrs,
        })
    }

    fn directory(&mut self, path: EntryPath, metadata: Metadata) -> Result<()> {
        if let Some((name, parents)) = path.split_last() {
            let parent = self
                .root
                .open_directory(parents, true, &path.display)?
                .ok_or_else(|| {
                    Error::Invalid(format!("could not create the parent of `{}`", path.display))
                })?;
            let fd = parent.as_raw_fd();
            // SAFETY: `name` is NUL-terminated.
            let mkdir = || check(unsafe { libc::mkdirat(fd, name.as_ptr(), 0o700) });
            match mkdir() {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    let is_dir = lstat_at(fd, name).is_ok_and(|st| file_type(&st) == libc::S_IFDIR);
                    if !is_dir {
                        create_replacing(fd, name, &path.display, Kind::Directory, mkdir)?;
                    }
                }
                Err(e) => {
                    return Err(Error::io(
                        format!("creating directory `{}`", path.display),
                        e,
                    ))
                }
            }
        }
        self.report.directories += 1;
        self.directories.push(PendingDirectory { path, metadata });
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        tar: &mut TarReader<R>,
        member: &Member,
        path: &EntryPath,
        metadata: &Metadata,
    ) -> Result<()> {
        let (parent, name) = self.root.parent_of(path)?;
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
        let mut created = None;
        create_replacing(parent.as_raw_fd(), name, &path.display, Kind::File, || {
            created = Some(open_at(parent.as_raw_fd(), name, flags, 0o600)?);
            Ok(())
        })?;
        let fd = created
            .ok_or_else(|| Error::Invalid(format!("could not create `{}`", path.display)))?;
        let mut file = File::from(fd);
        let display = &path.display;
        match &member.sparse {
            None => {
                let size = tar.remaining;
                self.report.bytes += copy_data(tar, &mut file, size, display)?;
            }
            Some(Sparse::Map {
                real_size,
                segments,
            }) => {
                self.write_sparse(tar, &mut file, *real_size, segments, display)?;
            }
            Some(Sparse::MapInData { real_size }) => {
                let segments = read_sparse_map(tar, display)?;
                self.write_sparse(tar, &mut file, *real_size, &segments, display)?;
            }
        }
        self.apply_to_fd(file.as_raw_fd(), metadata, display)?;
        self.report.files += 1;
        Ok(())
    }

    fn write_sparse<R: Read>(
        &mut self,
        tar: &mut TarReader<R>,
        file: &mut File,
        real_size: u64,
        segments: &[(u64, u64)],
        display: &str,
    ) -> Result<()> {
        let mut end = 0u64;
        for &(offset, length) in segments {
            let segment_end = offset
                .checked_add(length)
                .filter(|&e| e <= real_size && offset >= end);
            let Some(segment_end) = segment_end else {
                return Err(Error::Corrupt(format!(
                    "sparse map of `{display}` has a segment ({offset}, {length}) out of order or past the file's size {real_size}"
                )));
            };
            if length > 0 {
                file.seek(SeekFrom::Start(offset))
                    .with_context(|| format!("seeking in `{display}`"))?;
                self.report.bytes += copy_data(tar, file, length, display)?;
            }
            end = segment_end;
        }
        if tar.remaining != 0 {
            return Err(Error::Corrupt(format!(
                "sparse map of `{display}` covers fewer bytes than the archive holds for it"
            )));
        }
        file.set_len(real_size)
            .with_context(|| format!("setting the size of `{display}` to {real_size} bytes"))
    }

    fn symlink(&mut self, member: &Member, path: &EntryPath, metadata: &Metadata) -> Result<()> {
        if member.link.is_empty() {
            return Err(Error::Corrupt(format!(
                "symbolic link `{}` has an empty target",
                path.display
            )));
        }
        if !member.link.starts_with(b"/") {
            let mut depth = path.components.len() as i64 - 1;
            for component in member.link.split(|&b| b == b'/') {
                match component {
                    b"" | b"." => {}
                    b".." => depth -= 1,
                    _ => depth += 1,
                }
                if depth < 0 {
                    return Err(Error::Refused(format!(
                        "symbolic link `{}` points to `{}`, which climbs above the root filesystem; relative symbolic links must stay inside it",
                        path.display,
                        String::from_utf8_lossy(&member.link)
                    )));
                }
            }
        }
        let target = CString::new(member.link.clone()).map_err(|_| {
            Error::Corrupt(format!(
                "symbolic link `{}` has a NUL byte in its target",
                path.display
            ))
        })?;
        let (parent, name) = self.root.parent_of(path)?;
        let fd = parent.as_raw_fd();
        create_replacing(fd, name, &path.display, Kind::Symlink, || {
            // SAFETY: both strings are NUL-terminated.
            check(unsafe { libc::symlinkat(target.as_ptr(), fd, name.as_ptr()) })
        })?;
        self.apply_at(fd, name, path, metadata, Kind::Symlink)?;
        self.report.symlinks += 1;
        Ok(())
    }

    fn hardlink(&mut self, member: &Member, path: &EntryPath) -> Result<()> {
        let shown_target = String::from_utf8_lossy(&member.link).into_owned();
        let refuse = |why: &str| {
            Error::Refused(format!(
                "hard link `{}` points to `{shown_target}`, {why}; hard links must point to entries extracted earlier",
                path.display
            ))
        };
        let source = match EntryPath::parse(&member.link) {
            Ok(source) => source,
            Err(PathProblem::Nul) => {
                return Err(path_error(
                    PathProblem::Nul,
                    &member.link,
                    "hard link target",
                ))
            }
            Err(_) => return Err(refuse("outside the archive's root")),
        };
        let Some((source_name, source_parents)) = source.split_last() else {
            return Err(refuse("the target directory itself"));
        };
        let source_parent = self
            .root
            .open_directory(source_parents, false, &source.display)?
            .ok_or_else(|| refuse("which does not exist"))?;
        let source_fd = source_parent.as_raw_fd();
        let source_stat = match lstat_at(source_fd, source_name) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Err(refuse("which does not exist"))
            }
            Err(e) => {
                return Err(Error::io(
                    format!("inspecting `{}` in the target", source.display),
                    e,
                ))
            }
        };
        if file_type(&source_stat) == libc::S_IFDIR {
            return Err(refuse("a directory"));
        }
        let (parent, name) = self.root.parent_of(path)?;
        let fd = parent.as_raw_fd();
        let same = lstat_at(fd, name)
            .is_ok_and(|st| st.st_dev == source_stat.st_dev && st.st_ino == source_stat.st_ino);
        if !same {
            create_replacing(fd, name, &path.display, Kind::Hardlink, || {
                // SAFETY: both names are NUL-terminated; flags 0 links a
                // symbolic link itself rather than what it points to.
                check(unsafe {
                    libc::linkat(source_fd, source_name.as_ptr(), fd, name.as_ptr(), 0)
                })
            })?;
        }
        self.report.hardlinks += 1;
        Ok(())
    }

    fn special(&mut self, member: &Member, path: &EntryPath, metadata: &Metadata) -> Result<()> {
        let (file_type, counter) = match member.kind {
            Kind::CharDevice => (libc::S_IFCHR, &mut self.report.devices),
            Kind::BlockDevice => (libc::S_IFBLK, &mut self.report.devices),
            _ => (libc::S_IFIFO, &mut self.report.fifos),
        };
        if file_type != libc::S_IFIFO && !self.is_root {
            return Err(Error::Refused(format!(
                "entry `{}` is a {}; device nodes are only created when running as root",
                path.display,
                member.kind.describe()
            )));
        }
        *counter += 1;
        let (major, minor) = member.device;
        let (Ok(major), Ok(minor)) = (u32::try_from(major), u32::try_from(minor)) else {
            return Err(Error::Corrupt(format!(
                "device `{}` has an out-of-range number {major}:{minor}",
                path.display
            )));
        };
        let device = libc::makedev(major, minor);
        let (parent, name) = self.root.parent_of(path)?;
        let fd = parent.as_raw_fd();
        create_replacing(fd, name, &path.display, member.kind, || {
            // SAFETY: `name` is NUL-terminated.
            check(unsafe { libc::mknodat(fd, name.as_ptr(), file_type | 0o600, device) })
        })?;
        self.apply_at(fd, name, path, metadata, member.kind)
    }

    /// Owner, mode, xattrs, then mtime, on an open regular file or directory.
    /// The order matters: chown clears setuid/setgid and file capabilities,
    /// so the mode and the xattrs come after it.
    fn apply_to_fd(&mut self, fd: RawFd, metadata: &Metadata, display: &str) -> Result<()> {
        if self.options.preserve_owners {
            // SAFETY: fchown on a descriptor we own.
            check(unsafe { libc::fchown(fd, metadata.uid, metadata.gid) }).with_context(|| {
                format!(
                    "setting the owner of `{display}` to {}:{}",
                    metadata.uid, metadata.gid
                )
            })?;
        }
        // SAFETY: fchmod on a descriptor we own.
        check(unsafe { libc::fchmod(fd, metadata.mode as libc::mode_t) })
            .with_context(|| format!("setting the mode of `{display}` to {:o}", metadata.mode))?;
        for (name, value) in &metadata.xattrs {
            // SAFETY: `name` is NUL-terminated and `value` is valid for its length.
            let ret = unsafe {
                libc::fsetxattr(fd, name.as_ptr(), value.as_ptr().cast(), value.len(), 0)
            };
            check(ret).with_context(|| xattr_context(name, display))?;
            self.count_xattr(name);
        }
        let times = timespecs(metadata.mtime);
        // SAFETY: `times` holds two timespecs as futimens requires.
        check(unsafe { libc::futimens(fd, times.as_ptr()) })
            .with_context(|| format!("setting the modification time of `{display}`"))
    }

    /// The same as [`apply_to_fd`] for entries that cannot be opened:
    /// symbolic links, devices and fifos. Nothing follows symbolic links.
    fn apply_at(
        &mut self,
        parent: RawFd,
        name: &CStr,
        path: &EntryPath,
        metadata: &Metadata,
        kind: Kind,
    ) -> Result<()> {
        let display = &path.display;
        if self.options.preserve_owners {
            // SAFETY: `name` is NUL-terminated.
            let ret = unsafe {
                libc::fchownat(
                    parent,
                    name.as_ptr(),
                    metadata.uid,
                    metadata.gid,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            check(ret).with_context(|| {
                format!(
                    "setting the owner of `{display}` to {}:{}",
                    metadata.uid, metadata.gid
                )
            })?;
        }
        if kind != Kind::Symlink {
            // SAFETY: `name` is NUL-terminated; we created it just now, it is not a link.
            check(unsafe {
                libc::fchmodat(parent, name.as_ptr(), metadata.mode as libc::mode_t, 0)
            })
            .with_context(|| format!("setting the mode of `{display}` to {:o}", metadata.mode))?;
        }
        if !metadata.xattrs.is_empty() {
            let full = CString::new(path.join_onto(&self.root.path).into_os_string().into_vec())
                .map_err(|_| {
                    Error::Invalid(format!("the path of `{display}` contains a NUL byte"))
                })?;
            for (xname, value) in &metadata.xattrs {
                // SAFETY: both strings are NUL-terminated and `value` is valid for its length.
                let ret = unsafe {
                    libc::lsetxattr(
                        full.as_ptr(),
                        xname.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        0,
                    )
                };
                check(ret).with_context(|| xattr_context(xname, display))?;
                self.count_xattr(xname);
            }
        }
        let times = timespecs(metadata.mtime);
        // SAFETY: `name` is NUL-terminated and `times` holds two timespecs.
        check(unsafe {
            libc::utimensat(
                parent,
                name.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .with_context(|| format!("setting the modification time of `{display}`"))
    }

    fn count_xattr(&mut self, name: &CStr) {
        if is_acl_xattr(name.to_bytes()) {
            self.report.acls += 1;
        } else {
            self.report.xattrs += 1;
        }
    }

    /// Applies directory metadata (deepest first, so that setting a
    /// directory's mtime comes after everything inside it changed) and the
    /// ACLs stored as text.
    fn finish(mut self) -> Result<ExtractReport> {
        let mut directories = std::mem::take(&mut self.directories);
        directories.sort_by_key(|d| std::cmp::Reverse(d.path.components.len()));
        for pending in directories {
            let Some(fd) = self.open_existing(&pending.path, true)? else {
                // A later entry replaced this directory.
                continue;
            };
            self.apply_to_fd(fd.as_raw_fd(), &pending.metadata, &pending.path.display)?;
        }

        let mut ids = IdDatabase::default();
        for pending in std::mem::take(&mut self.text_acls) {
            let display = &pending.path.display;
            let value = acl_text_to_xattr(&pending.text, |kind, name| {
                ids.lookup(&self.root, kind, name)
            })
            .map_err(|why| {
                Error::Corrupt(format!("the ACL of `{display}` cannot be used: {why}"))
            })?;
            let name = CString::new(pending.kind.xattr_name())
                .map_err(|_| Error::Invalid("ACL name".into()))?;
            match self.open_existing(&pending.path, false)? {
                Some(fd) => {
                    // SAFETY: `name` is NUL-terminated and `value` is valid for its length.
                    let ret = unsafe {
                        libc::fsetxattr(
                            fd.as_raw_fd(),
                            name.as_ptr(),
                            value.as_ptr().cast(),
                            value.len(),
                            0,
                        )
                    };
                    check(ret).with_context(|| xattr_context(&name, display))?;
                }
                None => {
                    let full = CString::new(
                        pending
                            .path
                            .join_onto(&self.root.path)
                            .into_os_string()
                            .into_vec(),
                    )
                    .map_err(|_| {
                        Error::Invalid(format!("the path of `{display}` contains a NUL byte"))
                    })?;
                    // SAFETY: both strings are NUL-terminated and `value` is valid for its length.
                    let ret = unsafe {
                        libc::lsetxattr(
                            full.as_ptr(),
                            name.as_ptr(),
                            value.as_ptr().cast(),
                            value.len(),
                            0,
                        )
                    };
                    check(ret).with_context(|| xattr_context(&name, display))?;
                }
            }
            self.report.acls += 1;
        }
        Ok(self.report)
    }

    /// Opens an extracted directory (or, unless `directory_only`, regular
    /// file) without following links. None when it is something else now.
    fn open_existing(&self, path: &EntryPath, directory_only: bool) -> Result<Option<OwnedFd>> {
        let Some((name, parents)) = path.split_last() else {
            return Ok(Some(
                self.root
                    .dir
                    .try_clone()
                    .context("duplicating the target directory descriptor")?,
            ));
        };
        let Some(parent) = self.root.open_directory(parents, false, &path.display)? else {
            return Ok(None);
        };
        let st = match lstat_at(parent.as_raw_fd(), name) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => {
                return Err(Error::io(
                    format!("inspecting `{}` in the target", path.display),
                    e,
                ))
            }
        };
        let flags = match file_type(&st) {
            libc::S_IFDIR => libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            libc::S_IFREG if !directory_only => libc::O_RDONLY | libc::O_NOFOLLOW,
            _ => return Ok(None),
        };
        open_at(parent.as_raw_fd(), name, flags, 0)
            .map(Some)
            .with_context(|| format!("opening `{}` in the target", path.display))
    }
}

fn xattr_context(name: &CStr, display: &str) -> String {
    format!(
        "setting extended attribute `{}` on `{display}` (the target filesystem must support it, and trusted.*/security.* need root)",
        name.to_string_lossy()
    )
}

/// Copies exactly `size` bytes of the current member into `out`.
fn copy_data<R: Read>(
    tar: &mut TarReader<R>,
    out: &mut File,
    size: u64,
    display: &str,
) -> Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = tar.read_data(&mut buf[..want], display)?;
        if n == 0 {
            return Err(Error::Corrupt(format!(
                "`{display}` is shorter in the tar archive than its headers say"
            )));
        }
        out.write_all(&buf[..n])
            .with_context(|| format!("writing `{display}`"))?;
        left -= n as u64;
    }
    Ok(size)
}

/// Reads a GNU sparse 1.0 map from the start of the member's data: decimal
/// lines (count, then offset and length pairs), padded to a block.
fn read_sparse_map<R: Read>(tar: &mut TarReader<R>, display: &str) -> Result<Vec<(u64, u64)>> {
    let mut consumed = 0u64;
    let mut read_line = |tar: &mut TarReader<R>| -> Result<u64> {
        let mut digits = Vec::new();
        loop {
            let mut byte = [0u8; 1];
            tar.read_data_exact(&mut byte, display)?;
            consumed += 1;
            match byte[0] {
                b'\n' => break,
                b @ b'0'..=b'9' if digits.len() < 20 => digits.push(b),
                _ => {
                    return Err(Error::Corrupt(format!(
                        "sparse map of `{display}` in the tar archive is malformed"
                    )))
                }
            }
        }
        parse_decimal(&digits, "sparse map", 0).map_err(|_| {
            Error::Corrupt(format!(
                "sparse map of `{display}` in the tar archive is malformed"
            ))
        })
    };
    let count = read_line(tar)?;
    let mut segments = Vec::new();
    for _ in 0..count {
        let offset = read_line(tar)?;
        let length = read_line(tar)?;
        segments.push((offset, length));
    }
    let padding = (BLOCK as u64 - consumed % BLOCK as u64) % BLOCK as u64;
    let mut pad = vec![0u8; padding as usize];
    tar.read_data_exact(&mut pad, display)?;
    Ok(segments)
}

/// User and group names of the new root, loaded when an ACL first needs them.
#[derive(Default)]
struct IdDatabase {
    users: Option<HashMap<String, u32>>,
    groups: Option<HashMap<String, u32>>,
}

impl IdDatabase {
    fn lookup(
        &mut self,
        root: &Root,
        kind: IdKind,
        name: &str,
    ) -> std::result::Result<u32, String> {
        let (slot, file) = match kind {
            IdKind::User => (&mut self.users, "passwd"),
            IdKind::Group => (&mut self.groups, "group"),
        };
        if slot.is_none() {
            *slot = Some(load_id_file(root, file)?);
        }
        let what = match kind {
            IdKind::User => "user",
            IdKind::Group => "group",
        };
        slot.as_ref()
            .and_then(|map| map.get(name).copied())
            .ok_or_else(|| {
                format!("it names {what} `{name}`, which the new root's etc/{file} does not define")
            })
    }
}

/// Reads `etc/<file>` of the new root ("name:x:id:..." lines) without
/// following symbolic links.
fn load_id_file(root: &Root, file: &str) -> std::result::Result<HashMap<String, u32>, String> {
    let unavailable =
        |why: String| format!("it names users or groups and the new root's etc/{file} {why}");
    let etc = [CString::new("etc").map_err(|e| e.to_string())?];
    let dir = root
        .open_directory(&etc, false, "etc")
        .map_err(|e| unavailable(format!("cannot be read ({e})")))?
        .ok_or_else(|| unavailable("does not exist".into()))?;
    let name = CString::new(file).map_err(|e| e.to_string())?;
    let fd = open_at(dir.as_raw_fd(), &name, libc::O_RDONLY | libc::O_NOFOLLOW, 0)
        .map_err(|e| unavailable(format!("cannot be opened ({e})")))?;
    let mut text = Vec::new();
    File::from(fd)
        .take(MAX_METADATA * 16)
        .read_to_end(&mut text)
        .map_err(|e| unavailable(format!("cannot be read ({e})")))?;
    let mut map = HashMap::new();
    for line in String::from_utf8_lossy(&text).lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if let (Some(name), Some(Ok(id))) =
            (fields.first(), fields.get(2).map(|id| id.parse::<u32>()))
        {
            map.entry(name.to_string()).or_insert(id);
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_text_becomes_the_kernel_format() {
        let text = "user::rw-\nuser:1234:r--\ngroup::r--\ngroup:5678:rw-\nmask::rw-\nother::r--\n";
        let value = acl_text_to_xattr(text, |_, name| Err(name.to_string())).unwrap();
        let mut expected = vec![2, 0, 0, 0];
        for (tag, perm, id) in [
            (1u16, 6u16, u32::MAX),
            (2, 4, 1234),
            (4, 4, u32::MAX),
            (8, 6, 5678),
            (0x10, 6, u32::MAX),
            (0x20, 4, u32::MAX),
        ] {
            expected.extend_from_slice(&tag.to_le_bytes());
            expected.extend_from_slice(&perm.to_le_bytes());
            expected.extend_from_slice(&id.to_le_bytes());
        }
        assert_eq!(value, expected);
    }

    #[test]
    fn acl_names_are_resolved_and_entries_sorted() {
        let text = "u::rwx,g::r-x,o::---,m::rwx,u:daemon:rw-#effective:rw-";
        let value = acl_text_to_xattr(text, |kind, name| {
            assert_eq!((kind, name), (IdKind::User, "daemon"));
            Ok(1)
        })
        .unwrap();
        assert_eq!(&value[4..8], &[1, 0, 7, 0]);
        assert_eq!(&value[12..20], &[2, 0, 6, 0, 1, 0, 0, 0]);
    }

    #[test]
    fn broken_acls_are_refused() {
        let none = |_: IdKind, n: &str| Err(format!("no {n}"));
        assert!(acl_text_to_xattr("user::rw-\nuser:1:r--\ngroup::r--\nother::r--", none).is_err());
        assert!(acl_text_to_xattr("user::rw-\nother::r--", none).is_err());
        assert!(acl_text_to_xattr("user::rwz\ngroup::r--\nother::r--", none).is_err());
        assert!(acl_text_to_xattr("user::rw-\nuser::r--\ngroup::r--\nother::r--", none).is_err());
    }

    #[test]
    fn pax_values_may_contain_newlines() {
        let data = b"30 SCHILY.acl.access=a\nb\nc\nd\n\n12 path=xyz\n";
        let records = parse_pax(data, 0).unwrap();
        assert_eq!(
            records[0],
            ("SCHILY.acl.access".to_string(), b"a\nb\nc\nd\n".to_vec())
        );
        assert_eq!(records[1], ("path".to_string(), b"xyz".to_vec()));
        assert!(parse_pax(b"99 path=x\n", 0).is_err());
    }

    #[test]
    fn numbers_and_times_parse() {
        assert_eq!(parse_number(b"0000644\0", "mode", 0).unwrap(), 0o644);
        assert_eq!(parse_number(b"  644 \0\0", "mode", 0).unwrap(), 0o644);
        assert_eq!(
            parse_number(&[0x80, 0, 0, 0, 0, 0, 1, 0], "size", 0).unwrap(),
            256
        );
        assert!(parse_number(b"0009\0", "mode", 0).is_err());
        assert_eq!(
            parse_pax_time(b"1796043587.93876711", 0).unwrap(),
            (1796043587, 938767110)
        );
        assert_eq!(parse_pax_time(b"-1.5", 0).unwrap(), (-2, 500_000_000));
    }

    #[test]
    fn archive_paths_are_normalised_or_refused() {
        assert!(EntryPath::parse(b"./a//b/./c").is_ok_and(|p| p.display == "a/b/c"));
        assert!(matches!(
            EntryPath::parse(b"/etc"),
            Err(PathProblem::Absolute)
        ));
        assert!(matches!(
            EntryPath::parse(b"a/../b"),
            Err(PathProblem::DotDot)
        ));
    }
}
