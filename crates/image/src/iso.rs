//! Reading ISO9660 images: listing them and taking files out of them.
//!
//! Ferric needs files from ISO images it did not make: the kernel and initrd
//! of a boot ISO, `.treeinfo` of an installer ISO, the files of a config
//! drive. [`IsoImage`] is a small reader of our own over any `Read + Seek`
//! handle (ECMA-119, with Rock Ridge names, symlinks and modes, and Joliet
//! names when there is no Rock Ridge), written so that a hostile image can
//! only produce a clean [`Error`]:
//!
//! - every extent, directory record and Rock Ridge continuation area is
//!   checked against the size of the image before it is read, and nothing
//!   is allocated from a size field that was not checked first;
//! - the directory tree is bounded ([`MAX_DEPTH`], [`MAX_ENTRIES`]) and a
//!   directory record that points back at a directory already listed (a
//!   loop) is refused;
//! - [`IsoImage::extract`] checks every name and symlink target before it
//!   writes anything, and then writes one component at a time with
//!   `openat(O_NOFOLLOW)`, so nothing is ever written through a symbolic link
//!   (one from the image or one already in the target).

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// ISO9660 logical sectors: directory records never cross one.
const SECTOR: u64 = 2048;
/// The system area (16 sectors) comes before the first volume descriptor.
const FIRST_DESCRIPTOR: u64 = 16;
/// Volume descriptors read before giving up on finding a terminator.
const MAX_DESCRIPTORS: u64 = 64;
/// The deepest directory nesting listed. ECMA-119 allows 8 levels; xorriso
/// writes deeper trees, real images stay far below this.
pub const MAX_DEPTH: usize = 64;
/// The most entries listed in one image.
pub const MAX_ENTRIES: usize = 1_000_000;
/// The most bytes of path names one listing may hold: with names from
/// continuation areas (which records may share) a small image could
/// otherwise describe gigabytes of paths.
const MAX_PATH_BYTES: usize = 128 * 1024 * 1024;
/// The longest name accepted while listing. Linux itself takes 255 bytes
/// (checked when extracting); Joliet names of 103 characters can be longer
/// once in UTF-8.
const MAX_NAME: usize = 1024;
/// The longest name a Linux filesystem takes.
const NAME_MAX: usize = 255;
/// Rock Ridge continuation areas followed for one record, and their bytes.
const MAX_CONTINUATIONS: usize = 32;
const MAX_SYSTEM_USE: usize = 64 * 1024;
/// Chunk used when copying file data.
const COPY_CHUNK: usize = 64 * 1024;

/// What an entry of the image is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IsoEntryKind {
    File,
    Directory,
    /// A Rock Ridge symbolic link, with its target as written in the image.
    Symlink(String),
}

/// One file, directory or symbolic link of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoEntry {
    /// The absolute path in the image, `/`-separated, e.g.
    /// `/isolinux/vmlinuz`: Rock Ridge names when the image has them, else
    /// Joliet names, else ISO9660 names without the `;1` version (and
    /// without the trailing `.` of names that have no extension). Names
    /// are shown as the image has them (lossily as UTF-8); [`IsoImage::extract`]
    /// is the place that refuses unsafe ones.
    pub path: String,
    pub kind: IsoEntryKind,
    /// Bytes of file data (0 for directories and symbolic links).
    pub size: u64,
    /// Permission bits (`0o7777`) from the Rock Ridge `PX` entry, if any.
    pub mode: Option<u32>,
}

/// Which of the image's name sets [`IsoImage`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// Rock Ridge (POSIX names, modes and symbolic links) on the primary tree.
    RockRidge,
    /// The Joliet tree (Unicode names, no modes or symbolic links).
    Joliet,
    /// Plain ISO9660 names (upper case, 8.3 or 31 characters).
    Plain,
}

/// What [`IsoImage::extract`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractSummary {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    /// Bytes of file data written.
    pub bytes: u64,
    /// Paths of entries not extracted: Rock Ridge devices, fifos and
    /// sockets, which have no business in an extracted ISO.
    pub skipped: Vec<String>,
}

/// A run of bytes in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    offset: u64,
    len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NodeKind {
    File,
    Directory(Span),
    Symlink(Vec<u8>),
    /// A device, fifo or socket (Rock Ridge `PX` type).
    Special,
}

/// One entry of a directory, as read from its record(s).
#[derive(Debug, Clone)]
struct Node {
    name: Vec<u8>,
    kind: NodeKind,
    /// File data, in order (several for multi-extent files).
    extents: Vec<Span>,
    mode: Option<u32>,
}

impl Node {
    fn size(&self) -> u64 {
        self.extents.iter().map(|e| e.len).sum()
    }
}

/// One entry of the whole tree, in depth-first order (parents first).
#[derive(Debug, Clone)]
struct Item {
    parent: Option<usize>,
    depth: usize,
    path: String,
    node: Node,
}

/// What the System Use area of a record says (SUSP and Rock Ridge).
#[derive(Debug, Default)]
struct SystemUse {
    /// `SP`: the image uses SUSP; its `LEN_SKP`.
    sp: Option<u8>,
    /// `ER` naming the Rock Ridge extension.
    rrip_er: bool,
    name: Option<Vec<u8>>,
    symlink: Option<Vec<u8>>,
    /// The whole `st_mode` from `PX`.
    mode: Option<u32>,
    /// `CL`: this record stands for a directory relocated elsewhere.
    child_link: Option<u32>,
    /// `RE`: this is the relocated directory itself; listed via its `CL`.
    relocated: bool,
}

/// A parsed directory record.
struct Record<'a> {
    extent: u32,
    size: u32,
    ext_attr_len: u8,
    flags: u8,
    interleaved: bool,
    ident: &'a [u8],
    system_use: &'a [u8],
}

const FLAG_DIRECTORY: u8 = 0x02;
const FLAG_ASSOCIATED: u8 = 0x04;
const FLAG_MULTI_EXTENT: u8 = 0x80;

