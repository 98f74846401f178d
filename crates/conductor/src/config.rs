use ferric_drivers::anaconda::AnacondaOptions;
use ferric_drivers::direct::{DirectOptions, ImageDownloadSource};
use ferric_drivers::image_cache::{CacheConfig, ImageCache};
use ferric_drivers::ipmi::IpmiOptions;
use ferric_drivers::ipxe::PxeOptions;
use ferric_drivers::redfish::RedfishOptions;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// How the conductor behaves. Every field has a safe default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConductorConfig {
    /// Name of this conductor in node reservations; default: the machine's hostname.
    pub hostname: String,
    /// Conductor group (Ironic's `conductor_group`); default: "" (the default group).
    pub conductor_group: String,
    /// Hardware types this conductor drives: "fake-hardware", "ipmi"
    /// (needs ipmitool), "redfish"; default: ["fake-hardware"].
    pub enabled_hardware_types: Vec<String>,
    /// Run automated cleaning on `provide` and after tear down; default: true.
    pub automated_clean: bool,
    /// Allow deleting nodes in `available`; default: true (as Ironic).
    pub allow_deleting_available_nodes: bool,
    /// A node waiting for its agent longer than this fails; default: 1800 s.
    #[serde(with = "ferric_types::seconds")]
    pub deploy_callback_timeout: Duration,
    /// How often wait states are checked for that timeout; default: 60 s.
    #[serde(with = "ferric_types::seconds")]
    pub callback_check_interval: Duration,
    /// How often power states are read from the BMCs; 0 disables; default: 60 s.
    #[serde(with = "ferric_types::seconds")]
    pub power_sync_interval: Duration,
    /// Failed power reads in a row before the node goes into maintenance
    /// with fault "power failure"; default: 3.
    pub power_failure_threshold: u32,
    /// How often this conductor refreshes its heartbeat; default: 10 s.
    #[serde(with = "ferric_types::seconds")]
    pub heartbeat_interval: Duration,
    /// A conductor without a heartbeat for this long is dead and its locks
    /// are taken over; default: 60 s.
    #[serde(with = "ferric_types::seconds")]
    pub dead_conductor_after: Duration,
    /// Where agents of `direct` deploys get images (Ironic's
    /// `[agent]image_download_source`): "http", the agent downloads
    /// `image_source` itself, or "local", this server downloads it once into
    /// its image cache, checks and converts it, and serves it to the agent.
    /// A node's `instance_info` or `driver_info` `image_download_source`
    /// overrides it. Default: "http".
    pub image_download_source: ImageDownloadSource,
    /// With "local", convert images to raw before serving them (Ironic's
    /// `force_raw_images`; only together with `stream_raw_images`, as in
    /// Ironic). Default: true.
    pub force_raw_images: bool,
    /// Tell agents to stream raw images straight to disk; false: download
    /// to their spool first, verify, then write (Ironic's
    /// `[agent]stream_raw_images`). Default: true.
    pub stream_raw_images: bool,
    /// The base URL at which deploy agents reach this server's HTTP
    /// listener, for cached images (Ironic's `[deploy]http_url`), e.g.
    /// "http://192.0.2.1:6385". Default: none; ferricd derives it from
    /// `public_url` or a specific `listen` address. "local" is refused
    /// without it.
    pub image_url_base: Option<String>,
    /// Directories `file://` image sources may name (Ironic's
    /// `[conductor]file_url_allowed_paths`); symlinks are resolved before
    /// the check and /dev, /sys, /proc, /boot, /etc, /run are always
    /// refused. Default: none (file:// refused).
    pub file_url_allowed_paths: Vec<PathBuf>,
    /// Accept md5 image checksums where this server verifies images, in the
    /// image cache of "local" (Ironic's `[agent]allow_md5_checksum`).
    /// Default: false, as in Ironic: md5 collisions are cheap to make.
    pub allow_md5_checksum: bool,
    /// Directory of the image cache; created on first use. Default:
    /// "image-cache" in the working directory. Its "vmedia" directory
    /// holds the ISOs of virtual media boots.
    pub image_cache_dir: PathBuf,
    /// Size limit of the image cache in MiB (allocated space, images in use
    /// included; Ironic's `[pxe]image_cache_size`). Default: 20480.
    pub image_cache_size_mib: u64,
    /// Cached images unused for this long are removed (Ironic's
    /// `[pxe]image_cache_ttl`); default: 604800 s (a week).
    #[serde(with = "ferric_types::seconds")]
    pub image_cache_ttl: Duration,
    /// How the ipmitool power and management interfaces talk to BMCs
    /// (Ironic's `[ipmi]` options), `[conductor.ipmi]` in ferricd.toml:
    /// min_command_interval (5 s), command_retry_timeout (60 s),
    /// command_timeout (60 s), power_state_change_timeout (60 s),
    /// soft_power_off_timeout (600 s), disable_boot_timeout (true),
    /// default_boot_mode ("uefi"), ipmitool ("ipmitool").
    pub ipmi: IpmiOptions,
    /// How the ipxe boot interface boots nodes (Ironic's `[pxe]`; the
    /// redfish-virtual-media boot interface uses its http_url, api_url,
    /// deploy files and kernel_append_params too),
    /// `[conductor.pxe]` in ferricd.toml: http_url (default
    /// image_url_base), api_url, deploy_kernel, deploy_ramdisk,
    /// kernel_append_params, ipxe_template, dhcp_hosts_dir, dhcp_tag,
    /// default_boot_mode.
    pub pxe: PxeOptions,
    /// How the redfish power and management interfaces talk to BMCs
    /// (Ironic's `[redfish]`), `[conductor.redfish]` in ferricd.toml:
    /// connection_attempts (5), connection_retry_interval (4 s),
    /// connect_timeout (30 s), request_timeout (60 s),
    /// power_state_change_timeout (60 s), soft_power_off_timeout (600 s),
    /// power_state_poll_interval (1 s), auth_type ("auto"),
    /// default_boot_mode ("uefi").
    pub redfish: RedfishOptions,
    /// How the anaconda deploy interface installs nodes (Ironic's
    /// `[anaconda]`), `[conductor.anaconda]` in ferricd.toml:
    /// default_ks_template (a file; default: Ferric's own template),
    /// insecure_heartbeat (false).
    pub anaconda: AnacondaOptions,
}

