//! Writing images to disks (block devices or files).
//!
//! [`DiskWriter`] is a [`BlockSink`]: it stages data in a large aligned buffer
//! and writes it with few, large writes (O_DIRECT where the target allows), makes
//! holes read as zeros (or discards or skips them, as configured), and holds
//! back the first MiB of the image: until [`DiskWriter::commit`] is called after
//! the checksum verified, the disk's first MiB (and so its partition table and
//! boot code) is zeros, and [`DiskWriter::wipe`] leaves it so, along with the
//! backup GPT at the end. A disk is never left half-bootable with an
//! unverified image.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::sink::BlockSink;

/// Bytes at the start of the image held back until the image is verified.
pub const DEFAULT_HOLD_BACK: u64 = 1 << 20;
/// Writes at least this large skip the staging buffer when they can.
const DIRECT_THROUGH: usize = 1 << 20;
/// Alignment of direct writes; a multiple of every logical block size.
pub(crate) const ALIGN: usize = 4096;
/// Bytes wiped at the end of the disk (and of the image) on failure: more
/// than the 16 KiB + 512 B of a backup GPT.
const TAIL_WIPE: u64 = 1 << 20;

// Block device ioctls (linux/fs.h).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKFLSBUF: libc::c_ulong = 0x1261;
const BLKDISCARD: libc::c_ulong = 0x1277;
const BLKZEROOUT: libc::c_ulong = 0x127f;
const BLKRRPART: libc::c_ulong = 0x125f;

/// What happens to the holes of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoleMode {
    /// Holes read as zeros afterwards: punched in files, BLKZEROOUT on block
    /// devices (which unmaps where the device guarantees zeros). The default.
    Zero,
    /// Holes are discarded (BLKDISCARD; punched in files). Fast, but some
    /// devices return old data after a discard.
    Discard,
    /// Holes are left as they are: right only on a new or cleaned disk.
    Skip,
}

/// How a [`DiskWriter`] writes.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub holes: HoleMode,
    /// Use O_DIRECT when the target allows it (not on tmpfs, for example).
    pub direct_io: bool,
    /// Bytes at the start held back until commit; 0 disables holding back.
    pub hold_back: u64,
    /// Size of the staging buffer.
    pub buffer_size: usize,
    /// Refuse block devices that are mounted, swapped on, or held by
    /// device-mapper or md.
    pub refuse_in_use: bool,
    /// The most bytes the target may receive: a block device's size is
    /// always a bound; a file has none unless this sets one.
    pub max_size: Option<u64>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            holes: HoleMode::Zero,
            direct_io: true,
            hold_back: DEFAULT_HOLD_BACK,
            buffer_size: 8 << 20,
            refuse_in_use: true,
            max_size: None,
        }
    }
}

/// Progress of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the image processed (data written and holes handled).
    pub bytes_done: u64,
    /// The image's size, when known.
    pub total: Option<u64>,
}

/// What a write did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteSummary {
    pub image_size: u64,
    pub data_bytes: u64,
    pub hole_bytes: u64,
    pub direct_io: bool,
}

type ProgressFn = Box<dyn FnMut(Progress) + Send>;

/// Writes an image to a disk; see the module documentation.
pub struct DiskWriter {
    /// Buffered handle: unaligned writes, ioctls, fsync.
    file: File,
    /// O_DIRECT handle for aligned writes, when the target allows it.
    direct: Option<File>,
    block_device: bool,
    capacity: u64,
    options: WriterOptions,
    head: Vec<u8>,
    /// Backing store of the staging buffer; `stage_at` is its aligned start.
    stage_store: Vec<u8>,
    stage_at: usize,
    stage_start: u64,
    stage_len: usize,
    pending_hole: Option<(u64, u64)>,
    /// Whether anything reached the target yet: until then a refused image
    /// leaves the target untouched.
    started: bool,
    position: u64,
    image_size: Option<u64>,
    summary: WriteSummary,
    total: Option<u64>,
    progress: Option<ProgressFn>,
    last_report: u64,
}

