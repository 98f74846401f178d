use std::time::Duration;

/// Why a driver operation did not succeed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DriverError {
    /// The node's settings (driver_info, instance_info, ...) are missing or
    /// wrong; the operator must fix them. The API answers 400.
    #[error("{0}")]
    InvalidParameter(String),
    /// The interface cannot do this at all.
    #[error("{0}")]
    Unsupported(String),
    /// The hardware (or its BMC, or the agent) failed to do it.
    #[error("{0}")]
    Failed(String),
    /// The operation did not finish in time.
    #[error("{operation} did not finish within {timeout:?}")]
    Timeout {
        operation: String,
        timeout: Duration,
    },
}
