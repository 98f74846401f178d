//! The `direct` deploy interface: the node boots the deploy ramdisk, whose
//! agent writes the image itself, verifying its checksum as it goes. Ironic's
//! deploy steps: deploy (100), write_image (80, in the agent),
//! prepare_instance_boot (60), tear_down_agent (40), boot_instance (20).
//!
//! Where the agent gets the image is Ironic's `image_download_source`: `http`
//! (the agent fetches `image_source` itself) or `local` (the conductor
//! downloads it once into its [`ImageCache`], verifies, inspects and, with
//! `force_raw_images`, converts it to raw, and the agent fetches it from
//! ferricd's own HTTP server). A node's `instance_info` and then its
//! `driver_info` may override the conductor's default, as in Ironic.
//!
//! The same type is the `custom-agent` deploy interface (Ironic's
//! `CustomAgentDeploy`, seed 003): the ramdisk boots and is torn down as for
//! `direct`, but no image is needed and nothing is written by the conductor's
//! steps. Only the agent's own deploy steps run, those it lists with a
//! priority and those the operator requests in `deploy_steps` (Metal3's
//! customDeploy: `[{interface: deploy, step: install_coreos, priority: 80}]`),
//! between `deploy` (100) and `prepare_instance_boot` (60): priorities 61 to
//! 99. The agent is sent the node's config drive with its steps (the
//! install_coreos step reads Ignition from its user_data).

use crate::agent_client::{command_error, AgentClient};
use crate::image_cache::{self, CachedImage, ImageCache, ImageRequest};
use crate::interfaces::*;
use crate::DriverError;
use async_trait::async_trait;
use ferric_image::format::{Format, Policy};
use ferric_types::{Node, PowerState, Step, StepInterface};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::str::FromStr;
use std::sync::Arc;

/// The in-band step the agent is running, in driver_internal_info.
const PENDING_KEY: &str = "agent_pending_step";
/// The pending marker of a step that booted the ramdisk and waits for its
/// agent before running in it.
const AGENT_BOOT: &str = "(agent boot)";
/// The agent's last progress report for a running step.
pub const PROGRESS_KEY: &str = "deploy_progress";
/// The node field (instance_info, then driver_info) overriding the
/// conductor's image download source.
pub const DOWNLOAD_SOURCE_KEY: &str = "image_download_source";
/// The path under which ferricd serves cached images.
pub const IMAGES_PATH: &str = "/images";

/// Where the agent of a `direct` deploy gets the image (Ironic's
/// `[agent]image_download_source`; Ironic's `swift` has no equivalent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageDownloadSource {
    /// The agent downloads `image_source` itself.
    #[default]
    Http,
    /// The conductor caches (and converts) the image and serves it.
    Local,
}

impl ImageDownloadSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageDownloadSource::Http => "http",
            ImageDownloadSource::Local => "local",
        }
    }
}

impl FromStr for ImageDownloadSource {
    type Err = DriverError;

    fn from_str(s: &str) -> Result<Self, DriverError> {
        match s {
            "http" => Ok(ImageDownloadSource::Http),
            "local" => Ok(ImageDownloadSource::Local),
            other => Err(DriverError::InvalidParameter(format!(
                "Invalid value for image_download_source: {other:?}. Valid values are http or \
                 local{}",
                if other == "swift" {
                    " (Ferric has no Swift support)"
                } else {
                    ""
                }
            ))),
        }
    }
}

/// How the direct interface handles images; from the conductor's
/// configuration.
#[derive(Debug, Clone)]
pub struct DirectOptions {
    /// The default image download source; default http.
    pub image_download_source: ImageDownloadSource,
    /// With `local`, convert images to raw on the server (Ironic's
    /// `force_raw_images`; as in Ironic, only when `stream_raw_images` is
    /// set too, since an agent that spools images had better get the
    /// smaller original). Default true.
    pub force_raw_images: bool,
    /// Tell the agent to stream raw images straight to disk rather than
    /// download them to its spool first (Ironic's
    /// `[agent]stream_raw_images`). Default true.
    pub stream_raw_images: bool,
    /// The base URL of ferricd's HTTP server as agents reach it (Ironic's
    /// `[deploy]http_url`); needed by `local`. Default none.
    pub image_url_base: Option<String>,
    /// The cache `local` uses; None refuses `local`.
    pub image_cache: Option<ImageCache>,
}

