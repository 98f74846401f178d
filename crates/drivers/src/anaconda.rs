//! The `anaconda` deploy interface (seed 000, Ironic's `AnacondaDeploy`):
//! the node network-boots the distribution's installer, which installs the
//! OS as a kickstart says and calls back when it starts, fails or ends.
//!
//! - **What boots.** The installer's kernel and initrd, from instance_info
//!   `kernel` / `ramdisk` (http(s) URLs), else the image properties
//!   `kernel_id` / `ramdisk_id` (instance_info `image_properties`, Ferric's
//!   stand-in for Glance's), else, in repository mode, the tree's
//!   `.treeinfo`. Stage 2 likewise from `stage2` / `stage2_id`; in
//!   repository mode without one, `inst.repo=` lets the installer find it in
//!   the tree. Repository mode: `image_source` is a tree, its URL ending in
//!   `/`.
//! - **The kickstart** is rendered when the installer fetches it
//!   (`inst.ks=<http_url>/boot/kickstart/<node>`), from the template of
//!   instance_info `ks_template`, else the image property `ks_template`, else
//!   `[conductor.anaconda] default_ks_template`, else the one shipped with
//!   Ferric (`ks_template.j2`). Templates named by users are http(s) URLs or
//!   `file://` URLs under `file_url_allowed_paths`; each is fetched once, at
//!   the deploy step, and rendered in a sandbox: minijinja with no loader (no
//!   include, import or extends), no functions beyond the built-in filters,
//!   undefined names are errors (so `''.__class__` is refused), and a fuel
//!   limit bounds loops.
//! - **The OS image**: `liveimg --url=<http_url>/boot/liveimg/<node><ext>`,
//!   where `<ext>` is the image property (or instance_info)
//!   `disk_file_extension` when it is one the installer knows (`.img .tar
//!   .tbz .tgz .txz .tar.gz .tar.bz2 .tar.xz`); the installer decides by the
//!   URL's ending whether it unpacks a tarball or mounts a disk image, so an
//!   unknown extension (or none) means a disk image. ferricd answers that URL
//!   with a redirect to `image_source`, or the file itself for a `file://`
//!   source. In repository mode the kickstart says `url --url=<image_source>`.
//! - **Callbacks.** The deploy step generates the agent token ahead of time
//!   (the kickstart carries it). `%pre` posts `agent_status: start`,
//!   `%onerror` `error` (the deploy fails with its message), the last `%post`
//!   `end`, after which the conductor boots the node from its disk and marks
//!   it active. No heartbeat in between: `deploy_callback_timeout` must cover
//!   the whole installation.
//!
//! Cleaning is the `direct` interface's: the deploy ramdisk and its agent.

use crate::direct::DirectDeploy;
use crate::image_cache::{self, CacheConfig};
use crate::interfaces::*;
use crate::ipxe::{check_url, PxeOptions, INSTALLER_KEY};
use crate::DriverError;
use async_trait::async_trait;
use base64::Engine;
use ferric_types::kernel_params::{self, BootLoader};
use ferric_types::{Node, PowerState, Step};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The kickstart template shipped with Ferric.
pub const DEFAULT_KS_TEMPLATE: &str = include_str!("ks_template.j2");

/// The extensions the installer's `liveimg` knows: tarballs, and `.img`.
pub const DISK_FILE_EXTENSIONS: [&str; 8] = [
    ".img", ".tar", ".tbz", ".tgz", ".txz", ".tar.gz", ".tar.bz2", ".tar.xz",
];

/// The template fetched at the deploy step ("secret": the API masks it, as
/// an operator's template may hold a password hash).
const TEMPLATE_KEY: &str = "anaconda_ks_template_secret";
/// The conductor's keys for the agent token (crates/conductor/src/agent.rs).
const TOKEN_KEY: &str = "agent_secret_token";
const TOKEN_PREGENERATED_KEY: &str = "agent_secret_token_pregenerated";
const AGENT_STATUS_KEY: &str = "agent_status";
const AGENT_STATUS_MESSAGE_KEY: &str = "agent_status_message";
/// The path under which ferricd serves kickstarts.
pub const KICKSTART_PATH: &str = "/boot/kickstart";
/// The path under which ferricd serves (or redirects to) liveimg images.
pub const LIVEIMG_PATH: &str = "/boot/liveimg";
/// The largest template or .treeinfo fetched.
const MAX_FETCH: usize = 256 << 10;
/// The fuel a rendering may burn (each template instruction costs one).
const FUEL: u64 = 1_000_000;

/// `[conductor.anaconda]` in ferricd.toml (Ironic's `[anaconda]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnacondaOptions {
    /// The kickstart template of nodes whose instance_info and image
    /// properties name none: a file on this server. Default: Ferric's.
    pub default_ks_template: Option<PathBuf>,
    /// Let the callbacks skip TLS verification (`curl --insecure`).
    pub insecure_heartbeat: bool,
}

