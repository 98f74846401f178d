//! Hardware managers (IPA's `hardware.py`): each manager says how well it
//! supports this machine, offers clean, deploy and service steps, and runs
//! the steps it implements. The [`HardwareManagers`] dispatcher keeps the
//! managers that support the machine at all, best first; a step runs in the
//! best manager that implements it, so a more specific manager (a vendor's,
//! or the operator's step definitions) overrides a generic step by name.
//!
//! The [`GenericHardwareManager`] is the agent's own: inventory, root
//! device selection, `write_image`, `install_coreos`, and the
//! disk-erasing clean steps.

use crate::commands::CommandError;
use crate::coreos::{self, CoreosOptions};
use crate::deploy::{self, DeployOptions, DeployProgress};
use crate::download::chain;
use crate::hints::BlockDevice;
use crate::inventory::{self, Filter};
use crate::server::RunningResult;
use ferric_image::sink::BlockSink;
use ferric_image::writer::{DiskWriter, HoleMode, WriterOptions};
use serde::Serialize;
use serde_json::{json, Value};
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// How well a manager supports this machine (IPA's `HardwareSupport`).
/// Managers answering `None` are not used at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum SupportLevel {
    None = 0,
    Generic = 1,
    Mainline = 2,
    ServiceProvider = 3,
}

/// Which operation a step belongs to; each has its own extension
/// (`clean`, `deploy`, `service`) and its own list of steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StepKind {
    Clean,
    Deploy,
    Service,
}

impl StepKind {
    /// The name used in the command API: `clean`, `deploy`, `service`.
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Clean => "clean",
            StepKind::Deploy => "deploy",
            StepKind::Service => "service",
        }
    }

    pub fn from_name(name: &str) -> Option<StepKind> {
        match name {
            "clean" => Some(StepKind::Clean),
            "deploy" => Some(StepKind::Deploy),
            "service" => Some(StepKind::Service),
            _ => None,
        }
    }
}

/// A step as the agent lists it to the conductor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub step: String,
    /// 0: only run when requested (manual cleaning, deploy templates).
    pub priority: u32,
    /// The conductor interface that runs it, usually `deploy`.
    pub interface: String,
    pub reboot_requested: bool,
    /// Whether the conductor may abort it; not listed for deploy steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abortable: Option<bool>,
    /// `{arg: {"description": ..., "required": bool}}`, or null.
    pub argsinfo: Option<Value>,
}

/// What a step is run with: the step as the conductor sent it, its
/// arguments, the node and its ports.
#[derive(Debug, Clone, Copy)]
pub struct StepCall<'a> {
    pub kind: StepKind,
    pub name: &'a str,
    /// `step.args`, an object (`{}` when the conductor sent none).
    pub args: &'a Value,
    pub node: &'a Value,
    pub ports: &'a Value,
}

/// A hardware manager. Everything but the name and the support level is
/// optional; `None` from an operation means "not mine" (IPA's
/// `IncompatibleHardwareMethodError`) and passes it to the next manager.
pub trait HardwareManager: Send + Sync + 'static {
    /// The name the steps and versions are listed under.
    fn name(&self) -> &str;

    /// Compared by the conductor before each step: a change since it
    /// fetched the steps restarts the operation.
    fn version(&self) -> String {
        "1.0".to_owned()
    }

    /// Asked once, when the dispatcher is built.
    fn evaluate_hardware_support(&self) -> SupportLevel;

    fn clean_steps(&self, _node: &Value, _ports: &Value) -> Vec<Step> {
        Vec::new()
    }

    fn deploy_steps(&self, _node: &Value, _ports: &Value) -> Vec<Step> {
        Vec::new()
    }

    fn service_steps(&self, _node: &Value, _ports: &Value) -> Vec<Step> {
        Vec::new()
    }

    /// Runs a step; `None` if this manager does not implement it. Runs on a
    /// blocking thread.
    fn execute_step(&self, _call: &StepCall<'_>) -> Option<Result<Value, CommandError>> {
        None
    }

    /// The hardware inventory (`system.get_inventory`).
    fn inventory(&self) -> Option<Value> {
        None
    }

    /// The disk the operating system goes on, for `node`.
    fn os_install_device(&self, _node: &Value) -> Option<Result<BlockDevice, CommandError>> {
        None
    }
}