const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// An ISO9660 image opened for reading.
pub struct IsoImage<R> {
    reader: R,
    image_size: u64,
    volume_id: String,
    naming: Naming,
    root: Span,
    /// SUSP `LEN_SKP`: bytes to skip at the start of each System Use area.
    susp_skip: usize,
}

impl<R> std::fmt::Debug for IsoImage<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IsoImage")
            .field("image_size", &self.image_size)
            .field("volume_id", &self.volume_id)
            .field("naming", &self.naming)
            .finish_non_exhaustive()
    }
}

impl<R: Read + Seek> IsoImage<R> {
    /// Reads the volume descriptors (from 32 KiB on) and the root
    /// directory, and picks the names to use: Rock Ridge if the primary tree
    /// has them, else Joliet if there is a Joliet tree, else plain ISO9660.
    pub fn open(mut reader: R) -> Result<Self> {
        let image_size = reader
            .seek(SeekFrom::End(0))
            .context("finding the size of the ISO image")?;
        if image_size < (FIRST_DESCRIPTOR + 1) * SECTOR {
            return Err(Error::Corrupt(format!(
                "the ISO image is {image_size} bytes, too small to hold an ISO9660 volume \
                 descriptor at 32 KiB"
            )));
        }
        let mut primary: Option<Box<[u8; SECTOR as usize]>> = None;
        let mut joliet: Option<Box<[u8; SECTOR as usize]>> = None;
        let mut terminated = false;
        for index in 0..MAX_DESCRIPTORS {
            let sector = FIRST_DESCRIPTOR + index;
            if (sector + 1) * SECTOR > image_size {
                break;
            }
            let mut d = Box::new([0u8; SECTOR as usize]);
            reader
                .seek(SeekFrom::Start(sector * SECTOR))
                .and_then(|_| reader.read_exact(&mut d[..]))
                .with_context(|| format!("reading ISO9660 volume descriptor {sector}"))?;
            if &d[1..6] != b"CD001" {
                if index == 0 {
                    return Err(Error::Corrupt(
                        "not an ISO9660 image: no CD001 volume descriptor at 32 KiB".into(),
                    ));
                }
                return Err(Error::Corrupt(format!(
                    "ISO9660 volume descriptor at sector {sector} lacks its CD001 signature \
                     before the descriptor set terminator"
                )));
            }
            match d[0] {
                255 => {
                    terminated = true;
                    break;
                }
                1 if primary.is_none() => primary = Some(d),
                2 if joliet.is_none() && is_joliet(&d[..]) => joliet = Some(d),
                _ => {}
            }
        }
        let Some(primary) = primary else {
            return Err(Error::Corrupt(
                "ISO image has no primary volume descriptor".into(),
            ));
        };
        if !terminated {
            return Err(Error::Corrupt(format!(
                "ISO image has no volume descriptor set terminator in its first \
                 {MAX_DESCRIPTORS} descriptors"
            )));
        }
        let block_size = le16(&primary[..], 128);
        if u64::from(block_size) != SECTOR {
            return Err(Error::Unsupported(format!(
                "ISO image uses logical blocks of {block_size} bytes; only 2048 is supported"
            )));
        }

        let mut image = IsoImage {
            reader,
            image_size,
            volume_id: String::new(),
            naming: Naming::Plain,
            root: Span { offset: 0, len: 0 },
            susp_skip: 0,
        };
        let primary_root = image.root_record(&primary[..], "primary")?;
        let root_su = image.root_system_use(primary_root)?;
        let rock_ridge = root_su.sp.is_some() && (root_su.rrip_er || root_su.mode.is_some());
        let primary_id = trim_id(&String::from_utf8_lossy(&primary[40..72]));

        if rock_ridge {
            image.naming = Naming::RockRidge;
            image.root = primary_root;
            image.susp_skip = root_su.sp.map_or(0, usize::from);
            image.volume_id = primary_id;
        } else if let Some(joliet) = joliet {
            image.naming = Naming::Joliet;
            image.root = image.root_record(&joliet[..], "Joliet")?;
            let joliet_id = trim_id(&ucs2(&joliet[40..72]));
            image.volume_id = if joliet_id.is_empty() {
                primary_id
            } else {
                joliet_id
            };
        } else {
            image.root = primary_root;
            image.volume_id = primary_id;
        }
        Ok(image)
    }

    /// The volume label (`config-2` for a config drive).
    pub fn volume_id(&self) -> &str {
        &self.volume_id
    }

    /// Which names this reader uses.
    pub fn naming(&self) -> Naming {
        self.naming
    }

    /// The whole tree, parents before their children, in the order of the
    /// directories on disk. Bounded: at most [`MAX_ENTRIES`] entries and
    /// [`MAX_DEPTH`] levels; a directory that points back at one already
    /// listed is refused as a loop. Multi-extent files are one entry.
    /// Associated files and Rock Ridge devices, fifos and sockets are not
    /// listed.
    pub fn entries(&mut self) -> Result<Vec<IsoEntry>> {
        Ok(self
            .tree()?
            .into_iter()
            .filter(|item| item.node.kind != NodeKind::Special)
            .map(|item| IsoEntry {
                size: match item.node.kind {
                    NodeKind::File => item.node.size(),
                    _ => 0,
                },
                kind: match item.node.kind {
                    NodeKind::Directory(_) => IsoEntryKind::Directory,
                    NodeKind::Symlink(target) => {
                        IsoEntryKind::Symlink(String::from_utf8_lossy(&target).into_owned())
                    }
                    _ => IsoEntryKind::File,
                },
                mode: item.node.mode.map(|m| m & 0o7777),
                path: item.path,
            })
            .collect())
    }

    /// The contents of the file at `path` (as in [`entries`](Self::entries),
    /// case-sensitive, the leading `/` optional). Refuses (`TooLarge`) a
    /// file above `max_size` bytes before reading it. Symbolic links are not
    /// followed.
    pub fn read_file(&mut self, path: &str, max_size: u64) -> Result<Vec<u8>> {
        let node = self.find_file(path)?;
        let size = node.size();
        if size > max_size {
            return Err(Error::TooLarge(format!(
                "{path} in the ISO image is {size} bytes; at most {max_size} bytes are accepted"
            )));
        }
        let capacity = usize::try_from(size)
            .map_err(|_| Error::TooLarge(format!("{path} in the ISO image is {size} bytes")))?;
        let mut data = Vec::with_capacity(capacity);
        self.copy_node(&node, path, &mut data)?;
        Ok(data)
    }

