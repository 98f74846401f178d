//! The `ipxe` and `pxe` boot interfaces. With `ipxe`, nodes network-boot
//! iPXE, which fetches a script for their MAC address from ferricd's HTTP
//! server (`GET /boot/ipxe/{mac}`). With `pxe` (BIOS only), they boot
//! PXELINUX (`lpxelinux.0`), which fetches its configuration over HTTP
//! (`GET /boot/pxelinux/pxelinux.cfg/01-{mac}`, DHCP option 210 naming the
//! prefix). The script is rendered when it is asked for,
//! from the node as it stands in the store, so every ferricd sharing a
//! database answers the same and nothing on disk can go stale:
//! - while the deploy ramdisk is prepared (`prepare_ramdisk` until
//!   `clean_up_ramdisk`), it boots the deploy kernel and ramdisk with the
//!   agent's parameters;
//! - while the anaconda deploy's installer runs, the installer's kernel and
//!   initrd with `inst.ks=` and `inst.stage2=` or `inst.repo=`;
//! - the instance kernel and ramdisk (or `boot_iso`) of a ramdisk deploy;
//! - otherwise it boots the local disk, so a node that network-boots after
//!   its deployment never loops back into the ramdisk.
//!
//! DHCP is dnsmasq's: for each PXE-enabled port, a file in its
//! `--dhcp-hostsdir` tags the MAC `ferric`, and only tagged MACs get boot
//! options (see `ferricd`'s managed dnsmasq). Entries stay once written:
//! dnsmasq only adds host records from that directory (a removed file is
//! forgotten only on SIGHUP), and dnsmasq 2.90 dies of SIGSEGV when it is
//! signalled after the file of a MAC holding a lease went away. What a
//! tagged node boots is decided by its script, which boots the disk unless
//! the ramdisk is prepared.
//!
//! Templates are minijinja's Jinja2 dialect without any loader: a template
//! cannot include files, read the environment or call anything but its
//! built-in filters. Operators can replace the script with their own.

use crate::interfaces::*;
use crate::ipmi::BootMode;
use crate::DriverError;
use async_trait::async_trait;
use ferric_types::kernel_params::{self, BootLoader};
use ferric_types::{Node, Port, ProvisionState};
use minijinja::Environment;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The per-node iPXE script shipped with Ferric.
pub const DEFAULT_TEMPLATE: &str = include_str!("ipxe_script.j2");
/// The per-node PXELINUX configuration shipped with Ferric.
pub const DEFAULT_PXELINUX_TEMPLATE: &str = include_str!("pxelinux_config.j2");

/// The boot loader a node's firmware is handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loader {
    /// The `ipxe` boot interface.
    Ipxe,
    /// The `pxe` boot interface: PXELINUX, BIOS only.
    Pxelinux,
}

/// Marks a node whose deploy ramdisk is prepared.
const RAMDISK_KEY: &str = "ipxe_ramdisk";

/// Where the iPXE files come from and what the ramdisk is told, as
/// `[conductor.pxe]` in ferricd.toml (Ironic's `[pxe]` options).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PxeOptions {
    /// The base URL at which nodes reach ferricd's HTTP listener, e.g.
    /// "http://192.0.2.1:6385". Default: the conductor's image_url_base.
    pub http_url: Option<String>,
    /// The API URL the agent calls (`ipa-api-url`); default: http_url.
    pub api_url: Option<String>,
    /// The deploy kernel and ramdisk on this machine, served at
    /// /boot/deploy/kernel and /boot/deploy/ramdisk. A node's driver_info
    /// `deploy_kernel` / `deploy_ramdisk` (http or https URLs) override them.
    pub deploy_kernel: Option<PathBuf>,
    pub deploy_ramdisk: Option<PathBuf>,
    /// Kernel parameters of the deploy ramdisk; a node's driver_info
    /// `kernel_append_params` overrides them, where `%default%` stands for
    /// this value. Default: "nofb vga=normal" (as Ironic).
    pub kernel_append_params: String,
    /// An operator's own per-node script template (see the shipped
    /// `ipxe_script.j2` for its variables).
    pub ipxe_template: Option<PathBuf>,
    /// The same for PXELINUX configurations (`pxelinux_config.j2`).
    pub pxelinux_template: Option<PathBuf>,
    /// Where PXELINUX's BIOS modules are (ldlinux.c32 is served from
    /// there). Default: "/usr/lib/syslinux/modules/bios".
    pub syslinux_modules_dir: PathBuf,
    /// dnsmasq's `--dhcp-hostsdir`: one file per PXE-enabled port, written
    /// when its node first boots the ramdisk. Default: none (DHCP is
    /// someone else's).
    pub dhcp_hosts_dir: Option<PathBuf>,
    /// The tag host entries set, which the DHCP server's boot options
    /// match. Default: "ferric".
    pub dhcp_tag: String,
    /// Boot mode of nodes that say nothing of theirs; default: "uefi".
    pub default_boot_mode: String,
    /// Seconds after which a node that network-booted and never called
    /// back (no agent heartbeat, no installer callback) is rebooted again
    /// (Ironic's `[pxe]boot_retry_timeout`); at least 10 (Ironic: 60). Default: none,
    /// no retries. A node that called back once is not retried: a long
    /// anaconda installation is left to `deploy_callback_timeout`.
    pub boot_retry_timeout: Option<u64>,
    /// The static ferric-agent binary served at /boot/agent/ferric-agent,
    /// for live systems that fetch it (`ferric ignition`). Default: none.
    pub agent_binary: Option<PathBuf>,
}

