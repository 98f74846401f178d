//! GPT and MBR partition tables, over open disk handles.
//!
//! Reading is done by our own parser ([`gpt`], [`mbr`]): it checks every
//! offset against the disk size and bounds every allocation, so a hostile
//! image gives a clean [`Error::Corrupt`] instead of a panic or a huge
//! allocation (gptman and mbrman assume sane input). Writing goes through
//! gptman and mbrman, whose tables pass `sfdisk -V` and `sgdisk -v`.
//!
//! The placement rules follow Ironic's agent (IPA): `disk_utils.make_partitions`
//! for fresh layouts, `partition_utils.create_config_drive_partition` for the
//! config drive added after a whole-disk image, and `disk_utils.fix_gpt_partition`
//! (`sgdisk -e`) for moving the backup GPT to the real end of the disk.

mod gpt;
mod layout;
mod mbr;

use std::io::{self, Read, Seek, SeekFrom, Write};

use crate::error::{Error, IoContext, Result};

pub use layout::{
    create_layout, BootMode, Layout, LayoutResult, BIOS_BOOT_MIB, DEFAULT_EFI_SYSTEM_MIB,
};

/// The logical sector size assumed for MBR tables and for tables we create.
pub const DEFAULT_SECTOR_SIZE: u64 = 512;

const MIB: u64 = 1 << 20;

/// Partitions start on 1 MiB boundaries, as parted's "optimal" alignment and
/// sgdisk do: right for 4K-sector disks, SSD erase blocks and RAID stripes.
const ALIGNMENT: u64 = MIB;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    Gpt,
    Mbr,
}

/// One partition, in bytes from the start of the disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Partition {
    /// The number Linux gives it (`sda<number>`): the GPT entry index plus one,
    /// 1-4 for MBR primaries, 5 and up for MBR logical partitions.
    pub number: u32,
    pub start: u64,
    pub size: u64,
    /// A lowercase GPT type GUID, or the MBR type byte as `0x83`.
    pub type_id: String,
    /// The lowercase GPT partition GUID, or for MBR the PARTUUID Linux derives
    /// from the disk signature (`1234abcd-01`): what `root=PARTUUID=` takes.
    pub uuid: Option<String>,
    /// The GPT partition name (PARTLABEL); MBR has none.
    pub name: Option<String>,
    /// MBR: the active flag. GPT: the "legacy BIOS bootable" attribute (bit 2).
    pub bootable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionTable {
    pub kind: TableKind,
    /// The lowercase GPT disk GUID, or the MBR disk signature as `0x1234abcd`.
    pub disk_id: String,
    pub sector_size: u64,
    /// Sorted by number.
    pub partitions: Vec<Partition>,
    /// GPT only: the primary header or its entries were corrupt and this table
    /// was read from the backup copy at the end of the disk. Rewriting the
    /// table (e.g. [`relocate_gpt_backup`]) repairs the primary.
    pub used_backup_gpt: bool,
}

/// Reads the table of a disk or disk image of `disk_size` bytes; `Ok(None)`
/// when there is none. Corrupt tables are [`Error::Corrupt`]; a corrupt
/// primary GPT with a good backup is read from the backup and says so in
/// [`PartitionTable::used_backup_gpt`]. GPT with 4096-byte sectors is found
/// too (header at byte 4096).
pub fn read_table<D: Read + Seek>(disk: &mut D, disk_size: u64) -> Result<Option<PartitionTable>> {
    Ok(match probe(disk, disk_size)? {
        Probed::None => None,
        Probed::Gpt(g) => Some(g.to_table()),
        Probed::Mbr(m) => Some(m.to_table()),
    })
}

/// After a whole-disk image smaller than the disk was written: moves the GPT
/// backup header and entries to the real end of the disk and sets the last
/// usable LBA accordingly (what `sgdisk -e` does, and what IPA runs before
/// adding a config drive). Also repairs a corrupt primary from the backup.
/// No-op for MBR and for disks without a table.
pub fn relocate_gpt_backup<D: Read + Write + Seek>(disk: &mut D, disk_size: u64) -> Result<()> {
    match probe(disk, disk_size)? {
        Probed::Gpt(g) => gpt::rewrite(disk, disk_size, &g, None),
        Probed::Mbr(_) | Probed::None => Ok(()),
    }
}

/// Adds a partition for a config drive at the end of the disk and returns it.
///
/// Like IPA's `create_config_drive_partition`: on GPT the backup table is
/// first moved to the end of the disk (`sgdisk -e`), then the partition takes
/// the last usable sectors, its start aligned down to 1 MiB (so it is at least
/// `size` bytes; `sgdisk -n 0:-64M:0` gives the same), with the Linux
/// filesystem type and the given `name`. On MBR it is a primary partition of
/// type 0x0c (parted's `fat32`) ending at the end of the disk, or at 2 TiB on
/// larger disks (the most MBR can address). Refused when there is less than
/// `size` bytes free after the last partition, when MBR already has 4
/// primaries, or when the disk has no partition table.
pub fn add_partition_at_end<D: Read + Write + Seek>(
    disk: &mut D,
    disk_size: u64,
    size: u64,
    name: &str,
) -> Result<Partition> {
    if size == 0 {
        return Err(Error::Invalid(
            "the config drive partition size must be more than 0 bytes".into(),
        ));
    }
    let number = match probe(disk, disk_size)? {
        Probed::Gpt(g) => gpt::add_at_end(disk, disk_size, &g, size, name)?,
        Probed::Mbr(m) => mbr::add_at_end(disk, disk_size, &m, size)?,
        Probed::None => {
            return Err(Error::Unsupported(
                "the disk has no partition table, so a config drive partition cannot be added \
                 after the image"
                    .into(),
            ))
        }
    };
    let table = read_table(disk, disk_size)?.ok_or_else(|| {
        Error::Corrupt(
            "the partition table written for the config drive cannot be read back".into(),
        )
    })?;
    table
        .partitions
        .into_iter()
        .find(|p| p.number == number)
        .ok_or_else(|| {
            Error::Corrupt(format!(
                "config drive partition {number} is missing from the table read back"
            ))
        })
}