impl Default for DirectOptions {
    fn default() -> Self {
        DirectOptions {
            image_download_source: ImageDownloadSource::Http,
            force_raw_images: true,
            stream_raw_images: true,
            image_url_base: None,
            image_cache: None,
        }
    }
}

/// Which deploy interface a [`DirectDeploy`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    /// `direct`: the agent writes the image (write_image).
    Direct,
    /// `custom-agent`: only the agent's own steps.
    CustomAgent,
}

/// Where `custom-agent` runs in-band deploy steps: after `deploy` (100),
/// before `prepare_instance_boot` (60).
pub const CUSTOM_AGENT_PRIORITIES: std::ops::RangeInclusive<i64> = 61..=99;

pub struct DirectDeploy {
    agent: AgentClient,
    options: Arc<DirectOptions>,
    flavor: Flavor,
}

impl DirectDeploy {
    pub fn new(agent: AgentClient, options: Arc<DirectOptions>) -> Self {
        DirectDeploy {
            agent,
            options,
            flavor: Flavor::Direct,
        }
    }

    /// The `custom-agent` deploy interface.
    pub fn custom_agent(agent: AgentClient, options: Arc<DirectOptions>) -> Self {
        DirectDeploy {
            agent,
            options,
            flavor: Flavor::CustomAgent,
        }
    }

    fn step(name: &str, priority: i64) -> StepDefinition {
        StepDefinition {
            interface: StepInterface::Deploy,
            step: name.into(),
            priority,
            argsinfo: None,
            requires_ramdisk: !matches!(
                name,
                "deploy" | "prepare_instance_boot" | "tear_down_agent" | "boot_instance"
            ),
        }
    }

