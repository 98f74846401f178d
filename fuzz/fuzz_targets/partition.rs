//! The GPT and MBR reader: any bytes as a disk of their own length, and as
//! the start of a larger disk.
#![no_main]

use ferric_image::partition::read_table;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    let _ = read_table(&mut std::io::Cursor::new(data), len);
    let _ = read_table(&mut std::io::Cursor::new(data), len.saturating_mul(4));
});
