//! GPT: a bounded reader of our own, and writing through gptman.
//!
//! The reader checks the header and entry-array checksums, that every LBA
//! lies on the disk and that partitions neither leave the usable area nor
//! overlap. Only tables that pass are handed to the writer, which rebuilds
//! them with gptman (128 entries of 128 bytes, backup at the disk's end).

use std::io::{Read, Seek, Write};

use super::mbr::BootRecord;
use super::{
    align_down, random_bytes, read_at, write_at, DiskWindow, Partition, PartitionTable, TableKind,
    ALIGNMENT, MIB,
};
use crate::error::{Error, Result};

const SIGNATURE: &[u8; 8] = b"EFI PART";
const REVISION_1_0: u32 = 0x0001_0000;
const HEADER_SIZE: usize = 92;
const ENTRY_SIZE: usize = 128;
/// The spec's minimum array is 16 KiB; tools that make it larger stay far
/// below this. Bounds what a hostile header can make us read.
const MAX_ENTRY_ARRAY: u64 = 4 * MIB;
/// What gptman writes: 128 entries of 128 bytes.
const WRITTEN_ENTRIES: u32 = 128;
/// GPT partition names are 36 UTF-16 code units.
const NAME_UNITS: usize = 36;

/// Linux filesystem data (sgdisk 8300): parted's default for a partition
/// without a filesystem type, and sgdisk's for `-n`.
pub(super) const LINUX_DATA: [u8; 16] = guid("0FC63DAF-8483-4772-8E79-3D69D8477DE4");
/// Linux swap (sgdisk 8200), parted's `linux-swap`.
pub(super) const LINUX_SWAP: [u8; 16] = guid("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F");
/// EFI System Partition: what parted's `boot` flag sets on GPT.
pub(super) const EFI_SYSTEM: [u8; 16] = guid("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
/// BIOS boot partition (parted `bios_grub`), where GRUB puts its core image.
pub(super) const BIOS_BOOT: [u8; 16] = guid("21686148-6449-6E6F-744E-656564454649");

/// Attribute bit 2: legacy BIOS bootable.
const LEGACY_BIOS_BOOTABLE: u64 = 1 << 2;

/// A GPT that passed every check.
#[derive(Debug, Clone)]
pub(super) struct GptDisk {
    pub sector_size: u64,
    pub disk_guid: [u8; 16],
    pub first_usable: u64,
    /// Where the header that was read lies.
    pub header_lba: u64,
    /// Where that header says the other copy lies.
    pub alternate_lba: u64,
    pub used_backup: bool,
    /// Used entries only, by number.
    pub entries: Vec<GptEntry>,
}

#[derive(Debug, Clone)]
pub(super) struct GptEntry {
    pub number: u32,
    pub type_guid: [u8; 16],
    pub unique_guid: [u8; 16],
    pub first_lba: u64,
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

impl GptDisk {
    pub fn to_table(&self) -> PartitionTable {
        PartitionTable {
            kind: TableKind::Gpt,
            disk_id: guid_string(&self.disk_guid),
            sector_size: self.sector_size,
            partitions: self
                .entries
                .iter()
                .map(|e| e.to_partition(self.sector_size))
                .collect(),
            used_backup_gpt: self.used_backup,
        }
    }
}

impl GptEntry {
    fn to_partition(&self, sector_size: u64) -> Partition {
        Partition {
            number: self.number,
            start: self.first_lba * sector_size,
            size: (self.last_lba - self.first_lba + 1) * sector_size,
            type_id: guid_string(&self.type_guid),
            uuid: Some(guid_string(&self.unique_guid)),
            name: (!self.name.is_empty()).then(|| self.name.clone()),
            bootable: self.attributes & LEGACY_BIOS_BOOTABLE != 0,
        }
    }

    fn to_gptman(&self) -> gptman::GPTPartitionEntry {
        gptman::GPTPartitionEntry {
            partition_type_guid: self.type_guid,
            unique_partition_guid: self.unique_guid,
            starting_lba: self.first_lba,
            ending_lba: self.last_lba,
            attribute_bits: self.attributes,
            partition_name: truncate_name(&self.name).as_str().into(),
        }
    }

    /// A new entry with a random partition GUID.
    pub fn new(
        number: u32,
        type_guid: [u8; 16],
        first_lba: u64,
        last_lba: u64,
        name: &str,
    ) -> Result<Self> {
        Ok(GptEntry {
            number,
            type_guid,
            unique_guid: random_guid()?,
            first_lba,
            last_lba,
            attributes: 0,
            name: truncate_name(name),
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Primary,
    Backup,
}

/// Finds and reads a GPT: the primary at LBA 1 with 512- or 4096-byte
/// sectors, else the backup at the last LBA (or where the protective MBR says
/// the disk ended, for an image copied onto a larger disk). `Ok(None)` when
/// there is neither a GPT signature nor a protective MBR.
pub(super) fn probe<D: Read + Seek>(
    disk: &mut D,
    disk_size: u64,
    boot_record: Option<&BootRecord>,
) -> Result<Option<GptDisk>> {
    let at_512 = has_signature(disk, disk_size, 512)?;
    let at_4096 = has_signature(disk, disk_size, 4096)?;
    let protective = boot_record.is_some_and(BootRecord::is_protective);
    if !at_512 && !at_4096 && !protective {
        return Ok(None);
    }
    let sector_sizes: &[u64] = match (at_512, at_4096) {
        (true, false) => &[512],
        (false, true) => &[4096],
        _ => &[512, 4096],
    };
    let mut failures = Vec::new();
    for &ss in sector_sizes {
        match read_copy(disk, disk_size, ss, 1, Which::Primary) {
            Ok(g) => return Ok(Some(g)),
            Err(Error::Corrupt(why)) => failures.push(why),
            Err(e) => return Err(e),
        }
        let sectors = disk_size / ss;
        let mut candidates = vec![sectors.saturating_sub(1)];
        if let Some(end) = boot_record.and_then(BootRecord::protective_last_lba) {
            if end != sectors.saturating_sub(1) && end > 1 && end < sectors {
                candidates.push(end);
            }
        }
        for lba in candidates {
            match read_copy(disk, disk_size, ss, lba, Which::Backup) {
                Ok(g) => return Ok(Some(g)),
                Err(Error::Corrupt(why)) => failures.push(why),
                Err(e) => return Err(e),
            }
        }
    }
    Err(Error::Corrupt(format!(
        "the disk has a GPT but no copy of it can be read: {}",
        failures.join("; ")
    )))
}

fn has_signature<D: Read + Seek>(disk: &mut D, disk_size: u64, sector_size: u64) -> Result<bool> {
    if disk_size < 2 * sector_size {
        return Ok(false);
    }
    let mut sig = [0u8; 8];
    read_at(disk, disk_size, sector_size, &mut sig, "the GPT signature")?;
    Ok(&sig == SIGNATURE)
}

fn read_copy<D: Read + Seek>(
    disk: &mut D,
    disk_size: u64,
    ss: u64,
    lba: u64,
    copy: Which,
) -> Result<GptDisk> {
    let what = match copy {
        Which::Primary => format!("the primary GPT header (LBA {lba}, {ss}-byte sectors)"),
        Which::Backup => format!("the backup GPT header (LBA {lba}, {ss}-byte sectors)"),
    };
    let corrupt = |why: String| Error::Corrupt(format!("{what} {why}"));
    let sectors = disk_size / ss;
    if lba == 0 || lba >= sectors {
        return Err(corrupt(format!("lies outside the {sectors}-sector disk")));
    }
    let mut header = vec![0u8; ss as usize];
    read_at(disk, disk_size, lba * ss, &mut header, &what)?;
    if &header[..8] != SIGNATURE {
        return Err(corrupt("has no \"EFI PART\" signature".into()));
    }
    let revision = le32(&header, 8);
    if revision != REVISION_1_0 {
        return Err(corrupt(format!("has unknown revision {revision:#010x}")));
    }
    let header_size = le32(&header, 12) as usize;
    if header_size < HEADER_SIZE || header_size > header.len() {
        return Err(corrupt(format!(
            "has an impossible size of {header_size} bytes"
        )));
    }
    let stored = le32(&header, 16);
    let mut copy_for_crc = header[..header_size].to_vec();
    copy_for_crc[16..20].fill(0);
    let computed = crc32(&copy_for_crc);
    if stored != computed {
        return Err(corrupt(format!(
            "has a wrong checksum (stored {stored:08x}, computed {computed:08x})"
        )));
    }
    let my_lba = le64(&header, 24);
    if my_lba != lba {
        return Err(corrupt(format!("says it lies at LBA {my_lba}")));
    }
    let alternate_lba = le64(&header, 32);
    let first_usable = le64(&header, 40);
    let last_usable = le64(&header, 48);
    if first_usable > last_usable || last_usable >= sectors || first_usable < 2 {
        return Err(corrupt(format!(
            "gives usable sectors {first_usable}..={last_usable}, which do not fit the \
             {sectors}-sector disk (is the image larger than the disk?)"
        )));
    }
    let mut disk_guid = [0u8; 16];
    disk_guid.copy_from_slice(&header[56..72]);
    let entries_lba = le64(&header, 72);
    let count = le32(&header, 80);
    let entry_size = le32(&header, 84) as usize;
    let array_crc = le32(&header, 88);
    if entry_size < ENTRY_SIZE || !entry_size.is_multiple_of(ENTRY_SIZE) {
        return Err(corrupt(format!(
            "has partition entries of {entry_size} bytes"
        )));
    }
    let array_bytes = u64::from(count) * entry_size as u64;
    if array_bytes > MAX_ENTRY_ARRAY {
        return Err(corrupt(format!(
            "has a {array_bytes}-byte partition entry array, more than the {MAX_ENTRY_ARRAY} \
             bytes accepted"
        )));
    }
    let array_sectors = array_bytes.div_ceil(ss);
    let array_end = entries_lba.saturating_add(array_sectors);
    let array_misplaced = entries_lba < 2
        || array_end > sectors
        || (lba >= entries_lba && lba < array_end)
        || (entries_lba <= last_usable && array_end > first_usable);
    if array_misplaced {
        return Err(corrupt(format!(
            "puts its partition entries at LBA {entries_lba}..{array_end}, overlapping the header, \
             the usable sectors or the end of the disk"
        )));
    }
    let mut array = vec![0u8; array_bytes as usize];
    read_at(
        disk,
        disk_size,
        entries_lba * ss,
        &mut array,
        "the GPT partition entries",
    )?;
    let computed = crc32(&array);
    if array_crc != computed {
        return Err(corrupt(format!(
            "has partition entries with a wrong checksum (stored {array_crc:08x}, computed \
             {computed:08x})"
        )));
    }
    let mut entries = Vec::new();
    for (index, raw) in array.chunks_exact(entry_size).enumerate() {
        let Some(entry) = parse_entry(index as u32 + 1, raw) else {
            continue;
        };
        if entry.first_lba > entry.last_lba
            || entry.first_lba < first_usable
            || entry.last_lba > last_usable
        {
            return Err(corrupt(format!(
                "has partition {} at sectors {}..={}, outside the usable sectors \
                 {first_usable}..={last_usable}",
                entry.number, entry.first_lba, entry.last_lba
            )));
        }
        entries.push(entry);
    }
    let mut by_start: Vec<&GptEntry> = entries.iter().collect();
    by_start.sort_by_key(|e| e.first_lba);
    for pair in by_start.windows(2) {
        if pair[1].first_lba <= pair[0].last_lba {
            return Err(corrupt(format!(
                "has overlapping partitions {} and {}",
                pair[0].number, pair[1].number
            )));
        }
    }
    Ok(GptDisk {
        sector_size: ss,
        disk_guid,
        first_usable,
        header_lba: lba,
        alternate_lba,
        used_backup: copy == Which::Backup,
        entries,
    })
}

fn parse_entry(number: u32, raw: &[u8]) -> Option<GptEntry> {
    let mut type_guid = [0u8; 16];
    type_guid.copy_from_slice(&raw[0..16]);
    if type_guid == [0; 16] {
        return None;
    }
    let mut unique_guid = [0u8; 16];
    unique_guid.copy_from_slice(&raw[16..32]);
    let units: Vec<u16> = raw[56..128]
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .take_while(|&u| u != 0)
        .collect();
    Some(GptEntry {
        number,
        type_guid,
        unique_guid,
        first_lba: le64(raw, 32),
        last_lba: le64(raw, 40),
        attributes: le64(raw, 48),
        name: String::from_utf16_lossy(&units),
    })
}

/// Rewrites `gpt` (plus `added`) with both copies where they belong on a disk
/// of `disk_size` bytes: the backup in the last sectors, the last usable LBA
/// just before it. This is `sgdisk -e`, and repairs a bad copy from the good one.
pub(super) fn rewrite<D: Read + Write + Seek>(
    disk: &mut D,
    disk_size: u64,
    gpt: &GptDisk,
    added: Option<GptEntry>,
) -> Result<()> {
    let ss = gpt.sector_size;
    let mut entries = gpt.entries.clone();
    entries.extend(added);
    let written = write_table(
        disk,
        disk_size,
        ss,
        gpt.disk_guid,
        gpt.first_usable,
        &entries,
    )?;

    // A stale backup header in what is now free space would make tools that
    // scan for one (and people) think there are two tables.
    let old_backup = if gpt.used_backup {
        gpt.header_lba
    } else {
        gpt.alternate_lba
    };
    let in_partition = entries
        .iter()
        .any(|e| (e.first_lba..=e.last_lba).contains(&old_backup));
    if old_backup != written.backup_lba
        && old_backup > 1
        && old_backup < disk_size / ss
        && !in_partition
    {
        let mut sig = [0u8; 8];
        read_at(
            disk,
            disk_size,
            old_backup * ss,
            &mut sig,
            "the old backup GPT header",
        )?;
        if &sig == SIGNATURE {
            write_at(
                disk,
                old_backup * ss,
                &vec![0u8; ss as usize],
                "the old backup GPT header",
            )?;
        }
    }
    fix_protective_mbr(disk, disk_size, ss)
}

/// Writes a brand-new GPT with a random disk GUID and a protective MBR.
pub(super) fn write_new<D: Read + Write + Seek>(
    disk: &mut D,
    disk_size: u64,
    entries: &[GptEntry],
) -> Result<()> {
    let ss = super::DEFAULT_SECTOR_SIZE;
    write_table(disk, disk_size, ss, random_guid()?, 0, entries)?;
    let mut window = DiskWindow::new(disk, disk_size);
    gptman::GPT::write_protective_mbr_into(&mut window, ss).map_err(gptman_error)
}

/// The LBA range a table written by [`write_table`] leaves usable on this disk.
pub(super) fn usable_range(disk_size: u64, ss: u64) -> Result<(u64, u64)> {
    let array_sectors = (u64::from(WRITTEN_ENTRIES) * ENTRY_SIZE as u64).div_ceil(ss);
    let sectors = disk_size / ss;
    let first = 2 + array_sectors;
    // The backup header takes the last sector, its entries the ones before.
    match sectors.checked_sub(2 + array_sectors) {
        Some(last) if last > first => Ok((first, last)),
        _ => Err(Error::TooLarge(format!(
            "a {disk_size}-byte disk is too small for a GPT"
        ))),
    }
}

struct Written {
    backup_lba: u64,
}

fn write_table<D: Read + Write + Seek>(
    disk: &mut D,
    disk_size: u64,
    ss: u64,
    disk_guid: [u8; 16],
    keep_first_usable: u64,
    entries: &[GptEntry],
) -> Result<Written> {
    let (_, last_usable) = usable_range(disk_size, ss)?;
    if let Some(e) = entries
        .iter()
        .find(|e| e.number == 0 || e.number > WRITTEN_ENTRIES)
    {
        return Err(Error::Unsupported(format!(
            "GPT partition {} lies beyond the {WRITTEN_ENTRIES} entries this writer keeps",
            e.number
        )));
    }
    if let Some(e) = entries.iter().find(|e| e.last_lba > last_usable) {
        return Err(Error::TooLarge(format!(
            "GPT partition {} ends at byte {} but the disk's usable space ends at byte {}: the \
             disk is smaller than the image",
            e.number,
            (e.last_lba + 1) * ss,
            (last_usable + 1) * ss
        )));
    }
    let mut window = DiskWindow::new(disk, disk_size);
    let mut table = gptman::GPT::new_from(&mut window, ss, disk_guid).map_err(gptman_error)?;
    // Keep a larger gap before the first partition if the image had one.
    if keep_first_usable > table.header.first_usable_lba && keep_first_usable <= last_usable {
        table.header.first_usable_lba = keep_first_usable;
    }
    for e in entries {
        table[e.number] = e.to_gptman();
    }
    table.write_into(&mut window).map_err(gptman_error)?;
    Ok(Written {
        backup_lba: table.header.backup_lba,
    })
}

/// A protective MBR covers the whole disk (or 2^32-1 sectors); after the
/// table moved to a larger disk, make it say so. Hybrid MBRs are left alone.
fn fix_protective_mbr<D: Read + Write + Seek>(disk: &mut D, disk_size: u64, ss: u64) -> Result<()> {
    let mut sector0 = [0u8; 512];
    read_at(disk, disk_size, 0, &mut sector0, "the protective MBR")?;
    let Some(record) = BootRecord::parse(&sector0) else {
        return Ok(());
    };
    let Some(slot) = record.pure_protective_slot() else {
        return Ok(());
    };
    let wanted = u32::try_from(disk_size / ss - 1).unwrap_or(u32::MAX);
    let offset = 446 + 16 * slot + 12;
    if le32(&sector0, offset) != wanted {
        write_at(
            disk,
            offset as u64,
            &wanted.to_le_bytes(),
            "the protective MBR",
        )?;
    }
    Ok(())
}

/// Adds the config drive partition at the end of a GPT disk (after moving
/// the backup table to the end, like IPA's `fix_gpt_partition`); returns its number.
pub(super) fn add_at_end<D: Read + Write + Seek>(
    disk: &mut D,
    disk_size: u64,
    gpt: &GptDisk,
    size: u64,
    name: &str,
) -> Result<u32> {
    let ss = gpt.sector_size;
    let (first_usable, last_usable) = usable_range(disk_size, ss)?;
    let end = (last_usable + 1) * ss;
    let after = gpt
        .entries
        .iter()
        .map(|e| e.last_lba + 1)
        .max()
        .unwrap_or(first_usable)
        .max(first_usable)
        .max(gpt.first_usable);
    let start = end
        .checked_sub(size)
        .map(|s| align_down(s, ALIGNMENT.max(ss)));
    let start = match start {
        Some(start) if start >= after * ss => start,
        _ => {
            return Err(Error::Refused(format!(
                "there is no room for a {size}-byte config drive partition at the end of the disk: \
                 the partitions end at byte {} and the usable space at byte {end}",
                after * ss
            )))
        }
    };
    let Some(number) = (1..=WRITTEN_ENTRIES).find(|n| gpt.entries.iter().all(|e| e.number != *n))
    else {
        return Err(Error::Refused(format!(
            "all {WRITTEN_ENTRIES} GPT partition entries are in use; no config drive partition \
             can be added"
        )));
    };
    let entry = GptEntry::new(number, LINUX_DATA, start / ss, last_usable, name)?;
    rewrite(disk, disk_size, gpt, Some(entry))?;
    Ok(number)
}

fn gptman_error(e: gptman::Error) -> Error {
    match e {
        gptman::Error::Io(source) => Error::io("writing the GPT", source),
        other => Error::Invalid(format!("the GPT could not be written: {other}")),
    }
}

fn truncate_name(name: &str) -> String {
    let mut units = 0;
    name.chars()
        .take_while(|c| {
            units += c.len_utf16();
            units <= NAME_UNITS
        })
        .collect()
}

/// A random (version 4) GUID in GPT's on-disk byte order.
pub(super) fn random_guid() -> Result<[u8; 16]> {
    let mut g: [u8; 16] = random_bytes()?;
    // Byte 7 holds the high byte of the little-endian time_hi_and_version field.
    g[7] = (g[7] & 0x0f) | 0x40;
    g[8] = (g[8] & 0x3f) | 0x80;
    Ok(g)
}

/// Formats a GUID stored in GPT's mixed-endian order, lowercase like
/// `blkid`'s PARTUUID.
pub(super) fn guid_string(g: &[u8; 16]) -> String {
    let order = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
    let mut s = String::with_capacity(36);
    for (i, &at) in order.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{:02x}", g[at]));
    }
    s
}

/// Parses a GUID written the usual way into GPT's on-disk byte order.
const fn guid(text: &str) -> [u8; 16] {
    let bytes = text.as_bytes();
    let mut plain = [0u8; 16];
    let mut i = 0;
    let mut n = 0;
    while i < bytes.len() {
        if bytes[i] != b'-' {
            let nibble = match bytes[i] {
                b'0'..=b'9' => bytes[i] - b'0',
                b'a'..=b'f' => bytes[i] - b'a' + 10,
                b'A'..=b'F' => bytes[i] - b'A' + 10,
                _ => panic!("not a GUID"),
            };
            plain[n / 2] |= if n % 2 == 0 { nibble << 4 } else { nibble };
            n += 1;
        }
        i += 1;
    }
    let order = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
    let mut out = [0u8; 16];
    let mut k = 0;
    while k < 16 {
        out[k] = plain[order[k]];
        k += 1;
    }
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(data);
    crc.sum()
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_round_trips_through_disk_order() {
        assert_eq!(
            guid_string(&EFI_SYSTEM),
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
        );
        // On disk the first field is little-endian.
        assert_eq!(&EFI_SYSTEM[..4], &[0x28, 0x73, 0x2a, 0xc1]);
    }

    #[test]
    fn names_are_cut_to_36_utf16_units() {
        assert_eq!(truncate_name(&"x".repeat(40)).len(), 36);
        assert_eq!(truncate_name("config-2"), "config-2");
    }
}
