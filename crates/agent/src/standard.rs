//! The agent's commands (IPA's extensions): `clean`, `deploy` and
//! `service` steps through the hardware managers ([`crate::hardware`]),
//! the generic one and the operator's ([`crate::operator_steps`]);
//! `standby.sync`, `standby.get_partition_uuids`, `standby.power_off`,
//! `standby.run_image`, `system.get_inventory`, `system.lockdown`,
//! `log.collect_system_logs` and `image.install_bootloader`.

use crate::bootloader::{self, BootloaderOptions};
use crate::commands::{CommandError, CommandFuture, CommandHandler};
use crate::deploy::{self, DeployOptions};
use crate::download::chain;
use crate::hardware::{
    GenericHardwareManager, HardwareManager, HardwareManagers, StepCall, StepKind,
};
use crate::logs::{self, LogOptions};
use crate::operator_steps::OperatorSteps;
use crate::server::RunningResult;
use crate::system::{Power, PowerAction};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub use crate::hardware::Disks;

/// The name the agent reports for its generic hardware manager.
pub const HARDWARE_MANAGER: &str = GenericHardwareManager::NAME;
/// Its version, reported with the steps (the conductor compares it).
pub const HARDWARE_MANAGER_VERSION: &str = GenericHardwareManager::VERSION;

/// The commands of a stock agent. Clones share the progress slot, the
/// record of the last disk written, the cached node and the lockdown.
#[derive(Clone)]
pub struct StandardHandler {
    disks: Disks,
    deploy: DeployOptions,
    running: RunningResult,
    /// The disk `write_image` last wrote, for `get_partition_uuids`.
    written: Arc<Mutex<Option<String>>>,
    /// Managers besides the generic one (the operator's steps, vendors').
    extra: Vec<Arc<dyn HardwareManager>>,
    managers: HardwareManagers,
    /// The node of the last step command (IPA's `cache_node`), for
    /// `install_bootloader`'s choice of disk.
    node: Arc<Mutex<Value>>,
    power: Power,
    /// Set by `system.lockdown`: every later command is refused.
    locked: Arc<AtomicBool>,
    logs: Arc<LogOptions>,
    bootloader: Arc<BootloaderOptions>,
}

impl StandardHandler {
    pub fn new(disks: Disks) -> Self {
        let mut handler = StandardHandler {
            disks,
            deploy: DeployOptions::default(),
            running: RunningResult::default(),
            written: Arc::new(Mutex::new(None)),
            extra: Vec::new(),
            managers: HardwareManagers::new([]),
            node: Arc::new(Mutex::new(json!({}))),
            power: Power::default(),
            locked: Arc::new(AtomicBool::new(false)),
            logs: Arc::new(LogOptions::default()),
            bootloader: Arc::new(BootloaderOptions::default()),
        };
        handler.rebuild_managers();
        handler
    }

    fn rebuild_managers(&mut self) {
        let generic: Arc<dyn HardwareManager> = Arc::new(GenericHardwareManager::new(
            self.disks.clone(),
            self.deploy.clone(),
            self.running.clone(),
            self.written.clone(),
        ));
        self.managers =
            HardwareManagers::new(std::iter::once(generic).chain(self.extra.iter().cloned()));
    }

    /// How `write_image` downloads and writes (spool directory, md5, ...).
    pub fn with_deploy_options(mut self, options: DeployOptions) -> Self {
        self.deploy = options;
        self.rebuild_managers();
        self
    }

    /// Adds a hardware manager (a vendor's, or a test's).
    pub fn with_hardware_manager(mut self, manager: Arc<dyn HardwareManager>) -> Self {
        self.extra.push(manager);
        self.rebuild_managers();
        self
    }

