//! The `redfish` hardware type's power and management interfaces and its
//! virtual media operations, over Ferric's own small Redfish client.
//!
//! How Ironic does it (through sushy), and what Ferric keeps:
//! - driver_info keys are Ironic's: `redfish_address`, `redfish_system_id`,
//!   `redfish_username`, `redfish_password`, `redfish_auth_type`,
//!   `redfish_verify_ca`. An address without a scheme is `https://`; a path
//!   in it is the service root (default `/redfish/v1/`). Without
//!   `redfish_system_id` the BMC must manage exactly one ComputerSystem.
//! - TLS certificates are verified against the system's CAs by default;
//!   `redfish_verify_ca` may name a CA bundle (a file, or a directory of
//!   them), which is then the only thing trusted, or be false.
//! - Every request has a timeout. A BMC that cannot be reached or answers
//!   with a server error (5xx) is asked again, `connection_attempts` times
//!   in all (Ironic's 5, 4 s apart); a refusal (4xx) is final. Credentials
//!   the BMC refuses are said so, naming the BMC and the user, never the
//!   password. Redirects are followed only to the same BMC, so credentials
//!   and session tokens go nowhere else.
//! - Authentication `auto` (the default) logs in through the
//!   SessionService and falls back to basic authentication when the BMC
//!   has no sessions; `session` and `basic` insist on one. A session is
//!   kept per BMC and user, and a request answered 401 logs in again once
//!   (sessions expire on the BMC).
//! - Power: ComputerSystem.Reset with the ResetType the system allows
//!   (`On` or `ForceOn`, `ForceOff`, `GracefulShutdown`,
//!   `GracefulRestart`), then the PowerState is polled until it reaches the
//!   target. Reboot is Ironic's: off (unless off already), then on; a soft
//!   reboot is `GracefulRestart`; nodes that must never be off get
//!   `ForceRestart`.
//! - Boot device: a PATCH of the system's `Boot` override, with the boot
//!   mode of the node (`BootSourceOverrideMode` UEFI or Legacy). BMCs that
//!   refuse a persistent (`Continuous`) override get a one-time override
//!   that is set again before every power on, as Ironic does (kept in
//!   memory here: the interfaces cannot write the node).
//! - Virtual media: the system's VirtualMedia collection, or its managers'
//!   on older BMCs; media already inserted is ejected first.
//! - What differs between vendors is decided in one place:
//!   [`VendorQuirks`].

use crate::agent_client::{error_chain, is_tls_refusal};
use crate::interfaces::*;
use crate::ipmi::BootMode;
use crate::DriverError;
use async_trait::async_trait;
use ferric_types::{Node, PowerState};
use reqwest::header::{HeaderValue, ACCEPT, ETAG, IF_MATCH};
use reqwest::{Method, Url};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::fmt;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use uuid::Uuid;

/// The driver_info keys these interfaces read, with their descriptions, for
/// `GET /v1/drivers/redfish/properties`.
pub const DRIVER_PROPERTIES: &[(&str, &str)] = &[
    (
        "redfish_address",
        "URL of the Redfish service of the node's BMC, e.g. https://bmc.example.net. Without a \
         scheme, https is assumed; a path is taken as the service root. Required.",
    ),
    (
        "redfish_system_id",
        "Path of the node's ComputerSystem, e.g. /redfish/v1/Systems/1. Needed only when the BMC \
         manages more than one system. Optional.",
    ),
    ("redfish_username", "User of the BMC. Optional."),
    ("redfish_password", "Password of that user. Optional."),
    (
        "redfish_auth_type",
        "\"basic\", \"session\" or \"auto\" (a session if the BMC offers them, else basic); \
         default from the conductor's configuration (auto). Optional.",
    ),
    (
        "redfish_verify_ca",
        "true (verify the BMC's certificate with the system's CAs; the default), false, or the \
         absolute path of a CA bundle file or directory, then the only CAs trusted. Optional.",
    ),
];

/// The boot devices the management interface sets, with their Redfish
/// `BootSourceOverrideTarget`.
const BOOT_TARGETS: &[(BootDevice, &str)] = &[
    (BootDevice::Pxe, "Pxe"),
    (BootDevice::Disk, "Hdd"),
    (BootDevice::Cdrom, "Cd"),
    (BootDevice::Bios, "BiosSetup"),
    (BootDevice::Uefihttp, "UefiHttp"),
];

/// The most of one answer read: Redfish resources are small.
const MAX_ANSWER: usize = 4 << 20;

/// How a request authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthType {
    /// HTTP basic authentication on every request.
    Basic,
    /// A Redfish session (X-Auth-Token).
    Session,
    /// A session if the BMC offers them, basic authentication otherwise.
    Auto,
}

impl AuthType {
    fn parse(value: &str) -> Option<AuthType> {
        match value {
            "basic" => Some(AuthType::Basic),
            "session" => Some(AuthType::Session),
            "auto" => Some(AuthType::Auto),
            _ => None,
        }
    }
}

/// How the redfish interfaces talk to BMCs (Ironic's `[redfish]` options
/// and the power timeouts of `[conductor]`). Every field has a safe
/// default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedfishOptions {
    /// How many times a request is tried when the BMC cannot be reached or
    /// answers with a server error (Ironic's
    /// `[redfish]connection_attempts`); default 5.
    pub connection_attempts: u32,
    /// Pause between two tries (Ironic's
    /// `[redfish]connection_retry_interval`); default 4 s.
    #[serde(with = "ferric_types::seconds")]
    pub connection_retry_interval: Duration,
    /// Time to open a connection to the BMC (Ironic's
    /// `[redfish]connect_timeout`); default 30 s.
    #[serde(with = "ferric_types::seconds")]
    pub connect_timeout: Duration,
    /// Time for one whole request, connection included (Ironic's
    /// `[redfish]read_timeout`); default 60 s.
    #[serde(with = "ferric_types::seconds")]
    pub request_timeout: Duration,
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
    /// Pause between two readings of the power state while waiting;
    /// default 1 s.
    #[serde(with = "ferric_types::seconds")]
    pub power_state_poll_interval: Duration,
    /// Authentication of nodes whose driver_info names none (Ironic's
    /// `[redfish]auth_type`); default auto.
    pub auth_type: AuthType,
    /// Boot mode of nodes that ask for none in their capabilities or
    /// instance_info (Ironic's `[deploy]default_boot_mode`); default uefi.
    pub default_boot_mode: BootMode,
}

impl Default for RedfishOptions {
    fn default() -> Self {
        RedfishOptions {
            connection_attempts: 5,
            connection_retry_interval: Duration::from_secs(4),
            connect_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            power_state_change_timeout: Duration::from_secs(60),
            soft_power_off_timeout: Duration::from_secs(600),
            power_state_poll_interval: Duration::from_secs(1),
            auth_type: AuthType::Auto,
            default_boot_mode: BootMode::Uefi,
        }
    }
}

/// Which certificates the BMC's TLS certificate is verified with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VerifyCa {
    /// The system's CAs.
    SystemRoots,
    /// None: any certificate is accepted.
    Disabled,
    /// Only the CAs in this PEM file, or in the files of this directory.
    Bundle(PathBuf),
}

/// What a node's driver_info says about reaching its BMC, checked.
#[derive(Clone, PartialEq)]
pub struct RedfishDriverInfo {
    /// `scheme://host:port` of the BMC.
    pub address: Url,
    /// Path of the service root, ending in `/`.
    pub root: String,
    /// Path of the node's ComputerSystem; `None`: the BMC's only one.
    pub system_id: Option<String>,
    pub username: Option<String>,
    password: Option<String>,
    pub auth_type: AuthType,
    pub verify_ca: VerifyCa,
}

/// Never prints the password.
impl fmt::Debug for RedfishDriverInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedfishDriverInfo")
            .field("address", &self.address.as_str())
            .field("root", &self.root)
            .field("system_id", &self.system_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "******"))
            .field("auth_type", &self.auth_type)
            .field("verify_ca", &self.verify_ca)
            .finish()
    }
}

fn invalid(message: String) -> DriverError {
    DriverError::InvalidParameter(message)
}

/// A string field; numbers are accepted as their text.
fn text(info: &Map<String, Value>, key: &str) -> Result<Option<String>, DriverError> {
    match info.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(invalid(format!("{key} must be a string"))),
    }
}

