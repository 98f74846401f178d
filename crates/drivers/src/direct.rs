//! The `direct` deploy interface: the node boots the deploy ramdisk, whose
//! agent writes the image itself, streaming it from `image_source` and
//! verifying its checksum as it goes. Ironic's deploy steps: deploy (100),
//! write_image (80, in the agent), prepare_instance_boot (60),
//! tear_down_agent (40), boot_instance (20).

use crate::agent_client::{command_error, AgentClient};
use crate::interfaces::*;
use crate::DriverError;
use async_trait::async_trait;
use ferric_types::{Node, PowerState, Step, StepInterface};
use serde_json::{json, Map, Value};

/// The in-band step the agent is running, in driver_internal_info.
const PENDING_KEY: &str = "agent_pending_step";
/// The pending marker of a step that booted the ramdisk and waits for its
/// agent before running in it.
const AGENT_BOOT: &str = "(agent boot)";
/// The agent's last progress report for a running step.
pub const PROGRESS_KEY: &str = "deploy_progress";

pub struct DirectDeploy {
    agent: AgentClient,
}

impl DirectDeploy {
    pub fn new(agent: AgentClient) -> Self {
        DirectDeploy { agent }
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
}

fn instance_str<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.instance_info
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// IPA's image_info for write_image, from the node's instance_info.
fn image_info(node: &Node) -> Result<Value, DriverError> {
    let source = instance_str(node, "image_source").ok_or_else(|| {
        DriverError::InvalidParameter("instance_info.image_source is required".into())
    })?;
    if !(source.starts_with("http://") || source.starts_with("https://")) {
        return Err(DriverError::InvalidParameter(format!(
            "instance_info.image_source must be an http(s) URL for the direct deploy; \
             image_download_source=local is not implemented yet (got a {} source)",
            source.split(':').next().unwrap_or("relative")
        )));
    }
    let mut info = json!({
        // The file name only: the query of a signed URL stays out of logs.
        "id": source.split(['?', '#']).next().unwrap_or(source).rsplit('/').next().unwrap_or(source),
        "urls": [source],
        "disk_format": instance_str(node, "image_disk_format"),
        "container_format": "bare",
        "stream_raw_images": true,
        "node_uuid": node.uuid.to_string(),
    });
    match (
        instance_str(node, "image_os_hash_algo"),
        instance_str(node, "image_os_hash_value"),
        instance_str(node, "image_checksum"),
    ) {
        (Some(algo), Some(value), _) => {
            info["os_hash_algo"] = json!(algo);
            info["os_hash_value"] = json!(value);
        }
        (_, _, Some(checksum)) => info["checksum"] = json!(checksum),
        _ => {
            return Err(DriverError::InvalidParameter(
                "instance_info needs image_checksum, or image_os_hash_algo and image_os_hash_value"
                    .into(),
            ))
        }
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

/// What the agent is told about the node: no secrets.
fn node_for_agent(node: &Node) -> Value {
    let mut instance_info: Map<String, Value> = node.instance_info.clone();
    instance_info.remove("configdrive");
    json!({
        "uuid": node.uuid.to_string(),
        "name": node.name,
        "properties": node.properties,
        "instance_info": instance_info,
    })
}

impl DirectDeploy {
    /// A clean step runs in the agent; without one yet, boot the ramdisk
    /// first and run the step again once the agent heartbeats.
    async fn clean_step(
        &self,
        node: &mut Node,
        step: &Step,
        context: StepContext<'_>,
    ) -> Result<StepOutcome, DriverError> {
        if !node.driver_internal_info.contains_key("agent_url") {
            context.boot.prepare_ramdisk(node).await?;
            context.power.reboot(node, false, None).await?;
            node.power_state = Some(PowerState::On);
            node.driver_internal_info
                .insert(PENDING_KEY.into(), json!(AGENT_BOOT));
            return Ok(StepOutcome::Wait);
        }
        let sent_step = json!({"interface": "deploy", "step": step.step,
                               "priority": step.priority, "args": step.args});
        let params = json!({"step": sent_step, "node": node_for_agent(node), "ports": []});
        let result = self
            .agent
            .execute(node, "clean.execute_clean_step", params, false)
            .await?;
        if result["command_status"] == "FAILED" {
            return Err(DriverError::Failed(command_error(&result)));
        }
        node.driver_internal_info
            .insert(PENDING_KEY.into(), json!(step.step));
        Ok(StepOutcome::Wait)
    }
}

#[async_trait]
impl DeployInterface for DirectDeploy {
    fn validate(&self, node: &Node) -> Result<(), DriverError> {
        image_info(node).map(|_| ())
    }

    fn steps(&self, kind: StepKind) -> Vec<StepDefinition> {
        match kind {
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
        match step.step.as_str() {
            "deploy" => {
                // The ramdisk is prepared; boot it and wait for its agent.
                context.power.reboot(node, false, None).await?;
                node.power_state = Some(PowerState::On);
                Ok(StepOutcome::Wait)
            }
            "write_image" => {
                let mut args = step.args.clone();
                args.insert("image_info".into(), image_info(node)?);
                if let Some(drive) = configdrive(node)? {
                    args.insert("configdrive".into(), drive);
                }
                let sent_step = json!({"interface": "deploy", "step": "write_image",
                                       "priority": step.priority, "args": args});
                // No deploy_version: the agent then does not compare hardware
                // manager versions (Ironic sends what get_deploy_steps said).
                let params = json!({"step": sent_step, "node": node_for_agent(node), "ports": []});
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
                context.boot.prepare_instance(node).await?;
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
                context.boot.clean_up_ramdisk(node).await?;
                context
                    .power
                    .set_power_state(node, PowerState::On, None)
                    .await?;
                node.power_state = Some(PowerState::On);
                node.driver_internal_info.remove(PROGRESS_KEY);
                Ok(StepOutcome::Done)
            }
            other => Err(DriverError::Unsupported(format!(
                "the direct interface has no deploy step {other:?}"
            ))),
        }
    }

    fn boots_instance(&self) -> bool {
        true
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
        let (command_name, result_key) = match kind {
            StepKind::Clean => ("execute_clean_step", "clean_step"),
            _ => ("execute_deploy_step", "deploy_step"),
        };
        let Some(command) = self.agent.last_command(node, command_name).await? else {
            node.driver_internal_info.remove(PENDING_KEY);
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
                Ok(AgentStepState::Failed(format!(
                    "the agent's {pending} step failed: {}",
                    command_error(&command)
                )))
            }
        }
    }

    async fn tear_down(&self, node: &mut Node) -> Result<(), DriverError> {
        node.driver_internal_info.remove(PENDING_KEY);
        node.driver_internal_info.remove(PROGRESS_KEY);
        Ok(())
    }
}