enum Probed {
    None,
    Gpt(gpt::GptDisk),
    Mbr(mbr::MbrDisk),
}

/// Finds which table the disk has. A protective (0xEE) entry or a GPT header
/// at LBA 1 means GPT, like libblkid; otherwise a valid MBR signature with
/// sane boot flags means MBR.
fn probe<D: Read + Seek>(disk: &mut D, disk_size: u64) -> Result<Probed> {
    if disk_size < DEFAULT_SECTOR_SIZE {
        return Ok(Probed::None);
    }
    let mut sector0 = [0u8; 512];
    read_at(disk, disk_size, 0, &mut sector0, "the master boot record")?;
    let boot_record = mbr::BootRecord::parse(&sector0);
    if let Some(g) = gpt::probe(disk, disk_size, boot_record.as_ref())? {
        return Ok(Probed::Gpt(g));
    }
    match boot_record {
        Some(record) => Ok(Probed::Mbr(mbr::read(disk, disk_size, record)?)),
        None => Ok(Probed::None),
    }
}

/// Reads `buf.len()` bytes at `offset`, refusing reads past `disk_size`
/// (offsets come from the disk itself and must not be trusted).
fn read_at<D: Read + Seek>(
    disk: &mut D,
    disk_size: u64,
    offset: u64,
    buf: &mut [u8],
    what: &str,
) -> Result<()> {
    let end = offset.checked_add(buf.len() as u64);
    if end.is_none_or(|end| end > disk_size) {
        return Err(Error::Corrupt(format!(
            "{what} (byte {offset}, {} bytes) lies past the end of the {disk_size}-byte disk",
            buf.len()
        )));
    }
    disk.seek(SeekFrom::Start(offset))
        .with_context(|| format!("seeking to {what} at byte {offset}"))?;
    disk.read_exact(buf)
        .with_context(|| format!("reading {what} at byte {offset}"))
}

fn write_at<D: Write + Seek>(disk: &mut D, offset: u64, buf: &[u8], what: &str) -> Result<()> {
    disk.seek(SeekFrom::Start(offset))
        .with_context(|| format!("seeking to {what} at byte {offset}"))?;
    disk.write_all(buf)
        .with_context(|| format!("writing {what} at byte {offset}"))
}

/// Zeroes `len` bytes at `offset`, writing only the chunks that are not
/// already zero so sparse files and thin disks stay sparse.
fn wipe<D: Read + Write + Seek>(
    disk: &mut D,
    disk_size: u64,
    offset: u64,
    len: u64,
    what: &str,
) -> Result<()> {
    const CHUNK: u64 = 64 * 1024;
    let end = offset.saturating_add(len).min(disk_size);
    let mut buf = vec![0u8; CHUNK as usize];
    let mut pos = offset;
    while pos < end {
        let n = CHUNK.min(end - pos) as usize;
        read_at(disk, disk_size, pos, &mut buf[..n], what)?;
        if buf[..n].iter().any(|&b| b != 0) {
            buf[..n].fill(0);
            write_at(disk, pos, &buf[..n], what)?;
        }
        pos += n as u64;
    }
    Ok(())
}

fn align_down(value: u64, alignment: u64) -> u64 {
    value - value % alignment
}

/// Bytes from the kernel's random source, for disk and partition GUIDs and MBR
/// signatures (they must differ between machines deployed from one image).
fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for new disk identifiers")?;
    Ok(bytes)
}

/// Presents `disk` as exactly `size` bytes long, so that gptman and mbrman,
/// which find the disk size with `SeekFrom::End`, use the size the caller
/// gave (an image file may be shorter than the disk it stands for).
struct DiskWindow<'a, D> {
    disk: &'a mut D,
    size: u64,
    pos: u64,
}

impl<'a, D: Seek> DiskWindow<'a, D> {
    fn new(disk: &'a mut D, size: u64) -> Self {
        DiskWindow { disk, size, pos: 0 }
    }
}

impl<D: Read + Seek> Read for DiskWindow<'_, D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.size.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.disk.seek(SeekFrom::Start(self.pos))?;
        let read = self.disk.read(&mut buf[..n])?;
        self.pos += read as u64;
        Ok(read)
    }
}

impl<D: Write + Seek> Write for DiskWindow<'_, D> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let end = self.pos.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.size) {
            return Err(io::Error::other(format!(
                "write of {} bytes at byte {} goes past the end of the {}-byte disk",
                buf.len(),
                self.pos,
                self.size
            )));
        }
        self.disk.seek(SeekFrom::Start(self.pos))?;
        let written = self.disk.write(buf)?;
        self.pos += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.disk.flush()
    }
}

impl<D: Seek> Seek for DiskWindow<'_, D> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(n) => self.size.checked_add_signed(n),
            SeekFrom::Current(n) => self.pos.checked_add_signed(n),
        };
        self.pos = new.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the disk",
            )
        })?;
        Ok(self.pos)
    }
}
