//! The one API error type, and the one place it becomes an HTTP response
//! in Ironic's shape: `{"error_message": "<JSON string with faultcode,
//! faultstring, debuginfo>"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferric_conductor::ConductorError;
use ferric_drivers::DriverError;
use ferric_store::StoreError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_ACCEPTABLE, message)
    }

    /// A field or parameter newer than the request's microversion.
    pub fn too_new(what: &str, minor: u32, requested: ferric_types::ApiVersion) -> Self {
        Self::not_acceptable(format!(
            "{what} requires API version 1.{minor} or later; the request asked for {requested}"
        ))
    }

    fn faultcode(&self) -> &'static str {
        if self.status.is_server_error() {
            "Server"
        } else {
            "Client"
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, "{}", self.message);
        } else {
            tracing::debug!(status = %self.status, "{}", self.message);
        }
        let inner = serde_json::json!({
            "faultcode": self.faultcode(),
            "faultstring": self.message,
            "debuginfo": null,
        });
        let body = serde_json::json!({ "error_message": inner.to_string() });
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::NodeNotFound(_) | StoreError::PortNotFound(_) => StatusCode::NOT_FOUND,
            StoreError::NodeLocked { .. } | StoreError::Conflict(_) => StatusCode::CONFLICT,
            StoreError::Database(_) | StoreError::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            // The cause stays in the log; the client learns only that the
            // store failed.
            let mut chain = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                chain.push_str(": ");
                chain.push_str(&c.to_string());
                cause = c.source();
            }
            tracing::error!("{chain}");
        }
        let message = match &e {
            StoreError::NodeNotFound(n) => format!("Node {n} could not be found."),
            StoreError::PortNotFound(p) => format!("Port {p} could not be found."),
            other => other.to_string(),
        };
        ApiError::new(status, message)
    }
}

impl From<ConductorError> for ApiError {
    fn from(e: ConductorError) -> Self {
        match e {
            ConductorError::Store(s) => s.into(),
            ConductorError::InvalidParameter(m) | ConductorError::InvalidState(m) => {
                ApiError::bad_request(m)
            }
            ConductorError::Conflict(m) => ApiError::conflict(m),
            ConductorError::NotFound(m) => ApiError::not_found(m),
            ConductorError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, m),
            ConductorError::Driver(d) => d.into(),
            ConductorError::Config(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m),
        }
    }
}

impl From<DriverError> for ApiError {
    fn from(e: DriverError) -> Self {
        let status = match &e {
            DriverError::InvalidParameter(_) | DriverError::Unsupported(_) => {
                StatusCode::BAD_REQUEST
            }
            DriverError::Failed(_) | DriverError::Timeout { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, e.to_string())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
