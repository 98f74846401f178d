//! The format inspector, on a whole file and on a stream's head: any bytes
//! give an inspection or an error, never a panic or a hang.
#![no_main]

use ferric_image::format::{inspect, inspect_ends, inspect_head, Policy, HEAD_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(found) = inspect(&mut std::io::Cursor::new(data)) {
        let _ = Policy::default().check(&found);
    }
    let _ = inspect_head(&data[..data.len().min(HEAD_LEN)], None);
    let tail = &data[data.len().saturating_sub(4096)..];
    let _ = inspect_ends(&data[..data.len().min(HEAD_LEN)], tail, data.len() as u64);
});
