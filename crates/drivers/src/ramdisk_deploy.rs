//! The `ramdisk` deploy interface (Ironic's `RamdiskDeploy`): the instance
//! *is* a ramdisk. Nothing is written to the node's disks; its one deploy
//! step makes the boot interface boot instance_info `kernel` + `ramdisk`
//! (http(s) URLs the node fetches itself, with `ramdisk_kernel_arguments`)
//! or `boot_iso`, and the conductor then reboots the node into it and marks
//! it `active`. The node keeps booting from the network: iPXE and PXELINUX
//! answer its instance ramdisk for as long as it is deployed; virtual media
//! keeps the ISO inserted.
//!
//! Cleaning is the `direct` interface's: the deploy ramdisk and its agent.

use crate::direct::DirectDeploy;
use crate::interfaces::*;
use crate::ipxe::{instance_ramdisk, Loader};
use crate::DriverError;
use async_trait::async_trait;
use ferric_types::{Node, Step, StepInterface};

/// The one deploy step of interfaces that boot no agent for the deploy
/// (ramdisk, anaconda): `deploy` at 100.
pub(crate) fn deploy_step_only() -> StepDefinition {
    StepDefinition {
        interface: StepInterface::Deploy,
        step: "deploy".into(),
        priority: 100,
        argsinfo: None,
        requires_ramdisk: false,
    }
}

pub struct RamdiskDeploy {
    /// Runs the clean steps, in the deploy ramdisk.
    cleaning: DirectDeploy,
}

impl RamdiskDeploy {
    pub fn new(cleaning: DirectDeploy) -> Self {
        RamdiskDeploy { cleaning }
    }
}

#[async_trait]
impl DeployInterface for RamdiskDeploy {
    fn validate(&self, node: &Node) -> Result<(), DriverError> {
        let loader = match node.boot_interface.as_deref() {
            Some("pxe") => Loader::Pxelinux,
            _ => Loader::Ipxe,
        };
        // Virtual media boots boot_iso, or an ISO built of kernel and
        // ramdisk: the same instance_info as iPXE.
        instance_ramdisk(node, loader).map(|_| ())
    }

    fn steps(&self, kind: StepKind) -> Vec<StepDefinition> {
        match kind {
            StepKind::Deploy => vec![deploy_step_only()],
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
            // The conductor then prepares the instance boot (the ramdisk)
            // and reboots the node into it.
            "deploy" => {
                self.validate(node)?;
                Ok(StepOutcome::Done)
            }
            other => Err(DriverError::Unsupported(format!(
                "the ramdisk deploy has no deploy step {other}"
            ))),
        }
    }

    fn uses_agent(&self) -> bool {
        // For cleaning.
        true
    }

    fn agent_deploy_steps(&self) -> bool {
        false
    }

    fn needs_deploy_ramdisk(&self) -> bool {
        false
    }

    async fn check_agent_step(
        &self,
        node: &mut Node,
        kind: StepKind,
    ) -> Result<AgentStepState, DriverError> {
        self.cleaning.check_agent_step(node, kind).await
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
        self.cleaning.tear_down(node).await
    }
}
