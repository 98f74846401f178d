//! The node record, stored and served as Ironic's node object.

use crate::state::{PowerState, ProvisionState};
use crate::timestamp::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Names of a node's hardware interfaces; the node field is `<name>_interface`.
pub const INTERFACE_NAMES: &[&str] = &[
    "bios",
    "boot",
    "console",
    "deploy",
    "firmware",
    "inspect",
    "management",
    "network",
    "power",
    "raid",
    "rescue",
    "storage",
    "vendor",
];

/// A bare-metal node. Field names and JSON shapes are Ironic's; which fields
/// a client sees depends on its microversion (the API layer filters).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub uuid: Uuid,
    pub name: Option<String>,
    pub driver: String,
    #[serde(default)]
    pub driver_info: Map<String, Value>,
    #[serde(default)]
    pub driver_internal_info: Map<String, Value>,
    #[serde(default)]
    pub extra: Map<String, Value>,
    #[serde(default)]
    pub instance_info: Map<String, Value>,
    pub instance_uuid: Option<Uuid>,
    #[serde(default)]
    pub properties: Map<String, Value>,

    pub power_state: Option<PowerState>,
    pub target_power_state: Option<PowerState>,
    pub provision_state: ProvisionState,
    pub target_provision_state: Option<ProvisionState>,
    pub provision_updated_at: Option<Timestamp>,
    pub last_error: Option<String>,

    #[serde(default)]
    pub maintenance: bool,
    pub maintenance_reason: Option<String>,
    pub fault: Option<String>,
    #[serde(default)]
    pub console_enabled: bool,
    /// Hostname of the conductor holding the node's exclusive lock.
    pub reservation: Option<String>,
    /// Hostname of the conductor that manages the node.
    pub conductor: Option<String>,
    pub chassis_uuid: Option<Uuid>,

    /// The step being executed: `{}` when none.
    #[serde(default)]
    pub clean_step: Map<String, Value>,
    #[serde(default)]
    pub deploy_step: Map<String, Value>,
    #[serde(default)]
    pub service_step: Map<String, Value>,
    #[serde(default)]
    pub raid_config: Map<String, Value>,
    #[serde(default)]
    pub target_raid_config: Map<String, Value>,
    pub inspection_started_at: Option<Timestamp>,
    pub inspection_finished_at: Option<Timestamp>,

    pub resource_class: Option<String>,
    #[serde(default)]
    pub traits: Vec<String>,
    #[serde(default)]
    pub conductor_group: String,
    pub automated_clean: Option<bool>,
    #[serde(default)]
    pub protected: bool,
    pub protected_reason: Option<String>,
    pub owner: Option<String>,
    pub lessee: Option<String>,
    pub description: Option<String>,
    pub allocation_uuid: Option<Uuid>,
    #[serde(default)]
    pub retired: bool,
    pub retired_reason: Option<String>,
    #[serde(default)]
    pub network_data: Map<String, Value>,
    pub boot_mode: Option<String>,
    pub secure_boot: Option<bool>,
    pub shard: Option<String>,
    pub parent_node: Option<Uuid>,
    #[serde(default)]
    pub disable_power_off: bool,

    pub bios_interface: Option<String>,
    pub boot_interface: Option<String>,
    pub console_interface: Option<String>,
    pub deploy_interface: Option<String>,
    pub firmware_interface: Option<String>,
    pub inspect_interface: Option<String>,
    pub management_interface: Option<String>,
    pub network_interface: Option<String>,
    pub power_interface: Option<String>,
    pub raid_interface: Option<String>,
    pub rescue_interface: Option<String>,
    pub storage_interface: Option<String>,
    pub vendor_interface: Option<String>,

    pub created_at: Timestamp,
    pub updated_at: Option<Timestamp>,
}