/// What the anaconda deploy shares between nodes: settings, the default
/// template, the HTTP client.
pub struct Anaconda {
    options: AnacondaOptions,
    pxe: PxeOptions,
    default_template: String,
    files: Option<CacheConfig>,
    client: reqwest::Client,
}

/// Where the installer's OS image comes from, as ferricd serves it.
#[derive(Debug)]
pub enum LiveImage {
    /// Redirect to this http(s) URL.
    Redirect(String),
    /// Serve this local file (a `file://` source, checked).
    File(std::fs::File),
}

/// The installer's files, resolved.
#[derive(Debug, Clone, PartialEq)]
struct Installer {
    kernel: String,
    ramdisk: String,
    /// `inst.stage2=` when known, else `inst.repo=` (repository mode).
    stage2: Option<String>,
}

fn invalid(message: impl Into<String>) -> DriverError {
    DriverError::InvalidParameter(message.into())
}

/// A string field of `map`; empty counts as absent.
fn text<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    what: &str,
) -> Result<Option<&'a str>, DriverError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(invalid(format!(
            "{what} {key} must be a string, got {other}"
        ))),
    }
}

/// instance_info `image_properties`: the image's properties, as Glance
/// would give them (kernel_id, ramdisk_id, stage2_id, ks_template,
/// disk_file_extension), each naming a URL.
fn image_properties(node: &Node) -> Result<Map<String, Value>, DriverError> {
    match node.instance_info.get("image_properties") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map.clone()),
        Some(Value::String(s)) => match serde_json::from_str(s) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(invalid(
                "instance_info image_properties must be a JSON object",
            )),
        },
        Some(_) => Err(invalid(
            "instance_info image_properties must be a JSON object",
        )),
    }
}

/// instance_info `key`, else the image property `property`.
fn instance_or_image(
    node: &Node,
    properties: &Map<String, Value>,
    key: &str,
    property: &str,
) -> Result<Option<String>, DriverError> {
    if let Some(value) = text(&node.instance_info, key, "instance_info")? {
        return Ok(Some(value.to_string()));
    }
    Ok(text(properties, property, "image property")?.map(str::to_string))
}

/// The http(s) URL of a file the node fetches itself.
fn node_url(value: Option<String>, what: &str) -> Result<Option<String>, DriverError> {
    if let Some(url) = &value {
        check_url(url).map_err(|e| invalid(format!("{what}: {e}")))?;
    }
    Ok(value)
}

fn image_source(node: &Node) -> Result<&str, DriverError> {
    text(&node.instance_info, "image_source", "instance_info")?.ok_or_else(|| {
        invalid(
            "the anaconda deploy needs instance_info image_source: the OS image (liveimg) or a \
             repository tree (a URL ending in /)",
        )
    })
}

/// Repository mode: `image_source` is a tree (its URL ends in `/`).
fn is_repository(node: &Node) -> bool {
    image_source(node).is_ok_and(|s| s.ends_with('/'))
}

/// The `disk_file_extension` the liveimg URL ends in: the image property
/// (or instance_info) when the installer knows it; none otherwise, which
/// makes the installer mount the image as a disk image.
pub fn disk_file_extension(node: &Node) -> &'static str {
    let properties = image_properties(node).unwrap_or_default();
    let given = instance_or_image(
        node,
        &properties,
        "disk_file_extension",
        "disk_file_extension",
    )
    .ok()
    .flatten();
    match given {
        Some(ext) => match DISK_FILE_EXTENSIONS.iter().find(|known| **known == ext) {
            Some(known) => known,
            None => {
                tracing::warn!(node = %node.uuid, extension = %ext, "disk_file_extension is not one the installer knows: the image is treated as a mountable disk image");
                ""
            }
        },
        None => "",
    }
}

/// The keys of a `.treeinfo` (an INI file) the installer's boot needs:
/// the kernel and initrd of the tree's architecture and the stage 2 image,
/// as paths relative to the tree.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TreeInfo {
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub stage2: Option<String>,
}

