//! The VFAT config drive, with hadris-fat. Long file names keep the real
//! lowercase names; the label is upper-cased by FAT (`CONFIG-2`), which
//! cloud-init accepts.

use std::io::{self, Read, Seek, SeekFrom, Write};

use hadris_fat::format::{FatFormatOptions, FatVolumeFormatter};
use hadris_fat::{FatDir, FatVolume, FatVolumeWriteExt};

use super::{check_size, Tree, LABEL};
use crate::error::{Error, IoContext, Result};

const MIB: u64 = 1024 * 1024;

fn fat_error(context: impl Into<String>, err: hadris_fat::Error) -> Error {
    Error::io(context, io::Error::other(err.to_string()))
}

/// The smallest volume, in whole MiB, whose clusters hold every file and
/// directory with a margin: the cluster size depends on the volume size, so
/// grow until it fits.
fn volume_size(tree: &Tree) -> Result<u64> {
    let sizes = tree.file_sizes();
    let total: u64 = sizes.iter().sum();
    let mut size = (total + total / 8 + MIB).div_ceil(MIB) * MIB;
    loop {
        check_size(size)?;
        let options = FatFormatOptions::new(size).volume_label(LABEL);
        let params = FatVolumeFormatter::calculate_params(&options)
            .map_err(|err| fat_error("sizing the config drive VFAT image", err))?;
        let cluster = u64::from(params.sectors_per_cluster) * params.sector_size as u64;
        // One cluster per directory, the FAT32 root directory and a margin.
        let needed: u64 =
            sizes.iter().map(|s| s.div_ceil(cluster)).sum::<u64>() + tree.dir_count() + 1 + 16;
        if u64::from(params.cluster_count) >= needed {
            return Ok(size);
        }
        size += (size / 4).div_ceil(MIB) * MIB;
    }
}

fn write_tree<D: Read + Write + Seek>(
    volume: &FatVolume<D>,
    dir: &FatDir<'_, D>,
    tree: &Tree,
    path: &str,
) -> Result<()> {
    for (name, contents) in &tree.files {
        let file_path = format!("{path}/{name}");
        let entry = volume
            .create_file(dir, name)
            .map_err(|err| fat_error(format!("creating {file_path} on the config drive"), err))?;
        let mut writer = volume
            .write_file(&entry)
            .map_err(|err| fat_error(format!("opening {file_path} on the config drive"), err))?;
        let mut rest = &contents[..];
        while !rest.is_empty() {
            let written = writer.write(rest).map_err(|err| {
                fat_error(format!("writing {file_path} on the config drive"), err)
            })?;
            if written == 0 {
                return Err(Error::io(
                    format!("writing {file_path} on the config drive"),
                    io::ErrorKind::WriteZero.into(),
                ));
            }
            rest = &rest[written..];
        }
        writer
            .finish()
            .map_err(|err| fat_error(format!("closing {file_path} on the config drive"), err))?;
    }
    for (name, child) in &tree.dirs {
        let dir_path = format!("{path}/{name}");
        let child_dir = volume.create_dir(dir, name).map_err(|err| {
            fat_error(
                format!("creating directory {dir_path} on the config drive"),
                err,
            )
        })?;
        write_tree(volume, &child_dir, child, &dir_path)?;
    }
    Ok(())
}

pub(super) fn write<W: Read + Write + Seek>(tree: &Tree, out: &mut W) -> Result<u64> {
    let size = volume_size(tree)?;
    // Give the target its full size first, so a fresh file is not short.
    out.seek(SeekFrom::Start(size - 1))
        .context("seeking to the end of the config drive")?;
    out.write_all(&[0])
        .context("extending the config drive VFAT image")?;
    out.seek(SeekFrom::Start(0))
        .context("seeking to the start of the config drive")?;
    let options = FatFormatOptions::new(size).volume_label(LABEL);
    let volume = FatVolumeFormatter::format(&mut *out, options)
        .map_err(|err| fat_error("formatting the config drive VFAT image", err))?;
    write_tree(&volume, &volume.root_dir(), tree, "")?;
    volume
        .sync()
        .map_err(|err| fat_error("flushing the config drive VFAT image", err))?;
    drop(volume);
    out.flush()
        .context("flushing the config drive VFAT image")?;
    Ok(size)
}
