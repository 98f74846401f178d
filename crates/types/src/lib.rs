//! Wire and domain types shared by every Ferric crate.
//!
//! Everything here serialises to the exact strings and shapes of the OpenStack
//! Ironic v1 API, so the same values flow from the store to the wire unchanged.
//! No I/O lives in this crate.

pub mod kernel_params;
pub mod node;
pub mod port;
pub mod seconds;
pub mod state;
pub mod step;
pub mod timestamp;
pub mod url;
pub mod version;

pub use node::{Conductor, Node, INTERFACE_NAMES};
pub use port::Port;
pub use state::{PowerState, ProvisionState, UnknownState};
pub use step::{Step, StepInterface};
pub use timestamp::Timestamp;
pub use version::ApiVersion;