/// Parses a `.treeinfo`: `[images-<arch>] kernel, initrd` with the
/// architecture of `[tree]` (productmd) or `[general]` (older trees),
/// x86_64 when neither says; `[stage2] mainimage`. Paths that leave the
/// tree (absolute, `..`, a scheme) are refused.
pub fn parse_treeinfo(text: &str) -> Result<TreeInfo, String> {
    let mut sections: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for (number, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            sections.push((name.trim().to_string(), Vec::new()));
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: neither a [section] nor key = value", number + 1))?;
        let Some((_, entries)) = sections.last_mut() else {
            return Err(format!("line {}: a key outside any section", number + 1));
        };
        entries.push((key.trim().to_string(), value.trim().to_string()));
    }
    let get = |section: &str, key: &str| {
        sections
            .iter()
            .filter(|(name, _)| name == section)
            .flat_map(|(_, entries)| entries.iter())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let arch = get("tree", "arch")
        .or_else(|| get("general", "arch"))
        .unwrap_or_else(|| "x86_64".to_string());
    let images = format!("images-{arch}");
    let info = TreeInfo {
        kernel: get(&images, "kernel"),
        initrd: get(&images, "initrd"),
        stage2: get("stage2", "mainimage"),
    };
    for path in [&info.kernel, &info.initrd, &info.stage2]
        .into_iter()
        .flatten()
    {
        if path.starts_with('/') || path.contains("://") || path.split('/').any(|c| c == "..") {
            return Err(format!("{path:?} is not a path inside the tree"));
        }
    }
    Ok(info)
}

/// The `%post` section that writes the config drive's files where
/// cloud-init's ConfigDrive source finds them
/// (/var/lib/cloud/seed/config_drive in the installed system), or "" with
/// no config drive. Only the dict form can be written; a pre-built
/// (gzip+base64) config drive is refused.
pub fn config_drive_section(node: &Node) -> Result<String, DriverError> {
    let dict = match node.instance_info.get("configdrive") {
        None | Some(Value::Null) => return Ok(String::new()),
        Some(Value::String(s)) if s.is_empty() => return Ok(String::new()),
        Some(Value::Object(map)) if map.is_empty() => return Ok(String::new()),
        Some(dict @ Value::Object(_)) => dict,
        Some(_) => {
            return Err(invalid(
                "the anaconda deploy writes the config drive's files itself: pass the config \
                 drive as a dict (meta_data, user_data, network_data, vendor_data), not a \
                 pre-built image",
            ))
        }
    };
    let drive = ferric_image::configdrive::ConfigDrive::from_ironic_dict(dict)
        .map_err(|e| invalid(format!("config drive: {e}")))?
        .with_node_defaults(&node.uuid.to_string(), node.name.as_deref());
    let mut out = String::from(
        "# The config drive, for cloud-init's ConfigDrive source.\n%post --erroronfail\nset -e\n\
         seed=/var/lib/cloud/seed/config_drive\numask 077\n",
    );
    let mut dirs: Vec<String> = Vec::new();
    for (path, _) in drive.files() {
        if let Some((dir, _)) = path.rsplit_once('/') {
            if !dirs.iter().any(|d| d == dir) {
                dirs.push(dir.to_string());
            }
        }
    }
    for dir in &dirs {
        out.push_str(&format!("mkdir -p \"$seed/{dir}\"\n"));
    }
    let engine = base64::engine::general_purpose::STANDARD;
    for (path, bytes) in drive.files() {
        // Paths come from the config-2 layout (openstack/<version>/<name>).
        out.push_str(&format!("base64 -d > \"$seed/{path}\" <<'FERRIC_EOF'\n"));
        let encoded = engine.encode(&bytes);
        for chunk in encoded.as_bytes().chunks(76) {
            out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("FERRIC_EOF\n");
    }
    out.push_str("%end");
    Ok(out)
}

/// Renders `source` with `context` in the sandbox.
pub fn render_template(source: &str, context: &Value) -> Result<String, String> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(64);
    // Errors name the kind and the line, never the template's text or the
    // values (`{e:#}` would show both, the token and config drive among them).
    let template = env.template_from_str(source).map_err(|e| describe(&e))?;
    template
        .render(minijinja::Value::from(minijinja::value::Serde(context)))
        .map_err(|e| describe(&e))
}

/// A template error without the template's text or values.
fn describe(error: &minijinja::Error) -> String {
    match error.line() {
        Some(line) => format!("{} (line {line})", error.kind()),
        None => error.kind().to_string(),
    }
}

impl Anaconda {
    /// Reads the default template and checks it compiles: a broken one
    /// stops ferricd at start. `files` is the `file://` policy.
    pub fn new(
        options: AnacondaOptions,
        pxe: PxeOptions,
        files: Option<CacheConfig>,
    ) -> Result<Anaconda, DriverError> {
        let default_template = match &options.default_ks_template {
            Some(path) => std::fs::read_to_string(path).map_err(|e| {
                invalid(format!(
                    "[conductor.anaconda] default_ks_template {}: {e}",
                    path.display()
                ))
            })?,
            None => DEFAULT_KS_TEMPLATE.to_string(),
        };
        minijinja::Environment::new()
            .template_from_str(&default_template)
            .map_err(|e| invalid(format!("[conductor.anaconda] default_ks_template: {e:#}")))?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .map_err(|e| DriverError::Failed(format!("HTTP client: {e}")))?;
        Ok(Anaconda {
            options,
            pxe,
            default_template,
            files,
            client,
        })
    }

    /// The node's installer files as far as they are known without
    /// fetching anything; in repository mode the missing ones come from
    /// the tree's .treeinfo at the deploy step.
    fn validate(&self, node: &Node) -> Result<(), DriverError> {
        let source = image_source(node)?;
        let repository = source.ends_with('/');
        if repository {
            check_url(source).map_err(|e| {
                invalid(format!(
                    "instance_info image_source (a repository tree): {e}"
                ))
            })?;
        } else if !source.starts_with("file://") {
            check_url(source).map_err(|e| invalid(format!("instance_info image_source: {e}")))?;
        }
        let properties = image_properties(node)?;
        for (key, property, what) in [
            ("kernel", "kernel_id", "kernel"),
            ("ramdisk", "ramdisk_id", "initial ramdisk"),
            ("stage2", "stage2_id", "stage 2 image"),
        ] {
            let found = node_url(
                instance_or_image(node, &properties, key, property)?,
                &format!("the installer's {what} ({key} / {property})"),
            )?;
            if found.is_none() && !repository {
                return Err(invalid(format!(
                    "the anaconda deploy needs the installer's {what}: set instance_info {key} \
                     or the image property {property} to an http(s) URL (or give a repository \
                     tree as image_source, ending in /, whose .treeinfo names it)"
                )));
            }
        }
        for (value, what) in [
            (
                text(&node.instance_info, "ks_template", "instance_info")?,
                "instance_info ks_template",
            ),
            (
                text(&properties, "ks_template", "image property")?,
                "image property ks_template",
            ),
        ] {
            if let Some(url) = value {
                if !(url.starts_with("http://")
                    || url.starts_with("https://")
                    || url.starts_with("file://"))
                {
                    return Err(invalid(format!(
                        "{what} must be an http(s) or file:// URL (Ferric has no Glance)"
                    )));
                }
            }
        }
        config_drive_section(node)?;
        match node.boot_interface.as_deref() {
            Some("ipxe" | "pxe" | "fake") | None => {}
            Some(other) => {
                return Err(invalid(format!(
                    "the anaconda deploy network-boots the installer: use the ipxe or pxe boot \
                     interface, not {other}"
                )))
            }
        }
        self.pxe.http_url()?;
        self.pxe.api_url()?;
        Ok(())
    }

    /// Fetches a template or .treeinfo (http(s), or file:// under the
    /// allow-list), at most [`MAX_FETCH`] bytes of UTF-8.
    async fn fetch(&self, url: &str, what: &str) -> Result<String, DriverError> {
        let failed =
            |why: String| DriverError::Failed(format!("fetching the {what} failed: {why}"));
        let bytes: Vec<u8> = if url.starts_with("file://") {
            let files = self.files.as_ref().ok_or_else(|| {
                invalid(format!(
                    "the {what} is a file:// URL, which needs [conductor] file_url_allowed_paths"
                ))
            })?;
            let path = files
                .local_file(url)
                .map_err(|e| invalid(format!("the {what}: {}", image_cache::chain(&e))))?;
            let meta = std::fs::metadata(&path).map_err(|e| failed(e.to_string()))?;
            if meta.len() > MAX_FETCH as u64 {
                return Err(invalid(format!(
                    "the {what} is larger than {MAX_FETCH} bytes"
                )));
            }
            std::fs::read(&path).map_err(|e| failed(e.to_string()))?
        } else if url.starts_with("http://") || url.starts_with("https://") {
            let mut response = self
                .client
                .get(url)
                .send()
                .await
                .map_err(|e| failed(crate::agent_client::error_chain(&e)))?;
            if !response.status().is_success() {
                return Err(failed(format!("HTTP {}", response.status())));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| failed(crate::agent_client::error_chain(&e)))?
            {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_FETCH {
                    return Err(invalid(format!(
                        "the {what} is larger than {MAX_FETCH} bytes"
                    )));
                }
            }
            body
        } else {
            return Err(invalid(format!(
                "the {what} must be an http(s) or file:// URL (Ferric has no Glance)"
            )));
        };
        String::from_utf8(bytes).map_err(|_| invalid(format!("the {what} is not UTF-8 text")))
    }

    /// The node's kickstart template: instance_info, image property,
    /// configured default, shipped default.
    async fn template(&self, node: &Node) -> Result<String, DriverError> {
        let properties = image_properties(node)?;
        let chosen = match text(&node.instance_info, "ks_template", "instance_info")? {
            Some(url) => Some(url),
            None => text(&properties, "ks_template", "image property")?,
        };
        match chosen {
            Some(url) => self.fetch(url, "kickstart template").await,
            None => Ok(self.default_template.clone()),
        }
    }

    /// The installer's kernel, initrd and stage 2, reading the tree's
    /// .treeinfo in repository mode.
    async fn installer(&self, node: &Node) -> Result<Installer, DriverError> {
        let properties = image_properties(node)?;
        let mut kernel = instance_or_image(node, &properties, "kernel", "kernel_id")?;
        let mut ramdisk = instance_or_image(node, &properties, "ramdisk", "ramdisk_id")?;
        let stage2 = instance_or_image(node, &properties, "stage2", "stage2_id")?;
        if is_repository(node) {
            let tree = image_source(node)?;
            let text = self
                .fetch(&format!("{tree}.treeinfo"), "repository's .treeinfo")
                .await?;
            let info = parse_treeinfo(&text)
                .map_err(|e| invalid(format!("the repository's .treeinfo: {e}")))?;
            kernel = kernel.or(info.kernel.map(|p| format!("{tree}{p}")));
            ramdisk = ramdisk.or(info.initrd.map(|p| format!("{tree}{p}")));
        }
        let missing = |what: &str| {
            invalid(format!(
                "the installer's {what} is named by neither the node nor the repository's .treeinfo"
            ))
        };
        Ok(Installer {
            kernel: node_url(kernel, "the installer's kernel")?.ok_or_else(|| missing("kernel"))?,
            ramdisk: node_url(ramdisk, "the installer's initial ramdisk")?
                .ok_or_else(|| missing("initial ramdisk"))?,
            stage2: node_url(stage2, "the installer's stage 2 image")?,
        })
    }

    /// The installer's kernel parameters: where the kickstart is, and
    /// stage 2 (or the repository).
    fn installer_params(&self, node: &Node, installer: &Installer) -> Result<String, DriverError> {
        let base = self.pxe.http_url()?;
        let mut params = format!("inst.ks={base}{KICKSTART_PATH}/{}", node.uuid);
        match &installer.stage2 {
            Some(stage2) => params.push_str(&format!(" inst.stage2={stage2}")),
            None => params.push_str(&format!(" inst.repo={}", image_source(node)?)),
        }
        kernel_params::validate(&params, BootLoader::Ipxe)
            .map_err(|e| invalid(format!("the installer's kernel parameters: {e}")))?;
        Ok(params)
    }

    /// The sha256 of the OS image, when the node gives one.
    fn image_sha256(node: &Node) -> String {
        let info = &node.instance_info;
        let get = |k: &str| info.get(k).and_then(Value::as_str).unwrap_or("");
        let candidate = if get("image_os_hash_algo") == "sha256" {
            get("image_os_hash_value")
        } else {
            get("image_checksum")
        };
        if candidate.len() == 64 && candidate.bytes().all(|b| b.is_ascii_hexdigit()) {
            candidate.to_ascii_lowercase()
        } else {
            String::new()
        }
    }

    /// What templates are rendered with (see ks_template.j2).
    fn context(&self, node: &Node, token: &str) -> Result<Value, DriverError> {
        let repository = is_repository(node);
        let liveimg_url = if repository {
            image_source(node)?.to_string()
        } else {
            format!(
                "{}{LIVEIMG_PATH}/{}{}",
                self.pxe.http_url()?,
                node.uuid,
                disk_file_extension(node)
            )
        };
        let mut options = json!({
            "liveimg_url": liveimg_url,
            "liveimg_checksum": if repository { String::new() } else { Self::image_sha256(node) },
            "agent_token": token,
            "heartbeat_url": format!("{}/v1/heartbeat/{}", self.pxe.api_url()?, node.uuid),
            "config_drive": config_drive_section(node)?,
        });
        if repository {
            options["is_source_a_path"] = json!("true");
        }
        if self.options.insecure_heartbeat {
            options["insecure_heartbeat"] = json!("true");
        }
        Ok(json!({
            "ks_options": options,
            "node_uuid": node.uuid.to_string(),
            "node_name": node.name.clone().unwrap_or_default(),
        }))
    }

    /// The node's kickstart, as the installer fetches it: only while it
    /// deploys with anaconda and has its token.
    pub fn kickstart(&self, node: &Node) -> Result<String, DriverError> {
        if installer_finished(node) {
            return Err(invalid("the node's installer has finished"));
        }
        let source = node
            .driver_internal_info
            .get(TEMPLATE_KEY)
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("the node's installer is not prepared"))?;
        let token = node
            .driver_internal_info
            .get(TOKEN_KEY)
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| invalid("the node has no agent token"))?;
        let context = self.context(node, token)?;
        render_template(source, &context)
            .map_err(|e| invalid(format!("rendering the kickstart template: {e}")))
    }

    /// Where the installer gets the OS image from (`liveimg`).
    pub fn liveimg(&self, node: &Node) -> Result<LiveImage, DriverError> {
        if installer_finished(node) {
            return Err(invalid("the node's installer has finished"));
        }
        let source = image_source(node)?;
        if source.starts_with("file://") {
            let files = self
                .files
                .as_ref()
                .ok_or_else(|| invalid("file:// images need [conductor] file_url_allowed_paths"))?;
            let file = files
                .open_local_file(source)
                .map_err(|e| invalid(image_cache::chain(&e)))?;
            return Ok(LiveImage::File(file));
        }
        check_url(source).map_err(|e| invalid(format!("instance_info image_source: {e}")))?;
        Ok(LiveImage::Redirect(source.to_string()))
    }
}