    /// Copies the file at `path` into `out`, returning its size. Streams, so
    /// any size is fine.
    pub fn copy_file<W: Write>(&mut self, path: &str, out: &mut W) -> Result<u64> {
        let node = self.find_file(path)?;
        self.copy_node(&node, path, out)
    }

    /// Extracts the whole image into the existing directory `target`.
    ///
    /// Every entry is checked before anything is written: names that are
    /// empty, `.` or `..`, contain `/` or NUL or are longer than 255 bytes,
    /// names that appear twice in one directory, and symbolic links that
    /// are absolute or climb out of `target` are refused (`Refused`, naming
    /// the entry). Then everything is written one component at a time with
    /// `O_NOFOLLOW`, so nothing is written through a symbolic link, and an
    /// existing file is never overwritten (existing directories are reused).
    /// Modes come from Rock Ridge without setuid, setgid and sticky bits
    /// (an image from outside must not bring setuid binaries); owners are
    /// not set.
    pub fn extract(&mut self, target: &Path) -> Result<ExtractSummary> {
        self.extract_paths(target, &[])
    }

    /// Like [`extract`](Self::extract), but only the listed paths (files,
    /// symbolic links, or directories with everything beneath them) and the
    /// directories leading to them. An empty list extracts everything; a
    /// path not in the image is an error.
    pub fn extract_paths(&mut self, target: &Path, paths: &[&str]) -> Result<ExtractSummary> {
        let items = self.tree()?;
        let selected = select(&items, paths)?;
        check_for_extraction(&items, &selected)?;
        write_tree(self, &items, &selected, target)
    }

    // -----------------------------------------------------------------------
    // Volume descriptors and the root.
    // -----------------------------------------------------------------------

    /// The root directory of a volume descriptor, checked against the image.
    fn root_record(&self, descriptor: &[u8], which: &str) -> Result<Span> {
        let record = &descriptor[156..190];
        if record[0] < 34 {
            return Err(Error::Corrupt(format!(
                "the {which} volume descriptor's root directory record is malformed"
            )));
        }
        let extent = u64::from(le32(record, 2)) + u64::from(record[1]);
        let span = Span {
            offset: extent * SECTOR,
            len: u64::from(le32(record, 10)),
        };
        self.check_span(span, || format!("the {which} root directory"))?;
        Ok(span)
    }

    /// The System Use area of the root's `.` record, which holds `SP` and
    /// `ER` when the image has Rock Ridge.
    fn root_system_use(&mut self, root: Span) -> Result<SystemUse> {
        if root.len < 34 {
            return Ok(SystemUse::default());
        }
        let mut sector = vec![0u8; SECTOR.min(root.len) as usize];
        self.read_at(root.offset, &mut sector, || "the root directory".to_owned())?;
        let Ok(Some(record)) = parse_record(&sector, 0, 0) else {
            return Err(Error::Corrupt(
                "the root directory of the ISO image does not start with a valid record".into(),
            ));
        };
        let su = record.system_use.to_vec();
        // Damaged SUSP in the root only means no Rock Ridge.
        Ok(self.system_use(&su, "/").unwrap_or_default())
    }

    // -----------------------------------------------------------------------
    // Directories.
    // -----------------------------------------------------------------------

    /// Lists the whole tree, depth first.
    fn tree(&mut self) -> Result<Vec<Item>> {
        let mut items = Vec::new();
        let mut visited = HashSet::from([self.root.offset]);
        let mut path_bytes = 0usize;
        let root = self.root;
        self.walk(root, None, "", 0, &mut items, &mut visited, &mut path_bytes)?;
        Ok(items)
    }

    #[allow(clippy::too_many_arguments)]
    fn walk(
        &mut self,
        dir: Span,
        parent: Option<usize>,
        dir_path: &str,
        depth: usize,
        items: &mut Vec<Item>,
        visited: &mut HashSet<u64>,
        path_bytes: &mut usize,
    ) -> Result<()> {
        let budget = MAX_ENTRIES.saturating_sub(items.len());
        let nodes = self.read_dir(dir, dir_path, budget)?;
        for node in nodes {
            if items.len() >= MAX_ENTRIES {
                return Err(Error::TooLarge(format!(
                    "ISO image has more than {MAX_ENTRIES} entries"
                )));
            }
            let path = format!("{dir_path}/{}", String::from_utf8_lossy(&node.name));
            *path_bytes += path.len();
            if *path_bytes > MAX_PATH_BYTES {
                return Err(Error::TooLarge(format!(
                    "the paths of the ISO image add up to more than {MAX_PATH_BYTES} bytes"
                )));
            }
            let child = match node.kind {
                NodeKind::Directory(span) => {
                    if depth + 1 > MAX_DEPTH {
                        return Err(Error::TooLarge(format!(
                            "directory {path} in the ISO image is nested deeper than \
                             {MAX_DEPTH} levels"
                        )));
                    }
                    if !visited.insert(span.offset) {
                        return Err(Error::Corrupt(format!(
                            "directory {path} in the ISO image points at block {} which \
                             holds a directory already listed: the directory tree loops",
                            span.offset / SECTOR
                        )));
                    }
                    Some(span)
                }
                _ => None,
            };
            items.push(Item {
                parent,
                depth,
                path: path.clone(),
                node,
            });
            if let Some(span) = child {
                let index = items.len() - 1;
                self.walk(
                    span,
                    Some(index),
                    &path,
                    depth + 1,
                    items,
                    visited,
                    path_bytes,
                )?;
            }
        }
        Ok(())
    }

