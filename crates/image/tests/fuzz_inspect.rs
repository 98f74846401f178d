//! Fuzzing format inspection: random bytes, and valid images (made once by
//! qemu-img, sgdisk and xorriso) with bytes flipped in their headers. Neither
//! `inspect_head` nor `inspect` may panic; every failure must be a clean
//! image error (never an I/O error on an in-memory image), and `inspect`
//! must read a bounded number of bytes whatever the headers claim.

use std::io::{self, Cursor, Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use ferric_image::format::{inspect, inspect_head, HEAD_LEN};
use ferric_image::Error;
use proptest::prelude::*;

/// Reads beyond the head that inspection may make: a 2 MiB qcow2 cluster of
/// header extensions, a 1 MiB vmdk descriptor or GPT partition array, VHDX
/// metadata tables, footers.
const READ_BOUND: u64 = HEAD_LEN as u64 + (4 << 20);

/// A reader that counts the bytes read through it.
struct Counting<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

impl<R: Seek> Seek for Counting<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

fn check_clean<T: std::fmt::Debug>(result: &ferric_image::Result<T>) -> Result<(), TestCaseError> {
    if let Err(error) = result {
        prop_assert!(
            !matches!(error, Error::Io { .. }),
            "in-memory inspection failed with an I/O error: {error:?}"
        );
        prop_assert!(!error.to_string().is_empty());
    }
    Ok(())
}

/// Runs both entry points on `image`.
fn inspect_all(image: &[u8]) -> Result<(), TestCaseError> {
    let head = &image[..image.len().min(HEAD_LEN)];
    check_clean(&inspect_head(head, Some(image.len() as u64)))?;
    // A stream of unknown length (the whole of it when shorter than the head).
    check_clean(&inspect_head(head, None))?;
    let mut reader = Counting {
        inner: Cursor::new(image),
        read: 0,
    };
    check_clean(&inspect(&mut reader))?;
    prop_assert!(
        reader.read <= READ_BOUND,
        "inspect read {} bytes of a {}-byte image",
        reader.read,
        image.len()
    );
    Ok(())
}

struct Seed {
    name: &'static str,
    bytes: Vec<u8>,
    /// Byte ranges (start, end) where mutations past the first 512 bytes are
    /// interesting.
    deep: Vec<(usize, usize)>,
}

fn run(dir: &Path, program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed");
}

fn load(dir: &Path, name: &str, max: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    std::fs::File::open(dir.join(name))
        .unwrap()
        .take(max as u64)
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}

/// Valid images to mutate, made once.
fn seeds() -> &'static [Seed] {
    static SEEDS: OnceLock<Vec<Seed>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let qemu = |args: &[&str]| {
            let mut all = vec!["create", "-q"];
            all.extend_from_slice(args);
            run(d, "qemu-img", &all);
        };
        qemu(&["-f", "qcow2", "-o", "cluster_size=4096", "a.qcow2", "1G"]);
        qemu(&[
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            "/etc/shadow",
            "-u",
            "b.qcow2",
            "1G",
        ]);
        qemu(&["-f", "vmdk", "a.vmdk", "1G"]);
        qemu(&[
            "-f",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            "s.vmdk",
            "1G",
        ]);
        qemu(&["-f", "vhdx", "a.vhdx", "1G"]);
        qemu(&["-f", "vpc", "a.vhd", "1G"]);
        qemu(&["-f", "vdi", "a.vdi", "1G"]);
        std::fs::File::create(d.join("gpt.img"))
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        run(d, "sgdisk", &["-n", "1:2048:0", "gpt.img"]);
        std::fs::create_dir(d.join("tree")).unwrap();
        // xorriso writes nothing for an empty tree.
        std::fs::write(d.join("tree/hello.txt"), "hello\n").unwrap();
        run(
            d,
            "xorriso",
            &["-as", "mkisofs", "-quiet", "-o", "a.iso", "tree"],
        );

        let vhdx = load(d, "a.vhdx", 4 << 20);
        // The metadata table follows the region table's pointer; qemu-img
        // puts it at 3 MiB.
        let vhdx_meta = 3 << 20;
        vec![
            Seed {
                name: "qcow2",
                bytes: load(d, "a.qcow2", 64 << 10),
                deep: vec![(512, 4096)],
            },
            Seed {
                name: "qcow2 with backing file",
                bytes: load(d, "b.qcow2", 64 << 10),
                deep: vec![(0, 512)],
            },
            Seed {
                name: "vmdk",
                bytes: load(d, "a.vmdk", 64 << 10),
                deep: vec![(512, 1536)],
            },
            Seed {
                name: "vmdk streamOptimized",
                bytes: load(d, "s.vmdk", 64 << 10),
                deep: vec![(512, 1536)],
            },
            Seed {
                name: "vhdx",
                bytes: vhdx,
                deep: vec![(0x30000, 0x30100), (vhdx_meta, vhdx_meta + 64)],
            },
            Seed {
                name: "vhd",
                bytes: load(d, "a.vhd", 1 << 20),
                deep: vec![(0, 512)],
            },
            Seed {
                name: "vdi",
                bytes: load(d, "a.vdi", 1 << 20),
                deep: vec![(0, 512)],
            },
            Seed {
                name: "gpt",
                bytes: load(d, "gpt.img", 1 << 20),
                deep: vec![(512, 604), (1024, 1280)],
            },
            Seed {
                name: "iso",
                bytes: load(d, "a.iso", 1 << 20),
                deep: vec![(0x8000, 0x8100)],
            },
        ]
    })
}

