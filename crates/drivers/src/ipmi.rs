//! The `ipmi` hardware type's power and management interfaces, both named
//! `ipmitool` as in Ironic: every operation runs the `ipmitool` program over
//! IPMI 2.0 (`-I lanplus`) against the node's BMC.
//!
//! How Ironic does it, and what Ferric keeps:
//! - driver_info keys are Ironic's (`ipmi_address`, `ipmi_port`,
//!   `ipmi_username`, `ipmi_password`, `ipmi_priv_level`,
//!   `ipmi_cipher_suite`, `ipmi_protocol_version`, `ipmi_bridging`,
//!   `ipmi_force_boot_device`, `ipmi_disable_boot_timeout`,
//!   `ipmi_hex_kg_key`). Bridging and IPMI 1.5 are refused.
//! - The password never reaches a command line: ipmitool reads it from
//!   `IPMI_PASSWORD` in its own environment (`-E`, Ironic's
//!   `store_cred_in_env`), so it is in no file and in no `ps` output. The
//!   Kg key goes the same way (`-K`, `IPMI_KGKEY`).
//! - Commands to one BMC are serialized and spaced by at least
//!   `min_command_interval` (BMCs are fragile); a failed command is retried
//!   with a growing pause until `command_retry_timeout`; one ipmitool run
//!   that hangs is killed after `command_timeout`. Credentials the BMC
//!   refuses are not retried.
//! - Power actions wait until the BMC reports the target state. Reboot is
//!   Ironic's: power off (unless already off), then power on; a soft reboot
//!   is a soft power off, then power on.
//! - Boot devices: in UEFI mode (Ironic's default boot mode) the raw "set
//!   system boot options" command with the EFI bit, as Ironic sends it;
//!   otherwise `chassis bootdev DEVICE [options=persistent]`. Before that,
//!   the raw command that stops the BMC from forgetting the setting after
//!   60 s, unless `ipmi_disable_boot_timeout` is false.

use crate::interfaces::*;
use crate::DriverError;
use async_trait::async_trait;
use ferric_types::{Node, PowerState};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::net::IpAddr;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use uuid::Uuid;

/// The privilege levels ipmitool's `-L` accepts, as Ironic spells them.
pub const PRIV_LEVELS: &[&str] = &["ADMINISTRATOR", "CALLBACK", "OPERATOR", "USER"];

/// Boot devices the ipmitool management interface can set, with the boot
/// device selector byte of IPMI's "set system boot options" parameter 5.
const BOOT_DEVICE_CODES: &[(BootDevice, u8)] = &[
    (BootDevice::Pxe, 0x04),
    (BootDevice::Disk, 0x08),
    (BootDevice::Cdrom, 0x14),
    (BootDevice::Bios, 0x18),
    (BootDevice::Safe, 0x0c),
];

/// Supermicro boards boot their UEFI disk with selector 0x24 (as in Ironic).
const SUPERMICRO_UEFI_DISK: u8 = 0x24;

/// What `ipmitool -v` prints when the BMC refuses the username, the
/// password or the privilege level (without `-v` it only says "Unable to
/// establish IPMI v2 / RMCP+ session", as it does for a BMC that does not
/// answer): retrying cannot help.
const CREDENTIAL_ERRORS: &[&str] = &[
    "RAKP 2 HMAC is invalid",
    "unauthorized name",
    "invalid role",
    "requested privilege level exceeds limit",
];

/// What it prints when the BMC does not support the cipher suite.
const CIPHER_SUITE_ERRORS: &[&str] = &[
    "invalid authentication algorithm",
    "invalid integrity algorithm",
    "invalid confidentiality algorithm",
    "no matching cipher suite",
    "Unsupported cipher suite ID",
];

/// What it prints when nothing answers at the BMC's address.
const NO_ANSWER_ERRORS: &[&str] = &[
    "Error issuing Get Channel Authentication Capabilities request",
    "Get Auth Capabilities error",
    "No response from remote controller",
];

/// Lines of `ipmitool -v` that are chatter, not errors (its probing for
/// vendor extensions), left out of error messages.
const VERBOSE_CHATTER: &[&str] = &[
    "Loading IANA PEN Registry",
    "Running Get VSO Capabilities",
    "Discovered IPMB address",
    "Get HPM.x Capabilities request failed",
];

/// The driver_info keys this interface reads, with their descriptions, for
/// `GET /v1/drivers/ipmi/properties`.
pub const DRIVER_PROPERTIES: &[(&str, &str)] = &[
    (
        "ipmi_address",
        "IP address or hostname of the node's BMC. Required.",
    ),
    ("ipmi_port", "Remote IPMI RMCP+ port; default 623. Optional."),
    (
        "ipmi_username",
        "Username; default is the NULL user. Optional.",
    ),
    ("ipmi_password", "Password. Optional."),
    (
        "ipmi_priv_level",
        "Privilege level; default ADMINISTRATOR. One of ADMINISTRATOR, CALLBACK, OPERATOR, USER. Optional.",
    ),
    (
        "ipmi_cipher_suite",
        "Number of the cipher suite to use (3: AES-128 with SHA1, 17: AES-128 with SHA256); default 3. Optional.",
    ),
    (
        "ipmi_protocol_version",
        "Version of the IPMI protocol; only \"2.0\" (lanplus) is supported. Optional.",
    ),
    (
        "ipmi_bridging",
        "Bridging type; only \"no\" is supported. Optional.",
    ),
    (
        "ipmi_hex_kg_key",
        "Kg key for IPMI 2.0 authentication, in hexadecimal. Optional.",
    ),
    (
        "ipmi_force_boot_device",
        "Whether Ferric sets the boot device again before each power on, for BMCs that forget it; default false. Optional.",
    ),
    (
        "ipmi_disable_boot_timeout",
        "Whether Ferric sends the raw command that stops the BMC from dropping the boot device after 60 s; default true. Optional.",
    ),
];

