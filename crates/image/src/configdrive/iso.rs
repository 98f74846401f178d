//! The ISO9660 config drive, with hadris-iso: Rock Ridge and Joliet carry the
//! real lowercase names (`meta_data.json`, `2012-08-10`) next to the 8.3
//! ISO9660 ones, as `genisoimage -J -r` does for Ironic.

use std::io::Cursor;
use std::sync::Arc;

use hadris_iso::joliet::JolietLevel;
use hadris_iso::read::PathSeparator;
use hadris_iso::rrip::RripOptions;
use hadris_iso::write::options::{BaseIsoLevel, CreationFeatures, IsoFormatOptions};
use hadris_iso::write::{
    InputEntry, InputEntryKind, InputMetadata, InputTree, IsoCreationError, IsoImageWriter,
};

use super::{Tree, LABEL};
use crate::error::{Error, Result};

/// Read-only for everyone, owned by root, as `genisoimage -r` rationalises.
const FILE_MODE: u32 = 0o444;
const DIR_MODE: u32 = 0o555;

fn entries(tree: &Tree) -> Vec<InputEntry> {
    let metadata = |mode| InputMetadata {
        mode: Some(mode),
        uid: Some(0),
        gid: Some(0),
        ..InputMetadata::default()
    };
    let mut out = Vec::new();
    for (name, dir) in &tree.dirs {
        out.push(InputEntry {
            name: Arc::new(name.clone()),
            kind: InputEntryKind::Directory(entries(dir)),
            metadata: metadata(DIR_MODE),
        });
    }
    for (name, contents) in &tree.files {
        out.push(InputEntry {
            name: Arc::new(name.clone()),
            kind: InputEntryKind::File(contents.clone()),
            metadata: metadata(FILE_MODE),
        });
    }
    out
}

/// The whole image in memory: config drives are small (at most 64 MiB) and
/// the writer needs to read back what it wrote.
pub(super) fn build(tree: &Tree) -> Result<Vec<u8>> {
    let options = IsoFormatOptions {
        volume_name: LABEL.to_owned(),
        system_id: None,
        volume_set_id: None,
        publisher_id: Some("ferric".to_owned()),
        preparer_id: None,
        application_id: None,
        sector_size: 2048,
        path_separator: PathSeparator::ForwardSlash,
        features: CreationFeatures {
            filenames: BaseIsoLevel::Level1 {
                supports_lowercase: false,
                supports_rrip: true,
            },
            joliet: Some(JolietLevel::Level3),
            rock_ridge: Some(RripOptions::default()),
            ..CreationFeatures::default()
        },
        // Keep the label lowercase: cloud-init and blkid look for
        // "config-2" on ISO9660.
        strict_charset: false,
    };
    let input = InputTree::new(PathSeparator::ForwardSlash, entries(tree));
    let image = IsoImageWriter::create(Cursor::new(Vec::new()), input, options).map_err(
        |IsoCreationError::Io(err)| {
            Error::io(
                "building the config drive ISO image",
                std::io::Error::other(err.to_string()),
            )
        },
    )?;
    Ok(image.into_inner())
}
