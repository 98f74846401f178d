//! Deploy, clean and service steps as Ironic describes them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The interface a step belongs to. Ties in priority are broken by this
/// order (vendor first), as Ironic does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepInterface {
    Vendor,
    Power,
    Management,
    Firmware,
    Deploy,
    Bios,
    Raid,
    Network,
    Boot,
    Inspect,
    Rescue,
    Storage,
    Console,
}

impl StepInterface {
    /// Rank used to break priority ties: lower runs first.
    pub fn tie_break_rank(self) -> u8 {
        use StepInterface::*;
        match self {
            Vendor => 0,
            Power => 1,
            Management => 2,
            Firmware => 3,
            Deploy => 4,
            Bios => 5,
            Raid => 6,
            Network => 7,
            Boot => 8,
            Inspect => 9,
            Rescue => 10,
            Storage => 11,
            Console => 12,
        }
    }
}

/// One step: `{"interface": "deploy", "step": "write_image", "args": {}, "priority": 80}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub interface: StepInterface,
    pub step: String,
    #[serde(default)]
    pub args: Map<String, Value>,
    /// Absent for manual clean steps, which run in the order given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
}