/// A boolean as Ironic's strict `bool_from_string` reads it.
fn boolean(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "on" | "y" | "yes" => Some(true),
        "0" | "f" | "false" | "off" | "n" | "no" => Some(false),
        _ => None,
    }
}

impl RedfishDriverInfo {
    /// Reads and checks the node's driver_info; `default_auth` applies when
    /// it names no `redfish_auth_type`. The messages are Ironic's.
    pub fn from_node(
        node: &Node,
        default_auth: AuthType,
    ) -> Result<RedfishDriverInfo, DriverError> {
        let info = &node.driver_info;
        let address = text(info, "redfish_address")?
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                invalid(format!(
                    "Missing the following Redfish properties in node {} driver_info: \
                     redfish_address",
                    node.uuid
                ))
            })?;
        let (address, root) = parse_address(&address).map_err(|why| {
            invalid(format!(
                "Invalid Redfish address {address} set in driver_info/redfish_address on node {}: \
                 {why}",
                node.uuid
            ))
        })?;
        let system_id = match text(info, "redfish_system_id")? {
            None => None,
            Some(id) if valid_path(&id) => Some(id),
            Some(id) => {
                return Err(invalid(format!(
                    "Invalid value \"{id}\" set in driver_info/redfish_system_id on node {}. The \
                     value should be a path (string) to the resource that the driver will \
                     interact with. For example: /redfish/v1/Systems/1",
                    node.uuid
                )))
            }
        };
        let username = text(info, "redfish_username")?.filter(|u| !u.is_empty());
        if username.as_deref().is_some_and(|u| u.contains(':')) {
            // Basic authentication cannot carry it.
            return Err(invalid(
                "redfish_username must not contain a colon".to_string(),
            ));
        }
        let password = text(info, "redfish_password")?;
        let auth_type = match text(info, "redfish_auth_type")? {
            None => default_auth,
            Some(value) => AuthType::parse(&value).ok_or_else(|| {
                invalid(format!(
                    "Invalid value \"{value}\" set in driver_info/redfish_auth_type on node {}. \
                     The value should be one of \"basic\", \"session\" or \"auto\".",
                    node.uuid
                ))
            })?,
        };
        let verify_ca = verify_ca(info.get("redfish_verify_ca")).map_err(|shown| {
            invalid(format!(
                "Invalid value type set in driver_info/redfish_verify_ca on node {}. The value \
                 should be a Boolean or the absolute path to an existing file/directory, not \
                 {shown}",
                node.uuid
            ))
        })?;
        Ok(RedfishDriverInfo {
            address,
            root,
            system_id,
            username,
            password,
            auth_type,
            verify_ca,
        })
    }

    /// The BMC as messages name it: `scheme://host:port`.
    pub fn bmc(&self) -> String {
        self.address.origin().ascii_serialization()
    }

    /// The URL of a path on the BMC. Links the BMC hands out must stay on
    /// the BMC: the credentials go with every request.
    fn url(&self, path: &str) -> Result<Url, RedfishError> {
        let url = self.address.join(path).map_err(|e| RedfishError::Answer {
            bmc: self.bmc(),
            problem: format!("\"{path}\" is not a usable link: {e}"),
        })?;
        if url.origin() != self.address.origin() {
            return Err(RedfishError::Answer {
                bmc: self.bmc(),
                problem: format!("the link \"{path}\" leads to another host"),
            });
        }
        Ok(url)
    }

    /// `text` with the password replaced, for messages and logs.
    fn scrub(&self, text: &str) -> String {
        match self.password.as_deref() {
            Some(password) if !password.is_empty() => text.replace(password, "******"),
            _ => text.to_string(),
        }
    }
}

/// `redfish_address` as Ironic reads it: the BMC's `scheme://host:port` and
/// the service root path.
fn parse_address(address: &str) -> Result<(Url, String), String> {
    let with_scheme = if address.contains("://") {
        address.to_string()
    } else if address.parse::<Ipv6Addr>().is_ok() {
        format!("https://[{address}]")
    } else {
        format!("https://{address}")
    };
    let url = Url::parse(&with_scheme).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the scheme must be https or http, not {}",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("it names no host".to_string());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "it must not hold credentials; set redfish_username and redfish_password".to_string(),
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("it must not have a query or a fragment".to_string());
    }
    let root = match url.path() {
        "" | "/" => "/redfish/v1/".to_string(),
        path if path.ends_with('/') => path.to_string(),
        path => format!("{path}/"),
    };
    let mut base = url;
    base.set_path("/");
    Ok((base, root))
}

/// An absolute path without a query, a fragment, spaces or control
/// characters.
fn valid_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.starts_with("//")
        && !path
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '?' || c == '#')
}

/// `redfish_verify_ca`, or how to show the refused value.
fn verify_ca(value: Option<&Value>) -> Result<VerifyCa, String> {
    let from_bool = |verify| {
        if verify {
            VerifyCa::SystemRoots
        } else {
            VerifyCa::Disabled
        }
    };
    match value {
        None | Some(Value::Null) => Ok(VerifyCa::SystemRoots),
        Some(Value::Bool(verify)) => Ok(from_bool(*verify)),
        Some(Value::String(s)) => {
            let path = Path::new(s.trim());
            if path.is_absolute() && (path.is_file() || path.is_dir()) {
                Ok(VerifyCa::Bundle(path.to_path_buf()))
            } else {
                boolean(s).map(from_bool).ok_or_else(|| format!("\"{s}\""))
            }
        }
        Some(other) => Err(other.to_string()),
    }
}

/// What differs between Redfish implementations, decided here and nowhere
/// else. The vendor is the node's `properties/vendor` (as in Ironic), or
/// else the system's `Manufacturer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VendorQuirks {
    /// When a boot device change carries `BootSourceOverrideMode`.
    pub boot_mode_field: BootModeField,
    /// Whether `BootSourceOverrideEnabled` is sent even when the BMC reports
    /// the wanted value already: Supermicro needs it, while other BMCs
    /// refuse a field that does not change (Ironic story 2007355).
    pub always_send_enabled: bool,
    /// Whether PATCH carries `If-Match` with the resource's ETag from the
    /// start (HPE iLO refuses it otherwise). Any BMC answering 412 or 428
    /// is asked again with a fresh ETag.
    pub if_match: bool,
}

/// When `BootSourceOverrideMode` is sent with a boot device change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootModeField {
    /// When the BMC reports a mode other than the node's. BMCs that report
    /// none cannot override it and refuse the field.
    WhenDifferent,
    /// Always, with the target and enabled fields: AMI-based BMCs
    /// (ASRockRack among them) want the whole override each time, and
    /// Supermicro falls back to legacy BIOS otherwise.
    Always,
    /// Never: Dell iDRAC changes the boot mode through a BIOS settings job,
    /// and refuses it here.
    Never,
}

impl VendorQuirks {
    pub fn of(vendor: Option<&str>) -> VendorQuirks {
        let vendor = vendor.unwrap_or_default().trim().to_ascii_lowercase();
        let is = |name: &str| {
            vendor
                .split(|c: char| !c.is_ascii_alphanumeric())
                .any(|w| w == name)
        };
        let supermicro = vendor.contains("supermicro");
        let ami = is("ami")
            || vendor.contains("american megatrends")
            || vendor.contains("asrockrack")
            || vendor == "redfish_compatible";
        VendorQuirks {
            boot_mode_field: if supermicro || ami {
                BootModeField::Always
            } else if is("dell") {
                BootModeField::Never
            } else {
                BootModeField::WhenDifferent
            },
            always_send_enabled: supermicro || ami,
            if_match: is("hpe") || is("hp") || vendor.contains("hewlett"),
        }
    }
}

/// The `Boot` object of a PATCH that sets the boot override to `target`.
fn boot_patch(
    current: &Value,
    target: &str,
    persistent: bool,
    mode: BootMode,
    quirks: VendorQuirks,
) -> Value {
    let enabled = if persistent { "Continuous" } else { "Once" };
    let mode = match mode {
        BootMode::Uefi => "UEFI",
        BootMode::Bios => "Legacy",
    };
    let mut patch = Map::new();
    patch.insert("BootSourceOverrideTarget".into(), target.into());
    if quirks.always_send_enabled || current["BootSourceOverrideEnabled"].as_str() != Some(enabled)
    {
        patch.insert("BootSourceOverrideEnabled".into(), enabled.into());
    }
    let current_mode = current["BootSourceOverrideMode"].as_str();
    let send_mode = match quirks.boot_mode_field {
        BootModeField::Always => true,
        BootModeField::Never => false,
        BootModeField::WhenDifferent => current_mode.is_some_and(|m| m != mode),
    };
    if send_mode {
        patch.insert("BootSourceOverrideMode".into(), mode.into());
    }
    Value::Object(patch)
}

