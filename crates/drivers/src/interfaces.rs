//! The interface traits. Each hardware-facing trait has a fake in
//! [`crate::fake`] that can be told to fail or hang.

use crate::DriverError;
use async_trait::async_trait;
use ferric_types::{Node, Port, PowerState, Step, StepInterface};
use serde::Serialize;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Boot devices as Ironic names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BootDevice {
    Pxe,
    Disk,
    Cdrom,
    Bios,
    Safe,
    Wanboot,
    Floppy,
    Uefihttp,
}

impl BootDevice {
    pub fn as_str(self) -> &'static str {
        match self {
            BootDevice::Pxe => "pxe",
            BootDevice::Disk => "disk",
            BootDevice::Cdrom => "cdrom",
            BootDevice::Bios => "bios",
            BootDevice::Safe => "safe",
            BootDevice::Wanboot => "wanboot",
            BootDevice::Floppy => "floppy",
            BootDevice::Uefihttp => "uefihttp",
        }
    }
}

impl fmt::Display for BootDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BootDevice {
    type Err = DriverError;
    fn from_str(s: &str) -> Result<Self, DriverError> {
        Ok(match s {
            "pxe" => BootDevice::Pxe,
            "disk" => BootDevice::Disk,
            "cdrom" => BootDevice::Cdrom,
            "bios" => BootDevice::Bios,
            "safe" => BootDevice::Safe,
            "wanboot" => BootDevice::Wanboot,
            "floppy" => BootDevice::Floppy,
            "uefihttp" => BootDevice::Uefihttp,
            other => {
                return Err(DriverError::InvalidParameter(format!(
                    "Invalid boot device {other}"
                )))
            }
        })
    }
}

/// What `GET .../management/boot_device` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootDeviceInfo {
    pub boot_device: Option<BootDevice>,
    pub persistent: Option<bool>,
}

/// Which kind of step list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepKind {
    Deploy,
    Clean,
    Service,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Deploy => "deploy",
            StepKind::Clean => "clean",
            StepKind::Service => "service",
        }
    }
}

/// A step an interface offers, with its default priority (0 = runs only
/// when asked for).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepDefinition {
    pub interface: StepInterface,
    pub step: String,
    pub priority: i64,
    /// Whether the step may be requested with `args`, and which.
    pub argsinfo: Option<serde_json::Value>,
    /// Whether the step needs the ramdisk agent running.
    pub requires_ramdisk: bool,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// Finished; go on with the next step.
    Done,
    /// Runs on in the ramdisk; the node waits for the agent's callback.
    Wait,
    /// The step asked to hold the node until an operator unholds it.
    Hold,
}

#[async_trait]
pub trait PowerInterface: Send + Sync {
    fn validate(&self, node: &Node) -> Result<(), DriverError>;
    async fn get_power_state(&self, node: &Node) -> Result<PowerState, DriverError>;
    /// Powers on or off (`PowerState::On`, `Off`, `SoftPowerOff`), waiting
    /// at most `timeout` for the node to reach the state.
    async fn set_power_state(
        &self,
        node: &Node,
        target: PowerState,
        timeout: Option<Duration>,
    ) -> Result<(), DriverError>;
    /// Hard or soft reboot; the node ends powered on.
    async fn reboot(
        &self,
        node: &Node,
        soft: bool,
        timeout: Option<Duration>,
    ) -> Result<(), DriverError>;
    fn supports_soft_power(&self) -> bool {
        false
    }
}

#[async_trait]
pub trait ManagementInterface: Send + Sync {
    fn validate(&self, node: &Node) -> Result<(), DriverError>;
    fn supported_boot_devices(&self, node: &Node) -> Vec<BootDevice>;
    async fn get_boot_device(&self, node: &Node) -> Result<BootDeviceInfo, DriverError>;
    async fn set_boot_device(
        &self,
        node: &Node,
        device: BootDevice,
        persistent: bool,
    ) -> Result<(), DriverError>;
}

/// What a boot interface uses besides the node: its management interface
/// (to set the boot device) and its ports (MAC addresses for DHCP and boot
/// scripts).
#[derive(Clone, Copy)]
pub struct BootContext<'a> {
    pub management: &'a dyn ManagementInterface,
    pub ports: &'a [Port],
}

