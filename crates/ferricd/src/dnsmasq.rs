//! The one-box setup's DHCP and TFTP server: ferricd runs dnsmasq itself
//! (`[dnsmasq] enabled = true`) and stops it when it stops.
//!
//! What dnsmasq is told:
//! - DHCP on one interface, the configured ranges, no DNS (`--port=0`), no
//!   system configuration file;
//! - host entries from `hosts_dir`, where the ipxe boot interface tags the
//!   MACs of nodes that boot the ramdisk: only tagged MACs get boot options,
//!   so every other machine on the network gets plain DHCP;
//! - nodes of the `ipxe` boot interface (tag `ferric`): iPXE clients (DHCP
//!   option 175) get ferricd's `/boot/boot.ipxe`; other PXE firmware gets an
//!   iPXE binary over TFTP (`undionly.kpxe` for BIOS, `snponly.efi` for
//!   UEFI), copied from Debian's `ipxe` package;
//! - nodes of the `pxe` boot interface (tag `ferric-pxe`, BIOS only) get
//!   `lpxelinux.0` (Debian's `pxelinux`) over TFTP, with DHCP option 210
//!   (path prefix) pointing it at ferricd's `/boot/pxelinux/`, where it finds
//!   its `ldlinux.c32` and its node's configuration over HTTP.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

/// `[dnsmasq]` in ferricd.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsmasqConfig {
    /// Run dnsmasq; default: false (DHCP is someone else's).
    pub enabled: bool,
    /// The program; default: "dnsmasq".
    pub program: PathBuf,
    /// The interface nodes are on, e.g. "br0". Required when enabled.
    pub interface: String,
    /// dnsmasq `--dhcp-range` values, e.g.
    /// "10.0.0.100,10.0.0.199,255.255.255.0,1h" or "fd00::,ra-only".
    pub dhcp_ranges: Vec<String>,
    /// Working directory for host entries, the TFTP root and the pid
    /// file; default: "dnsmasq" in ferricd's working directory.
    pub state_dir: PathBuf,
    /// Where the iPXE binaries come from; default: "/usr/lib/ipxe".
    pub ipxe_dir: PathBuf,
    /// More dnsmasq options, passed as they are (e.g. "--enable-ra").
    pub extra_args: Vec<String>,
    /// The user dnsmasq runs as after binding its ports; it must be able
    /// to read state_dir. Default: ferricd's own user.
    pub user: Option<String>,
}

impl Default for DnsmasqConfig {
    fn default() -> Self {
        DnsmasqConfig {
            enabled: false,
            program: PathBuf::from("dnsmasq"),
            interface: String::new(),
            dhcp_ranges: Vec::new(),
            state_dir: PathBuf::from("dnsmasq"),
            ipxe_dir: PathBuf::from("/usr/lib/ipxe"),
            extra_args: Vec::new(),
            user: None,
        }
    }
}

/// The iPXE binaries served over TFTP.
pub const IPXE_BINARIES: &[&str] = &["undionly.kpxe", "snponly.efi", "ipxe.efi"];

/// PXELINUX with HTTP support, for the `pxe` boot interface.
pub const PXELINUX: &str = "/usr/lib/PXELINUX/lpxelinux.0";

impl DnsmasqConfig {
    pub fn hosts_dir(&self) -> PathBuf {
        self.state_dir.join("hosts")
    }

    pub fn tftp_root(&self) -> PathBuf {
        self.state_dir.join("tftp")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.state_dir.join("dnsmasq.pid")
    }

