//! Fresh partition tables for partition-image deploys, laid out like IPA's
//! `disk_utils.make_partitions` with local boot.

use std::io::{Read, Seek, Write};

use super::gpt::{self, GptEntry};
use super::mbr::{self, NewEntry};
use super::{read_table, wipe, PartitionTable, TableKind, DEFAULT_SECTOR_SIZE, MIB};
use crate::error::{Error, Result};

/// IPA's `efi_system_partition_size` default, in MiB: room for firmware
/// updates and unified kernels, not just a boot loader.
pub const DEFAULT_EFI_SYSTEM_MIB: u64 = 550;
/// IPA's `bios_boot_partition_size`, in MiB: GRUB's core image on BIOS/GPT.
pub const BIOS_BOOT_MIB: u64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    Bios,
    Uefi,
}

/// What to partition, in MiB. Sizes of 0 mean "no such partition", except
/// `root_mib` (0: the rest of the disk) and `efi_system_mib` (0: the default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub boot_mode: BootMode,
    /// The table type; `None` picks GPT for UEFI and MBR for BIOS, like Ironic.
    pub label: Option<TableKind>,
    /// 0 gives the root partition the rest of the disk.
    pub root_mib: u64,
    pub swap_mib: u64,
    pub ephemeral_mib: u64,
    pub configdrive_mib: u64,
    /// The ESP size for UEFI; 0 means [`DEFAULT_EFI_SYSTEM_MIB`].
    pub efi_system_mib: u64,
}

impl Layout {
    /// Just a root partition filling the disk, and what the boot mode needs.
    pub fn new(boot_mode: BootMode) -> Layout {
        Layout {
            boot_mode,
            label: None,
            root_mib: 0,
            swap_mib: 0,
            ephemeral_mib: 0,
            configdrive_mib: 0,
            efi_system_mib: DEFAULT_EFI_SYSTEM_MIB,
        }
    }
}

/// The table written, and which partition number holds what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutResult {
    pub table: PartitionTable,
    pub root: u32,
    pub swap: Option<u32>,
    pub ephemeral: Option<u32>,
    pub configdrive: Option<u32>,
    pub efi_system: Option<u32>,
    pub bios_grub: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    EfiSystem,
    BiosBoot,
    Ephemeral,
    Swap,
    ConfigDrive,
    Root,
}

impl Role {
    /// GPT partition names (PARTLABEL), for people reading `lsblk`.
    fn name(self) -> &'static str {
        match self {
            Role::EfiSystem => "efi-system",
            Role::BiosBoot => "bios-boot",
            Role::Ephemeral => "ephemeral",
            Role::Swap => "swap",
            Role::ConfigDrive => "configdrive",
            Role::Root => "root",
        }
    }

    fn gpt_type(self) -> [u8; 16] {
        match self {
            Role::EfiSystem => gpt::EFI_SYSTEM,
            Role::BiosBoot => gpt::BIOS_BOOT,
            Role::Swap => gpt::LINUX_SWAP,
            Role::Ephemeral | Role::ConfigDrive | Role::Root => gpt::LINUX_DATA,
        }
    }

    fn mbr_type(self) -> u8 {
        match self {
            // 0xEF rather than parted's FAT32 type: UEFI looks for an ESP by it.
            Role::EfiSystem => mbr::TYPE_EFI_SYSTEM,
            Role::Swap => mbr::TYPE_SWAP,
            Role::BiosBoot | Role::Ephemeral | Role::ConfigDrive | Role::Root => mbr::TYPE_LINUX,
        }
    }
}

