//! Format detection and safety inspection. (Being written.)

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
