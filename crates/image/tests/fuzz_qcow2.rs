//! Fuzzing the qcow2 reader: small qcow2 images built by hand (every kind of
//! L2 entry: data, contiguous data, zero, unallocated, compressed, partial
//! subclusters), then mutated. Opening and converting must never panic, never
//! write past `max_size` or the virtual size, keep the sink's calls in
//! ascending order, and fail only with clean errors.

use std::io::{Cursor, Write};

use ferric_image::error::{Error, Result};
use ferric_image::qcow2::Qcow2;
use ferric_image::BlockSink;
use proptest::prelude::*;

const MAX_SIZE: u64 = 1 << 20;

#[derive(Clone, Copy, Debug)]
enum Variant {
    Deflate512,
    Zstd512,
    ExtendedL2,
}

/// A tiny deterministic generator, so the images are the same every run.
struct XorShift(u64);

impl XorShift {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

fn cluster_size(variant: Variant) -> usize {
    match variant {
        Variant::ExtendedL2 => 1 << 14,
        _ => 512,
    }
}

fn put32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn put64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

fn compress(variant: Variant, data: &[u8]) -> Vec<u8> {
    match variant {
        Variant::Zstd512 => zstd::bulk::compress(data, 3).expect("zstd compress"),
        _ => {
            let mut encoder =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(data).expect("deflate");
            encoder.finish().expect("deflate")
        }
    }
}

/// Builds a qcow2 v3 image and the raw image it stands for.
///
/// Layout: cluster 0 header, 1 L1 table, 2 L2 table, 3.. data. Guest
/// clusters: 0 and 1 data in contiguous host clusters, 2 zero, 3
/// unallocated, 4 compressed at an unaligned offset, 5 data, 6 data (half of
/// its subclusters with extended L2), 7 data cut by the virtual size.
fn build(variant: Variant) -> (Vec<u8>, Vec<u8>) {
    let bits = cluster_size(variant).trailing_zeros();
    let cs = cluster_size(variant);
    let extended = matches!(variant, Variant::ExtendedL2);
    let entry_len = if extended { 16 } else { 8 };
    let virtual_size = 8 * cs - 100;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut file = vec![0u8; 10 * cs];
    let mut raw = vec![0u8; virtual_size];

    file[0..4].copy_from_slice(b"QFI\xfb");
    put32(&mut file, 4, 3);
    put32(&mut file, 20, bits);
    put64(&mut file, 24, virtual_size as u64);
    put32(&mut file, 36, 1);
    put64(&mut file, 40, cs as u64);
    let mut incompatible = 0u64;
    if extended {
        incompatible |= 1 << 4;
    }
    if matches!(variant, Variant::Zstd512) {
        incompatible |= 1 << 3;
        file[104] = 1;
    }
    put64(&mut file, 72, incompatible);
    put32(&mut file, 96, 4);
    put32(&mut file, 100, 112);
    put64(&mut file, cs, (2 * cs) as u64 | 1 << 63);

    let set_entry = |file: &mut Vec<u8>, index: usize, entry: u64, bitmap: u64| {
        put64(file, 2 * cs + index * entry_len, entry);
        if extended {
            put64(file, 2 * cs + index * entry_len + 8, bitmap);
        }
    };
    let all = u64::from(u32::MAX);
    let data_cluster =
        |rng: &mut XorShift, file: &mut Vec<u8>, raw: &mut Vec<u8>, guest: usize, host: usize| {
            let len = cs.min(virtual_size - guest * cs);
            rng.fill(&mut file[host * cs..host * cs + len]);
            raw[guest * cs..guest * cs + len].copy_from_slice(&file[host * cs..host * cs + len]);
        };
    data_cluster(&mut rng, &mut file, &mut raw, 0, 3);
    set_entry(&mut file, 0, (3 * cs) as u64 | 1 << 63, all);
    data_cluster(&mut rng, &mut file, &mut raw, 1, 4);
    set_entry(&mut file, 1, (4 * cs) as u64 | 1 << 63, all);
    // Zero cluster with a preallocated host cluster full of garbage.
    rng.fill(&mut file[9 * cs..10 * cs]);
    if extended {
        set_entry(&mut file, 2, (9 * cs) as u64, all << 32);
    } else {
        set_entry(&mut file, 2, (9 * cs) as u64 | 1, 0);
    }
    // Cluster 3: unallocated (entry left zero).
    let plain: Vec<u8> = (0..cs).map(|i| (i / 7) as u8).collect();
    raw[4 * cs..5 * cs].copy_from_slice(&plain);
    let compressed = compress(variant, &plain);
    let host = 5 * cs + 100;
    file[host..host + compressed.len()].copy_from_slice(&compressed);
    let x = 62 - (bits - 8);
    let extra_sectors = ((host % 512 + compressed.len() - 1) / 512) as u64;
    assert!(
        extra_sectors < 1 << (62 - x),
        "compressed cluster too big for the test"
    );
    set_entry(&mut file, 4, 1 << 62 | extra_sectors << x | host as u64, 0);
    data_cluster(&mut rng, &mut file, &mut raw, 5, 7);
    set_entry(&mut file, 5, (7 * cs) as u64 | 1 << 63, all);
    data_cluster(&mut rng, &mut file, &mut raw, 6, 8);
    if extended {
        // Even subclusters allocated, odd ones unallocated: they read as zeros.
        let sub = cs / 32;
        for s in (1..32).step_by(2) {
            raw[6 * cs + s * sub..6 * cs + (s + 1) * sub].fill(0);
        }
        set_entry(&mut file, 6, (8 * cs) as u64, 0x5555_5555);
    } else {
        set_entry(&mut file, 6, (8 * cs) as u64 | 1 << 63, 0);
    }
    // Guest cluster 7 reuses host cluster 6, past the compressed data.
    let host7 = 6 * cs;
    assert!(5 * cs + 100 + compressed.len() <= host7);
    data_cluster(&mut rng, &mut file, &mut raw, 7, 6);
    set_entry(&mut file, 7, host7 as u64 | 1 << 63, all);
    (file, raw)
}

/// Checks the sink contract while keeping the image in memory.
#[derive(Default)]
struct CheckedSink {
    data: Vec<u8>,
    end: u64,
    finished: Option<u64>,
}

impl BlockSink for CheckedSink {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        assert!(
            offset >= self.end,
            "write_at({offset}) before the end of the previous call ({})",
            self.end
        );
        assert!(self.finished.is_none(), "write after finish");
        let end = offset + data.len() as u64;
        assert!(end <= MAX_SIZE, "write past max_size: {end}");
        self.data.resize(end as usize, 0);
        self.data[offset as usize..].copy_from_slice(data);
        self.end = end;
        Ok(())
    }