/// How the ipmitool interfaces talk to BMCs (Ironic's `[ipmi]` options and
/// the power timeouts of `[conductor]`). Every field has a safe default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpmiOptions {
    /// The ipmitool program: a path, or a name looked up in PATH; default
    /// "ipmitool".
    pub ipmitool: PathBuf,
    /// Minimum time between two commands to the same BMC (Ironic's
    /// `[ipmi]min_command_interval`); default 5 s, as Ironic recommends:
    /// some BMCs crash when asked faster.
    #[serde(with = "ferric_types::seconds")]
    pub min_command_interval: Duration,
    /// A failing command is retried until this much time has passed since
    /// it was first tried (Ironic's `[ipmi]command_retry_timeout`); default
    /// 60 s.
    #[serde(with = "ferric_types::seconds")]
    pub command_retry_timeout: Duration,
    /// One ipmitool run that has not exited after this long is killed
    /// (Ironic's `[ipmi]kill_on_timeout`); default 60 s. Runs are never
    /// given more than what is left of `command_retry_timeout`.
    #[serde(with = "ferric_types::seconds")]
    pub command_timeout: Duration,
    /// How long a power action waits for the BMC to report the new state
    /// when the request names no timeout (Ironic's
    /// `[conductor]power_state_change_timeout`); default 60 s.
    #[serde(with = "ferric_types::seconds")]
    pub power_state_change_timeout: Duration,
    /// The same for a soft power off, which waits for the operating system
    /// to shut down (Ironic's `[conductor]soft_power_off_timeout`); default
    /// 600 s.
    #[serde(with = "ferric_types::seconds")]
    pub soft_power_off_timeout: Duration,
    /// Whether to send the raw command that disables the BMC's 60 s boot
    /// device timeout when a node's `ipmi_disable_boot_timeout` is not set
    /// (Ironic's `[ipmi]disable_boot_timeout`); default true.
    pub disable_boot_timeout: bool,
    /// Boot mode of nodes that ask for none in their capabilities or
    /// instance_info (Ironic's `[deploy]default_boot_mode`); default "uefi".
    pub default_boot_mode: BootMode,
}

impl Default for IpmiOptions {
    fn default() -> Self {
        IpmiOptions {
            ipmitool: PathBuf::from("ipmitool"),
            min_command_interval: Duration::from_secs(5),
            command_retry_timeout: Duration::from_secs(60),
            command_timeout: Duration::from_secs(60),
            power_state_change_timeout: Duration::from_secs(60),
            soft_power_off_timeout: Duration::from_secs(600),
            disable_boot_timeout: true,
            default_boot_mode: BootMode::Uefi,
        }
    }
}

/// Firmware boot mode, which decides how the boot device is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    Bios,
    Uefi,
}

impl BootMode {
    fn parse(value: &str, source: &str) -> Result<BootMode, DriverError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "uefi" => Ok(BootMode::Uefi),
            "bios" => Ok(BootMode::Bios),
            other => Err(DriverError::InvalidParameter(format!(
                "Invalid boot mode \"{other}\" in {source}: expected \"bios\" or \"uefi\""
            ))),
        }
    }

    /// The node's boot mode, looked up as Ironic does: instance_info
    /// capabilities (secure_boot implies UEFI), the deprecated
    /// instance_info `deploy_boot_mode`, the `boot_mode` capability in
    /// properties, driver_internal_info `deploy_boot_mode`, then `default`.
    pub fn of_node(node: &Node, default: BootMode) -> Result<BootMode, DriverError> {
        let instance_caps = instance_capabilities(&node.instance_info)?;
        if instance_caps
            .get("secure_boot")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            return Ok(BootMode::Uefi);
        }
        if let Some(mode) = instance_caps.get("boot_mode") {
            return BootMode::parse(mode, "instance_info/capabilities");
        }
        if let Some(mode) = node
            .instance_info
            .get("deploy_boot_mode")
            .and_then(Value::as_str)
        {
            return BootMode::parse(mode, "instance_info/deploy_boot_mode");
        }
        if let Some(Value::String(caps)) = node.properties.get("capabilities") {
            if let Some(mode) = capability_string(caps).get("boot_mode") {
                return BootMode::parse(mode, "properties/capabilities");
            }
        }
        if let Some(mode) = node
            .driver_internal_info
            .get("deploy_boot_mode")
            .and_then(Value::as_str)
        {
            return BootMode::parse(mode, "driver_internal_info/deploy_boot_mode");
        }
        Ok(default)
    }
}

/// "key:value,key:value", as Ironic writes capabilities in properties;
/// malformed items are skipped, as Ironic does.
fn capability_string(caps: &str) -> HashMap<String, String> {
    caps.split(',')
        .filter_map(|item| {
            let (key, value) = item.split_once(':')?;
            let (key, value) = (key.trim(), value.trim());
            (!key.is_empty() && !value.is_empty() && !value.contains(':'))
                .then(|| (key.to_string(), value.to_string()))
        })
        .collect()
}

/// instance_info `capabilities`: an object, or a string holding a JSON
/// object (Ironic accepts both).
fn instance_capabilities(
    instance_info: &Map<String, Value>,
) -> Result<HashMap<String, String>, DriverError> {
    let parsed;
    let object = match instance_info.get("capabilities") {
        None | Some(Value::Null) => return Ok(HashMap::new()),
        Some(Value::Object(map)) => map,
        Some(Value::String(text)) if text.trim().is_empty() => return Ok(HashMap::new()),
        Some(Value::String(text)) => {
            parsed = serde_json::from_str::<Map<String, Value>>(text).map_err(|_| {
                DriverError::InvalidParameter(
                    "instance_info/capabilities must be a JSON object".to_string(),
                )
            })?;
            &parsed
        }
        Some(_) => {
            return Err(DriverError::InvalidParameter(
                "instance_info/capabilities must be a JSON object".to_string(),
            ))
        }
    };
    Ok(object
        .iter()
        .filter_map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some((k.clone(), text))
        })
        .collect())
}

/// What a node's driver_info says about reaching its BMC, checked.
#[derive(Clone, PartialEq)]
pub struct IpmiDriverInfo {
    pub address: String,
    pub port: u16,
    pub username: Option<String>,
    password: String,
    hex_kg_key: Option<String>,
    pub priv_level: &'static str,
    pub cipher_suite: u8,
    pub force_boot_device: bool,
    /// None: the conductor's default applies.
    pub disable_boot_timeout: Option<bool>,
}

/// Never prints the password or the Kg key.
impl fmt::Debug for IpmiDriverInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpmiDriverInfo")
            .field("address", &self.address)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &"******")
            .field("hex_kg_key", &self.hex_kg_key.as_ref().map(|_| "******"))
            .field("priv_level", &self.priv_level)
            .field("cipher_suite", &self.cipher_suite)
            .field("force_boot_device", &self.force_boot_device)
            .field("disable_boot_timeout", &self.disable_boot_timeout)
            .finish()
    }
}

/// Hexadecimal digits (already checked: even count, all hex) to bytes.
fn decode_hex(hex: &str) -> Vec<u8> {
    hex.as_bytes()
        .chunks(2)
        .filter_map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

fn invalid(message: String) -> DriverError {
    DriverError::InvalidParameter(message)
}

/// A boolean as Ironic's `strutils.bool_from_string` reads it, but strict:
/// anything else is refused instead of being taken as false.
fn flag(info: &Map<String, Value>, key: &str) -> Result<Option<bool>, DriverError> {
    match info.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::Number(n)) if n.as_u64() == Some(1) => Ok(Some(true)),
        Some(Value::Number(n)) if n.as_u64() == Some(0) => Ok(Some(false)),
        Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "1" | "t" | "true" | "on" | "y" | "yes" => Ok(Some(true)),
            "0" | "f" | "false" | "off" | "n" | "no" => Ok(Some(false)),
            _ => Err(invalid(format!("{key} must be a boolean, not \"{s}\""))),
        },
        Some(other) => Err(invalid(format!("{key} must be a boolean, not {other}"))),
    }
}