/// The power states Redfish reports, as Ironic maps them.
fn power_state_of(system: &Value) -> Option<PowerState> {
    match system["PowerState"].as_str()? {
        "On" | "PoweringOn" => Some(PowerState::On),
        "Off" | "PoweringOff" => Some(PowerState::Off),
        _ => None,
    }
}

/// The first of `wanted` that `allowed` holds; `wanted[0]` when the BMC
/// does not say what it allows.
fn choose_reset_type(
    allowed: Option<&[Value]>,
    wanted: &[&'static str],
) -> Result<&'static str, String> {
    let Some(allowed) = allowed else {
        return Ok(wanted[0]);
    };
    wanted
        .iter()
        .find(|w| allowed.iter().any(|a| a.as_str() == Some(w)))
        .copied()
        .ok_or_else(|| {
            let allowed: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
            format!(
                "the system allows none of the reset types {} (it allows {})",
                wanted.join(", "),
                allowed.join(", ")
            )
        })
}

/// The `@odata.id`s of a collection's members.
fn member_paths(collection: &Value) -> Vec<String> {
    collection["Members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .filter_map(|m| m["@odata.id"].as_str())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// A URL as logs and messages show it: without credentials, and with its
/// query (which may hold a temporary token) hidden.
pub use ferric_types::url::redact as redact_url;

/// `text` without the secrets of `url` (its password and its query, which
/// may hold a temporary token), however much of the URL the BMC echoed.
fn hide_url_secrets(text: &str, url: &str) -> String {
    let mut text = text.replace(url, &redact_url(url));
    if let Ok(parsed) = Url::parse(url) {
        let secrets = [parsed.password(), parsed.query()];
        for secret in secrets.into_iter().flatten().filter(|s| !s.is_empty()) {
            text = text.replace(secret, "...");
        }
    }
    text
}

/// Why a Redfish request did not succeed. Turned into a [`DriverError`]
/// (with its causes) where the interfaces return.
#[derive(Debug, thiserror::Error)]
enum RedfishError {
    /// The node's settings are wrong.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(
        "Redfish BMC {bmc} could not be reached for {request} ({attempts} attempt{})",
        plural(*attempts)
    )]
    Unreachable {
        bmc: String,
        request: String,
        attempts: u32,
        #[source]
        cause: reqwest::Error,
    },
    #[error("Redfish BMC {bmc} failed the TLS handshake for {request} (check redfish_verify_ca)")]
    Tls {
        bmc: String,
        request: String,
        #[source]
        cause: reqwest::Error,
    },
    #[error(
        "Redfish BMC {bmc} refused the credentials of {user} for {request} (HTTP {status}): check \
         redfish_username, redfish_password and the user's privileges"
    )]
    Credentials {
        bmc: String,
        request: String,
        user: String,
        status: u16,
    },
    #[error(
        "Redfish BMC {bmc} answered {request} with HTTP {status}{}: {message}",
        if *attempts > 1 { format!(" after {attempts} attempts") } else { String::new() }
    )]
    Status {
        bmc: String,
        request: String,
        status: u16,
        message: String,
        attempts: u32,
    },
    #[error("Redfish BMC {bmc} sent an unusable answer: {problem}")]
    Answer { bmc: String, problem: String },
}

fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

impl RedfishError {
    /// The same failure, having been tried `attempts` times.
    fn after(self, attempts: u32) -> RedfishError {
        match self {
            RedfishError::Unreachable {
                bmc,
                request,
                cause,
                ..
            } => RedfishError::Unreachable {
                bmc,
                request,
                attempts,
                cause,
            },
            RedfishError::Status {
                bmc,
                request,
                status,
                message,
                ..
            } => RedfishError::Status {
                bmc,
                request,
                status,
                message,
                attempts,
            },
            other => other,
        }
    }

    fn status(&self) -> Option<u16> {
        match self {
            RedfishError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl From<RedfishError> for DriverError {
    fn from(error: RedfishError) -> DriverError {
        match error {
            RedfishError::Invalid(message) => DriverError::InvalidParameter(message),
            RedfishError::Unsupported(message) => DriverError::Unsupported(message),
            other => DriverError::Failed(error_chain(&other)),
        }
    }
}

/// The message of a Redfish error answer: `error.message` and the messages
/// of `@Message.ExtendedInfo`, bounded.
fn error_message(body: &Value) -> String {
    let error = &body["error"];
    let mut parts: Vec<&str> = error["message"].as_str().into_iter().collect();
    if let Some(infos) = error["@Message.ExtendedInfo"].as_array() {
        parts.extend(
            infos
                .iter()
                .filter_map(|i| i["Message"].as_str().or_else(|| i["MessageId"].as_str())),
        );
    }
    let joined = parts.join("; ");
    let joined = if joined.is_empty() {
        "no message".to_string()
    } else {
        joined
    };
    joined.chars().take(500).collect()
}

/// A request that went wrong: worth asking again or not.
enum Failure {
    Retry(RedfishError),
    Final(RedfishError),
}

impl From<RedfishError> for Failure {
    fn from(error: RedfishError) -> Failure {
        Failure::Final(error)
    }
}

/// What the BMC answered.
struct Answer {
    status: u16,
    /// The `ETag` header, or the body's `@odata.etag`.
    etag: Option<String>,
    /// The `X-Auth-Token` header (session creation).
    token: Option<String>,
    body: Value,
}

/// What a request carries to authenticate.
enum Auth {
    None,
    Basic,
    Token(String),
}

/// What is known about logging in to one BMC as one user.
#[derive(Default)]
enum Login {
    /// Nothing yet.
    #[default]
    Unknown,
    /// The BMC has no sessions (found by `auto`): basic authentication.
    Basic,
    Session {
        token: String,
        /// The password the session was made with: a node whose password
        /// changed logs in again.
        password: Option<String>,
    },
}

/// Per BMC, user and trust: the login, behind a lock so that one request
/// at a time logs in.
type LoginSlot = Arc<tokio::sync::Mutex<Login>>;

#[derive(Clone, PartialEq, Eq, Hash)]
struct LoginKey {
    bmc: String,
    username: Option<String>,
    verify_ca: VerifyCa,
}

/// HTTP clients are kept per trust setting; a CA bundle's file is read
/// again when it changes.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    verify_ca: VerifyCa,
    modified: Option<SystemTime>,
}

/// A Redfish virtual media device kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtualMediaDevice {
    /// A CD or DVD drive.
    Cd,
    Floppy,
    UsbStick,
}

impl VirtualMediaDevice {
    /// The `MediaTypes` a device of this kind lists (any of them). Some
    /// BMCs (Cisco UCS) offer DVD drives only: they serve for CDs too.
    fn media_types(self) -> &'static [&'static str] {
        match self {
            VirtualMediaDevice::Cd => &["CD", "DVD"],
            VirtualMediaDevice::Floppy => &["Floppy"],
            VirtualMediaDevice::UsbStick => &["USBStick"],
        }
    }

    fn name(self) -> &'static str {
        match self {
            VirtualMediaDevice::Cd => "CD/DVD",
            VirtualMediaDevice::Floppy => "floppy",
            VirtualMediaDevice::UsbStick => "USB stick",
        }
    }
}

/// One virtual media device of a BMC, as it reports it.
#[derive(Clone, PartialEq, Eq)]
pub struct VirtualMedia {
    /// Its `@odata.id`.
    pub path: String,
    pub media_types: Vec<String>,
    /// The image inserted, if any.
    pub image: Option<String>,
    pub inserted: bool,
    pub write_protected: Option<bool>,
}

/// Shows the image without credentials.
impl fmt::Debug for VirtualMedia {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtualMedia")
            .field("path", &self.path)
            .field("media_types", &self.media_types)
            .field("image", &self.image.as_deref().map(redact_url))
            .field("inserted", &self.inserted)
            .field("write_protected", &self.write_protected)
            .finish()
    }
}