    /// The node's image download source: instance_info, then driver_info,
    /// then the configuration (an empty value falls through, as in Ironic).
    pub fn download_source(&self, node: &Node) -> Result<ImageDownloadSource, DriverError> {
        // The agent cannot read this server's files: a file:// image is
        // always served from the cache, as in Ironic.
        if instance_str(node, "image_source").is_some_and(|s| s.starts_with("file://")) {
            return Ok(ImageDownloadSource::Local);
        }
        for (field, map) in [
            ("instance_info", &node.instance_info),
            ("driver_info", &node.driver_info),
        ] {
            match map.get(DOWNLOAD_SOURCE_KEY) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if s.is_empty() => {}
                Some(Value::String(s)) => return s.parse(),
                Some(other) => {
                    return Err(DriverError::InvalidParameter(format!(
                    "{field}.{DOWNLOAD_SOURCE_KEY} must be a string (http or local), not {other}"
                )))
                }
            }
        }
        Ok(self.options.image_download_source)
    }

    /// Whether `local` converts images to raw on the server.
    fn converts_to_raw(&self) -> bool {
        self.options.force_raw_images && self.options.stream_raw_images
    }

    /// The cache and agent-facing base URL `local` needs, or why not.
    fn local_setup(&self) -> Result<(&ImageCache, &str), DriverError> {
        let cache = self.options.image_cache.as_ref().ok_or_else(|| {
            DriverError::InvalidParameter(
                "image_download_source=local needs the conductor's image cache, which is not \
                 configured"
                    .into(),
            )
        })?;
        let base = self.options.image_url_base.as_deref().ok_or_else(|| {
            DriverError::InvalidParameter(
                "image_download_source=local needs the URL deploy agents reach this server at: \
                 set [conductor] image_url_base (or public_url, or listen on a specific address)"
                    .into(),
            )
        })?;
        Ok((cache, base.trim_end_matches('/')))
    }

    /// The cache request for a node's image.
    fn image_request(&self, node: &Node) -> Result<ImageRequest, DriverError> {
        let (source, checksum, algorithm) = source_and_checksum(node)?;
        let declared = match instance_str(node, "image_disk_format") {
            Some(name) => Some(Format::from_str(name).map_err(|e| {
                DriverError::InvalidParameter(format!("instance_info.image_disk_format: {e}"))
            })?),
            None => None,
        };
        // The server verifies the download; the cache refuses md5 unless
        // the operator allowed it, with the setting to change.
        if !ferric_image::checksum::is_url(checksum) {
            let parsed = ferric_image::checksum::Checksum::parse(checksum, algorithm, true)
                .map_err(|e| DriverError::InvalidParameter(format!("image checksum: {e}")))?;
            let md5_allowed = self
                .options
                .image_cache
                .as_ref()
                .is_some_and(|cache| cache.config().allow_md5_checksum);
            if parsed.algorithm == ferric_image::checksum::Algorithm::Md5 && !md5_allowed {
                return Err(DriverError::InvalidParameter(format!(
                    "image checksum: {}",
                    image_cache::MD5_DISABLED
                )));
            }
        }
        Ok(ImageRequest {
            url: source.to_string(),
            checksum: checksum.to_string(),
            checksum_algorithm: algorithm.map(str::to_string),
            declared_format: declared,
            permitted_formats: Policy::default().permitted,
            convert_to_raw: self.converts_to_raw(),
        })
    }

    /// Caches the node's image (once per image) and leases it to the node.
    async fn prepare_local_image(&self, node: &Node) -> Result<CachedImage, DriverError> {
        let (cache, _) = self.local_setup()?;
        let request = self.image_request(node)?;
        cache
            .prepare(&request, &node.uuid.to_string())
            .await
            .map_err(|e| match e {
                image_cache::CacheError::InvalidRequest(m) => DriverError::InvalidParameter(m),
                other => DriverError::Failed(format!(
                    "caching the image failed: {}",
                    image_cache::chain(&other)
                )),
            })
    }

    /// IPA's image_info for write_image.
    async fn image_info(&self, node: &Node) -> Result<Value, DriverError> {
        match self.download_source(node)? {
            ImageDownloadSource::Http => {
                let mut info = remote_image_info(node)?;
                info["stream_raw_images"] = json!(self.options.stream_raw_images);
                Ok(info)
            }
            ImageDownloadSource::Local => {
                let image = self.prepare_local_image(node).await?;
                let (_, base) = self.local_setup()?;
                Ok(json!({
                    "id": image_id(instance_str(node, "image_source").unwrap_or(&image.name)),
                    "urls": [format!("{base}{IMAGES_PATH}/{}", image.name)],
                    "os_hash_algo": "sha256",
                    "os_hash_value": image.sha256,
                    "disk_format": image.format,
                    "container_format": "bare",
                    "stream_raw_images": self.options.stream_raw_images,
                    "node_uuid": node.uuid.to_string(),
                }))
            }
        }
    }

    /// Ends the node's lease on its cached image.
    fn release_image(&self, node: &Node) {
        if let Some(cache) = &self.options.image_cache {
            cache.release(&node.uuid.to_string());
        }
    }
}

fn instance_str<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.instance_info
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The file name only: the query of a signed URL stays out of logs.
fn image_id(source: &str) -> &str {
    source
        .split(['?', '#'])
        .next()
        .unwrap_or(source)
        .rsplit('/')
        .next()
        .unwrap_or(source)
}

/// The http(s) image source and its checksum (value, algorithm).
fn source_and_checksum(node: &Node) -> Result<(&str, &str, Option<&str>), DriverError> {
    let source = instance_str(node, "image_source").ok_or_else(|| {
        DriverError::InvalidParameter("instance_info.image_source is required".into())
    })?;
    if !["http://", "https://", "file://"]
        .iter()
        .any(|scheme| source.starts_with(scheme))
    {
        return Err(DriverError::InvalidParameter(format!(
            "instance_info.image_source must be an http(s) or file:// URL for the direct \
             deploy (got a {} source)",
            source.split(':').next().unwrap_or("relative")
        )));
    }
    match (
        instance_str(node, "image_os_hash_algo"),
        instance_str(node, "image_os_hash_value"),
        instance_str(node, "image_checksum"),
    ) {
        (Some(algo), Some(value), _) => Ok((source, value, Some(algo))),
        (_, _, Some(checksum)) => Ok((source, checksum, None)),
        _ => Err(DriverError::InvalidParameter(
            "instance_info needs image_checksum, or image_os_hash_algo and image_os_hash_value"
                .into(),
        )),
    }
}

