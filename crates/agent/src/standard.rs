//! The agent's built-in commands (IPA's extensions), through the generic
//! hardware manager: clean steps that wipe disks, the `write_image` deploy
//! step ([`crate::deploy`]), `standby.sync` and `standby.get_partition_uuids`,
//! and the inventory.

use crate::commands::{CommandError, CommandFuture, CommandHandler};
use crate::deploy::{self, DeployOptions, DeployProgress};
use crate::download::chain;
use crate::hints::BlockDevice;
use crate::inventory::{self, Filter};
use crate::server::RunningResult;
use ferric_image::sink::BlockSink;
use ferric_image::writer::{DiskWriter, HoleMode, WriterOptions};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The name the agent reports for its generic hardware manager.
pub const HARDWARE_MANAGER: &str = "GenericHardwareManager";
/// Its version, reported with the steps (the conductor compares it).
pub const HARDWARE_MANAGER_VERSION: &str = "1.2";

/// Which disks the agent may touch.
#[derive(Debug, Clone)]
pub enum Disks {
    /// Every disk the kernel shows under `<root>/sys/block`.
    Discovered { sys_root: PathBuf, filter: Filter },
    /// Only these device paths (read from sysfs), e.g. `--device /dev/loop3`.
    Only {
        sys_root: PathBuf,
        filter: Filter,
        names: Vec<String>,
    },
}

impl Disks {
    pub fn list(&self) -> Vec<BlockDevice> {
        match self {
            Disks::Discovered { sys_root, filter } => {
                inventory::block_devices_with(sys_root, filter)
            }
            Disks::Only {
                sys_root,
                filter,
                names,
            } => inventory::block_devices_with(sys_root, filter)
                .into_iter()
                .filter(|d| names.contains(&d.name))
                .collect(),
        }
    }

    fn sys_root(&self) -> &PathBuf {
        match self {
            Disks::Discovered { sys_root, .. } | Disks::Only { sys_root, .. } => sys_root,
        }
    }
}

/// The commands of a stock agent. Clones share the progress slot and the
/// record of the last disk written.
#[derive(Clone)]
pub struct StandardHandler {
    disks: Disks,
    deploy: Arc<DeployOptions>,
    running: RunningResult,
    /// The disk `write_image` last wrote, for `get_partition_uuids`.
    written: Arc<Mutex<Option<String>>>,
}

impl StandardHandler {
    pub fn new(disks: Disks) -> Self {
        StandardHandler {
            disks,
            deploy: Arc::new(DeployOptions::default()),
            running: RunningResult::default(),
            written: Arc::new(Mutex::new(None)),
        }
    }

    /// How `write_image` downloads and writes (spool directory, md5, ...).
    pub fn with_deploy_options(mut self, options: DeployOptions) -> Self {
        self.deploy = Arc::new(options);
        self
    }

    /// Loads the operator's step definitions from `dir` (none: no operator
    /// steps). A definition that cannot be read is an error: the agent must
    /// not start with fewer steps than the operator gave it.
    pub fn with_step_dir(self, dir: Option<PathBuf>) -> anyhow::Result<Self> {
        // TODO(helper): load the step definitions.
        let _ = dir;
        Ok(self)
    }

    /// Where `write_image` reports its progress: hand it to
    /// [`crate::server::CommandApi::with_running_result`] so the running
    /// command shows `{"progress": {...}}` as its `command_result`.
    pub fn running_result(&self) -> RunningResult {
        self.running.clone()
    }
}

fn deploy_steps() -> Value {
    let argsinfo = json!({
        "image_info": {"description": "Image information: id, urls, checksum or \
                        os_hash_algo and os_hash_value, disk_format, proxies", "required": true},
        "configdrive": {"description": "The config drive, gzip+base64 or its URL", "required": false},
    });
    json!({
        "deploy_steps": {
            HARDWARE_MANAGER: [
                {"step": "write_image", "priority": 80, "interface": "deploy",
                 "reboot_requested": false, "argsinfo": argsinfo},
            ]
        },
        "hardware_manager_version": hardware_manager_version(),
    })
}

