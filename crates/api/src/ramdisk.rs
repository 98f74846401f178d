//! The ramdisk endpoints: `GET /v1/lookup` and `POST /v1/heartbeat/{node}`,
//! with Ironic's semantics, so that IPA (or ferric-agent) finds its node and
//! reports where it listens. Neither takes the operator's authentication:
//! the agent token is the credential, checked by the conductor.

use crate::body::JsonBody;
use crate::error::{ApiError, ApiResult};
use crate::params::Params;
use crate::render::{self, NodeView};
use crate::version::Version;
use crate::{AppState, BaseUrl};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use ferric_conductor::Heartbeat;
use ferric_store::NodeIdent;
use serde_json::{json, Value};

/// The ramdisk endpoints appeared in 1.22; below, they do not exist.
const RAMDISK_MIN: u32 = 22;
/// Node fields a lookup returns.
const LOOKUP_FIELDS: [&str; 4] = [
    "uuid",
    "properties",
    "instance_info",
    "driver_internal_info",
];
/// The heartbeat_timeout agents are given, in seconds.
const HEARTBEAT_TIMEOUT_SECS: u64 = 30;
/// Image formats the agent is told it may write (the image crate's default policy).
const PERMITTED_IMAGE_FORMATS: [&str; 4] = ["raw", "gpt", "qcow2", "iso"];

fn require_ramdisk_api(version: Version) -> ApiResult<()> {
    if version.at_least(RAMDISK_MIN) {
        Ok(())
    } else {
        Err(ApiError::not_found("The resource could not be found."))
    }
}

pub async fn lookup(
    State(state): State<AppState>,
    version: Version,
    BaseUrl(base): BaseUrl,
    params: Params,
) -> ApiResult<Json<Value>> {
    require_ramdisk_api(version)?;
    let addresses: Vec<String> = params
        .get("addresses")
        .map(|list| {
            list.split(',')
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let node_uuid = params.uuid("node_uuid")?;
    let answer = state.conductor.lookup(&addresses, node_uuid).await?;
    let fields: Vec<String> = LOOKUP_FIELDS.iter().map(|f| f.to_string()).collect();
    let node = render::node(
        &answer.node,
        NodeView {
            version,
            base: &base,
            fields: Some(&fields),
            subresource_links: false,
            conductor: None,
        },
    );
    // Agents beat every 30-60 % of this: often enough for live progress,
    // and never beyond the callback timeout.
    let timeout = state
        .conductor
        .config()
        .deploy_callback_timeout
        .as_secs()
        .min(HEARTBEAT_TIMEOUT_SECS);
    Ok(Json(json!({
        "node": node,
        "config": {
            "heartbeat_timeout": timeout,
            "agent_token": answer.token,
            "agent_token_required": true,
            "agent_md5_checksum_enable": state.conductor.config().allow_md5_checksum,
            "disable_deep_image_inspection": false,
            "permitted_image_formats": PERMITTED_IMAGE_FORMATS,
            "agent_skip_bmc_detect": false,
            "enable_bios_bootloader_install": false,
            "metrics": {"backend": "noop", "prepend_host": false, "prepend_uuid": false,
                        "prepend_host_reverse": true, "global_prefix": null},
            "metrics_statsd": {"statsd_host": "localhost", "statsd_port": 8125},
        },
    })))
}

/// A string field of the heartbeat body, refused when it is not a string or
/// when the requested version is older than the field.
fn string_field(
    body: &Value,
    name: &str,
    minor: u32,
    version: Version,
) -> ApiResult<Option<String>> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(_) if !version.at_least(minor) => Err(ApiError::bad_request(format!(
            "Field \"{name}\" not recognised in this version"
        ))),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(format!(
            "Field \"{name}\" must be a string"
        ))),
    }
}

pub async fn heartbeat(
    State(state): State<AppState>,
    version: Version,
    Path(ident): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<StatusCode> {
    require_ramdisk_api(version)?;
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "The heartbeat body must be a JSON object.",
        ));
    }
    const KNOWN: [&str; 6] = [
        "callback_url",
        "agent_token",
        "agent_version",
        "agent_verify_ca",
        "agent_status",
        "agent_status_message",
    ];
    if let Some(unknown) = body
        .as_object()
        .and_then(|o| o.keys().find(|k| !KNOWN.contains(&k.as_str())))
    {
        return Err(ApiError::bad_request(format!(
            "Unknown field \"{unknown}\" in the heartbeat"
        )));
    }
    let callback_url = string_field(&body, "callback_url", RAMDISK_MIN, version)?
        .ok_or_else(|| ApiError::bad_request("Missing mandatory field \"callback_url\""))?;
    let heartbeat = Heartbeat {
        callback_url,
        agent_token: string_field(&body, "agent_token", RAMDISK_MIN, version)?,
        agent_version: string_field(&body, "agent_version", 36, version)?,
        agent_verify_ca: string_field(&body, "agent_verify_ca", 68, version)?,
        agent_status: string_field(&body, "agent_status", 72, version)?,
        agent_status_message: string_field(&body, "agent_status_message", 72, version)?,
    };
    state
        .conductor
        .heartbeat(&NodeIdent::parse(&ident), heartbeat)
        .await?;
    Ok(StatusCode::ACCEPTED)
}