/// The managers that support this machine, best first. Cheap to clone.
#[derive(Clone)]
pub struct HardwareManagers {
    managers: Vec<(SupportLevel, Arc<dyn HardwareManager>)>,
}

impl std::fmt::Debug for HardwareManagers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.managers.iter().map(|(s, m)| (m.name(), s)))
            .finish()
    }
}

impl HardwareManagers {
    /// Asks each manager how well it supports the machine, drops those
    /// that do not, and orders the rest by support level, then by name.
    pub fn new(candidates: impl IntoIterator<Item = Arc<dyn HardwareManager>>) -> Self {
        let mut managers: Vec<_> = candidates
            .into_iter()
            .filter_map(|manager| {
                let support = manager.evaluate_hardware_support();
                if support == SupportLevel::None {
                    tracing::info!(manager = manager.name(), "hardware manager not supported here");
                    return None;
                }
                tracing::info!(manager = manager.name(), support = ?support, "hardware manager found");
                Some((support, manager))
            })
            .collect();
        managers.sort_by(|(sa, a), (sb, b)| sb.cmp(sa).then_with(|| a.name().cmp(b.name())));
        HardwareManagers { managers }
    }

    /// The managers kept, best first, with their support levels.
    pub fn managers(&self) -> impl Iterator<Item = (SupportLevel, &dyn HardwareManager)> {
        self.managers.iter().map(|(s, m)| (*s, m.as_ref()))
    }

    /// `{manager name: version}` for every manager kept (IPA's
    /// `get_current_versions`, the `hardware_manager_version` of the
    /// step lists).
    pub fn versions(&self) -> BTreeMap<String, String> {
        self.managers
            .iter()
            .map(|(_, m)| (m.name().to_owned(), m.version()))
            .collect()
    }

    /// IPA's `check_versions`: the versions the conductor recorded when
    /// it fetched the steps must still be ours. Null or `{}` (a conductor
    /// that never fetched them) is not checked.
    pub fn check_versions(&self, recorded: Option<&Value>) -> Result<(), CommandError> {
        match recorded {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::Object(map)) if map.is_empty() => return Ok(()),
            Some(_) => {}
        }
        let ours = json!(self.versions());
        if recorded == Some(&ours) {
            return Ok(());
        }
        Err(CommandError::version_mismatch(format!(
            "the conductor has hardware manager versions {}, this agent {ours}",
            recorded.cloned().unwrap_or_default()
        )))
    }

    /// The steps of every manager, each step name once (IPA's
    /// `deduplicate_steps`): the step of the best-supported manager wins,
    /// then the higher priority, then the manager whose name sorts first.
    pub fn steps(
        &self,
        kind: StepKind,
        node: &Value,
        ports: &Value,
    ) -> BTreeMap<String, Vec<Step>> {
        // The winner has the smallest (IPA's `_step_sort_key`):
        fn key(
            support: SupportLevel,
            priority: u32,
            manager: &str,
        ) -> (Reverse<SupportLevel>, Reverse<u32>, &str) {
            (Reverse(support), Reverse(priority), manager)
        }
        let listed: Vec<(SupportLevel, &str, Vec<Step>)> = self
            .managers
            .iter()
            .map(|(support, manager)| {
                let steps = match kind {
                    StepKind::Clean => manager.clean_steps(node, ports),
                    StepKind::Deploy => manager.deploy_steps(node, ports),
                    StepKind::Service => manager.service_steps(node, ports),
                };
                (*support, manager.name(), steps)
            })
            .collect();
        let mut winners: BTreeMap<&str, (SupportLevel, u32, &str)> = BTreeMap::new();
        for (support, manager, steps) in &listed {
            for step in steps {
                let wins = winners.get(step.step.as_str()).is_none_or(|(s, p, name)| {
                    key(*support, step.priority, manager) < key(*s, *p, name)
                });
                if wins {
                    winners.insert(&step.step, (*support, step.priority, manager));
                }
            }
        }
        // Each manager's winning steps, in the order it listed them.
        let mut by_manager: BTreeMap<String, Vec<Step>> = BTreeMap::new();
        for (_, manager, steps) in &listed {
            for step in steps {
                let won = winners
                    .get(step.step.as_str())
                    .is_some_and(|(_, p, name)| name == manager && *p == step.priority);
                if won {
                    winners.remove(step.step.as_str());
                    by_manager
                        .entry((*manager).to_owned())
                        .or_default()
                        .push(step.clone());
                }
            }
        }
        by_manager
    }

    /// Runs a step in the best manager that implements it (IPA's
    /// `dispatch_to_managers`).
    pub fn execute_step(&self, call: &StepCall<'_>) -> Result<Value, CommandError> {
        for (_, manager) in &self.managers {
            if let Some(outcome) = manager.execute_step(call) {
                tracing::info!(
                    manager = manager.name(),
                    step = call.name,
                    kind = call.kind.name(),
                    "ran a step"
                );
                return outcome;
            }
        }
        Err(method_not_found(&format!(
            "{} step {}",
            call.kind.name(),
            call.name
        )))
    }

    /// The inventory from the best manager that gives one.
    pub fn inventory(&self) -> Result<Value, CommandError> {
        self.managers
            .iter()
            .find_map(|(_, m)| m.inventory())
            .ok_or_else(|| method_not_found("list_hardware_info"))
    }

    /// The install disk from the best manager that chooses one.
    pub fn os_install_device(&self, node: &Value) -> Result<BlockDevice, CommandError> {
        self.managers
            .iter()
            .find_map(|(_, m)| m.os_install_device(node))
            .unwrap_or_else(|| Err(method_not_found("get_os_install_device")))
    }
}

