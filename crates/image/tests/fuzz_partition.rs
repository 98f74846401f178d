//! read_table over random bytes and over mutated valid tables: never a panic,
//! never a huge allocation, only Ok or a clean Error.

use std::io::Cursor;

use ferric_image::partition::{create_layout, read_table, BootMode, Layout, TableKind};
use ferric_image::Error;
use proptest::prelude::*;

const DISK: usize = 8 << 20;

/// A small valid disk with the given table, made by our own writer.
fn valid_disk(label: TableKind) -> Vec<u8> {
    let mut disk = Cursor::new(vec![0u8; DISK]);
    let layout = Layout {
        label: Some(label),
        swap_mib: 1,
        ..Layout::new(BootMode::Bios)
    };
    create_layout(&mut disk, DISK as u64, &layout).unwrap();
    disk.into_inner()
}

/// Mutations land where the tables are: the MBR, the primary GPT header and
/// entries, and the backup at the end.
fn hot_offset() -> impl Strategy<Value = usize> {
    prop_oneof![0usize..512, 512usize..(34 * 512), (DISK - 33 * 512)..DISK,]
}

fn check(result: Result<Option<ferric_image::partition::PartitionTable>, Error>) {
    match result {
        Ok(Some(table)) => {
            for p in &table.partitions {
                assert!(p.size > 0);
                assert!(p
                    .start
                    .checked_add(p.size)
                    .is_some_and(|end| end <= DISK as u64));
            }
        }
        Ok(None) => {}
        Err(Error::Corrupt(msg)) | Err(Error::Unsupported(msg)) => assert!(!msg.is_empty()),
        Err(other) => panic!("unexpected error kind: {other:?}"),
    }
}

/// Words that make the parser go further than random noise would.
fn interesting_word() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"EFI PART".to_vec()),
        Just(vec![0x55, 0xaa]),
        Just(vec![0xee]),
        Just(vec![0x05]),
        Just(vec![0xff; 8]),
        Just(vec![0; 8]),
        any::<u64>().prop_map(|x| x.to_le_bytes().to_vec()),
        any::<u32>().prop_map(|x| x.to_le_bytes().to_vec()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn random_bytes_never_panic(mut data in proptest::collection::vec(any::<u8>(), 0..20_000),
                                sig in any::<bool>(), efi in any::<bool>()) {
        if sig && data.len() >= 512 {
            data[510] = 0x55;
            data[511] = 0xaa;
        }
        if efi && data.len() >= 520 {
            data[512..520].copy_from_slice(b"EFI PART");
        }
        let len = data.len() as u64;
        let result = read_table(&mut Cursor::new(data), len);
        if let Ok(Some(table)) = &result {
            for p in &table.partitions {
                prop_assert!(p.start + p.size <= len);
            }
        }
        match result {
            Ok(_) | Err(Error::Corrupt(_)) | Err(Error::Unsupported(_)) => {}
            Err(other) => prop_assert!(false, "unexpected error kind: {other:?}"),
        }
    }

    #[test]
    fn mutated_tables_never_panic(
        gpt in any::<bool>(),
        edits in proptest::collection::vec((hot_offset(), interesting_word()), 1..8),
    ) {
        let mut data = valid_disk(if gpt { TableKind::Gpt } else { TableKind::Mbr });
        for (offset, word) in edits {
            let end = (offset + word.len()).min(DISK);
            data[offset..end].copy_from_slice(&word[..end - offset]);
        }
        check(read_table(&mut Cursor::new(data), DISK as u64));
    }

    #[test]
    fn bit_flips_in_valid_tables_never_panic(
        gpt in any::<bool>(),
        flips in proptest::collection::vec((hot_offset(), 0u8..8), 1..16),
    ) {
        let mut data = valid_disk(if gpt { TableKind::Gpt } else { TableKind::Mbr });
        for (offset, bit) in flips {
            data[offset] ^= 1 << bit;
        }
        check(read_table(&mut Cursor::new(data), DISK as u64));
    }

    /// A header whose checksums are recomputed after mutation reaches the
    /// field checks instead of stopping at the CRC.
    #[test]
    fn gpt_headers_with_fixed_checksums_never_panic(
        fields in proptest::collection::vec((0usize..92, any::<u64>()), 1..6),
    ) {
        let mut data = valid_disk(TableKind::Gpt);
        for (at, value) in fields {
            let at = at.clamp(24, 84);
            data[512 + at..512 + at + 8].copy_from_slice(&value.to_le_bytes());
        }
        data[512 + 16..512 + 20].fill(0);
        let mut crc = flate2::Crc::new();
        crc.update(&data[512..512 + 92]);
        let sum = crc.sum();
        data[512 + 16..512 + 20].copy_from_slice(&sum.to_le_bytes());
        check(read_table(&mut Cursor::new(data), DISK as u64));
    }
}

#[test]
fn valid_disks_read_back() {
    for label in [TableKind::Gpt, TableKind::Mbr] {
        let data = valid_disk(label);
        let table = read_table(&mut Cursor::new(data), DISK as u64)
            .unwrap()
            .unwrap();
        assert_eq!(table.kind, label);
        // BIOS on GPT adds the BIOS boot partition to swap and root.
        let expected = if label == TableKind::Gpt { 3 } else { 2 };
        assert_eq!(table.partitions.len(), expected);
    }
}