/// A string field; numbers are accepted as their text (Ironic str()s them).
fn text(info: &Map<String, Value>, key: &str) -> Result<Option<String>, DriverError> {
    match info.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(invalid(format!("{key} must be a string"))),
    }
}

/// A whole number field, given as a number or a string of digits.
fn number(info: &Map<String, Value>, key: &str) -> Result<Option<u64>, DriverError> {
    let bad = |v: &dyn fmt::Display| invalid(format!("{key} must be a whole number, not {v}"));
    match info.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| bad(n)),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| bad(&format!("\"{s}\""))),
        Some(other) => Err(bad(other)),
    }
}

/// An IP address or a hostname of letters, digits, hyphens and dots (no
/// leading hyphen, so it can never pass for an ipmitool option).
fn valid_address(address: &str) -> bool {
    if address.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = address.strip_suffix('.').unwrap_or(address);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

impl IpmiDriverInfo {
    /// Reads and checks the node's driver_info; the messages name the field
    /// and what is allowed, as Ironic's do.
    pub fn from_node(node: &Node) -> Result<IpmiDriverInfo, DriverError> {
        let info = &node.driver_info;
        let address = text(info, "ipmi_address")?
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                invalid(
                    "Missing the following IPMI credentials in node's driver_info: ipmi_address."
                        .to_string(),
                )
            })?;
        if !valid_address(&address) {
            return Err(invalid(format!(
                "Invalid IPMI address \"{address}\" for node {}. Must be a valid IP address or hostname.",
                node.uuid
            )));
        }
        let port = match number(info, "ipmi_port")? {
            None => 623,
            Some(p) if (1..=65535).contains(&p) => p as u16,
            Some(p) => {
                return Err(invalid(format!(
                    "ipmi_port must be a port number between 1 and 65535, not {p}"
                )))
            }
        };
        let username = text(info, "ipmi_username")?.filter(|u| !u.is_empty());
        if username
            .as_deref()
            .is_some_and(|u| u.chars().any(char::is_control) || u.len() > 64)
        {
            return Err(invalid(
                "ipmi_username must be at most 64 characters without control characters"
                    .to_string(),
            ));
        }
        let password = text(info, "ipmi_password")?.unwrap_or_default();
        if password.contains('\0') {
            return Err(invalid(
                "ipmi_password must not contain NUL characters".to_string(),
            ));
        }
        let hex_kg_key = text(info, "ipmi_hex_kg_key")?.filter(|k| !k.is_empty());
        if let Some(key) = &hex_kg_key {
            if key.len() % 2 != 0 {
                return Err(invalid(
                    "Number of ipmi_hex_kg_key characters is not even".to_string(),
                ));
            }
            if !key.chars().all(|c| c.is_ascii_hexdigit()) || key.len() > 40 {
                return Err(invalid(
                    "ipmi_hex_kg_key must be at most 40 hexadecimal digits (20 bytes)".to_string(),
                ));
            }
            // ipmitool reads the key from its environment as a C string:
            // trailing zero bytes are padding anyway, others cannot pass.
            let bytes = decode_hex(key);
            let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
            if bytes[..end].contains(&0) {
                return Err(invalid(
                    "ipmi_hex_kg_key with a zero byte before its last non-zero byte is not supported"
                        .to_string(),
                ));
            }
        }
        let priv_level = match text(info, "ipmi_priv_level")? {
            None => "ADMINISTRATOR",
            Some(level) => PRIV_LEVELS
                .iter()
                .copied()
                .find(|l| *l == level)
                .ok_or_else(|| {
                    invalid(format!(
                        "Invalid privilege level value: {level}, the valid value can be one of {}",
                        PRIV_LEVELS.join(", ")
                    ))
                })?,
        };
        match text(info, "ipmi_protocol_version")?.as_deref() {
            None | Some("2.0") | Some("2") => {}
            Some(other) => {
                return Err(invalid(format!(
                    "Invalid IPMI protocol version value {other}: Ferric supports \"2.0\" (lanplus) only"
                )))
            }
        }
        match text(info, "ipmi_bridging")?.as_deref() {
            None | Some("no") => {}
            Some(other) => {
                return Err(invalid(format!(
                    "Invalid value for ipmi_bridging: {other}; Ferric supports \"no\" only"
                )))
            }
        }
        let cipher_suite = match number(info, "ipmi_cipher_suite") {
            Ok(None) => 3,
            Ok(Some(n)) if n <= 255 => n as u8,
            _ => {
                return Err(invalid(format!(
                    "Invalid cipher suite {}, expected a number (3 or 17)",
                    info.get("ipmi_cipher_suite")
                        .cloned()
                        .unwrap_or(Value::Null)
                )))
            }
        };
        Ok(IpmiDriverInfo {
            address,
            port,
            username,
            password,
            hex_kg_key,
            priv_level,
            cipher_suite,
            force_boot_device: flag(info, "ipmi_force_boot_device")?.unwrap_or(false),
            disable_boot_timeout: flag(info, "ipmi_disable_boot_timeout")?,
        })
    }

    /// The BMC as messages name it.
    pub fn bmc(&self) -> String {
        if self.address.contains(':') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }

    /// ipmitool's arguments for `command`, without the program name. The
    /// password and the Kg key are not among them: [`Self::secret_env`]
    /// gives them to the child's environment.
    pub fn argv(&self, options: &IpmiOptions, command: &[&str]) -> Vec<OsString> {
        // ipmitool's own retry: one retransmission, after at least
        // min_command_interval (whole seconds, at least 1), as Ironic does
        // when it retries itself.
        let wait = options.min_command_interval.as_secs_f64().ceil().max(1.0) as u64;
        let mut args: Vec<String> = vec![
            "-I".into(),
            "lanplus".into(),
            "-H".into(),
            self.address.clone(),
            "-p".into(),
            self.port.to_string(),
            "-L".into(),
            self.priv_level.into(),
            "-C".into(),
            self.cipher_suite.to_string(),
            "-R".into(),
            "1".into(),
            "-N".into(),
            wait.to_string(),
        ];
        if let Some(user) = &self.username {
            args.push("-U".into());
            args.push(user.clone());
        }
        if self.hex_kg_key.is_some() {
            args.push("-K".into());
        }
        args.push("-E".into());
        // Verbose, for the reason of a failure: without it ipmitool says
        // the same for a wrong password and for a BMC that does not answer.
        // The chatter goes to stderr; stdout stays as parsed below.
        args.push("-v".into());
        args.extend(command.iter().map(|s| s.to_string()));
        args.into_iter().map(OsString::from).collect()
    }

    /// The environment that carries the secrets to ipmitool: `-E` reads
    /// IPMITOOL_PASSWORD (newer ipmitool) or IPMI_PASSWORD, `-K` reads
    /// IPMI_KGKEY (the key's bytes, not hex). An empty password is the
    /// NULL password.
    pub fn secret_env(&self) -> Vec<(&'static str, OsString)> {
        let mut env = vec![
            ("IPMITOOL_PASSWORD", OsString::from(&self.password)),
            ("IPMI_PASSWORD", OsString::from(&self.password)),
        ];
        if let Some(key) = &self.hex_kg_key {
            let mut bytes = decode_hex(key);
            while bytes.last() == Some(&0) {
                bytes.pop();
            }
            env.push(("IPMI_KGKEY", OsString::from_vec(bytes)));
        }
        env
    }

    /// `text` with the secrets replaced, for messages and logs.
    fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in [Some(&self.password), self.hex_kg_key.as_ref()]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
        {
            out = out.replace(secret.as_str(), "******");
        }
        out
    }
}