impl VirtualMedia {
    fn of(path: String, resource: &Value) -> VirtualMedia {
        VirtualMedia {
            path,
            media_types: resource["MediaTypes"]
                .as_array()
                .map(|types| {
                    types
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            image: resource["Image"]
                .as_str()
                .filter(|i| !i.is_empty())
                .map(str::to_string),
            inserted: resource["Inserted"].as_bool().unwrap_or(false),
            write_protected: resource["WriteProtected"].as_bool(),
        }
    }

    fn holds(&self, device: VirtualMediaDevice) -> bool {
        self.media_types
            .iter()
            .any(|t| device.media_types().contains(&t.as_str()))
    }
}

/// Talks Redfish to BMCs for the redfish interfaces: HTTP clients, logins,
/// retries. One per registry, shared by power, management and the
/// redfish-virtual-media boot interface.
pub struct RedfishClient {
    options: RedfishOptions,
    clients: Mutex<HashMap<ClientKey, reqwest::Client>>,
    logins: Mutex<HashMap<LoginKey, LoginSlot>>,
    /// Nodes whose BMC refused a persistent boot device: the device to set
    /// for one boot before each power on (Ironic's driver_internal_info
    /// `redfish_boot_device`).
    one_time_boot: Mutex<HashMap<Uuid, &'static str>>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Redirects within the BMC only, at most 5: the credentials and the
/// session token go with them.
fn same_bmc_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same_origin = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        if attempt.previous().len() > 5 {
            attempt.error("too many redirects")
        } else if same_origin {
            attempt.follow()
        } else {
            attempt.error("a redirect to another host was refused")
        }
    })
}

/// The PEM certificates of a file, or of every file of a directory.
fn read_bundle(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let files = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| e.to_string())?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut certificates = Vec::new();
    for file in files {
        let pem = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        // In a directory, files that are not PEM are skipped.
        match reqwest::Certificate::from_pem_bundle(&pem) {
            Ok(found) => certificates.extend(found),
            Err(e) if !path.is_dir() => return Err(error_chain(&e)),
            Err(_) => {}
        }
    }
    if certificates.is_empty() {
        return Err("it holds no PEM certificate".to_string());
    }
    Ok(certificates)
}

impl RedfishClient {
    pub fn new(options: RedfishOptions) -> RedfishClient {
        RedfishClient {
            options,
            clients: Mutex::new(HashMap::new()),
            logins: Mutex::new(HashMap::new()),
            one_time_boot: Mutex::new(HashMap::new()),
        }
    }

    pub fn options(&self) -> &RedfishOptions {
        &self.options
    }

    /// The node's driver_info, checked.
    pub fn driver_info(&self, node: &Node) -> Result<RedfishDriverInfo, DriverError> {
        RedfishDriverInfo::from_node(node, self.options.auth_type)
    }

    fn http_client(&self, info: &RedfishDriverInfo) -> Result<reqwest::Client, RedfishError> {
        let modified = match &info.verify_ca {
            VerifyCa::Bundle(path) => std::fs::metadata(path).and_then(|m| m.modified()).ok(),
            _ => None,
        };
        let key = ClientKey {
            verify_ca: info.verify_ca.clone(),
            modified,
        };
        if let Some(client) = locked(&self.clients).get(&key) {
            return Ok(client.clone());
        }
        // BMCs sit on management networks: no proxy from the environment.
        let builder = reqwest::Client::builder()
            .connect_timeout(self.options.connect_timeout)
            .timeout(self.options.request_timeout)
            .redirect(same_bmc_redirects())
            .no_proxy();
        let builder = match &info.verify_ca {
            VerifyCa::SystemRoots => builder,
            VerifyCa::Disabled => builder.tls_danger_accept_invalid_certs(true),
            VerifyCa::Bundle(path) => {
                let certificates = read_bundle(path).map_err(|why| {
                    RedfishError::Invalid(format!(
                        "The CA bundle {} of driver_info/redfish_verify_ca cannot be used: {why}",
                        path.display()
                    ))
                })?;
                builder.tls_certs_only(certificates)
            }
        };
        let client = builder.build().map_err(|e| {
            RedfishError::Invalid(format!(
                "No HTTP client for Redfish BMC {}: {}",
                info.bmc(),
                error_chain(&e)
            ))
        })?;
        let mut clients = locked(&self.clients);
        // An old version of a changed bundle is of no further use.
        clients.retain(|k, _| k.verify_ca != key.verify_ca);
        clients.insert(key, client.clone());
        Ok(client)
    }

    fn login_slot(&self, info: &RedfishDriverInfo) -> LoginSlot {
        let key = LoginKey {
            bmc: info.bmc(),
            username: info.username.clone(),
            verify_ca: info.verify_ca.clone(),
        };
        locked(&self.logins).entry(key).or_default().clone()
    }

