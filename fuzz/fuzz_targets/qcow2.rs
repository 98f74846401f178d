//! The qcow2 reader: open, check and convert any bytes into a sink that
//! checks the converter's promises (ascending, non-overlapping calls within
//! the size bound), with the output bounded to 64 MiB.
#![no_main]

use ferric_image::qcow2::Qcow2;
use ferric_image::{BlockSink, Result};
use libfuzzer_sys::fuzz_target;

const MAX_SIZE: u64 = 64 << 20;

#[derive(Default)]
struct Checked {
    end: u64,
    finished: bool,
}

impl BlockSink for Checked {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        assert!(offset >= self.end && !self.finished);
        self.end = offset + data.len() as u64;
        assert!(self.end <= MAX_SIZE);
        Ok(())
    }

    fn hole(&mut self, offset: u64, len: u64) -> Result<()> {
        assert!(offset >= self.end && !self.finished);
        self.end = offset + len;
        assert!(self.end <= MAX_SIZE);
        Ok(())
    }

    fn finish(&mut self, size: u64) -> Result<()> {
        assert!(self.end <= size && size <= MAX_SIZE);
        self.finished = true;
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut image) = Qcow2::open(std::io::Cursor::new(data)) else {
        return;
    };
    let _ = image.check_tables();
    let _ = image.convert(&mut Checked::default(), MAX_SIZE);
});
