//! Everything about images, synchronous, over Read/Write/Seek handles: format
//! detection and safety inspection, checksums, decompression, qcow2 to raw,
//! sparse block maps, disk writing, GPT/MBR partitioning, config drives,
//! tarball extraction and bootable ISOs. Used by the agent (writing disks)
//! and by the server (caching and converting images, building config drives
//! and virtual media). No HTTP here.

pub mod bmap;
pub mod bootiso;
pub mod checksum;
pub mod configdrive;
pub mod decompress;
pub mod error;
pub mod format;
pub mod iso;
pub mod partition;
pub mod pipeline;
pub mod qcow2;
pub mod sink;
pub mod tarball;
pub mod writer;

pub use error::{Error, Result};
pub use sink::BlockSink;