fn hardware_manager_version() -> Value {
    json!({HARDWARE_MANAGER: HARDWARE_MANAGER_VERSION})
}

fn clean_steps() -> Value {
    json!({
        "clean_steps": {
            HARDWARE_MANAGER: [
                {"step": "erase_devices_metadata", "priority": 99, "interface": "deploy",
                 "reboot_requested": false, "abortable": true, "argsinfo": null},
                {"step": "erase_devices", "priority": 0, "interface": "deploy",
                 "reboot_requested": false, "abortable": true, "argsinfo": null},
            ]
        },
        "hardware_manager_version": hardware_manager_version(),
    })
}

/// Zeroes the start and the end of a disk, where partition tables (primary
/// and backup GPT, MBR) and most filesystem and RAID signatures live.
fn erase_metadata(disk: &BlockDevice) -> Result<(), String> {
    let writer = DiskWriter::open(std::path::Path::new(&disk.name), WriterOptions::default())
        .map_err(|e| format!("{}: {e}", disk.name))?;
    writer.wipe().map_err(|e| format!("{}: {e}", disk.name))
}

/// Makes the whole disk read as zeros (BLKZEROOUT, which unmaps where the
/// device guarantees zeros and writes them otherwise).
fn erase_all(disk: &BlockDevice) -> Result<(), String> {
    let mut writer = DiskWriter::open(
        std::path::Path::new(&disk.name),
        WriterOptions {
            holes: HoleMode::Zero,
            hold_back: 0,
            ..WriterOptions::default()
        },
    )
    .map_err(|e| format!("{}: {e}", disk.name))?;
    let size = writer.capacity();
    writer
        .hole(0, size)
        .and_then(|()| writer.finish(size))
        .map_err(|e| format!("{}: {e}", disk.name))?;
    writer.commit().map_err(|e| format!("{}: {e}", disk.name))?;
    Ok(())
}

impl StandardHandler {
    fn execute_clean_step(&self, params: &Value) -> Result<Value, CommandError> {
        let step = params.get("step").cloned().unwrap_or(Value::Null);
        let name = step["step"]
            .as_str()
            .ok_or_else(|| CommandError::invalid_params("the step has no name"))?;
        let erase: fn(&BlockDevice) -> Result<(), String> = match name {
            "erase_devices_metadata" => erase_metadata,
            "erase_devices" => erase_all,
            other => {
                return Err(CommandError::invalid_params(format!(
                    "no clean step {other:?} in {HARDWARE_MANAGER}"
                )))
            }
        };
        let disks = self.disks.list();
        let mut failures = Vec::new();
        for disk in &disks {
            tracing::info!(disk = %disk.name, step = name, "cleaning");
            if let Err(e) = erase(disk) {
                failures.push(e);
            }
        }
        if !failures.is_empty() {
            return Err(CommandError::execution(format!(
                "{name} failed on {} of {} disks: {}",
                failures.len(),
                disks.len(),
                failures.join("; ")
            )));
        }
        Ok(json!({"clean_result": null, "clean_step": step}))
    }

