//! MBR (DOS) tables: a bounded reader of our own (primaries and the chain of
//! extended boot records), and writing through mbrman. Always 512-byte sectors.

use std::io::{Read, Seek, Write};

use super::{
    align_down, random_bytes, read_at, DiskWindow, Partition, PartitionTable, TableKind, ALIGNMENT,
};
use crate::error::{Error, Result};

const SECTOR: u64 = 512;
/// MBR counts sectors in 32 bits: with 512-byte sectors nothing past 2 TiB
/// can be addressed (IPA's `MAX_DISK_SIZE_MB_SUPPORTED_BY_MBR`).
pub(super) const MAX_SECTORS: u64 = 1 << 32;
/// Linux numbers at most this many logical partitions; also bounds a
/// hostile EBR chain.
const MAX_LOGICAL: usize = 256;

pub(super) const TYPE_LINUX: u8 = 0x83;
pub(super) const TYPE_SWAP: u8 = 0x82;
/// The ESP type on MBR disks.
pub(super) const TYPE_EFI_SYSTEM: u8 = 0xef;
/// W95 FAT32 (LBA): what parted's `mkpart primary fat32` gives, which is how
/// IPA creates the config drive partition on MBR disks.
pub(super) const TYPE_FAT32_LBA: u8 = 0x0c;
const TYPE_PROTECTIVE: u8 = 0xee;
const BOOT_ACTIVE: u8 = 0x80;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RawEntry {
    pub boot: u8,
    pub sys: u8,
    pub start: u32,
    pub sectors: u32,
}

impl RawEntry {
    fn parse(b: &[u8]) -> RawEntry {
        RawEntry {
            boot: b[0],
            sys: b[4],
            start: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            sectors: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        }
    }

    fn is_used(&self) -> bool {
        self.sys != 0
    }

    fn is_extended(&self) -> bool {
        matches!(self.sys, 0x05 | 0x0f | 0x85)
    }

    fn end(&self) -> u64 {
        u64::from(self.start) + u64::from(self.sectors)
    }
}

/// Sector 0 when it holds a partition table: the 0x55AA signature, boot
/// flags that are 0x00 or 0x80, and not a FAT or NTFS boot sector (a
/// filesystem made on the whole disk also ends in 0x55AA; libblkid tells them
/// apart the same way).
#[derive(Debug, Clone)]
pub(super) struct BootRecord {
    pub signature: u32,
    pub entries: [RawEntry; 4],
}

impl BootRecord {
    pub fn parse(sector: &[u8; 512]) -> Option<BootRecord> {
        if sector[510..512] != [0x55, 0xaa] {
            return None;
        }
        let entries: [RawEntry; 4] =
            std::array::from_fn(|i| RawEntry::parse(&sector[446 + 16 * i..462 + 16 * i]));
        if entries.iter().any(|e| e.boot != 0 && e.boot != BOOT_ACTIVE) {
            return None;
        }
        let jumps = sector[0] == 0xeb || sector[0] == 0xe9;
        let filesystem = &sector[3..11] == b"NTFS    "
            || &sector[54..59] == b"FAT12"
            || &sector[54..59] == b"FAT16"
            || &sector[82..87] == b"FAT32";
        if jumps && filesystem {
            return None;
        }
        Some(BootRecord {
            signature: u32::from_le_bytes([sector[440], sector[441], sector[442], sector[443]]),
            entries,
        })
    }

    pub fn is_protective(&self) -> bool {
        self.entries.iter().any(|e| e.sys == TYPE_PROTECTIVE)
    }

    /// The last LBA the protective entry covers: where the backup GPT of an
    /// image lies once the image was copied onto a larger disk.
    pub fn protective_last_lba(&self) -> Option<u64> {
        let e = self.entries.iter().find(|e| e.sys == TYPE_PROTECTIVE)?;
        (e.sectors > 0).then(|| e.end() - 1)
    }

    /// The slot of the 0xEE entry when it is the only entry and starts at
    /// LBA 1 (a plain protective MBR, not a hybrid one).
    pub fn pure_protective_slot(&self) -> Option<usize> {
        let used: Vec<usize> = (0..4).filter(|&i| self.entries[i].is_used()).collect();
        match used[..] {
            [slot]
                if self.entries[slot].sys == TYPE_PROTECTIVE && self.entries[slot].start == 1 =>
            {
                Some(slot)
            }
            _ => None,
        }
    }
}

/// An MBR that passed every check.
#[derive(Debug, Clone)]
pub(super) struct MbrDisk {
    pub signature: u32,
    /// Primary slots as found (index 0 is partition 1).
    pub primaries: [RawEntry; 4],
    /// (number, entry with an absolute start), numbered from 5.
    pub logicals: Vec<(u32, RawEntry)>,
}

