//! Request bodies: at most 1 MiB of JSON, nested at most 25 deep, with
//! Ironic-style errors for anything else.

use crate::error::ApiError;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde_json::Value;

pub const MAX_BODY_BYTES: usize = 1024 * 1024;
pub const MAX_JSON_DEPTH: usize = 25;

/// A JSON request body, parsed and bounded.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("Request is too large: the limit is {MAX_BODY_BYTES} bytes."),
                )
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request(
                "The request has no body; a JSON body is required.",
            ));
        }
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad_request(format!("The request body is not valid JSON: {e}"))
        })?;
        if depth(&value) > MAX_JSON_DEPTH {
            return Err(ApiError::bad_request(format!(
                "The request body is nested deeper than {MAX_JSON_DEPTH} levels."
            )));
        }
        Ok(JsonBody(value))
    }
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Reads a boolean the way Ironic does: JSON booleans or the strings
/// true/false/yes/no/on/off/1/0, any case.
pub fn parse_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(s) => parse_bool_str(s),
        _ => None,
    }
}

pub fn parse_bool_str(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" | "y" | "t" => Some(true),
        "false" | "no" | "off" | "0" | "n" | "f" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn depth_counts_containers() {
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!({"a": [1, {"b": {}}]})), 4);
    }

    #[test]
    fn booleans_accept_ironic_strings() {
        assert_eq!(parse_bool(&json!("True")), Some(true));
        assert_eq!(parse_bool(&json!("off")), Some(false));
        assert_eq!(parse_bool(&json!("maybe")), None);
        assert_eq!(parse_bool(&json!(1)), None);
    }
}
