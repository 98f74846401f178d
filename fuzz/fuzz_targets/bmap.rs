//! The block map parser: any text is a map or an error; a parsed map is
//! ordered, within the image, and serialises back to an equal map.
#![no_main]

use ferric_image::bmap::BlockMap;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(map) = BlockMap::from_json(text) else {
        return;
    };
    let mut end = 0;
    for range in &map.ranges {
        assert!(range.start >= end, "ranges overlap or go back");
        end = range.end();
    }
    assert!(end <= map.image_size, "a range past the image");
    let again = BlockMap::from_json(&map.to_json()).expect("a parsed map reads back");
    assert_eq!(again, map);
});