impl DiskWriter {
    /// Opens a block device or a regular file for writing. Block devices that
    /// are in use are refused (unless configured otherwise); a file is
    /// created if missing.
    pub fn open(path: &Path, options: WriterOptions) -> Result<Self> {
        let metadata = std::fs::metadata(path);
        let is_block = metadata
            .as_ref()
            .is_ok_and(|m| m.file_type().is_block_device());
        if is_block && options.refuse_in_use {
            let rdev = metadata.as_ref().map(|m| m.rdev()).unwrap_or(0);
            check_not_in_use(path, rdev)?;
        }
        let mut open = OpenOptions::new();
        open.write(true).read(true);
        if is_block {
            // O_EXCL on a block device fails with EBUSY when the kernel holds
            // it (mounted, a partition mounted, in a RAID or device-mapper).
            if options.refuse_in_use {
                open.custom_flags(libc::O_EXCL);
            }
        } else {
            open.create(true);
        }
        let file = open.open(path).map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                Error::Invalid(format!(
                    "{} is in use (mounted or held by the kernel); refusing to write to it",
                    path.display()
                ))
            } else {
                Error::io(format!("opening {}", path.display()), e)
            }
        })?;
        let direct = if options.direct_io {
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .ok()
        } else {
            None
        };
        Self::with_handles(file, direct, is_block, options)
    }

    /// Writes to an open handle (a regular file, or a block device opened by
    /// the caller), without O_DIRECT.
    pub fn from_file(file: File, options: WriterOptions) -> Result<Self> {
        let is_block = file
            .metadata()
            .context("reading the target's metadata")?
            .file_type()
            .is_block_device();
        Self::with_handles(file, None, is_block, options)
    }

    fn with_handles(
        file: File,
        direct: Option<File>,
        block_device: bool,
        options: WriterOptions,
    ) -> Result<Self> {
        let capacity = if block_device {
            block_device_size(&file)?
        } else {
            u64::MAX
        }
        .min(options.max_size.unwrap_or(u64::MAX));
        let buffer_size = options.buffer_size.max(ALIGN).next_multiple_of(ALIGN);
        let stage_store = vec![0u8; buffer_size + ALIGN];
        let stage_at = stage_store.as_ptr().align_offset(ALIGN);
        let mut writer = DiskWriter {
            file,
            direct,
            block_device,
            capacity,
            head: vec![0; usize::try_from(options.hold_back).unwrap_or(usize::MAX)],
            options,
            stage_store,
            stage_at,
            stage_start: 0,
            stage_len: 0,
            pending_hole: None,
            started: false,
            position: 0,
            image_size: None,
            summary: WriteSummary::default(),
            total: None,
            progress: None,
            last_report: 0,
        };
        writer.summary.direct_io = writer.direct.is_some();
        Ok(writer)
    }

    /// The size of the target: a block device's size, or unbounded for a file.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// Calls `callback` as the write goes (at most every 16 MiB) and at the end.
    pub fn on_progress(
        &mut self,
        total: Option<u64>,
        callback: impl FnMut(Progress) + Send + 'static,
    ) {
        self.total = total;
        self.progress = Some(Box::new(callback));
    }

    fn stage(&mut self) -> &mut [u8] {
        let size = self.stage_store.len() - ALIGN;
        &mut self.stage_store[self.stage_at..self.stage_at + size]
    }

    fn stage_capacity(&self) -> usize {
        self.stage_store.len() - ALIGN
    }

    fn flush_stage(&mut self) -> Result<()> {
        if self.stage_len == 0 {
            return Ok(());
        }
        let start = self.stage_start;
        let len = self.stage_len;
        let aligned = start.is_multiple_of(ALIGN as u64) && len.is_multiple_of(ALIGN);
        let data = &self.stage_store[self.stage_at..self.stage_at + len];
        let result = match (&self.direct, aligned) {
            (Some(direct), true) => direct.write_all_at(data, start),
            _ => self.file.write_all_at(data, start),
        };
        result.with_context(|| format!("writing {len} bytes at offset {start}"))?;
        self.stage_len = 0;
        self.report(false);
        Ok(())
    }

    /// Whether `data` can be written at `offset` without staging it.
    fn can_write_through(&self, offset: u64, data: &[u8]) -> bool {
        self.direct.is_none()
            || (offset.is_multiple_of(ALIGN as u64)
                && data.len().is_multiple_of(ALIGN)
                && data.as_ptr().align_offset(ALIGN) == 0)
    }

    fn apply_pending_hole(&mut self) -> Result<()> {
        let Some((start, len)) = self.pending_hole.take() else {
            return Ok(());
        };
        match self.options.holes {
            HoleMode::Skip => Ok(()),
            HoleMode::Zero | HoleMode::Discard if !self.block_device => {
                // Punching never extends the file: holes past its end stay
                // holes once finish() sets its length.
                punch_hole(&self.file, start, len)
            }
            HoleMode::Zero => self.block_range_op(BLKZEROOUT, start, len),
            HoleMode::Discard => self.block_range_op(BLKDISCARD, start, len),
        }
    }

    /// BLKZEROOUT or BLKDISCARD on the 512-byte-aligned middle of a range;
    /// the unaligned edges get zeros written.
    fn block_range_op(&mut self, request: libc::c_ulong, start: u64, len: u64) -> Result<()> {
        let end = start + len;
        let first = start.next_multiple_of(512);
        let last = end - end % 512;
        if first >= last {
            return self.write_zeros(start, len);
        }
        self.write_zeros(start, first - start)?;
        let range: [u64; 2] = [first, last - first];
        // SAFETY: BLKZEROOUT and BLKDISCARD read a `u64[2]` (start, length)
        // from the pointer, which is valid for the duration of the call.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), request, range.as_ptr()) };
        if rc != 0 {
            let error = io::Error::last_os_error();
            if request == BLKDISCARD {
                // Not every device discards; zeroing is always correct.
                return self.block_range_op(BLKZEROOUT, start, len);
            }
            return Err(Error::io(
                format!("zeroing {} bytes at offset {first}", last - first),
                error,
            ));
        }
        self.write_zeros(last, end - last)
    }

    fn write_zeros(&mut self, start: u64, len: u64) -> Result<()> {
        write_zeros_at(&self.file, start, len)
    }

    fn check_fits(&self, end: u64) -> Result<()> {
        if end > self.capacity {
            return Err(Error::TooLarge(format!(
                "the image needs {end} bytes but the target holds {}",
                self.capacity
            )));
        }
        Ok(())
    }

    fn report(&mut self, force: bool) {
        if let Some(callback) = &mut self.progress {
            if force || self.position - self.last_report >= 16 << 20 {
                self.last_report = self.position;
                callback(Progress {
                    bytes_done: self.position,
                    total: self.total,
                });
            }
        }
    }

    /// Before the first byte reaches the target: zeroes the held-back start
    /// of the disk, so that it is unbootable while the image is written.
    fn start(&mut self) -> Result<()> {
        if self.started {
            return Ok(());
        }
        self.started = true;
        if self.options.hold_back == 0 {
            return Ok(());
        }
        let len = self.options.hold_back.min(self.capacity);
        if !self.block_device {
            let current = self
                .file
                .metadata()
                .context("reading the target's size")?
                .len();
            // A new or short file has nothing bootable to hide.
            if current == 0 {
                return Ok(());
            }
            self.write_zeros(0, len.min(current))?;
        } else {
            self.write_zeros(0, len)?;
        }
        self.file
            .sync_data()
            .context("syncing the wiped start of the target")
    }

    /// Writes the held-back start of the image, syncs, and flushes the
    /// device's cache: call it only after the image verified.
    pub fn commit(mut self) -> Result<WriteSummary> {
        let Some(size) = self.image_size else {
            return Err(Error::Invalid(
                "commit called before the image was complete".into(),
            ));
        };
        self.flush_stage()?;
        self.apply_pending_hole()?;
        let head_len = self.options.hold_back.min(size) as usize;
        if head_len > 0 {
            self.file
                .write_all_at(&self.head[..head_len], 0)
                .context("writing the start of the image")?;
        }
        self.sync()?;
        self.report(true);
        Ok(self.summary.clone())
    }

    /// Leaves the target with zeros over its first MiB and over the last MiB
    /// of the image and of the disk, where partition tables live: nothing
    /// boots from it and no tool finds a partition table.
    pub fn wipe(mut self) -> Result<()> {
        self.stage_len = 0;
        self.pending_hole = None;
        let start = self.options.hold_back.max(TAIL_WIPE).min(self.capacity);
        let file_len = self
            .file
            .metadata()
            .context("reading the target's size")?
            .len();
        let end_of_target = if self.block_device {
            self.capacity
        } else {
            file_len
        };
        self.write_zeros(0, start.min(end_of_target))?;
        let image_end = self.image_size.unwrap_or(self.position).min(end_of_target);
        for end in [image_end, end_of_target] {
            let begin = end.saturating_sub(TAIL_WIPE);
            self.write_zeros(begin, end - begin)?;
        }
        self.sync()
    }

    /// [`DiskWriter::wipe`], after zeroing the first and last MiB of each
    /// of `partitions` (start, size in bytes), where filesystem, RAID, LVM
    /// and LUKS signatures live (as `wipefs` on every partition, then the
    /// disk): a partition table written again later finds no old
    /// filesystem. Ranges outside the target are clipped.
    pub fn wipe_with_partitions(mut self, partitions: &[(u64, u64)]) -> Result<()> {
        let end_of_target = if self.block_device {
            self.capacity
        } else {
            self.file
                .metadata()
                .context("reading the target's size")?
                .len()
        };
        for &(start, size) in partitions {
            let end = start.saturating_add(size).min(end_of_target);
            if start >= end {
                continue;
            }
            let head = (end - start).min(TAIL_WIPE);
            self.write_zeros(start, head)?;
            let tail = (end - start).min(TAIL_WIPE);
            self.write_zeros(end - tail, tail)?;
        }
        self.wipe()
    }

    /// Gives up on the write: a target that received nothing is left as it
    /// was (an image refused before writing changes nothing); otherwise it is
    /// wiped as by [`DiskWriter::wipe`].
    pub fn abandon(self) -> Result<()> {
        if self.started {
            self.wipe()
        } else {
            Ok(())
        }
    }

    /// Makes the write durable. On a block device, fsync writes the kernel's
    /// dirty pages and then sends the device a cache flush (a FLUSH CACHE or
    /// an NVMe Flush), so the data is on stable media, not in the disk's
    /// volatile cache; O_DIRECT writes bypass only the kernel's cache.
    /// BLKFLSBUF then drops the kernel's cached pages of the device, so that
    /// what is read next (the partition table, by the kernel or by
    /// configuration steps) comes from the disk.
    fn sync(&mut self) -> Result<()> {
        self.file.sync_all().context("syncing the target")?;
        if self.block_device {
            // SAFETY: BLKFLSBUF takes no argument; the descriptor is open.
            let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), BLKFLSBUF, 0) };
            if rc != 0 {
                return Err(Error::io(
                    "flushing the block device's buffers",
                    io::Error::last_os_error(),
                ));
            }
        }
        Ok(())
    }

    /// Asks the kernel to read the partition table again (after commit).
    pub fn reread_partition_table(path: &Path) -> Result<()> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: BLKRRPART takes no argument; the descriptor is open.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKRRPART, 0) };
        if rc != 0 {
            return Err(Error::io(
                format!("re-reading the partition table of {}", path.display()),
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}

impl BlockSink for DiskWriter {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset + data.len() as u64;
        self.check_fits(end)?;
        self.start()?;
        self.summary.data_bytes += data.len() as u64;
        let (mut offset, mut data) = (offset, data);
        if offset < self.options.hold_back {
            let n = ((self.options.hold_back - offset) as usize).min(data.len());
            self.head[offset as usize..offset as usize + n].copy_from_slice(&data[..n]);
            offset += n as u64;
            data = &data[n..];
        }
        if !data.is_empty() {
            self.apply_pending_hole()?;
        }
        // Large writes go straight out when they can: staging would only add
        // a copy. With O_DIRECT they must be aligned in memory and on disk.
        if data.len() >= DIRECT_THROUGH && self.can_write_through(offset, data) {
            self.flush_stage()?;
            self.direct
                .as_ref()
                .unwrap_or(&self.file)
                .write_all_at(data, offset)
                .with_context(|| format!("writing {} bytes at offset {offset}", data.len()))?;
            self.position = self.position.max(end);
            self.report(false);
            return Ok(());
        }
        while !data.is_empty() {
            if self.stage_len > 0 && self.stage_start + self.stage_len as u64 != offset {
                self.flush_stage()?;
            }
            if self.stage_len == 0 {
                self.stage_start = offset;
            }
            let room = self.stage_capacity() - self.stage_len;
            let n = room.min(data.len());
            let at = self.stage_len;
            self.stage()[at..at + n].copy_from_slice(&data[..n]);
            self.stage_len += n;
            offset += n as u64;
            data = &data[n..];
            if self.stage_len == self.stage_capacity() {
                self.flush_stage()?;
            }
        }
        self.position = self.position.max(end);
        Ok(())
    }

    fn hole(&mut self, offset: u64, len: u64) -> Result<()> {
        let end = offset + len;
        self.check_fits(end)?;
        // Holes touch the target only when applied: a stream that is refused
        // while it has been zeros so far (a decompression bomb) leaves the
        // target as it was.
        self.summary.hole_bytes += len;
        self.position = self.position.max(end);
        // The held-back start is zeros until written.
        let (offset, len) = if offset < self.options.hold_back {
            let skip = (self.options.hold_back - offset).min(len);
            (offset + skip, len - skip)
        } else {
            (offset, len)
        };
        if len == 0 {
            return Ok(());
        }
        self.flush_stage()?;
        match &mut self.pending_hole {
            Some((start, pending)) if *start + *pending == offset => *pending += len,
            _ => {
                if self.pending_hole.is_some() {
                    self.start()?;
                    self.apply_pending_hole()?;
                }
                self.pending_hole = Some((offset, len));
            }
        }
        Ok(())
    }

    fn finish(&mut self, size: u64) -> Result<()> {
        self.check_fits(size)?;
        self.start()?;
        self.flush_stage()?;
        self.apply_pending_hole()?;
        if !self.block_device {
            let current = self
                .file
                .metadata()
                .context("reading the target's size")?
                .len();
            if current < size {
                self.file
                    .set_len(size)
                    .context("extending the target file")?;
            }
        }
        self.image_size = Some(size);
        self.summary.image_size = size;
        self.position = self.position.max(size);
        Ok(())
    }
}

fn write_zeros_at(file: &File, start: u64, len: u64) -> Result<()> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], start + done)
            .with_context(|| format!("writing zeros at offset {}", start + done))?;
        done += n as u64;
    }
    Ok(())
}

