use ferric_drivers::DriverError;
use ferric_store::StoreError;

/// Why the conductor refused or failed a request. The API maps each
/// variant to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ConductorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A request the node's state or settings do not allow (400).
    #[error("{0}")]
    InvalidParameter(String),
    /// A provision verb not allowed in the node's state (400).
    #[error("{0}")]
    InvalidState(String),
    /// A request that conflicts with the node's state (409).
    #[error("{0}")]
    Conflict(String),
    /// Nothing matches, and the caller is not told why (404), as for a
    /// ramdisk lookup in a state that does not allow it.
    #[error("{0}")]
    NotFound(String),
    /// Refused on purpose, e.g. a protected node (403).
    #[error("{0}")]
    Forbidden(String),
    /// A driver operation failed while the caller waited (500 unless the
    /// driver blamed the parameters).
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// The conductor's own configuration is wrong.
    #[error("invalid conductor configuration: {0}")]
    Config(String),
}
