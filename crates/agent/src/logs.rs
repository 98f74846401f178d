//! `log.collect_system_logs`: the journal, the output of diagnostic
//! commands (IPA's list: `df`, `dmesg`, `ip addr`, `lsblk`, ...) and the
//! files under `/var/log`, as a tar archive, gzipped and base64-encoded
//! (`{"system_logs": "..."}`, IPA's shape). The conductor stores it.
//!
//! Missing programs are skipped. Every entry and the whole archive are
//! bounded (a long log keeps its end, where the failure is), each command
//! has a timeout, and the agent token is masked wherever it shows up: the
//! kernel command line (`ipa-agent-token=`) is in dmesg and the journal.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What to collect and how much.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// `(entry name, argv)`: each program's stdout becomes an entry.
    pub commands: Vec<(String, Vec<String>)>,
    /// Files and directories (walked, symlinks not followed) to include
    /// under their own path. Default `/var/log` without the binary journal.
    pub paths: Vec<PathBuf>,
    /// Directories left out while walking.
    pub skip: Vec<PathBuf>,
    /// The most kept of one entry (its end). Default 8 MiB.
    pub max_entry: usize,
    /// The most kept in all, before compression. Default 32 MiB.
    pub max_total: usize,
    /// How long one command may run. Default 20 s.
    pub command_timeout: Duration,
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

impl Default for LogOptions {
    fn default() -> Self {
        let commands = [
            (
                "journal",
                argv(&["journalctl", "--full", "--no-pager", "-b", "-n", "100000"]),
            ),
            ("df", argv(&["df", "-a"])),
            ("dmesg", argv(&["dmesg"])),
            ("efibootmgr", argv(&["efibootmgr", "-v"])),
            ("iptables", argv(&["iptables", "-L"])),
            ("ip_addr", argv(&["ip", "addr"])),
            (
                "lsblk",
                argv(&[
                    "lsblk",
                    "--all",
                    "-o",
                    "KNAME,MODEL,SIZE,ROTA,TYPE,UUID,PARTUUID,SERIAL,WWN,FSTYPE,MOUNTPOINT",
                ]),
            ),
            (
                "lsblk-full",
                argv(&["lsblk", "--all", "--bytes", "--output-all", "--pairs"]),
            ),
            ("lshw", argv(&["lshw", "-quiet", "-json"])),
            ("mdstat", argv(&["cat", "/proc/mdstat"])),
            ("mount", argv(&["mount"])),
            ("multipath", argv(&["multipath", "-ll"])),
            ("parted", argv(&["parted", "-l"])),
            ("ps", argv(&["ps", "au"])),
        ];
        LogOptions {
            commands: commands
                .into_iter()
                .map(|(name, argv)| (name.to_owned(), argv))
                .collect(),
            paths: vec![PathBuf::from("/var/log")],
            skip: vec![PathBuf::from("/var/log/journal")],
            max_entry: 8 << 20,
            max_total: 32 << 20,
            command_timeout: Duration::from_secs(20),
        }
    }
}

/// The archive's entries, then the archive. Blocking: runs programs and
/// reads files.
pub fn collect_system_logs(options: &LogOptions) -> String {
    let mut tar = TarWriter::new(options.max_total);
    for (name, argv) in &options.commands {
        match run_bounded(argv, options.command_timeout, options.max_entry) {
            Ok(output) => tar.add(name, &mask_secrets(&output)),
            Err(why) => tracing::debug!(command = %argv.join(" "), "not collected: {why}"),
        }
    }
    for path in &options.paths {
        add_path(&mut tar, path, options);
    }
    ferric_image::configdrive::encode(&tar.finish())
}

