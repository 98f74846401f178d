//! The config drive decoder (gzip+base64, as Ironic sends it) and the dict
//! form's parser: any input decodes to at most the limit or fails cleanly;
//! a dict that parses builds an ISO.
#![no_main]

use ferric_image::configdrive::{decode, ConfigDrive};
use libfuzzer_sys::fuzz_target;

const LIMIT: u64 = 4 << 20;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(bytes) = decode(text, LIMIT) {
            assert!(bytes.len() as u64 <= LIMIT);
        }
    }
    if let Ok(dict) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(drive) = ConfigDrive::from_ironic_dict(&dict) {
            let mut iso = std::io::Cursor::new(Vec::new());
            let _ = drive.write_iso(&mut iso);
        }
    }
});
