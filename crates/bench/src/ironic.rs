//! The few Ironic v1 calls the benchmark makes, on one connection.

use crate::client::{Connection, HttpError, Reply};
use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

/// A call that failed, with Ironic's own message when it sent one.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{method} {path} answered {status} (expected {expected}): {message}")]
    Status {
        method: Method,
        path: String,
        status: StatusCode,
        expected: StatusCode,
        message: String,
    },
    #[error("{method} {path} answered {status} with a body that is not what Ironic sends")]
    Decode {
        method: Method,
        path: String,
        status: StatusCode,
        #[source]
        source: serde_json::Error,
    },
}

/// Whether a 409 (node locked by a conductor) is retried. Timed calls are
/// not: a conflict there is a result worth failing on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnConflict {
    Fail,
    Retry,
}

const CONFLICT_RETRIES: u32 = 50;
const CONFLICT_PAUSE: Duration = Duration::from_millis(100);

/// The longest page Ironic hands out by default (`[api] max_limit`).
pub const PAGE_LIMIT: usize = 1000;

/// One request of a batch run by a pool of clients.
#[derive(Debug, Clone)]
pub enum Call {
    /// `POST /v1/nodes`; a resource class marks nodes to list by it later.
    CreateNode {
        name: String,
        driver: String,
        driver_info: Option<Value>,
        resource_class: Option<String>,
    },
    /// `PUT /v1/nodes/{uuid}/states/provision`.
    Provision { uuid: String, target: &'static str },
    /// `PUT /v1/nodes/{uuid}/maintenance`.
    Maintenance { uuid: String },
    /// `DELETE /v1/nodes/{uuid}`.
    DeleteNode { uuid: String },
}

/// What a call did: the node it concerned and how long the server took.
#[derive(Debug, Clone)]
pub struct Done {
    pub uuid: String,
    pub elapsed: Duration,
}

/// A node's provisioning state as a list shows it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct NodeState {
    pub uuid: String,
    pub provision_state: String,
    #[serde(default)]
    pub last_error: Option<String>,
}

/// The versions the server announced on `GET /v1`.
#[derive(Debug, Clone, Default)]
pub struct ServerVersions {
    pub min: Option<String>,
    pub max: Option<String>,
}

/// States a node stops in when an operation failed.
pub fn is_failed_state(state: &str) -> bool {
    state == "error" || state.ends_with(" failed")
}