/// IPA's image_info for an agent that downloads `image_source` itself.
fn remote_image_info(node: &Node) -> Result<Value, DriverError> {
    let (source, checksum, algorithm) = source_and_checksum(node)?;
    let mut info = json!({
        "id": image_id(source),
        "urls": [source],
        "disk_format": instance_str(node, "image_disk_format"),
        "container_format": "bare",
        "stream_raw_images": true,
        "node_uuid": node.uuid.to_string(),
    });
    match algorithm {
        Some(algo) => {
            info["os_hash_algo"] = json!(algo);
            info["os_hash_value"] = json!(checksum);
        }
        None => info["checksum"] = json!(checksum),
    }
    Ok(info)
}

/// The config drive as the agent takes it: gzip+base64 text. A dict is
/// built into an ISO9660 config-2 drive here.
fn configdrive(node: &Node) -> Result<Option<Value>, DriverError> {
    match node.instance_info.get("configdrive") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(Value::String(s.clone()))),
        Some(dict @ Value::Object(_)) => {
            let drive = ferric_image::configdrive::ConfigDrive::from_ironic_dict(dict)
                .map_err(|e| DriverError::InvalidParameter(format!("config drive: {e}")))?
                .with_node_defaults(&node.uuid.to_string(), node.name.as_deref());
            let mut iso = std::io::Cursor::new(Vec::new());
            drive
                .write_iso(&mut iso)
                .map_err(|e| DriverError::Failed(format!("building the config drive: {e}")))?;
            Ok(Some(Value::String(ferric_image::configdrive::encode(
                iso.get_ref(),
            ))))
        }
        Some(_) => Err(DriverError::InvalidParameter(
            "the config drive must be a gzip+base64 string or a dict".into(),
        )),
    }
}

/// What the agent is told about the node: no secrets, and the config drive
/// only when `with_configdrive` (custom-agent steps read it; write_image
/// gets it built, as an argument).
fn node_for_agent(node: &Node, with_configdrive: bool) -> Value {
    let mut instance_info: Map<String, Value> = node.instance_info.clone();
    if !with_configdrive {
        instance_info.remove("configdrive");
    }
    json!({
        "uuid": node.uuid.to_string(),
        "name": node.name,
        "properties": node.properties,
        "instance_info": instance_info,
    })
}

impl DirectDeploy {
    /// One of the interface's deploy steps (write_image runs in the agent).
    async fn deploy_step(
        &self,
        node: &mut Node,
        step: &Step,
        context: StepContext<'_>,
    ) -> Result<StepOutcome, DriverError> {
        match step.step.as_str() {
            "deploy" => {
                // With `local`, the image is cached (and converted) before
                // the node boots: a bad image fails the deploy early, and
                // the download does not keep the agent waiting.
                if self.flavor == Flavor::Direct
                    && self.download_source(node)? == ImageDownloadSource::Local
                {
                    self.prepare_local_image(node).await?;
                }
                // The ramdisk is prepared; boot it and wait for its agent.
                context.power.reboot(node, false, None).await?;
                node.power_state = Some(PowerState::On);
                Ok(StepOutcome::Wait)
            }
            "write_image" => {
                let mut args = step.args.clone();
                // With `local`, a cache hit (the deploy step cached it) that
                // renews the node's lease until the agent is done.
                args.insert("image_info".into(), self.image_info(node).await?);
                if let Some(drive) = configdrive(node)? {
                    args.insert("configdrive".into(), drive);
                }
                let sent_step = json!({"interface": "deploy", "step": "write_image",
                                       "priority": step.priority, "args": args});
                // No deploy_version: the agent then does not compare hardware
                // manager versions (Ironic sends what get_deploy_steps said).
                let params = json!({"step": sent_step, "node": node_for_agent(node, self.flavor == Flavor::CustomAgent), "ports": []});
                let result = self
                    .agent
                    .execute(node, "deploy.execute_deploy_step", params, false)
                    .await?;
                if result["command_status"] == "FAILED" {
                    return Err(DriverError::Failed(command_error(&result)));
                }
                node.driver_internal_info
                    .insert(PENDING_KEY.into(), json!("write_image"));
                Ok(StepOutcome::Wait)
            }
            "prepare_instance_boot" => {
                context
                    .boot
                    .prepare_instance(node, context.boot_context())
                    .await?;
                context
                    .management
                    .set_boot_device(node, BootDevice::Disk, true)
                    .await?;
                Ok(StepOutcome::Done)
            }
            "tear_down_agent" => {
                if !node.disable_power_off {
                    context
                        .power
                        .set_power_state(node, PowerState::Off, None)
                        .await?;
                    node.power_state = Some(PowerState::Off);
                }
                Ok(StepOutcome::Done)
            }
            "boot_instance" => {
                context
                    .boot
                    .clean_up_ramdisk(node, context.boot_context())
                    .await?;
                context
                    .power
                    .set_power_state(node, PowerState::On, None)
                    .await?;
                node.power_state = Some(PowerState::On);
                node.driver_internal_info.remove(PROGRESS_KEY);
                Ok(StepOutcome::Done)
            }
            // Any other step is one the agent offered (the conductor only
            // plans steps the interface or the agent offers): run it there.
            _ => self.run_in_agent(node, StepKind::Deploy, step).await,
        }
    }