    fn hole(&mut self, offset: u64, len: u64) -> Result<()> {
        assert!(
            offset >= self.end,
            "hole({offset}) before the end of the previous call ({})",
            self.end
        );
        assert!(self.finished.is_none(), "hole after finish");
        self.end = offset + len;
        assert!(self.end <= MAX_SIZE, "hole past max_size: {}", self.end);
        Ok(())
    }

    fn finish(&mut self, size: u64) -> Result<()> {
        assert!(self.end <= size, "data or holes past the final size");
        assert!(size <= MAX_SIZE);
        self.data.resize(size as usize, 0);
        self.finished = Some(size);
        Ok(())
    }
}

fn convert(image: Vec<u8>) -> Result<(Vec<u8>, u64, u64)> {
    let mut qcow2 = Qcow2::open(Cursor::new(image))?;
    let mut sink = CheckedSink::default();
    let report = qcow2.convert(&mut sink, MAX_SIZE)?;
    assert_eq!(sink.finished, Some(report.virtual_size));
    assert_eq!(report.data_bytes + report.hole_bytes, report.virtual_size);
    Ok((sink.data, report.data_bytes, report.compressed_clusters))
}

#[test]
fn hand_built_images_convert_to_their_raw_image() {
    for variant in [Variant::Deflate512, Variant::Zstd512, Variant::ExtendedL2] {
        let (image, raw) = build(variant);
        let (data, data_bytes, compressed) =
            convert(image).unwrap_or_else(|e| panic!("{variant:?}: {e}"));
        assert!(
            data == raw,
            "{variant:?}: converted bytes differ from the raw image"
        );
        assert_eq!(compressed, 1, "{variant:?}");
        let cs = cluster_size(variant) as u64;
        let expected_data = match variant {
            Variant::ExtendedL2 => 4 * cs + cs / 2 + (cs - 100),
            _ => 5 * cs + (cs - 100),
        };
        assert_eq!(data_bytes, expected_data, "{variant:?}");
    }
}