/// Writes a fresh table for a partition image deploy, in Ironic's order: the
/// ESP (UEFI) or the BIOS boot partition (BIOS on GPT) first, then ephemeral,
/// swap, config drive, and root last so cloud-init's growpart can grow it.
/// Every partition starts on a MiB boundary, the first at 1 MiB. On MBR the
/// active flag goes on root for BIOS and on the ESP for UEFI (parted's `boot`
/// flag, which on GPT only selects the ESP type). The first and last MiB are
/// zeroed first so no stale table (an old backup GPT) survives.
pub fn create_layout<D: Read + Write + Seek>(
    disk: &mut D,
    disk_size: u64,
    layout: &Layout,
) -> Result<LayoutResult> {
    let label = layout.label.unwrap_or(match layout.boot_mode {
        BootMode::Uefi => TableKind::Gpt,
        BootMode::Bios => TableKind::Mbr,
    });
    let planned = plan(layout, label);
    if label == TableKind::Mbr && planned.len() > 4 {
        return Err(Error::Invalid(format!(
            "this layout needs {} partitions ({}) but an MBR holds only 4 primary partitions; \
             use GPT or drop the swap, ephemeral or config drive partition",
            planned.len(),
            planned
                .iter()
                .map(|(r, _)| r.name())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let ss = DEFAULT_SECTOR_SIZE;
    let end = match label {
        TableKind::Gpt => gpt::usable_range(disk_size, ss)?.1 + 1,
        TableKind::Mbr => (disk_size / ss).min(mbr::MAX_SECTORS),
    };
    let ranges = place(&planned, MIB / ss, end, ss, disk_size)?;

    wipe(disk, disk_size, 0, MIB, "the start of the disk")?;
    wipe(
        disk,
        disk_size,
        disk_size.saturating_sub(MIB),
        MIB,
        "the end of the disk",
    )?;
    match label {
        TableKind::Gpt => {
            let entries = ranges
                .iter()
                .enumerate()
                .map(|(i, &(role, first, last))| {
                    GptEntry::new(i as u32 + 1, role.gpt_type(), first, last, role.name())
                })
                .collect::<Result<Vec<_>>>()?;
            gpt::write_new(disk, disk_size, &entries)?;
        }
        TableKind::Mbr => {
            let active = match layout.boot_mode {
                BootMode::Bios => Role::Root,
                BootMode::Uefi => Role::EfiSystem,
            };
            let entries: Vec<NewEntry> = ranges
                .iter()
                .map(|&(role, first, last)| NewEntry {
                    bootable: role == active,
                    sys: role.mbr_type(),
                    start: first,
                    sectors: last - first + 1,
                })
                .collect();
            mbr::write_new(disk, disk_size, &entries)?;
        }
    }

    let table = read_table(disk, disk_size)?.ok_or_else(|| {
        Error::Corrupt("the partition table just written cannot be read back".into())
    })?;
    let number_of = |role: Role| {
        ranges
            .iter()
            .position(|&(r, _, _)| r == role)
            .map(|i| i as u32 + 1)
    };
    Ok(LayoutResult {
        root: number_of(Role::Root).unwrap_or(ranges.len() as u32),
        swap: number_of(Role::Swap),
        ephemeral: number_of(Role::Ephemeral),
        configdrive: number_of(Role::ConfigDrive),
        efi_system: number_of(Role::EfiSystem),
        bios_grub: number_of(Role::BiosBoot),
        table,
    })
}

/// The partitions in IPA's order, with their sizes in MiB (0 for a root that
/// takes the rest).
fn plan(layout: &Layout, label: TableKind) -> Vec<(Role, u64)> {
    let mut planned = Vec::new();
    if layout.boot_mode == BootMode::Uefi {
        let esp = match layout.efi_system_mib {
            0 => DEFAULT_EFI_SYSTEM_MIB,
            mib => mib,
        };
        planned.push((Role::EfiSystem, esp));
    }
    if layout.boot_mode == BootMode::Bios && label == TableKind::Gpt {
        planned.push((Role::BiosBoot, BIOS_BOOT_MIB));
    }
    for (role, mib) in [
        (Role::Ephemeral, layout.ephemeral_mib),
        (Role::Swap, layout.swap_mib),
        (Role::ConfigDrive, layout.configdrive_mib),
    ] {
        if mib > 0 {
            planned.push((role, mib));
        }
    }
    planned.push((Role::Root, layout.root_mib));
    planned
}

/// Lays the partitions end to end from `start`; returns (role, first LBA,
/// last LBA) or says how much room was missing.
fn place(
    planned: &[(Role, u64)],
    start: u64,
    end: u64,
    ss: u64,
    disk_size: u64,
) -> Result<Vec<(Role, u64, u64)>> {
    let per_mib = MIB / ss;
    let wanted: u64 = planned
        .iter()
        .map(|&(_, mib)| mib)
        .fold(0, u64::saturating_add);
    let too_small = || {
        Error::TooLarge(format!(
            "the partition layout needs {wanted} MiB plus 1 MiB for the table{} but the \
             {disk_size}-byte disk has {} MiB usable",
            if planned.iter().any(|&(r, mib)| r == Role::Root && mib == 0) {
                " and at least 1 MiB for root"
            } else {
                ""
            },
            end.saturating_mul(ss) / MIB
        ))
    };
    let mut ranges = Vec::with_capacity(planned.len());
    let mut first = start;
    for &(role, mib) in planned {
        let next = if role == Role::Root && mib == 0 {
            if end.saturating_sub(first) < per_mib {
                return Err(too_small());
            }
            end
        } else {
            mib.checked_mul(per_mib)
                .and_then(|sectors| first.checked_add(sectors))
                .ok_or_else(too_small)?
        };
        if next > end {
            return Err(too_small());
        }
        ranges.push((role, first, next - 1));
        first = next;
    }
    Ok(ranges)
}