    /// Starts `step` in the agent and waits for its callback.
    async fn run_in_agent(
        &self,
        node: &mut Node,
        kind: StepKind,
        step: &Step,
    ) -> Result<StepOutcome, DriverError> {
        let sent_step = json!({"interface": "deploy", "step": step.step,
                               "priority": step.priority, "args": step.args});
        let params = json!({"step": sent_step, "node": node_for_agent(node, self.flavor == Flavor::CustomAgent), "ports": []});
        let command = format!("{}.execute_{}_step", kind.as_str(), kind.as_str());
        let result = self.agent.execute(node, &command, params, false).await?;
        if result["command_status"] == "FAILED" {
            return Err(DriverError::Failed(command_error(&result)));
        }
        node.driver_internal_info
            .insert(PENDING_KEY.into(), json!(step.step));
        Ok(StepOutcome::Wait)
    }

    /// A clean step runs in the agent; without one yet, boot the ramdisk
    /// first and run the step again once the agent heartbeats.
    async fn clean_step(
        &self,
        node: &mut Node,
        step: &Step,
        context: StepContext<'_>,
    ) -> Result<StepOutcome, DriverError> {
        if !node.driver_internal_info.contains_key("agent_url") {
            context
                .boot
                .prepare_ramdisk(node, context.boot_context())
                .await?;
            context.power.reboot(node, false, None).await?;
            node.power_state = Some(PowerState::On);
            node.driver_internal_info
                .insert(PENDING_KEY.into(), json!(AGENT_BOOT));
            return Ok(StepOutcome::Wait);
        }
        self.run_in_agent(node, StepKind::Clean, step).await
    }
}

/// The deploy-interface steps of an agent's `get_*_steps` answer
/// (`{"<kind>_steps": {"<manager>": [step, ...]}}`): for a name offered by
/// several managers, the highest priority (the agent already chose by
/// support level). Steps of other interfaces (raid) are left out: nothing
/// here runs them in the agent yet.
fn agent_step_definitions(kind: StepKind, answer: &Value) -> Vec<StepDefinition> {
    let key = format!("{}_steps", kind.as_str());
    let mut found: Vec<StepDefinition> = Vec::new();
    let managers = answer[key.as_str()]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for steps in managers.values() {
        for step in steps.as_array().into_iter().flatten() {
            let (Some(name), Some("deploy")) = (step["step"].as_str(), step["interface"].as_str())
            else {
                continue;
            };
            let priority = step["priority"].as_i64().unwrap_or(0).max(0);
            match found.iter_mut().find(|d| d.step == name) {
                Some(known) if known.priority >= priority => {}
                Some(known) => known.priority = priority,
                None => found.push(StepDefinition {
                    interface: StepInterface::Deploy,
                    step: name.to_string(),
                    priority,
                    argsinfo: step.get("argsinfo").filter(|a| !a.is_null()).cloned(),
                    requires_ramdisk: true,
                }),
            }
        }
    }
    found
}