#[async_trait]
pub trait BootInterface: Send + Sync {
    fn validate(&self, node: &Node) -> Result<(), DriverError>;
    /// Makes the node boot the deploy ramdisk on its next power on.
    async fn prepare_ramdisk(
        &self,
        node: &mut Node,
        context: BootContext<'_>,
    ) -> Result<(), DriverError>;
    async fn clean_up_ramdisk(
        &self,
        node: &mut Node,
        context: BootContext<'_>,
    ) -> Result<(), DriverError>;
    /// Makes the node boot its instance on its next power on.
    async fn prepare_instance(
        &self,
        node: &mut Node,
        context: BootContext<'_>,
    ) -> Result<(), DriverError>;
    async fn clean_up_instance(
        &self,
        node: &mut Node,
        context: BootContext<'_>,
    ) -> Result<(), DriverError>;
}

/// The node's other interfaces, for deploy steps that power the node or set
/// its boot device.
#[derive(Clone, Copy)]
pub struct StepContext<'a> {
    pub power: &'a dyn PowerInterface,
    pub management: &'a dyn ManagementInterface,
    pub boot: &'a dyn BootInterface,
    pub ports: &'a [Port],
}

impl<'a> StepContext<'a> {
    /// What the boot interface's calls take.
    pub fn boot_context(&self) -> BootContext<'a> {
        BootContext {
            management: self.management,
            ports: self.ports,
        }
    }
}

#[async_trait]
pub trait DeployInterface: Send + Sync {
    fn validate(&self, node: &Node) -> Result<(), DriverError>;
    /// The steps this interface offers for `kind`.
    fn steps(&self, kind: StepKind) -> Vec<StepDefinition>;
    /// Runs one of this interface's steps. The node may be changed (its
    /// driver_internal_info, instance_info); the conductor saves it.
    async fn execute_step(
        &self,
        node: &mut Node,
        kind: StepKind,
        step: &Step,
        context: StepContext<'_>,
    ) -> Result<StepOutcome, DriverError>;
    /// Whether the deploy steps end with the instance booted (the direct
    /// interface's boot_instance); otherwise the conductor boots it.
    fn boots_instance(&self) -> bool {
        false
    }
    /// Whether steps run in a ramdisk agent that heartbeats: a heartbeat
    /// then checks the agent's command and moves the steps on.
    fn uses_agent(&self) -> bool {
        false
    }
    /// Whether a deployment boots the deploy ramdisk (the conductor
    /// prepares it before the deploy steps); the ramdisk deploy boots its
    /// instance straight away.
    fn needs_deploy_ramdisk(&self) -> bool {
        true
    }
    /// Whether the agent may offer deploy steps of its own (requested
    /// steps this interface does not know are then checked once it is up).
    fn agent_deploy_steps(&self) -> bool {
        self.uses_agent()
    }
    /// The priorities in-band deploy steps (the agent's) must have, when
    /// the interface's own steps leave them only a window (custom-agent:
    /// between deploy and prepare_instance_boot).
    fn in_band_priorities(&self) -> Option<std::ops::RangeInclusive<i64>> {
        None
    }
    /// On a heartbeat while the node waits: what became of the step the
    /// agent runs. Only for interfaces that use an agent.
    async fn check_agent_step(
        &self,
        _node: &mut Node,
        _kind: StepKind,
    ) -> Result<AgentStepState, DriverError> {
        Ok(AgentStepState::Finished)
    }
    /// The steps of `kind` the node's agent offers (its get_clean_steps or
    /// get_deploy_steps), asked once the agent is up; `None` when this
    /// interface has no agent. They join [`Self::steps`] (an agent's step
    /// replaces the interface's own of the same name), and operators may
    /// request them.
    async fn agent_steps(
        &self,
        _node: &mut Node,
        _kind: StepKind,
    ) -> Result<Option<Vec<StepDefinition>>, DriverError> {
        Ok(None)
    }
    /// Removes what a deployment left (boot configuration, instance info).
    async fn tear_down(&self, node: &mut Node) -> Result<(), DriverError>;
}

/// Where an in-band step stands, as the agent reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentStepState {
    /// The step is over (the agent finished it, or the step only waited
    /// for the agent to come up): the steps go on with the next one.
    Finished,
    /// The agent is up now: run the current step again, in the agent.
    AgentReady,
    /// The agent still runs the step (progress may have been recorded).
    Running,
    /// The agent's step failed with this message.
    Failed(String),
}

#[async_trait]
pub trait InspectInterface: Send + Sync {
    fn validate(&self, node: &Node) -> Result<(), DriverError>;
    /// Inspects the node, filling `properties`; `Wait` when an agent
    /// reports later.
    async fn inspect(&self, node: &mut Node) -> Result<StepOutcome, DriverError>;
}