pub struct AnacondaDeploy {
    shared: Arc<Anaconda>,
    /// Runs the clean steps, in the deploy ramdisk.
    cleaning: DirectDeploy,
}

impl AnacondaDeploy {
    pub fn new(shared: Arc<Anaconda>, cleaning: DirectDeploy) -> Self {
        AnacondaDeploy { shared, cleaning }
    }

    /// The deploy step: fetch the template and the tree's .treeinfo,
    /// generate the token, check that the kickstart renders, boot the
    /// installer.
    async fn deploy(
        &self,
        node: &mut Node,
        context: StepContext<'_>,
    ) -> Result<StepOutcome, DriverError> {
        self.shared.validate(node)?;
        let template = self.shared.template(node).await?;
        let installer = self.shared.installer(node).await?;
        let params = self.shared.installer_params(node, &installer)?;
        node.driver_internal_info.insert(
            TOKEN_KEY.into(),
            Value::String(crate::redfish_vmedia::new_agent_token()),
        );
        node.driver_internal_info
            .insert(TOKEN_PREGENERATED_KEY.into(), Value::Bool(true));
        node.driver_internal_info
            .insert(TEMPLATE_KEY.into(), Value::String(template));
        // A template that does not render fails the deploy now, with the
        // reason, before the node boots.
        self.shared.kickstart(node)?;
        node.driver_internal_info.insert(
            INSTALLER_KEY.into(),
            json!({"kernel": installer.kernel, "ramdisk": installer.ramdisk, "params": params}),
        );
        for key in [AGENT_STATUS_KEY, AGENT_STATUS_MESSAGE_KEY] {
            node.driver_internal_info.remove(key);
        }
        context.power.reboot(node, false, None).await?;
        node.power_state = Some(PowerState::On);
        tracing::info!(node = %node.uuid, "the installer boots");
        Ok(StepOutcome::Wait)
    }
}