/// No manager implements `what` (IPA's `HardwareManagerMethodNotFound`).
fn method_not_found(what: &str) -> CommandError {
    CommandError::new(
        "HardwareManagerMethodNotFound",
        "No HardwareManager found to handle method",
        format!("Could not find method: {what}"),
    )
}

// ------------------------------------------------------------- generic

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

    pub fn sys_root(&self) -> &Path {
        match self {
            Disks::Discovered { sys_root, .. } | Disks::Only { sys_root, .. } => sys_root,
        }
    }
}

/// The agent's own manager: works on any machine, at the lowest level.
pub struct GenericHardwareManager {
    disks: Disks,
    deploy: DeployOptions,
    running: RunningResult,
    /// The disk `write_image` or `install_coreos` last wrote, for
    /// `get_partition_uuids`.
    written: Arc<Mutex<Option<String>>>,
    /// Where `install_coreos` finds coreos-installer.
    coreos: CoreosOptions,
}

impl GenericHardwareManager {
    /// The name the steps and the version are listed under.
    pub const NAME: &'static str = "GenericHardwareManager";
    /// 1.2 as IPA's, whose steps the conductor expects.
    pub const VERSION: &'static str = "1.2";

    pub fn new(
        disks: Disks,
        deploy: DeployOptions,
        running: RunningResult,
        written: Arc<Mutex<Option<String>>>,
    ) -> Self {
        GenericHardwareManager {
            disks,
            deploy,
            running,
            written,
            coreos: CoreosOptions::from_env(),
        }
    }

    /// Where `install_coreos` finds coreos-installer (by default:
    /// `FERRIC_COREOS_INSTALLER`, the host root, `PATH`).
    pub fn with_coreos_options(mut self, options: CoreosOptions) -> Self {
        self.coreos = options;
        self
    }

    fn erase(
        &self,
        name: &str,
        erase: fn(&BlockDevice) -> Result<(), String>,
    ) -> Result<Value, CommandError> {
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
        Ok(Value::Null)
    }

    fn write_image(&self, call: &StepCall<'_>) -> Result<Value, CommandError> {
        let disks = self.disks.list();
        let running = self.running.clone();
        let report = move |progress: DeployProgress| running.set(progress.to_json());
        let outcome = deploy::write_image(call.args, call.node, &disks, &self.deploy, &report)
            .map_err(|error| CommandError::execution(chain(&error)))?;
        *self.written.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome.device.clone());
        Ok(outcome.to_deploy_result())
    }

    fn install_coreos(&self, call: &StepCall<'_>) -> Result<Value, CommandError> {
        let outcome = coreos::install_coreos(call.node, &self.disks.list(), &self.coreos)
            .map_err(|error| CommandError::execution(chain(&error)))?;
        *self.written.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome.device.clone());
        Ok(outcome.to_deploy_result())
    }
}