/// Two guest-adjacent compressed clusters whose data lie far apart (past
/// the batch read limit): read and decompressed one by one.
#[test]
fn scattered_compressed_clusters() {
    let cs = 1usize << 16;
    let far = 200 * cs + 7;
    let mut file = vec![0u8; far + cs];
    file[0..4].copy_from_slice(b"QFI\xfb");
    put32(&mut file, 4, 2);
    put32(&mut file, 20, 16);
    put64(&mut file, 24, 2 * cs as u64 - 1000);
    put32(&mut file, 36, 1);
    put64(&mut file, 40, cs as u64);
    put64(&mut file, cs, 2 * cs as u64);
    let first: Vec<u8> = (0..cs).map(|i| (i % 251) as u8).collect();
    let second: Vec<u8> = (0..cs).map(|i| (i / 1000) as u8).collect();
    let x = 62 - (16 - 8);
    for (index, (host, plain)) in [(3 * cs + 10, &first), (far, &second)]
        .into_iter()
        .enumerate()
    {
        let compressed = compress(Variant::Deflate512, plain);
        file[host..host + compressed.len()].copy_from_slice(&compressed);
        let extra = ((host % 512 + compressed.len() - 1) / 512) as u64;
        put64(
            &mut file,
            2 * cs + index * 8,
            1 << 62 | extra << x | host as u64,
        );
    }
    let (data, data_bytes, compressed) = convert(file).expect("scattered compressed clusters");
    assert_eq!(compressed, 2);
    assert_eq!(data_bytes, 2 * cs as u64 - 1000);
    assert!(data[..cs] == first[..] && data[cs..] == second[..cs - 1000]);
}

fn variant() -> impl Strategy<Value = Variant> {
    prop_oneof![
        Just(Variant::Deflate512),
        Just(Variant::Zstd512),
        Just(Variant::ExtendedL2)
    ]
}

fn check_clean(result: Result<(Vec<u8>, u64, u64)>) {
    match result {
        Ok((data, _, _)) => assert!(data.len() as u64 <= MAX_SIZE),
        Err(Error::Io { context, source }) => {
            panic!("I/O error on an in-memory image: {context}: {source}")
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Bytes changed in the metadata (header, L1, L2: the first three
    /// clusters) or anywhere in the file.
    #[test]
    fn mutated_images_fail_cleanly(
        variant in variant(),
        edits in prop::collection::vec((any::<bool>(), any::<u32>(), any::<u8>()), 1..8),
    ) {
        let (mut image, _) = build(variant);
        let metadata = 3 * cluster_size(variant);
        for (in_metadata, at, value) in edits {
            let span = if in_metadata { metadata } else { image.len() };
            let at = at as usize % span;
            image[at] = value;
        }
        check_clean(convert(image));
    }

    /// Whole 64-bit fields overwritten with extreme values, which single
    /// byte changes rarely reach.
    #[test]
    fn extreme_fields_fail_cleanly(
        variant in variant(),
        field in 0usize..64,
        value in prop_oneof![Just(u64::MAX), Just(1u64 << 63), Just(1u64 << 62), Just(0), any::<u64>()],
    ) {
        let (mut image, _) = build(variant);
        let cs = cluster_size(variant);
        // The header's fields, the first L1 entry, the first L2 entries.
        let at = match field {
            0..=13 => field * 8,
            14 => cs,
            _ => 2 * cs + (field - 15) * 8,
        };
        put64(&mut image, at, value);
        check_clean(convert(image));
    }

    #[test]
    fn truncated_images_fail_cleanly(variant in variant(), keep in any::<u32>()) {
        let (mut image, _) = build(variant);
        let keep = keep as usize % image.len();
        image.truncate(keep);
        check_clean(convert(image));
    }
}