impl Default for PxeOptions {
    fn default() -> Self {
        PxeOptions {
            http_url: None,
            api_url: None,
            deploy_kernel: None,
            deploy_ramdisk: None,
            kernel_append_params: "nofb vga=normal".to_string(),
            ipxe_template: None,
            pxelinux_template: None,
            syslinux_modules_dir: PathBuf::from("/usr/lib/syslinux/modules/bios"),
            dhcp_hosts_dir: None,
            dhcp_tag: "ferric".to_string(),
            default_boot_mode: "uefi".to_string(),
            boot_retry_timeout: None,
            agent_binary: None,
        }
    }
}

impl PxeOptions {
    /// Where nodes (and BMCs, for virtual media) reach this server, without
    /// a trailing slash.
    pub fn http_url(&self) -> Result<&str, DriverError> {
        let url = self.http_url.as_deref().ok_or_else(|| {
            DriverError::InvalidParameter(
                "booting nodes needs the URL they (and BMCs) reach this server at: set \
                 [conductor.pxe] http_url (or image_url_base or public_url)"
                    .into(),
            )
        })?;
        check_url(url)
            .and_then(|()| match url.contains(['?', '#']) {
                true => Err(format!("{url:?} holds a query or a fragment")),
                false => Ok(()),
            })
            .map_err(|e| DriverError::InvalidParameter(format!("[conductor.pxe] http_url: {e}")))?;
        Ok(url.trim_end_matches('/'))
    }

    /// The API URL the agent calls back (`ipa-api-url`).
    pub fn api_url(&self) -> Result<&str, DriverError> {
        match self.api_url.as_deref() {
            Some(url) => {
                check_url(url).map_err(|e| {
                    DriverError::InvalidParameter(format!("[conductor.pxe] api_url: {e}"))
                })?;
                Ok(url.trim_end_matches('/'))
            }
            None => self.http_url(),
        }
    }

    /// The deploy ramdisk's kernel parameters for the node, without what
    /// Ferric adds per boot: driver_info `kernel_append_params` (where
    /// `%default%` stands for the server's), or the server's; checked for
    /// `loader`.
    pub fn append_params(&self, node: &Node, loader: BootLoader) -> Result<String, DriverError> {
        let params = match node.driver_info.get("kernel_append_params") {
            Some(Value::String(s)) => s.replace("%default%", &self.kernel_append_params),
            None | Some(Value::Null) => self.kernel_append_params.clone(),
            Some(other) => {
                return Err(DriverError::InvalidParameter(format!(
                    "driver_info kernel_append_params must be a string, got {other}"
                )))
            }
        };
        kernel_params::validate(&params, loader).map_err(|e| {
            DriverError::InvalidParameter(format!("driver_info kernel_append_params: {e}"))
        })?;
        Ok(params)
    }
}