impl HardwareManager for GenericHardwareManager {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn version(&self) -> String {
        Self::VERSION.to_owned()
    }

    fn evaluate_hardware_support(&self) -> SupportLevel {
        SupportLevel::Generic
    }

    fn clean_steps(&self, _node: &Value, _ports: &Value) -> Vec<Step> {
        let erase = |step: &str, priority| Step {
            step: step.to_owned(),
            priority,
            interface: "deploy".to_owned(),
            reboot_requested: false,
            abortable: Some(true),
            argsinfo: None,
        };
        vec![
            erase("erase_devices_metadata", 99),
            // Writing every block takes hours: only when asked for.
            erase("erase_devices", 0),
        ]
    }

    fn deploy_steps(&self, _node: &Value, _ports: &Value) -> Vec<Step> {
        let argsinfo = json!({
            "image_info": {"description": "Image information: id, urls, checksum or \
                            os_hash_algo and os_hash_value, disk_format, proxies", "required": true},
            "configdrive": {"description": "The config drive, gzip+base64 or its URL", "required": false},
        });
        // Both only when requested, as IPA lists write_image: the `direct`
        // deploy interface runs its own write_image (priority 80) that
        // drives the agent's, and a `custom-agent` deploy must not write an
        // image unless asked. Metal3 requests install_coreos by name.
        vec![
            Step {
                step: "write_image".to_owned(),
                priority: 0,
                interface: "deploy".to_owned(),
                reboot_requested: false,
                abortable: None,
                argsinfo: Some(argsinfo),
            },
            Step {
                step: "install_coreos".to_owned(),
                priority: 0,
                interface: "deploy".to_owned(),
                reboot_requested: false,
                abortable: None,
                // Everything comes from the node's instance_info.
                argsinfo: None,
            },
        ]
    }

    fn execute_step(&self, call: &StepCall<'_>) -> Option<Result<Value, CommandError>> {
        match (call.kind, call.name) {
            (StepKind::Clean, "erase_devices_metadata") => {
                Some(self.erase(call.name, erase_metadata))
            }
            (StepKind::Clean, "erase_devices") => Some(self.erase(call.name, erase_all)),
            (StepKind::Deploy, "write_image") => Some(self.write_image(call)),
            (StepKind::Deploy, "install_coreos") => Some(self.install_coreos(call)),
            _ => None,
        }
    }

    fn inventory(&self) -> Option<Value> {
        Some(inventory::inventory(self.disks.sys_root()))
    }

    fn os_install_device(&self, node: &Value) -> Option<Result<BlockDevice, CommandError>> {
        Some(
            deploy::root_device(node, &self.disks.list()).map_err(|error| {
                CommandError::new(
                    "DeviceNotFound",
                    "Error finding the disk or partition device to deploy the image onto",
                    chain(&error),
                )
                .with_code(404)
            }),
        )
    }
}

/// Zeroes the start and the end of a disk, where partition tables (primary
/// and backup GPT, MBR) and most filesystem and RAID signatures live.
fn erase_metadata(disk: &BlockDevice) -> Result<(), String> {
    let path = Path::new(&disk.name);
    let writer = DiskWriter::open(path, WriterOptions::default())
        .map_err(|e| format!("{}: {e}", disk.name))?;
    // The partitions' own signatures go first, as IPA's wipefs of every
    // partition: a table written again later must not find old filesystems.
    // A table that cannot be read leaves only the disk's ends to wipe.
    let partitions = std::fs::File::open(path)
        .ok()
        .and_then(|mut file| {
            ferric_image::partition::read_table(&mut file, writer.capacity())
                .map_err(|e| tracing::warn!(disk = %disk.name, error = %e, "cannot read the partition table; wiping the disk's ends only"))
                .ok()
                .flatten()
        })
        .map(|table| {
            table
                .partitions
                .iter()
                .map(|p| (p.start, p.size))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    writer
        .wipe_with_partitions(&partitions)
        .map_err(|e| format!("{}: {e}", disk.name))
}

/// Makes the whole disk read as zeros (BLKZEROOUT, which unmaps where the
/// device guarantees zeros and writes them otherwise).
fn erase_all(disk: &BlockDevice) -> Result<(), String> {
    let mut writer = DiskWriter::open(
        Path::new(&disk.name),
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
