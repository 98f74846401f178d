//! The `fake-hardware` interfaces: every operation completes at once, so a
//! node's whole life runs without hardware.
//!
//! Tests steer them through the node's `driver_info`:
//! - `fake_fail`: operations that fail, as a list or a comma-separated string
//!   of `power`, `boot_device`, `validate`, `deploy`, `clean`, `inspect`,
//!   `prepare`, `tear_down`.
//! - `fake_wait`: phases whose step leaves the node waiting for an agent
//!   that never comes (`deploy`, `clean`, `inspect`), so callback timeouts
//!   can be exercised.
//! - `fake_hold`: phases whose step asks to hold the node (`deploy`,
//!   `clean`, `service`) until an operator unholds it.
//! - `fake_delay`: seconds (a number) every fake step and power action
//!   takes; a large value makes it hang.

use crate::interfaces::*;
use crate::DriverError;
use async_trait::async_trait;
use ferric_types::{Node, PowerState, Step, StepInterface};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

fn knob_list(node: &Node, key: &str) -> Vec<String> {
    match node.driver_info.get(key) {
        Some(Value::String(s)) => s.split(',').map(|p| p.trim().to_string()).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

fn should_fail(node: &Node, operation: &str) -> Result<(), DriverError> {
    if knob_list(node, "fake_fail").iter().any(|o| o == operation) {
        return Err(DriverError::Failed(format!(
            "fake {operation} failure requested by driver_info/fake_fail"
        )));
    }
    Ok(())
}

fn should_wait(node: &Node, phase: &str) -> bool {
    knob_list(node, "fake_wait").iter().any(|p| p == phase)
}

async fn delay(node: &Node) {
    let secs = match node.driver_info.get("fake_delay") {
        Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
        Some(Value::String(s)) => s.parse().unwrap_or(0.0),
        _ => 0.0,
    };
    if secs > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(secs.min(86_400.0))).await;
    }
}

/// Fake power: remembers the state it was asked for, per node.
#[derive(Default)]
pub struct FakePower {
    states: Mutex<HashMap<uuid::Uuid, PowerState>>,
}

#[async_trait]
impl PowerInterface for FakePower {
    fn validate(&self, node: &Node) -> Result<(), DriverError> {
        should_fail(node, "validate")
    }

    async fn get_power_state(&self, node: &Node) -> Result<PowerState, DriverError> {
        should_fail(node, "power")?;
        let known = self.states.lock().unwrap().get(&node.uuid).copied();
        Ok(known.or(node.power_state).unwrap_or(PowerState::Off))
    }

    async fn set_power_state(
        &self,
        node: &Node,
        target: PowerState,
        _timeout: Option<Duration>,
    ) -> Result<(), DriverError> {
        should_fail(node, "power")?;
        delay(node).await;
        let reached = match target {
            PowerState::On => PowerState::On,
            PowerState::Off | PowerState::SoftPowerOff => PowerState::Off,
            other => {
                return Err(DriverError::InvalidParameter(format!(
                    "fake power cannot set power state {other}"
                )))
            }
        };
        self.states.lock().unwrap().insert(node.uuid, reached);
        Ok(())
    }

    async fn reboot(
        &self,
        node: &Node,
        _soft: bool,
        _timeout: Option<Duration>,
    ) -> Result<(), DriverError> {
        should_fail(node, "power")?;
        delay(node).await;
        self.states
            .lock()
            .unwrap()
            .insert(node.uuid, PowerState::On);
        Ok(())
    }

    fn supports_soft_power(&self) -> bool {
        true
    }
}

/// Fake management: remembers the boot device it was given.
#[derive(Default)]
pub struct FakeManagement {
    devices: Mutex<HashMap<uuid::Uuid, (BootDevice, bool)>>,
}

#[async_trait]
impl ManagementInterface for FakeManagement {
    fn validate(&self, node: &Node) -> Result<(), DriverError> {
        should_fail(node, "validate")
    }

    fn supported_boot_devices(&self, _node: &Node) -> Vec<BootDevice> {
        vec![
            BootDevice::Pxe,
            BootDevice::Disk,
            BootDevice::Cdrom,
            BootDevice::Bios,
        ]
    }