impl MbrDisk {
    pub fn to_table(&self) -> PartitionTable {
        let primaries = self
            .primaries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.is_used() && e.sectors > 0)
            .map(|(i, e)| (i as u32 + 1, *e));
        let partitions = primaries
            .chain(self.logicals.iter().copied())
            .map(|(number, e)| Partition {
                number,
                start: u64::from(e.start) * SECTOR,
                size: u64::from(e.sectors) * SECTOR,
                type_id: format!("0x{:02x}", e.sys),
                uuid: Some(format!("{:08x}-{number:02x}", self.signature)),
                name: None,
                bootable: e.boot == BOOT_ACTIVE,
            })
            .collect();
        PartitionTable {
            kind: TableKind::Mbr,
            disk_id: format!("0x{:08x}", self.signature),
            sector_size: SECTOR,
            partitions,
            used_backup_gpt: false,
        }
    }

    /// The first sector after every partition (extended ones included).
    fn end(&self) -> u64 {
        self.primaries
            .iter()
            .filter(|e| e.is_used())
            .map(RawEntry::end)
            .max()
            .unwrap_or(0)
    }
}

/// Checks the primaries and follows the chain of logical partitions.
pub(super) fn read<D: Read + Seek>(
    disk: &mut D,
    disk_size: u64,
    record: BootRecord,
) -> Result<MbrDisk> {
    let sectors = disk_size / SECTOR;
    let mut used: Vec<(u32, RawEntry)> = Vec::new();
    for (i, e) in record.entries.iter().enumerate() {
        let number = i as u32 + 1;
        if !e.is_used() || e.sectors == 0 {
            continue;
        }
        if e.start == 0 {
            return Err(Error::Corrupt(format!(
                "MBR partition {number} starts at sector 0, on top of the partition table"
            )));
        }
        if e.end() > sectors {
            return Err(Error::Corrupt(format!(
                "MBR partition {number} ends at byte {}, past the end of the {disk_size}-byte disk",
                e.end() * SECTOR
            )));
        }
        used.push((number, *e));
    }
    check_overlaps(&used, "MBR partitions")?;

    let extended: Vec<&(u32, RawEntry)> = used.iter().filter(|(_, e)| e.is_extended()).collect();
    let logicals = match extended[..] {
        [] => Vec::new(),
        [(_, ext)] => read_logicals(disk, disk_size, ext)?,
        _ => {
            return Err(Error::Corrupt(
                "the MBR has more than one extended partition".into(),
            ))
        }
    };
    Ok(MbrDisk {
        signature: record.signature,
        primaries: record.entries,
        logicals,
    })
}

/// Each EBR holds one logical partition (relative to the EBR) and a link to
/// the next EBR (relative to the extended partition). Links must move
/// forward, which ends every chain.
fn read_logicals<D: Read + Seek>(
    disk: &mut D,
    disk_size: u64,
    ext: &RawEntry,
) -> Result<Vec<(u32, RawEntry)>> {
    let ext_start = u64::from(ext.start);
    let ext_end = ext.end();
    let mut logicals = Vec::new();
    let mut ebr = ext_start;
    loop {
        let mut sector = [0u8; 512];
        read_at(
            disk,
            disk_size,
            ebr * SECTOR,
            &mut sector,
            "an extended boot record",
        )?;
        if sector[510..512] != [0x55, 0xaa] {
            if ebr == ext_start {
                // An empty extended partition needs no EBR.
                break;
            }
            return Err(Error::Corrupt(format!(
                "the extended boot record at sector {ebr} has no 0x55AA signature"
            )));
        }
        let number = 5 + logicals.len() as u32;
        let part = RawEntry::parse(&sector[446..462]);
        let link = RawEntry::parse(&sector[462..478]);
        if part.is_used() && part.sectors > 0 {
            let start = ebr + u64::from(part.start);
            let end = start + u64::from(part.sectors);
            if part.start == 0 || end > ext_end {
                return Err(Error::Corrupt(format!(
                    "logical partition {number} (sectors {start}..{end}) lies outside its extended \
                     partition (sectors {ext_start}..{ext_end})"
                )));
            }
            let start = u32::try_from(start).map_err(|_| {
                Error::Corrupt(format!("logical partition {number} starts beyond 2 TiB"))
            })?;
            logicals.push((number, RawEntry { start, ..part }));
        }
        if !link.is_used() || link.start == 0 {
            break;
        }
        let next = ext_start + u64::from(link.start);
        if next <= ebr || next >= ext_end {
            return Err(Error::Corrupt(format!(
                "the extended boot record at sector {ebr} links to sector {next}, which is not \
                 further into the extended partition (sectors {ext_start}..{ext_end})"
            )));
        }
        if logicals.len() >= MAX_LOGICAL {
            return Err(Error::Corrupt(format!(
                "the extended partition holds more than {MAX_LOGICAL} logical partitions"
            )));
        }
        ebr = next;
    }
    check_overlaps(&logicals, "logical partitions")?;
    Ok(logicals)
}

fn check_overlaps(parts: &[(u32, RawEntry)], what: &str) -> Result<()> {
    let mut by_start: Vec<&(u32, RawEntry)> = parts.iter().collect();
    by_start.sort_by_key(|(_, e)| e.start);
    for pair in by_start.windows(2) {
        if u64::from(pair[1].1.start) < pair[0].1.end() {
            return Err(Error::Corrupt(format!(
                "{what} {} and {} overlap",
                pair[0].0, pair[1].0
            )));
        }
    }
    Ok(())
}