    fn execute_deploy_step(&self, params: &Value) -> Result<Value, CommandError> {
        let step = &params["step"];
        // IPA: the hardware managers must not have changed since the
        // conductor fetched the steps.
        match params.get("deploy_version") {
            None | Some(Value::Null) => {}
            Some(version) if *version == hardware_manager_version() => {}
            Some(version) => {
                return Err(CommandError::version_mismatch(format!(
                    "the conductor has hardware manager versions {version}, this agent {}",
                    hardware_manager_version()
                )))
            }
        }
        match step["step"].as_str() {
            Some("write_image") => {}
            other => {
                return Err(CommandError::invalid_params(format!(
                    "no deploy step {} in {HARDWARE_MANAGER}",
                    other.map_or_else(|| "(unnamed)".to_owned(), |s| format!("{s:?}"))
                )))
            }
        }
        let node = params.get("node").cloned().unwrap_or(Value::Null);
        let args = step.get("args").cloned().unwrap_or_else(|| json!({}));
        let disks = self.disks.list();
        let running = self.running.clone();
        let report = move |progress: DeployProgress| running.set(progress.to_json());
        let outcome = deploy::write_image(&args, &node, &disks, &self.deploy, &report)
            .map_err(|error| CommandError::execution(chain(&error)))?;
        *self.written.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome.device.clone());
        Ok(json!({"deploy_result": outcome.to_deploy_result(), "deploy_step": step}))
    }

    fn get_partition_uuids(&self) -> Result<Value, CommandError> {
        let written = self
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(device) = written else {
            // IPA answers {} until an image was written.
            tracing::warn!("get_partition_uuids before any image was written");
            return Ok(json!({}));
        };
        deploy::partition_uuids(std::path::Path::new(&device))
            .map_err(|error| CommandError::execution(chain(&error)))
    }
}

/// The commands this agent offers: (extension, command, synchronous).
/// Synchronous ones answer at once and never make the agent busy.
const COMMANDS: &[(&str, &str, bool)] = &[
    ("clean", "get_clean_steps", true),
    ("clean", "execute_clean_step", false),
    ("deploy", "get_deploy_steps", true),
    ("deploy", "execute_deploy_step", false),
    ("standby", "get_partition_uuids", true),
    ("standby", "sync", true),
    ("system", "get_inventory", true),
];

impl CommandHandler for StandardHandler {
    fn run(&self, extension: &str, command: &str, params: Value) -> CommandFuture {
        let key = (extension.to_string(), command.to_string());
        let handler = self.clone();
        Box::pin(async move {
            // Disk and /sys work blocks: off the async runtime.
            tokio::task::spawn_blocking(move || {
                match (key.0.as_str(), key.1.as_str()) {
                    ("clean", "get_clean_steps") => Ok(clean_steps()),
                    ("clean", "execute_clean_step") => handler.execute_clean_step(&params),
                    ("deploy", "get_deploy_steps") => Ok(deploy_steps()),
                    ("deploy", "execute_deploy_step") => handler.execute_deploy_step(&params),
                    ("standby", "get_partition_uuids") => handler.get_partition_uuids(),
                    ("standby", "sync") => {
                        // SAFETY: sync(2) takes no arguments and cannot fail.
                        unsafe { libc::sync() };
                        Ok(Value::Null)
                    }
                    ("system", "get_inventory") => {
                        Ok(inventory::inventory(handler.disks.sys_root()))
                    }
                    (ext, cmd) => Err(CommandError::invalid_command(format!(
                        "{ext}.{cmd} is not implemented by this agent"
                    ))),
                }
            })
            .await
            .unwrap_or_else(|e| {
                Err(CommandError::execution(format!(
                    "the command panicked: {e}"
                )))
            })
        })
    }

    fn knows(&self, extension: &str, command: &str) -> bool {
        COMMANDS
            .iter()
            .any(|(e, c, _)| (*e, *c) == (extension, command))
    }

    fn has_extension(&self, extension: &str) -> bool {
        COMMANDS.iter().any(|(e, _, _)| *e == extension)
    }

    fn is_synchronous(&self, extension: &str, command: &str) -> bool {
        COMMANDS
            .iter()
            .any(|(e, c, sync)| *sync && (*e, *c) == (extension, command))
    }

    fn validate(&self, extension: &str, command: &str, params: &Value) -> Result<(), CommandError> {
        if (extension, command) == ("deploy", "execute_deploy_step")
            && !params["step"]["step"].is_string()
        {
            return Err(CommandError::invalid_params(
                "execute_deploy_step needs a step: {\"step\": {\"step\": <name>, \"args\": {...}}}",
            ));
        }
        Ok(())
    }
}