/// A MAC address in the lower-case colon form ports store; accepts
/// colons, hyphens (iPXE's `${mac:hexhyp}`) or none.
pub fn normalize_mac(text: &str) -> Option<String> {
    let hex: String = text
        .chars()
        .filter(|c| *c != ':' && *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() != 12 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let pairs: Vec<&str> = (0..6).map(|i| &hex[2 * i..2 * i + 2]).collect();
    Some(pairs.join(":"))
}

/// The `ipxe` or `pxe` boot interface.
pub struct IpxeBoot {
    options: PxeOptions,
    default_mode: BootMode,
    templates: Environment<'static>,
    loader: Loader,
}

impl IpxeBoot {
    /// Checks the options and compiles the templates (the operator's or the
    /// shipped ones): a broken template stops ferricd at start.
    pub fn new(options: PxeOptions) -> Result<IpxeBoot, DriverError> {
        Self::with_loader(options, Loader::Ipxe)
    }

    /// The interface for `loader`.
    pub fn with_loader(options: PxeOptions, loader: Loader) -> Result<IpxeBoot, DriverError> {
        let bad = |what: String| DriverError::InvalidParameter(format!("[conductor.pxe] {what}"));
        for (name, url) in [
            ("http_url", &options.http_url),
            ("api_url", &options.api_url),
        ] {
            if let Some(url) = url {
                check_url(url).map_err(|e| bad(format!("{name}: {e}")))?;
            }
        }
        kernel_params::validate(&options.kernel_append_params, BootLoader::Ipxe)
            .map_err(|e| bad(format!("kernel_append_params: {e}")))?;
        let default_mode = match options.default_boot_mode.as_str() {
            "uefi" => BootMode::Uefi,
            "bios" => BootMode::Bios,
            other => {
                return Err(bad(format!(
                    "default_boot_mode {other:?}: use bios or uefi"
                )))
            }
        };
        if options.dhcp_tag.is_empty()
            || !options
                .dhcp_tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad(format!(
                "dhcp_tag {:?}: letters, digits, - and _ only",
                options.dhcp_tag
            )));
        }
        if options.boot_retry_timeout.is_some_and(|t| t < 10) {
            return Err(bad("boot_retry_timeout: at least 10 seconds".into()));
        }
        let mut templates = Environment::new();
        templates.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        for (name, path, default) in [
            ("ipxe_template", &options.ipxe_template, DEFAULT_TEMPLATE),
            (
                "pxelinux_template",
                &options.pxelinux_template,
                DEFAULT_PXELINUX_TEMPLATE,
            ),
        ] {
            let source = match path {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|e| bad(format!("{name} {}: {e}", path.display())))?,
                None => default.to_string(),
            };
            templates
                .add_template_owned(name, source)
                .map_err(|e| bad(format!("{name}: {e:#}")))?;
        }
        Ok(IpxeBoot {
            options,
            default_mode,
            templates,
            loader,
        })
    }

    pub fn options(&self) -> &PxeOptions {
        &self.options
    }

    pub fn loader(&self) -> Loader {
        self.loader
    }

    /// The tag of this interface's DHCP host entries.
    pub fn dhcp_tag(&self) -> String {
        match self.loader {
            Loader::Ipxe => self.options.dhcp_tag.clone(),
            Loader::Pxelinux => format!("{}-pxe", self.options.dhcp_tag),
        }
    }

    /// A PXELINUX module served to `pxe` nodes (only ldlinux.c32, which
    /// PXELINUX loads first; the shipped configuration needs nothing else).
    pub fn pxelinux_module(&self, name: &str) -> Option<PathBuf> {
        (name == "ldlinux.c32").then(|| self.options.syslinux_modules_dir.join(name))
    }

    /// The script iPXE gets from DHCP (option 175 clients): it chains to
    /// the script of the MAC it booted from.
    pub fn entry_script(&self) -> Result<String, DriverError> {
        let base = self.options.http_url()?;
        Ok(format!(
            "#!ipxe\n\
             # Ferric: fetch this machine's own script.\n\
             chain --autofree {base}/boot/ipxe/${{mac:hexhyp}} || goto none\n\
             :none\n\
             echo Ferric has no boot script for ${{mac}}: booting the next device\n\
             exit\n"
        ))
    }

    /// Where the deploy kernel or ramdisk comes from: the node's
    /// driver_info URL, or this server's configured file.
    fn deploy_file_url(&self, node: &Node, key: &str) -> Result<String, DriverError> {
        match node.driver_info.get(key) {
            Some(Value::String(url)) if !url.is_empty() => {
                check_url(url).map_err(|e| {
                    DriverError::InvalidParameter(format!("driver_info {key}: {e}"))
                })?;
                Ok(url.clone())
            }
            Some(Value::Null) | None => {
                let configured = match key {
                    "deploy_kernel" => &self.options.deploy_kernel,
                    _ => &self.options.deploy_ramdisk,
                };
                if configured.is_none() {
                    return Err(DriverError::InvalidParameter(format!(
                        "the node has no {key}: set driver_info {key} to an http(s) URL, or \
                         [conductor.pxe] {key} to a file on the server"
                    )));
                }
                let name = key.trim_start_matches("deploy_");
                Ok(format!("{}/boot/deploy/{name}", self.options.http_url()?))
            }
            Some(other) => Err(DriverError::InvalidParameter(format!(
                "driver_info {key} must be an http(s) URL, got {other}"
            ))),
        }
    }

    /// The file of the deploy kernel or ramdisk this server serves.
    pub fn served_file(&self, name: &str) -> Option<&Path> {
        match name {
            "kernel" => self.options.deploy_kernel.as_deref(),
            "ramdisk" => self.options.deploy_ramdisk.as_deref(),
            _ => None,
        }
    }

    /// What the node boots now (see [`NetworkBoot`]).
    pub fn network_boot(&self, node: &Node) -> Result<NetworkBoot, DriverError> {
        let ramdisk = node.driver_internal_info.get(RAMDISK_KEY) == Some(&Value::Bool(true));
        let deploy_interface = node.deploy_interface.as_deref().unwrap_or("");
        let installing = matches!(
            node.provision_state,
            ProvisionState::Deploying | ProvisionState::WaitCallBack
        );
        if ramdisk && deploy_interface == "anaconda" && installing {
            // Once the installer said it ended (or failed), a reboot it
            // makes itself must not start it again before the conductor
            // has taken the callback in.
            let status = node
                .driver_internal_info
                .get("agent_status")
                .and_then(Value::as_str);
            if matches!(status, Some("end" | "error")) {
                return Ok(NetworkBoot::Local);
            }
            if let Some(boot) = node.driver_internal_info.get(INSTALLER_KEY) {
                return installer_boot(boot);
            }
        }
        if ramdisk {
            return Ok(NetworkBoot::Deploy);
        }
        // A ramdisk instance boots from the network while it is deployed.
        let deployed = installing || node.provision_state == ProvisionState::Active;
        if deploy_interface == "ramdisk" && deployed {
            return instance_ramdisk(node, self.loader);
        }
        Ok(NetworkBoot::Local)
    }

    /// The script for the node's port `mac` (normalized).
    pub fn script(&self, node: &Node, mac: &str) -> Result<String, DriverError> {
        let boot_mode = match BootMode::of_node(node, self.default_mode)? {
            BootMode::Uefi => "uefi",
            BootMode::Bios => "bios",
        };
        let boot = self.network_boot(node)?;
        let mode = match &boot {
            NetworkBoot::Deploy => "deploy",
            NetworkBoot::Installer { .. } => "installer",
            NetworkBoot::Ramdisk { .. } => "ramdisk",
            NetworkBoot::Iso { .. } => "iso",
            NetworkBoot::Local => "local",
        };
        let mut context: BTreeMap<&str, String> = BTreeMap::from([
            ("mode", mode.to_string()),
            ("boot_mode", boot_mode.to_string()),
            ("mac", mac.to_string()),
            ("node_uuid", node.uuid.to_string()),
            ("http_url", self.options.http_url()?.to_string()),
        ]);
        let bootif = format!("BOOTIF=01-{}", mac.replace(':', "-"));
        match boot {
            NetworkBoot::Deploy => {
                let api_url = self.options.api_url()?;
                let mut params = self.options.append_params(node, BootLoader::Ipxe)?;
                // What the agent needs: where the API is, and which NIC booted.
                params.push_str(&format!(" ipa-api-url={api_url} {bootif}"));
                context.insert("kernel_url", self.deploy_file_url(node, "deploy_kernel")?);
                context.insert("ramdisk_url", self.deploy_file_url(node, "deploy_ramdisk")?);
                context.insert("kernel_params", params.trim().to_string());
            }
            NetworkBoot::Installer {
                kernel,
                ramdisk,
                params,
            }
            | NetworkBoot::Ramdisk {
                kernel,
                ramdisk,
                params,
            } => {
                // Their own parameters (the installer's inst.ks and
                // inst.stage2 or inst.repo; ramdisk_kernel_arguments) after
                // the server's, and the NIC that booted.
                let append = self.options.append_params(node, BootLoader::Ipxe)?;
                context.insert("kernel_url", kernel);
                context.insert("ramdisk_url", ramdisk);
                context.insert(
                    "kernel_params",
                    format!("{append} {params} {bootif}").trim().to_string(),
                );
            }
            NetworkBoot::Iso { url } => {
                context.insert("iso_url", url);
            }
            NetworkBoot::Local => {}
        }
        let name = match self.loader {
            Loader::Ipxe => "ipxe_template",
            Loader::Pxelinux => "pxelinux_template",
        };
        let template = self
            .templates
            .get_template(name)
            .map_err(|e| DriverError::Failed(format!("the {name}: {e:#}")))?;
        let script = template
            .render(minijinja::Value::from(context))
            .map_err(|e| DriverError::Failed(format!("rendering the {name}: {e:#}")))?;
        Ok(script)
    }

    fn host_entry_path(&self, dir: &Path, mac: &str) -> PathBuf {
        dir.join(format!("ferric-{}", mac.replace(':', "-")))
    }

    /// Writes a dnsmasq host entry per PXE-enabled port.
    fn add_host_entries(&self, ports: &[Port]) -> Result<(), DriverError> {
        let Some(dir) = &self.options.dhcp_hosts_dir else {
            return Ok(());
        };
        for port in ports.iter().filter(|p| p.pxe_enabled) {
            let mac = normalize_mac(&port.address).ok_or_else(|| {
                DriverError::InvalidParameter(format!("port {}: bad MAC", port.uuid))
            })?;
            let path = self.host_entry_path(dir, &mac);
            // Written aside and renamed: dnsmasq's inotify never reads half a line.
            let temp = dir.join(format!(".{mac}.tmp"));
            std::fs::write(&temp, format!("{mac},set:{}\n", self.dhcp_tag()))
                .and_then(|()| std::fs::rename(&temp, &path))
                .map_err(|e| {
                    DriverError::Failed(format!("writing the DHCP entry {}: {e}", path.display()))
                })?;
        }
        Ok(())
    }
}

