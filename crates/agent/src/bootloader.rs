//! `image.install_bootloader`: makes a written partition image bootable.
