use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How the conductor behaves. Every field has a safe default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConductorConfig {
    /// Name of this conductor in node reservations; default: the machine's hostname.
    pub hostname: String,
    /// Conductor group (Ironic's `conductor_group`); default: "" (the default group).
    pub conductor_group: String,
    /// Hardware types this conductor drives; default: ["fake-hardware"].
    pub enabled_hardware_types: Vec<String>,
    /// Run automated cleaning on `provide` and after tear down; default: true.
    pub automated_clean: bool,
    /// Allow deleting nodes in `available`; default: true (as Ironic).
    pub allow_deleting_available_nodes: bool,
    /// A node waiting for its agent longer than this fails; default: 1800 s.
    #[serde(with = "seconds")]
    pub deploy_callback_timeout: Duration,
    /// How often wait states are checked for that timeout; default: 60 s.
    #[serde(with = "seconds")]
    pub callback_check_interval: Duration,
    /// How often power states are read from the BMCs; 0 disables; default: 60 s.
    #[serde(with = "seconds")]
    pub power_sync_interval: Duration,
    /// Failed power reads in a row before the node goes into maintenance
    /// with fault "power failure"; default: 3.
    pub power_failure_threshold: u32,
    /// How often this conductor refreshes its heartbeat; default: 10 s.
    #[serde(with = "seconds")]
    pub heartbeat_interval: Duration,
    /// A conductor without a heartbeat for this long is dead and its locks
    /// are taken over; default: 60 s.
    #[serde(with = "seconds")]
    pub dead_conductor_after: Duration,
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
        }
    }
}

fn default_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Durations as (possibly fractional) seconds in config files.
mod seconds {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}