/// What a node network-boots, decided from the node as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkBoot {
    /// The deploy ramdisk and its agent (deploy, cleaning).
    Deploy,
    /// An installer (the anaconda deploy): its kernel and initrd, and its
    /// parameters (`inst.ks=`, `inst.stage2=` or `inst.repo=`).
    Installer {
        kernel: String,
        ramdisk: String,
        params: String,
    },
    /// The instance is a ramdisk (the ramdisk deploy): instance_info
    /// `kernel` and `ramdisk`, with `ramdisk_kernel_arguments`.
    Ramdisk {
        kernel: String,
        ramdisk: String,
        params: String,
    },
    /// The instance is an ISO (the ramdisk deploy's `boot_iso`), booted
    /// with iPXE's sanboot.
    Iso { url: String },
    /// The local disk.
    Local,
}

/// Where the anaconda deploy records the installer's boot: `{kernel,
/// ramdisk, params}` (URLs checked, parameters checked for iPXE).
pub const INSTALLER_KEY: &str = "anaconda_boot";

fn installer_boot(boot: &Value) -> Result<NetworkBoot, DriverError> {
    let field = |name: &str| {
        boot.get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                DriverError::Failed(format!("driver_internal_info {INSTALLER_KEY} lacks {name}"))
            })
    };
    let (kernel, ramdisk, params) = (field("kernel")?, field("ramdisk")?, field("params")?);
    for url in [&kernel, &ramdisk] {
        check_url(url).map_err(DriverError::Failed)?;
    }
    kernel_params::validate(&params, BootLoader::Ipxe)
        .map_err(|e| DriverError::Failed(format!("the installer's kernel parameters: {e}")))?;
    Ok(NetworkBoot::Installer {
        kernel,
        ramdisk,
        params,
    })
}