#[async_trait]
impl DeployInterface for DirectDeploy {
    fn validate(&self, node: &Node) -> Result<(), DriverError> {
        if self.flavor == Flavor::CustomAgent {
            // No image: the agent's steps decide what is written.
            return Ok(());
        }
        remote_image_info(node)?;
        if self.download_source(node)? == ImageDownloadSource::Local {
            let (cache, _) = self.local_setup()?;
            let request = self.image_request(node)?;
            if request.url.starts_with("file://") {
                cache
                    .config()
                    .local_file(&request.url)
                    .map_err(|e| DriverError::InvalidParameter(image_cache::chain(&e)))?;
            }
        }
        Ok(())
    }

    fn steps(&self, kind: StepKind) -> Vec<StepDefinition> {
        match kind {
            StepKind::Deploy if self.flavor == Flavor::CustomAgent => vec![
                Self::step("deploy", 100),
                Self::step("prepare_instance_boot", 60),
                Self::step("tear_down_agent", 40),
                Self::step("boot_instance", 20),
            ],
            StepKind::Deploy => vec![
                Self::step("deploy", 100),
                Self::step("write_image", 80),
                Self::step("prepare_instance_boot", 60),
                Self::step("tear_down_agent", 40),
                Self::step("boot_instance", 20),
            ],
            // The agent's generic clean steps, run in the ramdisk.
            StepKind::Clean => vec![
                Self::step("erase_devices_metadata", 99),
                Self::step("erase_devices", 0),
            ],
            StepKind::Service => Vec::new(),
        }
    }

    async fn execute_step(
        &self,
        node: &mut Node,
        kind: StepKind,
        step: &Step,
        context: StepContext<'_>,
    ) -> Result<StepOutcome, DriverError> {
        match kind {
            StepKind::Deploy => {}
            StepKind::Clean => return self.clean_step(node, step, context).await,
            StepKind::Service => {
                return Err(DriverError::Unsupported(
                    "the direct interface has no service steps yet".into(),
                ))
            }
        }
        let result = self.deploy_step(node, step, context).await;
        if result.is_err() {
            // A failed deploy no longer needs its cached image.
            self.release_image(node);
        }
        result
    }

    fn boots_instance(&self) -> bool {
        true
    }

    fn in_band_priorities(&self) -> Option<std::ops::RangeInclusive<i64>> {
        (self.flavor == Flavor::CustomAgent).then_some(CUSTOM_AGENT_PRIORITIES)
    }

    async fn agent_steps(
        &self,
        node: &mut Node,
        kind: StepKind,
    ) -> Result<Option<Vec<StepDefinition>>, DriverError> {
        if kind == StepKind::Service {
            return Ok(None);
        }
        let command = format!("{}.get_{}_steps", kind.as_str(), kind.as_str());
        let params = json!({"node": node_for_agent(node, false), "ports": []});
        let result = self.agent.execute(node, &command, params, true).await?;
        if result["command_status"] != "SUCCEEDED" {
            return Err(DriverError::Failed(command_error(&result)));
        }
        let steps = agent_step_definitions(kind, &result["command_result"]);
        tracing::info!(node = %node.uuid, kind = kind.as_str(), steps = steps.len(), "the agent's steps");
        Ok(Some(steps))
    }

    fn uses_agent(&self) -> bool {
        true
    }