/// Whether the installer called back `end` or `error` (the conductor may
/// not have taken it in yet).
fn installer_finished(node: &Node) -> bool {
    matches!(
        node.driver_internal_info
            .get(AGENT_STATUS_KEY)
            .and_then(Value::as_str),
        Some("end" | "error")
    )
}

fn forget_installer(node: &mut Node) {
    for key in [TEMPLATE_KEY, INSTALLER_KEY] {
        node.driver_internal_info.remove(key);
    }
}

#[async_trait]
impl DeployInterface for AnacondaDeploy {
    fn validate(&self, node: &Node) -> Result<(), DriverError> {
        self.shared.validate(node)
    }

    fn steps(&self, kind: StepKind) -> Vec<StepDefinition> {
        match kind {
            StepKind::Deploy => vec![crate::ramdisk_deploy::deploy_step_only()],
            other => self.cleaning.steps(other),
        }
    }

    async fn execute_step(
        &self,
        node: &mut Node,
        kind: StepKind,
        step: &Step,
        context: StepContext<'_>,
    ) -> Result<StepOutcome, DriverError> {
        if kind != StepKind::Deploy {
            return self.cleaning.execute_step(node, kind, step, context).await;
        }
        match step.step.as_str() {
            "deploy" => self.deploy(node, context).await,
            other => Err(DriverError::Unsupported(format!(
                "the anaconda deploy has no deploy step {other}"
            ))),
        }
    }