    /// The entries of one directory (without `.` and `..`), at most
    /// `budget` of them. Reads one sector at a time, so a huge directory
    /// costs time bounded by the image, not memory.
    fn read_dir(&mut self, dir: Span, dir_path: &str, budget: usize) -> Result<Vec<Node>> {
        let shown = if dir_path.is_empty() { "/" } else { dir_path };
        self.check_span(dir, || format!("directory {shown}"))?;
        let mut nodes: Vec<Node> = Vec::new();
        // A multi-extent file: its first node, and the identifier the
        // following records must repeat.
        let mut pending: Option<(Node, Vec<u8>)> = None;
        let mut sector = vec![0u8; SECTOR as usize];
        let mut done = 0u64;
        while done < dir.len {
            let len = (dir.len - done).min(SECTOR) as usize;
            let at = dir.offset + done;
            self.read_at(at, &mut sector[..len], || format!("directory {shown}"))?;
            let mut pos = 0usize;
            while pos < len {
                let record = match parse_record(&sector[..len], pos, self.susp_skip) {
                    Ok(Some(record)) => record,
                    Ok(None) => break,
                    Err(problem) => {
                        return Err(Error::Corrupt(format!(
                            "directory {shown} in the ISO image has a bad record at byte {}: \
                             {problem}",
                            at + pos as u64
                        )))
                    }
                };
                pos += usize::from(sector[pos]);
                if record.ident == [0] || record.ident == [1] {
                    continue;
                }
                if record.flags & FLAG_ASSOCIATED != 0 {
                    continue;
                }
                let iso_name = record.ident.to_vec();

                if let Some((mut first, ident)) = pending.take() {
                    let what = format!("{dir_path}/{}", String::from_utf8_lossy(&first.name));
                    if ident != iso_name {
                        return Err(Error::Corrupt(format!(
                            "multi-extent file {what} in the ISO image is cut short: the \
                             record after one of its parts belongs to another file"
                        )));
                    }
                    first.extents.push(self.record_data(&record, &what)?);
                    if first.extents.len() > 4096 {
                        return Err(Error::Corrupt(format!(
                            "multi-extent file {what} in the ISO image has more than 4096 parts"
                        )));
                    }
                    if record.flags & FLAG_MULTI_EXTENT != 0 {
                        pending = Some((first, ident));
                    } else {
                        nodes.push(first);
                    }
                    continue;
                }

                let su = record.system_use.to_vec();
                let node = self.node(&record, &su, dir_path)?;
                let Some(node) = node else { continue };
                if record.flags & FLAG_MULTI_EXTENT != 0 {
                    if node.kind != NodeKind::File {
                        return Err(Error::Corrupt(format!(
                            "{dir_path}/{} in the ISO image is marked multi-extent but is not \
                             a regular file",
                            String::from_utf8_lossy(&node.name)
                        )));
                    }
                    pending = Some((node, iso_name));
                    continue;
                }
                if nodes.len() >= budget {
                    return Err(Error::TooLarge(format!(
                        "ISO image has more than {MAX_ENTRIES} entries"
                    )));
                }
                nodes.push(node);
            }
            done += len as u64;
        }
        if let Some((first, _)) = pending {
            return Err(Error::Corrupt(format!(
                "multi-extent file {dir_path}/{} in the ISO image has no last part",
                String::from_utf8_lossy(&first.name)
            )));
        }
        Ok(nodes)
    }

    /// Where a record's data lies, checked against the image.
    fn record_data(&self, record: &Record<'_>, what: &str) -> Result<Span> {
        if record.interleaved {
            return Err(Error::Unsupported(format!(
                "{what} in the ISO image is recorded interleaved, which is not supported"
            )));
        }
        let block = u64::from(record.extent) + u64::from(record.ext_attr_len);
        let span = Span {
            offset: block * SECTOR,
            len: u64::from(record.size),
        };
        self.check_span(span, || what.to_owned())?;
        Ok(span)
    }

    /// Turns a record into a node, with the names and kind of the naming in
    /// use. `None` for records that are not entries of their own (Rock
    /// Ridge relocated directories, listed where their `CL` record is).
    fn node(&mut self, record: &Record<'_>, su: &[u8], dir_path: &str) -> Result<Option<Node>> {
        let iso_name = record.ident;
        let directory = record.flags & FLAG_DIRECTORY != 0;
        let (name, rr) = match self.naming {
            Naming::Plain => (plain_name(iso_name, directory), SystemUse::default()),
            Naming::Joliet => (joliet_name(iso_name), SystemUse::default()),
            Naming::RockRidge => {
                let what = format!("{dir_path}/{}", String::from_utf8_lossy(iso_name));
                let rr = self.system_use(su, &what)?;
                let name = rr
                    .name
                    .clone()
                    .unwrap_or_else(|| plain_name(iso_name, directory));
                (name, rr)
            }
        };
        if name.len() > MAX_NAME {
            return Err(Error::Corrupt(format!(
                "an entry of directory {} in the ISO image has a name of {} bytes; at most \
                 {MAX_NAME} are accepted",
                if dir_path.is_empty() { "/" } else { dir_path },
                name.len()
            )));
        }
        if rr.relocated {
            return Ok(None);
        }
        let path = format!("{dir_path}/{}", String::from_utf8_lossy(&name));
        let extent = self.record_data(record, &path)?;
        let file_type = rr.mode.map(|m| m & S_IFMT);
        let kind = if let Some(block) = rr.child_link {
            NodeKind::Directory(self.relocated_directory(block, &path)?)
        } else if directory {
            if rr.symlink.is_some() {
                return Err(Error::Corrupt(format!(
                    "{path} in the ISO image is both a directory and a symbolic link"
                )));
            }
            NodeKind::Directory(extent)
        } else if let Some(target) = rr.symlink {
            NodeKind::Symlink(target)
        } else if file_type == Some(S_IFLNK) {
            return Err(Error::Corrupt(format!(
                "{path} in the ISO image is a symbolic link without a target"
            )));
        } else if matches!(file_type, None | Some(0) | Some(S_IFREG)) {
            NodeKind::File
        } else if file_type == Some(S_IFDIR) {
            return Err(Error::Corrupt(format!(
                "{path} in the ISO image has a directory mode but a file record"
            )));
        } else {
            NodeKind::Special
        };
        let extents = match kind {
            NodeKind::File => vec![extent],
            _ => Vec::new(),
        };
        Ok(Some(Node {
            name,
            kind,
            extents,
            mode: rr.mode,
        }))
    }

