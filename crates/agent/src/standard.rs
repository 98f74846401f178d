//! The agent's built-in commands (IPA's extensions), through the generic
//! hardware manager: clean steps that wipe disks, `standby.sync`, and the
//! inventory. Deploy steps (`write_image`) come with the direct deploy.

use crate::commands::{CommandError, CommandFuture, CommandHandler};
use crate::hints::BlockDevice;
use crate::inventory::{self, Filter};
use ferric_image::sink::BlockSink;
use ferric_image::writer::{DiskWriter, HoleMode, WriterOptions};
use serde_json::{json, Value};
use std::path::PathBuf;

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

/// The commands of a stock agent.
pub struct StandardHandler {
    disks: Disks,
}

impl StandardHandler {
    pub fn new(disks: Disks) -> Self {
        StandardHandler { disks }
    }
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
        "hardware_manager_version": {HARDWARE_MANAGER: HARDWARE_MANAGER_VERSION},
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
}

impl CommandHandler for StandardHandler {
    fn run(&self, extension: &str, command: &str, params: Value) -> CommandFuture {
        let key = (extension.to_string(), command.to_string());
        let disks = self.disks.clone();
        Box::pin(async move {
            // Disk and /sys work blocks: off the async runtime.
            tokio::task::spawn_blocking(move || {
                let handler = StandardHandler::new(disks);
                match (key.0.as_str(), key.1.as_str()) {
                    ("clean", "get_clean_steps") => Ok(clean_steps()),
                    ("clean", "execute_clean_step") => handler.execute_clean_step(&params),
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
        matches!(
            (extension, command),
            ("clean", "get_clean_steps")
                | ("clean", "execute_clean_step")
                | ("standby", "sync")
                | ("system", "get_inventory")
        )
    }

    fn has_extension(&self, extension: &str) -> bool {
        matches!(extension, "clean" | "standby" | "system")
    }

    fn is_synchronous(&self, extension: &str, command: &str) -> bool {
        matches!(
            (extension, command),
            ("clean", "get_clean_steps") | ("standby", "sync") | ("system", "get_inventory")
        )
    }
}