/// The instance of a ramdisk deploy: instance_info `kernel` + `ramdisk`
/// (http(s) URLs the node fetches itself) with `ramdisk_kernel_arguments`,
/// or `boot_iso` (iPXE only).
pub fn instance_ramdisk(node: &Node, loader: Loader) -> Result<NetworkBoot, DriverError> {
    let text = |key: &str| -> Result<Option<String>, DriverError> {
        match node.instance_info.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(DriverError::InvalidParameter(format!(
                "instance_info {key} must be a string, got {other}"
            ))),
        }
    };
    let url = |key: &str| -> Result<Option<String>, DriverError> {
        let value = text(key)?;
        if let Some(url) = &value {
            check_url(url)
                .map_err(|e| DriverError::InvalidParameter(format!("instance_info {key}: {e}")))?;
        }
        Ok(value)
    };
    let params = text("ramdisk_kernel_arguments")?.unwrap_or_default();
    kernel_params::validate(&params, BootLoader::Ipxe).map_err(|e| {
        DriverError::InvalidParameter(format!("instance_info ramdisk_kernel_arguments: {e}"))
    })?;
    match (url("kernel")?, url("ramdisk")?, url("boot_iso")?) {
        // An ISO wins, as in Ironic, where it can be booted.
        (_, _, Some(iso)) if loader == Loader::Ipxe => Ok(NetworkBoot::Iso { url: iso }),
        (Some(kernel), Some(ramdisk), _) => Ok(NetworkBoot::Ramdisk {
            kernel,
            ramdisk,
            params,
        }),
        (None, None, Some(_)) => Err(DriverError::InvalidParameter(
            "instance_info boot_iso: the pxe boot interface cannot boot an ISO; use ipxe or \
             redfish-virtual-media"
                .into(),
        )),
        (Some(_), None, _) | (None, Some(_), _) => Err(DriverError::InvalidParameter(
            "the ramdisk deploy needs both instance_info kernel and ramdisk (http(s) URLs)".into(),
        )),
        (None, None, None) => Err(DriverError::InvalidParameter(
            "the ramdisk deploy needs instance_info kernel and ramdisk (http(s) URLs), or \
             boot_iso"
                .into(),
        )),
    }
}