    /// A Rock Ridge relocated directory (`CL`): its size is in its own `.`
    /// record.
    fn relocated_directory(&mut self, block: u32, path: &str) -> Result<Span> {
        let offset = u64::from(block) * SECTOR;
        self.check_span(
            Span {
                offset,
                len: SECTOR,
            },
            || format!("relocated directory {path}"),
        )?;
        let mut sector = vec![0u8; SECTOR as usize];
        self.read_at(offset, &mut sector, || {
            format!("relocated directory {path}")
        })?;
        match parse_record(&sector, 0, 0) {
            Ok(Some(dot)) if dot.ident == [0] => {
                let span = Span {
                    offset,
                    len: u64::from(dot.size),
                };
                self.check_span(span, || format!("relocated directory {path}"))?;
                Ok(span)
            }
            _ => Err(Error::Corrupt(format!(
                "Rock Ridge child link of {path} in the ISO image does not point at a directory"
            ))),
        }
    }

    /// Parses SUSP and Rock Ridge entries, following continuation areas
    /// (`CE`) a bounded number of times.
    fn system_use(&mut self, first: &[u8], what: &str) -> Result<SystemUse> {
        let mut out = SystemUse::default();
        let mut area = first.to_vec();
        let mut total = area.len();
        let mut hops = 0usize;
        let mut symlink_open = false;
        let mut name_done = false;
        loop {
            let mut next: Option<Span> = None;
            let mut pos = 0usize;
            let mut stop = false;
            while pos + 4 <= area.len() {
                let len = usize::from(area[pos + 2]);
                if len < 4 || pos + len > area.len() {
                    // Padding or a truncated entry: the area ends here.
                    break;
                }
                let entry = &area[pos..pos + len];
                pos += len;
                match &entry[0..2] {
                    b"SP" if len >= 7 && entry[4] == 0xBE && entry[5] == 0xEF => {
                        out.sp = Some(entry[6]);
                    }
                    b"ER" if len >= 8 => {
                        let id_len = usize::from(entry[4]);
                        let id = entry.get(8..8 + id_len).unwrap_or(&[]);
                        if id.starts_with(b"RRIP")
                            || id.starts_with(b"IEEE_P1282")
                            || id.starts_with(b"IEEE_1282")
                        {
                            out.rrip_er = true;
                        }
                    }
                    b"PX" if len >= 36 => out.mode = Some(le32(entry, 4)),
                    b"NM" if len >= 5 && !name_done => {
                        let flags = entry[4];
                        let name = out.name.get_or_insert_with(Vec::new);
                        if flags & 0x02 != 0 {
                            name.extend_from_slice(b".");
                        } else if flags & 0x04 != 0 {
                            name.extend_from_slice(b"..");
                        } else {
                            name.extend_from_slice(&entry[5..]);
                        }
                        if name.len() > MAX_NAME {
                            return Err(Error::Corrupt(format!(
                                "the Rock Ridge name of {what} in the ISO image is longer than \
                                 {MAX_NAME} bytes"
                            )));
                        }
                        name_done = flags & 0x01 == 0;
                    }
                    b"SL" if len >= 5 => {
                        let target = out.symlink.get_or_insert_with(Vec::new);
                        symlink_components(&entry[5..], target, &mut symlink_open);
                        if target.len() > 4096 {
                            return Err(Error::Corrupt(format!(
                                "the Rock Ridge symbolic link {what} in the ISO image has a \
                                 target longer than 4096 bytes"
                            )));
                        }
                    }
                    b"CL" if len >= 12 => out.child_link = Some(le32(entry, 4)),
                    b"RE" => out.relocated = true,
                    b"CE" if len >= 28 => {
                        let block = u64::from(le32(entry, 4));
                        let offset = u64::from(le32(entry, 12));
                        let length = u64::from(le32(entry, 20));
                        next = Some(Span {
                            offset: block * SECTOR + offset,
                            len: length,
                        });
                    }
                    b"ST" => {
                        stop = true;
                        break;
                    }
                    _ => {}
                }
            }
            let Some(span) = next.filter(|_| !stop) else {
                break;
            };
            hops += 1;
            if hops > MAX_CONTINUATIONS {
                return Err(Error::Corrupt(format!(
                    "the Rock Ridge entries of {what} in the ISO image chain more than \
                     {MAX_CONTINUATIONS} continuation areas"
                )));
            }
            total = total.saturating_add(span.len as usize);
            if span.len > MAX_SYSTEM_USE as u64 || total > MAX_SYSTEM_USE {
                return Err(Error::Corrupt(format!(
                    "the Rock Ridge entries of {what} in the ISO image take more than \
                     {MAX_SYSTEM_USE} bytes"
                )));
            }
            self.check_span(span, || {
                format!("the Rock Ridge continuation area of {what}")
            })?;
            area = vec![0u8; span.len as usize];
            self.read_at(span.offset, &mut area, || {
                format!("the Rock Ridge continuation area of {what}")
            })?;
        }
        Ok(out)
    }

    // -----------------------------------------------------------------------
    // Files.
    // -----------------------------------------------------------------------