    /// dnsmasq's arguments; `http_url` is where nodes reach ferricd and
    /// `tag` the tag of the ipxe boot interface's host entries (the pxe
    /// interface's add "-pxe").
    pub fn args(&self, http_url: &str, tag: &str) -> Vec<String> {
        let base = http_url.trim_end_matches('/');
        let mut args = vec![
            "--keep-in-foreground".to_string(),
            "--conf-file=/dev/null".to_string(),
            "--log-facility=-".to_string(),
            "--port=0".to_string(),
            "--bind-interfaces".to_string(),
            format!("--interface={}", self.interface),
            format!("--user={}", self.user.clone().unwrap_or_else(own_user)),
            format!("--pid-file={}", self.pid_file().display()),
            format!("--dhcp-hostsdir={}", self.hosts_dir().display()),
            "--enable-tftp".to_string(),
            format!("--tftp-root={}", self.tftp_root().display()),
            "--dhcp-match=set:ipxe,175".to_string(),
            "--dhcp-match=set:efi,option:client-arch,7".to_string(),
            "--dhcp-match=set:efi,option:client-arch,9".to_string(),
            format!("--dhcp-boot=tag:{tag},tag:ipxe,{base}/boot/boot.ipxe"),
            format!("--dhcp-boot=tag:{tag},tag:!ipxe,tag:efi,snponly.efi"),
            format!("--dhcp-boot=tag:{tag},tag:!ipxe,tag:!efi,undionly.kpxe"),
            format!("--dhcp-boot=tag:{tag}-pxe,tag:!efi,lpxelinux.0"),
            format!("--dhcp-option-force=tag:{tag}-pxe,210,{base}/boot/pxelinux/"),
        ];
        args.extend(self.dhcp_ranges.iter().map(|r| format!("--dhcp-range={r}")));
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// Prepares the state directory: host entries of a previous run are
    /// kept (their nodes may still be booting), iPXE and PXELINUX binaries
    /// copied.
    fn prepare(&self) -> anyhow::Result<()> {
        if self.interface.is_empty() || self.dhcp_ranges.is_empty() {
            anyhow::bail!("[dnsmasq] needs interface and dhcp_ranges when enabled");
        }
        for dir in [self.hosts_dir(), self.tftp_root()] {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        for name in IPXE_BINARIES {
            let from = self.ipxe_dir.join(name);
            let to = self.tftp_root().join(name);
            std::fs::copy(&from, &to).with_context(|| {
                format!("cannot copy {} (apt-get install ipxe)", from.display())
            })?;
        }
        // Only nodes of the pxe boot interface need it.
        if let Err(e) = std::fs::copy(PXELINUX, self.tftp_root().join("lpxelinux.0")) {
            tracing::warn!(
                error = %e,
                "no {PXELINUX} (apt-get install pxelinux): nodes of the pxe boot interface cannot boot"
            );
        }
        Ok(())
    }
}

/// The name of the user ferricd runs as ("root" if it cannot be found).
fn own_user() -> String {
    // SAFETY: getpwuid returns a pointer into static storage or null; the
    // name is copied at once, and nothing else in ferricd calls getpwuid.
    unsafe {
        let entry = libc::getpwuid(libc::geteuid());
        if entry.is_null() || (*entry).pw_name.is_null() {
            return "root".to_string();
        }
        std::ffi::CStr::from_ptr((*entry).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}

/// A running dnsmasq. A task watches it: should it die, the error is
/// logged at once (nodes cannot network-boot without it).
pub struct Dnsmasq {
    stop: tokio::sync::oneshot::Sender<()>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Dnsmasq {
    /// Starts dnsmasq and checks that it stays up (a busy port or a
    /// missing interface makes it exit at once).
    pub async fn start(
        config: &DnsmasqConfig,
        http_url: &str,
        tag: &str,
    ) -> anyhow::Result<Dnsmasq> {
        config.prepare()?;
        let args = config.args(http_url, tag);
        tracing::info!(interface = %config.interface, "starting dnsmasq");
        let mut child = tokio::process::Command::new(&config.program)
            .args(&args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot run {} (apt-get install dnsmasq-base)",
                    config.program.display()
                )
            })?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("dnsmasq exited at start ({status}); its messages are above");
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let watcher = tokio::spawn(async move {
            tokio::select! {
                status = child.wait() => tracing::error!(
                    status = ?status,
                    "dnsmasq exited: nodes cannot network-boot until ferricd restarts"
                ),
                _ = stopped => {
                    let _ = child.kill().await;
                }
            }
        });
        Ok(Dnsmasq { stop, watcher })
    }

    /// Stops dnsmasq and waits for it.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.watcher.await;
    }
}