    fn uses_agent(&self) -> bool {
        true
    }

    fn agent_deploy_steps(&self) -> bool {
        false
    }

    /// The installer's callbacks: `start` (running), `end` (done: the
    /// conductor boots the disk), `error` (failed, with its message).
    async fn check_agent_step(
        &self,
        node: &mut Node,
        kind: StepKind,
    ) -> Result<AgentStepState, DriverError> {
        if kind != StepKind::Deploy {
            return self.cleaning.check_agent_step(node, kind).await;
        }
        let status = node
            .driver_internal_info
            .get(AGENT_STATUS_KEY)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let message = node
            .driver_internal_info
            .get(AGENT_STATUS_MESSAGE_KEY)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        match status.as_str() {
            "end" => {
                tracing::info!(node = %node.uuid, "the installer finished");
                forget_installer(node);
                Ok(AgentStepState::Finished)
            }
            "error" => {
                forget_installer(node);
                Ok(AgentStepState::Failed(format!(
                    "the installer reported an error: {}",
                    if message.is_empty() {
                        "(no message)"
                    } else {
                        &message
                    }
                )))
            }
            _ => {
                tracing::info!(node = %node.uuid, status = %status, "the installer called back");
                Ok(AgentStepState::Running)
            }
        }
    }

    async fn agent_steps(
        &self,
        node: &mut Node,
        kind: StepKind,
    ) -> Result<Option<Vec<StepDefinition>>, DriverError> {
        match kind {
            StepKind::Deploy => Ok(None),
            other => self.cleaning.agent_steps(node, other).await,
        }
    }