impl Node {
    /// A new node in `state` with every optional field empty.
    pub fn new(uuid: Uuid, driver: impl Into<String>, state: ProvisionState) -> Self {
        Node {
            uuid,
            name: None,
            driver: driver.into(),
            driver_info: Map::new(),
            driver_internal_info: Map::new(),
            extra: Map::new(),
            instance_info: Map::new(),
            instance_uuid: None,
            properties: Map::new(),
            power_state: None,
            target_power_state: None,
            provision_state: state,
            target_provision_state: None,
            provision_updated_at: None,
            last_error: None,
            maintenance: false,
            maintenance_reason: None,
            fault: None,
            console_enabled: false,
            reservation: None,
            conductor: None,
            chassis_uuid: None,
            clean_step: Map::new(),
            deploy_step: Map::new(),
            service_step: Map::new(),
            raid_config: Map::new(),
            target_raid_config: Map::new(),
            inspection_started_at: None,
            inspection_finished_at: None,
            resource_class: None,
            traits: Vec::new(),
            conductor_group: String::new(),
            automated_clean: None,
            protected: false,
            protected_reason: None,
            owner: None,
            lessee: None,
            description: None,
            allocation_uuid: None,
            retired: false,
            retired_reason: None,
            network_data: Map::new(),
            boot_mode: None,
            secure_boot: None,
            shard: None,
            parent_node: None,
            disable_power_off: false,
            bios_interface: None,
            boot_interface: None,
            console_interface: None,
            deploy_interface: None,
            firmware_interface: None,
            inspect_interface: None,
            management_interface: None,
            network_interface: None,
            power_interface: None,
            raid_interface: None,
            rescue_interface: None,
            storage_interface: None,
            vendor_interface: None,
            created_at: Timestamp::now(),
            updated_at: None,
        }
    }

    /// The node's `<name>_interface` field, by interface name.
    pub fn interface(&self, name: &str) -> Option<&str> {
        let field = match name {
            "bios" => &self.bios_interface,
            "boot" => &self.boot_interface,
            "console" => &self.console_interface,
            "deploy" => &self.deploy_interface,
            "firmware" => &self.firmware_interface,
            "inspect" => &self.inspect_interface,
            "management" => &self.management_interface,
            "network" => &self.network_interface,
            "power" => &self.power_interface,
            "raid" => &self.raid_interface,
            "rescue" => &self.rescue_interface,
            "storage" => &self.storage_interface,
            "vendor" => &self.vendor_interface,
            _ => return None,
        };
        field.as_deref()
    }

    /// Sets the node's `<name>_interface` field; false for an unknown name.
    pub fn set_interface(&mut self, name: &str, value: Option<String>) -> bool {
        let field = match name {
            "bios" => &mut self.bios_interface,
            "boot" => &mut self.boot_interface,
            "console" => &mut self.console_interface,
            "deploy" => &mut self.deploy_interface,
            "firmware" => &mut self.firmware_interface,
            "inspect" => &mut self.inspect_interface,
            "management" => &mut self.management_interface,
            "network" => &mut self.network_interface,
            "power" => &mut self.power_interface,
            "raid" => &mut self.raid_interface,
            "rescue" => &mut self.rescue_interface,
            "storage" => &mut self.storage_interface,
            "vendor" => &mut self.vendor_interface,
            _ => return false,
        };
        *field = value;
        true
    }

    /// Records a provision state change and when it happened.
    pub fn set_provision_state(&mut self, state: ProvisionState, target: Option<ProvisionState>) {
        self.provision_state = state;
        self.target_provision_state = target;
        self.provision_updated_at = Some(Timestamp::now());
    }
}

/// A running conductor, as listed by `GET /v1/conductors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conductor {
    pub hostname: String,
    #[serde(default)]
    pub conductor_group: String,
    #[serde(default)]
    pub drivers: Vec<String>,
    pub alive: bool,
    pub created_at: Timestamp,
    pub updated_at: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_round_trips_through_json_with_wire_strings() {
        let mut node = Node::new(
            Uuid::new_v4(),
            "fake-hardware",
            ProvisionState::WaitCallBack,
        );
        node.power_state = Some(PowerState::On);
        let json = serde_json::to_value(&node).unwrap();
        assert_eq!(json["provision_state"], "wait call-back");
        assert_eq!(json["power_state"], "power on");
        let back: Node = serde_json::from_value(json).unwrap();
        assert_eq!(back, node);
    }

    #[test]
    fn every_interface_name_is_settable() {
        let mut node = Node::new(Uuid::new_v4(), "fake-hardware", ProvisionState::Enroll);
        for name in INTERFACE_NAMES {
            assert!(node.set_interface(name, Some(format!("x-{name}"))));
            assert_eq!(node.interface(name), Some(format!("x-{name}").as_str()));
        }
        assert!(!node.set_interface("nonsense", None));
    }
}