impl Default for ConductorConfig {
    fn default() -> Self {
        ConductorConfig {
            hostname: default_hostname(),
            conductor_group: String::new(),
            enabled_hardware_types: vec!["fake-hardware".to_string()],
            automated_clean: true,
            allow_deleting_available_nodes: true,
            deploy_callback_timeout: Duration::from_secs(1800),
            callback_check_interval: Duration::from_secs(60),
            power_sync_interval: Duration::from_secs(60),
            power_failure_threshold: 3,
            heartbeat_interval: Duration::from_secs(10),
            dead_conductor_after: Duration::from_secs(60),
            image_download_source: ImageDownloadSource::Http,
            force_raw_images: true,
            stream_raw_images: true,
            image_url_base: None,
            image_cache_dir: PathBuf::from("image-cache"),
            file_url_allowed_paths: Vec::new(),
            allow_md5_checksum: false,
            image_cache_size_mib: 20480,
            image_cache_ttl: Duration::from_secs(7 * 24 * 3600),
            ipmi: IpmiOptions::default(),
            pxe: PxeOptions::default(),
            redfish: RedfishOptions::default(),
            anaconda: AnacondaOptions::default(),
        }
    }
}

impl ConductorConfig {
    /// The `direct` interface's image handling, with its cache.
    pub(crate) fn direct_options(&self) -> Result<DirectOptions, String> {
        if let Some(base) = &self.image_url_base {
            if !(base.starts_with("http://") || base.starts_with("https://"))
                || base.contains(['?', '#', ' '])
            {
                return Err(format!(
                    "image_url_base must be an http(s) URL without query, got {base:?}"
                ));
            }
        }
        let mut cache = CacheConfig::new(&self.image_cache_dir);
        cache.max_size = self.image_cache_size_mib.saturating_mul(1 << 20);
        cache.ttl = self.image_cache_ttl;
        cache.file_url_allowed_paths = self.file_url_allowed_paths.clone();
        cache.allow_md5_checksum = self.allow_md5_checksum;
        // A lease outlives the longest wait for the agent.
        cache.lease_ttl = self.deploy_callback_timeout.saturating_mul(2);
        let cache = ImageCache::new(cache).map_err(|e| e.to_string())?;
        Ok(DirectOptions {
            image_download_source: self.image_download_source,
            force_raw_images: self.force_raw_images,
            stream_raw_images: self.stream_raw_images,
            image_url_base: self.image_url_base.clone(),
            image_cache: Some(cache),
        })
    }
}

impl ConductorConfig {
    /// The ipxe boot interface's options, its URL defaulting to where
    /// agents reach this server for images.
    pub(crate) fn pxe_options(&self) -> PxeOptions {
        let mut pxe = self.pxe.clone();
        if pxe.http_url.is_none() {
            pxe.http_url = self.image_url_base.clone();
        }
        pxe
    }
}

impl ConductorConfig {
    /// Where the redfish-virtual-media boot interface builds and serves
    /// its ISOs: "vmedia" in the image cache directory (which leaves names
    /// it does not know alone).
    pub(crate) fn virtual_media_dir(&self) -> PathBuf {
        self.image_cache_dir.join("vmedia")
    }
}

fn default_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_reaches_the_image_cache_only_when_allowed() {
        let cache_of = |config: &ConductorConfig| {
            let options = config.direct_options().unwrap();
            options.image_cache.unwrap().config().allow_md5_checksum
        };
        let dir = tempfile::tempdir().unwrap();
        let mut config = ConductorConfig {
            image_cache_dir: dir.path().join("cache"),
            ..ConductorConfig::default()
        };
        assert!(!cache_of(&config), "refused by default");
        config.allow_md5_checksum = true;
        assert!(cache_of(&config));
    }
}