/// How one ipmitool run ended badly.
enum RunFailure {
    /// Exited non-zero; stderr (scrubbed, on one line).
    Failed(String),
    /// Still running after its time; killed.
    Hung(Duration),
    /// Could not be started at all.
    NotStarted(String),
}

/// Why a run failed, from ipmitool's stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    Credentials,
    CipherSuite,
    NoAnswer,
    Other,
}

impl FailureKind {
    fn of(stderr: &str) -> FailureKind {
        let has = |list: &[&str]| list.iter().any(|e| stderr.contains(e));
        if has(CREDENTIAL_ERRORS) {
            FailureKind::Credentials
        } else if has(CIPHER_SUITE_ERRORS) {
            FailureKind::CipherSuite
        } else if has(NO_ANSWER_ERRORS) {
            FailureKind::NoAnswer
        } else {
            FailureKind::Other
        }
    }
}

/// ipmitool's stderr without the chatter of `-v`: the error lines.
fn error_lines(stderr: &str) -> String {
    let mut kept = Vec::new();
    let mut after_probe = false;
    for line in stderr.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let probe = line.starts_with("Running Get VSO Capabilities");
        // The probe's answer from BMCs without the extension.
        let probe_answer = after_probe && line.starts_with("Invalid completion code received");
        after_probe = probe;
        if !probe_answer && !VERBOSE_CHATTER.iter().any(|c| line.starts_with(c)) {
            kept.push(line);
        }
    }
    one_line(&kept.join("\n"))
}

/// Per BMC: the lock that serializes commands, and when the last one ended.
type BmcSlot = Arc<tokio::sync::Mutex<Option<Instant>>>;

/// Runs ipmitool for the ipmitool interfaces, spacing and retrying the
/// commands to each BMC. One per registry, shared by power and management.
pub struct IpmiTool {
    options: IpmiOptions,
    bmcs: Mutex<HashMap<String, BmcSlot>>,
    /// `ipmi_force_boot_device` nodes: the persistent device to set again
    /// before each power on, and whether the next boot uses a one-time
    /// device instead (Ironic keeps both in driver_internal_info).
    forced: Mutex<HashMap<Uuid, ForcedBoot>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct ForcedBoot {
    persistent: Option<BootDevice>,
    next_boot_one_time: bool,
}

impl IpmiTool {
    pub fn new(options: IpmiOptions) -> IpmiTool {
        IpmiTool {
            options,
            bmcs: Mutex::new(HashMap::new()),
            forced: Mutex::new(HashMap::new()),
        }
    }

    pub fn options(&self) -> &IpmiOptions {
        &self.options
    }

    fn slot(&self, info: &IpmiDriverInfo) -> BmcSlot {
        self.bmcs
            .lock()
            .unwrap()
            .entry(info.bmc())
            .or_default()
            .clone()
    }

    /// Runs `ipmitool ... command` against the node's BMC, retrying
    /// failures until `command_retry_timeout`; returns stdout.
    pub async fn run(
        &self,
        node: &Node,
        info: &IpmiDriverInfo,
        command: &[&str],
    ) -> Result<String, DriverError> {
        let started = Instant::now();
        let budget = self.options.command_retry_timeout;
        let what = command.join(" ");
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let left = budget.saturating_sub(started.elapsed());
            let run_timeout = self
                .options
                .command_timeout
                .min(left.max(Duration::from_secs(1)));
            let failure = match self.run_once(info, command, run_timeout).await {
                Ok(stdout) => return Ok(stdout),
                Err(failure) => failure,
            };
            let kind = match &failure {
                RunFailure::Failed(stderr) => FailureKind::of(stderr),
                RunFailure::Hung(_) | RunFailure::NotStarted(_) => FailureKind::Other,
            };
            let retryable = !matches!(failure, RunFailure::NotStarted(_))
                && matches!(kind, FailureKind::NoAnswer | FailureKind::Other);
            let backoff = self
                .options
                .min_command_interval
                .max(Duration::from_millis(100))
                .saturating_mul(1 << (attempt - 1).min(6))
                .min(Duration::from_secs(10));
            let left = budget.saturating_sub(started.elapsed());
            // A retry needs time for a run of its own (at least a second).
            if retryable && left >= backoff + Duration::from_secs(1) {
                tracing::warn!(
                    node = %node.uuid,
                    bmc = %info.bmc(),
                    command = %what,
                    attempt,
                    error = %describe(&failure),
                    "ipmitool failed; retrying"
                );
                tokio::time::sleep(backoff).await;
                continue;
            }
            return Err(match failure {
                RunFailure::Hung(after) => DriverError::Timeout {
                    operation: format!(
                        "IPMI command \"{what}\" to BMC {} of node {} (ipmitool killed)",
                        info.bmc(),
                        node.uuid
                    ),
                    timeout: after,
                },
                RunFailure::Failed(stderr) if kind == FailureKind::Credentials => {
                    DriverError::Failed(format!(
                        "IPMI command \"{what}\" to BMC {} of node {} failed: the BMC refused the \
                         credentials (check ipmi_username, ipmi_password and ipmi_priv_level): \
                         {stderr}",
                        info.bmc(),
                        node.uuid
                    ))
                }
                RunFailure::Failed(stderr) if kind == FailureKind::CipherSuite => {
                    DriverError::Failed(format!(
                        "IPMI command \"{what}\" to BMC {} of node {} failed: the BMC does not \
                         support cipher suite {} (check ipmi_cipher_suite): {stderr}",
                        info.bmc(),
                        node.uuid,
                        info.cipher_suite
                    ))
                }
                RunFailure::Failed(stderr) if kind == FailureKind::NoAnswer => {
                    DriverError::Timeout {
                        operation: format!(
                            "IPMI command \"{what}\" to BMC {} of node {} (no answer to \
                             {attempt} attempt{}: {stderr})",
                            info.bmc(),
                            node.uuid,
                            if attempt == 1 { "" } else { "s" },
                        ),
                        timeout: budget,
                    }
                }
                RunFailure::Failed(stderr) => DriverError::Failed(format!(
                    "IPMI command \"{what}\" to BMC {} of node {} failed after {attempt} attempt{} \
                     in {:.0} s: {stderr}",
                    info.bmc(),
                    node.uuid,
                    if attempt == 1 { "" } else { "s" },
                    started.elapsed().as_secs_f64()
                )),
                RunFailure::NotStarted(why) => DriverError::Failed(format!(
                    "could not run {} for node {}: {why} (is the ipmitool package installed?)",
                    self.options.ipmitool.display(),
                    node.uuid
                )),
            });
        }
    }