    /// Loads the operator's step definitions from `dir` (none: no operator
    /// steps). A definition that cannot be read is an error: the agent must
    /// not start with fewer steps than the operator gave it.
    pub fn with_step_dir(self, dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let Some(dir) = dir else {
            return Ok(self);
        };
        let steps = OperatorSteps::load(&dir)?;
        tracing::info!(dir = %dir.display(), steps = steps.steps().len(), "operator steps loaded");
        Ok(self.with_hardware_manager(Arc::new(steps)))
    }

    /// How the machine is powered off and rebooted (tests give a fake).
    pub fn with_power(mut self, power: Power) -> Self {
        self.power = power;
        self
    }

    /// What `log.collect_system_logs` collects.
    pub fn with_log_options(mut self, options: LogOptions) -> Self {
        self.logs = Arc::new(options);
        self
    }

    /// How `image.install_bootloader` works.
    pub fn with_bootloader_options(mut self, options: BootloaderOptions) -> Self {
        self.bootloader = Arc::new(options);
        self
    }

    /// Where `write_image` reports its progress: hand it to
    /// [`crate::server::CommandApi::with_running_result`] so the running
    /// command shows `{"progress": {...}}` as its `command_result`.
    pub fn running_result(&self) -> RunningResult {
        self.running.clone()
    }

    /// The hardware managers in use, best first.
    pub fn hardware_managers(&self) -> &HardwareManagers {
        &self.managers
    }

    /// Whether `system.lockdown` ran: the agent takes no more commands.
    pub fn is_locked_down(&self) -> bool {
        self.locked.load(Ordering::SeqCst)
    }

    fn cache_node(&self, params: &Value) {
        if let Some(node) = params.get("node").filter(|n| n.is_object()) {
            *self.node.lock().unwrap_or_else(|p| p.into_inner()) = node.clone();
        }
    }

    /// `get_{clean,deploy,service}_steps`.
    fn get_steps(&self, kind: StepKind, params: &Value) -> Value {
        self.cache_node(params);
        let node = params.get("node").unwrap_or(&Value::Null);
        let ports = params.get("ports").unwrap_or(&Value::Null);
        json!({
            format!("{}_steps", kind.name()): self.managers.steps(kind, node, ports),
            "hardware_manager_version": self.managers.versions(),
        })
    }

    /// `execute_{clean,deploy,service}_step`: `{"<kind>_result": ...,
    /// "<kind>_step": <the step as sent>}`.
    fn execute_step(&self, kind: StepKind, params: &Value) -> Result<Value, CommandError> {
        self.cache_node(params);
        self.managers
            .check_versions(params.get(format!("{}_version", kind.name()).as_str()))?;
        let step = params.get("step").cloned().unwrap_or(Value::Null);
        let name = step["step"]
            .as_str()
            .ok_or_else(|| CommandError::invalid_params("the step has no name"))?;
        let args = match step.get("args") {
            None | Some(Value::Null) => json!({}),
            Some(args) => args.clone(),
        };
        let call = StepCall {
            kind,
            name,
            args: &args,
            node: params.get("node").unwrap_or(&Value::Null),
            ports: params.get("ports").unwrap_or(&Value::Null),
        };
        let result = self.managers.execute_step(&call)?;
        Ok(json!({
            format!("{}_result", kind.name()): result,
            format!("{}_step", kind.name()): step,
        }))
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

    /// The disk written by `write_image`, else the root device for the
    /// cached node (IPA's `get_os_install_device`).
    fn install_device(&self) -> Result<String, CommandError> {
        if let Some(device) = self
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(device);
        }
        let node = self.node.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(self.managers.os_install_device(&node)?.name)
    }

    fn install_bootloader(&self, params: &Value) -> Result<Value, CommandError> {
        let request = bootloader::parse_request(params)?;
        let device = self.install_device()?;
        bootloader::install_bootloader(&device, &request, &self.bootloader).map(Value::String)
    }

    fn lockdown(&self) -> Result<Value, CommandError> {
        // IPA stops serving the API and cuts the network; Ferric refuses
        // every command from now on and powers the machine off.
        self.locked.store(true, Ordering::SeqCst);
        tracing::warn!("locked down: refusing every command, powering off");
        self.power.power_off_later();
        Ok(Value::Null)
    }
}