fn punch_hole(file: &File, start: u64, len: u64) -> Result<()> {
    let (Ok(offset), Ok(length)) = (libc::off_t::try_from(start), libc::off_t::try_from(len))
    else {
        return Err(Error::TooLarge(format!(
            "a hole at {start}+{len} is out of range"
        )));
    };
    // SAFETY: fallocate takes the descriptor and plain integers.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            length,
        )
    };
    if rc != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EOPNOTSUPP) {
            // A filesystem without hole punching: write the zeros.
            return write_zeros_at(file, start, len);
        }
        return Err(Error::io(
            format!("punching a hole at offset {start}"),
            error,
        ));
    }
    Ok(())
}

fn block_device_size(file: &File) -> Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at
    // a live local.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc != 0 {
        return Err(Error::io(
            "reading the block device's size",
            io::Error::last_os_error(),
        ));
    }
    Ok(size)
}

/// Refuses a block device that is mounted, used as swap, or held by another
/// device (device-mapper, md), itself or through one of its partitions.
fn check_not_in_use(path: &Path, rdev: u64) -> Result<()> {
    let devices = device_and_partitions(rdev);
    let in_use = |why: String| {
        Err(Error::Invalid(format!(
            "{} is in use: {why}; refusing to write to it",
            path.display()
        )))
    };
    if let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") {
        for line in mountinfo.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if let (Some(dev), Some(mount_point)) = (fields.get(2), fields.get(4)) {
                if devices.iter().any(|(_, id)| id == dev) {
                    return in_use(format!("{dev} is mounted on {mount_point}"));
                }
            }
        }
    }
    if let Ok(swaps) = std::fs::read_to_string("/proc/swaps") {
        for line in swaps.lines().skip(1) {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            if let Ok(meta) = std::fs::metadata(name) {
                let id = format!("{}:{}", libc::major(meta.rdev()), libc::minor(meta.rdev()));
                if meta.file_type().is_block_device() && devices.iter().any(|(_, d)| *d == id) {
                    return in_use(format!("{name} is used as swap"));
                }
            }
        }
    }
    for (sys, id) in &devices {
        if let Ok(mut holders) = std::fs::read_dir(sys.join("holders")) {
            if let Some(Ok(holder)) = holders.next() {
                return in_use(format!(
                    "{id} is held by {}",
                    holder.file_name().to_string_lossy()
                ));
            }
        }
    }
    Ok(())
}