    async fn get_boot_device(&self, node: &Node) -> Result<BootDeviceInfo, DriverError> {
        should_fail(node, "boot_device")?;
        let known = self.devices.lock().unwrap().get(&node.uuid).copied();
        Ok(match known {
            Some((device, persistent)) => BootDeviceInfo {
                boot_device: Some(device),
                persistent: Some(persistent),
            },
            None => BootDeviceInfo {
                boot_device: None,
                persistent: None,
            },
        })
    }

    async fn set_boot_device(
        &self,
        node: &Node,
        device: BootDevice,
        persistent: bool,
    ) -> Result<(), DriverError> {
        should_fail(node, "boot_device")?;
        if !self.supported_boot_devices(node).contains(&device) {
            return Err(DriverError::InvalidParameter(format!(
                "Invalid boot device {device} specified, supported are: pxe, disk, cdrom, bios"
            )));
        }
        self.devices
            .lock()
            .unwrap()
            .insert(node.uuid, (device, persistent));
        Ok(())
    }
}

/// Fake boot: nothing to prepare.
pub struct FakeBoot;

#[async_trait]
impl BootInterface for FakeBoot {
    fn validate(&self, node: &Node) -> Result<(), DriverError> {
        should_fail(node, "validate")
    }
    async fn prepare_ramdisk(
        &self,
        node: &mut Node,
        _: BootContext<'_>,
    ) -> Result<(), DriverError> {
        should_fail(node, "prepare")
    }
    async fn clean_up_ramdisk(&self, _: &mut Node, _: BootContext<'_>) -> Result<(), DriverError> {
        Ok(())
    }
    async fn prepare_instance(
        &self,
        node: &mut Node,
        _: BootContext<'_>,
    ) -> Result<(), DriverError> {
        should_fail(node, "prepare")
    }
    async fn clean_up_instance(&self, _: &mut Node, _: BootContext<'_>) -> Result<(), DriverError> {
        Ok(())
    }
}

/// Fake deploy: one deploy step (`deploy`, priority 100) and the clean
/// steps of the ramdisk agent with its default priorities
/// (`erase_devices_metadata` 99, so automated cleaning runs it;
/// `erase_devices` 0, only when asked for), each finishing at once unless
/// told otherwise.
pub struct FakeDeploy;

impl FakeDeploy {
    fn step(name: &str, priority: i64) -> StepDefinition {
        StepDefinition {
            interface: StepInterface::Deploy,
            step: name.to_string(),
            priority,
            argsinfo: None,
            requires_ramdisk: false,
        }
    }
}

#[async_trait]
impl DeployInterface for FakeDeploy {
    fn validate(&self, node: &Node) -> Result<(), DriverError> {
        should_fail(node, "validate")
    }

    fn steps(&self, kind: StepKind) -> Vec<StepDefinition> {
        match kind {
            StepKind::Deploy => vec![Self::step("deploy", 100)],
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
        _context: StepContext<'_>,
    ) -> Result<StepOutcome, DriverError> {
        let phase = kind.as_str();
        should_fail(node, phase)?;
        delay(node).await;
        if should_wait(node, phase) {
            return Ok(StepOutcome::Wait);
        }
        if knob_list(node, "fake_hold").iter().any(|p| p == phase) {
            return Ok(StepOutcome::Hold);
        }
        let done = node
            .driver_internal_info
            .entry("fake_steps_done")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(list) = done {
            list.push(Value::String(format!("{phase}.{}", step.step)));
        }
        Ok(StepOutcome::Done)
    }

    async fn tear_down(&self, node: &mut Node) -> Result<(), DriverError> {
        should_fail(node, "tear_down")?;
        node.driver_internal_info.remove("fake_steps_done");
        Ok(())
    }
}

/// Fake inspection: records a small inventory in the node's properties.
pub struct FakeInspect;

#[async_trait]
impl InspectInterface for FakeInspect {
    fn validate(&self, node: &Node) -> Result<(), DriverError> {
        should_fail(node, "validate")
    }

    async fn inspect(&self, node: &mut Node) -> Result<StepOutcome, DriverError> {
        should_fail(node, "inspect")?;
        delay(node).await;
        if should_wait(node, "inspect") {
            return Ok(StepOutcome::Wait);
        }
        for (key, value) in [
            ("cpus", Value::from(2)),
            ("cpu_arch", Value::from("x86_64")),
            ("memory_mb", Value::from(4096)),
            ("local_gb", Value::from(20)),
        ] {
            node.properties.entry(key).or_insert(value);
        }
        Ok(StepOutcome::Done)
    }
}