/// CRC-32 (IEEE), to re-seal a mutated GPT header so the mutation reaches
/// the checks behind the checksum.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}

fn reseal_gpt(image: &mut [u8]) {
    if image.len() < 1024 || &image[512..520] != b"EFI PART" {
        return;
    }
    let size = u32::from_le_bytes(image[524..528].try_into().unwrap()) as usize;
    if !(92..=512).contains(&size) {
        return;
    }
    image[528..532].fill(0);
    let crc = crc32(&image[512..512 + size]);
    image[528..532].copy_from_slice(&crc.to_le_bytes());
}

const MAGICS: &[&[u8]] = &[
    b"QFI\xfb",
    b"QED\0",
    b"KDMV",
    b"COWD",
    b"conectix",
    b"vhdxfile",
    b"LUKS\xba\xbe",
    b"# Disk DescriptorFile\ncreateType=\"monolithicSparse\"\n",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        inspect_all(&bytes)?;
    }

    #[test]
    fn random_bytes_behind_a_magic_never_panic(
        magic in proptest::sample::select(MAGICS),
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        iso in any::<bool>(),
        mbr in any::<bool>(),
    ) {
        let mut image = magic.to_vec();
        image.extend_from_slice(&bytes);
        if mbr {
            image.resize(image.len().max(512), 0);
            image[510] = 0x55;
            image[511] = 0xaa;
        }
        if iso {
            image.resize(0x8800, 0);
            image[0x8000..0x8006].copy_from_slice(b"\x01CD001");
        }
        inspect_all(&image)?;
    }

    #[test]
    fn mutated_headers_never_panic(
        seed in 0usize..9,
        flips in proptest::collection::vec((0usize..512, any::<u8>()), 1..8),
        deep_flips in proptest::collection::vec(
            (any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<u8>()),
            0..8,
        ),
        truncate in proptest::option::weighted(0.2, any::<prop::sample::Index>()),
        reseal in any::<bool>(),
    ) {
        let seed = &seeds()[seed];
        let mut image = seed.bytes.clone();
        for (offset, value) in flips {
            if offset < image.len() {
                image[offset] ^= value;
            }
        }
        for (range, at, value) in deep_flips {
            let (start, end) = seed.deep[range.index(seed.deep.len())];
            let offset = start + at.index(end - start);
            if offset < image.len() {
                image[offset] = value;
            }
        }
        if reseal {
            reseal_gpt(&mut image);
        }
        if let Some(cut) = truncate {
            image.truncate(cut.index(image.len() + 1));
        }
        inspect_all(&image)?;
    }
}

#[test]
fn seeds_are_valid_images() {
    for seed in seeds() {
        let mut reader = Cursor::new(&seed.bytes);
        let result = inspect(&mut reader);
        if seed.name == "qcow2 with backing file" {
            assert!(matches!(result, Err(Error::Refused(_))), "{result:?}");
        } else {
            let inspection = result.unwrap_or_else(|e| panic!("seed {}: {e}", seed.name));
            assert_eq!(
                inspection.format.name(),
                seed.name.split(' ').next().unwrap()
            );
        }
    }
}
