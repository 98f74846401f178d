//! The server's memory, read from `/proc/PID/status` (same machine only).

use serde::Serialize;

/// Resident memory of a process, in KiB as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryUsage {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the most ever resident (high-water mark).
    pub peak_kib: u64,
}

impl MemoryUsage {
    pub fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }

    pub fn peak_mib(&self) -> f64 {
        self.peak_kib as f64 / 1024.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RssError {
    #[error("cannot read /proc/{pid}/status (is the server running on this machine?)")]
    Read {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("/proc/{pid}/status has no VmRSS and VmHWM lines")]
    Missing { pid: u32 },
}

/// Reads the memory of process `pid` now.
pub fn read(pid: u32) -> Result<MemoryUsage, RssError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|source| RssError::Read { pid, source })?;
    parse_status(&text).ok_or(RssError::Missing { pid })
}

/// Picks `VmRSS` and `VmHWM` ("VmRSS:     12345 kB") out of a status file.
pub fn parse_status(text: &str) -> Option<MemoryUsage> {
    let kib = |key: &str| {
        text.lines().find_map(|line| {
            let value = line.strip_prefix(key)?.strip_prefix(':')?;
            value.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
        })
    };
    Some(MemoryUsage {
        rss_kib: kib("VmRSS")?,
        peak_kib: kib("VmHWM")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tferricd\nUmask:\t0022\nState:\tS (sleeping)\nVmPeak:\t  812340 kB\n\
VmSize:\t  812340 kB\nVmHWM:\t   40960 kB\nVmRSS:\t   30720 kB\nRssAnon:\t   20000 kB\nThreads:\t3\n";

    #[test]
    fn parses_rss_and_high_water_mark() {
        let m = parse_status(STATUS).unwrap();
        assert_eq!(
            m,
            MemoryUsage {
                rss_kib: 30720,
                peak_kib: 40960
            }
        );
        assert_eq!(m.rss_mib(), 30.0);
        assert_eq!(m.peak_mib(), 40.0);
    }

    #[test]
    fn kernel_threads_have_no_memory_lines() {
        assert_eq!(
            parse_status("Name:\tkthreadd\nState:\tS (sleeping)\n"),
            None
        );
    }

    #[test]
    fn reads_own_process() {
        let m = read(std::process::id()).unwrap();
        assert!(m.rss_kib > 0 && m.peak_kib >= m.rss_kib);
    }
}