    /// One ipmitool run, under the BMC's lock and after its minimum interval.
    async fn run_once(
        &self,
        info: &IpmiDriverInfo,
        command: &[&str],
        timeout: Duration,
    ) -> Result<String, RunFailure> {
        let slot = self.slot(info);
        let mut last = slot.lock().await;
        if let Some(at) = *last {
            tokio::time::sleep_until(at + self.options.min_command_interval).await;
        }
        let result = self.spawn_and_wait(info, command, timeout).await;
        *last = Some(Instant::now());
        result
    }

    async fn spawn_and_wait(
        &self,
        info: &IpmiDriverInfo,
        command: &[&str],
        timeout: Duration,
    ) -> Result<String, RunFailure> {
        let mut cmd = tokio::process::Command::new(&self.options.ipmitool);
        cmd.args(info.argv(&self.options, command))
            .env_remove("IPMITOOL_PASSWORD")
            .env_remove("IPMI_PASSWORD")
            .env_remove("IPMI_KGKEY")
            .envs(info.secret_env())
            // ipmitool's messages in English, whatever the conductor's locale.
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| RunFailure::NotStarted(e.to_string()))?;
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let finished = tokio::time::timeout(timeout, async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let (_, _, status) = tokio::join!(
                stdout.read_to_end(&mut out),
                stderr.read_to_end(&mut err),
                child.wait()
            );
            (out, err, status)
        })
        .await;
        let (out, err, status) = match finished {
            Ok(done) => done,
            Err(_) => {
                // kill() also reaps it: no zombie, no BMC session left behind.
                let _ = child.kill().await;
                return Err(RunFailure::Hung(timeout));
            }
        };
        let stderr_text = error_lines(&info.scrub(&String::from_utf8_lossy(&err)));
        match status {
            Ok(status) if status.success() => Ok(String::from_utf8_lossy(&out).into_owned()),
            Ok(status) => Err(RunFailure::Failed(if stderr_text.is_empty() {
                format!("ipmitool exited with {status}")
            } else {
                stderr_text
            })),
            Err(e) => Err(RunFailure::Failed(format!("waiting for ipmitool: {e}"))),
        }
    }

    /// `power status`: on or off.
    pub async fn power_status(
        &self,
        node: &Node,
        info: &IpmiDriverInfo,
    ) -> Result<PowerState, DriverError> {
        let out = self.run(node, info, &["power", "status"]).await?;
        parse_power_status(&out).ok_or_else(|| {
            DriverError::Failed(format!(
                "unexpected answer of BMC {} of node {} to \"power status\": {}",
                info.bmc(),
                node.uuid,
                one_line(&info.scrub(&out))
            ))
        })
    }

    /// Sends `power <action>`, then polls until the BMC reports `target`.
    async fn power_action(
        &self,
        node: &Node,
        info: &IpmiDriverInfo,
        action: &str,
        target: PowerState,
        timeout: Duration,
    ) -> Result<(), DriverError> {
        tracing::info!(node = %node.uuid, bmc = %info.bmc(), action, "IPMI power action");
        self.run(node, info, &["power", action]).await?;
        self.wait_for_power_state(node, info, target, timeout).await
    }

    async fn wait_for_power_state(
        &self,
        node: &Node,
        info: &IpmiDriverInfo,
        target: PowerState,
        timeout: Duration,
    ) -> Result<(), DriverError> {
        let deadline = Instant::now() + timeout;
        let poll = self
            .options
            .min_command_interval
            .max(Duration::from_secs(1));
        loop {
            let state = self.power_status(node, info).await?;
            if state == target {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(DriverError::Timeout {
                    operation: format!(
                        "Node {} (BMC {}) reaching {target} (still {state})",
                        node.uuid,
                        info.bmc()
                    ),
                    timeout,
                });
            }
            tokio::time::sleep(poll.min(deadline - now)).await;
        }
    }

    /// Before a power on: for `ipmi_force_boot_device` nodes, sets the
    /// persistent boot device again, unless a one-time device was set for
    /// this boot (Ironic's ensure_next_boot_device).
    async fn ensure_next_boot_device(
        &self,
        node: &Node,
        info: &IpmiDriverInfo,
    ) -> Result<(), DriverError> {
        if !info.force_boot_device {
            return Ok(());
        }
        let device = {
            let mut forced = self.forced.lock().unwrap();
            let entry = forced.entry(node.uuid).or_default();
            if entry.next_boot_one_time {
                entry.next_boot_one_time = false;
                None
            } else {
                entry.persistent
            }
        };
        match device {
            Some(device) => self.send_boot_device(node, info, device, false).await,
            None => Ok(()),
        }
    }

    /// Sets the boot device on the BMC (no forced-boot bookkeeping).
    async fn send_boot_device(
        &self,
        node: &Node,
        info: &IpmiDriverInfo,
        device: BootDevice,
        persistent: bool,
    ) -> Result<(), DriverError> {
        let code = boot_device_code(device).ok_or_else(|| {
            invalid(format!(
                "Invalid boot device {device} specified, supported are: {}",
                supported_names()
            ))
        })?;
        let disable_timeout = info
            .disable_boot_timeout
            .unwrap_or(self.options.disable_boot_timeout);
        if disable_timeout {
            // Parameter 3, "boot flag valid bit clearing": bit 3 keeps the
            // BMC from dropping the boot flags 60 s after they were set.
            self.run(node, info, &["raw", "0x00", "0x08", "0x03", "0x08"])
                .await?;
        }
        match BootMode::of_node(node, self.options.default_boot_mode)? {
            BootMode::Uefi => {
                let code = if device == BootDevice::Disk && is_supermicro(node) {
                    SUPERMICRO_UEFI_DISK
                } else {
                    code
                };
                // Parameter 5, boot flags: valid + EFI, persistent or not.
                let flags = if persistent { "0xe0" } else { "0xa0" };
                let code = format!("{code:#04x}");
                self.run(
                    node,
                    info,
                    &[
                        "raw",
                        "0x00",
                        "0x08",
                        "0x05",
                        flags,
                        code.as_str(),
                        "0x00",
                        "0x00",
                        "0x00",
                    ],
                )
                .await?;
            }
            BootMode::Bios => {
                let name = device.as_str();
                let mut command = vec!["chassis", "bootdev", name];
                if persistent {
                    command.push("options=persistent");
                }
                self.run(node, info, &command).await?;
            }
        }
        Ok(())
    }
}