fn add_path(tar: &mut TarWriter, path: &Path, options: &LogOptions) {
    if options.skip.iter().any(|s| s == path) {
        return;
    }
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        let Ok(entries) = std::fs::read_dir(path) else {
            return;
        };
        let mut children: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        children.sort();
        for child in children {
            add_path(tar, &child, options);
        }
    } else if meta.is_file() {
        match read_tail(path, options.max_entry) {
            Ok(data) => {
                let name = path.to_string_lossy();
                tar.add(name.trim_start_matches('/'), &mask_secrets(&data));
            }
            Err(error) => tracing::debug!(path = %path.display(), %error, "not collected"),
        }
    }
}

/// The last `max` bytes of a file.
fn read_tail(path: &Path, max: usize) -> std::io::Result<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len > max as u64 {
        file.seek(SeekFrom::Start(len - max as u64))?;
    }
    let mut data = Vec::new();
    file.take(max as u64).read_to_end(&mut data)?;
    if len > max as u64 {
        drop_cut_line(&mut data);
    }
    Ok(data)
}

/// Runs `argv` without a shell; its stdout (the last `max` bytes).
fn run_bounded(argv: &[String], timeout: Duration, max: usize) -> Result<Vec<u8>, String> {
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env("LC_ALL", "C")
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut cut = false;
        let mut buf = [0u8; 64 * 1024];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    kept.extend_from_slice(&buf[..n]);
                    if kept.len() > 2 * max {
                        kept.drain(..kept.len() - max);
                        cut = true;
                    }
                }
            }
        }
        if kept.len() > max {
            kept.drain(..kept.len() - max);
            cut = true;
        }
        if cut {
            drop_cut_line(&mut kept);
        }
        kept
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("still running after {timeout:?}; killed"));
            }
        }
    };
    let output = reader.join().map_err(|_| "reading its output failed")?;
    if !status.success() && output.is_empty() {
        return Err(format!("failed: {status}"));
    }
    Ok(output)
}

/// Keys whose values are credentials, as they appear on kernel command
/// lines and in URLs.
const SECRET_KEYS: &[&[u8]] = &[
    b"ipa-agent-token=",
    b"agent_token=",
    b"agent-token=",
    b"\"agent_token\": \"",
    b"\"agent_token\":\"",
];

/// Drops the first, cut line of a tail: a secret's key cut off there would
/// leave its value unmasked.
fn drop_cut_line(data: &mut Vec<u8>) {
    match data.iter().position(|&b| b == b'\n') {
        Some(end) => {
            data.drain(..=end);
        }
        None => data.clear(),
    }
}

/// Replaces the value after each secret key (up to whitespace, `&`, a
/// quote) with `***`.
pub fn mask_secrets(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        let key = SECRET_KEYS.iter().find(|key| {
            data[i..].len() >= key.len() && data[i..i + key.len()].eq_ignore_ascii_case(key)
        });
        match key {
            Some(key) => {
                out.extend_from_slice(&data[i..i + key.len()]);
                i += key.len();
                let end = data[i..]
                    .iter()
                    .position(|b| b.is_ascii_whitespace() || b"&\"',;".contains(b))
                    .map_or(data.len(), |p| i + p);
                if end > i {
                    out.extend_from_slice(b"***");
                }
                i = end;
            }
            None => {
                out.push(data[i]);
                i += 1;
            }
        }
    }
    out
}

/// A ustar archive in memory, bounded in size: entries that would pass
/// the limit are left out (and listed in `TRUNCATED`).
struct TarWriter {
    out: Vec<u8>,
    limit: usize,
    left_out: Vec<String>,
    mtime: u64,
}

const BLOCK: usize = 512;