/// An http(s) URL that can go into a boot script or an ISO's boot loader
/// configuration as it is.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    // Messages show the URL without its credentials.
    let shown = ferric_types::url::mask_credentials(url);
    let url_for_message = shown.as_ref();
    check_url_shape(url).map_err(|why| format!("{url_for_message:?} {why}"))
}

fn check_url_shape(url: &str) -> Result<(), &'static str> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("is not an http(s) URL");
    }
    if url
        .chars()
        .any(|c| c.is_ascii_control() || c.is_whitespace() || matches!(c, '$' | '"' | '\'' | '\\'))
    {
        return Err("holds spaces, control characters, quotes or $");
    }
    Ok(())
}

#[async_trait]
impl BootInterface for IpxeBoot {
    fn validate(&self, node: &Node) -> Result<(), DriverError> {
        self.options.http_url()?;
        self.deploy_file_url(node, "deploy_kernel")?;
        self.deploy_file_url(node, "deploy_ramdisk")?;
        self.options.append_params(node, BootLoader::Ipxe)?;
        let mode = BootMode::of_node(node, self.default_mode)?;
        if self.loader == Loader::Pxelinux && mode == BootMode::Uefi {
            return Err(DriverError::InvalidParameter(
                "the pxe boot interface boots BIOS nodes (PXELINUX); this node boots UEFI: \
                 use the ipxe boot interface, or set the boot_mode:bios capability"
                    .into(),
            ));
        }
        Ok(())
    }

    async fn prepare_ramdisk(
        &self,
        node: &mut Node,
        context: BootContext<'_>,
    ) -> Result<(), DriverError> {
        self.validate(node)?;
        if !context.ports.iter().any(|p| p.pxe_enabled) {
            return Err(DriverError::InvalidParameter(
                "the node has no PXE-enabled port: it cannot network-boot".into(),
            ));
        }
        self.add_host_entries(context.ports)?;
        node.driver_internal_info
            .insert(RAMDISK_KEY.into(), Value::Bool(true));
        context
            .management
            .set_boot_device(node, BootDevice::Pxe, false)
            .await
    }

    async fn clean_up_ramdisk(
        &self,
        node: &mut Node,
        context: BootContext<'_>,
    ) -> Result<(), DriverError> {
        // The DHCP entries stay (see the module's documentation).
        let _ = context;
        node.driver_internal_info.remove(RAMDISK_KEY);
        Ok(())
    }

    async fn prepare_instance(
        &self,
        node: &mut Node,
        context: BootContext<'_>,
    ) -> Result<(), DriverError> {
        // The script of a node without a ramdisk boots its disk, or the
        // instance ramdisk of a ramdisk deploy, which keeps booting from
        // the network.
        self.clean_up_ramdisk(node, context).await?;
        let device = match node.deploy_interface.as_deref() {
            Some("ramdisk") => {
                // The instance boots from the network: DHCP must know it.
                self.validate(node)?;
                instance_ramdisk(node, self.loader)?;
                if !context.ports.iter().any(|p| p.pxe_enabled) {
                    return Err(DriverError::InvalidParameter(
                        "the node has no PXE-enabled port: it cannot network-boot its ramdisk"
                            .into(),
                    ));
                }
                self.add_host_entries(context.ports)?;
                BootDevice::Pxe
            }
            _ => BootDevice::Disk,
        };
        context.management.set_boot_device(node, device, true).await
    }