fn is_supermicro(node: &Node) -> bool {
    node.properties
        .get("vendor")
        .and_then(Value::as_str)
        .is_some_and(|v| v.eq_ignore_ascii_case("supermicro"))
}

fn boot_device_code(device: BootDevice) -> Option<u8> {
    BOOT_DEVICE_CODES
        .iter()
        .find(|(d, _)| *d == device)
        .map(|(_, code)| *code)
}

fn supported_names() -> String {
    BOOT_DEVICE_CODES
        .iter()
        .map(|(d, _)| d.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe(failure: &RunFailure) -> String {
    match failure {
        RunFailure::Failed(stderr) => stderr.clone(),
        RunFailure::Hung(after) => format!("no answer within {after:?}; killed"),
        RunFailure::NotStarted(why) => why.clone(),
    }
}

/// Output on one line, bounded: messages end up in `last_error`.
fn one_line(text: &str) -> String {
    let joined = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if joined.chars().count() > 1000 {
        let tail: String = joined
            .chars()
            .rev()
            .take(1000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("...{tail}")
    } else {
        joined
    }
}

/// ipmitool's `power status` answer.
pub fn parse_power_status(stdout: &str) -> Option<PowerState> {
    stdout.lines().find_map(|line| match line.trim() {
        "Chassis Power is on" => Some(PowerState::On),
        "Chassis Power is off" => Some(PowerState::Off),
        _ => None,
    })
}

/// ipmitool's `chassis bootparam get 5` answer, read from its
/// "Boot parameter data" bytes (the boot flags of the IPMI specification)
/// rather than from its prose, which differs between ipmitool versions.
pub fn parse_boot_flags(stdout: &str, supermicro: bool) -> Option<BootDeviceInfo> {
    let hex = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Boot parameter data:"))?
        .trim();
    if hex.len() < 4 || !hex.is_ascii() {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok();
    let (flags, selector) = (byte(0)?, byte(1)?);
    let device = match selector & 0x3c {
        0x04 => Some(BootDevice::Pxe),
        0x08 => Some(BootDevice::Disk),
        0x0c => Some(BootDevice::Safe),
        0x14 => Some(BootDevice::Cdrom),
        0x18 => Some(BootDevice::Bios),
        SUPERMICRO_UEFI_DISK if supermicro => Some(BootDevice::Disk),
        _ => None,
    };
    Some(BootDeviceInfo {
        boot_device: device,
        persistent: Some(flags & 0x40 != 0),
    })
}

/// The `ipmitool` power interface.
pub struct IpmiPower {
    tool: Arc<IpmiTool>,
}

impl IpmiPower {
    pub fn new(tool: Arc<IpmiTool>) -> IpmiPower {
        IpmiPower { tool }
    }
}

#[async_trait]
impl PowerInterface for IpmiPower {
    fn validate(&self, node: &Node) -> Result<(), DriverError> {
        // As in Ironic, validation does not talk to the BMC: it is called
        // often and BMCs are fragile.
        IpmiDriverInfo::from_node(node).map(|_| ())
    }

    async fn get_power_state(&self, node: &Node) -> Result<PowerState, DriverError> {
        let info = IpmiDriverInfo::from_node(node)?;
        self.tool.power_status(node, &info).await
    }

    async fn set_power_state(
        &self,
        node: &Node,
        target: PowerState,
        timeout: Option<Duration>,
    ) -> Result<(), DriverError> {
        let info = IpmiDriverInfo::from_node(node)?;
        let options = self.tool.options();
        let timeout_or = |default: Duration| timeout.unwrap_or(default);
        match target {
            PowerState::On => {
                self.tool.ensure_next_boot_device(node, &info).await?;
                self.tool
                    .power_action(
                        node,
                        &info,
                        "on",
                        PowerState::On,
                        timeout_or(options.power_state_change_timeout),
                    )
                    .await
            }
            PowerState::Off => {
                self.tool
                    .power_action(
                        node,
                        &info,
                        "off",
                        PowerState::Off,
                        timeout_or(options.power_state_change_timeout),
                    )
                    .await
            }
            PowerState::SoftPowerOff => {
                self.tool
                    .power_action(
                        node,
                        &info,
                        "soft",
                        PowerState::Off,
                        timeout_or(options.soft_power_off_timeout),
                    )
                    .await
            }
            other => Err(invalid(format!(
                "set_power_state called with invalid power state {other}"
            ))),
        }
    }

    async fn reboot(
        &self,
        node: &Node,
        soft: bool,
        timeout: Option<Duration>,
    ) -> Result<(), DriverError> {
        let info = IpmiDriverInfo::from_node(node)?;
        let options = self.tool.options();
        let change_timeout = timeout.unwrap_or(options.power_state_change_timeout);
        if soft {
            self.tool
                .power_action(
                    node,
                    &info,
                    "soft",
                    PowerState::Off,
                    timeout.unwrap_or(options.soft_power_off_timeout),
                )
                .await?;
        } else if node.disable_power_off {
            // The node must never be off: a reset instead of off and on.
            self.tool.ensure_next_boot_device(node, &info).await?;
            return self
                .tool
                .power_action(node, &info, "reset", PowerState::On, change_timeout)
                .await;
        } else if self.tool.power_status(node, &info).await? != PowerState::Off {
            // Some BMCs refuse "power off" for a node that is off already.
            self.tool
                .power_action(node, &info, "off", PowerState::Off, change_timeout)
                .await?;
        }
        self.tool.ensure_next_boot_device(node, &info).await?;
        self.tool
            .power_action(node, &info, "on", PowerState::On, change_timeout)
            .await
    }

    fn supports_soft_power(&self) -> bool {
        true
    }
}

/// The `ipmitool` management interface.
pub struct IpmiManagement {
    tool: Arc<IpmiTool>,
}

impl IpmiManagement {
    pub fn new(tool: Arc<IpmiTool>) -> IpmiManagement {
        IpmiManagement { tool }
    }
}

#[async_trait]
impl ManagementInterface for IpmiManagement {
    fn validate(&self, node: &Node) -> Result<(), DriverError> {
        IpmiDriverInfo::from_node(node)?;
        BootMode::of_node(node, self.tool.options().default_boot_mode).map(|_| ())
    }

    fn supported_boot_devices(&self, _node: &Node) -> Vec<BootDevice> {
        BOOT_DEVICE_CODES.iter().map(|(d, _)| *d).collect()
    }

    async fn get_boot_device(&self, node: &Node) -> Result<BootDeviceInfo, DriverError> {
        let info = IpmiDriverInfo::from_node(node)?;
        if info.force_boot_device {
            let forced = self.tool.forced.lock().unwrap().get(&node.uuid).copied();
            if let Some(ForcedBoot {
                persistent: Some(device),
                next_boot_one_time: false,
            }) = forced
            {
                return Ok(BootDeviceInfo {
                    boot_device: Some(device),
                    persistent: Some(true),
                });
            }
        }
        let out = self
            .tool
            .run(node, &info, &["chassis", "bootparam", "get", "5"])
            .await?;
        parse_boot_flags(&out, is_supermicro(node)).ok_or_else(|| {
            DriverError::Failed(format!(
                "unexpected answer of BMC {} of node {} to \"chassis bootparam get 5\": {}",
                info.bmc(),
                node.uuid,
                one_line(&info.scrub(&out))
            ))
        })
    }

    async fn set_boot_device(
        &self,
        node: &Node,
        device: BootDevice,
        persistent: bool,
    ) -> Result<(), DriverError> {
        if boot_device_code(device).is_none() {
            return Err(invalid(format!(
                "Invalid boot device {device} specified, supported are: {}",
                supported_names()
            )));
        }
        let info = IpmiDriverInfo::from_node(node)?;
        let mut persistent = persistent;
        if info.force_boot_device {
            // Ferric sets the device again before every power on, so the
            // BMC is only ever asked for a one-time setting.
            let mut forced = self.tool.forced.lock().unwrap();
            let entry = forced.entry(node.uuid).or_default();
            if persistent {
                entry.persistent = Some(device);
                entry.next_boot_one_time = false;
            } else {
                entry.next_boot_one_time = true;
            }
            persistent = false;
        }
        self.tool
            .send_boot_device(node, &info, device, persistent)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferric_types::ProvisionState;
    use serde_json::json;

    fn node(driver_info: Value) -> Node {
        let mut node = Node::new(Uuid::new_v4(), "ipmi", ProvisionState::Enroll);
        node.driver_info = driver_info.as_object().unwrap().clone();
        node
    }

    fn error_of(driver_info: Value) -> String {
        IpmiDriverInfo::from_node(&node(driver_info))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn driver_info_defaults() {
        let info = IpmiDriverInfo::from_node(&node(json!({"ipmi_address": "192.0.2.7"}))).unwrap();
        assert_eq!(info.port, 623);
        assert_eq!(info.priv_level, "ADMINISTRATOR");
        assert_eq!(info.cipher_suite, 3);
        assert_eq!(info.username, None);
        assert!(!info.force_boot_device);
        assert_eq!(info.disable_boot_timeout, None);
        let info = IpmiDriverInfo::from_node(&node(json!({
            "ipmi_address": "bmc-7.example.net", "ipmi_port": "6230", "ipmi_cipher_suite": 17,
            "ipmi_priv_level": "OPERATOR", "ipmi_protocol_version": "2.0", "ipmi_bridging": "no",
            "ipmi_force_boot_device": "true", "ipmi_disable_boot_timeout": false,
        })))
        .unwrap();
        assert_eq!(
            (info.port, info.cipher_suite, info.priv_level),
            (6230, 17, "OPERATOR")
        );
        assert!(info.force_boot_device);
        assert_eq!(info.disable_boot_timeout, Some(false));
    }

    #[test]
    fn driver_info_refusals_say_what_is_wrong() {
        for (driver_info, expected) in [
            (
                json!({}),
                "Missing the following IPMI credentials in node's driver_info: ipmi_address",
            ),
            (json!({"ipmi_address": ""}), "ipmi_address"),
            (
                json!({"ipmi_address": "-oProxyCommand=x"}),
                "Invalid IPMI address",
            ),
            (json!({"ipmi_address": "a b"}), "Invalid IPMI address"),
            (
                json!({"ipmi_address": "10.0.0.1", "ipmi_port": 70000}),
                "ipmi_port must be a port number",
            ),
            (
                json!({"ipmi_address": "10.0.0.1", "ipmi_port": "x"}),
                "ipmi_port must be a whole number",
            ),
            (
                json!({"ipmi_address": "10.0.0.1", "ipmi_priv_level": "root"}),
                "Invalid privilege level value: root",
            ),
            (
                json!({"ipmi_address": "10.0.0.1", "ipmi_protocol_version": "1.5"}),
                "protocol version value 1.5",
            ),
            (
                json!({"ipmi_address": "10.0.0.1", "ipmi_bridging": "dual"}),
                "ipmi_bridging: dual",
            ),
            (
                json!({"ipmi_address": "10.0.0.1", "ipmi_cipher_suite": "aes"}),
                "Invalid cipher suite",
            ),
            (
                json!({"ipmi_address": "10.0.0.1", "ipmi_force_boot_device": "perhaps"}),
                "ipmi_force_boot_device must be a boolean",
            ),
            (
                json!({"ipmi_address": "10.0.0.1", "ipmi_hex_kg_key": "abc"}),
                "not even",
            ),
            (
                json!({"ipmi_address": "10.0.0.1", "ipmi_username": ["x"]}),
                "ipmi_username must be a string",
            ),
        ] {
            let err = error_of(driver_info.clone());
            assert!(err.contains(expected), "{driver_info}: {err}");
        }
    }

    #[test]
    fn the_password_is_in_no_argument_and_in_no_debug_output() {
        let info = IpmiDriverInfo::from_node(&node(json!({
            "ipmi_address": "::1", "ipmi_username": "admin", "ipmi_password": "pa55-Secret",
            "ipmi_hex_kg_key": "0badc0de",
        })))
        .unwrap();
        let argv = info.argv(&IpmiOptions::default(), &["power", "status"]);
        let joined = argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(
            joined,
            "-I lanplus -H ::1 -p 623 -L ADMINISTRATOR -C 3 -R 1 -N 5 -U admin -K -E -v power status"
        );
        assert!(!joined.contains("pa55-Secret") && !joined.contains("0badc0de"));
        assert!(!argv
            .iter()
            .any(|a| a == "-P" || a == "-f" || a == "-k" || a == "-y"));
        let debug = format!("{info:?}");
        assert!(
            !debug.contains("pa55-Secret") && !debug.contains("0badc0de"),
            "{debug}"
        );
        assert_eq!(info.bmc(), "[::1]:623");
        assert_eq!(
            info.scrub("bad pa55-Secret here"),
            "bad ****** here".to_string()
        );
    }

    #[test]
    fn the_kg_key_goes_to_the_environment_as_bytes() {
        let with_key = |key: &str| {
            IpmiDriverInfo::from_node(&node(
                json!({"ipmi_address": "10.0.0.1", "ipmi_hex_kg_key": key}),
            ))
        };
        let info = with_key("0badc0de00").unwrap();
        let env = info.secret_env();
        let kg = env.iter().find(|(k, _)| *k == "IPMI_KGKEY").unwrap();
        assert_eq!(kg.1.as_encoded_bytes(), [0x0b, 0xad, 0xc0, 0xde]);
        assert!(with_key("00ff")
            .unwrap_err()
            .to_string()
            .contains("zero byte"));
        assert!(with_key("zz")
            .unwrap_err()
            .to_string()
            .contains("hexadecimal"));
        let no_key = IpmiDriverInfo::from_node(&node(json!({"ipmi_address": "10.0.0.1"}))).unwrap();
        assert!(!no_key
            .argv(&IpmiOptions::default(), &["x"])
            .contains(&"-K".into()));
    }

    #[test]
    fn boot_mode_is_looked_up_as_ironic_does() {
        let mut n = node(json!({"ipmi_address": "10.0.0.1"}));
        assert_eq!(
            BootMode::of_node(&n, BootMode::Uefi).unwrap(),
            BootMode::Uefi
        );
        assert_eq!(
            BootMode::of_node(&n, BootMode::Bios).unwrap(),
            BootMode::Bios
        );
        n.properties
            .insert("capabilities".into(), json!("boot_mode:bios,foo:bar"));
        assert_eq!(
            BootMode::of_node(&n, BootMode::Uefi).unwrap(),
            BootMode::Bios
        );
        n.instance_info
            .insert("deploy_boot_mode".into(), json!("uefi"));
        assert_eq!(
            BootMode::of_node(&n, BootMode::Bios).unwrap(),
            BootMode::Uefi
        );
        n.instance_info
            .insert("capabilities".into(), json!("{\"boot_mode\": \"bios\"}"));
        assert_eq!(
            BootMode::of_node(&n, BootMode::Uefi).unwrap(),
            BootMode::Bios
        );
        n.instance_info.insert(
            "capabilities".into(),
            json!({"secure_boot": "true", "boot_mode": "bios"}),
        );
        assert_eq!(
            BootMode::of_node(&n, BootMode::Bios).unwrap(),
            BootMode::Uefi
        );
        n.instance_info
            .insert("capabilities".into(), json!({"boot_mode": "legacy"}));
        assert!(BootMode::of_node(&n, BootMode::Bios)
            .unwrap_err()
            .to_string()
            .contains("legacy"));
    }

    #[test]
    fn power_status_and_boot_flags_are_parsed() {
        assert_eq!(
            parse_power_status("Chassis Power is on\n"),
            Some(PowerState::On)
        );
        assert_eq!(
            parse_power_status("Chassis Power is off\n"),
            Some(PowerState::Off)
        );
        assert_eq!(parse_power_status("Chassis Power Control: Up/On\n"), None);
        let out = "Boot parameter version: 1\nBoot parameter 5 is valid/unlocked\n\
                   Boot parameter data: c004000000\n Boot Flags :\n";
        assert_eq!(
            parse_boot_flags(out, false),
            Some(BootDeviceInfo {
                boot_device: Some(BootDevice::Pxe),
                persistent: Some(true)
            })
        );
        let once_uefi_disk = "Boot parameter data: a008000000\n";
        assert_eq!(
            parse_boot_flags(once_uefi_disk, false),
            Some(BootDeviceInfo {
                boot_device: Some(BootDevice::Disk),
                persistent: Some(false)
            })
        );
        assert_eq!(
            parse_boot_flags("Boot parameter data: e024000000\n", true)
                .unwrap()
                .boot_device,
            Some(BootDevice::Disk)
        );
        assert_eq!(
            parse_boot_flags("Boot parameter data: 0000000000\n", false)
                .unwrap()
                .boot_device,
            None
        );
        assert_eq!(parse_boot_flags("garbage", false), None);
    }

    #[test]
    fn failures_are_told_apart_and_chatter_left_out() {
        let wrong_password = "Loading IANA PEN Registry...\n> RAKP 2 HMAC is invalid\n\
                              Error: Unable to establish IPMI v2 / RMCP+ session\n";
        assert_eq!(FailureKind::of(wrong_password), FailureKind::Credentials);
        assert_eq!(
            error_lines(wrong_password),
            "> RAKP 2 HMAC is invalid; Error: Unable to establish IPMI v2 / RMCP+ session"
        );
        let silent = "Loading IANA PEN Registry...\nGet Auth Capabilities error\n\
                      Error issuing Get Channel Authentication Capabilities request\n\
                      Error: Unable to establish IPMI v2 / RMCP+ session\n";
        assert_eq!(FailureKind::of(silent), FailureKind::NoAnswer);
        let cipher = "Error in open session response message : invalid authentication algorithm\n";
        assert_eq!(FailureKind::of(cipher), FailureKind::CipherSuite);
        let raw = "Running Get VSO Capabilities my_addr 0x20, transit 0, target 0x20\n\
                   Invalid completion code received: Invalid command\n\
                   Discovered IPMB address 0x0\n\
                   Unable to send RAW command (channel=0x0 netfn=0x0 lun=0x0 cmd=0x8 rsp=0xc1): \
                   Invalid command\n";
        assert_eq!(FailureKind::of(raw), FailureKind::Other);
        assert_eq!(
            error_lines(raw),
            "Unable to send RAW command (channel=0x0 netfn=0x0 lun=0x0 cmd=0x8 rsp=0xc1): Invalid command"
        );
    }

    #[test]
    fn options_parse_strictly() {
        let options: IpmiOptions = serde_json::from_value(
            json!({"min_command_interval": 0.2, "command_retry_timeout": 3}),
        )
        .unwrap();
        assert_eq!(options.min_command_interval, Duration::from_millis(200));
        assert_eq!(options.default_boot_mode, BootMode::Uefi);
        assert!(serde_json::from_value::<IpmiOptions>(json!({"min_interval": 1})).is_err());
    }
}