    /// Walks to `path` one directory at a time (only the directories on the
    /// way are read) and returns it if it is a regular file.
    fn find_file(&mut self, path: &str) -> Result<Node> {
        let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        if components.len() > MAX_DEPTH + 1 {
            return Err(Error::Invalid(format!(
                "{path} is not in the ISO image (deeper than {MAX_DEPTH} levels)"
            )));
        }
        let mut dir = self.root;
        let mut dir_path = String::new();
        let mut ancestors = HashSet::from([self.root.offset]);
        let mut found: Option<Node> = None;
        for (index, component) in components.iter().enumerate() {
            let nodes = self.read_dir(dir, &dir_path, MAX_ENTRIES)?;
            let node = nodes
                .into_iter()
                .find(|n| n.name == component.as_bytes())
                .ok_or_else(|| Error::Invalid(format!("{path} is not in the ISO image")))?;
            dir_path = format!("{dir_path}/{component}");
            let last = index + 1 == components.len();
            match &node.kind {
                NodeKind::Directory(span) if !last => {
                    if !ancestors.insert(span.offset) {
                        return Err(Error::Corrupt(format!(
                            "directory {dir_path} in the ISO image points back at one of its \
                             ancestors: the directory tree loops"
                        )));
                    }
                    dir = *span;
                }
                NodeKind::File if last => found = Some(node),
                NodeKind::Directory(_) => {
                    return Err(Error::Invalid(format!(
                        "{path} in the ISO image is a directory, not a file"
                    )))
                }
                NodeKind::Symlink(target) => {
                    return Err(Error::Invalid(format!(
                        "{dir_path} in the ISO image is a symbolic link (to {}); symbolic \
                         links are not followed",
                        String::from_utf8_lossy(target)
                    )))
                }
                NodeKind::File => {
                    return Err(Error::Invalid(format!(
                        "{path} is not in the ISO image: {dir_path} is a file, not a directory"
                    )))
                }
                NodeKind::Special => {
                    return Err(Error::Invalid(format!(
                        "{dir_path} in the ISO image is a device, fifo or socket, not a file"
                    )))
                }
            }
        }
        found.ok_or_else(|| {
            Error::Invalid(format!(
                "{path} in the ISO image is a directory, not a file"
            ))
        })
    }

    fn copy_node<W: Write>(&mut self, node: &Node, path: &str, out: &mut W) -> Result<u64> {
        let mut buf = vec![0u8; COPY_CHUNK];
        let mut written = 0u64;
        for extent in &node.extents {
            self.check_span(*extent, || path.to_owned())?;
            self.reader
                .seek(SeekFrom::Start(extent.offset))
                .with_context(|| format!("seeking to {path} in the ISO image"))?;
            let mut left = extent.len;
            while left > 0 {
                let n = left.min(COPY_CHUNK as u64) as usize;
                self.reader
                    .read_exact(&mut buf[..n])
                    .with_context(|| format!("reading {path} from the ISO image"))?;
                out.write_all(&buf[..n])
                    .with_context(|| format!("writing {path} out of the ISO image"))?;
                left -= n as u64;
                written += n as u64;
            }
        }
        Ok(written)
    }

    // -----------------------------------------------------------------------
    // Bounds.
    // -----------------------------------------------------------------------

    fn check_span(&self, span: Span, what: impl FnOnce() -> String) -> Result<()> {
        if span.len == 0 {
            return Ok(());
        }
        match span.offset.checked_add(span.len) {
            Some(end) if end <= self.image_size => Ok(()),
            _ => Err(Error::Corrupt(format!(
                "{} in the ISO image lies at bytes {}..{}, past the end of the image \
                 ({} bytes)",
                what(),
                span.offset,
                span.offset.saturating_add(span.len),
                self.image_size
            ))),
        }
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8], what: impl Fn() -> String) -> Result<()> {
        self.check_span(
            Span {
                offset,
                len: buf.len() as u64,
            },
            &what,
        )?;
        self.reader
            .seek(SeekFrom::Start(offset))
            .and_then(|_| self.reader.read_exact(buf))
            .with_context(|| format!("reading {} from the ISO image", what()))
    }
}

/// Whether a supplementary volume descriptor is Joliet (UCS-2 escape
/// sequences `%/@`, `%/C` or `%/E`).
fn is_joliet(d: &[u8]) -> bool {
    let escapes = &d[88..120];
    escapes
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'/' && matches!(w[2], b'@' | b'C' | b'E'))
}

fn trim_id(id: &str) -> String {
    id.trim_end_matches([' ', '\0']).to_owned()
}

fn ucs2(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
}

/// A plain ISO9660 name without its `;1` version, and without the `.` that
/// ISO9660 requires in file names that have no extension.
fn plain_name(ident: &[u8], directory: bool) -> Vec<u8> {
    let mut name = ident;
    if !directory {
        if let Some(semicolon) = name.iter().rposition(|&b| b == b';') {
            name = &name[..semicolon];
        }
        if name.len() > 1 && name.ends_with(b".") && name != b".." {
            name = &name[..name.len() - 1];
        }
    }
    name.to_vec()
}

fn joliet_name(ident: &[u8]) -> Vec<u8> {
    let mut name = ucs2(ident);
    if let Some(semicolon) = name.rfind(';') {
        if name[semicolon + 1..].bytes().all(|b| b.is_ascii_digit()) {
            name.truncate(semicolon);
        }
    }
    name.into_bytes()
}

/// Appends the components of one `SL` entry to `target`. `open` says the
/// last component continues in the next one (no `/` in between).
fn symlink_components(mut data: &[u8], target: &mut Vec<u8>, open: &mut bool) {
    while data.len() >= 2 {
        let flags = data[0];
        let len = usize::from(data[1]);
        let Some(content) = data.get(2..2 + len) else {
            break;
        };
        data = &data[2 + len..];
        let part: &[u8] = if flags & 0x02 != 0 {
            b"."
        } else if flags & 0x04 != 0 {
            b".."
        } else if flags & 0x38 != 0 {
            // Root, volume root or host: an absolute target.
            target.clear();
            target.push(b'/');
            *open = true;
            continue;
        } else {
            content
        };
        if !*open && !target.is_empty() {
            target.push(b'/');
        }
        target.extend_from_slice(part);
        *open = flags & 0x01 != 0;
    }
}