    async fn clean_up_instance(
        &self,
        node: &mut Node,
        context: BootContext<'_>,
    ) -> Result<(), DriverError> {
        self.clean_up_ramdisk(node, context).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferric_types::ProvisionState;
    use serde_json::json;

    fn options() -> PxeOptions {
        PxeOptions {
            http_url: Some("http://10.0.0.1:6385/".into()),
            deploy_kernel: Some("/srv/k".into()),
            deploy_ramdisk: Some("/srv/r".into()),
            kernel_append_params: "console=ttyS0".into(),
            ..PxeOptions::default()
        }
    }

    fn node() -> Node {
        Node::new(uuid::Uuid::new_v4(), "ipmi", ProvisionState::Deploying)
    }

    #[test]
    fn macs_are_normalized_from_any_form() {
        assert_eq!(
            normalize_mac("52-54-00-AB-cd-01").as_deref(),
            Some("52:54:00:ab:cd:01")
        );
        assert_eq!(
            normalize_mac("525400abcd01").as_deref(),
            Some("52:54:00:ab:cd:01")
        );
        for bad in ["52:54:00:ab:cd", "52:54:00:ab:cd:0g", "../etc/passwd", ""] {
            assert_eq!(normalize_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_ramdisk_script_boots_the_deploy_files_with_the_agent_parameters() {
        let boot = IpxeBoot::new(options()).unwrap();
        let mut node = node();
        node.driver_internal_info
            .insert(RAMDISK_KEY.into(), json!(true));
        let script = boot.script(&node, "52:54:00:00:00:01").unwrap();
        assert!(script.starts_with("#!ipxe\n"), "{script}");
        assert!(
            script.contains(
                "kernel http://10.0.0.1:6385/boot/deploy/kernel console=ttyS0 \
             ipa-api-url=http://10.0.0.1:6385 BOOTIF=01-52-54-00-00-00-01 initrd=ramdisk"
            ),
            "{script}"
        );
        assert!(
            script.contains("initrd --name ramdisk http://10.0.0.1:6385/boot/deploy/ramdisk"),
            "{script}"
        );

        // The node's own files and parameters win; %default% keeps ours.
        node.driver_info
            .insert("deploy_kernel".into(), json!("https://h/k"));
        node.driver_info.insert(
            "kernel_append_params".into(),
            json!("%default% ipa-debug=1"),
        );
        let script = boot.script(&node, "52:54:00:00:00:01").unwrap();
        assert!(
            script.contains("kernel https://h/k console=ttyS0 ipa-debug=1 ipa-api"),
            "{script}"
        );
    }

    #[test]
    fn without_a_ramdisk_the_script_boots_the_disk() {
        let boot = IpxeBoot::new(options()).unwrap();
        let mut node = node();
        let script = boot.script(&node, "52:54:00:00:00:01").unwrap();
        assert!(!script.contains("kernel "), "{script}");
        assert!(script.contains("exit"), "{script}");
        node.properties
            .insert("capabilities".into(), json!("boot_mode:bios"));
        let script = boot.script(&node, "52:54:00:00:00:01").unwrap();
        assert!(
            script.contains("sanboot --no-describe --drive 0x80"),
            "{script}"
        );
    }

    #[test]
    fn installers_and_instance_ramdisks_boot_only_while_they_should() {
        let boot = IpxeBoot::new(options()).unwrap();
        let pxelinux = IpxeBoot::with_loader(options(), Loader::Pxelinux).unwrap();
        let mut node = node();
        node.deploy_interface = Some("anaconda".into());
        node.driver_internal_info
            .insert(RAMDISK_KEY.into(), json!(true));
        // Cleaning an anaconda node boots the deploy ramdisk.
        assert_eq!(boot.network_boot(&node).unwrap(), NetworkBoot::Deploy);
        node.driver_internal_info.insert(
            INSTALLER_KEY.into(),
            json!({"kernel": "http://m/vmlinuz", "ramdisk": "http://m/initrd.img",
                   "params": "inst.ks=http://10.0.0.1:6385/boot/kickstart/x inst.stage2=http://m/s"}),
        );
        let script = boot.script(&node, "52:54:00:00:00:01").unwrap();
        assert!(
            script.contains(
                "kernel http://m/vmlinuz console=ttyS0 inst.ks=http://10.0.0.1:6385/boot/kickstart/x \
                 inst.stage2=http://m/s BOOTIF=01-52-54-00-00-00-01 initrd=ramdisk"
            ),
            "{script}"
        );
        // Parameters that were tampered with in the store are not served.
        node.driver_internal_info.insert(
            INSTALLER_KEY.into(),
            json!({"kernel": "http://m/k", "ramdisk": "http://m/r", "params": "a\n#!ipxe shell"}),
        );
        assert!(boot.script(&node, "52:54:00:00:00:01").is_err());
        // Active: the disk.
        node.provision_state = ProvisionState::Active;
        node.driver_internal_info.remove(RAMDISK_KEY);
        assert_eq!(boot.network_boot(&node).unwrap(), NetworkBoot::Local);

        let mut node = self::node();
        node.deploy_interface = Some("ramdisk".into());
        node.instance_info = json!({"kernel": "http://m/k", "ramdisk": "http://m/r",
                                    "ramdisk_kernel_arguments": "rd.x=1"})
        .as_object()
        .unwrap()
        .clone();
        let expect = NetworkBoot::Ramdisk {
            kernel: "http://m/k".into(),
            ramdisk: "http://m/r".into(),
            params: "rd.x=1".into(),
        };
        assert_eq!(boot.network_boot(&node).unwrap(), expect);
        node.provision_state = ProvisionState::Active;
        assert_eq!(boot.network_boot(&node).unwrap(), expect);
        let config = pxelinux.script(&node, "52:54:00:00:00:01").unwrap();
        assert!(
            config.contains("KERNEL http://m/k") && config.contains("APPEND console=ttyS0 rd.x=1"),
            "{config}"
        );
        // Not deployed: the disk, whatever instance_info says.
        node.provision_state = ProvisionState::Available;
        assert_eq!(boot.network_boot(&node).unwrap(), NetworkBoot::Local);
        node.provision_state = ProvisionState::Active;
        node.instance_info = json!({"boot_iso": "http://m/live.iso"})
            .as_object()
            .unwrap()
            .clone();
        assert!(boot
            .script(&node, "52:54:00:00:00:01")
            .unwrap()
            .contains("sanboot --no-describe http://m/live.iso"));
        assert!(pxelinux.script(&node, "52:54:00:00:00:01").is_err());
    }

    #[test]
    fn pxelinux_configurations_boot_the_ramdisk_or_the_disk_of_bios_nodes() {
        let boot = IpxeBoot::with_loader(options(), Loader::Pxelinux).unwrap();
        assert_eq!(boot.dhcp_tag(), "ferric-pxe");
        let mut node = node();
        node.properties
            .insert("capabilities".into(), json!("boot_mode:bios"));
        boot.validate(&node).unwrap();
        node.driver_internal_info
            .insert(RAMDISK_KEY.into(), json!(true));
        let config = boot.script(&node, "52:54:00:00:00:01").unwrap();
        assert!(config.contains("DEFAULT deploy\n"), "{config}");
        assert!(
            config.contains("  KERNEL http://10.0.0.1:6385/boot/deploy/kernel\n"),
            "{config}"
        );
        assert!(
            config.contains("  INITRD http://10.0.0.1:6385/boot/deploy/ramdisk\n"),
            "{config}"
        );
        assert!(config.contains(
            "  APPEND console=ttyS0 ipa-api-url=http://10.0.0.1:6385 BOOTIF=01-52-54-00-00-00-01"
        ), "{config}");
        node.driver_internal_info.remove(RAMDISK_KEY);
        let config = boot.script(&node, "52:54:00:00:00:01").unwrap();
        assert!(
            config.contains("LOCALBOOT 0") && !config.contains("KERNEL"),
            "{config}"
        );
        assert_eq!(
            boot.pxelinux_module("ldlinux.c32"),
            Some(PathBuf::from("/usr/lib/syslinux/modules/bios/ldlinux.c32"))
        );
        assert_eq!(boot.pxelinux_module("../../etc/passwd"), None);

        // UEFI nodes are refused with what to do instead.
        node.properties.remove("capabilities");
        let err = boot.validate(&node).unwrap_err().to_string();
        assert!(err.contains("BIOS") && err.contains("ipxe"), "{err}");
    }

    #[test]
    fn bad_settings_fail_validation_with_the_reason() {
        let boot = IpxeBoot::new(options()).unwrap();
        let mut node = node();
        node.driver_info
            .insert("kernel_append_params".into(), json!("quiet\n#!ipxe\nshell"));
        let err = boot.validate(&node).unwrap_err().to_string();
        assert!(err.contains("line break"), "{err}");
        node.driver_info
            .insert("kernel_append_params".into(), json!("a || shell"));
        assert!(boot
            .validate(&node)
            .unwrap_err()
            .to_string()
            .contains("iPXE"));
        node.driver_info.remove("kernel_append_params");
        node.driver_info
            .insert("deploy_ramdisk".into(), json!("/etc/shadow"));
        let err = boot.validate(&node).unwrap_err().to_string();
        assert!(
            err.contains("deploy_ramdisk") && err.contains("http(s)"),
            "{err}"
        );

        let none = IpxeBoot::new(PxeOptions {
            http_url: Some("http://h".into()),
            ..PxeOptions::default()
        })
        .unwrap();
        let err = none.validate(&self::node()).unwrap_err().to_string();
        assert!(err.contains("deploy_kernel"), "{err}");
        let nowhere = IpxeBoot::new(PxeOptions::default()).unwrap();
        assert!(nowhere
            .entry_script()
            .unwrap_err()
            .to_string()
            .contains("http_url"));
    }

    #[test]
    fn broken_options_and_templates_are_refused_at_start() {
        let mut o = options();
        o.kernel_append_params = "a$b".into();
        assert!(IpxeBoot::new(o).is_err());
        let mut o = options();
        o.http_url = Some("http://h/ x".into());
        assert!(IpxeBoot::new(o).is_err());
        let dir = std::env::temp_dir().join(format!("ferric-ipxe-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let template = dir.join("t.j2");
        std::fs::write(&template, "#!ipxe\n{% if mode %}").unwrap();
        let mut o = options();
        o.ipxe_template = Some(template.clone());
        let err = IpxeBoot::new(o).err().unwrap().to_string();
        assert!(err.contains("ipxe_template"), "{err}");
        // A template has no way to read files: include is not even a statement.
        std::fs::write(&template, "#!ipxe\n{% include '/etc/passwd' %}").unwrap();
        let mut o = options();
        o.ipxe_template = Some(template.clone());
        let err = IpxeBoot::new(o).err().unwrap().to_string();
        assert!(err.contains("unknown statement include"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