    async fn tear_down(&self, node: &mut Node) -> Result<(), DriverError> {
        forget_installer(node);
        self.cleaning.tear_down(node).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferric_types::ProvisionState;

    fn options() -> PxeOptions {
        PxeOptions {
            http_url: Some("http://10.0.0.1:6385".into()),
            ..PxeOptions::default()
        }
    }

    fn anaconda() -> Anaconda {
        Anaconda::new(AnacondaOptions::default(), options(), None).unwrap()
    }

    fn node(instance_info: Value) -> Node {
        let mut node = Node::new(uuid::Uuid::new_v4(), "ipmi", ProvisionState::Deploying);
        node.boot_interface = Some("ipxe".into());
        node.deploy_interface = Some("anaconda".into());
        node.instance_info = instance_info.as_object().unwrap().clone();
        node
    }

    fn prepared(mut node: Node) -> Node {
        node.driver_internal_info
            .insert(TOKEN_KEY.into(), json!("t0ken-t0ken-t0ken"));
        node.driver_internal_info
            .insert(TEMPLATE_KEY.into(), json!(DEFAULT_KS_TEMPLATE));
        node
    }

    fn liveimg_node() -> Node {
        node(json!({
            "image_source": "http://mirror.example/os.tar.gz",
            "kernel": "http://mirror.example/vmlinuz",
            "ramdisk": "http://mirror.example/initrd.img",
            "stage2": "http://mirror.example/install.img",
            "image_os_hash_algo": "sha256",
            "image_os_hash_value": "ab".repeat(32),
            "image_properties": {"disk_file_extension": ".tgz"},
        }))
    }

    #[test]
    fn the_default_kickstart_carries_the_image_token_callbacks_and_config_drive() {
        let mut n = prepared(liveimg_node());
        n.instance_info.insert(
            "configdrive".into(),
            json!({"user_data": "#cloud-config\nhostname: x\n", "meta_data": {"hostname": "x"}}),
        );
        let ks = anaconda().kickstart(&n).unwrap();
        let url = format!("http://10.0.0.1:6385/boot/liveimg/{}.tgz", n.uuid);
        assert!(
            ks.contains(&format!(
                "liveimg --url={url} --checksum={}",
                "ab".repeat(32)
            )),
            "{ks}"
        );
        assert_eq!(ks.matches("t0ken-t0ken-t0ken").count(), 3, "{ks}");
        for status in ["start", "error", "end"] {
            assert!(
                ks.contains(&format!("\"agent_status\": \"{status}\"")),
                "{ks}"
            );
        }
        assert!(ks.contains(&format!("http://10.0.0.1:6385/v1/heartbeat/{}", n.uuid)));
        assert!(ks.contains("seed=/var/lib/cloud/seed/config_drive"));
        assert!(ks.contains("openstack/latest/user_data"));
        assert!(!ks.contains("--insecure"));
        // The end callback is the last section.
        assert!(ks.trim_end().ends_with("%end"));
        let last_post = ks.rfind("%post").unwrap();
        assert!(ks[last_post..].contains("\"end\""));
    }

    #[test]
    fn repository_mode_installs_from_the_tree() {
        let mut n = prepared(node(json!({"image_source": "http://mirror.example/os/"})));
        n.instance_info.remove("configdrive");
        let ks = anaconda().kickstart(&n).unwrap();
        assert!(ks.contains("url --url=http://mirror.example/os/"), "{ks}");
        assert!(!ks.contains("liveimg"), "{ks}");
    }

    #[test]
    fn unknown_or_missing_extensions_mean_a_disk_image() {
        for (props, ext) in [
            (json!({"disk_file_extension": ".zip"}), ""),
            (json!({}), ""),
            (json!({"disk_file_extension": ".tar.xz"}), ".tar.xz"),
        ] {
            let mut n = liveimg_node();
            n.instance_info.insert("image_properties".into(), props);
            assert_eq!(disk_file_extension(&n), ext);
        }
        let mut n = liveimg_node();
        n.instance_info
            .insert("disk_file_extension".into(), json!(".img"));
        assert_eq!(disk_file_extension(&n), ".img");
    }

    #[test]
    fn templates_cannot_reach_files_or_internals() {
        let context = json!({"ks_options": {"agent_token": "x"}});
        for evil in [
            "{% include '/etc/passwd' %}",
            "{% import '/etc/passwd' as p %}",
            "{% extends '/etc/shadow' %}",
            "{{ ''.__class__.__mro__[1].__subclasses__() }}",
            "{{ ks_options.__class__ }}",
            "{{ lipsum.__globals__['os'].popen('id').read() }}",
            "{{ cycler.__init__.__globals__.os.environ }}",
            "{{ config.items() }}",
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        ] {
            assert!(render_template(evil, &context).is_err(), "{evil} rendered");
        }
        assert_eq!(
            render_template("{{ ks_options.agent_token }}", &context).unwrap(),
            "x"
        );
        // A failing template tells neither its text nor the values it saw.
        let secret =
            json!({"ks_options": {"agent_token": "t0k3n-SECRET", "config_drive": "c0nfig-SECRET"}});
        let error = render_template(
            "rootpw --iscrypted $6$hash-SECRET\n{{ ks_options.agent_token }}{{ ks_options.config_drive }}{{ ks_options.nope.deeper }}",
            &secret,
        )
        .unwrap_err();
        assert!(!error.contains("SECRET"), "{error}");
        assert!(error.contains("line 2"), "{error}");
    }

    #[test]
    fn missing_installer_files_fail_validation_with_the_reason() {
        let a = anaconda();
        assert_eq!(a.validate(&liveimg_node()), Ok(()));
        for (key, expect) in [
            ("kernel", "kernel_id"),
            ("ramdisk", "ramdisk_id"),
            ("stage2", "stage2_id"),
        ] {
            let mut n = liveimg_node();
            n.instance_info.remove(key);
            match a.validate(&n) {
                Err(DriverError::InvalidParameter(m)) => assert!(m.contains(expect), "{m}"),
                other => panic!("{other:?}"),
            }
            // An image property fills in.
            n.instance_info.insert(
                "image_properties".into(),
                json!({expect: "http://mirror.example/file"}),
            );
            assert_eq!(a.validate(&n), Ok(()), "{key}");
        }
        let mut n = liveimg_node();
        n.instance_info.remove("image_source");
        assert!(
            matches!(a.validate(&n), Err(DriverError::InvalidParameter(m)) if m.contains("image_source"))
        );
        // A repository needs none of them up front.
        assert_eq!(
            a.validate(&node(json!({"image_source": "http://mirror.example/os/"}))),
            Ok(())
        );
        let mut n = liveimg_node();
        n.instance_info
            .insert("kernel".into(), json!("http://x/$evil"));
        assert!(a.validate(&n).is_err());
        let mut n = liveimg_node();
        n.instance_info
            .insert("ks_template".into(), json!("glance://1234"));
        assert!(
            matches!(a.validate(&n), Err(DriverError::InvalidParameter(m)) if m.contains("Glance"))
        );
        let mut n = liveimg_node();
        n.instance_info
            .insert("configdrive".into(), json!("H4sIAAAA"));
        assert!(
            matches!(a.validate(&n), Err(DriverError::InvalidParameter(m)) if m.contains("dict"))
        );
        let mut n = liveimg_node();
        n.boot_interface = Some("redfish-virtual-media".into());
        assert!(a.validate(&n).is_err());
    }

    #[test]
    fn treeinfo_names_the_kernel_initrd_and_stage2() {
        let productmd = "[header]\ntype = productmd.treeinfo\nversion = 1.2\n\n[tree]\narch = x86_64\n\n\
                         [images-x86_64]\nkernel = images/pxeboot/vmlinuz\ninitrd = images/pxeboot/initrd.img\n\n\
                         [images-aarch64]\nkernel = images/arm/vmlinuz\n\n[stage2]\nmainimage = images/install.img\n";
        assert_eq!(
            parse_treeinfo(productmd).unwrap(),
            TreeInfo {
                kernel: Some("images/pxeboot/vmlinuz".into()),
                initrd: Some("images/pxeboot/initrd.img".into()),
                stage2: Some("images/install.img".into()),
            }
        );
        let old = "[general]\narch = aarch64\n[images-aarch64]\nkernel = images/arm/vmlinuz\n";
        assert_eq!(
            parse_treeinfo(old).unwrap().kernel.as_deref(),
            Some("images/arm/vmlinuz")
        );
        assert!(parse_treeinfo("[images-x86_64]\nkernel = ../../etc/passwd\n").is_err());
        assert!(parse_treeinfo("[images-x86_64]\nkernel = /vmlinuz\n").is_err());
        assert!(parse_treeinfo("kernel = x\n").is_err());
    }

    #[test]
    fn installer_parameters_name_the_kickstart_and_stage2_or_the_repository() {
        let a = anaconda();
        let n = liveimg_node();
        let installer = Installer {
            kernel: "http://m/k".into(),
            ramdisk: "http://m/r".into(),
            stage2: Some("http://m/install.img".into()),
        };
        assert_eq!(
            a.installer_params(&n, &installer).unwrap(),
            format!(
                "inst.ks=http://10.0.0.1:6385/boot/kickstart/{} inst.stage2=http://m/install.img",
                n.uuid
            )
        );
        let repo = node(json!({"image_source": "http://mirror.example/os/"}));
        let installer = Installer {
            stage2: None,
            ..installer
        };
        assert!(a
            .installer_params(&repo, &installer)
            .unwrap()
            .ends_with("inst.repo=http://mirror.example/os/"));
    }
}