/// The human part of an Ironic error body: `{"error_message": "<JSON with
/// faultstring>"}` (the inner JSON may also come as an object), or the raw
/// body, shortened, from anything else.
pub fn error_message(body: &[u8]) -> String {
    let fault = |v: &Value| {
        v.get("faultstring")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    if let Ok(outer) = serde_json::from_slice::<Value>(body) {
        match outer.get("error_message") {
            Some(Value::String(inner)) => {
                return serde_json::from_str::<Value>(inner)
                    .ok()
                    .and_then(|v| fault(&v))
                    .unwrap_or_else(|| inner.clone());
            }
            Some(obj @ Value::Object(_)) => {
                if let Some(text) = fault(obj) {
                    return text;
                }
            }
            _ => {}
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_string();
    }
    match text.char_indices().nth(300) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

/// Sends a request and insists on one status.
pub async fn call(
    conn: &mut Connection,
    method: Method,
    path: &str,
    body: Option<&Value>,
    expected: StatusCode,
    on_conflict: OnConflict,
) -> Result<Reply, ApiError> {
    let mut attempts = 0;
    loop {
        let reply = conn.send(method.clone(), path, body).await?;
        if reply.status == expected {
            return Ok(reply);
        }
        if reply.status == StatusCode::CONFLICT
            && on_conflict == OnConflict::Retry
            && attempts < CONFLICT_RETRIES
        {
            attempts += 1;
            tokio::time::sleep(CONFLICT_PAUSE).await;
            continue;
        }
        return Err(ApiError::Status {
            method,
            path: path.to_string(),
            status: reply.status,
            expected,
            message: error_message(&reply.body),
        });
    }
}

fn decode<T: for<'de> Deserialize<'de>>(
    method: Method,
    path: &str,
    reply: &Reply,
) -> Result<T, ApiError> {
    serde_json::from_slice(&reply.body).map_err(|source| ApiError::Decode {
        method,
        path: path.to_string(),
        status: reply.status,
        source,
    })
}

/// `GET /v1`: checks that the server speaks the requested version.
pub async fn server_versions(conn: &mut Connection) -> Result<ServerVersions, ApiError> {
    let reply = call(
        conn,
        Method::GET,
        "/v1",
        None,
        StatusCode::OK,
        OnConflict::Fail,
    )
    .await?;
    let header = |name: &str| {
        reply
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Ok(ServerVersions {
        min: header("X-OpenStack-Ironic-API-Minimum-Version"),
        max: header("X-OpenStack-Ironic-API-Maximum-Version"),
    })
}

/// Runs one call of a batch.
pub async fn perform(
    conn: &mut Connection,
    what: &Call,
    on_conflict: OnConflict,
) -> Result<Done, ApiError> {
    #[derive(Deserialize)]
    struct Created {
        uuid: String,
    }
    match what {
        Call::CreateNode {
            name,
            driver,
            driver_info,
            resource_class,
        } => {
            let mut body = json!({ "driver": driver, "name": name });
            if let Some(info) = driver_info {
                body["driver_info"] = info.clone();
            }
            if let Some(rc) = resource_class {
                body["resource_class"] = json!(rc);
            }
            let path = "/v1/nodes";
            let reply = call(
                conn,
                Method::POST,
                path,
                Some(&body),
                StatusCode::CREATED,
                on_conflict,
            )
            .await?;
            let created: Created = decode(Method::POST, path, &reply)?;
            Ok(Done {
                uuid: created.uuid,
                elapsed: reply.elapsed,
            })
        }
        Call::Provision { uuid, target } => {
            let path = format!("/v1/nodes/{uuid}/states/provision");
            let body = json!({ "target": target });
            let reply = call(
                conn,
                Method::PUT,
                &path,
                Some(&body),
                StatusCode::ACCEPTED,
                on_conflict,
            )
            .await?;
            Ok(Done::of(uuid, &reply))
        }
        Call::Maintenance { uuid } => {
            let path = format!("/v1/nodes/{uuid}/maintenance");
            let body = json!({ "reason": "ferric-bench cleanup" });
            let reply = call(
                conn,
                Method::PUT,
                &path,
                Some(&body),
                StatusCode::ACCEPTED,
                on_conflict,
            )
            .await?;
            Ok(Done::of(uuid, &reply))
        }
        Call::DeleteNode { uuid } => {
            let path = format!("/v1/nodes/{uuid}");
            let reply = call(
                conn,
                Method::DELETE,
                &path,
                None,
                StatusCode::NO_CONTENT,
                on_conflict,
            )
            .await?;
            Ok(Done::of(uuid, &reply))
        }
    }
}

impl Done {
    /// A call on an existing node answered `reply`.
    fn of(uuid: &str, reply: &Reply) -> Done {
        Done {
            uuid: uuid.to_string(),
            elapsed: reply.elapsed,
        }
    }
}

/// `GET` of a list path expecting 200: the timed list benchmark.
pub async fn get_list(conn: &mut Connection, path: &str) -> Result<Reply, ApiError> {
    call(
        conn,
        Method::GET,
        path,
        None,
        StatusCode::OK,
        OnConflict::Fail,
    )
    .await
}

/// How many entries a node list response holds.
pub fn count_nodes(path: &str, reply: &Reply) -> Result<usize, ApiError> {
    #[derive(Deserialize)]
    struct Page {
        nodes: Vec<serde::de::IgnoredAny>,
    }
    let page: Page = decode(Method::GET, path, reply)?;
    Ok(page.nodes.len())
}

/// Provision states of every node of a resource class, following pages.
/// The caller still filters by UUID: a server that ignored the filter
/// would return every node.
pub async fn node_states(
    conn: &mut Connection,
    resource_class: &str,
    with_last_error: bool,
) -> Result<Vec<NodeState>, ApiError> {
    #[derive(Deserialize)]
    struct Page {
        nodes: Vec<NodeState>,
        #[serde(default)]
        next: Option<String>,
    }
    let fields = if with_last_error {
        "uuid,provision_state,last_error"
    } else {
        "uuid,provision_state"
    };
    let mut states = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let mut path =
            format!("/v1/nodes?resource_class={resource_class}&fields={fields}&limit={PAGE_LIMIT}");
        if let Some(m) = &marker {
            path.push_str("&marker=");
            path.push_str(m);
        }
        let reply = call(
            conn,
            Method::GET,
            &path,
            None,
            StatusCode::OK,
            OnConflict::Fail,
        )
        .await?;
        let page: Page = decode(Method::GET, &path, &reply)?;
        let more = page.next.is_some() && !page.nodes.is_empty();
        marker = page.nodes.last().map(|n| n.uuid.clone());
        states.extend(page.nodes);
        if !more {
            return Ok(states);
        }
    }
}

/// `GET /v1/nodes/{uuid}`: state and last error of one node.
pub async fn node_state(conn: &mut Connection, uuid: &str) -> Result<NodeState, ApiError> {
    let path = format!("/v1/nodes/{uuid}?fields=uuid,provision_state,last_error");
    let reply = call(
        conn,
        Method::GET,
        &path,
        None,
        StatusCode::OK,
        OnConflict::Fail,
    )
    .await?;
    decode(Method::GET, &path, &reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ironic_error_body_gives_faultstring() {
        let body = br#"{"error_message": "{\"faultcode\": \"Client\", \"faultstring\": \"Node abc is locked by host c1.\", \"debuginfo\": null}"}"#;
        assert_eq!(error_message(body), "Node abc is locked by host c1.");
    }

    #[test]
    fn error_message_as_object_or_plain_string() {
        assert_eq!(
            error_message(br#"{"error_message": {"faultstring": "nope"}}"#),
            "nope"
        );
        assert_eq!(
            error_message(br#"{"error_message": "plain words"}"#),
            "plain words"
        );
    }

    #[test]
    fn non_ironic_bodies_are_shown_shortened() {
        assert_eq!(error_message(b"  502 Bad Gateway\n"), "502 Bad Gateway");
        assert_eq!(error_message(b""), "(empty body)");
        let long = "x".repeat(400);
        let shown = error_message(long.as_bytes());
        assert_eq!(shown.len(), 303);
        assert!(shown.ends_with("..."));
    }

    #[test]
    fn failed_states() {
        for s in [
            "deploy failed",
            "clean failed",
            "inspect failed",
            "error",
            "adopt failed",
        ] {
            assert!(is_failed_state(s), "{s}");
        }
        for s in [
            "active",
            "available",
            "deploying",
            "wait call-back",
            "enroll",
            "manageable",
        ] {
            assert!(!is_failed_state(s), "{s}");
        }
    }

    #[test]
    fn node_state_decodes_with_and_without_last_error() {
        let s: NodeState =
            serde_json::from_str(r#"{"uuid": "u", "provision_state": "active"}"#).unwrap();
        assert_eq!(s.last_error, None);
        let s: NodeState = serde_json::from_str(
            r#"{"uuid": "u", "provision_state": "deploy failed", "last_error": "boom"}"#,
        )
        .unwrap();
        assert_eq!(s.last_error.as_deref(), Some("boom"));
    }
}