    /// One HTTP exchange, its answer read (bounded) whatever its status.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        http: &reqwest::Client,
        info: &RedfishDriverInfo,
        method: Method,
        url: Url,
        body: Option<&Value>,
        auth: &Auth,
        if_match: Option<&str>,
    ) -> Result<Answer, reqwest::Error> {
        let mut request = http.request(method, url).header(ACCEPT, "application/json");
        match auth {
            Auth::None => {}
            Auth::Basic => {
                request = request.basic_auth(
                    info.username.as_deref().unwrap_or_default(),
                    info.password.as_deref(),
                )
            }
            Auth::Token(token) => {
                if let Ok(mut value) = HeaderValue::from_str(token) {
                    value.set_sensitive(true);
                    request = request.header("X-Auth-Token", value);
                }
            }
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(tag) = if_match.and_then(|t| HeaderValue::from_str(t).ok()) {
            request = request.header(IF_MATCH, tag);
        }
        let mut response = request.send().await?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let header_etag = header(ETAG.as_str());
        let token = header("X-Auth-Token");
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if bytes.len() + chunk.len() > MAX_ANSWER {
                break;
            }
            bytes.extend_from_slice(&chunk);
        }
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let etag = header_etag.or_else(|| body["@odata.etag"].as_str().map(str::to_string));
        Ok(Answer {
            status,
            etag,
            token,
            body,
        })
    }

    /// A request to the node's BMC, tried again while the BMC cannot be
    /// reached or fails (5xx); 4xx answers are errors.
    async fn call(
        &self,
        node: &Node,
        info: &RedfishDriverInfo,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Answer, RedfishError> {
        let url = info.url(path)?;
        let request = format!("{method} {}", url.path());
        let http = self.http_client(info)?;
        let slot = self.login_slot(info);
        let attempts = self.options.connection_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match self
                .attempt(&http, info, &slot, &method, &url, &request, body, if_match)
                .await
            {
                Ok(answer) => return Ok(answer),
                Err(Failure::Final(error)) => return Err(error),
                Err(Failure::Retry(error)) => error,
            };
            if attempt >= attempts {
                return Err(error.after(attempt));
            }
            tracing::warn!(
                node = %node.uuid,
                bmc = %info.bmc(),
                request = %request,
                attempt,
                error = %error_chain(&error),
                "Redfish request failed; retrying"
            );
            tokio::time::sleep(self.options.connection_retry_interval).await;
        }
    }

    /// One try of a request: log in if needed, send it, and log in again
    /// once if the BMC no longer knows the session.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        http: &reqwest::Client,
        info: &RedfishDriverInfo,
        slot: &LoginSlot,
        method: &Method,
        url: &Url,
        request: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Answer, Failure> {
        let mut logged_in_again = false;
        loop {
            let auth = self.authenticate(http, info, slot, request).await?;
            let answer = self
                .exchange(
                    http,
                    info,
                    method.clone(),
                    url.clone(),
                    body,
                    &auth,
                    if_match,
                )
                .await
                .map_err(|e| transport_failure(info, request, e))?;
            match answer.status {
                200..=399 => {
                    if matches!(auth, Auth::Basic) && info.auth_type == AuthType::Auto {
                        // Basic authentication works where the session
                        // login was refused (BMCs that guard every path,
                        // the SessionService too): keep to it.
                        let mut login = slot.lock().await;
                        if matches!(*login, Login::Unknown) {
                            *login = Login::Basic;
                        }
                    }
                    return Ok(answer);
                }
                401 if matches!(auth, Auth::Token(_)) && !logged_in_again => {
                    forget_login(slot, &auth).await;
                    logged_in_again = true;
                }
                401 | 403 => {
                    forget_login(slot, &auth).await;
                    return Err(Failure::Final(credentials_error(
                        info,
                        request,
                        answer.status,
                    )));
                }
                status => {
                    let mut message = info.scrub(&error_message(&answer.body));
                    // BMCs echo the image URL of virtual media in errors.
                    if let Some(image) = body.and_then(|b| b["Image"].as_str()) {
                        message = hide_url_secrets(&message, image);
                    }
                    let error = RedfishError::Status {
                        bmc: info.bmc(),
                        request: request.to_string(),
                        status,
                        message,
                        attempts: 1,
                    };
                    return Err(if status >= 500 {
                        Failure::Retry(error)
                    } else {
                        Failure::Final(error)
                    });
                }
            }
        }
    }

    /// How the next request authenticates; logs in when a session is
    /// wanted and none is held.
    async fn authenticate(
        &self,
        http: &reqwest::Client,
        info: &RedfishDriverInfo,
        slot: &LoginSlot,
        for_request: &str,
    ) -> Result<Auth, Failure> {
        let Some(username) = &info.username else {
            return Ok(Auth::None);
        };
        if info.auth_type == AuthType::Basic {
            return Ok(Auth::Basic);
        }
        let mut login = slot.lock().await;
        match &*login {
            Login::Session { token, password } if *password == info.password => {
                return Ok(Auth::Token(token.clone()))
            }
            Login::Basic if info.auth_type == AuthType::Auto => return Ok(Auth::Basic),
            _ => {}
        }
        let url = info.url(&format!("{}SessionService/Sessions", info.root))?;
        let request = format!("POST {}", url.path());
        let credentials = json!({
            "UserName": username,
            "Password": info.password.as_deref().unwrap_or_default(),
        });
        let answer = self
            .exchange(
                http,
                info,
                Method::POST,
                url,
                Some(&credentials),
                &Auth::None,
                None,
            )
            .await
            .map_err(|e| transport_failure(info, &format!("{for_request} (logging in)"), e))?;
        let status = answer.status;
        match answer.token.filter(|_| (200..300).contains(&status)) {
            Some(token) => {
                tracing::debug!(bmc = %info.bmc(), user = %username, "Redfish session created");
                *login = Login::Session {
                    token: token.clone(),
                    password: info.password.clone(),
                };
                return Ok(Auth::Token(token));
            }
            None if status >= 500 => {
                return Err(Failure::Retry(RedfishError::Status {
                    bmc: info.bmc(),
                    request,
                    status,
                    message: info.scrub(&error_message(&answer.body)),
                    attempts: 1,
                }))
            }
            None => {}
        }
        let refused = matches!(status, 401 | 403);
        if info.auth_type == AuthType::Auto {
            // A BMC without sessions: basic authentication from now on. A
            // refused login is not remembered: the password may be fixed.
            if !refused {
                tracing::debug!(
                    bmc = %info.bmc(),
                    status,
                    "no Redfish session service; using basic authentication"
                );
                *login = Login::Basic;
            }
            return Ok(Auth::Basic);
        }
        Err(Failure::Final(if refused {
            credentials_error(info, &request, status)
        } else {
            RedfishError::Status {
                bmc: info.bmc(),
                request,
                status,
                message: if (200..300).contains(&status) {
                    "the session was created without an X-Auth-Token".to_string()
                } else {
                    format!(
                        "no session could be created (redfish_auth_type is session): {}",
                        info.scrub(&error_message(&answer.body))
                    )
                },
                attempts: 1,
            }
        }))
    }

    /// A GET of a resource, its body.
    async fn get(
        &self,
        node: &Node,
        info: &RedfishDriverInfo,
        path: &str,
    ) -> Result<Answer, RedfishError> {
        self.call(node, info, Method::GET, path, None, None).await
    }

    /// The path of the node's ComputerSystem and its current resource.
    async fn system(
        &self,
        node: &Node,
        info: &RedfishDriverInfo,
    ) -> Result<(String, Answer), RedfishError> {
        let path = match &info.system_id {
            Some(path) => path.clone(),
            None => self.only_system(node, info).await?,
        };
        let answer = self.get(node, info, &path).await?;
        Ok((path, answer))
    }

    /// Without `redfish_system_id`: the BMC's only system.
    async fn only_system(
        &self,
        node: &Node,
        info: &RedfishDriverInfo,
    ) -> Result<String, RedfishError> {
        let collection = self
            .get(node, info, &format!("{}Systems", info.root))
            .await?;
        let mut members = member_paths(&collection.body);
        match members.len() {
            1 => Ok(members.remove(0)),
            0 => Err(RedfishError::Answer {
                bmc: info.bmc(),
                problem: "it manages no ComputerSystem".to_string(),
            }),
            n => Err(RedfishError::Invalid(format!(
                "Redfish BMC {} manages {n} systems ({}): set driver_info/redfish_system_id of \
                 node {} to the path of its own",
                info.bmc(),
                members.join(", "),
                node.uuid
            ))),
        }
    }

    /// The node's power state.
    async fn power_state(
        &self,
        node: &Node,
        info: &RedfishDriverInfo,
    ) -> Result<PowerState, RedfishError> {
        let (_, system) = self.system(node, info).await?;
        power_state_of(&system.body).ok_or_else(|| RedfishError::Answer {
            bmc: info.bmc(),
            problem: format!(
                "the system's PowerState is {}",
                system.body.get("PowerState").unwrap_or(&Value::Null)
            ),
        })
    }

    /// The first of `wanted` the system allows as ResetType, from the Reset
    /// action or the ActionInfo it points to.
    async fn reset_type(
        &self,
        node: &Node,
        info: &RedfishDriverInfo,
        action: &Value,
        wanted: &[&'static str],
    ) -> Result<&'static str, RedfishError> {
        let action_info;
        let allowed = match action["ResetType@Redfish.AllowableValues"].as_array() {
            Some(allowed) => Some(allowed.as_slice()),
            None => match action["@Redfish.ActionInfo"].as_str() {
                Some(path) => {
                    action_info = self.get(node, info, path).await?.body;
                    action_info["Parameters"].as_array().and_then(|parameters| {
                        parameters
                            .iter()
                            .find(|p| p["Name"].as_str() == Some("ResetType"))
                            .and_then(|p| p["AllowableValues"].as_array())
                            .map(Vec::as_slice)
                    })
                }
                None => None,
            },
        };
        choose_reset_type(allowed, wanted).map_err(|why| {
            RedfishError::Unsupported(format!(
                "Redfish BMC {} cannot do this for node {}: {why}",
                info.bmc(),
                node.uuid
            ))
        })
    }

    /// Sends ComputerSystem.Reset with the first of `wanted` the system
    /// allows, then waits until it reaches `target`. Does nothing when it
    /// is there already, unless `always`.
    #[allow(clippy::too_many_arguments)]
    async fn power_action(
        &self,
        node: &Node,
        info: &RedfishDriverInfo,
        wanted: &[&'static str],
        target: PowerState,
        always: bool,
        timeout: Duration,
    ) -> Result<(), DriverError> {
        let (path, system) = self.system(node, info).await?;
        if !always && power_state_of(&system.body) == Some(target) {
            tracing::debug!(node = %node.uuid, bmc = %info.bmc(), %target, "already in the power state");
            return Ok(());
        }
        if target == PowerState::On {
            self.restore_one_time_boot(node, info).await;
        }
        let action = &system.body["Actions"]["#ComputerSystem.Reset"];
        let reset_type = self.reset_type(node, info, action, wanted).await?;
        let action_path = action["target"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{path}/Actions/ComputerSystem.Reset"));
        tracing::info!(node = %node.uuid, bmc = %info.bmc(), reset_type, "Redfish power action");
        let sent = self
            .call(
                node,
                info,
                Method::POST,
                &action_path,
                Some(&json!({ "ResetType": reset_type })),
                None,
            )
            .await;
        if let Err(error) = sent {
            // Some BMCs refuse (400, 409) a reset to the state the system
            // reached meanwhile: that is success.
            if matches!(error.status(), Some(400 | 409))
                && self.power_state(node, info).await.ok() == Some(target)
            {
                return Ok(());
            }
            return Err(error.into());
        }
        self.wait_for_power_state(node, info, target, timeout).await
    }

    async fn wait_for_power_state(
        &self,
        node: &Node,
        info: &RedfishDriverInfo,
        target: PowerState,
        timeout: Duration,
    ) -> Result<(), DriverError> {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.power_state(node, info).await?;
            if state == target {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(DriverError::Timeout {
                    operation: format!(
                        "Node {} (Redfish BMC {}) reaching {target} (still {state})",
                        node.uuid,
                        info.bmc()
                    ),
                    timeout,
                });
            }
            tokio::time::sleep(self.options.power_state_poll_interval.min(deadline - now)).await;
        }
    }

    /// PATCHes the system's boot override.
    async fn set_boot_override(
        &self,
        node: &Node,
        info: &RedfishDriverInfo,
        target: &str,
        persistent: bool,
        mode: BootMode,
    ) -> Result<(), RedfishError> {
        let (path, system) = self.system(node, info).await?;
        let vendor = node
            .properties
            .get("vendor")
            .and_then(Value::as_str)
            .or_else(|| system.body["Manufacturer"].as_str());
        let quirks = VendorQuirks::of(vendor);
        let patch = json!({
            "Boot": boot_patch(&system.body["Boot"], target, persistent, mode, quirks)
        });
        tracing::info!(
            node = %node.uuid,
            bmc = %info.bmc(),
            boot = %patch["Boot"],
            "Redfish boot override"
        );
        let if_match = system.etag.as_deref().filter(|_| quirks.if_match);
        let sent = self
            .call(node, info, Method::PATCH, &path, Some(&patch), if_match)
            .await;
        match sent {
            // The BMC wants an If-Match (428), or a fresh one (412).
            Err(error) if matches!(error.status(), Some(412 | 428)) => {
                let fresh = self.get(node, info, &path).await?;
                let Some(etag) = fresh.etag else {
                    return Err(error);
                };
                self.call(node, info, Method::PATCH, &path, Some(&patch), Some(&etag))
                    .await
                    .map(|_| ())
            }
            other => other.map(|_| ()),
        }
    }

    /// Before a power on: the one-time boot device standing in for a
    /// persistent one the BMC refused. A failure is logged only: the boot
    /// order the node has may do.
    async fn restore_one_time_boot(&self, node: &Node, info: &RedfishDriverInfo) {
        let Some(target) = locked(&self.one_time_boot).get(&node.uuid).copied() else {
            return;
        };
        let restored = match BootMode::of_node(node, self.options.default_boot_mode) {
            Ok(mode) => self
                .set_boot_override(node, info, target, false, mode)
                .await
                .map_err(|e| error_chain(&e)),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = restored {
            tracing::warn!(
                node = %node.uuid,
                bmc = %info.bmc(),
                target,
                %error,
                "could not set the boot device again before power on"
            );
        }
    }

    /// The BMC's virtual media devices for the node: its system's, or else
    /// its managers' (before Redfish 1.13 they hung off the managers).
    async fn media_devices(
        &self,
        node: &Node,
        info: &RedfishDriverInfo,
    ) -> Result<Vec<VirtualMedia>, RedfishError> {
        let (_, system) = self.system(node, info).await?;
        let mut collections = Vec::new();
        if let Some(path) = system.body["VirtualMedia"]["@odata.id"].as_str() {
            collections.push(path.to_string());
        } else {
            let managers = system.body["Links"]["ManagedBy"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for manager in managers.iter().filter_map(|m| m["@odata.id"].as_str()) {
                let manager = self.get(node, info, manager).await?;
                if let Some(path) = manager.body["VirtualMedia"]["@odata.id"].as_str() {
                    collections.push(path.to_string());
                }
            }
        }
        let mut devices = Vec::new();
        for collection in collections {
            let collection = self.get(node, info, &collection).await?;
            for path in member_paths(&collection.body) {
                let resource = self.get(node, info, &path).await?;
                devices.push((path, resource.body));
            }
        }
        Ok(devices
            .into_iter()
            .map(|(path, body)| VirtualMedia::of(path, &body))
            .collect())
    }

    /// Ejects the media of one device: its EjectMedia action, or on BMCs
    /// without it (Redfish before 1.2) a PATCH that empties it.
    async fn eject(
        &self,
        node: &Node,
        info: &RedfishDriverInfo,
        device: &VirtualMedia,
    ) -> Result<(), RedfishError> {
        let resource = self.get(node, info, &device.path).await?;
        match resource.body["Actions"]["#VirtualMedia.EjectMedia"]["target"].as_str() {
            Some(action) => {
                self.call(node, info, Method::POST, action, Some(&json!({})), None)
                    .await?
            }
            None => {
                let empty = json!({"Image": null, "Inserted": false});
                self.call(node, info, Method::PATCH, &device.path, Some(&empty), None)
                    .await?
            }
        };
        tracing::info!(node = %node.uuid, bmc = %info.bmc(), device = %device.path, "virtual media ejected");
        Ok(())
    }

    /// The node's virtual media devices as the BMC reports them.
    pub async fn virtual_media(&self, node: &Node) -> Result<Vec<VirtualMedia>, DriverError> {
        let info = self.driver_info(node)?;
        Ok(self.media_devices(node, &info).await?)
    }

    /// Inserts the image at `image_url` into a virtual device of kind
    /// `device`, write-protected; media already in such devices is ejected
    /// first (some BMCs report a just-ejected image as still there).
    pub async fn insert_virtual_media(
        &self,
        node: &Node,
        image_url: &str,
        device: VirtualMediaDevice,
    ) -> Result<(), DriverError> {
        let info = self.driver_info(node)?;
        if Url::parse(image_url).is_err() {
            return Err(invalid(format!(
                "Invalid virtual media image URL for node {}: {}",
                node.uuid,
                redact_url(image_url)
            )));
        }
        let shown = redact_url(image_url);
        let hide = |text: String| hide_url_secrets(&text, image_url);
        let devices: Vec<VirtualMedia> = self
            .media_devices(node, &info)
            .await?
            .into_iter()
            .filter(|d| d.holds(device))
            .collect();
        if devices.is_empty() {
            return Err(DriverError::Failed(format!(
                "Redfish BMC {} has no {} virtual media device for node {}",
                info.bmc(),
                device.name(),
                node.uuid
            )));
        }
        for inserted in devices.iter().filter(|d| d.inserted) {
            if let Err(error) = self.eject(node, &info, inserted).await {
                // The insertion below reports what matters.
                tracing::warn!(
                    node = %node.uuid,
                    bmc = %info.bmc(),
                    device = %inserted.path,
                    error = %hide(error_chain(&error)),
                    "could not eject virtual media before inserting"
                );
            }
        }
        let mut refusals = Vec::new();
        for candidate in &devices {
            let resource = self.get(node, &info, &candidate.path).await?;
            let Some(action) = resource.body["Actions"]["#VirtualMedia.InsertMedia"]["target"]
                .as_str()
                .map(str::to_string)
            else {
                refusals.push(format!("{}: no InsertMedia action", candidate.path));
                continue;
            };
            let body = json!({"Image": image_url, "Inserted": true, "WriteProtected": true});
            match self
                .call(node, &info, Method::POST, &action, Some(&body), None)
                .await
            {
                Ok(_) => {
                    // The image's URL may be a capability (the boot
                    // interface's ISOs): not at info level.
                    tracing::info!(
                        node = %node.uuid,
                        bmc = %info.bmc(),
                        device = %candidate.path,
                        "virtual media inserted"
                    );
                    tracing::debug!(node = %node.uuid, image = %shown, "virtual media image");
                    return Ok(());
                }
                // Some devices serve the BMC's own console only (Cisco UCS):
                // try the next.
                Err(error) if matches!(error.status(), Some(400 | 405)) => {
                    refusals.push(hide(error.to_string()));
                }
                Err(error) => return Err(DriverError::Failed(hide(error_chain(&error)))),
            }
        }
        Err(DriverError::Failed(format!(
            "Redfish BMC {} could not insert {shown} into any {} virtual media device of node {}: \
             {}",
            info.bmc(),
            device.name(),
            node.uuid,
            refusals.join("; ")
        )))
    }

    /// Ejects the media of the node's virtual devices of kind `device`
    /// (all kinds: `None`). Returns whether any was inserted.
    pub async fn eject_virtual_media(
        &self,
        node: &Node,
        device: Option<VirtualMediaDevice>,
    ) -> Result<bool, DriverError> {
        let info = self.driver_info(node)?;
        let mut ejected = false;
        for media in self.media_devices(node, &info).await? {
            if media.inserted && device.is_none_or(|d| media.holds(d)) {
                self.eject(node, &info, &media).await?;
                ejected = true;
            }
        }
        Ok(ejected)
    }
}

fn transport_failure(info: &RedfishDriverInfo, request: &str, cause: reqwest::Error) -> Failure {
    if is_tls_refusal(&cause) {
        Failure::Final(RedfishError::Tls {
            bmc: info.bmc(),
            request: request.to_string(),
            cause,
        })
    } else if cause.is_redirect() || cause.is_builder() {
        Failure::Final(RedfishError::Answer {
            bmc: info.bmc(),
            problem: format!("{request}: {}", error_chain(&cause)),
        })
    } else {
        Failure::Retry(RedfishError::Unreachable {
            bmc: info.bmc(),
            request: request.to_string(),
            attempts: 1,
            cause,
        })
    }
}

fn credentials_error(info: &RedfishDriverInfo, request: &str, status: u16) -> RedfishError {
    RedfishError::Credentials {
        bmc: info.bmc(),
        request: request.to_string(),
        user: match &info.username {
            Some(user) => format!("user \"{user}\""),
            None => "the anonymous user (no redfish_username)".to_string(),
        },
        status,
    }
}

/// Drops the session `auth` used, unless another request replaced it
/// meanwhile.
async fn forget_login(slot: &LoginSlot, auth: &Auth) {
    let mut login = slot.lock().await;
    let stale = match (&*login, auth) {
        (Login::Session { token, .. }, Auth::Token(used)) => token == used,
        (Login::Session { .. }, _) => false,
        _ => true,
    };
    if stale {
        *login = Login::Unknown;
    }
}

/// The `redfish` power interface.
pub struct RedfishPower {
    client: Arc<RedfishClient>,
}

impl RedfishPower {
    pub fn new(client: Arc<RedfishClient>) -> RedfishPower {
        RedfishPower { client }
    }
}

#[async_trait]
impl PowerInterface for RedfishPower {
    fn validate(&self, node: &Node) -> Result<(), DriverError> {
        // As in Ironic, validation does not talk to the BMC.
        self.client.driver_info(node).map(|_| ())
    }

    async fn get_power_state(&self, node: &Node) -> Result<PowerState, DriverError> {
        let info = self.client.driver_info(node)?;
        Ok(self.client.power_state(node, &info).await?)
    }

    async fn set_power_state(
        &self,
        node: &Node,
        target: PowerState,
        timeout: Option<Duration>,
    ) -> Result<(), DriverError> {
        let info = self.client.driver_info(node)?;
        let options = self.client.options();
        let change_timeout = timeout.unwrap_or(options.power_state_change_timeout);
        match target {
            PowerState::On => {
                self.client
                    .power_action(
                        node,
                        &info,
                        &["On", "ForceOn"],
                        PowerState::On,
                        false,
                        change_timeout,
                    )
                    .await
            }
            PowerState::Off => {
                self.client
                    .power_action(
                        node,
                        &info,
                        &["ForceOff"],
                        PowerState::Off,
                        false,
                        change_timeout,
                    )
                    .await
            }
            PowerState::SoftPowerOff => {
                self.client
                    .power_action(
                        node,
                        &info,
                        &["GracefulShutdown"],
                        PowerState::Off,
                        false,
                        timeout.unwrap_or(options.soft_power_off_timeout),
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
        let info = self.client.driver_info(node)?;
        let change_timeout = timeout.unwrap_or(self.client.options().power_state_change_timeout);
        let on = |timeout| {
            self.client.power_action(
                node,
                &info,
                &["On", "ForceOn"],
                PowerState::On,
                false,
                timeout,
            )
        };
        let state = self.client.power_state(node, &info).await?;
        if state == PowerState::Off {
            return on(change_timeout).await;
        }
        if soft {
            // The system may report On all along: Ironic waits for On too.
            return self
                .client
                .power_action(
                    node,
                    &info,
                    &["GracefulRestart"],
                    PowerState::On,
                    true,
                    change_timeout,
                )
                .await;
        }
        if node.disable_power_off {
            // The node must never be off: a restart instead of off and on.
            return self
                .client
                .power_action(
                    node,
                    &info,
                    &["ForceRestart"],
                    PowerState::On,
                    true,
                    change_timeout,
                )
                .await;
        }
        self.client
            .power_action(
                node,
                &info,
                &["ForceOff"],
                PowerState::Off,
                false,
                change_timeout,
            )
            .await?;
        on(change_timeout).await
    }

    fn supports_soft_power(&self) -> bool {
        true
    }
}

/// The `redfish` management interface.
pub struct RedfishManagement {
    client: Arc<RedfishClient>,
}

impl RedfishManagement {
    pub fn new(client: Arc<RedfishClient>) -> RedfishManagement {
        RedfishManagement { client }
    }
}

fn boot_target(device: BootDevice) -> Option<&'static str> {
    BOOT_TARGETS
        .iter()
        .find(|(d, _)| *d == device)
        .map(|(_, target)| *target)
}

fn boot_device_of(target: &str) -> Option<BootDevice> {
    BOOT_TARGETS
        .iter()
        .find(|(_, t)| *t == target)
        .map(|(d, _)| *d)
}

#[async_trait]
impl ManagementInterface for RedfishManagement {
    fn validate(&self, node: &Node) -> Result<(), DriverError> {
        self.client.driver_info(node)?;
        BootMode::of_node(node, self.client.options().default_boot_mode).map(|_| ())
    }

    fn supported_boot_devices(&self, _node: &Node) -> Vec<BootDevice> {
        BOOT_TARGETS.iter().map(|(d, _)| *d).collect()
    }

    async fn get_boot_device(&self, node: &Node) -> Result<BootDeviceInfo, DriverError> {
        let info = self.client.driver_info(node)?;
        if let Some(target) = locked(&self.client.one_time_boot).get(&node.uuid) {
            // Set again before every power on: persistent for the operator.
            return Ok(BootDeviceInfo {
                boot_device: boot_device_of(target),
                persistent: Some(true),
            });
        }
        let (_, system) = self.client.system(node, &info).await?;
        let boot = &system.body["Boot"];
        Ok(BootDeviceInfo {
            boot_device: boot["BootSourceOverrideTarget"]
                .as_str()
                .and_then(boot_device_of),
            persistent: match boot["BootSourceOverrideEnabled"].as_str() {
                Some("Continuous") => Some(true),
                Some("Once") => Some(false),
                _ => None,
            },
        })
    }

    async fn set_boot_device(
        &self,
        node: &Node,
        device: BootDevice,
        persistent: bool,
    ) -> Result<(), DriverError> {
        let target = boot_target(device).ok_or_else(|| {
            let supported: Vec<&str> = BOOT_TARGETS.iter().map(|(d, _)| d.as_str()).collect();
            invalid(format!(
                "Invalid boot device {device} specified, supported are: {}",
                supported.join(", ")
            ))
        })?;
        let info = self.client.driver_info(node)?;
        let mode = BootMode::of_node(node, self.client.options().default_boot_mode)?;
        locked(&self.client.one_time_boot).remove(&node.uuid);
        let set = self
            .client
            .set_boot_override(node, &info, target, persistent, mode)
            .await;
        match set {
            // Continuous overrides were dropped from Redfish and some BMCs
            // refuse them: a one-time override, set again before each power
            // on.
            Err(error) if persistent && error.status().is_some_and(|s| (400..500).contains(&s)) => {
                tracing::warn!(
                    node = %node.uuid,
                    bmc = %info.bmc(),
                    error = %error_chain(&error),
                    "the BMC refused a persistent boot device; using a one-time one before each \
                     power on"
                );
                self.client
                    .set_boot_override(node, &info, target, false, mode)
                    .await?;
                locked(&self.client.one_time_boot).insert(node.uuid, target);
                Ok(())
            }
            other => Ok(other?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferric_types::ProvisionState;

    fn node(driver_info: Value) -> Node {
        let mut node = Node::new(Uuid::new_v4(), "redfish", ProvisionState::Enroll);
        node.driver_info = driver_info.as_object().unwrap().clone();
        node
    }

    fn info_of(driver_info: Value) -> Result<RedfishDriverInfo, DriverError> {
        RedfishDriverInfo::from_node(&node(driver_info), AuthType::Auto)
    }

    #[test]
    fn addresses_are_read_as_ironic_reads_them() {
        let info = info_of(json!({"redfish_address": "bmc-7.example.net"})).unwrap();
        assert_eq!(info.bmc(), "https://bmc-7.example.net");
        assert_eq!(info.root, "/redfish/v1/");
        assert_eq!(info.verify_ca, VerifyCa::SystemRoots);
        assert_eq!(info.auth_type, AuthType::Auto);
        let info = info_of(json!({"redfish_address": "http://10.0.0.1:8000/custom/root"})).unwrap();
        assert_eq!(info.bmc(), "http://10.0.0.1:8000");
        assert_eq!(info.root, "/custom/root/");
        assert_eq!(
            info_of(json!({"redfish_address": "::1"})).unwrap().bmc(),
            "https://[::1]"
        );
        let info = info_of(json!({
            "redfish_address": "https://[fd00::7]:8443", "redfish_system_id": "/redfish/v1/Systems/1",
            "redfish_auth_type": "session", "redfish_verify_ca": "False",
        }))
        .unwrap();
        assert_eq!(info.bmc(), "https://[fd00::7]:8443");
        assert_eq!(info.system_id.as_deref(), Some("/redfish/v1/Systems/1"));
        assert_eq!(info.auth_type, AuthType::Session);
        assert_eq!(info.verify_ca, VerifyCa::Disabled);
        let dir = std::env::temp_dir();
        let info = info_of(json!({"redfish_address": "h", "redfish_verify_ca": dir})).unwrap();
        assert_eq!(info.verify_ca, VerifyCa::Bundle(dir));
    }

    #[test]
    fn driver_info_refusals_say_what_is_wrong() {
        for (driver_info, expected) in [
            (json!({}), "Missing the following Redfish properties"),
            (json!({"redfish_address": " "}), "redfish_address"),
            (
                json!({"redfish_address": "ftp://bmc"}),
                "scheme must be https or http",
            ),
            (
                json!({"redfish_address": "https://root:calvin@bmc"}),
                "must not hold credentials",
            ),
            (json!({"redfish_address": "https://bmc/?x=1"}), "query"),
            (
                json!({"redfish_address": "https://"}),
                "Invalid Redfish address",
            ),
            (
                json!({"redfish_address": "bmc", "redfish_system_id": "Systems/1"}),
                "redfish_system_id",
            ),
            (
                json!({"redfish_address": "bmc", "redfish_auth_type": "digest"}),
                "\"basic\", \"session\" or \"auto\"",
            ),
            (
                json!({"redfish_address": "bmc", "redfish_verify_ca": "/no/such/ca.pem"}),
                "redfish_verify_ca",
            ),
            (
                json!({"redfish_address": "bmc", "redfish_verify_ca": 3}),
                "redfish_verify_ca",
            ),
            (
                json!({"redfish_address": "bmc", "redfish_username": ["x"]}),
                "redfish_username must be a string",
            ),
        ] {
            let err = info_of(driver_info.clone()).unwrap_err();
            assert!(
                matches!(err, DriverError::InvalidParameter(_)),
                "{driver_info}: {err:?}"
            );
            assert!(err.to_string().contains(expected), "{driver_info}: {err}");
        }
    }

    #[test]
    fn the_password_is_in_no_debug_output_and_scrubbed_from_messages() {
        let info = info_of(json!({
            "redfish_address": "bmc", "redfish_username": "admin", "redfish_password": "pa55-Secret",
        }))
        .unwrap();
        let debug = format!("{info:?}");
        assert!(
            !debug.contains("pa55-Secret") && debug.contains("admin"),
            "{debug}"
        );
        assert_eq!(info.scrub("echo pa55-Secret"), "echo ******");
        let media = VirtualMedia::of(
            "/vm/1".into(),
            &json!({"Image": "https://u:pw@images/boot.iso?temp_url_sig=abc", "Inserted": true}),
        );
        let debug = format!("{media:?}");
        assert!(!debug.contains("pw@") && !debug.contains("abc"), "{debug}");
    }

    #[test]
    fn links_off_the_bmc_are_refused() {
        let info = info_of(json!({"redfish_address": "https://bmc:8443"})).unwrap();
        assert_eq!(
            info.url("/redfish/v1/Systems/1").unwrap().as_str(),
            "https://bmc:8443/redfish/v1/Systems/1"
        );
        assert!(info.url("https://elsewhere/redfish/v1").is_err());
        assert!(info.url("//elsewhere/redfish/v1").is_err());
    }

    #[test]
    fn vendor_quirks_are_decided_in_one_place() {
        let default = VendorQuirks::of(None);
        assert_eq!(default.boot_mode_field, BootModeField::WhenDifferent);
        assert!(!default.always_send_enabled && !default.if_match);
        assert_eq!(VendorQuirks::of(Some("Sushy Emulator")), default);
        let supermicro = VendorQuirks::of(Some("Supermicro"));
        assert!(supermicro.always_send_enabled);
        assert_eq!(supermicro.boot_mode_field, BootModeField::Always);
        assert_eq!(
            VendorQuirks::of(Some("Dell Inc.")).boot_mode_field,
            BootModeField::Never
        );
        assert!(VendorQuirks::of(Some("HPE")).if_match);
        assert!(VendorQuirks::of(Some("AMI")).always_send_enabled);
        assert_eq!(VendorQuirks::of(Some("Miami Systems")), default);
    }

    #[test]
    fn boot_patches_send_only_what_the_bmc_takes() {
        let current =
            json!({"BootSourceOverrideEnabled": "Continuous", "BootSourceOverrideMode": "UEFI"});
        let plain = VendorQuirks::of(None);
        assert_eq!(
            boot_patch(&current, "Pxe", true, BootMode::Uefi, plain),
            json!({"BootSourceOverrideTarget": "Pxe"})
        );
        assert_eq!(
            boot_patch(&current, "Hdd", false, BootMode::Bios, plain),
            json!({"BootSourceOverrideTarget": "Hdd", "BootSourceOverrideEnabled": "Once",
                   "BootSourceOverrideMode": "Legacy"})
        );
        // A BMC that reports no mode cannot take one.
        assert_eq!(
            boot_patch(&json!({}), "Cd", false, BootMode::Bios, plain),
            json!({"BootSourceOverrideTarget": "Cd", "BootSourceOverrideEnabled": "Once"})
        );
        assert_eq!(
            boot_patch(
                &current,
                "Pxe",
                true,
                BootMode::Uefi,
                VendorQuirks::of(Some("Supermicro"))
            ),
            json!({"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Continuous",
                   "BootSourceOverrideMode": "UEFI"})
        );
        assert_eq!(
            boot_patch(
                &current,
                "Pxe",
                true,
                BootMode::Bios,
                VendorQuirks::of(Some("Dell Inc."))
            ),
            json!({"BootSourceOverrideTarget": "Pxe"})
        );
    }

    #[test]
    fn reset_types_are_chosen_from_what_the_system_allows() {
        let allowed = [json!("ForceOn"), json!("ForceOff")];
        assert_eq!(
            choose_reset_type(Some(&allowed), &["On", "ForceOn"]),
            Ok("ForceOn")
        );
        assert_eq!(choose_reset_type(None, &["On", "ForceOn"]), Ok("On"));
        let err = choose_reset_type(Some(&allowed), &["GracefulShutdown"]).unwrap_err();
        assert!(err.contains("allows ForceOn, ForceOff"), "{err}");
    }

    #[test]
    fn power_states_and_error_answers_are_read() {
        assert_eq!(
            power_state_of(&json!({"PowerState": "PoweringOn"})),
            Some(PowerState::On)
        );
        assert_eq!(
            power_state_of(&json!({"PowerState": "Off"})),
            Some(PowerState::Off)
        );
        assert_eq!(power_state_of(&json!({"PowerState": "Paused"})), None);
        let body = json!({"error": {"message": "General error", "@Message.ExtendedInfo": [
            {"MessageId": "Base.1.8.PropertyValueNotInList", "Message": "BiosSetup is not allowed"}]}});
        assert_eq!(
            error_message(&body),
            "General error; BiosSetup is not allowed"
        );
        assert_eq!(error_message(&Value::Null), "no message");
    }

    #[test]
    fn options_parse_strictly() {
        let options: RedfishOptions = serde_json::from_value(
            json!({"connection_attempts": 2, "connection_retry_interval": 0.1, "auth_type": "basic"}),
        )
        .unwrap();
        assert_eq!(
            options.connection_retry_interval,
            Duration::from_millis(100)
        );
        assert_eq!(options.auth_type, AuthType::Basic);
        assert_eq!(options.soft_power_off_timeout, Duration::from_secs(600));
        assert!(serde_json::from_value::<RedfishOptions>(json!({"attempts": 1})).is_err());
    }
}
