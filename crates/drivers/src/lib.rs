//! The interfaces of a node and their implementations.
//!
//! A hardware type (`fake-hardware`, later `ipmi`, `redfish`) names which
//! implementations of each interface a node may use and which is the
//! default. The conductor asks the [`DriverRegistry`] for a node's
//! [`NodeDriver`]: one object per interface, chosen by the node's
//! `<iface>_interface` fields.

pub mod agent_client;
pub mod anaconda;
pub mod direct;
mod error;
pub mod fake;
pub mod image_cache;
mod interfaces;
pub mod ipmi;
pub mod ipxe;
pub mod ramdisk_deploy;
pub mod redfish;
pub mod redfish_vmedia;
mod registry;

pub use error::DriverError;
pub use interfaces::{
    AgentStepState, BootContext, BootDevice, BootDeviceInfo, BootInterface, DeployInterface,
    InspectInterface, ManagementInterface, PowerInterface, StepContext, StepDefinition, StepKind,
    StepOutcome,
};
pub use registry::{DriverRegistry, HardwareType, InterfaceValidation, NodeDriver};