/// The commands this agent offers: (extension, command, synchronous), as
/// IPA's `sync_command` and `async_command` decorators have them.
/// Synchronous ones answer at once and never make the agent busy.
const COMMANDS: &[(&str, &str, bool)] = &[
    ("clean", "get_clean_steps", true),
    ("clean", "execute_clean_step", false),
    ("deploy", "get_deploy_steps", true),
    ("deploy", "execute_deploy_step", false),
    ("service", "get_service_steps", true),
    ("service", "execute_service_step", false),
    ("standby", "get_partition_uuids", true),
    ("standby", "sync", true),
    ("standby", "power_off", false),
    ("standby", "run_image", false),
    ("system", "get_inventory", true),
    ("system", "lockdown", true),
    ("log", "collect_system_logs", true),
    ("image", "install_bootloader", false),
];

/// What every command gets after `system.lockdown`.
fn locked_down() -> CommandError {
    CommandError::new(
        "AgentLockedDown",
        "The agent is locked down",
        "system.lockdown was run: this agent takes no more commands",
    )
    .with_code(400)
}

impl StandardHandler {
    /// Runs a command on the current (blocking) thread.
    fn run_blocking(
        &self,
        extension: &str,
        command: &str,
        params: &Value,
    ) -> Result<Value, CommandError> {
        if self.is_locked_down() {
            return Err(locked_down());
        }
        if let Some(kind) = StepKind::from_name(extension) {
            if command == format!("get_{}_steps", kind.name()) {
                return Ok(self.get_steps(kind, params));
            }
            if command == format!("execute_{}_step", kind.name()) {
                return self.execute_step(kind, params);
            }
        }
        match (extension, command) {
            ("standby", "get_partition_uuids") => self.get_partition_uuids(),
            ("standby", "sync") => {
                self.power.sync();
                Ok(Value::Null)
            }
            ("standby", "power_off") => self
                .power
                .shutdown(PowerAction::PowerOff)
                .map(|()| Value::Null),
            ("standby", "run_image") => self
                .power
                .shutdown(PowerAction::Reboot)
                .map(|()| Value::Null),
            ("system", "get_inventory") => self.managers.inventory(),
            ("system", "lockdown") => self.lockdown(),
            ("log", "collect_system_logs") => {
                Ok(json!({"system_logs": logs::collect_system_logs(&self.logs)}))
            }
            ("image", "install_bootloader") => self.install_bootloader(params),
            (ext, cmd) => Err(CommandError::invalid_command(format!(
                "{ext}.{cmd} is not implemented by this agent"
            ))),
        }
    }
}

impl CommandHandler for StandardHandler {
    fn run(&self, extension: &str, command: &str, params: Value) -> CommandFuture {
        let (extension, command) = (extension.to_owned(), command.to_owned());
        let handler = self.clone();
        Box::pin(async move {
            // Disk, /sys and program work blocks: off the async runtime.
            tokio::task::spawn_blocking(move || handler.run_blocking(&extension, &command, &params))
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

    fn is_locked_down(&self) -> bool {
        StandardHandler::is_locked_down(self)
    }

    fn validate(&self, extension: &str, command: &str, params: &Value) -> Result<(), CommandError> {
        if self.is_locked_down() {
            return Err(locked_down());
        }
        if let Some(kind) = StepKind::from_name(extension) {
            if command == format!("execute_{}_step", kind.name())
                && !params["step"]["step"].is_string()
            {
                return Err(CommandError::invalid_params(format!(
                    "{command} needs a step: {{\"step\": {{\"step\": <name>, \"args\": {{...}}}}}}"
                )));
            }
        }
        if (extension, command) == ("image", "install_bootloader") {
            bootloader::parse_request(params)?;
        }
        Ok(())
    }
}