/// Parses the directory record at `pos` of one sector. `Ok(None)`: no more
/// records in this sector (a zero length byte is padding to its end).
fn parse_record(
    sector: &[u8],
    pos: usize,
    susp_skip: usize,
) -> std::result::Result<Option<Record<'_>>, String> {
    let len = usize::from(sector[pos]);
    if len == 0 {
        return Ok(None);
    }
    if len < 34 {
        return Err(format!(
            "its length {len} is shorter than a directory record"
        ));
    }
    if pos + len > sector.len() {
        return Err("it runs past the end of its sector".into());
    }
    let record = &sector[pos..pos + len];
    let ident_len = usize::from(record[32]);
    if ident_len == 0 || 33 + ident_len > len {
        return Err(format!(
            "its identifier of {ident_len} bytes does not fit in its {len} bytes"
        ));
    }
    let ident = &record[33..33 + ident_len];
    let su_start = (33 + ident_len + usize::from(ident_len % 2 == 0) + susp_skip).min(len);
    Ok(Some(Record {
        extent: le32(record, 2),
        size: le32(record, 10),
        ext_attr_len: record[1],
        flags: record[25],
        interleaved: record[26] != 0 || record[27] != 0,
        ident,
        system_use: &record[su_start..],
    }))
}

// ---------------------------------------------------------------------------
// Extraction: checks first, then writes.
// ---------------------------------------------------------------------------

/// The items to extract: everything, or the listed paths with everything
/// beneath them and the directories above them.
fn select(items: &[Item], paths: &[&str]) -> Result<Vec<bool>> {
    if paths.is_empty() {
        return Ok(vec![true; items.len()]);
    }
    let mut selected = vec![false; items.len()];
    let wanted: Vec<String> = paths
        .iter()
        .map(|p| {
            let trimmed = p.trim_matches('/');
            format!("/{trimmed}")
        })
        .collect();
    let mut found = vec![false; wanted.len()];
    for (index, item) in items.iter().enumerate() {
        let under = |w: &String| {
            item.path == *w
                || (item.path.starts_with(w.as_str()) && item.path[w.len()..].starts_with('/'))
        };
        if wanted.iter().any(under) {
            selected[index] = true;
            let mut parent = item.parent;
            while let Some(p) = parent {
                if selected[p] {
                    break;
                }
                selected[p] = true;
                parent = items[p].parent;
            }
        }
        for (position, w) in wanted.iter().enumerate() {
            found[position] |= item.path == *w;
        }
    }
    if let Some(missing) = found.iter().position(|f| !f) {
        return Err(Error::Invalid(format!(
            "{} is not in the ISO image",
            paths[missing]
        )));
    }
    Ok(selected)
}

fn check_for_extraction(items: &[Item], selected: &[bool]) -> Result<()> {
    let mut seen: HashSet<(Option<usize>, &[u8])> = HashSet::new();
    for (index, item) in items.iter().enumerate() {
        if !selected[index] {
            continue;
        }
        check_name(item)?;
        if !seen.insert((item.parent, &item.node.name)) {
            return Err(Error::Refused(format!(
                "ISO entry {:?} appears twice in its directory; refusing to extract either",
                item.path
            )));
        }
        if let NodeKind::Symlink(target) = &item.node.kind {
            check_symlink(item, target)?;
        }
    }
    Ok(())
}

fn check_name(item: &Item) -> Result<()> {
    let name = &item.node.name;
    let problem = if name.is_empty() {
        Some("an empty name")
    } else if name == b"." || name == b".." {
        Some("the name \".\" or \"..\"")
    } else if name.contains(&b'/') {
        Some("a name containing \"/\"")
    } else if name.contains(&0) {
        Some("a name containing a NUL byte")
    } else if name.len() > NAME_MAX {
        Some("a name longer than 255 bytes")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Error::Refused(format!(
            "ISO entry {:?} has {problem} ({:?}); refusing to extract it",
            item.path,
            String::from_utf8_lossy(name)
        ))),
        None => Ok(()),
    }
}

/// Symbolic link targets must stay inside the target directory whatever
/// other links they pass through: relative, `..` only at the start and no
/// more of them than the link's own depth. A `..` after a named component
/// could climb out of a directory reached through another link (`s -> .`,
/// `x -> s/..`), so it is refused too.
fn check_symlink(item: &Item, target: &[u8]) -> Result<()> {
    let shown = String::from_utf8_lossy(target);
    let refuse = |why: &str| {
        Err(Error::Refused(format!(
            "ISO entry {:?} is a symbolic link to {shown:?}, {why}; refusing to extract it",
            item.path
        )))
    };
    if target.is_empty() {
        return refuse("an empty target");
    }
    if target.contains(&0) {
        return refuse("a target containing a NUL byte");
    }
    if target.starts_with(b"/") {
        return refuse("an absolute target, which would point outside the extraction directory");
    }
    let mut level = item.depth as isize;
    let mut descended = false;
    for component in target.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." if descended => {
                return refuse(
                    "a target that climbs with \"..\" after descending, which can leave the \
                     extraction directory through other links",
                )
            }
            b".." => {
                level -= 1;
                if level < 0 {
                    return refuse("a target that climbs out of the extraction directory");
                }
            }
            _ => descended = true,
        }
    }
    Ok(())
}

fn last_os_error() -> io::Error {
    io::Error::last_os_error()
}

fn cstring(name: &[u8]) -> Result<CString> {
    // Names were checked for NUL bytes before any writing.
    CString::new(name).map_err(|_| Error::Refused("a name contains a NUL byte".into()))
}

fn open_at(dir: RawFd, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated and outlives the call.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            libc::c_uint::from(mode),
        )
    };
    if fd < 0 {
        return Err(last_os_error());
    }
    // SAFETY: openat just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fchmod(fd: RawFd, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we own.
    if unsafe { libc::fchmod(fd, mode as libc::mode_t) } < 0 {
        return Err(last_os_error());
    }
    Ok(())
}

/// An open directory of the target, with the mode to give it once
/// everything beneath it is written (so a read-only directory can still be
/// filled).
struct OpenDir {
    index: usize,
    fd: OwnedFd,
    final_mode: Option<u32>,
    path: String,
}

fn close_dir(dir: OpenDir) -> Result<()> {
    if let Some(mode) = dir.final_mode {
        fchmod(dir.fd.as_raw_fd(), mode)
            .with_context(|| format!("setting the mode of {} in the target", dir.path))?;
    }
    Ok(())
}

