//! Fuzzing the block map parser and the copy through a map: any text either
//! parses into a map whose ranges are sorted, disjoint and inside the image,
//! or is refused with a clean error; copying through a parsed map never
//! panics or writes outside the image.

use std::io::Cursor;

use ferric_image::bmap::{self, BlockMap, BmapSink};
use ferric_image::sink::{BlockSink, VecSink};
use ferric_image::Error;
use proptest::prelude::*;

fn seed_map() -> (Vec<u8>, BlockMap) {
    let mut image = vec![0u8; 64 << 10];
    image[4096..12288].fill(3);
    image[40000..41000].fill(9);
    let mut sink = BmapSink::new(VecSink::default(), 4096);
    bmap::scan(Cursor::new(&image), &mut sink, 4096).unwrap();
    (image, sink.into_parts().0.unwrap())
}

fn check_parsed(map: &BlockMap) {
    let mut end = 0;
    for range in &map.ranges {
        assert!(range.start >= end);
        assert!(range.length > 0);
        end = range.start + range.length;
        assert!(end <= map.image_size);
    }
    assert_eq!(
        map.mapped_bytes,
        map.ranges.iter().map(|r| r.length).sum::<u64>()
    );
}

/// Records what a copy does, bounded to the image.
#[derive(Default)]
struct Bounded {
    end: u64,
    size: u64,
}

impl BlockSink for Bounded {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> ferric_image::Result<()> {
        assert!(offset >= self.end, "out of order");
        self.end = offset + data.len() as u64;
        assert!(self.end <= self.size, "written past the image");
        Ok(())
    }
    fn hole(&mut self, offset: u64, len: u64) -> ferric_image::Result<()> {
        assert!(offset >= self.end, "out of order");
        self.end = offset + len;
        assert!(self.end <= self.size, "hole past the image");
        Ok(())
    }
    fn finish(&mut self, size: u64) -> ferric_image::Result<()> {
        assert_eq!(size, self.size);
        Ok(())
    }
}

fn clean(err: &Error) {
    assert!(
        matches!(
            err,
            Error::Invalid(_) | Error::Corrupt(_) | Error::ChecksumMismatch { .. }
        ),
        "unexpected error kind: {err:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn any_text(text in ".{0,300}") {
        match BlockMap::from_json(&text) {
            Ok(map) => check_parsed(&map),
            Err(e) => clean(&e),
        }
    }

    #[test]
    fn mutated_maps(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let (image, map) = seed_map();
        let mut text = map.to_json().into_bytes();
        for (at, byte) in edits {
            let i = at.index(text.len());
            text[i] = byte;
        }
        let Ok(text) = String::from_utf8(text) else { return Ok(()); };
        match BlockMap::from_json(&text) {
            Ok(map) => {
                check_parsed(&map);
                let mut sink = Bounded { end: 0, size: map.image_size };
                if let Err(e) = bmap::copy_mapped(&mut Cursor::new(&image), &map, &mut sink) {
                    clean(&e);
                }
            }
            Err(e) => clean(&e),
        }
    }

    #[test]
    fn numbers_in_ranges(start in any::<u64>(), length in any::<u64>(), size in any::<u64>()) {
        let text = format!(
            r#"{{"format":"ferric-bmap","version":1,"image_size":{size},"block_size":4096,"mapped_bytes":{length},"ranges":[{{"start":{start},"length":{length},"sha256":"{}"}}]}}"#,
            "0".repeat(64)
        );
        match BlockMap::from_json(&text) {
            Ok(map) => check_parsed(&map),
            Err(e) => clean(&e),
        }
    }
}