impl TarWriter {
    fn new(limit: usize) -> Self {
        TarWriter {
            out: Vec::new(),
            limit,
            left_out: Vec::new(),
            mtime: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    fn add(&mut self, name: &str, data: &[u8]) {
        let padded = data.len().div_ceil(BLOCK) * BLOCK;
        if self.out.len() + BLOCK + padded > self.limit {
            self.left_out.push(name.to_owned());
            return;
        }
        let Some(header) = ustar_header(name, data.len() as u64, self.mtime) else {
            self.left_out.push(name.to_owned());
            return;
        };
        self.out.extend_from_slice(&header);
        self.out.extend_from_slice(data);
        self.out.resize(self.out.len() + padded - data.len(), 0);
    }

    fn finish(mut self) -> Vec<u8> {
        if !self.left_out.is_empty() {
            let note = format!(
                "left out to keep the archive under {} bytes:\n{}\n",
                self.limit,
                self.left_out.join("\n")
            );
            self.limit = usize::MAX;
            let names = std::mem::take(&mut self.left_out);
            self.add("TRUNCATED", note.as_bytes());
            self.left_out = names;
        }
        // Two zero blocks end the archive.
        self.out.resize(self.out.len() + 2 * BLOCK, 0);
        self.out
    }
}

/// A ustar header for a regular file (mode 0644, owner root); `None` if
/// the name does not fit ustar's 100 + 155 bytes.
fn ustar_header(name: &str, size: u64, mtime: u64) -> Option<[u8; BLOCK]> {
    let mut header = [0u8; BLOCK];
    let bytes = name.as_bytes();
    if bytes.len() <= 100 {
        header[..bytes.len()].copy_from_slice(bytes);
    } else {
        // Split at a '/' so that the prefix fits 155 bytes, the rest 100.
        let split = (0..bytes.len())
            .rfind(|&i| bytes[i] == b'/' && i <= 155 && bytes.len() - i - 1 <= 100)?;
        header[..bytes.len() - split - 1].copy_from_slice(&bytes[split + 1..]);
        header[345..345 + split].copy_from_slice(&bytes[..split]);
    }
    let octal = |field: &mut [u8], value: u64| {
        let text = format!("{value:0width$o}", width = field.len() - 1);
        field[..text.len()].copy_from_slice(text.as_bytes());
    };
    octal(&mut header[100..108], 0o644);
    octal(&mut header[108..116], 0);
    octal(&mut header[116..124], 0);
    if size >= 1 << 33 {
        return None;
    }
    octal(&mut header[124..136], size);
    octal(&mut header[136..148], mtime);
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[265..269].copy_from_slice(b"root");
    header[297..301].copy_from_slice(b"root");
    // The checksum is computed with its own field as spaces.
    header[148..156].fill(b' ');
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    header[148..156].copy_from_slice(text.as_bytes());
    Some(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_masked() {
        let text = b"Command line: BOOT_IMAGE=/vmlinuz ipa-agent-token=s3cr3t quiet\n\
                     GET /v1/commands?agent_token=abc&wait=true";
        let masked = String::from_utf8(mask_secrets(text)).unwrap();
        assert!(
            !masked.contains("s3cr3t") && !masked.contains("abc&"),
            "{masked}"
        );
        assert!(masked.contains("ipa-agent-token=*** quiet"), "{masked}");
        assert!(masked.contains("agent_token=***&wait=true"), "{masked}");
    }

    #[test]
    fn long_names_use_the_prefix_field() {
        let name = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        let header = ustar_header(&name, 5, 0).unwrap();
        assert_eq!(&header[..90], "f".repeat(90).as_bytes());
        assert_eq!(&header[345..465], "d".repeat(120).as_bytes());
        assert!(ustar_header(&"x".repeat(300), 5, 0).is_none());
    }

    #[test]
    fn the_archive_is_bounded() {
        let mut tar = TarWriter::new(4 * BLOCK);
        tar.add("small", b"hello");
        tar.add("big", &[b'x'; 4 * BLOCK]);
        let out = tar.finish();
        // small (2 blocks) + TRUNCATED note (2 blocks) + end (2 blocks).
        assert_eq!(out.len(), 6 * BLOCK);
        assert_eq!(&out[..5], b"small");
        assert_eq!(&out[2 * BLOCK..2 * BLOCK + 9], b"TRUNCATED");
    }
}