/// The sysfs directory and `major:minor` of a device and of its partitions.
fn device_and_partitions(rdev: u64) -> Vec<(PathBuf, String)> {
    let id = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
    let sys = PathBuf::from(format!("/sys/dev/block/{id}"));
    let mut found = vec![(sys.clone(), id)];
    if let Ok(entries) = std::fs::read_dir(&sys) {
        for entry in entries.flatten() {
            let dir = entry.path();
            if dir.join("partition").exists() {
                if let Ok(dev) = std::fs::read_to_string(dir.join("dev")) {
                    found.push((dir, dev.trim().to_string()));
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn writer(file: &File, holes: HoleMode) -> DiskWriter {
        DiskWriter::from_file(
            file.try_clone().unwrap(),
            WriterOptions {
                holes,
                buffer_size: 64 << 10,
                ..WriterOptions::default()
            },
        )
        .unwrap()
    }

    fn contents(file: &mut File) -> Vec<u8> {
        let mut out = Vec::new();
        let mut f = file.try_clone().unwrap();
        use std::io::Seek;
        f.rewind().unwrap();
        f.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn head_is_held_back_until_commit() {
        let mut file = tempfile::tempfile().unwrap();
        // An old bootable disk: its start must be zeros as soon as writing starts.
        file.write_all_at(&[0x55; 3 << 20], 0).unwrap();
        let mut w = writer(&file, HoleMode::Zero);
        w.write_at(0, &[1; 4096]).unwrap();
        assert!(contents(&mut file)[..1 << 20].iter().all(|&b| b == 0));
        w.hole(4096, (2 << 20) - 4096).unwrap();
        w.write_at(2 << 20, &[2; 4096]).unwrap();
        w.finish((2 << 20) + 4096).unwrap();
        let before = contents(&mut file);
        assert!(before[..4096].iter().all(|&b| b == 0), "head written early");
        w.commit().unwrap();
        let after = contents(&mut file);
        assert_eq!(after.len(), 3 << 20);
        assert!(after[..4096].iter().all(|&b| b == 1));
        assert!(
            after[4096..2 << 20].iter().all(|&b| b == 0),
            "hole not zeroed"
        );
        assert!(after[2 << 20..(2 << 20) + 4096].iter().all(|&b| b == 2));
    }

    #[test]
    fn wipe_leaves_no_partition_table() {
        let mut file = tempfile::tempfile().unwrap();
        let mut w = writer(&file, HoleMode::Skip);
        let image = vec![0xEEu8; 5 << 20];
        w.write_at(0, &image).unwrap();
        w.finish(image.len() as u64).unwrap();
        w.wipe().unwrap();
        let after = contents(&mut file);
        assert!(after[..1 << 20].iter().all(|&b| b == 0));
        assert!(after[(4 << 20)..].iter().all(|&b| b == 0));
    }

    #[test]
    fn unaligned_writes_and_large_runs() {
        let mut file = tempfile::tempfile().unwrap();
        let mut w = writer(&file, HoleMode::Zero);
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i % 251) as u8).collect();
        let base = (1 << 20) + 7;
        w.hole(0, base).unwrap();
        w.write_at(base, &data).unwrap();
        w.finish(base + data.len() as u64 + 10).unwrap();
        let summary = w.commit().unwrap();
        assert_eq!(summary.data_bytes, data.len() as u64);
        let after = contents(&mut file);
        assert_eq!(&after[base as usize..base as usize + data.len()], &data[..]);
        assert_eq!(after.len() as u64, base + data.len() as u64 + 10);
    }

    #[test]
    fn progress_reaches_the_total() {
        let file = tempfile::tempfile().unwrap();
        let mut w = writer(&file, HoleMode::Zero);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        w.on_progress(Some(40 << 20), move |p| sink.lock().unwrap().push(p));
        let chunk = vec![3u8; 1 << 20];
        for i in 0..40u64 {
            w.write_at(i << 20, &chunk).unwrap();
        }
        w.finish(40 << 20).unwrap();
        w.commit().unwrap();
        let seen = seen.lock().unwrap();
        assert!(seen.len() >= 2);
        assert_eq!(
            seen.last().unwrap(),
            &Progress {
                bytes_done: 40 << 20,
                total: Some(40 << 20)
            }
        );
    }

    #[test]
    fn untouched_until_the_first_write() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all_at(&[0x55; 2 << 20], 0).unwrap();
        let w = writer(&file, HoleMode::Zero);
        w.abandon().unwrap();
        assert!(contents(&mut file).iter().all(|&b| b == 0x55));
    }

    #[test]
    fn max_size_bounds_a_file() {
        let file = tempfile::tempfile().unwrap();
        let mut w = DiskWriter::from_file(
            file,
            WriterOptions {
                max_size: Some(1 << 20),
                ..WriterOptions::default()
            },
        )
        .unwrap();
        assert_eq!(w.capacity(), 1 << 20);
        let err = w.write_at(1 << 20, &[1]).unwrap_err();
        assert!(matches!(err, Error::TooLarge(_)), "{err}");
    }

    #[test]
    fn commit_needs_finish() {
        let file = tempfile::tempfile().unwrap();
        let w = writer(&file, HoleMode::Zero);
        assert!(w.commit().is_err());
    }
}
