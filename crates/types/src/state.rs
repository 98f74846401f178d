//! Provision and power states with their exact Ironic wire strings.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A string that names no known state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state {0:?}")]
pub struct UnknownState(pub String);

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $wire:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The exact string Ironic puts on the wire.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire),+ }
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;
            fn from_str(s: &str) -> Result<Self, UnknownState> {
                match s {
                    $($wire => Ok($name::$variant),)+
                    other => Err(UnknownState(other.to_string())),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

wire_enum! {
    /// Ironic's provision states. `Available` is shown as `None` (JSON null)
    /// to clients older than API 1.2; the API layer does that translation.
    ProvisionState {
        Enroll => "enroll",
        Verifying => "verifying",
        Manageable => "manageable",
        Available => "available",
        Active => "active",
        Deploying => "deploying",
        WaitCallBack => "wait call-back",
        DeployFailed => "deploy failed",
        DeployHold => "deploy hold",
        Deleting => "deleting",
        Cleaning => "cleaning",
        CleanWait => "clean wait",
        CleanFailed => "clean failed",
        CleanHold => "clean hold",
        Error => "error",
        Inspecting => "inspecting",
        InspectWait => "inspect wait",
        InspectFailed => "inspect failed",
        Adopting => "adopting",
        AdoptFailed => "adopt failed",
        Rescuing => "rescuing",
        RescueWait => "rescue wait",
        RescueFailed => "rescue failed",
        Rescue => "rescue",
        Unrescuing => "unrescuing",
        UnrescueFailed => "unrescue failed",
        Servicing => "servicing",
        ServiceWait => "service wait",
        ServiceFailed => "service failed",
        ServiceHold => "service hold",
    }
}

wire_enum! {
    /// Power states as reported by a node's power interface. A node whose
    /// power state is unknown has `power_state: null` on the wire.
    PowerState {
        On => "power on",
        Off => "power off",
        Rebooting => "rebooting",
        SoftRebooting => "soft rebooting",
        SoftPowerOff => "soft power off",
        Error => "error",
    }
}

impl ProvisionState {
    /// States in which a node sits until an operator (or an agent) acts.
    pub fn is_stable(self) -> bool {
        use ProvisionState::*;
        matches!(
            self,
            Enroll
                | Manageable
                | Available
                | Active
                | Error
                | Rescue
                | DeployFailed
                | CleanFailed
                | InspectFailed
                | AdoptFailed
                | RescueFailed
                | UnrescueFailed
                | ServiceFailed
                | DeployHold
                | CleanHold
                | ServiceHold
        )
    }

    /// States in which the conductor works on the node without waiting for
    /// anybody. A conductor that dies leaves nodes here; on restart they are
    /// moved to their failed state because the work cannot be resumed.
    pub fn is_busy(self) -> bool {
        use ProvisionState::*;
        matches!(
            self,
            Verifying
                | Deploying
                | Deleting
                | Cleaning
                | Inspecting
                | Adopting
                | Rescuing
                | Unrescuing
                | Servicing
        )
    }

    /// States in which an operation ended badly.
    pub fn is_failed(self) -> bool {
        use ProvisionState::*;
        matches!(
            self,
            DeployFailed
                | CleanFailed
                | InspectFailed
                | AdoptFailed
                | RescueFailed
                | UnrescueFailed
                | ServiceFailed
                | Error
        )
    }

    /// States in which the node waits for its ramdisk agent to call back.
    pub fn is_waiting(self) -> bool {
        use ProvisionState::*;
        matches!(
            self,
            WaitCallBack | CleanWait | InspectWait | RescueWait | ServiceWait
        )
    }

    /// States in which the ramdisk `lookup` endpoint answers for a node.
    pub fn allows_lookup(self) -> bool {
        use ProvisionState::*;
        matches!(
            self,
            Deploying
                | WaitCallBack
                | Cleaning
                | CleanWait
                | Inspecting
                | InspectWait
                | Rescuing
                | RescueWait
                | ServiceWait
        )
    }
}