fn write_tree<R: Read + Seek>(
    image: &mut IsoImage<R>,
    items: &[Item],
    selected: &[bool],
    target: &Path,
) -> Result<ExtractSummary> {
    let target_c = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid("the extraction target path contains a NUL byte".into()))?;
    // SAFETY: `target_c` is NUL-terminated; the target itself may be a
    // link chosen by the operator, so it is followed.
    let fd = unsafe {
        libc::open(
            target_c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(Error::io(
            format!("opening the extraction target {}", target.display()),
            last_os_error(),
        ));
    }
    // SAFETY: open just returned this descriptor; nothing else owns it.
    let root = unsafe { OwnedFd::from_raw_fd(fd) };

    let mut summary = ExtractSummary::default();
    let mut stack: Vec<OpenDir> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        if !selected[index] {
            continue;
        }
        while stack.last().is_some_and(|d| Some(d.index) != item.parent) {
            if let Some(dir) = stack.pop() {
                close_dir(dir)?;
            }
        }
        let parent = stack.last().map_or(root.as_raw_fd(), |d| d.fd.as_raw_fd());
        let name = cstring(&item.node.name)?;
        let path = &item.path;
        let exists = |e: &io::Error| e.raw_os_error() == Some(libc::EEXIST);
        match &item.node.kind {
            NodeKind::Directory(_) => {
                // SAFETY: `name` is NUL-terminated; mkdirat never follows a
                // final symbolic link.
                let made = unsafe { libc::mkdirat(parent, name.as_ptr(), 0o700) } == 0;
                if !made {
                    let e = last_os_error();
                    if !exists(&e) {
                        return Err(Error::io(
                            format!("creating directory {path} in the target"),
                            e,
                        ));
                    }
                }
                let fd =
                    open_at(parent, &name, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(|e| {
                        match e.raw_os_error() {
                            Some(libc::ELOOP | libc::ENOTDIR) => Error::Refused(format!(
                                "ISO entry {path:?} is a directory but the target already has a \
                             symbolic link or file there; refusing to write through it"
                            )),
                            _ => Error::io(format!("opening directory {path} in the target"), e),
                        }
                    })?;
                let final_mode = made.then(|| item.node.mode.map_or(0o755, |m| m & 0o777));
                stack.push(OpenDir {
                    index,
                    fd,
                    final_mode,
                    path: path.clone(),
                });
                summary.directories += 1;
            }
            NodeKind::File => {
                let fd = open_at(
                    parent,
                    &name,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                    0o600,
                )
                .map_err(|e| {
                    if exists(&e) {
                        Error::Refused(format!(
                            "ISO entry {path:?} already exists in the target; extract into an \
                             empty directory"
                        ))
                    } else {
                        Error::io(format!("creating {path} in the target"), e)
                    }
                })?;
                let mut file = File::from(fd);
                let written = image.copy_node(&item.node, path, &mut file)?;
                fchmod(
                    file.as_raw_fd(),
                    item.node.mode.map_or(0o644, |m| m & 0o777),
                )
                .with_context(|| format!("setting the mode of {path} in the target"))?;
                summary.files += 1;
                summary.bytes += written;
            }
            NodeKind::Symlink(link) => {
                let link = cstring(link)?;
                // SAFETY: both strings are NUL-terminated; symlinkat never
                // follows a final symbolic link.
                if unsafe { libc::symlinkat(link.as_ptr(), parent, name.as_ptr()) } < 0 {
                    let e = last_os_error();
                    return Err(if exists(&e) {
                        Error::Refused(format!(
                            "ISO entry {path:?} already exists in the target; extract into an \
                             empty directory"
                        ))
                    } else {
                        Error::io(format!("creating symbolic link {path} in the target"), e)
                    });
                }
                summary.symlinks += 1;
            }
            NodeKind::Special => summary.skipped.push(path.clone()),
        }
    }
    while let Some(dir) = stack.pop() {
        close_dir(dir)?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(path: &str, depth: usize) -> Item {
        Item {
            parent: None,
            depth,
            path: path.into(),
            node: Node {
                name: path
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .as_bytes()
                    .to_vec(),
                kind: NodeKind::File,
                extents: Vec::new(),
                mode: None,
            },
        }
    }

    #[test]
    fn symlink_targets_that_stay_inside_are_accepted() {
        for (depth, target) in [
            (0, "a/b"),
            (0, "."),
            (1, "../x"),
            (2, "../../x/y"),
            (1, "./../y"),
        ] {
            assert!(
                check_symlink(&item("/l", depth), target.as_bytes()).is_ok(),
                "{target}"
            );
        }
    }

    #[test]
    fn symlink_targets_that_can_leave_are_refused() {
        for (depth, target) in [
            (0, "/etc"),
            (0, ".."),
            (1, "../../x"),
            (0, "s/.."),
            (2, "a/../../.."),
        ] {
            let err = check_symlink(&item("/l", depth), target.as_bytes()).unwrap_err();
            assert!(matches!(err, Error::Refused(_)), "{target}: {err}");
        }
    }

    #[test]
    fn symlink_components_join() {
        let mut target = Vec::new();
        let mut open = false;
        // ROOT, "etc", "pass" continued by "wd"
        symlink_components(
            &[
                8, 0, 0, 3, b'e', b't', b'c', 1, 4, b'p', b'a', b's', b's', 0, 2, b'w', b'd',
            ],
            &mut target,
            &mut open,
        );
        assert_eq!(target, b"/etc/passwd");
        let mut target = Vec::new();
        let mut open = false;
        symlink_components(&[4, 0, 0, 1, b'a'], &mut target, &mut open);
        assert_eq!(target, b"../a");
    }

    #[test]
    fn plain_names_lose_their_version() {
        assert_eq!(plain_name(b"HELLO.;1", false), b"HELLO");
        assert_eq!(plain_name(b"VMLINUZ.EFI;1", false), b"VMLINUZ.EFI");
        assert_eq!(plain_name(b"ISOLINUX", true), b"ISOLINUX");
    }
}