    async fn check_agent_step(
        &self,
        node: &mut Node,
        kind: StepKind,
    ) -> Result<AgentStepState, DriverError> {
        let Some(pending) = node
            .driver_internal_info
            .get(PENDING_KEY)
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            return Ok(AgentStepState::Finished);
        };
        if pending == AGENT_BOOT {
            node.driver_internal_info.remove(PENDING_KEY);
            return Ok(AgentStepState::AgentReady);
        }
        if pending == "write_image" {
            if let Some(cache) = &self.options.image_cache {
                cache.renew(&node.uuid.to_string());
            }
        }
        let (command_name, result_key) = match kind {
            StepKind::Clean => ("execute_clean_step", "clean_step"),
            _ => ("execute_deploy_step", "deploy_step"),
        };
        let Some(command) = self.agent.last_command(node, command_name).await? else {
            node.driver_internal_info.remove(PENDING_KEY);
            self.release_image(node);
            return Ok(AgentStepState::Failed(format!(
                "the agent has no record of the {pending} step (did it restart?)"
            )));
        };
        match command["command_status"].as_str() {
            Some("RUNNING") => {
                if let Some(progress) = command["command_result"].get("progress") {
                    node.driver_internal_info
                        .insert(PROGRESS_KEY.into(), progress.clone());
                }
                Ok(AgentStepState::Running)
            }
            Some("SUCCEEDED") => {
                node.driver_internal_info.remove(PENDING_KEY);
                if pending == "write_image" {
                    self.release_image(node);
                }
                let finished = command["command_result"][result_key]["step"].as_str();
                if finished != Some(pending.as_str()) {
                    return Ok(AgentStepState::Failed(format!(
                        "the agent finished step {finished:?}, not {pending}"
                    )));
                }
                if let Some(total) = node
                    .driver_internal_info
                    .get_mut(PROGRESS_KEY)
                    .and_then(Value::as_object_mut)
                {
                    if let Some(all) = total.get("bytes_total").cloned() {
                        total.insert("bytes_done".into(), all);
                    }
                    total.insert("eta_seconds".into(), json!(0));
                }
                Ok(AgentStepState::Finished)
            }
            _ => {
                node.driver_internal_info.remove(PENDING_KEY);
                self.release_image(node);
                Ok(AgentStepState::Failed(format!(
                    "the agent's {pending} step failed: {}",
                    command_error(&command)
                )))
            }
        }
    }

    async fn tear_down(&self, node: &mut Node) -> Result<(), DriverError> {
        self.release_image(node);
        node.driver_internal_info.remove(PENDING_KEY);
        node.driver_internal_info.remove(PROGRESS_KEY);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image_cache::CacheConfig;
    use ferric_types::ProvisionState;

    fn node(instance_info: Value) -> Node {
        let mut node = Node::new(
            uuid::Uuid::new_v4(),
            "fake-hardware",
            ProvisionState::Available,
        );
        node.instance_info = instance_info.as_object().unwrap().clone();
        node
    }

    fn direct(options: DirectOptions) -> DirectDeploy {
        DirectDeploy::new(AgentClient::default(), Arc::new(options))
    }

    fn local_options(base: Option<&str>) -> DirectOptions {
        let dir = std::env::temp_dir().join("ferric-direct-test-unused");
        DirectOptions {
            image_url_base: base.map(str::to_string),
            image_cache: Some(ImageCache::new(CacheConfig::new(dir)).unwrap()),
            ..DirectOptions::default()
        }
    }

    fn image() -> Value {
        json!({"image_source": "http://images.example/disk.qcow2",
               "image_os_hash_algo": "sha256", "image_os_hash_value": "a".repeat(64)})
    }

    #[test]
    fn instance_info_wins_over_driver_info_over_the_configuration() {
        let deploy = direct(DirectOptions::default());
        let mut n = node(image());
        assert_eq!(deploy.download_source(&n), Ok(ImageDownloadSource::Http));
        n.driver_info
            .insert(DOWNLOAD_SOURCE_KEY.into(), json!("local"));
        assert_eq!(deploy.download_source(&n), Ok(ImageDownloadSource::Local));
        n.instance_info
            .insert(DOWNLOAD_SOURCE_KEY.into(), json!("http"));
        assert_eq!(deploy.download_source(&n), Ok(ImageDownloadSource::Http));
        // Empty falls through, as in Ironic.
        n.instance_info
            .insert(DOWNLOAD_SOURCE_KEY.into(), json!(""));
        assert_eq!(deploy.download_source(&n), Ok(ImageDownloadSource::Local));
        let local = direct(DirectOptions {
            image_download_source: ImageDownloadSource::Local,
            ..DirectOptions::default()
        });
        assert_eq!(
            local.download_source(&node(image())),
            Ok(ImageDownloadSource::Local)
        );
    }

    #[test]
    fn unknown_sources_and_incomplete_local_setups_are_invalid_parameters() {
        let deploy = direct(local_options(Some("http://192.0.2.1:6385")));
        for (value, expect) in [
            (json!("swift"), "Swift"),
            (json!("ftp"), "Valid values are http or local"),
            (json!(5), "must be a string"),
        ] {
            let mut n = node(image());
            n.instance_info.insert(DOWNLOAD_SOURCE_KEY.into(), value);
            match deploy.validate(&n) {
                Err(DriverError::InvalidParameter(m)) => assert!(m.contains(expect), "{m}"),
                other => panic!("{other:?}"),
            }
        }
        let mut n = node(image());
        n.instance_info
            .insert(DOWNLOAD_SOURCE_KEY.into(), json!("local"));
        assert_eq!(deploy.validate(&n), Ok(()));
        // md5 is verified on the server only if the operator allows it;
        // local cannot work without a URL for agents or a cache.
        let mut md5 = n.clone();
        md5.instance_info
            .insert("image_os_hash_algo".into(), json!("md5"));
        md5.instance_info
            .insert("image_os_hash_value".into(), json!("b".repeat(32)));
        match deploy.validate(&md5) {
            Err(DriverError::InvalidParameter(m)) => {
                assert!(m.contains("allow_md5_checksum = true"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        let mut config = CacheConfig::new(std::env::temp_dir().join("ferric-direct-test-unused"));
        config.allow_md5_checksum = true;
        let lenient = direct(DirectOptions {
            image_url_base: Some("http://192.0.2.1:6385".into()),
            image_cache: Some(ImageCache::new(config).unwrap()),
            ..DirectOptions::default()
        });
        assert_eq!(lenient.validate(&md5), Ok(()));
        match direct(local_options(None)).validate(&n) {
            Err(DriverError::InvalidParameter(m)) => assert!(m.contains("image_url_base"), "{m}"),
            other => panic!("{other:?}"),
        }
        let no_cache = direct(DirectOptions {
            image_url_base: Some("http://192.0.2.1:6385".into()),
            ..DirectOptions::default()
        });
        assert!(matches!(
            no_cache.validate(&n),
            Err(DriverError::InvalidParameter(_))
        ));
        // http needs neither.
        n.instance_info
            .insert(DOWNLOAD_SOURCE_KEY.into(), json!("http"));
        assert_eq!(direct(DirectOptions::default()).validate(&n), Ok(()));
    }

    #[tokio::test]
    async fn http_image_info_carries_the_stream_raw_images_setting() {
        let deploy = direct(DirectOptions {
            stream_raw_images: false,
            ..DirectOptions::default()
        });
        let info = deploy.image_info(&node(image())).await.unwrap();
        assert_eq!(info["urls"], json!(["http://images.example/disk.qcow2"]));
        assert_eq!(info["stream_raw_images"], false);
        assert_eq!(info["os_hash_value"], "a".repeat(64));
    }

    #[test]
    fn agent_steps_are_read_per_name_with_the_highest_priority() {
        let answer = json!({"clean_steps": {
            "GenericHardwareManager": [
                {"step": "erase_devices_metadata", "priority": 99, "interface": "deploy"},
                {"step": "erase_devices", "priority": 0, "interface": "deploy"},
                {"step": "create_configuration", "priority": 0, "interface": "raid"}],
            "OperatorSteps": [
                {"step": "erase_devices", "priority": 10, "interface": "deploy",
                 "argsinfo": {"passes": {"required": false}}},
                {"step": "flash", "priority": 0, "interface": "deploy"}]}});
        let steps = agent_step_definitions(StepKind::Clean, &answer);
        let summary: Vec<(&str, i64)> = steps
            .iter()
            .map(|d| (d.step.as_str(), d.priority))
            .collect();
        assert_eq!(
            summary,
            [
                ("erase_devices_metadata", 99),
                ("erase_devices", 10),
                ("flash", 0)
            ]
        );
        assert!(steps.iter().all(|d| d.interface == StepInterface::Deploy));
        assert!(agent_step_definitions(StepKind::Deploy, &answer).is_empty());
    }
}