/// One partition of a new MBR, in sectors.
pub(super) struct NewEntry {
    pub bootable: bool,
    pub sys: u8,
    pub start: u64,
    pub sectors: u64,
}

impl NewEntry {
    fn to_mbrman(&self) -> Result<mbrman::MBRPartitionEntry> {
        let start = u32::try_from(self.start);
        let sectors = u32::try_from(self.sectors);
        let (Ok(start), Ok(sectors)) = (start, sectors) else {
            return Err(Error::TooLarge(format!(
                "a partition at byte {} of {} bytes lies beyond the 2 TiB an MBR can address",
                self.start * SECTOR,
                self.sectors * SECTOR
            )));
        };
        Ok(mbrman::MBRPartitionEntry {
            boot: if self.bootable { BOOT_ACTIVE } else { 0 },
            first_chs: chs(self.start),
            sys: self.sys,
            last_chs: chs(self.start + self.sectors - 1),
            starting_lba: start,
            sectors,
        })
    }
}

/// Writes a new MBR holding `entries` as partitions 1.. with a random disk
/// signature (Linux derives PARTUUIDs from it, so it must differ per machine).
pub(super) fn write_new<D: Read + Write + Seek>(
    disk: &mut D,
    disk_size: u64,
    entries: &[NewEntry],
) -> Result<()> {
    if entries.len() > 4 {
        return Err(Error::Invalid(format!(
            "an MBR holds 4 primary partitions, {} were asked for",
            entries.len()
        )));
    }
    let mut signature: [u8; 4] = random_bytes()?;
    if signature == [0; 4] {
        signature = [1, 0, 0, 0];
    }
    let mut window = DiskWindow::new(disk, disk_size);
    let mut mbr =
        mbrman::MBR::new_from(&mut window, SECTOR as u32, signature).map_err(mbrman_error)?;
    for (i, e) in entries.iter().enumerate() {
        mbr[i + 1] = e.to_mbrman()?;
    }
    mbr.write_into(&mut window).map_err(mbrman_error)
}

/// Adds the config drive as a primary partition ending at the end of the
/// disk, or at 2 TiB on larger disks, like IPA; returns its number.
pub(super) fn add_at_end<D: Read + Write + Seek>(
    disk: &mut D,
    disk_size: u64,
    mbr: &MbrDisk,
    size: u64,
) -> Result<u32> {
    let Some(slot) = mbr.primaries.iter().position(|e| !e.is_used()) else {
        return Err(Error::Refused(
            "the disk uses MBR partitioning and already has 4 primary partitions, so no config \
             drive partition can be added"
                .into(),
        ));
    };
    let sectors = disk_size / SECTOR;
    let limit = sectors.min(MAX_SECTORS);
    let after = mbr.end().max(1);
    let start = (limit * SECTOR)
        .checked_sub(size)
        .map(|s| align_down(s, ALIGNMENT) / SECTOR);
    let start = match start {
        Some(start) if start >= after => start,
        _ if sectors > MAX_SECTORS => {
            return Err(Error::Refused(format!(
                "there is no room for a {size}-byte config drive partition below 2 TiB, the most \
                 an MBR can address on this {disk_size}-byte disk: the partitions end at byte {}",
                after * SECTOR
            )))
        }
        _ => {
            return Err(Error::Refused(format!(
                "there is no room for a {size}-byte config drive partition at the end of the \
                 disk: the partitions end at byte {} and the disk at byte {}",
                after * SECTOR,
                limit * SECTOR
            )))
        }
    };
    let entry = NewEntry {
        bootable: false,
        sys: TYPE_FAT32_LBA,
        start,
        sectors: limit - start,
    }
    .to_mbrman()?;
    let mut window = DiskWindow::new(disk, disk_size);
    let mut header = mbrman::MBRHeader::read_from(&mut window).map_err(mbrman_error)?;
    header[slot + 1] = entry;
    header.write_into(&mut window).map_err(mbrman_error)?;
    Ok(slot as u32 + 1)
}

/// CHS for the usual 255-head, 63-sector geometry; addresses past what CHS
/// can hold get the conventional 1023/254/63, as fdisk writes.
fn chs(lba: u64) -> mbrman::CHS {
    const HEADS: u64 = 255;
    const SECTORS: u64 = 63;
    let cylinder = lba / (HEADS * SECTORS);
    if cylinder > 1023 {
        return mbrman::CHS::new(1023, 254, 63);
    }
    mbrman::CHS::new(
        cylinder as u16,
        ((lba / SECTORS) % HEADS) as u8,
        (lba % SECTORS + 1) as u8,
    )
}

fn mbrman_error(e: mbrman::Error) -> Error {
    match e {
        mbrman::Error::Io(source) => Error::io("writing the MBR", source),
        other => Error::Invalid(format!("the MBR could not be written: {other}")),
    }
}
